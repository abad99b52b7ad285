"""``conv`` and ``depthwise_conv`` (1-D/2-D/3-D) and their gradients on the device backends.

Kernels: ``conv_tiled`` and ``conv_direct`` in ``kernels/conv.cu``, ``depthwise_tiled`` in
``kernels/depthwise.cu``; each templated on the element type, the index type and the padding
mode, which the kernels resolve by index mapping (``kernels/padding.cuh``) -- no padded copy of
the input is ever made. 1-D and 2-D calls run the 3-D kernels with leading spatial dims of
size 1 (:func:`gpuconv._shapes.as_3d`).

Method per ``conv`` call (:func:`choose_conv_method`):

* ``"matmul"``: a 1x1 kernel with stride 1 and no padding is a matrix product per group,
  ``(G, C_out/G, C_in/G) @ (N, G, C_in/G, P)``, through the executor's ``matmul``
  (``cupy.matmul`` = cuBLAS on ``cuda``, ``numpy.matmul`` on ``emulate``). This makes the
  pointwise step of ``separable_conv`` a cuBLAS GEMM.
* ``"depthwise"``: ``groups == C_in`` (one input channel per group, any multiplier) is exactly a
  depthwise convolution: ``depthwise_tiled``.
* ``"tiled"``: ``conv_tiled`` (input tile + halo and the block's weights in shared memory,
  register blocking over CO = 8 output channels x 4 output columns per thread, and
  ``blockDim.z`` channel blocks sharing the input tile when the output plane is small), when
  ``C_out/groups >= CO/2`` and a tile fits the shared-memory budget.
* ``"direct"``: ``conv_direct`` (one output per thread, no shared memory) otherwise.

``depthwise_conv`` uses ``depthwise_tiled`` (one staged input tile per (n, c) serves all
multiplier outputs), or ``conv_direct`` with ``groups = C`` if not even a one-thread tile fits.

float16 and bfloat16 are computed by the kernels with float32 accumulation (``gpuconv::acc_t``)
and rounded once; on the matmul path by the executor's ``matmul`` (float32 accumulation too),
after which float16 adds the bias in float16 (bfloat16 adds it in float32, before its one
rounding).

Gradients (called by :mod:`gpuconv.grad` through the backend; the reference is
:class:`gpuconv.backends.numpy_grad.GradMixin`):

* ``conv_input_grad`` (and the depthwise input gradient, a grouped conv with ``groups = C``):
  the adjoint of a convolution is a transposed convolution, so the gradient is
  ``backend.conv_transpose`` (``kernels/conv_transpose.cu``) of ``grad_output`` with the same
  weight, in :func:`gpuconv._shapes.conv_as_transpose`'s geometry. Under zero padding its crop
  is the conv's low pad and its output the input's size. Under reflect/replicate/circular
  padding it produces the gradient of the *padded* input (crop 0, the padded size), and
  ``pad_fold`` (``kernels/pad_fold.cu``) adds every padded cell back onto the input cell that
  supplied it: a gather, one thread per input cell, no atomics. A pointwise convolution is a
  GEMM, ``weight^T @ grad_output``, through the executor's ``matmul`` (cuBLAS on ``cuda``).
* ``conv_weight_grad``: ``conv_weight_grad`` of ``kernels/conv_grad.cu``, an implicit GEMM
  ``grad_output (C_out/G, L) @ columns (L, C_in/G * K)^T`` per group with the reduction
  (``L`` = batch x output positions) split over blocks; or, for ``C_in / groups == 1``
  (depthwise), ``depthwise_weight_grad``, a block reduction per (output channel, 8 taps). The
  splits meet by ``atomicAdd`` (default) or, with ``deterministic=True``, through a workspace
  of partial sums that ``weight_grad_reduce`` adds in a fixed order -- bitwise reproducible
  run to run (see :func:`split_plan`).

float16 gradients: the weight-gradient kernels accumulate in float32 (partial sums and atomics
in float32, rounded once); the input gradients are the forward kernels' (float32
accumulation, one rounding per padded cell, and the fold adds the few padded cells of a border
cell in float32 and rounds again). bfloat16 gradients likewise, except that under
reflect/replicate/circular padding the padded gradient and the fold run in float32 and the
result is rounded once (bfloat16's 8-bit significand would make the second rounding the
largest error term).

Tuning constants that the kernels also use are read from the ``.cu`` files
(:func:`gpuconv._kernels.source_define`); the rest are below. None is tuned on hardware yet.
Test hooks (keyword arguments) force the index type, the method, the split count, so tests
reach every instantiation and branch on tiny shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ... import _kernels
from ..._dtypes import accumulation_dtype, is_bfloat16
from ..._limits import MAX_BLOCKS, MAX_DYNAMIC_SHARED_BYTES, MAX_GRID_Y, THREADS, WORKSPACE_BYTES
from ..._shapes import ConvGeometry, Geometry3d, as_3d, conv_as_transpose, is_pointwise, span
from ._common import PADDING_MODE_CODES, ceil_div, pow2_at_least, prepare

CONV_FILE = "conv.cu"
DEPTHWISE_FILE = "depthwise.cu"
TILED = _kernels.FAMILIES["conv_tiled"]
DIRECT = _kernels.FAMILIES["conv_direct"]
DEPTHWISE = _kernels.FAMILIES["depthwise_tiled"]
GRAD_FILE = "conv_grad.cu"
FOLD_FILE = "pad_fold.cu"
WEIGHT_GRAD = _kernels.FAMILIES["conv_weight_grad"]
DEPTHWISE_WEIGHT_GRAD = _kernels.FAMILIES["depthwise_weight_grad"]
REDUCE = _kernels.FAMILIES["weight_grad_reduce"]
FOLD = _kernels.FAMILIES["pad_fold"]

#: conv_tiled's register blocking: output channels and output columns per thread.
CO_PER_THREAD = _kernels.source_define(CONV_FILE, "GPUCONV_CONV_CO_PER_THREAD")
CONV_W_PER_THREAD = _kernels.source_define(CONV_FILE, "GPUCONV_CONV_W_PER_THREAD")
CONV_MAX_THREADS = _kernels.source_define(CONV_FILE, "GPUCONV_CONV_MAX_THREADS")
#: depthwise_tiled's output columns per thread and threads per block.
DEPTHWISE_W_PER_THREAD = _kernels.source_define(DEPTHWISE_FILE, "GPUCONV_DEPTHWISE_W_PER_THREAD")
DEPTHWISE_MAX_THREADS = _kernels.source_define(DEPTHWISE_FILE, "GPUCONV_DEPTHWISE_MAX_THREADS")

#: Shared memory a tiled block aims for: more channels (conv) or filters (depthwise) are staged
#: per pass until this is reached. 24 KiB keeps two blocks per SM even on sm_75 (64 KiB).
SHARED_TARGET_BYTES = 24 * 1024
#: conv_tiled gives up output channels per block (blockDim.z) until it has this many blocks
#: (about two per SM of a large GPU), or blockDim.z is 1.
FILL_BLOCKS = 256
#: conv_tiled stages at most this many input channels per pass.
MAX_CHUNK = 16
#: Threads per block of conv_direct (fewer, in whole warps, for small outputs).
DIRECT_THREADS = THREADS

CONV_METHODS = ("matmul", "depthwise", "tiled", "direct")
DEPTHWISE_METHODS = ("tiled", "direct")

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


def _max_index(geom3: Geometry3d, *extents: int) -> int:
    """A bound on every index value the kernels compute, beyond the arrays' own extents: the
    padded positions (:meth:`Geometry3d.reach`; they can exceed the input under large zero
    padding), the task and thread counters of the stride loops."""
    return 2 * max(geom3.reach(), *extents) + 2 * MAX_BLOCKS * 1024


# ----------------------------------------------------------------------------- plans


def _fit_block(block: tuple[int, int, int], shared_bytes) -> tuple[int, int, int] | None:
    """``block`` (x, y, z), halved in z, else y, else x, until ``shared_bytes(x, y, z)`` fits
    :data:`MAX_DYNAMIC_SHARED_BYTES`; None if not even (1, 1, 1) fits."""
    bx, by, bz = block
    while shared_bytes(bx, by, bz) > MAX_DYNAMIC_SHARED_BYTES:
        if bz > 1:
            bz //= 2
        elif by > 1:
            by //= 2
        elif bx > 1:
            bx //= 2
        else:
            return None
    return bx, by, bz


@dataclass(frozen=True)
class TiledPlan:
    """A launch of ``conv_tiled`` or ``depthwise_tiled``: block (x, y, z), grid, the channel or
    filter ``chunk`` staged per pass, and the dynamic shared memory in bytes."""

    block: tuple[int, int, int]
    grid: int
    chunk: int
    shared_mem: int
    tasks: int


def conv_tiled_plan(geom3: Geometry3d, batch: int, c_in: int, c_out: int, groups: int,
                    itemsize: int) -> TiledPlan | None:
    """The ``conv_tiled`` launch, or None if not even a one-thread tile of one input channel
    fits in shared memory.

    >>> from gpuconv._shapes import conv_geometry
    >>> geom3 = as_3d(conv_geometry((32, 32), (3, 3), stride=1, padding=1, dilation=1))
    >>> conv_tiled_plan(geom3, 2, 16, 32, 1, 4)
    TiledPlan(block=(8, 32, 1), grid=8, chunk=5, shared_mem=24560, tasks=8)

    A small output plane: 8 (blockDim.z) blocks of 8 output channels share the input tile,
    as many as still leave FILL_BLOCKS blocks.

    >>> geom3 = as_3d(conv_geometry((7, 7), (3, 3), stride=1, padding=1, dilation=1))
    >>> conv_tiled_plan(geom3, 32, 512, 512, 1, 2)
    TiledPlan(block=(2, 8, 8), grid=256, chunk=16, shared_mem=21632, tasks=256)
    """
    _, out_h, out_w = geom3.out_size
    _, k_h, k_w = geom3.kernel
    _, s_h, s_w = geom3.stride
    _, d_h, d_w = geom3.dilation
    cg, og = c_in // groups, c_out // groups
    rw, co = CONV_W_PER_THREAD, CO_PER_THREAD
    cap = CONV_MAX_THREADS if out_h == 1 else 32
    bx = min(cap, pow2_at_least(ceil_div(out_w, rw)))
    by = min(pow2_at_least(out_h), CONV_MAX_THREADS // bx)
    # Threads left over by a small output plane take further output-channel blocks.
    bz = min(pow2_at_least(ceil_div(og, co)), CONV_MAX_THREADS // (bx * by), 64)

    def per_channel_bytes(bx, by, bz):  # one staged input channel: its tile and weights
        rows_in = span(by, k_h, s_h, d_h)
        cols_in = span(bx * rw, k_w, s_w, d_w)
        return (rows_in * cols_in + k_h * k_w * co * bz) * itemsize

    block = _fit_block((bx, by, bz), per_channel_bytes)
    if block is None:
        return None
    bx, by, bz = block
    spatial_tasks = batch * geom3.out_size[0] * ceil_div(out_h, by) * ceil_div(out_w, bx * rw)
    while bz > 1 and spatial_tasks * groups * ceil_div(og, co * bz) < FILL_BLOCKS:
        bz //= 2  # more, smaller blocks
    per_channel = per_channel_bytes(bx, by, bz)
    chunk = max(1, min(cg, MAX_CHUNK, SHARED_TARGET_BYTES // per_channel))
    tasks = spatial_tasks * groups * ceil_div(og, co * bz)
    return TiledPlan((bx, by, bz), max(1, min(tasks, MAX_BLOCKS)), chunk, chunk * per_channel,
                     tasks)


def depthwise_tiled_plan(geom3: Geometry3d, batch: int, channels: int, multiplier: int,
                         itemsize: int) -> TiledPlan | None:
    """The ``depthwise_tiled`` launch, or None if not even a one-thread tile and one filter fit
    in shared memory.

    >>> from gpuconv._shapes import conv_geometry
    >>> geom3 = as_3d(conv_geometry((56, 56), (3, 3), stride=1, padding=1, dilation=1))
    >>> depthwise_tiled_plan(geom3, 1, 32, 2, 4)
    TiledPlan(block=(16, 16, 1), grid=128, chunk=2, shared_mem=4824, tasks=128)
    """
    out_d, out_h, out_w = geom3.out_size
    k_d, k_h, k_w = geom3.kernel
    s_d, s_h, s_w = geom3.stride
    d_d, d_h, d_w = geom3.dilation
    rw, limit = DEPTHWISE_W_PER_THREAD, DEPTHWISE_MAX_THREADS
    taps = k_d * k_h * k_w
    cap = limit if out_h == 1 and out_d == 1 else 32
    bx = min(cap, pow2_at_least(ceil_div(out_w, rw)))
    by = min(pow2_at_least(out_h), limit // bx)
    bz = min(pow2_at_least(out_d), limit // (bx * by), 64)

    def tile_volume(bx, by, bz):  # input tile incl. halo, in elements
        return span(bz, k_d, s_d, d_d) * span(by, k_h, s_h, d_h) * span(bx * rw, k_w, s_w, d_w)

    block = _fit_block((bx, by, bz), lambda *b: (tile_volume(*b) + taps) * itemsize)
    if block is None:
        return None
    bx, by, bz = block
    volume = tile_volume(bx, by, bz)
    room = max(SHARED_TARGET_BYTES, (volume + taps) * itemsize) - volume * itemsize
    chunk = max(1, min(multiplier, room // (taps * itemsize)))
    tasks = (batch * channels * ceil_div(out_d, bz) * ceil_div(out_h, by)
             * ceil_div(out_w, bx * rw))
    return TiledPlan((bx, by, bz), max(1, min(tasks, MAX_BLOCKS)), chunk,
                     (volume + chunk * taps) * itemsize, tasks)


def choose_conv_method(x_shape, weight_shape, geom: ConvGeometry, itemsize: int) -> str:
    """The ``conv`` method for a call (see the module docstring)."""
    c_in = x_shape[1]
    c_out = weight_shape[0]
    groups = geom.groups
    if is_pointwise(geom):
        return "matmul"
    if groups == c_in:
        return "depthwise"
    if c_out // groups >= CO_PER_THREAD // 2 and conv_tiled_plan(
            as_3d(geom), x_shape[0], c_in, c_out, groups, itemsize) is not None:
        return "tiled"
    return "direct"


# ----------------------------------------------------------------------------- operations


def _pointwise_bf16(backend, x, weight, bias, geom: ConvGeometry, groups: int):
    """The 1x1 ``conv`` of bfloat16 arrays: the GEMM on the float32 operands (exact
    widening) and the bias added in float32, then ONE rounding to bfloat16 (float16's path
    rounds the GEMM, then adds the bias in float16)."""
    xp = backend.xp
    acc = accumulation_dtype(x.dtype)
    batch, c_in = x.shape[:2]
    c_out = weight.shape[0]
    og, cg = c_out // groups, c_in // groups
    result = backend.executor.matmul(
        weight.reshape(groups, og, cg).astype(acc),
        x.reshape(batch, groups, cg, math.prod(geom.out_size)).astype(acc))
    result = result.reshape(batch, c_out, *geom.out_size)
    if bias is not None:
        result = result + bias.astype(acc).reshape((1, c_out) + (1,) * geom.ndim)
    return xp.ascontiguousarray(result, dtype=x.dtype)


def _bias_or_zeros(xp, bias, channels: int, dtype):
    return xp.zeros(channels, dtype=dtype) if bias is None else prepare(xp, bias, dtype)


def conv(backend, x, weight, bias, geom: ConvGeometry, *, method: str | None = None,
         index=None):
    """Convolution (cross-correlation) of ``x`` (N, C_in, *in) with ``weight``
    (C_out, C_in / groups, *k), plus ``bias`` (C_out,) or None, to (N, C_out, *geom.out_size).

    Parameters
    ----------
    backend : DeviceBackend
    x, weight, bias : arrays of ``backend.xp``, all of one dtype (float16/32/64)
    geom : ConvGeometry
    method : {None, "matmul", "depthwise", "tiled", "direct"}
        Force a method (tests); None picks with :func:`choose_conv_method`.
    index : {None, numpy.int32, numpy.int64}
        Force the kernels' index type (tests); None picks with :func:`gpuconv._kernels.index_dtype`.

    Raises
    ------
    ValueError
        If a forced ``method`` cannot compute this call.
    """
    xp = backend.xp
    dtype = np.dtype(x.dtype)
    TILED.check_dtype(dtype, "conv")
    x, weight = prepare(xp, x, dtype), prepare(xp, weight, dtype)
    batch, c_in = x.shape[:2]
    c_out = weight.shape[0]
    groups = geom.groups
    chosen = choose_conv_method(x.shape, weight.shape, geom, dtype.itemsize)
    if method is None:
        method = chosen
    elif method not in CONV_METHODS:
        raise ValueError(f"method={method!r} must be None or one of {CONV_METHODS}")
    elif method == "matmul" and chosen != "matmul":
        raise ValueError(
            "method='matmul' needs a 1x1 kernel, stride 1 and no padding; got "
            f"kernel={geom.kernel}, stride={geom.stride}, padding={geom.pad_lo}/{geom.pad_hi}"
        )
    elif method == "depthwise" and groups != c_in:
        raise ValueError(f"method='depthwise' needs groups == C_in, got groups={groups}, "
                         f"C_in={c_in}")

    if method == "matmul":
        og, cg = c_out // groups, c_in // groups
        positions = math.prod(geom.out_size)
        # (G, og, cg) @ (N, G, cg, P) -> (N, G, og, P)
        if is_bfloat16(dtype):  # the GEMM and the bias in float32, rounded once
            return _pointwise_bf16(backend, x, weight, bias, geom, groups)
        result = backend.executor.matmul(weight.reshape(groups, og, cg),
                                         x.reshape(batch, groups, cg, positions))
        result = xp.ascontiguousarray(result.reshape(batch, c_out, *geom.out_size), dtype=dtype)
        if bias is not None:
            result += prepare(xp, bias, dtype).reshape((1, c_out) + (1,) * geom.ndim)
        return result
    if method == "depthwise":
        return _depthwise(backend, x, weight, bias, geom, method=None, index=index)

    bias = _bias_or_zeros(xp, bias, c_out, dtype)
    out = xp.empty((batch, c_out, *geom.out_size), dtype=dtype)
    _launch_conv(backend, x, weight, bias, out, geom, groups, method=method, index=index)
    return out


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch of a ``conv``-family call, described without running it: the source
    ``file``, the instantiation's ``name`` expression, ``grid``, ``block``, the dynamic
    ``shared_mem`` in bytes, and the arguments after the call's common ones (``tail``: the
    tiled kernels' channel chunk). :func:`gpuconv.plan` shows these."""

    file: str
    name: str
    grid: int | tuple
    block: int | tuple
    shared_mem: int = 0
    tail: tuple = ()


