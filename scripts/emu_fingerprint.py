"""Fingerprint the emulator's outputs: a SHA-256 of every result of a fixed set of calls.

A refactor of the middle layer must leave kernel outputs bitwise the same. Run this before and
after (``python scripts/emu_fingerprint.py out.json``) and compare the two files with
``python scripts/emu_fingerprint.py --compare before.json after.json``. The calls cover every
forward operation and every gradient, three dtypes, odd sizes, stride, dilation, groups, each
padding mode, 'same', output_padding, offsets with and without a mask, and deterministic
weight gradients; each runs on the emulate backend (the kernels) and the NumPy backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

# One emulator worker thread: float atomicAdd in the non-deterministic gradients then adds in
# a fixed order, so their results can be fingerprinted too.
os.environ.setdefault("GPUCONV_EMULATE_THREADS", "1")

import numpy as np

import gpuconv
from gpuconv import grad


def _digest(result) -> str:
    parts = result if isinstance(result, tuple) else (result,)
    h = hashlib.sha256()
    for part in parts:
        if part is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(part)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _calls(dtype):
    rng = np.random.default_rng(1234)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x1, x2, x3 = r(2, 4, 13), r(2, 4, 9, 11), r(1, 4, 5, 6, 7)
    w2 = r(6, 2, 3, 2)
    for mode in ("zeros", "reflect", "replicate", "circular"):
        kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, padding_mode=mode)
        out = gpuconv.conv2d(x2, w2, r(6), **kw)
        yield f"conv2d/{mode}", lambda kw=kw: gpuconv.conv2d(x2, w2, None, **kw)
        g = r(*out.shape)
        yield f"conv_input/{mode}", lambda kw=kw, g=g: grad.conv_input(x2.shape, w2, g, **kw)
        for det in (False, True):
            yield (f"conv_weight/{mode}/{det}",
                   lambda kw=kw, g=g, det=det: grad.conv_weight(x2, w2.shape, g,
                                                               deterministic=det, **kw))
    yield "conv1d/same", lambda: gpuconv.conv1d(x1, r(5, 4, 4), r(5), padding="same",
                                               dilation=2)
    yield "conv3d", lambda: gpuconv.conv3d(x3, r(3, 4, 2, 3, 2), r(3), stride=(1, 2, 1),
                                          padding=(1, 0, 1))
    yield "conv2d/asym", lambda: gpuconv.conv2d(x2, r(5, 4, 3, 3),
                                               padding=((1, 0), (0, 2)))
    # transposed
    wt = r(4, 3, 3, 2)
    for groups in (1, 2):
        wt = r(4, 6 // groups, 3, 2)
        kw = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2),
                  groups=groups)
        out = gpuconv.conv_transpose2d(x2, wt, r(6), **kw)
        yield f"conv_transpose2d/{groups}", lambda kw=kw, wt=wt: gpuconv.conv_transpose2d(
            x2, wt, None, **kw)
        g = r(*out.shape)
        yield (f"conv_transpose_input/{groups}",
               lambda kw=kw, wt=wt, g=g: grad.conv_transpose_input(x2.shape, wt, g, **kw))
        for det in (False, True):
            yield (f"conv_transpose_weight/{groups}/{det}",
                   lambda kw=kw, wt=wt, g=g, det=det: grad.conv_transpose_weight(
                       x2, wt.shape, g, deterministic=det, **kw))
    yield "conv_transpose1d/same", lambda: gpuconv.conv_transpose1d(x1, r(4, 2, 3),
                                                                   padding="same")
    yield "conv_transpose3d", lambda: gpuconv.conv_transpose3d(x3, r(4, 2, 2, 2, 3), r(2),
                                                              stride=2)
    # depthwise and separable
    wd = r(8, 1, 3, 3)
    for mode in ("zeros", "reflect", "circular"):
        kw = dict(stride=2, padding=1, dilation=(1, 2), padding_mode=mode)
        out = gpuconv.depthwise_conv(x2, wd, r(8), **kw)
        yield f"depthwise/{mode}", lambda kw=kw: gpuconv.depthwise_conv(x2, wd, None, **kw)
        g = r(*out.shape)
        yield (f"depthwise_input/{mode}",
               lambda kw=kw, g=g: grad.depthwise_conv_input(x2.shape, wd, g, **kw))
        for det in (False, True):
            yield (f"depthwise_weight/{mode}/{det}",
                   lambda kw=kw, g=g, det=det: grad.depthwise_conv_weight(
                       x2, wd.shape, g, deterministic=det, **kw))
    wp = r(5, 8, 1, 1)
    out = gpuconv.separable_conv(x2, wd, wp, r(5), padding=1)
    yield "separable", lambda: gpuconv.separable_conv(x2, wd, wp, r(5), padding=1)
    gs = r(*out.shape)
    yield "separable_grad", lambda: tuple(grad.separable_conv(x2, wd, wp, gs, padding=1))
    # deformable
    wdef = r(6, 2, 3, 3)
    off = (r(2, 2 * 2 * 9, 5, 6) * 2).astype(dtype)
    off[:, :4] = np.round(off[:, :4])  # integer sampling points
    mask = r(2, 2 * 9, 5, 6)
    kw = dict(stride=2, padding=1, dilation=1)
    for m in (None, mask):
        tag = "v1" if m is None else "v2"
        yield f"deform/{tag}", lambda m=m: gpuconv.deform_conv2d(x2[:, :4], off, wdef, r(6),
                                                                mask=m, **kw)
        g = r(2, 6, 5, 6)
        yield f"deform_grad/{tag}", lambda m=m, g=g: tuple(grad.deform_conv2d(
            x2[:, :4], off, wdef, g, mask=m, **kw))
    # NumPy's convolve / correlate
    a, v = r(37), r(6)
    for mode in ("full", "same", "valid"):
        yield f"convolve/{mode}", lambda mode=mode: gpuconv.convolve(a, v, mode)
        yield f"correlate/{mode}", lambda mode=mode: gpuconv.correlate(a, v, mode)
    yield "conv_bias", lambda: grad.conv_bias(r(2, 3, 4, 5))


def fingerprint() -> dict[str, str]:
    result = {}
    for backend in ("emulate", "numpy"):
        for dtype in (np.float64, np.float32, np.float16):
            calls = list(_calls(dtype))  # arrays drawn once per dtype, in a fixed order
            with gpuconv.use_backend(backend):
                for name, call in calls:
                    result[f"{backend}/{np.dtype(dtype).name}/{name}"] = _digest(call())
    return result


def main(argv: list[str]) -> int:
    if argv[:1] == ["--compare"]:
        before, after = (json.load(open(p)) for p in argv[1:3])
        differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        for k in differ:
            print("differs:", k)
        print(f"{len(before)} calls before, {len(after)} after, {len(differ)} differ")
        return 1 if differ else 0
    fp = fingerprint()
    with open(argv[0], "w") as f:
        json.dump(fp, f, indent=1, sort_keys=True)
    print(f"{len(fp)} fingerprints written to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
