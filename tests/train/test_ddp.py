"""`flatlab train` under torchrun (2 CPU processes, gloo) against one process with the same global batch."""

import json
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


def torchrun(tmp_path, name, **config):
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "flatlab.cli", "train", "--out", str(tmp_path), "--name", name]
    for key, value in {**COMMON, **config}.items():
        flag = "--" + key.replace("_", "-")
        args += [flag if value is True else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / name


@pytest.mark.parametrize(
    "optimizer, extra",
    [("sgd", {}), ("sam", {"sync_first_pass": True}), ("esam", {"sync_first_pass": True, "beta": 1.0, "gamma": 1.0}),
     ("looksam", {"sync_first_pass": True, "k": 3}),
     ("aesam", {}),  # the first pass is all-reduced by itself: every replica must take the same decision
     ("msam", {"rho": 0.5}),
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
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(Path(__file__).with_name("interrupted_train.py")), "30", "train", "--out", str(tmp_path),
            "--name", "stopped", "--optimizer", "sam", "--fsdp", "--epochs", "3"]
    for key, value in COMMON.items():
        if key == "epochs":
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag if value is True else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)  # exits 130: interrupted
    assert (tmp_path / "stopped" / "checkpoint.pt").exists() and not (tmp_path / "stopped" / "model.pt").exists()
    resume = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
              "flatlab.cli", "train", "--resume", str(tmp_path / "stopped")]
    done = subprocess.run(resume, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(straight / "model.pt")["model"]
    b = torch.load(tmp_path / "stopped" / "model.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
