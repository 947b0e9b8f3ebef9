"""Training: the papers' experiments as plain functions plus a config (see ``flatlab train``)."""

from .compare import compare_runs, format_table, plot_runs
from .config import TrainConfig, load_config_file
from .loop import StepRunner, TrainingDiverged, evaluate, train_one_epoch
from .run import RunResult, load_run_config, load_trained, resolve_device, resume, train

__all__ = [
    "TrainConfig", "load_config_file", "train", "resume", "RunResult", "load_run_config", "load_trained",
    "resolve_device",
    "StepRunner", "train_one_epoch", "evaluate", "TrainingDiverged",
    "compare_runs", "format_table", "plot_runs",
]  # fmt: skip
