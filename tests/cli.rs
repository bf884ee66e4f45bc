//! The binary as a user runs it: the report it prints, and one clear line for every bad input.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    run_with_env(args, &[])
}

fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paged-kv-bench"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The cells of the printed table's rows (after its header line and rule, before the
/// footnotes, which start at the line's first column as the right-aligned rows do not).
fn table_rows(out: &str) -> Vec<Vec<&str>> {
    out.lines()
        .skip_while(|l| !l.starts_with("num_tokens"))
        .skip(2)
        .take_while(|l| l.starts_with(' ') || l.starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// A refusal: non-zero exit, exactly one line on stderr that contains `needle`, no panic.
fn assert_refused(args: &[&str], needle: &str) {
    let output = run(args);
    let err = stderr(&output);
    assert!(
        !output.status.success(),
        "{args:?} succeeded:\n{}",
        stdout(&output)
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line:\n{err}"
    );
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{args:?}: {err}"
    );
}

#[test]
fn cpu_sweep_prints_title_and_table() {
    let output = run(&[
        "--implementation",
        "cpu",
        "--num-blocks",
        "64",
        "--iters",
        "2",
        "--num-tokens",
        "2,16,64",
        "--num-heads",
        "8",
        "--max-time",
        "0.2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(
        out.contains("Benchmark results for implementation cpu (host clock):"),
        "{out}"
    );
    let lines: Vec<&str> = out.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("num_tokens"))
        .expect("a table header");
    assert!(lines[header].contains("layout") && lines[header].contains("latency (us)"));
    let rows = table_rows(&out);
    assert_eq!(rows.len(), 6, "{out}");
    let order: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        order,
        [
            ("2", "NHD"),
            ("16", "NHD"),
            ("64", "NHD"),
            ("2", "HND"),
            ("16", "HND"),
            ("64", "HND")
        ]
    );
    for row in &rows {
        let latency: f64 = row[2].parse().expect("a number");
        assert!(latency > 0.0 && latency.is_finite(), "{row:?}");
    }
}