def conv_launch(geom: ConvGeometry, x, weight, out, groups: int, *, method: str,
                index=None) -> KernelLaunch:
    """The ``conv_tiled`` (``method="tiled"``) or ``conv_direct`` launch computing ``out``.

    Reads only the shapes, dtypes and sizes of ``x``, ``weight`` and ``out``: shape-only
    stand-ins (``numpy.broadcast_to(numpy.empty((), dtype), shape)``) give a call's plan."""
    geom3 = as_3d(geom)
    if method == "tiled":
        batch, c_in = x.shape[:2]
        plan = conv_tiled_plan(geom3, batch, c_in, weight.shape[0], groups, out.dtype.itemsize)
        return tiled_launch(CONV_FILE, TILED, plan, geom, x, weight, out, index)
    total = out.size
    threads = min(DIRECT_THREADS, 32 * ceil_div(total, 32))
    blocks = max(1, min(ceil_div(total, threads), MAX_BLOCKS))
    if index is None:
        index = _kernels.index_dtype(x, weight, out, max_index=_max_index(geom3, total))
    mode = PADDING_MODE_CODES[geom.padding_mode]
    return KernelLaunch(CONV_FILE, DIRECT.name_expression(out.dtype, index, mode), blocks,
                        threads)


def tiled_launch(file: str, family, plan: TiledPlan | None, geom: ConvGeometry, x, weight, out,
                 index) -> KernelLaunch:
    """The launch of a tiled kernel (``conv_tiled``, ``depthwise_tiled``) with ``plan``.
    ValueError if no tile fits (``plan`` None)."""
    if plan is None:
        raise ValueError(f"method='tiled': no tile of kernel={geom.kernel}, "
                         f"dilation={geom.dilation} fits in shared memory")
    if index is None:
        index = _kernels.index_dtype(x, weight, out,
                                     max_index=_max_index(as_3d(geom), plan.tasks, out.size))
    mode = PADDING_MODE_CODES[geom.padding_mode]
    return KernelLaunch(file, family.name_expression(out.dtype, index, mode), plan.grid,
                        plan.block, plan.shared_mem, (plan.chunk,))


