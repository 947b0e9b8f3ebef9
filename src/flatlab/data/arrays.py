"""`ImageArrays`: a small image-classification dataset held fully in memory as uint8 tensors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def _check_split(images: torch.Tensor, labels: torch.Tensor, split: str) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"{split}_images must be a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    if labels.dtype != torch.int64 or labels.dim() != 1:
        raise ValueError(
            f"{split}_labels must be an int64 tensor [N], got {labels.dtype} {tuple(labels.shape)}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")


@dataclass
class ImageArrays:
    """Train and test images as uint8 `[N, C, H, W]` tensors with int64 labels.

    Small datasets (digits, CIFAR, Fashion-MNIST) fit in memory, so a training epoch is index slicing
    into these tensors (see `BatchLoader`) rather than per-image decoding.

    Example:
        >>> import torch
        >>> data = ImageArrays(
        ...     train_images=torch.zeros(4, 3, 2, 2, dtype=torch.uint8),
        ...     train_labels=torch.tensor([0, 1, 0, 1]),
        ...     test_images=torch.zeros(2, 3, 2, 2, dtype=torch.uint8),
        ...     test_labels=torch.tensor([0, 1]),
        ...     classes=["cat", "dog"],
        ...     name="toy",
        ... )
        >>> data.num_classes, data.image_shape, data.num_train, data.num_test
        (2, (3, 2, 2), 4, 2)
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self):
        _check_split(self.train_images, self.train_labels, "train")
        _check_split(self.test_images, self.test_labels, "test")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"train images are {tuple(self.train_images.shape[1:])} but test images are "
                f"{tuple(self.test_images.shape[1:])}"
            )
        self.classes = [str(c) for c in self.classes]
        for split, labels in (("train", self.train_labels), ("test", self.test_labels)):
            if labels.numel() and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise ValueError(
                    f"{split}_labels must lie in [0, {len(self.classes)}) for {len(self.classes)} classes, "
                    f"got range [{int(labels.min())}, {int(labels.max())}]"
                )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of one image."""
        return tuple(self.train_images.shape[1:])

    @property
    def num_channels(self) -> int:
        """Channels per image."""
        return self.train_images.shape[1]

    @property
    def num_train(self) -> int:
        """Number of training images."""
        return self.train_images.shape[0]

    @property
    def num_test(self) -> int:
        """Number of test images."""
        return self.test_images.shape[0]

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and (population) std of the train images, in [0, 1] units.

        Sums run in int64 over chunks, so the result is exact up to the final division and a
        50,000-image set never needs a float copy of itself.

        Example:
            >>> import torch
            >>> imgs = torch.tensor([[[[0, 255]]], [[[255, 255]]]], dtype=torch.uint8)  # [2, 1, 1, 2]
            >>> data = ImageArrays(imgs, torch.tensor([0, 0]), imgs, torch.tensor([0, 0]), ["a"])
            >>> mean, std = data.mean_std()
            >>> round(mean[0], 4), round(std[0], 4)
            (0.75, 0.433)
        """
        images = self.train_images
        if images.shape[0] == 0:
            raise ValueError("mean_std needs at least one training image")
        c = images.shape[1]
        total = torch.zeros(c, dtype=torch.int64)
        total_sq = torch.zeros(c, dtype=torch.int64)
        chunk = max(1, (1 << 22) // max(1, images[0].numel()))
        for start in range(0, images.shape[0], chunk):
            x = images[start : start + chunk].to(torch.int64).transpose(0, 1).reshape(c, -1)
            total += x.sum(dim=1).cpu()
            total_sq += (x * x).sum(dim=1).cpu()
        count = images.numel() // c
        mean = [t / count for t in total.tolist()]
        var = [max(0.0, s / count - m * m) for s, m in zip(total_sq.tolist(), mean)]
        return tuple(m / 255.0 for m in mean), tuple(math.sqrt(v) / 255.0 for v in var)

    def __repr__(self) -> str:
        return (
            f"ImageArrays(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes})"
        )
