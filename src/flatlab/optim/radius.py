"""The perturbation radius over training: constant (SAM), or following the learning rate (GSAM)."""

from __future__ import annotations

import torch

from ..errors import check_number
from .policy import Policy

__all__ = ["RhoSchedule", "LRProportional"]


class RhoSchedule(Policy):
    """Interface: the radius of the coming step from the optimizer's state (its param groups)."""

    name = "rho"

    def bind(self, optimizer: torch.optim.Optimizer, rho: float) -> None:
        """Called once with the optimizer and its `rho` (the radius at the start)."""

    def radius(self, optimizer: torch.optim.Optimizer) -> float:
        """The radius for the coming step."""
        raise NotImplementedError



class LRProportional(RhoSchedule):
    """GSAM's schedule: `rho_t = rho_min + (rho_max - rho_min) * (lr_t - lr_min) / (lr_max - lr_min)`
    with `lr_t` the first param group's learning rate, so rho decays with the learning rate.

    `rho_max` defaults to the optimizer's `rho`, `lr_max` to the learning rate at construction
    (the peak of a decaying schedule; pass it when a warm-up starts lower).
    """

    name = "lr-proportional"

    def __init__(self, rho_min: float = 0.0, rho_max: float | None = None, lr_min: float = 0.0,
                 lr_max: float | None = None):
        check_number("rho_min", rho_min, low=0.0)
        check_number("rho_max", rho_max, low=0.0, optional=True)
        check_number("lr_min", lr_min, low=0.0)
        check_number("lr_max", lr_max, low=0.0, low_open=True, optional=True)
        self.rho_min, self.rho_max = float(rho_min), rho_max
        self.lr_min, self.lr_max = float(lr_min), lr_max

    def bind(self, optimizer, rho) -> None:
        """Takes the optimizer's radius and initial learning rate as the schedule's top."""
        if self.rho_max is None:
            self.rho_max = rho
        if self.lr_max is None:
            self.lr_max = float(optimizer.param_groups[0]["lr"])
        if not self.lr_max > self.lr_min:
            raise ValueError(f"lr_max must exceed lr_min, got lr_max={self.lr_max}, lr_min={self.lr_min}")
        if self.rho_max < self.rho_min:
            raise ValueError(f"rho_max must be >= rho_min, got rho_max={self.rho_max}, rho_min={self.rho_min}")

    def radius(self, optimizer) -> float:
        """The radius for the coming step."""
        lr = float(optimizer.param_groups[0]["lr"])
        fraction = (lr - self.lr_min) / (self.lr_max - self.lr_min)
        return self.rho_min + (self.rho_max - self.rho_min) * fraction

    def extra_repr(self) -> str:
        """The schedule's settings, for `repr`."""
        return f"rho_min={self.rho_min:g}, rho_max={self.rho_max:g}, lr_max={self.lr_max}"
