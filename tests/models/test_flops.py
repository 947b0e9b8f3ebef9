import pytest
import torch
from torch import nn

import flatlab.analysis
import flatlab.models.flops
from flatlab.models import forward_flops, training_flops, training_step_flops


@pytest.mark.parametrize(
    "cin,cout,k,stride,padding,groups,hw",
    [(3, 8, 3, 1, 1, 1, 10), (4, 6, 5, 2, 0, 2, 13), (6, 6, 3, 1, 1, 6, 7)],
)
def test_conv_matches_hand_formula(cin, cout, k, stride, padding, groups, hw):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups)
    out = (hw + 2 * padding - k) // stride + 1
    expected = 2 * cout * out * out * (cin // groups) * k * k
    fc = forward_flops(conv, (cin, hw, hw))
    assert fc.total == expected
    assert fc.per_layer == {}  # the root module has no name; see the nested case below
    nested = nn.Sequential(conv)
    assert forward_flops(nested, (cin, hw, hw), batch_size=3).per_layer == {"0": expected}


def test_linear_matches_hand_formula():
    fc = forward_flops(nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 2, bias=False)), (7,))
    assert fc.per_layer == {"0": 2 * 7 * 5, "2": 2 * 5 * 2}
    assert fc.total == 2 * 7 * 5 + 2 * 5 * 2 and fc.other == 0


def test_per_layer_names_and_uncounted_ops():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
            self.head = nn.Linear(2 * 4 * 4, 3)
            self.proj = nn.Parameter(torch.randn(3, 3))

        def forward(self, x):
            return self.head(self.features(x).flatten(1)) @ self.proj

    net = Net().train()
    fc = forward_flops(net, (1, 6, 6))
    assert net.training  # mode restored
    assert fc.per_layer == {"features.0": 2 * 2 * 4 * 4 * 9, "head": 2 * 32 * 3}
    assert fc.other == 2 * 3 * 3  # the functional matmul outside any conv/linear module


def test_training_flops_scaling():
    per_layer = {"a": 100, "b": 300}
    assert training_flops(per_layer) == 3 * 400
    assert training_flops(per_layer, passes=2) == 2 * 3 * 400
    assert training_flops(per_layer, {"a": 0.5, "b": 0.1}) == 3 * (50 + 30)
    assert training_flops(per_layer, backward_factor=1.0) == 2 * 400
    with pytest.raises(ValueError):
        training_flops(per_layer, {"c": 0.5})
    with pytest.raises(ValueError):
        training_flops(per_layer, {"a": 1.5})


def test_training_step_flops_sam_doubles_sgd():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    sgd = training_step_flops(model, (3, 8, 8))
    assert sgd == 3 * forward_flops(model, (3, 8, 8)).total
    assert training_step_flops(model, (3, 8, 8), passes=2) == 2 * sgd


def test_flatlab_analysis_re_exports_the_flop_counters():
    for name in flatlab.models.flops.__all__:
        assert getattr(flatlab.analysis, name) is getattr(flatlab.models.flops, name)
