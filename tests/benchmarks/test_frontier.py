"""benchmarks/frontier.py: a study's gains priced at the step-cost benchmark's times."""

import math

import pytest

from tests.helpers.scripts import import_script


@pytest.fixture
def frontier(monkeypatch):
    return import_script(monkeypatch, "frontier")


def _row(method, optimizer, per_seed, reference=False, share=None, **paired):
    return {"method": method, "changes": {"optimizer": optimizer}, "is_reference": reference,
            "test_top1_mean": sum(per_seed) / len(per_seed), "test_top1_std": 0.01, "test_top1_per_seed": per_seed,
            "vs_sgd_paired_mean": paired.get("mean", 0.0), "vs_sgd_paired_std": paired.get("std", 0.0),
            "vs_sgd_interval": paired.get("interval"), "vs_sgd_wins": paired.get("wins"),
            "vs_sgd_reading": paired.get("reading"), "sam_steps_per_step": share}


COST = {"rows": [
    {"optimizer": "sgd", "ratio_to_sgd": 1.0, "sam_steps_per_step": 0.0},
    {"optimizer": "sam", "ratio_to_sgd": 2.0, "sam_steps_per_step": 1.0},
    {"optimizer": "aesam", "ratio_to_sgd": 1.1, "sam_steps_per_step": 0.1},
    {"optimizer": "sam-m32", "ratio_to_sgd": 2.5, "sam_steps_per_step": 1.0},
]}


def test_a_switching_method_is_priced_at_its_study_share_and_a_named_row_wins(frontier):
    study = {"rows": [
        _row("sgd", "sgd", [0.4, 0.5], reference=True, share=0.0),
        _row("sam", "sam", [0.42, 0.52], share=1.0, mean=0.02, std=0.0, interval=[0.02, 0.02], wins=2,
             reading="higher"),
        _row("aesam", "aesam", [0.41, 0.51], share=0.4, mean=0.01, std=0.0, interval=[0.01, 0.01], wins=2,
             reading="higher"),
        _row("sam-m32", "sam", [0.43, 0.53], share=1.0, mean=0.03, std=0.0, interval=[0.03, 0.03], wins=2,
             reading="higher"),
    ]}
    rows = {r["method"]: r for r in frontier.frontier(study, COST)}
    # 1.1 at the benchmark's 10% SAM steps, plus 30 more points of SAM's extra pass (1.0)
    assert rows["aesam"]["time_x_sgd"] == pytest.approx(1.4)
    assert rows["sam-m32"]["time_x_sgd"] == pytest.approx(2.5)  # its own row, not SAM's
    assert rows["aesam"]["share_of_sam_gain"] == pytest.approx(0.5)
    assert rows["aesam"]["share_of_sam_extra_time"] == pytest.approx(0.4)
    assert (rows["aesam"]["gain_low"], rows["aesam"]["won"], rows["aesam"]["seeds"]) == (1.0, 2, 2)
    text = frontier.table(list(rows.values()), "s", " --study x.json")
    assert "`python benchmarks/frontier.py --study x.json`" in text
    assert "| aesam | 46.00 ± 1.00 | +1.00 ± 0.00 | [+1.00, +1.00] | 2/2 | higher | 0.40 | 1.40 | 0.50 | 0.40 |" in text


def test_no_share_of_a_gain_within_noise(frontier):
    study = {"rows": [
        _row("sgd", "sgd", [0.4, 0.5], reference=True, share=0.0),
        _row("sam", "sam", [0.42, 0.50], share=1.0, mean=0.01, std=0.014, interval=[-0.12, 0.14], wins=1,
             reading="within noise"),
        _row("aesam", "aesam", [0.41, 0.51], share=0.1, mean=0.01, std=0.0, interval=[0.01, 0.01], wins=2,
             reading="higher"),
    ]}
    rows = frontier.frontier(study, COST)
    assert all(math.isnan(r["share_of_sam_gain"]) for r in rows)
    assert "| sam | 46.00 ± 1.00 | +1.00 ± 1.40 | [-12.00, +14.00] | 1/2 | within noise |" in frontier.table(rows, "s")


def test_a_method_the_benchmark_did_not_time_is_named(frontier):
    study = {"rows": [_row("sgd", "sgd", [0.4], reference=True), _row("vasso", "vasso", [0.41])]}
    with pytest.raises(SystemExit, match="no row for vasso"):
        frontier.frontier(study, COST)
