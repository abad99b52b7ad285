"""The gradient kernels (kernels/conv_grad.cu, pad_fold.cu, deform_grad.cu) and the gradient
methods of the device backends (gpuconv/backends/device/_conv.py, _conv_transpose.py,
_deform.py) on the ``emulate`` backend.

Every gradient -- conv, conv_transpose and depthwise input and weight gradients in every padding
mode and rank, deformable convolution's input/offset/weight/mask gradients -- is compared with
the NumPy backend's gradients (``numpy_grad.GradMixin``: slicing, ``numpy.take`` padding maps,
scatter-adds and BLAS; it shares no code with the kernels), evaluated in float64 on the very
values the kernels saw, for float16/float32/float64 on random odd sizes; plainly, under
``gpuconv._emulator.checked()`` (guard pages: out-of-bounds accesses) and under
``race_check()`` (thread/block orders permuted; float-atomic outputs compared within
rounding). The deterministic weight gradients must be bitwise identical run to run and under
the race check, and must issue no floating-point atomics. Every kernel's int64-index
instantiation is forced at least once.

Tolerance (conv family): the elementwise forward-error bound
``u_out * (|ref| + scaled_out * scale) + (m + 2) * u_acc * scale``, where ``scale`` is the same
gradient of the absolute values (a float64 NumPy evaluation), ``m`` the number of terms per
element and ``u`` the unit roundoffs of the output and accumulator types (float32 for
float16). A wrong tap, channel, pad source or split fails by orders of magnitude. Deformable
convolution (whose offset gradient is a difference of samples) uses a normwise bound, with
offsets quantised to multiples of 1/8 so that sampling points and bilinear weights are exact.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from kernel_helpers import (
    DTYPES,
    GRAD_CASES,
    GRAD_CASES_TINY,
    MODES,
    RANKS,
    REFERENCE,
    assert_within,
    f64,
    random_conv_case,
    roundoff,
    stand_in_cupy,
)

import gpuconv
from gpuconv import _emulator, grad
from gpuconv._shapes import conv_geometry, conv_transpose_geometry
from gpuconv.backends.device import _conv, _deform


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def _random(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------- conv cases


def conv_case(rng, rank: int, mode: str, *, tiny: bool = False, depthwise: bool = False):
    """A random case of :data:`kernel_helpers.GRAD_CASES` (tiny: ``GRAD_CASES_TINY``):
    (x shape, weight shape, geometry)."""
    space = GRAD_CASES_TINY if tiny else GRAD_CASES
    x_shape, w_shape, kw = random_conv_case(rng, rank, mode, space, depthwise=depthwise)
    return x_shape, w_shape, conv_geometry(x_shape[2:], w_shape[2:], **kw)


def _fold_terms(geom) -> int:
    """Padded cells folded onto one input cell, at most (replicate: a pad + 1 per dim)."""
    if geom.padding_mode == "zeros":
        return 1
    return math.prod(max(lo, hi) + 3 for lo, hi in zip(geom.pad_lo, geom.pad_hi))


def reference_fold(padded, geom):
    """The NumPy backend's fold (slice-adds through its padding index map)."""
    from gpuconv.backends.numpy_grad import fold_padding

    return fold_padding(padded, geom)


def check_conv_input_grad(emulate, w, g, geom, dtype):
    got = emulate.conv_input_grad(w, g, geom)
    w64, g64 = f64(w, g)
    ref = REFERENCE.conv_input_grad(w64, g64, geom)
    scale = REFERENCE.conv_input_grad(np.abs(w64), np.abs(g64), geom)
    terms = g.shape[1] // geom.groups * math.prod(geom.kernel) + _fold_terms(geom)
    # The padded-input gradient is rounded once before the fold adds its cells.
    assert_within(got, ref, scale, dtype, terms,
                   scaled_out=0 if geom.padding_mode == "zeros" else 1)


def check_conv_weight_grad(emulate, x, g, geom, dtype, deterministic, **hooks):
    got = _conv.conv_weight_grad(emulate, x, g, geom, deterministic, **hooks)
    x64, g64 = f64(x, g)
    ref = REFERENCE.conv_weight_grad(x64, g64, geom)
    scale = REFERENCE.conv_weight_grad(np.abs(x64), np.abs(g64), geom)
    assert_within(got, ref, scale, dtype, x.shape[0] * math.prod(geom.out_size))
    return got


