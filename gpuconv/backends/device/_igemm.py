"""Launch configuration of the tensor-core implicit-GEMM convolutions (``kernels/conv_igemm.cu``).

Owns the host side of ``conv_igemm``: the name expression of an instantiation, the grid /
block / shared memory / weight-copy width / split of a call, and launches through any module
with ``get_function`` -- an emulator module (:func:`gpuconv._emulator.load_module`) or a
``cupy.RawModule``. One kernel serves three GEMMs (issue 14), each a way of filling its
operand strides and geometry:

* the forward convolution (:func:`forward_config`, :func:`conv_igemm_forward`): ``M = N * OD
  * OH * OW`` output positions, ``N = C_out / groups``, ``K = C_in / groups * taps``; A is the
  implicit im2col matrix of ``x`` (every padding mode), B the weight rows;
* the transposed convolution (:func:`transpose_config`, :func:`conv_igemm_transpose`), which is
  also the convolution's input gradient: ``M`` = the output's positions, ``N = C_out / groups``
  of the transposed convolution, ``K = C_in / groups * taps``; A gathers ``x`` at ``(o + crop -
  k * dil) / stride`` where that is a whole in-range position (the kernel's ``Gather = 1``,
  zeros outside), B is the weight transposed once on the host to rows of ``K`` (a small copy);
* the weight gradient (:func:`weight_grad_config`, :func:`conv_igemm_weight_grad`): the
  forward kernel with the roles exchanged and nothing copied -- ``M = C_in / groups * taps``
  (``x``'s channels as the batch, the taps as the output positions), ``N = C_out / groups``,
  ``K = N * OD * OH * OW`` (the batch as the channels, the output positions as the taps:
  stride and dilation swap), B is ``grad_output`` read through its strides. ``K`` is long and
  ``M x N`` small, so K is split over ``grid.z`` ("split-K"): partial sums meet either by
  ``atomicAdd`` in an fp32 array or, ``deterministic``, as per-split fp32 partials summed in
  ascending split order (bitwise reproducible).

One block of 128 threads per 64 x 64 tile of (M, N); grid ``(ceil(M / 64), ceil(N / 64),
groups * splits)``.

Element types (``kind``): ``"float16"`` (``__half``, mma.m16n8k16), ``"bfloat16"`` (bfloat16
*bits* in ``uint16`` arrays, mma.m16n8k16) and ``"tf32"`` (``float32`` arrays, both operands
rounded to TF32 in the kernel, mma.m16n8k8); all accumulate in float32 and round once.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ... import _kernels
from ..._limits import MAX_GRID_Y, WORKSPACE_BYTES
from ..._shapes import Geometry3d, as_3d, conv_geometry, conv_transpose_geometry
from ._common import PADDING_MODE_CODES, ceil_div

IGEMM_FILE = "conv_igemm.cu"
TEMPLATE = "conv_igemm"
BLOCK_M = 64  # kBM, kBN, kThreads of conv_igemm.cu
BLOCK_N = 64
THREADS = 128
STAGE_BYTES = 64  # kStageBytes: bytes of K per tile row per pipeline stage
#: Split-K aims at this many blocks in all (an H100/H200 has 132 SMs; 5 blocks fit on each) ...
TARGET_BLOCKS = 1024
#: ... with at least this many K tiles per split (a split shorter than the pipeline only fills
#: and drains it).
MIN_SPLIT_TILES = 8

#: kind -> (C++ storage type, NumPy dtype of the arrays)
KINDS = {
    "float16": ("__half", np.dtype(np.float16)),
    "bfloat16": ("unsigned short", np.dtype(np.uint16)),
    "tf32": ("float", np.dtype(np.float32)),
}
INDEX_TYPES = {np.dtype(np.int32): "int", np.dtype(np.int64): "long long"}
#: The kernel's Gather parameter: the forward im2col gather (k = (c, tap)), the transposed
#: one, or the forward gather of a channels-last x with channels innermost in k (k = (tap,
#: c): 16-byte copies of 16 / itemsize channels).
GATHERS = {"conv": 0, "transposed": 1, "nhwc": 2}
#: The kernel's epilogue argument.
EPILOGUE_STORE, EPILOGUE_ATOMIC, EPILOGUE_PARTIAL = 0, 1, 2


def stages() -> int:
    """The pipeline depth the kernel is compiled with (``GPUCONV_IGEMM_STAGES``)."""
    return _kernels.source_define(IGEMM_FILE, "GPUCONV_IGEMM_STAGES")


def shared_bytes() -> int:
    """Static shared memory per block: per stage a (BK, 64 + 8) input tile and a (64, BK)
    weight tile, BK = 64 bytes of elements (8704 bytes a stage, whatever the type)."""
    a_tile = STAGE_BYTES * (BLOCK_M + 8)  # BK rows of BM + 8 elements: 64 * 72 bytes
    b_tile = BLOCK_N * STAGE_BYTES
    return stages() * (a_tile + b_tile)


def name_expression(kind: str, padding_mode: str, index: str = "int",
                    gather: str = "conv") -> str:
    """``conv_igemm<T, Index, Mode, Gather>`` for a kind, a padding mode, an index type and a
    gather (``"conv"``, or ``"transposed"`` with zeros padding).

    >>> name_expression("bfloat16", "reflect")
    'conv_igemm<unsigned short, int, 1, 0>'
    >>> name_expression("float16", "zeros", gather="transposed")
    'conv_igemm<__half, int, 0, 1>'
    """
    if gather == "transposed" and padding_mode != "zeros":
        raise ValueError(f"the transposed gather reads zeros outside, not {padding_mode!r}")
    return (f"{TEMPLATE}<{KINDS[kind][0]}, {index}, {PADDING_MODE_CODES[padding_mode]}, "
            f"{GATHERS[gather]}>")


def all_name_expressions(index: str = "int") -> list[str]:
    """Every instantiation for one index type: (kind, padding mode) of the forward gathers
    (NCDHW and channels-last) and each kind's transposed gather."""
    return ([name_expression(k, m, index, g) for g in ("conv", "nhwc") for k in KINDS
             for m in PADDING_MODE_CODES]
            + [name_expression(k, "zeros", index, "transposed") for k in KINDS])


