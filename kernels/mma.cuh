// mma.cuh -- tensor-core primitives: mma.sync, ldmatrix and cp.async, and the fragment layouts
// ("tiles") that say which matrix element each lane of a warp holds.
//
// Include after common.cuh (or any header that provides CUDA or the emulator's cuda_shim.h).
// Two implementations behind the same names:
//  * NVRTC / nvcc: inline PTX (needs no header). mma.sync f16/bf16 m16n8k16 and tf32 m16n8k8 and
//    cp.async need sm_80; on sm_75 the f16 mma runs as two m16n8k8 instructions, cp.async as a
//    plain synchronous copy (zero fill included), and the bf16/tf32 mma fail to compile with a
//    message if a kernel uses them.
//  * g++ (the CPU emulator): gpuconv_emu::mma_sync / ldmatrix / cp_async in cuda_shim.h, warp
//    collectives modelled on the PTX ISA's tables independently of the tiles below; cp.async is
//    strict there (a destination read before its wait_group sees 0xFF bytes, a NaN).
//
// Layouts: PTX ISA, "Warp-level matrix multiply-accumulate instructions" -- "Matrix fragments
// for mma.m16n8k16 with floating point type", "Matrix fragments for mma.m16n8k8" (.tf32) -- and
// "ldmatrix". Notation: lane 0..31, g = lane / 4 (groupID), t = lane % 4 (threadID_in_group).
// A is M x K row-major, B is K x N "column-major" (.row.col: element (k, n) of B; the fragment
// holds pairs along k), C/D is M x N in fp32.
#ifndef GPUCONV_MMA_CUH
#define GPUCONV_MMA_CUH

namespace gpuconv {
namespace mma {

// ------------------------------------------------------------------ tiles: who holds what

// A of mma.m16n8k16 (f16 or bf16): 16 x 16, eight 16-bit elements per lane in four 32-bit
// registers; element e sits in register e / 2, in the low half when e is even.
//   row(e) = g + 8 for e in {2, 3, 6, 7}, else g;   col(e) = 2t + (e & 1) + 8 for e >= 4
struct tile_a16x16 {
    static constexpr int ne = 8;
    unsigned reg[4];
    static __device__ __forceinline__ int get_i(int lane, int e) {
        return lane / 4 + ((e >> 1) & 1) * 8;
    }
    static __device__ __forceinline__ int get_j(int lane, int e) {
        return 2 * (lane % 4) + (e & 1) + (e >> 2) * 8;
    }
};

// B of mma.m16n8k16: 16 (k) x 8 (n), four 16-bit elements per lane in two registers.
//   k(e) = 2t + (e & 1) + 8 for e >= 2;   n(e) = g
struct tile_b16x8 {
    static constexpr int ne = 4;
    unsigned reg[2];
    static __device__ __forceinline__ int get_i(int lane, int e) {
        return 2 * (lane % 4) + (e & 1) + (e >> 1) * 8;
    }
    static __device__ __forceinline__ int get_j(int lane, int /*e*/) { return lane / 4; }
};

// A of mma.m16n8k8.tf32: 16 x 8, four 32-bit elements (one per register).
//   row(e) = g + 8 for e in {1, 3}, else g;   col(e) = t + 4 for e >= 2, else t
struct tile_a16x8_tf32 {
    static constexpr int ne = 4;
    unsigned reg[4];
    static __device__ __forceinline__ int get_i(int lane, int e) { return lane / 4 + (e & 1) * 8; }
    static __device__ __forceinline__ int get_j(int lane, int e) { return lane % 4 + (e >> 1) * 4; }
};

// B of mma.m16n8k8.tf32: 8 (k) x 8 (n), two 32-bit elements.
//   k(e) = t + 4e;   n(e) = g
struct tile_b8x8_tf32 {
    static constexpr int ne = 2;
    unsigned reg[2];
    static __device__ __forceinline__ int get_i(int lane, int e) { return lane % 4 + 4 * e; }
    static __device__ __forceinline__ int get_j(int lane, int /*e*/) { return lane / 4; }
};

// C/D of both shapes: 16 x 8 fp32, four per lane.
//   row(e) = g + 8 for e >= 2, else g;   col(e) = 2t + (e & 1)
struct tile_c16x8 {
    static constexpr int ne = 4;
    float x[4];
    static __device__ __forceinline__ int get_i(int lane, int e) { return lane / 4 + (e >> 1) * 8; }
    static __device__ __forceinline__ int get_j(int lane, int e) { return 2 * (lane % 4) + (e & 1); }
};

// Two 16-bit values into one register, the first in the low half (the lower-numbered element).
static __device__ __forceinline__ unsigned pack16(unsigned short lo, unsigned short hi) {
    return static_cast<unsigned>(lo) | (static_cast<unsigned>(hi) << 16);
}

// ------------------------------------------------------------------ primitives

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 750
#error "gpuconv mma.cuh: ldmatrix and mma.sync need sm_75 or newer"
#endif

// false, but only when a template that names it is instantiated (a clear error on sm_75)
template <class T>
struct needs_sm80 {
    static constexpr bool value = false;
};

// The 32-bit shared-state-space address of a generic pointer to shared memory.
static __device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// D = A * B + C, f16 inputs, f32 accumulation.
static __device__ __forceinline__ void mma_f16(tile_c16x8& d, const tile_a16x16& a,
                                               const tile_b16x8& b, const tile_c16x8& c) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};"
        : "=f"(d.x[0]), "=f"(d.x[1]), "=f"(d.x[2]), "=f"(d.x[3])
        : "r"(a.reg[0]), "r"(a.reg[1]), "r"(a.reg[2]), "r"(a.reg[3]), "r"(b.reg[0]),
          "r"(b.reg[1]), "f"(c.x[0]), "f"(c.x[1]), "f"(c.x[2]), "f"(c.x[3]));
