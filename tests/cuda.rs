//! CUDA-specific checks beyond the shared suite in `tests/backends.rs`: graph and plain
//! launches, every launch shape and the scalar kernels against the reference, large token
//! counts, cache reuse, out-of-memory errors; and, run by hand, timing and tuning tables.
//! All need an NVIDIA GPU, so they are ignored by default:
//! `cargo test --release --test cuda -- --ignored --test-threads 1`.
#![cfg(feature = "cuda")]

mod common;

use common::problem;
use paged_kv_bench::backend::cuda::{CudaBackend, LaunchOverride};
use paged_kv_bench::backend::Backend;
use paged_kv_bench::error::Error;
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout, Problem};
use paged_kv_bench::timing::{Mode, Protocol, Stats};
use paged_kv_bench::verify::{self, Case, CaseData, Coverage};
use paged_kv_bench::workload::{self, CacheFill, Inputs};

/// The backend, its kernels compiled with the `-D` macros in `PKB_TEST_DEFINES` if set (to
/// check a tuning variant before it becomes the default).
fn open() -> CudaBackend {
    let defines: Vec<String> = std::env::var("PKB_TEST_DEFINES")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    CudaBackend::open_with_defines(&defines).expect("CUDA")
}

fn case(problem: Problem, special_values: bool) -> Case {
    Case {
        problem,
        padding_fraction: 0.1,
        special_values,
        seed: 5,
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
    // With and without programmatic dependent launch (the default on compute capability 9.0
    // and later; a no-op request below it).
    for (programmatic, mode) in [
        (true, Mode::Cudagraph),
        (true, Mode::NoGraph),
        (false, Mode::Cudagraph),
        (false, Mode::NoGraph),
    ] {
        backend.set_programmatic_launch(programmatic);
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
                    let samples = call.time(&Protocol::new(mode, 5)).unwrap();
                    assert!(samples.latency_us > 0.0);
                    assert!(samples.device_us.len() >= Protocol::new(mode, 5).sampling.min_samples);
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
    let mut failures = Vec::new();
    for dtype in [Dtype::Half, Dtype::BFloat16, Dtype::Float] {
        let elements = 65536usize;
        let size = dtype.size();
        let problem = problem()
            .tokens(elements / 128)
            .heads(1)
            .blocks(elements / 128 / 16 + 3)
            .dtype(dtype)
            .fp8()
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
            for (kernel, forced) in [
                ("vector", LaunchOverride::default()),
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
                    failures.push(format!("{} scale {k_scale:e} {kernel}: {m}", dtype.name()));
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
        scalar: false,
    };
    for forced in [
        LaunchOverride {
            scalar: true,
            ..LaunchOverride::default()
        },
        shape(32, 1, 0),
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

// ---------------------------------------------------------------------------------------------
// Tables, run by hand on a GPU (they print; they assert nothing about speed).

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
                // The benchmark's default shape: 65536 blocks x 16 slots x 128 heads x 128.
                let p = problem()
                    .tokens(tokens)
                    .heads(128)
                    .blocks(65536)
                    .cache_dtype(cache_dtype)
                    .layout(layout)
                    .build();
                println!("{}", bench.row(&mut backend, &p, Mode::Cudagraph, copy));
                if tokens == 2 || tokens == 8192 {
                    println!("{}", bench.row(&mut backend, &p, Mode::NoGraph, copy));
                }
            }
        }
    }
}

/// One row of the tuning sweep: a problem and how to cut it.
#[derive(Debug, Clone)]
struct TuneRow {
    problem: Problem,
    cold: bool,
    rotate: bool,
    /// `None`: the built-in shape.
    shape: Option<LaunchOverride>,
    label: String,
    /// The define set (index in `PKB_DEFINES`) the row runs with.
    set: usize,
}

/// `d` (built-in), `TxI` (T threads, I items per thread) or `TxIcB` (grid capped at B blocks
/// per SM).
fn parse_shape(text: &str) -> Option<LaunchOverride> {
    if text == "d" {
        return None;
    }
    let (threads, rest) = text.split_once('x').expect("shape TxI[cB]");
    let (items, cap) = rest.split_once('c').unwrap_or((rest, "0"));
    Some(LaunchOverride {
        threads: threads.parse().expect("threads"),
        items_per_thread: items.parse().expect("items"),
        scalar: false,
        blocks_per_sm: cap.parse().expect("blocks per SM"),
    })
}

/// Rows from a spec: `;`-separated groups of space-separated `key=value` fields, where a value
/// may list alternatives with `|` (every combination is a row). Keys (defaults): `lay` (NHD),
/// `cache` (auto), `dt` (bfloat16), `T` (8192), `H` (128), `D` (128), `bs` (16), `nb`
/// (65536), `mode` (w: warm, c: cold, r: rotating), `shape` (d; see `parse_shape`), `set` (0: the index of
/// the define set to run with).
fn parse_rows(spec: &str) -> Vec<TuneRow> {
    let mut rows = Vec::new();
    for group in spec.split(';').map(str::trim).filter(|g| !g.is_empty()) {
        let mut fields: Vec<(String, Vec<String>)> = [
            ("lay", "NHD"),
            ("cache", "auto"),
            ("dt", "bfloat16"),
            ("T", "8192"),
            ("H", "128"),
            ("D", "128"),
            ("bs", "16"),
            ("nb", "65536"),
            ("mode", "w"),
            ("shape", "d"),
            ("set", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
        .collect();
        for field in group.split_whitespace() {
            let (key, value) = field.split_once('=').expect("key=value");
            let slot = fields
                .iter_mut()
                .find(|(k, _)| k == key)
                .unwrap_or_else(|| panic!("unknown key {key}"));
            slot.1 = value.split('|').map(String::from).collect();
        }
        let mut combos: Vec<Vec<String>> = vec![vec![]];
        for (_, values) in &fields {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push(v.clone());
                        c
                    })
                })
                .collect();
        }
        for c in combos {
            let layout = match c[0].as_str() {
                "NHD" => Layout::Nhd,
                "HND" => Layout::Hnd,
                other => panic!("layout {other}"),
            };
            let cache_dtype = match c[1].as_str() {
                "auto" => CacheDtype::Auto,
                "fp8" => CacheDtype::Fp8,
                other => panic!("cache dtype {other}"),
            };
            let dtype = match c[2].as_str() {
                "half" => Dtype::Half,
                "bfloat16" | "bf16" => Dtype::BFloat16,
                "float" => Dtype::Float,
                other => panic!("dtype {other}"),
            };
            let n = |i: usize| -> usize { c[i].parse().expect("number") };
            rows.push(TuneRow {
                problem: problem()
                    .tokens(n(3))
                    .heads(n(4))
                    .head_size(n(5))
                    .block_size(n(6))
                    .blocks(n(7))
                    .dtype(dtype)
                    .cache_dtype(cache_dtype)
                    .layout(layout)
                    .build(),
                cold: c[8] == "c",
                rotate: c[8] == "r",
                shape: parse_shape(&c[9]),
                label: c[9].clone(),
                set: n(10),
            });
        }
    }
    rows
}

