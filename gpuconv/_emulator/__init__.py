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

Layout: this module is the facade (``load_module``, the modes, the errors). The work is in
``_build.py`` (g++ and the compile cache), ``_abi.py`` (the ctypes binding), ``_function.py``
(modules, functions, argument checks, the plain launch), ``_modes.py`` (mode flags, stats),
``_checked.py`` and ``_worker.py`` (checked mode), ``_race.py`` (race check) and ``_track.py``
(the track build: lost updates, counters); the C++ side is ``cuda_shim.h``, ``runtime.h``,
``track.h`` and ``module.cpp``.

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

import os
import pathlib
import threading
from collections.abc import Sequence

from . import _build
from ._errors import (
    DivergentBarrierError,
    EmulatorCompileError,
    EmulatorError,
    OutOfBoundsError,
    RaceError,
)
from ._function import (  # (the launch limits are re-exported for callers that check first)
    DEFAULT_MAX_DYNAMIC_SHARED,
    MAX_BLOCK_DIM,
    MAX_GRID_DIM,
    MAX_THREADS_PER_BLOCK,
    OPT_IN_MAX_DYNAMIC_SHARED,
    EmuFunction,
    EmuModule,
)
from ._modes import checked, race_check, reset_stats, stats
from ._race import RACE_RTOL  # noqa: F401  (re-exported: the race check's tolerances)
from ._track import Counters, KernelCounters, SiteCounters, counters

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
