"""kernels/mma.cuh on the CPU emulator: tile layouts, mma.sync (f16, bf16, tf32), ldmatrix
(.x1/.x2/.x4, with and without .trans) and strict cp.async, against a NumPy model written from
the PTX ISA's fragment tables (as restated in the project's PTX-FRAGMENTS notes) -- not from
mma.cuh's get_i/get_j nor from the emulator's gather/scatter (which uses the inverse map) --
and small GEMMs built on the primitives against numpy.matmul.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import EMU_KERNELS, emulator_or_skip

emu = emulator_or_skip()
KDIR = EMU_KERNELS
LDMATRIX = [f"ldmatrix_raw<{n}, {t}>" for n in (1, 2, 4) for t in ("false", "true")]
NAMES = [
    "tile_layouts",
    "mma_raw<0>",
    "mma_raw<1>",
    "mma_raw<2>",
    *LDMATRIX,
    "gemm_direct16<false>",
    "gemm_direct16<true>",
    "gemm_direct_tf32",
    "gemm_pipelined<1>",
    "gemm_pipelined<2>",
    "cp_async_groups<0>",
    "cp_async_groups<1>",
    "cp_async_groups<3>",
    "ldmatrix_offset",
    "cp_async_src_bytes",
    "cp_async_neighbour<false>",
    "cp_async_neighbour<true>",
]


@pytest.fixture(scope="module")
def mod():
    return emu.load_module(KDIR / "mma.cu", NAMES)


# ---- the model: (row, col) of element i held by `lane`, from the ISA's tables ----------------
def _gt(lane):
    return lane >> 2, lane % 4  # groupID, threadID_in_group


def pos_a16x16(lane, i):  # A of m16n8k16: a0..a7
    g, t = _gt(lane)
    return g + (8 if i in (2, 3, 6, 7) else 0), 2 * t + (i & 1) + (8 if i >= 4 else 0)


def pos_b16x8(lane, i):  # B of m16n8k16: b0..b3 (row = k, col = n)
    g, t = _gt(lane)
    return 2 * t + (i & 1) + (8 if i >= 2 else 0), g


def pos_a_tf32(lane, i):  # A of m16n8k8.tf32: a0..a3
    g, t = _gt(lane)
    return g + (8 if i in (1, 3) else 0), t + (4 if i >= 2 else 0)


def pos_b_tf32(lane, i):  # B of m16n8k8.tf32: b0, b1
    g, t = _gt(lane)
    return t + 4 * i, g


def pos_c(lane, i):  # C/D: c0..c3
    g, t = _gt(lane)
    return g + (8 if i >= 2 else 0), 2 * t + (i & 1)


def bits16(m, bf16):
    """16-bit patterns of a float matrix: float16, or bfloat16 rounded to nearest even."""
    if not bf16:
        return np.asarray(m, np.float16).view(np.uint16)
    u = np.asarray(m, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bits16(b, bf16):
    if not bf16:
        return b.view(np.float16).astype(np.float64)
    return (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def pack_regs(bits, pos, nelem):
    """Per-lane registers: element pairs (2i, 2i+1) into register i, the first in the low half
    (16-bit elements), or one element per register (32-bit)."""
    if bits.dtype == np.uint16:
        regs = np.zeros((32, nelem // 2), np.uint32)
        for lane in range(32):
            for i in range(nelem):
                r, c = pos(lane, i)
                regs[lane, i // 2] |= np.uint32(bits[r, c]) << np.uint32(16 * (i % 2))
        return regs
    regs = np.zeros((32, nelem), np.uint32)
    for lane in range(32):
        for i in range(nelem):
            regs[lane, i] = bits[pos(lane, i)]
    return regs


def c_regs(c):
    return np.array([[c[pos_c(lane, i)] for i in range(4)] for lane in range(32)], np.float32)


def d_matrix(d):
    out = np.full((16, 8), np.nan)
    for lane in range(32):
        for i in range(4):
            out[pos_c(lane, i)] = d[lane, i]
    return out


def test_tile_layouts_match_the_isa_tables(mod):
    out = np.zeros(32 * 44, np.int32)
    mod.get_function("tile_layouts")((1,), (32,), (out,))
    got = out.reshape(32, 22, 2)
    tables = [(pos_a16x16, 8), (pos_b16x8, 4), (pos_a_tf32, 4), (pos_b_tf32, 2), (pos_c, 4)]
    expected = [[pos(lane, i) for pos, n in tables for i in range(n)] for lane in range(32)]
    np.testing.assert_array_equal(got, np.array(expected))


def test_model_covers_each_matrix_once():
    """The model itself: every fragment table is a bijection lanes x registers -> elements."""
    for pos, n, shape in [
        (pos_a16x16, 8, (16, 16)),
        (pos_b16x8, 4, (16, 8)),
        (pos_a_tf32, 4, (16, 8)),
        (pos_b_tf32, 2, (8, 8)),
        (pos_c, 4, (16, 8)),
    ]:
        seen = np.zeros(shape, int)
        for lane in range(32):
            for i in range(n):
                seen[pos(lane, i)] += 1
        assert (seen == 1).all()


@pytest.mark.parametrize("kind", ["f16", "bf16"])
@pytest.mark.parametrize("values", ["integers", "random"])
def test_mma_m16n8k16(mod, kind, values):
    bf16 = kind == "bf16"
    rng = np.random.default_rng(3 + bf16)
    if values == "integers":  # exact: every partial sum is an integer below 2**24
        a, b = rng.integers(-8, 9, (16, 16)), rng.integers(-8, 9, (16, 8))
        c = rng.integers(-100, 100, (16, 8)).astype(np.float32)
    else:
        a, b = rng.standard_normal((16, 16)), rng.standard_normal((16, 8))
        c = rng.standard_normal((16, 8)).astype(np.float32)
    abits, bbits = bits16(a, bf16), bits16(b, bf16)
    d = np.zeros((32, 4), np.float32)
    mod.get_function(f"mma_raw<{int(bf16)}>")(
        (1,), (32,), (pack_regs(abits, pos_a16x16, 8), pack_regs(bbits, pos_b16x8, 4), c_regs(c), d)
    )
    expected = from_bits16(abits, bf16) @ from_bits16(bbits, bf16) + c
    got = d_matrix(d)
    if values == "integers":
        np.testing.assert_array_equal(got, expected)
    else:  # fp32 sums of 17 terms: within a few ulps of the float64 result
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_mma_m16n8k8_tf32(mod):
    rng = np.random.default_rng(5)
    # values with at most 10 fraction bits: exact in TF32 whatever the rounding of the inputs
    a = rng.integers(-512, 512, (16, 8)).astype(np.float32) / 64
    b = rng.integers(-512, 512, (8, 8)).astype(np.float32) / 32
    c = rng.integers(-1000, 1000, (16, 8)).astype(np.float32)
    d = np.zeros((32, 4), np.float32)
    mod.get_function("mma_raw<2>")(
        (1,),
        (32,),
        (
            pack_regs(a.view(np.uint32), pos_a_tf32, 4),
            pack_regs(b.view(np.uint32), pos_b_tf32, 2),
            c_regs(c),
            d,
        ),
    )
    np.testing.assert_array_equal(d_matrix(d), a.astype(np.float64) @ b + c)


def test_mma_sums_in_fp32_not_half(mod):
    """2048 + 1 + 1 ... : half precision would lose the ones; fp32 keeps them."""
    a = np.zeros((16, 16))
    b = np.zeros((16, 8))
    a[:, :] = 1.0
    b[0, :] = 2048.0
    b[1:, :] = 1.0
    d = np.zeros((32, 4), np.float32)
    mod.get_function("mma_raw<0>")(
        (1,),
        (32,),
        (
            pack_regs(bits16(a, False), pos_a16x16, 8),
            pack_regs(bits16(b, False), pos_b16x8, 4),
            np.zeros((32, 4), np.float32),
            d,
        ),
    )
    assert (d_matrix(d) == 2048 + 15).all()


def ldmatrix_model(stored, rows, nmat, trans):
    """Registers per lane: matrix j is the stored rows rows[8j .. 8j+7]; register j of lane l
    holds row l>>2, columns 2(l%4), 2(l%4)+1 (transposed with .trans), low half first."""
    regs = np.zeros((32, 4), np.uint32)
    for j in range(nmat):
        mat = stored[rows[8 * j : 8 * j + 8]]
        if trans:
            mat = mat.T
        for lane in range(32):
            lo, hi = mat[lane >> 2, 2 * (lane % 4)], mat[lane >> 2, 2 * (lane % 4) + 1]
            regs[lane, j] = np.uint32(lo) | (np.uint32(hi) << np.uint32(16))
    return regs


@pytest.mark.parametrize("nmat", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix(mod, nmat, trans):
    rng = np.random.default_rng(nmat + 10 * trans)
    stored = rng.integers(0, 65536, (32, 8)).astype(np.uint16)
    rows = rng.permutation(32).astype(np.int32)  # each lane points at an arbitrary stored row
    out = np.zeros((32, 4), np.uint32)
    mod.get_function(f"ldmatrix_raw<{nmat}, {str(trans).lower()}>")(
        (1,), (32,), (stored, rows, out)
    )
    np.testing.assert_array_equal(out, ldmatrix_model(stored, rows, nmat, trans))


SHAPES = [(16, 8, 16), (32, 16, 32), (37, 24, 40), (1, 8, 8), (64, 40, 72), (5, 16, 24)]


def grid(m, n, bm, bn):
    return (-(-n // bn), -(-m // bm))


@pytest.mark.parametrize("m, n, k", SHAPES)
@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_gemm_direct16(mod, m, n, k, kind):
    bf16 = kind == "bf16"
    rng = np.random.default_rng(m * n * k)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    abits, bbits = bits16(a, bf16), bits16(b, bf16)
    c = np.full((m, n), np.nan, np.float32)
    mod.get_function(f"gemm_direct16<{str(bf16).lower()}>")(
        grid(m, n, 16, 8), (32,), (abits, bbits, c, np.int32(m), np.int32(n), np.int32(k))
    )
    expected = np.matmul(from_bits16(abits, bf16), from_bits16(bbits, bf16))
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5 * k)


@pytest.mark.parametrize("m, n, k", SHAPES)
def test_gemm_direct_tf32(mod, m, n, k):
    rng = np.random.default_rng(m + n + k)
    a = (rng.integers(-1024, 1024, (m, k)) / 256).astype(np.float32)
    b = (rng.integers(-1024, 1024, (k, n)) / 128).astype(np.float32)
    c = np.full((m, n), np.nan, np.float32)
    mod.get_function("gemm_direct_tf32")(
        grid(m, n, 16, 8), (32,), (a, b, c, np.int32(m), np.int32(n), np.int32(k))
    )
    np.testing.assert_array_equal(c, np.matmul(a.astype(np.float64), b))  # exact sums


@pytest.mark.parametrize("m, n, k", SHAPES)
def test_gemm_pipelined_cp_async_ldmatrix(mod, m, n, k):
    rng = np.random.default_rng(m * 7 + n + k)
    a = rng.integers(-4, 5, (m, k)).astype(np.float16)
    b = rng.integers(-4, 5, (k, n)).astype(np.float16)
    c = np.full((m, n), np.nan, np.float32)
    with emu.race_check():
        mod.get_function("gemm_pipelined<1>")(
            grid(m, n, 32, 16), (128,), (a, b, c, np.int32(m), np.int32(n), np.int32(k))
        )
    np.testing.assert_array_equal(c, np.matmul(a.astype(np.float64), b.astype(np.float64)))


def test_planted_gemm_missing_cp_async_wait(mod):
    """wait_group<2> where <1> is needed: the stage about to be read has not landed, its
    shared memory still holds the poison (0xFF bytes, a NaN), and the result shows it."""
    m, n, k = 32, 16, 48
    a = np.ones((m, k), np.float16)
    b = np.ones((k, n), np.float16)
    c = np.zeros((m, n), np.float32)
    mod.get_function("gemm_pipelined<2>")(
        grid(m, n, 32, 16), (128,), (a, b, c, np.int32(m), np.int32(n), np.int32(k))
    )
    assert np.isnan(c).all()


@pytest.mark.parametrize("wait", [0, 1, 3])
def test_cp_async_groups_land_at_their_wait(mod, wait):
    nthreads = 64
    rng = np.random.default_rng(wait)
    x = rng.standard_normal(4 * nthreads).astype(np.float32)
    src_bytes = rng.integers(0, 2, nthreads).astype(np.int32) * 4  # zero fill or a full copy
    out = np.zeros(4 * nthreads, np.float32)
    mod.get_function(f"cp_async_groups<{wait}>")((1,), (nthreads,), (x, src_bytes, out))
    got = out.reshape(nthreads, 4)
    # thread t writes what thread t+1 copied (after the barrier)
    src = np.roll(x.reshape(nthreads, 4), -1, axis=0)
    sb = np.roll(src_bytes, -1)
    expect = src.copy()
    expect[:, 3] = np.where(sb == 4, src[:, 3], 0.0)  # the zero-fill copy
    poisoned = {0: [], 1: [3], 3: [0, 1, 2, 3]}[wait]  # groups still pending -> columns
    for col in range(4):
        if col in poisoned:
            assert got[:, col].view(np.uint32).tolist() == [0xFFFFFFFF] * nthreads
        else:
            np.testing.assert_array_equal(got[:, col], expect[:, col])


def test_ldmatrix_misaligned_row_is_an_error(mod):
    out = np.zeros(32, np.uint32)
    mod.get_function("ldmatrix_offset")((1,), (32,), (np.int32(8), out))  # 16 bytes: fine
    with pytest.raises(emu.EmulatorError, match="ldmatrix: row address of lane 0 is not 16-byte"):
        mod.get_function("ldmatrix_offset")((1,), (32,), (np.int32(4), out))


@pytest.mark.parametrize("src_bytes", [0, 4, 12, 16])
def test_cp_async_zero_fill(mod, src_bytes):
    x = np.array([1.5, -2.0, 3.25, 4.0], np.float32)
    out = np.full(4, 7.0, np.float32)
    mod.get_function("cp_async_src_bytes")((1,), (32,), (x, np.int32(src_bytes), out))
    np.testing.assert_array_equal(out, np.where(np.arange(4) < src_bytes // 4, x, 0.0))


def test_cp_async_src_bytes_past_cp_size_is_an_error(mod):
    x = np.zeros(8, np.float32)
    with pytest.raises(emu.EmulatorError, match="src-size at most cp-size"):
        mod.get_function("cp_async_src_bytes")(
            (1,), (32,), (x, np.int32(20), np.zeros(4, np.float32))
        )


def test_planted_missing_barrier_after_cp_async_wait(mod):
    """wait_group covers the thread's own copies only: reading a neighbour's copy needs a
    barrier too. Without it the result depends on the thread order: a RaceError."""
    x = np.arange(4 * 64, dtype=np.float32)
    with pytest.raises(emu.RaceError, match="cp_async_neighbour<false>"), emu.race_check():
        mod.get_function("cp_async_neighbour<false>")((1,), (64,), (x, np.zeros_like(x)))


def test_fixed_barrier_after_cp_async_wait(mod):
    x = np.arange(4 * 64, dtype=np.float32)
    out = np.zeros_like(x)
    with emu.race_check():
        mod.get_function("cp_async_neighbour<true>")((1,), (64,), (x, out))
    np.testing.assert_array_equal(out, np.roll(x.reshape(64, 4), -1, axis=0).reshape(-1))
