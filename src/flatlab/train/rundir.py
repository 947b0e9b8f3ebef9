"""A run directory and its files: checked before any work, locked while a run writes it, created (or
replacing an earlier run, all of it) at the first checkpoint, read back to resume or analyse.

A run directory holds:

```python
config.json      the resolved config (and the flatlab, python and package versions, command, machine)
metrics.jsonl    one JSON line per epoch
checkpoint.pt    the latest epoch: model, optimizer (base state, masks, g_prev), scheduler,
                 GradScaler, RNG states, epoch; written atomically
summary.json     the final result, written when the run ends
model.pt         the final weights (unperturbed), for analysis
```
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import UsageError, UserFileExistsError, UserFileNotFoundError
from ..fileio import atomic_write_json, atomic_write_text, unwritable
from .checkpoint import save_checkpoint
from .config import TrainConfig
from .environment import package_versions
from .lock import run_lock

__all__ = [
    "RUN_FILES", "load_run_config", "absolute_paths", "check_run_dir", "locked_run_dir", "start_run_dir",
    "read_metrics", "write_metrics", "save_config", "save_final",
]  # fmt: skip

RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "model.pt")


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The config a run was trained with (its `config.json`).

    Method options the method did not read, which older versions saved without effect, are dropped.
    """
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


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """`config` with its data root made absolute, so that the run can be resumed and analysed from
    any working directory.
    """
    if config.data_root is None:
        return config
    return config.replace(data_root=os.path.abspath(os.path.expanduser(config.data_root)))


def check_run_dir(run_dir: Path, resuming: bool, overwrite: bool) -> None:
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
        elif run_dir.is_dir() and any(run_dir.iterdir()) and not any((run_dir / f).exists() for f in RUN_FILES):
            raise UserFileExistsError(f"{run_dir} exists and is not a flatlab run directory; choose another "
                                      "--name / --out")
        elif run_dir.exists() and not run_dir.is_dir():
            raise UserFileExistsError(f"{run_dir} exists and is not a folder; choose another --name / --out")
        reason = unwritable(run_dir.parent if run_dir.exists() else run_dir)
    if reason:
        raise UsageError(f"cannot write the run into {run_dir}: {reason}")


@contextlib.contextmanager
def locked_run_dir(run_dir: Path, resuming: bool, overwrite: bool) -> Iterator[None]:
    """Holds the run directory's lock for the block, checking the directory again under it: another
    process may have started or finished a run there since the check before the work.
    """
    with run_lock(run_dir):
        check_run_dir(run_dir, resuming, overwrite)
        yield


def start_run_dir(run_dir: Path, config: TrainConfig) -> None:
    """Creates the run directory for a new run, replacing (all of) an earlier one in it."""
    old = None
    if run_dir.exists():
        old = run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(run_dir, old)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", _meta(config))
    write_metrics(run_dir, [])
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_config(run_dir: Path, config: TrainConfig) -> None:
    """Records `config` in the run's `config.json` where it differs from the saved one (a resumed
    run's new data root), keeping the rest of the file (versions, command, machine of the start).
    """
    path = run_dir / "config.json"
    meta = json.loads(path.read_text())
    if meta.get("config") != config.to_dict():
        atomic_write_json(path, {**meta, "config": config.to_dict()})


def read_metrics(run_dir: Path, upto_epoch: int) -> list[dict[str, Any]]:
    """The rows of `metrics.jsonl` up to and including epoch `upto_epoch`."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Writes `metrics.jsonl`, one line per epoch, atomically."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def save_final(run_dir: Path, model_state: dict[str, Any], config: TrainConfig, summary: dict[str, Any]) -> None:
    """Writes the final weights (`model.pt`, with the config) and then `summary.json`, whose
    presence marks the run as finished.
    """
    save_checkpoint(run_dir / "model.pt", {"model": model_state, "config": config.to_dict()})
    atomic_write_json(run_dir / "summary.json", summary)


def _meta(config: TrainConfig) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "flatlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "packages": package_versions(),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }
