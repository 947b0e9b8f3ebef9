import math

import pytest

from flatlab.sparse.allocation import erk_densities, layer_counts, layer_densities, uniform_densities

# conv 3->16 3x3, conv 16->32 3x3, linear 32->10
SHAPES = [(16, 3, 3, 3), (32, 16, 3, 3), (10, 32)]
NUMELS = [432, 4608, 320]


def test_uniform():
    assert uniform_densities(SHAPES, 0.9) == pytest.approx([0.1, 0.1, 0.1])
    assert sum(layer_counts(SHAPES, 0.9, "uniform")) == round(0.1 * sum(NUMELS))


def test_erk_by_hand_no_dense_layer():
    # raw ERK scores (sum of dims / product of dims), scaled to 10% of the 5360 weights
    raw = [(16 + 3 + 3 + 3) / 432, (32 + 16 + 3 + 3) / 4608, (10 + 32) / 320]
    eps = 0.1 * 5360 / (raw[0] * 432 + raw[1] * 4608 + raw[2] * 320)  # 536 / 121
    assert max(r * eps for r in raw) < 1
    assert erk_densities(SHAPES, 0.9) == pytest.approx([r * eps for r in raw])
    # the same numbers: raw x size = 25, 54, 42 (sum 121), 536 live weights
    expected = [25 / 121 * 536 / 432, 54 / 121 * 536 / 4608, 42 / 121 * 536 / 320]
    assert erk_densities(SHAPES, 0.9) == pytest.approx(expected)


def test_erk_by_hand_with_dense_layers():
    # 25% of 5360 = 1340 live: the linear layer would get 42/320 * 1340/121 > 1, so it is dense and
    # the convs share 1340 - 320 = 1020 live weights in proportion to their raw scores 25 and 54
    dens = erk_densities(SHAPES, 0.75)
    assert dens == pytest.approx([25 / 432 * 1020 / 79, 54 / 4608 * 1020 / 79, 1.0])
    # 50%: after the linear layer, the stem too (25/432 * 2360/79 > 1); the big conv takes the rest
    dens = erk_densities(SHAPES, 0.5)
    assert dens == pytest.approx([1.0, (2680 - 320 - 432) / 4608, 1.0])
    counts = layer_counts(SHAPES, 0.5, "erk")
    assert counts == [432, 1928, 320]


def test_erk_power_scale_zero_is_uniform():
    assert erk_densities(SHAPES, 0.7, power_scale=0.0) == pytest.approx([0.3] * 3)


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("sparsity", [0.0, 0.33, 0.5, 0.9, 0.99])
def test_counts_sum_exactly_and_follow_densities(distribution, sparsity):
    counts = layer_counts(SHAPES, sparsity, distribution)
    assert sum(counts) == round((1 - sparsity) * sum(NUMELS))
    for c, d, n in zip(counts, layer_densities(SHAPES, sparsity, distribution), NUMELS):
        assert 0 <= c <= n and abs(c - d * n) < 1


def test_rounding_is_distributed():
    # three layers of 9 at 50%: 13.5 -> 14 live weights, not 3 * round(4.5)
    assert layer_counts([(3, 3)] * 3, 0.5, "uniform") == [5, 5, 4]
    assert layer_counts([(3, 3)] * 3, 0.0, "uniform") == [9, 9, 9]


def test_bad_inputs():
    with pytest.raises(ValueError, match="sparsity"):
        uniform_densities(SHAPES, 1.0)
    with pytest.raises(ValueError, match="sparsity"):
        erk_densities(SHAPES, -0.1)
    with pytest.raises(ValueError, match="'gaussian'"):
        layer_densities(SHAPES, 0.5, "gaussian")
    assert math.isclose(sum(d * n for d, n in zip(erk_densities(SHAPES, 0.8), NUMELS)), 0.2 * 5360)
