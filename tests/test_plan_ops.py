"""gpuconv.plan for conv_transpose and the gradients (issue 14): each plan names what the call
runs.

On the emulator every case runs the call with its launches recorded and compares them with
the plan: the kernel name expressions in order, the main kernel's grid, block and shared
memory, and the workspace the call allocates. ``conv_igemm`` launches are recorded and not
run (its module is replaced by a stub: the plan describes launches, and the kernel's results
are tested in test_igemm_*.py); every CUDA-core kernel runs. The NumPy backend has one
algorithm. The ``cuda`` defaults are checked on problems (no GPU here).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import gpuconv
from gpuconv import _algorithms, grad
from gpuconv._algorithms import ConvProblem
from gpuconv._dtypes import BFLOAT16
from gpuconv._shapes import as_3d, conv_transpose_geometry
from gpuconv.backends.device import _conv_algorithms, _executor, _igemm

from kernel_helpers import emulator_or_skip




@dataclasses.dataclass
class Launch:
    kind: str  # "executor" (a CUDA-core kernel, run), "igemm" (recorded only) or "matmul"
    name: str
    grid: object = None
    block: object = None
    shared_mem: int = 0
    args: tuple = ()
    workspace: object = None  # an igemm launch's fp32 workspace argument


@pytest.fixture
def launches(monkeypatch):
    """The launches of the calls made while the fixture is active, in order."""
    log: list[Launch] = []
    real_launch = _executor.Executor.launch
    real_matmul = _executor.EmulatorExecutor.matmul

    def launch(self, kernel, *, grid, block, args, shared_mem=0):
        log.append(Launch("executor", kernel.name, grid, block, shared_mem, args))
        return real_launch(self, kernel, grid=grid, block=block, args=args,
                           shared_mem=shared_mem)

    def matmul(self, a, b):
        log.append(Launch("matmul", f"matmul {a.shape} @ {b.shape}"))
        return real_matmul(self, a, b)

    def igemm_launch(module, cfg, x, weight, bias, out, ws):
        assert module == "stub module of " + cfg.name
        log.append(Launch("igemm", cfg.name, cfg.grid, cfg.block, _igemm.shared_bytes(),
                          cfg.args, ws))

    monkeypatch.setattr(_executor.Executor, "launch", launch)
    monkeypatch.setattr(_executor.EmulatorExecutor, "matmul", matmul)
    monkeypatch.setattr(_igemm, "launch", igemm_launch)
    monkeypatch.setattr(_conv_algorithms, "igemm_module",
                        lambda backend, name: "stub module of " + name)
    return log


def _function(op):
    if callable(op):
        return op
    return getattr(grad, op[5:]) if op.startswith("grad.") else getattr(gpuconv, op)


def _plan_and_run(op, args, kwargs, log):
    """The plan, then the call's launches; checks that the plan names them."""
    p = gpuconv.plan(op, *args, **kwargs)
    log.clear()
    _function(op)(*args, **kwargs)
    kernels = [e.name for e in log if e.kind != "matmul"]
    # the plan's kernels, less what runs on the host (the weight's copy into rows of K)
    assert [k for k in p.kernels if "<" in k] == kernels, (p, log)
    if kernels:
        first = log[0]
        assert (p.grid, p.block, p.shared_mem) == (first.grid, first.block, first.shared_mem), p
    return p


def _rng_arrays(rng, dtype, *shapes):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


# ----------------------------------------------------------------------------- conv_transpose

TRANSPOSE_KW = {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2}


