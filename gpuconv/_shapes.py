"""Shape and padding arithmetic: the one place where output sizes are computed.

Every function here is pure: integers and tuples in, integers and tuples out. The public
API (`gpuconv._api`) turns user arguments into a geometry object with these functions; the
backends (NumPy, emulator, CUDA) only read the geometry, so they all agree on every size.

Conventions (the same as ``torch.nn.functional`` unless noted):

* ``conv`` output size per spatial dim::

      out = (size + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1

* ``padding="same"`` on ``conv`` gives ``ceil(size / stride)`` outputs for every stride
  (PyTorch allows only stride 1). The total pad is
  ``max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)``, smaller half at the low end.
* ``conv_transpose`` output size::

      out = (size - 1) * stride - pad_lo - pad_hi + dilation * (k - 1) + output_padding + 1

  and ``padding="same"`` gives ``size * stride`` outputs, cropped from the full transposed
  output exactly where ``conv`` with ``"same"`` pads, so the two are adjoint.

Every derived size lives here: the dilated kernel's extent (:func:`full_extent`), the cells
``n`` windows cover (:func:`span`), the conv-to-transposed geometry of an input gradient
(:func:`conv_as_transpose`) and back (:func:`transpose_as_conv`), :func:`is_pointwise`, the
3-D view the kernels take (:func:`as_3d`, :class:`Geometry3d`) and the largest position a
kernel computes (:meth:`Geometry3d.reach`, for the index-type choice).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Sequence

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

#: Strides and dilations from this value on are not computed (see :func:`backend_geometry`).
INDEX_LIMIT = 2**31

#: How the spatial dims are named in messages, by the number of spatial dims (as in PyTorch's
#: shape legends: (N, C, L), (N, C, H, W), (N, C, D, H, W)).
SPATIAL_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def _prefix(op: str) -> str:
    """``"conv2d: "`` for ``op="conv2d"``; nothing for ``op=""`` (a bare helper call)."""
    return f"{op}: " if op else ""


def spatial_dim(dim: int, ndim: int) -> str:
    """How messages name spatial dim ``dim`` of ``ndim``: never a bare "dim 0", which reads
    like the batch axis.

    >>> spatial_dim(0, 2), spatial_dim(2, 3), spatial_dim(0, 1)
    ('spatial dim 0 (H)', 'spatial dim 2 (W)', 'spatial dim 0 (L)')
    """
    names = SPATIAL_NAMES.get(ndim)
    return f"spatial dim {dim} ({names[dim]})" if names else f"spatial dim {dim}"


def describe(value, limit: int = 60) -> str:
    """A short text for ``value`` in an error message: an array-like (anything with a
    ``shape`` and a ``dtype``) by its type, shape and dtype, never its values; anything else
    by its ``repr``, cut to ``limit`` characters.

    >>> import numpy as np
    >>> describe(np.zeros((2, 3)))
    'numpy.ndarray of shape (2, 3) and dtype float64'
    >>> describe((1, 2)), describe("same")
    ('(1, 2)', "'same'")
    """
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type):
        kind = type(value)
        try:
            shape = tuple(value.shape)
        except TypeError:
            shape = value.shape
        return f"{kind.__module__}.{kind.__name__} of shape {shape} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)) and any(
        hasattr(v, "shape") and getattr(v, "ndim", 0) for v in value
    ):
        inner = ", ".join(describe(v, limit) for v in value)
        return f"{type(value).__name__} of ({inner})"
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_int(value, name: str, op: str = "") -> int:
    """Return ``value`` as a Python int, or raise TypeError naming ``name`` (after ``op``)."""
    if isinstance(value, bool):
        raise TypeError(f"{_prefix(op)}{name}={value!r} must be an int, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{_prefix(op)}{name}={describe(value)} must be an int") from None


def as_tuple(value, ndim: int, name: str, op: str = "") -> tuple[int, ...]:
    """Expand an int, or check a sequence of ints, to one entry per spatial dim.

    >>> as_tuple(2, 3, "stride")
    (2, 2, 2)
    >>> as_tuple((1, 2), 2, "dilation")
    (1, 2)
    """
    if isinstance(value, (list, tuple)):
        if len(value) != ndim:
            raise ValueError(
                f"{_prefix(op)}{name}={describe(tuple(value))} must have {ndim} "
                f"entr{'y' if ndim == 1 else 'ies'}, one per spatial dim"
            )
        return tuple(as_int(v, name, op) for v in value)
    return (as_int(value, name, op),) * ndim


def positive_tuple(value, ndim: int, name: str, op: str = "") -> tuple[int, ...]:
    """``as_tuple`` that also requires every entry to be >= 1 (strides, dilations)."""
    result = as_tuple(value, ndim, name, op)
    if any(v < 1 for v in result):
        raise ValueError(
            f"{_prefix(op)}{name}={describe(value)} must be positive (every entry >= 1)"
        )
    return result


def full_extent(k: int, dilation: int) -> int:
    """The cells a kernel of ``k`` taps spans at ``dilation``: ``dilation * (k - 1) + 1``.

    >>> full_extent(3, 1), full_extent(3, 2), full_extent(1, 5)
    (3, 5, 1)
    """
    return dilation * (k - 1) + 1


def span(count: int, k: int, stride: int, dilation: int) -> int:
    """The cells ``count`` windows of a ``k``-tap kernel cover, ``stride`` apart: the padded
    input of ``count`` conv outputs, or the full output of a transposed convolution of
    ``count`` inputs, ``(count - 1) * stride + full_extent(k, dilation)``.

    >>> span(5, 3, 2, 1)   # 5 outputs of a 3-tap kernel at stride 2 read 11 cells
    11
    """
    return (count - 1) * stride + full_extent(k, dilation)


def conv_out_size(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dilation: int) -> int:
    """Output length of a convolution along one dim (may be <= 0 for an invalid setup)."""
    return (size + pad_lo + pad_hi - full_extent(k, dilation)) // stride + 1


def conv_transpose_out_size(size: int, k: int, stride: int, pad_lo: int, pad_hi: int,
                            dilation: int, output_padding: int = 0) -> int:
    """Output length of a transposed convolution along one dim: the full output
    (:func:`span`) less the crops, plus ``output_padding``.

    >>> conv_transpose_out_size(28, 4, 2, 1, 1, 1)
    56
    """
    return span(size, k, stride, dilation) - pad_lo - pad_hi + output_padding


def same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """(pad_lo, pad_hi) for ``padding="same"``: ``ceil(size / stride)`` outputs.

    >>> same_pads(10, 3, 1, 1)
    (1, 1)
    >>> same_pads(10, 4, 2, 1)   # out 5: total pad (5-1)*2 + 4 - 10 = 2
    (1, 1)
    >>> same_pads(7, 2, 1, 1)    # an odd total puts the smaller half low
    (0, 1)
    """
    out = -(-size // stride)
    total = max(span(out, k, stride, dilation) - size, 0)
    return total // 2, total - total // 2


def parse_padding(padding, ndim: int, in_size, kernel, stride, dilation, op: str = ""):
    """Normalise every accepted form of ``padding`` to ``(pad_lo, pad_hi)`` tuples.

    Accepted: an int; a sequence of ints (one per dim); a sequence of ``(lo, hi)`` pairs
    (one per dim); ``"valid"`` (no padding); ``"same"`` (see module docstring).
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * ndim, (0,) * ndim
        if padding == "same":
            pairs = [same_pads(*args) for args in zip(in_size, kernel, stride, dilation)]
            return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
        raise ValueError(
            f"{_prefix(op)}padding={describe(padding)} must be an int, a tuple, 'valid' or "
            f"'same'"
        )
    if isinstance(padding, (list, tuple)) and any(isinstance(p, (list, tuple)) for p in padding):
        if len(padding) != ndim or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 for p in padding
        ):
            raise ValueError(
                f"{_prefix(op)}padding={describe(padding)} must be {ndim} (lo, hi) pair"
                f"{'s' if ndim > 1 else ''}, one per spatial dim"
            )
        lo = tuple(as_int(p[0], "padding", op) for p in padding)
        hi = tuple(as_int(p[1], "padding", op) for p in padding)
    else:
        lo = hi = as_tuple(padding, ndim, "padding", op)
    if any(v < 0 for v in lo + hi):
        raise ValueError(f"{_prefix(op)}padding={describe(padding)} must be non-negative")
    return lo, hi


