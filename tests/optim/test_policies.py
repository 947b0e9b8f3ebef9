"""The coordinate and sample policies: masks, Fisher scores, tensor draws, data selection."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

import flatlab
from flatlab.optim import SharpnessSensitive, empirical_fisher
from tests.helpers.nets import batches, tiny_net, weights
from tests.helpers.steps import make, run_step


def total(masks):
    return sum(int(m.sum()) for m in masks)


@pytest.mark.parametrize("mask", ["fisher", "dynamic"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_mask_density_is_exactly_one_minus_sparsity(mask, sparsity):
    model = tiny_net()
    n = sum(p.numel() for p in model.parameters())
    opt = flatlab.SSAM(
        torch.optim.SGD(model.parameters(), lr=0.1), sparsity=sparsity, mask=mask, num_samples=8,
        update_interval=1, seed=0,
    )
    expected = round((1 - sparsity) * n)
    assert total(opt.coordinates.mask_list()) == expected
    for x, y in batches(3):
        run_step(opt, model, x, y)
        assert total(opt.coordinates.mask_list()) == expected
    assert opt.coordinates.refreshes >= 2
    assert all(m.dtype == torch.bool for m in opt.coordinates.mask_list())


def test_ssam_perturbs_only_masked_coordinates(data):
    x, y = data[0]
    model = tiny_net()
    opt = flatlab.SSAM(torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.7, mask="dynamic", seed=0)
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.first_step()
    for p, g, m in zip(model.parameters(), grads, opt.coordinates.mask_list()):
        eps = p - opt.state[p]["backup"]
        assert torch.all(eps[~m] == 0)
        if p.dim() > 1:  # (the conv bias before BN has a ~1e-9 gradient, lost in w + eps)
            assert torch.count_nonzero(eps[m]) == torch.count_nonzero(g[m])


def test_ssam_eps_is_mask_times_sam_eps(data):
    x, y = data[0]
    model, ref = tiny_net(), tiny_net()
    opt = flatlab.SSAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.1, sparsity=0.5, mask="dynamic", seed=0)
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    ref.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in ref.parameters()))
    for p, q, m in zip(model.parameters(), ref.parameters(), opt.coordinates.mask_list()):
        torch.testing.assert_close(p - opt.state[p]["backup"], m * 0.1 * q.grad / norm, rtol=1e-5, atol=1e-7)


def brute_force_fisher(model, x, y):
    """One backward per sample, the model in eval mode: the definition, slowly."""
    model.eval()
    scores = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(x.shape[0]):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for s, p in zip(scores, model.parameters()):
            s += p.grad**2
    model.train()
    return scores


def test_fisher_scores_match_a_per_sample_loop():
    model = tiny_net()
    data = batches(2, batch=10)
    expected = brute_force_fisher(model, torch.cat([x for x, _ in data])[:16], torch.cat([y for _, y in data])[:16])
    got = empirical_fisher(model, data, list(model.parameters()), num_samples=16, chunk_size=6)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)
    assert model.training


def test_fisher_mask_is_the_global_top_k_of_the_scores():
    model = tiny_net()
    data = batches(1, batch=16)
    opt = flatlab.SSAM(torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.8, num_samples=16, seed=0)
    assert opt.mask_due
    running_mean = model.bn.running_mean.clone()
    opt.update_mask(model, data)
    assert torch.equal(model.bn.running_mean, running_mean)  # eval mode: no statistics updated
    scores = torch.cat([s.flatten() for s in brute_force_fisher(model, *data[0])])
    mask = torch.cat([m.flatten() for m in opt.coordinates.mask_list()])
    k = round(0.2 * scores.numel())
    assert int(mask.sum()) == k
    # every kept score is at least every dropped one (ties aside)
    assert scores[mask].min() >= scores[~mask].max() * (1 - 1e-4)


def test_fisher_needs_enough_samples():
    model = tiny_net()
    with pytest.raises(ValueError, match="fewer than num_samples=100"):
        empirical_fisher(model, batches(1), list(model.parameters()), num_samples=100)


def test_update_mask_on_a_method_without_data_mask_is_an_error():
    model = tiny_net()
    opt = flatlab.SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    assert not opt.mask_due
    with pytest.raises(TypeError, match="no data-driven mask"):
        opt.update_mask(model, batches(1))


def test_dynamic_mask_drops_flattest_and_follows_cosine_schedule():
    model = tiny_net()
    opt = flatlab.SSAM(
        torch.optim.SGD(model.parameters(), lr=0.0), sparsity=0.5, mask="dynamic", update_interval=1,
        drop_rate=0.5, total_steps=4, seed=0,
    )
    coords = opt.coordinates
    assert coords.rate_at(0) == pytest.approx(0.5)
    assert coords.rate_at(2) == pytest.approx(0.25)
    assert coords.rate_at(4) == pytest.approx(0.0)
    x, y = batches(1)[0]
    run_step(opt, model, x, y)  # step 0: no refresh
    before = [m.clone() for m in coords.mask_list()]
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.first_step()  # step 1 refreshes from these gradients
    opt.second_step()
    live = total(before)
    dropped = [b & ~a for a, b in zip(coords.mask_list(), before)]
    n_drop = int(coords.rate_at(1) * live)
    assert total(dropped) == n_drop
    # the dropped coordinates are the flattest of the live ones
    g_live = torch.cat([g.abs()[b] for g, b in zip(grads, before)])
    g_dropped = torch.cat([g.abs()[d] for g, d in zip(grads, dropped)])
    assert g_dropped.max() <= g_live.sort().values[n_drop - 1]


def test_masks_survive_a_state_dict_round_trip_as_bool():
    model = tiny_net()
    opt = flatlab.SSAM(torch.optim.SGD(model.parameters(), lr=0.1), mask="dynamic", seed=3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    other = flatlab.SSAM(torch.optim.SGD(model.parameters(), lr=0.1), mask="dynamic", seed=4)
    other.load_state_dict(torch.load(buffer))
    for a, b in zip(opt.coordinates.mask_list(), other.coordinates.mask_list()):
        assert b.dtype == torch.bool and torch.equal(a, b)


def test_esam_random_tensors_skip_weight_gradients_and_scale_by_one_over_beta():
    x, y = batches(1)[0]
    model = tiny_net()
    model.conv.bias.requires_grad_(False)  # frozen by the user: must stay frozen
    opt = flatlab.ESAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.05, beta=0.5, gamma=1.0, seed=0)
    params = list(model.parameters())
    w = weights(model)
    flags, perturbations = [], []

    def closure():
        opt.zero_grad()
        if not opt.is_perturbed:
            flags.append([p.requires_grad for p in params])
        else:  # measured from w, not from the optimizer's backups (an unpicked tensor has none)
            perturbations.append([(p - w0).detach().clone() for p, w0 in zip(params, w)])
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    picked = flags[0]
    assert not picked[1]  # the frozen bias
    assert 0 < sum(picked) < len(params)
    assert [p.requires_grad for p in params] == [True, False, True, True, True, True]
    # the reference perturbation: rho / beta * g / ||g|| over the picked tensors, zero elsewhere
    ref = tiny_net()
    ref.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    chosen = [q.grad for q, keep in zip(ref.parameters(), picked) if keep]
    norm = torch.sqrt(sum((g**2).sum() for g in chosen))
    for keep, q, eps in zip(picked, ref.parameters(), perturbations[0]):
        if keep:
            torch.testing.assert_close(eps, 0.05 / 0.5 * q.grad / norm, rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(eps, torch.zeros_like(eps))


def test_sds_picks_largest_loss_rises_with_deterministic_ties():
    sds = SharpnessSensitive(0.5)
    before = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert sds.select(before, torch.tensor([1.5, 1.1, 2.0, 1.2])).tolist() == [0, 2]
    assert sds.select(before, torch.tensor([1.0, 2.0, 2.0, 2.0])).tolist() == [1, 2]
    assert SharpnessSensitive(0.3).select(before, torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [2, 3]
    assert SharpnessSensitive(0.01).select(before, torch.tensor([1.0, 5.0, 3.0, 4.0])).tolist() == [1]
    assert SharpnessSensitive(1.0).select(before, before) is None


def test_esam_descent_pass_runs_on_the_selected_samples():
    x, y = batches(1, batch=10)[0]
    model, ref = tiny_net(), tiny_net()
    model.eval(), ref.eval()
    gamma, rho = 0.3, 0.05
    opt = flatlab.ESAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=rho, beta=1.0, gamma=gamma, seed=0)
    calls = []

    def losses(idx):
        calls.append((idx, torch.is_grad_enabled()))
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        return F.cross_entropy(model(xb), yb, reduction="none")

    opt.step(flatlab.per_sample(losses))
    assert [c[1] for c in calls] == [True, False, True]  # the selection forward is no-grad
    # reference selection: loss rise from w to w + rho g/||g||, top ceil(0.3 * 10) = 3
    before = F.cross_entropy(ref(x), y, reduction="none").detach()
    ref.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in ref.parameters()))
    w = [p.detach().clone() for p in ref.parameters()]
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(rho * p.grad / norm)
        after = F.cross_entropy(ref(x), y, reduction="none")
    expected = torch.argsort(after - before, descending=True, stable=True)[: math.ceil(gamma * 10)].sort().values
    assert torch.equal(calls[2][0], expected)
    # and the descent gradient is that of the subset's mean loss at w + eps
    ref.zero_grad()
    F.cross_entropy(ref(x[expected]), y[expected]).backward()
    for p, q, wi in zip(model.parameters(), ref.parameters(), w):
        torch.testing.assert_close(p, wi - 0.1 * q.grad, rtol=1e-5, atol=1e-6)


def test_sds_with_a_plain_closure_is_a_type_error():
    model = tiny_net()
    opt = flatlab.ESAM(torch.optim.SGD(model.parameters(), lr=0.1), gamma=0.5)
    with pytest.raises(TypeError, match="per-sample"):
        opt.step(lambda: F.cross_entropy(model(torch.randn(2, 1, 5, 5)), torch.tensor([0, 1])))


def test_per_sample_closure_must_return_per_sample_losses():
    model = tiny_net()
    opt = flatlab.ESAM(torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = batches(1)[0]
    with pytest.raises(ValueError, match="1-D tensor"):
        opt.step(flatlab.per_sample(lambda idx: F.cross_entropy(model(x), y)))


def test_weight_masks_restrict_the_perturbation(data):
    x, y = data[0]
    model = tiny_net()
    opt = make("sam", model)
    masks = {model.fc.weight: torch.rand(model.fc.weight.shape) > 0.5}
    opt.set_weight_masks(masks)
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    eps = model.fc.weight - opt.state[model.fc.weight]["backup"]
    assert torch.all(eps[~masks[model.fc.weight]] == 0) and torch.any(eps != 0)


class TwoTensors(torch.nn.Module):
    """A model with two parameter tensors: ESAM's draw keeps neither with probability (1 - beta)^2."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 2))
        self.bias = torch.nn.Parameter(torch.randn(3))

    def forward(self, x):
        return x @ self.weight.T + self.bias


