"""When the extra pass is taken: every step (SAM), every k-th step (LookSAM's refresh, composer's
interval), with probability p (RST), or when the squared gradient norm is unusually large (AE-SAM).

A step the schedule skips is a plain step: one forward/backward at w and the base optimizer's step
with that gradient (a descent policy may still amend it, as LookSAM does). Decisions are drawn from
the optimizer's generator and the schedule's state is saved, so a resumed run decides exactly as an
uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import check_number
from .policy import Policy

__all__ = ["Schedule", "EveryStep", "EveryK", "RandomSwitch", "AdaptiveSwitch"]


class Schedule(Policy):
    """Interface of a schedule.

    Attributes:
        name: short name for `repr`.
        needs_gradient: False: `decide` is called before the step's first pass (a skipped
            step then costs one pass and its ascent pass may skip weight gradients). True: it is
            called with the squared norm of the gradient at w, after the first pass (AE-SAM), so
            that pass computes every gradient and, under DDP, is all-reduced (the replicas must
            agree on the decision).
    """

    name = "schedule"
    needs_gradient = False
    #: every step takes the sharpness-aware update (nothing is skipped)
    every_step = False

    def check(self, optimizer) -> None:
        """Refuses a schedule that skips steps under a single-pass source (nothing to save there)."""
        if not self.every_step and optimizer.source.single_pass:
            raise ValueError("a single-pass method perturbs on every step; a schedule has nothing to save there")

    def bind(self, generator: torch.Generator) -> None:
        """The optimizer's generator, which random decisions are drawn from (saved with its state)."""
        self.generator = generator

    def decide(self, step: int, grad_sq_norm: float | None = None) -> bool:
        """Whether step `step` (0-based) takes the sharpness-aware (two-pass) update."""
        raise NotImplementedError

    def expected_rate(self, measured: float | None) -> float:
        """Expected fraction of sharpness-aware steps, for the cost of a step; `measured` is the
        fraction seen so far (None before the first step).
        """
        raise NotImplementedError



class EveryStep(Schedule):
    """The default: every step is a sharpness-aware step."""

    name = "every-step"
    every_step = True

    def decide(self, step, grad_sq_norm=None) -> bool:
        """Always: every step is sharpness-aware."""
        return True

    def expected_rate(self, measured):
        """1: every step."""
        return 1.0


class EveryK(Schedule):
    """A sharpness-aware step every `k`-th step (steps 0, k, 2k, ...), plain steps between."""

    name = "every-k"

    def __init__(self, k: int):
        check_number("every", k, low=1, integer=True)
        self.k = int(k)

    def decide(self, step, grad_sq_norm=None) -> bool:
        """Whether `step` is a multiple of `k`."""
        return step % self.k == 0

    def expected_rate(self, measured):
        """1/k: one step in k."""
        return 1.0 / self.k

    def extra_repr(self) -> str:
        """`k`, as `repr` shows it."""
        return f"k={self.k}"


class RandomSwitch(Schedule):
    """RST (Zhao et al. 2022): each step is a sharpness-aware step with probability `p`, a
    Bernoulli draw from the optimizer's generator (the paper's constant schedule; its reference
    setting p = 0.5 averages 1.5 forward/backward passes per step).
    """

    name = "random"

    def __init__(self, p: float = 0.5):
        check_number("sam_probability", p, low=0.0, high=1.0)
        self.p = float(p)

    def decide(self, step, grad_sq_norm=None) -> bool:
        """A Bernoulli(p) draw from the optimizer's generator."""
        return bool(torch.rand((), generator=self.generator) < self.p)

    def expected_rate(self, measured):
        """The probability p."""
        return self.p

    def extra_repr(self) -> str:
        """`p`, as `repr` shows it."""
        return f"p={self.p:g}"


class AdaptiveSwitch(Schedule):
    """AE-SAM (Jiang et al. 2023): a sharpness-aware step when the squared norm of the gradient at
    w is unusually large, i.e. `||g_t||^2 >= mu_t + c_t * sigma_t`, where
    `mu_t = delta mu_{t-1} + (1 - delta) ||g_t||^2` and
    `sigma_t^2 = delta sigma_{t-1}^2 + (1 - delta) (||g_t||^2 - mu_t)^2` (both updated before the
    comparison, from mu = 0 and sigma^2 = 1e-10), and `c_t` moves linearly from `c_start`
    (lambda_2) to `c_end` (lambda_1) over `total_steps` (constant `c_start` without it): few
    sharpness-aware steps early, more late, about half over a run.
    """

    name = "adaptive"
    needs_gradient = True

    def __init__(self, delta: float = 0.9, c_start: float = 1.0, c_end: float = -1.0, total_steps: int | None = None):
        check_number("delta", delta, low=0.0, high=1.0, high_open=True)
        check_number("c_start", c_start)
        check_number("c_end", c_end)
        check_number("total_steps", total_steps, low=1, integer=True, optional=True)
        self.delta = float(delta)
        self.c_start, self.c_end = float(c_start), float(c_end)
        self.total_steps = total_steps
        self.mean = 0.0
        self.var = 1e-10

    def threshold_factor(self, step: int) -> float:
        """c_t at step `step`: linear from `c_start` to `c_end` over `total_steps`, then `c_end`."""
        if self.total_steps is None:
            return self.c_start
        return self.c_start + (self.c_end - self.c_start) * min(step / self.total_steps, 1.0)

    def decide(self, step, grad_sq_norm=None) -> bool:
        """Updates mu and sigma with `grad_sq_norm` (required, finite), then compares it with
        `mu_t + c_t * sigma_t`.
        """
        if grad_sq_norm is None or not math.isfinite(grad_sq_norm):
            raise ValueError("the adaptive schedule decides from a finite squared gradient norm")
        self.mean = self.delta * self.mean + (1.0 - self.delta) * grad_sq_norm
        self.var = self.delta * self.var + (1.0 - self.delta) * (grad_sq_norm - self.mean) ** 2
        return grad_sq_norm >= self.mean + self.threshold_factor(step) * math.sqrt(self.var)

    def expected_rate(self, measured):
        """The fraction measured so far; one half before the first step."""
        # c_t symmetric around 0 makes about half of the steps sharpness-aware (the paper's ~50%)
        return 0.5 if measured is None else measured

    def state_dict(self) -> dict[str, Any]:
        """The moving mean and variance of the squared gradient norm."""
        return {"mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the moving mean and variance."""
        self.mean, self.var = float(state["mean"]), float(state["var"])

    def extra_repr(self) -> str:
        """`delta`, c_start -> c_end and `total_steps`, as `repr` shows them."""
        return f"delta={self.delta:g}, c={self.c_start:g}->{self.c_end:g}, total_steps={self.total_steps}"
