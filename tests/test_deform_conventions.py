"""deform_conv2d where bilinear sampling has no derivative or no value (issues 9 and 10).

* Integer sampling points (zero offsets, the way every deformable layer starts, and integer
  offsets): the forward and all four gradients on every backend equal a float64 loop written
  here from torchvision's definition (``csrc/ops/cpu/deform_conv2d_kernel.cpp``), one sampling
  point at a time, sharing nothing with the backends. The offset gradient there is the
  derivative from the right, so it also equals a one-sided finite difference. Where torchvision
  imports, its own autograd is compared too.
* NaN / +-inf / huge offsets: the point contributes nothing, exactly like a point outside the
  image, forward and gradients; the emulator (and so the GPU, same source) must not read out of
  bounds. Crash tests run in a subprocess and check its exit status, also in checked mode.
* NaN or inf in ``x`` or ``weight`` still propagates where torchvision propagates it.

The convention is documented in docs/kernels.md ("Deformable convolution at integer sampling
points").
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpuconv
from gpuconv import grad

# ------------------------------------------------------------------ the reference


def _out_size(size, k, stride, pad, dil):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def reference(x, offset, weight, mask, grad_output, stride, padding, dilation):
    """torchvision's deform_conv2d and its backward in float64, one sampling point at a time.

    Returns ``(out, grad_x, grad_offset, grad_weight, grad_mask)`` (no bias; ``grad_mask`` None
    without a mask), following torchvision's kernels:

    * ``bilinear_interpolate``: 0 unless ``-1 < y < H`` and ``-1 < x < W`` (comparisons, so NaN
      reads 0); else the four corners of ``floor``, a corner outside the image reading 0;
    * ``deformable_col2im`` (input gradient): cells ``yp = int(y) + {-1, 0, 1}`` (``int``
      truncates, as in C) inside the image with ``|y - yp| < 1`` and ``|x - xp| < 1`` get
      ``mask * (1 - |y - yp|) * (1 - |x - xp|) * grad_col``;
    * ``get_coordinate_weight`` (offset gradient): the derivative of the bilinear weights of
      the ``floor`` corners, corners outside reading 0, with *no* inside test;
    * mask gradient: ``sum_c grad_col * bilinear_interpolate``.

    torchvision leaves a non-finite point undefined (``int(floor(NaN))``); here, as documented
    for gpuconv, it touches no cell and its derivative is 0.
    """
    n, c_in, height, width = x.shape
    c_out, cg, kh, kw = weight.shape
    groups = c_in // cg
    taps = kh * kw
    ho, wo = offset.shape[2:]
    offset_groups = offset.shape[1] // (2 * taps)
    cpo = c_in // offset_groups
    per_group = c_out // groups
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    # grad_cols[b, c, i, j, oy, ox]: weight^T @ grad_output, channel c's group only
    grad_cols = np.empty((n, c_in, kh, kw, ho, wo))
    for c in range(c_in):
        rows = slice((c // cg) * per_group, (c // cg + 1) * per_group)
        grad_cols[:, c] = np.einsum("oij,boyx->bijyx", weight[rows, c % cg], grad_output[:, rows])
    cols = np.zeros((n, c_in, kh, kw, ho, wo))
    grad_x = np.zeros(x.shape)
    grad_offset = np.zeros(offset.shape)
    grad_mask = None if mask is None else np.zeros(mask.shape)
    zero = np.zeros(cpo)
    for b in range(n):
        for og in range(offset_groups):
            chans = slice(og * cpo, (og + 1) * cpo)
            img = x[b, chans]

            def v(cy, cx, img=img):
                return img[:, cy, cx] if 0 <= cy < height and 0 <= cx < width else zero

            for i in range(kh):
                for j in range(kw):
                    tap = og * taps + i * kw + j
                    for oy in range(ho):
                        for ox in range(wo):
                            y = (oy * sh - ph + i * dh) + float(offset[b, 2 * tap, oy, ox])
                            xx = (ox * sw - pw + j * dw) + float(offset[b, 2 * tap + 1, oy, ox])
                            m = 1.0 if mask is None else float(mask[b, tap, oy, ox])
                            gc = grad_cols[b, chans, i, j, oy, ox]
                            finite = math.isfinite(y) and math.isfinite(xx)
                            if finite:
                                yl, xl = math.floor(y), math.floor(xx)
                                ly, lx = y - yl, xx - xl
                                v1, v2 = v(yl, xl), v(yl, xl + 1)
                                v3, v4 = v(yl + 1, xl), v(yl + 1, xl + 1)
                            # bilinear_interpolate
                            if -1 < y < height and -1 < xx < width:
                                value = ((1 - ly) * (1 - lx) * v1 + (1 - ly) * lx * v2
                                         + ly * (1 - lx) * v3 + ly * lx * v4)
                            else:
                                value = zero
                            cols[b, chans, i, j, oy, ox] = m * value
                            if grad_mask is not None:
                                grad_mask[b, tap, oy, ox] = np.sum(gc * value)
                            # get_coordinate_weight
                            if finite:
                                d_dy = lx * (v4 - v2) + (1 - lx) * (v3 - v1)
                                d_dx = ly * (v4 - v3) + (1 - ly) * (v2 - v1)
                            else:
                                d_dy = d_dx = zero
                            grad_offset[b, 2 * tap, oy, ox] = m * np.sum(d_dy * gc)
                            grad_offset[b, 2 * tap + 1, oy, ox] = m * np.sum(d_dx * gc)
                            # deformable_col2im
                            if not finite:
                                continue
                            for yp in (int(y) - 1, int(y), int(y) + 1):
                                for xp in (int(xx) - 1, int(xx), int(xx) + 1):
                                    ay, ax = abs(y - yp), abs(xx - xp)
                                    if (0 <= yp < height and 0 <= xp < width
                                            and ay < 1 and ax < 1):
                                        grad_x[b, chans, yp, xp] += m * (1 - ay) * (1 - ax) * gc
    out = np.empty((n, c_out, ho, wo))
    grad_w = np.empty(weight.shape)
    for co in range(c_out):
        grp = slice((co // per_group) * cg, (co // per_group + 1) * cg)
        out[:, co] = np.einsum("cij,bcijyx->byx", weight[co], cols[:, grp])
        grad_w[co] = np.einsum("byx,bcijyx->cij", grad_output[:, co], cols[:, grp])
    return out, grad_x, grad_offset, grad_w, grad_mask


# ------------------------------------------------------------------ cases

#: (stride, padding, dilation): every mix of padding 0/1/2, stride 1/2, dilation 1/2, and
#: unequal pairs
GEOMETRIES = [((s, s), (p, p), (d, d)) for p in (0, 1, 2) for s in (1, 2) for d in (1, 2)] + [
    ((1, 2), (1, 0), (2, 1)),
    ((2, 1), (0, 2), (1, 2)),
    ((2, 2), (2, 1), (1, 1)),
]

#: (offsets, mask): zero offsets without a mask (torchvision's default layer), integer offsets
#: in [-3, 3] with a mask (samples on, next to and beyond every border)
KINDS = [("zero", False), ("integer", True)]


def _geometry_id(geometry):
    (sh, sw), (ph, pw), (dh, dw) = geometry
    return f"s{sh}{sw}-p{ph}{pw}-d{dh}{dw}"


@functools.cache
def _case(geometry, kind, with_mask):
    """Arrays (x, offset, weight, mask, grad_output) and the reference's answers: 2 images,
    groups 2, offset groups 2, a 3x3 kernel on a 5x6 image."""
    stride, padding, dilation = geometry
    rng = np.random.default_rng([sum(map(sum, geometry)), len(kind), int(with_mask)])
    x = rng.standard_normal((2, 4, 5, 6))
    weight = rng.standard_normal((4, 2, 3, 3))
    ho = _out_size(5, 3, stride[0], padding[0], dilation[0])
    wo = _out_size(6, 3, stride[1], padding[1], dilation[1])
    if kind == "zero":
        offset = np.zeros((2, 2 * 2 * 9, ho, wo))
    else:
        offset = rng.integers(-3, 4, (2, 2 * 2 * 9, ho, wo)).astype(np.float64)
    mask = rng.uniform(0.25, 1.0, (2, 2 * 9, ho, wo)) if with_mask else None
    grad_output = rng.standard_normal((2, 4, ho, wo))
    arrays = (x, offset, weight, mask, grad_output)
    return arrays, reference(*arrays, stride, padding, dilation)


@pytest.fixture(scope="module")
def emulator_probe():
    """The crash probe (CRASH_SCRIPT, default mode) run once in a subprocess: the in-process
    emulator tests with non-finite offsets run only when it survived, so a regression fails
    them instead of killing the whole test run."""
    return _crash_probe("default")


def _guard(backend, request):
    if backend.name == "emulate":
        proc = request.getfixturevalue("emulator_probe")
        if proc.returncode != 0:
            pytest.fail("the emulator crashes on non-finite offsets (exit status "
                        f"{proc.returncode}; test_nonfinite_offsets_do_not_crash_the_emulator): "
                        "not run in-process")


def _run(backend, x, offset, weight, mask, grad_output, **kwargs):
    """Forward and gradients on ``backend``, as NumPy arrays."""
    a = backend.asarray
    m = None if mask is None else a(mask)
    with backend.active():
        out = gpuconv.deform_conv2d(a(x), a(offset), a(weight), mask=m, **kwargs)
        grads = grad.deform_conv2d(a(x), a(offset), a(weight), a(grad_output), mask=m,
                                   bias=False, **kwargs)
    as_np = backend.asnumpy
    return (as_np(out), as_np(grads.input), as_np(grads.offset), as_np(grads.weight),
            None if grads.mask is None else as_np(grads.mask))


def _assert_close(got, want, name):
    finite = np.abs(want[np.isfinite(want)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * scale, err_msg=name)


NAMES = ("output", "input", "offset", "weight", "mask")


def _assert_all_close(got, want):
    """Output and gradients (``NAMES``) close; None (no mask) where the reference has None."""
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, name
        else:
            _assert_close(a, b, name)


# ------------------------------------------------------------------ integer sampling points


@pytest.mark.parametrize("kind, with_mask", KINDS, ids=[k for k, _ in KINDS])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
def test_integer_points_match_torchvision_definition(backend, geometry, kind, with_mask):
    arrays, want = _case(geometry, kind, with_mask)
    stride, padding, dilation = geometry
    got = _run(backend, *arrays, stride=stride, padding=padding, dilation=dilation)
    _assert_all_close(got, want)


def test_reference_offset_gradient_at_the_border_is_the_slope_into_the_image():
    """Hand-checked reference: a 1x1 kernel, padding 1, zero offsets on a 2x2 image. The output
    at (0, 1) samples (-1, 0): outside for the forward, but the row derivative is the slope from
    the zero row above into x[0, 0] (torchvision's one-sided convention)."""
    x = np.array([[[[1.0, 2.0], [4.0, 8.0]]]])
    w = np.ones((1, 1, 1, 1))
    offset = np.zeros((1, 2, 4, 4))
    g = np.ones((1, 1, 4, 4))
    out, _, g_off, _, _ = reference(x, offset, w, None, g, (1, 1), (1, 1), (1, 1))
    assert out[0, 0, 0, 1] == 0.0  # y = -1 is outside for the forward
    # rows: at y = -1 the cell is [-1, 0]: d/dy = x[0, ox - 1]; at y = 1 (last row) the cell
    # [1, 2] reaches below the image: d/dy = 0 - x[1, ox - 1]; at y = 2 nothing
    np.testing.assert_array_equal(g_off[0, 0, :, 1:3], [[1, 2], [3, 6], [-4, -8], [0, 0]])
    np.testing.assert_array_equal(g_off[0, 0, :, 0], [0, 0, 0, 0])  # x = -1: the row is zero
    np.testing.assert_array_equal(g_off[0, 1, 1:3, 0], [1, 4])  # x = -1: slope into x[:, 0]


@pytest.mark.parametrize("geometry", GEOMETRIES[:12:3] + GEOMETRIES[12:], ids=_geometry_id)
def test_offset_gradient_is_the_derivative_from_the_right(backend, geometry):
    """At integer points bilinear sampling is only one-sided differentiable. The convention is
    the derivative from the right, so for any direction d >= 0 the gradient's dot with d is the
    one-sided difference <g, f(offset + h d) - f(offset)> / h (bilinear in the step: the error
    is O(h))."""
    arrays, _ = _case(geometry, "integer", True)
    x, offset, weight, mask, g = arrays
    stride, padding, dilation = geometry
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation}
    got = _run(backend, *arrays, **kwargs)
    direction = np.random.default_rng(3).uniform(0.0, 1.0, offset.shape)
    h = 2.0**-24
    a = backend.asarray
    with backend.active():
        f0 = backend.asnumpy(gpuconv.deform_conv2d(a(x), a(offset), a(weight), mask=a(mask),
                                                   **kwargs))
        f1 = backend.asnumpy(gpuconv.deform_conv2d(a(x), a(offset + h * direction), a(weight),
                                                   mask=a(mask), **kwargs))
    one_sided = np.sum(g * (f1 - f0)) / h
    np.testing.assert_allclose(np.sum(got[2] * direction), one_sided, rtol=1e-5)


