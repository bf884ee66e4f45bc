// paged_kv.h: the contract between paged-kv-bench and your own CUDA kernel
// (`paged-kv-bench --kernel [NAME=]FILE.cu`).
//
// The tool compiles your file with NVRTC for the GPU it runs on and includes this header for
// you (`#include "paged_kv.h"` also works: the header is built into the tool, no file on
// disk is needed). It then verifies your kernel against the CPU reference before timing it.
//
// WHAT TO WRITE
//
//     #include "paged_kv.h"
//     // paged-kv: entry=my_copy grid=elements:1 block=256
//     extern "C" __global__ void my_copy(const PagedKvParams p) { ... }
//
// The kernel takes exactly one parameter, the PagedKvParams below, by value. This header
// declares the entry point with that signature, so a definition with another parameter list
// is a compile error at your line (extern "C" cannot be overloaded).
//
// WHAT THE KERNEL DOES (src/reference.rs is the definition)
//
// For every token t with slot s = p.slot_mapping[t]:
//   - s == -1 (padding) or s outside [0, p.num_slots): write nothing for that token;
//   - otherwise, for every head h and element d < p.head_size:
//       key_cache  [pkv_cache_index(p, s, h) + d] = convert(key  [pkv_input_index(p, t, h) + d])
//       value_cache[pkv_cache_index(p, s, h) + d] = convert(value[pkv_input_index(p, t, h) + d])
//     where convert is the element's bits unchanged for p.cache_dtype == PKV_CACHE_AUTO, and
//     pkv_fp8_quantize(x, scale, p.cache_dtype) for fp8 caches, with head h's key or value
//     scale (pkv_scale). Every other byte of the caches must stay as it was: verification
//     fills them with random bytes first and compares every byte.
//
// THE LAUNCH
//
// The tool launches `threads` threads (p.threads) in blocks of `block` threads (the last block
// may be partial: always check `pkv_thread_index() < p.threads`). Declare how, in a comment
// line anywhere in the file (defaults in brackets):
//
//     // paged-kv: entry=NAME            the kernel's symbol [reshape_and_cache_flash]
//     // paged-kv: grid=elements:N       one thread per N consecutive elements of one token's
//                                        head: ceil(head_size / N) threads per (token, head),
//                                        numbered token-major, then head, then chunk [elements:1]
//     // paged-kv: grid=heads            one block per (token, head): pkv_block_index() is
//                                        token * num_heads + head
//     // paged-kv: grid=tokens           one block per token: pkv_block_index() is the token
//     // paged-kv: block=N               threads per block, 1..1024 [256]
//
// Blocks are numbered along x, and continue along y when there are more than 2^31 - 1 of them:
// use pkv_block_index() and pkv_thread_index() rather than blockIdx.x.
//
// WHAT YOUR KERNEL SUPPORTS
//
// A call outside what you declare is reported as n/a, never run (defaults: everything):
//
//     // paged-kv: layouts=NHD,HND dtypes=half,bfloat16,float caches=auto,fp8,fp8_e5m2
//     // paged-kv: scales=per-tensor,per-head inputs=strided
//
// (`inputs=contiguous` when your kernel assumes input_token_stride == num_heads * head_size
// and input_head_stride == head_size; by default keys and values may be views of a fused QKV
// tensor.)
//
// ERRORS
//
// A compile error prints NVRTC's messages with your file name and line numbers. A kernel that
// faults (an illegal address) ends every CUDA implementation of the run: the GPU context is
// lost. A call that has not finished after 10 seconds is reported as a timeout.

#ifndef PAGED_KV_H
#define PAGED_KV_H

typedef long long pkv_i64;
typedef unsigned long long pkv_u64;

// p.layout: the order of dimensions inside one cache block.
enum {
    PKV_NHD = 0,  // [num_blocks, block_size, num_heads, head_size]
    PKV_HND = 1,  // [num_blocks, num_heads, block_size, head_size]
};

// p.dtype: the element type of key and value (and of the caches when cache_dtype is auto).
enum {
    PKV_HALF = 0,      // IEEE binary16, 2 bytes
    PKV_BFLOAT16 = 1,  // bfloat16, 2 bytes
    PKV_FLOAT = 2,     // IEEE binary32, 4 bytes
};

// p.cache_dtype: what a cache element holds.
enum {
    PKV_CACHE_AUTO = 0,      // the input element, bit for bit
    PKV_CACHE_FP8_E4M3 = 1,  // one byte: e4m3 code of input / scale (--kv-cache-dtype fp8)
    PKV_CACHE_FP8_E5M2 = 2,  // one byte: e5m2 code of input / scale (--kv-cache-dtype fp8_e5m2)
};

