"""Put benchmark runs side by side: ``python benchmarks/compare_runs.py A.json B.json ...``.

Prints, per run, NumPy's BLAS kernel, the OPENBLAS_* variables, the load and the ceilings,
then one line per workload with each run's ratio (gpuconv / fastest peer), judged by the
benchmark's own rules: ``~x (lo-hi)`` for a row flagged unreliable, ``ERR`` for a roofline
above 100%. As a Markdown table with ``--markdown``. Made for ``remeasure.sh``'s native vs
pinned-kernel runs, but any runs of either JSON schema will do.
"""

from __future__ import annotations

import json
import pathlib
import sys

from gpuconv import bench


def _two(x: float) -> str:
    """Two significant digits, never in exponent notation."""
    return f"{float(f'{x:.2g}'):g}"


def _blas(machine) -> str:
    blas = machine.get("blas")
    if isinstance(blas, dict):
        return bench.describe_blas(machine)
    libs = [lib for lib in blas or [] if isinstance(lib, dict) and lib.get("user_api") == "blas"]
    return "BLAS " + ("; ".join(f"{lib.get('internal_api')} {lib.get('version')} "
                                f"{lib.get('architecture')}" for lib in libs) or "unknown")


def _ratio(r) -> str:
    peers = [v for v in r["peers"].values() if v and v.get("times_s")]
    if not r.get("times_s") or not peers:
        return "-"
    peer = min(peers, key=lambda v: v["median_s"])
    ratio = r["median_s"] / peer["median_s"]
    if r["reliable"]:
        return f"{ratio:.2f}"
    lo = min(r["times_s"]) / max(peer["times_s"])
    hi = max(r["times_s"]) / min(peer["times_s"])
    return f"~{_two(ratio)} ({_two(lo)}-{_two(hi)})"


def _roof(r) -> str:
    pct = r.get("roofline_pct")
    if pct is None:
        return "-"
    return f"{pct:.0f} ERR" if pct > 100 else f"{pct:.0f}" if r["roofline_ok"] else f"~{_two(pct)}"


def _key(r) -> tuple:
    """A result's row: (workload, dtype, layout); older runs have neither field."""
    layout = r.get("layout") or "contiguous"
    return (r["workload"], r.get("dtype") or "-", "NHWC" if layout == "channels_last" else "NCHW")


def main(paths: list[str]) -> int:
    markdown = "--markdown" in paths
    paths = [p for p in paths if p != "--markdown"]
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    docs = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    names = [pathlib.Path(p).stem for p in paths]
    for name, doc in zip(names, docs):
        machine = doc["machine"]
        for r in doc["results"]:
            r.update(bench.assess(r, machine))
        peaks = "; ".join(f"{dt}: matmul {p['flops_per_s'] / 1e9:.0f} GFLOP/s, copy "
                          f"{p['bytes_per_s'] / 1e9:.1f} GB/s" for dt, p in doc["peaks"].items())
        blas = _blas(machine)
        print(f"{name}: {machine.get('date')}, load {machine.get('loadavg_start')} -> "
              f"{machine.get('loadavg_end')}, env {machine.get('env') or '{}'}; {blas}; {peaks}")
    keys = list(dict.fromkeys(_key(r) for doc in docs for r in doc["results"]))
    # a row per (workload, dtype, layout): runs with --dtype or --layout channels_last hold
    # the same workload more than once; the label names what varies
    varies = [len({k[i] for k in keys}) > 1 for i in range(3)]
    head = ["workload"] + [f"{n} ratio" for n in names] + [f"{n} % roof" for n in names]
    rows = [head]
    for key in keys:
        found = [next((r for r in doc["results"] if _key(r) == key), None) for doc in docs]
        label = " ".join([key[0]] + [str(key[i]) for i in (1, 2) if varies[i]])
        rows.append([label] + [_ratio(r) if r else "-" for r in found]
                    + [_roof(r) if r else "-" for r in found])
    if markdown:
        print("\n".join("| " + " | ".join(row) + " |" for row in rows[:1])
              + "\n|" + "|".join([" --- "] + [" ---: "] * (len(head) - 1)) + "|\n"
              + "\n".join("| " + " | ".join(row) + " |" for row in rows[1:]))
    else:
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        for row in rows:
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(row, widths))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
