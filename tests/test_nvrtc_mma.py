"""kernels/mma.cuh compiles with NVRTC (no GPU needed): the test kernels of
tests/emu_kernels/mma.cu -- every primitive, the tile layouts and the GEMMs -- for sm_80 and
sm_90; on sm_75 the f16 mma (two m16n8k8), ldmatrix and the synchronous cp.async fallback
compile, and the bf16/tf32 mma fail with a message that says they need sm_80.

Needs ``cuda-bindings``, ``nvidia-cuda-nvrtc`` and ``nvidia-cuda-runtime`` like
tests/test_nvrtc.py; without them every test here is skipped with the reason.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from gpuconv import _nvrtc

_reason = _nvrtc.unavailable_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"NVRTC unavailable: {_reason}")

ROOT = pathlib.Path(__file__).parent.parent
KDIR = ROOT / "tests" / "emu_kernels"

SM75_NAMES = [
    "tile_layouts",
    "mma_raw<0>",
    *[f"ldmatrix_raw<{n}, {t}>" for n in (1, 2, 4) for t in ("false", "true")],
    "gemm_direct16<false>",
    "gemm_pipelined<1>",
    "cp_async_groups<0>",
    "cp_async_neighbour<true>",
]
SM80_NAMES = [*SM75_NAMES, "mma_raw<1>", "mma_raw<2>", "gemm_direct16<true>", "gemm_direct_tf32"]


def source() -> str:
    """mma.cu with its two local includes inlined (NVRTC gets one text, as in the backend)."""
    text = (KDIR / "mma.cu").read_text()
    text = text.replace('#include "emu_test.cuh"', (KDIR / "emu_test.cuh").read_text())
    return text.replace(
        '#include "../../kernels/mma.cuh"', (ROOT / "kernels" / "mma.cuh").read_text()
    )


_cache: dict[str, _nvrtc.CompileResult] = {}


def compiled(arch):
    if arch not in _cache:
        names = SM80_NAMES if arch != "sm_75" else SM75_NAMES
        _cache[arch] = _nvrtc.compile_source(source(), names, arch, filename="mma.cu")
    return _cache[arch]


@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_90"])
def test_mma_header_compiles(arch):
    result = compiled(arch)
    names = SM80_NAMES if arch != "sm_75" else SM75_NAMES
    for name in names:
        assert name in result.resources, f"ptxas reported nothing for {name}"
        assert not result.resources[name].spills, _nvrtc.format_report([result.resources[name]])
    assert result.cubin[:4] == b"\x7fELF"
    print("\n" + _nvrtc.format_report([result.resources[n] for n in names if "gemm" in n]))


@pytest.mark.parametrize("kind, name", [("bf16", "mma_raw<1>"), ("tf32", "mma_raw<2>")])
def test_sm75_rejects_bf16_and_tf32_mma_with_a_message(kind, name):
    with pytest.raises(_nvrtc.NvrtcCompileError, match=re.escape(f"{kind} mma.sync needs sm_80")):
        _nvrtc.compile_source(source(), [name], "sm_75", filename="mma.cu")
