// fp8 encoding for reshape_and_cache_flash.wgsl (build.rs appends this file to it, so the two
// form one module: the bindings, params and helpers used here are declared there).

// ---------------------------------------------------------------------------------------------
// float8 e4m3, bit for bit as src/fp8.rs: e4m3_from_f32(x / scale) with the division in f32,
// correctly rounded, then rounded to nearest even; +-448 and beyond (infinity too) saturate to
// 0x7e / 0xfe; NaN gives 0x7f with the NaN's sign. With E5M2, e5m2_from_f32 likewise: +-57344
// and beyond saturate to 0x7b / 0xfb, NaN gives 0x7f. Everything below holds for both formats
// with the format's constants (fp8_* below): its largest value, subnormal range and grid.
//
// WGSL only promises f32 division within 2.5 ULP (and GPUs may flush subnormals), so a plain
// x / scale can land on the other side of an e4m3 rounding boundary than the correctly rounded
// quotient. The encoder therefore never relies on the division being exact:
// 1. x and the scale are split into 24-bit integer significands and exponents (exact, for
//    subnormals too), so that Q = x / scale = (mx / ms) * 2^e with mx / ms in (1/2, 2);
// 2. e alone settles quotients below 2^-10 (code 0) and above 512 (saturated);
// 3. otherwise y0 = mx * (1 / ms) * 2^e, an estimate within a few ULP of Q, gives the code,
//    unless y0 lies within 256 ULP of an e4m3 rounding boundary (a midpoint m between two
//    neighbouring codes). Away from m, the correctly rounded quotient is on the same side of m
//    as y0, so it has the same code;
// 4. near m, the code follows from exact integer comparisons of Q with the two f32 rounding
//    thresholds around m: RN(Q) > m exactly when Q > m + ulp/2, RN(Q) < m exactly when
//    Q < m - ulp_below/2, and otherwise RN(Q) == m, a tie that goes to the even code.
//    Q > T with T = N * 2^f is mx * 2^(e - f) > N * ms, compared as 64-bit integers.
// Only f32 multiplications by powers of two, floor and subtraction of nearby values are used
// on the way, all exact in the normal range the values live in.

// The format's constants: the f32 bits of its largest finite value (where saturation starts),
// that value's code, the f32 bits of its smallest normal value, the exponent of its subnormal
// grid, and its mantissa bits.
fn fp8_max_bits() -> u32 {
    return select(0x43e00000u, 0x47600000u, E5M2);
}

fn fp8_max_code() -> u32 {
    return select(0x7eu, 0x7bu, E5M2);
}

fn fp8_min_normal_bits() -> u32 {
    return select(0x3c800000u, 0x38800000u, E5M2);
}

fn fp8_subnormal_exponent() -> i32 {
    return select(-9, -16, E5M2);
}

fn fp8_mantissa_bits() -> i32 {
    return select(3, 2, E5M2);
}

// The f32 bits that turn an f32 exponent field into the format's: (127 - bias) << 23.
fn fp8_rebias_bits() -> u32 {
    return select(0x3c000000u, 0x38000000u, E5M2);
}

// The format's code of a non-negative finite f32 (its bits), as src/fp8.rs::e4m3_from_f32 and
// e5m2_from_f32.
fn fp8_magnitude(magnitude: u32) -> u32 {
    if E5M2 {
        return fp8_code(magnitude, 2u, 15u, 0x47600000u, 0x7bu);
    }
    return fp8_code(magnitude, 3u, 7u, 0x43e00000u, 0x7eu);
}

// The code of a non-negative finite f32 (its bits) in an fp8 format with `mantissa_bits` and
// exponent bias `bias`, as src/fp8.rs::encode: magnitudes of at least `max_bits` (the largest
// finite value, code `max_code`) saturate; the rest round to nearest even.
fn fp8_code(magnitude: u32, mantissa_bits: u32, bias: u32, max_bits: u32,
            max_code: u32) -> u32 {
    if magnitude >= max_bits {
        return max_code;
    }
    if magnitude < ((128u - bias) << 23u) {
        // Below the smallest normal: multiples of 2^(1 - bias - mantissa_bits); scaling by the
        // inverse is exact and round() ties to even. (A flushed f32 subnormal here is far below
        // half a step and encodes as 0 either way.)
        let step = bitcast<f32>((bias - 1u + mantissa_bits + 127u) << 23u);
        return u32(round(bitcast<f32>(magnitude) * step));
    }
    let dropped_bits = 23u - mantissa_bits;
    let exponent = (magnitude >> 23u) + bias - 127u;
    let mantissa = magnitude & 0x7fffffu;
    var encoded = (exponent << mantissa_bits) | (mantissa >> dropped_bits);
    let dropped = mantissa & ((1u << dropped_bits) - 1u);
    let half = 1u << (dropped_bits - 1u);
    if dropped > half || (dropped == half && (encoded & 1u) == 1u) {
        encoded += 1u;
    }
    return encoded;
}

// 2^e as f32 for e in the normal range.
fn pow2(e: i32) -> f32 {
    return bitcast<f32>(u32(e + 127) << 23u);
}

// a * b as a 64-bit (lo, hi) pair, from 16-bit halves.
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let low = a0 * b0;
    let mid0 = a1 * b0;
    let mid1 = a0 * b1;
    let high = a1 * b1;
    // mid0 + mid1 can carry out of 32 bits: add them in two steps.
    let mid = mid0 + mid1;
    let mid_carry = select(0u, 0x10000u, mid < mid0);
    let lo = low + (mid << 16u);
    let lo_carry = select(0u, 1u, lo < low);
    let hi = high + (mid >> 16u) + mid_carry + lo_carry;
    return vec2<u32>(lo, hi);
}

// -1, 0 or 1 as a < b, a == b, a > b for 64-bit (lo, hi) pairs.
fn compare_wide(a: vec2<u32>, b: vec2<u32>) -> i32 {
    if a.y != b.y {
        return select(-1, 1, a.y > b.y);
    }
    if a.x != b.x {
        return select(-1, 1, a.x > b.x);
    }
    return 0;
}

// The format's code of the magnitude of Q = (mx / ms) * 2^e for e in [-10, 9] (e4m3) or
// [-17, 16] (e5m2).
fn quantize_magnitude(mx: u32, scale: Scale, e: i32) -> u32 {
    // Both factors are exact f32s; the product is within about 1.5 ULP of mx / ms.
    let estimate = f32(mx) * scale.reciprocal * pow2(e);
    let y0 = bitcast<f32>(u32(i32(bitcast<u32>(estimate)) + ESTIMATE_SKEW));
    let y0_bits = bitcast<u32>(y0);
    if y0_bits >= fp8_max_bits() {
        return fp8_max_code();
    }
    let code = fp8_magnitude(y0_bits);

    // The format's grid spacing at y0 and the rounding boundary (midpoint) nearest to y0.
    let y0_exponent = i32(y0_bits >> 23u) - 127;
    let grid_exponent = select(
        y0_exponent - fp8_mantissa_bits(),
        fp8_subnormal_exponent(),
        y0_bits < fp8_min_normal_bits(),
    );
    let below = floor(y0 * pow2(-grid_exponent));
    let m = (below + 0.5) * pow2(grid_exponent);
    if abs(y0 - m) > pow2(y0_exponent - 15) {
        return code;
    }

    // y0 is within 256 ULP of m: decide exactly where RN(Q) lies relative to m.
    let lower = fp8_magnitude(bitcast<u32>(below * pow2(grid_exponent)));
    let upper = lower + 1u;
    let m_bits = bitcast<u32>(m);
    let m_exponent = i32(m_bits >> 23u) - 127;
    let m_significand = (m_bits & 0x7fffffu) | 0x800000u;
    // Thresholds in units of 2^(m_exponent - 25): m +- half an f32 ULP. Just below a power of
    // two the ULP is half as large.
    let high_threshold = 4u * m_significand + 2u;
    let low_threshold = select(4u * m_significand - 2u, 4u * m_significand - 1u, (m_bits & 0x7fffffu) == 0u);
    // Q vs T = N * 2^(m_exponent - 25)  <=>  mx * 2^shift vs N * ms. Q is close to m, so e is
    // m_exponent - 1, m_exponent or m_exponent + 1 and shift is 24, 25 or 26.
    let shift = e - m_exponent + 25;
    if shift < 1 || shift > 31 {
        return code;
    }
    let s = u32(shift);
    let scaled_x = vec2<u32>(mx << s, mx >> (32u - s));
    if compare_wide(scaled_x, mul_wide(high_threshold, scale.significand)) > 0 {
        return upper;
    }
    if compare_wide(scaled_x, mul_wide(low_threshold, scale.significand)) < 0 {
        return lower;
    }
    // RN(Q) == m exactly: a tie between two codes, to the even one.
    return select(upper, lower, (lower & 1u) == 0u);
}

