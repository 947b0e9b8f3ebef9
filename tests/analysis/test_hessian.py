import math

import pytest
import torch

from flatlab.analysis import (
    gaussian_density,
    hessian_vector_product,
    hutchinson,
    hutchinson_trace,
    lanczos,
    spectral_density,
    stochastic_lanczos_quadrature,
    top_eigenvalues,
)
from tests.helpers.nets import assert_unchanged, image_data, snapshot, split, tiny_cnn, tiny_mlp, vector_batches
from tests.helpers.reference import Quadratic, full_hessian, quadratic_batches, quadratic_loss


@pytest.fixture(scope="module")
def mlp_problem():
    model = tiny_mlp()
    x, y = vector_batches(1, 24, features=4, seed=1, dtype=torch.float64)[0]
    H = full_hessian(model, x, y)
    return model, x, y, H


def test_hvp_equals_full_hessian_times_vector(mlp_problem):
    model, x, y, H = mlp_problem
    # Unequal batch sizes: the product must be the sample-weighted mean, i.e. that of the whole set.
    hvp = hessian_vector_product(model, split(x, y, [10, 14]))
    v = torch.randn(hvp.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(hvp(v), H @ v, rtol=1e-10, atol=1e-12)


def test_lanczos_top_eigenvalues_match_eigvalsh(mlp_problem):
    model, x, y, H = mlp_problem
    expected = torch.linalg.eigvalsh(H).flip(0)
    n = H.shape[0]
    exact = top_eigenvalues(model, split(x, y, [12, 12]), k=5, iters=n)
    torch.testing.assert_close(exact.eigenvalues, expected[:5], rtol=1e-9, atol=1e-11)
    assert exact.ratio == pytest.approx(float(expected[0] / expected[4]), rel=1e-9)
    # Fewer steps than parameters: the extreme Ritz values have converged already.
    partial = top_eigenvalues(model, [(x, y)], k=3, iters=30)
    torch.testing.assert_close(partial.eigenvalues, expected[:3], rtol=1e-7, atol=1e-9)


def test_lanczos_eigenvectors_are_eigenvectors(mlp_problem):
    model, x, y, H = mlp_problem
    res = top_eigenvalues(model, [(x, y)], k=2, iters=H.shape[0], return_vectors=True)
    for lam, vec in zip(res.eigenvalues, res.eigenvectors):
        v = torch.cat([t.reshape(-1) for t in vec])
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-10)
        torch.testing.assert_close(H @ v, lam * v, rtol=0, atol=1e-8)


