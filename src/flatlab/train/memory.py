"""Whether a run's model can fit in memory, decided before a byte of it is allocated.

`--width 1000` asks for ~100 G parameters; allocating them fails deep inside torch with a long
out-of-memory traceback, or drives the machine into swap first. `check_memory` builds the
model on the `meta` device (shapes, no storage), counts what training must hold at least, and
refuses in one line when that exceeds the memory the device has free.

The estimate is a floor, so that only a run that cannot fit is refused: the weights, their
gradients and the optimizer's state copies (momentum or Adam's two moments, and a sharpness-aware
method's copy of w), plus the inputs of the layers with parameters for one (micro-)batch, which
backward needs. What it leaves out (the other saved activations, temporaries, the allocator's
slack, CUDA's own context) only makes the real need larger.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from ..models import create_model
from ..optim import base_of, is_base_optimizer
from .config import TrainConfig

__all__ = ["MemoryEstimate", "estimate_training_memory", "available_memory", "check_memory"]

GiB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one process holds at least to train: `copies` tensors the size of the weights
    (`weight_bytes` each: the weights, their gradients, the optimizer's state) and
    `activations` (what backward keeps of one micro-batch).
    """

    parameters: int
    copies: int
    weight_bytes: int
    activations: int

    @property
    def total(self) -> int:
        # the gradients are set to None before each forward and fill up as backward frees the
        # activations: only one of the two is certain to be whole at a time
        """Bytes the step needs at its peak."""
        return (self.copies - 1) * self.weight_bytes + max(self.weight_bytes, self.activations)


def state_copies(config: TrainConfig) -> int:
    """Tensors the size of the weights that training keeps: the weights, their gradients, the base
    optimizer's state and, for a sharpness-aware method, its copy of w.
    """
    base = base_of(config.optimizer, config.base)
    moments = 2 if base in ("adam", "adamw") else int(config.momentum > 0)
    return 2 + moments + (0 if is_base_optimizer(config.optimizer) else 1)


def estimate_training_memory(config: TrainConfig, num_classes: int, in_channels: int, image_size: tuple[int, int],
                             world_size: int = 1) -> MemoryEstimate | None:
    """The floor of what one process holds to train `config` (see the module docstring), or None
    when the model cannot be built on the meta device (the check is then skipped).
    """
    try:
        with torch.device("meta"):
            model = create_model(config.resolved_model(), num_classes=num_classes, in_channels=in_channels,
                                 width=config.width, **config.model_args)
    except UsageError:
        raise
    except Exception:  # a model the meta device cannot build: no estimate rather than a false refusal
        return None
    parameters = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) // (world_size if config.fsdp else 1)
    batch = math.ceil(config.batch_size / world_size / config.accumulate)
    activations = _saved_inputs(model, (batch, in_channels, *image_size), 2 if config.amp != "none" else 4)
    return MemoryEstimate(parameters, state_copies(config), weight_bytes, activations)


def _saved_inputs(model: nn.Module, shape: tuple[int, ...], element_size: int) -> int:
    """Bytes of the inputs of the modules with parameters, for one forward of `shape`: backward
    needs each (a convolution's or linear layer's for its weight gradient, a norm's for its own), so
    they are all alive together at the end of the forward. A tensor read by two modules counts once.
    """
    inputs: dict[int, torch.Tensor] = {}  # the tensors held, so that no id is reused

    def keep(_module, args) -> None:
        for a in args:
            if isinstance(a, torch.Tensor):
                inputs[id(a)] = a

    hooks = [m.register_forward_pre_hook(keep) for m in model.modules()
             if any(p.requires_grad for p in m.parameters(recurse=False))]
    try:
        with torch.no_grad():
            model.train()(torch.empty(shape, device="meta"))
    except Exception:  # an op without a meta kernel: the weights alone still make a floor
        return 0
    finally:
        for h in hooks:
            h.remove()
    return sum(t.numel() for t in inputs.values()) * element_size


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation on `device`: CUDA's free memory, or on the CPU the
    kernel's estimate of what can be allocated without swapping (`MemAvailable`), bounded by the
    memory cgroup's limit (a container's); None where unknown.
    """
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, OSError, ValueError):
            pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_memory(config: TrainConfig, num_classes: int, in_channels: int, image_size: tuple[int, int],
                 device: torch.device, world_size: int = 1, *, available: int | None = None) -> None:
    """Raises `UsageError` when training `config` certainly needs more memory than
    `device` has free (`available` bytes, measured when not given).
    """
    estimate = estimate_training_memory(config, num_classes, in_channels, image_size, world_size)
    if estimate is None:
        return
    if available is None:
        available = available_memory(device)
    if available is None or estimate.total <= available:
        return
    batch = math.ceil(config.batch_size / world_size / config.accumulate)
    raise UsageError(
        f"width={config.width:g}: {config.resolved_model()} has {estimate.parameters / 1e6:,.1f}M parameters and "
        f"training it needs at least {estimate.total / GiB:,.1f} GiB ({estimate.copies} copies of its "
        f"{estimate.weight_bytes / GiB:,.1f} GiB of weights for the weights, gradients and optimizer state, "
        f"{estimate.activations / GiB:,.1f} GiB of activations for a batch of {batch}), but {device} has "
        f"{available / GiB:,.1f} GiB free: lower --width or --batch-size (or raise --accumulate)"
    )