// p.grid: the declared grid.
enum {
    PKV_GRID_ELEMENTS = 0,
    PKV_GRID_HEADS = 1,
    PKV_GRID_TOKENS = 2,
};

// The kernel's only parameter. Strides and offsets count ELEMENTS (of the input dtype for key
// and value, of the cache dtype for the caches), not bytes. Mirrored field by field by
// `PagedKvParams` in src/backend/cuda/user.rs: 8-byte fields first, so there is no padding.
struct PagedKvParams {
    const void* key;             // [num_tokens, num_heads, head_size] at the input strides
    const void* value;           // same shape and strides as key
    void* key_cache;             // num_blocks blocks in `layout`
    void* value_cache;           // same as key_cache
    const pkv_i64* slot_mapping;  // num_tokens entries: a slot, or -1 for padding
    const float* k_scale;        // fp8 caches: 1 entry, or num_heads when scale_per_head
    const float* v_scale;        // same as k_scale
    pkv_i64 num_tokens;
    pkv_i64 num_heads;
    pkv_i64 head_size;
    pkv_i64 block_size;          // slots per cache block
    pkv_i64 num_blocks;
    pkv_i64 num_slots;           // num_blocks * block_size
    pkv_i64 input_token_stride;  // token t's head h starts at t * token + h * head
    pkv_i64 input_head_stride;
    pkv_i64 cache_block_stride;  // slot s's head h starts at (s / block_size) * block
    pkv_i64 cache_slot_stride;   //   + (s % block_size) * slot + h * head
    pkv_i64 cache_head_stride;
    pkv_u64 threads;             // threads with work (see THE LAUNCH)
    int layout;                  // PKV_NHD or PKV_HND (the strides already say it)
    int dtype;                   // PKV_HALF, PKV_BFLOAT16 or PKV_FLOAT
    int cache_dtype;             // PKV_CACHE_AUTO, PKV_CACHE_FP8_E4M3 or PKV_CACHE_FP8_E5M2
    int scale_per_head;          // 1: k_scale and v_scale hold num_heads entries each
    int grid;                    // PKV_GRID_ELEMENTS, PKV_GRID_HEADS or PKV_GRID_TOKENS
    int elements_per_thread;     // N of grid=elements:N (0 for the other grids)
};

static_assert(sizeof(PagedKvParams) == 176, "PagedKvParams must match the tool's layout");

// The entry point, declared with the one signature the tool launches (see WHAT TO WRITE).
#ifdef PAGED_KV_ENTRY
extern "C" __global__ void PAGED_KV_ENTRY(PagedKvParams);
#endif

// ---------------------------------------------------------------------------------------------
// Helpers (all optional).

// The block's index in the whole grid (x first, then y).
__device__ __forceinline__ pkv_u64 pkv_block_index() {
    return (pkv_u64)blockIdx.y * gridDim.x + blockIdx.x;
}

// The thread's index in the whole grid; compare it with p.threads.
__device__ __forceinline__ pkv_u64 pkv_thread_index() {
    return pkv_block_index() * blockDim.x + threadIdx.x;
}

// Bytes of one input element.
__device__ __forceinline__ int pkv_dtype_size(int dtype) { return dtype == PKV_FLOAT ? 4 : 2; }

// Bytes of one cache element.
__device__ __forceinline__ int pkv_cache_element_size(const PagedKvParams& p) {
    return p.cache_dtype == PKV_CACHE_AUTO ? pkv_dtype_size(p.dtype) : 1;
}

// Where token t's head h starts in key (and in value), in elements.
__device__ __forceinline__ pkv_i64 pkv_input_index(const PagedKvParams& p, pkv_i64 token,
                                                   pkv_i64 head) {
    return token * p.input_token_stride + head * p.input_head_stride;
}

// Where slot s's head h starts in a cache, in elements (s must be a valid slot, not -1).
__device__ __forceinline__ pkv_i64 pkv_cache_index(const PagedKvParams& p, pkv_i64 slot,
                                                   pkv_i64 head) {
    return (slot / p.block_size) * p.cache_block_stride +
           (slot % p.block_size) * p.cache_slot_stride + head * p.cache_head_stride;
}

