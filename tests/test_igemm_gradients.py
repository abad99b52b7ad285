"""The tensor-core implicit GEMM behind the public API, beyond the conv forward (issue 14):
``conv_transpose`` forward, conv's input gradient (a transposed convolution, then the padding
fold for reflect/replicate/circular), the weight gradients of conv, conv_transpose and
depthwise_conv (split-K, atomic or ``deterministic``), on the emulator, forced with
``use_algorithm("implicit_gemm")``; the default choices; forcing errors; autotune keys.

Reference: the NumPy backend in float64 on the rounded inputs (float16 / bfloat16 as stored,
TF32-rounded float32). Bound, as in tests/test_igemm_kernel.py, with n the terms of one sum:
|got - ref| <= gamma_n * S + u_out * (|ref| + gamma_n * S) + eta_out, S the same computation
on |inputs|, gamma_n = n u / (1 - n u), u = 2**-23.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpuconv
from gpuconv import _algorithms, _dispatch, grad
from gpuconv._algorithms import ConvProblem
from gpuconv._shapes import conv_geometry, conv_transpose_geometry
from gpuconv.backends.device import _conv_algorithms
from gpuconv.backends.device import _igemm as ig

from kernel_helpers import tensor_core_value as _value

emulator = pytest.importorskip("gpuconv._emulator")
if not emulator.available():
    pytest.skip("g++ is not available: the emulator cannot run", allow_module_level=True)

U = 2.0**-23
DTYPES = ["float16", "tf32", "bfloat16"]


def _dtype(kind):
    if kind == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(np.float16 if kind == "float16" else np.float32)


def _bound(kind, ref, mag, n):
    gamma = n * U / (1 - n * U)
    u_out = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "tf32": 0.0}[kind]
    eta = 2.0**-25 if kind == "float16" else 0.0
    return gamma * mag + u_out * (np.abs(ref) + gamma * mag) + eta


def _check(kind, got, ref, mag, n, fold=False):
    """``fold``: reflect/replicate/circular input gradients round the padded gradient to the
    output type before the fold adds its border cells (docs: backends/device/_conv.py), so each
    folded term carries one more rounding: + 2 u_out S (float16; bfloat16 folds in float32
    and rounds once, float32 has no output rounding)."""
    got = np.asarray(got).astype(np.float64)
    assert got.shape == ref.shape
    bound = _bound(kind, ref, mag, n)
    if fold:
        bound = bound + 2 * {"float16": 2.0**-11, "bfloat16": 0.0, "tf32": 0.0}[kind] * mag
    err = np.abs(got - ref)
    assert np.all(err <= bound), f"max err {err.max():.3g}, ratio {(err / np.where(bound > 0, bound, 1)).max():.3g}"


@pytest.fixture
def emulate():
    with gpuconv.use_backend("emulate"):
        yield


def _forced(kind):
    """use_algorithm("implicit_gemm"), with TF32 on for the tf32 kind."""
    class Both:
        def __enter__(self):
            self.a = gpuconv.use_algorithm("implicit_gemm")
            self.t = gpuconv.use_tf32(kind == "tf32")
            self.a.__enter__()
            self.t.__enter__()

        def __exit__(self, *exc):
            self.t.__exit__(*exc)
            self.a.__exit__(*exc)
    return Both()


def _rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


INPUT_GRAD_CASES = {
    "zeros_s2_groups": ((2, 6, 9, 8), (8, 3, 3, 3), dict(stride=2, padding=1, groups=2)),
    "reflect_fold": ((1, 5, 7, 6), (16, 5, 3, 3), dict(padding=1, padding_mode="reflect")),
    "circular_dil_1d": ((2, 4, 19), (20, 4, 3), dict(dilation=2, padding=2,
                                                    padding_mode="circular")),
    "3d_same": ((1, 3, 4, 5, 4), (6, 3, 3, 3, 3), dict(padding="same")),
}


@pytest.mark.parametrize("kind", DTYPES)
@pytest.mark.parametrize("case", list(INPUT_GRAD_CASES))
def test_input_gradient(emulate, kind, case):
    x_shape, w_shape, kw = INPUT_GRAD_CASES[case]
    dtype = _dtype(kind)
    rng = np.random.default_rng(list(INPUT_GRAD_CASES).index(case))
    w = _rand(rng, w_shape, dtype, 1 / math.sqrt(x_shape[1]))
    y_shape = gpuconv.conv(np.zeros(x_shape), np.zeros(w_shape), **kw).shape
    go = _rand(rng, y_shape, dtype)
    with _forced(kind):
        got = grad.conv_input(x_shape, w, go, **kw)
    assert got.dtype == dtype
    with gpuconv.use_backend("numpy"):
        ref = grad.conv_input(x_shape, _value(kind, w), _value(kind, go), **kw)
        mag = grad.conv_input(x_shape, np.abs(_value(kind, w)), np.abs(_value(kind, go)), **kw)
    # n: the terms of one GEMM sum (+ the fold's few adds of a padded border)
    n = w_shape[0] // kw.get("groups", 1) * math.prod(w_shape[2:]) + 8
    _check(kind, got, ref, mag, n, fold=kw.get("padding_mode", "zeros") != "zeros")


@pytest.mark.parametrize("kind", DTYPES)
def test_conv_transpose_forward_and_the_kernel_level_bits(emulate, kind):
    dtype = _dtype(kind)
    rng = np.random.default_rng(11)
    x, w = _rand(rng, (2, 6, 5, 4), dtype), _rand(rng, (6, 5, 3, 2), dtype, 0.4)
    b = _rand(rng, (10,), dtype)
    kw = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2), groups=2)
    with _forced(kind):
        got = gpuconv.conv_transpose(x, w, b, **kw)
    with gpuconv.use_backend("numpy"):
        ref = gpuconv.conv_transpose(_value(kind, x), _value(kind, w), b.astype(np.float64), **kw)
        mag = gpuconv.conv_transpose(np.abs(_value(kind, x)), np.abs(_value(kind, w)),
                                     np.abs(b.astype(np.float64)), **kw)
    _check(kind, got, ref, mag, 3 * 6 + 1)
    # the API's launch is the kernel-level launcher's, bit for bit
    bits = (lambda a: a.view(np.uint16)) if kind == "bfloat16" else (lambda a: a)
    module = _conv_algorithms.igemm_module(_dispatch.get_backend("emulate"),
                                           ig.name_expression(kind, "zeros", gather="transposed"))
    direct = ig.conv_igemm_transpose(module, bits(x), bits(w), bits(b), kind=kind, **kw)
    np.testing.assert_array_equal(bits(got), direct)


WEIGHT_CASES = {
    "3x3_pad": ((2, 5, 24, 24), (16, 5, 3, 3), dict(padding=1)),  # K' = 1152: 5 splits
    "s2_groups_reflect": ((3, 8, 11, 9), (6, 4, 3, 3), dict(stride=2, padding=1, groups=2,
                                                           padding_mode="reflect")),
    "1d_dil": ((4, 3, 40), (7, 3, 5), dict(dilation=2, padding=4)),
}


@pytest.mark.parametrize("kind", DTYPES)
@pytest.mark.parametrize("case", list(WEIGHT_CASES))
@pytest.mark.parametrize("deterministic", [False, True])
def test_weight_gradient(emulate, kind, case, deterministic):
    x_shape, w_shape, kw = WEIGHT_CASES[case]
    dtype = _dtype(kind)
    rng = np.random.default_rng(list(WEIGHT_CASES).index(case))
    x = _rand(rng, x_shape, dtype)
    y_shape = gpuconv.conv(np.zeros(x_shape), np.zeros(w_shape), **kw).shape
    go = _rand(rng, y_shape, dtype)
    with _forced(kind):
        got = grad.conv_weight(x, w_shape, go, deterministic=deterministic, **kw)
    assert got.dtype == dtype and got.shape == w_shape
    with gpuconv.use_backend("numpy"):
        ref = grad.conv_weight(_value(kind, x), w_shape, _value(kind, go), **kw)
        mag = grad.conv_weight(np.abs(_value(kind, x)), w_shape, np.abs(_value(kind, go)), **kw)
    _check(kind, got, ref, mag, y_shape[0] * math.prod(y_shape[2:]))


def test_deterministic_weight_gradient_is_bitwise_reproducible(emulate):
    """Split K (5 splits here) summed in a fixed order: repeated calls give the same bits,
    though the emulator's worker threads finish the blocks in any order."""
    x_shape, w_shape, kw = WEIGHT_CASES["3x3_pad"]
    rng = np.random.default_rng(5)
    x, go = _rand(rng, x_shape, np.float16), _rand(rng, (2, 16, 24, 24), np.float16)
    problem = ConvProblem.of("emulate", x, w_shape, None,
                             conv_geometry((24, 24), (3, 3), stride=1, padding=1, dilation=1),
                             operation="conv_weight", deterministic=True)
    cfg = _conv_algorithms.WEIGHT_GRAD_REGISTRY[0]._config(problem)[1]
    assert cfg.splits > 1 and cfg.epilogue == ig.EPILOGUE_PARTIAL
    with gpuconv.use_algorithm("implicit_gemm"):
        first = grad.conv_weight(x, w_shape, go, deterministic=True, **kw)
        for _ in range(3):
            np.testing.assert_array_equal(grad.conv_weight(x, w_shape, go, deterministic=True,
                                                           **kw), first)


