"""The one dispatch point: which backend runs a call, chosen from the arrays and the context.

* CuPy arrays always run on the ``"cuda"`` backend and come back as CuPy arrays.
* NumPy arrays run on the backend named by :func:`use_backend` (innermost wins), else by the
  environment variable ``GPUCONV_BACKEND``, else ``"numpy"``. With ``"emulate"`` the CUDA
  kernels run on the CPU emulator; with ``"cuda"`` the arrays are copied to the current GPU,
  and the result is copied back, so NumPy in still gives NumPy out.
* Mixing NumPy and CuPy arrays in one call is a ``TypeError``.

CuPy is recognised without importing it (as ``array_api_compat.is_cupy_array`` does), so
gpuconv imports and runs on machines without CuPy.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .backends._contract import Array, Backend

BACKENDS = ("numpy", "emulate", "cuda")

_selected: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpuconv_backend", default=None)
_instances: dict[str, Backend] = {}


def _check_name(name: Any, op: str = "use_backend") -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        shown = repr(name) if isinstance(name, (str, type(None))) else type(name).__name__
        raise ValueError(f"{op}: name={shown[:60]} must be one of {BACKENDS}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run gpuconv calls on NumPy arrays with backend ``name`` inside a ``with`` block.

    Parameters
    ----------
    name : {"numpy", "emulate", "cuda"}
        ``"numpy"``: the vectorised NumPy reference. ``"emulate"``: gpuconv's CUDA kernels
        run on the CPU emulator (needs g++). ``"cuda"``: the kernels on the current GPU
        (needs CuPy and a device); NumPy inputs are copied over and the result copied back.

    Raises
    ------
    ValueError
        If ``name`` is not a known backend.

    Examples
    --------
    >>> import numpy as np, gpuconv
    >>> with gpuconv.use_backend("numpy"):
    ...     gpuconv.convolve(np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    array([1., 3., 2.])
    """
    token = _selected.set(_check_name(name))
    try:
        yield name
    finally:
        _selected.reset(token)


def current_backend() -> str:
    """The backend name that NumPy inputs would run on now."""
    name = _selected.get()
    if name is not None:
        return name
    env = os.environ.get("GPUCONV_BACKEND")
    if env:
        if env not in BACKENDS:
            raise ValueError(f"GPUCONV_BACKEND={env!r} must be one of {BACKENDS}")
        return env
    return "numpy"


def is_cupy_array(x: Any) -> bool:
    """True for a ``cupy.ndarray`` (checked without importing CuPy)."""
    if "cupy" not in sys.modules:
        return False
    import cupy

    return isinstance(x, cupy.ndarray)


def get_backend(name: str) -> Backend:
    """The backend object for ``name``, created on first use (it satisfies the contract
    :class:`gpuconv.backends._contract.Backend`)."""
    backend = _instances.get(_check_name(name))
    if backend is None:
        if name == "numpy":
            from .backends.numpy_backend import NumpyBackend

            backend = NumpyBackend()
        else:
            from .backends import device

            backend = device.make_backend(name)
        _instances[name] = backend
    return backend


def available_backends() -> dict[str, str]:
    """Map each backend name to ``"available"`` or the reason it is not."""
    report = {"numpy": "available"}
    for name in ("emulate", "cuda"):
        try:
            from .backends import device

            reason = device.unavailable_reason(name)
        except Exception as exc:  # a broken optional backend must not break the report
            reason = f"{type(exc).__name__}: {exc}"
        report[name] = reason or "available"
    return report


class Call:
    """Where one call runs: the backend, and how arrays travel to it and back.

    ``to_backend`` converts a validated input array into the backend's array type;
    ``from_backend`` converts the backend's result into the caller's array type.
    """

    def __init__(self, arrays: Sequence[Any], *, op: str):
        cupy_flags = [is_cupy_array(a) for a in arrays if a is not None]
        if any(cupy_flags) and not all(cupy_flags):
            kinds = ", ".join(
                f"{type(a).__module__}.{type(a).__name__}" for a in arrays if a is not None
            )
            raise TypeError(
                f"{op}: all array arguments must be NumPy arrays or all CuPy arrays, got {kinds}"
            )
        self.on_device_arrays = bool(cupy_flags) and all(cupy_flags)
        self.name = "cuda" if self.on_device_arrays else current_backend()
        self.backend: Backend = get_backend(self.name)
        self.xp = self.backend.xp
        self._copy_back = self.name == "cuda" and not self.on_device_arrays

    def to_backend(self, array: Array | None) -> Array | None:
        """``array`` as the backend's array type (a NumPy array copied to the GPU for
        ``"cuda"``); None stays None."""
        if array is None or not self._copy_back:
            return array
        return self.xp.asarray(array)

    def from_backend(self, array: Array) -> Array:
        """The backend's result ``array`` as the caller's array type (copied back to NumPy
        when NumPy inputs ran on ``"cuda"``)."""
        if self._copy_back:
            return self.xp.asnumpy(array)
        return array


def caller_xp(arrays: Iterable[Any]) -> ModuleType:
    """``cupy`` if the arrays are CuPy arrays, else ``numpy`` (for validation helpers)."""
    for a in arrays:
        if is_cupy_array(a):
            import cupy

            return cupy
    return np
