"""Where a step is bound by the optimizer's own tensor work: step time x SGD against parameter count.

Model: a 4-layer MLP 256-H-H-H-10 (H = 3072: 19.7M parameters), batch 32, SGD with momentum 0.9
and weight decay, on the CPU; forward+backward there costs about as much as the SGD step itself, so
what an optimizer adds per parameter shows. Widths H = 256 to 3072 give the table against parameter
count (0.2M to 20M). Rounds are interleaved, the median is reported, every ratio is to SGD in the
same run.

Floors: the tensor passes a method cannot avoid, timed alone on the same tensors:
- S2-SAM: SGD's step + the gradient norm, one copy w -> backup, one scaled add of the gradient
  into w (w + eps), one copy back (w);
- SAM: the same plus a second forward/backward.
The floor skips what a step does for safety: SAM's check that the descent gradient is finite (one
read of it; S2-SAM's check is the norm above), and SAM's in-place scaling of the gradient into eps
(one more pass, the price of a step with one host sync: a scaled add needs the norm on the host).

Memory, in copies of the parameters: the optimizer's own state (a backup of w; the base optimizer's
momentum is not counted), what a single-pass method holds between steps beyond it (its pending
directions: the gradient memory a plain loop frees at zero_grad, released at the next forward), and
the peak of a step above SGD's, measured with flatlab.analysis.peak_memory (allocations replayed
from torch.profiler).

    python benchmarks/optimizer_overhead.py                      # results/optimizer_overhead.{json,md}
    python benchmarks/optimizer_overhead.py --widths 128 --rounds 2 --out /tmp/quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import interleaved_medians, train_step, warm_up

import flatlab
from flatlab.analysis import peak_memory, state_bytes

METHODS = ["sgd", "sam", "s2sam", "esam", "looksam", "msam"]


def mlp(width: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(256, width), torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
        torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 10),
    )


def build(name: str, width: int):
    model = mlp(width)
    options = {"gamma": 1.0} if name == "esam" else {}
    opt = flatlab.create_optimizer(name, model, lr=0.01, momentum=0.9, weight_decay=5e-4, **options)
    return model, opt


def floors(width: int, x, y, rounds: int) -> dict[str, float]:
    """Median ms of each tensor pass a step can make, timed alone: forward+backward, SGD's step, the
    gradient norm, the copy of w to a backup, the scaled add of the gradient into w, the copy back;
    and the passes a floor leaves out, to price them: scaling the gradient in place (SAM builds eps
    there to keep one host sync), the finiteness check by a norm (SAM's descent) and by torch's
    fused unscale-and-check (which writes the gradients too)."""
    model, opt = build("sgd", width)
    params = list(model.parameters())
    backups = [torch.empty_like(p) for p in params]
    one, found = torch.ones(()), torch.zeros(())

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def grads():
        return [p.grad for p in params]

    def norm():
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads())))

    parts = {
        "fwd_bwd": fwd_bwd,
        "sgd_step": opt.step,
        "norm": lambda: float(norm()),
        "backup_copy": lambda: torch._foreach_copy_(backups, params),
        "scaled_add": lambda: torch._foreach_add_(params, grads(), alpha=1e-30),
        "copy_back": lambda: torch._foreach_copy_(params, backups),
        "scale_in_place": lambda: torch._foreach_mul_(grads(), one),
        "fused_check": lambda: torch._amp_foreach_non_finite_check_and_unscale_(grads(), found, one),
    }
    fwd_bwd()
    times: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(rounds):
        for k, f in parts.items():
            with torch.set_grad_enabled(k == "fwd_bwd"):
                start = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - start)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    sgd = ms["fwd_bwd"] + ms["sgd_step"]
    perturb_restore = ms["norm"] + ms["backup_copy"] + ms["scaled_add"] + ms["copy_back"]
    return {**{f"{k}_ms": round(v, 2) for k, v in ms.items()},
            "s2sam_floor_x_sgd": round((sgd + perturb_restore) / sgd, 3),
            "sam_floor_x_sgd": round((sgd + ms["fwd_bwd"] + perturb_restore) / sgd, 3)}


def memory(name: str, width: int, x, y) -> tuple[float, float, float]:
    """(own state, held between steps beyond it, peak of a step counted from what SGD holds between
    steps) in bytes, after two warm-up steps."""
    model, opt = build(name, width)
    for _ in range(2):
        train_step(model, opt, x, y)
    own = state_bytes(opt) if isinstance(opt, flatlab.SharpnessAware) else 0

    def previous_step():
        # under the profiler, so that it sees the frees of what this step leaves (gradients, a
        # single-pass method's pending direction) when the measured step releases them
        train_step(model, opt, x, y)
        opt.zero_grad(set_to_none=True)

    peak = peak_memory(lambda: train_step(model, opt, x, y), setup=previous_step).peak
    # a single-pass method starts its step holding its pending directions (the gradient memory SGD
    # frees at zero_grad): the step's peak counts from them
    held = sum(t.numel() * t.element_size() for t in getattr(opt, "pending_directions", ()))
    return own, held, held + peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=lambda s: [int(v) for v in s.split(",")], default=[256, 512, 1024, 2048, 3072])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 256, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    rows = []
    for width in args.widths:
        runs = {name: build(name, width) for name in METHODS}
        warm_up(runs, x, y, 2)
        median = interleaved_medians(runs, x, y, args.rounds, args.steps)
        n_params = sum(p.numel() for p in runs["sgd"][0].parameters())
        del runs
        param_bytes = 4 * n_params
        mem = {name: memory(name, width, x, y) for name in METHODS}
        row = {"width": width, "parameters": n_params, "sgd_ms": round(median["sgd"] * 1e3, 2),
               **{f"{name}_x_sgd": round(median[name] / median["sgd"], 3) for name in METHODS if name != "sgd"},
               **floors(width, x, y, args.rounds),
               **{f"{name}_state_copies": round(mem[name][0] / param_bytes, 3) for name in METHODS if name != "sgd"},
               **{f"{name}_held_between_steps_copies": round(mem[name][1] / param_bytes, 3)
                  for name in METHODS if name != "sgd"},
               **{f"{name}_peak_over_sgd_copies": round((mem[name][2] - mem["sgd"][2]) / param_bytes, 3)
                  for name in METHODS if name != "sgd"}}
        rows.append(row)
        print(row, flush=True)
    result = {"benchmark": "optimizer_overhead", "command": "python benchmarks/optimizer_overhead.py",
              "batch": args.batch, "threads": args.threads, "rounds": args.rounds, "steps_per_round": args.steps,
              "torch": torch.__version__, "flatlab": flatlab.__version__,
              "machine": f"{platform.processor() or platform.machine()}", "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "optimizer_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    methods = [m for m in METHODS if m != "sgd"]
    lines = [f"# Optimizer overhead: MLP 256-H-H-H-10, batch {args.batch}, CPU, {args.threads} threads", "",
             f"Command: `{result['command']}`; median of {args.rounds} interleaved rounds of {args.steps} steps.", "",
             "| H | parameters | SGD step (ms) | " + " | ".join(f"{m} x SGD" for m in methods)
             + " | S2-SAM floor | SAM floor |",
             "|---:|---:|---:|" + "---:|" * len(methods) + "---:|---:|"]
    for r in rows:
        lines.append(f"| {r['width']} | {r['parameters'] / 1e6:.2f}M | {r['sgd_ms']} | "
                     + " | ".join(str(r[f"{m}_x_sgd"]) for m in methods)
                     + f" | {r['s2sam_floor_x_sgd']} | {r['sam_floor_x_sgd']} |")
    big = rows[-1]
    passes = ["fwd_bwd", "sgd_step", "norm", "backup_copy", "scaled_add", "copy_back", "scale_in_place", "fused_check"]
    lines += ["", f"Each pass timed alone at H = {big['width']} (ms): "
              + ", ".join(f"{p} {big[f'{p}_ms']}" for p in passes) + "."]
    lines += ["", f"Memory at H = {big['width']} ({big['parameters'] / 1e6:.1f}M parameters), "
              "in copies of the parameters:", "",
              "| method | own state | held between steps beyond it | step's peak above SGD's |", "|---|---:|---:|---:|"]
    for m in methods:
        lines.append(f"| {m} | {big[f'{m}_state_copies']} | {big[f'{m}_held_between_steps_copies']} "
                     f"| {big[f'{m}_peak_over_sgd_copies']} |")
    (args.out / "optimizer_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
