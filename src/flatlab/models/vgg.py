"""CIFAR VGG with BatchNorm and a single linear classifier.

This is the VGG of the sparse-training literature (SNIP/GraSP code, followed by S2-SAM's VGG-19 and
SSAM's VGG-11-BN): conv3x3-BN-ReLU layers, five 2x2 max-pools, then one `Linear(512, classes)`
instead of ImageNet's three-layer 4096-wide head. Convs carry no bias since BN follows each one.
VGG-19-BN on CIFAR-10: 20.04M parameters.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ._layers import init_weights, scaled
from .registry import register_model

# "M" is a 2x2 max-pool.
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
    + [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """Conv stack from a config list, adaptive average pooling, one linear classifier."""

    def __init__(
        self, config: list[int | str], num_classes: int = 10, in_channels: int = 3, width: float = 1.0
    ):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        conv_i = pool_i = 0
        channels = in_channels
        for v in config:
            if v == "M":
                pool_i += 1
                # ceil_mode lets inputs smaller than 32x32 (e.g. 8x8 digits) survive all five pools.
                layers[f"pool{pool_i}"] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
            else:
                conv_i += 1
                out = scaled(int(v), width)
                # Names conv{i} / bn{i} (not Sequential indices) let param-group helpers spot norm layers.
                layers[f"conv{conv_i}"] = nn.Conv2d(channels, out, 3, padding=1, bias=False)
                layers[f"bn{conv_i}"] = nn.BatchNorm2d(out)
                layers[f"relu{conv_i}"] = nn.ReLU(inplace=True)
                channels = out
        self.features = nn.Sequential(layers)
        # At 32x32 the five pools already leave 1x1, so this only matters for other resolutions.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch."""
        x = self.avgpool(self.features(x))
        return self.fc(torch.flatten(x, 1))


@register_model("vgg11-bn")
def vgg11_bn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGG:
    """VGG-11-BN for CIFAR (8 convs + 1 linear); SSAM's appendix model. 9.23M parameters for 10 classes."""
    return VGG(CONFIGS["vgg11"], num_classes, in_channels, width)


@register_model("vgg19-bn")
def vgg19_bn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGG:
    """VGG-19-BN for CIFAR (16 convs + 1 linear); S2-SAM's VGG-19. 20.04M parameters for 10 classes."""
    return VGG(CONFIGS["vgg19"], num_classes, in_channels, width)
