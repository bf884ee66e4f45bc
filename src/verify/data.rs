//! The host data of one case: random inputs (with special values and rounding ties where the
//! case asks), scales, the poisoned caches and the expected result.

use std::sync::OnceLock;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::Case;
use crate::error::{Error, Result};
use crate::fp8::Format;
use crate::problem::{Dtype, InputStrides, Problem};
use crate::reference;
use crate::workload::{self, Caches, Inputs, Scale, Scaling};

/// Everything one case needs on the host: inputs, the poisoned caches and the expected result.
pub struct CaseData {
    /// The inputs, slots and scales.
    pub host: CaseInputs,
    pub initial: Caches,
    pub expected: Caches,
}

impl CaseData {
    /// Draws the inputs of `case`, poisons the caches and computes the reference result.
    pub fn new(case: &Case) -> Result<Self> {
        let host = CaseInputs::new(case)?;
        let initial = poison(&case.problem, case.seed);
        let mut expected = initial.clone();
        reference::reshape_and_cache(&case.problem, &host.inputs(), &mut expected);
        Ok(Self {
            host,
            initial,
            expected,
        })
    }

    pub fn inputs(&self) -> Inputs<'_> {
        self.host.inputs()
    }
}

/// Per-head scales where there are some, else the per-tensor one.
fn scale_of(tensor: f32, heads: &[f32]) -> Scale<'_> {
    if heads.is_empty() {
        Scale::PerTensor(tensor)
    } else {
        Scale::PerHead(heads)
    }
}

/// The inputs of a case, without its caches.
pub struct CaseInputs {
    /// The keys as [`Inputs`] holds them (for strided inputs, the span of their tensor).
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub slot_mapping: Vec<i64>,
    /// The per-tensor scales (used unless the case's scales are per head).
    pub k_scale: f32,
    pub v_scale: f32,
    /// Per-head scales, one per head; empty where the case's scales are per tensor.
    pub k_head_scales: Vec<f32>,
    pub v_head_scales: Vec<f32>,
}

impl CaseInputs {
    pub fn new(case: &Case) -> Result<Self> {
        let p = &case.problem;
        p.validate()?;
        let (mut key, mut value) = match case.qkv_fused {
            Some(query_heads) => {
                let strides = InputStrides::qkv_fused(query_heads, p.num_heads, p.head_size);
                if p.input_strides != Some(strides) {
                    return Err(Error::InvalidConfig(format!(
                        "a case with qkv_fused={query_heads} needs the input strides of that \
                         fused tensor ({strides:?}), not {:?}",
                        p.input_strides
                    )));
                }
                // One fused tensor, as an engine passes it: keys and values are its slices,
                // and what lies between their heads is the other parts' data.
                let fused = random_inputs(
                    p.dtype,
                    p.num_tokens * strides.token as usize,
                    stream(case.seed, 10),
                );
                let size = p.dtype.size();
                let span = p.input_bytes() as usize;
                let key = query_heads * p.head_size * size;
                let value = key + p.token_elements() * size;
                (
                    fused[key..key + span].to_vec(),
                    fused[value..value + span].to_vec(),
                )
            }
            None => {
                let elements = p.input_span() as usize;
                (
                    random_inputs(p.dtype, elements, stream(case.seed, 1)),
                    random_inputs(p.dtype, elements, stream(case.seed, 2)),
                )
            }
        };
        let mut rng = SmallRng::seed_from_u64(stream(case.seed, 5));
        let (k_scale, v_scale) = (random_scale(&mut rng), random_scale(&mut rng));
        // Each head its own random scale: a kernel that takes another head's (or the first
        // head's) divides by a different power of two and shows.
        let (k_head_scales, v_head_scales) =
            if case.scaling == Scaling::PerHead && p.cache_dtype.is_fp8() {
                let mut draw = || (0..p.num_heads).map(|_| random_scale(&mut rng)).collect();
                (draw(), draw())
            } else {
                (Vec::new(), Vec::new())
            };
        if let (Some(format), Dtype::Float) = (p.cache_dtype.fp8(), p.dtype) {
            let k = scale_of(k_scale, &k_head_scales);
            let v = scale_of(v_scale, &v_head_scales);
            sprinkle_near_ties(p, format, &mut key, k, stream(case.seed, 8));
            sprinkle_near_ties(p, format, &mut value, v, stream(case.seed, 9));
        }
        if case.special_values {
            sprinkle_special_values(p, &mut key, stream(case.seed, 3));
            sprinkle_special_values(p, &mut value, stream(case.seed, 4));
        }
        let slot_mapping = workload::slot_mapping(
            case.slots,
            p.num_blocks,
            p.block_size,
            p.num_tokens,
            case.padding_fraction,
            case.seed,
        )?;
        p.validate_slots(&slot_mapping)?;
        Ok(Self {
            key,
            value,
            slot_mapping,
            k_scale,
            v_scale,
            k_head_scales,
            v_head_scales,
        })
    }

    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            key: &self.key,
            value: &self.value,
            slot_mapping: &self.slot_mapping,
            k_scale: scale_of(self.k_scale, &self.k_head_scales),
            v_scale: scale_of(self.v_scale, &self.v_head_scales),
        }
    }
}

