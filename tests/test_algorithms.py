"""Algorithm choice for conv forward (issue 14): use_tf32, use_algorithm, plan and autotune.

On the emulate backend every conv-forward algorithm is forced on a call it can serve and
compared with the NumPy backend (float64 on the same inputs). ``implicit_gemm`` in float16 and
TF32 is held to the bound of tests/test_igemm_kernel.py: with n = K + 1 terms (K = C_in/groups
x taps, and the bias), S the same convolution of |x| and |w| (plus |bias|),

    |out - ref| <= gamma_n S + u_out (|ref| + gamma_n S) + eta_out,  gamma_n = n u / (1 - n u),

u = 2**-23 (fp32 accumulation, allowing truncation), u_out = 2**-11 and eta_out = 2**-25 for
float16; for TF32 the reference is taken on the *unrounded* float32 inputs, so each product
also carries the two operand roundings to TF32 (10 fraction bits, to nearest: 2**-11 each),
which adds 2 * 2**-11 * S (u_out = 0: the float32 accumulator is the output).

Plans are checked without computing (the launches are replaced by a function that fails) and
against the launches a real call records. Autotune is checked with a fake clock.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import gpuconv
from gpuconv import _algorithms
from gpuconv._algorithms import Autotuner, ConvProblem
from gpuconv._shapes import conv_geometry, is_pointwise
from gpuconv.backends.device import _conv, _conv_algorithms, _igemm

from kernel_helpers import REFERENCE

U_ACC = 2.0**-23




def _case(rng, dtype, *, c_in=8, c_out=16, size=(7, 6), k=(3, 3), groups=1, bias=True):
    x = rng.standard_normal((2, c_in, *size)).astype(dtype)
    w = (rng.standard_normal((c_out, c_in // groups, *k)) / np.sqrt(c_in)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if bias else None
    return x, w, b


def _reference(x, w, b, **kw):
    """float64 conv on the NumPy backend, and the same conv of absolute values."""
    f = [None if a is None else a.astype(np.float64) for a in (x, w, b)]
    ref = gpuconv.conv(*f, **kw)
    mag = gpuconv.conv(*[None if a is None else np.abs(a) for a in f], **kw)
    return ref, mag


# ----------------------------------------------------------------------------- settings


def test_tf32_is_off_by_default_and_scoped(monkeypatch):
    monkeypatch.delenv("GPUCONV_ALLOW_TF32", raising=False)
    assert gpuconv.tf32_enabled() is False
    with gpuconv.use_tf32():
        assert gpuconv.tf32_enabled() is True
        with gpuconv.use_tf32(False):
            assert gpuconv.tf32_enabled() is False
        assert gpuconv.tf32_enabled() is True
    assert gpuconv.tf32_enabled() is False
    monkeypatch.setenv("GPUCONV_ALLOW_TF32", "1")
    assert gpuconv.tf32_enabled() is True
    with gpuconv.use_tf32(False):
        assert gpuconv.tf32_enabled() is False
    monkeypatch.setenv("GPUCONV_ALLOW_TF32", "maybe")
    with pytest.raises(ValueError, match="GPUCONV_ALLOW_TF32='maybe' must be one of"):
        gpuconv.tf32_enabled()
    with pytest.raises(TypeError, match=r"use_tf32: enabled='yes' must be a bool"):
        gpuconv.use_tf32("yes")


def test_settings_are_per_thread(monkeypatch):
    monkeypatch.delenv("GPUCONV_ALGORITHM", raising=False)
    monkeypatch.delenv("GPUCONV_ALLOW_TF32", raising=False)
    seen = {}

    def other():
        seen["tf32"], seen["algorithm"] = gpuconv.tf32_enabled(), gpuconv.current_algorithm()

    with gpuconv.use_tf32(), gpuconv.use_algorithm("direct"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert (gpuconv.tf32_enabled(), gpuconv.current_algorithm()) == (True, "direct")
    assert seen == {"tf32": False, "algorithm": None}


def test_autotune_setting(monkeypatch):
    monkeypatch.delenv("GPUCONV_AUTOTUNE", raising=False)
    assert gpuconv.autotune_enabled() is False
    with gpuconv.use_autotune():
        assert gpuconv.autotune_enabled() is True
    monkeypatch.setenv("GPUCONV_AUTOTUNE", "on")
    assert gpuconv.autotune_enabled() is True
    with gpuconv.use_autotune(False):
        assert gpuconv.autotune_enabled() is False


def test_algorithm_names_are_checked(monkeypatch):
    with pytest.raises(ValueError, match=r"use_algorithm: name='fft' must be one of"):
        gpuconv.use_algorithm("fft")
    monkeypatch.setenv("GPUCONV_ALGORITHM", "winograd")
    with pytest.raises(ValueError, match=r"GPUCONV_ALGORITHM='winograd' must be one of"):
        gpuconv.current_algorithm()
    monkeypatch.setenv("GPUCONV_ALGORITHM", "direct")
    assert gpuconv.current_algorithm() == "direct"
    with gpuconv.use_algorithm(None):
        assert gpuconv.current_algorithm() is None


# ----------------------------------------------------------------------------- forcing


@pytest.mark.parametrize("name, kw, shape", [
    ("direct", {"padding": 1}, {}),
    ("tiled", {"padding": 1, "padding_mode": "reflect"}, {}),
    ("matmul", {}, {"k": (1, 1)}),
    ("depthwise", {"padding": 1, "groups": 8}, {"c_out": 16, "groups": 8}),
])
def test_forcing_each_cuda_core_algorithm(on_emulate, name, kw, shape):
    rng = np.random.default_rng(1)
    x, w, b = _case(rng, np.float32, **shape)
    with gpuconv.use_algorithm(name):
        assert gpuconv.plan("conv", x, w, b, **kw).algorithm == name
        got = gpuconv.conv(x, w, b, **kw)
    with gpuconv.use_backend("numpy"):
        want = gpuconv.conv(x, w, b, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [
    {"padding": 1},
    {"stride": 2, "dilation": (1, 2), "padding": 2, "padding_mode": "circular"},
])
def test_forced_implicit_gemm_float16_within_the_bound(on_emulate, kw):
    rng = np.random.default_rng(2)
    x, w, b = _case(rng, np.float16, c_in=12, c_out=20, groups=2)
    kw = dict(kw, groups=2)
    with gpuconv.use_algorithm("implicit_gemm"):
        got = gpuconv.conv(x, w, b, **kw)
    ref, mag = _reference(x, w, b, **kw)
    n = 6 * 9 + 1
    gamma = n * U_ACC / (1 - n * U_ACC)
    bound = gamma * mag + 2.0**-11 * (np.abs(ref) + gamma * mag) + 2.0**-25
    assert got.dtype == np.float16
    assert np.all(np.abs(got - ref) <= bound)
    # the same bits as C's kernel-level launcher
    module = _conv_algorithms.igemm_module(gpuconv._dispatch.get_backend("emulate"),
                                           _igemm.name_expression("float16", kw.get(
                                               "padding_mode", "zeros")))
    direct = _igemm.conv_igemm_forward(module, x, w, b, kind="float16", **kw)
    assert np.array_equal(got, direct)


def test_implicit_gemm_float32_needs_tf32(on_emulate, monkeypatch):
    monkeypatch.delenv("GPUCONV_ALLOW_TF32", raising=False)
    rng = np.random.default_rng(3)
    x, w, b = _case(rng, np.float32)
    with gpuconv.use_algorithm("implicit_gemm"):
        with pytest.raises(ValueError, match=r"conv: algorithm 'implicit_gemm' cannot serve "
                                             r"this call: float32 runs on tensor cores only "
                                             r"as TF32, which is off"):
            gpuconv.conv(x, w, b, padding=1)
        with gpuconv.use_tf32():
            got = gpuconv.conv(x, w, b, padding=1)
    ref, mag = _reference(x, w, b, padding=1)
    n = 8 * 9 + 1
    gamma = n * U_ACC / (1 - n * U_ACC)
    assert got.dtype == np.float32
    assert np.all(np.abs(got - ref) <= (gamma + 2 * 2.0**-11) * mag)
    assert not np.array_equal(got, gpuconv.conv(x, w, b, padding=1))  # TF32 really rounds


@pytest.mark.parametrize("name, dtype, kw, match", [
    ("matmul", np.float32, {"padding": 1}, "needs a 1x1 kernel, stride 1 and no padding"),
    ("depthwise", np.float32, {}, "needs groups == C_in, got groups=1, C_in=8"),
    ("implicit_gemm", np.float64, {}, "tensor cores compute float16, bfloat16 or TF32, "
                                      "not float64"),
    ("numpy", np.float32, {}, "on the 'emulate' backend, whose algorithms are 'matmul'"),
])
def test_forcing_an_algorithm_that_cannot_serve_raises(on_emulate, name, dtype, kw, match):
    x, w, b = _case(np.random.default_rng(4), dtype)
    with gpuconv.use_algorithm(name):
        with pytest.raises(ValueError, match=rf"conv: algorithm '{name}' cannot serve this "
                                             rf"call.*{match}"):
            gpuconv.conv(x, w, b, **kw)
        with pytest.raises(ValueError, match=match):
            gpuconv.plan("conv", x, w, b, **kw)


def test_tiled_cannot_serve_a_kernel_too_big_for_shared_memory():
    g = conv_geometry((120, 120), (101, 101), stride=1, padding=0, dilation=1)
    problem = ConvProblem("conv", "emulate", (1, 4, 120, 120), (8, 4, 101, 101),
                          np.dtype(np.float64), g)
    ok, reason = _conv_algorithms.TILED.can_serve(problem)
    assert not ok and "fits in shared memory" in reason
    assert _conv_algorithms.default_name(problem) == "direct"


# ----------------------------------------------------------------------------- the default


def test_the_default_keeps_the_cuda_core_choice_on_emulate():
    """The fingerprint rule: on emulate the default is choose_conv_method's choice, TF32 on
    or off; implicit_gemm is a default only on cuda."""
    rng = np.random.default_rng(5)
    for _ in range(60):
        c_in = int(rng.choice([1, 3, 8, 32, 64]))
        groups = int(rng.choice([g for g in (1, 2, c_in) if c_in % g == 0]))
        c_out = groups * int(rng.choice([1, 4, 16, 32]))
        k = tuple(int(v) for v in rng.choice([1, 3, 5], size=2))
        g = conv_geometry((9, 9), k, stride=int(rng.choice([1, 2])), padding=int(rng.choice(
            [0, 1])), dilation=1, groups=groups)
        dtype = np.dtype(rng.choice(["float16", "float32", "float64"]))
        xs, ws = (2, c_in, 9, 9), (c_out, c_in // groups, *k)
        for tf32 in (False, True):
            p = ConvProblem("conv", "emulate", xs, ws, dtype, g, tf32=tf32)
            assert _conv_algorithms.default_name(p) == _conv.choose_conv_method(
                xs, ws, g, dtype.itemsize)
            cuda = _conv_algorithms.default_name(ConvProblem("conv", "cuda", xs, ws, dtype, g,
                                                              tf32=tf32))
            tensor = dtype == np.float16 or (dtype == np.float32 and tf32)
            big = c_out // groups >= 16 and c_in // groups * k[0] * k[1] >= 32
            plain = groups != c_in and not is_pointwise(g)
            assert (cuda == "implicit_gemm") == (tensor and big and plain), (xs, ws, g, dtype)
            if cuda != "implicit_gemm":
                assert cuda == _conv.choose_conv_method(xs, ws, g, dtype.itemsize)


# ----------------------------------------------------------------------------- plan


@pytest.fixture
def no_launches(monkeypatch):
    """Every launch fails: plan() must not compute."""
    from gpuconv.backends.device import _executor

    def fail(*args, **kwargs):
        raise AssertionError("plan() launched a kernel")

    monkeypatch.setattr(_executor.Executor, "launch", fail)
    monkeypatch.setattr(_executor.Executor, "matmul", fail)
    monkeypatch.setattr(_igemm, "launch", fail)


def test_plan_fields_without_computing(on_emulate, no_launches):
    x = np.zeros((2, 16, 32, 32), np.float32)
    w = np.zeros((32, 16, 3, 3), np.float32)
    p = gpuconv.plan(gpuconv.conv2d, x, w, padding=1)
    tiled = _conv.conv_tiled_plan(_conv.as_3d(conv_geometry((32, 32), (3, 3), stride=1,
                                                            padding=1, dilation=1)),
                                  2, 16, 32, 1, 4)
    assert (p.op, p.backend, p.algorithm, p.reason) == ("conv2d", "emulate", "tiled",
                                                        "default heuristic")
    assert p.kernels == ("conv_tiled<float, int, 0>",)
    assert (p.grid, p.block, p.shared_mem) == (tiled.grid, tiled.block, tiled.shared_mem)
    assert p.workspace_bytes == 0 and p.layout_copy is None
    assert p.candidates["tiled"] == "" and "1x1" in p.candidates["matmul"]
    assert "algorithm 'tiled' (default heuristic)" in repr(p)

    with gpuconv.use_algorithm("direct"):
        d = gpuconv.plan("conv", x, w, padding=1)
    assert (d.algorithm, d.reason, d.kernels) == ("direct", "forced",
                                                  ("conv_direct<float, int, 0>",))
    assert (d.grid, d.block, d.shared_mem) == (ceil(2 * 32 * 32 * 32, 256), 256, 0)

    h = x.astype(np.float16)[:, :, ::2]  # not contiguous
    with gpuconv.use_algorithm("implicit_gemm"):
        i = gpuconv.plan("conv", h, w.astype(np.float16), padding=1, padding_mode="replicate")
    assert i.kernels == ("conv_igemm<__half, int, 2, 0>",)
    assert i.grid == (ceil(2 * 16 * 32, 64), ceil(32, 64), 1) and i.block == (128, 1, 1)
    assert i.shared_mem == _igemm.shared_bytes()
    assert "x other: copied" in i.layout_copy, i.layout_copy
    f64 = gpuconv.plan("conv", x, w.astype(np.float64))
    assert f64.layout_copy == "x: float32 -> float64", f64.layout_copy

    one = gpuconv.plan("conv", x, np.zeros((8, 16, 1, 1), np.float32))
    assert one.algorithm == "matmul" and one.kernels[0].startswith("numpy.matmul: (1, 8, 16)")
    dw = gpuconv.plan("conv", x, np.zeros((32, 1, 3, 3), np.float32), groups=16)
    assert dw.algorithm == "depthwise" and dw.kernels[0].startswith("depthwise_tiled<float")
    empty = gpuconv.plan("conv", x[:0], w)
    assert (empty.algorithm, empty.kernels) == ("none", ())


def test_plan_float16_implicit_gemm_and_checks(on_emulate, no_launches):
    x = np.zeros((1, 8, 10), np.float16)
    w = np.zeros((64, 8, 3), np.float16)
    with gpuconv.use_algorithm("implicit_gemm"):
        p = gpuconv.plan("conv1d", x, w, np.zeros(64, np.float16), stride=2)
    assert p.kernels == ("conv_igemm<__half, int, 0, 0>",)
    assert p.grid == (1, 1, 1)
    with pytest.raises(ValueError, match=r"plan: op='deform_conv2d' must be one of"):
        gpuconv.plan("deform_conv2d", x, w)
    with pytest.raises(ValueError, match=r"conv2d: x must have 4 dims"):
        gpuconv.plan("conv2d", x, w)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'output_padding'"):
        gpuconv.plan("conv", x, w, output_padding=1)


def test_plan_names_the_launch_a_call_makes(on_emulate, monkeypatch):
    from gpuconv.backends.device import _executor

    launched = []
    real = _executor.Executor.launch

    def record(self, kernel, *, grid, block, args, shared_mem=0):
        launched.append((kernel.name, grid, block, shared_mem))
        return real(self, kernel, grid=grid, block=block, args=args, shared_mem=shared_mem)

    monkeypatch.setattr(_executor.Executor, "launch", record)
    rng = np.random.default_rng(6)
    for shape, kw in [({}, {"padding": 1}), ({"c_out": 3}, {"stride": 2}),
                      ({"groups": 8, "c_out": 8}, {"groups": 8, "padding": 2,
                                                   "padding_mode": "reflect"})]:
        x, w, b = _case(rng, np.float64, **shape)
        p = gpuconv.plan("conv", x, w, b, **kw)
        launched.clear()
        gpuconv.conv(x, w, b, **kw)
        assert launched == [(p.kernels[0], p.grid, p.block, p.shared_mem)], p


def test_plan_on_numpy_refuses_a_device_algorithm():
    x, w = np.zeros((1, 2, 5)), np.zeros((3, 2, 3))
    with gpuconv.use_backend("numpy"):
        assert gpuconv.plan("conv", x, w).algorithm == "numpy"
        with gpuconv.use_algorithm("tiled"), pytest.raises(
                ValueError, match=r"conv: algorithm 'tiled' cannot serve this call on the "
                                  r"'numpy' backend, whose only algorithm is 'numpy'"):
            gpuconv.plan("conv", x, w)
        with gpuconv.use_algorithm("implicit_gemm"), pytest.raises(
                ValueError, match=r"conv1d: algorithm 'implicit_gemm' cannot serve this call on "
                                  r"the 'numpy' backend"):
            gpuconv.conv1d(x, w)
        with gpuconv.use_algorithm("numpy"):
            np.testing.assert_array_equal(gpuconv.conv(x, w), np.zeros((1, 3, 3)))


def ceil(a, b):
    return -(-a // b)


# ----------------------------------------------------------------------------- autotune


class FakeClock:
    """A clock that advances by the cost of whichever candidate runs between two readings."""

    def __init__(self, costs):
        self.now, self.costs, self.running = 0.0, costs, None

    def __call__(self):
        return self.now

    def run(self, candidate):
        self.now += self.costs[candidate.name]
        return f"result of {candidate.name}"


class Fake:
    def __init__(self, name, deterministic=True):
        self.name, self.deterministic = name, deterministic


def test_autotuner_times_once_and_caches(monkeypatch):
    clock = FakeClock({"a": 3.0, "b": 1.0, "c": 2.0})
    monkeypatch.setattr(_algorithms, "timer", clock)
    runs = []

    def run(candidate):
        runs.append(candidate.name)
        return clock.run(candidate)

    tuner = Autotuner()
    pool = [Fake("a"), Fake("b"), Fake("c")]
    assert tuner.choose(("k1",), pool, run, deterministic=False) == ("b", "result of b")
    assert runs == ["a", "a", "b", "b", "c", "c"]  # warm-up, then timed
    assert tuner.timings[(("k1",), False)] == {"a": 3.0, "b": 1.0, "c": 2.0}
    assert tuner.choose(("k1",), pool, run, deterministic=False) == ("b", None)
    assert len(runs) == 6  # cached: nothing ran
    tuner.choose(("k2",), pool, run, deterministic=False)
    assert len(runs) == 12  # another problem is timed anew


def test_autotuner_respects_deterministic(monkeypatch):
    clock = FakeClock({"atomic": 0.5, "ordered": 1.0})
    monkeypatch.setattr(_algorithms, "timer", clock)
    tuner = Autotuner()
    pool = [Fake("atomic", deterministic=False), Fake("ordered")]
    assert tuner.choose(("k",), pool, clock.run, deterministic=True)[0] == "ordered"
    assert tuner.choose(("k",), pool, clock.run, deterministic=False)[0] == "atomic"
    # the two settings are cached apart
    assert tuner.lookup(("k",), True) == "ordered" and tuner.lookup(("k",), False) == "atomic"
    with pytest.raises(ValueError, match="autotune: no deterministic algorithm"):
        tuner.choose(("j",), pool[:1], clock.run, deterministic=True)


def test_autotune_on_the_emulator(on_emulate, monkeypatch):
    costs = {"tiled": 2.0, "direct": 1.0}
    ran = []
    clock = FakeClock(costs)
    monkeypatch.setattr(_algorithms, "timer", clock)
    for algorithm in (_conv_algorithms.TILED, _conv_algorithms.DIRECT):

        def spy(backend, *args, _real=algorithm.run, _name=algorithm.name):
            ran.append(_name)
            clock.now += costs[_name]
            return _real(backend, *args)

        monkeypatch.setattr(algorithm, "run", spy)
    x, w, b = _case(np.random.default_rng(7), np.float32)
    with gpuconv.use_autotune():
        assert "autotune pending" in gpuconv.plan("conv", x, w, b, padding=1).reason
        got = gpuconv.conv(x, w, b, padding=1)
        assert ran == ["tiled", "tiled", "direct", "direct"]
        p = gpuconv.plan("conv", x, w, b, padding=1)
        assert (p.algorithm, p.reason) == ("direct", "autotune cache")
        again = gpuconv.conv(x, w, b, padding=1)
        assert ran[4:] == ["direct"]
        with gpuconv.use_algorithm("tiled"):  # forcing wins over autotune
            gpuconv.conv(x, w, b, padding=1)
        assert ran[5:] == ["tiled"]
    np.testing.assert_array_equal(got, again)
    np.testing.assert_allclose(got, REFERENCE.conv(x, w, b, conv_geometry(
        (7, 6), (3, 3), stride=1, padding=1, dilation=1)), rtol=1e-5, atol=1e-5)


def test_forced_implicit_gemm_bfloat16_within_the_bound(on_emulate):
    from gpuconv import _dtypes

    if _dtypes.BFLOAT16 is None:
        pytest.skip("ml_dtypes is not installed")
    if _dtypes.BFLOAT16 not in getattr(gpuconv._dispatch.get_backend("emulate"), "dtypes", ()):
        pytest.skip("the emulate backend takes no bfloat16 arrays yet")
    rng = np.random.default_rng(8)
    x, w, b = (a.astype(_dtypes.BFLOAT16) for a in _case(rng, np.float32, c_in=6))
    with gpuconv.use_algorithm("implicit_gemm"):
        assert gpuconv.plan("conv", x, w, b).kernels == ("conv_igemm<unsigned short, int, 0, 0>",)
        got = gpuconv.conv(x, w, b, stride=(1, 2), padding=(2, 1))
    ref, mag = _reference(x, w, b, stride=(1, 2), padding=(2, 1))
    n = 6 * 9 + 1
    gamma = n * U_ACC / (1 - n * U_ACC)
    assert got.dtype == _dtypes.BFLOAT16
    assert np.all(np.abs(got.astype(np.float64) - ref)
                  <= gamma * mag + 2.0**-8 * (np.abs(ref) + gamma * mag))


def test_implicit_gemm_through_the_cuda_flow_with_a_stand_in_cupy(on_emulate, monkeypatch):
    """The ``cuda`` backend's path without a GPU: the executor compiles conv_igemm
    (__half, int) group through (stand-in) NVRTC and its disk cache, and the default heuristic
    picks implicit_gemm on cuda for a float16 3x3 layer with 16 output channels."""
    from kernel_helpers import stand_in_cupy

    backend, compiled = stand_in_cupy(monkeypatch, ("ndarray", "ascontiguousarray", "empty",
                                                    "zeros", "matmul"))
    x, w, b = _case(np.random.default_rng(9), np.float16, c_in=4, c_out=16)
    geom = conv_geometry((7, 6), (3, 3), stride=1, padding=1, dilation=1)
    problem = ConvProblem.of("cuda", x, w, b, geom)
    assert _conv_algorithms.default_name(problem) == "implicit_gemm"
    got = backend.conv(x, w, b, geom)
    assert [c.name_expressions for c in compiled] == [tuple(
        n for n in _conv_algorithms.igemm_names() if n.startswith("conv_igemm<__half, int"))]
    emulated = _conv_algorithms.igemm_module(gpuconv._dispatch.get_backend("emulate"),
                                             _igemm.name_expression("float16", "zeros"))
    np.testing.assert_array_equal(
        got, _igemm.conv_igemm_forward(emulated, x, w, b, kind="float16", padding=1))


def _golden_conv_cases():
    import json
    import pathlib

    meta = json.loads((pathlib.Path(__file__).parent / "data" / "cases.json").read_text())
    return [c for c in meta["cases"] if c["op"] == "conv"]


@pytest.mark.parametrize("kind", ["float16", "tf32"])
def test_golden_conv_cases_forced_to_implicit_gemm(on_emulate, golden, kind):
    """Every golden conv case (1-D to 3-D, stride, dilation, groups, every padding mode and
    asymmetric pads) through implicit_gemm, within the bound of the module docstring."""
    from test_golden import _kwargs

    _, arrays = golden
    dtype = np.float16 if kind == "float16" else np.float32
    for case in _golden_conv_cases():
        args = [arrays[k].astype(dtype) for k in case["args"]]
        kwargs = _kwargs(case, arrays, lambda a: a.astype(dtype))
        with gpuconv.use_algorithm("implicit_gemm"), gpuconv.use_tf32(kind == "tf32"):
            got = gpuconv.conv(*args, **kwargs)
        f64 = {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v
               for k, v in kwargs.items()}
        ref = gpuconv.conv(*[a.astype(np.float64) for a in args], **f64)
        mag = gpuconv.conv(*[np.abs(a.astype(np.float64)) for a in args],
                           **{k: np.abs(v) if isinstance(v, np.ndarray) else v
                              for k, v in f64.items()})
        w = args[1]
        n = int(np.prod(w.shape[1:])) + 1
        gamma = n * U_ACC / (1 - n * U_ACC)
        if kind == "float16":
            bound = gamma * mag + 2.0**-11 * (np.abs(ref) + gamma * mag) + 2.0**-25
        else:
            bound = (gamma + 2 * 2.0**-11) * mag
        assert got.dtype == dtype
        assert np.all(np.abs(got - ref) <= bound), case["id"]
