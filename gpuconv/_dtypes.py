"""The dtype tables and rules every layer shares: the kernels' type codes, the accumulation
dtype and the result dtype of mixed inputs.

This module owns

* :data:`TYPE_CODES`, the type code of every kernel parameter element type (``"f32"``,
  ``"i64"``, ...) and its NumPy dtype. The kernel registry (:mod:`gpuconv._kernels`) reads
  kernel signatures into these codes, the launch helper (:mod:`gpuconv._launch`) converts
  arguments with them, and the emulator's ctypes binding (``gpuconv/_emulator/_abi.py``)
  passes arguments by them;
* :func:`accumulation_dtype`, the one 16-bit rule: float16 and bfloat16 are computed
  (accumulated) in float32 and rounded once, on every backend (the kernels'
  ``gpuconv::acc_t``);
* :data:`BFLOAT16` and :func:`require_bfloat16`: bfloat16 is ``ml_dtypes.bfloat16``, an
  optional dependency (the ``bf16`` extra);
* :func:`result_type`, the result dtype of a call's arrays: ``numpy.result_type``, except
  that bfloat16 mixed with any other float dtype computes as float32 would (bfloat16 with
  float16 gives float32, where NumPy finds no common dtype; see ``docs/dtypes.md``).

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

#: The dtypes every backend computes the conv family in.
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
#: The dtypes the conv family accepts: FLOAT_DTYPES, and bfloat16 with ml_dtypes (only the
#: NumPy backend computes it so far: its ``dtypes`` attribute).
CONV_DTYPES = FLOAT_DTYPES + (() if BFLOAT16 is None else (BFLOAT16,))

#: The message's end when bfloat16 is asked for without ml_dtypes.
BF16_EXTRA_HINT = ("bfloat16 needs the optional dependency ml_dtypes: pip install "
                   "'gpuconv[bf16]' (or pip install ml_dtypes)")


def is_bfloat16(dtype) -> bool:
    """True for ``ml_dtypes.bfloat16`` (False for every dtype when ml_dtypes is missing).

    Never raises: ``dtype`` may be anything ``numpy.dtype`` accepts, or not.
    """
    if BFLOAT16 is None:
        return False
    try:
        return np.dtype(dtype) == BFLOAT16
    except TypeError:
        return False


def require_bfloat16(op: str = "gpuconv") -> np.dtype:
    """:data:`BFLOAT16`, or ImportError naming the ``bf16`` extra when ml_dtypes is missing.

    ``op`` starts the message (the function that needed bfloat16).
    """
    if BFLOAT16 is None:
        raise ImportError(f"{op}: {BF16_EXTRA_HINT}")
    return BFLOAT16


def accumulation_dtype(dtype) -> np.dtype:
    """The dtype that ``dtype`` is computed in: float32 for float16 and bfloat16, else
    ``dtype`` itself (the kernels' ``gpuconv::acc_t<T>``; the NumPy backend and the GEMMs
    follow it too). The result is rounded to ``dtype`` once, when it is written.

    >>> accumulation_dtype(np.float16), accumulation_dtype("float64")
    (dtype('float32'), dtype('float64'))
    """
    dtype = np.dtype(dtype)
    if dtype == np.float16 or (BFLOAT16 is not None and dtype == BFLOAT16):
        return np.dtype(np.float32)
    return dtype


def result_type(*dtypes) -> np.dtype:
    """The result dtype of a call whose arrays have ``dtypes`` (float16/32/64, bfloat16).

    ``numpy.result_type``, with one addition for bfloat16: all-bfloat16 inputs give
    bfloat16, and bfloat16 mixed with other float dtypes is promoted as float32 would be
    (bfloat16 + float16 -> float32, + float32 -> float32, + float64 -> float64). NumPy with
    ml_dtypes agrees on float32 and float64 but finds no common dtype for bfloat16 and
    float16; gpuconv gives float32 there, which holds both exactly (as
    ``torch.promote_types`` and ``jax.numpy.promote_types`` do).

    >>> result_type(np.float16, np.float32)
    dtype('float32')
    """
    dtypes = [np.dtype(d) for d in dtypes]
    if BFLOAT16 is not None and any(d == BFLOAT16 for d in dtypes):
        if all(d == BFLOAT16 for d in dtypes):
            return BFLOAT16
        dtypes = [np.dtype(np.float32) if d == BFLOAT16 else d for d in dtypes]
    return np.result_type(*dtypes)
