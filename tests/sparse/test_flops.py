import pytest
import torch
from torch import nn

import flatlab
from flatlab.optim import step_passes
from flatlab.sparse import WeightMasking, dense_gradient_fraction, masking_flops, relative_flops, step_flops

# forward FLOPs per sample (2 per multiply-add): "0" Linear(10, 20) 400, "2" Linear(20, 5) 200
PER_LAYER = {"0": 400, "2": 200}


def two_layers():
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))


def passes(name, **options):
    """The passes an optimizer of the registry declares for one step."""
    if name == "msam":
        options = {"momentum": 0.9, **options}  # it perturbs along the momentum
    if name == "bsam":
        options = {"num_data": 100, **options}  # the training set's size scales its noise
    # SAM-ON perturbs the normalisation layers of a model: 4 of its 10 weights
    params = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)) if name == "sam-on" else [
        torch.zeros(2, requires_grad=True)]
    return step_passes(flatlab.create_optimizer(name, params, lr=0.1, **options))


def test_hand_computed_step_costs():
    dens = {"0": 0.25, "2": 0.5}
    sparse_forward = 400 * 0.25 + 200 * 0.5  # 200
    assert step_flops(PER_LAYER, dens) == 3 * sparse_forward  # forward + 2x backward
    assert step_flops(PER_LAYER, dens, passes=passes("s2sam")) == 600
    assert step_flops(PER_LAYER, dens, passes=passes("sam")) == 1200
    assert step_flops(PER_LAYER, dens, passes=passes("sam", ascent_steps=3)) == 2400
    assert step_flops(PER_LAYER, dens, passes=passes("ssam-f")) == 1200
    # ESAM: ascent 200 * (1 + 1 + 0.6) = 520, selection forward 200, descent on half: 300
    assert step_flops(PER_LAYER, dens, passes=passes("esam", beta=0.6, gamma=0.5)) == pytest.approx(1020)
    assert step_flops(PER_LAYER, dens, passes=passes("esam", beta=1.0, gamma=1.0)) == pytest.approx(1200)
    # RigL: on 5% of the steps the weight gradient is dense: + 0.05 * (600 - 200)
    assert step_flops(PER_LAYER, dens, dense_gradient_fraction=0.05) == pytest.approx(620)
    assert relative_flops(PER_LAYER, dens, passes=passes("sam")) == pytest.approx(1200 / 1800)
    assert relative_flops(PER_LAYER) == 1.0


def test_masking_flops_at_known_densities():
    # ERK at 80%: raw x size 30 and 25, 60 of 300 live: 200 * 0.15 * 60/55 = 32.7 and 27.3 ->
    # 33 and 27 live, densities 0.165 and 0.27, sparse forward 400 * 0.165 + 200 * 0.27 = 120
    masking = WeightMasking(two_layers(), 0.8, distribution="erk").init()
    assert masking.densities() == {"0.weight": 0.165, "2.weight": 0.27}
    assert masking_flops(masking, (10,)) == pytest.approx(120 / 600)
    assert masking_flops(masking, (10,), passes=passes("sam")) == pytest.approx(240 / 600)
    assert masking_flops(masking, (10,), passes=passes("esam", beta=0.6, gamma=0.5)) == pytest.approx(612 / 1800)
    # RigL, updates every 10 of 100 steps until step 75: at 10, 20, ..., 70, so 7% dense gradients
    rigl = WeightMasking(two_layers(), 0.8, method="rigl", update_interval=10, total_steps=100).init()
    assert dense_gradient_fraction(rigl) == pytest.approx(0.07)
    assert masking_flops(rigl, (10,)) == pytest.approx((360 + 0.07 * (600 - 120)) / 1800)
    kept = WeightMasking(two_layers(), 0.8, distribution="uniform", keep_last=True).init()
    # only the first layer is masked (at 80%): 400 * 0.2 + 200
    assert masking_flops(kept, (10,)) == pytest.approx(280 / 600)


def test_every_registered_optimizer_declares_its_passes():
    # dense: one forward 600, one forward-backward 1800; ESAM 600 * 2.6 + 600 + 1800 / 2;
    # LookSAM k=5 1.2 passes; RST p=0.5 1.5; AE-SAM before any step: its paper's ~50%, 1.5; SAM-ON's
    # ascent backward computes the weight gradients of its 4 perturbed weights of 10: 600 * 2.4 + 1800;
    # Lookbehind-SAM k=2: two SAM steps
    expected = {"sgd": 1800, "adamw": 1800, "sam": 3600, "sam-sign": 3600, "asam": 3600, "esam": 3060,
                "ssam-f": 3600, "ssam-d": 3600, "s2sam": 1800, "looksam": 1.2 * 1800, "aesam": 1.5 * 1800,
                "rst": 1.5 * 1800, "msam": 1800, "gsam": 3600, "wsam": 3600, "fsam": 3600,
                "gcsam": 3600, "vasso": 3600, "sam-on": 3240, "lookbehind-sam": 2 * 3600, "rwp": 3600, "bsam": 3600}
    got = {name: step_flops(PER_LAYER, passes=passes(name)) for name in flatlab.list_optimizers()}
    assert got == pytest.approx(expected)


def test_bad_options():
    with pytest.raises(ValueError, match="dense_gradient_fraction"):
        step_flops(PER_LAYER, dense_gradient_fraction=1.5)
