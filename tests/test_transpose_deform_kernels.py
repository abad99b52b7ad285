"""The transposed-convolution and deformable-convolution kernels (kernels/conv_transpose.cu,
kernels/deform.cu) on the ``emulate`` backend, through the public API and directly.

References, independent of the kernels:

* the NumPy backend (scatter-by-slices transposed convolution, gather-by-``take_along_axis``
  deformable sampling, BLAS contractions) evaluated in float64 on the very values the kernel
  saw (float16/float32 inputs upcast);
* for deformable convolution also a naive float64 loop written from torchvision's
  ``bilinear_interpolate`` (boundary cases, inf isolation).

Tolerance: an elementwise forward-error bound ``u_out * |ref| + (m + c) * u_acc * scale``, with
``scale`` the same operation applied to absolute values (float64), ``m`` the number of terms per
output and ``u`` the unit roundoffs of the output and accumulator types. A wrong tap, channel,
offset or corner fails by orders of magnitude. Deformable tests quantise offsets to multiples
of 1/8 so that sampling coordinates and bilinear weights are exact in every dtype.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from kernel_helpers import DTYPES, abs64, assert_within, f64

import gpuconv
from gpuconv._shapes import conv_geometry, conv_transpose_geometry
from gpuconv.backends.device import _conv_transpose, _deform

# --------------------------------------------------------------------------- conv_transpose


def _random_transpose_case(rng, nd):
    """Odd, random sizes and every geometry option (not 'same' here; see CASES)."""
    groups = int(rng.choice([1, 1, 2, 3]))
    cg = int(rng.choice([1, 3, 5]))
    og = int(rng.choice([1, 3, 5, 9]))
    kernel = tuple(int(k) for k in rng.choice([1, 2, 3, 5], size=nd))
    stride = tuple(int(s) for s in rng.choice([1, 2, 3], size=nd))
    dilation = tuple(int(d) for d in rng.choice([1, 2, 3], size=nd))
    in_size = tuple(int(n) for n in rng.choice([1, 3, 5, 7], size=nd))
    output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
    full = [(n - 1) * s + d * (k - 1) + 1 for n, k, s, d in zip(in_size, kernel, stride, dilation)]
    # (lo, hi) crops leaving at least one output
    padding = []
    for f, op in zip(full, output_padding):
        lo = int(rng.integers(0, max(1, (f + op) // 2)))
        hi = int(rng.integers(0, max(1, f + op - lo)))
        padding.append((lo, hi))
    return {
        "batch": int(rng.choice([1, 3])),
        "c_in": groups * cg,
        "og": og,
        "groups": groups,
        "in_size": in_size,
        "kernel": kernel,
        "stride": stride,
        "dilation": dilation,
        "padding": tuple(padding),
        "output_padding": output_padding,
        "bias": bool(rng.integers(0, 2)),
    }


_rng = np.random.default_rng(4_2024)
TRANSPOSE_CASES = [
    # hand-picked: 1-D with stride > kernel (outputs no tap reaches), 'same', int padding,
    # dilation sharing a factor with the stride, depthwise-style groups, 3-D
    {
        "batch": 2,
        "c_in": 3,
        "og": 5,
        "groups": 1,
        "in_size": (7,),
        "kernel": (2,),
        "stride": (5,),
        "dilation": (1,),
        "padding": 0,
        "output_padding": (3,),
        "bias": True,
    },
    {
        "batch": 1,
        "c_in": 4,
        "og": 3,
        "groups": 2,
        "in_size": (5, 3),
        "kernel": (3, 2),
        "stride": (2, 3),
        "dilation": (1, 2),
        "padding": "same",
        "output_padding": 0,
        "bias": True,
    },
    {
        "batch": 1,
        "c_in": 6,
        "og": 1,
        "groups": 6,
        "in_size": (5, 7),
        "kernel": (3, 3),
        "stride": (2, 2),
        "dilation": (2, 2),
        "padding": 1,
        "output_padding": (1, 1),
        "bias": False,
    },
    {
        "batch": 1,
        "c_in": 5,
        "og": 7,
        "groups": 1,
        "in_size": (3, 5),
        "kernel": (5, 3),
        "stride": (4, 6),
        "dilation": (6, 4),
        "padding": ((3, 0), (0, 5)),
        "output_padding": (5, 3),
        "bias": True,
    },
    {
        "batch": 2,
        "c_in": 3,
        "og": 5,
        "groups": 1,
        "in_size": (3, 3, 5),
        "kernel": (3, 2, 3),
        "stride": (2, 1, 2),
        "dilation": (1, 2, 1),
        "padding": ((1, 1), (0, 1), (2, 0)),
        "output_padding": (1, 0, 1),
        "bias": True,
    },
] + [_random_transpose_case(_rng, nd) for nd in (1, 1, 2, 2, 2, 3, 3)]


def _transpose_inputs(case, dtype, rng):
    x = rng.standard_normal((case["batch"], case["c_in"], *case["in_size"])).astype(dtype)
    w = rng.standard_normal((case["c_in"], case["og"], *case["kernel"])).astype(dtype)
    b = rng.standard_normal(case["og"] * case["groups"]).astype(dtype) if case["bias"] else None
    return x, w, b


def _transpose_kwargs(case):
    return {
        "stride": case["stride"],
        "padding": case["padding"],
        "output_padding": case["output_padding"],
        "dilation": case["dilation"],
        "groups": case["groups"],
    }


def _transpose_reference(case, x, w, b):
    """(float64 result, float64 result on absolute values, terms per output)."""
    kwargs = _transpose_kwargs(case)
    with gpuconv.use_backend("numpy"):
        ref = gpuconv.conv_transpose(*f64(x, w, b), **kwargs)
        scale = gpuconv.conv_transpose(*abs64(x, w, b), **kwargs)
    terms = (case["c_in"] // case["groups"]) * math.prod(case["kernel"]) + 1
    return ref, scale, terms


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: f"{len(c['in_size'])}d")
def test_conv_transpose_matches_numpy(emulate, case, dtype):
    rng = np.random.default_rng(7)
    x, w, b = _transpose_inputs(case, dtype, rng)
    with gpuconv.use_backend("emulate"):
        got = gpuconv.conv_transpose(x, w, b, **_transpose_kwargs(case))
    ref, scale, terms = _transpose_reference(case, x, w, b)
    assert_within(got, ref, scale, dtype, terms)


def _geometry(case, x_shape):
    return conv_transpose_geometry(
        x_shape[2:],
        case["kernel"],
        stride=case["stride"],
        padding=case["padding"],
        output_padding=case["output_padding"],
        dilation=case["dilation"],
        groups=case["groups"],
    )


# Every instantiation (CoutPerThread 1/4 x StageWeights x index type) and the loops that
# the default plan rarely takes: several channel passes, grid-stride loops in x and y, a
# block smaller than the output plane.
PLANS = [
    {"cout_per_thread": 1, "stage_weights": True},
    {"cout_per_thread": 4, "stage_weights": True},
    {"cout_per_thread": 1, "stage_weights": False},
    {"cout_per_thread": 4, "stage_weights": False},
    {"cout_per_thread": 4, "stage_weights": True, "chunk": 2},
    {"cout_per_thread": 1, "stage_weights": True, "chunk": 1, "threads": 32, "max_grid": (2, 3)},
    {"cout_per_thread": 4, "stage_weights": False, "threads": 64, "max_grid": (1, 1)},
    {"cout_per_thread": 4, "stage_weights": True, "chunk": 3, "index": np.int64},
    {"cout_per_thread": 1, "stage_weights": False, "index": np.int64},
    {"cout_per_thread": 1, "stage_weights": True, "chunk": 2, "index": np.int64},
    {"cout_per_thread": 4, "stage_weights": False, "max_grid": (3, 2), "index": np.int64},
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("forced", PLANS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_conv_transpose_every_instantiation(emulate, forced, dtype):
    # og = 7: one partial block of 4 output channels; cg = 5: a partial channel pass
    case = {
        "batch": 2,
        "c_in": 10,
        "og": 7,
        "groups": 2,
        "in_size": (5, 3, 7),
        "kernel": (3, 2, 3),
        "stride": (2, 3, 1),
        "dilation": (1, 1, 2),
        "padding": ((1, 0), (0, 2), (2, 1)),
        "output_padding": (1, 2, 0),
        "bias": True,
    }
    rng = np.random.default_rng(11)
    x, w, b = _transpose_inputs(case, dtype, rng)
    got = _conv_transpose.conv_transpose(emulate, x, w, b, _geometry(case, x.shape), **forced)
    ref, scale, terms = _transpose_reference(case, x, w, b)
    assert_within(got, ref, scale, dtype, terms)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_conv_transpose_under_emulator_check(emulate, emulator_check, dtype):
    # tiny, odd; staged weights with two channel passes and a grid-stride loop, so the
    # barriers around the shared-memory weights are exercised by the race check
    case = {
        "batch": 1,
        "c_in": 3,
        "og": 5,
        "groups": 1,
        "in_size": (3, 5),
        "kernel": (3, 3),
        "stride": (2, 1),
        "dilation": (1, 2),
        "padding": ((1, 0), (1, 1)),
        "output_padding": (1, 0),
        "bias": True,
    }
    rng = np.random.default_rng(5)
    x, w, b = _transpose_inputs(case, dtype, rng)
    geom = _geometry(case, x.shape)
    with emulator_check():
        got = _conv_transpose.conv_transpose(
            emulate,
            x,
            w,
            b,
            geom,
            cout_per_thread=4,
            stage_weights=True,
            chunk=2,
            threads=32,
            max_grid=(2, 1),
        )
        unstaged = _conv_transpose.conv_transpose(
            emulate, x, w, b, geom, cout_per_thread=1, stage_weights=False
        )
    ref, scale, terms = _transpose_reference(case, x, w, b)
    assert_within(got, ref, scale, dtype, terms)
    assert_within(unstaged, ref, scale, dtype, terms)


def test_conv_transpose_plan_choices():
    geom = conv_transpose_geometry(
        (8, 8), (3, 3), stride=2, padding=1, output_padding=1, dilation=1
    )
    # depthwise-style (one output channel per group): no wasted channel lanes
    depthwise = dataclasses.replace(geom, groups=32)
    assert _conv_transpose.plan((1, 32, 8, 8), (32, 1, 3, 3), depthwise, 4).cout_per_thread == 1
    p = _conv_transpose.plan((1, 64, 8, 8), (64, 64, 3, 3), geom, 4)
    assert p.cout_per_thread == 4 and p.stage_weights
    assert p.shared_mem == p.chunk * 9 * 4 * 4 <= _conv_transpose.SHARED_BUDGET_BYTES
    # a kernel too large for one channel's weights to be staged
    big = conv_transpose_geometry((2,), (2000,), stride=1, padding=0, output_padding=0, dilation=1)
    q = _conv_transpose.plan((1, 2, 2), (2, 8, 2000), big, 8)
    assert not q.stage_weights and q.shared_mem == 0


def test_conv_transpose_large_kernel_unstaged(emulate):
    # 1-D, 1500 taps of float64 x 4 channels do not fit the shared budget: the __ldg path
    case = {
        "batch": 1,
        "c_in": 2,
        "og": 4,
        "groups": 1,
        "in_size": (9,),
        "kernel": (1500,),
        "stride": (3,),
        "dilation": (1,),
        "padding": ((700, 650),),
        "output_padding": (2,),
        "bias": True,
    }
    rng = np.random.default_rng(3)
    x, w, b = _transpose_inputs(case, np.float64, rng)
    assert not _conv_transpose.plan(x.shape, w.shape, _geometry(case, x.shape), 8).stage_weights
    with gpuconv.use_backend("emulate"):
        got = gpuconv.conv_transpose(x, w, b, **_transpose_kwargs(case))
    ref, scale, terms = _transpose_reference(case, x, w, b)
    assert_within(got, ref, scale, np.float64, terms)


def test_conv_transpose_hand_checked(emulate):
    # x = [1, 2], w = [1, 10, 100], stride 2: full output [1, 10, 102, 20, 200];
    # padding 1 crops one at each end, output_padding 1 gives back the cropped last one.
    x = np.array([[[1.0, 2.0]]])
    w = np.array([[[1.0, 10.0, 100.0]]])
    with gpuconv.use_backend("emulate"):
        got = gpuconv.conv_transpose1d(x, w, np.array([0.5]), stride=2, padding=1, output_padding=1)
    np.testing.assert_array_equal(got, [[[10.5, 102.5, 20.5, 200.5]]])


# ---------------------------------------------------------------------- deform_conv2d


def _bilinear(image, y, x):
    """torchvision's bilinear_interpolate, in float64 with Python floats."""
    height, width = image.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0
    y_low, x_low = math.floor(y), math.floor(x)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx

    def at(i, j):
        return float(image[i, j]) if 0 <= i < height and 0 <= j < width else 0.0

    return (
        hy * hx * at(y_low, x_low)
        + hy * lx * at(y_low, x_low + 1)
        + ly * hx * at(y_low + 1, x_low)
        + ly * lx * at(y_low + 1, x_low + 1)
    )


