//! What a call reads and writes: random inputs, slot mappings, fp8 scales and cache contents,
//! all derived from a seed so that any run can be replayed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::problem::{Dtype, Problem};

/// The inputs of one call, borrowed from host memory. Keys and values are
/// `[num_tokens, num_heads, head_size]`, contiguous, little-endian in the problem's dtype.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub slot_mapping: &'a [i64],
    /// Divisor for keys when the cache is fp8 (ignored for `auto`).
    pub k_scale: f32,
    /// Divisor for values when the cache is fp8 (ignored for `auto`).
    pub v_scale: f32,
}

impl Inputs<'_> {
    /// Checks that these inputs can be handed to a backend for `problem`: the problem is valid,
    /// keys and values hold exactly its tokens, and every slot is -1 or a distinct cache slot.
    /// Every backend's `prepare` starts here.
    pub fn validate_for(&self, problem: &Problem) -> Result<()> {
        problem.validate()?;
        let input_bytes = problem.input_bytes() as usize;
        if self.key.len() != input_bytes || self.value.len() != input_bytes {
            return Err(Error::InvalidConfig(format!(
                "keys and values hold {} and {} bytes, the problem needs {input_bytes} each",
                self.key.len(),
                self.value.len()
            )));
        }
        problem.validate_slots(self.slot_mapping)
    }
}

/// The key cache and the value cache as raw bytes, in the problem's layout and cache dtype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caches {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// What the caches hold before a call.
#[derive(Debug, Clone, Copy)]
pub enum CacheFill<'a> {
    /// Arbitrary non-zero data from a seed (for benchmarks; a backend may fill on the device,
    /// and may keep its caches from an earlier call with the same seed and size).
    Random { seed: u64 },
    /// Exactly these bytes (for verification).
    Copy(&'a Caches),
}

/// Elements generated per independent random stream: fixed, so that the data depends only on
/// the seed, never on the number of threads.
const CHUNK_ELEMENTS: usize = 1 << 16;

/// Mixes a seed with a stream index (splitmix64's finaliser) so that streams are unrelated.
fn stream_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `elements` standard-normal values rounded to `dtype`, as little-endian bytes.
pub fn random_normal(dtype: Dtype, elements: usize, seed: u64) -> Vec<u8> {
    let size = dtype.size();
    let mut bytes = vec![0u8; elements * size];
    bytes
        .par_chunks_mut(CHUNK_ELEMENTS * size)
        .enumerate()
        .for_each(|(chunk, out)| {
            let mut rng = SmallRng::seed_from_u64(stream_seed(seed, chunk as u64));
            for i in 0..out.len() / size {
                let x: f32 = rng.sample(StandardNormal);
                dtype.write_f32(out, i, x);
            }
        });
    bytes
}

/// `len` uniformly random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    fill_random(&mut bytes, seed);
    bytes
}

/// Bytes of each independent stream of [`fill_random`].
const FILL_STREAM_BYTES: usize = CHUNK_ELEMENTS * 8;

/// Overwrites `bytes` with uniformly random bytes (in parallel: this also faults a new
/// buffer's pages in on every core).
pub fn fill_random(bytes: &mut [u8], seed: u64) {
    bytes
        .par_chunks_mut(FILL_STREAM_BYTES)
        .enumerate()
        .for_each(|(chunk, out)| fill_stream(out, seed, chunk));
}

fn fill_stream(out: &mut [u8], seed: u64, chunk: usize) {
    let mut rng = SmallRng::seed_from_u64(stream_seed(seed, chunk as u64));
    rng.fill(out);
}

/// Puts back what [`fill_random`] wrote with `seed` into the byte ranges `touched` of `bytes`
/// (and the rest of the streams that cover them), leaving the other bytes alone: undoing a
/// call's writes costs about what the call wrote, not a whole cache.
pub fn restore_random(bytes: &mut [u8], seed: u64, touched: &[std::ops::Range<usize>]) {
    let mut streams = vec![false; bytes.len().div_ceil(FILL_STREAM_BYTES)];
    for range in touched.iter().filter(|r| !r.is_empty()) {
        let last = (range.end.min(bytes.len()) - 1) / FILL_STREAM_BYTES;
        for stream in &mut streams[range.start / FILL_STREAM_BYTES..=last] {
            *stream = true;
        }
    }
    bytes
        .par_chunks_mut(FILL_STREAM_BYTES)
        .enumerate()
        .filter(|(chunk, _)| streams[*chunk])
        .for_each(|(chunk, out)| fill_stream(out, seed, chunk));
}

