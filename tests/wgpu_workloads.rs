//! The wgpu backend on the serving-workload axes: the shader's e5m2 encoder against the Rust
//! reference over every half and bfloat16 input at many scales and estimate skews (plain and
//! threshold-table encoders) and near every rounding boundary of float inputs; the lookup
//! tables per tensor and per head through the kernels on every 16-bit input; fused QKV inputs
//! split over many buffers and token ranges. Runs on whatever adapter wgpu finds (lavapipe
//! without a GPU).
#![cfg(feature = "wgpu")]

mod common;

use common::encoders::{
    assert_each_plain_encoder_sees_skew, check, check_encoder, mismatches, SCALES, SKEWS,
};
use common::problem;
use paged_kv_bench::backend::wgpu::WgpuBackend;
use paged_kv_bench::backend::Backend;
use paged_kv_bench::options::WgpuTuning;
use paged_kv_bench::problem::{CacheDtype, Dtype, Fp8Format, Layout};
use paged_kv_bench::reference;
use paged_kv_bench::verify::{self, Case, Coverage};
use paged_kv_bench::workload::{self, CacheFill, Caches, Inputs, Scale, Scaling};

fn open(tuning: WgpuTuning) -> WgpuBackend {
    WgpuBackend::open(None, false, tuning).expect("a wgpu adapter (install mesa-vulkan-drivers)")
}

/// The scales of the e4m3 tests (tests/common/encoders.rs), and scales at the e5m2 threshold
/// tables' lower limit (2^-109) and just below it.
fn scales() -> impl Iterator<Item = f32> {
    SCALES.into_iter().chain([
        f32::from_bits(0x0a40_0000), // 1.5 * 2^-107
        f32::from_bits(0x08ff_ffff), // just under 2^-109
    ])
}

/// Skews of the encoder's quotient estimate: none, and up to 255 ULP either way (a GPU whose
/// division is far worse than WGSL's 2.5 ULP).
/// Every half and every bfloat16 bit pattern, at every scale and skew: the shader's e5m2 bytes
/// equal `Fp8Format::E5m2.quantize`.
#[test]
fn e5m2_encoder_matches_reference_on_every_16_bit_input() {
    let mut backend = open(WgpuTuning::default());
    let all: Vec<u32> = (0..=u16::MAX as u32).collect();
    for dtype in [Dtype::Half, Dtype::BFloat16] {
        for scale in scales() {
            for skew in SKEWS {
                check_encoder(&mut backend, Fp8Format::E5m2, dtype, &all, scale, skew);
            }
        }
    }
}

/// The e5m2 comparison has teeth: an estimate off by more than the exact window, or (tables)
/// by more than one code step, gives wrong codes that it sees; and the e5m2 tables refuse
/// scales below 2^-109, where flushed subnormal inputs would no longer encode as 0.
#[test]
fn e5m2_encoder_tests_detect_estimates_outside_their_windows() {
    let mut backend = open(WgpuTuning::default());
    let all: Vec<u32> = (0..=u16::MAX as u32).collect();
    for skew in [300, -300] {
        assert_each_plain_encoder_sees_skew(
            &mut backend,
            Fp8Format::E5m2,
            Dtype::Half,
            &all,
            1.0,
            skew,
        );
    }
    for skew in [5 << 20, -(5 << 20)] {
        let got = backend
            .encode_fp8_table_as(Fp8Format::E5m2, Dtype::BFloat16, &all, 0.07, skew)
            .expect("encode")
            .expect("the table encoder handles 0.07");
        let bad = mismatches(
            Fp8Format::E5m2,
            Dtype::BFloat16,
            &all,
            0.07,
            &got,
            " (tables)",
        );
        assert!(!bad.is_empty(), "a {skew}-ULP estimate went unnoticed");
    }
    let limit = 2f32.powi(-109);
    assert!(backend
        .encode_fp8_table_as(Fp8Format::E5m2, Dtype::Half, &all, limit, 0)
        .expect("encode")
        .is_some());
    assert!(backend
        .encode_fp8_table_as(Fp8Format::E5m2, Dtype::Half, &all, limit / 2.0, 0)
        .expect("encode")
        .is_none());
    // e4m3 reaches lower (its tables' limit is 2^-116).
    assert!(backend
        .encode_fp8_table_as(Fp8Format::E4m3, Dtype::Half, &all, limit / 2.0, 0)
        .expect("encode")
        .is_some());
}

/// For each scale, the f32 inputs whose quotient lies closest to each e5m2 rounding boundary
/// (and a few ULP around them), plus every exponent with a spread of mantissas, subnormals and
/// specials.
#[test]
fn e5m2_encoder_matches_reference_near_every_rounding_boundary_for_float() {
    let mut backend = open(WgpuTuning::default());
    let format = Fp8Format::E5m2;
    for scale in scales() {
        let elements = common::float_patterns_near_rounding_boundaries(format, scale);
        for skew in SKEWS {
            check_encoder(&mut backend, format, Dtype::Float, &elements, scale, skew);
        }
    }
}

