"""Array-handling behaviour of the public API, on every backend."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gpuconv
from gpuconv.backends import numpy_backend

rng = np.random.default_rng(1)


def _call(backend, func, *arrays, **kwargs):
    args = [None if a is None else backend.asarray(a) for a in arrays]
    with backend.active():
        return func(*args, **kwargs)


OPS = {
    "conv": (gpuconv.conv, lambda: (rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((4, 2, 3, 2))),
             dict(groups=2, padding=1)),
    "conv_transpose": (gpuconv.conv_transpose,
                       lambda: (rng.standard_normal((2, 4, 5)), rng.standard_normal((4, 3, 3))),
                       dict(stride=2)),
    "depthwise_conv": (gpuconv.depthwise_conv,
                       lambda: (rng.standard_normal((2, 3, 5, 5, 4)), rng.standard_normal((6, 1, 3, 1, 2))),
                       dict(padding="same")),
    "deform_conv2d": (gpuconv.deform_conv2d,
                      lambda: (rng.standard_normal((2, 2, 6, 5)), rng.uniform(-1, 1, (2, 8, 5, 4)),
                               rng.standard_normal((3, 2, 2, 2))), {}),
}


@pytest.mark.parametrize("op", OPS)
def test_noncontiguous_inputs(backend, op):
    func, make, kwargs = OPS[op]
    arrays = make()
    # the same values, laid out transposed/strided in memory
    strided = [np.asfortranarray(a) if i % 2 == 0 else np.repeat(a, 2, axis=-1)[..., ::2]
               for i, a in enumerate(arrays)]
    assert not all(s.flags.c_contiguous for s in strided)
    expected = _call(backend, func, *arrays, **kwargs)
    got = _call(backend, func, *strided, **kwargs)
    np.testing.assert_array_equal(backend.asnumpy(got), backend.asnumpy(expected))
    assert backend.asnumpy(got).flags.c_contiguous


@pytest.mark.parametrize("op", OPS)
def test_out_is_written_and_returned(backend, op):
    func, make, kwargs = OPS[op]
    arrays = make()
    expected = backend.asnumpy(_call(backend, func, *arrays, **kwargs))
    out = backend.asarray(np.full(expected.shape, np.nan))
    args = [backend.asarray(a) for a in arrays]
    with backend.active():
        returned = func(*args, out=out, **kwargs)
    assert returned is out
    np.testing.assert_array_equal(backend.asnumpy(out), expected)


@pytest.mark.parametrize("op", OPS)
def test_empty_batch(backend, op):
    func, make, kwargs = OPS[op]
    arrays = [a[:0] if i == 0 or (op == "deform_conv2d" and i == 1) else a
              for i, a in enumerate(make())]
    full = backend.asnumpy(_call(backend, func, *make(), **kwargs))
    got = backend.asnumpy(_call(backend, func, *arrays, **kwargs))
    assert got.shape == (0,) + full.shape[1:]


@pytest.mark.parametrize(
    ("dtypes", "expected"),
    [((np.float32, np.float32), np.float32), ((np.float32, np.float64), np.float64),
     ((np.float16, np.float16), np.float16), ((np.float16, np.float32), np.float32)],
)
def test_result_dtype_follows_result_type(backend, dtypes, expected):
    x = rng.standard_normal((1, 2, 9)).astype(dtypes[0])
    w = rng.standard_normal((2, 2, 3)).astype(dtypes[1])
    got = backend.asnumpy(_call(backend, gpuconv.conv1d, x, w))
    assert got.dtype == expected
    reference = gpuconv.conv1d(x.astype(np.float64), w.astype(np.float64))
    tol = {np.float16: 1e-2, np.float32: 1e-5, np.float64: 1e-12}[expected]
    np.testing.assert_allclose(got, reference, rtol=tol, atol=tol)


def test_float16_accumulates_in_float32():
    """A long float16 sum rounded once: a float16 accumulator would drift far more."""
    x = np.full((1, 1, 4096), 0.1, dtype=np.float16)
    w = np.ones((1, 1, 4096), dtype=np.float16)
    got = gpuconv.conv1d(x, w)[0, 0, 0]
    exact = float(np.float16(0.1)) * 4096
    assert got.dtype == np.float16
    assert abs(float(got) - exact) <= abs(exact) * 2**-10


def test_numpy_in_numpy_out_and_default_backend():
    x, w = OPS["conv"][1]()
    assert gpuconv.current_backend() == "numpy"
    assert type(gpuconv.conv(x, w, groups=2)) is np.ndarray
    with gpuconv.use_backend("numpy"):
        with gpuconv.use_backend("emulate"):
            assert gpuconv.current_backend() == "emulate"
        assert gpuconv.current_backend() == "numpy"


def test_environment_variable_selects_backend(monkeypatch):
    monkeypatch.setenv("GPUCONV_BACKEND", "emulate")
    assert gpuconv.current_backend() == "emulate"
    with gpuconv.use_backend("numpy"):
        assert gpuconv.current_backend() == "numpy"


def test_import_does_not_import_cupy_or_torch():
    import subprocess
    import sys

    code = ("import sys, gpuconv, numpy as np; gpuconv.conv(np.ones((1,1,3)), np.ones((1,1,2)));"
            "print('cupy' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_workspace_bounds_peak_memory(monkeypatch):
    """im2col is chunked: peak extra memory follows WORKSPACE_BYTES, not the problem size.

    The full im2col buffer here is 2 * 16 * 9 * 64 * 64 * 8 B = 9 MiB; with a 256 KiB
    workspace, peak traced memory must stay near input + padded copy + output (1.6 MiB).
    """
    x = rng.standard_normal((2, 16, 64, 64))
    w = rng.standard_normal((4, 16, 3, 3))
    expected = gpuconv.conv2d(x, w, padding=1)
    monkeypatch.setattr(numpy_backend, "WORKSPACE_BYTES", 256 * 1024)
    tracemalloc.start()
    try:
        got = gpuconv.conv2d(x, w, padding=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    padded = 2 * 16 * 66 * 66 * 8
    output = 2 * 4 * 64 * 64 * 8
    assert peak < padded + 2 * output + 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


def test_workspace_bounds_single_huge_image(monkeypatch):
    """One image larger than the workspace is chunked over output rows."""
    x = rng.standard_normal((1, 3, 40, 30))
    w = rng.standard_normal((2, 3, 5, 5))
    expected = gpuconv.conv2d(x, w, padding=2, stride=(2, 1))
    monkeypatch.setattr(numpy_backend, "WORKSPACE_BYTES", 8 * 1024)
    np.testing.assert_allclose(gpuconv.conv2d(x, w, padding=2, stride=(2, 1)), expected,
                               rtol=1e-12, atol=1e-12)
