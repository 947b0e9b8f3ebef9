"""The command line run in this process, and what a refusal must look like."""

from __future__ import annotations

from flatlab.cli import main

#: a training run of about a second: the embedded digits, a quarter-width CNN, one epoch
QUICK = ["--dataset", "digits", "--model", "cnn", "--width", "0.25", "--epochs", "1", "--threads", "1"]


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``flatlab ARGV`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error(err: str, command: str = "train") -> str:
    """The one ``flatlab COMMAND: error:`` line of a refusal (no traceback, nothing else)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"flatlab {command}: error: "), err
    return lines[0]
