"""Which gradient drives the perturbation: the current batch's, from an extra forward/backward at w
(SAM; FriendlySAM less its moving average), or one the step already has (S2-SAM: the previous
step's; MSAM: the base optimizer's momentum), so that each step takes one pass; or an average of
the batch gradients so far (VaSSO); or none at all: random noise shaped by the weights (RWP), or
the gradient at a random point around w (bSAM).

A *single-pass* source builds the next step's perturbation at the end of this step, after the base
step, so the next forward/backward runs at w + eps directly. A source is a subclass that says
whether it is single-pass and how it turns the gradients it sees into a direction.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import torch
from torch import Tensor

from ..errors import check_number
from .functional import copy_, local_shards, shard_group
from .noise import NormalNoise
from .policy import Policy

__all__ = ["GradientSource", "BatchGradient", "PreviousGradient", "MomentumDirection", "FriendlyGradient",
           "AveragedGradient", "FilterNoise", "NoisyGradient"]


class GradientSource(Policy):
    """Interface of a gradient source.

    Attributes:
        name: short name for `repr`.
        single_pass: False: the perturbation comes from an ascent pass at w on the current batch
            (a closure is needed, two passes per step). True: it is built after the base step from
            what this step computed and applied before the next step's single pass.
    """

    name = "source"
    single_pass = False
    #: keeps state derived from the gradients it sees (so it must never see a non-finite one)
    stateful = False
    #: `direction` returns the gradients themselves
    direction_is_gradient = False
    #: `direction` does not read the gradients (RWP's noise): the passes at w and at w + eps do
    #: not depend on each other, and the direction is new memory that the shape may write over
    independent_of_gradient = False
    #: the ascent pass runs at w + `ascent_offset` (bSAM's random sample), not at w
    offsets_ascent_pass = False

    def check(self, optimizer) -> None:
        """Refuses extra ascent steps under a single-pass source."""
        # a single-pass source builds eps from the step's one gradient, after the base step
        if self.single_pass and optimizer.ascent_steps != 1:
            raise ValueError(
                f"a single-pass method takes no extra ascent steps, got ascent_steps={optimizer.ascent_steps}"
            )

    def bind(self, state: MutableMapping[Tensor, dict], base: torch.optim.Optimizer,
             generator: torch.Generator | None = None) -> None:
        """The optimizer's per-parameter state (for a source's own buffers), its base and its
        generator (for a source that draws noise; its draws are then part of the saved state).
        """
        self.state = state

    def ascent_offset(self, params: list[Tensor]) -> list[Tensor]:
        """Where the ascent pass runs, as an offset from w per entry of `params` (only when
        `offsets_ascent_pass`); w is put back exactly after that pass.
        """
        raise NotImplementedError

    def direction(
        self, params: list[Tensor], grads: list[Tensor], base: torch.optim.Optimizer, scale: float = 1.0
    ) -> list[Tensor]:
        """The vector the shape turns into eps, one tensor per entry of `params` (aligned with
        `grads`, the gradients the step just used, which carry a loss scale `scale`: the shape
        normalises the direction, but state kept across steps must be stored unscaled). Returns
        `grads` themselves or new tensors, never state it keeps: the optimizer writes eps over
        the direction. Only a single-pass source may write over `grads` (they are spent by then).
        """
        raise NotImplementedError



class BatchGradient(GradientSource):
    """SAM's source: the gradient of the current batch at w, from an extra forward/backward."""

    name = "batch"
    single_pass = False
    direction_is_gradient = True

    def direction(self, params, grads, base, scale=1.0):
        """The gradients at w themselves."""
        return grads


class PreviousGradient(GradientSource):
    """S2-SAM's source: the gradient the previous step descended with (taken at its perturbed
    point), so the perturbation costs no extra pass; the first step of a run is a base step.
    """

    name = "previous"
    single_pass = True
    direction_is_gradient = True

    def direction(self, params, grads, base, scale=1.0):
        """The gradients this step descended with, themselves."""
        return grads


#: where torch's base optimizers keep their first moment: SGD's momentum, Adam(W)'s exp_avg
_MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


