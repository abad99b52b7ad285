"""``python -m gpuconv bench``: the counts, the timer, and a --quick run end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from gpuconv import bench
from gpuconv.bench import cli, machine, runner, timing, workloads

# ---------------------------------------------------------------- FLOPs and bytes


def test_flops_hand_computed():
    # conv1d 1x1x5, k=3, no padding: 3 outputs * 3 taps * 1 channel, 2 FLOPs each
    assert bench.flops("conv", dict(n=1, c_in=1, c_out=1, size=(5,), kernel=3, padding=0)) == 18
    # conv2d 2x3x5x5 -> 4, 3x3, pad 1: out 5x5, each output 3*9 multiply-adds
    assert bench.flops("conv", dict(n=2, c_in=3, c_out=4, size=(5, 5), kernel=3,
                                    padding=1)) == 2 * (2 * 4 * 25) * (3 * 9)
    # stride 2: out (7 + 2 - 3) // 2 + 1 = 4 per dim
    assert bench.flops("conv", dict(n=1, c_in=1, c_out=1, size=(7, 7), kernel=3, stride=2,
                                    padding=1)) == 2 * 16 * 9
    # groups: each output sees c_in / groups channels
    assert bench.flops("conv", dict(n=1, c_in=4, c_out=2, size=(3,), kernel=1, padding=0,
                                    groups=2)) == 2 * (2 * 3) * 2
    # transpose 1x2x3 -> 1, k=2, stride 2: each of 2*3 inputs feeds 1 channel * 2 taps
    assert bench.flops("conv_transpose", dict(n=1, c_in=2, c_out=1, size=(3,), kernel=2,
                                              stride=2, padding=0)) == 24
    # depthwise 1x2x4x4, 3x3, pad 1: 2*16 outputs, 9 taps each
    assert bench.flops("depthwise", dict(n=1, c=2, size=(4, 4), kernel=3, padding=1)) == 2 * 32 * 9
    # separable: the depthwise above + pointwise 2 -> 5 on 16 positions
    assert bench.flops("separable", dict(n=1, c=2, c_out=5, size=(4, 4), kernel=3,
                                         padding=1)) == 2 * 32 * 9 + 2 * 5 * 16 * 2
    # deform 1x1x2x2 -> 1, 1x1 kernel: GEMM 2*4 + 4 samples * (8 + 1 for the mask)
    assert bench.flops("deform", dict(n=1, c_in=1, c_out=1, size=(2, 2), kernel=1,
                                      padding=0, mask=True)) == 8 + 4 * 9
    # convolve 'same' of 10 samples with 3 taps: 10 outputs * 3 taps
    assert bench.flops("convolve", dict(length=10, taps=3, mode="same")) == 60
    assert bench.flops("convolve", dict(length=10, taps=3, mode="full")) == 2 * 12 * 3
    assert bench.flops("convolve", dict(length=10, taps=3, mode="valid")) == 2 * 8 * 3


def test_backward_flops_hand_computed():
    # conv1d 1x1x5, k=3, no padding: 3 outputs * 3 taps multiply-adds for the input
    # gradient (each grad_output value times each tap), as many for the weight gradient
    assert bench.flops("backward", dict(op="conv", n=1, c_in=1, c_out=1, size=(5,), kernel=3,
                                        padding=0)) == 2 * 9 + 2 * 9
    # conv2d 2x3x5x5 -> 4, 3x3, pad 1: 2*4*25 outputs * 3*9 taps, once per gradient
    assert bench.flops("backward", dict(op="conv", n=2, c_in=3, c_out=4, size=(5, 5),
                                        kernel=3, padding=1)) == 2 * 2 * (2 * 4 * 25) * 27
    # transpose 1x2x3 -> 1, k=2, stride 2: 2*3 inputs * 2 taps, per gradient
    assert bench.flops("backward", dict(op="conv_transpose", n=1, c_in=2, c_out=1, size=(3,),
                                        kernel=2, stride=2, padding=0)) == 2 * 2 * 12
    # depthwise 1x2x4x4, 3x3, pad 1: 32 outputs * 9 taps, per gradient
    assert bench.flops("backward", dict(op="depthwise", n=1, c=2, size=(4, 4), kernel=3,
                                        padding=1)) == 2 * 2 * 32 * 9
    # deform 1x1x2x2 -> 1, 1x1 kernel, mask: 4 outputs, one multiply-add each for the
    # column gradient and for the weight gradient (2 * 8), and per each of the 4 samples
    # 8 (resample) + 8 (scatter) + 16 (offset) + 1 (mask product) + 2 (mask gradient)
    assert bench.flops("backward", dict(op="deform", n=1, c_in=1, c_out=1, size=(2, 2),
                                        kernel=1, padding=0, mask=True)) == 16 + 4 * 35
    assert bench.flops("backward", dict(op="deform", n=1, c_in=1, c_out=1, size=(2, 2),
                                        kernel=1, padding=0, mask=False)) == 16 + 4 * 32


def test_traffic_bytes_counts_inputs_weights_output_once():
    params = dict(n=2, c_in=3, c_out=4, size=(5, 5), kernel=3, padding=1)
    arrays = bench.KINDS["conv"].make(params, np.float32, np.random.default_rng(0))
    expected = (2 * 3 * 25 + 4 * 3 * 9 + 2 * 4 * 25) * 4
    assert bench.traffic_bytes("conv", params, arrays, 4) == expected


def test_backward_traffic_bytes_counts_gradients_as_outputs():
    # conv: x, weight and grad_output read; grad x and grad weight written
    params = dict(op="conv", n=2, c_in=3, c_out=4, size=(5, 5), kernel=3, padding=1)
    arrays = bench.KINDS["backward"].make(params, np.float32, np.random.default_rng(0))
    x, weight, go = 2 * 3 * 25, 4 * 3 * 9, 2 * 4 * 25
    assert bench.traffic_bytes("backward", params, arrays, 4) == (x + weight + go + x + weight) * 4
    # deform 1x2x3x3 -> 5, 3x3, pad 1, mask: out 3x3; offset 2*9 and mask 9 maps of 3x3
    params = dict(op="deform", n=1, c_in=2, c_out=5, size=(3, 3), kernel=3, padding=1, mask=True)
    arrays = bench.KINDS["backward"].make(params, np.float32, np.random.default_rng(0))
    x, offset, weight, mask, go = 18, 18 * 9, 5 * 2 * 9, 9 * 9, 5 * 9
    assert bench.traffic_bytes("backward", params, arrays, 4) == \
        (x + offset + weight + mask + go + x + offset + weight + mask) * 4


def _forward_of(op, arrays, params):
    """The forward call of a backward workload, through the public API, in float64."""
    import gpuconv

    kw = {k: params[k] for k in ("stride", "padding", "groups") if k in params}
    if op == "conv":
        return gpuconv.conv(arrays["x"], arrays["weight"], **kw)
    if op == "conv_transpose":
        return gpuconv.conv_transpose(arrays["x"], arrays["weight"], **kw)
    if op == "depthwise":
        return gpuconv.depthwise_conv(arrays["x"], arrays["dw_weight"], **kw)
    return gpuconv.deform_conv2d(arrays["x"], arrays["offset"], arrays["weight"],
                                 mask=arrays.get("mask"), **kw)


@pytest.mark.parametrize("name", [f"{n}_backward" for n in bench.BACKWARD_OF])
def test_backward_workload_gradients_match_their_forward(name):
    """Each backward workload differentiates its own forward: the forward is linear in x and
    in the weight (and in the mask), so <grad_output, forward> equals <grad_a, a> for each
    such array a (Euler's identity for a degree-1 function). This checks the workload passes
    the forward's geometry and returns the gradients in the order of its arrays."""
    workload = bench.WORKLOADS[name]
    params = dict(workload.sizes["quick"])
    op = params.pop("op")
    arrays = bench.KINDS["backward"].make({**params, "op": op}, np.float64,
                                          np.random.default_rng(1))
    grads = bench.KINDS["backward"].run(arrays, {**params, "op": op})
    names = ["x", "dw_weight" if op == "depthwise" else "weight"]
    if op == "deform":
        names = ["x", "offset", "weight", "mask"]
    assert [g.shape for g in grads] == [arrays[k].shape for k in names]
    forward = _forward_of(op, arrays, params)
    total = float(np.vdot(arrays["grad_output"], forward))
    for key, g in zip(names, grads):
        if key == "offset":  # not linear: checked against torchvision in the quick run
            continue
        assert float(np.vdot(g, arrays[key])) == pytest.approx(total, rel=1e-10), key


def test_roofline_pct():
    peaks = {"flops_per_s": 1000.0, "bytes_per_s": 100.0}
    # compute-bound: F/P = 0.1 s, B/W = 0.01 s; a run of 0.2 s reaches half
    assert bench.roofline_pct(100, 1, 0.2, peaks) == pytest.approx(50.0)
    # memory-bound: B/W = 0.5 s dominates
    assert bench.roofline_pct(100, 50, 1.0, peaks) == pytest.approx(50.0)


# ------------------------------------------------------------------------- timing


class _FakeTimer:
    device = "cpu"

    def __init__(self):
        self.calls = 0

    def sync(self):
        pass

    def sample(self, fn, number):
        for _ in range(number):
            fn()
        self.calls += 1
        return 0.01


def test_time_side_by_side_rotates_inputs_and_samples_each():
    used = {"a": [], "b": []}
    impls = {name: [lambda name=name, i=i: used[name].append(i) for i in range(3)]
             for name in used}
    times = bench.time_side_by_side(impls, _FakeTimer(), repeat=5, warmup=1, settle_s=0)
    assert set(times) == {"a", "b"}
    assert all(len(t) == 5 and all(v == 0.01 for v in t) for t in times.values())
    for name in used:  # every input set is used in turn
        assert set(used[name]) == {0, 1, 2}


def test_time_side_by_side_interleaves_round_robin_with_a_pause_before_each_sample():
    order, pauses = [], []

    class Timer(_FakeTimer):
        def sample(self, fn, number):
            order.append(fn.__name__)
            return 0.01

    def impl(name):
        def fn():
            pass
        fn.__name__ = name
        return [fn]

    impls = {name: impl(name) for name in ("a", "b", "c")}
    bench.time_side_by_side(impls, Timer(), repeat=4, warmup=0, settle_s=0.5,
                            sleep=pauses.append)
    calibration, samples = order[:3], order[3:]
    assert calibration == ["a", "b", "c"]
    # one sample of each per round, the round's first one rotating: a burst of load cannot
    # land on one implementation's samples only
    assert samples == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert pauses == [0.5] * (3 + 12)  # before each calibration and each sample


def test_spread_of_hand_computed():
    assert bench.spread_of([4.0, 1.0, 2.0]) == {"min_s": 1.0, "median_s": 2.0, "max_s": 4.0,
                                                "spread": 1.5}
    assert bench.spread_of([3.0, 3.0])["spread"] == 0.0


# --------------------------------------------- reliability: a deliberately noisy run
#
# A stand-in workload kind, a scripted timer and stand-in ceilings: every sample time is
# chosen by the test, so the noise is injected deterministically. The workload counts
# 1e9 FLOPs and 16 bytes; the stand-in matrix product 2 * 1000**3 FLOPs, the copy 2 * 1e6
# bytes per call.

_TAG = []


def _tagged(tag, value=None):
    def fn():
        _TAG.append(tag)
        return value
    return fn


class _ScriptedTimer(_FakeTimer):
    """Returns the scripted seconds of whichever implementation it is handed: its first
    value for the calibration call, then one per sample."""

    def __init__(self, script):
        super().__init__()
        self.script = {k: [v[0]] + list(v) for k, v in script.items()}
        self.count = {}

    def sample(self, fn, number):
        fn()
        tag = _TAG[-1]
        k = self.count[tag] = self.count.get(tag, -1) + 1
        return self.script[tag][min(k, len(self.script[tag]) - 1)]


class _StandInCeilings(bench.Ceilings):
    def __init__(self):
        self.matmul_n, self.dtype, self.copy_bytes = 1000, "float32", 10 ** 6
        self._matmul, self._copy = _tagged("matmul"), _tagged("copy")


class _FixedLoad:
    def __init__(self, others_cores, cores=2):
        self.value = {"others_cores": others_cores, "cores": cores, "seconds": 1.0}

    def start(self):
        pass

    def stop(self):
        return self.value


@pytest.fixture
def stand_in_workload(monkeypatch):
    result = np.ones(4, np.float32)
    kind = bench.Kind(make=lambda p, dtype, rng: {"x": np.zeros(4, dtype)},
                      run=lambda a, p: _tagged("gpuconv", result)(),
                      flops=lambda p: 10 ** 9, out_elements=lambda p: 0,
                      peers={"peer": lambda device, a, p: _tagged("peer", result)})
    monkeypatch.setitem(bench.KINDS, "stand_in", kind)
    return bench.Workload("stand_in_workload", "stand_in", {"quick": {}})


def _run_scripted(workload, script, others_cores=0.0):
    return bench.run_workload(workload, size_set="quick", backend="numpy", dtype="float32",
                              repeat=3, ceilings=_StandInCeilings(),
                              timer=_ScriptedTimer(script), settle_s=0,
                              load_probe=_FixedLoad(others_cores))


_QUIET = {"gpuconv": [0.010] * 3, "peer": [0.020] * 3, "matmul": [0.010] * 3,
          "copy": [1e-4] * 3}


def test_quiet_run_is_reliable_and_printed_exactly(stand_in_workload):
    r = _run_scripted(stand_in_workload, _QUIET)
    assert r["reliable"] and r["roofline_ok"] and r["flags"] == []
    assert (r["min_s"], r["median_s"], r["max_s"], r["spread"]) == (0.010, 0.010, 0.010, 0.0)
    assert r["ratio"] == pytest.approx(0.5)
    # the ceilings timed beside it: 2e9 FLOP / 10 ms = 200 GFLOP/s, 2e6 B / 0.1 ms = 20 GB/s
    assert r["ceilings"]["flops_per_s"] == pytest.approx(2e11)
    assert r["ceilings"]["bytes_per_s"] == pytest.approx(2e10)
    # 1e9 FLOP at 200 GFLOP/s take 5 ms; the workload took 10 ms
    assert r["roofline_pct"] == pytest.approx(50.0)
    row = bench.format_table([r]).splitlines()[2].split()
    assert row[3:8] == ["10.0", "10.0-10.0", "0%", "0.50", "peer"]
    assert row[10] == "50" and row[-1] == "-"


def test_noisy_samples_mark_the_row_unreliable(stand_in_workload):
    # one slow sample in three: median 10 ms, but (30 - 10) / 10 = 200% spread
    r = _run_scripted(stand_in_workload, {**_QUIET, "gpuconv": [0.010, 0.010, 0.030]})
    assert (r["min_s"], r["median_s"], r["max_s"]) == (0.010, 0.010, 0.030)
    assert r["spread"] == pytest.approx(2.0)
    assert not r["reliable"] and [f["code"] for f in r["flags"]] == ["spread"]
    assert "200%" in r["flags"][0]["text"] and "gpuconv" in r["flags"][0]["text"]
    # the ratio's range: 10 / 20 .. 30 / 20
    assert (r["ratio_min"], r["ratio_max"]) == (pytest.approx(0.5), pytest.approx(1.5))
    row = bench.format_table([r]).splitlines()[2].split()
    assert row[3] == "~10" and row[5] == "200%" and row[6] == "0.5..1.5"
    assert "10.0" not in row[:5] and "0.50" not in row  # no exact-looking figure
    assert row[-1] == "spread"
    # the peer's spread counts too
    r = _run_scripted(stand_in_workload, {**_QUIET, "peer": [0.020, 0.050, 0.020]})
    assert not r["reliable"] and "peer's 3 samples" in r["flags"][0]["text"]


def test_other_processes_load_marks_the_row_unreliable(stand_in_workload):
    limit = bench.LOAD_LIMIT * 2
    r = _run_scripted(stand_in_workload, _QUIET, others_cores=limit * 0.9)
    assert r["reliable"]
    r = _run_scripted(stand_in_workload, _QUIET, others_cores=limit * 1.1)
    assert not r["reliable"] and [f["code"] for f in r["flags"]] == ["load"]
    assert bench.format_table([r]).splitlines()[2].split()[3] == "~10"


def test_load_average_marks_every_row(stand_in_workload):
    r = _run_scripted(stand_in_workload, _QUIET)
    quiet = {"cpu_count": 2, "loadavg_start": [0.9, 0, 0], "loadavg_end": [2.9, 0, 0]}
    assert bench.assess(r, quiet)["reliable"]
    for busy in ({**quiet, "loadavg_start": [1.1, 0, 0]},   # > 0.5 per core before
                 {**quiet, "loadavg_end": [3.1, 0, 0]}):    # > 1.5 per core after
        verdict = bench.assess(r, busy)
        assert not verdict["reliable"] and verdict["flags"][0]["code"] == "busy"
        notes = bench.flag_notes([{**r, **verdict}], busy)
        assert len(notes) == 1 and "every row is unreliable" in notes[0]


def test_roofline_above_100_percent_is_flagged_as_a_measurement_error(stand_in_workload):
    # the ceiling's matrix product was disturbed in every round: 2e9 FLOP / 100 ms = 20
    # GFLOP/s, so the workload's 1e9 FLOP in 10 ms would be 500% of the "roofline"
    r = _run_scripted(stand_in_workload, {**_QUIET, "matmul": [0.100] * 3})
    assert r["roofline_pct"] == pytest.approx(500.0)
    assert r["reliable"] and not r["roofline_ok"]
    assert [f["code"] for f in r["flags"]] == ["roofline"]
    assert "measurement error" in r["flags"][0]["text"]
    row = bench.format_table([r]).splitlines()[2]
    assert "500 ERR" in row and row.split()[-1] == "roofline"
    assert "500 ERR" in bench.format_table([r], markdown=True)
    # the fastest ceiling sample is the ceiling: one undisturbed round is enough
    r = _run_scripted(stand_in_workload, {**_QUIET, "matmul": [0.100, 0.010, 0.100]})
    assert r["roofline_pct"] == pytest.approx(50.0)
    assert [f["code"] for f in r["flags"]] == ["ceiling"]  # but its spread is reported
    assert bench.format_table([r]).splitlines()[2].split()[10] == "~50"


def test_chart_shows_the_flags(stand_in_workload):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [_run_scripted(stand_in_workload, _QUIET),
               _run_scripted(stand_in_workload, {**_QUIET, "matmul": [0.100] * 3}),
               _run_scripted(stand_in_workload, {**_QUIET, "gpuconv": [0.010, 0.010, 0.030]})]
    fig = bench.plot_records(records, "scripted")
    ratio_ax, roof_ax = fig.axes
    assert [t.get_text() for t in roof_ax.texts] == ["50", "500 ERR", "~50"]
    labels = [t.get_text() for t in ratio_ax.get_xticklabels()]
    assert [label.startswith("~") for label in labels] == [False, False, True]
    plt.close(fig)


def test_no_ceilings_no_roofline(stand_in_workload):
    r = bench.run_workload(stand_in_workload, size_set="quick", backend="numpy",
                           dtype="float32", repeat=3, timer=_ScriptedTimer(_QUIET), settle_s=0,
                           load_probe=_FixedLoad(0.0))
    assert r["roofline_pct"] is None and r["reliable"] and "ceilings" not in r
    assert bench.format_table([r]).splitlines()[2].split()[10] == "-"


def test_old_schema_records_are_judged_from_their_samples():
    """The committed gpuconv-bench/1 results have samples but no flags, load or ceilings."""
    r = {"workload": "w", "backend": "numpy", "dtype": "float32", "flops": 10 ** 9,
         "bytes": 16, "median_s": 0.01, "times_s": [0.01, 0.01, 0.03], "roofline_pct": 201.0,
         "ratio": 0.5, "peers": {"torch": {"median_s": 0.02, "times_s": [0.02] * 3}}}
    verdict = bench.assess(r, {"cpu_count": 2, "loadavg_start": [0.3], "loadavg_end": [0.5]})
    assert [f["code"] for f in verdict["flags"]] == ["spread", "roofline"]
    row = bench.format_table([r]).splitlines()[2].split()
    assert row[3] == "~10" and "201 ERR" in bench.format_table([r])


def test_load_probe_sees_a_busy_process():
    """Real noise: busy processes outside this one show up as other processes' load."""
    cores = timing._cpu_stat()
    if cores is None:
        pytest.skip("no /proc/stat: the load probe has nothing to read here")
    count = math.ceil(bench.LOAD_LIMIT * cores[1]) + 1
    probe = bench.LoadProbe()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(count)]
    try:
        time.sleep(0.3)  # let them start
        probe.start()
        time.sleep(0.6)
        load = probe.stop()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert load["cores"] == cores[1]
    assert load["others_cores"] > bench.LOAD_LIMIT * load["cores"]
    record = {"workload": "w", "peers": {}, "load": load}
    assert [f["code"] for f in bench.assess(record)["flags"]] == ["load"]


