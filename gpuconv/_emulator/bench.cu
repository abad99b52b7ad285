// bench.cu -- tiny kernels that measure the emulator itself (see _bench.py and the docstring
// example in __init__.py). They compile with nvcc too.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#else
#include "cuda_shim.h"
#endif

// One thread writes out[i] = i for one element; bound by launch/fiber overhead in the emulator.
template <typename T>
__global__ void fill_index(T* __restrict__ out,  // n
                           long long n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) out[i] = static_cast<T>(i);
}

// One thread passes `rounds` barriers, exchanging one float through shared memory each round;
// one block writes its sum to out[blockIdx.x]. Bound by the cost of a barrier.
__global__ void barrier_rounds(float* __restrict__ out,  // gridDim.x
                               int rounds) {
    __shared__ float slot[1024];
    const unsigned t = threadIdx.x;
    float acc = 0.0f;
    slot[t] = static_cast<float>(t);
    for (int r = 0; r < rounds; ++r) {
        __syncthreads();
        acc += slot[(t + 1) % blockDim.x];
        __syncthreads();
        slot[t] = acc;
    }
    __syncthreads();
    if (t == 0) out[blockIdx.x] = acc;
}
