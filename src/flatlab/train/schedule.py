"""Learning-rate schedules by step: linear warm-up, then cosine, step decay or constant."""

from __future__ import annotations

import math

import torch

__all__ = ["lr_factor", "create_scheduler"]


def lr_factor(
    step: int, total: int, kind: str = "cosine", warmup: int = 0, milestones=(0.5, 0.75), decay: float = 0.1
) -> float:
    """Multiplier of the base learning rate at `step` (0-based) of `total` steps.

    Warm-up rises linearly to 1 over `warmup` steps (step 0 gets 1 / warmup). Cosine decays to 0
    at `total`; step decay multiplies by `decay` at each milestone (fractions of `total`).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "step":
        return decay ** sum(step >= m * total for m in milestones)
    if kind == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule {kind!r}; choose cosine, step or constant")


def create_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, kind: str, warmup_steps: int, milestones, decay: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step `LambdaLR` (call `scheduler.step()` after every optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, kind, warmup_steps, tuple(milestones), decay)
    )
