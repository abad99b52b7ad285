"""``python -m gpuconv bench``: the counts, the timer, and a --quick run end to end."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from gpuconv import bench

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


def test_traffic_bytes_counts_inputs_weights_output_once():
    params = dict(n=2, c_in=3, c_out=4, size=(5, 5), kernel=3, padding=1)
    arrays = bench.KINDS["conv"].make(params, np.float32, np.random.default_rng(0))
    expected = (2 * 3 * 25 + 4 * 3 * 9 + 2 * 4 * 25) * 4
    assert bench.traffic_bytes("conv", params, arrays, 4) == expected


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


def test_quick_run_writes_json_and_plot(tmp_path, capsys):
    try:
        import matplotlib  # noqa: F401

        plot = tmp_path / "bench.png"
    except ImportError:
        plot = None
    json_path = tmp_path / "bench.json"
    argv = ["--quick", "--ops", "conv1d,depthwise", "--repeat", "2", "--no-progress",
            "--json", str(json_path)] + (["--plot", str(plot)] if plot else [])
    assert bench.main(argv) == 0
    table = capsys.readouterr().out
    assert "conv1d" in table and "depthwise" in table and "GFLOP/s" in table

    doc = json.loads(json_path.read_text())
    assert doc["schema"] == bench.JSON_SCHEMA
    for key in ("date", "cpu_model", "cpu_count", "numpy", "blas", "versions"):
        assert key in doc["machine"]
    assert doc["config"]["size_set"] == "quick" and doc["config"]["repeat"] == 2
    peaks = doc["peaks"]["float32"]
    assert peaks["flops_per_s"] > 0 and peaks["bytes_per_s"] > 0
    assert [r["workload"] for r in doc["results"]] == ["conv1d", "depthwise"]
    for r in doc["results"]:
        assert r["backend"] == "numpy" and r["dtype"] == "float32"
        assert r["median_s"] > 0 and len(r["times_s"]) == 2
        assert r["flops"] == bench.flops(r["kind"], r["params"])
        assert r["gflops"] == pytest.approx(r["flops"] / r["median_s"] / 1e9)
        assert r["roofline_pct"] > 0
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


@pytest.mark.gpu
def test_quick_run_on_cuda(tmp_path):
    json_path = tmp_path / "bench.json"
    assert bench.main(["--quick", "--backend", "cuda", "--ops", "conv2d_resnet,convolve_long",
                       "--repeat", "2", "--no-progress", "--json", str(json_path)]) == 0
    doc = json.loads(json_path.read_text())
    assert all(r["median_s"] > 0 for r in doc["results"])
    assert "gpu" in doc["machine"]
