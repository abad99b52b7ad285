// conv.cu: direct N-d convolution (cross-correlation, as torch.nn.functional.conv{1,2,3}d).
//
// Every call is treated as 3-D: a 1-D or 2-D convolution has unit leading spatial dims
// (size 1, kernel 1, stride 1, dilation 1, padding 0), so one kernel template serves all ranks.
//
//     out[n, co, od, oh, ow] = bias[co] + sum_{ci < C_in/groups, kd, kh, kw}
//         xpad[n, g * C_in/groups + ci, od*sd - pd + kd*dd, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]
//         * weight[co, ci, kd, kh, kw],                       g = co / (C_out/groups)
//
// where xpad reads the input through gpuconv::source_index<Mode> (padding.cuh): the padding
// (zeros, reflect, replicate, circular) is resolved by index mapping, never by a padded copy.
// Only the low pads (pd, ph, pw) are passed: the output extent, computed on the host, already
// accounts for the high ones. Sums are carried in gpuconv::acc_t<T> (float for __half); the
// bias is added last. A call without bias passes a zero bias array.
//
// Two kernels; the host (gpuconv/backends/device/_conv.py) picks one per call, and routes 1x1
// convolutions to a GEMM and groups == C_in (one input channel per group) to depthwise.cu.
#include "common.cuh"
#include "padding.cuh"
#include "tiled.cuh"

// Output channels per thread in conv_tiled (register blocking; the host reads the same value).
#ifndef GPUCONV_CONV_CO_PER_THREAD
#define GPUCONV_CONV_CO_PER_THREAD 8
#endif
// Outputs along W per thread in conv_tiled (register blocking; the host reads the same value).
#ifndef GPUCONV_CONV_W_PER_THREAD
#define GPUCONV_CONV_W_PER_THREAD 4
#endif
// Threads per block the host launches, at most. No __launch_bounds__: with it ptxas capped the
// registers low enough to spill (measured); 256 threads x 255 registers always fits an SM.
#ifndef GPUCONV_CONV_MAX_THREADS
#define GPUCONV_CONV_MAX_THREADS 256
#endif

