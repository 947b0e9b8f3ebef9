"""A second regime: a small causal transformer language model on real text, AdamW against the SAM
family through flatlab's optimizers.

The text ships with every machine: the Python standard library's own top-level sources (the
`*.py` files directly under `sysconfig.get_paths()["stdlib"]`, in name order, concatenated), so
the Python version versions it, and each run records that version with the corpus's SHA-256.
Tokens are bytes (256 of them: no tokenizer to download). Training takes the corpus's first
`train_bytes`, validation its last `val_bytes` (other files: held-out text, not held-out
windows of the same files), both cut into non-overlapping windows of `seq_len` bytes. The model
is a pre-LayerNorm GPT (learned positions, tied input/output embedding, no dropout) trained for
many epochs on that small slice: the over-fitting regime in which SAM's gain is measured.

Every method wraps the same AdamW (`flatlab.create_optimizer(name, model, base="adamw")`, no
weight decay on biases and LayerNorms), warm-up then cosine to 0. A seed fixes the initialisation
and the data order, the same for every method, so the table pairs each method's validation loss
with AdamW's on the same seed. The loss of a sequence is the mean of its tokens' cross-entropies
(what `flatlab.per_sample` hands to the methods that select samples).

Step cost: every `shadow_every` steps a shadow copy of the model takes one AdamW step on the same
batch, inside the same run, so the method's mean step time over its training and AdamW's are
measured under the same load (the other run of `--jobs 2`, whatever else the machine does), and
a method that switches between SAM and plain steps (AE-SAM, RST) is priced at the share it took.

One JSON per finished run in the output folder (`<method>-seed<seed>.json`, written atomically);
a run whose JSON is there is not trained again, so the study resumes where it stopped. The table
(`results.md`, `results.json`) is written from those files after every invocation.

    python benchmarks/text_lm.py --jobs 2                  # the study -> results/text-lm/ (about 1 h, 2 cores)
    python benchmarks/text_lm.py --size tiny --out /tmp/t  # every part in seconds
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import sys
import sysconfig
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import flatlab
from flatlab.fileio import atomic_write_json, atomic_write_text
from flatlab.optim import is_base_optimizer, method_options
from flatlab.train.compare import format_mean_std, markdown_table, mean_std, paired_difference
from flatlab.train.environment import package_versions
from flatlab.train.schedule import create_scheduler

RESULTS = Path(__file__).parent / "results"
DEFAULT_OUT = RESULTS / "text-lm"
COMMAND = "python benchmarks/text_lm.py --jobs 2"

# name -> (registry entry, its options): the CPU studies' radius and the papers' settings; RST at
# p = 0.5 is the cheap method that kept half of SAM's gain for half its extra cost on the CNN
# frontier (docs/results.md)
METHODS: dict[str, tuple[str, dict]] = {
    "adamw": ("adamw", {}),
    "sam": ("sam", {"rho": 0.05}),
    "aesam": ("aesam", {"rho": 0.05, "delta": 0.9, "c_start": 1.0, "c_end": -1.0}),
    "wsam": ("wsam", {"rho": 0.05, "gamma": 0.9, "decoupled": True}),
    "s2sam": ("s2sam", {"rho": 0.05}),
    "rst": ("rst", {"rho": 0.05, "sam_probability": 0.5}),
}
REFERENCE = "adamw"


@dataclass(frozen=True)
class Setting:
    """Everything a run's numbers depend on besides the method, the seed and the corpus."""

    train_bytes: int
    val_bytes: int
    seq_len: int
    width: int
    layers: int
    heads: int
    batch_size: int
    epochs: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    eval_every: int  # epochs between validations (and the last epoch)
    shadow_every: int  # steps between the shadow AdamW's timed steps


SIZES = {
    # 16 KB of training text, 40 epochs: AdamW's validation loss is lowest near epoch 20 and rises
    # after it while the training loss keeps falling (the over-fitting regime); an AdamW run takes
    # about 2 min beside another on 2 cores
    "study": Setting(train_bytes=16384, val_bytes=32768, seq_len=128, width=128, layers=4, heads=4,
                     batch_size=16, epochs=40, lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=20,
                     eval_every=5, shadow_every=10),
    # every part of the study in seconds (tests, a first look)
    "tiny": Setting(train_bytes=2048, val_bytes=1024, seq_len=16, width=16, layers=1, heads=2, batch_size=8,
                    epochs=2, lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=2, eval_every=1,
                    shadow_every=4),
}


class UsageError(ValueError):
    """Bad input: main prints it as one `error:` line."""


