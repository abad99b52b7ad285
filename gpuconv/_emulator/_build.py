"""Compiling kernel modules with g++, and the on-disk cache of the results.

A module is ``module.cpp`` compiled with ``-include cuda_shim.h -include <the .cu file>`` (g++
opens both by the paths given on its command line, so any legal path works: ``#``, ``$``,
spaces, quotes, newlines) and ``-iquote <private temp dir>``, which holds
``gpuconv_emu_entries.inc``: one ``GPUCONV_EMU_ENTRY(<name expression>)`` line per requested
instantiation.

Cache key (sha256) = emulator ABI version + compiler identity (``g++ --version``,
``-dumpmachine``) + flags + name expressions + the .cu source text + every header-like file
(.cuh .h .hpp .hh .inc) directly inside the source's directory, each include directory and the
emulator's own directory (the shim, module.cpp, runtime.h). After compiling, the same command is
run with ``-E``; the line markers of that output (C-escaped, so unambiguous for every path,
unlike make-style depfiles) give the exact list of non-system headers read. That list and the
headers' hashes are stored next to the library, checked on every load, and folded into the
library's file name, so a header anywhere (e.g. in a subdirectory) that changes forces a rebuild
too.

Integrity: the record (``<key>.json``) also holds the library's size and sha256, checked before
every load (and again by the checked-mode subprocess before it loads the library); a damaged
library (truncated, empty, garbage) is rebuilt. Libraries and records are written to a temporary
file in the cache directory, fsynced and renamed into place. One process compiles a given key at
a time (``fcntl.flock`` on ``<key>.lock``); the others wait and then load its result.

Interrupts: the compiler runs in its own session with ``TMPDIR`` set to a private directory.
If the build is interrupted (Ctrl-C), the whole process group is killed and every temporary file
is removed before the exception propagates.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import typing

from .. import _cache
from ._abi import ABI_VERSION
from ._errors import EmulatorCompileError

EMU_DIR = pathlib.Path(__file__).resolve().parent
MODULE_CPP = EMU_DIR / "module.cpp"
HEADER_SUFFIXES = (".cuh", ".h", ".hpp", ".hh", ".inc")
BASE_FLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-pthread", "-fvisibility=hidden")
#: the track build (track.h): every memory access of the module calls a hook. -fsanitize=thread
#: only instruments (compiled with -c); the link adds no ThreadSanitizer runtime, the module
#: defines the hooks itself (-Bsymbolic binds them inside it). -g1: line tables, so a counted
#: access site can be named by file:line.
TRACK_FLAGS = ("-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0", "-Wno-tsan",
               "-g1", "-DGPUCONV_EMU_TRACK=1")

# A name expression is data: an identifier, template arguments, literals. No statements,
# comments, preprocessor directives or string literals.
_NAME_EXPR = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:<>,()\[\] *&.+\-]*$")


CXX_VAR = "GPUCONV_EMULATE_CXX"
CXXFLAGS_VAR = "GPUCONV_EMULATE_CXXFLAGS"
STACK_VAR = "GPUCONV_EMULATE_STACK_KIB"
QUIET_VAR = "GPUCONV_QUIET"


def compiler() -> str:
    """The C++ compiler: ``$GPUCONV_EMULATE_CXX`` or ``g++``."""
    return os.environ.get(CXX_VAR, "").strip() or "g++"


def extra_flags() -> tuple[str, ...]:
    """Extra compiler flags (part of the cache key).

    ``$GPUCONV_EMULATE_STACK_KIB`` (a power of two >= 32; default 128) becomes
    ``-DGPUCONV_EMU_STACK_KIB=N``, the size of each CUDA thread's stack region;
    ``$GPUCONV_EMULATE_CXXFLAGS`` is split like a shell command line and appended (e.g.
    ``-DGPUCONV_EMU_UCONTEXT`` to use ucontext fibers, or ``-O0 -g`` to debug a kernel).

    Raises
    ------
    ValueError
        Either variable is malformed; the message names it.
    """
    flags = []
    stack = os.environ.get(STACK_VAR, "").strip()
    if stack:
        try:
            kib = int(stack)
        except ValueError:
            kib = 0
        if kib < 32 or kib & (kib - 1):
            raise ValueError(f"{STACK_VAR}={stack!r} must be a power of two, at least 32")
        flags.append(f"-DGPUCONV_EMU_STACK_KIB={kib}")
    text = os.environ.get(CXXFLAGS_VAR, "")
    try:
        flags += shlex.split(text)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise ValueError(
            f"{CXXFLAGS_VAR}={text!r} cannot be split into compiler flags ({exc}); "
            f"quote it as in a shell command line"
        ) from None
    return tuple(flags)


def unavailable_reason() -> str | None:
    """Why the emulator's C++ compiler cannot be run, or None if it can.

    The message names the compiler tried and where it came from (``$GPUCONV_EMULATE_CXX`` or
    the default ``g++``).
    """
    cxx = compiler()
    if compiler_identity(cxx) is not None:
        return None
    if os.environ.get(CXX_VAR, "").strip():
        origin = f"{CXX_VAR}={os.environ[CXX_VAR]!r}"
        hint = f"set {CXX_VAR} to a working C++17 compiler such as g++, or unset it"
    else:
        origin = f"the default; {CXX_VAR} is not set"
        hint = f"install g++ or set {CXX_VAR} to a C++17 compiler"
    path = shutil.which(cxx)
    if path is None:
        problem = "was not found" + ("" if os.sep in cxx else " on PATH")
    else:
        problem = f"({path}) does not run: '{cxx} --version' failed"
    return f"the emulator's C++ compiler {cxx!r} ({origin}) {problem}; {hint}"


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
    """``$GPUCONV_CACHE_DIR/emulator``, else ``$XDG_CACHE_HOME/gpuconv/emulator``, else
    ``~/.cache/gpuconv/emulator`` (:func:`gpuconv._cache.cache_dir`)."""
    return _cache.cache_dir("emulator")


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


class Artifact(typing.NamedTuple):
    """A verified library in the cache."""

    path: str
    key: str
    size: int
    sha256: str


#: compiles this process has started (for tests and the progress line)
compiles = 0
_progress_lock = threading.Lock()
_compiled_sources: dict[str, list[str]] = {}

# A line marker of g++ -E output: # <line> "<C-escaped file name>" <flags>
_LINE_MARKER = re.compile(rb'^# \d+ "((?:[^"\\\n]|\\.)*)"((?: \d+)*)$', re.M)
_C_ESCAPES = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"\\": b"\\", b'"': b'"', b"'": b"'"}


def _c_unescape(text: bytes) -> bytes:
    def one(match):
        esc = match.group(1)
        if esc[:1].isdigit():
            return bytes([int(esc, 8) & 0xFF])
        return _C_ESCAPES.get(esc, esc)

    return re.sub(rb"\\([0-7]{1,3}|.)", one, text, flags=re.S)


def headers_read(
    preprocessed: bytes, skip_dir: pathlib.Path, relative_to: pathlib.Path | None = None
) -> list[pathlib.Path]:
    """The non-system files named by the line markers of ``g++ -E`` output.

    Relative names are taken relative to ``relative_to`` (the compiler's working directory);
    files under ``skip_dir`` (the private build directory) are left out.
    """
    out = {}
    for match in _LINE_MARKER.finditer(preprocessed):
        flags = match.group(2).split()
        if b"3" in flags:  # a system header
            continue
        path = pathlib.Path(os.fsdecode(_c_unescape(match.group(1))))
        if not path.is_absolute():
            if relative_to is None or match.group(1).startswith(b"<"):  # <built-in>
                continue
            path = relative_to / path
        if not path.is_file():
            continue
        path = path.resolve()
        if path.is_relative_to(skip_dir.resolve()):
            continue
        out[str(path)] = path
    return list(out.values())


def _deps_valid(record: dict) -> bool:
    for path, digest in record.get("deps", {}).items():
        try:
            if _sha256_file(pathlib.Path(path)) != digest:
                return False
        except OSError:
            return False
    return True


def verify_library(path, size: int, sha256: str) -> str | None:
    """None if the file at ``path`` has this size and sha256, else what is wrong with it."""
    try:
        actual_size = os.stat(path).st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if actual_size != size:
        return f"has {actual_size} bytes, {size} were written"
    try:
        digest = _sha256_file(pathlib.Path(path))
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if digest != sha256:
        return "does not have the sha256 recorded when it was built"
    return None


def _lookup(directory: pathlib.Path, key: str) -> Artifact | None:
    """The cached library for ``key`` if its record, size, hash and headers all check out."""
    try:
        record = json.loads((directory / f"{key}.json").read_text())
        library = record["library"]
        size = int(record["size"])
        digest = str(record["sha256"])
        if not isinstance(library, str) or os.sep in library or not library.endswith(".so"):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    path = directory / library
    if verify_library(path, size, digest) is not None or not _deps_valid(record):
        return None
    return Artifact(str(path), key, size, digest)


def _quiet() -> bool:
    return os.environ.get(QUIET_VAR, "").strip().lower() not in ("", "0", "false", "no", "off")


def _say(message: str) -> None:
    if _quiet():
        return
    try:
        sys.stderr.write(f"gpuconv: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # closed or missing stderr
        pass


def _display(source: pathlib.Path) -> str:
    return f"{source.parent.name}/{source.name}" if source.parent.name else str(source)


def _progress(source: pathlib.Path) -> str:
    """``k/n``: this is the k-th distinct kernel file of its directory that this process
    compiles, of the n ``.cu`` files there."""
    with _progress_lock:
        done = _compiled_sources.setdefault(str(source.parent), [])
        if str(source) not in done:
            done.append(str(source))
        k = done.index(str(source)) + 1
    try:
        n = sum(1 for p in source.parent.iterdir() if p.suffix == ".cu")
    except OSError:
        n = 0
    return f"{k}/{max(n, k)}"


@contextlib.contextmanager
def _exclusive(lock_path: pathlib.Path, source: pathlib.Path):
    """Hold an exclusive ``flock`` on ``lock_path`` (tolerate filesystems without locks)."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        yield  # e.g. a read-only cache: the build fails later with a clear message
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process that is compiling {_display(source)} ...")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass
        except OSError:  # no locking here (some network filesystems): renames keep it safe
            pass
        yield
    finally:
        os.close(fd)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the compiler's whole process group (g++, cc1plus, as, ld) and wait until it is
    gone, so that nothing writes into the build directory after it is removed."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


def _run_compiler(cmd: list[str], env: dict, cwd: pathlib.Path) -> tuple[int, str]:
    """Run the compiler in its own session; (exit status, stderr). On any exception (Ctrl-C)
    the process group is killed before the exception propagates."""
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate()
    except BaseException:
        _kill_group(proc)
        raise
    return proc.returncode, err.decode(errors="replace")


_fsync_dir = _cache.fsync_dir
_write_atomically = _cache.write_atomically


def _remove_stale_temporaries(directory: pathlib.Path, key: str) -> None:
    """Temporary files of this key left by a killed build (called with the key's lock held, so
    no live build of this key owns them)."""
    for p in directory.glob(f".{key[:16]}-*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


def build(source, name_expressions, include_dirs=(), track: bool = False) -> Artifact:
    """Compile (or find in the cache) the module; returns the verified :class:`Artifact`.

    ``track=True`` builds the instrumented twin that race_check() and counters() use
    (TRACK_FLAGS; a separate cache entry)."""
    source = pathlib.Path(os.fspath(source)).resolve()
    if not source.is_file():
        raise FileNotFoundError(f"source={str(source)!r}: no such kernel file")
    include_dirs = tuple(pathlib.Path(os.fspath(d)).resolve() for d in include_dirs)
    names = validate_name_expressions(name_expressions)
    cxx = compiler()
    identity = compiler_identity(cxx)
    if identity is None:
        raise EmulatorCompileError(unavailable_reason() or f"C++ compiler {cxx!r} is not usable")
    flags = BASE_FLAGS + extra_flags() + (TRACK_FLAGS if track else ())
    key = build_key(source, include_dirs, names, flags, identity)

    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    found = _lookup(directory, key)
    if found is not None:
        return found
    with _exclusive(directory / f"{key}.lock", source):
        found = _lookup(directory, key)  # another process may have built it meanwhile
        if found is not None:
            return found
        _remove_stale_temporaries(directory, key)
        return _compile(source, include_dirs, names, flags, cxx, key, directory)


def _compile(source, include_dirs, names, flags, cxx, key, directory) -> Artifact:
    global compiles
    with _progress_lock:
        compiles += 1
    _say(
        f"compiling {_display(source)} for the emulator ({_progress(source)}; once, then "
        f"cached; {QUIET_VAR}=1 hides this) ..."
    )
    work = pathlib.Path(tempfile.mkdtemp(prefix="gpuconv-emu-")).resolve()
    tmp_so = None
    try:
        (work / "gpuconv_emu_entries.inc").write_text(
            "".join(f"GPUCONV_EMU_ENTRY({name})\n" for name in names)
        )
        fd, tmp_so = tempfile.mkstemp(dir=directory, prefix=f".{key[:16]}-", suffix=".so.tmp")
        os.close(fd)
        # Every path is one argv element: nothing is quoted or escaped anywhere. The compiler
        # runs in EMU_DIR and names the emulator's own files relatively: g++ copies the name of
        # the file holding an inline asm statement (the shim has one) unescaped into the
        # assembly it hands to `as`, which a newline in the install path would break.
        base = [
            shutil.which(cxx) or cxx,
            *flags,
            "-I.",
            f"-I{source.parent}",
            *(f"-I{d}" for d in include_dirs),
            "-iquote",
            str(work),
            "-include",
            "cuda_shim.h",
            "-include",
            str(source),
            MODULE_CPP.name,
        ]
        env = dict(os.environ, TMPDIR=str(work))  # g++'s cc*.s etc. go where we clean up
        if "-fsanitize=thread" in flags:  # instrument, but link without the sanitizer runtime
            obj = str(work / "module.o")
            status, stderr = _run_compiler([*base, "-c", "-o", obj], env, EMU_DIR)
            if status == 0:
                link = [base[0], *(f for f in flags if f not in TRACK_FLAGS), "-Wl,-Bsymbolic"]
                status, stderr = _run_compiler([*link, obj, "-o", tmp_so], env, EMU_DIR)
        else:
            status, stderr = _run_compiler([*base, "-o", tmp_so], env, EMU_DIR)
        if status != 0:
            raise EmulatorCompileError(
                f"g++ failed to compile {source} for {list(names)} (exit status {status}):\n"
                f"{stderr.strip()}\ncommand (run in {EMU_DIR}): {shlex.join([*base, '-o', tmp_so])}"
            )
        preprocessed = work / "module.ii"
        status, stderr = _run_compiler([*base, "-E", "-o", str(preprocessed)], env, EMU_DIR)
        if status != 0:
            raise EmulatorCompileError(
                f"g++ -E failed on {source} after compiling it (exit status {status}):\n"
                f"{stderr.strip()}"
            )
        deps = {
            str(p): _sha256_file(p)
            for p in headers_read(preprocessed.read_bytes(), work, relative_to=EMU_DIR)
        }
        deps_digest = hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()
        library = f"{key[:32]}-{deps_digest[:16]}.so"
        with open(tmp_so, "rb") as f:
            data = f.read()
            os.fsync(f.fileno())
        size, digest = len(data), hashlib.sha256(data).hexdigest()
        os.chmod(tmp_so, 0o755)
        so_path = directory / library
        os.replace(tmp_so, so_path)
        _fsync_dir(directory)
    finally:
        if tmp_so is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_so)
        shutil.rmtree(work, ignore_errors=True)
    record = {
        "library": library,
        "size": size,
        "sha256": digest,
        "source": str(source),
        "names": list(names),
        "deps": deps,
    }
    _write_atomically(
        directory / f"{key}.json", json.dumps(record, indent=1).encode(), f".{key[:16]}-"
    )
    return Artifact(str(so_path), key, size, digest)
