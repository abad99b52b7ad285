"""The conv and depthwise kernels (kernels/conv.cu, kernels/depthwise.cu) on the emulator.

Every kernel (``conv_tiled``, ``conv_direct``, ``depthwise_tiled``) and the 1x1 GEMM path are run
through :mod:`gpuconv.backends.device._conv` with the method forced, on random odd sizes, for
float16/float32/float64, every padding mode and 1-D/2-D/3-D, plainly, under
``gpuconv._emulator.checked()`` (out-of-bounds detection) and under ``race_check()`` (thread
order permutations), and with the int64 index instantiations forced.

Reference: the NumPy backend (``numpy.pad`` + ``sliding_window_view`` + BLAS; it shares no code
with the kernels) evaluated in float64 on the same inputs. Tolerance: the forward-error bound of
an m-term dot product, ``(m + 3) * u_acc * (|x| * |w| + |b|)`` per output element (``|x| * |w|``
is the same convolution of the absolute values, also in float64; ``u_acc`` the unit roundoff of
the accumulator: float32 for float16), plus the final rounding to float16 -- independent of the
code under test, and tight enough that a wrong tap, offset, channel or padding index fails by
orders of magnitude.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from kernel_helpers import (
    DTYPES,
    FORWARD_CASES,
    FORWARD_CASES_TINY,
    MODES,
    RANKS,
    REFERENCE,
    assert_within,
    random_conv_case,
    stand_in_cupy,
)

import gpuconv
from gpuconv._shapes import conv_geometry


@pytest.fixture(scope="module")
def conv_module():
    from gpuconv.backends.device import _conv

    return _conv


# ----------------------------------------------------------------------------- cases


def make_arrays(rng, x_shape, w_shape, dtype, *, bias=True):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    return x, w, b


def assert_close(got, x, w, b, geom, *, depthwise: bool, matmul: bool = False):
    """``got`` within the forward-error bound of the float64 NumPy reference: an m-term dot
    product, ``(m + 3) * u_acc * scale``, plus for float16 the final rounding(s) to float16
    (twice on the matmul path: product, then + bias)."""
    op = REFERENCE.depthwise_conv if depthwise else REFERENCE.conv
    wide = [a.astype(np.float64) if a is not None else None for a in (x, w, b)]
    exact = op(*wide, geom)
    scale = op(np.abs(wide[0]), np.abs(wide[1]), None, geom)
    if b is not None:
        scale = scale + np.abs(wide[2]).reshape((1, -1) + (1,) * geom.ndim)
    terms = w.shape[1] * math.prod(geom.kernel)
    to_half = (2 if matmul else 1) if np.dtype(x.dtype) == np.float16 else 0
    assert_within(got, exact, scale, x.dtype, terms, extra_terms=3, scaled_out=to_half,
                  out_roundings=to_half)


def run_case(emulate, conv_module, rng, rank, mode, dtype, *, kernel: str, tiny=False,
             index=None, bias=True):
    """One random case through one forced kernel: "tiled"/"direct" (conv), "depthwise"/
    "depthwise_direct" (depthwise_conv)."""
    depthwise = kernel.startswith("depthwise")
    space = FORWARD_CASES_TINY if tiny else FORWARD_CASES
    x_shape, w_shape, kw = random_conv_case(rng, rank, mode, space, depthwise=depthwise)
    geom = conv_geometry(x_shape[2:], w_shape[2:], **kw)
    x, w, b = make_arrays(rng, x_shape, w_shape, dtype, bias=bias)
    if depthwise:
        method = "direct" if kernel == "depthwise_direct" else "tiled"
        got = conv_module.depthwise_conv(emulate, x, w, b, geom, method=method, index=index)
    else:
        got = conv_module.conv(emulate, x, w, b, geom, method=kernel, index=index)
    assert_close(got, x, w, b, geom, depthwise=depthwise)


KERNELS = ["tiled", "direct", "depthwise", "depthwise_direct"]


# ----------------------------------------------------------------------------- every kernel


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_numpy(emulate, conv_module, monkeypatch, kernel, rank, mode, dtype):
    seed = zlib.crc32(f"{kernel} {rank} {mode} {np.dtype(dtype).name}".encode())
    rng = np.random.default_rng([seed, 7])
    run_case(emulate, conv_module, rng, rank, mode, dtype, kernel=kernel, bias=True)
    # conv_tiled: several output-channel blocks per thread block (blockDim.z > 1)
    monkeypatch.setattr(conv_module, "FILL_BLOCKS", 1)
    run_case(emulate, conv_module, rng, rank, mode, dtype, kernel=kernel, bias=False)


# how each check varies the cases: the seed's last part and the step through MODES
CHECK_CASES = {"checked": (11, 1), "race_check": (13, 2)}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_under_emulator_check(emulate, conv_module, monkeypatch, emulator_check, kernel,
                                     dtype):
    """checked: guard pages around every array, so no kernel reads or writes out of bounds.
    race_check: results do not depend on thread/block order or on stale shared memory; one
    channel or filter per pass and at most 2 blocks, so every barrier between passes and tasks
    matters."""
    if not emulator_check.checked:
        monkeypatch.setattr(conv_module, "SHARED_TARGET_BYTES", 1)
        monkeypatch.setattr(conv_module, "MAX_BLOCKS", 2)
    monkeypatch.setattr(conv_module, "FILL_BLOCKS", 1)
    seed, mode_step = CHECK_CASES[emulator_check.name]
    rng = np.random.default_rng([KERNELS.index(kernel), DTYPES.index(dtype), seed])
    with emulator_check():
        for rank in RANKS:
            mode = MODES[(rank + mode_step * DTYPES.index(dtype)) % 4]
            run_case(emulate, conv_module, rng, rank, mode, dtype, kernel=kernel, tiny=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_int64_index_instantiations(emulate, conv_module, kernel, mode):
    """The ``long long`` index instantiations (real > 2**31 tensors do not fit here)."""
    rng = np.random.default_rng([KERNELS.index(kernel), MODES.index(mode), 17])
    dtype = [np.float32, np.float16, np.float64, np.float32][MODES.index(mode)]
    run_case(emulate, conv_module, rng, 2 + MODES.index(mode) % 2, mode, dtype, kernel=kernel,
             index=np.int64)


def test_int64_index_is_chosen_for_large_padded_extents(conv_module):
    """Huge zero padding makes padded positions exceed int32 although the arrays are small."""
    from gpuconv import _kernels

    geom = conv_geometry((5,), (2,), stride=2**31, padding=2**31, dilation=1)
    g = conv_module.as_3d(geom)
    x = np.zeros((1, 1, 5), np.float32)
    assert _kernels.index_dtype(x, max_index=conv_module._max_index(g, 1)) == np.int64
    small = conv_module.as_3d(conv_geometry((5,), (2,), stride=1, padding=1, dilation=1))
    assert _kernels.index_dtype(x, max_index=conv_module._max_index(small, 1)) == np.int32


@pytest.mark.parametrize("backend", ["numpy", "emulate"])
def test_huge_stride_and_zero_padding_is_refused_early(backend):
    """stride = padding = 2**31 on a 5-element input has 3 outputs, so the stride matters and
    the padded input holds more than 2**31 cells: refused before any work, naming the stride,
    on every backend (the NumPy backend would pad 2**32 cells). Strides that cannot matter are
    computed (tests/test_validation.py)."""
    if gpuconv.available_backends()[backend] != "available":
        pytest.skip(f"{backend} backend unavailable")
    x = np.arange(1.0, 6.0, dtype=np.float32).reshape(1, 1, 5)
    w = np.array([[[1.0, 10.0]]], np.float32)
    kw = {"stride": 2**31, "padding": 2**31}
    match = r"stride=2147483648 in spatial dim 0 \(L\) must be below 2\*\*31 where it matters"
    with gpuconv.use_backend(backend):
        for call in (lambda: gpuconv.conv(x, w, **kw), lambda: gpuconv.depthwise_conv(x, w, **kw),
                     lambda: gpuconv.conv(x.repeat(2, 1), w.repeat(2, 0), groups=2, **kw)):
            with pytest.raises(ValueError, match=match):
                call()


# ----------------------------------------------------------------------------- edges of the tiling


def test_tiled_channel_chunks_partial_channel_blocks_and_block_loop(emulate, conv_module,
                                                                    monkeypatch):
    """More input channels than one pass stages (MAX_CHUNK); 21 output channels per group in
    4 (blockDim.z) register blocks of 8, so one block is partial and one idle; fewer blocks than
    tasks (block-stride loop); plainly and under the race check."""
    from gpuconv import _emulator

    monkeypatch.setattr(conv_module, "MAX_BLOCKS", 3)
    monkeypatch.setattr(conv_module, "FILL_BLOCKS", 1)
    rng = np.random.default_rng(21)
    x_shape, w_shape = (2, 2 * 19, 7, 9), (2 * 21, 19, 3, 3)
    geom = conv_geometry(x_shape[2:], w_shape[2:], stride=1, padding=((1, 2), (2, 0)),
                         dilation=1, groups=2, padding_mode="reflect")
    plan = conv_module.conv_tiled_plan(conv_module.as_3d(geom), 2, 38, 42, 2, 4)
    assert plan.chunk < 19 and plan.grid < plan.tasks and plan.block[2] == 4
    x, w, b = make_arrays(rng, x_shape, w_shape, np.float32)
    got = conv_module.conv(emulate, x, w, b, geom, method="tiled")
    assert_close(got, x, w, b, geom, depthwise=False)
    with _emulator.race_check():
        conv_module.conv(emulate, x, w, b, geom, method="tiled")


def test_depthwise_filter_chunks_and_block_loop(emulate, conv_module, monkeypatch):
    """A multiplier larger than the filters staged per pass, and the block-stride loop;
    plainly and under the race check."""
    from gpuconv import _emulator

    monkeypatch.setattr(conv_module, "SHARED_TARGET_BYTES", 1)
    monkeypatch.setattr(conv_module, "MAX_BLOCKS", 2)
    rng = np.random.default_rng(22)
    x_shape, w_shape = (2, 3, 5, 7, 9), (3 * 5, 1, 3, 1, 3)
    geom = conv_geometry(x_shape[2:], w_shape[2:], stride=(1, 2, 1), padding=1,
                         dilation=(2, 1, 1), groups=3, padding_mode="circular")
    plan = conv_module.depthwise_tiled_plan(conv_module.as_3d(geom), 2, 3, 5, 8)
    assert plan.chunk == 1 and plan.grid < plan.tasks
    x, w, b = make_arrays(rng, x_shape, w_shape, np.float64)
    got = conv_module.depthwise_conv(emulate, x, w, b, geom)
    assert_close(got, x, w, b, geom, depthwise=True)
    with _emulator.race_check():
        conv_module.depthwise_conv(emulate, x, w, b, geom)


@pytest.mark.parametrize("dtype, multiplier", [(np.float32, 64), (np.float16, 100)])
def test_depthwise_partial_last_filter_chunk(emulate, conv_module, dtype, multiplier):
    """A real 3-D shape whose multiplier is not a multiple of the filters staged per pass:
    5x5x5 filters, multiplier 64, float32 stages 23 + 23 + 18 filters. A
    kernel that skipped or over-ran the partial last pass leaves outputs unwritten or reads
    the next channel's filters; both fail here by orders of magnitude."""
    rng = np.random.default_rng(64)
    x_shape, w_shape = (1, 2, 9, 9, 9), (2 * multiplier, 1, 5, 5, 5)
    geom = conv_geometry(x_shape[2:], w_shape[2:], stride=1, padding=2, dilation=1, groups=2,
                         padding_mode="zeros")
    plan = conv_module.depthwise_tiled_plan(conv_module.as_3d(geom), 1, 2, multiplier,
                                            np.dtype(dtype).itemsize)
    assert multiplier % plan.chunk != 0 and plan.chunk > 1, plan
    x, w, b = make_arrays(rng, x_shape, w_shape, dtype)
    got = conv_module.depthwise_conv(emulate, x, w, b, geom, method="tiled")
    assert_close(got, x, w, b, geom, depthwise=True)


