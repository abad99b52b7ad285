"""Fault injection for the emulator's build cache, hostile paths, interrupts and messages.

Every test uses a private ``GPUCONV_CACHE_DIR`` (never the shared ~/.cache/gpuconv). Most use a
stand-in compiler (``fake_cxx``): a shell script that answers ``--version`` and ``-E`` through the
real g++ but "compiles" by copying a library that g++ built once for this module, and logs each
compile. So a test can count compiles across processes without paying 5-30 s per compile. The
tests of paths and of an interrupted compile run the real g++.

Anything that could crash (a damaged library used to raise SIGBUS) or must be interrupted runs in
a subprocess whose exit status is checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from kernel_helpers import EMU_KERNELS, emulator_or_skip

emu = emulator_or_skip()
from gpuconv._emulator import _build  # noqa: E402

KDIR = EMU_KERNELS
REPO = pathlib.Path(__file__).resolve().parents[1]
# Where the gpuconv under test lives: the checkout (editable install) or site-packages (CI's
# `pip install .`). Subprocesses start there, so `python -c` imports that same gpuconv (the
# emulator's cache key covers its own files' paths).
PKG_ROOT = pathlib.Path(emu.__file__).resolve().parents[2]
SOURCE = KDIR / "with_header.cu"
NAMES = ["header_value"]
# header_value writes y[threadIdx.x] = EMU_TEST_VALUE (1, from with_header.cuh)
RUN_KERNEL = """
import numpy as np, gpuconv._emulator as emu
module = emu.load_module({source!r}, ["header_value"])
y = np.zeros(4, np.int32)
module.get_function("header_value")(1, 4, (y,))
print("values", y.tolist(), flush=True)
"""


def _env(cache, **extra):
    env = dict(os.environ)
    for var in ("GPUCONV_EMULATE_CXXFLAGS", "GPUCONV_EMULATE_STACK_KIB", "GPUCONV_QUIET"):
        env.pop(var, None)
    env["GPUCONV_CACHE_DIR"] = str(cache)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _python(code, env, timeout=120):
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PKG_ROOT,
        check=False,
    )


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("GPUCONV_EMULATE_CXX", "GPUCONV_EMULATE_CXXFLAGS", "GPUCONV_QUIET"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory):
    """with_header.cu built once by the real g++ (in a private cache); a copy of the .so."""
    root = tmp_path_factory.mktemp("prebuilt")
    proc = _python(
        f"from gpuconv._emulator import _build; print(_build.build({str(SOURCE)!r}, "
        f"['header_value']).path)",
        _env(root / "cache", GPUCONV_QUIET=1),
    )
    assert proc.returncode == 0, proc.stderr
    library = root / "header_value.so"
    shutil.copy(proc.stdout.strip(), library)
    return library


@pytest.fixture
def fake_cxx(tmp_path, prebuilt):
    """A stand-in compiler; returns (path of the script, function that counts its compiles)."""

    def make(delay=0.0):
        log = tmp_path / "compiles.log"
        script = tmp_path / f"fake-cxx-{delay}"
        script.write_text(
            textwrap.dedent(
                f"""\
                #!/bin/sh
                # --version, -dumpmachine, -E: the real g++; a compile: copy the prebuilt library
                out=""; prev=""
                for a in "$@"; do
                  [ "$a" = "-E" ] && exec g++ "$@"
                  [ "$prev" = "-o" ] && out="$a"
                  prev="$a"
                done
                [ -z "$out" ] && exec g++ "$@"
                echo "compile $$" >> {shlex.quote(str(log))}
                sleep {delay}
                cp {shlex.quote(str(prebuilt))} "$out"
                """
            )
        )
        script.chmod(0o755)

        def count():
            return len(log.read_text().splitlines()) if log.exists() else 0

        return script, count

    return make


def _library_and_record(cache):
    directory = pathlib.Path(cache) / "emulator"
    (record,) = directory.glob("*.json")
    return directory / json.loads(record.read_text())["library"], record


# ------------------------------------------------------------------------ damaged cache files


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


def _empty(path):
    path.write_bytes(b"")


def _garbage(path):
    size = path.stat().st_size
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes())


def _flip_one_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _delete(path):
    path.unlink()


@pytest.mark.parametrize(
    "damage", [_truncate, _empty, _garbage, _flip_one_byte, _delete], ids=lambda f: f.__name__[1:]
)
def test_damaged_library_is_rebuilt(tmp_path, monkeypatch, fake_cxx, damage):
    """A damaged library is rebuilt before anything loads it. Loading it used to crash (SIGBUS)
    or raise OSError; a changed byte went unnoticed. The first three run in a subprocess."""
    cxx, compiles = fake_cxx()
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(cache))
    monkeypatch.setenv("GPUCONV_EMULATE_CXX", str(cxx))
    monkeypatch.setenv("GPUCONV_QUIET", "1")
    first = _build.build(SOURCE, NAMES)
    assert compiles() == 1
    library, record = _library_and_record(cache)
    good = hashlib.sha256(library.read_bytes()).hexdigest()  # (a bytes diff takes hours)
    # a temporary file of this key left by a killed build
    stale = library.parent / f".{record.stem[:16]}-killed.so.tmp"
    stale.write_bytes(b"partial")
    damage(library)
    if damage in (_truncate, _empty, _garbage):
        # a truncated library used to raise SIGBUS (exit status -7) on every call
        env = _env(cache, GPUCONV_EMULATE_CXX=cxx, GPUCONV_QUIET=1)
        proc = _python(RUN_KERNEL.format(source=str(SOURCE)), env)
        assert proc.returncode == 0, (proc.returncode, proc.stderr)
        assert "values [1, 1, 1, 1]" in proc.stdout
    else:
        assert _build.build(SOURCE, NAMES) == first
    assert compiles() == 2, "the damaged library was not rebuilt"
    assert hashlib.sha256(library.read_bytes()).hexdigest() == good
    assert not stale.exists()
    # and the rebuilt library is then reused
    assert _build.build(SOURCE, NAMES) == first
    assert compiles() == 2


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"library": "../../etc/x.so"}'])
def test_damaged_record_is_rebuilt(tmp_path, monkeypatch, fake_cxx, content):
    cxx, compiles = fake_cxx()
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPUCONV_EMULATE_CXX", str(cxx))
    monkeypatch.setenv("GPUCONV_QUIET", "1")
    first = _build.build(SOURCE, NAMES)
    _, record = _library_and_record(tmp_path / "cache")
    record.write_bytes(content)
    second = _build.build(SOURCE, NAMES)
    assert compiles() == 2
    assert second == first
    assert _build.build(SOURCE, NAMES) == first and compiles() == 2


def test_checked_mode_refuses_a_library_damaged_after_loading(tmp_path, monkeypatch, fake_cxx):
    cxx, _ = fake_cxx()
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPUCONV_EMULATE_CXX", str(cxx))
    monkeypatch.setenv("GPUCONV_QUIET", "1")
    function = emu.load_module(SOURCE, NAMES).get_function("header_value")
    y = np.zeros(4, np.int32)
    with emu.checked():
        function(1, 4, (y,))
    assert y.tolist() == [1, 1, 1, 1]
    library, _ = _library_and_record(tmp_path / "cache")
    # replaced, not changed in place: this process keeps its mapping of the good file
    garbage = tmp_path / "garbage.so"
    garbage.write_bytes(b"\x7fELF" + bytes(1000))
    os.replace(garbage, library)
    with emu.checked(), pytest.raises(emu.EmulatorError, match=r"has 1004 bytes.*changed on disk"):
        function(1, 4, (y,))


# ------------------------------------------------------------------ concurrent cold-cache builds

CONCURRENT = """
import os, sys, time
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.005)
""" + RUN_KERNEL


def test_concurrent_cold_cache_compiles_once(tmp_path, fake_cxx):
    cxx, compiles = fake_cxx(delay=1.0)
    env = _env(tmp_path / "cache", GPUCONV_EMULATE_CXX=cxx)
    go = tmp_path / "go"
    code = CONCURRENT.format(source=str(SOURCE))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=PKG_ROOT,
        )
        for _ in range(3)
    ]
    time.sleep(1.0)  # let them import numpy and gpuconv
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert "values [1, 1, 1, 1]" in out
    assert compiles() == 1, "several processes compiled the same kernel"
    stderr = "".join(err for _, err in results)
    assert stderr.count("gpuconv: compiling emu_kernels/with_header.cu") == 1
    assert "waiting for another process that is compiling emu_kernels/with_header.cu" in stderr
    leftovers = [p.name for p in (tmp_path / "cache" / "emulator").iterdir()]
    assert sorted(p.rsplit(".", 1)[1] for p in leftovers) == ["json", "lock", "so"], leftovers


# ------------------------------------------------------------------------------- interrupts


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def _read_until(stream, marker, deadline):
    """Lines from a binary pipe up to the one containing ``marker``, that line complete; fails
    at the deadline instead of blocking (the stream's buffer is never used, so communicate()
    can follow). A pipe may deliver a line in pieces, so the marker alone is not enough: wait
    for the newline that ends its line."""
    data = b""
    fd = stream.fileno()

    def complete():
        at = data.find(marker.encode())
        return at >= 0 and b"\n" in data[at:]

    while not complete():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError(f"{marker!r} did not appear in time; got {data!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"{marker!r} never appeared; got {data!r}")
        data += chunk
    return data.decode(errors="replace").splitlines()


INTERRUPTED_COMPILE = """
import sys, gpuconv._emulator as emu
try:
    emu.load_module(sys.argv[1], sys.argv[2:])
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
print("finished", flush=True)
"""


def test_interrupted_compile_kills_the_compiler_and_leaves_nothing(tmp_path):
    # the real g++ on features.cu (about 30 s): interrupted 1 s into the compile
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = _env(tmp_path / "cache", TMPDIR=tmp)
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_COMPILE, str(KDIR / "features.cu"), "sync_count"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=PKG_ROOT,
    )
    try:
        _read_until(proc.stderr, "gpuconv: compiling emu_kernels/features.cu", time.monotonic() + 60)
        time.sleep(1.0)
        assert _processes_mentioning(str(tmp)), "the compiler is not running"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)  # to Python only, as the probe did
        out, err = proc.communicate(timeout=30)
        latency = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 3 and b"interrupted" in out, (proc.returncode, out, err)
    assert latency < 3.0
    time.sleep(0.2)
    assert _processes_mentioning(str(tmp)) == [], "a compiler process survived the interrupt"
    assert list(tmp.rglob("*")) == [], "temporary files left behind"
    left = [p.name for p in (tmp_path / "cache" / "emulator").iterdir()]
    assert all(name.endswith(".lock") for name in left), left


INTERRUPTED_LAUNCH = """
import signal, sys, time
import numpy as np, gpuconv._emulator as emu
function = emu.load_module(sys.argv[1], ["header_value"]).get_function("header_value")
y = np.zeros(1, np.int32)
print("launching", flush=True)
start = time.monotonic()
try:
    function((2**31 - 1,), (1,), (y,))  # ~2e9 one-thread blocks: minutes
    print("finished", time.monotonic() - start, flush=True)
    sys.exit(2)
