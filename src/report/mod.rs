//! Results as data ([`Report`], which is also the JSON format) and as text: vLLM's table, a
//! markdown table, CSV, comparisons against a saved run. The text formats come in three parts
//! (head, one piece per row, foot) so that a sweep can print each row as soon as it is
//! measured ([`Report::head`], [`Report::row_text`], [`Report::foot`]); the whole report is the
//! same three parts joined.
//!
//! `mod.rs` holds the data (serde); `text.rs` the formats, `table.rs` the table renderer,
//! `compare.rs` the comparison with a saved run.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::options::{Ceiling, Mode, Options};
use crate::problem::{CacheDtype, Dtype, Layout};
use crate::sweep::Row;
use crate::timing::Stats;
use crate::user_kernel::UserKernelInfo;
use crate::workload::WorkloadConfig;

mod compare;
mod table;
mod text;

pub use table::{Cell, Column, Table};
pub use text::wrap;

/// Header lines of the text formats are wrapped at this many characters.
pub const HEADER_WIDTH: usize = 100;

/// Everything needed to reproduce and compare a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    /// Seconds since the Unix epoch when the run started.
    pub timestamp_unix: u64,
    /// The command line, for reproduction.
    pub command: Vec<String>,
    pub config: RunConfig,
    pub implementations: Vec<ImplementationInfo>,
    /// One-line remarks (a reduced cache size, skipped implementations, ...).
    pub notes: Vec<String>,
    pub rows: Vec<RowReport>,
    /// Set when the run ended before its last row (an interrupt, a failure): where, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The baseline file of `--compare`, when there was one (whether or not any row matched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compared_with: Option<String>,
}

/// The configuration of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub num_heads: usize,
    pub head_size: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub dtype: Dtype,
    pub kv_cache_dtype: CacheDtype,
    /// The layouts swept, in order (absent from reports of earlier versions).
    #[serde(default)]
    pub layouts: Vec<Layout>,
    /// The token counts swept, in order (absent from reports of earlier versions).
    #[serde(default)]
    pub num_tokens: Vec<usize>,
    pub mode: Mode,
    pub iters: usize,
    pub warmup_iters: usize,
    pub cold: bool,
    /// Rotating inputs (absent from reports of earlier versions).
    #[serde(default)]
    pub rotate: bool,
    pub seed: u64,
    pub min_time_s: f64,
    pub max_time_s: f64,
    /// `--max-noise`, in terms of `noise_statistic`.
    pub max_noise_percent: f64,
    /// What "noise" means in `max_noise_percent` and the stopping rule
    /// ([`crate::timing::NOISE_STATISTIC`]); empty in reports of earlier versions, whose
    /// noise was the relative standard deviation.
    #[serde(default)]
    pub noise_statistic: String,
    pub min_samples: usize,
    /// Every backend option (absent from reports of earlier versions, which ran the defaults).
    #[serde(default)]
    pub options: Options,
    /// Fused QKV inputs, per-head scales, the slot pattern and the model preset (absent from
    /// reports of earlier versions, which ran vLLM's workload).
    #[serde(default)]
    pub workload: WorkloadConfig,
    /// The users' kernels that ran (`--kernel`, `--shader`): name, file, language and a hash
    /// of the source, so that `--compare` tells an edited kernel from the one measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_kernels: Vec<UserKernelInfo>,
    /// `--ceiling`: whether each row's pattern kernel was timed too ("% of pattern"; `copy`
    /// in reports of earlier versions, which did not have it).
    #[serde(default)]
    pub ceiling: Ceiling,
}

impl RunConfig {
    /// How the device's cache stood at each timed call, in words.
    pub fn cache_state(&self) -> &'static str {
        if self.cold {
            "cold (flushed before each timed call)"
        } else if self.rotate {
            "rotating (back-to-back calls, each on its own copy of the inputs and its own slots)"
        } else {
            "warm (back-to-back calls, as vLLM)"
        }
    }

    /// `warm`, `cold` or `rotating`.
    pub fn cache_name(&self) -> &'static str {
        if self.cold {
            "cold"
        } else if self.rotate {
            "rotating"
        } else {
            "warm"
        }
    }
}

