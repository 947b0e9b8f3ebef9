"""Batched image augmentation with tensor ops: padded random crop, flip, cutout, normalisation.

Each augmentation is split into a *draw* (random parameters for the whole batch, taken from a CPU
`torch.Generator` so results do not depend on the device) and an *apply* (pure tensor function of
the images and those parameters, no per-image Python). `BatchLoader` composes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

PAD_MODES = ("reflect", "zeros", "replicate")


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    # Mirror without repeating the edge pixel, as F.pad(mode="reflect"); valid while padding < size.
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def crop(images: torch.Tensor, offsets: torch.Tensor, padding: int, mode: str = "reflect") -> torch.Tensor:
    """Per-sample crops of the padded batch: `out[i] = pad(images)[i, :, oy:oy+H, ox:ox+W]`.

    `offsets` is `[N, 2]` (row, column) in `[0, 2 * padding]`. Implemented as one gather with
    per-sample row/column indices, so the padded batch is never materialised and any dtype works.
    The result is laid out channels-last in memory; later elementwise ops keep that layout.

    Example:
        >>> import torch
        >>> x = torch.arange(9, dtype=torch.uint8).reshape(1, 1, 3, 3)
        >>> crop(x, torch.tensor([[0, 2]]), padding=1, mode="zeros")[0, 0].tolist()
        [[0, 0, 0], [1, 2, 0], [4, 5, 0]]
    """
    if mode not in PAD_MODES:
        raise ValueError(f"mode must be one of {PAD_MODES}, got {mode!r}")
    n, c, h, w = images.shape
    if mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding must be smaller than the image ({h}x{w}), got {padding}")
    device = images.device
    offsets = offsets.to(device=device, dtype=torch.long)
    rows = torch.arange(h, device=device) + offsets[:, :1] - padding  # [N, H]
    cols = torch.arange(w, device=device) + offsets[:, 1:] - padding  # [N, W]
    inside = None
    if mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    else:
        if mode == "zeros":
            inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    batch = torch.arange(n, device=device)[:, None, None]
    out = images[batch, :, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    if inside is not None:
        out = out.masked_fill(~inside[..., None], 0)
    return out.permute(0, 3, 1, 2)


def hflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the samples where `mask` ([N] bool) is true.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[[1, 2]]], [[[3, 4]]]])
        >>> hflip(x, torch.tensor([True, False])).flatten().tolist()
        [2, 1, 3, 4]
    """
    return torch.where(mask.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)


def cutout(images: torch.Tensor, corners: torch.Tensor, size: int, value: float = 0.0) -> torch.Tensor:
    """Fill a `size` x `size` square per sample with `value` (DeVries & Taylor, 2017).

    `corners` is `[N, 2]` (top, left); the square may hang over the border and is clipped there.

    Example:
        >>> import torch
        >>> x = torch.ones(1, 1, 3, 3)
        >>> cutout(x, torch.tensor([[-1, 1]]), size=2)[0, 0].tolist()
        [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    n, _, h, w = images.shape
    device = images.device
    corners = corners.to(device=device, dtype=torch.long)
    ys = torch.arange(h, device=device) - corners[:, :1]  # [N, H]
    xs = torch.arange(w, device=device) - corners[:, 1:]  # [N, W]
    in_y = (ys >= 0) & (ys < size)
    in_x = (xs >= 0) & (xs < size)
    mask = in_y[:, None, :, None] & in_x[:, None, None, :]
    return images.masked_fill(mask, value)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 `[N, C, H, W]` to float: `(x / 255 - mean) / std` per channel (`x / 255` without them).

    Computed in float32 as one multiply-add and cast to `dtype` at the end, so half precision
    output does not accumulate rounding from two steps.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
        >>> [round(v, 6) for v in normalize(x, mean=[0.5], std=[0.5]).flatten().tolist()]
        [-1.0, 1.0]
    """
    c = images.shape[1]
    mean_t = torch.zeros(c) if mean is None else torch.as_tensor(mean, dtype=torch.float64)
    std_t = torch.ones(c) if std is None else torch.as_tensor(std, dtype=torch.float64)
    if mean_t.numel() != c or std_t.numel() != c:
        raise ValueError(
            f"mean and std need {c} values (one per channel), got {mean_t.numel()} and {std_t.numel()}"
        )
    scale = (1.0 / (255.0 * std_t)).to(torch.float32).view(1, c, 1, 1).to(images.device)
    shift = (-mean_t / std_t).to(torch.float32).view(1, c, 1, 1).to(images.device)
    out = torch.addcmul(shift, images.to(torch.float32), scale)
    return out if dtype == torch.float32 else out.to(dtype)


@dataclass
class AugmentDraws:
    """The random parameters for one batch; `None` where the augmentation is off."""

    crop: torch.Tensor | None = None  # [N, 2] int64 offsets into the padded image
    flip: torch.Tensor | None = None  # [N] bool
    cutout: torch.Tensor | None = None  # [N, 2] int64 top-left corners, may be negative


def draw_augment(
    n: int,
    height: int,
    width: int,
    *,
    padding: int = 0,
    flip: bool = False,
    cutout_size: int = 0,
    generator: torch.Generator | None = None,
) -> AugmentDraws:
    """Draw per-sample parameters in a fixed order: crop offsets, flip mask, cutout corners.

    Cutout centres are uniform over the image, so squares near the border are partly outside it,
    as in the original cutout paper.

    Example:
        >>> import torch
        >>> d = draw_augment(4, 32, 32, padding=4, flip=True, generator=torch.Generator().manual_seed(0))
        >>> d.crop.shape, d.flip.shape, d.cutout
        (torch.Size([4, 2]), torch.Size([4]), None)
    """
    draws = AugmentDraws()
    if padding > 0:
        draws.crop = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    if flip:
        draws.flip = torch.rand(n, generator=generator) < 0.5
    if cutout_size > 0:
        centre = torch.stack(
            [
                torch.randint(0, height, (n,), generator=generator),
                torch.randint(0, width, (n,), generator=generator),
            ],
            dim=1,
        )
        draws.cutout = centre - cutout_size // 2
    return draws