/// A slot for each of `num_tokens` tokens: distinct slots drawn uniformly from the whole cache
/// (as vLLM's benchmark does), with about `padding_fraction` of the tokens set to -1.
pub fn random_slot_mapping(
    num_slots: u64,
    num_tokens: usize,
    padding_fraction: f64,
    seed: u64,
) -> Vec<i64> {
    let mut rng = SmallRng::seed_from_u64(stream_seed(seed, u64::MAX));
    let mut slots: Vec<i64> = rand::seq::index::sample(&mut rng, num_slots as usize, num_tokens)
        .into_iter()
        .map(|slot| slot as i64)
        .collect();
    if padding_fraction > 0.0 {
        for slot in &mut slots {
            if rng.random_bool(padding_fraction) {
                *slot = -1;
            }
        }
    }
    slots
}

/// The slot mapping of input copy `set` of `sets` when timing with rotating inputs: every
/// valid slot moved by the same whole number of blocks (modulo the cache), so the copies write
/// different cache lines while each stays free of duplicates; padding and out-of-range slots
/// are kept as they are.
pub fn rotated_slot_mapping(
    slots: &[i64],
    num_slots: u64,
    block_size: usize,
    set: usize,
    sets: usize,
) -> Vec<i64> {
    let blocks = num_slots / block_size as u64;
    let shift = (blocks * set as u64 / sets.max(1) as u64) * block_size as u64;
    slots
        .iter()
        .map(|&slot| {
            if slot >= 0 && (slot as u64) < num_slots {
                ((slot as u64 + shift) % num_slots) as i64
            } else {
                slot
            }
        })
        .collect()
}

