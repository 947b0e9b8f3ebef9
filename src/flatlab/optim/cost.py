"""What a step costs in forward/backward passes, declared by the optimizer's policies.

A training-FLOPs estimate (`flatlab.sparse.step_flops`) or a benchmark reads the passes from the
optimizer (`flatlab.optim.step_passes`) instead of a table of method names, so a newly
registered method is counted correctly.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Pass"]


@dataclass(frozen=True)
class Pass:
    """One pass over (part of) the batch.

    Attributes:
        rate: expected number of times per step (1.0: every step).
        batch: fraction of the batch it runs on.
        backward: whether a backward follows the forward (input gradients at least).
        weight_grads: fraction of the weight gradients the backward computes (ESAM's ascent
            computes those of the tensors it perturbs only).
    """

    rate: float = 1.0
    batch: float = 1.0
    backward: bool = True
    weight_grads: float = 1.0