#else
    // sm_75: two m16n8k8 (k = 0..7 is registers a0,a1 / b0; k = 8..15 is a2,a3 / b1)
    float t0, t1, t2, t3;
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%7,%8,%9,%10};"
        : "=f"(t0), "=f"(t1), "=f"(t2), "=f"(t3)
        : "r"(a.reg[0]), "r"(a.reg[1]), "r"(b.reg[0]), "f"(c.x[0]), "f"(c.x[1]), "f"(c.x[2]),
          "f"(c.x[3]));
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
        "{%7,%8,%9,%10};"
        : "=f"(d.x[0]), "=f"(d.x[1]), "=f"(d.x[2]), "=f"(d.x[3])
        : "r"(a.reg[2]), "r"(a.reg[3]), "r"(b.reg[1]), "f"(t0), "f"(t1), "f"(t2), "f"(t3));
#endif
}

template <class Dummy = void>
static __device__ __forceinline__ void mma_bf16(tile_c16x8& d, const tile_a16x16& a,
                                                const tile_b16x8& b, const tile_c16x8& c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    static_assert(needs_sm80<Dummy>::value, "gpuconv mma.cuh: bf16 mma.sync needs sm_80 or newer");
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};"
        : "=f"(d.x[0]), "=f"(d.x[1]), "=f"(d.x[2]), "=f"(d.x[3])
        : "r"(a.reg[0]), "r"(a.reg[1]), "r"(a.reg[2]), "r"(a.reg[3]), "r"(b.reg[0]),
          "r"(b.reg[1]), "f"(c.x[0]), "f"(c.x[1]), "f"(c.x[2]), "f"(c.x[3]));
#endif
}

// TF32: the registers hold f32 bit patterns; the tensor core uses their top 19 bits.
template <class Dummy = void>
static __device__ __forceinline__ void mma_tf32(tile_c16x8& d, const tile_a16x8_tf32& a,
                                                const tile_b8x8_tf32& b, const tile_c16x8& c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    static_assert(needs_sm80<Dummy>::value, "gpuconv mma.cuh: tf32 mma.sync needs sm_80 or newer");
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};"
        : "=f"(d.x[0]), "=f"(d.x[1]), "=f"(d.x[2]), "=f"(d.x[3])
        : "r"(a.reg[0]), "r"(a.reg[1]), "r"(a.reg[2]), "r"(a.reg[3]), "r"(b.reg[0]),
          "r"(b.reg[1]), "f"(c.x[0]), "f"(c.x[1]), "f"(c.x[2]), "f"(c.x[3]));
#endif
}

