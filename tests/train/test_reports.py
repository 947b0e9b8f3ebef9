"""The analysis reports as a library: importable without the command line, each with its own budget
defaults, the options every report shares passed as keywords and reaching the files it writes."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flatlab.train import train
from flatlab.train.reports import (
    ReportOptions,
    analyse_gradstats,
    analyse_hessian,
    analyse_landscape,
    analyse_robustness,
    hessian_table,
    open_run,
)

SRC = Path(__file__).resolve().parents[2] / "src"


def test_run_loading_and_the_reports_import_without_the_command_line():
    code = ("import sys; from flatlab.train.reports import LoadedRun, open_run, select_batches, analyse_hessian; "
            "print(sorted(m for m in sys.modules if m.startswith('flatlab.cli')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("analyse, batches, batch_size", [
    (analyse_landscape, 4, 128), (analyse_hessian, 4, 128), (analyse_gradstats, 8, 128),
    (analyse_robustness, None, 256),
])  # fmt: skip
def test_each_report_has_its_budget_and_the_shared_options_as_keywords(analyse, batches, batch_size):
    params = inspect.signature(analyse).parameters
    assert params["batches"].default == batches and params["batch_size"].default == batch_size  # docs/analysis.md
    shared = [name for name in params if name in ReportOptions.__dataclass_fields__]
    assert shared == ["batches", "batch_size", "split", "seed", "out", "load", "progress"]
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in shared)
    assert params["split"].default == "test" and params["seed"].default == 0 and params["out"].default is None
    with pytest.raises(TypeError, match="nosuch"):
        analyse(["RUN"], nosuch=1)


def test_the_shared_options_reach_the_batches_and_the_record(quick, tmp_path):
    run_dir = train(quick(epochs=1), log=lambda *_: None).run_dir
    records = analyse_hessian([run_dir], k=1, iters=4, trace_samples=0, density=0, batches=2, batch_size=32,
                              seed=3, out=tmp_path / "h", load={"checkpoint": "checkpoint.pt"})
    record = json.loads((tmp_path / "h" / "hessian.json").read_text())
    assert record["data"] == {"split": "test", "batches": 2, "batch_size": 32, "samples": 64, "budget": 2, "seed": 3}
    assert record["options"]["checkpoint"] == "checkpoint.pt" and record["options"]["k"] == 1
    assert records[0]["path"] == str(tmp_path / "h" / "hessian.json")
    assert hessian_table(records).splitlines()[2].startswith(f"| {run_dir.name} |")
    # an opened run is analysed as it is, with the split asked for
    run = open_run(run_dir)
    records = analyse_landscape([run], grid=3, batches=1, batch_size=16, split="train", out=tmp_path / "l")
    assert records[0]["data"]["split"] == "train" and records[0]["data"]["samples"] == 16
