"""The command-line contract: a user's mistake is one ``error:`` line on stderr and exit code 2; any
other exception (a bug, a real failure) keeps its traceback. And every ``flatlab train`` flag has help."""

import dataclasses
import math
import re
import subprocess
import sys

import pytest

from flatlab.cli import main
from flatlab.errors import UsageError
from flatlab.optim import BASE_OPTIMIZERS, list_optimizers
from flatlab.train import TrainConfig
from flatlab.train.config import field_help


def one_error_line(capsys, command="train"):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"flatlab {command}: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rho", "-1"], "rho"),
        (["--optimizer", "nosuch"], "unknown optimizer 'nosuch'"),
        (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
        (["--dataset", "imagefolder"], "needs root="),  # no --data-root
        (["--dataset", "mnist", "--data-root", "{tmp}/no-mnist"], "idx files not found"),
        (["--dataset", "imagefolder", "--data-root", "{tmp}/no-folder"], "does not exist"),
        (["--model", "nosuch"], "unknown model 'nosuch'"),
        (["--epochs", "0"], "epochs must be an integer >= 1, got epochs=0"),
        (["--warmup-epochs", "2"], "warmup_epochs must be in [0, 1)"),
        (["--sparse", "nosuch", "--sparsity", "0.5"], "unknown sparse method 'nosuch'"),
        (["--sparse", "rigl", "--sparsity", "0.5", "--sparse-end", "0"], "sparse_end must be in (0, 1]"),
        (["--model", "wrn28-10", "--model-args", '{"depth": 11}'], "'wrn28-10' has no option 'depth'"),
        (["--model", "wrn28-10", "--model-args", '{"dropout": 1.5}'], "dropout must be in [0, 1)"),
        (["--optimizer", "sgd", "--max-grad-norm", "1"], "max_grad_norm is applied by the SAM-family"),
        (["--config", "{tmp}/nope.yaml"], "config file not found"),
        (["--batch-size", "5000"], "larger than the"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = main(["train", "--epochs", "1", "--width", "0.25", "--threads", "1", "--out", str(tmp_path), *argv])
    assert code == 2
    assert message in one_error_line(capsys)


def test_an_existing_run_and_a_resume_with_flags_are_user_mistakes(tmp_path, capsys):
    argv = ["train", "--epochs", "1", "--width", "0.25", "--threads", "1", "--out", str(tmp_path), "--name", "x"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert "--resume" in one_error_line(capsys)
    assert main(["train", "--resume", str(tmp_path / "x"), "--lr", "0.1"]) == 2
    assert "drop --lr" in one_error_line(capsys)
    assert main(["compare", str(tmp_path / "nope")]) == 2
    assert "not a flatlab run directory" in one_error_line(capsys, "compare")


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flatlab.cli", "train", "--rho", "-1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["flatlab train: error: rho must be >= 0, got rho=-1.0"]


@pytest.mark.parametrize("error", [RuntimeError, ValueError])
def test_a_failure_inside_training_keeps_its_traceback(tmp_path, monkeypatch, capsys, error):
    """A ValueError/RuntimeError from torch is a bug (or out of memory), not the user's mistake: the
    CLI must not turn it into a one-line message."""
    from flatlab.train import loop

    def broken(self, x, y):
        raise error("mat1 and mat2 shapes cannot be multiplied (128x10 and 12x10)")

    monkeypatch.setattr(loop.StepRunner, "__call__", broken)
    with pytest.raises(error, match="mat1 and mat2") as info:
        main(["train", "--epochs", "1", "--width", "0.25", "--threads", "1", "--out", str(tmp_path)])
    assert not isinstance(info.value, UsageError)
    assert "error:" not in capsys.readouterr().err


def test_divergence_and_interrupt_stay_one_line(tmp_path, monkeypatch, capsys):
    from flatlab.train import loop

    original = loop.StepRunner.__call__

    def poisoned(self, x, y):
        loss, hits = original(self, x, y)
        return loss * math.nan, hits

    monkeypatch.setattr(loop.StepRunner, "__call__", poisoned)
    argv = ["train", "--epochs", "1", "--width", "0.25", "--threads", "1", "--out", str(tmp_path)]
    assert main([*argv, "--name", "nan"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Lower --lr" in err and len(err.strip().splitlines()) == 1

    def interrupted(self, x, y):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.StepRunner, "__call__", interrupted)
    assert main([*argv, "--name", "stop"]) == 130
    assert "interrupted" in capsys.readouterr().err


def option_help(text: str) -> dict[str, str]:
    """``{"--flag": "its help text"}`` from an argparse help screen (help on the flag's line or on the
    indented lines below it)."""
    helps: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        option = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if option:
            current = [option.group(2) or ""]
            for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", option.group(1)):
                helps[flag] = current
        elif current is not None and line.startswith("      ") and line.strip():
            current.append(line.strip())
        else:
            current = None
    return {flag: " ".join(p for p in parts if p) for flag, parts in helps.items()}


def test_every_config_field_has_a_flag_with_help(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    helps = option_help(capsys.readouterr().out)
    assert helps["--config"] == "YAML or JSON file of config keys"  # the parser of the parser
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        text = field_help(f.name)
        assert text.strip(), f"{f.name} has no help"
        assert helps.get(flag), f"{flag} shows no help"
        assert " ".join(helps[flag].split()) == " ".join(text.split()), flag
        if isinstance(f.metadata["help"], str):  # the field's own text, maybe with its default after it
            assert text.startswith(f.metadata["help"]), flag
        if f.type.startswith("bool"):
            assert helps.get("--no-" + flag[2:]) == helps[flag]


def help_screen(capsys, monkeypatch, command: str) -> dict[str, str]:
    monkeypatch.setenv("COLUMNS", "1000")  # unwrapped: a wrapped line may break inside a name, after a hyphen
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    return option_help(capsys.readouterr().out)


def names_listed(text: str) -> list[str]:
    """``"a, b or c"`` -> ``["a", "b", "c"]``."""
    return re.split(r", | or ", text)


def test_the_optimizer_and_base_help_list_every_registered_name(monkeypatch, capsys):
    """--optimizer listed 9 of the registry's methods (no looksam, ..., fsam) and --base left out adam:
    both are built from the registries when the parser is."""
    from flatlab.optim import registry

    monkeypatch.setitem(registry._REGISTRY, "my-sam", registry._REGISTRY["sam"])  # one registered late
    helps = help_screen(capsys, monkeypatch, "train")
    optimizers = names_listed(helps["--optimizer"].split(" (see")[0])
    assert sorted(optimizers) == sorted(list_optimizers()) and {"looksam", "fsam", "my-sam"} <= set(optimizers)
    bases = names_listed(helps["--base"].split(": ", 1)[1].split(" (default")[0])
    assert sorted(bases) == sorted(BASE_OPTIMIZERS) == ["adam", "adamw", "bsam", "sgd"]


def test_every_flag_shows_its_default(monkeypatch, capsys):
    helps = help_screen(capsys, monkeypatch, "train")
    for f in dataclasses.fields(TrainConfig):
        assert "(default" in helps["--" + f.name.replace("_", "-")], f.name
    assert helps["--epochs"].endswith("(default: 10)") and helps["--lr"].endswith("(default: 0.05)")
    assert helps["--milestones"].endswith("(default: 0.5,0.75)") and helps["--compile"].endswith("(default: off)")
    assert helps["--accumulate"].endswith("(default: 1)") and helps["--optimizer"].endswith("(default: sam)")
    assert helps["--gamma"].endswith("(default: the method's)")
    budgets = {"landscape": "4", "hessian": "4", "gradstats": "8", "robustness": "all"}  # docs/analysis.md
    for command, batches in budgets.items():
        helps = help_screen(capsys, monkeypatch, command)
        missing = [flag for flag, text in helps.items() if flag != "--help" and "default" not in text]
        assert not missing, (command, missing)
        assert helps["--batches"].endswith(f"(default {batches})"), command
        assert "(default: torch's choice)" in helps["--threads"]


def test_flags_parse_to_their_field_types(tmp_path):
    from flatlab.cli import build_parser

    args = build_parser().parse_args(["train", "--train-subset", "7", "--p", "inf", "--milestones", "0.3,0.6",
                                      "--model-args", '{"alpha": 5}', "--no-flip", "--width", "0.5"])
    assert args.train_subset == 7 and isinstance(args.train_subset, int)
    assert args.p == math.inf and args.milestones == [0.3, 0.6] and args.model_args == {"alpha": 5}
    assert args.flip is False and args.width == 0.5


def test_check_optimizer_turns_the_optimizers_argument_errors_into_usage_errors():
    from flatlab.train.optimizer import check_optimizer

    with pytest.raises(UsageError, match="nosuch"):
        check_optimizer(TrainConfig(optimizer="nosuch"))
    with pytest.raises(UsageError, match="beta"):
        check_optimizer(TrainConfig(optimizer="esam", beta=1.5))
    check_optimizer(TrainConfig(optimizer="esam", beta=0.5))


def test_the_accumulate_help_says_where_the_step_is_not_the_whole_batch_step(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    accumulate = text[text.rindex("--accumulate ACCUMULATE"):][:600]
    assert "whole batch" in accumulate and "BatchNorm" in accumulate
