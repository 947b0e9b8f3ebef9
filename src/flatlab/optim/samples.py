"""Which samples drive the descent gradient: all of them, ESAM's sharpness-sensitive subset, or
all of them in ascent groups of m, each group perturbed along its own gradient (m-sharpness).

Selecting samples needs per-sample losses, which a plain `closure()` cannot give. A
`PerSampleClosure` is the opt-in contract for that: it wraps a function
`loss_fn(indices) -> per-sample losses` and leaves grad mode and `backward` to the optimizer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import check_number
from .policy import Policy

__all__ = ["PerSampleClosure", "per_sample", "MicroBatches", "micro_batches", "Samples", "AllSamples",
           "AscentGroups", "SharpnessSensitive"]


class PerSampleClosure:
    """A closure that evaluates per-sample losses on any subset of the current batch.

    `fn(indices)` must run the forward pass on the batch rows `indices` (a 1-D LongTensor, or
    None for the whole batch) and return the per-sample losses (shape `[len(indices)]`) without
    calling `backward`: the optimizer decides the grad mode (a no-grad forward for selection) and
    back-propagates the mean itself.

    Every flatlab optimizer accepts it in `step` (those that select no samples back-propagate the
    mean loss of the whole batch).

    Example:
        ```python
        def losses(idx):
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            return F.cross_entropy(model(xb), yb, reduction="none")

        opt.step(flatlab.per_sample(losses))
        ```
    """

    def __init__(self, fn: Callable[[Tensor | None], Tensor], size: int | None = None):
        check_number("size", size, low=1, integer=True, optional=True)
        self.fn = fn
        #: the number of rows of the batch, where known (m-sharpness splits it into groups)
        self.size = size

    def losses(self, indices: Tensor | None = None) -> Tensor:
        """The per-sample losses of the rows `indices` (None: all), checked to be a 1-D tensor."""
        return _checked(self.fn(indices))

    def backward(self, indices: Tensor | None, scale=None, no_sync=None) -> tuple[Tensor, Tensor]:
        """Back-propagates the mean loss over the rows `indices` (`scale`: a GradScaler's
        `scale` to apply first; `no_sync`: a DDP context for all but the last backward, unused
        with one backward) and returns it with the per-sample losses, both detached.
        """
        losses = self.losses(indices)
        loss = losses.mean()
        (loss if scale is None else scale(loss)).backward()
        return loss.detach(), losses.detach()

    def evaluate(self, indices: Tensor | None = None) -> Tensor:
        """Per-sample losses of the rows `indices` without a backward (call under no_grad)."""
        return self.losses(indices).detach()


def _checked(out) -> Tensor:
    if not isinstance(out, Tensor) or out.dim() != 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"a per-sample closure must return a 1-D tensor of losses, got {shape}")
    return out


class MicroBatches(PerSampleClosure):
    """A step over several micro-batches that equals one step on their concatenation (for models
    without batch-coupled layers such as BatchNorm): gradient accumulation for any flatlab method.

    `fn(batch, indices)` returns the per-sample losses of the rows `indices` (None: all) of one
    micro-batch `batch` (any object: a tuple of tensors, a dict). Rows are numbered across the
    micro-batches in order, so sample selection (ESAM) ranks the whole accumulated batch. Each
    backward covers one micro-batch, weighted by its share of the rows, so only one micro-batch's
    graph is alive at a time; under DDP every backward but the last skips the all-reduce.

    Example:
        ```python
        micro = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
        opt.step(flatlab.micro_batches(micro, lambda b, idx: F.cross_entropy(
            model(b[0] if idx is None else b[0][idx]), b[1] if idx is None else b[1][idx], reduction="none")))
        ```
    """

    def __init__(self, batches, fn: Callable[[object, Tensor | None], Tensor], sizes: list[int] | None = None):
        self.batches = list(batches)
        if not self.batches:
            raise ValueError("micro_batches needs at least one micro-batch")
        self.fn = fn
        self.sizes = list(sizes) if sizes is not None else [_rows(b) for b in self.batches]
        self.offsets = [0]
        for n in self.sizes:
            self.offsets.append(self.offsets[-1] + n)

    @property
    def total(self) -> int:
        """The number of rows over all micro-batches."""
        return self.offsets[-1]

    @property
    def size(self) -> int:
        """The number of rows over all micro-batches (the batch m-sharpness splits into groups)."""
        return self.offsets[-1]

    def _split(self, indices: Tensor | None):
        """Per micro-batch: (its index, its local rows or None for all of them); empty ones skipped."""
        for i, batch in enumerate(self.batches):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            if indices is None:
                yield batch, None, hi - lo
                continue
            mine = indices[(indices >= lo) & (indices < hi)] - lo
            if mine.numel():
                yield batch, mine, int(mine.numel())

    def losses(self, indices: Tensor | None = None) -> Tensor:
        """The per-sample losses of the rows `indices` (None: all), micro-batch by micro-batch."""
        return torch.cat([_checked(self.fn(batch, rows)) for batch, rows, _ in self._split(indices)])

    def backward(self, indices, scale=None, no_sync=None):
        """One backward per micro-batch holding rows of `indices`, each weighted by its share of the
        rows (under DDP all but the last in `no_sync`); returns the mean loss and the per-sample
        losses, detached.
        """
        parts = list(self._split(indices))
        count = sum(n for *_, n in parts)
        total, per_sample = 0.0, []
        for j, (batch, rows, _) in enumerate(parts):
            context = no_sync() if no_sync is not None and j < len(parts) - 1 else contextlib.nullcontext()
            with context:
                losses = _checked(self.fn(batch, rows))
                part = losses.sum() / count
                (part if scale is None else scale(part)).backward()
            total = total + part.detach()
            per_sample.append(losses.detach())
        return total, torch.cat(per_sample)

    def evaluate(self, indices=None):
        """Per-sample losses of the rows `indices` without a backward (call under no_grad)."""
        return torch.cat([_checked(self.fn(batch, rows)).detach() for batch, rows, _ in self._split(indices)])


def _rows(batch) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return _rows(next(iter(batch.values())))
    if isinstance(batch, (tuple, list)):
        return _rows(batch[0])
    raise TypeError(f"cannot tell the number of rows of a {type(batch).__name__}; pass sizes=")


def micro_batches(batches, fn: Callable[[object, Tensor | None], Tensor], sizes: list[int] | None = None):
    """Marks a step over several micro-batches: see `MicroBatches`."""
    return MicroBatches(batches, fn, sizes)


def per_sample(fn: Callable[[Tensor | None], Tensor], size: int | None = None) -> PerSampleClosure:
    """Marks `fn(indices) -> per-sample losses` as a `PerSampleClosure` (`size`: the batch's rows,
    which m-sharpness needs to split it).
    """
    if isinstance(fn, PerSampleClosure):
        return fn
    return PerSampleClosure(fn, size)


class Samples(Policy):
    """Interface of a sample policy.

    Attributes:
        name: short name for `repr`.
        needs_per_sample: True when `select` needs the per-sample losses at w and w + eps (a
            `PerSampleClosure` and a no-grad forward at w + eps on the whole batch).
    """

    name = "samples"
    needs_per_sample = False

    def check(self, optimizer) -> None:
        """Refuses sample selection under a single-pass source (there is no second pass)."""
        if self.needs_per_sample and optimizer.source.single_pass:
            raise ValueError("sample selection needs a second pass; it cannot be combined with a single-pass source")

    def select(self, before: Tensor, after: Tensor) -> Tensor | None:
        """Rows of the batch for the descent pass from per-sample losses at w and w + eps (None: all)."""
        raise NotImplementedError

    def count(self, batch: int) -> int:
        """How many of `batch` samples the descent pass runs on."""
        return batch

    @property
    def descent_fraction(self) -> float:
        """Expected fraction of the batch in the descent pass (for the cost of a step)."""
        return 1.0

    def ascent_groups(self, closure) -> list[tuple[Tensor | None, float]]:
        """The ascent groups of the closure's batch, each perturbed along its own gradient: rows
        (None: all) and the group's share of the batch. One group, the whole batch, by default.
        """
        return [(None, 1.0)]



class AllSamples(Samples):
    """The default: every sample of the batch drives the descent."""

    name = "all"

    def select(self, before: Tensor, after: Tensor) -> Tensor | None:
        """None: every row."""
        return None


class AscentGroups(AllSamples):
    """m-sharpness (Foret et al. 2021; Andriushchenko & Flammarion 2022): the batch is split into
    consecutive groups of `m` rows (the last may be smaller); each group is perturbed along its own
    gradient at w and its gradient at its own w + eps enters the descent, weighted by its share of
    the batch. It is what SAM does per replica under DDP, on one device; with `m` at least the batch
    it is SAM bit for bit. Costs the same passes on the same rows, in smaller pieces, and one more
    gradient-sized buffer (the groups' sum).

    Needs a `PerSampleClosure` that knows its batch's rows: `flatlab.per_sample(fn, size=len(x))`
    or `flatlab.micro_batches`.
    """

    name = "ascent-groups"

    def __init__(self, m: int = 32):
        check_number("m", m, low=1, integer=True)
        self.m = int(m)

    def check(self, optimizer) -> None:
        """Refuses what has no per-group meaning: a single-pass source, a decision from the batch
        gradient, and state derived from the ascent gradient (one update per step, not per group).
        """
        if optimizer.source.single_pass:
            raise ValueError("m-sharpness perturbs each group along its own gradient at w: it needs a two-pass source")
        if optimizer.schedule.needs_gradient:
            raise ValueError(f"the {optimizer.schedule.name} schedule decides from the whole batch's gradient; "
                             "it cannot be combined with m-sharpness")
        if optimizer.source.stateful or optimizer.coordinates.observes_gradients:
            raise ValueError("m-sharpness gives one ascent gradient per group: a policy that keeps state derived from "
                             "the step's ascent gradient cannot be combined with it")

    def ascent_groups(self, closure) -> list[tuple[Tensor | None, float]]:
        """Groups of `m` consecutive rows and their shares of the batch."""
        size = getattr(closure, "size", None)
        if size is None:
            raise TypeError("m-sharpness splits the batch into groups of m rows: pass "
                            "flatlab.per_sample(fn, size=len(batch)) or flatlab.micro_batches(...)")
        if size <= self.m:
            return [(None, 1.0)]
        return [(rows, rows.numel() / size) for rows in torch.arange(size).split(self.m)]

    def extra_repr(self) -> str:
        """`m`, as `repr` shows it."""
        return f"m={self.m}"


class SharpnessSensitive(Samples):
    """ESAM's Sharpness-sensitive Data Selection: the descent pass runs only on the
    `ceil(gamma * batch)` samples whose loss rose most from w to w + eps (at least one). Ties go
    to the lower batch index, so the choice is deterministic. `flatlab.analysis.sds_statistics`
    splits a batch into B+ and B- with this same policy.
    """

    name = "sharpness-sensitive"

    def __init__(self, gamma: float = 0.5):
        check_number("gamma", gamma, low=0.0, low_open=True, high=1.0)
        self.gamma = float(gamma)
        self.needs_per_sample = self.gamma < 1.0

    def count(self, batch: int) -> int:
        """`ceil(gamma * batch)`, at least one and at most `batch`."""
        # the 1e-9 keeps gamma * batch = 64.00000001 (float error) from becoming 65
        return max(1, min(batch, math.ceil(self.gamma * batch - 1e-9)))

    @property
    def descent_fraction(self) -> float:
        """The fraction gamma."""
        return self.gamma

    @staticmethod
    def rank(before: Tensor, after: Tensor) -> Tensor:
        """Batch rows by decreasing loss rise from w to w + eps, ties to the lower index."""
        rise = (after.detach() - before.detach()).float()
        return torch.argsort(rise, descending=True, stable=True)

    def select(self, before: Tensor, after: Tensor) -> Tensor | None:
        """The `count` rows whose loss rose most, in increasing order (None when gamma = 1: all)."""
        if not self.needs_per_sample:
            return None
        return self.rank(before, after)[: self.count(before.numel())].sort().values

    def extra_repr(self) -> str:
        """`gamma`, as `repr` shows it."""
        return f"gamma={self.gamma:g}"
