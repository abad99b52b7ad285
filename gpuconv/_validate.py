"""Argument checking and call setup, shared by the forward functions and their gradients.

This module owns every check of a user's arguments before anything is computed, and the
setup of a call from them:

* :class:`Arrays` checks that the array arguments are arrays of one kind (NumPy or CuPy) with
  a supported dtype, computes the result dtype (:func:`gpuconv._dtypes.result_type`), picks
  the backend (:class:`gpuconv._dispatch.Call`) and checks that it computes that dtype
  (:func:`check_backend_dtype`), prepares arrays for it, and runs the backend with the
  geometry it computes with (:meth:`Arrays.run`, the one place where
  :func:`gpuconv._shapes.backend_geometry` is applied);
* the ``*_setup`` functions (:func:`conv_setup`, :func:`conv_transpose_setup`,
  :func:`depthwise_setup`, :func:`deform_setup`) check shapes, channels and groups and
  resolve the spatial arguments into a :class:`gpuconv._shapes.ConvGeometry`. They take
  shapes, not arrays, so ``gpuconv.grad`` (which has ``input_shape``/``weight_shape`` in place
  of an array), ``gpuconv.torch`` and ``gpuconv.dask`` validate exactly as the forward does;
* the checks of ``bias``, ``out``, the separable pointwise weight, the gradients' shape and
  flag arguments and ``grad_output``, and the signal arguments of ``convolve``/``correlate``;
* the results of calls with nothing to compute (:func:`empty_result`) and the delivery of a
  backend's result into ``out=`` (:func:`finish`);
* the layout decisions (docs/layouts.md): a channels-last ``x`` is passed as it is where the
  backend reads it so (:meth:`Arrays.prepare_input`), else copied once to NCHW
  (:meth:`Arrays.prepare`), and :func:`finish` returns channels-last results for it
  (:mod:`gpuconv._layout` has the rules and the copy counter).

Every message starts with the public function's name (``op``), then names the parameter, the
value received and what was expected.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _dtypes, _layout, _shapes
from ._dispatch import Call, caller_xp, is_cupy_array
from ._launch import data_pointer
from ._shapes import ConvGeometry
from .backends._contract import Array, Backend

#: ``stride``, ``dilation``, ``output_padding``: one int, or one per spatial dim.
IntOrTuple = int | Sequence[int]
#: ``padding``: an int, one per spatial dim, one ``(lo, hi)`` pair per spatial dim, or
#: ``'valid'``/``'same'``.
Padding = int | Sequence[int] | Sequence[tuple[int, int]] | str

#: The dtypes the conv family accepts (arrays of other dtypes are rejected): float16/32/64,
#: and bfloat16 when ml_dtypes is installed. A backend computes those of its ``dtypes``
#: attribute (:data:`FLOAT_DTYPES` if it has none; see :func:`check_backend_dtype`).
CONV_DTYPES = _dtypes.CONV_DTYPES
FLOAT_DTYPES = _dtypes.FLOAT_DTYPES

#: The modes numpy.convolve/correlate accept: exactly these names, or their numbers.
SIGNAL_MODES = {"valid": "valid", "same": "same", "full": "full", 0: "valid", 1: "same",
                2: "full"}


# ------------------------------------------------------------------------ arrays


def is_array(a: Any) -> bool:
    """True for a ``numpy.ndarray`` or a ``cupy.ndarray`` (CuPy is not imported)."""
    return isinstance(a, np.ndarray) or is_cupy_array(a)


def type_name(a: Any) -> str:
    """``a``'s type as messages show it: ``numpy.ndarray``, ``list`` (no ``builtins.``)."""
    return f"{type(a).__module__}.{type(a).__name__}".replace("builtins.", "")


def not_an_array(op: str, name: str, a: Any) -> TypeError:
    """The TypeError for a non-array ``a`` passed as array parameter ``name``; a PyTorch
    tensor gets a pointer to the bridge."""
    got = "None" if a is None else type_name(a)
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


