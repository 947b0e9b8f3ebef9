"""The published methods as presets of `SharpnessAware`: each only chooses its policies
(`docs/methods.md` lists them with their formulas, costs and defaults).
"""

from __future__ import annotations

from torch.optim import Optimizer

from ..errors import UsageError, check_number
from .bayes import BSAMBase
from .coordinates import ChosenTensors, DynamicMask, FisherMask, RandomTensors, norm_parameters
from .descents import MixedGradient, OrthogonalReuse, PrecisionGradient, SurrogateGap, WeightedSharpness
from .radius import LRProportional
from .samples import SharpnessSensitive
from .schedules import AdaptiveSwitch, EveryK
from .shapes import AdaptiveBall, AsDrawn, CentralisedBall, LpBall, PrecisionScaled
from .sharpness_aware import SharpnessAware
from .sources import (
    AveragedGradient,
    FilterNoise,
    FriendlyGradient,
    MomentumDirection,
    NoisyGradient,
    PreviousGradient,
)

#: a single-pass preset sets its source, and takes no schedule, extra ascent steps, sample selection
#: or descent combination (they all need the gradient at w of the current batch)
SINGLE_PASS_OPTIONS = frozenset(
    {"source", "schedule", "every", "sam_probability", "ascent_steps", "ascent_step_size", "samples", "descent"}
)

__all__ = [
    "SAM", "ASAM", "ESAM", "SSAM", "S2SAM", "LookSAM", "AESAM", "RST", "MSAM", "GSAM", "WSAM", "FriendlySAM",
    "GCSAM", "VaSSO", "SAMON", "RWP", "BSAM",
]  # fmt: skip

#: a method whose first pass feeds its descent (RWP's mix, bSAM's precision) all-reduces it under DDP,
#: or the replicas would descend differently; its perturbation is its own, with one ascent step
_OWN_PERTURBATION = frozenset({"source", "shape", "descent", "sync_first_pass", "ascent_steps", "ascent_step_size"})


class SAM(SharpnessAware):
    """SAM (Foret et al. 2021) with the general p-norm ball of its eq. (1).

    `p=2` is the usual L2 SAM, `p=float("inf")` the sign (FGSM-style) perturbation; with
    `ascent_steps=k` the ascent is repeated k times from the perturbed point and projected back
    onto the rho-ball (the replication report's multi-step FGSM).

    Example:
        ```python
        opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05)
        ```
    """

    preset_options = frozenset({"shape"})

    def __init__(self, base: Optimizer, rho: float = 0.05, p: float = 2, ascent_steps: int = 1, **options):
        super().__init__(base, rho, shape=LpBall(p), ascent_steps=ascent_steps, **options)


class ASAM(SharpnessAware):
    """Adaptive SAM (Kwon et al. 2021): eps = rho T^2 g / ||T g||, T = |w| + eta.

    Biases get T = 1, as in the ASAM reference code, when `model` is given (parameters named
    `*bias`). Without `model` every parameter is adaptive unless its param group says
    `"adaptive": False`; a group's `"adaptive"` entry overrides the name rule either way.

    Example:
        ```python
        decay, no_decay = ..., ...   # e.g. weights and biases
        opt = flatlab.ASAM(torch.optim.SGD([{"params": decay}, {"params": no_decay, "adaptive": False}],
                                           lr=0.1), rho=0.5)
        ```
    """

    preset_options = frozenset({"shape"})

    def __init__(self, base: Optimizer, rho: float = 0.5, eta: float = 0.01, **options):
        super().__init__(base, rho, shape=AdaptiveBall(eta), **options)


