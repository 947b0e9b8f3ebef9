"""Which gradient drives the perturbation: the current batch's (SAM: an extra forward/backward at w)
or one the step already has (S2-SAM: the previous step's, so each step takes one pass).

A *lagged* source builds the next step's perturbation at the end of this step, after the base
step, so the next forward/backward runs at w + eps directly. New sources (a momentum buffer, a
gradient minus its moving average) are subclasses that say whether they are lagged and how they
turn the gradients they see into a direction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["GradientSource", "BatchGradient", "PreviousGradient"]


class GradientSource:
    """Interface of a gradient source.

    Attributes:
        name: short name for ``repr``.
        lagged: False: the perturbation comes from an ascent pass at w on the current batch
            (a closure is needed, two passes per step). True: it is built after the base step from
            what this step computed and applied before the next step's single pass.
    """

    name = "source"
    lagged = False

    def direction(self, params: list[Tensor], grads: list[Tensor], base: torch.optim.Optimizer) -> list[Tensor]:
        """The vector the shape turns into eps, one tensor per entry of ``params`` (aligned with
        ``grads``, the gradients the step just used). Must not modify ``grads``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def extra_repr(self) -> str:
        return ""


class BatchGradient(GradientSource):
    """SAM's source: the gradient of the current batch at w, from an extra forward/backward."""

    name = "batch"
    lagged = False

    def direction(self, params, grads, base):
        return grads


class PreviousGradient(GradientSource):
    """S2-SAM's source: the gradient the previous step descended with (taken at its perturbed
    point), so the perturbation costs no extra pass; the first step of a run is a base step."""

    name = "previous"
    lagged = True

    def direction(self, params, grads, base):
        return grads