@pytest.mark.parametrize("mode", MODES)
def test_largest_legal_padding(emulate, conv_module, mode):
    """Reflect pads of size - 1, circular pads of size, and far-out zero/replicate pads: every
    padded position maps through one reflection/wrap."""
    rng = np.random.default_rng([MODES.index(mode), 23])
    size = 5
    pad = {"reflect": size - 1, "circular": size}.get(mode, 7)
    x, w, b = make_arrays(rng, (1, 2, size, size), (3, 2, 3, 3), np.float64)
    geom = conv_geometry((size, size), (3, 3), stride=1, padding=pad, dilation=1,
                         padding_mode=mode)
    for method in ("tiled", "direct"):
        got = conv_module.conv(emulate, x, w, b, geom, method=method)
        assert_close(got, x, w, b, geom, depthwise=False)
    dw_x, dw_w, dw_b = make_arrays(rng, (1, 2, size, size), (4, 1, 3, 3), np.float64)
    geom = conv_geometry((size, size), (3, 3), stride=1, padding=pad, dilation=1, groups=2,
                         padding_mode=mode)
    got = conv_module.depthwise_conv(emulate, dw_x, dw_w, dw_b, geom)
    assert_close(got, dw_x, dw_w, dw_b, geom, depthwise=True)


def test_hand_checked_reflect_and_circular():
    """A 1-D case worked by hand: x = [1, 2, 3], kernel [1, 10, 100], padding 1 (lo) and 2 (hi).

    reflect  pads to [2, 1, 2, 3, 2, 1]: outputs 2+10+200, 1+20+300, 2+30+200, 3+20+100
    circular pads to [3, 1, 2, 3, 1, 2]: outputs 3+10+200, 1+20+300, 2+30+100, 3+10+200
    """
    if gpuconv.available_backends()["emulate"] != "available":
        pytest.skip("emulate backend unavailable")
    x = np.array([[[1.0, 2.0, 3.0]]])
    w = np.array([[[1.0, 10.0, 100.0]]])
    with gpuconv.use_backend("emulate"):
        reflect = gpuconv.conv(x, w, padding=((1, 2),), padding_mode="reflect")
        circular = gpuconv.conv(x, w, padding=((1, 2),), padding_mode="circular")
        depthwise = gpuconv.depthwise_conv(x, w, padding=((1, 2),), padding_mode="reflect")
    assert reflect.tolist() == [[[212.0, 321.0, 232.0, 123.0]]]
    assert circular.tolist() == [[[213.0, 321.0, 132.0, 213.0]]]
    assert depthwise.tolist() == reflect.tolist()


