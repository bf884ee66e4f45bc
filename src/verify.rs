//! The cross-backend check: run a backend on random inputs with poisoned caches and compare
//! every byte of both caches with the CPU reference, so that wrong values, missing writes and
//! stray writes all show.

use std::fmt;

use crate::backend::Backend;
use crate::error::Result;
use crate::fp8;
use crate::problem::{CacheDtype, Layout, Problem};
use crate::reference;
use crate::workload::{self, CacheFill, Caches, Inputs};

/// One verification case: a problem and how its inputs are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Case {
    pub problem: Problem,
    /// About this fraction of tokens get slot -1.
    pub padding_fraction: f64,
    /// Sprinkle NaN, +-Inf, huge and tiny values into the inputs (fp8 saturation and NaN paths).
    pub special_values: bool,
    pub seed: u64,
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
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub slot_mapping: Vec<i64>,
    pub k_scale: f32,
    pub v_scale: f32,
    pub initial: Caches,
    pub expected: Caches,
}

impl CaseData {
    /// Draws the inputs of `case` and computes the reference result.
    pub fn new(case: &Case) -> Result<Self> {
        let p = &case.problem;
        p.validate()?;
        let elements = p.num_tokens * p.token_elements();
        let mut key = workload::random_normal(p.dtype, elements, case.seed);
        let mut value = workload::random_normal(p.dtype, elements, case.seed ^ 0x5555);
        if case.special_values {
            sprinkle_special_values(p, &mut key, case.seed);
            sprinkle_special_values(p, &mut value, case.seed ^ 0xaaaa);
        }
        let slot_mapping = workload::random_slot_mapping(
            p.num_slots(),
            p.num_tokens,
            case.padding_fraction,
            case.seed,
        );
        p.validate_slots(&slot_mapping)?;
        let cache_bytes = p.cache_bytes() as usize;
        let initial = Caches {
            key: workload::random_bytes(cache_bytes, case.seed ^ 0x1111),
            value: workload::random_bytes(cache_bytes, case.seed ^ 0x2222),
        };
        let mut data = Self {
            k_scale: finite_scale(workload::fp8_scale(p.dtype, &key)),
            v_scale: finite_scale(workload::fp8_scale(p.dtype, &value)),
            key,
            value,
            slot_mapping,
            expected: initial.clone(),
            initial,
        };
        let inputs = data.inputs();
        let mut expected = data.initial.clone();
        reference::reshape_and_cache(p, &inputs, &mut expected);
        data.expected = expected;
        Ok(data)
    }

    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            key: &self.key,
            value: &self.value,
            slot_mapping: &self.slot_mapping,
            k_scale: self.k_scale,
            v_scale: self.v_scale,
        }
    }
}

/// Runs `backend` on `case` and compares its caches with the reference.
/// `Ok(None)` means every byte matches.
pub fn check(backend: &mut dyn Backend, case: &Case) -> Result<Option<Mismatch>> {
    let data = CaseData::new(case)?;
    let got = {
        let mut call =
            backend.prepare(&case.problem, data.inputs(), CacheFill::Copy(&data.initial))?;
        call.run()?;
        call.read_back()?
    };
    Ok(compare(&case.problem, &data, &got))
}

/// Locates the first difference between `got` and the expected caches, if any.
pub fn compare(problem: &Problem, data: &CaseData, got: &Caches) -> Option<Mismatch> {
    for (name, expected, got) in [
        ("key", &data.expected.key, &got.key),
        ("value", &data.expected.value, &got.value),
    ] {
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
        let differs =
            |i: usize| expected[i * size..(i + 1) * size] != got[i * size..(i + 1) * size];
        let elements = expected.len() / size;
        let first = (0..elements).find(|&i| differs(i))?;
        let count = (first..elements).filter(|&i| differs(i)).count() as u64;
        return Some(locate(problem, data, name, first, count, expected, got));
    }
    None
}

fn locate(
    problem: &Problem,
    data: &CaseData,
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
    let token = data.slot_mapping.iter().position(|&t| t == slot);
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
    match problem.cache_dtype {
        CacheDtype::Fp8 => format!("{:#04x} ({})", bytes[index], fp8::e4m3_to_f32(bytes[index])),
        CacheDtype::Auto => {
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

/// Replaces about one element in 50 by NaN, +-Inf, a huge or a tiny value.
fn sprinkle_special_values(problem: &Problem, bytes: &mut [u8], seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
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
    let elements = bytes.len() / problem.dtype.size();
    for _ in 0..elements / 50 {
        let index = rng.random_range(0..elements);
        let value = specials[rng.random_range(0..specials.len())];
        problem.dtype.write_f32(bytes, index, value);
    }
}

/// The benchmark's scale rule (max / 64) gives NaN or Inf once special values are in the data;
/// verification wants a finite, positive scale either way.
fn finite_scale(scale: f32) -> f32 {
    if scale.is_finite() && scale > 0.0 {
        scale
    } else {
        0.0625
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

/// The verification matrix: small head counts so that thousands of tokens stay cheap, caches
/// with about twice as many slots as tokens (so untouched slots are checked too), some padding,
/// and special values in every fourth case.
pub fn matrix(coverage: Coverage, seed: u64) -> Vec<Case> {
    use crate::problem::Dtype;
    let (head_sizes, token_counts): (&[usize], &[usize]) = match coverage {
        Coverage::Quick => (&[64, 120, 128], &[1, 17, 1000]),
        Coverage::Full => (&HEAD_SIZES, &[1, 3, 17, 1000, 4097]),
    };
    let mut cases = Vec::new();
    for layout in [Layout::Nhd, Layout::Hnd] {
        for dtype in [Dtype::Half, Dtype::BFloat16, Dtype::Float] {
            for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8] {
                for &head_size in head_sizes {
                    if cache_dtype == CacheDtype::Fp8 && !head_size.is_multiple_of(16) {
                        continue;
                    }
                    for block_size in BLOCK_SIZES {
                        for &num_tokens in token_counts {
                            let index = cases.len() as u64;
                            let num_heads = if num_tokens >= 1000 { 2 } else { 5 };
                            let num_blocks = (2 * num_tokens).div_ceil(block_size) + 1;
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
                                },
                                padding_fraction: if num_tokens > 2 { 0.1 } else { 0.0 },
                                special_values: index % 4 == 3,
                                seed: seed.wrapping_add(index),
                            });
                        }
                    }
                }
            }
        }
    }
    cases
}
