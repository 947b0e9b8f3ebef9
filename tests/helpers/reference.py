"""Reference computations written out with plain torch (no flatlab), for the tests to compare the
library against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tests.helpers.nets import vector_batches
from tests.helpers.steps import step_closure


def reference_batches(steps=12, seed=1):
    """The float64 batches the reference loops run on (with tiny_mlp): 6 samples of 4 features."""
    return vector_batches(steps, 6, features=4, seed=seed, dtype=torch.float64)


def grad_at(model, w, x, y):
    """The gradient of the loss at weights ``w`` (a list), leaving the model's weights as they were."""
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, w):
            p.copy_(v)
    loss = F.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, v in zip(params, saved):
            p.copy_(v)
    return [t.detach() for t in g]


def norm(v):
    return torch.sqrt(sum((t * t).sum() for t in v))


def dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def axpy(a, x, y):
    """a * x + y over lists."""
    return [a * xi + yi for xi, yi in zip(x, y)]


def run_flatlab(opt, model, batches_):
    """The optimizer over the batches with closures (plain steps where it takes none); returns w."""
    for x, y in batches_:
        if opt.needs_closure:
            opt.step(step_closure(opt, model, x, y))
        else:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    with opt.unperturbed():
        return [p.detach().clone() for p in model.parameters()]


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

    return torch.autograd.functional.hessian(loss, flat, vectorize=True)


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


_TORCH_MODE = {"reflect": "reflect", "zeros": "constant", "replicate": "replicate"}


def ref_crop(images, offsets, padding, mode):
    """The straightforward per-sample version: pad one image, slice it."""
    out = torch.empty_like(images)
    h, w = images.shape[2:]
    for i in range(images.shape[0]):
        padded = F.pad(images[i : i + 1].double(), (padding,) * 4, mode=_TORCH_MODE[mode])
        oy, ox = offsets[i].tolist()
        out[i] = padded[0, :, oy : oy + h, ox : ox + w].to(images.dtype)
    return out


def ref_cutout(images, corners, size, value=0.0):
    out = images.clone()
    h, w = images.shape[2:]
    for i in range(images.shape[0]):
        y, x = corners[i].tolist()
        out[i, :, max(0, y) : min(h, y + size), max(0, x) : min(w, x + size)] = value
    return out