class MomentumDirection(GradientSource):
    """Momentum-SAM (Becker et al. 2024): the perturbation is `-rho * v / ||v||` with v the base
    optimizer's momentum buffer after its step (SGD's `momentum_buffer`, Adam's `exp_avg`), so
    the next pass runs a step ahead along the coming update; one pass per step, like S2-SAM, which
    this generalises (the previous gradient is a momentum of factor 0).

    The base optimizer must keep a momentum (SGD with `momentum > 0`, Adam, AdamW).
    """

    name = "momentum"
    single_pass = True

    def bind(self, state, base, generator=None) -> None:
        """Refuses a base optimizer without a momentum buffer (SGD with `momentum=0`, or one with neither
        `momentum` nor `betas`).
        """
        super().bind(state, base, generator)
        momentum = base.defaults.get("momentum")
        if momentum is not None and not momentum > 0:
            raise ValueError(f"Momentum-SAM perturbs along the base optimizer's momentum; got momentum={momentum}")
        if momentum is None and "betas" not in base.defaults:
            raise ValueError(f"Momentum-SAM needs a base optimizer with a momentum buffer, got {type(base).__name__}")

    def direction(self, params, grads, base, scale=1.0):
        """-v per tensor (-g where the base holds no buffer yet), written over `grads`."""
        # A single-pass source runs after the base step: the gradients are spent (the optimizer drops
        # them once eps is built), so their memory holds -v and no temporary is allocated.
        pairs = []
        for p, g in zip(params, grads):
            state = base.state.get(p, {})
            buf = next((state[k] for k in _MOMENTUM_KEYS if state.get(k) is not None), None)
            # a tensor without a buffer yet (none after the first step) is moved along -g
            if buf is not None:
                pairs.append((g, buf))
        copy_([g for g, _ in pairs], [b for _, b in pairs])
        torch._foreach_neg_(local_shards(grads))
        return grads


class FriendlyGradient(GradientSource):
    """FriendlySAM (Li et al. 2024): the ascent direction is the batch gradient minus `sigma`
    times an exponential moving average (factor `lmbda`) of past batch gradients, i.e. the
    batch-specific part of the gradient: `d_t = g_t - sigma * m_{t-1}`, then
    `m_t = lmbda * m_{t-1} + (1 - lmbda) * g_t`; the first step starts `m` at `g` and
    ascends along `g`. The average lives in `state[p]["gradient_ema"]`.
    """

    name = "friendly"
    single_pass = False
    stateful = True

    def __init__(self, sigma: float = 1.0, lmbda: float = 0.9):
        check_number("sigma", sigma, low=0.0)
        check_number("lmbda", lmbda, low=0.0, high=1.0)
        self.sigma = float(sigma)
        self.lmbda = float(lmbda)

    def direction(self, params, grads, base, scale=1.0):
        """`d_t = g_t - sigma * m_{t-1}` (`g` on a tensor's first step), then the average updated."""
        fresh = [(p, g) for p, g in zip(params, grads) if "gradient_ema" not in self.state[p]]
        for p, g in fresh:
            self.state[p]["gradient_ema"] = g / scale
        seen = {p for p, _ in fresh}
        old = [(p, g) for p, g in zip(params, grads) if p not in seen]
        out = {p: g for p, g in fresh}
        if old:
            ps, gs = [p for p, _ in old], [g for _, g in old]
            emas = [self.state[p]["gradient_ema"] for p in ps]
            for p, d in zip(ps, torch._foreach_add(gs, emas, alpha=-self.sigma * scale)):
                out[p] = d
            if scale != 1.0:
                gs = torch._foreach_div(gs, scale)
            torch._foreach_lerp_(emas, gs, 1.0 - self.lmbda)
        return [out[p] for p in params]

    def extra_repr(self) -> str:
        """`sigma` and `lmbda`, as `repr` shows them."""
        return f"sigma={self.sigma:g}, lmbda={self.lmbda:g}"


class AveragedGradient(GradientSource):
    """VaSSO (Li & Giannakis, NeurIPS 2023): the ascent follows an exponential moving average of the
    batch gradients, which suppresses the variance of the perturbation's direction:
    `d_t = (1 - theta) * d_{t-1} + theta * g_t`, eps = rho * d_t / ||d_t||; the first step starts
    `d` at `g` (the official `solver/vasso.py`). theta = 1 is SAM. The average lives in
    `state[p]["gradient_average"]`, unscaled (a GradScaler's factor is divided out).
    """

    name = "averaged"
    single_pass = False
    stateful = True

    def __init__(self, theta: float = 0.9):
        check_number("theta", theta, low=0.0, high=1.0)
        self.theta = float(theta)

    def direction(self, params, grads, base, scale=1.0):
        """The average `d_t` updated with `grads`, returned as a copy in the gradients' scale."""
        key = "gradient_average"
        old = [(self.state[p][key], g) for p, g in zip(params, grads) if key in self.state[p]]
        if old:
            averages = [d for d, _ in old]
            torch._foreach_mul_(averages, 1.0 - self.theta)
            # theta / scale: the scaled gradient enters unscaled with no temporary (exact for the
            # power-of-two scales of a GradScaler)
            torch._foreach_add_(averages, [g for _, g in old], alpha=self.theta / scale)
        for p, g in zip(params, grads):
            if key not in self.state[p]:
                self.state[p][key] = g / scale
        # a copy in the gradients' scale: the optimizer writes eps over what it gets
        return torch._foreach_mul([self.state[p][key] for p in params], scale)

    def extra_repr(self) -> str:
        """`theta`, as `repr` shows it."""
        return f"theta={self.theta:g}"


