"""Which coordinates are perturbed: all (SAM), random whole tensors (ESAM's SWP), or a sparse mask
(SSAM-F's Fisher top-k, SSAM-D's drop/grow).

A policy is bound to the optimizer's parameter list once and refers to tensors by their index in
it. Its state (masks, counters) is small, explicit and saved by ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from .fisher import empirical_fisher
from .topk import drop_grow, random_mask, topk_mask

__all__ = ["Coordinates", "AllCoordinates", "RandomTensors", "MaskedCoordinates", "FisherMask", "DynamicMask"]


class Coordinates:
    """Interface of a coordinate policy (and the "all coordinates" default)."""

    name = "all"
    #: multiplies the perturbation (ESAM rescales by 1/beta)
    scale = 1.0

    def bind(self, params: list[Tensor], generator: torch.Generator) -> None:
        self.params = params
        self.generator = generator

    def begin_ascent_pass(self, skip_grads: bool = True) -> None:
        """Called before the forward/backward at w: may turn off weight gradients it will not use
        (unless ``skip_grads`` is False, e.g. when DDP must all-reduce every gradient)."""

    def end_ascent_pass(self) -> None:
        """Undoes ``begin_ascent_pass``."""

    def observe(self, step: int, index: list[int], grads: list[Tensor]) -> None:
        """Sees the gradient at w before the perturbation is built (for masks refreshed from it)."""

    def select(self, index: list[int]) -> list[int]:
        """The tensors (indices into the bound params) that are perturbed, among those with a gradient."""
        return index

    def masks(self, index: list[int]) -> list[Tensor | None]:
        """Per selected tensor, a boolean mask of perturbed coordinates (None: all of them)."""
        return [None] * len(index)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def extra_repr(self) -> str:
        return ""


AllCoordinates = Coordinates


class RandomTensors(Coordinates):
    """ESAM's Stochastic Weight Perturbation: each tensor is perturbed with probability ``beta``, and
    the perturbation is scaled by 1/beta so that it is unbiased.

    Tensors not drawn skip their weight-gradient computation in the ascent backward: their
    ``requires_grad`` is switched off for that pass (never touching tensors the user froze) and
    restored right after. That skipped work is where SWP's speed-up comes from.
    """

    name = "random-tensors"

    def __init__(self, beta: float = 0.6):
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got beta={beta}")
        self.beta = float(beta)
        self.scale = 1.0 / self.beta
        self._picked: list[bool] | None = None
        self._disabled: list[Tensor] = []

    def _draw(self) -> list[bool]:
        if self.beta == 1.0:
            return [True] * len(self.params)
        return (torch.rand(len(self.params), generator=self.generator) < self.beta).tolist()

    def begin_ascent_pass(self, skip_grads: bool = True) -> None:
        self._picked = self._draw()
        if not skip_grads:
            return
        self._disabled = [p for p, keep in zip(self.params, self._picked) if not keep and p.requires_grad]
        for p in self._disabled:
            p.requires_grad_(False)

    def end_ascent_pass(self) -> None:
        for p in self._disabled:
            p.requires_grad_(True)
        self._disabled = []

    def select(self, index: list[int]) -> list[int]:
        # Without begin_ascent_pass (manual loops) the draw happens here: same law, no speed-up.
        picked = self._picked if self._picked is not None else self._draw()
        self._picked = None
        return [i for i in index if picked[i]]

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}"


class MaskedCoordinates(Coordinates):
    """Perturbs the coordinates of a boolean mask over all parameters; ``sparsity`` is the fraction
    of coordinates NOT perturbed (SSAM's convention). The mask starts uniformly random (SSAM
    Algorithm 1, line 1) and lives on each parameter's device."""

    name = "mask"

    def __init__(self, sparsity: float = 0.5, update_interval: int = 100):
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got sparsity={sparsity}")
        if int(update_interval) != update_interval or update_interval < 1:
            raise ValueError(f"update_interval must be an integer >= 1, got update_interval={update_interval}")
        self.sparsity = float(sparsity)
        self.update_interval = int(update_interval)
        self.mask_list: list[Tensor] = []
        self.refreshes = 0

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    def bind(self, params, generator) -> None:
        super().bind(params, generator)
        self.mask_list = random_mask(params, self.density, generator)

    def due(self, step: int) -> bool:
        """Whether the mask is to be refreshed before step ``step`` (0-based)."""
        return step % self.update_interval == 0

    def masks(self, index):
        return [self.mask_list[i] for i in index]

    def state_dict(self) -> dict:
        return {"masks": list(self.mask_list), "refreshes": self.refreshes}

    def load_state_dict(self, state: dict) -> None:
        masks = state["masks"]
        if len(masks) != len(self.params):
            raise ValueError(f"saved state has {len(masks)} masks for {len(self.params)} parameters")
        for m, p in zip(masks, self.params):
            if m.shape != p.shape:
                raise ValueError(f"saved mask of shape {tuple(m.shape)} for a parameter of shape {tuple(p.shape)}")
        # torch.optim would cast saved state to the parameter's dtype; a mask must stay boolean.
        self.mask_list = [m.to(device=p.device, dtype=torch.bool) for m, p in zip(masks, self.params)]
        self.refreshes = int(state["refreshes"])

    def extra_repr(self) -> str:
        return f"sparsity={self.sparsity:g}, update_interval={self.update_interval}"


