// reshape_and_cache_flash for CUDA: writes new keys and values into a paged KV cache.
//
// Compiled at run time by NVRTC for the device's own architecture (src/backend/cuda.rs). It
// includes no header on purpose: the kernels only move bits, convert half/bfloat16 to float and
// float to e4m3 (all done below with PTX), so a machine with the driver and libnvrtc but without
// the CUDA headers can still compile it.
//
// Semantics (src/reference.rs is the definition): for token t with slot s = slot_mapping[t],
// nothing is written when s is -1 or outside [0, num_slots); otherwise, with block = s /
// block_size and offset = s % block_size, every element d of every head h goes to
// cache[block * block_stride + offset * slot_stride + h * head_stride + d]. The three strides
// select the layout (NHD or HND), so one kernel serves both; the input's token and head strides
// let keys and values be slices of a fused QKV tensor. fp8 caches hold e4m3 or e5m2 codes of
// the input divided by one scale per tensor, or (the _per_head instances) one per head.
//
// Work decomposition. An "item" is the unit one thread moves at a time: 16 bytes of input for
// the auto cache dtype (8 half/bfloat16 or 4 float elements), 16 input elements (one 16-byte fp8
// store) for fp8, or a single element in the scalar fallback. Each head row has
// `items_per_head` items, each token `items_per_token` = 2 * num_heads * items_per_head (keys
// first, then values). Tokens are taken `tokens_per_block` at a time (several when a token has
// fewer items than a block has threads, so small heads keep every lane busy), and the items of
// such a token group are cut into `segments` of blockDim.x * items_per_thread items, one block
// each. The grid is one-dimensional and segment-major: consecutive blocks take consecutive
// segments of the same tokens, so that the whole grid reads the inputs front to back and writes
// each token's rows in one go. Consecutive threads take consecutive items: their loads are
// contiguous, and so are their stores, in NHD (a whole token row) and in HND (a whole head
// row, head_size elements), with every lane busy in both. Each thread first issues the loads
// of all its items (up to MAX_ITEMS), then the stores, so that several 16-byte loads per
// thread are in flight.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

// Cache behaviour of the 16-byte loads and stores (the backend can override these with -D for
// tuning). Loads: 0 plain, 1 non-coherent (read-only path), 2 non-coherent without L1
// allocation, 3 streaming (evict first). Stores: 0 plain, 1 streaming. Plain loads and stores
// were the fastest on an H100 (by about 1% over the others, for large calls).
#ifndef RCF_LOAD
#define RCF_LOAD 0
#endif
#ifndef RCF_STORE
#define RCF_STORE 0
#endif
// Whether the exact division (the rare path of the fp8 conversion) is a called function (1)
// or inlined at each use (0). Inlined was faster on an H100, although the kernels get larger.
// Which kernels run the first pass of each block on its own, before the grid loop: 0 none, 1
// the auto ones, 2 all, 3 the auto ones and the fp8 ones of one item per thread (except half
// input: Half::PEEL_FP8). The 64-bit loop bookkeeping then comes after the loads: small calls
// are faster (auto: about 0.06 us of 1.5 on an H100; fp8 of one item per thread 0.03 to 0.18
// us from 2 to 128 tokens, 1.390 -> 1.293 us at 2). The fp8 kernels of several items per
// thread stay unpeeled: it cost them registers (occupancy) that large calls need.
#ifndef RCF_PEEL
#define RCF_PEEL 3
#endif
// Measurement only, never correct (tuning runs price what exactness and the launch cost):
// RCF_FP8_INEXACT=1 converts RN(|x| * RN(1 / scale)) without Markstein's correction;
// RCF_EMPTY=1 returns right after the programmatic-launch handshake, touching no memory.
#ifndef RCF_FP8_INEXACT
#define RCF_FP8_INEXACT 0
#endif
#ifndef RCF_EMPTY
#define RCF_EMPTY 0
#endif
// Who waits for the previous grid (programmatic dependent launch), for tuning runs: -1 (the
// default) each kernel as it is declared (WAIT_* below); 0 every thread, in every kernel; 1 the
// first warp, in every kernel; 2 the same, the first warp letting the next grid launch before
// it waits rather than after.
#ifndef RCF_WAIT
#define RCF_WAIT -1
#endif
// Whether the first pass locates its items (arithmetic only) before that wait (1) or after (0).
#ifndef RCF_LOCATE_FIRST
#define RCF_LOCATE_FIRST 1
#endif
// A register cap for the fp8 kernels with one item per thread (0: none): more resident warps.
// Per input dtype below.
#ifndef RCF_FP8_X1_MAXNREG
#define RCF_FP8_X1_MAXNREG 0
#endif
#ifndef RCF_DIVIDE_NOINLINE
#define RCF_DIVIDE_NOINLINE 0
#endif
// Whether the kernels wait for the previous grid with griddepcontrol (1), so that the host may
// launch them with programmatic dependent launch; 0 drops the instructions (for comparison).
#ifndef RCF_PDL
#define RCF_PDL 1
#endif
#if RCF_DIVIDE_NOINLINE
#define RCF_DIVIDE_INLINING __noinline__
#else
#define RCF_DIVIDE_INLINING __forceinline__
#endif

// ---------------------------------------------------------------------------------------------
// Division by a run-time constant without the slow integer divide: q = (umulhi(n, m) + n) >> s
// with m and s computed on the host (Granlund and Montgomery's round-up method). Exact for every
// 32-bit n; the sum is taken in 64 bits so that it cannot overflow.
struct FastDiv {
    u32 divisor;
    u32 multiplier;
    u32 shift;
    u32 unused;
};

__device__ __forceinline__ u32 fast_div(u32 n, const FastDiv& d) {
    return (u32)(((u64)__umulhi(n, d.multiplier) + n) >> d.shift);
}

// Everything about one call except the pointers. Mirrored by `Params` in src/backend/cuda.rs:
// the field order and types must stay the same.
struct Params {
    i64 num_tokens;
    i64 num_slots;
    // Input strides in elements: keys and values may be slices of a larger (fused) tensor.
    i64 key_token_stride;
    i64 key_head_stride;
    i64 value_token_stride;
    i64 value_head_stride;
    // Cache strides in elements (the layout).
    i64 cache_block_stride;
    i64 cache_slot_stride;
    i64 cache_head_stride;
    i64 token_groups;  // ceil(num_tokens / tokens_per_block)
    FastDiv items_per_token;
    FastDiv items_per_head;
    FastDiv block_size;
    FastDiv segments;  // blocks per token group
    u32 items_per_kv;  // num_heads * items_per_head
    u32 tokens_per_block;
    u32 items_per_thread;
    u32 unused;
};

// ---------------------------------------------------------------------------------------------
// Memory access.

__device__ __forceinline__ uint4 load16(const void* p) {
    uint4 v;
#if RCF_LOAD == 1
    asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
#elif RCF_LOAD == 2
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
#elif RCF_LOAD == 3
    asm("ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
#else
    v = *(const uint4*)p;
#endif
    return v;
}

__device__ __forceinline__ void store16(void* p, const uint4& v) {
#if RCF_STORE == 1
    asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};"
                 :: "l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w));
#else
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};"
                 :: "l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w));
#endif
}

// ---------------------------------------------------------------------------------------------
// Input element types: their size and exact conversion to float.

