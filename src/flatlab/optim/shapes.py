"""How the ascent direction is shaped: the p-norm ball of SAM, or ASAM's adaptive ellipsoid.

A shape turns the gradients of the perturbed tensors into a perturbation of a given radius, and
projects an accumulated perturbation back onto its ball (for several ascent steps).
"""

from __future__ import annotations

import math

from torch import Tensor

from . import functional as F

__all__ = ["Shape", "LpBall", "Adaptive"]


class Shape:
    """Interface: ``perturbation`` and ``project`` over aligned lists of gradients and weights."""

    name = "shape"

    def perturbation(
        self, grads: list[Tensor], weights: list[Tensor], adaptive: list[bool], radius: float, foreach: bool
    ) -> list[Tensor]:
        raise NotImplementedError

    def project(
        self, eps: list[Tensor], weights: list[Tensor], adaptive: list[bool], radius: float, foreach: bool
    ) -> list[Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""


class LpBall(Shape):
    """SAM's perturbation on the p-norm ball (p = 2: L2; p = inf: sign / FGSM-style)."""

    name = "lp"

    def __init__(self, p: float = 2.0):
        p = float(p)
        if not p > 1.0:
            raise ValueError(f"p must be > 1 (p = inf gives the sign perturbation), got p={p}")
        self.p = p

    def perturbation(self, grads, weights, adaptive, radius, foreach):
        return F.lp_perturbation(grads, radius, self.p, foreach=foreach)

    def project(self, eps, weights, adaptive, radius, foreach):
        return F.project_lp_ball(eps, radius, self.p, foreach=foreach)

    def extra_repr(self) -> str:
        return "p=inf" if math.isinf(self.p) else f"p={self.p:g}"


class Adaptive(Shape):
    """ASAM's scale-invariant perturbation, T = |w| + eta on adaptive tensors."""

    name = "adaptive"

    def __init__(self, eta: float = 0.01):
        if not eta >= 0.0:
            raise ValueError(f"eta must be >= 0, got eta={eta}")
        self.eta = float(eta)

    def perturbation(self, grads, weights, adaptive, radius, foreach):
        return F.adaptive_perturbation(grads, weights, adaptive, radius, self.eta, foreach=foreach)

    def project(self, eps, weights, adaptive, radius, foreach):
        return F.project_adaptive_ball(eps, weights, adaptive, radius, self.eta, foreach=foreach)

    def extra_repr(self) -> str:
        return f"eta={self.eta:g}"
