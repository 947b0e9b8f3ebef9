"""GPU check: what CPU runs cannot measure, in one command of at most 8 minutes on one H100/H200.

1. training: ResNet-18 (11.2M parameters) on the full CIFAR-10 with `flatlab.train.train`, the loop
   of `flatlab train` (the data one uint8 tensor on the GPU, flip + 4-pixel padded crop on the whole
   batch, bf16 autocast, channels-last), batch 512, SGD momentum 0.9, lr 0.2 with a one-epoch
   linear warm-up then cosine to 0 (a one-cycle shape), for SGD, SAM, ESAM (beta 0.6, gamma 0.5),
   AE-SAM and S2-SAM (rho 0.05). Per method: images/s of training alone (evaluation excluded,
   CUDA-synchronised, the mean over epochs 2.., the first being a warm-up) as a ratio to SGD in
   the same run, and test top-1.
2. amp: two steps of SAM and S2-SAM under bf16 autocast, and under fp16 with a GradScaler through
   ``opt.step(flatlab.per_sample(fn), scaler=scaler)``, against the same steps in strict fp32 (TF32
   off) from the same weights on the same batches: the relative L2 error of the weight update at
   most AMP_SLACK (3) times that of torch's plain SGD step under the same precision (see below why
   not a fixed number); and an fp16 step whose gradients overflow (loss scale 2^100) is skipped
   exactly: weights and the base optimizer's state bit-identical, the scale backed off, and the
   next step trains.
3. memory: `flatlab.analysis.peak_memory` (CUDA's allocator counters) for SGD, SAM and S2-SAM, in
   copies of the parameters: what each holds between steps above SGD (must be its own optimizer
   state and, for S2-SAM, its pending directions, nothing else), and a step's transient peak above
   SGD's.
4. compile: SAM and S2-SAM steps with the model compiled (``torch.compile``, inductor) as close
   to exact (the same steps in float64) as eager steps are in strict fp32 (at most COMPILE_SLACK
   (3) times eager's distance), and their speed compiled over eager (in PyTorch's default fp32,
   TF32 convolutions).
5. syncs: host synchronisations per step of SGD, SAM, AE-SAM and S2-SAM (CUDA's sync debug
   mode), a measurement: a step that reads a value on the host keeps the CPU from queueing the
   next step while the GPU works (S2-SAM ran at 0.83x SGD's speed on an H200 against 1.01x SGD's
   step time on the CPU).

Each check is recorded with its numbers; the script writes benchmarks/results/gpu_check.{json,md}
after every part (a run stopped by a time limit keeps what it measured), and exits with status 1
if a check failed or a part raised.

Sizing (no GPU was at hand to time it, so this is an estimate; every part's seconds are in the
JSON, to size it again from): assuming an H100/H200 trains this ResNet-18 at about 20k images/s in
bf16 at batch 512 (an epoch of SGD in about 2.5 s), SGD + SAM (2 passes per step) + ESAM (about
1.6) + AE-SAM (1 + its share of SAM steps) + S2-SAM (1.1) cost about 7 SGD epochs per epoch, so 6
epochs take about 2 minutes (4 if the assumption is 2x too fast), evaluation and checkpoints
seconds. Compiling ResNet-18 (forward + backward, with and without BatchNorm statistics) takes one
to two minutes, decoding the JPEG copy of CIFAR-10 once about 20 s, parts 2-3 seconds. Run it with
a limit (e.g. `timeout 560`): the results of the parts done are written as each ends.

    python benchmarks/gpu_check.py --data-root ../shared/data    # results/gpu_check.{json,md}
    python benchmarks/gpu_check.py --dry-run                     # every part on the CPU, tiny (< 1 min)

--data-root: a folder holding cifar-10-batches-py/ (the python format) or cifar10-jpeg.tar.gz (the
JPEG copy, see ../shared/data/README.md), or either of those itself, or an image folder with
train/ and test/.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import interleaved_medians, train_step

import flatlab
from flatlab.analysis import peak_memory, state_bytes
from flatlab.data import ImageArrays, load_dataset, normalize, register_dataset, unregister_dataset
from flatlab.errors import UsageError
from flatlab.fileio import atomic_write_json, atomic_write_text
from flatlab.models import create_model
from flatlab.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
DEFAULT_DATA = REPO.parent / "shared" / "data"
SYNTHETIC = "gpu-check-synthetic"  # the dry run's CIFAR-shaped random images

METHODS = {
    "sgd": {},
    "sam": dict(rho=0.05),
    "esam": dict(rho=0.05, beta=0.6, gamma=0.5),
    "aesam": dict(rho=0.05),
    "s2sam": dict(rho=0.05),
}
PARTS = ("amp", "memory", "syncs", "compile", "training")
# ESAM's two halves alone, for part 1 only (--methods): where its under-fit comes from
HALVES = {
    "esam-swp": ("esam", dict(rho=0.05, beta=0.6, gamma=1.0)),
    "esam-sds": ("esam", dict(rho=0.05, beta=1.0, gamma=0.5)),
}
# Half precision rounds every activation and gradient (bf16 keeps 8 bits of mantissa, fp16 11),
# and the gradient of a batch is a sum of per-sample gradients that largely cancel, so a step's
# relative error is large and depends on the model, batch and kernels: ResNet-18 at init on
# CIFAR-10, bf16 on the CPU, two steps: SGD 0.086 / SAM 0.125 / S2-SAM 0.086 at batch 32, 0.051 /
# 0.075 / 0.051 at batch 128 (SAM's two passes each add their rounding). So a SAM-family step is
# held to AMP_SLACK times the error of torch's plain SGD step under the same precision from the
# same weights on the same batches; a fault in the loss scaling is far outside it (a gradient left
# scaled is off by the scale, a skipped step by 1.0). Compiled and eager fp32 differ in the order
# of sums alone, judged the same way against float64 (see check_compile).
AMP_SLACK = 3.0
COMPILE_SLACK = 3.0
COMPILE_FLOOR = 1e-12  # bit-identical compiled and eager runs (the eager backend) are equally far
OVERFLOW_SCALE = 2.0**100  # scaled gradients beyond fp16's range (65504), whatever the batch
FP16_INIT_SCALE = 2.0**12  # room below fp16's range: the compared steps must not be skipped
STEP_PEAK_LIMIT = 0.5  # copies of the parameters a step may hold at its peak beyond SGD's
HELD_SLACK = 0.1  # copies between "held above SGD" and the optimizer's own state (allocator rounding)


@dataclass(frozen=True)
class Sizes:
    width: float  # ResNet-18 channel multiplier
    epochs: int
    batch: int  # training batch (part 1)
    step_batch: int  # the batches of parts 2-4
    timed_rounds: int  # part 4: interleaved rounds of timed_steps steps
    timed_steps: int
    min_top1: float | None  # every method must reach this test top-1 in part 1


GPU = Sizes(width=1.0, epochs=6, batch=512, step_batch=256, timed_rounds=5, timed_steps=4, min_top1=0.5)
DRY = Sizes(width=0.125, epochs=2, batch=64, step_batch=16, timed_rounds=1, timed_steps=1, min_top1=None)


# ---------------------------------------------------------------------------------------------------
# shared pieces


def check(name: str, passed: bool, value, limit, detail: str = "") -> dict:
    return {"check": name, "passed": bool(passed), "value": value, "limit": limit, "detail": detail}


def make_model(width: float, device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=10, width=width).to(device)


def make_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    seeded = {} if name == "sgd" else {"seed": 0}  # equal draws in runs that are compared
    return flatlab.create_optimizer(name, model, lr=0.05, momentum=0.9, weight_decay=5e-4, **METHODS[name],
                                    **seeded)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def strict_fp32():
    """fp32 convolutions without TF32 (10-bit mantissa), for the steps compared. Matrix products
    are fp32 by PyTorch's default; their flag is left alone, since torch.compile may guard on it
    (a flip would recompile), while cuDNN's is read at each call."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def amp_step(model, opt, x, y, amp: str = "none", scaler=None):
    """One step as `flatlab train` takes it: the forward under autocast, the loss in float32. A
    SAM-family optimizer gets per-sample losses and the scaler (it scales each backward and skips
    the step on overflow); a plain one the usual scaled backward, ``scaler.step``, ``update``."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def losses(idx):
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            out = model(xb)
        return F.cross_entropy(out.float(), yb, reduction="none")

    if isinstance(opt, flatlab.SharpnessAware):
        return opt.step(flatlab.per_sample(losses), scaler=scaler)
    opt.zero_grad(set_to_none=True)
    loss = losses(None).mean()
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return loss


def two_steps(start, name: str, batches, amp: str):
    """The weight update of two steps of ``name`` from a copy of ``start``, and the scaler."""
    model = copy.deepcopy(start)
    opt = make_optimizer(name, model)
    device = batches[0][0].device.type
    scaler = torch.amp.GradScaler(device, init_scale=FP16_INIT_SCALE) if amp == "fp16" else None
    before = params_of(model)
    for x, y in batches[:2]:
        amp_step(model, opt, x, y, amp, scaler)
    return update(model, before), scaler


def params_of(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    diff = sum(float((g.double() - w.double()).square().sum()) for g, w in zip(got, want))
    norm = sum(float(w.double().square().sum()) for w in want)
    return math.sqrt(diff / norm) if norm > 0 else math.inf


def update(model, before: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach() - b for p, b in zip(model.parameters(), before)]


def fp16_skip_reason(device: torch.device) -> str | None:
    """Why fp16 with a GradScaler cannot run here (None: it can)."""
    if device.type == "cuda":
        return None
    try:
        torch.amp.GradScaler(device.type)
        conv = torch.nn.Conv2d(3, 4, 3)
        with torch.autocast(device.type, dtype=torch.float16):
            conv(torch.randn(1, 3, 8, 8)).float().sum().backward()
    except (RuntimeError, AttributeError, TypeError, ValueError) as err:
        return f"fp16 autocast with a GradScaler on {device.type} is not supported by torch {torch.__version__}: {err}"
    return None


def sample_batches(arrays: ImageArrays, count: int, size: int, device: torch.device):
    """The first ``count * size`` training images, normalised, un-augmented, as ``count`` batches."""
    mean, std = arrays.mean_std()
    x = normalize(arrays.train_images[: count * size].to(device), mean, std)
    y = arrays.train_labels[: count * size].to(device)
    return list(zip(x.split(size), y.split(size)))


# ---------------------------------------------------------------------------------------------------
# the four parts


def check_amp(batches, width: float, device: torch.device) -> dict:
    """bf16 / fp16 steps of SAM and S2-SAM against strict fp32, and an overflowing fp16 step."""
    skipped = {}
    precisions = ["bf16", "fp16"]
    reason = fp16_skip_reason(device)
    if reason:
        precisions.remove("fp16")
        skipped["fp16"] = reason
    start = make_model(width, device)
    with strict_fp32():
        reference = {name: two_steps(start, name, batches, "none")[0] for name in ("sgd", "sam", "s2sam")}
    rows, checks = [], []
    for amp in precisions:
        # what the precision itself costs: torch's SGD, the plain autocast + GradScaler recipe
        baseline = relative_error(two_steps(start, "sgd", batches, amp)[0], reference["sgd"])
        limit = AMP_SLACK * baseline
        rows.append({"optimizer": "sgd", "precision": amp, "relative_error": baseline, "limit": None,
                     "loss_scale_after": None})
        for name in ("sam", "s2sam"):
            got, scaler = two_steps(start, name, batches, amp)
            error = relative_error(got, reference[name])
            rows.append({"optimizer": name, "precision": amp, "relative_error": error, "limit": limit,
                         "loss_scale_after": None if scaler is None else scaler.get_scale()})
            checks.append(check(f"amp: {name} {amp} steps = fp32 steps", error <= limit, error, limit,
                                f"relative L2 error of the 2-step update; limit {AMP_SLACK} x SGD's under {amp}"))
    if "fp16" in precisions:
        for name in ("sam", "s2sam"):
            overflow = overflow_step(start, name, batches, device)
            rows.append({"optimizer": name, "precision": "fp16 overflow", **overflow})
            passed = overflow["weights_unchanged"] and overflow["base_state_unchanged"] and overflow[
                "scale_backed_off"] and overflow["next_step_trains"]
            checks.append(check(f"amp: {name} fp16 overflow skipped exactly", passed, overflow["scale_after"],
                                overflow["scale_before"] * overflow["backoff_factor"],
                                "weights and base state bit-identical, scale x backoff, next step trains"))
    return {"rows": rows, "checks": checks, "skipped": skipped}


def overflow_step(start, name: str, batches, device: torch.device) -> dict:
    """A normal fp16 step (momentum exists, S2-SAM's perturbation is pending), then one at loss
    scale 2^100, whose scaled gradients overflow fp16, then one at a normal scale again."""
    model = copy.deepcopy(start)
    opt = make_optimizer(name, model)
    scaler = torch.amp.GradScaler(device.type, init_scale=FP16_INIT_SCALE)
    (x0, y0), (x1, y1) = batches[:2]
    amp_step(model, opt, x0, y0, "fp16", scaler)
    weights = params_of(model)
    base_state = {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                  for p, s in opt.base.state.items()}
    scaler.update(OVERFLOW_SCALE)
    amp_step(model, opt, x1, y1, "fp16", scaler)
    weights_unchanged = all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    base_unchanged = len(opt.base.state) == len(base_state) and all(
        torch.equal(opt.base.state[p][k], v) for p, s in base_state.items() for k, v in s.items())
    scale_after = scaler.get_scale()
    scaler.update(FP16_INIT_SCALE)
    error = None
    try:
        amp_step(model, opt, x1, y1, "fp16", scaler)
    except RuntimeError as err:  # e.g. an optimizer left half-way through the skipped step
        error = f"{type(err).__name__}: {err}"
    moved = [p.detach() for p in model.parameters()]
    trains = error is None and all(bool(torch.isfinite(p).all()) for p in moved) and any(
        not torch.equal(p, w) for p, w in zip(moved, weights))
    return {"scale_before": OVERFLOW_SCALE, "scale_after": scale_after, "backoff_factor": scaler.get_backoff_factor(),
            "weights_unchanged": weights_unchanged, "base_state_unchanged": base_unchanged,
            "scale_backed_off": scale_after == OVERFLOW_SCALE * scaler.get_backoff_factor(),
            "next_step_trains": trains, "next_step_error": error}


def check_memory(batch, width: float, device: torch.device) -> dict:
    """Bytes held between steps and a step's transient peak, above SGD's, in parameter copies."""
    x, y = batch

    def build_and_warm(name):
        model = make_model(width, device)
        opt = make_optimizer(name, model)
        for _ in range(2):
            train_step(model, opt, x, y)
        # freed now so that the measured step starts without gradients (the CPU profiler cannot see
        # the free of a block allocated before it started)
        opt.zero_grad(set_to_none=True)
        return model, opt

    # a first run, so that first-use allocations that stay (cuBLAS workspaces) are out of the numbers
    model, _ = build_and_warm("sgd")
    copy_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del model, _
    gc.collect()
    measured = {}
    for name in ("sgd", "sam", "s2sam"):
        built = []
        held = peak_memory(lambda n=name, b=built: b.append(build_and_warm(n)), device).retained
        model, opt = built.pop()
        step = peak_memory(lambda m=model, o=opt: train_step(m, o, x, y), device).peak
        own = state_bytes(opt) if isinstance(opt, flatlab.SharpnessAware) else 0
        # a single-pass method also holds its pending directions between steps (the gradient
        # memory SGD's loop frees at zero_grad, released at the next forward)
        own += sum(t.numel() * t.element_size() for t in getattr(opt, "pending_directions", ()))
        measured[name] = (held, step, own)
        del model, opt
        gc.collect()  # S2-SAM's forward hook makes a cycle (model -> hook -> optimizer -> model)
    rows, checks = [], []
    sgd_held, sgd_step, _ = measured["sgd"]
    for name, (held, step, own) in measured.items():
        row = {"optimizer": name, "held_bytes": held, "step_peak_bytes": step, "own_state_bytes": own,
               "held_above_sgd_copies": round((held - sgd_held) / copy_bytes, 3),
               "own_state_copies": round(own / copy_bytes, 3),
               "step_peak_above_sgd_copies": round((step - sgd_step) / copy_bytes, 3),
               "total_peak_above_sgd_copies": round((held + step - sgd_held - sgd_step) / copy_bytes, 3)}
        rows.append(row)
        if name == "sgd":
            continue
        gap = row["held_above_sgd_copies"] - row["own_state_copies"]
        checks.append(check(f"memory: {name} holds its own state and nothing else", abs(gap) <= HELD_SLACK,
                            round(gap, 3), HELD_SLACK, "held above SGD minus own state, parameter copies"))
        above = row["step_peak_above_sgd_copies"]
        checks.append(check(f"memory: {name} step peak above SGD's", above <= STEP_PEAK_LIMIT, above, STEP_PEAK_LIMIT,
                            "parameter copies"))
    return {"parameter_copy_bytes": copy_bytes, "batch": int(x.shape[0]), "rows": rows, "checks": checks}


def check_compile(batches, width: float, device: torch.device, backend: str, rounds: int, steps: int) -> dict:
    """Compiled against eager steps of SAM and S2-SAM: as close to exact steps as eager ones are,
    and their speed.

    Exact here is the same two steps in float64 (eager). A compiled model sums in another order
    than the eager one, so the two fp32 runs differ by rounding, and a SAM step amplifies that: its
    perturbation follows the normalised gradient and its descent gradient is taken at w + eps (on
    an H200, SAM's compiled and eager updates differed by 2.7e-3, S2-SAM's by 2.4e-4). So the
    compiled fp32 update is held to COMPILE_SLACK times the eager fp32 update's distance from the
    float64 one; a compiled step that missed the perturbation or read stale weights is off by the
    size of the perturbation's effect, far outside.
    """
    runs, rows, checks = {}, [], []
    for name in ("sam", "s2sam"):
        start = make_model(width, device)
        eager = copy.deepcopy(start)
        raw = copy.deepcopy(start)
        exact = copy.deepcopy(start).double()
        # as `flatlab train` does: the optimizer gets the module, the steps call the compiled one
        compiled = torch.compile(raw, backend=backend)
        eager_opt, compiled_opt, exact_opt = (make_optimizer(name, m) for m in (eager, raw, exact))
        before = params_of(start)
        with strict_fp32():
            for x, y in batches[:2]:
                train_step(eager, eager_opt, x, y)
                train_step(exact, exact_opt, x.double(), y)
            synchronize(device)
            t0 = time.perf_counter()
            for x, y in batches[:2]:
                train_step(compiled, compiled_opt, x, y)
            synchronize(device)
            first_steps_s = time.perf_counter() - t0
        want = update(exact, [b.double() for b in before])
        compiled_update, eager_update = update(raw, before), update(eager, before)
        compiled_error = relative_error(compiled_update, want)
        eager_error = relative_error(eager_update, want)
        limit = COMPILE_SLACK * eager_error + COMPILE_FLOOR
        rows.append({"optimizer": name, "relative_error": relative_error(compiled_update, eager_update),
                     "compiled_error_vs_fp64": compiled_error, "eager_error_vs_fp64": eager_error, "limit": limit,
                     "first_two_steps_s": round(first_steps_s, 1)})
        checks.append(check(f"compile: {name} steps as exact as eager steps", compiled_error <= limit, compiled_error,
                            limit, f"relative L2 error of the 2-step fp32 update from float64 ({backend}); limit "
                                   f"{COMPILE_SLACK} x eager's"))
        runs[f"{name}-eager"] = (eager, eager_opt)
        runs[f"{name}-compiled"] = (compiled, compiled_opt)
        del exact, exact_opt
    x, y = batches[0]
    for model, opt in runs.values():  # any recompile for the default precision happens here
        train_step(model, opt, x, y)
    median = interleaved_medians(runs, x, y, rounds, steps)
    for row in rows:
        name = row["optimizer"]
        row["eager_step_ms"] = round(median[f"{name}-eager"] * 1e3, 2)
        row["compiled_step_ms"] = round(median[f"{name}-compiled"] * 1e3, 2)
        row["compiled_speed_vs_eager"] = round(median[f"{name}-eager"] / median[f"{name}-compiled"], 3)
    return {"backend": backend, "batch": int(x.shape[0]), "rows": rows, "checks": checks}


def count_syncs(batch, width: float, device: torch.device, steps: int = 3) -> dict:
    """Host synchronisations per step (CUDA's sync debug mode): a step that reads a value on the
    host (a norm, a flag) makes the CPU wait for the GPU before it can queue the next step's
    kernels, which SGD's step never does. A measurement, not a check."""
    if device.type != "cuda":
        return {"rows": [], "checks": [], "skipped": "CUDA only: the sync debug mode watches CUDA streams"}
    x, y = batch
    rows = []
    for name in ("sgd", "sam", "aesam", "s2sam"):
        model = make_model(width, device)
        opt = make_optimizer(name, model)
        train_step(model, opt, x, y)  # first-use work (state, workspaces) out of the count
        synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    train_step(model, opt, x, y)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        # where each was called from (the message is the same for all)
        syncs = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()]
        rows.append({"optimizer": name, "syncs_per_step": len(syncs) / steps, "calls": sorted(set(syncs))})
        del model, opt
        gc.collect()
    return {"steps": steps, "batch": int(x.shape[0]), "rows": rows, "checks": []}


def check_training(dataset: str, root: str | None, sizes: Sizes, device: torch.device, amp: str, runs: str,
                   methods: list[str]) -> dict:
    """Each method trained by `flatlab train`'s loop; images/s and test top-1."""
    rows = []
    for name in methods:
        optimizer, options = HALVES.get(name, (name, METHODS.get(name)))
        config = TrainConfig(
            dataset=dataset, data_root=root, model="resnet18", width=sizes.width, optimizer=optimizer,
            epochs=sizes.epochs, batch_size=sizes.batch, lr=0.2, lr_schedule="cosine",
            warmup_epochs=min(1, sizes.epochs - 1), eval_every=sizes.epochs, amp=amp,
            channels_last=device.type == "cuda", device=str(device), out=runs, name=name, **options,
        )
        result = train(config, log=lambda line: print(f"  {line}", flush=True), progress=False)
        epochs = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        timed = epochs[1:] or epochs
        rows.append({"optimizer": name,
                     "images_per_s": round(statistics.fmean(e["images_per_s"] for e in timed), 1),
                     "epoch_s": round(statistics.fmean(e["train_time_s"] for e in timed), 2),
                     "test_top1": result.summary["final_test_top1"],
                     "final_train_loss": result.summary["final_train_loss"],
                     "sam_steps_per_step": result.summary.get("sam_steps_per_step"),
                     "hyper_parameters": options})
    sgd = rows[0]["images_per_s"]
    checks = []
    for row in rows:
        row["speed_vs_sgd"] = round(row["images_per_s"] / sgd, 3)
        if sizes.min_top1 is not None:
            checks.append(check(f"training: {row['optimizer']} learns", row["test_top1"] >= sizes.min_top1,
                                row["test_top1"], sizes.min_top1, f"test top-1 after {sizes.epochs} epochs"))
    return {"dataset": dataset, "data_root": root, "epochs": sizes.epochs, "batch": sizes.batch, "amp": amp,
            "timed_epochs": f"2..{sizes.epochs}" if sizes.epochs > 1 else "1", "rows": rows, "checks": checks}


# ---------------------------------------------------------------------------------------------------
# data, results


def cifar_source(root: Path) -> tuple[str, str]:
    """(dataset name, root) for `load_dataset` from what --data-root points at."""
    candidates = [(root, root)]
    if root.is_dir():
        jpeg = root / "cifar10-jpeg.tar.gz"
        candidates += [(root / "cifar-10-batches-py", root), (jpeg, jpeg)]
    for path, where in candidates:
        if path.name == "cifar-10-batches-py" and (path / "data_batch_1").is_file():
            return "cifar10", str(where)
        if path.is_file() and path.name.endswith((".tar", ".tar.gz", ".tgz")):
            return "imagefolder", str(where)
        if path.is_dir() and (path / "train").is_dir():
            return "imagefolder", str(where)
    raise UsageError(f"no CIFAR-10 at {root}: pass --data-root pointing at a folder holding cifar-10-batches-py/ or "
                     "cifar10-jpeg.tar.gz (see ../shared/data/README.md), or at an image folder with train/ and test/")


def synthetic_cifar(root=None, download=False) -> ImageArrays:
    g = torch.Generator().manual_seed(0)
    return ImageArrays(
        train_images=torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8, generator=g),
        train_labels=torch.randint(0, 10, (128,), generator=g),
        test_images=torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g),
        test_labels=torch.randint(0, 10, (64,), generator=g),
        classes=[str(i) for i in range(10)], name=SYNTHETIC,
    )


