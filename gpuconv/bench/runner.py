"""One workload's run: gpuconv, its peers and the ceilings, interleaved, into a JSON record."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import numpy as np

import gpuconv
from gpuconv import _layout

from .report import _fastest_peer, assess
from .timing import (COPIES, SETTLE_S, Ceilings, CpuTimer, CudaTimer, LoadProbe,
                     roofline_pct, spread_of, time_side_by_side)
from .workloads import KINDS, Kind, Workload, _NotApplicable, _rel_diff, _Unavailable, \
    bench_dtype, traffic_bytes, with_layout

#: Suffix of the NCHW twins timed beside a ``layout="channels_last"`` run's implementations.
NCHW = "@nchw"

# ------------------------------------------------------------------------------- runs


def _gpuconv_call(kind: Kind, arrays, params, backend: str):
    if backend == "emulate":
        def call():
            with gpuconv.use_backend("emulate"):
                return kind.run(arrays, params)
        return call
    if backend == "numpy":
        def call():
            with gpuconv.use_backend("numpy"):
                return kind.run(arrays, params)
        return call
    return lambda: kind.run(arrays, params)  # CuPy arrays run on the cuda backend


@contextlib.contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """Inside the block, gpuconv (:func:`gpuconv.use_tf32`) and, where torch imports,
    ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` all
    allow TF32 (``enabled``) or all forbid it; torch's switches are restored on exit."""
    try:
        import torch
    except Exception:  # no torch (or a broken one): gpuconv's switch only
        torch = None
    saved = None
    if torch is not None:
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        with gpuconv.use_tf32(enabled):
            yield
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def run_workload(workload: Workload, *, size_set: str, backend: str, dtype: str, repeat: int,
                 ceilings: Ceilings | None = None, peaks: Mapping | None = None, seed: int = 0,
                 clock: str = "wall", timer=None, settle_s: float = SETTLE_S,
                 load_probe: LoadProbe | None = None, layout: str = "contiguous") -> dict:
    """Time one workload on gpuconv and every peer, interleaved; returns its JSON record.

    With ``ceilings``, the matrix product and the copy are timed in the same rounds and the
    roofline uses the rates measured there (``record["ceilings"]``); otherwise ``peaks``
    (a :func:`measure_peaks` result) is used as given. ``timer`` defaults to the device's;
    ``load_probe`` (default a :class:`LoadProbe`) measures the other processes' CPU use
    during the timing. The record carries :func:`assess`'s flags for what it knows itself
    (the run-level load average is judged by :func:`main`).

    ``layout="channels_last"`` makes the 4-D/5-D input (and a backward's ``grad_output``)
    channels-last (:func:`~gpuconv.bench.workloads.with_layout`) for gpuconv and every
    peer, and times the same calls on the NCHW arrays in the same rounds:
    ``record["nchw"][name]`` holds those samples, ``nhwc_over_nchw`` (the channels-last
    median over the NCHW one) and the ``rel_diff`` between the two results.
    ``record["layout"]`` is the input's memory format (1-D inputs have no channels-last
    form and stay contiguous) and ``record["out_layout"]`` gpuconv's result's.

    TF32 is on for gpuconv and torch alike when ``workload.tf32``, else off for both
    (:func:`tf32_mode`); ``record["tf32"]`` says which.
    """
    with tf32_mode(workload.tf32):
        record = _run_workload(workload, size_set=size_set, backend=backend, dtype=dtype,
                               repeat=repeat, ceilings=ceilings, peaks=peaks, seed=seed,
                               clock=clock, timer=timer, settle_s=settle_s,
                               load_probe=load_probe, layout=layout)
    record["tf32"] = workload.tf32
    return record


def _run_workload(workload: Workload, *, size_set: str, backend: str, dtype: str, repeat: int,
                  ceilings: Ceilings | None, peaks: Mapping | None, seed: int, clock: str,
                  timer, settle_s: float, load_probe: LoadProbe | None,
                  layout: str) -> dict:
    """:func:`run_workload` without the TF32 switches."""
    kind = KINDS[workload.kind]
    params = dict(workload.sizes[size_set])
    dtype = bench_dtype(workload.dtype or dtype)
    device = "cuda" if backend == "cuda" else "cpu"
    rng = np.random.default_rng(seed)
    host_sets = [kind.make(params, dtype, rng) for _ in range(COPIES)]
    xp = np
    sets = host_sets
    if device == "cuda":
        import cupy as xp

        sets = [{k: xp.asarray(v) for k, v in s.items()} for s in host_sets]
    nchw_sets = sets
    sets = [with_layout(s, layout, xp) for s in sets]
    in_layout = _layout.memory_format(sets[0]["x"]) if "x" in sets[0] else _layout.CONTIGUOUS
    twins = in_layout == _layout.CHANNELS_LAST  # time the NCHW arrays beside them
    record = {
        "workload": workload.name, "kind": workload.kind, "backend": backend,
        "dtype": dtype.name, "layout": in_layout, "params": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in params.items()},
        "description": kind.describe(params), "note": workload.note,
        "flops": int(kind.flops(params)),
        "bytes": traffic_bytes(workload.kind, params, host_sets[0], dtype.itemsize),
        "peers": {}, "notes": [],
    }
    impls = {"gpuconv": [_gpuconv_call(kind, s, params, backend) for s in sets]}
    results = {}
    try:
        results["gpuconv"] = impls["gpuconv"][0]()
        out = results["gpuconv"]
        record["out_layout"] = _layout.memory_format(out[0] if isinstance(out, tuple) else out)
        if twins:
            impls["gpuconv" + NCHW] = [_gpuconv_call(kind, s, params, backend)
                                       for s in nchw_sets]
            results["gpuconv" + NCHW] = impls["gpuconv" + NCHW][0]()
    except Exception as exc:  # reported in the table's notes; the other workloads go on
        record["notes"].append(f"gpuconv ({backend}) cannot run it: {type(exc).__name__}: {exc}")
        impls.pop("gpuconv")
        impls.pop("gpuconv" + NCHW, None)
    for name, make_peer in kind.peers.items():
        try:
            fns = [make_peer(device, s, params) for s in sets]
            results[name] = fns[0]()
            impls[name] = fns
            if twins:
                fns = [make_peer(device, s, params) for s in nchw_sets]
                results[name + NCHW] = fns[0]()
                impls[name + NCHW] = fns
        except _NotApplicable:
            continue
        except _Unavailable as exc:
            record["peers"][name] = None
            if device == "cpu" and name.startswith("cupyx"):
                continue  # GPU-only peers are not worth a note on a CPU run
            record["notes"].append(f"{name}: {exc}")
        except Exception as exc:  # a peer that rejects this dtype/shape is reported, not fatal
            record["peers"][name] = None
            record["notes"].append(f"{name} failed: {type(exc).__name__}: {exc}")
    if "gpuconv" in impls and ceilings is not None:
        impls.update(ceilings.impls())
    timer = timer or (CudaTimer() if device == "cuda" else CpuTimer(clock))
    load_probe = load_probe or LoadProbe()
    load_probe.start()
    times = time_side_by_side(impls, timer, repeat, settle_s=settle_s)
    record["load"] = load_probe.stop()
    stats = {name: spread_of(t) for name, t in times.items()}
    for name in kind.peers:
        if name in stats:
            record["peers"][name] = {
                **stats[name], "times_s": times[name],
                "rel_diff": _rel_diff(results["gpuconv"], results[name])
                if "gpuconv" in results else None,
            }
    if twins:
        record["nchw"] = {
            name: {**stats[name + NCHW], "times_s": times[name + NCHW],
                   "nhwc_over_nchw": stats[name]["median_s"] / stats[name + NCHW]["median_s"],
                   "rel_diff": _rel_diff(results[name], results[name + NCHW])}
            for name in ["gpuconv", *kind.peers] if name + NCHW in stats}
    if "gpuconv" not in stats:
        record.update(median_s=None, times_s=None)
        record.update(assess(record))
        return record
    if ceilings is not None:
        peaks = record["ceilings"] = ceilings.rates(times)
    t = stats["gpuconv"]["median_s"]
    record.update(**stats["gpuconv"], times_s=times["gpuconv"],
                  gflops=record["flops"] / t / 1e9, gbs=record["bytes"] / t / 1e9,
                  roofline_pct=None if peaks is None else
                  roofline_pct(record["flops"], record["bytes"], t, peaks))
    fastest, peer = _fastest_peer(record)
    if fastest:
        record.update(fastest_peer=fastest, ratio=t / peer["median_s"],
                      ratio_min=record["min_s"] / peer["max_s"],
                      ratio_max=record["max_s"] / peer["min_s"])
    record.update(assess(record))
    return record
