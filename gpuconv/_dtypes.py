"""The dtype tables and rules every layer shares: the kernels' type codes and the
accumulation dtype.

This module owns

* :data:`TYPE_CODES`, the type code of every kernel parameter element type (``"f32"``,
  ``"i64"``, ...) and its NumPy dtype. The kernel registry (:mod:`gpuconv._kernels`) reads
  kernel signatures into these codes, the launch helper (:mod:`gpuconv._launch`) converts
  arguments with them, and the emulator's ctypes binding (``gpuconv/_emulator/_abi.py``)
  passes arguments by them;
* :func:`accumulation_dtype`, the one float16 rule: float16 is computed (accumulated) in
  float32 and rounded once, on every backend (the kernels' ``gpuconv::acc_t``).

It imports nothing but NumPy: the emulator's checked-mode worker loads it by path, without
importing gpuconv, and the CUDA path imports it without loading the emulator.
"""

from __future__ import annotations

import numpy as np

#: Type code (as in ``EmuFunction.params`` and :func:`gpuconv._kernels.signature`) -> NumPy
#: dtype. A new kernel dtype gets its code here, its C++ name in
#: :data:`gpuconv._kernels.CXX_TYPES`, and a branch in ``gpuconv/_emulator/module.cpp``.
TYPE_CODES: dict[str, np.dtype] = {
    "i8": np.dtype(np.int8),
    "u8": np.dtype(np.uint8),
    "i16": np.dtype(np.int16),
    "u16": np.dtype(np.uint16),
    "i32": np.dtype(np.int32),
    "u32": np.dtype(np.uint32),
    "i64": np.dtype(np.int64),
    "u64": np.dtype(np.uint64),
    "f16": np.dtype(np.float16),
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
    "c64": np.dtype(np.complex64),
    "c128": np.dtype(np.complex128),
    "bool": np.dtype(np.bool_),
}

try:  # bfloat16 needs ml_dtypes (an optional dependency: the ``bf16`` extra)
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
    BFLOAT16 = None
else:
    #: NumPy's bfloat16 dtype (``ml_dtypes.bfloat16``), or None when ml_dtypes is missing
    BFLOAT16 = np.dtype(_ml_dtypes.bfloat16)
    TYPE_CODES["bf16"] = BFLOAT16


def accumulation_dtype(dtype) -> np.dtype:
    """The dtype that ``dtype`` is computed in: float32 for float16, else ``dtype`` itself
    (the kernels' ``gpuconv::acc_t<T>``; the NumPy backend and the GEMMs follow it too).

    >>> accumulation_dtype(np.float16), accumulation_dtype("float64")
    (dtype('float32'), dtype('float64'))
    """
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype
