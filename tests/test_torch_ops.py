"""gpuconv.torch as torch.library custom ops: double backward (gradgradcheck and a gradient
penalty against PyTorch's own convolutions), torch.compile(fullgraph=True), meta tensors,
torch.func.vmap, dtype checks as in torch.nn.functional, and unbatched inputs.

Skipped when PyTorch is not installed (it is an optional dependency).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional: the bridge)")

import torch.nn.functional as F  # noqa: E402
from torch.autograd import gradgradcheck  # noqa: E402

import gpuconv.torch as gt  # noqa: E402

F64 = torch.float64


def _randn(*shape, requires_grad=True, seed=[100]):
    seed[0] += 1
    gen = torch.Generator().manual_seed(seed[0])
    return torch.randn(*shape, dtype=F64, generator=gen).requires_grad_(requires_grad)


def _gradgradcheck(func, inputs):
    assert gradgradcheck(func, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# ------------------------------------------------------------ double backward


@pytest.mark.parametrize("kwargs", [
    dict(stride=2, padding="same", padding_mode="reflect"),
    dict(groups=2, padding=((1, 0), (0, 1)), dilation=(1, 2), padding_mode="circular"),
], ids=["1d-reflect-strided-same", "2d-groups-circular"])
def test_gradgradcheck_conv(kwargs):
    if "groups" in kwargs:
        inputs = (_randn(1, 2, 3, 4), _randn(2, 1, 2, 2), _randn(2))
    else:
        inputs = (_randn(1, 2, 5), _randn(2, 2, 3), _randn(2))
    _gradgradcheck(lambda x, w, b: gt.conv(x, w, b, **kwargs), inputs)


def test_gradgradcheck_conv_transpose():
    inputs = (_randn(1, 2, 3), _randn(2, 2, 3), _randn(2))
    _gradgradcheck(lambda x, w, b: gt.conv_transpose(x, w, b, stride=2, padding=1,
                                                     output_padding=1), inputs)


def test_gradgradcheck_conv_transpose_same():
    # 'same' with stride 3 > kernel extent: the crop is an output padding (a negative pad_hi)
    inputs = (_randn(1, 1, 3), _randn(1, 2, 2))
    _gradgradcheck(lambda x, w: gt.conv_transpose(x, w, stride=3, padding="same"), inputs)


def test_gradgradcheck_depthwise():
    inputs = (_randn(1, 2, 5), _randn(4, 1, 3), _randn(4))
    _gradgradcheck(lambda x, w, b: gt.depthwise_conv(x, w, b, stride=2, padding="same",
                                                     padding_mode="replicate"), inputs)


def test_gradgradcheck_separable():
    inputs = (_randn(1, 2, 4), _randn(4, 1, 3), _randn(3, 4, 1), _randn(3))
    _gradgradcheck(lambda x, dw, pw, b: gt.separable_conv(x, dw, pw, b, padding=1,
                                                          padding_mode="reflect"), inputs)


def _penalty(conv, x, w, b):
    """WGAN-GP's gradient penalty: the squared norm of d(sum(tanh(conv)))/dx, kept in the
    graph (create_graph=True), so that it can be differentiated with respect to w and b."""
    y = torch.tanh(conv(x, w, b)).sum()
    (gx,) = torch.autograd.grad(y, [x], create_graph=True)
    return gx.square().sum()


@pytest.mark.parametrize("ours, theirs, shapes", [
    (lambda x, w, b: gt.conv(x, w, b, stride=2, padding=1),
     lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
     ((2, 3, 6, 5), (4, 3, 3, 3), 4)),
    (lambda x, w, b: gt.conv_transpose(x, w, b, stride=2, padding=1, output_padding=1),
     lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
     ((2, 3, 4, 3), (3, 2, 3, 3), 2)),
    (lambda x, w, b: gt.depthwise_conv(x, w, b, padding=1),
     lambda x, w, b: F.conv1d(x, w, b, padding=1, groups=3),
     ((2, 3, 7), (6, 1, 3), 6)),
], ids=["conv2d", "conv_transpose2d", "depthwise1d"])
def test_gradient_penalty_matches_torch(ours, theirs, shapes):
    x_shape, w_shape, c_out = shapes
    x, w, b = _randn(*x_shape), _randn(*w_shape), _randn(c_out)
    got = _penalty(ours, x, w, b)
    want = _penalty(theirs, x, w, b)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g_got = torch.autograd.grad(got, [x, w, b])
    g_want = torch.autograd.grad(want, [x, w, b])
    for a, e in zip(g_got, g_want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_deform_double_backward_raises_a_clear_error():
    x, offset, w = _randn(1, 2, 4, 4), _randn(1, 2, 4, 4), _randn(2, 2, 1, 1)
    (gx,) = torch.autograd.grad(gt.deform_conv2d(x, offset, w).square().sum(), [x],
                                create_graph=True)
    # the first derivative itself is right (and create_graph alone does not raise) ...
    (ref,) = torch.autograd.grad(gt.deform_conv2d(x, offset, w).square().sum(), [x])
    torch.testing.assert_close(gx, ref)
    # ... differentiating it raises
    with pytest.raises(RuntimeError, match="deform_conv2d: double backward is not supported"):
        gx.sum().backward()


# ------------------------------------------------------------- torch.compile


class _Net(torch.nn.Module):
    """Every gpuconv layer kind in one model: conv (reflect, strided 'same'), depthwise,
    separable, a conv predicting deformable offsets, and a transposed conv."""

    def __init__(self):
        super().__init__()
        self.conv = gt.Conv2d(2, 4, 3, stride=2, padding="same", padding_mode="reflect")
        self.depthwise = gt.DepthwiseConv2d(4, 3, padding=1, padding_mode="circular")
        self.separable = gt.SeparableConv2d(4, 4, 3, padding="same")
        self.offsets = gt.Conv2d(4, 18, 3, padding=1)
        self.deform = gt.DeformConv2d(4, 4, 3, padding=1)
        self.up = gt.ConvTranspose2d(4, 2, 2, stride=2)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = torch.relu(self.depthwise(h)) + self.separable(h)
        h = self.deform(h, 0.1 * self.offsets(h))
        return self.up(h)


def test_torch_compile_fullgraph_traces_every_layer_in_one_graph():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(2, 2, 6, 6)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(net, backend=counter, fullgraph=True)
    y = compiled(x)
    assert counter.frame_count == 1          # one graph: no graph break (fullgraph=True too)
    ops = {str(n.target) for g in counter.graphs for n in g.graph.nodes
           if n.op == "call_function"}
    assert {"gpuconv.conv.default", "gpuconv.depthwise_conv.default",
            "gpuconv.separable_conv.default", "gpuconv.deform_conv2d.default",
            "gpuconv.conv_transpose.default"} <= ops
    want = net(x)
    torch.testing.assert_close(y, want)
    # the backward (traced by AOTAutograd from the registered formulas) agrees with eager
    y.square().sum().backward()
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    want.square().sum().backward()
    for a, p in zip(got, net.parameters()):
        torch.testing.assert_close(a, p.grad)


# -------------------------------------------------------------------- meta


def test_meta_layers_give_the_output_shapes():
    cases = [
        (gt.Conv3d(2, 3, 3, stride=2, padding="same", padding_mode="reflect"), (2, 2, 5, 6, 7)),
        (gt.Conv1d(2, 4, 3, dilation=2), (2, 9)),                           # unbatched
        (gt.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1), (1, 2, 4, 5)),
        (gt.ConvTranspose1d(2, 3, 4, stride=2, padding="same"), (1, 2, 5)),
        (gt.DepthwiseConv2d(2, 3, multiplier=2, stride=(1, 2)), (1, 2, 6, 7)),
        (gt.SeparableConv2d(2, 5, 3, padding=((1, 0), (2, 2))), (1, 2, 6, 7)),
    ]
    for layer, shape in cases:
        want = layer(torch.randn(shape)).shape
        meta = layer.to("meta")
        assert all(p.is_meta for p in meta.parameters())
        y = meta(torch.empty(shape, device="meta"))
        assert y.is_meta and y.shape == want, (type(layer).__name__, y.shape, want)


def test_meta_layer_built_on_meta_and_deform():
    layer = gt.DeformConv2d(2, 4, 3, stride=2, padding=1, device="meta")
    x = torch.empty(3, 2, 7, 8, device="meta")
    offset = torch.empty(3, 18, 4, 4, device="meta")
    y = layer(x, offset, torch.empty(3, 9, 4, 4, device="meta"))
    assert y.is_meta and y.shape == (3, 4, 4, 4)
    up = gt.ConvTranspose2d(4, 2, 3, stride=2, device="meta")
    assert up(y, output_size=(10, 9)).shape == (3, 2, 10, 9)
    with pytest.raises(ValueError, match="offset must have shape"):
        layer(x, torch.empty(3, 18, 5, 4, device="meta"))


def test_meta_mixed_with_cpu_is_refused():
    with pytest.raises(ValueError, match="conv: all tensors must be on one device"):
        gt.conv(torch.empty(1, 2, 5, device="meta"), torch.zeros(3, 2, 3))


# -------------------------------------------------------------------- vmap


def test_vmap_over_a_batch_of_inputs():
    torch.manual_seed(1)
    xs = torch.randn(4, 2, 3, 6, 6, dtype=F64)        # vmapped axis 0, then (N, C, H, W)
    for layer in (gt.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", dtype=F64),
                  gt.ConvTranspose2d(3, 2, 3, stride=2, dtype=F64),
                  gt.DepthwiseConv2d(3, 3, multiplier=2, dtype=F64),
                  gt.SeparableConv2d(3, 4, 3, stride=2, padding="same", dtype=F64)):
        got = torch.func.vmap(layer)(xs)
        want = torch.stack([layer(x) for x in xs])
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # unbatched samples, the vmapped axis elsewhere (in_dims=1)
    conv = gt.Conv2d(3, 4, 3, dtype=F64)
    got = torch.func.vmap(conv, in_dims=1)(xs[:, 0].movedim(0, 1))
    torch.testing.assert_close(got, torch.stack([conv(x) for x in xs[:, 0]]))


def test_vmap_over_weights_and_deform_offsets():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 5, 5, dtype=F64)
    ws = torch.randn(3, 4, 3, 3, 3, dtype=F64)       # 3 weights: the op runs once per weight
    got = torch.func.vmap(lambda w: gt.conv(x, w, padding=1))(ws)
    torch.testing.assert_close(got, torch.stack([F.conv2d(x, w, padding=1) for w in ws]))
    w = torch.randn(4, 3, 3, 3, dtype=F64)
    offsets = torch.randn(3, 2, 18, 5, 5, dtype=F64)  # x shared, offsets vmapped
    got = torch.func.vmap(lambda o: gt.deform_conv2d(x, o, w, padding=1))(offsets)
    want = torch.stack([gt.deform_conv2d(x, o, w, padding=1) for o in offsets])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_vmap_over_the_gradient_ops():
    """Per-sample weight gradients through the weight-gradient op's vmap rule, against
    PyTorch's own per-sample gradients."""
    torch.manual_seed(3)
    xs = torch.randn(5, 1, 2, 7, dtype=F64)
    gs = torch.randn(5, 1, 3, 4, dtype=F64)
    geometry = ([2], [1, 1], [1], 1, "zeros")        # stride 2, padding (1, 1), dilation 1

    def weight_grad(x, g):
        return torch.ops.gpuconv.conv_weight(x, g, [3, 2, 3], *geometry, False)

    got = torch.func.vmap(weight_grad)(xs, gs)
    w = torch.zeros(3, 2, 3, dtype=F64, requires_grad=True)
    want = torch.stack([torch.autograd.grad(F.conv1d(x, w, stride=2, padding=1), w, g)[0]
                        for x, g in zip(xs, gs)])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ours, theirs, shapes", [
    (lambda x, w: gt.conv(x, w, stride=2, padding=1, padding_mode="reflect"),
     lambda x, w: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, stride=2),
     ((4, 1, 3, 6, 5), (2, 3, 3, 3))),
    (lambda x, w: gt.conv_transpose(x, w, stride=2, padding=1),
     lambda x, w: F.conv_transpose1d(x, w, stride=2, padding=1),
     ((4, 1, 3, 4), (3, 2, 3))),
    (lambda x, w: gt.separable_conv(x, w, torch.ones(2, 6, 1, dtype=F64), padding=1),
     lambda x, w: F.conv1d(F.conv1d(x, w, padding=1, groups=3), torch.ones(2, 6, 1,
                                                                          dtype=F64)),
     ((4, 1, 3, 5), (6, 1, 3))),
], ids=["conv2d-reflect", "conv_transpose1d", "separable1d"])
def test_torch_func_grad_per_sample_and_higher_order(ours, theirs, shapes):
    """torch.func.grad (PyTorch's register_autograd ops alone fail under it), per-sample
    gradients with vmap(grad), grad of grad, and jacrev, against torch's own convolutions."""
    x_shape, w_shape = shapes
    xs, w = _randn(*x_shape, requires_grad=False), _randn(*w_shape, requires_grad=False)

    def loss(f):
        return lambda w, x: f(x, w).tanh().sum()

    per_sample = [torch.func.vmap(torch.func.grad(loss(f)), in_dims=(None, 0))(w, xs)
                  for f in (ours, theirs)]
    torch.testing.assert_close(*per_sample, rtol=1e-12, atol=1e-12)
    second = [torch.func.grad(lambda w, f=f: torch.func.grad(loss(f), argnums=1)(w, xs[0])
                              .square().sum())(w) for f in (ours, theirs)]
    torch.testing.assert_close(*second, rtol=1e-10, atol=1e-10)
    jacobians = [torch.func.jacrev(f, argnums=1)(xs[0], w) for f in (ours, theirs)]
    torch.testing.assert_close(*jacobians, rtol=1e-12, atol=1e-12)


