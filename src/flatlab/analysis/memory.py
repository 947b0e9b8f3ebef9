"""How much memory a piece of training code allocates at its peak, on the CPU or a CUDA device.

Used by the optimizer-overhead benchmark to show what a sharpness-aware step holds beyond the base
optimizer's step: its persistent state (the backup of w) and its transient peak.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["PeakMemory", "peak_memory", "state_bytes"]


@dataclass(frozen=True)
class PeakMemory:
    """Bytes allocated by a call, relative to what was allocated when it started.

    Attributes:
        peak: the most held at once during the call.
        retained: still held when it returned (negative when it freed more than it allocated).
    """

    peak: int
    retained: int


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu",
                setup: Callable[[], object] | None = None) -> PeakMemory:
    """Runs `fn` once and measures its peak allocation on `device`.

    On CUDA this reads the caching allocator's counters. On the CPU, which keeps no such counters,
    it replays the allocations and frees that `torch.profiler` records (every one, with its
    size and time), in time order. A block allocated before the profiler started and freed during
    it is not seen (the profiler does not know its size): start `fn` without such blocks (e.g.
    call `zero_grad(set_to_none=True)` first when measuring a training step), or pass `setup`,
    which runs first under the profiler but outside the measurement, so that what it allocates
    and `fn` frees is seen (e.g. the previous training step, whose state the next one frees).

    Example:
        ```python
        >>> import torch
        >>> def f():
        ...     a = torch.empty(1000, dtype=torch.uint8)
        ...     b = torch.empty(500, dtype=torch.uint8)
        ...     del a
        ...     return b
        >>> m = peak_memory(f)
        >>> (m.peak, m.retained)
        (1500, 500)

        ```
    """
    device = torch.device(device)
    if device.type == "cuda":
        if setup is not None:
            setup()
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - start
        retained = torch.cuda.memory_allocated(device) - start
        del result
        return PeakMemory(peak, retained)
    if device.type != "cpu":
        raise ValueError(f"peak_memory measures the CPU or a CUDA device, got {device}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if setup is not None:
            setup()
        with torch.profiler.record_function(_MARK):
            pass
        result = fn()
    del result
    events = list(prof.profiler.kineto_results.events())
    start = next(e.start_ns() for e in events if e.name() == _MARK)
    # The raw records, not prof.events(): those book frees inside an operator or a
    # record_function scope (such as Optimizer.step) at the scope's start, which breaks the order.
    records = sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns())
    held = peak = 0
    for record in records:
        held += record.nbytes()
        if record.start_ns() < start:
            peak = held  # what setup holds is the baseline
        else:
            peak = max(peak, held)
    baseline = sum(r.nbytes() for r in records if r.start_ns() < start)
    return PeakMemory(peak - baseline, held - baseline)


#: the profiler event that separates setup from the measured call
_MARK = "flatlab.peak_memory.start"


def state_bytes(optimizer: torch.optim.Optimizer, params: nn.Module | list[torch.Tensor] | None = None) -> int:
    """Bytes of the tensors in `optimizer.state` (its per-parameter buffers: momentum, a
    sharpness-aware optimizer's backup of w and masks; not the base optimizer's state of a wrapper).

    `params` (a module or tensors) only to restrict the count to those parameters' entries.
    """
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    keep = None if params is None else set(params)
    total = 0
    for p, entry in optimizer.state.items():
        if keep is not None and p not in keep:
            continue
        for value in entry.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total