except KeyboardInterrupt:
    print("interrupted", time.monotonic(), flush=True)
# the emulator still works: a fresh launch, on every worker thread
y = np.zeros(256, np.int32)
function((64,), (4,), (y,))
z = np.zeros(4, np.int32)
function((1,), (4,), (z,))
print("after", z.tolist(), flush=True)
# interrupts at many moments of a launch's start-up (one used to free the arrays of a launch
# that kept running, and a later launch crashed)
import _thread, threading
for i in range(30):
    try:
        threading.Timer(0.003 * (i % 10), _thread.interrupt_main).start()
        function((2**31 - 1,), (1,), (np.zeros(1, np.int32),))
    except KeyboardInterrupt:
        pass
    z = np.zeros(4, np.int32)
    function((1,), (4,), (z,))
    assert z.tolist() == [1, 1, 1, 1], z
print("survived", flush=True)
"""


def test_interrupted_launch_raises_promptly_and_the_emulator_stays_usable(tmp_path, fake_cxx):
    cxx, _ = fake_cxx()
    env = _env(tmp_path / "cache", GPUCONV_EMULATE_CXX=cxx, GPUCONV_QUIET=1)
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_LAUNCH, str(SOURCE)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=PKG_ROOT,
    )
    try:
        _read_until(proc.stdout, "launching", time.monotonic() + 60)
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        lines = _read_until(proc.stdout, "interrupted", sent + 15)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    (line,) = [line for line in lines if line.startswith("interrupted")]
    interrupted_at = float(line.split()[1])  # CLOCK_MONOTONIC: the same in both processes
    assert interrupted_at - sent < 1.0
    assert proc.returncode == 0, err
    assert b"after [1, 1, 1, 1]" in out
    assert b"survived" in out


# -------------------------------------------------------------------------- hostile paths

HOSTILE = 'a#b$c d"e\nf\\g:h'

WEIRD_PATHS = """
import pathlib, sys
root = pathlib.Path(sys.argv[1])
sys.path.insert(0, str(root / "install"))  # (PYTHONPATH cannot hold a ':')
import numpy as np
import gpuconv._emulator as emu
from gpuconv._emulator import _build
assert pathlib.Path(emu.__file__).is_relative_to(root / "install"), emu.__file__
source = root / "src" / "with_subdir_header.cu"

