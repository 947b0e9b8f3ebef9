"""Slow checks on the real offline copies in <repo>/../shared/data; skipped where that folder is absent."""

import time
from pathlib import Path

import pytest
import torch

from flatlab.data import load_fashion_mnist, load_image_folder

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = [REPO.parent / "shared" / "data", Path("/work/shared/data")]


def _shared(name: str) -> Path:
    for folder in CANDIDATES:
        if (folder / name).exists():
            return folder / name
    pytest.skip(f"{name} not found in {' or '.join(map(str, CANDIDATES))}")


@pytest.mark.slow
def test_cifar10_jpeg_archive(tmp_path):
    archive = _shared("cifar10-jpeg.tar.gz")
    start = time.perf_counter()
    data = load_image_folder(archive, cache_root=tmp_path)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    cached = load_image_folder(archive, cache_root=tmp_path)
    cached_s = time.perf_counter() - start
    print(f"\nCIFAR-10 JPEG: decode {decode_s:.1f} s, cached load {cached_s:.2f} s")

    assert (data.num_train, data.num_test, data.num_classes) == (50_000, 10_000, 10)
    assert data.image_shape == (3, 32, 32)
    assert data.classes == sorted(data.classes) and "airplane" in data.classes and "truck" in data.classes
    assert torch.bincount(data.train_labels).tolist() == [5000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert torch.equal(cached.train_images, data.train_images) and torch.equal(
        cached.test_labels, data.test_labels
    )
    mean, _ = data.mean_std()
    # Published CIFAR-10 channel means are (0.491, 0.482, 0.447); the JPEG copy sits close to them.
    assert all(abs(m - r) < 0.01 for m, r in zip(mean, (0.491, 0.482, 0.447)))


@pytest.mark.slow
def test_fashion_mnist_idx():
    data = load_fashion_mnist(_shared("fashion-mnist"))
    assert (data.num_train, data.num_test, data.image_shape) == (60_000, 10_000, (1, 28, 28))
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    mean, std = data.mean_std()
    assert abs(mean[0] - 0.2860) < 1e-3 and abs(std[0] - 0.3530) < 1e-3