// Element `index` of an input (or auto cache) of `dtype`, as float (exact for every dtype; a
// NaN keeps its sign, which an fp8 code keeps too).
__device__ __forceinline__ float pkv_load_float(const void* base, int dtype, pkv_i64 index) {
    if (dtype == PKV_FLOAT) return ((const float*)base)[index];
    const unsigned short bits = ((const unsigned short*)base)[index];
    if (dtype == PKV_BFLOAT16) return __uint_as_float((unsigned)bits << 16);
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    // The conversion gives every NaN as the canonical (positive) one: put the sign and payload
    // back, as the reference's conversion keeps them.
    if (f != f) {
        f = __uint_as_float(((unsigned)(bits & 0x8000u) << 16) | 0x7fc00000u |
                            ((unsigned)(bits & 0x3ffu) << 13));
    }
    return f;
}

// Copies one element's bits (an auto cache): dst[dst_index] = src[src_index].
__device__ __forceinline__ void pkv_copy_element(void* dst, pkv_i64 dst_index, const void* src,
                                                 pkv_i64 src_index, int dtype) {
    if (dtype == PKV_FLOAT) {
        ((unsigned*)dst)[dst_index] = ((const unsigned*)src)[src_index];
    } else {
        ((unsigned short*)dst)[dst_index] = ((const unsigned short*)src)[src_index];
    }
}

// The scale of head h, from p.k_scale or p.v_scale (per tensor or per head, as the call has).
__device__ __forceinline__ float pkv_scale(const PagedKvParams& p, const float* scales,
                                           pkv_i64 head) {
    return scales[p.scale_per_head ? head : 0];
}

// float -> fp8 code, as src/fp8.rs encodes: round to nearest, ties to even; finite values and
// infinities beyond the largest finite value saturate to it; NaN gives 0x7f with x's sign.
// `mantissa_bits` and `bias` give the format, `max_bits` the largest finite value's float bits
// and `max_code` its code.
__device__ __forceinline__ unsigned pkv_fp8_encode(float x, unsigned mantissa_bits,
                                                   unsigned bias, unsigned max_bits,
                                                   unsigned max_code) {
    const unsigned bits = __float_as_uint(x);
    const unsigned sign = (bits >> 24) & 0x80u;
    const unsigned magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return sign | 0x7fu;
    if (magnitude >= max_bits) return sign | max_code;
    if (magnitude < ((128u - bias) << 23)) {
        // A subnormal result, a multiple of the smallest step: scaling by the step's inverse
        // (a power of two) is exact, and rounding to an integer is the format's rounding.
        const float inverse_step = __uint_as_float((bias - 1u + mantissa_bits + 127u) << 23);
        return sign | __float2uint_rn(__fmul_rn(__uint_as_float(magnitude), inverse_step));
    }
    // Normal: rebias the exponent, keep the top mantissa bits, round the rest to nearest even
    // (a carry into the exponent is the right result).
    const unsigned dropped_bits = 23u - mantissa_bits;
    const unsigned mantissa = magnitude & 0x7fffffu;
    unsigned code = (((magnitude >> 23) + bias - 127u) << mantissa_bits) | (mantissa >> dropped_bits);
    const unsigned dropped = mantissa & ((1u << dropped_bits) - 1u);
    const unsigned half = 1u << (dropped_bits - 1u);
    if (dropped > half || (dropped == half && (code & 1u))) code += 1u;
    return sign | code;
}

// e4m3: largest finite 448 (0x7e), NaN 0x7f.
__device__ __forceinline__ unsigned pkv_e4m3(float x) {
    return pkv_fp8_encode(x, 3u, 7u, 0x43e00000u, 0x7eu);
}

// e5m2: largest finite 57344 (0x7b), NaN 0x7f (one NaN code per sign, as e4m3).
__device__ __forceinline__ unsigned pkv_e5m2(float x) {
    return pkv_fp8_encode(x, 2u, 15u, 0x47600000u, 0x7bu);
}

// One fp8 cache byte, exactly as the reference computes it: the IEEE quotient x / scale, then
// encoded (cache_dtype PKV_CACHE_FP8_E4M3 or PKV_CACHE_FP8_E5M2). A NaN quotient is 0x7f with a
// fixed sign: x's when x is NaN, else the scale's when it is NaN, else negative (0 / 0 and
// inf / inf give the x86 host's negative NaN).
__device__ __forceinline__ unsigned char pkv_fp8_quantize(float x, float scale, int cache_dtype) {
    const float q = __fdiv_rn(x, scale);
    if (q != q) {
        const unsigned sign = x != x           ? (__float_as_uint(x) >> 24) & 0x80u
                              : scale != scale ? (__float_as_uint(scale) >> 24) & 0x80u
                                               : 0x80u;
        return (unsigned char)(sign | 0x7fu);
    }
    return (unsigned char)(cache_dtype == PKV_CACHE_FP8_E5M2 ? pkv_e5m2(q) : pkv_e4m3(q));
}

#endif  // PAGED_KV_H
