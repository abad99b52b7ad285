// bf16.cu -- the emulator's __nv_bfloat16 (cuda_shim.h; cuda_bf16.h on a GPU): conversions,
// arithmetic and atomicAdd, checked against ml_dtypes by tests/test_emulator_bf16.py.
#include "emu_test.cuh"
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#include <cuda_bf16.h>
#endif

// out_bf[i] = bf16(f[i]); back[i] = float(out_bf[i]); one thread per element.
__global__ void bf16_convert(const float* __restrict__ f,       // n
                             __nv_bfloat16* __restrict__ out_bf,  // n
                             float* __restrict__ back,            // n
                             int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out_bf[i] = __float2bfloat16_rn(f[i]);
    back[i] = __bfloat162float(out_bf[i]);
}

// ops[4 * i + k] = a[i] (+, -, *, /)[k] b[i], each rounded once to bf16.
__global__ void bf16_arith(const __nv_bfloat16* __restrict__ a,  // n
                           const __nv_bfloat16* __restrict__ b,  // n
                           __nv_bfloat16* __restrict__ ops,      // 4 * n
                           int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    ops[4 * i + 0] = a[i] + b[i];
    ops[4 * i + 1] = a[i] - b[i];
    ops[4 * i + 2] = a[i] * b[i];
    ops[4 * i + 3] = a[i] / b[i];
}

// total[i % m] += x[i] with bf16 atomicAdd.
__global__ void bf16_atomic(const __nv_bfloat16* __restrict__ x,  // n
                            __nv_bfloat16* __restrict__ total,    // m
                            int n, int m) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(&total[i % m], x[i]);
}
