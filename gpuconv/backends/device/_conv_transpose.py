"""``conv_transpose`` (1-D/2-D/3-D) and its gradients on the device backends: kernel
``conv_transpose3d`` in ``kernels/conv_transpose.cu``.

The kernel gathers: one thread per output position (and ``CoutPerThread`` output channels)
sums exactly the (input position, tap) pairs that land on it, so no atomics and no scatter
buffer are needed and results are deterministic. 1-D and 2-D calls run the 3-D kernel with
leading spatial dims of size 1.

Launch plan (:func:`plan`), per call:

* ``cout_per_thread`` (the kernel's ``CoutPerThread``): 4 when every block of 4 output
  channels of a group is (nearly) full -- ``C_out / groups`` divisible by 4 or at least 8 --
  else 1 (e.g. depthwise-style ``groups == C_in`` with one output channel per group).
* ``stage_weights``: the weights of ``chunk`` input channels (all taps, the block's output
  channels) are staged in shared memory, ``chunk`` as large as :data:`SHARED_BUDGET_BYTES`
  allows; if not even one channel fits (huge kernels), weights are read through ``__ldg``.
* block: :data:`THREADS` threads (fewer, in whole warps, for small outputs); grid x covers the
  output positions, grid y the (image, group, output-channel block) triples, both capped at
  CUDA's limits (the kernel loops over the rest).

Gradients: a transposed convolution's adjoint is the convolution it transposes
(:func:`gpuconv._shapes.transpose_as_conv`), so the input gradient is ``backend.conv`` of
``grad_output`` with the same weight, and the weight gradient is ``conv_weight_grad``
(:mod:`._conv`) with the roles of ``x`` and ``grad_output`` exchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ... import _kernels
from ..._limits import MAX_DYNAMIC_SHARED_BYTES, MAX_GRID_X, MAX_GRID_Y, THREADS
from ..._shapes import ConvGeometry, as_3d, transpose_as_conv
from ._common import ceil_div
from ._conv import conv_weight_grad

FILE = "conv_transpose.cu"
FAMILY = _kernels.FAMILIES["conv_transpose3d"]

#: Shared memory for staged weights per block. 12 KiB keeps four 256-thread blocks resident
#: per SM even on sm_75 (64 KiB of shared memory per SM). Not tuned on hardware yet.
SHARED_BUDGET_BYTES = 12 * 1024


@dataclass(frozen=True)
class Plan:
    """A launch of ``conv_transpose3d`` (see the module docstring)."""

    cout_per_thread: int
    stage_weights: bool
    chunk: int
    threads: int
    grid: tuple[int, int]
    shared_mem: int


def plan(x_shape, weight_shape, geom: ConvGeometry, itemsize: int, *,
         cout_per_thread: int | None = None, stage_weights: bool | None = None,
         chunk: int | None = None, threads: int | None = None,
         max_grid: tuple[int, int] | None = None) -> Plan:
    """The launch plan for ``conv_transpose`` of ``x_shape`` with ``weight_shape``.

    The keyword arguments force a choice (tests use them to reach every instantiation and,
    with a small ``max_grid``, the kernel's grid-stride loops); None picks as the module
    docstring says.

    >>> from gpuconv._shapes import conv_transpose_geometry
    >>> geom = conv_transpose_geometry((8, 8), (4, 4), stride=2, padding=1, output_padding=0,
    ...                             dilation=1)
    >>> p = plan((2, 64, 8, 8), (64, 32, 4, 4), geom, 4)
    >>> p.cout_per_thread, p.stage_weights, p.chunk, p.threads, p.grid
    (4, True, 48, 256, (1, 16))
    """
    batch, c_in = x_shape[:2]
    groups = geom.groups
    cg = c_in // groups
    og = weight_shape[1]
    taps = math.prod(geom.kernel)
    out_plane = math.prod(geom.out_size)
    if cout_per_thread is None:
        cout_per_thread = 4 if (og % 4 == 0 or og >= 8) else 1
    if cout_per_thread not in (1, 4):
        raise ValueError(f"cout_per_thread={cout_per_thread} must be 1 or 4")
    per_channel = taps * cout_per_thread * itemsize  # shared bytes for one input channel
    fits = max(0, min(cg, SHARED_BUDGET_BYTES // per_channel))
    if stage_weights is None:
        stage_weights = fits >= 1
    if stage_weights:
        if chunk is None:
            chunk = max(1, fits)
        if chunk < 1 or chunk * per_channel > MAX_DYNAMIC_SHARED_BYTES:
            raise ValueError(
                f"chunk={chunk} input channels of {per_channel} bytes each do not fit in "
                f"{MAX_DYNAMIC_SHARED_BYTES} bytes of shared memory"
            )
    else:
        chunk = 1  # unused by the kernel
    if threads is None:
        threads = min(THREADS, 32 * ceil_div(out_plane, 32))
    co_blocks = ceil_div(og, cout_per_thread)
    limit_x, limit_y = max_grid or (MAX_GRID_X, MAX_GRID_Y)
    grid = (
        max(1, min(ceil_div(out_plane, threads), limit_x, MAX_GRID_X)),
        max(1, min(batch * groups * co_blocks, limit_y, MAX_GRID_Y)),
    )
    shared_mem = chunk * per_channel if stage_weights else 0
    return Plan(cout_per_thread, bool(stage_weights), int(chunk), int(threads), grid, shared_mem)


def conv_transpose(backend, x, weight, bias, geom: ConvGeometry, *, index=None, **forced):
    """Transposed convolution: ``x`` (N, C_in, *in) and ``weight`` (C_in, C_out / groups, *k)
    to (N, C_out, *geom.out_size), plus ``bias`` (C_out,) or None.

    Parameters
    ----------
    backend : DeviceBackend
    x, weight, bias : arrays of ``backend.xp`` (C-contiguous, one float dtype)
    geom : ConvGeometry
        From :func:`gpuconv._shapes.conv_transpose_geometry` (1 to 3 spatial dims).
    index : dtype, optional
        Force the kernel's index type (tests: the int64 instantiations); None chooses by extent
        with :func:`gpuconv._kernels.index_dtype`.
    **forced
        ``cout_per_thread``, ``stage_weights``, ``chunk``, ``threads``, ``max_grid``: see
        :func:`plan`.
    """
    xp = backend.xp
    dtype = np.dtype(x.dtype)
    FAMILY.check_dtype(dtype, "conv_transpose")
    nd = geom.ndim
    if not 1 <= nd <= 3:
        raise ValueError(f"conv_transpose: {nd} spatial dims; the kernel handles 1 to 3")
    batch, c_in = x.shape[:2]
    og = weight.shape[1]
    c_out = og * geom.groups
    out = xp.empty((batch, c_out, *geom.out_size), dtype=dtype)
    if out.size == 0:
        return out
    if bias is None:
        bias = xp.zeros(c_out, dtype=dtype)
    p = plan(x.shape, weight.shape, geom, dtype.itemsize, **forced)

    geom3 = as_3d(geom)  # pad_lo is the crop

    if index is None:
        # Besides array offsets the kernel forms full-output positions (o + crop), the
        # flattened (image, group, channel block) index and tile * blockDim.x.
        blocks_y = batch * geom.groups * ceil_div(og, p.cout_per_thread)
        max_index = max(geom3.reach(geom3.in_size), blocks_y + p.grid[1],
                        math.prod(geom3.out_size) + p.threads * (p.grid[0] + 1))
        index = _kernels.index_dtype(x, weight, out, max_index=max_index)
    name = FAMILY.name_expression(dtype, index, p.cout_per_thread, p.stage_weights)
    function = backend.executor.get_function(FILE, name)
    backend.executor.launch(
        function,
        grid=p.grid,
        block=p.threads,
        args=(x, weight, bias, out, batch, c_in, c_out, geom.groups, *geom3.args(),
              *geom3.tap_step(), p.chunk),
        shared_mem=p.shared_mem,
    )
    return out


# ----------------------------------------------------------------------------- gradients


def conv_transpose_input_grad(backend, weight, grad_output, geom: ConvGeometry):
    """Gradient of ``conv_transpose(x, weight)`` with respect to ``x``: the convolution of
    ``grad_output`` with ``weight`` (C_in, C_out / groups, *k) in the conv geometry that
    ``geom`` transposes."""
    return backend.conv(grad_output, weight, None, transpose_as_conv(geom))


def conv_transpose_weight_grad(backend, x, grad_output, geom: ConvGeometry,
                               deterministic: bool = False, **hooks):
    """Gradient of ``conv_transpose(x, weight)`` with respect to ``weight`` (C_in, C_out /
    groups, *k): the weight gradient of the convolution that ``geom`` transposes, applied to
    ``grad_output`` as its input and ``x`` as its output gradient."""
    return conv_weight_grad(backend, grad_output, x, transpose_as_conv(geom), deterministic,
                            **hooks)