class FilterNoise(GradientSource):
    """RWP (Li et al., "Revisiting random weight perturbation for efficiently improving
    generalization", TMLR 2024; the official nblt/RWP): the direction is Gaussian noise scaled
    filter-wise by the weights, `d = n * z` with `z ~ N(0, 1)` per coordinate and `n` the L2
    norm of the coordinate's filter (its row of the tensor viewed as `[shape[0], -1]`) for
    tensors of two or more dimensions, the whole tensor's norm plus 1e-16 for vectors (biases,
    normalisation weights: perturbed too, as in the official code); the shape
    `AsDrawn` scales it by rho (the paper's gamma), so
    `eps ~ N(0, (gamma * n)^2)`. The gradient is not read: the pass at w + eps does not wait for
    the one at w. Drawn from `NormalNoise` (saved with the optimizer).
    """

    name = "filter-noise"
    independent_of_gradient = True

    def bind(self, state, base, generator=None) -> None:
        """Seeds the noise from the optimizer's generator."""
        super().bind(state, base, generator)
        self.noise = NormalNoise(generator if generator is not None else torch.Generator())

    def direction(self, params, grads, base, scale=1.0):
        """Gaussian noise scaled per filter by the filter's weight norm."""
        noise = self.noise.like(params)
        torch._foreach_mul_(noise, filter_norms(params))
        return noise

    def state_dict(self):
        """The noise generators' states."""
        return {"noise": self.noise.state_dict()}

    def load_state_dict(self, state) -> None:
        """Restores the noise generators' states."""
        self.noise.load_state_dict(state.get("noise", {}))


def filter_norms(params: list[Tensor]) -> list[Tensor]:
    """Per tensor, a factor broadcastable to its local shard: each filter's (row's) L2 norm for a
    tensor of two or more dimensions, the whole tensor's L2 norm + 1e-16 for a vector. A sharded
    (FSDP) tensor holds whole rows, so only the vectors' norms are combined across shards.
    """
    local = local_shards(params)
    out: list[Tensor | None] = []
    vectors = []
    for t in local:
        if t.dim() > 1:
            rows = t.flatten(1).norm(dim=1)  # flatten, not reshape: a shard may hold no row
            out.append(rows.reshape(-1, *([1] * (t.dim() - 1))))
        else:
            out.append(None)
            vectors.append(t)
    if vectors:
        squares = torch.stack([torch.linalg.vector_norm(v).square().to(vectors[0].device) for v in vectors])
        group = shard_group(params)
        if group is not None:
            torch.distributed.all_reduce(squares, group=group)
        norms = iter(squares.sqrt().add_(1e-16).unbind())
        out = [next(norms).to(t.device) if o is None else o for t, o in zip(local, out)]
    return out


class NoisyGradient(GradientSource):
    """bSAM's source (Moellenhoff & Khan, "SAM as an optimal relaxation of Bayes", ICLR 2023; the
    authors' team-approx-bayes/bayesian-sam, `optim.py`): the ascent pass runs at a random point
    `w + z`, `z ~ N(0, 1 / (num_data * s))` per coordinate, s the precision that the base
    optimizer `BSAMBase` learns; its gradient g (taken there) drives the
    perturbation and the precision's update. w is restored exactly after that pass.
    """

    name = "noisy"
    offsets_ascent_pass = True

    def __init__(self, base, num_data: int):
        check_number("num_data", num_data, low=1)
        self.precision_of = base.precision
        self.num_data = float(num_data)

    def bind(self, state, base, generator=None) -> None:
        """Seeds the noise from the optimizer's generator."""
        super().bind(state, base, generator)
        self.noise = NormalNoise(generator if generator is not None else torch.Generator())

    def ascent_offset(self, params):
        """The random point of the first pass: z ~ N(0, 1 / (num_data * s))."""
        noise = self.noise.like(params)
        # sqrt(1 / (N s)): the standard deviation of the posterior's diagonal Gaussian
        scales = torch._foreach_mul(local_shards([self.precision_of(p) for p in params]), self.num_data)
        torch._foreach_reciprocal_(scales)
        torch._foreach_sqrt_(scales)
        torch._foreach_mul_(noise, scales)
        return noise

    def direction(self, params, grads, base, scale=1.0):
        """The gradient g taken at the random point, unscaled."""
        # eps = rho g / s is not invariant to a loss scale (a ball's normalisation is): unscaled, in a
        # copy, since the optimizer keeps the gradients themselves for the descent (and unscales them)
        return grads if scale == 1.0 else torch._foreach_div(grads, scale)

    def state_dict(self):
        """The noise generators' states."""
        return {"noise": self.noise.state_dict()}

    def load_state_dict(self, state) -> None:
        """Restores the noise generators' states."""
        self.noise.load_state_dict(state.get("noise", {}))

    def extra_repr(self) -> str:
        """`num_data`, as `repr` shows it."""
        return f"num_data={self.num_data:g}"
