"""Training: the papers' experiments as plain functions plus a config (see `flatlab train`)."""

from .compare import compare_runs, format_table, plot_runs
from .config import TrainConfig, load_config_file
from .device import resolve_device
from .loop import StepRunner, TrainingDiverged, evaluate, train_one_epoch
from .run import RunResult, resume, train
from .rundir import load_run_config
from .trained import load_trained

__all__ = [
    "TrainConfig", "load_config_file", "train", "resume", "RunResult", "load_run_config", "load_trained",
    "resolve_device",
    "StepRunner", "train_one_epoch", "evaluate", "TrainingDiverged",
    "compare_runs", "format_table", "plot_runs",
]  # fmt: skip
