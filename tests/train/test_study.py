import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flatlab.cli import main
from flatlab.train.study import Study, format_study, load_study, run_study
from tests.helpers.cli import cli, one_error


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
        # the mean over the seeds of the top Hessian eigenvalue each run keeps
        eig = [json.loads((study.run_dir(row["method"], s) / "analysis" / "study_hessian.json").read_text())["lambda1"]
               for s in (0, 1)]
        assert row["lambda1_mean"] == pytest.approx(sum(eig) / 2) and min(eig) > 0
    for name in ("results.json", "results.csv", "results.md", "curves.png", "tradeoff.png"):
        assert (study.out / name).stat().st_size > 0
    # a finished run is skipped; an unfinished one (no summary) is resumed from its checkpoint
    (study.run_dir("sgd", 1) / "summary.json").unlink()
    logs.clear()
    run_study(study, log=logs.append, progress=False)
    assert "[study] sgd-seed0: finished, skipped" in logs
    assert "[study] sgd-seed1: resuming" in logs


@pytest.mark.parametrize("changes, expected", [
    ({"colour": "red"}, r"s\.yaml: colour: unknown study key"),
    ({"methds": {}}, r"s\.yaml: methds: unknown study key; did you mean 'methods'\?"),
    ({"base": {"optimzer": "sgd"}}, r"s\.yaml: base\.optimzer: unknown config key; did you mean 'optimizer'\?$"),
    ({"base": {"lr": "fast"}}, r"s\.yaml: base\.lr: expected a number, got 'fast'$"),
    ({"base": {"epochs": 0}}, r"s\.yaml: base\.epochs: epochs must be an integer >= 1"),
    ({"methods": {"sam": {"optimizer": "sam", "rhoo": 0.05}}},
     r"s\.yaml: methods\.sam\.rhoo: unknown config key; did you mean 'rho'\?$"),
    ({"methods": {"x": {"optimizer": "sam", "rho": -1}}}, r"s\.yaml: methods\.x\.rho: rho must be >= 0, got rho=-1"),
    ({"methods": {"x": {"optimizer": "ssam-f", "mask_sparsity": 1.5}}}, r"s\.yaml: methods\.x\.mask_sparsity: "),
    ({"methods": {"x": {"optimizer": "sgdd"}}}, r"s\.yaml: methods\.x\.optimizer: unknown optimizer 'sgdd'"),
    ({"methods": {"x": {"sam": {"rhoo": 1}}}}, r"s\.yaml: methods\.x\.sam\.rhoo: unknown key in section 'sam'"),
    ({"methods": {"x": ["sgd"]}}, r"s\.yaml: methods\.x: expected a mapping of config keys, got list$"),
    ({"base": {"rho": 0.1}, "methods": {"sgd": {"optimizer": "sgd"}}},
     r"s\.yaml: base\.rho: optimizer 'sgd' does not take rho"),
], ids=lambda v: str(v)[:40])
def test_a_mistake_in_a_study_file_names_the_file_and_the_key_path(tmp_path, capsys, changes, expected):
    values = spec(tmp_path, hessian=None)
    for key, value in changes.items():
        values[key] = {**values[key], **value} if key == "base" else value
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ValueError, match=expected):
        load_study(path)
    assert main(["study", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s.yaml: " in err and "<dict>" not in err


def test_a_mistake_in_an_extended_study_names_the_file_that_holds_it(tmp_path):
    (tmp_path / "cpu.yaml").write_text(yaml.safe_dump(spec(tmp_path, base={"optimzer": "sgd", "epochs": 1})))
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump({"extends": "cpu.yaml", "base": {"epochs": 2}}))
    with pytest.raises(ValueError, match=r"cpu\.yaml: base\.optimzer: unknown config key"):
        load_study(tmp_path / "gpu.yaml")
    (tmp_path / "cpu.yaml").write_text(yaml.safe_dump(spec(tmp_path, base={"epochs": 1})))
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump({"extends": "cpu.yaml", "base": {"epochs": -2}}))
    with pytest.raises(ValueError, match=r"gpu\.yaml: base\.epochs: epochs must be"):
        load_study(tmp_path / "gpu.yaml")


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


