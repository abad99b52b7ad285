"""Algorithm choice for convolutions, transposed convolutions and their gradients: TF32,
forcing, autotune and plans (issue 14).

This module owns

* the settings, each a context manager (per thread and per asyncio task, like
  :func:`gpuconv.use_backend`: innermost wins) with an environment variable under it:
  :func:`use_tf32` (``GPUCONV_ALLOW_TF32``), :func:`use_algorithm` (``GPUCONV_ALGORITHM``),
  :func:`use_autotune` (``GPUCONV_AUTOTUNE``);
* the description of a call that algorithms decide on (:class:`ConvProblem`) and of the
  launches they would make (:class:`Description`);
* the selection (:func:`select`): a forced algorithm (raising ``ValueError`` with the reason
  when it cannot serve the call -- never a silent fallback), else the autotuned one
  (:class:`Autotuner`, cached per problem), else the backend's default heuristic;
* :func:`run_conv`, which ``gpuconv.conv`` calls through :meth:`gpuconv._validate.Arrays.run`
  (and the device backends' ``conv_transpose``; :func:`run_weight_grad` for their weight
  gradients); :func:`check_forced`, with which the other calls refuse a forced algorithm on
  a backend with no algorithms for them (NumPy); and :func:`plan`, which reports what a call
  would run without running it.

A backend lists its algorithms in a ``conv_algorithms`` attribute and picks with
``default_conv_algorithm(problem)`` (the device backends:
:mod:`gpuconv.backends.device._conv_algorithms`); a backend without them (NumPy) has one
algorithm, named after itself, which is its ``conv`` method. docs/algorithms.md documents the
algorithms and the heuristic.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from ._shapes import ConvGeometry

try:  # channels-last decisions (issue 15), when that module is present
    from . import _layout
    from ._layout import layout_plan
except ImportError:  # pragma: no cover
    layout_plan = None

TF32_ENV = "GPUCONV_ALLOW_TF32"
ALGORITHM_ENV = "GPUCONV_ALGORITHM"
AUTOTUNE_ENV = "GPUCONV_AUTOTUNE"

#: Every algorithm name: the device backends' and the NumPy backend's own.
ALGORITHMS = ("direct", "tiled", "matmul", "depthwise", "implicit_gemm", "numpy")
#: What an algorithm computes: a convolution, a transposed convolution (also a convolution's
#: input gradient) or a convolution's weight gradient (also a transposed convolution's).
OPERATIONS = ("conv", "conv_transpose", "conv_weight")
#: The public functions :func:`plan` describes: the convolutions, the transposed convolutions
#: and the convolution gradients of :mod:`gpuconv.grad` (named with their ``grad.`` prefix).
PLAN_OPS = ("conv", "conv1d", "conv2d", "conv3d", "conv_transpose", "conv_transpose1d",
            "conv_transpose2d", "conv_transpose3d", "grad.conv_input", "grad.conv_weight",
            "grad.conv_transpose_input", "grad.conv_transpose_weight",
            "grad.depthwise_conv_input", "grad.depthwise_conv_weight")

_UNSET = object()
_tf32: contextvars.ContextVar[Any] = contextvars.ContextVar("gpuconv_tf32", default=_UNSET)
_algorithm: contextvars.ContextVar[Any] = contextvars.ContextVar("gpuconv_algorithm",
                                                                  default=_UNSET)
_autotune: contextvars.ContextVar[Any] = contextvars.ContextVar("gpuconv_autotune",
                                                                 default=_UNSET)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


# ----------------------------------------------------------------------------- settings


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={os.environ[name]!r} must be one of {_TRUE + _FALSE[1:]}")


def _check_flag(op: str, enabled: Any) -> bool:
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"{op}: enabled={enabled!r} must be a bool")
    return bool(enabled)


@contextlib.contextmanager
def _setting(var: contextvars.ContextVar, value: Any) -> Iterator[Any]:
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


def use_tf32(enabled: bool = True) -> contextlib.AbstractContextManager[bool]:
    """Let float32 convolutions use TF32 tensor cores inside a ``with`` block (or forbid it).

    Off by default: float32 is computed exactly in float32 (as PyTorch's matrix products by
    default; its cuDNN convolutions default to TF32, ``torch.backends.cudnn.allow_tf32``). With
    TF32 on, the ``implicit_gemm``
    algorithm can serve float32 calls: both operands are rounded to TF32 (10 fraction bits),
    the products accumulate in float32 (docs/algorithms.md gives the error bound). It is picked
    by default only on the ``"cuda"`` backend (see docs/algorithms.md), or when forced with
    :func:`use_algorithm`. The environment variable ``GPUCONV_ALLOW_TF32=1`` turns it on
    outside any block.

    Parameters
    ----------
    enabled : bool

    Examples
    --------
    >>> import gpuconv
    >>> with gpuconv.use_tf32():
    ...     gpuconv.tf32_enabled()
    True
    >>> gpuconv.tf32_enabled()
    False
    """
    return _setting(_tf32, _check_flag("use_tf32", enabled))


def tf32_enabled() -> bool:
    """Whether float32 convolutions may use TF32 now (:func:`use_tf32`, else
    ``GPUCONV_ALLOW_TF32``, else False)."""
    value = _tf32.get()
    return _env_flag(TF32_ENV) if value is _UNSET else value


def _check_algorithm(name: Any, source: str) -> str | None:
    if name is None or (isinstance(name, str) and name in ALGORITHMS):
        return name
    shown = repr(name) if isinstance(name, str) else type(name).__name__
    raise ValueError(f"{source}={shown[:60]} must be one of {ALGORITHMS} (or None)")


def use_algorithm(name: str | None) -> contextlib.AbstractContextManager[str | None]:
    """Force the algorithm of every call with an algorithm choice inside a ``with`` block.

    A call the algorithm cannot serve raises ``ValueError`` naming the algorithm and the
    reason; gpuconv never falls back silently. ``None`` restores the default choice inside an
    outer block. The environment variable ``GPUCONV_ALGORITHM`` forces one outside any block.

    The calls with a choice (on the device backends; the NumPy backend has one algorithm,
    ``"numpy"``, and refuses any other for the same calls): ``conv`` (and ``conv1d``/``2d``/
    ``3d``), ``conv_transpose`` (and its ranked forms), the pointwise step of
    ``separable_conv``, and the gradients ``grad.conv_input``, ``grad.conv_weight``,
    ``grad.conv_transpose_input``, ``grad.conv_transpose_weight``,
    ``grad.depthwise_conv_input``, ``grad.depthwise_conv_weight`` and ``grad.separable_conv``
    (made of those). A 1x1, stride-1, unpadded convolution's input gradient is one GEMM
    (``"matmul"``) unless another algorithm is forced, which then serves it as a transposed
    convolution. Operations without an algorithm choice ignore this setting:
    ``depthwise_conv`` (and the depthwise step of ``separable_conv``), ``deform_conv2d`` and
    ``grad.deform_conv2d``, ``grad.conv_bias``, ``convolve`` and ``correlate``.

    Parameters
    ----------
    name : {"direct", "tiled", "matmul", "depthwise", "implicit_gemm", "numpy"} or None
        The first five run on the device backends (``"emulate"``, ``"cuda"``), ``"numpy"`` on
        the NumPy backend (docs/algorithms.md).

    Raises
    ------
    ValueError
        If ``name`` is not an algorithm.

    Examples
    --------
    >>> import numpy as np, gpuconv
    >>> x, w = np.ones((1, 1, 5), np.float32), np.ones((1, 1, 3), np.float32)
    >>> with gpuconv.use_algorithm("tiled"):
    ...     gpuconv.conv(x, w)
    Traceback (most recent call last):
    ...
    ValueError: conv: algorithm 'tiled' cannot serve this call on the 'numpy' backend, whose only algorithm is 'numpy'
    """
    return _setting(_algorithm, _check_algorithm(name, "use_algorithm: name"))


def current_algorithm() -> str | None:
    """The forced algorithm (:func:`use_algorithm`, else ``GPUCONV_ALGORITHM``), or None."""
    value = _algorithm.get()
    if value is not _UNSET:
        return value
    return _check_algorithm(os.environ.get(ALGORITHM_ENV) or None, ALGORITHM_ENV)


def use_autotune(enabled: bool = True) -> contextlib.AbstractContextManager[bool]:
    """Autotune ``conv`` calls inside a ``with`` block, as ``torch.backends.cudnn.benchmark``.

    The first call of a problem (op, shapes, strides, dtype, geometry, bias, TF32 setting,
    backend, device) runs every algorithm that can serve it once to warm up (compiles) and once
    timed, and returns the fastest one's result; later calls of the problem run the cached
    choice. With ``deterministic=True`` only deterministic algorithms are candidates (every
    conv-forward algorithm is). On the emulator the times are CPU times. A forced algorithm
    (:func:`use_algorithm`) wins over autotune. ``GPUCONV_AUTOTUNE=1`` turns it on outside any
    block.

    Parameters
    ----------
    enabled : bool
    """
    return _setting(_autotune, _check_flag("use_autotune", enabled))


def autotune_enabled() -> bool:
    """Whether autotune is on (:func:`use_autotune`, else ``GPUCONV_AUTOTUNE``, else False)."""
    value = _autotune.get()
    return _env_flag(AUTOTUNE_ENV) if value is _UNSET else value


# ----------------------------------------------------------------------------- problems


@dataclasses.dataclass(frozen=True)
class ConvProblem:
    """What an algorithm decides on: a ``conv`` call without its data.

    ``op`` is the public function's name (for messages); ``geom`` is the backend geometry (:func:`gpuconv._shapes.backend_geometry`); ``strides``
    the caller's array strides (part of the autotune key); ``device`` the CUDA device, or None.
    """

    op: str
    backend: str
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    dtype: np.dtype
    geom: ConvGeometry
    has_bias: bool = False
    tf32: bool = False
    deterministic: bool = True
    strides: tuple = ()
    device: int | None = None
    operation: str = "conv"

    @classmethod
    def of(cls, backend: str, x, weight, bias, geom: ConvGeometry, *, op: str = "conv",
           strides: tuple = (), operation: str = "conv",
           deterministic: bool = True) -> ConvProblem:
        """The problem of arrays ``x``, ``weight``, ``bias`` (or None) on ``backend``, with the
        current TF32 setting. ``operation`` is what is computed (:data:`OPERATIONS`); for
        ``"conv_weight"``, ``weight`` is the weight's shape and ``deterministic`` the call's."""
        device = getattr(getattr(x, "device", None), "id", None)
        w_shape = tuple(weight) if isinstance(weight, tuple) else tuple(weight.shape)
        return cls(op, backend, tuple(x.shape), w_shape, np.dtype(x.dtype), geom,
                   bias is not None, tf32_enabled(), deterministic, tuple(strides),
                   device if isinstance(device, int) else None, operation)

    def key(self) -> tuple:
        """The autotune cache key: every field, the dtype by its string, and ``op`` as the
        operation (``conv1d`` and ``conv`` of the same arrays are one problem)."""
        return dataclasses.astuple(dataclasses.replace(self, op="conv", dtype=self.dtype.str))


@dataclasses.dataclass(frozen=True)
class Description:
    """The launches an algorithm would make: kernel name expressions (or what runs in their
    place, e.g. a cuBLAS GEMM), the grid, block and dynamic-or-static shared memory (bytes) of
    the main kernel, and the temporary device memory (bytes)."""

    kernels: tuple[str, ...] = ()
    grid: Any = None
    block: Any = None
    shared_mem: int = 0
    workspace_bytes: int = 0


class Algorithm(Protocol):
    """One way to compute a ``conv`` forward call on a backend."""

    name: str
    summary: str
    deterministic: bool

    def can_serve(self, problem: ConvProblem) -> tuple[bool, str]:
        """``(True, "")``, or ``(False, reason)``."""

    def describe(self, problem: ConvProblem) -> Description:
        """The launches it would make (nothing runs)."""

    def run(self, backend, x, weight, bias, geom: ConvGeometry):
        """The result, from prepared arrays (C-contiguous, of one dtype, on the backend)."""


class _BackendOwn:
    """The one algorithm of a backend that lists none: its ``conv`` method."""

    deterministic = True

    def __init__(self, name: str):
        self.name = name
        self.summary = f"the {name!r} backend's conv"

    def can_serve(self, problem: ConvProblem) -> tuple[bool, str]:
        return True, ""

    def describe(self, problem: ConvProblem) -> Description:
        what = "NumPy: one matmul per kernel tap" if self.name == "numpy" else self.summary
        return Description(kernels=(what,))

    def run(self, backend, x, weight, bias, geom):
        return backend.conv(x, weight, bias, geom)


def algorithms_of(backend, operation: str = "conv") -> tuple[tuple, Callable[[ConvProblem], str]]:
    """``(algorithms, default)``: a backend's algorithms for ``operation`` (:data:`OPERATIONS`)
    and its default choice. A backend lists its conv-forward ones in ``conv_algorithms`` and
    the others through ``algorithms_for(operation)``."""
    if operation == "conv":
        found = getattr(backend, "conv_algorithms", None)
        if found is not None:
            return tuple(found), backend.default_conv_algorithm
    else:
        lookup = getattr(backend, "algorithms_for", None)
        if lookup is not None:
            return lookup(operation)
    own = _BackendOwn(backend.name)
    return (own,), lambda problem: own.name


# ----------------------------------------------------------------------------- autotune


def timer() -> float:
    """The clock autotune reads (``time.perf_counter``; tests replace it)."""
    return time.perf_counter()


class Autotuner:
    """Times candidate algorithms once per problem and caches the fastest.

    ``choose(key, candidates, run, deterministic=...)`` returns ``(name, result)``: on a cache
    miss every candidate (only the deterministic ones with ``deterministic=True``) runs once
    to warm up (compiling its kernels) and once between two :func:`timer` readings; the
    fastest is cached under ``(key, deterministic)`` and its timed run's result returned (ties
    go to the earlier candidate). On a hit, ``(name, None)``: the caller runs it.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.cache: dict[tuple, str] = {}
        self.timings: dict[tuple, dict[str, float]] = {}

    def lookup(self, key: tuple, deterministic: bool) -> str | None:
        """The cached choice for ``key``, or None."""
        with self._lock:
            return self.cache.get((key, deterministic))

    def choose(self, key: tuple, candidates: Sequence, run: Callable[[Any], Any], *,
               deterministic: bool) -> tuple[str, Any]:
        cached = self.lookup(key, deterministic)
        if cached is not None:
            return cached, None
        pool = [c for c in candidates if c.deterministic or not deterministic]
        if not pool:
            raise ValueError("autotune: no deterministic algorithm can serve this call")
        times, results = {}, {}
        for candidate in pool:
            run(candidate)  # warm-up: compiles, fills caches
            start = timer()
            results[candidate.name] = run(candidate)
            times[candidate.name] = timer() - start
        best = min(pool, key=lambda c: times[c.name]).name
        with self._lock:
            self.cache[(key, deterministic)] = best
            self.timings[(key, deterministic)] = times
        return best, results[best]

    def clear(self) -> None:
        """Forget every choice."""
        with self._lock:
            self.cache.clear()
            self.timings.clear()


