"""``python -m gpuconv``: the backends report, the check table, and its loop reference."""

from __future__ import annotations

import ast
import io
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

import gpuconv
from gpuconv import __main__ as main_module
from gpuconv import _reference as ref

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def full_check():
    """One run of the whole check on every available backend: (failures, text)."""
    stream = io.StringIO()
    failures = main_module.check(stream)
    return failures, stream.getvalue()


@pytest.fixture
def numpy_only(monkeypatch):
    """The check on the NumPy backend alone (the emulator is covered by ``full_check``)."""
    real = gpuconv.available_backends()
    monkeypatch.setattr(gpuconv, "available_backends",
                        lambda: {n: s if n == "numpy" else "disabled by the test"
                                 for n, s in real.items()})


def _table(text):
    """The header line and the rows of the check table."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("op "))
    end = lines.index("", start)
    return lines[start], lines[start + 1:end]


def test_check_runs_every_operation_on_every_available_backend(full_check):
    failures, text = full_check
    assert failures == 0, text
    available = [n for n, s in gpuconv.available_backends().items() if s == "available"]
    for op in ("conv1d", "conv2d", "conv3d", "conv_transpose2d", "conv_transpose3d",
               "depthwise_conv", "separable_conv", "deform_conv2d", "convolve", "correlate",
               "grad.conv_input", "grad.conv_weight", "grad.conv_transpose_input",
               "grad.depthwise_conv_weight", "grad.deform_conv2d"):
        for backend in available:
            assert any(line.split()[:1] == [op] and f" {backend} " in line and line.endswith("ok")
                       for line in text.splitlines()), f"no ok row for {op} on {backend}"
    assert "all operations match the reference" in text


def test_check_says_what_rows_are_compared_against(full_check):
    _, text = full_check
    assert "against naive float64 loops (gpuconv._reference)" in text
    assert "first call: includes compiling" in text
    header, _ = _table(text)
    assert "first call" in header and header.split()[-2:] == ["run", "ok"]


def test_check_table_columns_are_aligned(full_check):
    """Every column starts (left-aligned) or ends (right-aligned) at the header's position."""
    _, text = full_check
    header, rows = _table(text)
    assert rows
    for title in ("shapes", "backend"):
        column = header.index(title)
        for row in rows:
            assert row[column - 1] == " " and row[column] != " ", (title, row)
    for title in ("max rel err", "first call", "run"):
        end = header.index(title) + len(title)
        for row in rows:
            assert row[end - 1] != " " and row[end] == " ", (title, row)
    status = len(header) - len("ok")
    assert all(row[status - 1] == " " and row[status:] in ("ok",) for row in rows), rows


def test_check_catches_a_bug_in_every_dtype(monkeypatch, numpy_only):
    """A NumPy-backend bug present in float32 *and* float64 is a mismatch. (The check used to
    compare the NumPy backend in float32 with itself in float64, which such a bug passes.)"""
    from gpuconv.backends.numpy_backend import NumpyBackend

    original = NumpyBackend.conv

    def shifted(self, x, weight, bias, geom):
        result = original(self, x, weight, bias, geom)
        return result + 1e-2 * np.abs(result).max()

    monkeypatch.setattr(NumpyBackend, "conv", shifted)
    stream = io.StringIO()
    assert main_module.check(stream, ops=["conv2d", "convolve"]) == 1
    rows = _table(stream.getvalue())[1]
    assert [row.split()[0] for row in rows if row.endswith("MISMATCH")] == ["conv2d"], rows


def test_check_separates_the_first_call_from_the_run(monkeypatch, numpy_only):
    """A first call that is slow (as a compile is) shows in 'first call', not in 'run'."""
    from gpuconv.backends.numpy_backend import NumpyBackend

    original, calls = NumpyBackend.conv, []

    def slow_first_call(self, *args):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.4)
        return original(self, *args)

    monkeypatch.setattr(NumpyBackend, "conv", slow_first_call)
    stream = io.StringIO()
    assert main_module.check(stream, ops=["conv2d"]) == 0
    header, rows = _table(stream.getvalue())
    (row,) = rows
    first = row[header.index("first call"):header.index("first call") + len("first call")]
    run = row[:header.index("run") + len("run")].split()[-2:]
    assert len(calls) == 2
    assert float(first.split()[0]) >= 400 and run[1] == "ms" and float(run[0]) < 400, row


