"""The error a user can fix, and the one validator every layer checks its arguments with.

`UsageError` is a `ValueError` (so library callers catch what torch.optim users expect)
that marks a mistake in the *input*: a bad hyper-parameter, an unknown name, a missing file named
by the user. The command line prints it as one `error:` line and exits 2; any other exception
keeps its traceback, because it is a bug (or a real failure such as running out of memory).
"""

from __future__ import annotations

import math
import numbers

__all__ = ["UsageError", "UserFileNotFoundError", "UserFileExistsError", "MissingDependencyError", "check_number"]


class UsageError(ValueError):
    """A mistake in what the user asked for; the message says what and how to fix it."""


class UserFileNotFoundError(UsageError, FileNotFoundError):
    """A file or folder the user named (run directory, data root, config file) is missing or is
    not what it should be; still a `FileNotFoundError` for callers that catch that.
    """


class UserFileExistsError(UsageError, FileExistsError):
    """The user asked to create something (a run directory) that already exists."""


class MissingDependencyError(UsageError, ImportError):
    """An optional dependency (PyYAML, Pillow, matplotlib) that the request needs is not installed;
    the message says what to `pip install`.
    """


def check_number(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """Raises `UsageError` naming `name` unless `value` lies in the given range.

    `low`/`high` are inclusive bounds unless `low_open`/`high_open`; `integer` also
    requires a whole number (`3.0` passes, `True` does not); `optional` lets `None` through.
    NaN never passes.

    Example:
        ```python
        >>> check_number("beta", 0.6, low=0.0, low_open=True, high=1.0)
        >>> check_number("beta", 0.0, low=0.0, low_open=True, high=1.0)
        Traceback (most recent call last):
        ...
        flatlab.errors.UsageError: beta must be in (0, 1], got beta=0.0

        ```
    """
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"{name} must be {kind}, got {name}={value!r}")
    if integer and (not math.isfinite(value) or int(value) != value):
        raise UsageError(f"{name} must be {kind}, got {name}={value!r}")
    ok = not math.isnan(value)
    if low is not None:
        ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if ok:
        return
    if low is not None and high is not None:
        where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        where = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        where = f"{'<' if high_open else '<='} {high:g}"
    else:
        where = "a number"
    raise UsageError(f"{name} must be {'an integer ' if integer else ''}{where}, got {name}={value!r}")
