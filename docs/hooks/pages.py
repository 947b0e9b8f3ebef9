"""MkDocs hook: the pages generated from the code, and repository files the guides link to.

- `methods/<name>.md`: one page per registered method, from the registry (class, arguments and
  their defaults read off its signature, the passes per step its policies declare) and the text
  in `METHODS` below (update rule, where each default comes from, an example);
- `cli.md`: the `--help` of `flatlab` and every subcommand, from the parser itself;
- links from a guide to repository files outside `docs/` (figures under `benchmarks/results`
  and `examples/runs`) work both on GitHub and in the site: the file is copied into the site
  under `repo/` and the link rewritten; a link to a folder becomes its text; a link to nothing
  is left alone, so that `mkdocs build --strict` fails on it.

`tests/docs/test_site.py` checks that every registered method has its text here, that every
example runs and that the generated pages cover every method, command and flag.
"""

from __future__ import annotations

import inspect
import os
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the site documents this checkout's code, whatever flatlab the environment has installed
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import flatlab  # noqa: E402
from flatlab.optim import step_passes  # noqa: E402
from flatlab.train.config import OPTIMIZER_FIELDS  # noqa: E402

#: registry entries that are not a method of their own: the base optimizers, and SAM's sign variant
#: (shown on SAM's page)
NOT_A_METHOD = {"sgd", "adamw", "sam-sign"}


@dataclass(frozen=True)
class Method:
    """The hand-written part of a method's page."""

    title: str
    paper: str
    rule: str  # the update rule, Markdown
    defaults: dict[str, str]  # argument -> where its default comes from
    example: str  # a complete, runnable Python example
    fixed: tuple[tuple[str, object], ...] = ()  # keyword arguments the registry entry sets
    notes: str = ""


_SETUP = """\
import torch
import torch.nn.functional as F

import flatlab

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
"""

_CLOSURE = """
def closure():  # zero the gradients, forward, backward, return the loss
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss

first = opt.step(closure)  # the loss at w
for _ in range(20):
    last = opt.step(closure)
assert last < first
"""

_PER_SAMPLE = """
def losses(idx):  # per-sample losses of the rows idx (None: all of them), no backward
    xb, yb = (x, y) if idx is None else (x[idx], y[idx])
    return F.cross_entropy(model(xb), yb, reduction="none")

first = opt.step(flatlab.per_sample(losses))  # the loss at w
for _ in range(20):
    last = opt.step(flatlab.per_sample(losses))
assert last < first
"""

_SINGLE_PASS = """
for _ in range(20):  # the usual loop: one forward and backward per step, no closure
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)  # the forward runs at w + eps (model= applies it)
    loss.backward()
    opt.step()
"""


def _example(constructor: str, step: str, after: str = "") -> str:
    return _SETUP + constructor + "\n" + step + after