# ------------------------------------------------------------------------------------------------
# the corpus


@dataclass(frozen=True)
class Corpus:
    data: bytes
    files: tuple[str, ...]
    root: str
    python: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def describe(self) -> dict:
        """What the text is (the folder it was read from is where, not what: it is recorded apart)."""
        return {"python": self.python, "files": len(self.files), "bytes": len(self.data), "sha256": self.sha256}


def load_corpus(root: str | os.PathLike | None = None) -> Corpus:
    """The `*.py` files directly under `root` (default: this Python's standard library), sorted by
    name, concatenated. Subfolders are left out: site-packages lives there and differs by machine.
    """
    folder = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    files = sorted((p for p in folder.glob("*.py") if p.is_file()), key=lambda p: p.name)
    if not files:
        raise UsageError(f"no .py files in {folder}; point --corpus at a folder of Python sources")
    return Corpus(b"".join(p.read_bytes() for p in files), tuple(p.name for p in files), str(folder),
                  platform.python_version())


def windows(text: bytes, seq_len: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows of `seq_len` bytes and, for each, the bytes that follow each of its
    bytes (the targets): two `[n, seq_len]` int64 tensors.
    """
    tokens = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    n = (len(tokens) - 1) // seq_len
    if n < 1:
        raise UsageError(f"{len(text)} bytes make no window of seq_len={seq_len}; use more bytes")
    return tokens[: n * seq_len].view(n, seq_len), tokens[1 : n * seq_len + 1].view(n, seq_len)


def split(corpus: Corpus, s: Setting) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Training windows from the corpus's first `train_bytes`, validation from its last `val_bytes`."""
    if s.train_bytes + s.val_bytes > len(corpus.data):
        raise UsageError(f"train_bytes + val_bytes = {s.train_bytes + s.val_bytes} exceed the corpus "
                         f"({len(corpus.data)} bytes in {len(corpus.files)} files)")
    train = windows(corpus.data[: s.train_bytes], s.seq_len)
    if len(train[0]) < s.batch_size:
        raise UsageError(f"{len(train[0])} training windows make no batch of {s.batch_size}; use more train_bytes")
    return train, windows(corpus.data[-s.val_bytes :], s.seq_len)


# ------------------------------------------------------------------------------------------------
# the model and its loss


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ByteLM(nn.Module):
    """A causal transformer over bytes: `[batch, seq]` int64 -> `[batch, seq, 256]` logits."""

    def __init__(self, seq_len: int, width: int, layers: int, heads: int, vocab: int = 256):
        super().__init__()
        if width % heads:
            raise UsageError(f"width={width} is not a multiple of heads={heads}")
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(seq_len, width))
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(layers)))
        self.ln = nn.LayerNorm(width)
        for m in self.modules():
            # GPT-2's scale: torch's default N(0, 1) embedding, tied to the head, starts with logits
            # in the tens
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        return self.ln(self.blocks(x)) @ self.tok.weight.T


def token_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """The cross-entropy of each token, `[batch, seq]`, in float32."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(targets.shape)


def sequence_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """A sequence's loss: the mean over its tokens (every sequence has `seq_len` of them, so the
    batch's mean is also the mean per token)."""
    return token_losses(logits, targets).mean(dim=1)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Tensor:
    """One step as a user writes it for any flatlab optimizer; returns the loss (at w for a
    two-pass method)."""
    if isinstance(opt, flatlab.SharpnessAware) and opt.needs_closure:
        def losses(idx):
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            return sequence_losses(model(xb), yb)

        return opt.step(flatlab.per_sample(losses, size=len(x))).detach()
    opt.zero_grad(set_to_none=True)
    loss = sequence_losses(model(x), y).mean()
    loss.backward()
    opt.step()
    return loss.detach()


@torch.no_grad()
def evaluate(model: nn.Module, data: tuple[Tensor, Tensor], batch_size: int) -> float:
    """The mean loss per token over `data`, in eval mode (at w, also for S2-SAM)."""
    model.eval()
    x, y = data
    total = sum(float(token_losses(model(x[i : i + batch_size]), y[i : i + batch_size]).sum())
                for i in range(0, len(x), batch_size))
    model.train()
    return total / y.numel()


# ------------------------------------------------------------------------------------------------
# one run


