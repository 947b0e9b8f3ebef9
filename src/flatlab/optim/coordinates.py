"""Which coordinates are perturbed: all (SAM), random whole tensors (ESAM's SWP), chosen whole tensors
(SAM-ON's normalisation layers), or a sparse mask (SSAM-F's Fisher top-k, SSAM-D's drop/grow).

A policy is bound once to the optimizer's parameters, its generator and its per-parameter state
(`optimizer.state`, where masks live as `state[p]["perturb_mask"]`, as torch.optim keeps
per-parameter state). It refers to tensors themselves, never to their position in a list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm  # torch's own base of every BatchNorm, private by name
from torch.nn.modules.normalization import GroupNorm, LayerNorm

from ..errors import UsageError, check_number
from .fisher import empirical_fisher
from .functional import shard_group
from .policy import Policy
from .topk import drop_grow, random_mask, topk_mask

__all__ = [
    "Coordinates", "AllCoordinates", "RandomTensors", "ChosenTensors", "MaskedCoordinates", "FisherMask",
    "DynamicMask", "NORM_LAYERS", "norm_parameters",
]  # fmt: skip

#: `state[p]` key of a parameter's boolean perturbation mask
MASK_KEY = "perturb_mask"

Batches = Iterable[tuple[Tensor, Tensor]]

#: the normalisation layers whose affine parameters SAM-ON perturbs (and `param_groups` keeps out
#: of weight decay on request)
NORM_LAYERS = (_BatchNorm, LayerNorm, GroupNorm)


def norm_parameters(model: nn.Module) -> list[Tensor]:
    """The affine parameters (weight and bias) of the normalisation layers of `model`."""
    return [p for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)]


class Coordinates(Policy):
    """Interface of a coordinate policy.

    Capabilities are declared, not discovered:

    Attributes:
        name: short name for `repr`.
        scale: multiplies the perturbation's radius (ESAM rescales by 1/beta).
        needs_data: True when the mask is refreshed from training data (SSAM-F); the optimizer
            then calls `refresh` whenever `due` says so, before the step.
        ascent_weight_grads: expected fraction of weight gradients the ascent pass computes.
    """

    name = "coordinates"
    scale = 1.0
    needs_data = False
    ascent_weight_grads = 1.0
    #: every coordinate of every tensor with a gradient (no choice, no mask of its own)
    selects_all = False
    #: keeps state derived from the gradient at w (`observe`), e.g. a mask refreshed from it
    observes_gradients = False
    #: the live weights of a sparse network (parameter -> weight mask): only they are perturbed
    live_weights: Mapping[Tensor, Tensor] = {}

    def check(self, optimizer) -> None:
        """Refuses, in one line, a combination with the optimizer's other choices it cannot serve."""
        if self.has_data_source and optimizer.model is None:
            raise ValueError("a mask that refreshes itself from data needs model= (the model it scores)")

    def restrict_to_live(self, masks: Mapping[Tensor, Tensor]) -> None:
        """Perturbs only the live weights of a sparse network: `masks` maps a parameter to its
        weight mask, kept by reference so a sparse schedule that updates it is followed.
        """
        self.live_weights = masks

    @property
    def perturbs_all(self) -> bool:
        """Whether every coordinate of every tensor with a gradient is perturbed."""
        return self.selects_all and not self.live_weights

    def masks(self, params: list[Tensor]) -> list[Tensor | None]:
        """Per tensor, a boolean mask of perturbed coordinates (None: all of them): the policy's
        own mask, within the live weights.
        """
        own = self.own_masks(params)
        if not self.live_weights:
            return own
        out = []
        for m, p in zip(own, params):
            w = self.live_weights.get(p)
            out.append(w if m is None else (m if w is None else m & w.bool()))
        return out

    def own_masks(self, params: list[Tensor]) -> list[Tensor | None]:
        """The policy's own mask per tensor (None: all coordinates)."""
        return [None] * len(params)

    @torch.no_grad()
    def keep_pruned(self, weights: list[Tensor]) -> None:
        """Zeroes the weights a sparse schedule pruned (after w or w + eps was written back)."""
        pairs = [(w, self.live_weights[w]) for w in weights if w in self.live_weights] if self.live_weights else []
        if pairs:
            torch._foreach_mul_([w for w, _ in pairs], [m for _, m in pairs])

    def observes_gradient_at(self, step: int) -> bool:
        """Whether `observe` updates state from the gradient at w before step `step`; it must
        never see a non-finite one then (the optimizer checks it first, one more host sync).
        """
        return False

    def bind(self, params: list[Tensor], generator: torch.Generator, state: MutableMapping[Tensor, dict]) -> None:
        """The optimizer's parameters, its generator and its per-parameter state (where masks live)."""
        self.params = params
        self.generator = generator
        self.state = state

    def begin_ascent_pass(self, skip_grads: bool = True) -> None:
        """Called before the forward/backward at w: may turn off weight gradients it will not use
        (unless `skip_grads` is False, e.g. when DDP must all-reduce every gradient).
        """

    def end_ascent_pass(self) -> None:
        """Undoes `begin_ascent_pass`."""

    def observe(self, step: int, params: list[Tensor], grads: list[Tensor]) -> None:
        """Sees the gradient at w before the perturbation is built (for masks refreshed from it)."""

    def select(self, params: list[Tensor], grads: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """The perturbed tensors among `params` (those with a gradient) and their gradients."""
        return params, grads

    def due(self, step: int) -> bool:
        """Whether a data-driven refresh is due before step `step` (0-based)."""
        return False

    @property
    def num_samples(self) -> int:
        """Samples a data-driven refresh reads."""
        return 0

    def refresh(self, model: nn.Module, data: Batches, loss_fn: Callable[[Tensor, Tensor], Tensor] | None) -> None:
        """Recomputes the mask from `data` (`needs_data` policies only)."""
        raise TypeError(f"the coordinate policy '{self.name}' has no data-driven mask")

    @property
    def has_data_source(self) -> bool:
        """True when the policy was given the data its refresh reads (see `batches`)."""
        return False

    def batches(self) -> Batches:
        """The data source given at construction, ready to iterate."""
        raise TypeError(f"the coordinate policy '{self.name}' has no data source")



class AllCoordinates(Coordinates):
    """The default: every coordinate of every tensor with a gradient is perturbed (SAM)."""

    name = "all"
    selects_all = True


def draw_tensors(count: int, beta: float, generator: torch.Generator) -> list[bool]:
    """ESAM's tensor draw: each of `count` tensors kept with probability `beta`; when the draw
    keeps none, one tensor chosen uniformly (from the same generator) is kept, so that a step
    always perturbs something and the ascent backward has a graph. That forced pick happens with
    probability (1 - beta)^count: 16% per step for two tensors at beta 0.6, nil for real networks.
    """
    if count == 0:
        return []
    if beta == 1.0:
        return [True] * count
    picked = (torch.rand(count, generator=generator) < beta).tolist()
    if not any(picked):
        picked[int(torch.randint(count, (), generator=generator))] = True
    return picked


class _WholeTensors(Coordinates):
    """A choice of whole tensors, whose unchosen tensors skip their weight gradient in the ascent
    backward: `requires_grad` switched off for that pass (never touching tensors the user froze)
    and restored right after.
    """

    _disabled: list[Tensor] = []

    def _skip_gradients_outside(self, kept: set[Tensor]) -> None:
        self._disabled = [p for p in self.params if p.requires_grad and p not in kept]
        for p in self._disabled:
            p.requires_grad_(False)

    def end_ascent_pass(self) -> None:
        """Turns the weight gradients switched off back on."""
        for p in self._disabled:
            p.requires_grad_(True)
        self._disabled = []


class RandomTensors(_WholeTensors):
    """ESAM's Stochastic Weight Perturbation: each tensor is perturbed with probability `beta`
    (at least one per step, see `draw_tensors`), and the perturbation is scaled by 1/beta.

    As in the official code, the perturbation is normalised over the picked tensors (the others
    have no gradient), so its norm is rho/beta. ESAM's eq. 6 calls the 1/beta factor unbiased; that
    holds for a perturbation normalised over all tensors, not for this one, whose per-tensor
    expectation is beta * (rho/beta) * g_i / ||g_picked||, larger than SAM's rho * g_i / ||g||.

    Tensors not drawn skip their weight-gradient computation in the ascent backward: their
    `requires_grad` is switched off for that pass (never touching tensors the user froze) and
    restored right after. That skipped work is where SWP's speed-up comes from.
    """

    name = "random-tensors"

    def __init__(self, beta: float = 0.6):
        check_number("beta", beta, low=0.0, low_open=True, high=1.0)
        self.beta = float(beta)
        self.scale = 1.0 / self.beta
        self.ascent_weight_grads = self.beta
        self._picked: set[Tensor] | None = None

    def _draw(self, candidates: list[Tensor]) -> set[Tensor]:
        return {p for p, keep in zip(candidates, draw_tensors(len(candidates), self.beta, self.generator)) if keep}

    def begin_ascent_pass(self, skip_grads: bool = True) -> None:
        """Draws this step's tensors and turns off the others' weight gradients (unless `skip_grads`
        is False).
        """
        self._picked = self._draw([p for p in self.params if p.requires_grad])
        if skip_grads:
            self._skip_gradients_outside(self._picked)

    def select(self, params, grads):
        """The tensors drawn for this step (drawn here without `begin_ascent_pass`) and their gradients."""
        # Without begin_ascent_pass (manual loops) the draw happens here: same law, no speed-up.
        picked = self._picked if self._picked is not None else self._draw(params)
        self._picked = None
        kept = [(p, g) for p, g in zip(params, grads) if p in picked]
        return [p for p, _ in kept], [g for _, g in kept]

    def extra_repr(self) -> str:
        """`beta`, as `repr` shows it."""
        return f"beta={self.beta:g}"


class ChosenTensors(_WholeTensors):
    """Perturbs the given tensors only (SAM-ON: the normalisation layers' affine parameters), with
    the perturbation normalised over them: SAM restricted to those tensors. The others skip their
    weight gradient in the ascent backward (`requires_grad` switched off for that pass, as
    `RandomTensors` does), so the ascent computes the gradients it uses and little more.
    """

    name = "chosen-tensors"

    def __init__(self, tensors: Iterable[Tensor], what: str = "the chosen tensors"):
        self.chosen = list(tensors)
        self.what = what
        self._chosen = set(self.chosen)  # narrowed to the optimizer's parameters by bind

    def bind(self, params, generator, state) -> None:
        """Keeps the chosen tensors that are among `params`; refuses when none of them is trainable."""
        super().bind(params, generator, state)
        trained = set(params)
        self._chosen = {t for t in self.chosen if t in trained}
        if not any(t.requires_grad for t in self._chosen):
            raise UsageError(f"none of {self.what} is among the optimizer's trainable parameters: nothing to perturb")
        total = sum(p.numel() for p in params if p.requires_grad)
        self.ascent_weight_grads = sum(t.numel() for t in self._chosen if t.requires_grad) / total

    def begin_ascent_pass(self, skip_grads: bool = True) -> None:
        """Turns off the weight gradients of the tensors not chosen (unless `skip_grads` is False)."""
        if skip_grads:
            self._skip_gradients_outside(self._chosen)

    def select(self, params, grads):
        """The chosen tensors among `params` and their gradients."""
        kept = [(p, g) for p, g in zip(params, grads) if p in self._chosen]
        return [p for p, _ in kept], [g for _, g in kept]

    def extra_repr(self) -> str:
        """The number of chosen tensors, as `repr` shows it."""
        return f"{len(self._chosen)} tensors"


class MaskedCoordinates(Coordinates):
    """Perturbs the coordinates of a boolean mask over all parameters; `sparsity` is the fraction
    of coordinates NOT perturbed (SSAM's convention). The mask starts uniformly random (SSAM
    Algorithm 1, line 1) and lives on each parameter's device, in `state[p]["perturb_mask"]`.
    """

    name = "mask"

    def __init__(self, sparsity: float = 0.5, update_interval: int = 100):
        check_number("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
        check_number("update_interval", update_interval, low=1, integer=True)
        self.sparsity = float(sparsity)
        self.update_interval = int(update_interval)
        self.refreshes = 0
        self.refreshed_at: int | None = None  # the step before which the mask was last refreshed

    @property
    def density(self) -> float:
        """The fraction of coordinates perturbed, 1 - sparsity."""
        return 1.0 - self.sparsity

    def bind(self, params, generator, state) -> None:
        """Binds, then draws the initial mask uniformly at random."""
        super().bind(params, generator, state)
        self._set(params, random_mask(params, self.density, generator))

    def _set(self, params: list[Tensor], masks: list[Tensor]) -> None:
        for p, m in zip(params, masks):
            self.state[p][MASK_KEY] = m

    def check(self, optimizer) -> None:
        """Refuses, besides what every coordinate policy refuses, a mask over sharded (FSDP) parameters."""
        super().check(optimizer)
        if shard_group(self.params) is not None:
            raise ValueError(
                "a mask over sharded (FSDP) parameters is not supported: SSAM's global top-k needs every "
                "shard's scores; use DDP, or a method without a coordinate mask"
            )

    def mask_list(self) -> list[Tensor]:
        """The mask of every bound parameter, in the optimizer's parameter order."""
        return self.own_masks(self.params)

    def own_masks(self, params):
        """The mask of each tensor, from `state[p]["perturb_mask"]`."""
        return [self.state[p][MASK_KEY] for p in params]

    def state_dict(self) -> dict[str, Any]:
        """How many refreshes ran, and the step before which the last one ran."""
        return {"refreshes": self.refreshes, "refreshed_at": self.refreshed_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the refresh counters (the masks come back with the optimizer's state)."""
        self.refreshes = int(state["refreshes"])
        self.refreshed_at = state.get("refreshed_at")

    def extra_repr(self) -> str:
        """`sparsity` and `update_interval`, as `repr` shows them."""
        return f"sparsity={self.sparsity:g}, update_interval={self.update_interval}"


class FisherMask(MaskedCoordinates):
    """SSAM-F: the mask keeps the global top-(1 - sparsity) coordinates of the empirical Fisher,
    computed from `num_samples` training samples every `update_interval` steps.

    `data`: where the refresh reads its samples, so that the optimizer refreshes the mask itself
    when due (it then works unmodified in any training loop): an iterable of `(inputs, targets)`
    batches, iterated anew at each refresh (a DataLoader), or a function returning one. Without
    it, call `optimizer.update_mask(model, batches)` whenever `optimizer.mask_due`; stepping
    while a refresh is due raises instead of perturbing a stale (initially random) mask.
    """

    name = "fisher"
    needs_data = True

    def __init__(
        self,
        sparsity: float = 0.5,
        num_samples: int = 128,
        update_interval: int = 100,
        *,
        data: Batches | Callable[[], Batches] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ):
        super().__init__(sparsity, update_interval)
        check_number("num_samples", num_samples, low=1, integer=True)
        self._num_samples = int(num_samples)
        self.data = data
        self.loss_fn = loss_fn

    @property
    def num_samples(self) -> int:
        """Samples each refresh of the Fisher reads."""
        return self._num_samples

    def due(self, step: int) -> bool:
        """Every `update_interval` steps (step 0 included), unless already refreshed for this step."""
        return step % self.update_interval == 0 and self.refreshed_at != step

    @property
    def has_data_source(self) -> bool:
        """Whether the mask was built with `data`."""
        return self.data is not None

    def batches(self) -> Batches:
        """`data`, or what it returns when it is a function."""
        if self.data is None:
            raise TypeError("this Fisher mask was built without data")
        return self.data() if callable(self.data) else self.data

    def refresh(self, model, data, loss_fn=None) -> None:
        """The mask becomes the global top-(1 - sparsity) of the empirical Fisher over `data`."""
        scores = empirical_fisher(model, data, self.params, self.num_samples, loss_fn or self.loss_fn)
        self._set(self.params, topk_mask(scores, self.density))
        self.refreshes += 1

    def extra_repr(self) -> str:
        """The mask's settings and `num_samples`, as `repr` shows them."""
        return f"{super().extra_repr()}, num_samples={self.num_samples}"


class DynamicMask(MaskedCoordinates):
    """SSAM-D: every `update_interval` steps, drop the perturbed coordinates with the smallest
    |gradient| (the flattest) and grow as many at random among the unperturbed, so the sparsity
    stays constant. The drop rate (a fraction of the perturbed coordinates) decays by a cosine
    from `drop_rate` to 0 over `total_steps` (constant when `total_steps` is None).
    """

    name = "dynamic"
    observes_gradients = True

    def __init__(
        self,
        sparsity: float = 0.5,
        update_interval: int = 100,
        drop_rate: float = 0.5,
        total_steps: int | None = None,
    ):
        super().__init__(sparsity, update_interval)
        check_number("drop_rate", drop_rate, low=0.0, high=1.0)
        check_number("total_steps", total_steps, low=1, integer=True, optional=True)
        self.drop_rate = float(drop_rate)
        self.total_steps = total_steps

    def rate_at(self, step: int) -> float:
        """The drop rate at step `step`: `drop_rate` decayed by a cosine to 0 over `total_steps`."""
        if self.total_steps is None:
            return self.drop_rate
        progress = min(step / self.total_steps, 1.0)
        return self.drop_rate * 0.5 * (1.0 + math.cos(math.pi * progress))

    def observes_gradient_at(self, step: int) -> bool:
        """Every `update_interval` steps after the first."""
        return step > 0 and step % self.update_interval == 0

    def observe(self, step, params, grads) -> None:
        """When due, drops the `rate_at(step)` fraction of the perturbed coordinates with the smallest
        |gradient| and grows as many at random among the others.
        """
        if not self.observes_gradient_at(step) or not params:
            return
        masks = self.own_masks(params)
        live = int(torch.stack([m.sum().to(masks[0].device) for m in masks]).sum())  # one host read
        count = int(self.rate_at(step) * live)
        drop_scores = [g.abs() for g in grads]
        grow_scores = [torch.rand(g.shape, generator=self.generator) for g in grads]
        self._set(params, drop_grow(masks, drop_scores, grow_scores, count))
        self.refreshes += 1
        self.refreshed_at = step

    def extra_repr(self) -> str:
        """The mask's settings, `drop_rate` and `total_steps`, as `repr` shows them."""
        return f"{super().extra_repr()}, drop_rate={self.drop_rate:g}, total_steps={self.total_steps}"
