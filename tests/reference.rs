//! The CPU reference on hand-computed cases (fused QKV inputs and per-head scales too), and the
//! fp8 encoders (e4m3 and e5m2) checked exhaustively against the `float8` crate.

mod common;

use common::{problem, ProblemBuilder};
use float8::{F8E4M3, F8E5M2};
use paged_kv_bench::fp8;
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout, Problem};
use paged_kv_bench::reference::reshape_and_cache;
use paged_kv_bench::workload::{Caches, Inputs, Scale};

const POISON: f32 = 99.0;

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn to_floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// 2 blocks of 2 slots, 2 heads of 2 float elements; token 0 -> slot 3, token 1 is padding,
/// token 2 -> slot 0.
fn tiny(layout: Layout) -> (Problem, Caches) {
    let problem = problem()
        .tokens(3)
        .heads(2)
        .head_size(2)
        .block_size(2)
        .blocks(2)
        .dtype(Dtype::Float)
        .layout(layout)
        .build();
    let key: Vec<f32> = (1..=12).map(|v| v as f32).collect();
    let value: Vec<f32> = key.iter().map(|v| -v).collect();
    let mut caches = Caches {
        key: floats(&[POISON; 16]),
        value: floats(&[POISON; 16]),
    };
    let (key, value) = (floats(&key), floats(&value));
    let inputs = Inputs {
        key: &key,
        value: &value,
        slot_mapping: &[3, -1, 0],
        k_scale: 1.0.into(),
        v_scale: 1.0.into(),
    };
    reshape_and_cache(&problem, &inputs, &mut caches);
    (problem, caches)
}

#[test]
fn nhd_hand_computed() {
    let (_, caches) = tiny(Layout::Nhd);
    // [block][offset][head][d]: slot 0 = elements 0..4 (token 2), slot 3 = 12..16 (token 0).
    let p = POISON;
    #[rustfmt::skip]
    let expected_key = [9.0, 10.0, 11.0, 12.0, p, p, p, p, p, p, p, p, 1.0, 2.0, 3.0, 4.0];
    assert_eq!(to_floats(&caches.key), expected_key);
    let expected_value: Vec<f32> = expected_key
        .iter()
        .map(|v| if *v == p { p } else { -v })
        .collect();
    assert_eq!(to_floats(&caches.value), expected_value);
}

#[test]
fn hnd_hand_computed() {
    let (_, caches) = tiny(Layout::Hnd);
    // [block][head][offset][d]: slot 0 -> head 0 at 0..2, head 1 at 4..6;
    // slot 3 (block 1, offset 1) -> head 0 at 8+2..8+4, head 1 at 8+6..8+8.
    let p = POISON;
    #[rustfmt::skip]
    let expected_key = [9.0, 10.0, p, p, 11.0, 12.0, p, p, p, p, 1.0, 2.0, p, p, 3.0, 4.0];
    assert_eq!(to_floats(&caches.key), expected_key);
}

#[test]
fn padding_and_out_of_range_slots_write_nothing() {
    let problem = ProblemBuilder::from(tiny(Layout::Nhd).0).tokens(2).build();
    let key = floats(&[1.0; 8]);
    let mut caches = Caches {
        key: floats(&[POISON; 16]),
        value: floats(&[POISON; 16]),
    };
    let before = caches.clone();
    let inputs = Inputs {
        key: &key,
        value: &key,
        slot_mapping: &[-1, 4],
        k_scale: 1.0.into(),
        v_scale: 1.0.into(),
    };
    reshape_and_cache(&problem, &inputs, &mut caches);
    assert_eq!(caches, before);
}

#[test]
fn half_and_bf16_are_copied_bit_for_bit() {
    for dtype in [Dtype::Half, Dtype::BFloat16] {
        let problem = problem()
            .heads(1)
            .head_size(4)
            .block_size(1)
            .blocks(2)
            .dtype(dtype)
            .build();
        // Includes a NaN with payload and a negative zero: a copy must keep them exactly.
        let key: Vec<u8> = [0x7e01u16, 0x8000, 0x3c00, 0x0001]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut caches = Caches {
            key: vec![0xaa; 16],
            value: vec![0xaa; 16],
        };
        let inputs = Inputs {
            key: &key,
            value: &key,
            slot_mapping: &[1],
            k_scale: 1.0.into(),
            v_scale: 1.0.into(),
        };
        reshape_and_cache(&problem, &inputs, &mut caches);
        assert_eq!(&caches.key[8..], &key[..]);
        assert_eq!(&caches.key[..8], &[0xaa; 8]);
    }
}

