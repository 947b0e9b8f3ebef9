"""Optimizers as the tests build them and one training step as a user writes it for each."""

from __future__ import annotations

import torch.nn.functional as F

import flatlab

#: every SAM-family entry of the registry (the plain base optimizers are tested elsewhere)
FAMILY = [n for n in flatlab.list_optimizers() if n not in ("sgd", "adamw")]

#: options that make every step of a scheduled method a sharpness-aware one (two passes)
ALWAYS_SAM = {"looksam": {"k": 1}, "rst": {"sam_probability": 1.0}, "aesam": {"c_start": -1e9, "c_end": -1e9}}


def make(name, model, **kwargs):
    """A registry optimizer on SGD with momentum (AdamW at lr 0.01; bSAM on its own base), seeded,
    with small SSAM masks refreshed every 2 steps."""
    options = dict(lr=0.01) if name == "adamw" else dict(lr=0.1, momentum=0.9)
    if name not in ("sgd", "adamw"):
        options["seed"] = 0
    if name.startswith("ssam"):
        options.update(update_interval=2)
    if name == "bsam":  # its own base (no momentum) and the training set's size
        del options["momentum"]
        options.update(num_data=1000)
    if name == "ssam-f":
        options.update(num_samples=8)
    options.update(kwargs)
    return flatlab.create_optimizer(name, model, **options)


def rows_of(model, x, y, idx):
    """Per-sample losses of the rows ``idx`` of the batch (all of them where ``idx`` is None)."""
    xb, yb = (x, y) if idx is None else (x[idx], y[idx])
    return F.cross_entropy(model(xb), yb, reduction="none")


def step_closure(opt, model, x, y):
    """A torch-style closure: zero the gradients, forward, backward, return the loss."""
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def run_step(opt, model, x, y):
    """One training step as a user writes it for this optimizer: backward then step() where it
    takes no closure, else a per-sample closure, after refreshing a mask that is due."""
    if not isinstance(opt, flatlab.SharpnessAware) or not opt.needs_closure:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    if opt.mask_due:
        opt.update_mask(model, [(x, y)])
    return opt.step(flatlab.per_sample(lambda idx: rows_of(model, x, y, idx)))
