"""``holdout``: evaluate on training samples set aside (the same for every seed), for tuning without
the test set."""

import pytest
import torch

from flatlab.data import load_dataset
from flatlab.errors import UsageError
from flatlab.train.data import build_data


def rows(images):
    return {tuple(x.flatten().tolist()) for x in images}


def test_held_out_samples_replace_the_test_set_and_never_train(quick):
    full = load_dataset("digits")
    a = build_data(quick(holdout=300, train_subset=500, seed=0), torch.device("cpu"))
    b = build_data(quick(holdout=300, train_subset=500, seed=1), torch.device("cpu"))
    held_a, held_b = a.arrays.test_images, b.arrays.test_images
    assert held_a.shape[0] == 300 and torch.equal(held_a, held_b)  # the same for every seed
    train_a, train_b = rows(a.arrays.train_images), rows(b.arrays.train_images)
    assert len(train_a) == 500 and train_a != train_b  # the seed still draws the training subset
    assert not (rows(held_a) & (train_a | train_b))
    assert rows(held_a) <= rows(full.train_images)  # from the training split, not the test split
    assert not rows(held_a) & rows(full.test_images)


def test_bad_holdouts_are_one_line_errors(quick):
    with pytest.raises(UsageError, match="drop test_subset"):
        quick(holdout=100, test_subset=100)
    with pytest.raises(UsageError, match="holdout must be"):
        quick(holdout=0)
    with pytest.raises(UsageError, match="leaves nothing to train on"):
        build_data(quick(holdout=10**6), torch.device("cpu"))


def test_a_run_says_what_it_was_evaluated_on(quick):
    from flatlab.train import train

    result = train(quick(holdout=200, epochs=1))
    assert result.summary["evaluated_on"] == "holdout of 200 training samples"
    assert train(quick(epochs=1, name="plain")).summary["evaluated_on"] == "test"
