"""The one optimizer class of the SAM family: a wrapper around a base optimizer, composed of seven
policies (which gradient, how shaped, which coordinates, which samples, when the extra pass is taken,
how the descent gradient is formed, what radius).

A step, as `SharpnessAware.step` reads:

```text
source      the gradient that builds eps: an ascent pass at w (two-pass methods; bSAM's at a
            random point around w, RWP's read by its descent only), or the previous step's
            gradient, held pending since then (single-pass methods)
schedule    whether this step perturbs at all (else a plain step with the pass at w)
ascent      eps = shape(direction) on the chosen coordinates, w -> w + eps
perturbed   the pass at w + eps (on the rows the sample policy keeps)
descent     w back, the descent gradient formed, checked and clipped
base        the base optimizer's step (then, single-pass: eps of the next step)
```

The named methods (SAM, ASAM, ESAM, SSAM, S2-SAM, LookSAM, AE-SAM, RST, MSAM, GSAM, WSAM,
FriendlySAM, GC-SAM, VaSSO, SAM-ON, RWP, bSAM) are presets of this class in `presets.py`
(Lookbehind-SAM, in `lookbehind.py`, runs its step k times). Each policy checks its own
combinations with the others (`Policy.check`); what the parameters hold is `perturbation.py`'s, the
finiteness and loss scale of gradients `gradient_check.py`'s, the hooks on the model `hooks.py`'s.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from ..errors import UsageError, check_number
from .batchnorm import frozen_bn_stats
from .coordinates import AllCoordinates, Coordinates
from .cost import Pass
from .descents import Descent, PerturbedGradient
from .functional import copy_, global_norm, l2_factor, local_shards, shard_group
from .gradient_check import Amp, GradientCheck, norm_checks
from .hooks import is_lightning_closure, perturb_before_training_forward, watch_backwards
from .perturbation import Perturbation, Phase
from .radius import RhoSchedule
from .samples import AllSamples, AscentGroups, PerSampleClosure, Samples
from .schedules import EveryK, EveryStep, RandomSwitch, Schedule
from .shapes import LpBall, Shape
from .sources import BatchGradient, GradientSource

__all__ = ["SharpnessAware", "Phase", "step_passes"]


class SharpnessAware(torch.optim.Optimizer):
    """Sharpness-aware minimisation around any base optimizer instance, composed of policies.

    The wrapper shares the base optimizer's `param_groups` (LR schedulers, param-group tricks
    and `isinstance(opt, torch.optim.Optimizer)` keep working) and keeps its own per-parameter
    state apart, in `self.state[p]`: the saved w while it is perturbed (`"backup"`) and the
    perturbation mask of a masked method (`"perturb_mask"`); plus counters and a generator.

    Args:
        base: the optimizer that takes the descent step (SGD, AdamW, ...), already built.
        rho: radius of the perturbation (0 reproduces the base optimizer exactly). A param group
            of the base may set its own `"rho"` (0: its tensors are not perturbed); the
            direction is normalised over every perturbed tensor, then each group's part is
            scaled by its radius.
        source: which gradient drives the perturbation (default: the current batch's, from an
            extra pass: SAM; `PreviousGradient`: S2-SAM's single pass).
        shape: how the ascent direction is shaped (default: L2 ball, i.e. SAM).
        coordinates: which coordinates are perturbed (default: all).
        samples: which samples drive the descent gradient (default: all).
        descent: how the descent gradient combines the gradients at w and w + eps (default: the
            one at w + eps; GSAM's, WSAM's and LookSAM's in `flatlab.optim.descents`).
        schedule: which steps take the sharpness-aware update; the others are plain steps with
            one pass (default: every step; `flatlab.optim.schedules`). Shortcuts: `every=k`
            (every k-th step) and `sam_probability=p` (a random fraction p of the steps, RST).
        m: m-sharpness, a shortcut for `samples=AscentGroups(m)`: the batch split into groups of m
            rows, each perturbed along its own gradient (what SAM does per replica under DDP).
        rho_schedule: the radius over training (default: constant `rho`; GSAM's follows the
            learning rate, `LRProportional`).
        ascent_steps: number of ascent steps; each step after the first re-evaluates the gradient
            at the perturbed point, adds a step of size `ascent_step_size` (default `rho`) and
            projects back onto the rho-ball.
        model: the module being trained; optional. When given, BatchNorm running statistics are
            frozen during perturbed passes (`freeze_bn`), a DDP model's ascent pass skips the
            gradient all-reduce unless `sync_first_pass`, a data-driven mask with a data source
            refreshes itself, a single-pass method's parameters hold w between steps, and
            parameters named `*bias` are not adaptive (ASAM's T = 1). A param group's
            `"adaptive"` entry, when present, decides for its parameters instead; without
            `model` and without that entry every parameter is adaptive.
        sync_first_pass: under DDP, all-reduce the ascent gradient too (one perturbation for the
            global batch) instead of a per-replica perturbation (the papers' m-sharpness).
        max_grad_norm: clip the descent gradient to this global L2 norm before the base step.
        skip_nonfinite: skip a step (weights left exactly as they were) whose gradient has an inf
            or NaN. With a GradScaler the scaler's own check is used.
        foreach: use `torch._foreach_*` kernels (True) or a per-tensor loop (False); None (the
            default) chooses from the parameters, as torch.optim does: the kernels where every
            parameter is a plain tensor or a DTensor on a device they serve. Unlike torch.optim,
            CPU counts as served: its kernels loop in C++, and flatlab's foreach paths are also
            the ones that write eps over the gradient instead of allocating it.
        seed: seed of the optimizer's generator (random tensors / masks); default: drawn from
            torch's global generator, so `torch.manual_seed` makes runs repeatable.

    Example:
        A training loop with a closure (the torch convention):

        ```python
        opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05,
                          model=model)   # model=: BN statistics frozen in the perturbed pass

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        ```

        fp16 with a GradScaler: hand the scaler to `step` with a per-sample closure; the optimizer
        scales every backward, skips the step on overflow and updates the scale:

        ```python
        scaler = torch.amp.GradScaler("cuda")
        opt.step(flatlab.per_sample(lambda idx: F.cross_entropy(
            model(x if idx is None else x[idx]), y if idx is None else y[idx], reduction="none")),
            scaler=scaler)
        ```

    Manual loops can also use the two-phase API `first_step` / `second_step`.
    """

    #: constructor options a preset sets itself (its policies), so a user cannot choose them
    preset_options: frozenset[str] = frozenset()

    # GradScaler.step(opt) after first_step() hands this optimizer found_inf/grad_scale instead of
    # unscaling and skipping step() itself: the weights must be restored from w + eps even when
    # the step is skipped.
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
        m: int | None = None,
        rho_schedule: RhoSchedule | None = None,
        ascent_steps: int = 1,
        ascent_step_size: float | None = None,
        model: nn.Module | None = None,
        freeze_bn: bool = True,
        sync_first_pass: bool = False,
        max_grad_norm: float | None = None,
        skip_nonfinite: bool = True,
        foreach: bool | None = None,
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
        for group in base.param_groups:
            check_number("a param group's rho", group.get("rho", rho), low=0.0)
        self.source = source or BatchGradient()
        self.shape = shape or LpBall(2.0)
        self.coordinates = coordinates or AllCoordinates()
        if m is not None and samples is not None:
            raise ValueError(f"choose one of samples and m, got samples={samples.describe()} and m={m}")
        self.samples = samples or (AscentGroups(m) if m is not None else AllSamples())
        self.descent = descent or PerturbedGradient()
        self.schedule = _schedule(schedule, every, sam_probability)
        self.rho_schedule = rho_schedule

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
        params = self._params()
        self._num_params = len(params)
        self._group_of = {p: i for i, group in enumerate(self.param_groups) for p in group["params"]}
        if foreach is None:
            foreach = _default_foreach(params)
        self.foreach = bool(foreach)
        self.gradient_check = GradientCheck(skip_nonfinite, self.foreach)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self.generator = torch.Generator().manual_seed(int(seed))
        self.steps = 0
        self.sam_steps = 0  # steps that took the sharpness-aware update
        self.perturbation = Perturbation(self.state, self.coordinates, self.foreach)
        self._warned_discard = False
        self._in_step = False
        self._backward_outside = False  # a backward ran since the last step, outside of it
        self._backward_while_pending = False  # a gradient was taken at w where w + eps was due
        self._closure_steps = False  # the step in progress came with a closure (so will the next)
        self._scaler: torch.amp.GradScaler | None = None  # the one handed to step(scaler=)
        self._share = 1.0  # the weight of the backward passes in progress (m-sharpness: the group's share)

        if shard_group(params) is not None and not all(isinstance(p, DTensor) for p in params):
            # norms all-reduce the shards: a replicated tensor among them would count once per rank
            raise ValueError("some parameters are sharded (FSDP) and some are not: fully_shard the root module too")
        if self.ascent_steps > 1 and self._group_radii() is not None:
            raise ValueError("param groups with their own rho take one ascent step (one ball to project on)")
        self._adaptive = self._adaptive_flags(model)
        watch_backwards(self, params)
        # A single-pass method's weights hold w between steps, so that whatever reads them outside
        # the step (evaluation, state_dict, checkpoints, a framework's best-model copy) sees w; the
        # perturbation waits for the next training forward of the model (or step(closure)).
        self._forward_hook = (
            perturb_before_training_forward(self, model) if self.source.single_pass and model else None
        )
        self.coordinates.bind(params, self.generator, self.state)
        self.source.bind(self.state, base, self.generator)
        self.descent.bind(self.state)
        self.schedule.bind(self.generator)
        if self.rho_schedule is not None:
            self.rho_schedule.bind(self, self.rho)
        for policy in self.policies():
            policy.check(self)

    # ----------------------------------------------------------------------------------------
    # the step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, scaler: torch.amp.GradScaler | None = None) -> Any:
        """One optimisation step; returns the closure's loss (at w for a two-pass method).

        Two-pass methods need `closure` (it zeroes grads, runs forward and backward, returns the
        loss); without one, `step()` acts as `second_step()` after a `first_step()`, which
        is what `GradScaler.step(opt)` calls. Sample selection (ESAM's gamma < 1) needs a
        `flatlab.optim.samples.PerSampleClosure`. A single-pass method needs no closure.

        `scaler`: a GradScaler (fp16); the closure must then be a per-sample closure (the
        optimizer scales the loss before each backward). The step is skipped on overflow and
        the scale updated: call neither `scaler.step` nor `scaler.update` yourself.
        """
        if closure is None and not self.source.single_pass:
            return self._second_step_without_closure(scaler)
        with self._stepping(closure, scaler):
            self.prepare()
            if self.source.single_pass:
                loss = self._pass_at_pending_perturbation(closure)
            else:
                loss = self._sharpness_aware_passes(closure)
            self._descend_and_step()
            return loss

    def _sharpness_aware_passes(self, closure: Callable) -> Any:
        """A two-pass step up to the descent: the schedule decides (before the pass at w where it
        can), then the ascent to w + eps and the pass there. Returns the loss at w.
        """
        decided = None if self.schedule.needs_gradient else self._decide()
        if decided is False:  # a plain step: its one pass computes every gradient, all-reduced
            loss, _ = self._evaluate(closure)
            self.perturbation.phase = Phase.PLAIN
            return loss
        groups = self.samples.ascent_groups(closure)
        if len(groups) > 1:
            return self._ascent_groups(closure, groups)
        loss, before = self._ascent(closure, decided)
        if self.phase is Phase.PERTURBED:
            self._perturbed_pass(closure, before)
        return loss

    def _ascent(self, closure: Callable, decided: bool | None, rows: Tensor | None = None) -> tuple[Any, Tensor | None]:
        """Source -> ascent: the pass at w (on `rows`, None: all), the schedule's decision where it
        needs that gradient, w -> w + eps (and further ascent steps). Returns the loss at w and,
        for sample selection, the per-sample losses.
        """
        with self.ascent_pass():
            with self._at_ascent_point():
                loss, before = self._evaluate(closure, rows)
            self._perturb_from_gradients(decided)
            for _ in range(self.ascent_steps - 1):
                if self.phase is not Phase.PERTURBED:
                    break
                with self.perturbed_pass():
                    self._evaluate(closure, rows)
                self._ascend()
        return loss, before

    @contextmanager
    def _at_ascent_point(self) -> Iterator[None]:
        """The ascent pass runs at w, or at w + the source's offset (bSAM's random sample), w put
        back exactly (by copy) after it.
        """
        if not self.source.offsets_ascent_pass:
            yield
            return
        params = [p for p in self._params() if p.requires_grad]
        self.perturbation.move(params, self.source.ascent_offset(params), 1.0)
        self.coordinates.keep_pruned(params)  # a sparse network's pruned weights stay zero
        try:
            yield
        finally:
            self.perturbation.restore()

    def _perturbed_pass(self, closure: Callable, before: Tensor | None, rows: Tensor | None = None,
                        onto: dict[Tensor, Tensor] | None = None) -> None:
        """The pass at w + eps that the descent gradient comes from, on the rows the sample policy
        keeps (ESAM: those whose loss rose most, from a no-grad pass over the batch), its gradient
        added `onto` the earlier groups' (m-sharpness).
        """
        if self.samples.needs_per_sample:
            with torch.no_grad(), self.perturbed_pass():
                after = closure.evaluate(None)
            rows = self.samples.select(before, after)
        with self.perturbed_pass():
            self._evaluate(closure, rows, onto)

    def _ascent_groups(self, closure: Callable, groups: list[tuple[Tensor, float]]) -> Tensor:
        """m-sharpness: per group of rows, the ascent from w along the group's own gradient and the
        pass at its own w + eps, its backward passes weighted by the group's share of the batch.
        The groups' gradients at w + eps are summed in `.grad` (the last group's backward adds to
        the others', so DDP all-reduces the sum once), their gradients at w likewise for a descent
        that needs it. Returns the loss at w.
        """
        summed: dict[Tensor, Tensor] = {}  # the earlier groups' gradients at w + eps, kept aside
        clean: dict[Tensor, Tensor] = {}
        loss = 0.0
        for k, (rows, share) in enumerate(groups):
            last = k == len(groups) - 1
            self._share = share
            group_loss, before = self._ascent(closure, True, rows)
            loss = loss + share * group_loss
            if self.phase is Phase.SKIPPED:
                break  # w is in place; the descent skips the step
            _add_into(clean, self._pop_clean_gradients())
            with nullcontext() if last or not self._is_ddp() else self.model.no_sync():
                self._perturbed_pass(closure, before, rows, onto=summed if last else None)
            if not last:
                _add_into(summed, {p: p.grad for p in self._params() if p.grad is not None})
                self.zero_grad(set_to_none=True)
                self.perturbation.restore()
        self._share = 1.0
        for p, g in clean.items():
            self.state[p]["clean_grad"] = g
        return loss

    def _pass_at_pending_perturbation(self, closure: Callable | None) -> Any:
        """A single-pass step: the closure's pass runs at the w + eps built by the previous step
        (without a closure it ran already, moved there by the model's forward hook).
        """
        loss = None
        if closure is not None:
            self.perturbation.apply_pending()
            loss, _ = self._evaluate(closure)
        self._refuse_gradients_at_w()
        return loss

    def _descend_and_step(self) -> None:
        """The step's end, descent -> base step; under a GradScaler through `scaler.step`, which
        checks the gradients for inf and records that for `scaler.update`, then calls back once.
        """
        if self._scaler is None:
            self._descend(None)
            return
        self._scaler.step(_ScaledDescent(self))
        self._scaler.update()

    def _descend(self, amp: Amp | None) -> None:
        """The descent: w back in place, the descent gradient read (unscaled, checked), formed by the
        descent policy, clipped; the base step; for a single-pass method, the next step's eps from
        the gradient just used.
        """
        phase = self.phase
        self.perturbation.restore()
        params, grads = self._gradients()
        clean = self._pop_clean_gradients() if self.descent.needs_clean_gradient else {}
        if phase is not Phase.SKIPPED and grads:
            self._descent_and_base_step(params, grads, clean, amp,
                                        sam=phase is Phase.PERTURBED or self.source.single_pass)
        self.gradient_check.forget()
        self._backward_outside = False
        self.steps += 1

    def _descent_and_base_step(self, params: list[Tensor], grads: list[Tensor], clean: dict[Tensor, Tensor],
                               amp: Amp | None, sam: bool) -> None:
        builds_eps = self.source.single_pass and self._norm_builds_next_eps(grads)
        reading = self.gradient_check.read(grads, also=list(clean.values()), norm=builds_eps, amp=amp)
        if not reading.finite:
            return
        if not sam:
            self.descent.plain(params, grads)
        elif clean:
            both = [(p, g, clean[p]) for p, g in zip(params, grads) if p in clean]
            self.descent.sharpness_aware([p for p, _, _ in both], [c for *_, c in both], [g for _, g, _ in both])
        else:
            self.descent.sharpness_aware(params, [], grads)
        self.sam_steps += sam
        self._clip(grads)
        # a base that writes into .grad (torch's own do not) changes the direction's norm
        versions = [g._version for g in grads] if builds_eps else None
        self.base.step()
        self.descent.after_base_step(self.param_groups, sam)
        if self.source.single_pass:
            norm = reading.norm if versions == [g._version for g in grads] else None
            # the gradient just used (taken at the perturbed point) builds the next perturbation
            self._perturb(params, self.source.direction(params, grads, self.base, 1.0), norm)

    # ----------------------------------------------------------------------------------------
    # the perturbation

    def _perturb_from_gradients(self, decided: bool | None) -> None:
        """After the pass at w: the schedule decides (from the gradient's norm when it needs it),
        then w -> w + eps built from the source's direction. A non-finite gradient that a policy
        would derive state from skips the step (`SKIPPED`); any other reaches eps, then the
        descent gradient, whose check restores w: that check is the step's one host sync.
        """
        if self.phase is not Phase.AT_W:
            raise RuntimeError("first_step() called twice; call second_step() (or step()) in between")
        self.gradient_check.forget()
        params, grads = self._gradients()
        if not params and any(p.requires_grad for p in self._params()):
            raise RuntimeError(
                "first_step() found no gradients: run the forward and backward pass at w first "
                "(zero_grad() leaves .grad as None until the next backward)"
            )
        reading = None
        if decided is None and self.schedule.needs_gradient and not self._radius_is_zero():
            reading = self.gradient_check.read(grads, norm=True, always=True)  # one sync: decision and check
        elif self._ascent_needs_check():
            reading = self.gradient_check.read(grads, always=True)
        if reading is not None and not reading.finite:
            self.perturbation.phase = Phase.SKIPPED
            return
        if decided is None:
            decided = self._decide(None if reading is None or reading.norm is None else reading.norm ** 2)
        if not decided:
            # a plain step descends with the gradient just computed; a norm read showed it finite
            self.perturbation.phase = Phase.PLAIN
            if reading is not None and reading.norm is not None:
                self.gradient_check.vouch()
            return
        if self.descent.needs_clean_gradient:
            # kept without a copy: _perturb drops .grad, so no zero_grad can write over it
            for p, g in zip(params, grads):
                self.state[p]["clean_grad"] = g
        self._perturb(params, self.source.direction(params, grads, self.base, self.gradient_check.loss_scale))

    def _perturb(self, params: list[Tensor], directions: list[Tensor], norm: float | None = None) -> None:
        """Builds eps from `directions` (aligned with `params`) and moves to w + eps (or holds
        the move, `PENDING`, for a single-pass method that knows its model or steps with a
        closure), the cheapest way the policies allow, with no parameter-sized temporary.

        From the cheapest way down:

        - `norm` given (S2-SAM: the directions' L2 norm, read by the step's check): one scaled add;
        - an L2 ball, unmasked, one radius, one ascent step (SAM and most presets):
          `w += rho d / ||d||` in one pass, the factor kept on the device;
        - otherwise eps is built in the memory of the directions (unless the descent keeps the
          gradient at w), masked, and added.

        The perturbed tensors' `.grad` is dropped (None), except by an immediate scaled add: its
        memory is spent or held, and the coming backward at w + eps must start from zero.
        """
        self.coordinates.observe(self.steps, params, directions)
        chosen, directions = self.coordinates.select(params, directions)
        radii = self._group_radii()
        if radii is not None:  # a group with rho = 0 is not perturbed
            kept = [(p, d) for p, d in zip(chosen, directions) if radii[self._group_of[p]] > 0]
            chosen, directions = [p for p, _ in kept], [d for _, d in kept]
        if not chosen:
            self.perturbation.phase, self.perturbation.tensors = Phase.PERTURBED, []
            return
        scale = self.coordinates.scale
        masks = self.coordinates.masks(chosen)
        if norm is not None and radii is None:
            # a zero gradient gives no perturbation (radius / tiny could overflow to inf * 0)
            factor: float | Tensor = self.radius() * scale / norm if norm > 0 else 0.0
        elif (radii is None and self.shape.normalises_by_l2 and self.ascent_steps == 1
              and all(m is None for m in masks)):
            factor = l2_factor(self.radius() * scale, directions, foreach=self.foreach)
        else:
            directions = self.shape.perturbation(
                directions, chosen, self._adaptive_of(chosen), (self.radius() if radii is None else 1.0) * scale,
                self.foreach, in_place=not self.descent.needs_clean_gradient,
            )
            if radii is not None:
                _times_each_(directions, [radii[self._group_of[p]] for p in chosen])
            _mask_(directions, masks)
            factor = 1.0
        if self.source.single_pass and (self._forward_hook is not None or self._closure_steps):
            self.perturbation.hold(chosen, directions, factor)
            for p in chosen:
                p.grad = None  # held as the pending direction: no zero_grad or backward may write into it
            return
        self.perturbation.move(chosen, directions, factor)
        self.perturbation.eps = directions if self.ascent_steps > 1 else None
        if norm is None:
            for p in chosen:
                p.grad = None

    @torch.no_grad()
    def _ascend(self) -> None:
        """One more ascent step from the perturbed point, projected back onto the rho-ball."""
        weights = self.perturbation.tensors
        if not weights:
            return
        backups = self.perturbation.backups(weights)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in weights]
        if not self.gradient_check.read(grads, always=True).finite:
            return  # keep the last finite perturbation
        adaptive = self._adaptive_of(weights)
        scale = self.coordinates.scale
        rho = self.radius()
        size = (self.ascent_step_size if self.ascent_step_size is not None else rho) * scale
        # the adaptive operator T is taken at w, not at the perturbed point
        delta = self.shape.perturbation(grads, backups, adaptive, size, self.foreach)
        _mask_(delta, self.coordinates.masks(weights))
        eps = torch._foreach_add(self.perturbation.eps, delta)
        eps = self.shape.project(eps, backups, adaptive, rho * scale, self.foreach)
        copy_(weights, backups)  # w + eps from w, not from the previous point
        torch._foreach_add_(weights, eps)
        self.perturbation.eps = eps

    # ----------------------------------------------------------------------------------------
    # the two-phase API

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Moves the weights from w to w + eps, eps built from the gradients now in `.grad`.

        Call it after the backward pass at w. A gradient with an inf or NaN leaves w in place and
        marks the step as skipped (`second_step` then takes no base step). The perturbed tensors'
        `.grad` is None afterwards: eps is built in its memory (no parameter-sized temporary), and
        the backward at w + eps starts from zero, with or without a `zero_grad` in between.
        """
        if self.source.single_pass:
            raise RuntimeError("a single-pass method perturbs inside step(); call step() once per batch")
        if self.source.offsets_ascent_pass:
            raise RuntimeError(f"the {self.source.name} source runs the first pass away from w, inside "
                               "step(closure); call step(closure) instead of first_step()")
        self.prepare()
        self._perturb_from_gradients(None)
        self.gradient_check.forget()  # a backward may run before second_step
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restores w and takes the base optimizer's step with the gradient now in `.grad`
        (computed at w + eps).
        """
        if self.source.single_pass:
            raise RuntimeError("a single-pass method has no second step; call step() once per batch")
        if self.phase is Phase.AT_W:
            raise RuntimeError("second_step() without first_step()")
        self._descend(Amp.of(self))  # set when GradScaler.step(opt) is what called this
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def _second_step_without_closure(self, scaler) -> None:
        if scaler is not None:
            raise TypeError("scaler= comes with a closure; after first_step() call scaler.step(opt)")
        if self.phase is Phase.AT_W:
            raise RuntimeError(
                f"{type(self).__name__} needs a closure that re-evaluates the loss: step(closure), "
                "or call first_step() and second_step() around the second forward/backward"
            )
        self.second_step()

    # ----------------------------------------------------------------------------------------
    # what each step asks

    def policies(self) -> tuple:
        """The optimizer's policies (each checks its combinations with the others)."""
        extra = (self.rho_schedule,) if self.rho_schedule is not None else ()
        return (self.source, self.shape, self.coordinates, self.samples, self.descent, self.schedule, *extra)

    def _decide(self, sq_norm: float | None = None) -> bool:
        """Whether this step takes the sharpness-aware update (the schedule's call)."""
        if self._radius_is_zero():
            return False  # rho = 0 is the base optimizer, bit for bit and with one pass
        return self.schedule.decide(self.steps, sq_norm) if self.schedule.needs_gradient else \
            self.schedule.decide(self.steps)

    def _ascent_needs_check(self) -> bool:
        """Whether a policy derives state from the ascent gradient on this step (it must never see
        an inf or NaN, so the gradient is checked at once), or the shape would hide one.
        """
        return (self.source.stateful or self.coordinates.observes_gradient_at(self.steps)
                or not self.shape.propagates_nonfinite)

    def _norm_builds_next_eps(self, grads: list[Tensor]) -> bool:
        """Whether the descent gradient's L2 norm, read by its check, is also the next
        perturbation's: the direction is that gradient, unclipped and unmasked, the shape divides
        by its L2 norm, one radius, and the norm can stand for the check (float32/64).
        """
        return (
            self.max_grad_norm is None
            and self.source.direction_is_gradient
            and self.shape.normalises_by_l2
            and self.coordinates.perturbs_all
            and self._group_radii() is None
            and (not self.gradient_check.skip_nonfinite or norm_checks(grads))
        )

    def _gradients(self) -> tuple[list[Tensor], list[Tensor]]:
        params = [p for p in self._params() if p.grad is not None]
        return params, [p.grad for p in params]

    def _pop_clean_gradients(self) -> dict[Tensor, Tensor]:
        return {p: self.state[p].pop("clean_grad") for p in self._params() if "clean_grad" in self.state[p]}

    def _clip(self, grads: list[Tensor]) -> None:
        if self.max_grad_norm is not None:
            total = global_norm(grads, 2.0, foreach=self.foreach)
            coef = (self.max_grad_norm / (total + 1e-6)).clamp_max(1.0)  # stays on the device: no sync
            torch._foreach_mul_(local_shards(grads), coef.to(grads[0].device))

    # ----------------------------------------------------------------------------------------
    # passes

    @contextmanager
    def _stepping(self, closure: Callable | None, scaler: torch.amp.GradScaler | None) -> Iterator[None]:
        """The bookkeeping around one `step`: the loss scale, gradients left from outside."""
        if scaler is not None and closure is not None and not isinstance(closure, PerSampleClosure):
            raise TypeError("with scaler=, pass flatlab.per_sample(fn): the optimizer scales each backward itself")
        if self.samples.needs_per_sample and closure is not None and not isinstance(closure, PerSampleClosure):
            raise TypeError(
                f"sample selection ({self.samples.extra_repr()}) needs per-sample losses: pass "
                "flatlab.per_sample(fn) where fn(indices) returns the per-sample losses of those rows"
            )
        if closure is not None:
            self._drop_gradients_from_outside(closure)
        self._scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.gradient_check.loss_scale = float(scaler.get_scale()) if self._scaler is not None else 1.0
        self._closure_steps = closure is not None
        self._in_step = True
        try:
            yield
        finally:
            self._scaler = None
            self.gradient_check.loss_scale = 1.0
            self._in_step = False
            self._backward_outside = False

    def _is_ddp(self) -> bool:
        return isinstance(self.model, nn.parallel.DistributedDataParallel)

    @contextmanager
    def ascent_pass(self) -> Iterator[None]:
        """Wraps the forward/backward passes that build the perturbation (at w and, for several
        ascent steps, at w + eps): tensors the coordinate policy will not perturb skip their weight
        gradient (ESAM), and a DDP model skips the all-reduce unless `sync_first_pass`.

        Under a schedule that decides from the gradient (AE-SAM) the first pass may become a plain
        step's only pass: it then computes every gradient and is all-reduced. A descent that reads
        the gradient at w (GSAM, WSAM, LookSAM, RWP) has it all-reduced too: taken per replica, it
        would move each replica its own way.
        """
        ddp = self._is_ddp()
        synced = self.sync_first_pass or self.schedule.needs_gradient or self.descent.needs_clean_gradient
        no_sync = self.model.no_sync() if ddp and not synced else nullcontext()
        # a synced DDP backward waits for every gradient: nothing may skip it then
        self.coordinates.begin_ascent_pass(skip_grads=not (ddp and synced) and not self.schedule.needs_gradient)
        try:
            with no_sync:
                yield
        finally:
            self.coordinates.end_ascent_pass()

    def perturbed_pass(self):
        """Context for a forward at w + eps: BatchNorm statistics frozen when `model` was given."""
        if self.model is not None and self.freeze_bn:
            return frozen_bn_stats(self.model)
        return nullcontext()

    def _evaluate(self, closure: Callable, rows: Tensor | None = None,
                  onto: dict[Tensor, Tensor] | None = None) -> tuple[Any, Tensor | None]:
        if isinstance(closure, PerSampleClosure):
            self.zero_grad(set_to_none=True)
            for p, g in (onto or {}).items():
                p.grad = g  # the backward adds to it
            no_sync = self.model.no_sync if self._is_ddp() else None
            with torch.enable_grad():
                return closure.backward(rows, self._backward_scale(), no_sync)
        with torch.enable_grad():
            return closure(), None

    def _backward_scale(self) -> Callable[[Tensor], Tensor] | None:
        """What a backward's loss is multiplied by: a GradScaler's scale, an ascent group's share."""
        scaler, share = self._scaler, self._share
        if share == 1.0:
            return None if scaler is None else scaler.scale
        return (lambda loss: loss * share) if scaler is None else (lambda loss: scaler.scale(loss * share))

    def _drop_gradients_from_outside(self, closure: Callable) -> None:
        """A two-pass step takes its gradients at w and at w + eps from the closure's batch alone:
        gradients that `backward()` calls before `step` left in `.grad` (micro-batches
        accumulated the plain way) have no pass at w + eps, so they are dropped, with a warning
        that says so; under Lightning (whose accumulation does exactly this) the step refuses. A
        single-pass step keeps them: taken at w + eps like the closure's, they count in full.
        """
        if self.source.single_pass or not self._backward_outside:
            return
        held = [p for p in self._params() if p.grad is not None]
        if not held:
            return
        if is_lightning_closure(closure):
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
                stacklevel=5,
            )
            self._warned_discard = True

    def _refuse_gradients_at_w(self) -> None:
        """A single-pass step descends with gradients taken at w + eps: refuse those taken at w
        while the perturbation waited for a forward of `model` that never came.
        """
        at_w, self._backward_while_pending = self._backward_while_pending, False
        if not (at_w or self.phase is Phase.PENDING and any(p.grad is not None for p in self.perturbation.tensors)):
            return
        self.perturbation.restore()
        raise UsageError(
            "the gradients of this single-pass step were taken at w, not at w + eps: the perturbation is "
            "applied by a training-mode forward of the module given as model= (or by step(closure)), and none "
            "ran before the backward. Pass the module you call as model=; under Lightning, accumulate with "
            "SharpnessAwareModule (accumulate = k) instead of Trainer(accumulate_grad_batches=k)"
        )

    # ----------------------------------------------------------------------------------------
    # radius, coordinates, data

    def radius(self) -> float:
        """The perturbation radius of the coming step (of the groups without a `rho` of their own)."""
        return self.rho if self.rho_schedule is None else self.rho_schedule.radius(self)

    def _group_radii(self) -> list[float] | None:
        """Each param group's radius, or None when every group takes `radius`. A rho
        schedule scales every group's rho alike.
        """
        rhos = [group.get("rho") for group in self.param_groups]
        if all(r is None or r == self.rho for r in rhos):
            return None
        factor = self.radius() / self.rho if self.rho > 0 else 1.0
        return [(self.rho if r is None else float(r)) * factor for r in rhos]

    def _radius_is_zero(self) -> bool:
        radii = self._group_radii()
        return self.radius() == 0.0 if radii is None else not any(radii)

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

    def _params(self) -> list[Tensor]:
        params = [p for group in self.param_groups for p in group["params"]]
        if hasattr(self, "_num_params") and len(params) != self._num_params:
            raise RuntimeError(
                f"the optimizer was built with {self._num_params} parameters and now has {len(params)}; "
                "add param groups to the base optimizer before wrapping it"
            )
        return params

    def set_weight_masks(self, masks: dict[Tensor, Tensor]) -> None:
        """Restricts every perturbation to the live weights of a sparse network.

        `masks` maps a parameter to its boolean weight mask; the mapping is kept by reference,
        so a sparse-training schedule that updates it is followed at every step.
        """
        self.coordinates.restrict_to_live(masks)

    @property
    def weight_masks(self) -> dict[Tensor, Tensor]:
        """The live-weight masks the perturbation is restricted to (empty: none)."""
        return self.coordinates.live_weights

    @property
    def mask_due(self) -> bool:
        """True when a data-driven mask (SSAM-F) is to be refreshed before the coming step."""
        return self.coordinates.needs_data and self.coordinates.due(self.steps)

    def prepare(self, batches=None, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                model: nn.Module | None = None) -> bool:
        """Refreshes, before the coming step, what the policies derive from data when it is due
        (SSAM-F's Fisher mask): from the data source the policy was built with, else from
        `batches`, an iterable of `(inputs, targets)` or a function returning one (called only
        when due). A training loop calls it before each step; `step` calls it too, with no
        batches. Returns whether a refresh ran. Raises when one is due and no data is at hand.

        Example:
            ```python
            opt.prepare(lambda: [(x, y)])   # this batch feeds SSAM-F's refresh when due
            opt.step(closure)
            ```
        """
        if not self.mask_due:
            return False
        if self.coordinates.has_data_source:
            batches = self.coordinates.batches()
        elif batches is None:
            raise RuntimeError(
                f"the {self.coordinates.name} mask is due for a refresh at step {self.steps}: call "
                "opt.prepare(batches) (or opt.update_mask(model, batches)) before this step, or build the "
                "optimizer with a data source for the mask (e.g. SSAM(..., mask_data=loader))"
            )
        elif callable(batches):
            batches = batches()
        self.update_mask(model or self.model, batches, loss_fn)
        return True

    def update_mask(
        self,
        model: nn.Module,
        data,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        """Recomputes a data-driven perturbation mask (SSAM-F's Fisher mask) from `data`, an
        iterable of `(inputs, targets)` batches. `prepare` calls it when due.
        """
        if not self.coordinates.needs_data:
            raise TypeError(f"the coordinate policy '{self.coordinates.name}' has no data-driven mask")
        if model is None:
            raise ValueError("update_mask needs the model the mask scores")
        with self.unperturbed():
            self.coordinates.refresh(model, data, loss_fn)
        self.coordinates.refreshed_at = self.steps

    # ----------------------------------------------------------------------------------------
    # what the parameters hold

    @property
    def phase(self) -> Phase:
        """Where the step stands: what the parameters hold (see `Phase`)."""
        return self.perturbation.phase

    @property
    def is_perturbed(self) -> bool:
        """Whether the parameters hold w + eps right now: between `first_step` and
        `second_step`; for a single-pass method from its training forward to its step (and
        between steps when the optimizer was built without `model=`).
        """
        return self.phase is Phase.PERTURBED

    @property
    def pending_directions(self) -> tuple[Tensor, ...]:
        """What a single-pass method holds between steps besides its state: the directions of its
        next perturbation (the spent gradients' memory, which a plain loop would free at
        `zero_grad`), released when the next training forward applies them. Empty otherwise.
        """
        return tuple(self.perturbation.pending or ())

    @torch.no_grad()
    def restore_weights(self) -> None:
        """Puts w back into the parameters for good and drops the pending perturbation, e.g.
        before loading other weights into the model (a best checkpoint) or to export the weights
        of a single-pass method built without `model=` (whose parameters carry the next step's
        perturbation between steps). The next step then starts at w.
        """
        self.perturbation.restore()

    def unperturbed(self):
        """Holds w (not w + eps) in the parameters inside the block. Needed only where the weights
        hold w + eps outside a step: a single-pass method built without `model=`.
        """
        return self.perturbation.unperturbed()

    @property
    def skip_nonfinite(self) -> bool:
        """Whether a step whose gradient has an inf or NaN is skipped (weights left as they were)."""
        return self.gradient_check.skip_nonfinite

    @skip_nonfinite.setter
    def skip_nonfinite(self, value: bool) -> None:
        self.gradient_check.skip_nonfinite = bool(value)

    # ----------------------------------------------------------------------------------------
    # cost

    @property
    def needs_closure(self) -> bool:
        """Whether `step` needs a closure (an ascent pass on the current batch)."""
        return not self.source.single_pass

    @property
    def sam_fraction(self) -> float:
        """Fraction of the steps so far that took the sharpness-aware update (NaN before any)."""
        return self.sam_steps / self.steps if self.steps else math.nan

    def passes(self) -> tuple[Pass, ...]:
        """The forward/backward passes of one step on average, for cost accounting (FLOPs,
        benchmarks): a sharpness-aware step's passes at the schedule's rate, plus the plain
        steps' single pass.
        """
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
    # state

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's schema (`state` and `param_groups`: the base optimizer's, so tools
        that handle torch optimizers read it as they read the base's), with this wrapper's own
        state under `"sharpness_aware"`.
        """
        params = self._params()
        index = {p: i for i, p in enumerate(params)}
        held = self.perturbation
        perturbed = set(held.tensors)
        per_param: dict[int, dict[str, Tensor]] = {}
        for p, state in self.state.items():
            # a backup is only meaningful while its tensor holds w + eps, a clean gradient during a step
            kept = {
                k: v for k, v in state.items()
                if (k != "backup" or p in perturbed and held.phase is Phase.PERTURBED)
                and (k != "clean_grad" or held.phase is not Phase.AT_W)
            }
            if kept:
                per_param[index[p]] = kept
        own: dict[str, Any] = {
            "steps": self.steps,
            "sam_steps": self.sam_steps,
            "rho": self.rho,
            "phase": held.phase.value,
            "perturbed": [index[p] for p in held.tensors],
            "pending": dict(zip((index[p] for p in held.tensors), held.pending or ())),
            "pending_factor": held.factor,
            "generator": self.generator.get_state(),
            "source": self.source.state_dict(),
            "schedule": self.schedule.state_dict(),
            "coordinates": self.coordinates.state_dict(),
            "state": per_param,
        }
        return {**self.base.state_dict(), "sharpness_aware": own}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a `state_dict`, or one saved in flatlab's earlier schema
        (`{"base": ..., "sharpness_aware": ...}`).
        """
        if "sharpness_aware" not in state_dict or not ("base" in state_dict or "param_groups" in state_dict):
            raise ValueError(
                "not a flatlab sharpness-aware state_dict (keys 'state', 'param_groups' and 'sharpness_aware')"
            )
        own = state_dict["sharpness_aware"]
        base_state = state_dict.get("base") or {k: v for k, v in state_dict.items() if k != "sharpness_aware"}
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
        self.base.load_state_dict(base_state)
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
        held = self.perturbation
        held.phase = Phase(own["phase"])
        held.tensors = [params[int(i)] for i in own["perturbed"]]
        held.eps = None
        pending = own.get("pending", {})
        held.pending = [pending[i].to(device=params[int(i)].device, dtype=params[int(i)].dtype)
                        for i in own["perturbed"]] if held.phase is Phase.PENDING else None
        factor = own.get("pending_factor", 1.0)
        held.factor = factor.to(params[0].device) if isinstance(factor, Tensor) else float(factor)

    def __repr__(self) -> str:
        parts = [f"rho={self.rho:g}", f"shape={self.shape.describe()}"]
        for label, policy, default in (("source", self.source, BatchGradient()),
                                       ("coordinates", self.coordinates, AllCoordinates()),
                                       ("samples", self.samples, AllSamples()),
                                       ("descent", self.descent, PerturbedGradient()),
                                       ("schedule", self.schedule, EveryStep())):
            if policy.describe() != default.describe():
                parts.append(f"{label}={policy.describe()}")
        if self.rho_schedule is not None:
            parts.append(f"rho_schedule={self.rho_schedule.describe()}")
        if self.ascent_steps > 1:
            parts.append(f"ascent_steps={self.ascent_steps}")
        base = "\n    ".join(repr(self.base).splitlines())
        return f"{type(self).__name__}({', '.join(parts)},\n    base={base})"


class _ScaledDescent:
    """What `step(scaler=)` hands `GradScaler.step`: the scaler checks the gradients for inf
    (recording it for `update`), sets `found_inf`/`grad_scale` here and calls `step`,
    which takes the optimizer's descent once. The optimizer's own `step` is not entered again,
    so its step hooks fire once per step.
    """

    _step_supports_amp_scaling = True

    def __init__(self, optimizer: SharpnessAware):
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups  # what the scaler's inf check reads

    def step(self) -> None:
        self.optimizer._descend(Amp.of(self))


def _default_foreach(params: list[Tensor]) -> bool:
    devices = {"cpu", "cuda", "xpu", "mtia", torch._C._get_privateuse1_backend_name()}
    return all((type(p) in (Tensor, nn.Parameter) or isinstance(p, DTensor)) and p.device.type in devices
               for p in params)


def _mask_(eps: list[Tensor], masks: list[Tensor | None]) -> None:
    """Zeroes the coordinates of eps outside its tensor's mask (None: keep all)."""
    pairs = [(e, m) for e, m in zip(eps, masks) if m is not None]
    if pairs:
        torch._foreach_mul_([e for e, _ in pairs], [m for _, m in pairs])


def _add_into(total: dict[Tensor, Tensor], part: dict[Tensor, Tensor]) -> None:
    """`total[p] += part[p]`, taking `part[p]` itself where `total` has none."""
    both = [p for p in part if p in total]
    if both:
        torch._foreach_add_([total[p] for p in both], [part[p] for p in both])
    for p, g in part.items():
        total.setdefault(p, g)


def _times_each_(tensors: list[Tensor], factors: list[float]) -> None:
    """`tensors[i] *= factors[i]` (a param group's radius)."""
    if tensors:
        torch._foreach_mul_(local_shards(tensors), factors)


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
    """The passes one step of `optimizer` makes: its own account for a flatlab optimizer, one
    full forward/backward for any other `torch.optim` optimizer.

    Example:
        ```python
        >>> import torch, flatlab
        >>> w = torch.zeros(2, requires_grad=True)
        >>> len(step_passes(torch.optim.SGD([w], lr=0.1)))
        1
        >>> len(step_passes(flatlab.SAM(torch.optim.SGD([w], lr=0.1))))
        2

        ```
    """
    return optimizer.passes() if isinstance(optimizer, SharpnessAware) else (Pass(),)