def test_lanczos_known_spectrum_with_multiplicities():
    lam = torch.tensor([9.0, 7.0, 7.0, 4.0, 2.5, 1.0, 1.0, 1.0, -0.5, -3.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(
        torch.randn(10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    A = q @ torch.diag(lam) @ q.T
    res = lanczos(lambda v: A @ v, 10, k=6, iters=10, seed=1)
    torch.testing.assert_close(res.eigenvalues, lam[:6], rtol=0, atol=1e-10)


def test_lanczos_seed_determinism_and_validation():
    A = torch.diag(torch.arange(1.0, 21.0, dtype=torch.float64))
    a = lanczos(lambda v: A @ v, 20, k=2, iters=8, seed=5).eigenvalues
    b = lanczos(lambda v: A @ v, 20, k=2, iters=8, seed=5).eigenvalues
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        lanczos(lambda v: A @ v, 20, k=0)
    with pytest.raises(ValueError):
        lanczos(lambda v: A @ v, 20, k=5, iters=3)
    with pytest.raises(ValueError):
        lanczos(lambda v: A @ v, 3, k=5)


def test_top_eigenvalues_of_quadratic_module():
    eig = [12.0, 6.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.25]
    model = Quadratic(eig)
    res = top_eigenvalues(model, quadratic_batches(), quadratic_loss, k=5, iters=8)
    torch.testing.assert_close(
        res.eigenvalues, torch.tensor(eig[:5], dtype=torch.float64), rtol=1e-10, atol=0
    )
    assert res.ratio == pytest.approx(6.0)
    assert top_eigenvalues(model, quadratic_batches(), quadratic_loss, k=3, iters=8).ratio is None


def test_hutchinson_within_four_standard_errors(mlp_problem):
    model, x, y, H = mlp_problem
    est = hutchinson_trace(model, [(x, y)], samples=60, seed=0)
    assert est.stderr > 0
    assert abs(est.trace - float(H.trace())) < 4 * est.stderr
    assert est.samples.shape == (60,)
    # Rademacher probes make the estimator exact for a diagonal operator.
    D = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    assert hutchinson(lambda v: D @ v, 5, samples=3).trace == pytest.approx(15.0)


def test_slq_density_integrates_to_one_and_peaks_at_eigenvalues():
    lam = [1.0] * 20 + [4.0] * 12 + [10.0] * 8
    model = Quadratic(lam)
    sd = spectral_density(model, quadratic_batches(), quadratic_loss, runs=4, iters=15, sigma=0.2)
    area = float(torch.trapezoid(sd.density, sd.grid))
    assert area == pytest.approx(1.0, abs=1e-3)
    for w in sd.weights:
        assert float(w.sum()) == pytest.approx(1.0, abs=1e-10)

    def density_at(t):
        return float(sd.density[torch.argmin((sd.grid - t).abs())])

    for peak in (1.0, 4.0, 10.0):
        window = (sd.grid - peak).abs() < 0.5
        top = sd.grid[window][torch.argmax(sd.density[window])]
        assert abs(float(top) - peak) < 0.05
        assert density_at(peak) > 50 * density_at(7.0)
    # The mass near each eigenvalue approximates its multiplicity share.
    mass = float(torch.trapezoid(sd.density * ((sd.grid - 1.0).abs() < 1.0), sd.grid))
    assert mass == pytest.approx(0.5, abs=0.2)


def test_slq_on_matrix_and_default_grid():
    A = torch.diag(torch.linspace(-1.0, 3.0, 30, dtype=torch.float64))
    nodes, weights = stochastic_lanczos_quadrature(lambda v: A @ v, 30, runs=3, iters=30, seed=0)
    grid, density, sigma = gaussian_density(nodes, weights)
    assert sigma == pytest.approx(0.04, rel=1e-6)
    assert float(grid.min()) < -1.0 and float(grid.max()) > 3.0
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-3)
    # Quadrature is exact for v^T A v, which for a diagonal A and a normalised Rademacher v is tr(A)/n.
    for n, w in zip(nodes, weights):
        assert float(n @ w) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("train_mode", [False, True])
def test_model_left_untouched(train_mode):
    model = tiny_cnn()
    x, y = image_data()
    model.train()
    model[1].running_mean.fill_(0.3)  # non-default statistics, to see them survive
    snap = snapshot(model)
    batches = split(x, y, [8, 8])
    top_eigenvalues(model, batches, k=2, iters=6, train_mode=train_mode)
    hutchinson_trace(model, batches, samples=2, train_mode=train_mode)
    spectral_density(model, batches, runs=1, iters=4, train_mode=train_mode)
    assert_unchanged(model, snap)


def test_eval_mode_uses_running_stats():
    # In eval mode BatchNorm is a fixed affine map, so the Hessian must not depend on how the data
    # is split into batches; in train mode it does.
    model = tiny_cnn().double()
    x, y = image_data()
    x = x.double()
    v = torch.randn(
        sum(p.numel() for p in model.parameters()),
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    whole = hessian_vector_product(model, [(x, y)])(v)
    halves = hessian_vector_product(model, split(x, y, [8, 8]))(v)
    torch.testing.assert_close(whole, halves, rtol=1e-9, atol=1e-12)
    whole_t = hessian_vector_product(model, [(x, y)], train_mode=True)(v)
    halves_t = hessian_vector_product(model, split(x, y, [8, 8]), train_mode=True)(v)
    assert not torch.allclose(whole_t, halves_t)
    assert math.isfinite(float(whole_t.norm()))
