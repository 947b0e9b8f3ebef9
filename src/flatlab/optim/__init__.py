"""The SAM family behind the torch.optim interface, composed from seven policies, one module each:
which gradient drives the perturbation (`sources`), how it is shaped (`shapes`), which
coordinates move (`coordinates`), which samples drive the descent (`samples`), when the extra
pass is taken (`schedules`), how the descent gradient is formed (`descents`) and the radius over
training (`radius`).
"""

from .batchnorm import frozen_bn_stats
from .coordinates import (
    AllCoordinates,
    ChosenTensors,
    Coordinates,
    DynamicMask,
    FisherMask,
    MaskedCoordinates,
    RandomTensors,
    draw_tensors,
)
from .cost import Pass
from .descents import Descent, OrthogonalReuse, PerturbedGradient, SurrogateGap, WeightedSharpness
from .fisher import empirical_fisher
from .lookbehind import FastWeights, LookbehindSAM
from .presets import (
    AESAM,
    ASAM,
    ESAM,
    GCSAM,
    GSAM,
    MSAM,
    RST,
    S2SAM,
    SAM,
    SAMON,
    SSAM,
    WSAM,
    FriendlySAM,
    LookSAM,
    VaSSO,
)
from .radius import LRProportional, RhoSchedule
from .registry import (
    BASE_OPTIMIZERS,
    base_of,
    base_options,
    create_optimizer,
    describe_optimizer,
    is_base_optimizer,
    list_optimizers,
    method_options,
    param_groups,
    register_optimizer,
)
from .samples import (
    AllSamples,
    AscentGroups,
    MicroBatches,
    PerSampleClosure,
    Samples,
    SharpnessSensitive,
    micro_batches,
    per_sample,
)
from .schedules import AdaptiveSwitch, EveryK, EveryStep, RandomSwitch, Schedule
from .shapes import AdaptiveBall, CentralisedBall, LpBall, Shape
from .sharpness_aware import Phase, SharpnessAware, step_passes
from .sources import (
    AveragedGradient,
    BatchGradient,
    FriendlyGradient,
    GradientSource,
    MomentumDirection,
    PreviousGradient,
)

__all__ = [
    "SharpnessAware", "Phase", "SAM", "ASAM", "ESAM", "SSAM", "S2SAM",
    "LookSAM", "AESAM", "RST", "MSAM", "GSAM", "WSAM", "FriendlySAM", "GCSAM", "VaSSO", "SAMON",
    "LookbehindSAM", "FastWeights",
    "create_optimizer", "list_optimizers", "register_optimizer", "param_groups", "BASE_OPTIMIZERS",
    "is_base_optimizer", "base_of", "base_options", "method_options", "describe_optimizer",
    "GradientSource", "BatchGradient", "PreviousGradient", "MomentumDirection", "FriendlyGradient",
    "AveragedGradient",
    "Schedule", "EveryStep", "EveryK", "RandomSwitch", "AdaptiveSwitch",
    "Descent", "PerturbedGradient", "SurrogateGap", "WeightedSharpness", "OrthogonalReuse",
    "RhoSchedule", "LRProportional",
    "Shape", "LpBall", "AdaptiveBall", "CentralisedBall",
    "Coordinates", "AllCoordinates", "RandomTensors", "ChosenTensors", "MaskedCoordinates", "FisherMask", "DynamicMask",
    "draw_tensors",
    "Samples", "AllSamples", "AscentGroups", "SharpnessSensitive", "PerSampleClosure", "per_sample", "MicroBatches",
    "micro_batches",
    "Pass", "step_passes", "frozen_bn_stats", "empirical_fisher",
]  # fmt: skip
