"""``convolve`` and ``correlate`` on the device backends (kernels in ``kernels/convolve.cu``).

Both kernels compute a window ``out[i] = full[start + i]`` of the full correlation of ``a``
with taps ``w`` (``w = conj(v)`` for correlate, ``w = v[::-1]`` for convolve); this module picks
the window for the mode exactly as NumPy does, and the kernel and launch configuration.

Dtypes
------
* float32, float64, complex64, complex128: the kernels, accumulating in the input dtype.
* float16: computed by the float32 kernel and rounded to float16 once at the end, as NumPy
  does (its float16 dot product accumulates in float32); only the summation order differs.
* anything else (integers, object): not a kernel dtype. The ``emulate`` backend returns
  ``numpy.convolve`` / ``numpy.correlate``, the ``cuda`` backend ``cupy.convolve`` /
  ``cupy.correlate`` (exact integer arithmetic, as NumPy). bool: the same on int64 copies,
  then ``!= 0`` (NumPy's bool result is an OR of ANDs).

Inputs of different dtypes are cast to ``numpy.result_type(a, v)`` first.
"""

from __future__ import annotations

import numpy as np

from ... import _kernels
from ..._dtypes import accumulation_dtype
from ..._limits import MAX_BLOCKS, THREADS
from ._common import ceil_div, pow2_at_least, prepare

FILE = "convolve.cu"
TILED = _kernels.FAMILIES["correlate1d"]
REDUCE = _kernels.FAMILIES["correlate1d_reduce"]
KERNEL_DTYPES = tuple(np.dtype(d) for d in TILED.dtypes)

#: Threads per block of the tiled kernel (at most; fewer for short outputs).
TILED_THREADS = THREADS
#: Outputs per thread of the tiled kernel: the .cu file's default, read from it.
OUTPUTS_PER_THREAD = _kernels.source_define(FILE, "GPUCONV_CORRELATE1D_OUTPUTS_PER_THREAD")
#: Threads per block of the reduce kernel: between these, about taps / 16 (a power of two).
REDUCE_THREADS = (32, 256)
#: The reduce kernel (one block per output) is used when the filter has at least this many
#: taps and the tiled kernel would launch fewer than REDUCE_BELOW_TILED_BLOCKS blocks -- too
#: few to fill a GPU. Not tuned on hardware yet.
REDUCE_MIN_TAPS = 512
REDUCE_BELOW_TILED_BLOCKS = 64


