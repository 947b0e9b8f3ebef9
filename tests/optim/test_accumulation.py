"""Gradient accumulation: N micro-batches through flatlab.micro_batches equal one step on their
concatenation, for every method (float64, a model without batch-coupled layers)."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import flatlab
from tests.helpers.nets import mlp, vector_batches
from tests.helpers.steps import rows_of

METHODS = [
    ("sam", {}), ("sam", {"ascent_steps": 2}), ("asam", {}), ("esam", {"beta": 1.0, "gamma": 0.5}),
    ("esam", {"beta": 0.6, "gamma": 0.5}), ("ssam-f", {"num_samples": 16, "update_interval": 2}),
    ("ssam-d", {"update_interval": 2}), ("s2sam", {}), ("msam", {"rho": 0.5}), ("looksam", {"k": 2}),
    ("rst", {}), ("aesam", {}), ("gsam", {}), ("wsam", {}), ("fsam", {}), ("gcsam", {}), ("vasso", {}),
    ("sam-on", {}), ("lookbehind-sam", {}), ("rwp", {}), ("bsam", {"num_data": 100}),
]


@pytest.mark.parametrize("name, options", METHODS)
def test_micro_batches_equal_one_batch(name, options):
    whole, split = mlp(dtype=torch.float64), mlp(dtype=torch.float64)
    if name == "sam-on":  # a normalisation layer to perturb, one that keeps the samples apart
        whole, split = (torch.nn.Sequential(m[0], torch.nn.LayerNorm(8, dtype=torch.float64), *m[1:])
                        for m in (whole, split))
    options = {**({} if name == "bsam" else {"momentum": 0.9}), **options}  # bSAM's base has no SGD momentum
    opt_whole = flatlab.create_optimizer(name, whole, lr=0.1, seed=3, **options)
    opt_split = flatlab.create_optimizer(name, split, lr=0.1, seed=3, **options)
    for x, y in vector_batches(5, 16, dtype=torch.float64):
        for opt, model in ((opt_whole, whole), (opt_split, split)):
            if opt.mask_due:
                opt.update_mask(model, [(x, y)])
        opt_whole.step(flatlab.per_sample(lambda idx, x=x, y=y: rows_of(whole, x, y, idx)))
        micro = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]
        loss = opt_split.step(flatlab.micro_batches(micro, lambda b, idx: rows_of(split, b[0], b[1], idx)))
        assert loss.dim() == 0
    assert opt_split.sam_steps == opt_whole.sam_steps
    with opt_whole.unperturbed(), opt_split.unperturbed():
        for p, q in zip(whole.parameters(), split.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_the_descent_of_data_selection_ranks_the_whole_accumulated_batch():
    model = mlp(dtype=torch.float64)
    opt = flatlab.ESAM(torch.optim.SGD(model.parameters(), lr=0.1), beta=1.0, gamma=0.25, seed=0)
    x, y = vector_batches(1, 16, dtype=torch.float64)[0]
    seen = []

    def fn(b, idx):
        seen.append(None if idx is None else len(idx))
        return rows_of(model, b[0], b[1], idx)

    opt.step(flatlab.micro_batches([(x[:8], y[:8]), (x[8:], y[8:])], fn))
    # ascent (2 micro-batches, all rows), selection forward (2, all rows), descent: 4 rows in all,
    # wherever the sharpest samples fall
    assert seen[:4] == [None, None, None, None]
    assert sum(seen[4:]) == 4


def test_a_step_after_earlier_backwards_warns_once():
    model = mlp(dtype=torch.float64)
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    (x, y), (x2, y2) = vector_batches(2, 16, dtype=torch.float64)
    F.cross_entropy(model(x[:8]), y[:8]).backward()  # the mistake: micro-batch 1 by hand
    with pytest.warns(UserWarning, match="micro_batches"):  # and says they were dropped
        opt.step(flatlab.per_sample(lambda idx: rows_of(model, x[8:], y[8:], idx)))
    F.cross_entropy(model(x2), y2).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per optimizer
        opt.step(flatlab.per_sample(lambda idx: rows_of(model, x2, y2, idx)))


def test_a_closure_loop_does_not_warn():
    model = mlp(dtype=torch.float64)
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, y in vector_batches(3, 16, dtype=torch.float64):
            opt.step(flatlab.per_sample(lambda idx, x=x, y=y: rows_of(model, x, y, idx)))


def closure_of(opt, model, x, y):
    """A torch-style closure that does not zero the gradients (as Lightning's does inside an
    accumulation window): what backward() left before the step would enter its ascent."""
    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("name", ["sam", "wsam"])
def test_a_two_pass_step_drops_earlier_gradients_and_says_so(name):
    # the step equals one on the closure's batch alone: the earlier gradients, which have no pass
    # at w + eps, enter neither the ascent nor the descent (WSAM's descent mixes both gradients:
    # half of them was how it climbed under Lightning's accumulation)
    (x, y), _ = vector_batches(2, 16, dtype=torch.float64)
    dropped, clean = mlp(dtype=torch.float64), mlp(dtype=torch.float64)
    opt_dropped = flatlab.create_optimizer(name, dropped, lr=0.1)
    opt_clean = flatlab.create_optimizer(name, clean, lr=0.1)
    F.cross_entropy(dropped(x[:8]), y[:8]).backward()
    with pytest.warns(UserWarning, match="dropped the gradients"):
        opt_dropped.step(closure_of(opt_dropped, dropped, x[8:], y[8:]))
    opt_clean.step(closure_of(opt_clean, clean, x[8:], y[8:]))
    for p, q in zip(dropped.parameters(), clean.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["s2sam", "msam"])
def test_a_single_pass_step_keeps_earlier_gradients_without_warning(name):
    # both micro-batches run at w + eps: the step descends with their sum, the whole batch's
    data = vector_batches(3, 16, dtype=torch.float64)
    whole, split = mlp(dtype=torch.float64), mlp(dtype=torch.float64)
    opt_whole = flatlab.create_optimizer(name, whole, lr=0.1, momentum=0.9)
    opt_split = flatlab.create_optimizer(name, split, lr=0.1, momentum=0.9)
    for x, y in data:
        opt_whole.zero_grad()
        opt_whole.step(closure_of(opt_whole, whole, x, y))
        opt_split.zero_grad()
        (F.cross_entropy(split(x[:8]), y[:8]) / 2).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt_split.step(lambda x=x, y=y: (F.cross_entropy(split(x[8:]), y[8:]) / 2).backward())
    for p, q in zip(whole.parameters(), split.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
