//! CUDA-specific checks beyond the shared suite in `tests/backends.rs`: graph and plain
//! launches, every launch shape and the scalar kernels against the reference, large token
//! counts, cache reuse, out-of-memory errors. (The tuning tables are `examples/tune_cuda.rs`.)
//! All need an NVIDIA GPU, so they are ignored by default:
//! `cargo test --release --test cuda -- --ignored --test-threads 1`.
#![cfg(feature = "cuda")]

mod common;

use common::problem;
use paged_kv_bench::backend::cuda::{CudaBackend, LaunchOverride};
use paged_kv_bench::backend::Backend;
use paged_kv_bench::error::Error;
use paged_kv_bench::options::{CudaTuning, Mode, Options};
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout, Problem};
use paged_kv_bench::timing::{self, Protocol};
use paged_kv_bench::verify::{self, Case, CaseData, CaseInputs, Coverage};
use paged_kv_bench::workload::{self, CacheFill, Inputs, Scaling, SlotPattern};

/// The backend with `options`, its kernels compiled with the `-D` macros in `PKB_TEST_DEFINES`
/// if set (to check a tuning variant before it becomes the default).
fn open_with(options: Options) -> CudaBackend {
    let defines: Vec<String> = std::env::var("PKB_TEST_DEFINES")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let options = Options {
        cuda: CudaTuning {
            defines,
            ..options.cuda
        },
        ..options
    };
    CudaBackend::open(&options).expect("CUDA")
}

fn open() -> CudaBackend {
    open_with(Options::default())
}

fn case(problem: Problem, special_values: bool) -> Case {
    Case {
        problem,
        padding_fraction: 0.1,
        special_values,
        seed: 5,
        qkv_fused: None,
        scaling: Scaling::PerTensor,
        slots: SlotPattern::Random,
    }
}

/// Checks `cases` and fails with every mismatch.
fn check_all(backend: &mut CudaBackend, cases: &[Case], label: &str) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| match verify::check(backend, case) {
            Ok(None) => None,
            Ok(Some(m)) => Some(format!("{label}: {}: {m}", case.problem.describe())),
            Err(e) => Some(format!(
                "{label}: {}: error: {}",
                case.problem.describe(),
                e.one_line()
            )),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn graph_and_plain_launches_leave_the_reference_result() {
    // With and without programmatic dependent launch (the default on compute capability 9.0
    // and later; a no-op request below it).
    for (programmatic, mode) in [
        (true, Mode::Cudagraph),
        (true, Mode::NoGraph),
        (false, Mode::Cudagraph),
        (false, Mode::NoGraph),
    ] {
        let mut backend = open_with(Options {
            mode,
            cuda: CudaTuning {
                programmatic_launch: Some(programmatic),
                ..CudaTuning::default()
            },
            ..Options::default()
        });
        assert!(!backend.programmatic_launch() || programmatic);
        for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8] {
            for layout in [Layout::Nhd, Layout::Hnd] {
                let p = problem()
                    .tokens(300)
                    .heads(4)
                    .cache_dtype(cache_dtype)
                    .layout(layout)
                    .build();
                let case = case(p, true);
                let data = CaseData::new(&case).unwrap();
                let got = {
                    let mut call = backend
                        .prepare(&case.problem, data.inputs(), CacheFill::Copy(&data.initial))
                        .unwrap();
                    let protocol = Protocol::new(5);
                    let slots = data.inputs().slot_mapping.to_vec();
                    let samples =
                        timing::measure(call.as_mut(), &case.problem, &slots, &protocol).unwrap();
                    assert!(samples.latency_us > 0.0);
                    assert!(samples.device_us.len() >= protocol.sampling.min_samples);
                    assert!(samples.device_us.iter().all(|t| *t > 0.0));
                    call.read_back().unwrap()
                };
                let mismatch = verify::compare(&case.problem, &data, &got);
                assert!(
                    mismatch.is_none(),
                    "{mode:?} (programmatic launch {programmatic}) {}: {}",
                    case.problem.describe(),
                    mismatch.unwrap()
                );
            }
        }
    }
}

/// Every half and bfloat16 bit pattern (and 65536 random float bit patterns), through the fp8
/// path with scales inside the fast conversion's range (among them scales with few significant
/// bits, whose quotients hit e4m3 ties exactly, and both ends of the range) and outside it
/// (just beyond both ends, tiny, huge and negative scales), on the 16-byte and scalar kernels,
/// and with a grid small enough that blocks loop.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_conversion_is_exact_for_every_input_pattern() {
    every_pattern(CacheDtype::Fp8, false, &[]);
}

