//! The example CUDA kernel (`examples/kernels/copy.cu`), the cases it is checked on, and broken
//! copies of it generated from its text, each with where verification must say it went wrong.
//! Shared by tests/cuda_user_host.rs (the kernel run on the host) and tests/cuda_user.rs (on a
//! GPU).

use paged_kv_bench::problem::{CacheDtype, Dtype, Layout, Problem};
use paged_kv_bench::verify::{Case, Mismatch};
use paged_kv_bench::workload::{Scaling, SlotPattern};

use super::problem;

pub const EXAMPLE_PATH: &str = "examples/kernels/copy.cu";
pub const EXAMPLE_ENTRY: &str = "copy_kv";

/// The example's path: in the source tree the tests were built from, else (a test binary
/// carried to a GPU machine) relative to the working directory.
pub fn example_path() -> std::path::PathBuf {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE_PATH);
    if built.exists() {
        built
    } else {
        EXAMPLE_PATH.into()
    }
}

pub fn example_source() -> String {
    std::fs::read_to_string(example_path()).expect("the example kernel")
}

/// `source` with `from` (which must occur exactly once) replaced by `to`.
pub fn edit(source: &str, from: &str, to: &str) -> String {
    assert_eq!(
        source.matches(from).count(),
        1,
        "the example changed: {from:?} should occur once in {EXAMPLE_PATH}"
    );
    source.replace(from, to)
}

/// The 1-based line of `text` in `source`.
pub fn line_of(source: &str, text: &str) -> usize {
    source
        .lines()
        .position(|line| line.contains(text))
        .expect("the line")
        + 1
}

/// Every layout, input dtype and cache dtype, per-tensor and per-head fp8 scales, padding,
/// special values (NaN, infinities, huge and tiny values), fused QKV inputs, an odd head size.
pub fn example_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 100;
    for layout in [Layout::Nhd, Layout::Hnd] {
        for dtype in [Dtype::Half, Dtype::BFloat16, Dtype::Float] {
            for (cache_dtype, scaling) in [
                (CacheDtype::Auto, Scaling::PerTensor),
                (CacheDtype::Fp8, Scaling::PerTensor),
                (CacheDtype::Fp8, Scaling::PerHead),
                (CacheDtype::Fp8E5m2, Scaling::PerTensor),
                (CacheDtype::Fp8E5m2, Scaling::PerHead),
            ] {
                seed += 1;
                let fused = seed % 3 == 0;
                let builder = problem()
                    .tokens(37)
                    .heads(4)
                    .head_size(if cache_dtype == CacheDtype::Auto {
                        72
                    } else {
                        64
                    })
                    .dtype(dtype)
                    .cache_dtype(cache_dtype)
                    .layout(layout);
                let builder = if fused { builder.qkv_fused(8) } else { builder };
                cases.push(Case {
                    problem: builder.build(),
                    padding_fraction: 0.2,
                    special_values: true,
                    seed,
                    qkv_fused: fused.then_some(8),
                    scaling,
                    slots: SlotPattern::Random,
                });
            }
        }
    }
    cases
}

/// A broken copy of the example: its name, the edit that breaks it, and a check of the first
/// mismatch verification reports (`Err` says what is wrong with it).
pub struct Broken {
    pub name: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub located: fn(&Problem, &[i64], &Mismatch) -> Result<(), String>,
}

impl Broken {
    pub fn source(&self) -> String {
        edit(&example_source(), self.from, self.to)
    }
}

fn expect(ok: bool, what: &str, mismatch: &Mismatch) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected {what}, verification said: {mismatch}"))
    }
}

pub fn broken_copies() -> Vec<Broken> {
    vec![
        Broken {
            // Each head written into the next head's row: head 0 holds the last head's data.
            name: "wrong_head",
            from: "pkv_cache_index(p, slot, head) + element",
            to: "pkv_cache_index(p, slot, (head + 1) % p.num_heads) + element",
            located: |_, _, m| {
                expect(
                    m.cache == "key" && m.head == 0 && m.token.is_some(),
                    "head 0 of a written slot of the key cache",
                    m,
                )
            },
        },
        Broken {
            // Every element one place late: element 0 of the first written row keeps the
            // poison, and each row's last element lands past the row.
            name: "past_the_row",
            from: "pkv_cache_index(p, slot, head) + element",
            to: "pkv_cache_index(p, slot, head) + element + 1",
            located: |_, _, m| {
                expect(
                    m.cache == "key" && m.head == 0 && m.element < 4 && m.token.is_some(),
                    "the start of head 0's row in a written slot of the key cache",
                    m,
                )
            },
        },
        Broken {
            // Padding (-1) taken as an index from the end, as Python would: the last slot.
            name: "padding_written",
            from: "const pkv_i64 slot = p.slot_mapping[token];\n    if (slot < 0 || slot >= p.num_slots) return;",
            to: "const pkv_i64 slot = (p.slot_mapping[token] + p.num_slots) % p.num_slots;",
            located: |problem, _, m| {
                let last_block = problem.num_blocks as u64 - 1;
                let last_offset = problem.block_size as u64 - 1;
                expect(
                    m.block == last_block && m.offset == last_offset && m.token.is_none(),
                    "the last slot, which no token targets",
                    m,
                )
            },
        },
    ]
}

/// Cases for the broken copies: NHD bfloat16 and HND fp8, with padding, and (for the padding
/// check) a slot mapping that leaves the cache's last slot untouched.
pub fn broken_cases() -> Vec<Case> {
    let problems = [
        problem().tokens(40).heads(4).head_size(64).build(),
        problem()
            .tokens(40)
            .heads(4)
            .head_size(64)
            .fp8()
            .hnd()
            .build(),
    ];
    problems
        .into_iter()
        .map(|problem| {
            (1..)
                .map(|seed| Case {
                    padding_fraction: 0.25,
                    ..Case::plain(problem, seed)
                })
                .find(|case| {
                    let data = paged_kv_bench::verify::CaseData::new(case).unwrap();
                    let last = problem.num_slots() as i64 - 1;
                    data.host.slot_mapping.contains(&-1) && !data.host.slot_mapping.contains(&last)
                })
                .unwrap()
        })
        .collect()
}