class ESAM(SharpnessAware):
    """Efficient SAM (Du et al. 2022): Stochastic Weight Perturbation (each tensor perturbed with
    probability `beta`, scaled by 1/beta, unpicked tensors skip their ascent weight gradient) and
    Sharpness-sensitive Data Selection (the descent pass on the `ceil(gamma * batch)` samples whose
    loss rose most; needs a `flatlab.per_sample` closure when gamma < 1).

    Example:
        ```python
        opt = flatlab.ESAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05, beta=0.6, gamma=0.5,
                           model=model)
        opt.step(flatlab.per_sample(lambda idx: F.cross_entropy(
            model(x if idx is None else x[idx]), y if idx is None else y[idx], reduction="none")))
        ```
    """

    preset_options = frozenset({"coordinates", "samples"})

    def __init__(self, base: Optimizer, rho: float = 0.05, beta: float = 0.6, gamma: float = 0.5, **options):
        super().__init__(
            base, rho, coordinates=RandomTensors(beta), samples=SharpnessSensitive(gamma), **options
        )


class SSAM(SharpnessAware):
    """Sparse SAM (Mi et al. 2022): only the coordinates of a binary mask are perturbed;
    `sparsity` is the fraction NOT perturbed.

    `mask="fisher"` (SSAM-F): the mask is the global top-(1 - sparsity) of the empirical Fisher
    over `num_samples` samples, refreshed every `update_interval` steps: by `step` itself
    from `mask_data` (batches `(inputs, targets)`, e.g. a DataLoader, or a function returning
    them; needs `model=`; `mask_loss_fn(outputs, targets)` scores it when the model's outputs are
    not plain logits), or by `opt.update_mask(model, batches)` whenever `opt.mask_due`.
    `mask="dynamic"` (SSAM-D): the mask is refreshed inside `step` every `update_interval`
    steps by dropping the flattest perturbed coordinates (smallest |g|) and growing as many at
    random, at a `drop_rate` decayed by a cosine over `total_steps`.
    """

    preset_options = frozenset({"coordinates"})

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
        mask_loss_fn=None,
        **options,
    ):
        if mask == "fisher":
            coordinates = FisherMask(sparsity, num_samples, update_interval, data=mask_data, loss_fn=mask_loss_fn)
        elif mask == "dynamic":
            if mask_data is not None or mask_loss_fn is not None:
                raise ValueError("mask_data and mask_loss_fn feed the Fisher mask; the dynamic mask needs neither")
            coordinates = DynamicMask(sparsity, update_interval, drop_rate, total_steps)
        else:
            raise ValueError(f"mask must be 'fisher' or 'dynamic', got mask={mask!r}")
        super().__init__(base, rho, coordinates=coordinates, **options)


class S2SAM(SharpnessAware):
    """Single-step SAM (Ji et al. 2024): the perturbation is rho g_prev / ||g_prev||, g_prev being
    the gradient of the previous step, applied at the end of `step()` so that the next forward
    runs at w + eps: one forward/backward per step, no closure needed. The first step is a base step.

    Outside the step the weights hold w: with `model=` the perturbation is applied when the
    model's next training forward starts, with a closure inside `step`; built without either,
    the weights hold w + eps between steps (evaluate inside `with opt.unperturbed():`). The
    source policy is `PreviousGradient`; any other preset becomes single-pass with
    `source=PreviousGradient()`.

    Example:
        ```python
        opt = flatlab.S2SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05, model=model)
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        ```
    """

    preset_options = SINGLE_PASS_OPTIONS

    def __init__(self, base: Optimizer, rho: float = 0.05, **options):
        super().__init__(base, rho, source=PreviousGradient(), **options)