/// Tuning table, run by hand on a GPU; everything comes from the environment, so that one
/// build serves any experiment:
/// - `PKB_DEFINES`: `;`-separated sets of `-D` macros for the kernel source (an empty set: the
///   built-in source), each compiled in turn; `PDL_LAUNCH=1` (`=0`) also launches the set's
///   calls with (without) programmatic dependent launch;
/// - `PKB_STREAMS`: ceilings measured once, `;`-separated: `copy`, or `rR:B[:H]` (R = 1 or 2
///   16-byte words read per word written, rows of B bytes at scattered slots, 0: contiguous;
///   with H heads, a token's H rows spread as HND puts them, block size 16);
/// - `PKB_ROWS`: the rows (see `parse_rows`), run for every define set;
/// - `PKB_DEADLINE`: seconds after which the remaining rows are skipped (default 120).
///
/// Device time per row: the median of batches (warm: a graph of 20 calls replayed; cold: one
/// call after an L2 flush), as in the benchmark; `%copy` against the copy ceiling measured here.
#[test]
#[ignore = "prints a tuning table; needs an NVIDIA GPU"]
fn cuda_tuning() {
    use std::collections::HashMap;
    use std::fmt::Write;
    use std::time::{Duration, Instant};
    let start = Instant::now();
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let deadline = Duration::from_secs_f64(var("PKB_DEADLINE", "120").parse().unwrap());
    let define_sets: Vec<Vec<String>> = var("PKB_DEFINES", "")
        .split(';')
        .map(|v| v.split_whitespace().map(String::from).collect())
        .collect();
    let rows = parse_rows(&var(
        "PKB_ROWS",
        "lay=NHD|HND cache=auto|fp8 T=8192 shape=d",
    ));
    let streams = var("PKB_STREAMS", "copy");
    let mut out = String::new();
    let mut copy = 0.0;
    let mut inputs: HashMap<(Dtype, usize), workload::HostInputs> = HashMap::new();
    for (set, defines) in define_sets.iter().enumerate() {
        let mut backend = CudaBackend::open_with_defines(defines).unwrap();
        // `PDL_LAUNCH=1` / `=0` in a define set: launch that set's calls with (without)
        // programmatic dependent launch.
        for (define, on) in [("PDL_LAUNCH=1", true), ("PDL_LAUNCH=0", false)] {
            if defines.iter().any(|d| d == define) {
                backend.set_programmatic_launch(on);
            }
        }
        if set == 0 {
            println!(
                "device: {} ({})",
                backend.device().name,
                backend.device().details
            );
            for stream in streams.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                let gbps = if stream == "copy" {
                    copy = backend.copy_bandwidth_gbps().unwrap().unwrap();
                    copy
                } else {
                    let fields: Vec<u64> =
                        stream[1..].split(':').map(|f| f.parse().unwrap()).collect();
                    let reads = fields[0] as u32;
                    let out_bytes = 1u64 << 30;
                    let row = match fields[1] {
                        0 => out_bytes,
                        c => c,
                    };
                    let heads = fields.get(2).copied().unwrap_or(1);
                    let mut best: f64 = 0.0;
                    for _ in 0..2 {
                        best = best.max(
                            backend
                                .measure_stream(reads, out_bytes, row, heads, 5)
                                .unwrap(),
                        );
                    }
                    best
                };
                let line = format!(
                    "stream {stream:>10}: {gbps:6.0} GB/s ({:.1}% of copy)",
                    gbps / copy * 100.0
                );
                println!("{line}");
                writeln!(out, "{line}").unwrap();
            }
        }
        println!("== set {set}: {defines:?}");
        writeln!(out, "== set {set}: {defines:?}").unwrap();
        for row in rows.iter().filter(|r| r.set == set) {
            if start.elapsed() > deadline {
                println!("deadline: skipped the rest");
                writeln!(out, "deadline: skipped the rest").unwrap();
                break;
            }
            let p = &row.problem;
            let key = (p.dtype, p.token_elements());
            let max_tokens = rows
                .iter()
                .filter(|r| (r.problem.dtype, r.problem.token_elements()) == key)
                .map(|r| r.problem.num_tokens)
                .max()
                .unwrap();
            let host = inputs.entry(key).or_insert_with(|| {
                workload::HostInputs::random(p.dtype, p.token_elements(), max_tokens, 17)
            });
            let slots = workload::random_slot_mapping(p.num_slots(), p.num_tokens, 0.0, 3);
            let call_inputs = host.inputs(p, &slots);
            backend.force_launch(row.shape);
            let mut protocol = Protocol::new(Mode::Cudagraph, 10);
            protocol.cold = row.cold;
            protocol.rotate = row.rotate;
            protocol.sampling.max_time = Duration::from_millis(if row.cold { 600 } else { 400 });
            let result = backend
                .prepare(p, call_inputs, CacheFill::Random { seed: 11 })
                .and_then(|mut call| call.time(&protocol));
            let line = match result {
                Ok(samples) => {
                    let s: Stats = samples.device_stats();
                    let gbps = p.bytes_moved() as f64 / (s.median * 1e-6) / 1e9;
                    format!(
                        "{set} {:>6} {} {:>4} {:>8} {:>3}x{:<3} bs{:<3} {} {:>10} {:>9.3} {:>5.1}% {:>6.0} {:>6.1}%",
                        p.num_tokens,
                        p.layout.name(),
                        p.cache_dtype.name(),
                        p.dtype.name(),
                        p.num_heads,
                        p.head_size,
                        p.block_size,
                        if row.cold { "c" } else if row.rotate { "r" } else { "w" },
                        row.label,
                        s.median,
                        s.noise_percent,
                        gbps,
                        gbps / copy * 100.0
                    )
                }
                Err(e) => format!("{set} {} {}: error: {e}", p.describe(), row.label),
            };
            println!("{line}");
            writeln!(out, "{line}").unwrap();
        }
    }
    println!(
        "---- summary ({:.0} s): set tokens layout cache dtype HxD block mode shape device_us noise GB/s %copy",
        start.elapsed().as_secs_f64()
    );
    print!("{out}");
}

#[test]
fn tuning_specs_parse() {
    let rows =
        parse_rows("lay=NHD|HND cache=fp8 T=2|64 shape=d|256x2c4|96x3c1 set=1; dt=half; mode=r|c");
    assert_eq!(rows.len(), 2 * 2 * 3 + 3);
    assert!(rows[13].rotate && !rows[13].cold && rows[14].cold && !rows[14].rotate);
    let r = &rows[1];
    assert_eq!(r.problem.layout, Layout::Nhd);
    assert_eq!(r.problem.cache_dtype, CacheDtype::Fp8);
    assert_eq!(r.problem.num_tokens, 2);
    assert_eq!(r.set, 1);
    assert_eq!(
        r.shape,
        Some(LaunchOverride {
            threads: 256,
            items_per_thread: 2,
            scalar: false,
            blocks_per_sm: 4,
        })
    );
    assert_eq!(rows[2].shape.unwrap().blocks_per_sm, 1);
    assert_eq!(rows[0].shape, None);
    let last = &rows[12];
    assert_eq!(
        (last.problem.dtype, last.set, last.cold),
        (Dtype::Half, 0, false)
    );
}

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
