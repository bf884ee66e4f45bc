// Ceilings and utilities, compiled in the same NVRTC program as reshape_and_cache_flash.cu,
// after it (src/backend/cuda/compile.rs joins the two), so that they share its types, memory
// access helpers, Params and item types: the copy ceiling every row is compared with, the
// pattern kernels (--ceiling pattern), the streaming ceilings of the tuning harness and the
// device-side random fill.
//
// ---------------------------------------------------------------------------------------------
// The copy ceiling: 16 bytes per thread per load, each block copying blockDim.x * 4 contiguous
// words (four loads in flight per thread before the stores), consecutive blocks taking
// consecutive parts: the access pattern of the reshape kernels, on plain contiguous buffers.
// `n` counts 16-byte words.
extern "C" __global__ void __launch_bounds__(1024) copy16(const uint4* __restrict__ src,
                                                          uint4* __restrict__ dst, u64 n) {
    const u64 per_block = (u64)blockDim.x * 4;
    for (u64 base = (u64)blockIdx.x * per_block + threadIdx.x; base < n;
         base += (u64)gridDim.x * per_block) {
        uint4 v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u64 i = base + (u64)k * blockDim.x;
            if (i < n) v[k] = load16(src + i);
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u64 i = base + (u64)k * blockDim.x;
            if (i < n) store16(dst + i, v[k]);
        }
    }
}

// The pattern kernels (--ceiling pattern; src/pattern.rs defines their result): each row's own
// ceiling. They read the bytes a call reads (the same items, through the same input strides,
// padding tokens included, as the reshape kernels read them) and write as many bytes to the
// cache addresses it writes, with the arithmetic removed: an auto cache gets the input bytes
// (the Auto items above), an fp8 cache the most significant byte of each input element. Laid
// out as copy16 is: one item (16 bytes of output, or one element where the rows are not whole
// 16-byte vectors) per thread and load, each block taking blockDim.x * p.items_per_thread
// consecutive items (every load in flight before the stores), consecutive blocks consecutive
// parts. They take the reshape kernels' arguments, so that a prepared call swaps only the
// function and the grid; scales are not read.

// fp8 pattern items: the loads of Fp8Vector / Fp8Scalar, and for each element its high byte.
template <class In>
struct PatternFp8Vector {
    enum { ELEMS = 16 };
    typedef typename Fp8Vector<In>::Loaded Loaded;
    static __device__ __forceinline__ Loaded load(const char* base, i64 elem) {
        return Fp8Vector<In>::load(base, elem);
    }
    static __device__ __forceinline__ void store(char* base, i64 elem, const Loaded& v) {
        u32 out[4];
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            const u32 w0 = Fp8Vector<In>::word(v, In::SIZE * g);
            const u32 w1 = Fp8Vector<In>::word(v, In::SIZE * g + 1);
            if (In::SIZE == 2) {
                out[g] = __byte_perm(w0, w1, 0x7531);
            } else {
                const u32 w2 = Fp8Vector<In>::word(v, 4 * g + 2);
                const u32 w3 = Fp8Vector<In>::word(v, 4 * g + 3);
                out[g] = __byte_perm(__byte_perm(w0, w1, 0x0073), __byte_perm(w2, w3, 0x0073),
                                     0x5410);
            }
        }
        store16(base + elem, make_uint4(out[0], out[1], out[2], out[3]));
    }
};

template <class In>
struct PatternFp8Scalar {
    enum { ELEMS = 1 };
    typedef typename In::Bits Loaded;
    static __device__ __forceinline__ Loaded load(const char* base, i64 elem) {
        return ((const Loaded*)base)[elem];
    }
    static __device__ __forceinline__ void store(char* base, i64 elem, const Loaded& v) {
        ((u8*)base)[elem] = (u8)((u32)v >> (8 * In::SIZE - 8));
    }
};

// Auto pattern items: the Auto items themselves (they convert nothing).
template <class Item>
struct PatternAuto {
    enum { ELEMS = Item::ELEMS };
    typedef typename Item::Loaded Loaded;
    static __device__ __forceinline__ Loaded load(const char* base, i64 elem) {
        return Item::load(base, elem);
    }
    static __device__ __forceinline__ void store(char* base, i64 elem, const Loaded& v) {
        Fp8Scale unused;
        Item::store(base, elem, v, unused);
    }
};

#define PATTERN_MAX_ITEMS 4

