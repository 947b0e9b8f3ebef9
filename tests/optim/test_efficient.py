"""The efficient methods (LookSAM, AE-SAM, RST, MSAM, GSAM, WSAM, FriendlySAM) and VaSSO and SAM-ON against reference
loops that write out each paper's equations, on a small float64 network; and their cost in passes."""

import math

import pytest
import torch
import torch.nn.functional as F

import flatlab
from tests.helpers.nets import CountingNet, batches, tiny_mlp, tiny_net
from tests.helpers.reference import axpy, dot, grad_at, norm, reference_batches, run_flatlab
from tests.helpers.steps import make, run_step, step_closure


def assert_same(got, expected):
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def sgd(lr=0.1, momentum=0.0):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum)


def test_looksam_matches_its_equations():
    model, ref = tiny_mlp(), tiny_mlp()
    rho, k, alpha, lr = 0.1, 3, 0.7, 0.1
    w = [p.detach().clone() for p in ref.parameters()]
    gv = None
    for t, (x, y) in enumerate(reference_batches()):
        g = grad_at(ref, w, x, y)
        if t % k == 0:
            gs = grad_at(ref, axpy(rho / norm(g), g, w), x, y)
            gv = axpy(-dot(gs, g) / dot(g, g), g, gs)  # g_s minus its projection on g
            d = gs
        else:
            d = axpy(alpha * norm(g) / norm(gv), gv, g)
        w = axpy(-lr, d, w)
    opt = flatlab.LookSAM(torch.optim.SGD(model.parameters(), lr=lr), rho=rho, k=k, alpha=alpha)
    assert_same(run_flatlab(opt, model, reference_batches()), w)
    assert opt.sam_steps == 4 and opt.steps == 12


def test_aesam_matches_its_equations():
    model, ref = tiny_mlp(), tiny_mlp()
    rho, lr, delta, total = 0.05, 0.1, 0.9, 12
    w = [p.detach().clone() for p in ref.parameters()]
    mu, var, decisions = 0.0, 1e-10, []
    for t, (x, y) in enumerate(reference_batches()):
        g = grad_at(ref, w, x, y)
        sq = float(dot(g, g))
        mu = delta * mu + (1 - delta) * sq
        var = delta * var + (1 - delta) * (sq - mu) ** 2
        c = 1.0 + (-1.0 - 1.0) * t / total  # lambda_2 = 1 at the start to lambda_1 = -1 at the end
        sam = sq >= mu + c * math.sqrt(var)
        decisions.append(sam)
        d = grad_at(ref, axpy(rho / norm(g), g, w), x, y) if sam else g
        w = axpy(-lr, d, w)
    assert 0 < sum(decisions) < len(decisions)  # both kinds of step happen
    opt = flatlab.AESAM(torch.optim.SGD(model.parameters(), lr=lr), rho=rho, delta=delta, total_steps=total)
    assert_same(run_flatlab(opt, model, reference_batches()), w)
    assert opt.sam_steps == sum(decisions) and opt.sam_fraction == pytest.approx(sum(decisions) / 12)


@pytest.mark.parametrize("options", [{"sam_probability": 0.5}, {"every": 3}])
def test_rst_matches_a_reference_with_the_same_draws(options):
    model, ref = tiny_mlp(), tiny_mlp()
    rho, lr = 0.05, 0.1
    w = [p.detach().clone() for p in ref.parameters()]
    generator = torch.Generator().manual_seed(4)
    taken = 0
    for t, (x, y) in enumerate(reference_batches()):
        g = grad_at(ref, w, x, y)
        if "every" in options:
            sam = t % options["every"] == 0
        else:
            sam = bool(torch.rand((), generator=generator) < options["sam_probability"])
        taken += sam
        d = grad_at(ref, axpy(rho / norm(g), g, w), x, y) if sam else g
        w = axpy(-lr, d, w)
    opt = flatlab.RST(torch.optim.SGD(model.parameters(), lr=lr), rho=rho, seed=4, **options)
    assert_same(run_flatlab(opt, model, reference_batches()), w)
    assert opt.sam_steps == taken and 0 < taken < 12


def test_msam_matches_its_equations():
    model, ref = tiny_mlp(), tiny_mlp()
    rho, lr, mom = 3.0, 0.05, 0.9
    w = [p.detach().clone() for p in ref.parameters()]
    v = None
    for x, y in reference_batches():
        at = w if v is None else axpy(-rho / norm(v), v, w)  # eps = -rho v / ||v||
        g = grad_at(ref, at, x, y)
        v = g if v is None else axpy(mom, v, g)
        w = axpy(-lr, v, w)
    opt = flatlab.MSAM(torch.optim.SGD(model.parameters(), lr=lr, momentum=mom), rho=rho)
    assert_same(run_flatlab(opt, model, reference_batches()), w)


def test_msam_needs_a_momentum():
    with pytest.raises(ValueError, match="momentum"):
        flatlab.MSAM(torch.optim.SGD(tiny_mlp().parameters(), lr=0.1))
    flatlab.MSAM(torch.optim.AdamW(tiny_mlp().parameters(), lr=0.1))  # Adam's exp_avg is a momentum


