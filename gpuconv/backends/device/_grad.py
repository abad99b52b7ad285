"""Gradients of every convolution on the device backends (``cuda`` and ``emulate``).

The methods match :class:`gpuconv.backends.numpy_grad.GradMixin` (the reference) and are called
by :mod:`gpuconv.grad`. Input gradients reuse the forward kernels wherever the math allows;
weight gradients and the padding fold have kernels of their own:

* ``conv_input_grad`` (and ``depthwise_conv_input_grad``, a grouped conv with ``groups = C``):
  the adjoint of a convolution is a transposed convolution, so the gradient is
  ``backend.conv_transpose`` (``kernels/conv_transpose.cu``) of ``grad_output`` with the same
  weight. Under zero padding its crop is the conv's low pad and its output the input's size.
  Under reflect/replicate/circular padding it produces the gradient of the *padded* input
  (crop 0, the padded size), and ``pad_fold`` (``kernels/pad_fold.cu``) adds every padded cell
  back onto the input cell that supplied it: a gather, one thread per input cell, no atomics.
  A 1x1 convolution with stride 1 and no padding is a GEMM, ``weight^T @ grad_output``, through
  the executor's ``matmul`` (cuBLAS on ``cuda``).
* ``conv_transpose_input_grad``: a transposed convolution's adjoint is the convolution it
  transposes, so the gradient is ``backend.conv`` (``kernels/conv.cu``) of ``grad_output``
  with the same weight in :func:`gpuconv._shapes.transpose_as_conv`'s geometry.
* ``conv_weight_grad``: ``conv_weight_grad`` of ``kernels/conv_grad.cu``, an implicit GEMM
  ``grad_output (og, L) @ columns (L, cg * K)^T`` per group with the reduction (``L`` = batch
  x output positions) split over blocks; or, for ``C_in / groups == 1`` (depthwise),
  ``depthwise_weight_grad``, a block reduction per (output channel, 8 taps). The splits meet
  by ``atomicAdd`` (default) or, with ``deterministic=True``, through a workspace of partial
  sums that ``weight_grad_reduce`` adds in a fixed order -- bitwise reproducible run to run
  (see :func:`split_plan`). ``conv_transpose_weight_grad`` is the same kernel with the roles
  of ``x`` and ``grad_output`` exchanged, in the conv geometry the transposed one transposes.
* ``deform_conv2d_grad``: per chunk of images (and positions), ``deform_im2col``
  (``kernels/deform.cu``, the forward's sampling) rebuilds the columns; the weight gradient is
  ``grad_output @ columns^T`` and the columns' gradient ``weight^T @ grad_output`` (two GEMMs
  per group, ``executor.matmul``); ``deform_col2im`` (``kernels/deform_grad.cu``) scatters the
  columns' gradient onto the input through the bilinear weights with ``atomicAdd`` (so the
  input gradient's last bits vary run to run on a GPU), and ``deform_col2im_coord`` gathers the
  offset and mask gradients (deterministic).

float16: the weight-gradient kernels accumulate in float32 (partial sums and atomics in
float32, rounded once); the input gradients are the forward kernels' (float32 accumulation,
one rounding per padded cell, and the fold adds the few padded cells of a border cell in
float32 and rounds again); deformable convolution is computed entirely in float32 and rounded
at the end (its kernels are instantiated for float32 and float64 only).

Test hooks (keyword arguments) force the index type, the method, the split count and the
chunking, so tests reach every instantiation and branch on tiny shapes.
"""

from __future__ import annotations

import math

import numpy as np

from ... import _kernels
from ..._dtypes import accumulation_dtype
from ..._limits import MAX_BLOCKS, MAX_GRID_Y, THREADS, WORKSPACE_BYTES
from ..._shapes import ConvGeometry, as_3d, conv_as_transpose, is_pointwise, transpose_as_conv
from . import _deform
from ._common import PADDING_MODE_CODES, ceil_div, pow2_at_least

GRAD_FILE = "conv_grad.cu"
FOLD_FILE = "pad_fold.cu"
DEFORM_FILE = "deform_grad.cu"
WEIGHT_GRAD = _kernels.FAMILIES["conv_weight_grad"]
DEPTHWISE_WEIGHT_GRAD = _kernels.FAMILIES["depthwise_weight_grad"]
REDUCE = _kernels.FAMILIES["weight_grad_reduce"]
FOLD = _kernels.FAMILIES["pad_fold"]
COL2IM = _kernels.FAMILIES["deform_col2im"]
COL2IM_COORD = _kernels.FAMILIES["deform_col2im_coord"]

