"""Mask arithmetic shared by sparse training (weight masks) and SSAM (perturbation masks).

The functions without suffix work jointly over a list of tensors (one global budget, given as a
density); the `*_per_tensor` variants give each tensor its own budget, given as an exact count
(layer-wise allocations such as ERK). Masks are boolean tensors on each score tensor's own device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "count_for_density",
    "topk_mask",
    "random_mask",
    "drop_grow",
    "topk_mask_per_tensor",
    "random_mask_per_tensor",
    "drop_grow_per_tensor",
]


def count_for_density(numel: int, density: float) -> int:
    """How many coordinates of `numel` stay live at `density` (rounded to nearest)."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    return int(round(density * numel))


def _flatten(tensors: list[Tensor], device: torch.device | None = None) -> Tensor:
    # Scores may live elsewhere than the masks (random scores are drawn on the CPU for
    # reproducibility): everything is gathered on one device before indexing.
    device = tensors[0].device if device is None else device
    return torch.cat([t.detach().reshape(-1).to(device=device, dtype=torch.float32) for t in tensors])


def _unflatten(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(flat[offset : offset + n].view(t.shape).to(t.device))
        offset += n
    return out


def _check_counts(like: list[Tensor], counts: list[int]) -> list[int]:
    if len(counts) != len(like):
        raise ValueError(f"got {len(counts)} counts for {len(like)} tensors")
    out = [int(c) for c in counts]
    for c, t in zip(out, like):
        if not 0 <= c <= t.numel():
            raise ValueError(f"count must be in [0, {t.numel()}] for a tensor of shape {tuple(t.shape)}, got {c}")
    return out


def _topk_flat(flat: Tensor, k: int) -> Tensor:
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask


def _random_flat(n: int, k: int, generator: torch.Generator) -> Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:k]] = True
    return mask


def topk_mask(scores: list[Tensor], density: float) -> list[Tensor]:
    """Boolean masks selecting exactly `round(density * N)` coordinates with the largest scores,
    N being the total number of coordinates of `scores`.
    """
    if not scores:
        return []
    flat = _flatten(scores)
    return _unflatten(_topk_flat(flat, count_for_density(flat.numel(), density)), scores)


def topk_mask_per_tensor(scores: list[Tensor], counts: list[int]) -> list[Tensor]:
    """Per tensor, a boolean mask of exactly `counts[i]` coordinates with the largest scores.

    Example:
        ```python
        >>> topk_mask_per_tensor([torch.tensor([3.0, 1.0, 2.0])], [2])[0].tolist()
        [True, False, True]

        ```
    """
    counts = _check_counts(scores, counts)
    return [_topk_flat(_flatten([s]), k).view(s.shape) for s, k in zip(scores, counts)]


def random_mask(like: list[Tensor], density: float, generator: torch.Generator) -> list[Tensor]:
    """Uniformly random boolean masks with exactly `round(density * N)` live coordinates.

    The draw uses `generator` on the CPU so it is reproducible across devices; the masks are
    moved to each tensor's device.
    """
    if not like:
        return []
    n = sum(t.numel() for t in like)
    return _unflatten(_random_flat(n, count_for_density(n, density), generator), like)


def random_mask_per_tensor(like: list[Tensor], counts: list[int], generator: torch.Generator) -> list[Tensor]:
    """Per tensor, a uniformly random boolean mask with exactly `counts[i]` live coordinates
    (drawn on the CPU with `generator`, tensor by tensor, then moved to the tensor's device).
    """
    counts = _check_counts(like, counts)
    return [_random_flat(t.numel(), k, generator).view(t.shape).to(t.device) for t, k in zip(like, counts)]


def drop_grow(
    masks: list[Tensor], drop_scores: list[Tensor], grow_scores: list[Tensor], count: int
) -> list[Tensor]:
    """Drops the `count` live coordinates with the smallest `drop_scores` and grows as many of
    the coordinates that were dead before the drop, those with the largest `grow_scores`.

    The number of live coordinates is unchanged. `count` is capped by the number of live and of
    dead coordinates. Returns new masks; the inputs are not modified.
    """
    if not masks:
        return []
    flat = _flatten(masks).bool()
    live = flat.nonzero().squeeze(1)
    dead = (~flat).nonzero().squeeze(1)
    count = max(0, min(int(count), live.numel(), dead.numel()))
    new = flat.clone()
    if count > 0:
        drop = _flatten(drop_scores, flat.device)
        grow = _flatten(grow_scores, flat.device)
        new[live[torch.topk(drop[live], count, largest=False, sorted=False).indices]] = False
        new[dead[torch.topk(grow[dead], count, sorted=False).indices]] = True
    return _unflatten(new, masks)


def drop_grow_per_tensor(
    masks: list[Tensor], drop_scores: list[Tensor], grow_scores: list[Tensor], counts: list[int]
) -> list[Tensor]:
    """`drop_grow` tensor by tensor, `counts[i]` coordinates moved in tensor i (each count
    capped by that tensor's live and dead coordinates), so every tensor keeps its own density.
    """
    if len(counts) != len(masks):
        raise ValueError(f"got {len(counts)} counts for {len(masks)} masks")
    return [drop_grow([m], [d], [g], c)[0] for m, d, g, c in zip(masks, drop_scores, grow_scores, counts)]
