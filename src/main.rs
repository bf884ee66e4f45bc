//! The `paged-kv-bench` command: parse flags, run the sweep, print the report. Every failure
//! is one line on stderr and a non-zero exit status.

mod cli;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use paged_kv_bench::backend::{self, Implementation};
use paged_kv_bench::report;
use paged_kv_bench::sweep;

fn main() -> ExitCode {
    install_panic_hook();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return clap_error(error),
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &cli::Cli) -> anyhow::Result<()> {
    let config = cli.sweep_config();
    let (mut backends, skipped) = backend::select(cli.implementation, &cli.backend_options())?;
    let plan = sweep::plan(&config, &backends)?;

    let mut header = vec![format!(
        "paged-kv-bench {}: num_heads={} head_size={} block_size={} num_blocks={} dtype={} kv_cache_dtype={} iters={} seed={}",
        env!("CARGO_PKG_VERSION"),
        config.num_heads,
        config.head_size,
        config.block_size,
        plan.num_blocks,
        config.dtype.name(),
        config.cache_dtype.name(),
        config.protocol.iters,
        config.seed
    )];
    for backend in &backends {
        let device = backend.device();
        header.push(format!(
            "{}: {} ({}); {}",
            backend.implementation().name(),
            device.name,
            device.details,
            backend.mode_note(config.protocol.mode)
        ));
    }
    for (implementation, reason) in &skipped {
        header.push(format!("{} skipped: {reason}", implementation.name()));
    }
    header.push(
        "latency (us): wall clock of call + synchronize, mean over --iters (vLLM's method); \
         device (us): median per-call time on the backend's own clock"
            .into(),
    );
    if let Some(note) = &plan.note {
        header.push(note.clone());
    }
    let mut stdout = std::io::stdout().lock();
    for line in &header {
        writeln!(stdout, "{line}").context("cannot write to stdout")?;
    }
    stdout.flush().ok();

    let steps = config.layouts.len() * config.num_tokens.len() * backends.len();
    let progress = if std::io::stderr().is_terminal() {
        ProgressBar::new(steps as u64)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}]")
            .expect("a valid progress template"),
    );
    let rows = sweep::run(&config, &plan, &mut backends, |problem, name| {
        progress.set_message(format!(
            "{name} {} num_tokens={}",
            problem.layout.name(),
            problem.num_tokens
        ));
        progress.inc(1);
    })?;
    progress.finish_and_clear();

    let names: Vec<&str> = backends.iter().map(|b| b.implementation().name()).collect();
    let implementation = match cli.implementation {
        Implementation::Auto => format!("{} (auto)", names.join(", ")),
        other => other.name().to_string(),
    };
    writeln!(
        stdout,
        "Benchmark results for implementation {implementation} (measuring with {}):",
        config.protocol.mode.name()
    )?;
    write!(
        stdout,
        "{}",
        report::results_table(&names, &rows).render_text()
    )?;
    Ok(())
}

/// Prints a flag error as one line (clap's own message spans several) and exits with 2;
/// `--help` and `--version` print as usual.
fn clap_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let rendered = error.render().to_string();
    let line = rendered
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("For more information")
                && !line.starts_with("Usage:")
        })
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("{line}");
    ExitCode::from(2)
}

/// A panic is a bug, but the user still gets one line rather than a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{location}: {message} (please report this)");
    }));
}
