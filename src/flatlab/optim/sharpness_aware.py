"""The one optimizer class of the SAM family: a wrapper around a base optimizer, composed of seven
policies (which gradient, how shaped, which coordinates, which samples, when the extra pass is taken,
how the descent gradient is formed, what radius).

The named methods (SAM, ASAM, ESAM, SSAM, S2-SAM, LookSAM, AE-SAM, RST, MSAM, GSAM, WSAM,
FriendlySAM) are presets of this class in ``presets.py``.
"""

from __future__ import annotations

import enum
import math
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from ..errors import UsageError, check_number
from .batchnorm import frozen_bn_stats
from .coordinates import AllCoordinates, Coordinates, MaskedCoordinates
from .cost import Pass
from .descents import Descent, PerturbedGradient
from .functional import add_scaled_, copy_, global_norm, l2_factor, local_shards, scale_, shard_group
from .radius import RhoSchedule
from .samples import AllSamples, PerSampleClosure, Samples
from .schedules import EveryK, EveryStep, RandomSwitch, Schedule
from .shapes import LpBall, Shape
from .sources import BatchGradient, GradientSource

__all__ = ["SharpnessAware", "Phase", "step_passes"]


class Phase(enum.Enum):
    """Where a step stands; the one value that says what the parameters hold."""

    #: the parameters hold w
    AT_W = "at_w"
    #: the parameters hold w + eps; w of each perturbed tensor is in ``state[p]["backup"]``
    PERTURBED = "perturbed"
    #: the ascent gradient was not finite: w is in place and the coming descent is skipped
    SKIPPED = "skipped"
    #: the schedule skipped the perturbation: ``.grad`` holds the gradient at w to descend with
    PLAIN = "plain"
    #: a single-pass method between steps: the parameters hold w and the next training forward of
    #: ``model`` (or the next ``step(closure)``) moves them to w + eps, built from
    #: the held directions times a factor
    PENDING = "pending"


