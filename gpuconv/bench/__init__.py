"""``python -m gpuconv bench``: time gpuconv against its peers, with a roofline.

Each named *workload* (a shape of one operation, listed by ``--list``) is run by gpuconv on
one backend and, side by side in the same process, by every peer that is installed:
PyTorch (``torch.nn.functional``, cuDNN on a GPU), ``torchvision.ops.deform_conv2d``,
``numpy.convolve``, ``scipy.signal.fftconvolve`` and, on a GPU, ``cupyx.scipy.signal``
and ``cupyx.scipy.ndimage``. A peer that is not installed, or that fails on a workload,
shows ``-`` and gets a note; none is required.

Timing
------
* CPU: ``time.perf_counter`` around calls. GPU: ``cupy.cuda.Event`` pairs on the null
  stream (which orders PyTorch's default stream too), synchronised after each sample.
* gpuconv, its peers and the two ceilings (below) run in the same process, *interleaved*:
  each warms up, then the ``--repeat`` samples go round-robin, one sample of each per round
  (the order rotating), each after a pause (``SETTLE_S``, so the previous one's spinning
  BLAS/OpenMP threads have parked). Sample ``r`` uses input set ``r % COPIES`` (rotated
  inputs, so caches don't flatter). A sample repeats the call enough times to last
  ``MIN_SAMPLE_S``. The table reports the median sample per call, and the spread.
* The ceilings are timed beside every workload, in the same rounds: a large matrix product
  (FLOP/s; float32, or the workload's compute dtype) and a large copy (bytes read +
  written per second). A burst of load lands on the workload and its ceilings alike.

Reliability
-----------
Every timing keeps its samples: min/median/max and ``spread = (max - min) / median``. The
load is measured twice: the 1-minute load average before and after the run, and, per
workload, the CPU time other processes used while it was timed (``/proc/stat`` minus this
process's own: :class:`LoadProbe`). :func:`assess` flags a row unreliable when a spread
exceeds :data:`SPREAD_LIMIT`, other processes used more than :data:`LOAD_LIMIT` of the
cores, or the load average was too high (:data:`LOADAVG_LIMIT`); the table then prints
``~`` and two digits and the ratio's range instead of exact-looking figures. A roofline
above 100% is impossible, so it is flagged as a measurement error (``ERR``), never
reported as a result. The JSON records which BLAS library and kernel ran
(:func:`blas_info`), and the run warns when ``OPENBLAS_CORETYPE`` pins an older kernel than
the CPU supports (:func:`openblas_kernel_warning`).

Roofline
--------
For each workload ``F`` counts FLOPs (a multiply-add is 2 FLOPs; the formulas are in
:func:`flops`) and ``B`` bytes (every input, weight and output array once, in the workload
dtype: :func:`traffic_bytes`). With the ceilings ``P`` (FLOP/s) and ``W`` (bytes/s) --
the fastest of the samples timed beside this workload, a rate the machine demonstrably
reached -- the roofline time is ``max(F / P, B / W)`` and::

    % of roofline = 100 * (F / t) / min(P, (F / B) * W) = 100 * max(F / P, B / W) / t

``ratio`` is gpuconv's median time divided by the fastest peer's (below 1: gpuconv is
faster); ``ratio_min`` and ``ratio_max`` bound it from the samples' extremes.

Adding workloads
----------------
:data:`WORKLOADS` maps a name to a :class:`Workload` of a *kind*; :data:`KINDS` maps each
kind to how its inputs are made, how gpuconv and each peer run it, and its FLOP and byte
counts (:func:`register_kind`, :func:`register_workload`).

Backward workloads (kind ``"backward"``, named ``<forward>_backward``, one for each name in
:data:`BACKWARD_OF`, same sizes) time the gradients of every array input of the forward
(``x`` and the weight; also the offset and mask for deform) for one random ``grad_output``:
gpuconv's :mod:`gpuconv.grad` functions against ``torch.autograd.grad`` of PyTorch's (or
torchvision's) forward output, built once before the timing with ``retain_graph=True``, so
both sides time the backward pass alone. Their results (tuples of gradients) are compared
pairwise; ``rel_diff`` is the largest of the per-gradient differences.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

import gpuconv

#: Sets of inputs each implementation cycles through.
COPIES = 3
#: A timing sample repeats the call until it lasts at least this long (seconds).
MIN_SAMPLE_S = 0.002
#: Pause before each timing sample (seconds); see :func:`time_side_by_side`.
SETTLE_S = 0.25
#: The pause with ``--quick`` (a smoke test: short, not a measurement).
QUICK_SETTLE_S = 0.02
DEFAULT_REPEAT = {"quick": 3, "full": 10}
SIZE_SETS = ("quick", "cpu", "gpu")
JSON_SCHEMA = "gpuconv-bench/2"

# Reliability thresholds (see :func:`assess` and benchmarks/README.md for why these values).
#: A timing whose samples spread by more than this fraction of their median
#: (``(max - min) / median``) makes its row unreliable.
SPREAD_LIMIT = 0.5
#: Other processes' average CPU use while a row is timed, as a fraction of the machine's
#: cores, above which the row is unreliable.
LOAD_LIMIT = 0.15
#: 1-minute load average per core before the run above which every row is unreliable.
LOADAVG_LIMIT = 0.5
#: ... and after the run: the benchmark itself accounts for up to one thread per core, so
#: only the excess over that is other processes' (the same 0.5 per core).
LOADAVG_END_LIMIT = 1.5
THRESHOLDS = {"spread_limit": SPREAD_LIMIT, "load_limit": LOAD_LIMIT,
              "loadavg_limit": LOADAVG_LIMIT, "loadavg_end_limit": LOADAVG_END_LIMIT}


# ----------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    """One named benchmark shape.

    ``sizes`` maps a size set (``"quick"``, ``"cpu"``, ``"gpu"``) to the kind's parameters;
    a workload without a set is not run there. ``dtype`` fixes the dtype (else ``--dtype``).
    """

    name: str
    kind: str
    sizes: Mapping[str, Mapping]
    dtype: str | None = None
    note: str = ""


@dataclass
class Kind:
    """How to run and count one kind of workload.

    make(params, dtype, rng) -> dict of NumPy arrays (inputs, weights);
    run(arrays, params) -> gpuconv's result;
    peers: name -> (device, arrays, params) -> zero-argument callable, where ``device`` is
    ``"cpu"`` or ``"cuda"`` and ``arrays`` are on it (NumPy or CuPy); the callable returns
    the peer's result as an array convertible by ``_to_numpy`` (or a tuple of them). A peer
    raises ``_Unavailable`` (or ImportError) when it cannot run here (a note says why), and
    ``_NotApplicable`` when it does not compute this workload at all (silently skipped);
    flops(params) -> int; out_elements(params) -> int (for the byte count).
    """

    make: Callable
    run: Callable
    flops: Callable
    out_elements: Callable
    peers: dict = field(default_factory=dict)
    describe: Callable = repr


class _Unavailable(Exception):
    """A peer cannot run this workload here (missing package, no device, dtype)."""


class _NotApplicable(_Unavailable):
    """A peer does not compute this workload at all (no note, no column entry)."""


def _prod(values) -> int:
    return math.prod(int(v) for v in values)


def _tuple(value, nd):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * nd


def _conv_out(p):
    nd = len(p["size"])
    k, s, pad = _tuple(p["kernel"], nd), _tuple(p.get("stride", 1), nd), _tuple(p["padding"], nd)
    return tuple((i + 2 * q - kk) // ss + 1 for i, q, kk, ss in zip(p["size"], pad, k, s))


def _convT_out(p):
    nd = len(p["size"])
    k, s, pad = _tuple(p["kernel"], nd), _tuple(p.get("stride", 1), nd), _tuple(p["padding"], nd)
    return tuple((i - 1) * ss - 2 * q + kk for i, q, kk, ss in zip(p["size"], pad, k, s))


def _ksize(p):
    return _prod(_tuple(p["kernel"], len(p["size"])))


def flops(kind: str, p: Mapping) -> int:
    """FLOPs of one call (a multiply-add counts 2), by kind.

    * conv: ``2 * N * C_out * prod(out) * (C_in / groups) * prod(kernel)``
    * conv_transpose: ``2 * N * C_in * prod(in) * (C_out / groups) * prod(kernel)`` (every
      input scattered through every tap)
    * depthwise: ``2 * N * C * prod(out) * prod(kernel)``
    * separable: depthwise ``+ 2 * N * C_out * prod(out) * C``
    * deform: the GEMM ``2 * N * C_out * P * C_in * K`` plus bilinear sampling, ``8`` per
      sampled value (4 corners) ``+ 1`` for the mask, over ``N * C_in * K * P`` samples
      (``P`` outputs per map, ``K`` taps)
    * convolve: direct-method count ``2 * len(out) * taps`` (whatever the method)
    * backward: the input gradient and the weight gradient each cost their forward's FLOPs
      (the same multiply-adds, contracted over other axes), so conv, conv_transpose and
      depthwise count ``2 *`` the forward. Deform counts its two GEMMs (``2 *`` the
      forward's) plus, per sampled value, ``8`` to resample it for the weight gradient
      (4 corners), ``8`` to scatter its gradient onto the 4 corners (input gradient),
      ``16`` for the offset gradient (each coordinate's bilinear derivative over 4 corners)
      and, with a mask, ``1`` (the mask product) ``+ 2`` (the mask gradient's multiply-add):
      ``2 * GEMM + samples * (32 + 3)``
    """
    return int(KINDS[kind].flops(p))


def traffic_bytes(kind: str, p: Mapping, arrays: Mapping, itemsize: int) -> int:
    """Bytes of every input/weight array plus the output, each once, at ``itemsize``."""
    elements = sum(int(a.size) for a in arrays.values()) + KINDS[kind].out_elements(p)
    return int(elements * itemsize)


# --- conv ----------------------------------------------------------------------------


def _rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _conv_make(p, dtype, rng):
    k = _tuple(p["kernel"], len(p["size"]))
    g = p.get("groups", 1)
    fan_in = p["c_in"] // g * _prod(k)
    return {"x": _rand(rng, (p["n"], p["c_in"], *p["size"]), dtype),
            "weight": _rand(rng, (p["c_out"], p["c_in"] // g, *k), dtype, fan_in ** -0.5)}


def _conv_run(a, p):
    return gpuconv.conv(a["x"], a["weight"], stride=p.get("stride", 1), padding=p["padding"],
                        groups=p.get("groups", 1))


def _torch_conv(device, a, p):
    _, F = _torch(device)
    x, w = _to_torch(a["x"]), _to_torch(a["weight"])
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(p["size"])]
    kw = dict(stride=p.get("stride", 1), padding=p["padding"], groups=p.get("groups", 1))
    return lambda: fn(x, w, **kw)


def _conv_describe(p):
    s = "x".join(map(str, (p["n"], p["c_in"], *p["size"])))
    k = "x".join(map(str, _tuple(p["kernel"], len(p["size"]))))
    extra = f", stride {p['stride']}" if p.get("stride", 1) != 1 else ""
    return f"{s} -> {p['c_out']}, {k}{extra}, pad {p['padding']}"


# --- conv_transpose --------------------------------------------------------------------


def _convT_make(p, dtype, rng):
    k = _tuple(p["kernel"], len(p["size"]))
    return {"x": _rand(rng, (p["n"], p["c_in"], *p["size"]), dtype),
            "weight": _rand(rng, (p["c_in"], p["c_out"], *k), dtype, (p["c_in"] * _prod(k)) ** -0.5)}


def _convT_run(a, p):
    return gpuconv.conv_transpose(a["x"], a["weight"], stride=p["stride"], padding=p["padding"])


def _torch_convT(device, a, p):
    _, F = _torch(device)
    x, w = _to_torch(a["x"]), _to_torch(a["weight"])
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[len(p["size"])]
    return lambda: fn(x, w, stride=p["stride"], padding=p["padding"])


# --- depthwise / separable ---------------------------------------------------------------


def _dw_make(p, dtype, rng):
    k = _tuple(p["kernel"], len(p["size"]))
    arrays = {"x": _rand(rng, (p["n"], p["c"], *p["size"]), dtype),
              "dw_weight": _rand(rng, (p["c"], 1, *k), dtype, _prod(k) ** -0.5)}
    if "c_out" in p:
        arrays["pw_weight"] = _rand(rng, (p["c_out"], p["c"]) + (1,) * len(k), dtype,
                                    p["c"] ** -0.5)
    return arrays


def _dw_run(a, p):
    return gpuconv.depthwise_conv(a["x"], a["dw_weight"], padding=p["padding"],
                                  stride=p.get("stride", 1))


def _torch_dw(device, a, p):
    _, F = _torch(device)
    x, w = _to_torch(a["x"]), _to_torch(a["dw_weight"])
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(p["size"])]
    return lambda: fn(x, w, padding=p["padding"], stride=p.get("stride", 1), groups=p["c"])


def _sep_run(a, p):
    return gpuconv.separable_conv(a["x"], a["dw_weight"], a["pw_weight"], padding=p["padding"])


def _torch_sep(device, a, p):
    _, F = _torch(device)
    x, dw, pw = (_to_torch(a[k]) for k in ("x", "dw_weight", "pw_weight"))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(p["size"])]
    return lambda: fn(fn(x, dw, padding=p["padding"], groups=p["c"]), pw)


def _dw_describe(p):
    s = "x".join(map(str, (p["n"], p["c"], *p["size"])))
    k = "x".join(map(str, _tuple(p["kernel"], len(p["size"]))))
    to = f" -> {p['c_out']} (depthwise {k} + pointwise)" if "c_out" in p else f", {k}"
    return f"{s}{to}, pad {p['padding']}"


# --- deform ---------------------------------------------------------------------------------


def _deform_out(p):
    return _conv_out({**p, "stride": 1})


def _deform_make(p, dtype, rng):
    ho, wo = _deform_out(p)
    kk = _prod(_tuple(p["kernel"], 2))
    arrays = _conv_make(p, dtype, rng)
    arrays["offset"] = rng.uniform(-2, 2, (p["n"], 2 * kk, ho, wo)).astype(dtype)
    if p.get("mask", True):
        arrays["mask"] = rng.uniform(0, 1, (p["n"], kk, ho, wo)).astype(dtype)
    return arrays


def _deform_run(a, p):
    return gpuconv.deform_conv2d(a["x"], a["offset"], a["weight"], padding=p["padding"],
                                 mask=a.get("mask"))


def _torchvision_deform(device, a, p):
    _torch(device)
    try:
        from torchvision.ops import deform_conv2d
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise _Unavailable(f"not importable ({type(exc).__name__}: {exc})") from None
    x, off, w = (_to_torch(a[k]) for k in ("x", "offset", "weight"))
    mask = _to_torch(a["mask"]) if "mask" in a else None
    return lambda: deform_conv2d(x, off, w, padding=p["padding"], mask=mask)


def _deform_flops(p):
    ho, wo = _deform_out(p)
    samples = p["n"] * p["c_in"] * _ksize(p) * ho * wo
    return _conv_flops(p) + samples * (8 + (1 if p.get("mask", True) else 0))


def _conv_flops(p):
    g = p.get("groups", 1)
    return 2 * p["n"] * p["c_out"] * _prod(_conv_out(p)) * (p["c_in"] // g) * _ksize(p)


# --- convolve ---------------------------------------------------------------------------------


def _convolve_make(p, dtype, rng):
    return {"a": _rand(rng, p["length"], dtype), "v": _rand(rng, p["taps"], dtype)}


def _convolve_out(p):
    n, m = p["length"], p["taps"]
    return {"full": n + m - 1, "same": max(n, m), "valid": max(n, m) - min(n, m) + 1}[p["mode"]]


def _numpy_convolve(device, a, p):
    if device != "cpu":
        raise _Unavailable("numpy.convolve runs on the CPU")
    return lambda: np.convolve(a["a"], a["v"], p["mode"])


def _scipy_fftconvolve(device, a, p):
    if device == "cpu":
        signal = _import("scipy.signal", "scipy")
    else:
        signal = _import("cupyx.scipy.signal", "cupyx")
    return lambda: signal.fftconvolve(a["a"], a["v"], mode=p["mode"])


def _cupyx_ndimage_convolve(device, a, p):
    if device != "cuda":
        raise _Unavailable("cupyx runs on a GPU")
    if p["mode"] != "same" or p["taps"] % 2 == 0:
        raise _Unavailable("ndimage.convolve1d equals mode='same' for an odd filter only")
    ndimage = _import("cupyx.scipy.ndimage", "cupyx")
    return lambda: ndimage.convolve1d(a["a"], a["v"], mode="constant")


KINDS: dict[str, Kind] = {
    "conv": Kind(_conv_make, _conv_run, _conv_flops,
                 lambda p: p["n"] * p["c_out"] * _prod(_conv_out(p)),
                 {"torch": _torch_conv}, _conv_describe),
    "conv_transpose": Kind(
        _convT_make, _convT_run,
        lambda p: 2 * p["n"] * p["c_in"] * _prod(p["size"]) * p["c_out"] * _ksize(p),
        lambda p: p["n"] * p["c_out"] * _prod(_convT_out(p)),
        {"torch": _torch_convT}, _conv_describe),
    "depthwise": Kind(_dw_make, _dw_run,
                      lambda p: 2 * p["n"] * p["c"] * _prod(_conv_out(p)) * _ksize(p),
                      lambda p: p["n"] * p["c"] * _prod(_conv_out(p)),
                      {"torch": _torch_dw}, _dw_describe),
    "separable": Kind(_dw_make, _sep_run,
                      lambda p: 2 * p["n"] * _prod(_conv_out(p)) * p["c"] * (_ksize(p) + p["c_out"]),
                      lambda p: p["n"] * p["c_out"] * _prod(_conv_out(p)),
                      {"torch": _torch_sep}, _dw_describe),
    "deform": Kind(_deform_make, _deform_run, _deform_flops,
                   lambda p: p["n"] * p["c_out"] * _prod(_deform_out(p)),
                   {"torchvision": _torchvision_deform},
                   lambda p: _conv_describe(p) + (", mask" if p.get("mask", True) else "")),
    "convolve": Kind(_convolve_make,
                     lambda a, p: gpuconv.convolve(a["a"], a["v"], p["mode"]),
                     lambda p: 2 * _convolve_out(p) * p["taps"], _convolve_out,
                     {"numpy.convolve": _numpy_convolve,
                      "scipy.fftconvolve": _scipy_fftconvolve,
                      "cupyx.ndimage.convolve1d": _cupyx_ndimage_convolve},
                     lambda p: f"{p['length']:,} samples * {p['taps']} taps, mode {p['mode']!r}"),
}


_RESNET = dict(c_in=64, size=(56, 56), c_out=64, kernel=3, padding=1)
_STEM = dict(c_in=3, size=(224, 224), c_out=64, kernel=7, stride=2, padding=3)
_DW = dict(c=256, size=(56, 56), kernel=3, padding=1)
_C1 = dict(c_in=64, size=(4096,), c_out=64, kernel=9, padding=4)
_C3 = dict(c_in=16, size=(16, 32, 32), c_out=32, kernel=3, padding=1)
_CT = dict(c_in=64, size=(28, 28), c_out=32, kernel=4, stride=2, padding=1)
_DEF = dict(c_in=64, size=(28, 28), c_out=64, kernel=3, padding=1, mask=True)
_SEP = dict(c=128, size=(56, 56), kernel=3, padding=1, c_out=128)

WORKLOADS: dict[str, Workload] = {}


def register_workload(workload: Workload) -> None:
    """Add (or replace) a workload; its kind must be in :data:`KINDS`."""
    if workload.kind not in KINDS:
        raise ValueError(f"workload {workload.name!r}: unknown kind {workload.kind!r}")
    WORKLOADS[workload.name] = workload


def register_kind(name: str, kind: Kind) -> None:
    """Add (or replace) a workload kind."""
    KINDS[name] = kind


for _w in (
    Workload("conv2d_resnet", "conv", {
        "quick": {**_RESNET, "n": 1, "size": (14, 14), "c_in": 16, "c_out": 16},
        "cpu": {**_RESNET, "n": 8}, "gpu": {**_RESNET, "n": 32}}),
    Workload("conv2d_stem", "conv", {
        "quick": {**_STEM, "n": 1, "size": (32, 32)},
        "cpu": {**_STEM, "n": 4}, "gpu": {**_STEM, "n": 32}}),
    Workload("depthwise", "depthwise", {
        "quick": {**_DW, "n": 1, "c": 16, "size": (14, 14)},
        "cpu": {**_DW, "n": 8}, "gpu": {**_DW, "n": 32}},
        note="goal on CPU: <= 0.6 x PyTorch's time"),
    Workload("depthwise_fp16", "depthwise", {"gpu": {**_DW, "n": 32}}, dtype="float16"),
    Workload("conv1d", "conv", {
        "quick": {**_C1, "n": 1, "size": (256,), "c_in": 16, "c_out": 16},
        "cpu": {**_C1, "n": 16}, "gpu": {**_C1, "n": 64}}),
    Workload("conv3d", "conv", {
        "quick": {**_C3, "n": 1, "size": (4, 8, 8), "c_in": 4, "c_out": 8},
        "cpu": {**_C3, "n": 2}, "gpu": {**_C3, "n": 16}}),
    Workload("conv_transpose2d", "conv_transpose", {
        "quick": {**_CT, "n": 1, "size": (7, 7), "c_in": 16, "c_out": 8},
        "cpu": {**_CT, "n": 8}, "gpu": {**_CT, "n": 32}}),
    Workload("deform_conv2d", "deform", {
        "quick": {**_DEF, "n": 1, "size": (8, 8), "c_in": 8, "c_out": 8},
        "cpu": {**_DEF, "n": 4}, "gpu": {**_DEF, "n": 16}},
        note="goal on CPU: <= 0.5 x torchvision's time"),
    Workload("separable", "separable", {
        "quick": {**_SEP, "n": 1, "c": 16, "c_out": 16, "size": (14, 14)},
        "cpu": {**_SEP, "n": 8}, "gpu": {**_SEP, "n": 32}},
        note="MobileNet block: depthwise 3x3 + pointwise"),
    Workload("convolve_long", "convolve", {
        "quick": {"length": 10_000, "taps": 101, "mode": "same"},
        "cpu": {"length": 1_000_000, "taps": 101, "mode": "same"},
        "gpu": {"length": 1 << 24, "taps": 101, "mode": "same"}}),
):
    register_workload(_w)


# --- backward (gradients) -------------------------------------------------------------------
#
# A backward workload's parameters are its forward workload's plus ``op``, the forward kind
# ("conv", "conv_transpose", "depthwise" or "deform"). gpuconv computes the gradient of every
# array input of the forward (x and the weight; also the offset and the mask for deform) from
# one random ``grad_output``; each peer differentiates its own forward, built once outside the
# timing, with the same ``grad_output`` (``torch.autograd.grad(..., retain_graph=True)``), so
# only the backward pass is timed on both sides.

#: Forward kind -> (key of the weight in the kind's arrays, keyword arguments the forward
#: takes from the parameters, gpuconv's input and weight gradient function names).
_BACKWARD_OPS = {
    "conv": ("weight", ("stride", "padding", "groups"), ("conv_input", "conv_weight")),
    "conv_transpose": ("weight", ("stride", "padding"),
                       ("conv_transpose_input", "conv_transpose_weight")),
    "depthwise": ("dw_weight", ("stride", "padding"),
                  ("depthwise_conv_input", "depthwise_conv_weight")),
    "deform": ("weight", ("padding",), None),
}


def _bwd_split(p):
    """(forward kind, forward parameters) of a backward workload's parameters."""
    return p["op"], {k: v for k, v in p.items() if k != "op"}


def _forward_out_shape(op, p):
    """Shape of the forward output, i.e. of ``grad_output``."""
    if op == "conv_transpose":
        return (p["n"], p["c_out"], *_convT_out(p))
    if op == "depthwise":
        return (p["n"], p["c"], *_conv_out(p))
    return (p["n"], p["c_out"], *(_deform_out(p) if op == "deform" else _conv_out(p)))


def _bwd_grad_names(op, p):
    """The forward's arrays that get a gradient, in the order gradients are returned."""
    weight = _BACKWARD_OPS[op][0]
    if op != "deform":
        return ("x", weight)
    return ("x", "offset", weight) + (("mask",) if p.get("mask", True) else ())


def _bwd_make(p, dtype, rng):
    op, fp = _bwd_split(p)
    arrays = KINDS[op].make(fp, dtype, rng)
    arrays["grad_output"] = _rand(rng, _forward_out_shape(op, fp), dtype)
    return arrays


def _bwd_run(a, p):
    from gpuconv import grad

    op, fp = _bwd_split(p)
    weight_key, keywords, functions = _BACKWARD_OPS[op]
    kw = {k: fp[k] for k in keywords if k in fp}
    go = a["grad_output"]
    if op == "deform":
        r = grad.deform_conv2d(a["x"], a["offset"], a[weight_key], go, mask=a.get("mask"),
                               bias=False, **kw)
        return tuple(v for v in (r.input, r.offset, r.weight, r.mask) if v is not None)
    input_grad, weight_grad = (getattr(grad, f) for f in functions)
    return (input_grad(a["x"].shape, a[weight_key], go, **kw),
            weight_grad(a["x"], a[weight_key].shape, go, **kw))


def _autograd_peer(forward_peer, device, a, p):
    """``torch.autograd.grad`` of ``forward_peer``'s output (built once, here) with respect to
    the forward's arrays, for the workload's ``grad_output``."""
    torch, _ = _torch(device)
    op, fp = _bwd_split(p)
    names = _bwd_grad_names(op, fp)
    leaves = {k: _to_torch(a[k]).requires_grad_() for k in names}
    out = forward_peer(device, {**a, **leaves}, fp)()
    go = _to_torch(a["grad_output"])
    inputs = [leaves[k] for k in names]
    return lambda: torch.autograd.grad(out, inputs, go, retain_graph=True)


def _torch_backward(device, a, p):
    forward = {"conv": _torch_conv, "conv_transpose": _torch_convT,
               "depthwise": _torch_dw}.get(p["op"])
    if forward is None:
        raise _NotApplicable
    return _autograd_peer(forward, device, a, p)


def _torchvision_backward(device, a, p):
    if p["op"] != "deform":
        raise _NotApplicable
    return _autograd_peer(_torchvision_deform, device, a, p)


def _bwd_flops(p):
    op, fp = _bwd_split(p)
    if op != "deform":
        return 2 * KINDS[op].flops(fp)  # input gradient + weight gradient, each a forward's
    ho, wo = _deform_out(fp)
    samples = fp["n"] * fp["c_in"] * _ksize(fp) * ho * wo
    per_sample = 8 + 8 + 16 + (1 + 2 if fp.get("mask", True) else 0)
    return 2 * _conv_flops(fp) + samples * per_sample


def _bwd_out_elements(p):
    """Elements of every gradient (each of its forward array's size)."""
    op, fp = _bwd_split(p)
    x = fp["n"] * fp.get("c_in", fp.get("c")) * _prod(fp["size"])
    k = _ksize(fp)
    weight = {"conv": lambda: fp["c_out"] * fp["c_in"] // fp.get("groups", 1) * k,
              "conv_transpose": lambda: fp["c_in"] * fp["c_out"] * k,
              "depthwise": lambda: fp["c"] * k,
              "deform": lambda: fp["c_out"] * fp["c_in"] * k}[op]()
    extra = 0
    if op == "deform":
        positions = fp["n"] * k * _prod(_deform_out(fp))
        extra = 2 * positions + (positions if fp.get("mask", True) else 0)
    return x + weight + extra


def _bwd_describe(p):
    op, fp = _bwd_split(p)
    names = ", ".join("weight" if n.endswith("weight") else n for n in _bwd_grad_names(op, fp))
    return f"grad {names} of {KINDS[op].describe(fp)}"


register_kind("backward", Kind(_bwd_make, _bwd_run, _bwd_flops, _bwd_out_elements,
                               {"torch": _torch_backward, "torchvision": _torchvision_backward},
                               _bwd_describe))

#: Forward workloads that get a ``<name>_backward`` twin with the same sizes.
BACKWARD_OF = ("conv2d_resnet", "conv2d_stem", "conv1d", "conv3d", "conv_transpose2d",
               "depthwise", "deform_conv2d")
for _name in BACKWARD_OF:
    _fw = WORKLOADS[_name]
    register_workload(Workload(
        f"{_name}_backward", "backward",
        {s: {**params, "op": _fw.kind} for s, params in _fw.sizes.items()}, _fw.dtype))


# ------------------------------------------------------------------- array helpers


def _import(module: str, package: str):
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install
        raise _Unavailable(f"{package} not importable ({type(exc).__name__}: {exc})") from None


def _torch(device):
    torch = _import("torch", "torch")
    import torch.nn.functional as F

    if device == "cuda" and not torch.cuda.is_available():
        raise _Unavailable("torch has no CUDA device")
    return torch, F


def _to_torch(a):
    """A torch tensor sharing ``a``'s memory (NumPy: CPU; CuPy: the GPU, via DLPack); a
    tensor passes through."""
    import torch

    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def _to_numpy(a):
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):  # torch.Tensor
        return a.detach().cpu().numpy()
    if hasattr(a, "get"):  # cupy.ndarray
        return a.get()
    return np.asarray(a)


def _rel_diff(a, b) -> float:
    """max |a - b| / max |b|; for tuples (a backward's gradients), the largest over pairs."""
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        if not (isinstance(a, (tuple, list)) and isinstance(b, (tuple, list))) \
                or len(a) != len(b):
            return float("nan")
        return max((_rel_diff(x, y) for x, y in zip(a, b)), default=0.0)
    a = _to_numpy(a).astype(np.float64)
    b = _to_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        return float("nan")
    scale = np.abs(b).max(initial=0.0)
    return float(np.abs(a - b).max(initial=0.0) / (scale if scale else 1.0))


# ----------------------------------------------------------------------------- timers


class CpuTimer:
    """Wall-clock timing with ``time.perf_counter``; or, with ``clock="thread"``, the
    calling thread's CPU time (``time.thread_time``), which other processes' load does not
    inflate: meaningful only when everything runs on that one thread (``--threads 1``)."""

    device = "cpu"

    def __init__(self, clock: str = "wall"):
        self.now = time.thread_time if clock == "thread" else time.perf_counter

    def sync(self):
        pass

    def sample(self, fn: Callable[[], object], number: int) -> float:
        start = self.now()
        for _ in range(number):
            fn()
        return (self.now() - start) / number


class CudaTimer:
    """Device timing with CUDA events on the null stream (needs CuPy)."""

    device = "cuda"

    def __init__(self):
        import cupy

        self.cupy = cupy
        self.start = cupy.cuda.Event()
        self.stop = cupy.cuda.Event()

    def sync(self):
        self.cupy.cuda.Device().synchronize()

    def sample(self, fn, number: int) -> float:
        self.start.record()
        for _ in range(number):
            fn()
        self.stop.record()
        self.stop.synchronize()
        return self.cupy.cuda.get_elapsed_time(self.start, self.stop) / 1e3 / number


def time_side_by_side(impls: Mapping[str, list], timer, repeat: int, warmup: int = 2,
                      settle_s: float = SETTLE_S, sleep: Callable[[float], None] = time.sleep):
    """Seconds per call of each implementation: ``repeat`` samples each, interleaved.

    ``impls`` maps a name to a list of zero-argument callables, one per input set; sample
    ``r`` uses input set ``r % len``. Each implementation first warms up and sets how many
    calls make one sample (at least :data:`MIN_SAMPLE_S`). Then the samples go round-robin:
    round ``r`` takes one sample of every implementation, starting with the ``r``-th (the
    order rotates, so none always follows the same neighbour), each after a pause of
    ``settle_s`` so that the previous implementation's spinning worker threads (OpenBLAS's,
    OpenMP's) have parked. A burst of load from other processes therefore lands on every
    implementation alike instead of on whichever happened to be running, and it shows as a
    spread of the samples (:func:`spread_of`).

    Returns name -> list of per-call times (one per sample, in the order taken).
    """
    names = list(impls)
    number = {}
    for name in names:
        fns = impls[name]
        sleep(settle_s)
        for i in range(warmup):
            fns[i % len(fns)]()
        timer.sync()
        once = timer.sample(fns[0], 1)
        number[name] = max(1, min(1000, math.ceil(MIN_SAMPLE_S / max(once, 1e-9))))
    times = {name: [] for name in names}
    for r in range(repeat):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            fns = impls[name]
            sleep(settle_s)
            times[name].append(timer.sample(fns[r % len(fns)], number[name]))
    return times


def spread_of(times) -> dict:
    """``min_s``, ``median_s``, ``max_s`` of the samples and ``spread``: (max - min) / median."""
    median = statistics.median(times)
    return {"min_s": min(times), "median_s": median, "max_s": max(times),
            "spread": (max(times) - min(times)) / median if median > 0 else float("inf")}


# ---------------------------------------------------------------------------- ceilings


class Ceilings:
    """The machine's ceilings, timed beside each workload (the same rounds, the same load).

    A matrix product ``n x n @ n x n`` in ``dtype`` (``2 n^3`` FLOPs) and a copy of
    ``elements`` float32 values (bytes read + bytes written). :meth:`impls` gives the two as
    implementations for :func:`time_side_by_side`; :meth:`rates` turns their samples into
    rates. The ceiling a roofline uses is the *fastest* sample (the rate the machine
    demonstrably reached), so a disturbed sample cannot lower it.
    """

    def __init__(self, xp, dtype, quick: bool):
        on_gpu = xp is not np
        n = (4096 if on_gpu else 2048) if not quick else (1024 if on_gpu else 512)
        elements = (1 << 26 if on_gpu else 1 << 25) if not quick else 1 << 22
        rng = np.random.default_rng(0)
        a = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
        b = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
        out = xp.empty((n, n), dtype=dtype)
        src = xp.ones(elements, dtype=np.float32)
        dst = xp.empty_like(src)
        self.matmul_n, self.dtype, self.copy_bytes = n, np.dtype(dtype).name, int(src.nbytes)
        self._matmul = lambda: xp.matmul(a, b, out=out)
        self._copy = lambda: xp.copyto(dst, src)

    def impls(self) -> dict:
        return {"ceiling:matmul": [self._matmul], "ceiling:copy": [self._copy]}

    def rates(self, times: Mapping[str, list]) -> dict:
        """FLOP/s and bytes/s from the samples of :meth:`impls`: the fastest sample as the
        ceiling, and the min/median/max rate with the spread of the samples."""
        mm, cp = spread_of(times["ceiling:matmul"]), spread_of(times["ceiling:copy"])
        flop, moved = 2 * self.matmul_n ** 3, 2 * self.copy_bytes
        return {"matmul_n": self.matmul_n, "matmul_dtype": self.dtype,
                "flops_per_s": flop / mm["min_s"],
                "flops_per_s_median": flop / mm["median_s"],
                "flops_per_s_min": flop / mm["max_s"], "flops_spread": mm["spread"],
                "matmul_times_s": list(times["ceiling:matmul"]),
                "copy_bytes": self.copy_bytes, "bytes_per_s": moved / cp["min_s"],
                "bytes_per_s_median": moved / cp["median_s"],
                "bytes_per_s_min": moved / cp["max_s"], "bytes_spread": cp["spread"],
                "copy_times_s": list(times["ceiling:copy"])}


def measure_peaks(xp, dtype, quick: bool, clock: str = "wall", repeat: int = 3) -> dict:
    """Matrix-product FLOP/s and copy bytes/s on ``xp`` (NumPy or CuPy), on their own (a
    run of the benchmark measures them beside each workload instead: :class:`Ceilings`)."""
    timer = CudaTimer() if xp is not np else CpuTimer(clock)
    ceilings = Ceilings(xp, dtype, quick)
    return ceilings.rates(time_side_by_side(ceilings.impls(), timer, repeat, warmup=1))


def roofline_pct(flop: float, nbytes: float, seconds: float, peaks: Mapping) -> float:
    """``100 * max(F / P, B / W) / t``: see the module docstring."""
    bound = max(flop / peaks["flops_per_s"], nbytes / peaks["bytes_per_s"])
    return 100.0 * bound / seconds


# ------------------------------------------------------------------------- load


def _cpu_stat():
    """(busy CPU seconds of the whole machine, its CPU count) from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    fields = [int(v) for v in lines[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already);
    # steal is CPU time the hypervisor gave to another machine: load all the same.
    busy = sum(fields[:3]) + sum(fields[5:8])
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return busy / os.sysconf("SC_CLK_TCK"), cores


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadProbe:
    """How much CPU *other* processes used while a block of timing ran.

    ``start()`` then ``stop()`` returns ``{"others_cores": c, "cores": n}``: the machine's busy
    CPU time in between (from ``/proc/stat``, steal time included) minus this process's own
    (every thread, from ``os.times``), divided by the wall time. So ``c`` is the average
    number of cores that something else kept busy. ``stop()`` returns None where there is no
    ``/proc/stat`` (the run-level load average then decides alone).
    """

    def start(self):
        self._start = (time.perf_counter(), _cpu_stat(), _own_cpu_s())

    def stop(self) -> dict | None:
        wall0, stat0, own0 = self._start
        stat1 = _cpu_stat()
        wall = time.perf_counter() - wall0
        if stat0 is None or stat1 is None or wall <= 0:
            return None
        others = (stat1[0] - stat0[0]) - (_own_cpu_s() - own0)
        return {"others_cores": round(max(0.0, others) / wall, 3), "cores": stat1[1],
                "seconds": round(wall, 3)}


def _loadavg():
    """The 1, 5 and 15-minute load averages, or None where the OS has none."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


# ------------------------------------------------------------------------ reliability


def _fastest_peer(record: Mapping):
    peers = {n: v for n, v in record.get("peers", {}).items() if v and v.get("median_s")}
    if not peers:
        return None, None
    name = min(peers, key=lambda n: peers[n]["median_s"])
    return name, peers[name]


def assess(record: Mapping, machine: Mapping | None = None) -> dict:
    """Why a record's numbers cannot be taken at face value: its flags.

    Returns ``{"reliable": bool, "roofline_ok": bool, "flags": [{"code", "text"}, ...]}``.
    Works on records of either JSON schema (``gpuconv-bench/1`` lacks the per-row load and
    ceilings: only what it has is judged). The rules (thresholds in
    ``benchmarks/README.md``):

    * ``spread``: gpuconv's samples or the fastest peer's spread by more than
      :data:`SPREAD_LIMIT` of their median: the ratio could move that much in a rerun.
    * ``load``: other processes kept more than :data:`LOAD_LIMIT` of the machine's cores busy
      on average while the row was timed (:class:`LoadProbe`).
    * ``busy``: the run's 1-minute load average per core was above :data:`LOADAVG_LIMIT`
      before it started, or above :data:`LOADAVG_END_LIMIT` after it (the benchmark itself
      accounts for up to one thread per core): every row of the run gets it.
    * ``ceiling``: the interleaved matrix-product or copy samples spread by more than
      :data:`SPREAD_LIMIT`: the roofline is uncertain.
    * ``roofline``: above 100% of the roofline, which no code can reach: the ceiling was
      measured too low. A measurement error, never a result.

    ``spread``, ``load`` and ``busy`` make the row unreliable (``reliable`` False); any flag
    makes its roofline unreliable (``roofline_ok`` False).
    """
    flags = []
    timings = []
    if record.get("times_s"):
        timings.append(("gpuconv", record["times_s"]))
    peer, peer_result = _fastest_peer(record)
    if peer_result and peer_result.get("times_s"):
        timings.append((peer, peer_result["times_s"]))
    for name, times in timings:
        spread = spread_of(times)["spread"]
        if spread > SPREAD_LIMIT:
            flags.append({"code": "spread",
                          "text": f"{name}'s {len(times)} samples spread by {spread:.0%} of "
                                  f"their median (limit {SPREAD_LIMIT:.0%})"})
    load = record.get("load")
    if load and load.get("others_cores") is not None and \
            load["others_cores"] > LOAD_LIMIT * load["cores"]:
        flags.append({"code": "load",
                      "text": f"other processes kept {load['others_cores']:.2f} of "
                              f"{load['cores']} cores busy while it ran (limit "
                              f"{LOAD_LIMIT * load['cores']:.2f})"})
    busy = _busy(machine) if machine else None
    if busy:
        flags.append({"code": "busy", "text": busy})
    ceilings = record.get("ceilings") or {}
    for key, label in (("flops_spread", "matrix-product"), ("bytes_spread", "copy")):
        if ceilings.get(key) is not None and ceilings[key] > SPREAD_LIMIT:
            flags.append({"code": "ceiling",
                          "text": f"the {label} ceiling's samples spread by "
                                  f"{ceilings[key]:.0%} (limit {SPREAD_LIMIT:.0%})"})
    pct = record.get("roofline_pct")
    if pct is not None and pct > 100:
        flags.append({"code": "roofline",
                      "text": f"{pct:.0f}% of the roofline is a measurement error (no code "
                              f"beats the roofline: a ceiling was measured too low)"})
    codes = {f["code"] for f in flags}
    return {"reliable": not codes & {"spread", "load", "busy"}, "roofline_ok": not codes,
            "flags": flags}


def _busy(machine: Mapping) -> str | None:
    """The run-level load verdict from the load averages before/after, or None."""
    cores = machine.get("cpu_count") or 1
    start, end = machine.get("loadavg_start"), machine.get("loadavg_end")
    if start and start[0] > LOADAVG_LIMIT * cores:
        return (f"the machine was busy before the run (1-minute load average {start[0]:.2f} "
                f"on {cores} cores, limit {LOADAVG_LIMIT * cores:.2f})")
    if end and end[0] > LOADAVG_END_LIMIT * cores:
        return (f"the machine was busy during the run (1-minute load average {end[0]:.2f} "
                f"after it on {cores} cores, limit {LOADAVG_END_LIMIT * cores:.2f})")
    return None


# ---------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``, x86 Linux); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


#: OpenBLAS x86-64 kernel (core) names by instruction-set level: 0 SSE, 1 AVX, 2 AVX2 + FMA,
#: 3 AVX-512 (F, BW), 4 AVX-512 BF16, 5 AMX. (Zen runs Haswell-class AVX2 kernels.)
OPENBLAS_KERNEL_LEVEL = {
    **dict.fromkeys(("generic", "katmai", "coppermine", "northwood", "prescott", "banias",
                     "core2", "penryn", "dunnington", "nehalem", "atom", "athlon", "opteron",
                     "opteron_sse3", "barcelona", "bobcat", "nano"), 0),
    **dict.fromkeys(("sandybridge", "bulldozer", "piledriver", "steamroller", "excavator"), 1),
    "haswell": 2, "zen": 2, "skylakex": 3, "cooperlake": 4, "sapphirerapids": 5,
}
#: The newest OpenBLAS kernel for each level (what DYNAMIC_ARCH picks on such a CPU).
_LEVEL_KERNEL = {0: "Prescott/Core2", 1: "Sandybridge", 2: "Haswell", 3: "SkylakeX",
                 4: "Cooperlake", 5: "SapphireRapids"}


def cpu_kernel_level(flags) -> int | None:
    """The newest OpenBLAS kernel level (see :data:`OPENBLAS_KERNEL_LEVEL`) the CPU flags
    allow; None without flags (not x86 Linux)."""
    flags = set(flags)
    if not flags:
        return None
    if {"amx_bf16", "avx512_bf16", "avx512f", "avx512bw"} <= flags:
        return 5
    if {"avx512_bf16", "avx512f", "avx512bw"} <= flags:
        return 4
    if {"avx512f", "avx512bw"} <= flags:
        return 3
    if {"avx2", "fma"} <= flags:
        return 2
    return 1 if "avx" in flags else 0


def openblas_kernel_warning(architecture: str | None, env: Mapping[str, str],
                            cpu_flags) -> str | None:
    """A warning when ``OPENBLAS_CORETYPE`` pins an older OpenBLAS kernel than the CPU runs
    (or a newer one than it can run).

    ``architecture`` is the kernel OpenBLAS reports (threadpoolctl's ``architecture``;
    ``env`` the environment; ``cpu_flags`` from ``/proc/cpuinfo``. Without the variable, an
    older kernel than the CPU allows gets a milder note (the OpenBLAS build may lack the
    newer one). None when the kernel matches the CPU or either is unknown.
    """
    cpu_level = cpu_kernel_level(cpu_flags)
    pinned = env.get("OPENBLAS_CORETYPE")
    running = architecture or pinned
    level = OPENBLAS_KERNEL_LEVEL.get((running or "").lower())
    if cpu_level is None or level is None or level == cpu_level:
        return None
    native = _LEVEL_KERNEL[cpu_level]
    if level > cpu_level:
        return (f"OpenBLAS runs its {running} kernel"
                + (f" (OPENBLAS_CORETYPE={pinned})" if pinned else "")
                + f", newer than this CPU supports ({native}): expect crashes (illegal "
                  "instruction) or wrong timings")
    if pinned:
        l2 = env.get("OPENBLAS_L2_SIZE")
        return (f"OPENBLAS_CORETYPE={pinned} pins OpenBLAS's {running} kernel, but this CPU "
                f"supports {native}: NumPy's matrix products (the NumPy backend's GEMMs and "
                f"the matmul ceiling) run slower than they can"
                + (f" (OPENBLAS_L2_SIZE={l2} is set too)" if l2 else "")
                + ". PyTorch uses its own BLAS. For a benchmark of the native kernel run it "
                  "under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`.")
    return (f"OpenBLAS runs its {running} kernel, but this CPU supports {native} (this "
            f"OpenBLAS build may not include it)")


def blas_info() -> dict:
    """The BLAS libraries loaded and the kernel each runs, and which one NumPy uses.

    ``libraries``: threadpoolctl's ``threadpool_info()`` (``internal_api``, ``version``,
    ``architecture`` = the kernel/core name, ``num_threads``, ``threading_layer``), with the
    directory of each library instead of its full path; ``numpy``: the entry of NumPy's own
    BLAS (the library under NumPy's directory, else the one NumPy's build config names),
    None without threadpoolctl; ``numpy_build``: NumPy's build configuration for BLAS.
    """
    info = {"libraries": [], "numpy": None, "numpy_build": None}
    try:
        info["numpy_build"] = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # older NumPy: no dict mode
        pass
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return info
    for lib in threadpool_info():
        entry = {k: v for k, v in lib.items() if k != "filepath"}
        entry["directory"] = os.path.basename(os.path.dirname(lib.get("filepath") or ""))
        info["libraries"].append(entry)
    blas = [lib for lib in info["libraries"] if lib.get("user_api") == "blas"]
    build_version = (info["numpy_build"] or {}).get("version")
    info["numpy"] = next((lib for lib in blas if "numpy" in lib["directory"]), None) or \
        next((lib for lib in blas if build_version and lib.get("version") == build_version),
             None) or (blas[0] if blas else None)
    return info


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(backend: str) -> dict:
    """Where and with what the benchmark ran (goes into the JSON)."""
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                      "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                      "MKL_NUM_THREADS") if k in os.environ}
    flags = _cpu_flags()
    blas = blas_info()
    numpy_blas = blas["numpy"] or {}
    level = cpu_kernel_level(flags)
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_kernel_level": None if level is None else _LEVEL_KERNEL[level],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "blas": blas,
        "blas_warning": openblas_kernel_warning(numpy_blas.get("architecture"), env, flags)
        if numpy_blas.get("internal_api", "openblas") == "openblas" else None,
        "gpuconv": gpuconv.__version__,
        "versions": {d: _version(d) for d in ("torch", "torchvision", "scipy", "matplotlib")},
        "env": env,
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    if backend == "cuda":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["versions"]["cupy"] = cupy.__version__
    return info


def describe_blas(machine: Mapping) -> str:
    """One line: NumPy's BLAS, its kernel and threads, and the CPU's newest kernel."""
    blas = machine.get("blas")
    lib = blas.get("numpy") if isinstance(blas, Mapping) else None
    if not lib:
        return "NumPy's BLAS: unknown (install threadpoolctl to record it)"
    cpu = machine.get("cpu_kernel_level")
    return (f"NumPy's BLAS: {lib.get('internal_api')} {lib.get('version')}, "
            f"{lib.get('architecture') or '?'} kernel, {lib.get('num_threads')} thread(s)"
            + (f"; the CPU supports {cpu}" if cpu else "")
            + "".join(f"; {k}={v}" for k, v in machine.get("env", {}).items()
                      if k.startswith("OPENBLAS_CORETYPE") or k == "OPENBLAS_L2_SIZE"))


# ------------------------------------------------------------------------------- runs


def _gpuconv_call(kind: Kind, arrays, params, backend: str):
    if backend == "emulate":
        def call():
            with gpuconv.use_backend("emulate"):
                return kind.run(arrays, params)
        return call
    if backend == "numpy":
        def call():
            with gpuconv.use_backend("numpy"):
                return kind.run(arrays, params)
        return call
    return lambda: kind.run(arrays, params)  # CuPy arrays run on the cuda backend


def run_workload(workload: Workload, *, size_set: str, backend: str, dtype: str, repeat: int,
                 ceilings: Ceilings | None = None, peaks: Mapping | None = None, seed: int = 0,
                 clock: str = "wall", timer=None, settle_s: float = SETTLE_S,
                 load_probe: LoadProbe | None = None) -> dict:
    """Time one workload on gpuconv and every peer, interleaved; returns its JSON record.

    With ``ceilings``, the matrix product and the copy are timed in the same rounds and the
    roofline uses the rates measured there (``record["ceilings"]``); otherwise ``peaks``
    (a :func:`measure_peaks` result) is used as given. ``timer`` defaults to the device's;
    ``load_probe`` (default a :class:`LoadProbe`) measures the other processes' CPU use
    during the timing. The record carries :func:`assess`'s flags for what it knows itself
    (the run-level load average is judged by :func:`main`).
    """
    kind = KINDS[workload.kind]
    params = dict(workload.sizes[size_set])
    dtype = np.dtype(workload.dtype or dtype)
    device = "cuda" if backend == "cuda" else "cpu"
    rng = np.random.default_rng(seed)
    host_sets = [kind.make(params, dtype, rng) for _ in range(COPIES)]
    if device == "cuda":
        import cupy

        sets = [{k: cupy.asarray(v) for k, v in s.items()} for s in host_sets]
    else:
        sets = host_sets
    record = {
        "workload": workload.name, "kind": workload.kind, "backend": backend,
        "dtype": dtype.name, "params": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in params.items()},
        "description": kind.describe(params), "note": workload.note,
        "flops": int(kind.flops(params)),
        "bytes": traffic_bytes(workload.kind, params, host_sets[0], dtype.itemsize),
        "peers": {}, "notes": [],
    }
    impls = {"gpuconv": [_gpuconv_call(kind, s, params, backend) for s in sets]}
    results = {}
    try:
        results["gpuconv"] = impls["gpuconv"][0]()
    except Exception as exc:  # reported in the table's notes; the other workloads go on
        record["notes"].append(f"gpuconv ({backend}) cannot run it: {type(exc).__name__}: {exc}")
        impls.pop("gpuconv")
    for name, make_peer in kind.peers.items():
        try:
            fns = [make_peer(device, s, params) for s in sets]
            results[name] = fns[0]()
            impls[name] = fns
        except _NotApplicable:
            continue
        except _Unavailable as exc:
            record["peers"][name] = None
            if device == "cpu" and name.startswith("cupyx"):
                continue  # GPU-only peers are not worth a note on a CPU run
            record["notes"].append(f"{name}: {exc}")
        except Exception as exc:  # a peer that rejects this dtype/shape is reported, not fatal
            record["peers"][name] = None
            record["notes"].append(f"{name} failed: {type(exc).__name__}: {exc}")
    if "gpuconv" in impls and ceilings is not None:
        impls.update(ceilings.impls())
    timer = timer or (CudaTimer() if device == "cuda" else CpuTimer(clock))
    load_probe = load_probe or LoadProbe()
    load_probe.start()
    times = time_side_by_side(impls, timer, repeat, settle_s=settle_s)
    record["load"] = load_probe.stop()
    stats = {name: spread_of(t) for name, t in times.items()}
    for name in kind.peers:
        if name in stats:
            record["peers"][name] = {
                **stats[name], "times_s": times[name],
                "rel_diff": _rel_diff(results["gpuconv"], results[name])
                if "gpuconv" in results else None,
            }
    if "gpuconv" not in stats:
        record.update(median_s=None, times_s=None)
        record.update(assess(record))
        return record
    if ceilings is not None:
        peaks = record["ceilings"] = ceilings.rates(times)
    t = stats["gpuconv"]["median_s"]
    record.update(**stats["gpuconv"], times_s=times["gpuconv"],
                  gflops=record["flops"] / t / 1e9, gbs=record["bytes"] / t / 1e9,
                  roofline_pct=None if peaks is None else
                  roofline_pct(record["flops"], record["bytes"], t, peaks))
    fastest, peer = _fastest_peer(record)
    if fastest:
        record.update(fastest_peer=fastest, ratio=t / peer["median_s"],
                      ratio_min=record["min_s"] / peer["max_s"],
                      ratio_max=record["max_s"] / peer["min_s"])
    record.update(assess(record))
    return record


# ----------------------------------------------------------------------------- output


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3g}" if seconds < 1e-2 \
        else f"{seconds * 1e3:.1f}"


