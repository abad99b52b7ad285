"""The examples in the public docstrings run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = ["gpuconv._api", "gpuconv._shapes", "gpuconv._dispatch"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
