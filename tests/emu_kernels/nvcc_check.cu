// nvcc_check.cu -- the emulator's test kernels, every instantiation the tests use, for nvcc:
// test_test_kernels_are_valid_cuda compiles this to PTX so that the emulator is only ever tested
// on code that real CUDA accepts too.
#include "features.cu"
#include "planted_bugs.cu"
#include "with_header.cu"

template __global__ void block_sum_static<float, 256>(const float*, float*, long long);
template __global__ void block_sum_static<double, 128>(const double*, double*, long long);
template __global__ void block_sum_dynamic<float>(const float*, float*, long long);
template __global__ void block_sum_dynamic<double>(const double*, double*, long long);
template __global__ void atomic_bins<float>(const float*, float*, long long, int);
template __global__ void atomic_bins<double>(const double*, double*, long long, int);
template __global__ void atomic_bins<int>(const int*, int*, long long, int);
template __global__ void atomic_bins<unsigned long long>(const unsigned long long*,
                                                         unsigned long long*, long long, int);
template __global__ void neighbour_sum<false>(const float*, float*, long long);
template __global__ void neighbour_sum<true>(const float*, float*, long long);
template __global__ void atomic_total<float>(const float*, float*, long long);
template __global__ void atomic_total<double>(const double*, double*, long long);