// The format's code (in the low byte) of x / scale, x given as f32 bits.
fn quantize(x: u32, scale: Scale, nan_sign: u32) -> u32 {
    let x_sign = (x >> 24u) & 0x80u;
    let magnitude = x & 0x7fffffffu;
    // A NaN input stays NaN with its own sign (the division propagates it).
    if magnitude > 0x7f800000u {
        return x_sign | 0x7fu;
    }
    let sign = x_sign ^ scale.sign;
    switch scale.kind {
        case SCALE_NAN: {
            return scale.sign | 0x7fu;
        }
        case SCALE_ZERO: {
            // 0 / 0 is an invalid operation; anything else over zero is infinite.
            return select(sign | fp8_max_code(), nan_sign | 0x7fu, magnitude == 0u);
        }
        case SCALE_INFINITE: {
            return select(sign, nan_sign | 0x7fu, magnitude == 0x7f800000u);
        }
        default: {}
    }
    if magnitude == 0u {
        return sign;
    }
    if magnitude == 0x7f800000u {
        return sign | fp8_max_code();
    }
    // x = mx * 2^(ex - 23) with mx in [2^23, 2^24), subnormal inputs included.
    var mx: u32;
    var ex: i32;
    if magnitude < 0x800000u {
        let normalise = countLeadingZeros(magnitude) - 8u;
        mx = magnitude << normalise;
        ex = -126 - i32(normalise);
    } else {
        mx = (magnitude & 0x7fffffu) | 0x800000u;
        ex = i32(magnitude >> 23u) - 127;
    }
    // Q = (mx / ms) * 2^e with mx / ms in (1/2, 2).
    let e = ex - scale.exponent;
    // e4m3: Q < 2^-10 rounds to 0 (2^-10 itself ties to even, 0), Q > 512 saturates; e5m2:
    // Q < 2^-17 and Q > 2^16 likewise.
    if e <= select(-11, -18, E5M2) {
        return sign;
    }
    if e >= select(10, 17, E5M2) {
        return sign | fp8_max_code();
    }
    return sign | quantize_magnitude(mx, scale, e);
}

// ---------------------------------------------------------------------------------------------
// The short exact encoder: the same codes as quantize, for finite scales whose exponent lies in
// [-116, 125] (e4m3) or [-109, 125] (e5m2), with a fraction of its operations on nearly every
// element.
//
// y = |x| * RN(1 / |scale|) is within 2 f32 ULP of the correctly rounded quotient RN(Q) (1 /
// |scale| and the product are each rounded once). Rounded to the format straight from its bits,
// y has RN(Q)'s code unless it lies within FAST_WINDOW_ULPS of a rounding boundary (a midpoint
// between two codes), where RN(Q) may lie on the other side or exactly on it: those elements,
// about one in 2000, take quantize. The scale's range keeps the rest exact: 1 / |scale| is a
// normal f32, and an f32 subnormal |x| (which the multiplication may flush to zero) has a
// quotient below the format's smallest rounding boundary, code 0, as for the threshold tables.
// A quarter of quantize's operations or less (no integer split of x, no range cases), and the
// same window as quantize's (tests skew the estimate by 255 ULP; 4 more cover y's own error).
const FAST_WINDOW_ULPS: i32 = 260;
// The same window below the format's smallest normal, in steps of its subnormal grid: an f32
// ULP there is at most 2^-21 steps (e4m3; e5m2 2^-22), so 2^-12 covers more than 260 ULP.
const FAST_WINDOW_STEPS: f32 = 0.000244140625;

// Whether quantize_fast handles `scale` (and FP8_FAST lets it): GpuScale::table_applies.
fn fast_applies(scale: Scale) -> bool {
    let lowest = select(FAST_LOWEST_EXPONENT_E4M3, FAST_LOWEST_EXPONENT_E5M2, E5M2);
    return FP8_FAST && scale.kind == SCALE_FINITE && scale.exponent >= lowest
        && scale.exponent <= FAST_HIGHEST_EXPONENT;
}

