//! What a call reads and writes: random inputs, slot mappings, fp8 scales and cache contents,
//! all derived from a seed so that any run can be replayed.
//!
//! `mod.rs` holds the inputs, caches and their random contents; `slots.rs` the slot mappings
//! (vLLM's random draw and the serving patterns); `scales.rs` the fp8 scales.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::problem::{Dtype, InputStrides, Problem};

/// The fp8 divisor of the keys (or the values) of a call: one for the whole tensor, or one per
mod scales;
mod slots;

pub use scales::*;
pub use slots::*;

/// The inputs of one call, borrowed from host memory. Keys and values are little-endian in the
/// problem's dtype, laid out as [`Problem::inputs`] says: each slice starts at its tensor's
/// first element (token 0, head 0) and holds [`Problem::input_bytes`] bytes. With fused QKV
/// inputs, both are slices of the one fused tensor.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub slot_mapping: &'a [i64],
    /// Divisor for keys when the cache is fp8 (ignored for `auto`).
    pub k_scale: Scale<'a>,
    /// Divisor for values when the cache is fp8 (ignored for `auto`).
    pub v_scale: Scale<'a>,
}

impl Inputs<'_> {
    /// Checks that these inputs can be handed to a backend for `problem`: the problem is valid,
    /// keys and values hold exactly its tokens, per-head scales one per head, and every slot is
    /// -1 or a distinct cache slot. Every backend's `prepare` starts here.
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
        for (name, scale) in [("k_scale", self.k_scale), ("v_scale", self.v_scale)] {
            if let Scale::PerHead(scales) = scale {
                if scales.len() != problem.num_heads {
                    return Err(Error::InvalidConfig(format!(
                        "{name} holds {} per-head scales for {} heads",
                        scales.len(),
                        problem.num_heads
                    )));
                }
            }
        }
        problem.validate_slots(self.slot_mapping)
    }

    /// Whether either scale is given per head.
    pub fn per_head_scales(&self) -> bool {
        self.scaling() == Scaling::PerHead
    }

    /// How the scales are given: per head where either is.
    pub fn scaling(&self) -> Scaling {
        if self.k_scale.scaling() == Scaling::PerHead || self.v_scale.scaling() == Scaling::PerHead
        {
            Scaling::PerHead
        } else {
            Scaling::PerTensor
        }
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

/// What a benchmark's inputs look like besides their sizes: the `--qkv-fused`, `--scale` and
/// `--slots` choices (and the `--model` preset they came from, if any).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadConfig {
    /// Keys and values as slices of a fused QKV tensor with this many query heads; `None`:
    /// contiguous keys and values.
    #[serde(default)]
    pub qkv_fused: Option<usize>,
    #[serde(default)]
    pub scale: Scaling,
    #[serde(default)]
    pub slots: SlotPattern,
    /// The `--model` preset that set the shape, if any.
    #[serde(default)]
    pub model: Option<String>,
}

impl WorkloadConfig {
    /// The input strides of `num_heads` heads of `head_size` elements.
    pub fn input_strides(&self, num_heads: usize, head_size: usize) -> Option<InputStrides> {
        self.qkv_fused
            .map(|query_heads| InputStrides::qkv_fused(query_heads, num_heads, head_size))
    }

    /// The settings that differ from the defaults, as `name=value` words (for headers).
    pub fn non_default(&self) -> Vec<String> {
        let mut words = Vec::new();
        if let Some(model) = &self.model {
            words.push(format!("model={model}"));
        }
        if let Some(query_heads) = self.qkv_fused {
            words.push(format!("qkv_fused={query_heads}"));
        }
        if self.scale != Scaling::default() {
            words.push(format!("scale={}", self.scale));
        }
        if self.slots != SlotPattern::default() {
            words.push(format!("slots={}", self.slots));
        }
        words
    }
}

/// Random inputs for up to `max_tokens` tokens; each benchmark row uses a prefix.
pub struct HostInputs {
    pub dtype: Dtype,
    pub token_elements: usize,
    pub max_tokens: usize,
    /// The keys (contiguous inputs), or the fused QKV tensor that holds keys and values.
    pub key: Vec<u8>,
    /// The values (contiguous inputs; empty for fused ones).
    pub value: Vec<u8>,
    /// Fused inputs: their strides, and where keys and values start in `key`, in elements.
    fused: Option<(InputStrides, usize, usize)>,
}

impl HostInputs {
    /// Contiguous random keys and values of `token_elements` elements per token.
    pub fn random(dtype: Dtype, token_elements: usize, max_tokens: usize, seed: u64) -> Self {
        let elements = token_elements * max_tokens;
        Self {
            dtype,
            token_elements,
            max_tokens,
            key: random_normal(dtype, elements, stream_seed(seed, 1)),
            value: random_normal(dtype, elements, stream_seed(seed, 2)),
            fused: None,
        }
    }

    /// Random inputs laid out as `workload` says: contiguous, or slices of one fused QKV
    /// tensor `[max_tokens, (query_heads + 2 * num_heads) * head_size]` (queries, keys, values
    /// of each token; all of it random).
    pub fn for_workload(
        dtype: Dtype,
        num_heads: usize,
        head_size: usize,
        workload: &WorkloadConfig,
        max_tokens: usize,
        seed: u64,
    ) -> Self {
        let token_elements = num_heads * head_size;
        let Some(strides) = workload.input_strides(num_heads, head_size) else {
            return Self::random(dtype, token_elements, max_tokens, seed);
        };
        let query_heads = workload.qkv_fused.unwrap_or(0);
        Self {
            dtype,
            token_elements,
            max_tokens,
            key: random_normal(
                dtype,
                strides.token as usize * max_tokens,
                stream_seed(seed, 3),
            ),
            value: Vec::new(),
            fused: Some((
                strides,
                query_heads * head_size,
                (query_heads + num_heads) * head_size,
            )),
        }
    }