@dataclass(frozen=True)
class ConvGeometry:
    """Everything a backend needs to know about the spatial side of a convolution.

    For ``conv``/``depthwise_conv``/``deform_conv2d``: input ``in_size``, kernel, stride,
    dilation, padding ``pad_lo``/``pad_hi`` (in ``padding_mode``), output ``out_size``.

    For ``conv_transpose``: ``in_size`` is the transposed op's input (the small one),
    ``out_size`` its output, and ``pad_lo`` is the crop: output index ``o`` sits at
    position ``o + pad_lo`` of the full transposed output ``(in - 1) * stride +
    dilation * (k - 1) + 1``. ``pad_hi`` is the high-end crop, negative when
    ``output_padding`` (or 'same') extends past the full output. ``transposed`` is True for
    these geometries (:func:`conv_transpose_geometry`, :func:`conv_as_transpose`).
    """

    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad_lo: tuple[int, ...]
    pad_hi: tuple[int, ...]
    out_size: tuple[int, ...]
    groups: int = 1
    padding_mode: str = "zeros"
    transposed: bool = False

    @property
    def ndim(self) -> int:
        return len(self.in_size)

    @property
    def padded_size(self) -> tuple[int, ...]:
        return tuple(s + lo + hi for s, lo, hi in zip(self.in_size, self.pad_lo, self.pad_hi))