# ----------------------------------------------------------------------------- conv


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_grads_match_numpy(emulate, dtype, rank, mode):
    rng = np.random.default_rng(_seed("conv", np.dtype(dtype).name, rank, mode))
    x_shape, w_shape, geom = conv_case(rng, rank, mode)
    x, w = _random(rng, x_shape, dtype), _random(rng, w_shape, dtype)
    g = _random(rng, (x_shape[0], w_shape[0], *geom.out_size), dtype)
    check_conv_input_grad(emulate, w, g, geom, dtype)
    for deterministic in (False, True):
        check_conv_weight_grad(emulate, x, g, geom, dtype, deterministic)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_weight_grad_many_tiles_and_splits(emulate, dtype):
    """More than one 64 x 64 tile in both directions (og = 70, cg * K = 3 * 27 = 81), forced
    splits with a ragged last one, groups, reflect padding, for both variants."""
    rng = np.random.default_rng(_seed("tiles", np.dtype(dtype).name))
    geom = conv_geometry((3, 5, 3), (3, 3, 3), stride=(1, 2, 1), padding=1, dilation=1,
                         groups=2, padding_mode="reflect")
    x = _random(rng, (3, 6, 3, 5, 3), dtype)
    g = _random(rng, (3, 140, *geom.out_size), dtype)
    for deterministic in (False, True):
        check_conv_weight_grad(emulate, x, g, geom, dtype, deterministic, splits=5)


def test_pointwise_input_grad_is_a_gemm(emulate):
    """1x1, stride 1, no padding: weight^T @ grad_output through the executor's matmul."""
    rng = np.random.default_rng(7)
    geom = conv_geometry((5, 3), (1, 1), stride=1, padding=0, dilation=1, groups=3)
    w, g = _random(rng, (9, 2, 1, 1), np.float16), _random(rng, (3, 9, 5, 3), np.float16)
    check_conv_input_grad(emulate, w, g, geom, np.float16)


# ----------------------------------------------------------------------------- depthwise


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_grads_match_numpy(emulate, dtype, mode):
    rank = 1 + MODES.index(mode) % 3
    rng = np.random.default_rng(_seed("depthwise", np.dtype(dtype).name, mode))
    x_shape, w_shape, geom = conv_case(rng, rank, mode, depthwise=True)
    x, w = _random(rng, x_shape, dtype), _random(rng, w_shape, dtype)
    g = _random(rng, (x_shape[0], w_shape[0], *geom.out_size), dtype)
    # through the backend methods of depthwise_conv (groups == C in the geometry)
    got = emulate.depthwise_conv_input_grad(w, g, geom)
    w64, g64, x64 = f64(w, g, x)
    ref = REFERENCE.depthwise_conv_input_grad(w64, g64, geom)
    scale = REFERENCE.depthwise_conv_input_grad(np.abs(w64), np.abs(g64), geom)
    assert_within(got, ref, scale, dtype,
                   w_shape[0] // x_shape[1] * math.prod(geom.kernel) + _fold_terms(geom),
                   scaled_out=0 if mode == "zeros" else 1)
    for deterministic in (False, True):
        got = emulate.depthwise_conv_weight_grad(x, g, geom, deterministic)
        ref = REFERENCE.depthwise_conv_weight_grad(x64, g64, geom)
        scale = REFERENCE.depthwise_conv_weight_grad(np.abs(x64), np.abs(g64), geom)
        assert_within(got, ref, scale, dtype, x_shape[0] * math.prod(geom.out_size))


def test_depthwise_weight_grad_many_taps_and_splits(emulate):
    """More taps than one block's chunk (5 x 5 = 25 > 8 per block), forced splits."""
    rng = np.random.default_rng(11)
    geom = conv_geometry((9, 7), (5, 5), stride=1, padding=2, dilation=1, groups=3,
                         padding_mode="circular")
    x = _random(rng, (3, 3, 9, 7), np.float32)
    g = _random(rng, (3, 6, *geom.out_size), np.float32)
    for deterministic in (False, True):
        check_conv_weight_grad(emulate, x, g, geom, np.float32, deterministic,
                               method="depthwise", splits=4)
    # the GEMM kernel computes the same (a nearly empty tile, but correct)
    check_conv_weight_grad(emulate, x, g, geom, np.float32, True, method="gemm")


