"""The training configuration: one flat dataclass, defaults < config file (YAML/JSON) < flags.

Every value, whether from a file, a flag or code, is converted to its field's type or rejected in
one line naming the key, where it came from and the type expected (`convert`); numbers may be
spelled as YAML or Python spell them (`5e-4`, `1_000`, `.inf`).

A method's hyper-parameters (`OPTIMIZER_FIELDS`) are accepted only by the methods that read
them: `--optimizer sgd --rho 0.1` is an error naming the method and the options it takes. A config
file that serves several methods puts each method's settings in a section named after it, used only
when that method is chosen (the flat keys and flags of the file still apply):

```yaml
optimizer: esam
lr: 0.05
esam: {rho: 0.05, beta: 0.6, gamma: 0.5}
sam: {rho: 0.05}
sgd: {weight_decay: 0.0005}
```
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..data import is_embedded, list_datasets
from ..errors import MissingDependencyError, UsageError, UserFileNotFoundError, check_number
from ..optim import BASE_OPTIMIZERS, base_of, base_options, list_optimizers, method_options
from ..sparse import list_sparse_methods

__all__ = ["TrainConfig", "load_config_file", "OPTIMIZER_FIELDS", "convert", "optimizer_fields", "Layer",
           "not_taken_message", "field_kinds", "field_help"]

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
    "theta": "theta",
    "m": "m",
    "num_data": "num_data",
}

# Fields of the base optimizer that not every base reads (checked where a flag sets them).
_BASE_FIELDS = {"momentum": "momentum", "nesterov": "nesterov", "damping": "damping"}


def optimizer_fields(method: str) -> list[str]:
    """The config fields of `OPTIMIZER_FIELDS` that the optimizer `method` reads (none for a base optimizer alone).

    Raises `UsageError` for an unknown method.
    """
    accepted = method_options(method)
    return [key for key, arg in OPTIMIZER_FIELDS.items() if arg in accepted]


def not_taken_message(method: str, keys: list[str], where: str = "") -> str:
    """The error for method options that the optimizer `method` does not read."""
    takes = optimizer_fields(method)
    offer = f"it takes {', '.join(takes)}" if takes else "it takes no method options"
    return (f"optimizer {method!r} does not take {', '.join(keys)}{where}; {offer}"
            " (a config file keeps other methods' settings in sections, e.g. 'esam: {beta: 0.6}')")


def _one_of(names) -> str:
    """`a, b or c`."""
    names = list(names)
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


# The help of a field whose values are registry names is built when the parser is (a callable in
# its metadata), so that it lists every name registered by then, not a copy that falls behind.
def _dataset_help() -> str:
    return _one_of(f"{name} (embedded, no files)" if is_embedded(name) else name for name in list_datasets())


def _optimizer_help() -> str:
    return f"{_one_of(list_optimizers())} (see `flatlab list`)"


def _base_help() -> str:
    return f"base optimizer of a SAM-family method: {_one_of(BASE_OPTIMIZERS)}"


def _sparse_help() -> str:
    return f"sparse training: {_one_of(list_sparse_methods())} (default: dense)"


@dataclass
class TrainConfig:
    """Everything that defines a run.

    Only the fields that differ between seeds of one experiment should be `seed`; `compare` groups runs whose
    configs are equal but for it.
    """

    # data
    dataset: str = field(default="digits", metadata={"help": _dataset_help})
    data_root: str | None = field(default=None, metadata={
        "help": "folder (or .tar.gz for imagefolder) of the dataset files (default: the data cache; none for the "
                "embedded digits)"})
    download: bool = field(default=False, metadata={
        "help": "download missing official dataset files (CIFAR, MNIST, Fashion-MNIST)"})
    stream: bool = field(default=False, metadata={
        "help": "decode an image folder too large for memory (ImageNet) per batch, with --workers"})
    workers: int = field(default=4, metadata={"help": "data-loading processes for --stream"})
    train_subset: int | None = field(default=None, metadata={
        "help": "train on this many (seeded random) training samples, for CPU-scale studies (default: all)"})
    test_subset: int | None = field(default=None, metadata={
        "help": "evaluate on this many (fixed random) test samples (default: all)"})
    holdout: int | None = field(default=None, metadata={
        "help": "evaluate on this many training samples held out of training (the same for every seed) "
                "instead of the test set: tune hyper-parameters without touching the test set (default: none, "
                "the test set)"})
    crop_padding: int | None = field(default=None, metadata={
        "help": "padding in pixels of the random crop (default: 4 for images >= 28 px, 1 below)"})
    flip: bool | None = field(default=None, metadata={
        "help": "random horizontal flips (default: on for 3-channel images, off for grey ones)"})
    cutout: int = field(default=0, metadata={"help": "side in pixels of the square erased per training image (0: off)"})
    # model
    model: str | None = field(default=None, metadata={
        "help": "model name (see `flatlab list`) (default: cnn for digits, resnet18 otherwise)"})
    width: float = field(default=1.0, metadata={
        "help": "channel multiplier of the model, for CPU-scale runs (1.0: the published one)"})
    model_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "extra model options as JSON, e.g. '{\"alpha\": 270}' (default: none)"})
    # optimizer
    optimizer: str = field(default="sam", metadata={"help": _optimizer_help})
    base: str = field(default="sgd", metadata={"help": _base_help})
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
    k: int | None = field(default=None, metadata={
        "help": "LookSAM: steps between full SAM steps; Lookbehind-SAM: ascent/descent steps on each batch"})
    alpha: float | None = field(default=None, metadata={
        "help": "LookSAM: weight of the reused orthogonal gradient; GSAM: weight of the surrogate-gap term; "
                "Lookbehind-SAM: step of the slow weights towards the fast ones, in (0, 1], adaptive if not given; "
                "RWP: weight of the perturbed gradient in the mix"})
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
    theta: float | None = field(default=None, metadata={
        "help": "VaSSO: weight of the new gradient in the moving average the ascent follows (1: SAM)"})
    m: int | None = field(default=None, metadata={
        "help": "two-pass methods: m-sharpness, the batch split into groups of m samples, each perturbed along its "
                "own gradient (default: one group, the batch)"})
    num_data: int | None = field(default=None, metadata={
        "help": "bSAM: training samples its noise is scaled by (default: the training set's size)"})
    damping: float | None = field(default=None, metadata={
        "help": "bSAM: damping added to its precision, read by its base 'bsam' (default: 0.1)"})
    max_grad_norm: float | None = field(default=None, metadata={
        "help": "SAM family: clip the descent gradient to this global norm (default: no clipping)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the cross-entropy, in [0, 1)"})
    # schedule
    epochs: int = field(default=10, metadata={"help": "training epochs"})
    batch_size: int = field(default=128, metadata={"help": "training batch size (over all processes)"})
    fsdp: bool = field(default=False, metadata={
        "help": "under torchrun, shard parameters, gradients and optimizer state over the processes (FSDP2) "
                "instead of replicating them (DDP)"})
    accumulate: int = field(default=1, metadata={
        "help": "gradient accumulation: split each process's batch into this many parts, one part's "
                "activations in memory at a time; the step equals the step on the whole batch for models "
                "whose layers treat samples apart, not with BatchNorm, which normalises each part by its "
                "own statistics (the default CNN and the ResNets have it; the mlp does not)"})
    lr_schedule: str = field(default="cosine", metadata={"help": "learning-rate schedule: cosine, step or constant"})
    warmup_epochs: float = field(default=0.0, metadata={
        "help": "linear learning-rate warm-up over this many (possibly fractional) epochs"})
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75], metadata={
        "help": "step schedule: comma-separated fractions of training, e.g. 0.5,0.75"})
    lr_decay: float = field(default=0.1, metadata={"help": "step schedule: learning-rate factor at each milestone"})
    # sparse training
    sparse: str | None = field(default=None, metadata={"help": _sparse_help})
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
        "help": "run directory name under --out, a plain name without '/' (default: derived from the config)"})
    tensorboard: bool = field(default=False, metadata={
        "help": "also write the per-epoch metrics for TensorBoard into RUN/tensorboard (needs the tensorboard "
                "package: pip install flatlab[tensorboard])"})

    def __post_init__(self) -> None:
        for f in fields(self):
            try:
                setattr(self, f.name, convert(f.name, getattr(self, f.name)))
            except UsageError as err:
                raise UsageError(f"{f.name}: {err}") from None
        self.validate()

    def validate(self) -> None:
        """Raises `UsageError` naming the first field out of range.

        The optimizer's hyper-parameters are checked by the optimizer (`check_optimizer`).
        """
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise UsageError(what)

        for name in ("epochs", "batch_size", "eval_every", "sparse_interval", "accumulate"):
            check_number(name, getattr(self, name), low=1, integer=True)
        for name in ("train_subset", "test_subset", "holdout", "threads"):
            check_number(name, getattr(self, name), low=1, integer=True, optional=True)
        need(self.holdout is None or self.test_subset is None,
             "holdout evaluates on held-out training samples instead of the test set: drop test_subset")
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
        # the run directory is out/name: a name that is a path would put the run outside --out
        need(self.name is None or (self.name not in ("", ".", "..") and not any(s in self.name for s in "/\\\0")),
             f"name must be a plain folder name (not empty, '.' or '..', and without '/' or '\\'): the run goes "
             f"into out/name; got name={self.name!r}")
        need(self.data_root is None or not is_embedded(self.dataset),
             f"the {self.dataset} dataset is embedded in flatlab and reads no files: drop data_root "
             f"(--data-root {self.data_root})")
        taken = optimizer_fields(self.optimizer)
        extra = [k for k in OPTIMIZER_FIELDS if getattr(self, k) is not None and k not in taken]
        if extra:
            raise UsageError(not_taken_message(self.optimizer, extra))

    # ------------------------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        """The names of the config keys."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str | None = "<dict>", *, lenient: bool = False) -> TrainConfig:
        """A config from one mapping of fields (and method sections); `source` names it in errors.

        `lenient` drops method options the chosen method does not read, and a data root of an embedded dataset,
        instead of refusing them (for configs saved by older versions, where such options had no effect).
        """
        return cls.from_layers([Layer(values, source)], lenient=lenient)

    @classmethod
    def from_layers(cls, layers: list[Layer], *, lenient: bool = False) -> TrainConfig:
        """Merges `layers` (later ones win) over the defaults: each value converted to its field's
        type, the chosen method's section of each layer applied right after that layer's flat keys,
        and every method option checked against the method (see the module docstring).
        """
        names = set(cls.field_names())
        optimizers = set(list_optimizers())
        flat: list[tuple[dict[str, Any], Layer]] = []
        sections: list[tuple[dict[str, dict[str, Any]], Layer]] = []
        for layer in layers:
            if not isinstance(layer.values, dict):
                kind = type(layer.values).__name__
                raise UsageError(f"{layer.source} must hold a mapping of config keys, got {kind}")
            values, own = {}, {}
            for key, value in layer.values.items():
                if key in names:
                    values[key] = layer.convert(key, value)
                elif key in optimizers and isinstance(value, dict):
                    own[key] = cls._section(key, value, layer)
                elif isinstance(value, dict):
                    raise UsageError(f"unknown config key {key!r}{layer.where(key)}: not a field, nor a method "
                                     f"whose section it could be ({', '.join(sorted(optimizers))})")
                else:
                    raise UsageError(f"unknown config key {key!r}{layer.where(key)}")
            flat.append((values, layer))
            sections.append((own, layer))
        optimizer = "sam"
        for values, _ in flat:
            optimizer = values.get("optimizer", optimizer)
        merged: dict[str, Any] = {}
        origin: dict[str, Layer] = {}
        for (values, layer), (own, _) in zip(flat, sections):
            for key, value in [*values.items(), *own.get(optimizer, {}).items()]:
                merged[key], origin[key] = value, layer
        method_optimizer = merged.get("optimizer", "sam")
        taken = set(optimizer_fields(method_optimizer))
        extra = [k for k in OPTIMIZER_FIELDS if merged.get(k) is not None and k not in taken]
        if extra and lenient:
            merged = {k: v for k, v in merged.items() if k not in extra}
        elif extra:
            raise UsageError(not_taken_message(method_optimizer, extra[:1], origin[extra[0]].where(extra[0], "set")))
        if lenient and merged.get("data_root") is not None and is_embedded(merged.get("dataset", "digits")):
            del merged["data_root"]
        base = base_of(method_optimizer, merged.get("base", "sgd"))
        for key, arg in _BASE_FIELDS.items():
            if key in merged and origin[key].source is None and arg not in base_options(base):
                raise UsageError(f"base optimizer {base!r} does not take {key} (set by --{key}); "
                                 f"it takes {', '.join(sorted(base_options(base)))}")
        return cls(**merged)

    @classmethod
    def _section(cls, method: str, values: dict[str, Any], layer: Layer) -> dict[str, Any]:
        """The settings of the section `method` of `layer`, converted and checked."""
        where = Layer(values, f"{layer.source}, section {method!r}" if layer.source else f"section {method!r}")
        out = {}
        for key, value in values.items():
            if key not in cls.field_names() or key == "optimizer":
                raise UsageError(f"unknown key {key!r} in section {method!r}{layer.where(key)}")
            if key in OPTIMIZER_FIELDS and value is not None and key not in optimizer_fields(method):
                raise UsageError(not_taken_message(method, [key], where.where(key, "set")))
            out[key] = where.convert(key, value)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)

    def optimizer_kwargs(self) -> dict[str, Any]:
        """The SAM-family hyper-parameters that were set, under the optimizer's argument names."""
        return {arg: getattr(self, key) for key, arg in OPTIMIZER_FIELDS.items() if getattr(self, key) is not None}

    def run_name(self) -> str:
        """The run directory's name: `name`, else one built from the dataset, model, method and seed."""
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


