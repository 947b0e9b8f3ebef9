"""Every ``>>>`` docstring example in flatlab.sparse runs."""

import doctest
import importlib
import pkgutil

import pytest
import torch
from torch import nn

import flatlab.sparse

MODULES = [f"flatlab.sparse.{m.name}" for m in pkgutil.iter_modules(flatlab.sparse.__path__)]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": torch, "nn": nn}, verbose=False)
    assert result.failed == 0