#[test]
fn fp8_cache_divides_by_the_scale_then_rounds() {
    let problem = problem()
        .heads(1)
        .head_size(16)
        .block_size(1)
        .blocks(1)
        .dtype(Dtype::Float)
        .fp8()
        .hnd()
        .build();
    #[rustfmt::skip]
    let key = [
        1.0, -1.0, 0.53125, 0.59375, 300.0, 1.0e9, f32::INFINITY, f32::NAN,
        -f32::NAN, 0.0, -0.0, 0.0009765625, 0.000_488_281_25, 0.001_464_843_8, -224.0, 0.25,
    ];
    // With k_scale 0.5: 2, -2, 1.0625 (tie -> 1.0), 1.1875 (tie -> 1.25), 600 -> 448,
    // huge -> 448, inf -> 448, NaN, -NaN, 0, -0, 2^-9 (smallest subnormal), 2^-10 (tie -> 0),
    // 3 * 2^-10 (tie -> 2 * 2^-9), -448, 0.5.
    let expected = [
        0x40, 0xc0, 0x38, 0x3a, 0x7e, 0x7e, 0x7e, 0x7f, 0xff, 0x00, 0x80, 0x01, 0x00, 0x02, 0xfe,
        0x30,
    ];
    let value: Vec<f32> = key.iter().map(|v| v * 2.0).collect();
    let (key, value) = (floats(&key), floats(&value));
    let mut caches = Caches {
        key: vec![0x55; 16],
        value: vec![0x55; 16],
    };
    let inputs = Inputs {
        key: &key,
        value: &value,
        slot_mapping: &[0],
        k_scale: 0.5.into(),
        v_scale: 1.0.into(),
    };
    reshape_and_cache(&problem, &inputs, &mut caches);
    assert_eq!(caches.key, expected);
    // Values are twice the keys with twice the scale: the same codes.
    assert_eq!(caches.value, expected);
}

/// The float8 crate's conversion (a port of CUDA's software path) is the independent oracle.
fn oracle(x: f32, scale: f32) -> u8 {
    F8E4M3::from_f32(x / scale).to_bits()
}

const SCALES: [f32; 6] = [1.0, 0.0703125, 1.0 / 3.0, 3.7, 1.0e-3, 600.0];

#[test]
fn fp8_encoder_matches_float8_on_every_f16() {
    for scale in SCALES {
        for bits in 0..=u16::MAX {
            let x = half::f16::from_bits(bits).to_f32();
            assert_eq!(
                fp8::quantize(x, scale),
                oracle(x, scale),
                "f16 {bits:#06x} ({x}) / {scale}"
            );
        }
    }
}

#[test]
fn fp8_encoder_matches_float8_on_every_bf16() {
    for scale in SCALES {
        for bits in 0..=u16::MAX {
            let x = half::bf16::from_bits(bits).to_f32();
            assert_eq!(
                fp8::quantize(x, scale),
                oracle(x, scale),
                "bf16 {bits:#06x} ({x}) / {scale}"
            );
        }
    }
}

#[test]
fn fp8_encoder_matches_float8_on_f32_samples() {
    // Every 61st f32 bit pattern: all exponents, many mantissas, both signs, NaNs and infinities.
    let mut bits: u32 = 0;
    loop {
        let x = f32::from_bits(bits);
        assert_eq!(
            fp8::e4m3_from_f32(x),
            oracle(x, 1.0),
            "f32 {bits:#010x} ({x})"
        );
        match bits.checked_add(61) {
            Some(next) => bits = next,
            None => break,
        }
    }
}

