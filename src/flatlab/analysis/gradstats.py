"""Gradient statistics behind the SSAM and ESAM papers' motivating figures.

* `relative_gradient_difference` -- SSAM (Mi et al., NeurIPS 2022), Sec. 3.2 "What is the
  difference between the gradients of SGD and SAM?" and its Fig. 2: per coordinate,
  `|g_SAM - g_SGD| / |g_SGD|`; SSAM plots its logarithm, and "the parameters with [log ratio] less
  than 0 account for the vast majority", i.e. for most coordinates SAM changes the gradient by less
  than the gradient itself.
* `sds_statistics` -- ESAM (Du et al., ICLR 2022), Sec. 2.3 (Sharpness-sensitive Data Selection)
  and Appendix A.2 with Figs. 5-6: the batch is split by each sample's loss increase under the
  weight perturbation into B+ (the top `gamma` fraction) and B-; reported are the empirical and SAM
  losses of both subsets (Fig. 5) and the cosine similarity of the gradients at `w + eps` computed
  on B+, B- and a random subset of the same size with the full-batch gradient (Fig. 6).
* `linearity` -- ESAM Appendix A.3: `zeta(eps, B) = |L_B(w + eps) - L_B(w) - eps^T grad L_B(w)|`.

`eps` is SAM's perturbation `rho * g / ||g||` (`sam_perturbation`), optionally with ESAM's
Stochastic Weight Perturbation (`beta < 1`), and B+ is ESAM's selection: both are built by the
optimizers' own policies (`LpBall`, `draw_tensors`,
`SharpnessSensitive`), so the statistics describe what `flatlab.ESAM`
does: whole tensors kept with probability `beta` (at least one), the perturbation normalised
over the kept tensors and scaled by `1/beta`, as in the official code; B+ the `ceil(gamma B)`
samples whose loss rose most.

Mode: eval by default (`train_mode=False`), so BatchNorm uses running statistics and every pass
sees the same function of the weights. `train_mode=True` reproduces what a training step sees
(batch statistics; for SDS subsets, statistics of the subset, as in ESAM's second pass); every pass
over a batch then runs under the same RNG seed, so dropout masks agree between the clean and
perturbed passes, and running statistics are restored afterwards. Parameters are restored by copy;
`.grad` is never touched. All functions take an explicit `loss_fn` (mean-reduced; default
cross-entropy); where per-sample losses are needed they come from `torch.func.vmap` over it.
Each takes an optional `progress(done, total)` callback, called after each batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from ..errors import check_number
from ..optim import LpBall, SharpnessSensitive, draw_tensors
from ._common import (
    Batch,
    LossFn,
    ProgressFn,
    batch_size,
    cosine,
    fixed_rng,
    flatten,
    grads_or_zeros,
    materialize,
    model_device,
    per_sample_losses,
    preserved,
    report,
    resolve_loss,
    to_device,
    trainable_params,
)

__all__ = [
    "sam_perturbation",
    "RelativeGradientDifference",
    "relative_gradient_difference",
    "SDSStatistics",
    "sds_statistics",
    "linearity",
]


def sam_perturbation(
    grads: Sequence[Tensor],
    rho: float,
    *,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """SAM's first-order worst-case perturbation `rho * g / ||g||_2` (SSAM eq.

    2, ESAM eq. 5), the norm over all tensors together.

    With `beta < 1`, ESAM's SWP as `flatlab.ESAM` applies it: tensors drawn by
    `draw_tensors` from `generator` (torch's default one when None), the
    perturbation normalised over the drawn tensors and scaled by `1/beta` (norm `rho / beta`);
    the other tensors get zeros.

    Example:
        ```python
        eps = sam_perturbation([p.grad for p in model.parameters()], rho=0.05)
        ```
    """
    check_number("rho", rho, low=0.0)
    check_number("beta", beta, low=0.0, low_open=True, high=1.0)
    grads = [g.detach() for g in grads]
    picked = draw_tensors(len(grads), beta, generator if generator is not None else torch.default_generator)
    chosen = [g for g, keep in zip(grads, picked) if keep]
    eps = iter(LpBall(2.0).perturbation(chosen, chosen, [True] * len(chosen), rho / beta, True))
    return [next(eps) if keep else torch.zeros_like(g) for g, keep in zip(grads, picked)]


def _loss_grad(loss: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [g.detach() for g in grads_or_zeros(grads, params)]


def _grad(model: nn.Module, params: Sequence[Tensor], x: Tensor, y: Tensor, loss_fn: LossFn) -> list[Tensor]:
    return _loss_grad(loss_fn(model(x), y), params)


@dataclass
class RelativeGradientDifference:
    """Per-coordinate `|g_SAM - g_SGD| / (|g_SGD| + tiny)`, one row per batch (float32, CPU).

    `log10()` is SSAM's log ratio r; `fraction_below(1.0)` is the share of coordinates with r < 0;
    `histogram` bins r for Fig. 2.
    """

    ratio: Tensor  # (n_batches, n_params)
    rho: float

    def log10(self) -> Tensor:
        """`log10 r` per coordinate."""
        return torch.log10(self.ratio)

    def fraction_below(self, threshold: float = 1.0) -> float:
        """Share of coordinates with `r < threshold` (at 1: SAM changes them by less than their size)."""
        return float((self.ratio < threshold).float().mean())

    def histogram(self, bins: int = 100, range: tuple[float, float] = (-6.0, 4.0)) -> tuple[Tensor, Tensor]:
        """Counts and bin edges of `log10(ratio)` over all coordinates and batches.

        Values outside `range` (including `-inf` from coordinates where both gradients agree exactly) are counted in
        the first/last bin, so the counts always sum to `ratio.numel()`.
        """
        lo, hi = range
        r = self.log10().nan_to_num(nan=hi, posinf=hi, neginf=lo).clamp(lo, hi)
        counts = torch.histc(r, bins=bins, min=lo, max=hi)
        return counts, torch.linspace(lo, hi, bins + 1)


def relative_gradient_difference(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
    *,
    rho: float = 0.05,
    tiny: float = 1e-12,
    train_mode: bool = False,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> RelativeGradientDifference:
    """SSAM Fig. 2: how much SAM's gradient differs from SGD's, coordinate by coordinate.

    Per batch: `g_SGD = grad L_B(w)`, `g_SAM = grad L_B(w + rho * g_SGD / ||g_SGD||)`, and the ratio
    `|g_SAM - g_SGD| / (|g_SGD| + tiny)`; `tiny` keeps coordinates with a zero SGD gradient finite.

    Example:
        ```python
        rgd = relative_gradient_difference(model, batches, rho=0.1)
        rgd.fraction_below(1.0)           # share of coordinates with log ratio < 0
        counts, edges = rgd.histogram()
        ```
    """
    batches = materialize(batches)
    loss_fn = resolve_loss(loss_fn)
    params = trainable_params(model)
    device = model_device(model)
    rows = []
    with preserved(model, train=train_mode), torch.enable_grad():
        base = [p.detach().clone() for p in params]
        for i, batch in enumerate(batches):
            x, y = to_device(batch, device)
            with fixed_rng(seed + i):
                g_sgd = _grad(model, params, x, y, loss_fn)
            with torch.no_grad():
                torch._foreach_add_(params, sam_perturbation(g_sgd, rho))
            with fixed_rng(seed + i):
                g_sam = _grad(model, params, x, y, loss_fn)
            with torch.no_grad():
                torch._foreach_copy_(params, base)
            sgd, sam = flatten(g_sgd), flatten(g_sam)
            rows.append(((sam - sgd).abs() / (sgd.abs() + tiny)).float().cpu())
            report(progress, i + 1, len(batches))
    return RelativeGradientDifference(torch.stack(rows), rho)


@dataclass
class SDSStatistics:
    """ESAM Figs. 5-6 quantities, one entry per batch (float64).

    `loss_*` are the empirical losses L(w) and `sam_loss_*` the SAM losses L(w + eps) of B+ / B-;
    `cos_plus`, `cos_minus`, `cos_rand` are CosSim(grad L_S(w + eps), grad L_B(w + eps)) for
    S = B+, B-, a random subset with |S| = |B+| (ESAM A.2); `cos_plus_minus` compares B+ with B-.
    """

    loss_plus: Tensor
    loss_minus: Tensor
    sam_loss_plus: Tensor
    sam_loss_minus: Tensor
    cos_plus: Tensor
    cos_minus: Tensor
    cos_rand: Tensor
    cos_plus_minus: Tensor

    @property
    def sharpness_plus(self) -> Tensor:
        """R_{B+}(w) = L_{B+}(w + eps) - L_{B+}(w) (ESAM eq. 8)."""
        return self.sam_loss_plus - self.loss_plus

    @property
    def sharpness_minus(self) -> Tensor:
        """SAM loss minus empirical loss of B-, per batch."""
        return self.sam_loss_minus - self.loss_minus

    def mean(self) -> dict[str, float]:
        """Every statistic averaged over the batches."""
        out = {f.name: float(getattr(self, f.name).mean()) for f in fields(self)}
        out["sharpness_plus"] = float(self.sharpness_plus.mean())
        out["sharpness_minus"] = float(self.sharpness_minus.mean())
        return out


def sds_statistics(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
    *,
    rho: float = 0.05,
    gamma: float = 0.5,
    beta: float = 1.0,
    seed: int = 0,
    train_mode: bool = False,
    progress: ProgressFn | None = None,
) -> SDSStatistics:
    """ESAM SDS subset statistics (Sec. 2.3, App. A.2, Figs. 5-6) for each batch.

    Per batch: `g = grad L_B(w)`, `eps = sam_perturbation(g, rho, beta=beta)`; per-sample loss
    increase `l_i(w + eps) - l_i(w)`; B+ = the samples ESAM's descent would use
    (`SharpnessSensitive`: the `ceil(gamma * |B|)` with the largest increase,
    at most `|B| - 1` so that B- is not empty), B- = the rest; a random subset of |B+| samples
    (from `seed`) is the control. Gradients of the subsets are taken at `w + eps`.

    Example:
        ```python
        st = sds_statistics(model, batches, rho=0.05, gamma=0.5)
        st.mean()["cos_plus"] > st.mean()["cos_minus"]
        ```
    """
    check_number("gamma", gamma, low=0.0, high=1.0, low_open=True, high_open=True)
    selection = SharpnessSensitive(gamma)
    batches = materialize(batches)
    params = trainable_params(model)
    device = model_device(model)
    mean_loss = resolve_loss(loss_fn)
    generator = torch.Generator().manual_seed(seed)
    rec: dict[str, list[float]] = {f.name: [] for f in fields(SDSStatistics)}
    with preserved(model, train=train_mode), torch.enable_grad():
        base = [p.detach().clone() for p in params]
        for i, batch in enumerate(batches):
            n = batch_size(batch)
            if n < 2:
                raise ValueError("every batch needs at least two samples to form B+ and B-")
            x, y = to_device(batch, device)
            with fixed_rng(seed + i):
                out = model(x)
                g = _loss_grad(mean_loss(out, y), params)
            clean = per_sample_losses(loss_fn, out.detach(), y).detach()
            with torch.no_grad():
                torch._foreach_add_(params, sam_perturbation(g, rho, beta=beta, generator=generator))
                with fixed_rng(seed + i):
                    perturbed = per_sample_losses(loss_fn, model(x), y)
            k = min(selection.count(n), n - 1)
            order = selection.rank(clean, perturbed)
            plus, minus = order[:k], order[k:]
            rand = torch.randperm(n, generator=generator)[:k].to(device)
            grads = {}
            for name, idx in (("full", None), ("plus", plus), ("minus", minus), ("rand", rand)):
                xs, ys = (x, y) if idx is None else (x[idx], y[idx])
                with fixed_rng(seed + i):
                    grads[name] = _grad(model, params, xs, ys, mean_loss)
            with torch.no_grad():
                torch._foreach_copy_(params, base)
            rec["loss_plus"].append(float(clean[plus].mean()))
            rec["loss_minus"].append(float(clean[minus].mean()))
            rec["sam_loss_plus"].append(float(perturbed[plus].mean()))
            rec["sam_loss_minus"].append(float(perturbed[minus].mean()))
            rec["cos_plus"].append(cosine(grads["plus"], grads["full"]))
            rec["cos_minus"].append(cosine(grads["minus"], grads["full"]))
            rec["cos_rand"].append(cosine(grads["rand"], grads["full"]))
            rec["cos_plus_minus"].append(cosine(grads["plus"], grads["minus"]))
            report(progress, i + 1, len(batches))
    return SDSStatistics(**{k: torch.tensor(v, dtype=torch.float64) for k, v in rec.items()})


def linearity(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
    *,
    rho: float = 0.05,
    beta: float = 1.0,
    seed: int = 0,
    train_mode: bool = False,
    progress: ProgressFn | None = None,
) -> Tensor:
    """ESAM Appendix A.3 linearity `zeta(eps, B) = |L_B(w + eps) - L_B(w) - eps^T grad L_B(w)|` per batch.

    `eps = sam_perturbation(grad L_B(w), rho, beta=beta)`: with `beta < 1` this is the SWP
    perturbation whose linearity ESAM Fig. 7 compares with SAM's (`beta = 1`). Smaller is "more
    linear", i.e. the first-order inner maximisation is more accurate.

    Example:
        ```python
        zeta_sam = linearity(model, batches, rho=0.05)
        zeta_swp = linearity(model, batches, rho=0.05, beta=0.5)
        ```
    """
    batches = materialize(batches)
    loss_fn = resolve_loss(loss_fn)
    params = trainable_params(model)
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    out = []
    with preserved(model, train=train_mode), torch.enable_grad():
        base = [p.detach().clone() for p in params]
        for i, batch in enumerate(batches):
            x, y = to_device(batch, device)
            with fixed_rng(seed + i):
                loss0 = loss_fn(model(x), y)
            g = _loss_grad(loss0, params)
            eps = sam_perturbation(g, rho, beta=beta, generator=generator)
            with torch.no_grad():
                torch._foreach_add_(params, eps)
                with fixed_rng(seed + i):
                    loss1 = loss_fn(model(x), y)
                torch._foreach_copy_(params, base)
            first_order = flatten(eps).double() @ flatten(g).double()
            out.append(abs(float(loss1) - float(loss0.detach()) - float(first_order)))
            report(progress, i + 1, len(batches))
    return torch.tensor(out, dtype=torch.float64)
