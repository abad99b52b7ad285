"""gpuconv on Dask arrays: the forward functions, chunk by chunk, lazily.

``gpuconv.dask.conv(x, weight, ...)`` takes a ``dask.array.Array`` ``x`` with NumPy or CuPy
chunks and returns a lazy Dask array with the same chunk type whose values are those of
``gpuconv.conv`` on the whole array (within rounding: a chunk sums the same products, perhaps
in another order). Weights and bias are in-memory arrays; ``offset``/``mask`` of
:func:`deform_conv2d` may be in-memory or Dask arrays. Nothing here gathers the whole array:
every output chunk is computed by one task from the input chunks its receptive field touches.

This module is the only one that imports Dask; ``import gpuconv`` does not.

How the chunks are mapped
-------------------------
* **Batch** chunks map independently.
* **Spatial** chunks: output chunk ``[o0, o1)`` of a convolution reads the input window
  ``[o0 * stride - pad_lo, (o1 - 1) * stride - pad_lo + extent)`` with
  ``extent = dilation * (k - 1) + 1``: the exact halo, asymmetric when the padding or the stride
  makes it so. Each task gathers that window from the neighbouring input chunks (one or several
  on each side: chunks smaller than the halo work) and applies the padding mode *only where the
  window leaves the array*, in the task, by index: ``zeros`` pads zeros, ``reflect`` mirrors
  without repeating the edge (NumPy's ``'reflect'``, as in torch), ``replicate`` repeats the
  edge, ``circular`` takes the wrap-around data from the chunks at the opposite border. Dask's
  own ``boundary=`` modes are not used (its ``'reflect'`` is NumPy's ``'symmetric'``).
* **Output chunks follow the input chunks.** With stride 1 they are the input chunks (a
  'same' convolution keeps the chunking, so a Zarr store with the input's chunks can take the
  result without locks). With stride ``s`` the output boundary after input boundary ``b`` is
  ``ceil(b / s)``: output chunk boundaries sit on input positions ``o * s`` that are multiples
  of the stride, at or just after the input boundary. No rechunk of the input is needed when
  the input boundaries are not multiples of the stride: each task gathers its window (its
  chunk, shifted by less than one stride, plus the halo) from whichever chunks hold it, which is
  what a rechunk would move, done per task. Input chunks narrower than the stride would give
  empty output chunks; those are merged into their neighbours. ``conv_transpose`` puts output
  boundaries at ``b * stride`` (less the crop).
* **Channels** are summed over within a group, so the channel axis is rechunked to whole
  groups: one chunk for ``groups=1``; for ``groups > 1`` every chunk boundary is rounded to a
  multiple of ``C_in / groups`` and each channel chunk maps to its own output-channel chunk with
  the matching slice of the weights (no reduction across tasks). ``depthwise_conv`` keeps the
  channel chunks as they are. ``separable_conv`` and ``deform_conv2d`` use one channel chunk.
* **conv_transpose** uses the gather form: output chunk ``[p0, p1)`` (in the full transposed
  output) needs the inputs ``i`` with ``p0 - extent < i * stride < p1``, a halo of about
  ``ceil(extent / stride)`` input positions; the task runs ``gpuconv.conv_transpose`` on them and
  keeps its output chunk.
* **deform_conv2d**: offsets are unbounded, so with more than one spatial output chunk the call
  needs ``max_offset=``, a bound on ``|offset|``. The halo grows by ``ceil(max_offset)`` below
  and ``floor(max_offset) + 1`` above (the bilinear corners). A task whose offsets exceed the
  bound raises ``ValueError`` at compute time: never a silently wrong value. Batch chunking
  needs no bound.
* **convolve/correlate**: ``a`` is a long 1-D Dask array and ``v`` an in-memory filter; each
  output chunk is ``numpy``-style ``'valid'`` convolution of its window of the zero-padded
  ``a`` (overlap-save).

Memory per task is bounded by one output chunk, its input window (chunk + halo) and the weights.
A worker also holds the input chunks that finished tasks share with tasks still to run: with
Dask's ordering that front is about two slabs of chunks along the first chunked spatial axis.
So for large volumes choose chunks thin along the first spatial axis and wide along the others
(e.g. ``(1, C, 4, 256, 512)`` for a ``512^3`` volume): measured in ``benchmarks/dask_bench.py``.
"""

from __future__ import annotations

import math
import operator
from itertools import product

import numpy as np

import dask.array as da
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

import gpuconv
from . import _shapes, _validate
from .backends.numpy_grad import pad_index

