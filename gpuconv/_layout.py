"""Memory formats: channels-last detection, the copy decisions, and a copy counter.

This module owns what gpuconv knows about the memory layout of its array arguments
(docs/layouts.md has the user-facing rules):

* :func:`memory_format` classifies an (N, C, *spatial) array as ``"contiguous"`` (NCHW),
  ``"channels_last"`` (an (N, C, H, W)-shaped array with NHWC strides, or NDHWC for 3-D: a
  torch ``channels_last``/``channels_last_3d`` tensor, or ``buf.transpose(0, 3, 1, 2)`` of an
  NHWC buffer) or ``"other"``, with PyTorch's rules (``Tensor.suggest_memory_format``);
* :func:`layout_plan` says, for one backend method and geometry, whether a channels-last
  ``x`` is read in place or copied to NCHW once, and in which format the result comes back
  (what ``gpuconv.plan()`` reports);
* :func:`as_channels_last` / :func:`to_output_format` write results in the promised format;
* :data:`COPIES` counts the transposing copies of channels-last arrays (inputs copied to
  NCHW, outputs copied to channels-last), and :func:`count_copies` reads it for one block.

A backend reads a channels-last ``x`` in place when it has a ``reads_channels_last(method,
geom)`` method that says so (the NumPy backend: the 1x1 conv and depthwise_conv), and only
when ``x`` is a *dense* channels-last array (its NHWC view C-contiguous); every other
array the backend receives is C-contiguous (:meth:`gpuconv._validate.Arrays.prepare`).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

CONTIGUOUS = "contiguous"
CHANNELS_LAST = "channels_last"
OTHER = "other"

#: Transposing copies made since import, by kind: ``"input_to_nchw"`` (a channels-last array
#: prepared C-contiguous for a backend) and ``"output_to_channels_last"`` (an NCHW result
#: rewritten channels-last). Read one block's with :func:`count_copies`.
COPIES: collections.Counter = collections.Counter()


@contextlib.contextmanager
def count_copies() -> Iterator[collections.Counter]:
    """The transposing copies made inside a ``with`` block (a Counter, filled on exit).

    >>> import numpy as np, gpuconv
    >>> x = np.ones((1, 2, 3, 4, 3)).transpose(0, 4, 1, 2, 3)[:, :, 0]  # an NHWC view
    >>> memory_format(x)
    'channels_last'
    >>> with count_copies() as copies:
    ...     y = gpuconv.depthwise_conv(x, np.ones((3, 1, 2, 2)))
    >>> dict(copies), memory_format(y)
    ({}, 'channels_last')
    """
    before = COPIES.copy()
    counts: collections.Counter = collections.Counter()
    try:
        yield counts
    finally:
        counts.update(COPIES - before)


def _strides_like_channels_last(shape, strides) -> bool:
    """PyTorch's ``is_channels_last_strides_2d_s4``/``_3d_s5`` (c10/core/MemoryFormat.h),
    on any consistent stride unit (bytes for NumPy/CuPy): the dims in NHWC order (C, W, H, N;
    C, W, H, D, N in 3-D) must have non-decreasing strides, each at least the previous one
    times its size, with the ambiguous cases resolved as PyTorch does (a stride-0 C is not
    channels-last; N's stride equal to C's is not either)."""
    order = (1, 3, 2, 0) if len(shape) == 4 else (1, 4, 3, 2, 0)
    if strides[1] == 0:
        return False
    least = 0
    for d in order:
        if shape[d] == 0 or strides[d] < least:
            return False
        if d == 0 and least == strides[1]:
            return False
        least = strides[d]
        if shape[d] > 1:
            least *= shape[d]
    return True


def memory_format(a: Any) -> str:
    """``"channels_last"``, ``"contiguous"`` or ``"other"``: the memory format of ``a``.

    ``"channels_last"``: a 4-D or 5-D array whose strides are like NHWC (NDHWC) by PyTorch's
    rule (``suggest_memory_format``; not necessarily dense, e.g. a slice of one). This is
    decided first, so the ambiguous arrays that are both C-contiguous and channels-last
    dense (C == 1, or every spatial size 1) follow PyTorch too: the strides of their size-1
    dims decide (``torch.empty(N, 1, H, W)`` is contiguous, its
    ``.contiguous(memory_format=torch.channels_last)`` is channels-last). 1-D arrays
    (N, C, L) have no channels-last form (PyTorch has none): an (N, L, C) buffer's
    ``transpose(0, 2, 1)`` is ``"other"``. ``"contiguous"``: C-contiguous. ``"other"``: any
    other strides (copied once to C-contiguous before a backend reads it).

    >>> import numpy as np
    >>> memory_format(np.zeros((2, 3, 4, 5)))
    'contiguous'
    >>> memory_format(np.zeros((2, 4, 5, 3)).transpose(0, 3, 1, 2))
    'channels_last'
    >>> memory_format(np.zeros((2, 4, 5, 3)).transpose(0, 3, 2, 1))
    'other'
    """
    shape = tuple(a.shape)
    if len(shape) in (4, 5) and _strides_like_channels_last(shape, tuple(a.strides)):
        return CHANNELS_LAST
    return CONTIGUOUS if a.flags.c_contiguous else OTHER


def channels_last_view(a: Any) -> Any:
    """The (N, *spatial, C) view of an (N, C, *spatial) array (no copy)."""
    return a.transpose(0, *range(2, a.ndim), 1)


def is_dense_channels_last(a: Any) -> bool:
    """Whether ``a`` is channels-last and its (N, *spatial, C) view C-contiguous (the arrays
    a backend may read in place)."""
    return memory_format(a) == CHANNELS_LAST and channels_last_view(a).flags.c_contiguous


def as_channels_last(a: Any, xp: Any) -> Any:
    """``a`` (N, C, *spatial) with dense channels-last strides: itself if it has them, else
    one transposing copy (counted as ``"output_to_channels_last"``)."""
    if a.ndim not in (4, 5) or is_dense_channels_last(a):
        return a
    COPIES["output_to_channels_last"] += 1
    # A fresh buffer, not ascontiguousarray: that returns an already C-contiguous view as it
    # is, and the strides NumPy leaves on its size-1 dims can fail PyTorch's channels-last rule
    # (e.g. (1, 3, 1, 1, 1) with every stride 8 bytes is contiguous but not channels-last).
    view = channels_last_view(a)
    nhwc = xp.empty(view.shape, dtype=a.dtype)
    nhwc[...] = view
    return nhwc.transpose(0, a.ndim - 1, *range(1, a.ndim - 1))


def to_output_format(a: Any, fmt: str, xp: Any) -> Any:
    """A result ``a`` in the format ``fmt`` promises: channels-last for ``"channels_last"``
    (:func:`as_channels_last`), as it is otherwise (backends return C-contiguous results)."""
    return as_channels_last(a, xp) if fmt == CHANNELS_LAST else a


def reads_in_place(backend: Any, method: str, x: Any, geom: Any) -> bool:
    """Whether ``backend.method`` reads ``x`` as it is, without a transposing copy: ``x`` is
    dense channels-last and the backend's ``reads_channels_last(method, geom)`` says yes
    (backends without that method read only C-contiguous arrays)."""
    reads = getattr(backend, "reads_channels_last", None)
    return (reads is not None and not x.flags.c_contiguous and is_dense_channels_last(x)
            and bool(reads(method, geom)))


@dataclass(frozen=True)
class LayoutPlan:
    """What one call does with its input's layout (see :func:`layout_plan`).

    Attributes
    ----------
    input_format : str
        :func:`memory_format` of ``x``.
    copies_input : bool
        True when ``x`` is copied once to C-contiguous (NCHW) before the backend reads it.
    output_format : str
        The result's format: ``"channels_last"`` when ``x`` is channels-last, else
        ``"contiguous"``.
    note : str
        One line saying the above, for ``gpuconv.plan()``.
    """

    input_format: str
    copies_input: bool
    output_format: str
    note: str


def layout_plan(backend: Any, method: str, x: Any, geom: Any) -> LayoutPlan:
    """The layout decision of ``backend.method`` (a :class:`gpuconv.backends._contract.Backend`
    method name, e.g. ``"conv"``) on input ``x`` with backend geometry ``geom``.

    >>> import numpy as np
    >>> from gpuconv import _shapes
    >>> from gpuconv._dispatch import get_backend
    >>> x = np.zeros((1, 5, 5, 8)).transpose(0, 3, 1, 2)
    >>> geom = _shapes.conv_geometry((5, 5), (3, 3), stride=1, padding=1, dilation=1, groups=1)
    >>> layout_plan(get_backend("numpy"), "conv", x, geom).note
    'x channels_last: copied once to NCHW (numpy conv reads NCHW here); result channels_last'
    """
    fmt = memory_format(x)
    out_fmt = CHANNELS_LAST if fmt == CHANNELS_LAST else CONTIGUOUS
    name = getattr(backend, "name", type(backend).__name__)
    if x.flags.c_contiguous:
        copies, how = False, "read in place"
    elif reads_in_place(backend, method, x, geom):
        copies, how = False, "read in place (NHWC)"
    else:
        copies = True
        how = f"copied once to NCHW ({name} {method} reads NCHW here)"
    return LayoutPlan(fmt, copies, out_fmt, f"x {fmt}: {how}; result {out_fmt}")
