"""Keeping BatchNorm running statistics out of the perturbed forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm  # torch's own base of every BatchNorm, private by name

__all__ = ["frozen_bn_stats"]


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Inside the block, BatchNorm layers in training mode normalise with batch statistics as usual
    but leave `running_mean`, `running_var` and `num_batches_tracked` untouched.

    SAM's second forward runs at w + eps; its statistics describe perturbed weights and should not
    leak into the model evaluated at w. Turning `track_running_stats` off for the pass is exact
    (unlike setting `momentum = 0`, which still counts batches and breaks `momentum=None`).

    Example:
        ```python
        loss_fn(model(x), y).backward()
        opt.first_step(zero_grad=True)
        with flatlab.frozen_bn_stats(model):
            loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)
        ```
    """
    frozen = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for m in frozen:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in frozen:
            m.track_running_stats = True
