// features.cu -- kernels that exercise each feature of the emulator's shim and runtime.
// Each comment says what one thread computes; none of these is about speed.
#include "emu_test.cuh"

// One thread writes its own coordinates into the slot of its global (x, y, z) position:
// out[((gz * NY + gy) * NX + gx) * 8 + k] for k in (threadIdx.xyz, blockIdx.xyz, 1, 0), and
// dims[0..11] = blockDim.xyz, gridDim.xyz, warpSize, ... (written by thread 0 of block 0).
__global__ void index_coverage(int* __restrict__ out,   // (NZ, NY, NX, 8)
                               int* __restrict__ dims,  // 8
                               long long nx, long long ny, long long nz) {
    const long long gx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long gy = static_cast<long long>(blockIdx.y) * blockDim.y + threadIdx.y;
    const long long gz = static_cast<long long>(blockIdx.z) * blockDim.z + threadIdx.z;
    if (gx >= nx || gy >= ny || gz >= nz) return;
    int* slot = out + ((gz * ny + gy) * nx + gx) * 8;
    slot[0] = threadIdx.x;
    slot[1] = threadIdx.y;
    slot[2] = threadIdx.z;
    slot[3] = blockIdx.x;
    slot[4] = blockIdx.y;
    slot[5] = blockIdx.z;
    atomicAdd(&slot[6], 1);  // exactly one visit per element
    if (gx == 0 && gy == 0 && gz == 0) {
        dims[0] = blockDim.x;
        dims[1] = blockDim.y;
        dims[2] = blockDim.z;
        dims[3] = gridDim.x;
        dims[4] = gridDim.y;
        dims[5] = gridDim.z;
        dims[6] = warpSize;
    }
}

// Block-wide tree sum in STATIC shared memory: one block sums BLOCK consecutive elements of x
// into out[blockIdx.x]. blockDim.x must be BLOCK (a power of two).
template <typename T, int BLOCK>
__global__ void block_sum_static(const T* __restrict__ x,  // n
                                 T* __restrict__ out,      // gridDim.x
                                 long long n) {
    __shared__ T buf[BLOCK];
    const long long i = static_cast<long long>(blockIdx.x) * BLOCK + threadIdx.x;
    buf[threadIdx.x] = i < n ? x[i] : T(0);
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride /= 2) {
        if (static_cast<int>(threadIdx.x) < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}

// The same sum in DYNAMIC shared memory of blockDim.x elements (any power of two).
template <typename T>
__global__ void block_sum_dynamic(const T* __restrict__ x,  // n
                                  T* __restrict__ out,      // gridDim.x
                                  long long n) {
    GPUCONV_DYNAMIC_SHARED(T, buf);
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? x[i] : T(0);
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (static_cast<int>(threadIdx.x) < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}

// Every thread atomically adds x[i] into out[i % nbins]; many blocks hit the same bins.
template <typename T>
__global__ void atomic_bins(const T* __restrict__ x,  // n
                            T* __restrict__ out,      // nbins
                            long long n, int nbins) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(&out[i % nbins], x[i]);
}

// One thread converts one float to __half (round to nearest even) and one __half to float.
__global__ void half_convert(const float* __restrict__ f_in,        // n
                             unsigned short* __restrict__ h_out,   // n (bits of __float2half_rn)
                             const __half* __restrict__ h_in,      // n
                             float* __restrict__ f_out,            // n
                             __half* __restrict__ h_sum,           // n: h_in + h_in, in half
                             long long n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __half h = __float2half_rn(f_in[i]);
    h_out[i] = __half_as_ushort(h);
    f_out[i] = __half2float(h_in[i]);
    h_sum[i] = __hadd(h_in[i], h_in[i]);
}

// 64-bit scalars: out[0] = a + b (i64), out[1] = c ^ d (u64), fout[0] = s * 2 (f64).
__global__ void scalars64(long long* __restrict__ out,  // 2
                          double* __restrict__ fout,    // 1
                          long long a, long long b, unsigned long long c, unsigned long long d,
                          double s) {
    out[0] = a + b;
    out[1] = static_cast<long long>(c ^ d);
    fout[0] = s * 2.0;
}

// One parameter of every supported type code; thread 0 writes each scalar into `out` as double.
__global__ void all_types(double* __restrict__ out,  // 14
                          signed char i8, unsigned char u8, short i16, unsigned short u16, int i32,
                          unsigned int u32, long long i64, unsigned long long u64, __half f16,
                          float f32, double f64, emu_test::complex<float> c64,
                          emu_test::complex<double> c128, bool b,
                          const emu_test::complex<double>* __restrict__ pc128,  // 1
                          const __half* __restrict__ pf16) {                     // 1
    out[0] = i8;
    out[1] = u8;
    out[2] = i16;
    out[3] = u16;
    out[4] = i32;
    out[5] = u32;
    out[6] = static_cast<double>(i64);
    out[7] = static_cast<double>(u64);
    out[8] = __half2float(f16);
    out[9] = f32;
    out[10] = f64;
    out[11] = c64.re + 10.0 * c64.im;
    out[12] = c128.re + 10.0 * c128.im + pc128[0].im;
    out[13] = b ? 1.0 + __half2float(pf16[0]) : -1.0;
}

// __syncthreads_count/and/or: thread 0 writes the counts of a predicate true for odd threads.
__global__ void sync_count(int* __restrict__ out) {  // 3
    const int odd = threadIdx.x & 1;
    const int c = __syncthreads_count(odd);
    const int a = __syncthreads_and(odd);
    const int o = __syncthreads_or(odd);
    if (threadIdx.x == 0) {
        out[0] = c;
        out[1] = a;
        out[2] = o;
    }
}

// A kernel assert: fails for thread (3,0,0) of block 1.
__global__ void kernel_assert(int* __restrict__ out) {  // gridDim.x * blockDim.x
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    assert(!(blockIdx.x == 1 && threadIdx.x == 3));
    out[i] = i;
}
