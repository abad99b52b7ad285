"""Reliability and output: the flags (:func:`assess`) and their thresholds, the table, the
notes and the chart."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .timing import spread_of

# Reliability thresholds (see :func:`assess` and benchmarks/README.md for why these values).
#: A timing whose samples spread by more than this fraction of their median
#: (``(max - min) / median``) makes its row unreliable.
SPREAD_LIMIT = 0.5
#: Other processes' average CPU use while a row is timed, as a fraction of the machine's
#: cores, above which the row is unreliable.
LOAD_LIMIT = 0.15
#: 1-minute load average per core before the run above which every row is unreliable.
LOADAVG_LIMIT = 0.5
#: ... and after the run: the benchmark itself accounts for up to one thread per core, so
#: only the excess over that is other processes' (the same 0.5 per core).
LOADAVG_END_LIMIT = 1.5
THRESHOLDS = {"spread_limit": SPREAD_LIMIT, "load_limit": LOAD_LIMIT,
              "loadavg_limit": LOADAVG_LIMIT, "loadavg_end_limit": LOADAVG_END_LIMIT}


# ------------------------------------------------------------------------ reliability


def _fastest_peer(record: Mapping):
    peers = {n: v for n, v in record.get("peers", {}).items() if v and v.get("median_s")}
    if not peers:
        return None, None
    name = min(peers, key=lambda n: peers[n]["median_s"])
    return name, peers[name]


def assess(record: Mapping, machine: Mapping | None = None) -> dict:
    """Why a record's numbers cannot be taken at face value: its flags.

    Returns ``{"reliable": bool, "roofline_ok": bool, "flags": [{"code", "text"}, ...]}``.
    Works on records of either JSON schema (``gpuconv-bench/1`` lacks the per-row load and
    ceilings: only what it has is judged). The rules (thresholds in
    ``benchmarks/README.md``):

    * ``spread``: gpuconv's samples or the fastest peer's spread by more than
      :data:`SPREAD_LIMIT` of their median: the ratio could move that much in a rerun.
    * ``load``: other processes kept more than :data:`LOAD_LIMIT` of the machine's cores busy
      on average while the row was timed (:class:`LoadProbe`).
    * ``busy``: the run's 1-minute load average per core was above :data:`LOADAVG_LIMIT`
      before it started, or above :data:`LOADAVG_END_LIMIT` after it (the benchmark itself
      accounts for up to one thread per core): every row of the run gets it.
    * ``ceiling``: the interleaved matrix-product or copy samples spread by more than
      :data:`SPREAD_LIMIT`: the roofline is uncertain.
    * ``roofline``: above 100% of the roofline, which no code can reach: the ceiling was
      measured too low. A measurement error, never a result.

    ``spread``, ``load`` and ``busy`` make the row unreliable (``reliable`` False); any flag
    makes its roofline unreliable (``roofline_ok`` False).
    """
    flags = []
    timings = []
    if record.get("times_s"):
        timings.append(("gpuconv", record["times_s"]))
    peer, peer_result = _fastest_peer(record)
    if peer_result and peer_result.get("times_s"):
        timings.append((peer, peer_result["times_s"]))
    for name, times in timings:
        spread = spread_of(times)["spread"]
        if spread > SPREAD_LIMIT:
            flags.append({"code": "spread",
                          "text": f"{name}'s {len(times)} samples spread by {spread:.0%} of "
                                  f"their median (limit {SPREAD_LIMIT:.0%})"})
    load = record.get("load")
    if load and load.get("others_cores") is not None and \
            load["others_cores"] > LOAD_LIMIT * load["cores"]:
        flags.append({"code": "load",
                      "text": f"other processes kept {load['others_cores']:.2f} of "
                              f"{load['cores']} cores busy while it ran (limit "
                              f"{LOAD_LIMIT * load['cores']:.2f})"})
    busy = _busy(machine) if machine else None
    if busy:
        flags.append({"code": "busy", "text": busy})
    ceilings = record.get("ceilings") or {}
    for key, label in (("flops_spread", "matrix-product"), ("bytes_spread", "copy")):
        if ceilings.get(key) is not None and ceilings[key] > SPREAD_LIMIT:
            flags.append({"code": "ceiling",
                          "text": f"the {label} ceiling's samples spread by "
                                  f"{ceilings[key]:.0%} (limit {SPREAD_LIMIT:.0%})"})
    pct = record.get("roofline_pct")
    if pct is not None and pct > 100:
        flags.append({"code": "roofline",
                      "text": f"{pct:.0f}% of the roofline is a measurement error (no code "
                              f"beats the roofline: a ceiling was measured too low)"})
    codes = {f["code"] for f in flags}
    return {"reliable": not codes & {"spread", "load", "busy"}, "roofline_ok": not codes,
            "flags": flags}


def _busy(machine: Mapping) -> str | None:
    """The run-level load verdict from the load averages before/after, or None."""
    cores = machine.get("cpu_count") or 1
    start, end = machine.get("loadavg_start"), machine.get("loadavg_end")
    if start and start[0] > LOADAVG_LIMIT * cores:
        return (f"the machine was busy before the run (1-minute load average {start[0]:.2f} "
                f"on {cores} cores, limit {LOADAVG_LIMIT * cores:.2f})")
    if end and end[0] > LOADAVG_END_LIMIT * cores:
        return (f"the machine was busy during the run (1-minute load average {end[0]:.2f} "
                f"after it on {cores} cores, limit {LOADAVG_END_LIMIT * cores:.2f})")
    return None


# ----------------------------------------------------------------------------- output


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3g}" if seconds < 1e-2 \
        else f"{seconds * 1e3:.1f}"


def _two_digits(value: float) -> str:
    return f"{float(f'{value:.2g}'):g}"


def _approx(value: float) -> str:
    """``~`` and two significant digits: a number that does not pretend to be exact."""
    return f"~{_two_digits(value)}"


def _stats(entry: Mapping | None) -> dict | None:
    """min/median/max/spread of a record's or a peer's samples (any schema), or None."""
    if not entry or not entry.get("times_s"):
        return None
    return spread_of(entry["times_s"])


def _verdict(r: Mapping) -> dict:
    return r if "reliable" in r else {**r, **assess(r)}


def format_table(records: list[dict], markdown: bool = False) -> str:
    """The table: one row per workload, per-peer times at the right (text or Markdown).

    A reliable row shows the median time, its min-max range and spread, and the ratio to the
    fastest peer. An unreliable one (:func:`assess`) shows ``~`` and two significant digits
    instead of exact-looking figures, and the range of the ratio (gpuconv's fastest sample
    over the peer's slowest, to gpuconv's slowest over the peer's fastest). A roofline above
    100% shows ``ERR``. The ``flags`` column names the reasons; :func:`main` prints them.
    """
    peer_names = []
    for r in records:
        for name in r["peers"]:
            if name not in peer_names and any(x["peers"].get(name) for x in records):
                peer_names.append(name)
    # a channels-last run (records with NCHW twins): the layout and each NHWC/NCHW ratio
    twin_names = []
    for r in records:
        for name in r.get("nchw") or {}:
            if name not in twin_names:
                twin_names.append(name)
    layout_head = ["layout"] + [f"{n} NHWC/NCHW" for n in twin_names] if twin_names else []
    head = ["workload", "backend", "dtype", "time ms", "min-max ms", "spread", "ratio", "vs",
            "GFLOP/s", "GB/s", "% roof"] + [f"{n} ms (spread)" for n in peer_names] \
        + layout_head + ["flags"]
    rows = [head]
    for r in records:
        r = _verdict(r)
        ok = r["reliable"]
        stats = _stats(r)
        t = stats["median_s"] if stats else None
        row = [r["workload"], r["backend"], r["dtype"]]
        if t:
            row += [_ms(t) if ok else _approx(t * 1e3),
                    f"{_ms(stats['min_s'])}-{_ms(stats['max_s'])}", f"{stats['spread']:.0%}"]
        else:
            row += ["-", "-", "-"]
        fastest, peer = _fastest_peer(r)
        peer_stats = _stats(peer)
        if t and peer_stats:
            row.append(f"{t / peer_stats['median_s']:.2f}" if ok else
                       f"{_two_digits(stats['min_s'] / peer_stats['max_s'])}.."
                       f"{_two_digits(stats['max_s'] / peer_stats['min_s'])}")
            row.append(fastest)
        else:
            row += ["-", "-"]
        if t:
            pct = r.get("roofline_pct")
            row += [f"{r['flops'] / t / 1e9:.1f}" if ok else _approx(r["flops"] / t / 1e9),
                    f"{r['bytes'] / t / 1e9:.1f}" if ok else _approx(r["bytes"] / t / 1e9),
                    "-" if pct is None else f"{pct:.0f} ERR" if pct > 100 else
                    f"{pct:.0f}" if r["roofline_ok"] else _approx(pct)]
        else:
            row += ["-", "-", "-"]
        for name in peer_names:
            s = _stats(r["peers"].get(name))
            row.append("-" if s is None else
                       f"{_ms(s['median_s']) if ok else _approx(s['median_s'] * 1e3)} "
                       f"({s['spread']:.0%})")
        if twin_names:
            nchw = r.get("nchw") or {}
            row.append("NHWC" if r.get("layout") == "channels_last" else "NCHW")
            row += ["-" if name not in nchw else f"{nchw[name]['nhwc_over_nchw']:.2f}"
                    if ok else _approx(nchw[name]["nhwc_over_nchw"]) for name in twin_names]
        codes = list(dict.fromkeys(f["code"] for f in r["flags"]))
        row.append(", ".join(codes) if codes else "-")
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join(" --- " if i < 3 or i == len(head) - 1 else " ---: "
                                       for i in range(len(head))) + "|")
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) if 3 <= i < len(head) - 1 else str(c).ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


TABLE_LEGEND = (
    "time = median of the samples, per call; spread = (max - min) / median; ratio = gpuconv "
    "time / fastest peer time (< 1: gpuconv faster); % roof = 100 * max(F/peak_flops, "
    "B/peak_bw) / time, with the ceilings timed in the same rounds. '~': an unreliable row "
    "(flags spread/load/busy), the ratio shows its range; 'ERR': above the roofline, a "
    "measurement error. With --layout channels_last: layout = the input's (NHWC: a "
    "channels-last view; 1-D inputs stay NCHW), X NHWC/NCHW = X's time on the channels-last "
    "input / its time on the NCHW input, timed in the same rounds (< 1: NHWC faster).")


def flag_notes(records: list[dict], machine: Mapping | None = None) -> list[str]:
    """The run-level load once, then one note per flagged row with its reasons."""
    notes = []
    busy = _busy(machine) if machine else None
    if busy:
        notes.append(f"{busy}: every row is unreliable")
    for r in records:
        r = _verdict(r)
        texts = [f["text"] for f in r["flags"] if f["code"] != "busy"]
        if texts:
            verdict = "unreliable" if not r["reliable"] else "roofline not to be trusted"
            notes.append(f"{r['workload']}: {verdict}: " + "; ".join(texts))
    return notes


def plot_records(records: list[dict], title: str):
    """The chart, as a matplotlib figure: gpuconv's time / each peer's time per workload
    (log scale; unreliable rows hatched and pale, with the ratio's range as an error bar),
    and % of roofline (red ``ERR`` above 100%, hatched where uncertain)."""
    import matplotlib.pyplot as plt

    timed = [_verdict(r) for r in records if _stats(r)]
    names = [r["workload"] for r in timed]
    peers = sorted({p for r in timed for p, v in r["peers"].items() if _stats(v)})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(names) + 4), 4.8))
    colors = {peer: f"C{j}" for j, peer in enumerate(peers)}
    for i, r in enumerate(timed):  # each workload's bars centred on its tick
        mine = _stats(r)
        present = [p for p in peers if _stats(r["peers"].get(p))]
        width = 0.8 / max(1, len(present))
        for j, peer in enumerate(present):
            theirs = _stats(r["peers"][peer])
            ratio = mine["median_s"] / theirs["median_s"]
            lo, hi = mine["min_s"] / theirs["max_s"], mine["max_s"] / theirs["min_s"]
            ax1.bar(i + (j - (len(present) - 1) / 2) * width, ratio, width,
                    color=colors[peer], label=f"vs {peer}",
                    alpha=1.0 if r["reliable"] else 0.4, hatch=None if r["reliable"] else "//",
                    yerr=[[ratio - lo], [hi - ratio]], ecolor="0.3", capsize=2)
    handles, labels = ax1.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax1.axhline(1.0, color="black", linewidth=0.8)
    ax1.set_yscale("log")
    ax1.set_ylabel("gpuconv time / peer time (lower is better)\n"
                   "bars: median; whiskers: min-max range")
    ax1.set_xticks(np.arange(len(names)), [n if r["reliable"] else f"~ {n}"
                                           for n, r in zip(names, timed)],
                   rotation=40, ha="right")
    for tick, r in zip(ax1.get_xticklabels(), timed):
        if not r["reliable"]:
            tick.set_color("tab:red")
    if unique:
        ax1.legend(unique.values(), unique.keys(), fontsize=8)
    ax1.set_title("time ratio ('~': unreliable, hatched)")
    pcts = [r.get("roofline_pct") or 0.0 for r in timed]
    colors2 = ["tab:red" if p > 100 else "tab:green" if r["roofline_ok"] else "tab:olive"
               for p, r in zip(pcts, timed)]
    bars = ax2.bar(np.arange(len(names)), pcts, color=colors2)
    for bar, p, r in zip(bars, pcts, timed):
        if not r["roofline_ok"]:
            bar.set_hatch("//")
    ax2.bar_label(bars, labels=[f"{p:.0f} ERR" if p > 100 else f"{p:.0f}" if r["roofline_ok"]
                                else _approx(p) for p, r in zip(pcts, timed)], fontsize=8)
    ax2.axhline(100, color="tab:red", linestyle="--", linewidth=0.8)
    ax2.set_xticks(np.arange(len(names)), names, rotation=40, ha="right")
    ax2.set_ylabel("% of roofline")
    ax2.set_title("gpuconv: % of roofline (ERR: > 100%, a measurement error)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def write_plot(path: str, records: list[dict], title: str) -> None:
    """:func:`plot_records`, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plot_records(records, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
