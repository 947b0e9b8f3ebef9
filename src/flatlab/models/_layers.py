"""Pieces shared by the model families: width scaling and the reference initialisation."""

from __future__ import annotations

from torch import nn


def scaled(channels: int, width: float) -> int:
    """Channel count after applying the width multiplier; never below 1 so tiny widths still build."""
    return max(1, round(channels * width))


def init_weights(model: nn.Module) -> None:
    """He (fan-out) init for convs, BN as identity, zero linear biases.

    This is what the reference CIFAR/ImageNet ResNet, WRN and PyramidNet code does; the linear
    weight keeps PyTorch's default, as torchvision does.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
