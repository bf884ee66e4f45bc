//! The cross-backend check: run a backend on random inputs with poisoned caches and compare
//! every byte of both caches with the CPU reference, so that wrong values, missing writes and
//! stray writes all show.
//!
//! [`check`] runs one [`Case`]; [`run`] runs a list of cases on several backends ("subjects")
//! and gathers a [`Report`]: the pass/fail matrix and the first mismatch of each failing case.
//!
//! `mod.rs` holds the case and the comparison; `data.rs` the inputs and poisoned caches of a
//! case; `matrix.rs` the cases to check; `run.rs` running them on subjects and the report.

use std::fmt;

use crate::backend::Backend;
use crate::error::Result;
use crate::problem::{Layout, Problem};
use crate::reference;
use crate::workload::{CacheFill, Caches, Scaling, SlotPattern};

mod data;
mod matrix;
mod run;

pub use data::*;
pub use matrix::*;
pub use run::*;

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
    compare_caches(problem, &data.host.slot_mapping, &data.expected, got)
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
