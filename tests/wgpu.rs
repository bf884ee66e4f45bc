//! Tests of the wgpu backend that the shared suite in `tests/backends.rs` does not cover: the
//! shader's fp8 encoder against the Rust reference over every 16-bit input, caches and inputs
//! split over many buffers, rows that are not a multiple of 16 bytes, random fills, timing and
//! adapter errors. They run the shaders for real on whatever adapter wgpu finds (lavapipe
//! without a GPU: `apt-get install mesa-vulkan-drivers`).
#![cfg(feature = "wgpu")]

mod common;

use std::time::Duration;

use common::encoders::{
    assert_each_plain_encoder_sees_skew, check, check_encoder, mismatches, SCALES, SKEWS,
};
use common::{problem, ProblemBuilder};
use paged_kv_bench::backend::wgpu::WgpuBackend;
use paged_kv_bench::backend::Backend;
use paged_kv_bench::error::Error;
use paged_kv_bench::fp8;
use paged_kv_bench::options::{CacheAlloc, WgpuApi, WgpuTuning};
use paged_kv_bench::problem::{CacheDtype, Dtype, Fp8Format, Layout};
use paged_kv_bench::reference;
use paged_kv_bench::timing::{self, Protocol, Sampling};
use paged_kv_bench::verify::{self, Case, Coverage};
use paged_kv_bench::workload::{self, CacheFill, Caches, Inputs, Scaling, SlotPattern};

fn open() -> WgpuBackend {
    WgpuBackend::open(None, false, WgpuTuning::default())
        .expect("a wgpu adapter (install mesa-vulkan-drivers)")
}

/// A backend that binds at most `max_binding_bytes` per buffer.
fn open_limited(max_binding_bytes: u64) -> WgpuBackend {
    WgpuBackend::open(
        None,
        false,
        WgpuTuning {
            max_binding_bytes: Some(max_binding_bytes),
            ..Default::default()
        },
    )
    .expect("a wgpu adapter")
}

/// Every half and every bfloat16 bit pattern, at every scale and skew: the shader's bytes equal
/// `fp8::quantize` (which divides in f32 with correct rounding, then rounds to e4m3).
#[test]
fn fp8_encoder_matches_reference_on_every_16_bit_input() {
    let mut backend = open();
    let all: Vec<u32> = (0..=u16::MAX as u32).collect();
    for dtype in [Dtype::Half, Dtype::BFloat16] {
        for scale in SCALES {
            for skew in SKEWS {
                check_encoder(&mut backend, Fp8Format::E4m3, dtype, &all, scale, skew);
            }
        }
    }
}

/// The exhaustive test can tell a wrong encoder from a right one: with the estimate off by more
/// than an encoder's window of exact checks (256 ULP for the long encoder, 260 for the short
/// one), inputs whose quotient lies on (or next to) a rounding boundary come out wrong, and the
/// comparison sees it, for each encoder on its own.
#[test]
fn fp8_encoder_test_detects_an_estimate_outside_the_exact_window() {
    let mut backend = open();
    let all: Vec<u32> = (0..=u16::MAX as u32).collect();
    for skew in [300, -300] {
        assert_each_plain_encoder_sees_skew(
            &mut backend,
            Fp8Format::E4m3,
            Dtype::Half,
            &all,
            1.0,
            skew,
        );
    }
}

