// conv_igemm.cu: convolutions as implicit GEMMs on tensor cores (mma.sync).
//
// One kernel, conv_igemm<T, Index, Mode, Gather>, computes per group g (blockIdx.z % groups)
//
//     out[m, n] = bias[g * N + n] + sum_k A[m, k] * B[k, n]        (then one rounding to T)
//     m = (b, od, oh, ow)        M = batch * OD * OH * OW   (b: the "batch" of the gathered x)
//     n                          N = og
//     k = (c, kd, kh, kw)        K = cg * KD * KH * KW      (c: the "channel" of the gathered x)
//     A[m, k] = x[g, b, c, position(o, k)]   (the implicit im2col matrix, never stored)
//     B[k, n] = weight[g, n, c, tap]         (runs of `taps` contiguous elements)
//
// with every operand read through strides (x_s*, w_s*, o_s*), so that three GEMMs share it:
//   * the forward convolution (Gather = 0): b = image, c = input channel, position = o *
//     stride - pad + k * dil through source_offset<Mode> (every padding mode); B = the weight
//     rows (C_out, C_in / groups * taps), each K contiguous elements;
//   * the transposed convolution (Gather = 1, zeros padding), also conv's input gradient:
//     position = (o + crop - k * dil) / stride where that is a whole, in-range position (else
//     zero); B = the weight copied on the host into rows of K (gpuconv/backends/device/_igemm.py);
//   * the forward convolution of a channels-last x (Gather = 2): k = (kd, kh, kw, c) with c
//     innermost; the input tile is (m, k) with k contiguous (swizzled as the weight tile), filled
//     by 16-byte cp.async of V consecutive channels (C_in / groups a multiple of V: the host's
//     rule); B = the weight copied on the host into rows of K in (tap, c) order;
//   * the weight gradient (Gather = 0, roles exchanged, nothing copied): b = the input channel
//     in the group, c = the image, o = the tap (kernel dims as the output dims), k = the output
//     position (output dims as the kernel dims), stride and dilation swapped; B = grad_output,
//     rows co of runs of OD * OH * OW. K = N * OD * OH * OW is long, so it is split over
//     grid.z (blockIdx.z / groups = the split, k_tiles K tiles each) and the epilogue (a runtime
//     argument) adds the splits: atomicAdd into an fp32 array, or fp32 partials per split that
//     weight_grad_reduce (conv_grad.cu) sums in ascending split order (deterministic).
//
// The forward view in the names below: M = N * OD * OH * OW output positions, N = C_out/groups
// output channels, K = C_in/groups * KD * KH * KW.
//
// xpad reads through gpuconv::source_index<Mode> (padding.cuh): zeros, reflect, replicate,
// circular. T is the storage type and picks the tensor-core instruction:
//     __half          f16  mma.m16n8k16, fp32 accumulation
//     unsigned short  bf16 mma.m16n8k16, fp32 accumulation (bfloat16 bits: the emulator and the
//                     type-code table have no bfloat16 type yet)
//     float           TF32 mma.m16n8k8, fp32 accumulation; both operands are rounded to TF32
//                     (cvt.rna: to nearest, ties away from zero) as they leave shared memory.
//
// Block: 128 threads (4 warps) compute a BM x BN = 64 x 64 tile of one group's output
// (grid = (ceil(M / 64), ceil(N / 64), groups * splits)); warp w computes the 32 x 32 sub-tile at
// m + 32 (w % 2), n + 32 (w / 2): 2 x 4 mma tiles of 16 x 8, 32 fp32 accumulators per lane.
// K advances by BK = 64 bytes of elements per stage (32 f16/bf16, 16 f32) through a STAGES-deep
// ring of shared-memory buffers (cp.async commit/wait_group; one __syncthreads per stage):
//   * A stage: sA[BK][BM + 8], m contiguous (the input's contiguous direction in NCDHW). Each
//     thread owns P = 4 / sizeof(T) consecutive m (one 32-bit shared word: 1 float or a pair
//     of 16-bit) of every RSTEP-th k row (RSTEP = 2 or 4: a warp covers 32 words of one row);
//     their (nb, od, oh, ow) are decoded once per block and the row's (ci, kd, kh, kw) is
//     advanced by RSTEP per row, never divided. Every element goes through source_offset<Mode>.
//     float: one 4-byte cp.async per element, src-size 0 (zero fill) for zero padding and for m
//     or k out of range. 16-bit (cp.async moves 4 bytes at least, aligned): a pair that is
//     contiguous in x and 4-byte aligned is one 4-byte cp.async, a pair of zeros one zero-fill
//     cp.async, and any other pair (split by a row end, a stride, a padding edge, or odd
//     alignment -- in NCDHW iw = ow*sw - pw + kw*dw shifts with the tap) two plain loads and
//     shared stores, issued at the same point of the pipeline (their latency is not hidden).
//   * B stage: sB[BN][BK], k contiguous, copied from the weight rows with cp.async of w_vec
//     bytes (host-chosen: 16 when every row start is 16-byte aligned, else 4, else -- 16-bit
//     with odd K -- a plain 2-byte copy); src-size covers the K tail and the zero fill past N.
//     Thread c of a copy round takes row c / (64 / w_vec): 4 lanes read a row's 64 bytes.
//   * Fragments: f16/bf16 A by ldmatrix.x4.trans, B by ldmatrix.x4; TF32 A by 32-bit shared
//     loads, B by ldmatrix.x4 on 32-bit words (a row of 4 floats is a row of 8 b16).
//     Bank conflicts: none on any fragment load or staging write. sA rows are padded by 16
//     bytes (16-bit: a 144-byte pitch, 9 16-byte units, puts the 8 rows of an ldmatrix phase
//     on 8 distinct bank quads) or 32 bytes (float: a 72-word pitch puts lane (g, t)'s word at
//     bank 8t + g). sB rows are 64 bytes with the 16-byte chunk c of row r stored at chunk
//     c ^ ((r / 2) % 4) (an XOR swizzle): the 8 rows of an ldmatrix phase, and the rows r, r + 1
//     that one 8-lane cp.async phase writes, land on 8 distinct bank quads.
//   * Epilogue: the accumulators go to an fp32 tile sC[BN][BM + 4] in the (then idle) ring
//     (lane (g, t) writes bank 8t + g + const: conflict-free); thread t then stores m0 + t % 64
//     for every other n: T(c + bias), converted once, coalesced along m (contiguous in NCDHW);
//     or, split, c to the fp32 workspace (atomicAdd, or the split's own partial array).
// Shared memory: STAGES * 8704 bytes (26112 for 3 stages), static; sC needs 17408.
// Speed: per stage a warp issues 16 mma.m16n8k16 against 8 ldmatrix.x4 (2 mma per ldmatrix;
// TF32: 16 mma.m16n8k8 against 4 ldmatrix.x4 and 16 32-bit loads); global traffic per block
// is (BM + BN) * 64 bytes per stage. In this first version the A gather's per-element address
// arithmetic and, for 16-bit types, its synchronous loads bound the speed (an NDHWC layout,
// with k = ci innermost, gathers 16-byte vectors with cp.async instead).
#include "common.cuh"
#include "padding.cuh"
#include "mma.cuh"

