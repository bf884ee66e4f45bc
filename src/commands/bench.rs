//! The benchmark command: plan the sweep, say what runs where, run it, then print and save the
//! report in the chosen formats.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use paged_kv_bench::backend::{self, Selection};
use paged_kv_bench::plot;
use paged_kv_bench::report::{ImplementationInfo, Report, RunConfig};
use paged_kv_bench::sweep;

use crate::cli::{BenchArgs, Format};

pub fn run(args: &BenchArgs) -> Result<()> {
    let config = args.sweep_config();
    // Everything that can be refused is refused before the first measurement.
    let baseline = args.compare.as_deref().map(Report::load).transpose()?;
    for path in [&args.output, &args.plot].into_iter().flatten() {
        check_writable(path)?;
    }
    let options = args.options();
    let (mut backends, skipped) = backend::select(args.implementation, &options)?;
    let plan = sweep::plan(&config, &backends)?;

    let progress = if std::io::stderr().is_terminal() {
        ProgressBar::new((config.layouts.len() * config.num_tokens.len() * backends.len()) as u64)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}]")
            .expect("a valid progress template"),
    );

    let mut implementations = Vec::new();
    for backend in backends.iter_mut() {
        let name = backend.kind().name();
        progress.set_message(format!("{name}: measuring the copy bandwidth"));
        let copy_bandwidth_gbps = backend
            .copy_bandwidth_gbps()
            .with_context(|| format!("{name}: measuring the copy bandwidth"))?;
        let device = backend.device();
        implementations.push(ImplementationInfo {
            name: name.into(),
            device: device.name,
            details: device.details,
            mode_note: backend.mode_note(),
            copy_bandwidth_gbps,
        });
    }
    let mut notes: Vec<String> = skipped
        .iter()
        .map(|(kind, reason)| format!("{kind} skipped: {}", reason.one_line()))
        .collect();
    notes.extend(plan.note.clone());

    let protocol = &config.protocol;
    let mut report = Report {
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        timestamp_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        command: std::env::args().collect(),
        config: RunConfig {
            num_heads: config.num_heads,
            head_size: config.head_size,
            block_size: config.block_size,
            num_blocks: plan.num_blocks,
            dtype: config.dtype,
            kv_cache_dtype: config.cache_dtype,
            mode: options.mode,
            iters: protocol.iters,
            warmup_iters: protocol.warmup_iters,
            cold: protocol.cold,
            rotate: protocol.rotate,
            seed: config.seed,
            min_time_s: protocol.sampling.min_time.as_secs_f64(),
            max_time_s: protocol.sampling.max_time.as_secs_f64(),
            max_noise_percent: protocol.sampling.max_noise_percent,
            min_samples: protocol.sampling.min_samples,
            options: options.clone(),
            workload: config.workload.clone(),
        },
        implementations,
        notes,
        rows: Vec::new(),
    };

    // The plain table shows its header at once, so the user sees what runs where while it runs.
    let table_on_stdout = args.format == Format::Table || args.output.is_some();
    let mut stdout = std::io::stdout().lock();
    if table_on_stdout {
        writeln!(stdout, "{}", report.header_lines().join("\n")).context("writing to stdout")?;
        stdout.flush().ok();
    }

    let rows = sweep::run(&config, &plan, &mut backends, |problem, name| {
        progress.set_message(format!(
            "{name} {} num_tokens={}",
            problem.layout.name(),
            problem.num_tokens
        ));
        progress.inc(1);
    })?;
    progress.finish_and_clear();
    report.rows = Report::rows_from_sweep(&report.implementations, &rows);
    if let Some(baseline) = &baseline {
        if report.compare_with(baseline) == 0 {
            report
                .notes
                .push("--compare: no row of the baseline matches this run".into());
        }
    }

    let names: Vec<&str> = report
        .implementations
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    let implementation = match args.implementation {
        Selection::Auto => format!("{} (auto)", names.join(", ")),
        other => other.name().to_string(),
    };
    let formatted = match args.format {
        Format::Table => report.to_text(&implementation),
        Format::Markdown => report.to_markdown(&implementation),
        Format::Csv => report.to_csv(),
        Format::Json => report.to_json(),
    };
    if table_on_stdout {
        write!(
            stdout,
            "{}\n{}",
            report.title(&implementation),
            report.table().render_text()
        )
        .context("writing to stdout")?;
    } else {
        write!(stdout, "{formatted}").context("writing to stdout")?;
    }
    if let Some(path) = &args.output {
        write_atomically(path, &formatted)?;
    }
    if let Some(path) = &args.plot {
        write_atomically(path, &plot::render_svg(&report)?)?;
    }
    Ok(())
}

/// Fails early, with the reason, when `path` cannot be created.
fn check_writable(path: &Path) -> Result<()> {
    let probe = temporary_path(path);
    std::fs::File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a sibling temporary file, then renames it over `path`, so that a failure never
/// leaves a half-written file behind.
fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let temporary = temporary_path(path);
    let result =
        std::fs::write(&temporary, contents).and_then(|()| std::fs::rename(&temporary, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}
