"""Naive loop references for ``python -m gpuconv``: slow, float64, and independent.

Each function computes one operation (or gradient) from its definition, with Python loops over
output positions and kernel taps, sharing no code with the backends: no ``numpy.pad``, no
``sliding_window_view``, no im2col, no ``gpuconv._shapes``. Padding modes are an index map
(where does padded position ``p`` read from?), so the same loop gathers (forward), scatters
(input gradient) and accumulates (weight gradient). Only for small shapes: a 2-D call with
300 outputs and 9 taps makes about 3,000 small matrix products.

Definitions:

* ``conv``: cross-correlation, ``torch.nn.functional.conv*d`` with ``torch.nn.functional.pad``
  semantics for ``reflect``/``replicate``/``circular``; ``padding="same"`` gives
  ``ceil(size / stride)`` outputs with total pad
  ``max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)``, the smaller half low.
* ``conv_transpose``: the adjoint of ``conv`` (zero padding): input position ``i`` and tap
  ``t`` scatter to ``i * stride + t * dilation - pad_lo``; ``"same"`` gives ``size * stride``
  outputs, the adjoint of ``conv``'s ``"same"`` on that size.
* ``deform_conv2d``: ``torchvision.ops.deform_conv2d``: tap ``(i, j)`` of output ``(oh, ow)``
  samples at ``(oh * sh - ph + i * dh + dy, ow * sw - pw + j * dw + dx)`` bilinearly: the four
  corners come from ``floor``, corners outside the image count as zero, and a point with
  ``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W`` samples zero (torchvision's early return).
  Offsets are ``(dy, dx)`` pairs at channels ``2 * (g * kh * kw + t)``, masks at
  ``g * kh * kw + t``.
* ``convolve``/``correlate``: ``numpy.convolve``/``numpy.correlate`` (``c[k] = sum_n
  a[n + k] * conj(v[n])``), by their sums.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.complex128 if np.iscomplexobj(a)
                                             else np.float64)


def _per_dim(value, nd):
    return (int(value),) * nd if np.isscalar(value) else tuple(int(v) for v in value)


def _pairs(padding, nd, sizes=None, kernel=None, stride=None, dilation=None):
    """``padding`` as one ``(lo, hi)`` pair per spatial dim (conv's 'same' needs the geometry)."""
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        pairs = []   # "same"
        for size, k, s, d in zip(sizes, kernel, stride, dilation):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            pairs.append((total // 2, total - total // 2))
        return pairs
    if np.isscalar(padding):
        return [(int(padding), int(padding))] * nd
    return [(int(p), int(p)) if np.isscalar(p) else (int(p[0]), int(p[1])) for p in padding]


def _source(p, size, mode):
    """The input index that padded position ``p`` reads, or None for a zero."""
    if 0 <= p < size:
        return p
    if mode == "zeros":
        return None
    if mode == "replicate":
        return min(max(p, 0), size - 1)
    if mode == "circular":
        return p % size
    if mode == "reflect":            # mirror without repeating the edge: -1 -> 1, size -> size-2
        return -p if p < 0 else 2 * (size - 1) - p
    raise ValueError(f"unknown padding_mode {mode!r}")


def _taps(out_sizes, in_sizes, kernel, stride, lows, dilation, mode):
    """Yield (output index, tap index, input index) for every tap that reads an input cell."""
    for o in itertools.product(*map(range, out_sizes)):
        for t in itertools.product(*map(range, kernel)):
            src = tuple(_source(oi * s + ti * d - lo, size, mode)
                        for oi, ti, s, d, lo, size in zip(o, t, stride, dilation, lows, in_sizes))
            if None not in src:
                yield o, t, src


def _conv_geometry(x_shape, w_shape, stride, padding, dilation):
    nd = len(x_shape) - 2
    stride, dilation = _per_dim(stride, nd), _per_dim(dilation, nd)
    sizes, kernel = tuple(x_shape[2:]), tuple(w_shape[2:])
    pads = _pairs(padding, nd, sizes, kernel, stride, dilation)
    out = tuple((size + lo + hi - d * (k - 1) - 1) // s + 1
                for size, (lo, hi), k, s, d in zip(sizes, pads, kernel, stride, dilation))
    return sizes, kernel, stride, dilation, [lo for lo, _ in pads], out


def _group_slices(groups, c_in, c_out):
    return [(slice(g * (c_in // groups), (g + 1) * (c_in // groups)),
             slice(g * (c_out // groups), (g + 1) * (c_out // groups))) for g in range(groups)]


# --- the conv family ----------------------------------------------------------------------

def conv(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """``y[n, o, p] = bias[o] + sum_{c in o's group, t} w[o, c, t] * x_pad[n, c, p * s + t * d]``."""
    x, weight, bias = _f64(x), _f64(weight), _f64(bias)
    sizes, kernel, stride, dilation, lows, out = _conv_geometry(
        x.shape, weight.shape, stride, padding, dilation)
    y = np.zeros((x.shape[0], weight.shape[0], *out))
    for o, t, src in _taps(out, sizes, kernel, stride, lows, dilation, padding_mode):
        for cin, cout in _group_slices(groups, x.shape[1], weight.shape[0]):
            # (N, C_in/g) @ (C_in/g, C_out/g): every sample and output channel of the group at once
            y[(slice(None), cout, *o)] += x[(slice(None), cin, *src)] @ weight[(cout, slice(None), *t)].T
    if bias is not None:
        y += bias.reshape(1, -1, *([1] * len(out)))
    return y


def conv_input(input_shape, weight, grad_output, *, stride=1, padding=0, dilation=1, groups=1,
               padding_mode="zeros"):
    """The gradient of :func:`conv` with respect to ``x``: the forward's gather, scattered."""
    weight, gy = _f64(weight), _f64(grad_output)
    sizes, kernel, stride, dilation, lows, out = _conv_geometry(
        input_shape, weight.shape, stride, padding, dilation)
    gx = np.zeros(tuple(input_shape))
    for o, t, src in _taps(out, sizes, kernel, stride, lows, dilation, padding_mode):
        for cin, cout in _group_slices(groups, input_shape[1], weight.shape[0]):
            gx[(slice(None), cin, *src)] += gy[(slice(None), cout, *o)] @ weight[(cout, slice(None), *t)]
    return gx


def conv_weight(x, weight_shape, grad_output, *, stride=1, padding=0, dilation=1, groups=1,
                padding_mode="zeros"):
    """The gradient of :func:`conv` with respect to ``weight``."""
    x, gy = _f64(x), _f64(grad_output)
    sizes, kernel, stride, dilation, lows, out = _conv_geometry(
        x.shape, weight_shape, stride, padding, dilation)
    gw = np.zeros(tuple(weight_shape))
    for o, t, src in _taps(out, sizes, kernel, stride, lows, dilation, padding_mode):
        for cin, cout in _group_slices(groups, x.shape[1], weight_shape[0]):
            gw[(cout, slice(None), *t)] += gy[(slice(None), cout, *o)].T @ x[(slice(None), cin, *src)]
    return gw


def _transpose_geometry(x_shape, w_shape, stride, padding, output_padding, dilation):
    nd = len(x_shape) - 2
    stride, dilation = _per_dim(stride, nd), _per_dim(dilation, nd)
    sizes, kernel = tuple(x_shape[2:]), tuple(w_shape[2:])
    if isinstance(padding, str) and padding == "same":
        # the adjoint of conv 'same' on an input of size * stride
        lows, out = [], []
        for size, k, s, d in zip(sizes, kernel, stride, dilation):
            total = max((size - 1) * s + (k - 1) * d + 1 - size * s, 0)
            lows.append(total // 2)
            out.append(size * s)
        return sizes, kernel, stride, dilation, lows, tuple(out)
    pads = _pairs(padding, nd)
    extra = _per_dim(output_padding, nd)
    out = tuple((size - 1) * s - lo - hi + d * (k - 1) + op + 1
                for size, (lo, hi), k, s, d, op in zip(sizes, pads, kernel, stride, dilation, extra))
    return sizes, kernel, stride, dilation, [lo for lo, _ in pads], out


def conv_transpose(x, weight, bias=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                   groups=1):
    """``y[n, o, i * s + t * d - pad_lo] += sum_c w[c, o, t] * x[n, c, i]`` (c in o's group)."""
    x, weight, bias = _f64(x), _f64(weight), _f64(bias)
    sizes, kernel, stride, dilation, lows, out = _transpose_geometry(
        x.shape, weight.shape, stride, padding, output_padding, dilation)
    c_out = weight.shape[1] * groups
    y = np.zeros((x.shape[0], c_out, *out))
    # the output positions are conv's input positions: enumerate conv's taps from y to x
    for i, t, dst in _taps(sizes, out, kernel, stride, lows, dilation, "zeros"):
        for cout, cin in _group_slices(groups, c_out, x.shape[1]):
            y[(slice(None), cout, *dst)] += x[(slice(None), cin, *i)] @ weight[(cin, slice(None), *t)]
    if bias is not None:
        y += bias.reshape(1, -1, *([1] * len(out)))
    return y


def conv_transpose_input(input_shape, weight, grad_output, *, stride=1, padding=0,
                         output_padding=0, dilation=1, groups=1):
    """The gradient of :func:`conv_transpose` with respect to ``x``: a gather."""
    weight, gy = _f64(weight), _f64(grad_output)
    sizes, kernel, stride, dilation, lows, out = _transpose_geometry(
        input_shape, weight.shape, stride, padding, output_padding, dilation)
    gx = np.zeros(tuple(input_shape))
    for i, t, src in _taps(sizes, out, kernel, stride, lows, dilation, "zeros"):
        for cout, cin in _group_slices(groups, gy.shape[1], input_shape[1]):
            gx[(slice(None), cin, *i)] += gy[(slice(None), cout, *src)] @ weight[(cin, slice(None), *t)].T
    return gx


def depthwise_conv(x, weight, bias=None, **kwargs):
    """``conv`` with one group per input channel."""
    return conv(x, weight, bias, groups=np.shape(x)[1], **kwargs)


def depthwise_conv_weight(x, weight_shape, grad_output, **kwargs):
    return conv_weight(x, weight_shape, grad_output, groups=np.shape(x)[1], **kwargs)


def separable_conv(x, depthwise_weight, pointwise_weight, bias=None, **kwargs):
    """Depthwise, then a 1x1 ``conv``; the bias on the result."""
    return conv(depthwise_conv(x, depthwise_weight, **kwargs), pointwise_weight, bias)


# --- deformable convolution ---------------------------------------------------------------

def _corners(y, x, height, width):
    """[(row, col, weight)] of the bilinear sample at (y, x), torchvision's rule."""
    if not (-1 < y < height and -1 < x < width):  # outside, or NaN
        return []
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    corners = [(y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
               (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)]
    return [(r, c, w) for r, c, w in corners if 0 <= r < height and 0 <= c < width]


def _corner_slopes(y, x, height, width):
    """[(row, col, d weight / dy, d weight / dx)] of the bilinear sample at (y, x).

    torchvision's get_coordinate_weight: the floor cell's slopes with no inside test, so at
    y == -1 (x == -1) exactly the offset gradient is the slope into the image (docs/kernels.md,
    "Deformable convolution at integer sampling points"); NaN/inf points have none."""
    if not (-1 <= y < height and -1 <= x < width):  # no corner of the cell is inside
        return []
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    corners = [(y0, x0, -(1 - lx), -(1 - ly)), (y0, x0 + 1, -lx, 1 - ly),
               (y0 + 1, x0, 1 - lx, -ly), (y0 + 1, x0 + 1, lx, ly)]
    return [c for c in corners if 0 <= c[0] < height and 0 <= c[1] < width]


def _deform_samples(x, offset, weight, stride, padding, dilation, mask):
    """Yield (n, g channels, tap (i, j), (oh, ow), g, y, x, modulation, offset channel)."""
    n_batch, c_in, height, width = x.shape
    kh, kw = weight.shape[2:]
    n_off = offset.shape[1] // (2 * kh * kw)
    per_group = c_in // n_off
    sh, sw = _per_dim(stride, 2)
    ph, pw = _per_dim(padding, 2)
    dh, dw = _per_dim(dilation, 2)
    for n, g, i, j, oh, ow in itertools.product(range(n_batch), range(n_off), range(kh),
                                                range(kw), *map(range, offset.shape[2:])):
        tap = g * kh * kw + i * kw + j
        py = oh * sh - ph + i * dh + offset[n, 2 * tap, oh, ow]
        px = ow * sw - pw + j * dw + offset[n, 2 * tap + 1, oh, ow]
        m = 1.0 if mask is None else mask[n, tap, oh, ow]
        channels = slice(g * per_group, (g + 1) * per_group)
        yield n, channels, (i, j), (oh, ow), py, px, m, tap


def _deform_columns(x, offset, weight, stride, padding, dilation, mask):
    """cols[n, c, i, j, oh, ow]: the modulated bilinear sample each tap multiplies."""
    cols = np.zeros((x.shape[0], x.shape[1], *weight.shape[2:], *offset.shape[2:]))
    for n, ch, (i, j), (oh, ow), py, px, m, _ in _deform_samples(x, offset, weight, stride,
                                                                  padding, dilation, mask):
        for r, c, w in _corners(py, px, *x.shape[2:]):
            cols[n, ch, i, j, oh, ow] += m * w * x[n, ch, r, c]
    return cols


def deform_conv2d(x, offset, weight, bias=None, *, stride=1, padding=0, dilation=1, mask=None):
    """``torchvision.ops.deform_conv2d``, by its definition (see the module docstring)."""
    x, offset, weight, bias, mask = map(_f64, (x, offset, weight, bias, mask))
    cols = _deform_columns(x, offset, weight, stride, padding, dilation, mask)
    groups = x.shape[1] // weight.shape[1]
    y = np.zeros((x.shape[0], weight.shape[0], *offset.shape[2:]))
    for cin, cout in _group_slices(groups, x.shape[1], weight.shape[0]):
        y[:, cout] = np.einsum("ocij,ncijhw->nohw", weight[cout], cols[:, cin])
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return y


def deform_conv2d_grads(x, offset, weight, grad_output, *, stride=1, padding=0, dilation=1,
                        mask=None, bias=True):
    """(input, offset, weight, mask, bias) gradients of :func:`deform_conv2d`."""
    x, offset, weight, gy, mask = map(_f64, (x, offset, weight, grad_output, mask))
    groups = x.shape[1] // weight.shape[1]
    # gcols[n, c, i, j, oh, ow]: d loss / d cols, the weights applied to grad_output
    gcols = np.zeros((x.shape[0], x.shape[1], *weight.shape[2:], *offset.shape[2:]))
    for cin, cout in _group_slices(groups, x.shape[1], weight.shape[0]):
        gcols[:, cin] = np.einsum("ocij,nohw->ncijhw", weight[cout], gy[:, cout])
    gx, goff = np.zeros_like(x), np.zeros_like(offset)
    gmask = None if mask is None else np.zeros_like(mask)
    for n, ch, (i, j), (oh, ow), py, px, m, tap in _deform_samples(x, offset, weight, stride,
                                                                    padding, dilation, mask):
        g = gcols[n, ch, i, j, oh, ow]
        sample = 0.0
        for r, c, w in _corners(py, px, *x.shape[2:]):
            gx[n, ch, r, c] += m * w * g
            sample = sample + w * x[n, ch, r, c]
        for r, c, wy, wx in _corner_slopes(py, px, *x.shape[2:]):
            goff[n, 2 * tap, oh, ow] += m * wy * float(g @ x[n, ch, r, c])
            goff[n, 2 * tap + 1, oh, ow] += m * wx * float(g @ x[n, ch, r, c])
        if gmask is not None:
            gmask[n, tap, oh, ow] += float(np.sum(g * sample))
    cols = _deform_columns(x, offset, weight, stride, padding, dilation, mask)
    gw = np.zeros_like(weight)
    for cin, cout in _group_slices(groups, x.shape[1], weight.shape[0]):
        gw[cout] = np.einsum("nohw,ncijhw->ocij", gy[:, cout], cols[:, cin])
    gb = gy.sum(axis=(0, 2, 3)) if bias else None
    return gx, goff, gw, gmask, gb


# --- numpy.convolve / numpy.correlate -----------------------------------------------------

def _window(full, len_a, len_v, mode, from_high=False):
    short, long_ = min(len_a, len_v), max(len_a, len_v)
    if mode == "full":
        return full
    if mode == "same":
        # centred, the odd one out at the high end (at the low end when counted from_high)
        start = short - 1 - (short - 1) // 2 if from_high else (short - 1) // 2
        return full[start:start + long_]
    if mode == "valid":
        return full[short - 1:long_]
    raise ValueError(f"unknown mode {mode!r}")


def correlate(a, v, mode="valid"):
    """``c[k] = sum_n a[n + k] * conj(v[n])`` for every lag ``k`` of ``mode``."""
    a, v = _f64(a), _f64(v)
    lags = range(-(len(v) - 1), len(a))
    full = np.array([sum(a[n + k] * np.conj(v[n]) for n in range(len(v)) if 0 <= n + k < len(a))
                     for k in lags], dtype=np.result_type(a, v))
    # numpy.correlate with a longer v correlates (v, a) and reverses: 'same' centres from the end
    return _window(full, len(a), len(v), mode, from_high=len(v) > len(a))


def convolve(a, v, mode="full"):
    """``c[k] = sum_n a[n] * v[k - n]`` for every ``k`` of ``mode``."""
    a, v = _f64(a), _f64(v)
    full = np.array([sum(a[n] * v[k - n] for n in range(len(a)) if 0 <= k - n < len(v))
                     for k in range(len(a) + len(v) - 1)], dtype=np.result_type(a, v))
    return _window(full, len(a), len(v), mode)