def conv_geometry(
    in_size: Sequence[int],
    kernel: Sequence[int],
    *,
    stride,
    padding,
    dilation,
    groups: int = 1,
    padding_mode: str = "zeros",
    op: str = "",
) -> ConvGeometry:
    """Validate and resolve the spatial arguments of a (cross-correlation) convolution.

    ``op``, the public function's name, starts every error message.

    >>> g = conv_geometry((10, 9), (3, 3), stride=2, padding="same", dilation=1)
    >>> g.out_size, g.pad_lo, g.pad_hi
    ((5, 5), (0, 1), (1, 1))
    """
    ndim = len(in_size)
    where = _prefix(op)
    stride = positive_tuple(stride, ndim, "stride", op)
    dilation = positive_tuple(dilation, ndim, "dilation", op)
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ValueError(
            f"{where}padding_mode={describe(padding_mode)} must be one of {PADDING_MODES}"
        )
    pad_lo, pad_hi = parse_padding(padding, ndim, in_size, kernel, stride, dilation, op)
    # name where a pad came from: 'same' computes pads the user never wrote
    given = f"padding={describe(padding)} gives"
    for dim, (size, lo, hi) in enumerate(zip(in_size, pad_lo, pad_hi)):
        axis = spatial_dim(dim, ndim)
        if padding_mode == "reflect" and (lo >= size or hi >= size):
            raise ValueError(
                f"{where}{given} pads ({lo}, {hi}) in {axis}; each must be smaller than the "
                f"input size {size} for padding_mode='reflect'"
            )
        if padding_mode == "circular" and (lo > size or hi > size):
            raise ValueError(
                f"{where}{given} pads ({lo}, {hi}) in {axis}; each must be at most the input "
                f"size {size} for padding_mode='circular'"
            )
        if padding_mode == "replicate" and size == 0 and (lo or hi):
            raise ValueError(
                f"{where}padding_mode='replicate' cannot pad {axis}, which is empty "
                f"({given} pads ({lo}, {hi}))"
            )
    out_size = []
    for dim, args in enumerate(zip(in_size, kernel, stride, pad_lo, pad_hi, dilation)):
        size, k, s, lo, hi, d = args
        extent = full_extent(k, d)
        if extent > size + lo + hi:
            raise ValueError(
                f"{where}kernel size {k} (dilated extent {extent}) in "
                f"{spatial_dim(dim, ndim)} is larger than the padded input size "
                f"{size + lo + hi} (input size {size}; {given} pads ({lo}, {hi}))"
            )
        out_size.append(conv_out_size(size, k, s, lo, hi, d))
    return ConvGeometry(
        tuple(in_size), tuple(kernel), stride, dilation, pad_lo, pad_hi,
        tuple(out_size), groups, padding_mode,
    )


