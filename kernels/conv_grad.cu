// conv_grad.cu: weight gradients of conv / conv_transpose / depthwise_conv (gpuconv.grad).
//
// For a convolution out = conv(x, weight) with geometry (stride s, dilation d, low pads p,
// padding mode Mode) and the gradient grad_output of a loss with respect to out,
//
//     grad_weight[co, ci, k] = sum_{n, o} grad_output[n, co, o]
//                                        * xpad[n, g * C_in/groups + ci, o * s - p + k * d]
//
// with g = co / (C_out/groups), o and k running over the output positions and kernel taps (3-D;
// 1-D/2-D calls have unit leading dims) and xpad reading x through
// gpuconv::source_index<Mode> (padding.cuh): padding by index mapping, no padded copy. Per group
// this is a GEMM, grad_output (og, L) @ columns (L, cg * K)^T, whose reduction dimension
// L = N * out_positions is usually far longer than the output is large, so the reduction is
// split over blockIdx.y ("split-K"): each block reduces `split_len` consecutive (n, o) pairs of
// one output tile. Partial sums then meet in one of two ways (the Deterministic template flag):
//
//  * Deterministic = false: atomicAdd into a zeroed accumulator array (C_out, cg * K) of
//    acc_t<T> (float for __half). One launch; the order of the additions varies run to run, so
//    the last bits of the result do too.
//  * Deterministic = true: no floating-point atomics. Each block stores its partial tile in a
//    workspace (splits, C_out, cg * K) of acc_t<T>, and weight_grad_reduce sums the splits in
//    ascending order. Bitwise reproducible for a given shape (the split plan depends on the
//    shapes only, not on the device).
//
// A transposed convolution's weight gradient is this kernel with x := grad_output and
// grad_output := x in the conv geometry it transposes (zeros padding); see
// gpuconv/backends/device/_grad.py.
#include "common.cuh"
#include "padding.cuh"

// conv_weight_grad's tile: BM output channels x BN (input channel, tap) columns per block,
// BK reduction positions staged per step, TM x TN outputs per thread.
#ifndef GPUCONV_WGRAD_BM
#define GPUCONV_WGRAD_BM 64
#endif
#ifndef GPUCONV_WGRAD_BN
#define GPUCONV_WGRAD_BN 64
#endif
#ifndef GPUCONV_WGRAD_BK
#define GPUCONV_WGRAD_BK 16
#endif
// Threads per block of conv_weight_grad: (BM / 4) * (BN / 4), each computing 4 x 4 outputs.
#ifndef GPUCONV_WGRAD_THREADS
#define GPUCONV_WGRAD_THREADS 256
#endif
// depthwise_weight_grad: kernel taps per thread (register accumulators) and threads per block
// at most (a power of two; the host may launch fewer, still a power of two).
#ifndef GPUCONV_DW_WGRAD_TAPS
#define GPUCONV_DW_WGRAD_TAPS 8
#endif
#ifndef GPUCONV_DW_WGRAD_THREADS
#define GPUCONV_DW_WGRAD_THREADS 256
#endif

