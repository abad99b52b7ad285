"""The kernel registry: where the ``.cu`` sources live and which instantiations exist.

Every kernel is ONE C++ template in a ``.cu`` file under ``kernels/``, declared as::

    template <class T, class Index, FLAGS...> __global__ void NAME(params)

``T`` is the element type, ``Index`` the index type (``int`` or ``long long``, chosen per call
by :func:`index_dtype`), and the optional further template parameters (bools, ints) are listed
per family in :data:`FAMILIES`. Instantiations are named by *name expressions*, e.g.
``correlate1d<gpuconv::complex<float>, long long, true>``, all built from the one type table
:data:`CXX_TYPES`. The emulator compiles exactly :func:`name_expressions` of a file, the CUDA
backend one :func:`compile_group` of them at a time (:func:`group_name_expressions`); both
fetch a kernel by :meth:`KernelFamily.name_expression`.

:func:`signature` reads a kernel's parameter list from the ``.cu`` source (comments stripped,
template parameters substituted) and returns the parameter type codes used by
:func:`gpuconv._launch.launch` to convert scalars and check arrays. The codes
(``"const ptr:f32"``, ``"i64"``, ...; :data:`gpuconv._dtypes.TYPE_CODES`) are also the
emulator's; a test checks that both agree for every instantiation.
"""

from __future__ import annotations

import functools
import itertools
import pathlib
import re
from dataclasses import dataclass

import numpy as np

from ._dtypes import BFLOAT16, TYPE_CODES

# ----------------------------------------------------------------------------- type table

#: The one type table: NumPy dtype -> C++ type name (element types and index types).
CXX_TYPES: dict[np.dtype, str] = {
    np.dtype(np.float16): "__half",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.complex64): "gpuconv::complex<float>",
    np.dtype(np.complex128): "gpuconv::complex<double>",
    np.dtype(np.int32): "int",
    np.dtype(np.int64): "long long",
}
if BFLOAT16 is not None:  # ml_dtypes.bfloat16: cuda_bf16.h's type (the emulator's cuda_shim.h)
    CXX_TYPES[BFLOAT16] = "__nv_bfloat16"

# C++ spelling (whitespace-normalised) -> type code. The CXX_TYPES names plus the aliases a
# kernel may write for a scalar parameter.
_CXX_CODES: dict[str, str] = {
    "bool": "bool",
    "signed char": "i8",
    "char": "i8",
    "unsigned char": "u8",
    "short": "i16",
    "unsigned short": "u16",
    "int": "i32",
    "unsigned": "u32",
    "unsigned int": "u32",
    "long long": "i64",
    "long long int": "i64",
    "long": "i64",
    "ptrdiff_t": "i64",
    "int64_t": "i64",
    "unsigned long long": "u64",
    "size_t": "u64",
    "uint64_t": "u64",
    "int32_t": "i32",
    "uint32_t": "u32",
    "__half": "f16",
    "half": "f16",
    "__nv_bfloat16": "bf16",
    "nv_bfloat16": "bf16",
    "float": "f32",
    "double": "f64",
    "gpuconv::complex<float>": "c64",
    "gpuconv::complex<double>": "c128",
    # accumulator types (common.cuh's gpuconv::acc_t<T>: float for __half and
    # __nv_bfloat16, else T)
    "gpuconv::acc_t<__half>": "f32",
    "gpuconv::acc_t<__nv_bfloat16>": "f32",
    "gpuconv::acc_t<float>": "f32",
    "gpuconv::acc_t<double>": "f64",
}

#: NVRTC options every kernel file is compiled with (the CUDA backend and the offline NVRTC
#: check; CuPy adds -arch and the include directory of the CUDA runtime headers).
#: ``-ftz=false``: float32 subnormals are kept, as on the emulator and in NumPy (NVRTC's
#: default, stated because CuPy's RawModule would compile with ``-ftz=true``; docs/kernels.md).
NVRTC_OPTIONS = ("--std=c++17", "-ftz=false")

