"""gpuconv.torch: gradcheck of every operation in float64, agreement with PyTorch's own
convolutions (and a naive autograd reference for deformable conv), and the nn.Modules.

Skipped when PyTorch is not installed (it is an optional dependency).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional: the bridge)")

import torch.nn.functional as F  # noqa: E402
from torch.autograd import gradcheck  # noqa: E402

import gpuconv.torch as gt  # noqa: E402

F64 = torch.float64


def _randn(*shape, requires_grad=True, seed=[0]):
    seed[0] += 1
    gen = torch.Generator().manual_seed(seed[0])
    return torch.randn(*shape, dtype=F64, generator=gen).requires_grad_(requires_grad)


def _uniform(low, high, *shape, seed=[1000]):
    seed[0] += 1
    gen = torch.Generator().manual_seed(seed[0])
    t = torch.rand(*shape, dtype=F64, generator=gen) * (high - low) + low
    return t.requires_grad_()


# --------------------------------------------------------- torch references


def _same_pads(size, k, stride, dilation):
    """Independent 'same' arithmetic: ceil(size/stride) outputs, smaller half low."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _torch_conv(x, w, b, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """The same convolution from torch.nn.functional: F.pad in the mode, then F.convNd."""
    nd = x.dim() - 2
    stride_t = (stride,) * nd if isinstance(stride, int) else tuple(stride)
    dil_t = (dilation,) * nd if isinstance(dilation, int) else tuple(dilation)
    k = w.shape[2:]
    if padding == "same":
        pairs = [_same_pads(s, kk, st, d) for s, kk, st, d in zip(x.shape[2:], k, stride_t, dil_t)]
    elif isinstance(padding, int):
        pairs = [(padding, padding)] * nd
    elif isinstance(padding[0], tuple):
        pairs = list(padding)
    else:
        pairs = [(p, p) for p in padding]
    flat = [v for lo_hi in reversed(pairs) for v in lo_hi]  # F.pad: last dim first
    mode = "constant" if padding_mode == "zeros" else padding_mode
    xp = F.pad(x, flat, mode=mode)
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return conv(xp, w, b, stride=stride_t, dilation=dil_t, groups=groups)


def _torch_deform_reference(x, offset, w, b, mask, *, stride, padding, dilation):
    """Naive deformable conv from differentiable torch ops (torchvision's definition)."""
    n, c_in, height, width = x.shape
    c_out, cg, kh, kw = w.shape
    groups = c_in // cg
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho, wo = offset.shape[2:]
    og = offset.shape[1] // (2 * kh * kw)
    cpo = c_in // og
    oy = torch.arange(ho, dtype=F64).view(ho, 1) * sh - ph
    ox = torch.arange(wo, dtype=F64).view(1, wo) * sw - pw
    cols = []
    for c in range(c_in):
        g = c // cpo
        taps = []
        for i in range(kh):
            for j in range(kw):
                t = i * kw + j
                y = oy + i * dh + offset[:, 2 * (g * kh * kw + t)]
                xx = ox + j * dw + offset[:, 2 * (g * kh * kw + t) + 1]
                inside = (y > -1) & (y < height) & (xx > -1) & (xx < width)
                y0, x0 = torch.floor(y), torch.floor(xx)
                val = torch.zeros_like(y)
                for cy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                    for cx, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                        ok = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
                        idx = (cy.clamp(0, height - 1) * width + cx.clamp(0, width - 1)).long()
                        v = torch.gather(x[:, c].reshape(n, -1), 1, idx.reshape(n, -1))
                        val = val + torch.where(ok, v.reshape(y.shape) * wy * wx, 0.0)
                val = torch.where(inside, val, 0.0)
                if mask is not None:
                    val = val * mask[:, g * kh * kw + t]
                taps.append(val)
        cols.append(torch.stack(taps, 1))  # (N, K, ho, wo)
    cols = torch.stack(cols, 1)  # (N, C_in, K, ho, wo)
    out = []
    for co in range(c_out):
        g = co // (c_out // groups)
        block = cols[:, g * cg:(g + 1) * cg].reshape(n, cg * kh * kw, ho, wo)
        out.append((block * w[co].reshape(1, -1, 1, 1)).sum(1))
    out = torch.stack(out, 1)
    return out if b is None else out + b.view(1, -1, 1, 1)


# ------------------------------------------------------------------- cases

CONV_CASES = [
    ((2, 2, 7), (3, 2, 3), dict(stride=2, padding="same", padding_mode="reflect")),
    ((1, 4, 5, 4), (4, 2, 3, 2), dict(groups=2, padding=((1, 0), (2, 1)),
                                      padding_mode="circular")),
    ((1, 2, 6, 5), (2, 2, 3, 3), dict(stride=3, padding="same", dilation=(1, 2))),
    ((1, 2, 4, 3, 4), (2, 2, 2, 2, 3), dict(stride=2, padding="same", padding_mode="replicate")),
    ((1, 2, 4, 3, 3), (2, 1, 3, 2, 2), dict(groups=2, padding=1, padding_mode="reflect")),
]

CONV_TRANSPOSE_CASES = [
    ((2, 2, 4), (2, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 3, 3), (4, 1, 3, 2), dict(groups=2, stride=(2, 1), dilation=(1, 2), padding=1)),
    ((1, 2, 2, 2, 3), (2, 2, 2, 3, 2), dict(stride=2, output_padding=(1, 0, 1))),
]

DEPTHWISE_CASES = [
    ((2, 2, 6), (4, 1, 3), dict(stride=2, padding="same", padding_mode="circular")),
    ((1, 3, 5, 4), (3, 1, 3, 3), dict(padding=((1, 1), (2, 0)), padding_mode="reflect")),
    ((1, 2, 3, 4, 3), (4, 1, 2, 2, 2), dict(padding=1, dilation=(2, 1, 1),
                                            padding_mode="replicate")),
]

# (x shape, weight shape, offset_groups, mask, bias, kwargs)
DEFORM_CASES = [
    ((1, 2, 4, 5), (2, 2, 3, 3), 1, False, True, dict(stride=1, padding=1, dilation=1)),
    ((2, 4, 5, 6), (2, 2, 2, 3), 2, True, False, dict(stride=(2, 1), padding=(1, 0),
                                                       dilation=(1, 2))),
]


def _ids(case):
    return str(case[0])


def _gradcheck(func, inputs):
    assert gradcheck(func, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("case", CONV_CASES, ids=_ids)
def test_gradcheck_conv(case):
    x_shape, w_shape, kwargs = case
    inputs = (_randn(*x_shape), _randn(*w_shape), _randn(w_shape[0]))
    _gradcheck(lambda x, w, b: gt.conv(x, w, b, **kwargs), inputs)


@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES, ids=_ids)
def test_gradcheck_conv_transpose(case):
    x_shape, w_shape, kwargs = case
    c_out = w_shape[1] * kwargs.get("groups", 1)
    inputs = (_randn(*x_shape), _randn(*w_shape), _randn(c_out))
    _gradcheck(lambda x, w, b: gt.conv_transpose(x, w, b, **kwargs), inputs)


def test_gradcheck_conv_transpose_same():
    inputs = (_randn(1, 2, 3, 2), _randn(2, 2, 3, 3))
    _gradcheck(lambda x, w: gt.conv_transpose(x, w, stride=2, padding="same"), inputs)


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=_ids)
def test_gradcheck_depthwise(case):
    x_shape, w_shape, kwargs = case
    inputs = (_randn(*x_shape), _randn(*w_shape), _randn(w_shape[0]))
    _gradcheck(lambda x, w, b: gt.depthwise_conv(x, w, b, **kwargs), inputs)


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_separable(bias):
    inputs = (_randn(1, 2, 5, 4), _randn(4, 1, 3, 2), _randn(3, 4, 1, 1),
              _randn(3) if bias else None)
    _gradcheck(lambda x, dw, pw, b: gt.separable_conv(x, dw, pw, b, stride=2, padding="same",
                                                      padding_mode="reflect"), inputs)


