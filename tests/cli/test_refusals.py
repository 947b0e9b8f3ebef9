"""Input the command line used to take silently or answer with a traceback: a run name that is a
path, options the dataset ignores, a corrupt checkpoint, a mistyped --seeds. Each is one ``error:``
line and exit 2, before anything is written."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch

from flatlab.cli import build_parser
from flatlab.train import TrainConfig
from flatlab.train.rundir import load_run_config
from tests.helpers.cli import QUICK, cli, one_error

# -- a run name is a name, not a path ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "..", ".", "", "a\\b"])
def test_a_name_that_is_a_path_is_refused_before_anything_is_created(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "train", *QUICK, "--name", name, "--out", "r9")
    assert code == 2
    assert f"got name={name!r}" in one_error(err) and "plain folder name" in err
    assert sorted(os.listdir(tmp_path)) == []  # neither r9/ nor ../escape


def test_a_name_with_dots_inside_is_a_name(tmp_path, capsys):
    code, _, err = cli(capsys, "train", *QUICK, "--name", "lr0.05..v2", "--out", tmp_path)
    assert code == 0, err
    assert (tmp_path / "lr0.05..v2" / "summary.json").is_file()


# -- options the dataset would ignore ----------------------------------------------------------------


def test_a_data_root_for_the_embedded_digits_is_refused(tmp_path, capsys):
    code, _, err = cli(capsys, "train", *QUICK, "--data-root", tmp_path / "data", "--out", tmp_path / "runs")
    assert code == 2 and "embedded" in one_error(err) and "--data-root" in err
    assert not (tmp_path / "runs").exists()


def test_an_old_digits_run_that_saved_a_data_root_still_loads(tmp_path, capsys):
    """Versions that ignored --data-root on digits saved it: resuming and analysing such a run must
    not trip on the new refusal."""
    assert cli(capsys, "train", *QUICK, "--out", tmp_path, "--name", "old")[0] == 0
    meta_path = tmp_path / "old" / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["data_root"] = str(tmp_path / "somewhere")
    meta_path.write_text(json.dumps(meta))
    assert load_run_config(tmp_path / "old").data_root is None
    code, _, err = cli(capsys, "hessian", tmp_path / "old", "--batches", "1", "--k", "1", "--density", "0",
                       "--trace-samples", "0")
    assert code == 0, err


def test_a_saved_config_drops_what_had_no_effect_and_keeps_the_rest():
    old = {"optimizer": "sgd", "rho": 0.05, "dataset": "digits", "data_root": "/data"}
    config = TrainConfig.from_dict(old, "config.json", lenient=True)
    assert (config.rho, config.data_root, config.optimizer) == (None, None, "sgd")
    cifar = TrainConfig.from_dict({**old, "dataset": "cifar10"}, "config.json", lenient=True)
    assert (cifar.rho, cifar.data_root) == (None, "/data")
    with pytest.raises(ValueError, match="data_root"):
        TrainConfig.from_dict({"data_root": "/data"}, "config.json")


@pytest.mark.parametrize("argv, message", [
    (["--train-subset", "1438"], "train_subset=1438 is more than the 1437 training samples of digits"),
    (["--test-subset", "361"], "test_subset=361 is more than the 360 test samples of digits"),
    (["--holdout", "1000", "--train-subset", "438"],
     "train_subset=438 is more than the 437 training samples of digits left after the holdout"),
])
def test_a_subset_larger_than_the_dataset_is_refused(tmp_path, capsys, argv, message):
    code, _, err = cli(capsys, "train", *QUICK, *argv, "--out", tmp_path)
    assert code == 2 and message in one_error(err)
    assert list(tmp_path.iterdir()) == []


def test_a_subset_of_exactly_the_dataset_trains_on_all_of_it(tmp_path, capsys):
    code, out, err = cli(capsys, "train", *QUICK, "--train-subset", "1437", "--out", tmp_path, "--name", "all")
    assert code == 0, err
    assert "(1437 train)" in out


# -- a corrupt checkpoint --------------------------------------------------------------------------


def _corruptions(good: bytes) -> dict[str, bytes]:
    flipped = bytearray(good)
    flipped[66] ^= 0xFF  # inside data.pkl, the first member of the zip: an unpickling error
    return {"truncated": good[: len(good) // 2], "zeros": bytes(len(good)), "pickle": bytes(flipped),
            "empty": b""}


def test_a_corrupt_checkpoint_is_named_without_torchs_weights_only_advice(tmp_path, capsys):
    assert cli(capsys, "train", *QUICK, "--epochs", "2", "--out", tmp_path, "--name", "a")[0] == 0
    (tmp_path / "a" / "summary.json").unlink()  # resumable
    checkpoint = tmp_path / "a" / "checkpoint.pt"
    good = checkpoint.read_bytes()
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    for kind, data in _corruptions(good).items():
        checkpoint.write_bytes(data)
        code, _, err = cli(capsys, "train", "--resume", tmp_path / "a")
        line = one_error(err)
        assert code == 2, kind
        assert f"checkpoint {checkpoint} is unreadable, corrupt" in line, kind
        assert "weights_only" not in line and "Weights only" not in line and "trust" not in line, (kind, line)


# -- argparse types read well ----------------------------------------------------------------------


def test_a_mistyped_seed_list_says_what_is_expected(capsys):
    code, _, err = cli(capsys, "train", "--seeds", "a")
    assert code == 2
    line = one_error(err)
    assert "<lambda>" not in line
    assert line.endswith("argument --seeds: expected comma-separated integer seeds, e.g. 0,1,2, got 'a'")
    assert build_parser().parse_args(["train", "--seeds", "3,1"]).seeds == [3, 1]


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        yield parser.prog, action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)


def test_no_flag_parses_with_an_anonymous_function():
    """argparse names the type function in "invalid <name> value": a lambda reads "<lambda>"."""
    anonymous = [(prog, action.dest) for prog, action in _actions(build_parser())
                 if getattr(action.type, "__name__", "") == "<lambda>"]
    assert anonymous == []


def test_config_from_a_file_refuses_a_path_name_too(tmp_path):
    with pytest.raises(ValueError, match="plain folder name"):
        TrainConfig.from_dict({"name": "runs/a"}, str(tmp_path / "c.yaml"))
    assert TrainConfig(name="a-b.c").run_name() == "a-b.c"
    assert Path(TrainConfig(out="x").out) / TrainConfig(name=None).run_name() == Path("x/digits-cnn-sam-seed0")


# -- a method the model cannot serve ---------------------------------------------------------------


def test_sam_on_on_a_model_without_normalisation_layers_is_refused(tmp_path, capsys):
    code, _, err = cli(capsys, "train", *QUICK[:2], "--model", "mlp", *QUICK[4:], "--optimizer", "sam-on",
                       "--out", tmp_path, "--name", "x")
    assert code == 2
    assert "MLP has no BatchNorm, LayerNorm or GroupNorm" in one_error(err)
    assert not (tmp_path / "x").exists()