def naive_deform(x, offset, weight, bias, mask, stride, padding, dilation):
    """A direct float64 loop over torchvision's definition."""
    n, c_in, _, _ = x.shape
    c_out, cg, kh, kw = weight.shape
    groups = c_in // cg
    og = c_out // groups
    _, off_ch, out_h, out_w = offset.shape
    offset_groups = off_ch // (2 * kh * kw)
    cpo = c_in // offset_groups
    result = np.zeros((n, c_out, out_h, out_w))
    for b in range(n):
        columns = np.zeros((c_in, kh, kw, out_h, out_w))
        for c in range(c_in):
            g_off = c // cpo
            for i in range(kh):
                for j in range(kw):
                    tap = i * kw + j
                    for oy in range(out_h):
                        for ox in range(out_w):
                            dy = float(offset[b, 2 * (g_off * kh * kw + tap), oy, ox])
                            dx = float(offset[b, 2 * (g_off * kh * kw + tap) + 1, oy, ox])
                            y = oy * stride[0] - padding[0] + i * dilation[0] + dy
                            xx = ox * stride[1] - padding[1] + j * dilation[1] + dx
                            m = (
                                1.0
                                if mask is None
                                else float(mask[b, g_off * kh * kw + tap, oy, ox])
                            )
                            columns[c, i, j, oy, ox] = m * _bilinear(x[b, c], y, xx)
        for co in range(c_out):
            g = co // og
            cols = columns[g * cg : (g + 1) * cg]  # (cg, kh, kw, oh, ow)
            result[b, co] = np.einsum("cij,cijyx->yx", weight[co].astype(np.float64), cols)
            if bias is not None:
                result[b, co] += float(bias[co])
    return result


