// compile_error.cu -- does not compile: the emulator must report this file and line 7.
#include "emu_test.cuh"

__global__ void broken(float* __restrict__ y) {
    y[threadIdx.x] = 1.0f;
    // the next line is the error (line 7)
    y[threadIdx.x] = undeclared_identifier;
}
