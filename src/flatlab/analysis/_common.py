"""Plumbing shared by the analysis modules: parameter lists, batches, guarded evaluation.

Everything here is private; the public modules document the behaviour it implements.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Batch
from ..optim.functional import global_norm as _global_norm

LossFn = Callable[[Tensor, Tensor], Tensor]
# ``progress(done, total)``: called after each unit of work of a long loop (a grid point, a Lanczos
# step, a Hutchinson sample, a batch), e.g. to drive a progress bar; ``None`` reports nothing.
ProgressFn = Callable[[int, int], None]


def report(progress: ProgressFn | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def sub_progress(progress: ProgressFn | None, start: int, total: int) -> ProgressFn | None:
    """A callback for one part of a longer loop: its `done` counts from `start` out of `total`."""
    if progress is None:
        return None
    return lambda done, _total: progress(start + done, total)


def default_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(outputs, targets)


def resolve_loss(loss_fn: LossFn | None) -> LossFn:
    return default_loss if loss_fn is None else loss_fn


def trainable_params(model: nn.Module) -> list[Tensor]:
    """The tensors every analysis works on: parameters with `requires_grad` in module order."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameters with requires_grad=True")
    return params


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def materialize(batches: Iterable[Batch]) -> list[Batch]:
    """Read the batches once: every method evaluates the *same* data many times, and a shuffling
    DataLoader or a generator would otherwise give different (or no) data on the second pass.
    """
    out = []
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("each batch must be an (inputs, targets) pair")
        out.append((batch[0], batch[1]))
    if not out:
        raise ValueError("batches is empty")
    return out


def batch_size(batch: Batch) -> int:
    targets = batch[1]
    return int(targets.shape[0]) if isinstance(targets, Tensor) and targets.dim() > 0 else len(batch[0])


def to_device(batch: Batch, device: torch.device) -> Batch:
    x, y = batch
    if isinstance(x, Tensor):
        x = x.to(device, non_blocking=True)
    if isinstance(y, Tensor):
        y = y.to(device, non_blocking=True)
    return x, y


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    return [v.view_as(p) for v, p in zip(torch.split(vec, [p.numel() for p in like]), like)]


def grads_or_zeros(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
    # A parameter the loss does not reach (an unused head, a frozen branch) has no gradient;
    # it contributes exact zeros, never a silently shorter vector.
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like)]


class Evaluation(NamedTuple):
    loss: float  # sample-weighted mean of the (mean-reduced) loss over the batches
    top1: float  # top-1 accuracy; NaN unless the outputs are class scores for integer labels
    topk: float  # top-k accuracy, k = min(k, number of classes); NaN likewise


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
    *,
    k: int = 5,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> Evaluation:
    """Sample-weighted mean loss, top-1 and top-`k` accuracy over `batches`, read once.

    The model's mode is the caller's; batches are moved to the model's device; `autocast` (a
    context-manager factory, e.g. mixed precision) wraps each forward. The sums stay on the device in
    float64, so there is one host synchronisation at the end, not one per batch. Training's
    `flatlab.train.evaluate` is this function in eval mode with cross-entropy.
    """
    loss_fn = resolve_loss(loss_fn)
    device = model_device(model)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    hits1 = torch.zeros((), dtype=torch.int64, device=device)
    hitsk = torch.zeros((), dtype=torch.int64, device=device)
    total, classified = 0, True
    for batch in batches:
        x, y = to_device(batch, device)
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = model(x)
        n = batch_size(batch)
        total_loss += loss_fn(out, y).double() * n
        if out.dim() == 2 and y.dim() == 1 and not y.is_floating_point():
            hits1 += (out.argmax(dim=1) == y).sum()
            hitsk += (out.topk(min(k, out.shape[1]), dim=1).indices == y[:, None]).any(1).sum()
        else:
            classified = False
        total += n
    if total == 0:
        raise ValueError("batches is empty")
    nan = float("nan")
    return Evaluation(float(total_loss) / total, float(hits1) / total if classified else nan,
                      float(hitsk) / total if classified else nan)


def mean_gradient(
    model: nn.Module, params: Sequence[Tensor], batches: Sequence[Batch], loss_fn: LossFn
) -> list[Tensor]:
    """Sample-weighted average of the per-batch mean-loss gradients; leaves `.grad` untouched."""
    device = model_device(model)
    total = sum(batch_size(b) for b in batches)
    acc = [torch.zeros_like(p) for p in params]
    for batch in batches:
        x, y = to_device(batch, device)
        loss = loss_fn(model(x), y)
        grads = grads_or_zeros(torch.autograd.grad(loss, params, allow_unused=True), params)
        torch._foreach_add_(acc, grads, alpha=batch_size(batch) / total)
    return acc


def per_sample_losses(loss_fn: LossFn | None, outputs: Tensor, targets: Tensor) -> Tensor:
    """Loss of every sample.

    The default loss is cross-entropy with `reduction='none'`; any other `loss_fn` (mean-reduced, as everywhere in
    this package) is vectorised over the batch with `torch.func.vmap` (or, if that fails, looped) so that each
    sample is seen as a batch of one.
    """
    if loss_fn is None or loss_fn is default_loss:
        return F.cross_entropy(outputs, targets, reduction="none")
    try:
        return torch.func.vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(outputs, targets)
    except RuntimeError:
        # Losses with data-dependent control flow or .item() cannot be vmapped; a loop is slower
        # but computes the same values.
        return torch.stack([loss_fn(outputs[i : i + 1], targets[i : i + 1]) for i in range(len(outputs))])


@contextlib.contextmanager
def preserved(model: nn.Module, *, train: bool, params: bool = True) -> Iterator[None]:
    """Run the block in train or eval mode and put everything back afterwards.

    Parameters (when `params`) and all buffers (BatchNorm running statistics move on every
    train-mode forward) are snapshotted and restored by `copy_` -- never by undoing arithmetic,
    which is inexact in finite precision -- and each module's `training` flag is restored, also
    when the block raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    saved_params = [(p, p.detach().clone()) for p in model.parameters()] if params else []
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
    model.train(train)
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in saved_params + saved_buffers:
                t.copy_(s)
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def fixed_rng(seed: int) -> Iterator[None]:
    """Same random stream for every pass it wraps (identical dropout masks in train mode) without
    disturbing the caller's global RNG state.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def cosine(a: Sequence[Tensor], b: Sequence[Tensor], eps: float = 1e-12) -> float:
    fa, fb = flatten(a), flatten(b)
    return float(fa @ fb / (fa.norm() * fb.norm()).clamp_min(eps))


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    return _global_norm(list(tensors))