def make_optimizer(method: str, model: nn.Module, s: Setting, seed: int, total_steps: int, rho: float | None):
    name, options = METHODS[method]
    kwargs = dict(options, lr=s.lr, weight_decay=s.weight_decay, betas=s.betas, decay_norm_and_bias=False)
    if not is_base_optimizer(name):
        kwargs["seed"] = seed  # RST's draws: the same for a seed, not taken from torch's generator
        if rho is not None:
            kwargs["rho"] = rho
        if "total_steps" in method_options(name):
            kwargs["total_steps"] = total_steps  # AE-SAM's threshold goes from c_start to c_end over the run
    return flatlab.create_optimizer(name, model, base="adamw", **kwargs)


def run_key(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


def identity(s: Setting, method: str, seed: int, rho: float | None, corpus: Corpus) -> dict:
    """What a finished run's numbers depend on: a stored run is reused only where all of it matches."""
    name, options = METHODS[method]
    if rho is not None and not is_base_optimizer(name):
        options = {**options, "rho": rho}
    found = {"method": method, "optimizer": name, "base": "adamw", "options": options, "seed": seed,
             "setting": asdict(s), "corpus": corpus.describe()}
    return json.loads(json.dumps(found))  # as a stored run reads back (tuples as lists)


def train_run(s: Setting, method: str, seed: int, rho: float | None, corpus: Corpus, threads: int,
              log=print) -> dict:
    torch.set_num_threads(threads)
    train, val = split(corpus, s)
    steps_per_epoch = len(train[0]) // s.batch_size  # the last partial batch is left out: every step sees B windows
    total = steps_per_epoch * s.epochs
    torch.manual_seed(seed)
    model = ByteLM(s.seq_len, s.width, s.layers, s.heads)
    shadow = copy.deepcopy(model)
    opt = make_optimizer(method, model, s, seed, total, rho)
    shadow_opt = make_optimizer(REFERENCE, shadow, s, seed, total, None)
    scheduler = create_scheduler(opt, total, "cosine", s.warmup_steps, (), 0.1)
    order = torch.Generator().manual_seed(seed)
    step_s, shadow_s, shadow_steps, step = 0.0, 0.0, 0, 0
    curve = []
    started = time.perf_counter()
    for epoch in range(1, s.epochs + 1):
        perm = torch.randperm(len(train[0]), generator=order)
        train_loss = 0.0
        for b in range(steps_per_epoch):
            rows = perm[b * s.batch_size : (b + 1) * s.batch_size]
            x, y = train[0][rows], train[1][rows]
            t0 = time.perf_counter()
            loss = float(train_step(model, opt, x, y))
            step_s += time.perf_counter() - t0
            scheduler.step()
            if not math.isfinite(loss):
                raise RuntimeError(f"{run_key(method, seed)}: the training loss became {loss} at step {step + 1}")
            train_loss += loss
            step += 1
            if step % s.shadow_every == 0:
                t0 = time.perf_counter()
                train_step(shadow, shadow_opt, x, y)
                shadow_s += time.perf_counter() - t0
                shadow_steps += 1
        if epoch % s.eval_every == 0 or epoch == s.epochs:
            point = {"epoch": epoch, "step": step, "train_loss_running": train_loss / steps_per_epoch,
                     "train_loss": evaluate(model, train, s.batch_size),
                     "val_loss": evaluate(model, val, s.batch_size)}
            curve.append(point)
            log(f"[{run_key(method, seed)}] epoch {epoch}/{s.epochs}: train {point['train_loss']:.4f}, "
                f"val {point['val_loss']:.4f}")
    final = curve[-1]
    best = min(curve, key=lambda p: p["val_loss"])
    return {
        **identity(s, method, seed, rho, corpus),
        "steps": total,
        "train_windows": len(train[0]),
        "val_windows": len(val[0]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_val_loss": final["val_loss"],
        "final_val_perplexity": math.exp(final["val_loss"]),
        "final_train_loss": final["train_loss"],
        "best_val_loss": best["val_loss"],
        "best_val_epoch": best["epoch"],
        "sam_steps_per_step": opt.sam_fraction if isinstance(opt, flatlab.SharpnessAware) else 0.0,
        "step_s": step_s / total,
        "adamw_step_s": shadow_s / max(shadow_steps, 1),
        "step_time_x_adamw": (step_s / total) / (shadow_s / shadow_steps) if shadow_steps else math.nan,
        "wall_time_s": time.perf_counter() - started,
        "corpus_root": corpus.root,
        "threads": threads,
        "versions": {"python": platform.python_version(), "flatlab": flatlab.__version__,
                     **package_versions(("torch", "numpy"))},
        "curve": curve,
    }


def _worker(job: tuple) -> str:
    s, method, seed, rho, corpus, threads, out = job
    result = train_run(s, method, seed, rho, corpus, threads, log=lambda line: print(line, flush=True))
    path = out / f"{run_key(method, seed)}.json"
    atomic_write_json(path, strict(result))
    return f"{run_key(method, seed)}: val loss {result['final_val_loss']:.4f}, {result['wall_time_s']:.0f} s"


def stored(path: Path, expected: dict) -> dict | None:
    """The finished run at `path` if there is one; an error if it was made under another setting."""
    if not path.is_file():
        return None
    run = json.loads(path.read_text())
    for key, want in expected.items():
        had = run.get(key)
        if had == want:
            continue
        if isinstance(had, dict) and isinstance(want, dict):
            fields = sorted(k for k in set(had) | set(want) if had.get(k) != want.get(k))
            had, want = ({k: d.get(k) for k in fields} for d in (had, want))
        raise UsageError(f"{path} was trained with another {key} ({had} there, {want} now); "
                         "use another --out, or delete it to train it again")
    return run


# ------------------------------------------------------------------------------------------------
# the table


def summarise(runs: dict[str, list[dict]]) -> list[dict]:
    """One row per method from its runs (same seeds for every method)."""
    ref = {r["seed"]: r["final_val_loss"] for r in runs.get(REFERENCE, [])}
    rows = []
    for method, done in runs.items():
        losses = [r["final_val_loss"] for r in done]
        row = {"method": method, "seeds": [r["seed"] for r in done], "val_loss_per_seed": losses}
        row["val_loss_mean"], row["val_loss_std"] = mean_std(losses)
        row["val_perplexity_mean"], row["val_perplexity_std"] = mean_std([math.exp(v) for v in losses])
        row["best_val_loss_mean"] = mean_std([r["best_val_loss"] for r in done])[0]
        row["train_loss_mean"] = mean_std([r["final_train_loss"] for r in done])[0]
        row["sam_steps_per_step"] = mean_std([r["sam_steps_per_step"] for r in done])[0]
        row["step_time_x_adamw_mean"], row["step_time_x_adamw_std"] = mean_std([r["step_time_x_adamw"] for r in done])
        row["wall_time_s_mean"] = mean_std([r["wall_time_s"] for r in done])[0]
        paired = [(r["final_val_loss"], ref[r["seed"]]) for r in done if r["seed"] in ref]
        if method != REFERENCE and paired:
            d = paired_difference(*map(list, zip(*paired)))
            row["vs_adamw_per_seed"] = [a - b for a, b in paired]
            row["vs_adamw_mean"], row["vs_adamw_std"] = d["mean"], d["std"]
            row["vs_adamw_interval"] = [d["low"], d["high"]]
            row["lower_than_adamw"] = sum(a < b for a, b in paired)
            row["reading"] = "n < 2" if d["reading"] == "-" else d["reading"]
        rows.append(row)
    return rows


def _num(value: float, fmt: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, fmt)


def format_table(rows: list[dict]) -> str:
    headers = ["method", "val loss (nats/byte)", "val perplexity", "vs AdamW, paired", "95% interval", "lower / seeds",
               "reading", "best val loss", "train loss", "SAM steps / step", "step time x AdamW"]
    cells = []
    for r in rows:
        if "vs_adamw_mean" in r:
            low, high = r["vs_adamw_interval"]
            paired = [format_mean_std(r["vs_adamw_mean"], r["vs_adamw_std"], "+.4f", ".4f"),
                      "-" if math.isnan(low) else f"[{low:+.4f}, {high:+.4f}]",
                      f"{r['lower_than_adamw']}/{len(r['vs_adamw_per_seed'])}", r["reading"]]
        else:
            paired = ["(reference)" if r["method"] == REFERENCE else "-", "", "", ""]
        cells.append([r["method"], format_mean_std(r["val_loss_mean"], r["val_loss_std"], ".4f"),
                      format_mean_std(r["val_perplexity_mean"], r["val_perplexity_std"], ".3f"), *paired,
                      _num(r["best_val_loss_mean"], ".4f"), _num(r["train_loss_mean"], ".4f"),
                      _num(r["sam_steps_per_step"], ".2f"),
                      format_mean_std(r["step_time_x_adamw_mean"], r["step_time_x_adamw_std"], ".2f")])
    return markdown_table(headers, cells, "lrrrrrlrrrr")


def report(runs: dict[str, list[dict]], s: Setting, corpus: Corpus, size: str) -> tuple[str, dict]:
    rows = summarise(runs)
    first = next(r for done in runs.values() for r in done)
    c = corpus.describe()
    command = COMMAND if size == "study" else f"python benchmarks/text_lm.py --size {size} --out DIR"
    text = "\n".join([
        "# Text regime: a byte-level transformer LM on the Python standard library", "",
        f"Command: `{command}` (resumable: one JSON per finished run beside this table).", "",
        f"Corpus: the {c['files']} top-level `.py` files of Python {c['python']}'s standard library, in name order "
        f"({c['bytes']} bytes, SHA-256 `{c['sha256'][:16]}...`); training: its first {s.train_bytes} bytes "
        f"({first['train_windows']} windows of {s.seq_len}), validation: its last {s.val_bytes} "
        f"({first['val_windows']} windows).", "",
        f"Model: {s.layers} layers, width {s.width}, {s.heads} heads, {first['parameters']} parameters. "
        f"{s.epochs} epochs ({first['steps']} steps of {s.batch_size} windows), AdamW lr {s.lr:g}, betas "
        f"{tuple(s.betas)}, weight decay {s.weight_decay:g} (none on biases and LayerNorms), {s.warmup_steps} "
        f"warm-up steps then cosine to 0; every method wraps that AdamW. Seeds: "
        f"{', '.join(map(str, rows[0]['seeds']))}.", "",
        "Val loss: the mean cross-entropy per byte of the validation text after the last epoch, mean ± std over "
        "seeds (perplexity: exp of it, per seed). vs AdamW: the method's val loss minus AdamW's on the same seed "
        "(negative: lower, better), mean ± std, its 95% t interval and on how many seeds it was lower; "
        "reading: lower or higher where the interval excludes 0, else within noise. Best val loss: the lowest "
        f"of the validations every {s.eval_every} epochs. Step time x AdamW: the method's mean training step "
        f"over a shadow AdamW step taken every {s.shadow_every} steps on the same batch in the same run.", "",
        format_table(rows), ""])
    summary = {"command": command, "size": size, "setting": asdict(s), "corpus": c,
               "methods": {m: {"optimizer": METHODS[m][0], "options": done[0]["options"]} for m, done in runs.items()},
               "versions": first["versions"], "rows": rows}
    return text, summary


# ------------------------------------------------------------------------------------------------


def strict(value):
    """`value` with NaN as null: strict JSON (one seed has no std)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def parse_list(text: str, kind, choices=None) -> list:
    items = [kind(v) for v in text.split(",") if v.strip()]
    unknown = [v for v in items if choices is not None and v not in choices]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; choose among {', '.join(choices)}")
    return items


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="study")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rho", type=float, default=None, help="every method's radius (default: each its own)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time, one process each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--epochs", type=int, default=None, help="override the size's epochs (timing a short run)")
    parser.add_argument("--corpus", default=None, help="a folder of .py files (default: the standard library)")
    parser.add_argument("--out", type=Path, default=None, help=f"default: {DEFAULT_OUT} (the study size only)")
    args = parser.parse_args(argv)
    try:
        methods = parse_list(args.methods, str, list(METHODS))
        seeds = parse_list(args.seeds, int)
        if not methods or not seeds:
            raise UsageError("--methods and --seeds need at least one value each")
        s = SIZES[args.size] if args.epochs is None else replace(SIZES[args.size], epochs=args.epochs)
        if args.out is None and s != SIZES["study"]:
            raise UsageError(f"the committed results in {DEFAULT_OUT} are the study size's; pass --out DIR")
        out = args.out or DEFAULT_OUT
        corpus = load_corpus(args.corpus)
        split(corpus, s)  # a setting the corpus cannot hold fails here, not in a worker
        out.mkdir(parents=True, exist_ok=True)
        # seed-major, so that a study stopped early has every method on its first seeds
        grid = [(m, seed) for seed in seeds for m in methods]
        todo = [(m, seed) for m, seed in grid
                if stored(out / f"{run_key(m, seed)}.json", identity(s, m, seed, args.rho, corpus)) is None]
        print(f"{len(grid) - len(todo)} of {len(grid)} runs done; training {len(todo)}", flush=True)
        jobs = [(s, m, seed, args.rho, corpus, args.threads, out) for m, seed in todo]
        if args.jobs > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
                for line in pool.map(_worker, jobs):
                    print(line, flush=True)
        else:
            for job in jobs:
                print(_worker(job), flush=True)
        runs = {m: [json.loads((out / f"{run_key(m, seed)}.json").read_text()) for seed in seeds] for m in methods}
        text, summary = report(runs, s, corpus, args.size)
        atomic_write_text(out / "results.md", text)
        atomic_write_json(out / "results.json", strict(summary))
        print(text)
    except UsageError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