@pytest.mark.parametrize("forced", [None, "direct", "implicit_gemm"])
def test_conv_transpose2d_plan_names_the_launch(on_emulate, launches, forced):
    rng = np.random.default_rng(0)
    x, w, b = _rng_arrays(rng, np.float16, (2, 8, 5, 5), (8, 12, 3, 3), (24,))
    with gpuconv.use_algorithm(forced):
        p = _plan_and_run("conv_transpose2d", (x, w, b), TRANSPOSE_KW, launches)
    # on the emulator the default is the CUDA-core kernel (docs/algorithms.md)
    assert p.algorithm == (forced or "direct")
    assert p.reason == ("forced" if forced else "default heuristic")
    assert p.candidates == {"implicit_gemm": "", "direct": ""}
    if p.algorithm == "implicit_gemm":
        geom = conv_transpose_geometry((5, 5), (3, 3), stride=2, padding=1, output_padding=1,
                                       dilation=1, groups=2)
        cfg = _igemm.transpose_config("float16", (2, 8, 1, 5, 5), (8, 12, 1, 3, 3),
                                      as_3d(geom), groups=2, has_bias=True)
        assert p.kernels == ("weight -> rows of K (one copy)", cfg.name)
        assert cfg.name == "conv_igemm<__half, int, 0, 1>"  # the transposed gather
        assert p.grid == cfg.grid and p.workspace_bytes == w.nbytes  # the rows of K
    else:
        assert p.kernels[0].startswith("conv_transpose3d<__half, int, ")
        assert p.workspace_bytes == 0


@pytest.mark.parametrize("op, x_shape, w_shape", [
    ("conv_transpose1d", (1, 3, 7), (3, 5, 4)),
    ("conv_transpose3d", (1, 4, 3, 4, 3), (4, 2, 2, 3, 2)),
    ("conv_transpose", (2, 3, 6), (3, 1, 1)),
])
def test_conv_transpose_ranks_default_direct(on_emulate, launches, op, x_shape, w_shape):
    rng = np.random.default_rng(1)
    x, w = _rng_arrays(rng, np.float64, x_shape, w_shape)
    p = _plan_and_run(op, (x, w), {"stride": 2, "dilation": 2}, launches)
    assert (p.op, p.algorithm) == (op, "direct")
    # float64 has no tensor-core kind: the reason is the kernel's
    assert "not implicit_gemm: tensor cores compute float16" in repr(p)


def test_conv_transpose_forced_algorithms_that_cannot_serve_raise_as_the_call(on_emulate):
    x, w = np.zeros((1, 2, 5), np.float32), np.zeros((2, 3, 3), np.float32)
    tiled = (r"algorithm 'tiled' cannot serve this call on the 'emulate' backend, whose "
             r"algorithms are 'implicit_gemm', 'direct'")
    for name, match in [("tiled", tiled), ("implicit_gemm", r"TF32, which is off")]:
        with gpuconv.use_algorithm(name):
            with pytest.raises(ValueError, match=match) as from_call:
                gpuconv.conv_transpose1d(x, w)
            with pytest.raises(ValueError) as from_plan:
                gpuconv.plan("conv_transpose1d", x, w)
        assert str(from_plan.value) == str(from_call.value)


# ----------------------------------------------------------------------------- input gradients


@pytest.mark.parametrize("forced", [None, "implicit_gemm"])
def test_conv_input_zeros_padding_is_one_transposed_convolution(on_emulate, launches, forced):
    rng = np.random.default_rng(2)
    w, g = _rng_arrays(rng, np.float16, (16, 4, 3, 3), (2, 16, 4, 4))
    with gpuconv.use_algorithm(forced):
        p = _plan_and_run("grad.conv_input", ((2, 4, 8, 8), w, g), {"stride": 2, "padding": 1},
                          launches)
    assert p.algorithm == (forced or "direct") and len(launches) == 1
    assert (p.algorithm == "implicit_gemm") == p.kernels[-1].startswith("conv_igemm<")


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("forced", [None, "implicit_gemm"])
def test_conv_input_padding_modes_fold_after_the_transposed_convolution(on_emulate, launches, mode,
                                                                        forced):
    rng = np.random.default_rng(3)
    w, g = _rng_arrays(rng, np.float16, (8, 3, 3, 3), (2, 8, 6, 5))
    with gpuconv.use_algorithm(forced):
        p = _plan_and_run("grad.conv_input", ((2, 3, 6, 5), w, g),
                          {"padding": 1, "padding_mode": mode}, launches)
    code = {"reflect": 1, "replicate": 2, "circular": 3}[mode]
    assert p.kernels[-1] == f"pad_fold<__half, int, {code}>"
    assert launches[-1].name == p.kernels[-1]
    # the padded gradient (N, C_in, *padded) is the call's temporary, besides the weight's
    # rows of K for implicit_gemm
    padded = launches[-1].args[0]
    assert padded.shape == (2, 3, 8, 7)
    rows = w.nbytes if p.algorithm == "implicit_gemm" else 0
    assert p.workspace_bytes == padded.nbytes + rows == 2 * 3 * 8 * 7 * 2 + rows