def _deform_inputs(case):
    x_shape, w_shape, og, with_mask, with_bias, kwargs = case
    kh, kw = w_shape[2:]
    groups = x_shape[1] // w_shape[1]
    probe = gt.conv(torch.zeros(x_shape, dtype=F64), torch.zeros(w_shape, dtype=F64),
                    groups=groups, stride=kwargs["stride"], padding=kwargs["padding"],
                    dilation=kwargs["dilation"])
    out = probe.shape[2:]
    x = _randn(*x_shape)
    offset = _uniform(-2.0, 2.0, x_shape[0], 2 * og * kh * kw, *out)
    w = _randn(*w_shape)
    b = _randn(w_shape[0]) if with_bias else None
    mask = _uniform(0.0, 1.0, x_shape[0], og * kh * kw, *out) if with_mask else None
    return x, offset, w, b, mask


@pytest.mark.parametrize("case", DEFORM_CASES, ids=_ids)
def test_gradcheck_deform(case):
    kwargs = case[-1]
    x, offset, w, b, mask = _deform_inputs(case)
    _gradcheck(lambda x, o, w, b, m: gt.deform_conv2d(x, o, w, b, mask=m, **kwargs),
               (x, offset, w, b, mask))


# ------------------------------------------------ against PyTorch's own ops


