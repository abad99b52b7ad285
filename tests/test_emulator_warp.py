"""Warp collectives on the CPU emulator: each intrinsic against a NumPy model, and the planted
warp bugs (divergent shuffle, early return before a shuffle, missing __syncwarp before shared
memory is reused) with their fixed twins.

The NumPy models below are written from the CUDA Programming Guide's description of each
intrinsic ("Warp Shuffle Functions", "Warp Vote Functions"), not from the emulator's code,
which follows the PTX ISA's pseudo-code for shfl.sync instead.
"""

from __future__ import annotations

import pathlib
import time

import numpy as np
import pytest
from kernel_helpers import EMU_KERNELS, emulator_or_skip

emu = emulator_or_skip()
KDIR = EMU_KERNELS
NAMES = [
    "shfl_kernel<int>",
    "shfl_kernel<double>",
    "vote_kernel",
    "activemask_branch",
    "warp_allreduce",
    "divergent_shuffle",
    "convergent_shuffle",
    "early_return_shuffle",
    "warp_reuse<false>",
    "warp_reuse<true>",
    "warp_handoff<false>",
    "warp_handoff<true>",
    "shfl_rounds",
    "mask_mismatch",
    "barrier_vs_shuffle",
    "spin_on_vote",
]
MODES = {"idx": 0, "up": 1, "down": 2, "xor": 3}
FULL = 0xFFFFFFFF


@pytest.fixture(scope="module")
def mod():
    return emu.load_module(KDIR / "warp.cu", NAMES)


