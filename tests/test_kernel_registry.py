"""The kernel registry (gpuconv._kernels) and the launch helper (gpuconv._launch)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from gpuconv import _kernels
from gpuconv._launch import Kernel, launch

# ----------------------------------------------------------------------------- registry


def test_every_family_file_exists_and_declares_its_template():
    for family in _kernels.FAMILIES.values():
        path = _kernels.source_path(family.file)
        assert path.is_file(), path
        assert family.template in _kernels._templates(family.file)


def test_name_expressions_come_from_the_one_type_table():
    names = _kernels.name_expressions("convolve.cu")
    assert len(names) == len(set(names)) == 2 * 4 * 2 * 2  # families x dtypes x index x flag
    assert "correlate1d<gpuconv::complex<double>, long long, true>" in names
    assert "correlate1d_reduce<float, int, false>" in names
    family = _kernels.FAMILIES["correlate1d"]
    assert family.name_expression(np.complex64, np.int32, True) == (
        "correlate1d<gpuconv::complex<float>, int, true>"
    )
    with pytest.raises(TypeError, match=r"dtype=int8 is not instantiated"):
        family.name_expression(np.int8, np.int32, True)
    with pytest.raises(ValueError, match=r"flag value 2 must be one of"):
        family.name_expression(np.float32, np.int32, 2)


def test_signature_substitutes_template_parameters():
    name = "correlate1d<gpuconv::complex<double>, long long, false>"
    assert _kernels.signature("convolve.cu", name) == (
        "const ptr:c128", "i64", "const ptr:c128", "i64", "ptr:c128", "i64", "i64", "i64",
    )
    assert _kernels.signature("convolve.cu", "correlate1d_reduce<float, int, true>") == (
        "const ptr:f32", "i32", "const ptr:f32", "i32", "ptr:f32", "i32", "i32",
    )
    with pytest.raises(ValueError, match=r"2 template arguments, but correlate1d takes 3"):
        _kernels.signature("convolve.cu", "correlate1d<float, int>")
    with pytest.raises(LookupError, match=r"no '__global__' template named 'nope'"):
        _kernels.signature("convolve.cu", "nope<float>")


def test_signature_parser_on_a_planted_source(tmp_path, monkeypatch):
    (tmp_path / "common.cuh").write_text("// header\n")
    (tmp_path / "k.cu").write_text(
        '#include "common.cuh"\n'
        "/* template <class X> __global__ void decoy(X* p); */\n"
        "template <class T, class Index, int N = 3>\n"
        "__global__ __launch_bounds__(256) void k(const T* __restrict__ x, // (n,)\n"
        "    T* const y, Index n, unsigned int flags, double scale, bool on) {}\n"
    )
    monkeypatch.setattr(_kernels, "kernel_dir", lambda: tmp_path)
    _kernels._templates.cache_clear()
    _kernels.signature.cache_clear()
    try:
        assert _kernels.signature("k.cu", "k<__half, long long, 4>") == (
            "const ptr:f16", "ptr:f16", "i64", "u32", "f64", "bool",
        )
        assert "decoy" not in _kernels._templates("k.cu")
    finally:
        _kernels._templates.cache_clear()
        _kernels.signature.cache_clear()


def test_index_dtype_follows_byte_extents():
    small = np.zeros(4, np.float32)

    class Big:  # stands in for an array of 2**31 bytes
        nbytes = 2**31

    assert _kernels.index_dtype(small) == np.int32
    assert _kernels.index_dtype(small, Big()) == np.int64
    assert _kernels.index_dtype(small, max_index=2**31 - 1) == np.int32
    assert _kernels.index_dtype(small, max_index=2**31) == np.int64


def test_source_define_reads_the_cu_default():
    text = _kernels.source_path("convolve.cu").read_text()
    value = _kernels.source_define("convolve.cu", "GPUCONV_CORRELATE1D_OUTPUTS_PER_THREAD")
    assert f"#define GPUCONV_CORRELATE1D_OUTPUTS_PER_THREAD {value}" in text


def test_inlined_source_carries_every_header_change(tmp_path, monkeypatch):
    """The CUDA backend compiles inlined_source(); CuPy keys its cache on that text, so an
    edit of common.cuh must change it (cupy/cupy#941)."""
    for name in ("common.cuh", "convolve.cu"):
        shutil.copy(_kernels.source_path(name), tmp_path / name)
    monkeypatch.setattr(_kernels, "kernel_dir", lambda: tmp_path)
    before = _kernels.inlined_source("convolve.cu")
    assert '#include "common.cuh"' not in before
    assert '#line 1 "common.cuh"' in before and "struct alignas" in before
    assert '#include "cuda_shim.h"' in before  # not a kernel-dir file: left for g++ only
    # the line after the include is numbered as in the original file
    original = (tmp_path / "convolve.cu").read_text().splitlines()
    include_line = next(i for i, line in enumerate(original, 1) if '#include "common.cuh"' in line)
    assert f'#line {include_line + 1} "convolve.cu"' in before
    with open(tmp_path / "common.cuh", "a") as f:
        f.write("\n// edited\n")
    assert _kernels.inlined_source("convolve.cu") != before


def test_kernel_dir_is_found():
    assert (_kernels.kernel_dir() / "common.cuh").is_file()


# ------------------------------------------------------------------- signatures vs the emulator


@pytest.mark.parametrize("file", _kernels.files())
def test_parsed_signatures_equal_the_emulators(file):
    """The CUDA path converts scalars with the parsed signature; the emulator reads the real
    C++ signature. They must agree for every instantiation."""
    from gpuconv.backends.device import unavailable_reason

    reason = unavailable_reason("emulate")
    if reason:
        pytest.skip(reason)
    from gpuconv import _emulator

    module = _emulator.load_module(_kernels.source_path(file), _kernels.name_expressions(file),
                                   include_dirs=[_kernels.kernel_dir()])
    for name in _kernels.name_expressions(file):
        assert tuple(module.get_function(name).params) == _kernels.signature(file, name), name


# ----------------------------------------------------------------------------- launch helper


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, grid, block, args, *, shared_mem=0):
        self.calls.append((grid, block, args, shared_mem))


