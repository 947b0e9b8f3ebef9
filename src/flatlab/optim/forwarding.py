"""An optimizer that is another one but for its `step`.

Two places hand a framework an object that must look like the real optimizer (its param groups
for an LR scheduler, its state for a checkpoint) while its `step` does something else: Lookbehind-SAM's
inner step on the fast weights, and the Hugging Face Trainer's optimizer, whose step was already taken
in `training_step`. Both forward everything to the optimizer they wrap; only `step` is theirs.
"""

from __future__ import annotations

from torch.optim import Optimizer

__all__ = ["Forwarding"]


class Forwarding(Optimizer):
    """`param_groups`, `state`, `defaults`, `state_dict`, `load_state_dict` and `zero_grad` are the
    wrapped optimizer's (setting `param_groups` sets its); subclasses define `step`.

    Example:
        >>> import torch
        >>> class Idle(Forwarding):
        ...     def step(self, closure=None):
        ...         return None
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> sgd = torch.optim.SGD([w], lr=0.1)
        >>> idle = Idle(sgd)
        >>> idle.param_groups is sgd.param_groups, idle.state_dict() == sgd.state_dict()
        (True, True)
    """

    def __init__(self, optimizer: Optimizer):  # no Optimizer.__init__: everything is forwarded
        self.optimizer = optimizer

    @property
    def param_groups(self):
        """The wrapped optimizer's param groups."""
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups):
        self.optimizer.param_groups = groups

    @property
    def state(self):
        """The wrapped optimizer's state."""
        return self.optimizer.state

    @property
    def defaults(self):
        """The wrapped optimizer's defaults."""
        return self.optimizer.defaults

    def add_param_group(self, group):
        """Refused: the wrapper was built for the parameters it has."""
        raise RuntimeError("add param groups to the base optimizer before wrapping it")

    def state_dict(self):
        """The wrapped optimizer's state_dict."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict):
        """Loads the wrapped optimizer's state_dict."""
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True):
        """The wrapped optimizer's zero_grad."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        """What the wrapper does instead of the wrapped optimizer's step: each subclass says."""
        raise NotImplementedError(f"{type(self).__name__} defines no step")

    def __repr__(self) -> str:
        return repr(self.optimizer)
