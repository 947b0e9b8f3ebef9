"""The robustness report: each run's accuracy on corrupted copies of its evaluation images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ...analysis import corruptions as _corruptions
from ...data import Batch
from ...errors import UsageError
from ..compare import markdown_table
from .common import ReportOptions, Timer, mark_compare, per_run, plots, report
from .runs import LoadedRun

__all__ = ["analyse_robustness", "robustness_table"]


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
    """[0, 1] images -> the run's normalised inputs (`flatlab.data.normalize` takes uint8)."""
    mean = torch.tensor(run.data.mean, dtype=torch.float32, device=run.device).view(1, -1, 1, 1)
    std = torch.tensor(run.data.std, dtype=torch.float32, device=run.device).view(1, -1, 1, 1)
    return lambda x: (x - mean) / std


@report(batches=None, batch_size=256)
def analyse_robustness(
    runs: Sequence[str | Path | LoadedRun],
    options: ReportOptions,
    *,
    corruptions: str | Sequence[str] | None = None,
    severities: str | Sequence[int] = (1, 2, 3, 4, 5),
) -> list[dict]:
    """Accuracy on corrupted copies of the evaluation images (Hendrycks & Dietterich 2019 corruptions
    with CIFAR-10-C parameters, generated with tensor ops from `seed`; S2-SAM Table 5): per
    corruption and severity, the mean per corruption, per severity and overall. Writes
    `robustness.json` and `robustness.png` per run (and a comparison bar chart).
    """
    names = _parse_corruptions(corruptions)
    sevs = _parse_severities(severities)
    own = dict(corruptions=names, severities=sevs)
    ylabel = f"accuracy (mean over severities {','.join(map(str, sevs))})"
    bars = {}

    def compute(run: LoadedRun, data: list[Batch], folder: Path, timer: Timer):
        with timer.part("corruptions"), options.progress(f"{run.label}: corrupted test sets") as bar:
            table = _corruptions.evaluate_corruptions(run.model, data, names, sevs, seed=options.seed,
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
        figures = [plots.plot_corruption_table({run.label: bars[run.label]}, folder / "robustness.png",
                                               ylabel=ylabel, title=f"{run.label}: corrupted {options.split} set")]
        return "robustness", own, results, figures

    records, shared = per_run("robustness", compute, runs, options, raw=True)
    if len(bars) > 1:
        mark_compare(records, plots.plot_corruption_table(bars, shared / "robustness_compare.png", ylabel=ylabel,
                                                          title=f"corrupted {options.split} set"))
    return records


def robustness_table(records: list[dict]) -> str:
    """The records of `analyse_robustness` as a markdown table, one column per run."""
    names = records[0]["options"]["corruptions"]
    headers = ["corruption"] + [r["label"] for r in records]
    rows = [["clean"] + [f"{100 * r['results']['clean_accuracy']:.2f}" for r in records]]
    for n in names:
        rows.append([n] + [f"{100 * r['results']['mean_accuracy_by_corruption'][n]:.2f}" for r in records])
    rows.append(["mean"] + [f"{100 * r['results']['mean_accuracy']:.2f}" for r in records])
    rows.append(["time s"] + [f"{r['time_s']:.1f}" for r in records])
    sevs = ",".join(str(s) for s in records[0]["options"]["severities"])
    return f"accuracy (%), mean over severities {sevs}\n" + markdown_table(headers, rows)
