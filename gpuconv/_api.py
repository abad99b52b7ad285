"""The public forward functions: validate every argument, then hand the call to one backend.

Each function follows the same three steps:

1. :class:`gpuconv._validate.Arrays` checks that the array arguments are arrays of one kind
   (NumPy or CuPy) with a supported dtype, computes the result dtype
   (:func:`gpuconv._dtypes.result_type`, ``numpy.result_type`` extended to bfloat16) and
   picks the backend (:class:`gpuconv._dispatch.Call`).
2. A ``gpuconv._validate`` setup function checks shapes, channels and groups, and
   ``gpuconv._shapes`` resolves stride/padding/dilation into a ``ConvGeometry``; anything
   inconsistent raises before any work is done.
3. :func:`_forward` checks ``bias`` and ``out``; the backend computes (nothing for an empty
   call) through :meth:`gpuconv._validate.Arrays.run`, and the result is written into
   ``out=`` when given.

All checking lives in :mod:`gpuconv._validate`, shared with ``gpuconv.grad``.
"""

from __future__ import annotations

from numpy.typing import ArrayLike

from . import _algorithms, _layout, _shapes, _validate
from ._validate import Array, Arrays, IntOrTuple, Padding


def _forward(arrays: Arrays, geom, n: int, c_out: int, bias, out, compute, x):
    """The last steps of every forward function: check ``bias`` and ``out`` against the
    output shape ``(n, c_out, *geom.out_size)``; then the bias (or zeros) without backend
    work for an empty input, else ``compute(backend, geometry)``'s result (written into
    ``out`` when given), run by :meth:`gpuconv._validate.Arrays.run`. The result comes back
    in ``x``'s format: channels-last when ``x`` is (docs/layouts.md)."""
    op = arrays.op
    arrays.output_format = _layout.memory_format(x)
    _validate.check_bias(op, bias, c_out)
    shape = (n, c_out, *geom.out_size)
    _validate.check_out(op, out, shape, arrays.dtype, arrays)
    if n == 0 or 0 in geom.in_size:
        return _validate.empty_result(arrays, shape, out, bias)
    return _validate.finish(arrays, arrays.run(geom, compute), out)


# --------------------------------------------------------------------------- conv


def _conv(op, spatial_ndim, x, weight, bias, stride, padding, dilation, groups,
          padding_mode, out):
    """The body of :func:`conv` and :func:`conv1d`/``2d``/``3d``: ``op`` names the public
    function in messages, ``spatial_ndim`` (None for ``conv``) is the required rank."""
    arrays = Arrays(op, optional=("bias",), x=x, weight=weight, bias=bias)
    geom = _validate.conv_setup(op, x.shape, weight.shape, spatial_ndim=spatial_ndim,
                                stride=stride, padding=padding, dilation=dilation,
                                groups=groups, padding_mode=padding_mode)
    return _forward(arrays, geom, x.shape[0], weight.shape[0], bias, out,
                    lambda backend, g: _algorithms.run_conv(
                        op, backend, arrays.prepare_input(x, backend, "conv", g),
                        arrays.prepare(weight), arrays.prepare(bias), g), x)


def conv(x: Array, weight: Array, bias: Array | None = None, *, stride: IntOrTuple = 1,
         padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1,
         padding_mode: str = "zeros", out: Array | None = None) -> Array:
    """N-dimensional convolution (cross-correlation, as in deep-learning frameworks).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, *spatial)
        Input, 1 to 3 spatial dims. float16, float32 or float64 (or bfloat16 on the NumPy
        backend: docs/dtypes.md); NumPy or CuPy.
    weight : ndarray, shape (C_out, C_in // groups, *kernel)
    bias : ndarray, shape (C_out,), optional
    stride, dilation : int or tuple of int
        One value, or one per spatial dim. Must be positive.
    padding : int, tuple, tuple of (lo, hi) pairs, 'valid' or 'same'
        'same' gives ``ceil(size / stride)`` outputs for any stride.
    groups : int
        Splits the channels into ``groups`` independent convolutions.
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}
        What the padding holds, as in ``torch.nn.functional.pad``.
    out : ndarray, optional
        Written with the result and returned; exact shape, dtype and array type required.

    Returns
    -------
    ndarray, shape (N, C_out, *out_spatial)
        C-contiguous, dtype ``numpy.result_type(x, weight, bias)`` (bfloat16 with float16:
        float32), same array type as ``x``.

    Raises
    ------
    TypeError
        Non-array inputs, unsupported dtypes, NumPy mixed with CuPy.
    ValueError
        Inconsistent shapes, channels, groups, stride, padding or dilation.

    Examples
    --------
    >>> import numpy as np, gpuconv
    >>> x = np.arange(5.0).reshape(1, 1, 5)
    >>> w = np.array([[[1.0, 0.0, -1.0]]])
    >>> gpuconv.conv(x, w, padding=1)
    array([[[-1., -2., -2., -2.,  3.]]])
    """
    return _conv("conv", None, x, weight, bias, stride, padding, dilation, groups,
                 padding_mode, out)


