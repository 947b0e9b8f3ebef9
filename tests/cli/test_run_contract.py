"""Issue 12, "a run is never lost and never lies": each user mistake is one ``error:`` line and exit 2,
no traceback, and no earlier result is lost. One test (or more) per item of the issue."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import flatlab
from flatlab.errors import UsageError
from flatlab.train import TrainConfig
from flatlab.train.reports.runs import open_run, select_batches
from tests.helpers.cli import QUICK, cli, one_error
from tests.helpers.reference import full_hessian

ROOT = Path(__file__).parents[2]


def saved_config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())["config"]


# -- 1. an option the chosen method does not read -------------------------------------------------


def test_a_shipped_config_trains_with_the_methods_its_comment_names(tmp_path, capsys):
    config = ROOT / "configs" / "esam-cifar10-resnet18.yaml"
    for method in ("sam", "sgd", "esam"):
        code, _, err = cli(capsys, "train", "--config", config, *QUICK, "--optimizer", method, "--crop-padding", "1",
                           "--out", tmp_path, "--name", method)
        assert code == 0, err
    sam, sgd, esam = (saved_config(tmp_path / m) for m in ("sam", "sgd", "esam"))
    assert (sam["rho"], sam["beta"], sam["weight_decay"]) == (0.05, None, 0.001)
    assert (sgd["rho"], sgd["beta"], sgd["weight_decay"]) == (None, None, 0.0005)
    assert (esam["rho"], esam["beta"], esam["gamma"]) == (0.05, 0.6, 0.5)


@pytest.mark.parametrize("argv, method, bad, takes", [
    (["--optimizer", "sgd", "--rho", "0.1"], "sgd", "rho", "no method options"),
    (["--optimizer", "s2sam", "--mask-sparsity", "0.3"], "s2sam", "mask_sparsity", "rho"),
    (["--optimizer", "sam", "--beta", "0.5"], "sam", "beta", "rho, p, ascent_steps"),
    (["--optimizer", "adamw", "--momentum", "0.5"], "adamw", "momentum", "lr"),
])
def test_an_option_the_method_does_not_read_is_one_line(tmp_path, capsys, argv, method, bad, takes):
    code, _, err = cli(capsys, "train", *QUICK, *argv, "--out", tmp_path)
    assert code == 2
    line = one_error(err)
    assert repr(method) in line and bad in line and takes in line
    assert not (tmp_path / "digits-cnn-sgd-seed0").exists()


def test_an_option_from_a_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer: esam\nbeta: 0.6\n")
    code, _, err = cli(capsys, "train", "--config", path, *QUICK, "--optimizer", "sam", "--out", tmp_path)
    assert code == 2 and "'sam' does not take beta" in one_error(err) and str(path) in err
    path.write_text("optimizer: esam\nsam: {beta: 0.6}\n")  # a section must hold what its method takes
    code, _, err = cli(capsys, "train", "--config", path, *QUICK, "--out", tmp_path)
    assert code == 2 and "'sam' does not take beta" in one_error(err)


def test_a_study_method_with_an_option_it_does_not_read_is_one_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(f"out: {tmp_path / 'study'}\nbase: {{dataset: digits, epochs: 1}}\n"
                    "methods:\n  sam: {optimizer: sam, beta: 0.5}\n")
    code, _, err = cli(capsys, "study", path)
    assert code == 2
    line = one_error(err, "study")
    assert f"{path}: methods.sam.beta: optimizer 'sam' does not take beta" in line


def test_create_optimizer_names_the_method_and_what_it_takes():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(UsageError, match=r"optimizer 'sam' does not take beta; it takes .*rho"):
        flatlab.create_optimizer("sam", model, lr=0.1, beta=0.5)
    with pytest.raises(UsageError, match=r"optimizer 'sgd' does not take rho"):
        flatlab.create_optimizer("sgd", model, lr=0.1, rho=0.5)
    with pytest.raises(UsageError, match="does not take rho"):
        TrainConfig(optimizer="sgd", rho=0.1)


def test_every_shipped_config_and_study_is_usable_with_every_method():
    from flatlab.optim import list_optimizers
    from flatlab.train import load_config_file
    from flatlab.train.config import Layer
    from flatlab.train.optimizer import check_optimizer
    from flatlab.train.study import load_study

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        raw = load_config_file(path)
        flat = {k: v for k, v in raw.items() if not (k in list_optimizers() and isinstance(v, dict))}
        for method in list_optimizers():
            config = TrainConfig.from_layers([Layer(raw, str(path)), Layer({"optimizer": method}, None)])
            check_optimizer(config)
            # the file's flat keys, then the chosen method's section; no other method's section
            expected = TrainConfig.from_dict({**flat, **raw.get(method, {}), "optimizer": method}, str(path))
            assert config.to_dict() == expected.to_dict(), (path.name, method)
    for path in sorted((ROOT / "benchmarks" / "studies").glob("*.yaml")):
        load_study(path)


# -- 2. values are converted to their field's type or rejected in one line -------------------------


def test_yaml_numbers_in_any_spelling_are_numbers(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("weight_decay: 5e-4\nlr: 1E-2\nepochs: 1.0\nbatch_size: 1_28\noptimizer: sam\nrho: .05\n")
    code, _, err = cli(capsys, "train", "--config", path, "--width", "0.25", "--threads", "1", "--out", tmp_path,
                       "--name", "x")
    assert code == 0, err
    config = saved_config(tmp_path / "x")
    assert (config["weight_decay"], config["lr"], config["epochs"], config["batch_size"]) == (5e-4, 0.01, 1, 128)
    assert isinstance(config["epochs"], int)


@pytest.mark.parametrize("line, key, expected", [
    ("epochs: 1.5", "epochs", "an integer"),
    ("seed: 1.5", "seed", "an integer"),
    ("flip: 'no'", "flip", "true or false"),
    ("rho: abc", "rho", "a number"),
    ("model_args: [1, 2]", "model_args", "a mapping"),
    ("name: 12", "name", "a string"),
    ("milestones: [a]", "milestones", "a list of numbers"),
])
def test_a_mistyped_value_in_a_file_names_key_file_and_type(tmp_path, capsys, line, key, expected):
    path = tmp_path / "c.yaml"
    path.write_text(line + "\n")
    code, _, err = cli(capsys, "train", "--config", path, *QUICK[6:], "--out", tmp_path)
    assert code == 2
    message = one_error(err)
    assert f"{key}: expected {expected}" in message and str(path) in message
    assert not any(tmp_path.glob("digits-*"))


@pytest.mark.parametrize("argv, flag", [
    (["--epochs", "1.5"], "--epochs"),
    (["--rho", "abc"], "--rho"),
    (["--model-args", '{"foo": 1}'], "'foo'"),
    (["--model-args", '{"channels": "x"}'], "channels"),
    (["--model-args", "[1]"], "--model-args"),
])
def test_a_mistyped_flag_is_one_line(tmp_path, capsys, argv, flag):
    code, _, err = cli(capsys, "train", *QUICK, *argv, "--out", tmp_path)
    assert code == 2
    assert flag in one_error(err)


# -- 3. --overwrite replaces the old run only when the new one writes its first checkpoint ------------


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path, capsys, monkeypatch):
    base = ["train", *QUICK, "--out", tmp_path, "--name", "victim"]
    assert cli(capsys, *base)[0] == 0
    run = tmp_path / "victim"
    (run / "analysis").mkdir()
    (run / "analysis" / "hessian.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, _, err = cli(capsys, *base, "--overwrite", "--dataset", "imagefolder", "--data-root", "/typo/path")
    assert code == 2 and "does not exist" in one_error(err)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing lost

    from flatlab.train import loop  # Ctrl-C in the first epoch of the replacement: the old run survives
    original = loop.StepRunner.__call__
    monkeypatch.setattr(loop.StepRunner, "__call__", lambda self, x, y: (_ for _ in ()).throw(KeyboardInterrupt))
    code, _, err = cli(capsys, *base, "--overwrite")
    assert code == 130 and "untouched" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    monkeypatch.setattr(loop.StepRunner, "__call__", original)

    code, _, err = cli(capsys, *base, "--overwrite", "--lr", "0.01")
    assert code == 0, err
    assert saved_config(run)["lr"] == 0.01
    assert not (run / "analysis").exists()  # everything of the old run went
    assert not list(tmp_path.glob(".victim*"))


# -- 4. seeds get their own directories; compare refuses duplicates; --seeds finishes what is missing --


def test_seeds_get_distinct_directories_and_a_rerun_finishes_the_missing_ones(tmp_path, capsys, monkeypatch):
    argv = ["train", *QUICK, "--out", tmp_path, "--name", "foo", "--seeds", "0,1,2", "--overwrite"]
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    dirs = sorted(p.name for p in tmp_path.iterdir())
    assert dirs == ["foo-seed0", "foo-seed1", "foo-seed2"]
    assert [saved_config(tmp_path / d)["seed"] for d in dirs] == [0, 1, 2]
    assert "| 3 |" in out and "± 0.00" not in out

    import shutil

    shutil.rmtree(tmp_path / "foo-seed2")  # as if interrupted before the last seed
    kept = (tmp_path / "foo-seed0" / "model.pt").read_bytes()
    code, out, err = cli(capsys, *argv[:-1])  # the same command, without --overwrite
    assert code == 0, err
    assert "kept" in out and (tmp_path / "foo-seed2" / "summary.json").is_file()
    assert (tmp_path / "foo-seed0" / "model.pt").read_bytes() == kept


def test_compare_refuses_a_run_counted_twice(tmp_path, capsys):
    assert cli(capsys, "train", *QUICK, "--out", tmp_path, "--name", "a")[0] == 0
    code, _, err = cli(capsys, "compare", tmp_path / "a", tmp_path / "a")
    assert code == 2 and "twice" in one_error(err, "compare")
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    code, _, err = cli(capsys, "compare", tmp_path / "a", tmp_path / "copy")
    assert code == 2 and "same config and seed" in one_error(err, "compare")


def test_compare_shows_n1_and_no_speed_ratio_without_sgd(tmp_path, capsys):
    assert cli(capsys, "train", *QUICK, "--out", tmp_path, "--name", "a")[0] == 0
    code, out, _ = cli(capsys, "compare", tmp_path / "a")
    assert code == 0
    row = out.strip().splitlines()[-1]
    assert "(n=1)" in row and "± 0.00" not in row and "nan" not in row and "| - |" in row


# -- 5. unwritable output folders are refused before any work; an unwritable cache only warns -------


def test_an_unwritable_out_is_one_line_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, out, err = cli(capsys, "train", *QUICK, "--out", blocker / "runs")
    assert code == 2 and "cannot write" in one_error(err) and "epoch" not in out
    code, _, err = cli(capsys, "compare", tmp_path, "--json", blocker / "t.json")
    assert code == 2 and "cannot write" in one_error(err, "compare")


def test_analysis_refuses_an_unwritable_out_before_computing(tmp_path, capsys, monkeypatch):
    assert cli(capsys, "train", *QUICK, "--out", tmp_path, "--name", "a")[0] == 0
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    from flatlab.analysis import hessian

    def never(*args, **kwargs):
        raise AssertionError("computed before checking the output folder")

    monkeypatch.setattr(hessian, "top_eigenvalues", never)
    code, _, err = cli(capsys, "hessian", tmp_path / "a", "--out", blocker / "x", "--batches", "1")
    assert code == 2 and "cannot write" in one_error(err, "hessian")


# -- 6. outputs keep the umask's permissions ------------------------------------------------------------


def test_run_files_are_readable_by_the_group_and_others(tmp_path, capsys):
    import os

    old = os.umask(0o022)
    try:
        assert cli(capsys, "train", *QUICK, "--out", tmp_path, "--name", "a")[0] == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "a").iterdir()}
    assert modes and all(m == 0o644 for m in modes.values()), modes


# -- 7. the data root is stored absolute; resume and analysis take --data-root -----------------------


def test_a_relative_data_root_is_stored_absolute_and_resume_takes_data_root(tmp_path, capsys, monkeypatch):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for c in ("a", "b"):
            folder = tmp_path / "data" / "tiny" / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    monkeypatch.setenv("FLATLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path / "data")
    argv = ["train", "--dataset", "imagefolder", "--data-root", "tiny", "--model", "cnn", "--width", "0.25",
            "--epochs", "2", "--batch-size", "4", "--threads", "1", "--out", tmp_path / "runs", "--name", "t"]
    from flatlab.train import run as run_module

    original, calls = run_module._Run.after_step, []

    def interrupted(self):
        original(self)
        calls.append(1)
        if len(calls) == 5:  # Ctrl-C in epoch 2 (4 steps per epoch)
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module._Run, "after_step", interrupted)
    code, _, err = cli(capsys, *argv)
    monkeypatch.setattr(run_module._Run, "after_step", original)
    assert code == 130 and f"flatlab train --resume {tmp_path / 'runs' / 't'}" in err
    run = tmp_path / "runs" / "t"
    assert saved_config(run)["data_root"] == str(tmp_path / "data" / "tiny")
    monkeypatch.chdir(tmp_path)  # elsewhere, and the data moved
    (tmp_path / "data" / "tiny").rename(tmp_path / "moved")
    code, _, err = cli(capsys, "train", "--resume", run)
    assert code == 2 and "does not exist" in one_error(err)
    code, _, err = cli(capsys, "train", "--resume", run, "--data-root", "moved")
    assert code == 0, err
    assert saved_config(run)["data_root"] == str(tmp_path / "moved")
    code, _, err = cli(capsys, "hessian", run, "--batches", "1", "--batch-size", "4", "--k", "1", "--trace-samples",
                       "0", "--density", "0", "--data-root", "moved")
    assert code == 0, err


# -- 8. checkpoints load with weights_only=True; another run's checkpoint is refused -----------------


def test_checkpoints_load_weights_only_and_another_runs_checkpoint_is_refused(tmp_path, capsys):
    for name, method in (("sam", "sam"), ("esam", "esam")):
        assert cli(capsys, "train", *QUICK, "--epochs", "2", "--optimizer", method, "--out", tmp_path,
                   "--name", name)[0] == 0
    for name in ("sam", "esam"):
        for f in ("checkpoint.pt", "model.pt"):
            torch.load(tmp_path / name / f, weights_only=True)
    (tmp_path / "sam" / "summary.json").unlink()  # make "sam" resumable, then give it ESAM's checkpoint
    (tmp_path / "sam" / "checkpoint.pt").write_bytes((tmp_path / "esam" / "checkpoint.pt").read_bytes())
    code, _, err = cli(capsys, "train", "--resume", tmp_path / "sam")
    assert code == 2 and "optimizer 'esam'" in one_error(err) and "another run" in err
    (tmp_path / "sam" / "model.pt").write_bytes((tmp_path / "esam" / "model.pt").read_bytes())
    code, _, err = cli(capsys, "hessian", tmp_path / "sam", "--batches", "1", "--k", "1", "--density", "0",
                       "--trace-samples", "0")
    assert code == 2 and "another run" in one_error(err, "hessian")


def test_a_pickled_object_in_model_pt_is_not_executed(tmp_path, capsys):
    assert cli(capsys, "train", *QUICK, "--out", tmp_path, "--name", "a")[0] == 0
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    state = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    state["evil"] = Evil()
    torch.save(state, tmp_path / "a" / "model.pt")
    code, _, err = cli(capsys, "hessian", tmp_path / "a", "--batches", "1", "--k", "1", "--density", "0",
                       "--trace-samples", "0")
    assert code == 2 and "model.pt" in one_error(err, "hessian")
    assert not marker.exists()


# -- 9. the smaller ones ------------------------------------------------------------------------------


def test_version(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"flatlab {flatlab.__version__}"


def test_the_demo_runs_twice():
    makefile = (ROOT / "Makefile").read_text()
    demo = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "flatlab train" in demo and "--overwrite" in demo


def test_fp16_on_cpu_is_refused(tmp_path, capsys):
    code, _, err = cli(capsys, "train", *QUICK, "--device", "cpu", "--amp", "fp16", "--out", tmp_path)
    assert code == 2 and "fp16" in one_error(err) and "bf16" in err


def test_a_huge_loss_stops_the_run_naming_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    from flatlab.train import loop

    original = loop.StepRunner.__call__
    calls = {"n": 0}

    def exploding(self, x, y):
        loss, hits = original(self, x, y)
        calls["n"] += 1
        return (loss * 0 + 1e25 if calls["n"] > 12 else loss), hits  # 12 steps per epoch: epoch 2 diverges

    monkeypatch.setattr(loop.StepRunner, "__call__", exploding)
    code, _, err = cli(capsys, "train", *QUICK, "--epochs", "3", "--out", tmp_path, "--name", "d")
    assert code == 1 and "diverged" in err and "epoch 1" in err and "checkpoint.pt" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    calls["n"] = -10**9  # diverges from the first step on: no checkpoint, and the message does not offer one
    monkeypatch.setattr(loop.StepRunner, "__call__", lambda self, x, y: (original(self, x, y)[0] * math.nan,
                                                                          original(self, x, y)[1]))
    code, _, err = cli(capsys, "train", *QUICK, "--out", tmp_path, "--name", "n")
    assert code == 1 and "before any checkpoint" in err and "resume" not in err


@pytest.mark.parametrize("argv, message", [
    (["--device", "foo", "--epochs", "1"], "device must be"),
    (["--resume", "{tmp}/nope"], "not a flatlab run directory"),
    (["--resume", "{tmp}/nope", "--lr", "0.1"], "drop --lr"),
])
def test_errors_have_the_prefix_and_exit_2(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = cli(capsys, "train", *argv)
    assert code == 2 and message in one_error(err)


def test_resuming_a_finished_run_says_so(tmp_path, capsys):
    assert cli(capsys, "train", *QUICK, "--out", tmp_path, "--name", "a")[0] == 0
    code, out, err = cli(capsys, "train", "--resume", tmp_path / "a")
    assert code == 2 and "has finished" in one_error(err) and "epoch 2/1" not in out + err


def test_download_advice_names_the_flag(tmp_path, capsys):
    code, _, err = cli(capsys, "train", *QUICK[2:], "--dataset", "cifar10", "--data-root", tmp_path, "--out", tmp_path)
    assert code == 2 and "pass --download" in one_error(err)


def test_analysis_without_matplotlib_writes_the_numbers(tmp_path, capsys, monkeypatch):
    import sys

    # an MLP of 1167 parameters, whose Hessian is quick to compute in full below
    assert cli(capsys, "train", *QUICK, "--model", "mlp", "--width", "0.05", "--out", tmp_path, "--name", "a")[0] == 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    from flatlab.train.reports import common

    monkeypatch.setattr(common._OptionalPlots, "noted", False)
    code, _, err = cli(capsys, "hessian", tmp_path / "a", "--batches", "1", "--k", "1", "--trace-samples", "0")
    assert code == 0, err
    assert "matplotlib is not installed" in err and "Traceback" not in err
    record = json.loads((tmp_path / "a" / "analysis" / "hessian.json").read_text())
    assert record["figures"] == []
    # lambda1 is the top eigenvalue of the Hessian of the loss on the batch analysed (the default:
    # one batch of 128 test images), computed here densely in float64
    run = open_run(tmp_path / "a")
    (x, y), = select_batches(run, 1, 128)
    exact = torch.linalg.eigvalsh(full_hessian(run.model.double().eval(), x.double(), y))[-1]
    assert record["results"]["lambda1"] == pytest.approx(float(exact), rel=1e-5)


def test_an_unwritable_cache_only_disables_caching_and_the_decode_is_announced(tmp_path, capsys, monkeypatch):
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            folder = tmp_path / "tiny" / split / c
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FLATLAB_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="cannot be written"):  # on stderr outside pytest
        code, _, err = cli(capsys, "train", "--dataset", "imagefolder", "--data-root", tmp_path / "tiny", "--model",
                           "cnn", "--width", "0.25", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--out",
                           tmp_path / "runs")
    assert code == 0, err
    assert "decoding the images" in err and "Traceback" not in err


# -- 11. tqdm and TensorBoard ---------------------------------------------------------------------------


def test_tensorboard_gets_the_per_epoch_metrics(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, _, err = cli(capsys, "train", *QUICK, "--epochs", "2", "--tensorboard", "--out", tmp_path, "--name", "tb")
    assert code == 0, err
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("test_top1")] == [1, 2]
    assert "train_loss" in events.Tags()["scalars"]


def test_tensorboard_missing_is_one_line(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, _, err = cli(capsys, "train", *QUICK, "--tensorboard", "--out", tmp_path)
    assert code == 2 and "pip install tensorboard" in one_error(err)


# -- 10. a study whose runs exist finishes at once; --rerun trains again --------------------------------


def test_a_finished_study_only_tabulates_and_rerun_trains_again(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(f"out: {tmp_path / 'study'}\nbase: {{dataset: digits, model: cnn, width: 0.25, epochs: 1, "
                    "threads: 1}\nmethods:\n  sgd: {optimizer: sgd}\n")
    assert cli(capsys, "study", path)[0] == 0
    model = tmp_path / "study" / "sgd-seed0" / "model.pt"
    first = model.stat().st_mtime_ns
    code, out, _ = cli(capsys, "study", path)
    assert code == 0 and "finished, skipped" in out and model.stat().st_mtime_ns == first
    code, out, _ = cli(capsys, "study", path, "--rerun")
    assert code == 0 and "training again" in out and model.stat().st_mtime_ns != first


def test_list_names_every_optimizer_with_a_line_on_it(capsys):
    import flatlab
    from flatlab.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in flatlab.list_optimizers():
        line = next(x for x in out.splitlines() if x.split() and x.split()[0] == name)
        assert len(line.split()) > 1, name  # a description follows the name