class SharpnessAware(torch.optim.Optimizer):
    """Sharpness-aware minimisation around any base optimizer instance, composed of policies.

    The wrapper shares the base optimizer's ``param_groups`` (LR schedulers, param-group tricks
    and ``isinstance(opt, torch.optim.Optimizer)`` keep working) and keeps its own per-parameter
    state apart, in ``self.state[p]``: the saved w while it is perturbed (``"backup"``) and the
    perturbation mask of a masked method (``"perturb_mask"``); plus counters and a generator.

    Args:
        base: the optimizer that takes the descent step (SGD, AdamW, ...), already built.
        rho: radius of the perturbation (0 reproduces the base optimizer exactly).
        source: which gradient drives the perturbation (default: the current batch's, from an
            extra pass: SAM; :class:`~flatlab.optim.PreviousGradient`: S2-SAM's single pass).
        shape: how the ascent direction is shaped (default: L2 ball, i.e. SAM).
        coordinates: which coordinates are perturbed (default: all).
        samples: which samples drive the descent gradient (default: all).
        descent: how the descent gradient combines the gradients at w and w + eps (default: the
            one at w + eps; GSAM's, WSAM's and LookSAM's in ``flatlab.optim.descents``).
        schedule: which steps take the sharpness-aware update; the others are plain steps with
            one pass (default: every step; ``flatlab.optim.schedules``). Shortcuts: ``every=k``
            (every k-th step) and ``sam_probability=p`` (a random fraction p of the steps, RST).
        rho_schedule: the radius over training (default: constant ``rho``; GSAM's follows the
            learning rate, :class:`~flatlab.optim.LRProportional`).
        ascent_steps: number of ascent steps; each step after the first re-evaluates the gradient
            at the perturbed point, adds a step of size ``ascent_step_size`` (default ``rho``) and
            projects back onto the rho-ball.
        model: the module being trained; optional. When given, BatchNorm running statistics are
            frozen during perturbed passes (``freeze_bn``), a DDP model's ascent pass skips the
            gradient all-reduce unless ``sync_first_pass``, a data-driven mask with a data source
            refreshes itself, and parameters named ``*bias`` are not adaptive (ASAM's T = 1).
            A param group's ``"adaptive"`` entry, when present, decides for its parameters
            instead; without ``model`` and without that entry every parameter is adaptive.
        sync_first_pass: under DDP, all-reduce the ascent gradient too (one perturbation for the
            global batch) instead of a per-replica perturbation (the papers' m-sharpness).
        max_grad_norm: clip the descent gradient to this global L2 norm before the base step.
        skip_nonfinite: skip a step (weights left exactly as they were) whose gradient has an inf
            or NaN. With a GradScaler the scaler's own check is used.
        foreach: use ``torch._foreach_*`` kernels (default) or a per-tensor loop.
        seed: seed of the optimizer's generator (random tensors / masks); default: drawn from
            torch's global generator, so ``torch.manual_seed`` makes runs repeatable.

    Training loop with a closure (the torch convention)::

        opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05,
                          model=model)   # model=: BN statistics frozen in the perturbed pass

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure)

    fp16 with a GradScaler: hand the scaler to ``step`` with a per-sample closure; the optimizer
    scales every backward, skips the step on overflow and updates the scale::

        scaler = torch.amp.GradScaler("cuda")
        opt.step(flatlab.per_sample(lambda idx: F.cross_entropy(
            model(x if idx is None else x[idx]), y if idx is None else y[idx], reduction="none")),
            scaler=scaler)

    Manual loops can also use the two-phase API ``first_step`` / ``second_step``.
    """

    #: constructor options a preset sets itself (its policies), so a user cannot choose them
    preset_options: frozenset[str] = frozenset()

    # GradScaler hands this optimizer found_inf/grad_scale instead of unscaling and skipping
    # step() itself: the weights must be restored from w + eps even when the step is skipped.
    _step_supports_amp_scaling = True

    def __init__(
        self,
        base: torch.optim.Optimizer,
        rho: float = 0.05,
        *,
        source: GradientSource | None = None,
        shape: Shape | None = None,
        coordinates: Coordinates | None = None,
        samples: Samples | None = None,
        descent: Descent | None = None,
        schedule: Schedule | None = None,
        every: int | None = None,
        sam_probability: float | None = None,
        rho_schedule: RhoSchedule | None = None,
        ascent_steps: int = 1,
        ascent_step_size: float | None = None,
        model: nn.Module | None = None,
        freeze_bn: bool = True,
        sync_first_pass: bool = False,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = True,
        foreach: bool = True,
        seed: int | None = None,
    ):
        if not isinstance(base, torch.optim.Optimizer):
            raise TypeError(f"base must be a torch.optim.Optimizer instance, got {type(base).__name__}")
        if isinstance(base, SharpnessAware):
            raise TypeError("base is already a sharpness-aware optimizer; wrap the plain base optimizer")
        check_number("rho", rho, low=0.0)
        check_number("ascent_steps", ascent_steps, low=1, integer=True)
        check_number("ascent_step_size", ascent_step_size, low=0.0, low_open=True, optional=True)
        check_number("max_grad_norm", max_grad_norm, low=0.0, low_open=True, optional=True)
        self.source = source or BatchGradient()
        self.shape = shape or LpBall(2.0)
        self.coordinates = coordinates or AllCoordinates()
        self.samples = samples or AllSamples()
        self.descent = descent or PerturbedGradient()
        self.schedule = _schedule(schedule, every, sam_probability)
        self.rho_schedule = rho_schedule
        if self.source.single_pass and not isinstance(self.schedule, EveryStep):
            raise ValueError("a single-pass method perturbs on every step; a schedule has nothing to save there")
        if self.source.single_pass and not isinstance(self.descent, PerturbedGradient):
            raise ValueError(f"the {self.descent.name} descent needs the gradient at w: it needs a two-pass source")
        if self.source.single_pass and ascent_steps != 1:
            raise ValueError(f"a single-pass method takes no extra ascent steps, got ascent_steps={ascent_steps}")
        if self.source.single_pass and self.samples.needs_per_sample:
            raise ValueError("sample selection needs a second pass; it cannot be combined with a single-pass source")
        if self.coordinates.has_data_source and model is None:
            raise ValueError("a mask that refreshes itself from data needs model= (the model it scores)")

        # Optimizer.__init__ validates the groups and sets up hooks; afterwards the list itself is
        # shared so that groups added to or reloaded into the base are seen here.
        super().__init__(base.param_groups, base.defaults)
        self.base = base
        self.param_groups = base.param_groups
        self.rho = float(rho)
        self.ascent_steps = int(ascent_steps)
        self.ascent_step_size = ascent_step_size
        self.model = model
        self.freeze_bn = freeze_bn
        self.sync_first_pass = sync_first_pass
        self.max_grad_norm = max_grad_norm
        self.skip_nonfinite = skip_nonfinite
        self.foreach = foreach
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self.generator = torch.Generator().manual_seed(int(seed))
        self.steps = 0
        self.sam_steps = 0  # steps that took the sharpness-aware update
        self.weight_masks: dict[Tensor, Tensor] = {}
        self.phase = Phase.AT_W
        # the factor the gradients of the first pass carry: a GradScaler's scale inside step(scaler=)
        self._loss_scale = 1.0
        self._warned_discard = False
        self._in_step = False
        self._backward_outside = False  # a backward ran since the last step, outside of it
        self._perturbed: list[Tensor] = []  # the tensors holding w + eps while PERTURBED (or soon: PENDING)
        # PENDING: w + eps = w + factor * direction, the directions aligned with _perturbed; they are
        # the spent gradients' memory (which .grad would otherwise hold), released once applied
        self._pending: list[Tensor] | None = None
        self._pending_factor: float | Tensor = 1.0
        self._backward_while_pending = False  # a gradient was taken at w where w + eps was due
        self._closure_steps = False  # the step in progress came with a closure (so will the next)
        self._eps: list[Tensor] | None = None  # kept during a step only, for several ascent steps
        self._descent_checked = False  # a plain step's gradient was read finite by its schedule

        params = self._params()
        self._num_params = len(params)
        if shard_group(params) is not None and not all(isinstance(p, DTensor) for p in params):
            # norms all-reduce the shards: a replicated tensor among them would count once per rank
            raise ValueError("some parameters are sharded (FSDP) and some are not: fully_shard the root module too")
        if shard_group(params) is not None and isinstance(self.coordinates, MaskedCoordinates):
            raise ValueError(
                "a mask over sharded (FSDP) parameters is not supported: SSAM's global top-k needs every "
                "shard's scores; use DDP, or a method without a coordinate mask"
            )
        self._adaptive = self._adaptive_flags(model)
        _watch_backwards(self, params)
        # A single-pass method's weights hold w between steps, so that whatever reads them outside
        # the step (evaluation, state_dict, checkpoints, a framework's best-model copy) sees w; the
        # perturbation waits for the next training forward of the model (or step(closure)).
        self._forward_hook = (
            _perturb_before_training_forward(self, model) if self.source.single_pass and model else None
        )
        self.coordinates.bind(params, self.generator, self.state)
        self.source.bind(self.state, base)
        self.descent.bind(self.state)
        self.schedule.bind(self.generator)
        if self.rho_schedule is not None:
            self.rho_schedule.bind(self, self.rho)

    # ----------------------------------------------------------------------------------------
    # bookkeeping

    def _params(self) -> list[Tensor]:
        params = [p for group in self.param_groups for p in group["params"]]
        if hasattr(self, "_num_params") and len(params) != self._num_params:
            raise RuntimeError(
                f"the optimizer was built with {self._num_params} parameters and now has {len(params)}; "
                "add param groups to the base optimizer before wrapping it"
            )
        return params

    def _adaptive_flags(self, model: nn.Module | None) -> dict[Tensor, bool]:
        names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        flags = {}
        for group in self.param_groups:
            for p in group["params"]:
                rule = group.get("adaptive")
                flags[p] = bool(rule) if rule is not None else not names.get(id(p), "").endswith("bias")
        return flags

    def _adaptive_of(self, params: list[Tensor]) -> list[bool]:
        # only a weight-dependent shape (ASAM's) reads the flags: no per-tensor lookup otherwise
        return [self._adaptive[p] for p in params] if self.shape.weight_dependent else [True] * len(params)

    def _backups(self, params: list[Tensor]) -> list[Tensor]:
        out = []
        for p in params:
            state = self.state[p]
            if "backup" not in state:
                state["backup"] = torch.empty_like(p, memory_format=torch.preserve_format)
            out.append(state["backup"])
        return out

    def _masks_for(self, params: list[Tensor]) -> list[Tensor | None]:
        masks = self.coordinates.masks(params)
        if not self.weight_masks:
            return masks
        out = []
        for m, p in zip(masks, params):
            w = self.weight_masks.get(p)
            out.append(w if m is None else (m if w is None else m & w.bool()))
        return out

    def set_weight_masks(self, masks: dict[Tensor, Tensor]) -> None:
        """Restricts every perturbation to the live weights of a sparse network.

        ``masks`` maps a parameter to its boolean weight mask; the mapping is kept by reference,
        so a sparse-training schedule that updates it is followed at every step.
        """
        self.weight_masks = masks

    @property
    def is_perturbed(self) -> bool:
        """Whether the parameters hold w + eps right now: between ``first_step`` and
        ``second_step``; for a single-pass method from its training forward to its step (and
        between steps when the optimizer was built without ``model=``)."""
        return self.phase is Phase.PERTURBED

    @property
    def pending_directions(self) -> tuple[Tensor, ...]:
        """What a single-pass method holds between steps besides its state: the directions of its
        next perturbation (the spent gradients' memory, which a plain loop would free at
        ``zero_grad``), released when the next training forward applies them. Empty otherwise."""
        return tuple(self._pending or ())

    @property
    def needs_closure(self) -> bool:
        """Whether ``step`` needs a closure (an ascent pass on the current batch)."""
        return not self.source.single_pass

    @property
    def sam_fraction(self) -> float:
        """Fraction of the steps so far that took the sharpness-aware update (NaN before any)."""
        return self.sam_steps / self.steps if self.steps else math.nan

    def radius(self) -> float:
        """The perturbation radius of the coming step."""
        return self.rho if self.rho_schedule is None else self.rho_schedule.radius(self)

    def passes(self) -> tuple[Pass, ...]:
        """The forward/backward passes of one step on average, for cost accounting (FLOPs,
        benchmarks): a sharpness-aware step's passes at the schedule's rate, plus the plain
        steps' single pass."""
        if self.source.single_pass:
            return (Pass(),)
        rate = self.schedule.expected_rate(self.sam_fraction if self.steps else None)
        late = self.schedule.needs_gradient  # the first pass is taken before the decision
        first = Pass(rate=1.0 if late else rate, weight_grads=1.0 if late else self.coordinates.ascent_weight_grads)
        plain = () if late or rate == 1.0 else (Pass(rate=1.0 - rate),)
        extra = tuple(Pass(rate=rate) for _ in range(self.ascent_steps - 1))
        selection = (Pass(rate=rate, backward=False),) if self.samples.needs_per_sample else ()
        descent = Pass(rate=rate, batch=self.samples.descent_fraction)
        return tuple(p for p in (first, *plain, *extra, *selection, descent) if p.rate > 0)

    # ----------------------------------------------------------------------------------------
    # the data-driven mask

    @property
    def mask_due(self) -> bool:
        """True when a data-driven mask (SSAM-F) is to be refreshed before the coming step."""
        return self.coordinates.needs_data and self.coordinates.due(self.steps)

    def update_mask(
        self,
        model: nn.Module,
        data,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        """Recomputes a data-driven perturbation mask (SSAM-F's Fisher mask) from ``data``, an
        iterable of ``(inputs, targets)`` batches. Call it when ``mask_due`` is True (or give the
        mask a data source at construction and let ``step`` do it)."""
        if not self.coordinates.needs_data:
            raise TypeError(f"the coordinate policy '{self.coordinates.name}' has no data-driven mask")
        with self.unperturbed():
            self.coordinates.refresh(model, data, loss_fn)
        self.coordinates.refreshed_at = self.steps

    def _refresh_if_due(self) -> None:
        if not self.mask_due:
            return
        if not self.coordinates.has_data_source:
            raise RuntimeError(
                f"the {self.coordinates.name} mask is due for a refresh at step {self.steps}: call "
                "opt.update_mask(model, batches) before this step whenever opt.mask_due, or build the "
                "optimizer with a data source for the mask (e.g. SSAM(..., mask_data=loader))"
            )
        self.update_mask(self.model, self.coordinates.batches())

    # ----------------------------------------------------------------------------------------
    # gradient checks

    def _check_and_unscale(self, grads: list[Tensor], inv_scale: Tensor | None) -> bool:
        """True when every gradient is finite; multiplies them by ``inv_scale`` when given."""
        if inv_scale is None and _norm_checks(grads):
            return bool(torch.isfinite(global_norm(grads, 2.0, foreach=self.foreach)))
        shards = shard_group(grads)
        by_device: dict[torch.device, list[Tensor]] = {}
        for g in local_shards(grads):
            by_device.setdefault(g.device, []).append(g)
        found = False
        for device, group in by_device.items():
            found_inf = torch.zeros((), dtype=torch.float32, device=device)
            inv = torch.ones((), dtype=torch.float32, device=device) if inv_scale is None else inv_scale.to(device)
            torch._amp_foreach_non_finite_check_and_unscale_(group, found_inf, inv)
            if shards is not None:  # every shard decides together, or the replicas would diverge
                torch.distributed.all_reduce(found_inf, op=torch.distributed.ReduceOp.MAX, group=shards)
            found = found or bool(found_inf.item())
        return not found

    def _unscale(self, grads: list[Tensor]) -> bool:
        """Under a GradScaler: False when its check found an inf, else unscales ``grads`` (the
        same products as the fused unscale-and-check). True without a scaler."""
        found_inf = getattr(self, "found_inf", None)  # set by GradScaler.step
        if found_inf is None:
            return True
        if bool(found_inf.item()):
            return False
        scale = getattr(self, "grad_scale", None)
        if scale is not None:
            scale_(grads, scale.double().reciprocal().float(), foreach=self.foreach)
        return True

    def _unscale_and_check(self, grads: list[Tensor], also: list[Tensor] = ()) -> bool:
        """Unscales the descent gradient (and ``also``, gradients of the same step kept aside)
        under a GradScaler and checks it; False means: skip the base step."""
        found_inf = getattr(self, "found_inf", None)  # set by GradScaler.step
        if found_inf is not None:
            if bool(found_inf.item()):
                return False
            scale = getattr(self, "grad_scale", None)
            if scale is not None:
                return self._check_and_unscale([*grads, *also], scale.double().reciprocal().float())
            return True
        # the gradient at w kept aside is checked too: it enters the descent of GSAM, WSAM, LookSAM
        return not self.skip_nonfinite or self._check_and_unscale([*grads, *also], None)

    def _clip(self, grads: list[Tensor]) -> None:
        if self.max_grad_norm is not None:
            total = global_norm(grads, 2.0, foreach=self.foreach)
            coef = (self.max_grad_norm / (total + 1e-6)).clamp_max(1.0)  # stays on the device: no sync
            torch._foreach_mul_(local_shards(grads), coef.to(grads[0].device))

    # ----------------------------------------------------------------------------------------
    # the perturbation

    def _perturb(self, params: list[Tensor], directions: list[Tensor], norm: float | None = None) -> None:
        """Builds eps from ``directions`` (aligned with ``params``), saves w and moves to w + eps,
        the cheapest way the policies allow, with no parameter-sized temporary:

        - ``norm`` given (S2-SAM: the directions' L2 norm, read on the host by the step's check):
          one scaled add;
        - an L2 ball, unmasked, one ascent step (SAM and most presets): ``w += rho d / ||d||`` in
          one pass, the factor kept on the device;
        - otherwise eps is built in the memory of the directions (unless the descent keeps the
          gradient at w), masked, and added.

        A single-pass method that knows its model, or is stepped with a closure, keeps w and leaves
        the move to the next training forward or ``step(closure)`` (``PENDING``): the directions are
        held until then (the spent gradients' memory). The perturbed tensors' ``.grad`` is dropped
        (None), except by an immediate scaled add: its memory is spent or held, and the coming
        backward at w + eps must start from zero."""
        self.coordinates.observe(self.steps, params, directions)
        chosen, directions = self.coordinates.select(params, directions)
        radius = self.radius() * self.coordinates.scale
        self.phase = Phase.PERTURBED
        self._perturbed = chosen
        self._eps = None
        if not chosen:
            return
        if norm is not None:
            # a zero gradient gives no perturbation (radius / tiny could overflow to inf * 0)
            factor: float | Tensor = radius / norm if norm > 0 else 0.0
        else:
            masks = self._masks_for(chosen)
            if self.shape.normalises_by_l2 and self.ascent_steps == 1 and all(m is None for m in masks):
                factor = l2_factor(radius, directions, foreach=self.foreach)
            else:
                adaptive = self._adaptive_of(chosen)
                in_place = not self.descent.needs_clean_gradient
                directions = self.shape.perturbation(directions, chosen, adaptive, radius, self.foreach,
                                                     in_place=in_place)
                _mask_(directions, masks)
                factor = 1.0
                self._eps = directions if self.ascent_steps > 1 else None
        if self.source.single_pass and (self._forward_hook is not None or self._closure_steps):
            self._pending = list(directions)
            self._pending_factor = factor
            for p in chosen:
                p.grad = None  # held as the pending direction: no zero_grad or backward may write into it
            self.phase = Phase.PENDING
            return
        copy_(self._backups(chosen), chosen)
        add_scaled_(chosen, directions, factor, foreach=self.foreach)
        if norm is None:
            for p in chosen:
                p.grad = None

    @torch.no_grad()
    def _apply_pending(self) -> None:
        """PENDING -> PERTURBED: saves w and adds the held perturbation, as ``_perturb`` would have."""
        if self.phase is not Phase.PENDING:
            return
        chosen = self._perturbed
        directions, self._pending = self._pending, None
        copy_(self._backups(chosen), chosen)
        add_scaled_(chosen, directions, self._pending_factor, foreach=self.foreach)
        self._pending_factor = 1.0
        self.phase = Phase.PERTURBED
        if self.weight_masks:
            # a sparse schedule may have pruned weights since eps was built: they stay zero
            pairs = [(w, self.weight_masks[w]) for w in chosen if w in self.weight_masks]
            if pairs:
                torch._foreach_mul_([w for w, _ in pairs], [m for _, m in pairs])

    def _restore(self) -> None:
        """Puts w back by copy (subtracting eps would not give w back in low precision), or drops
        a perturbation still pending."""
        if self.phase is Phase.PERTURBED and self._perturbed:
            weights = self._perturbed
            copy_(weights, self._backups(weights))
            if self.weight_masks:
                # a sparse schedule may have pruned weights since w was saved: keep them pruned
                pairs = [(w, self.weight_masks[w]) for w in weights if w in self.weight_masks]
                if pairs:
                    torch._foreach_mul_([w for w, _ in pairs], [m for _, m in pairs])
        elif self.phase is Phase.PENDING:
            self._pending = None
            self._pending_factor = 1.0
        self.phase = Phase.AT_W
        self._perturbed = []
        self._eps = None

    @torch.no_grad()
    def restore_weights(self) -> None:
        """Puts w back into the parameters for good and drops the pending perturbation, e.g.
        before loading other weights into the model (a best checkpoint) or to export the weights
        of a single-pass method built without ``model=`` (whose parameters carry the next step's
        perturbation between steps). The next step then starts at w."""
        self._restore()

    @torch.no_grad()
    def _ascend(self) -> None:
        """One more ascent step from the perturbed point, projected back onto the rho-ball."""
        weights = self._perturbed
        if not weights:
            return
        backups = self._backups(weights)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in weights]
        if not self._check_and_unscale(grads, None):
            return  # keep the last finite perturbation
        adaptive = self._adaptive_of(weights)
        scale = self.coordinates.scale
        rho = self.radius()
        size = (self.ascent_step_size if self.ascent_step_size is not None else rho) * scale
        # the adaptive operator T is taken at w, not at the perturbed point
        delta = self.shape.perturbation(grads, backups, adaptive, size, self.foreach)
        _mask_(delta, self._masks_for(weights))
        eps = torch._foreach_add(self._eps, delta)
        eps = self.shape.project(eps, backups, adaptive, rho * scale, self.foreach)
        copy_(weights, backups)
        torch._foreach_add_(weights, eps)
        self._eps = eps

    # ----------------------------------------------------------------------------------------
    # the two-phase API

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Moves the weights from w to w + eps, eps built from the gradients now in ``.grad``.

        Call it after the backward pass at w. A gradient with an inf or NaN leaves w in place and
        marks the step as skipped (``second_step`` then takes no base step). The perturbed tensors'
        ``.grad`` is None afterwards: eps is built in its memory (no parameter-sized temporary), and
        the backward at w + eps starts from zero, with or without a ``zero_grad`` in between.
        """
        if self.source.single_pass:
            raise RuntimeError("a single-pass method perturbs inside step(); call step() once per batch")
        self._first_step(None, zero_grad)
        self._descent_checked = False  # a backward may run before second_step

    def _first_step(self, decided: bool | None, zero_grad: bool = False) -> None:
        if self.phase is not Phase.AT_W:
            raise RuntimeError("first_step() called twice; call second_step() (or step()) in between")
        self._refresh_if_due()
        params = [p for p in self._params() if p.grad is not None]
        if not params and any(p.requires_grad for p in self._params()):
            raise RuntimeError(
                "first_step() found no gradients: run the forward and backward pass at w first "
                "(zero_grad() leaves .grad as None until the next backward)"
            )
        grads = [p.grad for p in params]
        # A non-finite ascent gradient makes eps non-finite, then the descent gradient, which the
        # descent's check catches (restoring w exactly): that check is the step's one host sync.
        # Policies that keep state derived from this gradient (a gradient average, a mask refreshed
        # from it, a moving norm) must not see one: check it here for them.
        sq_norm = None
        if self.schedule.needs_gradient and decided is None and self.radius() != 0.0:
            # the norm the schedule decides from doubles as the finiteness check: one sync for both
            sq_norm = (float(global_norm(grads, 2.0, foreach=self.foreach)) / self._loss_scale) ** 2
        if (not math.isfinite(sq_norm) if sq_norm is not None
                else self._ascent_needs_check() and not self._check_and_unscale(grads, None)):
            self.phase = Phase.SKIPPED
        elif not self._takes_sam_step(decided, grads, sq_norm):
            # a plain step: the gradient just computed is the one to descend with, keep it; its
            # norm, when read, showed it finite already
            self.phase = Phase.PLAIN
            self._descent_checked = sq_norm is not None
            return
        else:
            if self.descent.needs_clean_gradient:
                # kept without a copy: _perturb drops .grad, so no zero_grad can write over it
                for p, g in zip(params, grads):
                    self.state[p]["clean_grad"] = g
            self._perturb(params, self.source.direction(params, grads, self.base, self._loss_scale))
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def _ascent_needs_check(self) -> bool:
        return (self.source.stateful or self.coordinates.observes_gradient_at(self.steps)
                or not self.shape.propagates_nonfinite)

    def _takes_sam_step(self, decided: bool | None, grads: list[Tensor], sq_norm: float | None = None) -> bool:
        if self.radius() == 0.0:
            return False  # rho = 0 is the base optimizer, bit for bit and with one pass
        if decided is not None:
            return decided
        if self.schedule.needs_gradient:
            if sq_norm is None:
                sq_norm = (float(global_norm(grads, 2.0, foreach=self.foreach)) / self._loss_scale) ** 2
            return self.schedule.decide(self.steps, sq_norm)
        return self.schedule.decide(self.steps)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restores w and takes the base optimizer's step with the gradient now in ``.grad``
        (computed at w + eps)."""
        if self.source.single_pass:
            raise RuntimeError("a single-pass method has no second step; call step() once per batch")
        if self.phase is Phase.AT_W:
            raise RuntimeError("second_step() without first_step()")
        phase = self.phase
        checked, self._descent_checked = self._descent_checked, False
        self._restore()
        params = [p for p in self._params() if p.grad is not None]
        grads = [p.grad for p in params]
        clean = {}
        if self.descent.needs_clean_gradient:
            clean = {p: self.state[p].pop("clean_grad") for p in self._params() if "clean_grad" in self.state[p]}
        if phase is not Phase.SKIPPED and grads:
            self._combine_and_step(params, grads, clean, phase is Phase.PERTURBED, checked)
        self.steps += 1
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def _combine_and_step(self, params: list[Tensor], grads: list[Tensor], clean: dict[Tensor, Tensor],
                          sam: bool, checked: bool = False) -> None:
        """The descent: unscale and check the gradient (unless ``checked``: its norm was read and
        finite, and no GradScaler scaled it), let the descent policy form it, clip it, take the
        base step."""
        if not (checked and getattr(self, "found_inf", None) is None) and not self._unscale_and_check(
            grads, list(clean.values())
        ):
            return
        if sam:
            if self.descent.needs_clean_gradient:
                both = [(p, g, clean[p]) for p, g in zip(params, grads) if p in clean]
                self.descent.sharpness_aware([p for p, _, _ in both], [c for *_, c in both], [g for _, g, _ in both])
            else:
                self.descent.sharpness_aware(params, [], grads)
            self.sam_steps += 1
        else:
            self.descent.plain(params, grads)
        self._clip(grads)
        self.base.step()
        self.descent.after_base_step(self.param_groups, sam)

    # ----------------------------------------------------------------------------------------
    # passes

    def _is_ddp(self) -> bool:
        return isinstance(self.model, nn.parallel.DistributedDataParallel)

    @contextmanager
    def ascent_pass(self) -> Iterator[None]:
        """Wraps the forward/backward passes that build the perturbation (at w and, for several
        ascent steps, at w + eps): tensors the coordinate policy will not perturb skip their weight
        gradient (ESAM), and a DDP model skips the all-reduce unless ``sync_first_pass``.

        Under a schedule that decides from the gradient (AE-SAM) the first pass may become a plain
        step's only pass: it then computes every gradient and is all-reduced."""
        ddp = self._is_ddp()
        synced = self.sync_first_pass or self.schedule.needs_gradient
        no_sync = self.model.no_sync() if ddp and not synced else nullcontext()
        # a synced DDP backward waits for every gradient: nothing may skip it then
        self.coordinates.begin_ascent_pass(skip_grads=not (ddp and synced) and not self.schedule.needs_gradient)
        try:
            with no_sync:
                yield
        finally:
            self.coordinates.end_ascent_pass()

    def perturbed_pass(self):
        """Context for a forward at w + eps: BatchNorm statistics frozen when ``model`` was given."""
        if self.model is not None and self.freeze_bn:
            return frozen_bn_stats(self.model)
        return nullcontext()

    def _evaluate(self, closure: Callable, rows: Tensor | None = None, scaler=None) -> tuple[Any, Tensor | None]:
        if isinstance(closure, PerSampleClosure):
            self.zero_grad(set_to_none=True)
            no_sync = self.model.no_sync if self._is_ddp() else None
            with torch.enable_grad():
                return closure.backward(rows, None if scaler is None else scaler.scale, no_sync)
        with torch.enable_grad():
            return closure(), None

    # ----------------------------------------------------------------------------------------
    # step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, scaler: torch.amp.GradScaler | None = None) -> Any:
        """One optimisation step; returns the closure's loss at w.

        Two-pass methods need ``closure`` (it zeroes grads, runs forward and backward, returns the
        loss); without one, ``step()`` acts as ``second_step()`` after a ``first_step()``, which
        is what ``GradScaler.step`` calls. Sample selection (ESAM's gamma < 1) needs a
        :class:`~flatlab.optim.samples.PerSampleClosure`. A single-pass method needs no closure.

        ``scaler``: a GradScaler (fp16); the closure must then be a per-sample closure (the
        optimizer scales the loss before each backward). The step is skipped on overflow and
        the scale updated: call neither ``scaler.step`` nor ``scaler.update`` yourself.
        """
        if scaler is not None and closure is not None and not isinstance(closure, PerSampleClosure):
            raise TypeError("with scaler=, pass flatlab.per_sample(fn): the optimizer scales each backward itself")
        self._loss_scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        if closure is not None:
            self._drop_gradients_from_outside(closure)
        outermost = not self._in_step  # GradScaler.step calls step() again from inside
        if outermost:
            self._closure_steps = closure is not None
        self._in_step = True
        try:
            return self._step(closure, scaler)
        finally:
            if outermost:
                self._loss_scale = 1.0
                self._in_step = False
                self._backward_outside = False

    def _drop_gradients_from_outside(self, closure: Callable) -> None:
        """A two-pass step takes its gradients at w and at w + eps from the closure's batch alone:
        gradients that ``backward()`` calls before ``step`` left in ``.grad`` (micro-batches
        accumulated the plain way) have no pass at w + eps, so they are dropped, with a warning
        that says so; under Lightning (whose accumulation does exactly this) the step refuses. A
        single-pass step keeps them: taken at w + eps like the closure's, they count in full."""
        if self.source.single_pass or not self._backward_outside:
            return
        held = [p for p in self._params() if p.grad is not None]
        if not held:
            return
        if _is_lightning(closure):
            raise UsageError(
                "Trainer(accumulate_grad_batches>1) with automatic optimization runs the earlier micro-batches "
                "outside the optimizer step, where a sharpness-aware step cannot re-evaluate them at w + eps: "
                "use flatlab.integrations.lightning.SharpnessAwareModule with accumulate = k instead"
            )
        for p in held:
            p.grad = None
        if not self._warned_discard:
            warnings.warn(
                "step(closure) dropped the gradients that backward() calls before it left in .grad: a two-pass "
                "step takes its gradients at w and w + eps from the closure's batch alone. To accumulate "
                "micro-batches, pass them all to flatlab.micro_batches(batches, fn) and call step once; "
                "zero_grad() before step() silences this",
                stacklevel=4,
            )
            self._warned_discard = True

    def _step(self, closure, scaler) -> Any:
        if closure is not None:
            # before any forward, as update_mask is called: BatchNorm's running statistics, which
            # the Fisher scores are computed with, then do not include this batch yet
            self._refresh_if_due()
        if self.source.single_pass:
            return self._single_pass_step(closure, scaler)
        if closure is None:
            if scaler is not None:
                raise TypeError("scaler= comes with a closure; after first_step() call scaler.step(opt)")
            if self.phase is not Phase.AT_W:
                return self.second_step()
            raise RuntimeError(
                f"{type(self).__name__} needs a closure that re-evaluates the loss: step(closure), "
                "or call first_step() and second_step() around the second forward/backward"
            )
        if self.samples.needs_per_sample and not isinstance(closure, PerSampleClosure):
            raise TypeError(
                f"sample selection ({self.samples.extra_repr()}) needs per-sample losses: pass "
                "flatlab.per_sample(fn) where fn(indices) returns the per-sample losses of those rows"
            )
        decided = None if self.schedule.needs_gradient else self._takes_sam_step(None, [])
        if decided is False:
            loss, _ = self._evaluate(closure, scaler=scaler)
            self.phase = Phase.PLAIN
            self._descend(scaler)
            return loss
        with self.ascent_pass():
            loss, before = self._evaluate(closure, scaler=scaler)
            self._first_step(decided)
            for _ in range(self.ascent_steps - 1):
                if self.phase is not Phase.PERTURBED:
                    break
                with self.perturbed_pass():
                    self._evaluate(closure, scaler=scaler)
                self._ascend()
        if self.phase is Phase.PERTURBED:
            rows = None
            if self.samples.needs_per_sample:
                with torch.no_grad(), self.perturbed_pass():
                    after = closure.evaluate(None)
                rows = self.samples.select(before, after)
            with self.perturbed_pass():
                self._evaluate(closure, rows, scaler)
        self._descend(scaler)
        return loss

    def _descend(self, scaler) -> None:
        if scaler is None:
            self.second_step()
            return
        # GradScaler.step checks the gradients for inf, hands found_inf/grad_scale to
        # this optimizer and calls step() -> second_step(); a skipped ascent leaves its
        # non-finite gradients in .grad, so the scale goes down as it should.
        scaler.step(self)
        scaler.update()

    def _single_pass_step(self, closure: Callable[[], Any] | None, scaler) -> Any:
        loss = None
        if closure is not None:
            self._apply_pending()  # the closure's passes run at w + eps
            loss, _ = self._evaluate(closure, scaler=scaler)
        if scaler is not None:
            scaler.step(self)  # -> step() without closure: the descent below
            scaler.update()
            return loss
        self._check_gradients_were_perturbed()
        self._refresh_if_due()
        self._restore()
        params = [p for p in self._params() if p.grad is not None]
        grads = [p.grad for p in params]
        if not grads:
            self.steps += 1
            return loss
        norm = None
        if self._check_norm_builds_eps(grads):
            # one pass over the gradients and one sync for both the finiteness check and the norm
            # eps is scaled by (under a GradScaler, after the scaler's own check)
            finite = self._unscale(grads)
            if finite:
                norm = float(global_norm(grads, 2.0, foreach=self.foreach))
                finite = not self.skip_nonfinite or math.isfinite(norm)
        else:
            finite = self._unscale_and_check(grads)
        if finite:
            self._clip(grads)
            self.base.step()
            self.sam_steps += 1
            # the gradient just used (taken at the perturbed point) builds the next perturbation
            self._perturb(params, self.source.direction(params, grads, self.base, 1.0), norm)
        self.steps += 1
        return loss

    def _check_gradients_were_perturbed(self) -> None:
        """A single-pass step descends with gradients taken at w + eps: refuse those taken at w
        while the perturbation waited for a forward of ``model`` that never came."""
        at_w, self._backward_while_pending = self._backward_while_pending, False
        if not (at_w or self.phase is Phase.PENDING and any(p.grad is not None for p in self._perturbed)):
            return
        self._restore()
        raise UsageError(
            "the gradients of this single-pass step were taken at w, not at w + eps: the perturbation is "
            "applied by a training-mode forward of the module given as model= (or by step(closure)), and none "
            "ran before the backward. Pass the module you call as model=; under Lightning, accumulate with "
            "SharpnessAwareModule (accumulate = k) instead of Trainer(accumulate_grad_batches=k)"
        )

    def _check_norm_builds_eps(self, grads: list[Tensor]) -> bool:
        """Whether the descent gradient's L2 norm is also the next perturbation's: the direction is
        that gradient, unclipped and unmasked, the shape divides by its L2 norm, and the base step
        leaves .grad alone (torch's own optimizers do; another base might change it in place, so
        its norm is taken afresh)."""
        return (
            self.max_grad_norm is None
            and self.source.direction_is_gradient
            and self.shape.normalises_by_l2
            and type(self.coordinates) is AllCoordinates
            and not self.weight_masks
            and type(self.base).__module__.startswith("torch.optim")
            and (not self.skip_nonfinite or _norm_checks(grads))
        )

    # ----------------------------------------------------------------------------------------
    # evaluation and state

    @contextmanager
    def unperturbed(self) -> Iterator[None]:
        """Holds w (not w + eps) in the parameters inside the block. Needed only where the weights
        hold w + eps outside a step: a single-pass method built without ``model=``."""
        if self.phase is not Phase.PERTURBED or not self._perturbed:
            yield
            return
        weights = self._perturbed
        with torch.no_grad():
            held = [w.clone() for w in weights]
            copy_(weights, self._backups(weights))
        try:
            yield
        finally:
            with torch.no_grad():
                copy_(weights, held)

    def state_dict(self) -> dict[str, Any]:
        params = self._params()
        index = {p: i for i, p in enumerate(params)}
        perturbed = set(self._perturbed)
        per_param: dict[int, dict[str, Tensor]] = {}
        for p, state in self.state.items():
            # a backup is only meaningful while its tensor holds w + eps, a clean gradient during a step
            kept = {
                k: v for k, v in state.items()
                if (k != "backup" or p in perturbed and self.phase is Phase.PERTURBED)
                and (k != "clean_grad" or self.phase is not Phase.AT_W)
            }
            if kept:
                per_param[index[p]] = kept
        own: dict[str, Any] = {
            "steps": self.steps,
            "sam_steps": self.sam_steps,
            "rho": self.rho,
            "phase": self.phase.value,
            "perturbed": [index[p] for p in self._perturbed],
            "pending": dict(zip((index[p] for p in self._perturbed), self._pending or ())),
            "pending_factor": self._pending_factor,
            "generator": self.generator.get_state(),
            "source": self.source.state_dict(),
            "schedule": self.schedule.state_dict(),
            "coordinates": self.coordinates.state_dict(),
            "state": per_param,
        }
        return {"base": self.base.state_dict(), "sharpness_aware": own}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "base" not in state_dict or "sharpness_aware" not in state_dict:
            raise ValueError("not a flatlab sharpness-aware state_dict (keys 'base' and 'sharpness_aware')")
        own = state_dict["sharpness_aware"]
        params = self._params()
        saved = own.get("state", {})
        if any(int(i) >= len(params) for i in saved) or any(int(i) >= len(params) for i in own["perturbed"]):
            raise ValueError(f"the saved state is for more than the {len(params)} parameters of this optimizer")
        for i, entry in saved.items():
            p = params[int(i)]
            for key, value in entry.items():
                if value.shape != p.shape:
                    raise ValueError(
                        f"saved {key} of shape {tuple(value.shape)} for a parameter of shape {tuple(p.shape)}"
                    )
        self.base.load_state_dict(state_dict["base"])
        # Optimizer.load_state_dict rebuilds param_groups as new dicts: share them again, or an
        # LR scheduler would go on updating groups the base no longer reads.
        self.param_groups = self.base.param_groups
        self.steps = int(own["steps"])
        self.sam_steps = int(own["sam_steps"])
        self.rho = float(own["rho"])
        self.generator.set_state(own["generator"])
        self.source.load_state_dict(own["source"])
        self.schedule.load_state_dict(own["schedule"])
        self.coordinates.load_state_dict(own["coordinates"])
        for i, entry in saved.items():
            p = params[int(i)]
            for key, value in entry.items():
                # a mask stays boolean; a backup takes its parameter's dtype and device
                dtype = torch.bool if value.dtype == torch.bool else p.dtype
                self.state[p][key] = value.to(device=p.device, dtype=dtype)
        self.phase = Phase(own["phase"])
        self._perturbed = [params[int(i)] for i in own["perturbed"]]
        self._eps = None
        pending = own.get("pending", {})
        self._pending = [pending[i].to(device=params[int(i)].device, dtype=params[int(i)].dtype)
                         for i in own["perturbed"]] if self.phase is Phase.PENDING else None
        factor = own.get("pending_factor", 1.0)
        self._pending_factor = factor.to(params[0].device) if isinstance(factor, Tensor) else float(factor)

    def __repr__(self) -> str:
        parts = [f"rho={self.rho:g}", f"shape={self.shape.describe()}"]
        defaults = (BatchGradient, AllCoordinates, AllSamples, PerturbedGradient, EveryStep)
        for label, policy in (("source", self.source), ("coordinates", self.coordinates), ("samples", self.samples),
                              ("descent", self.descent), ("schedule", self.schedule)):
            if not isinstance(policy, defaults):
                parts.append(f"{label}={policy.describe()}")
        if self.rho_schedule is not None:
            parts.append(f"rho_schedule={self.rho_schedule.describe()}")
        if self.ascent_steps > 1:
            parts.append(f"ascent_steps={self.ascent_steps}")
        base = "\n    ".join(repr(self.base).splitlines())
        return f"{type(self).__name__}({', '.join(parts)},\n    base={base})"


