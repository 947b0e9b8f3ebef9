"""ResNets: ResNet-18 with the CIFAR stem, the He et al. (2016) CIFAR ResNet-32, and ImageNet ResNet-50.

The seed papers use ResNet-18 on CIFAR (SSAM, ESAM: first conv replaced by a 3x3 stride-1 conv,
no max-pool), ResNet-32 on CIFAR (S2-SAM) and ResNet-50 on ImageNet (SSAM, ESAM, S2-SAM).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ._layers import init_weights, scaled
from .registry import register_model

_STEMS = ("cifar", "imagenet")
_SHORTCUTS = ("A", "B")


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by striding and zero-pad the new channels (no parameters)."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            # Same output size as the stride-s 3x3 conv with padding 1 (ceil(H / s)) for odd H too.
            x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Option-B shortcut: 1x1 conv + BN."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
            bn=nn.BatchNorm2d(out_planes),
        )
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs (post-activation), with an option-A or option-B shortcut when shapes change."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A" and planes >= in_planes:
            self.shortcut = _PadShortcut(stride, planes - in_planes)
        else:
            self.shortcut = _projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck; the stride sits on the 3x3 conv (torchvision's "ResNet v1.5")."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        if stride == 1 and in_planes == out_planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A" and out_planes >= in_planes:
            self.shortcut = _PadShortcut(stride, out_planes - in_planes)
        else:
            self.shortcut = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, then stages of residual blocks (the first at stride 1, the others at stride 2), global
    average pooling and one linear classifier. Adaptive pooling makes any input resolution work.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        stage_blocks: tuple[int, ...],
        stage_planes: tuple[int, ...],
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        stem: str = "cifar",
        shortcut: str = "B",
    ):
        super().__init__()
        if stem not in _STEMS:
            raise UsageError(f"stem must be one of {_STEMS}, got stem={stem!r}")
        if shortcut not in _SHORTCUTS:
            raise UsageError(f"shortcut must be one of {_SHORTCUTS}, got shortcut={shortcut!r}")
        planes = [scaled(p, width) for p in stage_planes]
        in_planes = planes[0]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, in_planes, 3, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, in_planes, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(in_planes)

        stages = []
        for i, (n, p) in enumerate(zip(stage_blocks, planes)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_planes, p, stride, shortcut))
                in_planes = p * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layers(x))
        return self.fc(torch.flatten(x, 1))


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, stem: str = "cifar") -> ResNet:
    """ResNet-18 (basic blocks [2, 2, 2, 2], 64-512 channels, option-B projection shortcuts).

    Default `stem="cifar"`: 3x3 stride-1 first conv and no max-pool, as in SSAM/ESAM on CIFAR
    (11.17M parameters for 10 classes). `stem="imagenet"` gives the 7x7/2 conv + max-pool stem.
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels, width, stem, "B")


@register_model("resnet32")
def resnet32(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, shortcut: str = "A") -> ResNet:
    """The CIFAR ResNet-32 of He et al. (2016): 3x3 stem, 3 stages of 5 basic blocks, 16/32/64 channels.

    Default `shortcut="A"` (parameter-free zero-padding identity shortcuts, as in the paper's
    CIFAR experiments): 0.46M parameters for 10 classes. `shortcut="B"` uses 1x1 conv + BN
    projections where the shape changes (+~3k parameters).
    """
    return ResNet(BasicBlock, (5, 5, 5), (16, 32, 64), num_classes, in_channels, width, "cifar", shortcut)


@register_model("resnet50")
def resnet50(
    num_classes: int = 10, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet"
) -> ResNet:
    """ResNet-50 (bottleneck blocks [3, 4, 6, 3], stride on the 3x3 conv, projection shortcuts).

    Default `stem="imagenet"` (7x7 stride-2 conv + 3x3/2 max-pool): 25.56M parameters with
    `num_classes=1000`. `stem="cifar"` is the 3x3 stride-1 stem for 32x32 inputs.
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, in_channels, width, stem, "B")
