"""torch.optim's conventions on the core: per-group radii, the state_dict schema, step hooks under a
GradScaler, foreach chosen from the parameters, policies that check their own combinations, the
data-driven refresh through ``prepare``."""

import pytest
import torch
import torch.nn.functional as F

import flatlab
from flatlab.optim import Coordinates, PreviousGradient
from tests.helpers.nets import tiny_net, weights
from tests.helpers.steps import run_step


def _two_groups(model, **second):
    first, *rest = model.parameters()
    return torch.optim.SGD([{"params": [first]}, {"params": rest, **second}], lr=0.1, momentum=0.9)


def _hand_sam_step(model, x, y, radii, lr=0.1):
    """One SAM step with plain SGD (no momentum state yet) written out in float64 by hand: eps_i =
    r_i * g_i / ||g over the tensors with r_i > 0||, the descent along the gradient at w + eps."""
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    live = [g for g, r in zip(grads, radii) if r > 0]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in live))
    w = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g, r in zip(params, grads, radii):
            p.add_(g.double() * (r / norm) if r > 0 else torch.zeros_like(p))
    perturbed = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    with torch.no_grad():
        for p, w0, g in zip(params, w, perturbed):
            p.copy_(w0 - lr * g)


@pytest.mark.parametrize("second_rho", [0.0, 0.2])
def test_a_param_group_sets_its_own_radius(second_rho, data):
    x, y = data[0]
    model, ref = tiny_net(dtype=torch.float64), tiny_net(dtype=torch.float64)
    opt = flatlab.SAM(torch.optim.SGD([{"params": [next(model.parameters())]},
                                       {"params": list(model.parameters())[1:], "rho": second_rho}], lr=0.1),
                      rho=0.05)
    x = x.double()
    run_step(opt, model, x, y)
    n = len(list(ref.parameters()))
    _hand_sam_step(ref, x, y, [0.05] + [second_rho] * (n - 1))
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_every_group_at_rho_zero_is_the_base_optimizer_with_one_pass(data):
    model, ref = tiny_net(), tiny_net()
    opt = flatlab.SAM(_two_groups(model, rho=0.0), rho=0.0)
    sgd = _two_groups(ref)
    calls = []
    for x, y in data:
        def closure(x=x, y=y):
            calls.append(1)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
        sgd.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        sgd.step()
    assert len(calls) == len(data)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))


def test_a_negative_group_radius_is_refused():
    model = tiny_net()
    with pytest.raises(ValueError, match="rho"):
        flatlab.SAM(_two_groups(model, rho=-0.1))


def test_the_state_dict_has_torch_optims_schema_and_loads_the_old_one(data):
    model = tiny_net()
    opt = flatlab.create_optimizer("sam", model, lr=0.1, momentum=0.9)
    for x, y in data[:2]:
        run_step(opt, model, x, y)
    state = opt.state_dict()
    base = opt.base.state_dict()
    assert state.keys() == {"state", "param_groups", "sharpness_aware"}
    assert state["param_groups"] == base["param_groups"]
    assert all(torch.equal(state["state"][i]["momentum_buffer"], base["state"][i]["momentum_buffer"])
               for i in base["state"])
    # a checkpoint written before the schema changed: {"base": ..., "sharpness_aware": ...}
    old = {"base": base, "sharpness_aware": state["sharpness_aware"]}
    for saved in (state, old):
        other = tiny_net()
        other.load_state_dict(model.state_dict())
        opt2 = flatlab.create_optimizer("sam", other, lr=0.1, momentum=0.9)
        opt2.load_state_dict(saved)
        run_step(opt2, other, *data[2])
        assert opt2.steps == 3
    with pytest.raises(ValueError, match="sharpness-aware state_dict"):
        opt.load_state_dict(base)


@pytest.mark.parametrize("name", ["sam", "s2sam", "wsam"])
def test_step_hooks_fire_once_per_step_under_a_grad_scaler(name, data):
    model = tiny_net()
    opt = flatlab.create_optimizer(name, model, lr=0.1, momentum=0.9)
    fired = []
    opt.register_step_pre_hook(lambda *_: fired.append("pre"))
    opt.register_step_post_hook(lambda *_: fired.append("post"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for x, y in data:
        opt.step(flatlab.per_sample(lambda idx, x=x, y=y: F.cross_entropy(model(x), y, reduction="none")),
                 scaler=scaler)
    assert fired == ["pre", "post"] * len(data)
    assert opt.steps == len(data)


def test_foreach_is_chosen_from_the_parameters():
    model = tiny_net()
    assert flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1)).foreach is True
    assert flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1), foreach=False).foreach is False
    meta = torch.nn.Linear(2, 2, device="meta")
    assert flatlab.SAM(torch.optim.SGD(meta.parameters(), lr=0.1)).foreach is False


def test_a_policy_checks_its_own_combination():
    class NeedsTwoPasses(Coordinates):
        name = "needs-two-passes"

        def check(self, optimizer):
            if optimizer.source.single_pass:
                raise ValueError("needs-two-passes needs a two-pass source")

    model = tiny_net()
    flatlab.SharpnessAware(torch.optim.SGD(model.parameters(), lr=0.1), coordinates=NeedsTwoPasses())
    with pytest.raises(ValueError, match="needs a two-pass source"):
        flatlab.SharpnessAware(torch.optim.SGD(model.parameters(), lr=0.1), source=PreviousGradient(),
                               coordinates=NeedsTwoPasses())


class _HalvingSGD(torch.optim.SGD):
    """A base optimizer that writes into .grad during its step (some third-party ones do)."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(0.5)


def test_a_single_pass_eps_follows_a_base_that_writes_into_grad(data):
    """S2-SAM's next eps is rho * d / ||d|| with d the gradient as the base step left it; its norm,
    read by the descent's check before the base step, must not be reused once the base changed d."""
    model = tiny_net(dtype=torch.float64)
    opt = flatlab.S2SAM(_HalvingSGD(model.parameters(), lr=0.1), rho=0.05, model=model)
    x, y = data[0]
    opt.zero_grad()
    F.cross_entropy(model(x.double()), y).backward()
    opt.step()
    w = weights(model)
    model.train()
    model(x.double())  # the training forward applies eps
    eps = [p.detach() - a for p, a in zip(model.parameters(), w)]
    # a reused norm (of the gradient before the base halved it) would give a radius of 0.025
    assert float(torch.sqrt(sum((e ** 2).sum() for e in eps))) == pytest.approx(0.05, rel=1e-12)


def test_prepare_refreshes_a_due_mask_from_the_batches_it_is_given(data):
    model = tiny_net()
    opt = flatlab.create_optimizer("ssam-f", model, lr=0.1, update_interval=2, num_samples=8)
    asked = []

    def batches():
        asked.append(1)
        return [data[0]]

    for step, (x, y) in enumerate(data):
        refreshed = opt.prepare(batches)
        assert refreshed == (step % 2 == 0)
        run_step(opt, model, x, y)
    assert len(asked) == (len(data) + 1) // 2
    other = tiny_net()
    fresh = flatlab.create_optimizer("ssam-f", other, lr=0.1)
    x, y = data[0]
    with pytest.raises(RuntimeError, match="prepare"):
        fresh.step(flatlab.per_sample(lambda idx: F.cross_entropy(other(x), y, reduction="none")))