# ----------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_pointwise_goes_through_matmul(emulate, conv_module, monkeypatch, dtype):
    """A 1x1 convolution (stride 1, no padding) is one executor.matmul, per group."""
    calls = []
    original = emulate.executor.matmul

    def spy(a, b):
        calls.append((a.shape, b.shape))
        return original(a, b)

    monkeypatch.setattr(emulate.executor, "matmul", spy)
    rng = np.random.default_rng(31)
    x, w, b = make_arrays(rng, (3, 6, 5, 7), (9, 2, 1, 1), dtype)
    geom = conv_geometry((5, 7), (1, 1), stride=1, padding=0, dilation=3, groups=3)
    got = conv_module.conv(emulate, x, w, b, geom)
    assert calls == [((3, 3, 2), (3, 3, 2, 35))]
    assert_close(got, x, w, b, geom, depthwise=False, matmul=True)
    got = conv_module.conv(emulate, x, w, None, geom)
    assert_close(got, x, w, None, geom, depthwise=False, matmul=True)


def test_method_choice(conv_module):
    def choose(x_shape, w_shape, **kw):
        kw = {"stride": 1, "padding": 0, "dilation": 1, **kw}
        geom = conv_geometry(x_shape[2:], w_shape[2:], **kw)
        return conv_module.choose_conv_method(x_shape, w_shape, geom, 4)

    assert choose((1, 8, 9, 9), (16, 8, 1, 1)) == "matmul"
    assert choose((1, 8, 9, 9), (16, 8, 1, 1), stride=2) != "matmul"
    assert choose((1, 8, 9, 9), (16, 8, 1, 1), padding=1) != "matmul"
    assert choose((1, 8, 9, 9), (16, 1, 3, 3), groups=8) == "depthwise"
    assert choose((1, 8, 9, 9), (16, 8, 3, 3), padding=1) == "tiled"
    assert choose((1, 8, 9, 9), (3, 8, 3, 3)) == "direct"  # too few output channels per group
    # a dilated kernel whose one-thread tile exceeds 48 KiB of shared memory
    assert choose((1, 2, 20001), (8, 2, 2), dilation=20000) == "direct"


