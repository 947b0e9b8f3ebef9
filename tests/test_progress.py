"""flatlab.progress.Progress: a bar on a terminal, nothing otherwise."""

import io

from flatlab.progress import Progress


def test_silent_unless_enabled():
    stream = io.StringIO()  # not a terminal
    bar = Progress(3, "train", stream=stream)
    bar.update(3, loss=0.5)
    bar.close()
    assert stream.getvalue() == "" and bar.count == 3


def test_draws_count_and_fields_when_enabled():
    stream = io.StringIO()
    bar = Progress(2, "train", enabled=True, stream=stream)
    bar.update(2, loss=0.25)
    bar.close()
    assert "train [" in stream.getvalue() and "2/2 loss 0.25" in stream.getvalue()
    assert stream.getvalue().endswith("\n")
