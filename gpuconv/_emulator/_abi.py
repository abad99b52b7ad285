"""ctypes binding of one compiled emulator module (the C ABI at the end of runtime.h).

This file imports nothing from gpuconv but ``gpuconv/_dtypes.py`` (which imports only NumPy): the
checked-mode subprocess (``_worker.py``) imports it by path, without importing the package, and
then it loads ``_dtypes.py`` by path too.
"""

from __future__ import annotations

import ctypes

import numpy as np

if __package__:  # gpuconv._emulator._abi
    from .. import _dtypes
else:  # loaded by path in the checked-mode worker, without the gpuconv package
    import importlib.util
    import pathlib

    _spec = importlib.util.spec_from_file_location(
        "_gpuconv_dtypes", pathlib.Path(__file__).resolve().parent.parent / "_dtypes.py")
    _dtypes = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_dtypes)

# launch flags and return codes: mirror the enums in runtime.h
FLAG_ORDER_REVERSE = 1 << 0
FLAG_ORDER_SHUFFLE = 1 << 1
FLAG_SERIAL = 1 << 2
FLAG_FILL_SHARED = 1 << 3
FLAG_CHECKED = 1 << 4
FLAG_GUARD_HEAD = 1 << 5
FLAG_WARP_SERIAL = 1 << 6


def fill_flag(byte: int) -> int:
    """The flag bits that make FLAG_FILL_SHARED write ``byte`` (default 0xFF)."""
    return (byte & 0xFF) << 8


RC_OK = 0
RC_INVALID = 1
RC_DIVERGENT_BARRIER = 2
RC_KERNEL_FAULT = 3
RC_INTERNAL = 4
RC_CANCELLED = 5
RC_RACE = 6  # the track build: a lost update or a cross-block read/write (track.h)

# tracked launches (the track build only): what to record (mirror track.h)
TRACK_RACE = 1 << 0
TRACK_COUNT = 1 << 1

#: exit status of the checked-mode subprocess after a memory fault
EXIT_FAULT = 77
#: exit status of the checked-mode subprocess when the library file fails its size/hash check
EXIT_DAMAGED = 78

ABI_VERSION = 3

#: element type code -> NumPy dtype: gpuconv/_dtypes.py's table (it imports only NumPy)
ELEM_DTYPES = _dtypes.TYPE_CODES

STATS_FIELDS = (
    "blocks",
    "threads_per_block",
    "barriers",
    "fiber_switches",
    "float_atomics",
    "elapsed_ns",
    "workers",
)

_ERRLEN = 4096
_u32x3 = ctypes.c_uint * 3
_u64_stats = ctypes.c_ulonglong * len(STATS_FIELDS)


def split_code(code: str) -> tuple[bool, bool, str]:
    """``"const ptr:f32"`` -> (is_pointer=True, is_const=True, elem="f32")."""
    if code.startswith("const ptr:"):
        return True, True, code[len("const ptr:") :]
    if code.startswith("ptr:"):
        return True, False, code[len("ptr:") :]
    return False, False, code