class LookSAM(SharpnessAware):
    """LookSAM (Liu et al. 2022): a SAM step every `k` steps, which also stores g_v, the part of
    the SAM gradient orthogonal to the plain one; the steps between take one forward/backward and
    descend along `g + alpha * (||g|| / ||g_v||) * g_v`. 1 + 1/k passes per step.

    The paper's defaults (k = 5, alpha = 0.7, rho = 0.1) did not fit the training set of a
    0.70M-parameter ResNet-18 x0.25 on 2,000 CIFAR-10 images (`benchmarks/studies/cpu-frontier.yaml`:
    -11.9 points of test accuracy against SGD, training loss 1.73). `alpha=0.1` trained there: picked
    on held-out training images (`benchmarks/studies/frontier-tuning.yaml`: +1.2 points over SGD on
    the holdout, 2 seeds; alpha 0.3 fit only in part). On the test set, 8 seeds
    (`benchmarks/studies/cpu-frontier-8.yaml`, docs/results.md), it fit and gained nothing over SGD
    (+0.04 ± 1.24 points) at 1.25x SGD's step time. On a small network, start there, and check.

    Example:
        ```python
        opt = flatlab.LookSAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=5)
        opt.step(closure)   # the closure runs once on the steps between SAM steps
        ```
    """

    preset_options = frozenset({"schedule", "every", "sam_probability", "descent"})

    def __init__(self, base: Optimizer, rho: float = 0.1, k: int = 5, alpha: float = 0.7, **options):
        check_number("k", k, low=1, integer=True)
        super().__init__(base, rho, schedule=EveryK(k), descent=OrthogonalReuse(alpha), **options)


class AESAM(SharpnessAware):
    """AE-SAM (Jiang et al. 2023): SAM only on steps whose squared gradient norm exceeds its moving
    mean plus `c_t` moving standard deviations (`AdaptiveSwitch`); the others are base steps with
    one pass. `opt.sam_fraction` reports the share of SAM steps: it follows the mean of `c_t` over
    training (46% at c 1 -> -1, 29% at c 1 -> -0.5 on the CPU evidence setting, docs/results.md).
    """

    preset_options = frozenset({"schedule", "every", "sam_probability"})

    def __init__(self, base: Optimizer, rho: float = 0.05, delta: float = 0.9, c_start: float = 1.0,
                 c_end: float = -1.0, total_steps: int | None = None, **options):
        schedule = AdaptiveSwitch(delta, c_start, c_end, total_steps)
        super().__init__(base, rho, schedule=schedule, **options)


class RST(SharpnessAware):
    """Randomized switching (Zhao et al. 2022): each step is a SAM step with probability
    `sam_probability`, drawn from the optimizer's generator, else a base step with one pass;
    `every=k` instead takes a SAM step every k-th step (MosaicML composer's interval).
    """

    preset_options = frozenset({"schedule"})

    def __init__(self, base: Optimizer, rho: float = 0.05, sam_probability: float | None = 0.5, **options):
        if options.get("every") is not None:
            sam_probability = None  # the deterministic interval replaces the draw
        super().__init__(base, rho, sam_probability=sam_probability, **options)


class MSAM(SharpnessAware):
    """Momentum-SAM (Becker et al. 2024): eps = -rho * v / ||v||, v the base optimizer's momentum
    buffer, applied after each step so that the next (single) forward/backward runs there; no
    closure needed. rho = 3, the official configs' value (SAM's is 0.05 - 0.2), set for networks of
    2.7M-23M parameters: on a 0.70M-parameter ResNet-18 x0.25 it did not fit the training set
    (`benchmarks/studies/cpu-frontier.yaml`: -22.5 points against SGD, training loss 2.00). `rho=0.3`
    trained there: picked on held-out training images (`benchmarks/studies/frontier-tuning.yaml`:
    +1.5 points over SGD on the holdout, 2 seeds; rho 1 fit only in part). On the test set, 8 seeds
    (`benchmarks/studies/cpu-frontier-8.yaml`, docs/results.md), it fit and ended within noise of SGD
    (-0.47 ± 0.86 points) and below SAM (-1.27 ± 1.05). On a small network, start there, and check.
    """

    preset_options = SINGLE_PASS_OPTIONS

    def __init__(self, base: Optimizer, rho: float = 3.0, **options):
        super().__init__(base, rho, source=MomentumDirection(), **options)


