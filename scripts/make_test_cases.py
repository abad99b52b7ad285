"""Regenerate the golden cases, tests/data/cases.json and tests/data/cases.npz.

The golden cases are inputs plus expected outputs computed by libraries that share no code
with gpuconv: ``torch.nn.functional`` conv/conv_transpose in float64 (``F.pad`` for the
padding modes, asymmetric pairs and 'same'), ``torchvision.ops.deform_conv2d`` and
``numpy.convolve``/``numpy.correlate``. ``tests/test_golden.py`` runs every case on every backend
and dtype (``tests/test_main.py`` reads them too).

Run from the repository root with torch installed. torchvision is used for the deformable
cases where its compiled ops load; elsewhere (as in the project's CPU venv, whose torch has no
matching torchvision) :func:`torchvision_deform_conv2d_cpu`, an op-for-op replica of its CPU
kernel, gives the same bits::

    python scripts/make_test_cases.py                 # rewrite tests/data/cases.*
    python scripts/make_test_cases.py --out /tmp/gold  # write elsewhere
    python scripts/make_test_cases.py --out /tmp/gold --compare tests/data

``--compare DIR`` reports, per file and per array, whether the result is bitwise equal to the
files in ``DIR`` (and the largest relative difference where it is not).

How the stored files were made, and what this script reproduces
----------------------------------------------------------------
The files were made on 2026-11-25 (torch 2.14.1+cu130, torchvision 0.29.1+cu130, NumPy 2.4.6)
by a script that was not kept; this one was reconstructed from the files. Every input array
came from ONE ``numpy.random.default_rng(0)`` stream, case after case, interleaved with the
draws that chose each case's parameters (rank, sizes, groups, padding, ...). That parameter
code is lost, so each case below states its parameters explicitly, and each input records
where its draws start in the stream (``at``: 64-bit PCG64 steps from the seed, found by
searching the stream). The inputs come back bitwise:

* ``N(shape, at)``: ``rng.standard_normal(shape)`` (x, weights, biases, 1-D signals);
  ``N(shape, at, scale=s, rounded=True)``: deformable offsets, ``s * standard_normal``,
  rounded to integers for the integer-offset cases;
* ``U(shape, at)``: ``rng.random(shape)`` (deformable masks, in [0, 1));
* ``C(shape, at)``: ``standard_normal(shape) + 1j * standard_normal(shape)`` (``imag_at`` where
  the imaginary part does not follow the real part directly).

The expected outputs are recomputed from those inputs; the JSON is written with
``json.dump(indent=1)`` in the same key order, and the arrays with ``numpy.savez_compressed``
in the same order (NumPy >= 2 stamps every member 1980-01-01, so the archive is reproducible).
``made_with`` records the versions this run used.

Checked 2026-11-30 with torch 2.13.0+cpu and NumPy 2.4.6 (no torchvision: the replica):
``--compare tests/data`` finds ``cases.npz`` bitwise equal -- every input and every expected
output, the archive bytes included -- and ``cases.json`` equal except ``made_with``.

Extending
---------
Append a :class:`Case` to ``CASES`` (ids go on counting: ``<op><rank>d-048``, ...). Give new
inputs a ``seed`` instead of an ``at`` (``N((2, 3, 9), seed=48)`` draws from
``default_rng(48)``), so no stored case moves; then run the script, check the new case against
an independent hand computation where you can, and commit both files. ``test_golden.py``
picks the new case up on every backend and dtype without further change.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
STREAM_SEED = 0
ABOUT = (
    "Inputs and expected outputs computed by independent libraries (torch.nn.functional, "
    "torchvision.ops.deform_conv2d, numpy.convolve/correlate), float64 or complex128. op names "
    "a gpuconv function; args are its positional arrays; kwargs its keyword arguments "
    "({'array': key} means an array in cases.npz)."
)


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class Draw:
    """How one input array is drawn.

    ``at`` is a position in the ``default_rng(STREAM_SEED)`` stream (64-bit steps; the stored
    cases), ``seed`` a fresh ``default_rng(seed)`` (new cases); exactly one is given."""

    shape: tuple
    at: int | None = None
    seed: int | None = None
    kind: str = "normal"  # normal | uniform | complex
    scale: float = 1.0
    rounded: bool = False
    imag_at: int | None = None

    def _rng(self, at):
        if self.seed is not None:
            return np.random.default_rng(self.seed)
        bit_generator = np.random.PCG64(STREAM_SEED)
        bit_generator.advance(at)
        return np.random.Generator(bit_generator)

    def array(self) -> np.ndarray:
        """The drawn array (float64, or complex128 for ``kind="complex"``)."""
        if (self.at is None) == (self.seed is None):
            raise ValueError(f"give exactly one of at= and seed= (got {self!r})")
        rng = self._rng(self.at)
        if self.kind == "uniform":
            return rng.random(self.shape)
        values = rng.standard_normal(self.shape)
        if self.kind == "complex":
            if self.imag_at is not None:
                rng = self._rng(self.imag_at)
            return values + 1j * rng.standard_normal(self.shape)
        if self.scale != 1.0:
            values = self.scale * values
        return np.round(values) if self.rounded else values


def N(shape, at=None, *, seed=None, scale=1.0, rounded=False):
    """Standard normal values (scaled and rounded for deformable offsets)."""
    return Draw(tuple(shape), at, seed, "normal", scale, rounded)


def U(shape, at=None, *, seed=None):
    """Uniform values in [0, 1)."""
    return Draw(tuple(shape), at, seed, "uniform")


def C(shape, at=None, *, seed=None, imag_at=None):
    """Complex values with standard normal real and imaginary parts."""
    return Draw(tuple(shape), at, seed, "complex", imag_at=imag_at)


@dataclasses.dataclass(frozen=True)
class Case:
    """One golden case: a gpuconv function's name, its keyword arguments and its inputs."""

    id: str
    op: str
    kwargs: dict
    args: list
    mask: Draw | None = None


