"""``deform_conv2d`` (deformable convolution v1/v2, torchvision semantics) on the device
backends: kernel ``deform_im2col`` in ``kernels/deform.cu``, then a GEMM.

Algorithm (as torchvision's CUDA implementation): for a chunk of images (and, when one image's
columns exceed the workspace, of output positions) the kernel writes the column matrix
``(C_in * K, nb * p_count)`` of bilinearly sampled, mask-scaled inputs, and
``backend.executor.matmul`` (cuBLAS on the GPU) multiplies it by the weights, one GEMM per
group: ``(G, C_out / G, C_in / G * K) @ (G, C_in / G * K, nb * p_count)``. The product,
``(C_out, nb, p_count)``, is transposed into the result ``(N, C_out, H_out * W_out)``, and the
bias is added at the end.

Memory: the column buffer is at most :data:`WORKSPACE_BYTES` (or one output position's
column, C_in * K elements, if that alone is larger).

float16: the columns are float16 (as in torchvision), the GEMM accumulates in float32 and rounds
once; the bias is added to the rounded product (a second rounding). bfloat16 is computed
entirely in float32 (inputs widened exactly, float32 columns, GEMM and bias) and rounded once at
the end: bfloat16 columns would round every sampled term by up to 2**-8, outside the bound of
docs/dtypes.md, and the float32 GEMM is what cuBLAS would run for bfloat16 anyway.

Gradient (:func:`deform_conv2d_grad`): per chunk of images (and positions), ``deform_im2col``
(the forward's sampling) rebuilds the columns; the weight gradient is ``grad_output @
columns^T`` and the columns' gradient ``weight^T @ grad_output`` (two GEMMs per group,
``executor.matmul``); ``deform_col2im`` (``kernels/deform_grad.cu``) scatters the columns'
gradient onto the input through the bilinear weights with ``atomicAdd`` (so the input
gradient's last bits vary run to run on a GPU), and ``deform_col2im_coord`` gathers the offset
and mask gradients (deterministic). float16 and bfloat16 are computed entirely in float32 and
rounded at the end (the gradient kernels are instantiated for float32 and float64 only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import _kernels
from ..._dtypes import accumulation_dtype, is_bfloat16
from ..._limits import MAX_GRID_X, MAX_GRID_Y, THREADS, WORKSPACE_BYTES
from ..._shapes import ConvGeometry
from ._common import ceil_div

FILE = "deform.cu"
FAMILY = _kernels.FAMILIES["deform_im2col"]
GRAD_FILE = "deform_grad.cu"
COL2IM = _kernels.FAMILIES["deform_col2im"]
COL2IM_COORD = _kernels.FAMILIES["deform_col2im_coord"]

# From gpuconv._limits: WORKSPACE_BYTES bounds the column buffer (one chunk's sampled
# inputs); THREADS is the sampling kernels' block size.

#: The sampling kernel splits each offset group's channels over grid y until about this many
#: threads run (each thread then samples channel_slice channels at one point).
TARGET_THREADS = 1 << 18


def chunking(batch: int, positions: int, rows: int, itemsize: int,
             workspace_bytes: int = WORKSPACE_BYTES) -> tuple[int, int]:
    """``(images, positions)`` per chunk so that the ``(rows, images * positions)`` column
    buffer fits ``workspace_bytes``.

    >>> chunking(8, 100, 10, 4, workspace_bytes=10 * 4 * 100 * 3)   # 3 images fit
    (3, 100)
    >>> chunking(8, 100, 10, 4, workspace_bytes=10 * 4 * 7)         # 7 positions fit
    (1, 7)
    """
    per_position = rows * itemsize
    per_image = per_position * positions
    if per_image <= workspace_bytes:
        return max(1, min(batch, workspace_bytes // max(per_image, 1))), positions
    return 1, max(1, min(positions, workspace_bytes // max(per_position, 1)))


def channel_slicing(c_per_offset_group: int, points: int,
                    target_threads: int = TARGET_THREADS) -> tuple[int, int]:
    """``(channel_slice, slices)``: channels sampled per thread and the grid-y extent, for
    ``points`` sampling points (images x offset groups x taps x positions) per chunk.

    >>> channel_slicing(256, 1000, target_threads=8000)   # 8 slices of 32 channels
    (32, 8)
    >>> channel_slicing(3, 10**6)
    (3, 1)
    """
    wanted = max(1, min(c_per_offset_group, ceil_div(target_threads, max(points, 1))))
    wanted = min(wanted, MAX_GRID_Y)
    channel_slice = max(1, ceil_div(c_per_offset_group, wanted))
    return channel_slice, max(1, ceil_div(c_per_offset_group, channel_slice))


def chunks(batch: int, positions: int, images: int, count: int):
    """``(b0, b1, p0, p1)`` of every chunk of ``images`` images x ``count`` output positions
    (from :func:`chunking`), images outermost.

    >>> list(chunks(3, 4, 2, 4))
    [(0, 2, 0, 4), (2, 3, 0, 4)]
    """
    for b0 in range(0, batch, images):
        for p0 in range(0, positions, count):
            yield b0, min(batch, b0 + images), p0, min(positions, p0 + count)


def chunk_launch(points: int, c_per_offset_group: int, channel_slice: int | None,
                 max_grid_x: int) -> tuple[int, tuple[int, int]]:
    """``(channel_slice, grid)`` of the sampling kernels (``deform_im2col``, ``deform_col2im``)
    for a chunk of ``points`` sampling points; ``channel_slice`` None lets
    :func:`channel_slicing` choose."""
    if channel_slice is None:
        channel_slice, slices = channel_slicing(c_per_offset_group, points)
    else:
        slices = ceil_div(c_per_offset_group, channel_slice)
    return channel_slice, (max(1, min(ceil_div(points, THREADS), max_grid_x, MAX_GRID_X)), slices)


def chunk_index(arrays, geom: ConvGeometry, in_size, kernel, points: int, grid_x: int,
                columns_size: int, margin: int = 1) -> np.dtype:
    """The kernels' index dtype for one chunk: besides the arrays' extents, the flat thread
    index (points + one grid of threads), the corner offsets and the output-position
    coordinates (oy * stride + i * dilation) and the column matrix, times ``margin``."""
    (height, width), (kh, kw) = in_size, kernel
    out_h, out_w = geom.out_size
    stride_h, stride_w = geom.stride
    pad_h, pad_w = geom.pad_lo
    dil_h, dil_w = geom.dilation
    extent = max(out_h * stride_h + kh * dil_h + height, out_w * stride_w + kw * dil_w + width)
    return _kernels.index_dtype(
        *arrays, max_index=margin * max(points + THREADS * (grid_x + 1), extent + pad_h + pad_w,
                                        columns_size))


@dataclass(frozen=True)
class SampledChunk:
    """One chunk's ``deform_im2col`` launch, whose configuration the gradient kernels reuse:
    the chunk's ``x``/``offset``/``mask`` arguments, the channel slice, the grid, the index
    dtype and the scalar arguments every deform kernel takes (images, channels, sizes,
    kernel, stride, padding, dilation, offset groups)."""

    x: Any
    offset: Any
    mask: Any
    channel_slice: int
    grid: tuple[int, int]
    index: np.dtype
    scalars: tuple[int, ...]


def sample_columns(backend, x, offset, mask, columns, geom: ConvGeometry, offset_groups: int,
                   kernel: tuple[int, int], chunk: tuple[int, int, int, int], *,
                   channel_slice: int | None, max_grid_x: int, index, margin: int = 1
                   ) -> SampledChunk:
    """Launch ``deform_im2col`` for images ``b0:b1`` and positions ``p0:p1`` (``chunk``),
    writing ``columns`` (C_in * K, n_img * n_pos): the bilinearly sampled, mask-scaled inputs.
    ``mask`` is None without a mask; ``margin`` scales the index bound (:func:`chunk_index`).
    """
    xp = backend.xp
    b0, b1, p0, p1 = chunk
    n_img, n_pos = b1 - b0, p1 - p0
    _, c_in, height, width = x.shape
    kh, kw = kernel
    out_h, out_w = geom.out_size
    has_mask = mask is not None
    points = n_img * offset_groups * kh * kw * n_pos
    slice_, grid = chunk_launch(points, c_in // offset_groups, channel_slice, max_grid_x)
    x_chunk, offset_chunk = x[b0:b1], offset[b0:b1]
    # unread without HasMask
    mask_chunk = mask[b0:b1] if has_mask else xp.zeros(1, dtype=columns.dtype)
    if index is None:
        index = chunk_index((x_chunk, offset_chunk, columns), geom, (height, width), kernel,
                            points, grid[0], columns.size, margin=margin)
    scalars = (n_img, c_in, height, width, out_h, out_w, kh, kw, *geom.stride, *geom.pad_lo,
               *geom.dilation, offset_groups)
    function = backend.executor.get_function(
        FILE, FAMILY.name_expression(columns.dtype, index, has_mask))
    backend.executor.launch(function, grid=grid, block=THREADS,
                            args=(x_chunk, offset_chunk, mask_chunk, columns, *scalars, slice_,
                                  p0, n_pos))
    return SampledChunk(x_chunk, offset_chunk, mask_chunk, slice_, grid, index, scalars)


def deform_conv2d(backend, x, offset, weight, bias, mask, geom: ConvGeometry,
                  offset_groups: int, *, workspace_bytes: int | None = None,
                  channel_slice: int | None = None, max_grid_x: int = MAX_GRID_X, index=None):
    """Deformable 2-D convolution (see :func:`gpuconv.deform_conv2d` for the semantics).

    Parameters
    ----------
    backend : DeviceBackend
    x : (N, C_in, H, W)
    offset : (N, 2 * offset_groups * kh * kw, H_out, W_out)
    weight : (C_out, C_in / groups, kh, kw)
    bias : (C_out,) or None
    mask : (N, offset_groups * kh * kw, H_out, W_out) or None
    geom : ConvGeometry
        From :func:`gpuconv._shapes.conv_geometry` (zeros padding; ``geom.groups`` groups).
    offset_groups : int
    workspace_bytes, channel_slice, max_grid_x, index
        Test hooks: force small chunks, a channel slice, a small grid (the kernel's
        grid-stride loop), the kernel's index dtype.
    """
    xp = backend.xp
    dtype = np.dtype(x.dtype)
    if is_bfloat16(dtype):  # in float32 throughout, rounded once (module docstring)
        wide = accumulation_dtype(dtype)
        result = deform_conv2d(
            backend, *(None if a is None else a.astype(wide) for a in (x, offset, weight, bias,
                                                                        mask)),
            geom, offset_groups, workspace_bytes=workspace_bytes, channel_slice=channel_slice,
            max_grid_x=max_grid_x, index=index)
        return result.astype(dtype)
    FAMILY.check_dtype(dtype, "deform_conv2d")
    batch, c_in, height, width = x.shape
    c_out, cg, kh, kw = weight.shape
    groups = geom.groups
    og = c_out // groups
    taps = kh * kw
    out_h, out_w = geom.out_size
    positions = out_h * out_w
    result = xp.empty((batch, c_out, positions), dtype=dtype)
    if result.size == 0:
        return result.reshape(batch, c_out, out_h, out_w)
    if c_in == 0 or taps == 0:
        result[...] = 0
        if bias is not None:
            result += bias.reshape(1, c_out, 1)
        return result.reshape(batch, c_out, out_h, out_w)

    rows = c_in * taps
    nb, pc = chunking(batch, positions, rows, dtype.itemsize,
                      WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes)
    columns_buffer = xp.empty(rows * nb * pc, dtype=dtype)
    weight_matrix = weight.reshape(groups, og, cg * taps)  # (G, og, cg * K)

    for b0, b1, p0, p1 in chunks(batch, positions, nb, pc):
        n_img, n_pos = b1 - b0, p1 - p0
        columns = columns_buffer[: rows * n_img * n_pos].reshape(rows, n_img * n_pos)
        sample_columns(backend, x, offset, mask, columns, geom, offset_groups, (kh, kw),
                       (b0, b1, p0, p1), channel_slice=channel_slice, max_grid_x=max_grid_x,
                       index=index)
        # (G, og, cg * K) @ (G, cg * K, n_img * n_pos) -> (G, og, n_img * n_pos)
        product = backend.executor.matmul(
            weight_matrix, columns.reshape(groups, cg * taps, n_img * n_pos))
        # (C_out, n_img, n_pos) -> (n_img, C_out, n_pos)
        result[b0:b1, :, p0:p1] = product.reshape(c_out, n_img, n_pos).transpose(1, 0, 2)
    if bias is not None:
        result += bias.reshape(1, c_out, 1)
    return result.reshape(batch, c_out, out_h, out_w)


def deform_conv2d_grad(backend, x, offset, weight, mask, grad_output, geom: ConvGeometry,
                       offset_groups: int, *, workspace_bytes: int | None = None,
                       channel_slice: int | None = None, max_grid_x: int = MAX_GRID_X,
                       index=None):
    """Gradients ``(input, offset, weight, mask)`` of ``deform_conv2d`` (mask None without one).

    See the module docstring for the algorithm. ``workspace_bytes`` (the two column buffers
    together), ``channel_slice``, ``max_grid_x`` and ``index`` are test hooks as in
    :func:`deform_conv2d`.
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
    budget = WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes
    nb, pc = chunking(batch, positions, rows, cdt.itemsize, max(1, budget // 2))
    columns_buffer = xp.empty(rows * nb * pc, dtype=cdt)
    weight_t = weight.reshape(groups, og, cg * taps).transpose(0, 2, 1)  # (G, cg * K, og)
    grad_output = grad_output.reshape(batch, c_out, positions)
    executor = backend.executor

    for b0, b1, p0, p1 in chunks(batch, positions, nb, pc):
        n_img, n_pos = b1 - b0, p1 - p0
        n_cols = n_img * n_pos
        columns = columns_buffer[: rows * n_cols].reshape(rows, n_cols)
        # The forward's columns (mask-scaled samples): (C_in * K, n_img * n_pos)
        chunk = sample_columns(backend, x, offset, mask, columns, geom, offset_groups, (kh, kw),
                               (b0, b1, p0, p1), channel_slice=channel_slice,
                               max_grid_x=max_grid_x, index=index, margin=2)
        # grad_output of the chunk as (G, og, n_img * n_pos)
        go = xp.ascontiguousarray(grad_output[b0:b1, :, p0:p1].transpose(1, 0, 2))
        go = go.reshape(groups, og, n_cols)
        grad_w += executor.matmul(go, columns.reshape(groups, cg * taps, n_cols)
                                  .transpose(0, 2, 1))
        # gradient of the columns: (G, cg * K, og) @ (G, og, n_cols) = (C_in * K, n_cols)
        grad_cols = xp.ascontiguousarray(executor.matmul(weight_t, go)).reshape(rows, n_cols)
        col2im = executor.get_function(
            GRAD_FILE, COL2IM.name_expression(cdt, chunk.index, has_mask))
        executor.launch(col2im, grid=chunk.grid, block=THREADS,
                        args=(chunk.offset, chunk.mask, grad_cols, grad_x[b0:b1], *chunk.scalars,
                              chunk.channel_slice, p0, n_pos))
        coord = executor.get_function(
            GRAD_FILE, COL2IM_COORD.name_expression(cdt, chunk.index, has_mask))
        grad_mask_chunk = grad_mask[b0:b1] if has_mask else chunk.mask
        executor.launch(coord, grid=(chunk.grid[0], 1), block=THREADS,
                        args=(chunk.x, chunk.offset, chunk.mask, grad_cols,
                              grad_offset[b0:b1], grad_mask_chunk, *chunk.scalars, p0, n_pos))
    return result()
