import torch
from torch import nn

from flatlab.sparse import prunable_parameters


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU())
        self.head = nn.Linear(4, 2)
        self.tied = nn.Linear(4, 2)
        self.tied.weight = self.head.weight


def test_conv_and_linear_weights_in_order_each_once():
    net = Net()
    named = prunable_parameters(net)
    assert [n for n, _ in named] == ["stem.weight", "body.0.weight", "head.weight"]
    assert named[0][1] is net.stem.weight


def test_keep_first_and_last_dense():
    net = Net()
    assert [n for n, _ in prunable_parameters(net, keep_first=True)] == ["body.0.weight", "head.weight"]
    assert [n for n, _ in prunable_parameters(net, keep_first=True, keep_last=True)] == ["body.0.weight"]


def test_frozen_weights_and_other_types_are_left_out():
    net = Net()
    net.stem.weight.requires_grad_(False)
    assert [n for n, _ in prunable_parameters(net)] == ["body.0.weight", "head.weight"]
    assert [n for n, _ in prunable_parameters(net, layer_types=(nn.Linear,))] == ["head.weight"]
    assert prunable_parameters(nn.Linear(2, 2))[0][0] == "weight"
    assert prunable_parameters(nn.BatchNorm1d(3)) == []
    assert torch.is_tensor(prunable_parameters(nn.Conv1d(1, 1, 2))[0][1])
