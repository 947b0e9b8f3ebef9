"""Which device a run or an analysis uses, from the name a config or a flag gives."""

from __future__ import annotations

import torch

from ..errors import UsageError

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device) -> torch.device:
    """`"auto"` -> CUDA if available else CPU; any other torch device name as is, with a readable
    error when it names CUDA on a machine without it.
    """
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:  # torch's message for a malformed name
        raise UsageError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} asked for, but CUDA is not available")
    return device