#: The process-wide autotune cache.
AUTOTUNER = Autotuner()


# ----------------------------------------------------------------------------- selection


@dataclasses.dataclass(frozen=True)
class Selection:
    """The chosen algorithm, why (``"forced"``, ``"autotuned"``, ``"autotune cache"``,
    ``"default heuristic"``), and the result when choosing ran it (autotune), else None."""

    algorithm: Any
    why: str
    result: Any = None


def candidates(problem: ConvProblem, algorithms: Sequence) -> dict[str, str]:
    """Each algorithm's name mapped to ``""`` if it can serve ``problem``, else the reason."""
    report = {}
    for algorithm in algorithms:
        ok, reason = algorithm.can_serve(problem)
        report[algorithm.name] = "" if ok else reason
    return report


def select(op: str, problem: ConvProblem, algorithms: Sequence,
           default: Callable[[ConvProblem], str],
           run: Callable[[Any], Any] | None = None) -> Selection:
    """The algorithm for ``problem`` among ``algorithms``: the forced one, else the autotuned
    one (``run(algorithm)`` computes the call; without ``run``, as for :func:`plan`, only the
    cache is consulted), else ``default(problem)``.

    Raises
    ------
    ValueError
        If the forced algorithm is not one of ``algorithms`` or cannot serve ``problem``
        (the message names it and gives the reason).
    """
    by_name = {a.name: a for a in algorithms}
    forced = current_algorithm()
    if forced is not None:
        algorithm = by_name.get(forced)
        if algorithm is None:
            names = ", ".join(repr(n) for n in by_name)
            only = "only algorithm is" if len(by_name) == 1 else "algorithms are"
            raise ValueError(f"{op}: algorithm {forced!r} cannot serve this call on the "
                             f"{problem.backend!r} backend, whose {only} {names}")
        ok, reason = algorithm.can_serve(problem)
        if not ok:
            raise ValueError(f"{op}: algorithm {forced!r} cannot serve this call: {reason}")
        return Selection(algorithm, "forced")
    if autotune_enabled():
        servable = [a for a in algorithms if a.can_serve(problem)[0]]
        if len(servable) > 1:
            key = problem.key()
            if run is None:
                cached = AUTOTUNER.lookup(key, problem.deterministic)
                if cached is not None:
                    return Selection(by_name[cached], "autotune cache")
            else:
                name, result = AUTOTUNER.choose(key, servable, run,
                                                deterministic=problem.deterministic)
                return Selection(by_name[name], "autotuned" if result is not None
                                 else "autotune cache", result)
    return Selection(by_name[default(problem)], "default heuristic")


