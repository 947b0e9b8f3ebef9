"""PNG figures for the analyses: loss curves and surfaces, eigenvalue densities, SSAM's relative
gradient difference histogram and a corruption-robustness bar chart.

matplotlib is an optional dependency (`pip install flatlab[plot]`); it is imported when a plot is
drawn, with a clear error if it is missing. Figures are drawn on the Agg canvas directly
(`matplotlib.figure.Figure` + `FigureCanvasAgg`), so nothing here touches pyplot's global state
or the process-wide backend. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..errors import MissingDependencyError
from .gradstats import RelativeGradientDifference

__all__ = [
    "plot_curves_1d",
    "plot_surface_2d",
    "plot_eigen_density",
    "plot_relative_gradient_histogram",
    "plot_corruption_table",
]


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "flatlab.analysis.plots needs matplotlib; install it with `pip install flatlab[plot]`"
        ) from e
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _np(values):
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    import numpy as np

    return np.asarray(values, dtype=float)


def plot_curves_1d(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path,
    *,
    xlabel: str = "alpha",
    ylabel: str = "loss",
    title: str | None = None,
    logy: bool = False,
) -> Path:
    """Several runs' 1-D curves on one axis, e.g. `{"SGD": (alphas, loss), "SAM": (alphas, loss)}`.

    Example:
        ```python
        c = loss_surface_1d(model, batches, d, alphas)
        plot_curves_1d({"SGD": (c.alphas, c.loss)}, "runs/curve.png")
        ```
    """
    if not curves:
        raise ValueError("curves is empty")
    fig = _figure(5.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for label, (xs, ys) in curves.items():
        ax.plot(_np(xs), _np(ys), label=str(label), linewidth=1.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_surface_2d(
    xs,
    ys,
    values,
    path,
    *,
    levels: int = 30,
    zlabel: str = "loss",
    title: str | None = None,
    cmap: str = "viridis",
) -> Path:
    """Contour map (left) and 3-D surface (right) of `values[i, j]` at `(xs[i], ys[j])`, the layout
    returned by `loss_surface_2d`.

    Example:
        ```python
        s = loss_surface_2d(model, batches, d1, d2, grid, grid)
        plot_surface_2d(s.xs, s.ys, s.loss, "runs/surface.png", title="SAM")
        ```
    """
    import numpy as np

    x, y, z = _np(xs), _np(ys), _np(values)
    if z.shape != (x.size, y.size):
        raise ValueError(f"values must have shape ({x.size}, {y.size}), got {z.shape}")
    gx, gy = np.meshgrid(x, y, indexing="ij")
    fig = _figure(10.0, 4.2)
    ax = fig.add_subplot(1, 2, 1)
    cs = ax.contour(gx, gy, z, levels=levels, cmap=cmap)
    ax.clabel(cs, inline=True, fontsize=7, fmt="%.2f")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_aspect("equal", adjustable="box")
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    ax3.plot_surface(gx, gy, z, cmap=cmap, linewidth=0, antialiased=True)
    ax3.set_xlabel("x")
    ax3.set_ylabel("y")
    ax3.set_zlabel(zlabel)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_eigen_density(
    densities: Mapping[str, tuple],
    path,
    *,
    logy: bool = True,
    eigenvalues: Mapping[str, Sequence[float]] | None = None,
    title: str | None = None,
) -> Path:
    """Hessian eigenvalue densities (`{"SGD": (grid, density)}`, e.g. from `spectral_density`) on
    one axis, log-scaled by default since the bulk dwarfs the outliers (SSAM Fig. 5). Optional
    `eigenvalues` (e.g. top-k Lanczos values per run) are marked as vertical ticks.

    Example:
        ```python
        sd = spectral_density(model, batches)
        plot_eigen_density({"SAM": (sd.grid, sd.density)}, "runs/density.png")
        ```
    """
    import numpy as np

    if not densities:
        raise ValueError("densities is empty")
    fig = _figure(5.5, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for label, (grid, density) in densities.items():
        d = _np(density)
        ax.plot(_np(grid), np.maximum(d, 1e-12) if logy else d, label=str(label), linewidth=1.4)
    for i, (label, vals) in enumerate((eigenvalues or {}).items()):
        for j, v in enumerate(_np(vals)):
            ax.axvline(
                v, color=f"C{i}", linestyle=":", linewidth=1.0, label=f"{label} top-k" if j == 0 else None
            )
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_relative_gradient_histogram(
    runs: Mapping[str, object],
    path,
    *,
    bins: int = 100,
    range: tuple[float, float] = (-6.0, 4.0),
    title: str | None = None,
) -> Path:
    """SSAM Fig.

    2: histogram of `log10 |g_SAM - g_SGD| / |g_SGD|` for one or more runs, with the `r = 0` line and each run's
    share of coordinates left of it.

    `runs` maps a label to a `RelativeGradientDifference` or to a tensor of ratios.

    Example:
        ```python
        rgd = relative_gradient_difference(model, batches, rho=0.1)
        plot_relative_gradient_histogram({"ResNet-18": rgd}, "runs/grad_diff.png")
        ```
    """
    if not runs:
        raise ValueError("runs is empty")
    fig = _figure(5.5, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for label, run in runs.items():
        rgd = (
            run
            if isinstance(run, RelativeGradientDifference)
            else RelativeGradientDifference(
                torch.as_tensor(run, dtype=torch.float32).reshape(1, -1), float("nan")
            )
        )
        counts, edges = rgd.histogram(bins=bins, range=range)
        frac = counts / counts.sum().clamp_min(1)
        share = rgd.fraction_below(1.0)
        ax.stairs(_np(frac), _np(edges), label=f"{label} ({100 * share:.1f}% < 0)", fill=False, linewidth=1.4)
    ax.axvline(0.0, color="k", linestyle="--", linewidth=1.0)
    ax.set_xlabel("log10 |g_SAM - g_SGD| / |g_SGD|")
    ax.set_ylabel("fraction of coordinates")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_corruption_table(
    table: Mapping[str, Mapping[str, float]],
    path,
    *,
    ylabel: str = "accuracy",
    title: str | None = None,
) -> Path:
    """Grouped bars: one group per corruption, one bar per run (`{run: {corruption: value}}`), e.g. the
    accuracy at one severity or the mean over severities (S2-SAM's robustness table).

    Example:
        ```python
        plot_corruption_table({"SGD": {"gaussian_noise": 0.61}, "S2-SAM": {"gaussian_noise": 0.66}},
                              "runs/corruptions.png")
        ```
    """
    import numpy as np

    if not table:
        raise ValueError("table is empty")
    runs = list(table)
    corruptions: list[str] = []
    for row in table.values():
        corruptions += [c for c in row if c not in corruptions]
    x = np.arange(len(corruptions))
    width = 0.8 / len(runs)
    fig = _figure(max(5.0, 0.9 * len(corruptions) + 2.0), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for i, run in enumerate(runs):
        vals = [float(table[run].get(c, float("nan"))) for c in corruptions]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, vals, width, label=str(run))
    ax.set_xticks(x)
    ax.set_xticklabels(corruptions, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)