def _value_and_grads(func, inputs, grad_output=None):
    out = func(*inputs)
    if grad_output is None:
        grad_output = torch.randn(out.shape, dtype=out.dtype,
                                  generator=torch.Generator().manual_seed(5))
    grads = torch.autograd.grad(out, [t for t in inputs if t is not None], grad_output)
    return out.detach(), grads, grad_output


@pytest.mark.parametrize("case", CONV_CASES, ids=_ids)
def test_conv_matches_torch(case):
    x_shape, w_shape, kwargs = case
    inputs = (_randn(*x_shape), _randn(*w_shape), _randn(w_shape[0]))
    got, got_grads, g = _value_and_grads(lambda x, w, b: gt.conv(x, w, b, **kwargs), inputs)
    want, want_grads, _ = _value_and_grads(lambda x, w, b: _torch_conv(x, w, b, **kwargs),
                                           inputs, g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, e in zip(got_grads, want_grads):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES, ids=_ids)
def test_conv_transpose_matches_torch(case):
    x_shape, w_shape, kwargs = case
    nd = len(x_shape) - 2
    c_out = w_shape[1] * kwargs.get("groups", 1)
    inputs = (_randn(*x_shape), _randn(*w_shape), _randn(c_out))
    ref = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
    got, got_grads, g = _value_and_grads(lambda x, w, b: gt.conv_transpose(x, w, b, **kwargs),
                                         inputs)
    want, want_grads, _ = _value_and_grads(lambda x, w, b: ref(x, w, b, **kwargs), inputs, g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, e in zip(got_grads, want_grads):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=_ids)
