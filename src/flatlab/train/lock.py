"""One process per run directory: an exclusive lock held while a run trains or resumes.

The lock is `flock` on a file next to the run directory, `.NAME.lock` (the directory itself is
created only at the first checkpoint, and replaced as a whole by `--overwrite`). The kernel drops
the lock when its process ends, however it ends, so a file left by a killed process blocks nothing.
The file holds the holder's pid, for the message of the process that is refused.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import UsageError
from ..fileio import file_mode

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

__all__ = ["RunInUseError", "run_lock", "lock_path"]


class RunInUseError(UsageError):
    """Another process trains in the run directory."""


def lock_path(run_dir: str | os.PathLike) -> Path:
    # resolved, so that every spelling of the directory (relative, ".", a symlink) maps to one lock
    """The lock file of `run_dir`, beside it."""
    run_dir = Path(run_dir).resolve()
    return run_dir.with_name(f".{run_dir.name}.lock")


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Holds the lock of `run_dir` for the block; raises `RunInUseError` at once, naming
    the directory, when another process holds it.
    """
    if fcntl is None:
        yield
        return
    path = lock_path(run_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise RunInUseError(f"run directory {run_dir} is in use by another flatlab process{pid}: wait for "
                                    "it to end, or choose another --name / --out") from None
            if _same_file(fd, path):
                break
            os.close(fd)  # its holder removed the file between our open and our lock: lock the new one
    except OSError as err:
        raise UsageError(f"cannot lock the run directory {run_dir}: {err.strerror or err}") from err
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        # removed while still held, so that no process can lock the file on its way out
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
