"""Issue 12, "a run is never lost and never lies": each user mistake is one ``error:`` line and exit 2,
no traceback, and no earlier result is lost. One test (or more) per item of the issue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import flatlab
from flatlab.cli import main
from flatlab.errors import UsageError
from flatlab.train import TrainConfig

ROOT = Path(__file__).parents[2]
QUICK = ["--dataset", "digits", "--model", "cnn", "--width", "0.25", "--epochs", "1", "--threads", "1"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``flatlab ARGV`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error(err: str, command: str = "train") -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"flatlab {command}: error: "), err
    return lines[0]


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
    assert "method 'sam'" in line and "does not take beta" in line


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
    from flatlab.train.run import check_optimizer
    from flatlab.train.study import load_study

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        for method in list_optimizers():
            check_optimizer(TrainConfig.from_layers([Layer(load_config_file(path), str(path)),
                                                     Layer({"optimizer": method}, None)]))
        assert "Swap --optimizer" not in path.read_text() or "section" in path.read_text()
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
