"""Identities every correct implementation satisfies, on random shapes and parameters.

Each test body runs on every backend (``backend`` fixture); the NumPy backend is the reference
where a second computation is needed. Hypothesis draws the shapes; the example counts are
kept small so the emulator runs stay quick.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuconv

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _run(backend, func, *arrays, **kwargs):
    """Call ``func`` on ``backend`` with NumPy inputs; NumPy result back."""
    converted = [None if a is None else backend.asarray(a) for a in arrays]
    kwargs = {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    with backend.active():
        result = func(*converted, **kwargs)
    return backend.asnumpy(result)


@st.composite
def conv_setups(draw, max_ndim=3, same_multiple=False):
    """A random conv problem: shapes, stride, dilation, groups and a padding spec."""
    nd = draw(st.integers(1, max_ndim))
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    kind = draw(st.sampled_from(["int", "pairs", "same", "valid"]))
    size = []
    for k, s, d in zip(kernel, stride, dilation):
        low = d * (k - 1) + 1
        n = draw(st.integers(low, low + 5))
        if kind == "same" and same_multiple:
            n = s * draw(st.integers(1, 4))
        size.append(n)
    if kind == "int":
        padding = draw(st.integers(0, 2))
    elif kind == "pairs":
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nd))
    else:
        padding = kind
    batch = draw(st.integers(1, 2))
    return dict(nd=nd, groups=groups, c_in=c_in, c_out=c_out, kernel=kernel, stride=stride,
                dilation=dilation, padding=padding, size=tuple(size), batch=batch)


def _pad_pairs(setup):
    """(lo, hi) per dim for the setup's padding, using gpuconv's own shape math."""
    from gpuconv._shapes import parse_padding

    return parse_padding(setup["padding"], setup["nd"], setup["size"], setup["kernel"],
                         setup["stride"], setup["dilation"])


@SETTINGS
@given(setup=conv_setups(same_multiple=True), seed=st.integers(0, 2**31 - 1))
def test_adjoint_identity(backend, setup, seed):
    """<conv(x, w), y> == <x, conv_transpose(y, w)> in float64, for every padding form."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((setup["batch"], setup["c_in"], *setup["size"]))
    w = rng.standard_normal((setup["c_out"], setup["c_in"] // setup["groups"], *setup["kernel"]))
    common = dict(stride=setup["stride"], dilation=setup["dilation"], groups=setup["groups"])
    y_shape = gpuconv.conv(x, w, padding=setup["padding"], **common).shape
    y = rng.standard_normal(y_shape)
    lhs = np.vdot(_run(backend, gpuconv.conv, x, w, padding=setup["padding"], **common), y)
    if setup["padding"] == "same":
        transpose_kwargs = dict(padding="same")
    else:
        lo, hi = _pad_pairs(setup)
        full = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in
                zip(y_shape[2:], setup["stride"], setup["dilation"], setup["kernel"])]
        extra = tuple(n + a + b - f for n, a, b, f in zip(setup["size"], lo, hi, full))
        transpose_kwargs = dict(padding=tuple(zip(lo, hi)), output_padding=extra)
    xt = _run(backend, gpuconv.conv_transpose, y, w, **common, **transpose_kwargs)
    assert xt.shape == x.shape
    rhs = np.vdot(x, xt)
    assert np.isclose(lhs, rhs, rtol=1e-10, atol=1e-10 * np.abs(lhs).max(initial=1.0))


@SETTINGS
@given(setup=conv_setups(), multiplier=st.integers(1, 3), seed=st.integers(0, 2**31 - 1),
       mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
def test_depthwise_equals_grouped_conv(backend, setup, multiplier, seed, mode):
    rng = np.random.default_rng(seed)
    c = setup["c_in"]
    x = rng.standard_normal((setup["batch"], c, *setup["size"]))
    w = rng.standard_normal((c * multiplier, 1, *setup["kernel"]))
    b = rng.standard_normal(c * multiplier)
    padding = setup["padding"]
    if mode != "zeros":
        padding = 1 if min(setup["size"]) > 1 else 0
    kw = dict(stride=setup["stride"], padding=padding, dilation=setup["dilation"],
              padding_mode=mode)
    got = _run(backend, gpuconv.depthwise_conv, x, w, b, **kw)
    with gpuconv.use_backend("numpy"):
        expected = gpuconv.conv(x, w, b, groups=c, **kw)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(setup=conv_setups(max_ndim=2), c_out=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_separable_equals_two_steps(backend, setup, c_out, seed):
    rng = np.random.default_rng(seed)
    c = setup["c_in"]
    nd = setup["nd"]
    x = rng.standard_normal((setup["batch"], c, *setup["size"]))
    dw = rng.standard_normal((2 * c, 1, *setup["kernel"]))
    pw = rng.standard_normal((c_out, 2 * c) + (1,) * nd)
    b = rng.standard_normal(c_out)
    kw = dict(stride=setup["stride"], padding=setup["padding"], dilation=setup["dilation"])
    got = _run(backend, gpuconv.separable_conv, x, dw, pw, b, **kw)
    with gpuconv.use_backend("numpy"):
        mid = gpuconv.depthwise_conv(x, dw, **kw)
        expected = gpuconv.conv(mid, pw, b)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@st.composite
def deform_setups(draw):
    groups = draw(st.integers(1, 2))
    offset_groups = draw(st.integers(1, 2))
    unit = groups * offset_groups // np.gcd(groups, offset_groups)
    c_in = unit * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    size = tuple(draw(st.integers(d * (k - 1) + 1, d * (k - 1) + 6))
                 for k, d in zip(kernel, dilation))
    return dict(groups=groups, offset_groups=offset_groups, c_in=c_in, c_out=c_out,
                kernel=kernel, stride=stride, dilation=dilation, padding=padding, size=size,
                batch=draw(st.integers(1, 2)))


def _deform_arrays(setup, rng):
    kh, kw = setup["kernel"]
    x = rng.standard_normal((setup["batch"], setup["c_in"], *setup["size"]))
    w = rng.standard_normal((setup["c_out"], setup["c_in"] // setup["groups"], kh, kw))
    geom_kw = dict(stride=setup["stride"], padding=setup["padding"], dilation=setup["dilation"])
    out_size = gpuconv.conv2d(x, w, groups=setup["groups"], **geom_kw).shape[2:]
    taps = setup["offset_groups"] * kh * kw
    return x, w, geom_kw, out_size, taps


@SETTINGS
@given(setup=deform_setups(), seed=st.integers(0, 2**31 - 1))
def test_deform_zero_offsets_is_conv(backend, setup, seed):
    rng = np.random.default_rng(seed)
    x, w, kw, out_size, taps = _deform_arrays(setup, rng)
    b = rng.standard_normal(setup["c_out"])
    offset = np.zeros((setup["batch"], 2 * taps, *out_size))
    mask = np.ones((setup["batch"], taps, *out_size))
    got = _run(backend, gpuconv.deform_conv2d, x, offset, w, b, mask=mask, **kw)
    got_v1 = _run(backend, gpuconv.deform_conv2d, x, offset, w, b, **kw)
    with gpuconv.use_backend("numpy"):
        expected = gpuconv.conv2d(x, w, b, groups=setup["groups"], **kw)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_v1, expected, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(setup=deform_setups(), seed=st.integers(0, 2**31 - 1),
       dy=st.integers(-2, 2), dx=st.integers(-2, 2))
def test_deform_integer_offsets_shift_pixels(backend, setup, seed, dy, dx):
    """A constant integer offset (dy, dx) == conv2d of the image shifted, zero-filled."""
    rng = np.random.default_rng(seed)
    x, w, kw, out_size, taps = _deform_arrays(setup, rng)
    offset = np.zeros((setup["batch"], taps, 2, *out_size))
    offset[:, :, 0] = dy
    offset[:, :, 1] = dx
    offset = offset.reshape(setup["batch"], 2 * taps, *out_size)
    got = _run(backend, gpuconv.deform_conv2d, x, offset, w, **kw)
    # Pad first: a shifted tap may read a padding cell or pull an image pixel into one.
    ph, pw = setup["padding"]
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    h, wd = padded.shape[2:]
    shifted = np.zeros_like(padded)  # shifted[y, x] = padded[y + dy, x + dx], zero outside
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(wd, wd - dx))
    yd, xd = slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(wd, wd + dx))
    shifted[..., ys, xs] = padded[..., yd, xd]
    with gpuconv.use_backend("numpy"):
        expected = gpuconv.conv2d(shifted, w, groups=setup["groups"], stride=setup["stride"],
                                  dilation=setup["dilation"])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(setup=deform_setups(), seed=st.integers(0, 2**31 - 1),
       alpha=st.floats(-3, 3, allow_nan=False))
def test_deform_mask_scales_linearly(backend, setup, seed, alpha):
    rng = np.random.default_rng(seed)
    x, w, kw, out_size, taps = _deform_arrays(setup, rng)
    offset = rng.uniform(-2, 2, (setup["batch"], 2 * taps, *out_size))
    m1 = rng.uniform(0, 1, (setup["batch"], taps, *out_size))
    m2 = rng.uniform(0, 1, (setup["batch"], taps, *out_size))
    f = lambda m: _run(backend, gpuconv.deform_conv2d, x, offset, w, mask=m, **kw)  # noqa: E731
    np.testing.assert_allclose(f(alpha * m1 + m2), alpha * f(m1) + f(m2), rtol=1e-9, atol=1e-9)


DTYPES_1D = [np.int64, np.float32, np.float64, np.complex64, np.complex128]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 300), m=st.integers(1, 300), seed=st.integers(0, 2**31 - 1),
       mode=st.sampled_from(["full", "same", "valid"]), dtype=st.sampled_from(DTYPES_1D),
       func=st.sampled_from(["convolve", "correlate"]))
def test_convolve_correlate_match_numpy(backend, n, m, seed, mode, dtype, func):
    rng = np.random.default_rng(seed)

    def sample(size):
        if np.issubdtype(dtype, np.integer):
            return rng.integers(-50, 50, size).astype(dtype)
        a = rng.standard_normal(size)
        if np.issubdtype(dtype, np.complexfloating):
            a = a + 1j * rng.standard_normal(size)
        return a.astype(dtype)

    a, v = sample(n), sample(m)
    got = _run(backend, getattr(gpuconv, func), a, v, mode=mode)
    expected = getattr(np, func)(a, v, mode)
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    tol = {np.float32: 1e-4, np.complex64: 1e-4}.get(dtype, 1e-10)
    scale = np.abs(expected).max(initial=1.0)
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * scale)
