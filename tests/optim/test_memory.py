"""What a sharpness-aware step holds beyond the base optimizer's step: one copy of the weights (the
backup of w) for SAM and S2-SAM, and no parameter-sized temporary."""

import pytest
import torch
from torch import nn

import flatlab
from flatlab.analysis import peak_memory, state_bytes
from tests.helpers.steps import run_step, step_closure


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def steady_step(name):
    """The peak of a step after warm-up (state allocated), and the optimizer's own state bytes."""
    model = mlp()
    # (no weight decay: torch's SGD then allocates no parameter-sized temporary of its own that
    # would hide one of the wrapper's in the peak)
    opt = flatlab.create_optimizer(name, model, lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 64, generator=g), torch.randint(0, 10, (8,), generator=g)
    sam = isinstance(opt, flatlab.SharpnessAware)

    def step():
        if sam:
            run_step(opt, model, x, y)
        else:
            opt.step(step_closure(opt, model, x, y))

    for _ in range(3):
        step()
    own = state_bytes(opt) if sam else 0

    def previous_step():
        # the profiler sees the frees of what this allocates (a single-pass method's pending
        # direction, freed when the next forward applies it)
        step()
        opt.zero_grad(set_to_none=True)

    # a single-pass method starts the step holding its pending directions (the gradient memory
    # SGD's loop frees at zero_grad): the peak counts from them
    held = sum(t.numel() * t.element_size() for t in getattr(opt, "pending_directions", ()))
    peak = held + peak_memory(step, setup=previous_step).peak
    return peak, own, sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("name, allowed", [("sam", 0), ("s2sam", 0), ("msam", 0), ("esam", 0), ("asam", 1)])
def test_no_parameter_sized_temporary(name, allowed):
    """eps is written over the gradient it comes from (a temporary eps would add param_bytes);
    ASAM's operator T = |w| + eta is its one parameter-sized temporary."""
    sgd_peak, _, param_bytes = steady_step("sgd")
    peak, _, _ = steady_step(name)
    assert peak - sgd_peak < (allowed + 0.1) * param_bytes, (peak, sgd_peak, param_bytes)


@pytest.mark.parametrize("name", ["sam", "s2sam"])
def test_state_is_one_copy_of_the_weights(name):
    _, own, param_bytes = steady_step(name)
    assert own == param_bytes


def test_gradient_is_dropped_once_it_became_eps():
    """After first_step the perturbed tensors' .grad is None, so a backward at w + eps without a
    zero_grad in between gives the gradient at w + eps alone (it used to add the ascent's)."""
    model = mlp()
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step()
    assert all(p.grad is None for p in model.parameters())
    nn.functional.cross_entropy(model(x), y).backward()
    at_perturbed = [p.grad.clone() for p in model.parameters()]
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(at_perturbed, model.parameters()))
