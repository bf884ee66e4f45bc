//! One correctness suite, run against every backend this build has: each backend's caches must
//! equal the CPU reference's byte for byte, starting from poisoned caches, over the whole
//! verification matrix. GPU suites are ignored where they need hardware CI does not have.

use paged_kv_bench::backend::Backend;
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout, Problem};
use paged_kv_bench::verify::{self, Case, Coverage};

/// Checks every case the backend supports and fails with the list of mismatches.
fn check_cases(backend: &mut dyn Backend, cases: &[Case]) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases {
        if !backend.supports(case.problem.layout) {
            continue;
        }
        checked += 1;
        match verify::check(backend, case) {
            Ok(None) => {}
            Ok(Some(mismatch)) => failures.push(format!("{}: {mismatch}", case.problem.describe())),
            Err(error) => failures.push(format!("{}: error: {error}", case.problem.describe())),
        }
    }
    assert!(checked > 0, "no case was checked");
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
        problem: Problem {
            num_tokens,
            num_heads: 128,
            head_size: 128,
            block_size: 16,
            num_blocks: 512,
            dtype,
            cache_dtype,
            layout,
        },
        padding_fraction: 0.05,
        special_values: false,
        seed: 42,
    }
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
                    for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8] {
                        for dtype in [Dtype::BFloat16, Dtype::Half, Dtype::Float] {
                            cases.push(default_shape(layout, dtype, cache_dtype, 4096));
                        }
                    }
                }
                check_cases(open().as_mut(), &cases);
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
        }
    };
}

backend_suite!(
    cpu,
    Box::new(paged_kv_bench::backend::cpu::CpuBackend::new())
);

#[cfg(feature = "cuda")]
backend_suite!(cuda, Box::new(paged_kv_bench::backend::cuda::CudaBackend::open().expect("CUDA")), #[ignore = "needs an NVIDIA GPU"]);

#[cfg(feature = "wgpu")]
backend_suite!(
    wgpu,
    Box::new(
        paged_kv_bench::backend::wgpu::WgpuBackend::open(None, false)
            .expect("a wgpu adapter (install mesa-vulkan-drivers)")
    )
);