def test_grouped_conv_with_one_channel_per_group_uses_depthwise(emulate, conv_module,
                                                                monkeypatch):
    launched = []
    original = emulate.executor.get_function

    def spy(file, name):
        launched.append(name)
        return original(file, name)

    monkeypatch.setattr(emulate.executor, "get_function", spy)
    rng = np.random.default_rng(41)
    x, w, b = make_arrays(rng, (2, 3, 9, 7), (6, 1, 3, 3), np.float32)
    geom = conv_geometry((9, 7), (3, 3), stride=1, padding=1, dilation=1, groups=3,
                         padding_mode="replicate")
    got = conv_module.conv(emulate, x, w, b, geom)
    assert launched == ["depthwise_tiled<float, int, 2>"]
    assert_close(got, x, w, b, geom, depthwise=False)


def test_huge_dilation_falls_back_to_direct(emulate, conv_module):
    rng = np.random.default_rng(51)
    geom = conv_geometry((20001,), (2,), stride=1, padding=0, dilation=20000, groups=2)
    g = conv_module.as_3d(geom)
    assert conv_module.depthwise_tiled_plan(g, 1, 2, 2, 4) is None
    x, w, b = make_arrays(rng, (1, 2, 20001), (4, 1, 2), np.float32)
    got = conv_module.depthwise_conv(emulate, x, w, b, geom)
    assert_close(got, x, w, b, geom, depthwise=True)
    with pytest.raises(ValueError, match="method='tiled'"):
        conv_module.depthwise_conv(emulate, x, w, b, geom, method="tiled")


