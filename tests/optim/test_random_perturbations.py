"""RWP and bSAM, the methods that perturb at random, against reference loops written from the
authors' code (nblt/RWP's train_rwp_parallel.py; team-approx-bayes/bayesian-sam's optim.py) in
float64, drawing the noise the documented way: a generator per device, seeded by the first draw
of the optimizer's generator, one standard normal tensor per parameter in order."""

import pytest
import torch
import torch.nn.functional as F

import flatlab
from tests.helpers.nets import batches, tiny_net
from tests.helpers.reference import grad_at, run_flatlab
from tests.helpers.steps import step_closure

SEED = 5


def noise_generator(seed=SEED):
    """The generator the optimizer seeded with ``seed`` draws its noise from (on the CPU)."""
    first = torch.Generator().manual_seed(seed)
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (), generator=first, dtype=torch.int64)))


def float64_net():
    model = tiny_net(dtype=torch.float64)
    model.eval()  # BatchNorm on its running statistics: both loops see the same function
    return model


def data():
    return batches(n=4, dtype=torch.float64)


def test_rwp_matches_the_official_algorithm():
    model, ref = float64_net(), float64_net()
    gamma, alpha, lr = 0.05, 0.3, 0.1
    gen = noise_generator()
    sgd = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9)
    for x, y in data():
        w = [p.detach().clone() for p in ref.parameters()]
        g = grad_at(ref, w, x, y)
        eps = []
        for p in w:  # train_rwp_parallel.py: filter-wise std for 2+ dims, the whole norm (+ 1e-16) for vectors
            z = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if p.dim() > 1:
                std = gamma * p.reshape(p.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (p.dim() - 1)))
            else:
                std = gamma * (p.norm() + 1e-16)
            eps.append(z * std)
        g_p = grad_at(ref, [a + e for a, e in zip(w, eps)], x, y)
        for p, gi, gpi in zip(ref.parameters(), g, g_p):
            p.grad = alpha * gpi + (1 - alpha) * gi  # losses weighted 2 alpha, 2 (1 - alpha), DDP's mean
        sgd.step()
    opt = flatlab.RWP(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), rho=gamma, alpha=alpha, seed=SEED)
    got = run_flatlab(opt, model, data())
    # float64: the std is formed as gamma * norm * z here and (z * norm) * gamma there, rounding apart
    for a, b in zip(got, ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert all(not torch.equal(a, b) for a, b in zip(got, float64_net().parameters()))


def test_rwp_perturbation_does_not_depend_on_the_gradient():
    """The same state and seed on two different batches (two gradients at w) perturb alike: the two
    passes of a step are independent."""
    seen = []
    for (x, y) in batches(n=2):
        model = tiny_net()
        opt = flatlab.RWP(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.1, seed=SEED)

        def closure(x=x, y=y, model=model, opt=opt):
            opt.zero_grad()
            if opt.is_perturbed:
                seen.append([p - opt.state[p]["backup"] for p in model.parameters()])
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(*seen))
    assert all(e.abs().sum() > 0 for e in seen[0])  # every tensor moved, biases and BatchNorm included


def bsam_reference(ref, batches_, *, lr, rho, num_data, betas=(0.9, 0.999), decay=1e-3, damping=0.1):
    """bSAM as optim.py's build_bsam_optimizer writes it (one sub-batch, s_init = 1); the weights."""
    beta1, beta2 = betas
    gen = noise_generator()
    w = [p.detach().clone() for p in ref.parameters()]
    s = [torch.ones_like(p) for p in w]
    gm = [torch.zeros_like(p) for p in w]
    for x, y in batches_:
        noisy = [mu + torch.sqrt(1.0 / (num_data * si)) * torch.randn(mu.shape, generator=gen, dtype=mu.dtype)
                 for mu, si in zip(w, s)]
        g = grad_at(ref, noisy, x, y)
        g_p = grad_at(ref, [p + rho * gi / si for p, gi, si in zip(w, g, s)], x, y)
        gs = [torch.sqrt(si * (gi ** 2.0)) for gi, si in zip(g, s)]
        gm = [beta1 * m + (1 - beta1) * (gi + decay * p) for m, gi, p in zip(gm, g_p, w)]
        w = [p - lr * m / si for p, m, si in zip(w, gm, s)]
        s = [beta2 * si + (1 - beta2) * (gsi + damping + decay) for si, gsi in zip(s, gs)]
    return w, s


def test_bsam_matches_the_authors_algorithm():
    model, ref = float64_net(), float64_net()
    options = dict(lr=0.2, rho=0.05, num_data=500)
    expected_w, expected_s = bsam_reference(ref, data(), **options)
    base = flatlab.optim.BSAMBase(model.parameters(), lr=options["lr"], weight_decay=1e-3)
    opt = flatlab.BSAM(base, rho=options["rho"], num_data=options["num_data"], seed=SEED)
    got = run_flatlab(opt, model, data())
    # float64, in the official order of operations: equal up to the last bits
    for a, b in zip(got, expected_w):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    for p, s in zip(model.parameters(), expected_s):
        torch.testing.assert_close(base.precision(p), s, rtol=1e-13, atol=1e-15)
    assert all(not torch.equal(s, torch.ones_like(s)) for s in expected_s)


