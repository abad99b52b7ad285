"""Where and with what the benchmark ran: CPU, its flags and the newest OpenBLAS kernel they
allow, the BLAS libraries loaded and the kernel each runs (threadpoolctl), versions."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sys
from collections.abc import Mapping

import numpy as np

import gpuconv

# ---------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``, x86 Linux); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


#: OpenBLAS x86-64 kernel (core) names by instruction-set level: 0 SSE, 1 AVX, 2 AVX2 + FMA,
#: 3 AVX-512 (F, BW), 4 AVX-512 BF16, 5 AMX. (Zen runs Haswell-class AVX2 kernels.)
OPENBLAS_KERNEL_LEVEL = {
    **dict.fromkeys(("generic", "katmai", "coppermine", "northwood", "prescott", "banias",
                     "core2", "penryn", "dunnington", "nehalem", "atom", "athlon", "opteron",
                     "opteron_sse3", "barcelona", "bobcat", "nano"), 0),
    **dict.fromkeys(("sandybridge", "bulldozer", "piledriver", "steamroller", "excavator"), 1),
    "haswell": 2, "zen": 2, "skylakex": 3, "cooperlake": 4, "sapphirerapids": 5,
}
#: The newest OpenBLAS kernel for each level (what DYNAMIC_ARCH picks on such a CPU).
_LEVEL_KERNEL = {0: "Prescott/Core2", 1: "Sandybridge", 2: "Haswell", 3: "SkylakeX",
                 4: "Cooperlake", 5: "SapphireRapids"}


def cpu_kernel_level(flags) -> int | None:
    """The newest OpenBLAS kernel level (see :data:`OPENBLAS_KERNEL_LEVEL`) the CPU flags
    allow; None without flags (not x86 Linux)."""
    flags = set(flags)
    if not flags:
        return None
    if {"amx_bf16", "avx512_bf16", "avx512f", "avx512bw"} <= flags:
        return 5
    if {"avx512_bf16", "avx512f", "avx512bw"} <= flags:
        return 4
    if {"avx512f", "avx512bw"} <= flags:
        return 3
    if {"avx2", "fma"} <= flags:
        return 2
    return 1 if "avx" in flags else 0


def openblas_kernel_warning(architecture: str | None, env: Mapping[str, str],
                            cpu_flags) -> str | None:
    """A warning when ``OPENBLAS_CORETYPE`` pins an older OpenBLAS kernel than the CPU runs
    (or a newer one than it can run).

    ``architecture`` is the kernel OpenBLAS reports (threadpoolctl's ``architecture``;
    ``env`` the environment; ``cpu_flags`` from ``/proc/cpuinfo``. Without the variable, an
    older kernel than the CPU allows gets a milder note (the OpenBLAS build may lack the
    newer one). None when the kernel matches the CPU or either is unknown.
    """
    cpu_level = cpu_kernel_level(cpu_flags)
    pinned = env.get("OPENBLAS_CORETYPE")
    running = architecture or pinned
    level = OPENBLAS_KERNEL_LEVEL.get((running or "").lower())
    if cpu_level is None or level is None or level == cpu_level:
        return None
    native = _LEVEL_KERNEL[cpu_level]
    if level > cpu_level:
        return (f"OpenBLAS runs its {running} kernel"
                + (f" (OPENBLAS_CORETYPE={pinned})" if pinned else "")
                + f", newer than this CPU supports ({native}): expect crashes (illegal "
                  "instruction) or wrong timings")
    if pinned:
        l2 = env.get("OPENBLAS_L2_SIZE")
        return (f"OPENBLAS_CORETYPE={pinned} pins OpenBLAS's {running} kernel, but this CPU "
                f"supports {native}: NumPy's matrix products (the NumPy backend's GEMMs and "
                f"the matmul ceiling) run slower than they can"
                + (f" (OPENBLAS_L2_SIZE={l2} is set too)" if l2 else "")
                + ". PyTorch uses its own BLAS. For a benchmark of the native kernel run it "
                  "under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`.")
    return (f"OpenBLAS runs its {running} kernel, but this CPU supports {native} (this "
            f"OpenBLAS build may not include it)")


def blas_info() -> dict:
    """The BLAS libraries loaded and the kernel each runs, and which one NumPy uses.

    ``libraries``: threadpoolctl's ``threadpool_info()`` (``internal_api``, ``version``,
    ``architecture`` = the kernel/core name, ``num_threads``, ``threading_layer``), with the
    directory of each library instead of its full path; ``numpy``: the entry of NumPy's own
    BLAS (the library under NumPy's directory, else the one NumPy's build config names),
    None without threadpoolctl; ``numpy_build``: NumPy's build configuration for BLAS.
    """
    info = {"libraries": [], "numpy": None, "numpy_build": None}
    try:
        info["numpy_build"] = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # older NumPy: no dict mode
        pass
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return info
    for lib in threadpool_info():
        entry = {k: v for k, v in lib.items() if k != "filepath"}
        entry["directory"] = os.path.basename(os.path.dirname(lib.get("filepath") or ""))
        info["libraries"].append(entry)
    blas = [lib for lib in info["libraries"] if lib.get("user_api") == "blas"]
    build_version = (info["numpy_build"] or {}).get("version")
    info["numpy"] = next((lib for lib in blas if "numpy" in lib["directory"]), None) or \
        next((lib for lib in blas if build_version and lib.get("version") == build_version),
             None) or (blas[0] if blas else None)
    return info


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(backend: str) -> dict:
    """Where and with what the benchmark ran (goes into the JSON)."""
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                      "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                      "MKL_NUM_THREADS") if k in os.environ}
    flags = _cpu_flags()
    blas = blas_info()
    numpy_blas = blas["numpy"] or {}
    level = cpu_kernel_level(flags)
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_kernel_level": None if level is None else _LEVEL_KERNEL[level],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "blas": blas,
        "blas_warning": openblas_kernel_warning(numpy_blas.get("architecture"), env, flags)
        if numpy_blas.get("internal_api", "openblas") == "openblas" else None,
        "gpuconv": gpuconv.__version__,
        "versions": {d: _version(d) for d in ("torch", "torchvision", "scipy", "matplotlib")},
        "env": env,
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    if backend == "cuda":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["versions"]["cupy"] = cupy.__version__
    return info


def describe_blas(machine: Mapping) -> str:
    """One line: NumPy's BLAS, its kernel and threads, and the CPU's newest kernel."""
    blas = machine.get("blas")
    lib = blas.get("numpy") if isinstance(blas, Mapping) else None
    if not lib:
        return "NumPy's BLAS: unknown (install threadpoolctl to record it)"
    cpu = machine.get("cpu_kernel_level")
    return (f"NumPy's BLAS: {lib.get('internal_api')} {lib.get('version')}, "
            f"{lib.get('architecture') or '?'} kernel, {lib.get('num_threads')} thread(s)"
            + (f"; the CPU supports {cpu}" if cpu else "")
            + "".join(f"; {k}={v}" for k, v in machine.get("env", {}).items()
                      if k.startswith("OPENBLAS_CORETYPE") or k == "OPENBLAS_L2_SIZE"))
