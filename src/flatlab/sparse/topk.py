"""Mask arithmetic shared by sparse training (weight masks) and SSAM (perturbation masks).

Every function works jointly over a list of tensors (a global budget); pass a one-element list for
a per-layer budget. Masks are boolean tensors on each score tensor's own device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["count_for_density", "topk_mask", "random_mask", "drop_grow"]


def count_for_density(numel: int, density: float) -> int:
    """How many coordinates of ``numel`` stay live at ``density`` (rounded to nearest)."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    return int(round(density * numel))


def _flatten(tensors: list[Tensor]) -> Tensor:
    device = tensors[0].device
    return torch.cat([t.detach().reshape(-1).to(device=device, dtype=torch.float32) for t in tensors])


def _unflatten(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(flat[offset : offset + n].view(t.shape).to(t.device))
        offset += n
    return out


def topk_mask(scores: list[Tensor], density: float) -> list[Tensor]:
    """Boolean masks selecting exactly ``round(density * N)`` coordinates with the largest scores,
    N being the total number of coordinates of ``scores``."""
    if not scores:
        return []
    flat = _flatten(scores)
    k = count_for_density(flat.numel(), density)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return _unflatten(mask, scores)


def random_mask(like: list[Tensor], density: float, generator: torch.Generator) -> list[Tensor]:
    """Uniformly random boolean masks with exactly ``round(density * N)`` live coordinates.

    The draw uses ``generator`` on the CPU so it is reproducible across devices; the masks are
    moved to each tensor's device.
    """
    if not like:
        return []
    n = sum(t.numel() for t in like)
    k = count_for_density(n, density)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:k]] = True
    return _unflatten(mask, like)


def drop_grow(
    masks: list[Tensor], drop_scores: list[Tensor], grow_scores: list[Tensor], count: int
) -> list[Tensor]:
    """Drops the ``count`` live coordinates with the smallest ``drop_scores`` and grows as many of
    the coordinates that were dead before the drop, those with the largest ``grow_scores``.

    The number of live coordinates is unchanged. ``count`` is capped by the number of live and of
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
        drop = _flatten(drop_scores)
        grow = _flatten(grow_scores)
        new[live[torch.topk(drop[live], count, largest=False, sorted=False).indices]] = False
        new[dead[torch.topk(grow[dead], count, sorted=False).indices]] = True
    return _unflatten(new, masks)
