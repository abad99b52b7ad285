"""gpuconv.grad: every gradient checked against finite differences of the forward, adjoint
identities, lower precisions against float64, and error messages.

The finite-difference oracle shares no code with the gradients: it only calls the public
forward functions, perturbing one element at a time (central differences of the random
linear functional ``<grad_output, f(...)>`` in float64).
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import gpuconv
from gpuconv import grad
from gpuconv.backends import numpy_grad

rng = np.random.default_rng(2024)


def numeric_grad(func, arr, grad_output, h):
    """Central differences of ``<grad_output, func(arr)>`` with respect to every element."""
    arr = np.array(arr, dtype=np.float64)
    flat = arr.reshape(-1)
    result = np.empty(flat.size)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + h
        plus = np.vdot(grad_output, func(arr))
        flat[i] = orig - h
        minus = np.vdot(grad_output, func(arr))
        flat[i] = orig
        result[i] = (plus - minus) / (2 * h)
    return result.reshape(arr.shape)


def assert_grad_close(got, expected, rtol=1e-7):
    assert got.shape == expected.shape, (got.shape, expected.shape)
    scale = max(np.abs(expected).max(), 1.0)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale)


# (x shape, weight shape, forward kwargs): every padding form and mode, groups, dilation,
# strides including strided 'same', in 1-D, 2-D and 3-D.
CONV_CASES = [
    ((2, 2, 7), (3, 2, 3), {}),
    ((1, 2, 7), (2, 2, 3), dict(stride=2, padding=1, padding_mode="reflect")),
    ((1, 2, 8), (2, 1, 3), dict(groups=2, dilation=2, padding="same", padding_mode="circular")),
    ((1, 1, 7), (2, 1, 4), dict(stride=3, padding="same", padding_mode="replicate")),
    ((1, 2, 6), (2, 2, 2), dict(padding=((2, 1),), padding_mode="reflect")),
    ((1, 2, 5), (2, 2, 3), dict(padding="valid", padding_mode="circular")),
    ((2, 2, 5, 4), (2, 2, 3, 2), dict(padding=((1, 0), (0, 2)))),
    ((1, 4, 5, 5), (4, 2, 3, 3), dict(groups=2, stride=2, padding="same", padding_mode="reflect")),
    ((1, 2, 6, 5), (3, 2, 2, 3), dict(stride=(2, 1), dilation=(1, 2), padding=2,
                                      padding_mode="circular")),
    ((1, 2, 5, 5), (2, 2, 3, 3), dict(stride=2, padding="same", padding_mode="replicate")),
    ((1, 3, 4, 4), (3, 1, 3, 3), dict(groups=3, padding=1)),
    ((1, 2, 5, 6), (2, 2, 3, 3), dict(stride=3, padding="same", dilation=2)),
    ((1, 2, 4, 5), (2, 2, 2, 2), dict(padding=((2, 1), (1, 3)), padding_mode="replicate")),
    ((1, 2, 4, 3, 4), (2, 2, 2, 2, 3), dict(padding=1, padding_mode="reflect")),
    ((1, 2, 5, 4, 4), (2, 1, 3, 2, 2), dict(groups=2, stride=2, padding="same",
                                            padding_mode="circular")),
    ((1, 1, 3, 4, 3), (2, 1, 2, 3, 2), dict(padding=((0, 1), (2, 0), (1, 1)),
                                            padding_mode="replicate")),
]

CONV_TRANSPOSE_CASES = [
    ((2, 2, 4), (2, 3, 3), {}),
    ((1, 2, 4), (2, 1, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 3), (4, 1, 2), dict(groups=2, stride=3, dilation=2, output_padding=2)),
    ((1, 2, 4), (2, 2, 3), dict(stride=2, padding="same")),
    ((1, 2, 3), (2, 2, 4), dict(padding=((2, 0),), dilation=2, output_padding=1)),
    ((1, 2, 3, 4), (2, 2, 3, 2), dict(stride=(2, 1), padding=((1, 0), (0, 1)))),
    ((1, 2, 3, 3), (2, 2, 3, 3), dict(stride=2, padding="same")),
    ((1, 4, 3, 3), (4, 1, 2, 2), dict(groups=4, stride=2, output_padding=1, dilation=(1, 2))),
    ((1, 2, 2, 3, 2), (2, 1, 2, 2, 3), dict(stride=2, padding=1, output_padding=(1, 0, 1))),
    ((1, 1, 2, 2, 2), (1, 2, 3, 3, 3), dict(stride=(1, 2, 2), padding="same")),
]

DEPTHWISE_CASES = [
    ((2, 2, 6), (4, 1, 3), dict(padding=1, padding_mode="reflect")),
    ((1, 2, 7), (2, 1, 3), dict(stride=2, padding="same", padding_mode="replicate")),
    ((1, 3, 5, 5), (3, 1, 3, 3), dict(stride=2, padding="same", padding_mode="circular")),
    ((1, 2, 5, 4), (6, 1, 2, 3), dict(padding=((1, 1), (0, 2)), dilation=(2, 1),
                                      padding_mode="replicate")),
    ((1, 1, 4, 4), (2, 1, 3, 3), dict(stride=3, padding="same", padding_mode="reflect")),
    ((1, 2, 4, 3, 4), (2, 1, 2, 2, 2), dict(stride=(1, 2, 1), padding="same")),
]

# (x shape, weight shape, offset_groups, with mask, with bias, forward kwargs)
DEFORM_CASES = [
    ((1, 2, 5, 4), (3, 2, 3, 3), 1, False, True, dict(padding=1)),
    ((2, 4, 4, 5), (2, 2, 2, 3), 2, True, True, dict(stride=2, padding=((1, 0), (2, 1)))),
    ((1, 2, 5, 5), (2, 2, 3, 2), 2, True, False, dict(dilation=(2, 1), padding=(1, 0))),
    ((1, 4, 3, 4), (4, 1, 2, 2), 4, True, True, dict(stride=(1, 2))),
]


def _case_id(case):
    return "-".join(str(v) for v in case[:2]) + "-" + ",".join(
        f"{k}={v}" for k, v in case[-1].items())


# ----------------------------------------------------------------- conv


def check_grads_match_finite_differences(forward, input_grad, weight_grad, case, c_out):
    """``input_grad``, ``weight_grad`` and ``grad.conv_bias`` of ``forward`` for one case,
    against central differences of ``forward``; ``c_out(w_shape, kwargs)`` is the bias size."""
    x_shape, w_shape, kwargs = case
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(c_out(w_shape, kwargs))
    g = rng.standard_normal(forward(x, w, **kwargs).shape)

    got_x = input_grad(x.shape, w, g, **kwargs)
    want_x = numeric_grad(lambda a: forward(a, w, **kwargs), x, g, 1e-3)
    assert_grad_close(got_x, want_x)

    got_w = weight_grad(x, w.shape, g, **kwargs)
    want_w = numeric_grad(lambda a: forward(x, a, **kwargs), w, g, 1e-3)
    assert_grad_close(got_w, want_w)

    want_b = numeric_grad(lambda a: forward(x, w, a, **kwargs), b, g, 1e-3)
    assert_grad_close(grad.conv_bias(g), want_b)


def _leading_channels(w_shape, kwargs):
    return w_shape[0]


@pytest.mark.parametrize("case", CONV_CASES, ids=_case_id)
def test_conv_grads_match_finite_differences(case):
    check_grads_match_finite_differences(gpuconv.conv, grad.conv_input, grad.conv_weight, case,
                                         _leading_channels)


@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES, ids=_case_id)
def test_conv_transpose_grads_match_finite_differences(case):
    check_grads_match_finite_differences(
        gpuconv.conv_transpose, grad.conv_transpose_input, grad.conv_transpose_weight, case,
        lambda w_shape, kwargs: w_shape[1] * kwargs.get("groups", 1))


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=_case_id)
def test_depthwise_grads_match_finite_differences(case):
    check_grads_match_finite_differences(gpuconv.depthwise_conv, grad.depthwise_conv_input,
                                         grad.depthwise_conv_weight, case, _leading_channels)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", [
    ((1, 2, 6), (4, 1, 3), (3, 4, 1), dict(stride=2, padding="same", padding_mode="reflect")),
    ((2, 2, 4, 4), (2, 1, 2, 3), (3, 2, 1, 1), dict(padding=((1, 0), (1, 1)),
                                                    padding_mode="circular")),
], ids=lambda c: str(c[0]))
def test_separable_grads_match_finite_differences(case, bias):
    x_shape, dw_shape, pw_shape, kwargs = case
    x = rng.standard_normal(x_shape)
    dw = rng.standard_normal(dw_shape)
    pw = rng.standard_normal(pw_shape)
    b = rng.standard_normal(pw_shape[0]) if bias else None
    g = rng.standard_normal(gpuconv.separable_conv(x, dw, pw, b, **kwargs).shape)

    grads = grad.separable_conv(x, dw, pw, g, bias=bias, **kwargs)
    assert isinstance(grads, grad.SeparableConvGrads)
    fwd = gpuconv.separable_conv
    assert_grad_close(grads.input, numeric_grad(lambda a: fwd(a, dw, pw, b, **kwargs), x, g, 1e-3))
    assert_grad_close(grads.depthwise_weight,
                      numeric_grad(lambda a: fwd(x, a, pw, b, **kwargs), dw, g, 1e-3))
    assert_grad_close(grads.pointwise_weight,
                      numeric_grad(lambda a: fwd(x, dw, a, b, **kwargs), pw, g, 1e-3))
    if bias:
        assert_grad_close(grads.bias, numeric_grad(lambda a: fwd(x, dw, pw, a, **kwargs), b, g,
                                                   1e-3))
    else:
        assert grads.bias is None


# ---------------------------------------------------------------- deformable


def _deform_inputs(case, dtype=np.float64):
    x_shape, w_shape, offset_groups, with_mask, _, kwargs = case
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    kh, kw = w_shape[2:]
    probe = gpuconv.conv(x, w, groups=x_shape[1] // w_shape[1], **kwargs)  # same out shape
    out = probe.shape[2:]
    # offsets up to +-2.5 cells: many samples fall partly or wholly outside the image
    offset = rng.uniform(-2.5, 2.5, (x_shape[0], 2 * offset_groups * kh * kw, *out))
    mask = rng.uniform(0.1, 1.0, (x_shape[0], offset_groups * kh * kw, *out)) if with_mask else None
    g = rng.standard_normal(probe.shape)
    return x, offset, w, mask, g


@pytest.mark.parametrize("case", DEFORM_CASES, ids=_case_id)
def test_deform_grads_match_finite_differences(case):
    x, offset, w, mask, g = _deform_inputs(case)
    with_bias, kwargs = case[4], case[5]
    b = rng.standard_normal(w.shape[0]) if with_bias else None
    grads = grad.deform_conv2d(x, offset, w, g, mask=mask, bias=with_bias, **kwargs)
    assert isinstance(grads, grad.DeformConvGrads)

    def fwd(x=x, offset=offset, w=w, mask=mask, b=b):
        return gpuconv.deform_conv2d(x, offset, w, b, mask=mask, **kwargs)

    assert_grad_close(grads.input, numeric_grad(lambda a: fwd(x=a), x, g, 1e-3))
    assert_grad_close(grads.weight, numeric_grad(lambda a: fwd(w=a), w, g, 1e-3))
    # piecewise bilinear in the offsets: a small step stays inside one cell
    assert_grad_close(grads.offset, numeric_grad(lambda a: fwd(offset=a), offset, g, 1e-6),
                      rtol=1e-6)
    if mask is None:
        assert grads.mask is None
    else:
        assert_grad_close(grads.mask, numeric_grad(lambda a: fwd(mask=a), mask, g, 1e-3))
    if with_bias:
        assert_grad_close(grads.bias, numeric_grad(lambda a: fwd(b=a), b, g, 1e-3))
    else:
        assert grads.bias is None


def test_deform_samples_outside_the_image_have_zero_gradients():
    # Hand-checkable: a 1x1 kernel on a 1x3 row; each output samples one point.
    x = np.array([[[[1.0, 2.0, 4.0]]]])
    w = np.ones((1, 1, 1, 1))
    # columns sampled: 0 + (-1.0) = -1 (out: y<=-1 rule), 1 + 0.5 = 1.5, 2 + 0.75 = 2.75
    offset = np.zeros((1, 2, 1, 3))
    offset[0, 1, 0] = [-1.0, 0.5, 0.75]
    g = np.array([[[[1.0, 1.0, 1.0]]]])
    grads = grad.deform_conv2d(x, offset, w, g, bias=False)
    # sample 1.5 reads 0.5*x1 + 0.5*x2; sample 2.75 reads 0.25*x2 (cell 3 is outside)
    np.testing.assert_allclose(grads.input, [[[[0.0, 0.5, 0.75]]]])
    # d/dcol: sample -1 is not read by the forward, but its derivative is torchvision's, from
    # the right: the slope from the zero column into x0, x0 - 0 = 1 (docs/kernels.md);
    # 1.5 -> x2 - x1 = 2; 2.75 -> 0 - x2 = -4
    np.testing.assert_allclose(grads.offset[0, 1, 0], [1.0, 2.0, -4.0])
    # d/drow at row 0 (one-sided, the floor cell): the row below reads zero -> -value
    np.testing.assert_allclose(grads.offset[0, 0, 0], [0.0, -3.0, -1.0])
    np.testing.assert_allclose(grads.weight.ravel(), [0.0 + 3.0 + 1.0])


def test_deform_with_zero_offsets_has_conv_gradients():
    x = rng.standard_normal((2, 4, 5, 6))
    w = rng.standard_normal((6, 2, 3, 3))
    kwargs = dict(stride=2, padding=(1, 0), dilation=(1, 2))
    g = rng.standard_normal(gpuconv.conv(x, w, groups=2, **kwargs).shape)
    offset = np.zeros((2, 2 * 9, *g.shape[2:]))
    grads = grad.deform_conv2d(x, offset, w, g, **kwargs)
    np.testing.assert_allclose(grads.input, grad.conv_input(x.shape, w, g, groups=2, **kwargs),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads.weight, grad.conv_weight(x, w.shape, g, groups=2, **kwargs),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads.bias, grad.conv_bias(g))


# ---------------------------------------------------------- adjoint identities


ADJOINT_CASES = [
    # (x shape, weight shape, stride, padding, dilation, groups); output_padding derived
    ((2, 2, 9), (3, 2, 3), 2, 1, 1, 1),
    ((1, 4, 7, 8), (6, 2, 3, 2), (2, 3), ((1, 2), (0, 1)), (1, 2), 2),
    ((1, 2, 6, 4), (2, 2, 3, 3), 2, "same", 1, 1),
    ((1, 2, 5, 4, 6), (2, 1, 2, 3, 2), (1, 2, 3), (1, 0, 2), (2, 1, 1), 2),
]


def _transpose_kwargs(x_shape, w_shape, stride, padding, dilation, groups):
    """conv_transpose arguments that map conv's output shape back to ``x_shape``."""
    nd = len(x_shape) - 2
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if padding == "same":
        return kwargs
    s = np.broadcast_to(stride, nd)
    d = np.broadcast_to(dilation, nd)
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        lo, hi = np.array(padding).T
    else:
        lo = hi = np.broadcast_to(padding, nd)
    k = np.array(w_shape[2:])
    span = np.array(x_shape[2:]) + lo + hi - d * (k - 1) - 1
    kwargs["output_padding"] = tuple(int(v) for v in span % s)
    return kwargs