def depthwise_launch(geom: ConvGeometry, x, weight, out, *, method: str | None = None,
                     index=None) -> KernelLaunch:
    """The launch of a depthwise convolution: ``depthwise_tiled`` when a tile fits (or
    ``method="tiled"``), else (or ``method="direct"``) ``conv_direct`` with ``groups = C``.
    Reads only shapes, dtypes and sizes (see :func:`conv_launch`)."""
    batch, channels = x.shape[:2]
    plan = depthwise_tiled_plan(as_3d(geom), batch, channels, weight.shape[0] // channels,
                                np.dtype(out.dtype).itemsize)
    if method is None:
        method = "direct" if plan is None else "tiled"
    if method == "direct":
        return conv_launch(geom, x, weight, out, channels, method="direct", index=index)
    return tiled_launch(DEPTHWISE_FILE, DEPTHWISE, plan, geom, x, weight, out, index)


def _run_launch(backend, launch: KernelLaunch, args: tuple) -> None:
    kernel = backend.executor.get_function(launch.file, launch.name)
    backend.executor.launch(kernel, grid=launch.grid, block=launch.block,
                            args=(*args, *launch.tail), shared_mem=launch.shared_mem)


def _launch_conv(backend, x, weight, bias, out, geom: ConvGeometry, groups: int, *,
                 method: str, index):
    """One ``conv_tiled`` or ``conv_direct`` launch computing ``out``."""
    batch, c_in = x.shape[:2]
    common = (x, weight, bias, out, batch, c_in, weight.shape[0], groups, *as_3d(geom).args())
    _run_launch(backend, conv_launch(geom, x, weight, out, groups, method=method, index=index),
                common)