def test_depthwise_matches_torch_grouped_conv(case):
    x_shape, w_shape, kwargs = case
    inputs = (_randn(*x_shape), _randn(*w_shape), _randn(w_shape[0]))
    got, got_grads, g = _value_and_grads(lambda x, w, b: gt.depthwise_conv(x, w, b, **kwargs),
                                         inputs)
    want, want_grads, _ = _value_and_grads(
        lambda x, w, b: _torch_conv(x, w, b, groups=x_shape[1], **kwargs), inputs, g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, e in zip(got_grads, want_grads):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", DEFORM_CASES, ids=_ids)
def test_deform_matches_naive_torch_reference(case):
    kwargs = case[-1]
    as_pair = {k: (v, v) if isinstance(v, int) else v for k, v in kwargs.items()}
    inputs = _deform_inputs(case)

    def ours(x, o, w, b, m):
        return gt.deform_conv2d(x, o, w, b, mask=m, **kwargs)

    def reference(x, o, w, b, m):
        return _torch_deform_reference(x, o, w, b, m, **as_pair)

    got, got_grads, g = _value_and_grads(ours, inputs)
    want, want_grads, _ = _value_and_grads(reference, inputs, g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, e in zip(got_grads, want_grads):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ modules


@pytest.mark.parametrize("layers, kwargs", [
    (((gt.Conv1d, torch.nn.Conv1d, (2, 4, 9)),
      (gt.Conv2d, torch.nn.Conv2d, (2, 4, 7, 6)),
      (gt.Conv3d, torch.nn.Conv3d, (1, 4, 5, 4, 5))),
     dict(stride=1, padding="same", dilation=2, groups=2, padding_mode="circular")),
    (((gt.ConvTranspose1d, torch.nn.ConvTranspose1d, (2, 4, 5)),
      (gt.ConvTranspose2d, torch.nn.ConvTranspose2d, (2, 4, 3, 4)),
      (gt.ConvTranspose3d, torch.nn.ConvTranspose3d, (1, 4, 2, 3, 2))),
     dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)),
], ids=["conv", "conv_transpose"])
def test_modules_match_torch_nn(layers, kwargs):
    for ours, theirs, shape in layers:
        a = ours(4, 6, 3, dtype=F64, **kwargs)
        b = theirs(4, 6, 3, dtype=F64, **kwargs)
        b.load_state_dict(a.state_dict())
        x = _randn(*shape)
        ya, yb = a(x), b(x)
        torch.testing.assert_close(ya, yb)
        ga = torch.autograd.grad(ya.square().sum(), [x, a.weight, a.bias])
        gb = torch.autograd.grad(yb.square().sum(), [x, b.weight, b.bias])
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v)


def test_default_init_matches_torch_bounds():
    layer = gt.Conv2d(4, 8, 3, groups=2)
    bound = 1 / math.sqrt(2 * 3 * 3)
    for p in (layer.weight, layer.bias):
        assert p.abs().max() <= bound and p.abs().max() > bound / 2


def test_modules_offer_what_torch_lacks():
    x = torch.randn(2, 3, 5, 6, 7)
    # reflect padding in 3-D with strided 'same'
    y = gt.Conv3d(3, 4, 3, stride=2, padding="same", padding_mode="reflect")(x)
    assert y.shape == (2, 4, 3, 3, 4)
    # 'same' transposed convolution: size * stride outputs
    assert gt.ConvTranspose2d(3, 2, 4, stride=2, padding="same")(x[:, :, 0]).shape == (2, 2, 12, 14)
    # depthwise and separable layers, asymmetric padding
    dw = gt.DepthwiseConv2d(3, (3, 2), multiplier=2, padding=((1, 1), (1, 0)),
                            padding_mode="replicate")
    assert dw(x[:, :, 0]).shape == (2, 6, 6, 7)
    sep = gt.SeparableConv1d(3, 5, 3, multiplier=2, padding="same", bias=False)
    assert sep(x[:, :, 0, 0]).shape == (2, 5, 7)
    assert sep.bias is None and sep.pointwise_weight.shape == (5, 6, 1)
    assert "multiplier=2" in repr(sep)