@pytest.mark.parametrize("case", ADJOINT_CASES, ids=lambda c: str(c[0]))
def test_conv_input_grad_is_conv_transpose(case):
    x_shape, w_shape, stride, padding, dilation, groups = case
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    w = rng.standard_normal(w_shape)
    y_shape = gpuconv.conv(np.zeros(x_shape), w, **kwargs).shape
    g = rng.standard_normal(y_shape)
    tkwargs = _transpose_kwargs(x_shape, w_shape, stride, padding, dilation, groups)
    expected = gpuconv.conv_transpose(g, w, **tkwargs)
    assert expected.shape == x_shape
    np.testing.assert_allclose(grad.conv_input(x_shape, w, g, **kwargs), expected,
                               rtol=1e-12, atol=1e-12)
    # and the transposed op's input gradient (its grad_output has x's shape) is conv itself
    h = rng.standard_normal(x_shape)
    np.testing.assert_allclose(grad.conv_transpose_input(y_shape, w, h, **tkwargs),
                               gpuconv.conv(h, w, **kwargs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ADJOINT_CASES, ids=lambda c: str(c[0]))
def test_conv_weight_grad_is_conv_transpose_weight_grad(case):
    # <g, conv(x, w)> = <x, conv_transpose(g, w)>, so both weight gradients agree.
    x_shape, w_shape, stride, padding, dilation, groups = case
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    x = rng.standard_normal(x_shape)
    w_probe = np.zeros(w_shape)
    g = rng.standard_normal(gpuconv.conv(x, w_probe, **kwargs).shape)
    tkwargs = _transpose_kwargs(x_shape, w_shape, stride, padding, dilation, groups)
    np.testing.assert_allclose(grad.conv_weight(x, w_shape, g, **kwargs),
                               grad.conv_transpose_weight(g, w_shape, x, **tkwargs),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=_case_id)
def test_depthwise_grads_equal_grouped_conv_grads(case):
    x_shape, w_shape, kwargs = case
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    g = rng.standard_normal(gpuconv.depthwise_conv(x, w, **kwargs).shape)
    groups = x_shape[1]
    np.testing.assert_allclose(grad.depthwise_conv_input(x.shape, w, g, **kwargs),
                               grad.conv_input(x.shape, w, g, groups=groups, **kwargs),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad.depthwise_conv_weight(x, w.shape, g, **kwargs),
                               grad.conv_weight(x, w.shape, g, groups=groups, **kwargs),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_padding_gather_matches_numpy_pad_and_fold_is_its_adjoint(mode):
    from gpuconv._shapes import conv_geometry

    x = rng.standard_normal((2, 1, 5, 4, 3))
    geom = conv_geometry((5, 4, 3), (1, 1, 1), stride=1, padding=((3, 4), (0, 2), (2, 1)),
                         dilation=1, padding_mode=mode)
    np_mode = {"zeros": "constant", "replicate": "edge", "circular": "wrap"}.get(mode, mode)
    padded = numpy_grad.pad_gather(x, geom)
    widths = [(0, 0), (0, 0), (3, 4), (0, 2), (2, 1)]
    np.testing.assert_array_equal(padded, np.pad(x, widths, mode=np_mode))
    y = rng.standard_normal(padded.shape)
    folded = numpy_grad.fold_padding(y, geom)
    assert folded.shape == x.shape
    np.testing.assert_allclose(np.vdot(padded, y), np.vdot(x, folded), rtol=1e-12)


# --------------------------------------------------------------- precisions


def _all_grads(dtype):
    """Every gradient of a few calls, computed from the float16-representable inputs."""
    r = np.random.default_rng(7)

    def make(*shape):
        return r.standard_normal(shape).astype(np.float16).astype(dtype)

    x, w = make(2, 4, 6, 5), make(4, 2, 3, 3)
    kw = dict(stride=2, padding="same", groups=2, padding_mode="reflect")
    g = make(2, 4, 3, 3)
    xt, wt = make(1, 4, 3, 4), make(4, 3, 2, 3)
    tkw = dict(stride=2, padding=1, output_padding=1)
    gt = make(1, 3, 5, 8)
    xd, wd = make(2, 3, 5, 5), make(6, 1, 3, 3)
    dkw = dict(padding=1, padding_mode="circular")
    gd = make(2, 6, 5, 5)
    off = (r.uniform(-2, 2, (2, 2 * 9, 5, 5))).astype(np.float16).astype(dtype)
    mask = (r.uniform(0, 1, (2, 9, 5, 5))).astype(np.float16).astype(dtype)
    wdef = make(4, 3, 3, 3)
    gdef = make(2, 4, 5, 5)
    deform = grad.deform_conv2d(xd, off, wdef, gdef, padding=1, mask=mask)
    return {
        "conv_input": grad.conv_input(x.shape, w, g, **kw),
        "conv_weight": grad.conv_weight(x, w.shape, g, **kw),
        "conv_bias": grad.conv_bias(g),
        "conv_transpose_input": grad.conv_transpose_input(xt.shape, wt, gt, **tkw),
        "conv_transpose_weight": grad.conv_transpose_weight(xt, wt.shape, gt, **tkw),
        "depthwise_conv_input": grad.depthwise_conv_input(xd.shape, wd, gd, **dkw),
        "depthwise_conv_weight": grad.depthwise_conv_weight(xd, wd.shape, gd, **dkw),
        **{f"deform_{k}": v for k, v in deform._asdict().items()},
    }


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float16, 4e-3)])
def test_lower_precisions_close_to_float64(dtype, rtol):
    reference = _all_grads(np.float64)
    got = _all_grads(dtype)
    for name, ref in reference.items():
        assert got[name].dtype == dtype, name
        scale = np.abs(ref).max()
        np.testing.assert_allclose(got[name].astype(np.float64), ref, rtol=rtol,
                                   atol=rtol * scale, err_msg=name)