#: The index types a kernel may be instantiated with.
INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def type_code(dtype) -> str:
    """The type code of a NumPy dtype (``float32`` -> ``"f32"``)."""
    dtype = np.dtype(dtype)
    for code, candidate in TYPE_CODES.items():
        if candidate == dtype:
            return code
    raise TypeError(f"dtype={dtype} has no kernel type code")


def cxx_type(dtype) -> str:
    """The C++ spelling of a NumPy dtype, from :data:`CXX_TYPES`."""
    try:
        return CXX_TYPES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(
            f"dtype={np.dtype(dtype)} has no C++ type; expected one of "
            f"{sorted(str(d) for d in CXX_TYPES)}"
        ) from None


def index_dtype(*arrays, max_index: int = 0) -> np.dtype:
    """The index type for a launch, as CuPy's ``_get_inttype`` chooses it.

    ``int32`` if every array's byte extent is below 2**31 and ``max_index`` (the largest
    index value the kernel computes, if larger than the arrays suggest) is too; else ``int64``.

    >>> index_dtype(np.zeros(10, np.float32))
    dtype('int32')
    >>> index_dtype(np.zeros(10, np.float32), max_index=2**31)
    dtype('int64')
    """
    limit = 2**31
    if max_index < limit and all(int(a.nbytes) < limit for a in arrays):
        return np.dtype(np.int32)
    return np.dtype(np.int64)


# ----------------------------------------------------------------------------- sources


@functools.lru_cache(maxsize=None)
def kernel_dir() -> pathlib.Path:
    """The directory holding the ``.cu`` files and ``common.cuh``.

    In an installed wheel it is ``gpuconv/kernels/`` (pyproject force-includes the top-level
    ``kernels/`` there); in a source checkout (or an editable install) it is ``<repo>/kernels/``.
    """
    package = pathlib.Path(__file__).resolve().parent
    for candidate in (package / "kernels", package.parent / "kernels"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise FileNotFoundError(
        f"gpuconv kernel sources not found: neither {package / 'kernels'} nor "
        f"{package.parent / 'kernels'} holds common.cuh"
    )


def source_path(file: str) -> pathlib.Path:
    """The absolute path of kernel source ``file`` (e.g. ``"convolve.cu"``)."""
    return kernel_dir() / file


_INCLUDE_RE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.M)


def inlined_source(file: str) -> str:
    """The source of ``file`` with every ``#include "x"`` of a file in :func:`kernel_dir`
    replaced by that file's text (recursively), with ``#line`` markers so compiler messages
    still name the original file and line.

    The CUDA backend compiles this text, so CuPy's kernel cache (keyed by the source text and
    the options, not by headers found through ``-I``) sees every header change.
    """
    directory = kernel_dir()

    def expand(name: str, depth: int) -> str:
        if depth > 16:
            raise RuntimeError(f"kernel include depth exceeds 16 at {name}")
        text = (directory / name).read_text()
        pieces = []
        pos = 0
        for match in _INCLUDE_RE.finditer(text):
            target = match.group(1)
            if not (directory / target).is_file():
                continue  # e.g. "cuda_shim.h": only reached by the emulator's compiler
            line_after = text.count("\n", 0, match.end()) + 2
            pieces.append(text[pos:match.start()])
            pieces.append(f'#line 1 "{target}"\n')
            pieces.append(expand(target, depth + 1))
            pieces.append(f'\n#line {line_after} "{name}"')
            pos = match.end()
        pieces.append(text[pos:])
        return "".join(pieces)

    return expand(file, 0)


def source_define(file: str, name: str) -> int:
    """The default value of ``#define name <int>`` in kernel source ``file``.

    Launch code reads tuning constants from the ``.cu`` file, so they live in one place.
    """
    text = _strip_comments(source_path(file).read_text())
    match = re.search(rf"^[ \t]*#[ \t]*define[ \t]+{re.escape(name)}[ \t]+(\d+)[ \t]*$", text, re.M)
    if match is None:
        raise LookupError(f"{file} has no '#define {name} <int>'")
    return int(match.group(1))


