// emu_test.cuh -- included first by the emulator's test kernels. Like kernels/common.cuh, but
// self-contained so that the emulator's tests do not depend on the real kernels' header:
// real CUDA under nvcc/NVRTC, the emulator's shim under g++.
#ifndef GPUCONV_EMU_TEST_CUH
#define GPUCONV_EMU_TEST_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#include <cuda_fp16.h>
#define GPUCONV_DYNAMIC_SHARED(T, name)                                        \
    extern __shared__ __align__(16) unsigned char gpuconv_emu_test_smem_[]; \
    T* name = reinterpret_cast<T*>(gpuconv_emu_test_smem_)
#else
#include "cuda_shim.h"
#endif

namespace emu_test {
template <class T>
struct alignas(2 * sizeof(T)) complex {
    T re;
    T im;
};
}  // namespace emu_test

#endif  // GPUCONV_EMU_TEST_CUH