def conv_transpose_geometry(
    in_size: Sequence[int],
    kernel: Sequence[int],
    *,
    stride,
    padding,
    output_padding,
    dilation,
    groups: int = 1,
    op: str = "",
) -> ConvGeometry:
    """Validate and resolve the spatial arguments of a transposed convolution.

    ``op``, the public function's name, starts every error message.

    >>> g = conv_transpose_geometry((28, 28), (4, 4), stride=2, padding=1,
    ...                             output_padding=0, dilation=1)
    >>> g.out_size, g.pad_lo
    ((56, 56), (1, 1))
    >>> conv_transpose_geometry((5,), (3,), stride=2, padding="same",
    ...                         output_padding=0, dilation=1).out_size
    (10,)
    """
    ndim = len(in_size)
    where = _prefix(op)
    stride = positive_tuple(stride, ndim, "stride", op)
    dilation = positive_tuple(dilation, ndim, "dilation", op)
    output_padding = as_tuple(output_padding, ndim, "output_padding", op)
    for op_pad, s, d in zip(output_padding, stride, dilation):
        if op_pad < 0 or op_pad >= max(s, d):
            raise ValueError(
                f"{where}output_padding={output_padding!r} must be non-negative and smaller "
                f"than max(stride, dilation) in every spatial dim (stride={stride}, "
                f"dilation={dilation})"
            )
    full = [span(n, k, s, d) for n, k, s, d in zip(in_size, kernel, stride, dilation)]
    if isinstance(padding, str) and padding == "same":
        if any(output_padding):
            raise ValueError(
                f"{where}output_padding={output_padding!r} must be 0 with padding='same'"
            )
        out_size = tuple(n * s for n, s in zip(in_size, stride))
        # Crop exactly where conv 'same' (input out_size, output in_size) pads.
        pad_lo = tuple(same_pads(o, k, s, d)[0]
                       for o, k, s, d in zip(out_size, kernel, stride, dilation))
    elif isinstance(padding, str) and padding == "valid":
        pad_lo = (0,) * ndim
        out_size = tuple(f + op_pad for f, op_pad in zip(full, output_padding))
    else:
        if isinstance(padding, str):
            raise ValueError(
                f"{where}padding={describe(padding)} must be an int, a tuple, 'valid' or "
                f"'same'"
            )
        lo, hi = parse_padding(padding, ndim, in_size, kernel, stride, dilation, op)
        pad_lo = lo
        out_size = tuple(f - a - b + op_pad
                         for f, a, b, op_pad in zip(full, lo, hi, output_padding))
        for dim, o in enumerate(out_size):
            if o < 1:
                raise ValueError(
                    f"{where}padding={describe(padding)} leaves no output in "
                    f"{spatial_dim(dim, ndim)} (transposed output size {o})"
                )
    pad_hi = tuple(f - lo - o for f, lo, o in zip(full, pad_lo, out_size))
    return ConvGeometry(
        tuple(in_size), tuple(kernel), stride, dilation, tuple(pad_lo), pad_hi,
        tuple(out_size), groups, "zeros", transposed=True,
    )


