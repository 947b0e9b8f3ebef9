"""The training configuration: one flat dataclass, defaults < config file (YAML/JSON) < flags."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, UsageError, UserFileNotFoundError, check_number

__all__ = ["TrainConfig", "load_config_file", "OPTIMIZER_FIELDS"]

# Config fields that are hyper-parameters of the SAM-family optimizers (passed only where accepted).
OPTIMIZER_FIELDS = {
    "rho": "rho",
    "p": "p",
    "ascent_steps": "ascent_steps",
    "eta": "eta",
    "beta": "beta",
    "gamma": "gamma",
    "mask_sparsity": "sparsity",
    "fisher_samples": "num_samples",
    "mask_interval": "update_interval",
    "drop_rate": "drop_rate",
    "sync_first_pass": "sync_first_pass",
}


@dataclass
class TrainConfig:
    """Everything that defines a run. Only the fields that differ between seeds of one experiment
    should be ``seed``; ``compare`` groups runs whose configs are equal but for it."""

    # data
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    stream: bool = False  # image folders too large for memory (ImageNet): decode per batch with workers
    workers: int = 4
    train_subset: int | None = None  # first N (seeded random) training samples, for CPU-scale studies
    test_subset: int | None = None
    crop_padding: int | None = None  # None: 4 for images >= 28 px, 1 below
    flip: bool | None = None  # None: on for 3-channel images (not for digits/Fashion-MNIST)
    cutout: int = 0
    # model
    model: str | None = None  # None: "cnn" for the embedded digits, "resnet18" otherwise
    width: float = 1.0
    model_args: dict[str, Any] = field(default_factory=dict)  # extra model options, e.g. {alpha: 270}
    # optimizer
    optimizer: str = "sam"
    base: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    rho: float | None = None  # None: the method's default
    p: float | None = None
    ascent_steps: int | None = None
    eta: float | None = None
    beta: float | None = None
    gamma: float | None = None
    mask_sparsity: float | None = None
    fisher_samples: int | None = None
    mask_interval: int | None = None
    drop_rate: float | None = None
    sync_first_pass: bool | None = None
    max_grad_norm: float | None = None
    label_smoothing: float = 0.0
    # schedule
    epochs: int = 10
    batch_size: int = 128
    lr_schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of training (step)
    lr_decay: float = 0.1
    # sparse training
    sparse: str | None = None  # random | magnitude | snip | grasp | set | rigl
    sparsity: float = 0.0
    sparse_distribution: str = "erk"
    sparse_interval: int = 100
    sparse_fraction: float = 0.3
    sparse_end: float = 0.75
    # run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 | fp16
    compile: bool = False
    channels_last: bool = False
    threads: int | None = None
    eval_every: int = 1
    out: str = "runs"
    name: str | None = None  # run directory name under ``out``; None: derived from the config

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises :class:`~flatlab.errors.UsageError` naming the first field out of range. The
        optimizer's hyper-parameters are checked by the optimizer (``check_optimizer``)."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise UsageError(what)

        for name in ("epochs", "batch_size", "eval_every", "sparse_interval"):
            check_number(name, getattr(self, name), low=1, integer=True)
        for name in ("train_subset", "test_subset", "threads"):
            check_number(name, getattr(self, name), low=1, integer=True, optional=True)
        check_number("workers", self.workers, low=0, integer=True)
        check_number("cutout", self.cutout, low=0, integer=True)
        check_number("crop_padding", self.crop_padding, low=0, integer=True, optional=True)
        check_number("seed", self.seed, integer=True)
        check_number("lr", self.lr, low=0, low_open=True)
        need(math.isfinite(self.lr), f"lr must be finite, got lr={self.lr}")
        check_number("momentum", self.momentum, low=0)
        check_number("weight_decay", self.weight_decay, low=0)
        check_number("label_smoothing", self.label_smoothing, low=0, high=1, high_open=True)
        check_number("width", self.width, low=0, low_open=True, high=math.inf, high_open=True)
        check_number("max_grad_norm", self.max_grad_norm, low=0, low_open=True, optional=True)
        need(self.lr_schedule in ("cosine", "step", "constant"),
             f"lr_schedule must be cosine, step or constant, got {self.lr_schedule!r}")
        check_number("warmup_epochs", self.warmup_epochs, low=0, high=self.epochs, high_open=True)
        need(isinstance(self.milestones, list) and all(
            isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < 1 for m in self.milestones),
             f"milestones are fractions of training in (0, 1), got {self.milestones}")
        check_number("lr_decay", self.lr_decay, low=0, low_open=True)
        need(self.amp in ("none", "bf16", "fp16"), f"amp must be none, bf16 or fp16, got {self.amp!r}")
        check_number("sparsity", self.sparsity, low=0, high=1, high_open=True)
        need(self.sparse is not None or self.sparsity == 0,
             f"sparsity={self.sparsity} needs a sparse-training method (--sparse)")
        check_number("sparse_fraction", self.sparse_fraction, low=0, high=1)
        check_number("sparse_end", self.sparse_end, low=0, low_open=True, high=1)
        need(isinstance(self.model_args, dict), f"model_args must be a mapping, got {self.model_args!r}")

    # ------------------------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise UsageError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def optimizer_kwargs(self) -> dict[str, Any]:
        """The SAM-family hyper-parameters that were set, under the optimizer's argument names."""
        return {arg: getattr(self, key) for key, arg in OPTIMIZER_FIELDS.items() if getattr(self, key) is not None}

    def run_name(self) -> str:
        if self.name:
            return self.name
        sparse = f"-{self.sparse}{self.sparsity:g}" if self.sparse else ""
        return f"{self.dataset}-{self.resolved_model()}-{self.optimizer}{sparse}-seed{self.seed}"

    def resolved_model(self) -> str:
        """The model name, defaulting to a small CNN on the embedded digits and ResNet-18 elsewhere."""
        return self.model or ("cnn" if self.dataset == "digits" else "resnet18")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Reads a YAML (needs PyYAML) or JSON config file into a dict of config fields."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise MissingDependencyError(f"reading {path} needs PyYAML: pip install pyyaml (or flatlab[yaml])") from err
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise UsageError(f"{path} is not valid YAML: {err}") from err
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise UsageError(f"{path} must hold a mapping of config keys, got {type(values).__name__}")
    return values
