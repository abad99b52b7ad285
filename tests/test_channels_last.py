"""Channels-last (NHWC / NDHWC) inputs on every op, gradient and backend (issue 15, part 2).

What is promised (docs/layouts.md):

* :func:`gpuconv._layout.memory_format` classifies arrays as PyTorch's
  ``suggest_memory_format`` does (checked against torch on the ambiguous cases);
* a channels-last ``x`` gives the NCHW result (bitwise where the algorithm is the same: every
  path that copies ``x`` to NCHW; within a few ulps on the NumPy backend's in-place 1x1 and
  depthwise paths), with channels-last strides;
* no transposing copy of ``x`` on the NumPy backend's 1x1 conv and depthwise_conv (the
  :data:`gpuconv._layout.COPIES` counter and :func:`gpuconv._layout.layout_plan`), exactly one
  everywhere else;
* input gradients are channels-last when their source is (``grad_output`` for the ``grad.*_input``
  functions, ``x`` for ``grad.separable_conv``/``grad.deform_conv2d`` and the torch bridge);
  weight gradients are C-contiguous;
* ``out=`` may have any strides;
* arrays of any other strides still work, by one copy (hypothesis).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import _layout, grad
from gpuconv._dispatch import get_backend

CL = _layout.CHANNELS_LAST


def nhwc_of(a):
    """A dense channels-last array equal to the NCHW array ``a`` (an (N, C, *spatial) view of
    an (N, *spatial, C) buffer); 1-D arrays are returned as they are."""
    if a.ndim not in (4, 5):
        return a
    buf = np.ascontiguousarray(np.moveaxis(a, 1, -1))
    return buf.transpose(0, a.ndim - 1, *range(1, a.ndim - 1))


def on(backend, a):
    """``a`` on ``backend``, keeping a channels-last layout (CuPy's asarray would not)."""
    if _layout.memory_format(a) != CL or backend.name != "cuda":
        return backend.asarray(a)
    buf = backend.asarray(np.ascontiguousarray(_layout.channels_last_view(a)))
    return buf.transpose(0, a.ndim - 1, *range(1, a.ndim - 1))


def rand(rng, *shape):
    return rng.standard_normal(shape)


# ------------------------------------------------------------------ detection


def _torch_format(a):
    torch = pytest.importorskip("torch")
    from torch._prims_common import suggest_memory_format

    t = torch.empty_strided(a.shape, [s // a.itemsize for s in a.strides], dtype=torch.float64)
    if suggest_memory_format(t) in (torch.channels_last, torch.channels_last_3d):
        return CL
    return _layout.CONTIGUOUS if a.flags.c_contiguous else _layout.OTHER


def _format_cases():
    z = np.zeros
    return {
        "nchw": z((2, 3, 4, 5)),
        "nhwc": z((2, 4, 5, 3)).transpose(0, 3, 1, 2),
        "ndhwc": z((2, 3, 4, 5, 6)).transpose(0, 4, 1, 2, 3),
        "ncdhw": z((2, 6, 3, 4, 5)),
        "c1_nchw": z((2, 1, 4, 5)),
        "c1_nhwc": z((2, 4, 5, 1)).transpose(0, 3, 1, 2),
        "hw1_nchw": z((2, 3, 1, 1)),
        "hw1_nhwc": z((2, 1, 1, 3)).transpose(0, 3, 1, 2),
        "n1_nhwc": z((1, 4, 5, 3)).transpose(0, 3, 1, 2),
        "all_one": z((1, 1, 1, 1)),
        "nhwc_sliced": z((2, 8, 5, 3)).transpose(0, 3, 1, 2)[:, :, ::2],
        "nhwc_channel_slice": z((2, 4, 5, 6)).transpose(0, 3, 1, 2)[:, :3],
        "nwhc": z((2, 4, 5, 3)).transpose(0, 3, 2, 1),
        "broadcast_c": np.broadcast_to(z((2, 1, 4, 5)), (2, 3, 4, 5)),
        "nlc_1d": z((2, 7, 3)).transpose(0, 2, 1),
        "ncl_1d": z((2, 3, 7)),
        "nchw_sliced": z((2, 3, 8, 5))[:, :, ::2],
    }


@pytest.mark.parametrize("name", list(_format_cases()))
def test_memory_format_follows_torch(name):
    a = _format_cases()[name]
    assert _layout.memory_format(a) == _torch_format(a)


def test_memory_format_documented_cases():
    cases = _format_cases()
    assert _layout.memory_format(cases["nhwc"]) == CL
    assert _layout.memory_format(cases["ndhwc"]) == CL
    # the ambiguous arrays: the strides of the size-1 dims decide, as in PyTorch
    assert _layout.memory_format(cases["c1_nchw"]) == "contiguous"
    assert _layout.memory_format(cases["c1_nhwc"]) == CL
    assert _layout.memory_format(cases["hw1_nchw"]) == "contiguous"
    assert _layout.memory_format(cases["hw1_nhwc"]) == CL
    # 1-D has no channels-last form
    assert _layout.memory_format(cases["nlc_1d"]) == "other"
    assert _layout.memory_format(cases["nwhc"]) == "other"
    # a strided slice of an NHWC buffer is channels-last (not dense: copied once)
    assert _layout.memory_format(cases["nhwc_sliced"]) == CL
    assert not _layout.is_dense_channels_last(cases["nhwc_sliced"])


# ---------------------------------------------------------------- every op


def _cases():
    """name -> (function of (x, rng-made arrays) -> result, x shape, builder of the other
    arrays, whether the NumPy backend reads x in place)."""
    return {
        "conv2d_3x3": (lambda x, a: gpuconv.conv(x, a["w"], a["b"], padding=1),
                       (2, 4, 6, 5), lambda r: {"w": rand(r, 6, 4, 3, 3), "b": rand(r, 6)},
                       False),
        "conv2d_1x1": (lambda x, a: gpuconv.conv(x, a["w"], a["b"]),
                       (2, 4, 6, 5), lambda r: {"w": rand(r, 6, 4, 1, 1), "b": rand(r, 6)},
                       True),
        "conv2d_1x1_stride_groups": (
            lambda x, a: gpuconv.conv(x, a["w"], stride=2, groups=2),
            (2, 4, 7, 5), lambda r: {"w": rand(r, 6, 2, 1, 1)}, True),
        "conv3d": (lambda x, a: gpuconv.conv3d(x, a["w"], stride=(1, 2, 1), padding="same"),
                   (1, 3, 4, 5, 4), lambda r: {"w": rand(r, 4, 3, 2, 3, 2)}, False),
        "conv3d_1x1": (lambda x, a: gpuconv.conv3d(x, a["w"], a["b"]),
                       (2, 3, 3, 4, 2), lambda r: {"w": rand(r, 5, 3, 1, 1, 1),
                                                   "b": rand(r, 5)}, True),
        "conv_transpose2d": (
            lambda x, a: gpuconv.conv_transpose2d(x, a["w"], a["b"], stride=2, padding=1),
            (2, 4, 4, 3), lambda r: {"w": rand(r, 4, 3, 3, 3), "b": rand(r, 3)}, False),
        "conv_transpose3d": (lambda x, a: gpuconv.conv_transpose3d(x, a["w"], stride=(2, 1, 1)),
                             (1, 2, 3, 3, 2), lambda r: {"w": rand(r, 2, 3, 2, 2, 2)}, False),
        "depthwise2d": (
            lambda x, a: gpuconv.depthwise_conv(x, a["w"], a["b"], padding=1, stride=(1, 2)),
            (2, 3, 6, 7), lambda r: {"w": rand(r, 6, 1, 3, 3), "b": rand(r, 6)}, True),
        "depthwise2d_reflect_dilated": (
            lambda x, a: gpuconv.depthwise_conv(x, a["w"], padding=2, dilation=2,
                                                padding_mode="reflect"),
            (1, 4, 6, 6), lambda r: {"w": rand(r, 4, 1, 3, 3)}, True),
        "depthwise3d": (lambda x, a: gpuconv.depthwise_conv(x, a["w"], padding="same"),
                        (1, 3, 4, 3, 5), lambda r: {"w": rand(r, 3, 1, 3, 2, 3)}, True),
        "separable2d": (
            lambda x, a: gpuconv.separable_conv(x, a["dw"], a["pw"], a["b"], padding=1),
            (2, 3, 5, 6), lambda r: {"dw": rand(r, 6, 1, 3, 3), "pw": rand(r, 4, 6, 1, 1),
                                     "b": rand(r, 4)}, True),
        "deform2d": (lambda x, a: gpuconv.deform_conv2d(x, a["o"], a["w"], a["b"], padding=1,
                                                        mask=a["m"]),
                     (2, 4, 5, 5), lambda r: {"o": 0.7 * rand(r, 2, 18, 5, 5),
                                              "w": rand(r, 3, 4, 3, 3), "b": rand(r, 3),
                                              "m": r.random((2, 9, 5, 5))}, False),
    }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_forward_channels_last(backend, name):
    fn, shape, build, in_place = CASES[name]
    rng = np.random.default_rng(len(name))
    x = rand(rng, *shape)
    args = {k: on(backend, v) for k, v in build(rng).items()}
    with backend.active():
        ref = backend.asnumpy(fn(backend.asarray(x), args))
        x_cl = on(backend, nhwc_of(x))
        assert _layout.memory_format(x_cl) == CL
        with _layout.count_copies() as copies:
            got = fn(x_cl, args)
    assert _layout.memory_format(got) == CL and _layout.is_dense_channels_last(got)
    got = backend.asnumpy(got)
    in_place = in_place and backend.name == "numpy"
    assert copies["input_to_nchw"] == (0 if in_place else 1)
    assert copies["output_to_channels_last"] == (0 if in_place else 1)
    if in_place:  # another summation order (BLAS on the channel axis, per-tap adds)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    else:  # the same computation on a copy
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("name", ["conv2d_1x1", "depthwise2d", "conv2d_3x3"])
def test_forward_channels_last_low_precision(name, dtype):
    """float16/float32 x (weights float64 -> float64 result, or all one dtype)."""
    fn, shape, build, in_place = CASES[name]
    rng = np.random.default_rng(3)
    x = rand(rng, *shape).astype(dtype)
    args = {k: v.astype(dtype) for k, v in build(rng).items()}
    ref = fn(x, args)
    with _layout.count_copies() as copies:
        got = fn(nhwc_of(x), args)
    assert got.dtype == dtype and _layout.memory_format(got) == CL
    assert copies["input_to_nchw"] == (0 if in_place else 1)
    tol = 2e-3 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=tol,
                               atol=tol)


@pytest.mark.parametrize("name", ["conv2d_1x1", "depthwise2d", "conv2d_3x3", "separable2d"])
def test_forward_channels_last_bfloat16(name):
    """bfloat16 (computed in float32, rounded once) gives the NCHW result bit for bit."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    fn, shape, build, in_place = CASES[name]
    rng = np.random.default_rng(4)
    bf16 = ml_dtypes.bfloat16
    x = rand(rng, *shape).astype(bf16)
    args = {k: v.astype(bf16) for k, v in build(rng).items()}
    with _layout.count_copies() as copies:
        got = fn(nhwc_of(x), args)
    assert got.dtype == bf16 and _layout.is_dense_channels_last(got)
    assert copies["input_to_nchw"] == (0 if in_place else 1)
    np.testing.assert_array_equal(got.astype(np.float32), fn(x, args).astype(np.float32))


def test_layout_plan_reports_the_copy():
    numpy_backend = get_backend("numpy")
    from gpuconv import _shapes

    x = nhwc_of(np.zeros((1, 4, 5, 5)))
    one = _shapes.conv_geometry((5, 5), (1, 1), stride=1, padding=0, dilation=1, groups=1)
    three = _shapes.conv_geometry((5, 5), (3, 3), stride=1, padding=1, dilation=1, groups=1)
    plan = _layout.layout_plan(numpy_backend, "conv", x, one)
    assert (plan.input_format, plan.copies_input, plan.output_format) == (CL, False, CL)
    assert "read in place" in plan.note
    plan = _layout.layout_plan(numpy_backend, "conv", x, three)
    assert plan.copies_input and "copied once to NCHW" in plan.note
    assert _layout.layout_plan(numpy_backend, "depthwise_conv", x, three).copies_input is False
    assert _layout.layout_plan(numpy_backend, "conv_transpose", x, one).copies_input
    plain = _layout.layout_plan(numpy_backend, "conv", np.zeros((1, 4, 5, 5)), three)
    assert (plain.input_format, plain.copies_input, plain.output_format) == (
        "contiguous", False, "contiguous")
    # a backend without reads_channels_last (emulate, cuda) always copies
    assert _layout.layout_plan(object(), "depthwise_conv", x, three).copies_input


def test_channels_last_view_not_dense_is_copied_once():
    rng = np.random.default_rng(1)
    buf = rand(rng, 2, 10, 6, 3)
    x = buf.transpose(0, 3, 1, 2)[:, :, ::2]  # channels-last strides, not dense
    w = rand(rng, 3, 1, 3, 3)
    with _layout.count_copies() as copies:
        got = gpuconv.depthwise_conv(x, w, padding=1)
    assert copies["input_to_nchw"] == 1
    assert _layout.is_dense_channels_last(got)
    np.testing.assert_array_equal(got, gpuconv.depthwise_conv(np.ascontiguousarray(x), w,
                                                              padding=1))


def test_out_any_strides():
    """out= is written in place whatever its strides: channels-last out with an NCHW or a
    channels-last x, and a C-contiguous out with a channels-last x."""
    rng = np.random.default_rng(2)
    x, w = rand(rng, 2, 4, 5, 5), rand(rng, 6, 4, 3, 3)
    ref = gpuconv.conv(x, w, padding=1)
    for xin in (x, nhwc_of(x)):
        out = nhwc_of(np.zeros_like(ref))
        assert gpuconv.conv(xin, w, padding=1, out=out) is out
        assert _layout.memory_format(out) == CL
        np.testing.assert_array_equal(out, ref)
    out = np.zeros_like(ref)
    assert gpuconv.conv(nhwc_of(x), w, padding=1, out=out) is out
    np.testing.assert_array_equal(out, ref)
    assert out.flags.c_contiguous


def test_empty_batch_keeps_nothing_special():
    """N = 0: PyTorch's rule calls no empty array channels-last; the result is C-contiguous."""
    x = np.zeros((0, 5, 4, 3)).transpose(0, 3, 1, 2)
    y = gpuconv.conv(x, np.ones((2, 3, 1, 1)))
    assert y.shape == (0, 2, 5, 4) and y.flags.c_contiguous


# ---------------------------------------------------------------- gradients


GRAD_CASES = {
    "conv": (grad.conv_input, grad.conv_weight, (2, 4, 6, 5), (6, 2, 3, 3),
             dict(padding=1, groups=2)),
    "conv_1x1": (grad.conv_input, grad.conv_weight, (2, 4, 6, 5), (3, 4, 1, 1), {}),
    "conv3d": (grad.conv_input, grad.conv_weight, (1, 2, 4, 3, 4), (3, 2, 2, 2, 2),
               dict(stride=2, padding="same", padding_mode="circular")),
    "conv_transpose": (grad.conv_transpose_input, grad.conv_transpose_weight, (2, 4, 3, 4),
                       (4, 3, 3, 3), dict(stride=2, output_padding=1)),
    "depthwise": (grad.depthwise_conv_input, grad.depthwise_conv_weight, (2, 3, 5, 6),
                  (6, 1, 3, 3), dict(padding=1, padding_mode="replicate")),
}

_FORWARD = {"conv": gpuconv.conv, "conv_1x1": gpuconv.conv, "conv3d": gpuconv.conv,
            "conv_transpose": gpuconv.conv_transpose, "depthwise": gpuconv.depthwise_conv}


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradients_channels_last(backend, name):
    input_grad, weight_grad, x_shape, w_shape, kw = GRAD_CASES[name]
    rng = np.random.default_rng(5)
    x, w = rand(rng, *x_shape), rand(rng, *w_shape)
    y_shape = _FORWARD[name](x, w, **kw).shape
    go = rand(rng, *y_shape)
    with backend.active():
        w_b = backend.asarray(w)
        ref_in = backend.asnumpy(input_grad(x.shape, w_b, backend.asarray(go), **kw))
        # deterministic: a split-K weight gradient's atomics add in a run-dependent order
        ref_w = backend.asnumpy(weight_grad(backend.asarray(x), w.shape, backend.asarray(go),
                                            deterministic=True, **kw))
        got_in = input_grad(x.shape, w_b, on(backend, nhwc_of(go)), **kw)
        got_w = weight_grad(on(backend, nhwc_of(x)), w.shape, on(backend, nhwc_of(go)),
                            deterministic=True, **kw)
    assert _layout.is_dense_channels_last(got_in)  # grad_output's format
    assert got_w.flags.c_contiguous  # weight gradients are normal
    np.testing.assert_array_equal(backend.asnumpy(got_in), ref_in)
    np.testing.assert_array_equal(backend.asnumpy(got_w), ref_w)


def test_separable_and_deform_gradients_follow_x(backend):
    rng = np.random.default_rng(6)
    x = rand(rng, 2, 3, 5, 5)
    dw, pw = rand(rng, 6, 1, 3, 3), rand(rng, 4, 6, 1, 1)
    go = rand(rng, 2, 4, 5, 5)
    with backend.active():
        b = backend.asarray
        ref = grad.separable_conv(b(x), b(dw), b(pw), b(go), padding=1)
        got = grad.separable_conv(on(backend, nhwc_of(x)), b(dw), b(pw), b(go), padding=1)
    assert _layout.is_dense_channels_last(got.input)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(backend.asnumpy(g), backend.asnumpy(r), rtol=1e-12,
                                   atol=1e-12)
    off, w, m = 0.6 * rand(rng, 2, 18, 5, 5), rand(rng, 3, 3, 3, 3), rng.random((2, 9, 5, 5))
    go = rand(rng, 2, 3, 5, 5)
    with backend.active():
        ref = grad.deform_conv2d(b(x), b(off), b(w), b(go), padding=1, mask=b(m))
        got = grad.deform_conv2d(on(backend, nhwc_of(x)), b(off), b(w), b(go), padding=1,
                                 mask=b(m))
    assert _layout.is_dense_channels_last(got.input)
    assert got.weight.flags.c_contiguous and got.offset.flags.c_contiguous
    # the device backends scatter the deformable input gradient with atomicAdd, whose float
    # additions meet in a run-dependent order (CI saw 2e-15 apart): equal to rounding only
    exact = backend.name == "numpy"
    for r, g in zip(ref, got):
        if exact:
            np.testing.assert_array_equal(backend.asnumpy(g), backend.asnumpy(r))
        else:
            np.testing.assert_allclose(backend.asnumpy(g), backend.asnumpy(r), rtol=1e-12,
                                       atol=1e-12)


# ---------------------------------------------------------------- hypothesis


@st.composite
def strided_inputs(draw):
    """An (N, C, *spatial) array (2-D or 3-D spatial, or 1-D) of arbitrary strides: a buffer
    in a random axis order, sliced with random steps, viewed as (N, C, *spatial)."""
    nd = draw(st.integers(1, 3))
    shape = [draw(st.integers(1, 3)), draw(st.integers(1, 4))] + [
        draw(st.integers(1, 5)) for _ in range(nd)]
    steps = [draw(st.integers(1, 2)) for _ in shape]
    order = draw(st.permutations(range(nd + 2)))
    buf_shape = [shape[a] * steps[a] for a in order]
    seed = draw(st.integers(0, 2**16))
    buf = np.random.default_rng(seed).standard_normal(buf_shape)
    x = buf.transpose(np.argsort(order))  # (N, C, *spatial)-ordered axes
    x = x[tuple(slice(None, None, s) for s in steps)]
    assert x.shape == tuple(shape)
    return x


@settings(max_examples=60, deadline=None)
@given(x=strided_inputs(), data=st.data())
def test_any_strides(x, data):
    nd = x.ndim - 2
    c = x.shape[1]
    op = data.draw(st.sampled_from(["conv", "conv_1x1", "depthwise", "conv_transpose"]))
    rng = np.random.default_rng(0)
    k = (1,) * nd if op == "conv_1x1" else tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    if op == "depthwise":
        w = rand(rng, 2 * c, 1, *k)
        fn = lambda a: gpuconv.depthwise_conv(a, w, padding="same")  # noqa: E731
    elif op == "conv_transpose":
        w = rand(rng, c, 2, *k)
        fn = lambda a: gpuconv.conv_transpose(a, w, stride=2)  # noqa: E731
    else:
        w = rand(rng, 3, c, *k)
        stride = data.draw(st.integers(1, 2))
        pad = 0 if op == "conv_1x1" else "same"
        fn = lambda a: gpuconv.conv(a, w, padding=pad, stride=stride)  # noqa: E731
    fmt = _layout.memory_format(x)
    with _layout.count_copies() as copies:
        got = fn(x)
    ref = fn(np.ascontiguousarray(x))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    if fmt == CL:
        assert _layout.is_dense_channels_last(got) or got.size == 0
    else:
        assert got.flags.c_contiguous
        assert copies["output_to_channels_last"] == 0
    assert copies["input_to_nchw"] <= 1


# ---------------------------------------------------------------- torch bridge


def _torch_cases():
    torch = pytest.importorskip("torch")
    import gpuconv.torch as gt

    return torch, gt


@pytest.mark.parametrize("layer_name", ["Conv2d", "Conv2d_1x1", "ConvTranspose2d",
                                        "DepthwiseConv2d", "SeparableConv2d", "DeformConv2d",
                                        "Conv3d", "DepthwiseConv3d"])
def test_torch_layers_channels_last(layer_name):
    torch, gt = _torch_cases()
    torch.manual_seed(0)
    three_d = layer_name.endswith("3d")
    fmt = torch.channels_last_3d if three_d else torch.channels_last
    shape = (2, 4, 4, 5, 3) if three_d else (2, 4, 6, 5)
    layer = {
        "Conv2d": lambda: gt.Conv2d(4, 6, 3, padding=1, groups=2),
        "Conv2d_1x1": lambda: gt.Conv2d(4, 6, 1),
        "ConvTranspose2d": lambda: gt.ConvTranspose2d(4, 3, 2, stride=2),
        "DepthwiseConv2d": lambda: gt.DepthwiseConv2d(4, 3, multiplier=2, padding=1),
        "SeparableConv2d": lambda: gt.SeparableConv2d(4, 5, 3, padding=1),
        "DeformConv2d": lambda: gt.DeformConv2d(4, 3, 3, padding=1),
        "Conv3d": lambda: gt.Conv3d(4, 3, 3, padding=1),
        "DepthwiseConv3d": lambda: gt.DepthwiseConv3d(4, 3, padding=1),
    }[layer_name]().double()
    x = torch.randn(*shape, dtype=torch.float64)
    extra = ()
    if layer_name == "DeformConv2d":
        extra = (0.5 * torch.randn(2, 18, 6, 5, dtype=torch.float64),)

    def run(inp):
        inp = inp.detach().requires_grad_()
        y = layer(inp, *extra)
        layer.zero_grad()
        (gx,) = torch.autograd.grad((y * y).sum(), inp)
        return y, gx

    y_ref, gx_ref = run(x.contiguous())
    y, gx = run(x.contiguous(memory_format=fmt))
    assert y.is_contiguous(memory_format=fmt)
    assert gx.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-12)


def test_torch_meta_and_weight_grads_channels_last():
    """The fake (meta) implementations promise the real outputs' formats; weight gradients
    are contiguous."""
    torch, gt = _torch_cases()
    layer = gt.Conv2d(4, 6, 3, padding=1, device="meta")
    x = torch.empty(2, 4, 6, 5, device="meta").contiguous(memory_format=torch.channels_last)
    assert layer(x).is_contiguous(memory_format=torch.channels_last)
    conv = gt.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 6, 5).contiguous(memory_format=torch.channels_last)
    conv(x).sum().backward()
    assert conv.weight.grad.is_contiguous()


def test_degenerate_channels_last_output_has_channels_last_strides():
    # Found by test_any_strides in CI: a (1, 1, 1, 1, 1) channels-last x through a 1x1 conv
    # to 3 channels. The C-contiguous result with NumPy's strides on its size-1 dims (every
    # stride 8 bytes) is not channels-last by PyTorch's rule; as_channels_last must allocate a
    # fresh NDHWC buffer rather than trust ascontiguousarray to return one.
    import itertools

    from numpy.lib.stride_tricks import as_strided

    buf = np.array([0.125])
    w = np.arange(1.0, 4.0).reshape(3, 1, 1, 1, 1)
    tried = 0
    for strides in itertools.product([8, 16, 24], repeat=5):
        x = as_strided(buf, shape=(1, 1, 1, 1, 1), strides=strides)
        if _layout.memory_format(x) != CL:
            continue
        tried += 1
        for stride in (1, 2):
            got = gpuconv.conv(x, w, stride=stride)
            np.testing.assert_array_equal(got.reshape(-1), 0.125 * np.arange(1.0, 4.0))
            assert _layout.is_dense_channels_last(got), (strides, got.strides)
    assert tried > 0
