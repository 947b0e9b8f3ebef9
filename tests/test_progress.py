"""flatlab.progress.Progress: a tqdm bar on a terminal, nothing otherwise (or without tqdm)."""

import io
import sys

import pytest

from flatlab.progress import Progress


def test_silent_unless_enabled():
    stream = io.StringIO()  # not a terminal
    bar = Progress(3, "train", stream=stream)
    bar.update(3, loss=0.5)
    bar.close()
    assert stream.getvalue() == "" and bar.count == 3


def test_draws_count_and_fields_with_tqdm_when_enabled():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    bar = Progress(2, "train", enabled=True, stream=stream)
    bar.update(1, loss=0.25)
    bar.update(1, loss=0.25)
    bar.close()
    assert "train" in stream.getvalue() and "2/2" in stream.getvalue() and "loss=0.25" in stream.getvalue()


def test_without_tqdm_nothing_is_drawn(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    stream = io.StringIO()
    bar = Progress(2, "train", enabled=True, stream=stream)
    bar.update(2, loss=0.25)
    bar.close()
    assert stream.getvalue() == "" and bar.count == 2
