"""mean ± std over seeds: one seed has no spread (NaN, shown as n=1), never a spread of zero."""

import math

import pytest

from flatlab.train.compare import format_mean_std, format_table, markdown_table, mean_std


def test_mean_std_of_one_value_is_undefined_not_zero():
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, math.sqrt(0.02)))
    mean, std = mean_std([0.5, math.nan])
    assert mean == 0.5 and math.isnan(std)
    assert all(math.isnan(v) for v in mean_std([]))


def test_format_mean_std_shows_n1_instead_of_a_zero_spread():
    assert format_mean_std(45.1234, 0.5) == "45.12 ± 0.50"
    assert format_mean_std(2.0, math.nan, "+.2f") == "+2.00 (n=1)"
    assert format_mean_std(math.nan, math.nan) == "nan"


def test_compare_table_with_one_seed():
    row = {"label": "sam", "seeds": [0], "test_top1_mean": 0.9, "test_top1_std": math.nan, "best_top1_mean": 0.91,
           "best_top1_std": math.nan, "images_per_s": 100.0, "speed_vs_sgd": 0.5, "wall_time_s": 3.0}
    assert format_table([row]).splitlines()[2] == "| sam | 1 | 90.00 (n=1) | 91.00 (n=1) | 100 | 0.50 | 3 |"
    assert markdown_table(["a", "b"], [[1, 2]], "lr") == "| a | b |\n|---|---:|\n| 1 | 2 |"
