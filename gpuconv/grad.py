"""Gradients of every convolution, in the style of ``torch.nn.grad``.

For a forward call ``y = op(x, weight, ...)`` and the gradient ``grad_output`` of a scalar
loss with respect to ``y``, ``op_input`` returns the gradient with respect to ``x`` and
``op_weight`` the gradient with respect to ``weight``; ``conv_bias`` the gradient with respect
to a bias (the same for every op). :func:`deform_conv2d` and :func:`separable_conv` return
every gradient of one call at once, as a named tuple.

The forward's arguments are accepted and validated exactly as by the forward functions, with
shapes (``input_shape``, ``weight_shape``) in place of the array that is not needed, and
``grad_output`` checked against the forward output's shape. Every padding form and
``padding_mode`` is supported: gradients that reached padded cells fold back onto the input
cells that supplied them (a reflect/replicate/circular pad's adjoint).

NumPy arrays in give NumPy arrays out, CuPy arrays in give CuPy arrays out; the result has
dtype ``numpy.result_type`` of the array arguments (bfloat16 with float16 gives float32:
:func:`gpuconv._dtypes.result_type`), and float16 and bfloat16 are accumulated in float32.
Every backend computes every gradient: NumPy (``backends/numpy_grad.py``, the reference) and
the device backends (``backends/device/``, each in its operation's module: the forward kernels
for input gradients, gradient kernels for weights, the padding fold and deformable sampling).
``deterministic=True`` makes the device weight gradients bitwise reproducible (no
floating-point atomics); the deformable input gradient always scatters with atomics on the
device backends.

Examples
--------
>>> import numpy as np
>>> from gpuconv import grad
>>> w = np.array([[[1.0, 2.0]]])                 # conv weight (C_out, C_in, k)
>>> g = np.array([[[1.0, 10.0, 100.0]]])        # gradient of conv(x, w) for x of length 4
>>> grad.conv_input((1, 1, 4), w, g)
array([[[  1.,  12., 120., 200.]]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import _algorithms, _api, _layout, _validate
from ._dispatch import caller_xp
from ._dtypes import accumulation_dtype
from ._validate import Array, IntOrTuple, Padding
from .backends._contract import Backend

__all__ = [
    "DeformConvGrads",
    "SeparableConvGrads",
    "conv_bias",
    "conv_input",
    "conv_transpose_input",
    "conv_transpose_weight",
    "conv_weight",
    "deform_conv2d",
    "depthwise_conv_input",
    "depthwise_conv_weight",
    "separable_conv",
]


class DeformConvGrads(NamedTuple):
    """Gradients of one :func:`gpuconv.deform_conv2d` call (``None`` where not applicable)."""

    input: Array
    offset: Array
    weight: Array
    mask: Array | None
    bias: Array | None


class SeparableConvGrads(NamedTuple):
    """Gradients of one :func:`gpuconv.separable_conv` call (``bias`` None without one)."""

    input: Array
    depthwise_weight: Array
    pointwise_weight: Array
    bias: Array | None


# ------------------------------------------------------------------ helpers


def _weight_channels(w_shape, geom) -> int:
    """Output channels of a conv or depthwise_conv: ``weight.shape[0]``."""
    return w_shape[0]


def _transpose_channels(w_shape, geom) -> int:
    """Output channels of a conv_transpose: ``weight.shape[1] * groups``."""
    return w_shape[1] * geom.groups


#: Picks the backend method a gradient calls: ``lambda backend: backend.conv_input_grad``.
MethodOf = Callable[[Backend], Callable[..., Any]]


def _input_grad(op: str, setup: Callable[..., Any], out_channels: Callable[..., int],
                method: MethodOf, operation: str, input_shape, weight, grad_output, **forward):
    """The body of every ``*_input`` gradient: validate the arguments as the forward's
    ``setup`` does (``input_shape`` standing for ``x``), check ``grad_output`` against the
    forward output's shape (``out_channels(weight.shape, geom)`` channels) and call the
    backend method that ``method(backend)`` names, as ``(weight, grad_output, geom)``, after
    :func:`gpuconv._algorithms.check_forced` for ``operation`` (what the device backends
    select an algorithm of: ``"conv_transpose"`` or ``"conv"``)."""
    op = f"grad.{op}"  # messages name the public function
    arrays, input_shape, geom = _validate.input_grad_setup(op, setup, out_channels, input_shape,
                                                           weight, grad_output, **forward)
    # the input gradient takes grad_output's format (channels-last in, channels-last out)
    arrays.output_format = _layout.memory_format(grad_output)
    if input_shape[0] == 0 or 0 in geom.in_size:
        return _validate.empty_result(arrays, input_shape, None)

    def compute(backend, g):
        _algorithms.check_forced(op, backend, operation, grad_output.shape, weight.shape,
                                 arrays.dtype, g)
        return method(backend)(arrays.prepare(weight), arrays.prepare(grad_output), g)

    return _validate.finish(arrays, arrays.run(geom, compute), None)


def _weight_grad(op: str, setup: Callable[..., Any], out_channels: Callable[..., int],
                 method: MethodOf, x, weight_shape, grad_output, deterministic, **forward):
    """The body of every ``*_weight`` gradient, as :func:`_input_grad` with ``weight_shape``
    standing for ``weight``; the backend method is called as
    ``(x, grad_output, geom, deterministic)``, after
    :func:`gpuconv._algorithms.check_forced` for ``"conv_weight"``."""
    op = f"grad.{op}"  # messages name the public function
    arrays, weight_shape, deterministic, geom = _validate.weight_grad_setup(
        op, setup, out_channels, x, weight_shape, grad_output, deterministic, **forward)
    if x.shape[0] == 0 or 0 in geom.in_size:
        return _validate.empty_result(arrays, weight_shape, None)

    def compute(backend, g):
        _algorithms.check_forced(op, backend, "conv_weight", x.shape, weight_shape,
                                 arrays.dtype, g)
        return method(backend)(arrays.prepare(x), arrays.prepare(grad_output), g,
                               deterministic)

    return arrays.call.from_backend(arrays.run(geom, compute))


# --------------------------------------------------------------------- conv


def conv_input(input_shape: Sequence[int], weight: Array, grad_output: Array, *,
               stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
               groups: int = 1, padding_mode: str = "zeros") -> Array:
    """Gradient of :func:`gpuconv.conv` with respect to its input ``x``.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of the forward's ``x``, (N, C_in, *spatial).
    weight : ndarray, shape (C_out, C_in // groups, *kernel)
    grad_output : ndarray, shape (N, C_out, *out_spatial)
        Gradient of the loss with respect to the forward's output.
    stride, padding, dilation, groups, padding_mode
        The forward's arguments (see :func:`gpuconv.conv`).

    Returns
    -------
    ndarray, shape ``input_shape``
        dtype ``numpy.result_type(weight, grad_output)``, same array type as the inputs.

    Raises
    ------
    TypeError
        Non-array inputs, unsupported dtypes, NumPy mixed with CuPy, non-int shapes.
    ValueError
        Arguments the forward would reject, or ``grad_output`` not of the forward output's
        shape for ``input_shape``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpuconv import grad
    >>> w = np.ones((1, 1, 3))
    >>> g = np.array([[[1.0, 10.0, 100.0]]])
    >>> grad.conv_input((1, 1, 3), w, g, padding=1, padding_mode="replicate")  # x0 read twice
    array([[[ 12., 111., 210.]]])
    """
    return _input_grad("conv_input", _validate.conv_setup, _weight_channels,
                       lambda backend: backend.conv_input_grad, "conv_transpose",
                       input_shape, weight,
                       grad_output, stride=stride, padding=padding, dilation=dilation,
                       groups=groups, padding_mode=padding_mode)


def conv_weight(x: Array, weight_shape: Sequence[int], grad_output: Array, *,
                stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
                groups: int = 1, padding_mode: str = "zeros", deterministic: bool = False) -> Array:
    """Gradient of :func:`gpuconv.conv` with respect to its ``weight``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, *spatial)
        The forward's input.
    weight_shape : tuple of int
        Shape of the forward's weight, (C_out, C_in // groups, *kernel).
    grad_output : ndarray, shape (N, C_out, *out_spatial)
    stride, padding, dilation, groups, padding_mode
        The forward's arguments (see :func:`gpuconv.conv`).
    deterministic : bool
        Ask the device backends for a bitwise-reproducible reduction (no atomics). The
        NumPy backend is always deterministic.

    Returns
    -------
    ndarray, shape ``weight_shape``
        dtype ``numpy.result_type(x, grad_output)``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv_input`, with ``weight_shape`` in place of ``input_shape``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpuconv import grad
    >>> x = np.array([[[1.0, 2.0, 3.0]]])
    >>> grad.conv_weight(x, (1, 1, 2), np.array([[[1.0, -1.0]]]))
    array([[[-1., -1.]]])
    """
    return _weight_grad("conv_weight", _validate.conv_setup, _weight_channels,
                        lambda backend: backend.conv_weight_grad, x, weight_shape,
                        grad_output, deterministic, stride=stride, padding=padding,
                        dilation=dilation, groups=groups, padding_mode=padding_mode)


def conv_bias(grad_output: Array) -> Array:
    """Gradient with respect to the ``bias`` of any convolution: ``grad_output`` summed over
    every axis but the channel axis (1).

    Parameters
    ----------
    grad_output : ndarray, shape (N, C_out, *out_spatial)

    Returns
    -------
    ndarray, shape (C_out,)
        Same dtype; float16 and bfloat16 are summed in float32.

    Raises
    ------
    TypeError
        A non-array or unsupported dtype.
    ValueError
        Fewer than 2 dims.

    Examples
    --------
    >>> import numpy as np
    >>> from gpuconv import grad
    >>> grad.conv_bias(np.ones((2, 3, 4)))
    array([8., 8., 8.])
    """
    op = "grad.conv_bias"
    arrays = _validate.Arrays(op, grad_output=grad_output)
    if grad_output.ndim < 2:
        raise ValueError(
            f"{op}: grad_output must have shape (N, C_out, *spatial), got shape "
            f"{tuple(grad_output.shape)}"
        )
    xp = caller_xp([grad_output])
    axes = (0,) + tuple(range(2, grad_output.ndim))
    acc = accumulation_dtype(arrays.dtype)
    return xp.sum(grad_output, axis=axes, dtype=acc).astype(arrays.dtype, copy=False)


# ------------------------------------------------------------ conv_transpose


def conv_transpose_input(input_shape: Sequence[int], weight: Array, grad_output: Array, *,
                         stride: IntOrTuple = 1, padding: Padding = 0,
                         output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                         groups: int = 1) -> Array:
    """Gradient of :func:`gpuconv.conv_transpose` with respect to its input ``x``.

    This is a :func:`gpuconv.conv` of ``grad_output`` with the same weight.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of the forward's ``x``, (N, C_in, *spatial).
    weight : ndarray, shape (C_in, C_out // groups, *kernel)
    grad_output : ndarray, shape (N, C_out, *out_spatial)
    stride, padding, output_padding, dilation, groups
        The forward's arguments (see :func:`gpuconv.conv_transpose`).

    Returns
    -------
    ndarray, shape ``input_shape``

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv_input`.

    Examples
    --------
    >>> import numpy as np
    >>> from gpuconv import grad
    >>> w = np.array([[[1.0, 1.0, 1.0]]])
    >>> grad.conv_transpose_input((1, 1, 2), w, np.array([[[1.0, 2.0, 3.0, 4.0, 5.0]]]),
    ...                           stride=2)
    array([[[ 6., 12.]]])
    """
    return _input_grad("conv_transpose_input", _validate.conv_transpose_setup,
                       _transpose_channels, lambda backend: backend.conv_transpose_input_grad,
                       "conv", input_shape, weight, grad_output, stride=stride, padding=padding,
                       output_padding=output_padding, dilation=dilation, groups=groups)


def conv_transpose_weight(x: Array, weight_shape: Sequence[int], grad_output: Array, *,
                          stride: IntOrTuple = 1, padding: Padding = 0,
                          output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1,
                          deterministic: bool = False) -> Array:
    """Gradient of :func:`gpuconv.conv_transpose` with respect to its ``weight``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, *spatial)
    weight_shape : tuple of int
        (C_in, C_out // groups, *kernel).
    grad_output : ndarray, shape (N, C_out, *out_spatial)
    stride, padding, output_padding, dilation, groups
        The forward's arguments.
    deterministic : bool
        See :func:`conv_weight`.

    Returns
    -------
    ndarray, shape ``weight_shape``

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv_weight`.

    Examples
    --------
    >>> import numpy as np
    >>> from gpuconv import grad
    >>> x = np.array([[[1.0, 2.0]]])
    >>> grad.conv_transpose_weight(x, (1, 1, 3), np.array([[[1.0, 0.0, 0.0, 0.0, 1.0]]]),
    ...                            stride=2)
    array([[[1., 0., 2.]]])
    """
    return _weight_grad("conv_transpose_weight", _validate.conv_transpose_setup,
                        _transpose_channels, lambda backend: backend.conv_transpose_weight_grad,
                        x, weight_shape, grad_output, deterministic, stride=stride,
                        padding=padding, output_padding=output_padding, dilation=dilation,
                        groups=groups)


# ---------------------------------------------------------------- depthwise


def depthwise_conv_input(input_shape: Sequence[int], weight: Array, grad_output: Array, *,
                         stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
                         padding_mode: str = "zeros") -> Array:
    """Gradient of :func:`gpuconv.depthwise_conv` with respect to its input ``x``.

    Parameters
    ----------
    input_shape : tuple of int
        (N, C_in, *spatial).
    weight : ndarray, shape (C_in * multiplier, 1, *kernel)
    grad_output : ndarray, shape (N, C_in * multiplier, *out_spatial)
    stride, padding, dilation, padding_mode
        The forward's arguments.

    Returns
    -------
    ndarray, shape ``input_shape``

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv_input`.

    Examples
    --------
    >>> import numpy as np
    >>> from gpuconv import grad
    >>> w = np.array([[[1.0, 1.0]], [[2.0, -1.0]]])     # one channel, multiplier 2
    >>> grad.depthwise_conv_input((1, 1, 3), w, np.ones((1, 2, 2)))
    array([[[3., 3., 0.]]])
    """
    return _input_grad("depthwise_conv_input", _validate.depthwise_setup, _weight_channels,
                       lambda backend: backend.depthwise_conv_input_grad, "conv_transpose",
                       input_shape, weight, grad_output, stride=stride, padding=padding,
                       dilation=dilation, padding_mode=padding_mode)


def depthwise_conv_weight(x: Array, weight_shape: Sequence[int], grad_output: Array, *,
                          stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
                          padding_mode: str = "zeros", deterministic: bool = False) -> Array:
    """Gradient of :func:`gpuconv.depthwise_conv` with respect to its ``weight``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, *spatial)
    weight_shape : tuple of int
        (C_in * multiplier, 1, *kernel).
    grad_output : ndarray, shape (N, C_in * multiplier, *out_spatial)
    stride, padding, dilation, padding_mode
        The forward's arguments.
    deterministic : bool
        See :func:`conv_weight`.

    Returns
    -------
    ndarray, shape ``weight_shape``

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv_weight`.

    Examples
    --------
    >>> import numpy as np
    >>> from gpuconv import grad
    >>> x = np.array([[[1.0, 2.0, 3.0]]])
    >>> grad.depthwise_conv_weight(x, (1, 1, 2), np.array([[[1.0, 1.0]]]))
    array([[[3., 5.]]])
    """
    return _weight_grad("depthwise_conv_weight", _validate.depthwise_setup, _weight_channels,
                        lambda backend: backend.depthwise_conv_weight_grad, x,
                        weight_shape, grad_output, deterministic, stride=stride,
                        padding=padding, dilation=dilation, padding_mode=padding_mode)


# ---------------------------------------------------------------- separable


def separable_conv(x: Array, depthwise_weight: Array, pointwise_weight: Array, grad_output: Array,
                   *, stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
                   padding_mode: str = "zeros", bias: bool = True) -> SeparableConvGrads:
    """Every gradient of one :func:`gpuconv.separable_conv` call.

    The composition of the two steps' gradients: the depthwise result ``mid`` is recomputed,
    then ``grad_mid = conv_input(mid.shape, pointwise_weight, grad_output)`` and
    ``pointwise = conv_weight(mid, ..., grad_output)``, and the depthwise gradients follow
    from ``grad_mid``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, *spatial)
    depthwise_weight : ndarray, shape (C_in * multiplier, 1, *kernel)
    pointwise_weight : ndarray, shape (C_out, C_in * multiplier, 1, ...)
    grad_output : ndarray, shape (N, C_out, *out_spatial)
    stride, padding, dilation, padding_mode
        The forward's arguments (applied to the depthwise step).
    bias : bool
        Whether the forward had a bias (its gradient is returned, else None).

    Returns
    -------
    SeparableConvGrads
        Named tuple ``(input, depthwise_weight, pointwise_weight, bias)``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`gpuconv.separable_conv`, or a ``grad_output`` of the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> from gpuconv import grad
    >>> grads = grad.separable_conv(np.ones((1, 1, 3)), np.ones((1, 1, 2)),
    ...                             np.full((1, 1, 1), 2.0), np.ones((1, 1, 2)))
    >>> grads.input, grads.bias
    (array([[[2., 4., 2.]]]), array([2.]))
    """
    op = "grad.separable_conv"
    arrays = _validate.Arrays(op, x=x, depthwise_weight=depthwise_weight,
                              pointwise_weight=pointwise_weight, grad_output=grad_output)
    bias = _validate.check_flag(op, "bias", bias)
    geom = _validate.depthwise_setup(op, x.shape, depthwise_weight.shape, stride=stride,
                                     padding=padding, dilation=dilation,
                                     padding_mode=padding_mode, w_name="depthwise_weight")
    c_out = _validate.check_pointwise_weight(op, pointwise_weight.shape, x.ndim,
                                             depthwise_weight.shape[0], c_out_in_message=True)
    expected = (x.shape[0], c_out, *geom.out_size)
    _validate.check_grad_output(op, grad_output, expected,
                                f"x shape {tuple(x.shape)} and these weights")
    dtype = arrays.dtype
    x, depthwise_weight, pointwise_weight, grad_output = (
        a.astype(dtype, copy=False) for a in (x, depthwise_weight, pointwise_weight, grad_output))
    forward = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
    mid = _api.depthwise_conv(x, depthwise_weight, **forward)
    grad_mid = conv_input(mid.shape, pointwise_weight, grad_output)
    grad_x = depthwise_conv_input(x.shape, depthwise_weight, grad_mid, **forward)
    return SeparableConvGrads(
        input=_layout.to_output_format(grad_x, _layout.memory_format(x), caller_xp([grad_x])),
        depthwise_weight=depthwise_conv_weight(x, depthwise_weight.shape, grad_mid, **forward),
        pointwise_weight=conv_weight(mid, pointwise_weight.shape, grad_output),
        bias=conv_bias(grad_output) if bias else None,
    )


# --------------------------------------------------------------- deformable


def deform_conv2d(x: Array, offset: Array, weight: Array, grad_output: Array, *,
                  stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
                  mask: Array | None = None, bias: bool = True) -> DeformConvGrads:
    """Every gradient of one :func:`gpuconv.deform_conv2d` call.

    Definitions are torchvision's: each kernel tap samples the input bilinearly at its
    offset position, reading zero outside the image; a sample at ``y <= -1``, ``y >= H``,
    ``x <= -1`` or ``x >= W`` contributes nothing, so all its gradients are zero. The offset
    gradient differentiates the bilinear weights (taking the cell that ``floor`` picks at an
    integer position).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    offset : ndarray, shape (N, 2 * offset_groups * kh * kw, H_out, W_out)
    weight : ndarray, shape (C_out, C_in // groups, kh, kw)
    grad_output : ndarray, shape (N, C_out, H_out, W_out)
    stride, padding, dilation, mask
        The forward's arguments (see :func:`gpuconv.deform_conv2d`).
    bias : bool
        Whether the forward had a bias (its gradient is returned, else None).

    Returns
    -------
    DeformConvGrads
        Named tuple ``(input, offset, weight, mask, bias)``, each of its argument's shape;
        ``mask`` is None when no mask was given, ``bias`` None when ``bias=False``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`gpuconv.deform_conv2d`, or a ``grad_output`` of the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> from gpuconv import grad
    >>> x = np.array([[[[0.0, 10.0]]]])                    # one row, two columns
    >>> shift = np.zeros((1, 2, 1, 2))
    >>> shift[:, 1] = 0.25                                  # sample columns 0.25 and 1.25
    >>> grads = grad.deform_conv2d(x, shift, np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 2)))
    >>> grads.input                                         # bilinear weights, summed
    array([[[[0.75, 1.  ]]]])
    >>> grads.offset[:, 1]                                  # d/dx: column 2 reads zero
    array([[[ 10., -10.]]])
    """
    op = "grad.deform_conv2d"
    arrays = _validate.Arrays(op, optional=("mask",), x=x, offset=offset, weight=weight,
                              mask=mask, grad_output=grad_output)
    bias = _validate.check_flag(op, "bias", bias)
    geom, offset_groups = _validate.deform_setup(
        op, x.shape, offset.shape, weight.shape, None if mask is None else mask.shape,
        stride=stride, padding=padding, dilation=dilation,
    )
    expected = (x.shape[0], weight.shape[0], *geom.out_size)
    _validate.check_grad_output(
        op, grad_output, expected,
        f"x shape {tuple(x.shape)} and weight shape {tuple(weight.shape)}")
    bias_grad = conv_bias(grad_output) if bias else None
    if x.shape[0] == 0 or 0 in geom.in_size:
        xp = arrays.call.xp

        def zeros(a):
            return None if a is None else arrays.call.from_backend(
                xp.zeros(a.shape, dtype=arrays.dtype))

        return DeformConvGrads(zeros(x), zeros(offset), zeros(weight), zeros(mask), bias_grad)
    results = arrays.run(geom, lambda backend, g: backend.deform_conv2d_grad(
        arrays.prepare(x), arrays.prepare(offset), arrays.prepare(weight),
        arrays.prepare(mask), arrays.prepare(grad_output), g, offset_groups))
    grad_x, grad_offset, grad_weight, grad_mask = (
        None if r is None else arrays.call.from_backend(r) for r in results)
    grad_x = _layout.to_output_format(grad_x, _layout.memory_format(x), caller_xp([grad_x]))
    return DeformConvGrads(grad_x, grad_offset, grad_weight, grad_mask, bias_grad)
