"""Measure the emulator's own costs: ``python -m gpuconv._emulator._bench``.

Prints, for the fiber implementation compiled in (x86-64 assembly switch by default; set
``GPUCONV_EMULATE_CXXFLAGS=-DGPUCONV_EMU_UCONTEXT`` for ucontext):

* seconds per block-wide barrier for 256 and 1024 threads per block (``barrier_rounds`` with
  many rounds minus few rounds, divided by the extra barriers), on one worker thread and on the
  default pool;
* the cost of a launch of 2**20 threads that pass no barrier (``fill_index``), per launch and
  per thread.
"""

from __future__ import annotations

import functools
import os
import pathlib
import time

import numpy as np

from . import load_module


def _best(fn, repeat=5):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _seconds_per_barrier(rounds_fn, threads: int, blocks: int = 8) -> float:
    """(time with many rounds - time with few) / the extra barriers (2 per round per block)."""
    out = np.zeros(blocks, np.float32)
    lo, hi = 2, 52
    t_lo = _best(functools.partial(rounds_fn, (blocks,), (threads,), (out, np.int32(lo))))
    t_hi = _best(functools.partial(rounds_fn, (blocks,), (threads,), (out, np.int32(hi))))
    return (t_hi - t_lo) / (2 * (hi - lo) * blocks)


def main() -> None:
    src = pathlib.Path(__file__).with_name("bench.cu")
    mod = load_module(src, ["fill_index<float>", "barrier_rounds"])
    rounds_fn = mod.get_function("barrier_rounds")
    fill = mod.get_function("fill_index<float>")
    print(f"fiber implementation: {mod._lib.fiber_impl}; cores: {os.cpu_count()}")
    saved = os.environ.get("GPUCONV_EMULATE_THREADS")
    try:
        for workers in ("1", None):
            if workers:
                os.environ["GPUCONV_EMULATE_THREADS"] = workers
            else:
                os.environ.pop("GPUCONV_EMULATE_THREADS", None)
            label = f"{workers} worker" if workers else "default pool"
            for threads in (256, 1024):
                per_barrier = _seconds_per_barrier(rounds_fn, threads)
                print(
                    f"[{label}] {threads:5d} threads/block: {per_barrier * 1e6:8.2f} us per "
                    f"barrier ({per_barrier / threads * 1e9:6.1f} ns per thread per barrier)"
                )
            n = 1 << 20
            y = np.zeros(n, np.float32)
            t = _best(functools.partial(fill, (n // 256,), (256,), (y, np.int64(n))))
            assert y[-1] == n - 1
            print(
                f"[{label}] launch of {n} threads (4096 blocks of 256), no barrier: "
                f"{t * 1e3:7.1f} ms ({t / n * 1e9:5.1f} ns per thread)"
            )
    finally:
        if saved is None:
            os.environ.pop("GPUCONV_EMULATE_THREADS", None)
        else:
            os.environ["GPUCONV_EMULATE_THREADS"] = saved


if __name__ == "__main__":
    main()
