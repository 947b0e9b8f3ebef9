"""Tiny models, data and independent reference computations shared by the analysis tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def tiny_data(n: int = 24, seed: int = 1, features: int = 4, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def split(x, y, sizes):
    out, start = [], 0
    for s in sizes:
        out.append((x[start : start + s], y[start : start + s]))
        start += s
    return out


def tiny_cnn(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
    ]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(4 * 6 * 6, 3))
    return nn.Sequential(*layers)


def image_data(n: int = 16, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def full_hessian(model: nn.Module, x, y) -> torch.Tensor:
    """Explicit Hessian of the mean cross-entropy over all samples, by torch.autograd.functional."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    numels = [p.numel() for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss(w):
        parts = torch.split(w, numels)
        state = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        return F.cross_entropy(functional_call(model, state, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


class Quadratic(nn.Module):
    """L(w) = 0.5 w^T A w + b^T w, whatever the input: the Hessian is A."""

    def __init__(self, eigenvalues, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = len(eigenvalues)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
        self.register_buffer("A", q @ torch.diag(lam) @ q.T)
        self.w = nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))
        self.b = torch.randn(n, generator=g, dtype=torch.float64)

    def forward(self, x):
        return 0.5 * self.w @ self.A @ self.w + self.b @ self.w


def quadratic_loss(out, _y):
    return out


def quadratic_batches():
    return [(torch.zeros(2, 1), torch.zeros(2)), (torch.zeros(3, 1), torch.zeros(3))]


def snapshot(model: nn.Module):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, [
        m.training for m in model.modules()
    ]


def assert_unchanged(model: nn.Module, snap) -> None:
    state, modes = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def softmax_regression_grad(W, b, x, y):
    """Hand-written gradient of the mean cross-entropy of logits x W^T + b (no autograd)."""
    z = x @ W.T + b
    p = torch.exp(z - z.max(dim=1, keepdim=True).values)
    p = p / p.sum(dim=1, keepdim=True)
    r = p.clone()
    r[torch.arange(len(y)), y] -= 1.0
    return r.T @ x / len(y), r.mean(0)


def softmax_regression_losses(W, b, x, y):
    z = x @ W.T + b
    lse = z.max(dim=1).values + torch.log(torch.exp(z - z.max(dim=1, keepdim=True).values).sum(1))
    return lse - z[torch.arange(len(y)), y]