@dataclass(frozen=True)
class Layer:
    """One source of config values: a file (`source` names it), a study's entry, or the command
    line (`source=None`: the values are flags).
    """

    values: dict[str, Any]
    source: str | None = "<dict>"

    def where(self, key: str, verb: str = "") -> str:
        """Where `key` came from, for an error message."""
        if self.source is None:
            return f" ({verb + ' ' if verb else ''}by --{key.replace('_', '-')})"
        return f" ({verb + ' ' if verb else ''}in {self.source})"

    def convert(self, key: str, value: Any) -> Any:
        """`value` converted to the type of `key`, or an error naming where it came from."""
        try:
            return convert(key, value)
        except UsageError as err:
            name = f"--{key.replace('_', '-')}" if self.source is None else key
            where = "" if self.source is None else f" (in {self.source})"
            raise UsageError(f"{name}: {err}{where}") from None


def field_help(name: str) -> str:
    """The help of field `name`'s flag: its text and, where the text does not say it, its default
    (`None` of a method option: the method's own).
    """
    f = next(f for f in fields(TrainConfig) if f.name == name)
    text = f.metadata["help"]
    text = text() if callable(text) else text
    if "(default" in text:
        return text
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if value is None:
        if name not in OPTIMIZER_FIELDS:
            raise TypeError(f"the help of {name} must say what its default None means")
        shown = "the method's"
    elif isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, list):
        shown = ",".join(map(str, value))
    else:
        shown = str(value)
    return f"{text} (default: {shown})"


