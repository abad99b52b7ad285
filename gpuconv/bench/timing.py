"""Timing: the CPU and CUDA timers, the interleaved round-robin sampler, the ceilings timed
beside each workload, and the probe of other processes' load."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping

import numpy as np

#: Sets of inputs each implementation cycles through.
COPIES = 3
#: A timing sample repeats the call until it lasts at least this long (seconds).
MIN_SAMPLE_S = 0.002
#: Pause before each timing sample (seconds); see :func:`time_side_by_side`.
SETTLE_S = 0.25
#: The pause with ``--quick`` (a smoke test: short, not a measurement).
QUICK_SETTLE_S = 0.02


# ----------------------------------------------------------------------------- timers


class CpuTimer:
    """Wall-clock timing with ``time.perf_counter``; or, with ``clock="thread"``, the
    calling thread's CPU time (``time.thread_time``), which other processes' load does not
    inflate: meaningful only when everything runs on that one thread (``--threads 1``)."""

    device = "cpu"

    def __init__(self, clock: str = "wall"):
        self.now = time.thread_time if clock == "thread" else time.perf_counter

    def sync(self):
        pass

    def sample(self, fn: Callable[[], object], number: int) -> float:
        start = self.now()
        for _ in range(number):
            fn()
        return (self.now() - start) / number


class CudaTimer:
    """Device timing with CUDA events on the null stream (needs CuPy)."""

    device = "cuda"

    def __init__(self):
        import cupy

        self.cupy = cupy
        self.start = cupy.cuda.Event()
        self.stop = cupy.cuda.Event()

    def sync(self):
        self.cupy.cuda.Device().synchronize()

    def sample(self, fn, number: int) -> float:
        self.start.record()
        for _ in range(number):
            fn()
        self.stop.record()
        self.stop.synchronize()
        return self.cupy.cuda.get_elapsed_time(self.start, self.stop) / 1e3 / number


def time_side_by_side(impls: Mapping[str, list], timer, repeat: int, warmup: int = 2,
                      settle_s: float = SETTLE_S, sleep: Callable[[float], None] = time.sleep):
    """Seconds per call of each implementation: ``repeat`` samples each, interleaved.

    ``impls`` maps a name to a list of zero-argument callables, one per input set; sample
    ``r`` uses input set ``r % len``. Each implementation first warms up and sets how many
    calls make one sample (at least :data:`MIN_SAMPLE_S`). Then the samples go round-robin:
    round ``r`` takes one sample of every implementation, starting with the ``r``-th (the
    order rotates, so none always follows the same neighbour), each after a pause of
    ``settle_s`` so that the previous implementation's spinning worker threads (OpenBLAS's,
    OpenMP's) have parked. A burst of load from other processes therefore lands on every
    implementation alike instead of on whichever happened to be running, and it shows as a
    spread of the samples (:func:`spread_of`).

    Returns name -> list of per-call times (one per sample, in the order taken).
    """
    names = list(impls)
    number = {}
    for name in names:
        fns = impls[name]
        sleep(settle_s)
        for i in range(warmup):
            fns[i % len(fns)]()
        timer.sync()
        once = timer.sample(fns[0], 1)
        number[name] = max(1, min(1000, math.ceil(MIN_SAMPLE_S / max(once, 1e-9))))
    times = {name: [] for name in names}
    for r in range(repeat):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            fns = impls[name]
            sleep(settle_s)
            times[name].append(timer.sample(fns[r % len(fns)], number[name]))
    return times


def spread_of(times) -> dict:
    """``min_s``, ``median_s``, ``max_s`` of the samples and ``spread``: (max - min) / median."""
    median = statistics.median(times)
    return {"min_s": min(times), "median_s": median, "max_s": max(times),
            "spread": (max(times) - min(times)) / median if median > 0 else float("inf")}


# ---------------------------------------------------------------------------- ceilings


class Ceilings:
    """The machine's ceilings, timed beside each workload (the same rounds, the same load).

    A matrix product ``n x n @ n x n`` in ``dtype`` (``2 n^3`` FLOPs) and a copy of
    ``elements`` float32 values (bytes read + bytes written). :meth:`impls` gives the two as
    implementations for :func:`time_side_by_side`; :meth:`rates` turns their samples into
    rates. The ceiling a roofline uses is the *fastest* sample (the rate the machine
    demonstrably reached), so a disturbed sample cannot lower it.
    """

    def __init__(self, xp, dtype, quick: bool):
        on_gpu = xp is not np
        n = (4096 if on_gpu else 2048) if not quick else (1024 if on_gpu else 512)
        elements = (1 << 26 if on_gpu else 1 << 25) if not quick else 1 << 22
        rng = np.random.default_rng(0)
        a = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
        b = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
        out = xp.empty((n, n), dtype=dtype)
        src = xp.ones(elements, dtype=np.float32)
        dst = xp.empty_like(src)
        self.matmul_n, self.dtype, self.copy_bytes = n, np.dtype(dtype).name, int(src.nbytes)
        self._matmul = lambda: xp.matmul(a, b, out=out)
        self._copy = lambda: xp.copyto(dst, src)

    def impls(self) -> dict:
        return {"ceiling:matmul": [self._matmul], "ceiling:copy": [self._copy]}

    def rates(self, times: Mapping[str, list]) -> dict:
        """FLOP/s and bytes/s from the samples of :meth:`impls`: the fastest sample as the
        ceiling, and the min/median/max rate with the spread of the samples."""
        mm, cp = spread_of(times["ceiling:matmul"]), spread_of(times["ceiling:copy"])
        flop, moved = 2 * self.matmul_n ** 3, 2 * self.copy_bytes
        return {"matmul_n": self.matmul_n, "matmul_dtype": self.dtype,
                "flops_per_s": flop / mm["min_s"],
                "flops_per_s_median": flop / mm["median_s"],
                "flops_per_s_min": flop / mm["max_s"], "flops_spread": mm["spread"],
                "matmul_times_s": list(times["ceiling:matmul"]),
                "copy_bytes": self.copy_bytes, "bytes_per_s": moved / cp["min_s"],
                "bytes_per_s_median": moved / cp["median_s"],
                "bytes_per_s_min": moved / cp["max_s"], "bytes_spread": cp["spread"],
                "copy_times_s": list(times["ceiling:copy"])}


def measure_peaks(xp, dtype, quick: bool, clock: str = "wall", repeat: int = 3) -> dict:
    """Matrix-product FLOP/s and copy bytes/s on ``xp`` (NumPy or CuPy), on their own (a
    run of the benchmark measures them beside each workload instead: :class:`Ceilings`)."""
    timer = CudaTimer() if xp is not np else CpuTimer(clock)
    ceilings = Ceilings(xp, dtype, quick)
    return ceilings.rates(time_side_by_side(ceilings.impls(), timer, repeat, warmup=1))


def roofline_pct(flop: float, nbytes: float, seconds: float, peaks: Mapping) -> float:
    """``100 * max(F / P, B / W) / t``: see the module docstring."""
    bound = max(flop / peaks["flops_per_s"], nbytes / peaks["bytes_per_s"])
    return 100.0 * bound / seconds


# ------------------------------------------------------------------------- load


def _cpu_stat():
    """(busy CPU seconds of the whole machine, its CPU count) from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    fields = [int(v) for v in lines[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already);
    # steal is CPU time the hypervisor gave to another machine: load all the same.
    busy = sum(fields[:3]) + sum(fields[5:8])
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return busy / os.sysconf("SC_CLK_TCK"), cores


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadProbe:
    """How much CPU *other* processes used while a block of timing ran.

    ``start()`` then ``stop()`` returns ``{"others_cores": c, "cores": n}``: the machine's busy
    CPU time in between (from ``/proc/stat``, steal time included) minus this process's own
    (every thread, from ``os.times``), divided by the wall time. So ``c`` is the average
    number of cores that something else kept busy. ``stop()`` returns None where there is no
    ``/proc/stat`` (the run-level load average then decides alone).
    """

    def start(self):
        self._start = (time.perf_counter(), _cpu_stat(), _own_cpu_s())

    def stop(self) -> dict | None:
        wall0, stat0, own0 = self._start
        stat1 = _cpu_stat()
        wall = time.perf_counter() - wall0
        if stat0 is None or stat1 is None or wall <= 0:
            return None
        others = (stat1[0] - stat0[0]) - (_own_cpu_s() - own0)
        return {"others_cores": round(max(0.0, others) / wall, 3), "cores": stat1[1],
                "seconds": round(wall, 3)}


def _loadavg():
    """The 1, 5 and 15-minute load averages, or None where the OS has none."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
