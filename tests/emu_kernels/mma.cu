// mma.cu -- kernels for kernels/mma.cuh (tests/test_emulator_mma.py): the tile layouts, each
// primitive on raw per-lane registers, small GEMMs built on the primitives, and strict cp.async
// with its planted missing-wait bugs. The same file compiles with NVRTC for sm_80/sm_90.
#include "emu_test.cuh"
#include "../../kernels/mma.cuh"

using namespace gpuconv::mma;

// out[lane][...]: (get_i, get_j) of every element of a16x16 (8), b16x8 (4), a16x8_tf32 (4),
// b8x8_tf32 (2), c16x8 (4): 22 pairs per lane.
__global__ void tile_layouts(int* __restrict__ out) {
    const int l = threadIdx.x;
    int* o = out + l * 44;
    for (int e = 0; e < 8; ++e, o += 2) o[0] = tile_a16x16::get_i(l, e), o[1] = tile_a16x16::get_j(l, e);
    for (int e = 0; e < 4; ++e, o += 2) o[0] = tile_b16x8::get_i(l, e), o[1] = tile_b16x8::get_j(l, e);
    for (int e = 0; e < 4; ++e, o += 2)
        o[0] = tile_a16x8_tf32::get_i(l, e), o[1] = tile_a16x8_tf32::get_j(l, e);
    for (int e = 0; e < 2; ++e, o += 2)
        o[0] = tile_b8x8_tf32::get_i(l, e), o[1] = tile_b8x8_tf32::get_j(l, e);
    for (int e = 0; e < 4; ++e, o += 2) o[0] = tile_c16x8::get_i(l, e), o[1] = tile_c16x8::get_j(l, e);
}

// One warp: d[lane][0..3] = mma(a[lane][0..3], b[lane][0..1], c[lane][0..3]) on raw registers.
// KIND 0: f16 m16n8k16, 1: bf16 m16n8k16, 2: tf32 m16n8k8.
template <int KIND>
__global__ void mma_raw(const unsigned* __restrict__ a, const unsigned* __restrict__ b,
                        const float* __restrict__ c, float* __restrict__ d) {
    const int l = threadIdx.x;
    tile_c16x8 tc, td;
    for (int i = 0; i < 4; ++i) tc.x[i] = c[4 * l + i];
    if constexpr (KIND == 2) {
        tile_a16x8_tf32 ta;
        tile_b8x8_tf32 tb;
        for (int i = 0; i < 4; ++i) ta.reg[i] = a[4 * l + i];
        for (int i = 0; i < 2; ++i) tb.reg[i] = b[2 * l + i];
        mma_tf32(td, ta, tb, tc);
    } else {
        tile_a16x16 ta;
        tile_b16x8 tb;
        for (int i = 0; i < 4; ++i) ta.reg[i] = a[4 * l + i];
        for (int i = 0; i < 2; ++i) tb.reg[i] = b[2 * l + i];
        if constexpr (KIND == 0)
            mma_f16(td, ta, tb, tc);
        else
            mma_bf16(td, ta, tb, tc);
    }
    for (int i = 0; i < 4; ++i) d[4 * l + i] = td.x[i];
}

// One warp: 32 stored rows of 8 16-bit values (row pitch 16 elements in shared memory); lane l
// passes the address of stored row rows[l]. out[lane][j] = register j.
template <int NMAT, bool TRANS>
__global__ void ldmatrix_raw(const unsigned short* __restrict__ src, const int* __restrict__ rows,
                             unsigned* __restrict__ out) {
    __shared__ __align__(16) unsigned short sm[32 * 16];
    const int l = threadIdx.x;
    for (int c = 0; c < 16; ++c) sm[l * 16 + c] = c < 8 ? src[l * 8 + c] : 0;
    __syncthreads();
    const unsigned short* row = sm + rows[l] * 16;
    unsigned r[4] = {0, 0, 0, 0};
    if (NMAT == 1) {
        unsigned t[1];
        ldmatrix_x1<TRANS>(t, row);
        r[0] = t[0];
    } else if (NMAT == 2) {
        unsigned t[2];
        ldmatrix_x2<TRANS>(t, row);
        r[0] = t[0], r[1] = t[1];
    } else {
        ldmatrix_x4<TRANS>(r, row);
    }
    for (int j = 0; j < 4; ++j) out[4 * l + j] = r[j];
}

