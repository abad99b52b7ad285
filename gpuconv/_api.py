"""The public functions: validate every argument, then hand the call to one backend.

Each function follows the same three steps:

1. ``_Arrays`` checks that the array arguments are arrays of one kind (NumPy or CuPy) with a
   supported dtype, and computes the result dtype (``numpy.result_type``).
2. ``gpuconv._shapes`` resolves stride/padding/dilation into a ``ConvGeometry`` and raises
   ``ValueError`` for anything inconsistent, before any work is done.
3. ``gpuconv._dispatch.Call`` picks the backend; ``_forward`` checks ``bias`` and ``out``,
   the backend computes (nothing for an empty call), and ``_finish`` writes into ``out=``
   when given.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _shapes
from ._dispatch import Call, is_cupy_array
from ._launch import data_pointer

CONV_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _is_array(a) -> bool:
    return isinstance(a, np.ndarray) or is_cupy_array(a)


def _type_name(a) -> str:
    return f"{type(a).__module__}.{type(a).__name__}".replace("builtins.", "")


def _not_an_array(op: str, name: str, a) -> TypeError:
    """The TypeError for a non-array ``a`` passed as array parameter ``name``; a PyTorch
    tensor gets a pointer to the bridge."""
    got = "None" if a is None else _type_name(a)
    hint = ""
    if type(a).__module__.split(".")[0] == "torch":
        base = op[:-2] if op in ("conv1d", "conv2d", "conv3d") else op
        base = base[:-2] if base.startswith("conv_transpose") and base[-1] == "d" else base
        if base in ("conv", "conv_transpose", "depthwise_conv", "separable_conv",
                    "deform_conv2d"):
            bridge = f"gpuconv.torch.{base} (tensors in and out, with autograd)"
        else:
            bridge = "gpuconv.torch (tensors in and out; gradients through autograd)"
        hint = f"; for PyTorch tensors use {bridge}, or pass {name}.numpy()"
    return TypeError(f"{op}: {name} must be a numpy.ndarray or cupy.ndarray, got {got}{hint}")


def _check_array(op: str, name: str, a, kinds="fc") -> np.dtype:
    """Check that ``a`` (parameter ``name``) is a NumPy or CuPy array, and not a masked
    array; return its dtype in native byte order (non-native arrays are converted when the
    call prepares them)."""
    if not _is_array(a):
        raise _not_an_array(op, name, a)
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{op}: {name} is a numpy.ma.MaskedArray, whose mask gpuconv would ignore; pass "
            f"{name}.filled(0) (masked entries as zeros) or {name}.data explicitly"
        )
    return np.dtype(a.dtype).newbyteorder("=")


class _Arrays:
    """Checks array arguments of a ``conv``-family call and the result dtype.

    ``named`` maps each parameter name to its value; parameters named in ``optional`` may be
    ``None``, every other one must be an array. Arrays in a non-native byte order (``'>f4'``
    on a little-endian machine) are accepted and converted by :meth:`prepare`.
    """

    def __init__(self, op: str, optional=(), **named):
        self.op = op
        dtypes = []
        for name, a in named.items():
            if a is None and name in optional:
                continue
            dtype = _check_array(op, name, a)
            if dtype not in CONV_DTYPES:
                raise TypeError(
                    f"{op}: {name} has dtype {a.dtype}; expected float16, float32 or float64 "
                    f"(integer, bool and complex inputs are not supported by the conv family)"
                )
            dtypes.append(dtype)
        present = [a for a in named.values() if a is not None]
        self.dtype = np.result_type(*dtypes)
        self.call = Call(present, op=op)

    def prepare(self, a):
        """``a`` on the backend, C-contiguous, in the result dtype and native byte order,
        aligned to its element size (None stays None). A misaligned view (from a byte
        buffer at an odd offset), NumPy or CuPy, is copied: the kernels need alignment."""
        if a is None:
            return None
        a = self.call.to_backend(a)
        a = self.call.xp.ascontiguousarray(a, dtype=self.dtype)
        if a.size and data_pointer(a) % a.dtype.itemsize:
            a = a.copy()
        return a


def _rank_text(name: str, shape) -> str:
    """``x.ndim=2 (shape (3, 4))`` for an array argument, ``len(input_shape)=2 ((3, 4))``
    for a shape argument (the gradient functions in ``gpuconv.grad`` take shapes)."""
    if name.endswith("_shape"):
        return f"len({name})={len(shape)} ({tuple(shape)})"
    return f"{name}.ndim={len(shape)} (shape {tuple(shape)})"


def _dim_text(name: str, index: int) -> str:
    """``weight.shape[1]`` for an array argument, ``weight_shape[1]`` for a shape argument."""
    return f"{name}[{index}]" if name.endswith("_shape") else f"{name}.shape[{index}]"


def _check_rank(op: str, x_shape, w_shape, spatial_ndim: int | None, *,
                x_name: str = "x", w_name: str = "weight"):
    """Check the ranks of an input shape ``x_shape`` and a weight shape ``w_shape``."""
    ndim = len(x_shape)
    if ndim < 3:
        raise ValueError(
            f"{op}: {x_name} must have shape (N, C_in, *spatial) with 1 to 3 spatial dims, "
            f"got {_rank_text(x_name, x_shape)}"
        )
    if spatial_ndim is not None and ndim != spatial_ndim + 2:
        raise ValueError(
            f"{op}: {x_name} must have {spatial_ndim + 2} dims (N, C_in, {spatial_ndim} "
            f"spatial), got {_rank_text(x_name, x_shape)}"
        )
    if ndim > 5:
        raise ValueError(
            f"{op}: at most 3 spatial dims are supported, got {_rank_text(x_name, x_shape)}"
        )
    if len(w_shape) != ndim:
        raise ValueError(
            f"{op}: {w_name} must have {ndim} dims to match {x_name} (shape {tuple(x_shape)}), "
            f"got {_rank_text(w_name, w_shape)}"
        )
    if any(s == 0 for s in w_shape):
        raise ValueError(f"{op}: {w_name} has an empty dim, shape {tuple(w_shape)}")


def _check_groups(op: str, groups) -> int:
    groups = _shapes._as_int(groups, "groups", op)
    if groups < 1:
        raise ValueError(f"{op}: groups={groups} must be a positive int")
    return groups


def _check_bias(op: str, bias, channels: int):
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(
            f"{op}: bias must have shape ({channels},) (one value per output channel), "
            f"got {tuple(bias.shape)}"
        )


def _check_out(op: str, out, shape, dtype, arrays: _Arrays):
    if out is None:
        return
    if not _is_array(out):
        raise TypeError(f"{op}: out must be an array, got {_type_name(out)}")
    if is_cupy_array(out) != arrays.call.on_device_arrays:
        raise TypeError(
            f"{op}: out is a {_type_name(out)} but the inputs are "
            f"{'CuPy' if arrays.call.on_device_arrays else 'NumPy'} arrays"
        )
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{op}: out has shape {tuple(out.shape)}; expected {tuple(shape)}")
    if np.dtype(out.dtype).newbyteorder("=") != np.dtype(dtype):
        raise ValueError(f"{op}: out has dtype {out.dtype}; expected {np.dtype(dtype)}")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError(f"{op}: out is read-only; expected a writeable array")


def _finish(arrays: _Arrays, result, out):
    result = arrays.call.from_backend(result)
    if out is None:
        return result
    out[...] = result
    return out


def _empty_result(arrays: _Arrays, shape, out, bias=None):
    """The result of a call with nothing to compute: N = 0, or an empty spatial dim of the
    input. Every output is the bias (no input cell reaches it; a zero pad contributes
    zero), or zero without one. No backend work."""
    xp = arrays.call.xp
    result = xp.zeros(shape, dtype=arrays.dtype)
    if bias is not None and result.size:
        result += arrays.prepare(bias).reshape((1, -1) + (1,) * (len(shape) - 2))
    return _finish(arrays, result, out)


def _forward(arrays: _Arrays, geom, n: int, c_out: int, bias, out, compute, *,
             transposed=False):
    """The last steps of every forward function: check ``bias`` and ``out`` against the
    output shape ``(n, c_out, *geom.out_size)``; then the bias (or zeros) without backend
    work for an empty input, else ``compute(backend, geometry)``'s result (written into
    ``out`` when given), with the geometry of :func:`gpuconv._shapes.backend_geometry`."""
    op = arrays.op
    _check_bias(op, bias, c_out)
    shape = (n, c_out, *geom.out_size)
    _check_out(op, out, shape, arrays.dtype, arrays)
    if n == 0 or 0 in geom.in_size:
        return _empty_result(arrays, shape, out, bias)
    compute_geom = _shapes.backend_geometry(geom, transposed=transposed, op=op)
    return _finish(arrays, compute(arrays.call.backend, compute_geom), out)


# --------------------------------------------------------------------------- conv


def _conv(op, spatial_ndim, x, weight, bias, stride, padding, dilation, groups,
          padding_mode, out):
    """The body of :func:`conv` and :func:`conv1d`/``2d``/``3d``: ``op`` names the public
    function in messages, ``spatial_ndim`` (None for ``conv``) is the required rank."""
    arrays = _Arrays(op, optional=("bias",), x=x, weight=weight, bias=bias)
    geom = conv_setup(op, x.shape, weight.shape, spatial_ndim=spatial_ndim, stride=stride,
                      padding=padding, dilation=dilation, groups=groups,
                      padding_mode=padding_mode)
    return _forward(arrays, geom, x.shape[0], weight.shape[0], bias, out,
                    lambda backend, g: backend.conv(arrays.prepare(x), arrays.prepare(weight),
                                                    arrays.prepare(bias), g))


def conv(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
         padding_mode="zeros", out=None):
    """N-dimensional convolution (cross-correlation, as in deep-learning frameworks).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, *spatial)
        Input, 1 to 3 spatial dims. float16, float32 or float64; NumPy or CuPy.
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
        C-contiguous, dtype ``numpy.result_type(x, weight, bias)``, same array type as ``x``.

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


