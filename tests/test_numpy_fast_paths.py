"""The NumPy backend's fast paths against small independent references.

The backend computes through stride phases, wide rows, per-phase transposed convs, row
gathers and a Toeplitz GEMM, chunked. Here each path is forced
(tiny chunks, strides larger than the kernel, ...) and compared, in
float64, with a reference that shares none of that machinery: one shifted-slice
multiply-add per kernel tap on the ``numpy.pad``-ded input, a scatter-add per tap for the
transpose, a per-sample loop for deformable sampling, ``numpy.convolve`` for 1-D.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import gpuconv
from gpuconv.backends import numpy_backend

PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def ref_conv(x, w, stride, padding, dilation, groups, mode):
    """Direct convolution: for each tap, a strided slice of the padded input times w."""
    nd = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding], mode=PAD_MODE[mode])
    n = x.shape[0]
    c_out, cg = w.shape[:2]
    og = c_out // groups
    out_size = [(xp.shape[2 + d] - dilation[d] * (w.shape[2 + d] - 1) - 1) // stride[d] + 1
                for d in range(nd)]
    out = np.zeros((n, c_out, *out_size))
    for tap in itertools.product(*[range(k) for k in w.shape[2:]]):
        window = xp[(slice(None), slice(None)) + tuple(
            slice(t * dl, t * dl + (o - 1) * s + 1, s)
            for t, dl, o, s in zip(tap, dilation, out_size, stride))]
        for gi in range(groups):
            xs = window[:, gi * cg:(gi + 1) * cg]
            ws = w[(slice(gi * og, (gi + 1) * og), slice(None)) + tap]  # (og, cg)
            out[:, gi * og:(gi + 1) * og] += np.einsum("oc,nc...->no...", ws, xs)
    return out


def ref_conv_transpose(x, w, stride, padding, output_padding, dilation, groups):
    """Scatter-add: input i, tap t lands at full position i * stride + t * dilation."""
    n, c_in = x.shape[:2]
    og = w.shape[1]
    cg = c_in // groups
    full = [(i - 1) * s + dl * (k - 1) + 1
            for i, k, s, dl in zip(x.shape[2:], w.shape[2:], stride, dilation)]
    size = [f + op for f, op in zip(full, output_padding)]
    out = np.zeros((n, groups * og, *size))
    for tap in itertools.product(*[range(k) for k in w.shape[2:]]):
        dst = (slice(None), slice(None)) + tuple(
            slice(t * dl, t * dl + (i - 1) * s + 1, s)
            for t, dl, s, i in zip(tap, dilation, stride, x.shape[2:]))
        for gi in range(groups):
            contrib = np.einsum("co,nc...->no...", w[(slice(gi * cg, (gi + 1) * cg), slice(None)) + tap],
                                x[:, gi * cg:(gi + 1) * cg])
            out[(slice(None), slice(gi * og, (gi + 1) * og)) + dst[2:]] += contrib
    crop = tuple(slice(p, s - p) for p, s in zip(padding, size))
    return out[(slice(None), slice(None)) + crop]


def ref_deform(x, offset, w, mask, padding):
    """torchvision's definition, one sample at a time (stride 1, dilation 1, groups 1)."""
    n, c, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    ho, wo = offset.shape[2:]
    og = offset.shape[1] // (2 * kh * kw)
    cpo = c // og
    out = np.zeros((n, c_out, ho, wo))
    for b, oy, ox in itertools.product(range(n), range(ho), range(wo)):
        cols = np.zeros((c, kh, kw))
        for ch, i, j in itertools.product(range(c), range(kh), range(kw)):
            g, k = ch // cpo, i * kw + j
            y = oy - padding + i + offset[b, g * 2 * kh * kw + 2 * k, oy, ox]
            xx = ox - padding + j + offset[b, g * 2 * kh * kw + 2 * k + 1, oy, ox]
            if not (-1 < y < h and -1 < xx < wd):
                continue
            y0, x0 = int(np.floor(y)), int(np.floor(xx))
            val = 0.0
            for yy, xc in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                if 0 <= yy < h and 0 <= xc < wd:
                    val += (1 - abs(y - yy)) * (1 - abs(xx - xc)) * x[b, ch, yy, xc]
            cols[ch, i, j] = val * (mask[b, g * kh * kw + k, oy, ox] if mask is not None else 1)
        out[b, :, oy, ox] = np.einsum("ocij,cij->o", w, cols)
    return out


@pytest.fixture(params=["default", "tiny"])
def chunks(request, monkeypatch):
    if request.param == "tiny":  # every chunk one output row (or one block) at most
        monkeypatch.setattr(numpy_backend, "CHUNK_BYTES", 64)
        monkeypatch.setattr(numpy_backend, "DEPTHWISE_BLOCK_BYTES", 64)
    return request.param


