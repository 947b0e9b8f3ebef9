"""Checkpoints: written atomically (a crash or Ctrl-C leaves the old file or the new one), read back
without running code, the RNG states they keep, and whether one belongs to the run that loads it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError, UserFileNotFoundError

# atomic_write_text/json are re-exported for existing callers; they live in flatlab.fileio
from ..fileio import atomic_write, atomic_write_json, atomic_write_text
from .config import TrainConfig

__all__ = [
    "atomic_write_text", "atomic_write_json", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state",
    "check_checkpoint_matches", "first_line",
]  # fmt: skip

# what must agree between a checkpoint and the run that loads it
_IDENTITY = ("dataset", "optimizer", "base", "model", "width", "model_args", "sparse")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """`torch.save` through a temporary file and an atomic rename."""
    with atomic_write(path) as f:
        torch.save(state, f)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint with `weights_only=True`: tensors and plain Python values only, so that
    a run directory from elsewhere cannot execute code when it is loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if "Unsupported global" in str(err):
            raise UsageError(f"checkpoint {path} holds objects other than tensors and plain values (written by "
                             "an older flatlab, or not by flatlab): refused, as loading it could run code") from err
        raise UsageError(f"checkpoint {path} is unreadable, corrupt or not a flatlab checkpoint"
                         f"{_reason(err)}") from err
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint {path} is not a flatlab checkpoint (it holds a {type(state).__name__})")
    return state


def check_checkpoint_matches(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Raises `UsageError` when the checkpoint `state` was written by a run with another
    dataset, optimizer, model or sparse method than `config`.
    """
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


def first_line(err: Exception) -> str:
    """The first line of an error's message (its type where the message is empty), at most 200
    characters: what a one-line refusal of a checkpoint that does not fit quotes of torch's error.
    """
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _reason(err: Exception) -> str:
    """What torch found wrong with a file, as `": <reason>"`, without its advice to retry with
    `weights_only=False`: that would run code, and for a corrupt file it fails anyway.
    """
    text = str(err)
    if "WeightsUnpickler error:" in text:  # the reason follows torch's advice
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    if not any(c.isalpha() for c in first) or "weights_only" in first.lower() or "weights only" in first.lower():
        return ""
    return f": {first[:200]}"


def rng_state() -> dict[str, Any]:
    """The random generators' states as tensors and builtins (loadable with `weights_only=True`)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores the torch, Python and NumPy generators saved by `rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """`random.setstate` wants the nested tuples `getstate` gave, whatever a loader made of them."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
