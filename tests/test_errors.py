"""Every bad call raises ValueError/TypeError naming the parameter, before any work."""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv

rng = np.random.default_rng(0)
X2 = rng.standard_normal((2, 4, 8, 8))
W2 = rng.standard_normal((6, 4, 3, 3))


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        # wrong rank
        (lambda: gpuconv.conv(X2[0, 0], W2[0, 0]), ValueError, r"x must have shape \(N, C_in, \*spatial\).*x.ndim=2"),
        (lambda: gpuconv.conv2d(X2[:, :, :, 0], W2[..., 0]), ValueError, r"conv2d: x must have 4 dims"),
        (lambda: gpuconv.conv(X2, W2[..., 0]), ValueError, r"weight must have 4 dims"),
        (lambda: gpuconv.conv(np.zeros((1, 1, 2, 2, 2, 2)), np.zeros((1, 1, 1, 1, 1, 1))),
         ValueError, r"at most 3 spatial dims"),
        # channels vs weight / groups
        (lambda: gpuconv.conv(X2, W2[:, :3]), ValueError, r"weight.shape\[1\]=3 must equal in_channels / groups"),
        (lambda: gpuconv.conv(X2, W2[:, :2], groups=3), ValueError, r"groups=3 must divide in_channels=4"),
        (lambda: gpuconv.conv(X2, W2[:5, :2], groups=2), ValueError, r"groups=2 must divide out_channels=5"),
        (lambda: gpuconv.conv(X2, W2, groups=0), ValueError, r"groups=0 must be a positive int"),
        (lambda: gpuconv.conv(X2, W2, groups=1.5), TypeError, r"groups=1.5 must be an int"),
        (lambda: gpuconv.conv_transpose(X2, W2), ValueError, r"weight.shape\[0\]=6 must equal in_channels=4"),
        # stride / dilation
        (lambda: gpuconv.conv(X2, W2, stride=0), ValueError, r"stride=0 must be positive"),
        (lambda: gpuconv.conv(X2, W2, stride=(1, -1)), ValueError, r"stride=\(1, -1\) must be positive"),
        (lambda: gpuconv.conv(X2, W2, dilation=0), ValueError, r"dilation=0 must be positive"),
        (lambda: gpuconv.conv(X2, W2, stride=(1, 1, 1)), ValueError, r"stride=\(1, 1, 1\) must have 2 entries"),
        (lambda: gpuconv.conv(X2, W2, stride="2"), TypeError, r"stride='2' must be an int"),
        # padding
        (lambda: gpuconv.conv(X2, W2, padding=-1), ValueError, r"padding=-1 must be non-negative"),
        (lambda: gpuconv.conv(X2, W2, padding=((1, -1), (0, 0))), ValueError, r"must be non-negative"),
        (lambda: gpuconv.conv(X2, W2, padding="full"), ValueError, r"padding='full' must be an int, a tuple, 'valid' or 'same'"),
        (lambda: gpuconv.conv(X2, W2, padding=((1, 1),)), ValueError, r"must be 2 \(lo, hi\) pairs"),
        (lambda: gpuconv.conv(X2, W2, padding=8, padding_mode="reflect"), ValueError,
         r"^conv: padding=8 gives pads \(8, 8\) in spatial dim 0 \(H\); each must be smaller than "
         r"the input size 8 for padding_mode='reflect'"),
        (lambda: gpuconv.conv(X2, W2, padding=9, padding_mode="circular"), ValueError,
         r"^conv: padding=9 gives pads \(9, 9\) in spatial dim 0 \(H\); each must be at most the input "
         r"size 8 for padding_mode='circular'"),
        # kernel larger than padded input
        (lambda: gpuconv.conv(X2, rng.standard_normal((6, 4, 9, 3))), ValueError,
         r"^conv: kernel size 9 \(dilated extent 9\) in spatial dim 0 \(H\) is larger than the "
         r"padded input size 8"),
        (lambda: gpuconv.conv(X2, W2, dilation=4), ValueError, r"dilated extent 9.*padded input size 8"),
        # output_padding
        (lambda: gpuconv.conv_transpose(X2, W2[:4], stride=2, output_padding=2), ValueError,
         r"output_padding=\(2, 2\) must be non-negative and smaller than max\(stride, dilation\)"),
        (lambda: gpuconv.conv_transpose(X2, W2[:4], output_padding=1), ValueError, r"output_padding"),
        # mode strings
        (lambda: gpuconv.conv(X2, W2, padding_mode="mirror"), ValueError,
         r"padding_mode='mirror' must be one of \('zeros', 'reflect', 'replicate', 'circular'\)"),
        (lambda: gpuconv.convolve([1.0], [1.0], mode="bogus"), ValueError, r"mode='bogus' must be 'valid', 'same' or 'full'"),
        (lambda: gpuconv.correlate([1.0], [1.0], mode=3), ValueError, r"mode=3 must be"),
        # convolve / correlate inputs
        (lambda: gpuconv.convolve([], [1.0]), ValueError, r"a cannot be empty"),
        (lambda: gpuconv.correlate([1.0], np.zeros((2, 2))), ValueError, r"v must be 1-D"),
        # bias / out
        (lambda: gpuconv.conv(X2, W2, np.zeros(5)), ValueError, r"bias must have shape \(6,\)"),
        (lambda: gpuconv.conv(X2, W2, out=np.zeros((2, 6, 6, 5))), ValueError, r"out has shape \(2, 6, 6, 5\); expected \(2, 6, 6, 6\)"),
        (lambda: gpuconv.conv(X2, W2, out=np.zeros((2, 6, 6, 6), np.float32)), ValueError, r"out has dtype float32; expected float64"),
        (lambda: gpuconv.conv(X2, W2, out=[0.0]), TypeError, r"out must be an array, got list"),
        (lambda: gpuconv.conv(X2, W2, out=np.broadcast_to(np.zeros(1), (2, 6, 6, 6))), ValueError,
         r"conv: out is read-only; expected a writeable array"),
        # dtypes
        (lambda: gpuconv.conv(X2.astype(np.int32), W2), TypeError, r"x has dtype int32; expected float16, float32 or float64"),
        (lambda: gpuconv.conv(X2, W2.astype(complex)), TypeError, r"weight has dtype complex128"),
        (lambda: gpuconv.conv(X2 > 0, W2), TypeError, r"x has dtype bool"),
        (lambda: gpuconv.depthwise_conv(X2, W2[:4, :1].astype(np.int64)), TypeError, r"weight has dtype int64"),
        # non-array inputs
        (lambda: gpuconv.conv(X2.tolist(), W2), TypeError, r"conv: x must be a numpy.ndarray or cupy.ndarray, got list"),
        (lambda: gpuconv.conv(X2, W2, bias=3.0), TypeError, r"bias must be a numpy.ndarray or cupy.ndarray, got float"),
        # depthwise / separable weights
        (lambda: gpuconv.depthwise_conv(X2, W2[:6, :1]), ValueError, r"weight must have shape \(C_in \* multiplier, 1, \*kernel\) with C_in=4"),
        (lambda: gpuconv.separable_conv(X2, W2[:4, :1], np.zeros((3, 5, 1, 1))), ValueError,
         r"pointwise_weight must have shape \(C_out, 4, 1, 1\)"),
        # deformable offsets / mask
        (lambda: gpuconv.deform_conv2d(X2, np.zeros((2, 18, 5, 6)), W2), ValueError,
         r"offset must have shape \(2, 18, 6, 6\)"),
        (lambda: gpuconv.deform_conv2d(X2, np.zeros((2, 17, 6, 6)), W2), ValueError,
         r"offset must have shape \(N, 2 \* offset_groups \* 3 \* 3, 6, 6\)"),
        (lambda: gpuconv.deform_conv2d(X2, np.zeros((2, 36, 6, 6)), W2, mask=np.zeros((2, 9, 6, 6))),
         ValueError, r"mask must have shape \(2, 18, 6, 6\)"),
        (lambda: gpuconv.deform_conv2d(X2, np.zeros((2, 54, 6, 6)), W2), ValueError,
         r"offset_groups=3 \(from offset.shape\[1\]\) must divide in_channels=4"),
        (lambda: gpuconv.deform_conv2d(X2, np.zeros((2, 18, 6, 6)), W2[:, :3]), ValueError,
         r"weight.shape\[1\]=3 must divide in_channels=4"),
        # backend names
        (lambda: gpuconv.use_backend("tpu").__enter__(), ValueError, r"^use_backend: name='tpu' must be one of"),
    ],
)
def test_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_mixed_array_types_are_rejected():
    class FakeCupy(np.ndarray):
        """A stand-in recognised as a CuPy array, to test mixing without a GPU."""

    import gpuconv._dispatch as dispatch

    original = dispatch.is_cupy_array
    dispatch.is_cupy_array = lambda a: isinstance(a, FakeCupy)
    try:
        fake = W2.view(FakeCupy)
        with pytest.raises(TypeError, match=r"conv: all array arguments must be NumPy arrays or all CuPy arrays"):
            gpuconv.conv(X2, fake)
    finally:
        dispatch.is_cupy_array = original


def test_bad_environment_backend(monkeypatch):
    monkeypatch.setenv("GPUCONV_BACKEND", "quantum")
    with pytest.raises(ValueError, match=r"GPUCONV_BACKEND='quantum' must be one of"):
        gpuconv.conv(X2, W2)


def test_errors_leave_out_untouched():
    out = np.full((2, 6, 6, 6), 7.0)
    with pytest.raises(ValueError):
        gpuconv.conv(X2, W2, np.zeros(5), out=out)
    assert (out == 7.0).all()
