//! The `verify` command: every chosen implementation against the CPU reference, byte for byte,
//! over the verification matrix, on random inputs from a printed seed.

use std::io::{IsTerminal, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use paged_kv_bench::backend::{self, Backend, Kind, Selection};
use paged_kv_bench::options::{Mode, Options, WgpuTuning};
use paged_kv_bench::verify::{self, Coverage, Subject};

use crate::cli::VerifyArgs;

/// Failures listed in full under the matrix; the rest are counted.
const LISTED_FAILURES: usize = 10;

pub fn run(args: &VerifyArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(seed_from_clock);
    let coverage = if args.quick {
        Coverage::Quick
    } else {
        Coverage::Full
    };
    let mut stdout = std::io::stdout().lock();
    // First, so that a run that crashes or hangs can still be replayed.
    writeln!(
        stdout,
        "seed {seed} (replay with --seed {seed}{})",
        if args.quick { " --quick" } else { "" }
    )
    .context("cannot write to stdout")?;
    stdout.flush().ok();

    // Calls are checked as the benchmark issues them by default (CUDA graph replays).
    let options = args.backend.options(Mode::default(), None);
    // `auto` picks one backend for a benchmark; a check wants every one there is.
    let choice = match args.implementation.0 {
        Selection::Auto => Selection::All,
        other => other,
    };
    let kernels = args.backend.user_kernels()?;
    if choice == Selection::None && kernels.is_empty() {
        anyhow::bail!(
            "--implementation none checks only your own kernels: give --kernel or --shader"
        );
    }
    let (mut backends, skipped) = backend::select(choice, &options)?;
    // The users' kernels are checked like any implementation, after the built-in ones; a
    // call a kernel does not declare is n/a.
    for kernel in &kernels {
        backends.push(backend::open_user(kernel, &options)?);
    }
    for backend in &backends {
        let device = backend.device();
        writeln!(
            stdout,
            "{}: {} ({})",
            backend.name(),
            device.name,
            device.details
        )?;
    }
    for (kind, reason) in &skipped {
        writeln!(stdout, "{kind} skipped: {}", reason.one_line())?;
    }
    let mut subjects = variants(&backends, coverage, &options);
    subjects.splice(0..0, backends.into_iter().map(Subject::new));

    let cases = verify::matrix(coverage, seed);
    writeln!(
        stdout,
        "checking the {} matrix ({} cases) on {} against the CPU reference",
        coverage.name(),
        cases.len(),
        subjects
            .iter()
            .map(|s| s.label.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    stdout.flush().ok();

    let progress = if std::io::stderr().is_terminal() {
        ProgressBar::new(verify::count_checks(&subjects, &cases) as u64)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}]")
            .expect("a valid progress template"),
    );
    let report = verify::run(&mut subjects, &cases, |label, case| {
        let p = &case.problem;
        progress.set_message(format!(
            "{label} {} {} {} num_tokens={} head_size={}",
            p.layout.name(),
            p.dtype.name(),
            p.cache_dtype.name(),
            p.num_tokens,
            p.head_size
        ));
        progress.inc(1);
    });
    progress.finish_and_clear();

    if report.checked() == 0 {
        anyhow::bail!("verify: no case was checked");
    }
    // The matrix and the failure listing go to stdout; a failed run ends with its count as the
    // one-line error on stderr (through main) and a non-zero exit status.
    write!(stdout, "{}", report.table().render_text())?;
    if report.failed() > 0 {
        writeln!(stdout, "first mismatch of each failing case:")?;
        for line in report.failure_lines(LISTED_FAILURES) {
            writeln!(stdout, "  {line}")?;
        }
        stdout.flush().ok();
        anyhow::bail!("{}", report.summary());
    }
    writeln!(stdout, "{}", report.summary())?;
    Ok(())
}

/// A seed that differs from run to run: the clock's nanoseconds, mixed so that runs a moment
/// apart get unrelated seeds, and kept below 2^53 so that it survives a trip through tools
/// that read numbers as doubles.
fn seed_from_clock() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) >> 11
}

/// Backends checked a second time in another configuration, as rows of their own (see
/// [`Subject`]): paths of a backend that the matrix's shapes do not reach by themselves.
///
/// The full matrix checks the wgpu backend a second time with 256 KiB storage bindings and the
/// long fp8 encoder alone (no tables, no short encoder) with a thread per 16-byte unit, so that
/// caches are split over several buffers as 32 GiB caches are on a GPU (256 KiB stays above the
/// largest cache block in the matrix, 160 KiB; smaller caches fit one buffer and are skipped),
/// and the encoder that the tables (large calls), the short encoder and the split units (small
/// calls) otherwise replace is covered in the kernels too.
fn variants(opened: &[Box<dyn Backend>], coverage: Coverage, options: &Options) -> Vec<Subject> {
    const BINDING_BYTES: u64 = 256 << 10;
    let mut extra = Vec::new();
    let built_in_wgpu = opened
        .iter()
        .any(|backend| backend.kind() == Kind::Wgpu && backend.user_kernel().is_none());
    if coverage != Coverage::Full || !built_in_wgpu {
        return extra;
    }
    let split = Options {
        wgpu: WgpuTuning {
            max_binding_bytes: Some(BINDING_BYTES),
            fp8_table: Some(false),
            fp8_lut: Some(false),
            fp8_split: Some(false),
            fp8_fast: Some(false),
            ..options.wgpu
        },
        ..options.clone()
    };
    if let Ok(backend) = backend::open(Kind::Wgpu, &split, false) {
        extra.push(Subject {
            label: "wgpu (256 KiB buffers, long fp8 encoder)".into(),
            backend,
            min_cache_bytes: BINDING_BYTES + 1,
        });
    }
    extra
}
