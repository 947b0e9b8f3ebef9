"""Every docstring example in flatlab.data runs (those needing real dataset files are marked +SKIP)."""

import doctest
import importlib
import pkgutil

import pytest

import flatlab.data

MODULES = ["flatlab.data", *(f"flatlab.data.{m.name}" for m in pkgutil.iter_modules(flatlab.data.__path__))]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0