def test_forced_methods_are_validated(emulate, conv_module):
    x = np.zeros((1, 4, 5), np.float32)
    w = np.zeros((4, 4, 3), np.float32)
    geom = conv_geometry((5,), (3,), stride=1, padding=0, dilation=1)
    with pytest.raises(ValueError, match="method='matmul' needs a 1x1 kernel"):
        conv_module.conv(emulate, x, w, None, geom, method="matmul")
    with pytest.raises(ValueError, match="method='depthwise' needs groups == C_in"):
        conv_module.conv(emulate, x, w, None, geom, method="depthwise")
    with pytest.raises(ValueError, match="method='bogus' must be None or one of"):
        conv_module.conv(emulate, x, w, None, geom, method="bogus")
    with pytest.raises(ValueError, match="method='matmul' must be None or one of"):
        conv_module.depthwise_conv(emulate, x, w[:, :1], None, geom, method="matmul")


def test_public_api_runs_on_emulate():
    """gpuconv.conv / depthwise_conv / separable_conv with backend 'emulate' equal 'numpy'."""
    if gpuconv.available_backends()["emulate"] != "available":
        pytest.skip("emulate backend unavailable")
    rng = np.random.default_rng(61)
    x = rng.standard_normal((2, 4, 9, 11))
    w = rng.standard_normal((6, 2, 3, 3))
    dw = rng.standard_normal((8, 1, 3, 3))
    pw = rng.standard_normal((5, 8, 1, 1))
    calls = [
        lambda: gpuconv.conv(x, w, stride=2, padding=1, groups=2, padding_mode="circular"),
        lambda: gpuconv.depthwise_conv(x, dw, padding="same", padding_mode="reflect"),
        lambda: gpuconv.separable_conv(x, dw, pw, padding=1, dilation=2),
    ]
    for call in calls:
        with gpuconv.use_backend("numpy"):
            want = call()
        with gpuconv.use_backend("emulate"):
            got = call()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_cupy_executor_with_a_stand_in_cupy(monkeypatch, emulate, conv_module):
    """The ``cuda`` backend's flow without a GPU: a stand-in ``cupy`` whose RawModule compiles
    the code TEXT it is given (``padding.cuh`` and ``common.cuh`` inlined) with the emulator, and
    whose ``matmul`` is NumPy's -- conv (tiled and direct), depthwise and the 1x1 GEMM path."""
    from gpuconv import _kernels

    backend, compiled = stand_in_cupy(monkeypatch,
                                      ("ndarray", "ascontiguousarray", "empty", "zeros", "matmul"))

    rng = np.random.default_rng(71)
    x, w, b = make_arrays(rng, (2, 4, 7, 9), (8, 2, 3, 3), np.float32)
    geom = conv_geometry((7, 9), (3, 3), stride=(2, 1), padding=((1, 0), (2, 1)), dilation=1,
                         groups=2, padding_mode="reflect")
    for method in ("tiled", "direct"):
        assert_close(conv_module.conv(backend, x, w, b, geom, method=method), x, w, b, geom,
                     depthwise=False)
    dw = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    geom = conv_geometry((7, 9), (3, 3), stride=1, padding=1, dilation=1, groups=4,
                         padding_mode="circular")
    assert_close(backend.depthwise_conv(x, dw, None, geom), x, dw, None, geom, depthwise=True)
    pw = rng.standard_normal((5, 4, 1, 1)).astype(np.float32)
    geom = conv_geometry((7, 9), (1, 1), stride=1, padding=0, dilation=1)
    assert_close(backend.conv(x, pw, b[:5], geom), x, pw, b[:5], geom, depthwise=False,
                 matmul=True)
    # lazily, one compile group each: depthwise.cu and conv.cu for (float, int), once each
    assert sorted(c.name_expressions for c in compiled) == sorted(
        tuple(_kernels.group_name_expressions(file, ("float", "int")))
        for file in ("depthwise.cu", "conv.cu"))
    assert all("source_index" in c.code for c in compiled)  # padding.cuh inlined