def test_module_parameters_train():
    torch.manual_seed(0)
    layers = [gt.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
              gt.DepthwiseConv2d(2, 3, padding="same"),
              gt.SeparableConv2d(2, 3, 3, padding="same"),
              gt.ConvTranspose2d(2, 3, 2, stride=2),
              gt.DeformConv2d(2, 3, 3, padding=1)]
    x = torch.randn(2, 2, 6, 6)
    for layer in layers:
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        before = [p.detach().clone() for p in layer.parameters()]
        if isinstance(layer, gt.DeformConv2d):
            offset = torch.randn(2, 18, 6, 6, requires_grad=True)
            loss = layer(x, offset, torch.rand(2, 9, 6, 6)).square().mean()
        else:
            loss = layer(x).square().mean()
        loss.backward()
        opt.step()
        for p, q in zip(layer.parameters(), before):
            assert p.grad is not None and p.grad.dtype == p.dtype
            assert not torch.equal(p.detach(), q), type(layer).__name__


def test_unbatched_input_and_float16():
    layer = gt.Conv1d(2, 3, 3, padding=1, dtype=torch.float16)
    x = torch.randn(2, 8, dtype=torch.float16, requires_grad=True)
    y = layer(x)
    assert y.shape == (3, 8) and y.dtype == torch.float16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float16 and layer.weight.grad.dtype == torch.float16
    ref = gt.conv(x.detach().double()[None], layer.weight.detach().double(),
                  layer.bias.detach().double(), padding=1)[0]
    torch.testing.assert_close(y.double(), ref, rtol=5e-3, atol=5e-3)


def test_deform_module_unbatched_and_default_mask():
    layer = gt.DeformConv2d(2, 4, 3, padding=1, dtype=F64)
    x = _randn(2, 5, 5)
    offset = _uniform(-1, 1, 18, 5, 5)
    y = layer(x, offset)
    ref = gt.deform_conv2d(x[None], offset[None], layer.weight, layer.bias, padding=1)[0]
    torch.testing.assert_close(y, ref)


def test_cpu_tensors_are_shared_without_copies():
    t = torch.randn(2, 3, 4)
    a = gt._to_array(t)
    assert isinstance(a, np.ndarray) and np.shares_memory(a, t.numpy())
    out = np.ones((2, 2))
    back = gt._to_tensor(out)
    back[0, 0] = 5.0
    assert out[0, 0] == 5.0


def test_deterministic_mode_runs():
    torch.use_deterministic_algorithms(True)
    try:
        x, w = _randn(1, 2, 5), _randn(3, 2, 3)
        gt.conv(x, w).sum().backward()
        assert w.grad is not None
    finally:
        torch.use_deterministic_algorithms(False)


