"""Signatures, argument validation and messages of every public function, and the inputs that
used to be answered silently wrong: empty spatial dims with a bias, inf/NaN weights in the
NumPy oracle, huge strides and dilations, masked arrays, non-native byte order, misaligned
views (NumPy and CuPy), NumPy's exact convolve modes."""

from __future__ import annotations

import inspect
import itertools
import warnings

import numpy as np
import pytest
from kernel_helpers import stand_in_cupy

import gpuconv
from gpuconv import grad

rng = np.random.default_rng(7)
X2 = rng.standard_normal((2, 4, 8, 8))
W2 = rng.standard_normal((6, 4, 3, 3))
GO2 = rng.standard_normal((2, 6, 6, 6))


# ------------------------------------------------------------------------------ signatures

CONV_PARAMS = ["x", "weight", "bias", "stride", "padding", "dilation", "groups", "padding_mode",
               "out"]
TRANSPOSE_PARAMS = ["x", "weight", "bias", "stride", "padding", "output_padding", "dilation",
                    "groups", "out"]


@pytest.mark.parametrize("name", ["conv", "conv1d", "conv2d", "conv3d"])
def test_conv_signatures_are_explicit(name):
    sig = inspect.signature(getattr(gpuconv, name))
    assert list(sig.parameters) == CONV_PARAMS
    assert sig.parameters["stride"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.parameters["padding_mode"].default == "zeros"


@pytest.mark.parametrize("name", ["conv_transpose", "conv_transpose1d", "conv_transpose2d",
                                  "conv_transpose3d"])
def test_conv_transpose_signatures_are_explicit(name):
    sig = inspect.signature(getattr(gpuconv, name))
    assert list(sig.parameters) == TRANSPOSE_PARAMS
    assert sig.parameters["output_padding"].default == 0


def _public_functions():
    funcs = [getattr(gpuconv, n) for n in gpuconv.__all__ if inspect.isfunction(getattr(gpuconv, n))]
    funcs += [getattr(grad, n) for n in grad.__all__ if inspect.isfunction(getattr(grad, n))]
    return funcs


@pytest.mark.parametrize("func", _public_functions(), ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_no_private_or_catch_all_parameters(func):
    # plan(op, *args, **kwargs) forwards op's own arguments (issue 14 specifies that form):
    # it checks them against op's explicit signature, as test_plan_ops shows
    catch_all_ok = func is gpuconv.plan
    for param in inspect.signature(func).parameters.values():
        assert not param.name.startswith("_"), param
        if not catch_all_ok:
            assert param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL), param
    assert func.__doc__
    if inspect.signature(func).parameters:
        assert "Parameters" in func.__doc__


def test_ranked_functions_check_the_rank():
    with pytest.raises(ValueError, match=r"^conv_transpose3d: x must have 5 dims"):
        gpuconv.conv_transpose3d(X2, W2[:4])
    with pytest.raises(TypeError, match="unexpected keyword argument '_op'"):
        gpuconv.conv(X2, W2, _op="x")


# ------------------------------------------------- every array parameter: None or non-array

def _valid_calls():
    """(public name, function, valid keyword arguments, array parameters, shape parameters)."""
    x1, w1 = rng.standard_normal((2, 4, 9)), rng.standard_normal((6, 4, 3))
    x3, w3 = rng.standard_normal((1, 2, 4, 4, 4)), rng.standard_normal((3, 2, 2, 2, 2))
    wt = rng.standard_normal((4, 3, 3, 3))
    dw = rng.standard_normal((8, 1, 3, 3))
    pw = rng.standard_normal((5, 8, 1, 1))
    off = rng.uniform(-1, 1, (2, 18, 6, 6))
    mask = rng.uniform(0, 1, (2, 9, 6, 6))
    b6 = rng.standard_normal(6)
    gconvt = rng.standard_normal((2, 3, 10, 10))
    gdw = rng.standard_normal((2, 8, 6, 6))
    gsep = rng.standard_normal((2, 5, 6, 6))
    conv = dict(x=X2, weight=W2, bias=b6)
    return [
        ("conv", gpuconv.conv, conv, ["x", "weight"], []),
        ("conv1d", gpuconv.conv1d, dict(x=x1, weight=w1, bias=b6), ["x", "weight"], []),
        ("conv2d", gpuconv.conv2d, conv, ["x", "weight"], []),
        ("conv3d", gpuconv.conv3d, dict(x=x3, weight=w3), ["x", "weight"], []),
        ("conv_transpose", gpuconv.conv_transpose, dict(x=X2, weight=wt), ["x", "weight"], []),
        ("conv_transpose1d", gpuconv.conv_transpose1d, dict(x=x1, weight=w1[:4]),
         ["x", "weight"], []),
        ("conv_transpose2d", gpuconv.conv_transpose2d, dict(x=X2, weight=wt), ["x", "weight"], []),
        ("conv_transpose3d", gpuconv.conv_transpose3d, dict(x=x3, weight=w3[:2]),
         ["x", "weight"], []),
        ("depthwise_conv", gpuconv.depthwise_conv, dict(x=X2, weight=dw), ["x", "weight"], []),
        ("separable_conv", gpuconv.separable_conv,
         dict(x=X2, depthwise_weight=dw, pointwise_weight=pw),
         ["x", "depthwise_weight", "pointwise_weight"], []),
        ("deform_conv2d", gpuconv.deform_conv2d, dict(x=X2, offset=off, weight=W2, mask=mask),
         ["x", "offset", "weight"], []),
        ("convolve", gpuconv.convolve, dict(a=[1.0, 2.0, 3.0], v=[1.0, 0.5]), ["a", "v"], []),
        ("correlate", gpuconv.correlate, dict(a=[1.0, 2.0, 3.0], v=[1.0, 0.5]), ["a", "v"], []),
        ("grad.conv_input", grad.conv_input,
         dict(input_shape=X2.shape, weight=W2, grad_output=GO2), ["weight", "grad_output"],
         ["input_shape"]),
        ("grad.conv_weight", grad.conv_weight,
         dict(x=X2, weight_shape=W2.shape, grad_output=GO2), ["x", "grad_output"],
         ["weight_shape"]),
        ("grad.conv_bias", grad.conv_bias, dict(grad_output=GO2), ["grad_output"], []),
        ("grad.conv_transpose_input", grad.conv_transpose_input,
         dict(input_shape=X2.shape, weight=wt, grad_output=gconvt), ["weight", "grad_output"],
         ["input_shape"]),
        ("grad.conv_transpose_weight", grad.conv_transpose_weight,
         dict(x=X2, weight_shape=wt.shape, grad_output=gconvt), ["x", "grad_output"],
         ["weight_shape"]),
        ("grad.depthwise_conv_input", grad.depthwise_conv_input,
         dict(input_shape=X2.shape, weight=dw, grad_output=gdw), ["weight", "grad_output"],
         ["input_shape"]),
        ("grad.depthwise_conv_weight", grad.depthwise_conv_weight,
         dict(x=X2, weight_shape=dw.shape, grad_output=gdw), ["x", "grad_output"],
         ["weight_shape"]),
        ("grad.separable_conv", grad.separable_conv,
         dict(x=X2, depthwise_weight=dw, pointwise_weight=pw, grad_output=gsep),
         ["x", "depthwise_weight", "pointwise_weight", "grad_output"], []),
        ("grad.deform_conv2d", grad.deform_conv2d,
         dict(x=X2, offset=off, weight=W2, grad_output=GO2, mask=mask),
         ["x", "offset", "weight", "grad_output"], []),
    ]


CALLS = _valid_calls()
SIGNAL = ("convolve", "correlate")


def test_every_public_function_is_covered():
    names = {c[0] for c in CALLS}
    public = {f.__name__ if f.__module__ == "gpuconv._api" else f"grad.{f.__name__}"
              for f in _public_functions() if f.__module__ in ("gpuconv._api", "gpuconv.grad")}
    assert public <= names, public - names


@pytest.mark.parametrize(("name", "func", "kwargs", "arrays", "shapes"), CALLS,
                         ids=[c[0] for c in CALLS])
def test_valid_call_runs(name, func, kwargs, arrays, shapes):
    func(**kwargs)  # the baseline each bad call below changes in one argument


BAD_VALUES = {"None": None, "str": "x", "float": 3.0, "list": [[1.0, 2.0]], "dict": {}}


@pytest.mark.parametrize(
    ("name", "func", "kwargs", "param", "bad"),
    [pytest.param(name, func, kwargs, param, bad, id=f"{name}-{param}-{bad}")
     for name, func, kwargs, arrays, _ in CALLS for param in arrays for bad in BAD_VALUES
     # convolve/correlate take array_likes: numbers and lists are valid there
     if not (name in SIGNAL and bad in ("float", "list"))],
)
def test_non_array_raises_type_error_naming_the_parameter(name, func, kwargs, param, bad):
    with pytest.raises(TypeError, match=rf"^{name}: {param} must be"):
        func(**{**kwargs, param: BAD_VALUES[bad]})


@pytest.mark.parametrize(
    ("name", "func", "kwargs", "param", "bad"),
    [pytest.param(name, func, kwargs, param, bad, id=f"{name}-{param}-{bad}")
     for name, func, kwargs, _, shapes in CALLS for param in shapes
     for bad in ("None", "str", "float", "array")],
)
def test_bad_shape_argument_raises_type_error(name, func, kwargs, param, bad):
    value = X2 if bad == "array" else BAD_VALUES[bad]
    with pytest.raises(TypeError, match=rf"^{name}: {param} must be a tuple of ints") as info:
        func(**{**kwargs, param: value})
    message = str(info.value)
    assert "array(" not in message and "\n" not in message
    if bad == "array":
        assert "numpy.ndarray of shape (2, 4, 8, 8)" in message and ".shape" in message


@pytest.mark.parametrize("name", ["conv2d", "deform_conv2d", "grad.deform_conv2d"])
def test_optional_arrays_reject_non_arrays(name):
    func, kwargs = next((c[1], c[2]) for c in CALLS if c[0] == name)
    param = "bias" if name == "conv2d" else "mask"
    with pytest.raises(TypeError, match=rf"^{name}: {param} must be"):
        func(**{**kwargs, param: 1.5})
    func(**{**kwargs, param: None})  # None is the default


# ------------------------------------------------------------------------------- messages

BIG = np.zeros(4000)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: gpuconv.conv2d(X2, W2, groups=1.5), TypeError, r"^conv2d: groups=1.5 must be an int"),
        (lambda: gpuconv.conv1d(X2[..., 0], W2[..., 0], stride="2"), TypeError,
         r"^conv1d: stride='2' must be an int"),
        (lambda: gpuconv.conv3d(np.zeros((1, 1, 4, 4, 4)), np.zeros((1, 1, 1, 5, 1))), ValueError,
         r"^conv3d: kernel size 5 \(dilated extent 5\) in spatial dim 1 \(H\) is larger than the "
         r"padded input size 4"),
        (lambda: gpuconv.conv2d(X2, W2, padding=((0, 0), (9, 9)), padding_mode="reflect"),
         ValueError, r"^conv2d: padding=\(\(0, 0\), \(9, 9\)\) gives pads \(9, 9\) in spatial dim 1 \(W\)"),
        (lambda: gpuconv.conv2d(X2[:, :, :2], np.zeros((6, 4, 5, 3)), padding="same",
                                padding_mode="reflect"), ValueError,
         r"^conv2d: padding='same' gives pads \(2, 2\) in spatial dim 0 \(H\); each must be smaller "
         r"than the input size 2 for padding_mode='reflect'"),
        (lambda: gpuconv.conv2d(X2, W2, padding_mode="mirror"), ValueError, r"^conv2d: padding_mode="),
        (lambda: gpuconv.conv_transpose1d(X2[..., 0], W2[:4, :, 0], padding=5), ValueError,
         r"^conv_transpose1d: padding=5 leaves no output in spatial dim 0 \(L\)"),
        (lambda: gpuconv.conv_transpose2d(X2, W2[:4], stride=2, output_padding=3), ValueError,
         r"^conv_transpose2d: output_padding"),
        (lambda: gpuconv.depthwise_conv(X2, W2[:4, :1], stride=(1, 1, 1)), ValueError,
         r"^depthwise_conv: stride=\(1, 1, 1\) must have 2 entries"),
        (lambda: gpuconv.deform_conv2d(X2, np.zeros((2, 18, 6, 6)), W2, dilation=-1), ValueError,
         r"^deform_conv2d: dilation=-1 must be positive"),
        (lambda: grad.conv_input(X2.shape, W2, GO2, padding="full"), ValueError,
         r"^grad.conv_input: padding='full' must be"),
        (lambda: grad.conv_weight(X2, W2.shape, GO2, deterministic=1), TypeError,
         r"^grad.conv_weight: deterministic=1 must be a bool"),
        (lambda: grad.conv_transpose_weight(X2, (4, 3, 3, 3), GO2), ValueError,
         r"^grad.conv_transpose_weight: grad_output has shape"),
        (lambda: grad.deform_conv2d(X2, np.zeros((2, 18, 6, 6)), W2, GO2, bias="yes"), TypeError,
         r"^grad.deform_conv2d: bias='yes' must be a bool"),
        (lambda: grad.conv_bias(np.zeros(3)), ValueError, r"^grad.conv_bias: grad_output must have"),
        # arrays where a number or string belongs: type and shape, never the values
        (lambda: gpuconv.conv2d(X2, W2, stride=BIG), TypeError,
         r"^conv2d: stride=numpy.ndarray of shape \(4000,\) and dtype float64 must be an int$"),
        (lambda: gpuconv.conv2d(X2, W2, padding=BIG), TypeError, r"^conv2d: padding=numpy.ndarray of shape"),
        (lambda: gpuconv.conv2d(X2, W2, padding_mode=BIG), ValueError,
         r"^conv2d: padding_mode=numpy.ndarray of shape \(4000,\)"),
        (lambda: gpuconv.conv2d(X2, W2, groups=BIG), TypeError, r"^conv2d: groups=numpy.ndarray"),
        (lambda: gpuconv.conv2d(X2, W2, dilation=(BIG, 1)), TypeError,
         r"^conv2d: dilation=numpy.ndarray of shape \(4000,\)"),
        (lambda: gpuconv.convolve([1.0], [1.0], mode=BIG), ValueError, r"^convolve: mode=numpy.ndarray"),
        (lambda: grad.conv_weight(X2, W2.shape, GO2, deterministic=BIG), TypeError,
         r"^grad.conv_weight: deterministic=numpy.ndarray"),
        (lambda: grad.conv_input(X2.shape, W2, GO2, stride=[BIG, BIG]), TypeError,
         r"^grad.conv_input: stride=numpy.ndarray"),
    ],
)
def test_message_names_the_function_and_never_prints_an_array(call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call()
    message = str(info.value)
    assert "array(" not in message and "\n" not in message and len(message) < 400, message


def test_channels_last_input_gets_a_hint():
    x_last = np.ascontiguousarray(X2.transpose(0, 2, 3, 1))  # (N, H, W, C): (2, 8, 8, 4)
    with pytest.raises(ValueError, match=r"^conv2d: weight.shape\[1\]=4 must equal .*x looks "
                                         r"channels-last.*x.transpose\(0, 3, 1, 2\)"):
        gpuconv.conv2d(x_last, W2)
    with pytest.raises(ValueError, match=r"^conv1d: .*x looks channels-last.*x.transpose\(0, 2, 1\)"):
        gpuconv.conv1d(np.zeros((2, 9, 4)), W2[..., 0])
    with pytest.raises(ValueError, match=r"^conv_transpose2d: .*x looks channels-last"):
        gpuconv.conv_transpose2d(np.zeros((2, 8, 8, 6)), W2)
    with pytest.raises(ValueError, match=r"^depthwise_conv: .*x looks channels-last"):
        gpuconv.depthwise_conv(np.zeros((2, 8, 8, 4)), np.zeros((12, 1, 3, 3)))
    # a plain channel mismatch gets no hint
    with pytest.raises(ValueError) as info:
        gpuconv.conv2d(X2, W2[:, :3])
    assert "channels-last" not in str(info.value)


def test_torch_tensor_points_to_the_bridge():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"^conv2d: x must be a numpy.ndarray or cupy.ndarray, "
                                        r"got torch.Tensor; for PyTorch tensors use "
                                        r"gpuconv.torch.conv "):
        gpuconv.conv2d(torch.zeros(2, 4, 8, 8), W2)
    with pytest.raises(TypeError, match=r"^conv_transpose1d: weight .*gpuconv.torch.conv_transpose "):
        gpuconv.conv_transpose1d(X2[..., 0], torch.zeros(4, 3, 3))
    with pytest.raises(TypeError, match=r"^grad.conv_input: weight .*use gpuconv.torch"):
        grad.conv_input(X2.shape, torch.zeros(6, 4, 3, 3), GO2)
    with pytest.raises(TypeError, match=r"^convolve: a .*use gpuconv.torch"):
        gpuconv.convolve(torch.zeros(3), [1.0])


