// deform.cu: the sampling half of deformable convolution v1/v2 (torchvision.ops.deform_conv2d).
//
// Algorithm: im2col + GEMM, as torchvision does. deform_im2col writes the bilinearly sampled
// (and, for v2, mask-scaled) input values of a chunk of images into a column matrix
//
//     columns[c * K + tap, b * p_count + q]      (K = kernel_h * kernel_w, q = p - p_begin)
//
// and the host multiplies it by the weights, one GEMM per group, through the executor's
// matmul (cuBLAS on the GPU): weight (G, C_out / G, (C_in / G) * K) @ columns (G, (C_in / G) * K,
// nb * p_count). The host chunks the batch (and, for huge images, the output positions) so the
// column matrix stays within a fixed workspace.
//
// Why not one fused kernel: the contraction over C_in / G * K values per output is a dense
// GEMM with C_out rows; cuBLAS runs it near peak (tensor cores for float16), which a
// hand-written fused kernel would have to match with its own register/shared-memory tiling.
// Sampling is done once per (input channel, tap, position) instead of once per output channel,
// and the price -- writing and re-reading the columns, K times the input size per chunk -- is
// small next to the GEMM for realistic channel counts (C_out >= 32).
#include "common.cuh"
#include "bilinear.cuh"

// deform_im2col: one thread per (image b, offset group, tap, output position p) and a slice
// of the offset group's input channels.
//
// The flat thread index over (b, offset_group, tap, q) -- q = p - p_begin innermost, grid-stride in x --
// fixes the sampling point y = oy * stride_h - pad_h + i * dil_h + dy (x likewise; tap =
// i * kernel_w + j; (dy, dx) from `offset`), computed once in acc_t<T>; blockIdx.y picks the
// slice of `channel_slice` channels of the offset group that the thread samples at that point
// (four corner reads and one column write each). Sampling is torchvision's bilinear_interpolate
// exactly: zero unless -1 < y < height and -1 < x < width (so also for a NaN or infinite point,
// whose corners are never computed); otherwise the bilinear blend of the four neighbours, a
// neighbour outside the image reading zero; the result is multiplied by the mask value when
// HasMask (DCNv2).
//
// Speed: bound by memory. Per (channel, tap, position): four gathered input reads (mostly L1/L2
// hits: neighbouring q sample neighbouring pixels) and one coalesced column write. Offsets and
// the mask are read once per thread, coalesced along q.
template <class T, class Index, bool HasMask>
__global__ void deform_im2col(const T* __restrict__ x,       // (nb, C_in, height, width)
                              const T* __restrict__ offset,  // (nb, offset_groups, K, 2, out_h * out_w): (dy, dx)
                              const T* __restrict__ mask,    // (nb, offset_groups, K, out_h * out_w); unread without HasMask
                              T* __restrict__ columns,       // (C_in * K, nb * p_count)
                              Index nb,
                              Index channels,
                              Index height,
                              Index width,
                              Index out_h,
                              Index out_w,
                              Index kernel_h,
                              Index kernel_w,
                              Index stride_h,
                              Index stride_w,
                              Index pad_h,
                              Index pad_w,
                              Index dil_h,
                              Index dil_w,
                              Index offset_groups,
                              Index channel_slice,  // channels per blockIdx.y slice, >= 1
                              Index p_begin,        // first output position (flat oy * out_w + ox)
                              Index p_count)        // output positions in this chunk
{
    using Acc = gpuconv::acc_t<T>;
    const Index taps = kernel_h * kernel_w;
    const Index positions = out_h * out_w;
    const Index c_per_offset_group = channels / offset_groups;
    const Index plane = height * width;
    const Index n_cols = nb * p_count;
    const Index total = nb * offset_groups * taps * p_count;
    const Index c_lo = Index(blockIdx.y) * channel_slice;
    const Index c_hi = gpuconv::imin(c_per_offset_group, c_lo + channel_slice);

    for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
         e += Index(gridDim.x) * blockDim.x) {
        const gpuconv::bilinear::DeformPoint<Index> pt(e, p_count, taps, offset_groups, p_begin);
        const Index q = pt.q, tap = pt.tap, offset_group = pt.offset_group, b = pt.b;
        Acc y, xf;
        pt.point(offset, positions, out_w, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h,
                 dil_w, y, xf);
        const Acc scale = HasMask ? gpuconv::load_acc(mask[pt.sample * positions + pt.p]) : Acc(1);
        // The corners and their weights. A corner outside the image is never read (it counts as
        // zero, as in torchvision, so an inf/NaN elsewhere in the image cannot leak in).
        const auto s = gpuconv::bilinear::bilinear_at<Acc, Index>(y, xf, height, width);
        const Acc w1 = s.hy * s.hx, w2 = s.hy * s.lx, w3 = s.ly * s.hx, w4 = s.ly * s.lx;

        const Index c_first = offset_group * c_per_offset_group;
        const T* x_img = x + (b * channels + c_first) * plane;
        T* col = columns + ((c_first + c_lo) * taps + tap) * n_cols + b * p_count + q;
        for (Index c = c_lo; c < c_hi; ++c) {
            Acc value = gpuconv::zero<Acc>();
            if (s.inside) {
                Acc v1, v2, v3, v4;
                gpuconv::bilinear::corners(s, x_img + c * plane + s.o1, width, v1, v2, v3, v4);
                value = w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4;
            }
            *col = gpuconv::store_acc<T>(scale * value);
            col += taps * n_cols;
        }
    }
}
