"""Whether a step's gradients are finite, and at what loss scale they were taken: one object with
one entry point, `GradientCheck.read`, for every pass of a step (the ascent gradient at w,
the gradients of further ascent steps, the descent gradient), with or without a GradScaler.

A step reads the host once: the check's verdict (a norm or a found-inf flag) is that one sync, and
where the step needs a global norm anyway (AE-SAM's schedule, S2-SAM's next perturbation) the norm
doubles as the check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .functional import global_norm, local_shards, scale_, shard_group

__all__ = ["GradientCheck", "Reading", "Amp", "norm_checks"]


@dataclass(frozen=True)
class Amp:
    """What a GradScaler hands the step that takes the descent: its overflow flag for this
    iteration and the scale the gradients carry (None: already unscaled).
    """

    found_inf: Tensor
    grad_scale: Tensor | None

    @staticmethod
    def of(holder) -> Amp | None:
        """The pair GradScaler.step sets as attributes on the optimizer it steps, if it did."""
        found_inf = getattr(holder, "found_inf", None)
        return None if found_inf is None else Amp(found_inf, getattr(holder, "grad_scale", None))


@dataclass(frozen=True)
class Reading:
    """The verdict on one list of gradients: finite, and their (unscaled) L2 norm when asked."""

    finite: bool
    norm: float | None = None


class GradientCheck:
    """Finiteness, unscaling and loss scale of the gradients a step reads.

    Args:
        skip_nonfinite: a descent gradient with an inf or NaN skips the base step (the weights stay
            exactly as they were). With a GradScaler, its own check decides instead.
        foreach: use `torch._foreach_*` kernels.
    """

    def __init__(self, skip_nonfinite: bool = True, foreach: bool = True):
        self.skip_nonfinite = skip_nonfinite
        self.foreach = foreach
        #: the factor the gradients of this step's backward passes carry (a GradScaler's scale
        #: inside `step(scaler=)`); norms are reported divided by it
        self.loss_scale = 1.0
        # the gradients now in .grad were read finite by this step (a plain step's, whose norm
        # the schedule read) and no backward ran since: the descent need not read them again
        self._vouched = False

    def vouch(self) -> None:
        """The gradients now in `.grad` were just read finite; the descent may trust them."""
        self._vouched = True

    def forget(self) -> None:
        """A backward ran (or a step ended): what was read no longer describes `.grad`."""
        self._vouched = False

    def read(self, grads: list[Tensor], *, also: list[Tensor] = (), norm: bool = False, always: bool = False,
             amp: Amp | None = None) -> Reading:
        """The one entry point: unscales `grads` (and `also`: gradients of the same step kept
        aside, e.g. the one at w that GSAM's descent mixes in) in place when a GradScaler handed
        the step its `amp` pair, and says whether they are finite and, with `norm`, the global
        L2 norm of `grads` (divided by the loss scale).

        `always`: check even when `skip_nonfinite` is off, for gradients that state is derived
        from (a moving average, a mask), which must never see an inf or NaN.
        """
        every = [*grads, *also]
        if amp is not None:
            if bool(amp.found_inf.item()):
                return Reading(False)
            if amp.grad_scale is None:
                return Reading(True) if not norm else self._norm_reading(grads, always, 1.0)
            inv_scale = amp.grad_scale.double().reciprocal().float()
            if norm:
                # the scaler found no inf, and 1/scale < 1 makes none: the norm checks the rest
                scale_(every, inv_scale, foreach=self.foreach)
                return self._norm_reading(grads, always, 1.0)
            # the scaler did not see what is kept aside: the fused kernel checks as it unscales
            return Reading(self._all_finite(every, inv_scale))
        if norm:
            return self._norm_reading(grads, always, self.loss_scale)
        if self._vouched or not (always or self.skip_nonfinite):
            return Reading(True)
        return Reading(self._all_finite(every))

    def _norm_reading(self, grads: list[Tensor], always: bool, scale: float) -> Reading:
        value = float(global_norm(grads, 2.0, foreach=self.foreach)) / scale
        return Reading(math.isfinite(value) or not (always or self.skip_nonfinite), value)

    def _all_finite(self, grads: list[Tensor], inv_scale: Tensor | None = None) -> bool:
        """Whether every gradient is finite; multiplies them by `inv_scale` when given."""
        if inv_scale is None and norm_checks(grads):
            return bool(torch.isfinite(global_norm(grads, 2.0, foreach=self.foreach)))
        # fp16/bf16 (a finite gradient's norm may overflow) or unscaling: the fused kernel's flags
        shards = shard_group(grads)
        by_device: dict[torch.device, list[Tensor]] = {}
        for g in local_shards(grads):
            by_device.setdefault(g.device, []).append(g)
        found = False
        for device, group in by_device.items():
            found_inf = torch.zeros((), dtype=torch.float32, device=device)
            inv = torch.ones((), dtype=torch.float32, device=device) if inv_scale is None else inv_scale.to(device)
            torch._amp_foreach_non_finite_check_and_unscale_(group, found_inf, inv)
            if shards is not None:  # every shard decides together, or the replicas would diverge
                torch.distributed.all_reduce(found_inf, op=torch.distributed.ReduceOp.MAX, group=shards)
            found = found or bool(found_inf.item())
        return not found


def norm_checks(tensors: list[Tensor]) -> bool:
    """Whether the L2 norm can stand for a finiteness check of `tensors`: an inf or NaN makes it
    non-finite, and in float32/float64 a finite gradient's norm overflows only past ~1e19 (such a
    step is skipped too). One read of the gradients, where the fused check also writes them.
    """
    return all(t.dtype in (torch.float32, torch.float64) for t in tensors)
