"""A whole run: build everything from a config, train with per-epoch checkpoints, resume exactly.

`train` reads as its steps: check before any work, build the run (`_Run`), take the run
directory's lock, resume from the checkpoint, then per epoch train, evaluate, checkpoint and log,
and finish with the final weights and summary. The run directory and its files are
`flatlab.train.rundir`; a finished run is loaded back by `flatlab.train.trained`.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from ..errors import MissingDependencyError, UsageError
from ..models import count_parameters, create_model
from ..optim import SharpnessAware, step_passes
from ..sparse import create_masking, masking_flops
from .checkpoint import check_checkpoint_matches, first_line, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .data import build_data
from .device import resolve_device
from .distributed import Distributed, setup_distributed
from .loop import EpochStats, StepRunner, TrainingDiverged, TrainingInterrupted, evaluate, train_one_epoch
from .memory import check_memory
from .optimizer import build_optimizer, check_optimizer
from .rundir import (
    absolute_paths,
    check_run_dir,
    load_run_config,
    locked_run_dir,
    read_metrics,
    save_config,
    save_final,
    start_run_dir,
    write_metrics,
)
from .schedule import create_scheduler
from .sharding import full_state, reshard_like, shard_model
from .trained import load_trained

__all__ = [
    "train", "resume", "RunResult",
    # re-exported: they lived here before the run directory, loading and device choice had modules
    "load_run_config", "load_trained", "build_optimizer", "check_optimizer", "resolve_device", "absolute_paths",
    "check_checkpoint_matches",
]  # fmt: skip


@dataclass
class RunResult:
    """A finished run: its directory and summary."""

    run_dir: Path
    summary: dict[str, Any]


class _Run:
    """The objects of one run and the code that saves and restores them."""

    def __init__(self, config: TrainConfig, run_dir: Path, dist: Distributed, device: torch.device):
        self.config, self.run_dir, self.dist, self.device = config, run_dir, dist, device
        torch.manual_seed(config.seed)
        self.data = build_data(config, device, dist.rank, dist.world_size)
        check_memory(config, self.data.num_classes, self.data.in_channels, self.data.image_size, device,
                     dist.world_size)
        model = create_model(
            config.resolved_model(), num_classes=self.data.num_classes, in_channels=self.data.in_channels,
            width=config.width, **config.model_args,
        ).to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.raw_model = model
        self.sharded = config.fsdp
        if config.fsdp:
            if not dist.enabled:
                raise UsageError("--fsdp shards the model over processes: launch with torchrun")
            if config.sparse is not None:
                raise UsageError("--fsdp with --sparse is not supported: the weight masks are not sharded")
            model = shard_model(model)
        elif dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = torch.compile(model) if config.compile else model
        self.steps_per_epoch = len(self.data.train)
        if self.steps_per_epoch == 0:
            raise UsageError(
                f"batch_size={config.batch_size} is larger than the {self.data.num_train} training samples"
            )
        self.total_steps = self.steps_per_epoch * config.epochs
        self.optimizer = self._build_optimizer(model)
        self.scheduler = create_scheduler(
            self.optimizer, self.total_steps, config.lr_schedule,
            round(config.warmup_epochs * self.steps_per_epoch), config.milestones, config.lr_decay,
        )
        self.runner = StepRunner(self.model, self.optimizer, device, config.amp, config.label_smoothing,
                                 accumulate=config.accumulate)
        self.masking = self._build_masking()
        self.step = 0
        self.epoch = 0

    def _build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(self.config, model, self.total_steps, self.data.num_train)

    def _build_masking(self):
        if self.config.sparse is None:
            return None
        c = self.config
        masking = create_masking(
            c.sparse, self.raw_model, c.sparsity, distribution=c.sparse_distribution,
            update_interval=c.sparse_interval, update_fraction=c.sparse_fraction, end_fraction=c.sparse_end,
            total_steps=self.total_steps, seed=c.seed,
        )
        x, y = next(iter(self.data.train))
        masking.init(data=[(x, y)])
        self.data.train.set_epoch(0)
        masking.attach(self.optimizer)
        return masking

    # -- the step hooks -----------------------------------------------------------------------

    def before_step(self) -> None:
        opt = self.optimizer
        if isinstance(opt, SharpnessAware):
            opt.prepare(lambda: [self.data.fisher_batch(opt.coordinates.num_samples, self.config.seed, self.step,
                                                        self.device)], model=self.raw_model)

    def after_step(self) -> None:
        self.scheduler.step()
        self.step += 1
        if self.masking is not None:
            self.masking.after_step(self.step)

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The run's state; under FSDP every rank must call it (the shards are gathered)."""
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model_state(),
            "optimizer": full_state(self.optimizer.state_dict()) if self.sharded else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "runner": self.runner.state_dict(),
            "rng": rng_state(),
            "config": self.config.to_dict(),
        }
        if self.masking is not None:
            state["masking"] = self.masking.state_dict()
        return state

    def model_state(self) -> dict[str, Any]:
        return full_state(self.raw_model.state_dict()) if self.sharded else self.raw_model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.sharded:
            for name, p in self.raw_model.state_dict().items():
                if isinstance(p, DTensor):
                    state["model"][name] = distribute_tensor(state["model"][name].to(p.device), p.device_mesh,
                                                             p.placements)
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sharded:
            reshard_like(self.optimizer, list(self.raw_model.parameters()))
        self.scheduler.load_state_dict(state["scheduler"])
        self.runner.load_state_dict(state["runner"])
        if self.masking is not None:
            self.masking.load_state_dict(state["masking"])
        set_rng_state(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def evaluate(self) -> dict[str, float]:
        with _unperturbed(self.optimizer):
            return evaluate(self.raw_model, self.data.test, self.device, self.config.amp)


def _unperturbed(optimizer: torch.optim.Optimizer):
    """The weights w (not a single-step method's pending w + eps), for evaluation and export."""
    return optimizer.unperturbed() if isinstance(optimizer, SharpnessAware) else nullcontext()


def train(config: TrainConfig, *, resume_dir: str | Path | None = None, overwrite: bool = False,
          progress: bool | None = None, log=print) -> RunResult:
    """Runs (or resumes) one training run and returns its directory and summary.

    Everything is validated and built (config, optimizer, data, model) before anything is written;
    with `overwrite` an earlier run in the directory is replaced, all of it, only when the new run
    writes its first checkpoint.
    """
    config = absolute_paths(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if config.amp == "fp16" and device.type != "cuda":
        raise UsageError(f"amp=fp16 needs a CUDA device (float16 on {device.type} is emulated and far slower); "
                         "use --amp bf16 or --amp none")
    dist = setup_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    try:
        with ExitStack() as held:  # the run directory's lock, once _train takes it
            result = _train(config, device, dist, resume_dir, overwrite, progress, log, held)
            # every rank waits for rank 0's last writes: tearing gloo down while a peer still talks to
            # it aborts the process ("terminate called without an active exception")
            dist.barrier()
        return result
    finally:
        dist.close()


def resume(run_dir: str | Path, *, overrides: dict[str, Any] | None = None, **kwargs) -> RunResult:
    """Continues the run in `run_dir` from its last checkpoint, with its saved config.

    `overrides` changes what does not change the run: where its data lives now (`data_root`), `threads`.
    """
    config = load_run_config(run_dir)
    if overrides:
        config = config.replace(**overrides)
    return train(config, resume_dir=run_dir, **kwargs)


def _train(config, device, dist, resume_dir, overwrite, progress, log, held: ExitStack) -> RunResult:
    resuming = resume_dir is not None
    run_dir = Path(resume_dir) if resuming else Path(config.out) / config.run_name()
    _check_before_work(config, run_dir, resuming, overwrite)
    if not dist.is_main:
        # rank 0 alone reports and writes the run, with the values reduced over all ranks; the
        # others' own views (an empty or stale history) would contradict it
        log = _silent
    run = _Run(config, run_dir, dist, device)
    if dist.is_main:  # the one writer of the run directory
        held.enter_context(locked_run_dir(run_dir, resuming, overwrite))
    files = _RunFiles(run, started=resuming)
    if resuming:
        _resume(run, files, log)
    if run.epoch == 0 and dist.is_main:
        log(_start_line(run))
    wall_start = time.perf_counter() - (files.history[-1]["wall_time_s"] if files.history else 0.0)
    while run.epoch < config.epochs:
        stats = _train_epoch(run, progress, files.started)
        row = _epoch_row(run, stats, wall_start)
        files.save_epoch(row)
        log(_epoch_line(row, config.epochs))
        dist.barrier()
    files.close()
    return RunResult(run_dir, _finish(run, files.history, log))


def _check_before_work(config: TrainConfig, run_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuses a bad hyper-parameter, run directory or missing package before any data is loaded."""
    check_optimizer(config)
    check_run_dir(run_dir, resuming, overwrite)
    if config.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as err:
            raise MissingDependencyError("--tensorboard needs the tensorboard package: pip install tensorboard "
                                         "(or flatlab[tensorboard])") from err


def _resume(run: _Run, files: _RunFiles, log) -> None:
    path = run.run_dir / "checkpoint.pt"
    state = load_checkpoint(path, map_location=run.device)
    check_checkpoint_matches(state, run.config, path)
    try:
        run.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"checkpoint {path} does not fit this run's model or optimizer: {first_line(err)}") from err
    if run.dist.is_main:
        files.resume()
    epochs = run.config.epochs
    if run.epoch < epochs:
        log(f"resuming {run.run_dir} at epoch {run.epoch + 1}/{epochs}")
    else:
        log(f"{run.run_dir}: all {epochs} epochs are trained; writing its final model and summary")


def _start_line(run: _Run) -> str:
    config, dist = run.config, run.dist
    n_params = count_parameters(run.raw_model)
    return (f"{config.run_name()}: {config.resolved_model()} ({n_params / 1e6:.2f}M params) on {config.dataset} "
            f"({run.data.num_train} train), {type(run.optimizer).__name__}, {config.epochs} epochs, "
            f"{run.device}{f' x{dist.world_size}' if dist.enabled else ''}")


def _train_epoch(run: _Run, progress: bool | None, started: bool) -> EpochStats:
    """One epoch of training steps, with a divergence or Ctrl-C turned into advice on what is kept."""
    epoch, epochs, run_dir = run.epoch, run.config.epochs, run.run_dir
    checkpoint_path = run_dir / "checkpoint.pt"
    run.data.train.set_epoch(epoch)
    try:
        stats = train_one_epoch(
            run.runner, run.data.train, before_step=run.before_step, after_step=run.after_step,
            desc=f"epoch {epoch + 1}/{epochs}", progress=progress if run.dist.is_main else False,
        )
    except TrainingDiverged as err:
        if started and checkpoint_path.exists():
            advice = (f"the last good checkpoint is epoch {epoch} in {checkpoint_path}. Lower --lr (or --rho) "
                      f"and start a new run, or resume from it: flatlab train --resume {run_dir}")
        else:
            advice = "it diverged in the first epoch, before any checkpoint. Lower --lr (or --rho) and start again"
        raise TrainingDiverged(f"{err}. The run stopped; {advice}") from None
    except KeyboardInterrupt:
        if started:
            raise TrainingInterrupted(f"interrupted in epoch {epoch + 1}; epochs 1-{epoch} are checkpointed: "
                                      f"continue with flatlab train --resume {run_dir}") from None
        kept = f"; the earlier run in {run_dir} is untouched" if run_dir.exists() else ""
        raise TrainingInterrupted(f"interrupted in the first epoch, before any checkpoint: nothing was "
                                  f"saved{kept}") from None
    run.epoch = epoch + 1
    return stats


def _epoch_row(run: _Run, stats: EpochStats, wall_start: float) -> dict[str, Any]:
    """The epoch's line of `metrics.jsonl`: training numbers over all ranks, the test numbers on evaluation epochs."""
    dist = run.dist
    # each rank saw its shard of the epoch: sums over all ranks give the epoch's loss and accuracy
    loss_sum, correct, images, seconds = dist.all_reduce_sum(
        [stats.loss * stats.images, round(stats.accuracy * stats.images), stats.images, stats.seconds], run.device)
    row: dict[str, Any] = {"epoch": run.epoch, "train_loss": loss_sum / images, "train_acc": correct / images}
    row["images_per_s"] = images / (seconds / dist.world_size)
    row["train_time_s"] = seconds / dist.world_size
    row["lr"] = run.optimizer.param_groups[0]["lr"]
    if run.epoch % run.config.eval_every == 0 or run.epoch == run.config.epochs:
        if dist.is_main or run.sharded:  # a sharded forward needs every rank
            row.update(run.evaluate())
    row["wall_time_s"] = time.perf_counter() - wall_start
    return row


class _RunFiles:
    """What rank 0 writes into the run directory epoch by epoch: the checkpoint, the metrics (the
    history so far), TensorBoard's scalars. Every rank knows whether the directory is written yet.
    """

    def __init__(self, run: _Run, started: bool):
        self.run, self.dir = run, run.run_dir
        self.started = started  # whether this run has its directory (written at its first checkpoint)
        self.history: list[dict[str, Any]] = []
        self._board = None

    def resume(self) -> None:
        # metrics written after the last checkpoint belong to an epoch that will be redone
        self.history = read_metrics(self.dir, self.run.epoch)
        write_metrics(self.dir, self.history)
        save_config(self.dir, self.run.config)  # a new --data-root

    def save_epoch(self, row: dict[str, Any]) -> None:
        run = self.run
        state = run.state_dict() if run.dist.is_main or run.sharded else None  # gathering shards is collective
        if run.dist.is_main:
            if not self.started:
                start_run_dir(self.dir, run.config)
            save_checkpoint(self.dir / "checkpoint.pt", state)
            self.history.append(row)
            write_metrics(self.dir, self.history)
            if run.config.tensorboard:
                self._add_scalars(row)
        self.started = True

    def _add_scalars(self, row: dict[str, Any]) -> None:
        if self._board is None:  # purge_step: a resumed run drops what was logged after its checkpoint
            from torch.utils.tensorboard import SummaryWriter

            self._board = SummaryWriter(str(self.dir / "tensorboard"), purge_step=row["epoch"])
        for key, value in row.items():
            if key != "epoch":
                self._board.add_scalar(key, value, row["epoch"])
        self._board.flush()

    def close(self) -> None:
        if self._board is not None:
            self._board.close()


def _finish(run: _Run, history: list[dict[str, Any]], log) -> dict[str, Any]:
    """Writes the final weights and summary (rank 0) and returns the summary on every rank."""
    dist, config = run.dist, run.config
    summary = _summary(run, history) if dist.is_main else None
    with _unperturbed(run.optimizer):
        # saved inside the block: the state dict refers to the parameters, which hold w only here
        final = run.model_state() if dist.is_main or run.sharded else None
        if dist.is_main:
            save_final(run.run_dir, final, config, summary)
    summary = dist.broadcast(summary)  # every rank returns the summary rank 0 wrote
    if "sparsity" in summary:
        log(f"sparsity {summary['sparsity']['overall']['mask_sparsity']:.4f} (weights equal to zero: "
            f"{summary['sparsity']['overall']['weight_sparsity']:.4f}), training FLOPs "
            f"{summary['training_flops_vs_dense_sgd']:.3f} x dense SGD")
    split = "test" if config.holdout is None else "held-out"
    log(f"done: {split} top-1 {100 * summary['final_test_top1']:.2f}% "
        f"(best {100 * summary['best_test_top1']:.2f}%), "
        f"{summary['images_per_s']:.0f} img/s, {summary['wall_time_s']:.1f}s -> {run.run_dir}")
    return summary


def _silent(*_args, **_kwargs) -> None:
    pass


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    text = f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%"
    if "test_top1" in row:
        text += (f"  test loss {row['test_loss']:.4f} top1 {100 * row['test_top1']:.2f}% "
                 f"top5 {100 * row['test_top5']:.2f}%")
    return text + f"  {row['images_per_s']:.0f} img/s  {row['wall_time_s']:.1f}s"


def _summary(run: _Run, history: list[dict[str, Any]]) -> dict[str, Any]:
    evaluated = [r for r in history if "test_top1" in r]
    train_time = sum(r["train_time_s"] for r in history)
    images = sum(r["images_per_s"] * r["train_time_s"] for r in history)
    summary: dict[str, Any] = {
        "run": run.config.run_name(),
        "epochs": len(history),
        "final_test_top1": evaluated[-1]["test_top1"] if evaluated else math.nan,
        "final_test_top5": evaluated[-1]["test_top5"] if evaluated else math.nan,
        "final_test_loss": evaluated[-1]["test_loss"] if evaluated else math.nan,
        "best_test_top1": max((r["test_top1"] for r in evaluated), default=math.nan),
        "final_train_loss": history[-1]["train_loss"] if history else math.nan,
        "images_per_s": images / train_time if train_time else math.nan,
        "train_time_s": train_time,
        "wall_time_s": history[-1]["wall_time_s"] if history else 0.0,
        "parameters": count_parameters(run.raw_model),
        "model": run.config.resolved_model(),
        # what the "test" numbers were measured on: the test set, or training samples held out
        "evaluated_on": "test" if run.config.holdout is None else f"holdout of {run.config.holdout} training samples",
    }
    if isinstance(run.optimizer, SharpnessAware):
        # the share of steps that took the sharpness-aware update (1 for SAM, ~0.2 for LookSAM k=5)
        summary["sam_steps_per_step"] = run.optimizer.sam_fraction
    if run.masking is not None:
        summary["sparsity"] = run.masking.report()
        shape = (run.data.in_channels, *run.data.image_size)
        summary["training_flops_vs_dense_sgd"] = masking_flops(run.masking, shape, passes=step_passes(run.optimizer))
    return summary
