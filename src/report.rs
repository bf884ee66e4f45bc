//! Results as data ([`Report`], which is also the JSON format) and as text: vLLM's table, a
//! markdown table, CSV, comparisons against a saved run, and an SVG plot.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::options::{Mode, Options};
use crate::problem::{CacheDtype, Dtype};
use crate::sweep::Row;
use crate::timing::Stats;
use crate::workload::WorkloadConfig;

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
    pub max_noise_percent: f64,
    pub min_samples: usize,
    /// Every backend option (absent from reports of earlier versions, which ran the defaults).
    #[serde(default)]
    pub options: Options,
    /// Fused QKV inputs, per-head scales, the slot pattern and the model preset (absent from
    /// reports of earlier versions, which ran vLLM's workload).
    #[serde(default)]
    pub workload: WorkloadConfig,
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
}

/// One implementation and the device it ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImplementationInfo {
    pub name: String,
    pub device: String,
    pub details: String,
    pub mode_note: String,
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

impl Report {
    /// Builds the results part of a report from a sweep's rows.
    pub fn rows_from_sweep(implementations: &[ImplementationInfo], rows: &[Row]) -> Vec<RowReport> {
        rows.iter()
            .map(|row| {
                let bytes_moved = row.problem.bytes_moved();
                let results = implementations
                    .iter()
                    .zip(&row.results)
                    .map(|(info, samples)| {
                        let stats = samples.as_ref().map(|s| s.device_stats());
                        let bandwidth = stats.map(|s| bytes_moved as f64 / (s.median * 1e3));
                        ResultReport {
                            implementation: info.name.clone(),
                            latency_us: samples.as_ref().map(|s| s.latency_us),
                            device_us: stats,
                            bandwidth_gbps: bandwidth,
                            percent_of_copy: bandwidth
                                .zip(info.copy_bandwidth_gbps)
                                .map(|(b, copy)| b / copy * 100.0),
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
            })
            .collect()
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

    /// Adds a comparison to every result that has a row with the same implementation, layout
    /// and num_tokens in `baseline`. Returns how many results were matched.
    pub fn compare_with(&mut self, baseline: &Report) -> usize {
        let mut saved: HashMap<(&str, &str, usize), Stats> = HashMap::new();
        for row in &baseline.rows {
            for result in &row.results {
                if let Some(stats) = result.device_us {
                    saved.insert((&result.implementation, &row.layout, row.num_tokens), stats);
                }
            }
        }
        let mut matched = 0;
        for row in &mut self.rows {
            for result in &mut row.results {
                let key = (
                    result.implementation.as_str(),
                    row.layout.as_str(),
                    row.num_tokens,
                );
                if let (Some(now), Some(then)) = (result.device_us, saved.get(&key)) {
                    result.baseline = Some(Comparison {
                        baseline_device_us: then.median,
                        speedup: then.median / now.median,
                        within_noise: now.p10 <= then.p90 && then.p10 <= now.p90,
                    });
                    matched += 1;
                }
            }
        }
        matched
    }

    /// The header lines: configuration, devices, notes, and what the columns mean.
    pub fn header_lines(&self) -> Vec<String> {
        let c = &self.config;
        let mut lines = vec![format!(
            "{} {}: num_heads={} head_size={} block_size={} num_blocks={} dtype={} kv_cache_dtype={} iters={} seed={} cache={}",
            self.tool,
            self.version,
            c.num_heads,
            c.head_size,
            c.block_size,
            c.num_blocks,
            c.dtype,
            c.kv_cache_dtype,
            c.iters,
            c.seed,
            c.cache_state()
        )];
        let workload = c.workload.non_default();
        if !workload.is_empty() {
            lines[0].push_str(&format!(" {}", workload.join(" ")));
        }
        for info in &self.implementations {
            let copy = info
                .copy_bandwidth_gbps
                .map(|gbps| format!("; copy bandwidth {gbps:.1} GB/s"))
                .unwrap_or_default();
            lines.push(format!(
                "{}: {} ({}){copy}; {}",
                info.name, info.device, info.details, info.mode_note
            ));
        }
        let options = c.options.non_default();
        if !options.is_empty() {
            lines.push(format!("options: {}", options.join(" ")));
        }
        lines.extend(self.notes.iter().cloned());
        lines.push(
            "latency (us): wall clock of call + synchronize, mean over --iters (vLLM's method); \
             device (us): median per-call time on the backend's own clock, noise = its relative \
             standard deviation; GB/s = bytes moved / device time"
                .into(),
        );
        lines
    }

    /// The title line of vLLM's script.
    pub fn title(&self, implementation: &str) -> String {
        format!(
            "Benchmark results for implementation {implementation} (measuring with {}):",
            self.config.mode
        )
    }

    /// The results as a table: with one implementation, latency, device time, noise,
    /// bandwidth and share of the copy bandwidth; with several, a (latency, device) column pair
    /// each. A speed-up column follows each implementation when a baseline was compared.
    pub fn table(&self) -> Table {
        let single = self.implementations.len() == 1;
        let compared = self
            .rows
            .iter()
            .any(|row| row.results.iter().any(|r| r.baseline.is_some()));
        let mut headers = vec!["num_tokens".to_string(), "layout".to_string()];
        for info in &self.implementations {
            let prefix = if single {
                String::new()
            } else {
                format!("{} ", info.name)
            };
            headers.push(format!("{prefix}latency (us)"));
            headers.push(format!("{prefix}device (us)"));
            if single {
                headers.extend(["noise %", "GB/s", "% of copy"].map(String::from));
            }
            if compared {
                headers.push(format!("{prefix}vs baseline"));
            }
        }
        let number = |value: Option<f64>| Cell::Number(value.unwrap_or(f64::NAN));
        let rows = self
            .rows
            .iter()
            .map(|row| {
                let mut cells = vec![
                    Cell::Integer(row.num_tokens as u64),
                    Cell::Text(row.layout.clone()),
                ];
                for result in &row.results {
                    cells.push(number(result.latency_us));
                    cells.push(number(result.device_us.map(|s| s.median)));
                    if single {
                        cells.push(Cell::Fixed(
                            result.device_us.map_or(f64::NAN, |s| s.noise_percent),
                            1,
                        ));
                        cells.push(Cell::Fixed(result.bandwidth_gbps.unwrap_or(f64::NAN), 1));
                        cells.push(Cell::Fixed(result.percent_of_copy.unwrap_or(f64::NAN), 1));
                    }
                    if compared {
                        cells.push(Cell::Text(match result.baseline {
                            Some(c) if c.within_noise => format!("{:.2}x ~", c.speedup),
                            Some(c) => format!("{:.2}x", c.speedup),
                            None => "-".into(),
                        }));
                    }
                }
                cells
            })
            .collect();
        Table { headers, rows }
    }

    /// Long-format CSV: one line per row and implementation, every statistic.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "num_tokens,layout,implementation,bytes_moved,latency_us,device_median_us,device_min_us,\
             device_p10_us,device_p90_us,device_max_us,noise_percent,samples,bandwidth_gbps,\
             percent_of_copy,baseline_device_us,speedup,within_noise\n",
        );
        let opt = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
        for row in &self.rows {
            for r in &row.results {
                let s = r.device_us;
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    row.num_tokens,
                    row.layout,
                    r.implementation,
                    row.bytes_moved,
                    opt(r.latency_us),
                    opt(s.map(|s| s.median)),
                    opt(s.map(|s| s.min)),
                    opt(s.map(|s| s.p10)),
                    opt(s.map(|s| s.p90)),
                    opt(s.map(|s| s.max)),
                    opt(s.map(|s| s.noise_percent)),
                    s.map(|s| s.samples.to_string()).unwrap_or_default(),
                    opt(r.bandwidth_gbps),
                    opt(r.percent_of_copy),
                    opt(r.baseline.map(|c| c.baseline_device_us)),
                    opt(r.baseline.map(|c| c.speedup)),
                    r.baseline
                        .map(|c| c.within_noise.to_string())
                        .unwrap_or_default(),
                );
            }
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes") + "\n"
    }

    /// The header, title and table as GitHub markdown.
    pub fn to_markdown(&self, implementation: &str) -> String {
        let mut out = String::new();
        for line in self.header_lines() {
            let _ = writeln!(out, "- {line}");
        }
        let _ = writeln!(out, "\n{}\n", self.title(implementation));
        out + &self.table().render_markdown()
    }

    /// The header, title and table as vLLM's script prints them.
    pub fn to_text(&self, implementation: &str) -> String {
        let mut out = self.header_lines().join("\n");
        let _ = writeln!(out, "\n{}", self.title(implementation));
        out + &self.table().render_text()
    }
}

/// A cell of a table: text is left-aligned, numbers right-aligned.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Integer(u64),
    /// Three decimals, like vLLM's `floatfmt=".3f"`.
    Number(f64),
    /// A number with the given decimals.
    Fixed(f64, usize),
}

impl Cell {
    fn render(&self) -> String {
        match self {
            Cell::Text(text) => text.clone(),
            Cell::Integer(value) => value.to_string(),
            Cell::Number(value) | Cell::Fixed(value, _) if value.is_nan() => "nan".into(),
            Cell::Number(value) => format!("{value:.3}"),
            Cell::Fixed(value, decimals) => format!("{value:.decimals$}"),
        }
    }