class FisherMask(MaskedCoordinates):
    """SSAM-F: the mask keeps the global top-(1 - sparsity) coordinates of the empirical Fisher,
    computed from ``num_samples`` training samples by an explicit ``refresh`` call with data."""

    name = "fisher"

    def __init__(self, sparsity: float = 0.5, num_samples: int = 128, update_interval: int = 100):
        super().__init__(sparsity, update_interval)
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got num_samples={num_samples}")
        self.num_samples = int(num_samples)

    def refresh(
        self,
        model: nn.Module,
        data: Iterable[tuple[Tensor, Tensor]],
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        scores = empirical_fisher(model, data, self.params, self.num_samples, loss_fn)
        self.mask_list = topk_mask(scores, self.density)
        self.refreshes += 1

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_samples={self.num_samples}"


class DynamicMask(MaskedCoordinates):
    """SSAM-D: every ``update_interval`` steps, drop the perturbed coordinates with the smallest
    |gradient| (the flattest) and grow as many at random among the unperturbed, so the sparsity
    stays constant. The drop rate (a fraction of the perturbed coordinates) decays by a cosine
    from ``drop_rate`` to 0 over ``total_steps`` (constant when ``total_steps`` is None)."""

    name = "dynamic"

    def __init__(
        self,
        sparsity: float = 0.5,
        update_interval: int = 100,
        drop_rate: float = 0.5,
        total_steps: int | None = None,
    ):
        super().__init__(sparsity, update_interval)
        if not 0.0 <= drop_rate <= 1.0:
            raise ValueError(f"drop_rate must be in [0, 1], got drop_rate={drop_rate}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1 or None, got total_steps={total_steps}")
        self.drop_rate = float(drop_rate)
        self.total_steps = total_steps

    def rate_at(self, step: int) -> float:
        if self.total_steps is None:
            return self.drop_rate
        progress = min(step / self.total_steps, 1.0)
        return self.drop_rate * 0.5 * (1.0 + math.cos(math.pi * progress))

    def observe(self, step, index, grads) -> None:
        if step == 0 or not self.due(step) or not index:
            return
        masks = [self.mask_list[i] for i in index]
        live = sum(int(m.sum()) for m in masks)
        count = int(self.rate_at(step) * live)
        drop_scores = [g.abs() for g in grads]
        grow_scores = [torch.rand(g.shape, generator=self.generator) for g in grads]
        for i, m in zip(index, drop_grow(masks, drop_scores, grow_scores, count)):
            self.mask_list[i] = m
        self.refreshes += 1

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, drop_rate={self.drop_rate:g}, total_steps={self.total_steps}"
