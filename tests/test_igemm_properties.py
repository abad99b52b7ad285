"""The tensor-core implicit GEMM through the public API on the golden cases and on random
shapes (issue 14, "How it is verified without a GPU"): ``conv_transpose`` forward, conv's
input gradient (zeros, and reflect/replicate/circular through the padding fold), the weight
gradients of conv and conv_transpose (atomic and ``deterministic``), forced with
``use_algorithm("implicit_gemm")`` on the emulator, in float16, TF32 (float32 with
``use_tf32(True)``) and bfloat16 (the emulate backend takes ``ml_dtypes.bfloat16`` arrays).

The conv forward on the golden cases in float16 and TF32 is tests/test_algorithms.py's
(test_golden_conv_cases_forced_to_implicit_gemm); here it runs in bfloat16, and
``grad.conv_transpose_input`` (a conv forward) in every kind.

Reference: the NumPy backend in float64 on the *rounded* inputs -- float16 and bfloat16 as
stored, float32 rounded to TF32 to nearest, ties away from zero (``cvt.rna.tf32.f32``; a bias
is added in float32, not rounded). Bound, as at the top of tests/test_igemm_gradients.py, with
n the number of terms of one sum and S the same computation on the inputs' absolute values::

    |got - ref| <= gamma_n S + u_out (|ref| + gamma_n S) + eta,   gamma_n = n u / (1 - n u),

u = 2**-23 (float32 accumulation, allowing truncation), u_out = 2**-11 (float16), 2**-8
(bfloat16), 0 (TF32: the float32 accumulator is the output); eta = 2**-25 (float16's
subnormal spacing halved), 0 otherwise. n is K + 1 for a forward with a bias (K = input
channels per group x taps), K = output channels per group x taps for an input gradient and
N x output positions for a weight gradient, whatever the split.

The padding fold (input gradients under reflect/replicate/circular padding): the padded
gradient is rounded to the output type before the fold adds the F <= prod(1 + pad_lo +
pad_hi) padded cells that land on one input cell, so in float16 each folded term carries one
more rounding: + 2 u_out S + F eta (bfloat16 computes the padded gradient and the fold in
float32 and rounds once; float32 has no output rounding); n gains F for the fold's adds.

Identities, bit for bit: ``conv_transpose`` of a conv's grad_output is ``grad.conv_input`` of
that conv (both launch the transposed gather, 1x1 convs too: a forced algorithm replaces the
GEMM of a pointwise input gradient), and ``grad.conv_transpose_weight`` is ``grad.conv_weight`` with ``x`` and
``grad_output`` exchanged (``deterministic=True``: the split partials summed in a fixed order).

Every device call records its ``conv_igemm`` launches: a call that reached another algorithm
would fail here, not pass against the reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import pathlib
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import _dtypes, grad
from gpuconv._shapes import conv_geometry, conv_transpose_geometry
from gpuconv.backends.device import _igemm as ig

from kernel_helpers import tensor_core_value as _value

if gpuconv.available_backends()["emulate"] != "available":
    pytest.skip(f"emulate backend unavailable: {gpuconv.available_backends()['emulate']}",
                allow_module_level=True)

U = 2.0**-23
U_OUT = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "tf32": 0.0}
ETA = {"float16": 2.0**-25, "bfloat16": 0.0, "tf32": 0.0}
FLOAT16_MAX = 65504.0
KINDS = ["float16", "tf32", "bfloat16"]
PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]


def _bf16_reason() -> str | None:
    """Why bfloat16 cannot run on emulate, or None."""
    if _dtypes.BFLOAT16 is None:
        return "ml_dtypes is not installed: no bfloat16"
    if _dtypes.BFLOAT16 not in gpuconv._dispatch.get_backend("emulate").dtypes:
        return "the emulate backend takes no ml_dtypes.bfloat16 arrays"
    return None


def _dtype(kind: str) -> np.dtype:
    """The arrays' dtype of ``kind`` (TF32 is float32 arrays)."""
    if kind == "bfloat16":
        reason = _bf16_reason()
        if reason:
            pytest.skip(reason)
        return _dtypes.BFLOAT16
    return np.dtype(np.float16 if kind == "float16" else np.float32)


def _exact(a) -> np.ndarray:
    """A bias's float64 value: added in float32 by the epilogue, never rounded to TF32."""
    return np.asarray(a).astype(np.float64)