// conv_tiled: shared-memory tiled direct convolution.
//
// One block computes, for one (n, od) and CB = blockDim.z * CO consecutive output channels of
// one group (CO = GPUCONV_CONV_CO_PER_THREAD), a tile of blockDim.y x (blockDim.x * RW) outputs
// in (oh, ow), with RW = GPUCONV_CONV_W_PER_THREAD. Thread (tx, ty, tz) computes the CO x RW
// outputs of channels co0 + tz * CO + j (j < CO) at oh = oh0 + ty, ow = ow0 + tx + r * blockDim.x
// (r < RW): strided, so the threads of a warp read consecutive shared-memory words. blockDim.z
// > 1 lets small output planes (late CNN layers) still fill a block, all channel groups
// sharing one staged input tile. Blocks loop over tasks (n, od, tile, channel block), the
// channel block varying fastest so that blocks running together share input tiles in L2.
// Per kernel depth tap kd and per chunk of `chunk` input channels of the group, the block
// stages in dynamic shared memory
//   * the input tile incl. halo, padding resolved while staging:
//       (chunk, rows_in, cols_in), rows_in = (blockDim.y - 1) * sh + (KH - 1) * dh + 1,
//                                  cols_in = (blockDim.x * RW - 1) * sw + (KW - 1) * dw + 1;
//   * the weights of its CB output channels for those input channels and kd:
//       (chunk, KH, KW, CB) (zeros for channels past the group's end);
// then every thread does, per (ci, kh, kw), RW shared loads of x, CO broadcast loads of w and
// CO * RW FMAs. Under zero padding a depth tap whose input plane is all padding is skipped.
// Dynamic shared memory: chunk * (rows_in * cols_in + KH * KW * CB) * sizeof(T) bytes.
// Speed: arithmetic (FMA rate / shared-memory load throughput) for realistic channel counts;
// global traffic is ~(halo factor) reads of x per CB output channels and one read of each weight
// per output tile. Any C_out / groups >= 1 works (the host uses it when C_out / groups >= CO / 2,
// so at most half of the register-blocked channels are wasted).
template <class T, class Index, int Mode>
__global__ void conv_tiled(
    const T* __restrict__ x,       // (N, C_in, D, H, W)
    const T* __restrict__ weight,  // (C_out, C_in / groups, KD, KH, KW)
    const T* __restrict__ bias,    // (C_out,)
    T* __restrict__ out,           // (N, C_out, OD, OH, OW)
    Index batch, Index c_in, Index c_out, Index groups,
    Index in_d, Index in_h, Index in_w,
    Index out_d, Index out_h, Index out_w,
    Index k_d, Index k_h, Index k_w,
    Index stride_d, Index stride_h, Index stride_w,
    Index dil_d, Index dil_h, Index dil_w,
    Index pad_d, Index pad_h, Index pad_w,
    Index chunk)                   // input channels staged per pass, >= 1
{
    constexpr int CO = GPUCONV_CONV_CO_PER_THREAD;
    constexpr int RW = GPUCONV_CONV_W_PER_THREAD;
    using Acc = gpuconv::acc_t<T>;

    const int bx = blockDim.x, by = blockDim.y, bz = blockDim.z;
    const int tx = threadIdx.x, ty = threadIdx.y, tz = threadIdx.z;
    const int tid = (tz * by + ty) * bx + tx;
    const int threads = bx * by * bz;
    const int cb_n = bz * CO;  // output channels per block
    // Tile geometry in ints: the host only picks this kernel when the tile fits shared memory.
    const int sh = int(stride_h), sw = int(stride_w), dh = int(dil_h), dw = int(dil_w);
    const int kh_n = int(k_h), kw_n = int(k_w);
    const int taps_hw = kh_n * kw_n;
    const int tile_w = bx * RW;
    const int rows_in = (by - 1) * sh + (kh_n - 1) * dh + 1;
    const int cols_in = (tile_w - 1) * sw + (kw_n - 1) * dw + 1;
    const int plane = rows_in * cols_in;

    GPUCONV_DYNAMIC_SHARED(T, smem);
    T* in_tile = smem;                        // (chunk, rows_in, cols_in)
    T* w_tile = smem + int(chunk) * plane;    // (chunk, KH, KW, CB)

    const Index cg = c_in / groups;           // input channels per group
    const Index og = c_out / groups;          // output channels per group
    const Index co_blocks = gpuconv::ceil_div(og, Index(cb_n));  // per group
    const Index tiles_w = gpuconv::ceil_div(out_w, Index(tile_w));
    const Index tiles_h = gpuconv::ceil_div(out_h, Index(by));
    const Index channel_blocks = groups * co_blocks;
    const Index tasks = batch * out_d * tiles_h * tiles_w * channel_blocks;
    const Index in_plane = in_h * in_w;

    for (Index task = blockIdx.x; task < tasks; task += gridDim.x) {
        Index t = task;
        const Index cb = t % channel_blocks;
        t /= channel_blocks;
        const Index tw = t % tiles_w;
        t /= tiles_w;
        const Index th = t % tiles_h;
        t /= tiles_h;
        const Index od = t % out_d;
        const Index nb = t / out_d;
        const Index g = cb / co_blocks;
        const Index co_block = g * og + (cb - g * co_blocks) * cb_n;  // the block's first channel
        const int block_count = int(gpuconv::imin(Index(cb_n), (g + 1) * og - co_block));
        const Index co0 = co_block + tz * CO;                          // this thread's first
        const int co_count = gpuconv::imin(CO, block_count - tz * CO);   // may be <= 0
        const Index oh0 = th * by;
        const Index ow0 = tw * tile_w;
        const Index h_first = oh0 * stride_h - pad_h;  // padded row of in_tile row 0
        const Index w_first = ow0 * stride_w - pad_w;  // padded column of in_tile column 0
        const T* x_group = x + (nb * c_in + g * cg) * in_d * in_plane;  // (cg, D, H, W)
        const T* w_block = weight + co_block * cg * k_d * taps_hw;  // (block_count, cg, KD, KH, KW)

        Acc acc[CO][RW];
#pragma unroll
        for (int j = 0; j < CO; ++j) {
#pragma unroll
            for (int r = 0; r < RW; ++r) acc[j][r] = gpuconv::zero<Acc>();
        }

        for (Index kd = 0; kd < k_d; ++kd) {
            const Index id = gpuconv::source_index<Mode>(od * stride_d - pad_d + kd * dil_d, in_d);
            if (id < 0) {  // a plane of zero padding; the same for the whole block
                // Its products are 0 * w: nothing, unless a weight is inf or NaN, where PyTorch
                // and the NumPy backend give NaN. Add them without staging a plane of zeros.
#pragma unroll
                for (int j = 0; j < CO; ++j) {  // unrolled: acc stays in registers
                    if (j >= co_count) continue;
                    const T* w_j = w_block + (Index(tz * CO + j) * cg * k_d + kd) * taps_hw;
                    Acc zero_products = gpuconv::zero<Acc>();
                    for (Index c = 0; c < cg; ++c) {
                        for (int tap = 0; tap < taps_hw; ++tap) {
                            zero_products += gpuconv::zero<Acc>() *
                                             gpuconv::load_acc(w_j[c * k_d * taps_hw + tap]);
                        }
                    }
#pragma unroll
                    for (int r = 0; r < RW; ++r) acc[j][r] += zero_products;
                }
                continue;
            }
            for (Index ci0 = 0; ci0 < cg; ci0 += chunk) {
                const int cc = int(gpuconv::imin(chunk, cg - ci0));
                const T* x_plane = x_group + (ci0 * in_d + id) * in_plane;  // channel stride in_d * in_plane
                gpuconv::stage_tile(in_tile, x_plane, cc, rows_in, cols_in, tid, threads,
                                    [&](int c, int r, int col) {
                                        const Index ih = gpuconv::source_index<Mode>(h_first + r, in_h);
                                        const Index iw = gpuconv::source_index<Mode>(w_first + col, in_w);
                                        return (ih >= 0 && iw >= 0)
                                                   ? Index(c) * in_d * in_plane + ih * in_w + iw
                                                   : Index(-1);
                                    });
                // e = (j * cc + c) * taps_hw + tap: consecutive threads read consecutive taps.
                for (int e = tid; e < cb_n * cc * taps_hw; e += threads) {
                    const int tap = e % taps_hw;
                    const int jc = e / taps_hw;
                    const int c = jc % cc;
                    const int j = jc / cc;
                    w_tile[(c * taps_hw + tap) * cb_n + j] =
                        j < block_count
                            ? w_block[((Index(j) * cg + ci0 + c) * k_d + kd) * taps_hw + tap]
                            : gpuconv::zero<T>();
                }
                __syncthreads();
                for (int c = 0; c < cc; ++c) {
                    for (int kh = 0; kh < kh_n; ++kh) {
                        const T* row = in_tile + (c * rows_in + ty * sh + kh * dh) * cols_in + tx * sw;
                        const T* w_row = w_tile + (c * taps_hw + kh * kw_n) * cb_n + tz * CO;
                        for (int kw = 0; kw < kw_n; ++kw) {
                            Acc v[RW];
#pragma unroll
                            for (int r = 0; r < RW; ++r) {
                                v[r] = gpuconv::load_acc(row[kw * dw + r * bx * sw]);
                            }
#pragma unroll
                            for (int j = 0; j < CO; ++j) {
                                const Acc wj = gpuconv::load_acc(w_row[kw * cb_n + j]);
#pragma unroll
                                for (int r = 0; r < RW; ++r) acc[j][r] += v[r] * wj;
                            }
                        }
                    }
                }
                __syncthreads();  // the next pass overwrites both tiles
            }
        }

        const Index oh = oh0 + ty;
        if (oh < out_h) {
#pragma unroll
            for (int j = 0; j < CO; ++j) {
                if (j < co_count) {
                    T* out_row = out + (((nb * c_out + co0 + j) * out_d + od) * out_h + oh) * out_w;
                    gpuconv::store_row(out_row, acc[j], gpuconv::load_acc(bias[co0 + j]), ow0 + tx, bx,
                                       out_w);
                }
            }
        }
    }
}

// conv_direct: the general fallback, one output per thread.
//
// Thread i (grid-stride) computes the output with flat index i of (N, C_out, OD, OH, OW): it
// sums over the group's input channels and the kernel taps, mapping every input position
// through source_index<Mode> and reading the weights through the read-only cache (__ldg; the
// threads of a warp mostly share one output channel, so weight loads are broadcasts).
// No shared memory. Used when conv_tiled's tile would not fit shared memory (very large dilated
// kernels), when C_out / groups is too small for its register blocking, and as a reference
// path for tests.
// Speed: bound by global/L1 load throughput: C_in/groups * KD*KH*KW loads of x and of w per
// output, coalesced along ow for stride 1.
template <class T, class Index, int Mode>
__global__ void conv_direct(
    const T* __restrict__ x,       // (N, C_in, D, H, W)
    const T* __restrict__ weight,  // (C_out, C_in / groups, KD, KH, KW)
    const T* __restrict__ bias,    // (C_out,)
    T* __restrict__ out,           // (N, C_out, OD, OH, OW)
    Index batch, Index c_in, Index c_out, Index groups,
    Index in_d, Index in_h, Index in_w,
    Index out_d, Index out_h, Index out_w,
    Index k_d, Index k_h, Index k_w,
    Index stride_d, Index stride_h, Index stride_w,
    Index dil_d, Index dil_h, Index dil_w,
    Index pad_d, Index pad_h, Index pad_w)
{
    using Acc = gpuconv::acc_t<T>;
    const Index cg = c_in / groups;
    const Index og = c_out / groups;
    const Index taps = k_d * k_h * k_w;
    const Index total = batch * c_out * out_d * out_h * out_w;
    const Index step = Index(gridDim.x) * blockDim.x;

    for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
        Index t = i;
        const Index ow = t % out_w;
        t /= out_w;
        const Index oh = t % out_h;
        t /= out_h;
        const Index od = t % out_d;
        t /= out_d;
        const Index co = t % c_out;
        const Index nb = t / c_out;
        const Index g = co / og;
        const T* x_group = x + (nb * c_in + g * cg) * in_d * in_h * in_w;  // (cg, D, H, W)
        const T* w_co = weight + co * cg * taps;                            // (cg, KD, KH, KW)

        // A zero-padding tap (source index -1) still multiplies its weight by 0, as conv_tiled,
        // PyTorch and the NumPy backend do: an infinite or NaN weight over the pad gives NaN.
        Acc acc = gpuconv::zero<Acc>();
        for (Index ci = 0; ci < cg; ++ci) {
            for (Index kd = 0; kd < k_d; ++kd) {
                const Index id = gpuconv::source_index<Mode>(od * stride_d - pad_d + kd * dil_d, in_d);
                for (Index kh = 0; kh < k_h; ++kh) {
                    const Index ih = gpuconv::source_index<Mode>(oh * stride_h - pad_h + kh * dil_h, in_h);
                    const bool row_ok = id >= 0 && ih >= 0;
                    const T* x_row = x_group + ((ci * in_d + (row_ok ? id : 0)) * in_h + (row_ok ? ih : 0)) * in_w;
                    const T* w_row = w_co + ((ci * k_d + kd) * k_h + kh) * k_w;
                    for (Index kw = 0; kw < k_w; ++kw) {
                        const Index iw = gpuconv::source_index<Mode>(ow * stride_w - pad_w + kw * dil_w, in_w);
                        const Acc xv = (row_ok && iw >= 0) ? gpuconv::load_acc(x_row[iw]) : gpuconv::zero<Acc>();
                        acc += xv * gpuconv::load_acc(__ldg(w_row + kw));
                    }
                }
            }
        }
        out[i] = gpuconv::store_acc<T>(acc + gpuconv::load_acc(bias[co]));
    }
}