def backend_geometry(geom: ConvGeometry, *, op: str = "") -> ConvGeometry:
    """The geometry a backend computes ``geom`` with: the same sizes and pads, with every
    stride and dilation that cannot matter made as small as the geometry's own relations
    allow.

    A stride matters only along a dim with more than one output (for a transposed
    convolution: more than one input), a dilation only along a dim whose kernel has more
    than one tap. Such strides and dilations may be huge (PyTorch accepts ``stride=2**31``
    on a 5-long input: one output), but the backends index with 32-bit ints where they can,
    and the NumPy backend's buffers grow with the stride. They are replaced by the smallest
    value that keeps every relation between the sizes a backend may rely on: for ``conv``,
    ``out == (padded - extent) // stride + 1`` (stride ``padded - extent + 1``, dilation 1);
    for ``conv_transpose``, ``output_padding < max(stride, dilation)`` (at most
    ``out + pad_lo + 1``, more than any output padding). A stride or dilation of
    ``INDEX_LIMIT`` (2**31) or more that does matter needs more than 2**31 padded cells along
    its dim: ValueError naming it. Which relations hold is ``geom.transposed``'s to say.

    >>> g = conv_geometry((5,), (3,), stride=2**31, padding=0, dilation=1)
    >>> g.out_size, backend_geometry(g).stride
    ((1,), (3,))
    """
    transposed = geom.transposed
    stride, dilation = list(geom.stride), list(geom.dilation)
    for dim in range(geom.ndim):
        k, out, lo = geom.kernel[dim], geom.out_size[dim], geom.pad_lo[dim]
        if transposed:
            cap = out + lo + 1
            if geom.in_size[dim] == 1:
                stride[dim] = min(stride[dim], cap)
            if k == 1:
                dilation[dim] = min(dilation[dim], cap)
        else:
            if out == 1:
                extent = full_extent(k, dilation[dim])
                stride[dim] = min(stride[dim], geom.padded_size[dim] - extent + 1)
            if k == 1:
                dilation[dim] = 1
    for dim, (s, d) in enumerate(zip(stride, dilation)):
        for name, v, why in (
            ("stride", s, f"more than one {'input' if transposed else 'output'} along it"),
            ("dilation", d, f"a kernel of size {geom.kernel[dim]} along it"),
        ):
            if v >= INDEX_LIMIT:
                raise ValueError(
                    f"{_prefix(op)}{name}={v} in {spatial_dim(dim, geom.ndim)} must be below "
                    f"2**31 where it matters (here: {why}); "
                    f"such a call needs more than 2**31 padded input cells along that dim"
                )
    stride, dilation = tuple(stride), tuple(dilation)
    if stride == geom.stride and dilation == geom.dilation:
        return geom
    return replace(geom, stride=stride, dilation=dilation)


def transpose_as_conv(geom: ConvGeometry) -> ConvGeometry:
    """The ``conv`` geometry whose adjoint ``geom`` (a transposed convolution) is.

    ``conv_transpose(y, w)`` with ``geom`` is the adjoint of ``conv(x, w)`` with the returned
    geometry, where ``x`` has ``geom.out_size`` and ``y`` has ``geom.in_size``.
    """
    return ConvGeometry(
        geom.out_size, geom.kernel, geom.stride, geom.dilation, geom.pad_lo, geom.pad_hi,
        geom.in_size, geom.groups, "zeros",
    )


def conv_as_transpose(geom: ConvGeometry, crop: Sequence[int],
                      out_size: Sequence[int]) -> ConvGeometry:
    """The transposed-convolution geometry that maps ``geom``'s output (a ``conv``) back onto
    ``out_size`` positions, output index ``o`` at full position ``o + crop``: the geometry of
    a conv's input gradient. ``crop = geom.pad_lo``, ``out_size = geom.in_size`` gives the
    gradient of the input itself (zeros padding); ``crop = 0``, ``out_size =
    geom.padded_size`` that of the padded input (to be folded, other padding modes).

    >>> g = conv_geometry((9,), (3,), stride=2, padding=1, dilation=1)
    >>> t = conv_as_transpose(g, g.pad_lo, g.in_size)
    >>> t.in_size, t.out_size, t.pad_lo, t.pad_hi
    ((5,), (9,), (1,), (1,))
    """
    full = tuple(span(n, k, s, d) for n, k, s, d in
                 zip(geom.out_size, geom.kernel, geom.stride, geom.dilation))
    return ConvGeometry(
        tuple(geom.out_size), tuple(geom.kernel), tuple(geom.stride), tuple(geom.dilation),
        tuple(crop), tuple(f - c - o for f, c, o in zip(full, crop, out_size)), tuple(out_size),
        geom.groups, "zeros", transposed=True,
    )


