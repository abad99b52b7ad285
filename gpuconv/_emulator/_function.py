"""Kernel modules and functions of the emulator: argument checks, and a launch in the mode the
caller asked for (plain; checked: _checked.py; race check: _race.py; counters: _track.py)."""

from __future__ import annotations

import ctypes
import signal
import threading

import numpy as np

from . import _abi, _checked, _race, _track
from ._abi import ELEM_DTYPES, split_code
from ._errors import DivergentBarrierError, EmulatorError
from ._modes import checked_on, race_on, record_stats, worker_threads
from .._limits import (
    MAX_BLOCK_DIM,
    MAX_DYNAMIC_SHARED_BYTES,
    MAX_GRID_DIM,
    MAX_THREADS_PER_BLOCK,
)

# CUDA launch limits the emulator enforces, as the driver would: gpuconv/_limits.py's
#: the largest opt-in dynamic shared memory of any current GPU (H100: 227 KiB)
OPT_IN_MAX_DYNAMIC_SHARED = 227 * 1024
DEFAULT_MAX_DYNAMIC_SHARED = MAX_DYNAMIC_SHARED_BYTES

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
        nthreads = worker_threads()
        check, race, count = checked_on(), race_on(), _track.counting()
        if not (check or race or count):
            self._run(grid3, block3, shared_mem, args, 0, nthreads)
            return
        # Checked mode first: it runs in a subprocess, so an out-of-bounds access is reported
        # before the (in-process) race check could crash on it. All start from the inputs.
        inputs = self._copy_args(args) if (check and (race or count)) else args
        if check:
            _checked.run(self, grid3, block3, shared_mem, args, nthreads)
        if race:  # its first run is tracked (and counted, under counters())
            _race.run(self, grid3, block3, shared_mem, inputs, write_back=not check)
        elif count:
            s = _track.launch(self, grid3, block3, shared_mem, inputs, 0, 0, race=False)
            record_stats(s, self.module._lib.fiber_impl)

    def _run(self, grid3, block3, shared_mem, args, flags, nthreads, seed=0):
        argv, keep, _, _ = _abi.build_argv(self.params, args)
        lib = self.module._lib

        def launch(cancel):
            return lib.launch(
                self._index, grid3, block3, shared_mem, argv, flags, seed, nthreads, cancel
            )

        rc, message, launch_stats = _interruptible(launch)
        del keep
        record_stats(launch_stats, lib.fiber_impl)
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

    def _copy_args(self, args):
        return _race.copy_args(self, args)
