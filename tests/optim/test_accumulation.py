"""Gradient accumulation: N micro-batches through flatlab.micro_batches equal one step on their
concatenation, for every method (float64, a model without batch-coupled layers)."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import flatlab

METHODS = [
    ("sam", {}), ("sam", {"ascent_steps": 2}), ("asam", {}), ("esam", {"beta": 1.0, "gamma": 0.5}),
    ("esam", {"beta": 0.6, "gamma": 0.5}), ("ssam-f", {"num_samples": 16, "update_interval": 2}),
    ("ssam-d", {"update_interval": 2}), ("s2sam", {}), ("msam", {"rho": 0.5}), ("looksam", {"k": 2}),
    ("rst", {}), ("aesam", {}), ("gsam", {}), ("wsam", {}), ("fsam", {}),
]


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def batches(n=5, size=16):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(size, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def rows_of(model, x, y, idx):
    xb, yb = (x, y) if idx is None else (x[idx], y[idx])
    return F.cross_entropy(model(xb), yb, reduction="none")


@pytest.mark.parametrize("name, options", METHODS)
def test_micro_batches_equal_one_batch(name, options):
    whole, split = mlp(), mlp()
    opt_whole = flatlab.create_optimizer(name, whole, lr=0.1, momentum=0.9, seed=3, **options)
    opt_split = flatlab.create_optimizer(name, split, lr=0.1, momentum=0.9, seed=3, **options)
    for x, y in batches():
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
    model = mlp()
    opt = flatlab.ESAM(torch.optim.SGD(model.parameters(), lr=0.1), beta=1.0, gamma=0.25, seed=0)
    x, y = batches(1)[0]
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
    model = mlp()
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    (x, y), (x2, y2) = batches(2)
    F.cross_entropy(model(x[:8]), y[:8]).backward()  # the mistake: micro-batch 1 by hand
    with pytest.warns(UserWarning, match="micro_batches"):
        opt.step(flatlab.per_sample(lambda idx: rows_of(model, x[8:], y[8:], idx)))
    F.cross_entropy(model(x2), y2).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per optimizer
        opt.step(flatlab.per_sample(lambda idx: rows_of(model, x2, y2, idx)))


def test_a_closure_loop_does_not_warn():
    model = mlp()
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, y in batches(3):
            opt.step(flatlab.per_sample(lambda idx, x=x, y=y: rows_of(model, x, y, idx)))
