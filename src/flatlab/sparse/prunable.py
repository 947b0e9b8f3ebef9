"""Which tensors sparse training masks: the weights of convolutions and linear layers.

Biases and normalisation parameters are few and stay dense, as in SNIP, GraSP, SET and RigL. Every
layer is masked by default (RigL's ERK setting, and S2-SAM's CIFAR runs); `keep_first` and
`keep_last` keep the stem and the classifier dense, as several ImageNet set-ups do.
"""

from __future__ import annotations

from torch import nn

from ..models.flops import LAYER_TYPES

__all__ = ["PRUNABLE_TYPES", "prunable_parameters"]

# the layers whose FLOPs are counted are the layers whose weights are pruned
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = LAYER_TYPES


def prunable_parameters(
    model: nn.Module,
    *,
    keep_first: bool = False,
    keep_last: bool = False,
    layer_types: tuple[type[nn.Module], ...] = PRUNABLE_TYPES,
) -> list[tuple[str, nn.Parameter]]:
    """`(name, weight)` of every conv/linear layer of `model` that requires grad, in
    registration order, each tensor once (a weight shared by two layers is listed under its first
    name).

    `keep_first` leaves out the first such layer (usually the stem convolution), `keep_last`
    the last one (usually the classifier).

    Example:
        ```python
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 10))
        >>> [name for name, _ in prunable_parameters(net)]
        ['0.weight', '2.weight']
        >>> [name for name, _ in prunable_parameters(net, keep_last=True)]
        ['0.weight']

        ```
    """
    found: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, layer_types) or not isinstance(weight, nn.Parameter):
            continue
        if not weight.requires_grad or id(weight) in seen:
            continue
        seen.add(id(weight))
        found.append((f"{module_name}.weight" if module_name else "weight", weight))
    if keep_first:
        found = found[1:]
    if keep_last:
        found = found[:-1]
    return found