// PEEL_FP8: whether the fp8 kernels of one item per thread peel their first pass (RCF_PEEL 3).
// Not for half: under its 48-register cap (below) the peeled kernel spilled (24 bytes of stack)
// and ran 8192 tokens 5% slower on an H100. Half's small-call instances (HalfSmall, _x1_small)
// are peeled under a cap of their own.
struct Half {
    enum { SIZE = 2, PEEL_FP8 = 0 };
    typedef u16 Bits;
    static __device__ __forceinline__ float to_float(u32 bits) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((u16)bits));
        return f;
    }
};

// Half input for the small-call instances (_x1_small): the fp8 kernels peel their first pass,
// under RCF_FP8_X1_SMALL_MAXNREG_HALF.
struct HalfSmall : Half {
    enum { SIZE = Half::SIZE, PEEL_FP8 = 1 };
};

struct BFloat16 {
    enum { SIZE = 2, PEEL_FP8 = 1 };
    typedef u16 Bits;
    // bfloat16 is the top half of a float: widening is a shift, exact for every value.
    static __device__ __forceinline__ float to_float(u32 bits) { return __uint_as_float(bits << 16); }
};

struct Float {
    enum { SIZE = 4, PEEL_FP8 = 1 };
    typedef u32 Bits;
    static __device__ __forceinline__ float to_float(u32 bits) { return __uint_as_float(bits); }
};

// ---------------------------------------------------------------------------------------------
// float -> e4m3: round to nearest even, finite and infinite values saturate to +-448, NaN gives
// 0x7f. The sign of NaN is fixed up by the callers (see fix_nan_signs).

#if __CUDA_ARCH__ < 890
// Architectures without the hardware conversion: the same rules as src/fp8.rs, in integers.
__device__ __forceinline__ u32 e4m3_soft(float x) {
    const u32 bits = __float_as_uint(x);
    const u32 sign = (bits >> 24) & 0x80u;
    const u32 magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return sign | 0x7fu;
    if (magnitude >= 0x43e00000u) return sign | 0x7eu;  // 448 and above, infinity too
    if (magnitude < 0x3c800000u) {
        // Subnormal result: a multiple of 2^-9. Scaling by 2^9 is exact, so rounding the scaled
        // value to an integer (ties to even) is the e4m3 rounding.
        return sign | (u32)__float2uint_rn(__uint_as_float(magnitude) * 512.0f);
    }
    const u32 mantissa = magnitude & 0x7fffffu;
    u32 encoded = (((magnitude >> 23) - 120u) << 3) | (mantissa >> 20);
    const u32 dropped = mantissa & 0xfffffu;
    if (dropped > 0x80000u || (dropped == 0x80000u && (encoded & 1u))) encoded += 1u;
    return sign | encoded;
}
#endif

// Four floats to four e4m3 bytes, element 0 in the lowest byte.
__device__ __forceinline__ u32 e4m3x4(float a, float b, float c, float d) {
#if __CUDA_ARCH__ >= 890
    u32 out;
    // cvt ... e4m3x2 puts its first source in the upper byte of the 16-bit result.
    asm("{\n\t.reg .b16 lo, hi;\n\t"
        "cvt.rn.satfinite.e4m3x2.f32 lo, %2, %1;\n\t"
        "cvt.rn.satfinite.e4m3x2.f32 hi, %4, %3;\n\t"
        "mov.b32 %0, {lo, hi};\n\t}"
        : "=r"(out) : "f"(a), "f"(b), "f"(c), "f"(d));
    return out;
#else
    return e4m3_soft(a) | (e4m3_soft(b) << 8) | (e4m3_soft(c) << 16) | (e4m3_soft(d) << 24);
#endif
}

__device__ __forceinline__ u32 e4m3x1(float a) {
#if __CUDA_ARCH__ >= 890
    u16 pair;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %2, %1;" : "=h"(pair) : "f"(a), "f"(0.0f));
    return pair & 0xffu;
#else
    return e4m3_soft(a);
#endif
}

// NaN must come out as 0x7f with the input's sign bit (0xff for a negative NaN). The hardware
// conversion gives 0x7f whatever the sign, and the IEEE division may already have replaced the
// NaN by the canonical (positive) one, so the sign is taken from the input's own bits. `packed`
// holds four e4m3 bytes, `signs` the four inputs' sign bits at bit 7 of the matching bytes.
// A byte is NaN exactly when its low seven bits are all ones (no finite or saturated result
// is): adding 1 to each 7-bit field then carries into bit 7, and never into the next byte.
__device__ __forceinline__ u32 fix_nan_signs(u32 packed, u32 signs) {
    const u32 nan = ((packed & 0x7f7f7f7fu) + 0x01010101u) & 0x80808080u;
    return (packed & ~nan) | (signs & nan);
}

// ---------------------------------------------------------------------------------------------
// float -> e5m2: round to nearest even, finite and infinite values saturate to +-57344 (0x7b),
// NaN gives 0x7f (src/fp8.rs::e5m2_from_f32). The hardware conversion's NaN code is not ours
// (CUDA's own software conversion keeps part of the payload: 0x7e or 0x7f), so every NaN byte
// is rewritten (e5m2_nan_to_7f); its sign is fixed up by the callers as for e4m3.

#if __CUDA_ARCH__ < 890
__device__ __forceinline__ u32 e5m2_soft(float x) {
    const u32 bits = __float_as_uint(x);
    const u32 sign = (bits >> 24) & 0x80u;
    const u32 magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return sign | 0x7fu;
    if (magnitude >= 0x47600000u) return sign | 0x7bu;  // 57344 and above, infinity too
    if (magnitude < 0x38800000u) {
        // Subnormal result: a multiple of 2^-16. Scaling by 2^16 is exact, so rounding the
        // scaled value to an integer (ties to even) is the e5m2 rounding.
        return sign | (u32)__float2uint_rn(__uint_as_float(magnitude) * 65536.0f);
    }
    const u32 mantissa = magnitude & 0x7fffffu;
    u32 encoded = (((magnitude >> 23) - 112u) << 2) | (mantissa >> 21);
    const u32 dropped = mantissa & 0x1fffffu;
    if (dropped > 0x100000u || (dropped == 0x100000u && (encoded & 1u))) encoded += 1u;
    return sign | encoded;
}
#endif

// Four floats to four e5m2 bytes, element 0 in the lowest byte (NaN bytes as the hardware
// gives them: see e5m2_nan_to_7f).
__device__ __forceinline__ u32 e5m2x4(float a, float b, float c, float d) {
#if __CUDA_ARCH__ >= 890
    u32 out;
    // As e4m3x2: the first source goes to the upper byte.
    asm("{\n\t.reg .b16 lo, hi;\n\t"
        "cvt.rn.satfinite.e5m2x2.f32 lo, %2, %1;\n\t"
        "cvt.rn.satfinite.e5m2x2.f32 hi, %4, %3;\n\t"
        "mov.b32 %0, {lo, hi};\n\t}"
        : "=r"(out) : "f"(a), "f"(b), "f"(c), "f"(d));
    return out;
#else
    return e5m2_soft(a) | (e5m2_soft(b) << 8) | (e5m2_soft(c) << 16) | (e5m2_soft(d) << 24);
#endif
}

__device__ __forceinline__ u32 e5m2x1(float a) {
#if __CUDA_ARCH__ >= 890
    u16 pair;
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %2, %1;" : "=h"(pair) : "f"(a), "f"(0.0f));
    return pair & 0xffu;
#else
    return e5m2_soft(a);
#endif
}

