//! The cross-backend check: run a backend on random inputs with poisoned caches and compare
//! every byte of both caches with the CPU reference, so that wrong values, missing writes and
//! stray writes all show.
//!
//! [`check`] runs one [`Case`]; [`run`] runs a list of cases on several backends ("subjects")
//! and gathers a [`Report`]: the pass/fail matrix and the first mismatch of each failing case.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fp8::Format;
use crate::problem::{CacheDtype, Dtype, InputStrides, Layout, Problem};
use crate::reference;
use crate::report::{Cell, Table};
use crate::workload::{self, CacheFill, Caches, Inputs, Scale, Scaling, SlotPattern};

/// One verification case: a problem and how its inputs are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Case {
    pub problem: Problem,
    /// About this fraction of tokens get slot -1.
    pub padding_fraction: f64,
    /// Sprinkle NaN, +-Inf, huge and tiny values into the inputs (fp8 saturation and NaN paths).
    pub special_values: bool,
    pub seed: u64,
    /// Keys and values are slices of one fused QKV tensor with this many query heads (the
    /// problem's input strides must then be [`InputStrides::qkv_fused`]'s). With `None` and
    /// strides, keys and values are drawn as two strided tensors of their own.
    pub qkv_fused: Option<usize>,
    /// fp8 scales per tensor or per head (ignored for `auto` caches).
    pub scaling: Scaling,
    /// Where the tokens go in the cache.
    pub slots: SlotPattern,
}

impl Case {
    /// A case of `problem` with contiguous inputs, per-tensor scales, random slots, no padding
    /// and no special values.
    pub fn plain(problem: Problem, seed: u64) -> Self {
        Self {
            problem,
            padding_fraction: 0.0,
            special_values: false,
            seed,
            qkv_fused: None,
            scaling: Scaling::PerTensor,
            slots: SlotPattern::Random,
        }
    }
}

impl fmt::Display for Case {
    /// The problem and how its inputs were drawn: enough to rebuild the case by hand.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} padding={} special_values={} case_seed={}",
            self.problem.describe(),
            self.padding_fraction,
            self.special_values,
            self.seed
        )?;
        if let Some(query_heads) = self.qkv_fused {
            write!(f, " qkv_fused={query_heads}")?;
        }
        if self.scaling != Scaling::PerTensor && self.problem.cache_dtype.is_fp8() {
            write!(f, " scale={}", self.scaling)?;
        }
        if self.slots != SlotPattern::Random {
            write!(f, " slots={}", self.slots)?;
        }
        Ok(())
    }
}

/// The first byte where a backend's caches differ from the reference, located in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub cache: &'static str,
    pub block: u64,
    pub offset: u64,
    pub head: u64,
    pub element: u64,
    /// The token whose slot this is, or `None` when no token targets it (a stray write).
    pub token: Option<usize>,
    pub expected: String,
    pub got: String,
    /// How many cache elements differ in all.
    pub count: u64,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owner = match self.token {
            Some(token) => format!("token {token}"),
            None => "a slot no token targets".to_string(),
        };
        write!(
            f,
            "{} cache block {} offset {} head {} element {} ({}): expected {}, got {} ({} element(s) differ)",
            self.cache,
            self.block,
            self.offset,
            self.head,
            self.element,
            owner,
            self.expected,
            self.got,
            self.count
        )
    }
}

/// Everything one case needs on the host: inputs, the poisoned caches and the expected result.
pub struct CaseData {
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
    pub initial: Caches,
    pub expected: Caches,
}

