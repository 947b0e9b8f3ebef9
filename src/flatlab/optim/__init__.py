"""The SAM family behind the torch.optim interface, composed from seven policies, one module each:
which gradient drives the perturbation (`sources`), how it is shaped (`shapes`), which
coordinates move (`coordinates`), which samples drive the descent (`samples`), when the extra
pass is taken (`schedules`), how the descent gradient is formed (`descents`) and the radius over
training (`radius`).
"""

from .batchnorm import frozen_bn_stats
from .bayes import BSAMBase
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
from .descents import (
    Descent,
    MixedGradient,
    OrthogonalReuse,
    PerturbedGradient,
    PrecisionGradient,
    SurrogateGap,
    WeightedSharpness,
)
from .fisher import empirical_fisher
from .lookbehind import FastWeights, LookbehindSAM
from .presets import (
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
from .shapes import AdaptiveBall, AsDrawn, CentralisedBall, LpBall, PrecisionScaled, Shape
from .sharpness_aware import Phase, SharpnessAware, step_passes
from .sources import (
    AveragedGradient,
    BatchGradient,
    FilterNoise,
    FriendlyGradient,
    GradientSource,
    MomentumDirection,
    NoisyGradient,
    PreviousGradient,
)

__all__ = [
    "SharpnessAware", "Phase", "SAM", "ASAM", "ESAM", "SSAM", "S2SAM",
    "LookSAM", "AESAM", "RST", "MSAM", "GSAM", "WSAM", "FriendlySAM", "GCSAM", "VaSSO", "SAMON",
    "LookbehindSAM", "FastWeights", "RWP", "BSAM", "BSAMBase",
    "create_optimizer", "list_optimizers", "register_optimizer", "param_groups", "BASE_OPTIMIZERS",
    "is_base_optimizer", "base_of", "base_options", "method_options", "describe_optimizer",
    "GradientSource", "BatchGradient", "PreviousGradient", "MomentumDirection", "FriendlyGradient",
    "AveragedGradient", "FilterNoise", "NoisyGradient",
    "Schedule", "EveryStep", "EveryK", "RandomSwitch", "AdaptiveSwitch",
    "Descent", "PerturbedGradient", "SurrogateGap", "WeightedSharpness", "OrthogonalReuse",
    "MixedGradient", "PrecisionGradient",
    "RhoSchedule", "LRProportional",
    "Shape", "LpBall", "AdaptiveBall", "CentralisedBall", "AsDrawn", "PrecisionScaled",
    "Coordinates", "AllCoordinates", "RandomTensors", "ChosenTensors", "MaskedCoordinates", "FisherMask", "DynamicMask",
    "draw_tensors",
    "Samples", "AllSamples", "AscentGroups", "SharpnessSensitive", "PerSampleClosure", "per_sample", "MicroBatches",
    "micro_batches",
    "Pass", "step_passes", "frozen_bn_stats", "empirical_fisher",
]  # fmt: skip
