"""Small pieces every device-backend operation module uses: launch arithmetic, the padding-mode
codes of the kernels, and the preparation of array arguments."""

from __future__ import annotations

import numpy as np

from ..._launch import data_pointer

#: padding_mode -> the kernels' ``Mode`` template argument (``gpuconv::PaddingMode`` in
#: ``kernels/padding.cuh``).
PADDING_MODE_CODES = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers.

    >>> ceil_div(7, 2), ceil_div(8, 2)
    (4, 4)
    """
    return -(-a // b)


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``).

    >>> pow2_at_least(1), pow2_at_least(5), pow2_at_least(8)
    (1, 8, 8)
    """
    return 1 << max(0, (int(n) - 1).bit_length())


def prepare(xp, array, dtype):
    """``array`` as a C-contiguous ``dtype`` array of ``xp``, aligned to the element size (the
    launch helper checks the alignment). NumPy and CuPy arrays alike: a contiguous but
    misaligned view (``a[1:].view(complex128)``) is copied (fresh allocations are aligned)."""
    dtype = np.dtype(dtype)
    array = xp.ascontiguousarray(array, dtype=dtype)
    if array.size and data_pointer(array) % dtype.itemsize:
        array = array.copy()
    return array