def test_only_requested_gradients_are_computed(monkeypatch):
    from gpuconv import grad

    calls = []
    original = grad.conv_weight
    monkeypatch.setattr(grad, "conv_weight", lambda *a, **k: calls.append(1) or original(*a, **k))
    x, w = _randn(1, 2, 5), _randn(3, 2, 3, requires_grad=False)
    gt.conv(x, w).sum().backward()
    assert calls == [] and x.grad is not None


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: gt.conv(torch.zeros(1, 2, 5, dtype=torch.int64), torch.zeros(3, 2, 3)),
         TypeError, r"conv: x has dtype torch.int64; expected torch.float16"),
        (lambda: gt.conv(np.zeros((1, 2, 5)), torch.zeros(3, 2, 3)), TypeError,
         r"conv: x must be a torch.Tensor, got ndarray"),
        (lambda: gt.conv(torch.zeros(1, 2, 5, dtype=torch.complex64), torch.zeros(3, 2, 3)),
         TypeError, r"x has dtype torch.complex64"),
        (lambda: gt.conv(torch.zeros(1, 2, 5), torch.zeros(3, 2, 3), groups=2), ValueError,
         r"groups=2 must divide out_channels=3"),
        (lambda: gt.Conv2d(4, 6, 3, groups=4), ValueError, r"Conv2d: groups=4 must divide"),
        (lambda: gt.Conv2d(4, 6, 0), ValueError, r"^Conv2d: kernel_size=0 must be positive"),
        (lambda: gt.conv(torch.zeros(1, 2, 5), None), TypeError,
         r"^conv: weight must be a torch.Tensor, got NoneType"),
        (lambda: gt.conv(None, torch.zeros(3, 2, 3)), TypeError,
         r"^conv: x must be a torch.Tensor, got NoneType"),
        (lambda: gt.conv_transpose(torch.zeros(1, 2, 5), None), TypeError,
         r"^conv_transpose: weight must be a torch.Tensor, got NoneType"),
        (lambda: gt.depthwise_conv(None, torch.zeros(2, 1, 3)), TypeError,
         r"^depthwise_conv: x must be a torch.Tensor, got NoneType"),
        (lambda: gt.separable_conv(torch.zeros(1, 2, 5), torch.zeros(2, 1, 3), None), TypeError,
         r"^separable_conv: pointwise_weight must be a torch.Tensor, got NoneType"),
        (lambda: gt.deform_conv2d(torch.zeros(1, 2, 5, 5), None, torch.zeros(2, 2, 3, 3)),
         TypeError, r"^deform_conv2d: offset must be a torch.Tensor, got NoneType"),
        (lambda: gt.Conv2d(4, 6, 3, padding_mode="mirror"), ValueError,
         r"Conv2d: padding_mode='mirror' must be one of"),
        (lambda: gt.ConvTranspose2d(4, 6, 3, padding_mode="reflect"), ValueError,
         r"padding_mode='reflect' must be 'zeros' for a transposed convolution"),
        (lambda: gt.Conv2d(2, 2, 3)(torch.zeros(1, 1, 2, 5, 5)), ValueError,
         r"Conv2d: input must have 4 dims \(N, C, 2 spatial\) or 3 \(unbatched\)"),
        (lambda: gt.DepthwiseConv1d(0, 3), ValueError, r"channels=0 must be a positive int"),
        (lambda: gt.deform_conv2d(torch.zeros(1, 2, 5, 5), torch.zeros(1, 18, 5, 5),
                                  torch.zeros(2, 2, 3, 3)), ValueError,
         r"offset must have shape \(1, 18, 3, 3\)"),
    ],
)
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_double_backward_works():
    x, w = _randn(1, 1, 4), _randn(1, 1, 2)
    # grad_output = 2 * y depends on x, so the second derivative needs conv's backward to be
    # differentiable (it was once_differentiable before): d/dx sum(gx) against F.conv1d's
    (gx,) = torch.autograd.grad(gt.conv(x, w).square().sum(), [x], create_graph=True)
    (ggx,) = torch.autograd.grad(gx.sum(), [x])
    (rx,) = torch.autograd.grad(F.conv1d(x, w).square().sum(), [x], create_graph=True)
    (rgx,) = torch.autograd.grad(rx.sum(), [x])
    torch.testing.assert_close(ggx, rgx, rtol=1e-12, atol=1e-12)


def test_docstring_examples():
    import doctest

    result = doctest.testmod(gt, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no CUDA device")
def test_cuda_tensors_match_cpu():
    """CUDA tensors go through CuPy by DLPack on PyTorch's current stream."""
    pytest.importorskip("cupy")
    x_cpu = torch.randn(2, 4, 9, 8, dtype=F64)
    w_cpu = torch.randn(6, 2, 3, 3, dtype=F64)
    kwargs = dict(groups=2, stride=2, padding="same", padding_mode="reflect")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = x_cpu.cuda().requires_grad_()
        w = w_cpu.cuda().requires_grad_()
        y = gt.conv(x, w, **kwargs)
        assert y.is_cuda and y.device == x.device
        torch.testing.assert_close(y.cpu(), gt.conv(x_cpu, w_cpu, **kwargs))
        y.sum().backward()
    stream.synchronize()
    xc, wc = x_cpu.clone().requires_grad_(), w_cpu.clone().requires_grad_()
    gt.conv(xc, wc, **kwargs).sum().backward()
    torch.testing.assert_close(x.grad.cpu(), xc.grad)
    torch.testing.assert_close(w.grad.cpu(), wc.grad)
