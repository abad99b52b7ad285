"""The algorithms that can compute a ``conv`` forward call on the device backends, and the
default choice among them (issue 14).

Each algorithm (:class:`gpuconv._algorithms.Algorithm`) says whether it can serve a call
(``can_serve``, with the reason when it cannot), describes the launches it would make without
running them (``describe``: what :func:`gpuconv.plan` shows) and runs it (``run``, on prepared
arrays). :data:`REGISTRY` lists them; :func:`default_name` is the documented heuristic
(docs/algorithms.md):

* ``matmul``: a 1x1 kernel, stride 1, no padding (a GEMM per group: cuBLAS on ``cuda``);
* ``depthwise``: ``groups == C_in`` (``depthwise_tiled``, or ``conv_direct`` if no tile fits);
* ``implicit_gemm`` -- on ``"cuda"`` only, never by default on ``"emulate"`` (its outputs stay
  those of the CUDA-core kernels, and tests stay fast) -- for a tensor-core dtype (float16;
  float32 only with TF32 on, :func:`gpuconv.use_tf32`) when ``C_out / groups >=``
  :data:`IGEMM_MIN_N` and ``K = C_in / groups * taps >=`` :data:`IGEMM_MIN_K`;
* ``tiled``: ``conv_tiled`` when ``C_out / groups >= 4`` and a tile fits in shared memory;
* ``direct``: ``conv_direct`` otherwise.

Without ``implicit_gemm`` this is exactly :func:`._conv.choose_conv_method`, so the default
choice on ``"emulate"`` (and on ``"cuda"`` for float64, and float32 without TF32) is the one
gpuconv made before algorithms were selectable.

Transposed convolutions (so conv's input gradients) and weight gradients have their own
registries (:data:`TRANSPOSE_REGISTRY`, :data:`WEIGHT_GRAD_REGISTRY`, through
:func:`algorithms_for`): ``implicit_gemm`` and ``direct`` (the CUDA-core kernels), with
:func:`default_transpose_name` and :func:`default_weight_grad_name`.

``implicit_gemm`` runs ``conv_igemm`` of ``kernels/conv_igemm.cu`` through
:mod:`._igemm` (its launch configuration); its module is compiled here (:func:`igemm_module`),
not through the kernel registry, with the instantiations :func:`igemm_names` lists.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ... import _dtypes, _kernels, _layout
from ..._algorithms import ConvProblem, Description
from ..._shapes import as_3d, is_pointwise
from . import _conv, _conv_transpose, _grad_plan, _igemm

#: implicit_gemm is the default on ``"cuda"`` from this many output channels per group (a
#: block computes 64; fewer than 16 leaves most of its tensor-core work on padding) ...
IGEMM_MIN_N = 16
#: ... and this reduction length ``C_in / groups * taps`` (one pipeline stage holds 32 fp16).
IGEMM_MIN_K = 32


def _shape_only(shape, dtype) -> np.ndarray:
    """A read-only array of ``shape`` and ``dtype`` that occupies no memory: the launch
    descriptions read only shapes, dtypes and sizes."""
    return np.broadcast_to(np.empty((), dtype), tuple(shape))


def _stand_ins(problem: ConvProblem):
    x = _shape_only(problem.x_shape, problem.dtype)
    w = _shape_only(problem.w_shape, problem.dtype)
    out = _shape_only((problem.x_shape[0], problem.w_shape[0], *problem.geom.out_size),
                      problem.dtype)
    return x, w, out


def _kernel_description(launch: _conv.KernelLaunch) -> Description:
    return Description(kernels=(launch.name,), grid=launch.grid, block=launch.block,
                       shared_mem=launch.shared_mem)


class _CudaCoreAlgorithm:
    """An algorithm of :mod:`._conv` (``method=`` of :func:`._conv.conv`)."""

    deterministic = True

    def __init__(self, name: str, summary: str):
        self.name = name
        self.summary = summary

    def __repr__(self):
        return f"<algorithm {self.name!r}>"

    def reads_in_place(self, problem: ConvProblem) -> bool:
        """Whether a channels-last ``x`` is read without a copy: never (NCDHW kernels)."""
        return False

    def run(self, backend, x, weight, bias, geom):
        return _conv.conv(backend, nchw(backend, x), weight, bias, geom, method=self.name)


def nchw(backend, x):
    """``x`` as the NCDHW kernels read it. The device backends receive a dense channels-last
    ``x`` for ``conv`` as it is (:meth:`DeviceBackend.reads_channels_last`), since
    ``implicit_gemm`` reads it in place; every other algorithm copies it here, once (counted
    as ``gpuconv._layout.COPIES["input_to_nchw"]``, as the copy before the backend would be)."""
    if x.flags.c_contiguous:
        return x
    _layout.COPIES["input_to_nchw"] += 1
    return backend.xp.ascontiguousarray(x)


def _dense_channels_last_strides(shape, itemsize: int) -> tuple[int, ...]:
    """Byte strides of a dense channels-last (N, C, *spatial) array of ``shape``."""
    n, c, *spatial = (int(v) for v in shape)
    strides = [0] * len(shape)
    step = itemsize
    strides[1] = step
    step *= max(c, 1)
    for i in range(len(spatial) - 1, -1, -1):
        strides[2 + i] = step
        step *= max(spatial[i], 1)
    strides[0] = step
    return tuple(strides)


def igemm_nhwc_reason(problem: ConvProblem) -> str | None:
    """None when ``problem``'s ``x`` is C-contiguous; else ``""`` when ``implicit_gemm``'s
    channels-last gather reads it in place, or why it copies it to NCDHW first."""
    if not problem.strides:
        return None
    x_strides = tuple(problem.strides[0])
    itemsize = problem.dtype.itemsize
    if x_strides == _conv_c_strides(problem.x_shape, itemsize):
        return None
    kind, reason = _igemm_kind(problem)
    if kind is None:
        return reason
    shape = problem.x_shape
    lifted = (*(st // itemsize for st in x_strides[:2]), *([0] * (5 - len(shape))),
              *(st // itemsize for st in x_strides[2:]))
    return _igemm.nhwc_reason(kind, shape[1], problem.geom.groups, lifted)


def _conv_c_strides(shape, itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(strides))


class _ConvKernel(_CudaCoreAlgorithm):
    """``conv_direct`` or ``conv_tiled`` of ``kernels/conv.cu`` (``family``); ``tiled`` also
    needs a tile that fits in shared memory."""

    def __init__(self, name: str, summary: str, family):
        super().__init__(name, summary)
        self.family = family

    def can_serve(self, problem: ConvProblem) -> tuple[bool, str]:
        if problem.dtype not in self.family.dtypes:
            return False, f"{self.family.template} has no {problem.dtype} instantiation"
        geom = problem.geom
        if self.name == "tiled" and _conv.conv_tiled_plan(
                as_3d(geom), problem.x_shape[0], problem.x_shape[1], problem.w_shape[0],
                geom.groups, problem.dtype.itemsize) is None:
            return False, (f"no tile of kernel={geom.kernel}, dilation={geom.dilation} fits "
                           f"in shared memory")
        return True, ""

    def describe(self, problem: ConvProblem) -> Description:
        x, w, out = _stand_ins(problem)
        return _kernel_description(
            _conv.conv_launch(problem.geom, x, w, out, problem.geom.groups, method=self.name))


class _Matmul(_CudaCoreAlgorithm):
    def can_serve(self, problem: ConvProblem) -> tuple[bool, str]:
        geom = problem.geom
        if not is_pointwise(geom):
            return False, (f"needs a 1x1 kernel, stride 1 and no padding; got kernel="
                           f"{geom.kernel}, stride={geom.stride}, padding={geom.pad_lo}/"
                           f"{geom.pad_hi}")
        return True, ""

    def describe(self, problem: ConvProblem) -> Description:
        groups = problem.geom.groups
        og, cg = problem.w_shape[0] // groups, problem.x_shape[1] // groups
        p = math.prod(problem.geom.out_size)
        blas = "cuBLAS (cupy.matmul)" if problem.backend == "cuda" else "numpy.matmul"
        return Description(kernels=(f"{blas}: ({groups}, {og}, {cg}) @ "
                                    f"({problem.x_shape[0]}, {groups}, {cg}, {p})",))


class _Depthwise(_CudaCoreAlgorithm):
    def can_serve(self, problem: ConvProblem) -> tuple[bool, str]:
        c_in, groups = problem.x_shape[1], problem.geom.groups
        if groups != c_in:
            return False, f"needs groups == C_in, got groups={groups}, C_in={c_in}"
        if problem.dtype not in _conv.DEPTHWISE.dtypes:
            return False, f"depthwise_tiled has no {problem.dtype} instantiation"
        return True, ""

    def describe(self, problem: ConvProblem) -> Description:
        x, w, out = _stand_ins(problem)
        return _kernel_description(_conv.depthwise_launch(problem.geom, x, w, out))


# ----------------------------------------------------------------------------- implicit GEMM

_modules: dict[tuple, object] = {}
_modules_lock = threading.Lock()


def igemm_names() -> list[str]:
    """The instantiations compiled together: every (kind, padding mode) with an ``int``
    index, and the float16 zeros one with ``long long`` (the list of C's kernel tests, so the
    emulator's disk cache is shared). Other ``long long`` ones are compiled one at a time."""
    return _igemm.all_name_expressions() + [_igemm.name_expression("float16", "zeros",
                                                                   "long long")]


class _CudaModule:
    """A ``cupy.RawModule`` and its name map, fetched by name expression."""

    def __init__(self, raw_module, mapping: dict):
        self._raw, self._mapping = raw_module, mapping

    def get_function(self, name: str):
        return self._raw.get_function(self._mapping[name])


def igemm_module(backend, name: str):
    """A module holding instantiation ``name`` of ``conv_igemm`` for ``backend`` (memoized
    per backend, device and name list): an emulator module, or on ``cuda`` the cubin the
    executor compiles and caches like the registry's kernels
    (:meth:`._executor.CupyExecutor.load_names`: the same NVRTC options, ``-ftz=false``)."""
    names = igemm_names()
    if name not in names:
        names = [name]
    elif backend.name == "cuda":  # NVRTC compiles one (T, Index) group at a time
        names = [n for n in names if _kernels.compile_group(n) == _kernels.compile_group(name)]
    scope = backend.xp.cuda.runtime.getDevice() if backend.name == "cuda" else None
    key = (backend.name, scope, tuple(names))
    with _modules_lock:
        module = _modules.get(key)
        if module is None:
            if backend.name == "cuda":
                module = _CudaModule(*backend.executor.load_names(_igemm.IGEMM_FILE, names))
            else:
                from ... import _emulator

                module = _emulator.load_module(_kernels.source_path(_igemm.IGEMM_FILE), names)
            _modules[key] = module
    return module


def _igemm_kind(problem: ConvProblem) -> tuple[str | None, str]:
    """``(kind, "")`` of ``conv_igemm`` for the call's dtype, or ``(None, reason)``."""
    dtype = problem.dtype
    if dtype == np.float16:
        return "float16", ""
    if _dtypes.is_bfloat16(dtype):
        return "bfloat16", ""
    if dtype == np.float32:
        if problem.tf32:
            return "tf32", ""
        return None, ("float32 runs on tensor cores only as TF32, which is off (exact float32 "
                      "is the default); enable it with gpuconv.use_tf32(True) or "
                      "GPUCONV_ALLOW_TF32=1")
    return None, f"tensor cores compute float16, bfloat16 or TF32, not {dtype}"


def _required_kind(problem: ConvProblem) -> str:
    """The kind of ``conv_igemm`` for the call's dtype; ValueError with the reason when tensor
    cores cannot serve it (a run that ``can_serve`` would have refused)."""
    kind, reason = _igemm_kind(problem)
    if kind is None:
        raise ValueError(f"algorithm 'implicit_gemm': {reason}")
    return kind


class _ImplicitGemm:
    """``conv_igemm`` (forward gather): tensor-core implicit GEMM (mma.sync), fp32
    accumulation."""

    name = "implicit_gemm"
    summary = "conv_igemm (kernels/conv_igemm.cu): tensor-core implicit GEMM"
    deterministic = True  # one block per output tile, a fixed summation order

    def __repr__(self):
        return f"<algorithm {self.name!r}>"

    def can_serve(self, problem: ConvProblem) -> tuple[bool, str]:
        kind, reason = _igemm_kind(problem)
        return kind is not None, reason

    def _config(self, problem: ConvProblem, weight_pointer: int = 0):
        kind = _required_kind(problem)
        return kind, _igemm.igemm_config(
            kind, problem.x_shape, problem.w_shape, as_3d(problem.geom),
            groups=problem.geom.groups, padding_mode=problem.geom.padding_mode,
            has_bias=problem.has_bias, weight_pointer=weight_pointer)

    def reads_in_place(self, problem: ConvProblem) -> bool:
        """Whether ``problem``'s channels-last ``x`` is read without a copy: by the
        channels-last gather when :func:`igemm_nhwc_reason` allows it."""
        return igemm_nhwc_reason(problem) == ""

    def describe(self, problem: ConvProblem) -> Description:
        if igemm_nhwc_reason(problem) == "":
            kind, _ = _igemm_kind(problem)
            cfg = _igemm.forward_config(
                kind, problem.x_shape, problem.w_shape, as_3d(problem.geom),
                groups=problem.geom.groups, padding_mode=problem.geom.padding_mode,
                has_bias=problem.has_bias, gather="nhwc")
            return Description(kernels=("weight -> (C_out, *k, C_in / groups) rows (one copy)",
                                        cfg.name), grid=cfg.grid, block=cfg.block,
                               shared_mem=_igemm.shared_bytes(),
                               workspace_bytes=math.prod(problem.w_shape) * problem.dtype.itemsize)
        _, cfg = self._config(problem)
        return Description(kernels=(cfg.name,), grid=cfg.grid, block=cfg.block,
                           shared_mem=_igemm.shared_bytes())

    def run(self, backend, x, weight, bias, geom):
        problem = ConvProblem.of(backend.name, x, weight, bias, geom,
                                 strides=(tuple(x.strides), tuple(weight.strides)))
        kind = _required_kind(problem)
        if igemm_nhwc_reason(problem) != "":  # C-contiguous, or channels-last it cannot read
            x = nchw(backend, x)
        out_dtype = np.dtype(x.dtype)
        x, weight, bias = _bits(kind, x, weight, bias)
        out = _igemm.run_forward(_module_for(backend), backend.xp, kind, x, weight, bias, geom)
        return out.view(out_dtype)


def _bits(kind: str, *arrays):
    """bfloat16 arrays as the uint16 bits the kernel takes (others as they are)."""
    if kind != "bfloat16":
        return arrays
    return tuple(None if a is None else a.view(np.uint16) for a in arrays)


def _module_for(backend):
    """``name -> module`` of ``backend`` (:func:`igemm_module`), for the ``_igemm`` runners."""
    return lambda name: igemm_module(backend, name)


class _FamilyDirect(_CudaCoreAlgorithm):
    """A CUDA-core algorithm of one kernel family (:data:`family`): it serves the dtypes the
    family has instantiations for."""

    family = None

    def can_serve(self, problem: ConvProblem) -> tuple[bool, str]:
        if problem.dtype not in self.family.dtypes:
            return False, f"{self.family.template} has no {problem.dtype} instantiation"
        return True, ""


class _TransposeDirect(_FamilyDirect):
    """``conv_transpose3d`` of ``kernels/conv_transpose.cu`` (:mod:`._conv_transpose`)."""

    family = _conv_transpose.FAMILY

    def describe(self, problem: ConvProblem) -> Description:
        return _grad_plan.transpose_direct(problem)

    def run(self, backend, x, weight, bias, geom):
        return _conv_transpose.conv_transpose(backend, x, weight, bias, geom)


class _ImplicitGemmTranspose(_ImplicitGemm):
    """``conv_igemm`` with the transposed gather: a transposed convolution (and so a
    convolution's input gradient) on tensor cores; the weight is copied once into rows of K."""

    summary = ("conv_igemm, transposed gather (kernels/conv_igemm.cu): tensor-core implicit "
               "GEMM")

    def _config(self, problem: ConvProblem, weight_pointer: int = 0):
        kind = _required_kind(problem)
        return kind, _igemm.transpose_config(
            kind, problem.x_shape, problem.w_shape, as_3d(problem.geom),
            groups=problem.geom.groups, has_bias=problem.has_bias,
            weight_pointer=weight_pointer)

    def describe(self, problem: ConvProblem) -> Description:
        _, cfg = self._config(problem)
        return Description(kernels=("weight -> rows of K (one copy)", cfg.name), grid=cfg.grid,
                           block=cfg.block, shared_mem=_igemm.shared_bytes(),
                           workspace_bytes=math.prod(problem.w_shape) * problem.dtype.itemsize)

    def run(self, backend, x, weight, bias, geom):
        problem = ConvProblem.of(backend.name, x, weight, bias, geom, operation="conv_transpose")
        kind = _required_kind(problem)
        out_dtype = np.dtype(x.dtype)
        x, weight, bias = _bits(kind, x, weight, bias)
        out = _igemm.run_transpose(_module_for(backend), backend.xp, kind, x, weight, bias, geom)
        return out.view(out_dtype)


class _WeightGradDirect(_FamilyDirect):
    """``conv_weight_grad`` / ``depthwise_weight_grad`` of ``kernels/conv_grad.cu``."""

    family = _conv.WEIGHT_GRAD

    def describe(self, problem: ConvProblem) -> Description:
        return _grad_plan.weight_grad_direct(problem)

    def run(self, backend, x, grad_output, geom, deterministic):
        return _conv.conv_weight_grad(backend, x, grad_output, geom, deterministic)


class _ImplicitGemmWeight(_ImplicitGemm):
    """``conv_igemm`` with the roles exchanged: a convolution's weight gradient on tensor cores,
    K = N * output positions split over the grid (atomic, or deterministic partials)."""

    summary = ("conv_igemm, weight-gradient roles (kernels/conv_igemm.cu): tensor-core "
               "implicit GEMM, split-K")

    def _config(self, problem: ConvProblem, weight_pointer: int = 0):
        kind = _required_kind(problem)
        go_shape = (problem.x_shape[0], problem.w_shape[0], *problem.geom.out_size)
        return kind, _igemm.weight_grad_config(
            kind, problem.x_shape, _lift(go_shape), as_3d(problem.geom),
            groups=problem.geom.groups, padding_mode=problem.geom.padding_mode,
            deterministic=problem.deterministic, go_pointer=weight_pointer)

    def describe(self, problem: ConvProblem) -> Description:
        kind, cfg = self._config(problem)
        kernels = (cfg.name,)
        if cfg.epilogue == _igemm.EPILOGUE_PARTIAL or (cfg.epilogue == _igemm.EPILOGUE_ATOMIC
                                                       and kind != "tf32"):
            ws = _shape_only(cfg.workspace, np.float32)  # summed (and rounded) by run()
            index = _kernels.index_dtype(ws, _shape_only(problem.w_shape, problem.dtype),
                                         max_index=2 * ws.size + 2 * _conv.THREADS)
            kernels += (_conv.REDUCE.name_expression(problem.dtype, index),)
        return Description(kernels=kernels, grid=cfg.grid, block=cfg.block,
                           shared_mem=_igemm.shared_bytes(),
                           workspace_bytes=cfg.workspace_bytes)

    def run(self, backend, x, grad_output, geom, deterministic):
        xp = backend.xp
        dtype = np.dtype(x.dtype)
        w_shape = (grad_output.shape[1], x.shape[1] // geom.groups, *geom.kernel)
        problem = ConvProblem.of(backend.name, x, w_shape, None, geom,
                                 operation="conv_weight", deterministic=deterministic)
        kind = _required_kind(problem)

        def reduce(ws, splits):  # the fixed-order sum of the splits, one rounding to dtype
            result = xp.empty(math.prod(w_shape), dtype)
            index = _kernels.index_dtype(ws, result,
                                         max_index=2 * ws.size + 2 * _conv.THREADS)
            kernel = backend.executor.get_function(
                _conv.GRAD_FILE, _conv.REDUCE.name_expression(dtype, index))
            backend.executor.launch(
                kernel, grid=max(1, min(_igemm.ceil_div(result.size, _conv.THREADS),
                                        _conv.MAX_BLOCKS)),
                block=_conv.THREADS, args=(ws, result, result.size, splits))
            return result

        x, grad_output = _bits(kind, x, grad_output)
        out = _igemm.run_weight_grad(_module_for(backend), xp, kind, x, grad_output, geom,
                                     deterministic, reduce=reduce)
        return out if out.dtype == dtype else out.view(dtype)


def _lift(shape) -> tuple:
    """``(N, C, *spatial)`` with the spatial dims lifted to 3 (leading 1s)."""
    return (*shape[:2], *([1] * (5 - len(shape))), *shape[2:])


DIRECT = _ConvKernel("direct", "conv_direct (kernels/conv.cu): one output per thread",
                     _conv.DIRECT)
TILED = _ConvKernel("tiled", "conv_tiled (kernels/conv.cu): shared-memory input tile, register "
                             "blocking over 8 output channels x 4 columns", _conv.TILED)
MATMUL = _Matmul("matmul", "a GEMM per group for 1x1 convolutions (cuBLAS on cuda)")
DEPTHWISE = _Depthwise("depthwise", "depthwise_tiled (kernels/depthwise.cu), groups == C_in")
IMPLICIT_GEMM = _ImplicitGemm()

#: Every conv-forward algorithm of the device backends, in the order autotune times them.
REGISTRY = (MATMUL, DEPTHWISE, IMPLICIT_GEMM, TILED, DIRECT)
#: ... of a transposed convolution (and of a convolution's input gradient, which is one) ...
TRANSPOSE_REGISTRY = (_ImplicitGemmTranspose(), _TransposeDirect(
    "direct", "conv_transpose3d (kernels/conv_transpose.cu): a gather, one output per thread"))
#: ... and of a weight gradient.
WEIGHT_GRAD_REGISTRY = (_ImplicitGemmWeight(), _WeightGradDirect(
    "direct", "conv_weight_grad / depthwise_weight_grad (kernels/conv_grad.cu): CUDA cores, "
              "split reduction"))


def default_name(problem: ConvProblem) -> str:
    """The default algorithm of a call (see the module docstring).

    >>> import dataclasses
    >>> from gpuconv._shapes import conv_geometry
    >>> g = conv_geometry((56, 56), (3, 3), stride=1, padding=1, dilation=1)
    >>> p = ConvProblem("conv", "cuda", (32, 64, 56, 56), (64, 64, 3, 3), np.dtype("float16"), g)
    >>> default_name(p), default_name(dataclasses.replace(p, backend="emulate"))
    ('implicit_gemm', 'tiled')
    """
    geom = problem.geom
    og = problem.w_shape[0] // geom.groups
    k = problem.x_shape[1] // geom.groups * math.prod(geom.kernel)
    if (problem.backend == "cuda" and not is_pointwise(geom)
            and geom.groups != problem.x_shape[1] and og >= IGEMM_MIN_N and k >= IGEMM_MIN_K
            and IMPLICIT_GEMM.can_serve(problem)[0]):
        return IMPLICIT_GEMM.name
    return _conv.choose_conv_method(problem.x_shape, problem.w_shape, geom,
                                    problem.dtype.itemsize)


def _tensor_core_default(problem: ConvProblem, og: int, k: int) -> bool:
    """The shared rule: ``implicit_gemm`` by default on ``"cuda"`` for a tensor-core dtype
    when ``N >= IGEMM_MIN_N`` and ``K >= IGEMM_MIN_K`` of the GEMM it would run."""
    return (problem.backend == "cuda" and og >= IGEMM_MIN_N and k >= IGEMM_MIN_K
            and _igemm_kind(problem)[0] is not None)


def default_transpose_name(problem: ConvProblem) -> str:
    """A transposed convolution's default: ``implicit_gemm`` on ``"cuda"`` when its GEMM has
    ``C_out / groups >= 16`` and ``C_in / groups * taps >= 32`` (a tensor-core dtype), else
    ``direct``."""
    geom = problem.geom
    og = problem.w_shape[1]
    k = problem.x_shape[1] // geom.groups * math.prod(geom.kernel)
    return "implicit_gemm" if _tensor_core_default(problem, og, k) else "direct"


def default_weight_grad_name(problem: ConvProblem) -> str:
    """A weight gradient's default: ``implicit_gemm`` on ``"cuda"`` when more than one input
    channel per group, ``C_out / groups >= 16`` and ``C_in / groups * taps >= 32`` (the GEMM's
    N and M), a tensor-core dtype; else ``direct``."""
    geom = problem.geom
    cg, og = problem.w_shape[1], problem.w_shape[0] // geom.groups
    return ("implicit_gemm" if cg > 1 and _tensor_core_default(
        problem, og, cg * math.prod(geom.kernel)) else "direct")


def algorithms_for(operation: str):
    """``(algorithms, default)`` of ``"conv_transpose"`` or ``"conv_weight"``."""
    if operation == "conv_transpose":
        return TRANSPOSE_REGISTRY, default_transpose_name
    if operation == "conv_weight":
        return WEIGHT_GRAD_REGISTRY, default_weight_grad_name
    raise ValueError(f"operation={operation!r}: the device backends' conv algorithms are "
                     f"conv_algorithms")
