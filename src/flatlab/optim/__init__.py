"""The SAM family behind the torch.optim interface, composed from four policies."""

from .batchnorm import frozen_bn_stats
from .coordinates import (
    AllCoordinates,
    Coordinates,
    DynamicMask,
    FisherMask,
    MaskedCoordinates,
    RandomTensors,
)
from .fisher import empirical_fisher
from .presets import ASAM, ESAM, S2SAM, SAM, SSAM
from .registry import BASE_OPTIMIZERS, create_optimizer, list_optimizers, param_groups, register_optimizer
from .samples import AllSamples, PerSampleClosure, Samples, SharpnessSensitive, per_sample
from .shapes import Adaptive, LpBall, Shape
from .sharpness_aware import SharpnessAware

__all__ = [
    "SharpnessAware", "SAM", "ASAM", "ESAM", "SSAM", "S2SAM",
    "create_optimizer", "list_optimizers", "register_optimizer", "param_groups", "BASE_OPTIMIZERS",
    "Shape", "LpBall", "Adaptive",
    "Coordinates", "AllCoordinates", "RandomTensors", "MaskedCoordinates", "FisherMask", "DynamicMask",
    "Samples", "AllSamples", "SharpnessSensitive", "PerSampleClosure", "per_sample",
    "frozen_bn_stats", "empirical_fisher",
]  # fmt: skip