#: conv_weight_grad's tile (output channels x columns x reduction step) and threads per block.
TILE_M = _kernels.source_define(GRAD_FILE, "GPUCONV_WGRAD_BM")
TILE_N = _kernels.source_define(GRAD_FILE, "GPUCONV_WGRAD_BN")
TILE_K = _kernels.source_define(GRAD_FILE, "GPUCONV_WGRAD_BK")
WEIGHT_GRAD_THREADS = _kernels.source_define(GRAD_FILE, "GPUCONV_WGRAD_THREADS")
#: depthwise_weight_grad's taps per block and threads per block (at most).
DEPTHWISE_TAPS = _kernels.source_define(GRAD_FILE, "GPUCONV_DW_WGRAD_TAPS")
DEPTHWISE_THREADS = _kernels.source_define(GRAD_FILE, "GPUCONV_DW_WGRAD_THREADS")

#: Blocks a weight-gradient launch aims for (tiles x splits): enough to fill a large GPU
#: several times over. A constant, not the device's SM count, so that the deterministic
#: variant gives the same bits on every GPU.
TARGET_BLOCKS = 1024
#: Fewest reduction positions per split: conv_weight_grad (16 staging steps) and
#: depthwise_weight_grad (8 positions per thread of a 256-thread block).
MIN_SPLIT_LEN = 256
DEPTHWISE_MIN_SPLIT_LEN = 2048

WEIGHT_GRAD_METHODS = ("gemm", "depthwise")


def _grid_stride_blocks(total: int) -> int:
    return max(1, min(ceil_div(total, THREADS), MAX_BLOCKS))


# ----------------------------------------------------------------------------- splits


