// cuda_shim.h -- the subset of CUDA that gpuconv's kernels may use, for the CPU emulator.
//
// A kernel file (`kernels/*.cu`) includes "common.cuh", which includes this header when it is
// not compiled by nvcc/NVRTC. The emulator's module.cpp also includes it first, so a kernel
// that includes it again gets nothing twice.
//
// Supported (see docs/kernels.md, "The emulator"):
//   __global__ __device__ __host__ __forceinline__ __noinline__ __restrict__ __launch_bounds__
//   dim3, uint3, threadIdx, blockIdx, blockDim, gridDim, warpSize
//   __syncthreads(), __syncthreads_count/and/or() -- real block-wide barriers (fibers)
//   static __shared__ arrays, dynamic shared memory via GPUCONV_DYNAMIC_SHARED(T, name)
//   atomicAdd (int, unsigned, unsigned long long, long long, float, double, __half,
//   __nv_bfloat16),
//   atomicSub/Min/Max/Exch/CAS on integers, __threadfence()
//   __half / half and __nv_bfloat16 with round-to-nearest-even conversions and arithmetic
//   __ldg, the <cmath> functions, min/max, a few intrinsics (__fdividef, rsqrtf, __expf, ...)
//   assert() and __trap() inside kernels (reported as an EmulatorError, not an abort)
//   warp collectives: __syncwarp, __shfl_sync/_up/_down/_xor (with width), __ballot_sync,
//   __any_sync, __all_sync, __activemask -- each a rendezvous of the lanes in its mask
//   the tensor-core primitives of kernels/mma.cuh (mma.sync, ldmatrix, strict cp.async)
// Not supported: __constant__ memory written from the host, textures, cooperative groups,
// dynamic parallelism.
#ifndef GPUCONV_EMU_CUDA_SHIM_H
#define GPUCONV_EMU_CUDA_SHIM_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#error "cuda_shim.h is for the CPU emulator only; nvcc/NVRTC must use the real CUDA headers"
#endif

#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>

#define GPUCONV_EMULATOR 1

// ---------------------------------------------------------------------------------------------
// Qualifiers
// ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One OS worker thread runs one block at a time (all of its fibers), so a thread_local is
// exactly "one copy per block in flight".
#define __shared__ static thread_local
// __constant__ memory that only kernels read behaves like a read-only global.
#define __constant__ static
#ifndef __restrict__
#define __restrict__ __restrict
#endif

// ---------------------------------------------------------------------------------------------
// Built-in vector types and indices
// ---------------------------------------------------------------------------------------------
struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

#if !defined(__x86_64__) && !defined(GPUCONV_EMU_UCONTEXT)
#define GPUCONV_EMU_UCONTEXT 1  // no hand-written context switch for this architecture
#endif
#ifdef GPUCONV_EMU_UCONTEXT
#include <ucontext.h>
#endif

// Size (and alignment) of one CUDA thread's stack region, a power of two; set with
// GPUCONV_EMULATE_STACK_KIB (the build passes -DGPUCONV_EMU_STACK_KIB).
#ifndef GPUCONV_EMU_STACK_KIB
#define GPUCONV_EMU_STACK_KIB 128
#endif

