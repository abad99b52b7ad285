"""Launch configuration of the tensor-core implicit-GEMM forward convolution.

Owns the host side of ``conv_igemm_fwd`` in ``kernels/conv_igemm.cu`` (issue 14, step 1): the
name expression of an instantiation, the grid / block / shared memory / weight-copy width of a
call (:func:`igemm_config`), and a launch through any module with ``get_function`` -- an
emulator module (:func:`gpuconv._emulator.load_module`) or a ``cupy.RawModule``
(:func:`conv_igemm_forward`). It is not wired into the backends yet: no algorithm choice,
plan, autotune or gradients (those are later steps of the issue).

GEMM view (per group ``g``): ``M = N * OD * OH * OW`` output positions, ``N = C_out / groups``
output channels, ``K = C_in / groups * KD * KH * KW``; one block of 128 threads per 64 x 64 tile
of (M, N); grid ``(ceil(M / 64), ceil(N / 64), groups)``.

Element types (``kind``): ``"float16"`` (``__half``, mma.m16n8k16), ``"bfloat16"`` (bfloat16
*bits* in ``uint16`` arrays -- the emulator has no bfloat16 type yet -- mma.m16n8k16) and
``"tf32"`` (``float32`` arrays, both operands rounded to TF32 in the kernel, mma.m16n8k8); all
accumulate in float32 and round the output once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ... import _kernels
from ..._shapes import Geometry3d, as_3d, conv_geometry
from ._common import PADDING_MODE_CODES, ceil_div

IGEMM_FILE = "conv_igemm.cu"
TEMPLATE = "conv_igemm_fwd"
BLOCK_M = 64  # kBM, kBN, kThreads of conv_igemm.cu
BLOCK_N = 64
THREADS = 128
STAGE_BYTES = 64  # kStageBytes: bytes of K per tile row per pipeline stage

#: kind -> (C++ storage type, NumPy dtype of the arrays)
KINDS = {
    "float16": ("__half", np.dtype(np.float16)),
    "bfloat16": ("unsigned short", np.dtype(np.uint16)),
    "tf32": ("float", np.dtype(np.float32)),
}
INDEX_TYPES = {np.dtype(np.int32): "int", np.dtype(np.int64): "long long"}


def stages() -> int:
    """The pipeline depth the kernel is compiled with (``GPUCONV_IGEMM_STAGES``)."""
    return _kernels.source_define(IGEMM_FILE, "GPUCONV_IGEMM_STAGES")


def shared_bytes() -> int:
    """Static shared memory per block: per stage a (BK, 64 + 8) input tile and a (64, BK)
    weight tile, BK = 64 bytes of elements (8704 bytes a stage, whatever the type)."""
    a_tile = STAGE_BYTES * (BLOCK_M + 8)  # BK rows of BM + 8 elements: 64 * 72 bytes
    b_tile = BLOCK_N * STAGE_BYTES
    return stages() * (a_tile + b_tile)


def name_expression(kind: str, padding_mode: str, index: str = "int") -> str:
    """``conv_igemm_fwd<T, Index, Mode>`` for a kind, a padding mode and an index type.

    >>> name_expression("bfloat16", "reflect")
    'conv_igemm_fwd<unsigned short, int, 1>'
    """
    return f"{TEMPLATE}<{KINDS[kind][0]}, {index}, {PADDING_MODE_CODES[padding_mode]}>"


def all_name_expressions(index: str = "int") -> list[str]:
    """Every (kind, padding mode) instantiation for one index type."""
    return [name_expression(k, m, index) for k in KINDS for m in PADDING_MODE_CODES]


def weight_copy_bytes(k_elems: int, itemsize: int, pointer: int) -> int:
    """Bytes per ``cp.async`` of a weight row: 16 if every row start ``pointer + co * K *
    itemsize`` is 16-byte aligned, else 4 if 4-byte aligned, else ``itemsize`` (a 16-bit type
    with odd K: plain copies).

    >>> weight_copy_bytes(576, 2, 0), weight_copy_bytes(27, 4, 0), weight_copy_bytes(27, 2, 0)
    (16, 4, 2)
    """
    for vec in (16, 4):
        if (k_elems * itemsize) % vec == 0 and pointer % vec == 0:
            return vec
    return itemsize


@dataclasses.dataclass(frozen=True)
class IgemmConfig:
    """What one forward call launches.

    ``args`` are the kernel's scalar arguments after the four arrays, already wrapped in the
    exact NumPy scalar types of its parameters.
    """

    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int  # dynamic shared memory (the kernel's is static: shared_bytes())
    w_vec: int
    gemm: tuple[int, int, int]  # (M, N, K) per group
    args: tuple


def igemm_config(kind: str, x_shape, w_shape, geom: Geometry3d, *, groups: int,
                 padding_mode: str, has_bias: bool, weight_pointer: int = 0,
                 index: np.dtype | None = None) -> IgemmConfig:
    """The launch of ``conv_igemm_fwd`` for a 3-D-lifted call.

    Parameters
    ----------
    kind : {"float16", "bfloat16", "tf32"}
    x_shape, w_shape : tuple of int
        ``(N, C_in, D, H, W)`` and ``(C_out, C_in / groups, KD, KH, KW)``.
    geom : Geometry3d
        The 3-D geometry (:func:`gpuconv._shapes.as_3d`).
    groups, padding_mode, has_bias
        As the convolution's.
    weight_pointer : int
        The weight's address (its alignment picks the weight-copy width).
    index : numpy dtype, optional
        int32 or int64; default int32 unless an extent reaches 2**31.
    """
    batch, c_in = int(x_shape[0]), int(x_shape[1])
    c_out = int(w_shape[0])
    out_vol = int(np.prod(geom.out_size))
    m = batch * out_vol
    n = c_out // groups
    k = (c_in // groups) * int(np.prod(geom.kernel))
    if index is None:
        extents = (batch * c_in * int(np.prod(geom.in_size)), batch * c_out * out_vol,
                   c_out * k, geom.reach() + 1)
        index = np.dtype(np.int32) if max(extents) < 2**31 - BLOCK_M else np.dtype(np.int64)
    index = np.dtype(index)
    itemsize = KINDS[kind][1].itemsize
    scalar = index.type
    args = (
        *(scalar(v) for v in (batch, c_in, c_out, groups)),
        *(scalar(v) for v in geom.args()),
        np.int32(bool(has_bias)),
        np.int32(weight_copy_bytes(k, itemsize, weight_pointer)),
    )
    return IgemmConfig(
        name=name_expression(kind, padding_mode, INDEX_TYPES[index]),
        grid=(ceil_div(m, BLOCK_M), ceil_div(n, BLOCK_N), groups),
        block=(THREADS, 1, 1),
        shared_mem=0,
        w_vec=int(args[-1]),
        gemm=(m, n, k),
        args=args,
    )


def _pointer(array) -> int:
    if isinstance(array, np.ndarray):
        return array.ctypes.data
    return int(array.data.ptr)  # cupy


def conv_igemm_forward(module, x, weight, bias=None, *, kind: str, stride=1, padding=0,
                       dilation=1, groups: int = 1, padding_mode: str = "zeros",
                       index=None, xp=np):
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

    Returns
    -------
    array, (N, C_out, *out_spatial), the kind's dtype
    """
    dtype = KINDS[kind][1]
    for name, a in (("x", x), ("weight", weight), ("bias", bias)):
        if a is not None and (a.dtype != dtype or not a.flags.c_contiguous):
            raise TypeError(f"{name} must be a C-contiguous {dtype} array for kind={kind!r}, "
                            f"got {a.dtype}")
    ndim = x.ndim - 2
    geom = conv_geometry(x.shape[2:], weight.shape[2:], stride=stride, padding=padding,
                         dilation=dilation, groups=groups, padding_mode=padding_mode,
                         op="conv_igemm")
    g3 = as_3d(geom)
    cfg = igemm_config(kind, x.shape, weight.shape, g3, groups=groups,
                       padding_mode=padding_mode, has_bias=bias is not None,
                       weight_pointer=_pointer(weight), index=index)
    out = xp.empty((x.shape[0], weight.shape[0], *g3.out_size[3 - ndim:]), dtype)
    launch(module, cfg, x, weight, bias if bias is not None else out, out)
    return out


def launch(module, cfg: IgemmConfig, x, weight, bias, out) -> None:
    """Launch ``cfg`` (keyword-free: ``fn(grid, block, args, shared_mem=)``); ``bias`` is any
    array of the kind's dtype when ``cfg`` has no bias (it is not read)."""
    fn = module.get_function(cfg.name)
    fn(cfg.grid, cfg.block, (x, weight, bias, out, *cfg.args), shared_mem=cfg.shared_mem)
