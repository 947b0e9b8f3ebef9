"""Every `>>>` example in a docstring of the package runs and prints what it shows (the Markdown
fences around them included: the output ends before the closing fence)."""

import doctest
import importlib
import pkgutil

import pytest
import torch
from torch import nn

import flatlab

MODULES = sorted(m.name for m in pkgutil.walk_packages(flatlab.__path__, "flatlab.")
                 if not m.name.startswith("flatlab.cli.__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as err:  # an optional integration (lightning, transformers) not installed
        pytest.skip(str(err))
    result = doctest.testmod(module, extraglobs={"torch": torch, "nn": nn, "flatlab": flatlab}, verbose=False)
    assert result.failed == 0
