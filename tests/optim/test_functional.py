import math

import pytest
import torch

from flatlab.optim import functional as F


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_l2_perturbation_hand_computed():
    eps = F.lp_perturbation([t(3.0), t(4.0)], radius=0.5, p=2)
    assert torch.allclose(torch.cat(eps), t(0.3, 0.4))


def test_p3_perturbation_hand_computed():
    g = t(3.0, -4.0)
    rho, q = 0.2, 1.5  # q = p / (p - 1) for p = 3
    norm_q = (3.0**q + 4.0**q) ** (1 / q)
    expected = t(rho * math.sqrt(3.0) / norm_q ** (q - 1), -rho * 2.0 / norm_q ** (q - 1))
    (eps,) = F.lp_perturbation([g], radius=rho, p=3)
    assert torch.allclose(eps, expected)
    assert math.isclose(torch.linalg.vector_norm(eps, 3).item(), rho, rel_tol=1e-12)


def test_inf_perturbation_is_sign():
    (eps,) = F.lp_perturbation([t(2.0, -1.0, 0.0)], radius=0.1, p=math.inf)
    assert torch.equal(eps, t(0.1, -0.1, 0.0))


def test_adaptive_perturbation_hand_computed():
    g, w, bias_g, bias_w = t(1.0, 1.0), t(1.0, -2.0), t(2.0), t(5.0)
    rho, eta = 0.5, 0.01
    t1, t2 = 1.01, 2.01
    norm = math.sqrt(t1**2 + t2**2 + 2.0**2)  # the bias has T = 1
    eps = F.adaptive_perturbation([g, bias_g], [w, bias_w], [True, False], rho, eta)
    assert torch.allclose(eps[0], t(rho * t1**2 / norm, rho * t2**2 / norm))
    assert torch.allclose(eps[1], t(rho * 2.0 / norm))


def test_zero_gradient_gives_zero_perturbation():
    (eps,) = F.lp_perturbation([torch.zeros(3)], radius=0.1, p=2)
    assert torch.equal(eps, torch.zeros(3))


def test_projection_onto_l2_ball():
    out = F.project_lp_ball([t(3.0), t(4.0)], radius=1.0, p=2)
    assert torch.allclose(torch.cat(out), t(0.6, 0.8))
    inside = F.project_lp_ball([t(0.3), t(0.4)], radius=1.0, p=2)
    assert torch.equal(torch.cat(inside), t(0.3, 0.4))


def test_projection_onto_inf_ball_clamps():
    (out,) = F.project_lp_ball([t(0.5, -0.05, -2.0)], radius=0.1, p=math.inf)
    assert torch.equal(out, t(0.1, -0.05, -0.1))


def test_projection_onto_adaptive_ball():
    w, eta, rho = t(1.0, 3.0), 0.0, 1.0
    eps = [t(2.0, 0.0)]  # ||eps / T|| = 2 -> halved
    (out,) = F.project_adaptive_ball(eps, [w], [True], rho, eta)
    assert torch.allclose(out, t(1.0, 0.0))


def _lists(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (5,), (2, 3, 3, 3), (1,)]
    grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    weights = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    return grads, weights


@pytest.mark.parametrize("p", [2.0, 3.0, 1.5, math.inf])
def test_foreach_matches_single_tensor_lp(p):
    grads, _ = _lists(0)
    a = F.lp_perturbation(grads, 0.3, p, foreach=True)
    b = F.lp_perturbation(grads, 0.3, p, foreach=False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-15)
    pa = F.project_lp_ball([x * 7 for x in a], 0.3, p, foreach=True)
    pb = F.project_lp_ball([x * 7 for x in b], 0.3, p, foreach=False)
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-15)


def test_foreach_matches_single_tensor_adaptive():
    grads, weights = _lists(1)
    adaptive = [True, False, True, False]
    a = F.adaptive_perturbation(grads, weights, adaptive, 0.5, 0.01, foreach=True)
    b = F.adaptive_perturbation(grads, weights, adaptive, 0.5, 0.01, foreach=False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-15)
    pa = F.project_adaptive_ball([x * 3 for x in a], weights, adaptive, 0.5, 0.01, foreach=True)
    pb = F.project_adaptive_ball([x * 3 for x in b], weights, adaptive, 0.5, 0.01, foreach=False)
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("p", [2.0, 4.0, math.inf])
def test_perturbation_lies_on_the_sphere(p):
    grads, _ = _lists(2)
    eps = F.lp_perturbation(grads, 0.05, p)
    assert math.isclose(F.global_norm(eps, p).item(), 0.05, rel_tol=1e-10)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("p", [2.0, 3.0, math.inf])
def test_in_place_writes_the_same_eps_over_the_gradients(p, foreach):
    grads, _ = _lists(3)
    expected = F.lp_perturbation(grads, 0.3, p, foreach=foreach)
    work = [g.clone() for g in grads]
    out = F.lp_perturbation(work, 0.3, p, foreach=foreach, in_place=True)
    for x, y in zip(out, expected):
        assert torch.equal(x, y)
    if p != 3.0:  # (other p have no in-place form: the gradients stay as they were)
        assert all(x is w for x, w in zip(out, work))


def test_adaptive_in_place_matches():
    grads, weights = _lists(5)
    adaptive = [True, False, True, False]
    expected = F.adaptive_perturbation(grads, weights, adaptive, 0.5, 0.01)
    work = [g.clone() for g in grads]
    out = F.adaptive_perturbation(work, weights, adaptive, 0.5, 0.01, in_place=True)
    for x, y, w in zip(out, expected, work):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=0)
        assert x is w


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("foreach", [True, False])
def test_centralised_perturbation_hand_computed(in_place, foreach):
    # a 2x2 matrix: rows (1, 3) and (2, 2) have means 2 and 2; the vector is left as it is
    matrix, vector = torch.tensor([[1.0, 3.0], [2.0, 2.0]], dtype=torch.float64), t(4.0)
    norm = math.sqrt(1 + 9 + 4 + 4 + 16)  # of g before centring
    grads = [matrix.clone(), vector.clone()]
    eps = F.centralised_perturbation(grads, radius=0.5, foreach=foreach, in_place=in_place)
    torch.testing.assert_close(eps[0], 0.5 / norm * torch.tensor([[-1.0, 1.0], [0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(eps[1], t(0.5 * 4.0 / norm))
    assert (eps[0] is grads[0]) == in_place
    if not in_place:
        assert torch.equal(grads[0], matrix) and torch.equal(grads[1], vector)


def test_centralised_perturbation_of_a_kernel_has_zero_mean_per_output_channel():
    g = torch.randn(5, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (eps,) = F.centralised_perturbation([g], radius=0.1)
    assert eps.mean(dim=(1, 2, 3)).abs().max() < 1e-15
    assert torch.linalg.vector_norm(eps) < 0.1  # the norm is g's, taken before centring