# ------------------------------------------------------------- BLAS and its kernel

_AVX512 = {"sse2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}


def test_cpu_kernel_level_from_flags():
    assert bench.cpu_kernel_level(set()) is None
    assert bench.cpu_kernel_level({"sse2"}) == 0
    assert bench.cpu_kernel_level({"sse2", "avx"}) == 1
    assert bench.cpu_kernel_level({"avx", "avx2", "fma"}) == 2
    assert bench.cpu_kernel_level(_AVX512) == 3
    assert bench.cpu_kernel_level(_AVX512 | {"avx512_bf16"}) == 4
    assert bench.cpu_kernel_level(_AVX512 | {"avx512_bf16", "amx_bf16"}) == 5


def test_openblas_coretype_pinning_an_older_kernel_warns():
    warning = bench.openblas_kernel_warning("Haswell", {"OPENBLAS_CORETYPE": "Haswell",
                                                        "OPENBLAS_L2_SIZE": "1048576"}, _AVX512)
    assert "OPENBLAS_CORETYPE=Haswell" in warning and "SkylakeX" in warning
    assert "OPENBLAS_L2_SIZE=1048576" in warning
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" in warning
    # the native kernel, or a CPU with nothing newer: nothing to say
    assert bench.openblas_kernel_warning("SkylakeX", {}, _AVX512) is None
    assert bench.openblas_kernel_warning("Haswell", {"OPENBLAS_CORETYPE": "Haswell"},
                                         {"avx", "avx2", "fma"}) is None
    assert bench.openblas_kernel_warning("Zen", {}, {"avx", "avx2", "fma"}) is None
    # unknown kernel or CPU: no guess
    assert bench.openblas_kernel_warning("NewCore", {"OPENBLAS_CORETYPE": "NewCore"},
                                         _AVX512) is None
    assert bench.openblas_kernel_warning("Haswell", {"OPENBLAS_CORETYPE": "Haswell"},
                                         set()) is None
    # a newer kernel than the CPU can run
    assert "newer than this CPU supports (Haswell)" in bench.openblas_kernel_warning(
        "SkylakeX", {"OPENBLAS_CORETYPE": "SkylakeX"}, {"avx", "avx2", "fma"})
    # an older kernel without the variable: a milder note, no "pins"
    note = bench.openblas_kernel_warning("Haswell", {}, _AVX512)
    assert "pins" not in note and "SkylakeX" in note


def test_blas_info_records_numpys_library_and_kernel():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    info = bench.blas_info()
    lib = info["numpy"]
    assert lib is not None and lib["user_api"] == "blas"
    for key in ("internal_api", "version", "num_threads"):
        assert key in lib
    # the same library threadpoolctl finds under NumPy's own directory
    ours = [x for x in threadpoolctl.threadpool_info() if x["user_api"] == "blas"
            and "numpy" in os.path.dirname(x["filepath"])]
    if ours:
        assert (lib["internal_api"], lib["version"]) == (ours[0]["internal_api"],
                                                         ours[0]["version"])
    if lib["internal_api"] == "openblas":
        assert lib["architecture"].lower() in bench.OPENBLAS_KERNEL_LEVEL
    machine = bench.machine_info("numpy")
    assert machine["blas"]["numpy"] == lib
    assert lib["internal_api"] in bench.describe_blas(machine)


def test_pinned_older_kernel_is_recorded_and_warned_in_a_subprocess():
    """With OPENBLAS_CORETYPE=Sandybridge (AVX, older than any AVX2 CPU's kernel) OpenBLAS
    runs that kernel, the record says so, and the run warns. Only an *older* kernel is
    pinned, in a subprocess that computes nothing, and OPENBLAS_L2_SIZE is left as it is:
    the tests never run OpenBLAS's native kernel where the machine pins another."""
    pytest.importorskip("threadpoolctl")
    if (bench.cpu_kernel_level(machine._cpu_flags()) or 0) < 2:
        pytest.skip("needs an x86 Linux CPU with AVX2")
    if bench.blas_info()["numpy"]["internal_api"] != "openblas":
        pytest.skip("NumPy does not use OpenBLAS here")
    code = ("import json; from gpuconv import bench; m = bench.machine_info('numpy'); "
            "print(json.dumps([m['blas']['numpy']['architecture'], m['blas_warning'], "
            "m['env']]))")
    env = {**os.environ, "OPENBLAS_CORETYPE": "Sandybridge"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    architecture, warning, recorded_env = json.loads(out)
    assert architecture == "Sandybridge"
    assert recorded_env["OPENBLAS_CORETYPE"] == "Sandybridge"
    assert "OPENBLAS_CORETYPE=Sandybridge pins" in warning


def test_cuda_timer_uses_events(monkeypatch):
    """The GPU timer, with CuPy replaced by a stand-in (no device here)."""
    log = []

    class Event:
        def __init__(self):
            self.name = f"event{len([e for e in log if e[0] == 'new'])}"
            log.append(("new", self.name))

        def record(self):
            log.append(("record", self.name))

        def synchronize(self):
            log.append(("sync", self.name))

    cuda = types.SimpleNamespace(
        Event=Event,
        get_elapsed_time=lambda start, stop: 8.0,  # milliseconds
        Device=lambda: types.SimpleNamespace(synchronize=lambda: log.append(("device",))),
    )
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    timer = bench.CudaTimer()
    calls = []
    seconds = timer.sample(lambda: calls.append(1), 4)
    assert seconds == pytest.approx(8.0 / 1e3 / 4)
    assert len(calls) == 4
    assert [e[0] for e in log[-3:]] == ["record", "record", "sync"]


# -------------------------------------------------------------------- the command


def test_list_and_bad_arguments(capsys):
    assert bench.main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in ("conv2d_resnet", "depthwise", "deform_conv2d", "convolve_long"):
        assert name in listed
    assert bench.main(["--ops", "no_such_workload"]) == 2
    assert "no_such_workload" in capsys.readouterr().err
    assert bench.main(["--backend", "emulate"]) == 2  # only with --quick
    assert bench.main(["--quick", "--repeat", "0"]) == 2
    assert bench.main(["--quick", "--settle", "-1"]) == 2


def test_quick_run_writes_json_and_plot(tmp_path, capsys):
    try:
        import matplotlib  # noqa: F401

        plot = tmp_path / "bench.png"
    except ImportError:
        plot = None
    json_path = tmp_path / "bench.json"
    argv = ["--quick", "--ops", "conv1d,depthwise", "--repeat", "2", "--no-progress",
            "--settle", "0", "--json", str(json_path)] + (["--plot", str(plot)] if plot else [])
    assert bench.main(argv) == 0
    table = capsys.readouterr().out
    assert "conv1d" in table and "depthwise" in table and "GFLOP/s" in table
    assert "NumPy's BLAS:" in table and "spread" in table

    doc = json.loads(json_path.read_text())
    assert doc["schema"] == bench.JSON_SCHEMA
    for key in ("date", "cpu_model", "cpu_count", "numpy", "blas", "versions",
                "loadavg_start", "loadavg_end", "blas_warning"):
        assert key in doc["machine"]
    assert doc["config"]["size_set"] == "quick" and doc["config"]["repeat"] == 2
    assert doc["config"]["thresholds"]["spread_limit"] == bench.SPREAD_LIMIT
    peaks = doc["peaks"]["float32"]
    assert peaks["flops_per_s"] > 0 and peaks["bytes_per_s"] > 0
    # the run's ceilings: every sample taken beside the two workloads
    assert len(peaks["matmul_times_s"]) == len(peaks["copy_times_s"]) == 2 * 2
    assert [r["workload"] for r in doc["results"]] == ["conv1d", "depthwise"]
    for r in doc["results"]:
        assert r["backend"] == "numpy" and r["dtype"] == "float32"
        assert r["median_s"] > 0 and len(r["times_s"]) == 2
        assert (r["min_s"], r["max_s"]) == (min(r["times_s"]), max(r["times_s"]))
        assert r["spread"] == pytest.approx((r["max_s"] - r["min_s"]) / r["median_s"])
        assert r["flops"] == bench.flops(r["kind"], r["params"])
        assert r["gflops"] == pytest.approx(r["flops"] / r["median_s"] / 1e9)
        # the roofline from the ceilings timed in this workload's rounds: the fastest samples
        ceilings = r["ceilings"]
        assert len(ceilings["matmul_times_s"]) == 2
        flops_per_s = 2 * ceilings["matmul_n"] ** 3 / min(ceilings["matmul_times_s"])
        bytes_per_s = 2 * ceilings["copy_bytes"] / min(ceilings["copy_times_s"])
        assert r["roofline_pct"] == pytest.approx(
            100 * max(r["flops"] / flops_per_s, r["bytes"] / bytes_per_s) / r["median_s"])
        assert isinstance(r["reliable"], bool) and isinstance(r["flags"], list)
        if r["roofline_pct"] > 100:
            assert "roofline" in [f["code"] for f in r["flags"]]
        if r.get("load") is not None:
            assert r["load"]["others_cores"] >= 0 and r["load"]["cores"] >= 1
        for peer, result in r["peers"].items():
            if result is None:  # not installed: the run says so in a note
                assert any(peer in note for note in r["notes"])
            else:  # the peer computed the same thing as gpuconv
                assert result["median_s"] > 0
                assert result["rel_diff"] < 1e-4
    if plot:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        pytest.skip("matplotlib not installed: the PNG was not checked")


def test_quick_backward_run(tmp_path, capsys):
    json_path = tmp_path / "bench.json"
    ops = "conv2d_resnet_backward,conv_transpose2d_backward,depthwise_backward," \
          "deform_conv2d_backward"
    assert bench.main(["--quick", "--ops", ops, "--repeat", "2", "--no-progress",
                       "--settle", "0", "--json", str(json_path)]) == 0
    assert "deform_conv2d_backward" in capsys.readouterr().out
    doc = json.loads(json_path.read_text())
    records = {r["workload"]: r for r in doc["results"]}
    assert list(records) == ops.split(",")
    for r in records.values():
        assert r["kind"] == "backward" and r["median_s"] > 0
        assert r["flops"] == bench.flops("backward", r["params"])
        assert r["gflops"] == pytest.approx(r["flops"] / r["median_s"] / 1e9)
        # each op has its one peer: torch for the convs, torchvision for deform
        expected_peer = "torchvision" if r["params"]["op"] == "deform" else "torch"
        assert list(r["peers"]) == [expected_peer]
        result = r["peers"][expected_peer]
        if result is None:  # not installed: the run says so in a note
            assert any(expected_peer in note for note in r["notes"])
        else:  # the peer's gradients (every one of them) are gpuconv's
            assert result["median_s"] > 0
            assert result["rel_diff"] < 1e-4


def test_busy_run_prints_no_exact_figures(tmp_path, capsys, monkeypatch):
    """The command on a (simulated) busy machine: every row says it is unreliable."""
    monkeypatch.setattr(cli, "_loadavg", lambda: [9.0, 9.0, 9.0])
    monkeypatch.setattr(runner, "LoadProbe", lambda: _FixedLoad(others_cores=1.5))
    json_path = tmp_path / "bench.json"
    assert bench.main(["--quick", "--ops", "conv1d", "--repeat", "2", "--no-progress",
                       "--settle", "0", "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "the machine was busy before the run" in out
    assert "other processes kept 1.50 of 2 cores busy" in out
    row = next(line for line in out.splitlines() if line.startswith("conv1d"))
    assert row.split()[3].startswith("~")
    doc = json.loads(json_path.read_text())
    r = doc["results"][0]
    assert not r["reliable"] and {"busy", "load"} <= {f["code"] for f in r["flags"]}


def test_rel_diff_of_gradient_tuples():
    a = (np.array([1.0, 2.0]), np.array([10.0]))
    assert workloads._rel_diff(a, a) == 0.0
    # the worst pair counts, each relative to its own scale
    # (scaled by the second argument's largest magnitude, as for a single array)
    assert workloads._rel_diff((np.array([1.0, 2.2]), np.array([10.0])), a) == pytest.approx(0.1)
    assert workloads._rel_diff((np.array([1.0, 2.0]), np.array([9.5])), a) == pytest.approx(0.05)
    assert np.isnan(workloads._rel_diff(a, a[:1]))
    assert np.isnan(workloads._rel_diff(a, a[0]))


@pytest.mark.gpu
def test_quick_run_on_cuda(tmp_path):
    json_path = tmp_path / "bench.json"
    assert bench.main(["--quick", "--backend", "cuda", "--ops",
                       "conv2d_resnet,convolve_long,conv2d_resnet_backward,deform_conv2d_backward",
                       "--repeat", "2", "--no-progress", "--json", str(json_path)]) == 0
    doc = json.loads(json_path.read_text())
    assert all(r["median_s"] > 0 for r in doc["results"])
    assert "gpu" in doc["machine"]


def test_compare_runs_script_on_the_committed_results(capsys):
    """benchmarks/compare_runs.py (what remeasure.sh ends with) on two committed runs."""
    import importlib.util
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("compare_runs",
                                                  root / "benchmarks" / "compare_runs.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    results = root / "benchmarks" / "results"
    assert compare.main([str(results / "cpu-2026-11-25.json"),
                         str(results / "cpu-2026-11-25-run2.json")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:]}
    # README: 15.8 / 10.7 = 1.49 and 17.6 / 10.7 = 1.64, both quiet
    assert rows["conv2d_resnet"][1:3] == ["1.49", "1.64"]
    # run 1's conv_transpose2d: one gpuconv sample of 8.8 ms among 5.4-5.9 ms (62% spread)
    assert rows["conv_transpose2d"][1].startswith("~")
    assert "Haswell" in out


def test_compare_runs_keeps_layouts_and_dtypes_apart(capsys, tmp_path):
    """A run holding a workload twice (NCHW and channels-last, or two dtypes) gets a row per
    (workload, dtype, layout), labelled by what varies, not the first match twice."""
    import copy
    import importlib.util
    import json
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("compare_runs",
                                                  root / "benchmarks" / "compare_runs.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    doc = json.loads((root / "benchmarks" / "results" / "cpu-2026-11-25.json").read_text())
    row = next(r for r in doc["results"] if r["workload"] == "conv2d_resnet")
    nhwc = copy.deepcopy(row)
    nhwc["layout"] = "channels_last"
    nhwc["times_s"] = [2 * t for t in nhwc["times_s"]]
    nhwc["median_s"] = 2 * nhwc["median_s"]
    doc["results"] = [row, nhwc]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    assert compare.main([str(path)]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()
             if line.startswith("conv2d_resnet")]
    ratios = {tuple(cells[:2]): float(cells[2]) for cells in lines}
    assert set(ratios) == {("conv2d_resnet", "NCHW"), ("conv2d_resnet", "NHWC")}
    assert ratios[("conv2d_resnet", "NHWC")] == pytest.approx(
        2 * ratios[("conv2d_resnet", "NCHW")], rel=0.02)



# ------------------------------------------------- bfloat16 and channels-last (issue 15)


def test_bfloat16_arrays_and_ceiling_dtype():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    torch = pytest.importorskip("torch")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    assert workloads.bench_dtype("bfloat16") == bf16
    # the torch peers get bfloat16 tensors sharing the array's bits (the bridge's int16 path)
    a = np.arange(6, dtype=np.float32).reshape(2, 3).astype(bf16)
    t = workloads._to_torch(a)
    assert t.dtype == torch.bfloat16 and t.data_ptr() == a.ctypes.data
    back = workloads._to_numpy(t * 2)
    assert back.dtype == np.float32 and np.array_equal(back, 2 * a.astype(np.float32))
    # bfloat16, like float16, is computed in float32 on the CPU: the ceiling's dtype
    w = bench.WORKLOADS["conv2d_resnet"]
    assert cli._compute_dtype(w, "bfloat16", on_gpu=False) == np.float32
    assert cli._compute_dtype(w, "bfloat16", on_gpu=True) == bf16


def test_channels_last_arrays_are_nhwc_views_and_torch_channels_last():
    torch = pytest.importorskip("torch")
    from gpuconv import _layout

    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((2, 3, 4, 5)), "weight": rng.standard_normal((6, 3, 3, 3)),
              "grad_output": rng.standard_normal((2, 6, 2, 3, 4)),
              "a": rng.standard_normal((2, 3, 7))}
    cl = workloads.with_layout(arrays, "channels_last")
    assert _layout.memory_format(cl["x"]) == _layout.memory_format(cl["grad_output"]) \
        == "channels_last"
    assert _layout.is_dense_channels_last(cl["x"])
    for key, a in arrays.items():
        assert np.array_equal(cl[key], a)
    assert cl["weight"] is arrays["weight"] and cl["a"] is arrays["a"]  # only inputs, 4-D/5-D
    assert workloads._to_torch(cl["x"]).is_contiguous(memory_format=torch.channels_last)
    assert workloads._to_torch(cl["grad_output"]).is_contiguous(
        memory_format=torch.channels_last_3d)
    assert workloads.with_layout(arrays, "contiguous") == arrays


def test_quick_bfloat16_run(tmp_path, capsys):
    pytest.importorskip("ml_dtypes")
    json_path = tmp_path / "bench.json"
    ops = "conv2d_resnet,depthwise,conv2d_resnet_backward"
    assert bench.main(["--quick", "--dtype", "bfloat16", "--ops", ops, "--repeat", "2",
                       "--no-progress", "--settle", "0", "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "dtype bfloat16" in out.splitlines()[0]
    assert "results differ" not in out
    doc = json.loads(json_path.read_text())
    assert doc["config"]["dtype"] == "bfloat16" and list(doc["peaks"]) == ["float32"]
    for r in doc["results"]:
        assert r["dtype"] == "bfloat16" and r["median_s"] > 0
        assert r["bytes"] == bench.traffic_bytes(
            r["kind"], r["params"], bench.KINDS[r["kind"]].make(
                r["params"], np.float32, np.random.default_rng(0)), 2)
        result = r["peers"]["torch"]
        if result is None:  # torch not installed: the run says so in a note
            assert any("torch" in note for note in r["notes"])
        else:  # torch's bfloat16 CPU convs computed what gpuconv did, to bfloat16 rounding
            assert result["median_s"] > 0
            assert result["rel_diff"] <= cli._CHECK_TOL["bfloat16"]


def test_quick_channels_last_run(tmp_path, capsys):
    json_path = tmp_path / "bench.json"
    md_path = tmp_path / "bench.md"
    ops = "conv2d_resnet,conv1d,conv3d,depthwise_backward"
    assert bench.main(["--quick", "--layout", "channels_last", "--ops", ops, "--repeat", "2",
                       "--no-progress", "--settle", "0", "--json", str(json_path),
                       "--markdown", str(md_path)]) == 0
    out = capsys.readouterr().out
    assert "layout channels_last" in out.splitlines()[0]
    assert "gpuconv NHWC/NCHW" in out and "differs from its NCHW result" not in out
    doc = json.loads(json_path.read_text())
    assert doc["config"]["layout"] == "channels_last"
    records = {r["workload"]: r for r in doc["results"]}
    # 1-D has no channels-last form: an NCHW row, no twin
    assert records["conv1d"]["layout"] == "contiguous" and "nchw" not in records["conv1d"]
    row = next(line for line in out.splitlines() if line.startswith("conv1d"))
    assert " NCHW " in row
    for name in ("conv2d_resnet", "conv3d", "depthwise_backward"):
        r = records[name]
        assert r["layout"] == r["out_layout"] == "channels_last", r
        gpuconv_twin = r["nchw"]["gpuconv"]
        assert gpuconv_twin["median_s"] > 0 and len(gpuconv_twin["times_s"]) == 2
        assert gpuconv_twin["nhwc_over_nchw"] == pytest.approx(
            r["median_s"] / gpuconv_twin["median_s"])
        assert gpuconv_twin["rel_diff"] < 1e-5
        torch_result = r["peers"]["torch"]
        if torch_result is not None:  # torch on channels_last tensors, and on NCHW beside it
            assert torch_result["rel_diff"] < 1e-4
            assert r["nchw"]["torch"]["rel_diff"] < 1e-5
        assert any(f"{name}: channels-last time / NCHW time" in n for n in doc["notes"])
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert " NHWC " in row
    assert "NHWC/NCHW" in md_path.read_text()


def test_bad_layout_and_dtype_arguments(capsys):
    assert bench.main(["--quick", "--layout", "nhwc"]) == 2
    assert "--layout" in capsys.readouterr().err
    assert bench.main(["--quick", "--dtype", "int8"]) == 2


# ---------------------------------------------------------- tensor-core workloads (issue 14)

_TC_LAYERS = ("resnet_3x3_c64", "resnet_3x3_c128", "resnet_3x3_c256", "resnet_3x3_c512",
              "stem_7x7", "1x1_256to64", "conv3d_3x3x3_c64")


def _tc_names():
    return [f"tc_{layer}_{prec}{bwd}" for layer in _TC_LAYERS for prec in ("fp16", "tf32")
            for bwd in ("", "_backward")]


def test_tensor_core_workloads_are_registered():
    for name in _tc_names():
        w = bench.WORKLOADS[name]
        assert list(w.sizes) == ["gpu"]  # GPU only: no --quick or CPU run picks them up
        assert w.kind == ("backward" if name.endswith("_backward") else "conv")
        assert "tensor cores" in w.note
        assert (w.dtype, w.tf32) == (("float32", True) if "_tf32" in name else ("float16", False))
    # ResNet-50's 3x3 layers, batch 32, C_in = C_out, padding 1
    for c, s in ((64, 56), (128, 28), (256, 14), (512, 7)):
        p = bench.WORKLOADS[f"tc_resnet_3x3_c{c}_fp16"].sizes["gpu"]
        assert p == dict(n=32, c_in=c, c_out=c, size=(s, s), kernel=3, padding=1)
        assert bench.WORKLOADS[f"tc_resnet_3x3_c{c}_tf32_backward"].sizes["gpu"] == \
            {**p, "op": "conv"}
    stem = bench.WORKLOADS["tc_stem_7x7_tf32"].sizes["gpu"]
    assert stem == dict(n=32, c_in=3, c_out=64, size=(224, 224), kernel=7, stride=2, padding=3)
    assert workloads._forward_out_shape("conv", stem) == (32, 64, 112, 112)
    conv3d = bench.WORKLOADS["tc_conv3d_3x3x3_c64_fp16"].sizes["gpu"]
    assert workloads._forward_out_shape("conv", conv3d) == (8, 64, 16, 56, 56)
    # construction: the arrays of a scaled-down copy (the GPU sizes are too big for a test)
    small = {**bench.WORKLOADS["tc_conv3d_3x3x3_c64_fp16_backward"].sizes["gpu"],
             "n": 1, "c_in": 4, "c_out": 2, "size": (3, 4, 5)}
    arrays = bench.KINDS["backward"].make(small, np.float16, np.random.default_rng(0))
    assert {k: a.shape for k, a in arrays.items()} == {
        "x": (1, 4, 3, 4, 5), "weight": (2, 4, 3, 3, 3), "grad_output": (1, 2, 3, 4, 5)}
    assert all(a.dtype == np.float16 for a in arrays.values())


def test_tensor_core_flops_hand_computed():
    # 3x3, C=64 at 56x56, pad 1: 32 * 56 * 56 outputs per channel, 64 * 9 multiply-adds each
    p = bench.WORKLOADS["tc_resnet_3x3_c64_fp16"].sizes["gpu"]
    assert bench.flops("conv", p) == 2 * 32 * 64 * (56 * 56) * (64 * 9) == 7_398_752_256
    # the stem: out (224 + 6 - 7) // 2 + 1 = 112 per dim, 3 * 49 multiply-adds per output
    p = bench.WORKLOADS["tc_stem_7x7_fp16"].sizes["gpu"]
    assert bench.flops("conv", p) == 2 * 32 * 64 * (112 * 112) * (3 * 49) == 7_552_892_928
    # 1x1, 256 -> 64 at 56x56
    p = bench.WORKLOADS["tc_1x1_256to64_tf32"].sizes["gpu"]
    assert bench.flops("conv", p) == 2 * 32 * 64 * (56 * 56) * 256
    # 3-D: 8 * 16 * 56 * 56 outputs per channel, 64 * 27 multiply-adds each
    p = bench.WORKLOADS["tc_conv3d_3x3x3_c64_tf32"].sizes["gpu"]
    assert bench.flops("conv", p) == 2 * 8 * 64 * (16 * 56 * 56) * (64 * 27)
    # backward: input gradient + weight gradient, each the forward's FLOPs
    p = bench.WORKLOADS["tc_resnet_3x3_c512_tf32_backward"].sizes["gpu"]
    assert bench.flops("backward", p) == 2 * (2 * 32 * 512 * 49 * (512 * 9))


def test_tensor_core_forwards_get_implicit_gemm_by_default_on_cuda():
    """The library's heuristic on cuda picks implicit_gemm for every forward (TF32 ones with
    TF32 on, as the runner sets it), except the 1x1 layer (matmul: cuBLAS)."""
    from gpuconv._algorithms import ConvProblem
    from gpuconv._shapes import conv_geometry
    from gpuconv.backends.device._conv_algorithms import default_name

    for layer in _TC_LAYERS:
        for prec in ("fp16", "tf32"):
            w = bench.WORKLOADS[f"tc_{layer}_{prec}"]
            p = w.sizes["gpu"]
            kernel, stride, padding, dilation = workloads._spatial(p)
            geom = conv_geometry(p["size"], kernel, stride=stride, padding=padding,
                                 dilation=dilation)
            problem = ConvProblem("conv", "cuda", (p["n"], p["c_in"], *p["size"]),
                                  (p["c_out"], p["c_in"], *kernel), np.dtype(w.dtype), geom,
                                  tf32=w.tf32)
            expected = "matmul" if layer.startswith("1x1") else "implicit_gemm"
            assert default_name(problem) == expected, w.name


def test_tf32_flag_reaches_gpuconv_and_torch(monkeypatch):
    torch = pytest.importorskip("torch")
    import gpuconv

    seen = []
    result = np.ones(4, np.float32)

    def switches(side):
        seen.append((side, gpuconv.tf32_enabled(), torch.backends.cuda.matmul.allow_tf32,
                     torch.backends.cudnn.allow_tf32))
        return result

    kind = bench.Kind(make=lambda p, dtype, rng: {"x": np.zeros(4, dtype)},
                      run=lambda a, p: switches("gpuconv"),
                      flops=lambda p: 1, out_elements=lambda p: 0,
                      peers={"torch": lambda device, a, p: lambda: switches("torch")})
    monkeypatch.setitem(bench.KINDS, "tf32_probe", kind)
    monkeypatch.delenv("GPUCONV_ALLOW_TF32", raising=False)
    # (torch's switches are properties of module stand-ins: monkeypatch cannot restore them)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    try:
        for tf32 in (True, False):
            seen.clear()
            w = bench.Workload("probe", "tf32_probe", {"quick": {}}, "float32", tf32=tf32)
            r = bench.run_workload(w, size_set="quick", backend="numpy", dtype="float32",
                                   repeat=1, settle_s=0, load_probe=_FixedLoad(0.0))
            assert r["tf32"] is tf32
            assert {s[0] for s in seen} == {"gpuconv", "torch"}
            assert all(s[1:] == (tf32, tf32, tf32) for s in seen), seen
            # restored afterwards (torch's defaults: matmul off, cuDNN on)
            assert not gpuconv.tf32_enabled()
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) \
                == (False, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_backend_cuda_lists_tensor_core_workloads(capsys):
    assert bench.main(["--backend", "cuda", "--list"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for name in _tc_names():
        assert "[gpu]" in listed[name]
        assert ("(float32, TF32)" if "_tf32" in name else "(float16)") in listed[name]