def check_forced(op: str, backend, operation: str, x_shape, w_shape, dtype,
                 geom: ConvGeometry) -> None:
    """Raise as :func:`select` does when the forced algorithm (:func:`use_algorithm`) cannot
    serve a call of ``operation`` (:data:`OPERATIONS`) on a backend that lists no algorithms
    for it: the NumPy backend, whose only algorithm, ``"numpy"``, is its own method. A
    backend that lists algorithms for ``operation`` selects inside its method, so nothing is
    checked here. ``x_shape``, ``w_shape``, ``dtype`` and ``geom`` (the backend geometry)
    describe the call (:class:`ConvProblem`).

    ``gpuconv.conv_transpose`` and the gradients of :mod:`gpuconv.grad` call this before
    their backend method, as :func:`run_conv` selects for ``conv``: no operation that has an
    algorithm choice on some backend ignores a forced algorithm on another.

    Raises
    ------
    ValueError
        ``"{op}: algorithm 'implicit_gemm' cannot serve this call on the 'numpy' backend,
        whose only algorithm is 'numpy'"``.
    """
    if current_algorithm() is None:
        return
    algorithms, default = algorithms_of(backend, operation)
    if all(isinstance(a, _BackendOwn) for a in algorithms):
        problem = ConvProblem(op, backend.name, tuple(x_shape), tuple(w_shape),
                              np.dtype(dtype), geom, tf32=tf32_enabled(), operation=operation)
        select(op, problem, algorithms, default)