class Library:
    """A loaded module: its entries (name, parameter codes, pointee alignments) and its two
    launch functions."""

    def __init__(self, path: str):
        self.path = path
        lib = ctypes.CDLL(path)
        self._lib = lib
        lib.gpuconv_emu_abi_version.restype = ctypes.c_int
        if lib.gpuconv_emu_abi_version() != ABI_VERSION:
            raise RuntimeError(f"{path}: emulator ABI version mismatch")
        lib.gpuconv_emu_fiber_impl.restype = ctypes.c_char_p
        lib.gpuconv_emu_entry_count.restype = ctypes.c_int
        lib.gpuconv_emu_entry_name.restype = ctypes.c_char_p
        lib.gpuconv_emu_entry_name.argtypes = [ctypes.c_int]
        lib.gpuconv_emu_entry_signature.restype = ctypes.c_char_p
        lib.gpuconv_emu_entry_signature.argtypes = [ctypes.c_int]
        lib.gpuconv_emu_entry_alignments.restype = ctypes.c_char_p
        lib.gpuconv_emu_entry_alignments.argtypes = [ctypes.c_int]
        # every launch function: (index, grid[3], block[3], shared bytes, argv, ...,
        # errbuf, errlen, stats out)
        head = [
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_ulonglong,
            ctypes.POINTER(ctypes.c_void_p),
        ]
        tail = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ulonglong)]
        lib.gpuconv_emu_launch.restype = ctypes.c_int
        lib.gpuconv_emu_launch.argtypes = head + [
            ctypes.c_uint,  # flags
            ctypes.c_ulonglong,  # seed
            ctypes.c_int,  # worker threads (0: hardware concurrency)
            ctypes.POINTER(ctypes.c_int),  # cancel flag (NULL: none)
        ] + tail
        lib.gpuconv_emu_checked_launch.restype = ctypes.c_int
        lib.gpuconv_emu_checked_launch.argtypes = head + [
            ctypes.c_int,  # nargs
            ctypes.POINTER(ctypes.c_longlong),  # nbytes per argument (-1: scalar)
            ctypes.POINTER(ctypes.c_int),  # alias per argument (-1: none)
            ctypes.c_uint,  # flags
            ctypes.c_ulonglong,  # seed
            ctypes.c_int,  # worker threads
            ctypes.c_int,  # report fd
        ] + tail
        #: whether this is a track build (race_check's cross-block check, counters())
        self.tracked = hasattr(lib, "gpuconv_emu_tracked_launch")
        if self.tracked:
            lib.gpuconv_emu_tracked_launch.restype = ctypes.c_int
            lib.gpuconv_emu_tracked_launch.argtypes = head + [
                ctypes.c_int,  # nargs
                ctypes.POINTER(ctypes.c_longlong),  # nbytes per argument (-1: scalar)
                ctypes.c_uint,  # flags
                ctypes.c_uint,  # mode: TRACK_RACE | TRACK_COUNT
                ctypes.c_ulonglong,  # seed
            ] + tail + [ctypes.POINTER(ctypes.c_void_p)]  # report out (malloc'd text)
            lib.gpuconv_emu_free.restype = None
            lib.gpuconv_emu_free.argtypes = [ctypes.c_void_p]
        self.fiber_impl = lib.gpuconv_emu_fiber_impl().decode()
        self.entries = []
        for i in range(lib.gpuconv_emu_entry_count()):
            name = lib.gpuconv_emu_entry_name(i).decode()
            sig = lib.gpuconv_emu_entry_signature(i).decode()
            aligns = lib.gpuconv_emu_entry_alignments(i).decode()
            self.entries.append(
                (
                    name,
                    tuple(sig.split(",")) if sig else (),
                    tuple(int(a) for a in aligns.split(",")) if aligns else (),
                )
            )

    def launch(self, index, grid, block, shared_mem, argv, flags, seed, nthreads, cancel=None):
        """Run one launch; returns (rc, error message, stats dict).

        ``cancel``: a ``ctypes.c_int`` that another thread may set to 1 to stop the launch
        before its next CUDA thread starts (rc ``RC_CANCELLED``).
        """
        return self._call(
            self._lib.gpuconv_emu_launch, index, grid, block, shared_mem, argv,
            [flags, seed, nthreads, None if cancel is None else ctypes.byref(cancel)],
        )

    def checked_launch(
        self, index, grid, block, shared_mem, argv, nbytes, alias, flags, seed, nthreads, report_fd
    ):
        """Checked launch (only in a subprocess: a fault ends the process)."""
        n = len(nbytes)
        return self._call(
            self._lib.gpuconv_emu_checked_launch, index, grid, block, shared_mem, argv,
            [n, (ctypes.c_longlong * n)(*nbytes), (ctypes.c_int * n)(*alias), flags, seed,
             nthreads, report_fd],
        )

    def tracked_launch(self, index, grid, block, shared_mem, argv, nbytes, flags, mode, seed):
        """A tracked launch (track build only); returns (rc, error, stats, report text)."""
        report = ctypes.c_void_p()
        n = len(nbytes)
        rc, message, stats = self._call(
            self._lib.gpuconv_emu_tracked_launch, index, grid, block, shared_mem, argv,
            [n, (ctypes.c_longlong * n)(*nbytes), flags, mode, seed], [ctypes.byref(report)],
        )
        text = ""
        if report.value:
            text = ctypes.string_at(report.value).decode(errors="replace")
            self._lib.gpuconv_emu_free(report)
        return rc, message, stats, text

    @staticmethod
    def _call(function, index, grid, block, shared_mem, argv, middle, after=()):
        """One launch function: (index, grid, block, shared, argv, *middle, errbuf, errlen,
        stats, *after) -> (rc, error message, stats dict)."""
        errbuf = ctypes.create_string_buffer(_ERRLEN)
        stats = _u64_stats()
        rc = function(index, _u32x3(*grid), _u32x3(*block), shared_mem, argv, *middle, errbuf,
                      _ERRLEN, stats, *after)
        return rc, errbuf.value.decode(errors="replace"), dict(zip(STATS_FIELDS, stats))


def build_argv(params, args):
    """The ``void**`` argument vector for already-validated args.

    Returns (argv, keepalive, nbytes, alias): ``nbytes[i]`` is the byte size of array argument
    ``i`` (-1 for a scalar) and ``alias[i]`` the index of an earlier argument that is the very
    same array (same address and size), else -1.
    """
    n = len(params)
    argv = (ctypes.c_void_p * max(n, 1))()
    keep = []
    nbytes = []
    alias = []
    seen = {}
    for i, (code, arg) in enumerate(zip(params, args)):
        is_ptr, _, elem = split_code(code)
        if is_ptr:
            address = arg.ctypes.data
            cell = ctypes.c_void_p(address)
            keep.append(cell)
            argv[i] = ctypes.addressof(cell)
            nbytes.append(int(arg.nbytes))
            alias.append(seen.setdefault((address, int(arg.nbytes)), i))
            if alias[-1] == i:
                alias[-1] = -1
        else:
            buf = np.array([arg], dtype=ELEM_DTYPES[elem])
            keep.append(buf)
            argv[i] = buf.ctypes.data
            nbytes.append(-1)
            alias.append(-1)
    return argv, keep, nbytes, alias
