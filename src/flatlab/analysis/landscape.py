"""Loss landscapes: 1-D and 2-D slices of the loss (and accuracy) around the trained weights.

* SSAM (Mi et al., NeurIPS 2022), Sec. 5.3 "Visualization of landscape" / Fig. 4: following Li et
  al. (2018), points are sampled along random *filter-normalised* directions. `random_direction`
  implements Li et al.'s filter normalisation exactly as in their `ignore='biasbn'` setting: for
  every parameter with two or more dimensions (conv and linear weights), the direction is Gaussian
  and each filter -- each slice `d[i]` along dim 0, i.e. one output unit/channel -- is rescaled to
  the norm of the matching weight filter `w[i]`; every 1-D parameter (biases, BatchNorm/LayerNorm
  weights and biases) gets a zero direction, so those stay at their trained values.
* ESAM (Du et al., ICLR 2022), Sec. 3.2 "Visualization of Loss Landscapes" / Fig. 4: the axes are
  "two random sampled orthogonal Gaussian perturbations" and the displayed surface is the average
  over ten groups of such pairs -- `gaussian_direction_pairs` + `averaged_loss_surface_2d`.
* ESAM Appendix A.5 / Fig. 8: axes along adversarial weight perturbations `eta * grad L_{B_x}` and
  `eta * grad L_{B_y}`, gradients of two random halves of a batch -- `adversarial_directions`; and
  the single normalised loss-gradient (SAM ascent) direction -- `gradient_direction`.

A direction is a list of tensors shaped like the model's trainable parameters (`requires_grad`,
in `model.parameters()` order). Buffers (BatchNorm running statistics) are never moved.

Evaluation runs in eval mode (BatchNorm normalises with its running statistics, which are *not*
re-estimated at the perturbed weights; dropout is off), as in Li et al.'s plotting code. Weights are
set as `w + a*d1 + b*d2` from a saved copy for every grid point, so no error accumulates, and are
copied back bit-exactly afterwards, also on error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._common import (
    Batch,
    LossFn,
    ProgressFn,
    batch_size,
    evaluate,
    flatten,
    global_norm,
    grads_or_zeros,
    materialize,
    mean_gradient,
    model_device,
    preserved,
    report,
    resolve_loss,
    sub_progress,
    to_device,
    trainable_params,
    unflatten,
)

Direction = list[Tensor]

__all__ = [
    "Direction",
    "filter_normalize",
    "random_direction",
    "gaussian_direction_pairs",
    "gradient_direction",
    "adversarial_directions",
    "Surface1D",
    "Surface2D",
    "loss_surface_1d",
    "loss_surface_2d",
    "averaged_loss_surface_1d",
    "averaged_loss_surface_2d",
]


def _check_direction(direction: Sequence[Tensor], params: Sequence[Tensor], name: str = "direction") -> None:
    if len(direction) != len(params) or any(d.shape != p.shape for d, p in zip(direction, params)):
        raise ValueError(f"{name} must be a list of tensors shaped like the model's trainable parameters")


def filter_normalize(direction: Sequence[Tensor], model: nn.Module) -> Direction:
    """Li et al. (2018) filter normalisation with `ignore='biasbn'` (returns a new direction).

    For each parameter `w` with `w.dim() > 1`: `d[i] *= ||w[i]|| / (||d[i]|| + 1e-10)` for every
    filter `i` along dim 0. Parameters with `w.dim() <= 1` get zeros.

    Example:
        ```python
        d = filter_normalize([torch.randn_like(p) for p in model.parameters()], model)
        ```
    """
    params = trainable_params(model)
    _check_direction(direction, params)
    out = []
    for d, w in zip(direction, params):
        if w.dim() <= 1:
            out.append(torch.zeros_like(w))
            continue
        d = d.detach().to(w.dtype)
        d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
        w_norm = w.detach().reshape(w.shape[0], -1).norm(dim=1)
        scale = (w_norm / (d_norm + 1e-10)).reshape(-1, *([1] * (d.dim() - 1)))
        out.append(d * scale)
    return out


def _gaussian(params: Sequence[Tensor], generator: torch.Generator) -> Direction:
    # Drawn on the CPU from an explicit generator: the same seed gives the same direction on every
    # device and leaves the global RNG alone.
    return [
        torch.randn(p.shape, generator=generator, dtype=torch.float64).to(dtype=p.dtype, device=p.device)
        for p in params
    ]


def random_direction(model: nn.Module, seed: int = 0, *, normalization: str | None = "filter") -> Direction:
    """Gaussian direction, filter-normalised (Li et al. 2018; SSAM Fig. 4) unless `normalization=None`.

    Example:
        ```python
        d1, d2 = random_direction(model, seed=0), random_direction(model, seed=1)
        surf = loss_surface_2d(model, batches, d1, d2, xs, ys)
        ```
    """
    params = trainable_params(model)
    d = _gaussian(params, torch.Generator().manual_seed(seed))
    return _normalize(d, model, normalization)


def _normalize(d: Direction, model: nn.Module, normalization: str | None) -> Direction:
    if normalization is None:
        return d
    if normalization == "filter":
        return filter_normalize(d, model)
    raise ValueError(f"normalization must be 'filter' or None, got {normalization!r}")


def _orthogonalize(d2: Sequence[Tensor], d1: Sequence[Tensor], keep_norm: bool) -> Direction:
    f1, f2 = flatten(d1), flatten(d2)
    g = f2 - (f2 @ f1) / (f1 @ f1).clamp_min(torch.finfo(f1.dtype).tiny) * f1
    if keep_norm:
        g = g * (f2.norm() / g.norm().clamp_min(torch.finfo(g.dtype).tiny))
    return unflatten(g, d1)


def gaussian_direction_pairs(
    model: nn.Module, groups: int = 10, seed: int = 0, *, normalization: str | None = "filter"
) -> list[tuple[Direction, Direction]]:
    """`groups` pairs of orthogonal Gaussian directions for ESAM's averaged landscape (ESAM Fig. 4).

    Within a pair the second Gaussian is made orthogonal to the first (Gram-Schmidt over all
    parameters). With `normalization='filter'` both are then filter-normalised so the axes have the
    scale of the weights as in Li et al.; this rescales filters, so the pair is orthogonal only
    approximately (exactly with `normalization=None`, where the entries are raw N(0, 1)). ESAM does
    not state its scaling; filter normalisation is our choice so that surfaces are comparable with
    SSAM's and between networks.

    Example:
        ```python
        pairs = gaussian_direction_pairs(model, groups=10, seed=0)
        surf = averaged_loss_surface_2d(model, batches, pairs, xs, ys)
        ```
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    params = trainable_params(model)
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(groups):
        d1 = _gaussian(params, generator)
        d2 = _orthogonalize(_gaussian(params, generator), d1, keep_norm=True)
        pairs.append((_normalize(d1, model, normalization), _normalize(d2, model, normalization)))
    return pairs


