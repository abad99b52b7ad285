"""The NumPy backend: the CPU fallback and the oracle every kernel is tested against.

Written independently of the CUDA kernels, from NumPy building blocks: ``numpy.pad`` for
the padding modes, contiguous slice copies for im2col, BLAS (``numpy.matmul``) for the
contractions. No Python loop runs over output elements; the loops run over kernel taps,
groups and cache-sized chunks.

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
* depthwise_conv: per block of channels small enough for the CPU cache, a multiply-add per
  tap on contiguous rows, then the same crop.

Memory is bounded: every temporary (phases, im2col columns, wide output, sampling buffers)
is built for a chunk of the batch, or of the outermost output dim, sized to stay under
``WORKSPACE_BYTES`` (and, for speed, under ``CHUNK_BYTES``). A single output row larger than
that still runs, one row at a time.

float16 inputs are computed in float32 and rounded once, when the result is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._shapes import ConvGeometry
from .numpy_grad import GradMixin

#: Upper bound, in bytes, for the temporaries of one chunk (im2col columns, wide output,
#: input phases, deformable sampling buffers).
WORKSPACE_BYTES = 64 * 2**20

#: Preferred chunk size for conv's im2col, in bytes: small enough to stay in the last-level
#: cache between the im2col copy and the GEMM that reads it.
CHUNK_BYTES = 4 * 2**20

#: Working-set target, in bytes, of one depthwise channel block (input rows, accumulator,
#: product): about the size of a core's L2 cache.
DEPTHWISE_BLOCK_BYTES = 256 * 1024

_NP_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _compute_dtype(dtype):
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


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


class NumpyBackend(GradMixin):
    """Vectorised NumPy implementations of every operation (see module docstring).

    The gradients (``conv_input_grad``, ``conv_weight_grad``, ...) come from
    :class:`~gpuconv.backends.numpy_grad.GradMixin`.
    """

    name = "numpy"
    xp = np

    # ------------------------------------------------------------------ conv
    def conv(self, x, weight, bias, geom: ConvGeometry):
        dtype = x.dtype
        cdt = _compute_dtype(dtype)
        weight = weight.astype(cdt, copy=False)
        bias = None if bias is None else bias.astype(cdt, copy=False)
        n, c_in = x.shape[:2]
        c_out = weight.shape[0]
        g = geom.groups
        cg, og = c_in // g, c_out // g
        result = np.empty((n, c_out, *geom.out_size), dtype=dtype)
        if all(k == 1 for k in geom.kernel) and not any(geom.pad_lo + geom.pad_hi) and all(
            s == 1 for s in geom.stride
        ):
            # 1x1 convolution: a plain matrix product per group.
            # (G, og, cg) @ (N, G, cg, P) -> (N, G, og, P)
            xr = x.astype(cdt, copy=False).reshape(n, g, cg, -1)
            if dtype == cdt:
                np.matmul(weight.reshape(g, og, cg), xr, out=result.reshape(n, g, og, -1))
                _add_bias(result, bias)
            else:
                product = np.matmul(weight.reshape(g, og, cg), xr).reshape(result.shape)
                _write(result, product, bias)
            return result
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
        return result

    # -------------------------------------------------------- conv_transpose
    def conv_transpose(self, x, weight, bias, geom: ConvGeometry):
        dtype = x.dtype
        cdt = _compute_dtype(dtype)
        x = x.astype(cdt, copy=False)
        weight = weight.astype(cdt, copy=False)
        n, c_in = x.shape[:2]
        g = geom.groups
        cg, og = c_in // g, weight.shape[1]
        nd = geom.ndim
        taps = int(np.prod(geom.kernel))
        p_in = int(np.prod(geom.in_size))
        full = [(i - 1) * s + d * (k - 1) + 1
                for i, k, s, d in zip(geom.in_size, geom.kernel, geom.stride, geom.dilation)]
        # The full output, extended where output_padding/'same' reach past it.
        ext = [max(f, lo + o) for f, lo, o in zip(full, geom.pad_lo, geom.out_size)]
        # W^T per group: (G, og*K, cg)
        wt = weight.reshape(g, cg, og * taps).transpose(0, 2, 1)
        result = np.empty((n, g * og, *geom.out_size), dtype=cdt)
        crop = (slice(None), slice(None)) + tuple(
            slice(lo, lo + o) for lo, o in zip(geom.pad_lo, geom.out_size))
        tap_index = list(np.ndindex(*geom.kernel))
        for bs, _ in _chunks(n, 1, g * og * taps * p_in * cdt.itemsize):
            nb = bs.stop - bs.start
            xr = x[bs].reshape(nb, g, cg, p_in)
            cols = np.matmul(wt, xr)  # (n, G, og*K, P_in)
            cols = cols.reshape(nb, g * og, *geom.kernel, *geom.in_size)
            full_out = np.zeros((nb, g * og, *ext), dtype=cdt)
            for tap in tap_index:
                # input i lands at full position i * stride + tap * dilation
                dst = (slice(None), slice(None)) + tuple(
                    slice(t * d, t * d + (i - 1) * s + 1, s)
                    for t, d, s, i in zip(tap, geom.dilation, geom.stride, geom.in_size))
                full_out[dst] += cols[(slice(None), slice(None)) + tap]
            result[bs] = full_out[crop]
        _add_bias(result, bias)
        return result.astype(dtype, copy=False)

    # --------------------------------------------------------------- depthwise
    def depthwise_conv(self, x, weight, bias, geom: ConvGeometry):
        dtype = x.dtype
        cdt = _compute_dtype(dtype)
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
        for bs, r0, rows in _row_chunks(n, geom.out_size[0], per_row, WORKSPACE_BYTES):
            length = rows * plan.row_len
            phases = _phase_rows(x[bs], geom, plan, r0, rows, cdt)  # (n, C, phases, flat)
            # channels per block: their phases, accumulator and product stay in cache
            per_channel = (phases.shape[-1] * plan.nphase + 2 * mult * length) * isz
            block = max(1, min(c, DEPTHWISE_BLOCK_BYTES // per_channel))
            acc_buf = np.empty(block * mult * length, dtype=cdt)
            tmp_buf = np.empty(block * mult * length, dtype=cdt)
            for i in range(bs.stop - bs.start):
                for c0 in range(0, c, block):
                    c1 = min(c, c0 + block)
                    acc = acc_buf[: (c1 - c0) * mult * length].reshape(c1 - c0, mult, length)
                    tmp = tmp_buf[: acc.size].reshape(acc.shape)
                    for t, (phase, offset) in enumerate(plan.taps):
                        src = phases[i, c0:c1, phase, None, offset:offset + length]  # (cb, 1, L)
                        wt = w[c0:c1, :, t, None]  # (cb, mult, 1)
                        if t == 0:
                            np.multiply(src, wt, out=acc)
                        else:
                            np.multiply(src, wt, out=tmp)
                            acc += tmp
                    # (cb*mult, rows, *inner) -> crop -> result rows
                    wide = acc.reshape((1, (c1 - c0) * mult, rows) + plan.inner)[crop]
                    dst = result[bs.start + i: bs.start + i + 1, c0 * mult:c1 * mult, r0:r0 + rows]
                    _write(dst, wide, None if bias is None else bias[c0 * mult:c1 * mult])
        return result

    # -------------------------------------------------------------- deformable
    def deform_conv2d(self, x, offset, weight, bias, mask, geom: ConvGeometry, offset_groups):
        dtype = x.dtype
        cdt = _compute_dtype(dtype)
        x = x.astype(cdt, copy=False)
        weight = weight.astype(cdt, copy=False)
        n, c_in, height, width = x.shape
        c_out = weight.shape[0]
        kh, kw = geom.kernel
        taps = kh * kw
        ho, wo = geom.out_size
        p = ho * wo
        g, ogroups = geom.groups, offset_groups
        cpo = c_in // ogroups  # channels per offset group
        # Base sampling positions (K, P): y = oy*stride - pad + i*dil
        oy, ox = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
        ki, kj = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
        base_y = (oy.reshape(1, p) * geom.stride[0] - geom.pad_lo[0]
                  + ki.reshape(taps, 1) * geom.dilation[0]).astype(cdt)
        base_x = (ox.reshape(1, p) * geom.stride[1] - geom.pad_lo[1]
                  + kj.reshape(taps, 1) * geom.dilation[1]).astype(cdt)
        w = weight.reshape(g, c_out // g, (c_in // g) * taps)
        result = np.empty((n, c_out, ho, wo), dtype=cdt)
        per_image = c_in * taps * p * cdt.itemsize * 3
        for bs, _ in _chunks(n, 1, per_image):
            nb = bs.stop - bs.start
            off = offset[bs].astype(cdt, copy=False).reshape(nb, ogroups, taps, 2, p)
            py = base_y + off[:, :, :, 0]           # (n, OG, K, P)
            px = base_x + off[:, :, :, 1]
            inside = (py > -1) & (py < height) & (px > -1) & (px < width)
            y0 = np.floor(py)
            x0 = np.floor(px)
            ly, lx = py - y0, px - x0
            y0 = y0.astype(np.int64)
            x0 = x0.astype(np.int64)
            scale = inside.astype(cdt)
            if mask is not None:
                scale = scale * mask[bs].astype(cdt, copy=False).reshape(nb, ogroups, taps, p)
            img = x[bs].reshape(nb, ogroups, cpo, height * width)
            cols = np.zeros((nb, ogroups, cpo, taps * p), dtype=cdt)
            for dy, dx, wgt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx),
                                (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
                yy, xx = y0 + dy, x0 + dx
                valid = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
                idx = np.where(valid, yy * width + xx, 0).reshape(nb, ogroups, 1, taps * p)
                coef = (wgt * scale * valid).reshape(nb, ogroups, 1, taps * p)
                cols += np.take_along_axis(img, idx, axis=3) * coef
            # (n, C_in, K*P) -> per group GEMM: (og, cg*K) @ (n, G, cg*K, P)
            cols = cols.reshape(nb, g, (c_in // g) * taps, p)
            np.matmul(w, cols, out=result[bs].reshape(nb, g, c_out // g, p))
        _add_bias(result, bias)
        return result.astype(dtype, copy=False)

    # ------------------------------------------------------- convolve/correlate
    def convolve(self, a, v, mode):
        return np.convolve(a, v, mode)

    def correlate(self, a, v, mode):
        return np.correlate(a, v, mode)
