import pytest


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    # No test may read or write a user's real cache or dataset folder.
    monkeypatch.setenv("FLATLAB_CACHE", str(tmp_path / "flatlab-cache"))
    monkeypatch.setenv("FLATLAB_DATA", str(tmp_path / "flatlab-data"))
