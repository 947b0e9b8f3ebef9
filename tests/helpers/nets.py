"""Small seeded models and the data they train on: two calls with the same arguments build the same
weights and the same batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyNet(nn.Module):
    """conv 1->4 with BatchNorm, then a linear 4->3 on the pooled features: 5x5 one-channel images."""

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


def batches(n=4, batch=8, seed=1, dtype=torch.float32):
    """``n`` batches of 5x5 one-channel images and labels in 0..2 (for TinyNet and SmallCNN)."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 1, 5, 5, generator=g, dtype=dtype), torch.randint(0, 3, (batch,), generator=g))
        for _ in range(n)
    ]


class SmallCNN(nn.Module):
    """conv 1->6 (54 weights), conv 6->8 (432), linear 8->3 (24); BatchNorm and biases stay dense."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.conv1(x)))
        h = F.relu(self.conv2(h))
        return self.fc(h.mean((2, 3)))


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return SmallCNN()


class CountingNet(nn.Module):
    """tiny_net, counting its forward passes, the samples they see and the backward passes through
    its output."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net()
        self.forwards = self.backwards = self.samples = 0

    def forward(self, x):
        self.forwards += 1
        self.samples += x.shape[0]
        out = self.net(x)
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out

    def _count_backward(self, grad):
        self.backwards += 1


def mlp(features=5, hidden=8, classes=3, dtype=torch.float32, seed=0):
    """Linear, tanh, linear: no layer couples the samples of a batch."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, classes)).to(dtype)


def tiny_mlp(seed=0):
    """The float64 MLP of the reference computations (4 features, 5 hidden units, 3 classes)."""
    return mlp(4, 5, dtype=torch.float64, seed=seed)


def vector_batches(n, size, features=5, seed=2, dtype=torch.float32):
    """``n`` batches of ``size`` feature vectors and labels in 0..2 (for mlp)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, features, generator=g, dtype=dtype), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def tiny_cnn(seed=0, dropout=0.0):
    """conv 1->4, BatchNorm, ReLU, linear to 3 classes: 6x6 one-channel images (see image_data)."""
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


def image_data(n=16, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def split(x, y, sizes):
    """(x, y) cut into consecutive batches of the given sizes."""
    out, start = [], 0
    for s in sizes:
        out.append((x[start : start + s], y[start : start + s]))
        start += s
    return out


def weights(model):
    """Copies of the model's parameters, detached."""
    return [p.detach().clone() for p in model.parameters()]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, [
        m.training for m in model.modules()
    ]


def assert_unchanged(model, snap) -> None:
    """The model's state, train/eval modes and (absent) gradients are those of ``snapshot``."""
    state, modes = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
