"""flatlab: Sharpness-Aware Minimization and the methods that make it cheaper and stronger."""

from .optim import (
    ASAM,
    ESAM,
    S2SAM,
    SAM,
    SSAM,
    PerSampleClosure,
    SharpnessAware,
    create_optimizer,
    frozen_bn_stats,
    list_optimizers,
    param_groups,
    per_sample,
)

__version__ = "0.1.0"

__all__ = [
    "SAM", "ASAM", "ESAM", "SSAM", "S2SAM", "SharpnessAware",
    "create_optimizer", "list_optimizers", "param_groups",
    "per_sample", "PerSampleClosure", "frozen_bn_stats",
]  # fmt: skip