@pytest.mark.parametrize("forced", [None, "implicit_gemm"])
def test_bfloat16_folded_input_gradient_runs_in_float32(on_emulate, launches, forced):
    rng = np.random.default_rng(4)
    w, g = (a.astype(BFLOAT16) for a in _rng_arrays(rng, np.float32, (4, 2, 3), (1, 4, 7)))
    with gpuconv.use_algorithm(forced):  # implicit_gemm serves it as TF32, with TF32 off
        p = _plan_and_run("grad.conv_input", ((1, 2, 7), w, g),
                          {"padding": 1, "padding_mode": "reflect"}, launches)
    assert p.kernels[-1] == "pad_fold<float, int, 1>"
    if forced:
        assert p.kernels[-2] == _igemm.name_expression("tf32", "zeros", gather="transposed")
    else:
        assert p.kernels[0].startswith("conv_transpose3d<float, int, ")
    assert "bfloat16 -> float32" in p.layout_copy
    # float32 copies of weight and grad_output, the float32 gradient (1, 2, 7), the padded
    # gradient (1, 2, 9); implicit_gemm adds the float32 weight's rows of K
    expected = 4 * (w.size + g.size + 1 * 2 * 7 + 1 * 2 * 9) + (4 * w.size if forced else 0)
    assert p.workspace_bytes == expected


@pytest.mark.parametrize("forced", [None, "matmul", "direct", "implicit_gemm"])
def test_pointwise_input_gradient_is_a_gemm_unless_another_algorithm_is_forced(on_emulate, launches,
                                                                             forced):
    rng = np.random.default_rng(5)
    w, g = _rng_arrays(rng, np.float32, (6, 2, 1, 1), (3, 6, 4, 5))
    with gpuconv.use_tf32(), gpuconv.use_algorithm(forced):
        p = _plan_and_run("grad.conv_input", ((3, 4, 4, 5), w, g), {"groups": 2}, launches)
    # a 1x1, stride-1, unpadded input gradient: the GEMM and both transposed-convolution
    # algorithms can serve it (implicit_gemm as TF32)
    assert p.candidates == {"matmul": "", "implicit_gemm": "", "direct": ""}
    if forced in (None, "matmul"):
        assert [e.kind for e in launches] == ["matmul"]
        assert p.algorithm == "matmul"
        assert p.reason == "forced" if forced else p.reason.startswith("a 1x1, stride-1")
        assert p.kernels == ("numpy.matmul: (2, 2, 3) @ (3, 2, 3, 20)",)
    else:  # the transposed convolution of the forced algorithm, nothing else
        assert (p.algorithm, p.reason) == (forced, "forced")
        assert [e.kind for e in launches] == ["executor" if forced == "direct" else "igemm"]
        if forced == "direct":
            assert p.kernels[0].startswith("conv_transpose3d<float, int, ")
        else:
            assert p.kernels[-1] == _igemm.name_expression("tf32", "zeros",
                                                           gather="transposed")


