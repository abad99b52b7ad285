// padding.cuh: padding modes resolved by index mapping, for kernels that read a padded input
// without ever building a padded copy (conv.cu, depthwise.cu, conv_grad.cu).
//
// A kernel reads "padded position" p of an input dimension of `size` elements, in input
// coordinates: p = out_index * stride - pad_lo + tap * dilation, so p lies in [-pad_lo,
// size + pad_hi) for every output that is written. source_index<Mode>(p, size) says which input
// element supplies it, as torch.nn.functional.pad does:
//
//   Mode 0 zeros      -1 (read as zero) outside [0, size)
//   Mode 1 reflect    -p below 0, 2 * (size - 1) - p above: no edge repeat (needs pad < size)
//   Mode 2 replicate  the nearest edge element
//   Mode 3 circular   p + size below 0, p - size above (needs pad <= size)
//
// The host (gpuconv._shapes.conv_geometry) guarantees the pad limits, so one reflection or wrap
// is enough. Positions further out are only read for outputs beyond the output extent (a tile's
// ragged edge), which are never stored: for those the result is some index in [0, size) or -1,
// never an out-of-bounds one.
#ifndef GPUCONV_PADDING_CUH
#define GPUCONV_PADDING_CUH

#include "common.cuh"

namespace gpuconv {

// The padding-mode template argument of the conv kernels: padding_mode -> code is
// PADDING_MODE_CODES in gpuconv/backends/device/_common.py (names: gpuconv._shapes.PADDING_MODES).
enum PaddingMode : int { kZeros = 0, kReflect = 1, kReplicate = 2, kCircular = 3 };

template <int Mode, class Index>
GPUCONV_HD Index source_index(Index p, Index size) {
    if constexpr (Mode == kReflect) {
        if (p < 0) p = -p;
        if (p >= size) p = 2 * (size - 1) - p;
    } else if constexpr (Mode == kReplicate) {
        p = p < 0 ? Index(0) : (p >= size ? size - 1 : p);
    } else if constexpr (Mode == kCircular) {
        if (p < 0) {
            p += size;
        } else if (p >= size) {
            p -= size;
        }
    }
    return (p >= 0 && p < size) ? p : Index(-1);
}

// The flat offset (id * in_h + ih) * in_w + iw in an (in_d, in_h, in_w) volume of the element
// that supplies padded position (pd, ph, pw), each coordinate resolved by source_index<Mode>;
// -1 if the position reads as zero.
template <int Mode, class Index>
GPUCONV_HD Index source_offset(Index pd, Index ph, Index pw, Index in_d, Index in_h, Index in_w) {
    const Index id = source_index<Mode>(pd, in_d);
    const Index ih = source_index<Mode>(ph, in_h);
    const Index iw = source_index<Mode>(pw, in_w);
    return (id >= 0 && ih >= 0 && iw >= 0) ? (id * in_h + ih) * in_w + iw : Index(-1);
}

}  // namespace gpuconv

#endif  // GPUCONV_PADDING_CUH
