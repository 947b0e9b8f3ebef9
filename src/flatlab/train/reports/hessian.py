"""The hessian report: top eigenvalues, trace and eigenvalue density of each run's loss Hessian."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...analysis import hessian as _hessian
from ...data import Batch
from ..compare import markdown_table
from .common import ReportOptions, Timer, fmt, mark_compare, per_run, plots, report
from .runs import LoadedRun, check_positive

__all__ = ["analyse_hessian", "hessian_table"]


@report(batches=4)
def analyse_hessian(
    runs: Sequence[str | Path | LoadedRun],
    options: ReportOptions,
    *,
    k: int = 5,
    iters: int | None = None,
    trace_samples: int = 20,
    density: int = 1,
    density_iters: int = 40,
) -> list[dict]:
    """Top-`k` Hessian eigenvalues by Lanczos with lambda_1/lambda_5 (SSAM Sec.

    5.3), the trace by Hutchinson (`trace_samples`, 0: skip) and the eigenvalue density by stochastic Lanczos
    quadrature (`density` runs of `density_iters` steps, 0: skip; Ghorbani et al. 2019). Writes `hessian.json` and
    `hessian_density.png` per run (and a comparison density figure).
    """
    check_positive("k", k)
    if iters is not None:
        check_positive("iters", iters, k)
    if trace_samples != 0:
        check_positive("trace_samples", trace_samples, 2)
    check_positive("density", density, 0)
    check_positive("density_iters", density_iters, 2)
    own = dict(k=k, iters=iters, trace_samples=trace_samples, density=density, density_iters=density_iters)
    seed, progress = options.seed, options.progress
    densities, tops = {}, {}

    def compute(run: LoadedRun, data: list[Batch], folder: Path, timer: Timer):
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
            figures.append(plots.plot_eigen_density({run.label: (sd.grid, sd.density)}, folder / "hessian_density.png",
                                                    eigenvalues={run.label: evals},
                                                    title=f"{run.label}: Hessian eigenvalue density"))
        return "hessian", own, results, figures

    records, shared = per_run("hessian", compute, runs, options)
    if len(densities) > 1:
        mark_compare(records, plots.plot_eigen_density(densities, shared / "hessian_density_compare.png",
                                                       eigenvalues=tops, title="Hessian eigenvalue density"))
    return records


def hessian_table(records: list[dict]) -> str:
    """The records of `analyse_hessian` as a markdown table, one row per run."""
    rows = []
    for r in records:
        res = r["results"]
        trace = f"{fmt(res.get('trace'))} ± {fmt(res.get('trace_stderr'), '.2g')}" if "trace" in res else "-"
        rows.append([r["label"], fmt(res["lambda1"]), fmt(res["lambda5"]), fmt(res["lambda1_over_lambda5"]),
                     trace, f"{r['time_s']:.1f}"])
    return markdown_table(["run", "lambda1", "lambda5", "lambda1/lambda5", "trace", "time s"], rows)
