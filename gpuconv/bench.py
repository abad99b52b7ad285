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
* gpuconv and its peers run in the same process, one after the other, each after a
  pause (``SETTLE_S``, so the previous one's spinning BLAS/OpenMP threads have parked)
  and a warm-up; then ``--repeat`` samples. Sample ``r`` uses input set ``r % COPIES``
  (rotated inputs, so caches don't flatter). A sample repeats the call enough times to
  last ``MIN_SAMPLE_S``; the reported time is the median sample, per call.
* The load average before and after the run goes into the JSON: on a busy machine the
  numbers mean little (the table says so).
* The ceilings are measured in the same run: a large matrix product (FLOP/s; float32, or
  the workload's compute dtype) and a large copy (bytes read + written per second).

Roofline
--------
For each workload ``F`` counts FLOPs (a multiply-add is 2 FLOPs; the formulas are in
:func:`flops`) and ``B`` bytes (every input, weight and output array once, in the workload
dtype: :func:`traffic_bytes`). With the measured peaks ``P`` (FLOP/s) and ``W`` (bytes/s),
the roofline time is ``max(F / P, B / W)`` and::

    % of roofline = 100 * (F / t) / min(P, (F / B) * W) = 100 * max(F / P, B / W) / t

``ratio`` is gpuconv's time divided by the fastest peer's (below 1: gpuconv is faster).

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
#: Pause before each implementation's turn (seconds); see :func:`time_side_by_side`.
SETTLE_S = 0.25
DEFAULT_REPEAT = {"quick": 3, "full": 10}
SIZE_SETS = ("quick", "cpu", "gpu")
JSON_SCHEMA = "gpuconv-bench/1"


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
                      settle_s: float = SETTLE_S):
    """Seconds per call of each implementation: ``repeat`` samples each.

    ``impls`` maps a name to a list of zero-argument callables, one per input set; sample
    ``r`` uses input set ``r % len``. The implementations run one after the other, each
    after a pause of ``settle_s`` and its own warm-up: interleaving them call by call
    would make each one compete with the other's spinning worker threads (OpenBLAS's and
    OpenMP's), which on a machine with few cores costs several times the work itself.
    Returns name -> list of per-call times (one per sample).
    """
    times = {}
    for name, fns in impls.items():
        time.sleep(settle_s)
        for i in range(warmup):
            fns[i % len(fns)]()
        timer.sync()
        once = timer.sample(fns[0], 1)
        number = max(1, min(1000, math.ceil(MIN_SAMPLE_S / max(once, 1e-9))))
        times[name] = [timer.sample(fns[r % len(fns)], number) for r in range(repeat)]
    return times


# ------------------------------------------------------------------------------ peaks


def measure_peaks(xp, dtype, quick: bool, clock: str = "wall") -> dict:
    """Matrix-product FLOP/s and copy bytes/s on ``xp`` (NumPy or CuPy), best of a few."""
    on_gpu = xp is not np
    timer = CudaTimer() if on_gpu else CpuTimer(clock)
    n = (4096 if on_gpu else 2048) if not quick else (1024 if on_gpu else 512)
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
    b = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
    out = xp.empty((n, n), dtype=dtype)
    xp.matmul(a, b, out=out)
    timer.sync()
    best_mm = min(timer.sample(lambda: xp.matmul(a, b, out=out), 1) for _ in range(3))
    elements = (1 << 26 if on_gpu else 1 << 25) if not quick else 1 << 22
    src = xp.ones(elements, dtype=np.float32)
    dst = xp.empty_like(src)
    xp.copyto(dst, src)
    timer.sync()
    best_copy = min(timer.sample(lambda: xp.copyto(dst, src), 1) for _ in range(5))
    return {"matmul_n": n, "matmul_dtype": np.dtype(dtype).name,
            "flops_per_s": 2 * n ** 3 / best_mm,
            "copy_bytes": int(src.nbytes), "bytes_per_s": 2 * src.nbytes / best_copy}


def roofline_pct(flop: float, nbytes: float, seconds: float, peaks: Mapping) -> float:
    """``100 * max(F / P, B / W) / t``: see the module docstring."""
    bound = max(flop / peaks["flops_per_s"], nbytes / peaks["bytes_per_s"])
    return 100.0 * bound / seconds


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


def _blas() -> object:
    try:
        from threadpoolctl import threadpool_info

        return [{k: v for k, v in lib.items() if k != "filepath"} for lib in threadpool_info()]
    except ImportError:
        pass
    try:
        return np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # older NumPy: no dict mode
        return "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(backend: str) -> dict:
    """Where and with what the benchmark ran (goes into the JSON)."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "blas": _blas(),
        "gpuconv": gpuconv.__version__,
        "versions": {d: _version(d) for d in ("torch", "torchvision", "scipy", "matplotlib")},
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                           "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                           "MKL_NUM_THREADS") if k in os.environ},
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    if backend == "cuda":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["versions"]["cupy"] = cupy.__version__
    return info


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
                 peaks: Mapping, seed: int = 0, clock: str = "wall") -> dict:
    """Time one workload on gpuconv and every peer; returns its JSON record."""
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
    timer = CudaTimer() if device == "cuda" else CpuTimer(clock)
    times = time_side_by_side(impls, timer, repeat)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name in kind.peers:
        if name in medians:
            record["peers"][name] = {
                "median_s": medians[name], "times_s": times[name],
                "rel_diff": _rel_diff(results["gpuconv"], results[name])
                if "gpuconv" in results else None,
            }
    if "gpuconv" not in medians:
        record.update(median_s=None, times_s=None)
        return record
    t = medians["gpuconv"]
    record.update(median_s=t, times_s=times["gpuconv"],
                  gflops=record["flops"] / t / 1e9, gbs=record["bytes"] / t / 1e9,
                  roofline_pct=roofline_pct(record["flops"], record["bytes"], t, peaks))
    peer_times = {n: v["median_s"] for n, v in record["peers"].items() if v}
    if peer_times:
        fastest = min(peer_times, key=peer_times.get)
        record.update(fastest_peer=fastest, ratio=t / peer_times[fastest])
    return record


# ----------------------------------------------------------------------------- output


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3g}" if seconds < 1e-2 \
        else f"{seconds * 1e3:.1f}"


def format_table(records: list[dict], markdown: bool = False) -> str:
    """The table: one row per workload, per-peer times at the right (text or Markdown)."""
    peer_names = []
    for r in records:
        for name in r["peers"]:
            if name not in peer_names and any(x["peers"].get(name) for x in records):
                peer_names.append(name)
    head = ["workload", "backend", "dtype", "time ms", "ratio", "vs", "GFLOP/s", "GB/s",
            "% roof"] + [f"{n} ms" for n in peer_names]
    rows = [head]
    for r in records:
        t = r.get("median_s")
        row = [r["workload"], r["backend"], r["dtype"], _ms(t),
               f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-",
               r.get("fastest_peer", "-"),
               f"{r['gflops']:.1f}" if t else "-", f"{r['gbs']:.1f}" if t else "-",
               f"{r['roofline_pct']:.0f}" if t else "-"]
        for name in peer_names:
            peer = r["peers"].get(name)
            row.append(_ms(peer["median_s"]) if peer else "-")
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join(" --- " if i < 3 else " ---: " for i in range(len(head)))
                     + "|")
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) if i >= 3 else str(c).ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_plot(path: str, records: list[dict], title: str) -> None:
    """Bar chart: gpuconv's time / each peer's time per workload, and % of roofline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in records if r.get("median_s")]
    names = [r["workload"] for r in timed]
    peers = sorted({p for r in timed for p, v in r["peers"].items() if v})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(names) + 4), 4.8))
    colors = {peer: f"C{j}" for j, peer in enumerate(peers)}
    for i, r in enumerate(timed):  # each workload's bars centred on its tick
        present = [p for p in peers if r["peers"].get(p)]
        width = 0.8 / max(1, len(present))
        for j, peer in enumerate(present):
            ratio = r["median_s"] / r["peers"][peer]["median_s"]
            ax1.bar(i + (j - (len(present) - 1) / 2) * width, ratio, width,
                    color=colors[peer], label=f"vs {peer}")
    handles, labels = ax1.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax1.axhline(1.0, color="black", linewidth=0.8)
    ax1.set_yscale("log")
    ax1.set_ylabel("gpuconv time / peer time (lower is better)")
    ax1.set_xticks(np.arange(len(names)), names, rotation=40, ha="right")
    if unique:
        ax1.legend(unique.values(), unique.keys(), fontsize=8)
    ax1.set_title("time ratio")
    bars = ax2.bar(np.arange(len(names)), [r["roofline_pct"] for r in timed], color="tab:green")
    ax2.bar_label(bars, fmt="%.0f", fontsize=8)
    ax2.set_xticks(np.arange(len(names)), names, rotation=40, ha="right")
    ax2.set_ylabel("% of roofline")
    ax2.set_title("gpuconv: % of roofline")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
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