/// Likewise for the threshold-table encoder: a first estimate two e4m3 steps off (2^21 ULP and
/// more) is beyond its one-step correction, and the comparison sees it; the table encoder
/// handles the usual scales and not the extreme ones.
#[test]
fn fp8_table_encoder_test_detects_an_estimate_two_codes_off() {
    let mut backend = open();
    let all: Vec<u32> = (0..=u16::MAX as u32).collect();
    for skew in [3 << 20, -(3 << 20)] {
        let got = backend
            .encode_fp8_table(Dtype::BFloat16, &all, 0.07, skew)
            .expect("encode")
            .expect("the table encoder handles 0.07");
        let bad = mismatches(
            Fp8Format::E4m3,
            Dtype::BFloat16,
            &all,
            0.07,
            &got,
            " (tables)",
        );
        assert!(!bad.is_empty(), "a {skew}-ULP estimate went unnoticed");
    }
    for scale in [0.0, f32::INFINITY, f32::NAN, 1.0e-36, 3.0e38] {
        assert!(backend
            .encode_fp8_table(Dtype::Half, &all, scale, 0)
            .expect("encode")
            .is_none());
    }
}

/// For each scale, the f32 inputs whose quotient lies closest to each e4m3 rounding boundary
/// (the products boundary * scale and their neighbours a few ULP away), plus a sweep of
/// exponents, subnormals and specials: where a division that is not correctly rounded would
/// go wrong.
#[test]
fn fp8_encoder_matches_reference_near_every_rounding_boundary_for_float() {
    let mut backend = open();
    for scale in SCALES {
        let elements = common::float_patterns_near_rounding_boundaries(fp8::Format::E4m3, scale);
        for skew in SKEWS {
            check_encoder(
                &mut backend,
                Fp8Format::E4m3,
                Dtype::Float,
                &elements,
                scale,
                skew,
            );
        }
    }
}

/// A million random f32 bit patterns per scale, and a million values in the range real keys
/// take (normal samples), quantised with the benchmark's scale.
#[test]
fn fp8_encoder_matches_reference_on_random_floats() {
    let mut backend = open();
    let random: Vec<u32> = bytemuck::pod_collect_to_vec(&workload::random_bytes(4 << 20, 5));
    for scale in [1.0, 0.07, 1.0 / 3.0, 3.7e-20] {
        check_encoder(
            &mut backend,
            Fp8Format::E4m3,
            Dtype::Float,
            &random,
            scale,
            0,
        );
        check_encoder(
            &mut backend,
            Fp8Format::E4m3,
            Dtype::Float,
            &random,
            scale,
            -200,
        );
    }
    let normal = workload::random_normal(Dtype::Float, 1 << 20, 6);
    let scale = workload::fp8_scale(Dtype::Float, &normal);
    check_encoder(
        &mut backend,
        Fp8Format::E4m3,
        Dtype::Float,
        &bytemuck::pod_collect_to_vec(&normal),
        scale,
        0,
    );
}

/// Caches split over many buffers (more than one dispatch group of 11 chunks) and inputs
/// split over several token ranges, forced by a small binding limit.
#[test]
fn caches_and_inputs_split_over_many_buffers_match_reference() {
    // 256 KiB holds at least one block of every quick case (at most 32 x 5 x 128 x 4 bytes).
    let mut backend = open_limited(256 << 10);
    let cases: Vec<Case> = verify::matrix(Coverage::Quick, 21)
        .into_iter()
        .filter(|case| case.problem.layout == Layout::Nhd)
        .collect();
    check(&mut backend, &cases);
}

