//! Users' own shaders (`--shader FILE.wgsl`) on lavapipe: the example verifies and is timed
//! beside the built-in implementations; broken copies of it fail verification at the right
//! place; compile errors name the file and line; bad files and names are one-line errors; calls
//! a shader does not declare are n/a.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use paged_kv_bench::backend;
use paged_kv_bench::options::Options;
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout};
use paged_kv_bench::user_kernel::{Language, UserKernel};
use paged_kv_bench::verify::{self, Coverage, Mismatch, Outcome, Subject};

const EXAMPLE: &str = "examples/kernels/copy.wgsl";

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paged-kv-bench"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A directory of its own for each test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pkb-user-shader-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The example with `from` replaced by `to` (which must occur once), written to `dir/name`.
fn variant(dir: &Path, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(EXAMPLE).unwrap();
    for (from, to) in edits {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{from:?} occurs once in the example"
        );
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The first mismatch of `path` over the quick matrix's NHD bfloat16 auto cases.
fn first_mismatch(path: &Path) -> Mismatch {
    let kernel = UserKernel::load(path.to_str().unwrap(), Language::Wgsl).unwrap();
    let backend = backend::open_user(&kernel, &Options::default()).expect("the shader opens");
    let cases: Vec<_> = verify::matrix(Coverage::Quick, 1)
        .into_iter()
        .filter(|c| {
            let p = &c.problem;
            (p.layout, p.dtype, p.cache_dtype) == (Layout::Nhd, Dtype::BFloat16, CacheDtype::Auto)
        })
        .collect();
    let mut subject = Subject::new(backend);
    let report = verify::run_to_first_failure(&mut subject, &cases);
    let failure = report.failures.first().expect("the broken shader fails");
    match &failure.outcome {
        Outcome::Mismatch(mismatch) => mismatch.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_example_verifies_and_is_timed_beside_wgpu() {
    let output = bench(&[
        "--implementation",
        "wgpu",
        "--shader",
        EXAMPLE,
        "--num-tokens",
        "16,64",
        "--num-heads",
        "4",
        "--min-time",
        "0.01",
        "--max-time",
        "0.05",
        "--iters",
        "3",
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = report["implementations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["wgpu", "copy"]);
    let kernel = &report["config"]["user_kernels"][0];
    assert_eq!(kernel["name"], "copy");
    assert_eq!(kernel["language"], "wgsl");
    assert_eq!(kernel["source_hash"].as_str().unwrap().len(), 16);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "two token counts, two layouts");
    for row in rows {
        let copy = &row["results"][1];
        assert_eq!(copy["implementation"], "copy");
        // The example declares both layouts: HND rows are timed too (wgpu's are n/a).
        assert!(copy["device_us"]["median"].as_f64().unwrap() > 0.0, "{row}");
    }
}

#[test]
fn the_example_passes_verify_and_fp8_is_not_applicable() {
    let output = bench(&[
        "verify",
        "--implementation",
        "none",
        "--shader",
        &format!("mine={EXAMPLE}"),
        "--quick",
        "--seed",
        "3",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", stderr(&output));
    assert!(stdout.contains("verify: 108 passed, 0 failed"), "{stdout}");
    assert!(
        stdout.contains("n/a (fp8 caches not implemented)"),
        "{stdout}"
    );
}

#[test]
fn a_wrong_head_is_named() {
    let dir = scratch("head");
    let path = variant(
        &dir,
        "wrong_head.wgsl",
        &[(
            "pkv_cache_index(u32(slot), head, element)",
            "pkv_cache_index(u32(slot), select(select(head, 1u, head == 2u), 2u, head == 1u), element)",
        )],
    );
    let mismatch = first_mismatch(&path);
    assert_eq!(
        (mismatch.cache, mismatch.head, mismatch.element),
        ("key", 1, 0),
        "{mismatch}"
    );
    assert_eq!(mismatch.token, Some(0), "{mismatch}");
}

#[test]
fn a_write_past_the_row_is_named() {
    let dir = scratch("past");
    let path = variant(
        &dir,
        "past_the_row.wgsl",
        &[(
            "for (var w = 0u; w < words; w++)",
            "let last = head == params.num_heads - 1u && element + elements == params.head_size;\n    \
             for (var w = 0u; w < words + select(0u, 1u, last); w++)",
        )],
    );
    let mismatch = first_mismatch(&path);
    // The word after a token's row is element 0 of the next slot's first head, which no
    // token owns.
    assert_eq!(
        (
            mismatch.cache,
            mismatch.head,
            mismatch.element,
            mismatch.token
        ),
        ("key", 0, 0, None),
        "{mismatch}"
    );
}

#[test]
fn a_padding_token_written_is_named() {
    let dir = scratch("padding");
    let path = variant(
        &dir,
        "padding.wgsl",
        &[
            ("if slot < 0 {", "if slot < -1 {"),
            (
                "pkv_cache_index(u32(slot), head, element)",
                "pkv_cache_index(u32(max(slot, 0)), head, element)",
            ),
        ],
    );
    let mismatch = first_mismatch(&path);
    // Padding tokens land in slot 0.
    assert_eq!((mismatch.block, mismatch.offset), (0, 0), "{mismatch}");
}

#[test]
fn a_failing_shader_is_not_timed_and_the_failure_is_replayable() {
    let dir = scratch("bench");
    let path = variant(
        &dir,
        "broken.wgsl",
        &[(
            "key_cache[cache + w] = key[input + w];",
            "key_cache[cache + w] = key[input + w] ^ 1u;",
        )],
    );
    let output = bench(&[
        "--shader",
        path.to_str().unwrap(),
        "--implementation",
        "cpu",
        "--num-tokens",
        "16",
        "--seed",
        "5",
    ]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("broken failed verification, so nothing was timed"),
        "{error}"
    );
    assert!(error.contains("key cache block"), "{error}");
    assert!(error.contains("element 0 (token"), "{error}");
    assert!(
        error.contains(&format!(
            "paged-kv-bench verify --implementation none --shader {} --seed 5 --quick",
            path.display()
        )),
        "{error}"
    );
    assert_eq!(error.trim().lines().count(), 1, "{error}");
    // Nothing was measured: no table on stdout.
    assert!(!String::from_utf8_lossy(&output.stdout).contains("num_tokens"));
}

#[test]
fn a_syntax_error_names_file_and_line() {
    let dir = scratch("syntax");
    let path = variant(
        &dir,
        "syntax.wgsl",
        &[("let row = thread / chunks;", "let row = thread / ;")],
    );
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .position(|l| l.contains("thread / ;"))
        .unwrap()
        + 1;
    let output = bench(&[
        "verify",
        "--implementation",
        "none",
        "--shader",
        path.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains(&format!("{}:{line}:", path.display())),
        "{error}"
    );
    assert!(error.contains("let row = thread / ;"), "{error}");
    assert!(error.lines().count() <= 6, "one short block: {error}");
}

#[test]
fn bad_files_and_names_are_one_line() {
    let dir = scratch("bad");
    let one_line = |args: &[&str], expected: &str| {
        let output = bench(args);
        assert!(!output.status.success(), "{args:?}");
        let error = stderr(&output);
        assert!(error.contains(expected), "{args:?}: {error}");
        assert_eq!(error.trim().lines().count(), 1, "{error}");
    };
    let missing = dir.join("absent.wgsl");
    one_line(&["--shader", missing.to_str().unwrap()], "absent.wgsl");
    let no_entry = variant(
        &dir,
        "no_entry.wgsl",
        &[("caches=auto", "caches=auto entry=store")],
    );
    one_line(
        &[
            "--shader",
            no_entry.to_str().unwrap(),
            "--implementation",
            "none",
        ],
        "has no compute entry point `store`",
    );
    one_line(
        &["--shader", EXAMPLE, "--shader", EXAMPLE],
        "are both named \"copy\"",
    );
    one_line(
        &["--shader", &format!("wgpu={EXAMPLE}")],
        "names a built-in implementation",
    );
    one_line(&["--implementation", "none"], "give --kernel or --shader");
}

#[test]
fn calls_a_shader_does_not_declare_are_not_applicable() {
    let output = bench(&[
        "--implementation",
        "none",
        "--shader",
        EXAMPLE,
        "--kv-cache-dtype",
        "fp8",
        "--num-tokens",
        "16",
        "--layouts",
        "NHD",
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let result = &report["rows"][0]["results"][0];
    assert_eq!(result["implementation"], "copy");
    assert!(result["device_us"].is_null(), "{result}");
}

/// The bounded wait: with a timeout far below any dispatch's time (lavapipe runs no dispatch in
/// a microsecond), the first call of the verification ends the run with one line that names the
/// timeout, nothing timed, and the command that replays it. (A shader that really hangs could
/// not be made on lavapipe: its loops finish within a second.)
#[test]
fn a_call_past_the_timeout_is_one_line_and_nothing_is_timed() {
    let output = bench(&[
        "--shader",
        EXAMPLE,
        "--implementation",
        "none",
        "--num-tokens",
        "16",
        "--kernel-timeout",
        "0.000001",
    ]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("did not finish within 0.000001 s: a hang or an endless loop"),
        "{error}"
    );
    assert!(error.contains("nothing was timed"), "{error}");
    assert!(
        error.contains("replay with: paged-kv-bench verify"),
        "{error}"
    );
    assert!(
        error.trim_end().ends_with("--kernel-timeout 0.000001"),
        "{error}"
    );
    assert_eq!(error.trim().lines().count(), 1, "{error}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("num_tokens"));
}