def conv1d(x: Array, weight: Array, bias: Array | None = None, *, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1,
           padding_mode: str = "zeros", out: Array | None = None) -> Array:
    """1-D convolution: :func:`conv` for ``x`` of shape (N, C_in, L).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, L)
    weight : ndarray, shape (C_out, C_in // groups, k)
    bias : ndarray, shape (C_out,), optional
    stride, padding, dilation, groups, padding_mode, out
        As for :func:`conv`.

    Returns
    -------
    ndarray, shape (N, C_out, L_out)

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv`; ValueError if ``x`` is not 3-dimensional.
    """
    return _conv("conv1d", 1, x, weight, bias, stride, padding, dilation, groups,
                 padding_mode, out)


def conv2d(x: Array, weight: Array, bias: Array | None = None, *, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1,
           padding_mode: str = "zeros", out: Array | None = None) -> Array:
    """2-D convolution: :func:`conv` for ``x`` of shape (N, C_in, H, W).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    weight : ndarray, shape (C_out, C_in // groups, kh, kw)
    bias : ndarray, shape (C_out,), optional
    stride, padding, dilation, groups, padding_mode, out
        As for :func:`conv`.

    Returns
    -------
    ndarray, shape (N, C_out, H_out, W_out)

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv`; ValueError if ``x`` is not 4-dimensional.
    """
    return _conv("conv2d", 2, x, weight, bias, stride, padding, dilation, groups,
                 padding_mode, out)


def conv3d(x: Array, weight: Array, bias: Array | None = None, *, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1,
           padding_mode: str = "zeros", out: Array | None = None) -> Array:
    """3-D convolution: :func:`conv` for ``x`` of shape (N, C_in, D, H, W).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, D, H, W)
    weight : ndarray, shape (C_out, C_in // groups, kd, kh, kw)
    bias : ndarray, shape (C_out,), optional
    stride, padding, dilation, groups, padding_mode, out
        As for :func:`conv`.

    Returns
    -------
    ndarray, shape (N, C_out, D_out, H_out, W_out)

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv`; ValueError if ``x`` is not 5-dimensional.
    """
    return _conv("conv3d", 3, x, weight, bias, stride, padding, dilation, groups,
                 padding_mode, out)


# ---------------------------------------------------------------- conv_transpose


def _conv_transpose(op, spatial_ndim, x, weight, bias, stride, padding, output_padding,
                    dilation, groups, out):
    """The body of :func:`conv_transpose` and its ranked forms (see :func:`_conv`): the
    device backends select the algorithm in their method; on a backend with no algorithms for
    it (NumPy), :func:`gpuconv._algorithms.check_forced` refuses a forced one it lacks."""
    arrays = Arrays(op, optional=("bias",), x=x, weight=weight, bias=bias)
    geom = _validate.conv_transpose_setup(op, x.shape, weight.shape, spatial_ndim=spatial_ndim,
                                          stride=stride, padding=padding,
                                          output_padding=output_padding, dilation=dilation,
                                          groups=groups)

    def compute(backend, g):
        _algorithms.check_forced(op, backend, "conv_transpose", x.shape, weight.shape,
                                 arrays.dtype, g)
        return backend.conv_transpose(arrays.prepare(x), arrays.prepare(weight),
                                      arrays.prepare(bias), g)

    return _forward(arrays, geom, x.shape[0], weight.shape[1] * geom.groups, bias, out,
                    compute, x)