// The format's code (in the low byte) of x / scale, x given as f32 bits, for a scale that
// fast_applies, `reciprocal` being scale_reciprocal(scale).
fn quantize_fast(x: u32, scale: Scale, reciprocal: f32, nan_sign: u32) -> u32 {
    let x_sign = (x >> 24u) & 0x80u;
    let magnitude = x & 0x7fffffffu;
    if magnitude > 0x7f800000u {
        return x_sign | 0x7fu;
    }
    let sign = x_sign ^ scale.sign;
    let estimate = bitcast<u32>(bitcast<f32>(magnitude) * reciprocal);
    // (ESTIMATE_SKEW is 0 but in tests.)
    let y_bits = u32(max(i32(estimate) + ESTIMATE_SKEW, 0));
    // Infinity included.
    if y_bits >= fp8_max_bits() {
        return sign | fp8_max_code();
    }
    var code: u32;
    var near: bool;
    if y_bits >= fp8_min_normal_bits() {
        // The exponent rebiased and the mantissa's top bits, plus one past half of the dropped
        // bits (a carry into the exponent field is the next code, as it should be).
        let dropped_bits = u32(23 - fp8_mantissa_bits());
        let half = 1u << (dropped_bits - 1u);
        let dropped = y_bits & ((half << 1u) - 1u);
        near = abs(i32(dropped) - i32(half)) <= FAST_WINDOW_ULPS;
        code = ((y_bits - fp8_rebias_bits()) >> dropped_bits) + select(0u, 1u, dropped > half);
    } else {
        // Multiples of the subnormal grid's step: y / step is exact (a power of two), and so is
        // its distance to the midpoint above its floor (below 8 steps, within 24 bits).
        let steps = bitcast<f32>(y_bits) * pow2(-fp8_subnormal_exponent());
        let below = floor(steps);
        let past_half = steps - below - 0.5;
        near = abs(past_half) <= FAST_WINDOW_STEPS;
        code = u32(below) + select(0u, 1u, past_half > 0.0);
    }
    if near {
        return quantize(x, scale, nan_sign);
    }
    return sign | code;
}

// quantize_fast where it applies, else quantize (the encoder alone and the lookup table's
// build: once per element, so the reciprocal is worked out here).
fn quantize_exact(x: u32, scale: Scale, nan_sign: u32) -> u32 {
    if fast_applies(scale) {
        return quantize_fast(x, scale, scale_reciprocal(scale), nan_sign);
    }
    return quantize(x, scale, nan_sign);
}

// f32 bits of a 16-bit element (in the low half of `bits`) of the input kind.
fn element16_to_f32_bits(bits: u32) -> u32 {
    if IN_KIND == KIND_HALF {
        return pkv_half_bits(bits);
    }
    return bits << 16u;
}

// Four e4m3 codes packed little-endian into one word.
fn pack4(a: u32, b: u32, c: u32, d: u32) -> u32 {
    return a | (b << 8u) | (c << 16u) | (d << 24u);
}

// ---------------------------------------------------------------------------------------------
// fp8 by threshold tables: the same codes as quantize, for finite scales whose exponent lies in
// [-116, 125] (e4m3) or [-109, 125] (e5m2), with far fewer operations per element.
//
// For a fixed scale, the code of |x| / |scale| never decreases as |x| grows, so it is the number
// of codes c in 1..=126 (1..=123 for e5m2) whose threshold T[c] (the smallest f32 magnitude, as
// bits, whose code is at least c) is at most |x|. fp8_table_build finds the 2 x 126 thresholds of a call (keys and
// values) by binary search with quantize itself, on the device in each call; each workgroup
// copies them into workgroup memory. An element then takes:
// 1. a first code c0 from y = |x| * RN(1 / |scale|), within a few f32 ULP of the correctly
//    rounded quotient: far closer than the spacing of e4m3 rounding boundaries (2^20 ULP), so
//    the exact code is c0 - 1, c0 or c0 + 1;
// 2. two integer comparisons of |x| with T[c0] and T[c0 + 1], which pick the exact one.
// Subnormal |x| may be flushed to zero by the multiplication: with |scale| >= 2^-116 their
// quotient is below 2^-10 and their code 0 anyway (e5m2: with |scale| >= 2^-109, below 2^-17).
// 1 / |scale| is a normal f32 for exponents up to 125. NaN inputs keep their own path (0x7f
// with their sign).

// Each table has TABLE_CODES codes (0..=127: T[0] = 0, and T[c] = 0xffffffff past the largest
// code, so that c0 + 1 needs no check).

struct TableParams {
    k_scale: Scale,
    v_scale: Scale,
}