def output_window(n_a: int, n_v: int, mode: str, *, convolve: bool) -> tuple[int, int]:
    """``(start, n_out)``: which part of the full result NumPy returns for ``mode``.

    The full result has ``n_a + n_v - 1`` entries (full[j] pairs a[j - (n_v - 1) + n] with
    tap n). NumPy swaps the inputs when ``v`` is longer, which moves the "same" window.

    >>> output_window(5, 3, "same", convolve=True)
    (1, 5)
    >>> output_window(4, 2, "same", convolve=False), output_window(2, 4, "same", convolve=False)
    ((0, 4), (1, 4))
    """
    short, long_ = min(n_a, n_v), max(n_a, n_v)
    if mode == "full":
        return 0, n_a + n_v - 1
    if mode == "valid":
        return short - 1, long_ - short + 1
    if mode == "same":
        if convolve:  # numpy.convolve puts the longer sequence first, then correlates
            return (short - 1) - short // 2, long_
        # numpy.correlate keeps (a, v) when n_a >= n_v; else it swaps, and reverses the result
        return ((n_v - 1) - n_v // 2 if n_a >= n_v else n_a // 2), long_
    raise ValueError(f"mode={mode!r} must be 'valid', 'same' or 'full'")


def choose_method(n_out: int, n_taps: int) -> str:
    """``"tiled"`` or ``"reduce"`` for ``n_out`` outputs of a ``n_taps``-tap filter."""
    tiled_blocks = ceil_div(n_out, TILED_THREADS * OUTPUTS_PER_THREAD)
    if n_taps >= REDUCE_MIN_TAPS and tiled_blocks < REDUCE_BELOW_TILED_BLOCKS:
        return "reduce"
    return "tiled"


def correlate(backend, a, v, mode: str, *, convolve: bool, method: str | None = None):
    """``numpy.correlate(a, v, mode)`` (``convolve=False``) or ``numpy.convolve(a, v, mode)``.

    Parameters
    ----------
    backend : DeviceBackend
    a, v : 1-D non-empty arrays of ``backend.xp``
    mode : {"full", "same", "valid"}
    convolve : bool
    method : {None, "tiled", "reduce"}
        Force a kernel (tests); None chooses with :func:`choose_method`.
    """
    xp = backend.xp
    if a.ndim != 1 or v.ndim != 1 or a.size == 0 or v.size == 0:
        raise ValueError(
            f"a and v must be 1-D and non-empty, got shapes {tuple(a.shape)}, {tuple(v.shape)}"
        )
    if method not in (None, "tiled", "reduce"):
        raise ValueError(f"method={method!r} must be None, 'tiled' or 'reduce'")
    dtype = np.result_type(a.dtype, v.dtype)
    compute = accumulation_dtype(dtype)
    if compute != dtype:  # float16: the float32 kernel, one rounding at the end
        result = correlate(backend, a.astype(compute), v.astype(compute), mode,
                           convolve=convolve, method=method)
        return result.astype(dtype)
    if dtype not in KERNEL_DTYPES:
        func = xp.convolve if convolve else xp.correlate
        if dtype == np.bool_:  # OR of ANDs; counted in int64 (CuPy's convolve takes no bool)
            return func(a.astype(np.int64), v.astype(np.int64), mode) != 0
        return func(a, v, mode)

    a = prepare(xp, a, dtype)
    v = prepare(xp, v, dtype)
    start, n_out = output_window(a.size, v.size, mode, convolve=convolve)
    # The kernels loop over the taps of their second sequence: make that the shorter one.
    # The full convolution is symmetric; the full correlation of (a, v) is the full
    # convolution of (conj(v[::-1]), a).
    if v.size > a.size:
        if convolve:
            a, v = v, a
        else:
            a, v = prepare(xp, xp.conj(v[::-1]), dtype), a
            convolve = True
    out = xp.empty(n_out, dtype=dtype)
    _launch_window(backend, a, v, out, start, convolve=convolve,
                   method=method or choose_method(n_out, v.size))
    return out


def _launch_window(backend, a, v, out, start: int, *, convolve: bool, method: str):
    """Launch one kernel computing ``out[i] = full[start + i]`` (see ``kernels/convolve.cu``)."""
    n_a, n_v, n_out = a.size, v.size, out.size
    itemsize = out.dtype.itemsize
    if method == "tiled":
        # Whole warps, no more than the outputs need.
        threads = min(TILED_THREADS, 32 * ceil_div(ceil_div(n_out, OUTPUTS_PER_THREAD), 32))
        tile = threads * OUTPUTS_PER_THREAD
        chunk = min(n_v, threads)
        index = _kernels.index_dtype(a, v, out, max_index=2 * (n_a + n_v) + n_v + 2 * tile)
        name = TILED.name_expression(out.dtype, index, convolve)
        kernel = backend.executor.get_function(FILE, name)
        backend.executor.launch(
            kernel,
            grid=ceil_div(n_out, tile),
            block=threads,
            args=(a, n_a, v, n_v, out, n_out, start, chunk),
            shared_mem=(chunk + tile + chunk - 1) * itemsize,
        )
    else:
        low, high = REDUCE_THREADS
        threads = min(high, max(low, pow2_at_least(ceil_div(n_v, 16))))
        blocks = min(n_out, MAX_BLOCKS)  # the grid-stride loop covers the rest
        index = _kernels.index_dtype(a, v, out, max_index=2 * (n_a + n_v) + blocks + threads)
        name = REDUCE.name_expression(out.dtype, index, convolve)
        kernel = backend.executor.get_function(FILE, name)
        backend.executor.launch(
            kernel,
            grid=blocks,
            block=threads,
            args=(a, n_a, v, n_v, out, n_out, start),
            shared_mem=threads * itemsize,  # acc_t<T> is T for every kernel dtype
        )