def nhwc_reason(kind: str, c_in: int, groups: int, x_strides, pointer: int = 0) -> str:
    """Why the channels-last gather cannot read an ``x`` of element strides ``x_strides``
    (N, C, D, H, W), or ``""`` if it can: it copies 16 bytes of consecutive channels, so the
    channels must be innermost (stride 1), C_in / groups a multiple of 16 / itemsize, and
    every other stride and the address 16-byte aligned.

    >>> nhwc_reason("float16", 64, 1, (64 * 56 * 56, 1, 0, 56 * 64, 64))
    ''
    >>> nhwc_reason("float16", 3, 1, (3 * 49, 1, 0, 21, 3))
    'C_in / groups = 3 is not a multiple of 8 (16-byte channel copies)'
    """
    itemsize = KINDS[kind][1].itemsize
    vec = 16 // itemsize
    if int(x_strides[1]) != 1:
        return "the channels are not innermost (stride 1)"
    if (c_in // groups) % vec:
        return (f"C_in / groups = {c_in // groups} is not a multiple of {vec} (16-byte "
                f"channel copies)")
    if pointer % 16 or any((int(st) * itemsize) % 16 for st in (x_strides[0], *x_strides[2:])):
        return "x is not 16-byte aligned at every position"
    return ""


def nhwc_weight(xp, weight):
    """A weight (C_out, C_in / groups, *k) as rows of K in the channels-last gather's order
    (tap, c): (C_out, *k, C_in / groups), C-contiguous (one copy of the small weight)."""
    return xp.ascontiguousarray(xp.moveaxis(weight, 1, -1))


def weight_copy_bytes(itemsize: int, pointer: int, *strides: int) -> int:
    """Bytes per ``cp.async`` of the B operand: 16 if the array's address and every element
    stride in ``strides`` (rows, groups, runs) keep 16-byte alignment, else 4, else
    ``itemsize`` (a 16-bit type with an odd stride: plain copies).

    >>> weight_copy_bytes(2, 0, 576), weight_copy_bytes(4, 0, 27), weight_copy_bytes(2, 0, 27)
    (16, 4, 2)
    """
    for vec in (16, 4):
        if pointer % vec == 0 and all((int(s) * itemsize) % vec == 0 for s in strides):
            return vec
    return itemsize


@dataclasses.dataclass(frozen=True)
class IgemmConfig:
    """What one call launches.

    ``args`` are the kernel's scalar arguments after the five arrays, already wrapped in the
    exact NumPy scalar types of its parameters. ``splits`` > 1 and ``epilogue`` 1 or 2 only for
    the weight gradient; ``workspace`` is the fp32 array shape the epilogue writes (``()``: none).
    """

    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int  # dynamic shared memory (the kernel's is static: shared_bytes())
    w_vec: int
    gemm: tuple[int, int, int]  # (M, N, K) per group
    splits: int
    epilogue: int
    workspace: tuple[int, ...]
    args: tuple

    @property
    def workspace_bytes(self) -> int:
        return 4 * math.prod(self.workspace) if self.workspace else 0


def _index_type(index, extents) -> np.dtype:
    if index is None:
        return (np.dtype(np.int32) if max(extents) < 2**31 - 2 * BLOCK_M * BLOCK_N
                else np.dtype(np.int64))
    return np.dtype(index)


def _config(kind: str, gather: str, padding_mode: str, *, batch, cg, og, groups,
            dims: tuple, x_strides: tuple, w_strides: tuple, o_strides: tuple, taps: int,
            has_bias: bool, w_vec: int, extents: tuple, index, splits: int = 1,
            k_tiles: int | None = None, epilogue: int = EPILOGUE_STORE,
            out_elems: int = 0) -> IgemmConfig:
    """The launch of ``conv_igemm`` for a GEMM given by its operand strides (see the kernel)."""
    out_vol = math.prod(dims[3:6])
    m, n, k = batch * out_vol, og, cg * taps
    nk = ceil_div(k, STAGE_BYTES // KINDS[kind][1].itemsize)
    if k_tiles is None:
        k_tiles = max(nk, 1)
    workspace = ()
    if epilogue == EPILOGUE_ATOMIC:
        workspace = (out_elems,)
    elif epilogue == EPILOGUE_PARTIAL:
        workspace = (splits, out_elems)
    index = _index_type(index, (*extents, math.prod(workspace) if workspace else 0))
    scalar = index.type
    args = (
        *(scalar(v) for v in (batch, cg, og, groups)),
        *(scalar(v) for v in dims),
        *(scalar(v) for v in (*x_strides, *w_strides, *o_strides)),
        scalar(k_tiles), scalar(out_elems if epilogue == EPILOGUE_PARTIAL else 0),
        np.int32(bool(has_bias)), np.int32(w_vec), np.int32(epilogue),
    )
    return IgemmConfig(
        name=name_expression(kind, padding_mode, INDEX_TYPES[index], gather),
        grid=(ceil_div(m, BLOCK_M), ceil_div(n, BLOCK_N), groups * splits),
        block=(THREADS, 1, 1), shared_mem=0, w_vec=w_vec, gemm=(m, n, k), splits=splits,
        epilogue=epilogue, workspace=workspace, args=args)


def contiguous_strides(shape) -> tuple[int, ...]:
    """Element strides of a C-contiguous array of ``shape``.

    >>> contiguous_strides((2, 3, 4, 5, 6))
    (360, 120, 30, 6, 1)
    """
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= int(n)
    return tuple(reversed(strides))


def _span(shape, strides) -> int:
    """One past the largest element offset of an array of ``shape`` and ``strides``."""
    return 1 + sum((int(n) - 1) * abs(int(st)) for n, st in zip(shape, strides) if n > 0)


def forward_config(kind: str, x_shape, w_shape, geom: Geometry3d, *, groups: int,
                   padding_mode: str, has_bias: bool, weight_pointer: int = 0,
                   index: np.dtype | None = None, gather: str = "conv",
                   x_strides: tuple | None = None,
                   out_strides: tuple | None = None) -> IgemmConfig:
    """The launch of a forward (``gather="conv"``) or transposed (``"transposed"``, the
    weight already in rows of K, see :func:`transpose_config`) convolution, 3-D-lifted.

    Parameters
    ----------
    kind : {"float16", "bfloat16", "tf32"}
    x_shape, w_shape : tuple of int
        ``(N, C_in, D, H, W)`` and ``(C_out, C_in / groups, KD, KH, KW)``.
    geom : Geometry3d
        The 3-D geometry (:func:`gpuconv._shapes.as_3d`); for the transposed gather, that of
        the transposed convolution (``pad_lo`` its crop).
    groups, padding_mode, has_bias
        As the convolution's.
    weight_pointer : int
        The weight's address (its alignment picks the weight-copy width).
    index : numpy dtype, optional
        int32 or int64; default int32 unless an extent reaches 2**31.
    x_strides, out_strides : tuple of 5 int, optional
        Element strides (N, C, D, H, W) of ``x`` and of the output, e.g. channels-last
        (NDHWC) ones; default C-contiguous. The kernel reads and writes through them (with
        the same summation order: the result is the same bit for bit).
    """
    batch, c_in = int(x_shape[0]), int(x_shape[1])
    c_out = int(w_shape[0])
    in_vol, out_vol = math.prod(geom.in_size), math.prod(geom.out_size)
    cg, og = c_in // groups, c_out // groups
    taps = math.prod(geom.kernel)
    k = cg * taps
    itemsize = KINDS[kind][1].itemsize
    reach = (geom.reach(geom.in_size) if gather == "transposed" else geom.reach())
    xs = x_strides or contiguous_strides((batch, c_in, *geom.in_size))
    os_ = out_strides or contiguous_strides((batch, c_out, *geom.out_size))
    return _config(
        kind, gather, padding_mode, batch=batch, cg=cg, og=og, groups=groups,
        dims=geom.args(), x_strides=(cg * xs[1], xs[0], xs[1], *xs[2:]),
        w_strides=(og * k, k, taps), o_strides=(og * os_[1], os_[0], os_[1], *os_[2:]),
        taps=taps, has_bias=has_bias, w_vec=weight_copy_bytes(itemsize, weight_pointer, k),
        extents=(batch * c_in * in_vol, batch * c_out * out_vol, c_out * k, reach + 1,
                 _span((batch, c_in, *geom.in_size), xs),
                 _span((batch, c_out, *geom.out_size), os_)),
        index=index)


def igemm_config(kind: str, x_shape, w_shape, geom: Geometry3d, **kwargs) -> IgemmConfig:
    """:func:`forward_config` (the forward convolution's launch)."""
    return forward_config(kind, x_shape, w_shape, geom, **kwargs)


def transpose_config(kind: str, x_shape, w_shape, geom: Geometry3d, *, groups: int,
                     has_bias: bool, weight_pointer: int = 0,
                     index: np.dtype | None = None) -> IgemmConfig:
    """The launch of a transposed convolution: ``x_shape`` (N, C_in, *in), ``w_shape`` its
    weight's (C_in, C_out / groups, *k) and ``geom`` its 3-D geometry. The kernel reads the
    weight as :func:`transposed_weight` lays it out."""
    c_in, og = int(w_shape[0]), int(w_shape[1])
    rows = (og * groups, c_in // groups, *w_shape[2:])
    return forward_config(kind, x_shape, rows, geom, groups=groups, padding_mode="zeros",
                          has_bias=has_bias, weight_pointer=weight_pointer, index=index,
                          gather="transposed")


def transposed_weight(xp, weight, groups: int):
    """A transposed convolution's weight (C_in, C_out / groups, *k) as rows of K: (C_out,
    C_in / groups, *k) with row ``g * og + n`` holding ``weight[g * cg + c, n, tap]`` at ``c *
    taps + tap`` (one copy of the small weight)."""
    c_in, og = weight.shape[:2]
    cg, kernel = c_in // groups, weight.shape[2:]
    w = weight.reshape(groups, cg, og, -1).transpose(0, 2, 1, 3)
    return xp.ascontiguousarray(w).reshape(groups * og, cg, *kernel)


def weight_grad_config(kind: str, x_shape, go_shape, geom: Geometry3d, *, groups: int,
                       padding_mode: str, deterministic: bool, splits: int | None = None,
                       go_pointer: int = 0, index: np.dtype | None = None) -> IgemmConfig:
    """The launch of the weight gradient of a (3-D-lifted) convolution of ``x`` (``x_shape``)
    giving ``grad_output`` (``go_shape``): the result (C_out, C_in / groups, *k) in fp32 when
    split (``splits`` > 1: the workspace), else in the kind's dtype.

    ``splits`` forces the number of K splits (tests); by default enough to give about
    :data:`TARGET_BLOCKS` blocks, each at least :data:`MIN_SPLIT_TILES` K tiles long, and (the
    deterministic variant) a workspace within ``WORKSPACE_BYTES``.
    """
    batch, c_in = int(x_shape[0]), int(x_shape[1])
    c_out = int(go_shape[1])
    cg, og = c_in // groups, c_out // groups
    in_vol, out_vol = math.prod(geom.in_size), math.prod(geom.out_size)
    taps = math.prod(geom.kernel)
    out_elems = c_out * cg * taps
    itemsize = KINDS[kind][1].itemsize
    bk = STAGE_BYTES // itemsize
    nk = max(ceil_div(batch * out_vol, bk), 1)
    tiles = ceil_div(cg * taps, BLOCK_M) * ceil_div(og, BLOCK_N) * groups
    if splits is None:
        splits = min(ceil_div(TARGET_BLOCKS, tiles), ceil_div(nk, MIN_SPLIT_TILES))
        if deterministic:
            splits = min(splits, WORKSPACE_BYTES // max(4 * out_elems, 1))
    splits = max(1, min(int(splits), nk, MAX_GRID_Y // groups))
    k_tiles = ceil_div(nk, splits)
    splits = ceil_div(nk, k_tiles)
    if splits == 1:
        epilogue = EPILOGUE_STORE
    else:
        epilogue = EPILOGUE_PARTIAL if deterministic else EPILOGUE_ATOMIC
    # the roles: A = x with (C_in / groups) as the batch and N as the channels, the taps as
    # the output positions and the output positions as the taps; B = grad_output, rows co
    # of runs of out_vol; the result (C_out, C_in / groups, taps)
    dims = (*geom.in_size, *geom.kernel, *geom.out_size, *geom.dilation, *geom.stride,
            *geom.pad_lo)
    w_strides = (og * out_vol, out_vol, c_out * out_vol)
    in_h, in_w = geom.in_size[1:]
    k_h, k_w = geom.kernel[1:]
    return _config(
        kind, "conv", padding_mode, batch=cg, cg=batch, og=og, groups=groups, dims=dims,
        x_strides=(cg * in_vol, in_vol, c_in * in_vol, in_h * in_w, in_w, 1),
        w_strides=w_strides, o_strides=(og * cg * taps, taps, cg * taps, k_h * k_w, k_w, 1),
        taps=out_vol, has_bias=False,
        w_vec=weight_copy_bytes(itemsize, go_pointer, *w_strides), splits=splits,
        k_tiles=k_tiles, epilogue=epilogue, out_elems=out_elems,
        extents=(batch * c_in * in_vol, batch * c_out * out_vol, out_elems, geom.reach() + 1),
        index=index)


def _pointer(array) -> int:
    if isinstance(array, np.ndarray):
        return array.ctypes.data
    return int(array.data.ptr)  # cupy


def _check(kind: str, **arrays) -> np.dtype:
    dtype = KINDS[kind][1]
    for name, a in arrays.items():
        if a is not None and (a.dtype != dtype or not a.flags.c_contiguous):
            raise TypeError(f"{name} must be a C-contiguous {dtype} array for kind={kind!r}, "
                            f"got {a.dtype}")
    return dtype


def conv_igemm_forward(module, x, weight, bias=None, *, kind: str, stride=1, padding=0,
                       dilation=1, groups: int = 1, padding_mode: str = "zeros",
                       index=None, xp=np, layout: str = "nchw"):
    """Run the implicit-GEMM forward convolution through ``module``.

    Parameters
    ----------
    module
        Anything with ``get_function(name)`` whose functions launch as
        ``fn(grid, block, args, shared_mem=...)``: an emulator module built from
        ``kernels/conv_igemm.cu`` with :func:`name_expression`'s instantiations, or a
        ``cupy.RawModule``.
    x : array, (N, C_in, *spatial) with 1 to 3 spatial dims, C-contiguous
    weight : array, (C_out, C_in / groups, *kernel), C-contiguous
    bias : array, (C_out,), optional
    kind : {"float16", "bfloat16", "tf32"}
        ``x``, ``weight``, ``bias`` must have the kind's dtype (:data:`KINDS`).
    stride, padding, dilation, groups, padding_mode
        As :func:`gpuconv.conv` (validated by :func:`gpuconv._shapes.conv_geometry`).
    index : numpy dtype, optional
        Forces the kernel's index type.
    xp : module
        ``numpy`` or ``cupy``: allocates the output.
    layout : {"nchw", "nhwc"}
        ``"nhwc"``: ``x`` is a dense channels-last view (an (N, C, *spatial) view of an
        (N, *spatial, C) C-contiguous buffer) read by the channels-last gather
        (:func:`nhwc_reason` says when it can), and the result is channels-last too.

    Returns
    -------
    array, (N, C_out, *out_spatial), the kind's dtype
    """
    dtype = _check(kind, weight=weight, bias=bias)
    if layout == "nhwc":
        if x.dtype != dtype or not xp.moveaxis(x, 1, -1).flags.c_contiguous:
            raise TypeError(f"x must be a dense channels-last {dtype} array for layout='nhwc'")
        reason = nhwc_reason(kind, x.shape[1], groups, lifted_strides(x),
                             _pointer(xp.moveaxis(x, 1, -1)))
        if reason:
            raise ValueError(f"conv_igemm_forward(layout='nhwc'): {reason}")
    else:
        _check(kind, x=x)
    geom = conv_geometry(x.shape[2:], weight.shape[2:], stride=stride, padding=padding,
                         dilation=dilation, groups=groups, padding_mode=padding_mode,
                         op="conv_igemm")
    return run_forward(lambda _name: module, xp, kind, x, weight, bias, geom, index=index)


def lifted_strides(a) -> tuple[int, ...]:
    """Element strides (N, C, D, H, W) of an (N, C, *spatial) array, 1-D/2-D lifted to 3-D."""
    st = [int(v) // a.itemsize for v in a.strides]
    return (*st[:2], *([0] * (5 - a.ndim)), *st[2:])


def run_forward(module_for, xp, kind: str, x, weight, bias, geom, *, index=None):
    """The forward convolution of arrays in the kind's storage dtype with a validated
    :class:`gpuconv._shapes.ConvGeometry`: a C-contiguous ``x`` through the NCDHW gather, a
    dense channels-last one (which :func:`nhwc_reason` accepts: the caller's check) through
    the channels-last gather, with a channels-last result. ``module_for(name)`` is the module
    holding instantiation ``name`` (what :func:`conv_igemm_forward` and the ``implicit_gemm``
    algorithm share)."""
    g3 = as_3d(geom)
    batch, c_out = x.shape[0], weight.shape[0]
    ws = xp.empty(1, np.float32)
    if x.flags.c_contiguous:
        cfg = forward_config(kind, x.shape, weight.shape, g3, groups=geom.groups,
                             padding_mode=geom.padding_mode, has_bias=bias is not None,
                             weight_pointer=_pointer(weight), index=index)
        out = xp.empty((batch, c_out, *geom.out_size), x.dtype)
        launch(module_for(cfg.name), cfg, x, weight, out if bias is None else bias, out, ws)
        return out
    rows = nhwc_weight(xp, weight)
    out_buf = xp.empty((batch, *geom.out_size, c_out), x.dtype)
    out = xp.moveaxis(out_buf, -1, 1)
    cfg = forward_config(kind, x.shape, weight.shape, g3, groups=geom.groups,
                         padding_mode=geom.padding_mode, has_bias=bias is not None,
                         weight_pointer=_pointer(rows), index=index, gather="nhwc",
                         x_strides=lifted_strides(x), out_strides=lifted_strides(out))
    launch(module_for(cfg.name), cfg, xp.moveaxis(x, 1, -1), rows,
           rows if bias is None else bias, out_buf, ws)
    return out


def conv_igemm_transpose(module, x, weight, bias=None, *, kind: str, stride=1, padding=0,
                         output_padding=0, dilation=1, groups: int = 1, index=None, xp=np):
    """Run the implicit-GEMM transposed convolution through ``module`` (as
    :func:`conv_igemm_forward`): ``x`` (N, C_in, *in), ``weight`` (C_in, C_out / groups, *k),
    ``bias`` (C_out,) or None; the arguments of :func:`gpuconv.conv_transpose`."""
    _check(kind, x=x, weight=weight, bias=bias)
    geom = conv_transpose_geometry(x.shape[2:], weight.shape[2:], stride=stride,
                                   padding=padding, output_padding=output_padding,
                                   dilation=dilation, groups=groups, op="conv_igemm")
    return run_transpose(lambda _name: module, xp, kind, x, weight, bias, geom,
                         index=index)


def run_transpose(module_for, xp, kind: str, x, weight, bias, geom, *, index=None):
    """The transposed convolution of C-contiguous arrays in the kind's storage dtype with a
    validated geometry (as :func:`run_forward`): the weight copied once into rows of K, the
    transposed gather."""
    rows = transposed_weight(xp, weight, geom.groups)
    cfg = transpose_config(kind, x.shape, weight.shape, as_3d(geom), groups=geom.groups,
                           has_bias=bias is not None, weight_pointer=_pointer(rows),
                           index=index)
    out = xp.empty((x.shape[0], rows.shape[0], *geom.out_size), x.dtype)
    launch(module_for(cfg.name), cfg, x, rows, out if bias is None else bias, out,
           xp.empty(1, np.float32))
    return out


def conv_igemm_weight_grad(module, x, grad_output, weight_shape, *, kind: str, stride=1,
                           padding=0, dilation=1, groups: int = 1, padding_mode: str = "zeros",
                           deterministic: bool = False, splits=None, index=None, xp=np):
    """Run the implicit-GEMM weight gradient through ``module``: the gradient of
    ``conv(x, weight, ...)`` with respect to ``weight`` (``weight_shape``), from
    ``grad_output``. Returns the kind's dtype; split sums meet in fp32 and are rounded once
    (the deterministic partials summed here in ascending split order)."""
    _check(kind, x=x, grad_output=grad_output)
    geom = conv_geometry(x.shape[2:], weight_shape[2:], stride=stride, padding=padding,
                         dilation=dilation, groups=groups, padding_mode=padding_mode,
                         op="conv_igemm")
    return run_weight_grad(lambda _name: module, xp, kind, x, grad_output, geom,
                           deterministic, splits=splits, index=index)


def _sum_splits(kind: str, xp, ws, splits: int, shape):
    """The fp32 workspace's ``splits`` partial sums added in ascending split order, rounded
    once to the kind's storage."""
    total = ws[0].copy() if splits > 1 else ws.reshape(-1)
    for s in range(1, splits):
        total += ws[s]
    return round_to(kind, total, xp).reshape(shape)


def run_weight_grad(module_for, xp, kind: str, x, grad_output, geom, deterministic: bool, *,
                    splits=None, index=None, reduce=None):
    """The weight gradient (C_out, C_in / groups, *k) of C-contiguous arrays in the kind's
    storage dtype with a validated geometry (as :func:`run_forward`). A split launch's fp32
    workspace is finished by ``reduce(ws, splits)`` (default: :func:`_sum_splits` here, in
    ascending split order; the device backends pass ``weight_grad_reduce``, the same order);
    an atomic TF32 workspace is the result itself."""
    w_shape = (grad_output.shape[1], x.shape[1] // geom.groups, *geom.kernel)
    cfg = weight_grad_config(kind, x.shape, grad_output.shape, as_3d(geom), groups=geom.groups,
                             padding_mode=geom.padding_mode, deterministic=deterministic,
                             splits=splits, go_pointer=_pointer(grad_output), index=index)
    out = xp.empty(w_shape, x.dtype)
    if cfg.epilogue == EPILOGUE_ATOMIC:
        ws = xp.zeros(cfg.workspace, np.float32)
    else:
        ws = xp.empty(cfg.workspace or (1,), np.float32)
    launch(module_for(cfg.name), cfg, x, grad_output, out, out, ws)
    if cfg.epilogue == EPILOGUE_STORE:
        return out
    if cfg.epilogue == EPILOGUE_ATOMIC and kind == "tf32":
        return ws.reshape(w_shape)
    n = cfg.splits if cfg.epilogue == EPILOGUE_PARTIAL else 1
    if reduce is None:
        return _sum_splits(kind, xp, ws, n, w_shape)
    return reduce(ws, n).reshape(w_shape)


def round_to(kind: str, values, xp=np):
    """fp32 ``values`` rounded once to the kind's storage (bfloat16 bits: to nearest even)."""
    if kind == "tf32":
        return values
    if kind == "float16":
        return values.astype(np.float16)
    bits = values.view(np.uint32).astype(np.uint64)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return xp.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded)


def launch(module, cfg: IgemmConfig, x, weight, bias, out, ws) -> None:
    """Launch ``cfg`` (keyword-free: ``fn(grid, block, args, shared_mem=)``); ``bias`` is any
    array of the kind's dtype when ``cfg`` has no bias (it is not read), ``ws`` the fp32
    workspace of a split launch (any float32 array when there is none: not written)."""
    fn = module.get_function(cfg.name)
    fn(cfg.grid, cfg.block, (x, weight, bias, out, ws, *cfg.args), shared_mem=cfg.shared_mem)