/// Both caches filled with random bytes: any byte a backend writes where it should not, or
/// fails to write where it should, differs from the reference (with probability 1 - 2^-8 per
/// byte for a stray write of a value that happens to be anything). Not periodic, so a block
/// copied to the wrong place shows too.
pub(super) fn poison(problem: &Problem, seed: u64) -> Caches {
    let bytes = problem.cache_bytes() as usize;
    Caches {
        key: workload::random_bytes(bytes, stream(seed, 6)),
        value: workload::random_bytes(bytes, stream(seed, 7)),
    }
}

/// Mixes a case seed with a stream number (splitmix64's finaliser), so that the key, the value,
/// the caches and the scales of a case, and neighbouring cases, draw unrelated numbers.
fn stream(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// log2 of the number of standard-normal samples inputs are drawn from.
const TABLE_BITS: u32 = 16;
/// Elements per independent random stream of [`random_inputs`]: fixed, so that a case's data
/// depends only on its seed, never on the number of threads.
const INPUT_CHUNK: usize = 1 << 16;

/// 2^16 standard-normal samples rounded to `dtype`, drawn once per process from a fixed seed.
fn normal_table(dtype: Dtype) -> &'static [u8] {
    static TABLES: [OnceLock<Vec<u8>>; 3] = [const { OnceLock::new() }; 3];
    let index = match dtype {
        Dtype::Half => 0,
        Dtype::BFloat16 => 1,
        Dtype::Float => 2,
    };
    TABLES[index].get_or_init(|| workload::random_normal(dtype, 1 << TABLE_BITS, 0x7ab1e))
}

/// `elements` values drawn independently and uniformly from [`normal_table`], as bytes.
///
/// Sampling a normal per element was most of the time of large cases; a table lookup per
/// element costs a fraction of that and keeps what the check relies on: values spread like the
/// benchmark's (so fp8 sees subnormals, normals and, with the scales below, saturation), and
/// neighbouring elements, heads and tokens almost never equal, so misplaced writes show.
fn random_inputs(dtype: Dtype, elements: usize, seed: u64) -> Vec<u8> {
    match dtype.size() {
        2 => draw_from_table::<2>(normal_table(dtype), elements, seed),
        4 => draw_from_table::<4>(normal_table(dtype), elements, seed),
        size => unreachable!("no dtype has {size} bytes"),
    }
}

