"""Lookbehind-SAM against a loop written from the official algorithm (chandar-lab/Lookbehind-SAM,
lookbehind.py and example_cifar.py), on the float64 MLP; its cost, skips and refusals."""

import pytest
import torch
import torch.nn.functional as F

import flatlab
from tests.helpers.nets import CountingNet, batches, tiny_mlp, tiny_net, weights
from tests.helpers.reference import reference_batches, run_flatlab
from tests.helpers.steps import make, run_step, step_closure


def official_loop(model, data, rho, k, alpha, lr, momentum, weight_decay):
    """The official training loop's arithmetic, batch by batch: k times on the same batch, the
    ascent at the current point (eps = rho g / (||g|| + 1e-16) added and kept) and the descent (the
    cached fast weights loaded, the SGD step taken with the gradient at the perturbed point, the
    result cached, the perturbed point put back); then every tensor is set to its cached fast
    weights interpolated with its slow ones, alpha = None being the adaptive alpha
    (cos(first descent - slow, fast - slow) + 1) / 2 per tensor."""
    params = list(model.parameters())
    base = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    cached = [p.detach().clone() for p in params]
    slow = [p.detach().clone() for p in params]
    first = None

    def backward(x, y):
        base.zero_grad()
        F.cross_entropy(model(x), y).backward()

    for x, y in data:
        for i in range(k):
            backward(x, y)
            with torch.no_grad():
                norm = torch.norm(torch.stack([torch.norm(p.grad) for p in params])) + 1e-16
                for p in params:
                    p.add_(p.grad * (rho / norm))
            backward(x, y)
            with torch.no_grad():
                backup = [p.detach().clone() for p in params]
                for p, c in zip(params, cached):
                    p.copy_(c)
            base.step()
            with torch.no_grad():
                if alpha is None and i == 0:
                    first = [p.detach().clone() for p in params]
                cached = [p.detach().clone() for p in params]
                for p, b in zip(params, backup):
                    p.copy_(b)
        with torch.no_grad():
            for j, p in enumerate(params):
                p.copy_(cached[j])
                a = alpha
                if a is None:
                    cos = F.cosine_similarity((first[j] - slow[j]).flatten(), (p - slow[j]).flatten(), dim=0)
                    a = ((cos + 1.0) / 2.0).item()
                p.mul_(a).add_(slow[j], alpha=1.0 - a)
                cached[j] = p.detach().clone()
                slow[j] = p.detach().clone()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("k, alpha", [(2, None), (3, None), (2, 0.5), (5, 0.8)])
def test_matches_the_official_algorithm_in_float64(k, alpha):
    options = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    rho = 0.1
    expected = official_loop(tiny_mlp(), reference_batches(), rho, k, alpha, **options)
    model = tiny_mlp()
    opt = flatlab.LookbehindSAM(torch.optim.SGD(model.parameters(), **options), rho=rho, k=k, alpha=alpha)
    got = run_flatlab(opt, model, reference_batches())
    moved = max(float((a - b).abs().max()) for a, b in zip(expected, weights(tiny_mlp())))
    assert moved > 0.05
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert opt.steps == opt.sam_steps == len(reference_batches())


def test_adaptive_alpha_differs_from_a_static_one():
    # the control for the test above: the two alphas must lead to different weights there
    runs = []
    for alpha in (None, 0.5):
        model = tiny_mlp()
        opt = flatlab.LookbehindSAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.1, alpha=alpha)
        runs.append(run_flatlab(opt, model, reference_batches()))
    assert max(float((a - b).abs().max()) for a, b in zip(*runs)) > 1e-4


def test_one_step_with_alpha_one_is_sam_bit_for_bit():
    a, b = tiny_mlp(), tiny_mlp()
    lookbehind = flatlab.create_optimizer("lookbehind-sam", a, lr=0.1, momentum=0.9, weight_decay=5e-4, k=1,
                                          alpha=1.0)
    sam = flatlab.create_optimizer("sam", b, lr=0.1, momentum=0.9, weight_decay=5e-4)
    for p, q in zip(run_flatlab(lookbehind, a, reference_batches()), run_flatlab(sam, b, reference_batches())):
        assert torch.equal(p, q)


def test_between_steps_the_weights_are_the_slow_weights(data):
    # the weights read outside a step (evaluation, state_dict) are phi, which moves by alpha times the
    # fast weights' displacement: with alpha = 0.5, half of what alpha = 1 moves
    moved = {}
    for alpha in (1.0, 0.5):
        model = tiny_net()
        model.eval()
        start = weights(model)
        opt = make("lookbehind-sam", model, alpha=alpha)
        run_step(opt, model, *data[0])
        assert not opt.is_perturbed
        outside = weights(model)
        with opt.unperturbed():
            assert all(torch.equal(p, q) for p, q in zip(outside, model.parameters()))
        moved[alpha] = [p - s for p, s in zip(model.parameters(), start)]
    for full, half in zip(moved[1.0], moved[0.5]):
        torch.testing.assert_close(half, full / 2, rtol=1e-5, atol=1e-7)


def test_inside_a_step_unperturbed_holds_the_slow_weights(data):
    x, y = data[0]
    model = tiny_net()
    start = weights(model)
    opt = make("lookbehind-sam", model, k=3)
    seen = []

    def closure():
        opt.zero_grad()
        seen.append(opt.is_perturbed)
        with opt.unperturbed():
            assert all(torch.equal(p, s) for p, s in zip(model.parameters(), start))
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert seen == [False] + [True] * 5  # only the first pass runs at phi


