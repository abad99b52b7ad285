"""CPU emulator for gpuconv's CUDA kernels.

The same ``kernels/*.cu`` files that CuPy compiles for the GPU are compiled here with g++ and a
CUDA shim header (``cuda_shim.h``), and each launch runs on the CPU with the grid, block, dynamic
shared memory and arguments the CUDA backend would use. The threads of a block are user-level
fibers; a scheduler switches between them only at ``__syncthreads()``, so barriers really
synchronize; blocks are spread over a pool of OS threads.

Modes (read at every call):

* default: arguments are checked strictly, then the launch runs in-process.
* checked (``GPUCONV_EMULATE_CHECK=1`` or ``with checked():``): the launch runs in a subprocess
  on copies of the arrays placed against guard pages; an out-of-bounds access raises
  :class:`OutOfBoundsError` naming the parameter and byte offset. Results are copied back.
* race check (``GPUCONV_EMULATE_RACECHECK=1`` or ``with race_check():``): the launch runs three
  times (threads and blocks in forward, reverse and shuffled order, shared memory filled with
  0xFF bytes) and the outputs must agree, else :class:`RaceError`. The first run uses the
  module's track build (``_track.py``), which also raises :class:`RaceError` for a lost update
  (another block's write to the same element, not all of them atomic) and for a read of an
  element that another block writes in the same launch.
* counters (``with counters() as c:``): each launch runs once on the track build and counts
  global sectors per request, shared-memory wavefronts (bank conflicts) and the bytes of
  ``cp.async`` and ``ldmatrix``, per kernel and access site (``_track.py``).

Examples
--------
>>> import numpy as np, pathlib, gpuconv._emulator as emu
>>> src = pathlib.Path(emu.__file__).parent / "bench.cu"
>>> mod = emu.load_module(src, ["fill_index<float>"])
>>> out = np.zeros(10, np.float32)
>>> mod.get_function("fill_index<float>")((1,), (32,), (out, np.int64(out.size)))
>>> out.tolist()
[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence

import numpy as np

from . import _abi, _build, _track
from ._abi import ELEM_DTYPES, split_code
from ._track import Counters, KernelCounters, SiteCounters, counters
from ._errors import (
    DivergentBarrierError,
    EmulatorCompileError,
    EmulatorError,
    OutOfBoundsError,
    RaceError,
)

__all__ = [
    "DivergentBarrierError",
    "EmuFunction",
    "EmuModule",
    "EmulatorCompileError",
    "EmulatorError",
    "OutOfBoundsError",
    "RaceError",
    "available",
    "checked",
    "Counters",
    "counters",
    "KernelCounters",
    "load_module",
    "race_check",
    "reset_stats",
    "SiteCounters",
    "stats",
    "unavailable_reason",
]

#: CUDA launch limits the emulator enforces (those of every GPU since compute capability 3.0)
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
DEFAULT_MAX_DYNAMIC_SHARED = 48 * 1024
#: the largest opt-in dynamic shared memory of any current GPU (H100: 227 KiB)
OPT_IN_MAX_DYNAMIC_SHARED = 227 * 1024

#: race check: relative tolerance by element type when a launch used floating-point atomicAdd
RACE_RTOL = {"f16": 1e-3, "f32": 1e-5, "c64": 1e-5, "f64": 1e-12, "c128": 1e-12}
_RACE_SEED = 0x5EED_CAFE_F00D_1234

_mode_lock = threading.Lock()
_mode_depth = {"check": 0, "race": 0}
_stats_lock = threading.Lock()
_stats = {}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _checked_on() -> bool:
    return _mode_depth["check"] > 0 or _env_flag("GPUCONV_EMULATE_CHECK")


def _race_on() -> bool:
    return _mode_depth["race"] > 0 or _env_flag("GPUCONV_EMULATE_RACECHECK")


@contextlib.contextmanager
def _mode(which: str):
    with _mode_lock:
        _mode_depth[which] += 1
    try:
        yield
    finally:
        with _mode_lock:
            _mode_depth[which] -= 1


def checked():
    """Context manager: run every launch inside the block in checked mode.

    Same as ``GPUCONV_EMULATE_CHECK=1``. The flag is process-wide (not per thread).
    """
    return _mode("check")


def race_check():
    """Context manager: race-check every launch inside the block.

    Same as ``GPUCONV_EMULATE_RACECHECK=1``. The flag is process-wide (not per thread).
    """
    return _mode("race")


def _worker_threads() -> int:
    value = os.environ.get("GPUCONV_EMULATE_THREADS", "").strip()
    if not value:
        return 0
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"GPUCONV_EMULATE_THREADS={value!r} must be a positive integer") from None
    if n < 1:
        raise ValueError(f"GPUCONV_EMULATE_THREADS={value!r} must be a positive integer")
    return n


def stats() -> dict:
    """Cumulative counters of this process's emulated launches.

    Returns
    -------
    dict
        ``launches``, ``blocks``, ``threads`` (CUDA threads run), ``barriers`` (block-wide
        barrier releases), ``fiber_switches``, ``float_atomics`` (floating-point atomicAdd
        calls), ``seconds`` (wall time inside the runtime), ``seconds_per_barrier`` (seconds /
        barriers; only meaningful for barrier-bound benchmark launches), ``fiber_impl``.
    """
    with _stats_lock:
        out = dict(_stats)
    for key in ("launches", "blocks", "threads", "barriers", "fiber_switches", "float_atomics"):
        out.setdefault(key, 0)
    out.setdefault("seconds", 0.0)
    out["seconds_per_barrier"] = out["seconds"] / out["barriers"] if out["barriers"] else None
    return out


def reset_stats() -> None:
    """Zero the counters returned by :func:`stats`."""
    with _stats_lock:
        _stats.clear()


def _record_stats(s: dict, fiber_impl: str) -> None:
    with _stats_lock:
        _stats["launches"] = _stats.get("launches", 0) + 1
        _stats["blocks"] = _stats.get("blocks", 0) + s["blocks"]
        _stats["threads"] = _stats.get("threads", 0) + s["blocks"] * s["threads_per_block"]
        _stats["barriers"] = _stats.get("barriers", 0) + s["barriers"]
        _stats["fiber_switches"] = _stats.get("fiber_switches", 0) + s["fiber_switches"]
        _stats["float_atomics"] = _stats.get("float_atomics", 0) + s["float_atomics"]
        _stats["seconds"] = _stats.get("seconds", 0.0) + s["elapsed_ns"] * 1e-9
        _stats["fiber_impl"] = fiber_impl


def available() -> bool:
    """True if the C++ compiler (``$GPUCONV_EMULATE_CXX`` or ``g++``) can be run."""
    return _build.compiler_identity(_build.compiler()) is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (naming the compiler tried and the variable that chose
    it), or None if the compiler can be run."""
    return _build.unavailable_reason()