/// [`random_inputs`] for elements of `N` bytes (a constant, so that each element is one move
/// rather than a call to `memcpy`).
fn draw_from_table<const N: usize>(table: &[u8], elements: usize, seed: u64) -> Vec<u8> {
    let table: Vec<[u8; N]> = table
        .chunks_exact(N)
        .map(|element| element.try_into().expect("chunks of N bytes"))
        .collect();
    let mut bytes = vec![0u8; elements * N];
    bytes
        .par_chunks_mut(INPUT_CHUNK * N)
        .enumerate()
        .for_each(|(chunk, out)| {
            let mut rng = SmallRng::seed_from_u64(stream(seed, chunk as u64));
            // One 64-bit draw gives four 16-bit table indices.
            for group in out.chunks_mut(4 * N) {
                let mut bits: u64 = rng.random();
                for element in group.chunks_exact_mut(N) {
                    element.copy_from_slice(&table[(bits & ((1 << TABLE_BITS) - 1)) as usize]);
                    bits >>= TABLE_BITS;
                }
            }
        });
    bytes
}

/// An fp8 scale in [2^-8, 2^-3) with a random 24-bit mantissa. With standard-normal inputs the
/// quotients reach from e4m3 subnormals to well past 448, so saturation of finite values is
/// checked too, and they are rarely exact, so they land anywhere between two e4m3 values.
fn random_scale(rng: &mut SmallRng) -> f32 {
    let exponent = rng.random_range(-8..=-4);
    let mantissa: f32 = rng.random_range(1.0..2.0);
    mantissa * 2f32.powi(exponent)
}

/// The index in a key or value slice of a random element of one of the problem's heads, and
/// that head (elements between heads of strided inputs are never drawn).
fn random_element(problem: &Problem, rng: &mut SmallRng) -> (usize, usize) {
    let token = rng.random_range(0..problem.num_tokens);
    let head = rng.random_range(0..problem.num_heads);
    let d = rng.random_range(0..problem.head_size);
    (problem.input_offset(token, head) as usize + d, head)
}

/// Replaces about one float element in 16 by a value whose quotient by its head's scale is
/// within an ulp or two of a tie between two fp8 values of `format`: where the encoder's
/// round-to-nearest-even decides, and where a quotient computed other than as the correctly
/// rounded `x / scale` (a multiplication by a rounded reciprocal, a fast approximate division)
/// ends on the other side of the tie. Random normal inputs almost never land there.
fn sprinkle_near_ties(
    problem: &Problem,
    format: Format,
    bytes: &mut [u8],
    scale: Scale,
    seed: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    // The largest finite code: above it everything saturates.
    let largest = match format {
        Format::E4m3 => 0x7e_u8,
        Format::E5m2 => 0x7b_u8,
    };
    let elements = problem.num_tokens * problem.token_elements();
    for _ in 0..(elements / 16).max(1) {
        let (index, head) = random_element(problem, &mut rng);
        // Between the positive finite codes c and c + 1; the midpoint is exact in f32.
        let code = rng.random_range(0..largest);
        let tie = (format.decode(code) + format.decode(code + 1)) / 2.0;
        let x = tie * scale.of_head(head);
        let nudged = f32::from_bits(x.to_bits().wrapping_add_signed(rng.random_range(-2..=2)));
        let signed = if rng.random_bool(0.5) {
            nudged
        } else {
            -nudged
        };
        Dtype::Float.write_f32(bytes, index, signed);
    }
}

/// Replaces about one element in 50 by NaN, +-Inf, a huge or a tiny value.
fn sprinkle_special_values(problem: &Problem, bytes: &mut [u8], seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let specials = [
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1.0e4,
        -3.0e4,
        1.0e-6,
        -2.0e-8,
        0.0,
        -0.0,
    ];
    let elements = problem.num_tokens * problem.token_elements();
    // At least one, so that a one-token case with special values has one.
    for _ in 0..(elements / 50).max(1) {
        let (index, _) = random_element(problem, &mut rng);
        let value = specials[rng.random_range(0..specials.len())];
        problem.dtype.write_f32(bytes, index, value);
    }
}
