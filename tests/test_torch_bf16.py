"""bfloat16 tensors through the PyTorch bridge (CPU tensors, the NumPy and emulate backends).

Tensors cross without copies through their bits (``Tensor.numpy()`` refuses bfloat16):
``t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)`` in, ``torch.from_numpy(a.view(
numpy.int16)).view(torch.bfloat16)`` out. The results are float32 math on the bfloat16
inputs, rounded once, so they equal PyTorch's float32 convolution on the same values rounded
to bfloat16 (up to float32 summation order: one bfloat16 ulp at most, and mostly equal).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional: the bridge)")
pytest.importorskip("ml_dtypes")

import torch.nn.functional as F

import gpuconv
import gpuconv.torch as gt
from gpuconv import _dtypes

BF16 = torch.bfloat16


def _randn(*shape, seed, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(BF16).requires_grad_(requires_grad)


def _close(got, expected):
    """bfloat16 tensors within one bfloat16 ulp, and mostly equal."""
    assert got.dtype == expected.dtype == BF16
    a, b = got.detach().double(), expected.detach().double()
    ulp = torch.exp2(torch.floor(torch.log2(torch.maximum(a.abs(), b.abs()) + 1e-300)) - 7)
    assert bool(((a - b).abs() <= ulp).all()), float((a - b).abs().max())
    assert float((a == b).double().mean()) >= 0.9


def test_array_views_share_memory():
    """The conversion path: no copy either way, bits unchanged."""
    t = _randn(2, 3, 4, seed=0, requires_grad=False)
    a = gt._to_array(t)
    assert a.dtype == _dtypes.BFLOAT16
    assert a.ctypes.data == t.data_ptr()
    np.testing.assert_array_equal(a.view(np.int16), t.view(torch.int16).numpy())
    back = gt._to_tensor(a)
    assert back.dtype == BF16 and back.data_ptr() == t.data_ptr()
    strided = t[:, ::2].transpose(1, 2)  # non-contiguous views convert too
    np.testing.assert_array_equal(gt._to_array(strided).astype(np.float32),
                                  strided.float().numpy())


@pytest.mark.parametrize("case", ["conv", "conv_transpose", "depthwise", "deform"])
def test_functions_and_gradients_match_float32(case):
    """Forward and every gradient in bfloat16 == PyTorch's float32 on the bf16 values,
    rounded to bfloat16 (within one ulp)."""
    _check_functions_and_gradients(case)


@pytest.mark.parametrize("case", ["conv", "conv_transpose", "depthwise", "deform"])
def test_functions_and_gradients_on_emulate(case):
    """The same on the emulate backend (the CUDA kernels' bfloat16 instantiations on the CPU):
    float32 sums in the kernels' order, rounded once, so again within one bfloat16 ulp."""
    if gpuconv.available_backends()["emulate"] != "available":
        pytest.skip("emulate backend unavailable")
    with gpuconv.use_backend("emulate"):
        _check_functions_and_gradients(case)


def _check_functions_and_gradients(case):
    x = _randn(2, 4, 7, 6, seed=1)
    if case == "conv":
        w, b = _randn(6, 2, 3, 3, seed=2), _randn(6, seed=3)

        def ours(x, w, b):
            return gt.conv(x, w, b, padding=1, groups=2, stride=(2, 1))

        def ref(x, w, b):
            return F.conv2d(x, w, b, padding=1, groups=2, stride=(2, 1))
    elif case == "conv_transpose":
        w, b = _randn(4, 3, 3, 2, seed=2), _randn(3, seed=3)

        def ours(x, w, b):
            return gt.conv_transpose(x, w, b, stride=2, padding=1)

        def ref(x, w, b):
            return F.conv_transpose2d(x, w, b, stride=2, padding=1)
    elif case == "depthwise":
        w, b = _randn(8, 1, 3, 3, seed=2), _randn(8, seed=3)

        def ours(x, w, b):
            return gt.depthwise_conv(x, w, b, padding=1)

        def ref(x, w, b):
            return F.conv2d(x, w, b, padding=1, groups=4)
    else:
        w, b = _randn(5, 4, 3, 3, seed=2), _randn(5, seed=3)
        offset = (_randn(2, 18, 7, 6, seed=4, requires_grad=False) * 0.8).requires_grad_()

        def ours(x, w, b):
            return gt.deform_conv2d(x, offset, w, b, padding=1)

        def ref(x, w, b):
            # torchvision has no bfloat16 deform_conv2d (and may not be installed): gpuconv's
            # own float32 (tests/test_torch_bridge.py checks it against torchvision's)
            return gt.deform_conv2d(x, offset.detach().float(), w, b, padding=1)

    y = ours(x, w, b)
    assert y.dtype == BF16
    xs = [t.detach().float().requires_grad_() for t in (x, w, b)]
    expected = ref(*xs)
    _close(y, expected.to(BF16))
    g = _randn(*y.shape, seed=5, requires_grad=False)
    y.backward(g)
    expected.backward(g.float())
    for ours_t, ref_t in zip((x, w, b), xs):
        assert ours_t.grad.dtype == BF16
        _close(ours_t.grad, ref_t.grad.to(BF16))
    if case == "deform":
        assert offset.grad.dtype == BF16


@pytest.mark.parametrize("layer", [
    lambda: gt.Conv1d(4, 6, 3, padding="same", padding_mode="reflect", dtype=BF16),
    lambda: gt.Conv2d(4, 6, 3, groups=2, dtype=BF16),
    lambda: gt.Conv3d(4, 2, 2, dtype=BF16),
    lambda: gt.ConvTranspose2d(4, 3, 3, stride=2, dtype=BF16),
    lambda: gt.DepthwiseConv2d(4, 3, multiplier=2, dtype=BF16),
    lambda: gt.SeparableConv2d(4, 6, 3, padding=1, dtype=BF16),
    lambda: gt.DeformConv2d(4, 6, 3, padding=1, dtype=BF16),
], ids=["Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "DepthwiseConv2d",
        "SeparableConv2d", "DeformConv2d"])
def test_layers_train_in_bf16(layer):
    """bfloat16 layers: forward, backward, one SGD step, all in bfloat16."""
    module = layer()
    nd = {"Conv1d": 1, "Conv3d": 3}.get(type(module).__name__, 2)
    x = _randn(2, 4, *(6,) * nd, seed=6)
    args = [x]
    if isinstance(module, gt.DeformConv2d):
        args.append(_randn(2, 18, 6, 6, seed=7, requires_grad=False) * 0.5)
    y = module(*args)
    assert y.dtype == BF16
    y.float().square().mean().backward()
    assert x.grad.dtype == BF16
    for p in module.parameters():
        assert p.grad is not None and p.grad.dtype == BF16
    first = next(module.parameters())
    before = first.detach().clone()
    with torch.no_grad():
        for p in module.parameters():
            p -= 0.1 * p.grad
    assert first.dtype == BF16 and not torch.equal(before, first)


def test_meta_tensors_give_shapes():
    x = torch.empty(2, 4, 9, 9, dtype=BF16, device="meta")
    w = torch.empty(6, 2, 3, 3, dtype=BF16, device="meta")
    y = gt.conv(x, w, groups=2)
    assert y.shape == (2, 6, 7, 7) and y.dtype == BF16


def test_mixed_dtypes_are_pytorchs_error():
    x = _randn(1, 2, 5, seed=8)
    with pytest.raises(gt.DtypeMismatchError,
                       match="expected scalar type BFloat16 but found Float"):
        gt.conv(x, torch.zeros(3, 2, 3))
    with pytest.raises(gt.DtypeMismatchError,
                       match=r"Input type \(c10::BFloat16\) and bias type \(float\)"):
        gt.conv(x, torch.zeros(3, 2, 3, dtype=BF16), torch.zeros(3))


def test_missing_ml_dtypes_names_the_extra(monkeypatch):
    monkeypatch.setattr(_dtypes, "BFLOAT16", None)
    x, w = _randn(1, 2, 5, seed=11), _randn(3, 2, 3, seed=12)
    with pytest.raises(ImportError, match=r"conv: bfloat16 needs .*gpuconv\[bf16\]"):
        gt.conv(x, w)


def test_cuda_bf16_tensors_are_refused_clearly():
    """Until the bfloat16 CUDA path has run on a GPU (checked without a GPU)."""
    t = torch.empty(1, 2, 5, dtype=BF16, device="meta")
    fake = type("FakeCudaTensor", (), {"device": torch.device("cuda", 0)})()
    gt._check_bfloat16("conv", "x", t)  # meta: shapes only, nothing to refuse
    with pytest.raises(TypeError, match="bfloat16 CUDA path is not enabled yet"):
        gt._check_bfloat16("conv", "x", fake)