def _fake_finished_runs(study, top1, evaluated_on="test"):
    """Finished run directories with the given final test top-1 per method and seed (nothing trained)."""
    for method, values in top1.items():
        for seed, value in zip(study.seeds, values):
            run = study.run_dir(method, seed)
            run.mkdir(parents=True)
            (run / "config.json").write_text(json.dumps({"config": {**study.base, **study.methods[method],
                                                                    "seed": seed}}))
            (run / "summary.json").write_text(json.dumps({
                "final_test_top1": value, "best_test_top1": value, "images_per_s": 100.0, "wall_time_s": 10.0,
                "final_train_loss": 0.1, "sam_steps_per_step": 0.0 if method == "sgd" else 1.0,
                "evaluated_on": evaluated_on}))
            (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 0.1, "test_top1": value}) + "\n")


def test_a_study_on_a_holdout_says_so_in_its_tables(tmp_path):
    methods = {"sgd": {"optimizer": "sgd"}, "sam": {"optimizer": "sam"}, "s2sam": {"optimizer": "s2sam"}}
    study = Study(spec(tmp_path, seeds=[0, 1], hessian=None, methods=methods))
    _fake_finished_runs(study, {"sgd": [0.40, 0.50], "sam": [0.42, 0.53], "s2sam": [0.40, 0.51]},
                        evaluated_on="holdout of 500 training samples")
    run_study(study, log=lambda _: None, progress=False)
    text = (study.out / "results.md").read_text()
    assert "Evaluated on holdout of 500 training samples (`holdout`), never on the test set" in text
    assert "| method | holdout top-1 (%) |" in text and "test top-1" not in text.replace("test_top1", "")
    assert "Holdout top-1 of the first method minus the second's" in text


def test_paired_gains_carry_intervals_wins_and_methods_against_each_other(tmp_path):
    methods = {"sgd": {"optimizer": "sgd"}, "sam": {"optimizer": "sam"}, "s2sam": {"optimizer": "s2sam"}}
    study = Study(spec(tmp_path, seeds=[0, 1, 2], hessian=None, methods=methods))
    _fake_finished_runs(study, {"sgd": [0.40, 0.50, 0.45], "sam": [0.42, 0.53, 0.475], "s2sam": [0.40, 0.51, 0.46]})
    rows = run_study(study, log=lambda _: None, progress=False)
    sgd, sam, s2sam = rows
    # sam - sgd: +2, +3, +2.5 points: mean 2.5, std 0.5, interval 2.5 -/+ 4.303 * 0.5 / sqrt(3) = [1.26, 3.74]
    assert 100 * sam["vs_sgd_paired_mean"] == pytest.approx(2.5)
    assert 100 * sam["vs_sgd_paired_std"] == pytest.approx(0.5)
    assert [100 * v for v in sam["vs_sgd_interval"]] == pytest.approx([1.2578, 3.7422], abs=1e-4)
    assert (sam["vs_sgd_wins"], sam["vs_sgd_reading"]) == (3, "higher")
    # s2sam - sgd: 0, +1, +1: mean 0.67, std 0.58, interval [-0.77, +2.10]: within noise, higher on 2 seeds of 3
    assert (s2sam["vs_sgd_wins"], s2sam["vs_sgd_reading"]) == (2, "within noise")
    result = json.loads((study.out / "results.json").read_text())
    [pair] = result["pairs"]  # the reference is not paired again
    assert (pair["a"], pair["b"], pair["wins"], pair["n"], pair["reading"]) == ("sam", "s2sam", 3, 3, "higher")
    assert 100 * pair["mean"] == pytest.approx(11 / 6)  # +2, +2, +1.5
    text = (study.out / "results.md").read_text()
    assert "| sam | 47.50 ± 5.50 | 42.00, 53.00, 47.50 | +2.50 ± 0.50 | [+1.26, +3.74] | 3/3 |" in text
    assert "| s2sam | 45.67 ± 5.51 | 40.00, 51.00, 46.00 | +0.67 ± 0.58 | [-0.77, +2.10] | 2/3 |" in text
    assert "| sam | s2sam | +1.83 ± 0.29 | [+1.12, +2.55] | 3/3 | higher |" in text
    assert "| method | test top-1 (%) |" in text and "held-out" not in text and "Evaluated on" not in text
    header = next(line for line in (study.out / "results.csv").read_text().splitlines())
    assert "vs_sgd_low,vs_sgd_high,vs_sgd_wins,vs_sgd_reading" in header