_modules: dict[tuple[str, str], EmuModule] = {}
_modules_lock = threading.Lock()


def load_module(
    source: str | os.PathLike,
    name_expressions: Sequence[str],
    include_dirs: Sequence[str | os.PathLike] = (),
) -> EmuModule:
    """Compile a ``.cu`` file for the emulator (or fetch it from the caches).

    Parameters
    ----------
    source : str or os.PathLike
        The kernel file. It is compiled by its real path, so g++'s diagnostics point into it.
    name_expressions : sequence of str
        The instantiations to build, e.g. ``["correlate1d<float>",
        "correlate1d<gpuconv::complex<double>>"]`` (as for ``cupy.RawModule``).
    include_dirs : sequence of path-like, optional
        Extra ``-I`` directories. The source's own directory and the shim's are always searched.

    Returns
    -------
    EmuModule

    Raises
    ------
    EmulatorCompileError
        g++ failed; the message carries its stderr (``file.cu:line: error: ...``).
    FileNotFoundError, TypeError, ValueError
        Bad ``source`` or ``name_expressions``.
    """
    artifact = _build.build(source, name_expressions, include_dirs)
    cache_key = (str(pathlib.Path(os.fspath(source)).resolve()), artifact.key)
    with _modules_lock:
        module = _modules.get(cache_key)
        if module is None or module._artifact != artifact:
            module = EmuModule(artifact.path, str(cache_key[0]), artifact)
            # what the track build (_track.py) compiles, when race_check/counters need it
            module._build_args = (cache_key[0], tuple(name_expressions),
                                  tuple(os.path.abspath(os.fspath(d)) for d in include_dirs))
            _modules[cache_key] = module
    return module


