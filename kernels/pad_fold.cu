// pad_fold.cu: the adjoint of padding (reflect, replicate, circular) -- fold the gradient of a
// padded input back onto the input cells that supplied the padded values.
//
// A convolution with padding_mode reflect/replicate/circular reads padded position p of a dim
// of `size` input cells from input cell source_index<Mode>(p, size) (padding.cuh). The gradient
// with respect to input cell i is therefore the sum of the padded-input gradient over every
// padded position whose source is i. Per dim those positions are, in padded coordinates
// q = p + pad_lo (q in [0, padded)):
//
//   every mode   q = i + pad_lo                                   (the cell itself)
//   reflect      q = pad_lo - i             if 1 <= i <= pad_lo    (mirror at the low edge)
//                q = pad_lo + 2 (size - 1) - i  if i <= size - 2 and q < padded  (high edge)
//   replicate    i == 0: every q <= pad_lo; i == size - 1: every q >= pad_lo + size - 1
//   circular     q = pad_lo + i - size      if q >= 0             (wrapped from the low pad)
//                q = pad_lo + i + size      if q < padded          (wrapped from the high pad)
//
// (the pad limits that gpuconv._shapes.conv_geometry enforces -- reflect pads < size, circular
// pads <= size -- make these all; each padded position has exactly one source). Per dim the
// sources form at most three ranges of consecutive q (replicate: one range), and a 3-D cell's
// sources are their product. Summing them in a fixed order is deterministic, with no atomics.
#include "common.cuh"
#include "padding.cuh"

namespace gpuconv {
namespace pad_fold_detail {

// The padded positions whose source is input cell i, as three ranges [start, start + count):
// slot 0 the cell itself (replicate: with the replicated edge), slot 1 its mirror / wrap from
// the low pad, slot 2 from the high pad (count 0 when there is none). Fixed slots, so that the
// caller's unrolled loops index them with constants and they stay in registers.
template <int Mode, class Index>
__device__ __forceinline__ void sources(Index i, Index size, Index pad_lo, Index padded,
                                        Index (&start)[3], Index (&count)[3]) {
    start[0] = i + pad_lo;
    count[0] = 1;
    start[1] = start[2] = 0;
    count[1] = count[2] = 0;
    if constexpr (Mode == kReplicate) {
        const Index lo = (i == 0) ? Index(0) : i + pad_lo;
        const Index hi = (i == size - 1) ? padded : i + pad_lo + 1;
        start[0] = lo;
        count[0] = hi - lo;
    } else if constexpr (Mode == kReflect) {
        if (i >= 1 && i <= pad_lo) {
            start[1] = pad_lo - i;
            count[1] = 1;
        }
        const Index q = pad_lo + 2 * (size - 1) - i;
        if (i <= size - 2 && q < padded) {
            start[2] = q;
            count[2] = 1;
        }
    } else if constexpr (Mode == kCircular) {
        const Index q_low = pad_lo + i - size;
        if (q_low >= 0) {
            start[1] = q_low;
            count[1] = 1;
        }
        const Index q_high = pad_lo + i + size;
        if (q_high < padded) {
            start[2] = q_high;
            count[2] = 1;
        }
    }
}

}  // namespace pad_fold_detail
}  // namespace gpuconv

// pad_fold: one thread per input cell (flat index over (planes, D, H, W), grid-stride) sums the
// padded-gradient cells it supplied: the interior cell plus the few mirrored / wrapped /
// replicated ones of the same plane (see the file comment), in a fixed order, accumulating in
// acc_t<T>. No shared memory, no atomics.
// Speed: memory-bound. The interior read and the write are coalesced along W; the extra reads
// (only for cells within a pad width of an edge) are few for realistic pads (replicate edge
// cells read pad + 1 cells per dim).
template <class T, class Index, int Mode>
__global__ void pad_fold(const T* __restrict__ padded,  // (planes, PD, PH, PW) = (N * C, padded dims)
                         T* __restrict__ out,           // (planes, D, H, W)
                         Index planes,
                         Index in_d, Index in_h, Index in_w,
                         Index pad_d, Index pad_h, Index pad_w,        // low pads
                         Index padded_d, Index padded_h, Index padded_w)
{
    using Acc = gpuconv::acc_t<T>;
    using gpuconv::pad_fold_detail::sources;
    const Index total = planes * in_d * in_h * in_w;
    const Index padded_volume = padded_d * padded_h * padded_w;
    const Index step = Index(gridDim.x) * blockDim.x;
    for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
        const Index w = e % in_w;
        const Index h = (e / in_w) % in_h;
        const Index d = (e / (in_w * in_h)) % in_d;
        const Index plane = e / (in_w * in_h * in_d);
        Index sd[3], cd[3], sh[3], ch[3], sw[3], cw[3];
        sources<Mode>(d, in_d, pad_d, padded_d, sd, cd);
        sources<Mode>(h, in_h, pad_h, padded_h, sh, ch);
        sources<Mode>(w, in_w, pad_w, padded_w, sw, cw);
        const T* src = padded + plane * padded_volume;
        Acc sum = gpuconv::zero<Acc>();
        // Fixed trip counts (unrolled), so the range arrays stay in registers.
#pragma unroll
        for (int a = 0; a < 3; ++a) {
            for (Index qd = sd[a]; qd < sd[a] + cd[a]; ++qd) {
#pragma unroll
                for (int b = 0; b < 3; ++b) {
                    for (Index qh = sh[b]; qh < sh[b] + ch[b]; ++qh) {
                        const T* row = src + (qd * padded_h + qh) * padded_w;
#pragma unroll
                        for (int c = 0; c < 3; ++c) {
                            for (Index qw = sw[c]; qw < sw[c] + cw[c]; ++qw) {
                                sum += gpuconv::load_acc(row[qw]);
                            }
                        }
                    }
                }
            }
        }
        out[e] = gpuconv::store_acc<T>(sum);
    }
}
