"""The emulator's __nv_bfloat16 (gpuconv/_emulator/cuda_shim.h) against ml_dtypes.bfloat16:
conversions from float round to nearest even (ties, subnormals, overflow to infinity, NaN),
+ - * / round once, atomicAdd adds. ml_dtypes is an independent implementation."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from gpuconv import _emulator as emu

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes (the bf16 extra)")
pytestmark = pytest.mark.skipif(not emu.available(), reason="no C++ compiler for the emulator")

BF16 = np.dtype(ml_dtypes.bfloat16)
SOURCE = pathlib.Path(__file__).parent / "emu_kernels" / "bf16.cu"


@pytest.fixture(scope="module")
def mod():
    return emu.load_module(SOURCE, ["bf16_convert", "bf16_arith", "bf16_atomic"])


def _grid(n, block=128):
    return ((n + block - 1) // block,), (block,)


def _special_floats():
    bits = np.array([
        0x00000000, 0x80000000, 0x3F800000, 0x3F808000, 0x3F818000,  # 1, ties to even
        0x3F80_8001, 0x3F80_7FFF,  # just above / below a tie
        0x7F7F_FFFF, 0x7F7F_8000, 0xFF7F_FFFF,  # max float: rounds to inf
        0x7F80_0000, 0xFF80_0000, 0x7FC0_0000, 0x7F80_0001, 0xFFA0_0001,  # inf, NaNs
        0x0000_0001, 0x0000_8000, 0x0000_7FFF, 0x0080_0000, 0x807F_FFFF,  # subnormals
    ], dtype=np.uint32)
    return bits.view(np.float32)


def _random_floats(rng):
    scale = np.float32(10) ** rng.integers(-30, 30, 3000).astype(np.float32)
    return np.concatenate([
        _special_floats(),
        rng.standard_normal(3000).astype(np.float32) * scale,
        rng.integers(0, 2**32, 3000, dtype=np.uint64).astype(np.uint32).view(np.float32),
    ]).astype(np.float32)


def test_conversions_match_ml_dtypes(mod):
    rng = np.random.default_rng(3)
    with np.errstate(over="ignore", invalid="ignore"):  # some random bits are inf/NaN on purpose
        f = _random_floats(rng)
    n = f.size
    out = np.zeros(n, BF16)
    back = np.zeros(n, np.float32)
    mod.get_function("bf16_convert")(*_grid(n), (f, out, back, np.int32(n)))
    with np.errstate(invalid="ignore"):
        want = f.astype(BF16)
    nan = np.isnan(f)
    np.testing.assert_array_equal(out.view(np.uint16)[~nan], want.view(np.uint16)[~nan])
    assert np.isnan(out[nan].astype(np.float32)).all()  # NaN stays NaN (quiet)
    np.testing.assert_array_equal(back[~nan], want.astype(np.float32)[~nan])


def test_arithmetic_rounds_once(mod):
    rng = np.random.default_rng(4)
    n = 2000
    a = (rng.standard_normal(n) * 100).astype(BF16)
    b = (rng.standard_normal(n) * 3).astype(BF16)
    b[b.astype(np.float32) == 0] = BF16.type(1.0)
    ops = np.zeros(4 * n, BF16)
    mod.get_function("bf16_arith")(*_grid(n), (a, b, ops, np.int32(n)))
    fa, fb = a.astype(np.float64), b.astype(np.float64)
    for k, exact in enumerate((fa + fb, fa - fb, fa * fb, fa / fb)):
        # float64 holds the exact + - * of two bf16 values; / is rounded once more, harmless
        want = exact.astype(np.float32).astype(BF16)
        np.testing.assert_array_equal(ops[k::4].view(np.uint16), want.view(np.uint16))


def test_atomic_add(mod):
    n, m = 512, 5
    x = np.ones(n, BF16)
    total = np.zeros(m, BF16)
    with emu.race_check():  # bf16 atomics are atomic between blocks: no lost update
        mod.get_function("bf16_atomic")(*_grid(n), (x, total, np.int32(n), np.int32(m)))
    want = np.bincount(np.arange(n) % m).astype(np.float32)  # <= 103: exact in bf16
    np.testing.assert_array_equal(total.astype(np.float32), want)


def test_bf16_parameter_needs_bf16_arrays(mod):
    n = 4
    with pytest.raises(TypeError, match=r"parameter 1 \(0-based\): expected .*bfloat16 \(ptr:bf16\)"):
        mod.get_function("bf16_convert")(*_grid(n), (np.zeros(n, np.float32),
                                                    np.zeros(n, np.float16),
                                                    np.zeros(n, np.float32), np.int32(n)))
