"""The stride-1 input gradient of the NumPy backend (``numpy_grad._stride1_input_grad``).

It is a correlation of the zero-padded grad_output with the flipped weights, built in a
flattened "wide" layout and chunked by rows; these tests pin it against an independent
reference (a direct scatter-add over kernel taps, written here) in every padding mode, with
groups and dilation, and with workspaces small enough to force batch and row chunking.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gpuconv import grad
from gpuconv._shapes import conv_geometry
from gpuconv.backends import numpy_grad

_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge",
              "circular": "wrap"}


def _reference_input_grad(x_shape, w, go, padding, dilation, groups, mode):
    """d<go, conv(pad(x), w)>/dx for stride 1, by a scatter-add per tap and a fold of the
    padded gradient through numpy.pad of the input *positions* (float64)."""
    n, c_in, *size = x_shape
    c_out, cg, *kernel = w.shape
    og = c_out // groups
    nd = len(size)
    out = go.shape[2:]
    padded = [s + 2 * padding for s in size]
    gp = np.zeros((n, c_in, *padded))
    w64, go64 = w.astype(np.float64), go.astype(np.float64)
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = tuple(slice(t * dilation, t * dilation + o) for t, o in zip(tap, out))
        for gi in range(groups):
            # (og, cg) at this tap, contracted with grad_output's og channels
            wt = w64[(slice(gi * og, (gi + 1) * og), slice(None)) + tap]
            contrib = np.einsum("oc,no...->nc...", wt, go64[:, gi * og:(gi + 1) * og])
            gp[(slice(None), slice(gi * cg, (gi + 1) * cg)) + window] += contrib
    # fold: every padded position adds onto the input position numpy.pad read it from
    index = np.arange(int(np.prod(size))).reshape(size)
    source = np.pad(index, [(padding, padding)] * nd, mode=_PAD_MODES[mode],
                    **({"constant_values": -1} if mode == "zeros" else {}))
    flat_src = source.ravel()
    keep = flat_src >= 0
    result = np.zeros((n, c_in, int(np.prod(size))))
    np.add.at(result.transpose(2, 0, 1), flat_src[keep],
              gp.reshape(n, c_in, -1).transpose(2, 0, 1)[keep])
    return result.reshape(x_shape)


CASES = [
    # (x_shape, w_shape, padding, dilation, groups)
    ((2, 4, 9, 8), (6, 4, 3, 3), 1, 1, 1),
    ((2, 4, 9, 8), (6, 2, 3, 2), 2, 2, 2),
    ((3, 3, 17), (5, 3, 5), 2, 1, 1),
    ((1, 4, 5, 6, 7), (4, 2, 3, 3, 3), 1, 1, 2),
    ((2, 2, 7, 7), (2, 2, 1, 1), 0, 1, 1),
]


@pytest.mark.parametrize("mode", sorted(_PAD_MODES))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-p{c[2]}d{c[3]}g{c[4]}")
@pytest.mark.parametrize("small_workspace", [False, True])
def test_stride1_input_grad_matches_scatter_reference(case, mode, small_workspace,
                                                      monkeypatch):
    x_shape, w_shape, padding, dilation, groups = case
    if mode == "reflect" and padding >= min(x_shape[2:]):
        pytest.skip("reflect needs padding < size")
    if small_workspace:
        # force several batch chunks and one-row chunks
        monkeypatch.setattr(numpy_grad, "WORKSPACE_BYTES", 1)
        monkeypatch.setattr(numpy_grad, "CHUNK_BYTES", 1)
    rng = np.random.default_rng(7)
    w = rng.standard_normal(w_shape)
    geom = conv_geometry(x_shape[2:], w_shape[2:], stride=1, padding=padding,
                         dilation=dilation, groups=groups, padding_mode=mode)
    go = rng.standard_normal((x_shape[0], w_shape[0], *geom.out_size))
    got = numpy_grad._stride1_input_grad(w, go, geom)
    expected = _reference_input_grad(x_shape, w, go, padding, dilation, groups, mode)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # the public entry point agrees (whichever path the cost rule picks)
    public = grad.conv_input(x_shape, w, go, padding=padding, dilation=dilation,
                             groups=groups, padding_mode=mode)
    np.testing.assert_allclose(public, expected, rtol=1e-12, atol=1e-12)


def test_stride1_path_is_taken_where_it_pays_and_not_elsewhere():
    resnet = conv_geometry((56, 56), (3, 3), stride=1, padding=1, dilation=1)
    assert numpy_grad._stride1_input_pays((64, 64, 3, 3), resnet)
    wide3d = conv_geometry((16, 32, 32), (3, 3, 3), stride=1, padding=1, dilation=1)
    assert not numpy_grad._stride1_input_pays((32, 16, 3, 3, 3), wide3d)
    strided = conv_geometry((56, 56), (3, 3), stride=2, padding=1, dilation=1)
    assert not numpy_grad._stride1_input_pays((64, 64, 3, 3), strided)


def test_stride1_input_grad_float16_computes_in_float32():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    go = rng.standard_normal((2, 4, 8, 8)).astype(np.float16)
    got = grad.conv_input((2, 3, 8, 8), w, go, padding=1)
    assert got.dtype == np.float16
    expected = _reference_input_grad((2, 3, 8, 8), w.astype(np.float64), go.astype(np.float64),
                                     1, 1, 1, "zeros")
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=2e-3,
                               atol=2e-3 * np.abs(expected).max())
