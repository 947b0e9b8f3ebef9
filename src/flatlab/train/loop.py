"""One training step for any optimizer kind, one epoch, and evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis import evaluate as evaluate_batches
from ..errors import UsageError, check_number
from ..optim import SharpnessAware, micro_batches
from ..progress import Progress

__all__ = ["StepRunner", "EpochStats", "train_one_epoch", "evaluate", "TrainingDiverged", "TrainingInterrupted",
           "DIVERGED_LOSS"]


class TrainingDiverged(RuntimeError):
    """The training loss became inf or NaN, or exceeded `DIVERGED_LOSS`."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was saved and how to continue."""


# A mean cross-entropy this large means logits apart by thousands: the run has diverged even if no
# value is inf yet (an untrained model's loss is log(classes), under 7 for 1000 classes).
DIVERGED_LOSS = 1e4


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class StepRunner:
    """Takes one optimisation step on a batch, the way each kind of optimizer needs it.

    * a plain optimizer or a single-pass method (S2-SAM): forward, backward, `step()`;
    * a two-pass method: `step(per_sample(closure))` (the closure serves every variant, and
      ESAM's data selection needs per-sample losses), with `scaler=` under fp16.

    With `accumulate=N` each batch is split into N micro-batches (one graph alive at a time), and
    the step equals the step on the whole batch: a two-pass method steps on
    `flatlab.micro_batches`, a one-pass step accumulates N backwards (under DDP only the last
    one all-reduces).

    Returns the mean loss and the number of correct top-1 predictions of the pass at w.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        amp: str = "none",
        label_smoothing: float = 0.0,
        accumulate: int = 1,
    ):
        check_number("accumulate", accumulate, low=1, integer=True)
        self.accumulate = int(accumulate)
        self.model = model
        self.opt = optimizer
        self.device = device
        self.amp = amp
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.label_smoothing = label_smoothing
        self.two_pass = isinstance(optimizer, SharpnessAware) and optimizer.needs_closure

    def losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-sample cross-entropy (with the run's label smoothing), in float32."""
        return F.cross_entropy(outputs.float(), targets, reduction="none", label_smoothing=self.label_smoothing)

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One step on the batch `(x, y)`; returns its loss and number of correct predictions."""
        return self._closure(x, y) if self.two_pass else self._one_pass(x, y)

    def _micro(self, x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
        if self.accumulate > x.shape[0]:
            raise UsageError(f"accumulate={self.accumulate} micro-batches need at least as many samples per "
                             f"batch, got {x.shape[0]}")
        return list(zip(x.tensor_split(self.accumulate), y.tensor_split(self.accumulate)))

    def _one_pass(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        micro = self._micro(x, y)
        ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        total, hits = torch.zeros((), device=x.device), torch.zeros((), dtype=torch.int64, device=x.device)
        for i, (xb, yb) in enumerate(micro):
            last = i == len(micro) - 1
            with self.model.no_sync() if ddp and not last else nullcontext():
                with _autocast(self.device, self.amp):
                    out = self.model(xb)
                # each micro-batch weighs its share of the batch: the sum is the batch's mean loss
                loss = self.losses(out, yb).sum() / x.shape[0]
                self.scaler.scale(loss).backward()
            total = total + loss.detach()
            hits = hits + (out.argmax(1) == yb).sum()
        self.scaler.step(self.opt)
        self.scaler.update()
        return total, hits

    def _closure(self, x, y):
        # per micro-batch, the rows whose first pass (the one at w) was counted: the whole batch at
        # once, or group by group under m-sharpness
        seen: dict[int, Tensor] = {}
        hits = [torch.zeros((), dtype=torch.int64, device=x.device)]

        def losses(batch, idx):
            i, xb, yb = batch
            mask = seen.setdefault(i, torch.zeros(len(yb), dtype=torch.bool, device=yb.device))
            if idx is not None:
                xb, yb = xb[idx], yb[idx]
            with _autocast(self.device, self.amp):
                out = self.model(xb)
            new = ~mask if idx is None else ~mask[idx]
            hits[0] = hits[0] + ((out.argmax(1) == yb) & new).sum()  # no host sync: counted on the device
            mask[slice(None) if idx is None else idx] = True
            return self.losses(out, yb)

        micro = [(i, xb, yb) for i, (xb, yb) in enumerate(self._micro(x, y))]
        scaler = self.scaler if self.scaler.is_enabled() else None
        loss = self.opt.step(micro_batches(micro, losses, sizes=[b[1].shape[0] for b in micro]), scaler=scaler)
        return loss.detach(), hits[0]

    def state_dict(self) -> dict:
        """The GradScaler's state."""
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restores the GradScaler's state."""
        self.scaler.load_state_dict(state["scaler"])


@dataclass
class EpochStats:
    """Training loss, accuracy, images and seconds of one epoch."""

    loss: float
    accuracy: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        """Training throughput of the epoch."""
        return self.images / max(self.seconds, 1e-9)


def train_one_epoch(
    runner: StepRunner,
    loader,
    *,
    before_step: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
    desc: str = "train",
    progress: bool | None = None,
    check_every: int = 10,
) -> EpochStats:
    """Trains over `loader` once.

    The loss is checked for inf/NaN every `check_every` steps and at the end (a host sync per check, not per step).
    """
    runner.model.train()
    total_loss = torch.zeros((), dtype=torch.float64, device=runner.device)
    correct = torch.zeros((), dtype=torch.int64, device=runner.device)
    images = 0
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    start = time.perf_counter()
    bar = Progress(len(loader), desc, enabled=progress)  # its clock starts with the loop
    try:
        for i, (x, y) in enumerate(loader):
            if before_step is not None:
                before_step()
            loss, hits = runner(x, y)
            if after_step is not None:
                after_step()
            total_loss += loss.double() * y.shape[0]
            correct += hits
            images += y.shape[0]
            fields = {}
            if (i + 1) % check_every == 0 or i + 1 == len(loader):
                mean = float(total_loss) / images
                last = float(loss)
                if not (math.isfinite(last) and math.isfinite(mean)) or max(last, mean) > DIVERGED_LOSS:
                    what = "became" if not math.isfinite(last) else f"diverged (above {DIVERGED_LOSS:g}):"
                    raise TrainingDiverged(f"the training loss {what} {last:g} at step {i + 1} of {desc}")
                fields = {"loss": mean, "acc": 100.0 * float(correct) / images,
                          "img/s": images / (time.perf_counter() - start)}
            bar.update(1, **fields)  # the count every step; the numbers (a host sync) with the checks
    finally:
        bar.close()  # also on Ctrl-C, before the message
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    seconds = time.perf_counter() - start
    if images == 0:
        raise UsageError("the training loader gave no batch: batch_size is larger than the training set")
    return EpochStats(float(total_loss) / images, float(correct) / images, images, seconds)


def _float_cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(outputs.float(), targets)


def evaluate(model: nn.Module, loader, device: torch.device, amp: str = "none") -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 accuracy (top-k with k = min(5, classes)) on `loader`:
    `flatlab.analysis.evaluate` in eval mode, under `amp`, with the loss in float32.
    """
    was_training = model.training
    model.eval()
    try:
        result = evaluate_batches(model, loader, _float_cross_entropy, k=5, autocast=lambda: _autocast(device, amp))
    finally:
        model.train(was_training)
    return {"test_loss": result.loss, "test_top1": result.top1, "test_top5": result.topk}