# ----------------------------------------------------------------------------- the cases

# fmt: off
CASES = [
    Case('conv3d-000', 'conv', {'stride': [1, 1, 3], 'padding': [[2, 0], [2, 2], [0, 1]], 'dilation': [2, 2, 2], 'groups': 2, 'padding_mode': 'reflect'},
         [N((2, 4, 6, 7, 6), 13), N((2, 2, 1, 1, 1), 2067), N((2,), 2072)]),
    Case('conv3d-001', 'conv', {'stride': [3, 2, 1], 'padding': 2, 'dilation': [1, 2, 2], 'groups': 2, 'padding_mode': 'replicate'},
         [N((2, 6, 5, 6, 6), 2084), N((2, 3, 2, 2, 1), 4291), N((2,), 4316)]),
    Case('conv3d-002', 'conv', {'stride': [1, 1, 2], 'padding': [[2, 2], [0, 2], [2, 0]], 'dilation': [1, 2, 1], 'groups': 3, 'padding_mode': 'replicate'},
         [N((1, 9, 5, 5, 6), 4330), N((3, 3, 2, 2, 1), 5705), N((3,), 5742)]),
    Case('conv3d-003', 'conv', {'stride': [3, 1, 2], 'padding': 'same', 'dilation': [1, 2, 1], 'groups': 3, 'padding_mode': 'zeros'},
         [N((2, 6, 5, 7, 6), 5755), N((9, 2, 1, 3, 3), 8335), N((9,), 8502)]),
    Case('conv2d-004', 'conv', {'stride': [2, 2], 'padding': 'valid', 'dilation': [2, 1], 'groups': 1, 'padding_mode': 'circular'},
         [N((2, 2, 13, 8), 8518), N((2, 2, 3, 5), 8943)]),
    Case('conv1d-005', 'conv', {'stride': [2], 'padding': [[0, 0]], 'dilation': [2], 'groups': 1, 'padding_mode': 'zeros'},
         [N((1, 3, 9), 9011), N((3, 3, 2), 9038)]),
    Case('conv2d-006', 'conv', {'stride': [3, 3], 'padding': 'valid', 'dilation': [2, 1], 'groups': 1, 'padding_mode': 'zeros'},
         [N((2, 3, 7, 8), 9064), N((1, 3, 4, 5), 9402), N((1,), 9464)]),
    Case('conv1d-007', 'conv', {'stride': [1], 'padding': 'valid', 'dilation': [1], 'groups': 1, 'padding_mode': 'circular'},
         [N((1, 1, 12), 9471), N((3, 1, 5), 9483)]),
    Case('conv2d-008', 'conv', {'stride': [2, 2], 'padding': 'valid', 'dilation': [2, 1], 'groups': 2, 'padding_mode': 'zeros'},
         [N((2, 6, 12, 9), 9506), N((2, 3, 3, 2), 10837), N((2,), 10874)]),
    Case('conv2d-009', 'conv', {'stride': [3, 3], 'padding': [1, 0], 'dilation': [2, 1], 'groups': 1, 'padding_mode': 'zeros'},
         [N((2, 1, 6, 9), 10885), N((2, 1, 3, 2), 10994)]),
    Case('depthwise3d-010', 'depthwise_conv', {'stride': [1, 1, 1], 'padding': 0},
         [N((2, 1, 8, 7, 8), 11013), N((2, 1, 1, 3, 3), 11926)]),
    Case('depthwise3d-011', 'depthwise_conv', {'stride': [1, 2, 2], 'padding': 0},
         [N((2, 3, 4, 5, 6), 11951), N((3, 1, 3, 1, 3), 12682)]),
    Case('separable2d-012', 'separable_conv', {'padding': 1},
         [N((2, 1, 9, 7), 12710), N((2, 1, 3, 3), 12838), N((1, 2, 1, 1), 12856), N((1,), 12858)]),
    Case('conv_transpose1d-013', 'conv_transpose', {'stride': [2], 'padding': [0], 'output_padding': [0], 'dilation': [2], 'groups': 1},
         [N((1, 1, 5), 12864), N((1, 3, 1), 12869)]),
    Case('conv_transpose1d-014', 'conv_transpose', {'stride': [1], 'padding': [0], 'output_padding': [0], 'dilation': [1], 'groups': 1},
         [N((1, 2, 6), 12879), N((2, 2, 2), 12891)]),
    Case('conv_transpose1d-015', 'conv_transpose', {'stride': [3], 'padding': [1], 'output_padding': [0], 'dilation': [1], 'groups': 1},
         [N((2, 1, 5), 12905), N((1, 1, 3), 12916), N((1,), 12920)]),
    Case('conv_transpose3d-016', 'conv_transpose', {'stride': [3, 1, 3], 'padding': 'same', 'dilation': [2, 1, 1], 'groups': 2},
         [N((2, 2, 3, 3, 4), 12932), N((2, 3, 4, 2, 4), 13082)]),
    Case('conv_transpose1d-017', 'conv_transpose', {'stride': [1], 'padding': [0], 'output_padding': [0], 'dilation': [1], 'groups': 1},
         [N((2, 2, 5), 13283), N((2, 1, 3), 13303)]),
    Case('deform_conv2d-018', 'deform_conv2d', {'stride': [1, 2], 'padding': [1, 1], 'dilation': [1, 1]},
         [N((2, 4, 4, 9), 13319), N((2, 4, 6, 6), 13625, scale=4.0, rounded=True), N((2, 2, 1, 1), 13620)]),
    Case('deform_conv2d-019', 'deform_conv2d', {'stride': [1, 1], 'padding': [1, 1], 'dilation': [1, 1]},
         [N((1, 4, 7, 9), 13925), N((1, 12, 7, 11), 14203, scale=4.0), N((4, 2, 3, 1), 14178), N((4,), 15620)],
         mask=U((1, 6, 7, 11), 15157)),
    Case('deform_conv2d-020', 'deform_conv2d', {'stride': [2, 1], 'padding': [0, 0], 'dilation': [2, 1]},
         [N((1, 1, 8, 5), 15631), N((1, 12, 3, 3), 15679, scale=0.5), N((1, 1, 2, 3), 15671)]),
    Case('deform_conv2d-021', 'deform_conv2d', {'stride': [2, 2], 'padding': [0, 0], 'dilation': [2, 1]},
         [N((2, 2, 8, 6), 15798), N((2, 12, 3, 2), 16029, scale=4.0), N((3, 2, 2, 3), 15991)],
         mask=U((2, 6, 3, 2), 16180)),
    Case('convolve-022', 'convolve', {'mode': 'valid'},
         [N((35,), 16256), N((21,), 16291)]),
    Case('correlate-023', 'correlate', {'mode': 'full'},
         [C((22,), 16315), C((17,), 16361, imag_at=16379)]),
    Case('conv3d-024', 'conv', {'stride': [1, 1, 3], 'padding': [[2, 0], [2, 2], [2, 0]], 'dilation': [1, 2, 2], 'groups': 2, 'padding_mode': 'reflect'},
         [N((2, 6, 5, 6, 6), 16408), N((2, 3, 3, 1, 1), 18620)]),
    Case('conv3d-025', 'conv', {'stride': [3, 3, 1], 'padding': 1, 'dilation': [1, 2, 1], 'groups': 2, 'padding_mode': 'reflect'},
         [N((1, 4, 7, 6, 7), 18649), N((4, 2, 2, 1, 3), 19842), N((4,), 19891)]),
    Case('conv2d-026', 'conv', {'stride': [2, 1], 'padding': 'valid', 'dilation': [1, 2], 'groups': 1, 'padding_mode': 'zeros'},
         [N((2, 1, 11, 12), 19903), N((2, 1, 4, 1), 20173)]),
    Case('conv3d-027', 'conv', {'stride': [2, 3, 2], 'padding': 'same', 'dilation': [2, 2, 2], 'groups': 2, 'padding_mode': 'zeros'},
         [N((1, 6, 5, 6, 7), 20191), N((6, 3, 1, 2, 1), 21493)]),
    Case('conv3d-028', 'conv', {'stride': [1, 1, 3], 'padding': 0, 'dilation': [1, 2, 2], 'groups': 1, 'padding_mode': 'replicate'},
         [N((1, 2, 7, 5, 5), 21540), N((1, 2, 2, 1, 3), 21903)]),
    Case('conv1d-029', 'conv', {'stride': [2], 'padding': 'same', 'dilation': [2], 'groups': 2, 'padding_mode': 'zeros'},
         [N((1, 2, 7), 21922), N((2, 1, 5), 21938), N((2,), 21949)]),
    Case('conv3d-030', 'conv', {'stride': [2, 3, 1], 'padding': 'same', 'dilation': [2, 1, 2], 'groups': 3, 'padding_mode': 'reflect'},
         [N((1, 3, 4, 4, 6), 21960), N((3, 1, 2, 3, 3), 22255)]),
    Case('conv3d-031', 'conv', {'stride': [1, 2, 1], 'padding': 2, 'dilation': [2, 1, 2], 'groups': 1, 'padding_mode': 'circular'},
         [N((1, 3, 5, 5, 7), 22322), N((1, 3, 3, 3, 3), 22858), N((1,), 22940)]),
    Case('conv1d-032', 'conv', {'stride': [1], 'padding': 'valid', 'dilation': [1], 'groups': 3, 'padding_mode': 'replicate'},
         [N((1, 6, 12), 22947), N((3, 2, 3), 23019), N((3,), 23038)]),
    Case('conv3d-033', 'conv', {'stride': [3, 1, 1], 'padding': [[0, 2], [2, 0], [1, 1]], 'dilation': [1, 1, 1], 'groups': 2, 'padding_mode': 'reflect'},
         [N((2, 2, 5, 6, 6), 23053), N((2, 1, 2, 1, 1), 23791), N((2,), 23796)]),
    Case('depthwise3d-034', 'depthwise_conv', {'stride': [2, 2, 1], 'padding': 1},
         [N((2, 2, 5, 6, 6), 23805), N((4, 1, 3, 2, 1), 24544)]),
    Case('depthwise1d-035', 'depthwise_conv', {'stride': [1], 'padding': 0},
         [N((2, 3, 8), 24571), N((6, 1, 1), 24619)]),
    Case('separable2d-036', 'separable_conv', {'padding': 1},
         [N((2, 1, 9, 7), 24627), N((2, 1, 3, 3), 24753), N((1, 2, 1, 1), 24773), N((1,), 24775)]),
    Case('conv_transpose1d-037', 'conv_transpose', {'stride': [2], 'padding': [0], 'output_padding': [0], 'dilation': [1], 'groups': 2},
         [N((2, 6, 2), 24780), N((6, 2, 1), 24804)]),
    Case('conv_transpose1d-038', 'conv_transpose', {'stride': [1], 'padding': 'same', 'dilation': [1], 'groups': 2},
         [N((1, 6, 6), 24823), N((6, 3, 2), 24859)]),
    Case('conv_transpose3d-039', 'conv_transpose', {'stride': [2, 2, 2], 'padding': [0, 1, 2], 'output_padding': [0, 0, 1], 'dilation': [1, 2, 2], 'groups': 1},
         [N((1, 1, 4, 4, 5), 24906), N((1, 3, 1, 2, 4), 24986)]),
    Case('conv_transpose3d-040', 'conv_transpose', {'stride': [3, 3, 3], 'padding': [0, 0, 0], 'output_padding': [2, 2, 0], 'dilation': [1, 2, 2], 'groups': 1},
         [N((2, 1, 2, 5, 2), 25023), N((1, 2, 1, 2, 1), 25063)]),
    Case('conv_transpose3d-041', 'conv_transpose', {'stride': [2, 1, 3], 'padding': [1, 1, 0], 'output_padding': [0, 0, 2], 'dilation': [1, 1, 2], 'groups': 1},
         [N((2, 1, 3, 3, 4), 25079), N((1, 2, 3, 4, 1), 25151)]),
    Case('deform_conv2d-042', 'deform_conv2d', {'stride': [2, 1], 'padding': [0, 1], 'dilation': [1, 2]},
         [N((2, 2, 6, 5), 25187), N((2, 24, 2, 5), 25345, scale=0.5, rounded=True), N((3, 2, 3, 2), 25309)],
         mask=U((2, 12, 2, 5), 25837)),
    Case('deform_conv2d-043', 'deform_conv2d', {'stride': [2, 1], 'padding': [0, 0], 'dilation': [2, 1]},
         [N((1, 4, 7, 7), 26086), N((1, 16, 3, 6), 26319, scale=2.0), N((2, 4, 2, 2), 26285), N((2,), 26760)],
         mask=U((1, 8, 3, 6), 26615)),
    Case('deform_conv2d-044', 'deform_conv2d', {'stride': [1, 1], 'padding': [1, 0], 'dilation': [2, 2]},
         [N((1, 2, 8, 9), 26770), N((1, 18, 6, 5), 26934, scale=2.0, rounded=True), N((1, 2, 3, 3), 26916)]),
    Case('deform_conv2d-045', 'deform_conv2d', {'stride': [1, 1], 'padding': [0, 0], 'dilation': [2, 1]},
         [N((1, 2, 6, 8), 27498), N((1, 4, 6, 7), 27606, scale=0.5), N((4, 1, 1, 2), 27598)]),
    Case('convolve-046', 'convolve', {'mode': 'valid'},
         [N((20,), 27784), N((16,), 27805)]),
    Case('correlate-047', 'correlate', {'mode': 'valid'},
         [N((20,), 27824), N((34,), 27844)]),
]
# fmt: on