/// Tokens taken in slot order (the bucketing passes on the device), caches as one buffer with
/// the chunks bound as windows and several 16-byte units per thread, alone and together, with
/// few and many buckets (the scan takes several buckets per thread past 256), over many chunks
/// and token ranges.
#[test]
fn slot_order_one_buffer_and_units_match_reference() {
    let cases: Vec<Case> = verify::matrix(Coverage::Quick, 45)
        .into_iter()
        .filter(|case| case.problem.layout == Layout::Nhd)
        .collect();
    for (slot_order, order_buckets, one_buffer, units) in [
        (true, 1, false, 1),
        (true, 7, true, 8),
        (true, 1000, false, 3),
        (false, 0, true, 1),
    ] {
        let mut backend = WgpuBackend::open(
            None,
            false,
            WgpuTuning {
                max_binding_bytes: Some(256 << 10),
                slot_order: Some(slot_order),
                order_buckets: (order_buckets > 0).then_some(order_buckets),
                one_buffer: Some(one_buffer),
                units_per_thread: Some(units),
                // The three fp8 encoders for 16-bit inputs: lookup table (1 unit), threshold
                // tables (3), plain (8).
                fp8_table: Some(units != 8),
                fp8_lut: Some(units == 1),
                ..Default::default()
            },
        )
        .expect("a wgpu adapter");
        check(&mut backend, &cases);
    }
    // One chunk (the single-chunk kernel) in slot order, and small chunks set by blocks.
    for max_chunk_blocks in [None, Some(3)] {
        let mut backend = WgpuBackend::open(
            None,
            false,
            WgpuTuning {
                slot_order: Some(true),
                order_buckets: Some(300),
                max_chunk_blocks,
                one_buffer: Some(true),
                units_per_thread: Some(8),
                ..Default::default()
            },
        )
        .expect("a wgpu adapter");
        check(&mut backend, &cases);
    }
}

/// fp8 calls with four threads per 16-byte unit (each encoding one word) by every encoder
/// (short, long, threshold tables, lookup table), and the short and long encoders with a thread
/// per unit, over
/// many chunks (the generated word stores of the multi-chunk kernels) and over one; every fp8
/// case of the quick matrix (e4m3 and e5m2, per-tensor and per-head scales, fused inputs).
#[test]
fn fp8_split_units_match_reference_with_every_encoder() {
    let cases: Vec<Case> = verify::matrix(Coverage::Quick, 53)
        .into_iter()
        .filter(|case| case.problem.layout == Layout::Nhd && case.problem.cache_dtype.is_fp8())
        .collect();
    assert!(cases.len() > 10, "{} fp8 cases", cases.len());
    for (max_binding_bytes, split, fp8_table, fp8_lut, fp8_fast) in [
        (Some(256 << 10), true, false, false, true),
        (Some(256 << 10), true, false, false, false),
        (Some(256 << 10), true, true, false, true),
        (Some(256 << 10), true, false, true, true),
        (Some(256 << 10), false, false, false, true),
        (Some(256 << 10), false, false, false, false),
        (None, true, false, false, true),
    ] {
        let mut backend = WgpuBackend::open(
            None,
            false,
            WgpuTuning {
                max_binding_bytes,
                fp8_split: Some(split),
                fp8_table: Some(fp8_table),
                fp8_lut: Some(fp8_lut),
                fp8_fast: Some(fp8_fast),
                ..Default::default()
            },
        )
        .expect("a wgpu adapter");
        check(&mut backend, &cases);
    }
}

/// The smallest possible chunks: one cache block per buffer, so that a cache of 40 blocks
/// needs 4 dispatch groups, and many tokens per call need several input ranges.
#[test]
fn one_block_per_buffer_matches_reference() {
    // A block is 16 x 2 x 64 x 2 = 4 KiB (fp8: 2 KiB).
    let shape = problem()
        .tokens(300)
        .heads(2)
        .head_size(64)
        .block_size(16)
        .blocks(40);
    let mut backend = open_limited(4 << 10);
    let mut cases = Vec::new();
    for dtype in [Dtype::Half, Dtype::BFloat16, Dtype::Float] {
        for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8] {
            if dtype == Dtype::Float && cache_dtype == CacheDtype::Auto {
                // 8 KiB blocks do not fit 4 KiB bindings (checked below).
                continue;
            }
            cases.push(Case {
                problem: shape.dtype(dtype).cache_dtype(cache_dtype).build(),
                padding_fraction: 0.1,
                special_values: true,
                seed: 3,
                qkv_fused: None,
                scaling: Scaling::PerTensor,
                slots: SlotPattern::Random,
            });
        }
    }
    check(&mut backend, &cases);

    let too_big = shape.dtype(Dtype::Float).build();
    let data = verify::CaseData::new(&Case {
        problem: too_big,
        padding_fraction: 0.0,
        special_values: false,
        seed: 1,
        qkv_fused: None,
        scaling: Scaling::PerTensor,
        slots: SlotPattern::Random,
    })
    .unwrap();
    let error = backend
        .prepare(&too_big, data.inputs(), CacheFill::Copy(&data.initial))
        .err()
        .expect("a block larger than a binding is refused");
    assert!(matches!(error, Error::DoesNotFit { .. }), "{error}");
}