def _channels_last_hint(x_name: str, x_shape, channels: int) -> str:
    """A hint when ``x``'s last axis, not axis 1, holds the ``channels`` the weight expects
    (an (N, *spatial, C) array, as TensorFlow or images store them); else nothing."""
    ndim = len(x_shape)
    if x_shape[-1] != channels or x_shape[1] == channels or x_name.endswith("_shape"):
        return ""
    order = ", ".join(str(a) for a in (0, ndim - 1, *range(1, ndim - 1)))
    return (f". {x_name} looks channels-last: its last axis has {channels} entries; gpuconv "
            f"expects (N, C, *spatial), e.g. {x_name}.transpose({order})")


def conv_setup(op: str, x_shape, w_shape, *, spatial_ndim=None, stride, padding, dilation,
               groups, padding_mode="zeros", x_name="x", w_name="weight"):
    """Validate the shapes and spatial arguments of a ``conv`` call; return its geometry.

    Shared by :func:`conv` and the gradients in ``gpuconv.grad``, which pass shapes
    (``input_shape``/``weight_shape``) where ``conv`` has arrays; ``x_name``/``w_name`` name
    them in the messages.
    """
    _check_rank(op, x_shape, w_shape, spatial_ndim, x_name=x_name, w_name=w_name)
    groups = _check_groups(op, groups)
    c_in, c_out = x_shape[1], w_shape[0]
    hint = _channels_last_hint(x_name, x_shape, w_shape[1] * groups)
    if c_in % groups:
        raise ValueError(f"{op}: groups={groups} must divide in_channels={c_in}{hint}")
    if c_out % groups:
        raise ValueError(
            f"{op}: groups={groups} must divide out_channels={c_out} ({_dim_text(w_name, 0)})"
        )
    if w_shape[1] * groups != c_in:
        raise ValueError(
            f"{op}: {_dim_text(w_name, 1)}={w_shape[1]} must equal in_channels / groups = "
            f"{c_in} / {groups} = {c_in // groups}; {w_name} is {tuple(w_shape)}{hint}"
        )
    return _shapes.conv_geometry(
        tuple(x_shape[2:]), tuple(w_shape[2:]), stride=stride, padding=padding,
        dilation=dilation, groups=groups, padding_mode=padding_mode, op=op,
    )


