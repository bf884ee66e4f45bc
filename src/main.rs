//! The `paged-kv-bench` command: parse flags, run the sweep, print the report. Every failure
//! is one line on stderr and a non-zero exit status (130 and 143 for a run ended by SIGINT or
//! SIGTERM, 141 for one whose stdout was closed).

mod cli;
mod commands;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid or not set" on every start where
    // it is unset (containers, CI); this program shows no windows, so any directory will do.
    // Set here, before any thread exists, rather than in the library, where setting the
    // environment would race with other threads reading it.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    install_panic_hook();
    let cli = match cli::parse().and_then(|cli| cli.check().map(|()| cli)) {
        Ok(cli) => cli,
        Err(error) => return clap_error(error),
    };
    let result = match &cli.command {
        None if cli.bench.list_models => commands::models::list().map(|()| ExitCode::SUCCESS),
        None => commands::bench::run(&cli.bench),
        Some(cli::Command::Verify(args)) => commands::verify::run(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(status) => status,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
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
    // Everything from "Usage:" on is the usage block (two lines when there are subcommands)
    // and the pointer to --help: not part of what went wrong.
    let line = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:"))
        .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
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
