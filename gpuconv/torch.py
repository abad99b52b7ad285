"""PyTorch bridge: autograd functions and ``nn.Module`` layers whose forward and backward
run gpuconv.

Import it explicitly, ``import gpuconv.torch`` (``import gpuconv`` never imports PyTorch).

* CPU tensors are shared with NumPy without copies (``tensor.detach().numpy()`` in,
  ``torch.from_numpy`` out); gpuconv copies only inputs that are not C-contiguous.
* CUDA tensors are shared with CuPy through DLPack (``cupy.from_dlpack``, ``torch.from_dlpack``,
  zero-copy), and gpuconv's kernels run on PyTorch's current CUDA stream of the tensors'
  device, so they are ordered with the surrounding PyTorch work. CuPy allocates the results
  from its own memory pool.
* Gradients come from :mod:`gpuconv.grad`. They are first-order only (``once_differentiable``:
  double backward raises). Under ``torch.use_deterministic_algorithms(True)`` the weight
  gradients are requested with ``deterministic=True``.

What this offers beyond ``torch.nn``/torchvision: every ``padding_mode`` in 1-D, 2-D and 3-D,
``padding='same'`` with any stride (``ceil(size / stride)`` outputs), ``padding='same'`` for
transposed convolutions (``size * stride`` outputs), asymmetric ``((lo, hi), ...)`` padding,
depthwise and depthwise-separable layers, and float16/float32/float64 on the CPU.

Examples
--------
>>> import torch
>>> import gpuconv.torch as gt
>>> layer = gt.Conv2d(3, 8, 3, stride=2, padding="same", padding_mode="reflect")
>>> layer(torch.randn(2, 3, 9, 9)).shape
torch.Size([2, 8, 5, 5])
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import _api, _shapes
from . import grad as _grad

__all__ = [
    "Conv1d", "Conv2d", "Conv3d",
    "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "DeformConv2d",
    "DepthwiseConv1d", "DepthwiseConv2d", "DepthwiseConv3d",
    "SeparableConv1d", "SeparableConv2d", "SeparableConv3d",
    "conv", "conv_transpose", "deform_conv2d", "depthwise_conv", "separable_conv",
]

_DTYPES = (torch.float16, torch.float32, torch.float64)


# ------------------------------------------------------------------ tensors


def _check_tensors(op: str, **named):
    """Check that the tensor arguments are float tensors on one device; return the device."""
    device = None
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise TypeError(
                f"{op}: {name} has dtype {t.dtype}; expected torch.float16, torch.float32 or "
                f"torch.float64"
            )
        if t.device.type not in ("cpu", "cuda"):
            raise TypeError(f"{op}: {name} is on device {t.device}; expected cpu or cuda")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(
                f"{op}: all tensors must be on one device, got {name} on {t.device} and "
                f"others on {device}"
            )
    return device


def _to_array(t):
    """A NumPy (CPU) or CuPy (CUDA) array sharing ``t``'s memory (None stays None)."""
    if t is None:
        return None
    t = t.detach()
    if t.device.type == "cuda":
        import cupy

        return cupy.from_dlpack(t)
    return t.numpy()


def _to_tensor(a, dtype=None):
    """A tensor sharing the memory of gpuconv's result ``a`` (None stays None)."""
    if a is None:
        return None
    t = torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


@contextlib.contextmanager
def _device_scope(device):
    """For CUDA tensors: make CuPy use the tensors' device and PyTorch's current stream."""
    if device is None or device.type != "cuda":
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(
        stream.cuda_stream, device.index
    ):
        yield


def _deterministic() -> bool:
    return torch.are_deterministic_algorithms_enabled()


# --------------------------------------------------------- autograd functions


def _save_context(ctx, bias, kwargs, *tensors):
    """Keep what every backward needs: the op's keyword arguments, whether (and in which dtype)
    a bias was given, and the tensors ``tensors``."""
    ctx.kwargs = kwargs
    ctx.has_bias = bias is not None
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(*tensors)


