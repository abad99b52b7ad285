"""NumPy gradients of every convolution: the reference the device gradient kernels will match.

:class:`GradMixin` gives :class:`~gpuconv.backends.numpy_backend.NumpyBackend` one method per
gradient (see :mod:`gpuconv.backends` for the interface). It is written independently of the
forward code in ``numpy_backend``, from three building blocks of its own:

* padding is a *gather* through a per-dim index map (:func:`pad_index`: which input cell each
  padded position reads, in every ``padding_mode``), and its adjoint, the *fold* of a
  padded-input gradient back onto the input cells that supplied the padded values, is a
  scatter-add through the same map (:func:`fold_padding`);
* im2col columns come from one strided slice per kernel tap (:func:`_columns`), and col2im
  is the matching per-tap scatter-add (:func:`_col2im`);
* contractions are grouped GEMMs (``numpy.matmul``); weight gradients run one GEMM per image
  and group over the output positions and sum over the batch.
* the input gradient of a stride-1 conv, where that moves less data than col2im, is a
  correlation of the zero-padded grad_output with the flipped weights: contiguous per-tap
  copies of a flattened ("wide") layout and one GEMM per group and chunk
  (:func:`_stride1_input_grad`).

Buffers are built for chunks of the batch small enough to stay under ``WORKSPACE_BYTES``.
float16 arrays are computed in float32 and rounded once at the end. Array arguments arrive
C-contiguous in one dtype (the caller's result dtype).
"""

from __future__ import annotations

import numpy as np

from .._dtypes import accumulation_dtype
from .._limits import WORKSPACE_BYTES  # one temporary column buffer (per batch chunk)
from .._shapes import ConvGeometry, transpose_as_conv

#: Preferred size of one im2col chunk of the stride-1 input gradient: small enough to stay
#: in the last-level cache between the copies that build it and the GEMM that reads it.
CHUNK_BYTES = 8 * 2**20
#: Working set of one depthwise-gradient block (kept in cache across the kernel taps).
CACHE_BLOCK_BYTES = 2 * 2**20


