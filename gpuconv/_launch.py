"""The one launch helper, used by both device backends (``cuda`` and ``emulate``).

:func:`launch` checks the launch configuration against CUDA's limits, converts every scalar
argument to the exact NumPy scalar type of its kernel parameter (a Python ``int`` would
otherwise reach CuPy as ``long long`` whatever the kernel expects), checks every array
argument's type, dtype, layout and alignment, and only then calls the backend's kernel with
keyword-only ``grid``/``block``. The limits are :mod:`gpuconv._limits`.
"""

from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._dtypes import TYPE_CODES
from ._limits import (MAX_BLOCK_DIM, MAX_DYNAMIC_SHARED_BYTES, MAX_GRID_DIM,
                      MAX_THREADS_PER_BLOCK)


@dataclass(frozen=True)
class Kernel:
    """A loaded kernel instantiation, ready for :func:`launch`.

    Attributes
    ----------
    name : str
        Its name expression, e.g. ``correlate1d<float, int, true>``.
    params : tuple of str
        Parameter type codes (``"const ptr:f32"``, ``"i64"``, ...).
    function : callable
        The backend's kernel: ``function(grid, block, args, shared_mem=...)``
        (``cupy.RawKernel`` or ``gpuconv._emulator.EmuFunction``).
    array_type : type
        The array type pointer arguments must have (``numpy.ndarray`` or ``cupy.ndarray``).
    """

    name: str
    params: tuple[str, ...]
    function: Callable[..., Any]
    array_type: type


def _dims(value, what: str, kernel: Kernel) -> tuple[int, int, int]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(items) <= 3:
        raise ValueError(f"{kernel.name}: {what}={value!r} must be an int or 1 to 3 ints")
    dims = []
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            raise TypeError(f"{kernel.name}: {what}={value!r} must hold ints, not bools")
        try:
            dims.append(operator.index(item))
        except TypeError:
            raise TypeError(f"{kernel.name}: {what}={value!r} must hold ints") from None
    dims += [1] * (3 - len(dims))
    if any(d < 1 for d in dims):
        raise ValueError(f"{kernel.name}: {what}={value!r} must be positive in every dimension")
    return tuple(dims)


def check_config(kernel: Kernel, grid, block, shared_mem: int):
    """Normalise grid/block to 3-tuples and check them (and ``shared_mem``) against CUDA's
    limits. Raises ValueError naming the kernel."""
    grid = _dims(grid, "grid", kernel)
    block = _dims(block, "block", kernel)
    for axis, (g, limit) in enumerate(zip(grid, MAX_GRID_DIM)):
        if g > limit:
            raise ValueError(
                f"{kernel.name}: grid={grid} exceeds the limit {limit} in dimension {axis}"
            )
    for axis, (b, limit) in enumerate(zip(block, MAX_BLOCK_DIM)):
        if b > limit:
            raise ValueError(
                f"{kernel.name}: block={block} exceeds the limit {limit} in dimension {axis}"
            )
    threads = block[0] * block[1] * block[2]
    if threads > MAX_THREADS_PER_BLOCK:
        raise ValueError(
            f"{kernel.name}: block={block} has {threads} threads; at most "
            f"{MAX_THREADS_PER_BLOCK} are allowed"
        )
    if isinstance(shared_mem, (bool, np.bool_)):
        raise TypeError(f"{kernel.name}: shared_mem={shared_mem!r} must be an int")
    shared_mem = operator.index(shared_mem)
    if not 0 <= shared_mem <= MAX_DYNAMIC_SHARED_BYTES:
        raise ValueError(
            f"{kernel.name}: shared_mem={shared_mem} bytes must be in [0, "
            f"{MAX_DYNAMIC_SHARED_BYTES}] (48 KiB without an opt-in)"
        )
    return grid, block, shared_mem


def data_pointer(array) -> int:
    """The address of ``array``'s first element (a NumPy or CuPy array)."""
    if isinstance(array, np.ndarray):
        return array.ctypes.data
    return int(array.data.ptr)  # cupy.ndarray


