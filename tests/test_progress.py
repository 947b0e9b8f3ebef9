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


def test_the_bars_clock_starts_when_it_is_made_not_at_the_first_update():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    bar = Progress(3, "train", enabled=True, stream=stream)
    assert "0/3" in stream.getvalue()  # drawn, its clock running, before any step is done
    bar.close()


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_without_a_terminal_a_plain_line_every_interval():
    stream, clock = io.StringIO(), FakeClock()
    bar = Progress(4, "hessian", stream=stream, every=30, clock=clock)
    for t in (10, 31, 40, 62):
        clock.now = 100 + t
        bar.update(1)
    bar.close()
    assert stream.getvalue().splitlines() == [
        "hessian: 2/4 (50%), 31s elapsed, ~31s left",  # the first line after 30 s, the next 30 s after it
        "hessian: 4/4 (100%), 1m02s elapsed",
    ]


def test_plain_lines_show_the_fields_and_an_unknown_total():
    stream, clock = io.StringIO(), FakeClock()
    bar = Progress(0, "scan", stream=stream, every=0, clock=clock)
    clock.now += 3725
    bar.update(5, loss=0.125)
    assert stream.getvalue() == "scan: 5, 1h02m elapsed, loss 0.125\n"


def test_no_plain_lines_when_progress_is_off_or_not_asked_for():
    for kwargs in (dict(enabled=False, every=0), dict(every=None)):
        stream = io.StringIO()
        bar = Progress(2, "x", stream=stream, **kwargs)
        bar.update(2)
        assert stream.getvalue() == "", kwargs


def test_without_tqdm_a_requested_bar_falls_back_to_plain_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    stream = io.StringIO()
    bar = Progress(2, "train", enabled=True, stream=stream, every=0)
    bar.update(2)
    assert stream.getvalue().startswith("train: 2/2 (100%)")