    fn right_aligned(&self) -> bool {
        !matches!(self, Cell::Text(_))
    }
}

/// A table with named columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    fn rendered_cells(&self) -> (Vec<Vec<String>>, Vec<usize>, Vec<bool>) {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| row.iter().map(Cell::render).collect())
            .collect();
        let widths = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, header)| {
                cells
                    .iter()
                    .map(|row| row[i].len())
                    .chain([header.len(), 3])
                    .max()
                    .unwrap_or(3)
            })
            .collect();
        let right = (0..self.headers.len())
            .map(|i| self.rows.first().is_some_and(|row| row[i].right_aligned()))
            .collect();
        (cells, widths, right)
    }

    /// Renders like Python's `tabulate` "simple" format, which vLLM's script prints.
    pub fn render_text(&self) -> String {
        let (cells, widths, right) = self.rendered_cells();
        let line = |values: &[String]| -> String {
            pad_all(values, &widths, &right)
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", line(&self.headers));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        let _ = writeln!(out, "{}", rule.join("  "));
        for row in &cells {
            let _ = writeln!(out, "{}", line(row));
        }
        out
    }

    /// Renders as a GitHub markdown table, numbers right-aligned.
    pub fn render_markdown(&self) -> String {
        let (cells, widths, right) = self.rendered_cells();
        let line = |values: &[String]| -> String {
            format!("| {} |", pad_all(values, &widths, &right).join(" | "))
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", line(&self.headers));
        let rule: Vec<String> = widths
            .iter()
            .zip(&right)
            .map(|(w, r)| {
                let dashes = "-".repeat(*w - 1);
                if *r {
                    format!("{dashes}:")
                } else {
                    format!("{dashes}-")
                }
            })
            .collect();
        let rule: Vec<String> = rule.iter().map(|r| format!(" {r} ")).collect();
        let _ = writeln!(out, "|{}|", rule.join("|"));
        for row in &cells {
            let _ = writeln!(out, "{}", line(row));
        }
        out
    }
}

/// Each cell padded to its column's width, right-aligned where `right` says.
fn pad_all(values: &[String], widths: &[usize], right: &[bool]) -> Vec<String> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| pad(value, widths[i], right[i]))
        .collect()
}

fn pad(value: &str, width: usize, right: bool) -> String {
    if right {
        format!("{value:>width$}")
    } else {
        format!("{value:<width$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            headers: vec!["num_tokens".into(), "layout".into(), "latency (us)".into()],
            rows: vec![
                vec![
                    Cell::Integer(2),
                    Cell::Text("NHD".into()),
                    Cell::Number(12.3456),
                ],
                vec![
                    Cell::Integer(65536),
                    Cell::Text("HND".into()),
                    Cell::Number(f64::NAN),
                ],
            ],
        }
    }

    #[test]
    fn renders_like_tabulate_simple() {
        let expected = "\
num_tokens  layout  latency (us)
----------  ------  ------------
         2  NHD           12.346
     65536  HND              nan
";
        assert_eq!(table().render_text(), expected);
    }

    #[test]
    fn renders_markdown() {
        let expected = "\
| num_tokens | layout | latency (us) |
| ---------: | ------ | -----------: |
|          2 | NHD    |       12.346 |
|      65536 | HND    |          nan |
";
        assert_eq!(table().render_markdown(), expected);
    }
}