def _alignment(dtype: np.dtype) -> int:
    # gpuconv::complex<T> is aligned to its size (alignas(2 * sizeof(T))), the rest to their size.
    return dtype.itemsize


def _convert_scalar(kernel: Kernel, position: int, code: str, value):
    dtype = TYPE_CODES[code]
    where = f"{kernel.name}: argument {position} (0-based, parameter type {code})"
    if hasattr(value, "shape") and getattr(value, "ndim", 0) != 0:
        raise TypeError(f"{where} must be a scalar, got {type(value).__name__}")
    if isinstance(value, np.generic) and type(value) is dtype.type:
        return value
    if dtype.kind == "b":
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{where} must be a bool, got {type(value).__name__} {value!r}")
        return dtype.type(value)
    if dtype.kind in "iu":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{where} must be an integer, got {type(value).__name__} {value!r}")
        info = np.iinfo(dtype)
        if not info.min <= int(value) <= info.max:
            raise ValueError(f"{where}: {int(value)} is outside [{info.min}, {info.max}]")
        return dtype.type(int(value))
    if dtype.kind == "f":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{where} must be a real number, got {type(value).__name__} {value!r}")
        return dtype.type(value)
    if dtype.kind == "c":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Complex):
            raise TypeError(f"{where} must be a number, got {type(value).__name__} {value!r}")
        return dtype.type(value)
    raise TypeError(f"{where}: unsupported parameter type")  # pragma: no cover


def _check_array(kernel: Kernel, position: int, code: str, value):
    elem = code.split(":", 1)[1]
    where = f"{kernel.name}: argument {position} (0-based, parameter type {code})"
    if not isinstance(value, kernel.array_type):
        raise TypeError(
            f"{where} must be a {kernel.array_type.__module__}.{kernel.array_type.__name__}, "
            f"got {type(value).__module__}.{type(value).__name__}"
        )
    expected = TYPE_CODES.get(elem)
    if expected is None:
        raise TypeError(f"{where}: unsupported element type {elem!r}")
    if value.dtype != expected:
        raise TypeError(f"{where} must have dtype {expected}, got {value.dtype}")
    if not value.flags.c_contiguous:
        raise ValueError(f"{where} must be C-contiguous")
    if value.size and data_pointer(value) % _alignment(expected):
        raise ValueError(
            f"{where}: data pointer is not aligned to {_alignment(expected)} bytes"
        )
    # (cupy.ndarray's flags have no `writeable`: device arrays are always writable)
    if not code.startswith("const") and not getattr(value.flags, "writeable", True):
        raise ValueError(f"{where} is written by the kernel but the array is read-only")
    return value


def launch(kernel: Kernel, *, grid, block, args, shared_mem: int = 0) -> None:
    """Launch ``kernel`` after checking and converting everything.

    Parameters
    ----------
    kernel : Kernel
        From a device backend's ``get_function``.
    grid, block : int or tuple of 1 to 3 ints (keyword-only)
        Blocks per grid and threads per block.
    args : sequence
        One per kernel parameter: arrays (of ``kernel.array_type``, the parameter's dtype,
        C-contiguous, aligned) for pointers; numbers for scalars, converted to the parameter's
        exact NumPy scalar type (range-checked).
    shared_mem : int
        Dynamic shared memory in bytes (at most 48 KiB).

    Raises
    ------
    TypeError
        Wrong number of arguments, a non-array for a pointer, a wrong dtype, a non-number.
    ValueError
        A launch configuration outside CUDA's limits, a scalar out of its type's range, a
        non-contiguous or misaligned array.
    """
    grid, block, shared_mem = check_config(kernel, grid, block, shared_mem)
    args = tuple(args)
    if len(args) != len(kernel.params):
        raise TypeError(
            f"{kernel.name}: expected {len(kernel.params)} arguments "
            f"({', '.join(kernel.params)}), got {len(args)}"
        )
    converted = []
    for position, (code, value) in enumerate(zip(kernel.params, args)):
        if "ptr:" in code:
            converted.append(_check_array(kernel, position, code, value))
        else:
            converted.append(_convert_scalar(kernel, position, code, value))
    kernel.function(grid, block, tuple(converted), shared_mem=shared_mem)
