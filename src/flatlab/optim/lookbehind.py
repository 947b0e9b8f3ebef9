"""Lookbehind-SAM (Mordido et al., ICML 2024): k ascent/descent steps on one batch, then the slow
weights take one step towards where the descents led.

One step on a batch, from the slow weights phi (what the parameters hold between steps):

```text
p_0 = theta_0 = phi
for j = 1 .. k:
    p_j     = p_{j-1} + rho g(p_{j-1}) / ||g(p_{j-1})||   the ascent goes on from the last point
    theta_j = base step from theta_{j-1} with g(p_j)       the descents move the fast weights
phi <- phi + alpha (theta_k - phi)
```

Each inner step is one `SharpnessAware` step, unchanged, at w = p_{j-1}; two things make it
Lookbehind's:

- at the end of its pass at w + eps the saved w becomes w + eps (`LookbehindSAM.perturbed_pass`),
  so the step's restore leaves the parameters at p_j, where the next ascent starts;
- its base optimizer is `FastWeights`, which swaps theta in around the real base step: weight decay
  and momentum act on the fast weights, as in the official code (which loads its cached parameters
  before `optimizer.step()`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from ..errors import check_number
from .forwarding import Forwarding
from .functional import copy_, local_shards, shard_group
from .perturbation import Phase
from .sharpness_aware import SharpnessAware

__all__ = ["LookbehindSAM", "FastWeights"]


class FastWeights(Forwarding):
    """The base optimizer as a Lookbehind inner step sees it: its `step` moves the fast weights
    theta (held apart) instead of the parameters, which keep the ascent point. Everything else
    (`param_groups`, `state`, `state_dict`) is the wrapped optimizer's, so an LR scheduler,
    a checkpoint or `opt.base.state` reads the base optimizer itself.
    """

    def __init__(self, optimizer: Optimizer):
        super().__init__(optimizer)
        #: theta and a scratch buffer, set by the Lookbehind step for its duration
        self.fast: list[Tensor] | None = None
        self.scratch: list[Tensor] | None = None
        #: whether the inner step took its base step (a skipped one, non-finite, does not)
        self.took_step = False

    @torch.no_grad()
    def step(self, closure=None):
        """The base step on the fast weights: theta swapped into the parameters around it."""
        if self.fast is None:
            raise RuntimeError("the fast weights step only inside a LookbehindSAM step")
        params = [p for group in self.param_groups for p in group["params"]]
        copy_(self.scratch, params)  # the ascent point
        copy_(params, self.fast)
        self.optimizer.step()
        copy_(self.fast, params)
        copy_(params, self.scratch)
        self.took_step = True


class LookbehindSAM(SharpnessAware):
    """Lookbehind-SAM (Mordido et al., ICML 2024): k SAM steps on a batch, then one of the slow weights.

    The ascent accumulates from the slow weights phi, the descents move fast weights theta, and
    phi then steps towards theta_k:

    ```text
    p_0 = theta_0 = phi
    p_j = p_{j-1} + rho g(p_{j-1}) / ||g(p_{j-1})||,  theta_j = base step(theta_{j-1}, g(p_j)),  j = 1..k
    phi <- phi + alpha (theta_k - phi)
    ```

    Defaults: rho = 0.05, k = 2, adaptive alpha, the official README's CIFAR command for
    LookbehindSAM (`--rho 0.05 --k 2 --alpha -1`); the paper also uses static alpha in {0.2, 0.5,
    0.8} and k in {2, 5, 10}. With `k=1` and `alpha=1` it is SAM.

    Every inner step runs on the same batch (as the official training loop does) and takes both
    SAM passes, so a step costs 2k forward/backward passes; the ascent pass of inner step j > 1
    recomputes the gradient the previous descent took at the same point (the official code does
    too). The parameters hold phi between steps: evaluation, `state_dict` and checkpoints read
    the slow weights, which the paper evaluates. A non-finite gradient in any inner step skips the
    whole step: phi and the base optimizer's state come back as they were (with
    `skip_nonfinite`, a copy of the base state is kept for that).

    Args:
        base: the optimizer of the fast weights (SGD, AdamW, ...), already built; its step, weight
            decay and momentum act on theta, k times per step. `opt.base` is it inside a
            [`FastWeights`][flatlab.optim.FastWeights], whose state and param groups are its own.
        rho: radius of each ascent step (the perturbation reaches up to k rho from phi).
        k: inner ascent/descent steps per batch.
        alpha: step of the slow weights towards the fast ones, in (0, 1]; None (the default): the
            official code's adaptive alpha, one per tensor, `(cos(theta_1 - phi, theta_k - phi) + 1)
            / 2` with theta_1 the fast weights after the first descent.
        **options: [`SharpnessAware`][flatlab.optim.SharpnessAware]'s (`model`, `max_grad_norm`,
            `skip_nonfinite`, `sync_first_pass`, ...); the ascent's policies are SAM's.

    Example:
        ```python
        opt = flatlab.LookbehindSAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                                    weight_decay=5e-4), rho=0.05, k=2, model=model)
        opt.step(closure)   # the closure runs 2k times on its batch
        ```
    """

    preset_options = frozenset({"source", "shape", "samples", "descent", "schedule", "every", "sam_probability",
                                "ascent_steps", "ascent_step_size"})

    def __init__(self, base: Optimizer, rho: float = 0.05, k: int = 2, alpha: float | None = None,
                 **options: Any):
        check_number("k", k, low=1, integer=True)
        check_number("alpha", alpha, low=0.0, low_open=True, high=1.0, optional=True)
        fixed = sorted(self.preset_options & options.keys())
        if fixed:
            raise TypeError(f"LookbehindSAM sets {', '.join(fixed)} itself (SAM's ascent, one step at a time)")
        if not isinstance(base, Optimizer):
            raise TypeError(f"base must be a torch.optim.Optimizer instance, got {type(base).__name__}")
        if isinstance(base, SharpnessAware):
            raise TypeError("base is already a sharpness-aware optimizer; wrap the plain base optimizer")
        self.k = int(k)
        self.alpha = None if alpha is None else float(alpha)
        self._inner: int | None = None  # the inner step under way (None between steps)
        # allocated once and kept, as the backups are (re-allocating costs page faults)
        self._buffers: dict[str, list[Tensor]] = {}
        self._saved_base_state: dict[Tensor, dict[str, Any]] = {}
        super().__init__(FastWeights(base), rho, **options)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, scaler: torch.amp.GradScaler | None = None) -> Any:
        """One Lookbehind step on the closure's batch (k inner SAM steps, then the slow weights'
        step); returns the loss at phi. `scaler`: as for `SharpnessAware.step`.
        """
        if closure is None:
            raise RuntimeError(
                "LookbehindSAM takes its k ascent/descent steps inside step(closure): pass a closure that "
                "re-evaluates the loss (it has no first_step/second_step)"
            )
        params = self._params()
        slow, fast = self._buffer("slow", params), self._buffer("fast", params)
        copy_(slow, params)
        copy_(fast, params)
        self.base.fast, self.base.scratch = fast, self.perturbation.backups(params)
        keep_base_state = self.skip_nonfinite or (scaler is not None and scaler.is_enabled())
        if keep_base_state:
            self._save_base_state()
        steps, sam_steps = self.steps, self.sam_steps
        try:
            loss, done = self._inner_steps(closure, scaler, params, fast)
            if done:
                self._interpolate(params, slow, fast)
        except BaseException:
            done = False
            raise
        finally:
            self._inner = None
            self.base.fast = self.base.scratch = None
            took_sam = self.sam_steps > sam_steps
            self.steps, self.sam_steps = steps, sam_steps  # the inner steps counted one each
            if not done:  # skipped, or the closure raised: phi and the base state as they were
                self.perturbation.restore()
                copy_(params, slow)
                if keep_base_state:
                    self._restore_base_state()
        self.steps += 1
        self.sam_steps += int(done and took_sam)
        return loss

    def _inner_steps(self, closure, scaler, params: list[Tensor], fast: list[Tensor]) -> tuple[Any, bool]:
        """The k inner SAM steps; returns the first one's loss (at phi) and whether all k took
        their base step (a non-finite gradient skips one, and with it the whole step).
        """
        inner_step = _unhooked(SharpnessAware.step)
        loss, outer = None, self.steps
        for j in range(self.k):
            self._inner = j
            self.steps = outer  # the policies see the step's index in each inner step
            self.base.took_step = False
            out = inner_step(self, closure, scaler=scaler)
            loss = out if j == 0 else loss
            if not self.base.took_step:
                return loss, False
            if j == 0 and self.alpha is None:
                copy_(self._buffer("first", params), fast)
        return loss, True

    def _interpolate(self, params: list[Tensor], slow: list[Tensor], fast: list[Tensor]) -> None:
        """Puts phi + alpha (theta_k - phi) into the parameters (a lerp: exactly theta_k at alpha = 1)."""
        copy_(params, slow)
        if self.alpha is not None:
            torch._foreach_lerp_(local_shards(params), local_shards(fast), self.alpha)
            return
        for p, f, a in zip(local_shards(params), local_shards(fast), self._adaptive_alphas(slow, fast)):
            p.lerp_(f, a.to(p.dtype))

    def _adaptive_alphas(self, slow: list[Tensor], fast: list[Tensor]) -> list[Tensor]:
        """Per tensor, (cos(theta_1 - phi, theta_k - phi) + 1) / 2, over all shards, on the device
        (no host sync); cos as torch's `cosine_similarity` with eps = 1e-8 (0 for a zero vector).
        """
        sums = []
        for s, f, d in zip(local_shards(slow), local_shards(fast), local_shards(self._buffers["first"])):
            a = d.sub_(s)  # the first descent's displacement, in its own buffer
            b = f - s
            if a.dtype in (torch.float16, torch.bfloat16):
                a, b = a.float(), b.float()
            sums.append(torch.stack([(a * b).sum(), (a * a).sum(), (b * b).sum()]))
        dtype = functools.reduce(torch.promote_types, (s.dtype for s in sums))
        table = torch.stack([s.to(dtype) for s in sums])
        group = shard_group(slow)
        if group is not None:
            dist.all_reduce(table, group=group)
        dot, aa, bb = table.unbind(1)
        cos = dot / (aa.sqrt().clamp_min(1e-8) * bb.sqrt().clamp_min(1e-8))
        return list(((cos + 1) / 2).unbind())

    def _buffer(self, name: str, params: list[Tensor]) -> list[Tensor]:
        if name not in self._buffers:
            self._buffers[name] = [torch.empty_like(p, memory_format=torch.preserve_format) for p in params]
        return self._buffers[name]

    def _save_base_state(self) -> None:
        """A copy of the base optimizer's state, taken into buffers kept from the last step."""
        saved = {}
        for p, entry in self.base.state.items():
            old = self._saved_base_state.get(p, {})
            saved[p] = {key: _copy_into(old.get(key), value) for key, value in entry.items()}
        self._saved_base_state = saved

    def _restore_base_state(self) -> None:
        state = self.base.state
        for p in [p for p in state if p not in self._saved_base_state]:
            del state[p]  # first created by an inner step of this one
        for p, entry in self._saved_base_state.items():
            state[p] = {key: _copy_into(state[p].get(key) if p in state else None, value)
                        for key, value in entry.items()}

    # ----------------------------------------------------------------------------------------
    # what the parameters hold

    @contextmanager
    def perturbed_pass(self) -> Iterator[None]:
        """The pass at w + eps; inside a Lookbehind step, w + eps then becomes the inner step's
        saved w, so that its restore leaves the parameters there: the next ascent starts from it.
        """
        with super().perturbed_pass():
            yield
        if self._inner is not None and self.phase is Phase.PERTURBED:
            held = self.perturbation.tensors
            copy_(self.perturbation.backups(held), held)

    @property
    def is_perturbed(self) -> bool:
        """Whether the parameters hold something other than phi: inside a step, every pass after the
        first (the points p_j of the ascent).
        """
        return self.phase is Phase.PERTURBED or bool(self._inner)

    @contextmanager
    def unperturbed(self) -> Iterator[None]:
        """Holds phi in the parameters inside the block (a no-op between steps, where they hold it)."""
        if not self.is_perturbed:
            yield
            return
        params = self._params()
        with torch.no_grad():
            held = [p.clone() for p in params]
            copy_(params, self._buffers["slow"])
        try:
            yield
        finally:
            with torch.no_grad():
                copy_(params, held)

    def first_step(self, zero_grad: bool = False) -> None:
        """Refused: Lookbehind's steps happen inside `step(closure)`."""
        raise RuntimeError("LookbehindSAM has no two-phase API: it takes k ascent/descent steps inside step(closure)")

    def second_step(self, zero_grad: bool = False) -> None:
        """Refused: Lookbehind's steps happen inside `step(closure)`."""
        raise RuntimeError("LookbehindSAM has no two-phase API: it takes k ascent/descent steps inside step(closure)")

    # ----------------------------------------------------------------------------------------
    # cost and description

    @property
    def held_between_steps(self) -> tuple[Tensor, ...]:
        """What it keeps allocated between steps besides its state (which holds SAM's backups): the
        buffers of phi, theta (and theta_1 for the adaptive alpha) and the copy of the base
        optimizer's state that a skipped step restores.
        """
        copies = (t for entry in self._saved_base_state.values() for t in entry.values() if isinstance(t, Tensor))
        return (*(t for buffers in self._buffers.values() for t in buffers), *copies)

    def passes(self):
        """The k inner SAM steps' passes (2k forward/backward passes on the batch)."""
        return super().passes() * self.k

    def __repr__(self) -> str:
        head, rest = super().__repr__().split("(", 1)
        alpha = "adaptive" if self.alpha is None else f"{self.alpha:g}"
        return f"{head}(k={self.k}, alpha={alpha}, {rest}"


def _unhooked(step: Callable) -> Callable:
    """`SharpnessAware.step` without the step hooks torch wraps around it once an instance of that
    class itself is built: a Lookbehind step's hooks fire once, around the whole step.
    """
    return step.__wrapped__ if getattr(step, "hooked", False) else step


def _copy_into(buffer, value):
    """`value` copied into `buffer` where shapes and dtypes allow, else a fresh copy."""
    if not isinstance(value, Tensor):
        return value
    if isinstance(buffer, Tensor) and buffer.shape == value.shape and buffer.dtype == value.dtype \
            and buffer.device == value.device and type(buffer) is type(value):
        return buffer.copy_(value)
    return value.clone()
