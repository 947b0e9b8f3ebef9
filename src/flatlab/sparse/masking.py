"""Sparse training: one boolean mask per prunable weight, built once (static methods) or updated
during training by drop/grow (dynamic methods), and enforced on weights, gradients, optimizer
state and SAM perturbations.

Static masks: `random`; `magnitude` (one-shot prune of the current weights, lottery-ticket
style with `init(rewind_to=...)`); `snip` (connection sensitivity |g * w|, Lee et al. 2019);
`grasp` (gradient-signal preservation, keep the largest w * Hg, Wang et al. 2020).
Dynamic masks start random and move every `update_interval` steps: `set` (drop the smallest
|w|, grow at random, Mocanu et al. 2018) and `rigl` (drop the smallest |w|, grow the largest
|dense gradient|, Evci et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Batch
from ..errors import UsageError, check_number
from ..optim.topk import drop_grow_per_tensor, random_mask, random_mask_per_tensor, topk_mask, topk_mask_per_tensor
from .allocation import DISTRIBUTIONS, layer_counts
from .prunable import prunable_parameters

__all__ = ["WeightMasking", "STATIC_METHODS", "DYNAMIC_METHODS"]

STATIC_METHODS = ("random", "magnitude", "snip", "grasp")
DYNAMIC_METHODS = ("set", "rigl")



class WeightMasking:
    """Boolean masks over the prunable weights of `model` at a global `sparsity`.

    Args:
        model: the network; its conv and linear weights are masked (see `prunable_parameters`).
        sparsity: fraction of masked weights that are zero, in [0, 1). Exactly
            `round((1 - sparsity) * N)` weights stay live, N the number of masked weights.
        method: one of `random`, `magnitude`, `snip`, `grasp` (static), `set`, `rigl`
            (dynamic; they start from a random mask).
        distribution: `erk` (default), `uniform` (same density per layer) or `global` (one
            budget: for the scored methods the top scores across all layers, as in the SNIP, GraSP
            and lottery-ticket papers; for the random ones a uniformly random global mask).
        update_interval: steps between two drop/grow updates (dynamic methods).
        update_fraction: fraction of each layer's live weights moved at the first update; it decays
            by a cosine to 0 at `end_fraction * total_steps`, after which the mask is fixed.
        total_steps: length of the run in optimizer steps; None keeps `update_fraction` constant
            and never stops updating.
        seed: seed of the masking's own CPU generator (random masks, SET's growth).
        keep_first: keep the first prunable layer dense (not masked at all).
        keep_last: keep the last prunable layer dense.
        grasp_temperature: GraSP divides the logits by this (200 in the authors' code).

    Use, in this order:

    ```python
    masking = WeightMasking(model, 0.9, method="rigl", total_steps=epochs * len(loader))
    masking.init()                      # snip/grasp: masking.init(data=few_batches)
    opt = flatlab.create_optimizer("s2sam", model, lr=0.1, momentum=0.9)
    masking.attach(opt)                 # gradient hooks + the optimizer's weight masks
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        masking.after_step()            # re-applies the masks, drop/grow when due
    ```

    With RigL, the dense gradient used for growth is the one of the last backward before
    `after_step`: the gradient the optimizer applied. For SAM that is the descent gradient at
    w + eps, for S2-SAM the gradient at the point perturbed by the previous step's gradient. It is
    all-reduced across processes when `torch.distributed` is initialised; use the same `seed`
    on every rank. Weight magnitudes are always those of w, not w + eps.
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float,
        *,
        method: str = "random",
        distribution: str = "erk",
        update_interval: int = 100,
        update_fraction: float = 0.3,
        end_fraction: float = 0.75,
        total_steps: int | None = None,
        seed: int = 0,
        keep_first: bool = False,
        keep_last: bool = False,
        grasp_temperature: float = 200.0,
    ):
        check_number("sparsity", sparsity, low=0, high=1, high_open=True)
        if method not in STATIC_METHODS + DYNAMIC_METHODS:
            methods = ", ".join(STATIC_METHODS + DYNAMIC_METHODS)
            raise UsageError(f"unknown sparse method {method!r}; choose from {methods}")
        if distribution not in DISTRIBUTIONS + ("global",):
            choices = ", ".join(DISTRIBUTIONS + ("global",))
            raise UsageError(f"unknown distribution {distribution!r}; choose from {choices}")
        check_number("update_interval", update_interval, low=1, integer=True)
        check_number("update_fraction", update_fraction, low=0, high=1)
        check_number("end_fraction", end_fraction, low=0, low_open=True, high=1)
        check_number("total_steps", total_steps, low=1, integer=True, optional=True)
        check_number("grasp_temperature", grasp_temperature, low=0, low_open=True)
        named = prunable_parameters(model, keep_first=keep_first, keep_last=keep_last)
        if not named:
            raise UsageError("the model has no prunable (conv or linear) weights")

        self.model = model
        self.sparsity = float(sparsity)
        self.method = method
        self.distribution = distribution
        self.update_interval = int(update_interval)
        self.update_fraction = float(update_fraction)
        self.end_fraction = float(end_fraction)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.grasp_temperature = float(grasp_temperature)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        #: name -> bool mask; the tensors are updated in place, never replaced
        self.masks: dict[str, Tensor] = {n: torch.ones_like(p, dtype=torch.bool) for n, p in named}
        #: param -> the same mask tensors, the mapping handed to `SharpnessAware.set_weight_masks`
        self.masks_by_param: dict[Tensor, Tensor] = {p: self.masks[n] for n, p in named}
        self.generator = torch.Generator().manual_seed(int(seed))
        self.steps = 0
        self.updates = 0
        self.initialized = False
        self.optimizer: torch.optim.Optimizer | None = None
        self._handles: list[Any] = []
        self._dense: dict[str, Tensor] = {}
        self._keep_dense = False  # set when the coming step ends with a RigL update
        self._bypass = False  # scoring passes (SNIP, GraSP) need the unmasked gradient

    # ----------------------------------------------------------------------------------------
    # schedule

    @property
    def dynamic(self) -> bool:
        """Whether the mask moves during training (SET, RigL)."""
        return self.method in DYNAMIC_METHODS

    @property
    def density(self) -> float:
        """Fraction of the masked weights that stay live."""
        return 1.0 - self.sparsity

    @property
    def end_step(self) -> float:
        """The step from which the mask no longer moves (infinite when `total_steps` is None)."""
        return math.inf if self.total_steps is None else self.end_fraction * self.total_steps

    def fraction_at(self, step: int) -> float:
        """Fraction of each layer's live weights dropped (and regrown) by an update at `step`:
        `update_fraction / 2 * (1 + cos(pi * step / end_step))`, 0 from `end_step` on.
        """
        if self.total_steps is None:
            return self.update_fraction
        if step >= self.end_step:
            return 0.0
        return 0.5 * self.update_fraction * (1.0 + math.cos(math.pi * step / self.end_step))

    def update_due(self, step: int) -> bool:
        """Whether `after_step` updates the mask once `step` optimizer steps are done."""
        return self.dynamic and step > 0 and step % self.update_interval == 0 and step < self.end_step

    def _refresh_due(self) -> None:
        self._keep_dense = self.method == "rigl" and self.update_due(self.steps + 1)
        self._dense.clear()

    # ----------------------------------------------------------------------------------------
    # building the masks

    def _counts(self) -> list[int]:
        return layer_counts([tuple(p.shape) for p in self.params], self.sparsity, self.distribution)

    def _select(self, scores: list[Tensor]) -> list[Tensor]:
        if self.distribution == "global":
            return topk_mask(scores, self.density)
        return topk_mask_per_tensor(scores, self._counts())

    def _random(self) -> list[Tensor]:
        if self.distribution == "global":
            return random_mask(self.params, self.density, self.generator)
        return random_mask_per_tensor(self.params, self._counts(), self.generator)

    def init(
        self,
        data: Iterable[Batch] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        rewind_to: dict[str, Tensor] | None = None,
    ) -> WeightMasking:
        """Builds the masks and zeroes the pruned weights; returns `self`.

        `data` (snip, grasp): an iterable of a few `(inputs, targets)` batches, read once; the
        scores use the gradient of the mean loss over them, with `loss_fn(outputs, targets)`
        (default cross-entropy), in the model's current train/eval mode. Buffers (BatchNorm
        statistics) are restored afterwards.

        `rewind_to`: a (partial) `model.state_dict()` saved earlier, loaded after the masks are
        built, e.g. the initial weights for a lottery ticket:

        ```python
        theta0 = copy.deepcopy(model.state_dict())
        ...                                   # dense training
        WeightMasking(model, 0.8, method="magnitude").init(rewind_to=theta0)
        ```
        """
        if self.method in ("snip", "grasp") and data is None:
            raise ValueError(f"method {self.method!r} scores connections on data: call init(data=batches)")
        if self.method in ("random", "set", "rigl"):
            new = self._random()
        elif self.method == "magnitude":
            with self._unperturbed():
                new = self._select([p.detach().abs() for p in self.params])
        elif self.method == "snip":
            new = self._select(self._snip_scores(data, loss_fn))
        else:
            new = self._select(self._grasp_scores(data, loss_fn))
        for m, n in zip(self.masks.values(), new):
            m.copy_(n)
        if rewind_to is not None:
            self._rewind(rewind_to)
        self._mask_everything()
        self.initialized = True
        self._refresh_due()
        return self

    def _rewind(self, state: dict[str, Tensor]) -> None:
        unexpected = sorted(set(state) - set(self.model.state_dict()))
        if unexpected:
            raise ValueError(f"rewind_to names entries the model does not have: {unexpected}")
        self.model.load_state_dict(state, strict=False)

    @contextmanager
    def _scoring(self) -> Iterator[None]:
        buffers = [(b, b.clone()) for b in self.model.buffers()]
        self._bypass = True
        try:
            with torch.enable_grad(), self._unperturbed():
                yield
        finally:
            self._bypass = False
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)

    def _batches(self, data: Iterable[Batch]) -> Iterator[Batch]:
        device = self.params[0].device
        n = 0
        for x, y in data:
            n += 1
            yield x.to(device), y.to(device)
        if n == 0:
            raise ValueError("data gave no batch to score the connections on")

    def _mean_gradient(self, data, loss_fn, temperature: float = 1.0) -> list[Tensor]:
        loss_fn = loss_fn or F.cross_entropy
        total = [torch.zeros_like(p) for p in self.params]
        n = 0
        for x, y in self._batches(data):
            grads = torch.autograd.grad(loss_fn(self.model(x) / temperature, y), self.params, allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t.add_(g)
            n += 1
        return [t / n for t in total]

    def _snip_scores(self, data, loss_fn) -> list[Tensor]:
        # SNIP's sensitivity: the derivative of the loss with respect to a multiplicative gate c
        # on each weight, at c = 1, is g * w.
        with self._scoring():
            grads = self._mean_gradient(data, loss_fn)
            return [(g * p.detach()).abs() for g, p in zip(grads, self.params)]

    def _grasp_scores(self, data, loss_fn) -> list[Tensor]:
        # GraSP removes the weights with the largest -w * Hg (their removal reduces the gradient
        # norm least), i.e. keeps the largest w * Hg. Hg comes from a double backward through
        # g_fixed . grad(L), g_fixed the gradient of the first pass (both on logits / T).
        loss_fn = loss_fn or F.cross_entropy
        batches = list(data)  # read twice: the gradient, then Hg
        with self._scoring():
            fixed = self._mean_gradient(batches, loss_fn, self.grasp_temperature)
            hg = [torch.zeros_like(p) for p in self.params]
            for x, y in self._batches(batches):
                loss = loss_fn(self.model(x) / self.grasp_temperature, y)
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                z = sum((g * f).sum() for g, f in zip(grads, fixed) if g is not None)
                if isinstance(z, Tensor) and z.requires_grad:
                    for h, d in zip(hg, torch.autograd.grad(z, self.params, allow_unused=True)):
                        if d is not None:
                            h.add_(d)
            return [p.detach() * h / len(batches) for p, h in zip(self.params, hg)]

    # ----------------------------------------------------------------------------------------
    # enforcing the masks

    def attach(self, optimizer: torch.optim.Optimizer | None = None) -> WeightMasking:
        """Registers gradient hooks that zero the gradients of pruned weights (so momentum and
        Adam moments never move them and a SAM ascent direction is zero there), and, for a
        `flatlab.SharpnessAware` optimizer, hands it the masks so that every perturbation
        shape leaves pruned weights untouched. Returns `self`.

        Call it after `init` (or `load_state_dict`); calling it again re-attaches (e.g. to a
        new optimizer).
        """
        self.detach()
        for name, p in zip(self.names, self.params):
            self._handles.append(p.register_hook(self._hook(name, p)))
        self.optimizer = optimizer
        set_weight_masks = getattr(optimizer, "set_weight_masks", None)
        if set_weight_masks is not None:
            set_weight_masks(self.masks_by_param)
        return self

    def detach(self) -> None:
        """Removes the gradient hooks and the optimizer's weight masks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.optimizer is not None and getattr(self.optimizer, "weight_masks", None) is self.masks_by_param:
            self.optimizer.set_weight_masks({})
        self.optimizer = None

    def _hook(self, name: str, param: Tensor) -> Callable[[Tensor], Tensor | None]:
        mask = self.masks[name]

        def hook(grad: Tensor) -> Tensor | None:
            if self._bypass:
                return None
            if self._keep_dense:
                # Runs before the gradient is accumulated into .grad: an empty .grad (None, or
                # all zero after zero_grad(set_to_none=False)) means the first backward since
                # zero_grad, so a SAM step's descent pass restarts the copy; a non-empty one
                # means a further micro-batch of gradient accumulation, which adds up.
                held = self._dense.get(name)
                if held is None or param.grad is None or not bool(param.grad.any()):
                    self._dense[name] = grad.detach().clone()
                else:
                    held.add_(grad.detach())
            return torch.where(mask, grad, 0)

        return hook

    def _unperturbed(self):
        """Holds w in the parameters when a single-step optimizer left them at w + eps."""
        unperturbed = getattr(self.optimizer, "unperturbed", None)
        return unperturbed() if unperturbed is not None else nullcontext()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Multiplies the weights by their masks (pruned weights become 0)."""
        torch._foreach_mul_(self.params, list(self.masks.values()))

    @torch.no_grad()
    def _mask_everything(self) -> None:
        # Besides the weights: the base optimizer's momentum / Adam moments, so a dropped weight
        # is not moved by the momentum it had, a SharpnessAware's saved w, so that restoring w
        # does not revive it, and .grad, so that no stale gradient is left on a dropped weight.
        self.apply_masks()
        grads = [(p.grad, m) for p, m in self.masks_by_param.items() if p.grad is not None]
        if grads:
            torch._foreach_mul_([g for g, _ in grads], [m for _, m in grads])
        optimizers = [self.optimizer, getattr(self.optimizer, "base", None)]
        for opt in (o for o in optimizers if o is not None):
            # a state a fresh weight does not start at 0 (bSAM's precision, a divisor, starts at 1)
            fills = getattr(opt, "pruned_state_fill", {})
            for p, m in self.masks_by_param.items():
                for key, value in opt.state.get(p, {}).items():
                    if isinstance(value, Tensor) and value.is_floating_point() and value.shape == p.shape:
                        if key in fills:
                            value.masked_fill_(m == 0, fills[key])
                        else:
                            value.mul_(m)

    def after_step(self, step: int | None = None) -> None:
        """Call after every `optimizer.step()`: re-applies the masks to the weights and, for the
        dynamic methods, drops and grows when an update is due.

        `step`, optional, is the number of optimizer steps taken so far, this one included; it
        must match the masking's own count (`self.steps + 1`).
        """
        expected = self.steps + 1
        if step is not None and int(step) != expected:
            raise ValueError(f"after_step(step={step}) but this is step {expected}: call it once after every step")
        if not self.initialized:
            raise RuntimeError("call init() (or load_state_dict()) before training")
        self.steps = expected
        with torch.no_grad():
            self.apply_masks()
            if self.update_due(self.steps):
                self._update()
        self._refresh_due()

    def _update(self) -> None:
        fraction = self.fraction_at(self.steps)
        masks = list(self.masks.values())
        counts = [int(fraction * int(m.sum())) for m in masks]
        with self._unperturbed():
            drop = [p.detach().abs() for p in self.params]
        if self.method == "rigl":
            grow = self._dense_gradients()
        else:
            grow = [torch.rand(p.shape, generator=self.generator) for p in self.params]
        for m, new in zip(masks, drop_grow_per_tensor(masks, drop, grow, counts)):
            m.copy_(new)
        self._mask_everything()
        self.updates += 1

    def _dense_gradients(self) -> list[Tensor]:
        if not self._dense:
            raise RuntimeError(
                "RigL found no dense gradient for its update: attach() the masking before training "
                "and call after_step() after the backward pass of every step"
            )
        grads = [self._dense.get(n, torch.zeros_like(p)).abs() for n, p in zip(self.names, self.params)]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every rank must grow the same coordinates
            for g in grads:
                dist.all_reduce(g)
        return grads

    # ----------------------------------------------------------------------------------------
    # state and reporting

    def state_dict(self) -> dict[str, Any]:
        """Masks (bool), counters and the generator state: with the model's and optimizer's state
        dicts, a run resumes exactly.
        """
        return {
            "masks": {n: m.detach().clone() for n, m in self.masks.items()},
            "steps": self.steps,
            "updates": self.updates,
            "initialized": self.initialized,
            "generator": self.generator.get_state(),
            "method": self.method,
            "sparsity": self.sparsity,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Loads masks, counters and generator in place (the weights come from the model's own
        `state_dict`; call `apply_masks` if they may not be masked yet).
        """
        masks = state["masks"]
        if list(masks) != self.names:
            raise ValueError(f"saved masks are for {list(masks)}, this masking has {self.names}")
        for name, saved in masks.items():
            if saved.shape != self.masks[name].shape:
                raise ValueError(
                    f"saved mask {name!r} has shape {tuple(saved.shape)}, the weight {tuple(self.masks[name].shape)}"
                )
        for name, saved in masks.items():
            self.masks[name].copy_(saved.to(device=self.masks[name].device, dtype=torch.bool))
        self.steps = int(state["steps"])
        self.updates = int(state["updates"])
        self.initialized = bool(state["initialized"])
        self.generator.set_state(state["generator"])
        self._refresh_due()

    def densities(self) -> dict[str, float]:
        """Live fraction of each masked weight, from the masks."""
        return {n: int(m.sum()) / m.numel() for n, m in self.masks.items()}

    @torch.no_grad()
    def report(self) -> dict[str, Any]:
        """Real sparsity per layer and overall, from the masks and from the weights equal to zero
        (the weights w, also under a single-step optimizer holding w + eps). JSON-serialisable.

        Example:
            ```python
            r = masking.report()
            r["overall"]["mask_sparsity"], r["layers"]["conv1.weight"]["weight_sparsity"]
            ```
        """
        layers: dict[str, dict[str, Any]] = {}
        with self._unperturbed():
            for name, p in zip(self.names, self.params):
                mask = self.masks[name]
                live = int(mask.sum())
                zeros = int((p == 0).sum())
                layers[name] = {
                    "shape": list(p.shape),
                    "numel": p.numel(),
                    "live": live,
                    "zero_weights": zeros,
                    "mask_sparsity": 1.0 - live / p.numel(),
                    "weight_sparsity": zeros / p.numel(),
                    "pruned_nonzero": int(((p != 0) & ~mask).sum()),
                }
        numel = sum(v["numel"] for v in layers.values())
        live = sum(v["live"] for v in layers.values())
        zeros = sum(v["zero_weights"] for v in layers.values())
        return {
            "method": self.method,
            "distribution": self.distribution,
            "target_sparsity": self.sparsity,
            "steps": self.steps,
            "updates": self.updates,
            "overall": {
                "numel": numel,
                "live": live,
                "zero_weights": zeros,
                "mask_sparsity": 1.0 - live / numel,
                "weight_sparsity": zeros / numel,
                "pruned_nonzero": sum(v["pruned_nonzero"] for v in layers.values()),
            },
            "layers": layers,
        }

    def __repr__(self) -> str:
        parts = [f"sparsity={self.sparsity:g}", f"method={self.method!r}", f"distribution={self.distribution!r}"]
        if self.dynamic:
            parts += [
                f"update_interval={self.update_interval}",
                f"update_fraction={self.update_fraction:g}",
                f"end_fraction={self.end_fraction:g}",
                f"total_steps={self.total_steps}",
            ]
        return f"{type(self).__name__}({', '.join(parts)}, layers={len(self.names)})"