ROOT = Path(__file__).parents[2]


def test_relative_paths_in_a_study_file_are_relative_to_that_file(tmp_path, monkeypatch):
    studies = tmp_path / "repo" / "studies"
    (studies / "gpu").mkdir(parents=True)
    (studies / "cpu.yaml").write_text(yaml.safe_dump(
        spec(tmp_path, out="../results/cpu", base={"dataset": "cifar10", "data_root": "../data", "epochs": 1},
             methods={"sgd": {"optimizer": "sgd"}, "sam": {"optimizer": "sam", "sam": {"data_root": "../sam"}}})))
    (studies / "gpu" / "big.yaml").write_text(yaml.safe_dump({"extends": "../cpu.yaml", "out": "../../runs/big"}))
    monkeypatch.chdir(tmp_path)  # neither the repository nor the studies' folder
    cpu = load_study(Path("repo/studies/cpu.yaml"))
    assert cpu.out.resolve() == tmp_path / "repo" / "results" / "cpu"
    assert Path(cpu.config("sgd", 0).data_root).resolve() == tmp_path / "repo" / "data"
    assert Path(cpu.config("sam", 0).data_root).resolve() == tmp_path / "repo" / "sam"
    big = load_study(studies / "gpu" / "big.yaml")  # the parent's paths still mean what they meant there
    assert big.out.resolve() == tmp_path / "repo" / "runs" / "big"
    assert Path(big.config("sgd", 0).data_root).resolve() == tmp_path / "repo" / "data"
    assert Path(big.config("sam", 0).data_root).resolve() == tmp_path / "repo" / "sam"


def test_committed_studies_use_their_committed_results_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in sorted((ROOT / "benchmarks" / "studies").glob("*.yaml")):
        study = load_study(path)
        where = ROOT / ("runs" if path.name.startswith("paper-") else "benchmarks/results") / path.stem
        assert study.out.resolve() == where, path.name
        data_root = Path(study.config(next(iter(study.methods)), 0).data_root).resolve()
        assert data_root in (ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz", ROOT / "data"), path.name


def _outputs(out: Path) -> dict[str, tuple[bytes, int]]:
    return {name: ((out / name).read_bytes(), (out / name).stat().st_mtime_ns)
            for name in ("results.json", "results.csv", "results.md", "curves.png", "tradeoff.png")}


def test_tabulating_unchanged_runs_again_writes_nothing(tmp_path, monkeypatch):
    study = Study(spec(tmp_path, seeds=[0], hessian=None))
    run_study(study, log=lambda _: None, progress=False)
    before = _outputs(study.out)
    # another working directory, command line and --jobs: none of them changes a run
    monkeypatch.chdir(tmp_path / "study")
    monkeypatch.setattr("sys.argv", ["/elsewhere/flatlab", "study", "again.yaml", "--jobs", "2"])
    logs = []
    run_study(study, log=logs.append, progress=False, jobs=2)
    assert _outputs(study.out) == before  # same bytes, not even rewritten
    assert "[study] sgd-seed0: finished, skipped" in logs
    result = json.loads((study.out / "results.json").read_text())
    assert result["jobs"] == 1 and "again.yaml" not in result["command"]  # the session that trained them


def test_a_figure_with_the_same_pixels_is_left_alone(tmp_path):
    from PIL import Image, PngImagePlugin

    from flatlab.train.study import plot_tradeoff

    rows = [{"method": "sgd", "is_reference": True, "test_top1_mean": 0.5, "test_top1_std": 0.01,
             "speed_vs_sgd": 1.0},
            {"method": "sam", "test_top1_mean": 0.52, "test_top1_std": 0.01, "speed_vs_sgd": 0.5,
             "vs_sgd_paired_mean": 0.02, "vs_sgd_paired_std": 0.005}]
    path = plot_tradeoff(rows, tmp_path / "tradeoff.png", title="t")
    assert b"Software" not in path.read_bytes()  # it would name matplotlib's version
    # the same picture as another matplotlib and zlib write it (committed elsewhere): other bytes
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "Matplotlib version0.0")
    Image.open(path).save(path, pnginfo=info, compress_level=1)
    committed = path.read_bytes()
    plot_tradeoff(rows, path, title="t")
    assert path.read_bytes() == committed
    rows[1]["vs_sgd_paired_mean"] = 0.03  # another picture is written
    plot_tradeoff(rows, path, title="t")
    assert path.read_bytes() != committed