def test_matmul_forced_on_an_input_gradient_that_is_not_pointwise_raises(on_emulate):
    w, g = np.zeros((6, 2, 3, 3), np.float32), np.zeros((3, 6, 4, 5), np.float32)
    for name, args, kwargs, why in [
        ("grad.conv_input", ((3, 4, 4, 5), w, g), {"groups": 2, "padding": 1},
         r"kernel=\(3, 3\), stride=\(1, 1\), padding=\(1, 1\)/\(1, 1\)"),
        ("grad.depthwise_conv_input", ((3, 6, 8, 10), w[:, :1, :1, :1], g), {"stride": 2},
         r"kernel=\(1, 1\), stride=\(2, 2\)"),
    ]:
        with gpuconv.use_algorithm("matmul"):
            with pytest.raises(ValueError, match=r"^conv_transpose \(or conv's input "
                               r"gradient\): algorithm 'matmul' cannot serve this call: needs "
                               r"a 1x1 kernel, stride 1 and no padding; got " + why) as call:
                _function(name)(*args, **kwargs)
            with pytest.raises(ValueError) as planned:
                gpuconv.plan(name, *args, **kwargs)
        assert str(planned.value) == str(call.value)


def test_depthwise_and_transpose_input_gradients(on_emulate, launches):
    rng = np.random.default_rng(6)
    w, g = _rng_arrays(rng, np.float32, (6, 1, 3), (2, 6, 9))
    p = _plan_and_run("grad.depthwise_conv_input", ((2, 3, 9), w, g),
                      {"padding": 1, "padding_mode": "circular"}, launches)
    assert p.algorithm == "direct" and p.kernels[-1] == "pad_fold<float, int, 3>"
    # a transposed convolution's input gradient is a convolution: the conv registry
    x_shape, (wt, gt) = (2, 4, 5, 5), _rng_arrays(rng, np.float32, (4, 3, 3, 3), (2, 3, 11, 11))
    p = _plan_and_run(grad.conv_transpose_input, (x_shape, wt, gt), {"stride": 2}, launches)
    # C_out / groups = 4 of the convolution (weight.shape[0]): conv_tiled by the heuristic
    assert p.op == "grad.conv_transpose_input" and p.algorithm == "tiled"
    assert p.kernels == ("conv_tiled<float, int, 0>",) and "matmul" in p.candidates


# ----------------------------------------------------------------------------- weight gradients


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_conv_weight_direct(on_emulate, launches, dtype, deterministic):
    rng = np.random.default_rng(7)
    x, g = _rng_arrays(rng, dtype, (2, 4, 16, 16), (2, 8, 16, 16))
    p = _plan_and_run("grad.conv_weight", (x, (8, 4, 3, 3), g),
                      {"padding": 1, "deterministic": deterministic}, launches)
    assert p.algorithm == "direct"
    det = "true" if deterministic else "false"
    assert p.kernels[0].startswith("conv_weight_grad<") and p.kernels[0].endswith(f"{det}>")
    workspace = launches[0].args[2]  # the kernel's accumulators
    if deterministic or dtype == np.float16:  # summed (and rounded) by weight_grad_reduce
        assert p.kernels[1].startswith("weight_grad_reduce<")
        assert p.workspace_bytes == workspace.nbytes
        splits = launches[0].grid[1]
        assert workspace.nbytes == (splits if deterministic else 1) * 8 * 4 * 9 * 4
    else:  # float32 atomics accumulate into the result itself
        assert len(p.kernels) == 1 and p.workspace_bytes == 0


