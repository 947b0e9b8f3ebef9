"""Whole steps of every variant against reference loops written here, and the invariants they keep."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

import flatlab
from tests.helpers.nets import CountingNet, batches, tiny_net, weights
from tests.helpers.steps import ALWAYS_SAM, FAMILY, make, run_step, step_closure


def grads_at(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def sgd_momentum_reference(model, grads_fn, steps, lr=0.1, momentum=0.9):
    """Plain SGD with momentum where grads_fn(model, step) gives the gradient to descend on."""
    bufs = None
    for k in range(steps):
        g = grads_fn(model, k)
        with torch.no_grad():
            bufs = [gi.clone() for gi in g] if bufs is None else [b.mul_(momentum).add_(gi) for b, gi in zip(bufs, g)]
            for p, b in zip(model.parameters(), bufs):
                p.sub_(lr * b)


def sam_gradient(model, x, y, rho):
    g = grads_at(model, x, y)
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    saved = weights(model)
    with torch.no_grad():
        for p, gi in zip(model.parameters(), g):
            p.add_(rho * gi / norm)
    g_sam = grads_at(model, x, y)
    with torch.no_grad():
        for p, s in zip(model.parameters(), saved):
            p.copy_(s)
    return g_sam


def test_sam_steps_match_reference_loop(data):
    ref, model = tiny_net(), tiny_net()
    ref.eval(), model.eval()  # BN in eval: both passes see the same statistics
    sgd_momentum_reference(ref, lambda m, k: sam_gradient(m, *data[k], rho=0.05), steps=3)
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05)
    for x, y in data[:3]:
        opt.step(step_closure(opt, model, x, y))
    for a, b in zip(ref.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_two_phase_api_equals_closure(data):
    a, b = tiny_net(), tiny_net()
    opt_a = flatlab.SAM(torch.optim.SGD(a.parameters(), lr=0.1), rho=0.05, model=a)
    opt_b = flatlab.SAM(torch.optim.SGD(b.parameters(), lr=0.1), rho=0.05, model=b)
    for x, y in data:
        run_step(opt_a, a, x, y)
        F.cross_entropy(b(x), y).backward()
        opt_b.first_step(zero_grad=True)
        with flatlab.frozen_bn_stats(b):
            F.cross_entropy(b(x), y).backward()
        opt_b.second_step(zero_grad=True)
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)


def test_ascent_steps_project_onto_the_ball(data):
    x, y = data[0]
    rho = 0.1
    ref, model = tiny_net(), tiny_net()
    ref.eval(), model.eval()
    # reference: eps1 = rho g1/|g1|; eps2 = proj(eps1 + rho g2/|g2|), g2 at w + eps1
    w = weights(ref)
    g1 = grads_at(ref, x, y)
    n1 = torch.sqrt(sum((g**2).sum() for g in g1))
    eps = [rho * g / n1 for g in g1]
    with torch.no_grad():
        for p, wi, e in zip(ref.parameters(), w, eps):
            p.copy_(wi + e)
    g2 = grads_at(ref, x, y)
    n2 = torch.sqrt(sum((g**2).sum() for g in g2))
    eps = [e + rho * g / n2 for e, g in zip(eps, g2)]
    ne = torch.sqrt(sum((e**2).sum() for e in eps))
    assert ne > rho  # the projection has work to do
    eps = [e * rho / ne for e in eps]
    with torch.no_grad():
        for p, wi, e in zip(ref.parameters(), w, eps):
            p.copy_(wi + e)
    g3 = grads_at(ref, x, y)
    expected = [wi - 0.1 * g for wi, g in zip(w, g3)]

    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=rho, ascent_steps=2)
    seen_norms = []

    def closure():
        opt.zero_grad()
        if opt.is_perturbed:
            seen_norms.append(torch.sqrt(sum(((p - opt.state[p]["backup"]) ** 2).sum() for p in model.parameters())))
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert len(seen_norms) == 2 and all(n <= rho * (1 + 1e-5) for n in seen_norms)
    for a, b in zip(expected, model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sign_perturbation_with_several_steps_stays_in_the_inf_ball(data):
    x, y = data[0]
    model = tiny_net()
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.01, p=math.inf, ascent_steps=3)
    widths = []

    def closure():
        opt.zero_grad()
        if opt.is_perturbed:
            widths.append(max((p - opt.state[p]["backup"]).abs().max().item() for p in model.parameters()))
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert len(widths) == 3 and all(w <= 0.01 + 1e-7 for w in widths) and widths[0] > 0.009


@pytest.mark.parametrize("name", FAMILY)
def test_rho_zero_reproduces_the_base_optimizer(name, data):
    # Lookbehind with rho = 0 still takes k steps on the batch and interpolates: one step, alpha = 1 is the base
    neutral = {"esam": dict(beta=1.0, gamma=1.0), "ssam-f": dict(sparsity=0.0), "ssam-d": dict(sparsity=0.0),
               "lookbehind-sam": dict(k=1, alpha=1.0)}
    a, b = tiny_net(), tiny_net()
    opt = make(name, a, rho=0.0, **neutral.get(name, {}))
    base = (flatlab.optim.BSAMBase(b.parameters(), lr=0.1, weight_decay=0.0) if name == "bsam"
            else torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9))
    for x, y in data:
        run_step(opt, a, x, y)
        base.zero_grad()
        F.cross_entropy(b(x), y).backward()
        base.step()
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)


def test_s2sam_first_step_is_base_step_then_uses_previous_gradient(data):
    rho = 0.05
    model, ref = tiny_net(), tiny_net()
    model.eval(), ref.eval()
    opt = flatlab.S2SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=rho)
    for x, y in data[:2]:
        opt.zero_grad()  # grads become None: the perturbation must not depend on them surviving
        F.cross_entropy(model(x), y).backward()
        opt.step()
    # reference: w1 = w0 - lr g(w0); w2 = w1 - lr g(w1 + rho g(w0)/|g(w0)|)
    (x0, y0), (x1, y1) = data[:2]
    g0 = grads_at(ref, x0, y0)
    n0 = torch.sqrt(sum((g**2).sum() for g in g0))
    with torch.no_grad():
        for p, g in zip(ref.parameters(), g0):
            p.sub_(0.1 * g)
    w1 = weights(ref)
    with torch.no_grad():
        for p, g in zip(ref.parameters(), g0):
            p.add_(rho * g / n0)
    g1 = grads_at(ref, x1, y1)
    expected = [w - 0.1 * g for w, g in zip(w1, g1)]
    with opt.unperturbed():
        for e, p in zip(expected, model.parameters()):
            torch.testing.assert_close(e, p, rtol=1e-5, atol=1e-6)


class DecayInGrad(torch.optim.SGD):
    """A base optimizer from outside torch.optim that adds weight decay into .grad in place."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.add_(p, alpha=0.5)
        return super().step(closure)


