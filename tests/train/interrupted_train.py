"""Run under torchrun by tests/train/test_ddp.py: `flatlab train` that stops (Ctrl-C) right after a
given optimizer step on every rank, as an interrupted job would."""

import sys

from flatlab.cli import main
from flatlab.train import run as run_module

stop_after = int(sys.argv[1])
original = run_module._Run.after_step
calls = {"n": 0}


def interrupted(self):
    original(self)
    calls["n"] += 1
    if calls["n"] == stop_after:
        raise KeyboardInterrupt


run_module._Run.after_step = interrupted
sys.exit(main(sys.argv[2:]))