def is_pointwise(geom: ConvGeometry) -> bool:
    """A 1x1 kernel at stride 1 without padding: ``conv`` (and its input gradient) is then a
    matrix product per group.

    >>> is_pointwise(conv_geometry((7, 7), (1, 1), stride=1, padding=0, dilation=3))
    True
    """
    return (all(k == 1 for k in geom.kernel) and all(s == 1 for s in geom.stride)
            and not any(geom.pad_lo) and not any(geom.pad_hi))


@dataclass(frozen=True)
class Geometry3d:
    """A :class:`ConvGeometry` as the 3-D kernels see it: every tuple has 3 entries (D, H, W),
    1-D/2-D padded at the front with size 1, kernel 1, stride 1, dilation 1, padding 0."""

    in_size: tuple[int, int, int]
    out_size: tuple[int, int, int]
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    dilation: tuple[int, int, int]
    pad_lo: tuple[int, int, int]
    pad_hi: tuple[int, int, int] = (0, 0, 0)

    @property
    def padded_size(self) -> tuple[int, int, int]:
        return tuple(s + lo + hi for s, lo, hi in zip(self.in_size, self.pad_lo, self.pad_hi))

    def args(self) -> tuple[int, ...]:
        """in (3), out (3), kernel (3), stride (3), dilation (3), pad_lo (3): the kernels'
        geometry parameters, in their order."""
        return (*self.in_size, *self.out_size, *self.kernel, *self.stride, *self.dilation,
                *self.pad_lo)

    def tap_step(self) -> tuple[int, int, int]:
        """Per dim, ``stride / gcd(stride, dilation)``: a transposed convolution's taps that
        reach one output position are this many apart (``conv_transpose3d``'s ``k_step``)."""
        return tuple(s // math.gcd(s, d) for s, d in zip(self.stride, self.dilation))

    def reach(self, counts: Sequence[int] | None = None) -> int:
        """The largest position (plus one) that ``counts`` windows (default: one per output)
        touch, offset by ``pad_lo``: a conv's padded input positions, or a transposed conv's
        full-output positions with ``counts = in_size`` and ``pad_lo`` its crop. Kernels
        compute such positions beyond the arrays' own extents (large zero padding), so the
        index-type choice (:func:`gpuconv._kernels.index_dtype`) bounds them with this.

        >>> as_3d(conv_geometry((9,), (3,), stride=2, padding=4, dilation=1)).reach()
        21
        """
        counts = self.out_size if counts is None else counts
        return max(span(n, k, s, d) + p for n, k, s, d, p in
                   zip(counts, self.kernel, self.stride, self.dilation, self.pad_lo))


def as_3d(geom: ConvGeometry) -> Geometry3d:
    """The 3-D view of ``geom`` (1 to 3 spatial dims).

    >>> as_3d(conv_geometry((9,), (3,), stride=2, padding=1, dilation=1))
    Geometry3d(in_size=(1, 1, 9), out_size=(1, 1, 5), kernel=(1, 1, 3), stride=(1, 1, 2), \
dilation=(1, 1, 1), pad_lo=(0, 0, 1), pad_hi=(0, 0, 1))
    """
    lead = 3 - geom.ndim
    if lead < 0:
        raise ValueError(f"{geom.ndim} spatial dims; the kernels handle 1 to 3")

    def lift(values, fill):
        return (fill,) * lead + tuple(int(v) for v in values)

    return Geometry3d(
        lift(geom.in_size, 1), lift(geom.out_size, 1), lift(geom.kernel, 1),
        lift(geom.stride, 1), lift(geom.dilation, 1), lift(geom.pad_lo, 0),
        lift(geom.pad_hi, 0),
    )
