"""A study: a grid of methods x seeds from one config file, resumable, with one results table.

The file names the shared settings, the methods (each a set of config changes) and the seeds::

    name: cpu-study
    out: runs/cpu-study
    seeds: [0, 1, 2]
    base: {dataset: digits, model: cnn, epochs: 10}
    methods:
      sgd: {optimizer: sgd}
      sam: {optimizer: sam, rho: 0.05}
    hessian: {batches: 4, iters: 20}     # optional: top Hessian eigenvalue of each final model

``flatlab study FILE`` runs every (method, seed) not finished yet (an interrupted run is resumed from
its checkpoint, a finished one skipped), then writes ``results.json``, ``results.csv``,
``results.md`` and ``curves.png`` into ``out``. Interrupt and rerun it at will.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .checkpoint import atomic_write_json, atomic_write_text
from .compare import load_run, plot_runs
from .config import TrainConfig, load_config_file
from .run import check_optimizer, load_trained, resume, train

__all__ = ["Study", "load_study", "run_study"]

_KEYS = {"name", "out", "seeds", "base", "methods", "hessian", "device"}


class Study:
    def __init__(self, spec: dict[str, Any], source: str = "<dict>"):
        unknown = sorted(set(spec) - _KEYS)
        if unknown:
            allowed = ", ".join(sorted(_KEYS))
            raise ValueError(f"{source}: unknown study keys: {', '.join(unknown)} (allowed: {allowed})")
        if not spec.get("methods"):
            raise ValueError(f"{source}: a study needs a non-empty 'methods' mapping")
        self.name = spec.get("name", "study")
        self.out = Path(spec.get("out", f"runs/{self.name}"))
        self.seeds = [int(s) for s in spec.get("seeds", [0])]
        self.base = dict(spec.get("base", {}))
        self.methods = {str(k): dict(v or {}) for k, v in spec["methods"].items()}
        self.hessian = spec.get("hessian")
        self.source = source
        for method in self.methods:
            self.config(method, self.seeds[0])  # validates every method's config up front

    def config(self, method: str, seed: int) -> TrainConfig:
        run = {"seed": seed, "out": str(self.out), "name": f"{method}-seed{seed}"}
        values = {**self.base, **self.methods[method], **run}
        try:
            config = TrainConfig.from_dict(values)
            check_optimizer(config)
            return config
        except ValueError as err:
            raise ValueError(f"{self.source}: method {method!r}: {err}") from err

    def run_dir(self, method: str, seed: int) -> Path:
        return self.out / f"{method}-seed{seed}"


def load_study(path: str | Path) -> Study:
    return Study(load_config_file(path), source=str(path))


def _top_eigenvalue(run_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
    """lambda_1 of the final model's training-loss Hessian, cached in RUN/analysis/study_hessian.json."""
    cache = run_dir / "analysis" / "study_hessian.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("options") == options:
            return cached
    from ..analysis import top_eigenvalues

    model, data, _ = load_trained(run_dir)
    budget = int(options.get("batches", 4))
    batches = []
    data.train.set_epoch(0)
    for x, y in data.train:  # augmented training batches, as the loss that was minimised
        batches.append((x, y))
        if len(batches) == budget:
            break
    start = time.perf_counter()
    eig = top_eigenvalues(model, batches, k=1, iters=int(options.get("iters", 20)), seed=0)
    result = {"lambda1": float(eig.eigenvalues[0]), "seconds": time.perf_counter() - start, "options": options}
    atomic_write_json(cache, result)
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_study(study: Study, *, log=print, progress: bool | None = None) -> list[dict[str, Any]]:
    study.out.mkdir(parents=True, exist_ok=True)
    for method in study.methods:
        for seed in study.seeds:
            run_dir = study.run_dir(method, seed)
            if (run_dir / "summary.json").is_file():
                log(f"[study] {run_dir.name}: finished, skipped")
                continue
            if (run_dir / "checkpoint.pt").is_file():
                log(f"[study] {run_dir.name}: resuming")
                resume(run_dir, log=log, progress=progress)
            else:
                log(f"[study] {run_dir.name}: starting")
                train(study.config(method, seed), overwrite=True, log=log, progress=progress)
    rows = summarise(study, log=log)
    return rows


def summarise(study: Study, log=print) -> list[dict[str, Any]]:
    rows = []
    for method in study.methods:
        runs = [load_run(study.run_dir(method, s)) for s in study.seeds]
        top1 = _mean_std([r["summary"]["final_test_top1"] for r in runs])
        speed = _mean_std([r["summary"]["images_per_s"] for r in runs])
        wall = _mean_std([r["summary"]["wall_time_s"] for r in runs])
        row: dict[str, Any] = {
            "method": method,
            "changes": study.methods[method],
            "seeds": study.seeds,
            "test_top1_mean": top1[0],
            "test_top1_std": top1[1],
            "test_top1_per_seed": [r["summary"]["final_test_top1"] for r in runs],
            "images_per_s": speed[0],
            "wall_time_s_mean": wall[0],
        }
        if study.hessian:
            eig = [_top_eigenvalue(study.run_dir(method, s), dict(study.hessian)) for s in study.seeds]
            row["lambda1_mean"], row["lambda1_std"] = _mean_std([e["lambda1"] for e in eig])
        rows.append(row)
    sgd = next((r["images_per_s"] for r in rows if r["changes"].get("optimizer") == "sgd"), None)
    for row in rows:
        row["speed_vs_sgd"] = row["images_per_s"] / sgd if sgd else math.nan
    result = {
        "study": study.name,
        "source": study.source,
        "flatlab": __version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "base": study.base,
        "rows": rows,
    }
    atomic_write_json(study.out / "results.json", result)
    atomic_write_text(study.out / "results.csv", _csv(rows))
    table = format_study(rows)
    atomic_write_text(study.out / "results.md", f"# {study.name}\n\n{table}\n")
    try:
        plot_runs([study.run_dir(m, s) for m in study.methods for s in study.seeds], study.out / "curves.png")
    except ImportError:
        log("[study] matplotlib is not installed: no curves.png")
    log(table)
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    keys = ["method", "test_top1_mean", "test_top1_std", "images_per_s", "speed_vs_sgd", "wall_time_s_mean",
            "lambda1_mean", "lambda1_std"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in keys})
    return buffer.getvalue()


def format_study(rows: list[dict[str, Any]]) -> str:
    has_eig = any("lambda1_mean" in r for r in rows)
    head = "| method | test top-1 (%) | images/s | x SGD speed | wall time (s) |" + (" lambda1 |" if has_eig else "")
    lines = [head, "|---|---:|---:|---:|---:|" + ("---:|" if has_eig else "")]
    for r in rows:
        line = (f"| {r['method']} | {100 * r['test_top1_mean']:.2f} ± {100 * r['test_top1_std']:.2f} | "
                f"{r['images_per_s']:.0f} | {r['speed_vs_sgd']:.2f} | {r['wall_time_s_mean']:.0f} |")
        if has_eig:
            line += f" {r.get('lambda1_mean', math.nan):.3g} ± {r.get('lambda1_std', math.nan):.2g} |"
        lines.append(line)
    return "\n".join(lines)