def test_float16_accumulates_in_float32():
    # 4096 products of 1.0 * 0.1: float16 accumulation would stall near 256
    x = np.ones((1, 1, 4096), dtype=np.float16)
    g = np.full((1, 1, 4096), 0.1, dtype=np.float16)
    got = grad.conv_weight(x, (1, 1, 1), g)
    assert got.dtype == np.float16
    np.testing.assert_allclose(float(got.ravel()[0]), 4096 * float(np.float16(0.1)), rtol=1e-3)
    np.testing.assert_allclose(float(grad.conv_bias(g)[0]), 4096 * float(np.float16(0.1)),
                               rtol=1e-3)


def test_result_dtype_is_the_promoted_dtype_and_inputs_may_be_noncontiguous():
    x = rng.standard_normal((2, 3, 6, 7))
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    g = rng.standard_normal((2, 4, 4, 5))
    gx = grad.conv_input(x.shape, w, g)
    assert gx.dtype == np.float64
    strided = grad.conv_input(x.shape, np.asfortranarray(w), np.repeat(g, 2, axis=-1)[..., ::2])
    np.testing.assert_array_equal(strided, gx)
    assert grad.conv_weight(x.astype(np.float32), w.shape, g.astype(np.float32)).dtype == np.float32


def test_empty_batch_gives_zero_gradients():
    w = rng.standard_normal((4, 3, 3, 3))
    g = np.zeros((0, 4, 3, 3))
    assert grad.conv_input((0, 3, 5, 5), w, g).shape == (0, 3, 5, 5)
    gw = grad.conv_weight(np.zeros((0, 3, 5, 5)), w.shape, g)
    assert gw.shape == w.shape and not gw.any()
    gd = grad.deform_conv2d(np.zeros((0, 3, 5, 5)), np.zeros((0, 18, 3, 3)), w, g)
    assert gd.input.shape == (0, 3, 5, 5) and gd.weight.shape == w.shape and gd.mask is None


