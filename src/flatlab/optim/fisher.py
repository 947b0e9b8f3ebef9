"""Empirical Fisher information (diagonal) from per-sample gradients, vectorised with torch.func."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

__all__ = ["empirical_fisher"]


def empirical_fisher(
    model: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    params: list[Tensor],
    num_samples: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    chunk_size: int = 32,
) -> list[Tensor]:
    """Sum over `num_samples` samples of the squared per-sample gradient, for each of `params`.

    SSAM-F's score (Mi et al. 2022, eq. 5). `data` yields `(inputs, targets)` batches; batches
    are consumed until `num_samples` samples are seen. Per-sample gradients come from
    `vmap(grad(...))` in chunks of `chunk_size` samples, never one backward per sample.

    The model is evaluated in eval mode so that each sample's gradient depends on that sample
    alone (BatchNorm uses its running statistics) and no buffer is updated; its mode is restored.
    Parameters of `params` that are not parameters of `model` get a zero score.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    loss_fn = loss_fn or F.cross_entropy
    wanted = {id(p) for p in params}
    names = {name: p for name, p in model.named_parameters() if id(p) in wanted}
    detached = {name: p.detach() for name, p in names.items()}
    buffers = dict(model.named_buffers())
    scores = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in names.items()}

    def sample_loss(weights: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, (weights, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    was_training = model.training
    model.eval()
    device_type = params[0].device.type if params else "cpu"
    # Scores are ranked across all parameters: compute them in full precision even inside autocast.
    try:
        with torch.autocast(device_type, enabled=False):
            seen = _accumulate(data, num_samples, chunk_size, per_sample_grads, detached, scores)
    finally:
        model.train(was_training)
    if seen < num_samples:
        raise ValueError(
            f"the data gave {seen} samples, fewer than num_samples={num_samples}: pass num_samples={seen} "
            "(or fewer), or data with more samples (the optimizer's mask_data=)"
        )
    by_id = {id(p): scores[name] for name, p in names.items()}
    return [by_id.get(id(p), torch.zeros_like(p, dtype=torch.float32)) for p in params]


def _accumulate(data, num_samples, chunk_size, per_sample_grads, weights, scores) -> int:
    seen = 0
    for inputs, targets in data:
        take = min(num_samples - seen, inputs.shape[0])
        for start in range(0, take, chunk_size):
            stop = min(start + chunk_size, take)
            grads = per_sample_grads(weights, inputs[start:stop], targets[start:stop])
            for name, g in grads.items():
                scores[name] += g.float().pow(2).sum(0)
        seen += take
        if seen >= num_samples:
            break
    return seen