def _mask_(eps: list[Tensor], masks: list[Tensor | None]) -> None:
    """Zeroes the coordinates of eps outside its tensor's mask (None: keep all)."""
    pairs = [(e, m) for e, m in zip(eps, masks) if m is not None]
    if pairs:
        torch._foreach_mul_([e for e, _ in pairs], [m for _, m in pairs])


def _norm_checks(tensors: list[Tensor]) -> bool:
    """Whether the L2 norm can stand for a finiteness check of ``tensors``: an inf or NaN makes it
    non-finite, and in float32/float64 a finite gradient's norm overflows only past ~1e19 (such a
    step is skipped too). One read of the gradients, where the fused check also writes them."""
    return all(t.dtype in (torch.float32, torch.float64) for t in tensors)


def _watch_backwards(optimizer: SharpnessAware, params: list[Tensor]) -> None:
    """Notes a backward into the parameters outside ``step``: the accumulation mistake that
    ``step(closure)`` warns about. The hook holds the optimizer weakly."""
    ref = weakref.ref(optimizer)

    def accumulated(_: Tensor) -> None:
        opt = ref()
        if opt is not None and not opt._in_step:
            opt._backward_outside = True
            if opt.phase is Phase.PENDING:
                opt._backward_while_pending = True

    for p in params:
        if p.requires_grad and p.is_leaf:
            p.register_post_accumulate_grad_hook(accumulated)


