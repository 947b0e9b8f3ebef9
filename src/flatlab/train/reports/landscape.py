"""The landscape report: loss and accuracy surfaces around each run's weights, as JSON and figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ...analysis import landscape as _landscape
from ...data import Batch
from ...errors import UsageError
from ..compare import markdown_table
from .common import ReportOptions, Timer, fmt, mark_compare, per_run, plots, report
from .runs import LoadedRun, check_positive

__all__ = ["DIRECTIONS", "analyse_landscape", "landscape_table"]

DIRECTIONS = ("random", "gaussian", "adversarial")


def _directions(run: LoadedRun, batches, directions: str, dims: int, groups: int, seed: int):
    """The directions of one run: a list of directions (1-D) or of (d1, d2) pairs (2-D); several
    entries are averaged (ESAM's averaged Gaussian landscape).
    """
    model = run.model
    if directions == "random":
        if dims == 1:
            return [_landscape.random_direction(model, seed)]
        return [(_landscape.random_direction(model, seed), _landscape.random_direction(model, seed + 1))]
    if directions == "gaussian":
        pairs = _landscape.gaussian_direction_pairs(model, groups=groups, seed=seed)
        return [d1 for d1, _ in pairs] if dims == 1 else pairs
    if dims == 1:
        return [_landscape.gradient_direction(model, batches)]
    return [_landscape.adversarial_directions(model, batches[0], lr=run.config.lr, seed=seed)]


def _axis_label(directions: str) -> str:
    return {"random": "alpha (filter-normalised)", "gaussian": "alpha (filter-normalised, averaged)",
            "adversarial": "alpha (distance along grad / |grad|)"}[directions]


@report(batches=4)
def analyse_landscape(
    runs: Sequence[str | Path | LoadedRun],
    options: ReportOptions,
    *,
    directions: str = "random",
    dims: int = 1,
    grid: int = 21,
    span: float = 1.0,
    groups: int = 10,
    log: bool = False,
) -> list[dict]:
    """Loss and accuracy along 1 or 2 directions around each run's weights (Li et al. 2018; ESAM).

    `directions`: `random` (filter-normalised Gaussian, Li et al.; SSAM Fig. 4), `gaussian`
    (ESAM Fig. 4: averaged over `groups` orthogonal Gaussian pairs), `adversarial` (1-D: the unit
    loss gradient, SAM's ascent direction; 2-D: ESAM Fig. 8's `lr * grad` of two batch halves).
    The axes run over `linspace(-span, span, grid)`; `log` draws the loss on a log scale.
    Writes `landscape_<directions>_<dims>d.json` and PNGs per run, and with several runs and
    `dims=1` one figure with all their curves.
    """
    if directions not in DIRECTIONS:
        raise UsageError(f"--directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
    if dims not in (1, 2):
        raise UsageError(f"--dims must be 1 or 2, got {dims!r}")
    check_positive("grid", grid, 2)
    check_positive("groups", groups)
    if not (math.isfinite(span) and span > 0):
        raise UsageError(f"--span must be > 0, got {span!r}")
    own = dict(directions=directions, dims=dims, grid=grid, span=span,
               groups=groups if directions == "gaussian" else None, log=log)
    axis = torch.linspace(-span, span, grid, dtype=torch.float64)
    stem = f"landscape_{directions}_{dims}d"
    curves_loss, curves_acc = {}, {}

    def compute(run: LoadedRun, data: list[Batch], folder: Path, timer: Timer):
        with timer.part("directions"):
            dirs = _directions(run, data, directions, dims, groups, options.seed)
        with timer.part("surface"), options.progress(f"{run.label}: landscape {dims}-D") as bar:
            if dims == 1:
                surf = _landscape.averaged_loss_surface_1d(run.model, data, dirs, axis, progress=bar)
            else:
                surf = _landscape.averaged_loss_surface_2d(run.model, data, dirs, axis, axis, progress=bar)
        center = grid // 2 if grid % 2 else None
        if dims == 1:
            results = {"alphas": surf.alphas, "loss": surf.loss, "accuracy": surf.accuracy}
            c_loss = float(surf.loss[center]) if center is not None else None
            c_acc = float(surf.accuracy[center]) if center is not None else None
            curves_loss[run.label] = (surf.alphas, surf.loss)
            curves_acc[run.label] = (surf.alphas, surf.accuracy)
            figures = [
                plots.plot_curves_1d({run.label: (surf.alphas, surf.loss)}, folder / f"{stem}.png", logy=log,
                                     xlabel=_axis_label(directions), title=f"{run.label}: {directions} direction"),
                plots.plot_curves_1d({run.label: (surf.alphas, surf.accuracy)}, folder / f"{stem}_acc.png",
                                     xlabel=_axis_label(directions), ylabel="accuracy"),
            ]
        else:
            results = {"xs": surf.xs, "ys": surf.ys, "loss": surf.loss, "accuracy": surf.accuracy}
            c_loss = float(surf.loss[center, center]) if center is not None else None
            c_acc = float(surf.accuracy[center, center]) if center is not None else None
            figures = [
                plots.plot_surface_2d(surf.xs, surf.ys, surf.loss.log10() if log else surf.loss,
                                      folder / f"{stem}.png",
                                      zlabel="log10 loss" if log else "loss",
                                      title=f"{run.label}: {'log10 ' if log else ''}loss, {directions} directions"),
                plots.plot_surface_2d(surf.xs, surf.ys, surf.accuracy, folder / f"{stem}_acc.png",
                                      zlabel="accuracy", title=f"{run.label}: accuracy, {directions} directions"),
            ]
        max_loss = float(surf.loss.max())
        results = {
            "center_loss": c_loss,
            "center_accuracy": c_acc,
            "max_loss": max_loss,
            "max_loss_increase": max_loss - c_loss if c_loss is not None else None,
            "directions_averaged": len(dirs),
            **results,
        }
        return stem, own, results, figures

    records, shared = per_run("landscape", compute, runs, options)
    if dims == 1 and len(records) > 1:
        mark_compare(records, plots.plot_curves_1d(curves_loss, shared / f"{stem}_compare.png",
                                                   xlabel=_axis_label(directions), logy=log,
                                                   title=f"loss along {directions} directions"))
        plots.plot_curves_1d(curves_acc, shared / f"{stem}_compare_acc.png", xlabel=_axis_label(directions),
                             ylabel="accuracy")
    return records


def landscape_table(records: list[dict]) -> str:
    """The records of `analyse_landscape` as a markdown table, one row per run."""
    rows = [[r["label"], fmt(r["results"]["center_loss"]), fmt(r["results"]["center_accuracy"]),
             fmt(r["results"]["max_loss"]), fmt(r["results"]["max_loss_increase"]), f"{r['time_s']:.1f}"]
            for r in records]
    return markdown_table(["run", "loss(0)", "acc(0)", "max loss", "max increase", "time s"], rows)
