"""The optimizer a training config asks for, built (and checked) through the optimizer registry."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UsageError
from ..optim import base_of, base_options, create_optimizer, is_base_optimizer, method_options
from .config import TrainConfig

__all__ = ["build_optimizer", "check_optimizer"]


def build_optimizer(config: TrainConfig, params_or_model, total_steps: int | None = None,
                    num_train: int | None = None) -> torch.optim.Optimizer:
    """The optimizer a config asks for (hyper-parameters validated by the optimizer itself);
    `num_train`: the training set's size, bSAM's `num_data` unless the config sets it.
    """
    c = config
    base = base_of(c.optimizer, c.base)
    shared = dict(lr=c.lr, weight_decay=c.weight_decay, momentum=c.momentum, nesterov=c.nesterov, damping=c.damping)
    accepted = base_options(base)
    kwargs: dict[str, Any] = {k: v for k, v in shared.items() if k in accepted and v is not None}
    if not is_base_optimizer(c.optimizer):
        kwargs.update(c.optimizer_kwargs())
        kwargs.update(seed=c.seed, max_grad_norm=c.max_grad_norm)
        takes = method_options(c.optimizer)
        if total_steps is not None and "total_steps" in takes:
            kwargs.setdefault("total_steps", total_steps)  # schedules over the run (SSAM-D's drop rate)
        if "num_data" in takes:
            # a stand-in (a config check, weights restored from a checkpoint) draws no noise: any size serves
            kwargs.setdefault("num_data", num_train if num_train is not None else 1)
    elif c.max_grad_norm is not None:
        raise UsageError("max_grad_norm is applied by the SAM-family optimizers; not with a plain base")
    return create_optimizer(c.optimizer, params_or_model, base=base, **kwargs)


def check_optimizer(config: TrainConfig) -> None:
    """Raises a `UsageError` with the optimizer's own message for a bad name or hyper-parameter, before any training."""
    try:
        # a one-weight stand-in model, with a normalisation layer for the methods that perturb those
        build_optimizer(config, torch.nn.LayerNorm(1))
    except UsageError:
        raise
    except ValueError as err:  # on a stand-in model, only the config's values can be wrong
        raise UsageError(str(err)) from err