// Pipeline depth (shared-memory stages); the host reads the same value.
#ifndef GPUCONV_IGEMM_STAGES
#define GPUCONV_IGEMM_STAGES 3
#endif

namespace gpuconv {
namespace igemm {

constexpr int kStages = GPUCONV_IGEMM_STAGES;
static_assert(kStages >= 2, "the cp.async ring needs two stages at least");
constexpr int kThreads = 128;  // 4 warps, 2 (m) x 2 (n)
constexpr int kBM = 64, kBN = 64, kWM = 32, kWN = 32;
constexpr int kStageBytes = 64;  // bytes of K per row per stage

// Per storage type: the shared-memory word, the k per mma, conversions.
template <class T>
struct elem;
template <>
struct elem<__half> {
    using word = unsigned short;
    static constexpr int kstep = 16;
    static constexpr bool bf16 = false;
    static GPUCONV_HD float to_float(word b) { return __half2float(__ushort_as_half(b)); }
    static GPUCONV_HD word from_float(float v) { return __half_as_ushort(__float2half_rn(v)); }
};
template <>
struct elem<unsigned short> {  // bfloat16 bits
    using word = unsigned short;
    static constexpr int kstep = 16;
    static constexpr bool bf16 = true;
    static GPUCONV_HD float to_float(word b) { return __uint_as_float(unsigned(b) << 16); }
    static GPUCONV_HD word from_float(float v) {  // round to nearest even; NaN stays NaN
        unsigned u = __float_as_uint(v);
        if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<word>((u >> 16) | 0x40u);
        u += 0x7fffu + ((u >> 16) & 1u);
        return static_cast<word>(u >> 16);
    }
};
template <>
struct elem<float> {
    using word = float;
    static constexpr int kstep = 8;
    static constexpr bool bf16 = false;
    static GPUCONV_HD float to_float(word v) { return v; }
    static GPUCONV_HD word from_float(float v) { return v; }
};

// f32 bits rounded to TF32 (10 fraction bits) to nearest, ties away from zero: cvt.rna.tf32.f32.
static __device__ __forceinline__ unsigned to_tf32(float v) {
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
    return r;
#else
    unsigned u = __float_as_uint(v);
    if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;  // inf and NaN are kept
    return u & 0xffffe000u;
#endif
}

// The transposed gather's source index along one dim: t = o + pad - k * dil lands on input
// position t / stride when t >= 0 is a multiple of the stride and t / stride < n; else -1.
template <class Index>
static GPUCONV_HD Index strided_source(Index t, Index stride, Index n) {
    if (t < 0) return Index(-1);
    const Index q = t / stride;
    return (q * stride == t && q < n) ? q : Index(-1);
}

}  // namespace igemm
}  // namespace gpuconv