/// Two tokens of a fused QKV tensor with 1 query head and 2 KV heads of 2 float elements: each
/// token row is [q0 q1 | k00 k01 k10 k11 | v00 v01 v10 v11] (10 elements). Keys start at
/// element 2, values at 6, both with token stride 10.
#[test]
fn fused_qkv_inputs_are_read_through_their_strides() {
    let problem = problem()
        .tokens(2)
        .heads(2)
        .head_size(2)
        .block_size(2)
        .blocks(2)
        .dtype(Dtype::Float)
        .qkv_fused(1)
        .build();
    problem.validate().unwrap();
    let fused: Vec<f32> = (0..20).map(|v| v as f32).collect();
    let fused = floats(&fused);
    let span = problem.input_bytes() as usize;
    assert_eq!(span, (10 + 4) * 4);
    let (key, value) = (&fused[2 * 4..2 * 4 + span], &fused[6 * 4..6 * 4 + span]);
    let mut caches = Caches {
        key: floats(&[POISON; 16]),
        value: floats(&[POISON; 16]),
    };
    let inputs = Inputs {
        key,
        value,
        slot_mapping: &[2, 1],
        k_scale: 1.0.into(),
        v_scale: 1.0.into(),
    };
    inputs.validate_for(&problem).unwrap();
    reshape_and_cache(&problem, &inputs, &mut caches);
    let p = POISON;
    // NHD [block][offset][head][d]: slot 1 (token 1) at elements 4..8, slot 2 (token 0) 8..12.
    #[rustfmt::skip]
    let expected_key = [p, p, p, p, 12.0, 13.0, 14.0, 15.0, 2.0, 3.0, 4.0, 5.0, p, p, p, p];
    #[rustfmt::skip]
    let expected_value = [p, p, p, p, 16.0, 17.0, 18.0, 19.0, 6.0, 7.0, 8.0, 9.0, p, p, p, p];
    assert_eq!(to_floats(&caches.key), expected_key);
    assert_eq!(to_floats(&caches.value), expected_value);
}

/// Per-head scales: head h of the keys is divided by k_scale[h], of the values by v_scale[h].
#[test]
fn per_head_scales_divide_each_head_by_its_own() {
    for cache_dtype in [CacheDtype::Fp8, CacheDtype::Fp8E5m2] {
        let problem = problem()
            .heads(3)
            .head_size(16)
            .block_size(1)
            .blocks(1)
            .dtype(Dtype::Float)
            .cache_dtype(cache_dtype)
            .build();
        let key = floats(&[1.0; 48]);
        let value = floats(&[-3.0; 48]);
        let (k_scales, v_scales) = ([1.0, 0.5, 0.25], [2.0, 4.0, 0.5]);
        let mut caches = Caches {
            key: vec![0x55; 48],
            value: vec![0x55; 48],
        };
        let inputs = Inputs {
            key: &key,
            value: &value,
            slot_mapping: &[0],
            k_scale: Scale::PerHead(&k_scales),
            v_scale: Scale::PerHead(&v_scales),
        };
        inputs.validate_for(&problem).unwrap();
        reshape_and_cache(&problem, &inputs, &mut caches);
        let format = cache_dtype.fp8().unwrap();
        for head in 0..3 {
            let k = format.encode(1.0 / k_scales[head]);
            let v = format.encode(-3.0 / v_scales[head]);
            assert_eq!(
                caches.key[head * 16..(head + 1) * 16],
                [k; 16],
                "{cache_dtype}"
            );
            assert_eq!(
                caches.value[head * 16..(head + 1) * 16],
                [v; 16],
                "{cache_dtype}"
            );
        }
        // 1, 2, 4 and -1.5, -0.75, -6: e4m3 0x38 0x40 0x48, e5m2 0x3c 0x40 0x44.
        let expected_keys = match cache_dtype {
            CacheDtype::Fp8 => [0x38, 0x40, 0x48],
            _ => [0x3c, 0x40, 0x44],
        };
        assert_eq!(
            [caches.key[0], caches.key[16], caches.key[32]],
            expected_keys
        );
    }
}