namespace gpuconv_emu {

struct Worker;

constexpr std::size_t kStackBytes = static_cast<std::size_t>(GPUCONV_EMU_STACK_KIB) * 1024;
static_assert(kStackBytes >= 32 * 1024 && (kStackBytes & (kStackBytes - 1)) == 0,
              "GPUCONV_EMU_STACK_KIB must be a power of two, at least 32");

// One CUDA thread. It lives at the top of its own stack region, which is aligned to its size,
// so a thread finds itself from its stack pointer: no thread-local lookup in kernel code.
struct Fiber {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
    unsigned char* dynamic_shared;
    unsigned long long* float_atomics;  // the worker's counter of floating-point atomicAdds
    const int* barrier_predicate_sum;   // the worker's: __syncthreads_count at the last release
    Worker* worker;
    void* sp;  // saved stack pointer while switched out
    int state;
    int predicate;
    unsigned lane;  // linear thread index % 32
    // At a warp collective (state FIBER_AT_WARP): what this lane called, where, with which mask,
    // and a pointer to its operands/results on its own stack (see warp_collective below).
    const char* warp_name;
    int (*warp_op)(Fiber* const* lanes, unsigned mask, char* err, std::size_t errlen);
    unsigned warp_mask;
    unsigned warp_line;
    const char* warp_file;
    void* warp_data;
    // cp.async copies issued and not yet landed (strict model: they land at the wait_group that
    // covers their group; until then the destination holds a poison pattern)
    struct AsyncCopy {
        void* dst;
        const void* src;
        unsigned cp_size, src_size, group;
    };
    static constexpr unsigned kMaxAsync = 128;
    unsigned async_n;      // entries in async_q
    unsigned async_group;  // the open (uncommitted) group's number; groups below it are closed
    AsyncCopy async_q[kMaxAsync];
#ifdef GPUCONV_EMU_UCONTEXT
    ucontext_t ctx;
#endif
};

// Where a region's Fiber header sits: near the top, 64-byte aligned, offset by a "colour" of up
// to 1/8 of the region (at most 255 cache lines) taken from the region's address, so that the
// headers (and the hot stack frames just below them) of many threads do not all map to the same
// cache sets.
constexpr std::size_t kFiberHeaderBytes = (sizeof(Fiber) + 63) & ~std::size_t(63);
constexpr std::size_t kColourMask = kStackBytes / 8 / 64 >= 256 ? 255 : kStackBytes / 8 / 64 - 1;
__attribute__((always_inline)) inline Fiber* fiber_of_region(std::uintptr_t base) {
    const std::uintptr_t colour = (base / kStackBytes) & kColourMask;
    return reinterpret_cast<Fiber*>(base + kStackBytes - kFiberHeaderBytes - colour * 64u);
}

// The fiber running on this stack. Only valid in code that runs inside a kernel launch.
__attribute__((always_inline)) inline Fiber* self() {
    std::uintptr_t sp;
#if defined(__x86_64__)
    asm("movq %%rsp, %0" : "=r"(sp));
#elif defined(__aarch64__)
    asm("mov %0, sp" : "=r"(sp));
#else
    volatile char probe = 0;
    sp = reinterpret_cast<std::uintptr_t>(&probe);
#endif
    return fiber_of_region(sp & ~(kStackBytes - 1));
}

// Per OS thread: what the runtime (not kernel code) needs. The race check fills the rest of this
// module's thread-local storage -- the static __shared__ arrays -- with garbage, skipping this.
struct ThreadState {
    Fiber* current;  // the fiber running now, or nullptr outside a launch
    Worker* worker;
    void* tracker;     // the track build's Tracker of this thread's launch (track.h), or null
    int track_busy;    // track.h: inside the tracker (its own accesses are not recorded)
    int track_paused;  // > 0 while a primitive moves data that it reports itself
};
extern thread_local ThreadState tls;

// The track build (track.h) records every access of kernel code; the primitives below that move
// data on the kernel's behalf (ldmatrix, cp.async) pause it and report their traffic themselves.
#ifdef GPUCONV_EMU_TRACK
struct TrackPause {
    TrackPause() { ++tls.track_paused; }
    ~TrackPause() { --tls.track_paused; }
};
void track_note_ldmatrix(const unsigned char* const* rows, unsigned nmat, const char* file,
                         unsigned line);
void track_note_async(const void* dst, const void* src, unsigned cp_size, unsigned src_size,
                      const char* file, unsigned line);
#else
struct TrackPause {};
inline void track_note_ldmatrix(const unsigned char* const*, unsigned, const char*, unsigned) {}
inline void track_note_async(const void*, const void*, unsigned, unsigned, const char*,
                             unsigned) {}
#endif

void syncthreads();  // defined by the runtime
void syncthreads_with_predicate(int pred);
[[noreturn]] void kernel_fault(const char* what, const char* file, unsigned line,
                               const char* func);

}  // namespace gpuconv_emu

#define threadIdx (static_cast<const uint3&>(::gpuconv_emu::self()->thread_idx))
#define blockIdx (static_cast<const uint3&>(::gpuconv_emu::self()->block_idx))
#define blockDim (static_cast<const dim3&>(::gpuconv_emu::self()->block_dim))
#define gridDim (static_cast<const dim3&>(::gpuconv_emu::self()->grid_dim))
static constexpr int warpSize = 32;

// Dynamic shared memory: a `T* name` pointing at the launch's dynamic shared buffer (aligned to
// 64 bytes). The CUDA version, in kernels/common.cuh, uses `extern __shared__` storage.
#ifndef GPUCONV_DYNAMIC_SHARED
#define GPUCONV_DYNAMIC_SHARED(T, name) \
    T* name = reinterpret_cast<T*>(::gpuconv_emu::self()->dynamic_shared)
#endif

