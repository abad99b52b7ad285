"""``python -m gpuconv``: report the backends and check every operation on each of them.

``python -m gpuconv``            runs each operation (and gradient) on small random float32
                                 inputs on every available backend, compares each result with
                                 a naive float64 loop reference (``gpuconv._reference``: plain
                                 loops that share no code with the backends), prints a table,
                                 and exits 1 on a mismatch.
``python -m gpuconv bench``      the benchmark (see ``gpuconv.bench``; ``--help`` for options).
``python -m gpuconv --version``  prints the version.

The table's columns: ``first call`` is the first call of the operation on that backend; it
includes compiling the kernels when they are not in the cache (g++ for ``emulate``, NVRTC for
``cuda``). ``run`` is a second call of the same operation, with everything compiled. ``max rel
err`` is the largest absolute difference from the reference divided by the reference's largest
magnitude.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import gpuconv
from gpuconv import _reference as ref
from gpuconv import grad

# relative tolerance of a float32 run against the float64 loop reference
TOLERANCE = 1e-4

#: What every row is compared against (printed above the table).
REFERENCE = "naive float64 loops (gpuconv._reference), independent of every backend"


def _cases(rng):
    """(op name, callable, positional arrays, kwargs, reference) for every operation.

    Shapes are small: the reference is Python loops over output positions and kernel taps.
    """
    r = rng.standard_normal
    off = rng.uniform(-1.5, 1.5, (1, 2 * 2 * 9, 9, 11))
    mask = rng.uniform(0, 1, (1, 2 * 9, 9, 11))
    return [
        ("conv1d", gpuconv.conv1d, (r((2, 4, 37)), r((6, 2, 5)), r(6)),
         dict(stride=2, padding="same", groups=2), ref.conv),
        ("conv2d", gpuconv.conv2d, (r((2, 3, 17, 19)), r((8, 3, 3, 3)), r(8)),
         dict(padding=1, padding_mode="reflect"), ref.conv),
        ("conv3d", gpuconv.conv3d, (r((1, 4, 5, 6, 7)), r((4, 2, 3, 3, 3)), None),
         dict(padding=((1, 0), (1, 1), (0, 2)), dilation=(1, 2, 1), groups=2,
              padding_mode="circular"), ref.conv),
        ("conv_transpose2d", gpuconv.conv_transpose2d, (r((2, 6, 9, 7)), r((6, 2, 4, 4)), r(4)),
         dict(stride=2, padding=1, groups=2), ref.conv_transpose),
        ("conv_transpose3d", gpuconv.conv_transpose3d, (r((1, 2, 4, 5, 3)), r((2, 3, 3, 2, 3)), None),
         dict(stride=(2, 1, 3), output_padding=(1, 0, 2), dilation=(1, 2, 1)), ref.conv_transpose),
        ("depthwise_conv", gpuconv.depthwise_conv, (r((2, 5, 11, 10)), r((10, 1, 3, 3)), r(10)),
         dict(padding=1, stride=(1, 2)), ref.depthwise_conv),
        ("separable_conv", gpuconv.separable_conv,
         (r((2, 4, 15, 13)), r((4, 1, 3, 3)), r((7, 4, 1, 1)), r(7)), dict(padding="same"),
         ref.separable_conv),
        ("deform_conv2d", gpuconv.deform_conv2d,
         (r((1, 4, 9, 11)), off, r((6, 2, 3, 3)), r(6)), dict(padding=1, mask=mask),
         ref.deform_conv2d),
        ("convolve", gpuconv.convolve, (r(301), r(31)), dict(mode="same"), ref.convolve),
        # gradients (gpuconv.grad): the same kinds of call, backwards
        ("grad.conv_input", grad.conv_input, ((2, 3, 17, 19), r((8, 3, 3, 3)), r((2, 8, 17, 19))),
         dict(padding=1, padding_mode="reflect"), ref.conv_input),
        ("grad.conv_weight", grad.conv_weight, (r((2, 4, 37)), (6, 2, 5), r((2, 6, 19))),
         dict(stride=2, padding="same", groups=2), ref.conv_weight),
        ("grad.conv_transpose_input", grad.conv_transpose_input,
         ((2, 6, 9, 7), r((6, 2, 4, 4)), r((2, 4, 18, 14))), dict(stride=2, padding=1, groups=2),
         ref.conv_transpose_input),
        ("grad.depthwise_conv_weight", grad.depthwise_conv_weight,
         (r((2, 5, 11, 10)), (10, 1, 3, 3), r((2, 10, 11, 5))), dict(padding=1, stride=(1, 2)),
         ref.depthwise_conv_weight),
        ("grad.deform_conv2d", grad.deform_conv2d,
         (r((1, 4, 9, 11)), off, r((6, 2, 3, 3)), r((1, 6, 9, 11))), dict(padding=1, mask=mask),
         ref.deform_conv2d_grads),
        ("correlate", gpuconv.correlate,
         (r(257) + 1j * r(257), r(40) + 1j * r(40)), dict(mode="full"), ref.correlate),
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


def _format_time(seconds: float) -> str:
    """At most 9 characters: ``123.45 ms`` below a second, ``12.34 s`` above."""
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


#: The table's columns: (title, alignment); the last one (status) is free-width.
COLUMNS = [("op", "<"), ("shapes", "<"), ("backend", "<"), ("max rel err", ">"),
           ("first call", ">"), ("run", ">"), ("", "<")]
TIME_WIDTH = 9


def _row(cells, widths) -> str:
    parts = [f"{cell:{align}{width}}" for cell, width, (_, align) in zip(cells, widths, COLUMNS)]
    return "  ".join(parts).rstrip()


def _sync(name):
    if name == "cuda":
        import cupy

        cupy.cuda.Device().synchronize()


def check(stream=sys.stdout, ops=None) -> int:
    """Run every operation on every available backend; return the number of mismatches.

    Each result is compared with the naive float64 loop reference of ``gpuconv._reference``
    (computed once per operation from the same float64 inputs that the backends get cast to
    float32). Each operation is called twice per backend, and both calls are timed: the first
    includes compiling the kernels when they are not cached, the second is the run time.
    ``ops``, if given, limits the check to the operations of those names.
    """
    report = gpuconv.available_backends()
    print("gpuconv", gpuconv.__version__, file=stream)
    for name, status in report.items():
        print(f"  backend {name:8s} {status}", file=stream)
    available = [name for name, status in report.items() if status == "available"]
    rng = np.random.default_rng(0)
    cases = [case for case in _cases(rng) if ops is None or case[0] in ops]
    # column widths from the content, known before anything runs (rows print as they finish)
    widths = [max(len(COLUMNS[0][0]), *(len(c[0]) for c in cases)),
              max(len(COLUMNS[1][0]), *(len(_shapes(c[2])) for c in cases)),
              max(len(COLUMNS[2][0]), *(len(n) for n in report)),
              max(len(COLUMNS[3][0]), 8),
              max(len(COLUMNS[4][0]), TIME_WIDTH),
              max(len(COLUMNS[5][0]), TIME_WIDTH),
              0]
    print(f"\neach row: the backend in float32 against {REFERENCE}; ok if max rel err <= "
          f"{TOLERANCE:g}", file=stream)
    print("first call: includes compiling the kernels when not cached; run: a second call",
          file=stream)
    print("\n" + _row([title for title, _ in COLUMNS[:-1]] + ["ok"], widths), file=stream)
    failures = 0
    for op, func, arrays, kwargs, reference_func in cases:
        reference = _parts(reference_func(*arrays, **kwargs))
        for name in available:
            args = [_cast(a, np.float32) for a in arrays]
            kw = {k: _cast(v, np.float32) for k, v in kwargs.items()}
            if name == "cuda":
                import cupy

                args = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
                kw = {k: cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
            times = []
            with gpuconv.use_backend(name):
                for _ in range(2):      # first call (may compile), then the timed run
                    start = time.perf_counter()
                    got = _parts(func(*args, **kw))
                    _sync(name)
                    times.append(time.perf_counter() - start)
            if name == "cuda":
                got = [cupy.asnumpy(g) for g in got]
            same_shapes = [g.shape for g in got] == [r.shape for r in reference]
            err = (max(float(np.abs(g - r).max()) / (float(np.abs(r).max()) or 1.0)
                       for g, r in zip(got, reference)) if same_shapes else float("inf"))
            ok = same_shapes and err <= TOLERANCE
            failures += not ok
            status = "ok" if ok else ("MISMATCH" if same_shapes else "MISMATCH (shape)")
            print(_row([op, _shapes(arrays), name, f"{err:.2e}", _format_time(times[0]),
                        _format_time(times[1]), status], widths), file=stream)
    print(f"\n{'all operations match the reference' if not failures else f'{failures} mismatches'}",
          file=stream)
    return failures


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        from . import bench

        return bench.main(argv[1:])
    if argv and argv[0] == "--version":
        print("gpuconv", gpuconv.__version__)
        return 0
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv:
        print(f"unknown command {argv[0]!r}; try 'python -m gpuconv --help'", file=sys.stderr)
        return 2
    return 1 if check() else 0


if __name__ == "__main__":
    sys.exit(main())