def write(result: dict, out: Path) -> None:
    result["checks"] = [c for part in result["parts"].values() for c in part.get("checks", [])]
    result["passed"] = all(c["passed"] for c in result["checks"])
    result["complete"] = list(result["parts"]) == result["parts_requested"]
    atomic_write_json(out / "gpu_check.json", result)
    atomic_write_text(out / "gpu_check.md", markdown(result))


def training_table(t: dict, width: float) -> list[str]:
    lines = [f"## Training: ResNet-18 width {width}, {t['dataset']}, {t['epochs']} epochs, batch {t['batch']}, "
             f"amp {t['amp']} (images/s over epochs {t['timed_epochs']})", "",
             "| optimizer | images/s | x SGD speed | epoch (s) | test top-1 | SAM steps / step |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in t["rows"]:
        share = "-" if r["sam_steps_per_step"] is None else round(r["sam_steps_per_step"], 3)
        lines.append(f"| {r['optimizer']} | {r['images_per_s']} | {r['speed_vs_sgd']} | {r['epoch_s']} | "
                     f"{100 * r['test_top1']:.2f}% | {share} |")
    return lines


def amp_table(a: dict) -> list[str]:
    lines = ["## Mixed precision: two steps against strict fp32 (relative L2 error of the weight update)", "",
             "| optimizer | precision | relative error | limit | loss scale after |", "|---|---|---:|---:|---:|"]
    for r in a["rows"]:
        if "relative_error" in r:
            limit = "-" if r["limit"] is None else f"{r['limit']:.2e}"
            scale = "-" if r["loss_scale_after"] is None else r["loss_scale_after"]
            lines.append(f"| {r['optimizer']} | {r['precision']} | {r['relative_error']:.2e} | {limit} | {scale} |")
        else:
            lines.append(f"| {r['optimizer']} | {r['precision']} | weights kept: {r['weights_unchanged']}, base "
                         f"state kept: {r['base_state_unchanged']}, next step trains: {r['next_step_trains']} | - | "
                         f"{r['scale_before']:g} -> {r['scale_after']:g} |")
    return lines + [f"\nSkipped: {k}: {v}" for k, v in a["skipped"].items()]


def memory_table(m: dict) -> list[str]:
    lines = [f"## Memory (batch {m['batch']}, one parameter copy = {m['parameter_copy_bytes'] / 2**20:.1f} MiB)", "",
             "| optimizer | held above SGD | own state | step peak above SGD | total peak above SGD |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['optimizer']} | {r['held_above_sgd_copies']} | {r['own_state_copies']} | "
              f"{r['step_peak_above_sgd_copies']} | {r['total_peak_above_sgd_copies']} |" for r in m["rows"]]
    return lines + ["", "In copies of the parameters; held: between steps, gradients freed."]


def compile_table(c: dict) -> list[str]:
    lines = [f"## torch.compile ({c['backend']}, batch {c['batch']})", "",
             "| optimizer | compiled vs eager | compiled vs float64 | eager vs float64 | first 2 steps (s) | "
             "eager step (ms) | compiled step (ms) | x eager speed |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['optimizer']} | {r['relative_error']:.2e} | {r['compiled_error_vs_fp64']:.2e} | "
              f"{r['eager_error_vs_fp64']:.2e} | {r['first_two_steps_s']} | {r['eager_step_ms']} | "
              f"{r['compiled_step_ms']} | {r['compiled_speed_vs_eager']} |" for r in c["rows"]]
    lines += ["", "Relative L2 distances of the 2-step weight update (strict fp32: TF32 off); float64 eager is exact."]
    return lines


def syncs_table(c: dict) -> list[str]:
    if "skipped" in c:
        return ["## Host synchronisations per step", "", f"Skipped: {c['skipped']}"]
    lines = [f"## Host synchronisations per step ({c['steps']} steps, batch {c['batch']})", "",
             "| optimizer | syncs / step | calls |", "|---|---:|---|"]
    return lines + [f"| {r['optimizer']} | {r['syncs_per_step']:g} | {'; '.join(r['calls']) or '-'} |"
                    for r in c["rows"]]


def markdown(result: dict) -> str:
    lines = [f"# GPU check ({result['device']}, torch {result['torch']})", "",
             f"Command: `{result['command']}`. Mode: {result['mode']}. "
             f"All checks passed: {'yes' if result['passed'] else 'NO'}"
             f"{'' if result['complete'] else ' (so far: the run stopped before all its parts)'}.", ""]
    tables = {"training": lambda t: training_table(t, result["sizes"]["width"]), "amp": amp_table,
              "memory": memory_table, "compile": compile_table, "syncs": syncs_table}
    for name, part in result["parts"].items():
        lines += (tables[name](part) if "error" not in part else [f"## {name}", "", f"Raised: {part['error']}"]) + [""]
    lines += ["## Checks", "", "| check | value | limit | passed |", "|---|---:|---:|---|"]
    lines += [f"| {c['check']} | {c['value']} | {c['limit']} | {'yes' if c['passed'] else 'NO'} |"
              for c in result["checks"]]
    lines += ["", "Seconds per part: " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every part on the CPU at tiny sizes (a test runs it)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA,
                        help="CIFAR-10: a folder holding cifar-10-batches-py/ or cifar10-jpeg.tar.gz, either of "
                             "those, or an image folder with train/ and test/ (default ../shared/data)")
    parser.add_argument("--epochs", type=int, default=None, help=f"part 1's epochs (default {GPU.epochs})")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None,
                        help="part 1's precision (default bf16 on the GPU, none in the dry run)")
    parser.add_argument("--parts", default=",".join(PARTS), help="which parts, in this order")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"part 1's methods, sgd first (the reference); also {', '.join(HALVES)}: ESAM's halves")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/results; the dry run: a new temporary folder)")
    args = parser.parse_args()
    sizes = DRY if args.dry_run else GPU
    if args.epochs is not None:
        sizes = Sizes(**{**asdict(sizes), "epochs": args.epochs})
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    try:
        if unknown:
            raise UsageError(f"unknown part(s) {', '.join(unknown)}; choose among {', '.join(PARTS)}")
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = sorted(set(methods) - set(METHODS) - set(HALVES))
        if bad or not methods or methods[0] != "sgd":
            known = ", ".join([*METHODS, *HALVES][1:])
            raise UsageError(f"--methods: sgd first, then any of {known}; got {args.methods}")
        if sizes.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {sizes.epochs}")
        if args.dry_run and args.out is not None and args.out.resolve() == RESULTS.resolve():
            raise UsageError(f"the dry run does not write over the committed results in {RESULTS}: pass another --out")
        if args.dry_run:
            device, backend, amp = torch.device("cpu"), "eager", args.amp or "none"
            dataset, root = SYNTHETIC, None
            unregister_dataset(SYNTHETIC)  # main() run again in one process
            register_dataset(SYNTHETIC, synthetic_cifar)
        else:
            dataset, root = cifar_source(args.data_root.expanduser().resolve())
            if not torch.cuda.is_available():
                raise UsageError("no CUDA device here: run on a GPU machine, or pass --dry-run for the CPU dry run")
            device, backend, amp = torch.device("cuda"), "inductor", args.amp or "bf16"
        arrays = load_dataset(dataset, root)
    except UsageError as err:
        raise SystemExit(f"error: {err}") from None
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-check-")) if args.dry_run else RESULTS)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    result = {
        "benchmark": "gpu_check",
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
        "mode": "dry-run (CPU, tiny)" if args.dry_run else "gpu",
        "device": device_name,
        "torch": torch.__version__,
        "flatlab": flatlab.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "sizes": asdict(sizes),
        "amp_slack": AMP_SLACK,
        "compile_slack": COMPILE_SLACK,
        "parts_requested": parts,
        "parts": {},
        "seconds": {},
    }
    batches = sample_batches(arrays, 2, sizes.step_batch, device)
    with tempfile.TemporaryDirectory() as runs:
        checks = {
            "amp": lambda: check_amp(batches, sizes.width, device),
            "memory": lambda: check_memory(batches[0], sizes.width, device),
            "compile": lambda: check_compile(batches, sizes.width, device, backend, sizes.timed_rounds,
                                             sizes.timed_steps),
            "training": lambda: check_training(dataset, root, sizes, device, amp, runs, methods),
            "syncs": lambda: count_syncs(batches[0], sizes.width, device),
        }
        for part in parts:
            print(f"{part} ...", flush=True)
            start = time.perf_counter()
            try:
                result["parts"][part] = checks[part]()
            except Exception as err:  # the other parts still run, and this one is reported
                traceback.print_exc()
                what = f"{type(err).__name__}: {err}"
                result["parts"][part] = {"error": what, "checks": [check(f"{part}: ran", False, None, None, what)]}
            result["seconds"][part] = round(time.perf_counter() - start, 1)
            torch._dynamo.reset()  # compiled graphs hold the compile part's models
            gc.collect()
            write(result, out)
    print(markdown(result))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    if not result["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