def _is_lightning(closure: Callable) -> bool:
    """Whether ``closure`` is Lightning's automatic-optimization closure (a partial of its
    precision plugin's method)."""
    owner = getattr(getattr(closure, "func", closure), "__self__", closure)
    return type(owner).__module__.split(".")[0] in ("lightning", "pytorch_lightning")


def _perturb_before_training_forward(optimizer: SharpnessAware, model: nn.Module):
    """Registers the forward pre-hook that moves a single-pass method's weights from w to the
    pending w + eps when a training forward of ``model`` starts (train mode, gradients on); an
    evaluation forward, a state_dict or a checkpoint between steps reads w. Prepended, so that it
    runs before FSDP's own pre-forward hook gathers the (then perturbed) shards. The hook holds
    the optimizer weakly."""
    ref = weakref.ref(optimizer)

    @torch.compiler.disable  # runs eagerly before a compiled forward, never traced into it
    def perturb(module: nn.Module, args: Any) -> None:
        opt = ref()
        if opt is not None and opt.phase is Phase.PENDING and module.training and torch.is_grad_enabled():
            opt._apply_pending()

    return model.register_forward_pre_hook(perturb, prepend=True)


def _schedule(schedule: Schedule | None, every: int | None, sam_probability: float | None) -> Schedule:
    given = [name for name, v in (("schedule", schedule), ("every", every), ("sam_probability", sam_probability))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"choose one of schedule, every and sam_probability, got {', '.join(given)}")
    if every is not None:
        return EveryK(every)
    if sam_probability is not None:
        return RandomSwitch(sam_probability)
    return schedule or EveryStep()


def step_passes(optimizer: torch.optim.Optimizer) -> tuple[Pass, ...]:
    """The passes one step of ``optimizer`` makes: its own account for a flatlab optimizer, one
    full forward/backward for any other ``torch.optim`` optimizer.

    Example::

        >>> import torch, flatlab
        >>> w = torch.zeros(2, requires_grad=True)
        >>> len(step_passes(torch.optim.SGD([w], lr=0.1)))
        1
        >>> len(step_passes(flatlab.SAM(torch.optim.SGD([w], lr=0.1))))
        2
    """
    return optimizer.passes() if isinstance(optimizer, SharpnessAware) else (Pass(),)