/// Two-dimensional grids (more than 65535 workgroups on real adapters), forced by allowing 64
/// workgroups per dimension: every kernel, the fill and the encoder.
#[test]
fn two_dimensional_grids_match_reference() {
    let mut backend = WgpuBackend::open(
        None,
        false,
        WgpuTuning {
            max_workgroups_per_dimension: Some(64),
            max_binding_bytes: Some(128 << 10),
            ..Default::default()
        },
    )
    .expect("adapter");
    let mut cases: Vec<Case> = verify::matrix(Coverage::Quick, 33)
        .into_iter()
        .filter(|case| case.problem.layout == Layout::Nhd && case.problem.num_tokens >= 17)
        .collect();
    // The word kernel.
    cases.push(Case {
        problem: problem()
            .tokens(700)
            .heads(3)
            .head_size(5)
            .block_size(3)
            .blocks(500)
            .dtype(Dtype::Half)
            .build(),
        padding_fraction: 0.1,
        special_values: false,
        seed: 4,
        qkv_fused: None,
        scaling: Scaling::PerTensor,
        slots: SlotPattern::Random,
    });
    check(&mut backend, &cases);
    // 128 KiB bindings hold 32768 elements: two halves.
    let all: Vec<u32> = (0..=u16::MAX as u32).collect();
    for half in all.chunks(32768) {
        check_encoder(
            &mut backend,
            Fp8Format::E4m3,
            Dtype::BFloat16,
            half,
            0.07,
            0,
        );
    }
}

/// Rows that are not a multiple of 16 bytes take the word kernel; rows of an odd number of
/// 16-bit elements share words with their neighbours (block size 1 and 3 put neighbouring
/// slots' rows in one word), and chunks of an odd number of such blocks must still split on
/// words.
#[test]
fn rows_not_a_multiple_of_16_bytes_match_reference() {
    let mut cases = Vec::new();
    let mut seed = 100;
    for dtype in [Dtype::Half, Dtype::BFloat16, Dtype::Float] {
        for (num_heads, head_size) in [(1, 1), (3, 5), (1, 6), (2, 7), (5, 12)] {
            for block_size in [1, 3, 16] {
                for num_tokens in [1, 2, 97] {
                    seed += 1;
                    cases.push(Case {
                        problem: problem()
                            .tokens(num_tokens)
                            .heads(num_heads)
                            .head_size(head_size)
                            .block_size(block_size)
                            .dtype(dtype)
                            .build(),
                        padding_fraction: 0.1,
                        special_values: seed % 2 == 0,
                        seed,
                        qkv_fused: None,
                        scaling: Scaling::PerTensor,
                        slots: SlotPattern::Random,
                    });
                }
            }
        }
    }
    check(&mut open(), &cases);
    // The same with bindings of a few blocks: many buffers, dispatched one by one, inputs in
    // several token ranges.
    for limit in [64u64, 512, 4096] {
        let split: Vec<Case> = cases
            .iter()
            .filter(|case| {
                let p = &case.problem;
                let block = p.cache_bytes() / p.num_blocks as u64;
                block <= limit && block * 2 > limit / 4 && p.cache_bytes() > limit
            })
            .copied()
            .collect();
        assert!(!split.is_empty());
        check(&mut open_limited(limit), &split);
    }
}