// The NaN bytes of four e5m2 bytes set to 0x7f, sign bits cleared. With .satfinite (and in
// e5m2_soft) a byte is NaN exactly when its low seven bits are 0x7c or more: finite and
// saturated codes are at most 0x7b, and no infinity (0x7c) comes out. Adding 4 to each 7-bit
// field then carries into bit 7 and never beyond it. `whole` is 0xff in each NaN byte.
__device__ __forceinline__ u32 e5m2_nan_to_7f(u32 packed) {
    const u32 nan = ((packed & 0x7f7f7f7fu) + 0x04040404u) & 0x80808080u;
    const u32 whole = nan | (nan - (nan >> 7));
    return (packed & ~whole) | (0x7f7f7f7fu & whole);
}

// The two fp8 formats as types, so that one kernel body serves both: four and one floats to
// codes, the NaN sign fix-up, the canonical NaN of the fast path's magnitudes, and the range of
// scales for which the fast conversion below is exact.
struct E4M3 {
    static __device__ __forceinline__ u32 x4(float a, float b, float c, float d) {
        return e4m3x4(a, b, c, d);
    }
    static __device__ __forceinline__ u32 x1(float a) { return e4m3x1(a); }
    static __device__ __forceinline__ u32 fix_nan(u32 packed, u32 signs) {
        return fix_nan_signs(packed, signs);
    }
    // The hardware's (and e4m3_soft's) NaN is already 0x7f.
    static __device__ __forceinline__ u32 magnitudes(u32 packed) { return packed; }
    static __device__ __forceinline__ bool fast(float scale) {
        return scale >= 0x1p-89f && scale <= 0x1p100f;
    }
};

struct E5M2 {
    static __device__ __forceinline__ u32 x4(float a, float b, float c, float d) {
        return e5m2_nan_to_7f(e5m2x4(a, b, c, d));
    }
    static __device__ __forceinline__ u32 x1(float a) { return e5m2_nan_to_7f(e5m2x1(a)); }
    // After x4 / x1 NaN bytes are 0x7f or 0xff: the e4m3 fix-up applies.
    static __device__ __forceinline__ u32 fix_nan(u32 packed, u32 signs) {
        return fix_nan_signs(packed, signs);
    }
    static __device__ __forceinline__ u32 magnitudes(u32 packed) { return packed; }
    // e5m2 tells apart quotients from 2^-18 to 2^17: a narrower range of scales than e4m3's
    // keeps each of them, times the scale, at 2^-100 or more, as the e4m3 range does for its
    // quotients (see below).
    static __device__ __forceinline__ bool fast(float scale) {
        return scale >= 0x1p-82f && scale <= 0x1p100f;
    }
};

// The fp8 divisor of one tensor, with what the fast conversion needs.
struct Fp8Scale {
    float scale;
    float inverse;  // RN(1 / scale)
    // The fast conversion is exact for a scale in [2^-89, 2^100] (see below); any other scale
    // (zero, negative, huge, tiny, NaN) takes the division.
    bool fast;
};

// One scale, loaded where it stands in the program: the memory clobber keeps the compiler from
// moving it (or the loads before it) around.
__device__ __forceinline__ float load_scale(const float* p) {
    float scale;
    asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(scale) : "l"(p) : "memory");
    return scale;
}

template <class Fmt>
__device__ __forceinline__ Fp8Scale make_scale(float scale) {
    Fp8Scale s;
    s.scale = scale;
    // RN(1 / scale) as rcp.rn (__frcp_rn) computes it for normal scales away from the ends of
    // the float range: the hardware's approximation y0, then one correction y0 + y0 * (1 -
    // scale * y0). rcp.rn itself first checks the scale's exponent and branches to a slow path
    // for the rest; only fast scales use the inverse, and the range check cost a small call
    // about 0.03 us (docs/perf-log.md v12). tests/cuda.rs checks that this is rcp.rn's result
    // for every float in the fast range. Volatile, so that the compiler does not hoist it (and
    // the wait for the scale it implies) above the loads of the items.
    asm volatile("{\n\t.reg .f32 y0, e;\n\t"
                 "rcp.approx.ftz.f32 y0, %1;\n\t"
                 "fma.rn.f32 e, %1, y0, 0fBF800000;\n\t"
                 "neg.f32 e, e;\n\t"
                 "fma.rn.f32 %0, y0, e, y0;\n\t}"
                 : "=f"(s.inverse) : "f"(scale));
    s.fast = Fmt::fast(scale);
    return s;
}

// Inputs to e4m3 bytes exactly as the reference computes them: e4m3(RN(x / scale)), NaN as
// 0x7f with the input's sign. (e5m2 the same way: its scale range is in struct E5M2.)
//
// The IEEE division costs about fifteen instructions and a branch per element, three times the
// budget of a bandwidth-bound kernel. Instead, with y = RN(1 / scale) computed once and
// a = |x|: q0 = RN(a * y) is within an ulp of a / scale, the residual r = a - q0 * scale is
// exact in one fused multiply-add, and q1 = RN(q0 + r * y), one more, is the correctly rounded
// quotient RN(a / scale) (Markstein's theorem: y correctly rounded, q0 within an ulp, nothing
// overflowing or underflowing). The scale's range above keeps every quotient that e4m3 can
// tell apart (2^-11 <= q0 <= 2^10) clear of underflow and overflow; a smaller quotient
// converts to zero and a larger one saturates whether or not q1 is exact. q0 is clamped at
// 2^20 first, so that an infinite q0 (x infinite, or x / scale beyond the float range) still
// gives a huge q1 rather than inf - inf, and a NaN one gives NaN (fminf returns the other
// operand, then NaN propagates from a). The sign is the input's, ORed in afterwards (for a
// positive scale, the sign of every quotient, zeros and NaN included). Four instructions and a
// half per element, no branch: ties, which the quotient often hits exactly when the scale has
// few significant bits (a power of two, or 11/128), cost nothing extra. Checked on a CPU
// against the division for every half and bfloat16 input at every half and bfloat16 scale in
// the range, and on the GPU by tests/cuda.rs.

// The magnitudes of four inputs divided by the scale, as fp8 bytes (as above).
template <class Fmt>
__device__ __forceinline__ u32 quotient4(const float* x, const Fp8Scale& s) {
    float q[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float a = fabsf(x[i]);
        const float q0 = fminf(__fmul_rn(a, s.inverse), 0x1p20f);
#if RCF_FP8_INEXACT
        q[i] = q0;
#else
        const float r = __fmaf_rn(-q0, s.scale, a);
        q[i] = __fmaf_rn(r, s.inverse, q0);
#endif
    }
    return Fmt::x4(q[0], q[1], q[2], q[3]);
}

// The sign bit (at bit 7) of a NaN quotient in the reference, which divides on an x86 host: a
// NaN input keeps its own sign; otherwise the quotient is the scale's NaN, or for an invalid
// division (0 / 0, inf / inf) x86's "default NaN", which is negative. Only scales that are
// zero, infinite or NaN get here with a non-NaN input.
__device__ __forceinline__ u32 nan_sign(float x, u32 input_sign, float scale) {
    if (x != x) return input_sign;
    if (scale != scale) return (__float_as_uint(scale) >> 24) & 0x80u;
    return 0x80u;
}

// The slow, always exact way: x / scale rounded correctly (IEEE), as the reference divides.
template <class Fmt>
__device__ RCF_DIVIDE_INLINING u32 divide4(float x0, float x1, float x2, float x3, u32 signs,
                                    float scale) {
    const u32 exact = Fmt::x4(__fdiv_rn(x0, scale), __fdiv_rn(x1, scale), __fdiv_rn(x2, scale),
                              __fdiv_rn(x3, scale));
    const u32 nan_signs = nan_sign(x0, signs & 0x80u, scale) |
                          (nan_sign(x1, (signs >> 8) & 0x80u, scale) << 8) |
                          (nan_sign(x2, (signs >> 16) & 0x80u, scale) << 16) |
                          (nan_sign(x3, (signs >> 24) & 0x80u, scale) << 24);
    return Fmt::fix_nan(exact, nan_signs);
}