def _random_deform_case(rng):
    while True:  # redraw until the dilated kernel fits the padded input
        case = _draw_deform_case(rng)
        if all(
            (k - 1) * d + 1 <= n + 2 * p
            for k, d, n, p in zip(
                case["kernel"], case["dilation"], case["in_size"], case["padding"]
            )
        ):
            return case


def _draw_deform_case(rng):
    groups = int(rng.choice([1, 2]))
    offset_groups = int(rng.choice([1, 3]))
    c_in = groups * offset_groups * int(rng.choice([1, 2]))
    kernel = tuple(int(k) for k in rng.choice([1, 2, 3], size=2))
    return {
        "batch": int(rng.choice([1, 3])),
        "c_in": c_in,
        "c_out": groups * int(rng.choice([1, 3])),
        "groups": groups,
        "offset_groups": offset_groups,
        "in_size": tuple(int(s) for s in rng.choice([3, 5, 7], size=2)),
        "kernel": kernel,
        "stride": tuple(int(s) for s in rng.choice([1, 2], size=2)),
        "padding": tuple(int(p) for p in rng.choice([0, 1, 2], size=2)),
        "dilation": tuple(int(d) for d in rng.choice([1, 2], size=2)),
        "mask": bool(rng.integers(0, 2)),
        "bias": bool(rng.integers(0, 2)),
    }


