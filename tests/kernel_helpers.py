"""Helpers shared by the kernel test files (test_conv_kernels.py, test_grad_kernels.py,
test_transpose_deform_kernels.py, test_convolve_kernels.py).

* the parameter lists every kernel test sweeps (``DTYPES``, ``MODES``, ``RANKS``) and the
  NumPy backend used as the reference (``REFERENCE``);
* the elementwise forward-error bound :func:`assert_within` and the unit roundoffs it is built
  from, and float64 copies of the inputs (:func:`f64`, :func:`abs64`);
* a stand-in ``cupy`` module (:func:`stand_in_cupy`) for running ``CupyExecutor``'s flow on the
  emulator, and :func:`inlined_source_path` for compiling the code text it is handed.

The ``emulate`` fixture lives in ``conftest.py``.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
import tempfile
import types

import numpy as np

from gpuconv.backends.numpy_backend import NumpyBackend

DTYPES = [np.float16, np.float32, np.float64]
MODES = ["zeros", "reflect", "replicate", "circular"]
RANKS = [1, 2, 3]
REFERENCE = NumpyBackend()


# ----------------------------------------------------------------------------- error bounds


def roundoff(dtype) -> float:
    """Unit roundoff of ``dtype``: half its machine epsilon."""
    return float(np.finfo(dtype).eps) / 2


def acc_roundoff(dtype) -> float:
    """Unit roundoff of the accumulator the kernels use for ``dtype`` (float32 for float16)."""
    return roundoff(np.float32 if np.dtype(dtype) == np.float16 else dtype)


def assert_within(got, ref, scale, dtype, terms, *, extra_terms=2, scaled_out=0):
    """|got - ref| <= u_out * (|ref| + scaled_out * scale) + (terms + extra_terms) * u_acc * scale.

    ``ref`` is the float64 reference, ``scale`` the same operation on absolute values (float64),
    ``terms`` the number of terms summed per element. ``scaled_out`` counts roundings to the
    output type of intermediate values (bounded by ``scale``, not by ``|ref|``). Also checks
    ``got``'s dtype, shape and C-contiguity."""
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.flags.c_contiguous
    bound = (
        roundoff(dtype) * (np.abs(ref) + scaled_out * scale)
        + (terms + extra_terms) * acc_roundoff(dtype) * scale
        + np.finfo(np.float64).tiny
    )
    error = np.abs(got.astype(np.float64) - ref)
    worst = np.unravel_index(int(np.argmax(error - bound)), error.shape)
    assert np.all(error <= bound), (
        f"element {worst}: got {got[worst]!r}, expected {ref[worst]!r}, error {error[worst]:.3g}"
        f" > bound {bound[worst]:.3g}"
    )


def f64(*arrays):
    """The arrays in float64 (None stays None), as a list."""
    return [None if a is None else a.astype(np.float64) for a in arrays]


def abs64(*arrays):
    """The arrays' absolute values in float64 (None stays None), as a list."""
    return [None if a is None else np.abs(a).astype(np.float64) for a in arrays]


# ----------------------------------------------------------------------------- stand-in cupy


def inlined_source_path(code: str) -> pathlib.Path:
    """A file holding ``code``, at a stable path per text (so that the emulator's disk cache,
    keyed by path and contents, serves later runs); written once."""
    digest = hashlib.sha256(code.encode()).hexdigest()[:24]
    path = pathlib.Path(tempfile.gettempdir()) / "gpuconv-tests" / f"inlined-{digest}.cu"
    path.parent.mkdir(exist_ok=True)
    if not path.is_file():
        path.write_text(code)
    return path


def _device_zero():
    return types.SimpleNamespace(id=0)


def stand_in_cupy(monkeypatch, raw_module, names, *, device=None):
    """Install a module ``cupy`` made of NumPy's functions ``names`` for the test, and return a
    ``DeviceBackend`` on a ``CupyExecutor``, which must use it.

    The executor compiles through the stand-in's ``cuda.compiler.compile_using_nvrtc``, which
    returns the code text, options and name expressions as its "cubin"; the stand-in's
    ``RawModule(path=...)`` hands them to ``raw_module(code=, options=, name_expressions=)``
    (which compiles them, e.g. with the emulator). ``device`` plays ``cupy.cuda.Device``
    (default: always device 0). gpuconv's CUDA module cache goes to a fresh directory."""
    from gpuconv.backends.device._backend import DeviceBackend
    from gpuconv.backends.device._executor import CupyExecutor

    device = device or _device_zero

    def compile_using_nvrtc(source, options=(), arch=None, *, filename="kern.cu",
                            name_expressions=None, cache_in_memory=False, **kwargs):
        payload = {"code": source, "options": list(options), "names": list(name_expressions)}
        return json.dumps(payload).encode(), {name: name for name in name_expressions}

    class RawModule:
        def __init__(self, *, path):
            payload = json.loads(pathlib.Path(path).read_text())
            self._module = raw_module(code=payload["code"], options=tuple(payload["options"]),
                                      name_expressions=payload["names"])

        def get_function(self, name):
            return self._module.get_function(name)

    fake = types.ModuleType("cupy")
    for name in names:
        setattr(fake, name, getattr(np, name))
    fake.__version__ = "stand-in"
    fake.RawModule = RawModule
    fake.cuda = types.SimpleNamespace(
        Device=device,
        runtime=types.SimpleNamespace(getDevice=lambda: device().id),
        nvrtc=types.SimpleNamespace(getVersion=lambda: (0, 0)),
        compiler=types.SimpleNamespace(compile_using_nvrtc=compile_using_nvrtc,
                                       _get_arch=lambda: "80"),
    )
    fake._core = types.SimpleNamespace(core=types.SimpleNamespace(
        assemble_cupy_compiler_options=lambda options: tuple(options)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setenv("GPUCONV_CACHE_DIR", tempfile.mkdtemp(prefix="gpuconv-stand-in-"))
    backend = DeviceBackend(CupyExecutor())
    assert backend.xp is fake
    return backend