# ----------------------------------------------------------------------------- conv_transpose


def transpose_case(rng, rank):
    groups = int(rng.choice([1, 2, 3]))
    c_in, og = groups * int(rng.choice([1, 3])), int(rng.choice([1, 2, 5]))
    in_size = tuple(int(v) for v in rng.choice([1, 3, 5], size=rank))
    kernel = tuple(int(v) for v in rng.integers(1, 4, size=rank))
    stride = tuple(int(v) for v in rng.integers(1, 4, size=rank))
    dilation = tuple(int(v) for v in rng.integers(1, 3, size=rank))
    output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
    full = [(n - 1) * s + d * (k - 1) + 1 for n, k, s, d in zip(in_size, kernel, stride, dilation)]
    padding = tuple((int(rng.integers(0, max(1, (f + op) // 2))), 0)
                    for f, op in zip(full, output_padding))
    geom = conv_transpose_geometry(in_size, kernel, stride=stride, padding=padding,
                                   output_padding=output_padding, dilation=dilation,
                                   groups=groups)
    batch = int(rng.choice([1, 3]))
    return (batch, c_in, *in_size), (c_in, og, *kernel), geom


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_transpose_grads_match_numpy(emulate, dtype, rank):
    rng = np.random.default_rng(_seed("transpose", np.dtype(dtype).name, rank))
    x_shape, w_shape, geom = transpose_case(rng, rank)
    x, w = _random(rng, x_shape, dtype), _random(rng, w_shape, dtype)
    g = _random(rng, (x_shape[0], w_shape[1] * geom.groups, *geom.out_size), dtype)
    check_conv_transpose_grads(emulate, x, w, g, geom, dtype)


def check_conv_transpose_grads(emulate, x, w, g, geom, dtype):
    x_shape, w_shape = x.shape, w.shape
    x64, w64, g64 = f64(x, w, g)
    got = emulate.conv_transpose_input_grad(w, g, geom)
    ref = REFERENCE.conv_transpose_input_grad(w64, g64, geom)
    scale = REFERENCE.conv_transpose_input_grad(np.abs(w64), np.abs(g64), geom)
    assert_within(got, ref, scale, dtype, w_shape[1] * math.prod(geom.kernel))
    for deterministic in (False, True):
        got = emulate.conv_transpose_weight_grad(x, g, geom, deterministic)
        ref = REFERENCE.conv_transpose_weight_grad(x64, g64, geom)
        scale = REFERENCE.conv_transpose_weight_grad(np.abs(x64), np.abs(g64), geom)
        assert_within(got, ref, scale, dtype, x_shape[0] * math.prod(geom.in_size))


# ----------------------------------------------------------------------------- deformable


def deform_case(rng, dtype, *, mask: bool, tiny: bool = False):
    """Odd sizes, groups and offset groups, offsets (multiples of 1/8) that push samples across
    and past the image border, masks in [0, 1)."""
    groups, offset_groups = (1, 1) if tiny else (int(rng.choice([1, 3])), int(rng.choice([1, 3])))
    c_in = 3 if tiny else 3 * int(rng.choice([1, 2]))
    c_out = groups * int(rng.choice([1, 2]))
    height, width = (3, 5) if tiny else (int(rng.choice([5, 7])), int(rng.choice([3, 5, 9])))
    kernel = (3, 3) if tiny else (int(rng.choice([1, 3])), int(rng.choice([2, 3])))
    batch = 1 if tiny else int(rng.choice([1, 3]))
    geom = conv_geometry((height, width), kernel, stride=(1, int(rng.integers(1, 3))),
                         padding=1, dilation=(int(rng.integers(1, 3)), 1), groups=groups)
    taps = kernel[0] * kernel[1]
    out = geom.out_size
    x = _random(rng, (batch, c_in, height, width), dtype)
    offset = (np.round(rng.uniform(-3, 3, (batch, 2 * offset_groups * taps, *out)) * 8) / 8)
    offset = offset.astype(dtype)
    w = _random(rng, (c_out, c_in // groups, *kernel), dtype)
    m = rng.uniform(0, 1, (batch, offset_groups * taps, *out)).astype(dtype) if mask else None
    g = _random(rng, (batch, c_out, *out), dtype)
    return x, offset, w, m, g, geom, offset_groups


def check_deform(emulate, case, dtype, **hooks):
    x, offset, w, m, g, geom, offset_groups = case
    got = _deform.deform_conv2d_grad(emulate, x, offset, w, m, g, geom, offset_groups, **hooks)
    ref = REFERENCE.deform_conv2d_grad(*f64(x, offset, w, m, g), geom, offset_groups)
    taps = math.prod(geom.kernel)
    terms = {
        "input": 4 * taps * w.shape[0],
        "offset": 4 * (x.shape[1] // offset_groups) * w.shape[0],
        "weight": 4 * x.shape[0] * math.prod(geom.out_size),
        "mask": 4 * (x.shape[1] // offset_groups) * w.shape[0],
    }
    for name, a, b in zip(("input", "offset", "weight", "mask"), got, ref):
        if b is None:
            assert a is None
            continue
        # normwise (the offset gradient is a difference of samples): scale = max|ref|
        assert_within(a, b, np.abs(b).max(initial=0.0), dtype, terms[name], extra_terms=4)
    return got


@pytest.mark.parametrize("mask", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_deform_grads_match_numpy(emulate, dtype, mask):
    rng = np.random.default_rng(_seed("deform", np.dtype(dtype).name, mask))
    check_deform(emulate, deform_case(rng, dtype, mask=mask), dtype)


def test_deform_grads_chunked(emulate):
    """Chunks of images and of positions (a tiny workspace), channel slices, a capped grid
    (the kernels' grid-stride loops)."""
    rng = np.random.default_rng(5)
    case = deform_case(rng, np.float64, mask=True)
    x, geom = case[0], case[5]
    rows = x.shape[1] * math.prod(geom.kernel)
    check_deform(emulate, case, np.float64, workspace_bytes=2 * rows * 8 * 3, channel_slice=1,
                 max_grid_x=1)


def test_deform_grads_partial_last_image_chunk(emulate):
    """Two images per chunk over a batch of three: the last chunk holds one image (a loop that
    dropped the partial chunk left its gradients zero)."""
    rng = np.random.default_rng(6)
    case = deform_case(rng, np.float64, mask=True)
    while case[0].shape[0] != 3:
        case = deform_case(rng, np.float64, mask=True)
    x, geom = case[0], case[5]
    rows = x.shape[1] * math.prod(geom.kernel)
    per_image = rows * 8 * math.prod(geom.out_size)
    budget = 2 * (2 * per_image)  # the gradient halves its budget: two images per chunk
    assert _deform.chunking(3, math.prod(geom.out_size), rows, 8, budget // 2)[0] == 2
    check_deform(emulate, case, np.float64, workspace_bytes=budget)


def test_deform_boundary_samples(emulate):
    """Samples exactly on and just inside the -1 / H and -1 / W borders, and integer positions
    (the one-sided offset derivative): compared with the NumPy reference in float64."""
    x = np.arange(1.0, 13.0).reshape(1, 1, 3, 4)
    w = np.ones((1, 1, 1, 1))
    geom = conv_geometry((3, 4), (1, 1), stride=1, padding=0, dilation=1)
    offset = np.zeros((1, 2, 3, 4))
    offset[0, 0] = [[-1.0, -0.875, 0.0, 0.5], [1.0, 1.125, 0.25, -1.5], [0.0, 0.125, -0.125, 1.0]]
    offset[0, 1] = [[0.0, 0.5, -1.0, -0.125], [2.0, 2.875, 0.125, 0.0], [-3.0, 0.0, 1.0, -2.0]]
    g = np.arange(1.0, 13.0).reshape(1, 1, 3, 4)
    mask = np.full((1, 1, 3, 4), 0.5)
    for m in (None, mask):
        check_deform(emulate, (x, offset, w, m, g, geom, 1), np.float64)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("method", ["gemm", "depthwise"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_weight_grad_is_bitwise_reproducible(emulate, dtype, method):
    """deterministic=True: no floating-point atomics, identical bits on repeated runs and in
    every thread/block order of the race check. The atomic variant does use atomics (and the
    race check accepts its reorderings within rounding)."""
    rng = np.random.default_rng(_seed("determinism", np.dtype(dtype).name, method))
    geom = conv_geometry((7, 9), (3, 3), stride=1, padding=1, dilation=1,
                         groups=3 if method == "depthwise" else 1, padding_mode="replicate")
    x = _random(rng, (3, 3, 7, 9), dtype)
    c_out = 6
    g = _random(rng, (3, c_out, 7, 9), dtype)

    def run(deterministic):
        return _conv.conv_weight_grad(emulate, x, g, geom, deterministic, method=method,
                                      splits=6)

    before = _emulator.stats()["float_atomics"]
    first = run(True)
    second = run(True)
    assert _emulator.stats()["float_atomics"] == before
    with _emulator.race_check():
        third = run(True)
    assert first.tobytes() == second.tobytes() == third.tobytes()
    check_conv_weight_grad(emulate, x, g, geom, dtype, True, method=method, splits=6)
    atomic = run(False)
    assert _emulator.stats()["float_atomics"] > before
    with _emulator.race_check():
        atomic_raced = run(False)
    scale = np.abs(first.astype(np.float64)).max()
    np.testing.assert_allclose(atomic.astype(np.float64), atomic_raced.astype(np.float64),
                               atol=100 * roundoff(dtype) * scale)


def test_public_deterministic_flag_reaches_the_kernels(emulate):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 9, 8))
    g = rng.standard_normal((3, 6, 9, 8))
    before = _emulator.stats()["float_atomics"]
    with gpuconv.use_backend("emulate"):
        a = grad.conv_weight(x, (6, 2, 3, 3), g, padding=1, groups=2, deterministic=True)
        b = grad.conv_weight(x, (6, 2, 3, 3), g, padding=1, groups=2, deterministic=True)
        assert _emulator.stats()["float_atomics"] == before
        c = grad.conv_weight(x, (6, 2, 3, 3), g, padding=1, groups=2)
    assert _emulator.stats()["float_atomics"] > before
    assert a.tobytes() == b.tobytes()
    np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a, grad.conv_weight(x, (6, 2, 3, 3), g, padding=1, groups=2),
                               rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- checked / race


def _tiny_conv(dtype, mode, *, depthwise=False):
    rng = np.random.default_rng(_seed("tiny", np.dtype(dtype).name, mode, depthwise))
    x_shape, w_shape, geom = conv_case(rng, 2, mode, tiny=True, depthwise=depthwise)
    x, w = _random(rng, x_shape, dtype), _random(rng, w_shape, dtype)
    g = _random(rng, (x_shape[0], w_shape[0], *geom.out_size), dtype)
    return x, w, g, geom


def _run_tiny_conv_grads(emulate, dtype, mode):
    x, w, g, geom = _tiny_conv(dtype, mode)
    check_conv_input_grad(emulate, w, g, geom, dtype)
    check_conv_weight_grad(emulate, x, g, geom, dtype, False, method="gemm", splits=2)
    check_conv_weight_grad(emulate, x, g, geom, dtype, True, method="gemm", splits=2)
    x, w, g, geom = _tiny_conv(dtype, mode, depthwise=True)
    check_conv_input_grad(emulate, w, g, geom, dtype)
    check_conv_weight_grad(emulate, x, g, geom, dtype, False, method="depthwise", splits=2)
    check_conv_weight_grad(emulate, x, g, geom, dtype, True, method="depthwise", splits=2)
    if mode == "zeros":  # conv_transpose's gradients (zero padding only)
        rng = np.random.default_rng(_seed("tiny transpose", np.dtype(dtype).name))
        x_shape, w_shape, geom = transpose_case(rng, 2)
        x, w = _random(rng, x_shape, dtype), _random(rng, w_shape, dtype)
        g = _random(rng, (x_shape[0], w_shape[1] * geom.groups, *geom.out_size), dtype)
        check_conv_transpose_grads(emulate, x, w, g, geom, dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_grad_kernels_under_emulator_check(emulate, emulator_check, dtype, mode):
    """checked: guard pages around every array, so no kernel reads or writes outside its
    arrays; race_check: no result depends on thread/block order."""
    with emulator_check():
        _run_tiny_conv_grads(emulate, dtype, mode)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deform_grad_kernels_under_emulator_check(emulate, emulator_check, dtype):
    rng = np.random.default_rng(_seed("deform tiny", np.dtype(dtype).name))
    with emulator_check():
        for mask in (False, True):
            check_deform(emulate, deform_case(rng, dtype, mask=mask, tiny=True), dtype)


# ----------------------------------------------------------------------------- int64 index


@pytest.mark.parametrize("dtype", DTYPES)
def test_int64_index_instantiations(emulate, dtype):
    """The long long instantiations (chosen on the host only for > 2**31-byte tensors),
    forced through the test hooks: both weight-gradient kernels in both variants (and the
    reduction), the fold in every mode, and for float32/float64 the deformable kernels."""
    index = np.int64
    for mode in MODES:
        x, _, g, geom = _tiny_conv(dtype, mode)
        for deterministic in (False, True):
            check_conv_weight_grad(emulate, x, g, geom, dtype, deterministic, method="gemm",
                                   index=index, splits=2)
        if mode != "zeros":
            padded = _random(np.random.default_rng(1), (2, 3, *geom.padded_size), dtype)
            got = _conv.fold_padding(emulate, padded, geom, index=index)
            ref = reference_fold(padded.astype(np.float64), geom)
            scale = reference_fold(np.abs(padded.astype(np.float64)), geom)
            assert_within(got, ref, scale, dtype, _fold_terms(geom))
        x, _, g, geom = _tiny_conv(dtype, mode, depthwise=True)
        for deterministic in (False, True):
            check_conv_weight_grad(emulate, x, g, geom, dtype, deterministic, method="depthwise",
                                   index=index, splits=2)
    rng = np.random.default_rng(_seed("deform int64", np.dtype(dtype).name))
    check_deform(emulate, deform_case(rng, dtype, mask=True, tiny=True), dtype, index=index)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_fold_every_cell_of_large_pads(emulate, mode):
    """Pads as large as each mode allows (reflect: size - 1, circular: size, replicate: more
    than the size), every padded cell a distinct power of two, so each input cell's sum shows
    exactly which cells were folded onto it."""
    size = 5
    pad = {"reflect": (4, 3), "circular": (5, 2), "replicate": (7, 6)}[mode]
    geom = conv_geometry((size, 3), (1, 1), stride=1, padding=(pad, (1, 2)), dilation=1,
                         padding_mode=mode)
    padded_size = geom.padded_size
    cells = math.prod(padded_size)
    padded = (2.0 ** (np.arange(cells) % 40)).reshape(1, 1, *padded_size)
    got = _conv.fold_padding(emulate, padded, geom)
    np.testing.assert_array_equal(got, reference_fold(padded, geom))


def test_fold_rejects_zeros_padding(emulate):
    geom = conv_geometry((5,), (3,), stride=1, padding=1, dilation=1)
    with pytest.raises(ValueError, match="padding_mode='zeros' is a crop"):
        _conv.fold_padding(emulate, np.zeros((1, 1, 7)), geom)


def test_forced_depthwise_method_needs_one_channel_per_group(emulate):
    geom = conv_geometry((5,), (3,), stride=1, padding=1, dilation=1, groups=1)
    with pytest.raises(ValueError, match=r"method='depthwise' needs C_in / groups == 1"):
        _conv.conv_weight_grad(emulate, np.zeros((1, 2, 5)), np.zeros((1, 2, 5)), geom,
                               method="depthwise")
    with pytest.raises(ValueError, match=r"method='im2col' must be None or one of"):
        _conv.conv_weight_grad(emulate, np.zeros((1, 2, 5)), np.zeros((1, 2, 5)), geom,
                               method="im2col")


# ----------------------------------------------------------------------------- split plan


@pytest.mark.parametrize("tiles", [1, 7, 5000])
@pytest.mark.parametrize("length", [1, 15, 16, 17, 1000, 10**6])
@pytest.mark.parametrize("deterministic", [False, True])
def test_split_plan_covers_the_reduction(tiles, length, deterministic):
    splits, split_len = _conv.split_plan(tiles, length, 16, 256, out_elems=10**6,
                                         acc_itemsize=8, deterministic=deterministic)
    assert split_len % 16 == 0
    assert 1 <= splits <= 65535
    assert (splits - 1) * split_len < length <= splits * split_len  # no empty split
    if deterministic:
        assert splits * 10**6 * 8 <= max(_conv.WORKSPACE_BYTES, 10**6 * 8)
    assert tiles * splits <= max(_conv.TARGET_BLOCKS, tiles) + tiles


# ----------------------------------------------------------------------------- public API


def test_public_gradients_on_emulate_match_numpy(emulate):
    """gpuconv.grad on the emulate backend (dispatch, dtype, array type) against the NumPy
    backend, float32, one call per gradient."""
    rng = np.random.default_rng(17)
    f = np.float32

    def normal(*shape):
        return rng.standard_normal(shape).astype(f)

    x = normal(2, 4, 9, 7)
    w = normal(6, 2, 3, 3)
    kw = dict(stride=2, padding="same", groups=2, padding_mode="circular")
    g = normal(*gpuconv.conv(x, w, **kw).shape)
    wt = normal(4, 3, 3, 2)
    kwt = dict(stride=(2, 1), padding=1, output_padding=(1, 0))
    gt = normal(*gpuconv.conv_transpose(x, wt, **kwt).shape)
    wd = normal(8, 1, 3, 3)
    kwd = dict(padding=(2, 1), dilation=2, padding_mode="reflect")
    gd = normal(*gpuconv.depthwise_conv(x, wd, **kwd).shape)
    off = (np.round(rng.uniform(-2, 2, (2, 18, 9, 7)) * 8) / 8).astype(f)
    mask = rng.uniform(0, 1, (2, 9, 9, 7)).astype(f)
    gdef = normal(2, 6, 9, 7)
    pw = normal(5, 8, 1, 1)
    gs = normal(2, 5, *gd.shape[2:])
    calls = [
        lambda: grad.conv_input(x.shape, w, g, **kw),
        lambda: grad.conv_weight(x, w.shape, g, **kw),
        lambda: grad.conv_transpose_input(x.shape, wt, gt, **kwt),
        lambda: grad.conv_transpose_weight(x, wt.shape, gt, **kwt),
        lambda: grad.depthwise_conv_input(x.shape, wd, gd, **kwd),
        lambda: grad.depthwise_conv_weight(x, wd.shape, gd, deterministic=True, **kwd),
        lambda: grad.deform_conv2d(x, off, w, gdef, padding=1, mask=mask),
        lambda: grad.separable_conv(x, wd, pw, gs, **kwd),
    ]
    for call in calls:
        expected = call()
        with gpuconv.use_backend("emulate"):
            got = call()
        if not isinstance(expected, tuple):
            expected, got = (expected,), (got,)
        for e, o in zip(expected, got):
            if e is None:
                assert o is None
                continue
            assert isinstance(o, np.ndarray) and o.dtype == e.dtype and o.shape == e.shape
            np.testing.assert_allclose(o, e, rtol=2e-4, atol=2e-4 * float(np.abs(e).max()))


def test_cupy_executor_flow_with_a_stand_in_cupy(monkeypatch, emulate):
    """The ``cuda`` backend's flow without a GPU: a stand-in ``cupy`` module (NumPy's functions,
    a RawModule that runs the emulator's build of the same file) behind ``CupyExecutor``, so
    the gradients use only array functions CuPy has and the kernels' parameter types come from
    the registry's signature parser (``gpuconv::acc_t<T>*`` included), as on a GPU."""
    # one compile group per module; the emulator builds the whole file (its disk cache is shared)
    backend, _ = stand_in_cupy(monkeypatch,
                               ("ndarray", "ascontiguousarray", "empty", "zeros", "matmul"),
                               whole_file=True)

    for dtype in (np.float16, np.float64):
        x, w, g, geom = _tiny_conv(dtype, "circular")
        w64, g64, x64 = f64(w, g, x)
        np.testing.assert_allclose(backend.conv_input_grad(w, g, geom),
                                   REFERENCE.conv_input_grad(w64, g64, geom), rtol=2e-2,
                                   atol=2e-2 * float(np.abs(g64).max() * np.abs(w64).max()) * 9)
        for deterministic in (False, True):
            np.testing.assert_allclose(
                backend.conv_weight_grad(x, g, geom, deterministic),
                REFERENCE.conv_weight_grad(x64, g64, geom), rtol=2e-2,
                atol=2e-2 * float(np.abs(g64).max() * np.abs(x64).max()) * g.size)
    case = deform_case(np.random.default_rng(2), np.float32, mask=True, tiny=True)
    got = backend.deform_conv2d_grad(*case)
    ref = REFERENCE.deform_conv2d_grad(*f64(*case[:5]), *case[5:])
    for a, b in zip(got, ref):
        assert_within(a, b, np.abs(b).max(initial=0.0), np.float32, 200, extra_terms=4)
