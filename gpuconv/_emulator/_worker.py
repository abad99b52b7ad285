"""Checked-mode launch, run in a subprocess: ``python _worker.py <spec dir>``.

The parent (``EmuFunction._run_checked``) writes ``spec.json`` and one ``argN.npy`` per array
argument. This process runs the launch twice, each time on fresh copies of the inputs: once with
every array ending exactly at a guard page (catches overruns) and once with every array starting
right after a guard page (catches underruns). A memory fault makes the runtime write one line to
``report.txt`` and exit with status 77. Otherwise the outputs of the first pass are saved as
``outN.npy`` and ``result.json`` holds the return code, message and counters.

It imports only ``_abi`` (by path), not the gpuconv package.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys

import numpy as np

if __package__:  # imported as gpuconv._emulator._worker (e.g. by a doctest collector)
    from . import _abi
else:  # run by path in the checked-mode subprocess
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import _abi


def _damage(path: str, size: int, sha256: str) -> str | None:
    """What is wrong with the library file (mirrors ``_build.verify_library``), or None."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if len(data) != size:
        return f"has {len(data)} bytes, {size} were written"
    if hashlib.sha256(data).hexdigest() != sha256:
        return "does not have the sha256 recorded when it was built"
    return None


def main(spec_dir: str) -> int:
    root = pathlib.Path(spec_dir)
    spec = json.loads((root / "spec.json").read_text())
    if spec.get("library_sha256"):
        problem = _damage(spec["library"], spec["library_size"], spec["library_sha256"])
        if problem:  # never dlopen it: a truncated library raises SIGBUS when its pages are read
            sys.stderr.write(f"the cached emulator library {spec['library']} {problem}")
            return _abi.EXIT_DAMAGED
    lib = _abi.Library(spec["library"])
    params = lib.entries[spec["index"]][1]
    originals = []
    for arg in spec["args"]:
        if arg["kind"] == "array":
            originals.append(np.load(root / arg["file"], allow_pickle=False))
        elif arg["kind"] == "alias":
            originals.append(originals[arg["of"]])
        else:
            originals.append(np.frombuffer(bytes.fromhex(arg["hex"]), dtype=arg["dtype"])[0])

    report_fd = os.open(root / "report.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    first = None
    total = None
    for placement, flags in (
        ("arrays ending at a guard page", _abi.FLAG_FILL_SHARED),
        ("arrays starting after a guard page", _abi.FLAG_FILL_SHARED | _abi.FLAG_GUARD_HEAD),
    ):
        os.write(report_fd, f"pass={placement.replace(' ', '_')} ".encode())
        copies = {}
        args = []
        for arg, original in zip(spec["args"], originals):
            if arg["kind"] == "scalar":
                args.append(original)
            else:
                key = id(original)
                if key not in copies:
                    copies[key] = original.copy()
                args.append(copies[key])
        argv, keep, nbytes, alias = _abi.build_argv(params, args)
        rc, message, stats = lib.checked_launch(
            spec["index"],
            spec["grid"],
            spec["block"],
            spec["shared_mem"],
            argv,
            nbytes,
            alias,
            flags,
            0,
            spec["nthreads"],
            report_fd,
        )
        del keep
        os.lseek(report_fd, 0, os.SEEK_SET)
        os.ftruncate(report_fd, 0)
        if total is None:
            total = dict(stats)
        else:
            for k in ("blocks", "barriers", "fiber_switches", "float_atomics", "elapsed_ns"):
                total[k] += stats[k]
        if rc != _abi.RC_OK:
            first = (rc, message, args)
            break
        if first is None:
            first = (rc, message, args)
    os.close(report_fd)
    os.unlink(root / "report.txt")
    rc, message, args = first
    if rc == _abi.RC_OK:
        for i, arg in enumerate(spec["args"]):
            if arg["kind"] == "array":
                np.save(root / f"out{i}.npy", args[i], allow_pickle=False)
    result = {"rc": rc, "message": message, "stats": total, "fiber_impl": lib.fiber_impl}
    (root / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