// ---------------------------------------------------------------------------------------------
// Items: how one unit of work is loaded from the input and stored to the cache. `elem` offsets
// count elements of the input (load) or of the cache (store).

// auto cache dtype, 16 bytes per item: the cache element is the input element, bit for bit.
template <class In>
struct AutoVector {
    // PEEL_ONE: whether kernels of one item per thread peel their first pass (see RCF_PEEL).
    enum { ELEMS = 16 / In::SIZE, PEEL_ONE = 1 };
    typedef uint4 Loaded;
    typedef E4M3 Format;  // (unused: nothing is encoded)
    static __device__ __forceinline__ Loaded load(const char* base, i64 elem) {
        return load16(base + elem * In::SIZE);
    }
    static __device__ __forceinline__ void store(char* base, i64 elem, const Loaded& v,
                                                 const Fp8Scale&) {
        store16(base + elem * In::SIZE, v);
    }
};

// auto cache dtype, one element per item (any head size, any alignment).
template <class In>
struct AutoScalar {
    enum { ELEMS = 1, PEEL_ONE = 1 };
    typedef typename In::Bits Loaded;
    typedef E4M3 Format;  // (unused: nothing is encoded)
    static __device__ __forceinline__ Loaded load(const char* base, i64 elem) {
        return ((const Loaded*)base)[elem];
    }
    static __device__ __forceinline__ void store(char* base, i64 elem, const Loaded& v,
                                                 const Fp8Scale&) {
        ((Loaded*)base)[elem] = v;
    }
};

// fp8 cache dtype (format Fmt), 16 elements per item: In::SIZE 16-byte loads (32 or 64 bytes of
// input), one 16-byte store.
template <class In, class Fmt = E4M3>
struct Fp8Vector {
    enum { ELEMS = 16, PEEL_ONE = In::PEEL_FP8 };
    typedef Fmt Format;
    struct Loaded {
        uint4 part[In::SIZE];
    };
    static __device__ __forceinline__ Loaded load(const char* base, i64 elem) {
        Loaded v;
        const char* p = base + elem * In::SIZE;
#pragma unroll
        for (int i = 0; i < In::SIZE; ++i) v.part[i] = load16(p + 16 * i);
        return v;
    }
    // The 32-bit word of the input that holds element e, and element e's bits.
    static __device__ __forceinline__ u32 word(const Loaded& v, int w) {
        const uint4& q = v.part[w / 4];
        const int r = w % 4;
        return r == 0 ? q.x : r == 1 ? q.y : r == 2 ? q.z : q.w;
    }
    static __device__ __forceinline__ u32 bits(const Loaded& v, int e) {
        if (In::SIZE == 2) {
            const u32 w = word(v, e / 2);
            return (e & 1) ? (w >> 16) : (w & 0xffffu);
        }
        return word(v, e);
    }
    // Sign bits of elements 4g..4g+3 at bit 7 of bytes 0..3.
    static __device__ __forceinline__ u32 signs(const Loaded& v, int g) {
        if (In::SIZE == 2) {
            // The sign is bit 15 of each 16-bit element: the high byte of each half-word.
            return __byte_perm(word(v, 2 * g), word(v, 2 * g + 1), 0x7531) & 0x80808080u;
        }
        const u32 lo = __byte_perm(word(v, 4 * g), word(v, 4 * g + 1), 0x0073);
        const u32 hi = __byte_perm(word(v, 4 * g + 2), word(v, 4 * g + 3), 0x0073);
        return __byte_perm(lo, hi, 0x5410) & 0x80808080u;
    }
    static __device__ __forceinline__ void store(char* base, i64 elem, const Loaded& v,
                                                 const Fp8Scale& scale) {
        float x[16];
#pragma unroll
        for (int e = 0; e < 16; ++e) x[e] = In::to_float(bits(v, e));
        u32 out[4];
        // The scale is the same for every element of the item (of the tensor, or of the head:
        // an item never straddles two heads): no divergence, and the division only for scales
        // outside the fast range.
        if (scale.fast) {
#pragma unroll
            for (int g = 0; g < 4; ++g) {
                out[g] = Fmt::magnitudes(quotient4<Fmt>(x + 4 * g, scale)) | signs(v, g);
            }
        } else {
#pragma unroll
            for (int g = 0; g < 4; ++g) {
                out[g] = divide4<Fmt>(x[4 * g], x[4 * g + 1], x[4 * g + 2], x[4 * g + 3],
                                      signs(v, g), scale.scale);
            }
        }
        store16(base + elem, make_uint4(out[0], out[1], out[2], out[3]));
    }
};

// fp8 cache dtype (format Fmt), one element per item.
template <class In, class Fmt = E4M3>
struct Fp8Scalar {
    enum { ELEMS = 1, PEEL_ONE = 0 };
    typedef typename In::Bits Loaded;
    typedef Fmt Format;
    static __device__ __forceinline__ Loaded load(const char* base, i64 elem) {
        return ((const Loaded*)base)[elem];
    }
    static __device__ __forceinline__ void store(char* base, i64 elem, const Loaded& v,
                                                 const Fp8Scale& scale) {
        // Rarely used: the plain IEEE division.
        const float x = In::to_float(v);
        const u32 b = Fmt::x1(__fdiv_rn(x, scale.scale));
        const u32 sign = ((u32)v >> (8 * In::SIZE - 8)) & 0x80u;
        ((u8*)base)[elem] = (u8)Fmt::fix_nan(b, nan_sign(x, sign, scale.scale));
    }
};

// ---------------------------------------------------------------------------------------------
// The kernel body, shared by every input dtype x cache dtype x vector width.

// Where the items of one pass are: which tensor, token, head and chunk. Arithmetic on the
// parameters alone, no memory touched. (The input offsets are computed with the loads: computed
// here for all items, they cost the kernels of several items per thread 10 registers.)
template <int MAX_ITEMS>
struct Located {
    bool valid[MAX_ITEMS];
    bool is_value[MAX_ITEMS];
    i64 token[MAX_ITEMS];
    u32 head[MAX_ITEMS];
    u32 chunk[MAX_ITEMS];
};

// The items of block index `b`. MAX_ITEMS: the most items one thread moves per pass (the host
// passes the actual count, at most this). Small calls use the MAX_ITEMS = 1 instances: less
// code to fetch, fewer registers.
template <int MAX_ITEMS>
__device__ __forceinline__ Located<MAX_ITEMS> locate(u64 b, const Params& p) {
    const u32 per_token = p.items_per_token.divisor;
    const u32 per_head = p.items_per_head.divisor;
    const u32 segments = p.segments.divisor;
    // Items one token group holds, and items one block moves. Both fit in 31 bits (the host
    // checks), so the index arithmetic below stays in 32 bits.
    const u32 span = p.tokens_per_block * per_token;
    const u32 per_pass = blockDim.x * p.items_per_thread;
    u64 group;
    u32 segment;
    if (b <= 0xffffffffull) {
        const u32 g = fast_div((u32)b, p.segments);
        group = g;
        segment = (u32)b - g * segments;
    } else {
        group = b / segments;
        segment = (u32)(b - group * segments);
    }
    const i64 first_token = (i64)group * p.tokens_per_block;
    const u32 start = segment * per_pass;
    Located<MAX_ITEMS> at;
#pragma unroll
    for (int k = 0; k < MAX_ITEMS; ++k) {
        const u32 local = start + k * blockDim.x + threadIdx.x;
        const u32 t = p.tokens_per_block == 1 ? 0u : fast_div(local, p.items_per_token);
        at.token[k] = first_token + t;
        at.valid[k] = (u32)k < p.items_per_thread && local < span && at.token[k] < p.num_tokens;
        u32 j = local - t * per_token;
        at.is_value[k] = j >= p.items_per_kv;
        if (at.is_value[k]) j -= p.items_per_kv;
        at.head[k] = fast_div(j, p.items_per_head);
        at.chunk[k] = j - at.head[k] * per_head;
    }
    return at;
}