@pytest.mark.parametrize("k", [1, 2, 3])
def test_passes_counted_on_a_model_match_the_declared_ones(k):
    model = CountingNet()
    opt = make("lookbehind-sam", model, k=k)
    data = batches(n=5)
    for x, y in data:
        run_step(opt, model, x, y)
    assert model.forwards == model.backwards == 2 * k * len(data)
    declared = flatlab.optim.step_passes(opt)
    assert sum(p.rate for p in declared) == 2 * k
    assert all(p.batch == 1.0 and p.backward for p in declared)


@pytest.mark.parametrize("scaled", [False, True])
def test_a_nonfinite_second_inner_step_undoes_the_first(scaled, data):
    # the first inner step is finite and moves the momentum; the second one's descent is not: the
    # whole step is skipped, weights and momentum as before it
    model = tiny_net()
    opt = make("lookbehind-sam", model)
    run_step(opt, model, *data[0])
    before = weights(model)
    momentum = [s["momentum_buffer"].clone() for s in opt.base.state.values()]
    x, y = data[1]
    calls = []

    def losses(idx):
        calls.append(idx)
        out = F.cross_entropy(model(x), y, reduction="none")
        return out * float("nan") if len(calls) == 4 else out

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if scaled else None
    opt.step(flatlab.per_sample(losses), scaler=scaler)
    assert len(calls) == 4
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.equal(a, s["momentum_buffer"]) for a, s in zip(momentum, opt.base.state.values()))
    assert opt.steps == 2 and opt.sam_steps == 1 and not opt.is_perturbed
    if scaled:
        assert scaler.get_scale() < 2.0**8
    run_step(opt, model, *data[2])  # and training goes on from there
    assert opt.steps == 3 and opt.sam_steps == 2


def test_a_nonfinite_first_step_leaves_no_base_state(data):
    model = tiny_net()
    before = weights(model)
    opt = make("lookbehind-sam", model)
    x, y = data[0]
    calls = []

    def losses(idx):
        calls.append(idx)
        out = F.cross_entropy(model(x), y, reduction="none")
        return out * float("nan") if len(calls) == 4 else out

    opt.step(flatlab.per_sample(losses))
    assert len(opt.base.state) == 0  # the first inner step created the momentum: gone again
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_closure_that_raises_leaves_the_slow_weights(data):
    model = tiny_net()
    before = weights(model)
    opt = make("lookbehind-sam", model)
    x, y = data[0]
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 3:
            raise KeyError("boom")
        return step_closure(opt, model, x, y)()

    with pytest.raises(KeyError):
        opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not opt.is_perturbed and opt.steps == 0
    run_step(opt, model, *data[1])
    assert opt.steps == 1


def test_step_hooks_fire_once_per_step(data):
    model = tiny_net()
    flatlab.SharpnessAware(torch.optim.SGD(tiny_net().parameters(), lr=0.1))  # torch hooks SharpnessAware.step
    opt = make("lookbehind-sam", model)
    fired = []
    opt.register_step_pre_hook(lambda *_: fired.append("pre"))
    opt.register_step_post_hook(lambda *_: fired.append("post"))
    for x, y in data:
        run_step(opt, model, x, y)
    assert fired == ["pre", "post"] * len(data)


def test_the_base_optimizer_is_the_one_given():
    model = tiny_net()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = flatlab.LookbehindSAM(sgd, k=3, alpha=0.5)
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, flatlab.SharpnessAware)
    assert opt.param_groups is sgd.param_groups and opt.base.state is sgd.state
    assert repr(opt).startswith("LookbehindSAM(k=3, alpha=0.5, rho=0.05") and "SGD" in repr(opt)


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(k=0), "k=0"), (dict(k=1.5), "k=1.5"), (dict(alpha=0.0), "alpha=0.0"), (dict(alpha=1.5), "alpha=1.5"),
     (dict(ascent_steps=2), "ascent_steps"), (dict(every=2), "every")],
)
def test_bad_options_are_refused_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        flatlab.create_optimizer("lookbehind-sam", tiny_net(), lr=0.1, **kwargs)


def test_two_phase_api_and_a_step_without_closure_are_refused(data):
    model = tiny_net()
    opt = make("lookbehind-sam", model)
    F.cross_entropy(model(data[0][0]), data[0][1]).backward()
    for call in (opt.first_step, opt.second_step, opt.step):
        with pytest.raises(RuntimeError, match="step\\(closure\\)"):
            call()


def test_the_train_flags_reach_it():
    from flatlab.errors import UsageError
    from flatlab.train.config import TrainConfig
    from flatlab.train.optimizer import build_optimizer, check_optimizer

    opt = build_optimizer(TrainConfig(optimizer="lookbehind-sam", rho=0.1, k=3, alpha=0.5), tiny_net())
    assert isinstance(opt, flatlab.LookbehindSAM) and (opt.rho, opt.k, opt.alpha) == (0.1, 3, 0.5)
    assert build_optimizer(TrainConfig(optimizer="lookbehind-sam"), tiny_net()).alpha is None  # adaptive
    with pytest.raises(UsageError, match="alpha must be in \\(0, 1\\], got alpha=1.5"):
        check_optimizer(TrainConfig(optimizer="lookbehind-sam", alpha=1.5))
