"""Progress of a long loop: a bar on a terminal, drawn by tqdm (the optional `progress` extra), and
where there is no terminal (a log file, CI) or no tqdm, a plain line every `every` seconds if asked
(the analysis commands ask; training has its per-epoch lines).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "have_tqdm", "PLAIN_EVERY"]

#: seconds between the plain progress lines of a long analysis written to a file
PLAIN_EVERY = 30.0


def have_tqdm() -> bool:
    """Whether tqdm is installed."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class Progress:
    """`update(n, **fields)` advances by `n` and shows `fields` (numbers) beside the count;
    `count` and `total` may be read (and `total` set) whether or not anything is drawn.

    The clock starts when the object is made: make it when the loop starts. `enabled` draws the
    bar (default: when `stream` is a terminal); without a bar, `every` (seconds) writes a plain
    line at most that often, unless `enabled` is False. `clock` is for tests.
    """

    def __init__(self, total: int, desc: str, enabled: bool | None = None, stream: TextIO | None = None, *,
                 every: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.enabled = (self.stream.isatty() if enabled is None else enabled) and have_tqdm()
        self.every = None if self.enabled or enabled is False else every
        self.total = total
        self.desc = desc
        self.count = 0
        self._clock = clock
        self._started = self._written = clock()
        self._fields: dict[str, float] = {}
        self._bar = None
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total or None, desc=desc, file=self.stream, leave=False, dynamic_ncols=True,
                             mininterval=0.1)

    def update(self, n: int = 1, **fields: float) -> None:
        """Counts `n` more items done, with the latest values of `fields` to show."""
        self.count += n
        if fields:
            self._fields = fields
        if self._bar is not None:
            self._bar.total = self.total
            if fields:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in fields.items()}, refresh=False)
            self._bar.update(n)
            if self.count >= self.total:
                self._bar.refresh()  # the last state, whatever mininterval skipped
        elif self.every is not None:
            now = self._clock()
            if now - self._written >= self.every:
                self._written = now
                self.stream.write(self._line(now - self._started) + "\n")
                self.stream.flush()

    def _line(self, elapsed: float) -> str:
        text = f"{self.desc}: {self.count}"
        if self.total:
            text += f"/{self.total} ({100 * self.count / self.total:.0f}%)"
        text += f", {_duration(elapsed)} elapsed"
        if self.total and 0 < self.count < self.total:
            text += f", ~{_duration(elapsed * (self.total - self.count) / self.count)} left"
        return text + "".join(f", {k} {v:.4g}" for k, v in self._fields.items())

    def close(self) -> None:
        """Ends the bar (or the plain lines)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _duration(seconds: float) -> str:
    """`75.2` -> `"1m15s"`, `3725` -> `"1h02m"`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