// Where item k of `at` reads: its slot, its scale (PER_HEAD, fp8 only: the scales are arrays
// of num_heads, head h's at index h; otherwise one per tensor) and its input, `elem` elements
// past `base`. Arithmetic on the parameters only, which no kernel writes: the first pass of
// the kernels of one item per thread computes it before the wait for the previous grid.
struct Source {
    const i64* slot;
    const float* scale;
    const char* base;
    i64 elem;
};

template <class Item, bool PER_HEAD, int MAX_ITEMS>
__device__ __forceinline__ Source source_of(
    const Located<MAX_ITEMS>& at, int k, const char* __restrict__ key,
    const char* __restrict__ value, const i64* __restrict__ slot_mapping,
    const float* __restrict__ k_scale_ptr, const float* __restrict__ v_scale_ptr,
    const Params& p) {
    const bool v = at.is_value[k];
    Source src;
    src.slot = slot_mapping + at.token[k];
    src.scale = (v ? v_scale_ptr : k_scale_ptr) + (PER_HEAD ? at.head[k] : 0u);
    src.base = v ? value : key;
    src.elem = at.token[k] * (v ? p.value_token_stride : p.key_token_stride) +
               (i64)at.head[k] * (v ? p.value_head_stride : p.key_head_stride) +
               (i64)at.chunk[k] * Item::ELEMS;
    return src;
}

// Moves the located items; `source(k)` is where item k reads (source_of).
template <class Item, bool SCALED, int MAX_ITEMS, class SourceOf>
__device__ __forceinline__ void move_items(const Located<MAX_ITEMS>& at, SourceOf source,
                                           char* __restrict__ key_cache,
                                           char* __restrict__ value_cache, const Params& p) {
    // Two phases, so that nothing waits for memory before every load is in flight: issue all
    // loads (slots and inputs), then compute the targets from the slots and store.
    i64 slot[MAX_ITEMS];
    typename Item::Loaded data[MAX_ITEMS];
    float divisor[MAX_ITEMS];
#pragma unroll
    for (int k = 0; k < MAX_ITEMS; ++k) {
        if (!at.valid[k]) continue;
        const Source src = source(k);
        slot[k] = *src.slot;
        // The scales live in device memory (so that a captured graph picks up new values);
        // only fp8 reads them. Each item loads its own, with its data: the address differs
        // between the items of a warp (keys and values), so the value stays in an ordinary
        // register. (Loaded once per thread, the compiler kept both scales in uniform registers
        // and moved them there right after loading them, which waits for them: that held back
        // every other load by a round trip to memory, 0.1 us on a small call.)
        divisor[k] = SCALED ? load_scale(src.scale) : 1.0f;
        // Padding tokens are read too: their inputs are valid memory, and not waiting for the
        // slot before loading saves a round trip to memory on small calls.
        data[k] = Item::load(src.base, src.elem);
    }
#pragma unroll
    for (int k = 0; k < MAX_ITEMS; ++k) {
        if (!at.valid[k] || slot[k] < 0 || slot[k] >= p.num_slots) continue;
        i64 block, offset;
        if (slot[k] <= 0xffffffffll) {
            const u32 quotient = fast_div((u32)slot[k], p.block_size);
            block = quotient;
            offset = (u32)slot[k] - quotient * p.block_size.divisor;
        } else {
            block = slot[k] / p.block_size.divisor;
            offset = slot[k] - block * p.block_size.divisor;
        }
        const i64 target = block * p.cache_block_stride + offset * p.cache_slot_stride +
                           (i64)at.head[k] * p.cache_head_stride +
                           (i64)at.chunk[k] * Item::ELEMS;
        // The reciprocal is computed only now, so that waiting for the scale does not hold
        // back the loads above (and only for fp8: the auto kernels ignore the scale).
        Fp8Scale scale;
        scale.scale = scale.inverse = 1.0f;
        scale.fast = true;
        if (SCALED) scale = make_scale<typename Item::Format>(divisor[k]);
        Item::store(at.is_value[k] ? value_cache : key_cache, target, data[k], scale);
    }
}

// Moves the located items, each reading where source_of says (its addresses computed with its
// loads).
template <class Item, bool SCALED, bool PER_HEAD, int MAX_ITEMS>
__device__ __forceinline__ void move_located(
    const Located<MAX_ITEMS>& at, const char* __restrict__ key,
    const char* __restrict__ value, char* __restrict__ key_cache,
    char* __restrict__ value_cache, const i64* __restrict__ slot_mapping,
    const float* __restrict__ k_scale_ptr, const float* __restrict__ v_scale_ptr,
    const Params& p) {
    move_items<Item, SCALED, MAX_ITEMS>(
        at,
        [&](int k) {
            return source_of<Item, PER_HEAD, MAX_ITEMS>(at, k, key, value, slot_mapping,
                                                        k_scale_ptr, v_scale_ptr, p);
        },
        key_cache, value_cache, p);
}

// One pass: the items of block index `b`, located and moved.
template <class Item, bool SCALED, bool PER_HEAD, int MAX_ITEMS>
__device__ __forceinline__ void one_pass(
    u64 b, const char* __restrict__ key, const char* __restrict__ value,
    char* __restrict__ key_cache, char* __restrict__ value_cache,
    const i64* __restrict__ slot_mapping, const float* __restrict__ k_scale_ptr,
    const float* __restrict__ v_scale_ptr, const Params& p) {
    move_located<Item, SCALED, PER_HEAD, MAX_ITEMS>(locate<MAX_ITEMS>(b, p), key, value,
                                                    key_cache, value_cache, slot_mapping,
                                                    k_scale_ptr, v_scale_ptr, p);
}

// Programmatic dependent launch (when the host launches with it; no-ops otherwise): this grid
// may have been scheduled while the previous kernel on the stream was still running. Wait until
// that kernel has finished and its writes are visible before touching memory, and let the next
// call's blocks be scheduled. Only launches overlap, never work: the next grid waits in turn
// for this one to finish. Every thread of the block must call this (a barrier).
//
// ONE_WARP: one warp waits for the block. The wait makes the previous grid's writes visible to
// this whole grid, and the barrier orders the block's other threads after it. Released from a
// barrier rather than each from its own wait, the block starts its loads sooner: 0.05 to 0.3
// us per small call on an H100 (docs/perf-log.md, v9), but 0.3 to 0.6% slower from 8192 tokens
// up, where every block of many waves pays the barrier. The kernels of one item per thread
// serve every small call (and fp8 calls of every size), the others large auto calls only.
// Compiled in: chosen per call at run time (a branch around the barrier, or even the position
// of the launch_dependents below under a run-time predicate), it lost most of the gain.
//
// WAIT_WARP_EARLY: as WAIT_WARP, the first warp letting the next grid launch before it waits
// rather than after. Safe whenever (the next grid waits for this one's completion in turn), and
// faster only for the smallest fp8 calls, whose next grid is then on its way while this one
// still waits (one token: 1.239 -> 1.162 us on an H100); from 8 tokens on the launched grid's
// blocks compete with this one's: the _x1_small instances of bfloat16 and float, which the host
// takes for the smallest calls only (shape.rs, EARLY_MAX_ITEMS_PER_SM).
enum Wait { WAIT_EVERY = 0, WAIT_WARP = 1, WAIT_WARP_EARLY = 2 };

