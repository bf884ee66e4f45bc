//! Results as data ([`Report`], which is also the JSON format) and as text: vLLM's table, a
//! markdown table, CSV, comparisons against a saved run. The text formats come in three parts
//! (head, one piece per row, foot) so that a sweep can print each row as soon as it is
//! measured ([`Report::head`], [`Report::row_text`], [`Report::foot`]); the whole report is the
//! same three parts joined.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::options::{Mode, Options};
use crate::problem::{CacheDtype, Dtype, Layout};
use crate::sweep::Row;
use crate::timing::Stats;

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

/// The CSV columns, in order.
const CSV_HEADER: &str = "num_tokens,layout,implementation,bytes_moved,latency_us,\
device_median_us,device_min_us,device_p10_us,device_p90_us,device_max_us,noise_percent,\
robust_noise_percent,met_noise_target,samples,bandwidth_gbps,percent_of_copy,\
baseline_device_us,speedup,within_noise";

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
        self.rows
            .iter_mut()
            .map(|row| Self::compare_row(row, baseline))
            .sum()
    }

    /// [`Report::compare_with`] for one row, as it is measured.
    pub fn compare_row(row: &mut RowReport, baseline: &Report) -> usize {
        let Some(then) = baseline
            .rows
            .iter()
            .find(|then| then.layout == row.layout && then.num_tokens == row.num_tokens)
        else {
            return 0;
        };
        let mut matched = 0;
        for result in &mut row.results {
            let saved = then
                .results
                .iter()
                .find(|r| r.implementation == result.implementation)
                .and_then(|r| r.device_us);
            if let (Some(now), Some(then)) = (result.device_us, saved) {
                result.baseline = Some(Comparison {
                    baseline_device_us: then.median,
                    speedup: then.median / now.median,
                    within_noise: now.p10 <= then.p90 && then.p10 <= now.p90,
                });
                matched += 1;
            }
        }
        matched
    }

    /// What makes `baseline` measure something else than this run, one `name (then vs now)`
    /// item each: the shape, dtypes, layouts, the cache state, the mode where CUDA ran in both,
    /// the device of every implementation in both, and the options that change a call. Empty
    /// when the two compare like with like. Token counts may differ: rows match one by one.
    pub fn baseline_differences(&self, baseline: &Report) -> Vec<String> {
        let (now, then) = (&self.config, &baseline.config);
        let mut differences = Vec::new();
        let mut differ = |name: &str, then: String, now: String| {
            if then != now {
                differences.push(format!("{name} ({then} vs {now})"));
            }
        };
        differ("dtype", then.dtype.to_string(), now.dtype.to_string());
        differ(
            "kv_cache_dtype",
            then.kv_cache_dtype.to_string(),
            now.kv_cache_dtype.to_string(),
        );
        for (name, then, now) in [
            ("num_heads", then.num_heads, now.num_heads),
            ("head_size", then.head_size, now.head_size),
            ("block_size", then.block_size, now.block_size),
            ("num_blocks", then.num_blocks, now.num_blocks),
        ] {
            differ(name, then.to_string(), now.to_string());
        }
        differ(
            "layouts",
            baseline.swept_layouts().join(","),
            self.swept_layouts().join(","),
        );
        differ("cache", then.cache_name().into(), now.cache_name().into());
        let in_both: Vec<(&ImplementationInfo, &ImplementationInfo)> = self
            .implementations
            .iter()
            .filter_map(|now| {
                let then = baseline
                    .implementations
                    .iter()
                    .find(|then| then.name == now.name)?;
                Some((then, now))
            })
            .collect();
        // --mode changes how CUDA issues calls and nothing else.
        if in_both.iter().any(|(_, now)| now.name == "cuda") {
            differ("mode", then.mode.to_string(), now.mode.to_string());
        }
        for (then, now) in &in_both {
            differ(
                &format!("{} device", now.name),
                then.device.clone(),
                now.device.clone(),
            );
        }
        // The host memory limit only bounds num_blocks, which is compared above.
        let options = |config: &RunConfig| {
            let set: Vec<String> = config
                .options
                .non_default()
                .into_iter()
                .filter(|option| !option.starts_with("host_memory_limit="))
                .collect();
            if set.is_empty() {
                "defaults".to_string()
            } else {
                set.join(" ")
            }
        };
        differ("options", options(then), options(now));
        differences
    }

    /// The layouts this run swept (from its rows for reports that do not record them).
    fn swept_layouts(&self) -> Vec<String> {
        if !self.config.layouts.is_empty() {
            return self
                .config
                .layouts
                .iter()
                .map(|l| l.name().to_string())
                .collect();
        }
        let mut layouts: Vec<String> = Vec::new();
        for row in &self.rows {
            if !layouts.contains(&row.layout) {
                layouts.push(row.layout.clone());
            }
        }
        layouts
    }

    /// The header lines, each at most [`HEADER_WIDTH`] characters (longer ones are wrapped,
    /// continuing indented): configuration, devices, notes, and what the columns mean. The
    /// long account of how each implementation issues and times calls is in the JSON
    /// (`implementations[].mode_note`).
    pub fn header_lines(&self) -> Vec<String> {
        let c = &self.config;
        let mut lines = vec![
            format!(
                "{} {}: num_heads={} head_size={} block_size={} num_blocks={}",
                self.tool, self.version, c.num_heads, c.head_size, c.block_size, c.num_blocks,
            ),
            format!(
                "dtype={} kv_cache_dtype={} iters={} seed={} cache={}",
                c.dtype,
                c.kv_cache_dtype,
                c.iters,
                c.seed,
                c.cache_name()
            ),
        ];
        let calls = if c.cold {
            "one call after each flush of the device's cache"
        } else if c.rotate {
            "back-to-back calls, each on its own copy of the inputs and its own slots"
        } else {
            "back-to-back calls on the same data, as vLLM"
        };
        let budget = if c.min_time_s == c.max_time_s {
            format!("{} s", c.max_time_s)
        } else {
            format!("{}-{} s", c.min_time_s, c.max_time_s)
        };
        lines.push(format!(
            "device time: {calls}; {budget} a row, until noise <= {}%",
            c.max_noise_percent
        ));
        let swept = self.swept_layouts();
        for info in &self.implementations {
            lines.push(format!("{}: {} ({})", info.name, info.device, info.details));
            let mut how = vec![info.mode_summary.clone()];
            how.push(match info.copy_bandwidth_gbps {
                Some(gbps) => format!("copy bandwidth {gbps:.1} GB/s"),
                None => "copy bandwidth not measured".into(),
            });
            if !info.layouts.is_empty()
                && swept
                    .iter()
                    .any(|l| !info.layouts.iter().any(|have| have.name() == l))
            {
                how.push(format!("{} layout only", layout_list(&info.layouts)));
            }
            how.retain(|part| !part.is_empty());
            lines.push(format!("{}: {}", info.name, how.join("; ")));
        }
        let options = c.options.non_default();
        if !options.is_empty() {
            lines.push(format!("options: {}", options.join(" ")));
        }
        lines.extend(self.notes.iter().cloned());
        lines.extend([
            "latency (us): wall clock of call + synchronize, mean of --iters calls (vLLM's method)"
                .to_string(),
            "device (us): median per-call time on the backend's own clock; noise %: the robust \
             spread of the samples (interquartile range / 1.349, in % of the median; sampling \
             stops once it is under --max-noise)"
                .to_string(),
            "GB/s: bytes moved / device time; % of copy: GB/s over the device's copy bandwidth"
                .to_string(),
        ]);
        lines
            .iter()
            .flat_map(|line| wrap(line, HEADER_WIDTH))
            .collect()
    }

    /// The title line of vLLM's script, `Benchmark results for implementation X (measuring
    /// with cudagraph):`, with each implementation's own way of timing in the parentheses
    /// (left out where several would not fit on one line).
    pub fn title(&self, implementation: &str) -> String {
        // Reports of earlier versions did not record the summary; only CUDA's is known.
        let how: Vec<(&str, String)> = self
            .implementations
            .iter()
            .filter_map(|info| {
                let how = if !info.mode_summary.is_empty() {
                    info.mode_summary.clone()
                } else if info.name == "cuda" {
                    format!("measuring with {}", self.config.mode)
                } else {
                    return None;
                };
                Some((info.name.as_str(), how))
            })
            .collect();
        let plain = format!("Benchmark results for implementation {implementation}:");
        let titled = match how.as_slice() {
            [] => return plain,
            [(_, how)] if self.implementations.len() == 1 => {
                format!("Benchmark results for implementation {implementation} ({how}):")
            }
            several => {
                let each: Vec<String> = several
                    .iter()
                    .map(|(name, how)| format!("{name}: {how}"))
                    .collect();
                format!(
                    "Benchmark results for implementation {implementation} ({}):",
                    each.join("; ")
                )
            }
        };
        if titled.chars().count() > HEADER_WIDTH {
            plain
        } else {
            titled
        }
    }

    /// The results as a table: latency, device time, noise, bandwidth and share of the copy
    /// bandwidth for each implementation (prefixed by its name where there are several), and
    /// a speed-up column after each when a baseline is compared. The columns' widths are
    /// decided from the configuration alone, before any row, so that rows can be printed one
    /// by one and still line up.
    pub fn table(&self) -> Table {
        let single = self.implementations.len() == 1;
        let compared = self.compared();
        let longest = self
            .config
            .num_tokens
            .iter()
            .copied()
            .chain(self.rows.iter().map(|r| r.num_tokens))
            .max()
            .unwrap_or(0);
        let mut columns = vec![
            Column::right("num_tokens", longest.to_string().len()),
            Column::left("layout", 3),
        ];
        for info in &self.implementations {
            let prefix = if single {
                String::new()
            } else {
                format!("{} ", info.name)
            };
            // Wide enough for 100 s a call, hundreds of TB/s, and a speed-up of 1000x.
            columns.push(Column::right(format!("{prefix}latency (us)"), 12));
            columns.push(Column::right(format!("{prefix}device (us)"), 11));
            columns.push(Column::right(format!("{prefix}noise %"), 7));
            columns.push(Column::right(format!("{prefix}GB/s"), 8));
            columns.push(Column::right(format!("{prefix}% of copy"), 7));
            if compared {
                columns.push(Column::right(format!("{prefix}vs baseline"), 10));
            }
        }
        Table {
            columns,
            rows: self.rows.iter().map(|row| self.cells(row)).collect(),
        }
    }

    /// Whether a baseline was compared (the table then has its columns, matched or not).
    fn compared(&self) -> bool {
        self.compared_with.is_some()
            || self
                .rows
                .iter()
                .any(|row| row.results.iter().any(|r| r.baseline.is_some()))
    }

    /// One row of [`Report::table`].
    pub fn cells(&self, row: &RowReport) -> Vec<Cell> {
        let compared = self.compared();
        let mut cells = vec![
            Cell::Integer(row.num_tokens as u64),
            Cell::Text(row.layout.clone()),
        ];
        for result in &row.results {
            let stats = result.device_us;
            cells.push(Cell::Number(result.latency_us.unwrap_or(f64::NAN)));
            cells.push(Cell::Number(stats.map_or(f64::NAN, |s| s.median)));
            cells.push(Cell::Marked(
                stats.map_or(f64::NAN, |s| s.robust_noise_percent),
                1,
                stats.is_some_and(|s| !s.met_noise_target),
            ));
            cells.push(Cell::Fixed(result.bandwidth_gbps.unwrap_or(f64::NAN), 1));
            cells.push(Cell::Fixed(result.percent_of_copy.unwrap_or(f64::NAN), 1));
            if compared {
                cells.push(Cell::Text(match result.baseline {
                    Some(c) if c.within_noise => format!("{:.2}x ~", c.speedup),
                    Some(c) => format!("{:.2}x", c.speedup),
                    None => "-".into(),
                }));
            }
        }
        cells
    }

    /// Lines for under the table: what `*`, `nan`, `-` and `~` mean where they appear, a
    /// baseline that matched no row, and where the run stopped.
    pub fn footnotes(&self) -> Vec<String> {
        let c = &self.config;
        let mut notes = Vec::new();
        let results = || self.rows.iter().flat_map(|row| &row.results);
        if results().any(|r| r.device_us.is_some_and(|s| !s.met_noise_target)) {
            notes.push(format!(
                "*: noise still above --max-noise ({}%) when sampling reached the row's time or \
                 sample limit",
                c.max_noise_percent
            ));
        }
        for (index, info) in self.implementations.iter().enumerate() {
            let mut missing: Vec<&str> = Vec::new();
            for row in &self.rows {
                if row
                    .results
                    .get(index)
                    .is_some_and(|r| r.device_us.is_none())
                    && !missing.contains(&row.layout.as_str())
                {
                    missing.push(&row.layout);
                }
            }
            if missing.is_empty() {
                continue;
            }
            notes.push(if info.layouts.is_empty() {
                format!(
                    "nan: {} does not implement the {} layout",
                    info.name,
                    missing.join(" and ")
                )
            } else {
                format!(
                    "nan: {} implements the {} layout only",
                    info.name,
                    layout_list(&info.layouts)
                )
            });
        }
        if let Some(path) = &self.compared_with {
            let matched = results().filter(|r| r.baseline.is_some()).count();
            if !self.rows.is_empty() && matched == 0 {
                notes.push(format!(
                    "vs baseline: no row of {path} matches this run (same implementation, layout \
                     and num_tokens)"
                ));
            } else if matched > 0 {
                let mut note = format!(
                    "vs baseline: median device time in {path} / in this run (above 1: faster now)"
                );
                if results().any(|r| r.baseline.is_some_and(|c| c.within_noise)) {
                    note.push_str("; ~: within the noise (the p10..p90 ranges overlap)");
                }
                if results().any(|r| r.device_us.is_some() && r.baseline.is_none()) {
                    note.push_str("; -: no such row in the baseline");
                }
                notes.push(note);
            }
        }
        if let Some(stopped) = &self.stopped {
            notes.push(format!("stopped: {stopped}"));
        }
        notes
            .iter()
            .flat_map(|line| wrap(line, HEADER_WIDTH))
            .collect()
    }

    /// What comes before the first row: for the table, the header, title and column heads; for
    /// markdown the same as a list and a table head; for CSV its header line.
    pub fn head(&self, format: TextFormat, implementation: &str) -> String {
        let table = self.table();
        let mut out = String::new();
        match format {
            TextFormat::Table => {
                for line in self.header_lines() {
                    let _ = writeln!(out, "{line}");
                }
                let _ = writeln!(out, "{}", self.title(implementation));
                out.push_str(&table.text_head());
            }
            TextFormat::Markdown => {
                for line in self.header_lines() {
                    let _ = writeln!(out, "{}", markdown_item(&line));
                }
                let _ = writeln!(out, "\n{}\n", self.title(implementation));
                out.push_str(&table.markdown_head());
            }
            TextFormat::Csv => {
                let _ = writeln!(out, "{CSV_HEADER}");
            }
        }
        out
    }

    /// One row, as it goes under [`Report::head`].
    pub fn row_text(&self, format: TextFormat, row: &RowReport) -> String {
        let table = self.table();
        match format {
            TextFormat::Table => table.text_row(&self.cells(row)),
            TextFormat::Markdown => table.markdown_row(&self.cells(row)),
            TextFormat::Csv => csv_lines(row),
        }
    }

    /// What comes after the last row: the footnotes (none in CSV, which has no place for them).
    pub fn foot(&self, format: TextFormat) -> String {
        let notes = self.footnotes();
        let mut out = String::new();
        match format {
            TextFormat::Table => {
                for line in notes {
                    let _ = writeln!(out, "{line}");
                }
            }
            TextFormat::Markdown if !notes.is_empty() => {
                out.push('\n');
                for line in notes {
                    // A leading `*` would read as emphasis.
                    let line = match line.strip_prefix('*') {
                        Some(rest) => format!("\\*{rest}"),
                        None => line,
                    };
                    let _ = writeln!(out, "{}", markdown_item(&line));
                }
            }
            TextFormat::Markdown | TextFormat::Csv => {}
        }
        out
    }

    /// The whole report in a text format: head, rows, foot.
    pub fn to_format(&self, format: TextFormat, implementation: &str) -> String {
        let mut out = self.head(format, implementation);
        for row in &self.rows {
            out.push_str(&self.row_text(format, row));
        }
        out + &self.foot(format)
    }

    /// Long-format CSV: one line per row and implementation, every statistic.
    pub fn to_csv(&self) -> String {
        self.to_format(TextFormat::Csv, "")
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes") + "\n"
    }

    /// The header, title, table and footnotes as GitHub markdown.
    pub fn to_markdown(&self, implementation: &str) -> String {
        self.to_format(TextFormat::Markdown, implementation)
    }

    /// The header, title, table and footnotes as vLLM's script prints them.
    pub fn to_text(&self, implementation: &str) -> String {
        self.to_format(TextFormat::Table, implementation)
    }
}

