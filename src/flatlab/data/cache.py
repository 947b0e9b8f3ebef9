"""Where flatlab keeps downloads and decoded-dataset caches, and how it writes them safely."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def cache_dir() -> Path:
    """The root of flatlab's caches: ``$FLATLAB_CACHE`` if set, else ``~/.cache/flatlab``.

    Example:
        >>> import os
        >>> os.environ["FLATLAB_CACHE"] = "/tmp/flatlab-cache"
        >>> str(cache_dir())
        '/tmp/flatlab-cache'
        >>> del os.environ["FLATLAB_CACHE"]
    """
    env = os.environ.get("FLATLAB_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "flatlab"


def data_dir() -> Path:
    """Default root for downloaded datasets: ``$FLATLAB_DATA`` if set, else ``<cache_dir()>/datasets``.

    Example:
        >>> import os
        >>> os.environ["FLATLAB_DATA"] = "/tmp/datasets"
        >>> str(data_dir())
        '/tmp/datasets'
        >>> del os.environ["FLATLAB_DATA"]
    """
    env = os.environ.get("FLATLAB_DATA")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "datasets"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` in one step.

    Readers (another process, a concurrent DDP rank) therefore see either the old file or the
    complete new one, never a half-written cache. On error the temporary file is removed.

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
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
