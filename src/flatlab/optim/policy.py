"""What every policy of :class:`~flatlab.optim.SharpnessAware` shares: a name for ``repr`` and a
small, explicit state saved with the optimizer's ``state_dict`` (per-parameter tensors live in the
optimizer's ``state[p]`` instead)."""

from __future__ import annotations

from typing import Any

__all__ = ["Policy"]


class Policy:
    """Base of the policy interfaces (sources, shapes, coordinates, samples, schedules, descents, radius)."""

    name = "policy"

    def check(self, optimizer) -> None:
        """Refuses, in one line (a ValueError), a combination with the optimizer's other choices
        that this policy cannot serve; called once the optimizer is built."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def extra_repr(self) -> str:
        return ""

    def describe(self) -> str:
        return f"{self.name}({self.extra_repr()})"