__all__ = [
    "conv", "conv1d", "conv2d", "conv3d",
    "conv_transpose", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "depthwise_conv", "separable_conv", "deform_conv2d", "convolve", "correlate",
]


# ----------------------------------------------------------------------- planning


def _check_dask(op: str, name: str, a, ndim=None):
    """``a`` must be a Dask array with known chunk sizes (of rank ``ndim`` when given)."""
    if not isinstance(a, da.Array):
        raise TypeError(
            f"gpuconv.dask.{op}: {name} must be a dask.array.Array, got "
            f"{type(a).__module__}.{type(a).__name__} (use gpuconv.{op} for in-memory arrays, "
            f"or wrap it with dask.array.from_array)"
        )
    if any(math.isnan(c) for cs in a.chunks for c in cs):
        raise ValueError(
            f"gpuconv.dask.{op}: {name} has unknown chunk sizes {a.chunks}; the halo of each "
            f"chunk cannot be planned. Call {name}.compute_chunk_sizes() first"
        )
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"gpuconv.dask.{op}: {name} must be {ndim}-D, got shape {a.shape}")


def _starts(chunks) -> list[int]:
    """Start offsets of chunks, plus the end: (3, 3, 2) -> [0, 3, 6, 8]."""
    return [0, *np.cumsum(chunks).tolist()]


def _axis_plan(chunks, start: int, stop: int, mode: str):
    """How one task builds the input window ``[start, stop)`` along one spatial axis.

    Returns ``(pieces, take, zlo, zhi)``: ``pieces`` lists ``(chunk_index, lo, hi)`` slices of
    input chunks whose concatenation is the buffer; ``take`` indexes the buffer into the window
    body (``None`` when the body is the buffer itself); ``zlo``/``zhi`` zeros go before/after.
    """
    bounds = _starts(chunks)
    n = bounds[-1]
    src = pad_index(n, -start, stop - n, mode)  # input cell of each of start .. stop - 1
    zlo = int(np.argmax(src >= 0)) if (src >= 0).any() else len(src)
    zhi = int(np.argmax(src[::-1] >= 0)) if (src >= 0).any() else 0
    body = src[zlo:len(src) - zhi]
    if body.size == 0:
        return [(0, 0, 0)], None, zlo, zhi
    uniq = np.unique(body)
    # Contiguous runs of needed source indices, then each run cut at the chunk boundaries.
    cuts = np.flatnonzero(np.diff(uniq) != 1) + 1
    pieces = []
    for run in np.split(uniq, cuts):
        r0, r1 = int(run[0]), int(run[-1]) + 1
        for c in range(len(chunks)):
            lo, hi = max(r0, bounds[c]), min(r1, bounds[c + 1])
            if lo < hi:
                pieces.append((c, lo - bounds[c], hi - bounds[c]))
    take = None if np.array_equal(uniq, body) else np.searchsorted(uniq, body)
    return pieces, take, zlo, zhi


def _out_chunks(boundaries, size: int) -> tuple[int, ...]:
    """Chunk sizes of ``[0, size)`` cut at ``boundaries`` (clipped; empty chunks dropped)."""
    cuts = sorted({min(max(int(b), 0), size) for b in boundaries} | {0, size})
    sizes = tuple(b - a for a, b in zip(cuts[:-1], cuts[1:]))
    return sizes if sizes else (0,)