def check_array(op: str, name: str, a: Any) -> np.dtype:
    """Check that ``a`` (parameter ``name``) is a NumPy or CuPy array, and not a masked
    array; return its dtype in native byte order (non-native arrays are converted when the
    call prepares them)."""
    if not is_array(a):
        raise not_an_array(op, name, a)
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{op}: {name} is a numpy.ma.MaskedArray, whose mask gpuconv would ignore; pass "
            f"{name}.filled(0) (masked entries as zeros) or {name}.data explicitly"
        )
    return np.dtype(a.dtype).newbyteorder("=")


class Arrays:
    """The array arguments of a ``conv``-family call: checked, and set up to run.

    ``named`` maps each parameter name to its value; parameters named in ``optional`` may be
    ``None``, every other one must be an array. Arrays in a non-native byte order (``'>f4'``
    on a little-endian machine) are accepted and converted by :meth:`prepare`.

    Attributes
    ----------
    op : str
        The public function's name, which starts every message.
    dtype : numpy.dtype
        The result dtype, ``numpy.result_type`` of the arrays.
    call : gpuconv._dispatch.Call
        Where the call runs: the backend, and how arrays travel to it and back.
    output_format : str
        The format :func:`finish` returns the result in: ``"contiguous"``, or
        ``"channels_last"`` when the forward's ``x`` is channels-last
        (:func:`gpuconv._layout.memory_format`; set by the forward functions).
    """

    def __init__(self, op: str, optional: Sequence[str] = (), **named: Any):
        self.op = op
        dtypes = []
        for name, a in named.items():
            if a is None and name in optional:
                continue
            dtype = check_array(op, name, a)
            if dtype not in CONV_DTYPES:
                raise TypeError(
                    f"{op}: {name} has dtype {a.dtype}; expected float16, float32 or float64 "
                    f"(or bfloat16, with ml_dtypes; integer, bool and complex inputs are not "
                    f"supported by the conv family)"
                )
            dtypes.append(dtype)
        present = [a for a in named.values() if a is not None]
        self.dtype = _dtypes.result_type(*dtypes)
        self.call = Call(present, op=op)
        check_backend_dtype(op, self.call, self.dtype)
        self.output_format = _layout.CONTIGUOUS

    def prepare(self, a: Array | None) -> Array | None:
        """``a`` on the backend, C-contiguous, in the result dtype and native byte order,
        aligned to its element size (None stays None). A misaligned view (from a byte
        buffer at an odd offset), NumPy or CuPy, is copied: the kernels need alignment."""
        if a is None:
            return None
        if not a.flags.c_contiguous and _layout.memory_format(a) == _layout.CHANNELS_LAST:
            _layout.COPIES["input_to_nchw"] += 1  # the transposing copy below
        a = self.call.to_backend(a)
        a = self.call.xp.ascontiguousarray(a, dtype=self.dtype)
        if a.size and data_pointer(a) % a.dtype.itemsize:
            a = a.copy()
        return a

    def prepare_input(self, a: Array, backend: Backend, method: str,
                      geom: ConvGeometry) -> Array:
        """``x`` for ``backend.method``: read in place, in its channels-last layout (only
        converted to the result dtype, keeping its strides), when
        :func:`gpuconv._layout.reads_in_place` says the backend reads it so (the NumPy
        backend's 1x1 conv and depthwise_conv); else :meth:`prepare` (one copy to NCHW)."""
        if _layout.reads_in_place(backend, method, a, geom):
            a = self.call.to_backend(a).astype(self.dtype, order="K", copy=False)
            if a.size and data_pointer(a) % a.dtype.itemsize:
                a = a.copy(order="K")
            return a
        return self.prepare(a)

    def run(self, geom: ConvGeometry, compute: Callable[[Backend, ConvGeometry], Any]) -> Any:
        """``compute(backend, backend_geom)``: the backend's result for this call.

        The one dispatch point of every conv-family call and gradient: ``backend_geom`` is
        ``geom`` as :func:`gpuconv._shapes.backend_geometry` makes it (strides and dilations
        that cannot matter made small). ``compute`` calls one named backend method with
        prepared arrays; its result is returned as the backend made it.
        """
        return compute(self.call.backend, _shapes.backend_geometry(geom, op=self.op))