@pytest.mark.parametrize("base, decay", [(torch.optim.SGD, 0.0), (DecayInGrad, 0.5)])
def test_s2sam_perturbation_follows_the_gradient_the_base_leaves(base, decay, data):
    """The descent's finiteness check doubles as eps's norm only where the base leaves .grad alone
    (torch's optimizers); either way eps = rho * d / ||d|| with d the gradient after the base step."""
    model = tiny_net()
    x, y = data[0]
    w0 = weights(model)
    d = [g + decay * w for g, w in zip(grads_at(copy.deepcopy(model), x, y), w0)]
    d_norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in d))
    opt = flatlab.S2SAM(base(model.parameters(), lr=0.1), rho=0.05)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    for p, v in zip(model.parameters(), d):
        torch.testing.assert_close(p - opt.state[p]["backup"], 0.05 * v / d_norm, rtol=1e-4, atol=1e-8)


def test_s2sam_really_perturbs(data):
    a, b = tiny_net(), tiny_net()
    opt = flatlab.S2SAM(torch.optim.SGD(a.parameters(), lr=0.1), rho=0.05)
    sgd = torch.optim.SGD(b.parameters(), lr=0.1)
    for x, y in data[:2]:
        for o, m in ((opt, a), (sgd, b)):
            o.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            o.step()
    with opt.unperturbed():
        diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
    assert diff > 1e-4


