"""The 1-D correlate kernels (kernels/convolve.cu) through the public API and directly.

Reference: NumPy's own ``convolve``/``correlate`` evaluated in float64/complex128 on the same
inputs. Tolerance: the forward-error bound of a length-m dot product, ``(m + 2) * u *
(|a| conv |v|)`` with ``u`` the unit roundoff of the dtype, computed per output element from the
absolute values -- independent of the code under test and tight enough that a wrong tap, a
wrong offset or a missing conjugation fails by orders of magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import stand_in_cupy

import gpuconv
from gpuconv.backends.device import _convolve as device_convolve

KERNEL_DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
MODES = ["full", "same", "valid"]
OPS = ["convolve", "correlate"]

# (len(a), len(v)): edges (length 1, equal lengths, v longer than a, odd/even), lengths around
# the tile (1024 outputs) and chunk (256 taps) boundaries, and seeded random lengths up to ~3000.
_rng = np.random.default_rng(20240601)
LENGTHS = [(1, 1), (1, 4), (4, 1), (2, 2), (3, 2), (2, 3), (6, 6), (7, 4), (4, 7), (33, 5),
           (5, 33), (255, 257), (1025, 3), (3, 1025), (1030, 256), (257, 1031)]
LENGTHS += [tuple(int(x) for x in _rng.integers(1, 3000, size=2)) for _ in range(3)]
LENGTHS += [(int(_rng.integers(1, 3000)), int(_rng.integers(1, 40))) for _ in range(3)]


def _random(rng, n, dtype):
    x = rng.standard_normal(n)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * rng.standard_normal(n)
    return x.astype(dtype)


def _reference(op, a, v, mode):
    wide = np.complex128 if np.iscomplexobj(a) else np.float64
    func = getattr(np, op)
    exact = func(a.astype(wide), v.astype(wide), mode)
    scale = func(np.abs(a).astype(np.float64), np.abs(v).astype(np.float64), mode)
    return exact, scale


def assert_matches_numpy(result, op, a, v, mode):
    expected_dtype = getattr(np, op)(a[:1], v[:1]).dtype
    assert result.dtype == expected_dtype
    exact, scale = _reference(op, a, v, mode)
    assert result.shape == exact.shape
    unit_roundoff = np.finfo(a.dtype).eps / 2
    bound = (min(a.size, v.size) + 2) * unit_roundoff * scale * (4 if np.iscomplexobj(a) else 1)
    error = np.abs(result.astype(exact.dtype) - exact)
    worst = int(np.argmax(error - bound))
    assert np.all(error <= bound + np.finfo(np.float64).tiny), (
        f"{op}({a.size}, {v.size}, {mode!r}) {a.dtype}: element {worst} off by {error[worst]:.3g}"
        f" (bound {bound[worst]:.3g})"
    )


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("lengths", LENGTHS, ids=lambda nm: f"{nm[0]}x{nm[1]}")
def test_public_api_matches_numpy(backend, lengths, dtype):
    """gpuconv.convolve/correlate == numpy's, every mode, on every backend."""
    rng = np.random.default_rng(hash(lengths) % 2**32)
    a, v = _random(rng, lengths[0], dtype), _random(rng, lengths[1], dtype)
    for op in OPS:
        for mode in MODES:
            with backend.active():
                result = getattr(gpuconv, op)(backend.asarray(a), backend.asarray(v), mode)
            assert_matches_numpy(backend.asnumpy(result), op, a, v, mode)


