//! Checks of the WGSL fp8 encoders against `Fp8Format::quantize`, for tests/wgpu.rs (e4m3) and
//! tests/wgpu_workloads.rs (e5m2): the scales and estimate skews to try, the mismatches of the
//! plain and the threshold-table encoder, and a check of verification cases.

use paged_kv_bench::backend::wgpu::WgpuBackend;
use paged_kv_bench::backend::Backend;
use paged_kv_bench::problem::{Dtype, Fp8Format};
use paged_kv_bench::verify::{self, Case};

/// Scales the encoder must get right: 1, the benchmark's typical max/64 of normal data,
/// awkward fractions, tiny and huge (both far from 1 in exponent, one subnormal), negative,
/// and the degenerate ones.
pub const SCALES: [f32; 14] = [
    1.0,
    0.0703125 * 1.01,
    0.07,
    1.0 / 3.0,
    3.7,
    1.0e-30,
    f32::from_bits(0x0000_4321),
    7.1e25,
    3.0e38,
    -0.37,
    0.0,
    f32::INFINITY,
    f32::NAN,
    -f32::NAN,
];

/// Skews of the encoder's quotient estimate to test with: none (this adapter's own division),
/// and estimates off by up to 255 ULP either way, which stand for a GPU whose division is far
/// worse than WGSL's 2.5 ULP (lavapipe's division is correctly rounded, so without skews the
/// exact correction would hardly be exercised here).
pub const SKEWS: [i32; 5] = [0, 1, -2, 255, -255];

/// The value of an input element given as its bits.
pub fn value_of(dtype: Dtype, bits: u32) -> f32 {
    match dtype {
        Dtype::Half => half::f16::from_bits(bits as u16).to_f32(),
        Dtype::BFloat16 => half::bf16::from_bits(bits as u16).to_f32(),
        Dtype::Float => f32::from_bits(bits),
    }
}

/// The inputs (as descriptions) whose codes in `got` differ from `format.quantize`.
pub fn mismatches(
    format: Fp8Format,
    dtype: Dtype,
    elements: &[u32],
    scale: f32,
    got: &[u8],
    which: &str,
) -> Vec<String> {
    assert_eq!(got.len(), elements.len());
    elements
        .iter()
        .zip(got)
        .filter_map(|(&bits, &code)| {
            let x = value_of(dtype, bits);
            let expected = format.quantize(x, scale);
            (code != expected).then(|| {
                format!(
                    "{bits:#x} ({x:e}) / {scale:e}: expected {expected:#04x}, got {code:#04x}{which}"
                )
            })
        })
        .collect()
}

/// The inputs whose encoding by the shader's encoders without tables differs from
/// `format.quantize`, each encoder's on its own, tagged: the one of calls without tables (the
/// short one where it handles the scale; tag "") and the long one alone (" (long encoder)").
pub fn plain_encoder_mismatches(
    backend: &mut WgpuBackend,
    format: Fp8Format,
    dtype: Dtype,
    elements: &[u32],
    scale: f32,
    skew: i32,
) -> [(&'static str, Vec<String>); 2] {
    let short = backend
        .encode_fp8_as(format, dtype, elements, scale, skew)
        .expect("encode");
    let long = backend
        .encode_fp8_long_as(format, dtype, elements, scale, skew)
        .expect("encode by the long encoder");
    [(short, ""), (long, " (long encoder)")].map(|(got, which)| {
        (
            which,
            mismatches(format, dtype, elements, scale, &got, which),
        )
    })
}

/// Fails unless each encoder without tables gets some of `elements` wrong with its estimate
/// skewed by `skew` ULP: the comparison has teeth for each of them.
pub fn assert_each_plain_encoder_sees_skew(
    backend: &mut WgpuBackend,
    format: Fp8Format,
    dtype: Dtype,
    elements: &[u32],
    scale: f32,
    skew: i32,
) {
    for (which, bad) in plain_encoder_mismatches(backend, format, dtype, elements, scale, skew) {
        assert!(
            !bad.is_empty(),
            "a {skew}-ULP estimate went unnoticed{which}"
        );
    }
}

/// The inputs whose encoding by the shader differs from `format.quantize`, by each of the
/// shader's encoders: the one of calls without tables (the short one where it handles the
/// scale), the long one alone, and the threshold-table one (where it handles the scale).
pub fn encoder_mismatches(
    backend: &mut WgpuBackend,
    format: Fp8Format,
    dtype: Dtype,
    elements: &[u32],
    scale: f32,
    skew: i32,
) -> Vec<String> {
    let mut bad: Vec<String> =
        plain_encoder_mismatches(backend, format, dtype, elements, scale, skew)
            .into_iter()
            .flat_map(|(_, bad)| bad)
            .collect();
    if let Some(got) = backend
        .encode_fp8_table_as(format, dtype, elements, scale, skew)
        .expect("encode by tables")
    {
        bad.extend(mismatches(
            format,
            dtype,
            elements,
            scale,
            &got,
            " (tables)",
        ));
    }
    bad
}

/// Fails with the first mismatches of [`encoder_mismatches`].
pub fn check_encoder(
    backend: &mut WgpuBackend,
    format: Fp8Format,
    dtype: Dtype,
    elements: &[u32],
    scale: f32,
    skew: i32,
) {
    let bad = encoder_mismatches(backend, format, dtype, elements, scale, skew);
    assert!(
        bad.is_empty(),
        "{} {} with the estimate skewed by {skew} ULP: {} of {} inputs differ, e.g.\n{}",
        format.name(),
        dtype.name(),
        bad.len(),
        elements.len(),
        bad[..bad.len().min(20)].join("\n")
    );
}

/// Checks cases and fails with every mismatch.
pub fn check(backend: &mut dyn Backend, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        match verify::check(backend, case) {
            Ok(None) => {}
            Ok(Some(mismatch)) => failures.push(format!("{case}: {mismatch}")),
            Err(error) => failures.push(format!("{case}: error: {}", error.one_line())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
