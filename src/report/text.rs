//! The text formats: vLLM's table under a header, markdown, CSV; each as a head, one piece
//! per row and a foot, so that rows can be printed as they are measured.

use std::fmt::Write as _;

use super::table::{Cell, Column, Table};
use super::{Report, RowReport, TextFormat, HEADER_WIDTH};
use crate::options::Ceiling;
use crate::problem::Layout;

/// The CSV columns, in order.
const CSV_HEADER: &str = "num_tokens,layout,implementation,bytes_moved,latency_us,\
device_median_us,device_min_us,device_p10_us,device_p90_us,device_max_us,noise_percent,\
robust_noise_percent,met_noise_target,samples,bandwidth_gbps,percent_of_copy,\
pattern_median_us,percent_of_pattern,baseline_device_us,speedup,within_noise";

impl Report {
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
        if c.ceiling != Ceiling::Copy {
            lines[1].push_str(&format!(" ceiling={}", c.ceiling));
        }
        let workload = c.workload.non_default();
        if !workload.is_empty() {
            lines.push(format!("workload: {}", workload.join(" ")));
        }
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
        if c.ceiling == Ceiling::Pattern {
            lines.push(
                "% of pattern (--ceiling pattern): the device time of the row's pattern kernel \
                 (the same input bytes read and as many bytes written to the same cache \
                 addresses, no arithmetic; timed right after the row, the same way) over the \
                 row's own, in percent"
                    .to_string(),
            );
        }
        lines
            .iter()
            .flat_map(|line| wrap(line, HEADER_WIDTH))
            .collect()
    }

    /// The title line of vLLM's script, `Benchmark results for implementation X (measuring
    /// with cudagraph):`, with each implementation's own way of timing in the parentheses
    /// (left out where several would not fit on one line).
    pub fn title(&self, implementation: &str) -> String {
        // Several implementations (`all`, or users' kernels beside a built-in one): name them
        // all rather than the flag's value.
        let names: Vec<&str> = self
            .implementations
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        let joined = names.join(", ");
        let implementation = if names.len() > 1 {
            joined.as_str()
        } else {
            implementation
        };
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
        let pattern = self.config.ceiling == Ceiling::Pattern;
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
            if pattern {
                columns.push(Column::right(format!("{prefix}% of pattern"), 7));
            }
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
        let pattern = self.config.ceiling == Ceiling::Pattern;
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
            if pattern {
                cells.push(Cell::Fixed(
                    result.percent_of_pattern.unwrap_or(f64::NAN),
                    1,
                ));
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
        if c.ceiling == Ceiling::Pattern {
            for (index, info) in self.implementations.iter().enumerate() {
                let unmeasured = self.rows.iter().any(|row| {
                    row.results
                        .get(index)
                        .is_some_and(|r| r.device_us.is_some() && r.pattern_us.is_none())
                });
                if unmeasured {
                    notes.push(format!(
                        "nan in % of pattern: {} has no pattern kernel",
                        info.name
                    ));
                }
            }
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
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
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
            opt(r.pattern_us.map(|s| s.median)),
            opt(r.percent_of_pattern),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_spaces_with_indented_continuations() {
        assert_eq!(wrap("a bb ccc", 4), ["a bb", "  ccc"]);
        assert_eq!(wrap("short", 100), ["short"]);
        assert_eq!(wrap("unbreakable-word x", 5), ["unbreakable-word", "  x"]);
        let long = "word ".repeat(60);
        assert!(wrap(&long, 100).iter().all(|l| l.len() <= 100));
    }
}
