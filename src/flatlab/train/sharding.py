"""Sharded data parallel (FSDP2) for a run: shard the model, gather and re-shard its state.

Checkpoints stay plain: every sharded tensor (DTensor) in the model's and the optimizer's state is
gathered into a full tensor on every rank (a collective, so all ranks take part) and rank 0 writes
it; loading reads the full tensors and shards each like its parameter again. A checkpoint is
therefore the same file whatever the number of processes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

__all__ = ["shard_model", "full_state", "reshard_like"]


def shard_model(model: nn.Module) -> nn.Module:
    """`fully_shard` on every direct child that holds parameters, then on the model: each child's
    parameters are all-gathered only for its own forward and backward.
    """
    for child in model.children():
        if any(True for _ in child.parameters()):
            fully_shard(child)
    fully_shard(model)
    return model


def full_state(obj: Any) -> Any:
    """`obj` (nested dicts, lists, tuples) with every DTensor gathered into a full tensor."""
    if isinstance(obj, DTensor):
        return obj.full_tensor()
    if isinstance(obj, dict):
        return {k: full_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(full_state(v) for v in obj)
    return obj


def reshard_like(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    """After loading a full state into `optimizer` (and its `base`, if any), shards every
    per-parameter tensor of a sharded parameter's shape like that parameter.
    """
    holders = [optimizer, getattr(optimizer, "base", None)]
    for holder in (h for h in holders if h is not None):
        for p in params:
            if not isinstance(p, DTensor) or p not in holder.state:
                continue
            state = holder.state[p]
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor) and not isinstance(value, DTensor) and value.shape == p.shape:
                    state[key] = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