def test_esam_always_perturbs_at_least_one_tensor():
    torch.manual_seed(0)
    model = TwoTensors()
    opt = flatlab.ESAM(torch.optim.SGD(model.parameters(), lr=0.01), rho=0.05, beta=0.6, gamma=1.0, seed=3)
    x, y = torch.randn(8, 2), torch.randint(0, 3, (8,))
    generator = torch.Generator().manual_seed(3)
    forced = 0
    for _ in range(300):
        # the plain draw this step would make from the same generator: empty 16% of the time
        plain = (torch.rand(2, generator=generator) < 0.6).tolist()
        if not any(plain):
            forced += 1
            torch.randint(2, (), generator=generator)  # the forced pick's draw
        moved = []
        w = [p.detach().clone() for p in model.parameters()]

        def closure(moved=moved, w=w):
            opt.zero_grad()
            if opt.is_perturbed:
                moved.append([bool((p != w0).any()) for p, w0 in zip(model.parameters(), w)])
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)  # the ascent backward would raise if no tensor required a gradient
        assert sum(moved[0]) >= 1
        if any(plain):
            assert moved[0] == plain
    assert 30 < forced < 70  # about 0.16 * 300 = 48 steps needed the forced pick


def test_esam_draw_is_deterministic_under_the_seed():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = TwoTensors()
        opt = flatlab.ESAM(torch.optim.SGD(model.parameters(), lr=0.1), beta=0.3, gamma=1.0, seed=11)
        x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
        for _ in range(50):
            run_step(opt, model, x, torch.tensor([0, 1, 2, 0]))
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_draw_tensors_forced_pick_is_uniform():
    counts = [0, 0, 0]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3000):
        picked = flatlab.optim.draw_tensors(3, 0.05, generator)
        assert sum(picked) >= 1
        if sum(picked) == 1:
            counts[picked.index(True)] += 1
    assert all(abs(c / sum(counts) - 1 / 3) < 0.05 for c in counts)


