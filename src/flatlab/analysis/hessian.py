"""Curvature of the training loss: Hessian-vector products, Lanczos, Hutchinson, spectral density.

SSAM (Mi et al., NeurIPS 2022), Sec. 5.3 "Hessian spectra" and Fig. 5, reports the Hessian spectrum
of the trained network approximated "using the Lanczos algorithm", together with the dominant
eigenvalue lambda_1 and the ratio lambda_1 / lambda_5 (the criterion of Foret et al. and Jastrzebski
et al.). This module computes exactly those numbers, plus the trace (Hutchinson) and the full
eigenvalue density (stochastic Lanczos quadrature, Ghorbani et al. 2019, SSAM's reference [21]).

Conventions shared by every function here:

* The Hessian is that of `L(w) = sum_b (n_b / N) * loss_fn(model(x_b), y_b)` -- the sample-weighted
  mean of the (mean-reduced) batch losses over a *fixed* list of batches, with respect to the
  parameters that have `requires_grad` (in `model.parameters()` order, flattened and
  concatenated). `batches` is read once into a list so every product sees the same data.
* No Hessian is ever formed: a product `H v` is a double backward pass (the gradient of
  `<grad L, v>`), one forward and two backward passes per batch.
* The model runs in eval mode by default (`train_mode=False`): BatchNorm then uses its running
  statistics, so `L` is a fixed function of the weights and the same for every batch split, and
  dropout is off. With `train_mode=True` BatchNorm normalises by batch statistics (the loss a
  training step sees); the running statistics it updates along the way are restored afterwards.
  Parameters, buffers and `.grad` are never left changed.
* Eigenvalues are the algebraically largest (a non-convex point can have negative ones); Lanczos
  tridiagonal matrices and eigenvalues are kept in float64 whatever the model dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..errors import UsageError, check_number
from ._common import (
    Batch,
    LossFn,
    ProgressFn,
    batch_size,
    flatten,
    grads_or_zeros,
    materialize,
    model_device,
    preserved,
    report,
    resolve_loss,
    sub_progress,
    to_device,
    trainable_params,
    unflatten,
)

HVP = Callable[[Tensor], Tensor]

__all__ = [
    "HessianOperator",
    "hessian_vector_product",
    "LanczosResult",
    "lanczos",
    "HessianEigen",
    "top_eigenvalues",
    "TraceEstimate",
    "hutchinson",
    "hutchinson_trace",
    "SpectralDensity",
    "stochastic_lanczos_quadrature",
    "gaussian_density",
    "spectral_density",
]


class HessianOperator:
    """`v -> H v` for the loss of `model` on a fixed list of batches; see the module docstring.

    Vectors are flat (length `n_params`) in the parameters' dtype and device; `unflatten(v)`
    turns one back into per-parameter tensors.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable[Batch],
        loss_fn: LossFn | None = None,
        *,
        train_mode: bool = False,
    ) -> None:
        self.model = model
        self.batches = materialize(batches)
        self.loss_fn = resolve_loss(loss_fn)
        self.train_mode = train_mode
        self.params = trainable_params(model)
        self.n_params = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self._total = sum(batch_size(b) for b in self.batches)

    def unflatten(self, vec: Tensor) -> list[Tensor]:
        """A flat vector as per-parameter tensors."""
        return unflatten(vec, self.params)

    def __call__(self, vec: Tensor) -> Tensor:
        """`H vec` for a flat vector `vec`."""
        if vec.shape != (self.n_params,):
            raise ValueError(f"vector must have shape ({self.n_params},), got {tuple(vec.shape)}")
        vec = vec.detach().to(dtype=self.dtype, device=self.device)
        out = torch.zeros_like(vec)
        device = model_device(self.model)
        with preserved(self.model, train=self.train_mode, params=False), torch.enable_grad():
            for batch in self.batches:
                x, y = to_device(batch, device)
                loss = self.loss_fn(self.model(x), y)
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                dot = flatten(grads_or_zeros(grads, self.params)) @ vec
                if not dot.requires_grad:  # gradient independent of the weights: H = 0 here
                    continue
                hv = torch.autograd.grad(dot, self.params, allow_unused=True)
                out.add_(flatten(grads_or_zeros(hv, self.params)), alpha=batch_size(batch) / self._total)
        return out


def hessian_vector_product(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
    *,
    train_mode: bool = False,
) -> HessianOperator:
    """Return the callable `v -> H v` (flat vectors) for the loss over `batches`.

    Example:
        ```python
        hvp = hessian_vector_product(model, [(x, y)])
        v = torch.randn(hvp.n_params)
        hv = hvp(v)                       # same shape as v
        ```
    """
    return HessianOperator(model, batches, loss_fn, train_mode=train_mode)


