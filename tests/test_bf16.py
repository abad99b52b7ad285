"""bfloat16 (``ml_dtypes.bfloat16``) on the NumPy and emulate backends, and the dtype rules
around it.

* Every golden case (``tests/data/cases.*``) and the gradients of its forward, in bfloat16,
  against float64 computed on the bfloat16-ROUNDED inputs, element by element within the
  bound below; and bit for bit equal to the float32 computation on those inputs rounded once
  to bfloat16 ("computed in float32, rounded once").
* Identities in bfloat16 (depthwise == grouped conv, separable == depthwise then 1x1).
* The result dtype of mixed float16/bfloat16/float32/float64 inputs (hypothesis).
* The ``emulate`` backend (the CUDA kernels' ``__nv_bfloat16`` instantiations on the CPU): a
  subset of the golden cases (:data:`EMULATE_CASES`) and their gradients within the same bound
  (not bitwise: the kernels and GEMMs sum in their own order), and every bfloat16 kernel
  instantiation once, under race_check() too, and every kernel template under checked().
* A backend without bfloat16 in its ``dtypes`` refuses it with a TypeError that says what to
  do; the ``bf16`` extra is named when ml_dtypes is missing.

The bound (also in docs/dtypes.md)
----------------------------------
An output is a sum of ``K`` products of bfloat16 inputs (``K``: the reduction length, e.g.
``C_in / groups * prod(kernel)`` for ``conv``, plus 1 for a bias). Each product is exact in
float32 (two 8-bit significands make at most 16 bits), the float32 sum errs by at most
``gamma_K * S`` with ``gamma_K = K u32 / (1 - K u32)``, ``u32 = 2**-24``, and ``S = sum |a_k
b_k|``, and the one rounding to bfloat16 adds at most ``u_bf * |y|``, ``u_bf = 2**-8``. So per
element, with ``ref`` the float64 result on the rounded inputs::

    |got - ref| <= u_bf * |ref| + (1 + u_bf) * gamma_K * S

``S`` is the same operation applied to the inputs' absolute values, in float64 (every
operation here is a sum of products with non-negative structure coefficients: padding
copies, the padding fold, bilinear weights). ``K`` is an upper bound: a reflect/replicate/
circular pad's adjoint adds up to 3 cells per dim, so input gradients use ``3**ndim`` times
the taps; ``deform_conv2d`` adds 8 for its sampling (bilinear coefficients are float32
products, 4 corners are summed). The offset gradient of ``deform_conv2d`` (a difference of
corners, not a sum of non-negative terms) is checked bit for bit against float32 and in norm
(relative error at most ``u_bf``). ``separable_conv`` rounds its depthwise result to
bfloat16 (as for float16); its bound composes the two stages (:func:`_separable_bound`).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

import gpuconv
from gpuconv import _dtypes, grad

ml_dtypes = pytest.importorskip("ml_dtypes")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BF16 = np.dtype(ml_dtypes.bfloat16)
U_BF16 = 2.0 ** -8
U_F32 = 2.0 ** -24

#: the largest error / bound ratio seen per test id (printed with -s; see the report)
RATIOS: dict[str, float] = {}


def gamma(k: int) -> float:
    """``k u / (1 - k u)`` for float32's unit roundoff: the bound of a ``k``-term sum."""
    return k * U_F32 / (1 - k * U_F32)


