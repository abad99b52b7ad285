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
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _as_int(value, name: str) -> int:
    """Return ``value`` as a Python int, or raise TypeError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be an int, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}={value!r} must be an int") from None


def as_tuple(value, ndim: int, name: str) -> tuple[int, ...]:
    """Expand an int, or check a sequence of ints, to one entry per spatial dim.

    >>> as_tuple(2, 3, "stride")
    (2, 2, 2)
    >>> as_tuple((1, 2), 2, "dilation")
    (1, 2)
    """
    if isinstance(value, (list, tuple)):
        if len(value) != ndim:
            raise ValueError(
                f"{name}={tuple(value)!r} must have {ndim} entries, one per spatial dim"
            )
        return tuple(_as_int(v, name) for v in value)
    return (_as_int(value, name),) * ndim


def positive_tuple(value, ndim: int, name: str) -> tuple[int, ...]:
    """``as_tuple`` that also requires every entry to be >= 1 (strides, dilations)."""
    result = as_tuple(value, ndim, name)
    if any(v < 1 for v in result):
        raise ValueError(f"{name}={value!r} must be positive (every entry >= 1)")
    return result


def conv_out_size(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dilation: int) -> int:
    """Output length of a convolution along one dim (may be <= 0 for an invalid setup)."""
    return (size + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1


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
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def parse_padding(padding, ndim: int, in_size, kernel, stride, dilation):
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
        raise ValueError(f"padding={padding!r} must be an int, a tuple, 'valid' or 'same'")
    if isinstance(padding, (list, tuple)) and any(isinstance(p, (list, tuple)) for p in padding):
        if len(padding) != ndim or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 for p in padding
        ):
            raise ValueError(
                f"padding={padding!r} must be {ndim} (lo, hi) pairs, one per spatial dim"
            )
        lo = tuple(_as_int(p[0], "padding") for p in padding)
        hi = tuple(_as_int(p[1], "padding") for p in padding)
    else:
        lo = hi = as_tuple(padding, ndim, "padding")
    if any(v < 0 for v in lo + hi):
        raise ValueError(f"padding={padding!r} must be non-negative")
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
    ``output_padding`` (or 'same') extends past the full output.
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
) -> ConvGeometry:
    """Validate and resolve the spatial arguments of a (cross-correlation) convolution.

    >>> g = conv_geometry((10, 9), (3, 3), stride=2, padding="same", dilation=1)
    >>> g.out_size, g.pad_lo, g.pad_hi
    ((5, 5), (0, 1), (1, 1))
    """
    ndim = len(in_size)
    stride = positive_tuple(stride, ndim, "stride")
    dilation = positive_tuple(dilation, ndim, "dilation")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode={padding_mode!r} must be one of {PADDING_MODES}")
    pad_lo, pad_hi = parse_padding(padding, ndim, in_size, kernel, stride, dilation)
    for dim, (size, lo, hi) in enumerate(zip(in_size, pad_lo, pad_hi)):
        if padding_mode == "reflect" and (lo >= size or hi >= size):
            raise ValueError(
                f"padding=({lo}, {hi}) in dim {dim} must be smaller than the input size "
                f"{size} for padding_mode='reflect'"
            )
        if padding_mode == "circular" and (lo > size or hi > size):
            raise ValueError(
                f"padding=({lo}, {hi}) in dim {dim} must be at most the input size "
                f"{size} for padding_mode='circular'"
            )
        if padding_mode == "replicate" and size == 0 and (lo or hi):
            raise ValueError(f"padding_mode='replicate' cannot pad an empty dim {dim}")
    out_size = []
    for dim, args in enumerate(zip(in_size, kernel, stride, pad_lo, pad_hi, dilation)):
        size, k, s, lo, hi, d = args
        extent = d * (k - 1) + 1
        if extent > size + lo + hi:
            raise ValueError(
                f"kernel size {k} (dilated extent {extent}) in dim {dim} is larger than the "
                f"padded input size {size + lo + hi}"
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
) -> ConvGeometry:
    """Validate and resolve the spatial arguments of a transposed convolution.

    >>> g = conv_transpose_geometry((28, 28), (4, 4), stride=2, padding=1,
    ...                             output_padding=0, dilation=1)
    >>> g.out_size, g.pad_lo
    ((56, 56), (1, 1))
    >>> conv_transpose_geometry((5,), (3,), stride=2, padding="same",
    ...                         output_padding=0, dilation=1).out_size
    (10,)
    """
    ndim = len(in_size)
    stride = positive_tuple(stride, ndim, "stride")
    dilation = positive_tuple(dilation, ndim, "dilation")
    output_padding = as_tuple(output_padding, ndim, "output_padding")
    for op, s, d in zip(output_padding, stride, dilation):
        if op < 0 or op >= max(s, d):
            raise ValueError(
                f"output_padding={output_padding!r} must be non-negative and smaller than "
                f"max(stride, dilation) in every dim (stride={stride}, dilation={dilation})"
            )
    full = [(n - 1) * s + d * (k - 1) + 1 for n, k, s, d in zip(in_size, kernel, stride, dilation)]
    if padding == "same":
        if any(output_padding):
            raise ValueError(
                f"output_padding={output_padding!r} must be 0 with padding='same'"
            )
        out_size = tuple(n * s for n, s in zip(in_size, stride))
        # Crop exactly where conv 'same' (input out_size, output in_size) pads.
        pad_lo = tuple(same_pads(o, k, s, d)[0]
                       for o, k, s, d in zip(out_size, kernel, stride, dilation))
    elif padding == "valid":
        pad_lo = (0,) * ndim
        out_size = tuple(f + op for f, op in zip(full, output_padding))
    else:
        if isinstance(padding, str):
            raise ValueError(
                f"padding={padding!r} must be an int, a tuple, 'valid' or 'same'"
            )
        lo, hi = parse_padding(padding, ndim, in_size, kernel, stride, dilation)
        pad_lo = lo
        out_size = tuple(f - a - b + op for f, a, b, op in zip(full, lo, hi, output_padding))
        for dim, o in enumerate(out_size):
            if o < 1:
                raise ValueError(
                    f"padding={padding!r} leaves no output in dim {dim} "
                    f"(transposed output size {o})"
                )
    pad_hi = tuple(f - lo - o for f, lo, o in zip(full, pad_lo, out_size))
    return ConvGeometry(
        tuple(in_size), tuple(kernel), stride, dilation, tuple(pad_lo), pad_hi,
        tuple(out_size), groups, "zeros",
    )


def transpose_as_conv(geom: ConvGeometry) -> ConvGeometry:
    """The ``conv`` geometry whose adjoint ``geom`` (a transposed convolution) is.

    ``conv_transpose(y, w)`` with ``geom`` is the adjoint of ``conv(x, w)`` with the returned
    geometry, where ``x`` has ``geom.out_size`` and ``y`` has ``geom.in_size``.
    """
    return ConvGeometry(
        geom.out_size, geom.kernel, geom.stride, geom.dilation, geom.pad_lo, geom.pad_hi,
        geom.in_size, geom.groups, "zeros",
    )
