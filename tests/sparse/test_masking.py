import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatlab.sparse import WeightMasking, list_sparse_methods
from tests.helpers.nets import batches, small_cnn

NAMES = ["conv1.weight", "conv2.weight", "fc.weight"]
NUMELS = [54, 432, 24]


def live_counts(masking):
    return [int(m.sum()) for m in masking.masks.values()]


def assert_pruned_are_zero(masking):
    for p, m in masking.masks_by_param.items():
        assert torch.all(p[~m] == 0)


# ----------------------------------------------------------------------------------------------
# initial masks


@pytest.mark.parametrize("method", list_sparse_methods())
@pytest.mark.parametrize("distribution", ["erk", "uniform", "global"])
def test_init_reaches_the_target_sparsity(method, distribution):
    model = small_cnn()
    masking = WeightMasking(model, 0.8, method=method, distribution=distribution)
    masking.init(data=batches(2))
    assert sum(live_counts(masking)) == round(0.2 * 510)
    assert_pruned_are_zero(masking)
    assert all(m.dtype == torch.bool for m in masking.masks.values())
    r = masking.report()
    assert r["overall"]["live"] == 102 and r["overall"]["pruned_nonzero"] == 0
    assert r["overall"]["weight_sparsity"] >= r["overall"]["mask_sparsity"] == pytest.approx(1 - 102 / 510)
    json.dumps(r)


def test_erk_layer_counts_by_hand():
    # ERK raw scores x sizes: conv1 (6+1+3+3) = 13, conv2 (8+6+3+3) = 20, fc (3+8) = 11.
    # 90%: 51 live, eps = 51/44, nothing dense: 15.07, 23.18, 12.75 -> floors 15, 23, 12 and the
    # one weight left goes to the largest remainder (fc).
    masking = WeightMasking(small_cnn(), 0.9, distribution="erk").init()
    assert live_counts(masking) == [15, 23, 13]
    # 80%: 102 live; fc would get 11/24 * 102/44 > 1, so it is dense and the convs share 78:
    # 13 * 78/33 = 30.73 and 20 * 78/33 = 47.27 -> 31 and 47.
    masking = WeightMasking(small_cnn(), 0.8, distribution="erk", method="rigl").init()
    assert live_counts(masking) == [31, 47, 24]
    masking = WeightMasking(small_cnn(), 0.8, distribution="uniform").init()
    # 10.8, 86.4, 4.8 -> 10, 86, 4 + 2 by largest remainder (conv1 .8, fc .8)
    assert live_counts(masking) == [11, 86, 5]


def test_keep_first_and_last():
    masking = WeightMasking(small_cnn(), 0.5, keep_first=True, keep_last=True).init()
    assert masking.names == ["conv2.weight"] and live_counts(masking) == [216]


def test_random_masks_depend_on_the_seed_only():
    a = WeightMasking(small_cnn(0), 0.7, seed=3).init()
    b = WeightMasking(small_cnn(1), 0.7, seed=3).init()
    c = WeightMasking(small_cnn(0), 0.7, seed=4).init()
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in NAMES)
    assert not all(torch.equal(a.masks[n], c.masks[n]) for n in NAMES)


def test_magnitude_keeps_the_largest_weights():
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -3.0, 0.1], [2.0, -0.2, 1.0]]))
        model[1].weight.copy_(torch.tensor([[-0.05, 4.0], [0.3, 0.01]]))
    per_layer = WeightMasking(copy.deepcopy(model), 0.5, method="magnitude", distribution="uniform").init()
    assert per_layer.masks["0.weight"].tolist() == [[False, True, False], [True, False, True]]
    assert per_layer.masks["1.weight"].tolist() == [[False, True], [True, False]]
    glob = WeightMasking(copy.deepcopy(model), 0.5, method="magnitude", distribution="global").init()
    # the five largest |w| overall: 4, 3, 2, 1, 0.5
    assert glob.masks["0.weight"].tolist() == [[True, True, False], [True, False, True]]
    assert glob.masks["1.weight"].tolist() == [[False, True], [False, False]]
    assert glob.model[0].weight.tolist() == [[0.5, -3.0, 0.0], [2.0, 0.0, 1.0]]


def test_magnitude_with_rewind_to_the_initial_weights():
    model = small_cnn()
    theta0 = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # stands for dense training
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    masking = WeightMasking(model, 0.75, method="magnitude", distribution="global").init(rewind_to=theta0)
    assert sum(live_counts(masking)) == round(0.25 * 510)
    # chosen on the trained weights (the global top 25% of |w|) ...
    everything = torch.cat([trained[n].abs().flatten() for n in NAMES])
    threshold = everything.topk(round(0.25 * 510)).values.min()
    for name in NAMES:
        assert torch.all(trained[name].abs()[masking.masks[name]] >= threshold)
        # ... and applied to the rewound ones
        assert torch.equal(dict(model.named_parameters())[name], theta0[name] * masking.masks[name])
    assert torch.equal(model.bn.weight, theta0["bn.weight"])
    with pytest.raises(ValueError, match="nope"):
        WeightMasking(model, 0.5, method="magnitude").init(rewind_to={"nope": torch.zeros(1)})


def test_snip_scores_by_hand():
    # L = sum((W x - y)^2) has gradient 2 (W x - y) x^T. Batch 1: x = (1, 2), y = (0, 1):
    # W x = (-3, 6.5), g1 = [[-6, -12], [11, 22]]. Batch 2: x = (0, 1), y = (1, 0): W x = (-2, 3),
    # g2 = [[0, -6], [0, 6]]. Mean g = [[-3, -9], [5.5, 14]]; |g * w| = [[3, 18], [2.75, 42]].
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    data = [
        (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]])),
        (torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])),
    ]

    def loss_fn(out, y):
        return ((out - y) ** 2).sum()

    expected = {
        0.25: [[True, True], [False, True]],
        0.5: [[False, True], [False, True]],
        0.75: [[False, False], [False, True]],
    }
    for sparsity, mask in expected.items():
        m = copy.deepcopy(model)
        masking = WeightMasking(m, sparsity, method="snip", distribution="global").init(data, loss_fn)
        assert masking.masks["0.weight"].tolist() == mask
        assert m[0].weight.tolist() == (torch.tensor([[1.0, -2.0], [0.5, 3.0]]) * torch.tensor(mask)).tolist()


def test_snip_leaves_buffers_and_needs_data():
    model = small_cnn().train()
    stats = model.bn.running_mean.clone()
    WeightMasking(model, 0.5, method="snip").init(data=batches(2))
    assert torch.equal(model.bn.running_mean, stats) and model.training
    with pytest.raises(ValueError, match="data"):
        WeightMasking(model, 0.5, method="snip").init()


def test_grasp_keeps_the_largest_w_times_hessian_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False))
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    T = 2.0
    w0, w1 = model[0].weight.detach().clone(), model[2].weight.detach().clone()

    def loss(flat):
        a, b = flat[:12].view(4, 3), flat[12:].view(2, 4)
        return F.cross_entropy(torch.tanh(x @ a.T) @ b.T / T, y)

    flat = torch.cat([w0.flatten(), w1.flatten()])
    g = torch.autograd.functional.jacobian(loss, flat)
    hg = torch.autograd.functional.hessian(loss, flat) @ g
    score = flat * hg
    keep = score.topk(10).indices
    expected = torch.zeros(20, dtype=torch.bool)
    expected[keep] = True
    masking = WeightMasking(model, 0.5, method="grasp", distribution="global", grasp_temperature=T)
    masking.init(data=[(x, y)])
    got = torch.cat([masking.masks["0.weight"].flatten(), masking.masks["2.weight"].flatten()])
    assert torch.equal(got, expected)


# ----------------------------------------------------------------------------------------------
# drop and grow


