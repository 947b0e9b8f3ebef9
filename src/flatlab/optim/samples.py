"""Which samples drive the descent gradient: all of them, or ESAM's sharpness-sensitive subset.

Selecting samples needs per-sample losses, which a plain ``closure()`` cannot give. A
:class:`PerSampleClosure` is the opt-in contract for that: it wraps a function
``loss_fn(indices) -> per-sample losses`` and leaves grad mode and ``backward`` to the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import check_number

__all__ = ["PerSampleClosure", "per_sample", "Samples", "AllSamples", "SharpnessSensitive"]


class PerSampleClosure:
    """A closure that evaluates per-sample losses on any subset of the current batch.

    ``fn(indices)`` must run the forward pass on the batch rows ``indices`` (a 1-D LongTensor, or
    None for the whole batch) and return the per-sample losses (shape ``[len(indices)]``) without
    calling ``backward``: the optimizer decides the grad mode (a no-grad forward for selection) and
    back-propagates the mean itself.

    Every flatlab optimizer accepts it in ``step`` (those that select no samples back-propagate the
    mean loss of the whole batch).

    Example::

        def losses(idx):
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            return F.cross_entropy(model(xb), yb, reduction="none")

        opt.step(flatlab.per_sample(losses))
    """

    def __init__(self, fn: Callable[[Tensor | None], Tensor]):
        self.fn = fn

    def losses(self, indices: Tensor | None = None) -> Tensor:
        out = self.fn(indices)
        if not isinstance(out, Tensor) or out.dim() != 1:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"a per-sample closure must return a 1-D tensor of losses, got {shape}")
        return out


def per_sample(fn: Callable[[Tensor | None], Tensor]) -> PerSampleClosure:
    """Marks ``fn(indices) -> per-sample losses`` as a :class:`PerSampleClosure`."""
    return fn if isinstance(fn, PerSampleClosure) else PerSampleClosure(fn)


class Samples:
    """Interface of a sample policy.

    Attributes:
        name: short name for ``repr``.
        needs_per_sample: True when ``select`` needs the per-sample losses at w and w + eps (a
            :class:`PerSampleClosure` and a no-grad forward at w + eps on the whole batch).
    """

    name = "samples"
    needs_per_sample = False

    def select(self, before: Tensor, after: Tensor) -> Tensor | None:
        """Rows of the batch for the descent pass from per-sample losses at w and w + eps (None: all)."""
        raise NotImplementedError

    def count(self, batch: int) -> int:
        """How many of ``batch`` samples the descent pass runs on."""
        return batch

    @property
    def descent_fraction(self) -> float:
        """Expected fraction of the batch in the descent pass (for the cost of a step)."""
        return 1.0

    def extra_repr(self) -> str:
        return ""


class AllSamples(Samples):
    """The default: every sample of the batch drives the descent."""

    name = "all"

    def select(self, before: Tensor, after: Tensor) -> Tensor | None:
        return None


class SharpnessSensitive(Samples):
    """ESAM's Sharpness-sensitive Data Selection: the descent pass runs only on the
    ``ceil(gamma * batch)`` samples whose loss rose most from w to w + eps (at least one). Ties go
    to the lower batch index, so the choice is deterministic. ``flatlab.analysis.sds_statistics``
    splits a batch into B+ and B- with this same policy."""

    name = "sharpness-sensitive"

    def __init__(self, gamma: float = 0.5):
        check_number("gamma", gamma, low=0.0, low_open=True, high=1.0)
        self.gamma = float(gamma)
        self.needs_per_sample = self.gamma < 1.0

    def count(self, batch: int) -> int:
        # the 1e-9 keeps gamma * batch = 64.00000001 (float error) from becoming 65
        return max(1, min(batch, math.ceil(self.gamma * batch - 1e-9)))

    @property
    def descent_fraction(self) -> float:
        return self.gamma

    @staticmethod
    def rank(before: Tensor, after: Tensor) -> Tensor:
        """Batch rows by decreasing loss rise from w to w + eps, ties to the lower index."""
        rise = (after.detach() - before.detach()).float()
        return torch.argsort(rise, descending=True, stable=True)

    def select(self, before: Tensor, after: Tensor) -> Tensor | None:
        if not self.needs_per_sample:
            return None
        return self.rank(before, after)[: self.count(before.numel())].sort().values

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}"