def conv1d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros", out=None):
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


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros", out=None):
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


def conv3d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros", out=None):
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
    """The body of :func:`conv_transpose` and its ranked forms (see :func:`_conv`)."""
    arrays = _Arrays(op, optional=("bias",), x=x, weight=weight, bias=bias)
    geom = conv_transpose_setup(op, x.shape, weight.shape, spatial_ndim=spatial_ndim,
                                stride=stride, padding=padding, output_padding=output_padding,
                                dilation=dilation, groups=groups)
    return _forward(arrays, geom, x.shape[0], weight.shape[1] * geom.groups, bias, out,
                    lambda backend, g: backend.conv_transpose(
                        arrays.prepare(x), arrays.prepare(weight), arrays.prepare(bias), g),
                    transposed=True)


def conv_transpose(x, weight, bias=None, *, stride=1, padding=0, output_padding=0,
                   dilation=1, groups=1, out=None):
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


def conv_transpose_setup(op: str, x_shape, w_shape, *, spatial_ndim=None, stride, padding,
                         output_padding, dilation, groups, x_name="x", w_name="weight"):
    """Validate a ``conv_transpose`` call's shapes and spatial arguments; return its geometry.

    Shared with ``gpuconv.grad`` (see :func:`conv_setup`).
    """
    _check_rank(op, x_shape, w_shape, spatial_ndim, x_name=x_name, w_name=w_name)
    groups = _check_groups(op, groups)
    c_in = x_shape[1]
    if w_shape[0] != c_in:
        raise ValueError(
            f"{op}: {_dim_text(w_name, 0)}={w_shape[0]} must equal in_channels={c_in}; "
            f"{w_name} is (C_in, C_out // groups, *kernel), got {tuple(w_shape)}"
            f"{_channels_last_hint(x_name, x_shape, w_shape[0])}"
        )
    if c_in % groups:
        raise ValueError(f"{op}: groups={groups} must divide in_channels={c_in}")
    return _shapes.conv_transpose_geometry(
        tuple(x_shape[2:]), tuple(w_shape[2:]), stride=stride, padding=padding,
        output_padding=output_padding, dilation=dilation, groups=groups, op=op,
    )


