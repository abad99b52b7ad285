"""gpuconv.use_algorithm reaches every call with an algorithm choice (issue 14).

Forcing an algorithm that cannot serve a call raises ``ValueError`` naming it and the reason,
on the NumPy backend (whose only algorithm is ``"numpy"``) as on the emulator; forcing one
that can serve it runs exactly that algorithm's kernels (recorded launches) and, for the
CUDA-core kernels and the GEMM, gives the NumPy backend's result. Operations without an
algorithm choice ignore the setting (their results are bit for bit the unforced ones).

The expectations are written out by hand from docs/algorithms.md: which algorithms exist for
each operation on the device backends and which can serve each case. ``conv_igemm`` launches
are recorded and not run (its results are tested in test_igemm_*.py), except for the one
call (a pointwise input gradient) that only forcing an algorithm now reaches.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_helpers import emulator_or_skip

import gpuconv
from gpuconv import _algorithms, grad
from gpuconv.backends.device import _conv_algorithms, _executor, _igemm

DEVICE_ALGORITHMS = ("direct", "tiled", "matmul", "depthwise", "implicit_gemm")
CONV_NAMES = "'matmul', 'depthwise', 'implicit_gemm', 'tiled', 'direct'"
TRANSPOSE_NAMES = "'implicit_gemm', 'direct'"
TRANSPOSE_OP = "conv_transpose (or conv's input gradient)"



@pytest.fixture
def launches(monkeypatch):
    """The launches of the emulator calls made while active: kernel names in order
    (``"matmul"`` for the executor's GEMM); ``conv_igemm`` is recorded, not run."""
    emulator_or_skip()
    if gpuconv.available_backends()["emulate"] != "available":
        pytest.skip(gpuconv.available_backends()["emulate"])
    log: list[str] = []
    real_launch = _executor.Executor.launch
    real_matmul = _executor.EmulatorExecutor.matmul

    def launch(self, kernel, *, grid, block, args, shared_mem=0):
        log.append(kernel.name)
        return real_launch(self, kernel, grid=grid, block=block, args=args,
                           shared_mem=shared_mem)

    def matmul(self, a, b):
        log.append("matmul")
        return real_matmul(self, a, b)

    def igemm_launch(module, cfg, *arrays):
        assert module == "stub module of " + cfg.name
        log.append(cfg.name)

    monkeypatch.setattr(_executor.Executor, "launch", launch)
    monkeypatch.setattr(_executor.EmulatorExecutor, "matmul", matmul)
    monkeypatch.setattr(_igemm, "launch", igemm_launch)
    monkeypatch.setattr(_conv_algorithms, "igemm_module",
                        lambda backend, name: "stub module of " + name)
    return log


def _arrays():
    rng = np.random.default_rng(14)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, w, wt, w1 = r(2, 4, 6, 6), r(8, 4, 3, 3), r(4, 8, 3, 3), r(8, 4, 1, 1)
    go, got = r(2, 8, 6, 6), r(2, 8, 13, 13)
    dw, pw = r(4, 1, 3, 3), r(8, 4, 1, 1)
    return x, w, wt, w1, go, got, dw, pw


def _cases():
    """``(name, function, args, kwargs)`` of every public function with an algorithm choice
    on the device backends (one case each; a pointwise one for conv's input gradient)."""
    x, w, wt, w1, go, got, dw, pw = _arrays()
    pad = {"padding": 1}
    return [
        ("conv2d", gpuconv.conv2d, (x, w), pad),
        ("conv_transpose2d", gpuconv.conv_transpose2d, (x, wt), {"stride": 2}),
        ("separable_conv", gpuconv.separable_conv, (x, dw, pw), pad),
        ("grad.conv_input", grad.conv_input, (x.shape, w, go), pad),
        ("grad.conv_input 1x1", grad.conv_input, (x.shape, w1, go), {}),
        ("grad.conv_weight", grad.conv_weight, (x, w.shape, go), pad),
        ("grad.conv_transpose_input", grad.conv_transpose_input, (x.shape, wt, got),
         {"stride": 2}),
        ("grad.conv_transpose_weight", grad.conv_transpose_weight, (x, wt.shape, got),
         {"stride": 2}),
        ("grad.depthwise_conv_input", grad.depthwise_conv_input, (x.shape, w[:, :1], go), pad),
        ("grad.depthwise_conv_weight", grad.depthwise_conv_weight, (x, (8, 1, 3, 3), go), pad),
        ("grad.separable_conv", grad.separable_conv, (x, dw, pw, go), pad),
    ]


CASE_NAMES = [name for name, *_ in _cases()]


def _case(name):
    return next(case for case in _cases() if case[0] == name)


def _not_on(op, algorithm, names):
    return (f"{op}: algorithm {algorithm!r} cannot serve this call on the 'emulate' backend, "
            f"whose algorithms are {names}")


def _cannot(op, algorithm, reason):
    return f"{op}: algorithm {algorithm!r} cannot serve this call: {reason}"


NOT_1X1 = ("needs a 1x1 kernel, stride 1 and no padding; got kernel=(3, 3), stride=(1, 1), "
           "padding=(1, 1)/(1, 1)")
IGEMM_T, IGEMM_F = "conv_igemm<float, int, 0, 1>", "conv_igemm<float, int, 0, 0>"
CT_4, CT_1 = "conv_transpose3d<float, int, 4, true>", "conv_transpose3d<float, int, 1, true>"
DW_FWD, CWG = "depthwise_tiled<float, int, 0>", "conv_weight_grad<float, int, 0, false>"
DWG = "depthwise_weight_grad<float, int, 0, false>"


def _transpose_refusals(op=TRANSPOSE_OP, matmul=None):
    """The refusals of a transposed convolution (or a convolution's input gradient, whose
    ``matmul`` refusal is the pointwise one)."""
    return {a: _not_on(op, a, TRANSPOSE_NAMES) for a in ("tiled", "depthwise", "numpy")} | {
        "matmul": matmul or _not_on(op, "matmul", TRANSPOSE_NAMES)}


def _weight_refusals(op):
    return {a: _not_on(op, a, TRANSPOSE_NAMES) for a in ("tiled", "matmul", "depthwise",
                                                          "numpy")}


#: For each case on the emulator: the forced algorithms that serve it, each with the kernels
#: the call launches (in order), and the message of every one that cannot. (TF32 is on, so
#: implicit_gemm serves float32.)
EMULATE = {
    "conv2d": ({"direct": ["conv_direct<float, int, 0>"], "tiled": ["conv_tiled<float, int, 0>"],
                "implicit_gemm": [IGEMM_F]},
               {"matmul": _cannot("conv2d", "matmul", NOT_1X1),
                "depthwise": _cannot("conv2d", "depthwise",
                                     "needs groups == C_in, got groups=1, C_in=4"),
                "numpy": _not_on("conv2d", "numpy", CONV_NAMES)}),
    "conv_transpose2d": ({"direct": [CT_4], "implicit_gemm": [IGEMM_T]},
                         _transpose_refusals()),
    # the depthwise step has no choice; the pointwise step selects as conv does
    "separable_conv": ({"direct": [DW_FWD, "conv_direct<float, int, 0>"],
                        "tiled": [DW_FWD, "conv_tiled<float, int, 0>"],
                        "matmul": [DW_FWD, "matmul"], "implicit_gemm": [DW_FWD, IGEMM_F]},
                       {"depthwise": _cannot("separable_conv", "depthwise",
                                             "needs groups == C_in, got groups=1, C_in=4"),
                        "numpy": _not_on("separable_conv", "numpy", CONV_NAMES)}),
    "grad.conv_input": ({"direct": [CT_4], "implicit_gemm": [IGEMM_T]},
                        _transpose_refusals(matmul=_cannot(TRANSPOSE_OP, "matmul", NOT_1X1))),
    # a pointwise input gradient: one GEMM, unless another algorithm is forced
    "grad.conv_input 1x1": ({"matmul": ["matmul"], "direct": [CT_4],
                             "implicit_gemm": [IGEMM_T]},
                            {a: _not_on(TRANSPOSE_OP, a, TRANSPOSE_NAMES)
                             for a in ("tiled", "depthwise", "numpy")}),
    "grad.conv_weight": ({"direct": [CWG], "implicit_gemm": [IGEMM_F]},
                         _weight_refusals("conv_weight_grad")),
    # a convolution of grad_output: the conv registry
    "grad.conv_transpose_input": (
        {"direct": ["conv_direct<float, int, 0>"], "tiled": ["conv_tiled<float, int, 0>"],
         "implicit_gemm": [IGEMM_F]},
        {"matmul": _cannot("conv", "matmul", "needs a 1x1 kernel, stride 1 and no padding; got "
                                             "kernel=(3, 3), stride=(2, 2), padding=(0, 0)/(0, 0)"),
         "depthwise": _cannot("conv", "depthwise", "needs groups == C_in, got groups=1, C_in=8"),
         "numpy": _not_on("conv", "numpy", CONV_NAMES)}),
    "grad.conv_transpose_weight": ({"direct": [CWG], "implicit_gemm": [IGEMM_F]},
                                   _weight_refusals("conv_transpose_weight_grad")),
    "grad.depthwise_conv_input": ({"direct": [CT_1], "implicit_gemm": [IGEMM_T]},
                                  _transpose_refusals(
                                      matmul=_cannot(TRANSPOSE_OP, "matmul", NOT_1X1))),
    "grad.depthwise_conv_weight": ({"direct": [DWG], "implicit_gemm": [IGEMM_F]},
                                   _weight_refusals("depthwise_conv_weight_grad")),
    # the depthwise forward (no choice), then conv_input (pointwise), depthwise_conv_input,
    # depthwise_conv_weight and conv_weight (pointwise), each with the forced algorithm
    "grad.separable_conv": (
        {"direct": [DW_FWD, CT_4, CT_1, DWG, CWG],
         "implicit_gemm": [DW_FWD, IGEMM_T, IGEMM_T, IGEMM_F, IGEMM_F]},
        # matmul serves the pointwise input gradient, then not the depthwise one
        _transpose_refusals(matmul=_cannot(TRANSPOSE_OP, "matmul", NOT_1X1))),
}


def test_the_table_covers_every_case_and_every_algorithm():
    assert sorted(EMULATE) == sorted(CASE_NAMES)
    for name, (serves, refuses) in EMULATE.items():
        assert not set(serves) & set(refuses), name
        assert set(serves) | set(refuses) == {*DEVICE_ALGORITHMS, "numpy"}, name


def _results(value):
    return list(value) if isinstance(value, tuple) else [value]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_emulate_forced_algorithms_run_or_raise(name, launches):
    _, function, args, kwargs = _case(name)
    serves, refuses = EMULATE[name]
    with gpuconv.use_backend("numpy"):
        expected = _results(function(*args, **kwargs))
    with gpuconv.use_backend("emulate"), gpuconv.use_tf32():
        for algorithm, message in refuses.items():
            with gpuconv.use_algorithm(algorithm), pytest.raises(ValueError) as info:
                function(*args, **kwargs)
            assert str(info.value) == message, (name, algorithm)
        for algorithm, kernels in serves.items():
            launches.clear()
            with gpuconv.use_algorithm(algorithm):
                got = _results(function(*args, **kwargs))
            assert launches == kernels, (name, algorithm)
            if algorithm != "implicit_gemm":  # conv_igemm is stubbed here
                for g, e in zip(got, expected, strict=True):
                    if e is not None:
                        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4,
                                                   err_msg=f"{name} {algorithm}")


