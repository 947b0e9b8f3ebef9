"""What the step benchmarks share: one training step as a user writes it for any flatlab optimizer,
and interleaved timing (every optimizer timed once per round, so that drifts of the machine hit all
of them alike)."""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

import flatlab


def train_step(model, opt, x, y) -> None:
    family = isinstance(opt, flatlab.SharpnessAware)
    if family and opt.mask_due:
        opt.update_mask(model, [(x, y)])
    if not family or not opt.needs_closure:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return

    def losses(idx):
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        return F.cross_entropy(model(xb), yb, reduction="none")

    opt.step(flatlab.per_sample(losses, size=len(x)))


def warm_up(runs: dict, x, y, steps: int) -> None:
    for model, opt in runs.values():
        for _ in range(steps):
            train_step(model, opt, x, y)


def interleaved_medians(runs: dict, x, y, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per step of each ``name -> (model, optimizer)`` over ``rounds`` rounds of
    ``steps`` steps, the optimizers interleaved within each round (on a GPU, each timing ends when
    its kernels have)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (model, opt) in runs.items():
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                train_step(model, opt, x, y)
            sync()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}