@pytest.mark.parametrize("kind", ["float16", "tf32"])
def test_transpose_and_depthwise_weight_gradients(emulate, kind):
    dtype = _dtype(kind)
    rng = np.random.default_rng(8)
    # conv_transpose's weight gradient: the conv weight gradient with x and grad_output swapped
    x, w_shape = _rand(rng, (2, 4, 5, 6), dtype), (4, 3, 3, 3)
    kw = dict(stride=2, padding=1, output_padding=1)
    go = _rand(rng, gpuconv.conv_transpose(np.zeros((2, 4, 5, 6)), np.zeros(w_shape),
                                           **kw).shape, dtype)
    with _forced(kind):
        got = grad.conv_transpose_weight(x, w_shape, go, **kw)
    with gpuconv.use_backend("numpy"):
        ref = grad.conv_transpose_weight(_value(kind, x), w_shape, _value(kind, go), **kw)
        mag = grad.conv_transpose_weight(np.abs(_value(kind, x)), w_shape,
                                         np.abs(_value(kind, go)), **kw)
    _check(kind, got, ref, mag, 2 * 5 * 6)
    # depthwise (one input channel per group) served when forced
    x = _rand(rng, (2, 3, 7, 7), dtype)
    go = _rand(rng, (2, 6, 7, 7), dtype)
    with _forced(kind):
        got = grad.depthwise_conv_weight(x, (6, 1, 3, 3), go, padding=1)
    with gpuconv.use_backend("numpy"):
        ref = grad.depthwise_conv_weight(_value(kind, x), (6, 1, 3, 3), _value(kind, go),
                                         padding=1)
        mag = grad.depthwise_conv_weight(np.abs(_value(kind, x)), (6, 1, 3, 3),
                                         np.abs(_value(kind, go)), padding=1)
    _check(kind, got, ref, mag, 2 * 49)