// conv_weight_grad: an implicit-GEMM tile of the weight gradient, one split of the reduction.
//
// Block (blockIdx.x, blockIdx.y): blockIdx.x = (g * tiles_m + tile_m) * tiles_n + tile_n picks
// the group g, output channels m0 .. m0 + BM - 1 of the group and columns j0 .. j0 + BN - 1 of
// the group's cg * K (input channel, tap) columns (j = ci * K + tap, the weight's own layout);
// blockIdx.y picks the reduction range [split * split_len, (split + 1) * split_len) of the flat
// index l = n * out_positions + o. Thread t computes the 4 x 4 outputs (m0 + t / 16 + 16 i,
// j0 + t % 16 + 16 j): strided, so that a warp's shared-memory reads hit distinct banks and its
// writes to grad_weight are coalesced along j.
// Per step of BK reduction positions the block stages, in static shared memory of acc_t<T>,
//   * a_s (BK, BM + 1): grad_output[n, g * og + m, o] (zeros past the group's channels / l_end);
//   * b_s (BK, BN + 1): the im2col values xpad[n, g * cg + ci, o * s - p + tap * d], generated on
//     the fly with the padding resolved by index mapping (zeros past the columns / l_end);
// (the +1 column keeps the staging stores, l varying fastest across threads, free of bank
// conflicts), then every thread does BK * 16 FMAs from registers. The global loads of the next
// step are issued into registers before those FMAs (software pipelining), so their latency
// overlaps the arithmetic. Each thread stages the same reduction position l in every step, so it
// decomposes l into (n, od, oh, ow) once per step, and its four columns' (ci, kd, kh, kw) once
// per block.
// Static shared memory: BK * (BM + BN + 2) * sizeof(acc_t<T>) (8.3 KiB float, 16.5 KiB double).
// Speed: arithmetic-bound for realistic layers (og and cg * K >= 64: 16 FMAs per two shared
// loads, 8 global loads per thread per 256 FMAs); small groups waste the unused part of the
// 64 x 64 tile. The staged loads are coalesced along l (consecutive output positions).
template <class T, class Index, int Mode, bool Deterministic>
__global__ void conv_weight_grad(
    const T* __restrict__ x,                       // (N, C_in, D, H, W)
    const T* __restrict__ grad_output,             // (N, C_out, OD, OH, OW)
    gpuconv::acc_t<T>* __restrict__ grad_weight,   // Deterministic: (splits, C_out, cg * K)
                                                   // partial sums; else (C_out, cg * K), zeroed
    Index batch, Index c_in, Index c_out, Index groups,
    Index in_d, Index in_h, Index in_w,
    Index out_d, Index out_h, Index out_w,
    Index k_d, Index k_h, Index k_w,
    Index stride_d, Index stride_h, Index stride_w,
    Index dil_d, Index dil_h, Index dil_w,
    Index pad_d, Index pad_h, Index pad_w,
    Index split_len)                               // reduction positions per split, multiple of BK
{
    constexpr int BM = GPUCONV_WGRAD_BM;
    constexpr int BN = GPUCONV_WGRAD_BN;
    constexpr int BK = GPUCONV_WGRAD_BK;
    constexpr int THREADS = GPUCONV_WGRAD_THREADS;
    constexpr int TM = 4;  // rows (output channels) per thread
    constexpr int TN = 4;  // columns per thread
    constexpr int TX = BN / TN;  // threads along the columns
    static_assert((BM / TM) * (BN / TN) == THREADS, "tile and thread count disagree");
    static_assert(THREADS % BK == 0, "each thread must stage one reduction position");
    static_assert(BK * BM == TM * THREADS && BK * BN == TN * THREADS, "staging: 4 loads per thread");
    using Acc = gpuconv::acc_t<T>;

    __shared__ Acc a_s[BK][BM + 1];
    __shared__ Acc b_s[BK][BN + 1];

    const int tid = threadIdx.x;
    const int tx = tid % TX;
    const int ty = tid / TX;
    const int sk = tid % BK;   // the reduction row this thread stages
    const int sc = tid / BK;   // first staged row/column; then + THREADS / BK per load

    const Index cg = c_in / groups;
    const Index og = c_out / groups;
    const Index taps = k_d * k_h * k_w;
    const Index cols = cg * taps;
    const Index out_plane = out_d * out_h * out_w;
    const Index in_volume = in_d * in_h * in_w;
    const Index length = batch * out_plane;
    const Index tiles_n = gpuconv::ceil_div(cols, Index(BN));
    const Index tiles_m = gpuconv::ceil_div(og, Index(BM));

    const Index tile = blockIdx.x;
    const Index tn = tile % tiles_n;
    const Index tm = (tile / tiles_n) % tiles_m;
    const Index g = tile / (tiles_n * tiles_m);
    const Index m0 = tm * BM;
    const Index j0 = tn * BN;
    const Index l_begin = Index(blockIdx.y) * split_len;
    const Index l_end = gpuconv::imin(length, l_begin + split_len);

    // The four columns this thread stages: channel offset within x's group and tap offsets.
    constexpr int LOADS = TN;  // == TM
    constexpr int STEP = THREADS / BK;
    Index col_channel[LOADS];
    Index col_kd[LOADS], col_kh[LOADS], col_kw[LOADS];
    bool col_ok[LOADS];
#pragma unroll
    for (int r = 0; r < LOADS; ++r) {
        const Index j = j0 + sc + r * STEP;
        col_ok[r] = j < cols;
        const Index jj = col_ok[r] ? j : Index(0);
        const Index tap = jj % taps;
        col_channel[r] = (jj / taps) * in_volume;
        col_kw[r] = (tap % k_w) * dil_w;
        col_kh[r] = ((tap / k_w) % k_h) * dil_h;
        col_kd[r] = (tap / (k_w * k_h)) * dil_d;
    }
    const T* x_group = x + g * cg * in_volume;            // + n * c_in * in_volume per position
    const T* go_group = grad_output + (g * og + m0) * out_plane;  // + n * c_out * out_plane

    Acc acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = gpuconv::zero<Acc>();
    }

    // Global -> registers for the step starting at l0 (zeros past l_end, the group's channels
    // or its columns). Issued one step ahead, so the loads are in flight during the FMAs.
    Acc a_reg[LOADS], b_reg[LOADS];
    auto fetch = [&](Index l0) {
        const Index l = l0 + sk;
#pragma unroll
        for (int r = 0; r < LOADS; ++r) {
            a_reg[r] = gpuconv::zero<Acc>();
            b_reg[r] = gpuconv::zero<Acc>();
        }
        if (l >= l_end) return;
        const Index n = l / out_plane;
        const Index o = l - n * out_plane;
        const Index ow = o % out_w;
        const Index oh = (o / out_w) % out_h;
        const Index od = o / (out_w * out_h);
        const T* go_l = go_group + n * c_out * out_plane + o;
#pragma unroll
        for (int r = 0; r < LOADS; ++r) {
            const Index m = sc + r * STEP;
            if (m0 + m < og) a_reg[r] = gpuconv::load_acc(go_l[m * out_plane]);
        }
        const Index d_first = od * stride_d - pad_d;
        const Index h_first = oh * stride_h - pad_h;
        const Index w_first = ow * stride_w - pad_w;
        const T* x_n = x_group + n * c_in * in_volume;
#pragma unroll
        for (int r = 0; r < LOADS; ++r) {
            if (!col_ok[r]) continue;
            const Index src = gpuconv::source_offset<Mode>(d_first + col_kd[r], h_first + col_kh[r],
                                                           w_first + col_kw[r], in_d, in_h, in_w);
            if (src >= 0) b_reg[r] = gpuconv::load_acc(x_n[col_channel[r] + src]);
        }
    };

    fetch(l_begin);
    for (Index l0 = l_begin; l0 < l_end; l0 += BK) {
#pragma unroll
        for (int r = 0; r < LOADS; ++r) {
            a_s[sk][sc + r * STEP] = a_reg[r];
            b_s[sk][sc + r * STEP] = b_reg[r];
        }
        __syncthreads();
        if (l0 + BK < l_end) fetch(l0 + BK);
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            Acc a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = a_s[k][ty + i * (BM / TM)];
#pragma unroll
            for (int j = 0; j < TN; ++j) b[j] = b_s[k][tx + j * TX];
#pragma unroll
            for (int i = 0; i < TM; ++i) {
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
            }
        }
        __syncthreads();  // the next step overwrites a_s and b_s
    }

    Acc* target = grad_weight + (Deterministic ? Index(blockIdx.y) * c_out * cols : Index(0));
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const Index m = m0 + ty + i * (BM / TM);
        if (m >= og) continue;
        Acc* row = target + (g * og + m) * cols;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const Index jj = j0 + tx + j * TX;
            if (jj >= cols) continue;
            if (Deterministic) {
                row[jj] = acc[i][j];
            } else {
                atomicAdd(row + jj, acc[i][j]);
            }
        }
    }
}