def _run_selected(op: str, backend, problem: ConvProblem, algorithms, default,
                  call: Callable[[Any], Any]):
    """``call(algorithm)`` for the algorithm :func:`select` picks (which may have run it)."""

    def timed(algorithm):  # autotune: the GPU's work must end before the clock is read
        result = call(algorithm)
        if backend.name == "cuda":
            backend.xp.cuda.get_current_stream().synchronize()
        return result

    selection = select(op, problem, algorithms, default, run=timed)
    if selection.result is not None:
        return selection.result
    return call(selection.algorithm)


def run_conv(op: str, backend, x, weight, bias, geom: ConvGeometry, *,
             strides: tuple = (), operation: str = "conv"):
    """``conv`` (or ``operation="conv_transpose"``) of prepared arrays on ``backend`` with the
    selected algorithm (:func:`select`). ``strides`` (part of the autotune key) default to
    those of ``x`` and ``weight``."""
    algorithms, default = algorithms_of(backend, operation)
    if len(algorithms) == 1 and current_algorithm() is None:  # the NumPy backend
        return algorithms[0].run(backend, x, weight, bias, geom)
    problem = ConvProblem.of(backend.name, x, weight, bias, geom, op=op, operation=operation,
                             strides=strides or (tuple(x.strides), tuple(weight.strides)))
    return _run_selected(op, backend, problem, algorithms, default,
                         lambda a: a.run(backend, x, weight, bias, geom))


