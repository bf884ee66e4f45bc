// The contract of a user's shader (`paged-kv-bench --shader FILE.wgsl`): what the tool APPENDS
// to the file before compiling it, so that the shader uses these names without declaring them.
// Appending (rather than prepending) keeps the line numbers of compile errors those of the
// user's file. Names starting with `pkv_` / `PKV_` and the binding names below are taken.
//
// One call of reshape_and_cache_flash: for every token t with slot_mapping[t] >= 0, copy its
// keys and values [num_heads, head_size] into slot slot_mapping[t] of key_cache / value_cache
// (converted to fp8 as x / scale, round to nearest even, saturated, for fp8 caches). Tokens
// with slot -1 are padding and write nothing. Nothing else in the caches may change.
//
// Bindings (group 0; a shader uses any subset of them):
//   0  params        uniform Params            shapes, strides, codes (below)
//   1  key           storage, read  array<u32> keys, raw little-endian bytes: 16-bit elements
//   2  value         storage, read  array<u32>   two per word (element i in the low half when
//                                                 i is even), float elements one per word
//   3  key_cache     storage, read_write array<u32>  raw bytes, the run's layout and cache dtype
//   4  value_cache   storage, read_write array<u32>  (fp8: 4 codes per word, little-endian)
//   5  slot_mapping  storage, read  array<i32> one per token; -1 = padding
//   6  k_scale       storage, read  array<f32> fp8 divisors: 1 entry, or num_heads entries
//   7  v_scale       storage, read  array<f32>   when params.per_head_scales == 1
//
// The launch. The file declares its grid (`// paged-kv: grid=...`, default elements:1) and the
// tool dispatches ceil(threads / workgroup size) workgroups for it, with the workgroup size of
// the entry point's @workgroup_size (x only: y and z must be 1):
//   grid=elements:N  one invocation per N consecutive elements of one (token, head): for
//                    thread i, chunk = i % ceil(head_size / N), row = i / ceil(head_size / N),
//                    head = row % num_heads, token = row / num_heads; the last chunk of a head
//                    takes the rest. params.threads = num_tokens * num_heads * chunks.
//   grid=heads       one workgroup per (token, head): workgroup w is token w / num_heads, head
//                    w % num_heads.
//   grid=tokens      one workgroup per token.
// Workgroups are laid out as a 2-D grid (wide dispatches exceed the per-dimension limit):
// pkv_thread() and pkv_workgroup() give the linear numbers. The last workgroup may be partial:
// return when pkv_thread(id) >= params.threads.
//
// Caches are arrays of u32, so an invocation must write whole 4-byte words that no other
// invocation writes (WGSL has no byte stores; a read-modify-write of a word that another
// invocation also writes races). For grid=elements:N the tool checks this: N elements of the
// cache dtype must be a whole number of words (N even for 16-bit caches, a multiple of 4 for
// fp8), or the call is n/a. With grid=heads or grid=tokens the shader arranges it itself.
// Every call's head_size is a multiple of 8, so a head's row always starts on a word.
//
// Limits: each buffer is one binding, so a cache (or the keys) larger than the adapter's
// largest storage binding cannot run: the tool's default --num-blocks fits it, a larger
// explicit one is refused, and rows whose inputs do not fit are n/a.

