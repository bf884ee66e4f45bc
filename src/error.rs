//! One error type for the library. Every variant renders as one line that names the problem
//! and, where there is one, the value that would work.

use thiserror::Error;

/// Everything that can go wrong in a benchmark or verification run.
#[derive(Debug, Error)]
pub enum Error {
    /// A size or option that makes no sense on its own (zero heads, an empty token list, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    #[error("--kv-cache-dtype fp8 needs a head size that is a multiple of 16, got {head_size}")]
    Fp8HeadSize { head_size: usize },

    #[error(
        "{num_tokens} tokens do not fit in a cache of {num_slots} slots \
         ({num_blocks} blocks x {block_size}); the largest token count that fits is {num_slots}"
    )]
    TooManyTokens {
        num_tokens: usize,
        num_slots: u64,
        num_blocks: usize,
        block_size: usize,
    },

    #[error("slot_mapping[{token}] = {slot} is out of range: slots run from 0 to {last_slot} (or -1 for padding)")]
    SlotOutOfRange {
        token: usize,
        slot: i64,
        last_slot: u64,
    },

    #[error("slot_mapping targets slot {slot} twice (tokens {first} and {second}); the result would depend on write order")]
    DuplicateSlot {
        slot: i64,
        first: usize,
        second: usize,
    },

    #[error("{what} need {needed} but {available} is available on {device}{hint}")]
    DoesNotFit {
        what: String,
        needed: Bytes,
        available: Bytes,
        device: String,
        hint: String,
    },

    /// The user asked for an implementation that this build or this machine cannot run.
    #[error("{implementation} is unavailable: {reason}")]
    Unavailable {
        implementation: &'static str,
        reason: String,
    },

    #[error("CUDA error: {0}")]
    Cuda(String),

    #[error("wgpu error: {0}")]
    Wgpu(String),

    #[error("{0}")]
    Io(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A byte count that prints in binary units (for error messages and headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}