@pytest.mark.parametrize("name", [n for n in CASE_NAMES if n.split()[0] in _algorithms.PLAN_OPS])
def test_emulate_plan_names_the_forced_algorithm_or_raises_as_the_call(name, launches):
    _, _, args, kwargs = _case(name)
    serves, refuses = EMULATE[name]
    op = name.split()[0]
    with gpuconv.use_backend("emulate"), gpuconv.use_tf32():
        for algorithm, message in refuses.items():
            with gpuconv.use_algorithm(algorithm), pytest.raises(ValueError) as info:
                gpuconv.plan(op, *args, **kwargs)
            assert str(info.value) == message, (name, algorithm)
        for algorithm, kernels in serves.items():
            with gpuconv.use_algorithm(algorithm):
                p = gpuconv.plan(op, *args, **kwargs)
            assert (p.algorithm, p.reason) == (algorithm, "forced"), (name, algorithm)
            # the plan's kernels less host steps (the weight's copy into rows of K)
            assert [k for k in p.kernels if "<" in k] == [k for k in kernels if "<" in k]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_numpy_refuses_every_device_algorithm_and_runs_its_own(name):
    _, function, args, kwargs = _case(name)
    # grad.separable_conv's first step with a choice is its pointwise input gradient
    op = "grad.conv_input" if name == "grad.separable_conv" else name.split()[0]
    with gpuconv.use_backend("numpy"):
        unforced = _results(function(*args, **kwargs))
        for algorithm in DEVICE_ALGORITHMS:
            with gpuconv.use_algorithm(algorithm):
                with pytest.raises(ValueError) as info:
                    function(*args, **kwargs)
                assert str(info.value) == (
                    f"{op}: algorithm {algorithm!r} cannot serve this call on the 'numpy' "
                    f"backend, whose only algorithm is 'numpy'")
                if op in _algorithms.PLAN_OPS and name != "grad.separable_conv":
                    with pytest.raises(ValueError) as planned:
                        gpuconv.plan(op, *args, **kwargs)
                    assert str(planned.value) == str(info.value)
        with gpuconv.use_algorithm("numpy"):
            forced = _results(function(*args, **kwargs))
            if op in _algorithms.PLAN_OPS and name != "grad.separable_conv":
                p = gpuconv.plan(op, *args, **kwargs)
                assert (p.algorithm, p.reason, p.candidates) == ("numpy", "forced",
                                                                 {"numpy": ""})
    for f, u in zip(forced, unforced, strict=True):
        if u is not None:
            np.testing.assert_array_equal(f, u)


