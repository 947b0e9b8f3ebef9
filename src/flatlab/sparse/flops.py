"""Theoretical training FLOPs of sparse training with a SAM-family optimizer, relative to dense SGD,
counted the way the sparse-training papers (RigL, S2-SAM) and SSAM's FLOPs column count them.

Per layer: the forward costs its dense forward FLOPs x its density; the backward costs twice the
forward, one product for the input gradient and one for the weight gradient (the convention of
`flatlab.models.training_flops`, which does the counting). A step costs the passes its
optimizer declares (`flatlab.optim.step_passes`), e.g.:

- SGD, AdamW, S2-SAM: one forward-backward pass (S2-SAM reuses the previous gradient);
- SAM, ASAM, SSAM: 1 + `ascent_steps` passes (SSAM's sparse perturbation saves no product);
- ESAM, as flatlab runs it: the ascent pass computes the weight gradient of a fraction `beta` of
  the tensors only (forward + input gradient + beta x weight gradient); with `gamma < 1` a forward
  at w + eps on the whole batch picks the samples, then the descent pass runs on a fraction
  `gamma` of the batch;

so a newly registered optimizer is counted without a table of names. RigL adds, on the steps that
update the mask, the dense weight gradient in place of the sparse one:
`dense_gradient_fraction x (dense - sparse forward)` per step, averaged over the run.

Only conv/linear layers are counted (not BatchNorm, activations, pooling), as in the papers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import nn

from ..errors import check_number
from ..models.flops import forward_flops, training_flops
from ..optim.cost import Pass
from .masking import WeightMasking

__all__ = ["step_flops", "relative_flops", "masking_flops", "dense_gradient_fraction"]


def step_flops(
    per_layer: Mapping[str, float],
    densities: Mapping[str, float] | None = None,
    *,
    passes: Sequence[Pass] = (Pass(),),
    dense_gradient_fraction: float = 0.0,
) -> float:
    """Training FLOPs per sample of one step made of `passes` (default: one forward-backward,
    i.e. SGD; `step_passes(optimizer)` gives an optimizer's).

    `per_layer`: dense forward FLOPs per layer (`forward_flops(model, shape).per_layer`);
    `densities`: layer -> fraction of live weights (missing layers are dense);
    `dense_gradient_fraction`: fraction of steps that compute the dense weight gradient (RigL:
    about `end_fraction / update_interval`).

    Example: one layer of 100 forward FLOPs at density 0.1; SAM's two passes cost 2 x 3 x 10 = 60:

    ```python
    >>> from flatlab.optim import Pass
    >>> step_flops({"fc": 100}, {"fc": 0.1}, passes=(Pass(), Pass()))
    60.0

    ```
    """
    check_number("dense_gradient_fraction", dense_gradient_fraction, low=0.0, high=1.0)

    def cost(rate: float, backward_factor: float = 2.0, dense: bool = False) -> float:
        return training_flops(per_layer, None if dense else densities, rate, backward_factor=backward_factor)

    total = sum(cost(p.rate * p.batch, (1.0 + p.weight_grads) if p.backward else 0.0) for p in passes)
    if dense_gradient_fraction:
        total += cost(dense_gradient_fraction, 0.0, dense=True) - cost(dense_gradient_fraction, 0.0)
    return float(total)


def relative_flops(per_layer: Mapping[str, float], densities: Mapping[str, float] | None = None, **kwargs) -> float:
    """`step_flops` divided by one step of dense SGD on the same layers.

    Example: 90% sparse SGD costs 0.1 of dense SGD, dense SAM 2:

    ```python
    >>> from flatlab.optim import Pass
    >>> relative_flops({"a": 100, "b": 300}, {"a": 0.1, "b": 0.1})
    0.1
    >>> relative_flops({"a": 100, "b": 300}, passes=(Pass(), Pass()))
    2.0

    ```
    """
    return step_flops(per_layer, densities, **kwargs) / step_flops(per_layer)


def masking_flops(
    masking: WeightMasking,
    input_shape: Sequence[int],
    *,
    passes: Sequence[Pass] = (Pass(),),
    model: nn.Module | None = None,
    **kwargs,
) -> float:
    """Training FLOPs relative to dense SGD of `masking.model` (or `model`) at the masking's
    current layer densities, for inputs of `input_shape` (without the batch dimension).

    For RigL the dense-gradient steps are counted from the schedule (updates every
    `update_interval` steps until `end_fraction * total_steps`).

    Example:
        ```python
        masking_flops(masking, (3, 32, 32), passes=step_passes(opt))   # e.g. 0.1 for 90% S2-SAM
        ```
    """
    model = masking.model if model is None else model
    per_layer = forward_flops(model, input_shape).per_layer
    density_of = masking.densities()
    densities = {m: density_of[f"{m}.weight"] for m in per_layer if f"{m}.weight" in density_of}
    if masking.method == "rigl" and "dense_gradient_fraction" not in kwargs:
        kwargs["dense_gradient_fraction"] = dense_gradient_fraction(masking)
    return relative_flops(per_layer, densities, passes=passes, **kwargs)


def dense_gradient_fraction(masking: WeightMasking) -> float:
    """Fraction of a run's steps on which RigL computes a dense gradient."""
    if masking.method != "rigl":
        return 0.0
    if masking.total_steps is None:
        return 1.0 / masking.update_interval
    # due steps: the multiples of update_interval s with 1 <= s <= total_steps and s < end_step
    last = min(masking.total_steps, math.ceil(masking.end_step) - 1)
    return (last // masking.update_interval) / masking.total_steps