def test_docstring_examples():
    for module in (grad, numpy_grad):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# ------------------------------------------------------------------- backends


@pytest.mark.parametrize("op", ["conv", "conv_transpose", "depthwise", "deform"])
def test_every_backend_matches_numpy(backend, op):
    """Every backend's gradients against the NumPy reference."""
    r = np.random.default_rng(3)
    x = r.standard_normal((2, 4, 6, 5))
    if op == "conv":
        w, kw = r.standard_normal((6, 2, 3, 3)), dict(groups=2, padding="same", stride=2,
                                                      padding_mode="reflect")
        g = r.standard_normal((2, 6, 3, 3))
        calls = [lambda a: (grad.conv_input(x.shape, a(w), a(g), **kw),),
                 lambda a: (grad.conv_weight(a(x), w.shape, a(g), **kw),)]
    elif op == "conv_transpose":
        w, kw = r.standard_normal((4, 3, 3, 2)), dict(stride=2, padding=1, output_padding=1)
        g = r.standard_normal((2, 3, 12, 9))
        calls = [lambda a: (grad.conv_transpose_input(x.shape, a(w), a(g), **kw),),
                 lambda a: (grad.conv_transpose_weight(a(x), w.shape, a(g), **kw),)]
    elif op == "depthwise":
        w, kw = r.standard_normal((8, 1, 3, 3)), dict(padding=1, padding_mode="circular")
        g = r.standard_normal((2, 8, 6, 5))
        calls = [lambda a: (grad.depthwise_conv_input(x.shape, a(w), a(g), **kw),),
                 lambda a: (grad.depthwise_conv_weight(a(x), w.shape, a(g), **kw),)]
    else:
        w = r.standard_normal((3, 4, 3, 3))
        off, mask = r.uniform(-2, 2, (2, 18, 4, 3)), r.uniform(0, 1, (2, 9, 4, 3))
        g = r.standard_normal((2, 3, 4, 3))
        calls = [lambda a: tuple(grad.deform_conv2d(a(x), a(off), a(w), a(g), mask=a(mask)))]
    for call in calls:
        expected = call(np.asarray)
        with backend.active():
            got = call(backend.asarray)
        for e, o in zip(expected, got):
            np.testing.assert_allclose(backend.asnumpy(o), e, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------- errors

X = rng.standard_normal((2, 4, 8, 8))
W = rng.standard_normal((6, 4, 3, 3))
G = rng.standard_normal((2, 6, 6, 6))


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: grad.conv_input((2, 4, 8), W, G), ValueError,
         r"conv_input: weight must have 3 dims to match input_shape"),
        (lambda: grad.conv_input((2, 4), W[..., 0, 0], G), ValueError,
         r"conv_input: input_shape must have shape \(N, C_in, \*spatial\).*len\(input_shape\)=2"),
        (lambda: grad.conv_input((2, 4, 9, 8), W, G), ValueError,
         r"conv_input: grad_output has shape \(2, 6, 6, 6\); expected \(2, 6, 7, 6\).*"
         r"input_shape=\(2, 4, 9, 8\)"),
        (lambda: grad.conv_input((3, 4, 8, 8), W, G), ValueError,
         r"grad_output has shape \(2, 6, 6, 6\); expected \(3, 6, 6, 6\)"),
        (lambda: grad.conv_input((2, 4, 8, -8), W, G), ValueError,
         r"input_shape=\(2, 4, 8, -8\) must have non-negative entries"),
        (lambda: grad.conv_input((2, 4, 8, 8.0), W, G), TypeError,
         r"input_shape=8.0 must be an int"),
        (lambda: grad.conv_input(X, W, G), TypeError,
         r"conv_input: input_shape must be a tuple of ints, got numpy.ndarray"),
        (lambda: grad.conv_input((2, 3, 8, 8), W, G), ValueError,
         r"weight.shape\[1\]=4 must equal in_channels / groups = 3 / 1"),
        (lambda: grad.conv_input(X.shape, W, G.tolist()), TypeError,
         r"conv_input: grad_output must be a numpy.ndarray or cupy.ndarray, got list"),
        (lambda: grad.conv_input(X.shape, W, G.astype(np.int64)), TypeError,
         r"grad_output has dtype int64"),
        (lambda: grad.conv_input(X.shape, W, G, padding_mode="mirror"), ValueError,
         r"padding_mode='mirror' must be one of"),
        (lambda: grad.conv_input(X.shape, W, G, padding=8, padding_mode="reflect"), ValueError,
         r"must be smaller than the input size 8 for padding_mode='reflect'"),
        (lambda: grad.conv_input(X.shape, W, G, stride=0), ValueError,
         r"stride=0 must be positive"),
        (lambda: grad.conv_weight(X, (6, 4, 3), G), ValueError,
         r"conv_weight: weight_shape must have 4 dims to match x.*len\(weight_shape\)=3"),
        (lambda: grad.conv_weight(X, (6, 2, 3, 3), G), ValueError,
         r"weight_shape\[1\]=2 must equal in_channels / groups = 4 / 1"),
        (lambda: grad.conv_weight(X, (6, 4, 0, 3), G), ValueError,
         r"weight_shape has an empty dim"),
        (lambda: grad.conv_weight(X, (5, 2, 3, 3), G, groups=2), ValueError,
         r"groups=2 must divide out_channels=5 \(weight_shape\[0\]\)"),
        (lambda: grad.conv_weight(X, W.shape, G[:, :5]), ValueError,
         r"conv_weight: grad_output has shape \(2, 5, 6, 6\); expected \(2, 6, 6, 6\).*"
         r"weight_shape=\(6, 4, 3, 3\)"),
        (lambda: grad.conv_weight(X, W.shape, G, deterministic=1), TypeError,
         r"deterministic=1 must be a bool"),
        (lambda: grad.conv_weight(X, "6433", G), TypeError,
         r"weight_shape must be a tuple of ints"),
        (lambda: grad.conv_bias(np.zeros(3)), ValueError,
         r"conv_bias: grad_output must have shape"),
        (lambda: grad.conv_bias([1.0, 2.0]), TypeError, r"conv_bias: grad_output must be a"),
        (lambda: grad.conv_transpose_input((2, 4, 6, 6), W, X), ValueError,
         r"conv_transpose_input: weight.shape\[0\]=6 must equal in_channels=4"),
        (lambda: grad.conv_transpose_input((2, 6, 6, 6), W, X[:, :, :7]), ValueError,
         r"conv_transpose_input: grad_output has shape \(2, 4, 7, 8\); expected \(2, 4, 8, 8\)"),
        (lambda: grad.conv_transpose_weight(G, (6, 4, 3, 3), X, output_padding=1), ValueError,
         r"output_padding=\(1, 1\) must be non-negative and smaller than max\(stride, dilation\)"),
        (lambda: grad.conv_transpose_weight(G, (4, 4, 3, 3), X), ValueError,
         r"weight_shape\[0\]=4 must equal in_channels=6"),
        (lambda: grad.depthwise_conv_input((2, 4, 8, 8), W[:, :1], G), ValueError,
         r"depthwise_conv_input: weight must have shape \(C_in \* multiplier, 1, \*kernel\) "
         r"with C_in=4"),
        (lambda: grad.depthwise_conv_weight(X, (8, 2, 3, 3), G), ValueError,
         r"weight_shape must have shape \(C_in \* multiplier, 1, \*kernel\)"),
        (lambda: grad.depthwise_conv_weight(X, (8, 1, 3, 3), G), ValueError,
         r"depthwise_conv_weight: grad_output has shape \(2, 6, 6, 6\); expected \(2, 8, 6, 6\)"),
        (lambda: grad.separable_conv(X, W[:4, :1], np.zeros((3, 5, 1, 1)), G), ValueError,
         r"separable_conv: pointwise_weight must have shape \(C_out, 4, 1, 1\)"),
        (lambda: grad.separable_conv(X, W[:4, :1], np.zeros((3, 4, 1, 1)), G), ValueError,
         r"separable_conv: grad_output has shape \(2, 6, 6, 6\); expected \(2, 3, 6, 6\)"),
        (lambda: grad.deform_conv2d(X, np.zeros((2, 18, 5, 6)), W, G), ValueError,
         r"deform_conv2d: offset must have shape \(2, 18, 6, 6\)"),
        (lambda: grad.deform_conv2d(X, np.zeros((2, 18, 6, 6)), W, G, mask=np.zeros((2, 9, 6, 5))),
         ValueError, r"mask must have shape \(2, 9, 6, 6\)"),
        (lambda: grad.deform_conv2d(X, np.zeros((2, 18, 6, 6)), W, G[:, :, 1:]), ValueError,
         r"deform_conv2d: grad_output has shape \(2, 6, 5, 6\); expected \(2, 6, 6, 6\)"),
        (lambda: grad.deform_conv2d(X, np.zeros((2, 18, 6, 6)), W, G, bias=None), TypeError,
         r"bias=None must be a bool"),
        (lambda: grad.deform_conv2d(X, np.zeros((2, 18, 6, 6), np.int32), W, G), TypeError,
         r"offset has dtype int32"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_import_gpuconv_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, gpuconv, gpuconv.grad, gpuconv.backends.numpy_backend; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
