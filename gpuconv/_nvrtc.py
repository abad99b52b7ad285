"""Offline NVRTC compilation, without a GPU: compile checks and ptxas resource reports.

Compiles a kernel file's text exactly as the CUDA backend does (every local ``#include``
inlined, :data:`gpuconv._kernels.NVRTC_OPTIONS`, all registered name expressions) for a real
architecture (``sm_XX``), so NVRTC runs ptxas; ``--ptxas-options=-v`` makes ptxas report each
kernel's registers, static shared memory, stack frame and register spills.

Needs the ``cuda-bindings`` package (``cuda.bindings.nvrtc``), the NVRTC library
(``nvidia-cuda-nvrtc`` wheel or a CUDA toolkit) and the CUDA runtime headers for
``cuda_fp16.h`` (``nvidia-cuda-runtime`` wheel or a CUDA toolkit); :func:`unavailable_reason`
says what is missing. ``python -m gpuconv._nvrtc`` prints the resource table for every
registered kernel (``scripts/ptxas_report.py`` does the same).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass

from . import _kernels

#: Architectures the NVRTC test compiles for (Turing, Ampere, Hopper).
ARCHS = ("sm_75", "sm_80", "sm_90")


class NvrtcCompileError(RuntimeError):
    """NVRTC rejected a source; the message carries its log (file names and lines)."""


@functools.lru_cache(maxsize=None)
def cuda_include_dir() -> str | None:
    """A directory holding the CUDA runtime headers (``cuda_fp16.h``), or None.

    Looked up as CuPy does: the ``nvidia-cuda-runtime`` wheel (through ``cuda.pathfinder``),
    then ``$CUDA_PATH/include``, ``$CUDA_HOME/include`` and ``/usr/local/cuda/include``.
    """
    candidates = []
    try:
        from cuda import pathfinder

        found = pathfinder.find_nvidia_header_directory("cudart")
        if found:
            candidates.append(found)
    except Exception:  # not installed, or nothing found
        pass
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "include"))
    candidates.append("/usr/local/cuda/include")
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, "cuda_fp16.h")):
            return str(candidate)
    return None


def _nvrtc():
    from cuda.bindings import nvrtc

    return nvrtc


def unavailable_reason() -> str | None:
    """Why offline NVRTC compilation cannot run here, or None if it can."""
    try:
        nvrtc = _nvrtc()
    except ImportError:
        return "cuda-bindings is not installed (pip install cuda-bindings nvidia-cuda-nvrtc)"
    try:
        err, major, minor = nvrtc.nvrtcVersion()
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return f"NVRTC is not usable ({err})"
    except Exception as exc:  # the NVRTC library cannot be loaded
        return f"the NVRTC library cannot be loaded ({type(exc).__name__}: {exc})"
    if cuda_include_dir() is None:
        return "cuda_fp16.h not found (pip install nvidia-cuda-runtime, or set CUDA_PATH)"
    return None


def version() -> tuple[int, int]:
    """NVRTC's (major, minor) version."""
    nvrtc = _nvrtc()
    _check(nvrtc, nvrtc.nvrtcVersion()[0], "nvrtcVersion")
    _, major, minor = nvrtc.nvrtcVersion()
    return major, minor


def _check(nvrtc, err, what: str, log: str = ""):
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcCompileError(f"{what} failed: {err}\n{log}")


@dataclass(frozen=True)
class Resources:
    """What ptxas reported for one kernel instantiation on one architecture."""

    name_expression: str
    arch: str
    registers: int
    shared_bytes: int  # static shared memory (dynamic shared memory is set per launch)
    stack_bytes: int
    spill_stores: int
    spill_loads: int

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


@dataclass(frozen=True)
class CompileResult:
    log: str
    lowered_names: dict[str, str]  # name expression -> mangled name
    resources: dict[str, Resources]  # name expression -> resources
    cubin: bytes


_ENTRY_RE = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPS_RE = re.compile(r"Function properties for (\S+)")
_STACK_RE = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_USED_RE = re.compile(r"Used (\d+) registers")
_SMEM_RE = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> dict[str, dict[str, int]]:
    """Per mangled kernel name: registers, shared_bytes, stack_bytes, spill_stores, spill_loads."""
    found: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        match = _ENTRY_RE.search(line) or _PROPS_RE.search(line)
        if match:
            current = found.setdefault(match.group(1), {
                "registers": 0, "shared_bytes": 0, "stack_bytes": 0,
                "spill_stores": 0, "spill_loads": 0,
            })
            continue
        if current is None:
            continue
        match = _STACK_RE.search(line)
        if match:
            current["stack_bytes"], current["spill_stores"], current["spill_loads"] = map(
                int, match.groups()
            )
        match = _USED_RE.search(line)
        if match:
            current["registers"] = int(match.group(1))
            smem = _SMEM_RE.search(line)
            current["shared_bytes"] = int(smem.group(1)) if smem else 0
    return found


