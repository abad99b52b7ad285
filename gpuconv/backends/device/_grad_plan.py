"""Launch descriptions of the device backends' gradient and transposed-convolution paths,
for :func:`gpuconv.plan` (issue 14): nothing here launches.

* :func:`input_grad_steps`: what :func:`._conv.conv_input_grad` (``grad.conv_input`` and
  ``grad.depthwise_conv_input``) runs around the selected ``conv_transpose`` algorithm: a GEMM
  alone for a 1x1, stride-1, unpadded convolution (unless an algorithm other than ``matmul``
  is forced: :func:`._conv.input_grad_takes_matmul`); the transposed convolution of
  ``grad_output`` for zeros padding; else the transposed convolution onto the padded size,
  then ``pad_fold`` (bfloat16: both in float32, TF32 allowed, rounded once).
* :func:`transpose_direct` and :func:`weight_grad_direct`: the launches of the CUDA-core
  ``direct`` algorithms of :mod:`._conv_transpose` and :func:`._conv.conv_weight_grad`
  (name expression, grid, block, shared memory, workspace), as those functions compute them.

tests/test_plan_ops.py compares every description with the launches the calls make.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ... import _kernels
from ..._algorithms import ConvProblem, Description
from ..._dtypes import accumulation_dtype, is_bfloat16
from ..._limits import THREADS
from ..._shapes import ConvGeometry, as_3d, conv_as_transpose
from . import _conv, _conv_transpose
from ._common import PADDING_MODE_CODES, ceil_div


def _shape_only(shape, dtype) -> np.ndarray:
    """An array of ``shape`` and ``dtype`` that occupies no memory (only sizes are read)."""
    return np.broadcast_to(np.empty((), dtype), tuple(shape))


@dataclasses.dataclass(frozen=True)
class InputGradSteps:
    """How a convolution's input gradient is computed on a device backend.

    Attributes
    ----------
    path : {"matmul", "transpose", "transpose+fold"}
        A GEMM per group (no algorithm is selected); the transposed convolution of
        ``grad_output`` (:data:`._conv_algorithms.TRANSPOSE_REGISTRY`); or that onto the
        padded size followed by ``pad_fold``.
    geom : ConvGeometry
        The transposed convolution's geometry (for ``"matmul"``: the one a transposed
        convolution would have, for the candidates a plan lists).
    dtype : numpy.dtype
        The dtype the transposed convolution computes in (float32 for a bfloat16 fold).
    tf32 : bool or None
        True where the call turns TF32 on for its float32 pass (bfloat16 folds), else None
        (the caller's setting).
    after : tuple of str
        The kernels that follow the transposed convolution (``pad_fold<...>``).
    workspace_bytes : int
        Temporary memory besides the transposed convolution's own: the padded gradient, the
        float32 copies of a bfloat16 fold.
    note : str or None
        Conversions the path makes.
    matmul : Description or None
        The GEMM of the ``"matmul"`` path.
    """

    path: str
    geom: ConvGeometry | None
    dtype: np.dtype
    tf32: bool | None = None
    after: tuple[str, ...] = ()
    workspace_bytes: int = 0
    note: str | None = None
    matmul: Description | None = None


def fold_name(padded_shape, geom: ConvGeometry, dtype) -> str:
    """The ``pad_fold`` instantiation :func:`._conv.fold_padding` launches to fold a padded
    gradient of ``padded_shape`` (N, C, *geom.padded_size) onto ``geom.in_size``."""
    dtype = np.dtype(dtype)
    out_shape = (*padded_shape[:2], *geom.in_size)
    padded, out = _shape_only(padded_shape, dtype), _shape_only(out_shape, dtype)
    blocks = _conv._grid_stride_blocks(out.size)
    index = _kernels.index_dtype(
        padded, out, max_index=2 * (padded.size + out.size + THREADS * (blocks + 1)))
    return _conv.FOLD.name_expression(dtype, index, PADDING_MODE_CODES[geom.padding_mode])


def input_grad_steps(backend_name: str, w_shape, go_shape, geom: ConvGeometry,
                     dtype) -> InputGradSteps:
    """What :func:`._conv.conv_input_grad` runs for a weight of ``w_shape``, a
    ``grad_output`` of ``go_shape`` and the (backend) convolution geometry ``geom``, in
    ``dtype``, with the algorithm now forced (raising as the call does when ``"matmul"`` is
    forced and ``geom`` is not pointwise).

    >>> from gpuconv._shapes import conv_geometry
    >>> g = conv_geometry((6,), (3,), stride=1, padding=1, dilation=1, padding_mode="reflect")
    >>> s = input_grad_steps("emulate", (4, 2, 3), (1, 4, 6), g, np.float32)
    >>> s.path, s.geom.out_size, s.after, s.workspace_bytes
    ('transpose+fold', (8,), ('pad_fold<float, int, 1>',), 64)
    """
    dtype = np.dtype(dtype)
    groups = geom.groups
    batch, c_out = int(go_shape[0]), int(go_shape[1])
    og, cg = c_out // groups, int(w_shape[1])
    c_in = cg * groups
    if _conv.input_grad_takes_matmul(geom):  # raises as the call for 'matmul' forced
        positions = math.prod(geom.out_size)
        blas = "cuBLAS (cupy.matmul)" if backend_name == "cuda" else "numpy.matmul"
        text = f"{blas}: ({groups}, {cg}, {og}) @ ({batch}, {groups}, {og}, {positions})"
        workspace, note = 0, None
        if is_bfloat16(dtype):  # the executor's matmul widens both operands
            workspace = 4 * (math.prod(w_shape) + math.prod(go_shape) + batch * c_in * positions)
            note = ("weight, grad_output: bfloat16 -> float32 for the GEMM (exact), its result "
                    "rounded to bfloat16 once")
        return InputGradSteps("matmul", conv_as_transpose(geom, geom.pad_lo, geom.in_size),
                              dtype, workspace_bytes=workspace, note=note,
                              matmul=Description(kernels=(text,)))
    if geom.padding_mode == "zeros" or not (any(geom.pad_lo) or any(geom.pad_hi)):
        return InputGradSteps("transpose", conv_as_transpose(geom, geom.pad_lo, geom.in_size),
                              dtype)
    wide, tf32, note, workspace = dtype, None, None, 0
    if is_bfloat16(dtype):
        wide, tf32 = accumulation_dtype(dtype), True
        note = ("weight, grad_output: bfloat16 -> float32; the padded gradient and its fold run "
                "in float32 (TF32 allowed: bfloat16 is exact in TF32), rounded to bfloat16 once")
        workspace = wide.itemsize * (math.prod(w_shape) + math.prod(go_shape)
                                     + batch * c_in * math.prod(geom.in_size))
    padded_shape = (batch, c_in, *geom.padded_size)
    workspace += wide.itemsize * math.prod(padded_shape)
    return InputGradSteps(
        "transpose+fold", conv_as_transpose(geom, (0,) * geom.ndim, geom.padded_size), wide,
        tf32, (fold_name(padded_shape, geom, wide),), workspace, note)


def transpose_direct(problem: ConvProblem) -> Description:
    """The ``conv_transpose3d`` launch of :func:`._conv_transpose.conv_transpose` for a
    transposed-convolution problem (x (N, C_in, *in), weight (C_in, C_out / groups, *k))."""
    geom, dtype = problem.geom, problem.dtype
    batch, og = problem.x_shape[0], problem.w_shape[1]
    c_out = og * geom.groups
    out_shape = (batch, c_out, *geom.out_size)
    if 0 in out_shape:
        return Description()
    p = _conv_transpose.plan(problem.x_shape, problem.w_shape, geom, dtype.itemsize)
    geom3 = as_3d(geom)
    blocks_y = batch * geom.groups * ceil_div(og, p.cout_per_thread)
    max_index = max(geom3.reach(geom3.in_size), blocks_y + p.grid[1],
                    math.prod(geom3.out_size) + p.threads * (p.grid[0] + 1))
    index = _kernels.index_dtype(_shape_only(problem.x_shape, dtype),
                                 _shape_only(problem.w_shape, dtype),
                                 _shape_only(out_shape, dtype), max_index=max_index)
    name = _conv_transpose.FAMILY.name_expression(dtype, index, p.cout_per_thread,
                                                  p.stage_weights)
    return Description(kernels=(name,), grid=p.grid, block=p.threads, shared_mem=p.shared_mem)


def weight_grad_direct(problem: ConvProblem) -> Description:
    """The launches of :func:`._conv.conv_weight_grad` for a weight-gradient problem (x
    (N, C_in, *in), ``w_shape`` the weight's, ``deterministic`` the call's), as
    :func:`._conv.weight_grad_launch` decides them: the ``conv_weight_grad`` or
    ``depthwise_weight_grad`` instantiation, then ``weight_grad_reduce`` where a workspace is
    summed (deterministic, or a narrower dtype than the accumulator); the workspace is the
    accumulator array when reduced."""
    dtype = problem.dtype
    go_shape = (problem.x_shape[0], problem.w_shape[0], *problem.geom.out_size)
    plan = _conv.weight_grad_launch(_shape_only(problem.x_shape, dtype),
                                    _shape_only(go_shape, dtype), problem.geom,
                                    problem.deterministic)
    if plan.out_elems == 0 or plan.length == 0:
        return Description()
    if plan.reduce is None:  # the atomics' array is the result
        return Description(kernels=(plan.name,), grid=plan.grid, block=plan.block)
    return Description(kernels=(plan.name, plan.reduce), grid=plan.grid, block=plan.block,
                       workspace_bytes=plan.workspace * plan.acc.itemsize)
