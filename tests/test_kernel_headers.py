"""Every header a kernel file includes is seen by both kernel caches.

The ``cuda`` backend compiles :func:`gpuconv._kernels.inlined_source` (CuPy keys its cache on
the source text, not on headers found through ``-I``: cupy/cupy#941); the ``emulate`` backend
keys its cache with :func:`gpuconv._emulator._build.build_key`. Kernel files share headers
(``common.cuh``, ``padding.cuh``, ``tiled.cuh``, ``bilinear.cuh``), so for every registered
kernel file and every header it includes, directly or through another header, an edit of the
header must change both keys -- checked on a copy of ``kernels/``, found by reading the
``#include`` lines here rather than trusting the inliner's own search.
"""

from __future__ import annotations

import re
import shutil

import pytest

from gpuconv import _kernels
from gpuconv._emulator import _build

INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def _local_includes(directory, name, seen=None) -> set[str]:
    """The kernel-directory headers ``name`` includes, transitively."""
    seen = set() if seen is None else seen
    for target in INCLUDE.findall((directory / name).read_text()):
        if (directory / target).is_file() and target not in seen:
            seen.add(target)
            _local_includes(directory, target, seen)
    return seen


CASES = [(file, header) for file in _kernels.files()
         for header in sorted(_local_includes(_kernels.kernel_dir(), file))]


def test_the_shared_headers_are_reached():
    reached = {header for _, header in CASES}
    assert {"common.cuh", "padding.cuh", "tiled.cuh", "bilinear.cuh"} <= reached
    # bilinear.cuh serves both deform files, tiled.cuh both tiled conv files
    assert {file for file, header in CASES if header == "bilinear.cuh"} == {
        "deform.cu", "deform_grad.cu"}
    assert {file for file, header in CASES if header == "tiled.cuh"} == {
        "conv.cu", "depthwise.cu"}


@pytest.mark.parametrize("file, header", CASES, ids=[f"{f}-{h}" for f, h in CASES])
def test_a_header_edit_changes_both_cache_keys(tmp_path, monkeypatch, file, header):
    kernels = tmp_path / "kernels"
    shutil.copytree(_kernels.kernel_dir(), kernels)
    monkeypatch.setattr(_kernels, "kernel_dir", lambda: kernels)
    names = tuple(_kernels.name_expressions(file)[:1])

    def keys():
        return (_kernels.inlined_source(file),
                _build.build_key(kernels / file, (), names, ("-O2",), "g++ (test)"))

    inlined, emu_key = keys()
    assert f'#include "{header}"' not in inlined
    assert f'#line 1 "{header}"' in inlined
    with open(kernels / header, "a") as f:
        f.write("\n// edited\n")
    inlined_after, emu_key_after = keys()
    assert inlined_after != inlined
    assert "// edited" in inlined_after
    assert emu_key_after != emu_key
