"""Small models for tiny datasets (8x8 digits, 28x28 Fashion-MNIST, 32x32 CIFAR) and quick tests."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check_number
from ._layers import init_weights, scaled
from .registry import register_model


class MLP(nn.Module):
    """Pools the image to `pool_size` x `pool_size`, flattens it, then Linear-ReLU layers.

    The fixed-size pooling is what lets one model take any resolution without lazy layers; it is
    the identity when the input already has that size (8x8 digits by default). Pass
    `pool_size=28` to see full-resolution Fashion-MNIST.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        hidden: Sequence[int] = (256, 256),
        pool_size: int = 8,
    ):
        super().__init__()
        check_number("pool_size", pool_size, low=1, integer=True)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        features = in_channels * pool_size * pool_size
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, h in enumerate(hidden, start=1):
            out = scaled(h, width)
            layers[f"fc{i}"] = nn.Linear(features, out)
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            features = out
        self.hidden = nn.Sequential(layers)
        self.fc = nn.Linear(features, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch."""
        x = torch.flatten(self.pool(x), 1)
        return self.fc(self.hidden(x))


class SmallCNN(nn.Module):
    """Conv3x3-BN-ReLU blocks, a 2x2 max-pool after each block but the first, global average
    pooling and a linear classifier; 8x8 inputs still end at 2x2 before the global pool.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        channels: Sequence[int] = (32, 64, 128),
    ):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in = in_channels
        for i, c in enumerate(channels, start=1):
            c_out = scaled(c, width)
            layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            layers[f"bn{i}"] = nn.BatchNorm2d(c_out)
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            if i > 1:
                layers[f"pool{i}"] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
            c_in = c_out
        self.features = nn.Sequential(layers)
        self.fc = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch."""
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(torch.flatten(x, 1))


@register_model("mlp")
def mlp(
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    hidden: Sequence[int] = (256, 256),
    pool_size: int = 8,
) -> MLP:
    """Two hidden layers of 256 units (times `width`) on the image pooled to `pool_size`^2."""
    return MLP(num_classes, in_channels, width, hidden, pool_size)


@register_model("cnn")
def cnn(
    num_classes: int = 10, in_channels: int = 3, width: float = 1.0, channels: Sequence[int] = (32, 64, 128)
) -> SmallCNN:
    """Three conv-BN-ReLU blocks (32/64/128 channels times `width`); ~93k parameters on CIFAR."""
    return SmallCNN(num_classes, in_channels, width, channels)