// C (M x N, f32) = A (M x K) * B (K x N), both row-major 16-bit (f16, or bf16 when BF16) bits.
// One warp per 16 x 8 tile of C; fragments loaded straight from global memory through the tile
// layouts (zero outside the matrices). Grid (ceil(N / 8), ceil(M / 16)), block 32.
template <bool BF16>
__global__ void gemm_direct16(const unsigned short* __restrict__ A,
                              const unsigned short* __restrict__ B, float* __restrict__ C, int M,
                              int N, int K) {
    const int l = threadIdx.x, m0 = blockIdx.y * 16, n0 = blockIdx.x * 8;
    tile_c16x8 acc;
    for (int e = 0; e < 4; ++e) acc.x[e] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += 16) {
        tile_a16x16 a;
        tile_b16x8 b;
        unsigned short va[8], vb[4];
        for (int e = 0; e < 8; ++e) {
            const int m = m0 + tile_a16x16::get_i(l, e), k = k0 + tile_a16x16::get_j(l, e);
            va[e] = m < M && k < K ? A[m * K + k] : 0;
        }
        for (int e = 0; e < 4; ++e) {
            const int k = k0 + tile_b16x8::get_i(l, e), n = n0 + tile_b16x8::get_j(l, e);
            vb[e] = k < K && n < N ? B[k * N + n] : 0;
        }
        for (int r = 0; r < 4; ++r) a.reg[r] = pack16(va[2 * r], va[2 * r + 1]);
        for (int r = 0; r < 2; ++r) b.reg[r] = pack16(vb[2 * r], vb[2 * r + 1]);
        if constexpr (BF16)
            mma_bf16(acc, a, b, acc);
        else
            mma_f16(acc, a, b, acc);
    }
    for (int e = 0; e < 4; ++e) {
        const int m = m0 + tile_c16x8::get_i(l, e), n = n0 + tile_c16x8::get_j(l, e);
        if (m < M && n < N) C[m * N + n] = acc.x[e];
    }
}

// The same with TF32 (f32 inputs, K step 8). Not a template, so compiled for every target:
// left out below sm_80, where TF32 mma.sync does not exist.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
__global__ void gemm_direct_tf32(const float* __restrict__ A, const float* __restrict__ B,
                                 float* __restrict__ C, int M, int N, int K) {
    const int l = threadIdx.x, m0 = blockIdx.y * 16, n0 = blockIdx.x * 8;
    tile_c16x8 acc;
    for (int e = 0; e < 4; ++e) acc.x[e] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += 8) {
        tile_a16x8_tf32 a;
        tile_b8x8_tf32 b;
        for (int e = 0; e < 4; ++e) {
            const int m = m0 + tile_a16x8_tf32::get_i(l, e), k = k0 + tile_a16x8_tf32::get_j(l, e);
            a.reg[e] = __float_as_uint(m < M && k < K ? A[m * K + k] : 0.0f);
        }
        for (int e = 0; e < 2; ++e) {
            const int k = k0 + tile_b8x8_tf32::get_i(l, e), n = n0 + tile_b8x8_tf32::get_j(l, e);
            b.reg[e] = __float_as_uint(k < K && n < N ? B[k * N + n] : 0.0f);
        }
        mma_tf32(acc, a, b, acc);
    }
    for (int e = 0; e < 4; ++e) {
        const int m = m0 + tile_c16x8::get_i(l, e), n = n0 + tile_c16x8::get_j(l, e);
        if (m < M && n < N) C[m * N + n] = acc.x[e];
    }
}
#endif

// f16 GEMM through shared memory: a block of 4 warps computes a 32 x 16 tile of C; K advances
// by 16 with a two-stage cp.async pipeline (zero fill past the matrices), ldmatrix.x4 for A and
// ldmatrix.x2.trans for B (stored k-major). Needs K % 8 == 0 and N % 8 == 0 (16-byte chunks).
// PENDING is the wait_group count before a stage is used: 1 is right (the next stage may still
// be in flight); 2 is the planted bug (the stage about to be read may not have landed).
// Grid (ceil(N / 16), ceil(M / 32)), block 128.
template <int PENDING>
__global__ void gemm_pipelined(const __half* __restrict__ A, const __half* __restrict__ B,
                               float* __restrict__ C, int M, int N, int K) {
    __shared__ __align__(16) __half sA[2][32][16];
    __shared__ __align__(16) __half sB[2][16][16];
    const int tid = threadIdx.x, l = tid & 31, w = tid >> 5;
    const int m0 = blockIdx.y * 32, n0 = blockIdx.x * 16;
    // 64 16-byte chunks of A (32 rows x 2) and 32 of B (16 rows x 2): one per thread 0..95
    auto load_stage = [&](int s, int k0) {
        if (tid < 64) {
            const int row = tid >> 1, kc = (tid & 1) * 8, m = m0 + row, k = k0 + kc;
            const int valid = m < M && k < K ? 16 : 0;
            cp_async_cg(&sA[s][row][kc], valid ? A + m * K + k : A, valid);
        } else if (tid < 96) {
            const int row = (tid - 64) >> 1, nc = ((tid - 64) & 1) * 8, k = k0 + row, n = n0 + nc;
            const int valid = k < K && n < N ? 16 : 0;
            cp_async_cg(&sB[s][row][nc], valid ? B + k * N + n : B, valid);
        }
    };
    const int wm = w >> 1, wn = w & 1;
    tile_c16x8 acc;
    for (int e = 0; e < 4; ++e) acc.x[e] = 0.0f;
    const int nk = (K + 15) / 16;
    load_stage(0, 0);
    cp_async_commit();
    for (int kt = 0; kt < nk; ++kt) {
        const int s = kt & 1;
        if (kt + 1 < nk) load_stage(s ^ 1, (kt + 1) * 16);
        cp_async_commit();  // (maybe empty) group kt + 1
        cp_async_wait<PENDING>();
        __syncthreads();
        tile_a16x16 a;
        tile_b16x8 b;
        // A: matrix j = l / 8 is rows 8 (j % 2) .. +7, columns 8 (j / 2) .. +7 of the warp's
        // 16 x 16 slice, which is registers a0a1 / a2a3 / a4a5 / a6a7 of the A tile.
        ldmatrix_x4(a.reg, &sA[s][16 * wm + (l & 7) + 8 * ((l >> 3) & 1)][8 * (l >> 4)]);
        // B: matrix j = k rows 8j .. 8j+7 at the warp's 8 columns; .trans gives k pairs.
        ldmatrix_x2<true>(b.reg, &sB[s][(l & 15)][8 * wn]);
        mma_f16(acc, a, b, acc);
        __syncthreads();
    }
    for (int e = 0; e < 4; ++e) {
        const int m = m0 + 16 * wm + tile_c16x8::get_i(l, e);
        const int n = n0 + 8 * wn + tile_c16x8::get_j(l, e);
        if (m < M && n < N) C[m * N + n] = acc.x[e];
    }
}