// ---------------------------------------------------------------------------------------------
// Synchronisation
// ---------------------------------------------------------------------------------------------
inline void __syncthreads() { ::gpuconv_emu::syncthreads(); }
inline int __syncthreads_count(int pred) {
    ::gpuconv_emu::syncthreads_with_predicate(pred != 0);
    return *::gpuconv_emu::self()->barrier_predicate_sum;
}
inline int __syncthreads_and(int pred) {
    ::gpuconv_emu::syncthreads_with_predicate(pred != 0);
    return *::gpuconv_emu::self()->barrier_predicate_sum ==
           static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
}
inline int __syncthreads_or(int pred) {
    ::gpuconv_emu::syncthreads_with_predicate(pred != 0);
    return *::gpuconv_emu::self()->barrier_predicate_sum != 0;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

[[noreturn]] inline void __trap() {
    ::gpuconv_emu::kernel_fault("__trap() called", nullptr, 0, nullptr);
}

// ---------------------------------------------------------------------------------------------
// Warp collectives. Each call is a rendezvous of the lanes named in its mask: the calling lane
// parks (a fiber switch, like __syncthreads) until every named lane has reached the SAME call
// site (file:line of the caller, via __builtin_FILE/__builtin_LINE default arguments) with the
// same mask; then the runtime runs `op` once over the gathered lanes and releases them. A named
// lane that returned, waits at __syncthreads() or at another collective, is an error naming the
// kernel, the call site and the lanes (DivergentBarrierError), never a hang or garbage.
// Between collectives the lanes run one after another (under race_check in forward, reverse
// and shuffled order), so a missing __syncwarp() before shared memory is reused changes the
// result and the race check reports it.
// ---------------------------------------------------------------------------------------------
namespace gpuconv_emu {

typedef int (*WarpOp)(Fiber* const* lanes, unsigned mask, char* err, std::size_t errlen);
// defined by the runtime; mask 0 means "the lanes of this warp that are at this call site"
// (only __activemask uses it)
void warp_collective(const char* name, WarpOp op, unsigned mask, void* data, const char* file,
                     unsigned line);

inline int warp_nop(Fiber* const*, unsigned, char*, std::size_t) { return 0; }

struct ShflData {
    unsigned long long value, result;
    int arg;    // srcLane, delta or laneMask
    int width;  // power of two, 1..32
};
// Source lane of `lane` as the PTX ISA states shfl.sync (mode idx/up/down/bfly): the segment
// mask is 32 - width and the clamp value 31 (0 for .up).
template <int MODE>
inline int shfl_op(Fiber* const* lanes, unsigned mask, char* err, std::size_t errlen) {
    for (unsigned l = 0; l < 32; ++l) {
        if (!((mask >> l) & 1u)) continue;
        ShflData* d = static_cast<ShflData*>(lanes[l]->warp_data);
        const unsigned seg = static_cast<unsigned>(32 - d->width) & 31u;
        const unsigned clamp = MODE == 1 ? 0u : 31u;
        const unsigned min_lane = l & seg;
        const unsigned max_lane = min_lane | (clamp & ~seg);
        const unsigned b = static_cast<unsigned>(d->arg) & 31u;
        unsigned j;
        bool in_range;
        if (MODE == 0) {  // idx
            j = min_lane | (b & ~seg & 31u);
            in_range = j <= max_lane;
        } else if (MODE == 1) {  // up
            const int jj = static_cast<int>(l) - static_cast<int>(b);
            in_range = jj >= static_cast<int>(max_lane);
            j = static_cast<unsigned>(jj);
        } else if (MODE == 2) {  // down
            j = l + b;
            in_range = j <= max_lane;
        } else {  // bfly (xor)
            j = l ^ b;
            in_range = j <= max_lane;
        }
        if (!in_range) j = l;
        if (!((mask >> j) & 1u)) {
            snprintf(err, errlen, "lane %u reads lane %u, which is not in the mask 0x%08x", l, j,
                     mask);
            return 1;
        }
        d->result = static_cast<ShflData*>(lanes[j]->warp_data)->value;
    }
    return 0;
}

struct VoteData {
    int pred;
    unsigned result;
};
inline int vote_op(Fiber* const* lanes, unsigned mask, char*, std::size_t) {
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; ++l)
        if (((mask >> l) & 1u) && static_cast<VoteData*>(lanes[l]->warp_data)->pred)
            ballot |= 1u << l;
    for (unsigned l = 0; l < 32; ++l)
        if ((mask >> l) & 1u) static_cast<VoteData*>(lanes[l]->warp_data)->result = ballot;
    return 0;
}
inline int activemask_op(Fiber* const* lanes, unsigned mask, char*, std::size_t) {
    for (unsigned l = 0; l < 32; ++l)
        if ((mask >> l) & 1u) *static_cast<unsigned*>(lanes[l]->warp_data) = mask;
    return 0;
}

template <int MODE, class T>
inline T shfl(const char* name, unsigned mask, T var, int arg, int width, const char* file,
              unsigned line) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                  "__shfl*_sync: a type of at most 8 bytes");
    if (width < 1 || width > 32 || (width & (width - 1)))
        kernel_fault("__shfl*_sync: width must be a power of two from 1 to 32", file, line, name);
    ShflData d;
    d.value = 0;
    std::memcpy(&d.value, &var, sizeof(T));
    d.result = 0;
    d.arg = arg;
    d.width = width;
    warp_collective(name, &shfl_op<MODE>, mask, &d, file, line);
    T out;
    std::memcpy(&out, &d.result, sizeof(T));
    return out;
}
inline unsigned vote(const char* name, unsigned mask, int pred, const char* file, unsigned line) {
    VoteData d{pred != 0, 0u};
    warp_collective(name, &vote_op, mask, &d, file, line);
    return d.result;
}

}  // namespace gpuconv_emu

inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       unsigned line = __builtin_LINE()) {
    ::gpuconv_emu::warp_collective("__syncwarp", &::gpuconv_emu::warp_nop, mask, nullptr, file,
                                   line);
}
template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize,
                     const char* file = __builtin_FILE(), unsigned line = __builtin_LINE()) {
    return ::gpuconv_emu::shfl<0>("__shfl_sync", mask, var, srcLane, width, file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                        const char* file = __builtin_FILE(), unsigned line = __builtin_LINE()) {
    return ::gpuconv_emu::shfl<1>("__shfl_up_sync", mask, var, static_cast<int>(delta), width,
                                  file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          const char* file = __builtin_FILE(), unsigned line = __builtin_LINE()) {
    return ::gpuconv_emu::shfl<2>("__shfl_down_sync", mask, var, static_cast<int>(delta), width,
                                  file, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize,
                         const char* file = __builtin_FILE(), unsigned line = __builtin_LINE()) {
    return ::gpuconv_emu::shfl<3>("__shfl_xor_sync", mask, var, laneMask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              unsigned line = __builtin_LINE()) {
    return ::gpuconv_emu::vote("__ballot_sync", mask, pred, file, line);
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      unsigned line = __builtin_LINE()) {
    return ::gpuconv_emu::vote("__any_sync", mask, pred, file, line) != 0;
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      unsigned line = __builtin_LINE()) {
    return ::gpuconv_emu::vote("__all_sync", mask, pred, file, line) == mask;
}
// The emulator has no hardware notion of convergence: __activemask() is a rendezvous of the
// lanes of the warp that reach this same call site (every other live lane of the warp has
// stopped elsewhere -- at another collective, a barrier -- or returned), and returns their mask.
inline unsigned __activemask(const char* file = __builtin_FILE(),
                             unsigned line = __builtin_LINE()) {
    unsigned result = 0;
    ::gpuconv_emu::warp_collective("__activemask", &::gpuconv_emu::activemask_op, 0u, &result,
                                   file, line);
    return result;
}

// ---------------------------------------------------------------------------------------------
// Tensor-core primitives for kernels/mma.cuh (emulator side), modelled on the PTX ISA's fragment
// tables ("Matrix fragments for mma.m16n8k16 with floating point type", "... mma.m16n8k8" for
// .tf32, and ldmatrix). Written as the inverse map -- for each matrix element, which lane and
// which register hold it -- independently of the kernel-side tile types in mma.cuh, whose get_i
// / get_j give the forward map; the tests check both against a NumPy model of the tables.
// Each is a warp collective over all 32 lanes (.sync.aligned): the fragments are gathered at
// the rendezvous, multiplied with exact fp32 products and fp32 sums (c first, then k = 0, 1,
// ...), and scattered back.
// ---------------------------------------------------------------------------------------------
namespace gpuconv_emu {

inline float half_bits_to_float(unsigned short h);  // below
enum MmaKind { MMA_F16_K16 = 0, MMA_BF16_K16 = 1, MMA_TF32_K8 = 2 };

struct MmaData {
    unsigned a[4], b[2];
    float c[4], d[4];
};

inline float mma_operand(unsigned bits16_or_32, int kind) {
    if (kind == MMA_F16_K16) return half_bits_to_float(static_cast<unsigned short>(bits16_or_32));
    unsigned x = kind == MMA_BF16_K16 ? (bits16_or_32 & 0xffffu) << 16
                                      : bits16_or_32 & 0xffffe000u;  // tf32: the top 19 bits
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

template <int KIND>
inline int mma_op(Fiber* const* lanes, unsigned, char*, std::size_t) {
    const int K = KIND == MMA_TF32_K8 ? 8 : 16;
    float A[16][16], B[16][8];
    auto reg = [&](unsigned lane) { return static_cast<MmaData*>(lanes[lane]->warp_data); };
    for (int r = 0; r < 16; ++r)
        for (int k = 0; k < K; ++k) {
            if (KIND == MMA_TF32_K8) {  // a0:(g,t) a1:(g+8,t) a2:(g,t+4) a3:(g+8,t+4)
                const unsigned lane = 4u * (r % 8) + (k % 4);
                A[r][k] = mma_operand(reg(lane)->a[(r / 8) + 2 * (k / 4)], KIND);
            } else {  // register (r/8) + 2*(k/8), half k%2, in lane 4*(r%8) + (k%8)/2
                const unsigned lane = 4u * (r % 8) + (k % 8) / 2;
                const unsigned word = reg(lane)->a[(r / 8) + 2 * (k / 8)];
                A[r][k] = mma_operand(k % 2 ? word >> 16 : word & 0xffffu, KIND);
            }
        }
    for (int k = 0; k < K; ++k)
        for (int n = 0; n < 8; ++n) {
            if (KIND == MMA_TF32_K8) {  // b0:(t,g) b1:(t+4,g)
                const unsigned lane = 4u * n + (k % 4);
                B[k][n] = mma_operand(reg(lane)->b[k / 4], KIND);
            } else {  // register k/8, half k%2, in lane 4*n + (k%8)/2
                const unsigned lane = 4u * n + (k % 8) / 2;
                const unsigned word = reg(lane)->b[k / 8];
                B[k][n] = mma_operand(k % 2 ? word >> 16 : word & 0xffffu, KIND);
            }
        }
    for (int r = 0; r < 16; ++r)
        for (int n = 0; n < 8; ++n) {  // c/d register (n%2) + 2*(r/8) in lane 4*(r%8) + n/2
            MmaData* m = reg(4u * (r % 8) + n / 2);
            const int i = (n % 2) + 2 * (r / 8);
            float acc = m->c[i];
            for (int k = 0; k < K; ++k) acc += A[r][k] * B[k][n];  // products exact in fp32
            m->d[i] = acc;
        }
    return 0;
}

template <int KIND>
inline void mma_sync(float* d, const unsigned* a, const unsigned* b, const float* c,
                     const char* file, unsigned line) {
    MmaData m;
    for (int i = 0; i < 4; ++i) {
        m.a[i] = a[i];
        m.c[i] = c[i];
        m.d[i] = 0.0f;
    }
    m.b[0] = b[0];
    m.b[1] = b[1];
    static const char* const names[] = {"mma.sync.m16n8k16.f16", "mma.sync.m16n8k16.bf16",
                                        "mma.sync.m16n8k8.tf32"};
    warp_collective(names[KIND], &mma_op<KIND>, 0xffffffffu, &m, file, line);
    for (int i = 0; i < 4; ++i) d[i] = m.d[i];
}

struct LdmatrixData {
    const unsigned char* row;  // this lane's row address (used by lanes 0 .. 8*nmat-1)
    unsigned r[4];
};
// ldmatrix .m8n8 .b16: lanes 8j..8j+7 give the row addresses of matrix j. Element (row, col)
// of matrix j sits in lane 4*row + col/2 (half col%2) of register j; .trans puts element
// (row, col) where (col, row) would be.
template <int NMAT, bool TRANS>
inline int ldmatrix_op(Fiber* const* lanes, unsigned, char* err, std::size_t errlen) {
    TrackPause pause;
    auto data = [&](unsigned lane) { return static_cast<LdmatrixData*>(lanes[lane]->warp_data); };
    const unsigned char* rows[8 * NMAT];
    for (unsigned l = 0; l < 8 * NMAT; ++l) rows[l] = data(l)->row;
    track_note_ldmatrix(rows, NMAT, lanes[0]->warp_file, lanes[0]->warp_line);
    for (unsigned j = 0; j < NMAT; ++j)
        for (unsigned row = 0; row < 8; ++row) {
            const unsigned char* p = data(8 * j + row)->row;
            if (reinterpret_cast<std::uintptr_t>(p) % 16) {
                snprintf(err, errlen, "ldmatrix: row address of lane %u is not 16-byte aligned",
                         8 * j + row);
                return 1;
            }
            for (unsigned col = 0; col < 8; ++col) {
                unsigned short v;
                std::memcpy(&v, p + 2 * col, 2);
                const unsigned rr = TRANS ? col : row, cc = TRANS ? row : col;
                unsigned& word = data(4 * rr + cc / 2)->r[j];
                word = cc % 2 ? (word & 0xffffu) | (static_cast<unsigned>(v) << 16)
                              : (word & 0xffff0000u) | v;
            }
        }
    return 0;
}
template <int NMAT, bool TRANS>
inline void ldmatrix(unsigned* r, const void* row, const char* file, unsigned line) {
    LdmatrixData d;
    d.row = static_cast<const unsigned char*>(row);
    for (int j = 0; j < 4; ++j) d.r[j] = 0;
    static const char* const names[2][4] = {
        {"ldmatrix.x1", "ldmatrix.x2", "ldmatrix.x4", "ldmatrix.x4"},
        {"ldmatrix.x1.trans", "ldmatrix.x2.trans", "ldmatrix.x4.trans", "ldmatrix.x4.trans"}};
    warp_collective(names[TRANS][NMAT / 2], &ldmatrix_op<NMAT, TRANS>, 0xffffffffu, &d, file,
                    line);
    for (int j = 0; j < NMAT; ++j) r[j] = d.r[j];
}

// Strict cp.async: a copy is queued at issue and its destination filled with 0xFF bytes (a NaN
// for f16/f32/f64); the bytes land only when a wait_group covers the copy's group. Zero-fill:
// bytes past src_size are written as zeros (and src is not read when src_size is 0).
constexpr unsigned char kAsyncPoison = 0xff;
inline void cp_async(void* dst, const void* src, unsigned cp_size, unsigned src_size,
                     const char* file, unsigned line) {
    Fiber* f = self();
    if (!(cp_size == 4 || cp_size == 8 || cp_size == 16) || src_size > cp_size)
        kernel_fault("cp.async: cp-size must be 4, 8 or 16 and src-size at most cp-size", file,
                     line, nullptr);
    if (reinterpret_cast<std::uintptr_t>(dst) % cp_size ||
        (src_size && reinterpret_cast<std::uintptr_t>(src) % cp_size))
        kernel_fault("cp.async: addresses must be aligned to cp-size", file, line, nullptr);
    if (f->async_n == Fiber::kMaxAsync)
        kernel_fault("cp.async: more than 128 copies of one thread in flight", file, line,
                     nullptr);
    f->async_q[f->async_n++] = Fiber::AsyncCopy{dst, src, cp_size, src_size, f->async_group};
    track_note_async(dst, src, cp_size, src_size, file, line);
    TrackPause pause;
    std::memset(dst, kAsyncPoison, cp_size);
}
inline void cp_async_commit() { ++self()->async_group; }
// Land every copy of a closed group except those of the `pending` most recent closed groups.
inline void cp_async_wait(unsigned pending) {
    TrackPause pause;
    Fiber* f = self();
    const unsigned closed = f->async_group;  // groups 0 .. closed-1 are committed
    unsigned keep = 0;
    for (unsigned i = 0; i < f->async_n; ++i) {
        Fiber::AsyncCopy& c = f->async_q[i];
        if (c.group < closed && closed - c.group > pending) {
            if (c.src_size) std::memcpy(c.dst, c.src, c.src_size);
            std::memset(static_cast<unsigned char*>(c.dst) + c.src_size, 0,
                        c.cp_size - c.src_size);
        } else {
            f->async_q[keep++] = c;
        }
    }
    f->async_n = keep;
}

}  // namespace gpuconv_emu

// ---------------------------------------------------------------------------------------------
// __half: IEEE binary16 storage, conversions rounded to nearest even
// ---------------------------------------------------------------------------------------------
namespace gpuconv_emu {

inline unsigned short float_to_half_bits(float f) {
    unsigned int x;
    std::memcpy(&x, &f, 4);
    const unsigned int sign = (x >> 16) & 0x8000u;
    const unsigned int abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) {  // inf or NaN
        if (abs == 0x7f800000u) return static_cast<unsigned short>(sign | 0x7c00u);
        return static_cast<unsigned short>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));  // quiet NaN
    }
    if (abs >= 0x477ff000u)  // >= 65520: rounds to infinity
        return static_cast<unsigned short>(sign | 0x7c00u);
    if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
        if (abs < 0x33000000u) return static_cast<unsigned short>(sign);  // <= 2^-25: to zero
        const unsigned int exp = abs >> 23;                   // 102 .. 112
        const unsigned int mant = (abs & 0x7fffffu) | 0x800000u;
        const unsigned int shift = 126u - exp;                // 14 .. 24
        unsigned int h = mant >> shift;
        const unsigned int rem = mant & ((1u << shift) - 1u);
        const unsigned int half_way = 1u << (shift - 1u);
        if (rem > half_way || (rem == half_way && (h & 1u))) ++h;
        return static_cast<unsigned short>(sign | h);
    }
    // normal: rebias exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even
    unsigned int h = ((abs - 0x38000000u) >> 13);
    const unsigned int rem = abs & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // carry may bump the exponent: ok
    return static_cast<unsigned short>(sign | h);
}

inline float half_bits_to_float(unsigned short h) {
    const unsigned int sign = (static_cast<unsigned int>(h) & 0x8000u) << 16;
    const unsigned int exp = (h >> 10) & 0x1fu;
    unsigned int mant = h & 0x3ffu;
    unsigned int x;
    if (exp == 0x1fu) {
        x = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        x = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        x = sign;
    } else {  // subnormal half -> normal float
        unsigned int e = 113u;
        while (!(mant & 0x400u)) {
            mant <<= 1;
            --e;
        }
        x = sign | (e << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

}  // namespace gpuconv_emu

struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(::gpuconv_emu::float_to_half_bits(f)) {}
    // double -> half goes through float, like cuda_fp16's host path; a double that is exactly
    // representable in float (the usual case) rounds once.
    __half(double d) : __x(::gpuconv_emu::float_to_half_bits(static_cast<float>(d))) {}
    __half(int i) : __x(::gpuconv_emu::float_to_half_bits(static_cast<float>(i))) {}
    operator float() const { return ::gpuconv_emu::half_bits_to_float(__x); }
    __half& operator+=(const __half& o) { return *this = __half(float(*this) + float(o)); }
    __half& operator-=(const __half& o) { return *this = __half(float(*this) - float(o)); }
    __half& operator*=(const __half& o) { return *this = __half(float(*this) * float(o)); }
    __half& operator/=(const __half& o) { return *this = __half(float(*this) / float(o)); }
};
typedef __half half;
static_assert(sizeof(__half) == 2, "__half must be 16 bits");

// + - * / computed in float and rounded once to half are correctly rounded (24 >= 2*11 + 2).
inline __half operator+(const __half& a, const __half& b) { return __half(float(a) + float(b)); }
inline __half operator-(const __half& a, const __half& b) { return __half(float(a) - float(b)); }
inline __half operator*(const __half& a, const __half& b) { return __half(float(a) * float(b)); }
inline __half operator/(const __half& a, const __half& b) { return __half(float(a) / float(b)); }
inline __half operator-(const __half& a) {
    __half r;
    r.__x = static_cast<unsigned short>(a.__x ^ 0x8000u);
    return r;
}
inline bool operator==(const __half& a, const __half& b) { return float(a) == float(b); }
inline bool operator!=(const __half& a, const __half& b) { return float(a) != float(b); }
inline bool operator<(const __half& a, const __half& b) { return float(a) < float(b); }
inline bool operator<=(const __half& a, const __half& b) { return float(a) <= float(b); }
inline bool operator>(const __half& a, const __half& b) { return float(a) > float(b); }
inline bool operator>=(const __half& a, const __half& b) { return float(a) >= float(b); }

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __double2half(double d) { return __half(d); }
inline float __half2float(__half h) { return float(h); }
inline __half __int2half_rn(int i) { return __half(static_cast<float>(i)); }
inline __half __ushort_as_half(unsigned short bits) {
    __half h;
    h.__x = bits;
    return h;
}
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hsub(__half a, __half b) { return a - b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hdiv(__half a, __half b) { return a / b; }
inline __half __hneg(__half a) { return -a; }
// Product exact in double, one rounding to double, then to half: differs from a true fused
// multiply-add only in rare double-rounding ties.
inline __half __hfma(__half a, __half b, __half c) {
    return __half(static_cast<float>(double(float(a)) * double(float(b)) + double(float(c))));
}
inline bool __hisnan(__half a) { return (a.__x & 0x7fffu) > 0x7c00u; }

// ---------------------------------------------------------------------------------------------
// __nv_bfloat16 (cuda_bf16.h): the top 16 bits of an IEEE binary32; conversions from float round
// to nearest even (NaN stays a quiet NaN), to float are exact. + - * / are computed in float and
// rounded once, which is correctly rounded (24 >= 2*8 + 2), as on the GPU.
// ---------------------------------------------------------------------------------------------
namespace gpuconv_emu {
inline unsigned short float_to_bf16_bits(float f) {
    unsigned int x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even (may carry into the exponent)
    return static_cast<unsigned short>(x >> 16);
}
inline float bf16_bits_to_float(unsigned short h) {
    const unsigned int x = static_cast<unsigned int>(h) << 16;
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
}  // namespace gpuconv_emu

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(::gpuconv_emu::float_to_bf16_bits(f)) {}
    __nv_bfloat16(double d) : __x(::gpuconv_emu::float_to_bf16_bits(static_cast<float>(d))) {}
    __nv_bfloat16(int i) : __x(::gpuconv_emu::float_to_bf16_bits(static_cast<float>(i))) {}
    operator float() const { return ::gpuconv_emu::bf16_bits_to_float(__x); }
    __nv_bfloat16& operator+=(const __nv_bfloat16& o) { return *this = __nv_bfloat16(float(*this) + float(o)); }
    __nv_bfloat16& operator-=(const __nv_bfloat16& o) { return *this = __nv_bfloat16(float(*this) - float(o)); }
    __nv_bfloat16& operator*=(const __nv_bfloat16& o) { return *this = __nv_bfloat16(float(*this) * float(o)); }
    __nv_bfloat16& operator/=(const __nv_bfloat16& o) { return *this = __nv_bfloat16(float(*this) / float(o)); }
};
typedef __nv_bfloat16 nv_bfloat16;
static_assert(sizeof(__nv_bfloat16) == 2, "__nv_bfloat16 must be 16 bits");

inline __nv_bfloat16 operator+(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __nv_bfloat16(float(a) + float(b)); }
inline __nv_bfloat16 operator-(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __nv_bfloat16(float(a) - float(b)); }
inline __nv_bfloat16 operator*(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __nv_bfloat16(float(a) * float(b)); }
inline __nv_bfloat16 operator/(const __nv_bfloat16& a, const __nv_bfloat16& b) { return __nv_bfloat16(float(a) / float(b)); }
inline __nv_bfloat16 operator-(const __nv_bfloat16& a) {
    __nv_bfloat16 r;
    r.__x = static_cast<unsigned short>(a.__x ^ 0x8000u);
    return r;
}
inline bool operator==(const __nv_bfloat16& a, const __nv_bfloat16& b) { return float(a) == float(b); }
inline bool operator!=(const __nv_bfloat16& a, const __nv_bfloat16& b) { return float(a) != float(b); }
inline bool operator<(const __nv_bfloat16& a, const __nv_bfloat16& b) { return float(a) < float(b); }
inline bool operator<=(const __nv_bfloat16& a, const __nv_bfloat16& b) { return float(a) <= float(b); }
inline bool operator>(const __nv_bfloat16& a, const __nv_bfloat16& b) { return float(a) > float(b); }
inline bool operator>=(const __nv_bfloat16& a, const __nv_bfloat16& b) { return float(a) >= float(b); }

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) {
    __nv_bfloat16 h;
    h.__x = bits;
    return h;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline bool __hisnan(__nv_bfloat16 a) { return (a.__x & 0x7fffu) > 0x7f80u; }
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
    return __nv_bfloat16(static_cast<float>(double(float(a)) * double(float(b)) + double(float(c))));
}

// ---------------------------------------------------------------------------------------------
// Atomics: truly atomic across the emulator's worker threads
// ---------------------------------------------------------------------------------------------
namespace gpuconv_emu {
template <class T>
inline T atomic_fetch_add_integer(T* address, T val) {
    return __atomic_fetch_add(address, val, __ATOMIC_RELAXED);
}
template <class T, class Bits>
inline T atomic_fetch_add_float(T* address, T val) {
    static_assert(sizeof(T) == sizeof(Bits), "bit-width mismatch");
    ++*self()->float_atomics;
    Bits* bits = reinterpret_cast<Bits*>(address);
    Bits expected = __atomic_load_n(bits, __ATOMIC_RELAXED);
    for (;;) {
        T old_value;
        std::memcpy(&old_value, &expected, sizeof(T));
        const T new_value = static_cast<T>(old_value + val);
        Bits desired;
        std::memcpy(&desired, &new_value, sizeof(T));
        if (__atomic_compare_exchange_n(bits, &expected, desired, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return old_value;
    }
}
}  // namespace gpuconv_emu

inline int atomicAdd(int* a, int v) { return ::gpuconv_emu::atomic_fetch_add_integer(a, v); }
inline unsigned int atomicAdd(unsigned int* a, unsigned int v) {
    return ::gpuconv_emu::atomic_fetch_add_integer(a, v);
}
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return ::gpuconv_emu::atomic_fetch_add_integer(a, v);
}
inline long long atomicAdd(long long* a, long long v) {
    return ::gpuconv_emu::atomic_fetch_add_integer(a, v);
}
inline float atomicAdd(float* a, float v) {
    return ::gpuconv_emu::atomic_fetch_add_float<float, std::uint32_t>(a, v);
}
inline double atomicAdd(double* a, double v) {
    return ::gpuconv_emu::atomic_fetch_add_float<double, std::uint64_t>(a, v);
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
    return ::gpuconv_emu::atomic_fetch_add_float<__nv_bfloat16, std::uint16_t>(a, v);
}
inline __half atomicAdd(__half* a, __half v) {
    return ::gpuconv_emu::atomic_fetch_add_float<__half, std::uint16_t>(a, v);
}
template <class T>
inline T atomicSub(T* a, T v) {
    static_assert(std::is_integral<T>::value, "atomicSub: integers only");
    return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED);
}
template <class T>
inline T atomicExch(T* a, T v) {
    static_assert(std::is_integral<T>::value, "atomicExch: integers only in the emulator");
    return __atomic_exchange_n(a, v, __ATOMIC_RELAXED);
}
template <class T>
inline T atomicCAS(T* a, T compare, T v) {
    static_assert(std::is_integral<T>::value, "atomicCAS: integers only");
    __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return compare;  // the old value either way
}
template <class T>
inline T atomicMax(T* a, T v) {
    static_assert(std::is_integral<T>::value, "atomicMax: integers only");
    T old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (old < v &&
           !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
template <class T>
inline T atomicMin(T* a, T v) {
    static_assert(std::is_integral<T>::value, "atomicMin: integers only");
    T old = __atomic_load_n(a, __ATOMIC_RELAXED);
    while (old > v &&
           !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}

// ---------------------------------------------------------------------------------------------
// Loads, math and intrinsics
// ---------------------------------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) {
    return *p;
}

// CUDA's min/max accept mixed arithmetic types; the result is their common type.
template <class A, class B,
          class = typename std::enable_if<std::is_arithmetic<A>::value &&
                                          std::is_arithmetic<B>::value>::type>
inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class A, class B,
          class = typename std::enable_if<std::is_arithmetic<A>::value &&
                                          std::is_arithmetic<B>::value>::type>
inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(floorf(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(ceilf(x)); }
inline int __double2int_rn(double x) { return static_cast<int>(nearbyint(x)); }
// The bit reinterpretations: the bits of `from` read as a To (std::bit_cast is C++20).
template <class To, class From>
inline To gpuconv_shim_bit_cast(const From& from) {
    static_assert(sizeof(To) == sizeof(From), "bit cast between types of different sizes");
    To to;
    std::memcpy(&to, &from, sizeof(To));
    return to;
}
inline int __float_as_int(float x) { return gpuconv_shim_bit_cast<int>(x); }
inline float __int_as_float(int i) { return gpuconv_shim_bit_cast<float>(i); }
inline unsigned int __float_as_uint(float x) { return gpuconv_shim_bit_cast<unsigned int>(x); }
inline float __uint_as_float(unsigned int i) { return gpuconv_shim_bit_cast<float>(i); }
inline long long __double_as_longlong(double x) { return gpuconv_shim_bit_cast<long long>(x); }
inline double __longlong_as_double(long long i) { return gpuconv_shim_bit_cast<double>(i); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) {
    return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}

// ---------------------------------------------------------------------------------------------
// Parameter type codes (what the Python argument checker compares against)
// ---------------------------------------------------------------------------------------------
namespace gpuconv_emu {

// A struct `{T re, im;}` with T float/double (gpuconv::complex<T> in kernels/common.cuh) is
// recognised by its members; another type can specialise `type_code` after including this file.
template <class T, class = void>
struct complex_code {
    static constexpr const char* value = nullptr;
};
template <class T>
struct complex_code<T, typename std::enable_if<
                           std::is_class<T>::value &&
                           std::is_same<decltype(T::re), decltype(T::im)>::value &&
                           sizeof(T) == 2 * sizeof(decltype(T::re))>::type> {
    typedef typename std::remove_cv<decltype(T::re)>::type part;
    static constexpr const char* value = std::is_same<part, float>::value    ? "c64"
                                         : std::is_same<part, double>::value ? "c128"
                                                                             : nullptr;
};

template <class T>
struct type_code {
    static constexpr const char* value =
        std::is_same<T, bool>::value                                  ? "bool"
        : std::is_same<T, __half>::value                              ? "f16"
        : std::is_same<T, __nv_bfloat16>::value                       ? "bf16"
        : std::is_same<T, float>::value                               ? "f32"
        : std::is_same<T, double>::value                              ? "f64"
        : (std::is_integral<T>::value && std::is_signed<T>::value)    ? (sizeof(T) == 1   ? "i8"
                                                                         : sizeof(T) == 2 ? "i16"
                                                                         : sizeof(T) == 4 ? "i32"
                                                                         : sizeof(T) == 8 ? "i64"
                                                                                          : nullptr)
        : (std::is_integral<T>::value && std::is_unsigned<T>::value)  ? (sizeof(T) == 1   ? "u8"
                                                                         : sizeof(T) == 2 ? "u16"
                                                                         : sizeof(T) == 4 ? "u32"
                                                                         : sizeof(T) == 8 ? "u64"
                                                                                          : nullptr)
                                                                      : complex_code<T>::value;
};

}  // namespace gpuconv_emu

#endif  // GPUCONV_EMU_CUDA_SHIM_H
