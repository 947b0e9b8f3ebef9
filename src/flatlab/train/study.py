"""A study: a grid of methods x seeds from one config file, resumable, with one results table.

The file names the shared settings, the methods (each a set of config changes) and the seeds.

Example:
    ```yaml
    name: cpu-study
    out: runs/cpu-study
    seeds: [0, 1, 2]
    base: {dataset: digits, model: cnn, epochs: 10}
    methods:
      sgd: {optimizer: sgd}
      sam: {optimizer: sam, rho: 0.05}
    hessian: {batches: 4, iters: 20}     # optional: top Hessian eigenvalue of each final model
    ```

Relative paths in the file (`out`, which defaults to `runs/NAME`, `extends`, `data_root`) are
relative to the file's folder, so the study means the same from any working directory.

`flatlab study FILE` runs every (method, seed) not finished yet (an interrupted run is resumed from
its checkpoint, a finished one skipped), then writes `results.json`, `results.csv`,
`results.md`, `curves.png` and `tradeoff.png` into `out`. Interrupt and rerun it at will.
Tabulating unchanged runs again reproduces these files byte for byte (a figure whose pixels are
unchanged is not rewritten), so a study committed with its results stays clean when rerun.
`flatlab study FILE --check METHOD-seedSEED` trains one finished run again into a scratch folder and
compares its numbers with the finished run's, to the last digit (`check_cell`).

`--jobs N` trains N runs at a time, each in its own process (give each `threads` = cores / N: on a
small CPU model two one-thread runs make more images per second than one two-thread run). Every run's
images/s is then measured beside N-1 others, the same for every method, so the ratios stay comparable.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import io
import json
import math
import os
import platform
import re
import signal
import sys
import threading
import time
import traceback
import typing
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..analysis import top_eigenvalues
from ..errors import UsageError, check_number
from ..fileio import atomic_write_json, atomic_write_text, unwritable
from ..optim import is_base_optimizer, list_optimizers
from .compare import (
    format_interval,
    format_mean_std,
    format_number,
    load_run,
    markdown_table,
    mean_std,
    paired_difference,
    plot_runs,
    save_png,
)
from .config import OPTIMIZER_FIELDS, TrainConfig, convert, load_config_file, not_taken_message, optimizer_fields
from .environment import package_versions
from .optimizer import check_optimizer
from .run import resume, train
from .rundir import load_run_config
from .trained import load_trained

__all__ = ["Study", "load_study", "run_study", "check_cell", "CellCheck", "summarise", "plot_tradeoff",
           "machine_info"]

_KEYS = {"name", "out", "seeds", "base", "methods", "hessian", "device", "extends"}


class Study:
    """A study from its mapping `spec`.

    `source` names the file in errors; `root` is the folder that relative paths in `spec` are relative to (the
    file's; default the working directory); `origins` names, for a study that extends another, the file each key was
    read from (`"base.lr"`, `"methods"`), so that an error points at the file to fix.
    """

    def __init__(self, spec: dict[str, Any], source: str = "<dict>", *, root: str | Path | None = None,
                 origins: dict[str, str] | None = None):
        self.source = source
        self._origins = origins or {}
        for key in spec:
            if key not in _KEYS:
                self._refuse(key, f"unknown study key{_did_you_mean(key, _KEYS)} (allowed: {', '.join(sorted(_KEYS))})")
        if not isinstance(spec.get("methods"), dict) or not spec["methods"]:
            self._refuse("methods", "a study needs a non-empty mapping of methods, e.g. 'sgd: {optimizer: sgd}'")
        seeds = spec.get("seeds", [0])
        if not isinstance(seeds, (list, tuple)) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                for s in seeds):
            self._refuse("seeds", f"expected a non-empty list of integers, got {seeds!r}")
        self.root = Path(root) if root is not None else None
        self.name = spec.get("name", "study")
        self.out = self._path(spec.get("out", f"runs/{self.name}"))
        self.seeds = [int(s) for s in seeds]
        self.base = self._entry("base", spec.get("base"))
        self.methods = {str(k): self._entry(f"methods.{k}", v) for k, v in spec["methods"].items()}
        self.hessian = spec.get("hessian")
        for method in self.methods:
            self.config(method, self.seeds[0])  # validates every method's config up front

    def config(self, method: str, seed: int) -> TrainConfig:
        """The training config of `method` on `seed`."""
        entry = self.methods[method]
        values = {**self.base, **entry}
        optimizer = values.get("optimizer", _DEFAULT_OPTIMIZER)
        try:
            taken = optimizer_fields(optimizer)
        except UsageError as err:
            self._refuse(f"methods.{method}.optimizer" if "optimizer" in entry else "base.optimizer", str(err))
        for key in OPTIMIZER_FIELDS:  # a method option set for a method that does not read it
            if values.get(key) is not None and key not in taken:
                where = f"methods.{method}.{key}" if key in entry else f"base.{key}"
                self._refuse(where, not_taken_message(optimizer, [key]))
        run = {"seed": seed, "out": str(self.out), "name": f"{method}-seed{seed}"}
        try:
            config = TrainConfig.from_dict({**_with_root(values, self.root), **run}, source=self.source)
            check_optimizer(config)
            return config
        except UsageError as err:  # a value out of range: the message names the field, find who set it
            self._refuse(self._setter(method, str(err)), str(err))

    def run_dir(self, method: str, seed: int) -> Path:
        """The run directory of `method` on `seed`."""
        return self.out / f"{method}-seed{seed}"

    def cell(self, name: str) -> tuple[str, int]:
        """The (method, seed) of the cell `name`, spelled as its run directory: `METHOD-seedSEED`."""
        match = re.fullmatch(r"(.+)-seed(-?\d+)", name)
        if match and match[1] in self.methods and int(match[2]) in self.seeds:
            return match[1], int(match[2])
        raise UsageError(f"{self.source}: no cell {name!r}: a cell is METHOD-seedSEED (its run folder), METHOD one "
                         f"of {', '.join(self.methods)}, SEED one of {', '.join(map(str, self.seeds))}; e.g. "
                         f"{next(iter(self.methods))}-seed{self.seeds[0]}")

    def _refuse(self, key_path: str, message: str) -> typing.NoReturn:
        """Raises `FILE: KEY.PATH: message`, FILE being the file that holds the key."""
        head = key_path.split(".")[0]
        source = self._origins.get(".".join(key_path.split(".")[:2]) if head == "base" else head, self.source)
        raise UsageError(f"{source}: {key_path}: {message}")

    def _path(self, value: str) -> Path:
        return Path(_join(self.root, value)) if self.root is not None else Path(value)

    def _entry(self, where: str, values: Any) -> dict[str, Any]:
        """`base` or one method's changes, checked key by key: an unknown key, a value of the wrong
        type or a method option in another method's section is refused with its key path.
        """
        values = {} if values is None else values
        if not isinstance(values, dict):
            self._refuse(where, f"expected a mapping of config keys, got {type(values).__name__}")
        for key, value in values.items():
            if isinstance(value, dict) and key in list_optimizers():  # a section, used when that method runs
                for option, setting in value.items():
                    if option == "optimizer" or option not in TrainConfig.field_names():
                        self._refuse(f"{where}.{key}.{option}", f"unknown key in section {key!r}"
                                     f"{_did_you_mean(option, TrainConfig.field_names())}")
                    if option in OPTIMIZER_FIELDS and setting is not None and option not in optimizer_fields(key):
                        self._refuse(f"{where}.{key}.{option}", not_taken_message(key, [option]))
                    self._convert(f"{where}.{key}.{option}", option, setting)
            elif key in TrainConfig.field_names():
                self._convert(f"{where}.{key}", key, value)
            else:
                self._refuse(f"{where}.{key}", f"unknown config key{_did_you_mean(key, TrainConfig.field_names())}")
        return dict(values)

    def _convert(self, key_path: str, key: str, value: Any) -> None:
        try:
            convert(key, value)
        except UsageError as err:
            self._refuse(key_path, str(err))

    def _setter(self, method: str, message: str) -> str:
        """The key path of the value `message` refuses: the first key of the method's entry, then of
        `base`, whose field (or optimizer argument) the message names.
        """
        for where, values in ((f"methods.{method}", self.methods[method]), ("base", self.base)):
            for key in values:
                names = {key, OPTIMIZER_FIELDS.get(key, key)}
                if any(re.search(rf"\b{re.escape(name)}\b", message) for name in names):
                    return f"{where}.{key}"
        return f"methods.{method}"


_DEFAULT_OPTIMIZER = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "optimizer")


def _did_you_mean(key: str, choices) -> str:
    close = difflib.get_close_matches(str(key), sorted(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _join(root: str | Path, value: str) -> str:
    """`value` relative to `root` (lexically normalised); an absolute or `~` path unchanged."""
    if os.path.isabs(os.path.expanduser(value)):
        return value
    return os.path.normpath(os.path.join(root, value))


def _with_root(values: dict[str, Any], root: str | Path | None) -> dict[str, Any]:
    """`values` with a relative `data_root` (also in a method's section) made relative to `root`."""
    if root is None:
        return values
    out = {}
    for key, value in values.items():
        if key == "data_root" and isinstance(value, str):
            value = _join(root, value)
        elif isinstance(value, dict) and key != "model_args":
            value = _with_root(value, root)
        out[key] = value
    return out


def load_study(path: str | Path) -> Study:
    """Reads a study file.

    `extends: other.yaml` (relative to this file) starts from that study: this file's `base` entries override the
    other's one by one (`null` restores a field's default), every other key replaces the other's. A paper-scale
    study is then the CPU study plus what scale changes. Relative paths in each file are relative to that file's
    folder.
    """
    path = Path(path)
    origins: dict[str, str] = {}
    spec = _resolve_extends(path, seen=(), origins=origins)
    return Study(spec, source=str(path), root=path.parent, origins=origins)


def _resolve_extends(path: Path, seen: tuple[Path, ...], origins: dict[str, str]) -> dict[str, Any]:
    """The study in `path` merged over the one it extends, with the parent's relative paths made
    relative to this file's folder; `origins` gets the file each top-level and `base.` key comes from.
    """
    spec = load_config_file(path)
    parent = spec.pop("extends", None)
    own = {key: str(path) for key in spec}
    if isinstance(spec.get("base"), dict):
        own.update({f"base.{key}": str(path) for key in spec["base"]})
    if parent is not None:
        parent_path = (path.parent / parent).resolve()
        if parent_path in seen or parent_path == path.resolve():
            raise UsageError(f"{path}: extends: makes a cycle through {parent_path}")
        merged = _resolve_extends(parent_path, seen + (path.resolve(),), origins)
        here = os.path.relpath(parent_path.parent, path.resolve().parent)
        if isinstance(merged.get("out"), str):
            merged["out"] = _join(here, merged["out"])
        for key in ("base", "methods"):
            if isinstance(merged.get(key), dict):
                merged[key] = _with_root(merged[key], here)
        base = {**(merged.get("base") or {}), **(spec.pop("base", None) or {})}
        merged.update(spec)
        merged["base"] = {k: v for k, v in base.items() if v is not None}
        spec = merged
    origins.update(own)
    return spec


def machine_info() -> dict[str, Any]:
    """Where a study ran: enough to tell whether two results tables are comparable."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
        info["cpu_model"] = model
    except OSError:
        pass
    return info


def _top_eigenvalue(run_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
    """lambda_1 of the final model's training-loss Hessian, cached in RUN/analysis/study_hessian.json."""
    cache = run_dir / "analysis" / "study_hessian.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("options") == options:
            return cached
    model, data, _ = load_trained(run_dir)
    budget = int(options.get("batches", 4))
    batches = []
    data.train.set_epoch(0)
    for x, y in data.train:  # augmented training batches, as the loss that was minimised
        batches.append((x, y))
        if len(batches) == budget:
            break
    start = time.perf_counter()
    eig = top_eigenvalues(model, batches, k=1, iters=int(options.get("iters", 20)), seed=0)
    result = {"lambda1": float(eig.eigenvalues[0]), "seconds": time.perf_counter() - start, "options": options}
    atomic_write_json(cache, result)
    return result


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _run_one(study: Study, method: str, seed: int, log=print, progress: bool | None = None,
             rerun: bool = False) -> None:
    run_dir = study.run_dir(method, seed)
    if rerun:
        log(f"[study] {run_dir.name}: training again (--rerun)")
        train(study.config(method, seed), overwrite=True, log=log, progress=progress)
    elif (run_dir / "checkpoint.pt").is_file():
        log(f"[study] {run_dir.name}: resuming")
        resume(run_dir, log=log, progress=progress)
    else:
        log(f"[study] {run_dir.name}: starting")
        train(study.config(method, seed), overwrite=True, log=log, progress=progress)


def _prefixed_print(prefix: str):
    def log(message: str) -> None:
        print("\n".join(f"[{prefix}] {line}" for line in str(message).splitlines()), flush=True)

    return log


def _worker(task: tuple[Study, str, int, bool], results) -> None:
    """One run in its own process; sends `(name, error, traceback)` back through `results`."""
    study, method, seed, rerun = task
    try:
        _run_one(study, method, seed, log=_prefixed_print(f"{method}-seed{seed}"), progress=False, rerun=rerun)
        if study.hessian:  # here rather than in the summary, so that it runs in parallel too
            _top_eigenvalue(study.run_dir(method, seed), dict(study.hessian))
        results.send((f"{method}-seed{seed}", None, None))
    except Exception as err:  # raised again by the study's process
        results.send((f"{method}-seed{seed}", err, traceback.format_exc()))


def _run_parallel(tasks: list[tuple[Study, str, int, bool]], jobs: int, log) -> None:
    """Trains `tasks` `jobs` at a time, each in a fresh process (spawn: no forked torch thread pools;
    one run per process: a long study does not accumulate memory).

    The terminal sends Ctrl-C to every process of the command: the runs' processes never receive it
    (each would print a traceback; `_sigint_held`), and this one stops them. Their checkpoints are
    written atomically, so running the study again resumes them.
    """
    import multiprocessing
    from multiprocessing.connection import wait
    from multiprocessing.pool import RemoteTraceback

    context = multiprocessing.get_context("spawn")
    pending, running = list(tasks), {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_worker, args=(pending.pop(0), send))
                with _sigint_held():
                    process.start()
                send.close()
                running[receive] = process
            for receive in wait(list(running)):
                process = running.pop(receive)
                try:
                    name, error, trace = receive.recv()
                except EOFError:  # it died without a word (killed, out of memory)
                    process.join()
                    raise RuntimeError(f"a study run's process ended with exit code {process.exitcode}") from None
                process.join()
                if error is not None:
                    raise error from RemoteTraceback(trace)
                log(f"[study] {name}: done")
    finally:
        for process in running.values():
            process.terminate()
            process.join()


@contextlib.contextmanager
def _sigint_held():
    """Holds Ctrl-C back while a run's process starts: the process inherits the blocked signal, so
    Ctrl-C never reaches it (this one stops it), and a Ctrl-C pressed meanwhile is delivered here
    when the block ends rather than lost, as it would be with the signal ignored.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def run_study(study: Study, *, log=print, progress: bool | None = None, jobs: int = 1,
              rerun: bool = False) -> list[dict[str, Any]]:
    """Trains every (method, seed) not finished yet (`rerun`: every one, replacing the finished
    runs), `jobs` at a time, then tabulates the study. A study whose runs are all finished (e.g.
    committed with the repository) only tabulates them: it finishes at once.

    `jobs > 1` starts worker processes with `spawn`: a script that calls this needs the usual
    `if __name__ == "__main__":` guard (the `flatlab study` command has it).
    """
    check_number("jobs", jobs, low=1, integer=True)
    reason = unwritable(study.out)
    if reason:
        raise UsageError(f"cannot write the study into {study.out}: {reason}")
    study.out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for seed in study.seeds:  # seed-major: a study cut short still has every method at its first seeds
        for method in study.methods:
            if not rerun and (study.run_dir(method, seed) / "summary.json").is_file():
                log(f"[study] {method}-seed{seed}: finished, skipped")  # here: no process started for it
            else:
                tasks.append((study, method, seed, rerun))
    if jobs == 1:
        for _, method, seed, _ in tasks:
            _run_one(study, method, seed, log=log, progress=progress, rerun=rerun)
    else:
        _run_parallel(tasks, jobs, log)
    return summarise(study, log=log, session=_session(jobs) if tasks else None)


# measured, not computed: they differ between two runs on the same machine
_TIMINGS = frozenset({"images_per_s", "train_time_s", "wall_time_s"})
# where a run was trained: a difference here explains a difference in the numbers
_ENVIRONMENT = ("flatlab", "torch", "python", "packages", "machine", "threads")


@dataclasses.dataclass
class CellCheck:
    """One finished run of a study (`committed`) trained again (`again`), compared number by number.

    `differences` lists each number (of `summary.json`, each epoch of `metrics.jsonl` and the study's top Hessian
    eigenvalue; timings aside) that is not equal to the last digit; `context`, what else differs between the two runs:
    config (its paths aside) and environment (versions, machine, threads).
    """

    committed: Path
    again: Path
    compared: int
    differences: list[str]
    context: list[str]

    @property
    def equal(self) -> bool:
        """Whether every number is the same to the last digit."""
        return not self.differences

    def report(self, limit: int = 12) -> str:
        """What a user reads: equal, or the first `limit` differences and what may explain them."""
        if self.equal:
            lines = [f"equal to the digit: {self.compared} numbers of {self.again} (timings aside) are those of "
                     f"{self.committed}"]
        else:
            lines = [f"{len(self.differences)} of {self.compared} numbers differ (committed -> again), "
                     f"{self.committed} -> {self.again}:"]
            lines += [f"  {line}" for line in self.differences[:limit]]
            if len(self.differences) > limit:
                lines.append(f"  ... and {len(self.differences) - limit} more")
        if self.context:
            lines.append("ran differently (committed -> again):")
            lines += [f"  {line}" for line in self.context]
        return "\n".join(lines)


def check_cell(study: Study, cell: str, scratch: str | Path, *, log=print, progress: bool | None = None) -> CellCheck:
    """Trains the study's finished run `cell` (`METHOD-seedSEED`) again into the folder `scratch` and compares its
    numbers with the finished run's, which stays untouched.

    On the CPU type, thread count and package versions it ran with, a run reproduces to the last digit; the result
    says which numbers differ and what else differed (config, versions, machine).
    """
    method, seed = study.cell(cell)
    committed = study.run_dir(method, seed)
    load_run(committed)  # refused now if it is not a finished run, not after the training
    config = study.config(method, seed).replace(out=str(scratch))
    again = Path(scratch) / committed.name
    if again.resolve() == committed.resolve():
        raise UsageError(f"the scratch folder {scratch} is the study's own; name another one")
    log(f"[study] {committed.name}: training again into {again}")
    train(config, overwrite=True, log=log, progress=progress)
    return _compare_cells(committed, again, study.hessian)


def _compare_cells(committed: Path, again: Path, hessian: dict[str, Any] | None) -> CellCheck:
    old, new = load_run(committed), load_run(again)
    pairs = [("summary", old["summary"], new["summary"])]
    pairs += [(f"epoch {a['epoch']}", a, b) for a, b in zip(old["metrics"], new["metrics"])]
    cached = committed / "analysis" / "study_hessian.json"
    if hessian and cached.is_file():  # the table's lambda1 column
        lambdas = [json.loads(cached.read_text())["lambda1"], _top_eigenvalue(again, dict(hessian))["lambda1"]]
        pairs.append(("hessian", {"lambda1": lambdas[0]}, {"lambda1": lambdas[1]}))
    compared, differences = 0, []
    for where, a, b in pairs:
        for key in sorted((a.keys() | b.keys()) - _TIMINGS):
            compared += 1
            if not _same(a.get(key), b.get(key)):
                differences.append(f"{where} {key}: {a.get(key)!r} -> {b.get(key)!r}")
    if len(old["metrics"]) != len(new["metrics"]):
        differences.append(f"epochs recorded: {len(old['metrics'])} -> {len(new['metrics'])}")
    # read back as a run is resumed: a field added since the committed run was trained holds its default there
    configs = [load_run_config(run).to_dict() for run in (committed, again)]
    paths = {"out", "data_root"}  # where the run and its data lie, not what it computes
    context = [f"config {key}: {configs[0][key]!r} -> {configs[1][key]!r}" for key in configs[0]
               if key not in paths and configs[0][key] != configs[1][key]]
    metas = [json.loads((run / "config.json").read_text()) for run in (committed, again)]
    context += [f"{key}: {metas[0].get(key, '(not recorded)')!r} -> {metas[1].get(key)!r}" for key in _ENVIRONMENT
                if metas[0].get(key) != metas[1].get(key)]
    return CellCheck(committed, again, compared, differences, context)


def _same(a: Any, b: Any) -> bool:
    """Equal to the last digit (a NaN equals a NaN: an epoch without a test)."""
    nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return nan or a == b


# where the runs were trained: kept as recorded when a study is only tabulated again
_SESSION_KEYS = ("flatlab", "torch", "jobs", "machine", "command")
# recorded by sessions since flatlab records them; results.json files written before stay without them
_NEWER_SESSION_KEYS = ("packages",)


def _session(jobs: int) -> dict[str, Any]:
    return {"flatlab": __version__, "torch": torch.__version__, "packages": package_versions(), "jobs": jobs,
            "machine": machine_info(), "command": " ".join(sys.argv)}


def _recorded_session(path: Path) -> dict[str, Any] | None:
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict):
        return None
    session = {key: recorded.get(key) for key in _SESSION_KEYS}
    return {**session, **{key: recorded[key] for key in _NEWER_SESSION_KEYS if key in recorded}}


def _write_text(path: Path, text: str) -> None:
    """Writes `text` unless `path` holds it already (its time stamp then says when it changed)."""
    if not (path.is_file() and path.read_bytes() == text.encode()):
        atomic_write_text(path, text)


def summarise(study: Study, log=print, session: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Tabulates the finished runs into `results.{json,csv,md}`, `curves.png` and `tradeoff.png`.

    `session` says where the runs were trained (versions, `jobs`, machine, command); without it the one
    `results.json` records is kept (the current process's where there is none), so that tabulating unchanged runs
    again writes the same files.
    """
    session = session or _recorded_session(study.out / "results.json") or _session(1)
    rows = []
    held_out = set()
    for method in study.methods:
        runs = [load_run(study.run_dir(method, s)) for s in study.seeds]
        held_out |= {r["summary"].get("evaluated_on", "test") for r in runs} - {"test"}
        top1 = mean_std([r["summary"]["final_test_top1"] for r in runs])
        speed = mean_std([r["summary"]["images_per_s"] for r in runs])
        wall = mean_std([r["summary"]["wall_time_s"] for r in runs])
        row: dict[str, Any] = {
            "method": method,
            "changes": study.methods[method],
            "seeds": study.seeds,
            "test_top1_mean": top1[0],
            "test_top1_std": top1[1],
            "test_top1_per_seed": [r["summary"]["final_test_top1"] for r in runs],
            "images_per_s": speed[0],
            "images_per_s_std": speed[1],
            "wall_time_s_mean": wall[0],
            "train_loss_mean": mean_std([r["summary"]["final_train_loss"] for r in runs])[0],
        }
        fractions = [_sam_fraction(r) for r in runs]
        if all(f is not None for f in fractions):
            row["sam_steps_per_step"] = mean_std(fractions)[0]
        if study.hessian:
            eig = [_top_eigenvalue(study.run_dir(method, s), dict(study.hessian)) for s in study.seeds]
            row["lambda1_mean"], row["lambda1_std"] = mean_std([e["lambda1"] for e in eig])
        rows.append(row)
    # the reference: the first method that trains with the base optimizer alone
    sgd = next((r for r in rows if r["changes"].get("optimizer") == "sgd"), None)
    for row in rows:
        row["is_reference"] = row is sgd
        row["speed_vs_sgd"] = row["images_per_s"] / sgd["images_per_s"] if sgd else math.nan
        if row is sgd:
            row["vs_sgd_paired_mean"], row["vs_sgd_paired_std"] = mean_std([0.0] * len(row["test_top1_per_seed"]))
        elif sgd:
            _add_paired(row, "vs_sgd", paired_difference(row["test_top1_per_seed"], sgd["test_top1_per_seed"]))
        else:
            row["vs_sgd_paired_mean"] = row["vs_sgd_paired_std"] = math.nan
    pairs = _pairs(rows)
    # the study file relative to the results, which holds wherever the study is run from
    source = study.source
    if os.path.isfile(source):
        source = os.path.relpath(os.path.abspath(source), os.path.abspath(study.out))
    result = {
        "study": study.name,
        "source": source,
        "flatlab": session["flatlab"],
        "torch": session["torch"],
        **{key: session[key] for key in _NEWER_SESSION_KEYS if key in session},
        "threads_per_run": study.base.get("threads"),
        "jobs": session["jobs"],
        "machine": session["machine"],
        "command": session["command"],
        "base": study.base,
        "rows": rows,
        "pairs": pairs,
    }
    _write_text(study.out / "results.json", json.dumps(_nan_to_none(result), indent=2) + "\n")  # strict: no NaN
    _write_text(study.out / "results.csv", _csv(rows))
    split = "holdout" if held_out else "test"
    table = format_study(rows, split)
    text = f"# {study.name}\n\n"
    if held_out:
        # the runs never saw the test set: what reads "test" in results.json is this holdout
        text += (f"Evaluated on {' and '.join(sorted(held_out))} (`holdout`), never on the test set; "
                 "results.json keeps the key names `test_top1_*`.\n\n")
    text += f"{table}\n"
    if pairs:
        intro = _PAIRS_INTRO.format(split=split.capitalize())
        text += f"\n## Methods against each other\n\n{intro}\n\n{format_pairs(pairs)}\n"
    _write_text(study.out / "results.md", text)
    try:
        grid = [(m, s) for m in study.methods for s in study.seeds]
        plot_runs([study.run_dir(m, s) for m, s in grid], study.out / "curves.png", labels=[m for m, _ in grid])
        plot_tradeoff(rows, study.out / "tradeoff.png", title=study.name)
    except ImportError:
        log("[study] matplotlib is not installed: no curves.png, tradeoff.png")
    log(table)
    return rows


def _add_paired(row: dict[str, Any], prefix: str, difference: dict[str, Any]) -> None:
    row[f"{prefix}_paired_mean"], row[f"{prefix}_paired_std"] = difference["mean"], difference["std"]
    row[f"{prefix}_interval"] = [difference["low"], difference["high"]]
    row[f"{prefix}_wins"], row[f"{prefix}_reading"] = difference["wins"], difference["reading"]


def _pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every two methods other than the reference, seed by seed (the earlier-listed one first): with
    more than one seed, what a claim such as "keeps SAM's gain" or "beats X" needs.
    """
    others = [r for r in rows if not r.get("is_reference")]
    if len(rows[0]["seeds"]) < 2:
        return []
    return [{"a": a["method"], "b": b["method"], **paired_difference(a["test_top1_per_seed"], b["test_top1_per_seed"])}
            for i, a in enumerate(others) for b in others[i + 1:]]


_PAIRS_INTRO = ("{split} top-1 of the first method minus the second's, seed by seed (points): mean ± std, the 95% t "
                "interval, on how many seeds the first was higher, and the reading (higher or lower only where "
                "the interval excludes 0).")


def format_pairs(pairs: list[dict[str, Any]]) -> str:
    """The paired differences between methods as a Markdown table."""
    headers = ["first", "second", "first - second (points)", "95% interval", "first higher", "reading"]
    cells = [[p["a"], p["b"], format_mean_std(100 * p["mean"], 100 * p["std"], "+.2f"),
              format_interval(100 * p["low"], 100 * p["high"]), f"{p['wins']}/{p['n']}", p["reading"]]
             for p in pairs]
    return markdown_table(headers, cells, "llrrrl")


def _sam_fraction(run: dict[str, Any]) -> float | None:
    """The share of sharpness-aware steps of a finished run: 0 for a base optimizer alone, None
    when a run made before flatlab recorded it.
    """
    if "sam_steps_per_step" in run["summary"]:
        return run["summary"]["sam_steps_per_step"]
    return 0.0 if is_base_optimizer(run["config"]["optimizer"]) else None


def plot_tradeoff(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """The gain over SGD (paired difference of test top-1, mean ± std over seeds) against the training
    time relative to SGD and, when measured, test top-1 against the top Hessian eigenvalue: cost and
    flatness next to accuracy, one point per method.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    has_eig = any("lambda1_mean" in r for r in rows)
    fig = Figure(figsize=(10 if has_eig else 5.5, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if has_eig else 1, squeeze=False)[0]
    for i, r in enumerate(rows):
        acc, err = 100 * r["test_top1_mean"], 100 * r["test_top1_std"]
        gain = 0.0 if r.get("is_reference") else 100 * r.get("vs_sgd_paired_mean", math.nan)
        spread = 0.0 if r.get("is_reference") else 100 * r.get("vs_sgd_paired_std", math.nan)
        time_x = 1.0 / r["speed_vs_sgd"] if r["speed_vs_sgd"] else math.nan
        style = {"color": f"C{i % 10}", "fmt": "o", "capsize": 3}
        axes[0].errorbar(time_x, gain, yerr=0.0 if math.isnan(spread) else spread, label=r["method"], **style)
        label = {"fontsize": 7, "xytext": (4, 3), "textcoords": "offset points"}
        axes[0].annotate(r["method"], (time_x, gain), **label)
        if has_eig:
            axes[1].errorbar(r["lambda1_mean"], acc, xerr=r["lambda1_std"], yerr=err, **style)
            axes[1].annotate(r["method"], (r["lambda1_mean"], acc), **label)
    axes[0].axhline(0.0, color="0.7", lw=0.8)
    axes[0].set(xlabel="training time per image (x SGD)", ylabel="test top-1 gain over SGD (points, paired)",
                title=title)
    axes[0].legend(fontsize=8)
    if has_eig:
        axes[1].set(xlabel="top Hessian eigenvalue of the final model", ylabel="test top-1 (%)", xscale="log")
    fig.tight_layout()
    return save_png(fig, path)


def _csv(rows: list[dict[str, Any]]) -> str:
    keys = ["method", "test_top1_mean", "test_top1_std", "images_per_s", "images_per_s_std", "speed_vs_sgd",
            "wall_time_s_mean", "train_loss_mean", "vs_sgd_paired_mean", "vs_sgd_paired_std", "vs_sgd_low",
            "vs_sgd_high", "vs_sgd_wins", "vs_sgd_reading", "sam_steps_per_step", "lambda1_mean", "lambda1_std"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        low, high = row.get("vs_sgd_interval", ("", ""))
        writer.writerow({**{k: row.get(k, "") for k in keys}, "vs_sgd_low": low, "vs_sgd_high": high})
    return buffer.getvalue()


def format_study(rows: list[dict[str, Any]], split: str = "test") -> str:
    """A Markdown table: accuracy on `split` (mean ± std and per seed), final training loss, cost,
    flatness.
    """
    has_eig = any("lambda1_mean" in r for r in rows)
    headers = ["method", f"{split} top-1 (%)", "per seed", "vs SGD, paired (points)", "95% interval", "won",
               "final train loss", "images/s", "x SGD speed", "SAM steps / step", "wall time (s)"]
    headers += ["lambda1"] if has_eig else []
    cells = []
    for r in rows:
        seeds = ", ".join(f"{100 * a:.2f}" for a in r["test_top1_per_seed"])
        low, high = r.get("vs_sgd_interval", (math.nan, math.nan))
        if r.get("is_reference"):
            paired, interval, won = "(reference)", "", ""
        else:
            diff, spread = r.get("vs_sgd_paired_mean", math.nan), r.get("vs_sgd_paired_std", math.nan)
            paired = "-" if math.isnan(diff) else format_mean_std(100 * diff, 100 * spread, "+.2f")
            interval = format_interval(100 * low, 100 * high)
            won = f"{r['vs_sgd_wins']}/{len(r['test_top1_per_seed'])}" if "vs_sgd_wins" in r else "-"
        line = [r["method"], format_mean_std(100 * r["test_top1_mean"], 100 * r["test_top1_std"]), seeds, paired,
                interval, won,
                f"{r.get('train_loss_mean', math.nan):.3g}", f"{r['images_per_s']:.0f}",
                format_number(r["speed_vs_sgd"], ".2f"),
                "-" if r.get("sam_steps_per_step") is None else f"{r['sam_steps_per_step']:.2f}",
                f"{r['wall_time_s_mean']:.0f}"]
        if has_eig:
            line.append(format_mean_std(r.get("lambda1_mean", math.nan), r.get("lambda1_std", math.nan), ".3g", ".2g"))
        cells.append(line)
    return markdown_table(headers, cells, "lrlrrrrrrrr" + ("r" if has_eig else ""))
