// conv_transpose.cu: transposed convolution (the adjoint of conv), 1-D/2-D/3-D, in GATHER form.
//
// The full transposed output of one spatial dim has (in - 1) * stride + dilation * (k - 1) + 1
// positions; input i, tap k lands on position i * stride + k * dilation. Output index o of the
// cropped result sits at full position t = o + crop (crop = geometry pad_lo), so
//
//     out[n, co, o] = bias[co]
//                   + sum_{ci in group(co)} sum_{k, i : i * stride + k * dilation = t}
//                         x[n, ci, i] * weight[ci, co - group_start, k]
//
// (per dim; the 3-D sum is the product of the three per-dim tap sets). The valid taps of a dim
// are those with k * dilation = t (mod stride) and 0 <= i = (t - k * dilation) / stride < in:
// an arithmetic progression k = k0 + j * k_step, i = i0 - j * i_step with
// k_step = stride / gcd(stride, dilation) and i_step = dilation / gcd(stride, dilation), which
// `dim_taps` finds with at most min(k, k_step) modulo tests per dim and output. Only those taps
// are visited: no divisibility test per tap, no wasted multiply-adds, and no atomics (each
// output is owned by one thread), so results are deterministic.
//
// 1-D and 2-D calls use the same kernel with leading dims of size 1 (kernel 1, stride 1).
#include "common.cuh"

namespace gpuconv {
namespace conv_transpose_detail {

// The taps of one dim that reach full position t (see the file comment): k = k0 + j * k_step,
// i = i0 - j * i_step for 0 <= j < count (count = 0 when none does).
template <class Index>
__device__ __forceinline__ void dim_taps(Index t, Index in, Index kernel, Index stride,
                                         Index dilation, Index k_step, Index i_step,
                                         Index& k0, Index& i0, Index& count) {
    k0 = 0;
    i0 = 0;
    count = 0;
    // The smallest tap in t's residue class: the classes repeat with period k_step.
    const Index k_end = imin(kernel, k_step);
    Index k = 0;
    while (k < k_end && (t - k * dilation) % stride != 0) ++k;
    if (k >= k_end) return;
    Index i = (t - k * dilation) / stride;  // exact; decreases by i_step per step of k
    if (i >= in) {                           // skip the taps whose input lies past the end
        const Index skip = ceil_div(i - (in - 1), i_step);
        k += skip * k_step;
        i -= skip * i_step;
        if (k >= kernel) return;
    }
    if (i < 0) return;
    count = imin((kernel - 1 - k) / k_step, i / i_step) + 1;
    k0 = k;
    i0 = i;
}

}  // namespace conv_transpose_detail
}  // namespace gpuconv