/// `NHD` or `NHD and HND`.
fn layout_list(layouts: &[Layout]) -> String {
    layouts
        .iter()
        .map(|l| l.name())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// A header line as a markdown list item; its continuation lines stay in the item.
fn markdown_item(line: &str) -> String {
    if line.starts_with("  ") {
        line.to_string()
    } else {
        format!("- {line}")
    }
}

/// The CSV lines of one row, one per implementation.
fn csv_lines(row: &RowReport) -> String {
    let opt = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
    let mut out = String::new();
    for r in &row.results {
        let s = r.device_us;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
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
            opt(s.map(|s| s.robust_noise_percent)),
            s.map(|s| s.met_noise_target.to_string())
                .unwrap_or_default(),
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
    out
}

/// `line` broken at spaces into lines of at most `width` characters, the continuations
/// indented by two spaces; a word longer than a line stays whole.
pub fn wrap(line: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in line.split_whitespace() {
        if current.is_empty() {
            current.push_str(word);
        } else if current.chars().count() + 1 + word.chars().count() <= width {
            current.push(' ');
            current.push_str(word);
        } else {
            lines.push(std::mem::replace(&mut current, format!("  {word}")));
        }
    }
    lines.push(current);
    lines
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
    /// A number with the given decimals and a mark after it, `*` where set (a space where
    /// not, so that the numbers of a column stay aligned).
    Marked(f64, usize, bool),
}

impl Cell {
    fn render(&self) -> String {
        match self {
            Cell::Text(text) => text.clone(),
            Cell::Integer(value) => value.to_string(),
            Cell::Marked(value, decimals, marked) => {
                let mark = if *marked { '*' } else { ' ' };
                format!("{}{mark}", Cell::Fixed(*value, *decimals).render())
            }
            Cell::Number(value) | Cell::Fixed(value, _) if value.is_nan() => "nan".into(),
            Cell::Number(value) => format!("{value:.3}"),
            Cell::Fixed(value, decimals) => format!("{value:.decimals$}"),
        }
    }

    /// As rendered in markdown, where a `*` would start emphasis.
    fn render_markdown(&self) -> String {
        match self {
            Cell::Marked(_, _, true) => self.render().replace('*', "\\*"),
            _ => self.render(),
        }
    }

    fn right_aligned(&self) -> bool {
        !matches!(self, Cell::Text(_))
    }
}

/// A column of a table: its name, its least width, and its alignment.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub header: String,
    /// Cells are padded to at least this width (and the header's).
    pub width: usize,
    pub right: bool,
}

impl Column {
    pub fn left(header: impl Into<String>, width: usize) -> Self {
        Self {
            header: header.into(),
            width,
            right: false,
        }
    }

    pub fn right(header: impl Into<String>, width: usize) -> Self {
        Self {
            header: header.into(),
            width,
            right: true,
        }
    }

    /// The width with no cells known: the least width, the header's, and at least 3 ("nan").
    fn fixed_width(&self) -> usize {
        self.width.max(self.header.chars().count()).max(3)
    }
}

/// A table with named columns.
///
/// [`Table::render_text`] and [`Table::render_markdown`] widen columns to fit their cells; the
/// `_head` and `_row` functions keep each column's fixed width, so that rows printed one at a
/// time line up (a cell wider than its column pushes the rest of its line right).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table whose columns are as wide as their cells, aligned as the first row's cells.
    pub fn from_cells(headers: &[&str], rows: Vec<Vec<Cell>>) -> Self {
        let columns = headers
            .iter()
            .enumerate()
            .map(|(i, header)| Column {
                header: header.to_string(),
                width: 0,
                right: rows.first().is_some_and(|row| row[i].right_aligned()),
            })
            .collect();
        Self { columns, rows }
    }

    fn fixed_widths(&self) -> Vec<usize> {
        self.columns.iter().map(Column::fixed_width).collect()
    }

    /// Widths that fit every cell.
    fn fitted_widths(&self) -> Vec<usize> {
        let mut widths = self.fixed_widths();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.render().chars().count());
            }
        }
        widths
    }

    fn headers(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.header.clone()).collect()
    }

    fn text_line(&self, values: &[String], widths: &[usize]) -> String {
        let line = pad_all(values, widths, &self.columns).join("  ");
        format!("{}\n", line.trim_end())
    }

    fn text_head_with(&self, widths: &[usize]) -> String {
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        self.text_line(&self.headers(), widths) + &rule.join("  ") + "\n"
    }

    fn markdown_line(&self, values: &[String], widths: &[usize]) -> String {
        format!(
            "| {} |\n",
            pad_all(values, widths, &self.columns).join(" | ")
        )
    }

    fn markdown_head_with(&self, widths: &[usize]) -> String {
        let rule: Vec<String> = widths
            .iter()
            .zip(&self.columns)
            .map(|(w, column)| {
                let dashes = "-".repeat(*w - 1);
                if column.right {
                    format!(" {dashes}: ")
                } else {
                    format!(" {dashes}- ")
                }
            })
            .collect();
        self.markdown_line(&self.headers(), widths) + &format!("|{}|\n", rule.join("|"))
    }

    /// The column names and the rule under them, in the fixed widths.
    pub fn text_head(&self) -> String {
        self.text_head_with(&self.fixed_widths())
    }

    /// One row in the fixed widths, to go under [`Table::text_head`].
    pub fn text_row(&self, cells: &[Cell]) -> String {
        let values: Vec<String> = cells.iter().map(Cell::render).collect();
        self.text_line(&values, &self.fixed_widths())
    }

    /// The markdown column names and alignment rule, in the fixed widths.
    pub fn markdown_head(&self) -> String {
        self.markdown_head_with(&self.fixed_widths())
    }

    /// One markdown row in the fixed widths.
    pub fn markdown_row(&self, cells: &[Cell]) -> String {
        let values: Vec<String> = cells.iter().map(Cell::render_markdown).collect();
        self.markdown_line(&values, &self.fixed_widths())
    }

    /// Renders like Python's `tabulate` "simple" format, which vLLM's script prints.
    pub fn render_text(&self) -> String {
        let widths = self.fitted_widths();
        let mut out = self.text_head_with(&widths);
        for row in &self.rows {
            let values: Vec<String> = row.iter().map(Cell::render).collect();
            out.push_str(&self.text_line(&values, &widths));
        }
        out
    }

    /// Renders as a GitHub markdown table, numbers right-aligned.
    pub fn render_markdown(&self) -> String {
        let widths = self.fitted_widths();
        let mut out = self.markdown_head_with(&widths);
        for row in &self.rows {
            let values: Vec<String> = row.iter().map(Cell::render_markdown).collect();
            out.push_str(&self.markdown_line(&values, &widths));
        }
        out
    }
}