impl CaseData {
    /// Draws the inputs of `case`, poisons the caches and computes the reference result.
    pub fn new(case: &Case) -> Result<Self> {
        let inputs = CaseInputs::new(case)?;
        let initial = poison(&case.problem, case.seed);
        let mut expected = initial.clone();
        reference::reshape_and_cache(&case.problem, &inputs.inputs(), &mut expected);
        let CaseInputs {
            key,
            value,
            slot_mapping,
            k_scale,
            v_scale,
            k_head_scales,
            v_head_scales,
        } = inputs;
        Ok(Self {
            key,
            value,
            slot_mapping,
            k_scale,
            v_scale,
            k_head_scales,
            v_head_scales,
            initial,
            expected,
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

/// Per-head scales where there are some, else the per-tensor one.
fn scale_of(tensor: f32, heads: &[f32]) -> Scale<'_> {
    if heads.is_empty() {
        Scale::PerTensor(tensor)
    } else {
        Scale::PerHead(heads)
    }
}

/// The inputs of a case, without its caches.
struct CaseInputs {
    key: Vec<u8>,
    value: Vec<u8>,
    slot_mapping: Vec<i64>,
    k_scale: f32,
    v_scale: f32,
    k_head_scales: Vec<f32>,
    v_head_scales: Vec<f32>,
}

impl CaseInputs {
    fn new(case: &Case) -> Result<Self> {
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

    fn inputs(&self) -> Inputs<'_> {
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
fn poison(problem: &Problem, seed: u64) -> Caches {
    let bytes = problem.cache_bytes() as usize;
    Caches {
        key: workload::random_bytes(bytes, stream(seed, 6)),
        value: workload::random_bytes(bytes, stream(seed, 7)),
    }
}

/// Runs `backend` on `case` and compares its caches with the reference.
/// `Ok(None)` means every byte of both caches matches.
pub fn check(backend: &mut dyn Backend, case: &Case) -> Result<Option<Mismatch>> {
    let problem = &case.problem;
    let inputs = CaseInputs::new(case)?;
    // Once the backend holds its own copy of the poisoned caches, the reference turns this
    // copy into the expected result in place: large cases then need one cache-sized buffer
    // fewer (allocating and first touching those buffers is most of their cost).
    let mut caches = poison(problem, case.seed);
    let got = {
        let mut call = backend.prepare(problem, inputs.inputs(), CacheFill::Copy(&caches))?;
        call.run()?;
        call.read_back()?
    };
    reference::reshape_and_cache(problem, &inputs.inputs(), &mut caches);
    Ok(compare_caches(problem, &inputs.slot_mapping, &caches, &got))
}

/// Locates the first difference between `got` and the expected caches, if any.
pub fn compare(problem: &Problem, data: &CaseData, got: &Caches) -> Option<Mismatch> {
    compare_caches(problem, &data.slot_mapping, &data.expected, got)
}

/// As [`compare`], with the expected caches and the slot mapping given separately.
pub fn compare_caches(
    problem: &Problem,
    slot_mapping: &[i64],
    expected: &Caches,
    got: &Caches,
) -> Option<Mismatch> {
    for (name, expected, got) in [
        ("key", &expected.key, &got.key),
        ("value", &expected.value, &got.value),
    ] {
        // The common case, a match, is one memcmp; elements are only looked at on a failure.
        if expected == got {
            continue;
        }
        if expected.len() != got.len() {
            return Some(Mismatch {
                cache: name,
                block: 0,
                offset: 0,
                head: 0,
                element: 0,
                token: None,
                expected: format!("{} bytes", expected.len()),
                got: format!("{} bytes", got.len()),
                count: 0,
            });
        }
        let size = problem.cache_element_size();
        let mut differing = expected
            .chunks_exact(size)
            .zip(got.chunks_exact(size))
            .enumerate()
            .filter(|(_, (e, g))| e != g)
            .map(|(index, _)| index);
        let first = differing.next()?;
        let count = 1 + differing.count() as u64;
        return Some(locate(
            problem,
            slot_mapping,
            name,
            first,
            count,
            expected,
            got,
        ));
    }
    None
}

fn locate(
    problem: &Problem,
    slot_mapping: &[i64],
    cache: &'static str,
    index: usize,
    count: u64,
    expected: &[u8],
    got: &[u8],
) -> Mismatch {
    let s = problem.strides();
    let i = index as u64;
    let block = i / s.block;
    let within = i % s.block;
    let (offset, head, element) = match problem.layout {
        Layout::Nhd => (within / s.slot, within % s.slot / s.head, within % s.head),
        Layout::Hnd => (within % s.head / s.slot, within / s.head, within % s.slot),
    };
    let slot = (block * problem.block_size as u64 + offset) as i64;
    let token = slot_mapping.iter().position(|&t| t == slot);
    Mismatch {
        cache,
        block,
        offset,
        head,
        element,
        token,
        expected: describe_element(problem, expected, index),
        got: describe_element(problem, got, index),
        count,
    }
}

/// An element's bits and value, e.g. `0x3f80 (1)`.
fn describe_element(problem: &Problem, bytes: &[u8], index: usize) -> String {
    match problem.cache_dtype.fp8() {
        Some(format) => format!("{:#04x} ({})", bytes[index], format.decode(bytes[index])),
        None => {
            let size = problem.dtype.size();
            let raw = &bytes[index * size..(index + 1) * size];
            let bits = raw
                .iter()
                .rev()
                .fold(String::new(), |acc, b| acc + &format!("{b:02x}"));
            format!("0x{bits} ({})", problem.dtype.read_f32(bytes, index))
        }
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

/// Head sizes the benchmark offers (those of vLLM's script).
pub const HEAD_SIZES: [usize; 8] = [64, 80, 96, 112, 120, 128, 192, 256];
/// Block sizes the benchmark offers.
pub const BLOCK_SIZES: [usize; 2] = [16, 32];

/// How much of the configuration space to cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// A subset that touches every code path: seconds.
    Quick,
    /// Every layout x dtype x cache dtype x head size x block size x odd token count.
    Full,
}

impl Coverage {
    pub fn name(self) -> &'static str {
        match self {
            Coverage::Quick => "quick",
            Coverage::Full => "full",
        }
    }
}

/// The verification matrix: small head counts so that thousands of tokens stay cheap, caches
/// with about twice as many slots as tokens (so untouched slots are checked too), some padding,
/// and special values in every fourth case.
///
/// The serving-workload axes are sampled rather than multiplied: within each layout x dtype x
/// cache dtype row, case `i` takes slot pattern `i % 4` (every pattern with every token count),
/// keys and values as slices of a fused QKV tensor in a third of the cases, and per-head scales
/// (fp8) in half of them, each axis value meeting every other's (see [`workload_axes`]).
/// Decode cases (a cache block per token) stop at 1000 tokens: larger ones take the mixed
/// pattern, so that no cache grows past what the other cases hold.
///
/// Backend internals that only some shapes reach (the wgpu backend splitting caches over
/// several buffers) are covered by checking the same matrix on a second instance of the backend
/// configured to reach them: see [`Subject`].
pub fn matrix(coverage: Coverage, seed: u64) -> Vec<Case> {
    let (head_sizes, token_counts): (&[usize], &[usize]) = match coverage {
        Coverage::Quick => (&[64, 120, 128], &[1, 17, 1000]),
        Coverage::Full => (&HEAD_SIZES, &[1, 3, 17, 1000, 4097]),
    };
    let mut cases = Vec::new();
    for layout in [Layout::Nhd, Layout::Hnd] {
        for dtype in [Dtype::Half, Dtype::BFloat16, Dtype::Float] {
            for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8, CacheDtype::Fp8E5m2] {
                let mut in_row = 0;
                for &head_size in head_sizes {
                    if cache_dtype.is_fp8() && !head_size.is_multiple_of(16) {
                        continue;
                    }
                    for block_size in BLOCK_SIZES {
                        for &num_tokens in token_counts {
                            let index = cases.len() as u64;
                            let (qkv_fused, scaling, mut slots) = workload_axes(in_row);
                            in_row += 1;
                            if slots == SlotPattern::Decode && num_tokens > 1000 {
                                slots = SlotPattern::Mixed;
                            }
                            let num_heads = if num_tokens >= 1000 { 2 } else { 5 };
                            let num_blocks = match slots {
                                SlotPattern::Random => (2 * num_tokens).div_ceil(block_size) + 1,
                                pattern => {
                                    let needed =
                                        pattern.blocks_needed(num_tokens, block_size) as usize;
                                    needed + needed / 8 + 1
                                }
                            };
                            cases.push(Case {
                                problem: Problem {
                                    num_tokens,
                                    num_heads,
                                    head_size,
                                    block_size,
                                    num_blocks,
                                    dtype,
                                    cache_dtype,
                                    layout,
                                    input_strides: qkv_fused.map(|query_heads| {
                                        InputStrides::qkv_fused(query_heads, num_heads, head_size)
                                    }),
                                },
                                padding_fraction: if num_tokens > 2 { 0.1 } else { 0.0 },
                                special_values: index % 4 == 3,
                                seed: seed.wrapping_add(index),
                                qkv_fused,
                                scaling: if cache_dtype.is_fp8() {
                                    scaling
                                } else {
                                    Scaling::PerTensor
                                },
                                slots,
                            });
                        }
                    }
                }
            }
        }
    }
    cases
}

/// The serving-workload axes of the `i`-th case of a matrix row: the slot pattern cycles with
/// period 4 (coprime to the 3 or 5 token counts, so each pattern meets each count); fused
/// inputs (with 4 query heads per KV head's worth, as grouped-query models have) take cases 4
/// to 7 of every 12, one of each pattern; per-head scales alternate with a phase that flips
/// every 4 cases, so that each pattern is seen with both kinds of scale, fused or not.
pub fn workload_axes(i: usize) -> (Option<usize>, Scaling, SlotPattern) {
    let slots = SlotPattern::ALL[i % 4];
    let qkv_fused = ((i / 4) % 3 == 1).then_some(4);
    let scaling = if (i % 4 + i / 4) % 2 == 1 {
        Scaling::PerHead
    } else {
        Scaling::PerTensor
    };
    (qkv_fused, scaling, slots)
}

/// A backend under verification, and the name its rows of the report carry.
///
/// A backend with internal paths that the matrix's shapes do not reach on their own can be
/// checked a second time as a *variant*: the same backend opened with a different internal
/// configuration (for wgpu: a small limit on the bytes per buffer, so that caches are split
/// over several buffers), with a label of its own and `min_cache_bytes` to skip the cases
/// that the variant runs exactly like the plain backend.
pub struct Subject {
    /// e.g. `cpu`, `wgpu`, or `wgpu (64 KiB buffers)` for a variant.
    pub label: String,
    pub backend: Box<dyn Backend>,
    /// Check only cases whose caches (each) are at least this many bytes; 0 checks all.
    pub min_cache_bytes: u64,
}

impl Subject {
    /// A backend checked on every case, under its implementation's name.
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Self {
            label: backend.kind().name().to_string(),
            backend,
            min_cache_bytes: 0,
        }
    }

    fn takes(&self, case: &Case) -> bool {
        case.problem.cache_bytes() >= self.min_cache_bytes
    }

    /// Why the backend does not implement `case`, if it does not (its layout, or what
    /// [`Backend::check_support`] refuses).
    fn refusal(&self, case: &Case) -> Option<String> {
        if !self.backend.supports(case.problem.layout) {
            return Some("layout not implemented".into());
        }
        match self
            .backend
            .check_support(&case.problem, case_scaling(case))
        {
            Ok(()) => None,
            Err(Error::Unsupported { what, .. }) => Some(format!("{what} not implemented")),
            Err(other) => Some(other.one_line()),
        }
    }
}

/// The scaling a case's inputs actually have (per-tensor for `auto` caches).
fn case_scaling(case: &Case) -> Scaling {
    if case.problem.cache_dtype.is_fp8() {
        case.scaling
    } else {
        Scaling::PerTensor
    }
}

/// How one case went on one subject.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed,
    /// The caches differ from the reference; the first difference.
    Mismatch(Mismatch),
    /// The backend returned an error instead of a result.
    Error(String),
    /// The backend does not implement the case (its layout, cache dtype, ...): why.
    Unsupported(String),
}

/// A case that failed, for the listing under the matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub label: String,
    pub case: Case,
    pub outcome: Outcome,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.label, self.case)?;
        match &self.outcome {
            Outcome::Mismatch(mismatch) => write!(f, "{mismatch}"),
            Outcome::Error(error) => write!(f, "error: {error}"),
            Outcome::Passed | Outcome::Unsupported(_) => write!(f, "no failure"),
        }
    }
}

