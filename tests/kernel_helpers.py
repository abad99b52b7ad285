"""Helpers shared by the test files: plain functions and tables, imported by name.

Why two shared modules: ``conftest.py`` holds what pytest injects by name -- the fixtures
(``backend``, ``emulate``, ``emulator_check``, ``golden``) -- and is never imported by a test.
This module holds what a test calls: importable, greppable, and one copy of each:

* :func:`emulator_or_skip` and ``EMU_KERNELS``, the preamble of the emulator's own test
  modules (test_emulator*.py);
* the parameter lists every kernel test sweeps (``DTYPES``, ``MODES``, ``RANKS``) and the
  NumPy backend used as the reference (``REFERENCE``);
* the one random convolution-case generator, :func:`random_conv_case`, with the value sets it
  draws from (:class:`ConvCaseSpace`: ``FORWARD_CASES``, ``GRAD_CASES`` and their tiny twins);
* the one error bound, :func:`assert_within` (elementwise, or normwise with a scalar scale),
  the unit roundoffs it is built from, and float64 copies of the inputs (:func:`f64`,
  :func:`abs64`);
* the one stand-in ``cupy`` module with its stand-in ``RawModule`` (:func:`stand_in_cupy`), for
  running ``CupyExecutor``'s flow on the emulator, and :func:`inlined_source_path` for compiling
  the code text it is handed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import sys
import tempfile
import types
from typing import NamedTuple

import numpy as np

from gpuconv.backends.numpy_backend import NumpyBackend

DTYPES = [np.float16, np.float32, np.float64]
MODES = ["zeros", "reflect", "replicate", "circular"]
RANKS = [1, 2, 3]
REFERENCE = NumpyBackend()


# ----------------------------------------------------------------------------- the emulator

EMU_KERNELS = pathlib.Path(__file__).parent / "emu_kernels"


def emulator_or_skip():
    """``gpuconv._emulator``, or skip the calling test module where it cannot run (no g++).

    Call it at module level: ``emu = emulator_or_skip()``."""
    import pytest

    emu = pytest.importorskip("gpuconv._emulator")
    if not emu.available():
        pytest.skip("g++ is not available: the emulator cannot run", allow_module_level=True)
    return emu


# ----------------------------------------------------------------------------- random cases


@dataclasses.dataclass(frozen=True)
class ConvCaseSpace:
    """The value sets :func:`random_conv_case` draws from, each uniformly (``rng.choice``).

    ``sizes`` are the spatial sizes of 1-D/2-D cases and ``sizes_3d`` those of 3-D cases;
    ``strides`` per dimension; ``batches``; for grouped cases ``groups``, ``in_per_group``
    (input channels per group) and ``out_per_group`` (filters per group); for depthwise cases
    ``channels`` and ``multipliers``. Kernel sizes (1-3), dilations (1-2) and the padding pairs
    (0-3 per side, legal for the padding mode) are drawn the same way in every space."""

    sizes: tuple
    sizes_3d: tuple
    strides: tuple
    batches: tuple
    groups: tuple
    in_per_group: tuple
    out_per_group: tuple
    channels: tuple
    multipliers: tuple


# the forward kernels (test_conv_kernels.py): sizes up to 15, stride up to 2, wide output groups
FORWARD_CASES = ConvCaseSpace(
    sizes=(3, 5, 7, 9, 11, 13, 15), sizes_3d=(3, 5, 7, 9), strides=(1, 2), batches=(1, 2),
    groups=(1, 2), in_per_group=(1, 3, 5), out_per_group=(1, 3, 5, 7, 9, 11),
    channels=(1, 3, 5), multipliers=(1, 2, 3))
FORWARD_CASES_TINY = dataclasses.replace(
    FORWARD_CASES, sizes=(3, 5), sizes_3d=(3, 5), in_per_group=(1, 3), out_per_group=(1, 3, 5),
    channels=(1, 3))
# the gradient kernels (test_grad_kernels.py): smaller sizes, stride up to 3, three groups
GRAD_CASES = ConvCaseSpace(
    sizes=(3, 5, 7, 9), sizes_3d=(3, 5), strides=(1, 2, 3), batches=(1, 3), groups=(1, 2, 3),
    in_per_group=(1, 2, 3), out_per_group=(1, 3, 5), channels=(1, 3), multipliers=(1, 2, 3))
GRAD_CASES_TINY = dataclasses.replace(GRAD_CASES, sizes=(3, 5))


def random_conv_case(rng, rank: int, mode: str, space: ConvCaseSpace, *,
                     depthwise: bool = False):
    """A random convolution case: spatial sizes, kernel, stride, dilation and asymmetric
    padding legal for ``mode`` per dimension, then batch, channels and groups (depthwise: one
    group per channel and a channel multiplier), drawn from ``space``.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of every draw (same seed, same case).
    rank : int
        The number of spatial dimensions (1, 2 or 3).
    mode : str
        The padding mode (``reflect`` pads less than the size, ``circular`` at most the size).
    space : ConvCaseSpace
        The value sets to draw from.
    depthwise : bool
        A depthwise case (``groups == in_channels``, weight ``(C * multiplier, 1, *kernel)``).

    Returns
    -------
    x_shape, w_shape : tuple of int
    geometry : dict
        The keyword arguments of :func:`gpuconv._shapes.conv_geometry` (stride, padding,
        dilation, groups, padding_mode).
    """

    def draw(options):
        return int(rng.choice(options))

    sizes, kernel, stride, dilation, pads = [], [], [], [], []
    for _ in range(rank):
        size = draw(space.sizes_3d if rank == 3 else space.sizes)
        k = draw((1, 2, 3))
        d = draw((1, 2))
        s = draw(space.strides)
        limit = {"reflect": size - 1, "circular": size}.get(mode, size)
        lo, hi = (int(v) for v in rng.integers(0, min(limit, 3) + 1, size=2))
        while d * (k - 1) + 1 > size + lo + hi:
            k -= 1
        sizes.append(size)
        kernel.append(k)
        stride.append(s)
        dilation.append(d)
        pads.append((lo, hi))
    batch = draw(space.batches)
    if depthwise:
        groups = channels = draw(space.channels)
        x_shape = (batch, channels, *sizes)
        w_shape = (channels * draw(space.multipliers), 1, *kernel)
    else:
        groups = draw(space.groups)
        in_per_group = draw(space.in_per_group)
        out_per_group = draw(space.out_per_group)
        x_shape = (batch, groups * in_per_group, *sizes)
        w_shape = (groups * out_per_group, in_per_group, *kernel)
    geometry = {"stride": tuple(stride), "padding": tuple(pads), "dilation": tuple(dilation),
                "groups": groups, "padding_mode": mode}
    return x_shape, w_shape, geometry


# ----------------------------------------------------------------------------- error bounds


def roundoff(dtype) -> float:
    """Unit roundoff of ``dtype``: half its machine epsilon."""
    return float(np.finfo(dtype).eps) / 2


def acc_roundoff(dtype) -> float:
    """Unit roundoff of the accumulator the kernels use for ``dtype`` (float32 for float16)."""
    return roundoff(np.float32 if np.dtype(dtype) == np.float16 else dtype)


def assert_within(got, ref, scale, dtype, terms, *, extra_terms=2, scaled_out=0,
                  out_roundings=1):
    """Assert ``|got - ref| <= u_out * (out_roundings * |ref| + scaled_out * scale)
    + (terms + extra_terms) * u_acc * scale``, elementwise; the one error bound of the tests.

    Also checks ``got``'s dtype, shape and C-contiguity.

    Parameters
    ----------
    got : numpy.ndarray
        The result under test, in ``dtype``.
    ref : numpy.ndarray
        The float64 reference on the same (rounded) inputs.
    scale : numpy.ndarray or float
        The same operation on absolute values (float64): an elementwise bound. A scalar (e.g.
        ``max|ref|``) gives a normwise bound, for results that are differences of samples.
    dtype : numpy dtype
        The output type; ``u_out`` is its unit roundoff and ``u_acc`` its accumulator's
        (float32 for float16).
    terms : int
        The number of terms summed per element.
    extra_terms : int
        Further roundings in the accumulator (bias add, final store, ...).
    scaled_out : int
        Roundings to the output type of intermediate values (bounded by ``scale``).
    out_roundings : int
        Roundings of the result itself to the output type (bounded by ``|ref|``); 0 where the
        accumulator is the output type and ``extra_terms`` counts that rounding.
    """
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.flags.c_contiguous
    bound = (
        roundoff(dtype) * (out_roundings * np.abs(ref) + scaled_out * scale)
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


class Compiled(NamedTuple):
    """One module the stand-in ``RawModule`` built: the device current at the time, and the
    code text, options and name expressions it received."""

    device: int
    code: str
    options: tuple
    name_expressions: tuple


def stand_in_cupy(monkeypatch, names, *, device=None, whole_file=False):
    """Install a module ``cupy`` made of NumPy's functions ``names`` for the test, and return a
    ``DeviceBackend`` on a ``CupyExecutor``, which must use it, with the list of modules its
    ``RawModule`` builds.

    The executor compiles through the stand-in's ``cuda.compiler.compile_using_nvrtc``, which
    returns the code text, options and name expressions as its "cubin". The stand-in's
    ``RawModule(path=...)`` -- the one stand-in ``RawModule`` of the tests -- checks that the
    text includes nothing but ``cuda_shim.h`` (CuPy compiles it without ``-I kernels/``),
    records a :class:`Compiled`, and builds it with the emulator: the text itself, or with
    ``whole_file`` the whole kernel file that holds those name expressions (one build per file,
    shared through the emulator's disk cache). ``device`` plays ``cupy.cuda.Device`` (default:
    always device 0). gpuconv's CUDA module cache goes to a fresh directory.

    Returns
    -------
    backend : gpuconv.backends.device._backend.DeviceBackend
    compiled : list of Compiled
        The modules built so far, in order (it grows as the test runs).
    """
    from gpuconv import _emulator, _kernels
    from gpuconv.backends.device._backend import DeviceBackend
    from gpuconv.backends.device._executor import CupyExecutor

    device = device or _device_zero
    compiled = []

    def compile_using_nvrtc(source, options=(), arch=None, *, filename="kern.cu",
                            name_expressions=None, cache_in_memory=False, **kwargs):
        payload = {"code": source, "options": list(options), "names": list(name_expressions)}
        return json.dumps(payload).encode(), {name: name for name in name_expressions}

    class RawModule:
        def __init__(self, *, path):
            payload = json.loads(pathlib.Path(path).read_text())
            code, names = payload["code"], tuple(payload["names"])
            assert '#include "' not in code.replace('#include "cuda_shim.h"', "")
            compiled.append(Compiled(device().id, code, tuple(payload["options"]), names))
            if whole_file:
                (file,) = [f for f in _kernels.files()
                           if set(names) <= set(_kernels.name_expressions(f))]
                self._module = _emulator.load_module(_kernels.source_path(file),
                                                     _kernels.name_expressions(file),
                                                     include_dirs=[_kernels.kernel_dir()])
            else:
                self._module = _emulator.load_module(inlined_source_path(code), names)

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
    return backend, compiled


def tensor_core_value(kind: str, a) -> np.ndarray:
    """The float64 value a tensor core multiplies for ``a`` of ``kind`` (``"float16"``,
    ``"bfloat16"``: as stored; ``"tf32"``: float32 rounded to 10 fraction bits, to nearest,
    ties away from zero, as ``cvt.rna.tf32.f32``; inf and NaN kept)."""
    if kind != "tf32":
        return np.asarray(a).astype(np.float64)
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    finite = (u & 0x7F800000) != 0x7F800000
    return (np.where(finite, u + 0x1000, u) & 0xFFFFE000).astype(np.uint32).view(
        np.float32).astype(np.float64)
