import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flatlab
from flatlab.analysis import (
    RelativeGradientDifference,
    linearity,
    relative_gradient_difference,
    sam_perturbation,
    sds_statistics,
)
from tests.helpers.nets import assert_unchanged, image_data, snapshot, split, tiny_cnn
from tests.helpers.reference import softmax_regression_grad, softmax_regression_losses


@pytest.fixture
def softmax_problem():
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (10,), generator=g)
    W, b = model.weight.detach().clone(), model.bias.detach().clone()
    return model, x, y, W, b


def hand_sam_step(W, b, x, y, rho, eps=1e-12):
    gW, gb = softmax_regression_grad(W, b, x, y)
    norm = math.sqrt(float((gW**2).sum() + (gb**2).sum()))
    eW, eb = rho * gW / (norm + eps), rho * gb / (norm + eps)
    return (gW, gb), (eW, eb)


def flat(*ts):
    return torch.cat([t.reshape(-1) for t in ts])


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_sam_perturbation_norm_and_swp():
    grads = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2)]
    eps = sam_perturbation(grads, 0.2)
    assert float(flat(*eps).norm()) == pytest.approx(0.2, rel=1e-5)
    for e, g in zip(eps, grads):  # same direction
        torch.testing.assert_close(e, g * (0.2 / float(flat(*grads).norm())))
    swp = sam_perturbation(grads, 0.2, beta=0.5, generator=torch.Generator().manual_seed(0))
    # the draw: Bernoulli(0.5) per tensor from the generator, as the optimizer draws
    kept = (torch.rand(3, generator=torch.Generator().manual_seed(0)) < 0.5).tolist()
    assert any(kept)
    norm_kept = float(flat(*[g for g, k in zip(grads, kept) if k]).norm())
    for e, g, k in zip(swp, grads, kept):  # normalised over the kept tensors, scaled by 1/beta
        torch.testing.assert_close(e, g * (0.2 / 0.5 / norm_kept) if k else torch.zeros_like(g))
    with pytest.raises(ValueError):
        sam_perturbation(grads, 0.1, beta=0.0)
    with pytest.raises(ValueError):
        sam_perturbation(grads, -1.0)


def test_sam_perturbation_is_the_perturbation_esam_applies():
    # one definition: the analysis' SWP perturbation equals w + eps - w of flatlab.ESAM's first
    # step, same seed, over many draws (including steps where the draw keeps no tensor at first)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    opt = flatlab.ESAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.3, beta=0.3, gamma=1.0, seed=7)
    generator = torch.Generator().manual_seed(7)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        w = [p.detach().clone() for p in model.parameters()]
        expected = sam_perturbation([p.grad for p in model.parameters()], 0.3, beta=0.3, generator=generator)
        opt.first_step()
        for p, w0, e in zip(model.parameters(), w, expected):
            torch.testing.assert_close(p.detach() - w0, e, rtol=1e-9, atol=1e-12)
        opt.second_step()


def test_relative_gradient_difference_matches_hand_reference(softmax_problem):
    model, x, y, W, b = softmax_problem
    batches = split(x, y, [4, 6])
    rgd = relative_gradient_difference(model, batches, rho=0.3, tiny=1e-12)
    assert rgd.ratio.shape == (2, W.numel() + b.numel())
    rows = []
    for row, (xb, yb) in zip(rgd.ratio, batches):
        (gW, gb), (eW, eb) = hand_sam_step(W, b, xb, yb, 0.3)
        sW, sb = softmax_regression_grad(W + eW, b + eb, xb, yb)
        expected = (flat(sW, sb) - flat(gW, gb)).abs() / (flat(gW, gb).abs() + 1e-12)
        torch.testing.assert_close(row, expected.float(), rtol=1e-4, atol=1e-7)
        rows.append(expected)
    below = sum(int((r < 1.0).sum()) for r in rows) / sum(r.numel() for r in rows)
    assert rgd.fraction_below(1.0) == pytest.approx(below)
    counts, edges = rgd.histogram(bins=20, range=(-6.0, 4.0))
    assert counts.sum() == rgd.ratio.numel() and edges.numel() == 21
    assert rgd.fraction_below(1.0) == pytest.approx(float((rgd.log10() < 0).float().mean()))


def test_histogram_keeps_exact_zeros_in_first_bin():
    rgd = RelativeGradientDifference(torch.tensor([[0.0, 1e-9, 0.5, 2.0, 1e9]]), 0.1)
    counts, _ = rgd.histogram(bins=10, range=(-6.0, 4.0))
    assert counts.sum() == 5 and counts[0] == 2 and counts[-1] == 1