def check_backend_dtype(op: str, call: Call, dtype: np.dtype):
    """TypeError unless ``call``'s backend computes ``dtype`` (its ``dtypes`` attribute,
    :data:`FLOAT_DTYPES` when it has none), before any array is converted or any kernel
    compiled. The NumPy and ``emulate`` backends compute bfloat16; ``cuda`` does with a CuPy
    that has bfloat16 arrays (CuPy 14), and refuses it here otherwise."""
    supported = tuple(getattr(call.backend, "dtypes", FLOAT_DTYPES))
    if dtype in supported:
        return
    names = ", ".join(d.name for d in supported)
    raise TypeError(
        f"{op}: the {call.name!r} backend has no {dtype.name} kernels (it computes {names}); "
        f"run {dtype.name} on the NumPy backend (gpuconv.use_backend('numpy'), with NumPy "
        f"arrays or CPU tensors), or convert the inputs to float32"
    )


# ------------------------------------------------------------------------ shapes


def _rank_text(name: str, shape: Sequence[int]) -> str:
    """``x.ndim=2 (shape (3, 4))`` for an array argument, ``len(input_shape)=2 ((3, 4))``
    for a shape argument (the gradient functions in ``gpuconv.grad`` take shapes)."""
    if name.endswith("_shape"):
        return f"len({name})={len(shape)} ({tuple(shape)})"
    return f"{name}.ndim={len(shape)} (shape {tuple(shape)})"


def _dim_text(name: str, index: int) -> str:
    """``weight.shape[1]`` for an array argument, ``weight_shape[1]`` for a shape argument."""
    return f"{name}[{index}]" if name.endswith("_shape") else f"{name}.shape[{index}]"


def _check_rank(op: str, x_shape: Sequence[int], w_shape: Sequence[int],
                spatial_ndim: int | None, *, x_name: str = "x", w_name: str = "weight"):
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


def _check_groups(op: str, groups: Any) -> int:
    groups = _shapes.as_int(groups, "groups", op)
    if groups < 1:
        raise ValueError(f"{op}: groups={groups} must be a positive int")
    return groups


def _channels_last_hint(x_name: str, x_shape: Sequence[int], channels: int) -> str:
    """A hint when ``x``'s last axis, not axis 1, holds the ``channels`` the weight expects
    (an (N, *spatial, C) array, as TensorFlow or images store them); else nothing."""
    ndim = len(x_shape)
    if x_shape[-1] != channels or x_shape[1] == channels or x_name.endswith("_shape"):
        return ""
    order = ", ".join(str(a) for a in (0, ndim - 1, *range(1, ndim - 1)))
    return (f". {x_name} looks channels-last: its last axis has {channels} entries; gpuconv "
            f"expects (N, C, *spatial), e.g. {x_name}.transpose({order})")


def _spatial_geometry(op: str, x_shape: Sequence[int], w_shape: Sequence[int], groups: int, *,
                      stride: Any, padding: Any, dilation: Any,
                      padding_mode: Any) -> ConvGeometry:
    """The ``conv`` geometry of an (N, C, *spatial) input and a (C_out, C, *kernel) weight."""
    return _shapes.conv_geometry(
        tuple(x_shape[2:]), tuple(w_shape[2:]), stride=stride, padding=padding,
        dilation=dilation, groups=groups, padding_mode=padding_mode, op=op,
    )