def _kernel(params=("const ptr:f32", "i32", "ptr:f64", "i64", "f32", "c64", "u32", "bool")):
    return Kernel("k<float>", tuple(params), Recorder(), np.ndarray)


def _args():
    return [np.zeros(3, np.float32), 5, np.zeros(2), 7, 1.5, 2 + 1j, 3, True]


def test_launch_converts_scalars_to_the_exact_parameter_types():
    kernel = _kernel()
    launch(kernel, grid=2, block=(32, 2), args=_args(), shared_mem=128)
    grid, block, args, shared = kernel.function.calls[0]
    assert grid == (2, 1, 1) and block == (32, 2, 1) and shared == 128
    assert [type(a) for a in args[1:2] + args[3:]] == [
        np.int32, np.int64, np.float32, np.complex64, np.uint32, np.bool_,
    ]
    assert args[1] == 5 and args[3] == 7 and args[5] == np.complex64(2 + 1j)


@pytest.mark.parametrize(
    "position, value, error, match",
    [
        (1, 2.5, TypeError, r"argument 1 \(0-based, parameter type i32\) must be an integer"),
        (1, True, TypeError, r"argument 1 .* must be an integer, got bool"),
        (1, 2**31, ValueError, r"argument 1 .*: 2147483648 is outside \[-2147483648, 2147483647\]"),
        (6, -1, ValueError, r"argument 6 .*: -1 is outside \[0, 4294967295\]"),
        (4, "x", TypeError, r"argument 4 .* must be a real number"),
        (4, 1j, TypeError, r"argument 4 .* must be a real number"),
        (7, 1, TypeError, r"argument 7 .* must be a bool"),
        (0, 5, TypeError,
         r"argument 0 \(0-based, parameter type const ptr:f32\) must be a numpy.ndarray"),
        (0, np.zeros(3, np.float64), TypeError,
         r"argument 0 .* must have dtype float32, got float64"),
        (2, np.zeros(4)[::2], ValueError, r"argument 2 .* must be C-contiguous"),
        (3, np.zeros(2), TypeError, r"argument 3 .* must be a scalar"),
    ],
)
def test_launch_rejects_bad_arguments(position, value, error, match):
    args = _args()
    args[position] = value
    kernel = _kernel()
    with pytest.raises(error, match=match):
        launch(kernel, grid=1, block=32, args=args)
    assert kernel.function.calls == []


def test_launch_rejects_misaligned_and_read_only_arrays():
    args = _args()
    read_only = np.zeros(2)
    read_only.flags.writeable = False
    args[2] = read_only
    with pytest.raises(ValueError, match=r"argument 2 .* written by the kernel but .* read-only"):
        launch(_kernel(), grid=1, block=32, args=args)
    raw = np.zeros(3 * 8 + 8, np.uint8)
    offset = 1 if raw.ctypes.data % 8 == 0 else 8 - raw.ctypes.data % 8 + 1
    args[2] = np.ndarray((3,), dtype=np.float64, buffer=raw, offset=offset)
    with pytest.raises(ValueError, match=r"argument 2 .* not aligned to 8 bytes"):
        launch(_kernel(), grid=1, block=32, args=args)


def test_launch_rejects_wrong_argument_count():
    with pytest.raises(TypeError, match=r"k<float>: expected 8 arguments .* got 7"):
        launch(_kernel(), grid=1, block=32, args=_args()[:-1])


@pytest.mark.parametrize(
    "grid, block, shared, match",
    [
        (1, 1025, 0, r"block=\(1025, 1, 1\) exceeds the limit 1024 in dimension 0"),
        (1, (32, 64), 0, r"block=\(32, 64, 1\) has 2048 threads; at most 1024"),
        (1, (1, 1, 65), 0, r"exceeds the limit 64 in dimension 2"),
        ((1, 65536), 32, 0, r"grid=\(1, 65536, 1\) exceeds the limit 65535 in dimension 1"),
        (2**31, 32, 0, r"exceeds the limit 2147483647 in dimension 0"),
        (0, 32, 0, r"grid=0 must be positive"),
        (1, (32, 0), 0, r"block=\(32, 0\) must be positive"),
        (1, 32, 48 * 1024 + 1, r"shared_mem=49153 bytes must be in \[0, 49152\]"),
        (1, 32, -1, r"shared_mem=-1 bytes"),
        ((1, 1, 1, 1), 32, 0, r"grid=\(1, 1, 1, 1\) must be an int or 1 to 3 ints"),
    ],
)
def test_launch_checks_limits(grid, block, shared, match):
    kernel = _kernel()
    with pytest.raises(ValueError, match=match):
        launch(kernel, grid=grid, block=block, args=_args(), shared_mem=shared)
    assert kernel.function.calls == []


def test_launch_grid_and_block_are_keyword_only():
    with pytest.raises(TypeError):
        launch(_kernel(), 1, 32, _args())