/// A random fill happens on the device, gives the same bytes for the same seed whatever calls
/// wrote before (it is redone for each call), and a call on it writes exactly what the
/// reference writes.
#[test]
fn random_fill_is_seeded_reused_and_written_correctly() {
    let problem = problem()
        .tokens(50)
        .heads(4)
        .head_size(64)
        .blocks(30)
        .dtype(Dtype::Half)
        .fp8()
        .build();
    let mut backend = open_limited(16 << 10);
    let key = workload::random_normal(problem.dtype, 50 * 256, 1);
    let value = workload::random_normal(problem.dtype, 50 * 256, 2);
    let slot_mapping = workload::random_slot_mapping(problem.num_slots(), 50, 0.1, 3);
    let inputs = Inputs {
        key: &key,
        value: &value,
        slot_mapping: &slot_mapping,
        k_scale: workload::fp8_scale(problem.dtype, &key).into(),
        v_scale: workload::fp8_scale(problem.dtype, &value).into(),
    };
    let fill = |backend: &mut WgpuBackend, seed: u64, run: bool| -> Caches {
        let mut call = backend
            .prepare(&problem, inputs, CacheFill::Random { seed })
            .expect("prepare");
        if run {
            call.run().expect("run");
        }
        call.read_back().expect("read back")
    };
    let initial = fill(&mut backend, 7, false);
    assert_ne!(initial.key, initial.value);
    assert!(initial.key.iter().filter(|b| **b == 0).count() < initial.key.len() / 64);
    let mut expected = initial.clone();
    reference::reshape_and_cache(&problem, &inputs, &mut expected);
    // Same seed and size: the call lands on the same contents.
    let written = fill(&mut backend, 7, true);
    assert!(
        written == expected,
        "a call on a random fill differs from the reference"
    );
    // Another seed fills other bytes; seed 7 again gives the same bytes, the written ones
    // included.
    let other = fill(&mut backend, 8, false);
    assert_ne!(other.key, initial.key);
    assert_eq!(fill(&mut backend, 7, false), initial);
}

/// Timing returns a latency and device-time samples, warm and cold (values are not checked:
/// tests never assert timings), and the copy-bandwidth probe runs.
#[test]
fn timing_and_bandwidth_run() {
    let mut backend = open();
    let case = default_case(64);
    let data = verify::CaseData::new(&case).unwrap();
    {
        let mut call = backend
            .prepare(&case.problem, data.inputs(), CacheFill::Random { seed: 1 })
            .expect("prepare");
        for cold in [false, true] {
            let protocol = Protocol {
                cold,
                sampling: Sampling {
                    min_samples: 3,
                    max_samples: 4,
                    min_time: Duration::ZERO,
                    max_time: Duration::from_secs(2),
                    ..Sampling::default()
                },
                ..Protocol::new(5)
            };
            let slots = data.inputs().slot_mapping.to_vec();
            let samples =
                timing::measure(call.as_mut(), &case.problem, &slots, &protocol).expect("time");
            assert!(samples.latency_us.is_finite() && samples.latency_us > 0.0);
            assert!((1..=4).contains(&samples.device_us.len()));
            assert!(samples.device_us.iter().all(|t| t.is_finite() && *t >= 0.0));
        }
        // Timing leaves the call usable.
        call.run().expect("run after timing");
    }
    let bandwidth = backend.copy_bandwidth_gbps().expect("copy bandwidth");
    assert!(bandwidth.is_some_and(|gbps| gbps.is_finite() && gbps > 0.0));
    assert!(backend.mode_note().contains("does not apply"));
    assert!(!backend.supports(Layout::Hnd) && backend.supports(Layout::Nhd));
    let info = backend.device();
    assert!(!info.name.is_empty() && !info.details.is_empty());
}

fn default_case(num_tokens: usize) -> Case {
    Case {
        problem: problem().tokens(num_tokens).blocks(64).build(),
        padding_fraction: 0.0,
        special_values: false,
        seed: 11,
        qkv_fused: None,
        scaling: Scaling::PerTensor,
        slots: SlotPattern::Random,
    }
}

