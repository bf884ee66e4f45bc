//! One error type for the library. Every variant renders as one line that names the problem
//! and, where there is one, the value that would work.

use thiserror::Error;

use crate::backend::Kind;
use crate::problem::Layout;

/// Everything that can go wrong in a benchmark or verification run.
#[derive(Debug, Error)]
pub enum Error {
    /// A size or option that makes no sense on its own (zero heads, an empty token list, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    #[error(
        "--kv-cache-dtype fp8 (and fp8_e5m2) needs a head size that is a multiple of 16, got {head_size}"
    )]
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

    /// Explicit token counts beyond the default cache, which does not grow with them (so that a
    /// row's cache, and with it its slots, never depends on the other rows of the sweep).
    #[error(
        "{num_tokens} tokens do not fit in the default cache of {num_slots} slots \
         ({num_blocks} blocks x {block_size}); --num-blocks {needed_blocks} holds them"
    )]
    TooManyTokensForDefault {
        num_tokens: usize,
        num_slots: u64,
        num_blocks: usize,
        block_size: usize,
        needed_blocks: usize,
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

    /// The user asked for a backend that this build or this machine cannot run.
    #[error("{backend} is unavailable: {reason}")]
    Unavailable { backend: Kind, reason: String },

    /// An implementation (`backend`: its name, a user kernel's included) that runs here but
    /// does not implement this kind of call (`what`: e.g. "fp8_e5m2 caches"); verification
    /// and the sweep report it as n/a rather than as a failure.
    #[error("{backend} does not implement {what}")]
    Unsupported { backend: String, what: String },

    /// A user's kernel (`--kernel FILE.cu`, `--shader FILE.wgsl`) that does not compile. The
    /// one error of more than one line: `log` is the compiler's messages (NVRTC's, naga's) with
    /// the file's name and line numbers, trimmed to a short block (the first lines that say
    /// what and where, with the source line).
    #[error("{file} does not compile:\n{log}")]
    Compile { file: String, log: String },

    /// A CUDA driver or NVRTC call failed while doing `what`; the driver's own error is the
    /// source (a [`crate::backend::cuda::DriverFailure`] carrying its result code).
    #[error("CUDA error: {what}")]
    Cuda { what: String, source: Cause },

    /// wgpu reported an error (validation, out of memory, device lost, a failed mapping) while
    /// doing `what`. wgpu's own error types are not `Sync`, so the source keeps their message.
    #[error("wgpu error: {what}")]
    Wgpu { what: String, source: Cause },

    /// Reading or writing a file.
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },

    /// A report or baseline that cannot be read, or a plot that cannot be drawn.
    #[error("{0}")]
    Report(String),

    /// A sweep's stop check said stop (an interrupt) while a row was being measured.
    #[error("stopped on request")]
    Stopped,

    /// Where a sweep stopped: the implementation (by name) and the row, with what went wrong
    /// as the source.
    #[error("{backend} at num_tokens={num_tokens} layout={layout}")]
    Row {
        backend: String,
        num_tokens: usize,
        layout: Layout,
        source: Box<Error>,
    },
}

/// The underlying error of a backend failure, kept for callers that inspect it.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    /// A wgpu failure while doing `what`, caused by `cause` (wgpu's message).
    pub fn wgpu(what: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        Error::Wgpu {
            what: what.into(),
            source: cause.to_string().into(),
        }
    }

    /// The error and its causes as one line, `outer: inner: ...` (what the command line
    /// prints).
    pub fn one_line(&self) -> String {
        chain(self)
    }
}

/// Any error and its sources as one line, joined by `: `.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
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
