"""flatlab.fileio: atomic writes of bytes, text and JSON."""

import doctest
import json

import flatlab.fileio
from flatlab.fileio import atomic_write_json, atomic_write_text


def test_text_and_json_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_json(path, {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]} and path.read_text().endswith("\n")
    atomic_write_text(path, "replaced")
    assert path.read_text() == "replaced"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_docstring_examples():
    assert doctest.testmod(flatlab.fileio, verbose=False).failed == 0


def test_atomic_writes_keep_the_umask_permissions(tmp_path):
    """A temporary file is private (0600); the file it becomes must not be (teammates read results)."""
    import os

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.txt", "x")
        assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.txt", "x")
        assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
