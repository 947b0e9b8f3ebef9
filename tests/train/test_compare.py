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


def test_t_quantiles_match_the_printed_table():
    from flatlab.train.compare import t975

    # Student's t, 97.5%, as printed in statistics tables (4 decimals)
    for df, printed in [(1, 12.7062), (2, 4.3027), (7, 2.3646), (30, 2.0423), (31, 2.0395), (40, 2.0211),
                        (60, 2.0003), (120, 1.9799)]:
        assert t975(df) == pytest.approx(printed, abs=1e-3), df
    assert math.isnan(t975(0))


def test_paired_difference_by_hand():
    from flatlab.train.compare import format_interval, paired_difference

    d = paired_difference([0.50, 0.53, 0.49], [0.48, 0.50, 0.50])
    # differences 0.02, 0.03, -0.01: mean 0.01333, sample std 0.020817, half width 4.303 * std / sqrt(3)
    assert d["mean"] == pytest.approx(0.013333, abs=1e-6) and d["std"] == pytest.approx(0.020817, abs=1e-6)
    assert (d["low"], d["high"]) == pytest.approx((-0.038383, 0.065050), abs=1e-5)
    assert (d["wins"], d["n"], d["reading"]) == (2, 3, "within noise")
    assert paired_difference([0.4, 0.5], [0.5, 0.7])["reading"] == "within noise"  # 2 seeds: a wide interval
    assert paired_difference([0.1, 0.2, 0.3], [0.2, 0.31, 0.39])["reading"] == "lower"
    one = paired_difference([0.5], [0.4])
    assert one["reading"] == "-" and math.isnan(one["low"]) and format_interval(one["low"], one["high"]) == "-"
    assert format_interval(-3.8383, 6.5061) == "[-3.84, +6.51]"
    with pytest.raises(ValueError, match="pairs need one of each"):
        paired_difference([0.1, 0.2], [0.1])