// conv_igemm: see the file comment. Launch: grid (ceil(M / 64), ceil(N / 64), groups *
// splits), block 128, no dynamic shared memory.
template <class T, class Index, int Mode, int Gather>
__global__ void __launch_bounds__(128) conv_igemm(
    const T* __restrict__ x,       // the gathered operand (A): element (g, b, c, d, h, w) at
                                   //   g * x_sg + b * x_sb + c * x_sc + d * x_sd + h * x_sh + w * x_sw
    const T* __restrict__ weight,  // B: element (g, n, k = (c, tap)) at g * w_sg + n * w_sn +
                                   //   c * w_sc + tap (a run of `taps` contiguous elements)
    const T* __restrict__ bias,    // (groups * og,); not read when has_bias == 0
    T* __restrict__ out,           // epilogue 0: element (g, b, n, d, h, w) at g * o_sg + b * o_sb
                                   //   + n * o_sn + d * o_sd + h * o_sh + w * o_sw
    float* __restrict__ ws,        // epilogue 1: fp32, out's layout; 2: (splits, ws_split)
    Index batch, Index cg, Index og, Index groups,  // M = batch * out_vol, N = og, K = cg * taps
    Index in_d, Index in_h, Index in_w,
    Index out_d, Index out_h, Index out_w,
    Index k_d, Index k_h, Index k_w,
    Index stride_d, Index stride_h, Index stride_w,
    Index dil_d, Index dil_h, Index dil_w,
    Index pad_d, Index pad_h, Index pad_w,
    Index x_sg, Index x_sb, Index x_sc, Index x_sd, Index x_sh, Index x_sw,
    Index w_sg, Index w_sn, Index w_sc,
    Index o_sg, Index o_sb, Index o_sn, Index o_sd, Index o_sh, Index o_sw,
    Index k_tiles,                 // BK-wide K tiles per split (split s: tiles s * k_tiles ..)
    Index ws_split,                // epilogue 2: elements per split of ws
    int has_bias,
    int w_vec,                     // bytes per weight copy: 16, 4, or sizeof(T) (16-bit only)
    int epilogue)                  // 0: out = T(acc + bias); 1: atomicAdd(ws, acc); 2: ws[split] = acc
{
    using namespace gpuconv::mma;
    using E = gpuconv::igemm::elem<T>;
    using W = typename E::word;
    constexpr int S = gpuconv::igemm::kStages;
    constexpr int BM = gpuconv::igemm::kBM, BN = gpuconv::igemm::kBN;
    constexpr int BK = gpuconv::igemm::kStageBytes / int(sizeof(W));  // 32 (16-bit) or 16
    constexpr int KS = E::kstep;
    constexpr bool kTf32 = sizeof(W) == 4;
    constexpr int APITCH = BM + 8;                          // 144 or 288 bytes
    constexpr int V = 16 / int(sizeof(W));                  // elements per 16-byte chunk
    constexpr int A_BYTES = S * BK * APITCH * int(sizeof(W)), B_BYTES = S * BN * BK * int(sizeof(W));
    constexpr int CPITCH = BM + 4;  // the epilogue's fp32 tile, (BN, BM + 4), reuses the ring
    static_assert(BN * CPITCH * 4 <= A_BYTES + B_BYTES, "the output tile must fit the ring");
    static_assert(Gather != 1 || Mode == 0, "the transposed gather reads zeros outside");
    __shared__ __align__(16) unsigned char smem[A_BYTES + B_BYTES];
    W(*sA)[BK][APITCH] = reinterpret_cast<W(*)[BK][APITCH]>(smem);        // (stage, k, m)
    W(*sB)[BN][BK] = reinterpret_cast<W(*)[BN][BK]>(smem + A_BYTES);      // (stage, n, k), swizzled
    // Element k of weight-tile row r: its 16-byte chunk k / V sits at chunk (k / V) ^ ((r / 2)
    // % 4) of the 64-byte row, so that the 8 rows of an ldmatrix phase, and the 8 chunks of a
    // cp.async phase (rows r, r + 1), fall on 8 distinct bank quads.
    auto b_at = [&](int s, int r, int k) -> W* {
        return &sB[s][r][(((k / V) ^ ((r >> 1) & 3)) * V) + k % V];
    };
    // Gather 2 (channels innermost in k): the input tile is (stage, m, k) with k contiguous,
    // swizzled as the weight tile (the ring's A part is larger than BM x BK: it fits)
    static_assert(BM * BK <= BK * APITCH, "the (m, k) input tile must fit the A ring");
    W(*sAk)[BM][BK] = reinterpret_cast<W(*)[BM][BK]>(smem);
    auto a_at = [&](int s, int r, int k) -> W* {
        return &sAk[s][r][(((k / V) ^ ((r >> 1) & 3)) * V) + k % V];
    };

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const Index taps_hw = k_h * k_w, taps = k_d * taps_hw;
    const Index K = cg * taps;
    const Index out_plane = out_h * out_w, out_vol = out_d * out_plane;
    const Index M = batch * out_vol;
    const Index m0 = Index(blockIdx.x) * BM, n0 = Index(blockIdx.y) * BN;
    const Index g = Index(blockIdx.z) % groups, split = Index(blockIdx.z) / groups;
    const W* x_bits = reinterpret_cast<const W*>(x);
    const W* w_group = reinterpret_cast<const W*>(weight) + g * w_sg;  // (og, K) through w_sn, w_sc
    const Index nk_all = gpuconv::ceil_div(K, Index(BK));
    const Index kt_begin = split * k_tiles;
    const Index kt_end = kt_begin + k_tiles < nk_all ? kt_begin + k_tiles : nk_all;

    // ---- Gather 2: this thread's two A rows m = m0 + tid / 4 + 32 j and 16-byte chunk
    // tid % 4 of each stage's BK: k = (kd, kh, kw, c) with c innermost and C_in / groups a
    // multiple of V (the host's rule), so a chunk is V consecutive channels of one tap: one
    // 16-byte cp.async from x (x_sc = 1), zero-filled for padding and the M and K tails
    constexpr int CROWS = 2, CCH = BK / V;  // rows per thread, chunks per row (4)
    static_assert(CROWS * (gpuconv::igemm::kThreads / CCH) == BM, "two rows per thread");
    const int c_row0 = tid / CCH, c_k = (tid % CCH) * V;
    bool cm_ok[CROWS];
    Index cd0[CROWS], ch0[CROWS], cw0[CROWS], cx[CROWS];
    Index c_c = 0, c_kd = 0, c_kh = 0, c_kw = 0;  // (c, kd, kh, kw) of this stage's chunk
    if constexpr (Gather == 2) {
#pragma unroll
        for (int j = 0; j < CROWS; ++j) {
            const Index am = m0 + c_row0 + 32 * j;
            cm_ok[j] = am < M;
            const Index nb = am / out_vol, sp = am - nb * out_vol;
            const Index od = sp / out_plane, r = sp - od * out_plane;
            const Index oh = r / out_w, ow = r - oh * out_w;
            cd0[j] = od * stride_d - pad_d;
            ch0[j] = oh * stride_h - pad_h;
            cw0[j] = ow * stride_w - pad_w;
            cx[j] = g * x_sg + nb * x_sb;
        }
        const Index k = kt_begin * BK + c_k, t = k / cg;
        c_c = k - t * cg;
        c_kd = t / taps_hw;
        c_kh = (t - c_kd * taps_hw) / k_w;
        c_kw = t - c_kd * taps_hw - c_kh * k_w;
    }

    // ---- this thread's A columns: P = 4 / sizeof(W) consecutive m (one 32-bit shared word),
    // decoded once; its k position advances by RSTEP per stage row
    constexpr int P = 4 / int(sizeof(W));                   // 1 (float) or 2 (16-bit)
    constexpr int COLS = BM / P;                            // threads per k row
    constexpr int RSTEP = gpuconv::igemm::kThreads / COLS;  // 2 (float) or 4 (16-bit)
    const int a_col = (tid % COLS) * P, a_row0 = tid / COLS;  // rows a_row0 + RSTEP j
    bool am_ok[P];
    // p*0: the tap-0 position in x of each m: forward o * stride - pad (tap k adds k * dil);
    // transposed o + pad (tap k subtracts k * dil, then divides by the stride)
    Index pd0[P], ph0[P], pw0[P], x_m[P];  // x_m: offset of (g, b, c = 0) in x
#pragma unroll
    for (int q = 0; q < P; ++q) {
        const Index am = m0 + a_col + q;
        am_ok[q] = am < M;
        const Index nb = am / out_vol, sp = am - nb * out_vol;
        const Index od = sp / out_plane, r = sp - od * out_plane;
        const Index oh = r / out_w, ow = r - oh * out_w;
        if constexpr (Gather == 0) {
            pd0[q] = od * stride_d - pad_d;
            ph0[q] = oh * stride_h - pad_h;
            pw0[q] = ow * stride_w - pad_w;
        } else {
            pd0[q] = od + pad_d;
            ph0[q] = oh + pad_h;
            pw0[q] = ow + pad_w;
        }
        x_m[q] = g * x_sg + nb * x_sb;
    }
    // (ci, kd, kh, kw) of k = the first row this thread loads; advance(step) moves it on by
    // step < 2^31 rows without a division (k_w may be 1: the loop then runs step times)
    Index a_ci, a_kd, a_kh, a_kw;
    {
        const Index k = kt_begin * BK + a_row0;
        a_ci = k / taps;
        const Index t = k - a_ci * taps;
        a_kd = t / taps_hw;
        a_kh = (t - a_kd * taps_hw) / k_w;
        a_kw = t - a_kd * taps_hw - a_kh * k_w;
    }
    auto advance = [&](int step) {
        a_kw += step;
        while (a_kw >= k_w) {
            a_kw -= k_w;
            if (++a_kh == k_h) {
                a_kh = 0;
                if (++a_kd == k_d) a_kd = 0, ++a_ci;
            }
        }
    };

    auto load_stage = [&](int s, Index kt) {
        if constexpr (Gather == 2) {  // A: two 16-byte chunks (see above)
#pragma unroll
            for (int j = 0; j < CROWS; ++j) {
                Index off = -1;
                if (cm_ok[j] && c_kd < k_d) {
                    const Index id = gpuconv::source_index<Mode>(cd0[j] + c_kd * dil_d, in_d);
                    const Index ih = gpuconv::source_index<Mode>(ch0[j] + c_kh * dil_h, in_h);
                    const Index iw = gpuconv::source_index<Mode>(cw0[j] + c_kw * dil_w, in_w);
                    if (id >= 0 && ih >= 0 && iw >= 0)
                        off = cx[j] + id * x_sd + ih * x_sh + iw * x_sw + c_c;
                }
                cp_async_cg(a_at(s, c_row0 + 32 * j, c_k), off >= 0 ? x_bits + off : x_bits,
                            off >= 0 ? 16 : 0);
            }
            c_c += BK;  // the next stage's chunk: BK channels on, across taps
            while (c_c >= cg && c_kd < k_d) {
                c_c -= cg;
                if (++c_kw == k_w) {
                    c_kw = 0;
                    if (++c_kh == k_h) c_kh = 0, ++c_kd;
                }
            }
        }
        // A: BK / RSTEP rows of P elements each (k rows past K read as zero: a_ci >= cg)
#pragma unroll 4
        for (int j = 0; j < (Gather == 2 ? 0 : BK / RSTEP); ++j) {
            W* dst = &sA[s][a_row0 + RSTEP * j][a_col];
            Index off[P];  // element offsets in x, -1 for zero
#pragma unroll
            for (int q = 0; q < P; ++q) {
                off[q] = -1;
                if (am_ok[q] && a_ci < cg) {
                    Index id, ih, iw;  // the source position, -1 for zero
                    if constexpr (Gather == 0) {
                        id = gpuconv::source_index<Mode>(pd0[q] + a_kd * dil_d, in_d);
                        ih = gpuconv::source_index<Mode>(ph0[q] + a_kh * dil_h, in_h);
                        iw = gpuconv::source_index<Mode>(pw0[q] + a_kw * dil_w, in_w);
                    } else {
                        using gpuconv::igemm::strided_source;
                        id = strided_source(pd0[q] - a_kd * dil_d, stride_d, in_d);
                        ih = strided_source(ph0[q] - a_kh * dil_h, stride_h, in_h);
                        iw = strided_source(pw0[q] - a_kw * dil_w, stride_w, in_w);
                    }
                    if (id >= 0 && ih >= 0 && iw >= 0) off[q] = id * x_sd + ih * x_sh + iw * x_sw;
                    if (off[q] >= 0) off[q] += x_m[q] + a_ci * x_sc;
                }
            }
            if constexpr (P == 1) {
                cp_async_ca<4>(dst, off[0] >= 0 ? x_bits + off[0] : x_bits, off[0] >= 0 ? 4 : 0);
            } else if (off[0] < 0 && off[1] < 0) {  // both zero: a zero-fill copy
                cp_async_ca<4>(dst, x_bits, 0);
            } else if (off[1] == off[0] + 1 && off[0] >= 0 &&
                       (reinterpret_cast<unsigned long long>(x_bits + off[0]) & 3) == 0) {
                cp_async_ca<4>(dst, x_bits + off[0], 4);  // contiguous and aligned: one copy
            } else {  // split (row end, stride, padding edge) or misaligned: plain copies
                dst[0] = off[0] >= 0 ? x_bits[off[0]] : W(0);
                dst[1] = off[1] >= 0 ? x_bits[off[1]] : W(0);
            }
            advance(RSTEP);
        }
        // B: BN rows of BK elements (64 bytes), w_vec bytes per copy; a copy never crosses a
        // run of `taps` contiguous elements unless the runs are adjacent (w_sc == taps: the
        // host picks w_vec so)
        const Index k0 = kt * BK;
        const int vec = w_vec / int(sizeof(W));  // elements per copy
        const int per_row = BK / vec;
        for (int c = tid; c < BN * per_row; c += gpuconv::igemm::kThreads) {
            const int row = c / per_row, kc = (c - row * per_row) * vec;
            const Index n = n0 + row, k = k0 + kc;
            const Index left = K - k;
            const int valid = n < og && left > 0 ? int(left < vec ? left : Index(vec)) : 0;
            const W* src = reinterpret_cast<const W*>(weight);
            if (valid) {
                if (w_sc == taps) {
                    src = w_group + n * w_sn + k;
                } else {
                    const Index ci = k / taps;
                    src = w_group + n * w_sn + ci * w_sc + (k - ci * taps);
                }
            }
            W* dst = b_at(s, row, kc);
            const int bytes = valid * int(sizeof(W));
            if (w_vec == 16) {
                cp_async_cg(dst, src, bytes);
            } else if (w_vec == 4) {
                cp_async_ca<4>(dst, src, bytes);
            } else {
                *dst = valid ? *src : W(0);
            }
        }
    };

    const int wm = (warp & 1) * gpuconv::igemm::kWM, wn = (warp >> 1) * gpuconv::igemm::kWN;
    tile_c16x8 acc[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j].x[e] = 0.0f;

    // this block's K tiles: kt_begin .. kt_end - 1 (all of K unless split; stage i of the
    // ring holds the tiles kt with (kt - kt_begin) % S == i)
    const Index nk = kt_end > kt_begin ? kt_end - kt_begin : Index(0);
#pragma unroll
    for (int s = 0; s < S - 1; ++s) {
        if (s < nk) load_stage(s, kt_begin + s);
        cp_async_commit();  // group s (maybe empty)
    }
    for (Index kt = 0; kt < nk; ++kt) {
        cp_async_wait<S - 2>();  // this thread's copies of stage kt have landed ...
        __syncthreads();         // ... everyone's, and everyone is done with stage kt - 1
        const Index next = kt + S - 1;
        if (next < nk) load_stage(int(next % S), kt_begin + next);  // into stage kt - 1's buffer
        cp_async_commit();
        const int s = int(kt % S);
#pragma unroll
        for (int ks = 0; ks < BK; ks += KS) {
            if constexpr (!kTf32) {
                tile_a16x16 a[2];
                tile_b16x8 b[4];
                // A, matrix j = lane / 8: k rows 8 (j / 2) .. +7, m columns 8 (j % 2) .. +7
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    if constexpr (Gather == 2)  // (m, k) tile: matrix j: m 8 (j % 2), k 8 (j / 2)
                        ldmatrix_x4(a[i].reg, a_at(s, wm + 16 * i + (lane & 7) +
                                                          8 * ((lane >> 3) & 1),
                                                   ks + 8 * (lane >> 4)));
                    else
                        ldmatrix_x4<true>(a[i].reg, &sA[s][ks + (lane & 7) + 8 * (lane >> 4)]
                                                       [wm + 16 * i + 8 * ((lane >> 3) & 1)]);
                }
                // B, matrix j: n rows 8 (j / 2) .. +7, k columns 8 (j % 2) .. +7
#pragma unroll
                for (int p = 0; p < 2; ++p) {
                    unsigned r[4];
                    ldmatrix_x4(r, b_at(s, wn + 16 * p + (lane & 7) + 8 * (lane >> 4),
                                        ks + 8 * ((lane >> 3) & 1)));
                    b[2 * p].reg[0] = r[0], b[2 * p].reg[1] = r[1];
                    b[2 * p + 1].reg[0] = r[2], b[2 * p + 1].reg[1] = r[3];
                }
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        if constexpr (E::bf16)
                            mma_bf16(acc[i][j], a[i], b[j], acc[i][j]);
                        else
                            mma_f16(acc[i][j], a[i], b[j], acc[i][j]);
                    }
            } else {
                tile_a16x8_tf32 a[2];
                tile_b8x8_tf32 b[4];
                const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int e = 0; e < 4; ++e)  // (m, k) = (g + 8 (e & 1), t + 4 (e >> 1))
                        a[i].reg[e] = gpuconv::igemm::to_tf32(
                            Gather == 2
                                ? *a_at(s, wm + 16 * i + gid + 8 * (e & 1), ks + tig + 4 * (e >> 1))
                                : sA[s][ks + tig + 4 * (e >> 1)][wm + 16 * i + gid + 8 * (e & 1)]);
#pragma unroll
                for (int p = 0; p < 2; ++p) {  // matrix j: n rows 8 (j / 2) .., k 4 (j % 2) ..
                    unsigned r[4];
                    ldmatrix_x4(r, b_at(s, wn + 16 * p + (lane & 7) + 8 * (lane >> 4),
                                        ks + 4 * ((lane >> 3) & 1)));
#pragma unroll
                    for (int q = 0; q < 4; ++q)
                        r[q] = gpuconv::igemm::to_tf32(__uint_as_float(r[q]));
                    b[2 * p].reg[0] = r[0], b[2 * p].reg[1] = r[1];
                    b[2 * p + 1].reg[0] = r[2], b[2 * p + 1].reg[1] = r[3];
                }
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) mma_tf32(acc[i][j], a[i], b[j], acc[i][j]);
            }
        }
    }

    // ---- epilogue: the fp32 tile goes through shared memory, sC (n, m) with m contiguous, so
    // that the stores run along m (contiguous in the output for one co). Every real cp.async
    // group has landed (the groups after stage nk - 1 are empty); the barrier ends the ring.
    // (Other warps may still be reading the last stage: without it the emulator's race check
    // fails -- its warp-serial run lets the last warp write sC over the ring before the first
    // has read its last stage; checked by deleting it on purpose.)
    __syncthreads();
    float* sC = reinterpret_cast<float*>(smem);  // (BN, BM + 4)
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)  // lane (g, t): bank 4 (2t + e % 2) + g + const
                sC[(wn + 8 * j + tile_c16x8::get_j(lane, e)) * CPITCH + wm + 16 * i +
                   tile_c16x8::get_i(lane, e)] = acc[i][j].x[e];
    __syncthreads();
    // thread t stores m = m0 + t % 64 for n = t / 64 + 2 r, at (g, nb, n, sp):
    // epilogue 0: out = T(c + bias), converted once; 1: atomicAdd(ws, c) (split-K, any order);
    // 2: ws[split * ws_split + ...] = c (split-K partial sums, reduced in a fixed order)
    const Index m = m0 + tid % BM;
    if (m < M) {
        const Index nb = m / out_vol, sp = m - nb * out_vol;
        const Index od = sp / out_plane, r = sp - od * out_plane;
        const Index oh = r / out_w, ow = r - oh * out_w;
        const Index at_m = g * o_sg + nb * o_sb + od * o_sd + oh * o_sh + ow * o_sw;  // + n * o_sn
        for (int nl = tid / BM; nl < BN; nl += gpuconv::igemm::kThreads / BM) {
            const Index n = n0 + nl;
            if (n >= og) break;
            float v = sC[nl * CPITCH + tid % BM];
            const Index at = at_m + n * o_sn;
            if (epilogue == 0) {
                if (has_bias) v += E::to_float(reinterpret_cast<const W*>(bias)[g * og + n]);
                reinterpret_cast<W*>(out)[at] = E::from_float(v);
            } else if (epilogue == 1) {
                atomicAdd(ws + at, v);
            } else {
                ws[split * ws_split + at] = v;
            }
        }
    }
}