class GSAM(SharpnessAware):
    """GSAM (Zhuang et al. 2022): descend along `g_p - alpha * g_perp`, g_perp the part of the
    gradient at w orthogonal to the one at w + eps, with rho following the learning rate from
    `rho` (at the initial learning rate) down to `rho_min` (at learning rate 0; default
    `rho / 2`, the ratio of the paper's ResNet settings, 0.04 and 0.02).
    """

    preset_options = frozenset({"descent", "rho_schedule"})

    def __init__(self, base: Optimizer, rho: float = 0.05, rho_min: float | None = None, alpha: float = 0.4,
                 **options):
        check_number("rho", rho, low=0.0)
        rho_min = rho / 2 if rho_min is None else rho_min
        super().__init__(base, rho, descent=SurrogateGap(alpha), rho_schedule=LRProportional(rho_min), **options)


class WSAM(SharpnessAware):
    """WSAM (Yue et al. 2023): sharpness as a regulariser weighted by gamma / (1 - gamma); by
    default decoupled (the base step uses the gradient at w, the sharpness term is applied after
    it, scaled by the learning rate), as in the paper.
    """

    preset_options = frozenset({"descent"})

    def __init__(self, base: Optimizer, rho: float = 0.05, gamma: float = 0.9, decoupled: bool = True, **options):
        super().__init__(base, rho, descent=WeightedSharpness(gamma, decoupled), **options)


class FriendlySAM(SharpnessAware):
    """FriendlySAM (Li et al. 2024): the ascent follows the batch gradient minus `sigma` times
    its exponential moving average (factor `lmbda`), i.e. the batch-specific part of it.
    """

    preset_options = frozenset({"source"})

    def __init__(self, base: Optimizer, rho: float = 0.1, sigma: float = 1.0, lmbda: float = 0.9, **options):
        super().__init__(base, rho, source=FriendlyGradient(sigma, lmbda), **options)


class GCSAM(SharpnessAware):
    """SAM with gradient centralisation before the perturbation: eps = rho * GC(g) / ||g||, GC
    removing from every weight matrix and kernel its mean over all dimensions but the first
    (`CentralisedBall`); the descent gradient is not centralised. Step for step
    pytorch_optimizer's `SAM(use_gc=True)` (its norm, too, is taken before centring); rho = 0.05,
    its default and SAM's.
    """

    preset_options = frozenset({"shape"})

    def __init__(self, base: Optimizer, rho: float = 0.05, **options):
        super().__init__(base, rho, shape=CentralisedBall(), **options)


class VaSSO(SharpnessAware):
    """VaSSO (Li & Giannakis, NeurIPS 2023): the ascent follows d_t = (1 - theta) d_{t-1} + theta g_t,
    an exponential moving average of the batch gradients (d_1 = g_1), eps = rho d_t / ||d_t||
    (`AveragedGradient`). theta = 0.9 and rho = 0.05: the official code's defaults, which its
    README's CIFAR-10 ResNet-18 command keeps (its WRN-28-10 CIFAR-100 script sets rho = 0.2).
    """

    preset_options = frozenset({"source"})

    def __init__(self, base: Optimizer, rho: float = 0.05, theta: float = 0.9, **options):
        super().__init__(base, rho, source=AveragedGradient(theta), **options)


class SAMON(SharpnessAware):
    """SAM-ON (Mueller et al., NeurIPS 2023): SAM perturbing only the affine parameters (weight and
    bias) of the normalisation layers of `model` (BatchNorm, LayerNorm, GroupNorm), normalised over
    them: eps_i = rho g_i / ||g_norm|| on those tensors, 0 elsewhere (`ChosenTensors`). The other
    tensors skip their weight gradient in the ascent pass. rho = 0.5, the official code's default
    (SAM-ON wants a larger radius than SAM: the perturbed tensors hold ~0.1% of the weights).

    Example:
        ```python
        opt = flatlab.SAMON(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model=model)
        ```
    """

    preset_options = frozenset({"coordinates"})

    def __init__(self, base: Optimizer, rho: float = 0.5, **options):
        model = options.get("model")
        if model is None:
            raise UsageError("SAM-ON perturbs the normalisation layers of a model: pass model=")
        chosen = norm_parameters(model)
        if not chosen:
            raise UsageError(
                f"SAM-ON perturbs the normalisation layers' affine parameters, and {type(model).__name__} has no "
                "BatchNorm, LayerNorm or GroupNorm with affine parameters; use sam, or a model with such layers"
            )
        coordinates = ChosenTensors(chosen, "the normalisation layers' parameters")
        super().__init__(base, rho, coordinates=coordinates, **options)