def test_hand_checked_values(backend):
    """Small cases worked out by hand (no reference implementation at all)."""
    a = np.array([1.0, 2.0, 3.0])
    v = np.array([0.0, 1.0, 0.5])
    z = np.array([1 + 1j, 2 - 1j], dtype=np.complex64)
    w = np.array([1j, 1.0], dtype=np.complex64)
    cases = [
        # convolve full: [1*0, 1*1 + 2*0, 1*.5 + 2*1 + 3*0, 2*.5 + 3*1, 3*.5]
        ("convolve", a, v, "full", [0.0, 1.0, 2.5, 4.0, 1.5]),
        ("convolve", a, v, "same", [1.0, 2.5, 4.0]),
        ("convolve", a, v, "valid", [2.5]),
        # correlate valid: 1*0 + 2*1 + 3*.5
        ("correlate", a, v, "valid", [3.5]),
        # correlate full, c[k] = sum a[n+k] v[n], k = -2..2: [.5, 2, 3.5, 3, 0]
        ("correlate", a, v, "full", [0.5, 2.0, 3.5, 3.0, 0.0]),
        # complex correlate conjugates v: c[k] = sum z[n+k] conj(w[n]), k = -1, 0, 1
        # k=-1: z0*conj(w1) = 1+1j; k=0: z0*(-1j) + z1*1 = (1-1j) + (2-1j) = 3-2j;
        # k=1: z1*conj(w0) = (2-1j)(-1j) = -1-2j
        ("correlate", z, w, "full", [1 + 1j, 3 - 2j, -1 - 2j]),
        # v longer than a: numpy swaps; convolve is symmetric
        ("convolve", v[:2], a, "valid", [1.0, 2.0]),
    ]
    for op, x, y, mode, expected in cases:
        with backend.active():
            result = getattr(gpuconv, op)(backend.asarray(x), backend.asarray(y), mode)
        result = backend.asnumpy(result)
        np.testing.assert_allclose(result, np.asarray(expected, dtype=result.dtype), rtol=1e-6,
                                   err_msg=f"{op} {mode}")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.float16])
def test_other_dtypes_match_numpy(backend, dtype):
    """Non-kernel dtypes: integers and bools exactly as NumPy, float16 via the float32 kernel."""
    rng = np.random.default_rng(7)
    a = rng.integers(-5, 6, size=40).astype(dtype)
    v = rng.integers(-5, 6, size=9).astype(dtype)
    for op in OPS:
        for mode in MODES:
            expected = getattr(np, op)(a, v, mode)
            with backend.active():
                result = getattr(gpuconv, op)(backend.asarray(a), backend.asarray(v), mode)
            result = backend.asnumpy(result)
            assert result.dtype == expected.dtype
            # small integers: every product and sum is exact, in float16 too
            np.testing.assert_array_equal(result, expected)


def test_mixed_dtypes_and_noncontiguous_inputs():
    backend = _device_backend("emulate")
    rng = np.random.default_rng(3)
    a = rng.standard_normal(200).astype(np.float32)[::2]  # non-contiguous view
    v = (rng.standard_normal(9) + 1j * rng.standard_normal(9)).astype(np.complex128)
    for op in OPS:
        result = getattr(backend, op)(a, v, "same")
        assert result.dtype == np.complex128
        assert_matches_numpy(result, op, a.astype(np.complex128), v, "same")


# --------------------------------------------------------------------- kernels forced directly


def _device_backend(name):
    from gpuconv.backends.device import make_backend, unavailable_reason

    reason = unavailable_reason(name)
    if reason:
        pytest.skip(f"{name} backend unavailable: {reason}")
    return make_backend(name)


