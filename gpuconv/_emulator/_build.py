"""Compiling kernel modules with g++, and the on-disk cache of the results.

A module is ``module.cpp`` compiled with ``-DGPUCONV_EMU_SOURCE=<the .cu file>`` and
``-DGPUCONV_EMU_ENTRIES=<entries.inc>``; ``entries.inc`` holds one
``GPUCONV_EMU_ENTRY(<name expression>)`` line per requested instantiation.

Cache key (sha256) = emulator ABI version + compiler identity (``g++ --version``,
``-dumpmachine``) + flags + name expressions + the .cu source text + every header-like file
(.cuh .h .hpp .hh .inc) directly inside the source's directory, each include directory and the
emulator's own directory (the shim, module.cpp, runtime.h). g++ also writes the exact list of
non-system headers it read (-MMD); that list and the headers' hashes are stored next to the
library, checked on every load, and folded into the library's file name, so a header anywhere
(e.g. in a subdirectory) that changes forces a rebuild too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import tempfile

from ._abi import ABI_VERSION
from ._errors import EmulatorCompileError

EMU_DIR = pathlib.Path(__file__).resolve().parent
MODULE_CPP = EMU_DIR / "module.cpp"
HEADER_SUFFIXES = (".cuh", ".h", ".hpp", ".hh", ".inc")
BASE_FLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-pthread", "-fvisibility=hidden")

# A name expression is data: an identifier, template arguments, literals. No statements,
# comments, preprocessor directives or string literals.
_NAME_EXPR = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:<>,()\[\] *&.+\-]*$")


def compiler() -> str:
    """The C++ compiler: ``$GPUCONV_EMULATE_CXX`` or ``g++``."""
    return os.environ.get("GPUCONV_EMULATE_CXX", "g++")


def extra_flags() -> tuple[str, ...]:
    """Extra compiler flags (part of the cache key).

    ``$GPUCONV_EMULATE_STACK_KIB`` (a power of two >= 32; default 128) becomes
    ``-DGPUCONV_EMU_STACK_KIB=N``, the size of each CUDA thread's stack region;
    ``$GPUCONV_EMULATE_CXXFLAGS`` is appended as is (e.g. ``-DGPUCONV_EMU_UCONTEXT`` to use
    ucontext fibers, or ``-O0 -g`` to debug a kernel).
    """
    flags = []
    stack = os.environ.get("GPUCONV_EMULATE_STACK_KIB", "").strip()
    if stack:
        try:
            kib = int(stack)
        except ValueError:
            kib = 0
        if kib < 32 or kib & (kib - 1):
            raise ValueError(
                f"GPUCONV_EMULATE_STACK_KIB={stack!r} must be a power of two, at least 32"
            )
        flags.append(f"-DGPUCONV_EMU_STACK_KIB={kib}")
    flags += shlex.split(os.environ.get("GPUCONV_EMULATE_CXXFLAGS", ""))
    return tuple(flags)


@functools.cache
def compiler_identity(cxx: str) -> str | None:
    """``g++ --version`` + target triple, or None if the compiler cannot be run."""
    path = shutil.which(cxx)
    if path is None:
        return None
    try:
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        machine = subprocess.run(
            [path, "-dumpmachine"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{path}\n{version.strip()}\n{machine.strip()}"


def cache_dir() -> pathlib.Path:
    """``$GPUCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/gpuconv``, else ``~/.cache/gpuconv``."""
    env = os.environ.get("GPUCONV_CACHE_DIR")
    if env:
        return pathlib.Path(env) / "emulator"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
    return base / "gpuconv" / "emulator"


def _sha256_file(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _headers_in(directory: pathlib.Path) -> list[pathlib.Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.suffix in HEADER_SUFFIXES and p.is_file())
    except OSError:
        return []


def validate_name_expressions(name_expressions) -> tuple[str, ...]:
    if isinstance(name_expressions, (str, bytes)):
        raise TypeError(
            f"name_expressions must be a sequence of strings, got the single string "
            f"{name_expressions!r}; wrap it in a list"
        )
    names = []
    for i, name in enumerate(name_expressions):
        if not isinstance(name, str):
            raise TypeError(f"name_expressions[{i}] must be a str, got {type(name).__name__}")
        if not _NAME_EXPR.match(name.strip()):
            raise ValueError(
                f"name_expressions[{i}]={name!r} is not a kernel name expression such as "
                f"'correlate1d<float>' (letters, digits, _ : < > , ( ) [ ] * & . + - and spaces)"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("name_expressions is empty: list at least one kernel to instantiate")
    return tuple(names)


def build_key(source: pathlib.Path, include_dirs, names, flags, identity) -> str:
    """The cache key of a module (see the module docstring)."""
    h = hashlib.sha256()

    def put(tag, data):
        if isinstance(data, str):
            data = data.encode()
        h.update(f"{tag}:{len(data)}:".encode())
        h.update(data)

    put("abi", str(ABI_VERSION))
    put("compiler", identity)
    put("flags", "\0".join(flags))
    put("names", "\0".join(names))
    put("source", str(source))
    put("source-text", source.read_bytes())
    dirs = [source.parent, *include_dirs, EMU_DIR]
    seen = set()
    for d in dirs:
        for header in _headers_in(d):
            if header in seen:
                continue
            seen.add(header)
            put("header", str(header))
            put("header-text", header.read_bytes())
    put("module", MODULE_CPP.read_bytes())
    return h.hexdigest()


def _parse_depfile(text: str) -> list[str]:
    text = text.replace("\\\n", " ")
    _, _, deps = text.partition(": ")
    out = []
    for token in re.split(r"(?<!\\)\s+", deps.strip()):
        if token:
            out.append(token.replace("\\ ", " "))
    return out


def _deps_valid(record: dict) -> bool:
    for path, digest in record.get("deps", {}).items():
        try:
            if _sha256_file(pathlib.Path(path)) != digest:
                return False
        except OSError:
            return False
    return True


def build(source, name_expressions, include_dirs=()) -> tuple[str, str]:
    """Compile (or find in the cache) the module; returns (path of the .so, cache key)."""
    source = pathlib.Path(os.fspath(source)).resolve()
    if not source.is_file():
        raise FileNotFoundError(f"source={str(source)!r}: no such kernel file")
    if any(c in str(source) for c in '"\n\\'):
        raise ValueError(f"source={str(source)!r}: the path may not contain quotes or backslashes")
    include_dirs = tuple(pathlib.Path(os.fspath(d)).resolve() for d in include_dirs)
    names = validate_name_expressions(name_expressions)
    cxx = compiler()
    identity = compiler_identity(cxx)
    if identity is None:
        raise EmulatorCompileError(
            f"C++ compiler {cxx!r} not found or not runnable (set GPUCONV_EMULATE_CXX)"
        )
    flags = BASE_FLAGS + extra_flags()
    key = build_key(source, include_dirs, names, flags, identity)

    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    record_path = directory / f"{key}.json"
    try:
        record = json.loads(record_path.read_text())
        so_path = directory / record["library"]
        if so_path.is_file() and _deps_valid(record):
            return str(so_path), key
    except (OSError, ValueError, KeyError, TypeError):
        pass

    with tempfile.TemporaryDirectory(prefix="gpuconv-emu-") as tmp:
        tmp = pathlib.Path(tmp)
        entries = tmp / "entries.inc"
        entries.write_text("".join(f"GPUCONV_EMU_ENTRY({name})\n" for name in names))
        depfile = tmp / "module.d"
        fd, tmp_so = tempfile.mkstemp(dir=directory, prefix=f".{key[:16]}-", suffix=".so.tmp")
        os.close(fd)
        cmd = [
            shutil.which(cxx) or cxx,
            *flags,
            f"-I{EMU_DIR}",
            f"-I{source.parent}",
            *(f"-I{d}" for d in include_dirs),
            f'-DGPUCONV_EMU_SOURCE="{source}"',
            f'-DGPUCONV_EMU_ENTRIES="{entries}"',
            "-MMD",
            "-MF",
            str(depfile),
            str(MODULE_CPP),
            "-o",
            tmp_so,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise EmulatorCompileError(
                    f"g++ failed to compile {source} for {list(names)} "
                    f"(exit status {proc.returncode}):\n{proc.stderr.strip()}\n"
                    f"command: {shlex.join(cmd)}"
                )
            deps = {}
            for dep in _parse_depfile(depfile.read_text()):
                p = pathlib.Path(dep).resolve()
                if p == entries.resolve():
                    continue
                deps[str(p)] = _sha256_file(p)
            deps_digest = hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()
            library = f"{key[:32]}-{deps_digest[:16]}.so"
            so_path = directory / library
            os.replace(tmp_so, so_path)
        finally:
            if os.path.exists(tmp_so):
                os.unlink(tmp_so)
    record = {"library": library, "source": str(source), "names": list(names), "deps": deps}
    fd, tmp_record = tempfile.mkstemp(dir=directory, prefix=f".{key[:16]}-", suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp_record, record_path)
    return str(so_path), key
