"""A whole run: build everything from a config, train with per-epoch checkpoints, resume exactly.

A run directory holds::

    config.json      the resolved config (and flatlab/torch versions, command, machine)
    metrics.jsonl    one JSON line per epoch
    checkpoint.pt    the latest epoch: model, optimizer (base state, masks, g_prev), scheduler,
                     GradScaler, RNG states, epoch; written atomically
    summary.json     the final result, written when the run ends
    model.pt         the final weights (unperturbed), for analysis
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from .. import __version__
from ..errors import MissingDependencyError, UsageError, UserFileExistsError, UserFileNotFoundError
from ..fileio import atomic_write_json, atomic_write_text, unwritable
from ..models import count_parameters, create_model
from ..optim import (
    SharpnessAware,
    base_of,
    base_options,
    create_optimizer,
    is_base_optimizer,
    method_options,
    step_passes,
)
from ..sparse import create_masking, masking_flops
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .data import build_data
from .distributed import Distributed, setup_distributed
from .lock import run_lock
from .loop import StepRunner, TrainingDiverged, TrainingInterrupted, evaluate, train_one_epoch
from .memory import check_memory
from .schedule import create_scheduler
from .sharding import full_state, reshard_like, shard_model

__all__ = [
    "train", "resume", "RunResult", "load_run_config", "load_trained", "build_optimizer", "check_optimizer",
    "resolve_device", "absolute_paths", "check_checkpoint_matches",
]  # fmt: skip


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; any other torch device name as is, with a readable
    error when it names CUDA on a machine without it."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:  # torch's message for a malformed name
        raise UsageError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} asked for, but CUDA is not available")
    return device


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run was trained with (its ``config.json``). Method options the method did not
    read, which older versions saved without effect, are dropped."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserFileNotFoundError(f"{run_dir} is not a flatlab run directory (no config.json)")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise UsageError(f"{path} holds no run config")
    return TrainConfig.from_dict(saved["config"], str(path), lenient=True)


def load_trained(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    checkpoint: str = "model.pt",
    *,
    overrides: dict[str, Any] | None = None,
):
    """The trained model of a run (weights of ``model.pt``, or of ``checkpoint.pt`` for an
    unfinished run), its data and its config: what the analysis commands start from.

    ``run_dir`` may also be a checkpoint file itself (``model.pt`` and ``checkpoint.pt`` both keep
    the run's config), e.g. one copied away from its run directory. ``overrides`` replaces config
    fields before the data is built, e.g. ``{"data_root": "/data/cifar10"}`` where the dataset lives
    somewhere else now.

    Returns ``(model, data, config)``; ``data`` is a :class:`~flatlab.train.data.RunData` whose
    ``test`` and ``train`` loaders yield normalised batches (the train loader augments).
    """
    run_dir = Path(run_dir)
    device = torch.device(device)
    if run_dir.is_file():
        path = run_dir
        state = load_checkpoint(path, map_location=device)
        if not isinstance(state.get("config"), dict):
            raise UsageError(f"{path} holds no run config; pass its run directory instead")
        config = TrainConfig.from_dict(state["config"], str(path), lenient=True)
    else:
        config = load_run_config(run_dir)
        path = run_dir / checkpoint
        if not path.is_file() and checkpoint == "model.pt":
            path = run_dir / "checkpoint.pt"
        state = load_checkpoint(path, map_location=device)
    check_checkpoint_matches(state, config, path)
    if overrides:
        config = absolute_paths(config.replace(**overrides))
    data = build_data(config, device)
    model = create_model(
        config.resolved_model(), num_classes=data.num_classes, in_channels=data.in_channels, width=config.width,
        **config.model_args,
    ).to(device)
    try:
        model.load_state_dict(state["model"])
        if path.name == "checkpoint.pt" and isinstance(state.get("optimizer"), dict):
            # A single-pass method stopped between steps leaves w + eps in the model and w in its
            # state: rebuild the run's optimizer over this model and let it put w back.
            optimizer = build_optimizer(config, model)
            optimizer.load_state_dict(state["optimizer"])
            if isinstance(optimizer, SharpnessAware):
                optimizer.restore_weights()
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{path} does not fit the run's model or optimizer: {first[:200]}") from err
    return model.eval(), data, config


def _read_metrics(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def build_optimizer(config: TrainConfig, params_or_model, total_steps: int | None = None) -> torch.optim.Optimizer:
    """The optimizer a config asks for (hyper-parameters validated by the optimizer itself)."""
    c = config
    base = base_of(c.optimizer, c.base)
    shared = dict(lr=c.lr, weight_decay=c.weight_decay, momentum=c.momentum, nesterov=c.nesterov)
    accepted = base_options(base)
    kwargs: dict[str, Any] = {k: v for k, v in shared.items() if k in accepted}
    if not is_base_optimizer(c.optimizer):
        kwargs.update(c.optimizer_kwargs())
        kwargs.update(seed=c.seed, max_grad_norm=c.max_grad_norm)
        if total_steps is not None and "total_steps" in method_options(c.optimizer):
            kwargs.setdefault("total_steps", total_steps)  # schedules over the run (SSAM-D's drop rate)
    elif c.max_grad_norm is not None:
        raise UsageError("max_grad_norm is applied by the SAM-family optimizers; not with a plain base")
    return create_optimizer(c.optimizer, params_or_model, base=base, **kwargs)


def check_optimizer(config: TrainConfig) -> None:
    """Raises a :class:`~flatlab.errors.UsageError` with the optimizer's own message for a bad name
    or hyper-parameter, before any training."""
    try:
        build_optimizer(config, [torch.zeros(1, requires_grad=True)])
    except UsageError:
        raise
    except ValueError as err:  # on one dummy tensor, only the config's values can be wrong
        raise UsageError(str(err)) from err


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
        return build_optimizer(self.config, model, self.total_steps)

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
        if isinstance(opt, SharpnessAware) and opt.mask_due:
            x, y = self.data.fisher_batch(opt.coordinates.num_samples, self.config.seed, self.step, self.device)
            opt.update_mask(self.raw_model, [(x, y)])

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


def _meta(config: TrainConfig) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "flatlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }


def train(config: TrainConfig, *, resume_dir: str | Path | None = None, overwrite: bool = False,
          progress: bool | None = None, log=print) -> RunResult:
    """Runs (or resumes) one training run and returns its directory and summary.

    Everything is validated and built (config, optimizer, data, model) before anything is written;
    with ``overwrite`` an earlier run in the directory is replaced, all of it, only when the new run
    writes its first checkpoint."""
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


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with its data root made absolute, so that the run can be resumed and analysed from
    any working directory."""
    if config.data_root is None:
        return config
    return config.replace(data_root=os.path.abspath(os.path.expanduser(config.data_root)))


def resume(run_dir: str | Path, *, overrides: dict[str, Any] | None = None, **kwargs) -> RunResult:
    """Continues the run in ``run_dir`` from its last checkpoint, with its saved config.
    ``overrides`` changes what does not change the run: where its data lives now (``data_root``),
    ``threads``."""
    config = load_run_config(run_dir)
    if overrides:
        config = config.replace(**overrides)
    return train(config, resume_dir=run_dir, **kwargs)


_RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "model.pt")
# what must agree between a checkpoint and the run that loads it
_IDENTITY = ("dataset", "optimizer", "base", "model", "width", "model_args", "sparse")


