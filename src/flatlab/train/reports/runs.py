"""A trained run opened for analysis, and the evaluation batches drawn from its data.

The numerical analyses of `flatlab.analysis` take a model and batches; a run written by
`flatlab train` gives both, but only through its config (which model, which dataset, where it
lives), so opening a run is train-layer code: it stands on `flatlab.train.load_trained`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...data import Batch, normalize
from ...errors import UsageError, UserFileNotFoundError
from .. import load_trained, resolve_device

__all__ = ["LoadedRun", "open_run", "select_batches", "check_positive"]


@dataclass
class LoadedRun:
    """A trained model with its data and config, and where it came from."""

    path: Path  # the run directory, or the checkpoint file
    label: str  # name used in figures and tables (the run directory's name)
    model: nn.Module
    data: Any  # flatlab.train.data.RunData
    config: Any  # flatlab.train.TrainConfig
    device: torch.device


def open_run(
    run: str | Path,
    device: str | torch.device = "cpu",
    *,
    checkpoint: str = "model.pt",
    data_root: str | None = None,
) -> LoadedRun:
    """Load a finished run (`model.pt`) for analysis, with readable errors for a missing directory,
    a directory that is not a run, and an unfinished run (`checkpoint="checkpoint.pt"` analyses
    its last completed epoch instead). `run` may also be a `.pt` file written by `flatlab train`.
    `data_root` points at the dataset where it lives now, if not where the run was trained.
    """
    path = Path(run)
    if not path.exists():
        raise UserFileNotFoundError(f"no such run directory: {path}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserFileNotFoundError(f"{path} is not a flatlab run directory (no config.json)")
        if not (path / checkpoint).is_file():
            if checkpoint == "model.pt" and (path / "checkpoint.pt").is_file():
                raise UsageError(
                    f"run {path} is unfinished (no model.pt yet): finish it with `flatlab train --resume {path}`, "
                    "or analyse its last completed epoch with --checkpoint checkpoint.pt"
                )
            raise UsageError(f"run {path} has no {checkpoint} (has it trained for an epoch yet?)")
    device = resolve_device(device)
    overrides = {"data_root": str(data_root)} if data_root else None
    model, data, config = load_trained(path, device, checkpoint, overrides=overrides)
    label = path.name if path.is_dir() else path.parent.name
    return LoadedRun(path, label, model, data, config, device)


def check_positive(name: str, value, minimum: int = 1) -> None:
    """Refuses `value` unless it is an integer >= `minimum`, naming the flag `--name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}")


def select_batches(
    run: LoadedRun,
    batches: int | None,
    batch_size: int = 128,
    *,
    split: str = "test",
    seed: int = 0,
    raw: bool = False,
) -> list[Batch]:
    """The evaluation budget: `batches` batches of `batch_size` samples of `split`, as a list.

    The samples are a seeded random subset (`seed`) of the split, in dataset order, without
    augmentation; `batches=None` (or more than the split holds) takes the whole split in order, so
    the test-split numbers then match the run's test metrics. Batches are normalised as in training,
    or, with `raw=True`, the uint8 images (for corrupting before normalisation). Datasets streamed
    from disk (`--stream`) give the first `batches` batches of the run's own loader instead.
    """
    if split not in ("test", "train"):
        raise UsageError(f"--split must be test or train, got {split!r}")
    if batches is not None:
        check_positive("batches", batches)
    check_positive("batch_size", batch_size)
    data = run.data
    if data.arrays is None:
        if raw:
            raise UsageError("this analysis corrupts raw images and needs an in-memory dataset (not --stream)")
        out = []
        for x, y in data.test if split == "test" else data.train:
            out.append((x, y))
            if batches is not None and len(out) >= batches:
                break
        return out
    arrays = data.arrays
    images = arrays.test_images if split == "test" else arrays.train_images
    labels = arrays.test_labels if split == "test" else arrays.train_labels
    n = images.shape[0]
    take = n if batches is None else min(n, batches * batch_size)
    if take < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:take].sort().values
    else:
        idx = torch.arange(n)
    out = []
    for start in range(0, take, batch_size):
        i = idx[start : start + batch_size]
        x = images[i].to(run.device)
        if not raw:
            x = normalize(x, data.mean, data.std)
        out.append((x, labels[i].to(device=run.device, dtype=torch.int64)))
    return out