def _loadavg():
    """The 1, 5 and 15-minute load averages, or None where the OS has none."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _cuda_available() -> bool:
    return gpuconv.available_backends().get("cuda") == "available"


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

    if args.threads is not None:
        problem = _set_threads(args.threads)
        if problem:
            print(f"error: --threads: {problem}", file=sys.stderr)
            return 2
    load_start = _loadavg()
    xp = np
    if backend == "cuda":
        import cupy as xp
    peak_dtypes = {}
    for n in names:
        dt = np.dtype(WORKLOADS[n].dtype or args.dtype)
        compute = np.dtype(np.float32) if dt == np.float16 and xp is np else dt
        peak_dtypes[dt.name] = compute
    peaks_by_dtype = {}
    for dt_name, compute in peak_dtypes.items():
        if compute.name not in peaks_by_dtype:
            peaks_by_dtype[compute.name] = measure_peaks(xp, compute, args.quick, args.clock)

    progress = _Progress(len(names), enabled=not args.no_progress)
    records = []
    try:
        for name in names:
            progress.step(name)
            workload = WORKLOADS[name]
            dt = np.dtype(workload.dtype or args.dtype)
            peaks = peaks_by_dtype[peak_dtypes[dt.name].name]
            records.append(run_workload(workload, size_set=size_set, backend=backend,
                                        dtype=args.dtype, repeat=repeat, peaks=peaks,
                                        clock=args.clock))
            progress.advance()
    finally:
        progress.close()

    machine = machine_info(backend)
    machine["loadavg_start"], machine["loadavg_end"] = load_start, _loadavg()
    headline = (f"gpuconv bench: backend {backend}, sizes {size_set!r}, {repeat} samples, "
                f"median per call, {args.clock} clock"
                + (f", {args.threads} thread(s)" if args.threads else "")
                + f"; {machine['cpu_model']} ({machine['cpu_count']} cores)"
                + (f", {machine['gpu']}" if "gpu" in machine else "")
                + f"; load average {load_start} -> {machine['loadavg_end']}")
    print(headline)
    for dt_name, peak in peaks_by_dtype.items():
        print(f"ceilings ({dt_name}): matmul {peak['flops_per_s'] / 1e9:.1f} GFLOP/s, "
              f"copy {peak['bytes_per_s'] / 1e9:.1f} GB/s")
    print(format_table(records))
    print("ratio = gpuconv time / fastest peer time (< 1: gpuconv faster); "
          "% roof = 100 * max(F/peak_flops, B/peak_bw) / time")
    notes = [f"{r['workload']}: {n}" for r in records for n in r["notes"]]
    busy = max((v[0] for v in (load_start, machine["loadavg_end"]) if v), default=0.0)
    if busy > 0.5 * (os.cpu_count() or 1):
        notes.insert(0, f"the machine was busy (1-minute load average up to {busy:.1f} on "
                        f"{os.cpu_count()} cores): "
                        + ("thread CPU times, less affected than wall times, but caches and "
                           "memory bandwidth are shared" if args.clock == "thread"
                           else "the times are unreliable"))
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
                          "threads": args.threads, "clock": args.clock},
               "peaks": peaks_by_dtype, "results": records, "notes": notes}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"{headline}\n\n{format_table(records, markdown=True)}\n\n")
            f.write("".join(f"- {note}\n" for note in notes))
    if args.plot:
        write_plot(args.plot, records,
                   f"gpuconv {backend} ({args.dtype}, {size_set}) - {machine['cpu_model']}"
                   + (f" / {machine['gpu']}" if "gpu" in machine else ""))
    return 0


#: max relative difference to a peer's result before the run notes a mismatch
_CHECK_TOL = {"float16": 2e-2, "float32": 1e-3, "float64": 1e-9}
