"""Step cost of every optimizer as a ratio to plain SGD measured in the same run.

Model: ResNet-18 layout at width 0.25 (base 16 channels, 0.70M parameters, BatchNorm), batch 128 of
CIFAR-shaped inputs on the CPU. Rounds are interleaved (every optimizer timed once per round) so
that drifts of the machine hit all of them alike; the median per-step time over rounds is reported.

Each row also gives the forward/backward passes per step counted on the model during the timed
rounds (LookSAM k=5: 1.2, RST p=0.5: about 1.5, AE-SAM: 1 + its fraction of SAM steps) and the
fraction of steps that took the sharpness-aware update (which benchmarks/frontier.py uses to
price a scheduled method at the fraction it takes in a real run). Passes count forwards; the rows
forwarded, in batches, count work: SAM with m-sharpness m = 32 makes 8 forwards of 32 rows, 2 batches.

Also: SSAM-F's Fisher refresh with 128 samples in units of SGD steps, and the optimizer state
memory as a ratio to parameter memory (the wrapper's own state, and the base optimizer's).

    python benchmarks/step_cost.py                # writes benchmarks/results/step-cost-all/step_cost.{json,md}
    python benchmarks/step_cost.py --rounds 3 --steps 2 --out /tmp/quick   # a quick look
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
from timing import interleaved_medians, warm_up

import flatlab
from flatlab.models import create_model

METHODS = {
    "sgd": {},
    "sam": dict(rho=0.05),
    "sam-sign": dict(rho=0.05),
    "asam": dict(rho=0.5),
    "esam": dict(rho=0.05, beta=0.6, gamma=0.5),
    "ssam-f": dict(rho=0.05, sparsity=0.5, update_interval=10**9),
    "ssam-d": dict(rho=0.05, sparsity=0.5, update_interval=100),
    "s2sam": dict(rho=0.05),
    # the efficient frontier (issue 11), each with its paper's defaults
    "looksam": dict(rho=0.1, k=5, alpha=0.7),
    "aesam": dict(rho=0.05),
    "rst": dict(rho=0.05, sam_probability=0.5),
    "msam": dict(rho=3.0),
    "gsam": dict(rho=0.05, alpha=0.4),
    "wsam": dict(rho=0.05, gamma=0.9),
    "fsam": dict(rho=0.1, sigma=1.0, lmbda=0.9),
    # issue 19, each with its defaults (docs/methods.md)
    "gcsam": dict(rho=0.05),
    "vasso": dict(rho=0.05, theta=0.9),
    "sam-on": dict(rho=0.5),
    "lookbehind-sam": dict(rho=0.05, k=2),  # adaptive alpha
    "rwp": dict(rho=0.01, alpha=0.5),
    "bsam": dict(rho=0.01, num_data=50_000),  # on its own base (no SGD momentum)
    # a row that is not a registry name says which optimizer it runs
    "sam-m32": dict(optimizer="sam", rho=0.05, m=32),  # m-sharpness: 4 ascent groups of the batch of 128
}


def build(name: str, width: float, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("resnet18", num_classes=10, width=width)
    options = dict(METHODS[name])
    optimizer = options.pop("optimizer", name)
    base = flatlab.optim.base_of(optimizer)
    momentum = dict(momentum=0.9) if "momentum" in flatlab.optim.base_options(base) else {}
    opt = flatlab.create_optimizer(optimizer, model, lr=0.05, weight_decay=5e-4, **momentum, **options)
    return model, opt


def esam_cost_model(x, y, width: float, rounds: int, beta: float = 0.6, gamma: float = 0.5) -> dict[str, float]:
    """Times the passes ESAM is made of, so its ceiling over SAM can be read off this machine:
    SAM = 2 x (fwd + bwd); ESAM = (fwd + bwd with 1 - beta of the tensors skipping their weight
    gradient) + no-grad fwd at w + eps (the data selection) + fwd + bwd on gamma of the batch."""
    model, _ = build("sgd", width)
    params = list(model.parameters())
    n = x.shape[0]
    sub = max(1, round(gamma * n))
    g = torch.Generator().manual_seed(0)

    def fwd_bwd(rows: int, frozen=()):
        for p in frozen:
            p.requires_grad_(False)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[:rows]), y[:rows]).backward()
        for p in frozen:
            p.requires_grad_(True)

    def swp():
        keep = (torch.rand(len(params), generator=g) < beta).tolist()
        fwd_bwd(n, [p for p, k in zip(params, keep) if not k])

    def no_grad_fwd():
        with torch.no_grad():
            model(x)

    parts = {"fwd_bwd": lambda: fwd_bwd(n), "fwd_bwd_swp": swp, "fwd_no_grad": no_grad_fwd,
             "fwd_bwd_subset": lambda: fwd_bwd(sub)}
    times: dict[str, list[float]] = {k: [] for k in parts}
    for f in parts.values():
        f()
    for _ in range(rounds):
        for k, f in parts.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    sam = 2 * ms["fwd_bwd"]
    esam = ms["fwd_bwd_swp"] + ms["fwd_no_grad"] + ms["fwd_bwd_subset"]
    return {**{f"{k}_ms": round(v, 1) for k, v in ms.items()}, "sam_model_ms": round(sam, 1),
            "esam_model_ms": round(esam, 1), "esam_ceiling_over_sam": round(sam / esam, 3)}


def state_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for s in state.values() for t in s.values() if torch.is_tensor(t))




def _flags(args, parser) -> str:
    """The options given that differ from their defaults, as typed: the command that made the file."""
    changed = [(k, v) for k, v in vars(args).items() if v != parser.get_default(k)]
    return "".join(f" --{k.replace('_', '-')} {v}" for k, v in changed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=4, help="steps timed per optimizer per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "step-cost-all")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    runs = {name: build(name, args.width) for name in METHODS}
    forwards = {name: [0, 0] for name in METHODS}  # forward passes, and the rows they ran
    for name, (model, _) in runs.items():
        def count(_, inputs, n=forwards[name]):
            n[0] += 1
            n[1] += inputs[0].shape[0]
        model.register_forward_pre_hook(count)
    n_params = sum(p.numel() for p in runs["sgd"][0].parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in runs["sgd"][0].parameters())

    warm_up(runs, x, y, args.warmup)
    counted_from = {name: list(n) for name, n in forwards.items()}
    sam_from = {name: getattr(opt, "sam_steps", 0) for name, (_, opt) in runs.items()}
    median = interleaved_medians(runs, x, y, args.rounds, args.steps)
    timed_steps = args.rounds * args.steps
    passes = {name: (forwards[name][0] - counted_from[name][0]) / timed_steps for name in METHODS}
    # m-sharpness runs its passes group by group: 8 forwards of 32 rows do the work of 2 of the batch
    batches = {name: (forwards[name][1] - counted_from[name][1]) / (timed_steps * args.batch) for name in METHODS}
    sam_share = {name: (getattr(opt, "sam_steps", 0) - sam_from[name]) / timed_steps for name, (_, opt) in runs.items()}

    # SSAM-F's refresh: Fisher from 128 samples + global top-k
    model, opt = runs["ssam-f"]
    fisher_data = [(x, y)]
    opt.update_mask(model, fisher_data)  # warm-up (vmap tracing)
    refresh = []
    for _ in range(max(3, args.rounds // 3)):
        start = time.perf_counter()
        opt.update_mask(model, fisher_data)
        refresh.append(time.perf_counter() - start)
    refresh_s = statistics.median(refresh)

    ceiling = esam_cost_model(x, y, args.width, max(5, args.rounds))

    sgd = median["sgd"]
    rows = []
    for name in METHODS:
        _, opt = runs[name]
        wrapper = opt if isinstance(opt, flatlab.SharpnessAware) else None
        own = state_bytes(wrapper.state) if wrapper else 0  # backups and masks, per parameter
        own += sum(t.numel() * t.element_size() for t in getattr(opt, "held_between_steps", ()))
        base = state_bytes(wrapper.base.state if wrapper else opt.state)
        rows.append(
            {
                "optimizer": name,
                "step_ms": round(median[name] * 1e3, 2),
                "ratio_to_sgd": round(median[name] / sgd, 3),
                "ratio_to_sam": round(median[name] / median["sam"], 3),
                "passes_per_step": round(passes[name], 3),
                "batches_forwarded_per_step": round(batches[name], 3),
                "sam_steps_per_step": round(sam_share[name], 3),
                "extra_state_over_params": round(own / param_bytes, 3),
                "base_state_over_params": round(base / param_bytes, 3),
                "hyper_parameters": METHODS[name],
            }
        )
    result = {
        "benchmark": "step_cost",
        "command": "python benchmarks/step_cost.py" + _flags(args, parser),
        "model": f"resnet18 width {args.width} ({n_params / 1e6:.2f}M params, BatchNorm)",
        "batch": args.batch,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "flatlab": flatlab.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "rows": rows,
        "fisher_refresh_128_samples_ms": round(refresh_s * 1e3, 1),
        "fisher_refresh_in_sgd_steps": round(refresh_s / sgd, 2),
        "esam_speedup_over_sam": round(median["sam"] / median["esam"], 3),
        "esam_cost_model": ceiling,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Step cost ({result['model']}, batch {args.batch}, CPU, {result['threads']} threads)",
        "",
        f"Command: `{result['command']}`; median of {args.rounds} interleaved rounds of {args.steps} steps.",
        "",
        "| optimizer | step (ms) | x SGD | x SAM | passes / step | batches forwarded / step | extra state / params "
        "| base state / params |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['optimizer']} | {r['step_ms']} | {r['ratio_to_sgd']} | {r['ratio_to_sam']} | "
            f"{r['passes_per_step']} | {r['batches_forwarded_per_step']} | "
            f"{r['extra_state_over_params']} | {r['base_state_over_params']} |"
        )
    lines += [
        "",
        f"ESAM speed-up over SAM: {result['esam_speedup_over_sam']}x. "
        f"SSAM-F Fisher refresh (128 samples): {result['fisher_refresh_128_samples_ms']} ms = "
        f"{result['fisher_refresh_in_sgd_steps']} SGD steps.",
        "",
        "ESAM's ceiling on this machine, from its passes timed alone (ms): fwd+bwd "
        f"{ceiling['fwd_bwd_ms']}, fwd+bwd with 40% of tensors skipping the weight gradient "
        f"{ceiling['fwd_bwd_swp_ms']}, no-grad fwd {ceiling['fwd_no_grad_ms']}, fwd+bwd on half the batch "
        f"{ceiling['fwd_bwd_subset_ms']}: SAM {ceiling['sam_model_ms']} vs ESAM {ceiling['esam_model_ms']}, "
        f"a ceiling of {ceiling['esam_ceiling_over_sam']}x.",
        "",
    ]
    (args.out / "step_cost.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
