"""Every method on FSDP2-sharded parameters (DTensor shards) equals one process with the same global
batch: global norms and inner products over all shards, backups sharded like their parameters."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")

CASES = [
    ["sam", {}], ["sam-sign", {}], ["asam", {}], ["esam", {"beta": 0.5, "gamma": 1.0}], ["s2sam", {}],
    ["msam", {"rho": 0.5}], ["looksam", {"k": 2}], ["rst", {}], ["aesam", {}], ["gsam", {}], ["wsam", {}],
    ["fsam", {}], ["ssam-d", {}], ["gcsam", {}], ["vasso", {}], ["sam-on", {"norm": True}],
    ["lookbehind-sam", {}],  # the adaptive alpha's cosines over all shards
    ["rwp", {}], ["bsam", {"num_data": 100, "lr": 0.5}],  # bSAM's steps are lr (1 - beta1) g / s: its own lr
]


def test_every_method_on_a_sharded_model_equals_one_process():
    worker = Path(__file__).with_name("fsdp_worker.py")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
            json.dumps(CASES)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    for name, _ in CASES:
        if name == "ssam-d":  # a global top-k mask needs every shard's scores: refused in one line
            assert "sharded (FSDP)" in result[name]["error"]
            continue
        assert result[name]["moved"] > 0.05, name  # training moved the weights
        assert result[name]["diff"] < 1e-5, (name, result[name])  # float32 rounding, not a per-shard norm
