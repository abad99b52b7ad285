"""The emulator's track build (gpuconv/_emulator/track.h, _track.py).

* race_check(): a lost update between blocks (a plain ``+=`` where an ``atomicAdd`` belongs)
  and a read of an element that another block writes in the same launch are caught, naming the
  kernel, the parameter and the element; their fixed twins pass. The emulator runs one block
  at a time, so without the track build the first bug gives the right numbers by luck.
* counters(): sectors per global request, wavefronts per shared request, ldmatrix and cp.async
  bytes, on planted kernels whose figures follow from their addresses. The expected numbers
  come from small NumPy models of the hardware rules written here, not from the emulator.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from gpuconv import _emulator as emu

pytestmark = pytest.mark.skipif(not emu.available(), reason="no C++ compiler for the emulator")

SOURCE = pathlib.Path(__file__).parent / "emu_kernels" / "tracked.cu"
NAMES = [
    "sum_plain",
    "sum_atomic",
    "neighbour_read",
    "neighbour_recompute",
    "strided_copy",
    "transpose_tile<0>",
    "transpose_tile<1>",
    "ldmatrix_rows<32>",
    "ldmatrix_rows<48>",
    "async_copy",
    "async_copy_half_zero",
]


@pytest.fixture(scope="module")
def mod():
    return emu.load_module(SOURCE, NAMES)


# ------------------------------------------------------------------------- race_check


def _sum_args(n=300, m=7):
    x = np.arange(n, dtype=np.float32)
    expected = np.zeros(m, np.float64)
    np.add.at(expected, np.arange(n) % m, x)
    return x, np.zeros(m, np.float32), np.int32(n), np.int32(m), expected


def test_lost_update_between_blocks_is_caught(mod):
    x, y, n, m, expected = _sum_args()
    # without the race check, the numbers agree by luck: blocks run one at a time
    mod.get_function("sum_plain")((3,), (128,), (x, y, n, m))
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    x, y, n, m, _ = _sum_args()
    with emu.race_check(), pytest.raises(
        emu.RaceError,
        match=r"kernel sum_plain: parameter 1 \(ptr:f32\), element \d \(byte offset \d+\): "
        r"written by block \(1,0,0\) and by block \(0,0,0\), not all of the writes atomic: "
        r"a lost update",
    ):
        mod.get_function("sum_plain")((3,), (128,), (x, y, n, m))


def test_atomic_twin_passes_the_race_check(mod):
    x, y, n, m, expected = _sum_args()
    with emu.race_check():
        mod.get_function("sum_atomic")((3,), (128,), (x, y, n, m))
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_one_block_may_update_its_own_elements(mod):
    # a single block: the plain += is not a race between blocks (threads of one block run
    # one after another in the emulator, and the order-based check covers them)
    x, y, n, m, expected = _sum_args(n=100, m=128)
    with emu.race_check():
        mod.get_function("sum_plain")((1,), (128,), (x, y, n, m))
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_cross_block_read_after_write_is_caught(mod):
    y, z = np.zeros(4, np.float32), np.zeros(4, np.float32)
    with emu.race_check(), pytest.raises(
        emu.RaceError,
        match=r"kernel neighbour_read: parameter 0 \(ptr:f32\), element 0 \(byte offset 0\): "
        r"read by block \(1,0,0\) and written by block \(0,0,0\) in the same launch",
    ):
        mod.get_function("neighbour_read")((4,), (32,), (y, z))
    y, z = np.zeros(4, np.float32), np.zeros(4, np.float32)
    with emu.race_check():
        mod.get_function("neighbour_recompute")((4,), (32,), (y, z))
    np.testing.assert_array_equal(z, [0, 0, 1, 2])
    np.testing.assert_array_equal(y, [0, 1, 2, 3])


# ------------------------------------------------------------------------- counters


def _sectors(byte_addresses) -> int:
    return len({int(a) // 32 for a in byte_addresses})


def _wavefronts(word_addresses) -> int:
    """Shared memory, one phase: the most distinct 4-byte words that fall into one bank."""
    banks: dict[int, set] = {}
    for w in word_addresses:
        banks.setdefault(int(w) % 32, set()).add(int(w))
    return max(len(s) for s in banks.values())


@pytest.mark.parametrize("stride", [1, 2, 3, 8, 32])
def test_global_sectors_per_request_of_a_strided_load(mod, stride):
    warps = 2
    x = np.arange(32 * warps * stride, dtype=np.float32)
    y = np.zeros(32 * warps, np.float32)
    with emu.counters() as c:
        mod.get_function("strided_copy")((warps,), (32,), (x, y, np.int32(stride)))
    np.testing.assert_array_equal(y, x[::stride])  # counting runs the launch for real
    k = c["strided_copy"]
    assert k.launches == 1
    lanes = np.arange(32)
    want_load = [_sectors([4 * (32 * w + t) * stride + b for t in lanes for b in range(4)])
                 for w in range(warps)]
    assert k.total("global", "load")[:2] == (warps, sum(want_load))
    assert k.per_request("global", "store") == 4.0  # 32 consecutive floats: 128 bytes
    assert k.efficiency("global", "store") == 1.0
    assert k.per_request("global", "load") == pytest.approx(sum(want_load) / warps)
    # the site is named by the kernel's source line
    (site,) = {s.site for s in k.sites.values() if s.kind == "load"}
    line = next(i for i, text in enumerate(SOURCE.read_text().splitlines(), 1)
                if "y[t] = x[t * stride];" in text)
    assert site == f"tracked.cu:{line}"


@pytest.mark.parametrize("pad", [0, 1])
def test_shared_bank_conflicts_of_a_column_read(mod, pad):
    x = np.arange(1024, dtype=np.float32)
    y = np.zeros(1024, np.float32)
    with emu.counters() as c:
        mod.get_function(f"transpose_tile<{pad}>")((1,), (128,), (x, y))
    np.testing.assert_array_equal(y.reshape(32, 32), x.reshape(32, 32).T)
    k = c[f"transpose_tile<{pad}>"]
    row_len = 32 + pad
    # 4 warps x 8 rows each; the column read of row r: lane l reads tile[l][r]
    reads = [_wavefronts([lane * row_len + r for lane in range(32)]) for r in range(32)]
    writes = [_wavefronts([r * row_len + lane for lane in range(32)]) for r in range(32)]
    assert k.total("shared", "load")[:3] == (32, sum(reads), 32)
    assert k.total("shared", "store")[:3] == (32, sum(writes), 32)
    assert k.per_request("shared", "load") == (32.0 if pad == 0 else 1.0)


@pytest.mark.parametrize("row_bytes", [32, 48])
def test_ldmatrix_wavefronts_and_bytes(mod, row_bytes):
    src = np.arange(16 * row_bytes // 2, dtype=np.uint16)
    out = np.zeros(128, np.uint32)
    with emu.counters() as c:
        mod.get_function(f"ldmatrix_rows<{row_bytes}>")((1,), (32,), (src, out))
    k = c[f"ldmatrix_rows<{row_bytes}>"]
    requests, units, ideal, nbytes = k.total("shared", "ldmatrix")
    # matrix j: lanes 8j..8j+7 give the rows; lane l -> row (l & 15), column half (l >> 4)
    want = 0
    for j in range(4):
        words = []
        for lane in range(8 * j, 8 * j + 8):
            start = (lane & 15) * row_bytes + (lane >> 4) * 16
            words += [start // 4 + i for i in range(4)]
        want += _wavefronts(words)
    assert (requests, units, ideal, nbytes) == (1, want, 4, 512)
    assert want == (8 if row_bytes == 32 else 4)


def test_cp_async_bytes_and_requests(mod):
    x = np.arange(256, dtype=np.float32)
    y = np.zeros(256, np.float32)
    with emu.counters() as c:
        mod.get_function("async_copy")((1,), (64,), (x, y))
    np.testing.assert_array_equal(y, x)
    k = c["async_copy"]
    # 64 threads x 16 bytes, two warps: each warp's 512 contiguous bytes are 16 sectors
    assert k.total("global", "cp.async.load") == (2, 32, 32, 1024)
    # the shared side: 16-byte accesses are served 8 lanes per phase, 4 phases per request
    assert k.total("shared", "cp.async.store") == (2, 8, 8, 1024)


def test_cp_async_zero_fill_lanes_stay_in_one_request(mod):
    # lanes that zero-fill (no global read) and lanes that copy meet in one warp request
    x = np.arange(256, dtype=np.float32)
    y = np.zeros(256, np.float32)
    with emu.counters() as c:
        mod.get_function("async_copy_half_zero")((1,), (64,), (x, y))
    want = x.copy().reshape(64, 4)
    want[1::2] = 0
    np.testing.assert_array_equal(y, want.reshape(-1))
    k = c["async_copy_half_zero"]
    assert k.total("shared", "cp.async.store")[:2] == (2, 8)  # one request per warp
    requests, sectors, _, nbytes = k.total("global", "cp.async.load")
    assert (requests, nbytes) == (2, 512)  # even lanes only: 16 x 16 bytes per warp
    assert sectors == 2 * 16  # each 16-byte read in its own half of a 32-byte sector pair


def test_counters_accumulate_launches_and_tabulate(mod):
    x = np.arange(64, dtype=np.float32)
    with emu.counters() as c:
        for _ in range(3):
            mod.get_function("strided_copy")((2,), (32,), (x, np.zeros(64, np.float32),
                                                           np.int32(1)))
    assert c["strided_copy"].launches == 3
    assert c["strided_copy"].total("global", "load")[:2] == (6, 24)
    table = c.table()
    assert "strided_copy" in table and "4.00" in table
    # outside the block nothing is counted
    mod.get_function("strided_copy")((2,), (32,), (x, np.zeros(64, np.float32), np.int32(1)))
    assert c["strided_copy"].launches == 3


def test_counters_on_a_real_kernel_through_the_public_api():
    import gpuconv

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    with gpuconv.use_backend("emulate"), emu.counters() as c:
        got = gpuconv.depthwise_conv(x, w, padding=1)
    with gpuconv.use_backend("numpy"):
        want = gpuconv.depthwise_conv(x, w, padding=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert c.kernels, "no kernel was counted"
    for k in c.kernels.values():
        assert k.total("global", "load")[0] > 0 or k.total("global", "cp.async.load")[0] > 0