def test_environment_variable_forces_as_the_context_manager(monkeypatch):
    _, function, args, kwargs = _case("grad.conv_weight")
    monkeypatch.setenv(_algorithms.ALGORITHM_ENV, "direct")
    with gpuconv.use_backend("numpy"), pytest.raises(ValueError, match=(
            r"^grad.conv_weight: algorithm 'direct' cannot serve this call on the 'numpy' "
            r"backend, whose only algorithm is 'numpy'$")):
        function(*args, **kwargs)


def test_pointwise_input_gradient_on_tensor_cores_matches_the_reference():
    """The call only forcing reaches: a 1x1 input gradient through conv_igemm (run), in
    float16, against float64 on the float16 inputs, within the bound of
    test_igemm_gradients.py: gamma_n S + u_out (|ref| + gamma_n S) + eta_out, n = 32 terms
    (C_out / groups), S the sum of |products|, gamma_n = n u / (1 - n u), u = 2**-23 (fp32
    accumulation), u_out = 2**-11, eta_out = 2**-25 (float16's one rounding)."""
    emulator_or_skip()
    rng = np.random.default_rng(15)
    w = rng.standard_normal((32, 16, 1, 1)).astype(np.float16)
    g = rng.standard_normal((2, 32, 5, 6)).astype(np.float16)
    with gpuconv.use_backend("emulate"), gpuconv.use_algorithm("implicit_gemm"):
        got = grad.conv_input((2, 16, 5, 6), w, g)
    exact = np.einsum("oi,nohw->nihw", w[:, :, 0, 0].astype(np.float64), g.astype(np.float64))
    magnitude = np.einsum("oi,nohw->nihw", np.abs(w[:, :, 0, 0].astype(np.float64)),
                          np.abs(g.astype(np.float64)))
    gamma = 32 * 2.0**-23 / (1 - 32 * 2.0**-23)
    bound = gamma * magnitude + 2.0**-11 * (np.abs(exact) + gamma * magnitude) + 2.0**-25
    assert got.dtype == np.float16
    assert np.all(np.abs(got.astype(np.float64) - exact) <= bound)


