"""Checkpoints and run files, written atomically: a crash or Ctrl-C leaves the old file or the new one."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError, UserFileNotFoundError

# atomic_write_text/json are re-exported for existing callers; they live in flatlab.fileio
from ..fileio import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["atomic_write_text", "atomic_write_json", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    with atomic_write(path) as f:
        torch.save(state, f)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"no checkpoint at {path}")
    try:
        # weights_only=False: the state holds RNG states and numpy arrays written by flatlab itself
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise UsageError(f"checkpoint {path} is unreadable or corrupt: {err}") from err


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