# ------------------------------------------------------------------ choice and errors


def _problem(operation, backend, dtype, x_shape, w_shape, geom, tf32=False):
    return ConvProblem("x", backend, x_shape, w_shape, np.dtype(dtype), geom, tf32=tf32,
                       operation=operation)


def test_default_choices():
    g = conv_geometry((56, 56), (3, 3), stride=1, padding=1, dilation=1)
    t = conv_transpose_geometry((28, 28), (3, 3), stride=2, padding=1, output_padding=1,
                                dilation=1)
    layer = ((32, 64, 56, 56), (64, 64, 3, 3))
    dt, dw = _conv_algorithms.default_transpose_name, _conv_algorithms.default_weight_grad_name
    assert dt(_problem("conv_transpose", "cuda", np.float16, (32, 64, 28, 28),
                       (64, 64, 3, 3), t)) == "implicit_gemm"
    assert dw(_problem("conv_weight", "cuda", np.float16, *layer, g)) == "implicit_gemm"
    assert dw(_problem("conv_weight", "cuda", np.float32, *layer, g, tf32=True)) == \
        "implicit_gemm"
    # exact float32, float64, the emulator, depthwise, few channels: the CUDA-core kernels
    assert dw(_problem("conv_weight", "cuda", np.float32, *layer, g)) == "direct"
    assert dw(_problem("conv_weight", "cuda", np.float64, *layer, g)) == "direct"
    assert dw(_problem("conv_weight", "emulate", np.float16, *layer, g)) == "direct"
    assert dw(_problem("conv_weight", "cuda", np.float16, (32, 64, 56, 56), (64, 1, 3, 3),
                       conv_geometry((56, 56), (3, 3), stride=1, padding=1, dilation=1,
                                     groups=64))) == "direct"
    assert dt(_problem("conv_transpose", "cuda", np.float16, (32, 64, 28, 28), (64, 8, 3, 3),
                       t)) == "direct"


