"""Model registry: build any flatlab model by name.

A variant is a registry entry (a builder function), not a subclass. Every builder takes
`(num_classes, in_channels, width, **kwargs)` and returns an `nn.Module`; `width` is a
channel multiplier so that the published architectures can be shrunk for CPU-scale runs.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from torch import nn

from ..errors import UsageError, check_number

ModelBuilder = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that registers `fn(num_classes, in_channels, width, **kwargs)` under `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].__qualname__})")
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, **kwargs
) -> nn.Module:
    """Build the registered model `name`.

    Args:
        name: one of `list_models`.
        num_classes: size of the classifier output.
        in_channels: channels of the input images (1 for digits / Fashion-MNIST, 3 for CIFAR).
        width: channel multiplier; every channel count `c` becomes `max(1, round(c * width))`.
            1.0 is the published architecture.
        **kwargs: model-specific options (see each builder's docstring).
    """
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    check_number("width", width, low=0, low_open=True, high=math.inf, high_open=True)
    check_number("num_classes", num_classes, low=1, integer=True)
    check_number("in_channels", in_channels, low=1, integer=True)
    params = inspect.signature(_REGISTRY[name]).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        options = [p for p in params if p not in ("num_classes", "in_channels", "width")]
        unknown = sorted(set(kwargs) - set(options))
        if unknown:
            raise UsageError(f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
                             f"its options: {', '.join(options) or '(none)'}")
    try:
        return _REGISTRY[name](num_classes=int(num_classes), in_channels=int(in_channels), width=float(width),
                               **kwargs)
    except (TypeError, ValueError) as err:
        if not kwargs or isinstance(err, UsageError):
            raise
        # the builder choked on a value the user gave it (e.g. channels="x")
        raise UsageError(f"model {name!r} cannot be built with options {kwargs}: {err}") from err


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in `model` (only those with `requires_grad` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
