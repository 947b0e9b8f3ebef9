import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flatlab

# Every SAM-family entry of the registry (the plain base optimizers are tested elsewhere).
FAMILY = [n for n in flatlab.list_optimizers() if n not in ("sgd", "adamw")]


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(h.mean((2, 3)))


def tiny_net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return TinyNet().to(dtype)


def batches(n_batches=4, batch=8, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 1, 5, 5, generator=g, dtype=dtype), torch.randint(0, 3, (batch,), generator=g))
        for _ in range(n_batches)
    ]


#: options that make every step of a scheduled method a sharpness-aware one (two passes)
ALWAYS_SAM = {"looksam": {"k": 1}, "rst": {"sam_probability": 1.0}, "aesam": {"c_start": -1e9, "c_end": -1e9}}


def make(name, model, **kwargs):
    """A family optimizer on SGD with momentum and small, quick-to-refresh masks."""
    options = dict(lr=0.1, momentum=0.9, seed=0)
    if name.startswith("ssam"):
        options.update(update_interval=2)
    if name == "ssam-f":
        options.update(num_samples=8)
    options.update(kwargs)
    return flatlab.create_optimizer(name, model, **options)


def step_closure(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def run_step(opt, model, x, y):
    """One training step as a user writes it for this optimizer."""
    if not getattr(opt, "needs_closure", True):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    if getattr(opt, "mask_due", False):
        opt.update_mask(model, [(x, y)])

    def losses(idx):
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        return F.cross_entropy(model(xb), yb, reduction="none")

    return opt.step(flatlab.per_sample(losses))


@pytest.fixture
def data():
    return batches()
