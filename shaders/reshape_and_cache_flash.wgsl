// reshape_and_cache_flash for wgpu, NHD layout: for token t with slot s = slot_mapping[t],
// cache[s / block_size][s % block_size][h][d] = key[t][h][d] (and likewise for values), either
// bit for bit (cache dtype auto) or encoded as float8 (e4m3, or e5m2 with E5M2) after dividing
// by a scale (fp8), one per tensor or one per head (PER_HEAD). Keys and values may be slices
// of a fused QKV tensor (STRIDED): token t's row then starts Params.in_token_stride 16-byte units
// (elements, in the word kernel) after token t - 1's.
//
// Core WGSL only, so that every adapter (lavapipe included) runs it: there is no f16, bf16, fp8
// or 64-bit integer type, so all data moves as u32 words (16-bit elements two to a word) and the
// int64 slots arrive as (lo, hi) pairs of u32.
//
// A cache is larger than one storage binding may be (2 GiB on NVIDIA's Vulkan driver, 128 MiB
// on lavapipe), so the host splits each cache into chunks of whole cache blocks, one buffer per
// chunk. The fast entry points bind many key chunks and as many value chunks at once and each
// thread stores into the chunk its slot falls in; the host dispatches them once per group of
// chunks: once in all for caches up to 32 bindings (64 GiB on an H100) where the adapter allows
// 70 storage bindings per stage, else per group of 11. Inputs come in two parts (two token
// ranges of one binding each) per dispatch.
//
// Entry points:
// - reshape_and_cache_wide:  16 bytes of cache per thread, rows a multiple of 16 bytes, up to
//                            WIDE_CHUNKS chunks per dispatch (auto and fp8);
// - reshape_and_cache:       the same with up to CHUNKS chunks (32 storage bindings: lavapipe,
//                            Metal);
// - reshape_and_cache_one:   the same for one chunk per dispatch (one-chunk caches, and
//                            adapters that allow fewer than 27 storage bindings per stage);
// - reshape_and_cache_words: one u32 word per thread, for auto caches whose rows are not a
//                            multiple of 16 bytes (rows of an odd number of 16-bit elements
//                            share words with their neighbours: those words are written with
//                            atomics); one chunk per dispatch;
// - order_count, order_scan, order_scatter:
//                            the token order by slot (large calls over large caches);
// - fp8_table_build:         the threshold tables of the table fp8 encoder (FP8_TABLE);
// - reshape_and_cache_lut, reshape_and_cache_wide_lut, reshape_and_cache_one_lut:
//                            the three 16-byte kernels, for fp8 caches of 16-bit inputs by a
//                            lookup table (FP8_LUT on the host);
// - fp8_lut_build:           that table (every 16-bit pattern's code, both scales);
// - encode_fp8, encode_fp8_table:
//                            the fp8 encoders alone, one element per thread (for the exhaustive
//                            tests against the Rust reference);
// - fill, copy:              random cache contents (and the cold-timing cache flush), and the
//                            bandwidth probe.
// Binding numbers differ between entry points that use different variables, so that each
// pipeline's automatic layout holds exactly the bindings its entry point uses.
//
// Generated parts. This file holds the kernels' logic; build.rs appends to it what follows
// from numbers the host shares (src/backend/wgpu/bindings.rs) or repeats per chunk, and the
// backend loads the result, $OUT_DIR/reshape_and_cache_flash.wgsl:
// - a `const` for every number of bindings.rs, under the same name: WORKGROUP, CHUNKS,
//   WIDE_CHUNKS, TABLE_CODES, LUT_VALUES, SCALE_*, and the binding numbers (`*_BINDING`) that
//   the declarations below use;
// - the cache chunks k0..k31 and v0..v31 (key chunk j at KEY_CHUNK0_BINDING + j, value chunk j
//   at VALUE_CHUNK0_BINDING + j);
// - store_unit_<C> for C = CHUNKS and WIDE_CHUNKS (store_unit_11, store_unit_32): a switch that
//   stores into chunk j of a dispatch's group of C chunks;
// - the six 16-byte kernels, reshape_and_cache{,_wide,_one}{,_lut}.

// ---------------------------------------------------------------------------------------------
// Shape constants, fixed per pipeline (so that divisions by them compile to multiplications).