def test_sds_statistics_match_hand_reference(softmax_problem):
    model, x, y, W, b = softmax_problem
    rho, gamma = 0.5, 0.3
    stats = sds_statistics(model, [(x, y)], rho=rho, gamma=gamma, seed=0)
    (gW, gb), (eW, eb) = hand_sam_step(W, b, x, y, rho)
    clean = softmax_regression_losses(W, b, x, y)
    perturbed = softmax_regression_losses(W + eW, b + eb, x, y)
    order = sorted(range(len(y)), key=lambda i: -float(perturbed[i] - clean[i]))
    plus, minus = order[:3], order[3:]  # round(0.3 * 10) = 3
    assert float(stats.loss_plus[0]) == pytest.approx(float(clean[plus].mean()), rel=1e-9)
    assert float(stats.loss_minus[0]) == pytest.approx(float(clean[minus].mean()), rel=1e-9)
    assert float(stats.sam_loss_plus[0]) == pytest.approx(float(perturbed[plus].mean()), rel=1e-9)
    assert float(stats.sam_loss_minus[0]) == pytest.approx(float(perturbed[minus].mean()), rel=1e-9)
    assert float(stats.sharpness_plus[0]) >= float(stats.sharpness_minus[0])  # by construction of B+
    g_full = flat(*softmax_regression_grad(W + eW, b + eb, x, y))
    g_plus = flat(*softmax_regression_grad(W + eW, b + eb, x[plus], y[plus]))
    g_minus = flat(*softmax_regression_grad(W + eW, b + eb, x[minus], y[minus]))
    assert float(stats.cos_plus[0]) == pytest.approx(cos(g_plus, g_full), abs=1e-9)
    assert float(stats.cos_minus[0]) == pytest.approx(cos(g_minus, g_full), abs=1e-9)
    assert float(stats.cos_plus_minus[0]) == pytest.approx(cos(g_plus, g_minus), abs=1e-9)
    rand = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:3]  # the seed's control subset
    g_rand = flat(*softmax_regression_grad(W + eW, b + eb, x[rand], y[rand]))
    assert float(stats.cos_rand[0]) == pytest.approx(cos(g_rand, g_full), abs=1e-9)
    means = stats.mean()
    assert set(means) >= {"cos_plus", "cos_minus", "cos_rand", "sharpness_plus", "sharpness_minus"}


def test_sds_custom_loss_uses_per_sample_vmap(softmax_problem):
    model, x, y, _, _ = softmax_problem

    def my_ce(out, target):  # a user loss: mean-reduced, not the built-in default
        return F.cross_entropy(out, target)

    a = sds_statistics(model, [(x, y)], rho=0.5, gamma=0.3)
    b = sds_statistics(model, [(x, y)], my_ce, rho=0.5, gamma=0.3)
    torch.testing.assert_close(a.loss_plus, b.loss_plus)
    torch.testing.assert_close(a.cos_minus, b.cos_minus)
    with pytest.raises(ValueError):
        sds_statistics(model, [(x, y)], gamma=1.0)


def test_linearity_matches_hand_reference(softmax_problem):
    model, x, y, W, b = softmax_problem
    batches = split(x, y, [5, 5])
    zeta = linearity(model, batches, rho=0.4)
    for z, (xb, yb) in zip(zeta, batches):
        (gW, gb), (eW, eb) = hand_sam_step(W, b, xb, yb, 0.4)
        l0 = softmax_regression_losses(W, b, xb, yb).mean()
        l1 = softmax_regression_losses(W + eW, b + eb, xb, yb).mean()
        expected = abs(float(l1 - l0 - flat(eW, eb) @ flat(gW, gb)))
        assert float(z) == pytest.approx(expected, rel=1e-8, abs=1e-14)
    # A quadratic loss has zeta = 0.5 eps^T H eps exactly: here a least-squares model.
    lin = nn.Linear(2, 1, bias=False).double()
    xs = torch.randn(6, 2, dtype=torch.float64)
    ys = torch.randn(6, 1, dtype=torch.float64)
    zq = linearity(lin, [(xs, ys)], F.mse_loss, rho=0.1)
    w = lin.weight.detach().reshape(-1)
    g = 2 * xs.T @ (xs @ w - ys.reshape(-1)) / 6
    e = 0.1 * g / (g.norm() + 1e-12)
    assert float(zq[0]) == pytest.approx(float(e @ (2 * xs.T @ xs / 6) @ e) / 2, rel=1e-8)


def test_train_mode_dropout_masks_shared_and_state_restored():
    model = tiny_cnn(dropout=0.5)
    x, y = image_data()
    model.train()
    snap = snapshot(model)
    # rho = 0: with the same dropout masks (and BatchNorm batch statistics) in both passes the two
    # gradients are identical, so every ratio is exactly zero.
    rgd = relative_gradient_difference(model, split(x, y, [8, 8]), rho=0.0, train_mode=True)
    assert torch.count_nonzero(rgd.ratio) == 0
    relative_gradient_difference(model, [(x, y)], rho=0.05, train_mode=True)
    sds_statistics(model, [(x, y)], rho=0.05, train_mode=True, beta=0.5)
    linearity(model, [(x, y)], rho=0.05, train_mode=True)
    assert_unchanged(model, snap)
    model.eval()
    snap = snapshot(model)
    relative_gradient_difference(model, [(x, y)], rho=0.05)
    sds_statistics(model, [(x, y)], rho=0.05)
    linearity(model, [(x, y)], rho=0.05, beta=0.5)
    assert_unchanged(model, snap)


def test_per_sample_losses_fall_back_when_vmap_fails(softmax_problem):
    model, x, y, _, _ = softmax_problem

    def unvmappable(out, target):
        if float(out.detach().abs().max()) > 1e6:  # .item()-style control flow breaks vmap
            raise AssertionError
        return F.cross_entropy(out, target)

    a = sds_statistics(model, [(x, y)], rho=0.5, gamma=0.3)
    b = sds_statistics(model, [(x, y)], unvmappable, rho=0.5, gamma=0.3)
    torch.testing.assert_close(a.sam_loss_plus, b.sam_loss_plus)
