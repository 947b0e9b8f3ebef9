"""What every policy of `SharpnessAware` shares: a name for `repr` and a small, explicit state
saved with the optimizer's `state_dict` (per-parameter tensors live in the optimizer's `state[p]`
instead).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Policy"]


class Policy:
    """Base of the policy interfaces (sources, shapes, coordinates, samples, schedules, descents, radius)."""

    name = "policy"

    def check(self, optimizer) -> None:
        """Refuses, in one line (a ValueError), a combination with the optimizer's other choices
        that this policy cannot serve; called once the optimizer is built.
        """

    def state_dict(self) -> dict[str, Any]:
        """The policy's own state, saved with the optimizer's (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        pass

    def extra_repr(self) -> str:
        """The policy's settings, as `repr` shows them inside the parentheses."""
        return ""

    def describe(self) -> str:
        """The policy as the optimizer's `repr` shows it: `name(settings)`."""
        return f"{self.name}({self.extra_repr()})"
