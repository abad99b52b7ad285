// with_header.cu -- y[i] = EMU_TEST_VALUE, a constant defined in with_header.cuh. The cache test
// copies both files, builds, edits the header and rebuilds: the new value must show.
#include "emu_test.cuh"
#include "with_header.cuh"

__global__ void header_value(int* __restrict__ y) {  // blockDim.x
    y[threadIdx.x] = EMU_TEST_VALUE;
}