def _bound(kind: str, ref, mag, n: int, fold_cells: int = 0) -> np.ndarray:
    """The bound of the module docstring (``fold_cells``: F of the padding fold, 0 when the
    result is not folded)."""
    gamma = n * U / (1 - n * U)
    u_out = U_OUT[kind]
    bound = gamma * mag + u_out * (np.abs(ref) + gamma * mag) + ETA[kind]
    if fold_cells and kind == "float16":
        bound = bound + 2 * u_out * mag + fold_cells * ETA[kind]
    return bound


def _check(kind: str, label: str, got, ref, mag, n: int, fold_cells: int = 0) -> float:
    """Assert ``got`` within the bound of ``ref``, element by element; return the largest
    error / bound ratio."""
    got = np.asarray(got).astype(np.float64)
    assert got.shape == ref.shape, (label, got.shape, ref.shape)
    bound = _bound(kind, ref, mag, n, fold_cells)
    err = np.abs(got - ref)
    ratio = float(np.max(err / np.where(bound > 0, bound, 1.0), initial=0.0))
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else ()
    within = bool(np.all(err <= bound))
    assert within, (f"{label} ({kind}): |got - ref| = {err[worst]:.3g} > bound "
                    f"{bound[worst]:.3g} at {worst} (ref {ref[worst]:.6g}; largest "
                    f"error/bound {ratio:.3g}; n = {n}, F = {fold_cells})")
    return ratio


@contextlib.contextmanager
def _forced(kind: str):
    """The emulate backend, ``use_algorithm("implicit_gemm")``, TF32 on for the tf32 kind."""
    with gpuconv.use_backend("emulate"), gpuconv.use_algorithm("implicit_gemm"), \
            gpuconv.use_tf32(kind == "tf32"):
        yield


@contextlib.contextmanager
def _igemm_launches():
    """Record the name expression of every ``conv_igemm`` launch made inside the block."""
    names: list[str] = []
    real = ig.launch

    def record(module, cfg, *args):
        names.append(cfg.name)
        return real(module, cfg, *args)

    ig.launch = record
    try:
        yield names
    finally:
        ig.launch = real


def _fold_cells(geom) -> int:
    """F: the most padded cells folded onto one input cell (0 for zeros padding or no pads:
    no fold then)."""
    if geom.padding_mode == "zeros" or not (any(geom.pad_lo) or any(geom.pad_hi)):
        return 0
    return math.prod(1 + lo + hi for lo, hi in zip(geom.pad_lo, geom.pad_hi))


# ----------------------------------------------------------- one operation, checked


@dataclasses.dataclass(frozen=True)
class Operation:
    """One call to check: ``call(convert, convert_bias)`` makes it with its arrays passed
    through the converters (as they are on the device, as float64 values for the reference,
    as absolute values for S); ``gather`` is the ``conv_igemm`` gather its launches must use
    (``"conv"`` or ``"transposed"``)."""

    label: str
    call: Callable
    n: int
    gather: str
    fold_cells: int = 0


def _run_operation(kind: str, op: Operation) -> float:
    """Run ``op`` forced to implicit_gemm, check its launches, dtype and bound; return the
    largest error / bound ratio."""
    with _forced(kind), _igemm_launches() as names:
        got = op.call(lambda a: a, lambda a: a)
    assert got.dtype == _dtype(kind), (op.label, got.dtype)
    suffix = f", {ig.GATHERS[op.gather]}>"
    assert names and all(name.endswith(suffix) for name in names), (op.label, names)
    with gpuconv.use_backend("numpy"):
        ref = op.call(lambda a: _value(kind, a), _exact)
        mag = op.call(lambda a: np.abs(_value(kind, a)), lambda a: np.abs(_exact(a)))
    return _check(kind, op.label, got, ref, mag, op.n, op.fold_cells)