/// The fp8 scale vLLM's benchmark uses: the largest element divided by 64.
pub fn fp8_scale(dtype: Dtype, bytes: &[u8]) -> f32 {
    let size = dtype.size();
    let max = bytes
        .par_chunks(CHUNK_ELEMENTS * size)
        .map(|chunk| {
            (0..chunk.len() / size)
                .map(|i| dtype.read_f32(chunk, i))
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .reduce(|| f32::NEG_INFINITY, f32::max);
    max / 64.0
}

/// Random keys and values for up to `max_tokens` tokens; each benchmark row uses a prefix.
pub struct HostInputs {
    pub dtype: Dtype,
    pub token_elements: usize,
    pub max_tokens: usize,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl HostInputs {
    pub fn random(dtype: Dtype, token_elements: usize, max_tokens: usize, seed: u64) -> Self {
        let elements = token_elements * max_tokens;
        Self {
            dtype,
            token_elements,
            max_tokens,
            key: random_normal(dtype, elements, stream_seed(seed, 1)),
            value: random_normal(dtype, elements, stream_seed(seed, 2)),
        }
    }

    /// The inputs of `problem` (its first `num_tokens` tokens) with the given slots, and fp8
    /// scales computed from those tokens as vLLM's benchmark does.
    pub fn inputs<'a>(&'a self, problem: &Problem, slot_mapping: &'a [i64]) -> Inputs<'a> {
        assert!(problem.num_tokens <= self.max_tokens && problem.dtype == self.dtype);
        assert_eq!(problem.token_elements(), self.token_elements);
        let len = problem.input_bytes() as usize;
        let (key, value) = (&self.key[..len], &self.value[..len]);
        Inputs {
            key,
            value,
            slot_mapping,
            k_scale: fp8_scale(self.dtype, key),
            v_scale: fp8_scale(self.dtype, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_values_are_seeded_nonzero_and_plausible() {
        let a = random_normal(Dtype::Float, 100_000, 7);
        assert_eq!(a, random_normal(Dtype::Float, 100_000, 7));
        assert_ne!(a, random_normal(Dtype::Float, 100_000, 8));
        let values: Vec<f32> = bytemuck::pod_collect_to_vec(&a);
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        let var = values.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / values.len() as f32;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
        assert!(values.iter().filter(|x| **x == 0.0).count() < 5);
    }

    #[test]
    fn restoring_touched_ranges_gives_back_the_fill() {
        let len = 3 * FILL_STREAM_BYTES + 1000;
        let fill = random_bytes(len, 9);
        let mut written = fill.clone();
        let touched = [
            10..20,
            FILL_STREAM_BYTES + 5..FILL_STREAM_BYTES + 6,
            len - 3..len,
        ];
        for range in &touched {
            written[range.clone()].fill(0);
        }
        // Bytes outside the touched streams that the fill did not produce stay as they are.
        written[2 * FILL_STREAM_BYTES] ^= 1;
        restore_random(&mut written, 9, &touched);
        assert_eq!(
            written[..2 * FILL_STREAM_BYTES],
            fill[..2 * FILL_STREAM_BYTES]
        );
        assert_ne!(written[2 * FILL_STREAM_BYTES], fill[2 * FILL_STREAM_BYTES]);
        assert_eq!(
            written[3 * FILL_STREAM_BYTES..],
            fill[3 * FILL_STREAM_BYTES..]
        );
    }

    #[test]
    fn slot_mappings_are_distinct_in_range_and_padded() {
        let slots = random_slot_mapping(1000, 500, 0.2, 3);
        let used: Vec<i64> = slots.iter().copied().filter(|s| *s >= 0).collect();
        let mut sorted = used.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), used.len());
        assert!(used.iter().all(|s| *s < 1000));
        let padding = slots.len() - used.len();
        assert!((50..150).contains(&padding), "{padding}");
        assert!(random_slot_mapping(10, 10, 0.0, 1).iter().all(|s| *s >= 0));
    }

    #[test]
    fn rotated_slot_mappings_move_whole_blocks_and_stay_distinct() {
        let mut slots = random_slot_mapping(16 * 100, 300, 0.1, 5);
        slots[0] = 16 * 100 + 3; // out of range: left alone (the kernels skip it)
        assert_eq!(rotated_slot_mapping(&slots, 1600, 16, 0, 4), slots);
        for set in 1..4 {
            let rotated = rotated_slot_mapping(&slots, 1600, 16, set, 4);
            assert_eq!(rotated[0], slots[0]);
            let mut seen = std::collections::HashSet::new();
            for (&new, &old) in rotated.iter().zip(&slots).skip(1) {
                if old < 0 {
                    assert_eq!(new, old);
                    continue;
                }
                assert!((0..1600).contains(&new));
                assert_eq!(new % 16, old % 16, "offsets within a block are kept");
                assert_ne!(new, old);
                assert!(seen.insert(new), "duplicate slot {new}");
            }
        }
    }

    #[test]
    fn inputs_must_match_the_problem() {
        use crate::problem::{CacheDtype, Layout};
        let problem = Problem {
            num_tokens: 2,
            num_heads: 1,
            head_size: 4,
            block_size: 2,
            num_blocks: 2,
            dtype: Dtype::Float,
            cache_dtype: CacheDtype::Auto,
            layout: Layout::Nhd,
        };
        let data = vec![1u8; 32];
        let inputs = Inputs {
            key: &data,
            value: &data,
            slot_mapping: &[3, -1],
            k_scale: 1.0,
            v_scale: 1.0,
        };
        assert!(inputs.validate_for(&problem).is_ok());
        let short = Inputs {
            value: &data[..16],
            ..inputs
        };
        assert!(matches!(
            short.validate_for(&problem),
            Err(Error::InvalidConfig(_))
        ));
        let out_of_range = Inputs {
            slot_mapping: &[4, 0],
            ..inputs
        };
        assert!(matches!(
            out_of_range.validate_for(&problem),
            Err(Error::SlotOutOfRange { token: 0, .. })
        ));
    }

    #[test]
    fn scale_is_max_over_64() {
        let mut bytes = vec![0u8; 8];
        Dtype::BFloat16.write_f32(&mut bytes, 0, -3.0);
        Dtype::BFloat16.write_f32(&mut bytes, 1, 2.5);
        Dtype::BFloat16.write_f32(&mut bytes, 2, 1.0);
        Dtype::BFloat16.write_f32(&mut bytes, 3, -9.0);
        assert_eq!(fp8_scale(Dtype::BFloat16, &bytes), 2.5 / 64.0);
    }
}