def conv_setup(op: str, x_shape: Sequence[int], w_shape: Sequence[int], *,
               spatial_ndim: int | None = None, stride: Any, padding: Any, dilation: Any,
               groups: Any, padding_mode: Any = "zeros", x_name: str = "x",
               w_name: str = "weight") -> ConvGeometry:
    """Validate the shapes and spatial arguments of a ``conv`` call; return its geometry.

    Shared by :func:`gpuconv.conv` and the gradients in ``gpuconv.grad``, which pass shapes
    (``input_shape``/``weight_shape``) where ``conv`` has arrays; ``x_name``/``w_name`` name
    them in the messages. ``spatial_ndim`` (None for ``conv``) is the rank a ranked form
    (``conv2d``) requires.

    >>> conv_setup("conv", (1, 4, 8), (6, 2, 3), stride=1, padding=1, dilation=1,
    ...            groups=2).out_size
    (8,)
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
    return _spatial_geometry(op, x_shape, w_shape, groups, stride=stride, padding=padding,
                             dilation=dilation, padding_mode=padding_mode)


def conv_transpose_setup(op: str, x_shape: Sequence[int], w_shape: Sequence[int], *,
                         spatial_ndim: int | None = None, stride: Any, padding: Any,
                         output_padding: Any, dilation: Any, groups: Any, x_name: str = "x",
                         w_name: str = "weight") -> ConvGeometry:
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


def depthwise_setup(op: str, x_shape: Sequence[int], w_shape: Sequence[int], *, stride: Any,
                    padding: Any, dilation: Any, padding_mode: Any, x_name: str = "x",
                    w_name: str = "weight") -> ConvGeometry:
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
    return _spatial_geometry(op, x_shape, w_shape, channels, stride=stride, padding=padding,
                             dilation=dilation, padding_mode=padding_mode)


def check_pointwise_weight(op: str, pointwise_shape: Sequence[int], x_ndim: int,
                           mid_channels: int, *, c_out_in_message: bool = False) -> int:
    """Check a ``separable_conv`` pointwise weight's shape, ``(C_out, mid_channels, 1, ...)``
    with one 1 per spatial dim of an ``x_ndim``-dimensional ``x`` and ``C_out >= 1``; return
    ``C_out``.

    Two wordings, both kept: the forward reports ``C_out == 0`` in a message of its own;
    with ``c_out_in_message`` (``gpuconv.grad`` and ``gpuconv.torch``) the shape message says
    ``with C_out >= 1`` and covers it.
    """
    pointwise_shape = tuple(pointwise_shape)
    spatial = x_ndim - 2
    wrong = len(pointwise_shape) != x_ndim or pointwise_shape[1] != mid_channels or any(
        k != 1 for k in pointwise_shape[2:])
    if wrong or (c_out_in_message and pointwise_shape[0] == 0):
        clause = " with C_out >= 1" if c_out_in_message else ""
        raise ValueError(
            f"{op}: pointwise_weight must have shape (C_out, {mid_channels}{', 1' * spatial})"
            f"{clause}, got {pointwise_shape}"
        )
    if pointwise_shape[0] == 0:
        raise ValueError(f"{op}: pointwise_weight has 0 output channels")
    return pointwise_shape[0]


def deform_setup(op: str, x_shape: Sequence[int], offset_shape: Sequence[int],
                 w_shape: Sequence[int], mask_shape: Sequence[int] | None, *, stride: Any,
                 padding: Any, dilation: Any) -> tuple[ConvGeometry, int]:
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


# -------------------------------------------------------------- gradient arguments


def check_shape(op: str, name: str, shape: Any) -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints, or TypeError/ValueError naming ``name``."""
    if not isinstance(shape, (tuple, list)):
        hint = ""
        if is_array(shape) or hasattr(shape, "shape"):
            hint = f"; pass the array's shape ({'x' if name == 'input_shape' else 'weight'}.shape)"
        raise TypeError(
            f"{op}: {name} must be a tuple of ints, got {_shapes.describe(shape)}{hint}"
        )
    result = tuple(_shapes.as_int(s, name, op) for s in shape)
    if any(s < 0 for s in result):
        raise ValueError(f"{op}: {name}={result} must have non-negative entries")
    return result