#[test]
fn e5m2_cache_divides_by_the_scale_then_rounds() {
    let problem = problem()
        .heads(1)
        .head_size(16)
        .block_size(1)
        .blocks(1)
        .dtype(Dtype::Float)
        .cache_dtype(CacheDtype::Fp8E5m2)
        .hnd()
        .build();
    #[rustfmt::skip]
    let key = [
        1.0, -1.0, 0.5625, 0.6875, 30000.0, 1.0e9, f32::INFINITY, f32::NAN,
        -f32::NAN, 0.0, -0.0, 7.629_394_5e-6, 3.814_697_3e-6, 1.144_409_2e-5, -28672.0, 0.25,
    ];
    // With k_scale 0.5: 2, -2, 1.125 (tie -> 1.0), 1.375 (tie -> 1.5), 60000 -> 57344,
    // huge -> 57344, inf -> 57344, NaN, -NaN, 0, -0, 2^-16 (smallest subnormal), 2^-17
    // (tie -> 0), 3 * 2^-17 (tie -> 2 * 2^-16), -57344, 0.5.
    let expected = [
        0x40, 0xc0, 0x3c, 0x3e, 0x7b, 0x7b, 0x7b, 0x7f, 0xff, 0x00, 0x80, 0x01, 0x00, 0x02, 0xfb,
        0x38,
    ];
    let (key, value) = (floats(&key), floats(&[0.0; 16]));
    let mut caches = Caches {
        key: vec![0x55; 16],
        value: vec![0x55; 16],
    };
    let inputs = Inputs {
        key: &key,
        value: &value,
        slot_mapping: &[0],
        k_scale: 0.5.into(),
        v_scale: 0.0.into(),
    };
    reshape_and_cache(&problem, &inputs, &mut caches);
    assert_eq!(caches.key, expected);
    // 0 / 0 is an invalid operation: the negative default NaN, as for e4m3.
    assert_eq!(caches.value, [0xff; 16]);
}

/// The e5m2 rule against float8's `F8E5M2::from_f32(x / scale)` (a port of CUDA's
/// `__nv_cvt_double_to_fp8` with `__NV_SATFINITE`). Both round to nearest even and saturate
/// finite values and infinities to +-57344 (0x7b); they differ only on NaN, where float8 keeps
/// the top two bits of the payload (a quiet NaN gives 0x7e, a signalling one 0x7d or 0x7f) and
/// our rule gives 0x7f always, so that every backend's NaN is one byte: NaN is compared by
/// class (float8's code is some NaN) and sign.
fn check_e5m2(x: f32, scale: f32, what: &str) {
    let ours = fp8::quantize_e5m2(x, scale);
    let quotient = x / scale;
    let theirs = F8E5M2::from_f32(quotient).to_bits();
    if quotient.is_nan() {
        assert!(theirs & 0x7f > 0x7c, "float8 gave no NaN for {what}");
        assert_eq!(ours & 0x7f, 0x7f, "{what}");
        assert_eq!(ours & 0x80, theirs & 0x80, "NaN sign of {what}");
    } else {
        assert_eq!(ours, theirs, "{what} ({x}) / {scale}");
    }
}

const E5M2_SCALES: [f32; 7] = [1.0, 0.0703125, 1.0 / 3.0, 3.7, 1.0e-3, 600.0, 1.0e-6];

#[test]
fn e5m2_encoder_matches_float8_on_every_f16() {
    for scale in E5M2_SCALES {
        for bits in 0..=u16::MAX {
            let x = half::f16::from_bits(bits).to_f32();
            check_e5m2(x, scale, &format!("f16 {bits:#06x}"));
        }
    }
}

#[test]
fn e5m2_encoder_matches_float8_on_every_bf16() {
    for scale in E5M2_SCALES {
        for bits in 0..=u16::MAX {
            let x = half::bf16::from_bits(bits).to_f32();
            check_e5m2(x, scale, &format!("bf16 {bits:#06x}"));
        }
    }
}

#[test]
fn e5m2_encoder_matches_float8_on_f32_samples() {
    // Every 61st f32 bit pattern: all exponents, many mantissas, both signs, NaNs and infinities.
    let mut bits: u32 = 0;
    loop {
        let x = f32::from_bits(bits);
        check_e5m2(x, 1.0, &format!("f32 {bits:#010x}"));
        match bits.checked_add(61) {
            Some(next) => bits = next,
            None => break,
        }
    }
}
