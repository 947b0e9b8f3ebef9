"""flatlab: Sharpness-Aware Minimization and the methods that make it cheaper and stronger."""

from .optim import (
    AESAM,
    ASAM,
    BSAM,
    ESAM,
    GCSAM,
    GSAM,
    MSAM,
    RST,
    RWP,
    S2SAM,
    SAM,
    SAMON,
    SSAM,
    WSAM,
    FriendlySAM,
    LookbehindSAM,
    LookSAM,
    PerSampleClosure,
    SharpnessAware,
    VaSSO,
    create_optimizer,
    frozen_bn_stats,
    list_optimizers,
    micro_batches,
    param_groups,
    per_sample,
)

__version__ = "0.1.0"

__all__ = [
    "SAM", "ASAM", "ESAM", "SSAM", "S2SAM", "SharpnessAware",
    "LookSAM", "AESAM", "RST", "MSAM", "GSAM", "WSAM", "FriendlySAM", "GCSAM", "VaSSO", "SAMON", "LookbehindSAM",
    "RWP", "BSAM",
    "create_optimizer", "list_optimizers", "param_groups",
    "per_sample", "PerSampleClosure", "micro_batches", "frozen_bn_stats",
]  # fmt: skip
