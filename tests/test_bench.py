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


def test_quick_backward_run(tmp_path, capsys):
    json_path = tmp_path / "bench.json"
    ops = "conv2d_resnet_backward,conv_transpose2d_backward,depthwise_backward," \
          "deform_conv2d_backward"
    assert bench.main(["--quick", "--ops", ops, "--repeat", "2", "--no-progress",
                       "--json", str(json_path)]) == 0
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


def test_rel_diff_of_gradient_tuples():
    a = (np.array([1.0, 2.0]), np.array([10.0]))
    assert bench._rel_diff(a, a) == 0.0
    # the worst pair counts, each relative to its own scale
    # (scaled by the second argument's largest magnitude, as for a single array)
    assert bench._rel_diff((np.array([1.0, 2.2]), np.array([10.0])), a) == pytest.approx(0.1)
    assert bench._rel_diff((np.array([1.0, 2.0]), np.array([9.5])), a) == pytest.approx(0.05)
    assert np.isnan(bench._rel_diff(a, a[:1]))
    assert np.isnan(bench._rel_diff(a, a[0]))


@pytest.mark.gpu
def test_quick_run_on_cuda(tmp_path):
    json_path = tmp_path / "bench.json"
    assert bench.main(["--quick", "--backend", "cuda", "--ops",
                       "conv2d_resnet,convolve_long,conv2d_resnet_backward,deform_conv2d_backward",
                       "--repeat", "2", "--no-progress", "--json", str(json_path)]) == 0
    doc = json.loads(json_path.read_text())
    assert all(r["median_s"] > 0 for r in doc["results"])
    assert "gpu" in doc["machine"]
