"""The SAM family behind the torch.optim interface, composed from four policies: which gradient
drives the perturbation (``sources``), how it is shaped (``shapes``), which coordinates move
(``coordinates``) and which samples drive the descent (``samples``)."""

from .batchnorm import frozen_bn_stats
from .coordinates import (
    AllCoordinates,
    Coordinates,
    DynamicMask,
    FisherMask,
    MaskedCoordinates,
    RandomTensors,
    draw_tensors,
)
from .cost import Pass
from .fisher import empirical_fisher
from .presets import ASAM, ESAM, S2SAM, SAM, SSAM
from .registry import (
    BASE_OPTIMIZERS,
    base_of,
    base_options,
    create_optimizer,
    is_base_optimizer,
    list_optimizers,
    method_options,
    param_groups,
    register_optimizer,
)
from .samples import AllSamples, PerSampleClosure, Samples, SharpnessSensitive, per_sample
from .shapes import Adaptive, LpBall, Shape
from .sharpness_aware import Phase, SharpnessAware, step_passes
from .sources import BatchGradient, GradientSource, PreviousGradient

__all__ = [
    "SharpnessAware", "Phase", "SAM", "ASAM", "ESAM", "SSAM", "S2SAM",
    "create_optimizer", "list_optimizers", "register_optimizer", "param_groups", "BASE_OPTIMIZERS",
    "is_base_optimizer", "base_of", "base_options", "method_options",
    "GradientSource", "BatchGradient", "PreviousGradient",
    "Shape", "LpBall", "Adaptive",
    "Coordinates", "AllCoordinates", "RandomTensors", "MaskedCoordinates", "FisherMask", "DynamicMask",
    "draw_tensors",
    "Samples", "AllSamples", "SharpnessSensitive", "PerSampleClosure", "per_sample",
    "Pass", "step_passes", "frozen_bn_stats", "empirical_fisher",
]  # fmt: skip
