import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatlab.analysis import (
    adversarial_directions,
    averaged_loss_surface_2d,
    filter_normalize,
    gaussian_direction_pairs,
    gradient_direction,
    loss_surface_1d,
    loss_surface_2d,
    random_direction,
)
from tests.helpers.nets import assert_unchanged, image_data, snapshot, split, tiny_cnn


@pytest.fixture
def problem():
    model = tiny_cnn()
    x, y = image_data()
    # Trained-looking BatchNorm statistics, so eval mode differs visibly from train mode.
    model[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    model[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 1.5]))
    model.train()
    return model, x, y


def manual_eval(model, batches, shift=None):
    """Loss/accuracy of a deep copy of ``model`` in eval mode with ``shift`` added to its parameters."""
    import copy

    m = copy.deepcopy(model).eval()
    if shift is not None:
        with torch.no_grad():
            for p, s in zip(m.parameters(), shift):
                p.add_(s)
    total, loss, correct = 0, 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            out = m(x)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
    return loss / total, correct / total


def test_origin_equals_plain_eval_loss(problem):
    model, x, y = problem
    batches = split(x, y, [5, 11])
    d1, d2 = random_direction(model, seed=0), random_direction(model, seed=1)
    surf = loss_surface_2d(model, batches, d1, d2, [-1.0, 0.0, 1.0], [0.0, 0.5])
    loss, acc = manual_eval(model, batches)
    assert surf.loss.shape == (3, 2) and surf.accuracy.shape == (3, 2)
    assert float(surf.loss[1, 0]) == pytest.approx(loss, rel=1e-6)
    assert float(surf.accuracy[1, 0]) == pytest.approx(acc)
    curve = loss_surface_1d(model, batches, d1, [0.0])
    assert float(curve.loss[0]) == pytest.approx(loss, rel=1e-6)


def test_surface_points_match_shifted_model(problem):
    model, x, y = problem
    batches = [(x, y)]
    d1, d2 = random_direction(model, seed=3), random_direction(model, seed=4)
    xs, ys = torch.tensor([-0.5, 0.25]), torch.tensor([0.75, -1.0, 0.1])
    surf = loss_surface_2d(model, batches, d1, d2, xs, ys)
    for i, a in enumerate(xs.tolist()):
        for j, b in enumerate(ys.tolist()):
            loss, acc = manual_eval(model, batches, [a * t + b * u for t, u in zip(d1, d2)])
            assert float(surf.loss[i, j]) == pytest.approx(loss, rel=1e-5)
            assert float(surf.accuracy[i, j]) == pytest.approx(acc)
    curve = loss_surface_1d(model, batches, d1, xs)
    for i, a in enumerate(xs.tolist()):
        assert float(curve.loss[i]) == pytest.approx(
            manual_eval(model, batches, [a * t for t in d1])[0], rel=1e-5
        )


def test_filter_normalisation_norms_and_zero_1d(problem):
    model, _, _ = problem
    d = random_direction(model, seed=0)
    for (name, w), t in zip(model.named_parameters(), d):
        if w.dim() <= 1:  # conv/linear biases and BatchNorm weight/bias
            assert torch.count_nonzero(t) == 0, name
            continue
        w_norms = w.detach().reshape(w.shape[0], -1).norm(dim=1)
        d_norms = t.reshape(t.shape[0], -1).norm(dim=1)
        torch.testing.assert_close(d_norms, w_norms, rtol=1e-5, atol=1e-7)
    raw = [torch.randn_like(p) for p in model.parameters()]
    for t, r in zip(filter_normalize(raw, model), raw):
        if t.dim() > 1:  # rescaling filters keeps their direction
            cos = F.cosine_similarity(t.reshape(t.shape[0], -1), r.reshape(r.shape[0], -1), dim=1)
            torch.testing.assert_close(cos, torch.ones_like(cos))


def test_directions_are_seeded():
    model = tiny_cnn()
    a, b, c = (
        random_direction(model, seed=0),
        random_direction(model, seed=0),
        random_direction(model, seed=1),
    )
    assert all(torch.equal(s, t) for s, t in zip(a, b))
    assert not all(torch.equal(s, t) for s, t in zip(a, c))
    raw = random_direction(model, seed=0, normalization=None)
    assert all(torch.count_nonzero(t) > 0 for t in raw)
    with pytest.raises(ValueError):
        random_direction(model, normalization="layer")


