"""The race check: a launch run four times in different thread/block orders, with garbage in
shared memory, whose outputs must agree; its first run is tracked (lost updates and
cross-block reads, gpuconv/_emulator/_track.py). The fourth runs one warp at a time through
each barrier interval (the last warp first), so that a missing barrier between warps -- whose
writes and reads otherwise land in program order, the warps meeting at every collective --
changes the output."""

from __future__ import annotations

import numpy as np

from . import _abi, _track
from ._abi import split_code
from ._errors import RaceError
from ._modes import record_stats

#: race check: relative tolerance by element type when a launch used floating-point atomicAdd
RACE_RTOL = {"f16": 1e-3, "f32": 1e-5, "c64": 1e-5, "f64": 1e-12, "c128": 1e-12}
_RACE_SEED = 0x5EED_CAFE_F00D_1234


def copy_args(fn, args):
    """Fresh copies of the array arguments; an array passed twice stays one array."""
    copies = {}
    out = []
    for code, arg in zip(fn.params, args):
        if split_code(code)[0]:
            key = (arg.ctypes.data, arg.nbytes)
            if key not in copies:
                copies[key] = arg.copy()
            out.append(copies[key])
        else:
            out.append(arg)
    return tuple(out)

def run(fn, grid3, block3, shared_mem, args, write_back):
    """Race-check one launch of ``fn`` (an EmuFunction); raises RaceError."""
    # Each run also fills shared memory with a different byte before every block, so a read
    # of shared memory that no thread wrote shows up as a difference too.
    orders = (
        ("forward", _abi.fill_flag(0xFF)),
        ("reverse", _abi.FLAG_ORDER_REVERSE | _abi.fill_flag(0x7F)),
        ("shuffled", _abi.FLAG_ORDER_SHUFFLE | _abi.fill_flag(0xA5)),
        ("warp-serial", _abi.FLAG_WARP_SERIAL | _abi.FLAG_ORDER_REVERSE | _abi.fill_flag(0x5A)),
    )
    runs = []
    used_float_atomics = False
    for label, order_flag in orders:
        copies = copy_args(fn, args)
        flags = _abi.FLAG_SERIAL | _abi.FLAG_FILL_SHARED | order_flag
        if label == "forward":  # the track build: lost updates, cross-block read/write
            s = _track.launch(fn, grid3, block3, shared_mem, copies, flags, _RACE_SEED,
                              race=True)
            record_stats(s, fn.module._lib.fiber_impl)
        else:
            s = fn._run(grid3, block3, shared_mem, copies, flags, 1, seed=_RACE_SEED)
        used_float_atomics |= s["float_atomics"] > 0
        runs.append((label, copies))
    ref_label, ref = runs[0]
    for label, other in runs[1:]:
        for i, code in enumerate(fn.params):
            is_ptr, _, elem = split_code(code)
            if not is_ptr:
                continue
            a, b = ref[i].reshape(-1), other[i].reshape(-1)
            if used_float_atomics and elem in RACE_RTOL:
                rtol = RACE_RTOL[elem]
                scale = float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0))
                close = np.isclose(a, b, rtol=rtol, atol=rtol * scale, equal_nan=True)
                bad = np.flatnonzero(~close)
                how = f"beyond rtol={rtol} (the launch used floating-point atomicAdd)"
            else:
                bytes_a = a.view(np.uint8).reshape(a.size, a.itemsize)
                bytes_b = b.view(np.uint8).reshape(b.size, b.itemsize)
                bad = np.flatnonzero(np.any(bytes_a != bytes_b, axis=1))
                how = "bit for bit"
            if bad.size:
                j = int(bad[0])
                raise RaceError(
                    f"kernel {fn.name}: parameter {i} ({code}) differs {how} between "
                    f"{ref_label} and {label} thread/block order: first at flat index {j} "
                    f"({a[j].item()!r} vs {b[j].item()!r}; {bad.size} of {a.size} elements "
                    f"differ). "
                    f"The output depends on the order in which threads run: a missing "
                    f"__syncthreads(), a read of shared memory that no thread wrote (each run "
                    f"fills shared memory with different garbage), or threads writing the "
                    f"same element."
                )
    if write_back:
        for i, code in enumerate(fn.params):
            if split_code(code)[0] and args[i].size:
                np.copyto(args[i], ref[i])