def value():
    y = np.zeros(4, np.int32)
    emu.load_module(source, ["header_value"]).get_function("header_value")(1, 4, (y,))
    return y.tolist()

print("first", value(), _build.compiles, flush=True)
print("again", value(), _build.compiles, flush=True)
with emu.checked():  # the subprocess gets its spec directory (under TMPDIR) through argv
    print("checked", value(), flush=True)
artifact = _build.build(source, ["header_value"])
header = (root / "src" / "sub" / "with_header.cuh").resolve()
deps = __import__("json").loads(pathlib.Path(artifact.path).with_name(artifact.key + ".json").read_text())["deps"]
print("tracked", str(header) in deps, flush=True)
header.write_text(header.read_text().replace("EMU_TEST_VALUE 1", "EMU_TEST_VALUE 2"))
print("stale after edit", _build._lookup(_build.cache_dir(), artifact.key) is None, flush=True)
"""


def test_hostile_characters_in_install_source_tmp_and_cache_paths(tmp_path):
    """# $ space " newline backslash : in every path the emulator touches (real g++)."""
    root = tmp_path / HOSTILE
    (root / "install").mkdir(parents=True)
    shutil.copytree(
        REPO / "gpuconv",
        root / "install" / "gpuconv",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (root / "src" / "sub").mkdir(parents=True)
    shutil.copy(KDIR / "emu_test.cuh", root / "src")
    shutil.copy(KDIR / "with_subdir_header.cu", root / "src")
    shutil.copy(KDIR / "with_header.cuh", root / "src" / "sub")
    (root / "tmp").mkdir()
    env = _env(
        root / "cache",
        TMPDIR=root / "tmp",
        GPUCONV_QUIET=1,
    )
    proc = subprocess.run(
        [sys.executable, "-c", WEIRD_PATHS, str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "first [1, 1, 1, 1] 1" in proc.stdout
    assert "again [1, 1, 1, 1] 1" in proc.stdout, "the library was not cached"
    assert "checked [1, 1, 1, 1]" in proc.stdout
    # the header in a subdirectory (of a hostile path) is tracked: editing it forces a rebuild
    # (test_emulator.py::test_disk_cache_key_follows_included_headers runs such a rebuild)
    assert "tracked True" in proc.stdout
    assert "stale after edit True" in proc.stdout
    assert list((root / "tmp").iterdir()) == []


def test_line_markers_are_unescaped(tmp_path):
    weird = tmp_path / HOSTILE
    weird.mkdir()
    header = weird / 'x "y".cuh'
    header.write_text("")
    system = tmp_path / "system.h"
    system.write_text("")
    escaped = str(header).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    text = (
        f'# 0 "<built-in>"\n'
        f'# 1 "{escaped}" 1\n'
        f"int x;\n"
        f'# 1 "{system}" 1 3 4\n'
        f'# 1 "{tmp_path / "missing.h"}" 1\n'
    ).encode()
    assert _build.headers_read(text, tmp_path / "build") == [header.resolve()]
    assert _build.headers_read(text, weird) == []


# ------------------------------------------------------------------------------- messages


def test_missing_compiler_names_the_variable_and_the_compiler(monkeypatch):
    monkeypatch.setenv("GPUCONV_EMULATE_CXX", "nonexistent-cxx-for-gpuconv")
    expected = (
        r"compiler 'nonexistent-cxx-for-gpuconv' "
        r"\(GPUCONV_EMULATE_CXX='nonexistent-cxx-for-gpuconv'\) was not found on PATH"
    )
    assert not emu.available()
    assert re.search(expected, emu.unavailable_reason())
    with pytest.raises(emu.EmulatorCompileError, match=expected):
        emu.load_module(SOURCE, NAMES)
    from gpuconv.backends.device import _backend

    assert "GPUCONV_EMULATE_CXX='nonexistent-cxx-for-gpuconv'" in _backend.unavailable_reason(
        "emulate"
    )


def test_broken_compiler_names_the_variable(tmp_path, monkeypatch):
    broken = tmp_path / "broken-cxx"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("GPUCONV_EMULATE_CXX", str(broken))
    with pytest.raises(emu.EmulatorCompileError, match=r"GPUCONV_EMULATE_CXX=.*does not run"):
        emu.load_module(SOURCE, NAMES)


def test_bad_quote_in_cxxflags_names_the_variable(monkeypatch):
    monkeypatch.setenv("GPUCONV_EMULATE_CXXFLAGS", '-O0 -DNAME="unclosed')
    with pytest.raises(
        ValueError, match=r"GPUCONV_EMULATE_CXXFLAGS='-O0 -DNAME=\"unclosed'.*No closing quotation"
    ):
        emu.load_module(SOURCE, NAMES)


# ------------------------------------------------------------------------ progress on stderr


def test_progress_line_when_compiling_silent_when_cached_or_quiet(
    tmp_path, monkeypatch, capsys, fake_cxx
):
    cxx, compiles = fake_cxx()
    monkeypatch.setenv("GPUCONV_EMULATE_CXX", str(cxx))
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path / "cache"))
    _build.build(SOURCE, NAMES)
    err = capsys.readouterr().err
    n_cu = len(list(KDIR.glob("*.cu")))
    assert err.count("\n") == 1
    match = re.fullmatch(
        rf"gpuconv: compiling emu_kernels/with_header\.cu for the emulator \((\d+)/{n_cu}; "
        rf"once, then cached; GPUCONV_QUIET=1 hides this\) \.\.\.\n",
        err,
    )
    assert match and 1 <= int(match[1]) <= n_cu, err
    _build.build(SOURCE, NAMES)  # cached: silent
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path / "cold"))
    monkeypatch.setenv("GPUCONV_QUIET", "1")
    _build.build(SOURCE, NAMES)
    assert compiles() == 2
    assert capsys.readouterr().err == ""