def _two_digits(value: float) -> str:
    return f"{float(f'{value:.2g}'):g}"


def _approx(value: float) -> str:
    """``~`` and two significant digits: a number that does not pretend to be exact."""
    return f"~{_two_digits(value)}"


def _stats(entry: Mapping | None) -> dict | None:
    """min/median/max/spread of a record's or a peer's samples (any schema), or None."""
    if not entry or not entry.get("times_s"):
        return None
    return spread_of(entry["times_s"])


def _verdict(r: Mapping) -> dict:
    return r if "reliable" in r else {**r, **assess(r)}


def format_table(records: list[dict], markdown: bool = False) -> str:
    """The table: one row per workload, per-peer times at the right (text or Markdown).

    A reliable row shows the median time, its min-max range and spread, and the ratio to the
    fastest peer. An unreliable one (:func:`assess`) shows ``~`` and two significant digits
    instead of exact-looking figures, and the range of the ratio (gpuconv's fastest sample
    over the peer's slowest, to gpuconv's slowest over the peer's fastest). A roofline above
    100% shows ``ERR``. The ``flags`` column names the reasons; :func:`main` prints them.
    """
    peer_names = []
    for r in records:
        for name in r["peers"]:
            if name not in peer_names and any(x["peers"].get(name) for x in records):
                peer_names.append(name)
    head = ["workload", "backend", "dtype", "time ms", "min-max ms", "spread", "ratio", "vs",
            "GFLOP/s", "GB/s", "% roof"] + [f"{n} ms (spread)" for n in peer_names] + ["flags"]
    rows = [head]
    for r in records:
        r = _verdict(r)
        ok = r["reliable"]
        stats = _stats(r)
        t = stats["median_s"] if stats else None
        row = [r["workload"], r["backend"], r["dtype"]]
        if t:
            row += [_ms(t) if ok else _approx(t * 1e3),
                    f"{_ms(stats['min_s'])}-{_ms(stats['max_s'])}", f"{stats['spread']:.0%}"]
        else:
            row += ["-", "-", "-"]
        fastest, peer = _fastest_peer(r)
        peer_stats = _stats(peer)
        if t and peer_stats:
            row.append(f"{t / peer_stats['median_s']:.2f}" if ok else
                       f"{_two_digits(stats['min_s'] / peer_stats['max_s'])}.."
                       f"{_two_digits(stats['max_s'] / peer_stats['min_s'])}")
            row.append(fastest)
        else:
            row += ["-", "-"]
        if t:
            pct = r.get("roofline_pct")
            row += [f"{r['flops'] / t / 1e9:.1f}" if ok else _approx(r["flops"] / t / 1e9),
                    f"{r['bytes'] / t / 1e9:.1f}" if ok else _approx(r["bytes"] / t / 1e9),
                    "-" if pct is None else f"{pct:.0f} ERR" if pct > 100 else
                    f"{pct:.0f}" if r["roofline_ok"] else _approx(pct)]
        else:
            row += ["-", "-", "-"]
        for name in peer_names:
            s = _stats(r["peers"].get(name))
            row.append("-" if s is None else
                       f"{_ms(s['median_s']) if ok else _approx(s['median_s'] * 1e3)} "
                       f"({s['spread']:.0%})")
        codes = list(dict.fromkeys(f["code"] for f in r["flags"]))
        row.append(", ".join(codes) if codes else "-")
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join(" --- " if i < 3 or i == len(head) - 1 else " ---: "
                                       for i in range(len(head))) + "|")
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) if 3 <= i < len(head) - 1 else str(c).ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


