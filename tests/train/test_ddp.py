"""`flatlab train` under torchrun (2 CPU processes, gloo) against one process with the same global batch."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flatlab.train import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")

COMMON = dict(dataset="digits", model="mlp", epochs=2, batch_size=64, lr=0.05, crop_padding=0, flip=False,
              threads=1)  # no augmentation and no BatchNorm: the maths makes both runs equal
INTERRUPTED = Path(__file__).with_name("interrupted_train.py")  # stops (Ctrl-C) after a given step


LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def flags(config: dict) -> list[str]:
    args = []
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        args += [flag if value is True else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    return args


def torchrun(tmp_path, name, **config):
    args = [*LAUNCH, "-m", "flatlab.cli", "train", "--out", str(tmp_path), "--name", name, *flags({**COMMON, **config})]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / name


@pytest.mark.parametrize(
    "optimizer, extra",
    [("sgd", {}), ("sam", {"sync_first_pass": True}), ("esam", {"sync_first_pass": True, "beta": 1.0, "gamma": 1.0}),
     ("looksam", {"sync_first_pass": True, "k": 3}),
     ("aesam", {}),  # the first pass is all-reduced by itself: every replica must take the same decision
     ("msam", {"rho": 0.5}), ("gcsam", {"sync_first_pass": True}), ("vasso", {"sync_first_pass": True}),
     ("lookbehind-sam", {"sync_first_pass": True}),
     ("rwp", {}), ("bsam", {"damping": 0.2}),  # both all-reduce their first pass themselves
     ("esam", {"sync_first_pass": True, "beta": 1.0, "gamma": 1.0, "accumulate": 2})],  # DDP and accumulation
)
def test_two_processes_equal_one_with_the_global_batch(tmp_path, optimizer, extra):
    ddp_dir = torchrun(tmp_path, f"ddp-{optimizer}", optimizer=optimizer, **extra)
    single = train(TrainConfig(**COMMON, optimizer=optimizer, out=str(tmp_path), name=f"one-{optimizer}", **extra),
                   log=lambda *_: None)
    a = torch.load(ddp_dir / "model.pt")["model"]
    b = torch.load(single.run_dir / "model.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    ddp_rows = [json.loads(x) for x in (ddp_dir / "metrics.jsonl").read_text().splitlines()]
    one_rows = [json.loads(x) for x in (single.run_dir / "metrics.jsonl").read_text().splitlines()]
    for r, s in zip(ddp_rows, one_rows):
        assert r["test_top1"] == pytest.approx(s["test_top1"], abs=1 / 360 + 1e-9)
        assert r["test_loss"] == pytest.approx(s["test_loss"], rel=1e-3)


def test_per_replica_ascent_differs_from_the_global_one(tmp_path):
    local = torch.load(torchrun(tmp_path, "local", optimizer="sam", epochs=1) / "model.pt")["model"]
    synced = torch.load(torchrun(tmp_path, "synced", optimizer="sam", epochs=1, sync_first_pass=True) / "model.pt")
    assert any(not torch.allclose(local[k], synced["model"][k], rtol=1e-4, atol=1e-6) for k in local)


@pytest.mark.parametrize("sync", [False, True])
def test_esam_random_tensors_and_data_selection_run_under_ddp(tmp_path, sync):
    run_dir = torchrun(tmp_path, f"esam-{sync}", optimizer="esam", epochs=1, beta=0.5, gamma=0.5, sync_first_pass=sync)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_test_top1"] > 0.2


def test_sam_on_runs_under_ddp_with_a_per_replica_ascent(tmp_path):
    # the cnn has BatchNorm (which two processes normalise apart, so no equality with one process
    # here): the ascent inside no_sync() skips the other tensors' weight gradients, the descent syncs
    run_dir = torchrun(tmp_path, "sam-on", optimizer="sam-on", model="cnn", epochs=1)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_test_top1"] > 0.2


@pytest.mark.parametrize("optimizer, extra", [("sam", {}), ("looksam", {"k": 3}), ("s2sam", {})])
def test_fsdp_equals_one_process_with_the_global_batch(tmp_path, optimizer, extra):
    run_dir = torchrun(tmp_path, f"fsdp-{optimizer}", optimizer=optimizer, fsdp=True, **extra)
    single = train(TrainConfig(**COMMON, optimizer=optimizer, out=str(tmp_path), name=f"one-{optimizer}", **extra),
                   log=lambda *_: None)
    a = torch.load(run_dir / "model.pt")["model"]  # full tensors, gathered from the shards
    b = torch.load(single.run_dir / "model.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert not hasattr(a[key], "device_mesh")
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    # the checkpoint is a full one: a single process resumes from it (here: reads its model back)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert all(ckpt["model"][k].shape == b[k].shape for k in b)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_test_top1"] == pytest.approx(single.summary["final_test_top1"], abs=1 / 360 + 1e-9)


def test_fsdp_run_resumes_exactly(tmp_path):
    """Stopped in epoch 2 (after its checkpoint of epoch 1), resumed: the same weights as straight."""
    straight = torchrun(tmp_path, "straight", optimizer="sam", fsdp=True, epochs=3)
    args = [*LAUNCH, str(INTERRUPTED), "30", "train", "--out", str(tmp_path), "--name", "stopped",
            *flags({**COMMON, "optimizer": "sam", "fsdp": True, "epochs": 3})]
    subprocess.run(args, capture_output=True, text=True, timeout=300, env=ENV)  # exits 130: interrupted
    assert (tmp_path / "stopped" / "checkpoint.pt").exists() and not (tmp_path / "stopped" / "model.pt").exists()
    resume = [*LAUNCH, "-m", "flatlab.cli", "train", "--resume", str(tmp_path / "stopped")]
    done = subprocess.run(resume, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(straight / "model.pt")["model"]
    b = torch.load(tmp_path / "stopped" / "model.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_rank_0_alone_reports_and_writes_the_global_values(tmp_path):
    """Rank 1 once wrote its own summary.json (no history: "epochs": 0, NaN) over rank 0's, printed a
    second done: line (nan% in a new run, the checkpoint's stale values after a resume), and the
    epoch's train loss/accuracy were rank 0's half of the batch. Three runs (--seeds), the first
    interrupted in epoch 2 and resumed: one report, one writer, the values of one process with the
    global batch."""
    seeds, epochs = (0, 1, 2), 2
    config = {**COMMON, "optimizer": "sam", "sync_first_pass": True, "epochs": epochs}  # DDP == one process
    cli = ["train", "--out", str(tmp_path), "--name", "r", "--seeds", ",".join(map(str, seeds)), *flags(config)]
    # 22 steps an epoch: stopped in epoch 2 of seed 0, after its checkpoint of epoch 1
    subprocess.run([*LAUNCH, str(INTERRUPTED), "30", *cli], capture_output=True, text=True, timeout=300, env=ENV)
    assert (tmp_path / "r-seed0" / "checkpoint.pt").exists() and not (tmp_path / "r-seed0" / "summary.json").exists()
    # the same command again resumes seed 0 and trains seeds 1 and 2; --tee prefixes each line with its rank
    done = subprocess.run([*LAUNCH, "--tee", "3", "-m", "flatlab.cli", *cli], capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert not [x for x in lines if x.startswith("[default1]")], done.stdout  # rank 1 says nothing
    assert sum("resuming" in x for x in lines) == 1
    done_lines = [x for x in lines if "done:" in x]
    assert len(done_lines) == len(seeds) and not any("nan" in x for x in done_lines), done_lines
    assert sum(x.startswith("[default0]:| sam | 3 |") for x in lines) == 1  # the --seeds table, once

    for seed, line in zip(seeds, done_lines):
        run_dir = tmp_path / f"r-seed{seed}"
        assert sorted(p.name for p in run_dir.iterdir()) == sorted(
            ["config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "model.pt"])  # no temporaries
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert summary["epochs"] == epochs and [r["epoch"] for r in rows] == [1, 2]
        assert all(math.isfinite(v) for v in summary.values() if isinstance(v, float)), summary
        assert summary["final_train_loss"] == rows[-1]["train_loss"]
        assert f"top-1 {100 * summary['final_test_top1']:.2f}%" in line and str(run_dir) in line
        # one process over the same global batches (no augmentation, no BatchNorm)
        one = train(TrainConfig(**config, seed=seed, out=str(tmp_path / "one"), name=f"s{seed}"), log=lambda *_: None)
        ones = [json.loads(x) for x in (one.run_dir / "metrics.jsonl").read_text().splitlines()]
        for r, o in zip(rows, ones, strict=True):
            assert r["train_loss"] == pytest.approx(o["train_loss"], rel=1e-4)
            assert r["train_acc"] == pytest.approx(o["train_acc"], abs=1.5 / 1408)  # 22 batches of 64
            assert r["test_top1"] == pytest.approx(o["test_top1"], abs=1 / 360 + 1e-9)
