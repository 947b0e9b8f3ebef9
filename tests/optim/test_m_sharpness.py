"""m-sharpness (`m=`, `AscentGroups`): each group of m rows perturbed along its own gradient, the
groups' gradients at their own w + eps summed by share into the descent gradient."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import flatlab
from tests.helpers.nets import mlp

WORKER = Path(__file__).with_name("ddp_m_sharpness_worker.py")


def _data(n=3, batch=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (batch,), generator=g))
            for _ in range(n)]


def tiny_net(dtype=torch.float32):
    return mlp(dtype=dtype)


def _losses(model, x, y):
    return flatlab.per_sample(lambda idx: F.cross_entropy(model(x if idx is None else x[idx]),
                                                          y if idx is None else y[idx], reduction="none"),
                              size=len(x))


def _reference_step(model, x, y, m, rho, lr):
    """m-sharpness SAM written out: eps_k = rho g_k / ||g_k|| from the mean loss of group k at w,
    g_p,k at w + eps_k, the descent along sum_k (n_k / B) g_p,k, plain SGD."""
    params = list(model.parameters())
    w = [p.detach().clone() for p in params]
    descent = [torch.zeros_like(p) for p in params]
    for rows in torch.arange(len(x)).split(m):
        g = torch.autograd.grad(F.cross_entropy(model(x[rows]), y[rows]), params)
        norm = torch.sqrt(sum((t ** 2).sum() for t in g))
        with torch.no_grad():
            for p, w0, t in zip(params, w, g):
                p.copy_(w0 + rho * t / norm)
        gp = torch.autograd.grad(F.cross_entropy(model(x[rows]), y[rows]), params)
        with torch.no_grad():
            for d, t in zip(descent, gp):
                d.add_(t * (len(rows) / len(x)))
            for p, w0 in zip(params, w):
                p.copy_(w0)
    with torch.no_grad():
        for p, d in zip(params, descent):
            p.sub_(lr * d)


@pytest.mark.parametrize("m", [1, 4, 5])
def test_m_sharpness_equals_a_reference_loop(m):
    model, ref = tiny_net(dtype=torch.float64), tiny_net(dtype=torch.float64)
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05, m=m)
    for x, y in _data():
        opt.step(_losses(model, x, y))
        _reference_step(ref, x, y, m, 0.05, 0.1)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_m_sharpness_differs_from_sam_below_the_batch_and_is_sam_at_it():
    runs = {}
    for m in (None, 12, 4):
        model = tiny_net(dtype=torch.float64)
        opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05, m=m)
        for x, y in _data():
            opt.step(_losses(model, x, y))
        runs[m] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(runs[None], runs[12]))  # one group: SAM, bit for bit
    assert any((a - b).abs().max() > 1e-6 for a, b in zip(runs[None], runs[4]))


@pytest.mark.parametrize("name", ["wsam", "gsam", "looksam", "rst", "asam"])
def test_m_at_the_batch_is_the_method_bit_for_bit(name):
    options = {"seed": 3} if name == "rst" else {}
    a, b = tiny_net(dtype=torch.float64), tiny_net(dtype=torch.float64)
    opt_a = flatlab.create_optimizer(name, a, lr=0.1, momentum=0.9, **options)
    opt_b = flatlab.create_optimizer(name, b, lr=0.1, momentum=0.9, m=64, **options)
    for x, y in _data():
        opt_a.step(_losses(a, x, y))
        opt_b.step(_losses(b, x, y))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_a_descent_that_reads_the_gradient_at_w_gets_the_groups_sum():
    """WSAM (coupled) descends along g + alpha (g_p - g): with m-sharpness g is the batch's gradient
    at w (the groups' sum by share) and g_p the groups' perturbed gradients summed likewise."""
    model, ref = tiny_net(dtype=torch.float64), tiny_net(dtype=torch.float64)
    opt = flatlab.create_optimizer("wsam", model, lr=0.1, gamma=0.75, decoupled=False, m=4)  # alpha = 3
    x, y = _data(n=1)[0]
    opt.step(_losses(model, x, y))
    params = list(ref.parameters())
    g = torch.autograd.grad(F.cross_entropy(ref(x), y), params)  # the sum by share of the groups' means
    w = [p.detach().clone() for p in params]
    _reference_step(ref, x, y, 4, 0.05, 1.0)  # w - 1.0 * g_p (summed), i.e. g_p = w - ref
    g_p = [w0 - p.detach() for w0, p in zip(w, params)]
    for p, w0, a, b in zip(model.parameters(), w, g, g_p):
        torch.testing.assert_close(p, w0 - 0.1 * (a + 3.0 * (b - a)), rtol=1e-12, atol=1e-14)


def test_m_sharpness_composes_with_micro_batches():
    a, b = tiny_net(dtype=torch.float64), tiny_net(dtype=torch.float64)
    opt_a = flatlab.SAM(torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), m=4)
    opt_b = flatlab.SAM(torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9), m=4)
    for x, y in _data():
        opt_a.step(_losses(a, x, y))
        micro = [(x[:5], y[:5]), (x[5:], y[5:])]  # groups straddle the micro-batches
        opt_b.step(flatlab.micro_batches(micro, lambda batch, idx: F.cross_entropy(
            b(batch[0] if idx is None else batch[0][idx]), batch[1] if idx is None else batch[1][idx],
            reduction="none")))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_m_sharpness_under_a_grad_scaler_equals_the_unscaled_step():
    a, b = tiny_net(), tiny_net()
    opt_a = flatlab.SAM(torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), m=4)
    opt_b = flatlab.SAM(torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9), m=4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for x, y in _data():
        x = x.float()
        opt_a.step(_losses(a, x, y))
        opt_b.step(_losses(b, x, y), scaler=scaler)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_nonfinite_group_skips_the_whole_step():
    model = tiny_net(dtype=torch.float64)
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), m=4)
    x, y = _data(n=1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def losses(idx):
        calls.append(idx)
        out = F.cross_entropy(model(x[idx]), y[idx], reduction="none")
        return out * float("nan") if len(calls) == 3 else out  # the second group's pass at w

    opt.step(flatlab.per_sample(losses, size=len(x)))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert not opt.base.state  # no momentum taken from a skipped step


@pytest.mark.parametrize("name, match", [("s2sam", "two-pass"), ("aesam", "whole batch"), ("fsam", "state"),
                                         ("vasso", "state"), ("ssam-d", "state"), ("esam", "samples and m")])
def test_combinations_without_a_per_group_meaning_are_refused(name, match):
    with pytest.raises(ValueError, match=match):
        flatlab.create_optimizer(name, tiny_net(), lr=0.1, momentum=0.9, m=4)


def test_a_closure_that_does_not_know_its_batch_is_refused():
    model = tiny_net()
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1), m=4)
    x, y = _data(n=1)[0]
    with pytest.raises(TypeError, match="size="):
        opt.step(flatlab.per_sample(lambda idx: F.cross_entropy(model(x.float()), y, reduction="none")))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_ddp_replicas_with_m_sharpness_equal_one_process_with_the_same_groups():
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1",
                               "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                              os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("equal") == 2
