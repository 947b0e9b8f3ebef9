"""The published methods as presets of :class:`SharpnessAware`: each only chooses its policies."""

from __future__ import annotations

from torch.optim import Optimizer

from .coordinates import DynamicMask, FisherMask, RandomTensors
from .samples import SharpnessSensitive
from .shapes import Adaptive, LpBall
from .sharpness_aware import SharpnessAware
from .sources import PreviousGradient

__all__ = ["SAM", "ASAM", "ESAM", "SSAM", "S2SAM"]


class SAM(SharpnessAware):
    """SAM (Foret et al. 2021) with the general p-norm ball of its eq. (1).

    ``p=2`` is the usual L2 SAM, ``p=float("inf")`` the sign (FGSM-style) perturbation; with
    ``ascent_steps=k`` the ascent is repeated k times from the perturbed point and projected back
    onto the rho-ball (the replication report's multi-step FGSM).

    Example::

        opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05)
    """

    def __init__(self, base: Optimizer, rho: float = 0.05, p: float = 2, ascent_steps: int = 1, **options):
        super().__init__(base, rho, shape=LpBall(p), ascent_steps=ascent_steps, **options)


class ASAM(SharpnessAware):
    """Adaptive SAM (Kwon et al. 2021): eps = rho T^2 g / ||T g||, T = |w| + eta.

    Biases get T = 1, as in the ASAM reference code, when ``model`` is given (parameters named
    ``*bias``). Without ``model`` every parameter is adaptive unless its param group says
    ``"adaptive": False``; a group's ``"adaptive"`` entry overrides the name rule either way.

    Example::

        decay, no_decay = ..., ...   # e.g. weights and biases
        opt = flatlab.ASAM(torch.optim.SGD([{"params": decay}, {"params": no_decay, "adaptive": False}],
                                           lr=0.1), rho=0.5)
    """

    def __init__(self, base: Optimizer, rho: float = 0.5, eta: float = 0.01, **options):
        super().__init__(base, rho, shape=Adaptive(eta), **options)


class ESAM(SharpnessAware):
    """Efficient SAM (Du et al. 2022): Stochastic Weight Perturbation (each tensor perturbed with
    probability ``beta``, scaled by 1/beta, unpicked tensors skip their ascent weight gradient) and
    Sharpness-sensitive Data Selection (the descent pass on the ``ceil(gamma * batch)`` samples whose
    loss rose most; needs a :func:`flatlab.per_sample` closure when gamma < 1).

    Example::

        opt = flatlab.ESAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05, beta=0.6, gamma=0.5,
                           model=model)
        opt.step(flatlab.per_sample(lambda idx: F.cross_entropy(
            model(x if idx is None else x[idx]), y if idx is None else y[idx], reduction="none")))
    """

    def __init__(self, base: Optimizer, rho: float = 0.05, beta: float = 0.6, gamma: float = 0.5, **options):
        super().__init__(
            base, rho, coordinates=RandomTensors(beta), samples=SharpnessSensitive(gamma), **options
        )


class SSAM(SharpnessAware):
    """Sparse SAM (Mi et al. 2022): only the coordinates of a binary mask are perturbed;
    ``sparsity`` is the fraction NOT perturbed.

    ``mask="fisher"`` (SSAM-F): the mask is the global top-(1 - sparsity) of the empirical Fisher
    over ``num_samples`` samples, refreshed every ``update_interval`` steps: by ``step`` itself
    from ``mask_data`` (batches ``(inputs, targets)``, e.g. a DataLoader, or a function returning
    them; needs ``model=``), or by ``opt.update_mask(model, batches)`` whenever ``opt.mask_due``.
    ``mask="dynamic"`` (SSAM-D): the mask is refreshed inside ``step`` every ``update_interval``
    steps by dropping the flattest perturbed coordinates (smallest |g|) and growing as many at
    random, at a ``drop_rate`` decayed by a cosine over ``total_steps``.
    """

    def __init__(
        self,
        base: Optimizer,
        rho: float = 0.05,
        sparsity: float = 0.5,
        mask: str = "fisher",
        num_samples: int = 128,
        update_interval: int = 100,
        drop_rate: float = 0.5,
        total_steps: int | None = None,
        mask_data=None,
        **options,
    ):
        if mask == "fisher":
            coordinates = FisherMask(sparsity, num_samples, update_interval, data=mask_data)
        elif mask == "dynamic":
            if mask_data is not None:
                raise ValueError("mask_data feeds the Fisher mask; the dynamic mask needs none")
            coordinates = DynamicMask(sparsity, update_interval, drop_rate, total_steps)
        else:
            raise ValueError(f"mask must be 'fisher' or 'dynamic', got mask={mask!r}")
        super().__init__(base, rho, coordinates=coordinates, **options)


class S2SAM(SharpnessAware):
    """Single-step SAM (Ji et al. 2024): the perturbation is rho g_prev / ||g_prev||, g_prev being
    the gradient of the previous step, applied at the end of ``step()`` so that the next forward
    runs at w + eps: one forward/backward per step, no closure needed. The first step is a base step.

    Between steps the weights hold w + eps: evaluate inside ``with opt.unperturbed():``. The
    source policy is :class:`~flatlab.optim.PreviousGradient`; any other preset becomes
    single-pass with ``source=PreviousGradient()``.

    Example::

        opt = flatlab.S2SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05)
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    """

    def __init__(self, base: Optimizer, rho: float = 0.05, **options):
        super().__init__(base, rho, source=PreviousGradient(), **options)
