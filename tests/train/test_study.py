import json
import math
from pathlib import Path

import pytest
import yaml

from flatlab.cli import main
from flatlab.train.study import Study, format_study, load_study, run_study


def spec(tmp_path, **changes):
    values = {
        "name": "tiny",
        "out": str(tmp_path / "study"),
        "seeds": [0, 1],
        "base": {"dataset": "digits", "model": "cnn", "width": 0.5, "epochs": 1, "threads": 1},
        "methods": {"sgd": {"optimizer": "sgd"}, "s2sam": {"optimizer": "s2sam", "rho": 0.05}},
        "hessian": {"batches": 1, "iters": 5},
    }
    values.update(changes)
    return values


def test_study_runs_skips_finished_and_resumes(tmp_path):
    study = Study(spec(tmp_path))
    logs = []
    rows = run_study(study, log=logs.append, progress=False)
    assert [r["method"] for r in rows] == ["sgd", "s2sam"]
    assert rows[0]["speed_vs_sgd"] == 1.0
    for row in rows:
        accs = [json.loads((study.run_dir(row["method"], s) / "summary.json").read_text())["final_test_top1"]
                for s in (0, 1)]
        assert row["test_top1_per_seed"] == accs
        assert row["test_top1_mean"] == pytest.approx(sum(accs) / 2)
        assert row["lambda1_mean"] > 0
    for name in ("results.json", "results.csv", "results.md", "curves.png", "tradeoff.png"):
        assert (study.out / name).stat().st_size > 0
    # a finished run is skipped; an unfinished one (no summary) is resumed from its checkpoint
    (study.run_dir("sgd", 1) / "summary.json").unlink()
    logs.clear()
    run_study(study, log=logs.append, progress=False)
    assert "[study] sgd-seed0: finished, skipped" in logs
    assert "[study] sgd-seed1: resuming" in logs


def test_study_file_errors_name_the_problem(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec(tmp_path, colour="red")))
    with pytest.raises(ValueError, match="unknown study keys: colour"):
        load_study(path)
    path.write_text(yaml.safe_dump(spec(tmp_path, methods={"x": {"optimizer": "sam", "rho": -1}})))
    with pytest.raises(ValueError, match="method 'x'.*rho=-1"):
        load_study(path)
    path.write_text(yaml.safe_dump(spec(tmp_path, methods={"x": {"epochs": 0}})))
    assert main(["study", str(path)]) == 2


def test_sparse_training_through_the_cli(tmp_path, capsys):
    out = str(tmp_path / "runs")
    code = main(["train", "--sparse", "rigl", "--sparsity", "0.9", "--optimizer", "s2sam", "--epochs", "1",
                 "--sparse-interval", "4", "--width", "0.5", "--out", out, "--name", "rigl"])
    assert code == 0
    summary = json.loads((tmp_path / "runs" / "rigl" / "summary.json").read_text())
    overall = summary["sparsity"]["overall"]
    assert overall["mask_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert overall["weight_sparsity"] >= overall["mask_sparsity"]
    assert overall["pruned_nonzero"] == 0
    assert 0 < summary["training_flops_vs_dense_sgd"] < 0.5
    assert "training FLOPs" in capsys.readouterr().out


def test_parallel_jobs_give_the_same_results_as_one_at_a_time(tmp_path):
    methods = {"sgd": {"optimizer": "sgd"}, "sam": {"optimizer": "sam", "rho": 0.05}}
    serial = Study(spec(tmp_path / "serial", methods=methods, hessian=None))
    parallel = Study(spec(tmp_path / "parallel", methods=methods, hessian=None))
    rows_serial = run_study(serial, log=lambda _: None, progress=False)
    logs = []
    rows_parallel = run_study(parallel, log=logs.append, progress=False, jobs=2)
    assert sorted(m for m in logs if m.endswith(": done")) == sorted(
        f"[study] {m}-seed{s}: done" for m in methods for s in (0, 1))
    for a, b in zip(rows_serial, rows_parallel):
        assert a["method"] == b["method"]
        assert a["test_top1_per_seed"] == b["test_top1_per_seed"]  # a run is the same in its own process
    result = json.loads((parallel.out / "results.json").read_text())
    assert result["jobs"] == 2 and result["machine"]["cpu_count"] >= 1
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        run_study(parallel, jobs=0)


def test_extends_overrides_base_entries_and_keeps_methods(tmp_path):
    parent = tmp_path / "cpu.yaml"
    parent.write_text(yaml.safe_dump(spec(tmp_path, base={"dataset": "digits", "model": "cnn", "epochs": 3,
                                                          "train_subset": 100, "threads": 1}),
                                     sort_keys=False))
    child = tmp_path / "gpu.yaml"
    child.write_text(yaml.safe_dump({"extends": "cpu.yaml", "out": str(tmp_path / "big"),
                                     "base": {"epochs": 200, "train_subset": None, "width": 2.0}}))
    study = load_study(child)
    assert study.base == {"dataset": "digits", "model": "cnn", "epochs": 200, "threads": 1, "width": 2.0}
    assert list(study.methods) == ["sgd", "s2sam"] and study.seeds == [0, 1]
    assert study.out == tmp_path / "big"
    assert study.config("sgd", 1).train_subset is None
    parent.write_text(yaml.safe_dump({"extends": "gpu.yaml"}))
    with pytest.raises(ValueError, match="cycle"):
        load_study(child)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "benchmarks" / "studies").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_committed_study_files_are_valid(path):
    study = load_study(path)  # validates every method's config
    assert study.seeds and study.methods
    if path.name.startswith("paper-"):  # paper scale: the CPU study's methods on full data, 200 epochs
        config = study.config(next(iter(study.methods)), study.seeds[0])
        assert config.epochs == 200 and config.train_subset is None and config.test_subset is None
        assert list(study.methods) == list(load_study(path.parent / "cpu-evidence.yaml").methods)


def test_table_pairs_seeds_against_sgd_and_one_seed_shows_no_spread(tmp_path):
    study = Study(spec(tmp_path, seeds=[0], hessian=None))
    rows = run_study(study, log=lambda _: None, progress=False)
    sgd, s2sam = rows
    assert math.isnan(sgd["test_top1_std"])  # one seed: no spread, not a spread of zero
    assert s2sam["vs_sgd_paired_mean"] == pytest.approx(s2sam["test_top1_mean"] - sgd["test_top1_mean"])
    text = (study.out / "results.md").read_text()
    assert "(reference)" in text and "±" not in text and "(n=1)" in text
    json.loads((study.out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    # with two seeds the paired difference is per seed, then averaged
    rows = [{"method": "sgd", "changes": {"optimizer": "sgd"}, "is_reference": True,
             "test_top1_mean": 0.5, "test_top1_std": 0.1,
             "test_top1_per_seed": [0.4, 0.6], "images_per_s": 100.0, "speed_vs_sgd": 1.0,
             "wall_time_s_mean": 10.0, "vs_sgd_paired_mean": 0.0, "vs_sgd_paired_std": 0.0},
            {"method": "sam", "changes": {"optimizer": "sam"}, "test_top1_mean": 0.53, "test_top1_std": 0.1,
             "test_top1_per_seed": [0.42, 0.64], "images_per_s": 50.0, "speed_vs_sgd": 0.5,
             "wall_time_s_mean": 20.0, "vs_sgd_paired_mean": 0.03, "vs_sgd_paired_std": 0.01414}]
    table = format_study(rows)
    assert "| sam | 53.00 ± 10.00 | 42.00, 64.00 | +3.00 ± 1.41 |" in table