def conv_transpose1d(x, weight, bias=None, *, stride=1, padding=0, output_padding=0,
                     dilation=1, groups=1, out=None):
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


def conv_transpose2d(x, weight, bias=None, *, stride=1, padding=0, output_padding=0,
                     dilation=1, groups=1, out=None):
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


def conv_transpose3d(x, weight, bias=None, *, stride=1, padding=0, output_padding=0,
                     dilation=1, groups=1, out=None):
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


def depthwise_setup(op, x_shape, w_shape, *, stride, padding, dilation, padding_mode,
                    x_name="x", w_name="weight"):
    """Validate a ``depthwise_conv`` call's shapes and spatial arguments; return its geometry
    (``groups`` is the channel count). Shared with ``gpuconv.grad``."""
    _check_rank(op, x_shape, w_shape, None, x_name=x_name, w_name=w_name)
    channels = x_shape[1]
    if channels == 0:
        raise ValueError(f"{op}: {x_name} has 0 channels (shape {tuple(x_shape)})")
    if w_shape[1] != 1 or w_shape[0] % channels:
        hint = ""
        if w_shape[1] == 1 and w_shape[0] % x_shape[-1] == 0:
            hint = _channels_last_hint(x_name, x_shape, x_shape[-1])
        raise ValueError(
            f"{op}: {w_name} must have shape (C_in * multiplier, 1, *kernel) with "
            f"C_in={channels}, got {tuple(w_shape)}{hint}"
        )
    return _shapes.conv_geometry(
        tuple(x_shape[2:]), tuple(w_shape[2:]), stride=stride, padding=padding,
        dilation=dilation, groups=channels, padding_mode=padding_mode, op=op,
    )


