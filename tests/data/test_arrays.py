import pytest
import torch

from flatlab.data import ImageArrays


def _arrays(n_train=6, n_test=3, c=3, h=4, w=5, classes=("a", "b", "c"), seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        train_images=torch.randint(0, 256, (n_train, c, h, w), dtype=torch.uint8, generator=g),
        train_labels=torch.randint(0, len(classes), (n_train,), generator=g),
        test_images=torch.randint(0, 256, (n_test, c, h, w), dtype=torch.uint8, generator=g),
        test_labels=torch.randint(0, len(classes), (n_test,), generator=g),
        classes=list(classes),
        name="toy",
    )


def test_properties():
    data = ImageArrays(**_arrays())
    assert data.num_classes == 3
    assert data.image_shape == (3, 4, 5)
    assert data.num_channels == 3
    assert (data.num_train, data.num_test) == (6, 3)
    assert "toy" in repr(data)


@pytest.mark.parametrize("channels", [1, 3])
def test_mean_std_matches_float_reference(channels):
    data = ImageArrays(**_arrays(n_train=50, c=channels))
    mean, std = data.mean_std()
    x = data.train_images.double() / 255
    ref_mean = x.mean(dim=(0, 2, 3))
    ref_std = x.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), ref_mean, atol=1e-12)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), ref_std, atol=1e-12)
    assert len(mean) == len(std) == channels


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(train_images=torch.zeros(6, 3, 4, 5)), "uint8"),
        (dict(train_labels=torch.zeros(6, dtype=torch.int32)), "int64"),
        (dict(train_labels=torch.zeros(5, dtype=torch.int64)), "6 images but 5 labels"),
        (dict(test_images=torch.zeros(3, 3, 4, 4, dtype=torch.uint8)), "test images are"),
        (dict(test_labels=torch.tensor([0, 1, 3])), "must lie in [0, 3)"),
    ],
)
def test_validation(change, message):
    kwargs = _arrays()
    kwargs.update(change)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        ImageArrays(**kwargs)
