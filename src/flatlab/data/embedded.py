"""The embedded default dataset: scikit-learn's 8x8 handwritten digits, shipped inside the package."""

from __future__ import annotations

import io
from importlib import resources

import numpy as np
import torch

from .arrays import ImageArrays


def _read_digits_npz() -> tuple[np.ndarray, np.ndarray]:
    raw = resources.files(__package__).joinpath("digits.npz").read_bytes()
    with np.load(io.BytesIO(raw), allow_pickle=False) as f:
        return f["images"], f["labels"]


def stratified_split(labels: np.ndarray, test_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices `(train, test)` with `test_size` test samples, classes in proportion.

    Each class gives `test_size * n_class / n` samples, rounded by largest remainder so the total is
    exact; which samples go to test is drawn with `numpy.random.default_rng(seed)`. Both index
    arrays are sorted, so the split depends only on `labels`, `test_size` and `seed`.

    Example:
        >>> import numpy as np
        >>> train, test = stratified_split(np.array([0, 0, 0, 0, 1, 1, 1, 1]), test_size=4, seed=0)
        >>> len(train), len(test), np.bincount(np.array([0, 0, 0, 0, 1, 1, 1, 1])[test]).tolist()
        (4, 4, [2, 2])
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if not 0 <= test_size <= n:
        raise ValueError(f"test_size must be in [0, {n}], got {test_size}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * test_size / n
    quota = np.floor(exact).astype(np.int64)
    leftover = test_size - int(quota.sum())
    # Stable sort: ties in the remainder go to the lower class index, so the split is deterministic.
    quota[np.argsort(-(exact - quota), kind="stable")[:leftover]] += 1
    rng = np.random.default_rng(seed)
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
        or [np.empty(0, int)]
    )
    test = np.sort(test)
    train = np.setdiff1d(np.arange(n), test)
    return train, test


def load_digits(test_size: int = 360, seed: int = 0) -> ImageArrays:
    """The 1,797 8x8 grey digits (UCI / scikit-learn), as uint8 `[N, 1, 8, 8]` in 0..255.

    The original 0..16 intensities are scaled to 0..255 (rounded), so the data behaves like any
    other uint8 image set. The default split is 1,437 train / 360 test, stratified by class and fixed
    by `seed`. Needs no download and no scikit-learn.

    Example:
        >>> data = load_digits()
        >>> data.num_train, data.num_test, data.image_shape, data.num_classes
        (1437, 360, (1, 8, 8), 10)
        >>> int(data.train_images.max())
        255
    """
    images, labels = _read_digits_npz()
    images = ((images.astype(np.uint16) * 255 + 8) // 16).astype(np.uint8)[:, None]
    labels = labels.astype(np.int64)
    train, test = stratified_split(labels, test_size, seed)
    return ImageArrays(
        train_images=torch.from_numpy(np.ascontiguousarray(images[train])),
        train_labels=torch.from_numpy(labels[train]),
        test_images=torch.from_numpy(np.ascontiguousarray(images[test])),
        test_labels=torch.from_numpy(labels[test]),
        classes=[str(i) for i in range(10)],
        name="digits",
    )
