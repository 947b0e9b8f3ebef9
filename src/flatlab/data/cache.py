"""Where flatlab keeps downloads and decoded-dataset caches, and how it writes them safely."""

from __future__ import annotations

import os
from pathlib import Path

from ..fileio import atomic_write

__all__ = ["cache_dir", "data_dir", "atomic_write"]


def cache_dir() -> Path:
    """The root of flatlab's caches: `$FLATLAB_CACHE` if set, else `~/.cache/flatlab`.

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
    """Default root for downloaded datasets: `$FLATLAB_DATA` if set, else `<cache_dir()>/datasets`.

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
