//! What a call reads and writes: random inputs, slot mappings, fp8 scales and cache contents,
//! all derived from a seed so that any run can be replayed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::problem::{Dtype, InputStrides, Problem};

/// The fp8 divisor of the keys (or the values) of a call: one for the whole tensor, or one per
/// head (vLLM's `k_scale` / `v_scale` of shape `[1]` or `[num_heads]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale<'a> {
    PerTensor(f32),
    /// `num_heads` divisors, head `h`'s at index `h`.
    PerHead(&'a [f32]),
}

impl Scale<'_> {
    /// The divisor of head `head`.
    pub fn of_head(&self, head: usize) -> f32 {
        match self {
            Scale::PerTensor(scale) => *scale,
            Scale::PerHead(scales) => scales[head],
        }
    }

    pub fn scaling(&self) -> Scaling {
        match self {
            Scale::PerTensor(_) => Scaling::PerTensor,
            Scale::PerHead(_) => Scaling::PerHead,
        }
    }
}

impl From<f32> for Scale<'_> {
    fn from(scale: f32) -> Self {
        Scale::PerTensor(scale)
    }
}

/// How fp8 scales are given: one per tensor or one per head (`--scale`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Scaling {
    /// One scale for all keys and one for all values (each tensor's max / 64).
    #[default]
    PerTensor,
    /// One scale per head for keys and for values (each head's max / 64).
    PerHead,
}

impl Scaling {
    pub fn name(self) -> &'static str {
        match self {
            Scaling::PerTensor => "per-tensor",
            Scaling::PerHead => "per-head",
        }
    }
}

impl std::fmt::Display for Scaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
        self.k_scale.scaling() == Scaling::PerHead || self.v_scale.scaling() == Scaling::PerHead
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

/// Where a call's tokens go in the cache (`--slots`): the slot pattern decides how many cache
/// lines and pages one call touches.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SlotPattern {
    /// Distinct slots drawn uniformly from the whole cache (vLLM's benchmark).
    #[default]
    Random,
    /// One token per request, each at the next free offset of its own block, the blocks
    /// scattered over the cache (a decode step).
    Decode,
    /// A few requests, each writing a contiguous run of slots through whole blocks from a
    /// block's start, the last block partly filled (prompts).
    Prefill,
    /// One prefill run after many decode tokens (a chunked-prefill batch): a quarter of the
    /// tokens, at most 256, are decodes.
    Mixed,
}

/// Requests of a prefill call, at most.
const PREFILL_REQUESTS: usize = 4;
/// Decode tokens of a mixed call, at most: the requests a vLLM engine schedules at once by
/// default (`max_num_seqs`), so that larger calls grow their prefill run, as chunked prefill
/// batches do.
const MIXED_DECODES: usize = 256;

