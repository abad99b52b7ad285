"""Memory counters of gpuconv's kernels on the benchmark workloads, without a GPU.

Runs each benchmark workload (``gpuconv.bench.workloads``, its ``quick`` size, reduced
further with ``--scale``) once on the emulate backend inside ``gpuconv._emulator.counters()``,
and prints one table row per kernel: global-memory sectors per warp request for loads and
stores (with the efficiency: the fewest sectors the same bytes could take over the sectors
used), shared-memory wavefronts per request (1.00: no bank conflicts), and the bytes that
``ldmatrix`` and ``cp.async`` moved. The figures are counts, not times; see docs/kernels.md
for what they show and how they are counted.

Usage::

    python scripts/emu_counters.py                 # every workload with a quick size
    python scripts/emu_counters.py conv2d_resnet   # some of them
    python scripts/emu_counters.py --sites         # also each kernel's access sites

The first run compiles each kernel module's instrumented "track" build (about a minute per
module, then cached).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import gpuconv
from gpuconv import _emulator as emu
from gpuconv.bench import workloads as wl


def run(names, dtype: str, show_sites: bool) -> str:
    rng = np.random.default_rng(0)
    lines = []
    for name in names:
        w = wl.WORKLOADS[name]
        params = w.sizes.get("quick")
        if params is None:
            continue
        kind = wl.KINDS[w.kind]
        arrays = kind.make(params, w.dtype or dtype, rng)
        with gpuconv.use_backend("emulate"), emu.counters() as c:
            kind.run(arrays, params)
        lines.append(f"## {name}: {kind.describe(params)} ({w.dtype or dtype})")
        lines.append(c.table())
        if show_sites:
            for k in c.kernels.values():
                for s in sorted(k.sites.values(), key=lambda s: (s.site, s.space, s.kind)):
                    per = s.units / s.requests if s.requests else 0.0
                    unit = "sectors" if s.space == "global" else "wavefronts"
                    lines.append(f"    {k.name}  {s.site:28s} {s.space:6s} {s.kind:14s} "
                                 f"{s.requests:7d} req  {per:6.2f} {unit}/req  "
                                 f"ideal {s.ideal / s.requests:6.2f}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workloads", nargs="*", help="workload names (default: all quick ones)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--sites", action="store_true", help="list every access site")
    args = parser.parse_args(argv)
    names = args.workloads or [n for n, w in wl.WORKLOADS.items() if "quick" in w.sizes]
    unknown = [n for n in names if n not in wl.WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {sorted(wl.WORKLOADS)}")
    print(run(names, args.dtype, args.sites))
    return 0


if __name__ == "__main__":
    sys.exit(main())