def test_ssam_f_without_a_mask_refresh_refuses_to_step():
    model = tiny_net()
    opt = flatlab.SSAM(torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.5, num_samples=8, seed=0)
    x, y = batches(1)[0]
    with pytest.raises(RuntimeError, match="update_mask"):
        run_step_without_refresh(opt, model, x, y)
    assert not opt.is_perturbed and opt.steps == 0


def run_step_without_refresh(opt, model, x, y):
    return opt.step(flatlab.per_sample(lambda idx: F.cross_entropy(model(x), y, reduction="none")))


def test_ssam_f_with_a_data_source_refreshes_itself_like_update_mask():
    data = batches(6)
    fisher = batches(1, batch=8, seed=5)
    manual, auto = tiny_net(), tiny_net()
    opt_manual = flatlab.SSAM(torch.optim.SGD(manual.parameters(), lr=0.1), sparsity=0.5, num_samples=8,
                              update_interval=2, seed=0, model=manual)
    opt_auto = flatlab.SSAM(torch.optim.SGD(auto.parameters(), lr=0.1), sparsity=0.5, num_samples=8,
                            update_interval=2, seed=0, model=auto, mask_data=fisher)
    for x, y in data:
        if opt_manual.mask_due:
            opt_manual.update_mask(manual, fisher)
        assert not opt_manual.mask_due  # refreshed for this step
        run_step_without_refresh(opt_manual, manual, x, y)
        run_step_without_refresh(opt_auto, auto, x, y)
    assert opt_auto.coordinates.refreshes == opt_manual.coordinates.refreshes == 3
    for p, q in zip(manual.parameters(), auto.parameters()):
        assert torch.equal(p, q)


def test_a_self_refreshing_mask_needs_the_model():
    model = tiny_net()
    with pytest.raises(ValueError, match="model="):
        flatlab.SSAM(torch.optim.SGD(model.parameters(), lr=0.1), mask_data=batches(1))
