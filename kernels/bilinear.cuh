// bilinear.cuh: the sampling points of deformable convolution and torchvision's bilinear
// interpolation at them, shared by the forward (deform.cu) and its gradients (deform_grad.cu).
//
// A deform kernel thread handles one (image b, offset group, tap, output position p) of a
// chunk of images and positions; DeformPoint decodes its flat index and reads the sampling
// point
//
//     (y, x) = (oy * stride_h - pad_h + i * dil_h + dy, ox * stride_w - pad_w + j * dil_w + dx)
//
// (p = oy * out_w + ox, tap = i * kernel_w + j, (dy, dx) from the offsets), and bilinear_at
// finds the point's four corners and weights: nothing at all is sampled unless -1 < y < height
// and -1 < x < width (the `inside` test; false for NaN, and +-inf is outside); otherwise, with
// y_low = floor(y), ly = y - y_low, hy = 1 - ly (x likewise), the sample is
//
//     hy hx v(y_low, x_low) + hy lx v(y_low, x_low + 1) + ly hx v(y_low + 1, x_low)
//     + ly lx v(y_low + 1, x_low + 1)                  (a corner outside the image reads zero)
//
// exactly as torchvision's bilinear_interpolate. The offset gradient (deform_grad.cu) uses the
// same corners on the wider `cell` range -1 <= y < height, -1 <= x < width: torchvision's
// get_coordinate_weight has no inside test, so at y == -1 (or x == -1) exactly, where the
// forward reads nothing, the derivative is still the slope into the image (the derivative from
// the right, as everywhere at integer points; see docs/kernels.md, "Deformable convolution at
// integer sampling points"). Outside `cell` every corner lies outside the image, so nothing is
// needed there.
//
// Float -> index: floor(y) is converted to Index only when `cell` holds, i.e. for
// -1 <= y < height, where it is in [-1, height - 1]. NaN, +-inf and huge offsets never reach
// the conversion (Index(floor(NaN)) is undefined behaviour; on x86 it is INT_MIN, a read far
// outside the image).
//
// T is the type the arithmetic is done in (the kernel's acc_t<T>).
#ifndef GPUCONV_BILINEAR_CUH
#define GPUCONV_BILINEAR_CUH

#include "common.cuh"

namespace gpuconv {
namespace bilinear {

GPUCONV_HD float floor_of(float v) { return floorf(v); }
GPUCONV_HD double floor_of(double v) { return floor(v); }

// One thread's (b, offset_group, tap, p) of a deform kernel, from its flat index
// e = ((b * offset_groups + offset_group) * taps + tap) * p_count + q, q = p - p_begin innermost.
template <class Index>
struct DeformPoint {
    Index q, tap, offset_group, b, p;
    // (b * offset_groups + offset_group) * taps + tap: the (b, offset_group, tap) row of
    // offset/mask
    Index sample;

    GPUCONV_HD DeformPoint(Index e, Index p_count, Index taps, Index offset_groups, Index p_begin)
        : q(e % p_count),
          tap((e / p_count) % taps),
          offset_group((e / (p_count * taps)) % offset_groups),
          b(e / (p_count * taps * offset_groups)),
          p(p_begin + q),
          sample((b * offset_groups + offset_group) * taps + tap) {}

    // The sampling point (y, x) in T: the tap's position in the input plus the offset
    // (dy, dx) read from `offset` (nb, offset_groups, K, 2, positions).
    template <class T, class Src>
    GPUCONV_HD void point(const Src* offset, Index positions, Index out_w, Index kernel_w,
                          Index stride_h, Index stride_w, Index pad_h, Index pad_w,
                          Index dil_h, Index dil_w, T& y, T& x) const {
        const T dy = load_acc(offset[(sample * 2) * positions + p]);
        const T dx = load_acc(offset[(sample * 2 + 1) * positions + p]);
        y = T((p / out_w) * stride_h - pad_h + (tap / kernel_w) * dil_h) + dy;
        x = T((p % out_w) * stride_w - pad_w + (tap % kernel_w) * dil_w) + dx;
    }
};

// A sampling point's bilinear corners (see the file comment).
template <class T, class Index>
struct Sample {
    bool inside;              // -1 < y < height, -1 < x < width: the forward samples the point
    bool cell;                // -1 <= y < height, -1 <= x < width: corners and weights are set
                              // (only a corner of such a cell can lie inside the image)
    T ly, lx, hy, hx;         // fractional parts and their complements (0 unless cell)
    Index o1;                 // flat offset of the (y_low, x_low) corner in a channel plane
    bool ok1, ok2, ok3, ok4;  // corners (low, low), (low, high), (high, low), (high, high) inside
};

template <class T, class Index>
GPUCONV_HD Sample<T, Index> bilinear_at(T y, T x, Index height, Index width) {
    Sample<T, Index> s;
    // Written as conjunctions of ordered comparisons, so NaN fails both tests.
    s.cell = y >= T(-1) && y < T(height) && x >= T(-1) && x < T(width);
    s.inside = s.cell && y > T(-1) && x > T(-1);
    s.ly = s.lx = s.hy = s.hx = T(0);
    s.o1 = 0;
    s.ok1 = s.ok2 = s.ok3 = s.ok4 = false;
    if (s.cell) {
        const T y_floor = floor_of(y);
        const T x_floor = floor_of(x);
        const Index y_low = Index(y_floor);  // in [-1, height - 1]: the conversion is exact
        const Index x_low = Index(x_floor);  // in [-1, width - 1]
        s.ly = y - y_floor;
        s.lx = x - x_floor;
        s.hy = T(1) - s.ly;
        s.hx = T(1) - s.lx;
        const bool y_low_ok = y_low >= 0, y_high_ok = y_low + 1 <= height - 1;
        const bool x_low_ok = x_low >= 0, x_high_ok = x_low + 1 <= width - 1;
        s.ok1 = y_low_ok && x_low_ok;
        s.ok2 = y_low_ok && x_high_ok;
        s.ok3 = y_high_ok && x_low_ok;
        s.ok4 = y_high_ok && x_high_ok;
        s.o1 = y_low * width + x_low;
    }
    return s;
}

// The four corner values v1..v4 of one channel plane, in T (zero for a corner outside the
// image, which is never read). `corner` points at the plane's (y_low, x_low) cell: plane + s.o1.
template <class T, class Index, class Src>
GPUCONV_HD void corners(const Sample<T, Index>& s, const Src* corner, Index width,
                        T& v1, T& v2, T& v3, T& v4) {
    v1 = s.ok1 ? load_acc(corner[0]) : T(0);
    v2 = s.ok2 ? load_acc(corner[1]) : T(0);
    v3 = s.ok3 ? load_acc(corner[width]) : T(0);
    v4 = s.ok4 ? load_acc(corner[width + 1]) : T(0);
}

}  // namespace bilinear
}  // namespace gpuconv

#endif  // GPUCONV_BILINEAR_CUH