# ----------------------------------------------------------------------------- expected outputs


def _per_dim(value, ndim):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * ndim


def conv_pad_pairs(padding, in_size, kernel, stride, dilation):
    """(lo, hi) per spatial dimension for gpuconv.conv's ``padding`` ('same': ceil(n / s)
    outputs, the smaller half of the total at the low end)."""
    ndim = len(in_size)
    if padding == "valid":
        return [(0, 0)] * ndim
    if padding == "same":
        pairs = []
        for n, k, s, d in zip(in_size, kernel, stride, dilation):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pairs.append((total // 2, total - total // 2))
        return pairs
    return [tuple(p) if isinstance(p, (list, tuple)) else (p, p) for p in _per_dim(padding, ndim)]


def torch_conv(x, w, b, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """gpuconv.conv's definition through torch.nn.functional: F.pad, then F.conv{1,2,3}d."""
    import torch.nn.functional as F

    ndim = x.ndim - 2
    stride, dilation = _per_dim(stride, ndim), _per_dim(dilation, ndim)
    pairs = conv_pad_pairs(padding, tuple(x.shape[2:]), tuple(w.shape[2:]), stride, dilation)
    flat = [v for pair in reversed(pairs) for v in pair]  # F.pad: last dimension first
    x = F.pad(x, flat, mode="constant" if padding_mode == "zeros" else padding_mode)
    conv = getattr(F, f"conv{ndim}d")
    return conv(x, w, b, stride=stride, dilation=dilation, groups=groups)


def torch_conv_transpose(x, w, b, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """gpuconv.conv_transpose through F.conv_transpose{1,2,3}d; 'same' gives ``n * stride``
    outputs: the full output cropped by ``((k - 1) * dilation + 1 - stride) // 2`` at the low
    end."""
    import torch.nn.functional as F

    ndim = x.ndim - 2
    stride, dilation = _per_dim(stride, ndim), _per_dim(dilation, ndim)
    conv_transpose = getattr(F, f"conv_transpose{ndim}d")
    if padding != "same":
        return conv_transpose(
            x,
            w,
            b,
            stride=stride,
            padding=_per_dim(padding, ndim),
            output_padding=_per_dim(output_padding, ndim),
            groups=groups,
            dilation=dilation,
        )
    full = conv_transpose(x, w, b, stride=stride, groups=groups, dilation=dilation)
    index = [slice(None), slice(None)]
    for n, k, s, d in zip(x.shape[2:], w.shape[2:], stride, dilation):
        lo = ((k - 1) * d + 1 - s) // 2
        index.append(slice(lo, lo + n * s))
    return full[tuple(index)]


def torchvision_deform_conv2d_cpu(x, offset, weight, bias, mask, stride, padding, dilation):
    """torchvision's CPU ``deform_conv2d`` (``deformable_im2col``, then one ``addmm`` per weight
    group over the whole batch, then ``+ bias``), op for op in torch, for machines where
    torchvision's compiled ops do not load. It reproduces the stored torchvision 0.29.1 outputs
    bitwise (all 8 deformable cases, checked 2026-11-30) and shares no code with gpuconv.

    Shapes (torchvision's): x (B, C, H, W), offset (B, 2 * G_off * kh * kw, oh, ow) with
    (dy, dx) pairs per tap, weight (O, C / groups, kh, kw), mask (B, G_off * kh * kw, oh, ow)."""
    import torch

    batch, channels, height, width = x.shape
    out_channels, per_group, kh, kw = weight.shape
    groups = channels // per_group
    out_h, out_w = offset.shape[2:]
    offset_groups = offset.shape[1] // (2 * kh * kw)
    out_y = torch.arange(out_h).view(out_h, 1)
    out_x = torch.arange(out_w).view(1, out_w)
    columns = torch.zeros(channels, kh, kw, batch, out_h, out_w, dtype=x.dtype)
    zero = torch.zeros((), dtype=x.dtype)
    for c in range(channels):
        group = c // (channels // offset_groups)
        for i in range(kh):
            for j in range(kw):
                tap = i * kw + j
                for b in range(batch):
                    image = x[b, c]
                    y = (out_y * stride[0] - padding[0] + i * dilation[0]).to(x.dtype) + offset[
                        b, group * 2 * kh * kw + 2 * tap
                    ]
                    z = (out_x * stride[1] - padding[1] + j * dilation[1]).to(x.dtype) + offset[
                        b, group * 2 * kh * kw + 2 * tap + 1
                    ]
                    inside = ~((y <= -1) | (height <= y) | (z <= -1) | (width <= z))
                    y_low, z_low = torch.floor(y), torch.floor(z)
                    ly, lz = y - y_low, z - z_low
                    hy, hz = 1 - ly, 1 - lz
                    r0, q0 = y_low.long(), z_low.long()
                    r1, q1 = r0 + 1, q0 + 1

                    def pixel(r, q, ok, image=image):
                        value = image[r.clamp(0, height - 1), q.clamp(0, width - 1)]
                        return torch.where(ok, value, zero)

                    value = (
                        hy * hz * pixel(r0, q0, (r0 >= 0) & (q0 >= 0))
                        + hy * lz * pixel(r0, q1, (r0 >= 0) & (q1 <= width - 1))
                        + ly * hz * pixel(r1, q0, (r1 <= height - 1) & (q0 >= 0))
                        + ly * lz * pixel(r1, q1, (r1 <= height - 1) & (q1 <= width - 1))
                    )
                    value = torch.where(inside, value, zero)
                    scale = 1.0 if mask is None else mask[b, group * kh * kw + tap]
                    columns[c, i, j, b] = scale * value
    columns = columns.reshape(groups, per_group * kh * kw, batch * out_h * out_w)
    weight = weight.reshape(groups, out_channels // groups, per_group * kh * kw)
    out = torch.zeros(groups, out_channels // groups, batch * out_h * out_w, dtype=x.dtype)
    for g in range(groups):
        out[g] = torch.addmm(out[g], weight[g], columns[g])
    out = out.reshape(out_channels, batch, out_h, out_w).transpose(0, 1)
    if bias is not None:
        out = out + bias.view(1, out_channels, 1, 1)
    return out.contiguous()


@functools.cache
def _torchvision_deform_conv2d():
    """torchvision.ops.deform_conv2d where its compiled ops load, else the CPU replica."""
    try:
        import torch
        from torchvision.ops import deform_conv2d

        deform_conv2d(
            torch.zeros(1, 1, 1, 1, dtype=torch.float64),
            torch.zeros(1, 2, 1, 1, dtype=torch.float64),
            torch.zeros(1, 1, 1, 1, dtype=torch.float64),
        )
    except (ImportError, OSError, RuntimeError) as exc:  # e.g. operator torchvision::nms missing
        print(
            f"torchvision unusable ({type(exc).__name__}); deformable cases through "
            "torchvision_deform_conv2d_cpu",
            file=sys.stderr,
        )
        return None
    return deform_conv2d


def expected(case: Case, arrays: list, mask):
    """The expected output of ``case`` on its inputs (float64 / complex128 NumPy array)."""
    if case.op in ("convolve", "correlate"):
        return getattr(np, case.op)(*arrays, **case.kwargs)
    import torch

    tensors = [torch.from_numpy(a) for a in arrays]
    kwargs = dict(case.kwargs)
    if case.op == "conv":
        x, w, *b = tensors
        out = torch_conv(x, w, b[0] if b else None, **kwargs)
    elif case.op == "depthwise_conv":
        x, w, *b = tensors
        out = torch_conv(x, w, b[0] if b else None, groups=x.shape[1], **kwargs)
    elif case.op == "separable_conv":
        x, depthwise, pointwise, *b = tensors
        hidden = torch_conv(x, depthwise, None, groups=x.shape[1], **kwargs)
        out = torch_conv(hidden, pointwise, b[0] if b else None)
    elif case.op == "conv_transpose":
        x, w, *b = tensors
        out = torch_conv_transpose(x, w, b[0] if b else None, **kwargs)
    elif case.op == "deform_conv2d":
        x, offset, w, *b = tensors
        mask = None if mask is None else torch.from_numpy(mask)
        geometry = {k: tuple(v) for k, v in kwargs.items()}
        deform_conv2d = _torchvision_deform_conv2d()
        if deform_conv2d is None:
            out = torchvision_deform_conv2d_cpu(x, offset, w, b[0] if b else None, mask, **geometry)
        else:
            out = deform_conv2d(x, offset, w, b[0] if b else None, mask=mask, **geometry)
    else:
        raise ValueError(f"case {case.id}: unknown op {case.op!r}")
    return out.numpy()


# ----------------------------------------------------------------------------- files


def build(cases=CASES):
    """(the cases.json document, the cases.npz arrays in order)."""
    documents, arrays = [], {}
    for case in cases:
        inputs = [draw.array() for draw in case.args]
        mask = case.mask.array() if case.mask is not None else None
        keys = [f"{case.id}/arg{i}" for i in range(len(inputs))]
        arrays.update(zip(keys, inputs))
        kwargs = dict(case.kwargs)
        if mask is not None:
            arrays[f"{case.id}/mask"] = mask
            kwargs["mask"] = {"array": f"{case.id}/mask"}
        arrays[f"{case.id}/expected"] = expected(case, inputs, mask)
        documents.append(
            {
                "id": case.id,
                "op": case.op,
                "args": keys,
                "kwargs": kwargs,
                "expected": f"{case.id}/expected",
            }
        )
    return {"format": 1, "about": ABOUT, "made_with": _versions(), "cases": documents}, arrays


def _versions():
    """The versions this run used (``made_with``)."""
    import torch

    torchvision = "torchvision_deform_conv2d_cpu (this script's replica of its CPU kernel)"
    if _torchvision_deform_conv2d() is not None:
        torchvision = __import__("torchvision").__version__
    return {"torch": torch.__version__, "torchvision": torchvision, "numpy": np.__version__}


def write(out_dir: pathlib.Path, document, arrays):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cases.json").write_text(json.dumps(document, indent=1))
    np.savez_compressed(out_dir / "cases.npz", **arrays)


def compare(new_dir: pathlib.Path, old_dir: pathlib.Path) -> bool:
    """Print what differs between two sets of case files; True when both are bitwise equal."""
    same = True
    for name in ("cases.json", "cases.npz"):
        equal = (new_dir / name).read_bytes() == (old_dir / name).read_bytes()
        same &= equal
        print(f"{name}: {'bitwise equal' if equal else 'DIFFERS'}")
    new_doc = json.loads((new_dir / "cases.json").read_text())
    old_doc = json.loads((old_dir / "cases.json").read_text())
    for key in old_doc:
        if new_doc.get(key) != old_doc[key]:
            print(f"  cases.json[{key!r}] differs: {new_doc.get(key)!r} != {old_doc[key]!r}")
    with np.load(new_dir / "cases.npz") as new, np.load(old_dir / "cases.npz") as old:
        if new.files != old.files:
            print(f"  cases.npz members differ: {sorted(set(new.files) ^ set(old.files))}")
        for key in old.files:
            if key not in new.files:
                continue
            a, b = new[key], old[key]
            if a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes():
                continue
            if a.shape != b.shape:
                print(f"  {key}: shape {a.shape} != {b.shape}")
                continue
            scale = np.abs(b).max() or 1.0
            print(f"  {key}: max |new - old| / max |old| = {np.abs(a - b).max() / scale:.3g}")
    return same


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=ROOT / "tests" / "data",
        help="where to write cases.json and cases.npz (default: tests/data)",
    )
    parser.add_argument(
        "--compare",
        type=pathlib.Path,
        metavar="DIR",
        help="afterwards, compare the written files with those in DIR",
    )
    args = parser.parse_args(argv)
    document, arrays = build()
    write(args.out, document, arrays)
    print(f"wrote {len(document['cases'])} cases to {args.out}")
    if args.compare:
        return 0 if compare(args.out, args.compare) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
