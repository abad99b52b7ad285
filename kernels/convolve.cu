// convolve.cu: 1-D correlation and convolution (numpy.correlate / numpy.convolve).
//
// Both kernels compute a window of the full correlation of a (length n_a) with taps w:
//
//     full[j] = sum_{n=0}^{n_v-1} a[j - (n_v - 1) + n] * w[n],   j = 0 .. n_a + n_v - 2,
//     w[n] = conj(v[n])           (Convolve = false: numpy.correlate, "c[k] = sum a[n+k] conj(v[n])")
//     w[n] = v[n_v - 1 - n]       (Convolve = true:  numpy.convolve)
//
// with a[i] = 0 outside [0, n_a), and write out[i] = full[start + i] for i < n_out. The host
// picks start and n_out for the mode ("full", "same", "valid") and NumPy's swap rules.
// Sums are carried in gpuconv::acc_t<T> in tap order n = 0, 1, ..., so results do not depend on
// the launch configuration within one kernel.
#include "common.cuh"

// Outputs per thread in correlate1d (register blocking; the host reads the same constant).
#ifndef GPUCONV_CORRELATE1D_OUTPUTS_PER_THREAD
#define GPUCONV_CORRELATE1D_OUTPUTS_PER_THREAD 4
#endif

// correlate1d: the tiled kernel, for long outputs.
//
// One block computes a tile of blockDim.x * R consecutive outputs; thread t computes outputs
// tile_start + t + r * blockDim.x, r < R (strided, so that threads of a warp read consecutive
// shared-memory words: no bank conflicts). The taps are consumed in chunks of `chunk` (<= the
// tap count; the host uses blockDim.x): per chunk the block stages the chunk's taps and the
// tile + chunk - 1 samples of a that they touch in dynamic shared memory, then every thread
// does R multiply-adds per tap from shared memory.
// Dynamic shared memory: (chunk + blockDim.x * R + chunk - 1) * sizeof(T) bytes.
// Speed: per tap, R shared loads of a, one broadcast shared load of w and R FMAs; global
// traffic is ~(1 + chunk / tile) reads per sample. Short filters are bound by global memory
// bandwidth, long ones by shared-memory load throughput / FMA rate.
template <class T, class Index, bool Convolve>
__global__ void correlate1d(const T* __restrict__ a,  // (n_a,)
                            Index n_a,
                            const T* __restrict__ v,  // (n_v,) the filter
                            Index n_v,
                            T* __restrict__ out,      // (n_out,): out[i] = full[start + i]
                            Index n_out,
                            Index start,              // 0 <= start, start + n_out <= n_a + n_v - 1
                            Index chunk)              // taps staged per pass, 1 <= chunk
{
    constexpr int R = GPUCONV_CORRELATE1D_OUTPUTS_PER_THREAD;
    using Acc = gpuconv::acc_t<T>;
    GPUCONV_DYNAMIC_SHARED(T, smem);
    T* taps = smem;           // (chunk,)
    T* window = smem + chunk; // (tile + chunk - 1,): a[a_first + n0 + k]

    const int threads = blockDim.x;
    const int tid = threadIdx.x;
    const Index tile = Index(threads) * R;
    const Index tile_start = Index(blockIdx.x) * tile;
    // a index that output tile_start meets at tap 0 (negative near the left edge).
    const Index a_first = tile_start + start - (n_v - 1);

    Acc acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = gpuconv::zero<Acc>();

    for (Index n0 = 0; n0 < n_v; n0 += chunk) {
        const int count = int(gpuconv::imin(chunk, n_v - n0));  // taps in this pass
        for (int k = tid; k < count; k += threads) {
            const Index n = n0 + k;
            if (Convolve) {
                taps[k] = v[n_v - 1 - n];
            } else {
                taps[k] = gpuconv::conj(v[n]);
            }
        }
        const int span = int(tile) + count - 1;
        for (int k = tid; k < span; k += threads) {
            const Index i = a_first + n0 + k;
            window[k] = (i >= 0 && i < n_a) ? a[i] : gpuconv::zero<T>();
        }
        __syncthreads();
        for (int n = 0; n < count; ++n) {
            const Acc w = gpuconv::load_acc(taps[n]);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                acc[r] += gpuconv::load_acc(window[tid + r * threads + n]) * w;
            }
        }
        __syncthreads();  // the next pass overwrites taps and window
    }

#pragma unroll
    for (int r = 0; r < R; ++r) {
        const Index i = tile_start + tid + Index(r) * threads;
        if (i < n_out) out[i] = gpuconv::store_acc<T>(acc[r]);
    }
}

// correlate1d_reduce: one block per output, for few outputs and long filters (e.g. "valid"
// with two sequences of similar length), where correlate1d would leave most of the GPU idle.
//
// Block b computes outputs b, b + gridDim.x, ...: its threads split that output's taps
// (thread t takes taps t, t + blockDim.x, ...), then a shared-memory tree reduction sums the
// blockDim.x partial sums (blockDim.x must be a power of two).
// Dynamic shared memory: blockDim.x * sizeof(acc_t<T>) bytes.
// Speed: bound by global loads of a and v (both read once per output, coalesced; neighbouring
// blocks reuse a through L2) and, for short tap counts, by the log2(blockDim.x) barriers.
template <class T, class Index, bool Convolve>
__global__ void correlate1d_reduce(const T* __restrict__ a,  // (n_a,)
                                   Index n_a,
                                   const T* __restrict__ v,  // (n_v,) the filter
                                   Index n_v,
                                   T* __restrict__ out,      // (n_out,): out[i] = full[start + i]
                                   Index n_out,
                                   Index start)              // as for correlate1d
{
    using Acc = gpuconv::acc_t<T>;
    GPUCONV_DYNAMIC_SHARED(Acc, partial);  // (blockDim.x,)
    const int tid = threadIdx.x;

    for (Index i = blockIdx.x; i < n_out; i += gridDim.x) {
        const Index a_first = start + i - (n_v - 1);  // a index met at tap 0
        // Only taps with 0 <= a_first + n < n_a contribute.
        const Index n_lo = gpuconv::imax(Index(0), -a_first);
        const Index n_hi = gpuconv::imin(n_v, n_a - a_first);
        Acc acc = gpuconv::zero<Acc>();
        for (Index n = n_lo + tid; n < n_hi; n += blockDim.x) {
            const T w = Convolve ? v[n_v - 1 - n] : gpuconv::conj(v[n]);
            acc += gpuconv::load_acc(a[a_first + n]) * gpuconv::load_acc(w);
        }
        partial[tid] = acc;
        __syncthreads();
        for (int half = blockDim.x / 2; half > 0; half /= 2) {
            if (tid < half) partial[tid] += partial[tid + half];
            __syncthreads();
        }
        // Only thread 0 reads partial[0], and only thread 0 writes it in the next round.
        if (tid == 0) out[i] = gpuconv::store_acc<T>(partial[0]);
    }
}
