"""Tensor-list arithmetic behind the SAM family, in a single-tensor and a multi-tensor form.

Like `torch.optim`, every primitive takes a `foreach` flag: `True` runs `torch._foreach_*`
kernels (one launch for the whole list), `False` loops over tensors. Both compute the same values;
the tests check them against each other in float64.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

__all__ = [
    "global_norm",
    "global_dot",
    "copy_",
    "scale_",
    "add_l2_perturbation_",
    "add_scaled_",
    "l2_factor",
    "local_shards",
    "shard_group",
    "lp_perturbation",
    "adaptive_perturbation",
    "centralised_perturbation",
    "project_lp_ball",
    "project_adaptive_ball",
    "dual_exponent",
]


def dual_exponent(p: float) -> float:
    """The Hoelder conjugate q of p (1/p + 1/q = 1); q = 1 for p = inf."""
    return 1.0 if math.isinf(p) else p / (p - 1.0)


def local_shards(tensors: list[Tensor]) -> list[Tensor]:
    """The local shards of sharded tensors (FSDP2's DTensor parameters, gradients, backups), the
    tensors themselves otherwise: elementwise work runs on shards, which are laid out alike.
    """
    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def shard_group(tensors: list[Tensor]):
    """The process group over which `tensors` are sharded, or None when they are not."""
    for t in tensors:
        if isinstance(t, DTensor):
            return t.device_mesh.get_group()
    return None


def copy_(dst: list[Tensor], src: list[Tensor]) -> None:
    """`dst[i].copy_(src[i])` in one kernel, shard by shard for sharded tensors."""
    if dst:
        torch._foreach_copy_(local_shards(dst), local_shards(src))


def scale_(tensors: list[Tensor], factor: Tensor, *, foreach: bool = True) -> None:
    """`tensors[i] *= factor` for a 0-d `factor` that stays on its device (no host sync)."""
    _scaled(tensors, factor, foreach, in_place=True)


def add_l2_perturbation_(weights: list[Tensor], grads: list[Tensor], radius: float, *, foreach: bool = True) -> None:
    """`w += radius * g / ||g||_2` (SAM's eps added to w) in one pass, with no parameter-sized
    temporary and `grads` left as they are; the factor stays on the device (no host sync).
    """
    if weights:
        add_scaled_(weights, grads, l2_factor(radius, grads, foreach=foreach), foreach=foreach)


def l2_factor(radius: float, grads: list[Tensor], *, foreach: bool = True) -> Tensor:
    """`radius / ||grads||_2` as a 0-d tensor on the gradients' device (0 for a zero gradient)."""
    return _over(radius, global_norm(grads, 2.0, foreach=foreach))


def add_scaled_(weights: list[Tensor], directions: list[Tensor], factor: float | Tensor, *,
                foreach: bool = True) -> None:
    """`w += factor * d`: a host float as `add`'s alpha, a 0-d tensor (kept on the device, no
    host sync) as `addcmul`'s broadcast factor, so `factor * d` is never materialised.
    """
    weights, directions = local_shards(weights), local_shards(directions)
    if not weights:
        return
    if not isinstance(factor, Tensor):
        torch._foreach_add_(weights, directions, alpha=factor)
        return
    if foreach and len({t.device for t in weights}) == 1:
        on = factor.to(weights[0].device)
        torch._foreach_addcmul_(weights, directions, [on] * len(weights))
        return
    for w, d in zip(weights, directions):
        w.addcmul_(d, factor.to(device=w.device, dtype=w.dtype))


def global_dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """The inner product of two tensor lists taken as one vector (over every shard), in at least
    float32, as a 0-d tensor.
    """
    group = shard_group(a)
    a, b = local_shards(a), local_shards(b)
    if not a:
        return torch.zeros(())
    dtype = torch.promote_types(a[0].dtype, torch.float32)
    parts = [(x.to(dtype) * y.to(dtype)).sum() for x, y in zip(a, b)]
    out = torch.stack([q.to(parts[0].device) for q in parts]).sum()
    if group is not None:
        dist.all_reduce(out, group=group)
    return out


def global_norm(tensors: list[Tensor], p: float = 2.0, *, foreach: bool = True) -> Tensor:
    """The p-norm of all `tensors` taken together as one vector, as a 0-d float32+ tensor.

    Sharded tensors (DTensor) contribute every shard: the local norms are combined across the
    process group (a DTensor's own norm would read as the local shard's value when turned into a
    float, silently wrong).
    """
    if not tensors:
        return torch.zeros(())
    group = shard_group(tensors)
    if group is not None:
        norm = global_norm(local_shards(tensors), p, foreach=foreach)
        if math.isinf(p):
            dist.all_reduce(norm, op=dist.ReduceOp.MAX, group=group)
            return norm
        power = norm.pow(p)
        dist.all_reduce(power, group=group)
        return power.pow(1.0 / p)
    device = tensors[0].device
    if foreach:
        norms = torch._foreach_norm(tensors, p)
    else:
        norms = [torch.linalg.vector_norm(t, p) for t in tensors]
    # Summing in at least float32 keeps a bf16/fp16 gradient's norm from overflowing.
    dtype = torch.promote_types(norms[0].dtype, torch.float32)
    stacked = torch.stack([n.to(device=device, dtype=dtype) for n in norms])
    return torch.linalg.vector_norm(stacked, p)


def lp_perturbation(
    grads: list[Tensor],
    radius: float,
    p: float,
    *,
    foreach: bool = True,
    in_place: bool = False,
) -> list[Tensor]:
    """The maximiser of the linearised loss on the p-norm ball: eq. (1) of the SAM replication report.

    eps = radius * sign(g) |g|^(q-1) / ||g||_q^(q-1), with q = p / (p - 1); p = 2 gives
    radius * g / ||g||_2 and p = inf gives radius * sign(g). `||eps||_p == radius` for any g != 0.
    A zero gradient gives a zero perturbation.

    `in_place`: for p = 2 and p = inf, eps is written over `grads` (no parameter-sized
    temporary: the caller no longer needs them).
    """
    q = dual_exponent(p)
    if math.isinf(p):
        if in_place:
            if foreach:
                torch._foreach_sign_(grads)
                torch._foreach_mul_(grads, radius)
            else:
                for g in grads:
                    g.sign_().mul_(radius)
            return grads
        return torch._foreach_mul(torch._foreach_sign(grads), radius) if foreach else [
            g.sign() * radius for g in grads
        ]
    if p == 2.0:
        norm = global_norm(grads, 2.0, foreach=foreach)
        return _scaled(grads, _over(radius, norm), foreach, in_place)
    norm_q = global_norm(grads, q, foreach=foreach)
    scale = _over(radius, norm_q.pow(q - 1.0))
    if foreach:
        mags = torch._foreach_pow(torch._foreach_abs(grads), q - 1.0)
        torch._foreach_mul_(mags, torch._foreach_sign(grads))
        return _scaled(mags, scale, True)
    return _scaled([g.sign() * g.abs().pow(q - 1.0) for g in grads], scale, False)


def adaptive_perturbation(
    grads: list[Tensor],
    weights: list[Tensor],
    adaptive: list[bool],
    radius: float,
    eta: float,
    *,
    foreach: bool = True,
    in_place: bool = False,
) -> list[Tensor]:
    """ASAM's perturbation: eps = radius * T^2 g / ||T g||_2 with T = |w| + eta, or T = 1 where
    `adaptive` is False (biases in the ASAM reference code). `in_place` writes eps over
    `grads` (T is then the only parameter-sized temporary).
    """
    if foreach and in_place:
        ts = _operator_t(weights, adaptive, eta)
        pairs = [(g, t) for g, t in zip(grads, ts) if t is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [t for _, t in pairs])
        scale = _over(radius, global_norm(grads, 2.0, foreach=True))
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [t for _, t in pairs])
        return _scaled(grads, scale, True, in_place=True)
    if foreach:
        ts = _operator_t(weights, adaptive, eta)
        tg = [g if t is None else g * t for g, t in zip(grads, ts)]
        scale = _over(radius, global_norm(tg, 2.0, foreach=True))
        out = [x if t is None else x * t for x, t in zip(tg, ts)]
        return _scaled(out, scale, True)
    tg = [g * (w.abs() + eta) if a else g for g, w, a in zip(grads, weights, adaptive)]
    scale = _over(radius, global_norm(tg, 2.0, foreach=False))
    return _scaled([x * (w.abs() + eta) if a else x for x, w, a in zip(tg, weights, adaptive)], scale, False)


def centralised_perturbation(
    grads: list[Tensor],
    radius: float,
    *,
    foreach: bool = True,
    in_place: bool = False,
) -> list[Tensor]:
    """GC-SAM's perturbation: eps = radius * GC(g) / ||g||_2, where gradient centralisation GC
    (Yong et al., ECCV 2020) subtracts from every tensor of two or more dimensions its mean over all
    dimensions but the first (one mean per output channel or row); vectors (biases, normalisation
    weights) are left as they are.

    The norm is that of g before centring, as pytorch_optimizer's `SAM(use_gc=True)` takes it, so
    `||eps||_2 <= radius` (equal only when every row of g already has zero mean). `in_place`
    writes eps over `grads`; otherwise they are left as they are.
    """
    if not grads:
        return []
    factor = _over(radius, global_norm(grads, 2.0, foreach=foreach))  # before centring, on purpose
    out = grads if in_place else [g.clone() for g in grads]
    # a sharded (FSDP) tensor is split along its first dimension: each shard holds whole rows, so
    # the row means are local
    shards = local_shards(out)
    for g in shards:
        if g.dim() > 1:
            g.sub_(g.mean(dim=tuple(range(1, g.dim())), keepdim=True))
    _scaled(shards, factor, foreach, in_place=True)
    return out


def project_lp_ball(eps: list[Tensor], radius: float, p: float, *, foreach: bool = True) -> list[Tensor]:
    """Pulls `eps` back into the p-norm ball of `radius`.

    Exact Euclidean projection for p = 2 (rescaling) and p = inf (clamping). For other p the
    Euclidean projection has no closed form; rescaling onto the sphere is used instead, which keeps
    `||eps||_p <= radius` and the direction.
    """
    if math.isinf(p):
        if foreach:
            out = torch._foreach_clamp_min(eps, -radius)
            torch._foreach_clamp_max_(out, radius)
            return out
        return [e.clamp(-radius, radius) for e in eps]
    return _scaled(eps, _over(radius, global_norm(eps, p, foreach=foreach)).clamp_max(1.0), foreach)


def project_adaptive_ball(
    eps: list[Tensor],
    weights: list[Tensor],
    adaptive: list[bool],
    radius: float,
    eta: float,
    *,
    foreach: bool = True,
) -> list[Tensor]:
    """Projection onto ASAM's ellipsoid ||T^-1 eps||_2 <= radius (a rescaling, exact in the T^-1 metric)."""
    ts = _operator_t(weights, adaptive, eta)
    scaled = [e if t is None else e / t for e, t in zip(eps, ts)]
    return _scaled(eps, _over(radius, global_norm(scaled, 2.0, foreach=foreach)).clamp_max(1.0), foreach)


def _operator_t(weights: list[Tensor], adaptive: list[bool], eta: float) -> list[Tensor | None]:
    chosen = [w for w, a in zip(weights, adaptive) if a]
    ts = torch._foreach_abs(chosen) if chosen else []
    if ts:
        torch._foreach_add_(ts, eta)
    ts = iter(ts)
    return [next(ts) if a else None for a in adaptive]


def _over(radius: float, norm: Tensor) -> Tensor:
    """The factor radius / norm; a zero norm (zero gradient) gives a huge factor times zero, i.e. zero."""
    return radius / norm.clamp_min(torch.finfo(norm.dtype).tiny)


def _scaled(tensors: list[Tensor], scale: Tensor, foreach: bool, in_place: bool = False) -> list[Tensor]:
    """`tensors` times a 0-d `scale` that stays on the device: no host sync (a step's one sync
    is its finiteness check), so a non-finite gradient gives a non-finite result, which that check
    catches. `in_place` writes the products over `tensors`.
    """
    if not tensors:
        return []
    if in_place:
        factor = scale.to(device=tensors[0].device)
        if foreach and len({t.device for t in tensors}) == 1:
            torch._foreach_mul_(tensors, factor)
        else:
            for t in tensors:
                t.mul_(factor.to(t.device))
        return tensors
    by_device: dict[torch.device, Tensor] = {}

    def on(t: Tensor) -> Tensor:
        if t.device not in by_device:
            by_device[t.device] = scale.to(device=t.device)
        return by_device[t.device]

    if foreach and len({t.device for t in tensors}) == 1:
        # a 0-d tensor factor must be float32+; the product keeps each tensor's dtype
        return torch._foreach_mul(tensors, on(tensors[0]))
    return [t * on(t).to(t.dtype) for t in tensors]