def split_plan(tiles: int, length: int, step: int, min_len: int, out_elems: int,
               acc_itemsize: int, deterministic: bool, splits: int | None = None):
    """``(splits, split_len)``: how a weight-gradient launch divides its reduction.

    ``length`` reduction positions (batch x output positions) over ``splits`` blocks per output
    tile (grid y), ``split_len`` positions each (a multiple of ``step``). Aims at
    :data:`TARGET_BLOCKS` blocks in all, with at least ``min_len`` positions per split; the
    deterministic variant's workspace (``splits * out_elems`` accumulators) stays within
    :data:`WORKSPACE_BYTES`. ``splits`` forces a count (tests), still capped by ``length``.

    >>> split_plan(tiles=4, length=10_000, step=16, min_len=256, out_elems=64,
    ...            acc_itemsize=4, deterministic=True)
    (40, 256)
    >>> split_plan(tiles=4096, length=10_000, step=16, min_len=256, out_elems=64,
    ...            acc_itemsize=4, deterministic=False)
    (1, 10000)
    """
    length = max(int(length), 1)
    if splits is None:
        splits = min(ceil_div(TARGET_BLOCKS, max(tiles, 1)), ceil_div(length, min_len))
        if deterministic:
            splits = min(splits, WORKSPACE_BYTES // max(out_elems * acc_itemsize, 1))
    splits = max(1, min(int(splits), MAX_GRID_Y, ceil_div(length, step)))
    split_len = ceil_div(ceil_div(length, splits), step) * step
    return ceil_div(length, split_len), split_len


# ----------------------------------------------------------------------------- padding fold


def fold_padding(backend, padded, geom: ConvGeometry, *, index=None):
    """The adjoint of ``geom``'s padding: ``padded`` (N, C, *geom.padded_size), the gradient of
    the padded input, folded onto (N, C, *geom.in_size) with ``pad_fold`` (reflect, replicate,
    circular; zeros padding is a crop and never comes here)."""
    xp = backend.xp
    dtype = np.dtype(padded.dtype)
    FOLD.check_dtype(dtype, "fold_padding")
    mode = PADDING_MODE_CODES[geom.padding_mode]
    if mode == 0:
        raise ValueError("fold_padding: padding_mode='zeros' is a crop, not a fold")
    batch, channels = padded.shape[:2]
    out = xp.empty((batch, channels, *geom.in_size), dtype=dtype)
    if out.size == 0:
        return out
    g = as_3d(geom)
    blocks = _grid_stride_blocks(out.size)
    if index is None:
        index = _kernels.index_dtype(
            padded, out, max_index=2 * (padded.size + out.size + THREADS * (blocks + 1)))
    kernel = backend.executor.get_function(FOLD_FILE, FOLD.name_expression(dtype, index, mode))
    backend.executor.launch(kernel, grid=blocks, block=THREADS,
                            args=(padded, out, batch * channels, *g.in_size, *g.pad_lo,
                                  *g.padded_size))
    return out


# ----------------------------------------------------------------------------- input gradients


def conv_input_grad(backend, weight, grad_output, geom: ConvGeometry, *, index=None):
    """Gradient of ``conv(x, weight)`` with respect to ``x`` (N, C_in, *geom.in_size), from
    ``grad_output`` (N, C_out, *geom.out_size) and ``weight`` (C_out, C_in / groups, *k).

    ``index`` forces the fold kernel's index type (tests).
    """
    xp = backend.xp
    batch, c_out = grad_output.shape[:2]
    groups = geom.groups
    og, cg = c_out // groups, weight.shape[1]
    if is_pointwise(geom):
        positions = math.prod(geom.out_size)
        # (G, cg, og) @ (N, G, og, P) -> (N, G, cg, P)
        wt = weight.reshape(groups, og, cg).transpose(0, 2, 1)
        result = backend.executor.matmul(wt, grad_output.reshape(batch, groups, og, positions))
        return xp.ascontiguousarray(result.reshape(batch, groups * cg, *geom.in_size),
                                    dtype=grad_output.dtype)
    if geom.padding_mode == "zeros" or not (any(geom.pad_lo) or any(geom.pad_hi)):
        return backend.conv_transpose(grad_output, weight, None,
                                      conv_as_transpose(geom, geom.pad_lo, geom.in_size))
    padded = backend.conv_transpose(grad_output, weight, None,
                                    conv_as_transpose(geom, (0,) * geom.ndim,
                                                      geom.padded_size))
    return fold_padding(backend, padded, geom, index=index)


def conv_transpose_input_grad(backend, weight, grad_output, geom: ConvGeometry):
    """Gradient of ``conv_transpose(x, weight)`` with respect to ``x``: the convolution of
    ``grad_output`` with ``weight`` (C_in, C_out / groups, *k) in the conv geometry that
    ``geom`` transposes."""
    return backend.conv(grad_output, weight, None, transpose_as_conv(geom))


# ----------------------------------------------------------------------------- weight gradients


def choose_weight_grad_method(c_in: int, groups: int) -> str:
    """``"depthwise"`` when each group has one input channel, else ``"gemm"``."""
    return "depthwise" if c_in // groups == 1 else "gemm"


def _weight_grad_index(arrays, geom: ConvGeometry, length: int, split_len: int, extra: int):
    # Besides the arrays' extents: padded positions (large zero pads), the reduction index
    # (which runs up to a split past the end), and the workspace / tile counts.
    return _kernels.index_dtype(
        *arrays, max_index=2 * max(as_3d(geom).reach(), length + 2 * split_len, extra))


def conv_weight_grad(backend, x, grad_output, geom: ConvGeometry, deterministic: bool = False,
                     *, method: str | None = None, splits: int | None = None, index=None):
    """Gradient of ``conv(x, weight)`` with respect to ``weight``: (C_out, C_in / groups, *k).

    Parameters
    ----------
    backend : DeviceBackend
    x : (N, C_in, *geom.in_size)
    grad_output : (N, C_out, *geom.out_size), the dtype of ``x``
    geom : ConvGeometry
    deterministic : bool
        Partial sums through a workspace and a fixed-order reduction instead of atomics.
    method, splits, index
        Test hooks: ``"gemm"`` / ``"depthwise"`` (the latter needs C_in / groups == 1), the
        number of reduction splits, the kernels' index dtype.
    """
    xp = backend.xp
    dtype = np.dtype(x.dtype)
    WEIGHT_GRAD.check_dtype(dtype, "conv_weight_grad")
    acc = accumulation_dtype(dtype)
    batch, c_in = x.shape[:2]
    c_out = grad_output.shape[1]
    groups = geom.groups
    cg, og = c_in // groups, c_out // groups
    taps = math.prod(geom.kernel)
    out_elems = c_out * cg * taps
    length = batch * math.prod(geom.out_size)
    chosen = choose_weight_grad_method(c_in, groups)
    if method is None:
        method = chosen
    elif method not in WEIGHT_GRAD_METHODS:
        raise ValueError(f"method={method!r} must be None or one of {WEIGHT_GRAD_METHODS}")
    elif method == "depthwise" and chosen != "depthwise":
        raise ValueError(f"method='depthwise' needs C_in / groups == 1, got C_in={c_in}, "
                         f"groups={groups}")
    shape = (c_out, cg, *geom.kernel)
    if out_elems == 0 or length == 0:
        return xp.zeros(shape, dtype=dtype)

    if method == "gemm":
        tiles = groups * ceil_div(og, TILE_M) * ceil_div(cg * taps, TILE_N)
        n_splits, split_len = split_plan(tiles, length, TILE_K, MIN_SPLIT_LEN, out_elems,
                                         acc.itemsize, deterministic, splits)
        family, grid, block = WEIGHT_GRAD, (tiles, n_splits), WEIGHT_GRAD_THREADS
        counts = (batch, c_in, c_out, groups)
    else:
        tiles = c_out * ceil_div(taps, DEPTHWISE_TAPS)
        n_splits, split_len = split_plan(tiles, length, 1, DEPTHWISE_MIN_SPLIT_LEN, out_elems,
                                         acc.itemsize, deterministic, splits)
        family, grid = DEPTHWISE_WEIGHT_GRAD, (tiles, n_splits)
        block = max(32, min(DEPTHWISE_THREADS, pow2_at_least(split_len)))
        counts = (batch, c_in, og)  # channels, multiplier

    if deterministic:
        workspace = xp.empty((n_splits, out_elems), dtype=acc)
    else:
        workspace = xp.zeros(out_elems, dtype=acc)
    if index is None:
        index = _weight_grad_index((x, grad_output, workspace), geom, length, split_len,
                                   tiles * TILE_M * TILE_N + workspace.size)
    mode = PADDING_MODE_CODES[geom.padding_mode]
    kernel = backend.executor.get_function(
        GRAD_FILE, family.name_expression(dtype, index, mode, deterministic))
    backend.executor.launch(kernel, grid=grid, block=block,
                            args=(x, grad_output, workspace, *counts, *as_3d(geom).args(),
                                  split_len))
    if not deterministic and acc == dtype:
        return workspace.reshape(shape)
    out = xp.empty(out_elems, dtype=dtype)
    reduce = backend.executor.get_function(GRAD_FILE, REDUCE.name_expression(dtype, index))
    backend.executor.launch(reduce, grid=_grid_stride_blocks(out_elems), block=THREADS,
                            args=(workspace, out, out_elems, workspace.size // out_elems))
    return out.reshape(shape)


def conv_transpose_weight_grad(backend, x, grad_output, geom: ConvGeometry,
                               deterministic: bool = False, **hooks):
    """Gradient of ``conv_transpose(x, weight)`` with respect to ``weight`` (C_in, C_out /
    groups, *k): the weight gradient of the convolution that ``geom`` transposes, applied to
    ``grad_output`` as its input and ``x`` as its output gradient."""
    return conv_weight_grad(backend, grad_output, x, transpose_as_conv(geom), deterministic,
                            **hooks)


# ----------------------------------------------------------------------------- deformable


def deform_conv2d_grad(backend, x, offset, weight, mask, grad_output, geom: ConvGeometry,
                       offset_groups: int, *, workspace_bytes: int | None = None,
                       channel_slice: int | None = None, max_grid_x: int = _deform.MAX_GRID_X,
                       index=None):
    """Gradients ``(input, offset, weight, mask)`` of ``deform_conv2d`` (mask None without one).

    See the module docstring for the algorithm. ``workspace_bytes`` (the two column buffers
    together), ``channel_slice``, ``max_grid_x`` and ``index`` are test hooks as in
    :func:`gpuconv.backends.device._deform.deform_conv2d`.
    """
    xp = backend.xp
    dtype = np.dtype(x.dtype)
    cdt = accumulation_dtype(dtype)
    COL2IM.check_dtype(cdt, "deform_conv2d_grad")

    def compute(a):
        return None if a is None else xp.ascontiguousarray(a, dtype=cdt)

    x, offset, weight, mask, grad_output = map(compute, (x, offset, weight, mask, grad_output))
    batch, c_in, height, width = x.shape
    c_out, cg, kh, kw = weight.shape
    groups = geom.groups
    og = c_out // groups
    taps = kh * kw
    out_h, out_w = geom.out_size
    positions = out_h * out_w
    has_mask = mask is not None

    grad_x = xp.zeros(x.shape, dtype=cdt)
    grad_offset = xp.zeros(offset.shape, dtype=cdt)
    grad_mask = xp.zeros(mask.shape, dtype=cdt) if has_mask else None
    grad_w = xp.zeros((groups, og, cg * taps), dtype=cdt)

    def result():
        out = [grad_x, grad_offset, grad_w.reshape(weight.shape), grad_mask]
        return tuple(None if a is None else a.astype(dtype, copy=False) for a in out)

    if c_in == 0 or c_out == 0 or taps == 0 or positions == 0 or batch == 0:
        return result()

    rows = c_in * taps
    budget = _deform.WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes
    nb, pc = _deform.chunking(batch, positions, rows, cdt.itemsize, max(1, budget // 2))
    columns_buffer = xp.empty(rows * nb * pc, dtype=cdt)
    weight_t = weight.reshape(groups, og, cg * taps).transpose(0, 2, 1)  # (G, cg * K, og)
    mask_arg = mask if has_mask else xp.zeros(1, dtype=cdt)  # unread without HasMask
    grad_output = grad_output.reshape(batch, c_out, positions)
    c_per_og = c_in // offset_groups
    stride_h, stride_w = geom.stride
    pad_h, pad_w = geom.pad_lo
    dil_h, dil_w = geom.dilation
    executor = backend.executor

    for b0, b1, p0, p1 in _deform.chunks(batch, positions, nb, pc):
        n_img, n_pos = b1 - b0, p1 - p0
        n_cols = n_img * n_pos
        columns = columns_buffer[: rows * n_cols].reshape(rows, n_cols)
        points = n_img * offset_groups * taps * n_pos
        slice_, grid = _deform.chunk_launch(points, c_per_og, channel_slice, max_grid_x)
        x_chunk = x[b0:b1]
        offset_chunk = offset[b0:b1]
        mask_chunk = mask_arg[b0:b1] if has_mask else mask_arg
        chunk_index = index
        if chunk_index is None:
            chunk_index = _deform.chunk_index((x_chunk, offset_chunk, columns), geom,
                                              (height, width), (kh, kw), points, grid[0],
                                              rows * n_cols, margin=2)
        common = (n_img, c_in, height, width, out_h, out_w, kh, kw, stride_h, stride_w,
                  pad_h, pad_w, dil_h, dil_w, offset_groups)
        # The forward's columns (mask-scaled samples): (C_in * K, n_img * n_pos)
        im2col = executor.get_function(
            _deform.FILE, _deform.FAMILY.name_expression(cdt, chunk_index, has_mask))
        executor.launch(im2col, grid=grid, block=_deform.THREADS,
                        args=(x_chunk, offset_chunk, mask_chunk, columns, *common, slice_,
                              p0, n_pos))
        # grad_output of the chunk as (G, og, n_img * n_pos)
        go = xp.ascontiguousarray(grad_output[b0:b1, :, p0:p1].transpose(1, 0, 2))
        go = go.reshape(groups, og, n_cols)
        grad_w += executor.matmul(go, columns.reshape(groups, cg * taps, n_cols)
                                  .transpose(0, 2, 1))
        # gradient of the columns: (G, cg * K, og) @ (G, og, n_cols) = (C_in * K, n_cols)
        grad_cols = xp.ascontiguousarray(executor.matmul(weight_t, go)).reshape(rows, n_cols)
        col2im = executor.get_function(
            DEFORM_FILE, COL2IM.name_expression(cdt, chunk_index, has_mask))
        executor.launch(col2im, grid=grid, block=_deform.THREADS,
                        args=(offset_chunk, mask_chunk, grad_cols, grad_x[b0:b1], *common,
                              slice_, p0, n_pos))
        coord = executor.get_function(
            DEFORM_FILE, COL2IM_COORD.name_expression(cdt, chunk_index, has_mask))
        grad_mask_chunk = grad_mask[b0:b1] if has_mask else mask_arg
        executor.launch(coord, grid=(grid[0], 1), block=_deform.THREADS,
                        args=(x_chunk, offset_chunk, mask_chunk, grad_cols,
                              grad_offset[b0:b1], grad_mask_chunk, *common, p0, n_pos))
    return result()
