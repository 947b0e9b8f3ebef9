"""Analysis tools for sharpness-aware training: curvature, landscapes, gradient statistics,
corruption robustness, memory and FLOPs (re-exported from `flatlab.models.flops`), following the SSAM,
ESAM and S2-SAM papers' figures.

Every function takes the model, the data (an iterable of `(inputs, targets)` batches, read once)
and the loss (`loss_fn(outputs, targets) -> scalar`, default cross-entropy) explicitly, and leaves
the model's parameters, buffers and train/eval mode as it found them. The plot writers import
matplotlib only when they draw, so `import flatlab.analysis` works without it.
"""

from ..models.flops import FlopCount, forward_flops, training_flops, training_step_flops
from ._common import Evaluation, evaluate
from .corruptions import CIFAR10C_PARAMS, corrupt, evaluate_corruptions, jpeg_compress, list_corruptions
from .gradstats import (
    RelativeGradientDifference,
    SDSStatistics,
    linearity,
    relative_gradient_difference,
    sam_perturbation,
    sds_statistics,
)
from .hessian import (
    HessianEigen,
    HessianOperator,
    LanczosResult,
    SpectralDensity,
    TraceEstimate,
    gaussian_density,
    hessian_vector_product,
    hutchinson,
    hutchinson_trace,
    lanczos,
    spectral_density,
    stochastic_lanczos_quadrature,
    top_eigenvalues,
)
from .landscape import (
    Surface1D,
    Surface2D,
    adversarial_directions,
    averaged_loss_surface_1d,
    averaged_loss_surface_2d,
    filter_normalize,
    gaussian_direction_pairs,
    gradient_direction,
    loss_surface_1d,
    loss_surface_2d,
    random_direction,
)
from .memory import PeakMemory, peak_memory, state_bytes
from .plots import (
    plot_corruption_table,
    plot_curves_1d,
    plot_eigen_density,
    plot_relative_gradient_histogram,
    plot_surface_2d,
)

__all__ = [
    # hessian
    "HessianOperator", "hessian_vector_product", "LanczosResult", "lanczos", "HessianEigen",
    "top_eigenvalues", "TraceEstimate", "hutchinson", "hutchinson_trace", "SpectralDensity",
    "stochastic_lanczos_quadrature", "gaussian_density", "spectral_density",
    # landscape
    "filter_normalize", "random_direction", "gaussian_direction_pairs", "gradient_direction",
    "adversarial_directions", "Surface1D", "Surface2D", "loss_surface_1d", "loss_surface_2d",
    "averaged_loss_surface_1d", "averaged_loss_surface_2d",
    # gradstats
    "sam_perturbation", "RelativeGradientDifference", "relative_gradient_difference", "SDSStatistics",
    "sds_statistics", "linearity",
    # corruptions
    "CIFAR10C_PARAMS", "list_corruptions", "corrupt", "jpeg_compress", "evaluate_corruptions",
    # flops
    "FlopCount", "forward_flops", "training_step_flops", "training_flops",
    # memory
    "PeakMemory", "peak_memory", "state_bytes",
    # evaluation (shared with training)
    "Evaluation", "evaluate",
    # plots
    "plot_curves_1d", "plot_surface_2d", "plot_eigen_density", "plot_relative_gradient_histogram",
    "plot_corruption_table",
]  # fmt: skip