def check_flag(op: str, name: str, value: Any) -> bool:
    """``value`` as a bool, or TypeError naming ``name``: only ``bool``/``numpy.bool_``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name}={_shapes.describe(value)} must be a bool")
    return bool(value)


def check_grad_output(op: str, grad_output: Array, expected: Sequence[int], source: str):
    """Check that ``grad_output`` has the forward output's shape ``expected``; ``source``
    says what the forward output's shape was computed from."""
    if tuple(grad_output.shape) != tuple(expected):
        raise ValueError(
            f"{op}: grad_output has shape {tuple(grad_output.shape)}; expected "
            f"{tuple(expected)}, the forward output's shape for {source}"
        )


def input_grad_setup(op: str, setup: Callable[..., Any], out_channels: Callable[..., int],
                     input_shape: Any, weight: Array, grad_output: Array, **forward):
    """The checks of every ``grad.*_input`` call (and of its :func:`gpuconv.plan`): the forward's
    ``setup`` with ``input_shape`` standing for ``x``, and ``grad_output`` against the forward
    output's shape (``out_channels(weight.shape, geom)`` channels). Returns ``(arrays,
    input_shape, geom)``."""
    arrays = Arrays(op, weight=weight, grad_output=grad_output)
    input_shape = check_shape(op, "input_shape", input_shape)
    geom = setup(op, input_shape, weight.shape, x_name="input_shape", **forward)
    expected = (input_shape[0], out_channels(weight.shape, geom), *geom.out_size)
    check_grad_output(op, grad_output, expected,
                      f"input_shape={input_shape} and weight shape {tuple(weight.shape)}")
    return arrays, input_shape, geom


def weight_grad_setup(op: str, setup: Callable[..., Any], out_channels: Callable[..., int],
                      x: Array, weight_shape: Any, grad_output: Array, deterministic: Any,
                      **forward):
    """The checks of every ``grad.*_weight`` call (and of its :func:`gpuconv.plan`), as
    :func:`input_grad_setup` with ``weight_shape`` standing for the weight. Returns ``(arrays,
    weight_shape, deterministic, geom)``."""
    arrays = Arrays(op, x=x, grad_output=grad_output)
    weight_shape = check_shape(op, "weight_shape", weight_shape)
    deterministic = check_flag(op, "deterministic", deterministic)
    geom = setup(op, x.shape, weight_shape, w_name="weight_shape", **forward)
    expected = (x.shape[0], out_channels(weight_shape, geom), *geom.out_size)
    check_grad_output(op, grad_output, expected,
                      f"x shape {tuple(x.shape)} and weight_shape={weight_shape}")
    return arrays, weight_shape, deterministic, geom


# ------------------------------------------------------------------- outputs


def check_bias(op: str, bias: Array | None, channels: int):
    """Check that ``bias`` (if given) has shape ``(channels,)``."""
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(
            f"{op}: bias must have shape ({channels},) (one value per output channel), "
            f"got {tuple(bias.shape)}"
        )


def check_out(op: str, out: Any, shape: Sequence[int], dtype: Any, arrays: Arrays):
    """Check ``out=`` (if given): an array of the inputs' kind with exactly ``shape`` and
    ``dtype``, writeable."""
    if out is None:
        return
    if not is_array(out):
        raise TypeError(f"{op}: out must be an array, got {type_name(out)}")
    if is_cupy_array(out) != arrays.call.on_device_arrays:
        raise TypeError(
            f"{op}: out is a {type_name(out)} but the inputs are "
            f"{'CuPy' if arrays.call.on_device_arrays else 'NumPy'} arrays"
        )
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{op}: out has shape {tuple(out.shape)}; expected {tuple(shape)}")
    if np.dtype(out.dtype).newbyteorder("=") != np.dtype(dtype):
        raise ValueError(f"{op}: out has dtype {out.dtype}; expected {np.dtype(dtype)}")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError(f"{op}: out is read-only; expected a writeable array")


def finish(arrays: Arrays, result: Array, out: Array | None) -> Array:
    """The backend's ``result`` in the caller's array type and ``arrays.output_format``
    (channels-last results for channels-last inputs), written into ``out`` if given (an
    ``out`` of any strides, channels-last included, is written in place)."""
    result = arrays.call.from_backend(result)
    if out is None:
        return _layout.to_output_format(result, arrays.output_format, caller_xp([result]))
    out[...] = result
    return out


