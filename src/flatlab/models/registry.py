"""Model registry: build any flatlab model by name.

A variant is a registry entry (a builder function), not a subclass. Every builder takes
``(num_classes, in_channels, width, **kwargs)`` and returns an ``nn.Module``; ``width`` is a
channel multiplier so that the published architectures can be shrunk for CPU-scale runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

ModelBuilder = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that registers ``fn(num_classes, in_channels, width, **kwargs)`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].__qualname__})")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, **kwargs
) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: one of :func:`list_models`.
        num_classes: size of the classifier output.
        in_channels: channels of the input images (1 for digits / Fashion-MNIST, 3 for CIFAR).
        width: channel multiplier; every channel count ``c`` becomes ``max(1, round(c * width))``.
            1.0 is the published architecture.
        **kwargs: model-specific options (see each builder's docstring).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    is_number = isinstance(width, (int, float)) and not isinstance(width, bool)
    if not is_number or not (width > 0 and math.isfinite(width)):
        raise ValueError(f"width must be a positive finite number, got width={width!r}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {arg}={value!r}")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, width=float(width), **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
