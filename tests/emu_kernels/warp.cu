// warp.cu -- kernels for the emulator's warp collectives (tests/test_emulator_warp.py).
// Each thread reads its operands from arrays indexed by its global thread number
// g = blockIdx.x * blockDim.x + threadIdx.x, so the tests choose every lane's inputs.
#include "emu_test.cuh"

// out[g] = shuffle of in[] across the warp; mode 0 idx, 1 up, 2 down, 3 xor; arg[g] is the
// lane's srcLane / delta / laneMask. Lanes not in `mask` return at once (they are not named).
template <class T>
__global__ void shfl_kernel(const T* __restrict__ in, const int* __restrict__ arg,
                            T* __restrict__ out, int mode, int width, unsigned mask) {
    const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned lane = threadIdx.x & 31u;
    if (!((mask >> lane) & 1u)) return;
    const T v = in[g];
    const int a = arg[g];
    T r;
    if (mode == 0) {
        r = __shfl_sync(mask, v, a, width);
    } else if (mode == 1) {
        r = __shfl_up_sync(mask, v, static_cast<unsigned>(a), width);
    } else if (mode == 2) {
        r = __shfl_down_sync(mask, v, static_cast<unsigned>(a), width);
    } else {
        r = __shfl_xor_sync(mask, v, a, width);
    }
    out[g] = r;
}

// out[4g .. 4g+3] = ballot, any, all, activemask (all with `mask`; lanes outside it return).
__global__ void vote_kernel(const int* __restrict__ pred, unsigned* __restrict__ out,
                            unsigned mask) {
    const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned lane = threadIdx.x & 31u;
    if (!((mask >> lane) & 1u)) return;
    const int p = pred[g];
    out[4 * g + 0] = __ballot_sync(mask, p);
    out[4 * g + 1] = static_cast<unsigned>(__any_sync(mask, p));
    out[4 * g + 2] = static_cast<unsigned>(__all_sync(mask, p));
    out[4 * g + 3] = __activemask();
    __syncwarp(mask);
}

// __activemask() in a divergent branch: lanes with pred[g] != 0 take it; out[g] = the mask seen
// (0 for lanes that did not). Works for blocks that are not a multiple of 32 threads.
__global__ void activemask_branch(const int* __restrict__ pred, unsigned* __restrict__ out) {
    const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned m = 0;
    if (pred[g]) m = __activemask();
    out[g] = m;
}

// Warp sum by a butterfly (xor) of 5 steps; out[g] = sum over the warp (every lane).
__global__ void warp_allreduce(const float* __restrict__ x, float* __restrict__ out) {
    const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[g];
    for (int m = 16; m >= 1; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    out[g] = v;
}

// ---- planted bugs and their fixed twins ------------------------------------------------------

// BUG: only lanes 0-15 reach a shuffle whose mask names all 32 lanes.
__global__ void divergent_shuffle(const float* __restrict__ x, float* __restrict__ out) {
    const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[g];
    if ((threadIdx.x & 31u) < 16u) v = __shfl_down_sync(0xffffffffu, v, 1);
    out[g] = v;
}
// FIXED: every lane shuffles; the upper lanes discard the value.
__global__ void convergent_shuffle(const float* __restrict__ x, float* __restrict__ out) {
    const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = x[g];
    const float s = __shfl_down_sync(0xffffffffu, v, 1);
    out[g] = (threadIdx.x & 31u) < 16u ? s : v;
}

// BUG: lane 5 returns early, the others shuffle with the full mask.
__global__ void early_return_shuffle(const float* __restrict__ x, float* __restrict__ out) {
    const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
    if ((threadIdx.x & 31u) == 5u) return;
    out[g] = __shfl_xor_sync(0xffffffffu, x[g], 1);
}

// One warp per block repeatedly adds its right neighbour's value through a shared buffer:
// v <- v + v[(lane + 1) % 32], `rounds` times. The buffer is rewritten every round, so the
// neighbour must have read it before it is overwritten: SYNC = false omits the __syncwarp()
// that ensures this (the planted bug); SYNC = true is the fixed twin.
template <bool SYNC>
__global__ void warp_reuse(const float* __restrict__ x, float* __restrict__ out, int rounds) {
    __shared__ float buf[32];
    const unsigned lane = threadIdx.x;
    const unsigned g = blockIdx.x * 32u + lane;
    float v = x[g];
    for (int r = 0; r < rounds; ++r) {
        buf[lane] = v;
        __syncwarp();
        v += buf[(lane + 1u) & 31u];
        if (SYNC) __syncwarp();
    }
    out[g] = v;
}

// Two warps hand values over through shared memory: each thread reads the other warp's slot,
// meets its warp at a __syncwarp(), then overwrites its own slot. BARRIER = false omits the
// __syncthreads() between the reads and the writes (the planted bug: the other warp may
// overwrite a slot before it is read -- invisible when the warps advance together, caught by
// the race check's warp-serial run); BARRIER = true is the fixed twin. 64 threads per block.
template <bool BARRIER>
__global__ void warp_handoff(const float* __restrict__ x, float* __restrict__ out) {
    __shared__ float buf[64];
    const unsigned t = threadIdx.x, g = blockIdx.x * 64u + t;
    buf[t] = x[g];
    __syncthreads();
    const float other = buf[(t + 32u) & 63u];
    __syncwarp();
    if (BARRIER) __syncthreads();
    buf[t] = 2.0f * other;
    __syncthreads();
    out[g] = buf[t] + other;
}

// Cost per collective: `iters` rounds of one __shfl_sync per lane (see the test's timing).
__global__ void shfl_rounds(float* __restrict__ out, int iters) {
    float v = static_cast<float>(threadIdx.x);
    for (int i = 0; i < iters; ++i) v = __shfl_sync(0xffffffffu, v, (threadIdx.x + 1u) & 31u);
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

// BUG: lanes 0-15 shuffle with mask 0x0000ffff, lanes 16-31 with the full mask, at one site.
__global__ void mask_mismatch(const float* __restrict__ x, float* __restrict__ out) {
    const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned mask = (threadIdx.x & 31u) < 16u ? 0x0000ffffu : 0xffffffffu;
    out[g] = __shfl_sync(mask, x[g], 0);
}

// BUG: the lower half-warp goes to __syncthreads() while the upper half shuffles.
__global__ void barrier_vs_shuffle(const float* __restrict__ x, float* __restrict__ out) {
    const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[g];
    if ((threadIdx.x & 31u) < 16u)
        __syncthreads();
    else
        v = __shfl_xor_sync(0xffffffffu, v, 16);
    out[g] = v;
}

// Never ends: the warp votes forever (for the interrupt test).
__global__ void spin_on_vote(int* __restrict__ flag) {
    while (__any_sync(0xffffffffu, flag[0] == 0)) {
    }
}
