"""Every golden case (computed by PyTorch, torchvision and NumPy) on every backend and dtype."""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv

# relative error ||got - expected|| / ||expected|| allowed per dtype
TOLERANCE = {np.float64: 1e-11, np.float32: 2e-5, np.float16: 5e-3}


def _kwargs(case, arrays, convert):
    out = {}
    for key, value in case["kwargs"].items():
        if isinstance(value, dict) and "array" in value:
            value = convert(arrays[value["array"]])
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        out[key] = value
    return out


def _cases():
    import json
    import pathlib

    meta = json.loads((pathlib.Path(__file__).parent / "data" / "cases.json").read_text())
    return meta["cases"]


CONV_OPS = {"conv", "conv_transpose", "depthwise_conv", "separable_conv", "deform_conv2d"}


def _params():
    """conv-family cases in float64, float32 and float16; convolve/correlate as stored."""
    for case in _cases():
        dtypes = (np.float64, np.float32, np.float16) if case["op"] in CONV_OPS else (None,)
        for dtype in dtypes:
            name = dtype.__name__ if dtype else "stored"
            yield pytest.param(case, dtype, id=f"{case['id']}-{name}")


@pytest.mark.parametrize(("case", "dtype"), list(_params()))
def test_golden_case(case, dtype, backend, golden):
    _, arrays = golden
    expected = arrays[case["expected"]]

    def cast(a):
        return a if dtype is None else a.astype(dtype)

    args = [backend.asarray(cast(arrays[k])) for k in case["args"]]
    kwargs = _kwargs(case, arrays, lambda a: backend.asarray(cast(a)))
    func = getattr(gpuconv, case["op"])
    with backend.active():
        got = func(*args, **kwargs)
    got = backend.asnumpy(got)
    assert got.shape == expected.shape
    if case["op"] in CONV_OPS:
        assert got.dtype == np.dtype(dtype)
        assert got.flags.c_contiguous
    if dtype is np.float16 and case["op"] in CONV_OPS:
        # The float16 result is float32 math on float16-rounded inputs, rounded once:
        # compare with the float64 reference on those same rounded inputs.
        with gpuconv.use_backend("numpy"):
            ref_args = [cast(arrays[k]).astype(np.float64) for k in case["args"]]
            ref_kwargs = _kwargs(case, arrays, lambda a: cast(a).astype(np.float64))
            expected_ref = func(*ref_args, **ref_kwargs)
        _assert_rel(got, expected_ref, TOLERANCE[dtype])
        # and the rounded-input answer is itself close to the true one
        _assert_rel(got, expected, 5e-2)
    else:
        _assert_rel(got, expected, TOLERANCE.get(dtype, 1e-11))
        if case["op"] in ("convolve", "correlate"):
            assert got.dtype == expected.dtype


def _assert_rel(got, expected, tol):
    got = got.astype(np.complex128 if np.iscomplexobj(got) else np.float64)
    scale = np.linalg.norm(expected)
    err = np.linalg.norm(got - expected) / (scale if scale else 1.0)
    assert err <= tol, f"relative error {err:.3g} > {tol:.1g}"