# ----------------------------------------------------------------------------- families


@dataclass(frozen=True)
class KernelFamily:
    """One kernel template and the instantiations gpuconv compiles.

    Attributes
    ----------
    template : str
        The C++ template name, e.g. ``"correlate1d"``.
    file : str
        Its source file in :func:`kernel_dir`.
    dtypes : tuple of str
        Element dtypes instantiated (``T``).
    flags : tuple of tuple of str
        Values of the template parameters after ``T`` and ``Index``, as C++ literals, one
        tuple per parameter (e.g. ``(("false", "true"),)`` for one bool).
    critical : bool
        Performance-critical: the NVRTC test fails if it spills registers.
    index_dtypes : tuple of str
        Index dtypes instantiated (``Index``).
    """

    template: str
    file: str
    dtypes: tuple[str, ...]
    flags: tuple[tuple[str, ...], ...] = ()
    critical: bool = False
    index_dtypes: tuple[str, ...] = ("int32", "int64")

    def name_expression(self, dtype, index, *flags) -> str:
        """The name expression of one instantiation, e.g. ``correlate1d<float, int, true>``."""
        dtype, index = np.dtype(dtype), np.dtype(index)
        if dtype.name not in self.dtypes:
            raise TypeError(f"{self.template}: dtype={dtype} is not instantiated; "
                            f"expected one of {self.dtypes}")
        if index.name not in self.index_dtypes:
            raise TypeError(f"{self.template}: index dtype={index} is not instantiated; "
                            f"expected one of {self.index_dtypes}")
        if len(flags) != len(self.flags):
            raise TypeError(f"{self.template}: expected {len(self.flags)} flag values, "
                            f"got {len(flags)}")
        literals = []
        for value, allowed in zip(flags, self.flags):
            literal = _literal(value)
            if literal not in allowed:
                raise ValueError(f"{self.template}: flag value {value!r} must be one of {allowed}")
            literals.append(literal)
        return f"{self.template}<{', '.join([cxx_type(dtype), cxx_type(index), *literals])}>"

    def check_dtype(self, dtype, op: str) -> None:
        """Raise TypeError unless ``dtype`` is instantiated: the device modules' one dtype
        pre-check, before any array is prepared."""
        dtype = np.dtype(dtype)
        if dtype.name not in self.dtypes:
            raise TypeError(f"{op}: dtype={dtype} has no kernel; expected one of {self.dtypes}")

    def instantiations(self) -> list[str]:
        """Every name expression of this family."""
        return [
            self.name_expression(dtype, index, *flags)
            for dtype, index, *flags in itertools.product(
                self.dtypes, self.index_dtypes, *self.flags
            )
        ]


