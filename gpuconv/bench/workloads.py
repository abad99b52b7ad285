"""The workloads: each named shape of one operation, its kind (how its inputs are made, how
gpuconv and each peer run it), and its FLOP and byte counts."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

import gpuconv
from gpuconv import _dtypes, _layout, _shapes

# ----------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    """One named benchmark shape.

    ``sizes`` maps a size set (``"quick"``, ``"cpu"``, ``"gpu"``) to the kind's parameters;
    a workload without a set is not run there. ``dtype`` fixes the dtype (else ``--dtype``).
    ``tf32``: float32 products may use TF32 tensor cores, on both sides: the runner enables
    :func:`gpuconv.use_tf32` for gpuconv and ``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32`` for the torch peers; a workload without it runs both
    in full float32 (all three switches off), whatever ``GPUCONV_ALLOW_TF32`` says.
    """

    name: str
    kind: str
    sizes: Mapping[str, Mapping]
    dtype: str | None = None
    note: str = ""
    tf32: bool = False


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


def _spatial(p):
    """kernel, stride, padding, dilation of a workload, one entry per spatial dim."""
    nd = len(p["size"])
    return (_tuple(p["kernel"], nd), _tuple(p.get("stride", 1), nd), _tuple(p["padding"], nd),
            _tuple(p.get("dilation", 1), nd))


def _conv_out(p):
    return tuple(_shapes.conv_out_size(i, k, s, q, q, d)
                 for i, k, s, q, d in zip(p["size"], *_spatial(p)))


def _convT_out(p):
    return tuple(_shapes.conv_transpose_out_size(i, k, s, q, q, d)
                 for i, k, s, q, d in zip(p["size"], *_spatial(p)))


def _ksize(p):
    return _prod(_tuple(p["kernel"], len(p["size"])))


def flops(kind: str, p: Mapping) -> int:
    """FLOPs of one call (a multiply-add counts 2), by kind. Output sizes come from
    :mod:`gpuconv._shapes` (stride, padding and ``dilation``, default 1).

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
                        dilation=p.get("dilation", 1), groups=p.get("groups", 1))


def _torch_conv(device, a, p):
    _, F = _torch(device)
    x, w = _to_torch(a["x"]), _to_torch(a["weight"])
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(p["size"])]
    kw = dict(stride=p.get("stride", 1), padding=p["padding"], dilation=p.get("dilation", 1),
              groups=p.get("groups", 1))
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
    return gpuconv.conv_transpose(a["x"], a["weight"], stride=p["stride"], padding=p["padding"],
                                  dilation=p.get("dilation", 1))


def _torch_convT(device, a, p):
    _, F = _torch(device)
    x, w = _to_torch(a["x"]), _to_torch(a["weight"])
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[len(p["size"])]
    return lambda: fn(x, w, stride=p["stride"], padding=p["padding"],
                      dilation=p.get("dilation", 1))


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
                                  stride=p.get("stride", 1), dilation=p.get("dilation", 1))


def _torch_dw(device, a, p):
    _, F = _torch(device)
    x, w = _to_torch(a["x"]), _to_torch(a["dw_weight"])
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(p["size"])]
    return lambda: fn(x, w, padding=p["padding"], stride=p.get("stride", 1),
                      dilation=p.get("dilation", 1), groups=p["c"])


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


# --- tensor cores (issue 14) --------------------------------------------------------------
#
# The layers the implicit-GEMM (``mma.sync``) kernels are measured on, forward and backward,
# in float16 and in TF32 (float32 with ``tf32=True``), against cuDNN through PyTorch. GPU
# only ("gpu" size set). On cuda, gpuconv's default heuristic picks ``implicit_gemm`` for
# every forward here (float16 or TF32, ``C_out / groups >= 16``, ``K >= 32``; the stem's K
# is 3 * 49 = 147) except the 1x1 layer, which stride 1 and no padding send to ``matmul``
# (cuBLAS, itself on tensor cores). The backward workloads time whatever gpuconv's gradient
# functions run (docs/algorithms.md).

