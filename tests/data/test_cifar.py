import dataclasses
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from flatlab.data import DatasetFormatError, download, load_cifar10, load_cifar100, safe_extract
from flatlab.data.cifar import CIFAR10, CIFAR100, load_cifar, read_pickle
from tests.helpers.datasets import dump_pickle, write_tiny_cifar


@pytest.mark.parametrize(
    "spec, loader", [(CIFAR10, load_cifar10), (CIFAR100, load_cifar100)], ids=["10", "100"]
)
@pytest.mark.parametrize("bytes_keys", [True, False], ids=["bytes-keys", "str-keys"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_round_trip(tmp_path, spec, loader, bytes_keys, protocol):
    expected = write_tiny_cifar(tmp_path, spec, bytes_keys=bytes_keys, protocol=protocol)
    data = loader(tmp_path)
    assert data.name == spec.name
    assert data.classes == expected["classes"]
    np.testing.assert_array_equal(data.train_images.numpy(), expected["train_images"])
    np.testing.assert_array_equal(data.train_labels.numpy(), expected["train_labels"])
    np.testing.assert_array_equal(data.test_images.numpy(), expected["test_images"])
    np.testing.assert_array_equal(data.test_labels.numpy(), expected["test_labels"])
    assert data.train_labels.dtype == torch.int64 and data.image_shape == (3, 32, 32)


def test_root_may_be_the_extracted_folder(tmp_path):
    expected = write_tiny_cifar(tmp_path, CIFAR10)
    data = load_cifar10(tmp_path / CIFAR10.folder)
    np.testing.assert_array_equal(data.test_images.numpy(), expected["test_images"])


def test_pixel_layout_is_channel_major(tmp_path):
    write_tiny_cifar(tmp_path, CIFAR10)
    row = read_pickle(tmp_path / CIFAR10.folder / "test_batch")["data"][0]
    image = load_cifar10(tmp_path).test_images[0]
    # The first 1024 bytes are the red plane, row-major; byte 1024 + 32 is green at (1, 0).
    assert image[0, 0, 5] == row[5] and image[1, 1, 0] == row[1024 + 32] and image[2, 31, 31] == row[3071]


def test_numpy1_module_names_are_accepted(tmp_path):
    # Files written under numpy 1.x name numpy.core.multiarray, which numpy 2 only aliases.
    write_tiny_cifar(tmp_path, CIFAR10, protocol=2)
    path = tmp_path / CIFAR10.folder / "test_batch"
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert load_cifar10(tmp_path).num_test == 3


def test_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    for expected in (
        "data_batch_1",
        "data_batch_5",
        "test_batch",
        "batches.meta",
        CIFAR10.url,
        str(tmp_path / "cifar-10-batches-py"),
        "download=True",
    ):
        assert expected in message


def test_one_missing_file_is_named(tmp_path):
    write_tiny_cifar(tmp_path, CIFAR100)
    (tmp_path / CIFAR100.folder / "meta").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing meta in"):
        load_cifar100(tmp_path)


@pytest.mark.parametrize(
    "damage",
    [lambda raw: raw[: len(raw) // 2], lambda raw: b"garbage" + raw[7:], lambda raw: b""],
    ids=["truncated", "corrupt", "empty"],
)
def test_damaged_pickle_names_the_file(tmp_path, damage):
    write_tiny_cifar(tmp_path, CIFAR10)
    path = tmp_path / CIFAR10.folder / "data_batch_3"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DatasetFormatError, match="data_batch_3") as info:
        load_cifar10(tmp_path)
    assert "truncated or corrupt" in str(info.value)
    assert info.value.path == str(path)


def test_wrong_contents_are_reported(tmp_path):
    write_tiny_cifar(tmp_path, CIFAR10)
    dump_pickle(
        tmp_path / CIFAR10.folder / "test_batch", {"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}, 2
    )
    with pytest.raises(DatasetFormatError, match=r"test_batch.*uint8 \[N, 3072\]"):
        load_cifar10(tmp_path)


def test_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    write_tiny_cifar(tmp_path, CIFAR10)
    dump_pickle(tmp_path / CIFAR10.folder / "batches.meta", {"label_names": Evil()}, 2)
    with pytest.raises(DatasetFormatError, match="not allowed"):
        load_cifar10(tmp_path)


def _archive_of(tmp_path, spec):
    src = tmp_path / "src"
    expected = write_tiny_cifar(src, spec)
    archive = tmp_path / "archive.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / spec.folder, arcname=spec.folder)
    return archive, expected


def test_download_verifies_md5(tmp_path, monkeypatch):
    calls = []

    def fake_fetch(url, dest):
        calls.append(url)
        dest.write_bytes(b"not the dataset")

    monkeypatch.setattr(download, "fetch", fake_fetch)
    root = tmp_path / "root"
    with pytest.raises(RuntimeError) as info:
        load_cifar10(root, download=True)
    message = str(info.value)
    assert "md5 mismatch" in message and CIFAR10.md5 in message and CIFAR10.url in message
    assert calls == [CIFAR10.url]
    assert not (root / CIFAR10.archive).exists(), "a bad download must not be left behind"


def test_download_extracts_and_loads(tmp_path, monkeypatch):
    archive, expected = _archive_of(tmp_path, CIFAR100)
    monkeypatch.setattr(download, "fetch", lambda url, dest: dest.write_bytes(archive.read_bytes()))
    spec = dataclasses.replace(CIFAR100, md5=download.md5sum(archive))
    data = load_cifar(spec, tmp_path / "root", download=True)
    np.testing.assert_array_equal(data.train_images.numpy(), expected["train_images"])

    # Once present, nothing is fetched again.
    monkeypatch.setattr(download, "fetch", lambda url, dest: pytest.fail("fetched twice"))
    assert load_cifar(spec, tmp_path / "root", download=True).num_train == data.num_train


def test_fetch_network_errors_are_reported(tmp_path, monkeypatch):
    def failing_fetch(url, dest):
        raise OSError("no route to host")

    monkeypatch.setattr(download, "fetch", failing_fetch)
    with pytest.raises(RuntimeError, match="no route to host"):
        load_cifar10(tmp_path, download=True)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_safe_extract_rejects_escapes(tmp_path, kind):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(
            {"dotdot": "../evil.txt", "absolute": "/tmp/evil.txt", "symlink": "link"}[kind]
        )
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(ValueError, match="refusing to extract"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
