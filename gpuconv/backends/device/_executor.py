"""Executors: how a device backend turns (kernel file, name expression) into a launchable
:class:`gpuconv._launch.Kernel`.

* :class:`EmulatorExecutor` compiles the ``.cu`` file with g++ through
  :func:`gpuconv._emulator.load_module` (which caches the shared library on disk, keyed by every
  header the source can include), all of a file's registered instantiations at once.
* :class:`CupyExecutor` compiles with NVRTC through CuPy (``cupy.cuda.compiler``), one
  *compile group* at a time (:func:`gpuconv._kernels.compile_group`: the instantiations of one
  file sharing the element and index type), lazily, on the first use of any member, per device.
  The source is the file's text with every local ``#include`` inlined
  (:func:`gpuconv._kernels.inlined_source`), the options are :func:`cuda_options` (CuPy's
  header search path plus :data:`gpuconv._kernels.NVRTC_OPTIONS`, which keep float32 subnormals:
  ``-ftz=false``). The cubin is cached on disk, keyed by everything that went into it, and
  loaded with ``cupy.RawModule(path=...)``. Each kernel file is read and hashed once
(:func:`kernel_source`), however many compile groups it has.

Both memoize the loaded kernels.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import tempfile
import threading

import numpy as np

from ... import _cache, _kernels
from ..._dtypes import CONV_DTYPES, FLOAT_DTYPES, BFLOAT16, accumulation_dtype, is_bfloat16
from ..._launch import Kernel, launch


class Executor:
    """Loads and launches kernels for one device backend (see subclasses)."""

    name: str
    xp = np
    array_type: type = np.ndarray
    #: The conv-family dtypes its kernels compute (the backend's ``dtypes``): float16/32/64,
    #: and bfloat16 with ml_dtypes.
    dtypes: tuple[np.dtype, ...] = CONV_DTYPES

    def __init__(self):
        self._lock = threading.Lock()
        self._kernels: dict[tuple, Kernel] = {}
        self._modules: dict[tuple, object] = {}

    def _scope(self):
        """What a compiled module is specific to (the device, for CUDA)."""
        return None

    def _module_key(self, file: str, name_expression: str) -> tuple:
        """Which module holds ``name_expression``: ``(file, ...)``; the rest of the key is
        passed to :meth:`_load_module`."""
        return (file,)

    def _load_module(self, file: str, *rest):
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
        module_key = self._module_key(file, name_expression)
        with self._lock:
            module = self._modules.get((scope, *module_key))
            if module is None:
                module = self._load_module(*module_key)
                self._modules[(scope, *module_key)] = module
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
        would accumulate in float16, so the emulator widens the operands). bfloat16 operands
        are widened to float32 (exactly) and the product rounded once, on both.
        """
        if is_bfloat16(a.dtype) or is_bfloat16(b.dtype):
            compute = np.dtype(np.float32)
            wide = self.xp.matmul(a.astype(compute), b.astype(compute))
            return wide.astype(BFLOAT16 if is_bfloat16(a.dtype) and is_bfloat16(b.dtype)
                               else wide.dtype)
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
        dtype = np.result_type(a.dtype, b.dtype)
        compute = accumulation_dtype(dtype)
        if compute != dtype:  # float16: as cuBLAS, float32 accumulation, one rounding
            wide = np.matmul(a.astype(compute), b.astype(compute))
            return wide.astype(dtype, copy=False)
        return np.matmul(a, b)


def _cupy_has_bfloat16(cupy) -> bool:
    """Whether CuPy makes arrays of ``ml_dtypes.bfloat16`` (CuPy 14 and later; earlier
    versions refuse the dtype, and then the ``cuda`` backend refuses bfloat16 calls up front)."""
    if BFLOAT16 is None:
        return False
    try:
        cupy.empty(0, dtype=BFLOAT16)
    except Exception:  # TypeError / ValueError: "Unsupported dtype bfloat16"
        return False
    return True


def cuda_options(cupy) -> tuple[str, ...]:
    """The NVRTC options the CUDA backend compiles with, before CuPy adds the architecture
    (``-arch=sm_XY``), ``--device-as-default-execution-space`` and, for NVRTC >= 12.8,
    ``--pch``.

    CuPy's own header search path (``cupy._core.core.assemble_cupy_compiler_options``, what
    ``cupy.RawModule`` uses: CuPy's headers and the CUDA runtime headers -- ``cuda_fp16.h`` --
    from ``CUDA_PATH`` or the ``nvidia-cuda-runtime`` wheel) around
    :data:`gpuconv._kernels.NVRTC_OPTIONS`. CuPy's ``RawModule`` is not used to compile
    because it appends ``-ftz=true`` after the user's options (NVRTC takes the last one;
    cupy/cupy#9576), which would flush float32 subnormals on the GPU only (docs/kernels.md).
    """
    options = tuple(cupy._core.core.assemble_cupy_compiler_options(_kernels.NVRTC_OPTIONS))
    if any(o in ("-ftz=true", "--ftz=true", "-use_fast_math", "--use_fast_math")
           for o in options):
        raise RuntimeError(f"CuPy's compiler options {options} flush subnormals")
    return options


