"""The efficient frontier: each method's gain over SGD (from a study) against its cost (from the
step-cost benchmark), and how much of SAM's gain it buys per unit of SAM's extra cost.

A study's own images/s come from runs that share the machine (two at a time, beside whatever else
runs), so the cost here is the step-cost benchmark's, measured alone with interleaved rounds on the
same model and batch: the row named as the study's method (`sam-m32`), else its optimizer's. A method
whose share of sharpness-aware steps depends on the run (AE-SAM decides from the gradient norm, RST
from its probability) is priced at the share it took in the study:
time = its benchmark ratio + (study share - benchmark share) x (SAM's ratio - 1).
The gain carries the study's 95% interval and reading (higher or lower only where the interval
excludes 0); the figure draws the interval.

    python benchmarks/frontier.py        # cpu-frontier-8 + step-cost-all -> results/cpu-frontier-8/frontier.{md,png}
    python benchmarks/frontier.py --study benchmarks/results/cpu-frontier/results.json   # the 3-seed study
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from flatlab.train.compare import format_interval

RESULTS = Path(__file__).parent / "results"


def frontier(study: dict, cost: dict) -> list[dict]:
    by_name = {r["optimizer"]: r for r in cost["rows"]}
    sam_ratio = by_name["sam"]["ratio_to_sgd"]
    rows = []
    for r in study["rows"]:
        name = r["changes"]["optimizer"]
        bench = by_name.get(r["method"]) or by_name.get(name)
        if bench is None:
            raise SystemExit(f"frontier.py: the step-cost results have no row for {r['method']} ({name}): "
                             "add it to benchmarks/step_cost.py's METHODS and run that benchmark again")
        share = r.get("sam_steps_per_step")
        time_x = bench["ratio_to_sgd"]
        if share is not None and "sam_steps_per_step" in bench:
            time_x += (share - bench["sam_steps_per_step"]) * (sam_ratio - 1.0)
        gain = 0.0 if r["is_reference"] else 100 * r["vs_sgd_paired_mean"]
        spread = None if r["is_reference"] or r["vs_sgd_paired_std"] is None else 100 * r["vs_sgd_paired_std"]
        low, high = r.get("vs_sgd_interval") or (None, None)
        rows.append({"method": r["method"], "optimizer": name, "test_top1": 100 * r["test_top1_mean"],
                     "test_top1_std": 100 * r["test_top1_std"] if r["test_top1_std"] is not None else None,
                     "gain": gain, "gain_std": spread,
                     "gain_low": None if low is None else 100 * low, "gain_high": None if high is None else 100 * high,
                     "won": r.get("vs_sgd_wins"), "seeds": len(r["test_top1_per_seed"]),
                     "reading": r.get("vs_sgd_reading"), "sam_steps_per_step": share, "time_x_sgd": time_x})
    sam = next(r for r in rows if r["method"] == "sam")
    # a share of a gain the seeds cannot tell from 0 is a ratio of two noises: not given
    sam_gain_stands = sam["gain"] and sam["reading"] in (None, "higher")
    for r in rows:
        extra = r["time_x_sgd"] - 1.0
        r["share_of_sam_gain"] = r["gain"] / sam["gain"] if sam_gain_stands else math.nan
        r["share_of_sam_extra_time"] = extra / (sam["time_x_sgd"] - 1.0)
    return rows


def _fmt(value, spec=".2f", none="-"):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(round(value, 2) + 0.0, spec)  # + 0.0: no "-0.00"


def table(rows: list[dict], study_name: str, command: str = "",
          step_cost: str = "benchmarks/results/step-cost-all/step_cost.json") -> str:
    lines = [f"# The efficient frontier ({study_name} + step_cost)", "",
             f"Command: `python benchmarks/frontier.py{command}`. Gain: test top-1 minus SGD's on the same seed, "
             "mean ± std over seeds (points), its 95% t interval, the seeds it won and the reading (higher or "
             f"lower only where the interval excludes 0). Time: step time x SGD from `{step_cost}`, at the share "
             "of SAM steps the method took in the study.", "",
             "| method | test top-1 (%) | gain vs SGD | 95% interval | won | reading | SAM steps / step | time x SGD "
             "| share of SAM's gain | share of SAM's extra time |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["optimizer"] == "sgd":
            gain, interval, won, reading = "(reference)", "", "", ""
        else:
            gain = f"{r['gain']:+.2f} ± {_fmt(r['gain_std'])}"
            interval = "-" if r["gain_low"] is None else format_interval(r["gain_low"], r["gain_high"])
            won = "-" if r["won"] is None else f"{r['won']}/{r['seeds']}"
            reading = r["reading"] or "-"
        lines.append(f"| {r['method']} | {r['test_top1']:.2f} ± {_fmt(r['test_top1_std'])} | {gain} | {interval} | "
                     f"{won} | {reading} | {_fmt(r['sam_steps_per_step'])} | {r['time_x_sgd']:.2f} | "
                     f"{_fmt(r['share_of_sam_gain'])} | {_fmt(r['share_of_sam_extra_time'])} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    # a method far below SGD would squash the rest: it is drawn on the lower edge, its value written
    floor = -3.0
    off_scale = 0
    times = [r["time_x_sgd"] for r in rows]
    # a label's width in data units: about 5 pixels a character at 7 points, on an axis ~480 px wide
    per_char = (max(times) - min(times) + 0.2) * 5 / 480
    placed: list[tuple[float, float, float]] = []  # labels drawn: left edge, right edge, height
    for i, r in enumerate(rows):
        # ten colours, then the same colours with another marker: no two methods look alike
        style = {"capsize": 3, "color": f"C{i % 10}", "label": r["method"], "fmt": "os^"[i // 10 % 3]}
        text = {"fontsize": 7, "xytext": (4, 3), "textcoords": "offset points"}
        if r["gain"] < floor:
            ax.plot(r["time_x_sgd"], floor, "v", color=style["color"], label=r["method"])
            text["xytext"] = (4, 6 + 10 * off_scale)  # stacked, so that neighbours stay readable
            off_scale += 1
            ax.annotate(f"{r['method']} ({r['gain']:+.1f}, off scale)", (r["time_x_sgd"], floor), **text)
            continue
        interval = [[r["gain"] - r["gain_low"]], [r["gain_high"] - r["gain"]]] if r["gain_low"] is not None else 0.0
        ax.errorbar(r["time_x_sgd"], r["gain"], yerr=interval, **style)
        # methods at about the same cost and gain (SAM and VaSSO; the tuned switches at 1.3x): a label
        # that would overlap one already drawn goes on the left, else below the point
        x, y, width = r["time_x_sgd"], r["gain"], per_char * (len(r["method"]) + 2)
        for xytext, left in (((4, 3), x), ((-4, 3), x - width), ((4, -10), x)):
            box = (left, left + width, y + (0.08 if xytext[1] > 0 else -0.12))
            if not any(a < box[1] and box[0] < b and abs(h - box[2]) < 0.15 for a, b, h in placed):
                break
        text.update(xytext=xytext, ha="right" if xytext[0] < 0 else "left")
        placed.append(box)
        ax.annotate(r["method"], (x, y), **text)
    if off_scale:
        ax.set_ylim(bottom=floor - 0.3)
    ax.axhline(0.0, color="0.7", lw=0.8)
    ax.set(xlabel="step time (x SGD, step-cost benchmark)",
           ylabel="test top-1 gain over SGD (points, paired, 95% interval)",
           title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _shown(path: Path) -> str:
    """`path` as typed from the repository's root where it lies inside it."""
    try:
        return str(path.resolve().relative_to(RESULTS.parent.parent.resolve()))
    except ValueError:
        return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=RESULTS / "cpu-frontier-8" / "results.json")
    parser.add_argument("--step-cost", type=Path, default=RESULTS / "step-cost-all" / "step_cost.json")
    parser.add_argument("--out", type=Path, default=None, help="default: the study's folder")
    args = parser.parse_args()
    study = json.loads(args.study.read_text())
    cost = json.loads(args.step_cost.read_text())
    out = args.out or args.study.parent
    rows = frontier(study, cost)
    command = "".join(f" --{flag.replace('_', '-')} {_shown(getattr(args, flag))}" for flag in ("study", "step_cost")
                      if getattr(args, flag).resolve() != parser.get_default(flag).resolve())
    text = table(rows, study["study"], command, _shown(args.step_cost))
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps({"study": _shown(args.study), "step_cost": _shown(args.step_cost),
                                                   "rows": rows}, indent=2) + "\n")
    (out / "frontier.md").write_text(text)
    try:
        plot(rows, out / "frontier.png", f"{study['study']}: gain against cost")
    except ImportError:
        print("matplotlib is not installed: no frontier.png")
    print(text)


if __name__ == "__main__":
    main()