def _torchvision():
    """torchvision.ops, or skip (a wheel built for CUDA fails on a CPU-only torch with a
    RuntimeError, not an ImportError, so importorskip alone would error)."""
    if importlib.util.find_spec("torchvision") is None:  # before importing torch (slow)
        pytest.skip("torchvision is not installed")
    torch = pytest.importorskip("torch")
    try:
        from torchvision import ops
    except Exception as exc:  # noqa: BLE001 -- ImportError, or the extension failing to load
        pytest.skip(f"torchvision unusable: {type(exc).__name__}: {exc}")
    return torch, ops


@pytest.mark.parametrize("kind, with_mask", [("zero", False), ("integer", True)],
                         ids=["zero", "integer"])
@pytest.mark.parametrize("geometry", GEOMETRIES[::2], ids=_geometry_id)
def test_integer_points_match_torchvision_itself(backend, geometry, kind, with_mask):
    torch, ops = _torchvision()
    arrays, _ = _case(geometry, kind, with_mask)
    g = arrays[4]
    stride, padding, dilation = geometry
    t = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays[:4]]
    out = ops.deform_conv2d(t[0], t[1], t[2], stride=stride, padding=padding,
                            dilation=dilation, mask=t[3])
    out.backward(torch.tensor(g))
    want = [out.detach().numpy()] + [None if a is None else a.grad.numpy()
                                     for a in (t[0], t[1], t[2], t[3])]
    got = _run(backend, *arrays, stride=stride, padding=padding, dilation=dilation)
    _assert_all_close(got, want)