def depthwise_conv(backend, x, weight, bias, geom: ConvGeometry, *, method: str | None = None,
                   index=None):
    """Depthwise convolution of ``x`` (N, C, *in) with ``weight`` (C * M, 1, *k), plus ``bias``
    (C * M,) or None, to (N, C * M, *geom.out_size).

    Parameters
    ----------
    backend : DeviceBackend
    x, weight, bias : arrays of ``backend.xp``, all of one dtype (float16/32/64)
    geom : ConvGeometry (``groups == C``)
    method : {None, "tiled", "direct"}
        Force ``depthwise_tiled`` or ``conv_direct`` (tests); None: tiled when it fits.
    index : {None, numpy.int32, numpy.int64}
        Force the kernels' index type (tests).
    """
    xp = backend.xp
    dtype = np.dtype(x.dtype)
    DEPTHWISE.check_dtype(dtype, "depthwise_conv")
    if method not in (None, *DEPTHWISE_METHODS):
        raise ValueError(f"method={method!r} must be None or one of {DEPTHWISE_METHODS}")
    return _depthwise(backend, prepare(xp, x, dtype), prepare(xp, weight, dtype), bias, geom,
                      method=method, index=index)


def _depthwise(backend, x, weight, bias, geom: ConvGeometry, *, method: str | None, index):
    xp = backend.xp
    dtype = np.dtype(x.dtype)
    batch, channels = x.shape[:2]
    c_out = weight.shape[0]
    bias = _bias_or_zeros(xp, bias, c_out, dtype)
    out = xp.empty((batch, c_out, *geom.out_size), dtype=dtype)
    launch = depthwise_launch(geom, x, weight, out, method=method, index=index)
    if launch.name.startswith(DIRECT.template + "<"):
        # conv_direct with groups = C computes the same (weight (C*M, 1, *k) is its layout).
        args = (x, weight, bias, out, batch, channels, c_out, channels)
    else:
        args = (x, weight, bias, out, batch, channels, c_out // channels)
    _run_launch(backend, launch, (*args, *as_3d(geom).args()))
    return out


# ----------------------------------------------------------------------------- gradients


def _grid_stride_blocks(total: int) -> int:
    return max(1, min(ceil_div(total, THREADS), MAX_BLOCKS))


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
    geom3 = as_3d(geom)
    blocks = _grid_stride_blocks(out.size)
    if index is None:
        index = _kernels.index_dtype(
            padded, out, max_index=2 * (padded.size + out.size + THREADS * (blocks + 1)))
    kernel = backend.executor.get_function(FOLD_FILE, FOLD.name_expression(dtype, index, mode))
    backend.executor.launch(kernel, grid=blocks, block=THREADS,
                            args=(padded, out, batch * channels, *geom3.in_size, *geom3.pad_lo,
                                  *geom3.padded_size))
    return out


def matmul_input_grad_reason(geom: ConvGeometry) -> str:
    """``""`` when algorithm ``"matmul"`` can serve the input gradient of a convolution of
    (backend) geometry ``geom`` (a 1x1 kernel, stride 1, no padding: one GEMM per group),
    else why not, in the words of the conv-forward ``matmul``."""
    if is_pointwise(geom):
        return ""
    return (f"needs a 1x1 kernel, stride 1 and no padding; got kernel={geom.kernel}, "
            f"stride={geom.stride}, padding={geom.pad_lo}/{geom.pad_hi}")


def input_grad_takes_matmul(geom: ConvGeometry) -> bool:
    """Whether :func:`conv_input_grad` computes ``geom``'s input gradient as one GEMM per
    group (algorithm ``"matmul"``): a pointwise ``geom`` with no algorithm forced, or
    ``"matmul"`` forced (:func:`gpuconv.use_algorithm`). Any other forced algorithm serves a
    pointwise input gradient as the transposed convolution it is (``TRANSPOSE_REGISTRY``,
    where a forced algorithm that cannot serve it raises).

    Raises
    ------
    ValueError
        ``"matmul"`` forced for a ``geom`` that is not pointwise (the reason says why).
    """
    from ..._algorithms import TRANSPOSE_SELECTION_OP, current_algorithm

    forced = current_algorithm()
    reason = matmul_input_grad_reason(geom)
    if forced == "matmul" and reason:
        raise ValueError(f"{TRANSPOSE_SELECTION_OP}: algorithm 'matmul' cannot serve this "
                         f"call: {reason}")
    return not reason and forced in (None, "matmul")


def conv_input_grad(backend, weight, grad_output, geom: ConvGeometry, *, index=None):
    """Gradient of ``conv(x, weight)`` with respect to ``x`` (N, C_in, *geom.in_size), from
    ``grad_output`` (N, C_out, *geom.out_size) and ``weight`` (C_out, C_in / groups, *k).

    A pointwise ``geom`` is one GEMM per group unless an algorithm other than ``"matmul"`` is
    forced (:func:`input_grad_takes_matmul`); everything else is a transposed convolution of
    the selected algorithm (zeros padding: cropped by its geometry; other modes: onto the
    padded size, then folded by ``pad_fold``).

    ``index`` forces the fold kernel's index type (tests).
    """
    xp = backend.xp
    batch, c_out = grad_output.shape[:2]
    groups = geom.groups
    og, cg = c_out // groups, weight.shape[1]
    if input_grad_takes_matmul(geom):
        positions = math.prod(geom.out_size)
        # (G, cg, og) @ (N, G, og, P) -> (N, G, cg, P)
        wt = weight.reshape(groups, og, cg).transpose(0, 2, 1)
        result = backend.executor.matmul(wt, grad_output.reshape(batch, groups, og, positions))
        return xp.ascontiguousarray(result.reshape(batch, groups * cg, *geom.in_size),
                                    dtype=grad_output.dtype)
    if geom.padding_mode == "zeros" or not (any(geom.pad_lo) or any(geom.pad_hi)):
        return backend.conv_transpose(grad_output, weight, None,
                                      conv_as_transpose(geom, geom.pad_lo, geom.in_size))
    if is_bfloat16(grad_output.dtype):  # padded gradient and fold in float32, rounded once
        from ..._algorithms import use_tf32

        acc = accumulation_dtype(grad_output.dtype)
        # bfloat16 values are exact in TF32 (8 significant bits of 11), so the float32 call
        # may run on tensor cores (implicit_gemm) without changing a bit of its operands
        with use_tf32(True):
            wide = conv_input_grad(backend, weight.astype(acc), grad_output.astype(acc), geom,
                                   index=index)
        return wide.astype(grad_output.dtype)
    padded = backend.conv_transpose(grad_output, weight, None,
                                    conv_as_transpose(geom, (0,) * geom.ndim,
                                                      geom.padded_size))
    return fold_padding(backend, padded, geom, index=index)


def choose_weight_grad_method(c_in: int, groups: int) -> str:
    """``"depthwise"`` when each group has one input channel, else ``"gemm"``."""
    return "depthwise" if c_in // groups == 1 else "gemm"


def _weight_grad_index(arrays, geom: ConvGeometry, length: int, split_len: int, extra: int):
    # Besides the arrays' extents: padded positions (large zero pads), the reduction index
    # (which runs up to a split past the end), and the workspace / tile counts.
    return _kernels.index_dtype(
        *arrays, max_index=2 * max(as_3d(geom).reach(), length + 2 * split_len, extra))


@dataclass(frozen=True)
class WeightGradLaunch:
    """What :func:`conv_weight_grad` launches (and :func:`gpuconv.plan` describes): the
    ``conv_weight_grad`` / ``depthwise_weight_grad`` instantiation ``name`` on ``grid`` x
    ``block`` with its scalar arguments ``counts`` and ``split_len``, into a workspace of
    ``workspace`` elements of ``acc`` (zeroed for atomics), then ``reduce`` (the
    ``weight_grad_reduce`` instantiation, or None when the atomics' array is the result) over
    ``splits`` partial sums. ``shape`` is the result's; ``out_elems == 0`` or ``length == 0``:
    nothing is launched (zeros)."""

    name: str
    grid: tuple[int, int]
    block: int
    counts: tuple[int, ...]
    split_len: int
    splits: int
    acc: np.dtype
    workspace: int
    reduce: str | None
    shape: tuple[int, ...]
    out_elems: int
    length: int


def weight_grad_launch(x, grad_output, geom: ConvGeometry, deterministic: bool = False, *,
                       method: str | None = None, splits: int | None = None,
                       index=None) -> WeightGradLaunch:
    """The launches of :func:`conv_weight_grad` for arrays (or shape-only stand-ins) ``x`` and
    ``grad_output``; see there for the arguments."""
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
        return WeightGradLaunch("", (0, 0), 0, (), 0, 0, acc, 0, None, shape, out_elems,
                                length)
    if method == "gemm":
        tiles = groups * ceil_div(og, TILE_M) * ceil_div(cg * taps, TILE_N)
        n_splits, split_len = split_plan(tiles, length, TILE_K, MIN_SPLIT_LEN, out_elems,
                                         acc.itemsize, deterministic, splits)
        family, block = WEIGHT_GRAD, WEIGHT_GRAD_THREADS
        counts = (batch, c_in, c_out, groups)
    else:
        tiles = c_out * ceil_div(taps, DEPTHWISE_TAPS)
        n_splits, split_len = split_plan(tiles, length, 1, DEPTHWISE_MIN_SPLIT_LEN, out_elems,
                                         acc.itemsize, deterministic, splits)
        family = DEPTHWISE_WEIGHT_GRAD
        block = max(32, min(DEPTHWISE_THREADS, pow2_at_least(split_len)))
        counts = (batch, c_in, og)  # channels, multiplier
    workspace = n_splits * out_elems if deterministic else out_elems
    if index is None:
        index = _weight_grad_index((x, grad_output, _shape_only((workspace,), acc)), geom,
                                   length, split_len, tiles * TILE_M * TILE_N + workspace)
    mode = PADDING_MODE_CODES[geom.padding_mode]
    reduce = (None if not deterministic and acc == dtype
              else REDUCE.name_expression(dtype, index))
    return WeightGradLaunch(family.name_expression(dtype, index, mode, deterministic),
                            (tiles, n_splits), block, counts, split_len, n_splits, acc,
                            workspace, reduce, shape, out_elems, length)


def _shape_only(shape, dtype) -> np.ndarray:
    """A read-only array of ``shape`` and ``dtype`` that occupies no memory (for the index
    choice, which reads only sizes)."""
    return np.broadcast_to(np.empty((), dtype), tuple(shape))


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
    plan = weight_grad_launch(x, grad_output, geom, deterministic, method=method,
                              splits=splits, index=index)
    if plan.out_elems == 0 or plan.length == 0:
        return xp.zeros(plan.shape, dtype=dtype)
    if deterministic:
        workspace = xp.empty((plan.splits, plan.out_elems), dtype=plan.acc)
    else:
        workspace = xp.zeros(plan.out_elems, dtype=plan.acc)
    kernel = backend.executor.get_function(GRAD_FILE, plan.name)
    backend.executor.launch(kernel, grid=plan.grid, block=plan.block,
                            args=(x, grad_output, workspace, *plan.counts,
                                  *as_3d(geom).args(), plan.split_len))
    if plan.reduce is None:
        return workspace.reshape(plan.shape)
    out = xp.empty(plan.out_elems, dtype=dtype)
    reduce = backend.executor.get_function(GRAD_FILE, plan.reduce)
    backend.executor.launch(reduce, grid=_grid_stride_blocks(plan.out_elems), block=THREADS,
                            args=(workspace, out, plan.out_elems,
                                  workspace.size // plan.out_elems))
    return out.reshape(plan.shape)
