// A minimal reshape_and_cache_flash for `paged-kv-bench --kernel examples/kernels/copy.cu`:
// one thread per element of one token's head, keys and values both, every layout, input dtype
// and cache dtype (auto, fp8 e4m3, fp8 e5m2 with per-tensor or per-head scales). Readable
// rather than fast: the built-in kernel moves 16 bytes per access instead.
//
// The contract (the parameters, the launch, the helpers) is kernels/paged_kv.h.

#include "paged_kv.h"

// paged-kv: entry=copy_kv grid=elements:1 block=256

extern "C" __global__ void copy_kv(const PagedKvParams p) {
    const pkv_u64 thread = pkv_thread_index();
    if (thread >= p.threads) return;

    // grid=elements:1 numbers threads token-major, then head, then element.
    const pkv_i64 element = thread % p.head_size;
    const pkv_i64 head = thread / p.head_size % p.num_heads;
    const pkv_i64 token = thread / p.head_size / p.num_heads;

    const pkv_i64 slot = p.slot_mapping[token];
    if (slot < 0 || slot >= p.num_slots) return;  // padding: nothing to write

    const pkv_i64 from = pkv_input_index(p, token, head) + element;
    const pkv_i64 to = pkv_cache_index(p, slot, head) + element;

    if (p.cache_dtype == PKV_CACHE_AUTO) {
        // The same bits as the input.
        pkv_copy_element(p.key_cache, to, p.key, from, p.dtype);
        pkv_copy_element(p.value_cache, to, p.value, from, p.dtype);
    } else {
        // One fp8 byte: the input divided by its tensor's (or head's) scale.
        const float k = pkv_load_float(p.key, p.dtype, from);
        const float v = pkv_load_float(p.value, p.dtype, from);
        ((unsigned char*)p.key_cache)[to] =
            pkv_fp8_quantize(k, pkv_scale(p, p.k_scale, head), p.cache_dtype);
        ((unsigned char*)p.value_cache)[to] =
            pkv_fp8_quantize(v, pkv_scale(p, p.v_scale, head), p.cache_dtype);
    }
}