/// Bad requests are errors, never panics: an adapter name nothing matches, the HND layout,
/// inputs of the wrong size, caches of the wrong size.
#[test]
fn bad_requests_are_errors() {
    match WgpuBackend::open(
        Some("no adapter is called this"),
        false,
        WgpuTuning::default(),
    ) {
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, paged_kv_bench::backend::Kind::Wgpu);
            assert!(reason.contains("no adapter"), "{reason}");
            assert!(!reason.contains('\n'));
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("an adapter matched a name no adapter has"),
    }
    // Hardware only: succeeds on a machine with a GPU, is a one-line refusal on lavapipe alone.
    if let Err(error) = WgpuBackend::open(None, true, WgpuTuning::default()) {
        assert!(matches!(error, Error::Unavailable { .. }), "{error}");
    }

    let mut backend = open();
    let case = default_case(10);
    let data = verify::CaseData::new(&case).unwrap();
    let hnd = ProblemBuilder::from(case.problem).hnd().build();
    assert!(backend
        .prepare(&hnd, data.inputs(), CacheFill::Random { seed: 1 })
        .is_err());
    let short = Inputs {
        key: &data.host.key[..16],
        ..data.inputs()
    };
    assert!(backend
        .prepare(&case.problem, short, CacheFill::Random { seed: 1 })
        .is_err());
    let wrong = Caches {
        key: vec![0; 8],
        value: vec![0; 8],
    };
    assert!(backend
        .prepare(&case.problem, data.inputs(), CacheFill::Copy(&wrong))
        .is_err());
    // The backend still works afterwards.
    assert_eq!(verify::check(&mut backend, &case).unwrap(), None);
}

/// A backend with the fp8 lookup table on, and `tuning` besides.
fn open_lut(tuning: WgpuTuning) -> WgpuBackend {
    WgpuBackend::open(
        None,
        false,
        WgpuTuning {
            fp8_lut: Some(true),
            ..tuning
        },
    )
    .expect("a wgpu adapter")
}

/// The fp8 lookup table through the real kernels: every fp8 case of the quick matrix, with and
/// without special values (NaN, infinities, zeros, subnormals), in one buffer per cache (the
/// one-chunk kernel) and split over many (the multi-chunk kernel, inputs in several ranges),
/// as the tokens come and in slot order with several units per thread, and on
/// two-dimensional grids. Float inputs are in the matrix too: they keep the other encoders
/// with the override on.
#[test]
fn fp8_lookup_table_matches_reference_in_the_kernels() {
    let fp8: Vec<Case> = verify::matrix(Coverage::Quick, 57)
        .into_iter()
        .filter(|case| {
            case.problem.layout == Layout::Nhd && case.problem.cache_dtype == CacheDtype::Fp8
        })
        .collect();
    let mut cases = Vec::new();
    for case in fp8 {
        for special_values in [false, true] {
            cases.push(Case {
                special_values,
                ..case
            });
        }
    }
    check(&mut open_lut(WgpuTuning::default()), &cases);
    check(
        &mut open_lut(WgpuTuning {
            max_binding_bytes: Some(64 << 10),
            ..Default::default()
        }),
        &cases,
    );
    check(
        &mut open_lut(WgpuTuning {
            max_binding_bytes: Some(64 << 10),
            slot_order: Some(true),
            order_buckets: Some(5),
            units_per_thread: Some(3),
            // Two-dimensional grids, the table build's included.
            max_workgroups_per_dimension: Some(64),
            ..Default::default()
        }),
        &cases,
    );
}

