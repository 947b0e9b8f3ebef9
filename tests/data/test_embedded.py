import io
from importlib import resources

import numpy as np
import pytest
import torch

from flatlab.data import load_digits, stratified_split


def _raw():
    raw = resources.files("flatlab.data").joinpath("digits.npz").read_bytes()
    with np.load(io.BytesIO(raw)) as f:
        return f["images"], f["labels"]


def test_shapes_and_split_sizes():
    data = load_digits()
    assert data.name == "digits"
    assert (data.num_train, data.num_test) == (1437, 360)
    assert data.image_shape == (1, 8, 8)
    assert data.classes == [str(i) for i in range(10)]
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64


def test_values_are_scaled_originals():
    images, labels = _raw()
    data = load_digits()
    all_images = torch.cat([data.train_images, data.test_images])[:, 0].numpy().astype(int)
    all_labels = torch.cat([data.train_labels, data.test_labels]).numpy()
    # Every original digit appears exactly once, scaled 0..16 -> 0..255.
    expected = np.rint(images.astype(float) * 255 / 16).astype(int)
    key = lambda imgs, labs: sorted(zip(labs.tolist(), (im.tobytes() for im in imgs)))  # noqa: E731
    assert key(all_images, all_labels) == key(expected, labels.astype(np.int64))
    assert all_images.max() == 255 and all_images.min() == 0


def test_split_is_stratified_and_deterministic():
    a, b = load_digits(seed=0), load_digits(seed=0)
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.test_labels, b.test_labels)
    counts = torch.bincount(a.test_labels, minlength=10)
    assert counts.sum() == 360 and counts.min() >= 35 and counts.max() <= 37
    c = load_digits(seed=1)
    assert not torch.equal(a.test_images, c.test_images)


@pytest.mark.parametrize("test_size", [0, 1, 3, 7, 8])
def test_stratified_split_exact_sizes(test_size):
    labels = np.array([0] * 5 + [1] * 3)
    train, test = stratified_split(labels, test_size, seed=3)
    assert len(test) == test_size and len(train) == 8 - test_size
    assert set(train).isdisjoint(test) and sorted([*train, *test]) == list(range(8))


def test_stratified_split_rejects_bad_size():
    with pytest.raises(ValueError, match="test_size"):
        stratified_split(np.zeros(4), 5)