struct Params {
    num_tokens: u32,
    num_heads: u32,
    head_size: u32,
    block_size: u32,
    num_blocks: u32,
    // Input strides in elements (keys and values share them): token t's head h starts at
    // t * input_token_stride + h * input_head_stride. With fused QKV inputs the token stride
    // is larger than num_heads * head_size; heads are always head_size apart.
    input_token_stride: u32,
    input_head_stride: u32,
    // Cache strides in elements: slot s = block * block_size + offset, head h starts at
    // block * cache_block_stride + offset * cache_slot_stride + h * cache_head_stride.
    // NHD: [num_blocks, block_size, num_heads, head_size]; HND: [num_blocks, num_heads,
    // block_size, head_size].
    cache_block_stride: u32,
    cache_slot_stride: u32,
    cache_head_stride: u32,
    cache_layout: u32,         // PKV_NHD or PKV_HND
    dtype: u32,                // PKV_HALF, PKV_BFLOAT16 or PKV_FLOAT (the inputs')
    cache_dtype: u32,          // PKV_AUTO (the inputs' dtype), PKV_FP8_E4M3 or PKV_FP8_E5M2
    per_head_scales: u32,      // 1: k_scale / v_scale hold num_heads divisors, 0: one each
    threads: u32,              // invocations with work (the grid's count, see above)
    threads_x: u32,            // invocations per row of the 2-D dispatch
    workgroups_x: u32,         // workgroups per row of the 2-D dispatch
    workgroups: u32,           // workgroups with work (grid=heads, grid=tokens)
    element_bytes: u32,        // bytes of one input element: 2 or 4
    cache_element_bytes: u32,  // bytes of one cache element: 1, 2 or 4
}

const PKV_NHD: u32 = 0u;
const PKV_HND: u32 = 1u;
const PKV_HALF: u32 = 0u;
const PKV_BFLOAT16: u32 = 1u;
const PKV_FLOAT: u32 = 2u;
const PKV_AUTO: u32 = 0u;
const PKV_FP8_E4M3: u32 = 1u;
const PKV_FP8_E5M2: u32 = 2u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> key: array<u32>;
@group(0) @binding(2) var<storage, read> value: array<u32>;
@group(0) @binding(3) var<storage, read_write> key_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> value_cache: array<u32>;
@group(0) @binding(5) var<storage, read> slot_mapping: array<i32>;
@group(0) @binding(6) var<storage, read> k_scale: array<f32>;
@group(0) @binding(7) var<storage, read> v_scale: array<f32>;

// The linear invocation number from @builtin(global_invocation_id).
fn pkv_thread(global_id: vec3<u32>) -> u32 {
    return global_id.y * params.threads_x + global_id.x;
}

// The linear workgroup number from @builtin(workgroup_id).
fn pkv_workgroup(workgroup_id: vec3<u32>) -> u32 {
    return workgroup_id.y * params.workgroups_x + workgroup_id.x;
}

// Element index in `key` / `value` of (token, head, element).
fn pkv_input_index(token: u32, head: u32, element: u32) -> u32 {
    return token * params.input_token_stride + head * params.input_head_stride + element;
}

// Element index in `key_cache` / `value_cache` of (slot, head, element).
fn pkv_cache_index(slot: u32, head: u32, element: u32) -> u32 {
    let block = slot / params.block_size;
    let offset = slot % params.block_size;
    return block * params.cache_block_stride + offset * params.cache_slot_stride
        + head * params.cache_head_stride + element;
}

// The word of `key` / `value` holding the first byte of input element `index`.
fn pkv_input_word(index: u32) -> u32 {
    return index / (4u / params.element_bytes);
}

// The word of a cache holding the first byte of cache element `index`.
fn pkv_cache_word(index: u32) -> u32 {
    return index / (4u / params.cache_element_bytes);
}

// pkv_half_bits, the f32 bits of a half, is in half.wgsl, appended after this file.

// Input element `index` of the keys (is_value false) or values as f32, exactly.
fn pkv_load(is_value: bool, index: u32) -> f32 {
    let word_index = pkv_input_word(index);
    let word = select(key[word_index], value[word_index], is_value);
    if params.dtype == PKV_FLOAT {
        return bitcast<f32>(word);
    }
    let bits = (word >> (16u * (index & 1u))) & 0xffffu;
    if params.dtype == PKV_BFLOAT16 {
        return bitcast<f32>(bits << 16u);
    }
    return bitcast<f32>(pkv_half_bits(bits));
}

// The fp8 divisor of head `head` for keys (is_value false) or values.
fn pkv_scale(is_value: bool, head: u32) -> f32 {
    let index = select(0u, head, params.per_head_scales == 1u);
    return select(k_scale[index], v_scale[index], is_value);
}