def test_s2sam_unperturbed_restores_and_reapplies(data):
    model = tiny_net()
    opt = flatlab.S2SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    run_step(opt, model, *data[0])
    perturbed = weights(model)
    with opt.unperturbed():
        inside = weights(model)
        assert all(torch.equal(p, opt.state[q]["backup"]) for p, q in zip(inside, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(perturbed, weights(model)))
    assert any(not torch.equal(a, b) for a, b in zip(perturbed, inside))


def test_restore_is_exact_in_bfloat16(data):
    x, y = data[0]
    model = tiny_net(dtype=torch.bfloat16)
    before = weights(model)
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.5)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x.bfloat16()), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_batchnorm_statistics_come_from_the_first_pass_only(data):
    x, y = data[0]
    model, ref = tiny_net(), tiny_net()
    ref(x)  # one training-mode forward at w
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, model=model)
    run_step(opt, model, x, y)
    assert torch.equal(model.bn.running_mean, ref.bn.running_mean)
    assert torch.equal(model.bn.running_var, ref.bn.running_var)
    assert model.bn.num_batches_tracked.item() == 1


def test_parameters_without_gradient_are_left_alone(data):
    x, y = data[0]
    model = tiny_net()
    unused = torch.nn.Parameter(torch.ones(3))
    params = list(model.parameters()) + [unused]
    opt = flatlab.SAM(torch.optim.SGD(params, lr=0.1), rho=0.05)
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    assert opt.is_perturbed and torch.equal(unused, torch.ones(3))
    F.cross_entropy(model(x), y).backward()
    opt.second_step()
    assert torch.equal(unused, torch.ones(3))


def test_first_step_without_gradients_is_an_error():
    model = tiny_net()
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="no gradients"):
        opt.first_step()


def test_step_without_closure_is_an_error():
    model = tiny_net()
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


SINGLE_PASS = ["s2sam", "msam"]
TWO_PASS = [n for n in FAMILY if n not in SINGLE_PASS]


def _state_before_step(name, data, **options):
    model = tiny_net()
    opt = make(name, model, **options)
    run_step(opt, model, *data[0])  # some momentum and a pending perturbation for S2SAM
    with opt.unperturbed():
        before = weights(model)
    return model, opt, before, _base_state(opt)


def _base_state(opt):
    """Every tensor the base optimizer keeps (SGD's momentum; bSAM's momentum and precision)."""
    return [(key, t.clone()) for state in opt.base.state.values() for key, t in state.items() if torch.is_tensor(t)]


def _assert_untouched(model, opt, before, base_state):
    assert not opt.is_perturbed
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    now = _base_state(opt)
    assert base_state and [k for k, _ in now] == [k for k, _ in base_state]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(base_state, now))


@pytest.mark.parametrize("name", TWO_PASS)
@pytest.mark.parametrize("where", ["ascent", "descent"])
def test_nonfinite_gradient_leaves_weights_and_state_untouched(name, where, data):
    model, opt, before, momentum = _state_before_step(name, data, **ALWAYS_SAM.get(name, {}))
    x, y = data[1]
    calls = []

    def losses(idx):
        calls.append(idx)
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        # the first call is the ascent pass at w; every later one runs at w + eps
        poisoned = (where == "ascent") == (len(calls) == 1)
        out = F.cross_entropy(model(xb), yb, reduction="none")
        return out * float("nan") if poisoned else out

    checks_at_once = opt._ascent_needs_check()
    opt.step(flatlab.per_sample(losses))
    if where == "descent":
        assert len(calls) == 2 + (name == "esam")
    # A bad ascent is caught by the descent's check (the step's one host sync) unless a policy keeps
    # state derived from that gradient on this step, which checks it at once and takes no further pass.
    elif checks_at_once:
        assert len(calls) == 1
    _assert_untouched(model, opt, before, momentum)


