"""Sparse training: weight masks at a target sparsity, built by a static criterion (random,
magnitude, SNIP, GraSP) or moved during training (SET, RigL), enforced through every optimizer of
the SAM family; layer-wise budgets (uniform, ERK); FLOPs relative to dense SGD.

The mask arithmetic (`flatlab.optim.topk`) is shared with SSAM's perturbation masks and re-exported here.

Example:
    ```python
    masking = flatlab.sparse.create_masking("rigl", model, 0.9, total_steps=10_000)
    masking.init()
    masking.attach(opt)
    ...  # after every opt.step(): masking.after_step()
    ```
"""

from ..optim.topk import (
    count_for_density,
    drop_grow,
    drop_grow_per_tensor,
    random_mask,
    random_mask_per_tensor,
    topk_mask,
    topk_mask_per_tensor,
)
from .allocation import DISTRIBUTIONS, erk_densities, layer_counts, layer_densities, uniform_densities
from .flops import dense_gradient_fraction, masking_flops, relative_flops, step_flops
from .masking import DYNAMIC_METHODS, STATIC_METHODS, WeightMasking
from .prunable import PRUNABLE_TYPES, prunable_parameters
from .registry import create_masking, list_sparse_methods

__all__ = [
    "WeightMasking", "create_masking", "list_sparse_methods", "STATIC_METHODS", "DYNAMIC_METHODS",
    "DISTRIBUTIONS", "uniform_densities", "erk_densities", "layer_densities", "layer_counts",
    "PRUNABLE_TYPES", "prunable_parameters",
    "step_flops", "relative_flops", "masking_flops", "dense_gradient_fraction",
    "count_for_density", "topk_mask", "random_mask", "drop_grow",
    "topk_mask_per_tensor", "random_mask_per_tensor", "drop_grow_per_tensor",
]  # fmt: skip