def compile_source(source: str, name_expressions, arch: str, *, filename: str = "kernel.cu",
                   options=(), verbose: bool = True) -> CompileResult:
    """Compile ``source`` with NVRTC for ``arch`` (e.g. ``"sm_80"``).

    Raises
    ------
    NvrtcCompileError
        If NVRTC rejects the source (the message holds NVRTC's log, naming file and line).
    """
    nvrtc = _nvrtc()
    include = cuda_include_dir()
    opts = [*_kernels.NVRTC_OPTIONS, f"--gpu-architecture={arch}", *options]
    if include:
        opts.append(f"--include-path={include}")
    if verbose:
        opts.append("--ptxas-options=-v")
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), filename.encode(), 0, [], [])
    _check(nvrtc, err, "nvrtcCreateProgram")
    try:
        for name in name_expressions:
            _check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, name.encode())[0],
                   f"nvrtcAddNameExpression({name!r})")
        encoded = [o.encode() for o in opts]
        (compile_err,) = nvrtc.nvrtcCompileProgram(prog, len(encoded), encoded)
        err, size = nvrtc.nvrtcGetProgramLogSize(prog)
        _check(nvrtc, err, "nvrtcGetProgramLogSize")
        buffer = b" " * size
        _check(nvrtc, nvrtc.nvrtcGetProgramLog(prog, buffer)[0], "nvrtcGetProgramLog")
        log = buffer.rstrip(b"\0 ").decode(errors="replace")
        if compile_err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise NvrtcCompileError(
                f"NVRTC failed to compile {filename} for {arch} ({compile_err.name}):\n{log}"
            )
        lowered = {}
        for name in name_expressions:
            err, mangled = nvrtc.nvrtcGetLoweredName(prog, name.encode())
            _check(nvrtc, err, f"nvrtcGetLoweredName({name!r})")
            lowered[name] = mangled.decode()
        err, size = nvrtc.nvrtcGetCUBINSize(prog)
        _check(nvrtc, err, "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc, nvrtc.nvrtcGetCUBIN(prog, cubin)[0], "nvrtcGetCUBIN")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    per_mangled = parse_ptxas_log(log)
    resources = {
        name: Resources(name, arch, **per_mangled[mangled])
        for name, mangled in lowered.items()
        if mangled in per_mangled
    }
    return CompileResult(log, lowered, resources, cubin)


def compile_file(file: str, arch: str, *, options=(), verbose: bool = True) -> CompileResult:
    """Compile every registered instantiation of kernel ``file`` for ``arch``, from the same
    text the CUDA backend compiles."""
    return compile_source(_kernels.inlined_source(file), _kernels.name_expressions(file), arch,
                          filename=file, options=options, verbose=verbose)


def report(archs=ARCHS, files=None) -> list[Resources]:
    """Resources of every registered instantiation on every architecture."""
    rows = []
    for file in files or _kernels.files():
        for arch in archs:
            result = compile_file(file, arch)
            rows.extend(result.resources[name] for name in _kernels.name_expressions(file))
    return rows


def format_report(rows) -> str:
    """A plain-text table of :func:`report` rows."""
    header = ("kernel instantiation", "arch", "regs", "smem B", "stack B", "spill st B",
              "spill ld B")
    lines = [[r.name_expression, r.arch, str(r.registers), str(r.shared_bytes),
              str(r.stack_bytes), str(r.spill_stores), str(r.spill_loads)] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m gpuconv._nvrtc",
        description="Compile gpuconv's kernels with NVRTC (no GPU needed) and print ptxas's "
                    "registers / shared memory / spills per instantiation.",
    )
    parser.add_argument("--arch", action="append", help=f"architecture(s), default {ARCHS}")
    parser.add_argument("--file", action="append", help="kernel file(s), default all")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"NVRTC unavailable: {reason}", file=sys.stderr)
        return 2
    major, minor = version()
    rows = report(tuple(args.arch or ARCHS), args.file)
    print(f"NVRTC {major}.{minor}; kernels from {_kernels.kernel_dir()}; "
          f"cuda_fp16.h from {cuda_include_dir()}")
    print(format_report(rows))
    spilling = [r for r in rows if r.spills]
    if spilling:
        print(f"\n{len(spilling)} instantiation(s) spill registers", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["ARCHS", "NvrtcCompileError", "Resources", "CompileResult", "compile_file",
           "compile_source", "cuda_include_dir", "format_report", "parse_ptxas_log", "report",
           "unavailable_reason", "version"]
