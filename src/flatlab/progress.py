"""A progress bar on a terminal, drawn by tqdm (the optional ``progress`` extra); silent when output
is not a terminal (logs, CI) or tqdm is not installed, where the per-epoch lines say how far a run is."""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress", "have_tqdm"]


def have_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class Progress:
    """``update(n, **fields)`` advances the bar by ``n`` and shows ``fields`` (numbers) beside it;
    ``count`` and ``total`` may be read (and ``total`` set) whether or not anything is drawn."""

    def __init__(self, total: int, desc: str, enabled: bool | None = None, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = (self.stream.isatty() if enabled is None else enabled) and have_tqdm()
        self.total = total
        self.desc = desc
        self.count = 0
        self._bar = None

    def update(self, n: int = 1, **fields: float) -> None:
        self.count += n
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, file=self.stream, leave=False, dynamic_ncols=True,
                             mininterval=0.1)
        self._bar.total = self.total
        if fields:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in fields.items()}, refresh=False)
        self._bar.update(n)
        if self.count >= self.total:
            self._bar.refresh()  # the last state, whatever mininterval skipped

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