def _interruptible(launch):
    """``launch(cancel)``, made interruptible when called from the main thread.

    The launch runs in a helper thread (ctypes releases the GIL), and the main thread waits in
    short slices, so Python's SIGINT handler runs within ~50 ms. On KeyboardInterrupt (or any
    exception the wait raises) the cancel flag is set: the runtime starts no new CUDA thread,
    the blocks in flight are abandoned, and the exception propagates once the launch has
    returned, so the arrays are no longer in use and the next launch works as usual. Other
    threads never receive KeyboardInterrupt; there the launch runs directly.
    """
    if threading.current_thread() is not threading.main_thread():
        return launch(None)
    cancel = ctypes.c_int(0)
    done = threading.Event()
    outcome = {}

    def target():
        try:
            outcome["value"] = launch(cancel)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            outcome["error"] = exc
        finally:
            done.set()

    helper = threading.Thread(target=target, name="gpuconv-emulate-launch", daemon=True)
    # SIGINT is blocked while the helper starts: a KeyboardInterrupt inside Thread.start()
    # would leave a launch running on arrays the caller is about to drop. The helper (and the
    # runtime's worker threads) inherit the blocked mask, so SIGINT always reaches this thread.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    started = False
    try:
        helper.start()
        started = True
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        while not done.wait(0.05):
            pass
    except BaseException:
        cancel.value = 1
        if started or helper.is_alive():
            while True:  # a second Ctrl-C must not leave the launch running: it stops soon
                try:
                    if done.wait(0.05):
                        break
                except BaseException:  # noqa: BLE001, S112
                    continue
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class EmuModule:
    """A compiled kernel module: one entry per name expression.

    Use :func:`load_module` to create one.
    """

    def __init__(self, library_path: str, source: str, artifact=None):
        self.library_path = library_path
        self.source = source
        #: the verified cache entry (size and sha256 for the checked-mode subprocess)
        self._artifact = artifact
        self._lib = _abi.Library(library_path)
        self._functions: dict[str, EmuFunction] = {}
        self._by_name = {}
        for index, (name, _params, _aligns) in enumerate(self._lib.entries):
            self._by_name[name] = index

    @property
    def name_expressions(self) -> tuple[str, ...]:
        """The instantiated name expressions, as given to :func:`load_module`."""
        return tuple(self._by_name)

    def get_function(self, name_expression: str) -> EmuFunction:
        """The kernel instantiated for ``name_expression``.

        Raises
        ------
        KeyError
            If ``name_expression`` was not among the module's name expressions.
        """
        fn = self._functions.get(name_expression)
        if fn is not None:
            return fn
        index = self._by_name.get(name_expression)
        if index is None:  # tolerate whitespace differences: "f<a, b>" vs "f<a,b>"
            squeezed = "".join(name_expression.split())
            for name, i in self._by_name.items():
                if "".join(name.split()) == squeezed:
                    index = i
        if index is None:
            raise KeyError(
                f"name expression {name_expression!r} was not instantiated in the emulator "
                f"module for {self.source}; instantiated: {list(self._by_name)}"
            )
        _, params, aligns = self._lib.entries[index]
        fn = EmuFunction(self, index, name_expression, params, aligns)
        self._functions[name_expression] = fn
        return fn

    def __repr__(self):
        return f"<EmuModule {self.source} {list(self._by_name)}>"


def _dim3(value, what: str, kernel: str) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        dims = (int(value),)
    elif isinstance(value, tuple) and 1 <= len(value) <= 3:
        dims = value
    else:
        raise TypeError(
            f"kernel {kernel}: {what}={value!r} must be an int or a tuple of 1 to 3 ints"
        )
    out = []
    for d in dims:
        if not isinstance(d, (int, np.integer)) or isinstance(d, (bool, np.bool_)):
            raise TypeError(
                f"kernel {kernel}: {what}={value!r} must be an int or a tuple of 1 to 3 ints"
            )
        out.append(int(d))
    out += [1] * (3 - len(out))
    return tuple(out)