def conv_transpose(x: Array, weight: Array, bias: Array | None = None, *, stride: IntOrTuple = 1,
                   padding: Padding = 0, output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                   groups: int = 1, out: Array | None = None) -> Array:
    """N-dimensional transposed convolution (the adjoint of :func:`conv`).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, *spatial)
    weight : ndarray, shape (C_in, C_out // groups, *kernel)
    bias : ndarray, shape (C_out,), optional
    stride, dilation : int or tuple of int
    padding : int, tuple, tuple of (lo, hi) pairs, 'valid' or 'same'
        Cropped from the full transposed output. 'same' gives ``size * stride`` outputs and
        is the adjoint of ``conv(..., padding='same')``.
    output_padding : int or tuple of int
        Extra outputs at the high end; each must be smaller than ``max(stride, dilation)``.
    groups : int
    out : ndarray, optional

    Returns
    -------
    ndarray, shape (N, C_out, *out_spatial) with
        ``out = (size - 1) * stride - pad_lo - pad_hi + dilation * (k - 1) + output_padding + 1``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv`.

    Examples
    --------
    >>> import numpy as np, gpuconv
    >>> x = np.array([[[1.0, 2.0]]])
    >>> w = np.array([[[1.0, 1.0, 1.0]]])
    >>> gpuconv.conv_transpose(x, w, stride=2)
    array([[[1., 1., 3., 2., 2.]]])
    """
    return _conv_transpose("conv_transpose", None, x, weight, bias, stride, padding,
                           output_padding, dilation, groups, out)


def conv_transpose1d(x: Array, weight: Array, bias: Array | None = None, *, stride: IntOrTuple = 1,
                     padding: Padding = 0, output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, out: Array | None = None) -> Array:
    """1-D transposed convolution: :func:`conv_transpose` for ``x`` of shape (N, C_in, L).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, L)
    weight : ndarray, shape (C_in, C_out // groups, k)
    bias : ndarray, shape (C_out,), optional
    stride, padding, output_padding, dilation, groups, out
        As for :func:`conv_transpose`.

    Returns
    -------
    ndarray, shape (N, C_out, L_out)

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv_transpose`; ValueError if ``x`` is not 3-dimensional.
    """
    return _conv_transpose("conv_transpose1d", 1, x, weight, bias, stride, padding,
                           output_padding, dilation, groups, out)


def conv_transpose2d(x: Array, weight: Array, bias: Array | None = None, *, stride: IntOrTuple = 1,
                     padding: Padding = 0, output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, out: Array | None = None) -> Array:
    """2-D transposed convolution: :func:`conv_transpose` for ``x`` of shape (N, C_in, H, W).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    weight : ndarray, shape (C_in, C_out // groups, kh, kw)
    bias : ndarray, shape (C_out,), optional
    stride, padding, output_padding, dilation, groups, out
        As for :func:`conv_transpose`.

    Returns
    -------
    ndarray, shape (N, C_out, H_out, W_out)

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv_transpose`; ValueError if ``x`` is not 4-dimensional.
    """
    return _conv_transpose("conv_transpose2d", 2, x, weight, bias, stride, padding,
                           output_padding, dilation, groups, out)


def conv_transpose3d(x: Array, weight: Array, bias: Array | None = None, *, stride: IntOrTuple = 1,
                     padding: Padding = 0, output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, out: Array | None = None) -> Array:
    """3-D transposed convolution: :func:`conv_transpose` for ``x`` of shape (N, C_in, D, H, W).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, D, H, W)
    weight : ndarray, shape (C_in, C_out // groups, kd, kh, kw)
    bias : ndarray, shape (C_out,), optional
    stride, padding, output_padding, dilation, groups, out
        As for :func:`conv_transpose`.

    Returns
    -------
    ndarray, shape (N, C_out, D_out, H_out, W_out)

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv_transpose`; ValueError if ``x`` is not 5-dimensional.
    """
    return _conv_transpose("conv_transpose3d", 3, x, weight, bias, stride, padding,
                           output_padding, dilation, groups, out)


# -------------------------------------------------------------------- depthwise