def run_weight_grad(op: str, backend, x, grad_output, geom: ConvGeometry,
                    deterministic: bool):
    """A convolution's weight gradient (C_out, C_in / groups, *kernel) on a backend with
    ``algorithms_for("conv_weight")`` (the device backends), with the selected algorithm:
    ``algorithm.run(backend, x, grad_output, geom, deterministic)``. Autotune keeps
    ``deterministic=True`` calls among the algorithms that honour it."""
    algorithms, default = algorithms_of(backend, "conv_weight")
    w_shape = (grad_output.shape[1], x.shape[1] // geom.groups, *geom.kernel)
    problem = ConvProblem.of(backend.name, x, w_shape, None, geom, op=op,
                             operation="conv_weight", deterministic=deterministic,
                             strides=(tuple(x.strides), tuple(grad_output.strides)))
    return _run_selected(op, backend, problem, algorithms, default,
                         lambda a: a.run(backend, x, grad_output, geom, deterministic))


# ----------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a call would run (:func:`plan`): nothing here was computed by running it.

    Attributes
    ----------
    op, backend : str
        The public function and the backend the call runs on.
    algorithm : str
        The algorithm (``"none"`` when there is nothing to compute).
    reason : str
        Why it was chosen: ``"default heuristic"``, ``"forced"``, ``"autotune cache"``, or
        ``"autotune pending (...)"`` when the first call will time the candidates.
    kernels : tuple of str
        Kernel name expressions (or what runs in their place, e.g. cuBLAS).
    grid, block, shared_mem
        The main kernel's launch (shared memory in bytes); None when there is no kernel.
    workspace_bytes : int
        Temporary device memory besides the output.
    layout_copy : str or None
        Copies made before the computation (a non-contiguous or differently typed input, a
        host-to-device transfer), or None.
    candidates : dict
        Every algorithm of the backend: ``""`` if it can serve the call, else the reason.
    """

    op: str
    backend: str
    algorithm: str
    reason: str
    kernels: tuple[str, ...]
    grid: Any
    block: Any
    shared_mem: int
    workspace_bytes: int
    layout_copy: str | None
    candidates: dict

    def __repr__(self):
        served = ", ".join(n for n, r in self.candidates.items() if not r) or "none"
        lines = [
            f"Plan({self.op} on {self.backend!r}: algorithm {self.algorithm!r} "
            f"({self.reason})",
            f"  kernels:     {'; '.join(self.kernels) or 'none'}",
            f"  grid, block: {self.grid}, {self.block}",
            f"  shared mem:  {self.shared_mem} B, workspace: {self.workspace_bytes} B",
            f"  layout copy: {self.layout_copy or 'none'}",
            f"  can serve:   {served}",
        ]
        lines += [f"  not {n}: {r}" for n, r in self.candidates.items() if r]
        return "\n".join(lines) + ")"


def _layout_copy(arrays, named: dict, backend, geom, input_method: str | None = "conv",
                 extra: str | None = None) -> str | None:
    """The copies :meth:`gpuconv._validate.Arrays.prepare` would make, and why: the layout
    decision of :func:`gpuconv._layout.layout_plan` for a ``x`` that is not C-contiguous
    when the call reads it through ``prepare_input(x, backend, input_method)`` (``conv``),
    dtype conversions, host-device transfers, and ``extra`` (conversions of a backend path)."""
    notes = []
    for name, a in named.items():
        if a is None:
            continue
        if not a.flags.c_contiguous:
            if name == "x" and input_method is not None and layout_plan is not None:
                notes.append(layout_plan(backend, input_method, a, geom).note)
            else:
                notes.append(f"{name}: copied to C-contiguous")
        if np.dtype(a.dtype) != arrays.dtype:
            notes.append(f"{name}: {a.dtype} -> {arrays.dtype}")
    if arrays.call.name == "cuda" and not arrays.call.on_device_arrays:
        notes.append("host-to-device copies of the inputs, device-to-host of the result")
    if extra:
        notes.append(extra)
    return "; ".join(notes) or None


def _c_strides(shape, dtype) -> tuple[int, ...]:
    """The strides of a C-contiguous array (what the device backends receive)."""
    strides, step = [], np.dtype(dtype).itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(strides))


def _device_of(a) -> int | None:
    device = getattr(getattr(a, "device", None), "id", None)
    return device if isinstance(device, int) else None


#: The ``op`` that selection messages of a transposed convolution name: the device backends'
#: ``conv_transpose`` serves ``gpuconv.conv_transpose`` and conv's input gradient alike.
TRANSPOSE_SELECTION_OP = "conv_transpose (or conv's input gradient)"
#: ... and those of the weight gradients (the device backends' method names).
WEIGHT_GRAD_SELECTION_OPS = {"grad.conv_weight": "conv_weight_grad",
                             "grad.conv_transpose_weight": "conv_transpose_weight_grad",
                             "grad.depthwise_conv_weight": "depthwise_conv_weight_grad"}
#: The backend method each gradient calls (what a backend without algorithms runs).
_GRAD_METHODS = {"grad.conv_input": "conv_input_grad", "grad.conv_weight": "conv_weight_grad",
                 "grad.conv_transpose_input": "conv_transpose_input_grad",
                 "grad.conv_transpose_weight": "conv_transpose_weight_grad",
                 "grad.depthwise_conv_input": "depthwise_conv_input_grad",
                 "grad.depthwise_conv_weight": "depthwise_conv_weight_grad"}


def _op_name(op: Any) -> Any:
    """``op``'s name in :data:`PLAN_OPS`: a string as given, a function by its ``__name__``
    (``"grad."`` prepended for those of :mod:`gpuconv.grad`)."""
    if isinstance(op, str):
        return op
    name = getattr(op, "__name__", op)
    if getattr(op, "__module__", None) == "gpuconv.grad" and isinstance(name, str):
        return f"grad.{name}"
    return name


def _public_function(name: str) -> Callable:
    from . import _api, grad

    return getattr(grad, name[5:]) if name.startswith("grad.") else getattr(_api, name)


def _bind(name: str, args: tuple, kwargs: dict) -> dict:
    """The arguments of ``name``'s public function (without ``out``) bound to ``args`` and
    ``kwargs``, defaults applied; TypeError as a call with them would raise."""
    import inspect

    signature = inspect.signature(_public_function(name))
    signature = signature.replace(parameters=[p for p in signature.parameters.values()
                                              if p.name != "out"])
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"plan: {name}: {exc}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _nothing(name: str, call_name: str, result: str) -> Plan:
    return Plan(name, call_name, "none", f"nothing to compute: the result is {result}", (),
                None, None, 0, 0, None, {})


def _selected_plan(name: str, call_name: str, op: str, problem: ConvProblem, algorithms,
                   default, copies: str | None, *, after: tuple = (),
                   workspace: int = 0) -> Plan:
    """The plan of a call whose main computation selects among ``algorithms`` (as
    :func:`select` with ``op`` in its messages); ``after`` names the kernels that follow it
    and ``workspace`` the temporary memory the call adds to the algorithm's."""
    selection = select(op, problem, algorithms, default)
    reason = selection.why
    if autotune_enabled() and reason == "default heuristic":
        served = [a.name for a in algorithms if a.can_serve(problem)[0]
                  and (a.deterministic or not problem.deterministic)]
        if len(served) > 1:
            reason = (f"autotune pending: the first call times {', '.join(served)}; until "
                      f"then the default heuristic's choice is shown")
    described = selection.algorithm.describe(problem)
    return Plan(name, call_name, selection.algorithm.name, reason,
                tuple(described.kernels) + tuple(after), described.grid, described.block,
                described.shared_mem, described.workspace_bytes + workspace, copies,
                candidates(problem, algorithms))


def _own_plan(name: str, backend, problem: ConvProblem, copies: str | None) -> Plan:
    """A backend without algorithms for ``problem.operation`` (NumPy) runs its own method,
    after :func:`check_forced`'s selection (raising as the call does)."""
    algorithms, default = algorithms_of(backend, problem.operation)
    selection = select(name, problem, algorithms, default)
    method = _GRAD_METHODS.get(name, "conv_transpose")
    what = (f"NumPy: {method} (matrix products on the CPU)" if backend.name == "numpy"
            else f"the {backend.name!r} backend's {method}")
    return Plan(name, backend.name, selection.algorithm.name, selection.why, (what,), None,
                None, 0, 0, copies, candidates(problem, algorithms))


def _has_registries(backend) -> bool:
    """Whether ``backend`` selects algorithms for transposed convolutions and gradients."""
    return getattr(backend, "algorithms_for", None) is not None


def _plan_conv(name: str, x, weight, bias, *, stride, padding, dilation, groups,
               padding_mode) -> Plan:
    from . import _shapes, _validate

    options = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
               "padding_mode": padding_mode}
    checked = _validate.Arrays(name, optional=("bias",), x=x, weight=weight, bias=bias)
    spatial = None if name == "conv" else int(name[-2])
    geom = _validate.conv_setup(name, x.shape, weight.shape, spatial_ndim=spatial, **options)
    _validate.check_bias(name, bias, weight.shape[0])
    backend = checked.call.backend
    algorithms, default = algorithms_of(backend)
    if x.shape[0] == 0 or 0 in geom.in_size:
        return _nothing(name, checked.call.name, "the bias (or zeros)")
    bgeom = _shapes.backend_geometry(geom, op=name)
    copies = _layout_copy(checked, {"x": x, "weight": weight, "bias": bias}, backend, bgeom)
    in_place = layout_plan is not None and _layout.reads_in_place(backend, "conv", x, bgeom)
    x_strides = (tuple(int(v) // x.itemsize * checked.dtype.itemsize for v in x.strides)
                 if in_place else _c_strides(x.shape, checked.dtype))
    problem = ConvProblem(name, checked.call.name, tuple(x.shape), tuple(weight.shape),
                          checked.dtype, bgeom, bias is not None, tf32_enabled(), True,
                          (x_strides, _c_strides(weight.shape, checked.dtype)),
                          _device_of(x))
    result = _selected_plan(name, checked.call.name, name, problem, algorithms, default, copies)
    if in_place and len(algorithms) > 1:
        # the device backends receive a channels-last x as it is: the selected algorithm
        # reads it in place (implicit_gemm's channels-last gather) or copies it once
        chosen = {a.name: a for a in algorithms}.get(result.algorithm)
        reads = getattr(chosen, "reads_in_place", None)
        if reads is not None and not reads(problem):
            note = layout_plan(backend, "conv", x, bgeom).note.replace(
                "read in place (NHWC)",
                f"copied once to NCHW (algorithm {result.algorithm!r} reads NCHW here)")
            result = dataclasses.replace(result, layout_copy=(result.layout_copy or "").replace(
                layout_plan(backend, "conv", x, bgeom).note, note))
    return result


def _plan_conv_transpose(name: str, x, weight, bias, *, stride, padding, output_padding,
                         dilation, groups) -> Plan:
    from . import _shapes, _validate

    checked = _validate.Arrays(name, optional=("bias",), x=x, weight=weight, bias=bias)
    spatial = None if name == "conv_transpose" else int(name[-2])
    geom = _validate.conv_transpose_setup(name, x.shape, weight.shape, spatial_ndim=spatial,
                                          stride=stride, padding=padding,
                                          output_padding=output_padding, dilation=dilation,
                                          groups=groups)
    _validate.check_bias(name, bias, weight.shape[1] * geom.groups)
    call, backend, dtype = checked.call.name, checked.call.backend, checked.dtype
    if x.shape[0] == 0 or 0 in geom.in_size:
        return _nothing(name, call, "the bias (or zeros)")
    bgeom = _shapes.backend_geometry(geom, op=name)
    copies = _layout_copy(checked, {"x": x, "weight": weight, "bias": bias}, backend, bgeom,
                          input_method=None)
    if not _has_registries(backend):
        return _own_plan(name, backend, ConvProblem(
            name, call, tuple(x.shape), tuple(weight.shape), dtype, bgeom, bias is not None,
            tf32_enabled(), device=_device_of(x), operation="conv_transpose"), copies)
    algorithms, default = algorithms_of(backend, "conv_transpose")
    problem = ConvProblem(TRANSPOSE_SELECTION_OP, call, tuple(x.shape), tuple(weight.shape),
                          dtype, bgeom, bias is not None, tf32_enabled(), True,
                          (_c_strides(x.shape, dtype), _c_strides(weight.shape, dtype)),
                          _device_of(x), "conv_transpose")
    return _selected_plan(name, call, TRANSPOSE_SELECTION_OP, problem, algorithms, default,
                          copies)


def _gradient_setup(name: str):
    """``(setup, out_channels)`` of a gradient: the forward's ``gpuconv._validate`` setup
    function and the forward output's channel count from the weight shape and geometry."""
    from . import _validate

    if "conv_transpose" in name:
        return _validate.conv_transpose_setup, lambda w_shape, geom: w_shape[1] * geom.groups
    if "depthwise" in name:
        return _validate.depthwise_setup, lambda w_shape, geom: w_shape[0]
    return _validate.conv_setup, lambda w_shape, geom: w_shape[0]


def _plan_input_grad(name: str, input_shape, weight, grad_output, **forward) -> Plan:
    from . import _shapes, _validate

    checked, input_shape, geom = _validate.input_grad_setup(
        name, *_gradient_setup(name), input_shape, weight, grad_output, **forward)
    call, backend, dtype = checked.call.name, checked.call.backend, checked.dtype
    if input_shape[0] == 0 or 0 in geom.in_size:
        return _nothing(name, call, "zeros")
    bgeom = _shapes.backend_geometry(geom, op=name)
    named = {"weight": weight, "grad_output": grad_output}
    go_shape, w_shape = tuple(grad_output.shape), tuple(weight.shape)
    if not _has_registries(backend):
        operation = "conv" if name == "grad.conv_transpose_input" else "conv_transpose"
        return _own_plan(name, backend, ConvProblem(
            name, call, go_shape, w_shape, dtype, bgeom, tf32=tf32_enabled(),
            device=_device_of(grad_output), operation=operation),
            _layout_copy(checked, named, backend, bgeom, input_method=None))
    if name == "grad.conv_transpose_input":  # backend.conv of grad_output
        algorithms, default = algorithms_of(backend)
        problem = ConvProblem("conv", call, go_shape, w_shape, dtype,
                              _shapes.transpose_as_conv(bgeom), False, tf32_enabled(), True,
                              (_c_strides(go_shape, dtype), _c_strides(w_shape, dtype)),
                              _device_of(grad_output))
        return _selected_plan(name, call, "conv", problem, algorithms, default,
                              _layout_copy(checked, named, backend, bgeom, input_method=None))
    from .backends.device import _conv as _device_conv
    from .backends.device import _grad_plan

    steps = _grad_plan.input_grad_steps(call, w_shape, go_shape, bgeom, dtype)
    copies = _layout_copy(checked, named, backend, bgeom, input_method=None, extra=steps.note)
    algorithms, default = algorithms_of(backend, "conv_transpose")
    problem = ConvProblem(TRANSPOSE_SELECTION_OP, call, go_shape, w_shape, steps.dtype,
                          steps.geom, False,
                          tf32_enabled() if steps.tf32 is None else steps.tf32, True,
                          (_c_strides(go_shape, steps.dtype), _c_strides(w_shape, steps.dtype)),
                          _device_of(grad_output), "conv_transpose")
    # matmul first: a pointwise input gradient's GEMM, taken unless another is forced
    served = {"matmul": _device_conv.matmul_input_grad_reason(bgeom),
              **candidates(problem, algorithms)}
    if steps.path == "matmul":
        described = steps.matmul
        why = ("forced" if current_algorithm() == "matmul" else "a 1x1, stride-1, unpadded "
               "convolution's input gradient is one GEMM per group, unless another algorithm "
               "is forced")
        return Plan(name, call, "matmul", why, tuple(described.kernels), described.grid,
                    described.block, described.shared_mem, steps.workspace_bytes, copies,
                    served)
    return dataclasses.replace(
        _selected_plan(name, call, TRANSPOSE_SELECTION_OP, problem, algorithms, default,
                       copies, after=steps.after, workspace=steps.workspace_bytes),
        candidates=served)


def _plan_weight_grad(name: str, x, weight_shape, grad_output, *, deterministic,
                      **forward) -> Plan:
    from . import _shapes, _validate

    checked, weight_shape, deterministic, geom = _validate.weight_grad_setup(
        name, *_gradient_setup(name), x, weight_shape, grad_output, deterministic, **forward)
    call, backend, dtype = checked.call.name, checked.call.backend, checked.dtype
    if x.shape[0] == 0 or 0 in geom.in_size:
        return _nothing(name, call, "zeros")
    bgeom = _shapes.backend_geometry(geom, op=name)
    copies = _layout_copy(checked, {"x": x, "grad_output": grad_output}, backend, bgeom,
                          input_method=None)
    if not _has_registries(backend):
        return _own_plan(name, backend, ConvProblem(
            name, call, tuple(x.shape), tuple(weight_shape), dtype, bgeom,
            tf32=tf32_enabled(), deterministic=deterministic, device=_device_of(x),
            operation="conv_weight"), copies)
    a_shape, go_shape, cgeom = tuple(x.shape), tuple(grad_output.shape), bgeom
    if name == "grad.conv_transpose_weight":  # the conv it transposes, roles exchanged
        a_shape, go_shape, cgeom = go_shape, a_shape, _shapes.transpose_as_conv(bgeom)
    w_shape = (go_shape[1], a_shape[1] // cgeom.groups, *cgeom.kernel)
    op = WEIGHT_GRAD_SELECTION_OPS[name]
    algorithms, default = algorithms_of(backend, "conv_weight")
    problem = ConvProblem(op, call, a_shape, w_shape, dtype, cgeom, False, tf32_enabled(),
                          deterministic, (_c_strides(a_shape, dtype), _c_strides(go_shape, dtype)),
                          _device_of(x), "conv_weight")
    return _selected_plan(name, call, op, problem, algorithms, default, copies)


def plan(op: str | Callable, *args: Any, **kwargs: Any) -> Plan:
    """What ``op(*args, **kwargs)`` would run, without running it.

    Validates the call exactly as ``op`` does (raising what it would raise), then reports the
    backend, the algorithm and why, the kernel(s), grid, block, shared memory, workspace and
    any layout copy, and which algorithms could serve the call (the reason for each that
    could not). Honours :func:`use_backend`, :func:`use_algorithm` (raising as the call
    would), :func:`use_tf32` and :func:`use_autotune` (a choice not cached yet shows as
    pending).

    For a gradient, the algorithm is that of its main computation: the transposed
    convolution of ``grad.conv_input`` (and ``grad.depthwise_conv_input``; the kernels then
    list the ``pad_fold`` that follows for reflect/replicate/circular padding, and the
    workspace holds the padded gradient; a 1x1, stride-1, unpadded convolution's input
    gradient is one GEMM, ``"matmul"``, unless another algorithm is forced), the convolution
    of ``grad.conv_transpose_input``, the weight-gradient GEMM of the ``*_weight`` gradients
    (with ``weight_grad_reduce`` after it where split-K partials are summed: the workspace).
    The NumPy backend has one algorithm, ``"numpy"``, for every op; forcing another raises
    as the call does.

    Parameters
    ----------
    op : str or function
        One of :data:`PLAN_OPS` -- ``"conv"``, ``"conv1d"``, ``"conv2d"``, ``"conv3d"``,
        ``"conv_transpose"`` (and its ``1d``/``2d``/``3d``), ``"grad.conv_input"``,
        ``"grad.conv_weight"``, ``"grad.conv_transpose_input"``,
        ``"grad.conv_transpose_weight"``, ``"grad.depthwise_conv_input"``,
        ``"grad.depthwise_conv_weight"`` -- or one of those functions (``gpuconv.conv2d``,
        ``gpuconv.grad.conv_weight``).
    *args, **kwargs
        As for ``op`` (without ``out``).

    Returns
    -------
    Plan

    Raises
    ------
    ValueError
        An ``op`` not in :data:`PLAN_OPS`; arguments ``op`` would reject; a forced algorithm
        that cannot serve the call (the call's message).
    TypeError
        Arguments ``op`` does not take, or that it would reject.

    Examples
    --------
    >>> import numpy as np, gpuconv
    >>> x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((4, 2, 3, 3), np.float32)
    >>> p = gpuconv.plan("conv2d", x, w, padding=1)
    >>> p.backend, p.algorithm, p.reason
    ('numpy', 'numpy', 'default heuristic')
    >>> g = np.ones((1, 4, 5, 5), np.float32)
    >>> gpuconv.plan(gpuconv.grad.conv_weight, x, w.shape, g, padding=1).op
    'grad.conv_weight'
    """
    name = _op_name(op)
    if not isinstance(name, str) or name not in PLAN_OPS:
        raise ValueError(f"plan: op={name!r} must be one of {PLAN_OPS}")
    arguments = _bind(name, args, kwargs)
    if name.startswith("conv_transpose"):
        return _plan_conv_transpose(name, **arguments)
    if name.startswith("conv"):
        return _plan_conv(name, **arguments)
    if name.endswith("_input"):
        return _plan_input_grad(name, **arguments)
    return _plan_weight_grad(name, **arguments)