def one_layer(method, fraction, **kwargs):
    """W = [[0.5, -0.1, 0], [0, 0.3, 0]] with live coordinates 0, 1, 4 (3 of 6)."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    masking = WeightMasking(
        model, 0.5, method=method, update_interval=1, update_fraction=fraction, distribution="uniform", **kwargs
    ).init()
    with torch.no_grad():
        masking.masks["0.weight"].copy_(torch.tensor([[True, True, False], [False, True, False]]))
        model[0].weight.copy_(torch.tensor([[0.5, -0.1, 0.0], [0.0, 0.3, 0.0]]))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    masking.attach(opt)
    return model, masking, opt


def test_rigl_drops_smallest_and_grows_largest_gradient():
    model, masking, opt = one_layer("rigl", 0.7)  # int(0.7 * 3) = 2 moved
    G = torch.tensor([[9.0, 9.0, 0.2], [5.0, 9.0, -0.7]])
    (model[0].weight * G).sum().backward()  # the gradient is G
    assert model[0].weight.grad.tolist() == [[9.0, 9.0, 0.0], [0.0, 9.0, 0.0]]  # masked
    opt.step()
    masking.after_step()
    # dropped: the two smallest |w| among live (-0.1 and 0.3); grown: the two largest |G| among
    # the coordinates dead before the drop (5 and -0.7), at zero
    assert masking.masks["0.weight"].tolist() == [[True, False, False], [True, False, True]]
    assert model[0].weight.tolist() == [[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert masking.updates == 1


def test_rigl_dense_gradient_accumulates_micro_batches():
    model, masking, opt = one_layer("rigl", 0.4)  # int(0.4 * 3) = 1 moved
    (model[0].weight * torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 1.0]])).sum().backward()
    (model[0].weight * torch.tensor([[0.0, 0.0, -1.5], [1.0, 0.0, 1.0]])).sum().backward()
    opt.step()
    masking.after_step()
    # summed dense gradient on the dead coordinates: 0.5, 1.0, 2.0 -> the last one grows
    assert masking.masks["0.weight"].tolist() == [[True, False, False], [False, True, True]]


def test_rigl_without_attach_says_so():
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    masking = WeightMasking(model, 0.5, method="rigl", update_interval=1).init()
    with pytest.raises(RuntimeError, match="attach"):
        masking.after_step()


def test_set_grows_at_random_among_the_dead():
    model, masking, opt = one_layer("set", 0.7)
    state = masking.generator.get_state()
    opt.step()
    masking.after_step()
    # the same draw, by hand: uniform scores on the CPU, the two largest among coordinates 2, 3, 5
    scores = torch.rand(2, 3, generator=torch.Generator().set_state(state)).flatten()
    dead = torch.tensor([2, 3, 5])
    grown = dead[scores[dead].topk(2).indices].tolist()
    expected = torch.zeros(6, dtype=torch.bool)
    expected[[0] + grown] = True
    assert masking.masks["0.weight"].flatten().tolist() == expected.tolist()
    # over seeds, every pair of dead coordinates comes up
    pairs = set()
    for seed in range(40):
        _, m, o = one_layer("set", 0.7, seed=seed)
        m.after_step()
        pairs.add(tuple(m.masks["0.weight"].flatten().nonzero().flatten().tolist()))
    assert pairs == {(0, 2, 3), (0, 2, 5), (0, 3, 5)}


def test_cosine_schedule_and_end():
    masking = WeightMasking(
        small_cnn(), 0.8, method="set", update_interval=10, update_fraction=0.4, end_fraction=0.5, total_steps=100
    )
    assert masking.fraction_at(0) == pytest.approx(0.4)
    assert masking.fraction_at(25) == pytest.approx(0.2)
    assert masking.fraction_at(40) == pytest.approx(0.2 * (1 + math.cos(math.pi * 0.8)))
    assert masking.fraction_at(50) == masking.fraction_at(70) == 0.0
    assert [s for s in range(101) if masking.update_due(s)] == [10, 20, 30, 40]
    masking.init()
    counts = live_counts(masking)
    assert counts == [31, 47, 24]  # ERK at 80%, by hand in test_erk_layer_counts_by_hand
    for step in range(1, 101):
        before = [m.clone() for m in masking.masks.values()]
        masking.after_step(step)
        moved = [int((b != m).sum()) for b, m in zip(before, masking.masks.values())]
        if step in (10, 20, 30, 40):
            # dropped and grown are distinct coordinates: twice the number moved
            # (fc is dense under ERK at 80%: nothing to grow, nothing moves)
            assert moved == [2 * min(int(masking.fraction_at(step) * c), n - c) for c, n in zip(counts, NUMELS)]
        else:
            assert moved == [0, 0, 0]
        assert live_counts(masking) == counts
    assert masking.updates == 4
    assert WeightMasking(small_cnn(), 0.8, method="set").fraction_at(10**6) == 0.3  # no total_steps


def test_static_methods_never_move():
    masking = WeightMasking(small_cnn(), 0.8, method="random", update_interval=1).init()
    before = {n: m.clone() for n, m in masking.masks.items()}
    for _ in range(3):
        masking.after_step()
    assert all(torch.equal(before[n], masking.masks[n]) for n in NAMES) and masking.updates == 0


def test_after_step_checks_its_count():
    masking = WeightMasking(small_cnn(), 0.8)
    with pytest.raises(RuntimeError, match="init"):
        masking.after_step()
    masking.init()
    masking.after_step(1)
    with pytest.raises(ValueError, match="step 2"):
        masking.after_step(5)


# ----------------------------------------------------------------------------------------------
# state


def test_state_dict_round_trip_keeps_bool_masks_counters_and_generator():
    masking = WeightMasking(small_cnn(), 0.8, method="set", update_interval=2).init()
    for _ in range(3):
        masking.after_step()
    state = copy.deepcopy(masking.state_dict())
    other = WeightMasking(small_cnn(5), 0.8, method="set", update_interval=2, seed=9)
    other.load_state_dict(state)
    assert all(torch.equal(other.masks[n], masking.masks[n]) for n in NAMES)
    assert all(m.dtype == torch.bool for m in other.masks.values())
    assert other.masks_by_param[other.params[0]] is other.masks[NAMES[0]]
    assert (other.steps, other.updates, other.initialized) == (3, 1, True)
    assert torch.equal(other.generator.get_state(), masking.generator.get_state())
    other.apply_masks()
    assert other.report()["overall"]["mask_sparsity"] == masking.report()["overall"]["mask_sparsity"]
    masking.after_step()
    masking.after_step()
    assert not torch.equal(state["masks"]["conv2.weight"], masking.masks["conv2.weight"])  # a copy
    with pytest.raises(ValueError, match="shape"):
        WeightMasking(nn.Sequential(nn.Linear(2, 2)), 0.5).load_state_dict({"masks": {"0.weight": torch.ones(3)}})


def test_bad_arguments():
    model = small_cnn()
    for kwargs, word in [
        (dict(sparsity=1.0), "sparsity"),
        (dict(sparsity=-0.5), "sparsity"),
        (dict(sparsity=0.5, method="lottery"), "lottery"),
        (dict(sparsity=0.5, distribution="er"), "'er'"),
        (dict(sparsity=0.5, update_interval=0), "update_interval"),
        (dict(sparsity=0.5, update_fraction=1.5), "update_fraction"),
        (dict(sparsity=0.5, end_fraction=0.0), "end_fraction"),
        (dict(sparsity=0.5, total_steps=0), "total_steps"),
    ]:
        with pytest.raises(ValueError, match=word):
            WeightMasking(model, **kwargs)
    with pytest.raises(ValueError, match="prunable"):
        WeightMasking(nn.BatchNorm1d(3), 0.5)