/// Each cell padded to its column's width, right-aligned where the column says.
fn pad_all(values: &[String], widths: &[usize], columns: &[Column]) -> Vec<String> {
    values
        .iter()
        .zip(widths.iter().zip(columns))
        .map(|(value, (&width, column))| {
            if column.right {
                format!("{value:>width$}")
            } else {
                format!("{value:<width$}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table::from_cells(
            &["num_tokens", "layout", "latency (us)"],
            vec![
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
        )
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

    #[test]
    fn rows_one_at_a_time_line_up_with_the_head() {
        let mut table = table();
        table.columns[2].width = 14;
        let streamed =
            table.text_head() + &table.text_row(&table.rows[0]) + &table.text_row(&table.rows[1]);
        assert_eq!(streamed, table.render_text());
        assert!(streamed.lines().nth(1).unwrap().ends_with(&"-".repeat(14)));
    }

    #[test]
    fn marked_numbers_stay_aligned() {
        assert_eq!(Cell::Marked(1.25, 1, true).render(), "1.2*");
        assert_eq!(Cell::Marked(0.5, 1, false).render(), "0.5 ");
        assert_eq!(Cell::Marked(f64::NAN, 1, false).render(), "nan ");
        assert_eq!(Cell::Marked(3.0, 1, true).render_markdown(), "3.0\\*");
    }

    #[test]
    fn wraps_at_spaces_with_indented_continuations() {
        assert_eq!(wrap("a bb ccc", 4), ["a bb", "  ccc"]);
        assert_eq!(wrap("short", 100), ["short"]);
        assert_eq!(wrap("unbreakable-word x", 5), ["unbreakable-word", "  x"]);
        let long = "word ".repeat(60);
        assert!(wrap(&long, 100).iter().all(|l| l.len() <= 100));
    }
}
