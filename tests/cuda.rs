//! CUDA-specific checks beyond the shared suite in `tests/backends.rs`: graph and plain
//! launches, every launch shape and the scalar kernels against the reference, large token
//! counts, cache reuse, out-of-memory errors; and, run by hand, timing and tuning tables.
//! All need an NVIDIA GPU, so they are ignored by default:
//! `cargo test --release --test cuda -- --ignored --test-threads 1`.
#![cfg(feature = "cuda")]

use paged_kv_bench::backend::cuda::{CudaBackend, LaunchOverride};
use paged_kv_bench::backend::Backend;
use paged_kv_bench::error::Error;
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout, Problem};
use paged_kv_bench::timing::{Mode, Protocol, Stats};
use paged_kv_bench::verify::{self, Case, CaseData, Coverage};
use paged_kv_bench::workload::{self, CacheFill, Inputs};

fn open() -> CudaBackend {
    CudaBackend::open().expect("CUDA")
}

fn case(problem: Problem, special_values: bool) -> Case {
    Case {
        problem,
        padding_fraction: 0.1,
        special_values,
        seed: 5,
    }
}

fn problem(layout: Layout, dtype: Dtype, cache_dtype: CacheDtype, tokens: usize) -> Problem {
    Problem {
        num_tokens: tokens,
        num_heads: 4,
        head_size: 128,
        block_size: 16,
        num_blocks: (2 * tokens).div_ceil(16) + 1,
        dtype,
        cache_dtype,
        layout,
    }
}

/// Checks `cases` and fails with every mismatch.
fn check_all(backend: &mut CudaBackend, cases: &[Case], label: &str) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| match verify::check(backend, case) {
            Ok(None) => None,
            Ok(Some(m)) => Some(format!("{label}: {}: {m}", case.problem.describe())),
            Err(e) => Some(format!("{label}: {}: error: {e}", case.problem.describe())),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn graph_and_plain_launches_leave_the_reference_result() {
    let mut backend = open();
    for mode in [Mode::Cudagraph, Mode::NoGraph] {
        for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8] {
            for layout in [Layout::Nhd, Layout::Hnd] {
                let case = case(problem(layout, Dtype::BFloat16, cache_dtype, 300), true);
                let data = CaseData::new(&case).unwrap();
                let got = {
                    let mut call = backend
                        .prepare(&case.problem, data.inputs(), CacheFill::Copy(&data.initial))
                        .unwrap();
                    let samples = call.time(&Protocol::new(mode, 5)).unwrap();
                    assert!(samples.latency_us > 0.0);
                    assert!(samples.device_us.len() >= Protocol::new(mode, 5).sampling.min_samples);
                    assert!(samples.device_us.iter().all(|t| *t > 0.0));
                    call.read_back().unwrap()
                };
                let mismatch = verify::compare(&case.problem, &data, &got);
                assert!(
                    mismatch.is_none(),
                    "{mode:?} {}: {}",
                    case.problem.describe(),
                    mismatch.unwrap()
                );
            }
        }
    }
}

