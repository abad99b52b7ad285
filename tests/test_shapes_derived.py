"""The derived geometry of gpuconv._shapes against direct computation, and its users: the
bench's FLOP model counts dilation (its output sizes come from _shapes)."""

from __future__ import annotations

import itertools

import pytest

from gpuconv import _shapes, bench
from gpuconv._shapes import (
    as_3d,
    conv_as_transpose,
    conv_geometry,
    conv_transpose_geometry,
    span,
    transpose_as_conv,
)

CASES = [(size, k, s, d, p) for size, k, s, d, p in itertools.product(
    (1, 5, 8), (1, 2, 3), (1, 2, 3), (1, 2), (0, 1, 2))
    if _shapes.full_extent(k, d) <= size + 2 * p]  # at least one output


@pytest.mark.parametrize("size, k, s, d, p", CASES)
def test_conv_as_transpose_is_conv_transpose_geometry(size, k, s, d, p):
    """The input gradient's geometry (crop = pad_lo, output = the input) is what
    conv_transpose_geometry gives for the same arguments and the output padding that restores
    the input size; transpose_as_conv takes it back to the conv's sizes."""
    geom = conv_geometry((size,), (k,), stride=s, padding=p, dilation=d)
    back = conv_as_transpose(geom, geom.pad_lo, geom.in_size)
    output_padding = size - _shapes.conv_transpose_out_size(geom.out_size[0], k, s, p, p, d)
    assert 0 <= output_padding < max(s, d)
    ref = conv_transpose_geometry(geom.out_size, (k,), stride=s, padding=p,
                                  output_padding=output_padding, dilation=d)
    assert back == ref
    again = transpose_as_conv(back)  # its pad_hi leaves out the cells no output reads
    assert (again.in_size, again.out_size, again.pad_lo) == (geom.in_size, geom.out_size,
                                                             geom.pad_lo)
    assert _shapes.conv_out_size(size, k, s, p, again.pad_hi[0], d) == geom.out_size[0]


def test_geometry3d_lifts_and_reaches():
    geom = conv_geometry((6, 9), (2, 3), stride=(1, 2), padding=((0, 1), (3, 0)), dilation=2)
    g3 = as_3d(geom)
    assert g3.in_size == (1, 6, 9) and g3.pad_lo == (0, 0, 3) and g3.pad_hi == (0, 1, 0)
    assert g3.padded_size == (1, *geom.padded_size)
    assert len(g3.args()) == 18
    assert g3.reach() == max(span(o, k, s, d) + p for o, k, s, d, p in zip(
        geom.out_size, geom.kernel, geom.stride, geom.dilation, geom.pad_lo))
    with pytest.raises(ValueError, match="1 to 3"):
        as_3d(conv_geometry((3,) * 4, (1,) * 4, stride=1, padding=0, dilation=1))


def test_bench_flops_count_dilation():
    plain = dict(n=1, c_in=1, c_out=1, size=(9,), kernel=3, padding=0)
    # dilation 2: a 5-cell extent, 5 outputs of 3 taps
    assert bench.flops("conv", {**plain, "dilation": 2}) == 2 * 5 * 3
    assert bench.flops("conv", plain) == 2 * 7 * 3
    # conv_transpose: 2 * N * C_in * prod(in) * C_out * K, whatever the dilation
    assert bench.flops("conv_transpose", {**plain, "stride": 1, "dilation": 2}) == 2 * 9 * 3