#[test]
fn default_num_blocks_shrinks_to_fit_with_a_note() {
    // The default 65536 blocks of 8 heads x 64 x bf16 are 2 x 1 GiB: over a 300 MB budget.
    let output = run_with_env(
        &[
            "--implementation",
            "cpu",
            "--iters",
            "1",
            "--num-tokens",
            "2",
            "--layouts",
            "NHD",
            "--num-heads",
            "8",
            "--head-size",
            "64",
            "--max-time",
            "0.2",
        ],
        &[("PAGED_KV_BENCH_HOST_MEMORY_LIMIT", "300000000")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    let note = out
        .lines()
        .find(|l| l.starts_with("num_blocks reduced from 65536 to "))
        .unwrap_or_else(|| panic!("no note in:\n{out}"));
    let reduced: u64 = note["num_blocks reduced from 65536 to ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // 2 x 8192 blocks x 16 KiB = 256 MiB fits in 300 MB; 16384 blocks would not.
    assert_eq!(reduced, 8192, "{note}");
    assert!(out.contains("num_blocks=8192"), "{out}");
}

#[test]
fn bad_flags_are_one_line_errors() {
    assert_refused(&["--head-size", "100"], "--head-size");
    assert_refused(&["--block-size", "8"], "--block-size");
    assert_refused(&["--dtype", "int8"], "--dtype");
    assert_refused(&["--kv-cache-dtype", "fp4"], "--kv-cache-dtype");
    assert_refused(&["--implementation", "triton"], "--implementation");
    assert_refused(&["--mode", "eager"], "--mode");
    assert_refused(&["--layouts", "NDH"], "--layouts");
    assert_refused(&["--num-heads", "0"], "--num-heads");
    assert_refused(&["--num-heads", "-3"], "-3");
    assert_refused(&["--num-blocks", "0"], "--num-blocks");
    assert_refused(&["--iters", "0"], "--iters");
    assert_refused(&["--num-tokens", "0"], "--num-tokens");
    assert_refused(&["--num-tokens", "2,x"], "--num-tokens");
    assert_refused(&["--no-such-flag"], "--no-such-flag");
    assert_refused(&["--cold", "--rotate"], "--rotate");
    assert_refused(&["--wgpu-cache-alloc", "vulkan"], "--wgpu-cache-alloc");
    // Dedicated allocations are Vulkan's: refused with another API before any adapter opens.
    assert_refused(
        &[
            "--implementation",
            "wgpu",
            "--wgpu-api",
            "gl",
            "--wgpu-cache-alloc",
            "dedicated",
        ],
        "--wgpu-cache-alloc dedicated",
    );
}

#[test]
fn rotating_inputs_are_measured_by_every_implementation() {
    let output = run(&[
        "--num-blocks",
        "256",
        "--iters",
        "2",
        "--num-tokens",
        "2,64",
        "--layouts",
        "NHD",
        "--num-heads",
        "8",
        "--max-time",
        "0.2",
        "--rotate",
        "--implementation",
        "all",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("cache=rotating"), "{out}");
    let rows = table_rows(&out);
    assert_eq!(rows.len(), 2, "{out}");
    for row in &rows {
        // num_tokens, layout, then latency, device, noise, GB/s and % of copy per
        // implementation (noise may be 0).
        assert_eq!((row.len() - 2) % 5, 0, "{row:?}");
        for cell in &row[2..] {
            // A noise figure may carry the mark of a row that missed --max-noise.
            let value: f64 = cell
                .trim_end_matches('*')
                .parse()
                .unwrap_or_else(|_| panic!("{row:?}"));
            assert!(value.is_finite() && value >= 0.0, "{row:?}");
        }
    }
}

/// `--ceiling pattern` adds "% of pattern" after "% of copy", a figure for every row (the
/// CPU's pattern time over its row time), and says so in the header; a bad value is refused.
#[test]
fn pattern_ceiling_adds_its_column_on_the_cpu() {
    let output = run(&[
        "--implementation",
        "cpu",
        "--num-blocks",
        "64",
        "--num-heads",
        "8",
        "--iters",
        "2",
        "--num-tokens",
        "2,256",
        "--max-time",
        "0.2",
        "--ceiling",
        "pattern",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("ceiling=pattern"), "{out}");
    assert!(out.contains("% of copy  % of pattern"), "{out}");
    let rows = table_rows(&out);
    assert_eq!(rows.len(), 4, "{out}");
    for row in &rows {
        // num_tokens, layout, latency, device, noise, GB/s, % of copy, % of pattern.
        assert_eq!(row.len(), 8, "{row:?}");
        let percent: f64 = row[7].parse().unwrap_or_else(|_| panic!("{row:?}"));
        assert!(percent.is_finite() && percent > 0.0, "{row:?}");
    }
    assert_refused(&["--ceiling", "roof"], "--ceiling");
}

#[test]
fn impossible_problems_are_one_line_errors() {
    assert_refused(
        &[
            "--implementation",
            "cpu",
            "--kv-cache-dtype",
            "fp8",
            "--head-size",
            "120",
        ],
        "multiple of 16",
    );
    assert_refused(
        &[
            "--implementation",
            "cpu",
            "--num-blocks",
            "16",
            "--num-tokens",
            "300",
        ],
        "the largest token count that fits is 256",
    );
    assert_refused(
        &[
            "--implementation",
            "cpu",
            "--num-blocks",
            "4000000000",
            "--num-tokens",
            "2",
        ],
        "the largest --num-blocks that fits is",
    );
}

#[test]
fn missing_cuda_is_a_one_line_error() {
    if std::path::Path::new("/dev/nvidia0").exists() {
        return; // This machine has an NVIDIA GPU: nothing to refuse.
    }
    assert_refused(
        &[
            "--implementation",
            "cuda",
            "--num-blocks",
            "16",
            "--num-tokens",
            "2",
        ],
        "cuda",
    );
}

/// The portable path as issue 4 asks to show it in CI: NHD rows measured on the wgpu adapter
/// (lavapipe there), HND rows NaN, the adapter named in the header.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_sweep_measures_nhd_and_shows_nan_for_hnd() {
    let output = run(&[
        "--implementation",
        "wgpu",
        "--num-blocks",
        "1024",
        "--iters",
        "3",
        "--num-tokens",
        "2,64,1024,16384",
        "--max-time",
        "1",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    let adapter = out
        .lines()
        .find(|l| l.starts_with("wgpu: "))
        .unwrap_or_else(|| panic!("no adapter line in:\n{out}"));
    assert!(adapter.contains("driver"), "{adapter}");
    let rows = table_rows(&out);
    assert_eq!(rows.len(), 8, "{out}");
    assert!(
        out.lines()
            .any(|l| l == "nan: wgpu implements the NHD layout only"),
        "{out}"
    );
    for row in &rows {
        let latency: f64 = row[2].parse().unwrap();
        match row[1] {
            "NHD" => assert!(latency.is_finite() && latency > 0.0, "{row:?}"),
            "HND" => assert!(latency.is_nan(), "{row:?}"),
            other => panic!("layout {other}"),
        }
    }
}

/// A tiny, quick CPU sweep; `tokens` and the sampling time decide how long it runs.
fn tiny(tokens: &str, seconds: &str) -> Vec<String> {
    [
        "--implementation",
        "cpu",
        "--num-blocks",
        "64",
        "--num-heads",
        "4",
        "--head-size",
        "64",
        "--iters",
        "3",
        "--num-tokens",
        tokens,
        "--min-time",
        seconds,
        "--max-time",
        seconds,
    ]
    .map(String::from)
    .to_vec()
}

fn spawn(args: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_paged-kv-bench"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Reads the child's stdout up to and including its first table row; returns what was read.
fn read_to_first_row(reader: &mut impl std::io::BufRead) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).expect("stdout reads");
        assert!(read > 0, "stdout ended before any row:\n{seen}");
        seen.push_str(&line);
        if !table_rows(&seen).is_empty() {
            return seen;
        }
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("paged-kv-bench-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn rows_are_printed_as_they_are_measured() {
    // Each row samples for a second: the first is on stdout while the second is measured.
    let mut child = spawn(&tiny("2,16", "1"));
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let head = read_to_first_row(&mut stdout);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the process ended before its first row was read:\n{head}"
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(table_rows(&(head + &rest)).len(), 4);
}

#[cfg(unix)]
#[test]
fn a_signal_keeps_the_measured_rows_and_says_where_the_run_stopped() {
    for (signal, name, status) in [
        (libc::SIGINT, "SIGINT", 130),
        (libc::SIGTERM, "SIGTERM", 143),
    ] {
        let dir = temp_dir(&format!("signal-{name}"));
        let path = dir.join("run.json");
        let mut args = tiny("2,16,32,64", "1");
        args.extend(["--format", "json", "--output", path.to_str().unwrap()].map(String::from));
        let mut child = spawn(&args);
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let head = read_to_first_row(&mut stdout);
        // SAFETY: kill(2) on our own child's id.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        let output = child.wait_with_output().unwrap();
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(status), "{name}: {err}");
        // The table on stdout ends with the note; stderr says it in one line.
        let shown = head + &rest;
        let rows = table_rows(&shown).len();
        assert!((1..8).contains(&rows), "{shown}");
        assert!(
            shown.contains(&format!("stopped: interrupted by {name} at num_tokens=")),
            "{shown}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(&format!("interrupted by {name}")), "{err}");
        // The file holds the same rows, and the note.
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(report["rows"].as_array().unwrap().len(), rows);
        let stopped = report["stopped"].as_str().unwrap();
        assert!(
            stopped.starts_with(&format!("interrupted by {name} at num_tokens="))
                && stopped.ends_with(&format!("{rows} of 8 rows measured")),
            "{stopped}"
        );
    }
}

#[test]
fn a_closed_stdout_ends_the_run_quietly() {
    let mut child = spawn(&tiny("2,16,32,64,128,256", "0.3"));
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    read_to_first_row(&mut stdout);
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    // 141 as a shell reports a process ended by SIGPIPE; nothing on stderr.
    assert!(
        matches!(output.status.code(), Some(0 | 141)),
        "{}",
        output.status
    );
    assert_eq!(stderr(&output), "");
}

/// Runs `binary`; `as_nobody` runs it as user and group 65534 through setpriv.
fn run_as(binary: &std::path::Path, args: &[&str], as_nobody: bool) -> Output {
    let mut command = if as_nobody {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        command.arg(binary);
        command
    } else {
        Command::new(binary)
    };
    command.args(args).output().expect("the binary runs")
}

#[test]
fn outputs_that_cannot_be_written_are_refused_before_measuring() {
    let dir = temp_dir("unwritable");
    let file = dir.join("file");
    std::fs::write(&file, "").unwrap();
    let quick: Vec<String> = tiny("2", "0");
    let with = |flag: &str, path: &std::path::Path| -> Vec<String> {
        let mut args = quick.clone();
        args.extend([flag.to_string(), path.to_str().unwrap().to_string()]);
        args
    };
    let cases = [
        (with("--output", &dir), "it is a directory".to_string()),
        (with("--plot", &dir), "it is a directory".to_string()),
        (
            with("--output", &dir.join("missing").join("run.json")),
            format!("directory {} does not exist", dir.join("missing").display()),
        ),
        (
            with("--plot", &file.join("run.svg")),
            format!("{} is not a directory", file.display()),
        ),
        (
            with("--compare", &dir),
            format!("cannot read {}", dir.display()),
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&args, &needle);
        assert!(run(&args).stdout.is_empty(), "{args:?} measured first");
    }
}

/// A directory and a file that only root may write: refused for another user, with the
/// reason, and accepted for root. Runs the other user through setpriv where the tests run as
/// root (as in CI).
#[cfg(unix)]
#[test]
fn write_permission_is_judged_for_the_user_who_runs() {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("permissions");
    // Root's own directory, which others may enter but not write, and a shared directory
    // holding a file that only its owner may write.
    let closed = dir.join("closed");
    let shared = dir.join("shared");
    std::fs::create_dir(&closed).unwrap();
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let kept = shared.join("kept.json");
    std::fs::write(&kept, "").unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o444)).unwrap();
    let into_closed = closed.join("run.json");
    // A copy of the binary that the other user may run, wherever the build tree lies (CI's may
    // be under /root, closed to others).
    let binary = dir.join("paged-kv-bench");
    std::fs::copy(env!("CARGO_BIN_EXE_paged-kv-bench"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let quick = tiny("2", "0");
    let args = |path: &std::path::Path| -> Vec<String> {
        let mut args = quick.clone();
        args.extend(["--output".into(), path.to_str().unwrap().to_string()]);
        args
    };

    // Another user than root: 65534 through setpriv where the tests run as root, else this one.
    if root && !setpriv {
        println!("skipped the user other than root: running as root without setpriv");
    } else {
        for (path, needle) in [
            (
                &into_closed,
                format!(
                    "directory {} is not writable by this user",
                    closed.display()
                ),
            ),
            (&kept, "the file is not writable by this user".to_string()),
        ] {
            let args = args(path);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = run_as(&binary, &args, root);
            let err = stderr(&output);
            if err.contains("setpriv:") {
                println!("skipped the other user: {err}");
                break;
            }
            assert_eq!(output.status.code(), Some(1), "{err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert!(err.contains(&needle), "{err:?} lacks {needle:?}");
            assert!(output.stdout.is_empty(), "measured before refusing");
        }
    }
    // Root may write both.
    if !root {
        println!("skipped root: not running as root");
    } else {
        for path in [&into_closed, &kept] {
            let args = args(path);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = run_as(&binary, &args, false);
            assert!(output.status.success(), "{}", stderr(&output));
            assert!(std::fs::read_to_string(path)
                .unwrap()
                .contains("num_tokens"));
        }
    }
}

#[test]
fn compare_refuses_an_unlike_baseline_unless_told_otherwise() {
    let dir = temp_dir("compare");
    let baseline = dir.join("base.json");
    let mut args = tiny("2,16", "0");
    args.extend(["--format", "json", "--output", baseline.to_str().unwrap()].map(String::from));
    let output = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(output.status.success(), "{}", stderr(&output));

    let mut unlike = tiny("2,16", "0");
    unlike[3] = "128".into(); // --num-blocks
    unlike.extend(["--dtype", "half", "--compare", baseline.to_str().unwrap()].map(String::from));
    let unlike: Vec<&str> = unlike.iter().map(String::as_str).collect();
    assert_refused(
        &unlike,
        &format!(
            "--compare {}: baseline differs in dtype (bfloat16 vs half), num_blocks (64 vs 128); \
             pass --compare-any to compare anyway",
            baseline.display()
        ),
    );
    assert!(run(&unlike).stdout.is_empty(), "measured before refusing");

    let mut anyway = unlike.clone();
    anyway.push("--compare-any");
    let output = run(&anyway);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(
        out.contains("--compare-any:") && out.contains("differs in dtype (bfloat16 vs half)"),
        "{out}"
    );
    let rows = table_rows(&out);
    assert_eq!(rows.len(), 4, "{out}");
    assert!(rows.iter().all(|row| row[7].ends_with('x')), "{out}");

    // Like with like, but no row in common: the column stays, and the table says why it is
    // empty.
    let mut elsewhere = tiny("32", "0");
    elsewhere.extend(["--compare".into(), baseline.to_str().unwrap().to_string()]);
    let output = run(&elsewhere.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out
        .lines()
        .any(|l| l.starts_with("num_tokens") && l.ends_with("vs baseline")));
    assert!(table_rows(&out).iter().all(|row| row[7] == "-"), "{out}");
    assert!(
        out.contains(&format!(
            "vs baseline: no row of {} matches this run",
            baseline.display()
        )),
        "{out}"
    );
}

#[test]
fn header_and_footnote_lines_fit_in_100_columns() {
    // Every implementation there is, with its notes (CUDA skipped, say) and options.
    let mut args = tiny("2,16", "0");
    args[1] = "all".into();
    args.extend(["--wgpu-units", "2", "--host-memory-limit", "20G"].map(String::from));
    let output = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    let table = out
        .lines()
        .position(|l| l.starts_with("num_tokens"))
        .unwrap();
    let rows = table_rows(&out).len();
    let lines: Vec<&str> = out.lines().collect();
    for line in lines[..table].iter().chain(&lines[table + 2 + rows..]) {
        assert!(
            line.chars().count() <= 100,
            "{} characters: {line}",
            line.len()
        );
    }
    // Every implementation shows every column.
    for name in ["cpu"] {
        for column in [
            "latency (us)",
            "device (us)",
            "noise %",
            "GB/s",
            "% of copy",
        ] {
            assert!(
                lines[table].contains(&format!("{name} {column}")),
                "{}",
                lines[table]
            );
        }
    }
}

#[test]
fn help_says_what_each_choice_does_here() {
    let help = stdout(&run(&["--help"]));
    assert!(help.contains("[default: NHD,HND]"), "{help}");
    assert!(
        help.contains("wgpu implements the NHD layout only"),
        "{help}"
    );
    assert!(help.contains("parallel over cache blocks"), "{help}");
    assert!(!help.contains("instead of stdout"), "{help}");
    let verify = stdout(&run(&["verify", "--help"]));
    assert!(
        verify.contains("auto: every implementation available here"),
        "{verify}"
    );
    assert!(!verify.contains("CUDA if an NVIDIA driver"), "{verify}");
}
#[test]
fn contradicting_flag_ranges_are_refused_before_anything_runs() {
    for (args, needle) in [
        (
            &[
                "--implementation",
                "cpu",
                "--min-time",
                "2",
                "--max-time",
                "1",
            ][..],
            "--min-time 2 is longer than --max-time 1",
        ),
        (
            &["--wgpu-slot-order", "off", "--wgpu-order-buckets", "64"][..],
            "--wgpu-slot-order off",
        ),
        (
            &["--wgpu-fp8-split", "on", "--wgpu-units", "2"][..],
            "--wgpu-fp8-split on shares each unit among four threads",
        ),
    ] {
        assert_refused(args, needle);
        // A flag error: the parser's exit status, and no report started.
        let output = run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(stdout(&output).is_empty(), "{args:?}");
    }
}

/// `--device all` runs the chosen implementation on each of its devices: the CPU is one device,
/// so one report in the JSON array (and per-device files); an index beyond the devices, and
/// `all` with every implementation, are one-line refusals.
#[test]
fn every_device_in_turn_and_unknown_devices_refused() {
    let dir = std::env::temp_dir().join(format!("pkb-devices-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("run.json");
    let mut args = tiny("2,16", "0.05");
    args.extend(["--device", "all", "--format", "json"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let reports: Vec<paged_kv_bench::report::Report> =
        serde_json::from_slice(&output.stdout).expect("a JSON array of reports");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].config.options.device, Some(0));
    assert_eq!(reports[0].rows.len(), 4);

    let mut to_file = args.clone();
    let out_arg = out.to_string_lossy().into_owned();
    to_file.extend(["--output", &out_arg]);
    let output = run(&to_file);
    assert!(output.status.success(), "{}", stderr(&output));
    let saved = std::fs::read_to_string(dir.join("run.device0.json")).expect("per-device file");
    let report: paged_kv_bench::report::Report = serde_json::from_str(&saved).unwrap();
    assert_eq!(report.config.options.device, Some(0));
    assert!(!out.exists(), "the undivided name is not written");
    std::fs::remove_dir_all(&dir).ok();

    assert_refused(
        &["--implementation", "all", "--device", "all"],
        "--device all runs one implementation",
    );
    assert_refused(
        &[
            "--implementation",
            "wgpu",
            "--device",
            "9",
            "--num-tokens",
            "2",
        ],
        "no adapter 9",
    );
    assert_refused(&["--device", "x"], "expected a device index");
    assert_refused(
        &[
            "--implementation",
            "cpu",
            "--device",
            "1",
            "--num-tokens",
            "2",
        ],
        "no CPU device 1",
    );
}

/// The cache allocation is recorded in the JSON report: the option as given (`auto` by
/// default) and what it resolved to on the adapter, in the implementation's details; an
/// explicit choice is named in the header's options.
#[test]
fn cache_allocation_is_recorded_in_the_report() {
    let dir = temp_dir("cache-alloc");
    for (alloc, resolved) in [
        (None, "caches in dedicated allocations"),
        (Some("wgpu"), "caches in wgpu's allocations"),
        (Some("dedicated"), "caches in dedicated allocations"),
    ] {
        let path = dir.join(format!("{}.json", alloc.unwrap_or("default")));
        let mut args = vec![
            "--implementation",
            "wgpu",
            "--num-tokens",
            "16",
            "--num-heads",
            "8",
            "--num-blocks",
            "64",
            "--iters",
            "3",
            "--max-time",
            "0.1",
            "--format",
            "json",
            "--output",
            path.to_str().unwrap(),
        ];
        if let Some(alloc) = alloc {
            args.extend(["--wgpu-cache-alloc", alloc]);
        }
        let output = run(&args);
        assert!(output.status.success(), "{alloc:?}: {}", stderr(&output));
        let table = stdout(&output);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            report["config"]["options"]["wgpu"]["cache_alloc"],
            alloc.unwrap_or("auto"),
            "{report}"
        );
        let details = report["implementations"][0]["details"].as_str().unwrap();
        if !details.starts_with("vulkan") {
            // Another API: auto resolves to wgpu's allocations, dedicated is refused.
            continue;
        }
        assert!(details.contains(resolved), "{alloc:?}: {details}");
        let named = alloc.map(|alloc| format!("wgpu_cache_alloc={alloc}"));
        let options = table.lines().find(|l| l.starts_with("options: "));
        assert_eq!(
            options.is_some_and(|l| named.as_ref().is_some_and(|n| l.contains(n.as_str()))),
            named.is_some(),
            "{alloc:?}: {table}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
