//! Slot mappings: where a call's tokens go in the cache, drawn from a seed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::stream_seed;
use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