@group(0) @binding(TABLE_PARAMS_BINDING) var<uniform> table_params: TableParams;
@group(0) @binding(TABLE_OUT_BINDING) var<storage, read_write> table_out: array<u32>;
// The same buffer, as the encoders read it: T[c] of the keys at word c, of the values at
// word TABLE_CODES + c.
@group(0) @binding(FP8_THRESHOLDS_BINDING) var<uniform> fp8_thresholds: array<vec4<u32>, TABLE_CODES / 2u>;
var<workgroup> fp8_table: array<u32, 2u * TABLE_CODES>;

// One workgroup: thread TABLE_CODES * k + c finds T[c] of table k (0 keys, 1 values).
@compute @workgroup_size(WORKGROUP)
fn fp8_table_build(@builtin(local_invocation_index) local: u32) {
    let c = local % TABLE_CODES;
    var scale = table_params.k_scale;
    if local >= TABLE_CODES {
        scale = table_params.v_scale;
    }
    var threshold = 0u;
    if c == TABLE_CODES - 1u || c > fp8_max_code() {
        threshold = 0xffffffffu;
    } else if c > 0u {
        // Infinity encodes as 0x7e, so the answer lies in [0, 0x7f800000].
        var lo = 0u;
        var hi = 0x7f800000u;
        loop {
            if lo >= hi {
                break;
            }
            let mid = lo + (hi - lo) / 2u;
            if (quantize(mid, scale, 0u) & 0x7fu) >= c {
                hi = mid;
            } else {
                lo = mid + 1u;
            }
        }
        threshold = lo;
    }
    table_out[local] = threshold;
}

// Copies both tables into workgroup memory (WORKGROUP = 2 * TABLE_CODES threads); a no-op
// unless FP8_TABLE.
fn load_fp8_table(local: u32) {
    if FP8_TABLE {
        fp8_table[local] = fp8_thresholds[local / 4u][local % 4u];
        workgroupBarrier();
    }
}

// RN(1 / |scale|) for exponents in [-116, 125] (the reciprocal of the significand is RN(1 / ms),
// and the powers of two are exact).
fn scale_reciprocal(scale: Scale) -> f32 {
    return scale.reciprocal * pow2(12) * pow2(11 - scale.exponent);
}

// The code of x / scale (x as f32 bits) from table `base` (0 keys, TABLE_CODES values).
fn quantize_table(x: u32, base: u32, reciprocal: f32, scale_sign: u32) -> u32 {
    let x_sign = (x >> 24u) & 0x80u;
    let magnitude = x & 0x7fffffffu;
    if magnitude > 0x7f800000u {
        return x_sign | 0x7fu;
    }
    let estimate = bitcast<u32>(bitcast<f32>(magnitude) * reciprocal);
    // (ESTIMATE_SKEW is 0 but in tests.)
    let y_bits = u32(max(i32(estimate) + ESTIMATE_SKEW, 0));
    var code = fp8_max_code();
    if y_bits < fp8_max_bits() {
        code = min(fp8_magnitude(y_bits), fp8_max_code());
    }
    if magnitude >= fp8_table[base + code + 1u] {
        code += 1u;
    } else if magnitude < fp8_table[base + code] {
        code -= 1u;
    }
    return (x_sign ^ scale_sign) | code;
}

// ---------------------------------------------------------------------------------------------
// fp8 by lookup table (FP8_LUT on the host; 16-bit inputs only): with the scale fixed for a
// call, the code of a half or bfloat16 element depends on its 16 bits alone, so fp8_lut_build
// runs quantize itself once for each of the 65536 patterns of each tensor (keys with k_scale,
// values with v_scale) in each call, and the *_lut entry points then take an element's code
// from the table: one load (that the GPU's caches keep close) and a shift instead of some 25
// operations. The table is exact by construction: the same function, on every input, with the
// call's own scales and NaN sign; nothing about the scale (zero, infinite, NaN, negative,
// subnormal) needs a case of its own.
//
// 65536 one-byte codes per tensor, four to a word (little-endian, as pack4): code of pattern p
// of tensor k (0 keys, 1 values) at byte (p & 3) of word (k * 65536 + p) >> 2. Both tables are
// 128 KiB: too large for workgroup memory and for a uniform binding (64 KiB), so a storage
// binding. With PER_HEAD, one table per head and tensor: table k * HEADS + h (keys' heads,
// then values'), each built with its own head's scale.

// Words of one tensor's table. (LUT_VALUES, the index of the values' first code, is a generated
// constant: the keys' table comes first.)
const LUT_WORDS: u32 = LUT_VALUES / 4u;

struct LutParams {
    // As Params.nan_sign.
    nan_sign: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    k_scale: Scale,
    v_scale: Scale,
}

