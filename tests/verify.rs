//! The verifier itself: a backend that gets one element wrong, writes where no token points, or
//! drops a token must fail verification with a mismatch that names the place; special values
//! follow the reference; and `paged-kv-bench verify` prints its seed and matrix and fails loudly.

mod common;

use std::process::{Command, Output};

use common::faulty::{Cache, Fault, Faulty};
use common::problem;
use paged_kv_bench::backend::cpu::CpuBackend;
use paged_kv_bench::backend::Backend;
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout, Problem};
use paged_kv_bench::verify::{self, Case, CaseData, Coverage, Mismatch, Outcome, Subject};
use paged_kv_bench::workload::{Scaling, SlotPattern};

fn case(layout: Layout, dtype: Dtype, cache_dtype: CacheDtype, seed: u64) -> Case {
    Case {
        problem: problem()
            .tokens(9)
            .heads(3)
            .head_size(32)
            .block_size(4)
            .blocks(6)
            .dtype(dtype)
            .cache_dtype(cache_dtype)
            .layout(layout)
            .build(),
        padding_fraction: 0.2,
        special_values: false,
        seed,
        qkv_fused: None,
        scaling: Scaling::PerTensor,
        slots: SlotPattern::Random,
    }
}

/// Every layout x dtype x cache dtype, each with its own seed.
fn all_kinds() -> Vec<Case> {
    let mut cases = Vec::new();
    for layout in [Layout::Nhd, Layout::Hnd] {
        for dtype in [Dtype::Half, Dtype::BFloat16, Dtype::Float] {
            for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8] {
                cases.push(case(layout, dtype, cache_dtype, 100 + cases.len() as u64));
            }
        }
    }
    cases
}

/// The slot mapping `check` will draw for `case` (inputs are a function of the case alone).
fn slots_of(case: &Case) -> Vec<i64> {
    CaseData::new(case).expect("a valid case").host.slot_mapping
}

/// The CPU backend with `fault` injected into every call.
fn faulty_cpu(fault: Fault) -> Faulty {
    Faulty::new(Box::new(CpuBackend::new()), fault)
}

fn mismatch_of(backend: &mut dyn Backend, case: &Case) -> Mismatch {
    match verify::check(backend, case) {
        Ok(Some(mismatch)) => mismatch,
        Ok(None) => panic!("the fault went unnoticed: {case}"),
        Err(error) => panic!("{case}: {error}"),
    }
}

#[test]
fn a_flipped_element_is_found_and_named() {
    for case in all_kinds() {
        let p = case.problem;
        let slots = slots_of(&case);
        // The last token that is not padding, so that the listing cannot point at token 0 by
        // accident.
        let token = slots
            .iter()
            .rposition(|&s| s >= 0)
            .expect("a written token");
        let slot = slots[token] as u64;
        let mut backend = faulty_cpu(Fault::FlipWritten {
            cache: Cache::Value,
            token,
            head: 2,
            element: 17,
        });
        let found = mismatch_of(&mut backend, &case);
        assert_eq!(
            (
                found.cache,
                found.block,
                found.offset,
                found.head,
                found.element
            ),
            ("value", slot / 4, slot % 4, 2, 17),
            "{case}: {found}"
        );
        assert_eq!(found.token, Some(token), "{case}: {found}");
        assert_eq!(found.count, 1, "{case}: {found}");
        assert_ne!(found.expected, found.got);
        let text = found.to_string();
        assert!(
            text.starts_with(&format!(
                "value cache block {} offset {} head 2 element 17 (token {token}): expected ",
                slot / 4,
                slot % 4
            )),
            "{text}"
        );
        // The report shows the element's bits in the cache's own width.
        let digits = 2 * p.cache_element_size();
        assert!(
            found.expected.starts_with("0x") && found.expected.as_bytes()[2 + digits] == b' ',
            "{}",
            found.expected
        );
    }
}