# ------------------------------------------------------------------ non-finite values

#: planted offset values: NaN and +-inf, and finite values too large for any index type
NONFINITE = [np.nan, np.inf, -np.inf, 1e30, -1e30]


def _planted(value):
    """A padded 3x3 case with offsets in (-2, 2) and ``value`` planted: in rows and columns,
    a whole tap's plane, and both coordinates of one point."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 4, 4, 5))
    weight = rng.standard_normal((2, 2, 3, 3))  # groups 2
    offset = rng.uniform(-2, 2, (2, 2 * 2 * 9, 4, 5))  # offset groups 2
    mask = rng.uniform(0.25, 1.0, (2, 2 * 9, 4, 5))
    g = rng.standard_normal((2, 2, 4, 5))
    offset[0, 0, 1, 2] = value  # y of tap 0, one point
    offset[1, 7, :, 3] = value  # x of tap 3, a column of points
    offset[0, 2 * 9 + 10] = value  # y of tap 5 in offset group 1, every point
    offset[1, 2 * 9 + 16, 2, 2] = offset[1, 2 * 9 + 17, 2, 2] = value  # both of tap 8
    return x, offset, weight, mask, g


@pytest.mark.parametrize("value", NONFINITE, ids=str)
def test_nonfinite_offset_is_a_point_outside_the_image(backend, value, request):
    """A NaN, +-inf or huge sampling point contributes nothing -- exactly (bitwise, but for the
    atomics' rounding in the input gradient) what a point far outside the image does -- and its
    own offset gradient is 0."""
    _guard(backend, request)
    x, offset, weight, mask, g = _planted(value)
    planted = np.isnan(offset) | (np.abs(offset) > 2)
    far = np.where(planted, 1000.0, offset)
    for m in (None, mask):
        got = _run(backend, x, offset, weight, m, g, padding=1)
        want = _run(backend, x, far, weight, m, g, padding=1)
        ref = reference(x, offset, weight, m, g, (1, 1), (1, 1), (1, 1))
        for name, a, b, r in zip(NAMES, got, want, ref):
            if r is None:
                assert a is None
                continue
            assert np.isfinite(a).all(), name
            if name == "input":  # a scatter with atomics: the order of additions varies
                _assert_close(a, b, name)
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)
            _assert_close(a, r, name)
        assert not got[2][planted].any()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan], ids=str)
def test_infinite_offset_reads_zero_hand_checked(backend, value, dtype, request):
    """Issue 10.5: a 1x1 kernel reads one point per output; moved to +-inf (or NaN) it lies
    outside the image and reads 0, so that output is the bias alone. Every dtype (float16
    samples in float32)."""
    _guard(backend, request)
    x = np.arange(1.0, 7.0, dtype=dtype).reshape(1, 1, 2, 3)
    w = np.ones((1, 1, 1, 1), dtype)
    offset = np.zeros((1, 2, 2, 3), dtype)
    offset[0, 1, 0, 1] = value  # the x coordinate of output (0, 1)
    a = backend.asarray
    with backend.active():
        bias = a(np.array([0.5], dtype))
        out = backend.asnumpy(gpuconv.deform_conv2d(a(x), a(offset), a(w), bias))
        grads = grad.deform_conv2d(a(x), a(offset), a(w), a(np.ones((1, 1, 2, 3), dtype)))
    np.testing.assert_array_equal(out, [[[[1.5, 0.5, 3.5], [4.5, 5.5, 6.5]]]])
    # nothing reads x[0, 1] any more; the moved point's offset gradient is 0
    np.testing.assert_array_equal(backend.asnumpy(grads.input), [[[[1, 0, 1], [1, 1, 1]]]])
    assert not backend.asnumpy(grads.offset)[0, :, 0, 1].any()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("where", ["x", "weight", "mask"])
def test_nan_and_inf_in_x_or_weight_propagate_like_torchvision(backend, where):
    """NaN/inf in the data is not hidden: each output, gradient cell and offset/mask gradient
    is NaN or inf exactly where torchvision's kernels make it so (a corner read with weight 0
    still multiplies, an input-gradient cell with weight 0 is skipped)."""
    geometry = ((1, 1), (1, 1), (1, 1))
    (x, offset, weight, mask, g), _ = _case(geometry, "integer", True)
    x, weight, mask = x.copy(), weight.copy(), mask.copy()
    if where == "x":
        x[0, 1, 2, 3] = np.nan
        x[1, 2, 0, 0] = np.inf
    elif where == "weight":
        weight[1, 0, 1, 1] = np.nan
        weight[2, 1, 0, 2] = -np.inf
    else:  # a sample inside the image, (0, 0), and one outside, (-4, -1): its column is still
        # NaN * 0. (An infinite mask is left out: whether inf or NaN comes out depends on the
        # order of the products, mask * sum_c vs sum_c mask * ..., not a convention.)
        mask[0, 4, 2, 2] = np.nan
        mask[1, 9, 0, 2] = np.nan
    got = _run(backend, x, offset, weight, mask, g, padding=1)
    want = reference(x, offset, weight, mask, g, *geometry)
    for name, a, b in zip(NAMES, got, want):
        assert not np.isfinite(b).all() or name in ("input", "weight", "mask"), name  # it bites
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        np.testing.assert_array_equal(np.isinf(a), np.isinf(b), err_msg=name)
        _assert_close(a, b, name)


#: forward and gradients on the emulator with NaN, +-inf and huge offsets; prints, per mode and
#: v1/v2, whether every result is finite
CRASH_SCRIPT = textwrap.dedent("""
    import contextlib, json, sys
    import numpy as np
    import gpuconv
    from gpuconv import _emulator, grad

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 4, 5))
    w = rng.standard_normal((2, 3, 3, 3))
    offset = rng.uniform(-1, 1, (1, 18, 4, 5))
    mask = rng.uniform(0, 1, (1, 9, 4, 5))
    g = rng.standard_normal((1, 2, 4, 5))
    offset[0, 0, :2] = np.nan
    offset[0, 3, 1] = np.inf
    offset[0, 6, 2:] = -np.inf
    offset[0, 9, 3] = 1e30
    offset[0, 11] = np.nan
    mode = sys.argv[1]
    results = {}
    with gpuconv.use_backend("emulate"):
        with _emulator.checked() if mode == "checked" else contextlib.nullcontext():
            # checked mode costs a subprocess per launch: v2 only (v1 differs by the mask read)
            variants = (("v1", None), ("v2", mask)) if mode == "default" else (("v2", mask),)
            for name, m in variants:
                out = gpuconv.deform_conv2d(x, offset, w, padding=1, mask=m)
                grads = grad.deform_conv2d(x, offset, w, g, padding=1, mask=m)
                arrays = [out] + [a for a in grads if a is not None]
                results[name] = all(bool(np.isfinite(a).all()) for a in arrays)
    print(json.dumps(results))
""")


def _crash_probe(mode):
    env = {**os.environ, "GPUCONV_QUIET": "1"}
    return subprocess.run([sys.executable, "-c", CRASH_SCRIPT, mode], capture_output=True,
                          text=True, timeout=600, env=env, check=False)


@pytest.mark.parametrize("mode", ["default", "checked"])
def test_nonfinite_offsets_do_not_crash_the_emulator(mode, request):
    """Issue 10.1: one NaN offset made Index(floor(NaN)) = INT_MIN and read far outside x
    (SIGSEGV on the emulator, an illegal address on a GPU). Run in a subprocess: a crash must
    show as an exit status, not kill the test run. Checked mode (guard pages) also proves that
    no read leaves the arrays."""
    reason = gpuconv.available_backends()["emulate"]
    if reason != "available":
        pytest.skip(f"emulate backend unavailable: {reason}")
    proc = request.getfixturevalue("emulator_probe") if mode == "default" else _crash_probe(mode)
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}")
    want = {"v1": True, "v2": True} if mode == "default" else {"v2": True}
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == want