def test_gsam_matches_its_equations_with_rho_following_the_lr():
    model, ref = tiny_mlp(), tiny_mlp()
    rho_max, rho_min, alpha, lr0, steps = 0.08, 0.02, 0.4, 0.1, 12
    decay = lambda t: 1 - t / steps  # noqa: E731 - a linear decay to 0 over the run
    w = [p.detach().clone() for p in ref.parameters()]
    for t, (x, y) in enumerate(reference_batches(steps)):
        lr = lr0 * decay(t)
        rho = rho_min + (rho_max - rho_min) * lr / lr0
        g = grad_at(ref, w, x, y)
        gp = grad_at(ref, axpy(rho / norm(g), g, w), x, y)
        perp = axpy(-dot(g, gp) / dot(gp, gp), gp, g)  # the part of g orthogonal to g_p
        w = axpy(-lr, axpy(-alpha, perp, gp), w)
    base = torch.optim.SGD(model.parameters(), lr=lr0)
    opt = flatlab.GSAM(base, rho=rho_max, rho_min=rho_min, alpha=alpha)
    sched = torch.optim.lr_scheduler.LambdaLR(base, decay)
    for x, y in reference_batches(steps):
        opt.step(step_closure(opt, model, x, y))
        sched.step()
    assert_same([p.detach() for p in model.parameters()], w)


@pytest.mark.parametrize("decoupled", [True, False])
def test_wsam_matches_its_equations(decoupled):
    model, ref = tiny_mlp(), tiny_mlp()
    rho, gamma, lr, mom = 0.05, 0.9, 0.05, 0.9
    a = gamma / (1 - gamma)
    w = [p.detach().clone() for p in ref.parameters()]
    v = None
    for x, y in reference_batches():
        g = grad_at(ref, w, x, y)
        gp = grad_at(ref, axpy(rho / norm(g), g, w), x, y)
        sharp = axpy(-1.0, g, gp)
        d = g if decoupled else axpy(a, sharp, g)
        v = d if v is None else axpy(mom, v, d)
        w = axpy(-lr, v, w)
        if decoupled:  # the sharpness term bypasses the momentum, scaled by the learning rate
            w = axpy(-lr * a, sharp, w)
    opt = flatlab.WSAM(torch.optim.SGD(model.parameters(), lr=lr, momentum=mom), rho=rho, gamma=gamma,
                       decoupled=decoupled)
    assert_same(run_flatlab(opt, model, reference_batches()), w)


def test_friendly_sam_matches_its_equations():
    model, ref = tiny_mlp(), tiny_mlp()
    rho, sigma, lmbda, lr = 0.1, 1.0, 0.9, 0.1
    w = [p.detach().clone() for p in ref.parameters()]
    m = None
    for x, y in reference_batches():
        g = grad_at(ref, w, x, y)
        if m is None:
            d, m = g, g
        else:
            d = axpy(-sigma, m, g)  # the batch gradient minus sigma times the average so far
            m = [lmbda * mi + (1 - lmbda) * gi for mi, gi in zip(m, g)]
        w = axpy(-lr, grad_at(ref, axpy(rho / norm(d), d, w), x, y), w)
    opt = flatlab.FriendlySAM(torch.optim.SGD(model.parameters(), lr=lr), rho=rho, sigma=sigma, lmbda=lmbda)
    assert_same(run_flatlab(opt, model, reference_batches()), w)


def test_vasso_matches_its_equations():
    model, ref = tiny_mlp(), tiny_mlp()
    rho, theta, lr = 0.1, 0.4, 0.1
    w = [p.detach().clone() for p in ref.parameters()]
    d = None
    for x, y in reference_batches():
        g = grad_at(ref, w, x, y)
        # the moving average of the gradients, started at the first one (official solver/vasso.py)
        d = g if d is None else [(1 - theta) * di + theta * gi for di, gi in zip(d, g)]
        w = axpy(-lr, grad_at(ref, axpy(rho / norm(d), d, w), x, y), w)
    opt = flatlab.VaSSO(torch.optim.SGD(model.parameters(), lr=lr), rho=rho, theta=theta)
    assert_same(run_flatlab(opt, model, reference_batches()), w)


def test_vasso_with_theta_one_is_sam_bit_for_bit():
    a, b = tiny_mlp(), tiny_mlp()
    vasso = flatlab.create_optimizer("vasso", a, lr=0.1, momentum=0.9, rho=0.05, theta=1.0)
    sam = flatlab.create_optimizer("sam", b, lr=0.1, momentum=0.9, rho=0.05)
    got, expected = run_flatlab(vasso, a, reference_batches()), run_flatlab(sam, b, reference_batches())
    assert all(torch.equal(p, q) for p, q in zip(got, expected))


