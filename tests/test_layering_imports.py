"""The CUDA path does not load the emulator: importing the kernel registry, the launch helper
or the device backend package leaves ``gpuconv._emulator`` out of ``sys.modules`` (the type-code
table lives in ``gpuconv/_dtypes.py``, the cache paths in ``gpuconv/_cache.py``)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

MODULES = (
    "gpuconv._dtypes",
    "gpuconv._limits",
    "gpuconv._kernels",
    "gpuconv._launch",
    "gpuconv._shapes",
    "gpuconv.backends.device",
    "gpuconv.backends.device._executor",
)


@pytest.mark.parametrize("module", MODULES)
def test_import_does_not_load_the_emulator(module):
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('gpuconv._emulator'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "", f"{module} loads {result.stdout.strip()}"


def test_abi_loads_dtypes_by_path():
    """The checked-mode worker imports ``_abi`` by path, without the gpuconv package; its
    type-code table is then still ``gpuconv/_dtypes.py``'s."""
    import gpuconv._emulator

    directory = str(pathlib.Path(gpuconv._emulator.__file__).resolve().parent)
    code = (
        "import sys\n"
        f"sys.path.insert(0, {directory!r})\n"
        "import _abi\n"
        "assert not any(m.startswith('gpuconv') for m in sys.modules), 'gpuconv imported'\n"
        "from gpuconv._dtypes import TYPE_CODES\n"
        "assert _abi.ELEM_DTYPES == TYPE_CODES, _abi.ELEM_DTYPES\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
