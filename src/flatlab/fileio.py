"""Atomic file writes shared by the data cache, training checkpoints, run files and analysis results."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "file_mode", "unwritable"]


def file_mode() -> int:
    """The permissions a plain `open(path, "w")` would give a new file: `0o666` less the umask."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary file next to `path`; on success it replaces `path` in one step.

    Readers (another process, a concurrent DDP rank) therefore see either the old file or the
    complete new one, never a half-written cache. On error the temporary file is removed. The file
    gets the permissions of any new file (the umask's), not the private 0600 of a temporary file.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
        >>> with atomic_write(target) as f:
        ...     _ = f.write(b"done")
        >>> target.read_bytes()
        b'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` through `atomic_write`."""
    with atomic_write(path) as f:
        f.write(text.encode())


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    """Write `value` as indented JSON with a final newline, through `atomic_write`."""
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written into `folder` (created if needed), or None if they can: tried
    with a temporary file in the deepest folder that exists, which is left as it was.
    """
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        fd, tmp = tempfile.mkstemp(dir=existing, prefix=".flatlab-write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        return f"{existing} is not writable ({err.strerror or err})"
    return None