_drng = np.random.default_rng(2_718)
DEFORM_CASES = [
    {
        "batch": 2,
        "c_in": 6,
        "c_out": 4,
        "groups": 2,
        "offset_groups": 3,
        "in_size": (5, 7),
        "kernel": (3, 3),
        "stride": (1, 2),
        "padding": (1, 2),
        "dilation": (2, 1),
        "mask": True,
        "bias": True,
    },
    {
        "batch": 1,
        "c_in": 3,
        "c_out": 5,
        "groups": 1,
        "offset_groups": 1,
        "in_size": (7, 5),
        "kernel": (2, 3),
        "stride": (2, 1),
        "padding": (0, 1),
        "dilation": (1, 1),
        "mask": False,
        "bias": True,
    },
] + [_random_deform_case(_drng) for _ in range(5)]


def _deform_inputs(case, dtype, rng, *, spread=3.0, quantised=True):
    n, c_in = case["batch"], case["c_in"]
    kh, kw = case["kernel"]
    geom = conv_geometry(
        case["in_size"],
        case["kernel"],
        stride=case["stride"],
        padding=case["padding"],
        dilation=case["dilation"],
        groups=case["groups"],
    )
    taps = kh * kw
    x = rng.standard_normal((n, c_in, *case["in_size"])).astype(dtype)
    offset = rng.uniform(-spread, spread, (n, 2 * case["offset_groups"] * taps, *geom.out_size))
    if quantised:
        offset = np.round(offset * 8) / 8  # exact coordinates and bilinear weights
    offset = offset.astype(dtype)
    weight = rng.standard_normal((case["c_out"], c_in // case["groups"], kh, kw)).astype(dtype)
    bias = rng.standard_normal(case["c_out"]).astype(dtype) if case["bias"] else None
    mask = (
        rng.uniform(-1, 2, (n, case["offset_groups"] * taps, *geom.out_size)).astype(dtype)
        if case["mask"]
        else None
    )
    return (x, offset, weight, bias, mask), geom


def _deform_reference(case, arrays):
    x, offset, weight, bias, mask = arrays
    kwargs = {"stride": case["stride"], "padding": case["padding"], "dilation": case["dilation"]}
    x64, offset64, weight64, bias64, mask64 = f64(x, offset, weight, bias, mask)
    abs_x, abs_weight, abs_bias, abs_mask = abs64(x, weight, bias, mask)
    with gpuconv.use_backend("numpy"):
        ref = gpuconv.deform_conv2d(x64, offset64, weight64, bias64, mask=mask64, **kwargs)
        scale = gpuconv.deform_conv2d(
            abs_x, offset64, abs_weight, abs_bias, mask=abs_mask, **kwargs
        )
    kh, kw = case["kernel"]
    terms = (case["c_in"] // case["groups"]) * kh * kw
    return ref, scale, terms


def _deform_on_emulate(case, x, offset, weight, bias, mask):
    """gpuconv.deform_conv2d with ``case``'s geometry on the emulate backend."""
    with gpuconv.use_backend("emulate"):
        return gpuconv.deform_conv2d(
            x,
            offset,
            weight,
            bias,
            stride=case["stride"],
            padding=case["padding"],
            dilation=case["dilation"],
            mask=mask,
        )


def _assert_deform(got, ref, scale, dtype, terms):
    # sampling: 4 products + 3 sums + mask (5 u_acc) and the rounding of each column entry to
    # the column type (u_out * scale in all); GEMM: (terms + 2) u_acc; the product's rounding
    # (u_out * scale) and the bias add's (u_out * |ref|).
    assert_within(got, ref, scale, dtype, terms, extra_terms=7, scaled_out=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", DEFORM_CASES, ids=lambda c: "v2" if c["mask"] else "v1")
def test_deform_matches_numpy(emulate, case, dtype):
    rng = np.random.default_rng(13)
    arrays, _ = _deform_inputs(case, dtype, rng)
    x, offset, weight, bias, mask = arrays
    got = _deform_on_emulate(case, x, offset, weight, bias, mask)
    ref, scale, terms = _deform_reference(case, arrays)
    _assert_deform(got, ref, scale, dtype, terms)


@pytest.mark.parametrize("case", DEFORM_CASES[:3], ids=lambda c: "v2" if c["mask"] else "v1")
def test_deform_matches_naive_torchvision_loop(emulate, case):
    rng = np.random.default_rng(17)
    # unquantised offsets: generic bilinear weights, compared in float64
    arrays, _ = _deform_inputs(case, np.float64, rng, quantised=False)
    x, offset, weight, bias, mask = arrays
    got = _deform_on_emulate(case, x, offset, weight, bias, mask)
    expected = naive_deform(
        x, offset, weight, bias, mask, case["stride"], case["padding"], case["dilation"]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_deform_sampling_boundaries(emulate):
    # One 1x1 tap, identity weight: the output is the sampled image. Sampling points at and
    # around the edges: y or x <= -1 or >= size give 0; in (-1, 0) and (size - 1, size) only
    # the in-image corners contribute.
    height, width = 3, 4
    image = np.arange(1.0, 1.0 + height * width).reshape(1, 1, height, width)
    points = [
        (-1.0, 0.0),
        (-0.75, 0.0),
        (0.0, -1.0),
        (0.0, -0.5),
        (2.0, 3.0),
        (2.5, 0.0),
        (3.0, 1.0),
        (0.0, 3.25),
        (1.0, 4.0),
        (-0.999, 3.999),
        (1.5, 1.5),
        (-7.0, 9.0),
    ]
    out_w = len(points)
    x = np.zeros((1, 1, height, width))
    x[...] = image
    # A 1 x out_w output: stride `height` leaves one row, high padding of the width adds
    # columns; output (0, ox) then samples (dy, ox + dx), so choose offsets landing on points.
    offset = np.zeros((1, 2, 1, out_w))
    for ox, (py, px) in enumerate(points):
        offset[0, 0, 0, ox] = py
        offset[0, 1, 0, ox] = px - ox
    geometry = {"stride": (height, 1), "padding": ((0, 0), (0, out_w - width))}
    weight = np.ones((1, 1, 1, 1))
    with gpuconv.use_backend("emulate"):
        got = gpuconv.deform_conv2d(x, offset, weight, **geometry)
    expected = np.array([_bilinear(image[0, 0], py, px) for py, px in points])
    assert got.shape == (1, 1, 1, out_w)
    np.testing.assert_allclose(got[0, 0, 0], expected, rtol=1e-14, atol=1e-14)
    assert expected[0] == 0 and expected[2] == 0 and expected[6] == 0 and expected[8] == 0


def test_deform_never_reads_outside_corners(emulate):
    # torchvision does not read corners outside the image, so an inf elsewhere cannot leak
    # into a sample whose in-image corners are finite. Pixel (0, 0) is inf; samples near the
    # far corner and fully outside must stay finite.
    x = np.ones((1, 1, 4, 4))
    x[0, 0, 0, 0] = np.inf
    offset = np.zeros((1, 2, 4, 4))
    offset[0, 0] = 10.0  # every sample far below the image: zero
    offset[0, 0, 3, 3] = 0.5  # (3.5, 3): bottom-right rows, one corner outside
    offset[0, 1, 3, 3] = 0.25
    with gpuconv.use_backend("emulate"):
        got = gpuconv.deform_conv2d(x, offset, np.ones((1, 1, 1, 1)))
    expected = naive_deform(x, offset, np.ones((1, 1, 1, 1)), None, None, (1, 1), (0, 0), (1, 1))
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got, expected)


# chunking over images and positions, channel slices (also not dividing the offset group),
# grid-stride loop, and both index types
DEFORM_PLANS = [
    {"workspace_bytes": 1},  # one image, one position per chunk
    {"workspace_bytes": 10**4},  # several positions per chunk
    {"workspace_bytes": 3 * 10**4},  # several images per chunk
    {"workspace_bytes": 2 * 60 * 12 * 8},  # float64: 2 images per chunk, the last holds 1
    {"channel_slice": 1},
    {"channel_slice": 3, "max_grid_x": 2},
    {"index": np.int64},
    {"index": np.int64, "workspace_bytes": 5000, "channel_slice": 2},
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "hooks", DEFORM_PLANS, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items())
)
@pytest.mark.parametrize("with_mask", [False, True], ids=["v1", "v2"])
def test_deform_every_instantiation_and_chunking(emulate, hooks, dtype, with_mask):
    case = {
        "batch": 3,
        "c_in": 10,
        "c_out": 6,
        "groups": 2,
        "offset_groups": 2,
        "in_size": (5, 7),
        "kernel": (3, 2),
        "stride": (1, 2),
        "padding": (1, 1),
        "dilation": (2, 1),
        "mask": with_mask,
        "bias": True,
    }
    rng = np.random.default_rng(19)
    arrays, geom = _deform_inputs(case, dtype, rng)
    x, offset, weight, bias, mask = arrays
    got = _deform.deform_conv2d(
        emulate, x, offset, weight, bias, mask, geom, case["offset_groups"], **hooks
    )
    ref, scale, terms = _deform_reference(case, arrays)
    _assert_deform(got, ref, scale, dtype, terms)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_deform_under_emulator_check(emulate, emulator_check, dtype):
    case = {
        "batch": 2,
        "c_in": 3,
        "c_out": 2,
        "groups": 1,
        "offset_groups": 3,
        "in_size": (3, 5),
        "kernel": (3, 3),
        "stride": (1, 1),
        "padding": (1, 1),
        "dilation": (1, 1),
        "mask": True,
        "bias": True,
    }
    rng = np.random.default_rng(23)
    # wide offsets: many samples fully or partly outside the image
    arrays, geom = _deform_inputs(case, dtype, rng, spread=5.0)
    x, offset, weight, bias, mask = arrays
    with emulator_check():
        v2 = _deform.deform_conv2d(
            emulate, x, offset, weight, bias, mask, geom, 3, workspace_bytes=2000, max_grid_x=1
        )
        v1 = _deform.deform_conv2d(emulate, x, offset, weight, None, None, geom, 3)
    ref, scale, terms = _deform_reference(case, arrays)
    _assert_deform(v2, ref, scale, dtype, terms)
    ref1, scale1, _ = _deform_reference(
        {**case, "mask": False, "bias": False}, (x, offset, weight, None, None)
    )
    _assert_deform(v1, ref1, scale1, dtype, terms)


def test_deform_chunking_helpers():
    assert _deform.chunking(5, 10, 4, 8, workspace_bytes=10**9) == (5, 10)
    assert _deform.chunking(5, 10, 4, 8, workspace_bytes=1) == (1, 1)
    assert _deform.channel_slicing(1, 10) == (1, 1)
    channel_slice, slices = _deform.channel_slicing(1000, 1)
    assert slices * channel_slice >= 1000 and (slices - 1) * channel_slice < 1000


# ----------------------------------------------------------------------------- matmul


def test_emulator_matmul_accumulates_float16_in_float32(emulate):
    # 4097 ones summed in float16 stop at 2048; in float32 they reach 4097, rounded to 4096
    a = np.ones((1, 4097), np.float16)
    product = emulate.executor.matmul(a, a.T)
    assert product.dtype == np.float16
    assert float(product[0, 0]) == 4096.0
