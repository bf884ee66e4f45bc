//! One correctness suite, run against every backend this build has: each backend's caches must
//! equal the CPU reference's byte for byte, starting from poisoned caches, over the whole
//! verification matrix. GPU suites are ignored where they need hardware CI does not have.

mod common;

use std::time::Duration;

use common::problem;
use paged_kv_bench::backend::{self, Backend, Kind};
use paged_kv_bench::options::Options;
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout};
use paged_kv_bench::timing::{self, Protocol};
use paged_kv_bench::verify::{self, Case, Coverage};
use paged_kv_bench::workload::{self, CacheFill, Caches, Inputs, Scaling, SlotPattern};
use paged_kv_bench::{pattern, reference};

/// Checks every case the backend supports and fails with the list of mismatches. Cases the
/// backend refuses up front (`check_support`: a cache dtype, strides or scales it does not
/// implement) are counted and named on stderr, not checked.
fn check_cases(backend: &mut dyn Backend, cases: &[Case]) {
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut refused = std::collections::BTreeSet::new();
    for case in cases {
        if !backend.supports(case.problem.layout) {
            continue;
        }
        let scaling = if case.problem.cache_dtype.is_fp8() {
            case.scaling
        } else {
            Scaling::PerTensor
        };
        if let Err(error) = backend.check_support(&case.problem, scaling) {
            refused.insert(error.one_line());
            continue;
        }
        checked += 1;
        match verify::check(backend, case) {
            Ok(None) => {}
            Ok(Some(mismatch)) => failures.push(format!("{}: {mismatch}", case.problem.describe())),
            Err(error) => failures.push(format!(
                "{}: error: {}",
                case.problem.describe(),
                error.one_line()
            )),
        }
    }
    for reason in &refused {
        eprintln!("not checked: {reason}");
    }
    assert!(checked > 0 || !refused.is_empty(), "no case was checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A case with the benchmark's default head count and shape, at a token count of `num_tokens`.
fn default_shape(layout: Layout, dtype: Dtype, cache_dtype: CacheDtype, num_tokens: usize) -> Case {
    Case {
        problem: problem()
            .tokens(num_tokens)
            .heads(128)
            .blocks(512)
            .dtype(dtype)
            .cache_dtype(cache_dtype)
            .layout(layout)
            .build(),
        padding_fraction: 0.05,
        special_values: false,
        seed: 42,
        qkv_fused: None,
        scaling: Scaling::PerTensor,
        slots: SlotPattern::Random,
    }
}

/// Every model preset as the benchmark runs it (fused QKV inputs, the model's heads and head
/// size), each slot pattern in turn, every cache dtype (per-head scales for every other fp8
/// case), both layouts, 512 tokens with some padding.
fn serving_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, model) in paged_kv_bench::models::MODELS.iter().enumerate() {
        for layout in [Layout::Nhd, Layout::Hnd] {
            for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8, CacheDtype::Fp8E5m2] {
                let index = cases.len();
                let slots = SlotPattern::ALL[(i + index) % 4];
                let num_tokens = 512;
                let num_blocks = slots.blocks_needed(num_tokens, 16) as usize * 2 + 1;
                cases.push(Case {
                    problem: problem()
                        .tokens(num_tokens)
                        .heads(model.num_kv_heads)
                        .head_size(model.head_size)
                        .blocks(num_blocks)
                        .dtype(model.dtype)
                        .cache_dtype(cache_dtype)
                        .layout(layout)
                        .qkv_fused(model.num_query_heads)
                        .build(),
                    padding_fraction: 0.05,
                    special_values: index % 3 == 0,
                    seed: 77 + index as u64,
                    qkv_fused: Some(model.num_query_heads),
                    scaling: if index % 2 == 0 {
                        Scaling::PerHead
                    } else {
                        Scaling::PerTensor
                    },
                    slots,
                });
            }
        }
    }
    cases
}

/// Timing with rotating inputs writes each input copy to its own, shifted slots and nothing
/// else: after timing, the caches must equal the poisoned caches with the reference applied
/// once per copy. The slots are drawn from the cache's first 1/sets, so that the copies'
/// slots never collide and the order of calls does not matter.
fn check_rotation(backend: &mut dyn Backend) {
    check_rotation_with(backend, false);
}