template <int WAIT>
__device__ __forceinline__ void wait_for_previous_grid() {
#if RCF_PDL && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int wait = RCF_WAIT < 0 ? WAIT : RCF_WAIT;
    if (wait != WAIT_EVERY) {
        if (threadIdx.x < 32) {
            if (wait == WAIT_WARP_EARLY) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
            asm volatile("griddepcontrol.wait;" ::: "memory");
            if (wait != WAIT_WARP_EARLY) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
        }
        __syncthreads();
    } else {
        asm volatile("griddepcontrol.wait;" ::: "memory");
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    }
#endif
}

// WAIT: who waits for the previous grid (wait_for_previous_grid).
template <class Item, bool SCALED, bool PER_HEAD, int MAX_ITEMS, int WAIT>
__device__ __forceinline__ void reshape_and_cache_flash(
    const char* __restrict__ key, const char* __restrict__ value, char* __restrict__ key_cache,
    char* __restrict__ value_cache, const i64* __restrict__ slot_mapping,
    const float* __restrict__ k_scale_ptr, const float* __restrict__ v_scale_ptr,
    const Params& p) {
    const u64 blocks = (u64)p.token_groups * p.segments.divisor;
    if (RCF_PEEL == 2 || (RCF_PEEL == 1 && !SCALED) ||
        (RCF_PEEL == 3 && (!SCALED || (MAX_ITEMS == 1 && Item::PEEL_ONE)))) {
        // The first pass on its own: its block index is 32 bits, which spares the 64-bit loop
        // bookkeeping before the first loads (small calls are all latency). A block past the
        // work touches no memory, so it need not wait.
        if (blockIdx.x >= blocks) return;
        // The items' places are arithmetic on the parameters, which no kernel writes: the block
        // finds them while its first warp waits for the previous grid.
        if (!RCF_LOCATE_FIRST) wait_for_previous_grid<WAIT>();
        const Located<MAX_ITEMS> first = locate<MAX_ITEMS>(blockIdx.x, p);
        if constexpr (MAX_ITEMS == 1 && RCF_LOCATE_FIRST) {
            // So are the item's addresses: its loads go out as soon as the block is released.
            // (One item only: for several, holding their addresses across the wait cost
            // registers that large calls need.)
            const Source first_source = source_of<Item, PER_HEAD, MAX_ITEMS>(
                first, 0, key, value, slot_mapping, k_scale_ptr, v_scale_ptr, p);
            wait_for_previous_grid<WAIT>();
            if (RCF_EMPTY) return;
            move_items<Item, SCALED, MAX_ITEMS>(
                first, [&](int) { return first_source; }, key_cache, value_cache, p);
        } else {
            if (RCF_LOCATE_FIRST) wait_for_previous_grid<WAIT>();
            if (RCF_EMPTY) return;
            move_located<Item, SCALED, PER_HEAD, MAX_ITEMS>(
                first, key, value, key_cache, value_cache, slot_mapping, k_scale_ptr,
                v_scale_ptr, p);
        }
        // Grids smaller than the work (beyond 2^31 - 1 blocks, or capped by the host) walk the
        // rest.
        for (u64 b = (u64)blockIdx.x + gridDim.x; b < blocks; b += gridDim.x) {
            one_pass<Item, SCALED, PER_HEAD, MAX_ITEMS>(b, key, value, key_cache, value_cache,
                                                        slot_mapping, k_scale_ptr, v_scale_ptr,
                                                        p);
        }
    } else {
        wait_for_previous_grid<WAIT>();
        if (RCF_EMPTY) return;
        // Grids smaller than the work (beyond 2^31 - 1 blocks, or capped by the host) are
        // walked in a loop.
        for (u64 b = blockIdx.x; b < blocks; b += gridDim.x) {
            one_pass<Item, SCALED, PER_HEAD, MAX_ITEMS>(b, key, value, key_cache, value_cache,
                                                        slot_mapping, k_scale_ptr, v_scale_ptr,
                                                        p);
        }
    }
}

// At most 512 threads per block: leaves the compiler 128 registers per thread for the loads
// in flight (fp8 from float holds 4 x 64 bytes of input per thread).
#ifndef RCF_FP8_BOUNDS
#define RCF_FP8_BOUNDS 512
#endif
#define RCF_BOUNDS __launch_bounds__(512)
#define RCF_FP8_ATTRIBUTES __launch_bounds__(RCF_FP8_BOUNDS)
// Optional register caps for the fp8 kernels with one item per thread, per input dtype (0:
// none, the compiler's choice under __launch_bounds__(512)).
// Half: 48 (10 blocks of 128 threads per SM; the compiler takes 52 otherwise, 9 blocks), without
// spilling. bfloat16 takes 44 on its own (11 blocks). An occupancy block more was worth about 1%
// at 8192 tokens on an H100.
#ifndef RCF_FP8_X1_MAXNREG_HALF
#define RCF_FP8_X1_MAXNREG_HALF (RCF_FP8_X1_MAXNREG ? RCF_FP8_X1_MAXNREG : 48)
#endif
#ifndef RCF_FP8_X1_MAXNREG_BFLOAT16
#define RCF_FP8_X1_MAXNREG_BFLOAT16 RCF_FP8_X1_MAXNREG
#endif
#ifndef RCF_FP8_X1_MAXNREG_FLOAT
#define RCF_FP8_X1_MAXNREG_FLOAT RCF_FP8_X1_MAXNREG
#endif
#if RCF_FP8_X1_MAXNREG_HALF
#define RCF_HALF_FP8_X1_ATTRIBUTES __maxnreg__(RCF_FP8_X1_MAXNREG_HALF)
#else
#define RCF_HALF_FP8_X1_ATTRIBUTES __launch_bounds__(512)
#endif
// Half's peeled small-call kernels: 50 registers under 52, no stack (61 uncapped; under 48 the
// peel spilled). Small calls do not need the occupancy that large ones buy with 48.
#ifndef RCF_FP8_X1_SMALL_MAXNREG_HALF
#define RCF_FP8_X1_SMALL_MAXNREG_HALF 52
#endif
#if RCF_FP8_X1_SMALL_MAXNREG_HALF
#define RCF_HALF_FP8_X1_SMALL_ATTRIBUTES __maxnreg__(RCF_FP8_X1_SMALL_MAXNREG_HALF)
#else
#define RCF_HALF_FP8_X1_SMALL_ATTRIBUTES __launch_bounds__(512)
#endif
#if RCF_FP8_X1_MAXNREG_BFLOAT16
#define RCF_BFLOAT16_FP8_X1_ATTRIBUTES __maxnreg__(RCF_FP8_X1_MAXNREG_BFLOAT16)
#else
#define RCF_BFLOAT16_FP8_X1_ATTRIBUTES __launch_bounds__(512)
#endif
#if RCF_FP8_X1_MAXNREG_FLOAT
#define RCF_FLOAT_FP8_X1_ATTRIBUTES __maxnreg__(RCF_FP8_X1_MAXNREG_FLOAT)
#else
#define RCF_FLOAT_FP8_X1_ATTRIBUTES __launch_bounds__(512)
#endif
// One kernel: `...` is the template arguments of reshape_and_cache_flash (variadic, because an
// item type may hold a COMMA, which expands to a real comma on the way here).
#define RCF_KERNEL_BODY(NAME, ATTRIBUTES, ...)                                                  \
    extern "C" __global__ void ATTRIBUTES NAME(                                                  \
        const char* __restrict__ key, const char* __restrict__ value,                          \
        char* __restrict__ key_cache, char* __restrict__ value_cache,                          \
        const i64* __restrict__ slot_mapping, const float* __restrict__ k_scale,               \
        const float* __restrict__ v_scale, Params p) {                                         \
        reshape_and_cache_flash<__VA_ARGS__>(key, value, key_cache, value_cache, slot_mapping, \
                                             k_scale, v_scale, p);                             \
    }