/// As `fp8_conversion_is_exact_for_every_input_pattern`, for e5m2 (with the ends of its own
/// fast range, 2^-82 and 2^100, and just beyond them) and for both formats with per-head
/// scales (four heads, each its own scale from the list, rotated from case to case).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fp8_e5m2_and_per_head_conversions_are_exact_for_every_input_pattern() {
    let e5m2_range = [f32::from_bits(0x1680_0000), f32::from_bits(0x1680_0000 - 1)];
    every_pattern(CacheDtype::Fp8E5m2, false, &e5m2_range);
    every_pattern(CacheDtype::Fp8E5m2, true, &e5m2_range);
    every_pattern(CacheDtype::Fp8, true, &[]);
}

/// Every half and bfloat16 pattern (65536 random floats) through `cache_dtype` with every scale
/// of the list (and `extra_scales`), per tensor or per head, on the 16-byte and scalar kernels
/// and a looping grid.
fn every_pattern(cache_dtype: CacheDtype, per_head: bool, extra_scales: &[f32]) {
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
        // Few significant bits: many exact ties (11 / 128 is the benchmark's default k_scale).
        11.0 / 128.0,
        0.25,
        // The ends of the fast range, and just beyond them.
        f32::from_bits(0x1300_0000),
        f32::from_bits(0x1300_0000 - 1),
        f32::from_bits(0x7180_0000),
        f32::from_bits(0x7180_0000 + 1),
    ];
    // Scales that make the division invalid (0 / 0, inf / inf, NaN): the reference's NaN sign
    // then follows the host's division, which the kernels follow on x86 hosts.
    #[cfg(target_arch = "x86_64")]
    let scales = [&scales[..], &[0.0, f32::INFINITY, f32::NAN, -f32::NAN]].concat();
    let scales = [&scales[..], extra_scales].concat();
    // Per head: 4 heads of 128, each its own scale.
    let heads = if per_head { 4 } else { 1 };
    let mut failures = Vec::new();
    for dtype in [Dtype::Half, Dtype::BFloat16, Dtype::Float] {
        let elements = 65536usize;
        let size = dtype.size();
        let problem = problem()
            .tokens(elements / 128 / heads)
            .heads(heads)
            .blocks(elements / 128 / heads / 16 + 3)
            .dtype(dtype)
            .cache_dtype(cache_dtype)
            .build();
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
        for (i, &k_scale) in scales.iter().enumerate() {
            let initial = paged_kv_bench::workload::Caches {
                key: workload::random_bytes(problem.cache_bytes() as usize, 1),
                value: workload::random_bytes(problem.cache_bytes() as usize, 2),
            };
            let head_scales = |offset: usize, factor: f32| -> Vec<f32> {
                if !per_head {
                    return Vec::new();
                }
                (0..heads)
                    .map(|h| scales[(i + offset + 3 * h) % scales.len()] * factor)
                    .collect()
            };
            let mut data = CaseData {
                host: CaseInputs {
                    key: key.clone(),
                    value: value.clone(),
                    slot_mapping: slot_mapping.clone(),
                    k_scale,
                    v_scale: k_scale * 1.5,
                    k_head_scales: head_scales(0, 1.0),
                    v_head_scales: head_scales(1, 1.5),
                },
                expected: initial.clone(),
                initial,
            };
            let mut expected = data.initial.clone();
            paged_kv_bench::reference::reshape_and_cache(&problem, &data.inputs(), &mut expected);
            data.expected = expected;
            for (kernel, forced) in [
                ("vector", LaunchOverride::default()),
                // Half's small calls take kernels of their own (_x1_small): this call is one.
                (
                    "vector, large-call kernel",
                    LaunchOverride {
                        large_kernels: true,
                        ..LaunchOverride::default()
                    },
                ),
                (
                    "scalar",
                    LaunchOverride {
                        scalar: true,
                        ..LaunchOverride::default()
                    },
                ),
                (
                    "grid loop",
                    LaunchOverride {
                        threads: 64,
                        items_per_thread: 2,
                        blocks_per_sm: 1,
                        ..LaunchOverride::default()
                    },
                ),
            ] {
                backend.force_launch(Some(forced));
                let got = {
                    let mut call = backend
                        .prepare(&problem, data.inputs(), CacheFill::Copy(&data.initial))
                        .unwrap();
                    call.run().unwrap();
                    call.read_back().unwrap()
                };
                if let Some(m) = verify::compare(&problem, &data, &got) {
                    failures.push(format!(
                        "{} {cache_dtype} per_head={per_head} scale {k_scale:e} (heads {:?}) \
                         {kernel}: {m}",
                        dtype.name(),
                        data.host.k_head_scales
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
    let shape = |threads, items_per_thread, blocks_per_sm| LaunchOverride {
        threads,
        items_per_thread,
        blocks_per_sm,
        ..LaunchOverride::default()
    };
    for forced in [
        LaunchOverride {
            scalar: true,
            ..LaunchOverride::default()
        },
        shape(32, 1, 0),
        // The large-call kernels of one item per thread on the small calls too.
        LaunchOverride {
            large_kernels: true,
            ..LaunchOverride::default()
        },
        shape(96, 3, 0),
        shape(512, 4, 0),
        LaunchOverride {
            scalar: true,
            ..shape(512, 2, 0)
        },
        // Capped grids: blocks loop over several passes.
        shape(96, 3, 1),
        shape(64, 1, 1),
        LaunchOverride {
            scalar: true,
            ..shape(64, 2, 1)
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
                let p = problem()
                    .tokens(77)
                    .heads(3)
                    .head_size(head_size)
                    .dtype(dtype)
                    .layout(layout)
                    .build();
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
            let p = problem()
                .tokens(70_001)
                .heads(1)
                .head_size(64)
                .dtype(Dtype::Half)
                .cache_dtype(cache_dtype)
                .hnd()
                .build();
            case(p, false)
        })
        .collect();
    check_all(&mut backend, &cases, "70001 tokens");
    backend.force_launch(Some(LaunchOverride {
        threads: 32,
        items_per_thread: 1,
        scalar: true,
        ..LaunchOverride::default()
    }));
    check_all(&mut backend, &cases, "70001 tokens, scalar");
    backend.force_launch(Some(LaunchOverride {
        threads: 256,
        items_per_thread: 2,
        blocks_per_sm: 2,
        ..LaunchOverride::default()
    }));
    check_all(&mut backend, &cases, "70001 tokens, capped grid");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn random_fill_is_kept_and_reused() {
    let mut backend = open();
    let p = problem().tokens(64).heads(4).dtype(Dtype::Half).build();
    let key = workload::random_bytes(p.input_bytes() as usize, 1);
    let slots: Vec<i64> = vec![-1; p.num_tokens];
    let inputs = Inputs {
        key: &key,
        value: &key,
        slot_mapping: &slots,
        k_scale: 1.0.into(),
        v_scale: 1.0.into(),
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
    let p = problem()
        .heads(64)
        .blocks((free / (16 * 64 * 128 * 4)) as usize + 1000)
        .dtype(Dtype::Float)
        .build();
    let key = vec![0u8; p.input_bytes() as usize];
    let inputs = Inputs {
        key: &key,
        value: &key,
        slot_mapping: &[0],
        k_scale: 1.0.into(),
        v_scale: 1.0.into(),
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
            problem()
                .tokens(10)
                .heads(4)
                .dtype(Dtype::Half)
                .fp8()
                .build(),
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

/// The fp8 kernels' reciprocal of the scale (`make_scale` in the kernel source: the fast path of
/// `rcp.rn` without its range check) is the IEEE reciprocal, bit for bit, for every float scale
/// in the fast conversion's range (2^-89 to 2^100, which holds e5m2's): 1.6 billion scales on
/// the GPU, against `rcp.rn.f32` on the same GPU.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn the_scale_reciprocal_is_the_ieee_one_over_the_fast_range() {
    use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
    use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
    const SOURCE: &str = include_str!("../kernels/reshape_and_cache_flash.cu");
    // Everything up to the items: the scale, the conversions, none of the kernels.
    const ITEMS: &str = "// Items: how one unit of work";
    let prefix = &SOURCE[..SOURCE
        .find(ITEMS)
        .expect("the items section of the kernel source")];
    let program = format!(
        "{prefix}\n{}",
        r#"
extern "C" __global__ void reciprocal_mismatches(u32 first, u32 count, u32* out) {
    const u32 stride = gridDim.x * blockDim.x;
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        const float s = __uint_as_float(first + i);
        float want;
        asm("rcp.rn.f32 %0, %1;" : "=f"(want) : "f"(s));
        const float got = make_scale<E4M3>(s).inverse;
        if (__float_as_uint(got) != __float_as_uint(want) && atomicAdd(out, 1u) == 0) {
            out[1] = first + i;
        }
    }
}
"#
    );
    let ctx = CudaContext::new(0).expect("CUDA");
    let (major, minor) = ctx.compute_capability().expect("compute capability");
    let ptx = compile_ptx_with_opts(
        program,
        CompileOptions {
            ftz: Some(false),
            prec_div: Some(true),
            options: vec![
                format!("--gpu-architecture=compute_{major}{minor}"),
                "--std=c++17".into(),
            ],
            ..CompileOptions::default()
        },
    )
    .expect("NVRTC");
    let module = ctx.load_module(ptx).expect("module");
    let function = module.load_function("reciprocal_mismatches").unwrap();
    let stream = ctx.default_stream();
    let (first, last) = (0x1300_0000u32, 0x7180_0000u32);
    let count = last - first + 1;
    let mut out = stream.alloc_zeros::<u32>(2).unwrap();
    let mut launch = stream.launch_builder(&function);
    launch.arg(&first).arg(&count).arg(&mut out);
    // SAFETY: the kernel takes (u32, u32, u32*) and writes out[0..2] only.
    unsafe { launch.launch(LaunchConfig::for_num_elems(1 << 22)) }.unwrap();
    let out = stream.clone_dtoh(&out).unwrap();
    assert_eq!(
        out[0],
        0,
        "{} scales in [2^-89, 2^100] whose reciprocal differs from rcp.rn, the first found {:e}",
        out[0],
        f32::from_bits(out[1])
    );
}

// ---------------------------------------------------------------------------------------------
// Tables, run by hand on a GPU (they print; they assert nothing about speed).

/// The fp8 kernels' division-free conversion (`quotient4` in the kernel source), replayed on the
/// CPU with the same IEEE single-precision operations, against the reference's division: every
/// bfloat16 and half input at scales across the fast range (powers of two and scales with few
/// significant bits, whose quotients hit e4m3 ties exactly, both ends of the range, and random
/// ones). The GPU test above checks the kernels themselves; this one covers far more scales.
#[test]
fn fp8_division_free_conversion_matches_the_division() {
    use paged_kv_bench::fp8::{e4m3_from_f32, quantize};
    use paged_kv_bench::problem::Dtype;
    fn kernel(x: f32, scale: f32, inverse: f32) -> u8 {
        let a = x.abs();
        // f32::min returns the other operand for NaN, as CUDA's fminf does.
        let q0 = (a * inverse).min(1048576.0);
        let r = (-q0).mul_add(scale, a);
        let q1 = r.mul_add(inverse, q0);
        e4m3_from_f32(q1) | ((x.to_bits() >> 24) & 0x80) as u8
    }
    let (low, high) = (2f32.powi(-89), 2f32.powi(100));
    let mut scales = vec![low, high, 11.0 / 128.0, 1.0, 3.0, 0.05];
    // Significands of 1 to 5 bits at exponents across the range.
    for significand in 1u32..32 {
        for exponent in (-89..=95).step_by(7) {
            scales.push(significand as f32 * 2f32.powi(exponent));
        }
    }
    let mut x = 0x2545_f491u32;
    for _ in 0..64 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        scales.push(f32::from_bits(
            0x1300_0000 + x % (0x7180_0000 - 0x1300_0000),
        ));
    }
    scales.retain(|s| (low..=high).contains(s));
    let inputs: Vec<f32> = (0..=u16::MAX)
        .flat_map(|bits| {
            let bytes = bits.to_le_bytes();
            [
                Dtype::BFloat16.read_f32(&bytes, 0),
                Dtype::Half.read_f32(&bytes, 0),
            ]
        })
        .collect();
    let mut mismatches = Vec::new();
    for &scale in &scales {
        let inverse = 1.0 / scale;
        for &x in &inputs {
            let (got, want) = (kernel(x, scale, inverse), quantize(x, scale));
            if got != want && mismatches.len() < 10 {
                mismatches.push(format!(
                    "x {x:e} scale {scale:e}: {got:#04x}, want {want:#04x}"
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