METHODS: dict[str, Method] = {
    "sam": Method(
        "SAM", "Foret et al., *Sharpness-Aware Minimization for Efficiently Improving Generalization*, ICLR 2021",
        "eps = rho g / ‖g‖ (L2 ball). For a general p: eps = rho sign(g) |g|^(q−1) / ‖g‖_q^(q−1), 1/p + 1/q = 1; "
        "p = inf gives the sign perturbation eps = rho sign(g). Then descend along g_p, the gradient at w + eps, "
        "from w. With `ascent_steps=k` the ascent is repeated from the perturbed point and projected back onto "
        "the rho-ball.",
        {"rho": "the paper's CIFAR-10 radius",
         "p": "the paper's L2 ball (its eq. 1 allows any p)",
         "ascent_steps": "one ascent step, as in the paper; k > 1 is the replication report's multi-step FGSM"},
        _example('opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05, p=2,\n'
                 '                  model=model)  # model=: BatchNorm statistics stay out of the perturbed pass',
                 _CLOSURE),
        notes="`sam-sign` is the same class with `p=inf` and `rho=5e-4`: every coordinate of a sign "
              "perturbation moves by rho, so its L2 size is rho·sqrt(#parameters), and its radius is far "
              "below the L2 methods' (`flatlab.create_optimizer(\"sam-sign\", model, lr=0.1)`).",
    ),
    "asam": Method(
        "ASAM", "Kwon et al., *ASAM: Adaptive Sharpness-Aware Minimization*, ICML 2021",
        "eps = rho T² g / ‖T g‖ with T = |w| + eta (element-wise), then descend along g_p from w. Biases get "
        "T = 1 when `model=` is given (parameters named `*bias`, as in the reference code); a param group's "
        "`\"adaptive\": False` entry decides for its parameters instead.",
        {"rho": "the paper's CIFAR-10 radius (ASAM's radius is relative to |w|, hence 10x SAM's)",
         "eta": "the paper's CIFAR-10 value"},
        _example("opt = flatlab.ASAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.5, eta=0.01,\n"
                 "                   model=model)", _CLOSURE),
    ),
    "esam": Method(
        "ESAM", "Du et al., *Efficient Sharpness-aware Minimization for Improved Training of Neural Networks*, "
        "ICLR 2022",
        "Stochastic weight perturbation: each tensor is perturbed with probability beta (at least one per step), "
        "eps normalised over the drawn tensors and scaled by 1/beta as in the official code; the others skip "
        "their ascent weight gradient. Sharpness-sensitive data selection: the descent pass runs on the "
        "ceil(gamma·B) samples whose loss rose most under eps. With gamma < 1 the step needs per-sample losses: "
        "`opt.step(flatlab.per_sample(fn))`; a plain closure is a `TypeError`.",
        {"rho": "the paper's CIFAR-10 value (`configs/esam-cifar10-resnet18.yaml`)",
         "beta": "the paper's CIFAR-10 value (Table 7)",
         "gamma": "the paper's CIFAR-10 value (Table 7)"},
        _example("opt = flatlab.ESAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05, beta=0.6,\n"
                 "                   gamma=0.5, model=model)", _PER_SAMPLE),
    ),
    "ssam-f": Method(
        "SSAM-F", "Mi et al., *Make Sharpness-Aware Minimization Stronger: A Sparsified Perturbation Approach*, "
        "NeurIPS 2022",
        "Only the coordinates of a binary mask are perturbed: the global top-(1 − sparsity) of the empirical "
        "Fisher (squared per-sample gradients over `num_samples` samples), refreshed every `update_interval` "
        "steps. `step` refreshes it itself from `mask_data` (batches `(inputs, targets)`, e.g. a DataLoader; "
        "needs `model=`), or call `opt.update_mask(model, batches)` whenever `opt.mask_due`: stepping with a "
        "refresh due and no data is an error. The descent is SAM's.",
        {"rho": "SAM's radius (the paper's configurations use 0.1 on CIFAR-10, 0.2 on CIFAR-100: `configs/ssam-*`)",
         "sparsity": "the paper's 50% column",
         "mask": "set by the registry entry: `ssam-f` is the Fisher mask",
         "num_samples": "the paper's Fisher sample count",
         "update_interval": "flatlab's (a refresh from 128 samples costs about 2.2 SGD steps); the paper's "
                            "configurations refresh every step (`mask_interval: 1` in `configs/ssam-*`)",
         "drop_rate": "read by SSAM-D only",
         "total_steps": "read by SSAM-D only",
         "mask_data": "none: the mask is refreshed by `update_mask` unless data is given",
         "mask_loss_fn": "cross-entropy of the model's outputs"},
        _example("loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]  # any iterable of batches\n"
                 "opt = flatlab.SSAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05,\n"
                 "                   sparsity=0.5, mask=\"fisher\", num_samples=32, update_interval=10,\n"
                 "                   mask_data=loader, model=model)", _CLOSURE),
        fixed=(("mask", "fisher"),),
    ),
    "ssam-d": Method(
        "SSAM-D", "Mi et al., *Make Sharpness-Aware Minimization Stronger: A Sparsified Perturbation Approach*, "
        "NeurIPS 2022",
        "Only the coordinates of a binary mask are perturbed. Every `update_interval` steps, inside `step`, the "
        "flattest perturbed coordinates (smallest |g|) are dropped and as many are grown at random, at a rate "
        "that starts at `drop_rate` and decays by a cosine over `total_steps`. The descent is SAM's.",
        {"rho": "SAM's radius (the paper's configurations use 0.1 on CIFAR-10, 0.2 on CIFAR-100: `configs/ssam-*`)",
         "sparsity": "the paper's 50% column",
         "mask": "set by the registry entry: `ssam-d` is the dynamic mask",
         "num_samples": "read by SSAM-F only",
         "update_interval": "flatlab's; the paper's configurations update every step (`mask_interval: 1`)",
         "drop_rate": "the paper's value (`configs/ssam-*`)",
         "total_steps": "none: no decay (pass the run's steps for the cosine)",
         "mask_data": "read by SSAM-F only",
         "mask_loss_fn": "read by SSAM-F only"},
        _example("opt = flatlab.SSAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05,\n"
                 "                   sparsity=0.5, mask=\"dynamic\", update_interval=5, drop_rate=0.5,\n"
                 "                   total_steps=20, model=model)", _CLOSURE),
        fixed=(("mask", "dynamic"),),
    ),
    "s2sam": Method(
        "S2-SAM", "Ji et al., *Single-Step Sharpness-Aware Minimization is All You Need to Achieve Efficient "
        "and Accurate Sparse Training*, NeurIPS 2024",
        "eps = rho g_prev / ‖g_prev‖, g_prev the gradient of the previous step: one forward and backward per "
        "step, no closure. With `model=` the perturbation waits for the model's next training forward (a "
        "forward pre-hook), so evaluation and checkpoints between steps read w. The first step is a base step.",
        {"rho": "SAM's radius, the paper's"},
        _example("opt = flatlab.S2SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05,\n"
                 "                    model=model)  # model=: the perturbation is applied by its forward",
                 _SINGLE_PASS),
    ),
    "looksam": Method(
        "LookSAM", "Liu et al., *Towards Efficient and Scalable Sharpness-Aware Minimization*, CVPR 2022",
        "Every k-th step is a SAM step that also stores g_v = g_p − (⟨g_p, g⟩ / ‖g‖²) g, the part of the SAM "
        "gradient orthogonal to the plain one (global over all parameters, as in the paper's Algorithm 1). The "
        "k − 1 steps between take one pass and descend along g + alpha (‖g‖ / ‖g_v‖) g_v.",
        {"rho": "the paper's", "k": "LookSAM-5, the paper's main setting", "alpha": "its best in Table 6"},
        _example("opt = flatlab.LookSAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.1, k=5,\n"
                 "                      alpha=0.7, model=model)", _CLOSURE),
    ),
    "aesam": Method(
        "AE-SAM", "Jiang et al., *An Adaptive Policy to Employ Sharpness-Aware Minimization*, ICLR 2023",
        "A SAM step when ‖g‖² ≥ mu_t + c_t sigma_t (the moving mean and deviation of ‖g‖², rate delta; c_t "
        "linear from `c_start` to `c_end` over `total_steps`), else a base step with one pass. "
        "`opt.sam_fraction` reports the share of SAM steps taken.",
        {"rho": "SAM's CIFAR-10 value",
         "delta": "the paper's",
         "c_start": "the paper's lambda_2 (the start of the schedule)",
         "c_end": "the paper's lambda_1 (the end); symmetric around 0, about half of the steps are SAM steps",
         "total_steps": "none: c_t stays at `c_start` (pass the run's steps for the schedule)"},
        _example("opt = flatlab.AESAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05,\n"
                 "                    delta=0.9, c_start=1.0, c_end=-1.0, total_steps=21, model=model)",
                 _CLOSURE, "assert 0 < opt.sam_fraction <= 1\n"),
        notes="No official code was found; the update was read from two independent re-implementations that "
              "agree, and the defaults come from the paper.",
    ),
    "rst": Method(
        "RST", "Zhao et al., *Randomized Sharpness-Aware Training for Boosting Computational Efficiency in Deep "
        "Learning*, 2022",
        "Each step is a SAM step with probability `sam_probability` (a draw from the optimizer's generator), "
        "else a base step with one pass. `every=k` takes a SAM step every k-th step instead.",
        {"rho": "SAM's CIFAR-10 value",
         "sam_probability": "the paper's constant reference schedule (its piecewise, linear and trigonometric "
                            "schedules are not provided)"},
        _example("opt = flatlab.RST(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05,\n"
                 "                  sam_probability=0.5, seed=0, model=model)", _CLOSURE),
    ),
    "msam": Method(
        "Momentum-SAM", "Becker et al., *Momentum-SAM: Sharpness Aware Minimization without Computational "
        "Overhead*, 2024",
        "eps = −rho v / ‖v‖, v the base optimizer's momentum buffer, applied after each step so that the next "
        "(single) forward and backward runs at w + eps: one pass per step, no closure. The base optimizer needs "
        "momentum.",
        {"rho": "every official configuration's value (CIFAR-100 WRN-16-4 and ResNet-50, ImageNet)"},
        _example("opt = flatlab.MSAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=3.0,\n"
                 "                   model=model)  # the base optimizer needs momentum", _SINGLE_PASS),
        notes="rho = 3 is measured relative to networks of 2.7M-23M parameters; in the CPU study "
              "([results](../results.md)) it did not fit a 0.70M-parameter one.",
    ),
    "gsam": Method(
        "GSAM", "Zhuang et al., *Surrogate Gap Guided Sharpness-Aware Minimization*, ICLR 2022",
        "Descend along g_p − alpha g_perp, with g_perp = g − (⟨g, g_p⟩ / ‖g_p‖²) g_p the part of the gradient at "
        "w orthogonal to the one at w + eps; the radius follows the learning rate: "
        "rho_t = rho_min + (rho − rho_min) lr_t / lr_0.",
        {"rho": "SAM's radius, at the initial learning rate",
         "rho_min": "rho / 2, the ratio of the paper's ResNet settings (0.04 and 0.02 on ImageNet)",
         "alpha": "pytorch_optimizer's default and the paper's ViT-S/32 value"},
        _example("opt = flatlab.GSAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05,\n"
                 "                   rho_min=0.025, alpha=0.4, model=model)", _CLOSURE),
    ),
    "wsam": Method(
        "WSAM", "Yue et al., *Sharpness-Aware Minimization Revisited: Weighted Sharpness as a Regularization "
        "Term*, KDD 2023",
        "Sharpness as a regulariser weighted gamma / (1 − gamma). Decoupled (the default): a base step with g, "
        "then w −= lr · gamma / (1 − gamma) · (g_p − g). Coupled: descend along g + gamma / (1 − gamma) (g_p − g).",
        {"rho": "SAM's radius", "gamma": "the paper's", "decoupled": "the paper's recommendation"},
        _example("opt = flatlab.WSAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05,\n"
                 "                   gamma=0.9, decoupled=True, model=model)", _CLOSURE),
    ),
    "fsam": Method(
        "FriendlySAM", "Li et al., *Friendly Sharpness-Aware Minimization*, CVPR 2024",
        "The ascent follows d = g − sigma m_{t−1}, the batch-specific part of the gradient, then "
        "m_t = lmbda m_{t−1} + (1 − lmbda) g (the first step ascends along g); descend along g_p.",
        {"rho": "the official `train.py` default (its CIFAR-100 ResNet-18 script uses 0.2)",
         "sigma": "the official code's", "lmbda": "the official code's"},
        _example("opt = flatlab.FriendlySAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.1,\n"
                 "                          sigma=1.0, lmbda=0.9, model=model)", _CLOSURE),
    ),
    "gcsam": Method(
        "GC-SAM", "SAM with gradient centralisation (Yong et al., *Gradient Centralization*, ECCV 2020) before "
        "the perturbation, as pytorch_optimizer's `SAM(use_gc=True)`",
        "eps = rho GC(g) / ‖g‖, with GC(g) the gradient minus its mean over all dimensions but the first, for "
        "tensors of two or more dimensions (vectors as they are); the norm is g's before centring, so ‖eps‖ ≤ rho. "
        "The descent gradient g_p is not centralised.",
        {"rho": "pytorch_optimizer's default and SAM's"},
        _example("opt = flatlab.GCSAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05,\n"
                 "                    model=model)", _CLOSURE),
    ),
    "vasso": Method(
        "VaSSO", "Li & Giannakis, *Enhancing Sharpness-Aware Optimization Through Variance Suppression*, "
        "NeurIPS 2023",
        "The ascent follows d_t = (1 − theta) d_{t−1} + theta g_t, a moving average of the batch gradients "
        "(d_1 = g_1): eps = rho d_t / ‖d_t‖; descend along g_p. theta = 1 is SAM.",
        {"rho": "the official code's default (its CIFAR-100 WRN-28-10 script uses 0.2)",
         "theta": "the official code's default"},
        _example("opt = flatlab.VaSSO(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05,\n"
                 "                    theta=0.9, model=model)", _CLOSURE),
    ),
    "sam-on": Method(
        "SAM-ON", "Müller et al., *Normalization Layers Are All That Sharpness-Aware Minimization Needs*, "
        "NeurIPS 2023",
        "SAM restricted to the affine parameters N of the normalisation layers (BatchNorm, LayerNorm, "
        "GroupNorm): eps = rho g_N / ‖g_N‖ on N, 0 elsewhere; the other tensors skip their weight gradient in "
        "the ascent pass. The same restriction by hand: a param group with `rho=0` for the other tensors.",
        {"rho": "the official code's default: larger than SAM's, since N holds ~0.1% of a ResNet's weights"},
        _example("model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.LayerNorm(32), torch.nn.ReLU(),\n"
                 "                            torch.nn.Linear(32, 3))\n"
                 "opt = flatlab.SAMON(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.5,\n"
                 "                    model=model)  # model=: the normalisation layers are found in it", _CLOSURE),
    ),    "rwp": Method(
        "RWP", "Li et al., *Revisiting Random Weight Perturbation for Efficiently Improving Generalization*, "
        "TMLR 2024 (official code: nblt/RWP)",
        "eps is Gaussian noise, drawn anew each step and independent of g: for a tensor of two or more "
        "dimensions each filter (row of the tensor viewed as [shape[0], −1]) gets standard deviation "
        "rho ‖w_filter‖; a vector (bias, normalisation weight) rho (‖w‖ + 1e−16). Descend along "
        "(1 − alpha) g + alpha g_p, the gradient of the mixed loss (1 − alpha) L(w) + alpha L(w + eps). "
        "eps does not read g, so the two passes do not depend on each other: on two devices they run at "
        "once (the official code takes them on two GPUs, each on its own batch), a step then costing one "
        "pass of wall time; flatlab runs them one after the other, on the same batch.",
        {"rho": "the paper's gamma: the official CIFAR recipe's (0.005 on ImageNet)",
         "alpha": "the official code's default and recipes"},
        _example("opt = flatlab.RWP(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.01,\n"
                 "                  alpha=0.5, model=model)", _CLOSURE),
        notes="Under DDP the pass at w is all-reduced (its gradient enters the descent), whatever "
              "`sync_first_pass` says. The noise comes from per-device generators seeded by the optimizer's and "
              "saved with it: a resumed run draws what an uninterrupted one would.",
    ),
    "bsam": Method(
        "bSAM", "Möllenhoff & Khan, *SAM as an Optimal Relaxation of Bayes*, ICLR 2023 (official code: "
        "team-approx-bayes/bayesian-sam)",
        "bSAM learns a diagonal Gaussian N(w, 1 / (N s)) with its own base optimizer "
        "[`BSAMBase`][flatlab.optim.BSAMBase]. The first pass runs at a random point: g = ∇L(w + z), "
        "z ~ N(0, 1 / (N s)) (N = `num_data`); eps = rho g / s; g_p = ∇L(w + eps); then the base's step: "
        "m ← beta1 m + (1 − beta1)(g_p + delta w), w ← w − lr m / s, "
        "s ← beta2 s + (1 − beta2)(√(s g²) + damping + delta), delta the weight decay; m starts at 0, s at 1. "
        "The authors' `optim.py` step for step, with one sub-batch (their runs split the batch in 8, "
        "m-sharpness).",
        {"rho": "the official README's CIFAR setting",
         "num_data": "none: the training set's size (`flatlab train` sets it; the official CIFAR runs count "
                     "each image 4 times for augmentation)"},
        _example("base = flatlab.optim.BSAMBase(model.parameters(), lr=0.1)  # its own base optimizer\n"
                 "opt = flatlab.BSAM(base, rho=0.01, num_data=len(x), model=model)", _CLOSURE),
        notes="The base's defaults: lr = 0.5, betas = (0.9, 0.999), damping = 0.1 (the official README's and "
              "pytorch_optimizer's), weight_decay = 5e-5 (the official CIFAR-10 setting: prior precision 10 over "
              "4 × 50,000 samples); `flatlab train --optimizer bsam` builds it (`--damping`, `--lr`, "
              "`--weight-decay`). pytorch_optimizer 4.1.0's `BSAM` is a different algorithm, not matched: it "
              "never takes the noise and eps back off the weights, its noise has standard deviation 1 / (N s) "
              "(not √(1 / (N s))), its momentum averages delta g_p (not g_p + delta w) and its precision is "
              "updated from g_p, squared, before the step. On a small least-squares problem at its defaults its "
              "loss goes from 5.3 to 353 in 200 steps where this one goes from 3.7 to 0.025 "
              "(`benchmarks/bsam_vs_pytorch_optimizer.py`).",
    ),
    "lookbehind-sam": Method(
        "Lookbehind-SAM", "Mordido et al., *Lookbehind-SAM: k steps back, 1 step forward*, ICML 2024",
        "k SAM steps on the same batch from the slow weights phi: the ascent goes on from the last perturbed "
        "point, p_j = p_{j−1} + rho g(p_{j−1}) / ‖g(p_{j−1})‖ (p_0 = phi), and each descent moves fast weights, "
        "theta_j = base step of theta_{j−1} with g(p_j) (theta_0 = phi); then phi ← phi + alpha (theta_k − phi). "
        "Adaptive alpha (the default), per tensor: alpha = (cos(theta_1 − phi, theta_k − phi) + 1) / 2. The "
        "parameters hold phi between steps; k = 1 with alpha = 1 is SAM.",
        {"rho": "the official README's CIFAR command for LookbehindSAM",
         "k": "the official README's CIFAR command (the paper also uses 5 and 10)",
         "alpha": "adaptive, the official README's CIFAR command (`--alpha -1`); the paper's static values are "
                  "0.2, 0.5 and 0.8"},
        _example("opt = flatlab.LookbehindSAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05,\n"
                 "                            k=2, model=model)  # the closure runs 2k times per step", _CLOSURE),
    ),
}


