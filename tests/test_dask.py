"""gpuconv.dask: every forward function on Dask arrays equals the whole-array call.

Hypothesis draws shapes, chunkings (chunks of size 1, chunks smaller than the halo, uneven last
chunks), strides, dilations, groups, padding forms and padding modes; each example computes
``gpuconv.dask.f(da.from_array(x, chunks), ...)`` and compares it with ``gpuconv.f(x, ...)`` on
the whole array (float64, so "within rounding" is ~1e-12). The same bodies run on the threaded
scheduler and, for a few examples each, on a ``distributed.LocalCluster`` of two processes.
CuPy-chunk tests are marked ``gpu``.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import gpuconv

da = pytest.importorskip("dask.array", reason="gpuconv.dask needs dask[array]")
dask = pytest.importorskip("dask")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import gpuconv.dask as gd  # noqa: E402

MODES = ("zeros", "reflect", "replicate", "circular")
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def cluster_client():
    """One small LocalCluster of two single-threaded worker processes for the module."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, memory_limit="1GiB")
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(params=["threads", "distributed"])
def scheduler(request):
    """``compute(arr)`` on the threaded scheduler or on the LocalCluster; and how many
    hypothesis examples that scheduler gets (processes are slower to reach)."""
    if request.param == "threads":
        return (lambda arr: arr.compute(scheduler="threads")), 15
    client = request.getfixturevalue("cluster_client")
    return (lambda arr: client.compute(arr).result()), 3


def assert_same(got, ref):
    assert isinstance(got, np.ndarray)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


@st.composite
def chunking(draw, size):
    """Chunk sizes summing to ``size``: ones, small uneven pieces, or one chunk."""
    if size == 0 or draw(st.booleans()) and draw(st.booleans()):
        return (size,)
    sizes, left = [], size
    while left:
        c = draw(st.integers(1, max(1, min(left, draw(st.sampled_from([1, 2, 3, 5, 8]))))))
        sizes.append(c)
        left -= c
    return tuple(sizes)


