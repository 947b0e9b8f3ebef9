"""Per-image Pillow transforms for large (ImageNet-style) folders, without torchvision.

`random_resized_crop` follows torchvision's `RandomResizedCrop` sampling (10 tries, then a
centre crop clamped to the allowed aspect ratio); `resize_center_crop` is `Resize(256)` then
`CenterCrop(224)`. Both crop and resize in one Pillow call (`resize(box=...)`), so the full-size
intermediate image is never built. Randomness comes from torch's RNG, which `DataLoader` seeds
differently in every worker.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """Sample `(left, top, crop_width, crop_height)` covering a random area fraction and aspect ratio.

    Example:
        >>> import torch
        >>> left, top, w, h = random_resized_crop_box(100, 80, generator=torch.Generator().manual_seed(0))
        >>> 0 <= left <= 100 - w and 0 <= top <= 80 - h
        True
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[2] * (height - h + 1)), height - h)
            left = min(int(u[3] * (width - w + 1)), width - w)
            return left, top, w, h
    # Fallback: the largest centred crop whose aspect ratio is within `ratio`.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(img, size: int = 224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None):
    """Crop a random area/aspect region of a PIL image and resize it to `size` x `size` (bilinear).

    Example:
        >>> from PIL import Image
        >>> random_resized_crop(Image.new("RGB", (300, 200)), size=64).size
        (64, 64)
    """
    from PIL import Image

    left, top, w, h = random_resized_crop_box(img.width, img.height, scale, ratio, generator)
    return img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))


def resize_center_crop(img, size: int = 224, resize: int = 256):
    """Evaluation view: scale the short side to `resize`, then take the centred `size` square.

    Example:
        >>> from PIL import Image
        >>> resize_center_crop(Image.new("RGB", (500, 375))).size
        (224, 224)
    """
    from PIL import Image

    factor = resize / min(img.width, img.height)
    crop = size / factor  # the output square, measured in input pixels
    left = (img.width - crop) / 2
    top = (img.height - crop) / 2
    return img.resize((size, size), Image.BILINEAR, box=(left, top, left + crop, top + crop))


def to_tensor_uint8(img) -> torch.Tensor:
    """PIL image to a uint8 `[C, H, W]` tensor (normalisation is left to the GPU, per batch).

    Example:
        >>> from PIL import Image
        >>> to_tensor_uint8(Image.new("RGB", (4, 2))).shape
        torch.Size([3, 2, 4])
    """
    array = np.asarray(img)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.array(array.transpose(2, 0, 1), order="C"))  # a writable copy