def depthwise_conv(x, weight, bias=None, *, stride=1, padding=0, dilation=1,
                   padding_mode="zeros", out=None):
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
    arrays = _Arrays(op, optional=("bias",), x=x, weight=weight, bias=bias)
    geom = depthwise_setup(op, x.shape, weight.shape, stride=stride, padding=padding,
                           dilation=dilation, padding_mode=padding_mode)
    return _forward(arrays, geom, x.shape[0], weight.shape[0], bias, out,
                    lambda backend, g: backend.depthwise_conv(
                        arrays.prepare(x), arrays.prepare(weight), arrays.prepare(bias), g))


def separable_conv(x, depthwise_weight, pointwise_weight, bias=None, *, stride=1, padding=0,
                   dilation=1, padding_mode="zeros", out=None):
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
    arrays = _Arrays(op, optional=("bias",), x=x, depthwise_weight=depthwise_weight,
                     pointwise_weight=pointwise_weight, bias=bias)
    geom = depthwise_setup(op, x.shape, depthwise_weight.shape, stride=stride, padding=padding,
                           dilation=dilation, padding_mode=padding_mode,
                           w_name="depthwise_weight")
    mid = depthwise_weight.shape[0]
    spatial = x.ndim - 2
    if pointwise_weight.ndim != x.ndim or pointwise_weight.shape[1] != mid or any(
        k != 1 for k in pointwise_weight.shape[2:]
    ):
        raise ValueError(
            f"{op}: pointwise_weight must have shape (C_out, {mid}{', 1' * spatial}), "
            f"got {tuple(pointwise_weight.shape)}"
        )
    c_out = pointwise_weight.shape[0]
    if c_out == 0:
        raise ValueError(f"{op}: pointwise_weight has 0 output channels")

    def compute(backend, geom):
        mid_result = backend.depthwise_conv(
            arrays.prepare(x), arrays.prepare(depthwise_weight), None, geom
        )
        pointwise_geom = _shapes.conv_geometry(
            geom.out_size, (1,) * spatial, stride=1, padding=0, dilation=1, groups=1
        )
        return backend.conv(
            mid_result, arrays.prepare(pointwise_weight), arrays.prepare(bias), pointwise_geom
        )

    return _forward(arrays, geom, x.shape[0], c_out, bias, out, compute)


# ------------------------------------------------------------------- deformable


def deform_setup(op: str, x_shape, offset_shape, w_shape, mask_shape, *, stride, padding,
                 dilation):
    """Validate a ``deform_conv2d`` call's shapes; return ``(geometry, offset_groups)``.

    Shared with ``gpuconv.grad``; ``mask_shape`` is None when there is no mask.
    """
    _check_rank(op, x_shape, w_shape, 2)
    n, c_in = x_shape[:2]
    c_out, c_per_group, kh, kw = w_shape
    if c_in % c_per_group:
        raise ValueError(
            f"{op}: weight.shape[1]={c_per_group} must divide in_channels={c_in} "
            f"(groups = in_channels // weight.shape[1])"
        )
    groups = c_in // c_per_group
    if c_out % groups:
        raise ValueError(f"{op}: groups={groups} must divide out_channels={c_out}")
    geom = _shapes.conv_geometry(
        tuple(x_shape[2:]), (kh, kw), stride=stride, padding=padding, dilation=dilation,
        groups=groups, op=op,
    )
    taps = kh * kw
    offset_shape = tuple(offset_shape)
    if len(offset_shape) != 4 or offset_shape[1] == 0 or offset_shape[1] % (2 * taps):
        raise ValueError(
            f"{op}: offset must have shape (N, 2 * offset_groups * {kh} * {kw}, "
            f"{geom.out_size[0]}, {geom.out_size[1]}), got {offset_shape}"
        )
    offset_groups = offset_shape[1] // (2 * taps)
    expected = (n, 2 * offset_groups * taps, *geom.out_size)
    if offset_shape != expected:
        raise ValueError(f"{op}: offset must have shape {expected}, got {offset_shape}")
    if c_in % offset_groups:
        raise ValueError(
            f"{op}: offset_groups={offset_groups} (from offset.shape[1]) must divide "
            f"in_channels={c_in}"
        )
    if mask_shape is not None:
        expected_mask = (n, offset_groups * taps, *geom.out_size)
        if tuple(mask_shape) != expected_mask:
            raise ValueError(
                f"{op}: mask must have shape {expected_mask}, got {tuple(mask_shape)}"
            )
    return geom, offset_groups


