"""gpuconv.torch's layers against torch.nn's with the same weights: repr, attributes,
state_dict round trips both ways, .to(dtype/device), every padding_mode, and
ConvTranspose*.forward(x, output_size=...).

Skipped when PyTorch is not installed (it is an optional dependency).
"""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional: the bridge)")

from torch import nn  # noqa: E402

import gpuconv.torch as gt  # noqa: E402

F64 = torch.float64

CONV = [(gt.Conv1d, nn.Conv1d, (2, 4, 9)), (gt.Conv2d, nn.Conv2d, (2, 4, 7, 6)),
        (gt.Conv3d, nn.Conv3d, (1, 4, 5, 4, 5))]
TRANSPOSE = [(gt.ConvTranspose1d, nn.ConvTranspose1d, (2, 4, 5)),
             (gt.ConvTranspose2d, nn.ConvTranspose2d, (2, 4, 3, 4)),
             (gt.ConvTranspose3d, nn.ConvTranspose3d, (1, 4, 2, 3, 2))]


def _x(shape, dtype=F64, seed=0):
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _same_module(ours, theirs, x, **forward):
    """Same output and same gradients (input, every parameter) for the two modules."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa, **forward), theirs(xb, **forward)
    torch.testing.assert_close(ya, yb)
    ga = torch.autograd.grad(ya.square().sum(), [xa, *ours.parameters()])
    gb = torch.autograd.grad(yb.square().sum(), [xb, *theirs.parameters()])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


# padding_mode x padding form; reflect needs padding < size, which every case respects
CONV_KWARGS = [
    dict(padding_mode=mode, **extra) for mode, extra in itertools.product(
        ["zeros", "reflect", "replicate", "circular"],
        [dict(padding=1), dict(padding="same", dilation=2, groups=2, bias=False),
         dict(padding="per-dim", stride=2)])
]


@pytest.mark.parametrize("kwargs", CONV_KWARGS, ids=lambda k: "-".join(map(str, k.values())))
def test_conv_layers_match_torch_nn(kwargs):
    for ours_cls, theirs_cls, shape in CONV:
        nd = len(shape) - 2
        kw = dict(kwargs)
        if kw["padding"] == "per-dim":
            kw["padding"] = tuple(range(1, nd + 1))     # a different pad per dim
        ours = ours_cls(4, 6, 3, dtype=F64, **kw)
        theirs = theirs_cls(4, 6, 3, dtype=F64, **kw)
        assert repr(ours) == repr(theirs)
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                     "dilation", "groups", "padding_mode", "output_padding", "transposed"):
            assert getattr(ours, name) == getattr(theirs, name), name
        theirs.load_state_dict(ours.state_dict())
        _same_module(ours, theirs, _x(shape))


def test_conv_transpose_layers_match_torch_nn():
    for ours_cls, theirs_cls, shape in TRANSPOSE:
        for kw in (dict(stride=2, padding=1, output_padding=1, groups=2),
                   dict(stride=3, dilation=2, bias=False), dict()):
            ours = ours_cls(4, 6, 3, dtype=F64, **kw)
            theirs = theirs_cls(4, 6, 3, dtype=F64, **kw)
            assert repr(ours) == repr(theirs)
            assert ours.transposed and ours.output_padding == theirs.output_padding
            theirs.load_state_dict(ours.state_dict())
            _same_module(ours, theirs, _x(shape))


def test_state_dict_round_trips_both_ways():
    torch.manual_seed(0)
    theirs = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    ours = gt.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())           # torch.nn -> gpuconv
    x = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(ours(x), theirs(x))
    fresh = gt.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    fresh.load_state_dict(ours.state_dict())            # gpuconv -> gpuconv
    torch.testing.assert_close(fresh(x), theirs(x))
    # a missing bias is a missing key, as in torch.nn
    no_bias = gt.Conv2d(3, 4, 3, bias=False)
    assert list(no_bias.state_dict()) == list(nn.Conv2d(3, 4, 3, bias=False).state_dict())
    with pytest.raises(RuntimeError, match="Unexpected key"):
        no_bias.load_state_dict(theirs.state_dict())


def test_depthwise_layer_shares_the_grouped_conv_state_dict():
    torch.manual_seed(1)
    for mode in ("zeros", "reflect", "replicate", "circular"):
        theirs = nn.Conv2d(3, 6, (3, 2), groups=3, padding=1, padding_mode=mode, dtype=F64)
        ours = gt.DepthwiseConv2d(3, (3, 2), multiplier=2, padding=1, padding_mode=mode,
                                  dtype=F64)
        ours.load_state_dict(theirs.state_dict())
        _same_module(ours, theirs, _x((2, 3, 5, 6)))
    assert repr(ours) == ("DepthwiseConv2d(3, kernel_size=(3, 2), stride=(1, 1), "
                          "multiplier=2, padding=(1, 1), padding_mode=circular)")


def test_to_dtype_and_device_as_torch_nn():
    torch.manual_seed(2)
    ours = gt.Conv2d(2, 3, 3, padding="same", padding_mode="circular")
    theirs = nn.Conv2d(2, 3, 3, padding="same", padding_mode="circular")
    theirs.load_state_dict(ours.state_dict())
    for dtype in (F64, torch.float16, torch.float32):
        ours.to(dtype)
        theirs.to(dtype)
        assert ours.weight.dtype == ours.bias.dtype == dtype
        x = _x((1, 2, 5, 5), torch.float32).to(dtype)
        if dtype == torch.float16:                     # torch has no float16 conv on the CPU
            want = theirs.to(torch.float32)(x.float()).to(dtype)
            theirs.to(dtype)
            torch.testing.assert_close(ours(x), want, rtol=2e-3, atol=2e-3)
        else:
            torch.testing.assert_close(ours(x), theirs(x))
    ours.double().to("cpu")
    assert ours.weight.dtype == F64 and ours.weight.device.type == "cpu"
    ours.to(device="meta")
    y = ours(torch.empty(4, 2, 6, 6, dtype=F64, device="meta"))
    assert ours.weight.is_meta and y.is_meta and y.shape == (4, 3, 6, 6)


def test_padding_mode_validation_as_torch_nn():
    for bad in ("mirror", "ZEROS"):
        with pytest.raises(ValueError):
            nn.Conv2d(2, 2, 3, padding_mode=bad)
        with pytest.raises(ValueError, match=f"Conv2d: padding_mode='{bad}' must be one of"):
            gt.Conv2d(2, 2, 3, padding_mode=bad)
    with pytest.raises(ValueError, match="Conv2d: padding='full' must be"):
        gt.Conv2d(2, 2, 3, padding="full")


# ---------------------------------------------------------------- output_size


@pytest.mark.parametrize("ours_cls, theirs_cls, shape", TRANSPOSE, ids=["1d", "2d", "3d"])
def test_conv_transpose_output_size_as_torch_nn(ours_cls, theirs_cls, shape):
    kw = dict(stride=3, padding=1, dilation=2)
    ours = ours_cls(4, 2, 3, dtype=F64, **kw)
    theirs = theirs_cls(4, 2, 3, dtype=F64, **kw)
    theirs.load_state_dict(ours.state_dict())
    x = _x(shape)
    nd = len(shape) - 2
    base = [(n - 1) * 3 - 2 + 2 * 2 + 1 for n in shape[2:]]      # without output padding
    for extra in range(3):                                       # every valid size
        size = [b + extra for b in base]
        _same_module(ours, theirs, x, output_size=size)
        # the whole shape is accepted too, and unbatched inputs
        full = [shape[0], 2, *size]
        torch.testing.assert_close(ours(x, output_size=full), theirs(x, output_size=full))
        torch.testing.assert_close(ours(x[0], output_size=size), theirs(x[0], output_size=size))
    for size in ([b - 1 for b in base], [b + 3 for b in base]):
        with pytest.raises(ValueError, match="valid sizes range"):
            theirs(x, output_size=size)
        with pytest.raises(ValueError, match=rf"^{ours_cls.__name__}: requested an output "
                                             rf"size of .*, but valid sizes range from"):
            ours(x, output_size=size)
    with pytest.raises(ValueError, match=f"output_size must have {nd} or {nd + 2} elements"):
        ours(x, output_size=[5] * (nd + 1))


def test_conv_transpose_output_size_with_asymmetric_padding_and_same():
    layer = gt.ConvTranspose1d(1, 1, 3, stride=2, padding=((2, 0),), bias=False, dtype=F64)
    x = _x((1, 1, 4))
    # full transposed output 9 long, 2 cropped low: 7, or 8 with output_size
    full = gt.conv_transpose(x, layer.weight, stride=2)
    torch.testing.assert_close(layer(x, output_size=[7]), full[..., 2:9])
    padded = layer(x, output_size=[8])
    torch.testing.assert_close(padded[..., :7], full[..., 2:9])
    assert padded.shape[-1] == 8 and padded[..., 7].abs().max() == 0
    same = gt.ConvTranspose1d(1, 1, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="output_size cannot be combined with padding='same'"):
        same(x.float(), output_size=[8])
