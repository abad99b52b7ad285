"""The emulator's track build: race_check()'s cross-block check, and memory counters.

A module's *track build* is the same ``.cu`` compiled with ``-fsanitize=thread`` and the hooks
of ``track.h``, so that every load, store and atomic of kernel code is seen (see that file).
It is built on first use, beside the plain build, and runs launches serially.

* Under :func:`gpuconv._emulator.race_check`, the first of the race check's runs uses it: a
  plain write that meets another block's write to the same byte (a *lost update*: replacing
  an ``atomicAdd`` with ``+=`` passes the order-based check, because the emulator runs blocks
  one at a time) and a read of a byte that another block writes in the same launch raise
  :class:`RaceError`, naming the kernel, the parameter and the element.
* Inside ``with counters() as c:`` every launch runs once on the track build and counts what a
  profiler would: global-memory sectors per request (coalescing), shared-memory wavefronts per
  request (bank conflicts), and the bytes moved by ``cp.async`` and ``ldmatrix``, per kernel and
  per access site.

The lanes of a warp run one after another between collectives in the emulator, so a warp's
*request* is taken to be the k-th access of each lane at one instruction since the lane's last
collective (``__syncthreads``, a shuffle, ``ldmatrix``, ...). That is what a GPU issues when the
warp runs converged; for divergent code it is an estimate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import threading

from . import _abi, _build
from ._errors import RaceError

_lock = threading.Lock()
_collectors: list[Counters] = []
_site_names: dict[tuple[str, int], str] = {}


def counting() -> bool:
    """Whether a :func:`counters` block is open (in any thread)."""
    return bool(_collectors)


@dataclasses.dataclass
class SiteCounters:
    """Counts of one access site of one kernel, for one kind of access.

    ``units`` are 32-byte sectors for global memory and wavefronts for shared memory;
    ``ideal`` is the least the same bytes could take: their size over 32 bytes (global), one
    wavefront per phase of the request (shared).
    """

    site: str
    space: str  # "global" or "shared"
    kind: str  # load, store, atomic, cp.async.load, cp.async.store, ldmatrix
    requests: int = 0
    units: int = 0
    ideal: int = 0
    bytes: int = 0


@dataclasses.dataclass
class KernelCounters:
    """The counters of one kernel (name expression), summed over its launches."""

    name: str
    launches: int = 0
    sites: dict = dataclasses.field(default_factory=dict)  # (site, space, kind) -> SiteCounters

    def total(self, space: str, kinds) -> tuple[int, int, int, int]:
        """(requests, units, ideal, bytes) summed over the sites of ``space`` and ``kinds``."""
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        sums = [0, 0, 0, 0]
        for s in self.sites.values():
            if s.space == space and s.kind in kinds:
                for i, v in enumerate((s.requests, s.units, s.ideal, s.bytes)):
                    sums[i] += v
        return tuple(sums)

    def per_request(self, space: str, kinds) -> float | None:
        """Sectors (global) or wavefronts (shared) per request, or None without requests."""
        requests, units, _, _ = self.total(space, kinds)
        return units / requests if requests else None

    def efficiency(self, space: str, kinds) -> float | None:
        """ideal / actual units: 1.0 is perfectly coalesced / conflict-free."""
        _, units, ideal, _ = self.total(space, kinds)
        return ideal / units if units else None


class Counters:
    """What :func:`counters` collects: ``counters[name]`` is a :class:`KernelCounters`."""

    def __init__(self):
        self.kernels: dict[str, KernelCounters] = {}

    def __getitem__(self, name: str) -> KernelCounters:
        return self.kernels[name]

    def __contains__(self, name: str) -> bool:
        return name in self.kernels

    def _add(self, name: str, sites: list[SiteCounters]) -> None:
        k = self.kernels.setdefault(name, KernelCounters(name))
        k.launches += 1
        for s in sites:
            key = (s.site, s.space, s.kind)
            mine = k.sites.get(key)
            if mine is None:
                k.sites[key] = dataclasses.replace(s)
            else:
                mine.requests += s.requests
                mine.units += s.units
                mine.ideal += s.ideal
                mine.bytes += s.bytes

    def table(self) -> str:
        """A text table: one row per kernel (see docs/kernels.md for the columns)."""

        def ratio(k, space, kinds):
            v = k.per_request(space, kinds)
            return "-" if v is None else f"{v:.2f}"

        def eff(k, space, kinds):
            v = k.efficiency(space, kinds)
            return "-" if v is None else f"{100 * v:.0f}%"

        head = ("kernel", "launches", "ld sect/req", "ld eff", "st sect/req", "st eff",
                "smem wave/req", "smem eff", "ldmatrix B", "cp.async B")
        rows = [head]
        for name, k in sorted(self.kernels.items()):
            rows.append((
                name, str(k.launches),
                ratio(k, "global", "load"), eff(k, "global", "load"),
                ratio(k, "global", ("store", "atomic")), eff(k, "global", ("store", "atomic")),
                ratio(k, "shared", ("load", "store")), eff(k, "shared", ("load", "store")),
                str(k.total("shared", "ldmatrix")[3]),
                str(k.total("global", "cp.async.load")[3]),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows
        )


@contextlib.contextmanager
def counters():
    """Count memory traffic of every emulated launch inside the block.

    Yields
    ------
    Counters
        Filled as launches run; ``c[name].per_request("global", "load")`` is the mean number
        of 32-byte sectors per warp-wide global load, ``c[name].per_request("shared",
        ("load", "store"))`` the mean wavefronts per shared access (1.0: no bank conflicts),
        ``c.table()`` a summary.

    Notes
    -----
    Each launch inside the block runs once on the module's track build (compiled on first use,
    then cached) on one worker thread, several times slower than a plain launch. Use small
    shapes. The counters are process-wide: launches from other threads are counted too.
    """
    c = Counters()
    with _lock:
        _collectors.append(c)
    try:
        yield c
    finally:
        with _lock:
            _collectors.remove(c)


def _library(fn) -> _abi.Library:
    """The track build of ``fn``'s module (built on first use, kept on the module)."""
    module = fn.module
    lib = getattr(module, "_track_lib", None)
    if lib is None:
        source, names, include_dirs = module._build_args
        artifact = _build.build(source, names, include_dirs, track=True)
        lib = _abi.Library(artifact.path)
        if [e[0] for e in lib.entries] != [e[0] for e in module._lib.entries]:
            raise RuntimeError(f"{artifact.path}: the track build's entries differ")
        module._track_lib = lib
    return lib