def _conv_out_chunks(chunks, size_out, stride):
    """Output chunks that follow the input chunks: the boundary after input boundary ``b`` is
    ``ceil(b / stride)``, the first output whose input position ``o * stride`` is at or after
    ``b`` (so with stride 1 the output chunks are the input chunks)."""
    starts = _starts(chunks)[1:-1]
    return _out_chunks([-(-b // stride) for b in starts], size_out)


def _group_chunks(chunks, per_group: int):
    """Channel chunks rounded to whole groups of ``per_group`` channels (at least one)."""
    starts = _starts(chunks)
    total = starts[-1]
    cuts = {per_group * round(b / per_group) for b in starts[1:-1]}
    return _out_chunks(cuts, total)


# ------------------------------------------------------------------- the tasks


def _assemble(blocks, plans, depth: int = 0):
    """Concatenate the nested list of input pieces and apply the per-axis plans."""
    if depth == len(plans):
        return blocks
    parts = [_assemble(b, plans, depth + 1) for b in blocks]
    buf = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2 + depth)
    if depth:
        return buf
    pads = [(0, 0), (0, 0)]
    for axis, (take, zlo, zhi) in enumerate(plans):
        if take is not None:
            buf = np.take(buf, take, axis=2 + axis)
        pads.append((zlo, zhi))
    if any(p != (0, 0) for p in pads):
        buf = np.pad(buf, pads)
    return buf


def _window_task(xname, index_prefix, axis_pieces, plans):
    """A nested list of getitem tasks: the input pieces one output chunk needs."""
    def nest(axis, idx, slices):
        if axis == len(axis_pieces):
            key = (xname, *index_prefix, *idx)
            return (operator.getitem, key, (slice(None), slice(None), *slices))
        return [nest(axis + 1, idx + (c,), slices + (slice(lo, hi),))
                for c, lo, hi in axis_pieces[axis]]
    return nest(0, (), ())


def _conv_kernel(blocks, plans, weight, bias, params):
    """One output chunk of conv/depthwise/separable: the op on the gathered window."""
    window = _assemble(blocks, plans)
    op, kwargs, w_slice = params
    if op == "separable_conv":
        dw, pw = weight
        return gpuconv.separable_conv(window, dw, pw, bias, padding=0, **kwargs)
    if w_slice is not None:
        weight = weight[w_slice]
        bias = None if bias is None else bias[w_slice]
    func = gpuconv.depthwise_conv if op == "depthwise_conv" else gpuconv.conv
    return func(window, weight, bias, padding=0, **kwargs)


def _transpose_kernel(blocks, plans, weight, bias, params):
    """One output chunk of conv_transpose: the transposed conv of the inputs that reach it,
    placed at its position in the chunk (positions nothing reaches hold only the bias)."""
    window = _assemble(blocks, plans)
    kwargs, w_slice, c_slice, out_shape, place, dtype = params
    weight = weight[w_slice]
    out = np.zeros_like(window, shape=(window.shape[0], c_slice.stop - c_slice.start, *out_shape),
                        dtype=dtype)
    if all(s > 0 for s in window.shape[2:]) and window.shape[0] > 0:
        local = gpuconv.conv_transpose(window, weight, None, padding=0, **kwargs)
        dst, src = [], []
        for (shift, length), size in zip(place, local.shape[2:]):
            lo, hi = max(shift, 0), min(shift + size, length)
            dst.append(slice(lo, max(lo, hi)))
            src.append(slice(lo - shift, max(lo, hi) - shift))
        out[(slice(None), slice(None), *dst)] = local[(slice(None), slice(None), *src)]
    if bias is not None:
        out += bias[c_slice].astype(dtype).reshape((1, -1) + (1,) * len(out_shape))
    return out


def _deform_kernel(blocks, plans, weight, bias, offset, mask, params):
    """One output chunk of deform_conv2d on a window with a ``max_offset`` margin."""
    window = _assemble(blocks, plans)
    kwargs, margin_lo, extra, max_offset, where = params
    if max_offset is not None and offset.size:
        ok = np.abs(offset) <= max_offset
        if not bool(ok.all()):
            worst = float(np.nanmax(np.abs(offset))) if not bool(np.isnan(offset).any()) \
                else float("nan")
            raise ValueError(
                f"gpuconv.dask.deform_conv2d: an offset of magnitude {worst} in the output chunk "
                f"at {where} exceeds max_offset={max_offset}; the chunk's halo only covers "
                f"|offset| <= max_offset. Pass a larger max_offset (or chunk only the batch axis)"
            )
    n, c2, h, w = offset.shape
    # The window starts margin_lo rows/cols before the chunk's first receptive field, so each
    # sample sits margin_lo further in: shift the offsets. The window's extra length gives the
    # local call `extra` more outputs per axis (zero offsets, cropped away below).
    local = offset.reshape(n, c2 // 2, 2, h, w).copy()
    local[:, :, 0] += margin_lo[0]
    local[:, :, 1] += margin_lo[1]
    local = np.pad(local.reshape(n, c2, h, w), ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])))
    if mask is not None:
        mask = np.pad(mask, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])))
    result = gpuconv.deform_conv2d(window, local, weight, bias, padding=0, mask=mask, **kwargs)
    return np.ascontiguousarray(result[:, :, :h, :w])


def _signal_kernel(blocks, plans, v, op):
    window = _assemble(blocks, plans)[0, 0]
    return getattr(gpuconv, op)(window, v, "valid")


# ------------------------------------------------------------------ graph build