/// [`check_rotation`], of the call's pattern kernel where `pattern` says (timed as
/// `--ceiling pattern` times it: the call first, then its pattern).
fn check_rotation_with(backend: &mut dyn Backend, pattern: bool) {
    let mut checked = 0;
    for (layout, cache_dtype) in [
        (Layout::Nhd, CacheDtype::Auto),
        (Layout::Nhd, CacheDtype::Fp8),
        (Layout::Hnd, CacheDtype::Fp8),
    ] {
        if !backend.supports(layout) {
            continue;
        }
        checked += 1;
        let mut problem = problem()
            .tokens(60)
            .blocks(1)
            .cache_dtype(cache_dtype)
            .layout(layout)
            .build();
        let sets = timing::rotation_sets(problem.bytes_moved());
        assert!(sets > 2, "{sets}");
        problem.num_blocks = 8 * sets;
        let elements = problem.num_tokens * problem.token_elements();
        let key = workload::random_normal(problem.dtype, elements, 1);
        let value = workload::random_normal(problem.dtype, elements, 2);
        let mut slot_mapping = workload::random_slot_mapping(8 * 16, problem.num_tokens, 0.1, 3);
        slot_mapping[1] = -1;
        let inputs = Inputs {
            key: &key,
            value: &value,
            slot_mapping: &slot_mapping,
            k_scale: 0.03.into(),
            v_scale: 0.05.into(),
        };
        let bytes = problem.cache_bytes() as usize;
        let poisoned = Caches {
            key: workload::random_bytes(bytes, 4),
            value: workload::random_bytes(bytes, 5),
        };
        let mut protocol = Protocol::new(2);
        protocol.rotate = true;
        protocol.sampling.min_samples = 2;
        protocol.sampling.min_time = Duration::ZERO;
        protocol.sampling.max_time = Duration::from_millis(50);
        let got = {
            let mut call = backend
                .prepare(&problem, inputs, CacheFill::Copy(&poisoned))
                .expect("prepare");
            let samples = timing::measure(call.as_mut(), &problem, &slot_mapping, &protocol)
                .expect("timing with rotating inputs");
            assert!(samples.device_us.iter().all(|t| *t > 0.0), "{samples:?}");
            if pattern {
                let run =
                    timing::measure_pattern(call.as_mut(), &problem, &slot_mapping, &protocol)
                        .expect("timing the pattern with rotating inputs")
                        .expect("a pattern kernel");
                assert!(run.samples.iter().all(|t| *t > 0.0), "{run:?}");
            }
            call.read_back().expect("read back")
        };
        let mut expected = poisoned.clone();
        for set in 0..sets {
            let rotated = workload::rotated_slot_mapping(
                &slot_mapping,
                problem.num_slots(),
                problem.block_size,
                set,
                sets,
            );
            let copy = Inputs {
                slot_mapping: &rotated,
                ..inputs
            };
            reference::reshape_and_cache(&problem, &copy, &mut expected);
            if pattern {
                // The pattern overwrites every byte the call wrote.
                pattern::write_all(&problem, &copy, &mut expected);
            }
        }
        if let Some(mismatch) = verify::compare_caches(&problem, &slot_mapping, &expected, &got) {
            panic!("{} ({sets} sets): {mismatch}", problem.describe());
        }
    }
    assert!(checked >= 2, "no layout to check");
}