def test_pytorch_optimizer_bsam_is_not_the_authors_algorithm():
    """Why bsam is not pytorch_optimizer 4.1.0's BSAM step for step: at lr = 0 the authors' bSAM
    leaves the weights where they were (the noise and eps are only where gradients are taken),
    while pytorch_optimizer's leaves them at w + noise + eps, never taken back off."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    x, y = data()[0]
    theirs, ours = float64_net(), float64_net()
    start = [p.detach().clone() for p in ours.parameters()]
    other = pytorch_optimizer.BSAM(theirs.parameters(), num_data=500, lr=0.0, rho=0.05)
    step_closure(other, theirs, x, y)()  # its first step reads the gradients' presence
    other.step(step_closure(other, theirs, x, y))
    opt = flatlab.BSAM(flatlab.optim.BSAMBase(ours.parameters(), lr=0.0), rho=0.05, num_data=500, seed=SEED)
    run_flatlab(opt, ours, [(x, y)])
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), start))
    assert all(not torch.allclose(a, b) for a, b in zip(theirs.parameters(), start))


def test_bsam_with_rho_zero_is_its_base_alone():
    a, b = float64_net(), float64_net()
    opt = flatlab.BSAM(flatlab.optim.BSAMBase(a.parameters(), lr=0.2), rho=0.0, num_data=10, seed=SEED)
    base = flatlab.optim.BSAMBase(b.parameters(), lr=0.2)
    for x, y in data():
        opt.step(step_closure(opt, a, x, y))
        step_closure(base, b, x, y)()
        base.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert opt.sam_steps == 0


@pytest.mark.parametrize(
    "build, message",
    [(lambda m: flatlab.BSAM(torch.optim.SGD(m.parameters(), lr=0.1), num_data=10), "BSAMBase"),
     (lambda m: flatlab.BSAM(flatlab.optim.BSAMBase(m.parameters())), "num_data="),
     (lambda m: flatlab.BSAM(flatlab.optim.BSAMBase(m.parameters()), num_data=0), "num_data=0"),
     (lambda m: flatlab.optim.BSAMBase(m.parameters(), betas=(0.9, 1.0)), r"betas\[1\]=1.0"),
     (lambda m: flatlab.optim.BSAMBase(m.parameters(), damping=-1.0), "damping=-1.0"),
     (lambda m: flatlab.RWP(torch.optim.SGD(m.parameters(), lr=0.1), alpha=1.5), "alpha=1.5"),
     (lambda m: flatlab.SharpnessAware(torch.optim.SGD(m.parameters(), lr=0.1), shape=flatlab.optim.AsDrawn()),
      "as-drawn shape keeps a random direction"),
     (lambda m: flatlab.SharpnessAware(torch.optim.SGD(m.parameters(), lr=0.1), source=flatlab.optim.FilterNoise(),
                                       shape=flatlab.optim.AsDrawn(), ascent_steps=2), "ascent_steps=2")],
)
def test_bad_settings_are_refused_in_one_line(build, message):
    with pytest.raises(ValueError, match=message):
        build(tiny_net())


def test_bsam_first_pass_needs_step_with_a_closure():
    model = tiny_net()
    opt = flatlab.create_optimizer("bsam", model, lr=0.1, num_data=10)
    x, y = batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="step\\(closure\\)"):
        opt.first_step()


def test_bsam_in_the_registry_takes_its_own_base_and_num_data():
    model = tiny_net()
    opt = flatlab.create_optimizer("bsam", model, lr=0.3, betas=(0.8, 0.99), damping=0.2, num_data=7)
    assert isinstance(opt.base, flatlab.optim.BSAMBase)
    group = opt.base.param_groups[0]
    assert (group["lr"], group["betas"], group["damping"]) == (0.3, (0.8, 0.99), 0.2)
    assert opt.source.num_data == 7
    with pytest.raises(ValueError, match="takes no momentum"):
        flatlab.create_optimizer("bsam", model, lr=0.1, momentum=0.9, num_data=7)


def test_flatlab_train_gives_bsam_the_training_set_size_and_its_flags():
    from flatlab.errors import UsageError
    from flatlab.train import TrainConfig
    from flatlab.train.config import Layer
    from flatlab.train.optimizer import build_optimizer

    flags = TrainConfig.from_layers([Layer({"optimizer": "bsam", "damping": 0.2, "rho": 0.02}, None)])
    opt = build_optimizer(flags, tiny_net(), num_train=1234)
    assert opt.source.num_data == 1234 and opt.rho == 0.02
    assert opt.base.param_groups[0]["damping"] == 0.2 and "momentum" not in opt.base.param_groups[0]
    assert build_optimizer(flags.replace(num_data=10), tiny_net(), num_train=1234).source.num_data == 10
    with pytest.raises(UsageError, match="does not take damping"):
        TrainConfig.from_layers([Layer({"optimizer": "sam", "damping": 0.2}, None)])
    with pytest.raises(UsageError, match="does not take num_data"):
        TrainConfig.from_layers([Layer({"optimizer": "rwp", "num_data": 5}, None)])
    rwp = build_optimizer(TrainConfig.from_layers([Layer({"optimizer": "rwp", "alpha": 0.25}, None)]), tiny_net())
    assert rwp.descent.alpha == 0.25
