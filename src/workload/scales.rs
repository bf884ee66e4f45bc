//! fp8 scales: one per tensor or one per head, as vLLM's benchmark derives them.

use rayon::prelude::*;

use super::CHUNK_ELEMENTS;
use crate::problem::{Dtype, Problem};

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

#[cfg(test)]
mod tests {
    use super::*;

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