def _conv_operations(x, w, b, go, kw, *, forward: bool, deterministic=(False, True)):
    """The operations of a conv (``x``, ``w``, ``b``; ``go`` its grad_output): its forward
    (when ``forward``), input gradient and weight gradients."""
    geom = conv_geometry(x.shape[2:], w.shape[2:], op="conv", **kw)
    taps = math.prod(w.shape[2:])
    fold = _fold_cells(geom)
    ops = []
    if forward:
        ops.append(Operation("conv", lambda c, cb: gpuconv.conv(
            c(x), c(w), None if b is None else cb(b), **kw),
            w.shape[1] * taps + (b is not None), "conv"))
    ops.append(Operation("grad.conv_input", lambda c, cb: grad.conv_input(
        x.shape, c(w), c(go), **kw),
        w.shape[0] // geom.groups * taps + fold, "transposed", fold))
    for det in deterministic:
        ops.append(Operation(f"grad.conv_weight(deterministic={det})",
                             lambda c, cb, det=det: grad.conv_weight(
                                 c(x), w.shape, c(go), deterministic=det, **kw),
                             go.shape[0] * math.prod(go.shape[2:]), "conv"))
    return ops


def _transpose_operations(x, w, b, go, kw, *, deterministic=(False, True)):
    """The operations of a conv_transpose: its forward, input gradient (a conv forward) and
    weight gradients."""
    geom = conv_transpose_geometry(x.shape[2:], w.shape[2:], op="conv_transpose",
                                   **{"output_padding": 0, "dilation": 1, "stride": 1,
                                      "padding": 0, **kw})
    taps = math.prod(w.shape[2:])
    ops = [Operation("conv_transpose", lambda c, cb: gpuconv.conv_transpose(
        c(x), c(w), None if b is None else cb(b), **kw),
        x.shape[1] // geom.groups * taps + (b is not None), "transposed"),
        Operation("grad.conv_transpose_input", lambda c, cb: grad.conv_transpose_input(
            x.shape, c(w), c(go), **kw), w.shape[1] * taps, "conv")]
    for det in deterministic:
        ops.append(Operation(f"grad.conv_transpose_weight(deterministic={det})",
                             lambda c, cb, det=det: grad.conv_transpose_weight(
                                 c(x), w.shape, c(go), deterministic=det, **kw),
                             x.shape[0] * math.prod(x.shape[2:]), "conv"))
    return ops


# ------------------------------------------------------------------ golden cases


def _load_golden():
    data = pathlib.Path(__file__).parent / "data"
    meta = json.loads((data / "cases.json").read_text())
    arrays = np.load(data / "cases.npz")
    return meta["cases"], {k: arrays[k] for k in arrays.files}


CASES, ARRAYS = _load_golden()
GOLDEN = [c for c in CASES if c["op"] in ("conv", "conv_transpose")]
#: tests/data (= ../shared/golden) holds 20 conv and 10 conv_transpose cases
GOLDEN_COUNT = 30


def _golden_kwargs(case) -> dict:
    """The case's keyword arguments, lists as tuples (no conv/conv_transpose case has an
    array keyword)."""
    out = {}
    for key, value in case["kwargs"].items():
        assert not isinstance(value, dict), (case["id"], key)
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        out[key] = value
    return out


@functools.cache
def _golden_setup(case_id: str, kind: str):
    """(operations, float16 overflow reason or None) of golden case ``case_id`` in ``kind``:
    its inputs rounded to the kind's dtype and a grad_output drawn from crc32 of the id (as
    tests/test_bf16.py does), the same every process."""
    case = next(c for c in GOLDEN if c["id"] == case_id)
    dtype = _dtype(kind)
    x, w, *rest = (ARRAYS[k].astype(dtype) for k in case["args"])
    b = rest[0] if rest else None
    out_shape = ARRAYS[case["expected"]].shape
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    go = rng.standard_normal(out_shape).astype(dtype)
    kw = _golden_kwargs(case)
    if case["op"] == "conv":
        # the float16/TF32 conv forward is tests/test_algorithms.py's
        ops = _conv_operations(x, w, b, go, kw, forward=kind == "bfloat16")
    else:
        ops = _transpose_operations(x, w, b, go, kw)
    reason = None
    if kind == "float16":
        with gpuconv.use_backend("numpy"):
            # S bounds |ref| and every partial result (the padded gradient too)
            largest = max([float(np.max(np.abs(ARRAYS[k]))) for k in case["args"]]
                          + [float(np.max(op.call(lambda a: np.abs(_value(kind, a)),
                                                  lambda a: np.abs(_exact(a)))))
                             for op in ops])
        if largest > FLOAT16_MAX:
            reason = f"float16 overflows: a value or sum of |terms| reaches {largest:.6g}"
    return ops, reason


def _golden_skip_reason(case, kind: str) -> str | None:
    """Why golden ``case`` cannot run forced to implicit_gemm in ``kind``, or None (every
    skip of test_golden_case goes through here, and test_golden_cases_run counts them)."""
    if kind == "bfloat16" and _bf16_reason():
        return _bf16_reason()
    return _golden_setup(case["id"], kind)[1]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", GOLDEN, ids=[c["id"] for c in GOLDEN])
def test_golden_case(case, kind):
    """Golden conv case: the input gradient and both weight gradients (plus the forward in
    bfloat16); conv_transpose case: the forward, the input and both weight gradients; each
    forced to implicit_gemm, within the bound of float64 on the rounded inputs."""
    reason = _golden_skip_reason(case, kind)
    if reason:
        pytest.skip(reason)
    ops, _ = _golden_setup(case["id"], kind)
    for op in ops:
        _run_operation(kind, dataclasses.replace(op, label=f"{case['id']} {op.label}"))


def test_golden_cases_run():
    """How many golden cases test_golden_case runs: all 30 in float16 and TF32, and in
    bfloat16 where the emulate backend takes it (no float16 overflow in this data); a skip that
    spread silently would fail here."""
    assert len(GOLDEN) == GOLDEN_COUNT
    kinds = KINDS if _bf16_reason() is None else ["float16", "tf32"]
    for kind in kinds:
        skipped = {c["id"]: r for c in GOLDEN if (r := _golden_skip_reason(c, kind))}
        assert not skipped, (kind, skipped)
    if _bf16_reason() is not None:
        pytest.skip(f"float16 and TF32 counted; bfloat16: {_bf16_reason()}")


# ------------------------------------------------------------- random shapes


SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])


def _groups(draw, c_in: int, c_out: int) -> int:
    return draw(st.sampled_from([g for g in range(1, min(c_in, c_out) + 1)
                                 if c_in % g == 0 and c_out % g == 0]))


@st.composite
def conv_setups(draw, modes=tuple(PADDING_MODES), symmetric=False):
    """(x shape, w shape, kwargs) of a conv: N 1-2, C_in 1-9, C_out 1-20, 1-3 spatial dims of
    1-9, kernel 1-3, stride 1-3, dilation 1-2, groups dividing both channel counts, padding
    0-2 ((lo, hi) per dim, or one int per dim with ``symmetric``) in one of ``modes``."""
    nd = draw(st.integers(1, 3))
    batch, c_in, c_out = draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(
        st.integers(1, 20))
    groups = _groups(draw, c_in, c_out)
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    mode = draw(st.sampled_from(modes))
    if symmetric:
        pads = [(p, p) for p in (draw(st.integers(0, 2)) for _ in range(nd))]
        padding = tuple(lo for lo, _ in pads)
    else:
        pads = [(draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nd)]
        padding = tuple(pads)
    # sizes 1-9 that leave at least one output position
    size = tuple(draw(st.integers(max(1, d * (k - 1) + 1 - lo - hi), 9))
                 for (lo, hi), k, d in zip(pads, kernel, dilation))
    kw = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
          "padding_mode": mode}
    try:  # reflect needs pads < size, circular pads <= size
        conv_geometry(size, kernel, op="conv", **kw)
    except ValueError:
        assume(False)
    return (batch, c_in, *size), (c_out, c_in // groups, *kernel), kw


@st.composite
def transpose_setups(draw):
    """(x shape, w shape, kwargs) of a conv_transpose: as :func:`conv_setups` (x has C_in
    1-9, the output C_out 1-20), padding 0-2 per dim, output_padding below the stride or the
    dilation."""
    nd = draw(st.integers(1, 3))
    batch, c_in, c_out = draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(
        st.integers(1, 20))
    groups = _groups(draw, c_in, c_out)
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1))
                           for s, d in zip(stride, dilation))
    size = tuple(draw(st.integers(1, 9)) for _ in range(nd))
    kw = {"stride": stride, "padding": padding, "output_padding": output_padding,
          "dilation": dilation, "groups": groups}
    try:  # an output of at least one position
        conv_transpose_geometry(size, kernel, op="conv_transpose", **kw)
    except ValueError:
        assume(False)
    return (batch, c_in, *size), (c_in, c_out // groups, *kernel), kw


def _arrays(seed: int, dtype, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _output_shape(func, x_shape, w_shape, kw):
    with gpuconv.use_backend("numpy"):
        return func(np.zeros(x_shape), np.zeros(w_shape), **kw).shape


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(setup=transpose_setups(), bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_conv_transpose_within_the_bound(kind, setup, bias, seed):
    """conv_transpose forward, its input gradient and its weight gradients (atomic and
    deterministic) on random shapes, forced to implicit_gemm, within the bound."""
    x_shape, w_shape, kw = setup
    dtype = _dtype(kind)
    go_shape = _output_shape(gpuconv.conv_transpose, x_shape, w_shape, kw)
    x, w, b, go = _arrays(seed, dtype, x_shape, w_shape, go_shape[1], go_shape)
    for op in _transpose_operations(x, w, b if bias else None, go, kw):
        _run_operation(kind, op)


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(setup=conv_setups(), seed=st.integers(0, 2**31 - 1))
def test_conv_gradients_within_the_bound(kind, setup, seed):
    """conv's input gradient (every padding mode; reflect/replicate/circular through the
    fold) and weight gradients (atomic and deterministic) on random shapes, forced to
    implicit_gemm, within the bound."""
    x_shape, w_shape, kw = setup
    dtype = _dtype(kind)
    go_shape = _output_shape(gpuconv.conv, x_shape, w_shape, kw)
    x, w, go = _arrays(seed, dtype, x_shape, w_shape, go_shape)
    for op in _conv_operations(x, w, None, go, kw, forward=False):
        _run_operation(kind, op)


# ------------------------------------------------------------------ identities


def _transposing(x_shape, w_shape, kw) -> dict:
    """The conv_transpose arguments whose output is the conv's input (the output_padding
    below the stride that restores its size)."""
    geom = conv_geometry(x_shape[2:], w_shape[2:], op="conv", **kw)
    output_padding = tuple(
        n - ((o - 1) * s - lo - hi + d * (k - 1) + 1)
        for n, o, s, lo, hi, d, k in zip(geom.in_size, geom.out_size, geom.stride, geom.pad_lo,
                                         geom.pad_hi, geom.dilation, geom.kernel))
    return {"stride": kw["stride"], "padding": kw["padding"], "output_padding": output_padding,
            "dilation": kw["dilation"], "groups": kw["groups"]}


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(setup=conv_setups(modes=("zeros",), symmetric=True), seed=st.integers(0, 2**31 - 1))
def test_transposition_identities_bit_for_bit(kind, setup, seed):
    """For a conv (zeros padding) and its transposition: ``conv_transpose(go, w)`` equals
    ``grad.conv_input(x.shape, w, go)``, and ``grad.conv_transpose_weight(go, w.shape, x)``
    equals ``grad.conv_weight(x, w.shape, go)`` with ``deterministic=True``, bit for bit."""
    x_shape, w_shape, kw = setup
    dtype = _dtype(kind)
    kw = {k: v for k, v in kw.items() if k != "padding_mode"}  # zeros
    go_shape = _output_shape(gpuconv.conv, x_shape, w_shape, kw)
    x, w, go = _arrays(seed, dtype, x_shape, w_shape, go_shape)
    tkw = _transposing(x_shape, w_shape, kw)
    assert all(0 <= p < s for p, s in zip(tkw["output_padding"], kw["stride"]))
    bits = (lambda a: a.view(np.uint16)) if kind == "bfloat16" else (lambda a: a)
    with _forced(kind), _igemm_launches() as names:
        transposed = gpuconv.conv_transpose(go, w, **tkw)
        input_grad = grad.conv_input(x_shape, w, go, **kw)
        weight_grad = grad.conv_weight(x, w_shape, go, deterministic=True, **kw)
        transposed_weight_grad = grad.conv_transpose_weight(go, w_shape, x, deterministic=True,
                                                            **tkw)
    assert [name[-2] for name in names] == ["1", "1", "0", "0"], names  # the gathers
    assert transposed.shape == x_shape and transposed.dtype == dtype
    np.testing.assert_array_equal(bits(transposed), bits(input_grad))
    assert weight_grad.shape == w_shape and weight_grad.dtype == dtype
    np.testing.assert_array_equal(bits(transposed_weight_grad), bits(weight_grad))
