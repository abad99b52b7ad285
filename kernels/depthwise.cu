// depthwise.cu: depthwise N-d convolution with a channel multiplier M.
//
// Every call is treated as 3-D (1-D and 2-D have unit leading spatial dims, see conv.cu).
// Output channel c * M + m filters input channel c only:
//
//     out[n, c*M + m, od, oh, ow] = bias[c*M + m] + sum_{kd, kh, kw}
//         xpad[n, c, od*sd - pd + kd*dd, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]
//         * weight[c*M + m, 0, kd, kh, kw]
//
// xpad reads through gpuconv::source_index<Mode> (padding.cuh): padding by index mapping, no
// padded copy. Sums in gpuconv::acc_t<T>, bias added last (a zero array when there is none).
// This equals conv.cu with groups = C (the host also sends such grouped convolutions here).
#include "common.cuh"
#include "padding.cuh"
#include "tiled.cuh"

// Outputs along W per thread (register blocking; the host reads the same value).
#ifndef GPUCONV_DEPTHWISE_W_PER_THREAD
#define GPUCONV_DEPTHWISE_W_PER_THREAD 4
#endif
// Threads per block the host launches, at most (no __launch_bounds__, see conv.cu).
#ifndef GPUCONV_DEPTHWISE_MAX_THREADS
#define GPUCONV_DEPTHWISE_MAX_THREADS 256
#endif

// depthwise_tiled: one input tile, all multiplier outputs.
//
// One block computes, for one (n, c), an output tile of blockDim.z x blockDim.y x
// (blockDim.x * RW) positions in (od, oh, ow) for all M output channels c*M .. c*M + M - 1,
// RW = GPUCONV_DEPTHWISE_W_PER_THREAD. Thread (tx, ty, tz) computes positions
// (od0 + tz, oh0 + ty, ow0 + tx + r * blockDim.x), r < RW, for every m. Blocks loop over tasks
// (n, c, tile), the W tile varying fastest.
// Per task the block stages the 3-D input tile incl. halo once, in dynamic shared memory, padding
// resolved while staging:
//   (depth_in, rows_in, cols_in) = ((bz - 1) * sd + (KD - 1) * dd + 1,
//                                   (by - 1) * sh + (KH - 1) * dh + 1,
//                                   (bx * RW - 1) * sw + (KW - 1) * dw + 1),
// then walks the multiplier in chunks of `m_chunk` filters staged behind it ((m_chunk, KD, KH, KW),
// contiguous in weight), computing all M outputs from the one staged tile.
// Dynamic shared memory: (depth_in * rows_in * cols_in + m_chunk * KD * KH * KW) * sizeof(T).
// Speed: memory bandwidth. Each input element is read from global memory about once (times the
// halo factor of the tile, ~1.3 for a 3x3 filter and an 8 x 64 tile), each output written once;
// the arithmetic (KD*KH*KW FMAs per output, from shared memory) is light.
template <class T, class Index, int Mode>
__global__ void depthwise_tiled(
    const T* __restrict__ x,       // (N, C, D, H, W)
    const T* __restrict__ weight,  // (C * M, 1, KD, KH, KW)
    const T* __restrict__ bias,    // (C * M,)
    T* __restrict__ out,           // (N, C * M, OD, OH, OW)
    Index batch, Index channels, Index multiplier,
    Index in_d, Index in_h, Index in_w,
    Index out_d, Index out_h, Index out_w,
    Index k_d, Index k_h, Index k_w,
    Index stride_d, Index stride_h, Index stride_w,
    Index dil_d, Index dil_h, Index dil_w,
    Index pad_d, Index pad_h, Index pad_w,
    Index m_chunk)                 // filters staged per pass, >= 1
{
    constexpr int RW = GPUCONV_DEPTHWISE_W_PER_THREAD;
    using Acc = gpuconv::acc_t<T>;

    const int bx = blockDim.x, by = blockDim.y, bz = blockDim.z;
    const int tx = threadIdx.x, ty = threadIdx.y, tz = threadIdx.z;
    const int tid = (tz * by + ty) * bx + tx;
    const int threads = bx * by * bz;
    // Tile geometry in ints: the host only launches tiles that fit shared memory.
    const int sd = int(stride_d), sh = int(stride_h), sw = int(stride_w);
    const int dd = int(dil_d), dh = int(dil_h), dw = int(dil_w);
    const int kd_n = int(k_d), kh_n = int(k_h), kw_n = int(k_w);
    const int taps = kd_n * kh_n * kw_n;
    const int tile_w = bx * RW;
    const int depth_in = (bz - 1) * sd + (kd_n - 1) * dd + 1;
    const int rows_in = (by - 1) * sh + (kh_n - 1) * dh + 1;
    const int cols_in = (tile_w - 1) * sw + (kw_n - 1) * dw + 1;
    const int plane = rows_in * cols_in;
    const int volume = depth_in * plane;

    GPUCONV_DYNAMIC_SHARED(T, smem);
    T* in_tile = smem;           // (depth_in, rows_in, cols_in)
    T* w_tile = smem + volume;   // (m_chunk, KD, KH, KW)

    const Index tiles_w = gpuconv::ceil_div(out_w, Index(tile_w));
    const Index tiles_h = gpuconv::ceil_div(out_h, Index(by));
    const Index tiles_d = gpuconv::ceil_div(out_d, Index(bz));
    const Index tasks = batch * channels * tiles_d * tiles_h * tiles_w;
    const Index in_plane = in_h * in_w;

    for (Index task = blockIdx.x; task < tasks; task += gridDim.x) {
        Index t = task;
        const Index tw = t % tiles_w;
        t /= tiles_w;
        const Index th = t % tiles_h;
        t /= tiles_h;
        const Index tdep = t % tiles_d;
        t /= tiles_d;
        const Index c = t % channels;
        const Index nb = t / channels;
        const Index od0 = tdep * bz, oh0 = th * by, ow0 = tw * tile_w;
        const Index d_first = od0 * stride_d - pad_d;  // padded positions of in_tile[0][0][0]
        const Index h_first = oh0 * stride_h - pad_h;
        const Index w_first = ow0 * stride_w - pad_w;
        const T* x_c = x + (nb * channels + c) * in_d * in_plane;  // (D, H, W)

        gpuconv::stage_tile(in_tile, x_c, depth_in, rows_in, cols_in, tid, threads,
                            [&](int z, int r, int col) {
                                return gpuconv::source_offset<Mode>(d_first + z, h_first + r,
                                                                    w_first + col, in_d, in_h, in_w);
                            });

        const Index od = od0 + tz, oh = oh0 + ty;
        const bool row_ok = od < out_d && oh < out_h;
        const T* tile_at = in_tile + (tz * sd * rows_in + ty * sh) * cols_in + tx * sw;
        for (Index m0 = 0; m0 < multiplier; m0 += m_chunk) {
            const int mc = int(gpuconv::imin(m_chunk, multiplier - m0));
            const T* w_src = weight + (c * multiplier + m0) * taps;  // (mc, KD, KH, KW), contiguous
            for (int e = tid; e < mc * taps; e += threads) w_tile[e] = w_src[e];
            __syncthreads();  // the input tile (first pass) and the filters are staged
            for (int m = 0; m < mc; ++m) {
                Acc acc[RW];
#pragma unroll
                for (int r = 0; r < RW; ++r) acc[r] = gpuconv::zero<Acc>();
                const T* w_m = w_tile + m * taps;
                for (int kd = 0; kd < kd_n; ++kd) {
                    for (int kh = 0; kh < kh_n; ++kh) {
                        const T* row = tile_at + (kd * dd * rows_in + kh * dh) * cols_in;
                        const T* w_row = w_m + (kd * kh_n + kh) * kw_n;
                        for (int kw = 0; kw < kw_n; ++kw) {
                            const Acc w = gpuconv::load_acc(w_row[kw]);
#pragma unroll
                            for (int r = 0; r < RW; ++r) {
                                acc[r] += gpuconv::load_acc(row[kw * dw + r * bx * sw]) * w;
                            }
                        }
                    }
                }
                if (row_ok) {
                    const Index co = c * multiplier + m0 + m;
                    T* out_row = out + (((nb * channels * multiplier + co) * out_d + od) * out_h + oh) * out_w;
                    gpuconv::store_row(out_row, acc, gpuconv::load_acc(bias[co]), ow0 + tx, bx, out_w);
                }
            }
            __syncthreads();  // the next pass (or task) overwrites the tiles
        }
    }
}
