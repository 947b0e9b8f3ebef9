"""bSAM's own base optimizer: an Adam-like step whose denominator is a learned per-weight precision.

bSAM (Moellenhoff & Khan, "SAM as an optimal relaxation of Bayes", ICLR 2023) learns a diagonal
Gaussian posterior N(w, 1 / (num_data * s)); its mean w takes the step below, its precision s
sets both the noise of the ascent pass ([`NoisyGradient`][flatlab.optim.NoisyGradient]) and the
size of the perturbation ([`PrecisionScaled`][flatlab.optim.PrecisionScaled]).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..errors import check_number

__all__ = ["BSAMBase"]


class BSAMBase(torch.optim.Optimizer):
    """bSAM's descent and precision update.

    Step for step the authors' `build_bsam_optimizer` (team-approx-bayes/bayesian-sam,
    `optim.py`) with one sub-batch:

    ```text
    m <- beta1 m + (1 - beta1) (g_p + delta w)
    w <- w - lr m / s
    s <- beta2 s + (1 - beta2) (sqrt(s g^2) + damping + delta)
    ```

    g_p is the gradient in `.grad` (at w + eps, from [`BSAM`][flatlab.optim.BSAM]), g the one of
    the noisy ascent pass that the bSAM step hands over (`.grad` itself when none is: a plain
    step, or this optimizer alone), delta the weight decay (the prior's precision over the
    number of samples), m starts at 0 and s at 1 (the official `--custominit`).

    Defaults: lr = 0.5, betas = (0.9, 0.999), damping = 0.1, the official README's CIFAR settings
    (and pytorch_optimizer's); weight_decay = 5e-5, the official CIFAR-10 ResNet-18 setting's
    delta (prior precision 10 over 4 x 50,000 samples).

    Example:
        ```python
        base = flatlab.optim.BSAMBase(model.parameters(), lr=0.5)
        opt = flatlab.BSAM(base, rho=0.01, num_data=50_000, model=model)
        ```
    """

    #: what a state entry holds for a weight that starts afresh (sparse training resets a pruned
    #: weight's state with it; the others, the momentum, start at 0)
    pruned_state_fill = {"precision": 1.0}

    def __init__(self, params: Iterable, lr: float = 0.5, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 5e-5, damping: float = 0.1):
        check_number("lr", lr, low=0.0)
        check_number("weight_decay", weight_decay, low=0.0)
        check_number("damping", damping, low=0.0)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got betas={betas!r}")
        for name, beta in zip(("betas[0]", "betas[1]"), betas):
            check_number(name, beta, low=0.0, high=1.0, high_open=True)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, damping=damping))
        self._noisy: dict[Tensor, Tensor] = {}

    def precision(self, p: Tensor) -> Tensor:
        """The precision s of parameter `p` (1 until its first step)."""
        state = self.state[p]
        if "precision" not in state:
            state["precision"] = torch.ones_like(p, memory_format=torch.preserve_format)
        return state["precision"]

    def take_noisy_gradients(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """The gradients of the noisy pass, for the precision update of the coming step only."""
        self._noisy = dict(zip(params, grads))

    @torch.no_grad()
    def step(self, closure=None):
        """One step of the mean, the momentum and the precision (see the class)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        noisy, self._noisy = self._noisy, {}
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, decay, damping = group["lr"], group["weight_decay"], group["damping"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                w, g_p = _local(p), _local(p.grad)
                g = _local(noisy.get(p, p.grad))
                s = _local(self.precision(p))
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = _local(state["momentum"])
                # in the official code's order of operations (float64 runs agree to rounding)
                m.mul_(beta1).add_((g_p + decay * w) * (1.0 - beta1))
                w.sub_(lr * m / s)
                spread = (s * g.square()).sqrt_()
                s.mul_(beta2).add_((spread + damping + decay) * (1.0 - beta2))
        return loss


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t