#: Layer name -> conv parameters: ResNet-50's 3x3 layers of each stage (batch 32), its
#: 7x7 stride-2 stem, a bottleneck's 1x1 reduction (256 -> 64 at 56x56), and a 3-D 3x3x3
#: layer (a 3-D ResNet/I3D first stage: 64 channels, 16 frames of 56x56, batch 8).
TC_LAYERS: dict[str, dict] = {
    **{f"resnet_3x3_c{c}": dict(n=32, c_in=c, c_out=c, size=(s, s), kernel=3, padding=1)
       for c, s in ((64, 56), (128, 28), (256, 14), (512, 7))},
    "stem_7x7": {**_STEM, "n": 32},
    "1x1_256to64": dict(n=32, c_in=256, c_out=64, size=(56, 56), kernel=1, padding=0),
    "conv3d_3x3x3_c64": dict(n=8, c_in=64, c_out=64, size=(16, 56, 56), kernel=3, padding=1),
}
#: Precision suffix -> (dtype, tf32).
TC_PRECISIONS = {"fp16": ("float16", False), "tf32": ("float32", True)}

for _layer, _p in TC_LAYERS.items():
    for _suffix, (_dtype, _tf32) in TC_PRECISIONS.items():
        _note = f"tensor cores ({'TF32' if _tf32 else 'fp16'})"
        register_workload(Workload(f"tc_{_layer}_{_suffix}", "conv", {"gpu": _p}, _dtype,
                                   _note, _tf32))
        register_workload(Workload(f"tc_{_layer}_{_suffix}_backward", "backward",
                                   {"gpu": {**_p, "op": "conv"}}, _dtype, _note, _tf32))


# ------------------------------------------------------------------- array helpers


#: ``--layout`` values: gpuconv's memory formats (:mod:`gpuconv._layout`).
LAYOUTS = (_layout.CONTIGUOUS, _layout.CHANNELS_LAST)
#: The arrays that ``--layout channels_last`` makes channels-last (when 4-D or 5-D): the
#: input, and a backward's ``grad_output`` (the layout the forward's result would have).
LAYOUT_KEYS = ("x", "grad_output")


def bench_dtype(name) -> np.dtype:
    """The NumPy dtype of a ``--dtype`` name; ``"bfloat16"`` is ``ml_dtypes.bfloat16``
    (ImportError naming the ``bf16`` extra without ml_dtypes)."""
    if name == "bfloat16":
        return _dtypes.require_bfloat16("gpuconv bench --dtype bfloat16")
    return np.dtype(name)


def with_layout(arrays: Mapping, layout: str, xp=np) -> dict:
    """``arrays`` with the 4-D and 5-D :data:`LAYOUT_KEYS` arrays in ``layout``.

    ``"channels_last"``: (N, C, *spatial)-shaped views of NHWC (NDHWC) buffers, as
    ``docs/layouts.md`` defines them, made by one transposing copy outside the timing; torch
    sees them as ``channels_last`` tensors. ``"contiguous"``: the arrays as they are.
    """
    if layout == _layout.CONTIGUOUS:
        return dict(arrays)
    out = dict(arrays)
    for key in LAYOUT_KEYS:
        a = out.get(key)
        if a is not None and a.ndim in (4, 5):
            nhwc = xp.ascontiguousarray(_layout.channels_last_view(a))
            out[key] = nhwc.transpose(0, a.ndim - 1, *range(1, a.ndim - 1))
    return out



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
    """A torch tensor sharing ``a``'s memory and strides (NumPy: CPU; CuPy: the GPU, via
    DLPack); a tensor passes through. A bfloat16 NumPy array goes through its bits, as the
    torch bridge does (``Tensor.numpy()`` and ``torch.from_numpy`` refuse bfloat16); a
    channels-last view stays a ``torch.channels_last`` tensor (the strides are kept)."""
    import torch

    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if _dtypes.is_bfloat16(a.dtype):
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def _to_numpy(a):
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):  # torch.Tensor
        import torch

        if a.dtype == torch.bfloat16:  # exact: every bfloat16 is a float32
            a = a.float()
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