/// Every half and every bfloat16 pattern through the kernels with the lookup table, keys and
/// values at different scales (among them 0, a negative one, a subnormal, infinity and NaNs of
/// both signs, where every input maps to one or two codes), against the reference byte for
/// byte on poisoned caches. The values hold the patterns in another order than the keys, so a
/// table read at the keys' place for the values (or the other way round) shows.
#[test]
fn fp8_lookup_table_matches_reference_on_every_16_bit_input() {
    // 64 tokens of 8 x 128 elements: 65536 per tensor, then a padding token; fp8 blocks of
    // 16 KiB.
    let base = problem()
        .tokens(65)
        .heads(8)
        .head_size(128)
        .block_size(16)
        .blocks(9)
        .fp8();
    let mut patterns: Vec<u16> = (0..=u16::MAX).collect();
    // (An odd multiplier permutes the patterns.)
    let mut shuffled: Vec<u16> = patterns
        .iter()
        .map(|&p| p.wrapping_mul(40503).wrapping_add(0x1234))
        .collect();
    patterns.extend_from_within(..1024);
    shuffled.extend_from_within(..1024);
    let key: Vec<u8> = bytemuck::cast_slice(&patterns).to_vec();
    let value: Vec<u8> = bytemuck::cast_slice(&shuffled).to_vec();
    // 64 of the 144 slots, in a scattered order (37 is prime to 144), then the padding token.
    let mut slot_mapping: Vec<i64> = (0..64).map(|t| (t * 37 + 5) % 144).collect();
    slot_mapping.push(-1);
    let scales = [
        1.0,
        0.07,
        -1.5,
        0.0,
        -0.0,
        f32::from_bits(0x0000_4321),
        1.0e-30,
        3.0e38,
        f32::INFINITY,
        f32::NAN,
        -f32::NAN,
    ];
    // One buffer per cache, and caches and inputs split over several buffers (9 chunks, 8
    // token ranges).
    let mut backends = [
        open_lut(WgpuTuning::default()),
        open_lut(WgpuTuning {
            max_binding_bytes: Some(16 << 10),
            ..Default::default()
        }),
    ];
    let mut failures = Vec::new();
    for dtype in [Dtype::Half, Dtype::BFloat16] {
        let problem = base.dtype(dtype).build();
        for (i, &k_scale) in scales.iter().enumerate() {
            let v_scale = scales[(i + 4) % scales.len()];
            let inputs = Inputs {
                key: &key,
                value: &value,
                slot_mapping: &slot_mapping,
                k_scale: k_scale.into(),
                v_scale: v_scale.into(),
            };
            let bytes = problem.cache_bytes() as usize;
            let initial = Caches {
                key: workload::random_bytes(bytes, 70 + i as u64),
                value: workload::random_bytes(bytes, 90 + i as u64),
            };
            let mut expected = initial.clone();
            reference::reshape_and_cache(&problem, &inputs, &mut expected);
            for backend in backends.iter_mut() {
                let got = {
                    let mut call = backend
                        .prepare(&problem, inputs, CacheFill::Copy(&initial))
                        .expect("prepare");
                    call.run().expect("run");
                    call.read_back().expect("read back")
                };
                if let Some(mismatch) =
                    verify::compare_caches(&problem, &slot_mapping, &expected, &got)
                {
                    failures.push(format!(
                        "{} k_scale {k_scale:e} v_scale {v_scale:e} ({}): {mismatch}",
                        dtype.name(),
                        backend.device().details
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A backend whose caches get their memory as `cache_alloc` says, split over many 64 KiB
/// chunks, or held in one buffer per cache.
fn open_alloc(cache_alloc: CacheAlloc, one_buffer: bool) -> WgpuBackend {
    WgpuBackend::open(
        None,
        false,
        WgpuTuning {
            max_binding_bytes: Some(64 << 10),
            one_buffer: Some(one_buffer),
            cache_alloc,
            ..Default::default()
        },
    )
    .expect("a wgpu adapter")
}

/// Cache buffers in dedicated Vulkan allocations (`dedicated`, and `auto` on a Vulkan adapter
/// such as lavapipe) hold exactly what wgpu's own allocations hold after the same fill and
/// call, which is what the reference writes: many chunks and one buffer per cache, fp8 and
/// not; and a verification case passes on each.
#[test]
fn dedicated_and_wgpu_cache_allocations_give_identical_caches() {
    if !open().device().details.starts_with("vulkan") {
        eprintln!("skipped: the default adapter is not a Vulkan adapter");
        return;
    }
    for (one_buffer, fp8) in [(false, false), (false, true), (true, true)] {
        let mut builder = problem()
            .tokens(120)
            .heads(4)
            .head_size(64)
            .blocks(40)
            .dtype(Dtype::Half);
        if fp8 {
            builder = builder.fp8();
        }
        let problem = builder.build();
        let elements = problem.num_tokens * problem.num_heads * problem.head_size;
        let key = workload::random_normal(problem.dtype, elements, 11);
        let value = workload::random_normal(problem.dtype, elements, 12);
        let slot_mapping = workload::random_slot_mapping(problem.num_slots(), 120, 0.1, 13);
        let inputs = Inputs {
            key: &key,
            value: &value,
            slot_mapping: &slot_mapping,
            k_scale: workload::fp8_scale(problem.dtype, &key).into(),
            v_scale: workload::fp8_scale(problem.dtype, &value).into(),
        };
        let mut results = Vec::new();
        for (alloc, expect) in [
            (CacheAlloc::Wgpu, "caches in wgpu's allocations"),
            (CacheAlloc::Dedicated, "caches in dedicated allocations"),
            (CacheAlloc::Auto, "caches in dedicated allocations"),
        ] {
            let mut backend = open_alloc(alloc, one_buffer);
            let details = backend.device().details;
            assert!(details.contains(expect), "{alloc:?}: {details}");
            let (initial, written) = {
                let mut call = backend
                    .prepare(&problem, inputs, CacheFill::Random { seed: 5 })
                    .expect("prepare");
                let initial = call.read_back().expect("read back");
                call.run().expect("run");
                (initial, call.read_back().expect("read back"))
            };
            let mut expected = initial.clone();
            reference::reshape_and_cache(&problem, &inputs, &mut expected);
            assert!(
                written == expected,
                "{alloc:?}, one buffer {one_buffer}, fp8 {fp8}: differs from the reference"
            );
            let case = default_case(64);
            assert_eq!(
                verify::check(&mut backend, &case).unwrap(),
                None,
                "{alloc:?}"
            );
            results.push((alloc, initial, written));
        }
        for (alloc, initial, written) in &results[1..] {
            assert!(
                *initial == results[0].1 && *written == results[0].2,
                "{alloc:?} caches differ from wgpu's allocations' (one buffer {one_buffer}, fp8 {fp8})"
            );
        }
    }
}

/// `dedicated` on an adapter that is not Vulkan (OpenGL through llvmpipe here) is a one-line
/// configuration error when the backend opens; `auto` there takes wgpu's allocations.
#[test]
fn dedicated_cache_allocations_need_a_vulkan_adapter() {
    let gl = WgpuTuning {
        api: WgpuApi::Gl,
        ..Default::default()
    };
    match WgpuBackend::open(None, false, gl) {
        Ok(backend) => {
            let details = backend.device().details;
            assert!(
                details.contains("caches in wgpu's allocations"),
                "{details}"
            );
        }
        Err(error) => {
            eprintln!("skipped: no OpenGL adapter ({})", error.one_line());
            return;
        }
    }
    let dedicated = WgpuTuning {
        cache_alloc: CacheAlloc::Dedicated,
        ..gl
    };
    match WgpuBackend::open(None, false, dedicated) {
        Err(Error::InvalidConfig(message)) => {
            assert!(
                message.contains("--wgpu-cache-alloc dedicated"),
                "{message}"
            );
            assert!(message.contains("gl adapter"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("dedicated Vulkan allocations on an OpenGL adapter"),
    }
}