template <class Item>
__device__ __forceinline__ void pattern_body(const char* __restrict__ key,
                                             const char* __restrict__ value,
                                             char* __restrict__ key_cache,
                                             char* __restrict__ value_cache,
                                             const i64* __restrict__ slot_mapping,
                                             const Params& p) {
#if RCF_PDL && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // Launched as the reshape kernels are (programmatic dependent launch): the same waits.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    const u32 per_token = p.items_per_token.divisor;
    const u32 per_head = p.items_per_head.divisor;
    const u64 total = (u64)p.num_tokens * per_token;
    const u64 per_block = (u64)blockDim.x * p.items_per_thread;
    for (u64 base = (u64)blockIdx.x * per_block + threadIdx.x; base < total;
         base += (u64)gridDim.x * per_block) {
        bool valid[PATTERN_MAX_ITEMS];
        bool is_value[PATTERN_MAX_ITEMS];
        i64 token[PATTERN_MAX_ITEMS];
        u32 head[PATTERN_MAX_ITEMS];
        u32 chunk[PATTERN_MAX_ITEMS];
#pragma unroll
        for (int k = 0; k < PATTERN_MAX_ITEMS; ++k) {
            const u64 i = base + (u64)k * blockDim.x;
            valid[k] = (u32)k < p.items_per_thread && i < total;
            const u64 t = i <= 0xffffffffull ? fast_div((u32)i, p.items_per_token) : i / per_token;
            token[k] = (i64)t;
            u32 j = (u32)(i - t * per_token);
            is_value[k] = j >= p.items_per_kv;
            if (is_value[k]) j -= p.items_per_kv;
            head[k] = fast_div(j, p.items_per_head);
            chunk[k] = j - head[k] * per_head;
        }
        i64 slot[PATTERN_MAX_ITEMS];
        typename Item::Loaded data[PATTERN_MAX_ITEMS];
#pragma unroll
        for (int k = 0; k < PATTERN_MAX_ITEMS; ++k) {
            if (!valid[k]) continue;
            const bool v = is_value[k];
            slot[k] = slot_mapping[token[k]];
            data[k] = Item::load(v ? value : key,
                                 token[k] * (v ? p.value_token_stride : p.key_token_stride) +
                                     (i64)head[k] * (v ? p.value_head_stride : p.key_head_stride) +
                                     (i64)chunk[k] * Item::ELEMS);
        }
#pragma unroll
        for (int k = 0; k < PATTERN_MAX_ITEMS; ++k) {
            if (!valid[k] || slot[k] < 0 || slot[k] >= p.num_slots) continue;
            i64 block, offset;
            if (slot[k] <= 0xffffffffll) {
                block = fast_div((u32)slot[k], p.block_size);
                offset = slot[k] - block * p.block_size.divisor;
            } else {
                block = slot[k] / p.block_size.divisor;
                offset = slot[k] - block * p.block_size.divisor;
            }
            const i64 target = block * p.cache_block_stride + offset * p.cache_slot_stride +
                               (i64)head[k] * p.cache_head_stride + (i64)chunk[k] * Item::ELEMS;
            Item::store(is_value[k] ? value_cache : key_cache, target, data[k]);
        }
    }
}

#define RCF_PATTERN(NAME, ITEM)                                                                 \
    extern "C" __global__ void __launch_bounds__(512) NAME(                                     \
        const char* __restrict__ key, const char* __restrict__ value,                          \
        char* __restrict__ key_cache, char* __restrict__ value_cache,                          \
        const i64* __restrict__ slot_mapping, const float* __restrict__ k_scale,               \
        const float* __restrict__ v_scale, Params p) {                                         \
        pattern_body<ITEM>(key, value, key_cache, value_cache, slot_mapping, p);               \
    }

// Named pattern_<input dtype>_<auto | fp8>[_scalar] (e4m3 and e5m2 write alike).
RCF_PATTERN(pattern_half_auto, PatternAuto<AutoVector<Half> >)
RCF_PATTERN(pattern_bfloat16_auto, PatternAuto<AutoVector<BFloat16> >)
RCF_PATTERN(pattern_float_auto, PatternAuto<AutoVector<Float> >)
RCF_PATTERN(pattern_half_fp8, PatternFp8Vector<Half>)
RCF_PATTERN(pattern_bfloat16_fp8, PatternFp8Vector<BFloat16>)
RCF_PATTERN(pattern_float_fp8, PatternFp8Vector<Float>)
RCF_PATTERN(pattern_half_auto_scalar, PatternAuto<AutoScalar<Half> >)
RCF_PATTERN(pattern_bfloat16_auto_scalar, PatternAuto<AutoScalar<BFloat16> >)
RCF_PATTERN(pattern_float_auto_scalar, PatternAuto<AutoScalar<Float> >)
RCF_PATTERN(pattern_half_fp8_scalar, PatternFp8Scalar<Half>)
RCF_PATTERN(pattern_bfloat16_fp8_scalar, PatternFp8Scalar<BFloat16>)
RCF_PATTERN(pattern_float_fp8_scalar, PatternFp8Scalar<Float>)