/// One implementation and the device it ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImplementationInfo {
    pub name: String,
    pub device: String,
    pub details: String,
    /// How calls are issued and timed, in full (JSON only: too long for a header).
    pub mode_note: String,
    /// The same in a few words, for the table's title and header (absent from reports of
    /// earlier versions).
    #[serde(default)]
    pub mode_summary: String,
    /// The layouts this implementation has (absent from reports of earlier versions).
    #[serde(default)]
    pub layouts: Vec<Layout>,
    /// Plain copy kernel bandwidth on the same device (bytes read + written per second).
    pub copy_bandwidth_gbps: Option<f64>,
}

/// One (layout, num_tokens) row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowReport {
    pub num_tokens: usize,
    pub layout: String,
    /// Fewest bytes one call moves: inputs read, cache written, slots read.
    pub bytes_moved: u64,
    /// One per implementation, in the order of `Report::implementations`.
    pub results: Vec<ResultReport>,
}

/// One implementation's figures for one row; `None` where it does not support the layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultReport {
    pub implementation: String,
    pub latency_us: Option<f64>,
    pub device_us: Option<Stats>,
    /// `bytes_moved` over the median device time.
    pub bandwidth_gbps: Option<f64>,
    /// `bandwidth_gbps` as a percentage of the implementation's copy bandwidth.
    pub percent_of_copy: Option<f64>,
    /// `--ceiling pattern`: the device time of the row's pattern kernel (a plain kernel
    /// reading the row's input bytes and writing as many bytes to the same cache addresses),
    /// timed right after the row with the same protocol; absent otherwise and in reports of
    /// earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern_us: Option<Stats>,
    /// The pattern kernel's median device time over the row's, in percent: how close the row
    /// comes to its own write pattern's speed (above 100: faster than the plain kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_of_pattern: Option<f64>,
    /// Set by [`Report::compare_with`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Comparison>,
}

/// How a result compares with the same row of a saved run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub baseline_device_us: f64,
    /// Baseline median device time over this run's: above 1 is faster.
    pub speedup: f64,
    /// The two runs' p10..p90 ranges overlap: the difference is within the noise.
    pub within_noise: bool,
}

/// The text formats that can be printed a row at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    /// vLLM's table (Python tabulate's "simple" look) under a header, footnotes below.
    Table,
    /// The same as GitHub markdown.
    Markdown,
    /// One line per row and implementation, every statistic; no header or footnotes.
    Csv,
}

impl Report {
    /// Builds the results part of a report from a sweep's rows.
    pub fn rows_from_sweep(implementations: &[ImplementationInfo], rows: &[Row]) -> Vec<RowReport> {
        rows.iter()
            .map(|row| Self::row_from_sweep(implementations, row))
            .collect()
    }

    /// One row of the results from a sweep's row.
    pub fn row_from_sweep(implementations: &[ImplementationInfo], row: &Row) -> RowReport {
        let bytes_moved = row.problem.bytes_moved();
        let results = implementations
            .iter()
            .zip(&row.results)
            .map(|(info, samples)| {
                let stats = samples.as_ref().map(|s| s.device_stats());
                let bandwidth = stats.map(|s| bytes_moved as f64 / (s.median * 1e3));
                let pattern = samples.as_ref().and_then(|s| s.pattern_stats());
                ResultReport {
                    implementation: info.name.clone(),
                    latency_us: samples.as_ref().map(|s| s.latency_us),
                    device_us: stats,
                    bandwidth_gbps: bandwidth,
                    percent_of_copy: bandwidth
                        .zip(info.copy_bandwidth_gbps)
                        .map(|(b, copy)| b / copy * 100.0),
                    pattern_us: pattern,
                    percent_of_pattern: pattern
                        .zip(stats)
                        .map(|(pattern, row)| pattern.median / row.median * 100.0),
                    baseline: None,
                }
            })
            .collect();
        RowReport {
            num_tokens: row.problem.num_tokens,
            layout: row.problem.layout.name().into(),
            bytes_moved,
            results,
        }
    }

    /// Reads a report saved with `--format json`.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("cannot read {}", path.display()),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::Report(format!(
                "{} is not a paged-kv-bench JSON report: {e}",
                path.display()
            ))
        })
    }
}
