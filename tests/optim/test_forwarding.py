"""flatlab.optim.forwarding: a wrapper that is its optimizer but for the step."""

import pytest
import torch

from flatlab.optim.forwarding import Forwarding


class Idle(Forwarding):
    def step(self, closure=None):
        return None


def _sgd():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    return w, torch.optim.SGD([w], lr=0.1, momentum=0.9)


def test_a_scheduler_and_a_checkpoint_on_the_wrapper_reach_the_wrapped_optimizer():
    w, sgd = _sgd()
    wrapper = Idle(sgd)
    torch.optim.lr_scheduler.StepLR(wrapper, step_size=1, gamma=0.5).step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.05)
    w.grad = torch.tensor([1.0, 1.0])
    sgd.step()
    saved = wrapper.state_dict()
    w2, sgd2 = _sgd()
    Idle(sgd2).load_state_dict(saved)
    assert torch.equal(sgd2.state[w2]["momentum_buffer"], torch.tensor([1.0, 1.0]))
    assert sgd2.param_groups[0]["lr"] == pytest.approx(0.05)
    wrapper.zero_grad()
    assert w.grad is None


def test_the_wrapper_refuses_new_groups_and_a_subclass_without_a_step():
    _, sgd = _sgd()
    with pytest.raises(RuntimeError, match="before wrapping"):
        Idle(sgd).add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))]})
    with pytest.raises(NotImplementedError, match="Forwarding defines no step"):
        Forwarding(sgd).step()
    w_before = sgd.param_groups[0]["params"][0].detach().clone()
    Idle(sgd).step()
    assert torch.equal(sgd.param_groups[0]["params"][0], w_before)