# --------------------------------------------------------------- masked arrays, byte order

def test_masked_arrays_are_rejected():
    masked = np.ma.masked_array(X2, mask=X2 > 1)
    with pytest.raises(TypeError, match=r"^conv2d: x is a numpy.ma.MaskedArray.*x.filled\(0\)"):
        gpuconv.conv2d(masked, W2)
    with pytest.raises(TypeError, match=r"^grad.conv_input: weight is a numpy.ma.MaskedArray"):
        grad.conv_input(X2.shape, np.ma.masked_array(W2), GO2)
    with pytest.raises(TypeError, match=r"^correlate: v is a numpy.ma.MaskedArray"):
        gpuconv.correlate([1.0, 2.0], np.ma.masked_array([1.0], mask=[True]))


def test_non_native_byte_order_is_converted(backend):
    x = rng.standard_normal((2, 3, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3)).astype(np.float32)
    swapped = [a.astype(a.dtype.newbyteorder("S")) for a in (x, w)]
    assert not swapped[0].dtype.isnative
    with backend.active():
        expected = backend.asnumpy(gpuconv.conv1d(backend.asarray(x), backend.asarray(w)))
        got = backend.asnumpy(gpuconv.conv1d(*[backend.asarray(a) for a in swapped]))
        a, v = rng.standard_normal(40), rng.standard_normal(9)
        signal = gpuconv.convolve(a.astype(a.dtype.newbyteorder("S")), v)
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(backend.asnumpy(signal), np.convolve(a, v), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------- convolve modes

@pytest.mark.parametrize("mode", ["fuzz", "Valid", "VALID", "v", "f", "", 3, -1, True, 1.0, None])
@pytest.mark.parametrize("func", [gpuconv.convolve, gpuconv.correlate])
def test_signal_modes_are_numpys_exactly(func, mode):
    with pytest.raises(ValueError, match=rf"^{func.__name__}: mode=.* must be 'valid', 'same' or 'full'"):
        func([1.0, 2.0, 3.0], [1.0, 1.0], mode)


@pytest.mark.parametrize(("number", "name"), [(0, "valid"), (1, "same"), (2, "full")])
def test_signal_mode_numbers_as_numpy(number, name):
    a, v = [1.0, 2.0, 3.0, 4.0], [1.0, -1.0, 0.5]
    np.testing.assert_array_equal(gpuconv.convolve(a, v, number), np.convolve(a, v, name))
    np.testing.assert_array_equal(gpuconv.correlate(a, v, np.int64(number)),
                                  np.correlate(a, v, name))


# ------------------------------------------------------------ empty spatial dims and a bias

def test_empty_spatial_input_gives_the_bias(backend):
    """A zero pad around an empty input: every output window reads only zeros, so every
    output is the bias (hand-checkable; PyTorch raises instead, see the README)."""
    b = np.array([3.0, -2.0])
    cases = [
        # (function, x, weight, kwargs, expected output shape)
        (gpuconv.conv1d, np.ones((1, 1, 0)), np.ones((2, 1, 1)), dict(padding=1), (1, 2, 2)),
        (gpuconv.conv2d, np.ones((2, 1, 0, 3)), np.ones((2, 1, 1, 2)), dict(padding=(2, 0)),
         (2, 2, 4, 2)),
        # the transposed output of an empty input: (0 - 1) * 1 + 2 + 1 = 2 cells
        (gpuconv.conv_transpose1d, np.ones((3, 1, 0)), np.ones((1, 2, 3)), {}, (3, 2, 2)),
        (gpuconv.depthwise_conv, np.ones((1, 1, 0)), np.ones((2, 1, 1)), dict(padding=2),
         (1, 2, 4)),
    ]
    with backend.active():
        for func, x, w, kwargs, shape in cases:
            got = backend.asnumpy(func(backend.asarray(x), backend.asarray(w), backend.asarray(b),
                                       **kwargs))
            assert got.shape == shape, func.__name__
            np.testing.assert_array_equal(got, np.broadcast_to(b.reshape(1, 2, *[1] * (len(shape) - 2)), shape))
            without = backend.asnumpy(func(backend.asarray(x), backend.asarray(w), **kwargs))
            np.testing.assert_array_equal(without, np.zeros(shape))
        out = backend.asarray(np.full((1, 2, 2), np.nan))
        gpuconv.conv1d(backend.asarray(np.ones((1, 1, 0))), backend.asarray(np.ones((2, 1, 1))),
                       backend.asarray(b), padding=1, out=out)
        sep = gpuconv.separable_conv(backend.asarray(np.ones((1, 1, 0))),
                                     backend.asarray(np.ones((1, 1, 1))),
                                     backend.asarray(np.ones((2, 1, 1))), backend.asarray(b),
                                     padding=1)
        # the weight gradient of an empty input is zero (a sum over no cells)
        gw = grad.conv_weight(backend.asarray(np.ones((1, 1, 0))), (2, 1, 1),
                              backend.asarray(np.ones((1, 2, 2))), padding=1)
    np.testing.assert_array_equal(backend.asnumpy(out), [[[3.0, 3.0], [-2.0, -2.0]]])
    np.testing.assert_array_equal(backend.asnumpy(sep), [[[3.0, 3.0], [-2.0, -2.0]]])
    np.testing.assert_array_equal(backend.asnumpy(gw), np.zeros((2, 1, 1)))


# ------------------------------------------------------------- inf and NaN in the weights

def _conv_ref(x, w, stride, pad, dil, groups):
    """Naive float64 conv, PyTorch's definition: the zero pad is part of the input (so a
    non-finite tap over a pad cell gives 0 * inf = NaN)."""
    x = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    n, _, *size = x.shape
    c_out, cg, *k = w.shape
    og = c_out // groups
    out_size = [(s_ - d * (kk - 1) - 1) // st + 1 for s_, kk, st, d in zip(size, k, stride, dil)]
    out = np.zeros((n, c_out, *out_size))
    for o in itertools.product(*map(range, out_size)):
        for t in itertools.product(*map(range, k)):
            pos = tuple(oo * st + tt * d for oo, tt, st, d in zip(o, t, stride, dil))
            for g in range(groups):
                xv = x[(slice(None), slice(g * cg, (g + 1) * cg)) + pos]  # (n, cg)
                wv = w[(slice(g * og, (g + 1) * og), slice(None)) + t]  # (og, cg)
                out[(slice(None), slice(g * og, (g + 1) * og)) + o] += (xv[:, None] * wv).sum(-1)
    return out


def _scatter_ref(x, w, stride, pad, dil, groups, out_size):
    """Naive float64 transposed convolution by its definition: input cell ``i`` times tap
    ``t`` lands on output ``i * stride + t * dilation - pad`` if that lies in the output;
    nothing else is multiplied. ``w`` is (C_in, C_out/G, *k)."""
    n, c_in, *size = x.shape
    _, og, *k = w.shape
    cg = c_in // groups
    out = np.zeros((n, og * groups, *out_size))
    for i in itertools.product(*map(range, size)):
        for t in itertools.product(*map(range, k)):
            pos = tuple(ii * st + tt * d - p for ii, tt, st, d, p in zip(i, t, stride, dil, pad))
            if all(0 <= q < s_ for q, s_ in zip(pos, out_size)):
                for g in range(groups):
                    xv = x[(slice(None), slice(g * cg, (g + 1) * cg)) + i]  # (n, cg)
                    wv = w[(slice(g * cg, (g + 1) * cg), slice(None)) + t]  # (cg, og)
                    out[(slice(None), slice(g * og, (g + 1) * og)) + pos] += xv @ wv
    return out


def _assert_same_nonfinite(got, ref):
    assert got.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-12, atol=1e-12)


INF_CASES = [  # (spatial size, kernel, stride, padding, dilation, groups)
    ((7,), (3,), 1, 0, 1, 1), ((7,), (3,), 1, 2, 1, 2), ((7,), (3,), 2, 1, 1, 1),
    ((7,), (4,), 3, 2, 2, 2), ((5, 6), (3, 2), 1, 1, 1, 1), ((5, 6), (3, 2), 2, 2, 2, 2),
]


@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
@pytest.mark.parametrize("case", INF_CASES, ids=str)
def test_nonfinite_weight_reaches_only_its_outputs(backend, case, bad):
    """conv_transpose and grad.conv_input: a NaN/inf tap affects exactly the outputs it is
    multiplied into (the NumPy backend put NaN everywhere its phase convolutions or its
    zero-padded correlation multiplied a zero by it). conv and grad.conv_transpose_input
    follow PyTorch's zero-pad definition (checked on NumPy; see the xfail below)."""
    size, k, s, p, d, groups = case
    nd = len(size)
    S, P, D = (s,) * nd, (p,) * nd, (d,) * nd
    x = rng.uniform(0.5, 1.5, (2, 4, *size))  # positive: infinities never cancel
    w = rng.uniform(0.5, 1.5, (4, 4 // groups, *k))
    w[(1, 0, k[0] - 1) + (0,) * (nd - 1)] = bad  # the last tap of dim 0: misses many outputs
    with warnings.catch_warnings(), backend.active():
        warnings.simplefilter("ignore", RuntimeWarning)
        forward = dict(stride=s, padding=p, dilation=d, groups=groups)
        y = backend.asnumpy(gpuconv.conv_transpose(backend.asarray(x), backend.asarray(w), **forward))
        _assert_same_nonfinite(y, _scatter_ref(x, w, S, P, D, groups, y.shape[2:]))
        # grad.conv_input: the adjoint of conv, a scatter of grad_output through the weight
        # (read as a conv weight (C_out, C_in/G, *k), the same array)
        wc = w
        go = rng.uniform(0.5, 1.5, _conv_ref(x, wc, S, P, D, groups).shape)
        gx = backend.asnumpy(grad.conv_input(x.shape, backend.asarray(wc), backend.asarray(go),
                                             **forward))
        full = _scatter_ref(go, w, S, (0,) * nd, D, groups,
                            [o + 2 * p for o in x.shape[2:]])  # onto the padded input
        _assert_same_nonfinite(gx, full[(slice(None), slice(None)) + tuple(
            slice(p, p + n) for n in x.shape[2:])])
        if backend.name == "numpy":
            got = gpuconv.conv(x, wc, **forward)
            _assert_same_nonfinite(got, _conv_ref(x, wc, S, P, D, groups))


def test_emulate_grouped_conv_multiplies_the_zero_pad():
    """conv_direct (few output channels per group) multiplies zero-pad taps like conv_tiled."""
    if gpuconv.available_backends()["emulate"] != "available":
        pytest.skip("emulate backend unavailable")
    x = np.ones((1, 4, 5))
    w = np.ones((4, 2, 3))
    w[0, 0, 0] = np.inf
    with gpuconv.use_backend("emulate"):
        got = gpuconv.conv1d(x, w, padding=1, groups=2)
    assert np.isnan(got[0, 0, 0])  # tap 0 over the pad cell at -1, as gpuconv.conv on NumPy


@pytest.mark.parametrize("method", ["tiled", "direct"])
def test_emulate_3d_conv_multiplies_zero_pad_planes(emulate, method):
    """conv_tiled skips planes of depth padding without staging them; an inf or NaN weight on
    such a plane must still give NaN there (0 * inf), as the NumPy backend and PyTorch do."""
    from gpuconv._shapes import conv_geometry
    from gpuconv.backends.device import _conv

    x = rng.uniform(0.5, 1.5, (1, 3, 4, 5, 6))
    w = rng.uniform(0.5, 1.5, (10, 3, 3, 3, 2))
    w[1, 2, 0, 1, 0] = np.inf   # over the low depth pad at od = 0
    w[7, 0, 2, 2, 1] = np.nan   # over the high depth pad at the last od
    w[4, 1, 1, 0, 1] = -np.inf  # a middle plane (never a pad plane)
    geom = conv_geometry(x.shape[2:], w.shape[2:], stride=1, padding=1, dilation=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = gpuconv.conv3d(x, w, padding=1)
    got = _conv.conv(emulate, x, w, None, geom, method=method)
    assert np.isnan(got[0, 1, 0]).all() and np.isnan(got[0, 7, -1]).all()
    _assert_same_nonfinite(got, ref)


def test_nonfinite_weight_matches_torch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = rng.uniform(0.5, 1.5, (2, 4, 6, 5))
    w = rng.uniform(0.5, 1.5, (4, 3, 3, 2))
    w[2, 1, 2, 0] = np.inf
    w[0, 0, 0, 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for s, p in [(1, 0), (2, 1), (3, 2)]:
            y = gpuconv.conv_transpose2d(x, w, stride=s, padding=p)
            ref = F.conv_transpose2d(torch.tensor(x), torch.tensor(w), stride=s, padding=p).numpy()
            _assert_same_nonfinite(y, ref)
            wc = np.ascontiguousarray(w.swapaxes(0, 1))  # (3, 4, 3, 2) as a conv weight
            xt = torch.tensor(x, requires_grad=True)
            yt = F.conv2d(xt, torch.tensor(wc), stride=s, padding=p)
            go = rng.uniform(0.5, 1.5, tuple(yt.shape))
            yt.backward(torch.tensor(go))
            gx = grad.conv_input(x.shape, wc, go, stride=s, padding=p)
            _assert_same_nonfinite(gx, xt.grad.numpy())


# ------------------------------------------------------------------ huge strides/dilations

def test_huge_stride_and_dilation_are_computed_cheaply(backend):
    """Valid calls PyTorch answers: a stride that meets one output (or, transposed, one
    input) and a dilation of a 1-tap kernel do not matter. They used to cost 32-48 GiB
    (NumPy) or overflow a 32-bit kernel argument (emulate). Expected values by hand."""
    x = rng.standard_normal((2, 3, 5))
    w = rng.standard_normal((4, 3, 3))
    big = 2**31
    with backend.active():
        a = lambda v: backend.asarray(v)  # noqa: E731
        y = backend.asnumpy(gpuconv.conv1d(a(x), a(w), stride=big))
        np.testing.assert_allclose(y[..., 0], np.einsum("ncl,ocl->no", x[..., :3], w), atol=1e-12)
        assert y.shape == (2, 4, 1)
        y = backend.asnumpy(gpuconv.conv1d(a(x), a(w[..., :1]), dilation=2**40))
        np.testing.assert_allclose(y, np.einsum("ncl,oc->nol", x, w[..., 0]), atol=1e-12)
        wt = np.ascontiguousarray(w.swapaxes(0, 1))  # (C_in=3, C_out=4, 3)
        y = backend.asnumpy(gpuconv.conv_transpose1d(a(x[..., :1]), a(wt), stride=big))
        np.testing.assert_allclose(y, np.einsum("nc,cok->nok", x[..., 0], wt), atol=1e-12)
        # a stride that does not matter must keep out == (padded - extent) // stride + 1, which
        # the 1x1 fast paths rely on (stride 1 there would read both columns)
        one = backend.asnumpy(gpuconv.conv2d(a(x[:1, :1, :2].reshape(1, 1, 1, 2)),
                                             a(np.full((1, 1, 1, 1), 2.0)), stride=(1, 2)))
        np.testing.assert_array_equal(one, 2.0 * x[:1, :1, :1].reshape(1, 1, 1, 1))
        gw = backend.asnumpy(grad.conv_weight(a(x), w.shape, a(np.ones((2, 4, 1))), stride=big))
        np.testing.assert_allclose(gw, np.broadcast_to(x[..., :3].sum(0), w.shape), atol=1e-12)
        gx = backend.asnumpy(grad.conv_input(x.shape, a(w), a(np.ones((2, 4, 1))), stride=big))
        expected = np.zeros(x.shape)
        expected[..., :3] = w.sum(0)
        np.testing.assert_allclose(gx, expected, atol=1e-12)


def test_large_transpose_stride_is_not_a_python_loop(backend, monkeypatch):
    """conv_transpose with stride 10**6: the NumPy backend visited every one of the 10**6
    stride phases in Python (25 s); now it scatters per tap. Expected values by hand."""
    from gpuconv.backends import numpy_backend

    calls = []
    original = numpy_backend._transpose_phase_1d
    monkeypatch.setattr(numpy_backend, "_transpose_phase_1d",
                        lambda *args: calls.append(1) or original(*args))
    x = np.array([[[2.0, -3.0]]])
    w = np.array([[[1.0, 10.0, 100.0]]])
    s = 10**6
    with backend.active():
        y = backend.asnumpy(gpuconv.conv_transpose1d(backend.asarray(x), backend.asarray(w),
                                                     stride=s, padding=1))
    expected = np.zeros((1, 1, s + 1))  # (2 - 1) * s - 2 + 3 outputs; input i lands at i*s - 1
    expected[0, 0, [0, 1]] = [20.0, 200.0]  # x[0] * w[1:]; x[0] * w[0] is cropped
    expected[0, 0, [s - 1, s]] = [-3.0, -30.0]  # x[1] * w[:2]; x[1] * w[2] is past the end
    np.testing.assert_array_equal(y, expected)
    assert len(calls) <= 2048


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: gpuconv.conv1d(np.ones((1, 1, 5)), np.ones((1, 1, 3)), stride=2**31, padding=2**31),
         r"^conv1d: stride=2147483648 in spatial dim 0 \(L\) must be below 2\*\*31"),
        (lambda: gpuconv.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 2)), dilation=(1, 2**31),
                                padding=((0, 0), (2**30, 2**30))),
         r"^conv2d: dilation=2147483648 in spatial dim 1 \(W\) must be below 2\*\*31"),
        # (rejected before the 16 GiB output is allocated)
        (lambda: gpuconv.conv_transpose1d(np.ones((1, 1, 2)), np.ones((1, 1, 3)), stride=2**31),
         r"^conv_transpose1d: stride=2147483648 in spatial dim 0 \(L\) must be below 2\*\*31 "
         r"where it matters \(here: more than one input along it\)"),
    ],
)
def test_huge_stride_that_matters_is_rejected_early(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -------------------------------------------------------------------------- misaligned views

def _misaligned(shape, dtype=np.float64):
    """A C-contiguous array whose data pointer is NOT a multiple of its item size."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(size + dtype.itemsize, np.uint8)
    offset = dtype.itemsize // 2 if raw.ctypes.data % dtype.itemsize == 0 else 0
    view = raw[offset:offset + size].view(dtype).reshape(shape)
    view[...] = rng.standard_normal(shape) if dtype.kind == "f" else (
        rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    assert view.ctypes.data % dtype.itemsize and view.flags.c_contiguous
    return view


def test_misaligned_numpy_inputs_on_every_operation(backend):
    x, w, wt = _misaligned((2, 3, 6, 5)), _misaligned((4, 3, 3, 3)), _misaligned((3, 4, 3, 3))
    off = _misaligned((2, 18, 4, 3))
    go = _misaligned((2, 4, 4, 3))
    calls = {
        "conv_transpose": lambda a: gpuconv.conv_transpose2d(a(x), a(wt)),
        "deform_conv2d": lambda a: gpuconv.deform_conv2d(a(x), a(off) * 0.3, a(w)),
        "conv_input": lambda a: grad.conv_input(x.shape, a(w), a(go)),
        "conv_weight": lambda a: grad.conv_weight(a(x), w.shape, a(go)),
    }
    with backend.active():
        for name, call in calls.items():
            got = backend.asnumpy(call(lambda v: backend.asarray(v)))
            with gpuconv.use_backend("numpy"):
                expected = call(np.ascontiguousarray)
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10, err_msg=name)


def test_misaligned_cupy_view_is_copied(monkeypatch):
    """Issue: ``cupy_a[1:].view(complex128)`` raised in the launch helper where NumPy input
    worked. Runs the public API on the ``cuda`` backend with a stand-in ``cupy`` (NumPy's
    functions, the emulator as its RawModule), so CuPy's path is taken without a GPU."""
    if gpuconv.available_backends()["emulate"] != "available":
        pytest.skip("emulate backend unavailable (the stand-in compiles with it)")
    from gpuconv import _dispatch

    backend, _ = stand_in_cupy(monkeypatch,
                               ("ndarray", "asarray", "ascontiguousarray", "empty", "zeros", "conj",
                                "convolve", "correlate"))
    monkeypatch.setitem(_dispatch._instances, "cuda", backend)
    a = _misaligned((300,), np.complex128)
    v = _misaligned((40,), np.complex128)
    assert _dispatch.is_cupy_array(a)  # the stand-in: every ndarray is a "CuPy array"
    got = gpuconv.correlate(a, v, "full")
    np.testing.assert_allclose(got, np.correlate(a, v, "full"), rtol=1e-12, atol=1e-9)