// Slots per cache block.
override BLOCK_SIZE: u32 = 16u;
// Cache blocks per chunk buffer.
override CHUNK_BLOCKS: u32 = 1u;
// reshape_and_cache*: 16-byte units per token row of the cache (num_heads * head_size *
// cache element size / 16).
override ROW_UNITS: u32 = 1u;
// Input element type: 0 half, 1 bfloat16, 2 float.
override IN_KIND: u32 = 0u;
// Whether the cache is fp8 (else auto: the input's bits).
override FP8: bool = false;
// fp8: whether the format is e5m2 (else e4m3).
override E5M2: bool = false;
// Whether keys and values are slices of a larger tensor (a fused QKV projection), whose token
// stride Params.in_token_stride gives; otherwise they are contiguous, with the stride implied
// by the row (the kernels compiled as they were before strides). One pipeline serves every
// strided shape. (Heads within a token are always contiguous here.)
override STRIDED: bool = false;
// fp8: one scale per head (read from the slots buffer, see head_scale) rather than per
// tensor; HEADS heads per token, HEAD_UNITS 16-byte cache units per head.
override PER_HEAD: bool = false;
override HEADS: u32 = 1u;
override HEAD_UNITS: u32 = 1u;
// reshape_and_cache*: whether tokens are taken in the order `order` gives (slot order, from the
// order_* passes) rather than as they come. Either way every token is written; the order only
// decides which tokens' rows are written at the same time.
override ORDERED: bool = false;
// reshape_and_cache*: 16-byte units of each cache per thread.
override UNITS: u32 = 1u;
// reshape_and_cache* (with UNITS 1): threads per 16-byte unit of each cache, 1 or 4. With 4,
// thread `part` of a unit writes its word `part` (four fp8 codes), so that a small fp8 call,
// whose time is each thread's chain of exact encodings rather than memory, runs four times the
// threads with a quarter of the chain each.
override SPLIT: u32 = 1u;
// fp8 through the threshold tables (see quantize_table) rather than quantize alone.
override FP8_TABLE: bool = false;
// fp8 without tables: the short exact encoder (quantize_fast) for the scales it handles, else
// quantize alone (off only to measure or test the long encoder).
override FP8_FAST: bool = true;
// reshape_and_cache_words: elements per token row, bytes per element (2 or 4), and u32 words a
// row's span touches (with rows of an odd number of 16-bit elements, (n + 1) / 2).
override ROW_ELEMENTS: u32 = 1u;
override ELEMENT_BYTES: u32 = 4u;
override ROW_WORDS: u32 = 1u;
// Test only: moves the fp8 quotient estimate by this many f32 ULP, to show that the encoder
// stays exact when the estimate is off (as a GPU's division may be). Always 0 in the kernels.
override ESTIMATE_SKEW: i32 = 0;

const KIND_HALF: u32 = 0u;
const KIND_BF16: u32 = 1u;

