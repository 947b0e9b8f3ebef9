"""A one-line progress bar on a terminal; silent when output is not a terminal (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool | None = None, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = total
        self.desc = desc
        self.count = 0
        self._last = 0.0

    def update(self, n: int = 1, **fields: float) -> None:
        self.count += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and self.count < self.total:
            return
        self._last = now
        width = 24
        done = int(width * self.count / max(1, self.total))
        text = " ".join(f"{k} {v:.4g}" for k, v in fields.items())
        bar = "#" * done + "." * (width - done)
        self.stream.write(f"\r{self.desc} [{bar}] {self.count}/{self.total} {text}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
