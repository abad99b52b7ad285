"""Tests of the CPU emulator (gpuconv._emulator): shim features, runtime, and every checker.

The kernels live in tests/emu_kernels/*.cu. Expected values come from NumPy computations that
share nothing with the kernels (bincount, reshape-sum, float16 casts, index grids), or are
hand-checkable. The planted-bug kernels must each be caught by their checker, and their
corrected twins must pass.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
from kernel_helpers import EMU_KERNELS, emulator_or_skip

emu = emulator_or_skip()
KDIR = EMU_KERNELS

FEATURES = [
    "index_coverage",
    "block_sum_static<float, 256>",
    "block_sum_static<double, 128>",
    "block_sum_dynamic<float>",
    "block_sum_dynamic<double>",
    "atomic_bins<float>",
    "atomic_bins<double>",
    "atomic_bins<int>",
    "atomic_bins<unsigned long long>",
    "half_convert",
    "scalars64",
    "all_types",
    "sync_count",
    "kernel_assert",
]
BUGS = [
    "oob_write_past_end",
    "oob_read_before_start",
    "scale2",
    "shared_overrun",
    "neighbour_sum<false>",
    "neighbour_sum<true>",
    "add_offset",
    "divergent_barrier",
    "early_return_barrier",
    "atomic_total<float>",
    "atomic_total<double>",
    "write_conflict",
    "uninitialised_shared",
    "stack_overflow",
    "inter_block_dependency",
]


@pytest.fixture(scope="module")
def features():
    return emu.load_module(KDIR / "features.cu", FEATURES)


@pytest.fixture(scope="module")
def bugs():
    return emu.load_module(KDIR / "planted_bugs.cu", BUGS)


def i64(v):
    return np.int64(v)


def blocks_for(n, block):
    return max(1, -(-n // block))


def run_with_deadline(fn, seconds=60):
    """Run fn() in a daemon thread; fail (instead of hanging) if it does not finish in time."""
    outcome = {}

    def target():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"launch still running after {seconds} s: the emulator hangs"
    if "exc" in outcome:
        raise outcome["exc"]


# ---------------------------------------------------------------------------------- features


def test_params_type_codes(features):
    fn = features.get_function("all_types")
    assert fn.params == (
        "ptr:f64",
        "i8",
        "u8",
        "i16",
        "u16",
        "i32",
        "u32",
        "i64",
        "u64",
        "f16",
        "f32",
        "f64",
        "c64",
        "c128",
        "bool",
        "const ptr:c128",
        "const ptr:f16",
    )
    assert features.get_function("block_sum_static<float, 256>").params == (
        "const ptr:f32",
        "ptr:f32",
        "i64",
    )


def test_all_scalar_types_reach_the_kernel(features):
    fn = features.get_function("all_types")
    out = np.zeros(14)
    pc128 = np.array([1 + 0.25j])
    pf16 = np.array([0.5], np.float16)
    args = (
        out,
        np.int8(-7),
        np.uint8(250),
        np.int16(-30000),
        np.uint16(60000),
        np.int32(-(2**31)),
        np.uint32(2**32 - 1),
        np.int64(-(2**62)),
        np.uint64(2**63),
        np.float16(1.5),
        np.float32(0.1),
        np.float64(1e300),
        np.complex64(2 + 3j),
        np.complex128(4 - 5j),
        np.bool_(True),
        pc128,
        pf16,
    )
    fn((1,), (1,), args)
    expected = [
        -7,
        250,
        -30000,
        60000,
        -(2**31),
        2**32 - 1,
        float(-(2**62)),
        float(2**63),
        1.5,
        float(np.float32(0.1)),
        1e300,
        2 + 30,
        4 - 50 + 0.25,
        1.5,
    ]
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.float64))


def test_index_coverage_3d(features):
    fn = features.get_function("index_coverage")
    nx, ny, nz = 10, 5, 3
    block = (4, 3, 2)
    grid = (blocks_for(nx, 4), blocks_for(ny, 3), blocks_for(nz, 2))  # (3, 2, 2), partial blocks
    out = np.zeros((nz, ny, nx, 8), np.int32)
    dims = np.zeros(8, np.int32)
    fn(grid, block, (out, dims, i64(nx), i64(ny), i64(nz)))
    gz, gy, gx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    expected = np.stack(
        [gx % 4, gy % 3, gz % 2, gx // 4, gy // 3, gz // 2, np.ones_like(gx), np.zeros_like(gx)],
        axis=-1,
    )
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(dims, [4, 3, 2, 3, 2, 2, 32, 0])


@pytest.mark.parametrize("workers", ["1", "3"])
def test_static_shared_block_reduction(features, monkeypatch, workers):
    monkeypatch.setenv("GPUCONV_EMULATE_THREADS", workers)
    rng = np.random.default_rng(1)
    n = 1000
    x = rng.integers(-1000, 1000, n).astype(np.float64)  # integer-valued: sums are exact
    nblocks = blocks_for(n, 128)
    out = np.zeros(nblocks)
    features.get_function("block_sum_static<double, 128>")(nblocks, 128, (x, out, i64(n)))
    padded = np.zeros(nblocks * 128)
    padded[:n] = x
    np.testing.assert_array_equal(out, padded.reshape(nblocks, 128).sum(axis=1))

    xf = rng.standard_normal(3000).astype(np.float32)
    nb = blocks_for(xf.size, 256)
    outf = np.zeros(nb, np.float32)
    features.get_function("block_sum_static<float, 256>")(nb, 256, (xf, outf, i64(xf.size)))
    ref = np.zeros(nb * 256)
    ref[: xf.size] = xf
    np.testing.assert_allclose(outf, ref.reshape(nb, 256).sum(axis=1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype,block", [(np.float32, 64), (np.float64, 512)])
def test_dynamic_shared_block_reduction(features, dtype, block):
    rng = np.random.default_rng(2)
    n = 5000
    x = rng.integers(-100, 100, n).astype(dtype)
    nblocks = blocks_for(n, block)
    out = np.zeros(nblocks, dtype)
    name = f"block_sum_dynamic<{'float' if dtype == np.float32 else 'double'}>"
    itemsize = np.dtype(dtype).itemsize
    features.get_function(name)(nblocks, block, (x, out, i64(n)), shared_mem=block * itemsize)
    padded = np.zeros(nblocks * block)
    padded[:n] = x
    np.testing.assert_array_equal(out, padded.reshape(nblocks, block).sum(axis=1))


def test_barrier_count_in_stats(features):
    # block_sum_static<float, 256>: 1 barrier + log2(256) = 9 barriers per block
    x = np.ones(256 * 5, np.float32)
    out = np.zeros(5, np.float32)
    before = emu.stats()
    features.get_function("block_sum_static<float, 256>")(5, 256, (x, out, i64(x.size)))
    after = emu.stats()
    assert after["barriers"] - before["barriers"] == 9 * 5
    assert after["blocks"] - before["blocks"] == 5
    assert after["threads"] - before["threads"] == 5 * 256
    np.testing.assert_array_equal(out, 256.0)


@pytest.mark.parametrize(
    "name,dtype",
    [
        ("atomic_bins<float>", np.float32),
        ("atomic_bins<double>", np.float64),
        ("atomic_bins<int>", np.int32),
        ("atomic_bins<unsigned long long>", np.uint64),
    ],
)
def test_atomic_add_from_many_blocks(features, monkeypatch, name, dtype):
    monkeypatch.setenv("GPUCONV_EMULATE_THREADS", "4")  # more workers than cores: contention
    rng = np.random.default_rng(3)
    n, nbins = 200_000, 7
    x = rng.integers(0, 8, n).astype(dtype)  # integer-valued: every order gives the exact sum
    out = np.zeros(nbins, dtype)
    features.get_function(name)(blocks_for(n, 256), 256, (x, out, i64(n), np.int32(nbins)))
    expected = np.bincount(np.arange(n) % nbins, weights=x.astype(np.float64), minlength=nbins)
    np.testing.assert_array_equal(out.astype(np.float64), expected)


def test_half_conversions_match_numpy(features):
    fn = features.get_function("half_convert")
    all_halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = all_halves[np.isfinite(all_halves)].astype(np.float64)
    finite = np.unique(finite)
    midpoints = (finite[:-1] + finite[1:]) / 2  # exact ties: round to nearest EVEN
    rng = np.random.default_rng(4)
    f_in = np.concatenate(
        [
            all_halves.astype(np.float32),
            midpoints.astype(np.float32),
            np.nextafter(midpoints.astype(np.float32), np.float32(np.inf)),
            np.nextafter(midpoints.astype(np.float32), np.float32(-np.inf)),
            rng.standard_normal(20000).astype(np.float32) * np.float32(1000),
            np.float32(2.0) ** rng.integers(-30, 20, 5000).astype(np.float32),
            np.array(
                [
                    65504,
                    65519.99,
                    65520,
                    1e6,
                    -1e6,
                    2**-25,
                    2**-25 * 1.0001,
                    2**-26,
                    0.0,
                    -0.0,
                    np.inf,
                    -np.inf,
                    np.nan,
                ],
                np.float32,
            ),
        ]
    ).astype(np.float32)
    n = f_in.size
    h_in = np.resize(all_halves, n)
    h_out = np.zeros(n, np.uint16)
    f_out = np.zeros(n, np.float32)
    h_sum = np.zeros(n, np.float16)
    fn(blocks_for(n, 256), 256, (f_in, h_out, h_in, f_out, h_sum, i64(n)))

    with np.errstate(over="ignore"):
        ref = f_in.astype(np.float16)  # NumPy rounds to nearest even
    got = h_out.view(np.float16)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(h_out[~nan], ref.view(np.uint16)[~nan])

    ref_f = h_in.astype(np.float32)
    nan = np.isnan(ref_f)
    np.testing.assert_array_equal(np.isnan(f_out), nan)
    np.testing.assert_array_equal(f_out.view(np.uint32)[~nan], ref_f.view(np.uint32)[~nan])

    with np.errstate(over="ignore", invalid="ignore"):
        ref_sum = h_in + h_in
    nan = np.isnan(ref_sum)
    np.testing.assert_array_equal(np.isnan(h_sum), nan)
    np.testing.assert_array_equal(h_sum.view(np.uint16)[~nan], ref_sum.view(np.uint16)[~nan])


def test_64bit_scalar_arguments(features):
    out = np.zeros(2, np.int64)
    fout = np.zeros(1)
    a, b = 2**40 + 1, -(2**33)
    c, d = 2**63 + 5, 2**62
    features.get_function("scalars64")(
        1, 1, (out, fout, i64(a), i64(b), np.uint64(c), np.uint64(d), np.float64(1.5e300))
    )
    assert out[0] == a + b
    assert out[1] == np.array(c ^ d, np.uint64).view(np.int64)
    assert fout[0] == 3e300


def test_syncthreads_count_and_or(features):
    out = np.zeros(3, np.int32)
    features.get_function("sync_count")(1, 37, (out,))
    np.testing.assert_array_equal(out, [18, 0, 1])  # 18 odd threads in 0..36


def test_kernel_assert_is_an_error_not_an_abort(features):
    out = np.zeros(8, np.int32)
    with pytest.raises(
        emu.EmulatorError,
        match=r"assertion .* failed at .*features\.cu:\d+.*"
        r"thread \(3,0,0\) of block \(1,0,0\)",
    ):
        features.get_function("kernel_assert")(2, 4, (out,))


def test_unknown_name_expression(features):
    with pytest.raises(KeyError, match="not instantiated"):
        features.get_function("block_sum_static<int, 256>")
    # whitespace differences are tolerated
    assert (
        features.get_function("block_sum_static<float,256>").name == "block_sum_static<float,256>"
    )


# ---------------------------------------------------------------------------------- launch config


def test_empty_grid_is_rejected(bugs):
    x = np.zeros(0, np.float32)
    y = np.zeros(0, np.float32)
    fn = bugs.get_function("scale2")
    with pytest.raises(ValueError, match=r"kernel scale2: grid\.x=0 must be >= 1"):
        fn((0,), (32,), (x, y, i64(0)))
    with pytest.raises(ValueError, match=r"kernel scale2: block\.y=0"):
        fn((1,), (32, 0), (x, y, i64(0)))
    fn((1,), (32,), (x, y, i64(0)))  # zero-size arrays are fine


@pytest.mark.parametrize(
    "grid,block,shared,match",
    [
        (1, 1025, 0, r"block\.x=1025 exceeds the CUDA limit 1024"),
        (1, (32, 32, 2), 0, r"2048 threads"),
        (1, (1, 1, 65), 0, r"block\.z=65 exceeds"),
        ((1, 65536), 1, 0, r"grid\.y=65536 exceeds"),
        (1, 1, 48 * 1024 + 1, r"shared_mem=49153 must be between 0 and 49152"),
    ],
)
def test_launch_limits(bugs, grid, block, shared, match):
    y = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="kernel shared_overrun: .*" + match):
        bugs.get_function("shared_overrun")(grid, block, (y,), shared_mem=shared)


def test_dynamic_shared_opt_in(features):
    fn = features.get_function("block_sum_dynamic<double>")
    x = np.ones(1024)
    out = np.zeros(1)
    with pytest.raises(ValueError, match="shared_mem=65536"):
        fn(1, 1024, (x, out, i64(1024)), shared_mem=65536)
    fn.max_dynamic_shared_size_bytes = 96 * 1024
    try:
        fn(1, 1024, (x, out, i64(1024)), shared_mem=65536)
    finally:
        fn.max_dynamic_shared_size_bytes = 48 * 1024
    assert out[0] == 1024


# ---------------------------------------------------------------------------------- arguments

_X = np.arange(8, dtype=np.float32)


@pytest.mark.parametrize(
    "args,match",
    [
        ((_X, np.zeros(8, np.float32)), r"takes 3 arguments .* got 2"),
        ((_X, np.zeros(8, np.float32), i64(8), i64(0)), r"takes 3 arguments .* got 4"),
        (
            (_X.astype(np.float64), np.zeros(8, np.float32), i64(8)),
            (
                r"parameter 0 \(0-based\): expected .*dtype float32 \(const ptr:f32\), got "
                r"numpy\.ndarray\(dtype=float64"
            ),
        ),
        (
            (_X, np.zeros(8, np.float32), 8),
            r"parameter 2 \(0-based\): expected numpy\.int64 \(i64\), got int",
        ),
        (
            (_X, np.zeros(8, np.float32), np.int32(8)),
            r"parameter 2 \(0-based\): expected numpy\.int64 \(i64\), got numpy\.int32",
        ),
        (
            (_X, np.zeros(16, np.float32)[::2], i64(8)),
            r"parameter 1 \(0-based\): .*not C-contiguous",
        ),
        (
            (list(_X), np.zeros(8, np.float32), i64(8)),
            r"parameter 0 \(0-based\): expected .*numpy\.ndarray.*, got list",
        ),
        (
            (_X, np.zeros(8, np.float32), np.float64(8)),
            r"parameter 2 \(0-based\): expected numpy\.int64 \(i64\), got numpy\.float64",
        ),
    ],
    ids=[
        "too-few",
        "too-many",
        "wrong-dtype",
        "python-int",
        "int32-for-i64",
        "non-contiguous",
        "list-for-pointer",
        "float-for-i64",
    ],
)
def test_argument_checker(bugs, args, match):
    with pytest.raises(TypeError, match=r"kernel scale2.*" + match):
        bugs.get_function("scale2")(1, 8, args)


def test_read_only_array_for_non_const_pointer(bugs):
    y = np.zeros(8, np.float32)
    y.flags.writeable = False
    with pytest.raises(TypeError, match=r"parameter 1 \(0-based\).*read-only"):
        bugs.get_function("scale2")(1, 8, (_X, y, i64(8)))
    x = _X.copy()
    x.flags.writeable = False  # fine for a const pointer
    out = np.zeros(8, np.float32)
    bugs.get_function("scale2")(1, 8, (x, out, i64(8)))
    np.testing.assert_array_equal(out, 2 * _X)


def test_misaligned_complex128_is_rejected(features):
    # complex<double> is alignas(16) in the kernel; NumPy only guarantees 8 for complex128
    raw = np.zeros(64, np.uint8)
    offset = (8 - raw.ctypes.data) % 16
    misaligned = raw[offset : offset + 16].view(np.complex128)
    assert misaligned.ctypes.data % 16 == 8 and misaligned.flags.aligned
    args = (
        np.zeros(14),
        np.int8(0),
        np.uint8(0),
        np.int16(0),
        np.uint16(0),
        np.int32(0),
        np.uint32(0),
        np.int64(0),
        np.uint64(0),
        np.float16(0),
        np.float32(0),
        np.float64(0),
        np.complex64(0),
        np.complex128(0),
        np.bool_(False),
        misaligned,
        np.zeros(1, np.float16),
    )
    with pytest.raises(TypeError, match=r"parameter 15 \(0-based\).*alignment, 16 bytes"):
        features.get_function("all_types")(1, 1, args)


def test_planted_wrong_scalar_type(bugs):
    """(4) np.int32 where the kernel takes long long: caught before anything runs."""
    y = np.zeros(4, np.int64)
    fn = bugs.get_function("add_offset")
    with pytest.raises(
        TypeError,
        match=r"kernel add_offset: parameter 2 \(0-based\): expected "
        r"numpy\.int64 \(i64\), got numpy\.int32",
    ):
        fn(1, 4, (y, i64(4), np.int32(10)))
    assert not y.any()
    fn(1, 4, (y, i64(4), i64(10)))
    np.testing.assert_array_equal(y, [10, 11, 12, 13])


# ---------------------------------------------------------------------------------- checked mode


def test_planted_oob_write_past_end(bugs):
    """(1) y[n] written: caught in checked mode, names the parameter and the byte offset."""
    n = 1000
    y = np.zeros(n, np.float32)
    with (
        emu.checked(),
        pytest.raises(
            emu.OutOfBoundsError,
            match=r"kernel oob_write_past_end: parameter 0 \(ptr:f32\): "
            r"out-of-bounds write at byte offset 4000 \(the first byte "
            r"past the end; element index 1000 .*thread \(232,0,0\) of block "
            r"\(3,0,0\)",
        ),
    ):
        bugs.get_function("oob_write_past_end")(blocks_for(n + 1, 256), 256, (y, i64(n)))


def test_planted_oob_read_before_start(bugs, monkeypatch):
    """(2) x[-1] read: caught in checked mode (switched on by the environment variable)."""
    monkeypatch.setenv("GPUCONV_EMULATE_CHECK", "1")
    n = 100
    x = np.ones(n, np.float32)
    y = np.zeros(n, np.float32)
    with pytest.raises(
        emu.OutOfBoundsError,
        match=r"parameter 0 \(const ptr:f32\): out-of-bounds read at byte offset "
        r"-4 \(4 bytes before the start; element index -1 .*thread "
        r"\(0,0,0\) of block \(0,0,0\)",
    ):
        bugs.get_function("oob_read_before_start")(1, 128, (x, y, i64(n)))


def test_checked_mode_gives_the_unchecked_results(bugs):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(777).astype(np.float32)
    y = np.full(777, -1, np.float32)
    with emu.checked():
        bugs.get_function("scale2")(blocks_for(777, 64), 64, (x, y, i64(777)))
    np.testing.assert_array_equal(y, 2 * x)
    # the same array passed twice stays one array (in-place kernels)
    z = x.copy()
    with emu.checked():
        bugs.get_function("scale2")(blocks_for(777, 64), 64, (z, z, i64(777)))
    np.testing.assert_array_equal(z, 2 * x)
    # zero-size arrays
    e = np.zeros(0, np.float32)
    with emu.checked():
        bugs.get_function("scale2")(1, 64, (e, e.copy(), i64(0)))


def test_checked_mode_guards_dynamic_shared_memory(bugs):
    y = np.zeros(64, np.float32)
    fn = bugs.get_function("shared_overrun")
    with emu.checked():
        fn(1, 64, (y,), shared_mem=64 * 4)  # enough: passes
        np.testing.assert_array_equal(y, np.arange(64))
        with pytest.raises(
            emu.OutOfBoundsError,
            match=r"dynamic shared memory: out-of-bounds write at byte offset 128 "
            r"of the 128-byte buffer",
        ):
            fn(1, 64, (y,), shared_mem=32 * 4)


def test_checked_mode_stack_overflow_is_clean(bugs):
    y = np.ones(1, np.float32)
    with (
        emu.checked(),
        pytest.raises(
            emu.EmulatorError,
            match=r"stack overflow by thread "
            r"\(0,0,0\) of block \(0,0,0\)",
        ),
    ):
        bugs.get_function("stack_overflow")(1, 1, (y, np.int32(100_000)))


# ---------------------------------------------------------------------------------- race check


def test_planted_missing_syncthreads_is_a_race(bugs):
    """(3) tile[t+1] read without a barrier after tile[t] is written: RaceError."""
    rng = np.random.default_rng(6)
    n = 1000
    x = rng.standard_normal(n).astype(np.float32)
    y = np.zeros(n, np.float32)
    with (
        emu.race_check(),
        pytest.raises(
            emu.RaceError,
            match=r"kernel neighbour_sum<false>: parameter 1 \(ptr:f32\) differs bit for bit .* "
            r"first at flat index 0 ",
        ),
    ):
        bugs.get_function("neighbour_sum<false>")(blocks_for(n, 256), 256, (x, y, i64(n)))


def test_with_syncthreads_passes_the_race_check(bugs, monkeypatch):
    monkeypatch.setenv("GPUCONV_EMULATE_RACECHECK", "1")
    rng = np.random.default_rng(6)
    n = 1000
    x = rng.standard_normal(n).astype(np.float32)
    y = np.zeros(n, np.float32)
    bugs.get_function("neighbour_sum<true>")(blocks_for(n, 256), 256, (x, y, i64(n)))
    padded = np.zeros(blocks_for(n, 256) * 256, np.float32)
    padded[:n] = x
    tiles = padded.reshape(-1, 256)
    right = np.concatenate([tiles[:, 1:], np.zeros((tiles.shape[0], 1), np.float32)], axis=1)
    np.testing.assert_array_equal(y, (tiles + right).reshape(-1)[:n])


def test_race_check_catches_conflicting_writes_and_uninitialised_shared(bugs):
    with emu.race_check():
        with pytest.raises(emu.RaceError, match="write_conflict: parameter 0"):
            bugs.get_function("write_conflict")(1, 64, (np.zeros(1, np.int32),))
        with pytest.raises(emu.RaceError, match=r"uninitialised_shared: parameter 0 .*index 1 "):
            bugs.get_function("uninitialised_shared")(1, 128, (np.zeros(128, np.float32),))


def test_race_check_finds_blocks_that_depend_on_each_other(bugs, monkeypatch):
    # The race check's tracked run sees block 1 read y[0], which block 0 wrote (before the
    # track build, the reverse and shuffled block orders found it by a different y[1]).
    y = np.zeros(16, np.float32)
    with (
        emu.race_check(),
        pytest.raises(
            emu.RaceError,
            match=r"inter_block_dependency: parameter 0 \(ptr:f32\), element 0 \(byte offset 0\): "
            r"read by block \(1,0,0\) and written by block \(0,0,0\) in the same launch",
        ),
    ):
        bugs.get_function("inter_block_dependency")(16, 32, (y,))
    with monkeypatch.context() as m:  # blocks in order on one worker: the bug stays hidden
        m.setenv("GPUCONV_EMULATE_THREADS", "1")
        bugs.get_function("inter_block_dependency")(16, 1, (y,))
    np.testing.assert_array_equal(y, np.arange(1, 17))


def test_checked_and_race_check_together(bugs):
    rng = np.random.default_rng(8)
    n = 600
    x = rng.standard_normal(n).astype(np.float32)
    y = np.zeros(n, np.float32)
    with emu.checked(), emu.race_check():
        bugs.get_function("neighbour_sum<true>")(blocks_for(n, 256), 256, (x, y, i64(n)))
        assert y[0] == x[0] + x[1] and y[255] == x[255] and y[256] == x[256] + x[257]
        # an out-of-bounds write is reported by the checked run, not a crash of the race check
        with pytest.raises(emu.OutOfBoundsError, match="oob_write_past_end: parameter 0"):
            bugs.get_function("oob_write_past_end")(1, 64, (np.zeros(63, np.float32), i64(63)))


@pytest.mark.parametrize(
    "name,dtype", [("atomic_total<float>", np.float32), ("atomic_total<double>", np.float64)]
)
def test_race_check_tolerates_float_atomic_rounding(bugs, name, dtype):
    rng = np.random.default_rng(7)
    n = 50_000
    x = rng.standard_normal(n).astype(dtype)  # order-dependent rounding
    y = np.zeros(1, dtype)
    before = emu.stats()["float_atomics"]
    with emu.race_check():
        bugs.get_function(name)(blocks_for(n, 256), 256, (x, y, i64(n)))
    assert emu.stats()["float_atomics"] - before == 4 * n  # the race check runs it 4 times
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(y[0], x.astype(np.float64).sum(), rtol=rtol, atol=rtol * n)


# ---------------------------------------------------------------------------------- barriers


def test_planted_divergent_barrier(bugs):
    """(5) `if (threadIdx.x < 5) __syncthreads();` raises instead of hanging."""
    y = np.zeros(32, np.float32)
    with pytest.raises(
        emu.DivergentBarrierError,
        match=r"kernel divergent_barrier: divergent __syncthreads\(\) in block "
        r"\(0,0,0\): 5 of 32 threads wait at barrier #1",
    ):
        run_with_deadline(lambda: bugs.get_function("divergent_barrier")(1, 32, (y,)))


def test_early_return_before_barrier(bugs):
    y = np.zeros(64, np.float32)
    with pytest.raises(
        emu.DivergentBarrierError,
        match=r"thread \(0,0,0\)\) while|have returned "
        r"\(e\.g\. thread \(0,0,0\)\)",
    ):
        run_with_deadline(lambda: bugs.get_function("early_return_barrier")(4, 64, (y, i64(64))))


# ---------------------------------------------------------------------------------- build


def test_compile_error_names_the_cu_file_and_line():
    with pytest.raises(
        emu.EmulatorCompileError, match=r"compile_error\.cu:7:\d+: error: .*undeclared_identifier"
    ):
        emu.load_module(KDIR / "compile_error.cu", ["broken"])


def test_bad_name_expressions():
    with pytest.raises(TypeError, match="single string"):
        emu.load_module(KDIR / "features.cu", "sync_count")
    with pytest.raises(ValueError, match=r"name_expressions\[0\]"):
        emu.load_module(KDIR / "features.cu", ["sync_count; int x"])


def _copy_kernel(tmp_path, sub=False):
    shutil.copy(KDIR / "emu_test.cuh", tmp_path)
    if sub:
        (tmp_path / "sub").mkdir()
        shutil.copy(KDIR / "with_header.cuh", tmp_path / "sub")
        shutil.copy(KDIR / "with_subdir_header.cu", tmp_path)
        return tmp_path / "with_subdir_header.cu", tmp_path / "sub" / "with_header.cuh"
    shutil.copy(KDIR / "with_header.cu", tmp_path)
    shutil.copy(KDIR / "with_header.cuh", tmp_path)
    return tmp_path / "with_header.cu", tmp_path / "with_header.cuh"


def _header_value(source):
    y = np.zeros(4, np.int32)
    emu.load_module(source, ["header_value"]).get_function("header_value")(1, 4, (y,))
    return int(y[0])


@pytest.mark.parametrize("sub", [False, True], ids=["same-dir-header", "subdir-header"])
def test_disk_cache_key_follows_included_headers(tmp_path, monkeypatch, sub):
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path / "cache"))
    source, header = _copy_kernel(tmp_path, sub)
    assert _header_value(source) == 1
    first = emu.load_module(source, ["header_value"]).library_path
    header.write_text(header.read_text().replace("EMU_TEST_VALUE 1", "EMU_TEST_VALUE 2"))
    assert _header_value(source) == 2
    second = emu.load_module(source, ["header_value"]).library_path
    assert second != first
    # unchanged sources: the cached library is reused, not rebuilt
    mtime = pathlib.Path(second).stat().st_mtime_ns
    start = time.perf_counter()
    assert emu.load_module(source, ["header_value"]).library_path == second
    assert pathlib.Path(second).stat().st_mtime_ns == mtime
    assert time.perf_counter() - start < 1.0


def test_test_kernels_are_valid_cuda(tmp_path):
    """The kernels above compile with nvcc too (to PTX; no GPU needed)."""
    nvcc = shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if pathlib.Path("/usr/local/cuda/bin/nvcc").exists() else None
    )
    if nvcc is None:
        pytest.skip("nvcc not found")
    proc = subprocess.run(
        [
            nvcc,
            "--ptx",
            "-arch=sm_80",
            "-std=c++17",
            str(KDIR / "nvcc_check.cu"),
            "-o",
            str(tmp_path / "check.ptx"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    ptx = (tmp_path / "check.ptx").read_text()
    assert ptx.count(".entry") == len(set(FEATURES + BUGS)) + 1  # + header_value
