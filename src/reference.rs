//! The CPU reference: the definition of a correct `reshape_and_cache_flash`.
//!
//! For token `t` with slot `s = slot_mapping[t]`: if `s` is -1 (padding) or outside the cache,
//! nothing is written. Otherwise, with `block = s / block_size` and `offset = s % block_size`,
//! for every head `h` and element `d`:
//!
//! - NHD: `cache[block][offset][h][d]`, HND: `cache[block][h][offset][d]`
//! - the input element is `input[t * token_stride + h * head_stride + d]` (the problem's input
//!   strides: contiguous, or a slice of a fused QKV tensor);
//! - cache dtype `auto`: the input element, bit for bit;
//! - cache dtype `fp8` / `fp8_e5m2`: `e4m3_from_f32(input / scale)` / `e5m2_from_f32(input /
//!   scale)`, the division in f32, with `k_scale` for keys and `v_scale` for values (head `h`'s
//!   own where the scales are per head); a NaN quotient as [`fp8::quantize`] says.
//!
//! Every other byte of the caches keeps its previous value.

use crate::fp8::Format;
use crate::problem::{Dtype, Problem};
use crate::workload::{Caches, Inputs};

/// Writes the keys and values of `inputs` into `caches`, token by token.
pub fn reshape_and_cache(problem: &Problem, inputs: &Inputs, caches: &mut Caches) {
    write_tokens(problem, inputs, caches, write_token);
}

/// What writes one token into parts of the caches: [`write_token`], or the pattern's
/// [`crate::pattern::write_token`] (the same arguments, the same parts of the caches).
pub type WriteToken = fn(&Problem, &Inputs, &mut [u8], &mut [u8], u64, usize);

/// Every token of `inputs` into the whole of `caches` by `write`, one by one.
pub fn write_tokens(problem: &Problem, inputs: &Inputs, caches: &mut Caches, write: WriteToken) {
    for token in 0..problem.num_tokens {
        write(
            problem,
            inputs,
            &mut caches.key,
            &mut caches.value,
            0,
            token,
        );
    }
}

/// Writes one token's keys and values (a no-op for padding or out-of-range slots).
///
/// `key_cache` and `value_cache` may be parts of the caches that start at element
/// `first_element` and contain the token's slot: tokens with distinct slots in distinct cache
/// blocks touch disjoint parts, which lets callers write blocks in parallel.
pub fn write_token(
    problem: &Problem,
    inputs: &Inputs,
    key_cache: &mut [u8],
    value_cache: &mut [u8],
    first_element: u64,
    token: usize,
) {
    for (head, source, target) in token_heads(problem, inputs.slot_mapping, first_element, token) {
        write_head(
            problem,
            inputs.key,
            inputs.k_scale.of_head(head),
            key_cache,
            source,
            target,
        );
        write_head(
            problem,
            inputs.value,
            inputs.v_scale.of_head(head),
            value_cache,
            source,
            target,
        );
    }
}

/// Where token `token` goes, head by head: `(head, first input element, first cache element
/// counted from `first_element`)`; nothing for padding or a slot outside the cache. The walk
/// every writer of the call's addresses shares (this reference, and the pattern kernel's
/// definition in [`crate::pattern`]).
pub fn token_heads<'a>(
    problem: &'a Problem,
    slot_mapping: &[i64],
    first_element: u64,
    token: usize,
) -> impl Iterator<Item = (usize, usize, usize)> + 'a {
    let slot = slot_mapping[token];
    let heads = if slot < 0 || slot as u64 >= problem.num_slots() {
        0
    } else {
        problem.num_heads
    };
    (0..heads).map(move |head| {
        let source = problem.input_offset(token, head) as usize;
        let target = (problem.cache_offset(slot as u64, head) - first_element) as usize;
        (head, source, target)
    })
}

fn write_head(
    problem: &Problem,
    input: &[u8],
    scale: f32,
    cache: &mut [u8],
    source: usize,
    target: usize,
) {
    let d = problem.head_size;
    let size = problem.dtype.size();
    let Some(format) = problem.cache_dtype.fp8() else {
        cache[target * size..(target + d) * size]
            .copy_from_slice(&input[source * size..(source + d) * size]);
        return;
    };
    let input = &input[source * size..(source + d) * size];
    let out = &mut cache[target..target + d];
    // The dtype and format are matched once per head rather than once per element: this loop
    // is also the CPU backend's, and most of the time of fp8 verification.
    match format {
        Format::E4m3 => quantize_head::<E4m3>(problem.dtype, input, out, scale),
        Format::E5m2 => quantize_head::<E5m2>(problem.dtype, input, out, scale),
    }
}

/// A float8 format as a type, so that each (dtype, format) pair gets its own loop.
trait Quantizer {
    fn quantize(x: f32, scale: f32) -> u8;
}

struct E4m3;
struct E5m2;

impl Quantizer for E4m3 {
    fn quantize(x: f32, scale: f32) -> u8 {
        Format::E4m3.quantize(x, scale)
    }
}

impl Quantizer for E5m2 {
    fn quantize(x: f32, scale: f32) -> u8 {
        Format::E5m2.quantize(x, scale)
    }
}

fn quantize_head<Q: Quantizer>(dtype: Dtype, input: &[u8], out: &mut [u8], scale: f32) {
    let size = dtype.size();
    match dtype {
        Dtype::Half => quantize_row::<Q>(input, size, out, scale, |b| {
            half::f16::from_le_bytes([b[0], b[1]]).to_f32()
        }),
        Dtype::BFloat16 => quantize_row::<Q>(input, size, out, scale, |b| {
            half::bf16::from_le_bytes([b[0], b[1]]).to_f32()
        }),
        Dtype::Float => quantize_row::<Q>(input, size, out, scale, |b| {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }),
    }
}

/// `out[i] = fp8(x_i / scale)` for the elements `x_i` of `input`, each decoded by `decode` from
/// its `size` bytes.
fn quantize_row<Q: Quantizer>(
    input: &[u8],
    size: usize,
    out: &mut [u8],
    scale: f32,
    decode: impl Fn(&[u8]) -> f32,
) {
    for (byte, element) in out.iter_mut().zip(input.chunks_exact(size)) {
        *byte = Q::quantize(decode(element), scale);
    }
}
