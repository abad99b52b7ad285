"""Run the ``cuda`` backend's kernel compilation -- ``CupyExecutor`` over CuPy's real NVRTC
path -- on a machine without a GPU.

Only what touches a device is replaced (:func:`offline_cupy`):

* ``cupy.cuda.compiler.device`` (its ``Device().compute_capability`` is the architecture asked
  for) and the per-device memos around ``compiler._get_arch`` and
  ``compiler._get_arch_for_options_for_nvrtc`` (the undecorated functions run instead);
* ``cupy.cuda.runtime.getDevice`` (the executor's per-device scope): device 0;
* the module load: ``cupy.RawModule(path=...)`` records the cubin file instead of calling
  ``cuModuleLoad``, and its ``get_function`` returns a record of the mangled name.

Everything else is CuPy's: ``assemble_cupy_compiler_options`` (header search path),
``compile_using_nvrtc`` and ``_NVRTCProgram`` (name expressions, the options CuPy adds, NVRTC
itself). ``_NVRTCProgram.compile`` is wrapped (not replaced) to record the final option list
and the NVRTC time.

Used by ``tests/test_cupy_compile_path.py``, and runnable as a script in another environment
(the CUDA 12 leg: CuPy for CUDA 12 and 13 cannot share one)::

    python tests/cupy_compile_harness.py --arch sm_80 --file conv.cu --json

prints one JSON report (see :func:`check_file`); the exit status is 0 if every check passed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import struct
import sys
import tempfile
import time
import typing

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the script form, in an environment without gpuconv installed
    sys.path.insert(0, str(REPO))

from gpuconv import _kernels

ARCHS = ("sm_75", "sm_80", "sm_90")


# ----------------------------------------------------------------------------- ELF symbols


def elf_symbols(image: bytes) -> dict[str, int]:
    """Symbol name -> ELF symbol type (2 = STT_FUNC) from the ``.symtab`` of a 64-bit
    little-endian ELF image (a cubin)."""
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF image")
    shoff, = struct.unpack_from("<Q", image, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", image, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", image, shoff + i * shentsize)
                for i in range(shnum)]
    found = {}
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        str_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize or 24):
            st_name, st_info = struct.unpack_from("<IB", image, pos)
            end = image.index(b"\0", str_offset + st_name)
            name = image[str_offset + st_name:end].decode()
            if name:
                found[name] = st_info & 0xF
    return found


def elf_machine(image: bytes) -> int:
    """``e_machine`` of an ELF image (190 = EM_CUDA)."""
    return struct.unpack_from("<H", image, 0x12)[0]


# ----------------------------------------------------------------------------- the patches


class _LoadedCubin:
    """Stands in for ``cupy.RawModule(path=...)``: records the cubin instead of loading it."""

    loads: typing.ClassVar[list] = []

    def __init__(self, *, path):
        self.path = path
        self.image = pathlib.Path(path).read_bytes()
        self.symbols = elf_symbols(self.image)
        _LoadedCubin.loads.append(self)

    def get_function(self, name):
        if self.symbols.get(name) != 2:
            raise LookupError(f"{name!r} is not a function symbol of {self.path}")
        return ("function", name, self.path)


class Recorder:
    """What one :func:`offline_cupy` session saw."""

    def __init__(self):
        self.compiles: list[dict] = []  # one per NVRTC program

    @property
    def nvrtc_cpu_seconds(self) -> float:
        return sum(c["cpu_s"] for c in self.compiles)

    @property
    def nvrtc_wall_seconds(self) -> float:
        return sum(c["wall_s"] for c in self.compiles)


@contextlib.contextmanager
def offline_cupy(arch: str, cache_dir):
    """Patch the device-touching parts of CuPy (see the module docstring) for compiling for
    ``arch`` (``"sm_80"``), with gpuconv's CUDA module cache in ``cache_dir``; yields a
    :class:`Recorder`."""
    import types

    import cupy
    from cupy.cuda import compiler

    capability = arch.removeprefix("sm_")
    recorder = Recorder()
    program = compiler._NVRTCProgram
    real_compile = program.compile

    def recording_compile(self, options=(), log_stream=None):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return real_compile(self, options, log_stream)
        finally:
            recorder.compiles.append({
                "options": list(options),
                "names": list(self.name_expressions or ()),
                "cpu_s": time.process_time() - cpu,
                "wall_s": time.perf_counter() - wall,
            })

    class Device:
        def __init__(self, device=None):
            self.id = 0
            self.compute_capability = capability

    patches = [
        (compiler, "device", types.SimpleNamespace(Device=Device)),
        (compiler, "_get_arch", compiler._get_arch.__wrapped__),
        (compiler, "_get_arch_for_options_for_nvrtc",
         compiler._get_arch_for_options_for_nvrtc.__wrapped__),
        (cupy.cuda.runtime, "getDevice", lambda: 0),
        (cupy, "RawModule", _LoadedCubin),
        (program, "compile", recording_compile),
    ]
    saved = [(target, name, getattr(target, name)) for target, name, _ in patches]
    old_env = os.environ.get("GPUCONV_CACHE_DIR")
    try:
        for target, name, value in patches:
            setattr(target, name, value)
        os.environ["GPUCONV_CACHE_DIR"] = str(cache_dir)
        yield recorder
    finally:
        for target, name, value in reversed(saved):
            setattr(target, name, value)
        if old_env is None:
            os.environ.pop("GPUCONV_CACHE_DIR", None)
        else:
            os.environ["GPUCONV_CACHE_DIR"] = old_env


# ----------------------------------------------------------------------------- the checks


def last_flag(options, flag: str) -> str | None:
    """The value NVRTC uses for ``flag`` (``"ftz"``): the last ``-flag=v`` / ``--flag=v``."""
    value = None
    for option in options:
        for spelling in (f"-{flag}=", f"--{flag}="):
            if option.startswith(spelling):
                value = option[len(spelling):]
    return value


def check_file(file: str, arch: str, *, groups=None, cache_dir=None) -> dict:
    """Fetch every instantiation of ``file`` in ``groups`` (default: all compile groups)
    through a fresh ``CupyExecutor`` for ``arch``; return a JSON-able report:

    ``file``, ``arch``, ``nvrtc`` (version), ``cupy`` (version), ``groups`` (compiled),
    ``names`` (fetched), ``compiles`` (per NVRTC program: options, names, cpu_s, wall_s),
    ``problems`` (a list of strings; empty if every check passed), ``cpu_s``, ``wall_s``.
    """
    import cupy

    from gpuconv.backends.device._executor import CupyExecutor

    groups = [tuple(g) for g in (groups or _kernels.compile_groups(file))]
    problems = []
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory())
        recorder = stack.enter_context(offline_cupy(arch, cache_dir))
        _LoadedCubin.loads = []
        executor = CupyExecutor()
        names = [n for g in groups for n in _kernels.group_name_expressions(file, g)]
        for name in names:
            _, mangled, path = executor.get_function(file, name).function
            image = pathlib.Path(path).read_bytes()
            if elf_machine(image) != 190:
                problems.append(f"{name}: {path} is not a CUDA ELF image")
            if not mangled.startswith("_Z"):
                problems.append(f"{name}: lowered name {mangled!r} is not mangled C++")
        # Lazy and memoized: one NVRTC program per group asked for, holding exactly its names.
        compiled_groups = [sorted(c["names"]) for c in recorder.compiles]
        expected = [sorted(_kernels.group_name_expressions(file, g)) for g in groups]
        if compiled_groups != expected:
            problems.append(f"NVRTC programs {compiled_groups} != compile groups {expected}")
        if len(_LoadedCubin.loads) != len(groups):
            problems.append(f"{len(_LoadedCubin.loads)} module loads for {len(groups)} groups")
        for compile_ in recorder.compiles:
            options = compile_["options"]
            for wanted in (*_kernels.NVRTC_OPTIONS, f"-arch={arch}"):
                if wanted not in options:
                    problems.append(f"option {wanted!r} missing from {options}")
            if last_flag(options, "ftz") != "false":
                problems.append(f"NVRTC would flush subnormals: {options}")
            if any("fast_math" in o or "fast-math" in o for o in options):
                problems.append(f"fast math in {options}")
            if not any(o.startswith("-I") and pathlib.Path(o[2:], "cuda_fp16.h").is_file()
                       for o in options):
                problems.append(f"no include directory with cuda_fp16.h in {options}")
    return {
        "file": file, "arch": arch, "cupy": cupy.__version__,
        "nvrtc": list(cupy.cuda.nvrtc.getVersion()),
        "groups": [list(g) for g in groups], "names": names, "compiles": recorder.compiles,
        "problems": problems,
        "cpu_s": recorder.nvrtc_cpu_seconds, "wall_s": recorder.nvrtc_wall_seconds,
    }


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", help=f"default {ARCHS}")
    parser.add_argument("--file", action="append", help="kernel file(s), default all")
    parser.add_argument("--first-group", action="store_true",
                        help="only the first compile group of each file")
    args = parser.parse_args(argv)
    reports = []
    for file in args.file or _kernels.files():
        groups = _kernels.compile_groups(file)[:1] if args.first_group else None
        for arch in args.arch or ARCHS:
            report = check_file(file, arch, groups=groups)
            for compile_ in report["compiles"]:
                compile_.pop("names")
            reports.append(report)
    json.dump(reports, sys.stdout)
    print()
    return 1 if any(r["problems"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