@st.composite
def conv_case(draw, transpose=False):
    ndim = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    n = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    max_size = 9 if ndim < 3 else 6
    size = tuple(draw(st.integers(max(d * (k - 1) + 1, 2), max_size))
                 for k, d in zip(kernel, dilation))
    form = draw(st.sampled_from(["int", "same", "valid", "pairs"]))
    mode = "zeros" if transpose else draw(st.sampled_from(MODES))
    limit = [s - 1 if mode == "reflect" else s for s in size]
    if form == "int":
        padding = draw(st.integers(0, min(limit + [2])))
    elif form == "pairs":
        padding = tuple((draw(st.integers(0, min(lim, 2))), draw(st.integers(0, min(lim, 2))))
                        for lim in limit)
    else:
        padding = form
    chunks = (draw(chunking(n)), draw(chunking(c_in)), *(draw(chunking(s)) for s in size))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((n, c_in, *size))
    if transpose:
        weight = rng.standard_normal((c_in, c_out // groups, *kernel))
    else:
        weight = rng.standard_normal((c_out, c_in // groups, *kernel))
    bias = rng.standard_normal(c_out) if draw(st.booleans()) else None
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if transpose:
        kwargs["output_padding"] = tuple(
            draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        if padding == "same":
            kwargs["output_padding"] = 0
    else:
        kwargs["padding_mode"] = mode
    return x, chunks, weight, bias, kwargs


def _run_conv(data, scheduler, case, func, ref_func):
    compute, _ = scheduler
    x, chunks, weight, bias, kwargs = case
    try:
        ref = ref_func(x, weight, bias, **kwargs)
    except ValueError as exc:  # e.g. padding leaves no transposed output: dask must agree
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            func(da.from_array(x, chunks=chunks), weight, bias, **kwargs)
        return
    got = compute(func(da.from_array(x, chunks=chunks), weight, bias, **kwargs))
    assert_same(got, ref)


def test_conv_equals_whole_array(scheduler):
    @settings(max_examples=scheduler[1], **SETTINGS)
    @given(st.data())
    def body(data):
        _run_conv(data, scheduler, data.draw(conv_case()), gd.conv, gpuconv.conv)

    body()


def test_conv_transpose_equals_whole_array(scheduler):
    @settings(max_examples=scheduler[1], **SETTINGS)
    @given(st.data())
    def body(data):
        _run_conv(data, scheduler, data.draw(conv_case(transpose=True)), gd.conv_transpose,
                  gpuconv.conv_transpose)

    body()


def test_depthwise_and_separable_equal_whole_array(scheduler):
    compute, examples = scheduler

    @settings(max_examples=examples, **SETTINGS)
    @given(st.data())
    def body(data):
        x, chunks, _, _, kwargs = data.draw(conv_case())
        kwargs.pop("groups")
        c_in, kernel = x.shape[1], (3,) * (x.ndim - 2)
        kwargs["dilation"] = 1
        if any(s < 3 for s in x.shape[2:]) or (
                kwargs["padding_mode"] == "reflect" and not isinstance(kwargs["padding"], str)):
            kwargs["padding"] = "same"
            if kwargs["padding_mode"] == "reflect" and any(s < 2 for s in x.shape[2:]):
                kwargs["padding_mode"] = "zeros"
        mult = data.draw(st.integers(1, 2))
        rng = np.random.default_rng(1)
        dw = rng.standard_normal((c_in * mult, 1, *kernel))
        pw = rng.standard_normal((3, c_in * mult, *(1,) * len(kernel)))
        bias = rng.standard_normal(c_in * mult)
        try:
            ref = gpuconv.depthwise_conv(x, dw, bias, **kwargs)
        except ValueError:
            return
        xd = da.from_array(x, chunks=chunks)
        y = gd.depthwise_conv(xd, dw, bias, **kwargs)
        # Depthwise keeps the channel chunks: each maps to `mult` times as many outputs.
        assert y.chunks[1] == tuple(c * mult for c in xd.chunks[1])
        assert_same(compute(y), ref)
        bias3 = rng.standard_normal(3)
        ref = gpuconv.separable_conv(x, dw, pw, bias3, **kwargs)
        assert_same(compute(gd.separable_conv(xd, dw, pw, bias3, **kwargs)), ref)

    body()


def test_deform_conv2d_equals_whole_array(scheduler):
    compute, examples = scheduler

    @settings(max_examples=examples, **SETTINGS)
    @given(st.data())
    def body(data):
        n = data.draw(st.integers(1, 2))
        offset_groups = data.draw(st.sampled_from([1, 2]))
        c_in = 2
        kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
        stride = data.draw(st.integers(1, 2))
        dilation = data.draw(st.integers(1, 2))
        padding = data.draw(st.integers(0, 2))
        h, w = data.draw(st.integers(6, 10)), data.draw(st.integers(6, 10))
        bound = data.draw(st.sampled_from([0.0, 0.5, 1.0, 2.5]))
        rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
        x = rng.standard_normal((n, c_in, h, w))
        weight = rng.standard_normal((4, c_in // data.draw(st.sampled_from([1, 2])), kh, kw))
        ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
        wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
        offset = rng.uniform(-bound, bound, (n, 2 * offset_groups * kh * kw, ho, wo))
        mask = rng.random((n, offset_groups * kh * kw, ho, wo)) if data.draw(
            st.booleans()) else None
        kwargs = dict(stride=stride, padding=padding, dilation=dilation, mask=mask)
        ref = gpuconv.deform_conv2d(x, offset, weight, **kwargs)
        chunks = (data.draw(chunking(n)), c_in, data.draw(chunking(h)), data.draw(chunking(w)))
        if data.draw(st.booleans()):
            offset = da.from_array(offset, chunks=(1, -1, 3, 4))
        got = compute(gd.deform_conv2d(da.from_array(x, chunks=chunks), offset, weight,
                                       max_offset=bound, **kwargs))
        assert_same(got, ref)
        # Batch chunks alone need no bound.
        got = compute(gd.deform_conv2d(da.from_array(x, chunks=(1, c_in, h, w)), offset,
                                       weight, **kwargs))
        assert_same(got, ref)

    body()


def test_convolve_correlate_equal_numpy(scheduler):
    compute, examples = scheduler

    @settings(max_examples=examples, **SETTINGS)
    @given(st.data())
    def body(data):
        n = data.draw(st.integers(1, 60))
        k = data.draw(st.integers(1, 12))
        rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
        a, v = rng.standard_normal(n), rng.standard_normal(k)
        mode = data.draw(st.sampled_from(["full", "same", "valid"]))
        op = data.draw(st.sampled_from(["convolve", "correlate"]))
        got = compute(getattr(gd, op)(da.from_array(a, chunks=data.draw(chunking(n))), v, mode))
        ref = getattr(np, op)(a, v, mode)  # NumPy itself: the independent reference
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)

    body()


def test_convolve_integer_dtype_is_numpys():
    a = np.arange(50)
    got = gd.convolve(da.from_array(a, chunks=7), [1, 2, 3]).compute()
    ref = np.convolve(a, [1, 2, 3])
    assert got.dtype == ref.dtype and np.array_equal(got, ref)


# ------------------------------------------------------------------ structure


def test_import_gpuconv_does_not_import_dask():
    code = "import sys, gpuconv; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_each_task_reads_only_its_neighbours():
    """Memory stays bounded: an output chunk's task depends on its own input chunk and those
    its halo reaches, never the whole array."""
    x = da.zeros((1, 1, 100, 100), chunks=(1, 1, 10, 10))
    w = np.ones((1, 1, 3, 3))
    y = gd.conv(x, w, padding=1)
    graph = dict(y.__dask_graph__())
    deps = y.__dask_graph__().get_all_dependencies()
    for key in y.__dask_keys__()[0][0][0]:
        inputs = {d for d in deps[key] if isinstance(d, tuple) and d[0] == x.name}
        assert 1 <= len(inputs) <= 9, (key, inputs)
    assert len(graph) < 400


def test_output_chunks_follow_input_chunks():
    """Stride 1 keeps the chunks (so the result can go to a Zarr store chunked like the input);
    stride 2: the output boundary after input boundary 10 is output 5 (input position 10), and
    after 15 it is output 8 (input position 16, the next multiple of the stride)."""
    x = da.zeros((1, 1, 25), chunks=(1, 1, (10, 5, 10)))
    assert gd.conv1d(x, np.ones((1, 1, 3)), padding="same").chunks[2] == (10, 5, 10)
    assert gd.conv1d(x, np.ones((1, 1, 3)), padding=((0, 2),)).chunks[2] == (10, 5, 10)
    y = gd.conv1d(x, np.ones((1, 1, 3)), stride=2, padding=1)
    assert y.chunks[2] == (5, 3, 5)
    # Input chunks narrower than the stride give no empty output chunks.
    y = gd.conv1d(da.zeros((1, 1, 9), chunks=(1, 1, 1)), np.ones((1, 1, 1)), stride=3)
    assert y.chunks[2] == (1, 1, 1)


def test_channel_chunks_respect_groups():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 6, 8))
    w = rng.standard_normal((9, 2, 3))
    y = gd.conv1d(da.from_array(x, chunks=(1, (1, 1, 4), 4)), w, groups=3)
    assert y.chunks[1] == (3, 6)  # input channel chunks rounded to whole groups (2 channels)
    assert_same(y.compute(), gpuconv.conv1d(x, w, groups=3))
    y = gd.conv1d(da.from_array(x, chunks=(1, 2, 4)), w, groups=3)
    assert y.chunks[1] == (3, 3, 3)


def test_circular_halo_comes_from_the_opposite_border():
    """A one-tap-left kernel with circular padding: output 0 is the last input, which lives in
    the last chunk; the reference is np.roll, not gpuconv."""
    x = np.arange(12.0).reshape(1, 1, 12)
    w = np.array([[[1.0, 0.0, 0.0]]])
    y = gd.conv1d(da.from_array(x, chunks=(1, 1, 5)), w, padding=1, padding_mode="circular")
    np.testing.assert_array_equal(y.compute(), np.roll(x, 1, axis=-1))


def test_reflect_is_numpy_reflect_not_symmetric():
    """Dask's boundary='reflect' repeats the edge; gpuconv's 'reflect' must not."""
    x = np.arange(10.0).reshape(1, 1, 10)
    w = np.array([[[1.0, 0.0, 0.0]]])
    y = gd.conv1d(da.from_array(x, chunks=(1, 1, 3)), w, padding=1, padding_mode="reflect")
    np.testing.assert_array_equal(y.compute()[0, 0], np.pad(x[0, 0], 1, mode="reflect")[:10])


def test_result_is_lazy_and_keeps_float32():
    x = da.ones((2, 3, 16, 16), chunks=(1, 3, 8, 8), dtype=np.float32)
    y = gd.conv2d(x, np.ones((4, 3, 3, 3), np.float32), padding="same")
    assert isinstance(y, da.Array) and y.dtype == np.float32
    assert type(y._meta) is np.ndarray
    np.testing.assert_allclose(y.compute(), gpuconv.conv2d(np.ones((2, 3, 16, 16), np.float32),
                                                           np.ones((4, 3, 3, 3), np.float32),
                                                           padding="same"), rtol=1e-6)


# --------------------------------------------------------------------- errors


def test_deform_offset_beyond_max_offset_raises():
    rng = np.random.default_rng(0)
    x = da.from_array(rng.standard_normal((1, 1, 8, 8)), chunks=(1, 1, 4, 4))
    offset = np.zeros((1, 18, 8, 8))
    offset[0, 5, 6, 6] = 1.25  # in the last output chunk only
    y = gd.deform_conv2d(x, offset, np.ones((1, 1, 3, 3)), padding=1, max_offset=1.0)
    with pytest.raises(ValueError, match=r"magnitude 1.25 .*exceeds max_offset=1.0"):
        y.compute()
    offset[0, 5, 6, 6] = np.nan
    with pytest.raises(ValueError, match="exceeds max_offset"):
        gd.deform_conv2d(x, offset, np.ones((1, 1, 3, 3)), padding=1, max_offset=1.0).compute()


def test_deform_spatial_chunks_need_max_offset():
    x = da.zeros((1, 1, 8, 8), chunks=(1, 1, 4, 8))
    with pytest.raises(ValueError, match="pass max_offset="):
        gd.deform_conv2d(x, np.zeros((1, 18, 8, 8)), np.ones((1, 1, 3, 3)), padding=1)
    for bad in (-1.0, float("inf"), "2", True):
        with pytest.raises(ValueError, match="max_offset="):
            gd.deform_conv2d(x, np.zeros((1, 18, 8, 8)), np.ones((1, 1, 3, 3)), padding=1,
                             max_offset=bad)


def test_unknown_chunk_sizes_cannot_be_planned():
    x = da.from_array(np.arange(20.0), chunks=5)
    x = x[x > 3]  # unknown (NaN) chunk sizes
    with pytest.raises(ValueError, match="unknown chunk sizes.*compute_chunk_sizes"):
        gd.convolve(x, [1.0, 2.0])
    x4 = da.zeros((1, 1, 20), chunks=(1, 1, 5))
    x4 = x4[:, :, (x4[0, 0] >= 0)]
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        gd.conv1d(x4, np.ones((1, 1, 3)))


def test_non_dask_input_raises_type_error():
    with pytest.raises(TypeError, match=r"gpuconv.dask.conv: x must be a dask.array.Array"):
        gd.conv(np.zeros((1, 1, 4)), np.ones((1, 1, 3)))
    with pytest.raises(ValueError, match=r"gpuconv.dask.conv2d: x must have shape .*\(4, 4\)"):
        gd.conv2d(da.zeros((4, 4)), np.ones((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="a must be 1-D"):
        gd.correlate(da.zeros((2, 3)), [1.0])


def test_gpuconv_validation_applies():
    x = da.zeros((1, 4, 8), chunks=2)
    with pytest.raises(ValueError, match="groups=3 must divide in_channels=4"):
        gd.conv1d(x, np.ones((3, 1, 3)), groups=3)
    with pytest.raises(ValueError, match="must be smaller than the input size"):
        gd.conv1d(x, np.ones((1, 4, 3)), padding=8, padding_mode="reflect")
    with pytest.raises(TypeError, match="dtype"):
        gd.conv1d(da.zeros((1, 4, 8), dtype=int), np.ones((1, 4, 3)))


# ------------------------------------------------------------------------ GPU


@pytest.mark.gpu
def test_cupy_chunks_on_local_cuda_cluster():
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 33, 30)).astype(np.float32)
    w = rng.standard_normal((8, 2, 3, 3)).astype(np.float32)
    xd = da.from_array(cupy.asarray(x), chunks=(1, 4, 10, 16), asarray=False)
    y = gd.conv2d(xd, cupy.asarray(w), stride=2, padding="same", groups=2,
                  padding_mode="reflect")
    assert isinstance(y._meta, cupy.ndarray)
    ref = gpuconv.conv2d(x, w, stride=2, padding="same", groups=2, padding_mode="reflect")
    try:
        from dask_cuda import LocalCUDACluster
        from distributed import Client
    except ImportError:
        got = y.compute(scheduler="threads")
    else:
        with LocalCUDACluster(n_workers=1) as cluster, Client(cluster) as client:
            got = client.compute(y).result()
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(got), ref, rtol=1e-4, atol=1e-4)


def test_different_weights_give_different_graphs():
    """Two calls on the same input with different weights must not share task names."""
    x = da.from_array(np.arange(10.0).reshape(1, 1, 10), chunks=(1, 1, 4))
    a = gd.conv1d(x, np.ones((1, 1, 3)))
    b = gd.conv1d(x, 2 * np.ones((1, 1, 3)))
    assert a.name != b.name
    got_a, got_b = dask.compute(a, b)
    np.testing.assert_array_equal(got_b, 2 * got_a)


@pytest.mark.parametrize("name", gd.__all__)
def test_signatures_are_gpuconvs_without_out(name):
    """Every function shows gpuconv's own parameters (less ``out``; deform adds
    ``max_offset``), never private ones or a catch-all."""
    import inspect

    mine = inspect.signature(getattr(gd, name)).parameters
    theirs = {k: v for k, v in inspect.signature(getattr(gpuconv, name)).parameters.items()
              if k != "out"}
    extra = ["max_offset"] if name == "deform_conv2d" else []
    assert list(mine) == list(theirs) + extra
    for key, param in theirs.items():
        assert (mine[key].kind, mine[key].default) == (param.kind, param.default), key