def _store(directory: pathlib.Path, key: str, cubin: bytes, mapping: dict):
    """Write the cubin, then its name map, each atomically (a concurrent reader, another thread
    or process, sees a whole file or none; :func:`gpuconv._cache.write_atomically`); returns
    their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    binary, mapping_path = directory / f"{key}.cubin", directory / f"{key}.json"
    _cache.write_atomically(binary, cubin, f".{key[:16]}-")
    _cache.write_atomically(mapping_path, json.dumps(mapping).encode(), f".{key[:16]}-")
    return binary, mapping_path


def kernel_source(file: str) -> tuple[str, str]:
    """``(text, sha256)``: what NVRTC compiles for kernel ``file`` (its text with every local
    header inlined, :func:`gpuconv._kernels.inlined_source`, after a ``#line`` that makes
    NVRTC's messages name the file) and its hash.

    Read and hashed once per version of the kernel directory (each file's name, mtime and
    size), not once per compile group; a header edit makes a new version.
    """
    directory = _kernels.kernel_dir()
    version = tuple(sorted((entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                           for entry in directory.iterdir() if entry.is_file()))
    return _read_source(str(directory), file, version)


@functools.lru_cache(maxsize=64)
def _read_source(directory: str, file: str, version: tuple) -> tuple[str, str]:
    # CuPy compiles a nameless program: the #line names the file in NVRTC's messages.
    text = f'#line 1 "{file}"\n' + _kernels.inlined_source(file)
    return text, hashlib.sha256(text.encode()).hexdigest()


class CupyExecutor(Executor):
    """Runs the kernels on the current CUDA device through CuPy (CuPy arrays)."""

    name = "cuda"

    def __init__(self):
        super().__init__()
        import cupy

        self._cupy = cupy
        self.xp = cupy
        self.array_type = cupy.ndarray
        self.dtypes = CONV_DTYPES if _cupy_has_bfloat16(cupy) else FLOAT_DTYPES

    def _scope(self):
        return self._cupy.cuda.runtime.getDevice()

    def _module_key(self, file: str, name_expression: str) -> tuple:
        return (file, _kernels.compile_group(name_expression))

    def _load_module(self, file: str, group):
        """Compile (or fetch from the disk cache) the instantiations of ``file`` in compile
        group ``group`` for the current device; returns ``(RawModule, {name: mangled})``."""
        return self.load_names(file, _kernels.group_name_expressions(file, group))

    def load_names(self, file: str, names) -> tuple:
        """Compile (or fetch from the disk cache) instantiations ``names`` of ``file`` for the
        current device; returns ``(RawModule, {name: mangled})``. The registry's compile
        groups come here, and so do kernels launched outside the registry (the tensor-core
        ``conv_igemm``, :mod:`._conv_algorithms`)."""
        compiler = self._cupy.cuda.compiler
        names = list(names)
        source, source_hash = kernel_source(file)
        options = cuda_options(self._cupy)
        arch = compiler._get_arch()  # the device's compute capability, capped at NVRTC's
        key = hashlib.sha256("\0".join([
            self._cupy.__version__, repr(self._cupy.cuda.nvrtc.getVersion()), str(arch),
            *options, "", *names, "", source_hash,
        ]).encode()).hexdigest()
        directory = _cache.cache_dir("cuda")
        binary, mapping_path = directory / f"{key}.cubin", directory / f"{key}.json"
        mapping = None
        if binary.is_file() and mapping_path.is_file():
            try:
                mapping = json.loads(mapping_path.read_text())
            except ValueError:  # a torn or foreign file: recompile
                mapping = None
            if not isinstance(mapping, dict) or any(n not in mapping for n in names):
                mapping = None
        if mapping is None:
            # cache_in_memory: no temporary .cu file; CompileException carries NVRTC's log.
            cubin, mapping = compiler.compile_using_nvrtc(
                source, options, arch, filename=file, name_expressions=names,
                cache_in_memory=True,
            )
            try:
                binary, mapping_path = _store(directory, key, bytes(cubin), mapping)
            except OSError:  # an unwritable cache: keep this process's cubin in a temp dir
                directory = pathlib.Path(tempfile.mkdtemp(prefix="gpuconv-cuda-"))
                binary, mapping_path = _store(directory, key, bytes(cubin), mapping)
        # RawModule(path=...) loads the cubin per device, lazily (cuModuleLoad).
        return self._cupy.RawModule(path=str(binary)), mapping

    def _make_kernel(self, module, file: str, name_expression: str) -> Kernel:
        raw_module, mapping = module
        function = raw_module.get_function(mapping[name_expression])
        params = _kernels.signature(file, name_expression)
        return Kernel(name_expression, params, function, self._cupy.ndarray)