def _stand_in():
    """A model every method builds on (SAM-ON needs a normalisation layer)."""
    import torch

    return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))


def registry_options(name: str) -> dict[str, object]:
    """What an example passes `create_optimizer` for `name`: SGD's momentum, or bSAM's own base
    and its training set's size.
    """
    return dict(lr=0.1, num_data=64) if name == "bsam" else dict(lr=0.1, momentum=0.9)


def method_class(name: str) -> type:
    """The class the registry builds for `name`."""
    return type(flatlab.create_optimizer(name, _stand_in(), **registry_options(name)))


def method_arguments(name: str) -> list[tuple[str, object]]:
    """The arguments of the method `name` (its preset's, not the base optimizer's) and their defaults
    as the registry builds it.
    """
    fixed = dict(METHODS[name].fixed)
    params = inspect.signature(method_class(name).__init__).parameters
    return [(n, fixed.get(n, p.default)) for n, p in params.items()
            if n not in ("self", "base") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def _passes(name: str) -> str:

    passes = step_passes(flatlab.create_optimizer(name, _stand_in(), **registry_options(name)))
    rates: dict[str, float] = {}  # identical passes (SAM's ascent and descent) on one row
    for p in passes:
        what = ["forward and backward" if p.backward else "forward, no gradient"]
        if p.batch != 1:
            what.append(f"on {p.batch:g} of the batch")
        if p.backward and p.weight_grads != 1:
            what.append(f"{p.weight_grads:g} of the weight gradients")
        rates[", ".join(what)] = rates.get(", ".join(what), 0.0) + p.rate
    rows = [f"| {what} | {rate:g} |" for what, rate in rates.items()]
    total = sum(p.rate * p.batch for p in passes if p.backward)
    head = ("Passes per step as the optimizer declares them (`flatlab.optim.step_passes(opt)`, read by the "
            "FLOPs count; `tests/optim/test_efficient.py` counts them on a model), for the defaults:\n\n"
            "| pass | per step |\n|---|---:|\n")
    return head + "\n".join(rows) + f"\n\nForward-and-backward passes per step: **{total:g}** (SGD: 1).\n"


def _flag(arg: str) -> str:
    keys = [key for key, value in OPTIMIZER_FIELDS.items() if value == arg]
    return f"`--{keys[0].replace('_', '-')}`" if keys else ""


def method_page(name: str) -> str:
    """The Markdown page of the registered method `name`."""
    m = METHODS[name]
    cls = method_class(name)
    qualified = f"flatlab.optim.{cls.__name__}"
    args = method_arguments(name)
    rows = [f"| `{arg}` | `{default!r}` | {_flag(arg)} | {m.defaults.get(arg, '')} |" for arg, default in args]
    cli = " ".join(["flatlab train --optimizer", name] + [
        _cli_option(arg, default) for arg, default in args
        if default is not None and _flag(arg) and arg in m.defaults and arg not in dict(m.fixed)
        and not m.defaults[arg].startswith("read by")])
    by_name = ", ".join(f"{k}={v}" for k, v in registry_options(name).items())
    return f"""# {m.title}

`{name}`: {flatlab.optim.describe_optimizer(name)}.

Class: [`{cls.__name__}`][{qualified}] (`flatlab.{cls.__name__}`), a preset of
[`SharpnessAware`][flatlab.optim.SharpnessAware]. Paper: {m.paper}.

## Update rule

Notation: g is the gradient of the batch loss at w, eps the perturbation, g_p the gradient at w + eps,
rho the radius ([all methods](../methods.md)).

{m.rule}

{m.notes}

## Arguments

Besides the base optimizer (`base`, already built), with the defaults the registry name `{name}` uses;
every other keyword argument is [`SharpnessAware`'s][flatlab.optim.SharpnessAware] (`model`, `seed`,
`max_grad_norm`, `sync_first_pass`, ...). The flag is the `flatlab train` option that sets it.

| argument | default | flag | where the default comes from |
|---|---|---|---|
{chr(10).join(rows)}

## Cost

{_passes(name)}
Measured step times: [cost](../cost.md) and [results](../results.md).

## Example

```python
{m.example.rstrip()}
```

The same optimizer by name: `flatlab.create_optimizer("{name}", model, {by_name})`.
From the command line:

```bash
{cli.strip()}
```
"""


def _cli_option(arg: str, value: object) -> str:
    flag = _flag(arg).strip("`")
    if isinstance(value, bool):
        return flag if value else flag.replace("--", "--no-", 1)
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


# ---- the CLI reference --------------------------------------------------------------------------


def _subcommands(parser) -> dict:
    import argparse

    for action in parser._actions:  # argparse keeps its sub-parsers only there
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_page() -> str:
    """The Markdown page of `flatlab --help` and every subcommand's `--help`."""
    from flatlab.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the page must not depend on it
    try:
        parser = build_parser()
        sections = [f"## `flatlab`\n\n```text\n{parser.format_help().rstrip()}\n```\n"]
        for name, sub in _subcommands(parser).items():
            sections.append(f"## `flatlab {name}`\n\n```text\n{sub.format_help().rstrip()}\n```\n")
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return ("# CLI reference\n\nGenerated from the parser when the site is built, so it is the `--help` of "
            "this version. Usage errors print one `error:` line and exit with status 2. Guides: "
            "[training from the command line](training.md), [studies](studies.md), [analysis](analysis.md).\n\n"
            + "\n".join(sections))


# ---- repository files the guides link to ------------------------------------------------------------

_REPO_LINK = re.compile(r"(!?)\[([^\]]*)\]\((\.\./[^)\s]+)\)")
REPO_PREFIX = "repo"


def _repo_target(page_src: Path, link: str) -> Path | None:
    target = (page_src.parent / link.split("#", 1)[0]).resolve()
    try:
        target.relative_to(ROOT)
    except ValueError:
        return None
    return target


def _rewrite(markdown: str, page_src: Path, page_uri: str, docs_dir: Path) -> str:
    def replace(m: re.Match) -> str:
        target = _repo_target(page_src, m.group(3))
        if target is None or target.is_relative_to(docs_dir) or not target.exists():
            return m.group(0)  # not ours, or broken: mkdocs reports it
        if target.is_dir():
            return m.group(2)
        uri = f"{REPO_PREFIX}/{target.relative_to(ROOT).as_posix()}"
        return f"{m.group(1)}[{m.group(2)}]({posixpath.relpath(uri, posixpath.dirname(page_uri) or '.')})"

    return _REPO_LINK.sub(replace, markdown)


def generated_pages() -> dict[str, str]:
    """Every generated page: its path in the site's sources and its Markdown."""
    pages = {f"methods/{name}.md": method_page(name) for name in METHODS}
    pages["cli.md"] = cli_page()
    return pages


# ---- the hooks ------------------------------------------------------------------------------------------


def on_files(files, config):
    """Adds the generated pages and the repository files the guides link to."""
    from mkdocs.structure.files import File

    for uri, text in generated_pages().items():
        files.append(File.generated(config, uri, content=text))
    docs_dir = Path(config["docs_dir"]).resolve()
    copied: set[str] = set()
    for page in [f for f in files if f.src_uri.endswith(".md") and f.abs_src_path]:
        text = Path(page.abs_src_path).read_text(encoding="utf-8")
        for m in _REPO_LINK.finditer(text):
            target = _repo_target(Path(page.abs_src_path), m.group(3))
            if target and target.is_file() and not target.is_relative_to(docs_dir):
                uri = f"{REPO_PREFIX}/{target.relative_to(ROOT).as_posix()}"
                if uri not in copied:
                    copied.add(uri)
                    files.append(File.generated(config, uri, abs_src_path=str(target)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Points a page's links to repository files at their copies in the site."""
    if not page.file.abs_src_path:
        return markdown
    return _rewrite(markdown, Path(page.file.abs_src_path), page.file.src_uri, Path(config["docs_dir"]).resolve())
