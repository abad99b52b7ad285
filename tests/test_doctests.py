"""The examples in every gpuconv module's docstrings run and print what they claim."""

import doctest
import importlib
import pkgutil

import pytest

import gpuconv

# gpuconv.torch needs torch; gpuconv._emulator's examples need g++ (checked at import).
OPTIONAL = {"gpuconv.torch": "torch"}


def _modules():
    names = ["gpuconv"]
    for info in pkgutil.walk_packages(gpuconv.__path__, prefix="gpuconv."):
        if ".kernels" in info.name or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    needs = OPTIONAL.get(name)
    if needs:
        pytest.importorskip(needs)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_public_modules_have_examples():
    for name in ("gpuconv._api", "gpuconv._shapes", "gpuconv._dispatch", "gpuconv.grad"):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0, f"{name} has no examples"
