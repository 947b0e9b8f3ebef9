"""A trained run loaded back: its model (with the run's final or latest weights), data and config,
what the analysis commands and studies start from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..models import create_model
from ..optim import SharpnessAware
from .checkpoint import check_checkpoint_matches, first_line, load_checkpoint
from .config import TrainConfig
from .data import build_data
from .optimizer import build_optimizer
from .rundir import absolute_paths, load_run_config

__all__ = ["load_trained"]


def load_trained(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    checkpoint: str = "model.pt",
    *,
    overrides: dict[str, Any] | None = None,
):
    """The trained model of a run (weights of `model.pt`, or of `checkpoint.pt` for an
    unfinished run), its data and its config: what the analysis commands start from.

    `run_dir` may also be a checkpoint file itself (`model.pt` and `checkpoint.pt` both keep
    the run's config), e.g. one copied away from its run directory. `overrides` replaces config
    fields before the data is built, e.g. `{"data_root": "/data/cifar10"}` where the dataset lives
    somewhere else now.

    Returns `(model, data, config)`; `data` is a `RunData` whose
    `test` and `train` loaders yield normalised batches (the train loader augments).
    """
    device = torch.device(device)
    path, state, config = _read(Path(run_dir), checkpoint, device)
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
            _restore_weights(config, model, state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path} does not fit the run's model or optimizer: {first_line(err)}") from err
    return model.eval(), data, config


def _read(run_dir: Path, checkpoint: str, device: torch.device) -> tuple[Path, dict[str, Any], TrainConfig]:
    """The checkpoint file to load, its state and the run's config, from a run directory or from a
    checkpoint file (which keeps the config too).
    """
    if run_dir.is_file():
        path = run_dir
        state = load_checkpoint(path, map_location=device)
        if not isinstance(state.get("config"), dict):
            raise UsageError(f"{path} holds no run config; pass its run directory instead")
        return path, state, TrainConfig.from_dict(state["config"], str(path), lenient=True)
    config = load_run_config(run_dir)
    path = run_dir / checkpoint
    if not path.is_file() and checkpoint == "model.pt":
        path = run_dir / "checkpoint.pt"  # an unfinished run: its latest epoch
    return path, load_checkpoint(path, map_location=device), config


def _restore_weights(config: TrainConfig, model: torch.nn.Module, optimizer_state: dict[str, Any]) -> None:
    # A single-pass method stopped between steps leaves w + eps in the model and w in its state:
    # rebuild the run's optimizer over this model and let it put w back.
    optimizer = build_optimizer(config, model)
    optimizer.load_state_dict(optimizer_state)
    if isinstance(optimizer, SharpnessAware):
        optimizer.restore_weights()
