"""The one optimizer class of the SAM family: a wrapper around a base optimizer, composed of four
policies (which gradient, how shaped, which coordinates, which samples).

The named methods (SAM, ASAM, ESAM, SSAM, S2SAM) are presets of this class in ``presets.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from .batchnorm import frozen_bn_stats
from .coordinates import Coordinates
from .functional import global_norm
from .samples import PerSampleClosure, Samples
from .shapes import LpBall, Shape

__all__ = ["SharpnessAware"]


class SharpnessAware(torch.optim.Optimizer):
    """Sharpness-aware minimisation around any base optimizer instance.

    The wrapper shares the base optimizer's ``param_groups`` (LR schedulers, param-group tricks
    and ``isinstance(opt, torch.optim.Optimizer)`` keep working) and keeps its own state apart:
    the saved weights w while they are perturbed, masks, counters and a random generator.

    Args:
        base: the optimizer that takes the descent step (SGD, AdamW, ...), already built.
        rho: radius of the perturbation (0 reproduces the base optimizer exactly).
        shape: how the ascent direction is shaped (default: L2 ball, i.e. SAM).
        coordinates: which coordinates are perturbed (default: all).
        samples: which samples drive the descent gradient (default: all).
        single_step: reuse the previous step's gradient for the perturbation, so each step takes
            one forward/backward (S2-SAM); otherwise the current batch's gradient (two passes).
        ascent_steps: number of ascent steps; each step after the first re-evaluates the gradient
            at the perturbed point, adds a step of size ``ascent_step_size`` (default ``rho``) and
            projects back onto the rho-ball.
        model: the module being trained; optional. When given, BatchNorm running statistics are
            frozen during perturbed passes (``freeze_bn``), a DDP model's ascent pass skips the
            gradient all-reduce unless ``sync_first_pass``, and parameters named ``*bias`` are not
            adaptive (ASAM's T = 1).
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

    Or the two-phase API, e.g. with a GradScaler (fp16)::

        scaler.scale(loss_fn(model(x), y)).backward()
        opt.first_step(zero_grad=True)          # the perturbation is invariant to the scale
        with flatlab.frozen_bn_stats(model):
            scaler.scale(loss_fn(model(x), y)).backward()
        scaler.step(opt)                        # restores w; skips the step on overflow
        scaler.update()
    """

    # GradScaler hands this optimizer found_inf/grad_scale instead of unscaling and skipping
    # step() itself: the weights must be restored from w + eps even when the step is skipped.
    _step_supports_amp_scaling = True

    def __init__(
        self,
        base: torch.optim.Optimizer,
        rho: float = 0.05,
        *,
        shape: Shape | None = None,
        coordinates: Coordinates | None = None,
        samples: Samples | None = None,
        single_step: bool = False,
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
        if not rho >= 0.0:
            raise ValueError(f"rho must be >= 0, got rho={rho}")
        if int(ascent_steps) != ascent_steps or ascent_steps < 1:
            raise ValueError(f"ascent_steps must be an integer >= 1, got ascent_steps={ascent_steps}")
        if single_step and ascent_steps != 1:
            raise ValueError(f"a single-step method takes no extra ascent steps, got ascent_steps={ascent_steps}")
        if ascent_step_size is not None and not ascent_step_size > 0.0:
            raise ValueError(f"ascent_step_size must be > 0, got ascent_step_size={ascent_step_size}")
        if max_grad_norm is not None and not max_grad_norm > 0.0:
            raise ValueError(f"max_grad_norm must be > 0, got max_grad_norm={max_grad_norm}")
        samples = samples or Samples()
        if single_step and samples.needs_per_sample:
            raise ValueError("sample selection needs a second pass; it cannot be combined with single_step")

        # Optimizer.__init__ validates the groups and sets up hooks; afterwards the list itself is
        # shared so that groups added to or reloaded into the base are seen here.
        super().__init__(base.param_groups, base.defaults)
        self.base = base
        self.param_groups = base.param_groups
        self.rho = float(rho)
        self.shape = shape or LpBall(2.0)
        self.coordinates = coordinates or Coordinates()
        self.samples = samples
        self.single_step = bool(single_step)
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
        self.weight_masks: dict[Tensor, Tensor] = {}

        params = self._params()
        self._num_params = len(params)
        names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        self._adaptive = [not names.get(id(p), "").endswith("bias") for p in params]
        self.coordinates.bind(params, self.generator)
        self._perturbed: list[int] | None = None  # indices of the tensors now holding w + eps
        self._eps: list[Tensor] | None = None  # kept during a step only, for several ascent steps
        self._skipped = False  # the ascent gradient was not finite: this step is skipped

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

    def _backups(self, params: list[Tensor], index: list[int]) -> list[Tensor]:
        out = []
        for i in index:
            state = self.state[params[i]]
            if "backup" not in state:
                state["backup"] = torch.empty_like(params[i], memory_format=torch.preserve_format)
            out.append(state["backup"])
        return out

    def _masks_for(self, params: list[Tensor], index: list[int]) -> list[Tensor | None]:
        masks = self.coordinates.masks(index)
        if not self.weight_masks:
            return masks
        out = []
        for m, i in zip(masks, index):
            w = self.weight_masks.get(params[i])
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
        """Whether the parameters hold w + eps right now (between ``first_step`` and ``second_step``,
        or between steps for a single-step method)."""
        return self._perturbed is not None

    # ----------------------------------------------------------------------------------------
    # gradient checks

    @staticmethod
    def _check_and_unscale(grads: list[Tensor], inv_scale: Tensor | None) -> bool:
        """True when every gradient is finite; multiplies them by ``inv_scale`` when given."""
        by_device: dict[torch.device, list[Tensor]] = {}
        for g in grads:
            by_device.setdefault(g.device, []).append(g)
        found = False
        for device, group in by_device.items():
            found_inf = torch.zeros((), dtype=torch.float32, device=device)
            inv = torch.ones((), dtype=torch.float32, device=device) if inv_scale is None else inv_scale.to(device)
            torch._amp_foreach_non_finite_check_and_unscale_(group, found_inf, inv)
            found = found or bool(found_inf.item())
        return not found

    def _descent_ready(self, grads: list[Tensor]) -> bool:
        """Checks (and unscales) the descent gradient; False means: skip the base step."""
        found_inf = getattr(self, "found_inf", None)  # set by GradScaler.step
        if found_inf is not None:
            if bool(found_inf.item()):
                return False
            scale = getattr(self, "grad_scale", None)
            if scale is not None:
                self._check_and_unscale(grads, scale.double().reciprocal().float())
        elif self.skip_nonfinite and not self._check_and_unscale(grads, None):
            return False
        if self.max_grad_norm is not None:
            total = global_norm(grads, 2.0, foreach=self.foreach)
            coef = self.max_grad_norm / (float(total) + 1e-6)
            if coef < 1.0:
                torch._foreach_mul_(grads, coef)
        return True

    # ----------------------------------------------------------------------------------------
    # the perturbation

    def _perturb(self, params: list[Tensor], index: list[int], grads: list[Tensor]) -> None:
        """Builds eps from ``grads`` (aligned with ``index``), saves w and moves to w + eps."""
        self.coordinates.observe(self.steps, index, grads)
        chosen = self.coordinates.select(index)
        if len(chosen) != len(index):
            keep = set(chosen)
            grads = [g for i, g in zip(index, grads) if i in keep]
        weights = [params[i] for i in chosen]
        radius = self.rho * self.coordinates.scale
        eps = self.shape.perturbation(grads, weights, [self._adaptive[i] for i in chosen], radius, self.foreach)
        eps = self._apply_masks(params, chosen, eps)
        backups = self._backups(params, chosen)
        if weights:
            torch._foreach_copy_(backups, weights)
            torch._foreach_add_(weights, eps)
        self._perturbed = chosen
        self._eps = eps if self.ascent_steps > 1 else None

    def _apply_masks(self, params: list[Tensor], index: list[int], eps: list[Tensor]) -> list[Tensor]:
        masks = self._masks_for(params, index)
        pairs = [(e, m) for e, m in zip(eps, masks) if m is not None]
        if pairs:
            torch._foreach_mul_([e for e, _ in pairs], [m for _, m in pairs])
        return eps

    def _restore(self, params: list[Tensor]) -> None:
        """Puts w back by copy (subtracting eps would not give w back in low precision)."""
        if self._perturbed is None:
            return
        if self._perturbed:
            weights = [params[i] for i in self._perturbed]
            torch._foreach_copy_(weights, self._backups(params, self._perturbed))
            if self.weight_masks:
                # a sparse schedule may have pruned weights since w was saved: keep them pruned
                pairs = [(w, self.weight_masks[w]) for w in weights if w in self.weight_masks]
                if pairs:
                    torch._foreach_mul_([w for w, _ in pairs], [m for _, m in pairs])
        self._perturbed = None
        self._eps = None

    @torch.no_grad()
    def _ascend(self) -> None:
        """One more ascent step from the perturbed point, projected back onto the rho-ball."""
        params = self._params()
        index = self._perturbed or []
        if not index:
            return
        weights = [params[i] for i in index]
        backups = self._backups(params, index)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in weights]
        if not self._check_and_unscale(grads, None):
            return  # keep the last finite perturbation
        adaptive = [self._adaptive[i] for i in index]
        scale = self.coordinates.scale
        size = (self.ascent_step_size if self.ascent_step_size is not None else self.rho) * scale
        # the adaptive operator T is taken at w, not at the perturbed point
        delta = self.shape.perturbation(grads, backups, adaptive, size, self.foreach)
        delta = self._apply_masks(params, index, delta)
        eps = torch._foreach_add(self._eps, delta)
        eps = self.shape.project(eps, backups, adaptive, self.rho * scale, self.foreach)
        torch._foreach_copy_(weights, backups)
        torch._foreach_add_(weights, eps)
        self._eps = eps

    # ----------------------------------------------------------------------------------------
    # the two-phase API

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Moves the weights from w to w + eps, eps built from the gradients now in ``.grad``.

        Call it after the backward pass at w. A gradient with an inf or NaN leaves w in place and
        marks the step as skipped (``second_step`` then takes no base step).
        """
        if self.single_step:
            raise RuntimeError("a single-step method perturbs inside step(); call step() once per batch")
        if self._perturbed is not None or self._skipped:
            raise RuntimeError("first_step() called twice; call second_step() (or step()) in between")
        params = self._params()
        index = [i for i, p in enumerate(params) if p.grad is not None]
        if not index and any(p.requires_grad for p in params):
            raise RuntimeError(
                "first_step() found no gradients: run the forward and backward pass at w first "
                "(zero_grad() leaves .grad as None until the next backward)"
            )
        grads = [params[i].grad for i in index]
        if not self._check_and_unscale(grads, None):
            self._skipped = True
        else:
            self._perturb(params, index, grads)
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restores w and takes the base optimizer's step with the gradient now in ``.grad``
        (computed at w + eps)."""
        if self.single_step:
            raise RuntimeError("a single-step method has no second step; call step() once per batch")
        if self._perturbed is None and not self._skipped:
            raise RuntimeError("second_step() without first_step()")
        params = self._params()
        self._restore(params)
        grads = [p.grad for p in params if p.grad is not None]
        if not self._skipped and grads and self._descent_ready(grads):
            self.base.step()
        self._skipped = False
        self.steps += 1
        if zero_grad:
            self.zero_grad(set_to_none=True)

    # ----------------------------------------------------------------------------------------
    # passes

    def _is_ddp(self) -> bool:
        return isinstance(self.model, nn.parallel.DistributedDataParallel)

    @contextmanager
    def ascent_pass(self) -> Iterator[None]:
        """Wraps the forward/backward passes that build the perturbation (at w and, for several
        ascent steps, at w + eps): tensors the coordinate policy will not perturb skip their weight
        gradient (ESAM), and a DDP model skips the all-reduce unless ``sync_first_pass``."""
        ddp = self._is_ddp()
        no_sync = self.model.no_sync() if ddp and not self.sync_first_pass else nullcontext()
        # a synced DDP backward waits for every gradient: nothing may skip it then
        self.coordinates.begin_ascent_pass(skip_grads=not (ddp and self.sync_first_pass))
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

    def _evaluate(self, closure: Callable, rows: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if isinstance(closure, PerSampleClosure):
            self.zero_grad(set_to_none=True)
            with torch.enable_grad():
                losses = closure.losses(rows)
                loss = losses.mean()
                loss.backward()
            return loss.detach(), losses.detach()
        with torch.enable_grad():
            return closure(), None

    # ----------------------------------------------------------------------------------------
    # step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimisation step; returns the closure's loss at w.

        Two-pass methods need ``closure`` (it zeroes grads, runs forward and backward, returns the
        loss); without one, ``step()`` acts as ``second_step()`` after a ``first_step()``, which
        is what ``GradScaler.step`` calls. Sample selection (ESAM's gamma < 1) needs a
        :class:`~flatlab.optim.samples.PerSampleClosure`. A single-step method needs no closure.
        """
        if self.single_step:
            return self._single_step(closure)
        if closure is None:
            if self._perturbed is not None or self._skipped:
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
        with self.ascent_pass():
            loss, before = self._evaluate(closure)
            self.first_step()
            for _ in range(self.ascent_steps - 1):
                if self._skipped:
                    break
                with self.perturbed_pass():
                    self._evaluate(closure)
                self._ascend()
        if self._skipped:
            self.second_step()
            return loss
        rows = None
        if self.samples.needs_per_sample:
            with torch.no_grad(), self.perturbed_pass():
                after = closure.losses(None)
            rows = self.samples.select(before, after)
        with self.perturbed_pass():
            self._evaluate(closure, rows)
        self.second_step()
        return loss

    @torch.no_grad()
    def _single_step(self, closure: Callable[[], Any] | None) -> Any:
        loss = None
        if closure is not None:
            loss, _ = self._evaluate(closure)
        params = self._params()
        self._restore(params)
        index = [i for i, p in enumerate(params) if p.grad is not None]
        grads = [params[i].grad for i in index]
        if grads and self._descent_ready(grads):
            self.base.step()
            # The gradient just used (taken at the perturbed point) is g_prev of the next step.
            self._perturb(params, index, grads)
        self.steps += 1
        return loss

    # ----------------------------------------------------------------------------------------
    # evaluation and state

    @contextmanager
    def unperturbed(self) -> Iterator[None]:
        """Holds w (not w + eps) in the parameters inside the block, e.g. to evaluate a model
        trained with a single-step method, whose weights carry the next perturbation between steps."""
        if not self._perturbed:
            yield
            return
        params = self._params()
        weights = [params[i] for i in self._perturbed]
        with torch.no_grad():
            held = [w.clone() for w in weights]
            torch._foreach_copy_(weights, self._backups(params, self._perturbed))
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(weights, held)

    def update_mask(
        self,
        model: nn.Module,
        data,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        """Recomputes a data-driven perturbation mask (SSAM-F's Fisher mask) from ``data``, an
        iterable of ``(inputs, targets)`` batches. Call it when ``mask_due`` is True."""
        refresh = getattr(self.coordinates, "refresh", None)
        if refresh is None:
            raise TypeError(f"the coordinate policy '{self.coordinates.name}' has no data-driven mask")
        with self.unperturbed():
            refresh(model, data, loss_fn)

    @property
    def mask_due(self) -> bool:
        """True when a data-driven mask is to be refreshed before the coming step."""
        due = getattr(self.coordinates, "due", None)
        return bool(getattr(self.coordinates, "refresh", None)) and due is not None and due(self.steps)

    def state_dict(self) -> dict[str, Any]:
        params = self._params()
        own: dict[str, Any] = {
            "steps": self.steps,
            "rho": self.rho,
            "skipped": self._skipped,
            "generator": self.generator.get_state(),
            "coordinates": self.coordinates.state_dict(),
            "perturbed": None,
        }
        if self._perturbed is not None:
            own["perturbed"] = list(self._perturbed)
            own["backups"] = self._backups(params, self._perturbed)
        return {"base": self.base.state_dict(), "sharpness_aware": own}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "base" not in state_dict or "sharpness_aware" not in state_dict:
            raise ValueError("not a flatlab sharpness-aware state_dict (keys 'base' and 'sharpness_aware')")
        self.base.load_state_dict(state_dict["base"])
        # Optimizer.load_state_dict rebuilds param_groups as new dicts: share them again, or an
        # LR scheduler would go on updating groups the base no longer reads.
        self.param_groups = self.base.param_groups
        own = state_dict["sharpness_aware"]
        params = self._params()
        self.steps = int(own["steps"])
        self.rho = float(own["rho"])
        self._skipped = bool(own["skipped"])
        self.generator.set_state(own["generator"])
        self.coordinates.load_state_dict(own["coordinates"])
        self._perturbed = None
        self._eps = None
        if own["perturbed"] is not None:
            index = [int(i) for i in own["perturbed"]]
            for b, saved in zip(self._backups(params, index), own["backups"]):
                b.copy_(saved)
            self._perturbed = index

    def __repr__(self) -> str:
        parts = [f"rho={self.rho:g}", f"shape={self.shape.name}({self.shape.extra_repr()})"]
        if self.coordinates.name != "all":
            parts.append(f"coordinates={self.coordinates.name}({self.coordinates.extra_repr()})")
        if self.samples.name != "all":
            parts.append(f"samples={self.samples.name}({self.samples.extra_repr()})")
        if self.single_step:
            parts.append("single_step=True")
        if self.ascent_steps > 1:
            parts.append(f"ascent_steps={self.ascent_steps}")
        base = "\n    ".join(repr(self.base).splitlines())
        return f"{type(self).__name__}({', '.join(parts)},\n    base={base})"
