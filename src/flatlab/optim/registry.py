"""Optimizers by name: `create_optimizer("ssam-f", model, lr=0.05, rho=0.1)`.

An entry is data: the preset class and the fixed keyword arguments that make the variant.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UsageError
from .bayes import BSAMBase
from .coordinates import NORM_LAYERS
from .lookbehind import LookbehindSAM
from .presets import (
    AESAM,
    ASAM,
    BSAM,
    ESAM,
    GCSAM,
    GSAM,
    MSAM,
    RST,
    RWP,
    S2SAM,
    SAM,
    SAMON,
    SSAM,
    WSAM,
    FriendlySAM,
    LookSAM,
    VaSSO,
)
from .sharpness_aware import SharpnessAware

__all__ = [
    "create_optimizer", "list_optimizers", "register_optimizer", "param_groups", "BASE_OPTIMIZERS",
    "is_base_optimizer", "base_of", "base_options", "method_options", "describe_optimizer",
]  # fmt: skip

BASE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "bsam": BSAMBase,  # bSAM's own (it learns the precision its perturbation reads)
}


@dataclass(frozen=True)
class _Entry:
    cls: type[SharpnessAware] | None  # None: the base optimizer alone
    fixed: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


_REGISTRY: dict[str, _Entry] = {}


def register_optimizer(name: str, cls: type[SharpnessAware] | None, summary: str = "", **fixed: Any) -> None:
    """Adds a named variant: `cls` built with `fixed` keyword arguments (user kwargs override)."""
    if name in _REGISTRY:
        raise ValueError(f"optimizer {name!r} is already registered")
    _REGISTRY[name] = _Entry(cls, dict(fixed), summary)


register_optimizer("sgd", None, "the base optimizer alone")
register_optimizer("adamw", None, "the base optimizer alone (base='adamw')", base="adamw")
register_optimizer("sam", SAM, "SAM, L2 ball")
# Every coordinate of a sign perturbation moves by rho, so its L2 size is rho * sqrt(#params):
# the default radius is far below the L2 methods' 0.05.
register_optimizer("sam-sign", SAM, "SAM, sign (p = inf) perturbation", p=math.inf, rho=5e-4)
register_optimizer("asam", ASAM, "adaptive SAM")
register_optimizer("esam", ESAM, "efficient SAM: random tensors (beta) + data selection (gamma)")
register_optimizer("ssam-f", SSAM, "sparse SAM, Fisher mask", mask="fisher")
register_optimizer("ssam-d", SSAM, "sparse SAM, dynamic mask", mask="dynamic")
register_optimizer("s2sam", S2SAM, "single-step SAM (previous gradient)")
register_optimizer("looksam", LookSAM, "SAM every k steps, its orthogonal part reused between "
                   "(its paper's alpha 0.7 did not train a 0.7M-parameter CNN, alpha 0.1 did, "
                   "without a gain: docs/results.md)")
register_optimizer("aesam", AESAM, "SAM when the squared gradient norm is unusually large")
register_optimizer("rst", RST, "SAM with probability p (or every k steps), else a base step")
register_optimizer("msam", MSAM, "single-step, perturbed along the negative momentum "
                   "(rho 3 did not train a 0.7M-parameter CNN, rho 0.3 did, below SAM: docs/results.md)")
register_optimizer("gsam", GSAM, "SAM minus the orthogonal gradient (surrogate gap), rho following the lr")
register_optimizer("wsam", WSAM, "sharpness as a weighted regulariser, decoupled")
register_optimizer("fsam", FriendlySAM, "ascent along the gradient minus its moving average")
register_optimizer("gcsam", GCSAM, "SAM with the ascent gradient centralised (gradient centralisation)")
register_optimizer("vasso", VaSSO, "ascent along a moving average of the gradients (variance suppressed)")
register_optimizer("sam-on", SAMON, "SAM perturbing only the normalisation layers' affine parameters")
register_optimizer("lookbehind-sam", LookbehindSAM,
                   "k SAM ascent/descent steps on the batch, then the slow weights step towards the fast ones")
register_optimizer("rwp", RWP, "random filter-wise perturbation, clean and perturbed gradients mixed")
register_optimizer("bsam", BSAM, "Bayesian SAM: noisy ascent, precision-scaled perturbation, its own base", base="bsam")


def list_optimizers() -> list[str]:
    """Names accepted by `create_optimizer`."""
    return list(_REGISTRY)


def describe_optimizer(name: str) -> str:
    """One line on the entry `name` (what `flatlab list` prints beside it)."""
    return _entry(name).summary


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise UsageError(f"unknown optimizer {name!r}; choose from {', '.join(list_optimizers())}")
    return _REGISTRY[name]


def is_base_optimizer(name: str) -> bool:
    """Whether the registry entry `name` is a base optimizer alone (no sharpness-aware wrapper)."""
    return _entry(name).cls is None


def base_of(name: str, default: str = "sgd") -> str:
    """The base optimizer the entry `name` is built on: its own (`adamw`) or `default`."""
    return _entry(name).fixed.get("base", default)


def method_options(name: str) -> set[str]:
    """The keyword arguments the entry `name` reads besides the base optimizer's: its preset's
    and `SharpnessAware`'s, less those the preset sets itself (nothing for a base optimizer
    alone).
    """
    cls = _entry(name).cls
    if cls is None:
        return set()
    found: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or not issubclass(klass, SharpnessAware):
            continue
        params = inspect.signature(klass.__init__).parameters
        found |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return found - {"base"} - cls.preset_options


def base_options(base: str) -> set[str]:
    """The keyword arguments the base optimizer `base` accepts among the shared ones (lr,
    momentum, weight_decay, ...): what a config may pass it.
    """
    if base not in BASE_OPTIMIZERS:
        raise UsageError(f"unknown base optimizer {base!r}; choose from {', '.join(BASE_OPTIMIZERS)}")
    return set(inspect.signature(BASE_OPTIMIZERS[base]).parameters) & _BASE_KEYS


_BASE_KEYS = {
    "lr", "momentum", "dampening", "nesterov", "weight_decay", "betas", "eps", "amsgrad", "maximize", "damping",
}  # fmt: skip


def param_groups(
    model: nn.Module, weight_decay: float = 0.0, decay_norm_and_bias: bool = True
) -> list[dict[str, Any]]:
    """Parameter groups for `model`: with `decay_norm_and_bias=False`, biases and normalisation
    weights get no weight decay (the papers decay everything, the default here).
    """
    if decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    no_decay: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name.endswith("bias") or isinstance(module, NORM_LAYERS):
                no_decay.add(id(p))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def create_optimizer(
    name: str,
    params_or_model: nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]],
    base: str = "sgd",
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Builds the optimizer `name` (see `list_optimizers`) on a base optimizer.

    Keyword arguments of the base optimizer (lr, momentum, weight_decay, nesterov, betas, eps, ...)
    go to it; the rest to the SAM variant (an argument that neither reads is a `UsageError` naming
    the method and what it takes). Given a model, the variant also receives it (frozen BatchNorm
    statistics in perturbed passes, DDP per-replica ascent, ASAM's bias rule).

    Example:
        ```python
        opt = flatlab.create_optimizer("esam", model, lr=0.1, momentum=0.9, rho=0.05, beta=0.6)
        ```
    """
    entry = _entry(name)
    options = {**entry.fixed, **kwargs}
    base = options.pop("base", base)
    accepted = base_options(base)
    base_cls = BASE_OPTIMIZERS[base]
    base_kwargs = {k: options.pop(k) for k in list(options) if k in _BASE_KEYS}
    unknown = [k for k in base_kwargs if k not in accepted]
    if unknown:
        raise UsageError(f"base optimizer {base!r} takes no {', '.join(unknown)}")
    model = params_or_model if isinstance(params_or_model, nn.Module) else None
    decay_all = options.pop("decay_norm_and_bias", True)
    if model is not None:
        params = param_groups(model, base_kwargs.pop("weight_decay", 0.0), decay_all)
    else:
        params = list(params_or_model)
    takes = method_options(name)
    unknown = sorted(set(options) - takes)
    if unknown:
        offer = (f"it takes {', '.join(sorted(takes))}" if takes
                 else f"it takes only the base options ({', '.join(sorted(accepted))})")
        raise UsageError(f"optimizer {name!r} does not take {', '.join(unknown)}; {offer}")
    base_opt = base_cls(params, **base_kwargs)
    if entry.cls is None:
        return base_opt
    if model is not None:
        options.setdefault("model", model)
    return entry.cls(base_opt, **options)
