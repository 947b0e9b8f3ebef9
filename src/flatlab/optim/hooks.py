"""What the optimizer watches outside its step: backward passes into its parameters (the
accumulation mistake a two-pass step warns about; a gradient taken at w where a single-pass
method's w + eps was due) and the model's training forward (which applies a pending perturbation).
The hooks hold the optimizer weakly, so a dropped optimizer is freed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .perturbation import Phase

__all__ = ["watch_backwards", "perturb_before_training_forward", "is_lightning_closure"]


def watch_backwards(optimizer, params: list[Tensor]) -> None:
    """Notes a backward into the parameters outside `optimizer.step`."""
    ref = weakref.ref(optimizer)

    def accumulated(_: Tensor) -> None:
        opt = ref()
        if opt is not None and not opt._in_step:
            opt._backward_outside = True
            if opt.phase is Phase.PENDING:
                opt._backward_while_pending = True

    for p in params:
        if p.requires_grad and p.is_leaf:
            p.register_post_accumulate_grad_hook(accumulated)


def perturb_before_training_forward(optimizer, model: nn.Module):
    """Registers the forward pre-hook that moves a single-pass method's weights from w to the
    pending w + eps when a training forward of `model` starts (train mode, gradients on); an
    evaluation forward, a state_dict or a checkpoint between steps reads w. Prepended, so that it
    runs before FSDP's own pre-forward hook gathers the (then perturbed) shards.
    """
    ref = weakref.ref(optimizer)

    @torch.compiler.disable  # runs eagerly before a compiled forward, never traced into it
    def perturb(module: nn.Module, args: Any) -> None:
        opt = ref()
        if opt is not None and opt.phase is Phase.PENDING and module.training and torch.is_grad_enabled():
            opt.perturbation.apply_pending()

    return model.register_forward_pre_hook(perturb, prepend=True)


def is_lightning_closure(closure: Callable) -> bool:
    """Whether `closure` is Lightning's automatic-optimization closure (a partial of its
    precision plugin's method).
    """
    owner = getattr(getattr(closure, "func", closure), "__self__", closure)
    return type(owner).__module__.split(".")[0] in ("lightning", "pytorch_lightning")