#[test]
fn a_stray_write_into_an_untouched_slot_is_found() {
    for case in all_kinds() {
        let slots = slots_of(&case);
        let num_slots = case.problem.num_slots();
        let free = (0..num_slots)
            .rev()
            .find(|s| !slots.contains(&(*s as i64)))
            .expect("the cache has more slots than tokens");
        let mut backend = faulty_cpu(Fault::FlipUntouched {
            cache: Cache::Key,
            slot: free,
            head: 1,
            element: 31,
        });
        let found = mismatch_of(&mut backend, &case);
        assert_eq!(
            (
                found.cache,
                found.block,
                found.offset,
                found.head,
                found.element,
                found.token,
                found.count
            ),
            ("key", free / 4, free % 4, 1, 31, None, 1),
            "{case}: {found}"
        );
        assert!(found.to_string().contains("(a slot no token targets)"));
    }
}

#[test]
fn a_dropped_token_is_found() {
    for case in all_kinds() {
        let p = case.problem;
        let data = CaseData::new(&case).expect("a valid case");
        let token = data
            .host
            .slot_mapping
            .iter()
            .position(|&s| s >= 0)
            .expect("a written token");
        let slot = data.host.slot_mapping[token] as u64;
        // What a dropped token leaves: its slot keeps the poison wherever the reference would
        // have written something else. Located here independently of `compare`.
        let size = p.cache_element_size();
        let mut differing = Vec::new();
        for head in 0..p.num_heads {
            for element in 0..p.head_size {
                let at = (p.cache_offset(slot, head) as usize + element) * size;
                if data.expected.key[at..at + size] != data.initial.key[at..at + size] {
                    differing.push((at, head as u64, element as u64));
                }
            }
        }
        differing.sort();
        let (_, head, element) = differing[0];

        let mut backend = faulty_cpu(Fault::DropToken { token });
        let found = mismatch_of(&mut backend, &case);
        assert_eq!(
            (
                found.cache,
                found.block,
                found.offset,
                found.head,
                found.element,
                found.token,
                found.count
            ),
            (
                "key",
                slot / 4,
                slot % 4,
                head,
                element,
                Some(token),
                differing.len() as u64
            ),
            "{case}: {found}"
        );
        // The poison is what came back.
        let at = differing[0].0 / size;
        assert!(found
            .got
            .contains(&format!("{:02x}", data.initial.key[at * size + size - 1])));
    }
}

#[test]
fn a_correct_backend_passes_and_a_faulty_one_fails_every_case() {
    let cases = verify::matrix(Coverage::Quick, 3);
    let mut subjects = vec![
        Subject::new(Box::new(CpuBackend::new())),
        Subject {
            label: "faulty".into(),
            backend: Box::new(
                faulty_cpu(Fault::FlipUntouched {
                    cache: Cache::Value,
                    slot: 0,
                    head: 0,
                    element: 0,
                })
                .only(&[Layout::Nhd]),
            ),
            min_cache_bytes: 0,
        },
    ];
    let mut progress = Vec::new();
    let report = verify::run(&mut subjects, &cases, |label, _| {
        progress.push(label.to_string())
    });
    let nhd = cases
        .iter()
        .filter(|c| c.problem.layout == Layout::Nhd)
        .count();
    assert_eq!(progress.len(), cases.len() + nhd);
    assert_eq!(verify::count_checks(&subjects, &cases), progress.len());
    assert_eq!(report.checked(), cases.len() + nhd);
    // Slot 0 is either untouched (a stray write) or some token's (a wrong value): every NHD
    // case fails.
    assert_eq!(report.failed(), nhd);
    assert_eq!(
        report.summary(),
        format!("verify: {} passed, {nhd} failed", cases.len())
    );
    assert!(report
        .failures
        .iter()
        .all(|f| f.label == "faulty" && matches!(f.outcome, Outcome::Mismatch(_))));

    let lines = report.failure_lines(10);
    assert_eq!(lines.len(), 11);
    assert_eq!(lines[10], format!("... and {} more", nhd - 10));
    assert!(
        lines[0].starts_with("faulty num_tokens=")
            && lines[0].contains("value cache block 0 offset 0 head 0 element 0"),
        "{}",
        lines[0]
    );

    let table = report.table().render_text();
    let row = |label: &str, layout: &str| -> Vec<String> {
        table
            .lines()
            .filter(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.first() == Some(&label) && cells.get(1) == Some(&layout)
            })
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("cpu", "NHD").len(), 9, "{table}");
    assert!(
        row("cpu", "HND")
            .iter()
            .all(|l| l.contains("passed 18/18") || l.contains("passed 12/12")),
        "{table}"
    );
    assert!(
        row("faulty", "NHD").iter().all(|l| l.contains("FAILED")),
        "{table}"
    );
    let hnd = row("faulty", "HND");
    assert_eq!(hnd.len(), 9, "{table}");
    assert!(hnd.iter().all(|l| l.contains("n/a")), "{table}");
}

