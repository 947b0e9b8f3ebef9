import json

import pytest
import yaml

from flatlab.cli import main
from flatlab.train.study import Study, load_study, run_study


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
    for name in ("results.json", "results.csv", "results.md", "curves.png"):
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