TABLE_LEGEND = (
    "time = median of the samples, per call; spread = (max - min) / median; ratio = gpuconv "
    "time / fastest peer time (< 1: gpuconv faster); % roof = 100 * max(F/peak_flops, "
    "B/peak_bw) / time, with the ceilings timed in the same rounds. '~': an unreliable row "
    "(flags spread/load/busy), the ratio shows its range; 'ERR': above the roofline, a "
    "measurement error.")


def flag_notes(records: list[dict], machine: Mapping | None = None) -> list[str]:
    """The run-level load once, then one note per flagged row with its reasons."""
    notes = []
    busy = _busy(machine) if machine else None
    if busy:
        notes.append(f"{busy}: every row is unreliable")
    for r in records:
        r = _verdict(r)
        texts = [f["text"] for f in r["flags"] if f["code"] != "busy"]
        if texts:
            verdict = "unreliable" if not r["reliable"] else "roofline not to be trusted"
            notes.append(f"{r['workload']}: {verdict}: " + "; ".join(texts))
    return notes


def plot_records(records: list[dict], title: str):
    """The chart, as a matplotlib figure: gpuconv's time / each peer's time per workload
    (log scale; unreliable rows hatched and pale, with the ratio's range as an error bar),
    and % of roofline (red ``ERR`` above 100%, hatched where uncertain)."""
    import matplotlib.pyplot as plt

    timed = [_verdict(r) for r in records if _stats(r)]
    names = [r["workload"] for r in timed]
    peers = sorted({p for r in timed for p, v in r["peers"].items() if _stats(v)})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(names) + 4), 4.8))
    colors = {peer: f"C{j}" for j, peer in enumerate(peers)}
    for i, r in enumerate(timed):  # each workload's bars centred on its tick
        mine = _stats(r)
        present = [p for p in peers if _stats(r["peers"].get(p))]
        width = 0.8 / max(1, len(present))
        for j, peer in enumerate(present):
            theirs = _stats(r["peers"][peer])
            ratio = mine["median_s"] / theirs["median_s"]
            lo, hi = mine["min_s"] / theirs["max_s"], mine["max_s"] / theirs["min_s"]
            ax1.bar(i + (j - (len(present) - 1) / 2) * width, ratio, width,
                    color=colors[peer], label=f"vs {peer}",
                    alpha=1.0 if r["reliable"] else 0.4, hatch=None if r["reliable"] else "//",
                    yerr=[[ratio - lo], [hi - ratio]], ecolor="0.3", capsize=2)
    handles, labels = ax1.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax1.axhline(1.0, color="black", linewidth=0.8)
    ax1.set_yscale("log")
    ax1.set_ylabel("gpuconv time / peer time (lower is better)\n"
                   "bars: median; whiskers: min-max range")
    ax1.set_xticks(np.arange(len(names)), [n if r["reliable"] else f"~ {n}"
                                           for n, r in zip(names, timed)],
                   rotation=40, ha="right")
    for tick, r in zip(ax1.get_xticklabels(), timed):
        if not r["reliable"]:
            tick.set_color("tab:red")
    if unique:
        ax1.legend(unique.values(), unique.keys(), fontsize=8)
    ax1.set_title("time ratio ('~': unreliable, hatched)")
    pcts = [r.get("roofline_pct") or 0.0 for r in timed]
    colors2 = ["tab:red" if p > 100 else "tab:green" if r["roofline_ok"] else "tab:olive"
               for p, r in zip(pcts, timed)]
    bars = ax2.bar(np.arange(len(names)), pcts, color=colors2)
    for bar, p, r in zip(bars, pcts, timed):
        if not r["roofline_ok"]:
            bar.set_hatch("//")
    ax2.bar_label(bars, labels=[f"{p:.0f} ERR" if p > 100 else f"{p:.0f}" if r["roofline_ok"]
                                else _approx(p) for p, r in zip(pcts, timed)], fontsize=8)
    ax2.axhline(100, color="tab:red", linestyle="--", linewidth=0.8)
    ax2.set_xticks(np.arange(len(names)), names, rotation=40, ha="right")
    ax2.set_ylabel("% of roofline")
    ax2.set_title("gpuconv: % of roofline (ERR: > 100%, a measurement error)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def write_plot(path: str, records: list[dict], title: str) -> None:
    """:func:`plot_records`, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plot_records(records, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _Progress:
    """tqdm on a terminal when installed, a plain counter otherwise; silent off a terminal."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        self.total, self.done = total, 0
        self.enabled = enabled and sys.stderr.isatty()
        if self.enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="workload", file=sys.stderr)
            except ImportError:
                pass

    def step(self, label: str):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(label)
        else:
            print(f"\r[{self.done + 1}/{self.total}] {label:<24}", end="", file=sys.stderr,
                  flush=True)

    def advance(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


# ------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gpuconv bench",
        description="Time gpuconv against PyTorch, torchvision, NumPy, SciPy and CuPy, "
                    "with FLOP/s, bandwidth and % of the measured roofline.")
    p.add_argument("--ops", help="comma-separated workload names (default: every workload "
                                 "of the size set; see --list)")
    p.add_argument("--backend", choices=("numpy", "emulate", "cuda"),
                   help="gpuconv backend (default: cuda when CuPy sees a GPU, else numpy)")
    p.add_argument("--dtype", default="float32", choices=("float16", "float32", "float64"))
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few repeats (well under a minute on 2 CPU cores)")
    p.add_argument("--repeat", type=int, help="timing samples per implementation "
                                              f"(default {DEFAULT_REPEAT['full']}, "
                                              f"{DEFAULT_REPEAT['quick']} with --quick)")
    p.add_argument("--json", metavar="PATH", help="write results and machine description")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    p.add_argument("--markdown", metavar="PATH", help="write the table and notes as Markdown")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--threads", type=int,
                   help="threads for BLAS (needs threadpoolctl) and PyTorch "
                        "(default: each library's own default)")
    p.add_argument("--clock", choices=("wall", "thread"), default="wall",
                   help="'thread': CPU time of the calling thread, robust to other processes' "
                        "load; only with --threads 1 (default: wall clock)")
    p.add_argument("--settle", type=float, metavar="SECONDS",
                   help=f"pause before each timing sample (default {SETTLE_S}, "
                        f"{QUICK_SETTLE_S} with --quick)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _set_threads(count: int) -> str | None:
    """Limit BLAS (so gpuconv's NumPy backend) and PyTorch to ``count`` threads (None: done)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return "limiting BLAS threads needs threadpoolctl (pip install threadpoolctl)"
    if _version("torch"):  # import it first, so its OpenMP/BLAS pools are limited too
        try:
            import torch

            torch.set_num_threads(count)
        except Exception:  # a broken torch is reported by the peers, not here
            pass
    threadpool_limits(count)
    return None


def _cuda_available() -> bool:
    return gpuconv.available_backends().get("cuda") == "available"


def _compute_dtype(workload: Workload, dtype: str, on_gpu: bool) -> np.dtype:
    """The dtype of a workload's matmul ceiling (float16 computes in float32 on the CPU)."""
    dt = np.dtype(workload.dtype or dtype)
    return np.dtype(np.float32) if dt == np.float16 and not on_gpu else dt


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code (0 ok, 2 bad arguments)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own error message
        return int(exc.code or 0)
    backend = args.backend or ("cuda" if _cuda_available() else "numpy")
    size_set = "quick" if args.quick else ("gpu" if backend == "cuda" else "cpu")
    if args.list:
        width = max(len(n) for n in WORKLOADS)
        for w in WORKLOADS.values():
            sets = ", ".join(s for s in SIZE_SETS if s in w.sizes)
            desc = KINDS[w.kind].describe(w.sizes[sets.split(", ")[0]]) if w.kind in KINDS else ""
            print(f"{w.name:{width}s} {w.kind:15s} [{sets}] {desc}")
        return 0
    if backend == "emulate" and not args.quick:
        print("error: --backend emulate runs the CUDA kernels on a CPU emulator, far too slowly "
              "for the full sizes; use it with --quick", file=sys.stderr)
        return 2
    if backend == "cuda" and not _cuda_available():
        print(f"error: --backend cuda: {gpuconv.available_backends()['cuda']}", file=sys.stderr)
        return 2
    if args.clock == "thread" and (args.threads != 1 or backend == "cuda"):
        print("error: --clock thread measures one thread's CPU time: it needs --threads 1 "
              "and a CPU backend", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads={args.threads} must be at least 1", file=sys.stderr)
        return 2
    if args.repeat is not None and args.repeat < 1:
        print(f"error: --repeat={args.repeat} must be at least 1", file=sys.stderr)
        return 2
    if args.settle is not None and not args.settle >= 0:
        print(f"error: --settle={args.settle} must be at least 0 (seconds)", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("error: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 2
    if args.ops:
        names = [n.strip() for n in args.ops.split(",") if n.strip()]
        unknown = [n for n in names if n not in WORKLOADS]
        if unknown:
            print(f"error: --ops: unknown workload(s) {', '.join(unknown)}; "
                  f"known: {', '.join(WORKLOADS)}", file=sys.stderr)
            return 2
        missing = [n for n in names if size_set not in WORKLOADS[n].sizes]
        if missing:
            print(f"error: --ops: {', '.join(missing)} have no {size_set!r} size",
                  file=sys.stderr)
            return 2
    else:
        names = [n for n, w in WORKLOADS.items() if size_set in w.sizes and w.kind in KINDS]
    repeat = args.repeat or DEFAULT_REPEAT["quick" if args.quick else "full"]
    settle = args.settle if args.settle is not None else (QUICK_SETTLE_S if args.quick
                                                          else SETTLE_S)

    if args.threads is not None:
        problem = _set_threads(args.threads)
        if problem:
            print(f"error: --threads: {problem}", file=sys.stderr)
            return 2
    load_start = _loadavg()
    xp = np
    if backend == "cuda":
        import cupy as xp
    ceilings = {}  # compute dtype name -> Ceilings, made once and timed beside each workload
    for n in names:
        compute = _compute_dtype(WORKLOADS[n], args.dtype, xp is not np)
        if compute.name not in ceilings:
            ceilings[compute.name] = Ceilings(xp, compute, args.quick)

    progress = _Progress(len(names), enabled=not args.no_progress)
    records = []
    try:
        for name in names:
            progress.step(name)
            workload = WORKLOADS[name]
            compute = _compute_dtype(workload, args.dtype, xp is not np)
            records.append(run_workload(workload, size_set=size_set, backend=backend,
                                        dtype=args.dtype, repeat=repeat,
                                        ceilings=ceilings[compute.name], clock=args.clock,
                                        settle_s=settle))
            progress.advance()
    finally:
        progress.close()

    machine = machine_info(backend)
    machine["loadavg_start"], machine["loadavg_end"] = load_start, _loadavg()
    for r in records:
        r.update(assess(r, machine))
    peaks_by_dtype = {}  # every interleaved ceiling sample of the run, per dtype
    for dt_name, ceiling in ceilings.items():
        rows = [r["ceilings"] for r in records if r.get("ceilings", {}).get("matmul_dtype")
                == dt_name]
        if rows:
            peaks_by_dtype[dt_name] = ceiling.rates(
                {"ceiling:matmul": [t for c in rows for t in c["matmul_times_s"]],
                 "ceiling:copy": [t for c in rows for t in c["copy_times_s"]]})
    headline = (f"gpuconv bench: backend {backend}, sizes {size_set!r}, {repeat} interleaved "
                f"samples, median per call, {args.clock} clock"
                + (f", {args.threads} thread(s)" if args.threads else "")
                + f"; {machine['cpu_model']} ({machine['cpu_count']} cores)"
                + (f", {machine['gpu']}" if "gpu" in machine else "")
                + f"; load average {load_start} -> {machine['loadavg_end']}")
    lines = [headline, describe_blas(machine)]
    for dt_name, peak in peaks_by_dtype.items():
        lines.append(
            f"ceilings ({dt_name}, {len(peak['matmul_times_s'])} samples beside the workloads, "
            f"best [min-median]): matmul {peak['flops_per_s'] / 1e9:.1f} "
            f"[{peak['flops_per_s_min'] / 1e9:.1f}-{peak['flops_per_s_median'] / 1e9:.1f}] "
            f"GFLOP/s, copy {peak['bytes_per_s'] / 1e9:.1f} "
            f"[{peak['bytes_per_s_min'] / 1e9:.1f}-{peak['bytes_per_s_median'] / 1e9:.1f}] GB/s")
    print("\n".join(lines))
    if machine["blas_warning"]:
        print(f"warning: {machine['blas_warning']}")
    print(format_table(records))
    print(TABLE_LEGEND)
    notes = flag_notes(records, machine)
    if machine["blas_warning"]:
        notes.insert(0, machine["blas_warning"])
    notes += [f"{r['workload']}: {n}" for r in records for n in r["notes"]]
    notes += [f"{r['workload']}: {r['note']}" for r in records if r["note"]]
    for r in records:
        for peer, v in r["peers"].items():
            if v and v.get("rel_diff") is not None and not v["rel_diff"] <= _CHECK_TOL[r["dtype"]]:
                notes.append(f"{r['workload']}: results differ from {peer} "
                             f"(max rel diff {v['rel_diff']:.2g})")
    for note in notes:
        print(f"note: {note}")
    if args.json:
        doc = {"schema": JSON_SCHEMA, "machine": machine,
               "config": {"backend": backend, "dtype": args.dtype, "size_set": size_set,
                          "repeat": repeat, "copies": COPIES, "min_sample_s": MIN_SAMPLE_S,
                          "settle_s": settle, "threads": args.threads, "clock": args.clock,
                          "thresholds": THRESHOLDS},
               "peaks": peaks_by_dtype, "results": records, "notes": notes}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n\n".join(lines) + f"\n\n{format_table(records, markdown=True)}\n\n"
                    f"{TABLE_LEGEND}\n\n")
            f.write("".join(f"- {note}\n" for note in notes))
    if args.plot:
        write_plot(args.plot, records,
                   f"gpuconv {backend} ({args.dtype}, {size_set}) - {machine['cpu_model']}"
                   + (f" / {machine['gpu']}" if "gpu" in machine else ""))
    return 0


#: max relative difference to a peer's result before the run notes a mismatch
_CHECK_TOL = {"float16": 2e-2, "float32": 1e-3, "float64": 1e-9}
