//! The benchmark command: check everything that can be refused, say what runs where, then
//! print each row as soon as it is measured, and save the report in the chosen format.
//!
//! A run that ends early keeps what it measured: on SIGINT or SIGTERM, or when a row fails, the
//! rows so far are printed and saved with a note saying where it stopped, and the exit status
//! says why (130, 143, or 1 with the error). A reader that closes stdout ends the run quietly.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use paged_kv_bench::backend::{self, Backend, Selection, Skipped};
use paged_kv_bench::options::Options;
use paged_kv_bench::plot;
use paged_kv_bench::problem::{Layout, Problem};
use paged_kv_bench::report::{ImplementationInfo, Report, RowReport, RunConfig, TextFormat};
use paged_kv_bench::sweep::{self, End, Event, Plan, SweepConfig};
use paged_kv_bench::user_kernel::UserKernel;
use paged_kv_bench::verify::{self, Subject};

use super::output::{self, Interrupt, Stdout};
use crate::cli::{BenchArgs, DeviceChoice, Format};

/// What a shell reports for a process that a closed pipe ended (128 + SIGPIPE).
const CLOSED_PIPE_STATUS: u8 = 141;

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let interrupt = Interrupt::install()?;
    match args.backend.device {
        Some(DeviceChoice::All) => run_every_device(args, &interrupt),
        _ => {
            let target = Target {
                device: None,
                output: args.output.clone(),
                plot: args.plot.clone(),
                json_on_stdout: true,
            };
            run_on(args, &interrupt, &target).map(|(status, _)| status)
        }
    }
}

/// Where one sweep runs and where its report goes.
struct Target {
    /// `--device all`: this device's index (otherwise `--device N` is in the options already).
    device: Option<usize>,
    output: Option<PathBuf>,
    plot: Option<PathBuf>,
    /// Print the JSON report on stdout (with `--format json` and no `--output`); `--device
    /// all` prints one array of every device's report instead.
    json_on_stdout: bool,
}

/// `--device all`: the sweep on each device of the chosen implementation in turn, one table
/// per device on stdout; `--output` and `--plot` get one file per device (`out.json` becomes
/// `out.device0.json`, ...), and JSON on stdout is one array holding every device's report.
fn run_every_device(args: &BenchArgs, interrupt: &Interrupt) -> Result<ExitCode> {
    let options = args.options();
    let kind = match args.implementation {
        Selection::Only(kind) => kind,
        Selection::All | Selection::None => bail!(
            "--device all runs one implementation on each of its devices: name it with \
             --implementation cuda, wgpu or cpu"
        ),
        Selection::Auto => {
            let (backends, _) = backend::select(Selection::Auto, &options)?;
            backends
                .first()
                .map(|backend| backend.kind())
                .context("no implementation is available")?
        }
    };
    let count = backend::device_count(kind, &options);
    if count == 0 {
        bail!("--device all: {kind} finds no device here");
    }
    let per_device = |path: &Option<PathBuf>, device: usize| {
        path.as_ref().map(|path| {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let name = match path.extension() {
                Some(extension) => {
                    format!("{stem}.device{device}.{}", extension.to_string_lossy())
                }
                None => format!("{stem}.device{device}"),
            };
            path.with_file_name(name)
        })
    };
    let json_array = args.format == Format::Json && args.output.is_none();
    let mut reports = Vec::new();
    let mut status = ExitCode::SUCCESS;
    for device in 0..count {
        let target = Target {
            device: Some(device),
            output: per_device(&args.output, device),
            plot: per_device(&args.plot, device),
            json_on_stdout: !json_array,
        };
        let (device_status, report) = run_on(args, interrupt, &target)?;
        reports.extend(report);
        if device_status != ExitCode::SUCCESS {
            status = device_status;
            break;
        }
    }
    if json_array {
        let mut stdout = Stdout::default();
        stdout.write(&format!(
            "{}\n",
            serde_json::to_string_pretty(&reports).context("writing the reports as JSON")?
        ));
        if let Some(error) = stdout.failure() {
            return Err(error);
        }
    }
    Ok(status)
}