def test_a_committed_study_tabulated_again_is_unchanged(tmp_path):
    # a copy, laid out as in the repository: the study file and its finished runs (no checkpoints)
    for name in ("sparse-overfit.yaml", "cpu-evidence.yaml"):
        (tmp_path / "benchmarks" / "studies").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "benchmarks" / "studies" / name, tmp_path / "benchmarks" / "studies" / name)
    committed = ROOT / "benchmarks" / "results" / "sparse-overfit"
    copy = tmp_path / "benchmarks" / "results" / "sparse-overfit"
    shutil.copytree(committed, copy)
    logs = []
    run_study(load_study(tmp_path / "benchmarks" / "studies" / "sparse-overfit.yaml"), log=logs.append)
    assert not [line for line in logs if "starting" in line or "resuming" in line]
    for name in ("results.json", "results.csv", "results.md"):
        assert (copy / name).read_bytes() == (committed / name).read_bytes(), name


def _terminal_sigint() -> None:
    """Ctrl-C as a shell hands it to a command: handled by default, not blocked. The test process
    may hold another state, which a child would inherit: a non-interactive shell starts a
    background job (`bash .ci/run &`, as a CI runner may) with SIGINT ignored, and Python keeps
    an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_stops_parallel_runs_with_one_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec(tmp_path, hessian=None, base={
        "dataset": "digits", "model": "cnn", "width": 0.5, "epochs": 200, "threads": 1})))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a session of its own: Ctrl-C goes to the whole process group, workers included, as in a terminal
    study = subprocess.Popen([sys.executable, "-m", "flatlab.cli", "study", str(path), "--jobs", "2"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=_terminal_sigint)
    try:
        trained = 0
        for line in study.stdout:  # both workers are past their first checkpoint
            trained += re.search(r"\] epoch +2/", line) is not None
            if trained == 2:
                break
        os.killpg(study.pid, signal.SIGINT)
        _, err = study.communicate(timeout=120)
    finally:
        if study.poll() is None:
            os.killpg(study.pid, signal.SIGKILL)
    assert study.returncode == 130
    assert err.splitlines() == ["flatlab study: interrupted; completed runs and epochs are checkpointed: "
                                "run the command again"]
    run = tmp_path / "study" / "sgd-seed0"
    assert (run / "checkpoint.pt").is_file() and not (run / "summary.json").exists()  # resumed next time


def test_a_session_records_the_package_versions_and_a_committed_one_keeps_none(tmp_path):
    from importlib.metadata import version

    study = Study(spec(tmp_path, seeds=[0], hessian=None))
    run_study(study, log=lambda _: None, progress=False)
    packages = json.loads((study.out / "results.json").read_text())["packages"]
    assert {"torch", "numpy", "pillow", "pyyaml", "matplotlib"} <= set(packages)
    assert packages["numpy"] == version("numpy") and packages["pillow"] == version("pillow")
    # results written before the versions were recorded: tabulated again, they stay without them
    committed = ROOT / "benchmarks" / "results" / "sparse-overfit" / "results.json"
    assert "packages" not in json.loads(committed.read_text())


def _check_study(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec(tmp_path, seeds=[0], base={"dataset": "digits", "model": "mlp", "epochs": 2,
                                                                  "threads": 1}), sort_keys=False))
    run_study(load_study(path), log=lambda _: None, progress=False)
    return path


def test_check_trains_a_finished_cell_again_and_compares_it_to_the_digit(tmp_path, capsys, monkeypatch):
    path = _check_study(tmp_path)
    finished = tmp_path / "study" / "s2sam-seed0"
    before = {f.name: f.read_bytes() for f in finished.iterdir() if f.is_file()}
    monkeypatch.chdir(tmp_path)  # the default scratch folder: runs/check/STUDY_NAME
    code, out, _ = cli(capsys, "study", path, "--check", "s2sam-seed0", "--no-progress")
    again = tmp_path / "runs" / "check" / "tiny" / "s2sam-seed0"
    assert code == 0 and "equal to the digit" in out.splitlines()[-1]
    assert (again / "summary.json").is_file()
    assert {f.name: f.read_bytes() for f in finished.iterdir() if f.is_file()} == before  # untouched
    # a run trained before flatlab recorded the packages, or had the fsdp field: what differs is the record
    meta = json.loads((finished / "config.json").read_text())
    del meta["packages"], meta["config"]["fsdp"]
    (finished / "config.json").write_text(json.dumps(meta))
    code, out, _ = cli(capsys, "study", path, "--check", "s2sam-seed0", "--no-progress")
    context = out.split("ran differently (committed -> again):\n", 1)[1].splitlines()
    assert code == 0 and [line.split(":")[0] for line in context] == ["  packages"]
    assert context[0].startswith("  packages: '(not recorded)' -> {'torch': ")
    # a number that differs in its last digit: named, with both values, and the exit code says so
    summary = json.loads((finished / "summary.json").read_text())
    summary["final_test_top1"] = math.nextafter(summary["final_test_top1"], 1.0)
    (finished / "summary.json").write_text(json.dumps(summary))
    code, out, _ = cli(capsys, "study", path, "--check", "s2sam-seed0", "--scratch", tmp_path / "elsewhere",
                       "--no-progress")
    assert code == 1 and (tmp_path / "elsewhere" / "s2sam-seed0" / "summary.json").is_file()
    diff = out.split(" numbers differ", 1)[1].split("ran differently", 1)[0].splitlines()[1:]
    diff = [line.strip() for line in diff]
    assert diff == [f"summary final_test_top1: {summary['final_test_top1']!r} -> "
                    f"{json.loads((again / 'summary.json').read_text())['final_test_top1']!r}"]
    assert "1 of " in out and " numbers differ" in out


@pytest.mark.parametrize("argv, expected", [
    (["--check", "sam-seed0"], r"no cell 'sam-seed0': a cell is METHOD-seedSEED .* METHOD one of sgd, s2sam, "
                               r"SEED one of 0; e\.g\. sgd-seed0$"),
    (["--check", "sgd-seed3"], r"no cell 'sgd-seed3'"),
    (["--check", "sgd-seed0", "--jobs", "2"], r"drop --rerun and --jobs$"),
    (["--scratch", "x"], r"add --check CELL"),
    (["--check", "sgd-seed0", "--scratch", "."], r"the scratch folder \. is the study's own"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_check_refuses_in_one_line(tmp_path, capsys, monkeypatch, argv, expected):
    path = _check_study(tmp_path)
    monkeypatch.chdir(tmp_path / "study")
    before = (tmp_path / "study" / "sgd-seed0" / "summary.json").read_bytes()
    code, _, err = cli(capsys, "study", path, *argv)
    assert code == 2 and re.search(expected, one_error(err, "study"))
    assert (tmp_path / "study" / "sgd-seed0" / "summary.json").read_bytes() == before


def test_check_refuses_an_unfinished_cell_before_training(tmp_path, capsys):
    path = _check_study(tmp_path)
    (tmp_path / "study" / "sgd-seed0" / "summary.json").unlink()
    code, _, err = cli(capsys, "study", path, "--check", "sgd-seed0", "--scratch", tmp_path / "scratch")
    assert code == 2 and "has not finished" in one_error(err, "study")
    assert not (tmp_path / "scratch").exists()


def _blocked_signals(queue) -> None:
    queue.put(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_ctrl_c_while_a_run_starts_reaches_the_study_and_never_the_run():
    import multiprocessing

    from flatlab.train.study import _sigint_held

    # as in a terminal (see _terminal_sigint), whatever earlier tests left; restored after
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        with pytest.raises(KeyboardInterrupt):
            with _sigint_held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # held back: the start goes on
            time.sleep(1.0)  # delivered when the hold ends (an ignored signal would be lost)
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        process = context.Process(target=_blocked_signals, args=(queue,))
        with _sigint_held():
            process.start()
        assert int(signal.SIGINT) in queue.get(timeout=60)  # the run's process never gets Ctrl-C
        process.join()
        assert int(signal.SIGINT) not in {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, handler)