@pytest.fixture(params=["emulate", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    return _device_backend(request.param)


def _to(device, x):
    return device.xp.asarray(x)


def _back(device, x):
    return x if device.xp is np else device.xp.asnumpy(x)


@pytest.mark.parametrize("method", ["tiled", "reduce"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_each_kernel_matches_numpy(device, method, dtype):
    """Both kernels on shapes the heuristic would not give them (short filters for reduce,
    few outputs with many taps for tiled)."""
    rng = np.random.default_rng(11)
    for n_a, n_v in [(1, 1), (2, 5), (300, 7), (7, 300), (600, 600), (1500, 20), (64, 700)]:
        a, v = _random(rng, n_a, dtype), _random(rng, n_v, dtype)
        for op in OPS:
            for mode in MODES:
                result = device_convolve.correlate(device, _to(device, a), _to(device, v), mode,
                                                   convolve=op == "convolve", method=method)
                assert_matches_numpy(_back(device, result), op, a, v, mode)


def test_output_window_matches_numpy_slices():
    """output_window picks NumPy's slice of the full result, for all small lengths.
    (Checked on NumPy alone: its 'same'/'valid' results are slices of its 'full' result.)"""
    rng = np.random.default_rng(5)
    for n_a in range(1, 10):
        for n_v in range(1, 10):
            a = rng.standard_normal(n_a) + 1j * rng.standard_normal(n_a)
            v = rng.standard_normal(n_v) + 1j * rng.standard_normal(n_v)
            for op in OPS:
                full = getattr(np, op)(a, v, "full")
                for mode in MODES:
                    start, n_out = device_convolve.output_window(
                        n_a, n_v, mode, convolve=op == "convolve"
                    )
                    np.testing.assert_allclose(getattr(np, op)(a, v, mode),
                                               full[start:start + n_out], rtol=1e-12,
                                               err_msg=f"{op} {n_a} {n_v} {mode}")


def test_choose_method():
    assert device_convolve.choose_method(10, 3) == "tiled"
    assert device_convolve.choose_method(1001, 2000) == "reduce"
    assert device_convolve.choose_method(10**6, 2000) == "tiled"
    assert device_convolve.choose_method(100, 511) == "tiled"


# --------------------------------------------------------------------- emulator checkers


# (len(a), len(v), mode, op): zero padding on both sides, several tap chunks, several blocks,
# and v longer than a (the swapped paths).
CHECK_CASES = [(3, 1, "full", "convolve"), (40, 300, "same", "correlate"),
               (1100, 260, "full", "correlate"), (30, 700, "valid", "convolve")]


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_kernels_under_emulator_check(emulate, emulator_check, dtype):
    """Both kernels, every dtype. checked: guard pages, no out-of-bounds access (each launch
    runs in a subprocess, so each case runs its own op only); race_check: outputs do not depend
    on thread or block order (forward, reverse, shuffled), both ops per case."""
    rng = np.random.default_rng(13 if emulator_check.checked else 17)
    with emulator_check():
        for method in ("tiled", "reduce"):
            for n_a, n_v, mode, case_op in CHECK_CASES:
                a, v = _random(rng, n_a, dtype), _random(rng, n_v, dtype)
                for op in (case_op,) if emulator_check.checked else OPS:
                    result = device_convolve.correlate(emulate, a, v, mode,
                                                       convolve=op == "convolve", method=method)
                    assert_matches_numpy(result, op, a, v, mode)


# ---------------------------------------------------------------- the CuPy executor, without a GPU


def test_cupy_executor_with_a_stand_in_cupy(monkeypatch, emulate):
    """CupyExecutor's flow on a machine without CuPy: a stand-in ``cupy`` whose RawModule
    compiles the code TEXT it is given (the inlined source) with the emulator. Checks the
    options and name expressions RawModule receives, per-device caching, and that the inlined
    text is a complete, correct kernel source."""
    from gpuconv import _kernels

    device_id = [0]

    class Device:
        def __init__(self):
            self.id = device_id[0]

    backend, compiled = stand_in_cupy(monkeypatch,
                                      ("ndarray", "asarray", "ascontiguousarray", "empty", "conj",
                                       "convolve", "correlate"), device=Device)
    rng = np.random.default_rng(23)
    a = _random(rng, 300, np.complex64)
    v = _random(rng, 40, np.complex64)
    for op in OPS:
        assert_matches_numpy(getattr(backend, op)(a, v, "same"), op, a, v, "same")
    # compiled lazily: only the compile group of complex64 with int indices
    group = _kernels.group_name_expressions(FILE, ("gpuconv::complex<float>", "int"))
    assert [(c.device, c.options, c.name_expressions) for c in compiled] == [
        (0, _kernels.NVRTC_OPTIONS, tuple(group))]
    device_id[0] = 1  # another device: a module of its own
    assert_matches_numpy(backend.correlate(a, v, "full"), "correlate", a, v, "full")
    assert [c.device for c in compiled] == [0, 1]


FILE = device_convolve.FILE