#define RCF_KERNEL_WAIT(NAME, ITEM, SCALED, PER_HEAD, ATTRIBUTES, MAX_ITEMS, WAIT)            \
    RCF_KERNEL_BODY(NAME, ATTRIBUTES, ITEM, SCALED, PER_HEAD, MAX_ITEMS, WAIT)
// The kernels of one item per thread wait by one warp, the others by every thread (v9).
#define RCF_KERNEL_SCALES(NAME, ITEM, SCALED, PER_HEAD, ATTRIBUTES, MAX_ITEMS)                \
    RCF_KERNEL_BODY(NAME, ATTRIBUTES, ITEM, SCALED, PER_HEAD, MAX_ITEMS,                        \
                    (MAX_ITEMS == 1 ? WAIT_WARP : WAIT_EVERY))
// Per-tensor scales (or none).
#define RCF_KERNEL(NAME, ITEM, SCALED, ATTRIBUTES, MAX_ITEMS)                                   \
    RCF_KERNEL_SCALES(NAME, ITEM, SCALED, false, ATTRIBUTES, MAX_ITEMS)

// Named reshape_and_cache_flash_<input dtype>_<cache dtype>[_x1 | _scalar].
RCF_KERNEL(reshape_and_cache_flash_half_auto, AutoVector<Half>, false, RCF_BOUNDS, 4)
RCF_KERNEL(reshape_and_cache_flash_bfloat16_auto, AutoVector<BFloat16>, false, RCF_BOUNDS, 4)
RCF_KERNEL(reshape_and_cache_flash_float_auto, AutoVector<Float>, false, RCF_BOUNDS, 4)
RCF_KERNEL(reshape_and_cache_flash_half_fp8, Fp8Vector<Half>, true, RCF_FP8_ATTRIBUTES, 4)
RCF_KERNEL(reshape_and_cache_flash_bfloat16_fp8, Fp8Vector<BFloat16>, true, RCF_FP8_ATTRIBUTES, 4)
RCF_KERNEL(reshape_and_cache_flash_float_fp8, Fp8Vector<Float>, true, RCF_FP8_ATTRIBUTES, 4)
RCF_KERNEL(reshape_and_cache_flash_half_auto_x1, AutoVector<Half>, false, RCF_BOUNDS, 1)
RCF_KERNEL(reshape_and_cache_flash_bfloat16_auto_x1, AutoVector<BFloat16>, false, RCF_BOUNDS, 1)
RCF_KERNEL(reshape_and_cache_flash_float_auto_x1, AutoVector<Float>, false, RCF_BOUNDS, 1)
RCF_KERNEL(reshape_and_cache_flash_half_fp8_x1, Fp8Vector<Half>, true, RCF_HALF_FP8_X1_ATTRIBUTES, 1)
RCF_KERNEL(reshape_and_cache_flash_bfloat16_fp8_x1, Fp8Vector<BFloat16>, true,
           RCF_BFLOAT16_FP8_X1_ATTRIBUTES, 1)
RCF_KERNEL(reshape_and_cache_flash_float_fp8_x1, Fp8Vector<Float>, true, RCF_FLOAT_FP8_X1_ATTRIBUTES, 1)
RCF_KERNEL(reshape_and_cache_flash_half_auto_scalar, AutoScalar<Half>, false, RCF_BOUNDS, 4)
RCF_KERNEL(reshape_and_cache_flash_bfloat16_auto_scalar, AutoScalar<BFloat16>, false, RCF_BOUNDS, 4)
RCF_KERNEL(reshape_and_cache_flash_float_auto_scalar, AutoScalar<Float>, false, RCF_BOUNDS, 4)
RCF_KERNEL(reshape_and_cache_flash_half_fp8_scalar, Fp8Scalar<Half>, true, RCF_BOUNDS, 4)
RCF_KERNEL(reshape_and_cache_flash_bfloat16_fp8_scalar, Fp8Scalar<BFloat16>, true, RCF_BOUNDS, 4)
RCF_KERNEL(reshape_and_cache_flash_float_fp8_scalar, Fp8Scalar<Float>, true, RCF_BOUNDS, 4)

// fp8 e5m2, and both fp8 formats with per-head scales: the same shapes and attributes as the
// e4m3 per-tensor instances above, named
// reshape_and_cache_flash_<input dtype>_<cache dtype>[_per_head][_x1 | _scalar]. (COMMA keeps
// the item's template arguments one macro argument.)
#define COMMA ,
RCF_KERNEL_SCALES(reshape_and_cache_flash_half_fp8_e5m2,
                  Fp8Vector<Half COMMA E5M2>, true, false, RCF_FP8_ATTRIBUTES, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_bfloat16_fp8_e5m2,
                  Fp8Vector<BFloat16 COMMA E5M2>, true, false, RCF_FP8_ATTRIBUTES, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_float_fp8_e5m2,
                  Fp8Vector<Float COMMA E5M2>, true, false, RCF_FP8_ATTRIBUTES, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_half_fp8_e5m2_x1,
                  Fp8Vector<Half COMMA E5M2>, true, false, RCF_HALF_FP8_X1_ATTRIBUTES, 1)
RCF_KERNEL_SCALES(reshape_and_cache_flash_bfloat16_fp8_e5m2_x1,
                  Fp8Vector<BFloat16 COMMA E5M2>, true, false, RCF_BFLOAT16_FP8_X1_ATTRIBUTES, 1)
RCF_KERNEL_SCALES(reshape_and_cache_flash_float_fp8_e5m2_x1,
                  Fp8Vector<Float COMMA E5M2>, true, false, RCF_FLOAT_FP8_X1_ATTRIBUTES, 1)
RCF_KERNEL_SCALES(reshape_and_cache_flash_half_fp8_e5m2_scalar,
                  Fp8Scalar<Half COMMA E5M2>, true, false, RCF_BOUNDS, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_bfloat16_fp8_e5m2_scalar,
                  Fp8Scalar<BFloat16 COMMA E5M2>, true, false, RCF_BOUNDS, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_float_fp8_e5m2_scalar,
                  Fp8Scalar<Float COMMA E5M2>, true, false, RCF_BOUNDS, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_half_fp8_per_head,
                  Fp8Vector<Half COMMA E4M3>, true, true, RCF_FP8_ATTRIBUTES, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_bfloat16_fp8_per_head,
                  Fp8Vector<BFloat16 COMMA E4M3>, true, true, RCF_FP8_ATTRIBUTES, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_float_fp8_per_head,
                  Fp8Vector<Float COMMA E4M3>, true, true, RCF_FP8_ATTRIBUTES, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_half_fp8_per_head_x1,
                  Fp8Vector<Half COMMA E4M3>, true, true, RCF_HALF_FP8_X1_ATTRIBUTES, 1)
