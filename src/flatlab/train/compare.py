"""Comparing runs: runs whose configs differ only by seed form one row (mean ± std over seeds)."""

from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, UsageError, UserFileNotFoundError
from ..fileio import atomic_write

__all__ = ["compare_runs", "format_table", "plot_runs", "load_run", "mean_std", "format_mean_std", "markdown_table",
           "format_number", "save_png", "t975", "mean_interval", "paired_difference", "format_interval"]

_IGNORED = {"seed", "name", "out", "progress", "threads"}  # do not define the experiment


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's config and summary, refused in one line if it is not a finished run."""
    run_dir = Path(run_dir)
    config_path, summary_path = run_dir / "config.json", run_dir / "summary.json"
    if not config_path.is_file():
        raise UserFileNotFoundError(f"{run_dir} is not a flatlab run directory (no config.json)")
    if not summary_path.is_file():
        raise UserFileNotFoundError(f"{run_dir} has not finished (no summary.json); resume it first")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "dir": run_dir,
        "config": json.loads(config_path.read_text())["config"],
        "summary": json.loads(summary_path.read_text()),
        "metrics": metrics,
    }


def _label(config: dict[str, Any], varying: list[str]) -> str:
    if not varying:
        return config["optimizer"]
    return " ".join(f"{k}={config[k]}" for k in varying)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the values that are not NaN.

    The standard deviation of a single value is NaN, not 0: the spread of one sample (one seed) is
    undefined, and 0 would claim a perfectly reproducible result. Tables then show `n=1` (see
    `format_mean_std`). No values at all give `(nan, nan)`.
    """
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (NaN below 1).

    Beyond 30 degrees of freedom, the Cornish-Fisher expansion around the normal's (within 1e-3): no
    scipy needed for a table's intervals.

    Example:
        >>> t975(7)
        2.365
    """
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values: list[float]) -> tuple[float, float]:
    """The 95% t interval of the mean of `values` (NaN for fewer than two).

    Example:
        >>> low, high = mean_interval([1.0, 2.0, 3.0])
        >>> round(low, 3), round(high, 3)
        (-0.484, 4.484)
    """
    if len(values) < 2:
        return math.nan, math.nan
    mean, half = statistics.fmean(values), t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def paired_difference(a: list[float], b: list[float]) -> dict[str, Any]:
    """`a - b` seed by seed: mean, std, 95% t interval, on how many seeds `a` was higher, and the reading.

    The reading is "higher" or "lower" only where the interval excludes 0, else "within noise" ("-" for
    one seed: no interval). Pairing matters: a seed fixes the initialisation, the data order and the
    subset for every method, so per-seed differences spread far less than the two means do.

    Example:
        >>> d = paired_difference([0.50, 0.52, 0.51], [0.48, 0.50, 0.50])
        >>> round(d["mean"], 4), d["wins"], d["n"], d["reading"]
        (0.0167, 3, 3, 'higher')
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}: pairs need one of each per seed")
    diffs = [x - y for x, y in zip(a, b)]
    mean, std = mean_std(diffs)
    low, high = mean_interval(diffs)
    reading = "-" if math.isnan(low) else "higher" if low > 0 else "lower" if high < 0 else "within noise"
    return {"mean": mean, "std": std, "low": low, "high": high, "wins": sum(d > 0 for d in diffs),
            "n": len(diffs), "reading": reading}


def format_interval(low: float, high: float, fmt: str = "+.2f") -> str:
    """`[low, high]`, or `-` where there is no interval."""
    return "-" if math.isnan(low) else f"[{low:{fmt}}, {high:{fmt}}]"


def format_mean_std(mean: float, std: float, fmt: str = ".2f", std_fmt: str | None = None) -> str:
    """`mean ± std`; `mean (n=1)` where the std is undefined (one value, see `mean_std`)."""
    text = format(mean, fmt)
    if math.isnan(mean):
        return text
    return f"{text} (n=1)" if math.isnan(std) else f"{text} ± {format(std, std_fmt or fmt.lstrip('+'))}"


def markdown_table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A Markdown table, one line per row.

    `align`: `l` or `r` per column (default: the first column left, the others right).
    """
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or any(len(r) != len(headers) for r in rows):
        raise ValueError("markdown_table: every row and align need one entry per header")
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "".join("---|" if a == "l" else "---:|" for a in align)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def _refuse_duplicates(run_dirs: list[str | Path]) -> None:
    seen: dict[Path, str] = {}
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            raise UsageError(f"run {d} is given twice (as {seen[key]} too): one run would count twice")
        seen[key] = str(d)