def test_sam_on_is_sam_on_the_normalisation_layers_bit_for_bit():
    """SAM-ON against SAM wrapping an SGD over the BatchNorm parameters alone (so SAM's norm and
    perturbation cover those tensors only), the other tensors descending with a plain SGD from the
    gradient of the same pass at w + eps."""
    x_y = batches(n=4, dtype=torch.float64)
    model, ref = tiny_net(dtype=torch.float64), tiny_net(dtype=torch.float64)
    opt = flatlab.create_optimizer("sam-on", model, lr=0.1, momentum=0.9, rho=0.5)
    norm_params = [ref.bn.weight, ref.bn.bias]
    rest = [p for p in ref.parameters() if all(p is not q for q in norm_params)]
    sam = flatlab.SAM(torch.optim.SGD(norm_params, lr=0.1, momentum=0.9), rho=0.5, model=ref)
    plain = torch.optim.SGD(rest, lr=0.1, momentum=0.9)
    for x, y in x_y:
        opt.step(step_closure(opt, model, x, y))

        def closure(x=x, y=y):
            ref.zero_grad(set_to_none=True)
            loss = F.cross_entropy(ref(x), y)
            loss.backward()
            return loss

        sam.step(closure)
        plain.step()  # with the gradient of the pass at w + eps
    for (n, p), q in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(p, q), n


def test_sam_on_ascent_computes_the_normalisation_gradients_only():
    x, y = batches(1)[0]
    model = tiny_net()
    model.fc.bias.requires_grad_(False)  # frozen by the user: must stay frozen
    opt = flatlab.create_optimizer("sam-on", model, lr=0.1)
    names = [n for n, _ in model.named_parameters()]
    seen = []

    def closure():
        if not opt.is_perturbed:
            seen.append({n: p.requires_grad for n, p in model.named_parameters()})
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert seen == [{n: n.startswith("bn.") for n in names}]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {n: n != "fc.bias" for n in names}
    bn = 8 / sum(p.numel() for p in model.parameters() if p.requires_grad)  # 4 channels, weight and bias
    assert flatlab.optim.step_passes(opt)[0].weight_grads == pytest.approx(bn)


def frozen_norm():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    model[1].requires_grad_(False)
    return model


@pytest.mark.parametrize(
    "model, message",
    [(None, "pass model="), (torch.nn.Linear(3, 2), "Linear has no BatchNorm, LayerNorm or GroupNorm"),
     (frozen_norm(), "none of the normalisation layers' parameters is among the optimizer's trainable")],
)
def test_sam_on_needs_a_model_with_trainable_normalisation_layers(model, message):
    params = model if model is not None else [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match=message):
        flatlab.create_optimizer("sam-on", params, lr=0.1)


@pytest.mark.parametrize(
    "name, options",
    [("rst", {"sam_probability": 0.0}), ("aesam", {"c_start": 1e9, "c_end": 1e9}),  # the switch never fires
     ("looksam", {"rho": 0.0}), ("rst", {"rho": 0.0, "every": 2}), ("gsam", {"rho": 0.0}), ("wsam", {"rho": 0.0}),
     ("fsam", {"rho": 0.0}), ("msam", {"rho": 0.0}), ("gcsam", {"rho": 0.0}), ("vasso", {"rho": 0.0}),
     ("esam", {"rho": 0.0, "gamma": 1.0, "every": 2}), ("rwp", {"rho": 0.0})],
)
def test_rho_zero_or_a_switch_that_never_fires_is_the_base_optimizer(name, options):
    a, b = tiny_mlp(), tiny_mlp()
    opt = flatlab.create_optimizer(name, a, lr=0.1, momentum=0.9, **options)
    base = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    for x, y in reference_batches():
        run_flatlab(opt, a, [(x, y)])
        base.zero_grad()
        F.cross_entropy(b(x), y).backward()
        base.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert opt.sam_steps == (opt.steps if name == "msam" else 0)


@pytest.mark.parametrize(
    "name, options, per_step, tolerance",
    [("looksam", {}, 1.2, 0), ("rst", {}, 1.5, 0.1), ("rst", {"every": 4}, 1.25, 0), ("msam", {}, 1.0, 0),
     ("s2sam", {}, 1.0, 0), ("sam", {}, 2.0, 0), ("aesam", {"total_steps": 60}, None, 0),
     ("gsam", {}, 2.0, 0), ("wsam", {}, 2.0, 0), ("fsam", {}, 2.0, 0), ("gcsam", {}, 2.0, 0),
     ("vasso", {}, 2.0, 0), ("sam-on", {}, 2.0, 0), ("rwp", {}, 2.0, 0), ("bsam", {}, 2.0, 0)],
)
def test_forward_and_backward_passes_per_step(name, options, per_step, tolerance):
    model = CountingNet()
    opt = make(name, model, **options)
    steps = 60
    for x, y in batches(n=steps, batch=4):
        run_step(opt, model, x, y)
    assert model.forwards == model.backwards  # no selection forward in these methods
    measured = model.forwards / steps
    if per_step is None:  # AE-SAM: one pass, plus one on each step it chose SAM
        per_step = 1 + opt.sam_steps / steps
        assert 0.2 < opt.sam_fraction < 0.8
    assert measured == pytest.approx(per_step, abs=tolerance)
    declared = flatlab.optim.step_passes(opt)
    assert sum(p.rate for p in declared) == pytest.approx(1 + opt.sam_fraction if opt.needs_closure else 1.0,
                                                          abs=max(tolerance, 1e-9))
