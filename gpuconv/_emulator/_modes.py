"""The emulator's modes (checked, race check) and its cumulative launch statistics.

Each mode is a process-wide depth counter, also switched on by an environment variable, and is
read at every launch (gpuconv/_emulator/_function.py).
"""

from __future__ import annotations

import contextlib
import os
import threading

_mode_lock = threading.Lock()
_mode_depth = {"check": 0, "race": 0}
_stats_lock = threading.Lock()
_stats = {}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def checked_on() -> bool:
    return _mode_depth["check"] > 0 or env_flag("GPUCONV_EMULATE_CHECK")


def race_on() -> bool:
    return _mode_depth["race"] > 0 or env_flag("GPUCONV_EMULATE_RACECHECK")


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


def worker_threads() -> int:
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


def record_stats(s: dict, fiber_impl: str) -> None:
    with _stats_lock:
        _stats["launches"] = _stats.get("launches", 0) + 1
        _stats["blocks"] = _stats.get("blocks", 0) + s["blocks"]
        _stats["threads"] = _stats.get("threads", 0) + s["blocks"] * s["threads_per_block"]
        _stats["barriers"] = _stats.get("barriers", 0) + s["barriers"]
        _stats["fiber_switches"] = _stats.get("fiber_switches", 0) + s["fiber_switches"]
        _stats["float_atomics"] = _stats.get("float_atomics", 0) + s["float_atomics"]
        _stats["seconds"] = _stats.get("seconds", 0.0) + s["elapsed_ns"] * 1e-9
        _stats["fiber_impl"] = fiber_impl
