"""Shared test fixtures: one test body, every backend.

The ``backend`` fixture runs a test on ``numpy`` (the reference), ``emulate`` (the CUDA
kernels on the CPU emulator) and ``cuda`` (marked ``gpu``; runs only where CuPy sees a device).
A test writes its body once against ``backend.asarray`` / ``backend.asnumpy`` and calls the
public API inside ``with backend.active():``.

This module holds the fixtures (pytest injects them by name; no test imports this file):
``backend``, ``emulate`` (the emulate device backend itself), ``emulator_check`` (the
emulator's checked and race-check modes, one test body under each) and ``golden``. The plain
helpers that tests import -- the random case generator, the error bound, the stand-in
``cupy`` -- live in ``kernel_helpers.py``.
"""

from __future__ import annotations

import contextlib
import json
import pathlib

import os

import numpy as np
import pytest
from hypothesis import settings

import gpuconv

DATA = pathlib.Path(__file__).parent / "data"

# Hypothesis: derandomized by default, so CI draws the same examples every run (a run is
# reproducible, and a rare example cannot fail one run and pass the next). Set
# GPUCONV_HYPOTHESIS=explore to draw fresh random examples when hunting for edge cases; a
# failure found so is then pinned with a plain test (see test_channels_last.py's
# test_degenerate_channels_last_output_has_channels_last_strides).
settings.register_profile("derandomized", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("GPUCONV_HYPOTHESIS", "derandomized"))


def _cuda_reason():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as exc:  # ImportError, CUDARuntimeError, ...
        return f"CuPy/CUDA unavailable ({type(exc).__name__})"
    return None


class BackendHarness:
    """How a test reaches one backend."""

    def __init__(self, name: str):
        self.name = name

    def active(self):
        return gpuconv.use_backend(self.name) if self.name != "cuda" else contextlib.nullcontext()

    def asarray(self, a):
        if self.name == "cuda":
            import cupy

            return cupy.asarray(a)
        return np.asarray(a)

    def asnumpy(self, a):
        if self.name == "cuda":
            import cupy

            assert isinstance(a, cupy.ndarray), f"expected a CuPy result, got {type(a)}"
            return cupy.asnumpy(a)
        assert isinstance(a, np.ndarray), f"expected a NumPy result, got {type(a)}"
        return a

    def __repr__(self):
        return self.name


def backend_params(*names):
    params = []
    for name in names:
        if name == "cuda":
            params.append(pytest.param("cuda", marks=pytest.mark.gpu, id="cuda"))
        else:
            params.append(pytest.param(name, id=name))
    return params


ALL_BACKENDS = backend_params("numpy", "emulate", "cuda")


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    name = request.param
    if name == "emulate":
        reason = gpuconv.available_backends()["emulate"]
        if reason != "available":
            pytest.skip(f"emulate backend unavailable: {reason}")
    if name == "cuda":
        reason = _cuda_reason()
        if reason:
            pytest.skip(reason)
    return BackendHarness(name)


@pytest.fixture(scope="module")
def emulate():
    """The ``emulate`` device backend itself (the CUDA kernels on the CPU emulator), for the
    kernel tests that call its methods or the device modules directly; skips where it is
    unavailable."""
    reason = gpuconv.available_backends()["emulate"]
    if reason != "available":
        pytest.skip(f"emulate backend unavailable: {reason}")
    from gpuconv.backends.device import make_backend

    return make_backend("emulate")


class EmulatorCheck:
    """One of the emulator's checking modes: ``name`` is ``"checked"`` (guard pages around every
    array, each launch in a subprocess: an out-of-bounds access fails) or ``"race_check"``
    (thread and block orders permuted, shared memory poisoned: a result that depends on the
    order fails); calling it returns the context manager that turns the mode on."""

    def __init__(self, name: str):
        self.name = name

    @property
    def checked(self) -> bool:
        return self.name == "checked"

    def __call__(self):
        from gpuconv import _emulator

        return getattr(_emulator, self.name)()

    def __repr__(self):
        return self.name


@pytest.fixture(autouse=True)
def _fresh_autotune_cache():
    """Every test starts and ends with an empty autotune cache (gpuconv._algorithms.AUTOTUNER):
    a choice timed by one test never decides another's."""
    from gpuconv import _algorithms

    _algorithms.AUTOTUNER.clear()
    yield
    _algorithms.AUTOTUNER.clear()


@pytest.fixture
def on_emulate():
    """The test body runs inside ``use_backend("emulate")``; skipped where the emulator cannot
    run."""
    from kernel_helpers import emulator_or_skip

    emulator_or_skip()
    reason = gpuconv.available_backends()["emulate"]
    if reason != "available":
        pytest.skip(reason)
    with gpuconv.use_backend("emulate"):
        yield


@pytest.fixture(params=["checked", "race_check"])
def emulator_check(request):
    """Run the test once under ``gpuconv._emulator.checked()`` and once under
    ``race_check()``: ``with emulator_check(): ...`` (``emulator_check.name`` says which);
    skips where the emulate backend is unavailable."""
    reason = gpuconv.available_backends()["emulate"]
    if reason != "available":
        pytest.skip(f"emulate backend unavailable: {reason}")
    return EmulatorCheck(request.param)


def pytest_collection_modifyitems(config, items):
    reason = None
    for item in items:
        if "gpu" in item.keywords:
            reason = reason or _cuda_reason() or ""
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"gpu test: {reason}"))


@pytest.fixture(scope="session")
def golden():
    """The golden cases: (list of case dicts, npz arrays)."""
    with open(DATA / "cases.json") as f:
        meta = json.load(f)
    arrays = np.load(DATA / "cases.npz")
    return meta["cases"], {k: arrays[k] for k in arrays.files}