def _weighted_function(name, forward_op, input_grad, weight_grad):
    """An autograd Function for ``forward_op(x, weight, bias, **kwargs)`` whose gradients are
    ``input_grad(x_shape, weight, grad_output, **kwargs)``,
    ``weight_grad(x, weight_shape, grad_output, deterministic=..., **kwargs)`` and
    :func:`gpuconv.grad.conv_bias`; each is computed only when it is needed."""

    def forward(ctx, x, weight, bias, kwargs):
        _save_context(ctx, bias, kwargs, x, weight)
        with _device_scope(x.device):
            return _to_tensor(forward_op(_to_array(x), _to_array(weight), _to_array(bias),
                                         **kwargs))

    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        with _device_scope(x.device):
            g = _to_array(grad_output)
            if ctx.needs_input_grad[0]:
                gx = _to_tensor(input_grad(tuple(x.shape), _to_array(weight), g, **ctx.kwargs),
                                x.dtype)
            if ctx.needs_input_grad[1]:
                gw = _to_tensor(weight_grad(_to_array(x), tuple(weight.shape), g,
                                            deterministic=_deterministic(), **ctx.kwargs),
                                weight.dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = _to_tensor(_grad.conv_bias(g), ctx.bias_dtype)
        return gx, gw, gb, None

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(once_differentiable(backward)),
    })


_ConvFunction = _weighted_function(
    "_ConvFunction", _api.conv, _grad.conv_input, _grad.conv_weight)
_ConvTransposeFunction = _weighted_function(
    "_ConvTransposeFunction", _api.conv_transpose, _grad.conv_transpose_input,
    _grad.conv_transpose_weight)
_DepthwiseFunction = _weighted_function(
    "_DepthwiseFunction", _api.depthwise_conv, _grad.depthwise_conv_input,
    _grad.depthwise_conv_weight)


class _SeparableFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, depthwise_weight, pointwise_weight, bias, kwargs):
        _save_context(ctx, bias, kwargs, x, depthwise_weight, pointwise_weight)
        with _device_scope(x.device):
            return _to_tensor(_api.separable_conv(
                _to_array(x), _to_array(depthwise_weight), _to_array(pointwise_weight),
                _to_array(bias), **kwargs))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x, dw, pw = ctx.saved_tensors
        with _device_scope(x.device):
            grads = _grad.separable_conv(_to_array(x), _to_array(dw), _to_array(pw),
                                         _to_array(grad_output), bias=ctx.has_bias,
                                         **ctx.kwargs)
            return (_to_tensor(grads.input, x.dtype),
                    _to_tensor(grads.depthwise_weight, dw.dtype),
                    _to_tensor(grads.pointwise_weight, pw.dtype),
                    _to_tensor(grads.bias, ctx.bias_dtype), None)


class _DeformFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, offset, weight, bias, mask, kwargs):
        _save_context(ctx, bias, kwargs, x, offset, weight, mask)
        with _device_scope(x.device):
            return _to_tensor(_api.deform_conv2d(
                _to_array(x), _to_array(offset), _to_array(weight), _to_array(bias),
                mask=_to_array(mask), **kwargs))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x, offset, weight, mask = ctx.saved_tensors
        with _device_scope(x.device):
            grads = _grad.deform_conv2d(
                _to_array(x), _to_array(offset), _to_array(weight), _to_array(grad_output),
                mask=_to_array(mask), bias=ctx.has_bias, **ctx.kwargs)
            return (_to_tensor(grads.input, x.dtype), _to_tensor(grads.offset, offset.dtype),
                    _to_tensor(grads.weight, weight.dtype), _to_tensor(grads.bias, ctx.bias_dtype),
                    None if mask is None else _to_tensor(grads.mask, mask.dtype), None)


# ------------------------------------------------------------- functional API


