"""The NumPy backend: the CPU fallback and the oracle every kernel is tested against.

Written independently of the CUDA kernels, from NumPy building blocks: ``numpy.pad`` for
the padding modes, contiguous slice copies for im2col, BLAS (``numpy.matmul``) for the
contractions. No Python loop runs over output elements; the loops run over kernel taps,
groups, stride phases and cache-sized chunks.

How conv and depthwise_conv read their input (the *flat plan*)
---------------------------------------------------------------
The padded input, of size ``P_d`` per spatial dim, is split by stride into ``prod(stride)``
*phases* (phase ``r`` holds padded positions ``r_d + stride_d * q_d``, ``q_d < Q_d =
ceil(P_d / stride_d)``), and each phase is flattened. Kernel tap ``t`` sits at padded offset
``t_d * dilation_d = a_d * stride_d + r_d``, so for output ``o`` it reads phase ``r`` at
``o + a``: a stride-1 access. Flattened, the outputs of whole dim-1 rows therefore read ONE
contiguous slice of one phase, ``phase[off(t) : off(t) + rows * Q_2 * ... * Q_n]``, if the
outputs are laid out "wide", with row length ``Q_d`` instead of ``out_d`` in dims >= 2. The
extra columns are computed and discarded (a few percent of the work for typical shapes;
for stride 1 ``Q_d = out_d + (k_d - 1) * dilation_d``).

* conv: per chunk, im2col is one contiguous copy per tap into ``cols (G, C/G, K, n, L)``
  and one GEMM per group, ``(C_out/G, C/G*K) @ (C/G*K, n*L)``, then one cropping copy into
  the result (bias added and dtype rounded in the same pass).
* depthwise_conv: per block of channels, the same im2col copies and a per-channel
  ``(mult, K) @ (K, L)`` contraction (``einsum``), then the same crop.
* conv_transpose: each stride phase of the *output* receives a fixed subset of the taps,
  so it is a stride-1 conv of the input with those taps reversed (no scatter-add); each
  phase runs through conv's path and writes its strided share of the result. Weights with
  inf or NaN, and strides of more than ``MAX_TRANSPOSE_PHASES`` phases, take the definition
  instead: one GEMM and one strided scatter-add per tap (:func:`_transpose_scatter`).
* deform_conv2d: per image, bilinear samples are whole rows of a channels-last copy of the
  input (one ``np.take`` for the 4 corners, ``einsum`` with the weights), then one GEMM.
* convolve/correlate (real, long): a blocked Toeplitz GEMM; NumPy's own loop otherwise.

Threads: only BLAS's. (Spreading the copies, ``take`` and ``einsum`` calls between GEMMs
over Python threads made them slower, measured on 2 cores: not all of them release the
GIL, and the threads fight BLAS's spinning workers.)

Memory is bounded: every temporary (phases, im2col columns, wide output, sampling buffers)
is built for a chunk of the batch, or of the outermost output dim, sized to stay under
``WORKSPACE_BYTES`` (and, for speed, under ``CHUNK_BYTES``). A single output row larger than
that still runs, one row at a time.

float16 and bfloat16 inputs are computed in float32 (:func:`gpuconv._dtypes.accumulation_dtype`)
and rounded once, when the result is written. This is the only backend that computes bfloat16
so far (its ``dtypes``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import _layout, _shapes
from .._dtypes import CONV_DTYPES, accumulation_dtype, is_bfloat16
# WORKSPACE_BYTES bounds the temporaries of one chunk (im2col columns, wide output, input
# phases, deformable sampling buffers).
from .._limits import WORKSPACE_BYTES
from .._shapes import ConvGeometry
from .numpy_grad import GradMixin

#: Preferred chunk size for conv's im2col, in bytes: small enough to stay in the last-level
#: cache between the im2col copy and the GEMM that reads it.
CHUNK_BYTES = 16 * 2**20

#: Working-set target, in bytes, of one depthwise channel block (its im2col columns and
#: outputs): a share of the last-level cache.
DEPTHWISE_BLOCK_BYTES = 1024 * 1024


#: conv_transpose with more stride phases than this (``prod(stride)``) scatters per tap.
MAX_TRANSPOSE_PHASES = 1024


_NP_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


# ------------------------------------------------------------------ flat plan


@dataclass(frozen=True)
class _FlatPlan:
    """Where each kernel tap reads in the flattened input phases (see module docstring)."""

    inner: tuple[int, ...]  # (Q_2, ..., Q_n): phase extents of the dims after the first
    row_len: int            # prod(inner): flat length of one dim-1 row of a phase
    reach: int              # a_1 of the last tap: phase rows read below an output row
    nphase: int             # prod(stride)
    taps: tuple[tuple[int, int], ...]  # per tap, in C order over the kernel: (phase, offset)


def _flat_plan(geom: ConvGeometry) -> _FlatPlan:
    stride = geom.stride
    q = [-(-p // s) for p, s in zip(geom.padded_size, stride)]
    inner = tuple(q[1:])
    # flat strides of a phase for dims 1..n (dim 1's is the row length)
    flat = [math.prod(q[d + 1:]) for d in range(geom.ndim)]
    taps = []
    for tap in np.ndindex(*geom.kernel):
        pos = [t * d for t, d in zip(tap, geom.dilation)]
        phase = int(np.ravel_multi_index([p % s for p, s in zip(pos, stride)], stride))
        offset = sum((p // s) * f for p, s, f in zip(pos, stride, flat))
        taps.append((phase, offset))
    reach = (geom.kernel[0] - 1) * geom.dilation[0] // stride[0]
    return _FlatPlan(inner, math.prod(inner), reach, math.prod(stride), tuple(taps))


def _phase_rows(x, geom: ConvGeometry, plan: _FlatPlan, row0: int, rows: int, dtype):
    """The flattened phases that output rows ``[row0, row0 + rows)`` of dim 1 read.

    Parameters
    ----------
    x : ndarray, shape (n, C, *in_size)
        The (unpadded) input images of this chunk.

    Returns
    -------
    ndarray, shape (n, C, nphase, (rows + reach + 1) * row_len), dtype ``dtype``
        Phase row ``j`` holds padded dim-1 row ``(row0 + j) * stride_1 + r_1``. The one
        extra row keeps the last tap's slice in bounds; it and every position past the
        padded input read as zero and only feed discarded wide columns.
    """
    n, c = x.shape[:2]
    stride = geom.stride
    span = rows + plan.reach + 1
    first = row0 * stride[0]  # first padded dim-1 row of the chunk
    extent = (span * stride[0],) + tuple(q * s for q, s in zip(plan.inner, stride[1:]))
    buf = np.zeros((n, c) + extent, dtype=dtype)  # (n, C, padded rows of the chunk, ...)
    lo, size = geom.pad_lo, geom.in_size
    if geom.padding_mode == "zeros":
        i0 = max(first - lo[0], 0)
        i1 = min(first + extent[0] - lo[0], size[0])
        if i1 > i0:
            dst = (slice(None), slice(None), slice(i0 + lo[0] - first, i1 + lo[0] - first))
            dst += tuple(slice(a, a + b) for a, b in zip(lo[1:], size[1:]))
            buf[dst] = x[:, :, i0:i1]
    else:
        mode = _NP_PAD_MODE[geom.padding_mode]
        # padded dim-1 row -> input row, by padding the row numbers themselves
        row_map = np.pad(np.arange(size[0]), (lo[0], geom.pad_hi[0]), mode=mode)
        row_map = row_map[first:first + extent[0]]
        part = np.take(x, row_map, axis=2)
        part = np.pad(part, [(0, 0)] * 3 + list(zip(lo[1:], geom.pad_hi[1:])), mode=mode)
        buf[tuple(slice(0, s) for s in part.shape)] = part
    if plan.nphase == 1:
        return buf.reshape(n, c, 1, -1)
    # (n, C, span, s_1, Q_2, s_2, ...) -> (n, C, s_1, s_2, ..., span, Q_2, ...): one copy
    split = (n, c) + tuple(v for pair in zip((span,) + plan.inner, stride) for v in pair)
    nd = geom.ndim
    order = (0, 1) + tuple(3 + 2 * d for d in range(nd)) + tuple(2 + 2 * d for d in range(nd))
    return buf.reshape(split).transpose(order).reshape(n, c, plan.nphase, -1)


def _row_chunks(n: int, out_rows: int, bytes_per_row: int, budget: int):
    """Yield (batch slice, first row, row count): whole images while one fits ``budget``."""
    per_image = max(bytes_per_row * out_rows, 1)
    if per_image <= budget:
        step = max(1, budget // per_image)
        for n0 in range(0, n, step):
            yield slice(n0, min(n, n0 + step)), 0, out_rows
        return
    rows = max(1, budget // max(bytes_per_row, 1))
    for n0 in range(n):
        for r0 in range(0, out_rows, rows):
            yield slice(n0, n0 + 1), r0, min(rows, out_rows - r0)


def _chunks(n: int, first_out: int, bytes_per_position: int):
    """Yield (batch slice, first-output-dim slice) pairs whose buffer fits the workspace."""
    for bs, r0, rows in _row_chunks(n, first_out, bytes_per_position, WORKSPACE_BYTES):
        yield bs, slice(r0, r0 + rows)


def _write(dst, src, bias):
    """``dst[...] = src + bias`` in one pass (bias per channel, axis 1; rounds to dst's dtype)."""
    if bias is None:
        np.copyto(dst, src, casting="same_kind")
    else:
        np.add(src, bias.reshape((1, -1) + (1,) * (src.ndim - 2)), out=dst, casting="same_kind")


def _add_bias(result, bias):
    if bias is not None:
        result += bias.reshape((1, -1) + (1,) * (result.ndim - 2))


def _conv_into(result, x, weight, bias, geom: ConvGeometry):
    """``result[...] = conv(x, weight) + bias``; ``result`` may be a strided view.

    ``weight`` and ``bias`` are in the compute dtype; ``x`` and ``result`` in any float dtype.
    """
    cdt = weight.dtype
    n, c_in = x.shape[:2]
    c_out = weight.shape[0]
    g = geom.groups
    cg, og = c_in // g, c_out // g
    if all(k == 1 for k in geom.kernel) and not any(geom.pad_lo + geom.pad_hi) and all(
        s == 1 for s in geom.stride
    ):
        # 1x1 convolution: a plain matrix product per group.
        # (G, og, cg) @ (N, G, cg, P) -> (N, G, og, P)
        xr = x.astype(cdt, copy=False).reshape(n, g, cg, -1)
        if result.dtype == cdt and result.flags.c_contiguous:
            np.matmul(weight.reshape(g, og, cg), xr, out=result.reshape(n, g, og, -1))
            _add_bias(result, bias)
        else:
            product = np.matmul(weight.reshape(g, og, cg), xr).reshape(result.shape)
            _write(result, product, bias)
        return
    plan = _flat_plan(geom)
    taps = len(plan.taps)
    w = weight.reshape(g, og, cg * taps)  # (G, og, cg*K), tap-minor like cols below
    crop = (slice(None),) * 3 + tuple(slice(0, o) for o in geom.out_size[1:])
    # bytes per output row of dim 1: im2col columns + wide output + input phases
    per_row = (c_in * taps + c_out + c_in * plan.nphase) * plan.row_len * cdt.itemsize
    budget = min(WORKSPACE_BYTES, CHUNK_BYTES)
    chunks = list(_row_chunks(n, geom.out_size[0], per_row, budget))
    most = max((bs.stop - bs.start) * rows for bs, _, rows in chunks) * plan.row_len
    cols_buf = np.empty(c_in * taps * most, dtype=cdt)
    wide_buf = np.empty(c_out * most, dtype=cdt)
    for bs, r0, rows in chunks:
        nb = bs.stop - bs.start
        length = rows * plan.row_len  # wide outputs per image in this chunk
        phases = _phase_rows(x[bs], geom, plan, r0, rows, cdt)  # (n, C, phases, flat)
        # im2col, one contiguous copy per tap: cols[g, c, t, i, :] = phase slice
        # (not spread over threads: between GEMMs, BLAS's spinning workers and ours fight)
        cols = cols_buf[: c_in * taps * nb * length].reshape(g, cg, taps, nb, length)
        for t, (phase, offset) in enumerate(plan.taps):
            src = phases[:, :, phase, offset:offset + length]  # (n, C, L)
            cols[:, :, t] = src.reshape(nb, g, cg, length).transpose(1, 2, 0, 3)
        # (G, og, cg*K) @ (G, cg*K, n*L) -> (G, og, n*L)
        wide = wide_buf[: c_out * nb * length].reshape(g, og, nb * length)
        np.matmul(w, cols.reshape(g, cg * taps, nb * length), out=wide)
        # (C_out, n, rows, *inner) -> crop -> (n, C_out, rows, *out[1:])
        wide = wide.reshape(c_out, nb, rows, *plan.inner)[crop].swapaxes(0, 1)
        _write(result[bs, :, r0:r0 + rows], wide, bias)


def _transpose_phase_1d(size, k, stride, dilation, crop_lo, out, residue):
    """One dim of the stride-phase split of a transposed convolution.

    The outputs ``o`` with ``(o + crop_lo) % stride == residue`` (``o = first, first +
    stride, ...``: ``count`` of them) receive only the taps ``t`` with ``t * dilation %
    stride == residue``, and output ``u`` of the phase reads input ``u + q0 - a_t`` with
    ``a_t = t * dilation // stride``: a stride-1 correlation of the input, padded by
    ``pad_lo = a_max - q0`` at the low end (negative: cropped), with those taps in reverse
    order, whose offsets ``a_max - a_t`` step by a constant (its dilation).

    Returns ``(first, count, taps in correlation order or None, dilation, pad_lo)``.
    """
    first = (residue - crop_lo) % stride
    count = len(range(first, out, stride))
    taps = [t for t in range(k) if t * dilation % stride == residue]
    if count == 0 or not taps:
        return first, count, None, 1, 0
    a = [t * dilation // stride for t in taps]
    q0 = (first + crop_lo - residue) // stride
    step = (a[-1] - a[0]) // (len(taps) - 1) if len(taps) > 1 else 1
    return first, count, taps[::-1], step, a[-1] - q0


def _window(size, pad_lo, count, reach):
    """Input slice and non-negative (lo, hi) padding for ``count`` stride-1 outputs that read
    padded positions ``u .. u + reach`` of the input padded by ``pad_lo`` (negative: cropped);
    None when no output reads any input."""
    pad_hi = count + reach - pad_lo - size
    start, stop = max(0, -pad_lo), size - max(0, -pad_hi)
    if stop <= start:
        return None
    return slice(start, stop), (max(pad_lo, 0), max(pad_hi, 0))


def _tap_range(size: int, offset: int, stride: int, out: int):
    """Inputs ``i`` of one dim whose scatter target ``i * stride + offset`` lies in
    ``[0, out)``: ``(input slice, output slice)``, or None when there are none."""
    i0 = max(0, -(offset // stride))               # ceil(-offset / stride), at least 0
    i1 = min(size, -((offset - out) // stride))    # ceil((out - offset) / stride)
    if i1 <= i0:
        return None
    return slice(i0, i1), slice(i0 * stride + offset, (i1 - 1) * stride + offset + 1, stride)


def _transpose_scatter(result, x, weight, bias, geom: ConvGeometry):
    """``result[...] = conv_transpose(x, weight) + bias`` by its definition: every input
    cell times every tap, added where it lands inside the output (one GEMM and one strided
    add per tap). Used for weights holding inf or NaN, where the phase convolutions'
    zero padding would turn ``0 * inf`` into NaN at outputs no such tap reaches.

    ``weight`` (C_in, C_out/G, *k) and ``bias`` are in the compute dtype.
    """
    n, c_in = x.shape[:2]
    g = geom.groups
    cg, og = c_in // g, weight.shape[1]
    cdt = weight.dtype
    acc = np.zeros((n, g * og, *geom.out_size), dtype=cdt)
    w = weight.reshape(g, cg, og, -1)  # (G, cg, og, K)
    for k, tap in enumerate(np.ndindex(*geom.kernel)):
        ranges = [_tap_range(size, t * d - lo, s, out) for size, t, s, d, lo, out in zip(
            geom.in_size, tap, geom.stride, geom.dilation, geom.pad_lo, geom.out_size)]
        if any(r is None for r in ranges):
            continue
        src, dst = zip(*ranges)
        part = x[(slice(None), slice(None)) + src].astype(cdt, copy=False)
        shape = part.shape[2:]
        # (G, og, cg) @ (N, G, cg, P') -> (N, G, og, P')
        product = np.matmul(w[..., k].transpose(0, 2, 1), part.reshape(n, g, cg, -1))
        acc[(slice(None), slice(None)) + dst] += product.reshape(n, g * og, *shape)
    _write(result, acc, bias)


# ------------------------------------------------------------- channels-last


def _empty_channels_last(n: int, c: int, size, dtype):
    """An (n, c, *size) array with dense channels-last strides, and its (n, *size, c) view."""
    nhwc = np.empty((n, *size, c), dtype=dtype)
    return nhwc.transpose(0, nhwc.ndim - 1, *range(1, nhwc.ndim - 1)), nhwc


def _pointwise_channels_last(x, weight, bias, geom: ConvGeometry):
    """The 1x1 conv (no padding) of a dense channels-last ``x``, read in place: per group,
    ``x_nhwc[..., channels] @ weight.T`` (BLAS reads the strided rows of a stride > 1
    directly); the result is channels-last. ``weight``/``bias`` in the compute dtype."""
    cdt = weight.dtype
    n, c_in = x.shape[:2]
    c_out, g = weight.shape[0], geom.groups
    cg, og = c_in // g, c_out // g
    nd = x.ndim - 2
    xv = x.transpose(0, *range(2, x.ndim), 1)  # (N, *in, C): a C-contiguous view
    xv = xv[(slice(None),) + tuple(slice(None, None, s) for s in geom.stride)]
    xv = xv.astype(cdt, copy=False)  # (a dtype copy keeps the layout)
    result, _ = _empty_channels_last(n, c_out, geom.out_size, x.dtype)
    w = weight.reshape(g, og, cg)
    if g == 1:
        product = np.matmul(xv, w[0].T)
    else:
        product = np.empty((n, *geom.out_size, c_out), dtype=cdt)
        for gi in range(g):
            np.matmul(xv[..., gi * cg:(gi + 1) * cg], w[gi].T,
                      out=product[..., gi * og:(gi + 1) * og])
    _write(result, product.transpose(0, nd + 1, *range(1, nd + 1)), bias)
    return result


def _depthwise_channels_last(x, weight, bias, geom: ConvGeometry):
    """depthwise_conv of a dense channels-last ``x``, read in place (per-channel windows are
    strided views of the NHWC layout; the padding, if any, is one NHWC copy per chunk of
    images, as the NCHW path pads too): per kernel tap, ``acc += window * w[:, :, tap]`` over
    (n, rows, *out[1:], mult, C) blocks of output rows that stay in cache
    (``DEPTHWISE_BLOCK_BYTES``; C innermost, so every product runs along contiguous
    channels); the result is channels-last."""
    cdt = weight.dtype
    n, c = x.shape[:2]
    mult = weight.shape[0] // c
    w = weight.reshape(c, mult, -1)
    result, result_nhwc = _empty_channels_last(n, c * mult, geom.out_size, x.dtype)
    result_split = result_nhwc.reshape(*result_nhwc.shape[:-1], c, mult)  # a view
    bias = None if bias is None else bias.reshape(c, mult)
    pads = [(0, 0)] + list(zip(geom.pad_lo, geom.pad_hi)) + [(0, 0)]
    padded_image = c * math.prod(geom.padded_size) * cdt.itemsize
    row_bytes = 2 * c * mult * math.prod(geom.out_size[1:]) * cdt.itemsize  # acc + product
    step = max(1, min(WORKSPACE_BYTES, CHUNK_BYTES) // max(padded_image, 1))
    for n0 in range(0, n, step):
        bs = slice(n0, min(n, n0 + step))
        nb = bs.stop - bs.start
        xv = x[bs].transpose(0, *range(2, x.ndim), 1).astype(cdt, copy=False)  # (n, *in, C)
        if any(geom.pad_lo + geom.pad_hi):
            xv = np.pad(xv, pads, mode=_NP_PAD_MODE[geom.padding_mode])
        rows_step = max(1, DEPTHWISE_BLOCK_BYTES // max(nb * row_bytes, 1))
        out0, s0, d0 = geom.out_size[0], geom.stride[0], geom.dilation[0]
        for r0 in range(0, out0, rows_step):
            rows = min(rows_step, out0 - r0)
            shape = (nb, rows, *geom.out_size[1:], mult, c)
            acc = np.empty(shape, dtype=cdt)
            product = np.empty(shape, dtype=cdt)
            for t, tap in enumerate(np.ndindex(*geom.kernel)):
                first = tap[0] * d0 + r0 * s0
                window = xv[(slice(None), slice(first, first + (rows - 1) * s0 + 1, s0)) + tuple(
                    slice(k * d, k * d + (o - 1) * s + 1, s) for k, d, s, o in zip(
                        tap[1:], geom.dilation[1:], geom.stride[1:], geom.out_size[1:]))]
                for m in range(mult):
                    np.multiply(window, w[:, m, t], out=(acc if t == 0 else product)[..., m, :])
                if t:
                    acc += product
            dst = result_split[bs, r0:r0 + rows]  # (nb, rows, *out[1:], C, mult)
            if bias is None:
                np.copyto(dst, acc.swapaxes(-1, -2), casting="same_kind")
            else:
                np.add(acc.swapaxes(-1, -2), bias, out=dst, casting="same_kind")
    return result


class NumpyBackend(GradMixin):
    """Vectorised NumPy implementations of every operation (see module docstring).

    The gradients (``conv_input_grad``, ``conv_weight_grad``, ...) come from
    :class:`~gpuconv.backends.numpy_grad.GradMixin`.
    """

    name = "numpy"
    xp = np
    #: The conv-family dtypes it computes: float16/32/64, and bfloat16 with ml_dtypes.
    dtypes = CONV_DTYPES

    def reads_channels_last(self, method: str, geom: ConvGeometry) -> bool:
        """Whether ``method`` reads a dense channels-last ``x`` in place (no transposing
        copy; :func:`gpuconv._layout.reads_in_place`): the 1x1 conv without padding (a
        matrix product on the channel axis, any stride and groups) and depthwise_conv
        (per-channel windows, any geometry). Both return channels-last results then."""
        if method == "conv":
            return all(k == 1 for k in geom.kernel) and not any(geom.pad_lo + geom.pad_hi)
        return method == "depthwise_conv"

    # ------------------------------------------------------------------ conv
    def conv(self, x, weight, bias, geom: ConvGeometry):
        cdt = accumulation_dtype(x.dtype)
        if not x.flags.c_contiguous:
            if not (self.reads_channels_last("conv", geom) and _layout.is_dense_channels_last(x)):
                x = np.ascontiguousarray(x)  # (callers send only the arrays above)
        if not x.flags.c_contiguous:  # dense channels-last: read in place
            return _pointwise_channels_last(x, weight.astype(cdt, copy=False),
                                            None if bias is None else bias.astype(cdt, copy=False),
                                            geom)
        result = np.empty((x.shape[0], weight.shape[0], *geom.out_size), dtype=x.dtype)
        _conv_into(result, x, weight.astype(cdt, copy=False),
                   None if bias is None else bias.astype(cdt, copy=False), geom)
        return result

    # -------------------------------------------------------- conv_transpose
    def conv_transpose(self, x, weight, bias, geom: ConvGeometry):
        """Each stride phase of the output is a stride-1 conv of ``x`` (no scatter-add).

        Output phase ``r`` (``(o + pad_lo) % stride == r`` per dim) receives only the taps
        with ``t * dilation % stride == r``; see :func:`_transpose_phase_1d`. When every
        phase has the same number of taps at the same spacing (``kernel % stride == 0``,
        the usual upsampling layers), the phases differ only by a shift of the input, so
        they run as ONE conv with ``prod(stride) * C_out`` output channels over a common
        window; otherwise one conv per phase.
        """
        cdt = accumulation_dtype(x.dtype)
        n, c_in = x.shape[:2]
        g = geom.groups
        cg, og = c_in // g, weight.shape[1]
        result = np.empty((n, g * og, *geom.out_size), dtype=x.dtype)
        # to the conv layout (C_out, C_in/G, *k): (G, cg, og, *k) -> (G, og, cg, *k)
        w = weight.astype(cdt, copy=False).reshape(g, cg, og, *geom.kernel).swapaxes(1, 2)
        w = w.reshape(g * og, cg, *geom.kernel)
        bias = None if bias is None else bias.astype(cdt, copy=False)
        # The scatter instead of the phases: for inf/NaN weights (the phase convs would
        # multiply zero pads by them), and for strides with more phases than a Python loop
        # should visit (most of them empty; stride 10**6 took 25 s).
        if not np.isfinite(w).all() or math.prod(geom.stride) > MAX_TRANSPOSE_PHASES:
            _transpose_scatter(result, x, weight.astype(cdt, copy=False), bias, geom)
            return result
        per_dim = [
            [_transpose_phase_1d(*args, residue) for residue in range(args[2])]
            for args in zip(geom.in_size, geom.kernel, geom.stride, geom.dilation,
                            geom.pad_lo, geom.out_size)
        ]
        phases = [p for p in itertools.product(*per_dim) if all(d[1] for d in p)]
        if self._transpose_merged(x, w, bias, geom, per_dim, phases, result):
            return result
        for phase in phases:
            firsts, counts, taps, steps, pads_lo = zip(*phase)
            dst = result[(slice(None), slice(None)) + tuple(
                slice(f, None, s) for f, s in zip(firsts, geom.stride))]
            windows = [None if t is None else _window(size, lo, count, (len(t) - 1) * step)
                       for size, lo, count, t, step
                       in zip(geom.in_size, pads_lo, counts, taps, steps)]
            if any(win is None for win in windows):  # outputs no tap reaches
                _write(dst, np.zeros((1,) * dst.ndim, dtype=cdt), bias)
                continue
            cuts, pads = zip(*windows)
            sub_geom = _shapes.conv_geometry(
                tuple(c.stop - c.start for c in cuts), tuple(len(t) for t in taps), stride=1,
                padding=pads, dilation=steps, groups=g)
            sub_w = np.ascontiguousarray(w[(slice(None), slice(None)) + np.ix_(*taps)])
            _conv_into(dst, x[(slice(None), slice(None)) + cuts], sub_w, bias, sub_geom)
        return result

    @staticmethod
    def _transpose_merged(x, w, bias, geom, per_dim, phases, result) -> bool:
        """All phases as one conv over a common window, if their taps allow (see above)."""
        shape = []  # per dim: (common pad_lo, output extent, taps per phase, spacing)
        for residues in per_dim:
            live = [r for r in residues if r[1]]  # residues that own outputs
            if any(r[2] is None for r in live) or len({(len(r[2]), r[3]) for r in live}) > 1:
                return False
            lo = max(r[4] for r in live)
            extent = max(lo - r[4] + r[1] for r in live)  # shifted outputs, all phases
            shape.append((lo, extent, len(live[0][2]), live[0][3]))
        windows = [_window(size, lo, extent, (k - 1) * step)
                   for size, (lo, extent, k, step) in zip(geom.in_size, shape)]
        if any(win is None for win in windows):
            return False
        cuts, pads = zip(*windows)
        g, nph = geom.groups, len(phases)
        og = w.shape[0] // g
        sub_geom = _shapes.conv_geometry(
            tuple(c.stop - c.start for c in cuts), tuple(s[2] for s in shape), stride=1,
            padding=pads, dilation=tuple(s[3] for s in shape), groups=g)
        # weights of every phase, group-major: (G, phases, og, cg, *k')
        stacked = np.stack([w[(slice(None), slice(None)) + np.ix_(*[d[2] for d in phase])]
                            .reshape(g, og, *w.shape[1:2], *sub_geom.kernel)
                            for phase in phases], axis=1)
        stacked = stacked.reshape(g * nph * og, w.shape[1], *sub_geom.kernel)
        n = x.shape[0]
        per_image = g * nph * og * math.prod(sub_geom.out_size) * w.itemsize
        step = max(1, WORKSPACE_BYTES // max(per_image, 1))
        x = x[(slice(None), slice(None)) + cuts]
        for n0 in range(0, n, step):
            bs = slice(n0, min(n, n0 + step))
            big = np.empty((bs.stop - bs.start, g * nph * og, *sub_geom.out_size), w.dtype)
            _conv_into(big, x[bs], stacked, None, sub_geom)
            big = big.reshape(bs.stop - bs.start, g, nph, og, *sub_geom.out_size)
            for ph, phase in enumerate(phases):
                # phase outputs sit `lo - pad_lo` into the common extent
                src = (slice(None), slice(None)) + tuple(
                    slice(s[0] - d[4], s[0] - d[4] + d[1]) for s, d in zip(shape, phase))
                dst = (bs,) + tuple(slice(d[0], None, st) for d, st in zip(phase, geom.stride))
                for gi in range(g):
                    channels = slice(gi * og, (gi + 1) * og)
                    _write(result[(dst[0], channels) + dst[1:]], big[:, gi, ph][src],
                           None if bias is None else bias[channels])
        return True

    # --------------------------------------------------------------- depthwise
    def depthwise_conv(self, x, weight, bias, geom: ConvGeometry):
        dtype = x.dtype
        cdt = accumulation_dtype(dtype)
        if not x.flags.c_contiguous and not _layout.is_dense_channels_last(x):
            x = np.ascontiguousarray(x)  # (callers send only dense channels-last arrays)
        if not x.flags.c_contiguous:  # dense channels-last: read in place
            return _depthwise_channels_last(x, weight.astype(cdt, copy=False),
                                            None if bias is None else bias.astype(cdt, copy=False),
                                            geom)
        n, c = x.shape[:2]
        mult = weight.shape[0] // c
        plan = _flat_plan(geom)
        taps = len(plan.taps)
        w = weight.astype(cdt, copy=False).reshape(c, mult, taps)  # channel c's filters
        bias = None if bias is None else bias.astype(cdt, copy=False)
        result = np.empty((n, c * mult, *geom.out_size), dtype=dtype)
        crop = (slice(None),) * 3 + tuple(slice(0, o) for o in geom.out_size[1:])
        isz = cdt.itemsize
        per_row = c * plan.nphase * plan.row_len * isz  # the input phases are the buffer
        budget = min(WORKSPACE_BYTES, CHUNK_BYTES)
        for bs, r0, rows in _row_chunks(n, geom.out_size[0], per_row, budget):
            length = rows * plan.row_len
            phases = _phase_rows(x[bs], geom, plan, r0, rows, cdt)  # (n, C, phases, flat)
            # channels per block: their im2col columns and outputs stay in cache
            per_channel = (taps + mult) * length * isz
            block = max(1, min(c, DEPTHWISE_BLOCK_BYTES // per_channel))

            cols_buf = np.empty(block * taps * length, dtype=cdt)
            out_buf = np.empty(block * mult * length, dtype=cdt)
            for i in range(bs.stop - bs.start):
                for c0 in range(0, c, block):
                    c1 = min(c, c0 + block)
                    cols = cols_buf[: (c1 - c0) * taps * length].reshape(c1 - c0, taps, length)
                    for t, (phase, offset) in enumerate(plan.taps):
                        cols[:, t] = phases[i, c0:c1, phase, offset:offset + length]
                    # per channel (mult, K) @ (K, L)
                    out = out_buf[: (c1 - c0) * mult * length].reshape(c1 - c0, mult, length)
                    np.einsum("cmk,ckl->cml", w[c0:c1], cols, out=out)
                    # (cb*mult, rows, *inner) -> crop -> result rows
                    wide = out.reshape((1, (c1 - c0) * mult, rows) + plan.inner)[crop]
                    dst = result[bs.start + i:bs.start + i + 1, c0 * mult:c1 * mult, r0:r0 + rows]
                    _write(dst, wide, None if bias is None else bias[c0 * mult:c1 * mult])
        return result

    # -------------------------------------------------------------- deformable
    def deform_conv2d(self, x, offset, weight, bias, mask, geom: ConvGeometry, offset_groups):
        """Bilinear sampling by whole-row gathers from a channels-last image, then a GEMM.

        Per image, the input is laid out ``(OG, H*W + 1, C/OG)`` with a zero row at the end.
        Each sampling point's 4 corners are then whole rows of channels, fetched by one
        ``np.take`` (a corner outside the image fetches the zero row), and combined with
        their bilinear weights (times the mask). The samples, ``(P, K, C)``, feed
        ``(P, K*C) @ (K*C, C_out)`` per group.
        """
        dtype = x.dtype
        cdt = accumulation_dtype(dtype)
        n, c_in, height, width = x.shape
        c_out = weight.shape[0]
        taps = geom.kernel[0] * geom.kernel[1]
        ho, wo = geom.out_size
        p = ho * wo
        g, ogroups = geom.groups, offset_groups
        cg, og, cpo = c_in // g, c_out // g, c_in // ogroups
        # undeformed sampling positions (P, K): y = oy * stride - pad + i * dilation
        oy, ox = np.divmod(np.arange(p), wo)
        ki, kj = np.divmod(np.arange(taps), geom.kernel[1])
        base_y = (oy[:, None] * geom.stride[0] - geom.pad_lo[0]
                  + ki[None, :] * geom.dilation[0]).astype(cdt)
        base_x = (ox[:, None] * geom.stride[1] - geom.pad_lo[1]
                  + kj[None, :] * geom.dilation[1]).astype(cdt)
        # weight (C_out, cg, K) -> (G, K * cg, og), matching the samples' (K, C) order
        w = weight.astype(cdt, copy=False).reshape(g, og, cg, taps).transpose(0, 3, 2, 1)
        w = np.ascontiguousarray(w).reshape(g, taps * cg, og)
        bias = None if bias is None else bias.astype(cdt, copy=False)
        result = np.empty((n, c_out, ho, wo), dtype=dtype)
        corner_dy = np.array([0, 0, 1, 1])
        corner_dx = np.array([0, 1, 0, 1])
        # bytes per output position: 4 corners + samples (+ their per-group copy) + output
        per_position = (4 * taps * cpo + 2 * taps * c_in + c_out) * cdt.itemsize
        step = max(1, min(WORKSPACE_BYTES, CHUNK_BYTES) // per_position)
        img = np.zeros((ogroups, height * width + 1, cpo), dtype=cdt)  # channels last
        # buffers reused by every chunk (fresh multi-MB temporaries cost page faults)
        corners_buf = np.empty(step * taps * 4 * cpo, dtype=cdt)
        samples_buf = np.empty(step * taps * c_in, dtype=cdt)
        for i in range(n):
            img[:, :-1] = x[i].reshape(ogroups, cpo, height * width).transpose(0, 2, 1)
            off = offset[i].astype(cdt, copy=False).reshape(ogroups, taps, 2, p)
            for p0 in range(0, p, step):
                p1 = min(p, p0 + step)
                pc = p1 - p0
                samples = samples_buf[: pc * taps * c_in].reshape(pc, taps, ogroups, cpo)
                corners = corners_buf[: pc * taps * 4 * cpo].reshape(-1, cpo)
                for og_i in range(ogroups):
                    py = base_y[p0:p1] + off[og_i, :, 0, p0:p1].T  # (pc, K)
                    px = base_x[p0:p1] + off[og_i, :, 1, p0:p1].T
                    # torchvision's test, false for NaN (and +-inf is outside)
                    inside = (py > -1) & (py < height) & (px > -1) & (px < width)
                    scale = inside.astype(cdt)
                    if mask is not None:
                        scale *= mask[i].reshape(ogroups, taps, p)[og_i, :, p0:p1].T
                    # a point outside is parked at (-2, -2), where all 4 corners are outside:
                    # NaN, inf or huge offsets never reach floor and the cast to intp
                    py = np.where(inside, py, cdt.type(-2))
                    px = np.where(inside, px, cdt.type(-2))
                    y0, x0 = np.floor(py), np.floor(px)
                    ly, lx = py - y0, px - x0
                    # the 4 corners (pc, K, 4): rows y0, y0, y0+1, y0+1; cols x0, x0+1, ...
                    ys = y0.astype(np.intp)[..., None] + corner_dy
                    xs = x0.astype(np.intp)[..., None] + corner_dx
                    wy = np.stack([1 - ly, 1 - ly, ly, ly], axis=-1)
                    wx = np.stack([1 - lx, lx, 1 - lx, lx], axis=-1)
                    # a corner outside the image fetches the zero row, never a cell of x
                    valid = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
                    rows = np.where(valid, ys * width + xs, height * width).reshape(-1)
                    coef = (wy * wx * scale[..., None]).reshape(pc * taps, 4)
                    # every row index is valid: 'clip' only skips the bounds check's buffer
                    np.take(img[og_i], rows, axis=0, out=corners, mode="clip")
                    np.einsum("sk,skc->sc", coef, corners.reshape(pc * taps, 4, cpo),
                              out=samples[:, :, og_i].reshape(pc * taps, cpo))
                # (G, pc, K*cg) @ (G, K*cg, og) -> (G, pc, og)
                cols = samples.reshape(pc, taps, g, cg)
                cols = cols.transpose(2, 0, 1, 3).reshape(g, pc, taps * cg)  # copies if G > 1
                product = np.matmul(cols, w)
                dst = result[i].reshape(c_out, p)[:, p0:p1]
                _write(dst[None], product.transpose(0, 2, 1).reshape(1, c_out, pc), bias)
        return result

    # ------------------------------------------------------- convolve/correlate
    def convolve(self, a, v, mode):
        if is_bfloat16(a.dtype):
            # bfloat16 (both: a mix arrives as float32): in float32, rounded once
            cdt = accumulation_dtype(a.dtype)
            return self.convolve(a.astype(cdt), v.astype(cdt), mode).astype(a.dtype)
        if len(v) > len(a):
            a, v = v, a  # convolution commutes; NumPy swaps too ('same' follows the longer)
        if not _gemm_worthy(a, v):
            return np.convolve(a, v, mode)
        m = len(v)
        first = {"full": -(m - 1), "same": -(m - 1) + (m - 1) // 2, "valid": 0}[mode]
        count = {"full": len(a) + m - 1, "same": len(a), "valid": len(a) - m + 1}[mode]
        dtype = np.result_type(a, v)
        return _sliding_dot(a.astype(dtype, copy=False), v[::-1].astype(dtype), first, count)

    def correlate(self, a, v, mode):
        if is_bfloat16(a.dtype):
            cdt = accumulation_dtype(a.dtype)  # bfloat16, as in convolve
            return self.correlate(a.astype(cdt), v.astype(cdt), mode).astype(a.dtype)
        if len(v) > len(a) or not _gemm_worthy(a, v):
            return np.correlate(a, v, mode)
        m = len(v)
        first = {"full": -(m - 1), "same": -(m // 2), "valid": 0}[mode]
        count = {"full": len(a) + m - 1, "same": len(a), "valid": len(a) - m + 1}[mode]
        dtype = np.result_type(a, v)
        return _sliding_dot(a.astype(dtype, copy=False), v.astype(dtype), first, count)


#: convolve/correlate use a blocked GEMM from this many filter taps and this many
#: multiply-adds (below, ``numpy.convolve``'s own loop is as fast).
SIGNAL_GEMM_MIN_TAPS = 8
SIGNAL_GEMM_MIN_WORK = 1 << 16
#: Outputs per block of the sliding-dot GEMM (the Toeplitz matrix's width).
SIGNAL_BLOCK = 64


def _gemm_worthy(a, v) -> bool:
    dtype = np.result_type(a, v)
    return (dtype in (np.float32, np.float64) and a.dtype.kind == "f" and v.dtype.kind == "f"
            and len(v) >= SIGNAL_GEMM_MIN_TAPS and len(a) * len(v) >= SIGNAL_GEMM_MIN_WORK)


def _sliding_dot(a, u, first: int, count: int):
    """``out[j] = sum_k a[first + j + k] * u[k]`` for ``j < count`` (``a`` is zero outside).

    A blocked GEMM: block ``b`` of ``B`` outputs reads the ``B + m - 1`` samples from
    ``first + b * B``; with those as the rows of ``X`` (blocks, B + m - 1) and the banded
    Toeplitz matrix ``T[s, t] = u[s - t]`` (B + m - 1, B), the outputs are ``X @ T``. That
    is ``(B + m - 1) / m`` times the direct method's FLOPs, run at GEMM speed (and on BLAS's
    threads). ``X`` is built for chunks of blocks that fit ``CHUNK_BYTES`` (and the workspace).
    """
    m, n = len(u), len(a)
    width = SIGNAL_BLOCK
    span = width + m - 1  # samples one block reads
    shift = np.arange(span)[:, None] - np.arange(width)[None, :]  # s - t
    toeplitz = np.where((shift >= 0) & (shift < m), u[np.clip(shift, 0, m - 1)], 0)
    toeplitz = toeplitz.astype(u.dtype)
    blocks = -(-count // width)
    out = np.empty(blocks * width, dtype=u.dtype)
    per_block = (span + width + width + m) * u.itemsize  # X row, output row, samples
    step = max(1, min(WORKSPACE_BYTES, CHUNK_BYTES) // per_block)
    for b0 in range(0, blocks, step):
        b1 = min(blocks, b0 + step)
        lo = first + b0 * width  # first sample this chunk reads
        samples = np.zeros((b1 - b0) * width + m - 1, dtype=u.dtype)
        i0, i1 = max(lo, 0), min(lo + len(samples), n)
        if i1 > i0:
            samples[i0 - lo:i1 - lo] = a[i0:i1]
        rows = sliding_window_view(samples, span)[::width]  # (blocks, span), overlapping
        np.matmul(np.ascontiguousarray(rows), toeplitz,
                  out=out[b0 * width:b1 * width].reshape(b1 - b0, width))
    return out[:count]
