"""``python -m gpuconv bench``: the command line."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import gpuconv

from .machine import _version, describe_blas, machine_info
from .report import TABLE_LEGEND, THRESHOLDS, assess, flag_notes, format_table, write_plot
from .runner import run_workload
from .timing import COPIES, MIN_SAMPLE_S, QUICK_SETTLE_S, SETTLE_S, Ceilings, _loadavg
from .workloads import KINDS, LAYOUTS, WORKLOADS, Workload, bench_dtype

DEFAULT_REPEAT = {"quick": 3, "full": 10}
SIZE_SETS = ("quick", "cpu", "gpu")
JSON_SCHEMA = "gpuconv-bench/2"


class _Progress:
    """tqdm on a terminal when installed, a plain counter otherwise; silent off a terminal."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.total, self.done = total, 0
        self.enabled = enabled and sys.stderr.isatty()
        if self.enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="workload", file=sys.stderr)
            except ImportError:
                pass

    def step(self, label: str):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(label)
        else:
            print(f"\r[{self.done + 1}/{self.total}] {label:<24}", end="", file=sys.stderr,
                  flush=True)

    def advance(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


# ------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpuconv bench",
        description="Time gpuconv against PyTorch, torchvision, NumPy, SciPy and CuPy, "
                    "with FLOP/s, bandwidth and % of the measured roofline.")
    p.add_argument("--ops", help="comma-separated workload names (default: every workload "
                                 "of the size set; see --list)")
    p.add_argument("--backend", choices=("numpy", "emulate", "cuda"),
                   help="gpuconv backend (default: cuda when CuPy sees a GPU, else numpy)")
    p.add_argument("--dtype", default="float32",
                   choices=("float16", "bfloat16", "float32", "float64"),
                   help="bfloat16 needs ml_dtypes (the bf16 extra); like float16 it is "
                        "computed in float32 and rounded once")
    p.add_argument("--layout", default="contiguous", choices=LAYOUTS,
                   help="'channels_last': the 2-D/3-D inputs are NHWC (NDHWC) views, "
                        "torch.channels_last tensors for the peers, and each such row also "
                        "times the NCHW arrays in the same rounds (NHWC/NCHW columns); "
                        "1-D and 'convolve' inputs have no channels-last form")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few repeats (well under a minute on 2 CPU cores)")
    p.add_argument("--repeat", type=int, help="timing samples per implementation "
                                              f"(default {DEFAULT_REPEAT['full']}, "
                                              f"{DEFAULT_REPEAT['quick']} with --quick)")
    p.add_argument("--json", metavar="PATH", help="write results and machine description")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    p.add_argument("--markdown", metavar="PATH", help="write the table and notes as Markdown")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--threads", type=int,
                   help="threads for BLAS (needs threadpoolctl) and PyTorch "
                        "(default: each library's own default)")
    p.add_argument("--clock", choices=("wall", "thread"), default="wall",
                   help="'thread': CPU time of the calling thread, robust to other processes' "
                        "load; only with --threads 1 (default: wall clock)")
    p.add_argument("--settle", type=float, metavar="SECONDS",
                   help=f"pause before each timing sample (default {SETTLE_S}, "
                        f"{QUICK_SETTLE_S} with --quick)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _set_threads(count: int) -> str | None:
    """Limit BLAS (so gpuconv's NumPy backend) and PyTorch to ``count`` threads (None: done)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return "limiting BLAS threads needs threadpoolctl (pip install threadpoolctl)"
    if _version("torch"):  # import it first, so its OpenMP/BLAS pools are limited too
        try:
            import torch

            torch.set_num_threads(count)
        except Exception:  # a broken torch is reported by the peers, not here
            pass
    threadpool_limits(count)
    return None


def _cuda_available() -> bool:
    return gpuconv.available_backends().get("cuda") == "available"


def _compute_dtype(workload: Workload, dtype: str, on_gpu: bool) -> np.dtype:
    """The dtype of a workload's matmul ceiling (float16 and bfloat16 compute in float32 on
    the CPU)."""
    dt = bench_dtype(workload.dtype or dtype)
    sixteen = dt == np.float16 or dt.name == "bfloat16"
    return np.dtype(np.float32) if sixteen and not on_gpu else dt


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code (0 ok, 2 bad arguments)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own error message
        return int(exc.code or 0)
    backend = args.backend or ("cuda" if _cuda_available() else "numpy")
    size_set = "quick" if args.quick else ("gpu" if backend == "cuda" else "cpu")
    if args.list:
        width = max(len(n) for n in WORKLOADS)
        for w in WORKLOADS.values():
            sets = ", ".join(s for s in SIZE_SETS if s in w.sizes)
            desc = KINDS[w.kind].describe(w.sizes[sets.split(", ")[0]]) if w.kind in KINDS else ""
            fixed = f" ({w.dtype}{', TF32' if w.tf32 else ''})" if w.dtype else ""
            print(f"{w.name:{width}s} {w.kind:15s} [{sets}] {desc}{fixed}")
        return 0
    if backend == "emulate" and not args.quick:
        print("error: --backend emulate runs the CUDA kernels on a CPU emulator, far too slowly "
              "for the full sizes; use it with --quick", file=sys.stderr)
        return 2
    if backend == "cuda" and not _cuda_available():
        print(f"error: --backend cuda: {gpuconv.available_backends()['cuda']}", file=sys.stderr)
        return 2
    if args.clock == "thread" and (args.threads != 1 or backend == "cuda"):
        print("error: --clock thread measures one thread's CPU time: it needs --threads 1 "
              "and a CPU backend", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads={args.threads} must be at least 1", file=sys.stderr)
        return 2
    if args.repeat is not None and args.repeat < 1:
        print(f"error: --repeat={args.repeat} must be at least 1", file=sys.stderr)
        return 2
    if args.settle is not None and not args.settle >= 0:
        print(f"error: --settle={args.settle} must be at least 0 (seconds)", file=sys.stderr)
        return 2
    if args.dtype == "bfloat16":
        try:
            bench_dtype(args.dtype)
        except ImportError as exc:
            print(f"error: --dtype: {exc}", file=sys.stderr)
            return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("error: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 2
    if args.ops:
        names = [n.strip() for n in args.ops.split(",") if n.strip()]
        unknown = [n for n in names if n not in WORKLOADS]
        if unknown:
            print(f"error: --ops: unknown workload(s) {', '.join(unknown)}; "
                  f"known: {', '.join(WORKLOADS)}", file=sys.stderr)
            return 2
        missing = [n for n in names if size_set not in WORKLOADS[n].sizes]
        if missing:
            print(f"error: --ops: {', '.join(missing)} have no {size_set!r} size",
                  file=sys.stderr)
            return 2
    else:
        names = [n for n, w in WORKLOADS.items() if size_set in w.sizes and w.kind in KINDS]
    repeat = args.repeat or DEFAULT_REPEAT["quick" if args.quick else "full"]
    settle = args.settle if args.settle is not None else (QUICK_SETTLE_S if args.quick
                                                          else SETTLE_S)

    if args.threads is not None:
        problem = _set_threads(args.threads)
        if problem:
            print(f"error: --threads: {problem}", file=sys.stderr)
            return 2
    load_start = _loadavg()
    xp = np
    if backend == "cuda":
        import cupy as xp
    ceilings = {}  # compute dtype name -> Ceilings, made once and timed beside each workload
    for n in names:
        compute = _compute_dtype(WORKLOADS[n], args.dtype, xp is not np)
        if compute.name not in ceilings:
            ceilings[compute.name] = Ceilings(xp, compute, args.quick)

    progress = _Progress(len(names), enabled=not args.no_progress)
    records = []
    try:
        for name in names:
            progress.step(name)
            workload = WORKLOADS[name]
            compute = _compute_dtype(workload, args.dtype, xp is not np)
            records.append(run_workload(workload, size_set=size_set, backend=backend,
                                        dtype=args.dtype, repeat=repeat,
                                        ceilings=ceilings[compute.name], clock=args.clock,
                                        settle_s=settle, layout=args.layout))
            progress.advance()
    finally:
        progress.close()

    machine = machine_info(backend)
    machine["loadavg_start"], machine["loadavg_end"] = load_start, _loadavg()
    for r in records:
        r.update(assess(r, machine))
    peaks_by_dtype = {}  # every interleaved ceiling sample of the run, per dtype
    for dt_name, ceiling in ceilings.items():
        rows = [r["ceilings"] for r in records if r.get("ceilings", {}).get("matmul_dtype")
                == dt_name]
        if rows:
            peaks_by_dtype[dt_name] = ceiling.rates(
                {"ceiling:matmul": [t for c in rows for t in c["matmul_times_s"]],
                 "ceiling:copy": [t for c in rows for t in c["copy_times_s"]]})
    headline = (f"gpuconv bench: backend {backend}, dtype {args.dtype}, layout {args.layout}, "
                f"sizes {size_set!r}, {repeat} interleaved "
                f"samples, median per call, {args.clock} clock"
                + (f", {args.threads} thread(s)" if args.threads else "")
                + f"; {machine['cpu_model']} ({machine['cpu_count']} cores)"
                + (f", {machine['gpu']}" if "gpu" in machine else "")
                + f"; load average {load_start} -> {machine['loadavg_end']}")
    lines = [headline, describe_blas(machine)]
    for dt_name, peak in peaks_by_dtype.items():
        lines.append(
            f"ceilings ({dt_name}, {len(peak['matmul_times_s'])} samples beside the workloads, "
            f"best [min-median]): matmul {peak['flops_per_s'] / 1e9:.1f} "
            f"[{peak['flops_per_s_min'] / 1e9:.1f}-{peak['flops_per_s_median'] / 1e9:.1f}] "
            f"GFLOP/s, copy {peak['bytes_per_s'] / 1e9:.1f} "
            f"[{peak['bytes_per_s_min'] / 1e9:.1f}-{peak['bytes_per_s_median'] / 1e9:.1f}] GB/s")
    print("\n".join(lines))
    if machine["blas_warning"]:
        print(f"warning: {machine['blas_warning']}")
    print(format_table(records))
    print(TABLE_LEGEND)
    notes = flag_notes(records, machine)
    if machine["blas_warning"]:
        notes.insert(0, machine["blas_warning"])
    notes += [f"{r['workload']}: {n}" for r in records for n in r["notes"]]
    notes += [f"{r['workload']}: {r['note']}" for r in records if r["note"]]
    for r in records:
        for peer, v in r["peers"].items():
            if v and v.get("rel_diff") is not None and not v["rel_diff"] <= _CHECK_TOL[r["dtype"]]:
                notes.append(f"{r['workload']}: results differ from {peer} "
                             f"(max rel diff {v['rel_diff']:.2g})")
        nchw = r.get("nchw") or {}
        for name, v in nchw.items():
            if not v["rel_diff"] <= _CHECK_TOL[r["dtype"]]:
                notes.append(f"{r['workload']}: {name}'s channels-last result differs from "
                             f"its NCHW result (max rel diff {v['rel_diff']:.2g})")
        if nchw:
            notes.append(f"{r['workload']}: channels-last time / NCHW time (same rounds): "
                         + ", ".join(f"{name} {v['nhwc_over_nchw']:.2f}"
                                     for name, v in nchw.items())
                         + f"; gpuconv's result is {r.get('out_layout', '?')}")
    for note in notes:
        print(f"note: {note}")
    if args.json:
        doc = {"schema": JSON_SCHEMA, "machine": machine,
               "config": {"backend": backend, "dtype": args.dtype, "layout": args.layout,
                          "size_set": size_set,
                          "repeat": repeat, "copies": COPIES, "min_sample_s": MIN_SAMPLE_S,
                          "settle_s": settle, "threads": args.threads, "clock": args.clock,
                          "thresholds": THRESHOLDS},
               "peaks": peaks_by_dtype, "results": records, "notes": notes}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n\n".join(lines) + f"\n\n{format_table(records, markdown=True)}\n\n"
                    f"{TABLE_LEGEND}\n\n")
            f.write("".join(f"- {note}\n" for note in notes))
    if args.plot:
        write_plot(args.plot, records,
                   f"gpuconv {backend} ({args.dtype}, {args.layout}, {size_set}) - "
                   f"{machine['cpu_model']}"
                   + (f" / {machine['gpu']}" if "gpu" in machine else ""))
    return 0


#: max relative difference to a peer's result before the run notes a mismatch
#: (bfloat16: 8 significant bits, so one rounding of the result is up to 2**-8 = 0.4% of it)
_CHECK_TOL = {"float16": 2e-2, "bfloat16": 3e-2, "float32": 1e-3, "float64": 1e-9}