/// Every half and bfloat16 bit pattern (and 65536 random float bit patterns), through the fp8
/// path with scales that make the fast conversion decide, fall back at ties, or stay out of it
/// (tiny, huge and negative scales), on both the 16-byte and the scalar kernels.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_conversion_is_exact_for_every_input_pattern() {
    let mut backend = open();
    let scales = [
        1.0f32,
        0.05,
        2.5 / 64.0,
        3.0,
        1.0 / 3.0,
        448.0 / 65504.0,
        0.001,
        f32::from_bits(0x3d4c_cccd) * 7.0,
        1.0e-30,
        f32::from_bits(0x0000_1234),
        3.0e38,
        -0.5,
    ];
    // Scales that make the division invalid (0 / 0, inf / inf, NaN): the reference's NaN sign
    // then follows the host's division, which the kernels follow on x86 hosts.
    #[cfg(target_arch = "x86_64")]
    let scales = [&scales[..], &[0.0, f32::INFINITY, f32::NAN, -f32::NAN]].concat();
    let mut failures = Vec::new();
    for dtype in [Dtype::Half, Dtype::BFloat16, Dtype::Float] {
        let elements = 65536usize;
        let size = dtype.size();
        let problem = Problem {
            num_tokens: elements / 128,
            num_heads: 1,
            head_size: 128,
            block_size: 16,
            num_blocks: elements / 128 / 16 + 3,
            dtype,
            cache_dtype: CacheDtype::Fp8,
            layout: Layout::Nhd,
        };
        let (key, value) = if size == 2 {
            let key: Vec<u8> = (0..elements as u32)
                .flat_map(|i| (i as u16).to_le_bytes())
                .collect();
            let value: Vec<u8> = (0..elements as u32)
                .flat_map(|i| ((i as u16) ^ 0x8001).to_le_bytes())
                .collect();
            (key, value)
        } else {
            (
                workload::random_bytes(elements * 4, 21),
                workload::random_bytes(elements * 4, 22),
            )
        };
        let slot_mapping: Vec<i64> = (0..problem.num_tokens as i64).rev().collect();
        for &k_scale in &scales {
            let initial = paged_kv_bench::workload::Caches {
                key: workload::random_bytes(problem.cache_bytes() as usize, 1),
                value: workload::random_bytes(problem.cache_bytes() as usize, 2),
            };
            let mut data = CaseData {
                key: key.clone(),
                value: value.clone(),
                slot_mapping: slot_mapping.clone(),
                k_scale,
                v_scale: k_scale * 1.5,
                expected: initial.clone(),
                initial,
            };
            let mut expected = data.initial.clone();
            paged_kv_bench::reference::reshape_and_cache(&problem, &data.inputs(), &mut expected);
            data.expected = expected;
            for scalar in [false, true] {
                backend.force_launch(Some(LaunchOverride {
                    threads: 0,
                    items_per_thread: 0,
                    scalar,
                }));
                let got = {
                    let mut call = backend
                        .prepare(&problem, data.inputs(), CacheFill::Copy(&data.initial))
                        .unwrap();
                    call.run().unwrap();
                    call.read_back().unwrap()
                };
                if let Some(m) = verify::compare(&problem, &data, &got) {
                    failures.push(format!(
                        "{} scale {k_scale:e} scalar {scalar}: {m}",
                        dtype.name()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn every_launch_shape_and_the_scalar_kernels_match_the_reference() {
    let mut backend = open();
    let cases: Vec<Case> = verify::matrix(Coverage::Quick, 3);
    for forced in [
        LaunchOverride {
            threads: 0,
            items_per_thread: 0,
            scalar: true,
        },
        LaunchOverride {
            threads: 32,
            items_per_thread: 1,
            scalar: false,
        },
        LaunchOverride {
            threads: 96,
            items_per_thread: 3,
            scalar: false,
        },
        LaunchOverride {
            threads: 512,
            items_per_thread: 4,
            scalar: false,
        },
        LaunchOverride {
            threads: 512,
            items_per_thread: 2,
            scalar: true,
        },
    ] {
        backend.force_launch(Some(forced));
        check_all(&mut backend, &cases, &format!("{forced:?}"));
    }
    // Head sizes without 16-byte rows take the scalar kernels on their own.
    backend.force_launch(None);
    let mut odd = Vec::new();
    for layout in [Layout::Nhd, Layout::Hnd] {
        for dtype in [Dtype::Half, Dtype::BFloat16, Dtype::Float] {
            for head_size in [1, 7, 33, 100] {
                let p = Problem {
                    head_size,
                    num_heads: 3,
                    ..problem(layout, dtype, CacheDtype::Auto, 77)
                };
                odd.push(case(p, false));
            }
        }
    }
    check_all(&mut backend, &odd, "odd head sizes");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn more_than_65535_tokens_in_one_launch() {
    let mut backend = open();
    let cases: Vec<Case> = [CacheDtype::Auto, CacheDtype::Fp8]
        .into_iter()
        .map(|cache_dtype| {
            let p = Problem {
                num_heads: 1,
                head_size: 64,
                ..problem(Layout::Hnd, Dtype::Half, cache_dtype, 70_001)
            };
            case(p, false)
        })
        .collect();
    check_all(&mut backend, &cases, "70001 tokens");
    backend.force_launch(Some(LaunchOverride {
        threads: 32,
        items_per_thread: 1,
        scalar: true,
    }));
    check_all(&mut backend, &cases, "70001 tokens, scalar");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn random_fill_is_kept_and_reused() {
    let mut backend = open();
    let p = problem(Layout::Nhd, Dtype::Half, CacheDtype::Auto, 64);
    let key = workload::random_bytes(p.input_bytes() as usize, 1);
    let slots: Vec<i64> = vec![-1; p.num_tokens];
    let inputs = Inputs {
        key: &key,
        value: &key,
        slot_mapping: &slots,
        k_scale: 1.0,
        v_scale: 1.0,
    };
    let read = |backend: &mut CudaBackend, seed| {
        let mut call = backend
            .prepare(&p, inputs, CacheFill::Random { seed })
            .unwrap();
        call.run().unwrap();
        call.read_back().unwrap()
    };
    let first = read(&mut backend, 9);
    assert_ne!(first.key, first.value);
    assert!(first.key.iter().filter(|b| **b == 0).count() < first.key.len() / 100);
    assert_eq!(read(&mut backend, 9), first);
    assert_ne!(read(&mut backend, 10).key, first.key);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn caches_larger_than_the_gpu_are_a_clean_error() {
    let mut backend = open();
    let free = backend.device_memory().unwrap();
    let p = Problem {
        num_tokens: 1,
        num_heads: 64,
        head_size: 128,
        block_size: 16,
        num_blocks: (free / (16 * 64 * 128 * 4)) as usize + 1000,
        dtype: Dtype::Float,
        cache_dtype: CacheDtype::Auto,
        layout: Layout::Nhd,
    };
    let key = vec![0u8; p.input_bytes() as usize];
    let inputs = Inputs {
        key: &key,
        value: &key,
        slot_mapping: &[0],
        k_scale: 1.0,
        v_scale: 1.0,
    };
    let error = backend
        .prepare(&p, inputs, CacheFill::Random { seed: 1 })
        .err()
        .expect("must not fit");
    assert!(matches!(error, Error::DoesNotFit { .. }), "{error}");
    assert!(!error.to_string().contains('\n'));
    eprintln!("{error}");
    // The backend still works afterwards.
    check_all(
        &mut backend,
        &[case(
            problem(Layout::Nhd, Dtype::Half, CacheDtype::Fp8, 10),
            false,
        )],
        "after OOM",
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn copy_bandwidth_is_measured() {
    let mut backend = open();
    let gbps = backend.copy_bandwidth_gbps().unwrap().expect("measured");
    eprintln!("copy bandwidth {gbps:.0} GB/s on {}", backend.device().name);
    assert!(gbps > 0.0 && gbps.is_finite());
}

// ---------------------------------------------------------------------------------------------
// Tables, run by hand on a GPU (they print; they assert nothing about speed).

/// The benchmark's default shape (65536 blocks x 16 slots x 128 heads x 128) at `tokens`.
fn default_problem(layout: Layout, cache_dtype: CacheDtype, tokens: usize) -> Problem {
    Problem {
        num_tokens: tokens,
        num_heads: 128,
        head_size: 128,
        block_size: 16,
        num_blocks: 65536,
        dtype: Dtype::BFloat16,
        cache_dtype,
        layout,
    }
}

struct Bench {
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Bench {
    /// Random bits as inputs (fast to make; the values do not change the speed), for up to
    /// `tokens` tokens of the default shape.
    fn new(tokens: usize) -> Self {
        let bytes = tokens * 128 * 128 * 2;
        Self {
            key: workload::random_bytes(bytes, 1),
            value: workload::random_bytes(bytes, 2),
        }
    }

    fn row(&self, backend: &mut CudaBackend, p: &Problem, mode: Mode, copy: f64) -> String {
        let slots = workload::random_slot_mapping(p.num_slots(), p.num_tokens, 0.0, 3);
        let len = p.input_bytes() as usize;
        let inputs = Inputs {
            key: &self.key[..len],
            value: &self.value[..len],
            slot_mapping: &slots,
            k_scale: 0.05,
            v_scale: 0.07,
        };
        let mut call = match backend.prepare(p, inputs, CacheFill::Random { seed: 11 }) {
            Ok(call) => call,
            Err(e) => return format!("error: {e}"),
        };
        let samples = match call.time(&Protocol::new(mode, 100)) {
            Ok(samples) => samples,
            Err(e) => return format!("error: {e}"),
        };
        let s: Stats = samples.device_stats();
        let gbps = p.bytes_moved() as f64 / (s.median * 1e-6) / 1e9;
        format!(
            "{:>6} {:>4} {:>5} {:>10} {:>9.2} {:>9.3} {:>6.1}% {:>8.0} {:>6.1}%",
            p.num_tokens,
            p.layout.name(),
            p.cache_dtype.name(),
            mode.name(),
            samples.latency_us,
            s.median,
            s.noise_percent,
            gbps,
            gbps / copy * 100.0
        )
    }
}

const HEADER: &str = "tokens  lay cache       mode   lat_us  device_us  noise     GB/s  %copy";

#[test]
#[ignore = "prints a timing table; needs an NVIDIA GPU"]
fn cuda_timings() {
    let start = std::time::Instant::now();
    let mut backend = open();
    println!(
        "open (context + NVRTC compile + module load): {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let copy = backend.copy_bandwidth_gbps().unwrap().unwrap();
    println!(
        "device: {} ({})",
        backend.device().name,
        backend.device().details
    );
    println!("copy ceiling: {copy:.0} GB/s (read + written)");
    println!("{}", backend.mode_note(Mode::Cudagraph));
    let max_tokens = std::env::var("PKB_MAX_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(65536);
    let bench = Bench::new(max_tokens);
    println!("{HEADER}");
    for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8] {
        for layout in [Layout::Nhd, Layout::Hnd] {
            for tokens in [1, 2, 16, 64, 256, 1024, 8192, 65536] {
                if tokens > max_tokens {
                    continue;
                }
                let p = default_problem(layout, cache_dtype, tokens);
                println!("{}", bench.row(&mut backend, &p, Mode::Cudagraph, copy));
                if tokens == 2 || tokens == 8192 {
                    println!("{}", bench.row(&mut backend, &p, Mode::NoGraph, copy));
                }
            }
        }
    }
}

#[test]
#[ignore = "prints a tuning table; needs an NVIDIA GPU"]
fn cuda_tuning() {
    let max_tokens = std::env::var("PKB_MAX_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8192);
    let bench = Bench::new(max_tokens);
    let variants: Vec<Vec<String>> = std::env::var("PKB_DEFINES")
        .unwrap_or_else(|_| "RCF_LOAD=2 RCF_STORE=0".into())
        .split(';')
        .map(|v| v.split_whitespace().map(String::from).collect())
        .collect();
    for defines in variants {
        let mut backend = CudaBackend::open_with_defines(&defines).unwrap();
        println!("== defines {defines:?}");
        let only = std::env::var("PKB_TUNE_CACHE").unwrap_or_else(|_| "auto fp8 copy".into());
        for bytes in [2u64 << 30, 4 << 30] {
            if !only.contains("copy") {
                break;
            }
            for (threads, blocks) in [(128, 0), (256, 0), (512, 0), (1024, 0), (256, 132 * 8)] {
                let gbps = backend.measure_copy(bytes, threads, blocks, 5).unwrap();
                println!(
                    "copy {} GiB threads {threads} blocks {blocks}: {gbps:.0} GB/s",
                    bytes >> 30
                );
            }
        }
        let copy = backend.copy_bandwidth_gbps().unwrap().unwrap();
        println!("copy ceiling {copy:.0} GB/s");
        let again = backend.copy_bandwidth_gbps().unwrap().unwrap();
        println!("copy ceiling again {again:.0} GB/s");
        println!("{HEADER} shape");
        // The floor: one token of one 64-element head, so the call is all launch and latency.
        for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8] {
            let tiny = Problem {
                num_heads: 1,
                head_size: 64,
                ..default_problem(Layout::Nhd, cache_dtype, 1)
            };
            backend.force_launch(None);
            println!(
                "{} tiny (1 head of 64)",
                bench.row(&mut backend, &tiny, Mode::Cudagraph, copy)
            );
        }
        for (layout, cache_dtype, tokens) in [
            (Layout::Nhd, CacheDtype::Auto, 2),
            (Layout::Nhd, CacheDtype::Auto, 16),
            (Layout::Nhd, CacheDtype::Auto, 64),
            (Layout::Hnd, CacheDtype::Auto, 64),
            (Layout::Nhd, CacheDtype::Auto, 256),
            (Layout::Nhd, CacheDtype::Auto, 1024),
            (Layout::Nhd, CacheDtype::Auto, 8192),
            (Layout::Hnd, CacheDtype::Auto, 8192),
            (Layout::Nhd, CacheDtype::Fp8, 2),
            (Layout::Nhd, CacheDtype::Fp8, 64),
            (Layout::Nhd, CacheDtype::Fp8, 1024),
            (Layout::Nhd, CacheDtype::Fp8, 8192),
            (Layout::Hnd, CacheDtype::Fp8, 8192),
        ] {
            if tokens > max_tokens || !only.contains(cache_dtype.name()) {
                continue;
            }
            let p = default_problem(layout, cache_dtype, tokens);
            for (threads, items) in [
                (0, 0),
                (128, 1),
                (128, 2),
                (256, 2),
                (128, 4),
                (256, 4),
                (512, 4),
            ] {
                backend.force_launch(Some(LaunchOverride {
                    threads,
                    items_per_thread: items,
                    scalar: false,
                }));
                println!(
                    "{} t{threads} i{items}",
                    bench.row(&mut backend, &p, Mode::Cudagraph, copy)
                );
            }
        }
    }
}