def compare_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One row per group of runs equal but for the seed, in first-seen order."""
    _refuse_duplicates(run_dirs)
    runs = [load_run(d) for d in run_dirs]
    seen: dict[str, Path] = {}
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run["config"].items() if k not in _IGNORED}, sort_keys=True)
        same = json.dumps([key, run["config"].get("seed")])
        if same in seen:
            raise UsageError(f"runs {seen[same]} and {run['dir']} have the same config and seed: one run would "
                             "count twice (drop one)")
        seen[same] = run["dir"]
        groups.setdefault(key, []).append(run)
    keys = [json.loads(k) for k in groups]
    varying = sorted({f for k in keys for f in k if any(o.get(f) != k.get(f) for o in keys)})
    sgd_speed = None
    rows = []
    for key, members in zip(keys, groups.values()):
        top1 = mean_std([r["summary"]["final_test_top1"] for r in members])
        best = mean_std([r["summary"]["best_test_top1"] for r in members])
        speed = mean_std([r["summary"]["images_per_s"] for r in members])
        wall = mean_std([r["summary"]["wall_time_s"] for r in members])
        row = {
            "label": _label(key, varying),
            "optimizer": key["optimizer"],
            "seeds": [r["config"]["seed"] for r in members],
            "test_top1_mean": top1[0], "test_top1_std": top1[1],
            "best_top1_mean": best[0], "best_top1_std": best[1],
            "images_per_s": speed[0],
            "wall_time_s": wall[0],
            "runs": [str(r["dir"]) for r in members],
        }
        if key["optimizer"] == "sgd" and sgd_speed is None:
            sgd_speed = speed[0]
        rows.append(row)
    for row in rows:
        row["speed_vs_sgd"] = row["images_per_s"] / sgd_speed if sgd_speed else math.nan
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows of `compare_runs` as a Markdown table (one seed: `n=1` instead of a spread)."""
    headers = ["run", "seeds", "test top-1 (%)", "best top-1 (%)", "images/s", "x SGD speed", "wall (s)"]
    cells = [[r["label"], len(r["seeds"]),
              format_mean_std(100 * r["test_top1_mean"], 100 * r["test_top1_std"]),
              format_mean_std(100 * r["best_top1_mean"], 100 * r["best_top1_std"]),
              format_number(r["images_per_s"], ".0f"), format_number(r["speed_vs_sgd"], ".2f"),
              format_number(r["wall_time_s"], ".0f")]
             for r in rows]
    return markdown_table(headers, cells)


def format_number(value: float, fmt: str) -> str:
    """`value` formatted, or `-` where it is undefined (no SGD row to compare the speed with)."""
    return "-" if value is None or math.isnan(value) else format(value, fmt)


def plot_runs(run_dirs: list[str | Path], path: str | Path, labels: list[str] | None = None) -> Path:
    """Test top-1 and training loss per epoch of every run (one colour per group) as a PNG.

    Runs are grouped by their configs but for the seed, labelled by what differs; `labels` (one per
    run directory) names the groups instead.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise MissingDependencyError("plotting runs needs matplotlib: pip install flatlab[plot]") from err

    runs = [load_run(d) for d in run_dirs]
    colour = {}
    if labels is not None:
        if len(labels) != len(run_dirs):
            raise ValueError(f"labels: {len(labels)} given for {len(run_dirs)} runs")
        names = list(dict.fromkeys(labels))
        for run, label in zip(runs, labels):
            colour[str(run["dir"])] = (f"C{names.index(label) % 10}", label)
    else:
        for i, row in enumerate(compare_runs(run_dirs)):
            for d in row["runs"]:
                colour[d] = (f"C{i % 10}", row["label"])
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_acc, ax_loss = fig.subplots(1, 2)
    labelled = set()
    for run in runs:
        c, label = colour[str(run["dir"])]
        evaluated = [m for m in run["metrics"] if "test_top1" in m]
        kw = {"color": c, "label": None if label in labelled else label, "alpha": 0.8}
        labelled.add(label)
        ax_acc.plot([m["epoch"] for m in evaluated], [100 * m["test_top1"] for m in evaluated], **kw)
        epochs = [m["epoch"] for m in run["metrics"]]
        ax_loss.plot(epochs, [m["train_loss"] for m in run["metrics"]], color=c, alpha=0.8)
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)")
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def save_png(fig, path: str | Path, dpi: int = 110) -> Path:
    """Writes the matplotlib figure `fig` as a PNG, unless `path` already shows the same pixels: a
    figure drawn again from unchanged runs leaves its file alone, also one written by another
    matplotlib or zlib (whose bytes differ). No "Software" entry, which names matplotlib's version.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    path = Path(path)
    if not (path.is_file() and _pixels(path.read_bytes()) == _pixels(buffer.getvalue())):
        with atomic_write(path) as f:
            f.write(buffer.getvalue())
    return path


def _pixels(png: bytes) -> tuple[Any, ...] | None:
    from PIL import Image  # a dependency of matplotlib

    try:
        with Image.open(io.BytesIO(png)) as image:
            return image.size, image.convert("RGBA").tobytes()
    except (OSError, ValueError):  # not a PNG: rewrite it
        return None
