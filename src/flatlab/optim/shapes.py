"""How the ascent direction is shaped: the p-norm ball of SAM, ASAM's adaptive ellipsoid, GC-SAM's
centralised gradient, RWP's noise as drawn, or bSAM's gradient over its precision.

A shape turns the gradients of the perturbed tensors into a perturbation of a given radius, and
projects an accumulated perturbation back onto its ball (for several ascent steps).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import check_number
from . import functional as F
from .policy import Policy

__all__ = ["Shape", "LpBall", "AdaptiveBall", "CentralisedBall", "AsDrawn", "PrecisionScaled"]


class Shape(Policy):
    """Interface of a shape: `perturbation` and `project` over aligned lists of gradients and
    weights. `adaptive` flags, per tensor, whether a weight-dependent shape may scale it (ASAM
    leaves biases alone); other shapes ignore `weights` and `adaptive`.
    """

    name = "shape"
    #: a non-finite gradient gives a non-finite perturbation (through its norm), so the descent's
    #: check catches it; the sign perturbation does not (sign(nan) is 0) and is checked at once
    propagates_nonfinite = True
    #: reads `weights` and the `adaptive` flags (ASAM); the others ignore them
    weight_dependent = False
    #: eps is `radius * grads / ||grads||_2`: a caller holding that norm may add eps to w itself
    normalises_by_l2 = False

    def perturbation(
        self,
        grads: list[Tensor],
        weights: list[Tensor],
        adaptive: list[bool],
        radius: float,
        foreach: bool,
        *,
        in_place: bool = False,
    ) -> list[Tensor]:
        """The perturbation eps for `grads`. `in_place`: the caller no longer needs `grads`, and a shape may
        write eps over them (no parameter-sized temporary).
        """
        raise NotImplementedError

    def project(
        self, eps: list[Tensor], weights: list[Tensor], adaptive: list[bool], radius: float, foreach: bool
    ) -> list[Tensor]:
        """`eps` pulled back onto the ball of `radius` (after an extra ascent step)."""
        raise NotImplementedError



class LpBall(Shape):
    """SAM's perturbation on the p-norm ball (p = 2: L2; p = inf: sign / FGSM-style)."""

    name = "lp"

    def __init__(self, p: float = 2.0):
        check_number("p", p, low=1.0, low_open=True)  # p = inf is the sign perturbation
        self.p = float(p)
        self.propagates_nonfinite = not math.isinf(self.p)
        self.normalises_by_l2 = self.p == 2.0

    def perturbation(self, grads, weights, adaptive, radius, foreach, *, in_place=False):
        """The maximiser of the linearised loss on the p-norm ball of `radius`."""
        return F.lp_perturbation(grads, radius, self.p, foreach=foreach, in_place=in_place)

    def project(self, eps, weights, adaptive, radius, foreach):
        """`eps` rescaled (or, for p = inf, clamped) into the p-norm ball."""
        return F.project_lp_ball(eps, radius, self.p, foreach=foreach)

    def extra_repr(self) -> str:
        """`p`, as `repr` shows it."""
        return "p=inf" if math.isinf(self.p) else f"p={self.p:g}"


class AdaptiveBall(Shape):
    """ASAM's scale-invariant perturbation, T = |w| + eta on adaptive tensors: the ball is an
    ellipsoid stretched along large weights. Not to be confused with the schedule
    `AdaptiveSwitch`, AE-SAM's choice of when to perturb.
    """

    name = "adaptive"
    weight_dependent = True

    def __init__(self, eta: float = 0.01):
        check_number("eta", eta, low=0.0)
        self.eta = float(eta)

    def perturbation(self, grads, weights, adaptive, radius, foreach, *, in_place=False):
        """The perturbation eps = radius * T^2 g / ||T g||_2, T = |w| + eta on the adaptive tensors (1 elsewhere)."""
        return F.adaptive_perturbation(grads, weights, adaptive, radius, self.eta, foreach=foreach, in_place=in_place)

    def project(self, eps, weights, adaptive, radius, foreach):
        """`eps` rescaled into the ellipsoid ||T^-1 eps||_2 <= radius."""
        return F.project_adaptive_ball(eps, weights, adaptive, radius, self.eta, foreach=foreach)

    def extra_repr(self) -> str:
        """`eta`, as `repr` shows it."""
        return f"eta={self.eta:g}"


