"""The NumPy backend: the CPU fallback and the oracle every kernel is tested against.

Written independently of the CUDA kernels, from NumPy building blocks:

* padding through ``numpy.pad`` (zeros/reflect/replicate/circular map to
  constant/reflect/edge/wrap);
* input windows through ``sliding_window_view`` (a strided view, no copy);
* contractions through BLAS (``numpy.matmul``), one GEMM per group and batch chunk.

Memory is bounded: any im2col-style buffer is built for a chunk of the batch (or of the
outermost output dim) small enough to stay under ``WORKSPACE_BYTES``.

float16 inputs are computed in float32 and rounded once at the end.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._shapes import ConvGeometry
from .numpy_grad import GradMixin

#: Upper bound, in bytes, for one temporary im2col/sampling buffer.
WORKSPACE_BYTES = 64 * 2**20

_NP_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _compute_dtype(dtype):
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def _pad(x, geom: ConvGeometry):
    """``x`` (N, C, *spatial) padded by ``geom`` in ``geom.padding_mode``."""
    widths = [(0, 0), (0, 0)] + list(zip(geom.pad_lo, geom.pad_hi))
    if not any(geom.pad_lo + geom.pad_hi):
        return x
    return np.pad(x, widths, mode=_NP_PAD_MODE[geom.padding_mode])


def _windows(xp, geom: ConvGeometry):
    """Strided view (N, C, *out, *kernel) of the padded input ``xp``: no copy."""
    nd = geom.ndim
    extent = tuple(d * (k - 1) + 1 for k, d in zip(geom.kernel, geom.dilation))
    view = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + nd)))
    # view: (N, C, *positions, *extent) -> take every stride-th position, dilation-th tap
    index = (slice(None), slice(None))
    index += tuple(slice(0, o * s, s) for o, s in zip(geom.out_size, geom.stride))
    index += tuple(slice(None, None, d) for d in geom.dilation)
    return view[index]


def _chunks(n: int, first_out: int, bytes_per_position: int):
    """Yield (batch slice, first-output-dim slice) pairs whose buffer fits the workspace."""
    per_image = max(bytes_per_position * first_out, 1)
    if per_image <= WORKSPACE_BYTES:
        step = max(1, WORKSPACE_BYTES // per_image)
        for n0 in range(0, n, step):
            yield slice(n0, min(n, n0 + step)), slice(0, first_out)
        return
    rows = max(1, WORKSPACE_BYTES // max(bytes_per_position, 1))
    for n0 in range(n):
        for r0 in range(0, first_out, rows):
            yield slice(n0, n0 + 1), slice(r0, min(first_out, r0 + rows))


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
        x = x.astype(cdt, copy=False)
        weight = weight.astype(cdt, copy=False)
        n, c_in = x.shape[:2]
        c_out = weight.shape[0]
        g = geom.groups
        cg, og = c_in // g, c_out // g
        taps = int(np.prod(geom.kernel))
        positions = int(np.prod(geom.out_size[1:], dtype=np.int64))
        result = np.empty((n, c_out, *geom.out_size), dtype=cdt)
        if all(k == 1 for k in geom.kernel) and not any(geom.pad_lo + geom.pad_hi) and all(
            s == 1 for s in geom.stride
        ):
            # 1x1 convolution: a plain matrix product per group.
            # (G, og, cg) @ (N, G, cg, P) -> (N, G, og, P)
            xr = x.reshape(n, g, cg, -1)
            np.matmul(weight.reshape(g, og, cg), xr, out=result.reshape(n, g, og, -1))
            _add_bias(result, bias)
            return result.astype(dtype, copy=False)
        windows = _windows(_pad(x, geom), geom)  # (N, C, *out, *k)
        nd = geom.ndim
        # Reorder to (N, C, *k, *out) so one image's columns are (C*K, P): the GEMM's B.
        order = (0, 1) + tuple(range(2 + nd, 2 + 2 * nd)) + tuple(range(2, 2 + nd))
        windows = windows.transpose(order)
        w = weight.reshape(g, og, cg * taps)  # (G, og, cg*K)
        for bs, rs in _chunks(n, geom.out_size[0], c_in * taps * positions * cdt.itemsize):
            cols = np.ascontiguousarray(windows[(bs, slice(None)) + (slice(None),) * nd + (rs,)])
            nb, rows = cols.shape[0], rs.stop - rs.start
            cols = cols.reshape(nb, g, cg * taps, rows * positions)  # (n, G, cg*K, P)
            target = result[bs, :, rs].reshape(nb, g, og, rows * positions)
            if target.base is None or not np.shares_memory(target, result):
                raise AssertionError("internal: chunk view must alias the result")
            np.matmul(w, cols, out=target)
        _add_bias(result, bias)
        return result.astype(dtype, copy=False)

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
        x = x.astype(cdt, copy=False)
        n, c = x.shape[:2]
        mult = weight.shape[0] // c
        nd = geom.ndim
        taps = list(np.ndindex(*geom.kernel))
        # (C, mult, K): the filter values each input channel is scaled by
        w = weight.astype(cdt, copy=False).reshape(c, mult, len(taps))
        xp = _pad(x, geom)
        result = np.empty((n, c, mult, *geom.out_size), dtype=cdt)
        out_positions = int(np.prod(geom.out_size))
        in_positions = int(np.prod(xp.shape[2:]))
        # Work on blocks of (image, channels) that stay in cache across the K taps.
        per_channel = (in_positions + 2 * mult * out_positions) * cdt.itemsize
        block = max(1, min(c, (512 * 1024) // max(per_channel, 1)))
        tmp = np.empty((block, mult, *geom.out_size), dtype=cdt)
        for i in range(n):
            for c0 in range(0, c, block):
                c1 = min(c, c0 + block)
                acc = result[i, c0:c1]                      # (cb, mult, *out)
                t = tmp[: c1 - c0]
                for j, tap in enumerate(taps):
                    src = xp[(i, slice(c0, c1)) + tuple(
                        slice(k * d, k * d + (o - 1) * s + 1, s)
                        for k, d, s, o in zip(tap, geom.dilation, geom.stride, geom.out_size))]
                    wj = w[c0:c1, :, j].reshape((c1 - c0, mult) + (1,) * nd)
                    if j == 0:
                        np.multiply(src[:, None], wj, out=acc)
                    else:
                        np.multiply(src[:, None], wj, out=t)
                        acc += t
        result = result.reshape(n, c * mult, *geom.out_size)
        _add_bias(result, bias)
        return result.astype(dtype, copy=False)

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