@pytest.mark.parametrize("name", SINGLE_PASS)
def test_nonfinite_gradient_of_a_single_pass_step_restores_w_and_skips(name, data):
    model, opt, before, momentum = _state_before_step(name, data)
    assert opt.phase is flatlab.optim.Phase.PENDING  # w, until the training forward below
    x, y = data[1]
    opt.zero_grad()
    out = model(x)
    assert opt.is_perturbed  # the pass runs at w + eps
    (F.cross_entropy(out, y) * float("nan")).backward()
    opt.step()
    _assert_untouched(model, opt, before, momentum)


@pytest.mark.parametrize("name, options", [("rst", {"sam_probability": 0.0}), ("looksam", {"k": 10**6})])
def test_nonfinite_gradient_of_a_plain_step_leaves_weights_untouched(name, options, data):
    model, opt, before, momentum = _state_before_step(name, data, **options)
    x, y = data[1]
    opt.step(flatlab.per_sample(lambda idx: F.cross_entropy(model(x), y, reduction="none") * float("nan")))
    _assert_untouched(model, opt, before, momentum)
    assert opt.steps == 2 and opt.phase is flatlab.optim.Phase.AT_W


def test_grad_scaler_skips_overflowing_steps_exactly(data):
    x, y = data[0]
    model = tiny_net()
    before = weights(model)
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05, model=model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    opt.first_step(zero_grad=True)
    assert opt.is_perturbed
    scaler.scale(F.cross_entropy(model(x), y) * 1e6).backward()  # overflows fp32
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0**120
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_grad_scaler_step_equals_unscaled_step(data):
    a, b = tiny_net(), tiny_net()
    opt_a = flatlab.SAM(torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), rho=0.05, model=a)
    opt_b = flatlab.SAM(torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9), rho=0.05, model=b)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for x, y in data:
        run_step(opt_a, a, x, y)
        scaler.scale(F.cross_entropy(b(x), y)).backward()
        opt_b.first_step(zero_grad=True)
        with opt_b.perturbed_pass():
            scaler.scale(F.cross_entropy(b(x), y)).backward()
        scaler.step(opt_b)
        scaler.update()
        opt_b.zero_grad()
    # power-of-two scaling is exact, and eps is invariant to it
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", FAMILY)
def test_bfloat16_autocast_follows_the_float32_run(name, data):
    # the fp32 run is the reference: bf16 autocast must take the same steps up to its rounding,
    # i.e. its deviation is a small fraction of how far the steps moved the weights. Two steps:
    # later ones amplify rounding chaotically; ESAM's selection could flip a near-tie sample.
    # bf16 keeps 8 bits; ASAM's large radius (0.5) amplifies that to ~20% of a step here, a
    # missing or misdirected step would deviate by ~100%.
    ref, model = tiny_net(), tiny_net()
    start = weights(ref)
    # bSAM's first steps move by lr (1 - beta1) g / s: at its default lr, 0.5, as far as the others' at 0.05
    options = {"gamma": 1.0} if name == "esam" else {"lr": 0.5} if name == "bsam" else {}
    options = {"lr": 0.05, **options}
    opt_ref, opt = make(name, ref, **options), make(name, model, **options)
    for x, y in data[:2]:
        run_step(opt_ref, ref, x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = run_step(opt, model, x, y)
        assert torch.isfinite(loss)
    with opt_ref.unperturbed(), opt.unperturbed():
        moved = max(float((p - s).abs().max()) for p, s in zip(weights(ref), start))
        deviation = max(float((p - q).abs().max()) for p, q in zip(weights(ref), weights(model)))
    assert moved > 0.01 and deviation < 0.25 * moved


@pytest.mark.parametrize("name", FAMILY)
def test_step_with_a_grad_scaler_equals_the_unscaled_step(name, data):
    # power-of-two loss scales are exact, the perturbation is invariant to the scale, and the
    # optimizer unscales the descent gradient: the weights must agree bit for bit
    a, b = tiny_net(), tiny_net()
    opt_a, opt_b = make(name, a), make(name, b)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    for x, y in data * 2:
        run_step(opt_a, a, x, y)
        if opt_b.mask_due:
            opt_b.update_mask(b, [(x, y)])

        def losses(idx, x=x, y=y):
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            return F.cross_entropy(b(xb), yb, reduction="none")

        opt_b.step(flatlab.per_sample(losses), scaler=scaler)
    assert scaler.get_scale() > 2.0**10  # the optimizer updated the scale (growth every 2 steps)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_grad_scaler_with_several_ascent_steps(data):
    a, b = tiny_net(), tiny_net()
    opt_a, opt_b = make("sam", a, ascent_steps=3), make("sam", b, ascent_steps=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for x, y in data:
        run_step(opt_a, a, x, y)
        opt_b.step(flatlab.per_sample(lambda idx, x=x, y=y: F.cross_entropy(b(x), y, reduction="none")),
                   scaler=scaler)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_plain_closure_with_a_scaler_is_an_error(data):
    model = tiny_net()
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="per_sample"):
        opt.step(lambda: None, scaler=torch.amp.GradScaler("cpu"))


@pytest.mark.parametrize(
    "name, options, forwards_per_step, batch_fraction",
    [("sam", {}, 2, 2.0), ("sam", {"ascent_steps": 3}, 4, 4.0), ("esam", {}, 3, 2.5), ("ssam-d", {}, 2, 2.0),
     ("s2sam", {}, 1, 1.0), ("rwp", {}, 2, 2.0), ("bsam", {}, 2, 2.0)],
)
def test_passes_counted_on_a_model_match_the_declared_ones(name, options, forwards_per_step, batch_fraction):
    model = CountingNet()
    opt = make(name, model, **options)
    data = batches(n=10)
    for x, y in data:
        run_step(opt, model, x, y)
    assert model.forwards == forwards_per_step * len(data)
    assert model.samples == batch_fraction * 8 * len(data)
    declared = flatlab.optim.step_passes(opt)
    assert sum(p.rate for p in declared) == forwards_per_step
    assert sum(p.rate * p.batch for p in declared) == batch_fraction


def test_gradient_clipping_of_the_descent_gradient(data):
    x, y = data[0]
    model = tiny_net()
    before = weights(model)
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=1.0), rho=0.05, max_grad_norm=1e-3)
    run_step(opt, model, x, y)
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert moved.item() == pytest.approx(1e-3, rel=1e-4)