// depthwise_weight_grad: the weight gradient of a depthwise convolution (groups == C_in,
// multiplier M), where conv_weight_grad's 64 x 64 tiles would be nearly empty (og = M rows,
// K columns per group).
//
//     grad_weight[c * M + m, 0, k] = sum_{n, o} grad_output[n, c * M + m, o] * xpad[n, c, o * s - p + k * d]
//
// Block (blockIdx.x, blockIdx.y): blockIdx.x = cm * tap_chunks + chunk picks the output channel
// cm = c * M + m and TAPS = GPUCONV_DW_WGRAD_TAPS consecutive taps t0 .. t0 + TAPS - 1;
// blockIdx.y the reduction range [split * split_len, ...) of l = n * out_positions + o. The
// block's threads stride over l (consecutive threads, consecutive output positions: coalesced
// grad_output reads); each loads grad_output once per l and multiplies it into TAPS register
// accumulators with the TAPS input values under its taps. The block then sums its threads'
// accumulators by a shared-memory tree (a fixed order), and threads 0 .. TAPS - 1 add the sums
// to grad_weight (atomicAdd, Deterministic = false) or store them as the split's partial sums
// (Deterministic = true, reduced by weight_grad_reduce).
// Static shared memory: TAPS * GPUCONV_DW_WGRAD_THREADS * sizeof(acc_t<T>) for the tree plus
// the taps' offsets. blockDim.x must be a power of two <= GPUCONV_DW_WGRAD_THREADS.
// Speed: memory-bound: per (l, tap chunk), one coalesced grad_output load and TAPS input loads
// that hit L1/L2 (neighbouring threads and taps read neighbouring inputs).
template <class T, class Index, int Mode, bool Deterministic>
__global__ void depthwise_weight_grad(
    const T* __restrict__ x,                       // (N, C, D, H, W)
    const T* __restrict__ grad_output,             // (N, C * M, OD, OH, OW)
    gpuconv::acc_t<T>* __restrict__ grad_weight,   // Deterministic: (splits, C * M, K); else (C * M, K), zeroed
    Index batch, Index channels, Index multiplier,
    Index in_d, Index in_h, Index in_w,
    Index out_d, Index out_h, Index out_w,
    Index k_d, Index k_h, Index k_w,
    Index stride_d, Index stride_h, Index stride_w,
    Index dil_d, Index dil_h, Index dil_w,
    Index pad_d, Index pad_h, Index pad_w,
    Index split_len)                               // reduction positions per split
{
    constexpr int TAPS = GPUCONV_DW_WGRAD_TAPS;
    constexpr int MAX_THREADS = GPUCONV_DW_WGRAD_THREADS;
    using Acc = gpuconv::acc_t<T>;

    __shared__ Acc red[TAPS][MAX_THREADS];
    __shared__ Index tap_off[TAPS][3];  // (kd * dil_d, kh * dil_h, kw * dil_w); kd = -1: no tap

    const int tid = threadIdx.x;
    const Index taps = k_d * k_h * k_w;
    const Index chunks = gpuconv::ceil_div(taps, Index(TAPS));
    const Index cm = Index(blockIdx.x) / chunks;
    const Index t0 = (Index(blockIdx.x) % chunks) * TAPS;
    const Index c = cm / multiplier;
    const Index c_out = channels * multiplier;
    const Index out_plane = out_d * out_h * out_w;
    const Index in_volume = in_d * in_h * in_w;
    const Index length = batch * out_plane;
    const Index l_begin = Index(blockIdx.y) * split_len;
    const Index l_end = gpuconv::imin(length, l_begin + split_len);

    if (tid < TAPS) {
        const Index tap = t0 + tid;
        if (tap < taps) {
            tap_off[tid][0] = (tap / (k_w * k_h)) * dil_d;
            tap_off[tid][1] = ((tap / k_w) % k_h) * dil_h;
            tap_off[tid][2] = (tap % k_w) * dil_w;
        } else {
            tap_off[tid][0] = -1;
            tap_off[tid][1] = 0;
            tap_off[tid][2] = 0;
        }
    }
    __syncthreads();

    Acc acc[TAPS];
#pragma unroll
    for (int t = 0; t < TAPS; ++t) acc[t] = gpuconv::zero<Acc>();

    for (Index l = l_begin + tid; l < l_end; l += blockDim.x) {
        const Index n = l / out_plane;
        const Index o = l - n * out_plane;
        const Index ow = o % out_w;
        const Index oh = (o / out_w) % out_h;
        const Index od = o / (out_w * out_h);
        const Acc gv = gpuconv::load_acc(grad_output[(n * c_out + cm) * out_plane + o]);
        const T* x_nc = x + (n * channels + c) * in_volume;
        const Index d_first = od * stride_d - pad_d;
        const Index h_first = oh * stride_h - pad_h;
        const Index w_first = ow * stride_w - pad_w;
#pragma unroll
        for (int t = 0; t < TAPS; ++t) {
            if (tap_off[t][0] < 0) continue;
            const Index src = gpuconv::source_offset<Mode>(d_first + tap_off[t][0], h_first + tap_off[t][1],
                                                           w_first + tap_off[t][2], in_d, in_h, in_w);
            if (src >= 0) acc[t] += gv * gpuconv::load_acc(x_nc[src]);
        }
    }

#pragma unroll
    for (int t = 0; t < TAPS; ++t) red[t][tid] = acc[t];
    __syncthreads();
    for (int half = int(blockDim.x) / 2; half > 0; half /= 2) {
        if (tid < half) {
#pragma unroll
            for (int t = 0; t < TAPS; ++t) red[t][tid] += red[t][tid + half];
        }
        __syncthreads();
    }
    if (tid < TAPS && t0 + tid < taps) {
        const Index taps_total = taps;
        if (Deterministic) {
            grad_weight[(Index(blockIdx.y) * c_out + cm) * taps_total + t0 + tid] = red[tid][0];
        } else {
            atomicAdd(grad_weight + cm * taps_total + t0 + tid, red[tid][0]);
        }
    }
}

// weight_grad_reduce: out[i] = sum_{s < splits} partial[s, i], in ascending s, rounded to T once.
//
// One thread per element i (grid-stride): the second, deterministic pass of the split
// reductions above (with splits = 1 it only rounds a float accumulator to __half).
// Speed: memory-bound; reads are coalesced along i for every s.
template <class T, class Index>
__global__ void weight_grad_reduce(const gpuconv::acc_t<T>* __restrict__ partial,  // (splits, size)
                                   T* __restrict__ out,                              // (size,)
                                   Index size,
                                   Index splits)
{
    using Acc = gpuconv::acc_t<T>;
    const Index step = Index(gridDim.x) * blockDim.x;
    for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < size; i += step) {
        Acc sum = partial[i];
        for (Index s = 1; s < splits; ++s) sum += partial[s * size + i];
        out[i] = gpuconv::store_acc<T>(sum);
    }
}