/// Half a million random f32 patterns and as many normal samples at the benchmark's scale.
#[test]
fn e5m2_encoder_matches_reference_on_random_floats() {
    let mut backend = open(WgpuTuning::default());
    let random: Vec<u32> = bytemuck::pod_collect_to_vec(&workload::random_bytes(2 << 20, 15));
    for scale in [1.0, 0.07, 3.7e-20, 1.0e-35] {
        check_encoder(
            &mut backend,
            Fp8Format::E5m2,
            Dtype::Float,
            &random,
            scale,
            0,
        );
        check_encoder(
            &mut backend,
            Fp8Format::E5m2,
            Dtype::Float,
            &random,
            scale,
            -200,
        );
    }
    let normal = workload::random_normal(Dtype::Float, 1 << 19, 16);
    let scale = workload::fp8_scale(Dtype::Float, &normal);
    let normal: Vec<u32> = bytemuck::pod_collect_to_vec(&normal);
    check_encoder(
        &mut backend,
        Fp8Format::E5m2,
        Dtype::Float,
        &normal,
        scale,
        0,
    );
}

/// Every half and bfloat16 pattern through the cache kernels, e4m3 and e5m2, with per-tensor
/// and per-head scales (4 heads, each its own scale, among them 0, negative, subnormal,
/// infinite and NaN ones), by the lookup tables (one per head with per-head scales) and by the
/// plain encoder, in one buffer per cache and split over several: against the reference on
/// poisoned caches. Keys and values hold the patterns in different orders, so a table or
/// scale read at another head's or tensor's place shows.
#[test]
fn fp8_kernels_match_reference_on_every_16_bit_input_per_tensor_and_per_head() {
    // 128 tokens of 4 x 128 elements: 65536 per tensor, then a padding token; fp8 blocks of
    // 8 KiB.
    let base = problem()
        .tokens(129)
        .heads(4)
        .head_size(128)
        .block_size(16)
        .blocks(17);
    let mut patterns: Vec<u16> = (0..=u16::MAX).collect();
    let mut shuffled: Vec<u16> = patterns
        .iter()
        .map(|&p| p.wrapping_mul(40503).wrapping_add(0x1234))
        .collect();
    patterns.extend_from_within(..512);
    shuffled.extend_from_within(..512);
    let key: Vec<u8> = bytemuck::cast_slice(&patterns).to_vec();
    let value: Vec<u8> = bytemuck::cast_slice(&shuffled).to_vec();
    // 128 of the 272 slots, scattered (37 is prime to 272), then the padding token.
    let mut slot_mapping: Vec<i64> = (0..128).map(|t| (t * 37 + 5) % 272).collect();
    slot_mapping.push(-1);
    let scale_sets: [([f32; 4], [f32; 4]); 3] = [
        (
            [1.0, 0.07, -1.5, 3.0e-5],
            [0.5, 2.0e3, 0.07 * 1.01, 1.0e-30],
        ),
        (
            [0.0, f32::from_bits(0x0000_4321), f32::INFINITY, f32::NAN],
            [-f32::NAN, -0.0, 3.0e38, 0.25],
        ),
        ([0.3, 0.3, 0.3, 0.3], [0.3, 0.3, 0.3, 0.3]),
    ];
    let lut = |on: bool, max_binding_bytes: Option<u64>| {
        open(WgpuTuning {
            fp8_lut: Some(on),
            fp8_table: Some(false),
            max_binding_bytes,
            ..Default::default()
        })
    };
    // Lookup tables and the plain encoder, one buffer per cache and caches split (17 chunks,
    // inputs in several ranges).
    let mut backends = [
        lut(true, None),
        lut(false, None),
        lut(true, Some(8 << 10)),
        lut(false, Some(8 << 10)),
    ];
    let mut failures = Vec::new();
    for cache_dtype in [CacheDtype::Fp8, CacheDtype::Fp8E5m2] {
        for dtype in [Dtype::Half, Dtype::BFloat16] {
            let problem = base.dtype(dtype).cache_dtype(cache_dtype).build();
            for (i, (k_scales, v_scales)) in scale_sets.iter().enumerate() {
                for per_head in [false, true] {
                    let (k_scale, v_scale) = if per_head {
                        (Scale::PerHead(k_scales), Scale::PerHead(v_scales))
                    } else {
                        (Scale::PerTensor(k_scales[0]), Scale::PerTensor(v_scales[1]))
                    };
                    let inputs = Inputs {
                        key: &key,
                        value: &value,
                        slot_mapping: &slot_mapping,
                        k_scale,
                        v_scale,
                    };
                    let bytes = problem.cache_bytes() as usize;
                    let initial = Caches {
                        key: workload::random_bytes(bytes, 70 + i as u64),
                        value: workload::random_bytes(bytes, 90 + i as u64),
                    };
                    let mut expected = initial.clone();
                    reference::reshape_and_cache(&problem, &inputs, &mut expected);
                    for (b, backend) in backends.iter_mut().enumerate() {
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
                                "{} {} scales {i} per_head={per_head} backend {b}: {mismatch}",
                                cache_dtype.name(),
                                dtype.name()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The quick matrix's fused, per-head and e5m2 cases (NHD), and every fp8 one with the
/// threshold tables forced (e5m2 tables included), in configurations that split caches and
/// inputs over many buffers and token ranges (strided inputs cut by token), take tokens in
/// slot order with several units per thread, and force the per-head lookup tables.
#[test]
fn workload_cases_match_reference_split_ordered_and_by_every_encoder() {
    let cases: Vec<Case> = verify::matrix(Coverage::Quick, 61)
        .into_iter()
        .filter(|case| {
            case.problem.layout == Layout::Nhd
                && (case.qkv_fused.is_some()
                    || case.problem.cache_dtype == CacheDtype::Fp8E5m2
                    || (case.problem.cache_dtype.is_fp8() && case.scaling == Scaling::PerHead))
        })
        .collect();
    assert!(cases.len() > 30, "{}", cases.len());
    for tuning in [
        // (The largest cache block of the quick matrix is 80 KiB; fused rows up to 7 KiB, so
        // that 17 tokens are two ranges and 1000 tokens many.)
        WgpuTuning {
            max_binding_bytes: Some(80 << 10),
            ..Default::default()
        },
        WgpuTuning {
            max_binding_bytes: Some(96 << 10),
            slot_order: Some(true),
            order_buckets: Some(7),
            units_per_thread: Some(3),
            fp8_lut: Some(true),
            ..Default::default()
        },
        WgpuTuning {
            fp8_lut: Some(false),
            fp8_table: Some(true),
            one_buffer: Some(true),
            max_binding_bytes: Some(128 << 10),
            ..Default::default()
        },
    ] {
        check(&mut open(tuning), &cases);
    }
}

/// Every model preset's shape (fused QKV with its query heads) with per-head e5m2 and e4m3
/// scales and each slot pattern, on the default backend.
#[test]
fn model_presets_match_reference() {
    let mut backend = open(WgpuTuning::default());
    let mut cases = Vec::new();
    for (i, model) in paged_kv_bench::models::MODELS.iter().enumerate() {
        let cache_dtype = [CacheDtype::Auto, CacheDtype::Fp8, CacheDtype::Fp8E5m2][i % 3];
        let slots = workload::SlotPattern::ALL[i % 4];
        let num_tokens = 300;
        let num_blocks = slots.blocks_needed(num_tokens, 16) as usize + 7;
        cases.push(Case {
            problem: problem()
                .tokens(num_tokens)
                .heads(model.num_kv_heads)
                .head_size(model.head_size)
                .blocks(num_blocks)
                .dtype(model.dtype)
                .cache_dtype(cache_dtype)
                .qkv_fused(model.num_query_heads)
                .build(),
            padding_fraction: 0.05,
            special_values: i % 2 == 0,
            seed: 300 + i as u64,
            qkv_fused: Some(model.num_query_heads),
            scaling: Scaling::PerHead,
            slots,
        });
    }
    for case in &cases {
        assert!(backend.check_support(&case.problem, case.scaling).is_ok());
    }
    check(&mut backend, &cases);
}

/// What the backend does not implement it refuses by name, before and in `prepare`: head
/// strides other than the head size, and fp8 of inputs whose rows do not start on 16 bytes.
#[test]
fn unsupported_strides_are_refused_by_name() {
    let backend = open(WgpuTuning::default());
    let gaps = problem()
        .heads(2)
        .head_size(16)
        .input_strides(Some(paged_kv_bench::problem::InputStrides {
            head: 20,
            token: 40,
        }))
        .build();
    let error = backend
        .check_support(&gaps, Scaling::PerTensor)
        .expect_err("head gaps");
    assert_eq!(
        error.to_string(),
        "wgpu does not implement input head strides other than the head size"
    );
    let odd = problem()
        .heads(2)
        .head_size(16)
        .fp8()
        .input_strides(Some(paged_kv_bench::problem::InputStrides {
            head: 16,
            token: 33,
        }))
        .build();
    assert!(backend.check_support(&odd, Scaling::PerTensor).is_err());
    // The same strides with an auto cache take the word kernel.
    let odd_auto = problem()
        .heads(2)
        .head_size(16)
        .input_strides(Some(paged_kv_bench::problem::InputStrides {
            head: 16,
            token: 33,
        }))
        .build();
    assert!(backend.check_support(&odd_auto, Scaling::PerTensor).is_ok());
    let mut backend = backend;
    let case = Case {
        padding_fraction: 0.2,
        ..Case::plain(
            common::ProblemBuilder::from(odd_auto)
                .tokens(40)
                .blocks(8)
                .dtype(Dtype::Half)
                .build(),
            8,
        )
    };
    check(&mut backend, &[case]);
}