def _unchosen_cases():
    rng = np.random.default_rng(16)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, offset, w, mask = r(1, 2, 5, 5), 0.3 * r(1, 18, 5, 5), r(3, 2, 3, 3), r(1, 9, 5, 5)
    return [
        ("depthwise_conv", gpuconv.depthwise_conv, (x, r(4, 1, 3, 3)), {"padding": 1}),
        ("deform_conv2d", gpuconv.deform_conv2d, (x, offset, w), {"padding": 1, "mask": mask}),
        ("grad.deform_conv2d", grad.deform_conv2d, (x, offset, w, r(1, 3, 5, 5)),
         {"padding": 1, "mask": mask}),
        ("grad.conv_bias", grad.conv_bias, (r(2, 3, 4),), {}),
        ("convolve", gpuconv.convolve, (r(9), r(4)), {}),
        ("correlate", gpuconv.correlate, (r(9), r(4)), {}),
    ]


@pytest.mark.parametrize("backend", ["numpy", "emulate"])
def test_operations_without_a_choice_ignore_the_forced_algorithm(backend):
    if backend == "emulate":
        emulator_or_skip()
    with gpuconv.use_backend(backend):
        for name, function, args, kwargs in _unchosen_cases():
            unforced = _results(function(*args, **kwargs))
            for algorithm in ("tiled", "implicit_gemm", "numpy"):
                with gpuconv.use_algorithm(algorithm):
                    forced = _results(function(*args, **kwargs))
                for f, u in zip(forced, unforced, strict=True):
                    if u is not None:
                        np.testing.assert_array_equal(f, u, err_msg=f"{name} {algorithm}")