def deform_conv2d(x, offset, weight, bias=None, *, stride=1, padding=0, dilation=1,
                  mask=None, out=None):
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
    arrays = _Arrays(op, optional=("bias", "mask"), x=x, offset=offset, weight=weight,
                     bias=bias, mask=mask)
    geom, offset_groups = deform_setup(
        op, x.shape, offset.shape, weight.shape, None if mask is None else mask.shape,
        stride=stride, padding=padding, dilation=dilation,
    )
    return _forward(arrays, geom, x.shape[0], weight.shape[0], bias, out,
                    lambda backend, g: backend.deform_conv2d(
                        arrays.prepare(x), arrays.prepare(offset), arrays.prepare(weight),
                        arrays.prepare(bias), arrays.prepare(mask), g, offset_groups))


# ------------------------------------------------------------ convolve/correlate

#: The modes numpy.convolve/correlate accept: exactly these names, or their numbers.
_MODES = {"valid": "valid", "same": "same", "full": "full", 0: "valid", 1: "same", 2: "full"}


def _signal_args(op, a, v, mode):
    """Check ``mode`` and the sequences as NumPy does; return ``(call, a, v, mode)`` with
    NumPy inputs as native-byte-order arrays."""
    if isinstance(mode, (bool, np.bool_)) or not isinstance(mode, (str, int, np.integer)) \
            or mode not in _MODES:
        raise ValueError(
            f"{op}: mode={_shapes.describe(mode)} must be 'valid', 'same' or 'full' (exactly "
            f"these names, as in numpy.{op})"
        )
    mode = _MODES[mode if isinstance(mode, str) else int(mode)]
    for name, arr in (("a", a), ("v", v)):
        if arr is None:
            raise TypeError(f"{op}: {name} must be a 1-D array_like, got None")
        if isinstance(arr, np.ma.MaskedArray):
            _check_array(op, name, arr)  # raises: the mask would be ignored
        if type(arr).__module__.split(".")[0] == "torch":
            raise _not_an_array(op, name, arr)
    call = Call([a, v], op=op)
    given = {"a": a, "v": v}
    if not call.on_device_arrays:
        a = np.array(a, copy=None, ndmin=1)
        v = np.array(v, copy=None, ndmin=1)
        for name, arr in (("a", a), ("v", v)):
            # (object arrays of numbers go to NumPy's own loop)
            if arr.dtype.kind in "USV" or (arr.dtype.kind == "O" and not all(
                    isinstance(e, numbers.Number) for e in arr.flat)):
                raise TypeError(
                    f"{op}: {name} must be a 1-D array_like of numbers, got "
                    f"{_shapes.describe(given[name])}"
                )
        # a non-native byte order ('>f8' on a little-endian machine) becomes native
        a, v = (arr.astype(arr.dtype.newbyteorder("="), copy=False) for arr in (a, v))
    for name, arr in (("a", a), ("v", v)):
        if arr.ndim != 1:
            raise ValueError(f"{op}: {name} must be 1-D, got shape {tuple(arr.shape)}")
        if arr.size == 0:
            raise ValueError(f"{op}: {name} cannot be empty")
    return call, a, v, mode


def convolve(a, v, mode="full"):
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
    call, a, v, mode = _signal_args("convolve", a, v, mode)
    result = call.backend.convolve(call.to_backend(a), call.to_backend(v), mode)
    return call.from_backend(result)


def correlate(a, v, mode="valid"):
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
    call, a, v, mode = _signal_args("correlate", a, v, mode)
    result = call.backend.correlate(call.to_backend(a), call.to_backend(v), mode)
    return call.from_backend(result)