def test_torch_func_grad_of_deform_per_sample():
    x, offset = _randn(2, 1, 2, 4, 4, requires_grad=False), _randn(2, 1, 18, 4, 4)
    w = _randn(3, 2, 3, 3, requires_grad=False)

    def loss(w, x, o):
        return gt.deform_conv2d(x, o, w, padding=1).square().sum()

    got = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(w, x, offset.detach())
    for i in range(2):
        wi = w.clone().requires_grad_()
        (want,) = torch.autograd.grad(loss(wi, x[i], offset[i].detach()), [wi])
        torch.testing.assert_close(got[i], want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ dtypes


def _torch_error(call):
    with pytest.raises(RuntimeError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("ours, theirs", [
    (gt.Conv2d(2, 3, 3), torch.nn.Conv2d(2, 3, 3)),
    (gt.Conv2d(2, 3, 3, bias=False), torch.nn.Conv2d(2, 3, 3, bias=False)),
    (gt.ConvTranspose2d(2, 3, 3), torch.nn.ConvTranspose2d(2, 3, 3)),
], ids=["bias", "no-bias", "transpose"])
def test_float64_input_to_float32_layer_raises_as_torch_nn(ours, theirs):
    x = torch.randn(1, 2, 5, 5, dtype=F64)
    want = _torch_error(lambda: theirs(x))
    with pytest.raises(RuntimeError) as info:
        ours(x)
    assert isinstance(info.value, gt.DtypeMismatchError) and isinstance(info.value, TypeError)
    assert str(info.value).startswith(f"{type(ours).__name__}: {want}")


def test_functional_dtype_mismatches_raise_as_torch_functional():
    x, w, b = torch.randn(1, 2, 5), torch.randn(3, 2, 3), torch.randn(3)
    cases = [
        (lambda f: f(x, w.double()), F.conv1d, gt.conv),
        (lambda f: f(x.half(), w), F.conv1d, gt.conv),
        (lambda f: f(x, w, b.double()), F.conv1d, gt.conv),
        (lambda f: f(x, w.double().transpose(0, 1)), F.conv_transpose1d, gt.conv_transpose),
        (lambda f: f(x.double(), w.transpose(0, 1), b), F.conv_transpose1d, gt.conv_transpose),
    ]
    for call, theirs, ours in cases:
        want = _torch_error(lambda call=call, theirs=theirs: call(theirs))
        name = ours.__name__
        with pytest.raises(gt.DtypeMismatchError, match=f"^{name}: ") as info:
            call(ours)
        assert want in str(info.value)
    # F.conv_transposeNd accepts a bias of another dtype (and converts it): so do we
    got = gt.conv_transpose(x, w.transpose(0, 1), b.double())
    want = F.conv_transpose1d(x, w.transpose(0, 1), b.double())
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want)
    with pytest.raises(gt.DtypeMismatchError, match="depthwise_weight is torch.float64"):
        gt.separable_conv(x, torch.randn(2, 1, 3, dtype=F64), torch.randn(3, 2, 1))
    with pytest.raises(gt.DtypeMismatchError, match="offset is torch.float64"):
        gt.deform_conv2d(torch.randn(1, 1, 3, 3), torch.zeros(1, 2, 3, 3, dtype=F64),
                         torch.ones(1, 1, 1, 1))


# ------------------------------------------------------------ unbatched inputs


def test_functions_accept_unbatched_inputs_as_torch_functional():
    x2, x1 = _randn(3, 5, 6), _randn(3, 7)
    cases = [
        (lambda x, w: gt.conv(x, w, stride=2, padding=1), x2, _randn(4, 3, 3, 3),
         lambda x, w: F.conv2d(x, w, stride=2, padding=1)),
        (lambda x, w: gt.conv_transpose(x, w, stride=2), x1, _randn(3, 2, 3),
         lambda x, w: F.conv_transpose1d(x, w, stride=2)),
        (lambda x, w: gt.depthwise_conv(x, w, padding=1), x1, _randn(6, 1, 3),
         lambda x, w: F.conv1d(x, w, padding=1, groups=3)),
    ]
    for ours, x, w, theirs in cases:
        got, want = ours(x, w), theirs(x, w)
        assert got.shape == want.shape and got.dim() == x.dim()
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for a, e in zip(torch.autograd.grad(got.sum(), [x, w]),
                        torch.autograd.grad(want.sum(), [x, w])):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    dw, pw = _randn(6, 1, 3), _randn(2, 6, 1)
    torch.testing.assert_close(gt.separable_conv(x1, dw, pw),
                               gt.separable_conv(x1[None], dw, pw)[0])
    offset, mask, wd = _randn(18, 5, 6), _randn(9, 5, 6), _randn(2, 3, 3, 3)
    torch.testing.assert_close(
        gt.deform_conv2d(x2, offset, wd, padding=1, mask=mask),
        gt.deform_conv2d(x2[None], offset[None], wd, padding=1, mask=mask[None])[0])


def test_functions_reject_other_ranks():
    with pytest.raises(ValueError, match="^conv: "):
        gt.conv(torch.zeros(5, 5), torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="^conv_transpose: "):
        gt.conv_transpose(torch.zeros(1, 1, 1, 5, 5), torch.zeros(1, 1, 3, 3))