class LanczosResult(NamedTuple):
    """Eigenvalues (descending, float64) and, when asked for, unit eigenvectors as rows."""

    eigenvalues: Tensor  # (k,), float64, descending
    eigenvectors: Tensor | None  # (k, n_params), unit norm, rows match eigenvalues


def _start_vector(n: int, generator: torch.Generator, dtype: torch.dtype, device) -> Tensor:
    # Drawn in float64 on the CPU so a given seed means the same start on every dtype and device.
    v = torch.randn(n, generator=generator, dtype=torch.float64)
    return (v / v.norm()).to(dtype=dtype, device=device)


def _lanczos_run(
    hvp: HVP,
    v0: Tensor,
    steps: int,
    *,
    generator: torch.Generator | None,
    restart: bool,
    tol: float | None,
    progress: ProgressFn | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Lanczos with full reorthogonalisation; returns (alphas, betas, V) with T = tridiag(betas, alphas,
    betas) and V the orthonormal basis (rows).

    Without reorthogonalisation the basis loses orthogonality once a Ritz value converges and
    "ghost" copies of the top eigenvalue appear; projecting against the whole basis (twice --
    classical Gram-Schmidt needs the second pass to be stable) avoids that at O(steps * n) memory.
    An invariant subspace (beta ~ 0) either ends the run (quadrature: the Krylov space is exhausted)
    or, with `restart`, continues from a fresh random vector orthogonal to the basis so that
    repeated eigenvalues are found with their multiplicity.
    """
    n = v0.numel()
    dtype, device = v0.dtype, v0.device
    if tol is None:
        tol = 1e3 * torch.finfo(dtype).eps
    basis = torch.empty(steps, n, dtype=dtype, device=device)
    basis[0] = v0 / v0.norm()
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for j in range(steps):
        w = hvp(basis[j]).to(dtype=dtype, device=device)
        alpha = float(w @ basis[j])
        alphas.append(alpha)
        report(progress, j + 1, steps)
        if j == steps - 1:
            break
        done = basis[: j + 1]
        for _ in range(2):
            w = w - done.T @ (done @ w)
        beta = float(w.norm())
        scale = max(scale, abs(alpha), beta)
        if beta > tol * scale:
            betas.append(beta)
            basis[j + 1] = w / beta
            continue
        if not restart or generator is None:
            break
        w = _start_vector(n, generator, dtype, device)
        for _ in range(2):
            w = w - done.T @ (done @ w)
        norm = float(w.norm())
        if norm <= tol:  # the basis already spans the whole space
            break
        betas.append(0.0)
        basis[j + 1] = w / norm
    m = len(alphas)
    return (
        torch.tensor(alphas, dtype=torch.float64),
        torch.tensor(betas[: m - 1], dtype=torch.float64),
        basis[:m],
    )


def _tridiagonal(alphas: Tensor, betas: Tensor) -> Tensor:
    return torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)


def _default_iters(n_params: int, k: int) -> int:
    return min(n_params, max(3 * k, 30))


def lanczos(
    hvp: HVP,
    n_params: int,
    k: int = 1,
    iters: int | None = None,
    seed: int = 0,
    *,
    return_vectors: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    tol: float | None = None,
    progress: ProgressFn | None = None,
) -> LanczosResult:
    """Top-`k` eigenpairs of the symmetric operator `hvp` by Lanczos with full reorthogonalisation.

    `iters` Lanczos steps (default `min(n_params, max(3k, 30))`, at most `n_params`) build a
    tridiagonal `T` whose largest Ritz values approximate the largest eigenvalues; with
    `iters == n_params` they are exact up to rounding, multiplicities included (the run restarts
    from a random orthogonal vector whenever it hits an invariant subspace). The start vector is
    Gaussian from `seed`. Memory: `iters * n_params` elements of `dtype` for the basis.
    `dtype`/`device` default to `hvp.dtype`/`hvp.device` when present, else float64/CPU.
    `progress(done, iters)` is called after each step (one product with `hvp`).

    Example:
        ```python
        A = torch.diag(torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64))
        res = lanczos(lambda v: A @ v, 3, k=2, iters=3)
        res.eigenvalues            # tensor([5., 3.], dtype=torch.float64)
        ```
    """
    check_number("k", k, low=1, integer=True)
    if n_params < k:
        raise UsageError(f"k={k} exceeds n_params={n_params}")
    iters = _default_iters(n_params, k) if iters is None else min(int(iters), n_params)
    if iters < k:
        raise UsageError(f"iters={iters} must be >= k={k}")
    dtype = dtype or getattr(hvp, "dtype", torch.float64)
    device = device or getattr(hvp, "device", "cpu")
    generator = torch.Generator().manual_seed(seed)
    v0 = _start_vector(n_params, generator, dtype, device)
    alphas, betas, basis = _lanczos_run(
        hvp, v0, iters, generator=generator, restart=True, tol=tol, progress=progress
    )
    if alphas.numel() < k:
        raise ValueError(f"Lanczos stopped after {alphas.numel()} steps, fewer than k={k}")
    evals, evecs = torch.linalg.eigh(_tridiagonal(alphas, betas))
    order = torch.argsort(evals, descending=True)[:k]
    vectors = None
    if return_vectors:
        ritz = evecs[:, order].to(dtype=basis.dtype, device=basis.device)
        vectors = ritz.T @ basis
        vectors = vectors / vectors.norm(dim=1, keepdim=True)
    return LanczosResult(evals[order], vectors)


@dataclass
class HessianEigen:
    """Top Hessian eigenvalues (descending) and SSAM's sharpness ratio `lambda_1 / lambda_5`
    (`None` when fewer than five eigenvalues were asked for). `eigenvectors` (when requested) is
    one direction per eigenvalue, each a list of tensors shaped like the trainable parameters, ready
    for `loss_surface_1d`.
    """

    eigenvalues: Tensor
    ratio: float | None
    eigenvectors: list[list[Tensor]] | None = None


def top_eigenvalues(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
    k: int = 5,
    *,
    iters: int | None = None,
    seed: int = 0,
    return_vectors: bool = False,
    train_mode: bool = False,
    progress: ProgressFn | None = None,
) -> HessianEigen:
    """lambda_1..lambda_k of the loss Hessian and lambda_1/lambda_5 (SSAM Sec. 5.3, Fig. 5).

    See the module docstring for the loss, the BatchNorm handling and `lanczos` for `iters` and
    `progress`.

    Example:
        ```python
        eig = top_eigenvalues(model, [(x, y)], k=5, iters=40)
        eig.eigenvalues[0], eig.ratio     # lambda_1, lambda_1 / lambda_5
        ```
    """
    op = HessianOperator(model, batches, loss_fn, train_mode=train_mode)
    res = lanczos(op, op.n_params, k=k, iters=iters, seed=seed, return_vectors=return_vectors, progress=progress)
    ratio = float(res.eigenvalues[0] / res.eigenvalues[4]) if k >= 5 else None
    vectors = None
    if res.eigenvectors is not None:
        vectors = [op.unflatten(v) for v in res.eigenvectors]
    return HessianEigen(res.eigenvalues, ratio, vectors)


class TraceEstimate(NamedTuple):
    """Hutchinson's trace estimate, its standard error and the individual samples z^T H z."""

    trace: float
    stderr: float  # standard error of the mean of the samples
    samples: Tensor  # the individual z^T H z, float64


def hutchinson(
    hvp: HVP,
    n_params: int,
    samples: int = 100,
    seed: int = 0,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
) -> TraceEstimate:
    """Hutchinson's estimator `tr(H) ~ mean_i z_i^T H z_i` with Rademacher `z_i` (unbiased; its
    variance is `2 * sum_{i != j} H_ij^2` per sample), with the standard error of the mean.
    `progress(done, samples)` is called after each sample.

    Example:
        ```python
        A = torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64))
        hutchinson(lambda v: A @ v, 4, samples=10).trace    # 10.0 (exact for a diagonal A)
        ```
    """
    if samples < 2:
        raise ValueError(f"samples must be >= 2 for a standard error, got {samples}")
    dtype = dtype or getattr(hvp, "dtype", torch.float64)
    device = device or getattr(hvp, "device", "cpu")
    generator = torch.Generator().manual_seed(seed)
    values = torch.empty(samples, dtype=torch.float64)
    for i in range(samples):
        z = torch.randint(0, 2, (n_params,), generator=generator).to(dtype=dtype, device=device) * 2 - 1
        values[i] = float(z @ hvp(z).to(dtype))
        report(progress, i + 1, samples)
    return TraceEstimate(float(values.mean()), float(values.std() / math.sqrt(samples)), values)


def hutchinson_trace(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
    *,
    samples: int = 100,
    seed: int = 0,
    train_mode: bool = False,
    progress: ProgressFn | None = None,
) -> TraceEstimate:
    """Trace of the loss Hessian by Hutchinson's estimator (see `hutchinson`).

    Example:
        ```python
        est = hutchinson_trace(model, [(x, y)], samples=50)
        est.trace, est.stderr
        ```
    """
    op = HessianOperator(model, batches, loss_fn, train_mode=train_mode)
    return hutchinson(op, op.n_params, samples, seed, progress=progress)


class SpectralDensity(NamedTuple):
    """An eigenvalue density on a grid, with the quadrature nodes and weights of each run."""

    grid: Tensor  # (num_points,) eigenvalue axis
    density: Tensor  # (num_points,) Gaussian-broadened density, integrates to ~1
    nodes: list[Tensor]  # per run: Ritz values (quadrature nodes)
    weights: list[Tensor]  # per run: squared first components of the Ritz vectors (sum to 1)
    sigma: float


def stochastic_lanczos_quadrature(
    hvp: HVP,
    n_params: int,
    runs: int = 10,
    iters: int = 80,
    seed: int = 0,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Quadrature nodes and weights of the spectral measure (Ubaru et al. 2017; Ghorbani et al. 2019).

    For each of `runs` random unit starts `v` (Rademacher, normalised), `iters` Lanczos steps
    give `T = S diag(theta) S^T`; then `v^T f(H) v ~ sum_i S[0, i]^2 f(theta_i)`, so the nodes
    `theta_i` with weights `S[0, i]^2` approximate the eigenvalue distribution `(1/n) sum delta`.
    `progress(done, runs * iters)` is called after each Lanczos step.

    Example:
        ```python
        nodes, weights = stochastic_lanczos_quadrature(lambda v: A @ v, A.shape[0], runs=4, iters=20)
        ```
    """
    if runs < 1 or iters < 1:
        raise ValueError(f"runs and iters must be >= 1, got runs={runs}, iters={iters}")
    dtype = dtype or getattr(hvp, "dtype", torch.float64)
    device = device or getattr(hvp, "device", "cpu")
    generator = torch.Generator().manual_seed(seed)
    iters = min(iters, n_params)
    all_nodes, all_weights = [], []
    for r in range(runs):
        v0 = (torch.randint(0, 2, (n_params,), generator=generator) * 2 - 1).to(dtype=dtype, device=device)
        alphas, betas, _ = _lanczos_run(
            hvp, v0, iters, generator=None, restart=False, tol=None,
            progress=sub_progress(progress, r * iters, runs * iters),
        )
        if alphas.numel() < iters:  # the run ended early on an invariant subspace
            report(progress, (r + 1) * iters, runs * iters)
        evals, evecs = torch.linalg.eigh(_tridiagonal(alphas, betas))
        all_nodes.append(evals)
        all_weights.append(evecs[0] ** 2)
    return all_nodes, all_weights


def gaussian_density(
    nodes: list[Tensor],
    weights: list[Tensor],
    *,
    sigma: float | None = None,
    grid: Tensor | None = None,
    num_points: int = 1000,
) -> tuple[Tensor, Tensor, float]:
    """Average over runs of `sum_i w_i N(t; theta_i, sigma^2)` on `grid` -> (grid, density, sigma).

    `sigma` defaults to 1% of the node range and the grid to `num_points` points spanning the
    nodes padded by 5 sigma, so the density integrates to 1 up to the grid resolution.

    Example:
        ```python
        nodes, weights = stochastic_lanczos_quadrature(hvp, hvp.n_params, runs=5, iters=40)
        grid, density, sigma = gaussian_density(nodes, weights, sigma=0.05)
        ```
    """
    all_nodes = torch.cat([n.reshape(-1) for n in nodes]).to(torch.float64)
    lo, hi = float(all_nodes.min()), float(all_nodes.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(1.0, abs(hi))
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if grid is None:
        grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points, dtype=torch.float64)
    grid = grid.to(torch.float64)
    density = torch.zeros_like(grid)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    for n, w in zip(nodes, weights):
        diff = grid[:, None] - n.to(torch.float64)[None, :]
        density += (norm * torch.exp(-0.5 * (diff / sigma) ** 2)) @ w.to(torch.float64)
    return grid, density / len(nodes), sigma


def spectral_density(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn | None = None,
    *,
    runs: int = 10,
    iters: int = 80,
    sigma: float | None = None,
    grid: Tensor | None = None,
    num_points: int = 1000,
    seed: int = 0,
    train_mode: bool = False,
    progress: ProgressFn | None = None,
) -> SpectralDensity:
    """Eigenvalue density of the loss Hessian by stochastic Lanczos quadrature (Ghorbani et al.

    2019), Gaussian-broadened on a grid (see `stochastic_lanczos_quadrature` and `gaussian_density`).

    Example:
        ```python
        sd = spectral_density(model, [(x, y)], runs=5, iters=50)
        plot_eigen_density({"SGD": (sd.grid, sd.density)}, "density.png")
        ```
    """
    op = HessianOperator(model, batches, loss_fn, train_mode=train_mode)
    nodes, weights = stochastic_lanczos_quadrature(op, op.n_params, runs, iters, seed, progress=progress)
    grid, density, sigma = gaussian_density(nodes, weights, sigma=sigma, grid=grid, num_points=num_points)
    return SpectralDensity(grid, density, nodes, weights, sigma)
