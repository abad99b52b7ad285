"""Executors: how a device backend turns (kernel file, name expression) into a launchable
:class:`gpuconv._launch.Kernel`.

* :class:`EmulatorExecutor` compiles the ``.cu`` file with g++ through
  :func:`gpuconv._emulator.load_module` (which caches the shared library on disk, keyed by every
  header the source can include).
* :class:`CupyExecutor` builds a ``cupy.RawModule`` per (device, file), lazily, from the file's
  text with every local ``#include`` inlined (:func:`gpuconv._kernels.inlined_source`), so
  CuPy's compile cache -- keyed by source text and options, not by headers -- can never serve
  a kernel built from an old ``common.cuh``.

Both compile all of a file's registered instantiations at once
(:func:`gpuconv._kernels.name_expressions`) and memoize the loaded kernels.
"""

from __future__ import annotations

import threading

import numpy as np

from ... import _kernels
from ..._launch import Kernel, launch


class Executor:
    """Loads and launches kernels for one device backend (see subclasses)."""

    name: str
    xp = np
    array_type: type = np.ndarray

    def __init__(self):
        self._lock = threading.Lock()
        self._kernels: dict[tuple, Kernel] = {}
        self._modules: dict[tuple, object] = {}

    def _scope(self):
        """What a compiled module is specific to (the device, for CUDA)."""
        return None

    def _load_module(self, file: str):
        raise NotImplementedError

    def _make_kernel(self, module, file: str, name_expression: str) -> Kernel:
        raise NotImplementedError

    def get_function(self, file: str, name_expression: str) -> Kernel:
        """The kernel ``name_expression`` (a registered instantiation) from source ``file``."""
        scope = self._scope()
        key = (scope, file, name_expression)
        kernel = self._kernels.get(key)
        if kernel is not None:
            return kernel
        if name_expression not in _kernels.name_expressions(file):
            raise LookupError(
                f"{name_expression!r} is not a registered instantiation of {file}; "
                f"see gpuconv._kernels.FAMILIES"
            )
        with self._lock:
            module = self._modules.get((scope, file))
            if module is None:
                module = self._load_module(file)
                self._modules[(scope, file)] = module
            kernel = self._make_kernel(module, file, name_expression)
            self._kernels[key] = kernel
        return kernel

    def launch(self, kernel: Kernel, *, grid, block, args, shared_mem: int = 0) -> None:
        """:func:`gpuconv._launch.launch` (the same checks for every backend)."""
        launch(kernel, grid=grid, block=block, args=args, shared_mem=shared_mem)

    def matmul(self, a, b):
        """``numpy.matmul(a, b)`` (batched over leading dims) with the backend's BLAS:
        ``cupy.matmul`` (cuBLAS) on the GPU, ``numpy.matmul`` on the emulator.

        float16 products accumulate in float32 and are rounded to float16 once, on both
        (cuBLAS computes float16 GEMMs with CUBLAS_COMPUTE_32F; NumPy's own float16 matmul
        would accumulate in float16, so the emulator widens the operands).
        """
        return self.xp.matmul(a, b)


class EmulatorExecutor(Executor):
    """Runs the kernels on the CPU emulator (NumPy arrays)."""

    name = "emulate"

    def _load_module(self, file: str):
        from ... import _emulator

        return _emulator.load_module(
            _kernels.source_path(file),
            _kernels.name_expressions(file),
            include_dirs=[_kernels.kernel_dir()],
        )

    def _make_kernel(self, module, file: str, name_expression: str) -> Kernel:
        function = module.get_function(name_expression)
        return Kernel(name_expression, tuple(function.params), function, np.ndarray)

    def matmul(self, a, b):
        if a.dtype == np.float16 or b.dtype == np.float16:
            dtype = np.result_type(a.dtype, b.dtype)
            wide = np.matmul(a.astype(np.float32), b.astype(np.float32))
            return wide.astype(dtype, copy=False)
        return np.matmul(a, b)


class CupyExecutor(Executor):
    """Runs the kernels on the current CUDA device through CuPy (CuPy arrays)."""

    name = "cuda"

    def __init__(self):
        super().__init__()
        import cupy

        self._cupy = cupy
        self.xp = cupy
        self.array_type = cupy.ndarray

    def _scope(self):
        return self._cupy.cuda.Device().id

    def _load_module(self, file: str):
        # RawModule compiles lazily, on the first get_function.
        return self._cupy.RawModule(
            code=_kernels.inlined_source(file),
            options=_kernels.NVRTC_OPTIONS,
            name_expressions=_kernels.name_expressions(file),
        )

    def _make_kernel(self, module, file: str, name_expression: str) -> Kernel:
        function = module.get_function(name_expression)
        params = _kernels.signature(file, name_expression)
        return Kernel(name_expression, params, function, self._cupy.ndarray)