    /// The keys and values of `problem` (its first `num_tokens` tokens), as [`Inputs`] holds
    /// them.
    pub fn slices(&self, problem: &Problem) -> (&[u8], &[u8]) {
        assert!(problem.num_tokens <= self.max_tokens && problem.dtype == self.dtype);
        assert_eq!(problem.token_elements(), self.token_elements);
        assert_eq!(
            problem.input_strides,
            self.fused.map(|(strides, ..)| strides)
        );
        let len = problem.input_bytes() as usize;
        match self.fused {
            None => (&self.key[..len], &self.value[..len]),
            Some((_, key_offset, value_offset)) => {
                let size = self.dtype.size();
                let (k, v) = (key_offset * size, value_offset * size);
                (&self.key[k..k + len], &self.key[v..v + len])
            }
        }
    }

    /// The inputs of `problem` (its first `num_tokens` tokens) with the given slots, and
    /// per-tensor fp8 scales computed from those tokens as vLLM's benchmark does.
    pub fn inputs<'a>(&'a self, problem: &Problem, slot_mapping: &'a [i64]) -> Inputs<'a> {
        let (key, value) = self.slices(problem);
        Inputs {
            key,
            value,
            slot_mapping,
            k_scale: Scale::PerTensor(fp8_tensor_scale(problem, key)),
            v_scale: Scale::PerTensor(fp8_tensor_scale(problem, value)),
        }
    }

    /// The scales of `problem`'s tokens, per tensor or per head.
    pub fn scales(&self, problem: &Problem, scaling: Scaling) -> Scales {
        let (key, value) = self.slices(problem);
        Scales::of(problem, key, value, scaling)
    }

    /// The inputs of `problem` with the given slots and scales.
    pub fn inputs_with<'a>(
        &'a self,
        problem: &Problem,
        slot_mapping: &'a [i64],
        scales: &'a Scales,
    ) -> Inputs<'a> {
        let (key, value) = self.slices(problem);
        Inputs {
            key,
            value,
            slot_mapping,
            k_scale: scales.k(),
            v_scale: scales.v(),
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
            input_strides: None,
        };
        let data = vec![1u8; 32];
        let inputs = Inputs {
            key: &data,
            value: &data,
            slot_mapping: &[3, -1],
            k_scale: Scale::PerTensor(1.0),
            v_scale: Scale::PerTensor(1.0),
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
        let one_head = [0.5];
        let per_head = Inputs {
            v_scale: Scale::PerHead(&one_head),
            ..inputs
        };
        assert!(per_head.validate_for(&problem).is_ok());
        let two_heads = [0.5, 0.25];
        let wrong = Inputs {
            k_scale: Scale::PerHead(&two_heads),
            ..inputs
        };
        assert!(
            matches!(wrong.validate_for(&problem), Err(Error::InvalidConfig(m)) if m.contains("k_scale"))
        );
        // Strided inputs hold their span: (2 - 1) * 12 + 4 floats.
        let strided = Problem {
            input_strides: Some(InputStrides { token: 12, head: 4 }),
            ..problem
        };
        let span = vec![0u8; 16 * 4];
        let fused = Inputs {
            key: &span,
            value: &span,
            ..inputs
        };
        assert!(fused.validate_for(&strided).is_ok());
        assert!(inputs.validate_for(&strided).is_err());
    }

    #[test]
    fn fused_inputs_are_slices_of_one_tensor_and_scales_skip_the_queries() {
        use crate::problem::{CacheDtype, Layout};
        let workload = WorkloadConfig {
            qkv_fused: Some(3),
            ..WorkloadConfig::default()
        };
        let host = HostInputs::for_workload(Dtype::Float, 2, 16, &workload, 8, 5);
        let problem = Problem {
            num_tokens: 5,
            num_heads: 2,
            head_size: 16,
            block_size: 16,
            num_blocks: 1,
            dtype: Dtype::Float,
            cache_dtype: CacheDtype::Fp8,
            layout: Layout::Nhd,
            input_strides: workload.input_strides(2, 16),
        };
        let (key, value) = host.slices(&problem);
        assert_eq!(key.len() as u64, problem.input_bytes());
        // Token 1, head 1, element 2 of the keys and values, read from the fused tensor.
        let row = 7 * 16;
        let at = |offset: usize| Dtype::Float.read_f32(&host.key, offset);
        assert_eq!(
            Dtype::Float.read_f32(key, problem.input_offset(1, 1) as usize + 2),
            at(row + 3 * 16 + 16 + 2)
        );
        assert_eq!(
            Dtype::Float.read_f32(value, problem.input_offset(1, 1) as usize + 2),
            at(row + 5 * 16 + 16 + 2)
        );
        // Scales only see keys (values): head h's max over the 5 tokens.
        let scales = host.scales(&problem, Scaling::PerHead);
        for head in 0..2 {
            let max = (0..5)
                .flat_map(|t| (0..16).map(move |d| (t, d)))
                .map(|(t, d)| at(t * row + 3 * 16 + head * 16 + d))
                .fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(scales.key[head], max / 64.0);
        }
        assert_ne!(scales.key[0], scales.key[1]);
        let tensor = host.scales(&problem, Scaling::PerTensor);
        assert_eq!(tensor.key, vec![scales.key[0].max(scales.key[1])]);
        assert_eq!(tensor.k(), Scale::PerTensor(tensor.key[0]));
        assert_eq!(scales.v(), Scale::PerHead(&scales.value));
        let slots = [0, 1, 2, 3, 4];
        assert!(host
            .inputs_with(&problem, &slots, &scales)
            .validate_for(&problem)
            .is_ok());
    }
}