// ldmatrix .m8n8 .b16 from shared memory: lane 8j + r passes the (16-byte aligned) address of
// row r of matrix j; register j of lane l receives row l / 4, columns 2 (l % 4) and + 1 of
// matrix j (with TRANS: column l / 4, rows 2 (l % 4) and + 1).
template <bool TRANS = false>
static __device__ __forceinline__ void ldmatrix_x1(unsigned (&r)[1], const void* row) {
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];"
                     : "=r"(r[0]) : "r"(smem_u32(row)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];"
                     : "=r"(r[0]) : "r"(smem_u32(row)));
}
template <bool TRANS = false>
static __device__ __forceinline__ void ldmatrix_x2(unsigned (&r)[2], const void* row) {
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(smem_u32(row)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];"
                     : "=r"(r[0]), "=r"(r[1]) : "r"(smem_u32(row)));
}
template <bool TRANS = false>
static __device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* row) {
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(row)));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(row)));
}

// cp.async global -> shared of BYTES (4, 8, 16; .ca caches in L1, .cg only L2 and 16 bytes
// only). Bytes past src_bytes are written as zeros (src_bytes = 0: padding, src not read).
template <int BYTES>
static __device__ __forceinline__ void cp_async_ca(void* dst, const void* src,
                                                   int src_bytes = BYTES) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async: 4, 8 or 16 bytes");
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(smem_u32(dst)),
                 "l"(src), "n"(BYTES), "r"(src_bytes)
                 : "memory");
#else
    unsigned char* d = static_cast<unsigned char*>(dst);
    const unsigned char* s = static_cast<const unsigned char*>(src);
    for (int i = 0; i < BYTES; ++i) d[i] = i < src_bytes ? s[i] : 0;
#endif
}
static __device__ __forceinline__ void cp_async_cg(void* dst, const void* src,
                                                   int src_bytes = 16) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(src_bytes)
                 : "memory");
#else
    cp_async_ca<16>(dst, src, src_bytes);
#endif
}
static __device__ __forceinline__ void cp_async_commit() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// Wait until at most PENDING of this thread's most recent committed groups are in flight.
template <int PENDING>
static __device__ __forceinline__ void cp_async_wait() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
#endif
}

#else  // the CPU emulator (cuda_shim.h)

static inline void mma_f16(tile_c16x8& d, const tile_a16x16& a, const tile_b16x8& b,
                           const tile_c16x8& c) {
    ::gpuconv_emu::mma_sync<::gpuconv_emu::MMA_F16_K16>(d.x, a.reg, b.reg, c.x, __FILE__,
                                                         __LINE__);
}
template <class Dummy = void>
static inline void mma_bf16(tile_c16x8& d, const tile_a16x16& a, const tile_b16x8& b,
                            const tile_c16x8& c) {
    ::gpuconv_emu::mma_sync<::gpuconv_emu::MMA_BF16_K16>(d.x, a.reg, b.reg, c.x, __FILE__,
                                                          __LINE__);
}
template <class Dummy = void>
static inline void mma_tf32(tile_c16x8& d, const tile_a16x8_tf32& a, const tile_b8x8_tf32& b,
                            const tile_c16x8& c) {
    ::gpuconv_emu::mma_sync<::gpuconv_emu::MMA_TF32_K8>(d.x, a.reg, b.reg, c.x, __FILE__,
                                                         __LINE__);
}
template <bool TRANS = false>
static inline void ldmatrix_x1(unsigned (&r)[1], const void* row) {
    ::gpuconv_emu::ldmatrix<1, TRANS>(r, row, __FILE__, __LINE__);
}
template <bool TRANS = false>
static inline void ldmatrix_x2(unsigned (&r)[2], const void* row) {
    ::gpuconv_emu::ldmatrix<2, TRANS>(r, row, __FILE__, __LINE__);
}
template <bool TRANS = false>
static inline void ldmatrix_x4(unsigned (&r)[4], const void* row) {
    ::gpuconv_emu::ldmatrix<4, TRANS>(r, row, __FILE__, __LINE__);
}
template <int BYTES>
static inline void cp_async_ca(void* dst, const void* src, int src_bytes = BYTES) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async: 4, 8 or 16 bytes");
    ::gpuconv_emu::cp_async(dst, src, BYTES, static_cast<unsigned>(src_bytes), __FILE__,
                            __LINE__);
}
static inline void cp_async_cg(void* dst, const void* src, int src_bytes = 16) {
    ::gpuconv_emu::cp_async(dst, src, 16, static_cast<unsigned>(src_bytes), __FILE__, __LINE__);
}
static inline void cp_async_commit() { ::gpuconv_emu::cp_async_commit(); }
template <int PENDING>
static inline void cp_async_wait() {
    ::gpuconv_emu::cp_async_wait(PENDING);
}

#endif

}  // namespace mma
}  // namespace gpuconv

#endif  // GPUCONV_MMA_CUH
