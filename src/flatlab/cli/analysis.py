"""The analysis subcommands: `flatlab landscape`, `flatlab hessian`, `flatlab gradstats` and
`flatlab robustness`, wired to the reports of `flatlab.train.reports`.

Only the command line lives here: the flags (each default read from the signature of the function
it feeds, so that the command line and the library cannot drift apart), the progress bars, and the
printing of each report's table and of where its files went.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..analysis import list_corruptions
from ..errors import UsageError
from ..progress import PLAIN_EVERY, Progress
from ..train.reports import (
    DIRECTIONS,
    analyse_gradstats,
    analyse_hessian,
    analyse_landscape,
    analyse_robustness,
    gradstats_table,
    hessian_table,
    landscape_table,
    open_run,
    robustness_table,
)
from ..train.reports.common import ProgressFactory

__all__ = ["add_analysis_commands", "progress_bars", "COMMANDS"]


def progress_bars(enabled: bool | None = None, every: float | None = None) -> ProgressFactory:
    """A factory of progress callbacks `(done, total)` drawn with `flatlab.progress.Progress`:
    a bar on a terminal (or where `enabled`), else a plain line every `every` seconds (default
    `PLAIN_EVERY`), so that a long analysis logged to a file shows it is alive;
    nothing where `enabled` is False.
    """
    @contextlib.contextmanager
    def factory(desc: str) -> Iterator[Callable[[int, int], None]]:
        bar = Progress(0, desc, enabled=enabled, every=PLAIN_EVERY if every is None else every)

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.count)

        try:
            yield update
        finally:
            bar.close()

    return factory


def _budget(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of batches or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (or 'all'), got {value}")
    return value


def _shown(value) -> str:
    """A default as the help text shows it: `None` (a budget, a list of corruptions) is "all"."""
    if value is None:
        return "all"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def _flag(parser: argparse.ArgumentParser, fn: Callable, name: str, help: str, **kwargs) -> None:
    """`--name` with the default of `fn`'s keyword `name`, so that the command line and the
    library cannot drift apart; `{default}` in `help` shows it.
    """
    default = inspect.signature(fn).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{fn.__name__} has no default for {name}")
    if kwargs.get("action") == "store_true" and default is not False:
        raise TypeError(f"--{name}: a store_true flag needs the default False in {fn.__name__}")
    parser.add_argument("--" + name.replace("_", "-"), default=default, help=help.format(default=_shown(default)),
                        **kwargs)


def _common_flags(parser: argparse.ArgumentParser, analyse: Callable, several: str) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                        help=f"run directories (or their model.pt / checkpoint.pt files); {several}")
    _flag(parser, analyse, "batches", "evaluation budget: N batches (a seeded random subset), or 'all' "
          "(default {default})", type=_budget, metavar="N")
    _flag(parser, analyse, "batch_size", "samples per batch (default {default})", type=int)
    _flag(parser, analyse, "split", "evaluate on the test set or the un-augmented training set (default {default})",
          choices=("test", "train"))
    _flag(parser, analyse, "seed", "seed of the batch subset, directions, noise (default {default})", type=int)
    _flag(parser, open_run, "device", "cpu, cuda, cuda:N or auto (default {default})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    _flag(parser, open_run, "checkpoint",
          "weights file in the run directory (default {default}; checkpoint.pt: last epoch of an unfinished run)")
    _flag(parser, open_run, "data_root", "where the run's dataset lives now, if it moved (default: where the run "
          "was trained)")
    _flag(parser, analyse, "out", "output folder (default: RUN/analysis/; comparison figures: the first run's)",
          type=Path)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help=f"progress bars on a terminal, elsewhere a line every {PLAIN_EVERY:g} s "
                             "(default: on; --no-progress: neither)")


def _setup(args: argparse.Namespace) -> dict:
    """The options every report shares (`ReportOptions`), from the flags."""
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return dict(
        batches=args.batches, batch_size=args.batch_size, split=args.split, seed=args.seed, out=args.out,
        load=dict(device=args.device, checkpoint=args.checkpoint, data_root=args.data_root),
        progress=progress_bars(args.progress),
    )


def _done(records: Sequence[dict]) -> None:
    folders = sorted({str(Path(r["path"]).parent) for r in records})
    print("results -> " + ", ".join(folders))
    compare = sorted({r["compare_figure"] for r in records if r.get("compare_figure")})
    if compare:
        print("comparison -> " + ", ".join(compare))


@dataclass(frozen=True)
class _Command:
    """One analysis subcommand: the report it runs, its own flags as `(keyword, help, argparse
    options)` (defaults from `analyse`'s signature) and the table it prints.
    """

    name: str
    help: str
    analyse: Callable[..., list[dict]]
    several: str
    flags: tuple[tuple[str, str, dict], ...]
    table: Callable[[list[dict]], str]

    def __call__(self, args: argparse.Namespace) -> int:
        options = {name: getattr(args, name) for name, _, _ in self.flags}
        records = self.analyse(args.runs, **options, **_setup(args))
        print(self.table(records))
        _done(records)
        return 0


COMMANDS = (
    _Command("landscape", "1-D/2-D loss and accuracy surfaces around trained weights", analyse_landscape,
             "several runs share one 1-D figure", (
                 ("directions", "random: filter-normalised Gaussian (Li et al. 2018); gaussian: ESAM's average over "
                  "--groups orthogonal pairs; adversarial: the loss gradient (1-D), ESAM A.5's batch-half "
                  "gradients (2-D) (default {default})", dict(choices=DIRECTIONS)),
                 ("dims", "1-D curve or 2-D surface (default {default})", dict(type=int, choices=(1, 2))),
                 ("grid", "points per axis (default {default}; odd includes 0)", dict(type=int)),
                 ("span", "axes run over [-span, span] (default {default})", dict(type=float)),
                 ("groups", "--directions gaussian: pairs averaged (default {default})", dict(type=int)),
                 ("log", "draw the loss on a log scale (2-D: log10 loss) (default: linear)",
                  dict(action="store_true")),
             ), landscape_table),
    _Command("hessian", "top Hessian eigenvalues, trace and eigenvalue density", analyse_hessian,
             "each is analysed in turn", (
                 ("k", "top eigenvalues by Lanczos (default {default}: lambda1/lambda5)", dict(type=int)),
                 ("iters", "Lanczos steps for the top-k (default max(3k, 30))", dict(type=int)),
                 ("trace_samples", "Hutchinson samples for the trace (default {default}; 0: skip)", dict(type=int)),
                 ("density", "stochastic Lanczos quadrature runs for the density plot (default {default}; 0: skip)",
                  dict(type=int, metavar="RUNS")),
                 ("density_iters", "Lanczos steps per density run (default {default})", dict(type=int)),
             ), hessian_table),
    _Command("gradstats", "SAM-vs-SGD gradient difference, SDS B+/B- statistics, linearity", analyse_gradstats,
             "each is analysed in turn", (
                 ("rho", "SAM radius (default: the run's rho, else 0.05)", dict(type=float)),
                 ("gamma", "SDS: fraction of the batch in B+ (default {default})", dict(type=float)),
                 ("beta", "ESAM SWP keep probability (default {default}; 1: plain SAM)", dict(type=float)),
             ), gradstats_table),
    _Command("robustness", "accuracy on corrupted copies of the test set", analyse_robustness,
             "each is analysed in turn", (
                 ("corruptions", f"comma-separated, from {', '.join(list_corruptions())} "
                  "(default {default})", dict(metavar="A,B")),
                 ("severities", "severities 1..5 (default {default})", dict(metavar="1,2,3")),
             ), robustness_table),
)


def _describe(fn) -> str:
    return " ".join(fn.__doc__.replace("``", "").split())


def add_analysis_commands(subparsers) -> None:
    """Register `landscape`, `hessian`, `gradstats` and `robustness` on a subparsers object."""
    for command in COMMANDS:
        p = subparsers.add_parser(command.name, help=command.help, description=_describe(command.analyse))
        _common_flags(p, command.analyse, command.several)
        for name, help_text, options in command.flags:
            _flag(p, command.analyse, name, help_text, **options)
        p.set_defaults(handler=command)