def _build(op, x, out_chunks, windows, modes, kernel, make_args, dtype, extra_deps=(),
           values=None):
    """The lazy result: one task per output chunk.

    ``windows[a][j]`` is the input window ``(start, stop)`` of output chunk ``j`` along spatial
    axis ``a``; ``make_args(key_index, weight_keys...)`` returns the task's trailing args.
    ``x`` is (N, C, *spatial) or, for convolve/correlate, wrapped to (1, 1, L).
    """
    indices = list(product(*(range(len(c)) for c in out_chunks)))
    args = [make_args(idx) for idx in indices]
    # The name covers everything the values depend on: the weights' tokens are in their keys.
    token = tokenize(op, x.name, out_chunks, windows, modes, dtype, kernel.__name__, args,
                     sorted(values or {}))
    name = f"gpuconv-{op}-{token}"
    spatial = len(windows)
    plans = [[_axis_plan(x.chunks[2 + a], s, e, modes[a]) for s, e in windows[a]]
             for a in range(spatial)]
    dsk = dict(values or {})  # the in-memory weights, once, as keys the tasks name
    for idx, task_args in zip(indices, args):
        b, cj, *sp = idx
        pieces = [plans[a][sp[a]][0] for a in range(spatial)]
        axis_plans = tuple(plans[a][sp[a]][1:] for a in range(spatial))
        in_prefix = (b, cj)
        blocks = _window_task(x.name, in_prefix, pieces, axis_plans)
        dsk[(name, *idx)] = (kernel, blocks, axis_plans, *task_args)
    meta = meta_from_array(x._meta, len(out_chunks), dtype=dtype)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x, *extra_deps])
    return da.Array(graph, name, out_chunks, meta=meta)


def _put(dsk_values: dict, name: str, value):
    """Store an in-memory array in the graph once, return its key (None stays None)."""
    if value is None:
        return None
    key = f"{name}-{len(dsk_values)}"
    dsk_values[key] = value
    return key


def _meta_x(x, op):
    """A zero-batch in-memory stand-in for ``x`` (same array type): gpuconv validates the call
    on it and returns an empty result of the right shape and dtype, without any work."""
    if not 3 <= x.ndim <= 5:
        raise ValueError(
            f"gpuconv.dask.{op}: x must have shape (N, C_in, *spatial) with 1 to 3 spatial "
            f"dims, got shape {x.shape}"
        )
    return np.empty_like(x._meta, shape=(0, *x.shape[1:]), dtype=x.dtype)


def _spatial_windows(x, out_chunks_sp, stride, pad_lo, extent, margin_lo=(), margin_hi=()):
    windows = []
    for a, chunks in enumerate(out_chunks_sp):
        ml = margin_lo[a] if margin_lo else 0
        mh = margin_hi[a] if margin_hi else 0
        starts = _starts(chunks)
        windows.append([(o0 * stride[a] - pad_lo[a] - ml,
                         (o1 - 1) * stride[a] - pad_lo[a] + extent[a] + mh)
                        for o0, o1 in zip(starts[:-1], starts[1:])])
    return windows


# ------------------------------------------------------------------- public API


