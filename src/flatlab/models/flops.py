"""Forward and training FLOPs, total and per conv/linear layer.

SSAM (Mi et al., NeurIPS 2022) Tables 1-3 list a "FLOPs" column "theoretically estimated by
considering sparse multiplication compared to SGD" (SGD = 1, SAM = 2); sparse training (S2-SAM)
likewise scales each layer's cost by its density. To make such estimates, `forward_flops` measures
a model's forward cost per sample with `torch.utils.flop_counter.FlopCounterMode` and breaks it
down per convolution / linear module, so that `training_flops` can scale each layer by a density.

Counting convention (FlopCounterMode's): a multiply-add is 2 FLOPs; only matrix products and
convolutions are counted (bias additions, normalisation, activations and pooling are not), e.g. a
`Conv2d` costs `2 * C_out * H_out * W_out * (C_in / groups) * k_h * k_w` per sample and a
`Linear` `2 * in_features * out_features`.

Training cost: the backward pass of a matmul/conv layer computes the gradient with respect to the
input and with respect to the weight, each about as costly as the forward product, hence the usual
estimate `forward + backward ~ 3 x forward` per forward-backward pass (`backward_factor=2`). SGD
makes one pass per step, SAM two, so SAM costs 2x SGD as in SSAM's tables; the first layer's input
gradient, which is not needed, is not subtracted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FlopCount", "forward_flops", "training_step_flops", "training_flops"]

LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


@dataclass
class FlopCount:
    """Forward FLOPs per sample: `total`, `per_layer` (module name -> FLOPs for every conv/linear
    module, in `named_modules` order, a module called twice counted twice) and `other` (the
    counted FLOPs outside those modules, e.g. a functional matmul).
    """

    total: int
    per_layer: dict[str, int] = field(default_factory=dict)

    @property
    def other(self) -> int:
        """FLOPs not attributed to a named layer."""
        return self.total - sum(self.per_layer.values())


def forward_flops(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    layer_types: tuple[type[nn.Module], ...] = LAYER_TYPES,
    dtype: torch.dtype | None = None,
) -> FlopCount:
    """Forward FLOPs per sample of `model` on inputs of shape `input_shape` (without batch dim).

    The model runs once in eval mode under `no_grad` on zeros of shape `(batch_size, *input_shape)`
    (dtype of the first floating parameter unless given), on its own device; counts are divided by
    `batch_size`. Its training flag is restored afterwards.

    Example:
        ```python
        fc = forward_flops(model, (3, 32, 32))
        fc.total, fc.per_layer["conv1"]
        ```
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if dtype is None:
        dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
    x = torch.zeros((batch_size, *input_shape), dtype=dtype, device=device)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for m, mode in modes:
            m.training = mode
    counts = counter.get_flop_counts()
    # FlopCounterMode names a submodule "<RootClass>.<qualified name>".
    prefix = type(model).__name__
    per_layer = {}
    for name, module in model.named_modules():
        if name and isinstance(module, layer_types):
            flops = sum(counts.get(f"{prefix}.{name}", {}).values())
            per_layer[name] = int(flops) // batch_size
    return FlopCount(int(counter.get_total_flops()) // batch_size, per_layer)


def training_step_flops(
    model: nn.Module, input_shape: Sequence[int], *, passes: float = 1.0, backward_factor: float = 2.0
) -> float:
    """Training FLOPs per sample of one optimiser step: `passes * (1 + backward_factor) * forward`.

    `passes` is the number of forward-backward passes per step (SGD 1, SAM 2, S2-SAM 1).

    Example:
        ```python
        sgd = training_step_flops(model, (3, 32, 32))
        sam = training_step_flops(model, (3, 32, 32), passes=2)     # == 2 * sgd
        ```
    """
    return passes * (1.0 + backward_factor) * forward_flops(model, input_shape).total


def training_flops(
    per_layer: Mapping[str, float],
    densities: Mapping[str, float] | None = None,
    passes: float = 1.0,
    *,
    backward_factor: float = 2.0,
) -> float:
    """Per-sample training FLOPs of one step with every layer's cost scaled by its density.

    `sum_l per_layer[l] * densities.get(l, 1) * (1 + backward_factor) * passes`: a layer with
    density `d` (fraction of non-zero weights) costs `d` times its dense forward and backward (the
    sparse-multiplication estimate of SSAM's FLOPs column). Only layers in `per_layer` are counted;
    add `FlopCount.other` yourself if it matters. Unknown layer names in `densities` and
    densities outside [0, 1] raise `ValueError`.

    Example:
        ```python
        fc = forward_flops(model, (3, 32, 32))
        dense = training_flops(fc.per_layer)
        sparse = training_flops(fc.per_layer, {name: 0.1 for name in fc.per_layer})  # 90% sparse
        ```
    """
    densities = dict(densities or {})
    unknown = set(densities) - set(per_layer)
    if unknown:
        raise ValueError(f"densities name layers not in per_layer: {sorted(unknown)}")
    for name, d in densities.items():
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"density of {name!r} must be in [0, 1], got {d}")
    if passes < 0:
        raise ValueError(f"passes must be >= 0, got {passes}")
    forward = sum(f * densities.get(name, 1.0) for name, f in per_layer.items())
    return passes * (1.0 + backward_factor) * forward
