"""Mixed precision in the training step: one bf16 step against the same step computed by hand in float32."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatlab.optim import create_optimizer
from flatlab.train.loop import StepRunner


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_one_bf16_step_is_the_float32_step_up_to_bf16_rounding(optimizer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    lr, rho = 0.5, 0.05
    w0 = [p.detach().clone() for p in model.parameters()]

    def loss_and_grad(weights):  # float32, no autocast
        ref = copy.deepcopy(model)
        with torch.no_grad():
            for p, w in zip(ref.parameters(), weights):
                p.copy_(w)
        loss = F.cross_entropy(ref(x), y)
        return float(loss.detach()), torch.autograd.grad(loss, list(ref.parameters()))

    loss0, g = loss_and_grad(w0)
    if optimizer == "sam":  # descend with the gradient at w + rho g / ||g||
        norm = flat(g).norm()
        _, g = loss_and_grad([w + rho * t / norm for w, t in zip(w0, g)])
    expected_step = flat([-lr * t for t in g])

    extra = {"rho": rho} if optimizer == "sam" else {}
    opt = create_optimizer(optimizer, model, lr=lr, momentum=0.0, weight_decay=0.0, **extra)
    loss, _ = StepRunner(model, opt, torch.device("cpu"), amp="bf16")(x, y)
    step = flat([p.detach() - w for p, w in zip(model.parameters(), w0)])

    # bf16 keeps 8 significant bits: the step is off by about 0.5% here, while SAM's and SGD's steps
    # differ by about 9%, so 2% tells a right step from a wrong one
    assert float(loss) == pytest.approx(loss0, rel=1e-3)
    error = float((step - expected_step).norm() / expected_step.norm())
    assert 1e-4 < error < 0.02  # and above 1e-4: bf16 really ran (float32 agrees to 1e-7)
