"""kernels/conv_igemm.cu (the tensor-core implicit-GEMM forward convolution) at the kernel level,
on the emulator: float16 and bfloat16 (mma.m16n8k16) and float32 through TF32 (mma.m16n8k8).

Reference: a float64 convolution (numpy.pad + one einsum per kernel tap; nothing shared with
the kernel) of the *rounded* inputs -- float16 / bfloat16 values as stored, and for TF32 the
float32 inputs rounded to TF32 to nearest, ties away (cvt.rna), as the kernel rounds them.

Error bound. Every product of two rounded inputs is exact in fp32 (at most 11 + 11 significant
bits), so the only errors are the fp32 additions of the K products (and the bias) and the final
rounding to the output type. With S = sum_k |A_mk B_kn| + |bias| (the same convolution of |x|
and |w|), n = K + 1 terms and an accumulation unit roundoff u_acc,

    |out - ref| <= gamma_n * S + u_out * (|ref| + gamma_n * S) + eta_out,
    gamma_n = n * u_acc / (1 - n * u_acc),

u_acc = 2**-23 (fp32 with truncation -- tensor cores may chop rather than round their internal
sums; the emulator rounds, 2**-24, so it meets this with a factor 2 to spare), u_out = 2**-11
(float16), 2**-8 (bfloat16), 0 (float32 output: the accumulator is stored as is), eta_out = 2**-25
(half of float16's subnormal spacing; 0 otherwise). Each case asserts max |err| / bound <= 1.

Also: every instantiation (3 kinds x 4 padding modes) once under checked() and race_check(),
strict cp.async (always on: a stage read before its wait_group would read NaN), the memory
counters, and the NVRTC/ptxas compile for sm_80 and sm_90 (skipped without NVRTC).
"""

from __future__ import annotations

import numpy as np
import pytest

from gpuconv import _kernels
from gpuconv.backends.device import _igemm as ig

emu = pytest.importorskip("gpuconv._emulator")

if not emu.available():
    pytest.skip("g++ is not available: the emulator cannot run", allow_module_level=True)

KINDS = ("float16", "bfloat16", "tf32")
MODES = ("zeros", "reflect", "replicate", "circular")
NP_PAD = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
U_ACC = 2.0**-23
U_OUT = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "tf32": 0.0}
ETA_OUT = {"float16": 2.0**-25, "bfloat16": 0.0, "tf32": 0.0}


@pytest.fixture(scope="module")
def mod():
    """One emulator module with every instantiation (int index) and one int64 one."""
    names = ig.all_name_expressions() + [ig.name_expression("float16", "zeros", "long long")]
    return emu.load_module(_kernels.source_path(ig.IGEMM_FILE), names)


# ------------------------------------------------------------------ rounding models (NumPy)
def bf16_bits(values) -> np.ndarray:
    """float -> bfloat16 bits, to nearest even."""
    u = np.asarray(values, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(bits) -> np.ndarray:
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def tf32_round(values) -> np.ndarray:
    """float32 -> the TF32 value (10 fraction bits), to nearest, ties away from zero."""
    u = np.asarray(values, np.float32).view(np.uint32).astype(np.uint64)
    finite = (u & 0x7F800000) != 0x7F800000
    u = np.where(finite, u + 0x1000, u) & 0xFFFFE000
    return u.astype(np.uint32).view(np.float32)


def make(kind, shape, rng, scale=1.0, operand=True):
    """(array passed to the kernel, its float64 value as the tensor core sees it; the bias,
    ``operand=False``, is added in fp32 unrounded)."""
    v = rng.standard_normal(shape) * scale
    if kind == "float16":
        a = v.astype(np.float16)
        return a, a.astype(np.float64)
    if kind == "bfloat16":
        a = bf16_bits(v)
        return a, bf16_value(a)
    a = v.astype(np.float32)
    return a, (tf32_round(a) if operand else a).astype(np.float64)


def out_value(kind, out) -> np.ndarray:
    return bf16_value(out) if kind == "bfloat16" else out.astype(np.float64)


# ------------------------------------------------------------------ the float64 reference
def reference(x, w, b, *, stride, padding, dilation, groups, mode):
    """Cross-correlation in float64: pad with numpy.pad, then one einsum per kernel tap.
    ``padding`` is per spatial dim, (lo, hi) pairs."""
    nd = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0), *padding], mode=NP_PAD[mode])
    ks = w.shape[2:]
    outs = [(xp.shape[2 + i] - dilation[i] * (ks[i] - 1) - 1) // stride[i] + 1 for i in range(nd)]
    c_out, cg = w.shape[:2]
    og = c_out // groups
    out = np.zeros((x.shape[0], c_out, *outs))
    for tap in np.ndindex(*ks):
        sl = tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                   for t, d, s, o in zip(tap, dilation, stride, outs))
        patch = xp[(slice(None), slice(None), *sl)]
        for g in range(groups):
            w_tap = w[(slice(g * og, (g + 1) * og), slice(None), *tap)]  # (og, cg)
            out[:, g * og:(g + 1) * og] += np.einsum(
                "nc...,oc->no...", patch[:, g * cg:(g + 1) * cg], w_tap)
    if b is not None:
        out += b.reshape(1, -1, *([1] * nd))
    return out