class CentralisedBall(Shape):
    """GC-SAM: SAM's L2 perturbation of the centralised gradient, eps = rho * GC(g) / ||g||_2, GC
    subtracting from each weight matrix or kernel (2+ dimensions) its mean over all dimensions but
    the first; vectors stay as they are (`functional.centralised_perturbation`). The norm is that
    of g before centring, as in pytorch_optimizer's `SAM(use_gc=True)`, so `||eps|| <= rho`. Only
    the ascent direction is centralised; the descent gradient is not.
    """

    name = "centralised"

    def perturbation(self, grads, weights, adaptive, radius, foreach, *, in_place=False):
        """The perturbation eps = radius * GC(g) / ||g||_2 (the norm taken before centring)."""
        return F.centralised_perturbation(grads, radius, foreach=foreach, in_place=in_place)

    def project(self, eps, weights, adaptive, radius, foreach):
        """`eps` rescaled into the L2 ball of `radius`."""
        return F.project_lp_ball(eps, radius, 2.0, foreach=foreach)


def _one_ascent_step(shape: Shape, optimizer) -> None:
    if optimizer.ascent_steps != 1:
        raise ValueError(f"the {shape.name} shape has no ball to project further ascent steps on; "
                         f"got ascent_steps={optimizer.ascent_steps}, use 1")


class AsDrawn(Shape):
    """RWP's shape: eps = rho * d, the random direction as its source drew it (the source sets its
    scale: `FilterNoise`'s filter norms), written over d, which such a source
    allocates anew at every step. No ball: one ascent step.
    """

    name = "as-drawn"
    # the gradient at w does not reach eps; a descent that reads it (RWP's mix) has it checked

    def check(self, optimizer) -> None:
        """Refuses a source that reads the gradient, and several ascent steps."""
        if not optimizer.source.independent_of_gradient:
            raise ValueError(f"the as-drawn shape keeps a random direction as drawn; the {optimizer.source.name} "
                             "source gives a gradient, which needs a ball (e.g. the default L2 shape)")
        _one_ascent_step(self, optimizer)

    def perturbation(self, grads, weights, adaptive, radius, foreach, *, in_place=False):
        """The drawn direction times the radius, written over it."""
        torch._foreach_mul_(F.local_shards(grads), radius)
        return grads

    def project(self, eps, weights, adaptive, radius, foreach):
        """Not defined: one ascent step only."""
        raise NotImplementedError("the as-drawn shape takes one ascent step")


class PrecisionScaled(Shape):
    """bSAM's shape: eps = rho * g / s per coordinate, s the precision that the base optimizer
    `BSAMBase` learns (no normalisation: the precision sets the size;
    the authors' `optim.py`). One ascent step.
    """

    name = "precision"

    def __init__(self, base):
        self.precision_of = base.precision

    def check(self, optimizer) -> None:
        """Refuses several ascent steps."""
        _one_ascent_step(self, optimizer)

    def perturbation(self, grads, weights, adaptive, radius, foreach, *, in_place=False):
        """The perturbation rho * g / s per tensor, s the base's precision."""
        precisions = F.local_shards([self.precision_of(w) for w in weights])
        local = F.local_shards(grads)
        if in_place:
            torch._foreach_mul_(local, radius)
            torch._foreach_div_(local, precisions)
            return grads
        out = torch._foreach_mul(local, radius)
        torch._foreach_div_(out, precisions)
        return out

    def project(self, eps, weights, adaptive, radius, foreach):
        """Not defined: one ascent step only."""
        raise NotImplementedError("the precision shape takes one ascent step")