def test_forcing_an_algorithm_the_operation_lacks_raises(emulate):
    x, w = np.ones((1, 4, 6, 6)), np.ones((4, 2, 3, 3))
    with gpuconv.use_algorithm("tiled"):
        with pytest.raises(ValueError, match=r"conv_transpose \(or conv's input gradient\): "
                                             r"algorithm 'tiled' cannot serve this call on "
                                             r"the 'emulate' backend, whose algorithms are "
                                             r"'implicit_gemm', 'direct'"):
            gpuconv.conv_transpose(x, w)
        with pytest.raises(ValueError, match=r"conv_weight_grad: algorithm 'tiled'"):
            grad.conv_weight(x, (2, 4, 3, 3), np.ones((1, 2, 4, 4)))
    with gpuconv.use_algorithm("implicit_gemm"):
        with pytest.raises(ValueError, match="tensor cores compute float16, bfloat16 or TF32, "
                                             "not float64"):
            grad.conv_weight(x, (2, 4, 3, 3), np.ones((1, 2, 4, 4)))
        with pytest.raises(ValueError, match="TF32, which is off"):
            gpuconv.conv_transpose(x.astype(np.float32), w.astype(np.float32))


def test_autotune_keys_the_operation_and_determinism(emulate):
    _algorithms.AUTOTUNER.clear()
    rng = np.random.default_rng(9)
    x, go = _rand(rng, (1, 4, 6, 6), np.float16), _rand(rng, (1, 16, 6, 6), np.float16)
    try:
        with gpuconv.use_autotune():
            grad.conv_weight(x, (16, 4, 3, 3), go, padding=1, deterministic=True)
            grad.conv_input(x.shape, _rand(rng, (16, 4, 3, 3), np.float16), go, padding=1)
        keys = list(_algorithms.AUTOTUNER.cache)
        ops = {(k[0][-1], k[1]) for k in keys}
        assert ("conv_weight", True) in ops and ("conv_transpose", True) in ops
        for k in keys:
            assert set(_algorithms.AUTOTUNER.timings[k]) == {"implicit_gemm", "direct"}
    finally:
        _algorithms.AUTOTUNER.clear()


# ------------------------------------------------------------------ channels-last forwards


def _nhwc_of(a):
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)


@pytest.mark.parametrize("kind", DTYPES)
@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding=1, groups=2,
                                                      padding_mode="reflect"),
                                dict(dilation=2, padding="same", padding_mode="circular")])
