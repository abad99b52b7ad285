"""Every registered kernel instantiation compiles with NVRTC for sm_75, sm_80 and sm_90 -- no
GPU needed -- and no performance-critical kernel spills registers.

Needs ``cuda-bindings``, ``nvidia-cuda-nvrtc`` and ``nvidia-cuda-runtime`` (for cuda_fp16.h);
without them every test here is skipped with the reason.
"""

from __future__ import annotations

import pytest

from gpuconv import _kernels, _nvrtc

_reason = _nvrtc.unavailable_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"NVRTC unavailable: {_reason}")

_results: dict[tuple[str, str], _nvrtc.CompileResult] = {}


def compiled(file: str, arch: str) -> _nvrtc.CompileResult:
    """Compile once per (file, arch) for the whole session."""
    key = (file, arch)
    if key not in _results:
        _results[key] = _nvrtc.compile_file(file, arch)
    return _results[key]


CASES = [(file, arch) for file in _kernels.files() for arch in _nvrtc.ARCHS]


@pytest.mark.parametrize("file, arch", CASES)
def test_every_instantiation_compiles(file, arch):
    result = compiled(file, arch)
    for name in _kernels.name_expressions(file):
        assert name in result.lowered_names, name
        assert name in result.resources, f"ptxas reported nothing for {name}"
        assert result.resources[name].registers > 0
    assert result.cubin[:4] == b"\x7fELF"


@pytest.mark.parametrize("file, arch", CASES)
def test_critical_kernels_do_not_spill(file, arch):
    result = compiled(file, arch)
    critical = [f for f in _kernels.FAMILIES.values() if f.file == file and f.critical]
    spilling = [
        result.resources[name] for family in critical for name in family.instantiations()
        if result.resources[name].spills
    ]
    assert not spilling, "register spills in critical kernels:\n" + _nvrtc.format_report(spilling)


def test_spill_check_can_fail():
    """With registers capped at 16, ptxas must spill, and the parsed report must show it."""
    result = _nvrtc.compile_file("convolve.cu", "sm_80", options=("--maxrregcount=16",))
    name = "correlate1d<gpuconv::complex<double>, long long, false>"
    assert result.resources[name].spills, result.log


BAD_SOURCE = """\
template <class T>
__global__ void broken(T* x)
{
    x[threadIdx.x] = undeclared_name;
}
"""


def test_a_kernel_that_does_not_compile_fails_loudly():
    with pytest.raises(_nvrtc.NvrtcCompileError) as info:
        _nvrtc.compile_source(BAD_SOURCE, ["broken<float>"], "sm_80", filename="bad.cu")
    message = str(info.value)
    assert "bad.cu(4)" in message and "undeclared_name" in message
    assert "sm_80" in message


def test_cuda_fp16_is_found_and_common_cuh_compiles_for_half():
    """common.cuh includes cuda_fp16.h under NVRTC; acc_t<__half> is float."""
    source = (_kernels.source_path("common.cuh").read_text() + """
template <class T>
__global__ void half_sum(const T* __restrict__ x, T* __restrict__ out, int n)
{
    static_assert(sizeof(gpuconv::acc_t<T>) == 4, "__half accumulates in float");
    gpuconv::acc_t<T> acc = gpuconv::zero<gpuconv::acc_t<T>>();
    for (int i = 0; i < n; ++i) acc += gpuconv::load_acc(x[i]);
    out[0] = gpuconv::store_acc<T>(acc);
}
""")
    result = _nvrtc.compile_source(source, ["half_sum<__half>"], "sm_75", filename="half.cu")
    assert "half_sum<__half>" in result.resources


def test_cuda_bf16_is_found_and_bfloat16_accumulates_in_float_on_sm_75():
    """common.cuh includes cuda_bf16.h under NVRTC; acc_t<__nv_bfloat16> is float. bfloat16 is
    served on sm_75 too: gpuconv's bfloat16 kernels use only cuda_bf16.h's conversions (and
    __ldg), never bfloat16 arithmetic or atomics (their atomics and partial sums are acc_t,
    float), so every bfloat16 instantiation compiles for sm_75
    (test_every_instantiation_compiles)."""
    source = (_kernels.source_path("common.cuh").read_text() + """
template <class T>
__global__ void bf16_sum(const T* __restrict__ x, T* __restrict__ out, int n)
{
    static_assert(sizeof(gpuconv::acc_t<T>) == 4, "__nv_bfloat16 accumulates in float");
    gpuconv::acc_t<T> acc = gpuconv::zero<gpuconv::acc_t<T>>();
    for (int i = 0; i < n; ++i) acc += gpuconv::load_acc(__ldg(x + i));
    out[0] = gpuconv::store_acc<T>(acc);
}
""")
    result = _nvrtc.compile_source(source, ["bf16_sum<__nv_bfloat16>"], "sm_75", filename="bf.cu")
    assert "bf16_sum<__nv_bfloat16>" in result.resources
    bf16 = [name for f in _kernels.FAMILIES.values() for name in f.instantiations()
            if "__nv_bfloat16" in name]
    assert bf16 or _kernels.BFLOAT16 is None


def test_ptxas_log_parser():
    log = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_80'
ptxas info    : Function properties for _Z1kPf
    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 360 bytes cmem[0]
"""
    assert _nvrtc.parse_ptxas_log(log) == {"_Z1kPf": {
        "registers": 40, "shared_bytes": 1024, "stack_bytes": 8,
        "spill_stores": 12, "spill_loads": 16,
    }}