def tup(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def run_case(mod, kind, case, seed=0, index=None, layout="nchw"):
    """Run ``case`` on the kernel (``layout="nhwc"``: a channels-last x through the
    channels-last gather, which returns a channels-last result); returns (max |err| / bound,
    max |err|, output)."""
    rng = np.random.default_rng(seed)
    n, c_in, c_out, spatial, kernel = (case[k] for k in ("n", "c_in", "c_out", "spatial", "k"))
    nd = len(spatial)
    groups = case.get("groups", 1)
    stride, dilation = tup(case.get("stride", 1), nd), tup(case.get("dilation", 1), nd)
    pad = tup(case.get("padding", 0), nd)
    mode = case.get("mode", "zeros")
    x, xv = make(kind, (n, c_in, *spatial), rng)
    w, wv = make(kind, (c_out, c_in // groups, *tup(kernel, nd)), rng, 1 / np.sqrt(c_in))
    b, bv = make(kind, (c_out,), rng, operand=False) if case.get("bias", True) else (None, None)
    if layout == "nhwc":
        x = _channels_last(x)
    out = ig.conv_igemm_forward(mod, x, w, b, kind=kind, stride=stride, padding=pad,
                                dilation=dilation, groups=groups, padding_mode=mode, index=index,
                                layout=layout)
    if layout == "nhwc":
        assert np.moveaxis(out, 1, -1).flags.c_contiguous  # a channels-last result
        out = np.ascontiguousarray(out)
    pairs = [(p, p) for p in pad]
    kw = {"stride": stride, "padding": pairs, "dilation": dilation, "groups": groups, "mode": mode}
    ref = reference(xv, wv, bv, **kw)
    mag = reference(np.abs(xv), np.abs(wv), None if bv is None else np.abs(bv), **kw)
    terms = (c_in // groups) * int(np.prod(tup(kernel, nd))) + 1
    gamma = terms * U_ACC / (1 - terms * U_ACC)
    bound = gamma * mag + U_OUT[kind] * (np.abs(ref) + gamma * mag) + ETA_OUT[kind]
    got = out_value(kind, out)
    assert got.shape == ref.shape
    err = np.abs(got - ref)
    assert np.isfinite(got).all()
    return float((err / bound).max()), float(err.max()), out


CASES = {
    # 2-D, C_in = 5 (K = 45: odd, a 2-byte weight copy for 16-bit), zero padding
    "2d_cin5": {"n": 2, "c_in": 5, "c_out": 7, "spatial": (9, 11), "k": 3, "padding": 1},
    # a stem: C_in = 3, 7x7 stride 2 (K = 147), no bias
    "stem_cin3_s2": {"n": 1, "c_in": 3, "c_out": 16, "spatial": (13, 12), "k": 7, "stride": 2, "padding": 3,
                         "bias": False},
    # 1-D, dilation 2, reflect
    "1d_dil2_reflect": {"n": 3, "c_in": 8, "c_out": 12, "spatial": (37,), "k": 5, "dilation": 2, "padding": 4,
                            "mode": "reflect"},
    # 3-D, stride (1, 2, 1), replicate
    "3d_replicate": {"n": 1, "c_in": 4, "c_out": 6, "spatial": (5, 6, 7), "k": 3, "stride": (1, 2, 1),
                         "padding": 1, "mode": "replicate"},
    # groups 3 (C_in/g = 4, C_out/g = 3), dilation 2, circular
    "groups3_circular": {"n": 2, "c_in": 12, "c_out": 9, "spatial": (8, 9), "k": 3, "dilation": 2, "padding": 2,
                             "groups": 3, "mode": "circular", "bias": False},
    # several M and N tiles (M = 180, N = 70), K = 144 over several pipeline stages
    "tiles_mn": {"n": 2, "c_in": 16, "c_out": 70, "spatial": (10, 9), "k": 3, "padding": 1},
    # 1x1 stride 1: K = 32 (16-byte weight copies)
    "pointwise": {"n": 1, "c_in": 32, "c_out": 40, "spatial": (8, 16), "k": 1},
    # K = 54 (even, not a multiple of 8: 4-byte weight copies), strided, dilated, reflect
    "2d_cin6_reflect": {"n": 1, "c_in": 6, "c_out": 5, "spatial": (11, 12), "k": (3, 2), "stride": (2, 3),
                            "dilation": (2, 1), "padding": (2, 1), "mode": "reflect"},
    # depthwise-like (C_in/g = 1, K = 9), replicate
    "depthwise_replicate": {"n": 2, "c_in": 6, "c_out": 12, "spatial": (7, 6), "k": 3, "groups": 6, "padding": 1,
                                "mode": "replicate"},
    # 3-D circular with a long K (C_in = 20, K = 540) and a 1-wide kernel dim
    "3d_circular_longk": {"n": 1, "c_in": 20, "c_out": 10, "spatial": (3, 5, 6), "k": (1, 3, 3),
                              "padding": (0, 1, 1), "mode": "circular", "bias": False},
    # 1-D zeros, big stride, K = 7 * 3 = 21 (odd)
    "1d_stride3": {"n": 2, "c_in": 7, "c_out": 3, "spatial": (29,), "k": 3, "stride": 3, "padding": 2},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_within_bound(mod, kind, case):
    ratio, err, _ = run_case(mod, kind, CASES[case], seed=list(CASES).index(case))
    assert ratio <= 1.0, f"max error {err:.3g} is {ratio:.3g} x the bound"


def test_every_padding_mode_and_kind_is_covered():
    modes = {c.get("mode", "zeros") for c in CASES.values()}
    assert modes == set(MODES)


def test_int64_index(mod):
    ratio, _, _ = run_case(mod, "float16", CASES["groups3_circular"] | {"mode": "zeros"},
                           index=np.int64)
    assert ratio <= 1.0


def test_weight_copy_widths_are_exercised():
    """The cases reach the 16-byte, 4-byte and 2-byte weight copies."""
    widths = set()
    for case in CASES.values():
        nd = len(case["spatial"])
        k = case["c_in"] // case.get("groups", 1) * int(np.prod(tup(case["k"], nd)))
        for kind in KINDS:
            widths.add((kind, ig.weight_copy_bytes(ig.KINDS[kind][1].itemsize, 0, k)))
    assert {("float16", 16), ("float16", 4), ("float16", 2), ("tf32", 16), ("tf32", 4)} <= widths


def test_tf32_rounds_to_nearest_not_truncates(mod):
    """Inputs just above a TF32 rounding midpoint: cvt.rna rounds them up; truncation (what
    the tensor core does with raw f32 bits) would give 1 + 0 = 1 exactly."""
    x = np.full((1, 1, 1, 16), np.float32(1 + 2**-11 + 2**-20), np.float32)
    w = np.ones((1, 1, 1, 1), np.float32)
    out = ig.conv_igemm_forward(mod, x, w, kind="tf32")
    np.testing.assert_array_equal(out, np.float32(1 + 2**-10))


def test_nan_and_inf_pass_through(mod):
    x = np.ones((1, 2, 1, 8), np.float16)
    x[0, 0, 0, 3] = np.nan
    x[0, 1, 0, 5] = np.inf
    w = np.ones((1, 2, 1, 1), np.float16)
    out = ig.conv_igemm_forward(mod, x, w, kind="float16")
    assert np.isnan(out[0, 0, 0, 3]) and out[0, 0, 0, 5] == np.inf
    assert (out[0, 0, 0, [0, 1, 2, 4, 6, 7]] == 2).all()


@pytest.mark.parametrize("kind", KINDS)
def test_weight_rows_do_not_leak_past_k(mod, kind):
    """K = 8 < BK: the weight copies past K must zero-fill, not read the next output channel's
    row (an inf there would turn 0 * inf into NaN in this channel)."""
    x = np.ones((1, 8, 1, 4), ig.KINDS[kind][1])
    w = np.zeros((3, 8, 1, 1), np.float32)
    w[0] = 1.0
    w[1:] = np.inf
    if kind == "bfloat16":
        x, w = bf16_bits(np.ones(x.shape)), bf16_bits(w)
    out = ig.conv_igemm_forward(mod, x, w.astype(ig.KINDS[kind][1]) if kind != "bfloat16" else w,
                                kind=kind)
    np.testing.assert_array_equal(out_value(kind, out)[0, 0], 8.0)


# ------------------------------------------------------------------ checked and race modes
SMALL = {"n": 1, "c_in": 5, "c_out": 6, "spatial": (6, 7), "k": 3, "padding": 1, "stride": (1, 2)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_checked_and_race_modes(mod, kind, mode):
    """Every instantiation once in checked mode (bounds) and under race_check (barrier
    orders, cross-block lost updates and reads); strict cp.async is always on."""
    case = SMALL | {"mode": mode, "bias": mode != "zeros"}
    with emu.checked():
        ratio_checked, _, out_checked = run_case(mod, kind, case, seed=7)
    with emu.race_check():
        ratio_race, _, out_race = run_case(mod, kind, case, seed=7)
    assert ratio_checked <= 1.0 and ratio_race <= 1.0
    np.testing.assert_array_equal(out_checked.view(np.uint8), out_race.view(np.uint8))


# ------------------------------------------------------------------ counters
def _counts(mod, kind, case):
    with emu.counters() as c:
        run_case(mod, kind, case)
    (kernel,) = c.kernels.values()
    return kernel


# a stride-1 layer whose spatial extent is a multiple of 32 elements per warp row and K a
# multiple of 32 bytes: 1x1, no padding, 16 x 16 outputs, C_in = 32
ALIGNED = {"n": 1, "c_in": 32, "c_out": 64, "spatial": (16, 16), "k": 1, "bias": False}
LAYER3X3 = {"n": 1, "c_in": 16, "c_out": 64, "spatial": (16, 16), "k": 3, "padding": 1, "bias": False}


@pytest.mark.parametrize("kind", KINDS)
def test_counters_no_bank_conflicts_in_the_main_loop(mod, kind):
    """3x3 layer with padding: every ldmatrix phase (and TF32's 32-bit A fragment loads) of the
    main loop takes one wavefront -- no bank conflicts.

    The staging accesses are checked on the aligned layer below. Here their lanes diverge (a
    16-bit pair goes by cp.async, zero fill or plain copies depending on alignment and padding;
    a float cp.async with src-size 0 is counted as one access, with a source read as two), and
    the tracker, which pairs the k-th access of each lane at a site into one warp request, then
    mixes rows: its staging figures are estimates there, not conflicts."""
    k = _counts(mod, kind, LAYER3X3)
    ldm = [s for s in k.sites.values() if s.kind == "ldmatrix"]
    assert ldm and all(s.units == s.ideal for s in ldm), ldm
    if kind == "tf32":
        frag = [s for s in k.sites.values() if s.space == "shared" and s.kind == "load"]
        assert frag and all(s.units == s.ideal for s in frag), frag


@pytest.mark.parametrize("kind", KINDS)
def test_counters_aligned_stride1_layer(mod, kind):
    """1x1 stride-1 layer (spatial 16 x 16, C_in = 32, no padding): the input gather and the
    weight copies use every byte of every 32-byte sector they touch (efficiency 100%), all of
    them by cp.async (16-bit pairs included), so do the output stores (staged through shared
    memory so that they run along m), and no shared access (ldmatrix, fragment loads, cp.async
    writes, the epilogue's tile) has a bank conflict.

    Under NCDHW this is what the layout permits: a warp gathers 32 consecutive m (output
    positions) of one k; they are contiguous in memory only for stride 1 within an output row,
    and sector-aligned only when the tap offset kw * dw - pw is a multiple of 32 bytes --
    true for every tap of a 1x1 layer without padding, for one tap in 8 (float) or 16
    (16-bit) of a 3x3 layer (on LAYER3X3 the tracker estimates 60-80%; see above for why only an estimate)."""
    k = _counts(mod, kind, ALIGNED)
    loads = [s for s in k.sites.values()
             if s.space == "global" and s.kind in ("load", "cp.async.load")]
    assert loads and all(s.units == s.ideal for s in loads), loads
    assert all(s.kind == "cp.async.load" for s in loads), loads
    stores = [s for s in k.sites.values() if s.space == "global" and s.kind == "store"]
    assert stores and all(s.units == s.ideal for s in stores), stores  # along m via sC
    shared = [s for s in k.sites.values() if s.space == "shared"]
    assert shared and all(s.units == s.ideal for s in shared), shared


# ------------------------------------------------------------------ NVRTC / ptxas
#: per SM: registers, shared memory (bytes usable by blocks), the runtime's reservation per
#: block, max resident blocks and threads (CUDA occupancy tables, compute capability 8.0/9.0)
SM_LIMITS = {
    "sm_80": {"regs": 65536, "smem": 167936, "reserved": 1024, "blocks": 32, "threads": 2048},
    "sm_90": {"regs": 65536, "smem": 233472, "reserved": 1024, "blocks": 32, "threads": 2048},
}


def blocks_per_sm(arch: str, registers: int, shared: int, threads: int = ig.THREADS) -> dict:
    """Resident blocks per SM, limited by registers (allocated per warp in units of 256, i.e.
    per thread rounded up to 8), shared memory (+ the per-block reservation) and threads."""
    lim = SM_LIMITS[arch]
    warps = threads // 32
    regs_per_warp = -(-registers // 8) * 8 * 32
    by_regs = lim["regs"] // (regs_per_warp * warps)
    by_smem = lim["smem"] // (shared + lim["reserved"])
    by_threads = lim["threads"] // threads
    return {"regs": by_regs, "smem": by_smem, "threads": by_threads,
                "blocks": min(by_regs, by_smem, by_threads, lim["blocks"])}


def test_occupancy_arithmetic():
    # 80 registers: 80 * 32 = 2560 per warp, 4 warps = 10240 per block -> 6 blocks; 26112 +
    # 1024 bytes shared -> 8 blocks; 128 threads -> 16 blocks: 6 blocks (24 warps) per SM
    assert blocks_per_sm("sm_90", 78, 26112) == {"regs": 6, "smem": 8, "threads": 16, "blocks": 6}
    assert ig.shared_bytes() == 26112


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvrtc_compiles_without_spills_and_two_blocks_fit(arch):
    """Every instantiation compiles with NVRTC + ptxas -v: no spills, no stack, and the
    registers and static shared memory leave at least 2 resident blocks per SM."""
    from gpuconv import _nvrtc

    reason = _nvrtc.unavailable_reason()
    if reason is not None:
        pytest.skip(f"NVRTC unavailable: {reason}")
    names = ig.all_name_expressions() + [ig.name_expression("float16", "zeros", "long long")]
    result = _nvrtc.compile_source(_kernels.inlined_source(ig.IGEMM_FILE), names, arch,
                                   filename=ig.IGEMM_FILE)
    report = [result.resources[n] for n in names]
    print("\n" + _nvrtc.format_report(report))
    for r in report:
        assert not r.spills and r.stack_bytes == 0, _nvrtc.format_report([r])
        assert r.shared_bytes == ig.shared_bytes()
        occ = blocks_per_sm(arch, r.registers, r.shared_bytes)
        print(f"{r.name_expression} {arch}: {r.registers} registers -> {occ}")
        assert occ["blocks"] >= 2


# ================================================================== the transposed gather
# conv_transpose forward (and so conv's input gradient) on the same kernel: Gather = 1 reads
# x at (o + crop - k * dil) / stride when that is a whole in-range position, zeros elsewhere;
# the weight goes in as rows of K (ig.transposed_weight). Same bound, n = C_in/g * taps + 1.


def reference_transpose(x, w, b, *, stride, padding, output_padding, dilation, groups):
    """Transposed convolution in float64 by its definition (a scatter): every input position
    q and tap t add x[q] * w[t] at q * stride + t * dilation of the full output, which is then
    cropped by ``padding`` at the start."""
    nd = x.ndim - 2
    ks = w.shape[2:]
    cg, og = x.shape[1] // groups, w.shape[1]
    full = [(i - 1) * s + d * (k - 1) + 1 + op
            for i, s, d, k, op in zip(x.shape[2:], stride, dilation, ks, output_padding)]
    outs = [f - 2 * p for f, p in zip(full, padding)]
    y = np.zeros((x.shape[0], og * groups, *full))
    for tap in np.ndindex(*ks):
        sl = tuple(slice(t * d, t * d + s * (i - 1) + 1, s)
                   for t, d, s, i in zip(tap, dilation, stride, x.shape[2:]))
        for g in range(groups):
            y[(slice(None), slice(g * og, (g + 1) * og), *sl)] += np.einsum(
                "nc...,co->no...", x[:, g * cg:(g + 1) * cg], w[(slice(g * cg, (g + 1) * cg),
                                                                 slice(None), *tap)])
    y = y[(slice(None), slice(None), *(slice(p, p + o) for p, o in zip(padding, outs)))]
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * nd))
    return y


def run_transpose_case(mod, kind, case, seed=0, index=None):
    rng = np.random.default_rng(seed)
    n, c_in, c_out, spatial, kernel = (case[k] for k in ("n", "c_in", "c_out", "spatial", "k"))
    nd = len(spatial)
    groups = case.get("groups", 1)
    kw = {"stride": tup(case.get("stride", 1), nd), "padding": tup(case.get("padding", 0), nd),
          "output_padding": tup(case.get("output_padding", 0), nd),
          "dilation": tup(case.get("dilation", 1), nd), "groups": groups}
    x, xv = make(kind, (n, c_in, *spatial), rng)
    w, wv = make(kind, (c_in, c_out // groups, *tup(kernel, nd)), rng, 1 / np.sqrt(c_in))
    b, bv = make(kind, (c_out,), rng, operand=False) if case.get("bias", True) else (None, None)
    out = ig.conv_igemm_transpose(mod, x, w, b, kind=kind, index=index, **kw)
    ref = reference_transpose(xv, wv, bv, **kw)
    mag = reference_transpose(np.abs(xv), np.abs(wv), None if bv is None else np.abs(bv), **kw)
    terms = (c_in // groups) * int(np.prod(tup(kernel, nd))) + 1
    gamma = terms * U_ACC / (1 - terms * U_ACC)
    bound = gamma * mag + U_OUT[kind] * (np.abs(ref) + gamma * mag) + ETA_OUT[kind]
    got = out_value(kind, out)
    assert got.shape == ref.shape and np.isfinite(got).all()
    return _ratio(np.abs(got - ref), bound), float(np.abs(got - ref).max()), out


def _ratio(err, bound) -> float:
    """max err / bound, where a zero bound (no term reaches the position, no bias) demands a
    zero error."""
    safe = np.where(bound > 0, bound, 1.0)
    return float(np.where(bound > 0, err / safe, np.where(err > 0, np.inf, 0.0)).max())


TRANSPOSE_CASES = {
    # stride 2 + output_padding 1 (half the (position, tap) pairs miss), padding 1, C odd
    "2d_s2_op1": {"n": 2, "c_in": 5, "c_out": 7, "spatial": (6, 5), "k": 3, "stride": 2,
                  "padding": 1, "output_padding": 1},
    # dilation 2, stride 3, no padding, groups 2, no bias
    "2d_groups_dil": {"n": 1, "c_in": 8, "c_out": 6, "spatial": (5, 4), "k": (3, 2),
                      "stride": (3, 2), "dilation": (2, 1), "groups": 2, "bias": False},
    # 1-D, stride 1 (the contiguous path), long K over several stages, several N tiles
    "1d_longk": {"n": 2, "c_in": 24, "c_out": 70, "spatial": (33,), "k": 5, "padding": 2},
    # 3-D, stride (1, 2, 2)
    "3d_s122": {"n": 1, "c_in": 4, "c_out": 5, "spatial": (3, 4, 5), "k": 3,
                "stride": (1, 2, 2), "padding": 1, "output_padding": (0, 1, 0)},
    # conv's input gradient of the stem (7x7 stride 2 pad 3, C_in = 3: here C_out = 3)
    "stem_input_grad": {"n": 1, "c_in": 16, "c_out": 3, "spatial": (7, 6), "k": 7,
                        "stride": 2, "padding": 3, "output_padding": 1, "bias": False},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(TRANSPOSE_CASES))
def test_transpose_within_bound(mod, kind, case):
    ratio, err, _ = run_transpose_case(mod, kind, TRANSPOSE_CASES[case],
                                       seed=list(TRANSPOSE_CASES).index(case))
    assert ratio <= 1.0, f"max error {err:.3g} is {ratio:.3g} x the bound"


def test_transposed_weight_layout():
    w = np.arange(2 * 3 * 2 * 2.0).reshape(4, 3, 2)  # C_in 4, og 3, groups 2 (cg 2), k 2
    rows = ig.transposed_weight(np, w, 2)
    assert rows.shape == (6, 2, 2) and rows.flags.c_contiguous
    for g, n, c, t in np.ndindex(2, 3, 2, 2):
        assert rows[g * 3 + n, c, t] == w[g * 2 + c, n, t]


def test_transposed_gather_rejects_other_padding_modes():
    with pytest.raises(ValueError, match="zeros"):
        ig.name_expression("float16", "reflect", gather="transposed")


# ================================================================== the weight gradient
# The forward kernel with the roles exchanged (x's channels as the batch, the batch as the
# channels; stride and dilation swapped) and K = N * OD * OH * OW split over grid.z.


def reference_weight_grad(x, go, w_shape, *, stride, padding, dilation, groups, mode):
    """dW[co, c, tap] = sum over (n, o) of go[n, co, o] * xpad[n, c, o * stride + tap * dil]."""
    xp = np.pad(x, [(0, 0), (0, 0), *padding], mode=NP_PAD[mode])
    og, cg = w_shape[0] // groups, w_shape[1]
    outs = go.shape[2:]
    dw = np.zeros(w_shape)
    for tap in np.ndindex(*w_shape[2:]):
        sl = tuple(slice(t * d, t * d + s * (o - 1) + 1, s)
                   for t, d, s, o in zip(tap, dilation, stride, outs))
        patch = xp[(slice(None), slice(None), *sl)]
        for g in range(groups):
            axes = [0, *range(2, go.ndim)]  # n and the output positions
            dw[(slice(g * og, (g + 1) * og), slice(None), *tap)] = np.tensordot(
                go[:, g * og:(g + 1) * og], patch[:, g * cg:(g + 1) * cg], (axes, axes))
    return dw


def run_wgrad_case(mod, kind, case, seed=0, deterministic=False, splits=None, index=None):
    rng = np.random.default_rng(seed)
    n, c_in, c_out, spatial, kernel = (case[k] for k in ("n", "c_in", "c_out", "spatial", "k"))
    nd = len(spatial)
    groups = case.get("groups", 1)
    stride, dilation = tup(case.get("stride", 1), nd), tup(case.get("dilation", 1), nd)
    pad = tup(case.get("padding", 0), nd)
    mode = case.get("mode", "zeros")
    w_shape = (c_out, c_in // groups, *tup(kernel, nd))
    x, xv = make(kind, (n, c_in, *spatial), rng)
    pairs = [(p, p) for p in pad]
    outs = [(s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, p, d, k, st in zip(spatial, pad, dilation, w_shape[2:], stride)]
    go, gov = make(kind, (n, c_out, *outs), rng)
    out = ig.conv_igemm_weight_grad(mod, x, go, w_shape, kind=kind, stride=stride, padding=pad,
                                    dilation=dilation, groups=groups, padding_mode=mode,
                                    deterministic=deterministic, splits=splits, index=index)
    kw = {"stride": stride, "padding": pairs, "dilation": dilation, "groups": groups,
          "mode": mode}
    ref = reference_weight_grad(xv, gov, w_shape, **kw)
    mag = reference_weight_grad(np.abs(xv), np.abs(gov), w_shape, **kw)
    terms = n * int(np.prod(outs))
    gamma = terms * U_ACC / (1 - terms * U_ACC)
    bound = gamma * mag + U_OUT[kind] * (np.abs(ref) + gamma * mag) + ETA_OUT[kind]
    got = out_value(kind, out)
    assert got.shape == ref.shape and np.isfinite(got).all()
    return _ratio(np.abs(got - ref), bound), float(np.abs(got - ref).max()), out


WGRAD_CASES = {
    # 3x3 pad 1, C odd, several M tiles (M = 5 * 9 = 45 < 64: one), K = 2 * 80 over stages
    "2d_cin5": {"n": 2, "c_in": 5, "c_out": 7, "spatial": (8, 10), "k": 3, "padding": 1},
    # stride 2 (becomes the B-side dilation), reflect, 2 M tiles (M = 8 * 9 = 72)
    "2d_s2_reflect": {"n": 3, "c_in": 8, "c_out": 6, "spatial": (9, 11), "k": 3, "stride": 2,
                      "padding": 1, "mode": "reflect"},
    # dilation 2 (becomes the gather's stride), groups 3, circular
    "groups3_dil2_circular": {"n": 2, "c_in": 6, "c_out": 9, "spatial": (7, 8), "k": 3,
                              "dilation": 2, "padding": 2, "groups": 3, "mode": "circular"},
    # 1-D replicate, out_vol = 37 (odd: a 2-byte grad_output copy for 16-bit), N = 70
    "1d_replicate": {"n": 3, "c_in": 4, "c_out": 70, "spatial": (37,), "k": 5, "padding": 2,
                     "mode": "replicate"},
    # 3-D, stride (1, 2, 1)
    "3d": {"n": 1, "c_in": 3, "c_out": 5, "spatial": (4, 6, 5), "k": 3, "stride": (1, 2, 1),
           "padding": 1},
    # 1x1 on 8 x 8 (out_vol 64: 16-byte grad_output copies), a long K = 4 * 64
    "pointwise": {"n": 4, "c_in": 16, "c_out": 32, "spatial": (8, 8), "k": 1},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(WGRAD_CASES))
@pytest.mark.parametrize("variant", ["one split", "atomic", "deterministic"])
def test_weight_grad_within_bound(mod, kind, case, variant):
    splits = 1 if variant == "one split" else 3
    ratio, err, _ = run_wgrad_case(mod, kind, WGRAD_CASES[case],
                                   seed=list(WGRAD_CASES).index(case),
                                   deterministic=variant == "deterministic", splits=splits)
    assert ratio <= 1.0, f"max error {err:.3g} is {ratio:.3g} x the bound"


def test_weight_grad_split_plan():
    g3 = lambda spatial, k: __import__("gpuconv._shapes", fromlist=["x"]).as_3d(  # noqa: E731
        __import__("gpuconv._shapes", fromlist=["x"]).conv_geometry(
            spatial, k, stride=1, padding=1, dilation=1))
    # ResNet 3x3, C = 64 at 56^2, N = 32: K = 100352 -> 3136 fp16 tiles; 9 x 1 output tiles
    cfg = ig.weight_grad_config("float16", (32, 64, 56, 56), (32, 64, 56, 56),
                                g3((56, 56), (3, 3)), groups=1, padding_mode="zeros",
                                deterministic=True)
    assert cfg.gemm == (576, 64, 100352)
    assert cfg.grid[:2] == (9, 1) and cfg.splits == cfg.grid[2] > 1
    assert cfg.epilogue == ig.EPILOGUE_PARTIAL and cfg.workspace == (cfg.splits, 64 * 576)
    assert 0.9 * ig.TARGET_BLOCKS <= cfg.splits * 9 <= ig.TARGET_BLOCKS + 9  # 112 splits of 28 tiles
    atomic = ig.weight_grad_config("float16", (32, 64, 56, 56), (32, 64, 56, 56),
                                   g3((56, 56), (3, 3)), groups=1, padding_mode="zeros",
                                   deterministic=False)
    assert atomic.epilogue == ig.EPILOGUE_ATOMIC and atomic.workspace == (64 * 576,)
    # a tiny problem is not split
    small = ig.weight_grad_config("tf32", (1, 2, 5, 5), (1, 3, 5, 5), g3((5, 5), (3, 3)),
                                  groups=1, padding_mode="zeros", deterministic=True)
    assert small.splits == 1 and small.epilogue == ig.EPILOGUE_STORE and not small.workspace


@pytest.mark.parametrize("kind", KINDS)
def test_weight_grad_deterministic_is_bitwise_reproducible(mod, kind):
    """Partial sums in a fixed order: two runs (emulator worker threads finish blocks in any
    order) give the same bits; 7 splits."""
    case = WGRAD_CASES["2d_s2_reflect"]
    a = run_wgrad_case(mod, kind, case, seed=3, deterministic=True, splits=7)[2]
    b = run_wgrad_case(mod, kind, case, seed=3, deterministic=True, splits=7)[2]
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


GRAD_SMALL = {"n": 2, "c_in": 5, "c_out": 6, "spatial": (5, 6), "k": 3, "padding": 1,
              "stride": (1, 2)}


@pytest.mark.parametrize("kind", KINDS)
def test_transpose_and_weight_grad_checked_and_race(mod, kind):
    """The transposed gather and the three weight-gradient epilogues (one split, atomic,
    partial) under checked() (bounds) and race_check() (barriers; cross-block lost updates:
    the atomic epilogue's adds are atomic, the partial epilogue's splits write apart)."""
    case = GRAD_SMALL | {"output_padding": (0, 1)}
    for mode in (emu.checked, emu.race_check):
        with mode():
            ratio, _, _ = run_transpose_case(mod, kind, case, seed=5)
            assert ratio <= 1.0
            for det, splits in ((False, 1), (False, 2), (True, 2)):
                wcase = GRAD_SMALL | {"mode": "reflect"}
                ratio, _, _ = run_wgrad_case(mod, kind, wcase, seed=5, deterministic=det,
                                             splits=splits)
                assert ratio <= 1.0


@pytest.mark.parametrize("kind", ["float16", "tf32"])
def test_gradient_gemms_have_no_bank_conflicts(mod, kind):
    """The main loop's ldmatrix phases of the transposed and weight-gradient GEMMs take one
    wavefront each (the shared-memory layout is the forward's)."""
    with emu.counters() as c:
        run_transpose_case(mod, kind, TRANSPOSE_CASES["1d_longk"])
        run_wgrad_case(mod, kind, WGRAD_CASES["pointwise"], splits=2)
    for kernel in c.kernels.values():
        ldm = [s for s in kernel.sites.values() if s.kind == "ldmatrix"]
        assert ldm and all(s.units == s.ideal for s in ldm), ldm


# ================================================================== strided operands (NDHWC)
# The kernel reads x and writes the output through element strides (N, C, D, H, W), so a
# channels-last (NHWC / NDHWC) layout is served without a rewrite and without a copy: the
# summation order is the layout's business not at all, so the result is the NCHW one bit for
# bit. (The fast NHWC gather -- channels innermost in k, 16-byte cp.async -- is not built: here
# a 16-bit pair of neighbouring output positions is C elements apart, so it goes by two plain
# loads.)


def _channels_last(a):
    """The same values in an NDHWC buffer, viewed as (N, C, *spatial)."""
    buf = np.ascontiguousarray(np.moveaxis(a, 1, -1))
    return np.moveaxis(buf, -1, 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["2d_cin5", "3d_replicate", "groups3_circular",
                                  "2d_cin6_reflect"])
def test_channels_last_strides_give_the_same_bits(mod, kind, case):
    c = CASES[case]
    rng = np.random.default_rng(21)
    nd = len(c["spatial"])
    groups = c.get("groups", 1)
    x, _ = make(kind, (c["n"], c["c_in"], *c["spatial"]), rng)
    w, _ = make(kind, (c["c_out"], c["c_in"] // groups, *tup(c["k"], nd)), rng, 0.3)
    kw = dict(stride=tup(c.get("stride", 1), nd), padding=tup(c.get("padding", 0), nd),
              dilation=tup(c.get("dilation", 1), nd), groups=groups,
              padding_mode=c.get("mode", "zeros"))
    ref = ig.conv_igemm_forward(mod, x, w, kind=kind, **kw)
    x_cl = _channels_last(x)
    out_cl = _channels_last(np.zeros_like(ref))
    from gpuconv._shapes import as_3d, conv_geometry

    g3 = as_3d(conv_geometry(x.shape[2:], w.shape[2:], stride=kw["stride"],
                             padding=kw["padding"], dilation=kw["dilation"], groups=groups,
                             padding_mode=kw["padding_mode"]))
    lift = lambda a: tuple(s // a.itemsize for s in (*a.strides[:2], *([0] * (3 - nd)),  # noqa: E731
                                                      *a.strides[2:]))
    cfg = ig.forward_config(kind, x.shape, w.shape, g3, groups=groups,
                            padding_mode=kw["padding_mode"], has_bias=False,
                            x_strides=lift(x_cl), out_strides=lift(out_cl))
    # the kernel gets the buffers' base pointers: the NDHWC arrays themselves
    ig.launch(mod, cfg, np.moveaxis(x_cl, 1, -1), w, w, np.moveaxis(out_cl, 1, -1),
              np.empty(1, np.float32))
    bits = np.uint16 if ref.itemsize == 2 else np.uint32
    np.testing.assert_array_equal(np.ascontiguousarray(out_cl).view(bits), ref.view(bits))
    assert not np.array_equal(out_cl, 0)


# ================================================================== the channels-last gather
# Gather = 2: x channels-last, k = (tap, c) with c innermost, the input tile (m, k) filled by
# 16-byte cp.async of 16 / itemsize consecutive channels (C_in / groups a multiple of that).
# The summation order differs from the NCDHW gather's (k is permuted), so the check is the
# bound, not the bits.

NHWC_CASES = {
    # 3x3 pad 1, C_in = 16: two 16-bit chunks per tap, 4 float chunks
    "3x3_c16": {"n": 2, "c_in": 16, "c_out": 20, "spatial": (7, 9), "k": 3, "padding": 1},
    # stride 2, reflect, C_in = 8 (one 16-bit chunk per tap: a stage spans 4 taps)
    "s2_reflect_c8": {"n": 1, "c_in": 8, "c_out": 70, "spatial": (9, 8), "k": 3, "stride": 2,
                      "padding": 1, "mode": "reflect"},
    # groups 2 (C_in / g = 8), dilation 2, circular, no bias
    "groups_dil_circular": {"n": 2, "c_in": 16, "c_out": 6, "spatial": (8, 7), "k": 3,
                            "dilation": 2, "padding": 2, "groups": 2, "mode": "circular",
                            "bias": False},
    # 3-D replicate, C_in = 24 (K = 648 over 21 16-bit stages)
    "3d_replicate": {"n": 1, "c_in": 24, "c_out": 9, "spatial": (4, 5, 3), "k": 3,
                     "padding": 1, "mode": "replicate"},
    # 1-D, C_in = 32, a 7-tap kernel, stride 3
    "1d_s3": {"n": 3, "c_in": 32, "c_out": 16, "spatial": (40,), "k": 7, "stride": 3,
              "padding": 3},
}




@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(NHWC_CASES))
def test_nhwc_gather_within_bound(mod, kind, case):
    ratio, err, _ = run_case(mod, kind, NHWC_CASES[case], seed=list(NHWC_CASES).index(case),
                              layout="nhwc")
    assert ratio <= 1.0, f"max error {err:.3g} is {ratio:.3g} x the bound"


def test_nhwc_gather_refuses_what_it_cannot_read(mod):
    x = _channels_last(np.ones((1, 3, 5, 5), np.float16))
    with pytest.raises(ValueError, match=r"C_in / groups = 3 is not a multiple of 8"):
        ig.conv_igemm_forward(mod, x, np.ones((4, 3, 3, 3), np.float16), kind="float16",
                              layout="nhwc")
    assert ig.nhwc_reason("tf32", 12, 1, (12 * 25, 1, 0, 60, 12)) == ""
    assert "innermost" in ig.nhwc_reason("float16", 16, 1, (400, 25, 0, 5, 1))


@pytest.mark.parametrize("kind", KINDS)
def test_nhwc_gather_checked_and_race(mod, kind):
    case = NHWC_CASES["groups_dil_circular"] | {"n": 1, "spatial": (5, 6)}
    for mode in (emu.checked, emu.race_check):
        with mode():
            ratio, _, _ = run_case(mod, kind, case, seed=4, layout="nhwc")
            assert ratio <= 1.0


@pytest.mark.parametrize("kind", ["float16", "tf32"])
def test_nhwc_gather_full_sectors_and_no_bank_conflicts(mod, kind):
    """A 3x3 stride-1 layer with padding, C_in = 32: every input load is a 16-byte cp.async of
    consecutive channels, 4 lanes covering a position's 64 contiguous bytes (16-bit; float:
    2 positions' 128), so every touched sector is used in full -- at every tap, unlike the
    NCDHW gather's 60-80% -- and every shared access (cp.async writes, ldmatrix, TF32's
    32-bit fragment loads of the (m, k) tile) takes one wavefront."""
    case = {"n": 1, "c_in": 32, "c_out": 64, "spatial": (8, 8), "k": 3, "padding": 1,
            "bias": False}
    with emu.counters() as c:
        run_case(mod, kind, case, layout="nhwc")
    (kernel,) = c.kernels.values()
    loads = [s for s in kernel.sites.values()
             if s.space == "global" and s.kind == "cp.async.load"]
    assert loads and all(s.units == s.ideal for s in loads), loads
    shared = [s for s in kernel.sites.values() if s.space == "shared"]
    assert shared and all(s.units == s.ideal for s in shared), shared


def test_int64_index_of_the_gradient_gemms(mod):
    """The 64-bit index instantiations of the transposed gather and of the weight gradient
    (the forward gather's) give the 32-bit ones' bits (the same arithmetic)."""
    name = ig.name_expression("float16", "zeros", "long long", "transposed")
    mod64 = emu.load_module(_kernels.source_path(ig.IGEMM_FILE), [name])
    case = TRANSPOSE_CASES["2d_s2_op1"]
    a = run_transpose_case(mod, "float16", case, seed=2)[2]
    b = run_transpose_case(mod64, "float16", case, seed=2, index=np.int64)[2]
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
    case = WGRAD_CASES["2d_cin5"]
    a = run_wgrad_case(mod, "float16", case, seed=2, deterministic=True, splits=3)[2]
    b = run_wgrad_case(mod, "float16", case, seed=2, deterministic=True, splits=3,
                       index=np.int64)[2]
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