def depthwise_conv(x: Array, weight: Array, bias: Array | None = None, *, stride: IntOrTuple = 1,
                   padding: Padding = 0, dilation: IntOrTuple = 1, padding_mode: str = "zeros",
                   out: Array | None = None) -> Array:
    """Depthwise convolution: each input channel convolved with its own filters.

    Equals ``conv(x, weight, bias, groups=C_in, ...)``, computed by a dedicated,
    bandwidth-friendly path.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, *spatial)
    weight : ndarray, shape (C_in * multiplier, 1, *kernel)
        Output channel ``c * multiplier + m`` filters input channel ``c``.
    bias : ndarray, shape (C_in * multiplier,), optional
    stride, padding, dilation, padding_mode, out
        As for :func:`conv`.

    Returns
    -------
    ndarray, shape (N, C_in * multiplier, *out_spatial)

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv`; also if ``weight`` is not (C_in * multiplier, 1, *kernel).

    Examples
    --------
    >>> import numpy as np, gpuconv
    >>> x = np.ones((1, 2, 4))
    >>> w = np.array([[[1.0, 1.0]], [[2.0, -1.0]]])
    >>> gpuconv.depthwise_conv(x, w)
    array([[[2., 2., 2.],
            [1., 1., 1.]]])
    """
    op = "depthwise_conv"
    arrays = Arrays(op, optional=("bias",), x=x, weight=weight, bias=bias)
    geom = _validate.depthwise_setup(op, x.shape, weight.shape, stride=stride, padding=padding,
                                     dilation=dilation, padding_mode=padding_mode)
    return _forward(arrays, geom, x.shape[0], weight.shape[0], bias, out,
                    lambda backend, g: backend.depthwise_conv(
                        arrays.prepare_input(x, backend, "depthwise_conv", g),
                        arrays.prepare(weight), arrays.prepare(bias), g), x)


def separable_conv(x: Array, depthwise_weight: Array, pointwise_weight: Array,
                   bias: Array | None = None, *, stride: IntOrTuple = 1, padding: Padding = 0,
                   dilation: IntOrTuple = 1, padding_mode: str = "zeros",
                   out: Array | None = None) -> Array:
    """Depthwise-separable convolution: :func:`depthwise_conv`, then a 1x1 :func:`conv`.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, *spatial)
    depthwise_weight : ndarray, shape (C_in * multiplier, 1, *kernel)
    pointwise_weight : ndarray, shape (C_out, C_in * multiplier, 1, ...)
        One trailing 1 per spatial dim.
    bias : ndarray, shape (C_out,), optional
        Added to the final (pointwise) result.
    stride, padding, dilation, padding_mode : as for :func:`conv`, applied to the depthwise step.
    out : ndarray, optional

    Returns
    -------
    ndarray, shape (N, C_out, *out_spatial)

    Raises
    ------
    TypeError, ValueError
        As for :func:`depthwise_conv` and :func:`conv`.

    Examples
    --------
    >>> import numpy as np, gpuconv
    >>> x = np.ones((1, 2, 3))
    >>> dw = np.ones((2, 1, 2))
    >>> pw = np.array([[[1.0], [10.0]]])
    >>> gpuconv.separable_conv(x, dw, pw)
    array([[[22., 22.]]])
    """
    op = "separable_conv"
    arrays = Arrays(op, optional=("bias",), x=x, depthwise_weight=depthwise_weight,
                    pointwise_weight=pointwise_weight, bias=bias)
    geom = _validate.depthwise_setup(op, x.shape, depthwise_weight.shape, stride=stride,
                                     padding=padding, dilation=dilation,
                                     padding_mode=padding_mode, w_name="depthwise_weight")
    spatial = x.ndim - 2
    c_out = _validate.check_pointwise_weight(op, pointwise_weight.shape, x.ndim,
                                             depthwise_weight.shape[0])

    def compute(backend, geom):
        mid_result = backend.depthwise_conv(
            arrays.prepare_input(x, backend, "depthwise_conv", geom),
            arrays.prepare(depthwise_weight), None, geom
        )
        pointwise_geom = _shapes.conv_geometry(
            geom.out_size, (1,) * spatial, stride=1, padding=0, dilation=1, groups=1
        )
        # a channels-last mid_result (the NumPy backend's, from a channels-last x) goes on
        # in place when the backend reads it so, else as a C-contiguous copy; the pointwise
        # step selects its algorithm as conv does (use_algorithm: the depthwise step has
        # no choice)
        return _algorithms.run_conv(
            op, backend, arrays.prepare_input(mid_result, backend, "conv", pointwise_geom),
            arrays.prepare(pointwise_weight), arrays.prepare(bias), pointwise_geom
        )

    return _forward(arrays, geom, x.shape[0], c_out, bias, out, compute, x)


# ------------------------------------------------------------------- deformable


