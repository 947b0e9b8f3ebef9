"""A run directory belongs to one process: a second ``flatlab train`` into it is refused in one line,
and a lock left by a process that died blocks nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flatlab.cli import main
from flatlab.train import loop
from flatlab.train.lock import RunInUseError, lock_path, run_lock

pytest.importorskip("fcntl")

SRC = str(Path(__file__).parents[2] / "src")
QUICK = ["--dataset", "digits", "--model", "cnn", "--width", "0.25", "--threads", "1"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process that holds the lock of ``run_dir`` the way flatlab takes it, until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from flatlab.train.lock import run_lock
        with run_lock({str(run_dir)!r}):
            print("held", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_run_directory_locked_by_another_process_is_refused_naming_it(tmp_path, capsys):
    run_dir = tmp_path / "mix"
    holder = _holder(run_dir)
    try:
        code = main(["train", *QUICK, "--epochs", "1", "--out", str(tmp_path), "--name", "mix"])
        line = _one_error(capsys)
        assert code == 2
        assert line.startswith("flatlab train: error: ") and str(run_dir) in line
        assert f"in use by another flatlab process (pid {holder.pid})" in line
        assert not run_dir.exists()  # nothing written into the other process's directory
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed, not closed: its lock went with it, its file stays and blocks nothing
    assert lock_path(run_dir).exists()
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(tmp_path), "--name", "mix"]) == 0
    assert (run_dir / "summary.json").is_file() and not lock_path(run_dir).exists()


def test_a_resume_of_a_locked_run_is_refused_too(tmp_path, capsys):
    assert main(["train", *QUICK, "--epochs", "2", "--out", str(tmp_path), "--name", "r"]) == 0
    (tmp_path / "r" / "summary.json").unlink()
    holder = _holder(tmp_path / "r")
    try:
        assert main(["train", "--resume", str(tmp_path / "r")]) == 2
        assert "in use by another flatlab process" in _one_error(capsys)
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_released_on_ctrl_c(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("flatlab.train.run.train_one_epoch", interrupted)
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(tmp_path), "--name", "c"]) == 130
    assert not lock_path(tmp_path / "c").exists()
    monkeypatch.setattr("flatlab.train.run.train_one_epoch", loop.train_one_epoch)
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(tmp_path), "--name", "c"]) == 0


def test_every_spelling_of_a_directory_shares_one_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    with run_lock("runs/a"):
        monkeypatch.chdir(tmp_path / "runs" / "a")
        with pytest.raises(RunInUseError, match="in use"), run_lock("."):
            pass
    with run_lock(tmp_path / "runs" / "a"):  # released: it can be taken again
        pass


def test_two_trainings_started_together_into_one_directory_leave_one_run(tmp_path):
    """The user's report: two ``flatlab train --name mix`` started 0.3 s apart both exited 0 into one
    directory. Whichever comes second is refused -- while the first trains (the lock) or after it
    finished (the directory holds a run) -- and the first run is complete."""
    argv = [sys.executable, "-m", "flatlab.cli", "train", *QUICK, "--epochs", "3", "--out", str(tmp_path),
            "--name", "mix", "--no-progress"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    second = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    results = [(p.wait(timeout=300), *p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    _, _, err = next(r for r in results if r[0] == 2)
    assert len(err.strip().splitlines()) == 1 and str(tmp_path / "mix") in err, err
    assert (tmp_path / "mix" / "summary.json").is_file()
    assert len((tmp_path / "mix" / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_held_lock_does_not_outlive_a_sigterm(tmp_path):
    holder = _holder(tmp_path / "t")
    holder.send_signal(signal.SIGTERM)
    holder.wait()
    with run_lock(tmp_path / "t"):
        pass
