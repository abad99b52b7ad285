"""``python -m gpuconv``: the backends report and the check table."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np

import gpuconv
from gpuconv import __main__ as main_module


def test_check_runs_every_operation_on_every_available_backend():
    stream = io.StringIO()
    failures = main_module.check(stream)
    text = stream.getvalue()
    assert failures == 0, text
    available = [n for n, s in gpuconv.available_backends().items() if s == "available"]
    for op in ("conv1d", "conv2d", "conv3d", "conv_transpose2d", "conv_transpose3d",
               "depthwise_conv", "separable_conv", "deform_conv2d", "convolve", "correlate",
               "grad.conv_input", "grad.conv_weight", "grad.deform_conv2d"):
        for backend in available:
            assert any(line.split()[:1] == [op] and f" {backend} " in line and line.endswith("ok")
                       for line in text.splitlines()), f"no ok row for {op} on {backend}"
    assert "all operations match the reference" in text


def test_check_reports_a_mismatch(monkeypatch):
    """A wrong backend result is reported and counted (the check can fail)."""
    from gpuconv.backends.numpy_backend import NumpyBackend

    original = NumpyBackend.conv

    def off_by_one(self, x, weight, bias, geom):
        result = original(self, x, weight, bias, geom)
        return result + (1 if x.dtype == np.float32 else 0)  # only the float32 run is wrong

    monkeypatch.setattr(NumpyBackend, "conv", off_by_one)
    stream = io.StringIO()
    assert main_module.check(stream) > 0
    assert "MISMATCH" in stream.getvalue()


def test_command_line_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "gpuconv", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "python -m gpuconv" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "gpuconv", "frobnicate"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr
