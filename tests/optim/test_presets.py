"""Presets against reference steps written out here: ASAM's bias rule, S2-SAM's restore."""

import pytest
import torch
import torch.nn.functional as F

import flatlab
from tests.helpers.nets import batches, tiny_net
from tests.helpers.steps import step_closure


def asam_reference_step(model, x, y, rho, eta, lr, adaptive):
    """One ASAM step with plain SGD (no momentum), from the paper's formula:
    eps = rho T^2 g / ||T g||, T = |w| + eta on adaptive tensors and 1 elsewhere."""
    params = list(model.parameters())
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g = [p.grad.clone() for p in params]
    t = [p.detach().abs() + eta if a else torch.ones_like(p) for p, a in zip(params, adaptive)]
    norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
    w = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, ti, gi in zip(params, t, g):
            p.add_(rho * ti * ti * gi / norm)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p, w0 in zip(params, w):
            p.copy_(w0 - lr * p.grad)


def asam_step(opt, model, x, y):
    opt.step(step_closure(opt, model, x, y))


@pytest.mark.parametrize("rule", ["model", "group", "none"])
def test_asam_step_matches_the_reference_with_its_bias_rule(rule):
    ref, model = tiny_net(dtype=torch.float64), tiny_net(dtype=torch.float64)
    ref.eval(), model.eval()  # BatchNorm in eval: both passes see the same function
    names = [n for n, _ in model.named_parameters()]
    if rule == "model":  # biases named *bias get T = 1
        opt = flatlab.ASAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, eta=0.01, model=model)
        adaptive = [not n.endswith("bias") for n in names]
    elif rule == "group":  # a param group option decides, here: only conv.weight is adaptive
        params = dict(model.named_parameters())
        groups = [{"params": [params["conv.weight"]]},
                  {"params": [p for n, p in params.items() if n != "conv.weight"], "adaptive": False}]
        opt = flatlab.ASAM(torch.optim.SGD(groups, lr=0.1), rho=0.5, eta=0.01)
        # the reference walks model.parameters() order: conv.weight first either way
        adaptive = [n == "conv.weight" for n in names]
    else:  # no model, no group option: every tensor is adaptive
        opt = flatlab.ASAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, eta=0.01)
        adaptive = [True] * len(names)
    for x, y in batches(3, dtype=torch.float64):
        asam_reference_step(ref, x, y, 0.5, 0.01, 0.1, adaptive)
        asam_step(opt, model, x, y)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=n)


def test_asam_bias_rule_changes_the_step():
    # the rule is not a no-op: with biases adaptive the weights end elsewhere
    a, b = tiny_net(dtype=torch.float64), tiny_net(dtype=torch.float64)
    opt_a = flatlab.ASAM(torch.optim.SGD(a.parameters(), lr=0.1), rho=0.5, model=a)
    opt_b = flatlab.ASAM(torch.optim.SGD(b.parameters(), lr=0.1), rho=0.5)
    x, y = batches(1, dtype=torch.float64)[0]
    asam_step(opt_a, a, x, y)
    asam_step(opt_b, b, x, y)
    assert not torch.equal(a.conv.weight, b.conv.weight)


def test_s2sam_restore_after_reload_with_reordered_groups_and_frozen_parameters():
    # what train.load_trained does with a run stopped between S2-SAM steps: rebuild the optimizer
    # over the model, load its state, restore w. Param groups in another order than
    # named_parameters() and a frozen tensor must not confuse which backup goes where.
    def build(model):
        model.bn.weight.requires_grad_(False)
        params = dict(model.named_parameters())
        groups = [{"params": [params["fc.weight"], params["fc.bias"]]},
                  {"params": [params["conv.weight"], params["conv.bias"], params["bn.bias"]], "weight_decay": 0.0}]
        return flatlab.S2SAM(torch.optim.SGD(groups, lr=0.1, momentum=0.9), rho=0.05, model=model, seed=0)

    model = tiny_net()
    opt = build(model)
    for x, y in batches(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert opt.phase is flatlab.optim.Phase.PENDING  # the model holds w between steps
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    saved = {"model": model.state_dict(), "optimizer": opt.state_dict()}

    fresh = tiny_net(seed=5)
    fresh.load_state_dict(saved["model"])
    opt2 = build(fresh)
    opt2.load_state_dict(saved["optimizer"])
    assert opt2.phase is flatlab.optim.Phase.PENDING
    # the next training forward of either applies the same perturbation to the same tensors
    x, y = batches(1)[0]
    for m in (model, fresh):
        m(x)
    assert opt.is_perturbed and opt2.is_perturbed
    for (n, p), q in zip(fresh.named_parameters(), model.parameters()):
        assert torch.equal(p, q), n
    opt2.restore_weights()
    assert not opt2.is_perturbed
    for n, p in fresh.named_parameters():
        assert torch.equal(p, w[n]), n