def _conv_family(op, x, weight, bias, *, stride, padding, dilation, groups, padding_mode,
                 spatial_ndim=None, pointwise=None):
    _check_dask(op, "x", x)
    meta = _meta_x(x, op)
    if op == "separable_conv":
        probe = gpuconv.separable_conv(meta, weight, pointwise, bias, stride=stride,
                                       padding=padding, dilation=dilation,
                                       padding_mode=padding_mode)
        geom = _validate.depthwise_setup(op, x.shape, weight.shape, stride=stride, padding=padding,
                                         dilation=dilation, padding_mode=padding_mode)
    elif op == "depthwise_conv":
        probe = gpuconv.depthwise_conv(meta, weight, bias, stride=stride, padding=padding,
                                       dilation=dilation, padding_mode=padding_mode)
        geom = _validate.depthwise_setup(op, x.shape, weight.shape, stride=stride, padding=padding,
                                         dilation=dilation, padding_mode=padding_mode)
    else:
        probe = getattr(gpuconv, op)(meta, weight, bias, stride=stride, padding=padding,
                                     dilation=dilation, groups=groups,
                                     padding_mode=padding_mode)
        geom = _validate.conv_setup(op, x.shape, weight.shape, spatial_ndim=spatial_ndim,
                                    stride=stride, padding=padding, dilation=dilation,
                                    groups=groups, padding_mode=padding_mode)
    dtype = probe.dtype
    c_in, c_out = x.shape[1], probe.shape[1]
    kwargs = dict(stride=geom.stride, dilation=geom.dilation)
    if op == "separable_conv":
        x = x.rechunk({1: -1})
        ch_out, w_slices = (c_out,), [None]
    elif op == "depthwise_conv":
        mult = c_out // c_in
        ch_out = tuple(c * mult for c in x.chunks[1])
        st = _starts(x.chunks[1])
        w_slices = [slice(a * mult, b * mult) for a, b in zip(st[:-1], st[1:])]
    else:
        per_group, out_per_group = c_in // geom.groups, c_out // geom.groups
        x = x.rechunk({1: _group_chunks(x.chunks[1], per_group)})
        st = _starts(x.chunks[1])
        ch_out = tuple((b - a) // per_group * out_per_group for a, b in zip(st[:-1], st[1:]))
        w_slices = [slice(a // per_group * out_per_group, b // per_group * out_per_group)
                    for a, b in zip(st[:-1], st[1:])]
        group_counts = [(b - a) // per_group for a, b in zip(st[:-1], st[1:])]
    sp_chunks = tuple(
        _conv_out_chunks(x.chunks[2 + a], geom.out_size[a], geom.stride[a])
        for a in range(geom.ndim))
    out_chunks = (x.chunks[0], ch_out, *sp_chunks)
    extent = tuple(map(_shapes.full_extent, geom.kernel, geom.dilation))
    windows = _spatial_windows(x, sp_chunks, geom.stride, geom.pad_lo, extent)
    values = {}
    token = tokenize(weight, bias, pointwise)
    wkey = _put(values, f"gpuconv-weight-{token}",
                (weight, pointwise) if op == "separable_conv" else weight)
    bkey = _put(values, f"gpuconv-bias-{token}", bias)

    def make_args(idx):
        cj = idx[1]
        if op in ("conv", "conv1d", "conv2d", "conv3d"):
            params = (op, dict(kwargs, groups=group_counts[cj]), w_slices[cj])
        else:
            params = (op, dict(kwargs, padding_mode="zeros"), w_slices[cj])
        return wkey, bkey, params

    return _build(op, x, out_chunks, windows, [geom.padding_mode] * geom.ndim,
                  _conv_kernel, make_args, dtype, values=values)


def conv(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
         padding_mode="zeros"):
    """:func:`gpuconv.conv` on a Dask array ``x`` (N, C_in, *spatial); lazy result.

    Same arguments and values as :func:`gpuconv.conv` (no ``out=``). ``weight`` and ``bias``
    are in-memory arrays of the chunks' type (NumPy for NumPy chunks, CuPy for CuPy chunks).
    The channel axis is rechunked to whole groups (one chunk when ``groups=1``); the batch
    and spatial chunks are kept, output spatial chunks follow them (see the module docstring).

    Returns
    -------
    dask.array.Array, shape (N, C_out, *out_spatial)

    Raises
    ------
    TypeError
        ``x`` is not a Dask array; the same type errors as :func:`gpuconv.conv`.
    ValueError
        Unknown chunk sizes; the same value errors as :func:`gpuconv.conv`.

    Examples
    --------
    >>> import numpy as np, dask.array as da, gpuconv, gpuconv.dask
    >>> x = np.random.default_rng(0).random((1, 2, 20, 20))
    >>> w = np.ones((3, 2, 3, 3))
    >>> y = gpuconv.dask.conv(da.from_array(x, chunks=(1, 2, 7, 7)), w, padding="same",
    ...                       padding_mode="reflect")
    >>> y.chunks[2:], np.allclose(y.compute(), gpuconv.conv(x, w, padding="same",
    ...                                                      padding_mode="reflect"))
    (((7, 7, 6), (7, 7, 6)), True)
    """
    return _conv_family("conv", x, weight, bias, stride=stride, padding=padding,
                        dilation=dilation, groups=groups, padding_mode=padding_mode)


def _ranked(ndim: int, name: str):
    def wrapper(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                padding_mode="zeros"):
        return _conv_family(name, x, weight, bias, stride=stride, padding=padding,
                            dilation=dilation, groups=groups, padding_mode=padding_mode,
                            spatial_ndim=ndim)

    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = f":func:`conv` with exactly {ndim} spatial dim(s); same arguments."
    return wrapper


conv1d = _ranked(1, "conv1d")
conv2d = _ranked(2, "conv2d")
conv3d = _ranked(3, "conv3d")


def depthwise_conv(x, weight, bias=None, *, stride=1, padding=0, dilation=1,
                   padding_mode="zeros"):
    """:func:`gpuconv.depthwise_conv` on a Dask array; the channel chunks are kept as they are.

    Returns
    -------
    dask.array.Array, shape (N, C_in * multiplier, *out_spatial)
    """
    return _conv_family("depthwise_conv", x, weight, bias, stride=stride, padding=padding,
                        dilation=dilation, groups=None, padding_mode=padding_mode)


def separable_conv(x, depthwise_weight, pointwise_weight, bias=None, *, stride=1, padding=0,
                   dilation=1, padding_mode="zeros"):
    """:func:`gpuconv.separable_conv` on a Dask array; the channel axis becomes one chunk.

    Returns
    -------
    dask.array.Array, shape (N, C_out, *out_spatial)
    """
    return _conv_family("separable_conv", x, depthwise_weight, bias, stride=stride,
                        padding=padding, dilation=dilation, groups=None,
                        padding_mode=padding_mode, pointwise=pointwise_weight)


def conv_transpose(x, weight, bias=None, *, stride=1, padding=0, output_padding=0,
                   dilation=1, groups=1):
    """:func:`gpuconv.conv_transpose` on a Dask array ``x`` (N, C_in, *spatial); lazy result.

    Gather form: output chunk ``[p0, p1)`` of the full transposed output reads the inputs ``i``
    with ``p0 - extent < i * stride < p1`` (a halo of ``ceil(extent / stride)`` inputs) and
    runs :func:`gpuconv.conv_transpose` on them. Output chunk boundaries are the input chunk
    boundaries times the stride (less the crop ``padding``). The channel axis is rechunked to
    whole groups, as in :func:`conv`.

    Returns
    -------
    dask.array.Array, shape (N, C_out, *out_spatial)
    """
    return _conv_transpose("conv_transpose", x, weight, bias, stride=stride, padding=padding,
                           output_padding=output_padding, dilation=dilation, groups=groups)


def _conv_transpose(op, x, weight, bias, *, stride, padding, output_padding, dilation, groups,
                    spatial_ndim=None):
    """The body of :func:`conv_transpose` and its ranked twins (``op`` names the caller)."""
    _check_dask(op, "x", x)
    probe = getattr(gpuconv, op)(_meta_x(x, op), weight, bias, stride=stride, padding=padding,
                                 output_padding=output_padding, dilation=dilation,
                                 groups=groups)
    geom = _validate.conv_transpose_setup(op, x.shape, weight.shape, spatial_ndim=spatial_ndim,
                                          stride=stride, padding=padding,
                                          output_padding=output_padding, dilation=dilation,
                                          groups=groups)
    dtype = probe.dtype
    c_in, c_out = x.shape[1], probe.shape[1]
    per_group, out_per_group = c_in // geom.groups, c_out // geom.groups
    x = x.rechunk({1: _group_chunks(x.chunks[1], per_group)})
    st = _starts(x.chunks[1])
    ch_out = tuple((b - a) // per_group * out_per_group for a, b in zip(st[:-1], st[1:]))
    extent = tuple(map(_shapes.full_extent, geom.kernel, geom.dilation))
    sp_chunks, windows, places = [], [], []
    for a in range(geom.ndim):
        s, lo, n = geom.stride[a], geom.pad_lo[a], geom.in_size[a]
        chunks = _out_chunks([b * s for b in _starts(x.chunks[2 + a])[1:-1]],
                             geom.out_size[a])
        sp_chunks.append(chunks)
        ostarts = _starts(chunks)
        win, place = [], []
        for o0, o1 in zip(ostarts[:-1], ostarts[1:]):
            p0, p1 = o0 + lo, o1 + lo
            i0 = max(0, -(-(p0 - extent[a] + 1) // s))
            i1 = min(n, (p1 - 1) // s + 1)
            i1 = max(i1, i0)
            win.append((i0, i1))
            place.append((i0 * s - p0, o1 - o0))
        windows.append(win)
        places.append(place)
    out_chunks = (x.chunks[0], ch_out, *sp_chunks)
    kwargs = dict(stride=geom.stride, dilation=geom.dilation)
    values = {}
    token = tokenize(weight, bias)
    wkey = _put(values, f"gpuconv-weight-{token}", weight)
    bkey = _put(values, f"gpuconv-bias-{token}", bias)

    def make_args(idx):
        cj, sp = idx[1], idx[2:]
        a0, a1 = st[cj], st[cj + 1]
        g0, g1 = a0 // per_group, a1 // per_group
        params = (dict(kwargs, groups=g1 - g0), slice(a0, a1),
                  slice(g0 * out_per_group, g1 * out_per_group),
                  tuple(places[a][j][1] for a, j in enumerate(sp)),
                  tuple(places[a][j] for a, j in enumerate(sp)), dtype)
        return wkey, bkey, params

    return _build(op, x, out_chunks, windows, ["zeros"] * geom.ndim, _transpose_kernel,
                  make_args, dtype, values=values)


def _ranked_transpose(ndim: int, name: str):
    def wrapper(x, weight, bias=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                groups=1):
        return _conv_transpose(name, x, weight, bias, stride=stride, padding=padding,
                               output_padding=output_padding, dilation=dilation, groups=groups,
                               spatial_ndim=ndim)

    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = f":func:`conv_transpose` with exactly {ndim} spatial dim(s)."
    return wrapper


conv_transpose1d = _ranked_transpose(1, "conv_transpose1d")
conv_transpose2d = _ranked_transpose(2, "conv_transpose2d")
conv_transpose3d = _ranked_transpose(3, "conv_transpose3d")


def deform_conv2d(x, offset, weight, bias=None, *, stride=1, padding=0, dilation=1, mask=None,
                  max_offset=None):
    """:func:`gpuconv.deform_conv2d` on a Dask array ``x`` (N, C_in, H, W); lazy result.

    Parameters
    ----------
    offset, mask : ndarray or dask.array.Array
        As for :func:`gpuconv.deform_conv2d`; rechunked to the output chunks.
    max_offset : float, optional
        A bound on ``|offset|`` (both components). Required when ``x`` has more than one
        chunk along H or W: it sizes the halo (``ceil(max_offset)`` below,
        ``floor(max_offset) + 1`` above). An offset beyond it raises ``ValueError`` when the
        chunk is computed. Not needed when only the batch axis is chunked.

    Returns
    -------
    dask.array.Array, shape (N, C_out, H_out, W_out)
    """
    op = "deform_conv2d"
    _check_dask(op, "x", x)
    meta = _meta_x(x, op)

    def meta_of(a):
        if a is None:
            return None
        m = a._meta if isinstance(a, da.Array) else a
        return np.empty_like(m, shape=(0, *a.shape[1:]), dtype=a.dtype)

    if isinstance(offset, da.Array):
        _check_dask(op, "offset", offset)
    if isinstance(mask, da.Array):
        _check_dask(op, "mask", mask)
    probe = gpuconv.deform_conv2d(meta, meta_of(offset), weight, bias, stride=stride,
                                  padding=padding, dilation=dilation, mask=meta_of(mask))
    geom, _ = _validate.deform_setup(op, x.shape, offset.shape, weight.shape,
                                     None if mask is None else mask.shape, stride=stride,
                                     padding=padding, dilation=dilation)
    if offset.shape[0] != x.shape[0]:
        raise ValueError(f"gpuconv.dask.{op}: offset.shape[0]={offset.shape[0]} must equal "
                         f"x.shape[0]={x.shape[0]}")
    dtype = probe.dtype
    x = x.rechunk({1: -1})
    sp_chunks = tuple(
        _conv_out_chunks(x.chunks[2 + a], geom.out_size[a], geom.stride[a])
        for a in range(2))
    chunked = any(len(c) > 1 for c in sp_chunks)
    if max_offset is not None:
        if isinstance(max_offset, bool) or not isinstance(max_offset, (int, float)) or not (
                math.isfinite(max_offset) and max_offset >= 0):
            raise ValueError(f"gpuconv.dask.{op}: max_offset={max_offset!r} must be a finite "
                             f"number >= 0")
    elif chunked:
        raise ValueError(
            f"gpuconv.dask.{op}: x is chunked along H or W (chunks {x.chunks[2:]}), so the "
            f"halo needs a bound on the offsets: pass max_offset= (the largest |offset|), or "
            f"rechunk x to one chunk along H and W (batch chunks need no bound)"
        )
    m = 0.0 if max_offset is None else float(max_offset)
    margin_lo = (math.ceil(m),) * 2
    margin_hi = (math.floor(m) + 1,) * 2 if max_offset is not None else (0, 0)
    extent = tuple(map(_shapes.full_extent, geom.kernel, geom.dilation))
    windows = _spatial_windows(x, sp_chunks, geom.stride, geom.pad_lo, extent,
                               margin_lo, margin_hi)
    if max_offset is None:
        # One spatial chunk: the window must hold the whole image, since an unbounded offset
        # may sample rows/cols that no receptive field covers (stride, padding='valid').
        windows = [[(min(s0, 0), max(s1, n)) for s0, s1 in win]
                   for win, n in zip(windows, geom.in_size)]
    out_chunks = (x.chunks[0], (probe.shape[1],), *sp_chunks)

    def as_dask(a):
        if a is None:
            return None
        a = a if isinstance(a, da.Array) else da.from_array(a, chunks=-1, asarray=False)
        return a.rechunk((x.chunks[0], -1, *sp_chunks))

    offset_d, mask_d = as_dask(offset), as_dask(mask)
    starts = [_starts(c) for c in sp_chunks]
    values = {}
    token = tokenize(weight, bias)
    wkey = _put(values, f"gpuconv-weight-{token}", weight)
    bkey = _put(values, f"gpuconv-bias-{token}", bias)
    kwargs = dict(stride=geom.stride, dilation=geom.dilation)

    def make_args(idx):
        b, _, i, j = idx
        extra = []
        for a, jj in enumerate((i, j)):
            s0, s1 = windows[a][jj]
            n_local = (s1 - s0 - extent[a]) // geom.stride[a] + 1
            extra.append(n_local - (starts[a][jj + 1] - starts[a][jj]))
        params = (kwargs, margin_lo, tuple(extra), None if max_offset is None else m,
                  f"(batch chunk {b}, H_out {starts[0][i]}, W_out {starts[1][j]})")
        return (wkey, bkey, (offset_d.name, b, 0, i, j),
                None if mask_d is None else (mask_d.name, b, 0, i, j), params)

    deps = [offset_d] + ([mask_d] if mask_d is not None else [])
    token2 = tokenize(offset_d, mask_d, m)
    return _build(f"{op}-{token2[:8]}", x, out_chunks, windows, ["zeros"] * 2,
                  _deform_kernel, make_args, dtype, extra_deps=deps, values=values)


def _signal(op, a, v, mode):
    _check_dask(op, "a", a, ndim=1)
    # Validation, the mode's name and the result dtype, from gpuconv itself on a small input.
    v = np.asarray(v) if not hasattr(v, "__cuda_array_interface__") else v
    # gpuconv validates the call on a short stand-in for a (length len(v) + 1, so that NumPy's
    # swap of the longer operand does not happen); the stand-in's result length names the
    # mode whatever spelling was given: full 2k, same k + 1, valid 2 (all 2 when k = 1, where
    # the modes coincide).
    k = v.shape[0] if v.ndim == 1 else 1
    small = np.zeros_like(a._meta, shape=(k + 1,), dtype=a.dtype)
    probe = getattr(gpuconv, op)(small, v, mode)
    mode = {2 * k: "full", k + 1: "same", 2: "valid"}[probe.shape[0]]
    n, k = a.shape[0], v.shape[0]
    if n == 0:
        getattr(gpuconv, op)(np.zeros(0, a.dtype), v, mode)  # raises gpuconv's error
    if k > n:
        # NumPy swaps the two when v is the longer; a is then the short one: one task.
        a1 = a.rechunk(-1)
        size = {"full": n + k - 1, "same": k, "valid": k - n + 1}[mode]
        return a1.map_blocks(lambda blk: getattr(gpuconv, op)(blk, v, mode),
                             chunks=((size,),), dtype=probe.dtype,
                             meta=meta_from_array(a._meta, 1, dtype=probe.dtype))
    pad_lo = {"full": k - 1, "same": k - 1 - (k - 1) // 2, "valid": 0}[mode]
    size = {"full": n + k - 1, "same": n, "valid": n - k + 1}[mode]
    a3 = a.reshape(1, 1, n)  # (N, C, L): one plan for the signal and the conv family
    a3 = a3.rechunk((1, 1, a.chunks[0]))
    sp = (_conv_out_chunks(a.chunks[0], size, 1),)
    windows = _spatial_windows(a3, sp, (1,), (pad_lo,), (k,))
    values = {}
    vkey = _put(values, f"gpuconv-filter-{tokenize(v)}", v)
    result = _build(op, a3, ((1,), (1,), *sp), windows, ["zeros"], _signal_kernel,
                    lambda idx: (vkey, op), probe.dtype, values=values)
    return result.reshape(size)


def convolve(a, v, mode="full"):
    """:func:`gpuconv.convolve` (``numpy.convolve``) of a long 1-D Dask array ``a`` with an
    in-memory filter ``v``, by overlap-save: each output chunk is the ``'valid'`` convolution
    of its window of the zero-padded ``a`` (its chunk plus ``len(v) - 1`` samples).

    Returns
    -------
    dask.array.Array, 1-D, of the dtype ``numpy.convolve`` returns.
    """
    return _signal("convolve", a, v, mode)


def correlate(a, v, mode="valid"):
    """:func:`gpuconv.correlate` (``numpy.correlate``) of a 1-D Dask array ``a`` with an
    in-memory ``v``, by overlap-save (see :func:`convolve`)."""
    return _signal("correlate", a, v, mode)