def test_channels_last_conv_is_read_in_place(emulate, kind, kw):
    """A dense channels-last x (C_in / groups a multiple of 16 bytes of channels) is read in
    place by implicit_gemm's channels-last gather: no transposing copy in or out, a
    channels-last result within the bound of the float64 reference."""
    from gpuconv import _layout

    dtype = _dtype(kind)
    rng = np.random.default_rng(12)
    x = _rand(rng, (2, 16, 9, 8), dtype)
    w = _rand(rng, (24, 16 // kw.get("groups", 1), 3, 3), dtype, 0.25)
    b = _rand(rng, (24,), dtype)
    with _forced(kind), _layout.count_copies() as copies:
        got = gpuconv.conv2d(_nhwc_of(x), w, b, **kw)
    assert dict(copies) == {}
    assert _layout.is_dense_channels_last(got) and got.dtype == dtype
    with gpuconv.use_backend("numpy"):
        ref = gpuconv.conv2d(_value(kind, x), _value(kind, w), b.astype(np.float64), **kw)
        mag = gpuconv.conv2d(np.abs(_value(kind, x)), np.abs(_value(kind, w)),
                             np.abs(b.astype(np.float64)), **kw)
    _check(kind, got, ref, mag, 16 // kw.get("groups", 1) * 9 + 1)


def test_channels_last_that_the_gather_cannot_read_is_copied_once(emulate):
    """C_in = 3 (not a multiple of 8 fp16 channels): copied to NCDHW once and computed by the
    NCDHW gather -- the same bits as a C-contiguous x -- and the result made channels-last
    once."""
    from gpuconv import _layout

    rng = np.random.default_rng(13)
    x, w = _rand(rng, (1, 3, 9, 9), np.float16), _rand(rng, (16, 3, 3, 3), np.float16)
    with gpuconv.use_algorithm("implicit_gemm"):
        ref = gpuconv.conv2d(x, w, padding=1)
        with _layout.count_copies() as copies:
            got = gpuconv.conv2d(_nhwc_of(x), w, padding=1)
    assert dict(copies) == {"input_to_nchw": 1, "output_to_channels_last": 1}
    np.testing.assert_array_equal(got, ref)
    assert _layout.is_dense_channels_last(got)


def test_plan_reports_the_channels_last_decision(emulate):
    rng = np.random.default_rng(14)
    x = _nhwc_of(_rand(rng, (2, 16, 9, 8), np.float16))
    w = _rand(rng, (24, 16, 3, 3), np.float16)
    p = gpuconv.plan("conv2d", x, w, padding=1)  # the emulator's default: tiled
    assert p.algorithm == "tiled"
    assert "copied once to NCHW (algorithm 'tiled' reads NCHW here)" in p.layout_copy
    with gpuconv.use_algorithm("implicit_gemm"):
        p = gpuconv.plan("conv2d", x, w, padding=1)
    assert p.kernels[-1] == ig.name_expression("float16", "zeros", gather="nhwc")
    assert "read in place (NHWC)" in p.layout_copy


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_channels_last_conv_property(data):
    """Random channels-last convolutions that the channels-last gather can read (C_in /
    groups a multiple of 8 fp16 or 4 float32 channels), forced implicit_gemm on emulate: no
    transposing copy, a channels-last result, within the bound of float64 on the rounded
    inputs."""
    from gpuconv import _layout

    kind = data.draw(st.sampled_from(["float16", "tf32"]))
    dtype = _dtype(kind)
    nd = data.draw(st.integers(2, 3))
    groups = data.draw(st.integers(1, 2))
    vec = 8 if kind == "float16" else 4
    cg = vec * data.draw(st.integers(1, 2))
    c_out = groups * data.draw(st.integers(1, 10))
    size = tuple(data.draw(st.integers(1, 7)) for _ in range(nd))
    k = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    stride = data.draw(st.integers(1, 2))
    dilation = data.draw(st.integers(1, 2))
    mode = data.draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    # reflect needs pad < size; padding 0-2 within what every mode accepts
    limit = min(size) - 1 if mode == "reflect" else min(size) if mode == "circular" else 2
    padding = data.draw(st.integers(0, max(0, min(2, limit))))
    reach = [(s + 2 * padding - dilation * (kk - 1) - 1) for s, kk in zip(size, k)]
    if min(reach) < 0:
        return  # no output position: nothing to test
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = _rand(rng, (data.draw(st.integers(1, 2)), groups * cg, *size), dtype)
    w = _rand(rng, (c_out, cg, *k), dtype, 0.3)
    kw = dict(stride=stride, dilation=dilation, padding=padding, groups=groups,
              padding_mode=mode)
    x_cl = _nhwc_of(x)
    with gpuconv.use_backend("emulate"), _forced(kind), _layout.count_copies() as copies:
        got = gpuconv.conv(x_cl, w, **kw)
    assert dict(copies) == {}
    # (an ambiguous x -- every spatial size 1 -- is C-contiguous by PyTorch's rule: NCHW out)
    if _layout.memory_format(x_cl) == _layout.CHANNELS_LAST:
        assert _layout.is_dense_channels_last(got)
    with gpuconv.use_backend("numpy"):
        ref = gpuconv.conv(_value(kind, x), _value(kind, w), **kw)
        mag = gpuconv.conv(np.abs(_value(kind, x)), np.abs(_value(kind, w)), **kw)
    _check(kind, got, ref, mag, cg * math.prod(k))
