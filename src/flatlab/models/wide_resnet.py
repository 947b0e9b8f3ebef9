"""Wide ResNet (Zagoruyko & Komodakis, 2016), the pre-activation CIFAR variant used by SSAM and ESAM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError, check_number
from ._layers import init_weights, scaled
from .registry import register_model


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, 1x1 conv shortcut on shape change."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.equal_in_out = stride == 1 and in_planes == planes
        self.shortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        out = F.relu(self.bn1(x))
        # When the shape changes, the projection reads the pre-activated input, as in the reference code.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-k: 3x3 stem (16 channels), 3 stages of (depth - 4) / 6 blocks with 16k/32k/64k
    channels, final BN-ReLU, global average pooling and a linear classifier.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_number("depth", depth, integer=True)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise UsageError(f"depth must be 6n + 4 with n >= 1, got depth={depth}")
        check_number("widen_factor", widen_factor, low=1)
        check_number("dropout", dropout, low=0, high=1, high_open=True)
        n = (depth - 4) // 6
        stem = scaled(16, width)
        planes = [scaled(c * widen_factor, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        in_planes = stem
        stages = []
        for i, p in enumerate(planes):
            blocks = []
            for j in range(n):
                blocks.append(WideBasicBlock(in_planes, p, 2 if i > 0 and j == 0 else 1, dropout))
                in_planes = p
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch."""
        x = self.layers(self.conv1(x))
        x = self.avgpool(F.relu(self.bn(x)))
        return self.fc(torch.flatten(x, 1))


@register_model("wrn28-10")
def wrn28_10(
    num_classes: int = 10, in_channels: int = 3, width: float = 1.0, dropout: float = 0.0
) -> WideResNet:
    """WideResNet-28-10: 36.48M parameters for 10 classes.

    `dropout` (default 0) sits between the two convs of each block, as in the paper (which uses 0.3 in some runs).
    """
    return WideResNet(28, 10, num_classes, in_channels, width, dropout)
