// A minimal reshape_and_cache_flash for `paged-kv-bench --shader`: a starting point.
//
// One invocation per 8 consecutive elements of one token's head (16 bytes of 16-bit inputs,
// 32 of float ones): it copies their words from the keys and values into the token's slot of
// each cache, unchanged, so it implements caches of the inputs' own dtype (auto), in either
// layout. The tool appends shaders/paged_kv.wgsl, which declares `params`, the bindings
// (`key`, `value`, `key_cache`, `value_cache`, `slot_mapping`, ...) and the `pkv_` helpers.
//
// paged-kv: grid=elements:8 caches=auto

@compute @workgroup_size(64)
fn reshape_and_cache_flash(@builtin(global_invocation_id) id: vec3<u32>) {
    let thread = pkv_thread(id);
    if thread >= params.threads {
        return;
    }
    // grid=elements:8 numbers the invocations token-major, then head, then chunk of 8.
    let chunks = (params.head_size + 7u) / 8u;
    let element = (thread % chunks) * 8u;
    let row = thread / chunks;
    let head = row % params.num_heads;
    let token = row / params.num_heads;

    let slot = slot_mapping[token];
    if slot < 0 {
        return; // padding
    }

    // The chunk's words: 8 elements, fewer in a head's last chunk.
    let elements = min(8u, params.head_size - element);
    let words = elements * params.element_bytes / 4u;
    let input = pkv_input_word(pkv_input_index(token, head, element));
    let cache = pkv_cache_word(pkv_cache_index(u32(slot), head, element));
    for (var w = 0u; w < words; w++) {
        key_cache[cache + w] = key[input + w];
        value_cache[cache + w] = value[input + w];
    }
}