def gradient_direction(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
    *,
    normalize: bool = True,
    train_mode: bool = False,
) -> Direction:
    """The adversarial direction `g / ||g||` of the mean loss over `batches` (the direction of SAM's
    first-order worst-case perturbation; ESAM eq. 5). `normalize=False` returns `g` itself.

    Example:
        ```python
        d = gradient_direction(model, batches)
        curve = loss_surface_1d(model, batches, d, torch.linspace(-0.5, 0.5, 21))
        ```
    """
    batches = materialize(batches)
    params = trainable_params(model)
    loss_fn = resolve_loss(loss_fn)
    with preserved(model, train=train_mode), torch.enable_grad():
        g = [t.detach() for t in mean_gradient(model, params, batches, loss_fn)]
    if normalize:
        norm = global_norm(g)
        if float(norm) == 0.0:
            raise ValueError("the loss gradient is zero; the adversarial direction is undefined")
        g = torch._foreach_div(g, norm)
    return list(g)


def adversarial_directions(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn | None = None,
    *,
    lr: float = 0.05,
    seed: int = 0,
    orthogonalize: bool = True,
    train_mode: bool = False,
) -> tuple[Direction, Direction]:
    """ESAM Appendix A.5 (Fig. 8) axes: `eta * grad L_{B_x}(w)` and `eta * grad L_{B_y}(w)`.

    `B_x` and `B_y` are a random split (from `seed`) of `batch` into two halves, `eta = lr` is
    the training learning rate. ESAM calls the two perturbations orthogonal; gradients of two halves
    of one batch are usually strongly correlated, so with `orthogonalize=True` the second is made
    orthogonal to the first (Gram-Schmidt) and rescaled back to its own norm.

    Example:
        ```python
        dx, dy = adversarial_directions(model, (x, y), lr=0.05)
        surf = loss_surface_2d(model, [(x, y)], dx, dy, xs, ys)
        ```
    """
    x, y = batch
    n = batch_size(batch)
    if n < 2:
        raise ValueError("the batch needs at least two samples to split into halves")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    halves = (perm[: n // 2], perm[n // 2 :])
    params = trainable_params(model)
    loss_fn = resolve_loss(loss_fn)
    device = model_device(model)
    x, y = to_device((x, y), device)
    dirs = []
    with preserved(model, train=train_mode), torch.enable_grad():
        for idx in halves:
            idx = idx.to(device)
            loss = loss_fn(model(x[idx]), y[idx])
            g = grads_or_zeros(torch.autograd.grad(loss, params, allow_unused=True), params)
            dirs.append([lr * t.detach() for t in g])
    dx, dy = dirs
    if orthogonalize:
        dy = _orthogonalize(dy, dx, keep_norm=True)
    return dx, dy


@dataclass
class Surface1D:
    """`loss[i]`/`accuracy[i]` at `w + alphas[i] * d` (accuracy is NaN for non-classifier outputs)."""

    alphas: Tensor
    loss: Tensor
    accuracy: Tensor


@dataclass
class Surface2D:
    """`loss[i, j]`/`accuracy[i, j]` at `w + xs[i] * d1 + ys[j] * d2` ('ij' indexing)."""

    xs: Tensor
    ys: Tensor
    loss: Tensor
    accuracy: Tensor


def _as_1d(values, name: str) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    return t


def _surface(
    model: nn.Module,
    batches: Sequence[Batch],
    loss_fn: LossFn,
    directions: Sequence[Direction],
    coords: Sequence[Sequence[float]],
    progress: ProgressFn | None = None,
) -> tuple[Tensor, Tensor]:
    params = trainable_params(model)
    for i, d in enumerate(directions):
        _check_direction(d, params, f"direction {i}")
    directions = [[t.detach().to(p.dtype) for t, p in zip(d, params)] for d in directions]
    base = [p.detach().clone() for p in params]
    losses, accs = [], []
    with preserved(model, train=False), torch.no_grad():
        for i, point in enumerate(coords):
            torch._foreach_copy_(params, base)
            for a, d in zip(point, directions):
                if a != 0.0:
                    torch._foreach_add_(params, d, alpha=float(a))
            loss, acc, _ = evaluate(model, batches, loss_fn, k=1)
            losses.append(loss)
            accs.append(acc)
            report(progress, i + 1, len(coords))
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(accs, dtype=torch.float64)


def loss_surface_1d(
    model: nn.Module,
    batches: Iterable[Batch],
    direction: Sequence[Tensor],
    alphas,
    loss_fn: LossFn | None = None,
    *,
    progress: ProgressFn | None = None,
) -> Surface1D:
    """Mean loss and accuracy over `batches` at `w + alpha * direction` for each alpha.

    `progress(done, total)` is called after each point.

    Example:
        ```python
        d = random_direction(model, seed=0)
        curve = loss_surface_1d(model, batches, d, torch.linspace(-1, 1, 41))
        curve.loss, curve.accuracy
        ```
    """
    alphas = _as_1d(alphas, "alphas")
    loss, acc = _surface(
        model, materialize(batches), resolve_loss(loss_fn), [list(direction)], [(float(a),) for a in alphas],
        progress,
    )
    return Surface1D(alphas, loss, acc)


def loss_surface_2d(
    model: nn.Module,
    batches: Iterable[Batch],
    d1: Sequence[Tensor],
    d2: Sequence[Tensor],
    xs,
    ys,
    loss_fn: LossFn | None = None,
    *,
    progress: ProgressFn | None = None,
) -> Surface2D:
    """Loss and accuracy grids at `w + x * d1 + y * d2` (SSAM Fig.

    4 with filter-normalised d1, d2). `progress(done, total)` is called after each grid point.

    Example:
        ```python
        d1, d2 = random_direction(model, seed=0), random_direction(model, seed=1)
        grid = torch.linspace(-1, 1, 21)
        surf = loss_surface_2d(model, batches, d1, d2, grid, grid)   # surf.loss: (21, 21)
        ```
    """
    xs, ys = _as_1d(xs, "xs"), _as_1d(ys, "ys")
    coords = [(float(a), float(b)) for a in xs for b in ys]
    loss, acc = _surface(
        model, materialize(batches), resolve_loss(loss_fn), [list(d1), list(d2)], coords, progress
    )
    shape = (xs.numel(), ys.numel())
    return Surface2D(xs, ys, loss.reshape(shape), acc.reshape(shape))


def averaged_loss_surface_2d(
    model: nn.Module,
    batches: Iterable[Batch],
    pairs: Sequence[tuple[Sequence[Tensor], Sequence[Tensor]]],
    xs,
    ys,
    loss_fn: LossFn | None = None,
    *,
    progress: ProgressFn | None = None,
) -> Surface2D:
    """ESAM Fig.

    4: the 2-D surface averaged (pointwise, loss and accuracy) over groups of direction pairs, e.g. from
    `gaussian_direction_pairs(model, groups=10)`. `progress(done, total)` counts grid points over all groups.

    Example:
        ```python
        surf = averaged_loss_surface_2d(model, batches, gaussian_direction_pairs(model, 10), xs, ys)
        ```
    """
    if not pairs:
        raise ValueError("pairs is empty")
    batches = materialize(batches)
    points = _as_1d(xs, "xs").numel() * _as_1d(ys, "ys").numel()
    total = points * len(pairs)
    surfaces = [
        loss_surface_2d(model, batches, d1, d2, xs, ys, loss_fn, progress=sub_progress(progress, i * points, total))
        for i, (d1, d2) in enumerate(pairs)
    ]
    first = surfaces[0]
    loss = torch.stack([s.loss for s in surfaces]).mean(0)
    acc = torch.stack([s.accuracy for s in surfaces]).mean(0)
    return Surface2D(first.xs, first.ys, loss, acc)


def averaged_loss_surface_1d(
    model: nn.Module,
    batches: Iterable[Batch],
    directions: Sequence[Sequence[Tensor]],
    alphas,
    loss_fn: LossFn | None = None,
    *,
    progress: ProgressFn | None = None,
) -> Surface1D:
    """The 1-D analogue of ESAM's averaged landscape: loss and accuracy along each direction,
    averaged pointwise over the directions (e.g. the first direction of each pair from
    `gaussian_direction_pairs`). `progress(done, total)` counts points over all directions.

    Example:
        ```python
        dirs = [d1 for d1, _ in gaussian_direction_pairs(model, groups=10)]
        curve = averaged_loss_surface_1d(model, batches, dirs, torch.linspace(-1, 1, 21))
        ```
    """
    if not directions:
        raise ValueError("directions is empty")
    batches = materialize(batches)
    points = _as_1d(alphas, "alphas").numel()
    total = points * len(directions)
    curves = [
        loss_surface_1d(model, batches, d, alphas, loss_fn, progress=sub_progress(progress, i * points, total))
        for i, d in enumerate(directions)
    ]
    loss = torch.stack([c.loss for c in curves]).mean(0)
    acc = torch.stack([c.accuracy for c in curves]).mean(0)
    return Surface1D(curves[0].alphas, loss, acc)
