"""The gradstats report: SAM-vs-SGD gradient difference, SDS B+/B- statistics and linearity per run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ...analysis import gradstats as _gradstats
from ...data import Batch
from ...errors import UsageError
from ..compare import markdown_table
from .common import ReportOptions, Timer, fmt, mark_compare, per_run, plots, report
from .runs import LoadedRun

__all__ = ["analyse_gradstats", "gradstats_table"]


@report(batches=8)
def analyse_gradstats(
    runs: Sequence[str | Path | LoadedRun],
    options: ReportOptions,
    *,
    rho: float | None = None,
    gamma: float = 0.5,
    beta: float = 1.0,
) -> list[dict]:
    """SSAM Fig.

    2's relative gradient difference of SAM vs SGD, ESAM's SDS B+/B- statistics (`gamma`: fraction in B+) and ESAM's
    linearity measure, at SAM radius `rho` (default: the run's rho, else 0.05), over the same batches. Writes
    `gradstats.json` and `gradstats_relative_gradient.png` per run (and a comparison histogram).
    """
    if rho is not None and not (math.isfinite(rho) and rho > 0):
        raise UsageError(f"--rho must be > 0, got {rho!r}")
    if not 0.0 < gamma < 1.0:
        raise UsageError(f"--gamma must be in (0, 1), got {gamma!r}")
    if not 0.0 < beta <= 1.0:
        raise UsageError(f"--beta must be in (0, 1], got {beta!r}")
    seed, progress = options.seed, options.progress
    hists = {}

    def compute(run: LoadedRun, data: list[Batch], folder: Path, timer: Timer):
        run_rho = rho if rho is not None else (run.config.rho if run.config.rho is not None else 0.05)
        own = dict(rho=run_rho, gamma=gamma, beta=beta)
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
        figures = [plots.plot_relative_gradient_histogram({run.label: rgd}, folder / "gradstats_relative_gradient.png",
                                                          title=f"{run.label}: SAM vs SGD gradient (rho {run_rho:g})")]
        return "gradstats", own, results, figures

    records, shared = per_run("gradstats", compute, runs, options)
    if len(hists) > 1:
        mark_compare(records, plots.plot_relative_gradient_histogram(
            hists, shared / "gradstats_relative_gradient_compare.png", title="SAM vs SGD relative gradient difference"
        ))
    return records


def gradstats_table(records: list[dict]) -> str:
    """The records of `analyse_gradstats` as a markdown table, one row per run."""
    rows = []
    for r in records:
        res, sds = r["results"], r["results"]["sds_mean"]
        rows.append([r["label"], fmt(r["options"]["rho"]),
                     f"{100 * res['relative_gradient']['fraction_log_ratio_below_0']:.1f}%",
                     f"{fmt(sds['cos_plus'], '.3f')}/{fmt(sds['cos_minus'], '.3f')}/{fmt(sds['cos_rand'], '.3f')}",
                     f"{fmt(sds['sharpness_plus'], '.3g')}/{fmt(sds['sharpness_minus'], '.3g')}",
                     fmt(res["linearity_mean"], ".3g"), f"{r['time_s']:.1f}"])
    return markdown_table(["run", "rho", "log r < 0", "cos B+/B-/rand", "sharpness B+/B-", "linearity", "time s"],
                          rows)