def empty_result(arrays: Arrays, shape: Sequence[int], out: Array | None,
                 bias: Array | None = None) -> Array:
    """The result of a call with nothing to compute: N = 0, or an empty spatial dim of the
    input. Every output is the bias (no input cell reaches it; a zero pad contributes
    zero), or zero without one. No backend work."""
    xp = arrays.call.xp
    result = xp.zeros(shape, dtype=arrays.dtype)
    if bias is not None and result.size:
        result += arrays.prepare(bias).reshape((1, -1) + (1,) * (len(shape) - 2))
    return finish(arrays, result, out)


# ------------------------------------------------------------ convolve/correlate


def _signal_bfloat16(op: str, call: Call, a: Array, v: Array) -> tuple[Array, Array]:
    """bfloat16 in ``convolve``/``correlate``: two bfloat16 sequences stay bfloat16 (the
    backend computes in float32 and rounds once, if it computes bfloat16 at all); one
    bfloat16 sequence mixed with another dtype becomes float32 (exact), and NumPy's rules
    apply from there (bfloat16 with float16 gives float32, with int64 float64)."""
    bf16 = [_dtypes.is_bfloat16(arr.dtype) for arr in (a, v)]
    if all(bf16):
        check_backend_dtype(op, call, _dtypes.BFLOAT16)
    elif any(bf16):
        a, v = (arr.astype(np.float32) if is_bf16 else arr for arr, is_bf16 in zip((a, v), bf16))
    return a, v


def signal_args(op: str, a: Any, v: Any, mode: Any) -> tuple[Call, Array, Array, str]:
    """Check ``mode`` and the sequences as NumPy does; return ``(call, a, v, mode)`` with
    NumPy inputs as native-byte-order arrays."""
    if isinstance(mode, (bool, np.bool_)) or not isinstance(mode, (str, int, np.integer)) \
            or mode not in SIGNAL_MODES:
        raise ValueError(
            f"{op}: mode={_shapes.describe(mode)} must be 'valid', 'same' or 'full' (exactly "
            f"these names, as in numpy.{op})"
        )
    mode = SIGNAL_MODES[mode if isinstance(mode, str) else int(mode)]
    for name, arr in (("a", a), ("v", v)):
        if arr is None:
            raise TypeError(f"{op}: {name} must be a 1-D array_like, got None")
        if isinstance(arr, np.ma.MaskedArray):
            check_array(op, name, arr)  # raises: the mask would be ignored
        if type(arr).__module__.split(".")[0] == "torch":
            raise not_an_array(op, name, arr)
    call = Call([a, v], op=op)
    given = {"a": a, "v": v}
    if not call.on_device_arrays:
        a = np.array(a, copy=None, ndmin=1)
        v = np.array(v, copy=None, ndmin=1)
        for name, arr in (("a", a), ("v", v)):
            # (object arrays of numbers go to NumPy's own loop)
            if (arr.dtype.kind in "USV" and not _dtypes.is_bfloat16(arr.dtype)) or (
                    arr.dtype.kind == "O" and not all(
                        isinstance(e, numbers.Number) for e in arr.flat)):
                raise TypeError(
                    f"{op}: {name} must be a 1-D array_like of numbers, got "
                    f"{_shapes.describe(given[name])}"
                )
        # a non-native byte order ('>f8' on a little-endian machine) becomes native
        a, v = (arr.astype(arr.dtype.newbyteorder("="), copy=False) for arr in (a, v))
    a, v = _signal_bfloat16(op, call, a, v)
    for name, arr in (("a", a), ("v", v)):
        if arr.ndim != 1:
            raise ValueError(f"{op}: {name} must be 1-D, got shape {tuple(arr.shape)}")
        if arr.size == 0:
            raise ValueError(f"{op}: {name} cannot be empty")
    return call, a, v, mode