CONV_CASES = [
    # size, kernel, stride, padding, dilation, groups, mode
    ((9, 8), (3, 3), (1, 1), (1, 1), (1, 1), 1, "zeros"),
    ((11, 10), (7, 5), (2, 3), (3, 2), (1, 1), 1, "zeros"),
    ((10, 9), (3, 2), (2, 1), (2, 1), (2, 3), 2, "reflect"),
    ((7, 8), (2, 3), (3, 2), (1, 1), (1, 1), 1, "circular"),
    ((12,), (9,), (1,), (4,), (1,), 1, "replicate"),
    ((13,), (4,), (3,), (2,), (2,), 2, "zeros"),
    ((5, 6, 7), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "zeros"),
    ((6, 5, 7), (2, 3, 2), (2, 1, 3), (1, 0, 1), (1, 2, 1), 2, "reflect"),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{len(c[0])}d-s{c[2]}-{c[6]}")
def test_conv_matches_direct_reference(case, chunks):
    size, kernel, stride, padding, dilation, groups, mode = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2 * groups, *size))
    w = rng.standard_normal((3 * groups, 2, *kernel))
    b = rng.standard_normal(3 * groups)
    got = gpuconv.conv(x, w, b, stride=stride, padding=padding, dilation=dilation,
                       groups=groups, padding_mode=mode)
    expected = ref_conv(x, w, stride, padding, dilation, groups, mode)
    expected += b.reshape((1, -1) + (1,) * len(size))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{len(c[0])}d-s{c[2]}-{c[6]}")
def test_depthwise_matches_direct_reference(case, chunks):
    size, kernel, stride, padding, dilation, _, mode = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, *size))
    w = rng.standard_normal((6, 1, *kernel))  # multiplier 2
    got = gpuconv.depthwise_conv(x, w, stride=stride, padding=padding, dilation=dilation,
                                 padding_mode=mode)
    expected = ref_conv(x, w, stride, padding, dilation, 3, mode)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [
    # size, kernel, stride, padding, output_padding, dilation, groups
    ((5, 4), (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1),
    ((4, 3), (2, 3), (3, 2), (0, 2), (2, 1), (1, 1), 2),   # stride > kernel: tapless phases
    ((3, 5), (3, 2), (2, 3), (2, 1), (1, 2), (2, 3), 1),   # dilation and stride share factors
    ((6,), (5,), (4,), (3,), (3,), (2,), 2),
    ((3, 2, 4), (2, 3, 2), (2, 1, 3), (1, 1, 0), (1, 0, 2), (1, 1, 1), 1),
], ids=lambda c: f"{len(c[0])}d-s{c[2]}-d{c[5]}")
def test_conv_transpose_matches_scatter_reference(case, chunks):
    size, kernel, stride, padding, output_padding, dilation, groups = case
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2 * groups, *size))
    w = rng.standard_normal((2 * groups, 3, *kernel))
    b = rng.standard_normal(3 * groups)
    got = gpuconv.conv_transpose(x, w, b, stride=stride, padding=padding,
                                 output_padding=output_padding, dilation=dilation,
                                 groups=groups)
    expected = ref_conv_transpose(x, w, stride, padding, output_padding, dilation, groups)
    expected += b.reshape((1, -1) + (1,) * len(size))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("offset_groups", [1, 2])
@pytest.mark.parametrize("with_mask", [True, False])
def test_deform_matches_per_sample_reference(offset_groups, with_mask, chunks):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 5, 6))
    w = rng.standard_normal((3, 4, 3, 3))
    offset = rng.uniform(-3, 3, (2, 2 * offset_groups * 9, 5, 6))
    offset[:, ::5] = np.round(offset[:, ::5])  # integer offsets: corners on the border
    mask = rng.uniform(0, 1, (2, offset_groups * 9, 5, 6)) if with_mask else None
    got = gpuconv.deform_conv2d(x, offset, w, padding=1, mask=mask)
    np.testing.assert_allclose(got, ref_deform(x, offset, w, mask, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("func", ["convolve", "correlate"])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("taps", [8, 101, 128])
def test_long_signal_gemm_path_matches_numpy(func, mode, taps, monkeypatch):
    monkeypatch.setattr(numpy_backend, "CHUNK_BYTES", 4096)  # several chunks of blocks
    rng = np.random.default_rng(4)
    a = rng.standard_normal(20_011)
    v = rng.standard_normal(taps)
    got = getattr(gpuconv, func)(a, v, mode)
    expected = getattr(np, func)(a, v, mode)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-11 * np.abs(expected).max())
    # float32 stays float32, with float32 accuracy
    got32 = getattr(gpuconv, func)(a.astype(np.float32), v.astype(np.float32), mode)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