// Other streaming ceilings, for the mixes and write patterns of the reshape kernels: each of
// the `n` output words (16 bytes) is made from READS consecutive input words (READS = 2: the
// read 2 / write 1 bytes of an fp8 cache from 16-bit inputs), and the output is cut into rows
// of 2^shift words that land where a cache would put them. Rows are numbered (token, head) with
// 2^heads_log2 heads per token; token t goes to slot t * odd mod tokens (a bijection; every
// count is a power of two). heads_log2 = 0: a token's row is one contiguous chunk at its slot
// (NHD, whole token rows); otherwise the rows of a token are spread as HND puts them, with
// 2^bs_log2 slots per block: row (t, h) goes to ((block * heads + h) * block_size + offset).
// Four items per thread in flight before the stores, as in copy16.
template <int READS>
__device__ __forceinline__ void stream_body(const uint4* __restrict__ src, uint4* __restrict__ dst,
                                            u64 n, u32 shift, u32 heads_log2, u32 bs_log2) {
    const u64 per_block = (u64)blockDim.x * 4;
    const u64 token_mask = (n >> (shift + heads_log2)) - 1;
    const u64 head_mask = (1ull << heads_log2) - 1;
    const u64 word_mask = (1ull << shift) - 1;
    const u64 offset_mask = (1ull << bs_log2) - 1;
    for (u64 base = (u64)blockIdx.x * per_block + threadIdx.x; base < n;
         base += (u64)gridDim.x * per_block) {
        uint4 v[4][READS];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u64 i = base + (u64)k * blockDim.x;
            if (i < n) {
#pragma unroll
                for (int r = 0; r < READS; ++r) v[k][r] = load16(src + i * READS + r);
            }
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u64 i = base + (u64)k * blockDim.x;
            if (i < n) {
                uint4 o = v[k][0];
#pragma unroll
                for (int r = 1; r < READS; ++r) {
                    o.x ^= v[k][r].x;
                    o.y ^= v[k][r].y;
                    o.z ^= v[k][r].z;
                    o.w ^= v[k][r].w;
                }
                const u64 row = i >> shift;
                const u64 slot = ((row >> heads_log2) * 0x9e3779b97f4a7c15ull) & token_mask;
                u64 target_row;
                if (heads_log2 == 0) {
                    target_row = slot;
                } else {
                    const u64 block = slot >> bs_log2;
                    target_row = (((block << heads_log2) | (row & head_mask)) << bs_log2) |
                                 (slot & offset_mask);
                }
                store16(dst + ((target_row << shift) | (i & word_mask)), o);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(512)
    stream_r1w1(const uint4* __restrict__ src, uint4* __restrict__ dst, u64 n, u32 shift,
                u32 heads_log2, u32 bs_log2) {
    stream_body<1>(src, dst, n, shift, heads_log2, bs_log2);
}

extern "C" __global__ void __launch_bounds__(512)
    stream_r2w1(const uint4* __restrict__ src, uint4* __restrict__ dst, u64 n, u32 shift,
                u32 heads_log2, u32 bs_log2) {
    stream_body<2>(src, dst, n, shift, heads_log2, bs_log2);
}

// Pseudo-random cache contents, generated on the device: 16-byte word i is a hash of (seed, i)
// (splitmix64's finaliser), so the fill depends only on the seed, never on the launch shape.
__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

extern "C" __global__ void __launch_bounds__(1024) fill_random(uint4* __restrict__ dst, u64 n,
                                                               u64 seed) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const u64 a = mix64(seed ^ ((2 * i + 1) * 0x9e3779b97f4a7c15ull));
        const u64 b = mix64(seed ^ ((2 * i + 2) * 0x9e3779b97f4a7c15ull));
        store16(dst + i, make_uint4((u32)a, (u32)(a >> 32), (u32)b, (u32)(b >> 32)));
    }
}