def deform_conv2d(x: Array, offset: Array, weight: Array, bias: Array | None = None, *,
                  stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
                  mask: Array | None = None, out: Array | None = None) -> Array:
    """Deformable 2-D convolution, v1 (offsets) and v2 (offsets and mask).

    Semantics and layouts are ``torchvision.ops.deform_conv2d``'s: kernel tap ``(i, j)`` of
    output ``(y, x)`` samples the input bilinearly at
    ``(y * stride_h - pad_h + i * dil_h + dy, x * stride_w - pad_w + j * dil_w + dx)``,
    reading zero outside the image, and is scaled by the mask when one is given.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    offset : ndarray, shape (N, 2 * offset_groups * kh * kw, H_out, W_out)
        ``(dy, dx)`` pairs, tap-major within each offset group.
    weight : ndarray, shape (C_out, C_in // groups, kh, kw)
        ``groups`` is ``C_in // weight.shape[1]``.
    bias : ndarray, shape (C_out,), optional
    stride, padding, dilation : int or pair
        ``padding`` may also be ((lo, hi), (lo, hi)); the padding is zeros.
    mask : ndarray, shape (N, offset_groups * kh * kw, H_out, W_out), optional
        Modulation (DCNv2). Without it every tap has weight 1 (DCNv1).
    out : ndarray, optional

    Returns
    -------
    ndarray, shape (N, C_out, H_out, W_out)

    Raises
    ------
    TypeError, ValueError
        As for :func:`conv`; also for offset or mask shapes that do not match.

    Examples
    --------
    >>> import numpy as np, gpuconv
    >>> x = np.arange(4.0).reshape(1, 1, 1, 4)
    >>> w = np.ones((1, 1, 1, 1))
    >>> shift = np.full((1, 2, 1, 4), 0.5) * np.array([0, 1]).reshape(1, 2, 1, 1)
    >>> gpuconv.deform_conv2d(x, shift, w)   # sample half a pixel to the right
    array([[[[0.5, 1.5, 2.5, 1.5]]]])
    """
    op = "deform_conv2d"
    arrays = Arrays(op, optional=("bias", "mask"), x=x, offset=offset, weight=weight,
                    bias=bias, mask=mask)
    geom, offset_groups = _validate.deform_setup(
        op, x.shape, offset.shape, weight.shape, None if mask is None else mask.shape,
        stride=stride, padding=padding, dilation=dilation,
    )
    return _forward(arrays, geom, x.shape[0], weight.shape[0], bias, out,
                    lambda backend, g: backend.deform_conv2d(
                        arrays.prepare(x), arrays.prepare(offset), arrays.prepare(weight),
                        arrays.prepare(bias), arrays.prepare(mask), g, offset_groups), x)


# ------------------------------------------------------------ convolve/correlate


def convolve(a: ArrayLike, v: ArrayLike, mode: str | int = "full") -> Array:
    """Discrete linear convolution of two 1-D sequences, exactly as ``numpy.convolve``.

    Parameters
    ----------
    a, v : array_like (or CuPy arrays), 1-D, non-empty
        If ``v`` is longer than ``a`` they are swapped, as NumPy does.
    mode : {'full', 'valid', 'same'}

    Returns
    -------
    ndarray
        ``numpy.convolve(a, v, mode)``, of the same dtype NumPy returns.

    Raises
    ------
    ValueError
        For an empty or non-1-D input or an unknown mode.

    Examples
    --------
    >>> import gpuconv
    >>> gpuconv.convolve([1, 2, 3], [0, 1, 0.5])
    array([0. , 1. , 2.5, 4. , 1.5])
    """
    call, a, v, mode = _validate.signal_args("convolve", a, v, mode)
    result = call.backend.convolve(call.to_backend(a), call.to_backend(v), mode)
    return call.from_backend(result)


def correlate(a: ArrayLike, v: ArrayLike, mode: str | int = "valid") -> Array:
    """Cross-correlation of two 1-D sequences, exactly as ``numpy.correlate``.

    ``c[k] = sum_n a[n + k] * conj(v[n])``; complex ``v`` is conjugated.

    Parameters
    ----------
    a, v : array_like (or CuPy arrays), 1-D, non-empty
    mode : {'valid', 'same', 'full'}

    Returns
    -------
    ndarray
        ``numpy.correlate(a, v, mode)``.

    Raises
    ------
    ValueError
        For an empty or non-1-D input or an unknown mode.

    Examples
    --------
    >>> import gpuconv
    >>> gpuconv.correlate([1, 2, 3], [0, 1, 0.5])
    array([3.5])
    """
    call, a, v, mode = _validate.signal_args("correlate", a, v, mode)
    result = call.backend.correlate(call.to_backend(a), call.to_backend(v), mode)
    return call.from_backend(result)
