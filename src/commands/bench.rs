//! The benchmark command: plan the sweep, print what runs where, run it, print the table.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use paged_kv_bench::backend::{self, Implementation};
use paged_kv_bench::report;
use paged_kv_bench::sweep;

use crate::cli::BenchArgs;

pub fn run(cli: &BenchArgs) -> anyhow::Result<()> {
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