def _batch_chunks(n: int, bytes_per_image: int):
    """Slices of the batch whose buffers (``bytes_per_image`` each) fit the workspace."""
    step = max(1, WORKSPACE_BYTES // max(bytes_per_image, 1))
    for n0 in range(0, n, step):
        yield slice(n0, min(n, n0 + step))


# ------------------------------------------------------------------ padding


def pad_index(size: int, pad_lo: int, pad_hi: int, mode: str) -> np.ndarray:
    """For each position of the padded dim, the input cell it reads (-1: a zero).

    The padded dim has ``size + pad_lo + pad_hi`` positions; position ``q`` stands for input
    coordinate ``q - pad_lo``. A negative ``pad_hi`` (a transposed convolution's crop past
    its output) shortens the dim. Modes follow ``torch.nn.functional.pad``.

    >>> pad_index(4, 2, 2, "zeros").tolist()
    [-1, -1, 0, 1, 2, 3, -1, -1]
    >>> pad_index(4, 2, 2, "reflect").tolist()
    [2, 1, 0, 1, 2, 3, 2, 1]
    >>> pad_index(4, 2, 2, "replicate").tolist()
    [0, 0, 0, 1, 2, 3, 3, 3]
    >>> pad_index(4, 2, 2, "circular").tolist()
    [2, 3, 0, 1, 2, 3, 0, 1]
    """
    coord = np.arange(-pad_lo, size + pad_hi)
    if mode == "zeros":
        return np.where((coord >= 0) & (coord < size), coord, -1)
    if mode == "replicate":
        return np.clip(coord, 0, size - 1)
    if mode == "circular":
        return coord % size
    if mode == "reflect":
        if size == 1:
            return np.zeros_like(coord)
        period = 2 * (size - 1)
        folded = coord % period
        return np.where(folded < size, folded, period - folded)
    raise ValueError(f"padding_mode={mode!r} is not a padding mode")


def pad_gather(x, geom: ConvGeometry, mode: str | None = None):
    """``x`` (N, C, *geom.in_size) padded by ``geom`` (a copy unless there is no padding)."""
    mode = geom.padding_mode if mode is None else mode
    if mode == "zeros" and min(geom.pad_lo + geom.pad_hi) >= 0 and any(geom.pad_lo + geom.pad_hi):
        # one copy into a zeroed buffer (the gather below costs a pass per padded dim)
        padded = np.zeros(x.shape[:2] + tuple(geom.padded_size), dtype=x.dtype)
        padded[(slice(None), slice(None)) + tuple(
            slice(lo, lo + size) for lo, size in zip(geom.pad_lo, geom.in_size))] = x
        return padded
    for dim, (size, lo, hi) in enumerate(zip(geom.in_size, geom.pad_lo, geom.pad_hi)):
        if lo == 0 and hi == 0:
            continue
        axis = 2 + dim
        index = pad_index(size, lo, hi, mode)
        if (index < 0).any():
            # read a zero from one extra cell appended to the dim
            zero_shape = list(x.shape)
            zero_shape[axis] = 1
            x = np.concatenate([x, np.zeros(zero_shape, dtype=x.dtype)], axis=axis)
            index = np.where(index < 0, size, index)
        x = np.take(x, index, axis=axis)
    return x


def fold_padding(grad_padded, geom: ConvGeometry, mode: str | None = None):
    """Adjoint of :func:`pad_gather`: fold a padded-input gradient onto the input.

    Every padded position adds its gradient to the input cell it was read from; positions
    that held zeros are dropped. One dim at a time: the interior is a plain slice, and each
    pad position (there are few) one slice-add.
    """
    mode = geom.padding_mode if mode is None else mode
    if mode == "zeros" and min(geom.pad_lo + geom.pad_hi) >= 0:
        # the padded cells held zeros: the fold is a crop
        crop = (slice(None), slice(None)) + tuple(
            slice(lo, lo + size) for lo, size in zip(geom.pad_lo, geom.in_size))
        return np.ascontiguousarray(grad_padded[crop])
    for dim, (size, lo, hi) in enumerate(zip(geom.in_size, geom.pad_lo, geom.pad_hi)):
        if lo == 0 and hi == 0:
            continue
        axis = 2 + dim
        index = pad_index(size, lo, hi, mode)
        src = np.moveaxis(grad_padded, axis, 0)  # (padded, ...)
        shape = (size,) + src.shape[1:]
        out = np.zeros(shape, dtype=grad_padded.dtype)
        # interior: padded position q reads input cell q - lo
        q0, q1 = max(lo, 0), min(lo + size, len(index))
        if q1 > q0:
            out[q0 - lo:q1 - lo] = src[q0:q1]
        for q in [*range(0, q0), *range(q1, len(index))]:
            if index[q] >= 0:
                out[index[q]] += src[q]
        grad_padded = np.moveaxis(out, 0, axis)
    return np.ascontiguousarray(grad_padded)


# ------------------------------------------------------------- im2col/col2im


def _tap_slices(tap, geom: ConvGeometry):
    """Index of the padded positions kernel tap ``tap`` reads for every output position."""
    return (slice(None), slice(None)) + tuple(
        slice(t * d, t * d + (o - 1) * s + 1, s)
        for t, d, s, o in zip(tap, geom.dilation, geom.stride, geom.out_size)
    )


def _columns(padded, geom: ConvGeometry):
    """im2col: (N, C, K, *out) with ``[:, :, k]`` the padded input under kernel tap ``k``."""
    n, c = padded.shape[:2]
    taps = list(np.ndindex(*geom.kernel))
    cols = np.empty((n, c, len(taps), *geom.out_size), dtype=padded.dtype)
    for k, tap in enumerate(taps):
        cols[:, :, k] = padded[_tap_slices(tap, geom)]
    return cols


def _col2im(cols, geom: ConvGeometry):
    """col2im, the adjoint of :func:`_columns`: cols (N, C, K, *out) -> (N, C, *padded)."""
    n, c = cols.shape[:2]
    padded = np.zeros((n, c, *geom.padded_size), dtype=cols.dtype)
    for k, tap in enumerate(np.ndindex(*geom.kernel)):
        padded[_tap_slices(tap, geom)] += cols[:, :, k]
    return padded


def _grouped_columns(a, geom: ConvGeometry, groups: int, mode: str | None = None):
    """Columns of ``a`` (N, C, *in) padded by ``geom``: (N, G, C/G * K, P_out)."""
    cols = _columns(pad_gather(a, geom, mode), geom)  # (N, C, K, *out)
    n, c = cols.shape[:2]
    return cols.reshape(n, groups, (c // groups) * cols.shape[2], -1)


def _depthwise_blocks(n: int, c: int, bytes_per_channel: int):
    """(batch slice, channel slice) blocks of about ``CACHE_BLOCK_BYTES``: whole images when
    one image's channels fit, else channel blocks of one image."""
    per_image = c * bytes_per_channel
    if per_image <= CACHE_BLOCK_BYTES:
        step = max(1, CACHE_BLOCK_BYTES // max(per_image, 1))
        for n0 in range(0, n, step):
            yield slice(n0, min(n, n0 + step)), slice(0, c)
        return
    step = max(1, CACHE_BLOCK_BYTES // max(bytes_per_channel, 1))
    for i in range(n):
        for c0 in range(0, c, step):
            yield slice(i, i + 1), slice(c0, min(c, c0 + step))


def _contract_positions(a, b):
    """sum over batch and positions of a (N, G, R, P) times b (N, G, S, P): (G, R, S).

    One GEMM per image and group against b's transposed view (BLAS reads it in place), then a
    sum over the batch: faster than copying both operands into a batch-folded layout.
    """
    return np.matmul(a, b.transpose(0, 1, 3, 2)).sum(axis=0)



def _stride1_input_pays(weight_shape, geom: ConvGeometry) -> bool:
    """Whether :func:`_stride1_input_grad` applies (stride 1) and beats the col2im path.

    Both paths run the same GEMM FLOPs (up to the wide columns); they differ in memory
    traffic. The correlation writes and reads its columns, ``og * K * L_wide`` per image,
    ``L_wide = padded_0 * prod(out_d + 2 * (k_d - 1) * d_d, d >= 1)``; col2im writes the
    GEMM's ``cg * K * P`` columns and reads them and the padded gradient once more per tap
    (about 4 passes). Measured (2 cores, float32): 2.5x faster on 8x64x56x56 3x3 (og = cg,
    L_wide = 1.11 P), 1.5x on 16x64x4096 k=9; 0.6x on 2x16x16x32x32 -> 32 3x3x3 (og = 2 cg,
    L_wide = 1.42 P), which the rule below sends to col2im.
    """
    if any(s != 1 for s in geom.stride):
        return False
    og = weight_shape[0] // geom.groups
    cg = weight_shape[1]
    wide = geom.padded_size[0] * int(np.prod(
        [o + 2 * (k - 1) * d for o, k, d in zip(geom.out_size[1:], geom.kernel[1:],
                                                geom.dilation[1:])]))
    return og * wide <= 2 * cg * int(np.prod(geom.out_size))


def _stride1_input_grad(weight, grad_output, geom: ConvGeometry):
    """Input gradient of a stride-1 conv: (N, C_in, *in) in ``weight``'s dtype.

    The padded-input gradient is ``gp[q] = sum_t go[q - t*d] w[t]``: a correlation of
    grad_output, zero-padded by ``(k - 1) * d`` on both sides (``z``), with the flipped
    weights. Flattened with ``z``'s row lengths ("wide" layout), tap ``t`` of the flipped
    kernel reads one contiguous slice of ``z`` for a whole run of dim-1 rows, so im2col is
    one contiguous copy per tap, and the contraction one GEMM per group and chunk,
    ``(cg, og*K) @ (og*K, n*L)``. The wide columns past the padded input are discarded by
    the crop; the padding is folded as usual.
    """
    cdt = weight.dtype
    n, c_out = grad_output.shape[:2]
    c_in_g = weight.shape[1]
    g = geom.groups
    og, cg = c_out // g, c_in_g
    kernel, dil = geom.kernel, geom.dilation
    taps = list(np.ndindex(*kernel))
    nk = len(taps)
    halo = [(k - 1) * d for k, d in zip(kernel, dil)]
    # z: grad_output zero-padded by halo on both sides, plus one extra dim-1 row so that the
    # last tap's slice stays in bounds (it only feeds discarded wide columns)
    zsize = [o + 2 * h for o, h in zip(geom.out_size, halo)]
    zsize[0] += 1
    flat = [int(np.prod(zsize[d + 1:])) for d in range(geom.ndim)]
    row_len = flat[0]
    padded_rows = geom.padded_size[0]  # = out_0 + halo_0 for stride 1
    # flipped tap t' = k - 1 - t reads z at offset t' * d: weight index of that tap
    offsets = [sum(t * d * f for t, d, f in zip(tap, dil, flat)) for tap in taps]
    # W'[g, c, o, t'] = w[g*og + o, c, k - 1 - t']
    wf = weight.reshape(g, og, cg, nk)[..., ::-1].transpose(0, 2, 1, 3).reshape(g, cg, og * nk)
    wf = np.ascontiguousarray(wf)
    fold_zeros = geom.padding_mode == "zeros" and min(geom.pad_lo + geom.pad_hi) >= 0
    result = np.empty((n, g * cg, *geom.in_size), dtype=cdt)
    # per padded dim-1 row: columns (og*K) + wide product (cg), per group
    per_row = (c_out * nk + g * cg) * row_len * cdt.itemsize
    z_image = c_out * int(np.prod(zsize)) * cdt.itemsize
    budget = min(WORKSPACE_BYTES, CHUNK_BYTES)
    for bs in _batch_chunks(n, z_image + per_row * padded_rows):
        nb = bs.stop - bs.start
        z = np.zeros((nb, c_out, *zsize), dtype=cdt)
        z[(slice(None), slice(None)) + tuple(
            slice(h, h + o) for h, o in zip(halo, geom.out_size))] = grad_output[bs]
        z = z.reshape(nb, g, og, -1)
        if not fold_zeros:
            gp = np.empty((nb, g * cg, *geom.padded_size), dtype=cdt)
        rows_step = max(1, budget // max(per_row * nb, 1))
        for r0 in range(0, padded_rows, rows_step):
            rows = min(rows_step, padded_rows - r0)
            length = rows * row_len
            base = r0 * row_len
            cols = np.empty((g, og, nk, nb, length), dtype=cdt)
            for k, off in enumerate(offsets):
                cols[:, :, k] = z[..., base + off:base + off + length].transpose(1, 2, 0, 3)
            wide = np.matmul(wf, cols.reshape(g, og * nk, nb * length))  # (G, cg, nb*L)
            wide = wide.reshape(g * cg, nb, rows, *zsize[1:]).swapaxes(0, 1)
            if fold_zeros:
                # crop the padded rows/columns straight into the result
                lo0, size0 = geom.pad_lo[0], geom.in_size[0]
                a, b = max(r0, lo0), min(r0 + rows, lo0 + size0)
                if b > a:
                    src = wide[(slice(None), slice(None), slice(a - r0, b - r0)) + tuple(
                        slice(lo, lo + s) for lo, s in zip(geom.pad_lo[1:], geom.in_size[1:]))]
                    result[bs, :, a - lo0:b - lo0] = src
            else:
                gp[:, :, r0:r0 + rows] = wide[(slice(None),) * 3 + tuple(
                    slice(0, p) for p in geom.padded_size[1:])]
        if not fold_zeros:
            result[bs] = fold_padding(gp, geom)
    return result


class GradMixin:
    """Gradient methods of the NumPy backend (see the module docstring).

    Shapes use ``G`` groups, ``K`` kernel taps, ``P`` positions; ``geom`` is the forward
    call's geometry. ``deterministic`` is accepted for interface parity with the device
    backends: NumPy's reductions are always deterministic.
    """

    # ------------------------------------------------------------------ conv
    def conv_input_grad(self, weight, grad_output, geom: ConvGeometry):
        """d<grad_output, conv(x, weight)>/dx: (N, C_in, *in).

        Stride 1, where it moves less data (:func:`_stride1_input_pays`): a correlation of
        the zero-padded grad_output with the flipped weights (:func:`_stride1_input_grad`,
        one GEMM per chunk). Otherwise: col2im of W^T @ grad_output.
        """
        dtype = grad_output.dtype
        cdt = accumulation_dtype(dtype)
        # (the correlation multiplies grad_output's zero halo by every tap: with an inf or
        # NaN weight, 0 * inf would be NaN where no such tap reaches; col2im has no halo)
        if _stride1_input_pays(weight.shape, geom) and np.isfinite(weight).all():
            return _stride1_input_grad(weight.astype(cdt, copy=False),
                                       grad_output, geom).astype(dtype, copy=False)
        n, c_out = grad_output.shape[:2]
        g = geom.groups
        og, cg = c_out // g, weight.shape[1]
        taps = int(np.prod(geom.kernel))
        out_positions = int(np.prod(geom.out_size))
        # W^T per group: (G, cg*K, og)
        wt = weight.astype(cdt, copy=False).reshape(g, og, cg * taps).transpose(0, 2, 1)
        result = np.empty((n, g * cg, *geom.in_size), dtype=cdt)
        per_image = g * cg * taps * out_positions * cdt.itemsize
        for bs in _batch_chunks(n, per_image):
            nb = bs.stop - bs.start
            go = grad_output[bs].astype(cdt, copy=False).reshape(nb, g, og, out_positions)
            cols = np.matmul(wt, go)  # (nb, G, cg*K, P)
            cols = cols.reshape(nb, g * cg, taps, *geom.out_size)
            result[bs] = fold_padding(_col2im(cols, geom), geom)
        return result.astype(dtype, copy=False)

    def conv_weight_grad(self, x, grad_output, geom: ConvGeometry, deterministic=False):
        """d<grad_output, conv(x, weight)>/dweight: (C_out, C_in/G, *k).

        Per image and group: grad_output (og, P) @ columns^T (P, cg*K), summed over images.
        """
        dtype = x.dtype
        cdt = accumulation_dtype(dtype)
        n, c_in = x.shape[:2]
        c_out = grad_output.shape[1]
        g = geom.groups
        og, cg = c_out // g, c_in // g
        taps = int(np.prod(geom.kernel))
        out_positions = int(np.prod(geom.out_size))
        acc = np.zeros((g, og, cg * taps), dtype=cdt)
        per_image = 2 * c_in * taps * out_positions * cdt.itemsize
        for bs in _batch_chunks(n, per_image):
            cols = _grouped_columns(x[bs].astype(cdt, copy=False), geom, g)  # (nb, G, cg*K, P)
            go = grad_output[bs].astype(cdt, copy=False).reshape(-1, g, og, out_positions)
            acc += _contract_positions(go, cols)
        return acc.reshape(c_out, cg, *geom.kernel).astype(dtype, copy=False)

    # -------------------------------------------------------- conv_transpose
    def conv_transpose_input_grad(self, weight, grad_output, geom: ConvGeometry):
        """d<grad_output, conv_transpose(x, weight)>/dx: (N, C_in, *in).

        A correlation of grad_output with the weight: weight (G, cg, og*K) @ columns of the
        zero-padded grad_output (G, og*K, P_in), in the conv geometry ``geom`` transposes.
        """
        dtype = grad_output.dtype
        cdt = accumulation_dtype(dtype)
        n, c_out = grad_output.shape[:2]
        c_in = weight.shape[0]
        g = geom.groups
        cg, og = c_in // g, c_out // g
        taps = int(np.prod(geom.kernel))
        cgeom = transpose_as_conv(geom)  # in: grad_output's size, out: x's size
        in_positions = int(np.prod(geom.in_size))
        w = weight.astype(cdt, copy=False).reshape(g, cg, og * taps)
        result = np.empty((n, c_in, *geom.in_size), dtype=cdt)
        per_image = 2 * c_out * taps * in_positions * cdt.itemsize
        for bs in _batch_chunks(n, per_image):
            nb = bs.stop - bs.start
            go = grad_output[bs].astype(cdt, copy=False)
            cols = _grouped_columns(go, cgeom, g, "zeros")  # (nb, G, og*K, P_in)
            target = result[bs].reshape(nb, g, cg, in_positions)
            np.matmul(w, cols, out=target)
        return result.astype(dtype, copy=False)

    def conv_transpose_weight_grad(self, x, grad_output, geom: ConvGeometry,
                                   deterministic=False):
        """d<grad_output, conv_transpose(x, weight)>/dweight: (C_in, C_out/G, *k).

        Per image and group: x (cg, P_in) @ columns^T of the zero-padded grad_output
        (P_in, og*K), summed over images.
        """
        dtype = x.dtype
        cdt = accumulation_dtype(dtype)
        n, c_in = x.shape[:2]
        c_out = grad_output.shape[1]
        g = geom.groups
        cg, og = c_in // g, c_out // g
        taps = int(np.prod(geom.kernel))
        cgeom = transpose_as_conv(geom)
        in_positions = int(np.prod(geom.in_size))
        acc = np.zeros((g, cg, og * taps), dtype=cdt)
        per_image = 2 * c_out * taps * in_positions * cdt.itemsize
        for bs in _batch_chunks(n, per_image):
            go = grad_output[bs].astype(cdt, copy=False)
            cols = _grouped_columns(go, cgeom, g, "zeros")  # (nb, G, og*K, P_in)
            xr = x[bs].astype(cdt, copy=False).reshape(-1, g, cg, in_positions)
            acc += _contract_positions(xr, cols)
        return acc.reshape(c_in, og, *geom.kernel).astype(dtype, copy=False)

    # --------------------------------------------------------------- depthwise
    def depthwise_conv_input_grad(self, weight, grad_output, geom: ConvGeometry):
        """d<grad_output, depthwise_conv(x, weight)>/dx: (N, C, *in). Per tap, sum over the
        multiplier, scatter-add into the padded gradient, then fold the padding.

        Cache-blocked (:func:`_depthwise_blocks`): all taps of one block of images and
        channels run before the next block, so its grad_output, padded gradient and product
        buffer stay in cache (1.5x faster than whole-array passes per tap on the CPU
        benchmark's 8x256x56x56)."""
        dtype = grad_output.dtype
        cdt = accumulation_dtype(dtype)
        n = grad_output.shape[0]
        c = geom.groups
        mult = weight.shape[0] // c
        # (N, C, mult, *out) and (C, mult, K)
        go = grad_output.astype(cdt, copy=False).reshape(n, c, mult, *geom.out_size)
        w = weight.astype(cdt, copy=False).reshape(c, mult, -1)
        padded = np.zeros((n, c, *geom.padded_size), dtype=cdt)
        taps = list(np.ndindex(*geom.kernel))
        per_channel = ((mult + 1) * int(np.prod(geom.out_size))
                       + int(np.prod(geom.padded_size))) * cdt.itemsize
        blocks = list(_depthwise_blocks(n, c, per_channel))
        nb_max = max(b.stop - b.start for b, _ in blocks)
        cb_max = max(cs.stop - cs.start for _, cs in blocks)
        product = np.empty((nb_max, cb_max, *geom.out_size), dtype=cdt)
        for bs, cs in blocks:
            g, dst = go[bs, cs], padded[bs, cs]  # (nb, cb, mult, *out), (nb, cb, *padded)
            buf = product[:bs.stop - bs.start, :cs.stop - cs.start]
            for k, tap in enumerate(taps):
                np.einsum("ncm...,cm->nc...", g, w[cs, :, k], out=buf)
                dst[_tap_slices(tap, geom)] += buf
        return fold_padding(padded, geom).astype(dtype, copy=False)

    def depthwise_conv_weight_grad(self, x, grad_output, geom: ConvGeometry,
                                   deterministic=False):
        """d<grad_output, depthwise_conv(x, weight)>/dweight: (C * mult, 1, *k). Per tap, a
        reduction over batch and positions of grad_output times the shifted padded input,
        cache-blocked as :meth:`depthwise_conv_input_grad` (with the zero-padding copy below,
        2.9x faster there)."""
        dtype = x.dtype
        cdt = accumulation_dtype(dtype)
        n, c = x.shape[:2]
        mult = grad_output.shape[1] // c
        go = grad_output.astype(cdt, copy=False).reshape(n, c, mult, *geom.out_size)
        padded = pad_gather(x.astype(cdt, copy=False), geom)
        taps = list(np.ndindex(*geom.kernel))
        grad = np.zeros((c, mult, len(taps)), dtype=cdt)
        per_channel = (mult * int(np.prod(geom.out_size))
                       + int(np.prod(geom.padded_size))) * cdt.itemsize
        space = "xyz"[:len(geom.out_size)]  # the spatial dims, summed with the batch
        subscripts = f"ncm{space},nc{space}->cm"
        for bs, cs in _depthwise_blocks(n, c, per_channel):
            g, src = go[bs, cs], padded[bs, cs]
            for k, tap in enumerate(taps):
                grad[cs, :, k] += np.einsum(subscripts, g, src[_tap_slices(tap, geom)])
        return grad.reshape(c * mult, 1, *geom.kernel).astype(dtype, copy=False)

    # -------------------------------------------------------------- deformable
    def deform_conv2d_grad(self, x, offset, weight, mask, grad_output, geom: ConvGeometry,
                           offset_groups: int):
        """Gradients of ``<grad_output, deform_conv2d(x, offset, weight, mask=mask)>``.

        Returns ``(input, offset, weight, mask)`` gradients (mask None without a mask),
        with torchvision's definitions: each sample is bilinear in the four neighbouring
        cells, a cell outside the image reads zero, and a sample at ``y <= -1``, ``y >= H``,
        ``x <= -1`` or ``x >= W`` (or a NaN/inf one) is not read by the forward (so its input
        and mask gradients are zero). The offset gradient is the derivative of the bilinear
        weights of the cell that ``floor`` picks: from the right at integer positions,
        including ``y == -1`` or ``x == -1``, where it is the slope into the image
        (torchvision's convention; docs/kernels.md).
        """
        dtype = x.dtype
        cdt = accumulation_dtype(dtype)
        n, c_in, height, width = x.shape
        c_out = weight.shape[0]
        kh, kw = geom.kernel
        taps = kh * kw
        ho, wo = geom.out_size
        p = ho * wo
        g, og_count = geom.groups, offset_groups
        cg = c_in // g
        cpo = c_in // og_count  # channels per offset group
        # Base sampling positions (K, P): row = out_row*stride - pad + tap_row*dilation
        rows = (np.arange(ho) * geom.stride[0] - geom.pad_lo[0]).repeat(wo)
        cols_x = np.tile(np.arange(wo) * geom.stride[1] - geom.pad_lo[1], ho)
        tap_rows = (np.arange(kh) * geom.dilation[0]).repeat(kw)
        tap_cols = np.tile(np.arange(kw) * geom.dilation[1], kh)
        base_y = (tap_rows[:, None] + rows[None, :]).astype(cdt)
        base_x = (tap_cols[:, None] + cols_x[None, :]).astype(cdt)
        w = weight.astype(cdt, copy=False).reshape(g, c_out // g, cg * taps)
        wt = w.transpose(0, 2, 1)  # (G, cg*K, og)
        grad_x = np.empty((n, c_in, height, width), dtype=cdt)
        grad_offset = np.empty((n, og_count, taps, 2, p), dtype=cdt)
        grad_mask = None if mask is None else np.empty((n, og_count, taps, p), dtype=cdt)
        grad_w = np.zeros_like(w)
        per_image = 8 * c_in * taps * p * cdt.itemsize
        for bs in _batch_chunks(n, per_image):
            nb = bs.stop - bs.start
            off = offset[bs].astype(cdt, copy=False).reshape(nb, og_count, taps, 2, p)
            sy = base_y + off[:, :, :, 0]  # (nb, OG, K, P) sample rows
            sx = base_x + off[:, :, :, 1]
            # The forward samples a point only inside (-1, H) x (-1, W); the offset gradient
            # differentiates the floor cell's corners on [-1, H) x [-1, W) (torchvision's
            # get_coordinate_weight has no inside test: at y == -1 it is the slope into the
            # image). Both tests are false for NaN; +-inf is outside.
            inside = (sy > -1) & (sy < height) & (sx > -1) & (sx < width)
            cell = (sy >= -1) & (sy < height) & (sx >= -1) & (sx < width)
            # a point outside the cell range is parked at (-2, -2), where all 4 corners are
            # outside: NaN, inf or huge offsets never reach floor and the cast to int64
            sy = np.where(cell, sy, cdt.type(-2))
            sx = np.where(cell, sx, cdt.type(-2))
            y_lo, x_lo = np.floor(sy), np.floor(sx)
            fy, fx = sy - y_lo, sx - x_lo  # fractional parts
            y_lo, x_lo = y_lo.astype(np.int64), x_lo.astype(np.int64)
            mask_r = 1 if mask is None else (
                mask[bs].astype(cdt, copy=False).reshape(nb, og_count, 1, taps * p))
            img = x[bs].astype(cdt, copy=False).reshape(nb, og_count, cpo, height * width)
            # (cell row step, cell col step, bilinear weight, d weight/dy, d weight/dx)
            corners = (
                (0, 0, (1 - fy) * (1 - fx), -(1 - fx), -(1 - fy)),
                (0, 1, (1 - fy) * fx, -fx, 1 - fy),
                (1, 0, fy * (1 - fx), 1 - fx, -fy),
                (1, 1, fy * fx, fx, fy),
            )
            shape = (nb, og_count, 1, taps * p)
            inside_r = inside.reshape(shape)
            sampled = np.zeros((nb, og_count, cpo, taps * p), dtype=cdt)
            d_dy = np.zeros_like(sampled)
            d_dx = np.zeros_like(sampled)
            cells = []
            for dy, dx, wgt, wgt_dy, wgt_dx in corners:
                cy, cx = y_lo + dy, x_lo + dx
                valid = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
                flat = np.where(valid, cy * width + cx, 0).reshape(shape)
                # a corner outside the image reads 0 (not 0 * x[..., 0], NaN for inf/NaN there)
                value = np.where(valid.reshape(shape), np.take_along_axis(img, flat, axis=3), 0)
                sampled += value * wgt.reshape(shape)
                d_dy += value * wgt_dy.reshape(shape)
                d_dx += value * wgt_dx.reshape(shape)
                # the input gradient reaches a corner inside the image, of an inside sample,
                # whose weight is not zero (torchvision skips zero weights: |y - yp| < 1)
                reach = (valid & inside & (wgt != 0)).reshape(shape)
                cells.append((flat, wgt.reshape(shape), reach))
            # the bilinear value the forward reads (before the mask): zero outside, even where
            # a corner it never reads holds inf/NaN
            sampled = np.where(inside_r, sampled, 0)
            # weight: grad_output (og, P) @ columns^T (P, cg*K) per image and group
            columns = (sampled * mask_r).reshape(nb, g, cg * taps, p)
            go = grad_output[bs].astype(cdt, copy=False).reshape(nb, g, c_out // g, p)
            grad_w += _contract_positions(go, columns)
            # gradient of the columns: W^T @ grad_output -> (nb, OG, cpo, K*P)
            grad_cols = np.matmul(wt, go).reshape(nb, og_count, cpo, taps * p)
            if mask is not None:
                grad_mask[bs] = (grad_cols * sampled).sum(axis=2).reshape(nb, og_count, taps, p)
            scaled = grad_cols * mask_r
            grad_offset[bs, :, :, 0] = (scaled * d_dy).sum(axis=2).reshape(nb, og_count, taps, p)
            grad_offset[bs, :, :, 1] = (scaled * d_dx).sum(axis=2).reshape(nb, og_count, taps, p)
            # input: scatter the scaled column gradient onto the four cells of each sample
            image_base = (np.arange(nb * og_count * cpo) * (height * width)).reshape(
                nb, og_count, cpo, 1)
            acc = np.zeros(nb * c_in * height * width, dtype=np.float64)
            for flat, wgt, reach in cells:
                weights = np.where(reach, scaled * wgt, 0)
                acc += np.bincount((image_base + flat).ravel(), weights=weights.ravel(),
                                   minlength=acc.size)
            grad_x[bs] = acc.reshape(nb, c_in, height, width)
        grad_offset = grad_offset.reshape(n, 2 * og_count * taps, ho, wo)
        grad_w = grad_w.reshape(weight.shape)
        if grad_mask is not None:
            grad_mask = grad_mask.reshape(n, og_count * taps, ho, wo).astype(dtype, copy=False)
        return (grad_x.astype(dtype, copy=False), grad_offset.astype(dtype, copy=False),
                grad_w.astype(dtype, copy=False), grad_mask)