def test_weights_restored_bit_exactly(problem):
    model, x, y = problem
    snap = snapshot(model)
    d1, d2 = random_direction(model, seed=0), random_direction(model, seed=1)
    grid = torch.linspace(-1, 1, 3)
    loss_surface_2d(model, [(x, y)], d1, d2, grid, grid)
    loss_surface_1d(model, [(x, y)], d1, grid)
    averaged_loss_surface_2d(model, [(x, y)], gaussian_direction_pairs(model, 2), grid, grid)
    gradient_direction(model, [(x, y)])
    adversarial_directions(model, (x, y))
    assert_unchanged(model, snap)


def test_weights_restored_when_evaluation_fails(problem):
    model, x, y = problem
    snap = snapshot(model)
    calls = []

    def flaky_loss(out, target):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return F.cross_entropy(out, target)

    with pytest.raises(RuntimeError, match="boom"):
        loss_surface_1d(model, [(x, y)], random_direction(model), [0.0, 0.5, 1.0], flaky_loss)
    assert_unchanged(model, snap)
    with pytest.raises(ValueError):
        loss_surface_1d(model, [(x, y)], random_direction(model)[:-1], [0.0])


def test_gaussian_pairs_orthogonal_and_average(problem):
    model, x, y = problem
    pairs = gaussian_direction_pairs(model, groups=3, seed=0, normalization=None)
    assert len(pairs) == 3
    for d1, d2 in pairs:
        f1, f2 = torch.cat([t.reshape(-1) for t in d1]), torch.cat([t.reshape(-1) for t in d2])
        assert abs(float(f1 @ f2)) < 1e-4 * float(f1.norm() * f2.norm())
    xs, ys = [0.0, 0.5], [-0.5, 0.0, 0.5]
    avg = averaged_loss_surface_2d(model, [(x, y)], pairs, xs, ys)
    single = [loss_surface_2d(model, [(x, y)], a, b, xs, ys) for a, b in pairs]
    torch.testing.assert_close(avg.loss, torch.stack([s.loss for s in single]).mean(0))
    torch.testing.assert_close(avg.accuracy, torch.stack([s.accuracy for s in single]).mean(0))
    # Every group passes through the same trained weights at the origin.
    torch.testing.assert_close(avg.loss[0, 1], single[0].loss[0, 1])


def eval_grad(model, x, y):
    model.eval()
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    model.train()
    return grads


def test_gradient_and_adversarial_directions(problem):
    model, x, y = problem
    g = torch.cat([t.reshape(-1) for t in eval_grad(model, x, y)])
    d = torch.cat([t.reshape(-1) for t in gradient_direction(model, split(x, y, [6, 10]))])
    torch.testing.assert_close(d, g / g.norm(), rtol=1e-5, atol=1e-7)

    dx, dy = adversarial_directions(model, (x, y), lr=0.1, seed=0, orthogonalize=False)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    gx = eval_grad(model, x[perm[:8]], y[perm[:8]])
    gy = eval_grad(model, x[perm[8:]], y[perm[8:]])
    for a, b in zip(dx, gx):
        torch.testing.assert_close(a, 0.1 * b, rtol=1e-5, atol=1e-8)
    for a, b in zip(dy, gy):
        torch.testing.assert_close(a, 0.1 * b, rtol=1e-5, atol=1e-8)
    ox, oy = adversarial_directions(model, (x, y), lr=0.1, seed=0)
    fx, fy = torch.cat([t.reshape(-1) for t in ox]), torch.cat([t.reshape(-1) for t in oy])
    assert abs(float(fx @ fy)) < 1e-5 * float(fx.norm() * fy.norm())
    assert float(fy.norm()) == pytest.approx(float(torch.cat([t.reshape(-1) for t in dy]).norm()), rel=1e-5)


def test_accuracy_nan_for_non_classifier_outputs():
    model = nn.Linear(3, 1)
    x, y = torch.randn(5, 3), torch.randn(5, 1)
    curve = loss_surface_1d(model, [(x, y)], random_direction(model), [0.0, 1.0], F.mse_loss)
    assert torch.isnan(curve.accuracy).all()
    assert torch.isfinite(curve.loss).all()
