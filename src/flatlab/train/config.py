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
    "every": "every",
    "sam_probability": "sam_probability",
    "k": "k",
    "alpha": "alpha",
    "delta": "delta",
    "c_start": "c_start",
    "c_end": "c_end",
    "rho_min": "rho_min",
    "decoupled": "decoupled",
    "sigma": "sigma",
    "lmbda": "lmbda",
}


@dataclass
class TrainConfig:
    """Everything that defines a run. Only the fields that differ between seeds of one experiment
    should be ``seed``; ``compare`` groups runs whose configs are equal but for it."""

    # data
    dataset: str = field(default="digits", metadata={
        "help": "digits (embedded, no files), cifar10, cifar100, fashion-mnist, mnist or imagefolder"})
    data_root: str | None = field(default=None, metadata={
        "help": "folder (or .tar.gz for imagefolder) of the dataset files (default: the data cache)"})
    download: bool = field(default=False, metadata={
        "help": "download missing official dataset files (CIFAR, MNIST, Fashion-MNIST)"})
    stream: bool = field(default=False, metadata={
        "help": "decode an image folder too large for memory (ImageNet) per batch, with --workers"})
    workers: int = field(default=4, metadata={"help": "data-loading processes for --stream"})
    train_subset: int | None = field(default=None, metadata={
        "help": "train on this many (seeded random) training samples, for CPU-scale studies"})
    test_subset: int | None = field(default=None, metadata={
        "help": "evaluate on this many (fixed random) test samples"})
    crop_padding: int | None = field(default=None, metadata={
        "help": "padding in pixels of the random crop (default: 4 for images >= 28 px, 1 below)"})
    flip: bool | None = field(default=None, metadata={
        "help": "random horizontal flips (default: on for 3-channel images, off for grey ones)"})
    cutout: int = field(default=0, metadata={"help": "side in pixels of the square erased per training image (0: off)"})
    # model
    model: str | None = field(default=None, metadata={
        "help": "model name (see `flatlab list`); default cnn for digits, resnet18 otherwise"})
    width: float = field(default=1.0, metadata={
        "help": "channel multiplier of the model, for CPU-scale runs (1.0: the published one)"})
    model_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "extra model options as JSON, e.g. '{\"alpha\": 270}'"})
    # optimizer
    optimizer: str = field(default="sam", metadata={
        "help": "sgd, adamw, sam, sam-sign, asam, esam, ssam-f, ssam-d or s2sam (see `flatlab list`)"})
    base: str = field(default="sgd", metadata={"help": "base optimizer of a SAM-family method: sgd or adamw"})
    lr: float = field(default=0.05, metadata={"help": "peak learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "momentum of the SGD base optimizer"})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum for the SGD base optimizer"})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay (coupled for SGD, decoupled for AdamW)"})
    rho: float | None = field(default=None, metadata={
        "help": "SAM family: radius of the perturbation (default: the method's)"})
    p: float | None = field(default=None, metadata={
        "help": "SAM: norm of the perturbation, 2 (default) or inf (the sign perturbation)"})
    ascent_steps: int | None = field(default=None, metadata={
        "help": "SAM family: gradient-ascent steps per update (default 1)"})
    eta: float | None = field(default=None, metadata={"help": "ASAM: offset eta of the adaptive scale |w| + eta"})
    beta: float | None = field(default=None, metadata={"help": "ESAM: probability that a weight tensor is perturbed"})
    gamma: float | None = field(default=None, metadata={
        "help": "ESAM: fraction of the batch (its sharpest samples) in the descent step; "
                "WSAM: sharpness weight, gamma / (1 - gamma) times the sharpness"})
    mask_sparsity: float | None = field(default=None, metadata={"help": "SSAM: fraction of coordinates NOT perturbed"})
    fisher_samples: int | None = field(default=None, metadata={
        "help": "SSAM-F: training samples for the Fisher information of the mask"})
    mask_interval: int | None = field(default=None, metadata={"help": "SSAM: steps between mask refreshes"})
    drop_rate: float | None = field(default=None, metadata={
        "help": "SSAM-D: fraction of the mask dropped and regrown at each refresh"})
    sync_first_pass: bool | None = field(default=None, metadata={
        "help": "SAM family under DDP: all-reduce the ascent gradient too"})
    every: int | None = field(default=None, metadata={
        "help": "two-pass methods: a sharpness-aware step every k-th step, plain steps between"})
    sam_probability: float | None = field(default=None, metadata={
        "help": "RST (and any two-pass method): probability that a step is sharpness-aware"})
    k: int | None = field(default=None, metadata={"help": "LookSAM: steps between full SAM steps"})
    alpha: float | None = field(default=None, metadata={
        "help": "LookSAM: weight of the reused orthogonal gradient; GSAM: weight of the surrogate-gap term"})
    delta: float | None = field(default=None, metadata={
        "help": "AE-SAM: rate of the moving averages of the squared gradient norm"})
    c_start: float | None = field(default=None, metadata={
        "help": "AE-SAM: threshold factor c_t at the start (lambda_2)"})
    c_end: float | None = field(default=None, metadata={"help": "AE-SAM: threshold factor c_t at the end (lambda_1)"})
    rho_min: float | None = field(default=None, metadata={"help": "GSAM: radius when the learning rate reaches 0"})
    decoupled: bool | None = field(default=None, metadata={
        "help": "WSAM: apply the sharpness term after the base step (default) rather than in the gradient"})
    sigma: float | None = field(default=None, metadata={
        "help": "FriendlySAM: weight of the gradient average removed from the ascent direction"})
    lmbda: float | None = field(default=None, metadata={"help": "FriendlySAM: factor of the gradient average"})
    max_grad_norm: float | None = field(default=None, metadata={
        "help": "SAM family: clip the descent gradient to this global norm"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the cross-entropy, in [0, 1)"})
    # schedule
    epochs: int = field(default=10, metadata={"help": "training epochs"})
    batch_size: int = field(default=128, metadata={"help": "training batch size (over all processes)"})
    lr_schedule: str = field(default="cosine", metadata={"help": "learning-rate schedule: cosine, step or constant"})
    warmup_epochs: float = field(default=0.0, metadata={
        "help": "linear learning-rate warm-up over this many (possibly fractional) epochs"})
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75], metadata={
        "help": "step schedule: comma-separated fractions of training, e.g. 0.5,0.75"})
    lr_decay: float = field(default=0.1, metadata={"help": "step schedule: learning-rate factor at each milestone"})
    # sparse training
    sparse: str | None = field(default=None, metadata={
        "help": "sparse training: random, magnitude, snip, grasp, set or rigl (default: dense)"})
    sparsity: float = field(default=0.0, metadata={"help": "sparse training: fraction of prunable weights removed"})
    sparse_distribution: str = field(default="erk", metadata={
        "help": "sparse training: sparsity per layer, erk, uniform or global"})
    sparse_interval: int = field(default=100, metadata={
        "help": "sparse training (set, rigl): steps between mask updates"})
    sparse_fraction: float = field(default=0.3, metadata={
        "help": "sparse training (set, rigl): fraction of live weights regrown per update"})
    sparse_end: float = field(default=0.75, metadata={
        "help": "sparse training (set, rigl): fraction of training after which masks stay fixed"})
    # run
    seed: int = field(default=0, metadata={"help": "seed of the initialisation, the data order and the augmentation"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda or cuda:N"})
    amp: str = field(default="none", metadata={"help": "mixed precision: none, bf16 or fp16"})
    compile: bool = field(default=False, metadata={"help": "compile the model with torch.compile"})
    channels_last: bool = field(default=False, metadata={
        "help": "channels-last memory format (faster convolutions on recent GPUs)"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)"})
    eval_every: int = field(default=1, metadata={
        "help": "evaluate on the test set every N epochs (and after the last)"})
    out: str = field(default="runs", metadata={"help": "folder that holds the run directories"})
    name: str | None = field(default=None, metadata={
        "help": "run directory name under --out (default: derived from the config)"})

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