@pytest.mark.parametrize("deterministic", [False, True])
def test_conv_weight_implicit_gemm_split_k_workspace(on_emulate, launches, deterministic):
    rng = np.random.default_rng(8)
    x, g = _rng_arrays(rng, np.float16, (2, 4, 16, 16), (2, 8, 16, 16))
    with gpuconv.use_algorithm("implicit_gemm"):
        p = _plan_and_run(grad.conv_weight, (x, (8, 4, 3, 3), g),
                          {"padding": 1, "deterministic": deterministic}, launches)
    assert p.algorithm == "implicit_gemm" and launches[0].kind == "igemm"
    splits = launches[0].grid[2]  # one group: grid.z is the K splits
    assert splits > 1, "the case must split K"
    out_elems = 8 * 4 * 9
    # fp32: one partial per split (deterministic) or one atomic accumulator
    expected = 4 * out_elems * (splits if deterministic else 1)
    assert launches[0].workspace.nbytes == expected == p.workspace_bytes
    assert p.kernels[1].startswith("weight_grad_reduce<__half, ")


@pytest.mark.parametrize("deterministic", [False, True])
def test_transpose_and_depthwise_weight_gradients(on_emulate, launches, deterministic):
    rng = np.random.default_rng(9)
    x, g = _rng_arrays(rng, np.float32, (2, 4, 80), (2, 6, 161))
    with gpuconv.use_tf32(), gpuconv.use_algorithm("implicit_gemm"):
        p = _plan_and_run("grad.conv_transpose_weight", (x, (4, 3, 3), g),
                          {"stride": 2, "groups": 2, "deterministic": deterministic}, launches)
    # the weight-gradient roles run the forward gather (0) of the TF32 kind, K = 2 * 80 split
    # over grid.z (2 groups x 2 splits); TF32 atomics accumulate into the float32 result,
    # deterministic partials are summed by weight_grad_reduce
    assert p.algorithm == "implicit_gemm" and launches[0].grid[2] == 4
    assert p.kernels[0] == _igemm.name_expression("tf32", "zeros") == "conv_igemm<float, int, 0, 0>"
    assert len(p.kernels) == (2 if deterministic else 1)
    assert p.workspace_bytes == 4 * 4 * 3 * 3 * (2 if deterministic else 1)
    x, g = _rng_arrays(rng, np.float64, (2, 3, 7), (2, 6, 7))
    p = _plan_and_run("grad.depthwise_conv_weight", (x, (6, 1, 3), g),
                      {"padding": 1, "padding_mode": "reflect", "deterministic": True}, launches)
    assert p.algorithm == "direct"
    assert p.kernels[0].startswith("depthwise_weight_grad<double, int, 1, true>")


def test_forced_algorithms_for_weight_gradients_raise_as_the_call(on_emulate):
    x, g = np.zeros((1, 2, 5), np.float64), np.zeros((1, 3, 3), np.float64)
    for name in ("tiled", "depthwise", "implicit_gemm"):
        with gpuconv.use_algorithm(name):
            with pytest.raises(ValueError) as from_call:
                grad.conv_weight(x, (3, 2, 3), g)
            with pytest.raises(ValueError) as from_plan:
                gpuconv.plan("grad.conv_weight", x, (3, 2, 3), g)
        assert str(from_plan.value) == str(from_call.value)
        assert str(from_call.value).startswith(f"conv_weight_grad: algorithm {name!r}")


# ----------------------------------------------------------------------------- every op


def _cases(dtype):
    rng = np.random.default_rng(10)
    x, w, wt = _rng_arrays(rng, dtype, (2, 4, 6, 6), (8, 4, 3, 3), (4, 8, 3, 3))
    go, got = _rng_arrays(rng, dtype, (2, 8, 6, 6), (2, 8, 13, 13))
    conv = {"padding": 1}
    return [
        ("conv2d", (x, w), conv),
        ("conv_transpose2d", (x, wt), {"stride": 2}),
        ("grad.conv_input", (x.shape, w, go), conv),
        ("grad.conv_weight", (x, w.shape, go), conv),
        ("grad.conv_transpose_input", (x.shape, wt, got), {"stride": 2}),
        ("grad.conv_transpose_weight", (x, wt.shape, got), {"stride": 2}),
        ("grad.depthwise_conv_input", (x.shape, w[:, :1], go), conv),
        ("grad.depthwise_conv_weight", (x, (8, 1, 3, 3), go), conv),
    ]