def test_wrapper_is_a_torch_optimizer_and_schedulers_reach_the_base(data):
    model = tiny_net()
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    assert isinstance(opt, torch.optim.Optimizer)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    run_step(opt, model, *data[0])
    sched.step()
    assert opt.base.param_groups[0]["lr"] == pytest.approx(0.05)
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    run_step(opt, model, *data[1])
    sched.step()
    assert opt.base.param_groups[0]["lr"] == pytest.approx(0.025)


@pytest.mark.parametrize("name", FAMILY)
def test_resume_is_bit_identical(name):
    data = batches(n=6)
    straight = tiny_net()
    opt = make(name, straight)
    for x, y in data:
        run_step(opt, straight, x, y)

    first = tiny_net()
    opt1 = make(name, first)
    for x, y in data[:3]:
        run_step(opt1, first, x, y)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = tiny_net(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    opt2 = make(name, resumed, seed=999)
    opt2.load_state_dict(saved["opt"])
    for x, y in data[3:]:
        run_step(opt2, resumed, x, y)
    for p, q in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)
    assert opt2.sam_steps == opt.sam_steps  # the switches' counters and draws came back too


@pytest.mark.parametrize("name", ["sam", "s2sam"])
def test_extra_state_is_at_most_one_parameter_copy(name, data):
    model = tiny_net()
    opt = make(name, model)
    for x, y in data:
        run_step(opt, model, x, y)
    own = sum(t.numel() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    assert 0 < own <= sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="sam", rho=-0.1), "rho=-0.1"),
        (dict(name="sam", p=1), "p=1"),
        (dict(name="sam", p=0.5), "p=0.5"),
        (dict(name="sam", ascent_steps=0), "ascent_steps=0"),
        (dict(name="sam", ascent_steps=1.5), "ascent_steps=1.5"),
        (dict(name="asam", eta=-1.0), "eta=-1.0"),
        (dict(name="esam", beta=0.0), "beta=0.0"),
        (dict(name="esam", beta=1.2), "beta=1.2"),
        (dict(name="esam", gamma=0.0), "gamma=0.0"),
        (dict(name="esam", gamma=2.0), "gamma=2.0"),
        (dict(name="ssam-f", sparsity=1.0), "sparsity=1.0"),
        (dict(name="ssam-f", sparsity=-0.1), "sparsity=-0.1"),
        (dict(name="ssam-f", num_samples=0), "num_samples=0"),
        (dict(name="ssam-d", update_interval=0), "update_interval=0"),
        (dict(name="ssam-d", drop_rate=1.5), "drop_rate=1.5"),
        (dict(name="s2sam", rho=-1), "rho=-1"),
        (dict(name="looksam", k=0), "k=0"),
        (dict(name="looksam", alpha=-0.5), "alpha=-0.5"),
        (dict(name="aesam", delta=1.0), "delta=1.0"),
        (dict(name="rst", sam_probability=1.5), "sam_probability=1.5"),
        (dict(name="esam", every=0), "every=0"),
        (dict(name="sam", every=2, sam_probability=0.5), "every, sam_probability"),
        (dict(name="gsam", rho=0.05, rho_min=0.1), "rho_min=0.1"),
        (dict(name="wsam", gamma=1.0), "gamma=1.0"),
        (dict(name="fsam", sigma=-1.0), "sigma=-1.0"),
        (dict(name="fsam", lmbda=2.0), "lmbda=2.0"),
        (dict(name="nosuch"), "nosuch"),
        (dict(name="sam", base="lbfgs"), "lbfgs"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        flatlab.create_optimizer(name, tiny_net(), lr=0.1, **kwargs)


def test_ssam_mask_must_be_known():
    with pytest.raises(ValueError, match="'nosuch'"):
        flatlab.SSAM(torch.optim.SGD(tiny_net().parameters(), lr=0.1), mask="nosuch")


def test_base_must_be_an_optimizer_instance():
    with pytest.raises(TypeError, match="Optimizer instance"):
        flatlab.SAM(torch.optim.SGD, rho=0.05)


@pytest.mark.parametrize("name", FAMILY)
def test_every_variant_accepts_a_per_sample_closure_and_a_plain_one(name, data):
    a, b = tiny_net(), tiny_net()
    options = {"gamma": 1.0} if name == "esam" else {}  # a plain closure cannot select samples
    opt_a, opt_b = make(name, a, **options), make(name, b, **options)
    for x, y in data:
        for opt, model in ((opt_a, a), (opt_b, b)):
            if getattr(opt, "mask_due", False):
                opt.update_mask(model, [(x, y)])
        opt_a.step(flatlab.per_sample(lambda idx, x=x, y=y: F.cross_entropy(a(x), y, reduction="none")))

        opt_b.step(step_closure(opt_b, b, x, y))
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(p, q)
