"""The analysis subcommands: ``flatlab landscape``, ``flatlab hessian``, ``flatlab gradstats`` and
``flatlab robustness``.

Each takes one or more run directories (or checkpoint files, which keep their run's config), draws a
fixed evaluation budget of batches from the run's data, calls the library functions of
:mod:`flatlab.analysis` and writes, per run, a JSON file of numbers (with the options, the data
used, the seconds each part took and the flatlab version) and PNG figures into ``RUN/analysis/``.
With several runs, figures that compare them go into ``--out`` (default: the first run's
``analysis/`` folder).

The glue is plain functions -- :func:`open_run`, :func:`select_batches`, :func:`output_dirs`,
:func:`write_result` -- and one ``analyse_*`` function per command, so that everything the commands
do can be called (and tested) without the command line. No analysis is computed here: this module
only chooses the data, calls the library and writes what it returns.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import inspect
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..analysis import corruptions as _corruptions
from ..analysis import gradstats as _gradstats
from ..analysis import hessian as _hessian
from ..analysis import landscape as _landscape
from ..analysis import plots as _plots_module
from ..data import Batch, normalize
from ..errors import MissingDependencyError, UsageError, UserFileNotFoundError
from ..fileio import atomic_write_json, unwritable
from ..progress import PLAIN_EVERY, Progress
from ..train import load_trained, resolve_device
from ..train.compare import markdown_table

__all__ = [
    "add_analysis_commands",
    "LoadedRun",
    "open_run",
    "select_batches",
    "output_dirs",
    "write_result",
    "analyse_landscape",
    "analyse_hessian",
    "analyse_gradstats",
    "analyse_robustness",
]

ProgressFactory = Callable[[str], contextlib.AbstractContextManager]


class _OptionalPlots:
    """:mod:`flatlab.analysis.plots`, except that without matplotlib a figure is skipped (returns
    None, with one note on stderr) instead of failing: the JSON numbers need no matplotlib."""

    noted = False

    def __getattr__(self, name: str):
        plot = getattr(_plots_module, name)

        def draw(*args, **kwargs):
            try:
                return plot(*args, **kwargs)
            except MissingDependencyError:
                if not _OptionalPlots.noted:
                    _OptionalPlots.noted = True
                    print("note: matplotlib is not installed: the numbers are written, the figures skipped "
                          "(pip install flatlab[plot])", file=sys.stderr)
                return None

        return draw


_plots = _OptionalPlots()

DIRECTIONS = ("random", "gaussian", "adversarial")


# -- glue: run directory -> model and batches ----------------------------------------------------


@dataclass
class LoadedRun:
    """A trained model with its data and config, and where it came from."""

    path: Path  # the run directory, or the checkpoint file
    label: str  # name used in figures and tables (the run directory's name)
    model: nn.Module
    data: Any  # flatlab.train.data.RunData
    config: Any  # flatlab.train.TrainConfig
    device: torch.device


def open_run(
    run: str | Path,
    device: str | torch.device = "cpu",
    *,
    checkpoint: str = "model.pt",
    data_root: str | None = None,
) -> LoadedRun:
    """Load a finished run (``model.pt``) for analysis, with readable errors for a missing directory,
    a directory that is not a run, and an unfinished run (``checkpoint="checkpoint.pt"`` analyses
    its last completed epoch instead). ``run`` may also be a ``.pt`` file written by ``flatlab train``.
    ``data_root`` points at the dataset where it lives now, if not where the run was trained."""
    path = Path(run)
    if not path.exists():
        raise UserFileNotFoundError(f"no such run directory: {path}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserFileNotFoundError(f"{path} is not a flatlab run directory (no config.json)")
        if not (path / checkpoint).is_file():
            if checkpoint == "model.pt" and (path / "checkpoint.pt").is_file():
                raise UsageError(
                    f"run {path} is unfinished (no model.pt yet): finish it with `flatlab train --resume {path}`, "
                    "or analyse its last completed epoch with --checkpoint checkpoint.pt"
                )
            raise UsageError(f"run {path} has no {checkpoint} (has it trained for an epoch yet?)")
    device = resolve_device(device)
    overrides = {"data_root": str(data_root)} if data_root else None
    model, data, config = load_trained(path, device, checkpoint, overrides=overrides)
    label = path.name if path.is_dir() else path.parent.name
    return LoadedRun(path, label, model, data, config, device)


def _check_positive(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}")


def select_batches(
    run: LoadedRun,
    batches: int | None,
    batch_size: int = 128,
    *,
    split: str = "test",
    seed: int = 0,
    raw: bool = False,
) -> list[Batch]:
    """The evaluation budget: ``batches`` batches of ``batch_size`` samples of ``split``, as a list.

    The samples are a seeded random subset (``seed``) of the split, in dataset order, without
    augmentation; ``batches=None`` (or more than the split holds) takes the whole split in order, so
    the test-split numbers then match the run's test metrics. Batches are normalised as in training,
    or, with ``raw=True``, the uint8 images (for corrupting before normalisation). Datasets streamed
    from disk (``--stream``) give the first ``batches`` batches of the run's own loader instead.
    """
    if split not in ("test", "train"):
        raise UsageError(f"--split must be test or train, got {split!r}")
    if batches is not None:
        _check_positive("batches", batches)
    _check_positive("batch_size", batch_size)
    data = run.data
    if data.arrays is None:
        if raw:
            raise UsageError("this analysis corrupts raw images and needs an in-memory dataset (not --stream)")
        out = []
        for x, y in data.test if split == "test" else data.train:
            out.append((x, y))
            if batches is not None and len(out) >= batches:
                break
        return out
    arrays = data.arrays
    images = arrays.test_images if split == "test" else arrays.train_images
    labels = arrays.test_labels if split == "test" else arrays.train_labels
    n = images.shape[0]
    take = n if batches is None else min(n, batches * batch_size)
    if take < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:take].sort().values
    else:
        idx = torch.arange(n)
    out = []
    for start in range(0, take, batch_size):
        i = idx[start : start + batch_size]
        x = images[i].to(run.device)
        if not raw:
            x = normalize(x, data.mean, data.std)
        out.append((x, labels[i].to(device=run.device, dtype=torch.int64)))
    return out


def _batches_info(batches: Sequence[Batch], split: str, batch_size: int, seed: int, budget: int | None) -> dict:
    return {
        "split": split,
        "batches": len(batches),
        "batch_size": batch_size,
        "samples": sum(int(y.shape[0]) for _, y in batches),
        "budget": budget if budget is not None else "all",
        "seed": seed,
    }


# -- glue: results -> files -------------------------------------------------------------------------


def _unique_labels(paths: Sequence[Path]) -> list[str]:
    labels: list[str] = []
    for p in paths:
        label = p.name if p.is_dir() or not p.suffix else p.parent.name
        base, k = label, 2
        while label in labels:
            label, k = f"{base}-{k}", k + 1
        labels.append(label)
    return labels


def output_dirs(runs: Sequence[str | Path], out: str | Path | None = None) -> tuple[list[Path], Path]:
    """Where results go: ``(per_run, shared)``. Without ``out``: each run's ``analysis/`` folder, and
    the first run's for figures comparing several runs. With ``out``: ``out`` itself for one run,
    ``out/<run name>/`` per run and ``out`` for the comparisons when there are several."""
    paths = [Path(r) for r in runs]
    if out is None:
        per_run = [(p if p.is_dir() else p.parent) / "analysis" for p in paths]
        return per_run, per_run[0]
    out = Path(out)
    if len(paths) == 1:
        return [out], out
    return [out / label for label in _unique_labels(paths)], out


def _jsonable(value):
    """Tensors to lists, non-finite floats to None (JSON has no NaN), tuples to lists, keys to str."""
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        return _jsonable(value.item() if value.dim() == 0 else value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_result(
    path: str | Path,
    analysis: str,
    run: LoadedRun | None,
    *,
    options: dict,
    data: dict | None,
    time_s: float,
    results: dict,
    time_parts: dict[str, float] | None = None,
    figures: Sequence[Path] = (),
) -> dict:
    """Write one analysis result as JSON, atomically, and return what was written."""
    record = {
        "analysis": analysis,
        "run": str(run.path) if run is not None else None,
        "label": run.label if run is not None else None,
        "flatlab": __version__,
        "torch": torch.__version__,
        "device": str(run.device) if run is not None else None,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "options": options,
        "data": data,
        "time_s": time_s,
    }
    if time_parts:
        record["time_s_parts"] = time_parts
    record["figures"] = [Path(f).name for f in figures if f is not None]
    record["results"] = results
    record = _jsonable(record)
    atomic_write_json(Path(path), record)
    return record


@contextlib.contextmanager
def _no_progress(_desc: str) -> Iterator[None]:
    yield None


def progress_bars(enabled: bool | None = None, every: float | None = None) -> ProgressFactory:
    """A factory of progress callbacks ``(done, total)`` drawn with :class:`flatlab.progress.Progress`:
    a bar on a terminal (or where ``enabled``), else a plain line every ``every`` seconds (default
    :data:`~flatlab.progress.PLAIN_EVERY`), so that a long analysis logged to a file shows it is alive;
    nothing where ``enabled`` is False."""
    @contextlib.contextmanager
    def factory(desc: str) -> Iterator[Callable[[int, int], None]]:
        bar = Progress(0, desc, enabled=enabled, every=PLAIN_EVERY if every is None else every)

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.count)

        try:
            yield update
        finally:
            bar.close()

    return factory


class _Timer:
    def __init__(self) -> None:
        self.parts: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def _loaded(runs: Sequence[str | Path | LoadedRun], load: dict) -> Iterator[LoadedRun]:
    """The runs, loaded one at a time, labelled uniquely (``sam``, ``sam-2``) for figures and tables."""
    for run, label in zip(runs, _unique_labels(_paths(runs))):
        run = run if isinstance(run, LoadedRun) else open_run(run, **load)
        yield dataclasses.replace(run, label=label)


def _paths(runs: Sequence[str | Path | LoadedRun]) -> list[Path]:
    return [r.path if isinstance(r, LoadedRun) else Path(r) for r in runs]


# what one analysis computes for one run: (file stem, options, results, figures), given the run, its
# batches, its output folder and a timer to time the parts with
Compute = Callable[[LoadedRun, list[Batch], Path, "_Timer"], tuple[str, dict, dict, list[Path]]]


def _per_run(
    analysis: str,
    compute: Compute,
    runs: Sequence[str | Path | LoadedRun],
    *,
    batches: int | None,
    batch_size: int,
    split: str,
    seed: int,
    out: str | Path | None,
    load: dict | None,
    raw: bool = False,
) -> tuple[list[dict], Path]:
    """The loop every analysis shares: load each run in turn, select its batches, ``compute``, write
    ``<folder>/<stem>.json``. Returns the records written (each with its ``path``) and the folder
    for the figures comparing the runs."""
    per_run_dirs, shared = output_dirs(_paths(runs), out)
    for folder in [*per_run_dirs, shared]:  # before minutes of computing, not after
        reason = unwritable(folder)
        if reason:
            raise UsageError(f"cannot write the results into {folder}: {reason}")
    records = []
    for run, folder in zip(_loaded(runs, load or {}), per_run_dirs):
        data = select_batches(run, batches, batch_size, split=split, seed=seed, raw=raw)
        timer = _Timer()
        stem, options, results, figures = compute(run, data, folder, timer)
        options = {**options, "checkpoint": (load or {}).get("checkpoint", "model.pt")}
        path = folder / f"{stem}.json"
        record = write_result(path, analysis, run, options=options,
                              data=_batches_info(data, split, batch_size, seed, batches),
                              time_s=timer.total, time_parts=timer.parts, results=results, figures=figures)
        record["path"] = str(path)
        records.append(record)
    return records, shared


# -- landscape ------------------------------------------------------------------------------------


def _landscape_directions(run: LoadedRun, batches, directions: str, dims: int, groups: int, seed: int):
    """The directions of one run: a list of directions (1-D) or of (d1, d2) pairs (2-D); several
    entries are averaged (ESAM's averaged Gaussian landscape)."""
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


def analyse_landscape(
    runs: Sequence[str | Path | LoadedRun],
    *,
    directions: str = "random",
    dims: int = 1,
    grid: int = 21,
    span: float = 1.0,
    groups: int = 10,
    log: bool = False,
    batches: int | None = 4,
    batch_size: int = 128,
    split: str = "test",
    seed: int = 0,
    out: str | Path | None = None,
    load: dict | None = None,
    progress: ProgressFactory = _no_progress,
) -> list[dict]:
    """Loss and accuracy along 1 or 2 directions around each run's weights (Li et al. 2018; ESAM).

    ``directions``: ``random`` (filter-normalised Gaussian, Li et al.; SSAM Fig. 4), ``gaussian``
    (ESAM Fig. 4: averaged over ``groups`` orthogonal Gaussian pairs), ``adversarial`` (1-D: the unit
    loss gradient, SAM's ascent direction; 2-D: ESAM Fig. 8's ``lr * grad`` of two batch halves).
    The axes run over ``linspace(-span, span, grid)``; ``log`` draws the loss on a log scale.
    Writes ``landscape_<directions>_<dims>d.json`` and PNGs per run, and with several runs and
    ``dims=1`` one figure with all their curves.
    """
    if directions not in DIRECTIONS:
        raise UsageError(f"--directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
    if dims not in (1, 2):
        raise UsageError(f"--dims must be 1 or 2, got {dims!r}")
    _check_positive("grid", grid, 2)
    _check_positive("groups", groups)
    if not (math.isfinite(span) and span > 0):
        raise UsageError(f"--span must be > 0, got {span!r}")
    options = dict(directions=directions, dims=dims, grid=grid, span=span,
                   groups=groups if directions == "gaussian" else None, log=log)
    axis = torch.linspace(-span, span, grid, dtype=torch.float64)
    stem = f"landscape_{directions}_{dims}d"
    curves_loss, curves_acc = {}, {}

    def compute(run: LoadedRun, data: list[Batch], folder: Path, timer: _Timer):
        with timer.part("directions"):
            dirs = _landscape_directions(run, data, directions, dims, groups, seed)
        with timer.part("surface"), progress(f"{run.label}: landscape {dims}-D") as bar:
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
                _plots.plot_curves_1d({run.label: (surf.alphas, surf.loss)}, folder / f"{stem}.png", logy=log,
                                      xlabel=_axis_label(directions), title=f"{run.label}: {directions} direction"),
                _plots.plot_curves_1d({run.label: (surf.alphas, surf.accuracy)}, folder / f"{stem}_acc.png",
                                      xlabel=_axis_label(directions), ylabel="accuracy"),
            ]
        else:
            results = {"xs": surf.xs, "ys": surf.ys, "loss": surf.loss, "accuracy": surf.accuracy}
            c_loss = float(surf.loss[center, center]) if center is not None else None
            c_acc = float(surf.accuracy[center, center]) if center is not None else None
            figures = [
                _plots.plot_surface_2d(surf.xs, surf.ys, surf.loss.log10() if log else surf.loss,
                                       folder / f"{stem}.png",
                                       zlabel="log10 loss" if log else "loss",
                                       title=f"{run.label}: {'log10 ' if log else ''}loss, {directions} directions"),
                _plots.plot_surface_2d(surf.xs, surf.ys, surf.accuracy, folder / f"{stem}_acc.png",
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
        return stem, options, results, figures

    records, shared = _per_run("landscape", compute, runs, batches=batches, batch_size=batch_size, split=split,
                               seed=seed, out=out, load=load)
    if dims == 1 and len(records) > 1:
        _mark_compare(records, _plots.plot_curves_1d(curves_loss, shared / f"{stem}_compare.png",
                                                     xlabel=_axis_label(directions), logy=log,
                                                     title=f"loss along {directions} directions"))
        _plots.plot_curves_1d(curves_acc, shared / f"{stem}_compare_acc.png", xlabel=_axis_label(directions),
                              ylabel="accuracy")
    return records


def _axis_label(directions: str) -> str:
    return {"random": "alpha (filter-normalised)", "gaussian": "alpha (filter-normalised, averaged)",
            "adversarial": "alpha (distance along grad / |grad|)"}[directions]


# -- hessian ----------------------------------------------------------------------------------------


def analyse_hessian(
    runs: Sequence[str | Path | LoadedRun],
    *,
    k: int = 5,
    iters: int | None = None,
    trace_samples: int = 20,
    density: int = 1,
    density_iters: int = 40,
    batches: int | None = 4,
    batch_size: int = 128,
    split: str = "test",
    seed: int = 0,
    out: str | Path | None = None,
    load: dict | None = None,
    progress: ProgressFactory = _no_progress,
) -> list[dict]:
    """Top-``k`` Hessian eigenvalues by Lanczos with lambda_1/lambda_5 (SSAM Sec. 5.3), the trace by
    Hutchinson (``trace_samples``, 0: skip) and the eigenvalue density by stochastic Lanczos
    quadrature (``density`` runs of ``density_iters`` steps, 0: skip; Ghorbani et al. 2019).
    Writes ``hessian.json`` and ``hessian_density.png`` per run (and a comparison density figure)."""
    _check_positive("k", k)
    if iters is not None:
        _check_positive("iters", iters, k)
    if trace_samples != 0:
        _check_positive("trace_samples", trace_samples, 2)
    _check_positive("density", density, 0)
    _check_positive("density_iters", density_iters, 2)
    options = dict(k=k, iters=iters, trace_samples=trace_samples, density=density, density_iters=density_iters)
    densities, tops = {}, {}

    def compute(run: LoadedRun, data: list[Batch], folder: Path, timer: _Timer):
        with timer.part("eigenvalues"), progress(f"{run.label}: Lanczos top-{k}") as bar:
            eig = _hessian.top_eigenvalues(run.model, data, k=k, iters=iters, seed=seed, progress=bar)
        evals = [float(v) for v in eig.eigenvalues]
        results: dict[str, Any] = {
            "eigenvalues": evals,
            "lambda1": evals[0],
            "lambda5": evals[4] if k >= 5 else None,
            "lambda1_over_lambda5": eig.ratio,
            "n_params": sum(p.numel() for p in run.model.parameters() if p.requires_grad),
        }
        if trace_samples:
            with timer.part("trace"), progress(f"{run.label}: Hutchinson trace") as bar:
                est = _hessian.hutchinson_trace(run.model, data, samples=trace_samples, seed=seed, progress=bar)
            results.update(trace=est.trace, trace_stderr=est.stderr, trace_samples=est.samples)
        figures = []
        if density:
            with timer.part("density"), progress(f"{run.label}: eigenvalue density") as bar:
                sd = _hessian.spectral_density(run.model, data, runs=density, iters=density_iters, seed=seed,
                                               num_points=400, progress=bar)
            results["density"] = {"grid": sd.grid, "density": sd.density, "sigma": sd.sigma,
                                  "nodes": sd.nodes, "weights": sd.weights}
            densities[run.label] = (sd.grid, sd.density)
            tops[run.label] = evals
            figures.append(_plots.plot_eigen_density({run.label: (sd.grid, sd.density)}, folder / "hessian_density.png",
                                                     eigenvalues={run.label: evals},
                                                     title=f"{run.label}: Hessian eigenvalue density"))
        return "hessian", options, results, figures

    records, shared = _per_run("hessian", compute, runs, batches=batches, batch_size=batch_size, split=split,
                               seed=seed, out=out, load=load)
    if len(densities) > 1:
        _mark_compare(records, _plots.plot_eigen_density(densities, shared / "hessian_density_compare.png",
                                                         eigenvalues=tops, title="Hessian eigenvalue density"))
    return records


# -- gradstats --------------------------------------------------------------------------------------


def analyse_gradstats(
    runs: Sequence[str | Path | LoadedRun],
    *,
    rho: float | None = None,
    gamma: float = 0.5,
    beta: float = 1.0,
    batches: int | None = 8,
    batch_size: int = 128,
    split: str = "test",
    seed: int = 0,
    out: str | Path | None = None,
    load: dict | None = None,
    progress: ProgressFactory = _no_progress,
) -> list[dict]:
    """SSAM Fig. 2's relative gradient difference of SAM vs SGD, ESAM's SDS B+/B- statistics
    (``gamma``: fraction in B+) and ESAM's linearity measure, at SAM radius ``rho`` (default: the
    run's rho, else 0.05), over the same batches. Writes ``gradstats.json`` and
    ``gradstats_relative_gradient.png`` per run (and a comparison histogram)."""
    if rho is not None and not (math.isfinite(rho) and rho > 0):
        raise UsageError(f"--rho must be > 0, got {rho!r}")
    if not 0.0 < gamma < 1.0:
        raise UsageError(f"--gamma must be in (0, 1), got {gamma!r}")
    if not 0.0 < beta <= 1.0:
        raise UsageError(f"--beta must be in (0, 1], got {beta!r}")
    hists = {}

    def compute(run: LoadedRun, data: list[Batch], folder: Path, timer: _Timer):
        run_rho = rho if rho is not None else (run.config.rho if run.config.rho is not None else 0.05)
        options = dict(rho=run_rho, gamma=gamma, beta=beta)
        with timer.part("relative_gradient"), progress(f"{run.label}: SAM vs SGD gradients") as bar:
            rgd = _gradstats.relative_gradient_difference(run.model, data, rho=run_rho, seed=seed, progress=bar)
        with timer.part("sds"), progress(f"{run.label}: SDS B+/B-") as bar:
            sds = _gradstats.sds_statistics(run.model, data, rho=run_rho, gamma=gamma, beta=beta, seed=seed,
                                            progress=bar)
        with timer.part("linearity"), progress(f"{run.label}: linearity") as bar:
            zeta = _gradstats.linearity(run.model, data, rho=run_rho, beta=beta, seed=seed, progress=bar)
        counts, edges = rgd.histogram()
        log_ratio = rgd.log10()
        results = {
            "relative_gradient": {
                "fraction_log_ratio_below_0": rgd.fraction_below(1.0),
                "median_log10_ratio": float(log_ratio.nan_to_num(nan=math.inf).flatten().median()),
                "histogram_counts": counts,
                "histogram_edges": edges,
            },
            "sds_mean": sds.mean(),
            "sds_per_batch": {name: getattr(sds, name) for name in sds.mean() if hasattr(sds, name)},
            "linearity_mean": float(zeta.mean()),
            "linearity_per_batch": zeta,
        }
        hists[run.label] = rgd
        figures = [_plots.plot_relative_gradient_histogram({run.label: rgd}, folder / "gradstats_relative_gradient.png",
                                                           title=f"{run.label}: SAM vs SGD gradient (rho {run_rho:g})")]
        return "gradstats", options, results, figures

    records, shared = _per_run("gradstats", compute, runs, batches=batches, batch_size=batch_size, split=split,
                               seed=seed, out=out, load=load)
    if len(hists) > 1:
        _mark_compare(records, _plots.plot_relative_gradient_histogram(
            hists, shared / "gradstats_relative_gradient_compare.png", title="SAM vs SGD relative gradient difference"
        ))
    return records


# -- robustness -------------------------------------------------------------------------------------


def _parse_corruptions(text: str | Sequence[str] | None) -> list[str]:
    names = _corruptions.list_corruptions()
    if text is None or text == "all":
        return names
    chosen = [c.strip() for c in text.split(",") if c.strip()] if isinstance(text, str) else list(text)
    unknown = [c for c in chosen if c not in names]
    if unknown or not chosen:
        given = ", ".join(unknown) or "(none given)"
        raise UsageError(f"unknown corruption(s) {given}; choose from {', '.join(names)}")
    return chosen


def _parse_severities(text: str | Sequence[int]) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()] if isinstance(text, str) else [int(v) for v in text]
    except ValueError:
        raise UsageError(f"--severities must be integers in 1..5 such as 1,3,5, got {text!r}") from None
    if not values or any(not 1 <= v <= 5 for v in values):
        raise UsageError(f"--severities must be integers in 1..5 such as 1,3,5, got {text!r}")
    return sorted(set(values))


def _normalizer(run: LoadedRun) -> Callable[[Tensor], Tensor]:
    """[0, 1] images -> the run's normalised inputs (``flatlab.data.normalize`` takes uint8)."""
    mean = torch.tensor(run.data.mean, dtype=torch.float32, device=run.device).view(1, -1, 1, 1)
    std = torch.tensor(run.data.std, dtype=torch.float32, device=run.device).view(1, -1, 1, 1)
    return lambda x: (x - mean) / std


def analyse_robustness(
    runs: Sequence[str | Path | LoadedRun],
    *,
    corruptions: str | Sequence[str] | None = None,
    severities: str | Sequence[int] = (1, 2, 3, 4, 5),
    batches: int | None = None,
    batch_size: int = 256,
    split: str = "test",
    seed: int = 0,
    out: str | Path | None = None,
    load: dict | None = None,
    progress: ProgressFactory = _no_progress,
) -> list[dict]:
    """Accuracy on corrupted copies of the evaluation images (Hendrycks & Dietterich 2019 corruptions
    with CIFAR-10-C parameters, generated with tensor ops from ``seed``; S2-SAM Table 5): per
    corruption and severity, the mean per corruption, per severity and overall. Writes
    ``robustness.json`` and ``robustness.png`` per run (and a comparison bar chart)."""
    names = _parse_corruptions(corruptions)
    sevs = _parse_severities(severities)
    options = dict(corruptions=names, severities=sevs)
    bars = {}

    def compute(run: LoadedRun, data: list[Batch], folder: Path, timer: _Timer):
        with timer.part("corruptions"), progress(f"{run.label}: corrupted test sets") as bar:
            table = _corruptions.evaluate_corruptions(run.model, data, names, sevs, seed=seed,
                                                      transform=_normalizer(run), progress=bar)
        clean = table.pop("clean")[0]
        by_corruption = {n: sum(table[n].values()) / len(table[n]) for n in names}
        by_severity = {s: sum(table[n][s] for n in names) / len(names) for s in sevs}
        overall = sum(by_corruption.values()) / len(by_corruption)
        results = {
            "clean_accuracy": clean,
            "accuracy": table,
            "mean_accuracy_by_corruption": by_corruption,
            "mean_accuracy_by_severity": by_severity,
            "mean_accuracy": overall,
            "mean_error": 1.0 - overall,
            "mean_error_by_severity": {s: 1.0 - a for s, a in by_severity.items()},
        }
        bars[run.label] = {"clean": clean, **by_corruption}
        figures = [_plots.plot_corruption_table({run.label: bars[run.label]}, folder / "robustness.png",
                                                ylabel=f"accuracy (mean over severities {','.join(map(str, sevs))})",
                                                title=f"{run.label}: corrupted {split} set")]
        return "robustness", options, results, figures

    records, shared = _per_run("robustness", compute, runs, batches=batches, batch_size=batch_size, split=split,
                               seed=seed, out=out, load=load, raw=True)
    if len(bars) > 1:
        _mark_compare(records, _plots.plot_corruption_table(
            bars, shared / "robustness_compare.png",
            ylabel=f"accuracy (mean over severities {','.join(map(str, sevs))})", title=f"corrupted {split} set",
        ))
    return records


# -- command line: each flag's default is read from the signature of the function it feeds ---------


def _budget(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of batches or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (or 'all'), got {value}")
    return value


def _shown(value) -> str:
    """A default as the help text shows it: ``None`` (a budget, a list of corruptions) is "all"."""
    if value is None:
        return "all"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def _flag(parser: argparse.ArgumentParser, fn: Callable, name: str, help: str, **kwargs) -> None:
    """``--name`` with the default of ``fn``'s keyword ``name``, so that the command line and the
    library cannot drift apart; ``{default}`` in ``help`` shows it."""
    default = inspect.signature(fn).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{fn.__name__} has no default for {name}")
    if kwargs.get("action") == "store_true" and default is not False:
        raise TypeError(f"--{name}: a store_true flag needs the default False in {fn.__name__}")
    parser.add_argument("--" + name.replace("_", "-"), default=default, help=help.format(default=_shown(default)),
                        **kwargs)


def _common_flags(parser: argparse.ArgumentParser, analyse: Callable, several: str) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                        help=f"run directories (or their model.pt / checkpoint.pt files); {several}")
    _flag(parser, analyse, "batches", "evaluation budget: N batches (a seeded random subset), or 'all' "
          "(default {default})", type=_budget, metavar="N")
    _flag(parser, analyse, "batch_size", "samples per batch (default {default})", type=int)
    _flag(parser, analyse, "split", "evaluate on the test set or the un-augmented training set (default {default})",
          choices=("test", "train"))
    _flag(parser, analyse, "seed", "seed of the batch subset, directions, noise (default {default})", type=int)
    _flag(parser, open_run, "device", "cpu, cuda, cuda:N or auto (default {default})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    _flag(parser, open_run, "checkpoint",
          "weights file in the run directory (default {default}; checkpoint.pt: last epoch of an unfinished run)")
    _flag(parser, open_run, "data_root", "where the run's dataset lives now, if it moved")
    _flag(parser, analyse, "out", "output folder (default: RUN/analysis/; comparison figures: the first run's)",
          type=Path)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help=f"progress bars on a terminal, elsewhere a line every {PLAIN_EVERY:g} s "
                             "(default: on; --no-progress: neither)")


def _setup(args: argparse.Namespace) -> dict:
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return dict(
        batches=args.batches, batch_size=args.batch_size, split=args.split, seed=args.seed, out=args.out,
        load=dict(device=args.device, checkpoint=args.checkpoint, data_root=args.data_root),
        progress=progress_bars(args.progress),
    )


def _fmt(value, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _done(records: Sequence[dict]) -> None:
    folders = sorted({str(Path(r["path"]).parent) for r in records})
    print("results -> " + ", ".join(folders))
    compare = sorted({r["compare_figure"] for r in records if r.get("compare_figure")})
    if compare:
        print("comparison -> " + ", ".join(compare))


def _mark_compare(records: list[dict], path: Path | None) -> None:
    if path is None:  # no matplotlib
        return
    for r in records:
        r["compare_figure"] = str(path)


def _landscape_table(records: list[dict]) -> str:
    rows = [[r["label"], _fmt(r["results"]["center_loss"]), _fmt(r["results"]["center_accuracy"]),
             _fmt(r["results"]["max_loss"]), _fmt(r["results"]["max_loss_increase"]), f"{r['time_s']:.1f}"]
            for r in records]
    return markdown_table(["run", "loss(0)", "acc(0)", "max loss", "max increase", "time s"], rows)


def _hessian_table(records: list[dict]) -> str:
    rows = []
    for r in records:
        res = r["results"]
        trace = f"{_fmt(res.get('trace'))} ± {_fmt(res.get('trace_stderr'), '.2g')}" if "trace" in res else "-"
        rows.append([r["label"], _fmt(res["lambda1"]), _fmt(res["lambda5"]), _fmt(res["lambda1_over_lambda5"]),
                     trace, f"{r['time_s']:.1f}"])
    return markdown_table(["run", "lambda1", "lambda5", "lambda1/lambda5", "trace", "time s"], rows)


def _gradstats_table(records: list[dict]) -> str:
    rows = []
    for r in records:
        res, sds = r["results"], r["results"]["sds_mean"]
        rows.append([r["label"], _fmt(r["options"]["rho"]),
                     f"{100 * res['relative_gradient']['fraction_log_ratio_below_0']:.1f}%",
                     f"{_fmt(sds['cos_plus'], '.3f')}/{_fmt(sds['cos_minus'], '.3f')}/{_fmt(sds['cos_rand'], '.3f')}",
                     f"{_fmt(sds['sharpness_plus'], '.3g')}/{_fmt(sds['sharpness_minus'], '.3g')}",
                     _fmt(res["linearity_mean"], ".3g"), f"{r['time_s']:.1f}"])
    return markdown_table(["run", "rho", "log r < 0", "cos B+/B-/rand", "sharpness B+/B-", "linearity", "time s"],
                          rows)


def _robustness_table(records: list[dict]) -> str:
    names = records[0]["options"]["corruptions"]
    headers = ["corruption"] + [r["label"] for r in records]
    rows = [["clean"] + [f"{100 * r['results']['clean_accuracy']:.2f}" for r in records]]
    for n in names:
        rows.append([n] + [f"{100 * r['results']['mean_accuracy_by_corruption'][n]:.2f}" for r in records])
    rows.append(["mean"] + [f"{100 * r['results']['mean_accuracy']:.2f}" for r in records])
    rows.append(["time s"] + [f"{r['time_s']:.1f}" for r in records])
    sevs = ",".join(str(s) for s in records[0]["options"]["severities"])
    return f"accuracy (%), mean over severities {sevs}\n" + markdown_table(headers, rows)


@dataclass(frozen=True)
class _Command:
    """One analysis subcommand: the library function it calls, its own flags as
    ``(keyword, help, argparse options)`` (defaults from ``analyse``'s signature) and its summary table."""

    name: str
    help: str
    analyse: Callable[..., list[dict]]
    several: str
    flags: tuple[tuple[str, str, dict], ...]
    table: Callable[[list[dict]], str]

    def __call__(self, args: argparse.Namespace) -> int:
        options = {name: getattr(args, name) for name, _, _ in self.flags}
        records = self.analyse(args.runs, **options, **_setup(args))
        print(self.table(records))
        _done(records)
        return 0


COMMANDS = (
    _Command("landscape", "1-D/2-D loss and accuracy surfaces around trained weights", analyse_landscape,
             "several runs share one 1-D figure", (
                 ("directions", "random: filter-normalised Gaussian (Li et al. 2018); gaussian: ESAM's average over "
                  "--groups orthogonal pairs; adversarial: the loss gradient (1-D), ESAM A.5's batch-half "
                  "gradients (2-D) (default {default})", dict(choices=DIRECTIONS)),
                 ("dims", "1-D curve or 2-D surface (default {default})", dict(type=int, choices=(1, 2))),
                 ("grid", "points per axis (default {default}; odd includes 0)", dict(type=int)),
                 ("span", "axes run over [-span, span] (default {default})", dict(type=float)),
                 ("groups", "--directions gaussian: pairs averaged (default {default})", dict(type=int)),
                 ("log", "draw the loss on a log scale (2-D: log10 loss)", dict(action="store_true")),
             ), _landscape_table),
    _Command("hessian", "top Hessian eigenvalues, trace and eigenvalue density", analyse_hessian,
             "each is analysed in turn", (
                 ("k", "top eigenvalues by Lanczos (default {default}: lambda1/lambda5)", dict(type=int)),
                 ("iters", "Lanczos steps for the top-k (default max(3k, 30))", dict(type=int)),
                 ("trace_samples", "Hutchinson samples for the trace (default {default}; 0: skip)", dict(type=int)),
                 ("density", "stochastic Lanczos quadrature runs for the density plot (default {default}; 0: skip)",
                  dict(type=int, metavar="RUNS")),
                 ("density_iters", "Lanczos steps per density run (default {default})", dict(type=int)),
             ), _hessian_table),
    _Command("gradstats", "SAM-vs-SGD gradient difference, SDS B+/B- statistics, linearity", analyse_gradstats,
             "each is analysed in turn", (
                 ("rho", "SAM radius (default: the run's rho, else 0.05)", dict(type=float)),
                 ("gamma", "SDS: fraction of the batch in B+ (default {default})", dict(type=float)),
                 ("beta", "ESAM SWP keep probability (default {default}; 1: plain SAM)", dict(type=float)),
             ), _gradstats_table),
    _Command("robustness", "accuracy on corrupted copies of the test set", analyse_robustness,
             "each is analysed in turn", (
                 ("corruptions", f"comma-separated, from {', '.join(_corruptions.list_corruptions())} "
                  "(default {default})", dict(metavar="A,B")),
                 ("severities", "severities 1..5 (default {default})", dict(metavar="1,2,3")),
             ), _robustness_table),
)


def _describe(fn) -> str:
    return " ".join(fn.__doc__.replace("``", "").split())


def add_analysis_commands(subparsers) -> None:
    """Register ``landscape``, ``hessian``, ``gradstats`` and ``robustness`` on a subparsers object."""
    for command in COMMANDS:
        p = subparsers.add_parser(command.name, help=command.help, description=_describe(command.analyse))
        _common_flags(p, command.analyse, command.several)
        for name, help_text, options in command.flags:
            _flag(p, command.analyse, name, help_text, **options)
        p.set_defaults(handler=command)
