#pragma once
// Host emulation of the few CUDA built-ins the kernel source uses, for tests/cuda_host.rs: the
// kernels compiled as C++ for an architecture below sm_89 (the software fp8 conversions), with
// IEEE single precision on the host standing in for the GPU's correctly rounded operations.
#include <cstdint>
#include <cstring>
#include <cmath>
#define __device__
#define __global__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __maxnreg__(...)
#define MOCK_ASM(...) ((void)0)
struct uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
struct dim3 { unsigned x, y, z; };
extern dim3 blockIdx, blockDim, gridDim, threadIdx;
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
inline unsigned __float2uint_rn(float f) { return (unsigned)std::nearbyint(f); }
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    unsigned long long bytes = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((bytes >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
inline float half_to_float(unsigned short h) {
    unsigned sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    if (exponent == 0x1f) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) {
        float m = (float)mantissa * 5.9604644775390625e-08f;  // 2^-24, exact
        return (sign ? -m : m);
    }
    return __uint_as_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}