#[test]
fn fp8_keeps_nan_with_its_sign_and_saturates_infinities() {
    let mut seen = [0usize; 4];
    for layout in [Layout::Nhd, Layout::Hnd] {
        for dtype in [Dtype::Half, Dtype::BFloat16, Dtype::Float] {
            let case = Case {
                special_values: true,
                ..case(layout, dtype, CacheDtype::Fp8, 7)
            };
            let p = case.problem;
            let data = CaseData::new(&case).expect("a valid case");
            for (token, &slot) in data.host.slot_mapping.iter().enumerate() {
                if slot < 0 {
                    continue;
                }
                for head in 0..p.num_heads {
                    for element in 0..p.head_size {
                        let x = dtype.read_f32(&data.host.key, (token * 3 + head) * 32 + element);
                        let byte = data.key_cache_byte(&p, slot as u64, head, element);
                        if x.is_nan() {
                            assert_eq!(byte & 0x7f, 0x7f, "NaN must stay NaN, got {byte:#04x}");
                            assert_eq!(byte & 0x80 != 0, x.is_sign_negative(), "{byte:#04x}");
                            seen[usize::from(x.is_sign_negative())] += 1;
                        } else if x == f32::INFINITY {
                            assert_eq!(byte, 0x7e);
                            seen[2] += 1;
                        } else if x == f32::NEG_INFINITY {
                            assert_eq!(byte, 0xfe);
                            seen[3] += 1;
                        }
                    }
                }
            }
            // The CPU backend agrees bit for bit.
            assert_eq!(
                verify::check(&mut CpuBackend::new(), &case).expect("runs"),
                None
            );
        }
    }
    assert!(
        seen.iter().all(|&n| n > 0),
        "NaN, -NaN, +Inf, -Inf: {seen:?}"
    );
}

#[test]
fn auto_cache_copies_nan_and_infinities_bit_for_bit() {
    for dtype in [Dtype::Half, Dtype::BFloat16, Dtype::Float] {
        let case = Case {
            special_values: true,
            ..case(Layout::Hnd, dtype, CacheDtype::Auto, 8)
        };
        let p = case.problem;
        let data = CaseData::new(&case).expect("a valid case");
        let size = dtype.size();
        let mut specials = 0;
        for (token, &slot) in data.host.slot_mapping.iter().enumerate() {
            if slot < 0 {
                continue;
            }
            for head in 0..p.num_heads {
                for element in 0..p.head_size {
                    let index = (token * 3 + head) * 32 + element;
                    let input = &data.host.value[index * size..(index + 1) * size];
                    let at = (p.cache_offset(slot as u64, head) as usize + element) * size;
                    assert_eq!(&data.expected.value[at..at + size], input);
                    specials += usize::from(!dtype.read_f32(&data.host.value, index).is_finite());
                }
            }
        }
        assert!(specials > 0, "{dtype:?}: no NaN or infinity drawn");
        assert_eq!(
            verify::check(&mut CpuBackend::new(), &case).expect("runs"),
            None
        );
    }
}

trait CacheByte {
    fn key_cache_byte(&self, problem: &Problem, slot: u64, head: usize, element: usize) -> u8;
}