def check_checkpoint_matches(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Raises :class:`UsageError` when the checkpoint ``state`` was written by a run with another
    dataset, optimizer, model or sparse method than ``config``."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise UsageError(f"checkpoint {path} holds no run config: it was not written by flatlab train")
    ours = config.to_dict()
    ours["model"], saved = config.resolved_model(), dict(saved)
    saved["model"] = saved.get("model") or ("cnn" if saved.get("dataset") == "digits" else "resnet18")
    differ = [k for k in _IDENTITY if k in saved and saved[k] != ours[k]]
    if differ:
        theirs = ", ".join(f"{k} {saved[k]!r}" for k in differ)
        mine = ", ".join(f"{k} {ours[k]!r}" for k in differ)
        raise UsageError(f"checkpoint {path} was written by a run with {theirs}, but this run's config says {mine}: "
                         "it belongs to another run")


def _load_states(run: _Run, state: dict[str, Any], path: Path) -> None:
    try:
        run.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"checkpoint {path} does not fit this run's model or optimizer: {first[:200]}") from err


def _start_run_dir(run_dir: Path, config: TrainConfig) -> None:
    """Creates the run directory for a new run, replacing (all of) an earlier one in it."""
    old = None
    if run_dir.exists():
        old = run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(run_dir, old)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", _meta(config))
    _write_metrics(run_dir / "metrics.jsonl", [])
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_run_dir(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuses, before any work, a run directory that cannot be used."""
    if resuming:
        if not (run_dir / "checkpoint.pt").is_file():
            raise UserFileNotFoundError(f"no checkpoint to resume in {run_dir}")
        if (run_dir / "summary.json").is_file():
            raise UsageError(f"run {run_dir} has finished; nothing to resume (its results: {run_dir / 'summary.json'})")
        reason = unwritable(run_dir)
    else:
        if (run_dir / "checkpoint.pt").exists() or (run_dir / "summary.json").exists():
            if not overwrite:
                raise UserFileExistsError(
                    f"run directory {run_dir} already holds a run: continue it with --resume {run_dir}, "
                    "or choose another --name / --out (or --overwrite)"
                )
        elif run_dir.is_dir() and any(run_dir.iterdir()) and not any((run_dir / f).exists() for f in _RUN_FILES):
            raise UserFileExistsError(f"{run_dir} exists and is not a flatlab run directory; choose another "
                                      "--name / --out")
        elif run_dir.exists() and not run_dir.is_dir():
            raise UserFileExistsError(f"{run_dir} exists and is not a folder; choose another --name / --out")
        reason = unwritable(run_dir.parent if run_dir.exists() else run_dir)
    if reason:
        raise UsageError(f"cannot write the run into {run_dir}: {reason}")


def _train(config, device, dist, resume_dir, overwrite, progress, log, held: ExitStack) -> RunResult:
    check_optimizer(config)  # fail on a bad hyper-parameter before loading any data
    run_dir = Path(resume_dir) if resume_dir is not None else Path(config.out) / config.run_name()
    checkpoint_path = run_dir / "checkpoint.pt"
    _check_run_dir(run_dir, resume_dir is not None, overwrite)
    if config.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise MissingDependencyError("--tensorboard needs the tensorboard package: pip install tensorboard "
                                         "(or flatlab[tensorboard])") from err
    if not dist.is_main:
        # rank 0 alone reports and writes the run, with the values reduced over all ranks; the
        # others' own views (an empty or stale history) would contradict it
        log = _silent
    run = _Run(config, run_dir, dist, device)
    if dist.is_main:  # the one writer of the run directory takes its lock, and checks it again under it
        held.enter_context(run_lock(run_dir))
        _check_run_dir(run_dir, resume_dir is not None, overwrite)
    board = None
    history: list[dict[str, Any]] = []
    started = resume_dir is not None  # whether this run has its directory (written at its first checkpoint)
    if resume_dir is not None:
        state = load_checkpoint(checkpoint_path, map_location=device)
        check_checkpoint_matches(state, config, checkpoint_path)
        _load_states(run, state, checkpoint_path)
        # metrics written after the last checkpoint belong to an epoch that will be redone
        if dist.is_main:
            history = _read_metrics(run_dir / "metrics.jsonl", run.epoch)
            _write_metrics(run_dir / "metrics.jsonl", history)
            meta_path = run_dir / "config.json"
            if json.loads(meta_path.read_text()).get("config") != config.to_dict():  # a new --data-root
                atomic_write_json(meta_path, {**json.loads(meta_path.read_text()), "config": config.to_dict()})
        if run.epoch < config.epochs:
            log(f"resuming {run_dir} at epoch {run.epoch + 1}/{config.epochs}")
        else:
            log(f"{run_dir}: all {config.epochs} epochs are trained; writing its final model and summary")
    if run.epoch == 0 and dist.is_main:
        n_params = count_parameters(run.raw_model)
        log(f"{config.run_name()}: {config.resolved_model()} ({n_params / 1e6:.2f}M params) on {config.dataset} "
            f"({run.data.num_train} train), {type(run.optimizer).__name__}, {config.epochs} epochs, "
            f"{device}{f' x{dist.world_size}' if dist.enabled else ''}")

    wall_start = time.perf_counter() - (history[-1]["wall_time_s"] if history else 0.0)
    while run.epoch < config.epochs:
        epoch = run.epoch
        run.data.train.set_epoch(epoch)
        try:
            stats = train_one_epoch(
                run.runner, run.data.train, before_step=run.before_step, after_step=run.after_step,
                desc=f"epoch {epoch + 1}/{config.epochs}", progress=progress if dist.is_main else False,
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
        # each rank saw its shard of the epoch: sums over all ranks give the epoch's loss and accuracy
        loss_sum, correct, images, seconds = dist.all_reduce_sum(
            [stats.loss * stats.images, round(stats.accuracy * stats.images), stats.images, stats.seconds], device)
        row: dict[str, Any] = {"epoch": run.epoch, "train_loss": loss_sum / images, "train_acc": correct / images}
        row["images_per_s"] = images / (seconds / dist.world_size)
        row["train_time_s"] = seconds / dist.world_size
        row["lr"] = run.optimizer.param_groups[0]["lr"]
        if run.epoch % config.eval_every == 0 or run.epoch == config.epochs:
            if dist.is_main or run.sharded:  # a sharded forward needs every rank
                row.update(run.evaluate())
        row["wall_time_s"] = time.perf_counter() - wall_start
        state = run.state_dict() if dist.is_main or run.sharded else None  # gathering shards is collective
        if dist.is_main:
            if not started:
                _start_run_dir(run_dir, config)
            save_checkpoint(checkpoint_path, state)
            history.append(row)
            _write_metrics(run_dir / "metrics.jsonl", history)
            if config.tensorboard:
                if board is None:  # purge_step: a resumed run drops what was logged after its checkpoint
                    board = SummaryWriter(str(run_dir / "tensorboard"), purge_step=run.epoch)
                for key, value in row.items():
                    if key != "epoch":
                        board.add_scalar(key, value, run.epoch)
                board.flush()
            log(_epoch_line(row, config.epochs))
        started = True
        dist.barrier()

    if board is not None:
        board.close()
    summary = _summary(run, history) if dist.is_main else None
    with _unperturbed(run.optimizer):
        # saved inside the block: the state dict refers to the parameters, which hold w only here
        final = run.model_state() if dist.is_main or run.sharded else None
        if dist.is_main:
            save_checkpoint(run_dir / "model.pt", {"model": final, "config": config.to_dict()})
            atomic_write_json(run_dir / "summary.json", summary)
    summary = dist.broadcast(summary)  # every rank returns the summary rank 0 wrote
    if "sparsity" in summary:
        log(f"sparsity {summary['sparsity']['overall']['mask_sparsity']:.4f} (weights equal to zero: "
            f"{summary['sparsity']['overall']['weight_sparsity']:.4f}), training FLOPs "
            f"{summary['training_flops_vs_dense_sgd']:.3f} x dense SGD")
    split = "test" if config.holdout is None else "held-out"
    log(f"done: {split} top-1 {100 * summary['final_test_top1']:.2f}% "
        f"(best {100 * summary['best_test_top1']:.2f}%), "
        f"{summary['images_per_s']:.0f} img/s, {summary['wall_time_s']:.1f}s -> {run_dir}")
    return RunResult(run_dir, summary)


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
