"""Checked mode: a launch in a subprocess (_worker.py) on copies of the arrays placed against
guard pages; an out-of-bounds access becomes OutOfBoundsError naming the parameter and offset."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

from . import _abi
from ._abi import split_code
from ._errors import EmulatorError, OutOfBoundsError
from ._modes import record_stats

def run(fn, grid3, block3, shared_mem, args, nthreads):
    """Run one launch of ``fn`` (an EmuFunction) in checked mode; results are copied back."""
    with tempfile.TemporaryDirectory(prefix="gpuconv-emu-check-") as tmp:
        tmp = pathlib.Path(tmp)
        spec_args = []
        seen = {}
        for i, (code, arg) in enumerate(zip(fn.params, args)):
            if split_code(code)[0]:
                key = (arg.ctypes.data, arg.nbytes)
                if key in seen:
                    spec_args.append({"kind": "alias", "of": seen[key]})
                    continue
                seen[key] = i
                np.save(tmp / f"arg{i}.npy", arg, allow_pickle=False)
                spec_args.append({"kind": "array", "file": f"arg{i}.npy"})
            else:
                spec_args.append(
                    {"kind": "scalar", "dtype": arg.dtype.str, "hex": arg.tobytes().hex()}
                )
        artifact = fn.module._artifact
        spec = {
            "library": fn.module.library_path,
            "library_size": artifact.size if artifact else None,
            "library_sha256": artifact.sha256 if artifact else None,
            "index": fn._index,
            "grid": list(grid3),
            "block": list(block3),
            "shared_mem": shared_mem,
            "nthreads": nthreads,
            "args": spec_args,
        }
        (tmp / "spec.json").write_text(json.dumps(spec))
        worker = pathlib.Path(__file__).with_name("_worker.py")
        proc = subprocess.run(
            [sys.executable, str(worker), str(tmp)], capture_output=True, text=True, check=False
        )
        # the kernel's printf output, like a device printf after synchronisation
        if proc.stdout:
            sys.stdout.write(proc.stdout)
        report_path = tmp / "report.txt"
        report = report_path.read_text() if report_path.exists() else ""
        if proc.returncode == _abi.EXIT_FAULT and report:
            raise fault_error(fn, report, args)
        if proc.returncode == _abi.EXIT_DAMAGED:
            raise EmulatorError(
                f"kernel {fn.name}: {proc.stderr.strip()}. The file changed on disk after "
                f"this process loaded it; load_module() in a new process rebuilds it."
            )
        if proc.returncode != 0:
            raise EmulatorError(
                f"kernel {fn.name}: the checked-mode subprocess failed (exit status "
                f"{proc.returncode}):\n{proc.stderr.strip()}"
            )
        result = json.loads((tmp / "result.json").read_text())
        record_stats(result["stats"], result["fiber_impl"])
        if result["rc"] != _abi.RC_OK:
            fn._raise(result["rc"], result["message"])
        for i, code in enumerate(fn.params):
            if split_code(code)[0] and spec_args[i]["kind"] == "array" and args[i].size:
                out = np.load(tmp / f"out{i}.npy", allow_pickle=False)
                # np.save writes ml_dtypes' bfloat16 as raw 2-byte records ('V2'): its bits
                np.copyto(args[i], out.view(args[i].dtype) if out.dtype.kind == "V" else out)

def fault_error(fn, report: str, args) -> EmulatorError:
    """The exception for a checked-mode fault report."""
    fields = dict(tok.split("=", 1) for tok in report.split() if "=" in tok)
    placement = fields.get("pass", "").replace("_", " ")
    where = (
        f"by thread ({fields.get('thread')}) of block ({fields.get('block')})"
        if fields.get("in_kernel") == "1"
        else "outside any kernel thread"
    )
    kind = fields.get("kind")
    if kind == "oob":
        param = int(fields["param"])
        offset = int(fields["offset"])
        nbytes = int(fields["nbytes"])
        access = fields.get("access", "access")
        if param < 0:
            return OutOfBoundsError(
                f"kernel {fn.name}: dynamic shared memory: out-of-bounds {access} at byte "
                f"offset {offset} of the {nbytes}-byte buffer (shared_mem={nbytes}) {where}"
            )
        code = fn.params[param]
        itemsize = args[param].itemsize
        if offset == nbytes:
            rel = "the first byte past the end"
        elif offset > nbytes:
            rel = f"{offset - nbytes} bytes past the end"
        else:
            rel = f"{-offset} bytes before the start"
        element = offset // itemsize
        return OutOfBoundsError(
            f"kernel {fn.name}: parameter {param} ({code}): out-of-bounds {access} at "
            f"byte offset {offset} ({rel}; element index {element} of an array of "
            f"{args[param].size} elements, {nbytes} bytes) {where} [{placement}]"
        )
    if kind == "stack":
        return EmulatorError(
            f"kernel {fn.name}: stack overflow {where}: a thread used more than "
            f"{fields.get('stack_kib')} KiB of stack (set GPUCONV_EMULATE_STACK_KIB to a larger power of two)"
        )
    return EmulatorError(
        f"kernel {fn.name}: invalid memory {fields.get('access', 'access')} at address "
        f"{fields.get('address')} {where}, not inside any array argument (signal "
        f"{fields.get('signal')})"
    )