// Strict cp.async: each thread copies 16 bytes (4 floats) of x into shared memory in three
// groups (floats 0-1 as one 8-byte copy in group 0; float 2 in group 1; float 3 in group 2, a
// zero-fill copy of src_bytes[g] bytes), then after wait_group<WAIT> and a barrier writes the
// shared values to out. WAIT = 0 lands everything; WAIT = 1 leaves group 2 pending, WAIT = 3
// (the planted bug) leaves all of them pending.
template <int WAIT>
__global__ void cp_async_groups(const float* __restrict__ x, const int* __restrict__ src_bytes,
                                float* __restrict__ out) {
    __shared__ __align__(16) float sm[128 * 4];
    const int t = threadIdx.x;
    cp_async_ca<8>(&sm[4 * t], &x[4 * t]);
    cp_async_commit();
    cp_async_ca<4>(&sm[4 * t + 2], &x[4 * t + 2]);
    cp_async_commit();
    cp_async_ca<4>(&sm[4 * t + 3], &x[4 * t + 3], src_bytes[t]);
    cp_async_commit();
    cp_async_wait<WAIT>();
    __syncthreads();
    for (int i = 0; i < 4; ++i) out[4 * t + i] = sm[4 * ((t + 1) % blockDim.x) + i];
}

// Misuse the emulator reports: ldmatrix with row addresses `offset` elements past 16-byte
// alignment (offset 4: misaligned), and one cp.async of 16 bytes claiming src_bytes of source.
__global__ void ldmatrix_offset(int offset, unsigned* __restrict__ out) {
    __shared__ __align__(16) unsigned short sm[32 * 16 + 8];
    const int l = threadIdx.x;
    for (int c = 0; c < 16; ++c) sm[l * 16 + c] = static_cast<unsigned short>(l * 16 + c);
    __syncthreads();
    unsigned r[1];
    ldmatrix_x1(r, sm + l * 16 + offset);
    out[l] = r[0];
}
__global__ void cp_async_src_bytes(const float* __restrict__ x, int src_bytes,
                                   float* __restrict__ out) {
    __shared__ __align__(16) float sm[4];
    if (threadIdx.x == 0) {
        cp_async_cg(sm, x, src_bytes);
        cp_async_commit();
        cp_async_wait<0>();
        for (int i = 0; i < 4; ++i) out[i] = sm[i];
    }
}

// A thread reads what its neighbour copied with cp.async. Its own wait_group covers only its
// own copies: BARRIER = false (the planted bug) omits the __syncthreads() that makes the
// neighbour's landed copy visible; BARRIER = true is the fixed twin.
template <bool BARRIER>
__global__ void cp_async_neighbour(const float* __restrict__ x, float* __restrict__ out) {
    __shared__ __align__(16) float sm[128 * 4];
    const int t = threadIdx.x;
    cp_async_cg(&sm[4 * t], &x[4 * t]);
    cp_async_commit();
    cp_async_wait<0>();
    if (BARRIER) __syncthreads();
    const int u = (t + 1) % blockDim.x;
    for (int i = 0; i < 4; ++i) out[4 * t + i] = sm[4 * u + i];
}
