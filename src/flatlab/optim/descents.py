"""How the descent gradient is formed from the gradient at w (g) and at w + eps (g_p).

SAM descends along g_p alone. GSAM subtracts the part of g orthogonal to g_p (its surrogate-gap
term); WSAM weights the sharpness g_p - g; LookSAM keeps the part of g_p orthogonal to g from its
sharpness-aware steps and adds it to the gradient of the plain steps between them. RWP mixes g and
g_p; bSAM descends along g_p and hands g to its base optimizer's precision update.

A policy works on the gradients in place, over aligned lists of tensors, with its per-parameter
state in the optimizer's `state[p]`; norms and inner products are global (all tensors together).
"""

from __future__ import annotations

from collections.abc import MutableMapping

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from ..errors import check_number
from .functional import copy_, global_dot, global_norm, local_shards
from .policy import Policy

__all__ = ["Descent", "PerturbedGradient", "SurrogateGap", "WeightedSharpness", "OrthogonalReuse", "MixedGradient",
           "PrecisionGradient"]


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """The ratio num / den as a 0-d tensor on the device (no host sync), 0 where den is 0."""
    den = den.to(num.device)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


def _times(tensors: list[Tensor], factor: Tensor) -> list[Tensor]:
    return torch._foreach_mul(local_shards(tensors), factor.to(tensors[0].device)) if tensors else []


def _like(reference: Tensor, shard: Tensor) -> Tensor:
    """`shard` (a local tensor) as a DTensor laid out like `reference` when that is one."""
    if isinstance(reference, DTensor):
        return DTensor.from_local(shard, reference.device_mesh, reference.placements, run_check=False,
                                  shape=reference.shape, stride=reference.stride())
    return shard