// conv_transpose3d: one thread per output position and CoutPerThread output channels.
//
// Block (blockIdx.x, blockIdx.y): blockIdx.y walks the (image n, group g, block of
// CoutPerThread output channels co_l0 .. co_l0 + R - 1 of that group) triples, blockIdx.x the
// tiles of blockDim.x consecutive output positions (flattened out_d * out_h * out_w, innermost
// fastest: coalesced writes, and neighbouring threads read neighbouring inputs); both are
// grid-stride loops, so any extent fits the grid limits. Every thread of a block therefore
// shares n, g and the output channels, hence the weights.
//
// StageWeights: per pass the block copies the weights of `chunk` input channels (all taps, its
// R output channels, zero past the group's last channel) into dynamic shared memory laid out
// (chunk, taps, R), then each thread walks its valid taps and, per tap, the chunk's channels:
// one input load feeds R multiply-adds with broadcast shared-memory weights.
// Dynamic shared memory: chunk * taps * R * sizeof(T). Without StageWeights (a single input
// channel's weights do not fit), weights are read through __ldg (warp-uniform addresses, so
// broadcast from L1) and `chunk` is ignored.
//
// Speed: per output, (C_in / groups) * prod_d(k_d / stride_d) multiply-adds (on average); each
// input load is reused R times from a register and comes from L1/L2 (neighbouring threads and
// the other output-channel blocks of the same image read the same inputs). Realistic layers
// (C_in / groups >= 16) are bound by the FMA rate and shared-memory load throughput; few
// channels or huge strides make it bound by memory (input loads and the output write).
// Threads whose outputs have different residues mod stride visit different tap sets (warp
// divergence of up to prod_d(stride_d) ways, inherent to the gather form).
template <class T, class Index, int CoutPerThread, bool StageWeights>
__global__ void conv_transpose3d(const T* __restrict__ x,       // (N, C_in, in_d, in_h, in_w)
                                 const T* __restrict__ weight,  // (C_in, C_out / groups, k_d, k_h, k_w)
                                 const T* __restrict__ bias,    // (C_out,) (zeros when none)
                                 T* __restrict__ out,           // (N, C_out, out_d, out_h, out_w)
                                 Index batch,
                                 Index c_in,
                                 Index c_out,
                                 Index groups,
                                 Index in_d, Index in_h, Index in_w,
                                 Index out_d, Index out_h, Index out_w,
                                 Index k_d, Index k_h, Index k_w,
                                 Index stride_d, Index stride_h, Index stride_w,
                                 Index dil_d, Index dil_h, Index dil_w,
                                 Index crop_d, Index crop_h, Index crop_w,  // geometry pad_lo
                                 Index kstep_d, Index kstep_h, Index kstep_w,  // stride / gcd(stride, dilation)
                                 Index chunk)  // input channels staged per pass (StageWeights)
{
    using gpuconv::conv_transpose_detail::dim_taps;
    constexpr int R = CoutPerThread;
    using Acc = gpuconv::acc_t<T>;
    GPUCONV_DYNAMIC_SHARED(T, w_s);  // (chunk, taps, R) when StageWeights

    const Index cg = c_in / groups;   // input channels per group
    const Index og = c_out / groups;  // output channels per group
    const Index co_blocks = gpuconv::ceil_div(og, Index(R));
    const Index taps = k_d * k_h * k_w;
    const Index in_plane = in_d * in_h * in_w;
    const Index out_plane = out_d * out_h * out_w;
    const Index tiles = gpuconv::ceil_div(out_plane, Index(blockDim.x));
    // i_step = dilation / gcd(stride, dilation) = k_step * dilation / stride.
    const Index istep_d = kstep_d * dil_d / stride_d;
    const Index istep_h = kstep_h * dil_h / stride_h;
    const Index istep_w = kstep_w * dil_w / stride_w;

    for (Index yb = blockIdx.y; yb < batch * groups * co_blocks; yb += gridDim.y) {
        const Index n = yb / (groups * co_blocks);
        const Index g = (yb / co_blocks) % groups;
        const Index co_l0 = (yb % co_blocks) * R;  // first output channel, within the group
        const int r_count = int(gpuconv::imin(Index(R), og - co_l0));
        const T* x_group = x + (n * c_in + g * cg) * in_plane;

        for (Index tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
            const Index pos = tile * Index(blockDim.x) + Index(threadIdx.x);
            const bool active = pos < out_plane;
            Index kd0 = 0, id0 = 0, nd = 0, kh0 = 0, ih0 = 0, nh = 0, kw0 = 0, iw0 = 0, nw = 0;
            if (active) {
                const Index ow = pos % out_w;
                const Index oh = (pos / out_w) % out_h;
                const Index od = pos / (out_w * out_h);
                dim_taps(od + crop_d, in_d, k_d, stride_d, dil_d, kstep_d, istep_d, kd0, id0, nd);
                dim_taps(oh + crop_h, in_h, k_h, stride_h, dil_h, kstep_h, istep_h, kh0, ih0, nh);
                dim_taps(ow + crop_w, in_w, k_w, stride_w, dil_w, kstep_w, istep_w, kw0, iw0, nw);
                if (nh == 0 || nw == 0) nd = 0;
            }

            Acc acc[R];
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r] = gpuconv::zero<Acc>();

            const Index passes = StageWeights ? gpuconv::ceil_div(cg, chunk) : Index(1);
            for (Index pass = 0; pass < passes; ++pass) {
                const Index c0 = StageWeights ? pass * chunk : Index(0);
                const Index cc = StageWeights ? gpuconv::imin(chunk, cg - c0) : cg;
                if (StageWeights) {
                    __syncthreads();  // the previous pass (or tile) is done reading w_s
                    const Index count = cc * taps * R;
                    for (Index e = threadIdx.x; e < count; e += blockDim.x) {
                        const int r = int(e % R);
                        const Index tap = (e / R) % taps;
                        const Index c = e / (Index(R) * taps);
                        w_s[e] = (r < r_count)
                                     ? weight[((g * cg + c0 + c) * og + co_l0 + r) * taps + tap]
                                     : gpuconv::zero<T>();
                    }
                    __syncthreads();
                }
                const T* x_pass = x_group + c0 * in_plane;
                for (Index jd = 0; jd < nd; ++jd) {
                    const Index id = id0 - jd * istep_d;
                    const Index kd = kd0 + jd * kstep_d;
                    for (Index jh = 0; jh < nh; ++jh) {
                        const Index ih = ih0 - jh * istep_h;
                        const Index kh = kh0 + jh * kstep_h;
                        for (Index jw = 0; jw < nw; ++jw) {
                            const Index iw = iw0 - jw * istep_w;
                            const Index kw = kw0 + jw * kstep_w;
                            const Index tap = (kd * k_h + kh) * k_w + kw;
                            const T* xc = x_pass + (id * in_h + ih) * in_w + iw;
                            if (StageWeights) {
                                const T* wc = w_s + tap * R;  // (c, tap, 0 .. R-1)
                                for (Index c = 0; c < cc; ++c) {
                                    const Acc xv = gpuconv::load_acc(__ldg(xc));
#pragma unroll
                                    for (int r = 0; r < R; ++r) {
                                        acc[r] += xv * gpuconv::load_acc(wc[r]);
                                    }
                                    xc += in_plane;
                                    wc += taps * R;
                                }
                            } else {
                                // weight[g * cg + c, co_l0 + r, tap]
                                const T* wc = weight + ((g * cg) * og + co_l0) * taps + tap;
                                for (Index c = 0; c < cc; ++c) {
                                    const Acc xv = gpuconv::load_acc(__ldg(xc));
#pragma unroll
                                    for (int r = 0; r < R; ++r) {
                                        if (r < r_count) {
                                            acc[r] += xv * gpuconv::load_acc(__ldg(wc + r * taps));
                                        }
                                    }
                                    xc += in_plane;
                                    wc += og * taps;
                                }
                            }
                        }
                    }
                }
            }

            if (active) {
                const Index co0 = g * og + co_l0;
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    if (r < r_count) {
                        const Acc b = gpuconv::load_acc(bias[co0 + r]);
                        out[((n * c_out + co0 + r) * out_plane) + pos] = gpuconv::store_acc<T>(acc[r] + b);
                    }
                }
            }
        }
    }
}
