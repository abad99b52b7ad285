// deform_grad.cu: gradients of deformable convolution v1/v2 (torchvision.ops.deform_conv2d)
// with respect to the input, the offsets and the mask.
//
// The forward (deform.cu; the sampling in bilinear.cuh, shared with these kernels) samples, for
// every (image b, offset group, tap, output position p) the point (y, x) = (oy * stride_h -
// pad_h + i * dil_h + dy, ox * stride_w - pad_w + j * dil_w + dx) bilinearly in each channel c
// of the offset group, reading zero outside the image and contributing nothing at all unless
// -1 < y < height and -1 < x < width (a NaN or infinite point contributes nothing), and scales
// the sample by the mask (v2). With
// y_low = floor(y), ly = y - y_low, hy = 1 - ly (x likewise) the sample is
//
//     value = hy hx v(y_low, x_low) + hy lx v(y_low, x_low + 1) + ly hx v(y_low + 1, x_low)
//           + ly lx v(y_low + 1, x_low + 1)                      (a corner outside reads 0)
//     column[c * K + tap, (b, p)] = mask * value
//
// and the output is a GEMM of the weights with these columns. The host computes the columns'
// gradient grad_cols = weight^T @ grad_output (a GEMM, like the weight gradient
// grad_output @ columns^T) and these kernels apply the chain rule through the sampling:
//
//   * deform_col2im: grad_x[b, c, corner] += mask * grad_cols * (corner's bilinear weight), for
//     the (up to) four corners inside the image whose weight is not zero (torchvision skips
//     them too, so an inf/NaN in grad_cols reaches only the cells a sample really touches) -- a
//     scatter, with atomicAdd;
//   * deform_col2im_coord: grad_offset_y = sum_c mask * grad_cols * d value / d y,
//     grad_offset_x likewise, grad_mask = sum_c grad_cols * value, per (b, offset_group, tap, p) -- a
//     gather over the offset group's channels, no atomics. d value / dy differentiates the
//     bilinear weights with the corners held fixed (the cell that floor picks: the derivative
//     from the right at integer positions), exactly as torchvision's get_coordinate_weight,
//     which has no inside test: at y == -1 or x == -1 exactly the forward reads nothing but the
//     offset gradient is the slope into the image (docs/kernels.md, "Deformable convolution at
//     integer sampling points"). Like torchvision, every sample's sums run over all channels,
//     so an inf/NaN in grad_cols reaches every offset and mask gradient of its offset group.
//
// The host instantiates only float and double: float16 calls are computed in float (the
// gradients accumulate in float32, as gpuconv.grad promises) and rounded once at the end.
#include "common.cuh"
#include "bilinear.cuh"

// deform_col2im: the input gradient, by scatter.
//
// One thread per (image b, offset group, tap, position q of the chunk) -- flat index, q
// innermost, grid-stride in x -- and a slice of `channel_slice` of the offset group's channels
// (blockIdx.y), as deform_im2col. The thread computes the sampling point once, then for each of
// its channels reads grad_cols and atomically adds mask * grad_cols times each corner's bilinear
// weight to grad_x at the corners inside the image.
// Atomics: several samples (taps, neighbouring positions) hit the same cell, so the order of the
// additions -- and the last bits of grad_x -- vary run to run on a GPU (the emulator's race check
// compares such outputs within rounding).
// Speed: bound by atomic throughput to L2 (four atomics per channel, tap and position; mostly
// distinct addresses within a warp) and the coalesced grad_cols reads.
template <class T, class Index, bool HasMask>
__global__ void deform_col2im(const T* __restrict__ offset,     // (nb, offset_groups, K, 2, out_h * out_w): (dy, dx)
                              const T* __restrict__ mask,       // (nb, offset_groups, K, out_h * out_w); unread without HasMask
                              const T* __restrict__ grad_cols,  // (C_in * K, nb * p_count)
                              T* __restrict__ grad_x,           // (nb, C_in, height, width), accumulated into
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
        T y, xf;
        pt.point(offset, positions, out_w, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h,
                 dil_w, y, xf);
        const auto s = gpuconv::bilinear::bilinear_at<T, Index>(y, xf, height, width);
        if (!s.inside) continue;
        const T scale = HasMask ? mask[pt.sample * positions + pt.p] : T(1);
        const T w1 = scale * s.hy * s.hx, w2 = scale * s.hy * s.lx;
        const T w3 = scale * s.ly * s.hx, w4 = scale * s.ly * s.lx;

        const Index c_first = offset_group * c_per_offset_group;
        T* gx = grad_x + (b * channels + c_first + c_lo) * plane + s.o1;
        const T* gc = grad_cols + ((c_first + c_lo) * taps + tap) * n_cols + b * p_count + q;
        for (Index c = c_lo; c < c_hi; ++c) {
            const T grad_col = *gc;
            // A corner with a zero weight (lx == 0 or ly == 0: an integer coordinate) is skipped,
            // as torchvision's |y - yp| < 1 test does.
            if (s.ok1) atomicAdd(gx, w1 * grad_col);
            if (s.ok2 && s.lx != T(0)) atomicAdd(gx + 1, w2 * grad_col);
            if (s.ok3 && s.ly != T(0)) atomicAdd(gx + width, w3 * grad_col);
            if (s.ok4 && s.ly != T(0) && s.lx != T(0)) atomicAdd(gx + width + 1, w4 * grad_col);
            gx += plane;
            gc += taps * n_cols;
        }
    }
}