// A scale prepared on the host: the divisor's magnitude as significand * 2^(exponent - 23) with
// the significand normalised to [2^23, 2^24) (subnormal scales included), its reciprocal
// rounded to f32 (only used for a first estimate), its sign as the fp8 sign bit, and its kind (finite, zero, infinite, NaN).
struct Scale {
    significand: u32,
    exponent: i32,
    reciprocal: f32,
    sign: u32,
    kind: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Scale.kind is SCALE_FINITE, SCALE_ZERO, SCALE_INFINITE or SCALE_NAN (generated constants).

struct Params {
    // Tokens in this dispatch's input buffers.
    num_tokens: u32,
    // Slots in the whole cache (the host refuses caches of 2^32 slots or more).
    num_slots: u32,
    // The chunk bound to k0 / v0 in this dispatch.
    first_chunk: u32,
    // Threads with work: num_tokens * ROW_UNITS (or * ROW_WORDS).
    num_units: u32,
    // The fp8 sign bit (0x80 or 0) of the host's NaN for invalid operations (0/0, inf/inf): the
    // reference divides on the host, and x86 and ARM disagree on that sign.
    nan_sign: u32,
    // Input units (16 bytes) in key_in / value_in: units from here on are in key_in_hi /
    // value_in_hi (0xffffffff: all in the first part).
    split_input: u32,
    // PER_HEAD: where the per-head scales start in `slots`, in its (lo, hi) pairs: after the
    // slots of the dispatch's tokens, 2 * HEADS Scales (keys, then values), 4 pairs each.
    scales_at: u32,
    // STRIDED: input units (16 bytes; elements in the word kernel) from one token's keys (or
    // values) to the next token's.
    in_token_stride: u32,
    k_scale: Scale,
    v_scale: Scale,
}

@group(0) @binding(PARAMS_BINDING) var<uniform> params: Params;
// [num_tokens, num_heads, head_size] in the input dtype, 16 bytes per element.
@group(0) @binding(KEY_IN_BINDING) var<storage, read> key_in: array<vec4<u32>>;
@group(0) @binding(VALUE_IN_BINDING) var<storage, read> value_in: array<vec4<u32>>;
// slot_mapping as int64: (lo, hi) words.
@group(0) @binding(SLOTS_BINDING) var<storage, read> slots: array<vec2<u32>>;

// The cache chunks k0..k31, v0..v31 of the dispatch's group are declared in the generated part.
// With ORDERED, position p of the dispatch's work is token order[p] (a permutation of the
// dispatch's tokens); otherwise this is bound to a dummy buffer and not read.
@group(0) @binding(ORDER_BINDING) var<storage, read> order: array<u32>;
// The inputs of the dispatch's tokens past the first binding's worth (see Params.split_input).
@group(0) @binding(KEY_IN_HI_BINDING) var<storage, read> key_in_hi: array<vec4<u32>>;
@group(0) @binding(VALUE_IN_HI_BINDING) var<storage, read> value_in_hi: array<vec4<u32>>;

// reshape_and_cache_words: the same inputs as words, and one chunk of each cache.
@group(0) @binding(KEY_WORDS_BINDING) var<storage, read> key_words: array<u32>;
@group(0) @binding(VALUE_WORDS_BINDING) var<storage, read> value_words: array<u32>;
@group(0) @binding(KEY_CACHE_WORDS_BINDING) var<storage, read_write> key_cache_words: array<atomic<u32>>;
@group(0) @binding(VALUE_CACHE_WORDS_BINDING) var<storage, read_write> value_cache_words: array<atomic<u32>>;

// The fp8 encoders (exact quantisation, threshold tables, lookup tables) are in fp8.wgsl,
// which build.rs appends to this file.

// Input unit `index` (16 bytes) of the keys or the values.
fn load_input(is_value: bool, index: u32) -> vec4<u32> {
    if index >= params.split_input {
        let j = index - params.split_input;
        if is_value {
            return value_in_hi[j];
        }
        return key_in_hi[j];
    }
    if is_value {
        return value_in[index];
    }
    return key_in[index];
}

// Head h's scale of the keys or the values (PER_HEAD): 2 * HEADS Scales after the dispatch's
// slots in `slots`, keys' heads first, each as 4 (lo, hi) pairs in the order of Scale's
// fields.
fn head_scale(is_value: bool, h: u32) -> Scale {
    let at = params.scales_at + 4u * (select(0u, HEADS, is_value) + h);
    let a = slots[at];
    let b = slots[at + 1u];
    let c = slots[at + 2u];
    return Scale(a.x, bitcast<i32>(a.y), bitcast<f32>(b.x), b.y, c.x, 0u, 0u, 0u);
}

// How the elements of a unit that is unit `u` of its token's row are encoded: the tensor's (or
// head's) scale, for the threshold tables the table's first code, whether the short encoder
// handles the scale, and for either the scale's reciprocal.
struct UnitEncoder {
    scale: Scale,
    base: u32,
    reciprocal: f32,
    fast: bool,
}

fn unit_encoder(is_value: bool, u: u32) -> UnitEncoder {
    var e = UnitEncoder(params.k_scale, 0u, 0.0, false);
    if is_value {
        e.scale = params.v_scale;
        e.base = TABLE_CODES;
    }
    if PER_HEAD {
        // (The threshold tables are per tensor: the host does not take them with PER_HEAD.)
        e.scale = head_scale(is_value, u / HEAD_UNITS);
    }
    e.fast = !FP8_TABLE && fast_applies(e.scale);
    if FP8_TABLE || e.fast {
        e.reciprocal = scale_reciprocal(e.scale);
    }
    return e;
}

// One word of fp8 codes: of the four float elements of input unit `w`, and of the four 16-bit
// elements of input words `a` and `b` (element order: a's low half first).
fn encode_floats(w: vec4<u32>, e: UnitEncoder) -> u32 {
    return pack4(encode(w.x, e), encode(w.y, e), encode(w.z, e), encode(w.w, e));
}

fn encode_halves(a: u32, b: u32, e: UnitEncoder) -> u32 {
    let x = quantize_pair(a, e);
    let y = quantize_pair(b, e);
    return pack4(x.x, x.y, y.x, y.y);
}

// The input bytes of one 16-byte cache unit, loaded before its slot (see the kernels in the
// header): the unit's own input unit (auto), or its 32 (16-bit inputs) or 64 (float) bytes of
// elements for fp8 in a..d, in order; with SPLIT, the one input unit whose words a thread's word
// encodes, in a.
struct UnitInput {
    a: vec4<u32>,
    b: vec4<u32>,
    c: vec4<u32>,
    d: vec4<u32>,
}

// The input of the unit (or, with SPLIT, of word `part` of the unit) whose input starts at input
// unit `first` (counted over the dispatch's inputs) of the keys or the values.
fn unit_input(is_value: bool, first: u32, part: u32) -> UnitInput {
    var w = UnitInput(vec4<u32>(), vec4<u32>(), vec4<u32>(), vec4<u32>());
    if SPLIT > 1u {
        // Word `part` of a unit of 16-bit elements is words 2k and 2k + 1 of input unit j, with
        // part = 2j + k; of floats, input unit `part`.
        w.a = load_input(is_value, first + select(part / 2u, part, IN_KIND == 2u));
        return w;
    }
    w.a = load_input(is_value, first);
    if input_units_per_unit() > 1u {
        w.b = load_input(is_value, first + 1u);
    }
    if input_units_per_unit() > 2u {
        w.c = load_input(is_value, first + 2u);
        w.d = load_input(is_value, first + 3u);
    }
    return w;
}

// The two words of 16-bit elements that word `part` of a split unit encodes, of its input `w`.
fn half_words(w: UnitInput, part: u32) -> vec2<u32> {
    let h = part % 2u * 2u;
    return vec2<u32>(w.a[h], w.a[h + 1u]);
}

// The 16 cache bytes of an fp8 unit whose input starts at input unit `first` (counted over the
// dispatch's inputs) and that is unit `u` of its token's row, each input unit loaded as it is
// encoded (a whole unit's 32 or 64 input bytes held at once cost float calls twice their time:
// see inputs_first). Loops, so that the encoder's code appears once, not 16 times.
fn cache_unit(is_value: bool, first: u32, u: u32) -> vec4<u32> {
    let e = unit_encoder(is_value, u);
    var out: vec4<u32>;
    if IN_KIND == 2u {
        for (var j = 0u; j < 4u; j += 1u) {
            out[j] = encode_floats(load_input(is_value, first + j), e);
        }
    } else {
        for (var j = 0u; j < 2u; j += 1u) {
            let w = load_input(is_value, first + j);
            out[2u * j] = encode_halves(w.x, w.y, e);
            out[2u * j + 1u] = encode_halves(w.z, w.w, e);
        }
    }
    return out;
}

// Word `part` (elements 4 * part to 4 * part + 3) of cache_unit's result, of its own input `w`
// (SPLIT).
fn cache_word(is_value: bool, w: UnitInput, u: u32, part: u32) -> u32 {
    if !FP8 {
        return w.a[part];
    }
    let e = unit_encoder(is_value, u);
    if IN_KIND == 2u {
        return encode_floats(w.a, e);
    }
    let h = half_words(w, part);
    return encode_halves(h.x, h.y, e);
}

// `--ceiling pattern` (src/pattern.rs): cache_unit with the arithmetic removed, for the
// generated pattern_* entry points: the same input units are read, and an fp8 cache gets the
// most significant byte of each element (no scale is read). Auto caches: the same copy.
fn pattern_unit(is_value: bool, w: UnitInput, u: u32) -> vec4<u32> {
    if !FP8 {
        return w.a;
    }
    if IN_KIND == 2u {
        return vec4<u32>(
            pattern_floats(w.a),
            pattern_floats(w.b),
            pattern_floats(w.c),
            pattern_floats(w.d),
        );
    }
    return vec4<u32>(
        pattern_halves(w.a.x, w.a.y),
        pattern_halves(w.a.z, w.a.w),
        pattern_halves(w.b.x, w.b.y),
        pattern_halves(w.b.z, w.b.w),
    );
}

// Word `part` of pattern_unit's result, of its own input `w` (SPLIT).
fn pattern_word(is_value: bool, w: UnitInput, u: u32, part: u32) -> u32 {
    if !FP8 {
        return w.a[part];
    }
    if IN_KIND == 2u {
        return pattern_floats(w.a);
    }
    let h = half_words(w, part);
    return pattern_halves(h.x, h.y);
}

// The pattern's word of four float elements, and of four 16-bit elements (as encode_floats
// and encode_halves): each element's most significant byte.
fn pattern_floats(w: vec4<u32>) -> u32 {
    return pack4(w.x >> 24u, w.y >> 24u, w.z >> 24u, w.w >> 24u);
}

fn pattern_halves(a: u32, b: u32) -> u32 {
    return pack4((a >> 8u) & 0xffu, a >> 24u, (b >> 8u) & 0xffu, b >> 24u);
}

// ---------------------------------------------------------------------------------------------
// Slots and chunks.

const NO_SLOT: u32 = 0xffffffffu;

// The slot of token t, or NO_SLOT for padding (-1) and anything outside the cache (checked on
// the host as well: this is defence in depth, and keeps stray slots from writing anywhere).
fn slot_of(t: u32) -> u32 {
    let s = slots[t];
    if s.y != 0u || s.x >= params.num_slots {
        return NO_SLOT;
    }
    return s.x;
}

// Where a slot's row lives: (chunk, row index within the chunk).
fn locate(slot: u32) -> vec2<u32> {
    let block = slot / BLOCK_SIZE;
    let offset = slot - block * BLOCK_SIZE;
    let chunk = block / CHUNK_BLOCKS;
    let local_block = block - chunk * CHUNK_BLOCKS;
    return vec2<u32>(chunk, local_block * BLOCK_SIZE + offset);
}

fn thread_index(workgroup: vec3<u32>, workgroups: vec3<u32>, local: u32) -> u32 {
    // Two-dimensional grids: more than 65535 workgroups need a second dimension.
    return (workgroup.y * workgroups.x + workgroup.x) * WORKGROUP + local;
}

// 16-byte input units per 16-byte cache unit: the same bytes (auto), or 16 elements of two or
// four bytes (fp8).
fn input_units_per_unit() -> u32 {
    if !FP8 {
        return 1u;
    }
    return select(2u, 4u, IN_KIND == 2u);
}

// Where thread i's unit comes from: x = its token (order[position] with ORDERED), y = the
// unit's index within its token's row, z = its first input unit, w = 1 if there is such a unit
// (i < num_units), else 0 (and x, z = 0, so that its inputs can be loaded all the same). Thread
// i writes 16 bytes of each cache: unit i % ROW_UNITS of the token at position i / ROW_UNITS.
fn unit_source(i: u32) -> vec4<u32> {
    if i >= params.num_units {
        return vec4<u32>(0u, 0u, 0u, 0u);
    }
    let position = i / ROW_UNITS;
    let u = i - position * ROW_UNITS;
    var t = position;
    if ORDERED {
        t = order[position];
    }
    var token_units = ROW_UNITS * input_units_per_unit();
    if STRIDED {
        token_units = params.in_token_stride;
    }
    return vec4<u32>(t, u, t * token_units + u * input_units_per_unit(), 1u);
}

// Where the unit of `source` (unit_source) goes: x = the chunk within this dispatch's group it
// stores into (NO_SLOT when it has nothing to write here), y = the unit index within that
// chunk.
fn unit_place(source: vec4<u32>, group_chunks: u32) -> vec2<u32> {
    if source.w == 0u {
        return vec2<u32>(NO_SLOT, 0u);
    }
    let slot = slot_of(source.x);
    if slot == NO_SLOT {
        return vec2<u32>(NO_SLOT, 0u);
    }
    let place = locate(slot);
    // Chunks outside this dispatch's group are another dispatch's work (u32 wrap-around makes
    // chunks before the group large).
    let chunk = place.x - params.first_chunk;
    if chunk >= group_chunks {
        return vec2<u32>(NO_SLOT, 0u);
    }
    return vec2<u32>(chunk, place.y * ROW_UNITS + source.y);
}

// A thread writes UNITS units of each cache, WORKGROUP apart, so that a workgroup covers
// WORKGROUP * UNITS consecutive units; unit by unit (a thread that loads all its units before
// storing any needs an array the driver may keep in memory rather than registers).
fn first_unit(workgroup: vec3<u32>, workgroups: vec3<u32>, local: u32) -> u32 {
    return (workgroup.y * workgroups.x + workgroup.x) * WORKGROUP * UNITS + local;
}

// The 16-byte kernels (generated: see the header). Each is, for the group of C chunks it binds
// (WIDE_CHUNKS, CHUNKS or 1):
//
//     load_fp8_table(local);               // (not in the *_lut kernels)
//     let first = first_unit(workgroup, workgroups, local);
//     for (var j = 0u; j < UNITS; j += 1u) {
//         let i = first + j * WORKGROUP;
//         let part = i % SPLIT;
//         let source = unit_source(i / SPLIT);
//         var k: UnitInput;  var v: UnitInput;
//         if inputs_first() {       // (true in the *_lut kernels)
//             k = unit_input(false, source.z, part);
//             v = unit_input(true, source.z, part);
//         }
//         let place = unit_place(source, C);
//         if place.x != NO_SLOT {
//             if SPLIT > 1u {            // one word of each unit, by cache_word:
//                 store_word_<C>(place.x, place.y, part, cache_word(false, k, source.y, part),
//                                cache_word(true, v, source.y, part));
//             } else if inputs_first() { // auto: the unit is its input
//                 store_unit_<C>(place.x, place.y, k.a, v.a);   // (k0 / v0 for one chunk)
//             } else {                   // fp8 whole units, loaded as they are encoded
//                 store_unit_<C>(place.x, place.y, cache_unit(false, source.z, source.y),
//                                cache_unit(true, source.z, source.y));
//             }
//         }
//     }
//
// The *_lut kernels, for fp8 caches of 16-bit inputs by the lookup table, always load first and
// encode with cache_unit_lut (cache_word_lut): each element's code read from fp8_lut. Entry
// points of their own, because a binding that a function uses counts against every entry point
// that calls it (whatever the override constants): the LUT's storage binding stays out of the
// others.
// The wide kernels bind WIDE_CHUNKS chunks of each cache, for adapters that allow
// 2 * WIDE_CHUNKS + 6 storage bindings per stage: a whole 32 GiB cache in one dispatch.

// Whether a kernel loads its inputs before the slot, whatever the slot: the two loads then
// overlap rather than follow each other (a padding token's inputs exist like any other's; a
// thread without a unit loads unit 0). Auto units and split fp8 units do (split T = 2 4.16 ->
// 3.95 us on an H100), and the lookup table's kernels always (fp8 T = 65536 2311 -> 2201 us);
// whole units encoded by quantize_fast or the threshold tables load each input unit as they
// encode it, after the slot: 32 or 64 input bytes held ahead of the encoder doubled the time of
// float calls of 8192 tokens (docs/perf-log-wgpu.md, sixth session).
fn inputs_first() -> bool {
    return !FP8 || SPLIT > 1u;
}

// ---------------------------------------------------------------------------------------------
// Slot order: a counting sort of a dispatch's tokens by slot bucket (a bucket being a range of
// slots_per_bucket consecutive slots), run on the device as part of every call, so that the
// workgroups that run at the same time write rows close together in the cache rather than
// spread over all of it. Three passes per token range:
// - order_count:   rank[t] = the token's place among its bucket's tokens (atomic counter);
// - order_scan:    one workgroup turns the counts into each bucket's first position, and
//                  clears the counts for the next call;
// - order_scatter: order[start[bucket] + rank[t]] = t.
// Padding tokens (and slots outside the cache) go to a last bucket of their own.

struct OrderParams {
    num_tokens: u32,
    num_slots: u32,
    slots_per_bucket: u32,
    // Buckets of slots; bucket `buckets` holds the rest.
    buckets: u32,
}

@group(0) @binding(ORDER_PARAMS_BINDING) var<uniform> order_params: OrderParams;
@group(0) @binding(BUCKET_COUNTS_BINDING) var<storage, read_write> bucket_counts: array<atomic<u32>>;
@group(0) @binding(TOKEN_RANKS_BINDING) var<storage, read_write> token_ranks: array<u32>;
@group(0) @binding(SCAN_COUNTS_BINDING) var<storage, read_write> scan_counts: array<u32>;
@group(0) @binding(BUCKET_STARTS_BINDING) var<storage, read_write> bucket_starts: array<u32>;
@group(0) @binding(SCATTER_RANKS_BINDING) var<storage, read> scatter_ranks: array<u32>;
@group(0) @binding(SCATTER_STARTS_BINDING) var<storage, read> scatter_starts: array<u32>;
@group(0) @binding(ORDER_OUT_BINDING) var<storage, read_write> order_out: array<u32>;

fn bucket_of(t: u32) -> u32 {
    let s = slots[t];
    if s.y != 0u || s.x >= order_params.num_slots {
        return order_params.buckets;
    }
    return s.x / order_params.slots_per_bucket;
}

@compute @workgroup_size(WORKGROUP)
fn order_count(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let t = thread_index(workgroup, workgroups, local);
    if t < order_params.num_tokens {
        token_ranks[t] = atomicAdd(&bucket_counts[bucket_of(t)], 1u);
    }
}

var<workgroup> scan_sums: array<u32, WORKGROUP>;

// One workgroup: thread j takes a run of consecutive buckets.
@compute @workgroup_size(WORKGROUP)
fn order_scan(@builtin(local_invocation_index) local: u32) {
    let n = order_params.buckets + 1u;
    let per = (n + WORKGROUP - 1u) / WORKGROUP;
    let first = local * per;
    var sum = 0u;
    for (var j = 0u; j < per; j += 1u) {
        if first + j < n {
            sum += scan_counts[first + j];
        }
    }
    scan_sums[local] = sum;
    workgroupBarrier();
    // Inclusive scan of the runs' sums (Hillis-Steele).
    for (var d = 1u; d < WORKGROUP; d <<= 1u) {
        var add = 0u;
        if local >= d {
            add = scan_sums[local - d];
        }
        workgroupBarrier();
        scan_sums[local] += add;
        workgroupBarrier();
    }
    var start = scan_sums[local] - sum;
    for (var j = 0u; j < per; j += 1u) {
        let b = first + j;
        if b < n {
            let count = scan_counts[b];
            bucket_starts[b] = start;
            start += count;
            scan_counts[b] = 0u;
        }
    }
}

@compute @workgroup_size(WORKGROUP)
fn order_scatter(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let t = thread_index(workgroup, workgroups, local);
    if t < order_params.num_tokens {
        order_out[scatter_starts[bucket_of(t)] + scatter_ranks[t]] = t;
    }
}

// ---------------------------------------------------------------------------------------------
// Auto caches whose rows are not a multiple of 16 bytes: one u32 word of each cache per thread.

// Element `e` of a row-major input, as 16 bits in the low half (two to a word).
fn input_half(is_value: bool, e: u32) -> u32 {
    var word: u32;
    if is_value {
        word = value_words[e / 2u];
    } else {
        word = key_words[e / 2u];
    }
    return (word >> ((e & 1u) * 16u)) & 0xffffu;
}

// Writes `bits` under `mask` into a cache word. Words shared with a neighbouring slot's row are
// updated with atomics so that two tokens writing the two halves of one word cannot lose either
// half; clearing and then setting only our own bits leaves the other half alone whatever order
// the four operations run in.
fn store_word(is_value: bool, index: u32, bits: u32, mask: u32) {
    if is_value {
        if mask == 0xffffffffu {
            atomicStore(&value_cache_words[index], bits);
        } else {
            atomicAnd(&value_cache_words[index], ~mask);
            atomicOr(&value_cache_words[index], bits);
        }
    } else {
        if mask == 0xffffffffu {
            atomicStore(&key_cache_words[index], bits);
        } else {
            atomicAnd(&key_cache_words[index], ~mask);
            atomicOr(&key_cache_words[index], bits);
        }
    }
}

fn write_words(is_value: bool, t: u32, row: u32, u: u32) {
    var token_elements = ROW_ELEMENTS;
    if STRIDED {
        token_elements = params.in_token_stride;
    }
    if ELEMENT_BYTES == 4u {
        let e = t * token_elements + u;
        var bits: u32;
        if is_value {
            bits = value_words[e];
        } else {
            bits = key_words[e];
        }
        store_word(is_value, row * ROW_ELEMENTS + u, bits, 0xffffffffu);
        return;
    }
    // 16-bit elements: the row covers cache elements [first, first + ROW_ELEMENTS) of the
    // chunk; word w holds elements 2w and 2w + 1.
    let first = row * ROW_ELEMENTS;
    let w = first / 2u + u;
    var bits = 0u;
    var mask = 0u;
    for (var half = 0u; half < 2u; half += 1u) {
        let e = 2u * w + half;
        if e >= first && e < first + ROW_ELEMENTS {
            bits |= input_half(is_value, t * token_elements + (e - first)) << (16u * half);
            mask |= 0xffffu << (16u * half);
        }
    }
    if mask != 0u {
        store_word(is_value, w, bits, mask);
    }
}

// Thread i writes word i % ROW_WORDS of the span of token i / ROW_WORDS's row.
@compute @workgroup_size(WORKGROUP)
fn reshape_and_cache_words(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = thread_index(workgroup, workgroups, local);
    if i >= params.num_units {
        return;
    }
    let t = i / ROW_WORDS;
    let slot = slot_of(t);
    if slot == NO_SLOT {
        return;
    }
    let place = locate(slot);
    if place.x != params.first_chunk {
        return;
    }
    let u = i - t * ROW_WORDS;
    write_words(false, t, place.y, u);
    write_words(true, t, place.y, u);
}

// ---------------------------------------------------------------------------------------------
// The fp8 encoder alone: element i of `encode_in` (f32 bits, or 16 bits in the low half for
// half and bfloat16, per IN_KIND) to `encode_out[i]`, by quantize_fast where it applies (and
// FP8_FAST), else by quantize.

struct EncodeParams {
    count: u32,
    nan_sign: u32,
    _pad0: u32,
    _pad1: u32,
    scale: Scale,
}

@group(0) @binding(ENCODE_PARAMS_BINDING) var<uniform> encode_params: EncodeParams;
@group(0) @binding(ENCODE_IN_BINDING) var<storage, read> encode_in: array<u32>;
@group(0) @binding(ENCODE_OUT_BINDING) var<storage, read_write> encode_out: array<u32>;

@compute @workgroup_size(WORKGROUP)
fn encode_fp8(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = thread_index(workgroup, workgroups, local);
    if i >= encode_params.count {
        return;
    }
    var x = encode_in[i];
    if IN_KIND != 2u {
        x = element16_to_f32_bits(x & 0xffffu);
    }
    encode_out[i] = quantize_exact(x, encode_params.scale, encode_params.nan_sign);
}

// The table encoder alone (FP8_TABLE set; table 0 built from encode_params.scale).
@compute @workgroup_size(WORKGROUP)
fn encode_fp8_table(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    load_fp8_table(local);
    let i = thread_index(workgroup, workgroups, local);
    if i >= encode_params.count {
        return;
    }
    var x = encode_in[i];
    if IN_KIND != 2u {
        x = element16_to_f32_bits(x & 0xffffu);
    }
    let scale = encode_params.scale;
    encode_out[i] = quantize_table(x, 0u, scale_reciprocal(scale), scale.sign);
}

// ---------------------------------------------------------------------------------------------
// Random cache contents: word i of a chunk is a hash of (seed, chunk, i), so that a fill never
// depends on how the work is split and needs no host memory.

struct FillParams {
    seed_lo: u32,
    seed_hi: u32,
    chunk: u32,
    words: u32,
}

@group(0) @binding(FILL_PARAMS_BINDING) var<uniform> fill_params: FillParams;
@group(0) @binding(FILL_OUT_BINDING) var<storage, read_write> fill_out: array<u32>;

// An integer finaliser: xor-shifts and odd multipliers, each step a bijection of u32.
fn mix32(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x21f0aaadu;
    h ^= h >> 15u;
    h *= 0x735a2d97u;
    h ^= h >> 15u;
    return h;
}

@compute @workgroup_size(WORKGROUP)
fn fill(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = thread_index(workgroup, workgroups, local);
    if i >= fill_params.words {
        return;
    }
    let stream = mix32(fill_params.seed_lo ^ mix32(fill_params.seed_hi ^ mix32(fill_params.chunk)));
    fill_out[i] = mix32(i ^ stream) ^ mix32(i + 0x9e3779b9u);
}

// ---------------------------------------------------------------------------------------------
// The copy-bandwidth probe: 16 bytes per thread.

@group(0) @binding(COPY_SRC_BINDING) var<storage, read> copy_src: array<vec4<u32>>;
@group(0) @binding(COPY_DST_BINDING) var<storage, read_write> copy_dst: array<vec4<u32>>;

@compute @workgroup_size(WORKGROUP)
fn copy(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = thread_index(workgroup, workgroups, local);
    if i < arrayLength(&copy_dst) {
        copy_dst[i] = copy_src[i];
    }
}
