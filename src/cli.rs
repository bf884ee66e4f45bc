//! Command-line flags: those of vLLM's `benchmark_reshape_and_cache_flash.py`, with its choices
//! and defaults, plus the sweep's token counts and layouts and the backend choice.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use paged_kv_bench::backend::{BackendOptions, Implementation};
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout};
use paged_kv_bench::sweep::{self, NumBlocks, SweepConfig};
use paged_kv_bench::timing::{Mode, Protocol, Sampling};

/// Benchmark reshape_and_cache_flash: writing new keys and values into a paged KV cache.
///
/// Without a subcommand: sweeps num_tokens for each layout and prints vLLM's table, the
/// wall-clock latency measured the way vLLM's script does and the device time from the
/// backend's own clock.
#[derive(Debug, Parser)]
#[command(
    name = "paged-kv-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub bench: BenchArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every available implementation against the CPU reference, byte for byte.
    Verify(VerifyArgs),
}

/// Flags of the `verify` subcommand.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Which implementation(s) to check ("auto" and "all" check every available one).
    #[arg(long, value_enum, default_value_t = Implementation::All)]
    pub implementation: Implementation,

    /// A subset of the matrix that finishes in seconds.
    #[arg(long)]
    pub quick: bool,

    /// Seed of the random inputs [default: random, printed so the run can be replayed].
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,

    /// wgpu: use the first adapter whose name contains this text (case-insensitive).
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,
}

/// Flags of the benchmark (vLLM's, plus the sweep and backend choices).
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Number of attention heads.
    #[arg(long, allow_negative_numbers = true, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub num_heads: u32,

    /// Elements per head.
    #[arg(long, default_value_t = 128, value_parser = PossibleValuesParser::new(
        ["64", "80", "96", "112", "120", "128", "192", "256"]
    ).map(|s| s.parse::<u32>().expect("the choices are numbers")))]
    pub head_size: u32,

    /// Token slots per cache block.
    #[arg(long, default_value_t = 16, value_parser = PossibleValuesParser::new(["16", "32"])
        .map(|s| s.parse::<u32>().expect("the choices are numbers")))]
    pub block_size: u32,

    /// Cache blocks [default: 65536, reduced to the largest power of two that fits].
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub num_blocks: Option<u64>,

    /// Input dtype of keys and values.
    #[arg(long, value_enum, default_value_t = Dtype::BFloat16)]
    pub dtype: Dtype,

    /// Cache dtype: the input's own ("auto") or float8 e4m3 with per-tensor scales.
    #[arg(long, value_enum, default_value_t = CacheDtype::Auto)]
    pub kv_cache_dtype: CacheDtype,

    /// Timed calls per row for the latency column (after 3 warm-up calls).
    #[arg(long, allow_negative_numbers = true, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,

    /// Which implementation(s) to run.
    #[arg(long, value_enum, default_value_t = Implementation::Auto)]
    pub implementation: Implementation,

    /// How GPU calls are issued: replay of a captured CUDA graph, or plain launches.
    #[arg(long, value_enum, default_value_t = Mode::Cudagraph)]
    pub mode: Mode,

    /// Token counts to sweep, comma-separated [default: 2,4,...,65536].
    #[arg(long, allow_negative_numbers = true, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    pub num_tokens: Vec<u64>,

    /// Cache layouts to sweep, in order, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Layout::Nhd, Layout::Hnd], ignore_case = true)]
    pub layouts: Vec<Layout>,

    /// Seed of the random inputs, slot mappings and cache contents.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub seed: u64,

    /// wgpu: use the first adapter whose name contains this text (case-insensitive).
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,

    /// Device time with cold caches: flush the device's cache before each timed call
    /// (default: warm, back-to-back calls on the same data, as vLLM's script measures).
    #[arg(long)]
    pub cold: bool,

    /// Device time with rotating inputs: back-to-back calls, each on its own copy of the inputs
    /// and its own slots, with at least 256 MiB of traffic before a copy is reused, so that no
    /// call finds its data in the device's cache (calls of under 4 MiB excepted).
    #[arg(long, conflicts_with = "cold")]
    pub rotate: bool,

    /// Seconds of device-time sampling per row, at least.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.1, value_name = "SECONDS", value_parser = seconds)]
    pub min_time: f64,

    /// Seconds of device-time sampling per row, at most (the row's time budget).
    #[arg(long, allow_negative_numbers = true, default_value_t = 5.0, value_name = "SECONDS", value_parser = seconds)]
    pub max_time: f64,

    /// Stop sampling a row once the relative standard deviation of its samples is below this.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0, value_name = "PERCENT", value_parser = percent)]
    pub max_noise: f64,

    /// Output format on stdout (or in --output).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Write the report (in --format) to this file instead of stdout; the table still goes to
    /// stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Compare with a report saved with --format json: adds a speed-up column per
    /// implementation ("~" marks a difference within the noise).
    #[arg(long, value_name = "BASELINE.json")]
    pub compare: Option<PathBuf>,

    /// Draw device time and bandwidth against num_tokens into an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// vLLM's table, with a header saying what ran where.
    Table,
    Markdown,
    /// One line per row and implementation, every statistic.
    Csv,
    /// Everything needed to reproduce and compare the run (the --compare input).
    Json,
}

fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=3600.0).contains(&value) => Ok(value),
        _ => Err("expected seconds between 0 and 3600".into()),
    }
}

fn percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err("expected a positive percentage".into()),
    }
}

impl BenchArgs {
    pub fn backend_options(&self) -> BackendOptions {
        BackendOptions {
            adapter: self.adapter.clone(),
            ..BackendOptions::default()
        }
    }

    pub fn sweep_config(&self) -> SweepConfig {
        let num_tokens = if self.num_tokens.is_empty() {
            sweep::default_token_counts()
        } else {
            self.num_tokens.iter().map(|&n| to_usize(n)).collect()
        };
        SweepConfig {
            num_heads: self.num_heads as usize,
            head_size: self.head_size as usize,
            block_size: self.block_size as usize,
            num_blocks: match self.num_blocks {
                Some(n) => NumBlocks::Explicit(to_usize(n)),
                None => NumBlocks::Default(sweep::DEFAULT_NUM_BLOCKS),
            },
            dtype: self.dtype,
            cache_dtype: self.kv_cache_dtype,
            layouts: self.layouts.clone(),
            num_tokens,
            protocol: Protocol {
                cold: self.cold,
                rotate: self.rotate,
                sampling: Sampling {
                    min_time: Duration::from_secs_f64(self.min_time),
                    max_time: Duration::from_secs_f64(self.max_time.max(self.min_time)),
                    max_noise_percent: self.max_noise,
                    ..Sampling::default()
                },
                ..Protocol::new(self.mode, self.iters as usize)
            },
            seed: self.seed,
        }
    }
}

/// Sizes beyond the address space saturate; validation then refuses them by name.
fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}