def _name_sites(library: str, pcs) -> None:
    """file:line of instruction offsets, through addr2line (-g1 line tables), cached."""
    todo = sorted({pc for pc in pcs if (library, pc) not in _site_names})
    if not todo:
        return
    names = {}
    tool = shutil.which("addr2line")
    if tool:
        try:
            out = subprocess.run(
                [tool, "-e", library, *(hex(pc - 1) for pc in todo)],
                capture_output=True, text=True, timeout=60, check=False,
            ).stdout.splitlines()
        except (OSError, subprocess.SubprocessError):
            out = []
        for pc, line in zip(todo, out):
            file, _, number = line.strip().rpartition(":")
            number = number.split()[0] if number else ""
            if file and file != "??" and number not in ("", "0", "?"):
                names[pc] = f"{os.path.basename(file)}:{number}"
    for pc in todo:
        _site_names[(library, pc)] = names.get(pc, f"+{pc:#x}")


def _parse(report: str, library: str) -> list[SiteCounters]:
    rows = [line.split("\t", 9) for line in report.splitlines() if line.startswith("site\t")]
    _name_sites(library, [int(r[1]) for r in rows if int(r[1])])
    out = []
    for _, pc, line, space, kind, req, units, ideal, nbytes, file in rows:
        pc = int(pc)
        site = (_site_names[(library, pc)] if pc
                else f"{os.path.basename(file)}:{line}")
        out.append(SiteCounters(site, space, kind, int(req), int(units), int(ideal),
                                int(nbytes)))
    return out


_RACE_AT = re.compile(r"^parameter (\d+) byte offset (\d+): (.*)$", re.S)


def launch(fn, grid3, block3, shared_mem, args, flags, seed, *, race: bool) -> dict:
    """Run one launch of ``fn`` on its module's track build; returns the launch stats.

    ``race``: raise :class:`RaceError` on a lost update or a cross-block read/write. The
    counters are recorded when a :func:`counters` block is open.
    """
    lib = _library(fn)
    count = counting()
    mode = (_abi.TRACK_RACE if race else 0) | (_abi.TRACK_COUNT if count else 0)
    argv, keep, nbytes, _ = _abi.build_argv(fn.params, args)
    rc, message, stats, report = lib.tracked_launch(
        fn._index, grid3, block3, shared_mem, argv, nbytes, flags, mode, seed
    )
    del keep
    if rc == _abi.RC_RACE:
        m = _RACE_AT.match(message)
        if m:
            i, offset, what = int(m.group(1)), int(m.group(2)), m.group(3)
            elem = _abi.split_code(fn.params[i])[2]
            size = _abi.ELEM_DTYPES[elem].itemsize
            message = (f"parameter {i} ({fn.params[i]}), element {offset // size} (byte "
                       f"offset {offset}): {what}")
        raise RaceError(f"kernel {fn.name}: {message}")
    if rc != _abi.RC_OK:
        fn._raise(rc, message)
    if count:
        sites = _parse(report, lib.path)
        with _lock:
            for c in _collectors:
                c._add(fn.name, sites)
    return stats
