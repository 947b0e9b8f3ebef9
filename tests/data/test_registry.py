import pytest

from flatlab.data import ImageArrays, list_datasets, load_dataset, register_dataset, unregister_dataset
from tests.helpers.datasets import write_folder, write_tiny_cifar, write_tiny_mnist


def test_list_datasets():
    assert list_datasets() == ["cifar10", "cifar100", "digits", "fashion-mnist", "imagefolder", "mnist"]


def test_default_is_embedded_digits():
    data = load_dataset()
    assert isinstance(data, ImageArrays) and data.name == "digits" and data.num_train == 1437
    assert load_dataset("digits", test_size=100).num_test == 100


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet-21k")
    assert "imagenet-21k" in str(info.value)
    for name in list_datasets():
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["cifar10", "CIFAR-10", "cifar_10"])
def test_cifar10_by_name_and_alias(tmp_path, name):
    from flatlab.data.cifar import CIFAR10

    write_tiny_cifar(tmp_path, CIFAR10)
    assert load_dataset(name, root=tmp_path).name == "cifar10"


@pytest.mark.parametrize("name", ["fashion-mnist", "fashion_mnist", "FashionMNIST"])
def test_fashion_mnist_by_name(tmp_path, name):
    write_tiny_mnist(tmp_path, compress=True)
    assert load_dataset(name, root=tmp_path).name == "fashion-mnist"


def test_default_root_is_the_data_dir(tmp_path):
    from flatlab.data.cifar import CIFAR100

    write_tiny_cifar(tmp_path / "flatlab-data", CIFAR100)  # FLATLAB_DATA, set by conftest
    assert load_dataset("cifar100").num_classes == 100


def test_imagefolder_by_name(tmp_path):
    write_folder(tmp_path / "imgs")
    data = load_dataset("imagefolder", root=tmp_path / "imgs", size=4)
    assert data.image_shape == (3, 4, 4)
    with pytest.raises(ValueError, match="needs root="):
        load_dataset("imagefolder")
    with pytest.raises(ValueError, match="no download"):
        load_dataset("imagefolder", root=tmp_path / "imgs", download=True)


def test_register_and_unregister():
    @register_dataset("tiny-digits")
    def _tiny(root=None, download=False):
        return load_dataset("digits", test_size=10)

    try:
        assert "tiny-digits" in list_datasets() and load_dataset("tiny_digits").num_test == 10
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("tiny-digits", _tiny)
    finally:
        unregister_dataset("tiny-digits")
    assert "tiny-digits" not in list_datasets()