/// One line of the pass/fail matrix: a subject, layout, input dtype and cache dtype.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    label: String,
    layout: Layout,
    dtype: Dtype,
    cache_dtype: CacheDtype,
    checked: usize,
    passed: usize,
    unsupported: usize,
    /// Why cases were not checked.
    refusals: BTreeSet<String>,
    num_tokens: BTreeSet<usize>,
    head_sizes: BTreeSet<usize>,
    block_sizes: BTreeSet<usize>,
    /// Slot patterns checked (in `SlotPattern::ALL`'s order).
    slots: BTreeSet<usize>,
    /// Contiguous (false) and fused (true) inputs checked.
    fused: BTreeSet<bool>,
    /// Per-tensor (false) and per-head (true) scales checked (fp8 rows only).
    per_head: BTreeSet<bool>,
}

/// The results of [`run`]: a pass/fail matrix and every failure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    rows: Vec<Row>,
    pub failures: Vec<Failure>,
}

impl Report {
    /// Counts one case's outcome into its row.
    pub fn record(&mut self, label: &str, case: &Case, outcome: Outcome) {
        let p = &case.problem;
        let key = (label, p.layout, p.dtype, p.cache_dtype);
        let position = self
            .rows
            .iter()
            .position(|r| (r.label.as_str(), r.layout, r.dtype, r.cache_dtype) == key);
        let row = match position {
            Some(index) => &mut self.rows[index],
            None => {
                self.rows.push(Row {
                    label: label.to_string(),
                    layout: p.layout,
                    dtype: p.dtype,
                    cache_dtype: p.cache_dtype,
                    checked: 0,
                    passed: 0,
                    unsupported: 0,
                    refusals: BTreeSet::new(),
                    num_tokens: BTreeSet::new(),
                    head_sizes: BTreeSet::new(),
                    block_sizes: BTreeSet::new(),
                    slots: BTreeSet::new(),
                    fused: BTreeSet::new(),
                    per_head: BTreeSet::new(),
                });
                self.rows.last_mut().expect("just pushed")
            }
        };
        if let Outcome::Unsupported(why) = outcome {
            row.unsupported += 1;
            row.refusals.insert(why);
            return;
        }
        row.checked += 1;
        row.num_tokens.insert(p.num_tokens);
        row.head_sizes.insert(p.head_size);
        row.block_sizes.insert(p.block_size);
        let pattern = SlotPattern::ALL.iter().position(|&s| s == case.slots);
        row.slots.insert(pattern.unwrap_or(0));
        row.fused.insert(!p.contiguous_inputs());
        if p.cache_dtype.is_fp8() {
            row.per_head.insert(case_scaling(case) == Scaling::PerHead);
        }
        if outcome == Outcome::Passed {
            row.passed += 1;
        } else {
            self.failures.push(Failure {
                label: label.to_string(),
                case: *case,
                outcome,
            });
        }
    }