// deform_col2im_coord: the offset and mask gradients, by gather.
//
// One thread per (image b, offset group, tap, position q of the chunk) -- flat index, q
// innermost, grid-stride in x. The thread computes the sampling point once, then walks the
// offset group's channels: per channel it reads grad_cols and the four corners, and accumulates
// grad_cols * (d value / dy, d value / dx) and grad_cols * value. It writes the two offset
// gradients (times the mask) and, with HasMask, the mask gradient. The derivatives use the
// corners of the floor cell whenever it touches the image (s.cell, -1 <= y < height and
// -1 <= x < width); the value only when the forward samples the point (s.inside). Outside
// s.cell (and for a NaN or infinite point) all four corners read zero, so both are zero times
// grad_cols. Every output has one owner: deterministic.
// Speed: memory-bound: per channel one coalesced grad_cols read and four gathered input reads
// (L1/L2 hits, as in the forward's sampling); the outputs are written once, coalesced along q.
template <class T, class Index, bool HasMask>
__global__ void deform_col2im_coord(const T* __restrict__ x,            // (nb, C_in, height, width)
                                    const T* __restrict__ offset,       // (nb, offset_groups, K, 2, out_h * out_w)
                                    const T* __restrict__ mask,         // (nb, offset_groups, K, out_h * out_w); unread without HasMask
                                    const T* __restrict__ grad_cols,    // (C_in * K, nb * p_count)
                                    T* __restrict__ grad_offset,        // (nb, offset_groups, K, 2, out_h * out_w)
                                    T* __restrict__ grad_mask,          // (nb, offset_groups, K, out_h * out_w); unwritten without HasMask
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
                                    Index p_begin,
                                    Index p_count)
{
    const Index taps = kernel_h * kernel_w;
    const Index positions = out_h * out_w;
    const Index c_per_offset_group = channels / offset_groups;
    const Index plane = height * width;
    const Index n_cols = nb * p_count;
    const Index total = nb * offset_groups * taps * p_count;

    for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
         e += Index(gridDim.x) * blockDim.x) {
        const gpuconv::bilinear::DeformPoint<Index> pt(e, p_count, taps, offset_groups, p_begin);
        const Index q = pt.q, tap = pt.tap, offset_group = pt.offset_group, b = pt.b, p = pt.p, sample = pt.sample;
        T y, xf;
        pt.point(offset, positions, out_w, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h,
                 dil_w, y, xf);
        const auto s = gpuconv::bilinear::bilinear_at<T, Index>(y, xf, height, width);
        const T scale = HasMask ? mask[sample * positions + p] : T(1);

        T sum_dy = T(0), sum_dx = T(0), sum_value = T(0);
        const Index c_first = offset_group * c_per_offset_group;
        // Outside s.cell, s.o1 is 0 and no corner is read: xc stays a valid pointer.
        const T* xc = x + (b * channels + c_first) * plane + s.o1;
        const T* gc = grad_cols + (c_first * taps + tap) * n_cols + b * p_count + q;
        for (Index c = 0; c < c_per_offset_group; ++c) {
            const T grad_col = *gc;
            T v1, v2, v3, v4;
            gpuconv::bilinear::corners(s, xc, width, v1, v2, v3, v4);
            sum_dy += grad_col * (s.hx * (v3 - v1) + s.lx * (v4 - v2));
            sum_dx += grad_col * (s.hy * (v2 - v1) + s.ly * (v4 - v3));
            // the forward's value: zero (not 0 * v, which is NaN for an infinite v) unless inside
            const T value =
                s.inside ? s.hy * (s.hx * v1 + s.lx * v2) + s.ly * (s.hx * v3 + s.lx * v4) : T(0);
            sum_value += grad_col * value;
            xc += plane;
            gc += taps * n_cols;
        }
        grad_offset[(sample * 2) * positions + p] = scale * sum_dy;
        grad_offset[(sample * 2 + 1) * positions + p] = scale * sum_dx;
        if (HasMask) grad_mask[sample * positions + p] = sum_value;
    }
}
