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
        // num_tokens, layout, then a (latency, device) pair per implementation.
        assert!(row.len() >= 4, "{row:?}");
        for cell in &row[2..] {
            let value: f64 = cell.parse().unwrap_or_else(|_| panic!("{row:?}"));
            assert!(value.is_finite() && value > 0.0, "{row:?}");
        }
    }
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
    for row in &rows {
        let latency: f64 = row[2].parse().unwrap();
        match row[1] {
            "NHD" => assert!(latency.is_finite() && latency > 0.0, "{row:?}"),
            "HND" => assert!(latency.is_nan(), "{row:?}"),
            other => panic!("layout {other}"),
        }
    }
}
