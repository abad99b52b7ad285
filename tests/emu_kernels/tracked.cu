// tracked.cu -- kernels for the emulator's track build: planted cross-block bugs for
// race_check() (each with its fixed twin) and access patterns with known memory counters.
#include "emu_test.cuh"
#include "../../kernels/mma.cuh"

// (1) BUG: a lost update. Every thread of every block adds its x into y[i % m] with a plain
// read-modify-write. Within one block the emulator runs threads one after another, so no
// update is lost there and the numbers agree by luck; on a GPU, blocks run at once.
__global__ void sum_plain(const float* __restrict__ x,  // n
                          float* __restrict__ y,        // m
                          int n, int m) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i % m] += x[i];
}
// Fixed twin: atomicAdd.
__global__ void sum_atomic(const float* __restrict__ x,  // n
                           float* __restrict__ y,        // m
                           int n, int m) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(&y[i % m], x[i]);
}

// (2) BUG: a cross-block read after write. Block b writes y[b], then (thread 0) reads y[b - 1],
// written by another block in the same launch.
__global__ void neighbour_read(float* __restrict__ y,  // gridDim.x
                               float* __restrict__ z) {  // gridDim.x
    if (threadIdx.x == 0) y[blockIdx.x] = static_cast<float>(blockIdx.x);
    __syncthreads();
    if (threadIdx.x == 0) z[blockIdx.x] = blockIdx.x > 0 ? y[blockIdx.x - 1] : 0.0f;
}
// Fixed twin: the value is recomputed, not read from the other block.
__global__ void neighbour_recompute(float* __restrict__ y,  // gridDim.x
                                    float* __restrict__ z) {  // gridDim.x
    if (threadIdx.x == 0) y[blockIdx.x] = static_cast<float>(blockIdx.x);
    __syncthreads();
    if (threadIdx.x == 0) z[blockIdx.x] = blockIdx.x > 0 ? static_cast<float>(blockIdx.x - 1) : 0.0f;
}

// Counters: thread t of the launch loads x[t * stride] and stores it to y[t]. One warp's load
// touches 32 floats `stride` apart: min(32, ceil(32 * 4 * stride / 32)) sectors for stride <= 8
// (1 -> 4 sectors, 2 -> 8, 8 -> 32), and its store 4 sectors.
__global__ void strided_copy(const float* __restrict__ x,  // n * stride
                             float* __restrict__ y,        // n
                             int stride) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    y[t] = x[t * stride];
}

// Counters: a 32x32 float tile in shared memory, written by rows and read by columns. Column
// reads of a row-major [32][32] tile put all 32 lanes in one bank: 32 wavefronts per request;
// with PAD = 1 ([32][33]) the lanes spread over 32 banks: 1 wavefront.
template <int PAD>
__global__ void transpose_tile(const float* __restrict__ x,  // 32 * 32
                               float* __restrict__ y) {      // 32 * 32
    __shared__ float tile[32][32 + PAD];
    const int lane = threadIdx.x & 31, row = threadIdx.x >> 5;  // blockDim.x = 32 * rows
    for (int r = row; r < 32; r += blockDim.x >> 5) tile[r][lane] = x[r * 32 + lane];
    __syncthreads();
    for (int r = row; r < 32; r += blockDim.x >> 5) y[r * 32 + lane] = tile[lane][r];
}

// Counters: one ldmatrix.x4 of a 16x16 half tile whose rows are ROW_BYTES apart in shared
// memory. Each 8x8 matrix reads 8 rows of 16 bytes (4 banks each). With dense 32-byte rows, row
// r starts at bank 8r mod 32, so rows r and r+4 share banks: 2 wavefronts per matrix. With
// 48-byte rows (padded by 16 bytes) the 8 rows cover the 32 banks once: 1 wavefront.
template <int ROW_BYTES>
__global__ void ldmatrix_rows(const unsigned short* __restrict__ src,  // 16 * ROW_BYTES / 2
                              unsigned* __restrict__ out) {            // 32 * 4
    __shared__ __align__(16) unsigned short tile[16 * ROW_BYTES / 2];
    for (int i = threadIdx.x; i < 16 * ROW_BYTES / 2; i += 32) tile[i] = src[i];
    __syncwarp();
    const int lane = threadIdx.x;
    // lanes 0-15 give rows 0-15 of columns 0-7, lanes 16-31 rows 0-15 of columns 8-15
    const unsigned char* base = reinterpret_cast<const unsigned char*>(tile);
    const void* row = base + (lane & 15) * ROW_BYTES + (lane >> 4) * 16;
    unsigned r[4];
    gpuconv::mma::ldmatrix_x4(r, row);
    for (int j = 0; j < 4; ++j) out[lane * 4 + j] = r[j];
}

// Counters: each thread copies 16 bytes from global to shared with cp.async, then stores them.
__global__ void async_copy(const float* __restrict__ x,  // 4 * blockDim.x
                           float* __restrict__ y) {      // 4 * blockDim.x
    __shared__ __align__(16) float buf[4 * 64];
    const int t = threadIdx.x;  // blockDim.x <= 64
    gpuconv::mma::cp_async_cg(&buf[4 * t], &x[4 * t], 16);
    gpuconv::mma::cp_async_commit();
    gpuconv::mma::cp_async_wait<0>();
    __syncthreads();
    for (int j = 0; j < 4; ++j) y[4 * t + j] = buf[4 * t + j];
}

// Counters: as async_copy, but odd threads zero-fill (src-size 0: no global read). Each warp's
// copy is still ONE shared request (16 lanes with a source, 16 without).
__global__ void async_copy_half_zero(const float* __restrict__ x,  // 4 * blockDim.x
                                     float* __restrict__ y) {      // 4 * blockDim.x
    __shared__ __align__(16) float buf[4 * 64];
    const int t = threadIdx.x;  // blockDim.x <= 64
    gpuconv::mma::cp_async_cg(&buf[4 * t], &x[4 * t], (t & 1) ? 0 : 16);
    gpuconv::mma::cp_async_commit();
    gpuconv::mma::cp_async_wait<0>();
    __syncthreads();
    for (int j = 0; j < 4; ++j) y[4 * t + j] = buf[4 * t + j];
}