@group(0) @binding(LUT_PARAMS_BINDING) var<uniform> lut_params: LutParams;
@group(0) @binding(LUT_OUT_BINDING) var<storage, read_write> lut_out: array<u32>;
// PER_HEAD: the scale of each table (2 * HEADS), rather than lut_params' two.
@group(0) @binding(LUT_SCALES_BINDING) var<storage, read> lut_scales: array<Scale>;
// The same buffer, as the *_lut entry points read it. A binding of its own (not 72's uniform
// slot) that only those entry points use, so that the others' layouts keep the bindings they
// had.
@group(0) @binding(FP8_LUT_BINDING) var<storage, read> fp8_lut: array<u32>;

// Thread w (of 2 * LUT_WORDS, or 2 * HEADS * LUT_WORDS with PER_HEAD) packs the codes of
// patterns 4w .. 4w + 3 of its table into word w (IN_KIND says how to read a pattern).
@compute @workgroup_size(WORKGROUP)
fn fp8_lut_build(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) workgroups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let w = thread_index(workgroup, workgroups, local);
    let tables = select(2u, 2u * HEADS, PER_HEAD);
    if w >= tables * LUT_WORDS {
        return;
    }
    var scale = lut_params.k_scale;
    if PER_HEAD {
        scale = lut_scales[w / LUT_WORDS];
    } else if w >= LUT_WORDS {
        scale = lut_params.v_scale;
    }
    let first = (w % LUT_WORDS) * 4u;
    var word = 0u;
    for (var j = 0u; j < 4u; j += 1u) {
        let code = quantize_exact(element16_to_f32_bits(first + j), scale, lut_params.nan_sign);
        word |= (code & 0xffu) << (8u * j);
    }
    lut_out[w] = word;
}

// The code of the 16-bit pattern `bits` from the table at `base` (0 keys, LUT_VALUES values;
// with PER_HEAD, a multiple of LUT_VALUES).
fn lut_code(bits: u32, base: u32) -> u32 {
    let index = base + bits;
    return (fp8_lut[index >> 2u] >> ((index & 3u) * 8u)) & 0xffu;
}

// The first code of the lookup table for the keys or the values of a unit that is unit `u` of
// its token's row (per head with PER_HEAD).
fn lut_base(is_value: bool, u: u32) -> u32 {
    if PER_HEAD {
        return (select(0u, HEADS, is_value) + u / HEAD_UNITS) * LUT_VALUES;
    }
    return select(0u, LUT_VALUES, is_value);
}

// One word of codes of the four 16-bit elements of input words `a` and `b` (as encode_halves).
fn lut_halves(a: u32, b: u32, base: u32) -> u32 {
    return pack4(
        lut_code(a & 0xffffu, base),
        lut_code(a >> 16u, base),
        lut_code(b & 0xffffu, base),
        lut_code(b >> 16u, base),
    );
}

// cache_unit for fp8 caches of 16-bit inputs, by the lookup table.
fn cache_unit_lut(is_value: bool, w: UnitInput, u: u32) -> vec4<u32> {
    let base = lut_base(is_value, u);
    // 16 elements: 32 input bytes.
    return vec4<u32>(
        lut_halves(w.a.x, w.a.y, base),
        lut_halves(w.a.z, w.a.w, base),
        lut_halves(w.b.x, w.b.y, base),
        lut_halves(w.b.z, w.b.w, base),
    );
}

// Word `part` of cache_unit_lut's result, of its own input `w` (SPLIT).
fn cache_word_lut(is_value: bool, w: UnitInput, u: u32, part: u32) -> u32 {
    let h = half_words(w, part);
    return lut_halves(h.x, h.y, lut_base(is_value, u));
}

// The code of x / scale (x as f32 bits) for a unit's encoder: by the tables, the short encoder
// or quantize.
fn encode(x: u32, e: UnitEncoder) -> u32 {
    if FP8_TABLE {
        return quantize_table(x, e.base, e.reciprocal, e.scale.sign);
    }
    if e.fast {
        return quantize_fast(x, e.scale, e.reciprocal, params.nan_sign);
    }
    return quantize(x, e.scale, params.nan_sign);
}

// Encodes the two 16-bit elements of a word.
fn quantize_pair(word: u32, e: UnitEncoder) -> vec2<u32> {
    return vec2<u32>(
        encode(element16_to_f32_bits(word & 0xffffu), e),
        encode(element16_to_f32_bits(word >> 16u), e),
    );
}
