import gzip

import numpy as np
import pytest

from flatlab.data import DatasetFormatError, download, load_fashion_mnist, load_mnist, read_idx
from flatlab.data.idx import FASHION_MNIST
from tests.helpers.datasets import idx_bytes, write_idx, write_tiny_mnist


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path, compress, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    out = read_idx(write_idx(tmp_path / "x-idx3", array, compress))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_gzip_detected_by_content_not_name(tmp_path):
    array = np.arange(6, dtype=np.uint8)
    path = tmp_path / "labels.gz"
    path.write_bytes(idx_bytes(array))  # raw bytes under a .gz name
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda raw: raw[:-5], "truncated: 19 data bytes"),
        (lambda raw: raw[:6], "truncated header"),
        (lambda raw: raw + b"\0\0", "2 unexpected trailing bytes"),
        (lambda raw: b"\x08\x03" + raw[2:], "bad idx magic number 0x0803"),
        (lambda raw: raw[:2] + b"\x07" + raw[3:], "bad idx magic number"),
        (lambda raw: raw[:2], "too short"),
    ],
    ids=["truncated-data", "truncated-header", "trailing", "bad-magic", "bad-type", "tiny"],
)
@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_read_idx_errors_name_the_file(tmp_path, mutate, message, compress):
    raw = mutate(idx_bytes(np.zeros((2, 3, 4), np.uint8)))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(DatasetFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_is_reported(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(1000, np.uint8)))[:20])
    with pytest.raises(DatasetFormatError, match="corrupt or truncated gzip"):
        read_idx(path)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("subfolder", ["", "fashion-mnist", "FashionMNIST/raw"])
def test_load_fashion_mnist(tmp_path, compress, subfolder):
    arrays = write_tiny_mnist(tmp_path / subfolder, compress)
    data = load_fashion_mnist(tmp_path)
    assert data.image_shape == (1, 28, 28) and data.classes[0] == "T-shirt/top" and data.num_classes == 10
    np.testing.assert_array_equal(data.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.train_labels.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.test_images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.test_labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_load_mnist(tmp_path):
    write_tiny_mnist(tmp_path / "mnist", compress=True)
    data = load_mnist(tmp_path)
    assert data.name == "mnist" and data.classes == [str(i) for i in range(10)]


def test_mismatched_label_count(tmp_path):
    write_tiny_mnist(tmp_path, compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(7, np.uint8), compress=False)
    with pytest.raises(DatasetFormatError, match="t10k-labels-idx1-ubyte.*do not match 3 images"):
        load_fashion_mnist(tmp_path)


def test_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(tmp_path)
    message = str(info.value)
    for expected in (
        "train-images-idx3-ubyte(.gz)",
        "t10k-labels-idx1-ubyte(.gz)",
        str(tmp_path / "fashion-mnist"),
        FASHION_MNIST.mirrors[0],
        "download=True",
    ):
        assert expected in message


def test_download_reports_md5_mismatch(tmp_path, monkeypatch):
    urls = []

    def fake_fetch(url, dest):
        urls.append(url)
        dest.write_bytes(b"\x1f\x8bnot gzip")

    monkeypatch.setattr(download, "fetch", fake_fetch)
    with pytest.raises(RuntimeError, match="md5 mismatch") as info:
        load_fashion_mnist(tmp_path, download=True)
    assert FASHION_MNIST.md5["train-images-idx3-ubyte.gz"] in str(info.value)
    assert len(urls) == len(FASHION_MNIST.mirrors), "every mirror is tried before giving up"
    assert not list((tmp_path / "fashion-mnist").glob("*.gz"))
