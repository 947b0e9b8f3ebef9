"""What every analysis report shares: its common options, the loop over runs, the JSON it writes.

A report opens each run in turn (`open_run`), draws its evaluation
batches, has its analysis compute numbers and figures, and writes `<folder>/<name>.json`
atomically; the figures comparing several runs go into one shared folder (`output_dirs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import inspect
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ... import __version__
from ...analysis import plots as _plots_module
from ...data import Batch
from ...errors import MissingDependencyError, UsageError
from ...fileio import atomic_write_json, unwritable
from .runs import LoadedRun, open_run, select_batches

__all__ = [
    "ProgressFactory", "no_progress", "ReportOptions", "report", "output_dirs", "write_result", "Timer", "per_run",
    "plots", "mark_compare", "fmt",
]  # fmt: skip

# ``progress(description)`` -> a context manager giving a ``(done, total)`` callback for one loop
ProgressFactory = Callable[[str], contextlib.AbstractContextManager]


@contextlib.contextmanager
def no_progress(_desc: str) -> Iterator[None]:
    """A progress context that shows nothing."""
    yield None


class _OptionalPlots:
    """`flatlab.analysis.plots`, except that without matplotlib a figure is skipped (returns
    None, with one note on stderr) instead of failing: the JSON numbers need no matplotlib.
    """

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


plots = _OptionalPlots()


@dataclass(frozen=True)
class ReportOptions:
    """The options every report takes besides its own: the evaluation budget (`batches` of
    `batch_size` samples of `split`, drawn with `seed`; see
    `select_batches`), where the results go (`out`; see
    `output_dirs`), how the runs are opened (`load`: keywords of
    `open_run`) and the `progress` bars of the long loops.
    """

    batches: int | None = 4
    batch_size: int = 128
    split: str = "test"
    seed: int = 0
    out: str | Path | None = None
    load: dict | None = None
    progress: ProgressFactory = no_progress


def report(**defaults) -> Callable[[Callable], Callable]:
    """Turns `fn(runs, options, *, <its own options>)` into the report called as
    `fn(runs, *, <its own options>, batches=..., seed=..., ...)`: the fields of
    `ReportOptions`, with this analysis's `defaults`, are keywords beside its own, and its
    signature lists them all, so that the command line reads every flag's default from it.
    """
    base = ReportOptions(**defaults)
    shared = dataclasses.fields(ReportOptions)

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def analyse(runs, **kwargs):
            options = dataclasses.replace(base, **{f.name: kwargs.pop(f.name) for f in shared if f.name in kwargs})
            return fn(runs, options, **kwargs)

        signature = inspect.signature(fn)
        runs, _options, *own = signature.parameters.values()
        common = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=getattr(base, f.name),
                                    annotation=f.type) for f in shared]
        analyse.__signature__ = signature.replace(parameters=[runs, *own, *common])
        return analyse

    return wrap


def batches_info(batches: Sequence[Batch], options: ReportOptions) -> dict:
    return {
        "split": options.split,
        "batches": len(batches),
        "batch_size": options.batch_size,
        "samples": sum(int(y.shape[0]) for _, y in batches),
        "budget": options.batches if options.batches is not None else "all",
        "seed": options.seed,
    }


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
    """Where results go: `(per_run, shared)`.

    Without `out`: each run's `analysis/` folder, and the first run's for figures comparing several runs. With
    `out`: `out` itself for one run, `out/<run name>/` per run and `out` for the comparisons when there are several.
    """
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


class Timer:
    """Seconds per named part of one analysis (loading the run and drawing figures left out)."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Times the block as the part `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = time.perf_counter() - start

    @property
    def total(self) -> float:
        """Seconds of every part together."""
        return sum(self.parts.values())


def _paths(runs: Sequence[str | Path | LoadedRun]) -> list[Path]:
    return [r.path if isinstance(r, LoadedRun) else Path(r) for r in runs]


def _loaded(runs: Sequence[str | Path | LoadedRun], load: dict) -> Iterator[LoadedRun]:
    """The runs, loaded one at a time, labelled uniquely (`sam`, `sam-2`) for figures and tables."""
    for run, label in zip(runs, _unique_labels(_paths(runs))):
        run = run if isinstance(run, LoadedRun) else open_run(run, **load)
        yield dataclasses.replace(run, label=label)


# what one analysis computes for one run: (file stem, options, results, figures), given the run, its
# batches, its output folder and a timer to time the parts with
Compute = Callable[[LoadedRun, list[Batch], Path, Timer], tuple[str, dict, dict, list[Path]]]


def per_run(
    analysis: str,
    compute: Compute,
    runs: Sequence[str | Path | LoadedRun],
    options: ReportOptions,
    *,
    raw: bool = False,
) -> tuple[list[dict], Path]:
    """The loop every report shares: load each run in turn, select its batches, `compute`, write
    `<folder>/<stem>.json`. Returns the records written (each with its `path`) and the folder
    for the figures comparing the runs.
    """
    per_run_dirs, shared = output_dirs(_paths(runs), options.out)
    for folder in [*per_run_dirs, shared]:  # before minutes of computing, not after
        reason = unwritable(folder)
        if reason:
            raise UsageError(f"cannot write the results into {folder}: {reason}")
    load = options.load or {}
    records = []
    for run, folder in zip(_loaded(runs, load), per_run_dirs):
        data = select_batches(run, options.batches, options.batch_size, split=options.split, seed=options.seed,
                              raw=raw)
        timer = Timer()
        stem, own, results, figures = compute(run, data, folder, timer)
        own = {**own, "checkpoint": load.get("checkpoint", "model.pt")}
        path = folder / f"{stem}.json"
        record = write_result(path, analysis, run, options=own, data=batches_info(data, options),
                              time_s=timer.total, time_parts=timer.parts, results=results, figures=figures)
        record["path"] = str(path)
        records.append(record)
    return records, shared


def mark_compare(records: list[dict], path: Path | None) -> None:
    """Notes the figure comparing the runs in each record (none drawn without matplotlib)."""
    if path is None:
        return
    for r in records:
        r["compare_figure"] = str(path)


def fmt(value, spec: str = ".4g") -> str:
    """A number for a summary table; `-` for a missing or non-finite one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)