    /// Cases checked (not counting unsupported layouts), over all subjects.
    pub fn checked(&self) -> usize {
        self.rows.iter().map(|r| r.checked).sum()
    }

    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    /// The pass/fail matrix: one row per subject x layout x dtype x cache dtype, with what it
    /// covered; "n/a" and the reason where the backend does not implement the row's cases (or
    /// some of them).
    pub fn table(&self) -> Table {
        let headers = [
            "implementation",
            "layout",
            "dtype",
            "kv_cache_dtype",
            "result",
            "num_tokens",
            "head_size",
            "block_size",
            "slots",
            "inputs",
            "scales",
        ];
        let list = |set: &BTreeSet<usize>| {
            set.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let names = |set: &BTreeSet<bool>, no: &str, yes: &str| {
            let words: Vec<&str> = set.iter().map(|&b| if b { yes } else { no }).collect();
            if words.is_empty() {
                "-".to_string()
            } else {
                words.join(",")
            }
        };
        let rows = self
            .rows
            .iter()
            .map(|row| {
                let refusals = row.refusals.iter().cloned().collect::<Vec<_>>().join("; ");
                let result = if row.checked == 0 {
                    format!("n/a ({refusals})")
                } else if row.passed == row.checked {
                    format!("passed {}/{}", row.passed, row.checked)
                } else {
                    format!("FAILED {}/{}", row.checked - row.passed, row.checked)
                };
                let result = if row.checked > 0 && row.unsupported > 0 {
                    format!("{result}, {} n/a ({refusals})", row.unsupported)
                } else {
                    result
                };
                let slots = row
                    .slots
                    .iter()
                    .map(|&i| SlotPattern::ALL[i].name())
                    .collect::<Vec<_>>()
                    .join(",");
                [
                    row.label.clone(),
                    row.layout.name().to_string(),
                    row.dtype.name().to_string(),
                    row.cache_dtype.name().to_string(),
                    result,
                    list(&row.num_tokens),
                    list(&row.head_sizes),
                    list(&row.block_sizes),
                    slots,
                    names(&row.fused, "contiguous", "fused"),
                    names(&row.per_head, "per-tensor", "per-head"),
                ]
                .into_iter()
                .map(Cell::Text)
                .collect()
            })
            .collect();
        Table::from_cells(&headers, rows)
    }

    /// The first `limit` failures, one line each, then "... and N more" if there are more.
    pub fn failure_lines(&self, limit: usize) -> Vec<String> {
        let mut lines: Vec<String> = self
            .failures
            .iter()
            .take(limit)
            .map(|failure| failure.to_string())
            .collect();
        if self.failures.len() > limit {
            lines.push(format!("... and {} more", self.failures.len() - limit));
        }
        lines
    }

    /// "verify: P passed, F failed" (counting cases; the test runners' closing-line form).
    pub fn summary(&self) -> String {
        format!(
            "verify: {} passed, {} failed",
            self.checked() - self.failed(),
            self.failed()
        )
    }
}

/// How many checks [`run`] performs (for progress bars): supported cases per subject.
pub fn count_checks(subjects: &[Subject], cases: &[Case]) -> usize {
    subjects
        .iter()
        .map(|s| {
            cases
                .iter()
                .filter(|c| s.takes(c) && s.refusal(c).is_none())
                .count()
        })
        .sum()
}

/// Checks every case on every subject, in order, and gathers the results. `progress` is called
/// before each check that runs.
pub fn run(
    subjects: &mut [Subject],
    cases: &[Case],
    mut progress: impl FnMut(&str, &Case),
) -> Report {
    let mut report = Report::default();
    for subject in subjects.iter_mut() {
        for case in cases {
            if !subject.takes(case) {
                continue;
            }
            let outcome = match subject.refusal(case) {
                Some(why) => Outcome::Unsupported(why),
                None => {
                    progress(&subject.label, case);
                    match check(subject.backend.as_mut(), case) {
                        Ok(None) => Outcome::Passed,
                        Ok(Some(mismatch)) => Outcome::Mismatch(mismatch),
                        Err(error) => Outcome::Error(error.one_line()),
                    }
                }
            };
            report.record(&subject.label, case, outcome);
        }
    }
    report
}