@functools.cache
def field_kinds() -> dict[str, tuple[Any, bool]]:
    """`{field: (type, optional)}` from the annotations (strings under PEP 563)."""
    hints = typing.get_type_hints(TrainConfig)
    kinds = {}
    for f in fields(TrainConfig):
        kind, optional = hints[f.name], False
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            kind, optional = args[0], len(args) < len(typing.get_args(kind))
        kinds[f.name] = (typing.get_origin(kind) or kind, optional)
    return kinds


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             list: "a list of numbers (e.g. 0.5,0.75)", dict: "a mapping (JSON object, e.g. '{\"alpha\": 270}')"}


def _number(value: Any) -> float | int:
    """A number from a number or its text in YAML's or Python's spelling; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip().lower().replace("_", "")
    core = text.lstrip("+-")
    if core in (".inf", "inf", "infinity"):
        return -math.inf if text.startswith("-") else math.inf
    if core in (".nan", "nan"):
        return math.nan
    try:
        return int(text, 0)
    except ValueError:
        return float(text)


def convert(key: str, value: Any) -> Any:
    """`value` as the type of the config field `key`: numbers from their text (`"5e-4"`), whole
    floats to ints; a `UsageError` "expected <type>, got <value>" for anything else (a string
    for a flag that is true or false, `1.5` for an integer, a list for a number...).
    """
    kind, optional = field_kinds()[key]
    if value is None:
        if optional:
            return None
        raise UsageError(f"expected {_EXPECTED[kind]}, got null")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
        elif kind is int:
            number = _number(value)
            if isinstance(number, int) or (math.isfinite(number) and float(number).is_integer()):
                return int(number)
        elif kind is float:
            return float(_number(value))
        elif kind is str:
            if isinstance(value, str):
                return value
        elif kind is list:
            items = value.split(",") if isinstance(value, str) else value
            if isinstance(items, (list, tuple)):
                return [float(_number(v.strip() if isinstance(v, str) else v)) for v in items if v != ""]
            return [float(_number(items))]
        elif kind is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if isinstance(value, dict) and all(isinstance(k, str) for k in value):
                return dict(value)
    except (ValueError, TypeError, OverflowError):
        pass
    raise UsageError(f"expected {_EXPECTED[kind]}{' or null' if optional else ''}, got {value!r}")
