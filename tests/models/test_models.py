"""Tests for flatlab.models: shapes, gradients, published parameter counts, width scaling, errors."""

from __future__ import annotations

import pytest
import torch

from flatlab.models import count_parameters, create_model, list_models, register_model

# Widths small enough that a forward/backward of every model stays in the tens of milliseconds.
SMALL_WIDTH = {
    "resnet18": 0.125,
    "resnet50": 0.125,
    "wrn28-10": 0.05,
    "vgg19-bn": 0.125,
    "vgg11-bn": 0.125,
    "pyramidnet110": 0.25,
}

# (in_channels, height/width) of the datasets the models must handle: CIFAR, Fashion-MNIST, digits.
INPUTS = [(3, 32), (1, 28), (1, 8)]

ALL_MODELS = list_models()


def _meta_count(name: str, width: float = 1.0, **kwargs) -> int:
    # Full-width models are built on the meta device: shapes only, no memory, no init cost.
    with torch.device("meta"):
        return count_parameters(create_model(name, width=width, **kwargs))


def test_all_expected_models_registered():
    expected = {"resnet18", "resnet32", "resnet50", "wrn28-10", "pyramidnet110", "vgg11-bn", "vgg19-bn"}
    assert expected | {"mlp", "cnn"} <= set(ALL_MODELS)
    assert ALL_MODELS == sorted(ALL_MODELS)


@pytest.mark.parametrize("in_channels,size", INPUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward(name, in_channels, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=in_channels, width=SMALL_WIDTH.get(name, 1.0))
    x = torch.randn(2, in_channels, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.logsumexp(dim=1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize(
    "name,kwargs,published,rel_tol",
    [
        ("resnet18", {}, 11.17e6, 0.005),
        ("wrn28-10", {}, 36.48e6, 0.005),
        ("resnet32", {}, 0.46e6, 0.02),
        ("resnet50", {"num_classes": 1000}, 25.56e6, 0.005),
    ],
)
def test_published_parameter_counts(name, kwargs, published, rel_tol):
    assert _meta_count(name, **kwargs) == pytest.approx(published, rel=rel_tol)


def test_pyramidnet110_parameter_count():
    # Han et al. publish "1.7M" (alpha=48) and "28.3M" (alpha=270); their code (Lua and PyTorch)
    # gives 1.77M and 28.49M, so the published figures are truncated/approximate, not exact.
    n48 = _meta_count("pyramidnet110")
    assert 1.70e6 <= n48 < 1.80e6
    assert _meta_count("pyramidnet110", alpha=270) == pytest.approx(28.3e6, rel=0.01)


def test_pyramidnet_widens_to_16_plus_alpha():
    model = create_model("pyramidnet110", width=1.0)
    assert model.fc.in_features == 16 + 48
    widths = [block.conv2.out_channels for stage in model.layers for block in stage]
    assert len(widths) == 54 and widths == sorted(widths)


def _vgg_bn_count(config, in_channels=3, num_classes=10):
    # Hand count: bias-free 3x3 convs, BN (weight + bias) after each, one linear head.
    total, c_in = 0, in_channels
    for v in config:
        if v == "M":
            continue
        total += 9 * c_in * v + 2 * v
        c_in = v
    return total + c_in * num_classes + num_classes


def test_vgg19_bn_parameter_count_by_hand():
    vgg19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"] + [512] * 4 + ["M"] + [512] * 4 + ["M"]
    expected = _vgg_bn_count(vgg19)
    assert expected == 20_035_018
    assert _meta_count("vgg19-bn") == expected
    vgg11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    assert _meta_count("vgg11-bn") == _vgg_bn_count(vgg11)


def test_resnet32_shortcut_options():
    # Option A is parameter-free; option B adds two 1x1 conv + BN projections.
    a, b = _meta_count("resnet32"), _meta_count("resnet32", shortcut="B")
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_width_scales_count_roughly_quadratically(name):
    full, half = _meta_count(name, 1.0), _meta_count(name, 0.5)
    # Stem and head scale linearly, so small models sit above the 0.25 of a pure quadratic.
    assert 0.2 < half / full < 0.4, f"{name}: {half} / {full}"


@pytest.mark.parametrize("name", ["resnet18", "wrn28-10", "vgg19-bn", "resnet50"])
def test_width_scaling_is_quadratic_for_big_models(name):
    assert _meta_count(name, 0.5) / _meta_count(name, 1.0) == pytest.approx(0.25, abs=0.01)


def test_tiny_width_keeps_at_least_one_channel():
    model = create_model("resnet18", width=1e-3, in_channels=1)
    assert model.conv1.out_channels == 1
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_count_parameters_trainable_only():
    model = create_model("cnn")
    total = count_parameters(model)
    model.fc.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - count_parameters(model.fc)


def test_norm_and_bias_parameters_keep_standard_names():
    for name in ALL_MODELS:
        with torch.device("meta"):
            model = create_model(name)
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                assert pname.endswith(".bias") or ".bn" in f".{pname}", f"{name}: {pname}"


def test_init_follows_reference():
    model = create_model("resnet32")
    assert torch.equal(model.bn1.weight, torch.ones_like(model.bn1.weight))
    assert torch.equal(model.bn1.bias, torch.zeros_like(model.bn1.bias))
    # Kaiming fan-out: std = sqrt(2 / (k * k * out_channels)).
    w = model.layers[2][0].conv2.weight
    assert w.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.05)


def test_wrn_dropout_option():
    model = create_model("wrn28-10", width=0.05, dropout=0.3)
    assert model.layers[0][0].dropout.p == 0.3
    with pytest.raises(ValueError, match="dropout"):
        create_model("wrn28-10", width=0.05, dropout=1.5)


def test_unknown_model_name_lists_available():
    with pytest.raises(ValueError, match="resnet1000") as info:
        create_model("resnet1000")
    for name in ALL_MODELS:
        assert name in str(info.value)


@pytest.mark.parametrize("width", [0, -1.0, float("nan"), float("inf"), "1.0", True])
def test_bad_width_raises(width):
    with pytest.raises(ValueError, match="width"):
        create_model("cnn", width=width)


@pytest.mark.parametrize("arg", ["num_classes", "in_channels"])
def test_bad_sizes_raise(arg):
    with pytest.raises(ValueError, match=arg):
        create_model("cnn", **{arg: 0})


def test_bad_model_options_raise():
    with pytest.raises(ValueError, match="stem"):
        create_model("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="shortcut"):
        create_model("resnet32", shortcut="C")


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):

        @register_model("cnn")
        def other_cnn(num_classes, in_channels, width):  # pragma: no cover - never built
            raise AssertionError
