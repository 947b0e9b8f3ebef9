import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flatlab


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


def batches(n=4, batch=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 1, 5, 5, generator=g), torch.randint(0, 3, (batch,), generator=g)) for _ in range(n)]


def make_optimizer(name, model, **kwargs):
    """A registry optimizer on SGD with momentum; SSAM with masks refreshed every 2 steps."""
    options = dict(lr=0.01) if name == "adamw" else dict(lr=0.1, momentum=0.9)
    if name not in ("sgd", "adamw"):
        options["seed"] = 0
    if name.startswith("ssam"):
        options.update(update_interval=2)
    if name == "ssam-f":
        options.update(num_samples=8)
    options.update(kwargs)
    return flatlab.create_optimizer(name, model, **options)


def train_step(opt, model, x, y):
    """One step as a user writes it for this optimizer (see tests/optim/conftest.py)."""
    if not isinstance(opt, flatlab.SharpnessAware) or not opt.needs_closure:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return
    if opt.mask_due:
        opt.update_mask(model, [(x, y)])

    def losses(idx):
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        return F.cross_entropy(model(xb), yb, reduction="none")

    opt.step(flatlab.per_sample(losses))


@pytest.fixture(autouse=True)
def one_thread():
    # These tensors are tiny: with intra-op threads on a busy 2-core machine a step takes 30x
    # longer than on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data():
    return batches()