/// One sweep on one set of backends; returns the exit status and the report.
fn run_on(
    args: &BenchArgs,
    interrupt: &Interrupt,
    target: &Target,
) -> Result<(ExitCode, Option<Report>)> {
    let config = args.sweep_config();
    // Everything that can be refused is refused before the first measurement.
    for path in [&target.output, &target.plot].into_iter().flatten() {
        output::check_writable(path)?;
    }
    let baseline = args.compare.as_deref().map(Report::load).transpose()?;
    let mut options = args.options();
    if target.device.is_some() {
        options.device = target.device;
    }
    let kernels = args.backend.user_kernels()?;
    if args.implementation == Selection::None && kernels.is_empty() {
        bail!("--implementation none runs only your own kernels: give --kernel or --shader");
    }
    let (mut backends, skipped) = backend::select(args.implementation, &options)?;
    // The users' kernels run beside the built-in implementations, after them.
    for kernel in &kernels {
        backends.push(backend::open_user(kernel, &options)?);
    }
    let plan = sweep::plan(&config, &backends)?;
    verify_user_kernels(&config, &options, &mut backends)?;
    let mut report = new_report(&config, &plan, &options, &backends, &skipped);
    report.config.user_kernels = kernels.iter().map(UserKernel::info).collect();
    if let (Some(baseline), Some(path)) = (&baseline, &args.compare) {
        let differences = report.baseline_differences(baseline).join(", ");
        if !differences.is_empty() {
            if !args.compare_any {
                bail!(
                    "--compare {}: baseline differs in {differences}; pass --compare-any to \
                     compare anyway",
                    path.display()
                );
            }
            report.notes.push(format!(
                "--compare-any: {} differs in {differences}",
                path.display()
            ));
        }
        report.compared_with = Some(path.display().to_string());
    }

    let steps = config.layouts.len() * plan.num_tokens.len() * backends.len();
    let progress = progress_bar(steps);
    for (backend, info) in backends.iter_mut().zip(&mut report.implementations) {
        if interrupt.requested() {
            break;
        }
        progress.set_message(format!("{}: measuring the copy bandwidth", info.name));
        info.copy_bandwidth_gbps = backend
            .copy_bandwidth_gbps()
            .with_context(|| format!("{}: measuring the copy bandwidth", info.name))?;
    }

    // With --output, stdout shows the table while the file gets --format; JSON is one
    // document, printed whole at the end.
    let shown = match (target.output.is_some(), args.format) {
        (true, _) | (false, Format::Table) => Some(TextFormat::Table),
        (false, Format::Markdown) => Some(TextFormat::Markdown),
        (false, Format::Csv) => Some(TextFormat::Csv),
        (false, Format::Json) => None,
    };
    let label = implementation_label(args.implementation, &report);
    let mut stdout = Stdout::default();
    if let Some(format) = shown {
        progress.suspend(|| stdout.write(&report.head(format, &label)));
    }

    let mut rows: Vec<RowReport> = Vec::new();
    let sweep = if stdout.open() {
        sweep::run(
            &config,
            &plan,
            &mut backends,
            |event| match event {
                Event::Step {
                    problem,
                    backend,
                    done,
                } => {
                    progress.set_position(done as u64);
                    progress.set_message(format!(
                        "{backend} {} num_tokens={}",
                        problem.layout, problem.num_tokens
                    ));
                    ControlFlow::Continue(())
                }
                Event::Row(row) => {
                    let mut row = Report::row_from_sweep(&report.implementations, row);
                    if let Some(baseline) = &baseline {
                        Report::compare_row(&mut row, baseline);
                    }
                    if let Some(format) = shown {
                        progress.suspend(|| stdout.write(&report.row_text(format, &row)));
                    }
                    rows.push(row);
                    progress.set_position((rows.len() * report.implementations.len()) as u64);
                    if stdout.open() {
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(())
                    }
                }
            },
            || interrupt.requested(),
        )
    } else {
        sweep::Sweep {
            rows: Vec::new(),
            end: End::Stopped { at: None },
        }
    };
    progress.finish_and_clear();
    report.rows = rows;

    let total = config.layouts.len() * plan.num_tokens.len();
    let measured = format!("{} of {total} rows measured", report.rows.len());
    let mut failure = None;
    let mut status = ExitCode::SUCCESS;
    match sweep.end {
        End::Complete => {}
        End::Stopped { at } => {
            let (why, code) = if stdout.closed() {
                ("stdout was closed".to_string(), CLOSED_PIPE_STATUS)
            } else if let Some((number, name)) = interrupt.received() {
                (format!("interrupted by {name}"), (128 + number) as u8)
            } else {
                ("writing to stdout failed".to_string(), 1)
            };
            report.stopped = Some(format!("{why}{}; {measured}", place(&at)));
            status = ExitCode::from(code);
            // Said on stderr too: stdout may be a file, or JSON that the user does not read.
            if interrupt.requested() && !stdout.closed() {
                eprintln!("{why}{}: {measured}", place(&at));
            }
        }
        End::Failed(error) => {
            report.stopped = Some(format!("failed: {}; {measured}", error.one_line()));
            failure = Some(error);
        }
    }

    if let Some(format) = shown {
        stdout.write(&report.foot(format));
    } else if target.json_on_stdout {
        stdout.write(&report.to_json());
    }
    if let Some(path) = &target.output {
        let formatted = match args.format {
            Format::Table => report.to_text(&label),
            Format::Markdown => report.to_markdown(&label),
            Format::Csv => report.to_csv(),
            Format::Json => report.to_json(),
        };
        output::write_atomically(path, &formatted)?;
    }
    if let Some(path) = &target.plot {
        if report.rows.is_empty() && report.stopped.is_some() {
            eprintln!("{} not written: no row was measured", path.display());
        } else {
            output::write_atomically(path, &plot::render_svg(&report)?)?;
        }
    }
    if let Some(error) = failure {
        return Err(error.into());
    }
    if let Some(error) = stdout.failure() {
        return Err(error);
    }
    Ok((status, Some(report)))
}