class RWP(SharpnessAware):
    """Random weight perturbation (Li et al., "Revisiting random weight perturbation for efficiently
    improving generalization", TMLR 2024): descend along `(1 - alpha) g + alpha g_p`, g the
    gradient at w, g_p the one at w + eps, eps Gaussian with each filter's standard deviation rho
    times that filter's L2 norm (each vector's: its whole norm + 1e-16), drawn from the
    optimizer's generators (`FilterNoise`, `AsDrawn`,
    `MixedGradient`). eps does not depend on g: the two passes are
    independent, and could run at once on two devices. rho = 0.01 (the paper's gamma) and
    alpha = 0.5: the official code's defaults and CIFAR recipe (nblt/RWP; 0.005 on ImageNet).

    Example:
        ```python
        opt = flatlab.RWP(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.01, model=model)
        ```
    """

    preset_options = _OWN_PERTURBATION

    def __init__(self, base: Optimizer, rho: float = 0.01, alpha: float = 0.5, **options):
        super().__init__(base, rho, source=FilterNoise(), shape=AsDrawn(), descent=MixedGradient(alpha),
                         sync_first_pass=True, **options)


class BSAM(SharpnessAware):
    """bSAM (Moellenhoff & Khan, "SAM as an optimal relaxation of Bayes", ICLR 2023).

    The authors' algorithm (team-approx-bayes/bayesian-sam, `optim.py`) with one sub-batch: with s
    the precision its base `BSAMBase` learns,

    ```text
    g   = grad L(w + z),   z ~ N(0, 1 / (num_data * s))      (the first pass, at a random point)
    eps = rho * g / s,     g_p = grad L(w + eps)              (the second pass)
    ```

    then the base's step from g_p and g (momentum, w -= lr m / s, the precision update).
    `num_data`: the number of training samples (the official CIFAR runs count each image 4 times
    for augmentation, `--dafactor 4`). rho = 0.01: the official README's CIFAR setting.
    rho = 0 is the base optimizer alone (no noise, one pass), as for every method here. `step`
    returns the loss at w + z; BatchNorm statistics come from that pass (frozen in the second).

    pytorch_optimizer 4.1.0's `BSAM` is not this algorithm: it never takes the noise and eps back
    off the weights, draws the noise with standard deviation 1 / (num_data * s) (not its square
    root), keeps a momentum of `weight_decay * g_p` (not `g_p + weight_decay * w`) and updates
    the precision from g_p, squared, before the step (the authors' from g, unsquared, after it).

    Example:
        ```python
        base = flatlab.optim.BSAMBase(model.parameters(), lr=0.5)
        opt = flatlab.BSAM(base, rho=0.01, num_data=len(train_set), model=model)
        ```
    """

    preset_options = _OWN_PERTURBATION

    def __init__(self, base: Optimizer, rho: float = 0.01, num_data: int | None = None, **options):
        if not isinstance(base, BSAMBase):
            raise UsageError(f"bSAM learns a precision with its own update: build it on flatlab.optim.BSAMBase("
                             f"params, lr=...), not on {type(base).__name__}")
        if num_data is None:
            raise UsageError("bSAM draws its noise from the number of training samples: pass num_data=")
        super().__init__(base, rho, source=NoisyGradient(base, num_data), shape=PrecisionScaled(base),
                         descent=PrecisionGradient(base), sync_first_pass=True, **options)
