"""``pip install .`` (not editable) into a fresh venv gives a package whose emulator finds and
runs the kernels installed inside it (pyproject force-includes ``kernels/`` as
``gpuconv/kernels``). Slow: it builds a wheel and installs NumPy (from pip's cache when warm).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

CHECK = textwrap.dedent("""
    import json, pathlib, sys
    import numpy as np
    import gpuconv
    from gpuconv import _kernels
    from gpuconv.backends.device import unavailable_reason

    package = pathlib.Path(gpuconv.__file__).resolve().parent
    kernels = _kernels.kernel_dir()
    reason = unavailable_reason("emulate")
    result = None
    if reason is None:
        a = np.array([1.0, 2.0, 3.0, 4.0])
        v = np.array([1.0, 0.5, -1.0])
        with gpuconv.use_backend("emulate"):
            result = gpuconv.convolve(a, v, "full").tolist()
    print(json.dumps({"package": str(package), "kernels": str(kernels), "reason": reason,
                      "result": result, "prefix": sys.prefix}))
""")


@pytest.mark.slow
def test_pip_install_ships_the_kernels(tmp_path):
    if not (REPO / "pyproject.toml").is_file() or not (REPO / "kernels").is_dir():
        pytest.skip("not running from a source checkout")
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the emulator cannot run")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, f"pip install failed:\n{install.stdout}\n{install.stderr}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPUCONV_BACKEND")}
    env["GPUCONV_CACHE_DIR"] = str(tmp_path / "cache")  # compile afresh from the installed files
    run = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    package = pathlib.Path(report["package"])
    assert package.is_relative_to(venv), f"gpuconv imported from {package}, not the fresh venv"
    assert pathlib.Path(report["kernels"]) == package / "kernels"
    for name in ("common.cuh", "convolve.cu"):
        assert (package / "kernels" / name).is_file()
    assert report["reason"] is None
    # [1, 2, 3, 4] * [1, 0.5, -1], by hand
    assert report["result"] == [1.0, 2.5, 3.0, 3.5, -1.0, -4.0]
    assert any((tmp_path / "cache").rglob("*.so")), "the emulator compiled nothing"
