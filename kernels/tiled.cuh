// tiled.cuh: the block-level pieces shared by the shared-memory tiled kernels conv_tiled
// (conv.cu) and depthwise_tiled (depthwise.cu): staging an input tile, storing a thread's
// register-blocked output row.
#ifndef GPUCONV_TILED_CUH
#define GPUCONV_TILED_CUH

#include "common.cuh"

namespace gpuconv {

// Fills tile (depth, rows, cols), the threads of the block striding over its cells (thread
// `tid` of `threads`; consecutive threads, consecutive columns: coalesced global reads).
// source(z, r, col) gives the offset in src of the element that supplies cell (z, r, col), or a
// negative value for a cell of zero padding. The caller synchronises before reading the tile.
template <class T, class Source>
__device__ __forceinline__ void stage_tile(T* tile, const T* src, int depth, int rows, int cols,
                                           int tid, int threads, Source source) {
    const int plane = rows * cols;
    for (int e = tid; e < depth * plane; e += threads) {
        const int z = e / plane;
        const int rem = e - z * plane;
        const int r = rem / cols;
        const int col = rem - r * cols;
        const auto offset = source(z, r, col);
        tile[e] = offset >= 0 ? src[offset] : zero<T>();
    }
}

// Stores a thread's RW outputs of one output row, out_row[ow_first + r * step] =
// acc[r] + bias for r < RW, except those at or past out_w (a tile's ragged edge).
template <int RW, class T, class Acc, class Index>
__device__ __forceinline__ void store_row(T* out_row, const Acc (&acc)[RW], Acc bias,
                                          Index ow_first, int step, Index out_w) {
#pragma unroll
    for (int r = 0; r < RW; ++r) {
        const Index ow = ow_first + Index(r) * step;
        if (ow < out_w) out_row[ow] = store_acc<T>(acc[r] + bias);
    }
}

}  // namespace gpuconv

#endif  // GPUCONV_TILED_CUH
