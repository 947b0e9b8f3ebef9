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
``results.md``, ``curves.png`` and ``tradeoff.png`` into ``out``. Interrupt and rerun it at will.

``--jobs N`` trains N runs at a time, each in its own process (give each ``threads`` = cores / N: on a
small CPU model two one-thread runs make more images per second than one two-thread run). Every run's
images/s is then measured beside N-1 others, the same for every method, so the ratios stay comparable.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..analysis import top_eigenvalues
from ..errors import UsageError, check_number
from ..fileio import atomic_write_json, atomic_write_text, unwritable
from ..optim import is_base_optimizer
from .compare import _number, format_mean_std, load_run, markdown_table, mean_std, plot_runs
from .config import TrainConfig, load_config_file
from .run import check_optimizer, load_trained, resume, train

__all__ = ["Study", "load_study", "run_study", "summarise", "plot_tradeoff", "machine_info"]

_KEYS = {"name", "out", "seeds", "base", "methods", "hessian", "device", "extends"}


class Study:
    def __init__(self, spec: dict[str, Any], source: str = "<dict>"):
        unknown = sorted(set(spec) - _KEYS)
        if unknown:
            allowed = ", ".join(sorted(_KEYS))
            raise UsageError(f"{source}: unknown study keys: {', '.join(unknown)} (allowed: {allowed})")
        if not isinstance(spec.get("methods"), dict) or not spec["methods"]:
            raise UsageError(f"{source}: a study needs a non-empty 'methods' mapping")
        seeds = spec.get("seeds", [0])
        if not isinstance(seeds, (list, tuple)) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                for s in seeds):
            raise UsageError(f"{source}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
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
        except UsageError as err:
            raise UsageError(f"{self.source}: method {method!r}: {err}") from err

    def run_dir(self, method: str, seed: int) -> Path:
        return self.out / f"{method}-seed{seed}"


def load_study(path: str | Path) -> Study:
    """Reads a study file. ``extends: other.yaml`` (relative to this file) starts from that study: this
    file's ``base`` entries override the other's one by one (``null`` restores a field's default), every
    other key replaces the other's. A paper-scale study is then the CPU study plus what scale changes."""
    return Study(_resolve_extends(Path(path), seen=()), source=str(path))


def _resolve_extends(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    spec = load_config_file(path)
    parent = spec.pop("extends", None)
    if parent is None:
        return spec
    parent_path = (path.parent / parent).resolve()
    if parent_path in seen or parent_path == path.resolve():
        raise UsageError(f"{path}: 'extends' makes a cycle through {parent_path}")
    merged = _resolve_extends(parent_path, seen + (path.resolve(),))
    base = {**merged.get("base", {}), **spec.pop("base", {})}
    merged.update(spec)
    merged["base"] = {k: v for k, v in base.items() if v is not None}
    return merged


def machine_info() -> dict[str, Any]:
    """Where a study ran: enough to tell whether two results tables are comparable."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
        info["cpu_model"] = model
    except OSError:
        pass
    return info


def _top_eigenvalue(run_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
    """lambda_1 of the final model's training-loss Hessian, cached in RUN/analysis/study_hessian.json."""
    cache = run_dir / "analysis" / "study_hessian.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("options") == options:
            return cached
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


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _run_one(study: Study, method: str, seed: int, log=print, progress: bool | None = None,
             rerun: bool = False) -> None:
    run_dir = study.run_dir(method, seed)
    if rerun:
        log(f"[study] {run_dir.name}: training again (--rerun)")
        train(study.config(method, seed), overwrite=True, log=log, progress=progress)
    elif (run_dir / "summary.json").is_file():
        log(f"[study] {run_dir.name}: finished, skipped")
    elif (run_dir / "checkpoint.pt").is_file():
        log(f"[study] {run_dir.name}: resuming")
        resume(run_dir, log=log, progress=progress)
    else:
        log(f"[study] {run_dir.name}: starting")
        train(study.config(method, seed), overwrite=True, log=log, progress=progress)


def _prefixed_print(prefix: str):
    def log(message: str) -> None:
        print("\n".join(f"[{prefix}] {line}" for line in str(message).splitlines()), flush=True)

    return log


def _worker(task: tuple[Study, str, int, bool]) -> str:
    study, method, seed, rerun = task
    _run_one(study, method, seed, log=_prefixed_print(f"{method}-seed{seed}"), progress=False, rerun=rerun)
    if study.hessian:  # here rather than in the summary, so that it runs in parallel too
        _top_eigenvalue(study.run_dir(method, seed), dict(study.hessian))
    return f"{method}-seed{seed}"


def run_study(study: Study, *, log=print, progress: bool | None = None, jobs: int = 1,
              rerun: bool = False) -> list[dict[str, Any]]:
    """Trains every (method, seed) not finished yet (``rerun``: every one, replacing the finished
    runs), ``jobs`` at a time, then tabulates the study. A study whose runs are all finished (e.g.
    committed with the repository) only tabulates them: it finishes at once.

    ``jobs > 1`` starts worker processes with ``spawn``: a script that calls this needs the usual
    ``if __name__ == "__main__":`` guard (the ``flatlab study`` command has it)."""
    check_number("jobs", jobs, low=1, integer=True)
    reason = unwritable(study.out)
    if reason:
        raise UsageError(f"cannot write the study into {study.out}: {reason}")
    study.out.mkdir(parents=True, exist_ok=True)
    # seed-major: a study cut short still has every method at its first seeds
    tasks = [(study, m, s, rerun) for s in study.seeds for m in study.methods]
    if jobs == 1:
        for _, method, seed, _ in tasks:
            _run_one(study, method, seed, log=log, progress=progress, rerun=rerun)
    else:
        import multiprocessing

        # spawn: a fresh interpreter per run (no forked torch thread pools); one task per process so a
        # long study does not accumulate memory. Ctrl-C terminates the workers; their checkpoints are
        # written atomically, so rerunning resumes them.
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes=jobs, maxtasksperchild=1) as pool:
            for name in pool.imap_unordered(_worker, tasks):
                log(f"[study] {name}: done")
    return summarise(study, log=log, jobs=jobs)


def summarise(study: Study, log=print, jobs: int = 1) -> list[dict[str, Any]]:
    rows = []
    for method in study.methods:
        runs = [load_run(study.run_dir(method, s)) for s in study.seeds]
        top1 = mean_std([r["summary"]["final_test_top1"] for r in runs])
        speed = mean_std([r["summary"]["images_per_s"] for r in runs])
        wall = mean_std([r["summary"]["wall_time_s"] for r in runs])
        row: dict[str, Any] = {
            "method": method,
            "changes": study.methods[method],
            "seeds": study.seeds,
            "test_top1_mean": top1[0],
            "test_top1_std": top1[1],
            "test_top1_per_seed": [r["summary"]["final_test_top1"] for r in runs],
            "images_per_s": speed[0],
            "images_per_s_std": speed[1],
            "wall_time_s_mean": wall[0],
            "train_loss_mean": mean_std([r["summary"]["final_train_loss"] for r in runs])[0],
        }
        fractions = [_sam_fraction(r) for r in runs]
        if all(f is not None for f in fractions):
            row["sam_steps_per_step"] = mean_std(fractions)[0]
        if study.hessian:
            eig = [_top_eigenvalue(study.run_dir(method, s), dict(study.hessian)) for s in study.seeds]
            row["lambda1_mean"], row["lambda1_std"] = mean_std([e["lambda1"] for e in eig])
        rows.append(row)
    # the reference: the first method that trains with the base optimizer alone
    sgd = next((r for r in rows if r["changes"].get("optimizer") == "sgd"), None)
    for row in rows:
        row["is_reference"] = row is sgd
        row["speed_vs_sgd"] = row["images_per_s"] / sgd["images_per_s"] if sgd else math.nan
        # a seed fixes the initialisation, the data order and the training subset for every method, so
        # the per-seed difference to SGD is far less noisy than the two means apart
        diffs = [a - b for a, b in zip(row["test_top1_per_seed"], sgd["test_top1_per_seed"])] if sgd else []
        row["vs_sgd_paired_mean"], row["vs_sgd_paired_std"] = mean_std(diffs)
    result = {
        "study": study.name,
        "source": study.source,
        "flatlab": __version__,
        "torch": torch.__version__,
        "threads_per_run": study.base.get("threads"),
        "jobs": jobs,
        "machine": machine_info(),
        "command": " ".join(sys.argv),
        "base": study.base,
        "rows": rows,
    }
    atomic_write_json(study.out / "results.json", _nan_to_none(result))  # strict JSON: no NaN
    atomic_write_text(study.out / "results.csv", _csv(rows))
    table = format_study(rows)
    atomic_write_text(study.out / "results.md", f"# {study.name}\n\n{table}\n")
    try:
        grid = [(m, s) for m in study.methods for s in study.seeds]
        plot_runs([study.run_dir(m, s) for m, s in grid], study.out / "curves.png", labels=[m for m, _ in grid])
        plot_tradeoff(rows, study.out / "tradeoff.png", title=study.name)
    except ImportError:
        log("[study] matplotlib is not installed: no curves.png, tradeoff.png")
    log(table)
    return rows


def _sam_fraction(run: dict[str, Any]) -> float | None:
    """The share of sharpness-aware steps of a finished run: 0 for a base optimizer alone, None
    when a run made before flatlab recorded it."""
    if "sam_steps_per_step" in run["summary"]:
        return run["summary"]["sam_steps_per_step"]
    return 0.0 if is_base_optimizer(run["config"]["optimizer"]) else None


def plot_tradeoff(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """The gain over SGD (paired difference of test top-1, mean ± std over seeds) against the training
    time relative to SGD and, when measured, test top-1 against the top Hessian eigenvalue: cost and
    flatness next to accuracy, one point per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    has_eig = any("lambda1_mean" in r for r in rows)
    fig = Figure(figsize=(10 if has_eig else 5.5, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if has_eig else 1, squeeze=False)[0]
    for i, r in enumerate(rows):
        acc, err = 100 * r["test_top1_mean"], 100 * r["test_top1_std"]
        gain = 0.0 if r.get("is_reference") else 100 * r.get("vs_sgd_paired_mean", math.nan)
        spread = 0.0 if r.get("is_reference") else 100 * r.get("vs_sgd_paired_std", math.nan)
        time_x = 1.0 / r["speed_vs_sgd"] if r["speed_vs_sgd"] else math.nan
        style = {"color": f"C{i % 10}", "fmt": "o", "capsize": 3}
        axes[0].errorbar(time_x, gain, yerr=0.0 if math.isnan(spread) else spread, label=r["method"], **style)
        label = {"fontsize": 7, "xytext": (4, 3), "textcoords": "offset points"}
        axes[0].annotate(r["method"], (time_x, gain), **label)
        if has_eig:
            axes[1].errorbar(r["lambda1_mean"], acc, xerr=r["lambda1_std"], yerr=err, **style)
            axes[1].annotate(r["method"], (r["lambda1_mean"], acc), **label)
    axes[0].axhline(0.0, color="0.7", lw=0.8)
    axes[0].set(xlabel="training time per image (x SGD)", ylabel="test top-1 gain over SGD (points, paired)",
                title=title)
    axes[0].legend(fontsize=8)
    if has_eig:
        axes[1].set(xlabel="top Hessian eigenvalue of the final model", ylabel="test top-1 (%)", xscale="log")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _csv(rows: list[dict[str, Any]]) -> str:
    keys = ["method", "test_top1_mean", "test_top1_std", "images_per_s", "images_per_s_std", "speed_vs_sgd",
            "wall_time_s_mean", "train_loss_mean", "vs_sgd_paired_mean", "vs_sgd_paired_std", "sam_steps_per_step",
            "lambda1_mean", "lambda1_std"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in keys})
    return buffer.getvalue()


def format_study(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: accuracy (mean ± std and per seed), final training loss, cost, flatness."""
    has_eig = any("lambda1_mean" in r for r in rows)
    headers = ["method", "test top-1 (%)", "per seed", "vs SGD, paired (points)", "final train loss", "images/s",
               "x SGD speed", "SAM steps / step", "wall time (s)"] + (["lambda1"] if has_eig else [])
    cells = []
    for r in rows:
        seeds = ", ".join(f"{100 * a:.2f}" for a in r["test_top1_per_seed"])
        if r.get("is_reference"):
            paired = "(reference)"
        else:
            diff, spread = r.get("vs_sgd_paired_mean", math.nan), r.get("vs_sgd_paired_std", math.nan)
            paired = "-" if math.isnan(diff) else format_mean_std(100 * diff, 100 * spread, "+.2f")
        line = [r["method"], format_mean_std(100 * r["test_top1_mean"], 100 * r["test_top1_std"]), seeds, paired,
                f"{r.get('train_loss_mean', math.nan):.3g}", f"{r['images_per_s']:.0f}",
                _number(r["speed_vs_sgd"], ".2f"),
                "-" if r.get("sam_steps_per_step") is None else f"{r['sam_steps_per_step']:.2f}",
                f"{r['wall_time_s_mean']:.0f}"]
        if has_eig:
            line.append(format_mean_std(r.get("lambda1_mean", math.nan), r.get("lambda1_std", math.nan), ".3g", ".2g"))
        cells.append(line)
    return markdown_table(headers, cells, "lrlrrrrrr" + ("r" if has_eig else ""))