impl CacheByte for CaseData {
    /// An fp8 key cache byte, addressed independently of the reference's own offset code.
    fn key_cache_byte(&self, p: &Problem, slot: u64, head: usize, element: usize) -> u8 {
        let (block, offset) = (slot as usize / p.block_size, slot as usize % p.block_size);
        let (h, b, d) = (p.num_heads, p.block_size, p.head_size);
        let index = match p.layout {
            Layout::Nhd => ((block * b + offset) * h + head) * d + element,
            Layout::Hnd => ((block * h + head) * b + offset) * d + element,
        };
        self.expected.key[index]
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paged-kv-bench"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn cli_quick_cpu_passes_and_prints_seed_and_matrix() {
    let output = run(&["verify", "--implementation", "cpu", "--quick"]);
    let (out, err) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{out}\n{err}");
    assert!(err.is_empty(), "{err}");
    let first = out.lines().next().expect("output");
    let seed: u64 = first
        .strip_prefix("seed ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seed in {first:?}"));
    assert_eq!(
        first,
        format!("seed {seed} (replay with --seed {seed} --quick)")
    );
    assert!(
        out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == [
                "cpu",
                "NHD",
                "bfloat16",
                "fp8",
                "passed",
                "12/12",
                "1,17,1000",
                "64,128",
                "16,32",
                "random,decode,prefill,mixed",
                "contiguous,fused",
                "per-tensor,per-head"
            ]),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == [
                "cpu",
                "HND",
                "half",
                "auto",
                "passed",
                "18/18",
                "1,17,1000",
                "64,120,128",
                "16,32",
                "random,decode,prefill,mixed",
                "contiguous,fused",
                "-"
            ]),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("cpu ")).count(),
        18,
        "{out}"
    );
    assert_eq!(
        out.lines().last(),
        Some("verify: 252 passed, 0 failed"),
        "{out}"
    );

    // The printed seed replays the run: same output.
    let again = run(&[
        "verify",
        "--implementation",
        "cpu",
        "--quick",
        "--seed",
        &seed.to_string(),
    ]);
    assert!(again.status.success());
    assert_eq!(text(&again.stdout), out);
}

#[test]
fn cli_verify_bad_flags_are_one_line_errors() {
    for (args, needle) in [
        (
            &["verify", "--implementation", "triton"][..],
            "--implementation",
        ),
        (&["verify", "--seed", "-1"][..], "--seed"),
        (&["verify", "--seed", "x"][..], "--seed"),
        (&["verify", "--quick=yes"][..], "--quick"),
        (&["verify", "--num-heads", "8"][..], "--num-heads"),
        (&["verify", "extra"][..], "extra"),
        (&["verfiy"][..], "a similar subcommand exists: 'verify'"),
    ] {
        let output = run(args);
        let err = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(output.stdout.is_empty(), "{args:?}");
        // Not the usage block, which names the program and its subcommands.
        assert!(
            !err.contains("Usage") && !err.contains("<COMMAND>"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn fp8_float_inputs_tell_division_from_multiplying_by_a_reciprocal() {
    // A shader or kernel that computes x * (1 / scale) instead of x / scale differs only where
    // the quotient sits at a rounding tie of the cache's format; the matrix's fp8 float cases
    // (e4m3 and e5m2, per-tensor and per-head scales) must contain such inputs, or
    // verification could not catch it.
    for cache_dtype in [CacheDtype::Fp8, CacheDtype::Fp8E5m2] {
        let format = cache_dtype.fp8().unwrap();
        let cases: Vec<Case> = verify::matrix(Coverage::Quick, 11)
            .into_iter()
            .filter(|c| c.problem.dtype == Dtype::Float && c.problem.cache_dtype == cache_dtype)
            .collect();
        assert!(!cases.is_empty());
        let mut told_apart = 0;
        for case in &cases {
            let p = case.problem;
            let data = CaseData::new(case).expect("a valid case");
            let scale = data.inputs().k_scale;
            for token in 0..p.num_tokens {
                for head in 0..p.num_heads {
                    let divisor = scale.of_head(head);
                    let first = p.input_offset(token, head) as usize;
                    told_apart += (first..first + p.head_size)
                        .map(|i| Dtype::Float.read_f32(&data.host.key, i))
                        .filter(|&x| {
                            format.quantize(x, divisor) != format.encode(x * (1.0 / divisor))
                        })
                        .count();
                }
            }
        }
        // Thousands in practice; one per case is the floor.
        assert!(
            told_apart >= cases.len(),
            "{cache_dtype}: only {told_apart} elements differ"
        );
    }
}
