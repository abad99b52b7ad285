// planted_bugs.cu -- kernels with deliberate bugs that the emulator's checkers must catch, and
// their corrected twins that must pass. One thread handles one element unless said otherwise.
#include "emu_test.cuh"

// (1) BUG: writes one element past the end (the bound should be i < n).
__global__ void oob_write_past_end(float* __restrict__ y,  // n
                                   long long n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 1.0f;
}

// (2) BUG: reads one element before the start (x[i - 1] for i == 0).
__global__ void oob_read_before_start(const float* __restrict__ x,  // n
                                      float* __restrict__ y,        // n
                                      long long n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i - 1] + x[i];
}

// Correct: y[i] = 2 * x[i] (checked mode must pass and give the same result).
__global__ void scale2(const float* __restrict__ x,  // n
                       float* __restrict__ y,        // n
                       long long n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 2.0f * x[i];
}

// Correct but uses dynamic shared memory of n_shared floats; BUG when n_shared < blockDim.x:
// writes past the end of the dynamic shared buffer.
__global__ void shared_overrun(float* __restrict__ y) {  // blockDim.x * gridDim.x
    GPUCONV_DYNAMIC_SHARED(float, buf);
    buf[threadIdx.x] = static_cast<float>(threadIdx.x);
    __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = buf[threadIdx.x];
}

// (3) Neighbour exchange through shared memory: y[i] = x[i] + x[i+1 within the block].
// WITH_BARRIER=false is the planted bug: the read of the neighbour's slot is not separated from
// its write by __syncthreads().
template <bool WITH_BARRIER>
__global__ void neighbour_sum(const float* __restrict__ x,  // n
                              float* __restrict__ y,        // n
                              long long n) {
    __shared__ float tile[256];
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = i < n ? x[i] : 0.0f;
    if (WITH_BARRIER) __syncthreads();
    const float right = threadIdx.x + 1 < blockDim.x ? tile[threadIdx.x + 1] : 0.0f;
    if (i < n) y[i] = tile[threadIdx.x] + right;
}

// (4) A long long scalar: y[i] = i + offset.
__global__ void add_offset(long long* __restrict__ y,  // n
                           long long n, long long offset) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) y[i] = i + offset;
}

// (5) BUG: only threads 0..4 reach the barrier.
__global__ void divergent_barrier(float* __restrict__ y) {  // blockDim.x
    if (threadIdx.x < 5) __syncthreads();
    y[threadIdx.x] = 1.0f;
}

// BUG: thread 0 leaves early, the others meet at a barrier (the classic early return).
__global__ void early_return_barrier(float* __restrict__ y, long long n) {  // n
    const long long i = threadIdx.x;
    if (i == 0) return;
    __syncthreads();
    if (i < n) y[i] = 1.0f;
}

// Correct use of float atomics: every thread adds x[i] into y[0]; the sum's rounding depends
// on the order, which the race check must tolerate (within rounding).
template <typename T>
__global__ void atomic_total(const T* __restrict__ x,  // n
                             T* __restrict__ y,        // 1
                             long long n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(y, x[i]);
}

// BUG: several threads write the same element non-atomically (last writer wins).
__global__ void write_conflict(int* __restrict__ y) {  // 1
    y[0] = static_cast<int>(threadIdx.x);
}

// BUG: reads static shared memory that no thread wrote (only even slots are written).
__global__ void uninitialised_shared(float* __restrict__ y) {  // blockDim.x
    __shared__ float tile[128];
    if ((threadIdx.x & 1) == 0) tile[threadIdx.x] = 1.0f;
    __syncthreads();
    y[threadIdx.x] = tile[threadIdx.x];
}

// BUG: unbounded recursion with a large frame overflows the thread's stack.
__device__ __noinline__ float deep(volatile float* p, int depth) {
    volatile float frame[512];
    frame[depth & 511] = p[0];
    return depth > 0 ? deep(frame, depth - 1) + frame[0] : frame[0];
}
__global__ void stack_overflow(float* __restrict__ y, int depth) {  // 1
    y[0] = deep(y, depth);
}

// BUG: block b reads what block b-1 wrote, assuming blocks run in order (they need not).
__global__ void inter_block_dependency(float* __restrict__ y) {  // gridDim.x
    if (threadIdx.x == 0) y[blockIdx.x] = (blockIdx.x > 0 ? y[blockIdx.x - 1] : 0.0f) + 1.0f;
}
