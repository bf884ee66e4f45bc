//! The pattern kernel's result: what `--ceiling pattern` times on every backend
//! ([`crate::backend::Prepared::pattern`]), defined here as [`crate::reference`] defines the
//! real call, so that each backend's pattern kernel is checked against it byte for byte.
//!
//! The pattern kernel reads the bytes the real call reads and writes as many bytes to the
//! addresses it writes, with the arithmetic removed: its time is the row's own ceiling, what
//! the row's write pattern (NHD or HND rows of `head_size` elements, scattered slots) allows,
//! where the copy bandwidth is what contiguous buffers allow. For token `t` with slot
//! `s = slot_mapping[t]` (padding and slots outside the cache write nothing, as in the real
//! call), for every head `h` and element `d`, the cache element the reference writes gets:
//!
//! - cache dtype `auto`: the input element, bit for bit (the pattern kernel is a copy, and its
//!   result equals the reference's);
//! - fp8 caches: the input element's most significant byte (its last in memory), taken
//!   without any arithmetic, so that the same one byte per element lands at the same address.
//!
//! Scales are not read: they are inputs of the arithmetic, a few bytes.

use crate::problem::Problem;
use crate::reference;
use crate::workload::{Caches, Inputs};

/// Writes the pattern of every token of `inputs` into `caches`, one by one.
pub fn write_all(problem: &Problem, inputs: &Inputs, caches: &mut Caches) {
    reference::write_tokens(problem, inputs, caches, write_token);
}

/// The pattern of one token, as [`crate::reference::write_token`] writes the call (the same
/// arguments, the same parts of the caches).
pub fn write_token(
    problem: &Problem,
    inputs: &Inputs,
    key_cache: &mut [u8],
    value_cache: &mut [u8],
    first_element: u64,
    token: usize,
) {
    for (_, source, target) in
        reference::token_heads(problem, inputs.slot_mapping, first_element, token)
    {
        write_head(problem, inputs.key, key_cache, source, target);
        write_head(problem, inputs.value, value_cache, source, target);
    }
}

fn write_head(problem: &Problem, input: &[u8], cache: &mut [u8], source: usize, target: usize) {
    let d = problem.head_size;
    let size = problem.dtype.size();
    let input = &input[source * size..(source + d) * size];
    if problem.cache_dtype.is_fp8() {
        for (byte, element) in cache[target..target + d]
            .iter_mut()
            .zip(input.chunks_exact(size))
        {
            *byte = element[size - 1];
        }
    } else {
        cache[target * size..(target + d) * size].copy_from_slice(input);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::verify::{self, CaseData, Coverage};

    /// The bytes a writer changes, exactly: run on caches of all zeros and of all ones, a byte
    /// is written where either result differs from its fill (no value equals both).
    fn touched(
        problem: &Problem,
        inputs: &Inputs,
        write: fn(&Problem, &Inputs, &mut Caches),
    ) -> Vec<bool> {
        let bytes = problem.cache_bytes() as usize;
        let run = |fill: u8| {
            let mut caches = Caches {
                key: vec![fill; bytes],
                value: vec![fill; bytes],
            };
            write(problem, inputs, &mut caches);
            caches
        };
        let (zeros, ones) = (run(0x00), run(0xff));
        let cache = |z: &[u8], o: &[u8]| -> Vec<bool> {
            z.iter()
                .zip(o)
                .map(|(&z, &o)| z != 0x00 || o != 0xff)
                .collect()
        };
        let mut all = cache(&zeros.key, &ones.key);
        all.extend(cache(&zeros.value, &ones.value));
        all
    }

    #[test]
    fn the_pattern_writes_exactly_what_the_reference_writes() {
        let mut fp8 = 0;
        for case in verify::matrix(Coverage::Quick, 3) {
            let data = CaseData::new(&case).unwrap();
            let (problem, inputs) = (&case.problem, data.inputs());
            let reference = touched(problem, &inputs, reference::reshape_and_cache);
            assert_eq!(
                touched(problem, &inputs, write_all),
                reference,
                "{}",
                problem.describe()
            );
            assert!(reference.iter().any(|&t| t), "{}", problem.describe());
            let mut pattern = data.initial.clone();
            write_all(problem, &inputs, &mut pattern);
            if problem.cache_dtype.is_fp8() {
                fp8 += 1;
            } else {
                // A copy: the reference's result itself.
                assert_eq!(pattern, data.expected, "{}", problem.describe());
            }
        }
        assert!(fp8 > 0);
    }
}
