"""Sparse-training methods by name: `create_masking("rigl", model, 0.9, total_steps=...)`.

An entry is data (the method and a one-line summary), as in the optimizer registry; the options
are those of `WeightMasking`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import UsageError
from .masking import WeightMasking

__all__ = ["create_masking", "list_sparse_methods"]

_REGISTRY: dict[str, str] = {
    "random": "static random mask (the sparse-training baseline)",
    "magnitude": "one-shot magnitude pruning of the current weights (lottery ticket with rewind_to)",
    "snip": "SNIP: connection sensitivity |g * w| at initialisation (Lee et al. 2019)",
    "grasp": "GraSP: gradient-signal preservation, keep the largest w * Hg (Wang et al. 2020)",
    "set": "SET: drop smallest |w|, grow at random (Mocanu et al. 2018)",
    "rigl": "RigL: drop smallest |w|, grow largest |dense gradient| (Evci et al. 2020)",
}


def list_sparse_methods() -> list[str]:
    """Names accepted by `create_masking`."""
    return list(_REGISTRY)


def create_masking(name: str, model: nn.Module, sparsity: float, **kwargs: Any) -> WeightMasking:
    """A `WeightMasking` of method `name` (see `list_sparse_methods`); `kwargs` go
    to it (distribution, update_interval, total_steps, seed, ...). Call `init` on the result.

    Example:
        ```python
        masking = create_masking("snip", model, 0.95, distribution="global").init(data=batches[:4])
        ```
    """
    if name not in _REGISTRY:
        raise UsageError(f"unknown sparse method {name!r}; choose from {', '.join(list_sparse_methods())}")
    if "method" in kwargs:
        raise ValueError(f"create_masking({name!r}, ...) names the method; do not pass method={kwargs['method']!r}")
    return WeightMasking(model, sparsity, method=name, **kwargs)