def conv(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
         padding_mode="zeros"):
    """:func:`gpuconv.conv` on tensors, differentiable in ``x``, ``weight`` and ``bias``.

    Arguments and shapes as for :func:`gpuconv.conv`; tensors on one device (CPU or CUDA),
    float16, float32 or float64. Returns a tensor on the same device.

    Examples
    --------
    >>> import torch
    >>> import gpuconv.torch as gt
    >>> x = torch.arange(5.0).reshape(1, 1, 5).requires_grad_()
    >>> y = gt.conv(x, torch.tensor([[[1.0, 0.0, -1.0]]]), padding=1, padding_mode="circular")
    >>> y.detach()
    tensor([[[ 3., -2., -2., -2.,  3.]]])
    >>> y.sum().backward(); x.grad
    tensor([[[0., 0., 0., 0., 0.]]])
    """
    _check_tensors("conv", x=x, weight=weight, bias=bias)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                  padding_mode=padding_mode)
    return _ConvFunction.apply(x, weight, bias, kwargs)


def conv_transpose(x, weight, bias=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                   groups=1):
    """:func:`gpuconv.conv_transpose` on tensors, differentiable in every tensor argument.

    ``padding='same'`` gives ``size * stride`` outputs.

    Examples
    --------
    >>> import torch
    >>> import gpuconv.torch as gt
    >>> gt.conv_transpose(torch.ones(1, 1, 3), torch.ones(1, 1, 3), stride=2,
    ...                   padding="same").shape
    torch.Size([1, 1, 6])
    """
    _check_tensors("conv_transpose", x=x, weight=weight, bias=bias)
    kwargs = dict(stride=stride, padding=padding, output_padding=output_padding,
                  dilation=dilation, groups=groups)
    return _ConvTransposeFunction.apply(x, weight, bias, kwargs)


def depthwise_conv(x, weight, bias=None, *, stride=1, padding=0, dilation=1,
                   padding_mode="zeros"):
    """:func:`gpuconv.depthwise_conv` on tensors, differentiable in every tensor argument.

    Examples
    --------
    >>> import torch
    >>> import gpuconv.torch as gt
    >>> gt.depthwise_conv(torch.ones(1, 2, 4), torch.ones(4, 1, 3), padding="same",
    ...                   padding_mode="replicate").shape
    torch.Size([1, 4, 4])
    """
    _check_tensors("depthwise_conv", x=x, weight=weight, bias=bias)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
    return _DepthwiseFunction.apply(x, weight, bias, kwargs)


def separable_conv(x, depthwise_weight, pointwise_weight, bias=None, *, stride=1, padding=0,
                   dilation=1, padding_mode="zeros"):
    """:func:`gpuconv.separable_conv` on tensors, differentiable in every tensor argument.

    Examples
    --------
    >>> import torch
    >>> import gpuconv.torch as gt
    >>> gt.separable_conv(torch.ones(1, 2, 3), torch.ones(2, 1, 2),
    ...                   torch.tensor([[[1.0], [10.0]]]))
    tensor([[[22., 22.]]])
    """
    _check_tensors("separable_conv", x=x, depthwise_weight=depthwise_weight,
                   pointwise_weight=pointwise_weight, bias=bias)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
    return _SeparableFunction.apply(x, depthwise_weight, pointwise_weight, bias, kwargs)


def deform_conv2d(x, offset, weight, bias=None, *, stride=1, padding=0, dilation=1, mask=None):
    """:func:`gpuconv.deform_conv2d` on tensors, differentiable in every tensor argument
    (``x``, ``offset``, ``weight``, ``bias``, ``mask``); torchvision's semantics.

    Examples
    --------
    >>> import torch
    >>> import gpuconv.torch as gt
    >>> x = torch.arange(4.0).reshape(1, 1, 1, 4)
    >>> shift = torch.zeros(1, 2, 1, 4)
    >>> shift[:, 1] = 0.5                                # half a pixel to the right
    >>> gt.deform_conv2d(x, shift, torch.ones(1, 1, 1, 1))
    tensor([[[[0.5000, 1.5000, 2.5000, 1.5000]]]])
    """
    _check_tensors("deform_conv2d", x=x, offset=offset, weight=weight, bias=bias, mask=mask)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    return _DeformFunction.apply(x, offset, weight, bias, mask, kwargs)


# ------------------------------------------------------------------- modules


def _factory(device, dtype):
    return {"device": device, "dtype": dtype}