/// `--ceiling pattern`: after [`Prepared::pattern`], a call writes [`pattern`]'s bytes to
/// exactly the addresses the reference writes, starting from poisoned caches (an `auto` cache
/// therefore gets the reference's result, bit for bit); then, timed with rotating inputs as the
/// sweep times it, every rotation copy writes the pattern at its own slots and nothing else.
///
/// [`Prepared::pattern`]: paged_kv_bench::backend::Prepared::pattern
fn check_pattern(backend: &mut dyn Backend) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in verify::matrix(Coverage::Quick, 5) {
        let problem = &case.problem;
        let scaling = if problem.cache_dtype.is_fp8() {
            case.scaling
        } else {
            Scaling::PerTensor
        };
        if !backend.supports(problem.layout) || backend.check_support(problem, scaling).is_err() {
            continue;
        }
        let data = verify::CaseData::new(&case).expect("case data");
        let got = {
            let mut call = backend
                .prepare(problem, data.inputs(), CacheFill::Copy(&data.initial))
                .expect("prepare");
            assert!(
                call.pattern().expect("pattern"),
                "{}: no pattern kernel",
                problem.describe()
            );
            call.run().expect("run");
            call.read_back().expect("read back")
        };
        let mut expected = data.initial.clone();
        pattern::write_all(problem, &data.inputs(), &mut expected);
        if !problem.cache_dtype.is_fp8() {
            assert_eq!(expected, data.expected, "{}", problem.describe());
        }
        checked += 1;
        if let Some(mismatch) =
            verify::compare_caches(problem, &data.host.slot_mapping, &expected, &got)
        {
            failures.push(format!("{}: {mismatch}", problem.describe()));
        }
    }
    assert!(checked > 10, "{checked} cases checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    check_rotation_with(backend, true);
}

macro_rules! backend_suite {
    ($name:ident, $open:expr $(, #[$attribute:meta])?) => {
        mod $name {
            use super::*;

            fn open() -> Box<dyn Backend> {
                $open
            }

            #[test]
            $(#[$attribute])?
            fn full_matrix_matches_reference() {
                check_cases(open().as_mut(), &verify::matrix(Coverage::Full, 1));
            }

            #[test]
            $(#[$attribute])?
            fn default_shape_matches_reference() {
                let mut cases = Vec::new();
                for layout in [Layout::Nhd, Layout::Hnd] {
                    for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8, CacheDtype::Fp8E5m2] {
                        for dtype in [Dtype::BFloat16, Dtype::Half, Dtype::Float] {
                            cases.push(default_shape(layout, dtype, cache_dtype, 4096));
                        }
                    }
                }
                check_cases(open().as_mut(), &cases);
            }

            #[test]
            $(#[$attribute])?
            fn model_presets_match_reference() {
                check_cases(open().as_mut(), &serving_cases());
            }

            #[test]
            $(#[$attribute])?
            fn special_values_match_reference_bit_for_bit() {
                let cases: Vec<Case> = verify::matrix(Coverage::Quick, 9)
                    .into_iter()
                    .map(|case| Case { special_values: true, ..case })
                    .collect();
                check_cases(open().as_mut(), &cases);
            }

            #[test]
            $(#[$attribute])?
            fn rotating_timing_writes_every_copy_to_its_own_slots() {
                check_rotation(open().as_mut());
            }

            #[test]
            $(#[$attribute])?
            fn pattern_kernel_writes_the_pattern_where_the_call_writes() {
                check_pattern(open().as_mut());
            }
        }
    };
}

fn open_backend(kind: Kind, options: Options) -> Box<dyn Backend> {
    backend::open(kind, &options, false)
        .unwrap_or_else(|error| panic!("{kind}: {}", error.one_line()))
}

backend_suite!(cpu, open_backend(Kind::Cpu, Options::default()));

// Calls as the benchmark issues them by default (CUDA graph replays), and plain launches.
#[cfg(feature = "cuda")]
backend_suite!(cuda, open_backend(Kind::Cuda, Options::default()), #[ignore = "needs an NVIDIA GPU"]);

#[cfg(feature = "cuda")]
backend_suite!(
    cuda_no_graph,
    open_backend(
        Kind::Cuda,
        Options {
            mode: paged_kv_bench::options::Mode::NoGraph,
            ..Options::default()
        }
    ),
    #[ignore = "needs an NVIDIA GPU"]
);

// Needs a Vulkan (or Metal, DX12) adapter: lavapipe without a GPU (mesa-vulkan-drivers).
#[cfg(feature = "wgpu")]
backend_suite!(wgpu, open_backend(Kind::Wgpu, Options::default()));