def test_plan_ops_covers_every_case_and_the_functions_map_to_their_names():
    assert sorted(op for op, _, _ in _cases(np.float32)) == sorted(
        op for op in _algorithms.PLAN_OPS if op[-2:] not in ("1d", "3d")
        and op not in ("conv", "conv_transpose"))
    x, w = np.zeros((1, 2, 5)), np.zeros((3, 2, 3))
    assert gpuconv.plan(gpuconv.conv1d, x, w).op == "conv1d"
    assert gpuconv.plan(grad.conv_weight, x, w.shape, np.zeros((1, 3, 3))).op == \
        "grad.conv_weight"
    assert gpuconv.plan(gpuconv.grad.conv_transpose_weight, np.zeros((1, 3, 3)), w.shape,
                        x).op == "grad.conv_transpose_weight"


@pytest.mark.parametrize("backend", ["numpy", "emulate"])
def test_every_op_plans_without_launching_and_then_matches_the_call(backend, launches):
    if backend == "emulate":
        emulator_or_skip()
    with gpuconv.use_backend(backend):
        for op, args, kwargs in _cases(np.float32):
            launches.clear()
            p = gpuconv.plan(_function(op), *args, **kwargs)
            assert launches == [], f"plan({op}) launched {launches}"
            assert p.op == op and p.backend == backend
            if backend == "numpy":
                assert (p.algorithm, p.reason, p.candidates) == ("numpy", "default heuristic",
                                                                 {"numpy": ""})
                assert p.kernels[0].startswith("NumPy: ")
            else:
                _plan_and_run(op, args, kwargs, launches)


@pytest.mark.parametrize("backend", ["numpy", "emulate"])
@pytest.mark.parametrize("forced", ["tiled", "direct", "implicit_gemm", "numpy", "matmul"])
def test_a_forced_algorithm_raises_in_plan_exactly_when_in_the_call(backend, forced, launches):
    if backend == "emulate":
        emulator_or_skip()
    with gpuconv.use_backend(backend), gpuconv.use_algorithm(forced):
        for op, args, kwargs in _cases(np.float32):
            try:
                _function(op)(*args, **kwargs)
                call_error = None
            except ValueError as exc:
                call_error = str(exc)
            try:
                p = gpuconv.plan(op, *args, **kwargs)
                plan_error = None
            except ValueError as exc:
                plan_error = str(exc)
            assert plan_error == call_error, op
            if backend == "numpy" and forced != "numpy":
                # every op refuses a device algorithm on the NumPy backend, as conv does
                assert call_error == (f"{op}: algorithm {forced!r} cannot serve this call on "
                                      f"the 'numpy' backend, whose only algorithm is 'numpy'")
            elif backend == "numpy":
                assert (p.algorithm, p.reason) == ("numpy", "forced")
            elif forced == "numpy":  # the device backends never have it
                assert call_error.endswith("cannot serve this call on the 'emulate' backend, "
                                           "whose algorithms are " + (
                                               "'matmul', 'depthwise', 'implicit_gemm', "
                                               "'tiled', 'direct'" if op in (
                                                   "conv2d", "grad.conv_transpose_input")
                                               else "'implicit_gemm', 'direct'")), op


