"""The ``cuda`` backend's kernels compile through CuPy's real NVRTC path -- no GPU needed.

``tests/cupy_compile_harness.py`` runs ``CupyExecutor`` with only the device-touching parts of
CuPy replaced (the device query behind ``compiler._get_arch``, the per-device memos, the module
load, which records the cubin instead). For every kernel file, every registered name expression
must lower (through NVRTC's name expressions, as CuPy asks for them) to a function symbol of
the cubin, each compile group must be compiled once and only when asked for, with the options
the executor passes plus CuPy's (``-ftz=false`` last: float32 subnormals are kept).

Matrix: files x sm_75/sm_80/sm_90 x CUDA 13 (this environment) and CUDA 12 (another one, given
by ``$GPUCONV_CUDA12_PYTHON``: a Python with ``cupy-cuda12x``, ``nvidia-cuda-nvrtc-cu12``,
``nvidia-cuda-runtime-cu12`` and ``ml_dtypes``). The default run checks one architecture per file; the rest is
``slow``. Needs ``cupy-cuda13x`` with ``nvidia-cuda-nvrtc`` and ``nvidia-cuda-runtime`` (CuPy's
``ctk`` extra or the test extra); without them the CuPy tests skip with the reason.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys

import cupy_compile_harness as harness
import numpy as np
import pytest

import gpuconv
from gpuconv import _kernels


def _cupy_reason():
    try:
        import cupy
        from cupy.cuda import compiler  # noqa: F401 (NVRTC bindings load here)
    except Exception as exc:  # ImportError, or a CuPy without a loadable NVRTC
        return f"CuPy cannot be imported ({type(exc).__name__}: {exc})"
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as exc:
        return f"CuPy's NVRTC cannot be loaded ({type(exc).__name__}: {exc})"
    return None


_reason = _cupy_reason()
needs_cupy = pytest.mark.skipif(_reason is not None, reason=f"{_reason}")

FILES = _kernels.files()
# The default run: one architecture per file, rotating, so each architecture is covered (every
# file x architecture compiles with NVRTC in tests/test_nvrtc.py anyway). The full matrix
# (about 3 more minutes) runs with GPUCONV_FULL_MATRIX=1.
DEFAULT_ARCH = {file: harness.ARCHS[i % len(harness.ARCHS)] for i, file in enumerate(FILES)}
FULL_MATRIX = os.environ.get("GPUCONV_FULL_MATRIX", "") not in ("", "0")
MATRIX = [
    pytest.param(file, arch, id=f"{file}-{arch}",
                 marks=() if DEFAULT_ARCH[file] == arch else (
                     pytest.mark.slow, pytest.mark.skipif(
                         not FULL_MATRIX, reason="the CuPy compile path checks one architecture "
                         "per file by default (tests/test_nvrtc.py compiles every file for "
                         "every architecture); GPUCONV_FULL_MATRIX=1 runs them all")))
    for file in FILES for arch in harness.ARCHS
]


# ----------------------------------------------------------------------------- CUDA 12 leg
# Started in the background by the first test that needs it, so that it runs on the second
# core while the CUDA 13 matrix runs here; test_cuda12_leg (last in this file) collects it.

_CUDA12 = {}


def _cuda12_python():
    return os.environ.get("GPUCONV_CUDA12_PYTHON")


def _start_cuda12_leg():
    python = _cuda12_python()
    if python and "process" not in _CUDA12:
        process = _CUDA12["process"] = subprocess.Popen(
            [python, harness.__file__], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        atexit.register(process.kill)  # if test_cuda12_leg was deselected: no orphan


# ----------------------------------------------------------------------------- no CuPy needed


def test_compile_groups_partition_each_file_by_element_and_index_type():
    for file in FILES:
        groups = _kernels.compile_groups(file)
        members = [n for g in groups for n in _kernels.group_name_expressions(file, g)]
        assert sorted(members) == sorted(_kernels.name_expressions(file))  # a partition
        for group in groups:
            for name in _kernels.group_name_expressions(file, group):
                assert _kernels.parse_name_expression(name)[1][:2] == list(group)
    # conv_grad.cu: 17 instantiations per group, 6 groups (float16/32/64 x int/long long),
    # 8 with ml_dtypes (bfloat16: __nv_bfloat16)
    groups = _kernels.compile_groups("conv_grad.cu")
    bf16 = _kernels.BFLOAT16 is not None
    assert len(groups) == 6 + 2 * bf16 and ("float", "long long") in groups
    assert (("__nv_bfloat16", "int") in groups) == bf16
    assert len(_kernels.group_name_expressions("conv_grad.cu", ("float", "int"))) == 17
    with pytest.raises(LookupError, match="no instantiation in compile group"):
        _kernels.group_name_expressions("conv_grad.cu", ("int", "int"))


def test_cuda_extras_bring_nvrtc_and_the_runtime_headers():
    """gpuconv[cuda12] / gpuconv[cuda13] must work on a machine with only the driver: CuPy's
    ctk extra pulls cuda-toolkit[nvrtc, cudart, cublas, ...] (NVRTC, cuda_fp16.h, cuBLAS)."""
    tomllib = pytest.importorskip("tomllib", reason="Python < 3.11")
    extras = tomllib.loads((harness.REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for extra, package in (("cuda12", "cupy-cuda12x"), ("cuda13", "cupy-cuda13x")):
        (requirement,) = extras[extra]
        assert requirement.replace(" ", "").startswith(f"{package}[ctk]>=14"), requirement


# ----------------------------------------------------------------------------- CUDA 13 here


@needs_cupy
@pytest.mark.parametrize("file, arch", MATRIX)
def test_every_name_expression_lowers_to_a_cubin_symbol(file, arch, tmp_path, request):
    if request.node.get_closest_marker("slow"):
        _start_cuda12_leg()
    report = harness.check_file(file, arch, cache_dir=tmp_path)
    assert not report["problems"], "\n".join(report["problems"])
    assert sorted(report["names"]) == sorted(_kernels.name_expressions(file))
    assert len(report["compiles"]) == len(_kernels.compile_groups(file))


@needs_cupy
def test_compile_groups_are_lazy_and_cached_on_disk(tmp_path):
    """The first kernel of a call compiles its group only; another group of the same file is a
    second NVRTC program; a new executor (a new process) loads both from the disk cache."""
    from gpuconv.backends.device._executor import CupyExecutor

    file = "convolve.cu"
    first = _kernels.FAMILIES["correlate1d"].name_expression(np.float32, np.int32, True)
    same_group = _kernels.FAMILIES["correlate1d_reduce"].name_expression(np.float32, np.int32,
                                                                         False)
    other_group = _kernels.FAMILIES["correlate1d"].name_expression(np.complex128, np.int64, True)
    with harness.offline_cupy("sm_80", tmp_path) as recorder:
        executor = CupyExecutor()
        executor.get_function(file, first)
        assert [sorted(c["names"]) for c in recorder.compiles] == [
            sorted(_kernels.group_name_expressions(file, ("float", "int")))]
        executor.get_function(file, same_group)
        assert len(recorder.compiles) == 1
        executor.get_function(file, other_group)
        assert len(recorder.compiles) == 2
        assert len(list(tmp_path.glob("cuda/*.cubin"))) == 2
        fresh = CupyExecutor()
        kind, mangled, _ = fresh.get_function(file, other_group).function
        assert kind == "function" and mangled.startswith("_Z")
        assert len(recorder.compiles) == 2  # served from the disk cache
        with pytest.raises(LookupError, match="not a registered instantiation"):
            executor.get_function(file, "correlate1d<float, int, 2>")


@needs_cupy
def test_an_unwritable_cache_falls_back_to_a_temporary_directory(tmp_path):
    from gpuconv.backends.device._executor import CupyExecutor

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    name = _kernels.FAMILIES["deform_im2col"].name_expression(np.float64, np.int32, True)
    with harness.offline_cupy("sm_75", blocker):  # $GPUCONV_CACHE_DIR/cuda cannot be made
        kind, mangled, path = CupyExecutor().get_function("deform.cu", name).function
    assert kind == "function" and mangled.startswith("_Z")
    assert not path.startswith(str(tmp_path)) and os.path.isfile(path)


BROKEN = "\nstatic_assert(sizeof(int) == 3, \"planted error\");\n"


@needs_cupy
def test_a_broken_source_fails_naming_file_and_line(tmp_path, monkeypatch):
    from cupy.cuda.compiler import CompileException

    from gpuconv.backends.device._executor import CupyExecutor

    kernels = tmp_path / "kernels"
    shutil.copytree(_kernels.kernel_dir(), kernels)
    text = (kernels / "convolve.cu").read_text()
    (kernels / "convolve.cu").write_text(text + BROKEN)
    line = text.count("\n") + 2
    monkeypatch.setattr(_kernels, "kernel_dir", lambda: kernels)
    name = _kernels.FAMILIES["correlate1d"].name_expression(np.float64, np.int32, False)
    with harness.offline_cupy("sm_80", tmp_path / "cache"), \
            pytest.raises(CompileException) as info:
        CupyExecutor().get_function("convolve.cu", name)
    message = str(info.value)
    assert "planted error" in message and f"convolve.cu({line})" in message, message
    assert not list((tmp_path / "cache").glob("**/*.cubin"))  # nothing cached


# ----------------------------------------------------------------------------- subnormals

PROBE = r"""
extern "C" __global__ void probe(float* x, float a) { x[0] = x[0] * a + x[1]; x[2] = x[2] / a; }
"""


def _ptx(options):
    """PTX of PROBE from NVRTC (cuda-bindings), with ``options``."""
    from cuda.bindings import nvrtc

    err, program = nvrtc.nvrtcCreateProgram(PROBE.encode(), b"probe.cu", 0, [], [])
    try:
        encoded = [o.encode() for o in options]
        (err,) = nvrtc.nvrtcCompileProgram(program, len(encoded), encoded)
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
        err, size = nvrtc.nvrtcGetPTXSize(program)
        ptx = b" " * size
        nvrtc.nvrtcGetPTX(program, ptx)
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    return ptx.decode(errors="replace")


@needs_cupy
def test_the_gpu_keeps_float32_subnormals(tmp_path, monkeypatch):
    """The options NVRTC gets from the executor produce IEEE float32 arithmetic (no ``.ftz``
    in the PTX). CuPy's RawModule path appends ``-ftz=true`` after the user's options, and
    NVRTC takes the last (cupy/cupy#9576): its PTX flushes. That is why the executor does not
    compile through RawModule."""
    pytest.importorskip("cuda.bindings", reason="cuda-bindings (the test extra) not installed")
    import cupy
    from cupy.cuda import compiler, function

    class Module(function.Module):  # the module load: record instead of cuModuleLoadData
        def load(self, cubin):
            self.cubin = cubin

    monkeypatch.setattr(compiler, "function",
                        type(sys)("function_stand_in"), raising=True)
    compiler.function.Module, compiler.function.LinkState = Module, function.LinkState
    monkeypatch.setenv("CUPY_CACHE_IN_MEMORY", "1")  # compile, not CuPy's disk cache

    name = _kernels.FAMILIES["correlate1d"].name_expression(np.float32, np.int32, True)
    with harness.offline_cupy("sm_80", tmp_path) as recorder:
        from gpuconv.backends.device._executor import CupyExecutor

        CupyExecutor().get_function("convolve.cu", name)
        cupy._core.core.compile_with_cache(  # what RawModule(code=...) would do
            PROBE, tuple(_kernels.NVRTC_OPTIONS), prepend_cupy_headers=False)
    # (compile_with_cache also compiles an empty program first, to key its cache)
    ours, raw_module = recorder.compiles[0]["options"], recorder.compiles[-1]["options"]
    assert recorder.compiles[-1]["names"] == []
    assert harness.last_flag(ours, "ftz") == "false"
    assert harness.last_flag(raw_module, "ftz") == "true"
    as_ptx = [o.replace("-arch=sm_", "-arch=compute_") for o in ours]
    fma_ours = [ln for ln in _ptx(as_ptx).splitlines() if "fma.rn" in ln or "div.rn" in ln]
    assert fma_ours and not any(".ftz" in ln for ln in fma_ours), fma_ours
    as_ptx = [o.replace("-arch=sm_", "-arch=compute_") for o in raw_module]
    assert ".ftz.f32" in _ptx(as_ptx)


def test_subnormal_float32_inputs_are_kept_on_every_backend(backend):
    """float32 subnormals stay subnormal (no flush to zero) on numpy, emulate and -- with
    -ftz=false -- cuda. Inputs are multiples of the smallest subnormal 2**-149 and weights
    powers of two >= 1, so every product and sum is exact: the float64 reference is exact."""
    tiny = np.float32(2.0**-149)
    x = (np.arange(1, 1 + 2 * 9 * 9).reshape(1, 2, 9, 9) % 7).astype(np.float32) * tiny
    w = np.array([1.0, 2.0, 4.0], np.float32)[np.arange(3 * 2 * 3 * 3) % 3].reshape(3, 2, 3, 3)
    a = np.arange(1, 41, dtype=np.float32) * tiny
    v = np.array([1.0, 2.0, 4.0], np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    want_conv = np.zeros((1, 3, 7, 7))
    for o in range(3):
        for i in range(7):
            for j in range(7):
                want_conv[0, o, i, j] = np.sum(x64[0, :, i:i + 3, j:j + 3] * w64[o])
    want_corr = np.correlate(a.astype(np.float64), v.astype(np.float64), "full")
    assert 0 < np.abs(want_conv).max() < np.finfo(np.float32).smallest_normal
    with backend.active():
        got_conv = backend.asnumpy(gpuconv.conv2d(backend.asarray(x), backend.asarray(w)))
        got_corr = backend.asnumpy(gpuconv.correlate(backend.asarray(a), backend.asarray(v),
                                                     "full"))
    np.testing.assert_array_equal(got_conv, want_conv.astype(np.float32))
    np.testing.assert_array_equal(got_corr, want_corr.astype(np.float32))


# ----------------------------------------------------------------------------- CUDA 12 leg


@pytest.mark.slow
def test_cuda12_leg():
    """The same checks under CuPy for CUDA 12 (every file x sm_75/sm_80/sm_90), in the
    environment ``$GPUCONV_CUDA12_PYTHON`` (started in the background by the slow CUDA 13
    tests above)."""
    if not _cuda12_python():
        pytest.skip("GPUCONV_CUDA12_PYTHON is not set (a Python with cupy-cuda12x, "
                    "nvidia-cuda-nvrtc-cu12, nvidia-cuda-runtime-cu12 and ml_dtypes)")
    _start_cuda12_leg()
    process = _CUDA12["process"]
    stdout, stderr = process.communicate(timeout=1800)
    assert stdout.strip(), f"no report from {_cuda12_python()}:\n{stderr[-4000:]}"
    reports = json.loads(stdout)
    assert {r["nvrtc"][0] for r in reports} == {12}, [r["nvrtc"] for r in reports]
    assert {(r["file"], r["arch"]) for r in reports} == {
        (file, arch) for file in FILES for arch in harness.ARCHS}
    problems = [f"{r['file']} {r['arch']}: {p}" for r in reports for p in r["problems"]]
    assert not problems, "\n".join(problems)
    for r in reports:
        assert sorted(r["names"]) == sorted(_kernels.name_expressions(r["file"])), (
            f"{r['file']}: the CUDA 12 environment compiled other instantiations than this one "
            f"lists (the bfloat16 ones need ml_dtypes in both environments)")
    assert process.returncode == 0, stderr[-4000:]
    print(f"CUDA 12 leg: {len(reports)} (file, arch) pairs, NVRTC "
          f"{sum(r['cpu_s'] for r in reports):.1f} s CPU", file=sys.stderr)
