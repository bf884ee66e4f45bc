//! The verification matrix: which cases `verify` checks, full or quick.

use super::Case;
use crate::problem::{CacheDtype, Dtype, InputStrides, Layout, Problem};
use crate::workload::{Scaling, SlotPattern};

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

/// The cases a user's kernel must pass before a benchmark times it: the quick matrix's cases
/// of the run's layouts, dtype and cache dtype, with their own seeds (so that `verify --quick
/// --seed S` replays them), then one case of the run's own shape per layout (17 tokens, some
/// padding, the run's scales, inputs and slot pattern), whose head count and size the quick
/// matrix may not have.
pub fn before_timing(config: &crate::sweep::SweepConfig) -> Vec<Case> {
    let seed = config.seed;
    let mut cases: Vec<Case> = matrix(Coverage::Quick, seed)
        .into_iter()
        .filter(|case| {
            let p = &case.problem;
            config.layouts.contains(&p.layout)
                && p.dtype == config.dtype
                && p.cache_dtype == config.cache_dtype
        })
        .collect();
    let workload = &config.workload;
    for (index, &layout) in config.layouts.iter().enumerate() {
        let num_tokens: usize = 17;
        let needed = match workload.slots {
            SlotPattern::Random => (2 * num_tokens).div_ceil(config.block_size),
            pattern => pattern.blocks_needed(num_tokens, config.block_size) as usize,
        };
        cases.push(Case {
            problem: Problem {
                num_tokens,
                num_heads: config.num_heads,
                head_size: config.head_size,
                block_size: config.block_size,
                num_blocks: needed + needed / 8 + 1,
                dtype: config.dtype,
                cache_dtype: config.cache_dtype,
                layout,
                input_strides: workload.input_strides(config.num_heads, config.head_size),
            },
            padding_fraction: 0.1,
            special_values: false,
            seed: seed.wrapping_add(1 << 20).wrapping_add(index as u64),
            qkv_fused: workload.qkv_fused,
            scaling: if config.cache_dtype.is_fp8() {
                workload.scale
            } else {
                Scaling::PerTensor
            },
            slots: workload.slots,
        });
    }
    cases
}