def _positive_channels(name: str, value) -> int:
    value = _shapes._as_int(value, name)
    if value < 1:
        raise ValueError(f"{name}={value} must be a positive int")
    return value


def _init_uniform(tensor, fan_in: int):
    """PyTorch's default init for conv layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the
    bias, and kaiming_uniform(a=sqrt(5)) for weights, which reduces to the same bound."""
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
    nn.init.uniform_(tensor, -bound, bound)


class _Layer(nn.Module):
    """Shared by the layers: rank checking (with unbatched inputs), channel and padding_mode
    validation, weight creation and initialization, and the repr."""

    _ndim: int
    _op: str

    def _batched(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self._op}: input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == self._ndim + 1:
            return x.unsqueeze(0), True
        if x.dim() != self._ndim + 2:
            raise ValueError(
                f"{self._op}: input must have {self._ndim + 2} dims (N, C, {self._ndim} spatial) "
                f"or {self._ndim + 1} (unbatched), got shape {tuple(x.shape)}"
            )
        return x, False

    def _run(self, x, func, *args, **kwargs):
        x, unbatched = self._batched(x)
        y = func(x, *args, **kwargs)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self._repr_items())

    def _repr_items(self):
        return []

    def _set_channels(self, in_channels, out_channels, groups):
        """Set ``in_channels``, ``out_channels`` and ``groups`` (positive ints, ``groups``
        dividing both)."""
        self.in_channels = _positive_channels("in_channels", in_channels)
        self.out_channels = _positive_channels("out_channels", out_channels)
        self.groups = _positive_channels("groups", groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"{self._op}: groups={self.groups} must divide in_channels={self.in_channels} "
                f"and out_channels={self.out_channels}"
            )

    def _set_padding_mode(self, padding_mode):
        if padding_mode not in _shapes.PADDING_MODES:
            raise ValueError(
                f"{self._op}: padding_mode={padding_mode!r} must be one of {_shapes.PADDING_MODES}"
            )
        self.padding_mode = padding_mode

    def _set_weight(self, weight_shape, bias, out_channels, device, dtype):
        """Create ``weight`` of ``weight_shape`` and, if ``bias``, a bias of ``out_channels``
        values; then initialize them."""
        f = _factory(device, dtype)
        self.weight = nn.Parameter(torch.empty(weight_shape, **f))
        self.bias = nn.Parameter(torch.empty(out_channels, **f)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # fan_in = weight[0].numel(), for transposed weights too, as PyTorch computes it
        fan_in = self.weight[0].numel()
        _init_uniform(self.weight, fan_in)
        if self.bias is not None:
            _init_uniform(self.bias, fan_in)


class _ConvNd(_Layer):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        self._set_channels(in_channels, out_channels, groups)
        self._set_padding_mode(padding_mode)
        self.kernel_size = _shapes.positive_tuple(kernel_size, self._ndim, "kernel_size")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self._set_weight((self.out_channels, self.in_channels // self.groups, *self.kernel_size),
                         bias, self.out_channels, device, dtype)

    def forward(self, x):
        return self._run(x, conv, self.weight, self.bias, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, groups=self.groups,
                         padding_mode=self.padding_mode)

    def _repr_items(self):
        return [("in_channels", self.in_channels), ("out_channels", self.out_channels),
                ("kernel_size", self.kernel_size), ("stride", self.stride),
                ("padding", self.padding), ("dilation", self.dilation), ("groups", self.groups),
                ("bias", self.bias is not None), ("padding_mode", self.padding_mode)]


class Conv1d(_ConvNd):
    """1-D convolution layer, ``torch.nn.Conv1d``'s arguments, computed by gpuconv.

    Beyond ``torch.nn.Conv1d``: ``padding='same'`` with any stride, ``((lo, hi),)`` padding.
    """

    _ndim, _op = 1, "Conv1d"


class Conv2d(_ConvNd):
    """2-D convolution layer, ``torch.nn.Conv2d``'s arguments, computed by gpuconv.

    Beyond ``torch.nn.Conv2d``: ``padding='same'`` with any stride, ``((lo, hi), ...)``
    padding.
    """

    _ndim, _op = 2, "Conv2d"


class Conv3d(_ConvNd):
    """3-D convolution layer, ``torch.nn.Conv3d``'s arguments, computed by gpuconv.

    Beyond ``torch.nn.Conv3d``: every ``padding_mode`` (reflect included) in 3-D,
    ``padding='same'`` with any stride, ``((lo, hi), ...)`` padding.
    """

    _ndim, _op = 3, "Conv3d"


class _ConvTransposeNd(_Layer):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None):
        super().__init__()
        self._set_channels(in_channels, out_channels, groups)
        if padding_mode != "zeros":
            raise ValueError(
                f"{self._op}: padding_mode={padding_mode!r} must be 'zeros' for a transposed "
                f"convolution"
            )
        self.kernel_size = _shapes.positive_tuple(kernel_size, self._ndim, "kernel_size")
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.dilation, self.padding_mode = dilation, padding_mode
        self._set_weight((self.in_channels, self.out_channels // self.groups, *self.kernel_size),
                         bias, self.out_channels, device, dtype)

    def forward(self, x):
        return self._run(x, conv_transpose, self.weight, self.bias, stride=self.stride,
                         padding=self.padding, output_padding=self.output_padding,
                         dilation=self.dilation, groups=self.groups)

    def _repr_items(self):
        return [("in_channels", self.in_channels), ("out_channels", self.out_channels),
                ("kernel_size", self.kernel_size), ("stride", self.stride),
                ("padding", self.padding), ("output_padding", self.output_padding),
                ("dilation", self.dilation), ("groups", self.groups),
                ("bias", self.bias is not None)]


class ConvTranspose1d(_ConvTransposeNd):
    """1-D transposed convolution layer (``torch.nn.ConvTranspose1d``'s arguments, without
    ``output_size`` in ``forward``); also ``padding='same'`` (``size * stride`` outputs)."""

    _ndim, _op = 1, "ConvTranspose1d"


class ConvTranspose2d(_ConvTransposeNd):
    """2-D transposed convolution layer (``torch.nn.ConvTranspose2d``'s arguments, without
    ``output_size`` in ``forward``); also ``padding='same'`` (``size * stride`` outputs)."""

    _ndim, _op = 2, "ConvTranspose2d"


class ConvTranspose3d(_ConvTransposeNd):
    """3-D transposed convolution layer (``torch.nn.ConvTranspose3d``'s arguments, without
    ``output_size`` in ``forward``); also ``padding='same'`` (``size * stride`` outputs)."""

    _ndim, _op = 3, "ConvTranspose3d"


class _DepthwiseConvNd(_Layer):
    def __init__(self, channels, kernel_size, multiplier=1, stride=1, padding=0, dilation=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        self.channels = _positive_channels("channels", channels)
        self.multiplier = _positive_channels("multiplier", multiplier)
        self._set_padding_mode(padding_mode)
        self.kernel_size = _shapes.positive_tuple(kernel_size, self._ndim, "kernel_size")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        out = self.channels * self.multiplier
        self._set_weight((out, 1, *self.kernel_size), bias, out, device, dtype)

    def forward(self, x):
        return self._run(x, depthwise_conv, self.weight, self.bias, stride=self.stride,
                         padding=self.padding, dilation=self.dilation,
                         padding_mode=self.padding_mode)

    def _repr_items(self):
        return [("channels", self.channels), ("kernel_size", self.kernel_size),
                ("multiplier", self.multiplier), ("stride", self.stride),
                ("padding", self.padding), ("dilation", self.dilation),
                ("bias", self.bias is not None), ("padding_mode", self.padding_mode)]


class DepthwiseConv1d(_DepthwiseConvNd):
    """1-D depthwise convolution: ``channels * multiplier`` outputs, output ``c * multiplier +
    m`` filtering input channel ``c`` (``nn.Conv1d(groups=channels)``, by a dedicated path)."""

    _ndim, _op = 1, "DepthwiseConv1d"


class DepthwiseConv2d(_DepthwiseConvNd):
    """2-D depthwise convolution (see :class:`DepthwiseConv1d`)."""

    _ndim, _op = 2, "DepthwiseConv2d"


class DepthwiseConv3d(_DepthwiseConvNd):
    """3-D depthwise convolution (see :class:`DepthwiseConv1d`)."""

    _ndim, _op = 3, "DepthwiseConv3d"


class _SeparableConvNd(_Layer):
    def __init__(self, in_channels, out_channels, kernel_size, multiplier=1, stride=1, padding=0,
                 dilation=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        self.in_channels = _positive_channels("in_channels", in_channels)
        self.out_channels = _positive_channels("out_channels", out_channels)
        self.multiplier = _positive_channels("multiplier", multiplier)
        self._set_padding_mode(padding_mode)
        self.kernel_size = _shapes.positive_tuple(kernel_size, self._ndim, "kernel_size")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        f = _factory(device, dtype)
        mid = self.in_channels * self.multiplier
        self.depthwise_weight = nn.Parameter(torch.empty((mid, 1, *self.kernel_size), **f))
        self.pointwise_weight = nn.Parameter(
            torch.empty((self.out_channels, mid, *(1,) * self._ndim), **f))
        self.bias = nn.Parameter(torch.empty(self.out_channels, **f)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        _init_uniform(self.depthwise_weight, self.depthwise_weight[0].numel())
        fan_in = self.pointwise_weight[0].numel()
        _init_uniform(self.pointwise_weight, fan_in)
        if self.bias is not None:
            _init_uniform(self.bias, fan_in)

    def forward(self, x):
        return self._run(x, separable_conv, self.depthwise_weight, self.pointwise_weight,
                         self.bias, stride=self.stride, padding=self.padding,
                         dilation=self.dilation, padding_mode=self.padding_mode)

    def _repr_items(self):
        return [("in_channels", self.in_channels), ("out_channels", self.out_channels),
                ("kernel_size", self.kernel_size), ("multiplier", self.multiplier),
                ("stride", self.stride), ("padding", self.padding), ("dilation", self.dilation),
                ("bias", self.bias is not None), ("padding_mode", self.padding_mode)]


class SeparableConv1d(_SeparableConvNd):
    """1-D depthwise-separable convolution: a depthwise convolution (``multiplier`` filters
    per input channel, carrying stride/padding/dilation), then a 1x1 convolution to
    ``out_channels`` with the bias."""

    _ndim, _op = 1, "SeparableConv1d"


class SeparableConv2d(_SeparableConvNd):
    """2-D depthwise-separable convolution (see :class:`SeparableConv1d`)."""

    _ndim, _op = 2, "SeparableConv2d"


class SeparableConv3d(_SeparableConvNd):
    """3-D depthwise-separable convolution (see :class:`SeparableConv1d`)."""

    _ndim, _op = 3, "SeparableConv3d"


class DeformConv2d(_Layer):
    """Deformable 2-D convolution layer, ``torchvision.ops.DeformConv2d``'s arguments;
    ``forward(input, offset, mask=None)``. ``padding`` may also be ((lo, hi), (lo, hi))."""

    _ndim, _op = 2, "DeformConv2d"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, device=None, dtype=None):
        super().__init__()
        self._set_channels(in_channels, out_channels, groups)
        self.kernel_size = _shapes.positive_tuple(kernel_size, 2, "kernel_size")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self._set_weight((self.out_channels, self.in_channels // self.groups, *self.kernel_size),
                         bias, self.out_channels, device, dtype)

    def forward(self, x, offset, mask=None):
        x, unbatched = self._batched(x)
        if unbatched:
            offset = offset.unsqueeze(0)
            mask = None if mask is None else mask.unsqueeze(0)
        y = deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride,
                          padding=self.padding, dilation=self.dilation, mask=mask)
        return y.squeeze(0) if unbatched else y

    def _repr_items(self):
        return [("in_channels", self.in_channels), ("out_channels", self.out_channels),
                ("kernel_size", self.kernel_size), ("stride", self.stride),
                ("padding", self.padding), ("dilation", self.dilation), ("groups", self.groups),
                ("bias", self.bias is not None)]
