// common.cuh: included first by every gpuconv kernel file.
//
// One header, two compilers:
//  * NVRTC (CuPy's RawModule, the offline NVRTC check) and nvcc define __CUDACC_RTC__ /
//    __CUDACC__: real CUDA. cuda_fp16.h comes from the CUDA runtime headers, which CuPy puts on
//    NVRTC's include path itself (CUDA_PATH/include or the nvidia-cuda-runtime wheel; CuPy needs
//    them for its own kernels since CUDA 12.2). The offline check passes the same directory.
//    cuda_bf16.h (__nv_bfloat16) comes from the same place; gpuconv uses only its conversions
//    (and __ldg), which every architecture has, and no bfloat16 arithmetic or atomics.
//  * g++ (the CPU emulator, gpuconv/_emulator): "cuda_shim.h" stands in for CUDA.
//
// What it defines, usable on the device and on the host (the emulator):
//  * GPUCONV_DYNAMIC_SHARED(T, name): `T* name` pointing at the launch's dynamic shared memory.
//  * gpuconv::complex<T>: {re, im} with + - * conj; same layout as numpy complex64/complex128.
//  * gpuconv::acc_t<T>: the accumulator type (float for __half and __nv_bfloat16, else T) and
//    load/store helpers.
//  * small index helpers (ceil_div, imin, imax).
//
// Nothing here may include a C++ standard header: NVRTC has none.
#ifndef GPUCONV_COMMON_CUH
#define GPUCONV_COMMON_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// Dynamic shared memory. One untyped extern array for the whole module (a typed
// `extern __shared__ T name[]` would clash between template instantiations), 16-byte aligned
// so that any T up to complex<double> may live at its start.
#define GPUCONV_DYNAMIC_SHARED(T, name)                                   \
    extern __shared__ __align__(16) unsigned char gpuconv_dynamic_smem_[]; \
    T* name = reinterpret_cast<T*>(gpuconv_dynamic_smem_)
#else
#include "cuda_shim.h"  // the emulator's stand-in for CUDA; defines GPUCONV_DYNAMIC_SHARED too
#endif

#define GPUCONV_HD __host__ __device__ __forceinline__

namespace gpuconv {

// ------------------------------------------------------------------ complex numbers

// A complex number laid out as NumPy's complex64 / complex128: real part, then imaginary part,
// aligned to its size like CUDA's cuComplex (so a complex<double> loads as one 16-byte vector).
template <class T>
struct alignas(2 * sizeof(T)) complex {
    T re;
    T im;

    GPUCONV_HD complex& operator+=(const complex& y) {
        re += y.re;
        im += y.im;
        return *this;
    }
    GPUCONV_HD complex& operator-=(const complex& y) {
        re -= y.re;
        im -= y.im;
        return *this;
    }
    GPUCONV_HD complex& operator*=(const complex& y) {
        const T r = re * y.re - im * y.im;
        im = re * y.im + im * y.re;
        re = r;
        return *this;
    }
};

template <class T>
GPUCONV_HD complex<T> operator+(complex<T> x, const complex<T>& y) { return x += y; }
template <class T>
GPUCONV_HD complex<T> operator-(complex<T> x, const complex<T>& y) { return x -= y; }
template <class T>
GPUCONV_HD complex<T> operator*(complex<T> x, const complex<T>& y) { return x *= y; }
template <class T>
GPUCONV_HD complex<T> operator-(const complex<T>& x) { return complex<T>{-x.re, -x.im}; }
template <class T>
GPUCONV_HD complex<T> operator*(const complex<T>& x, T s) { return complex<T>{x.re * s, x.im * s}; }
template <class T>
GPUCONV_HD complex<T> operator*(T s, const complex<T>& x) { return complex<T>{s * x.re, s * x.im}; }
template <class T>
GPUCONV_HD bool operator==(const complex<T>& x, const complex<T>& y) { return x.re == y.re && x.im == y.im; }

// conj: the identity on real types, so generic kernels can conjugate unconditionally.
template <class T>
GPUCONV_HD T conj(const T& x) { return x; }
template <class T>
GPUCONV_HD complex<T> conj(const complex<T>& x) { return complex<T>{x.re, -x.im}; }

// ------------------------------------------------------------------ accumulators

// accumulator<T>: what sums of T are carried in, and how values enter and leave it.
// __half and __nv_bfloat16 accumulate in float (load widens exactly, store rounds to nearest
// even, once); the others in T. Atomics and partial sums of the 16-bit types are float too, so
// no kernel needs a 16-bit atomicAdd (bfloat16's needs sm_80; gpuconv's bf16 runs on sm_75).
template <class T>
struct accumulator {
    using type = T;
    static GPUCONV_HD type load(const T& x) { return x; }
    static GPUCONV_HD T store(const type& x) { return x; }
};

template <>
struct accumulator<__half> {
    using type = float;
    static GPUCONV_HD type load(const __half& x) { return __half2float(x); }
    static GPUCONV_HD __half store(const type& x) { return __float2half_rn(x); }
};

template <>
struct accumulator<__nv_bfloat16> {
    using type = float;
    static GPUCONV_HD type load(const __nv_bfloat16& x) { return __bfloat162float(x); }
    static GPUCONV_HD __nv_bfloat16 store(const type& x) { return __float2bfloat16_rn(x); }
};

template <class T>
using acc_t = typename accumulator<T>::type;

template <class T>
GPUCONV_HD acc_t<T> load_acc(const T& x) { return accumulator<T>::load(x); }
template <class T>
GPUCONV_HD T store_acc(const acc_t<T>& x) { return accumulator<T>::store(x); }

// The additive identity of T (value-initialisation: 0, 0.0, {0, 0}).
template <class T>
GPUCONV_HD T zero() { return T{}; }

// ------------------------------------------------------------------ index helpers

// Index is the kernel's index type (int or long long, chosen on the host from the extents).
template <class Index>
GPUCONV_HD Index ceil_div(Index a, Index b) { return (a + b - 1) / b; }
template <class Index>
GPUCONV_HD Index imin(Index a, Index b) { return a < b ? a : b; }
template <class Index>
GPUCONV_HD Index imax(Index a, Index b) { return a < b ? b : a; }

}  // namespace gpuconv

#endif  // GPUCONV_COMMON_CUH