class Descent(Policy):
    """Interface of a descent policy.

    Attributes:
        name: short name for `repr`.
        needs_clean_gradient: True when the sharpness-aware step needs g (the gradient at w) as
            well as g_p: the optimizer then keeps a copy of it (one more parameter-sized buffer).
    """

    name = "descent"
    needs_clean_gradient = False

    def check(self, optimizer) -> None:
        """Refuses a descent that needs the gradient at w under a single-pass source (it has none)."""
        if self.needs_clean_gradient and optimizer.source.single_pass:
            raise ValueError(f"the {self.name} descent needs the gradient at w: it needs a two-pass source")

    def bind(self, state: MutableMapping[Tensor, dict]) -> None:
        """The optimizer's per-parameter state, where a descent keeps its buffers."""
        self.state = state

    def sharpness_aware(self, params: list[Tensor], clean: list[Tensor], grads: list[Tensor]) -> None:
        """Turns `grads` (g_p, aligned with `params`) into the descent gradient, in place;
        `clean` holds g for the same tensors (empty unless `needs_clean_gradient`).
        """

    def plain(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """Amends the gradient of a plain step (one the schedule skipped), in place."""

    def after_base_step(self, param_groups: list[dict], sharpness_aware: bool) -> None:
        """Runs after the base optimizer's step (`param_groups`: the base's, for learning rates)."""



class PerturbedGradient(Descent):
    """The default: descend along the gradient at w + eps (SAM)."""

    name = "perturbed"


class SurrogateGap(Descent):
    """GSAM (Zhuang et al. 2022): descend along `g_p - alpha * g_perp`, with `g_perp` the part
    of g orthogonal to g_p, which lowers the surrogate gap L(w + eps) - L(w) without changing the
    perturbed loss to first order.
    """

    name = "surrogate-gap"
    needs_clean_gradient = True

    def __init__(self, alpha: float = 0.4):
        check_number("alpha", alpha, low=0.0)
        self.alpha = float(alpha)

    def sharpness_aware(self, params, clean, grads) -> None:
        """`grads` -= alpha * g_perp, in place."""
        if not grads or self.alpha == 0.0:
            return
        # g_perp = g - (<g, g_p> / ||g_p||^2) g_p
        coef = _ratio(global_dot(clean, grads), global_norm(grads) ** 2)
        perp = torch._foreach_sub(local_shards(clean), _times(grads, coef))
        torch._foreach_add_(local_shards(grads), perp, alpha=-self.alpha)

    def extra_repr(self) -> str:
        """`alpha`, as `repr` shows it."""
        return f"alpha={self.alpha:g}"


class WeightedSharpness(Descent):
    """WSAM (Yue et al. 2023): the objective L(w) + gamma / (1 - gamma) * (L(w + eps) - L(w)).

    Coupled, the gradient is `g + alpha (g_p - g)` with `alpha = gamma / (1 - gamma)`.
    Decoupled (the default, as in the paper), the base optimizer steps with g alone and the
    sharpness term is applied after it, like decoupled weight decay: `w -= lr * alpha * (g_p - g)`.
    """

    name = "weighted-sharpness"
    needs_clean_gradient = True

    def __init__(self, gamma: float = 0.9, decoupled: bool = True):
        check_number("gamma", gamma, low=0.0, high=1.0, high_open=True)
        self.gamma = float(gamma)
        self.alpha = self.gamma / (1.0 - self.gamma)
        self.decoupled = bool(decoupled)

    def sharpness_aware(self, params, clean, grads) -> None:
        """Coupled: `grads` becomes `g + alpha (g_p - g)`. Decoupled: `grads` becomes g and the
        sharpness `g_p - g` is kept for `after_base_step`.
        """
        if not grads:
            return
        sharpness = torch._foreach_sub(local_shards(grads), local_shards(clean))
        if self.decoupled:
            for p, s in zip(params, sharpness):
                self.state[p]["sharpness"] = s
            copy_(grads, clean)
        else:
            copy_(grads, clean)
            torch._foreach_add_(local_shards(grads), sharpness, alpha=self.alpha)

    def after_base_step(self, param_groups, sharpness_aware) -> None:
        """Decoupled, after a sharpness-aware step: `w -= lr * alpha * (g_p - g)`, each tensor at its
        group's learning rate.
        """
        if not (self.decoupled and sharpness_aware):
            return
        for group in param_groups:  # each tensor moves by its own group's learning rate
            ps = [p for p in group["params"] if "sharpness" in self.state.get(p, ())]
            if ps:
                ss = [self.state[p].pop("sharpness") for p in ps]
                torch._foreach_add_(local_shards(ps), ss, alpha=-group["lr"] * self.alpha)

    def extra_repr(self) -> str:
        """`gamma` and `decoupled`, as `repr` shows them."""
        return f"gamma={self.gamma:g}, decoupled={self.decoupled}"


class OrthogonalReuse(Descent):
    """LookSAM (Liu et al. 2022): on a sharpness-aware step, store `g_v`, the part of g_p
    orthogonal to g (`g_v = g_p - (<g_p, g> / ||g||^2) g`) and descend along g_p; on a plain
    step, descend along `g + alpha * (||g|| / ||g_v||) * g_v`. Norms are global (LookSAM's
    Algorithm 1; Look-LayerSAM's per-layer form is not this one).
    """

    name = "orthogonal-reuse"
    needs_clean_gradient = True

    def __init__(self, alpha: float = 0.7):
        check_number("alpha", alpha, low=0.0)
        self.alpha = float(alpha)

    def sharpness_aware(self, params, clean, grads) -> None:
        """Stores `g_v` per tensor; `grads` (g_p) are left to descend along."""
        if not grads:
            return
        coef = _ratio(global_dot(grads, clean), global_norm(clean) ** 2)
        orthogonal = torch._foreach_sub(local_shards(grads), _times(clean, coef))
        for p, g, gv in zip(params, grads, orthogonal):
            # kept sharded like its parameter when the parameter is (FSDP)
            self.state[p]["orthogonal"] = _like(g, gv)

    def plain(self, params, grads) -> None:
        """Adds `alpha * (||g|| / ||g_v||) * g_v` to `grads`, in place (once a `g_v` is stored)."""
        kept = [(g, self.state[p]["orthogonal"]) for p, g in zip(params, grads) if "orthogonal" in self.state[p]]
        if not kept or self.alpha == 0.0:
            return
        gs, gvs = [g for g, _ in kept], [v for _, v in kept]
        scale = self.alpha * _ratio(global_norm(grads), global_norm(gvs))
        torch._foreach_add_(local_shards(gs), _times(gvs, scale))

    def extra_repr(self) -> str:
        """`alpha`, as `repr` shows it."""
        return f"alpha={self.alpha:g}"


class MixedGradient(Descent):
    """RWP (Li et al., TMLR 2024): descend along `(1 - alpha) g + alpha g_p`, the gradient of the
    mixed loss `(1 - alpha) L(w) + alpha L(w + eps)`. alpha = 0.5: the official code's default
    (nblt/RWP, which takes the two gradients on two GPUs, weighting each loss by 2 alpha and
    2 (1 - alpha) before DDP's average).
    """

    name = "mixed"
    needs_clean_gradient = True

    def __init__(self, alpha: float = 0.5):
        check_number("alpha", alpha, low=0.0, high=1.0)
        self.alpha = float(alpha)

    def sharpness_aware(self, params, clean, grads) -> None:
        """Mixes the gradients: (1 - alpha) g + alpha g_p."""
        if not grads:
            return
        torch._foreach_mul_(local_shards(grads), self.alpha)
        torch._foreach_add_(local_shards(grads), local_shards(clean), alpha=1.0 - self.alpha)

    def extra_repr(self) -> str:
        """`alpha`, as `repr` shows it."""
        return f"alpha={self.alpha:g}"


class PrecisionGradient(Descent):
    """bSAM: descend along g_p (the gradient at w + eps) and hand the base optimizer
    (`BSAMBase`) g, the ascent pass's gradient taken at the random point,
    which its precision update reads.
    """

    name = "precision"
    needs_clean_gradient = True

    def __init__(self, base):
        self.base = base

    def sharpness_aware(self, params, clean, grads) -> None:
        """Hands the base the noisy gradient g next to g_p."""
        self.base.take_noisy_gradients(params, clean)