def test_arguments_are_validated_as_the_call():
    x, w = np.zeros((1, 2, 5)), np.zeros((3, 2, 3))
    bad = [
        ("grad.conv_weight", (x, (3, 2, 3), np.zeros((1, 3, 4))), {}),  # grad_output shape
        ("grad.conv_weight", (x, (3, 2, 3), np.zeros((1, 3, 3))), {"deterministic": 1}),
        ("grad.conv_input", (x, w, np.zeros((1, 3, 3))), {}),  # an array for input_shape
        ("grad.conv_input", (x.shape, w, np.zeros((1, 3, 3))), {"output_padding": 1}),
        ("conv_transpose1d", (np.zeros((1, 2, 5, 5)), w), {}),
        ("conv_transpose", (x, np.zeros((2, 3, 3))), {"output_padding": 3}),
        ("conv_transpose", (x, np.zeros((2, 3, 3)), np.zeros(4)), {}),  # bias shape
        ("grad.depthwise_conv_weight", (x, (5, 1, 3), np.zeros((1, 5, 3))), {}),
    ]
    for op, args, kwargs in bad:
        with pytest.raises((TypeError, ValueError)) as from_call:
            _function(op)(*args, **kwargs)
        with pytest.raises(from_call.type) as from_plan:
            gpuconv.plan(op, *args, **kwargs)
        # plan prefixes Python's own argument errors with "plan: <op>: "
        assert str(from_plan.value).endswith(str(from_call.value).split("() ")[-1]), op


def test_bad_op_lists_every_valid_one():
    with pytest.raises(ValueError) as info:
        gpuconv.plan("conv_weight", np.zeros((1, 1, 3)), (1, 1, 1), np.zeros((1, 1, 3)))
    for op in ("conv", "conv_transpose3d", "grad.conv_input", "grad.conv_weight",
               "grad.conv_transpose_weight", "grad.depthwise_conv_weight"):
        assert repr(op) in str(info.value)
    with pytest.raises(ValueError, match=r"op='grad.conv_bias'"):
        gpuconv.plan(grad.conv_bias, np.zeros((1, 2, 3)))


def test_nothing_to_compute(on_emulate):
    x, w = np.zeros((0, 2, 5), np.float32), np.zeros((2, 3, 3), np.float32)
    assert gpuconv.plan("conv_transpose", x, w).algorithm == "none"
    p = gpuconv.plan("grad.conv_weight", x, (3, 2, 3), np.zeros((0, 3, 3), np.float32))
    assert (p.algorithm, p.kernels) == ("none", ())
    assert p.reason == "nothing to compute: the result is zeros"


def test_autotune_pending_then_cached_under_the_call_key(on_emulate, launches):
    rng = np.random.default_rng(11)
    x, g = _rng_arrays(rng, np.float16, (2, 4, 8, 8), (2, 16, 8, 8))
    args, kwargs = (x, (16, 4, 3, 3), g), {"padding": 1, "deterministic": True}
    w, go = _rng_arrays(rng, np.float16, (16, 4, 3, 3), (2, 16, 4, 4))
    args_in, kwargs_in = ((2, 4, 8, 8), w, go), {"stride": 2, "padding": 1}
    with gpuconv.use_autotune():
        for op, a, k in [("grad.conv_weight", args, kwargs), ("grad.conv_input", args_in,
                                                              kwargs_in)]:
            pending = gpuconv.plan(op, *a, **k)
            assert pending.reason.startswith("autotune pending: the first call times "
                                             "implicit_gemm, direct"), pending.reason
            _function(op)(*a, **k)
            cached = gpuconv.plan(op, *a, **k)
            assert cached.reason == "autotune cache", (op, cached.reason)
            assert cached.algorithm in ("implicit_gemm", "direct")
            launches.clear()
            _function(op)(*a, **k)  # the cached choice runs
            assert launches[0].kind == ("igemm" if cached.algorithm == "implicit_gemm"
                                        else "executor")


# ----------------------------------------------------------------------------- cuda defaults


def _problem(backend, x_shape, w_shape, dtype, geom, operation, tf32=False):
    return ConvProblem("p", backend, x_shape, w_shape, np.dtype(dtype), geom, tf32=tf32,
                       operation=operation)