def test_command_line_exit_codes_and_version():
    ok = subprocess.run([sys.executable, "-m", "gpuconv", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "python -m gpuconv" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "gpuconv", "frobnicate"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr
    version = subprocess.run([sys.executable, "-m", "gpuconv", "--version"], capture_output=True,
                             text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"gpuconv {gpuconv.__version__}"
    import importlib.metadata

    try:   # the installed distribution's version, where gpuconv is installed
        assert gpuconv.__version__ == importlib.metadata.version("gpuconv")
    except importlib.metadata.PackageNotFoundError:
        pass


# --- the loop reference itself ------------------------------------------------------------

def test_reference_shares_no_code_with_the_backends():
    tree = ast.parse(pathlib.Path(ref.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "itertools", "math", "numpy"}, imported


def _golden_cases():
    meta = json.loads((DATA / "cases.json").read_text())
    return meta["cases"]


@pytest.mark.parametrize("case", _golden_cases(), ids=lambda c: c["id"])
def test_reference_matches_the_golden_cases(case):
    """The reference against PyTorch, torchvision and NumPy results (tests/data, float64)."""
    arrays = np.load(DATA / "cases.npz")
    kwargs = {}
    for key, value in case["kwargs"].items():
        if isinstance(value, dict):
            value = arrays[value["array"]]
        elif isinstance(value, list):
            value = [tuple(v) if isinstance(v, list) else v for v in value]
        kwargs[key] = value
    expected = arrays[case["expected"]]
    got = getattr(ref, case["op"])(*[arrays[k] for k in case["args"]], **kwargs)
    assert got.shape == expected.shape
    assert np.linalg.norm(got - expected) <= 1e-12 * np.linalg.norm(expected)


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("sizes", [(9, 4), (4, 9), (8, 8), (1, 5)])
def test_reference_convolve_and_correlate_match_numpy(sizes, mode):
    rng = np.random.default_rng(sum(sizes))
    a, v = (rng.standard_normal(n) + 1j * rng.standard_normal(n) for n in sizes)
    np.testing.assert_allclose(ref.convolve(a, v, mode), np.convolve(a, v, mode), atol=1e-12)
    np.testing.assert_allclose(ref.correlate(a, v, mode), np.correlate(a, v, mode), atol=1e-12)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_reference_conv_gradients_are_adjoints(mode):
    """<conv(x, w), g> = <x, conv_input(g)> = <w, conv_weight(x, g)>: the forward (golden-checked)
    pins the gradients. Likewise for the transposed convolution."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((6, 2, 3, 2))
    geom = dict(stride=(2, 1), padding=((2, 1), (0, 1)), dilation=(1, 2), groups=2,
                padding_mode=mode)
    y = ref.conv(x, w, **geom)
    g = rng.standard_normal(y.shape)
    inner = float(np.sum(y * g))
    np.testing.assert_allclose(np.sum(x * ref.conv_input(x.shape, w, g, **geom)), inner)
    np.testing.assert_allclose(np.sum(w * ref.conv_weight(x, w.shape, g, **geom)), inner)
    wd = rng.standard_normal((8, 1, 3, 2))
    yd = ref.depthwise_conv(x, wd, stride=(1, 2), padding=1, padding_mode=mode)
    gd = rng.standard_normal(yd.shape)
    np.testing.assert_allclose(np.sum(wd * ref.depthwise_conv_weight(
        x, wd.shape, gd, stride=(1, 2), padding=1, padding_mode=mode)), np.sum(yd * gd))

    tgeom = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2), groups=2)
    yt = ref.conv_transpose(x, w.reshape(4, 3, 3, 2), **tgeom)
    gt = rng.standard_normal(yt.shape)
    np.testing.assert_allclose(
        np.sum(x * ref.conv_transpose_input(x.shape, w.reshape(4, 3, 3, 2), gt, **tgeom)),
        np.sum(yt * gt))


def test_reference_deform_gradients():
    """Input, weight, mask and bias gradients by linearity (<y, g> splits over them); the
    offset gradient (the only nonlinear one) by central differences at 30 random entries."""
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((1, 4, 5, 6)), rng.standard_normal((3, 2, 2, 3))
    offset = rng.uniform(-1.7, 1.7, (1, 2 * 2 * 6, 4, 4))
    mask = rng.uniform(0, 1, (1, 2 * 6, 4, 4))
    bias = rng.standard_normal(3)
    geom = dict(stride=(1, 2), padding=(0, 1), dilation=(2, 1))
    g = rng.standard_normal((1, 3, 4, 4))
    gx, goff, gw, gmask, gb = ref.deform_conv2d_grads(x, offset, w, g, mask=mask, **geom)

    def loss(x=x, offset=offset, w=w, mask=mask, bias=bias):
        return float(np.sum(g * ref.deform_conv2d(x, offset, w, bias, mask=mask, **geom)))

    no_bias = loss(bias=None)
    np.testing.assert_allclose(np.sum(x * gx), no_bias)      # linear in x
    np.testing.assert_allclose(np.sum(w * gw), no_bias)      # linear in the weight
    np.testing.assert_allclose(np.sum(mask * gmask), no_bias)  # linear in the mask
    np.testing.assert_allclose(np.sum(bias * gb), loss() - no_bias)
    eps = 1e-6
    flat = rng.choice(offset.size, 30, replace=False)
    for index in zip(*np.unravel_index(flat, offset.shape)):
        up, down = offset.copy(), offset.copy()
        up[index] += eps
        down[index] -= eps
        numeric = (loss(offset=up) - loss(offset=down)) / (2 * eps)
        np.testing.assert_allclose(goff[index], numeric, atol=1e-6, err_msg=str(index))
