"""Errors raised by the dataset readers, and the optional-Pillow guard."""

from __future__ import annotations

import os

from ..errors import MissingDependencyError, UsageError


class DatasetFormatError(UsageError):
    """A dataset file exists but cannot be read: truncated, corrupt or not in the expected format.

    A `UsageError` (so a `ValueError`): the user named the data, and the command line reports it in one line.

    The message always names the offending file, because "unpickling stack underflow" alone does not
    tell a user which of sixty thousand files to replace.

    Example:
        >>> err = DatasetFormatError("/data/x.bin", "truncated: 10 of 100 bytes")
        >>> str(err)
        '/data/x.bin: truncated: 10 of 100 bytes'
        >>> err.path
        '/data/x.bin'
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # Default exception pickling would pass the formatted message as the only argument, which
        # breaks re-raising from DataLoader worker processes.
        return (type(self), (self.path, self.problem))


def require_pillow():
    """Import and return the `PIL.Image` module, or explain how to install it.

    Pillow is optional: only decoding JPEG/PNG image folders needs it, so core installs stay on
    torch + numpy.

    Example:
        >>> Image = require_pillow()  # doctest: +SKIP
    """
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - exercised only without Pillow installed
        raise MissingDependencyError(
            "Reading image folders needs Pillow, which is not installed: "
            "`pip install pillow` (or `pip install flatlab[images]`)."
        ) from exc
    return Image