def check_bound(name: str, got, ref, magnitude, k: int) -> float:
    """Assert ``|got - ref| <= u_bf |ref| + (1 + u_bf) gamma_k S`` element by element; return
    the largest ratio of the error to its bound."""
    assert got.dtype == BF16, (name, got.dtype)
    got64 = got.astype(np.float64)
    bound = U_BF16 * np.abs(ref) + (1 + U_BF16) * gamma(k) * magnitude
    err = np.abs(got64 - ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert np.all(err <= bound), (
        f"{name}: |got - ref| = {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
        f"(ref {ref[worst]:.6g}, K = {k})")
    ratio = float(np.max(np.where(bound > 0, err / np.where(bound > 0, bound, 1), 0),
                         initial=0.0))
    RATIOS[name] = max(RATIOS.get(name, 0.0), ratio)
    return ratio


def rounded(a):
    """``a`` rounded to bfloat16 (None stays None)."""
    return None if a is None else np.asarray(a).astype(BF16)


def as64(a, absolute=False):
    if a is None:
        return None
    a = a.astype(np.float64)
    return np.abs(a) if absolute else a


def as32(a):
    return None if a is None else a.astype(np.float32)


# ------------------------------------------------------------------ golden cases


def _cases():
    import json
    import pathlib

    data = pathlib.Path(__file__).parent / "data"
    meta = json.loads((data / "cases.json").read_text())
    arrays = np.load(data / "cases.npz")
    return meta["cases"], {k: arrays[k] for k in arrays.files}


CASES, ARRAYS = _cases()


def _split(case):
    """(positional arrays, array kwargs, other kwargs) of a golden case, in float64."""
    args = [ARRAYS[k] for k in case["args"]]
    arrays, other = {}, {}
    for key, value in case["kwargs"].items():
        if isinstance(value, dict) and "array" in value:
            arrays[key] = ARRAYS[value["array"]]
        elif isinstance(value, list):
            other[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            other[key] = value
    return args, arrays, other


def _call(op, args, arrays, other, convert):
    return getattr(gpuconv, op)(*[convert(a) for a in args],
                                **{k: convert(v) for k, v in arrays.items()}, **other)


def _reduction_length(op, args) -> int:
    """K of the forward: the terms summed into one output (an upper bound; a bias counts
    one)."""
    if op in ("convolve", "correlate"):
        return min(len(args[0]), len(args[1]))
    x = args[0]
    w, bias = (args[2], args[3:]) if op == "deform_conv2d" else (args[1], args[2:])
    taps = math.prod(w.shape[2:])
    k = {"conv": w.shape[1] * taps, "conv_transpose": x.shape[1] * taps,
         "depthwise_conv": taps, "deform_conv2d": w.shape[1] * taps + 8}[op]
    return k + len(bias)


def _separable_bound(args, other):
    """(ref, bound) of a bfloat16 ``separable_conv`` on the rounded inputs: the depthwise
    result ``mid`` is rounded to bfloat16 (error ``e_mid <= u_bf |mid| + (1 + u_bf)
    gamma_K1 S_mid``), then the 1x1 conv adds ``gamma_K2 (|pw| |mid_bf| + |b|)`` and the
    carried ``|pw| e_mid``, and the final rounding ``u_bf |ref|``."""
    x, dw, pw = (as64(rounded(a)) for a in args[:3])
    b = as64(rounded(args[3])) if len(args) > 3 else None
    with gpuconv.use_backend("numpy"):
        mid = gpuconv.depthwise_conv(x, dw, **other)
        s_mid = gpuconv.depthwise_conv(np.abs(x), np.abs(dw), **other)
        e_mid = U_BF16 * np.abs(mid) + (1 + U_BF16) * gamma(math.prod(dw.shape[2:])) * s_mid
        ref = gpuconv.conv(mid, pw, b)
        k2 = pw.shape[1] + (b is not None)
        carried = gpuconv.conv(e_mid, np.abs(pw))
        s_out = gpuconv.conv(np.abs(mid) + e_mid, np.abs(pw), None if b is None else np.abs(b))
    return ref, U_BF16 * np.abs(ref) + (1 + U_BF16) * (gamma(k2) * s_out + carried)


def _forward_reference(op, args, arrays, other):
    """(ref, magnitude): the forward in float64 on the bfloat16-rounded inputs, and on their
    absolute values (``S`` of the bound), on the NumPy backend."""
    with gpuconv.use_backend("numpy"):
        ref = _call(op, args, arrays, other, lambda a: as64(rounded(a)))
        if op == "deform_conv2d":
            # the offsets stay signed: they are positions, not terms of the sum
            offset = as64(rounded(args[1]))
            magnitude = gpuconv.deform_conv2d(
                as64(rounded(args[0]), True), offset,
                *[as64(rounded(a), True) for a in args[2:]],
                **{k: as64(rounded(v), True) for k, v in arrays.items()}, **other)
        else:
            magnitude = _call(op, args, arrays, other, lambda a: as64(rounded(a), True))
    return ref, magnitude


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_golden_forward_bf16(case):
    """Every golden case in bfloat16: within the bound of float64 on the rounded inputs, and
    equal to float32 on those inputs rounded once (separable: to its two-stage composition)."""
    op = case["op"]
    args, arrays, other = _split(case)
    with gpuconv.use_backend("numpy"):
        got = _call(op, args, arrays, other, rounded)
        assert got.dtype == BF16 and got.shape == ARRAYS[case["expected"]].shape
        if op == "separable_conv":
            ref, bound = _separable_bound(args, other)
            err = np.abs(got.astype(np.float64) - ref)
            assert np.all(err <= bound)
            RATIOS[case["id"]] = float(np.max(err / np.where(bound > 0, bound, 1)))
            x, dw, pw = (rounded(a) for a in args[:3])
            mid = gpuconv.depthwise_conv(x, dw, **other)
            composed = gpuconv.conv(mid, pw, rounded(args[3]) if len(args) > 3 else None)
            np.testing.assert_array_equal(got.view(np.uint16), composed.view(np.uint16))
            return
        ref, magnitude = _forward_reference(op, args, arrays, other)
        check_bound(case["id"], got, ref, magnitude, _reduction_length(op, args))
        once = _call(op, args, arrays, other, lambda a: as32(rounded(a))).astype(BF16)
        np.testing.assert_array_equal(got.view(np.uint16), once.view(np.uint16))


# ----------------------------------------------------------------- gradients


def _grad_output(case, shape):
    rng = np.random.default_rng(zlib.crc32(case["id"].encode()))  # the same every process
    return rng.standard_normal(shape)


GRAD_CASES = [c for c in CASES if c["op"] in
              ("conv", "conv_transpose", "depthwise_conv", "deform_conv2d")]


def _gradients(op, args, arrays, other, g, convert, absolute=False):
    """{name: gradient} of the forward ``op`` at the golden inputs, arrays through ``convert``
    (``absolute``: offsets stay signed)."""
    x, w = convert(args[0]), convert(args[2] if op == "deform_conv2d" else args[1])
    g = convert(g)
    if op == "conv":
        return {"input": grad.conv_input(x.shape, w, g, **other),
                "weight": grad.conv_weight(x, w.shape, g, **other),
                "bias": grad.conv_bias(g)}
    if op == "conv_transpose":
        return {"input": grad.conv_transpose_input(x.shape, w, g, **other),
                "weight": grad.conv_transpose_weight(x, w.shape, g, **other)}
    if op == "depthwise_conv":
        return {"input": grad.depthwise_conv_input(x.shape, w, g, **other),
                "weight": grad.depthwise_conv_weight(x, w.shape, g, **other)}
    offset = args[1]
    offset = (as64(rounded(offset)) if absolute else convert(offset))
    mask = arrays.get("mask")
    grads = grad.deform_conv2d(x, offset, w, g, mask=None if mask is None else convert(mask),
                               **other)
    return {k: v for k, v in grads._asdict().items() if v is not None}


def _grad_lengths(op, args, out_shape) -> dict[str, int]:
    """K per gradient: the terms summed into one element (an upper bound)."""
    x = args[0]
    w = args[2] if op == "deform_conv2d" else args[1]
    taps = math.prod(w.shape[2:])
    nd = x.ndim - 2
    per_weight = out_shape[0] * math.prod(out_shape[2:])  # N * output positions
    if op == "conv":
        groups = x.shape[1] // w.shape[1]
        return {"input": w.shape[0] // groups * taps * 3 ** nd, "weight": per_weight,
                "bias": per_weight}
    if op == "conv_transpose":
        return {"input": w.shape[1] * taps, "weight": x.shape[0] * math.prod(x.shape[2:])}
    if op == "depthwise_conv":
        return {"input": w.shape[0] // x.shape[1] * taps * 3 ** nd, "weight": per_weight}
    groups = x.shape[1] // w.shape[1]
    cpo = x.shape[1] // (args[1].shape[1] // (2 * taps))
    sampling = w.shape[0] // groups + cpo + 8
    return {"input": sampling, "weight": per_weight + sampling, "mask": sampling,
            "offset": sampling, "bias": per_weight}


@pytest.mark.parametrize("case", GRAD_CASES, ids=[c["id"] for c in GRAD_CASES])
def test_golden_gradients_bf16(case):
    """The gradients of every conv/conv_transpose/depthwise/deform golden case in bfloat16,
    for a random bfloat16 grad_output: within the bound of float64 on the rounded inputs (the
    deformable offset gradient: in norm), and equal to float32 rounded once."""
    _check_golden_gradients(case, "numpy")


def _check_golden_gradients(case, backend: str):
    """The gradients of golden ``case`` on ``backend`` against the NumPy backend's float64 on
    the rounded inputs, within the bound (offset: in norm); on ``numpy`` also bit for bit
    float32 rounded once."""
    op = case["op"]
    args, arrays, other = _split(case)
    arrays = {k: v for k, v in arrays.items() if k != "bias"}
    out_shape = ARRAYS[case["expected"]].shape
    g = _grad_output(case, out_shape)
    with gpuconv.use_backend(backend):
        got = _gradients(op, args, arrays, other, g, rounded)
    with gpuconv.use_backend("numpy"):
        ref = _gradients(op, args, arrays, other, g, lambda a: as64(rounded(a)))
        magnitude = _gradients(op, args, arrays, other, g,
                               lambda a: as64(rounded(a), True), absolute=True)
        once = _gradients(op, args, arrays, other, g, lambda a: as32(rounded(a)))
    lengths = _grad_lengths(op, args, out_shape)
    assert set(got) == set(ref)
    prefix = "" if backend == "numpy" else f"{backend}-"
    for name, value in got.items():
        assert value.dtype == BF16, name
        if backend == "numpy":
            np.testing.assert_array_equal(value.view(np.uint16), once[name].astype(BF16).view(
                np.uint16), err_msg=f"{case['id']} {name}: not float32 rounded once")
        if name == "offset":
            scale = np.linalg.norm(ref[name]) or 1.0
            assert np.linalg.norm(value.astype(np.float64) - ref[name]) / scale <= U_BF16
            continue
        check_bound(f"{prefix}{case['id']}-{name}", value, ref[name], magnitude[name],
                    lengths[name])


def test_separable_gradients_bf16():
    """grad.separable_conv in bfloat16: every gradient bfloat16, close to float64 in norm."""
    args, _, other = _split(next(c for c in CASES if c["op"] == "separable_conv"))
    x, dw, pw = (rounded(a) for a in args[:3])
    g = rounded(np.random.default_rng(3).standard_normal((2, 1, 9, 7)))
    with gpuconv.use_backend("numpy"):
        got = grad.separable_conv(x, dw, pw, g, bias=True, **other)
        ref = grad.separable_conv(*(as64(a) for a in (x, dw, pw, g)), bias=True, **other)
    for name, value in got._asdict().items():
        assert value.dtype == BF16, name
        expected = getattr(ref, name)
        err = np.linalg.norm(value.astype(np.float64) - expected) / np.linalg.norm(expected)
        assert err <= 2 * U_BF16, (name, err)


# ------------------------------------------------------------------ identities


def _ulp_close(a, b):
    """``a`` and ``b`` (bfloat16) differ by at most one bfloat16 ulp (float32 sums in
    different orders may round to neighbours), and mostly not at all."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(a64), np.abs(b64)) + 1e-300)) - 7)
    assert np.all(np.abs(a64 - b64) <= ulp)
    assert np.mean(a64 == b64) >= 0.9


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_depthwise_is_grouped_conv_bf16(ndim):
    rng = np.random.default_rng(ndim)
    c, mult = 3, 2
    x = rounded(rng.standard_normal((2, c) + (7,) * ndim))
    w = rounded(rng.standard_normal((c * mult, 1) + (3,) * ndim))
    b = rounded(rng.standard_normal(c * mult))
    kw = {"stride": 2, "padding": 1, "dilation": 1}
    with gpuconv.use_backend("numpy"):
        depthwise = gpuconv.depthwise_conv(x, w, b, padding_mode="reflect", **kw)
        grouped = gpuconv.conv(x, w, b, groups=c, padding_mode="reflect", **kw)
        g = rounded(rng.standard_normal(depthwise.shape))
        _ulp_close(grad.depthwise_conv_input(x.shape, w, g, **kw),
                   grad.conv_input(x.shape, w, g, groups=c, **kw))
        _ulp_close(grad.depthwise_conv_weight(x, w.shape, g, **kw),
                   grad.conv_weight(x, w.shape, g, groups=c, **kw))
    assert depthwise.dtype == grouped.dtype == BF16
    _ulp_close(depthwise, grouped)


def test_conv_transpose_is_conv_input_grad_bf16():
    rng = np.random.default_rng(7)
    x = rounded(rng.standard_normal((2, 4, 6, 5)))
    w = rounded(rng.standard_normal((4, 3, 3, 2)))
    with gpuconv.use_backend("numpy"):
        y = gpuconv.conv_transpose(x, w, stride=2, padding=1)
        z = grad.conv_input(y.shape, w, x, stride=2, padding=1)
    _ulp_close(y, z)


# ------------------------------------------------------------------ promotion


FLOATS = [BF16, np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)]


def expected_dtype(*dtypes):
    """gpuconv's rule, written out: all bfloat16 -> bfloat16; any float64 -> float64; any
    float32, or bfloat16 with float16 -> float32; all float16 -> float16."""
    dtypes = [np.dtype(d) for d in dtypes]
    if all(d == BF16 for d in dtypes):
        return BF16
    if np.dtype(np.float64) in dtypes:
        return np.dtype(np.float64)
    if np.dtype(np.float32) in dtypes or BF16 in dtypes:
        return np.dtype(np.float32)
    return np.dtype(np.float16)


def test_result_type_table():
    f16, f32, f64 = (np.dtype(t) for t in (np.float16, np.float32, np.float64))
    assert _dtypes.result_type(BF16) == BF16
    assert _dtypes.result_type(BF16, BF16) == BF16
    assert _dtypes.result_type(BF16, f16) == f32  # NumPy: no common dtype
    assert _dtypes.result_type(f16, BF16, f16) == f32
    assert _dtypes.result_type(BF16, f32) == f32
    assert _dtypes.result_type(BF16, f64) == f64
    assert _dtypes.result_type(f16, f16) == f16
    with pytest.raises(TypeError, match="no common DType"):
        np.result_type(BF16, f16)  # NumPy's DTypePromotionError: gpuconv decides otherwise
    assert _dtypes.accumulation_dtype(BF16) == f32


SMALL = settings(max_examples=40, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


@SMALL
@given(dtypes=st.lists(st.sampled_from(FLOATS), min_size=3, max_size=3),
       with_bias=st.booleans(),
       op=st.sampled_from(["conv", "depthwise_conv", "conv_transpose"]),
       size=st.lists(st.integers(3, 7), min_size=1, max_size=3),
       stride=st.integers(1, 2), padding=st.integers(0, 1), seed=st.integers(0, 2**16))
def test_mixed_dtypes_forward(dtypes, with_bias, op, size, stride, padding, seed):
    """Mixed bf16/f16/f32/f64 in one call, over shapes and strides: the result dtype follows
    the rule, and the values are those of the call with every array converted to it (bit for
    bit)."""
    rng = np.random.default_rng(seed)
    nd = len(size)
    x = rng.standard_normal((1, 2, *size)).astype(dtypes[0])
    kernel = tuple(int(k) for k in rng.integers(1, 4, nd))
    w_shape = {"conv": (4, 2), "depthwise_conv": (4, 1), "conv_transpose": (2, 3)}[op] + kernel
    w = rng.standard_normal(w_shape).astype(dtypes[1])
    channels = 3 if op == "conv_transpose" else 4
    b = rng.standard_normal(channels).astype(dtypes[2]) if with_bias else None
    used = dtypes if with_bias else dtypes[:2]
    want = expected_dtype(*used)
    func = getattr(gpuconv, op)
    kw = {"stride": stride, "padding": padding}
    with gpuconv.use_backend("numpy"):
        got = func(x, w, b, **kw)
        same = func(x.astype(want), w.astype(want), None if b is None else b.astype(want), **kw)
    assert got.dtype == want
    np.testing.assert_array_equal(got.view(np.uint8), same.view(np.uint8))


@SMALL
@given(dtypes=st.lists(st.sampled_from(FLOATS), min_size=2, max_size=2),
       which=st.sampled_from(["input", "weight"]))
def test_mixed_dtypes_gradients(dtypes, which):
    rng = np.random.default_rng(1)
    g = rng.standard_normal((1, 4, 6, 5)).astype(dtypes[1])
    want = expected_dtype(*dtypes)
    with gpuconv.use_backend("numpy"):
        if which == "input":
            w = rng.standard_normal((4, 2, 3, 3)).astype(dtypes[0])
            got = grad.conv_input((1, 2, 6, 5), w, g, padding=1)
            same = grad.conv_input((1, 2, 6, 5), w.astype(want), g.astype(want), padding=1)
        else:
            x = rng.standard_normal((1, 2, 6, 5)).astype(dtypes[0])
            got = grad.conv_weight(x, (4, 2, 3, 3), g, padding=1)
            same = grad.conv_weight(x.astype(want), (4, 2, 3, 3), g.astype(want), padding=1)
    assert got.dtype == want
    np.testing.assert_array_equal(got.view(np.uint8), same.view(np.uint8))


@SMALL
@given(dtypes=st.lists(st.sampled_from(FLOATS), min_size=4, max_size=4))
def test_mixed_dtypes_deform(dtypes):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 5, 5)).astype(dtypes[0])
    offset = (rng.standard_normal((1, 8, 4, 4)) * 0.7).astype(dtypes[1])
    w = rng.standard_normal((3, 2, 2, 2)).astype(dtypes[2])
    mask = rng.random((1, 4, 4, 4)).astype(dtypes[3])
    want = expected_dtype(*dtypes)
    with gpuconv.use_backend("numpy"):
        got = gpuconv.deform_conv2d(x, offset, w, mask=mask)
        same = gpuconv.deform_conv2d(*(a.astype(want) for a in (x, offset, w)),
                                     mask=mask.astype(want))
    assert got.dtype == want
    np.testing.assert_array_equal(got.view(np.uint8), same.view(np.uint8))


@pytest.mark.parametrize("other", [np.float16, np.float32, np.float64, np.int64, np.complex64])
def test_convolve_mixed_with_bf16(other):
    """convolve/correlate: one bfloat16 sequence with another dtype computes as float32 with
    it (NumPy's rules from there); two bfloat16 sequences give bfloat16."""
    rng = np.random.default_rng(4)
    a = rounded(rng.standard_normal(40))
    v = (rng.standard_normal(9) * 3).astype(other)
    for func in (gpuconv.convolve, gpuconv.correlate):
        got = func(a, v, "same")
        same = func(a.astype(np.float32), v, "same")
        assert got.dtype == np.result_type(np.float32, other)
        np.testing.assert_array_equal(got, same)
    both = gpuconv.convolve(a, rounded(v.real), "full")
    assert both.dtype == BF16


def test_out_argument_bf16():
    rng = np.random.default_rng(5)
    x, w = rounded(rng.standard_normal((1, 2, 5, 5))), rounded(rng.standard_normal((3, 2, 3, 3)))
    out = np.empty((1, 3, 3, 3), dtype=BF16)
    assert gpuconv.conv(x, w, out=out) is out
    np.testing.assert_array_equal(out.view(np.uint16), gpuconv.conv(x, w).view(np.uint16))
    with pytest.raises(ValueError, match="out has dtype float32; expected bfloat16"):
        gpuconv.conv(x, w, out=np.empty((1, 3, 3, 3), np.float32))


def test_dask_bf16():
    """gpuconv.dask over bfloat16 chunks: bit for bit the in-memory result."""
    da = pytest.importorskip("dask.array")
    import gpuconv.dask as gd

    rng = np.random.default_rng(8)
    x = rounded(rng.standard_normal((2, 4, 12, 12)))
    w = rounded(rng.standard_normal((6, 4, 3, 3)))
    chunked = da.from_array(x, chunks=(1, 4, 5, 7))
    with gpuconv.use_backend("numpy"):
        got = gd.conv(chunked, w, padding=1, padding_mode="reflect").compute()
        expected = gpuconv.conv(x, w, padding=1, padding_mode="reflect")
    assert got.dtype == BF16
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


def test_pointwise_and_large_bf16():
    """The 1x1 path (a plain matmul) and a many-chunk conv also round once from float32."""
    rng = np.random.default_rng(9)
    x = rounded(rng.standard_normal((3, 64, 20, 20)))
    for w in (rounded(rng.standard_normal((32, 64, 1, 1))),
              rounded(rng.standard_normal((32, 64, 3, 3)))):
        with gpuconv.use_backend("numpy"):
            got = gpuconv.conv(x, w)
            once = gpuconv.conv(as32(x), as32(w)).astype(BF16)
        np.testing.assert_array_equal(got.view(np.uint16), once.view(np.uint16))


# ------------------------------------------------------- device backends, extra


def _emulate_available():
    return gpuconv.available_backends()["emulate"] == "available"


needs_emulate = pytest.mark.skipif(not _emulate_available(),
                                   reason="emulate backend unavailable")

#: The golden cases run on emulate (the CUDA kernels' bfloat16 instantiations on the CPU): one
#: per operation and code path, to keep the emulate time small -- 1-D/2-D/3-D conv through
#: conv_tiled and conv_direct, the 1x1 GEMM and a grouped case, every padding mode, depthwise,
#: separable, transposed (1-D, 3-D), deformable with and without a mask, convolve/correlate.
#: Every bfloat16 instantiation is also launched by test_every_bf16_instantiation_on_emulate.
EMULATE_CASES = ["conv3d-000", "conv2d-004", "conv1d-005", "conv2d-006", "conv2d-009",
                 "conv3d-025", "conv1d-032", "depthwise3d-010", "depthwise1d-035",
                 "separable2d-012", "conv_transpose1d-013", "conv_transpose3d-016",
                 "deform_conv2d-018", "deform_conv2d-019", "convolve-022", "correlate-023"]


def _by_id(ids):
    found = [c for c in CASES if c["id"] in ids]
    assert len(found) == len(ids), set(ids) - {c["id"] for c in found}
    return found


@needs_emulate
@pytest.mark.parametrize("case", _by_id(EMULATE_CASES), ids=EMULATE_CASES)
def test_golden_forward_bf16_emulate(case):
    """Golden cases in bfloat16 on emulate: within the same bound of float64 on the rounded
    inputs (the kernels and GEMMs sum in float32, in their own order, and round once)."""
    op = case["op"]
    args, arrays, other = _split(case)
    with gpuconv.use_backend("emulate"):
        got = _call(op, args, arrays, other, rounded)
    assert got.dtype == BF16 and got.shape == ARRAYS[case["expected"]].shape
    name = f"emulate-{case['id']}"
    if op == "separable_conv":
        ref, bound = _separable_bound(args, other)
        err = np.abs(got.astype(np.float64) - ref)
        assert np.all(err <= bound)
        RATIOS[name] = float(np.max(err / np.where(bound > 0, bound, 1)))
        return
    ref, magnitude = _forward_reference(op, args, arrays, other)
    check_bound(name, got, ref, magnitude, _reduction_length(op, args))


EMULATE_GRAD_CASES = [c for c in EMULATE_CASES
                      if c.split("-")[0].rstrip("123d") in ("conv", "conv_transpose",
                                                             "depthwise", "deform_conv")]


@needs_emulate
@pytest.mark.parametrize("case", _by_id(EMULATE_GRAD_CASES), ids=EMULATE_GRAD_CASES)
def test_golden_gradients_bf16_emulate(case):
    """The gradients of those cases in bfloat16 on emulate, within the bound (the offset
    gradient of deform_conv2d: in norm)."""
    _check_golden_gradients(case, "emulate")


ALL_MODES = ("zeros", "reflect", "replicate", "circular")
TRANSPOSE_PLANS = [(1, False), (1, True), (4, False), (4, True)]


def _every_bf16_kernel(emulate, modes=ALL_MODES, indexes=(np.int32, np.int64),
                       plans=TRANSPOSE_PLANS):
    """Launch the bfloat16 kernels through the device modules' test hooks (method, index type,
    splits, transposed-conv plan), each result within the bound of float64 on the rounded
    inputs; returns the name expressions launched. With the defaults: every instantiation."""
    from gpuconv._shapes import conv_geometry, conv_transpose_geometry
    from gpuconv.backends.device import _conv, _conv_transpose
    from gpuconv.backends.numpy_backend import NumpyBackend

    numpy_backend = NumpyBackend()
    launched = []
    launch = emulate.executor.launch

    def record(kernel, **kwargs):
        launched.append(kernel.name)
        return launch(kernel, **kwargs)

    emulate.executor.launch = record
    rng = np.random.default_rng(15)

    def arrays(*shapes):
        return [rounded(rng.standard_normal(s)) for s in shapes]

    def check(name, got, method, *inputs, k):
        *values, geom = inputs
        wide = [as64(a) for a in values]
        ref = getattr(numpy_backend, method)(*wide, geom)
        mag = getattr(numpy_backend, method)(*[None if a is None else np.abs(a) for a in wide],
                                             geom)
        check_bound(name, got, ref, mag, k)

    try:
        for mode in modes:
            geom = conv_geometry((6, 5), (3, 2), stride=1, padding=((1, 1), (1, 0)),
                                 dilation=(1, 2), groups=2, padding_mode=mode)
            x, w, b = arrays((2, 4, 6, 5), (6, 2, 3, 2), (6,))
            g = arrays((2, 6, *geom.out_size))[0]
            dgeom = conv_geometry((6, 5), (3, 2), stride=1, padding=((1, 1), (1, 0)),
                                  dilation=1, groups=4, padding_mode=mode)
            dw = arrays((8, 1, 3, 2))[0]
            dg = arrays((2, 8, *dgeom.out_size))[0]
            for index in indexes:
                for method in ("tiled", "direct"):
                    got = _conv.conv(emulate, x, w, b, geom, method=method, index=index)
                    check(f"kernels-conv-{mode}", got, "conv", x, w, b, geom, k=2 * 6 + 1)
                got = _conv.depthwise_conv(emulate, x, dw, None, dgeom, method="tiled",
                                           index=index)
                check(f"kernels-depthwise-{mode}", got, "depthwise_conv", x, dw, None, dgeom,
                      k=6)
                for deterministic in (False, True):
                    got = _conv.conv_weight_grad(emulate, x, g, geom, deterministic,
                                                 method="gemm", splits=2, index=index)
                    check(f"kernels-wgrad-{mode}", got, "conv_weight_grad", x, g, geom,
                          k=g[0, 0].size * 2)
                    got = _conv.conv_weight_grad(emulate, x, dg, dgeom, deterministic,
                                                 method="depthwise", splits=2, index=index)
                    check(f"kernels-dwgrad-{mode}", got, "conv_weight_grad", x, dg, dgeom,
                          k=dg[0, 0].size * 2)
        tgeom = conv_transpose_geometry((3, 4, 2), (2, 3, 2), stride=(2, 1, 2),
                                        padding=((1, 0), (0, 1), (0, 0)),
                                        output_padding=(1, 0, 0), dilation=1, groups=2)
        x, w, b = arrays((2, 4, 3, 4, 2), (4, 3, 2, 3, 2), (6,))
        for index in indexes:
            for cout_per_thread, stage_weights in plans:
                got = _conv_transpose.conv_transpose(
                    emulate, x, w, b, tgeom, index=index, cout_per_thread=cout_per_thread,
                    stage_weights=stage_weights)
                check("kernels-transpose", got, "conv_transpose", x, w, b, tgeom,
                      k=2 * 12 + 1)
    finally:
        emulate.executor.launch = launch
    return launched


def _bf16_instantiations():
    from gpuconv import _kernels

    return {name for family in _kernels.FAMILIES.values() if "bfloat16" in family.dtypes
            for name in family.instantiations() if "__nv_bfloat16" in name}


@needs_emulate
def test_every_bf16_instantiation_on_emulate(emulate):
    """Every registered bfloat16 instantiation runs (each padding mode, index type,
    deterministic or atomic weight gradient, transposed-conv plan), within the bound."""
    launched = set(_every_bf16_kernel(emulate))
    missing = _bf16_instantiations() - launched
    assert not missing, sorted(missing)


@needs_emulate
def test_bf16_kernels_under_emulator_check(emulate, emulator_check):
    """race_check() (thread/block orders permuted, stale shared memory, the weight gradients'
    float atomics reordered): every bfloat16 instantiation, within the bound. checked() (guard
    pages: no access outside an array; a subprocess per launch, about 0.8 s each): every
    kernel template once -- one padding mode, the int index, two transposed-conv plans -- as
    the other instantiations differ only in index arithmetic and pad lookups."""
    with emulator_check():
        if emulator_check.name == "race_check":
            launched = set(_every_bf16_kernel(emulate))
            assert launched >= _bf16_instantiations()
            return
        launched = set(_every_bf16_kernel(emulate, modes=("reflect",), indexes=(np.int32,),
                                          plans=[(1, False), (4, True)]))
    templates = {name.split("<")[0] for name in launched}
    assert templates == {name.split("<")[0] for name in _bf16_instantiations()}


def test_bf16_instantiations_are_the_float16_ones_less_the_float32_paths():
    """bfloat16 has a kernel wherever float16 has one, except deform_im2col and pad_fold:
    bfloat16 deformable convolution and the padded input gradient's fold run in float32
    (rounding bfloat16 columns or padded cells would leave the documented bound)."""
    from gpuconv import _kernels

    f16 = {t for t, f in _kernels.FAMILIES.items() if "float16" in f.dtypes}
    bf16 = {t for t, f in _kernels.FAMILIES.items() if "bfloat16" in f.dtypes}
    assert f16 - bf16 == {"deform_im2col", "pad_fold"}
    assert bf16 <= f16
    assert _kernels.signature("conv_grad.cu", "conv_weight_grad<__nv_bfloat16, int, 0, true>")[
        :3] == ("const ptr:bf16", "const ptr:bf16", "ptr:f32")


@needs_emulate
def test_emulate_backend_computes_bf16(emulate):
    """The device backend lists bfloat16 among its dtypes, so _validate lets it through."""
    assert BF16 in emulate.dtypes and np.dtype(np.float16) in emulate.dtypes


def test_cuda_lists_bf16_only_with_a_cupy_that_has_it():
    """The cuda backend's ``dtypes`` has bfloat16 only where CuPy makes bfloat16 arrays (CuPy
    14); an older CuPy refuses the dtype, and then _validate refuses bfloat16 calls up front."""
    from gpuconv.backends.device import _executor

    class OldCupy:
        @staticmethod
        def empty(shape, dtype):
            raise TypeError("Unsupported dtype bfloat16")

    class NewCupy:
        empty = staticmethod(np.empty)

    assert not _executor._cupy_has_bfloat16(OldCupy)
    assert _executor._cupy_has_bfloat16(NewCupy)


def test_bf16_mixed_with_float32_is_float32_on_every_backend_check():
    """A bfloat16 array mixed with float32 computes as float32, so the backend check (which
    sees the result dtype) lets it through; only an all-bfloat16 call needs bfloat16."""
    from gpuconv import _validate

    class NoBf16:
        name = "fake"

    call = type("C", (), {"backend": NoBf16(), "name": "fake"})()
    _validate.check_backend_dtype("conv", call, np.dtype(np.float32))
    with pytest.raises(TypeError, match="'fake' backend has no bfloat16 kernels"):
        _validate.check_backend_dtype("conv", call, BF16)


def test_missing_ml_dtypes_names_the_extra(monkeypatch):
    monkeypatch.setattr(_dtypes, "BFLOAT16", None)
    with pytest.raises(ImportError, match=r"conv: bfloat16 needs .*gpuconv\[bf16\]"):
        _dtypes.require_bfloat16("conv")
    assert not _dtypes.is_bfloat16(BF16)
    assert _dtypes.accumulation_dtype(np.float16) == np.float32


def test_import_without_ml_dtypes():
    """Without ml_dtypes gpuconv imports and computes float16/32/64; bfloat16 is simply not
    among the accepted dtypes (no array of it can exist)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['ml_dtypes'] = None\n"
            "import numpy as np, gpuconv\n"
            "from gpuconv import _dtypes, _validate\n"
            "assert _dtypes.BFLOAT16 is None and 'bf16' not in _dtypes.TYPE_CODES\n"
            "assert len(_validate.CONV_DTYPES) == 3\n"
            "assert gpuconv.conv(np.ones((1, 1, 4), np.float16), np.ones((1, 1, 2))).dtype "
            "== np.float64\n"
            "try:\n    _dtypes.require_bfloat16('x')\nexcept ImportError as e:\n"
            "    assert 'gpuconv[bf16]' in str(e)\nelse:\n    raise AssertionError\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_int_message_mentions_bfloat16():
    with pytest.raises(TypeError, match=r"expected float16, float32 or float64 \(or bfloat16"):
        gpuconv.conv(np.ones((1, 1, 3), np.int32), np.ones((1, 1, 1)))


def test_bound_ratios_report(capsys):
    """Not a check: prints the largest error/bound ratios of this run (pytest -s)."""
    if RATIOS:
        worst = sorted(RATIOS.items(), key=lambda kv: -kv[1])[:5]
        print("bf16 error / bound, largest:", ", ".join(f"{k} {v:.3f}" for k, v in worst))
        device = {k: v for k, v in RATIOS.items() if k.startswith(("emulate-", "kernels-"))}
        if device:
            name = max(device, key=device.get)
            print(f"bf16 error / bound on emulate, largest: {name} {device[name]:.3f} "
                  f"({len(device)} results)")