def _literal(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


_FLOAT_AND_COMPLEX = ("float32", "float64", "complex64", "complex128")
#: The real float dtypes of the conv family's kernels: float16/32/64, and bfloat16 when
#: ml_dtypes is installed (without it NumPy has no bfloat16, so nothing could launch one).
_FLOATS = ("float16", "float32", "float64") + (() if BFLOAT16 is None else ("bfloat16",))

#: Every kernel family, by template name.
FAMILIES: dict[str, KernelFamily] = {
    family.template: family
    for family in (
        KernelFamily("correlate1d", "convolve.cu", _FLOAT_AND_COMPLEX,
                     flags=(("false", "true"),), critical=True),
        KernelFamily("correlate1d_reduce", "convolve.cu", _FLOAT_AND_COMPLEX,
                     flags=(("false", "true"),), critical=True),
        # conv_transpose3d<T, Index, CoutPerThread, StageWeights>
        KernelFamily("conv_transpose3d", "conv_transpose.cu", _FLOATS,
                     flags=(("1", "4"), ("false", "true")), critical=True),
        # deform_im2col<T, Index, HasMask>; bfloat16 runs in float32 (backends/device/_deform.py:
        # bfloat16 columns would round each sampled term)
        KernelFamily("deform_im2col", "deform.cu", ("float16", "float32", "float64"),
                     flags=(("false", "true"),), critical=True),
        # conv_tiled / conv_direct / depthwise_tiled<T, Index, PaddingMode>; the padding mode
        # codes (0 zeros, 1 reflect, 2 replicate, 3 circular) are kernels/padding.cuh's.
        KernelFamily("conv_tiled", "conv.cu", _FLOATS,
                     flags=(("0", "1", "2", "3"),), critical=True),
        KernelFamily("conv_direct", "conv.cu", _FLOATS,
                     flags=(("0", "1", "2", "3"),), critical=True),
        KernelFamily("depthwise_tiled", "depthwise.cu", _FLOATS,
                     flags=(("0", "1", "2", "3"),), critical=True),
        # Gradients (gpuconv/backends/device/_conv.py). conv_weight_grad /
        # depthwise_weight_grad<T, Index, PaddingMode, Deterministic>.
        KernelFamily("conv_weight_grad", "conv_grad.cu", _FLOATS,
                     flags=(("0", "1", "2", "3"), ("false", "true")), critical=True),
        KernelFamily("depthwise_weight_grad", "conv_grad.cu", _FLOATS,
                     flags=(("0", "1", "2", "3"), ("false", "true")), critical=True),
        KernelFamily("weight_grad_reduce", "conv_grad.cu", _FLOATS),
        # pad_fold<T, Index, PaddingMode> (reflect, replicate, circular; zeros is a crop);
        # bfloat16 folds in float32 (backends/device/_conv.py: conv_input_grad)
        KernelFamily("pad_fold", "pad_fold.cu", ("float16", "float32", "float64"),
                     flags=(("1", "2", "3"),), critical=True),
        # deform_col2im / deform_col2im_coord<T, Index, HasMask>; float16 and bfloat16 run in
        # float32
        KernelFamily("deform_col2im", "deform_grad.cu", ("float32", "float64"),
                     flags=(("false", "true"),), critical=True),
        KernelFamily("deform_col2im_coord", "deform_grad.cu", ("float32", "float64"),
                     flags=(("false", "true"),), critical=True),
    )
}


def files() -> list[str]:
    """Every kernel source file that has a registered family."""
    return sorted({family.file for family in FAMILIES.values()})


def name_expressions(file: str) -> list[str]:
    """Every instantiation compiled from ``file``, in registry order."""
    names = [name for family in FAMILIES.values() if family.file == file
             for name in family.instantiations()]
    if not names:
        raise LookupError(f"no kernel family is registered for file {file!r}")
    return names


def compile_group(name_expression: str) -> tuple[str, str]:
    """The compile group of an instantiation: its first two template arguments (``T``,
    ``Index``), e.g. ``("float", "int")`` for ``conv_tiled<float, int, 0>``.

    The CUDA backend compiles a file one group at a time, on first use of any member, so a
    call pays NVRTC only for the instantiations of its dtype and index type (the kernels a
    call launches share both), not for the whole file.
    """
    _, args = parse_name_expression(name_expression)
    if len(args) < 2:
        raise ValueError(f"name expression {name_expression!r} must start with <T, Index, ...>")
    return args[0], args[1]


def group_name_expressions(file: str, group: tuple[str, str]) -> list[str]:
    """The instantiations of ``file`` in compile group ``group`` (see :func:`compile_group`),
    in registry order."""
    names = [name for name in name_expressions(file) if compile_group(name) == tuple(group)]
    if not names:
        raise LookupError(f"{file} has no instantiation in compile group {tuple(group)}")
    return names


def compile_groups(file: str) -> list[tuple[str, str]]:
    """Every compile group of ``file``, in registry order."""
    return list(dict.fromkeys(compile_group(name) for name in name_expressions(file)))


# ----------------------------------------------------------------------------- signatures


def _strip_comments(text: str) -> str:
    # Block comments become their newlines, so line numbers stay put.
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside <...> or (...)."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    tail = "".join(current).strip()
    if tail:
        parts.append(tail)
    return parts


@dataclass(frozen=True)
class TemplateSignature:
    """A kernel template as declared in its source: template parameter names and the
    parameter declarations (type with the name removed)."""

    template_params: tuple[str, ...]
    param_types: tuple[str, ...]


_GLOBAL_RE = re.compile(
    r"template\s*<(?P<tparams>[^{};]*?)>\s*__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?"
    r"void\s+(?P<name>\w+)\s*\((?P<params>[^)]*)\)",
    re.S,
)


@functools.lru_cache(maxsize=None)
def _templates(file: str) -> dict[str, TemplateSignature]:
    text = _strip_comments(source_path(file).read_text())
    found = {}
    for match in _GLOBAL_RE.finditer(text):
        tparams = []
        for decl in _split_top_level(match.group("tparams")):
            decl = decl.split("=")[0].strip()
            tparams.append(re.findall(r"\w+", decl)[-1])
        types = []
        for decl in _split_top_level(match.group("params")):
            decl = " ".join(decl.split())
            name = re.search(r"(\w+)\s*$", decl)
            if name is None:
                raise ValueError(f"{file}: cannot read parameter {decl!r} of {match.group('name')}")
            types.append(decl[: name.start()].strip())
        found[match.group("name")] = TemplateSignature(tuple(tparams), tuple(types))
    return found


def parse_name_expression(name_expression: str) -> tuple[str, list[str]]:
    """Split ``"name<A, B<C>, d>"`` into ``("name", ["A", "B<C>", "d"])``."""
    match = re.fullmatch(r"\s*(\w+)\s*<(.*)>\s*", name_expression, re.S)
    if match is None:
        raise ValueError(f"name expression {name_expression!r} must look like 'name<args>'")
    return match.group(1), _split_top_level(match.group(2))


def _param_code(decl: str) -> str:
    """The type code of a parameter type: ``const float* __restrict__`` -> ``const ptr:f32``."""
    words = decl.replace("*", " * ").replace("&", " & ").split()
    words = [w for w in words if w not in ("__restrict__", "__restrict", "restrict")]
    if "&" in words:
        raise ValueError(f"kernel parameter type {decl!r}: references are not allowed")
    stars = words.count("*")
    if stars > 1:
        raise ValueError(f"kernel parameter type {decl!r}: only single pointers are supported")
    if stars == 1:
        star = words.index("*")
        pointee, after = words[:star], words[star + 1:]
        if any(w != "const" for w in after):
            raise ValueError(f"kernel parameter type {decl!r} is not understood")
        const = "const" in pointee
        base = " ".join(w for w in pointee if w not in ("const", "volatile"))
        return ("const ptr:" if const else "ptr:") + _base_code(base, decl)
    base = " ".join(w for w in words if w not in ("const", "volatile"))
    return _base_code(base, decl)


def _base_code(base: str, decl: str) -> str:
    base = re.sub(r"\s*([<>:,])\s*", r"\1", base).replace("std::", "")
    base = re.sub(r"^::", "", base)
    try:
        return _CXX_CODES[base]
    except KeyError:
        raise ValueError(f"kernel parameter type {decl!r} has no type code") from None


@functools.lru_cache(maxsize=None)
def signature(file: str, name_expression: str) -> tuple[str, ...]:
    """The parameter type codes of one instantiation, read from the ``.cu`` source.

    >>> signature("convolve.cu", "correlate1d_reduce<float, int, true>")[:2]
    ('const ptr:f32', 'i32')
    """
    name, args = parse_name_expression(name_expression)
    templates = _templates(file)
    if name not in templates:
        raise LookupError(f"{file} declares no '__global__' template named {name!r}")
    template = templates[name]
    if len(args) != len(template.template_params):
        raise ValueError(
            f"{name_expression!r}: {len(args)} template arguments, but {name} takes "
            f"{len(template.template_params)} ({', '.join(template.template_params)})"
        )
    substitutions = dict(zip(template.template_params, args))
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, substitutions)) + r")\b")
    return tuple(
        _param_code(pattern.sub(lambda m: substitutions[m.group(1)], decl))
        for decl in template.param_types
    )
