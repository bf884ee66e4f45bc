//! The serving-workload flags (`--qkv-fused`, `--scale`, `--slots`, `--model`,
//! `--list-models`, `--kv-cache-dtype fp8_e5m2`) from the command line: runs that work say what
//! ran, every bad input is one line and a non-zero exit; and verify's matrix samples every
//! workload axis in every row.

use std::collections::BTreeSet;
use std::process::{Command, Output};

use paged_kv_bench::problem::CacheDtype;
use paged_kv_bench::verify::{self, Coverage};
use paged_kv_bench::workload::{Scaling, SlotPattern};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paged-kv-bench"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A small, fast CPU run.
const SMALL: [&str; 12] = [
    "--implementation",
    "cpu",
    "--num-tokens",
    "2,40",
    "--iters",
    "2",
    "--min-time",
    "0",
    "--max-time",
    "0.02",
    "--layouts",
    "NHD",
];

#[test]
fn bad_workload_flags_are_one_line_errors() {
    let small = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut args = SMALL.to_vec();
        args.extend_from_slice(extra);
        args
    };
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--model", "gpt-5"], 2, "possible values: llama-3.2-1b"),
        (
            vec!["--qkv-fused", "0"],
            2,
            "query heads (1 or more) or off",
        ),
        (
            vec!["--qkv-fused", "-3"],
            2,
            "query heads (1 or more) or off",
        ),
        (vec!["--qkv-fused", "many"], 2, "--qkv-fused"),
        (vec!["--qkv-fused"], 2, "a value is required"),
        (vec!["--scale", "per-channel"], 2, "per-tensor, per-head"),
        (
            vec!["--slots", "zigzag"],
            2,
            "random, decode, prefill, mixed",
        ),
        (vec!["--kv-cache-dtype", "fp8_e3m4"], 2, "fp8_e5m2"),
        (
            small(&["--scale", "per-head"]),
            1,
            "--scale per-head needs an fp8 cache",
        ),
        (
            small(&["--slots", "decode", "--num-blocks", "16"]),
            1,
            "--slots decode with 40 tokens needs up to 40 cache blocks",
        ),
        (
            small(&["--kv-cache-dtype", "fp8_e5m2", "--head-size", "120"]),
            1,
            "multiple of 16",
        ),
    ];
    for (args, code, needle) in cases {
        let output = run(&args);
        let err = text(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn list_models_prints_every_preset() {
    let output = run(&["--list-models"]);
    assert!(output.status.success());
    let out = text(&output.stdout);
    for model in paged_kv_bench::models::MODELS {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(model.name))
            .unwrap_or_else(|| panic!("{} missing:\n{out}", model.name));
        assert!(line.contains(model.source), "{line}");
    }
}

#[test]
fn a_model_run_says_what_ran_and_records_it() {
    let mut args = SMALL.to_vec();
    args.extend([
        "--model",
        "llama-3.1-70b-tp8",
        "--kv-cache-dtype",
        "fp8_e5m2",
        "--scale",
        "per-head",
        "--slots",
        "mixed",
        "--num-blocks",
        "64",
        "--format",
        "json",
    ]);
    let output = run(&args);
    let (out, err) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("a JSON report");
    let config = &report["config"];
    assert_eq!(config["num_heads"], 1);
    assert_eq!(config["head_size"], 128);
    assert_eq!(config["kv_cache_dtype"], "fp8_e5m2");
    let workload = &config["workload"];
    assert_eq!(workload["qkv_fused"], 8);
    assert_eq!(workload["scale"], "per-head");
    assert_eq!(workload["slots"], "mixed");
    assert_eq!(workload["model"], "llama-3.1-70b-tp8");
    // Bytes moved count the keys and values read, not the query part of the fused rows:
    // 2 tokens x 2 x 128 x (2 + 1) + 8 x 2.
    assert_eq!(report["rows"][0]["bytes_moved"], 2 * 2 * 128 * 3 + 16);

    // The table's header says it too.
    let table = run(&args[..args.len() - 2]);
    let out = text(&table.stdout);
    assert!(
        out.lines().any(|line| line
            == "workload: model=llama-3.1-70b-tp8 qkv_fused=8 scale=per-head slots=mixed"),
        "{out}"
    );
}

#[test]
fn fp8_e4m3_is_an_alias_of_fp8() {
    let mut args = SMALL.to_vec();
    args.extend(["--kv-cache-dtype", "fp8_e4m3"]);
    let output = run(&args);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("kv_cache_dtype=fp8 "));
}

/// Every row of the quick and full matrices sees every slot pattern, contiguous and fused
/// inputs, and (fp8) both kinds of scale; and the quick matrix stays about as small as it was.
#[test]
fn the_matrix_samples_every_workload_axis_in_every_row() {
    for coverage in [Coverage::Quick, Coverage::Full] {
        let cases = verify::matrix(coverage, 5);
        let mut rows = std::collections::BTreeMap::new();
        for case in &cases {
            let p = case.problem;
            let key = (p.layout.name(), p.dtype.name(), p.cache_dtype.name());
            let row = rows.entry(key).or_insert_with(|| {
                (
                    BTreeSet::new(),
                    BTreeSet::new(),
                    BTreeSet::new(),
                    p.cache_dtype,
                )
            });
            row.0.insert(case.slots.name());
            row.1.insert(case.qkv_fused.is_some());
            row.2.insert(case.scaling.name());
            assert_eq!(case.qkv_fused.is_some(), !p.contiguous_inputs(), "{case}");
            if !p.cache_dtype.is_fp8() {
                assert_eq!(case.scaling, Scaling::PerTensor, "{case}");
            }
            case.slots
                .check_fits(p.num_tokens, p.block_size, p.num_blocks)
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            // Every case draws its data without error.
            if coverage == Coverage::Quick {
                verify::CaseData::new(case).unwrap_or_else(|e| panic!("{case}: {e}"));
            }
        }
        assert_eq!(rows.len(), 2 * 3 * 3);
        for ((layout, dtype, cache), (slots, fused, scales, cache_dtype)) in rows {
            let what = format!("{coverage:?} {layout} {dtype} {cache}");
            assert_eq!(slots.len(), SlotPattern::ALL.len(), "{what}: {slots:?}");
            assert_eq!(fused.len(), 2, "{what}");
            let kinds = if cache_dtype == CacheDtype::Auto {
                1
            } else {
                2
            };
            assert_eq!(scales.len(), kinds, "{what}: {scales:?}");
        }
        if coverage == Coverage::Quick {
            assert_eq!(cases.len(), 252);
        }
    }
}
