//! Output formats, comparisons and plots, through the binary as a user runs it.

use std::process::{Command, Output};

use paged_kv_bench::report::Report;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paged-kv-bench"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// A quick CPU sweep: 2 layouts x 3 token counts.
const QUICK: [&str; 14] = [
    "--implementation",
    "cpu",
    "--num-blocks",
    "64",
    "--num-heads",
    "8",
    "--iters",
    "3",
    "--num-tokens",
    "2,16,256",
    "--min-time",
    "0.01",
    "--max-time",
    "0.2",
];

fn quick(extra: &[&str]) -> Output {
    let args: Vec<&str> = QUICK.iter().chain(extra).copied().collect();
    let output = run(&args);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("paged-kv-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn json_report_round_trips_and_carries_everything() {
    let output = quick(&["--format", "json", "--seed", "5"]);
    let report: Report = serde_json::from_slice(&output.stdout).expect("stdout is a JSON report");
    assert_eq!(report.tool, "paged-kv-bench");
    assert_eq!(report.config.num_heads, 8);
    assert_eq!(report.config.seed, 5);
    assert_eq!(
        report.config.dtype,
        paged_kv_bench::problem::Dtype::BFloat16
    );
    assert_eq!(report.implementations.len(), 1);
    let cpu = &report.implementations[0];
    assert_eq!(cpu.name, "cpu");
    assert!(cpu.copy_bandwidth_gbps.is_some_and(|b| b > 0.0));
    assert_eq!(report.rows.len(), 6);
    for row in &report.rows {
        let result = &row.results[0];
        let stats = result.device_us.expect("device statistics");
        assert!(stats.samples >= 1 && stats.min <= stats.median && stats.median <= stats.max);
        assert!(result.bandwidth_gbps.unwrap() > 0.0 && result.percent_of_copy.unwrap() > 0.0);
        // 2 x T x 8 x 128 x (2 read + 2 written) + 8 x T bytes.
        assert_eq!(
            row.bytes_moved,
            row.num_tokens as u64 * (2 * 8 * 128 * 4 + 8)
        );
    }
    // Serializing what was parsed gives the same report back.
    let again: Report = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(again, report);
}

#[test]
fn csv_and_markdown_formats() {
    let csv = String::from_utf8(quick(&["--format", "csv"]).stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("num_tokens,layout,implementation,bytes_moved,latency_us"));
    assert_eq!(lines.len(), 7, "{csv}");
    let columns = lines[0].split(',').count();
    assert!(lines.iter().all(|l| l.split(',').count() == columns));
    assert!(lines[1].starts_with("2,NHD,cpu,"));

    let markdown = String::from_utf8(quick(&["--format", "markdown"]).stdout).unwrap();
    assert!(
        markdown.contains("| num_tokens | layout | latency (us) |"),
        "{markdown}"
    );
    assert!(markdown.contains("Benchmark results for implementation cpu"));
}

#[test]
fn output_file_gets_the_format_and_stdout_the_table() {
    let dir = temp_dir("output");
    let path = dir.join("run.json");
    let output = quick(&["--format", "json", "--output", path.to_str().unwrap()]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("Benchmark results for implementation cpu"));
    let report = Report::load(&path).expect("the file is a report");
    assert_eq!(report.rows.len(), 6);
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn compare_against_itself_is_one_within_noise() {
    let dir = temp_dir("compare");
    let path = dir.join("baseline.json");
    quick(&["--format", "json", "--output", path.to_str().unwrap()]);
    let baseline = Report::load(&path).unwrap();
    // A report compared with itself: every row exactly 1.00x, within noise.
    let mut same = baseline.clone();
    assert_eq!(same.compare_with(&baseline), 6);
    for row in &same.rows {
        let comparison = row.results[0].baseline.unwrap();
        assert_eq!(comparison.speedup, 1.0);
        assert!(comparison.within_noise);
    }
    assert!(same.table().render_text().contains("1.00x ~"));
    // A second run compared with the first: a speed-up on every row.
    let output = quick(&["--compare", path.to_str().unwrap()]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("num_tokens"))
        .collect();
    assert!(table[0].ends_with("vs baseline"), "{stdout}");
    // The rows, then footnotes (which start at the line's first column), one saying what the
    // column means.
    let rows: Vec<&&str> = table[2..]
        .iter()
        .take_while(|l| l.starts_with(' '))
        .collect();
    assert_eq!(rows.len(), 6, "{stdout}");
    assert!(table
        .iter()
        .any(|l| l.starts_with("vs baseline: median device time in")));
    for line in rows {
        let speedup = line.split_whitespace().nth(7).unwrap();
        assert!(speedup.ends_with('x'), "{line}");
        assert!(speedup.trim_end_matches('x').parse::<f64>().unwrap() > 0.0);
    }
}

#[test]
fn plot_has_a_series_per_implementation_and_layout() {
    let dir = temp_dir("plot");
    let path = dir.join("sweep.svg");
    quick(&["--plot", path.to_str().unwrap()]);
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "not an SVG document");
    for label in [
        "cpu NHD",
        "cpu HND",
        "cpu copy bandwidth",
        "num_tokens",
        "GB/s",
    ] {
        assert!(svg.contains(label), "the plot lacks {label:?}");
    }
    // Two charts, each with a line of 3 points per series: 2 series x 2 charts.
    assert!(svg.matches("<polyline").count() >= 4);
}

#[test]
fn unreadable_or_malformed_baselines_and_unwritable_outputs_are_refused() {
    let dir = temp_dir("refusals");
    let malformed = dir.join("malformed.json");
    std::fs::write(&malformed, "{\"tool\": 3}").unwrap();
    let missing = dir.join("missing.json");
    let unwritable = dir.join("no-such-dir").join("out.json");
    for (args, needle) in [
        (
            vec!["--compare", malformed.to_str().unwrap()],
            "not a paged-kv-bench JSON report",
        ),
        (vec!["--compare", missing.to_str().unwrap()], "cannot read"),
        (
            vec!["--output", unwritable.to_str().unwrap()],
            "cannot write",
        ),
        (vec!["--plot", unwritable.to_str().unwrap()], "cannot write"),
        (vec!["--max-noise", "0"], "--max-noise"),
        (vec!["--min-time", "-1"], "--min-time"),
        (vec!["--format", "xml"], "--format"),
    ] {
        let all: Vec<&str> = QUICK.iter().copied().chain(args.iter().copied()).collect();
        let output = run(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            output.stdout.is_empty(),
            "{args:?} measured before refusing"
        );
    }
    assert!(!unwritable.parent().unwrap().exists());
}

#[test]
fn unmet_noise_targets_and_missing_layouts_are_marked_and_explained() {
    let output = quick(&["--format", "json"]);
    let mut report: Report = serde_json::from_slice(&output.stdout).unwrap();
    // The first row's noise target was not met, the others' were (whatever the run said);
    // the cpu "implements" NHD only, so its HND rows are empty.
    report.rows[0].results[0]
        .device_us
        .as_mut()
        .unwrap()
        .met_noise_target = false;
    for row in 1..3 {
        report.rows[row].results[0]
            .device_us
            .as_mut()
            .unwrap()
            .met_noise_target = true;
    }
    report.implementations[0].layouts = vec![paged_kv_bench::problem::Layout::Nhd];
    for row in report.rows.iter_mut().filter(|r| r.layout == "HND") {
        let result = &mut row.results[0];
        (result.latency_us, result.device_us) = (None, None);
        (result.bandwidth_gbps, result.percent_of_copy) = (None, None);
    }
    let noise = |row: &paged_kv_bench::report::RowReport| {
        format!(
            "{:.1}",
            row.results[0].device_us.unwrap().robust_noise_percent
        )
    };

    let text = report.to_text("cpu");
    let lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.starts_with("num_tokens"))
        .unwrap()
        + 2;
    let cells: Vec<&str> = lines[first].split_whitespace().collect();
    assert_eq!(cells[4], format!("{}*", noise(&report.rows[0])), "{text}");
    let second: Vec<&str> = lines[first + 1].split_whitespace().collect();
    assert_eq!(second[4], noise(&report.rows[1]), "{text}");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("*: noise still above --max-noise")));
    assert!(
        lines.contains(&"nan: cpu implements the NHD layout only"),
        "{text}"
    );
    // The marks do not shift the numbers: every row is as long as the column heads.
    let width = lines[first - 1].len();
    assert!(
        lines[first..first + 3].iter().all(|l| l.len() == width),
        "{text}"
    );

    let markdown = report.to_markdown("cpu");
    assert!(
        markdown.contains(&format!("{}\\*", noise(&report.rows[0]))),
        "{markdown}"
    );
    assert!(
        markdown.contains("- nan: cpu implements the NHD layout only"),
        "{markdown}"
    );
    assert!(markdown.contains("- \\*: noise still above"), "{markdown}");

    let csv = report.to_csv();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let column = header
        .iter()
        .position(|c| *c == "met_noise_target")
        .unwrap();
    let marks: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(column).unwrap())
        .collect();
    assert_eq!(marks, ["false", "true", "true", "", "", ""]);
}

