// with_subdir_header.cu -- like with_header.cu, but the header sits in a subdirectory, which
// only the dependency list g++ writes (-MMD) can tell the cache about.
#include "emu_test.cuh"
#include "sub/with_header.cuh"

__global__ void header_value(int* __restrict__ y) {  // blockDim.x
    y[threadIdx.x] = EMU_TEST_VALUE;
}