def _type_name(value) -> str:
    if isinstance(value, np.ndarray):
        flags = "" if value.flags.c_contiguous else ", not C-contiguous"
        return f"numpy.ndarray(dtype={value.dtype}, shape={value.shape}{flags})"
    if isinstance(value, np.generic):
        return f"numpy.{type(value).__name__} (dtype {value.dtype})"
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _expected_name(code: str) -> str:
    is_ptr, is_const, elem = split_code(code)
    if elem not in ELEM_DTYPES:
        return f"{code} (a type the emulator does not support)"
    dtype = ELEM_DTYPES[elem]
    if is_ptr:
        writable = "" if is_const else ", writeable"
        return f"a C-contiguous{writable} numpy.ndarray of dtype {dtype} ({code})"
    return f"numpy.{dtype.type.__name__} ({code})"


class EmuFunction:
    """One kernel instantiation; call it like a ``cupy.RawKernel``."""

    def __init__(
        self,
        module: EmuModule,
        index: int,
        name: str,
        params: tuple[str, ...],
        alignments: tuple[int, ...] = (),
    ):
        self.module = module
        self.name = name
        self.params = tuple(params)
        self._alignments = tuple(alignments) or (0,) * len(self.params)
        self._index = index
        #: like CUDA's cudaFuncAttributeMaxDynamicSharedMemorySize (CuPy's
        #: ``RawKernel.max_dynamic_shared_size_bytes``): the opt-in for more than 48 KiB
        self.max_dynamic_shared_size_bytes = DEFAULT_MAX_DYNAMIC_SHARED

    def __repr__(self):
        return f"<EmuFunction {self.name}({', '.join(self.params)})>"

    # -- validation ---------------------------------------------------------------------------
    def _check_launch(self, grid, block, shared_mem):
        grid3 = _dim3(grid, "grid", self.name)
        block3 = _dim3(block, "block", self.name)
        for what, dims, limits in (("grid", grid3, MAX_GRID_DIM), ("block", block3, MAX_BLOCK_DIM)):
            for axis, d, limit in zip("xyz", dims, limits):
                if d < 1:
                    raise ValueError(
                        f"kernel {self.name}: {what}.{axis}={d} must be >= 1 (CUDA rejects "
                        f"empty launches; skip the launch instead)"
                    )
                if d > limit:
                    raise ValueError(
                        f"kernel {self.name}: {what}.{axis}={d} exceeds the CUDA limit {limit}"
                    )
        threads = block3[0] * block3[1] * block3[2]
        if threads > MAX_THREADS_PER_BLOCK:
            raise ValueError(
                f"kernel {self.name}: block={block3} has {threads} threads, more than the CUDA "
                f"limit of {MAX_THREADS_PER_BLOCK} per block"
            )
        if not isinstance(shared_mem, (int, np.integer)) or isinstance(shared_mem, bool):
            raise TypeError(f"kernel {self.name}: shared_mem={shared_mem!r} must be an int")
        shared_mem = int(shared_mem)
        limit = min(int(self.max_dynamic_shared_size_bytes), OPT_IN_MAX_DYNAMIC_SHARED)
        if shared_mem < 0 or shared_mem > limit:
            raise ValueError(
                f"kernel {self.name}: shared_mem={shared_mem} must be between 0 and {limit} "
                f"bytes (48 KiB unless max_dynamic_shared_size_bytes is raised, at most "
                f"{OPT_IN_MAX_DYNAMIC_SHARED})"
            )
        return grid3, block3, shared_mem

    def _check_args(self, args):
        if not isinstance(args, tuple):
            raise TypeError(f"kernel {self.name}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            raise TypeError(
                f"kernel {self.name}: takes {len(self.params)} arguments "
                f"({', '.join(self.params)}), got {len(args)}"
            )
        for i, (code, arg) in enumerate(zip(self.params, args)):
            is_ptr, is_const, elem = split_code(code)
            where = f"kernel {self.name}: parameter {i} (0-based)"
            if elem not in ELEM_DTYPES:
                raise TypeError(
                    f"{where} has C++ type code {code!r}, which the emulator cannot pass"
                )
            dtype = ELEM_DTYPES[elem]
            if is_ptr:
                ok = (
                    isinstance(arg, np.ndarray)
                    and arg.dtype == dtype
                    and arg.flags.c_contiguous
                    and arg.flags.aligned
                    and (is_const or arg.flags.writeable)
                    and (arg.size == 0 or arg.ctypes.data % max(self._alignments[i], 1) == 0)
                )
                if not ok:
                    why = ""
                    if isinstance(arg, np.ndarray) and arg.dtype == dtype:
                        if not arg.flags.c_contiguous:
                            why = " (the array is not C-contiguous; pass np.ascontiguousarray(...))"
                        elif not arg.flags.aligned or arg.ctypes.data % max(self._alignments[i], 1):
                            why = (
                                f" (its address {arg.ctypes.data:#x} is not a multiple of the "
                                f"kernel's element alignment, {self._alignments[i]} bytes)"
                            )
                        else:
                            why = " (the array is read-only but the parameter is not const)"
                    raise TypeError(
                        f"{where}: expected {_expected_name(code)}, got {_type_name(arg)}{why}"
                    )
            else:
                if not (isinstance(arg, np.generic) and arg.dtype == dtype):
                    raise TypeError(
                        f"{where}: expected {_expected_name(code)}, got {_type_name(arg)}; wrap "
                        f"scalars in the exact NumPy type of the parameter"
                    )

    # -- launching ----------------------------------------------------------------------------
    def __call__(self, grid, block, args, *, shared_mem: int = 0) -> None:
        """Run the kernel on the CPU, synchronously.

        Parameters
        ----------
        grid, block : int or tuple of 1 to 3 ints
            As for ``cupy.RawKernel``; every extent must be >= 1 and within CUDA's limits.
        args : tuple
            ``numpy.ndarray`` (C-contiguous, exact dtype) for pointer parameters and NumPy
            scalars of the exact type for scalar parameters.
        shared_mem : int, optional
            Bytes of dynamic shared memory (``GPUCONV_DYNAMIC_SHARED``).

        Raises
        ------
        TypeError
            Wrong argument count or types (the message names the 0-based parameter position).
        ValueError
            Launch configuration outside CUDA's limits.
        DivergentBarrierError, OutOfBoundsError, RaceError, EmulatorError
            Faults found while running.
        """
        grid3, block3, shared_mem = self._check_launch(grid, block, shared_mem)
        self._check_args(args)
        nthreads = _worker_threads()
        check, race, count = _checked_on(), _race_on(), _track.counting()
        if not (check or race or count):
            self._run(grid3, block3, shared_mem, args, 0, nthreads)
            return
        # Checked mode first: it runs in a subprocess, so an out-of-bounds access is reported
        # before the (in-process) race check could crash on it. All start from the inputs.
        inputs = self._copy_args(args) if (check and (race or count)) else args
        if check:
            self._run_checked(grid3, block3, shared_mem, args, nthreads)
        if race:  # its first run is tracked (and counted, under counters())
            self._race_checked(grid3, block3, shared_mem, inputs, write_back=not check)
        elif count:
            s = _track.launch(self, grid3, block3, shared_mem, inputs, 0, 0, race=False)
            _record_stats(s, self.module._lib.fiber_impl)

    def _run(self, grid3, block3, shared_mem, args, flags, nthreads, seed=0):
        argv, keep, _, _ = _abi.build_argv(self.params, args)
        lib = self.module._lib

        def launch(cancel):
            return lib.launch(
                self._index, grid3, block3, shared_mem, argv, flags, seed, nthreads, cancel
            )

        rc, message, launch_stats = _interruptible(launch)
        del keep
        _record_stats(launch_stats, lib.fiber_impl)
        if rc != _abi.RC_OK:
            self._raise(rc, message)
        return launch_stats

    def _raise(self, rc, message):
        prefix = f"kernel {self.name}: "
        if rc == _abi.RC_DIVERGENT_BARRIER:
            raise DivergentBarrierError(prefix + message)
        if rc == _abi.RC_KERNEL_FAULT:
            raise EmulatorError(prefix + message)
        raise EmulatorError(prefix + f"launch failed (code {rc}): {message}")

    # -- race check ---------------------------------------------------------------------------
    def _copy_args(self, args):
        """Fresh copies of the array arguments; an array passed twice stays one array."""
        copies = {}
        out = []
        for code, arg in zip(self.params, args):
            if split_code(code)[0]:
                key = (arg.ctypes.data, arg.nbytes)
                if key not in copies:
                    copies[key] = arg.copy()
                out.append(copies[key])
            else:
                out.append(arg)
        return tuple(out)

    def _race_checked(self, grid3, block3, shared_mem, args, write_back):
        # Each run also fills shared memory with a different byte before every block, so a read
        # of shared memory that no thread wrote shows up as a difference too.
        orders = (
            ("forward", _abi.fill_flag(0xFF)),
            ("reverse", _abi.FLAG_ORDER_REVERSE | _abi.fill_flag(0x7F)),
            ("shuffled", _abi.FLAG_ORDER_SHUFFLE | _abi.fill_flag(0xA5)),
        )
        runs = []
        used_float_atomics = False
        for label, order_flag in orders:
            copies = self._copy_args(args)
            flags = _abi.FLAG_SERIAL | _abi.FLAG_FILL_SHARED | order_flag
            if label == "forward":  # the track build: lost updates, cross-block read/write
                s = _track.launch(self, grid3, block3, shared_mem, copies, flags, _RACE_SEED,
                                  race=True)
                _record_stats(s, self.module._lib.fiber_impl)
            else:
                s = self._run(grid3, block3, shared_mem, copies, flags, 1, seed=_RACE_SEED)
            used_float_atomics |= s["float_atomics"] > 0
            runs.append((label, copies))
        ref_label, ref = runs[0]
        for label, other in runs[1:]:
            for i, code in enumerate(self.params):
                is_ptr, _, elem = split_code(code)
                if not is_ptr:
                    continue
                a, b = ref[i].reshape(-1), other[i].reshape(-1)
                if used_float_atomics and elem in RACE_RTOL:
                    rtol = RACE_RTOL[elem]
                    scale = float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0))
                    close = np.isclose(a, b, rtol=rtol, atol=rtol * scale, equal_nan=True)
                    bad = np.flatnonzero(~close)
                    how = f"beyond rtol={rtol} (the launch used floating-point atomicAdd)"
                else:
                    bytes_a = a.view(np.uint8).reshape(a.size, a.itemsize)
                    bytes_b = b.view(np.uint8).reshape(b.size, b.itemsize)
                    bad = np.flatnonzero(np.any(bytes_a != bytes_b, axis=1))
                    how = "bit for bit"
                if bad.size:
                    j = int(bad[0])
                    raise RaceError(
                        f"kernel {self.name}: parameter {i} ({code}) differs {how} between "
                        f"{ref_label} and {label} thread/block order: first at flat index {j} "
                        f"({a[j].item()!r} vs {b[j].item()!r}; {bad.size} of {a.size} elements "
                        f"differ). "
                        f"The output depends on the order in which threads run: a missing "
                        f"__syncthreads(), a read of shared memory that no thread wrote (each run "
                        f"fills shared memory with different garbage), or threads writing the "
                        f"same element."
                    )
        if write_back:
            for i, code in enumerate(self.params):
                if split_code(code)[0] and args[i].size:
                    np.copyto(args[i], ref[i])

    # -- checked mode -------------------------------------------------------------------------
    def _run_checked(self, grid3, block3, shared_mem, args, nthreads):
        with tempfile.TemporaryDirectory(prefix="gpuconv-emu-check-") as tmp:
            tmp = pathlib.Path(tmp)
            spec_args = []
            seen = {}
            for i, (code, arg) in enumerate(zip(self.params, args)):
                if split_code(code)[0]:
                    key = (arg.ctypes.data, arg.nbytes)
                    if key in seen:
                        spec_args.append({"kind": "alias", "of": seen[key]})
                        continue
                    seen[key] = i
                    np.save(tmp / f"arg{i}.npy", arg, allow_pickle=False)
                    spec_args.append({"kind": "array", "file": f"arg{i}.npy"})
                else:
                    spec_args.append(
                        {"kind": "scalar", "dtype": arg.dtype.str, "hex": arg.tobytes().hex()}
                    )
            artifact = self.module._artifact
            spec = {
                "library": self.module.library_path,
                "library_size": artifact.size if artifact else None,
                "library_sha256": artifact.sha256 if artifact else None,
                "index": self._index,
                "grid": list(grid3),
                "block": list(block3),
                "shared_mem": shared_mem,
                "nthreads": nthreads,
                "args": spec_args,
            }
            (tmp / "spec.json").write_text(json.dumps(spec))
            worker = pathlib.Path(__file__).with_name("_worker.py")
            proc = subprocess.run(
                [sys.executable, str(worker), str(tmp)], capture_output=True, text=True, check=False
            )
            # the kernel's printf output, like a device printf after synchronisation
            if proc.stdout:
                sys.stdout.write(proc.stdout)
            report_path = tmp / "report.txt"
            report = report_path.read_text() if report_path.exists() else ""
            if proc.returncode == _abi.EXIT_FAULT and report:
                raise self._fault_error(report, args)
            if proc.returncode == _abi.EXIT_DAMAGED:
                raise EmulatorError(
                    f"kernel {self.name}: {proc.stderr.strip()}. The file changed on disk after "
                    f"this process loaded it; load_module() in a new process rebuilds it."
                )
            if proc.returncode != 0:
                raise EmulatorError(
                    f"kernel {self.name}: the checked-mode subprocess failed (exit status "
                    f"{proc.returncode}):\n{proc.stderr.strip()}"
                )
            result = json.loads((tmp / "result.json").read_text())
            _record_stats(result["stats"], result["fiber_impl"])
            if result["rc"] != _abi.RC_OK:
                self._raise(result["rc"], result["message"])
            for i, code in enumerate(self.params):
                if split_code(code)[0] and spec_args[i]["kind"] == "array" and args[i].size:
                    np.copyto(args[i], np.load(tmp / f"out{i}.npy", allow_pickle=False))

    def _fault_error(self, report: str, args) -> EmulatorError:
        fields = dict(tok.split("=", 1) for tok in report.split() if "=" in tok)
        placement = fields.get("pass", "").replace("_", " ")
        where = (
            f"by thread ({fields.get('thread')}) of block ({fields.get('block')})"
            if fields.get("in_kernel") == "1"
            else "outside any kernel thread"
        )
        kind = fields.get("kind")
        if kind == "oob":
            param = int(fields["param"])
            offset = int(fields["offset"])
            nbytes = int(fields["nbytes"])
            access = fields.get("access", "access")
            if param < 0:
                return OutOfBoundsError(
                    f"kernel {self.name}: dynamic shared memory: out-of-bounds {access} at byte "
                    f"offset {offset} of the {nbytes}-byte buffer (shared_mem={nbytes}) {where}"
                )
            code = self.params[param]
            itemsize = args[param].itemsize
            if offset == nbytes:
                rel = "the first byte past the end"
            elif offset > nbytes:
                rel = f"{offset - nbytes} bytes past the end"
            else:
                rel = f"{-offset} bytes before the start"
            element = offset // itemsize
            return OutOfBoundsError(
                f"kernel {self.name}: parameter {param} ({code}): out-of-bounds {access} at "
                f"byte offset {offset} ({rel}; element index {element} of an array of "
                f"{args[param].size} elements, {nbytes} bytes) {where} [{placement}]"
            )
        if kind == "stack":
            return EmulatorError(
                f"kernel {self.name}: stack overflow {where}: a thread used more than "
                f"{fields.get('stack_kib')} KiB of stack (set GPUCONV_EMULATE_STACK_KIB to a larger power of two)"
            )
        return EmulatorError(
            f"kernel {self.name}: invalid memory {fields.get('access', 'access')} at address "
            f"{fields.get('address')} {where}, not inside any array argument (signal "
            f"{fields.get('signal')})"
        )