/// Verification before timing: each user's kernel runs the cases of
/// [`verify::before_timing`] against the CPU reference on poisoned caches. A kernel that
/// fails ends the run before anything is timed (the built-in rows too: a report that lacks
/// the kernel's rows would read as if it had none), with the first failure as `verify` prints
/// it and the command that replays it. Cases a kernel does not declare are n/a and skipped.
fn verify_user_kernels(
    config: &SweepConfig,
    options: &Options,
    backends: &mut [Box<dyn Backend>],
) -> Result<()> {
    let cases = verify::before_timing(config);
    for slot in backends.iter_mut() {
        let Some(kernel) = slot.user_kernel().cloned() else {
            continue;
        };
        // verify::run owns its subjects: lend the backend and take it back.
        let placeholder: Box<dyn Backend> = Box::new(backend::cpu::CpuBackend::new());
        let mut subject = Subject::new(std::mem::replace(slot, placeholder));
        let report = verify::run_to_first_failure(&mut subject, &cases);
        *slot = subject.backend;
        if let Some(failure) = report.failures.first() {
            bail!(
                "{} failed verification, so nothing was timed: {failure}; replay with: {}{}",
                kernel.name,
                kernel.replay_command(config.seed),
                // The same bound on each wait, so that a timeout replays as one.
                options
                    .kernel_timeout_s
                    .map(|s| format!(" --kernel-timeout {s}"))
                    .unwrap_or_default()
            );
        }
        if report.checked() == 0 {
            eprintln!(
                "note: {} declares none of this run's calls: its rows are n/a",
                kernel.name
            );
        }
    }
    Ok(())
}

/// The report before any measurement: configuration, implementations (their copy bandwidth
/// still to measure) and notes.
fn new_report(
    config: &SweepConfig,
    plan: &Plan,
    options: &Options,
    backends: &[Box<dyn Backend>],
    skipped: &Skipped,
) -> Report {
    let implementations = backends
        .iter()
        .map(|backend| {
            let device = backend.device();
            ImplementationInfo {
                name: backend.name(),
                device: device.name,
                details: device.details,
                mode_note: backend.mode_note(),
                mode_summary: backend.mode_summary(),
                layouts: [Layout::Nhd, Layout::Hnd]
                    .into_iter()
                    .filter(|&layout| backend.supports(layout))
                    .collect(),
                copy_bandwidth_gbps: None,
            }
        })
        .collect();
    let mut notes: Vec<String> = skipped
        .iter()
        .map(|(kind, reason)| format!("{kind} skipped: {}", reason.one_line()))
        .collect();
    notes.extend(plan.notes.iter().cloned());

    let protocol = &plan.protocol;
    Report {
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
            layouts: config.layouts.clone(),
            num_tokens: plan.num_tokens.clone(),
            mode: options.mode,
            iters: protocol.iters,
            warmup_iters: protocol.warmup_iters,
            cold: protocol.cold,
            rotate: protocol.rotate,
            seed: config.seed,
            min_time_s: protocol.sampling.min_time.as_secs_f64(),
            max_time_s: protocol.sampling.max_time.as_secs_f64(),
            max_noise_percent: protocol.sampling.max_noise_percent,
            noise_statistic: paged_kv_bench::timing::NOISE_STATISTIC.into(),
            min_samples: protocol.sampling.min_samples,
            options: options.clone(),
            workload: config.workload.clone(),
            user_kernels: Vec::new(),
            ceiling: config.ceiling,
        },
        implementations,
        notes,
        rows: Vec::new(),
        stopped: None,
        compared_with: None,
    }
}

/// The implementation named in the title: what ran, for `auto`.
fn implementation_label(selection: Selection, report: &Report) -> String {
    match selection {
        Selection::Auto | Selection::None => report
            .implementations
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        other => other.name().to_string(),
    }
}

/// ` at num_tokens=N layout=L (backend)` for the row a sweep did not finish.
fn place(at: &Option<(Problem, Option<String>)>) -> String {
    match at {
        Some((problem, backend)) => format!(
            " at num_tokens={} layout={}{}",
            problem.num_tokens,
            problem.layout,
            backend
                .as_ref()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default()
        ),
        None => String::new(),
    }
}

/// A bar on stderr (where it is a terminal) that ticks on its own, so that its clock runs
/// while a long row is measured, with an estimate of the time left.
fn progress_bar(steps: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let progress = ProgressBar::new(steps as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise}, about {eta} left]",
        )
        .expect("a valid progress template"),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    progress
}