def test_cuda_transpose_default_is_tensor_cores_for_wide_layers():
    geom = conv_transpose_geometry((28, 28), (3, 3), stride=2, padding=1, output_padding=1,
                                   dilation=1)
    x_shape, w_shape = (8, 64, 28, 28), (64, 32, 3, 3)  # N = C_out = 32, K = 64 * 9
    pick = _conv_algorithms.default_transpose_name
    assert pick(_problem("cuda", x_shape, w_shape, np.float16, geom, "conv_transpose")) == \
        "implicit_gemm"
    assert pick(_problem("emulate", x_shape, w_shape, np.float16, geom,
                         "conv_transpose")) == "direct"
    assert pick(_problem("cuda", x_shape, w_shape, np.float32, geom, "conv_transpose")) == \
        "direct"  # exact float32 by default
    assert pick(_problem("cuda", x_shape, w_shape, np.float32, geom, "conv_transpose",
                         tf32=True)) == "implicit_gemm"
    assert pick(_problem("cuda", x_shape, (64, 8, 3, 3), np.float16, geom,
                         "conv_transpose")) == "direct"  # N = 8 < 16
    assert pick(_problem("cuda", (8, 3, 28, 28), (3, 32, 3, 3), np.float16, geom,
                         "conv_transpose")) == "direct"  # K = 27 < 32
    # what a plan on cuda would select and show: the transposed-gather launch
    problem = _problem("cuda", x_shape, w_shape, np.float16, geom, "conv_transpose")
    selection = _algorithms.select("conv_transpose", problem,
                                   *_conv_algorithms.algorithms_for("conv_transpose"))
    described = selection.algorithm.describe(problem)
    cfg = _igemm.transpose_config("float16", (8, 64, 1, 28, 28), (64, 32, 1, 3, 3),
                                  as_3d(geom), groups=1, has_bias=False)
    assert described.kernels[-1] == cfg.name and described.grid == cfg.grid


def test_cuda_weight_grad_default():
    from gpuconv._shapes import conv_geometry

    geom = conv_geometry((14, 14), (3, 3), stride=1, padding=1, dilation=1)
    pick = _conv_algorithms.default_weight_grad_name
    wide = _problem("cuda", (32, 256, 14, 14), (256, 256, 3, 3), np.float16, geom,
                    "conv_weight")
    assert pick(wide) == "implicit_gemm"
    assert pick(dataclasses.replace(wide, backend="emulate")) == "direct"
    assert pick(dataclasses.replace(wide, dtype=np.dtype(np.float64))) == "direct"
    dgeom = dataclasses.replace(geom, groups=256)  # depthwise: one input channel per group
    assert pick(dataclasses.replace(wide, geom=dgeom, w_shape=(256, 1, 3, 3))) == "direct"
    deterministic = dataclasses.replace(wide, deterministic=True)
    described = _conv_algorithms.WEIGHT_GRAD_REGISTRY[0].describe(deterministic)
    cfg = _igemm.weight_grad_config("float16", (32, 256, 1, 14, 14), (32, 256, 1, 14, 14),
                                    as_3d(geom), groups=1, padding_mode="zeros",
                                    deterministic=True)
    assert described.workspace_bytes == 4 * math.prod(cfg.workspace)
    assert described.kernels[0] == cfg.name
    assert (len(described.kernels) == 2) == (cfg.splits > 1)


def test_plan_checks_the_arguments_against_the_ops_signature():
    """plan(op, *args, **kwargs) is the one public catch-all signature (test_validation
    exempts it): it binds the arguments to ``op``'s explicit signature, so a misspelt or
    missing argument is the TypeError the call would raise, naming ``op``."""
    x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))
    with pytest.raises(TypeError, match=r"^plan: conv: got an unexpected keyword argument "
                                        r"'paddin'"):
        gpuconv.plan("conv", x, w, paddin=1)
    with pytest.raises(TypeError, match=r"^plan: grad.conv_weight: missing a required "
                                        r"argument: 'weight_shape'"):
        gpuconv.plan("grad.conv_weight", x)
