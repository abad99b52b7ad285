"""``python -m gpuconv``: report the backends and check every operation on each of them.

``python -m gpuconv``          runs each operation once on random float32 inputs on every
                               available backend, compares it with the NumPy backend in
                               float64, prints a table, and exits 1 on a mismatch.
``python -m gpuconv bench``    the benchmark (see ``gpuconv.bench``; ``--help`` for options).
"""

from __future__ import annotations

import sys
import time

import numpy as np

import gpuconv
from gpuconv import grad

# relative tolerance of a float32 run against the float64 reference
TOLERANCE = 1e-4


def _cases(rng):
    """(op name, callable, positional arrays, kwargs) for one call of every operation."""
    r = rng.standard_normal
    off = rng.uniform(-1.5, 1.5, (2, 2 * 2 * 9, 9, 11))
    return [
        ("conv1d", gpuconv.conv1d, (r((2, 4, 37)), r((6, 2, 5)), r(6)),
         dict(stride=2, padding="same", groups=2)),
        ("conv2d", gpuconv.conv2d, (r((2, 3, 17, 19)), r((8, 3, 3, 3)), r(8)),
         dict(padding=1, padding_mode="reflect")),
        ("conv3d", gpuconv.conv3d, (r((1, 4, 7, 8, 9)), r((4, 2, 3, 3, 3)), None),
         dict(padding=((1, 0), (1, 1), (0, 2)), dilation=(1, 2, 1), groups=2,
              padding_mode="circular")),
        ("conv_transpose2d", gpuconv.conv_transpose2d, (r((2, 6, 9, 7)), r((6, 2, 4, 4)), r(4)),
         dict(stride=2, padding=1, groups=2)),
        ("conv_transpose3d", gpuconv.conv_transpose3d, (r((1, 2, 4, 5, 3)), r((2, 3, 3, 2, 3)), None),
         dict(stride=(2, 1, 3), output_padding=(1, 0, 2), dilation=(1, 2, 1))),
        ("depthwise_conv", gpuconv.depthwise_conv, (r((2, 5, 21, 18)), r((10, 1, 3, 3)), r(10)),
         dict(padding=1, stride=(1, 2))),
        ("separable_conv", gpuconv.separable_conv,
         (r((2, 4, 15, 13)), r((4, 1, 3, 3)), r((7, 4, 1, 1)), r(7)), dict(padding="same")),
        ("deform_conv2d", gpuconv.deform_conv2d,
         (r((2, 4, 9, 11)), off, r((6, 2, 3, 3)), r(6)),
         dict(padding=1, mask=rng.uniform(0, 1, (2, 2 * 9, 9, 11)))),
        ("convolve", gpuconv.convolve, (r(1001), r(31)), dict(mode="same")),
        # gradients (gpuconv.grad): the same kinds of call, backwards
        ("grad.conv_input", grad.conv_input, ((2, 3, 17, 19), r((8, 3, 3, 3)), r((2, 8, 17, 19))),
         dict(padding=1, padding_mode="reflect")),
        ("grad.conv_weight", grad.conv_weight, (r((2, 4, 37)), (6, 2, 5), r((2, 6, 19))),
         dict(stride=2, padding="same", groups=2)),
        ("grad.conv_transpose_input", grad.conv_transpose_input,
         ((2, 6, 9, 7), r((6, 2, 4, 4)), r((2, 4, 18, 14))), dict(stride=2, padding=1, groups=2)),
        ("grad.depthwise_conv_weight", grad.depthwise_conv_weight,
         (r((2, 5, 21, 18)), (10, 1, 3, 3), r((2, 10, 21, 9))), dict(padding=1, stride=(1, 2))),
        ("grad.deform_conv2d", grad.deform_conv2d,
         (r((2, 4, 9, 11)), off, r((6, 2, 3, 3)), r((2, 6, 9, 11))),
         dict(padding=1, mask=rng.uniform(0, 1, (2, 2 * 9, 9, 11)))),
        ("correlate", gpuconv.correlate,
         (r(257) + 1j * r(257), r(40) + 1j * r(40)), dict(mode="full")),
    ]


def _cast(a, dtype):
    if a is None or not isinstance(a, np.ndarray):
        return a
    return a.astype(np.complex64 if np.iscomplexobj(a) else dtype)


def _shapes(arrays):
    return " ".join("x".join(map(str, getattr(a, "shape", a))) for a in arrays if a is not None)


def _parts(result):
    """The arrays of a result: itself, or the non-None members of a gradient tuple."""
    return [p for p in result if p is not None] if isinstance(result, tuple) else [result]


def check(stream=sys.stdout) -> int:
    """Run every operation on every available backend; return the number of mismatches."""
    report = gpuconv.available_backends()
    print("gpuconv", gpuconv.__version__, file=stream)
    for name, status in report.items():
        print(f"  backend {name:8s} {status}", file=stream)
    rng = np.random.default_rng(0)
    cases = _cases(rng)
    print(f"\n{'op':26s} {'shapes':32s} {'backend':8s} {'max rel err':>12s} {'time':>10s}  ok",
          file=stream)
    failures = 0
    for op, func, arrays, kwargs in cases:
        with gpuconv.use_backend("numpy"):
            reference = func(*arrays, **kwargs)
        reference = _parts(reference)
        for name, status in report.items():
            if status != "available":
                continue
            args = [_cast(a, np.float32) for a in arrays]
            kw = {k: _cast(v, np.float32) for k, v in kwargs.items()}
            if name == "cuda":
                import cupy

                args = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
                kw = {k: cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
            start = time.perf_counter()
            try:
                with gpuconv.use_backend(name):
                    got = _parts(func(*args, **kw))
                if name == "cuda":
                    got = [cupy.asnumpy(g) for g in got]
            except NotImplementedError as exc:
                print(f"{op:26s} {_shapes(arrays):32s} {name:8s} {'-':>12s} {'-':>10s}  "
                      f"not built: {exc}", file=stream)
                continue
            elapsed = time.perf_counter() - start
            err = max(float(np.abs(g - ref).max()) / (float(np.abs(ref).max()) or 1.0)
                      for g, ref in zip(got, reference))
            ok = err <= TOLERANCE and [g.shape for g in got] == [ref.shape for ref in reference]
            failures += not ok
            print(f"{op:26s} {_shapes(arrays):32s} {name:8s} {err:12.2e} "
                  f"{elapsed * 1e3:8.2f}ms  {'ok' if ok else 'MISMATCH'}", file=stream)
    print(f"\n{'all operations match the reference' if not failures else f'{failures} mismatches'}",
          file=stream)
    return failures


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        from . import bench

        return bench.main(argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv:
        print(f"unknown command {argv[0]!r}; try 'python -m gpuconv --help'", file=sys.stderr)
        return 2
    return 1 if check() else 0


if __name__ == "__main__":
    sys.exit(main())