#[test]
fn a_stopped_run_says_where_in_every_format() {
    let output = quick(&["--format", "json"]);
    let mut report: Report = serde_json::from_slice(&output.stdout).unwrap();
    report.rows.truncate(2);
    report.stopped = Some("interrupted by SIGINT at num_tokens=256 layout=NHD (cpu)".into());
    let note = "stopped: interrupted by SIGINT at num_tokens=256 layout=NHD (cpu)";
    assert!(report.to_text("cpu").lines().any(|l| l == note));
    assert!(report.to_markdown("cpu").contains(&format!("- {note}")));
    let again: Report = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(again.stopped, report.stopped);
    let svg = paged_kv_bench::plot::render_svg(&report).unwrap();
    assert!(svg.contains("run stopped early"));
}

/// `--ceiling pattern`: every row has its pattern time and "% of pattern" in JSON (which
/// round-trips), CSV (two more columns, filled) and the table; without it, neither column nor
/// field; a report without the fields (an earlier version's) still loads, as `copy`.
#[test]
fn pattern_ceiling_is_in_every_format_and_old_reports_load() {
    let output = quick(&["--format", "json", "--ceiling", "pattern"]);
    let report: Report = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(
        report.config.ceiling,
        paged_kv_bench::options::Ceiling::Pattern
    );
    for row in &report.rows {
        let result = &row.results[0];
        let (row_us, pattern) = (result.device_us.unwrap(), result.pattern_us.unwrap());
        assert!(pattern.samples >= 1 && pattern.median > 0.0, "{pattern:?}");
        let percent = result.percent_of_pattern.unwrap();
        assert!((percent - pattern.median / row_us.median * 100.0).abs() < 1e-9);
    }
    let again: Report = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(again, report);
    let text = report.to_text("cpu");
    assert!(text.contains("% of copy  % of pattern"), "{text}");
    assert!(text.contains("ceiling=pattern"), "{text}");

    let csv = report.to_csv();
    let lines: Vec<&str> = csv.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let at = header
        .iter()
        .position(|&c| c == "percent_of_pattern")
        .unwrap();
    assert_eq!(header[at - 1], "pattern_median_us");
    assert_eq!(header[at - 2], "percent_of_copy");
    for line in &lines[1..] {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), header.len(), "{line}");
        assert!(cells[at].parse::<f64>().unwrap() > 0.0, "{line}");
    }

    // The default: no pattern column or field; and the old layout of the JSON loads.
    let plain: Report =
        serde_json::from_slice(&quick(&["--format", "json"]).stdout).expect("a JSON report");
    assert!(plain.rows[0].results[0].pattern_us.is_none());
    assert!(!plain.to_text("cpu").contains("% of pattern"));
    let mut old: serde_json::Value = serde_json::from_str(&plain.to_json()).unwrap();
    old["config"].as_object_mut().unwrap().remove("ceiling");
    let old: Report = serde_json::from_value(old).expect("a report of an earlier version");
    assert_eq!(old.config.ceiling, paged_kv_bench::options::Ceiling::Copy);
    assert!(!plain.to_json().contains("percent_of_pattern"));
}