impl SlotPattern {
    pub const ALL: [SlotPattern; 4] = [
        SlotPattern::Random,
        SlotPattern::Decode,
        SlotPattern::Prefill,
        SlotPattern::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SlotPattern::Random => "random",
            SlotPattern::Decode => "decode",
            SlotPattern::Prefill => "prefill",
            SlotPattern::Mixed => "mixed",
        }
    }

    /// Decode tokens of a mixed call of `num_tokens` tokens (the rest is the prefill run): a
    /// quarter, at least one (from 2 tokens on) and at most `MIXED_DECODES`.
    fn mixed_decodes(num_tokens: usize) -> usize {
        if num_tokens < 2 {
            0
        } else {
            (num_tokens / 4).clamp(1, MIXED_DECODES)
        }
    }

    /// The most cache blocks this pattern needs for `num_tokens` tokens (whole blocks per
    /// request; for `random`, the blocks that hold `num_tokens` slots).
    pub fn blocks_needed(self, num_tokens: usize, block_size: usize) -> u64 {
        let (n, b) = (num_tokens as u64, block_size as u64);
        match self {
            SlotPattern::Random => n.div_ceil(b),
            SlotPattern::Decode => n,
            SlotPattern::Prefill => n.div_ceil(b) + (PREFILL_REQUESTS as u64 - 1).min(n),
            SlotPattern::Mixed => {
                let decodes = Self::mixed_decodes(num_tokens) as u64;
                decodes + (n - decodes).div_ceil(b)
            }
        }
    }

    /// Checks that `num_tokens` tokens of this pattern fit in `num_blocks` blocks.
    pub fn check_fits(self, num_tokens: usize, block_size: usize, num_blocks: usize) -> Result<()> {
        let needed = self.blocks_needed(num_tokens, block_size);
        if self != SlotPattern::Random && needed > num_blocks as u64 {
            return Err(Error::InvalidConfig(format!(
                "--slots {} with {num_tokens} tokens needs up to {needed} cache blocks (whole \
                 blocks per request), the cache has {num_blocks}",
                self.name()
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for SlotPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A slot for each of `num_tokens` tokens in a cache of `num_blocks` blocks of `block_size`
/// slots, placed as `pattern` says, with about `padding_fraction` of the tokens then set to -1
/// (a padded batch). Distinct slots, a function of the arguments alone. `random` is
/// [`random_slot_mapping`] itself.
pub fn slot_mapping(
    pattern: SlotPattern,
    num_blocks: usize,
    block_size: usize,
    num_tokens: usize,
    padding_fraction: f64,
    seed: u64,
) -> Result<Vec<i64>> {
    let num_slots = num_blocks as u64 * block_size as u64;
    if pattern == SlotPattern::Random {
        if num_tokens as u64 > num_slots {
            return Err(Error::InvalidConfig(format!(
                "{num_tokens} tokens do not fit in {num_slots} slots"
            )));
        }
        return Ok(random_slot_mapping(
            num_slots,
            num_tokens,
            padding_fraction,
            seed,
        ));
    }
    pattern.check_fits(num_tokens, block_size, num_blocks)?;
    let mut rng = SmallRng::seed_from_u64(stream_seed(seed, u64::MAX - 1));
    // Requests as (tokens, whether a decode): decodes first, as engines batch them.
    let mut requests: Vec<(usize, bool)> = Vec::new();
    let prefill_runs = |rng: &mut SmallRng, tokens: usize, runs: usize| -> Vec<usize> {
        // `runs` runs of at least one token: cut points drawn without repetition.
        let runs = runs.clamp(1, tokens.max(1));
        let mut cuts: Vec<usize> = if runs > 1 {
            rand::seq::index::sample(rng, tokens - 1, runs - 1)
                .into_iter()
                .map(|c| c + 1)
                .collect()
        } else {
            Vec::new()
        };
        cuts.sort_unstable();
        cuts.push(tokens);
        let mut start = 0;
        cuts.into_iter()
            .map(|end| {
                let run = end - start;
                start = end;
                run
            })
            .collect()
    };
    match pattern {
        SlotPattern::Random => unreachable!("handled above"),
        SlotPattern::Decode => requests.extend((0..num_tokens).map(|_| (1, true))),
        SlotPattern::Prefill => {
            if num_tokens > 0 {
                let runs = prefill_runs(&mut rng, num_tokens, PREFILL_REQUESTS);
                requests.extend(runs.into_iter().map(|run| (run, false)));
            }
        }
        SlotPattern::Mixed => {
            let decodes = SlotPattern::mixed_decodes(num_tokens);
            requests.extend((0..decodes).map(|_| (1, true)));
            if num_tokens > decodes {
                requests.push((num_tokens - decodes, false));
            }
        }
    }
    let blocks: usize = requests
        .iter()
        .map(|&(tokens, _)| tokens.div_ceil(block_size))
        .sum();
    // Every request's blocks anywhere in the cache, none shared: a block table's view.
    let mut free = rand::seq::index::sample(&mut rng, num_blocks, blocks).into_iter();
    let mut slots = Vec::with_capacity(num_tokens);
    for (tokens, decode) in requests {
        if decode {
            // The request's sequence so far fills its last block up to some offset.
            let block = free.next().expect("counted above") as i64;
            let offset = rng.random_range(0..block_size) as i64;
            slots.push(block * block_size as i64 + offset);
        } else {
            for first in (0..tokens).step_by(block_size) {
                let block = free.next().expect("counted above") as i64;
                let run = (tokens - first).min(block_size) as i64;
                slots.extend((0..run).map(|offset| block * block_size as i64 + offset));
            }
        }
    }
    if padding_fraction > 0.0 {
        for slot in &mut slots {
            if rng.random_bool(padding_fraction) {
                *slot = -1;
            }
        }
    }
    Ok(slots)
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
///
/// (The largest, not the largest magnitude: vLLM's script takes `amax`, torch's maximum.)
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

/// The per-head fp8 scales of one tensor: each head's largest element over the call's tokens,
/// divided by 64 (as [`fp8_scale`] is for the whole tensor). `bytes` is the tensor's slice as
/// [`Inputs`] holds it, laid out as `problem` says.
pub fn fp8_head_scales(problem: &Problem, bytes: &[u8]) -> Vec<f32> {
    let (dtype, d) = (problem.dtype, problem.head_size);
    (0..problem.num_heads)
        .into_par_iter()
        .map(|head| {
            let mut max = f32::NEG_INFINITY;
            for token in 0..problem.num_tokens {
                let first = problem.input_offset(token, head) as usize;
                for i in first..first + d {
                    max = max.max(dtype.read_f32(bytes, i));
                }
            }
            max / 64.0
        })
        .collect()
}

/// The per-tensor fp8 scale of one tensor laid out as `problem` says: [`fp8_scale`] over the
/// elements of its heads only (not what lies between them in a fused tensor).
pub fn fp8_tensor_scale(problem: &Problem, bytes: &[u8]) -> f32 {
    if problem.contiguous_inputs() {
        return fp8_scale(problem.dtype, bytes);
    }
    fp8_head_scales(problem, bytes)
        .into_iter()
        .fold(f32::NEG_INFINITY, f32::max)
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

/// The fp8 scales of one call, owned: one per tensor, or one per head (keys and values).
#[derive(Debug, Clone, PartialEq)]
pub struct Scales {
    /// One scale, or one per head.
    pub key: Vec<f32>,
    pub value: Vec<f32>,
    pub scaling: Scaling,
}

impl Scales {
    /// Scales of `problem`'s keys and values as vLLM's benchmark computes them (max / 64), per
    /// tensor or per head.
    pub fn of(problem: &Problem, key: &[u8], value: &[u8], scaling: Scaling) -> Self {
        match scaling {
            Scaling::PerTensor => Self {
                key: vec![fp8_tensor_scale(problem, key)],
                value: vec![fp8_tensor_scale(problem, value)],
                scaling,
            },
            Scaling::PerHead => Self {
                key: fp8_head_scales(problem, key),
                value: fp8_head_scales(problem, value),
                scaling,
            },
        }
    }

    /// The keys' scale as [`Inputs`] holds it.
    pub fn k(&self) -> Scale<'_> {
        self.scale(&self.key)
    }

    /// The values' scale as [`Inputs`] holds it.
    pub fn v(&self) -> Scale<'_> {
        self.scale(&self.value)
    }

    fn scale<'a>(&self, scales: &'a [f32]) -> Scale<'a> {
        match self.scaling {
            Scaling::PerTensor => Scale::PerTensor(scales[0]),
            Scaling::PerHead => Scale::PerHead(scales),
        }
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

    /// Every pattern: distinct slots in range, whole requests laid out as the pattern says,
    /// the same slots for the same seed.
    #[test]
    fn slot_patterns_have_their_shape() {
        let (blocks, block_size) = (400, 16);
        for pattern in SlotPattern::ALL {
            for tokens in [1, 2, 3, 17, 100, 333] {
                let slots = slot_mapping(pattern, blocks, block_size, tokens, 0.0, 9).unwrap();
                assert_eq!(slots.len(), tokens);
                assert_eq!(
                    slots,
                    slot_mapping(pattern, blocks, block_size, tokens, 0.0, 9).unwrap()
                );
                let mut seen = std::collections::HashSet::new();
                assert!(slots.iter().all(|&s| (0..blocks as i64 * 16).contains(&s)));
                assert!(slots.iter().all(|&s| seen.insert(s)), "{pattern} {tokens}");
                let block_of = |s: i64| s / block_size as i64;
                let offset_of = |s: i64| s % block_size as i64;
                match pattern {
                    SlotPattern::Random => {}
                    SlotPattern::Decode => {
                        let blocks: std::collections::HashSet<i64> =
                            slots.iter().map(|&s| block_of(s)).collect();
                        assert_eq!(blocks.len(), tokens, "one block per request");
                    }
                    SlotPattern::Prefill | SlotPattern::Mixed => {
                        let decodes = if pattern == SlotPattern::Mixed {
                            SlotPattern::mixed_decodes(tokens)
                        } else {
                            0
                        };
                        let run = &slots[decodes..];
                        // Runs start at a block's offset 0 and go on slot by slot to the
                        // block's end; a run may end early (the last block partly filled).
                        assert_eq!(offset_of(run[0]), 0, "{pattern} {tokens}: {run:?}");
                        for pair in run.windows(2) {
                            let next_in_block = pair[1] == pair[0] + 1 && offset_of(pair[1]) != 0;
                            assert!(
                                next_in_block || offset_of(pair[1]) == 0,
                                "{pattern} {tokens}: {pair:?}"
                            );
                        }
                    }
                }
            }
        }
        // A whole prefill of 100 tokens in blocks of 16: at most 4 requests.
        let prefill = slot_mapping(SlotPattern::Prefill, blocks, 16, 100, 0.0, 2).unwrap();
        let starts = prefill.iter().filter(|&&s| s % 16 == 0).count();
        assert!((7..=10).contains(&starts), "{starts}");
        // Padding, as a padded batch has.
        let padded = slot_mapping(SlotPattern::Decode, blocks, 16, 300, 0.2, 1).unwrap();
        let padding = padded.iter().filter(|&&s| s == -1).count();
        assert!((30..100).contains(&padding), "{padding}");
        // Mixed: a quarter decodes, at most 256.
        assert_eq!(SlotPattern::mixed_decodes(17), 4);
        assert_eq!(SlotPattern::mixed_decodes(4097), 256);
        assert_eq!(SlotPattern::Mixed.blocks_needed(4096, 16), 256 + 240);
        // Too few blocks for a block per request.
        assert!(slot_mapping(SlotPattern::Decode, 10, 16, 11, 0.0, 1).is_err());
        assert!(slot_mapping(SlotPattern::Decode, 10, 16, 10, 0.0, 1).is_ok());
        assert!(SlotPattern::Prefill.check_fits(64, 16, 4).is_err());
        // random is vLLM's draw, unchanged.
        assert_eq!(
            slot_mapping(SlotPattern::Random, 100, 16, 50, 0.1, 4).unwrap(),
            random_slot_mapping(1600, 50, 0.1, 4)
        );
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
