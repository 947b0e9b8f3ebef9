"""What the parameters hold, w or w + eps, and the moves between the two.

The optimizer decides when to move; this module only moves, with no parameter-sized temporary:
w is saved in the optimizer's `state[p]["backup"]` (allocated once and kept: re-allocating it
every step costs page faults) and eps is added in one scaled add; w is put back by copy, since
subtracting eps would not give w back in low precision. A single-pass method's eps can wait,
*pending*, for the next training forward, so that whatever reads the weights in between
(evaluation, `state_dict`, a checkpoint) reads w.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

import torch
from torch import Tensor

from .coordinates import Coordinates
from .functional import add_scaled_, copy_

__all__ = ["Phase", "Perturbation"]


class Phase(enum.Enum):
    """Where a step stands; the one value that says what the parameters hold."""

    #: the parameters hold w
    AT_W = "at_w"
    #: the parameters hold w + eps; w of each perturbed tensor is in `state[p]["backup"]`
    PERTURBED = "perturbed"
    #: the ascent gradient was not finite: w is in place and the coming descent is skipped
    SKIPPED = "skipped"
    #: the schedule skipped the perturbation: `.grad` holds the gradient at w to descend with
    PLAIN = "plain"
    #: a single-pass method between steps: the parameters hold w and the next training forward of
    #: `model` (or the next `step(closure)`) moves them to w + eps, built from
    #: the held directions times a factor
    PENDING = "pending"


class Perturbation:
    """The perturbed tensors, their saved w, and a pending eps (`factor * directions`)."""

    def __init__(self, state: MutableMapping[Tensor, dict], coordinates: Coordinates, foreach: bool = True):
        self.state = state
        self.coordinates = coordinates
        self.foreach = foreach
        self.phase = Phase.AT_W
        #: the tensors that hold (or, PENDING, will hold) w + eps
        self.tensors: list[Tensor] = []
        #: PENDING: the directions, aligned with `tensors`: the spent gradients' memory (which
        #: `.grad` would otherwise hold), released once applied
        self.pending: list[Tensor] | None = None
        self.factor: float | Tensor = 1.0
        #: eps itself while a step takes several ascent steps (None otherwise)
        self.eps: list[Tensor] | None = None

    def backups(self, tensors: list[Tensor]) -> list[Tensor]:
        """The buffers that hold w of `tensors` while perturbed (allocated on first use)."""
        out = []
        for p in tensors:
            state = self.state[p]
            if "backup" not in state:
                state["backup"] = torch.empty_like(p, memory_format=torch.preserve_format)
            out.append(state["backup"])
        return out

    def move(self, tensors: list[Tensor], directions: list[Tensor], factor: float | Tensor) -> None:
        """W -> w + factor * directions, w saved."""
        copy_(self.backups(tensors), tensors)
        add_scaled_(tensors, directions, factor, foreach=self.foreach)
        self.phase, self.tensors = Phase.PERTURBED, tensors

    def hold(self, tensors: list[Tensor], directions: list[Tensor], factor: float | Tensor) -> None:
        """Keeps w and the move for `apply_pending`."""
        self.pending, self.factor = list(directions), factor
        self.phase, self.tensors = Phase.PENDING, tensors

    @torch.no_grad()
    def apply_pending(self) -> None:
        """PENDING -> PERTURBED, as `move` would have done when the eps was built."""
        if self.phase is not Phase.PENDING:
            return
        directions, factor = self.pending, self.factor
        self.pending, self.factor = None, 1.0
        self.move(self.tensors, directions, factor)
        # a sparse schedule may have pruned weights since eps was built: they stay zero
        self.coordinates.keep_pruned(self.tensors)

    def restore(self) -> None:
        """Puts w back (or drops a pending move): the parameters hold w."""
        if self.phase is Phase.PERTURBED and self.tensors:
            copy_(self.tensors, self.backups(self.tensors))
            # a sparse schedule may have pruned weights since w was saved: keep them pruned
            self.coordinates.keep_pruned(self.tensors)
        self.phase = Phase.AT_W
        self.tensors, self.pending, self.factor, self.eps = [], None, 1.0, None

    @contextmanager
    def unperturbed(self) -> Iterator[None]:
        """W in the parameters inside the block, w + eps again after it."""
        if self.phase is not Phase.PERTURBED or not self.tensors:
            yield
            return
        weights = self.tensors
        with torch.no_grad():
            held = [w.clone() for w in weights]
            copy_(weights, self.backups(weights))
        try:
            yield
        finally:
            with torch.no_grad():
                copy_(weights, held)
