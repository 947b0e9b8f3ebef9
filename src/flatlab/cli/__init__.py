"""The `flatlab` command line: `flatlab train`, `flatlab compare`, `flatlab list` and the analysis commands.

`flatlab train` with no argument trains on the embedded digits dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .. import __version__
from ..data import list_datasets
from ..errors import UsageError
from ..fileio import unwritable
from ..models import list_models
from ..optim import describe_optimizer, list_optimizers
from ..sparse import list_sparse_methods
from ..train import TrainConfig, TrainingDiverged, load_config_file, resume, train
from ..train.compare import compare_runs, format_table, plot_runs
from ..train.config import Layer, convert, field_help, field_kinds
from ..train.distributed import launched_rank
from ..train.rundir import absolute_paths, load_run_config
from ..train.study import check_cell, load_study, run_study
from .analysis import add_analysis_commands

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other user mistake."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _field_type(name: str):
    """The argparse `type` of the flag of config field `name`: the config's own conversion."""
    def parse(text: str):
        try:
            return convert(name, text)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def seed_list(text: str) -> list[int]:
    """The `type` of `--seeds`: comma-separated integers."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds, e.g. 0,1,2, got {text!r}") from None


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run configuration (defaults < --config file < flags)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = field_help(f.name)
        if field_kinds()[f.name][0] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            metavar = {"model_args": "JSON", "milestones": "A,B"}.get(f.name)
            group.add_argument(flag, type=_field_type(f.name), default=argparse.SUPPRESS, metavar=metavar,
                               help=help_text)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the `flatlab` command and its subcommands."""
    parser = _Parser(prog="flatlab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"flatlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (no argument: the embedded digits demo)")
    train.add_argument("--config", type=Path, help="YAML or JSON file of config keys")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    train.add_argument("--seeds", type=seed_list, metavar="0,1,2",
                       help="run the same config once per seed, then compare")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bar (default: on a terminal only)")
    _add_config_flags(train)

    compare = sub.add_parser("compare", help="table (mean ± std over seeds) and plots of run directories")
    compare.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    compare.add_argument("--plot", type=Path, default=None, help="PNG file for the curves (needs matplotlib)")
    compare.add_argument("--json", type=Path, default=None, help="write the table as JSON too")

    study = sub.add_parser("study", help="run a methods x seeds grid from a study file (resumable), then tabulate")
    study.add_argument("file", type=Path, help="YAML/JSON study file (see flatlab.train.study)")
    study.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    study.add_argument("--jobs", type=int, default=1, help="runs trained at a time, one process each (default 1)")
    study.add_argument("--rerun", action="store_true",
                       help="train every run again, replacing finished ones (by default finished runs are kept, "
                            "so a study whose results exist only tabulates them)")
    study.add_argument("--check", metavar="CELL",
                       help="train one finished run (METHOD-seedSEED, its folder's name) again into --scratch and "
                            "compare its numbers with the finished one's: exit 0 if equal to the last digit, else 1 "
                            "and the differences")
    study.add_argument("--scratch", type=Path, metavar="DIR",
                       help="where --check trains (default runs/check/STUDY_NAME); the finished run is not touched")

    sub.add_parser("list", help="optimizers, models, datasets and sparse methods")

    add_analysis_commands(sub)
    return parser


# what may change when a run resumes: where its data lives now, how many threads to use
_RESUME_FLAGS = ("data_root", "threads")


def _train(args: argparse.Namespace) -> int:
    explicit = {k: v for k, v in vars(args).items() if k in TrainConfig.field_names()}
    if args.resume is not None:
        changed = sorted(set(explicit) - set(_RESUME_FLAGS))
        if changed or args.config or args.seeds or args.overwrite:
            flags = ["--" + k.replace("_", "-") for k in changed]
            flags += [f for f, v in (("--config", args.config), ("--seeds", args.seeds),
                                     ("--overwrite", args.overwrite)) if v]
            raise UsageError(f"--resume continues a run with its saved config; drop {', '.join(flags)} "
                             f"(it takes only {', '.join('--' + k.replace('_', '-') for k in _RESUME_FLAGS)})")
        resume(args.resume, progress=args.progress, overrides=explicit)
        return 0
    layers = [Layer(load_config_file(args.config), str(args.config))] if args.config else []
    config = TrainConfig.from_layers([*layers, Layer(explicit, None)])
    if not args.seeds:
        train(config, overwrite=args.overwrite, progress=args.progress)
        return 0
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds repeats a seed: {','.join(map(str, args.seeds))}")
    # one directory per seed whatever the name; a seed already trained with this config is kept (or
    # resumed), so that an interrupted --seeds run finishes when run again
    configs = [config.replace(seed=s, name=f"{config.name}-seed{s}" if config.name else None) for s in args.seeds]
    say = print if launched_rank() == 0 else lambda *_: None  # under torchrun, rank 0 reports for all
    run_dirs = []
    for seed_config in configs:
        run_dir = Path(seed_config.out) / seed_config.run_name()
        same = not args.overwrite and _holds_same_run(run_dir, seed_config)
        if same and (run_dir / "summary.json").is_file():
            say(f"{run_dir}: already trained with this config, kept")
        elif same and (run_dir / "checkpoint.pt").is_file():
            resume(run_dir, progress=args.progress)
        else:
            train(seed_config, overwrite=args.overwrite, progress=args.progress)
        run_dirs.append(run_dir)
    say(format_table(compare_runs(run_dirs)))
    return 0


def _holds_same_run(run_dir: Path, config: TrainConfig) -> bool:
    """Whether `run_dir` holds a run (finished or not) of exactly `config` (threads aside)."""
    if not (run_dir / "config.json").is_file():
        return False
    try:
        saved = load_run_config(run_dir).to_dict()
    except UsageError:
        return False
    ours = absolute_paths(config).to_dict()
    return {k: v for k, v in saved.items() if k != "threads"} == {k: v for k, v in ours.items() if k != "threads"}


def _compare(args: argparse.Namespace) -> int:
    for path in (args.json, args.plot):
        reason = path is not None and unwritable(path.parent)
        if reason:
            raise UsageError(f"cannot write {path}: {reason}")
    table = compare_runs(args.runs)
    print(format_table(table))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    if args.plot:
        plot_runs(args.runs, args.plot)
        print(f"curves -> {args.plot}")
    return 0


def _study(args: argparse.Namespace) -> int:
    study = load_study(args.file)
    if args.check is None:
        if args.scratch is not None:
            raise UsageError("--scratch is where --check trains; add --check CELL (e.g. --check sgd-seed0)")
        run_study(study, progress=args.progress, jobs=args.jobs, rerun=args.rerun)
        return 0
    if args.rerun or args.jobs != 1:
        raise UsageError("--check trains one run into a scratch folder; drop --rerun and --jobs")
    check = check_cell(study, args.check, args.scratch or Path("runs", "check", study.name), progress=args.progress)
    print(check.report())
    return 0 if check.equal else 1


def _list(_: argparse.Namespace) -> int:
    print("optimizers (docs/methods.md):")
    width = max(len(name) for name in list_optimizers())
    for name in list_optimizers():
        print(f"  {name:<{width}}  {describe_optimizer(name)}")
    print("models:    ", ", ".join(list_models()))
    print("datasets:  ", ", ".join(list_datasets()))
    print("sparse:    ", ", ".join(list_sparse_methods()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs one command.

    A mistake in the input (`UsageError`) prints one `error:` line and returns 2; any other exception propagates
    with its traceback (a bug, or a real failure such as running out of memory).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"train": _train, "compare": _compare, "study": _study, "list": _list}
    handler = handlers.get(args.command) or args.handler
    try:
        return handler(args)
    except UsageError as err:
        print(f"flatlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        message = str(err) or "interrupted; completed runs and epochs are checkpointed: run the command again"
        print(f"flatlab {args.command}: {message}", file=sys.stderr)
        return 130
    except TrainingDiverged as err:
        print(f"flatlab {args.command}: {err}", file=sys.stderr)  # the message says what to do next
        return 1


if __name__ == "__main__":
    sys.exit(main())