RCF_KERNEL_SCALES(reshape_and_cache_flash_bfloat16_fp8_per_head_x1,
                  Fp8Vector<BFloat16 COMMA E4M3>, true, true, RCF_BFLOAT16_FP8_X1_ATTRIBUTES, 1)
RCF_KERNEL_SCALES(reshape_and_cache_flash_float_fp8_per_head_x1,
                  Fp8Vector<Float COMMA E4M3>, true, true, RCF_FLOAT_FP8_X1_ATTRIBUTES, 1)
RCF_KERNEL_SCALES(reshape_and_cache_flash_half_fp8_per_head_scalar,
                  Fp8Scalar<Half COMMA E4M3>, true, true, RCF_BOUNDS, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_bfloat16_fp8_per_head_scalar,
                  Fp8Scalar<BFloat16 COMMA E4M3>, true, true, RCF_BOUNDS, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_float_fp8_per_head_scalar,
                  Fp8Scalar<Float COMMA E4M3>, true, true, RCF_BOUNDS, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_half_fp8_e5m2_per_head,
                  Fp8Vector<Half COMMA E5M2>, true, true, RCF_FP8_ATTRIBUTES, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_bfloat16_fp8_e5m2_per_head,
                  Fp8Vector<BFloat16 COMMA E5M2>, true, true, RCF_FP8_ATTRIBUTES, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_float_fp8_e5m2_per_head,
                  Fp8Vector<Float COMMA E5M2>, true, true, RCF_FP8_ATTRIBUTES, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_half_fp8_e5m2_per_head_x1,
                  Fp8Vector<Half COMMA E5M2>, true, true, RCF_HALF_FP8_X1_ATTRIBUTES, 1)
RCF_KERNEL_SCALES(reshape_and_cache_flash_bfloat16_fp8_e5m2_per_head_x1,
                  Fp8Vector<BFloat16 COMMA E5M2>, true, true, RCF_BFLOAT16_FP8_X1_ATTRIBUTES, 1)
RCF_KERNEL_SCALES(reshape_and_cache_flash_float_fp8_e5m2_per_head_x1,
                  Fp8Vector<Float COMMA E5M2>, true, true, RCF_FLOAT_FP8_X1_ATTRIBUTES, 1)
RCF_KERNEL_SCALES(reshape_and_cache_flash_half_fp8_e5m2_per_head_scalar,
                  Fp8Scalar<Half COMMA E5M2>, true, true, RCF_BOUNDS, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_bfloat16_fp8_e5m2_per_head_scalar,
                  Fp8Scalar<BFloat16 COMMA E5M2>, true, true, RCF_BOUNDS, 4)
RCF_KERNEL_SCALES(reshape_and_cache_flash_float_fp8_e5m2_per_head_scalar,
                  Fp8Scalar<Float COMMA E5M2>, true, true, RCF_BOUNDS, 4)

// The small-call instances of the kernels of one item per thread, named ..._x1_small: the
// host's choice for the smallest fp8 calls (shape.rs, Launch::small). bfloat16 and float: the
// first warp lets the next grid launch before it waits (WAIT_WARP_EARLY); half: the first pass
// peeled (HalfSmall) under a register cap of its own, waiting as the other kernels of one item
// per thread do. (The auto ones, which the host does not take, are of the early kind.)
RCF_KERNEL_WAIT(reshape_and_cache_flash_half_auto_x1_small,
                AutoVector<Half>, false, false, RCF_BOUNDS, 1, WAIT_WARP_EARLY)
RCF_KERNEL_WAIT(reshape_and_cache_flash_bfloat16_auto_x1_small,
                AutoVector<BFloat16>, false, false, RCF_BOUNDS, 1, WAIT_WARP_EARLY)
RCF_KERNEL_WAIT(reshape_and_cache_flash_float_auto_x1_small,
                AutoVector<Float>, false, false, RCF_BOUNDS, 1, WAIT_WARP_EARLY)
RCF_KERNEL_WAIT(reshape_and_cache_flash_half_fp8_x1_small,
                Fp8Vector<HalfSmall COMMA E4M3>, true, false, RCF_HALF_FP8_X1_SMALL_ATTRIBUTES, 1, WAIT_WARP)
RCF_KERNEL_WAIT(reshape_and_cache_flash_bfloat16_fp8_x1_small,
                Fp8Vector<BFloat16 COMMA E4M3>, true, false, RCF_BFLOAT16_FP8_X1_ATTRIBUTES, 1, WAIT_WARP_EARLY)
RCF_KERNEL_WAIT(reshape_and_cache_flash_float_fp8_x1_small,
                Fp8Vector<Float COMMA E4M3>, true, false, RCF_FLOAT_FP8_X1_ATTRIBUTES, 1, WAIT_WARP_EARLY)
RCF_KERNEL_WAIT(reshape_and_cache_flash_half_fp8_e5m2_x1_small,
                Fp8Vector<HalfSmall COMMA E5M2>, true, false, RCF_HALF_FP8_X1_SMALL_ATTRIBUTES, 1, WAIT_WARP)
RCF_KERNEL_WAIT(reshape_and_cache_flash_bfloat16_fp8_e5m2_x1_small,
                Fp8Vector<BFloat16 COMMA E5M2>, true, false, RCF_BFLOAT16_FP8_X1_ATTRIBUTES, 1, WAIT_WARP_EARLY)
RCF_KERNEL_WAIT(reshape_and_cache_flash_float_fp8_e5m2_x1_small,
                Fp8Vector<Float COMMA E5M2>, true, false, RCF_FLOAT_FP8_X1_ATTRIBUTES, 1, WAIT_WARP_EARLY)
RCF_KERNEL_WAIT(reshape_and_cache_flash_half_fp8_per_head_x1_small,
                Fp8Vector<HalfSmall COMMA E4M3>, true, true, RCF_HALF_FP8_X1_SMALL_ATTRIBUTES, 1, WAIT_WARP)
RCF_KERNEL_WAIT(reshape_and_cache_flash_bfloat16_fp8_per_head_x1_small,
                Fp8Vector<BFloat16 COMMA E4M3>, true, true, RCF_BFLOAT16_FP8_X1_ATTRIBUTES, 1, WAIT_WARP_EARLY)
RCF_KERNEL_WAIT(reshape_and_cache_flash_float_fp8_per_head_x1_small,
                Fp8Vector<Float COMMA E4M3>, true, true, RCF_FLOAT_FP8_X1_ATTRIBUTES, 1, WAIT_WARP_EARLY)
RCF_KERNEL_WAIT(reshape_and_cache_flash_half_fp8_e5m2_per_head_x1_small,
                Fp8Vector<HalfSmall COMMA E5M2>, true, true, RCF_HALF_FP8_X1_SMALL_ATTRIBUTES, 1, WAIT_WARP)
RCF_KERNEL_WAIT(reshape_and_cache_flash_bfloat16_fp8_e5m2_per_head_x1_small,
                Fp8Vector<BFloat16 COMMA E5M2>, true, true, RCF_BFLOAT16_FP8_X1_ATTRIBUTES, 1, WAIT_WARP_EARLY)
RCF_KERNEL_WAIT(reshape_and_cache_flash_float_fp8_e5m2_per_head_x1_small,
                Fp8Vector<Float COMMA E5M2>, true, true, RCF_FLOAT_FP8_X1_ATTRIBUTES, 1, WAIT_WARP_EARLY)
#undef COMMA