def model_source(mode, lane, arg, width):
    """Source lane of `lane` per the CUDA Programming Guide (width a power of two)."""
    start = (lane // width) * width  # first lane of the lane's width-segment
    if mode == "idx":
        return start + arg % width
    if mode == "up":  # lanes below the delta keep their own value
        return lane - arg if lane - start >= arg else lane
    if mode == "down":  # lanes whose source is past the segment keep their own value
        return lane + arg if lane - start + arg < width else lane
    # xor: reading from a later segment returns the lane's own value; earlier ones are allowed
    src = lane ^ arg
    return src if src < start + width else lane


def model_shfl(mode, values, args, width, nthreads):
    out = np.empty_like(values)
    for g in range(values.size):
        warp0 = (g // 32) * 32
        lane = g % 32
        out[g] = values[warp0 + model_source(mode, lane, int(args[g]), width)]
    return out


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("width", [1, 2, 4, 8, 16, 32])
def test_shfl_every_offset_and_width(mod, mode, width):
    """Block b uses offset b for every lane: all 32 offsets at once, 3 warps per block."""
    nthreads, nblocks = 96, 32
    n = nthreads * nblocks
    values = np.arange(n, dtype=np.int32) * 7 + 3
    args = np.repeat(np.arange(nblocks, dtype=np.int32), nthreads)
    out = np.full(n, -1, np.int32)
    mod.get_function("shfl_kernel<int>")(
        (nblocks,),
        (nthreads,),
        (values, args, out, np.int32(MODES[mode]), np.int32(width), np.uint32(FULL)),
    )
    np.testing.assert_array_equal(out, model_shfl(mode, values, args, width, nthreads))


@pytest.mark.parametrize("mode", list(MODES))
def test_shfl_per_lane_arguments_and_64bit_values(mod, mode):
    """Each lane has its own srcLane/delta/laneMask (random), values are doubles."""
    rng = np.random.default_rng(MODES[mode])
    n = 64 * 4
    values = rng.standard_normal(n)
    args = rng.integers(0, 32, n).astype(np.int32)
    for width in (32, 8):
        out = np.zeros(n)
        mod.get_function("shfl_kernel<double>")(
            (4,),
            (64,),
            (values, args, out, np.int32(MODES[mode]), np.int32(width), np.uint32(FULL)),
        )
        np.testing.assert_array_equal(out, model_shfl(mode, values, args, width, 64))


@pytest.mark.parametrize("mask", [0x0000FFFF, 0xFFFF0000, 0x0F0F0F0F])
def test_shfl_partial_mask(mod, mask):
    """Only the lanes in the mask take part; each reads a lane that is in the mask."""
    lanes = [lane for lane in range(32) if (mask >> lane) & 1]
    values = np.arange(32, dtype=np.int32) + 100
    args = np.zeros(32, np.int32)
    for i, lane in enumerate(lanes):  # srcLane: the next lane of the mask, cyclically
        args[lane] = lanes[(i + 1) % len(lanes)]
    out = np.full(32, -1, np.int32)
    mod.get_function("shfl_kernel<int>")(
        (1,), (32,), (values, args, out, np.int32(0), np.int32(32), np.uint32(mask))
    )
    expected = np.full(32, -1, np.int32)
    for lane in lanes:
        expected[lane] = values[args[lane]]
    np.testing.assert_array_equal(out, expected)


def test_shfl_from_a_lane_outside_the_mask_is_an_error(mod):
    values = np.arange(32, dtype=np.int32)
    args = np.full(32, 20, np.int32)  # lane 20 is not in the mask
    out = np.zeros(32, np.int32)
    with pytest.raises(emu.EmulatorError, match=r"reads lane 20, which is not in the mask"):
        mod.get_function("shfl_kernel<int>")(
            (1,), (32,), (values, args, out, np.int32(0), np.int32(32), np.uint32(0xFFFF))
        )


def test_shfl_bad_width_is_an_error(mod):
    z = np.zeros(32, np.int32)
    with pytest.raises(emu.EmulatorError, match="power of two"):
        mod.get_function("shfl_kernel<int>")(
            (1,), (32,), (z, z, z.copy(), np.int32(0), np.int32(12), np.uint32(FULL))
        )


@pytest.mark.parametrize("mask", [FULL, 0x0000FFFF, 0xAAAAAAAA, 0x00000001])
def test_votes(mod, mask):
    rng = np.random.default_rng(mask & 0xFFFF)
    nthreads, nblocks = 64, 3
    n = nthreads * nblocks
    pred = rng.integers(0, 2, n).astype(np.int32)
    pred[:32] = 1  # warp 0 of block 0: all true
    pred[32:64] = 0  # warp 1: all false
    out = np.zeros(4 * n, np.uint32)
    mod.get_function("vote_kernel")((nblocks,), (nthreads,), (pred, out, np.uint32(mask)))
    out = out.reshape(n, 4)
    for g in range(n):
        lane, warp0 = g % 32, (g // 32) * 32
        if not (mask >> lane) & 1:
            assert not out[g].any()
            continue
        ballot = sum(1 << j for j in range(32) if (mask >> j) & 1 and pred[warp0 + j])
        assert out[g, 0] == ballot
        assert out[g, 1] == (ballot != 0)
        assert out[g, 2] == (ballot == mask)
        assert out[g, 3] == mask  # every lane in the mask reached the same __activemask()


@pytest.mark.parametrize("nthreads", [32, 48, 100])
def test_activemask_in_a_branch(mod, nthreads):
    rng = np.random.default_rng(nthreads)
    pred = rng.integers(0, 2, 2 * nthreads).astype(np.int32)
    out = np.full(2 * nthreads, 7, np.uint32)
    mod.get_function("activemask_branch")((2,), (nthreads,), (pred, out))
    for g in range(2 * nthreads):
        b, t = divmod(g, nthreads)
        warp0 = b * nthreads + (t // 32) * 32
        warp_end = min(warp0 + 32, (b + 1) * nthreads)
        taken = sum(1 << (j - warp0) for j in range(warp0, warp_end) if pred[j])
        assert out[g] == (taken if pred[g] else 0), g


def test_warp_allreduce_race_checked(mod):
    x = np.random.default_rng(0).integers(-50, 50, 128).astype(np.float32)
    out = np.zeros_like(x)
    with emu.race_check():
        mod.get_function("warp_allreduce")((2,), (64,), (x, out))
    np.testing.assert_array_equal(out, np.repeat(x.reshape(4, 32).sum(axis=1), 32))


def test_planted_divergent_shuffle(mod):
    x = np.arange(64, dtype=np.float32)
    out = np.zeros_like(x)
    with pytest.raises(emu.DivergentBarrierError) as info:
        mod.get_function("divergent_shuffle")((1,), (64,), (x, out))
    msg = str(info.value)
    assert "kernel divergent_shuffle" in msg
    assert "__shfl_down_sync at " in msg and "warp.cu:66" in msg
    assert "lanes 0-15 arrived; lanes 16-31 have returned" in msg


def test_fixed_convergent_shuffle(mod):
    x = np.arange(64, dtype=np.float32)
    out = np.zeros_like(x)
    with emu.race_check():
        mod.get_function("convergent_shuffle")((1,), (64,), (x, out))
    lane = np.arange(64) % 32
    expected = np.where(lane < 16, x + 1, x)  # lane < 16 reads lane + 1 of the same warp
    np.testing.assert_array_equal(out, expected)


def test_planted_early_return_before_shuffle(mod):
    x = np.arange(32, dtype=np.float32)
    with pytest.raises(
        emu.DivergentBarrierError,
        match=r"__shfl_xor_sync at .*warp\.cu:\d+ "
        r"\(mask 0xffffffff\).*lanes 0-4,6-31 arrived; lanes 5 have returned",
    ):
        mod.get_function("early_return_shuffle")((1,), (32,), (x, np.zeros_like(x)))


def model_warp_reuse(x, rounds):
    v = x.reshape(-1, 32).astype(np.float32)
    for _ in range(rounds):
        v = v + np.roll(v, -1, axis=1)
    return v.reshape(-1)


def test_planted_missing_syncwarp_before_reuse(mod):
    x = np.random.default_rng(1).integers(-8, 8, 64).astype(np.float32)
    out = np.zeros_like(x)
    with pytest.raises(emu.RaceError, match="warp_reuse<false>"), emu.race_check():
        mod.get_function("warp_reuse<false>")((2,), (32,), (x, out, np.int32(3)))


def test_fixed_syncwarp_before_reuse(mod):
    x = np.random.default_rng(1).integers(-8, 8, 64).astype(np.float32)
    out = np.zeros_like(x)
    with emu.race_check():
        mod.get_function("warp_reuse<true>")((2,), (32,), (x, out, np.int32(3)))
    np.testing.assert_array_equal(out, model_warp_reuse(x, 3))


def test_planted_missing_barrier_between_warps(mod):
    """A warp overwrites shared memory that the other warp has yet to read, with only a
    __syncwarp() between: the warps advancing together hide it (the plain run gives the
    intended result), the race check's warp-serial run does not."""
    x = np.arange(128, dtype=np.float32)
    out = np.zeros_like(x)
    mod.get_function("warp_handoff<false>")((2,), (64,), (x, out))
    expected = 3 * np.roll(x.reshape(2, 64), -32, axis=1).reshape(-1)
    np.testing.assert_array_equal(out, expected)  # hidden by the lockstep schedule
    with pytest.raises(emu.RaceError, match=r"warp_handoff<false>.*warp-serial"), \
            emu.race_check():
        mod.get_function("warp_handoff<false>")((2,), (64,), (x, np.zeros_like(x)))


def test_fixed_barrier_between_warps(mod):
    x = np.arange(128, dtype=np.float32)
    out = np.zeros_like(x)
    with emu.race_check():
        mod.get_function("warp_handoff<true>")((2,), (64,), (x, out))
    np.testing.assert_array_equal(out, 3 * np.roll(x.reshape(2, 64), -32, axis=1).reshape(-1))


def test_cost_per_collective(mod, capsys):
    """Times __shfl_sync rounds on full warps in CPU time of the process (all worker threads:
    robust to a loaded machine); the figure is printed, not asserted."""
    iters, nblocks, nthreads = 200, 8, 128
    out = np.zeros(nblocks * nthreads, np.float32)
    fn = mod.get_function("shfl_rounds")
    fn((nblocks,), (nthreads,), (out, np.int32(1)))  # warm up
    t0 = time.process_time()
    fn((nblocks,), (nthreads,), (out, np.int32(iters)))
    elapsed = time.process_time() - t0
    rounds = iters * nblocks * nthreads // 32
    with capsys.disabled():
        print(
            f"\nemulator: {elapsed / rounds * 1e9:.0f} ns CPU time per 32-lane __shfl_sync "
            f"round ({elapsed / rounds / 32 * 1e9:.0f} ns per lane)"
        )
    expected = (np.arange(nthreads) + iters) % 32  # each round reads lane + 1
    np.testing.assert_array_equal(
        out.reshape(nblocks, nthreads) % 32, np.broadcast_to(expected, (nblocks, nthreads))
    )


def test_warp_kernels_are_valid_cuda(tmp_path):
    """warp.cu compiles with nvcc too (to PTX; no GPU needed): the emulator is only tested on
    code that real CUDA accepts."""
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if pathlib.Path("/usr/local/cuda/bin/nvcc").exists() else None
    )
    if nvcc is None:
        pytest.skip("nvcc not found")
    src = tmp_path / "check.cu"
    src.write_text(
        f'#include "{KDIR / "warp.cu"}"\n'
        "template __global__ void shfl_kernel<int>(const int*, const int*, int*, int, int, unsigned);\n"
        "template __global__ void shfl_kernel<double>(const double*, const int*, double*, int, int,"
        " unsigned);\n"
        "template __global__ void warp_reuse<false>(const float*, float*, int);\n"
        "template __global__ void warp_reuse<true>(const float*, float*, int);\n"
        "template __global__ void warp_handoff<false>(const float*, float*);\n"
        "template __global__ void warp_handoff<true>(const float*, float*);\n"
    )
    proc = subprocess.run(
        [
            nvcc,
            "--ptx",
            "-arch=sm_80",
            "-std=c++17",
            f"-I{KDIR}",
            str(src),
            "-o",
            str(tmp_path / "check.ptx"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    ptx = (tmp_path / "check.ptx").read_text()
    assert ptx.count(".entry") == len(NAMES)
    assert "shfl.sync.bfly" in ptx and "vote.sync.ballot" in ptx


def test_full_mask_in_a_partial_warp_is_an_error(mod):
    """A block of 48 threads: warp 1 has lanes 0-15 only, so 0xffffffff names missing lanes."""
    z = np.zeros(48, np.int32)
    with pytest.raises(
        emu.DivergentBarrierError,
        match=r"warp 1 \(threads 32-47\): the mask names lanes 16-31 that do not "
        r"exist \(the block has 48 threads\)",
    ):
        mod.get_function("shfl_kernel<int>")(
            (1,), (48,), (z, z, z.copy(), np.int32(2), np.int32(32), np.uint32(FULL))
        )


def test_lanes_with_overlapping_masks_at_one_site_is_an_error(mod):
    x = np.arange(32, dtype=np.float32)
    with pytest.raises(
        emu.DivergentBarrierError,
        match=r"__shfl_sync at .*warp\.cu:\d+ \(mask 0xffffffff\).*lanes 16-31 "
        r"arrived; lanes 0-15 wait at __shfl_sync at .*\(mask 0x0000ffff\)",
    ):
        mod.get_function("mask_mismatch")((1,), (32,), (x, np.zeros_like(x)))


def test_lanes_at_syncthreads_while_others_shuffle_is_an_error(mod):
    x = np.arange(32, dtype=np.float32)
    with pytest.raises(
        emu.DivergentBarrierError,
        match=r"__shfl_xor_sync .*lanes 16-31 arrived; lanes 0-15 wait at "
        r"__syncthreads\(\)",
    ):
        mod.get_function("barrier_vs_shuffle")((1,), (32,), (x, np.zeros_like(x)))


def test_warp_collectives_in_checked_mode(mod):
    """The checked (guard-page, subprocess) launch runs the same rendezvous."""
    x = np.arange(64, dtype=np.float32)
    out = np.zeros_like(x)
    with emu.checked():
        mod.get_function("warp_allreduce")((1,), (64,), (x, out))
    np.testing.assert_array_equal(out, np.repeat(x.reshape(2, 32).sum(axis=1), 32))


def test_interrupt_stops_a_warp_spinning_on_collectives(mod):
    """Ctrl-C during a launch whose warp votes forever: the cancel flag is checked between
    rendezvous passes, so the launch stops (KeyboardInterrupt) instead of running on. In a
    subprocess, so that a failure is a timeout, not a hung test run."""
    import subprocess
    import sys

    script = f"""
import _thread, threading, time, numpy as np, gpuconv._emulator as emu
mod = emu.load_module({str(KDIR / "warp.cu")!r}, {NAMES!r})
threading.Timer(0.5, _thread.interrupt_main).start()
t0 = time.monotonic()
try:
    mod.get_function("spin_on_vote")((1,), (64,), (np.zeros(1, np.int32),))
except KeyboardInterrupt:
    print("interrupted after", time.monotonic() - t0)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert "interrupted after" in proc.stdout, proc.stdout + proc.stderr
    assert float(proc.stdout.split()[-1]) < 5.0
