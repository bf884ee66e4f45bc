//! Users' own CUDA kernels (`--kernel FILE.cu`) on a GPU: the example kernel verified against the
//! reference and timed; the params block as the header declares it; broken copies of the
//! example caught where they break; compile errors, a missing entry point and a wrong
//! parameter list as short errors naming the file; a kernel that never finishes as a timeout
//! and one that faults as one line (each in a child process, since neither can be undone in
//! the process); the built-in backend still correct after each. All need an NVIDIA GPU:
//! `cargo test --release --test cuda_user -- --ignored --test-threads 1`.
#![cfg(feature = "cuda")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::problem;
use common::user_kernels::{
    broken_cases, broken_copies, edit, example_cases, example_path, example_source, line_of,
};
use paged_kv_bench::backend::cuda::user::{PagedKvParams, UserBackend};
use paged_kv_bench::backend::cuda::CudaBackend;
use paged_kv_bench::backend::Backend;
use paged_kv_bench::error::Error;
use paged_kv_bench::options::{Mode, Options};
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout};
use paged_kv_bench::timing::{self, Protocol, Sampling};
use paged_kv_bench::user_kernel::DEFAULT_TIMEOUT as TIMEOUT;
use paged_kv_bench::user_kernel::{Language, UserKernel};
use paged_kv_bench::verify::{self, Case, CaseData};
use paged_kv_bench::workload::{CacheFill, Caches, Scaling};

/// Set in the environment of the child processes that run the kernels that hang or fault.
const CHILD: &str = "PKB_USER_KERNEL_CHILD";

/// Writes `source` as `file_name` in a fresh directory and loads it as a kernel.
fn kernel_file(file_name: &str, source: &str) -> UserKernel {
    let dir = std::env::temp_dir().join(format!(
        "pkb-cuda-user-{}-{}",
        std::process::id(),
        file_name.replace('.', "_")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file_name);
    std::fs::write(&path, source).unwrap();
    UserKernel::load(&path.display().to_string(), Language::Cuda).unwrap()
}

fn example() -> UserKernel {
    UserKernel::load(&example_path().display().to_string(), Language::Cuda).unwrap()
}

fn open_user(kernel: &UserKernel, mode: Mode) -> Result<UserBackend, Error> {
    UserBackend::open(
        kernel,
        &Options {
            mode,
            ..Options::default()
        },
    )
}

fn case_for_builtin() -> Case {
    Case {
        padding_fraction: 0.2,
        ..Case::plain(problem().tokens(200).heads(4).fp8().hnd().build(), 9)
    }
}

/// The built-in backend, opened now, still matches the reference.
fn builtin_still_correct(after: &str) {
    let mut backend = CudaBackend::open(&Options::default()).expect("CUDA");
    let result = verify::check(&mut backend, &case_for_builtin());
    assert!(
        matches!(result, Ok(None)),
        "the built-in backend after {after}: {:?}",
        result.map_err(|e| e.one_line())
    );
}

fn check_all(backend: &mut dyn Backend, cases: &[Case], label: &str) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| match verify::check(backend, case) {
            Ok(None) => None,
            Ok(Some(m)) => Some(format!("{label}: {case}: {m}")),
            Err(e) => Some(format!("{label}: {case}: error: {}", e.one_line())),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn the_example_passes_verification_and_is_timed() {
    let kernel = example();
    assert_eq!(kernel.name, "copy");
    for mode in [Mode::Cudagraph, Mode::NoGraph] {
        let mut backend = open_user(&kernel, mode).expect("the example compiles");
        assert_eq!(backend.name(), "copy");
        check_all(&mut backend, &example_cases(), &format!("{mode:?}"));
    }
    // Another block size, not a power of two, over the same cases.
    let odd = edit(&kernel.source, "block=256", "block=96");
    let mut backend = open_user(&kernel_file("copy96.cu", &odd), Mode::Cudagraph).unwrap();
    check_all(&mut backend, &example_cases(), "block=96");

    // Timed as the sweep times it, beside the built-in kernel, then still the reference's.
    let case = Case::plain(problem().tokens(4096).heads(8).build(), 3);
    let data = CaseData::new(&case).unwrap();
    let protocol = Protocol {
        sampling: Sampling {
            max_time: Duration::from_secs(1),
            ..Sampling::default()
        },
        ..Protocol::new(20)
    };
    let mut user = open_user(&kernel, Mode::Cudagraph).unwrap();
    let mut builtin = CudaBackend::open(&Options::default()).unwrap();
    for backend in [&mut user as &mut dyn Backend, &mut builtin] {
        let name = backend.name();
        let mut call = backend
            .prepare(&case.problem, data.inputs(), CacheFill::Copy(&data.initial))
            .unwrap();
        let samples = timing::measure(
            call.as_mut(),
            &case.problem,
            &data.host.slot_mapping,
            &protocol,
        )
        .unwrap();
        assert!(samples.latency_us > 0.0);
        assert!(samples.device_us.iter().all(|t| *t > 0.0));
        let mut sorted = samples.device_us.clone();
        sorted.sort_by(f64::total_cmp);
        eprintln!(
            "{name}: {}: latency {:.2} us, device median {:.2} us ({} samples)",
            case.problem.describe(),
            samples.latency_us,
            sorted[sorted.len() / 2],
            sorted.len()
        );
        let got = call.read_back().unwrap();
        assert!(
            verify::compare(&case.problem, &data, &got).is_none(),
            "{name}"
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn undeclared_calls_are_not_applicable() {
    let source = edit(
        &example_source(),
        "// paged-kv: entry=copy_kv grid=elements:1 block=256",
        "// paged-kv: entry=copy_kv grid=elements:1 block=256\n// paged-kv: layouts=NHD caches=auto",
    );
    let backend = open_user(&kernel_file("nhd_only.cu", &source), Mode::Cudagraph).unwrap();
    assert!(backend.supports(Layout::Nhd));
    assert!(!backend.supports(Layout::Hnd));
    let fp8 = problem().fp8().build();
    match backend.check_support(&fp8, Scaling::PerTensor) {
        Err(Error::Unsupported { what, .. }) => {
            assert!(
                what.contains("fp8 caches") && what.contains("nhd_only.cu"),
                "{what}"
            )
        }
        other => panic!("{:?}", other.map_err(|e| e.one_line())),
    }
    let mut backend = backend;
    let error = verify::check(&mut backend, &Case::plain(fp8, 1)).unwrap_err();
    assert!(
        matches!(error, Error::Unsupported { .. }),
        "{}",
        error.one_line()
    );
    assert!(backend
        .check_support(&problem().build(), Scaling::PerTensor)
        .is_ok());
}

/// A kernel that writes what it receives: the struct's size and offsets as the device compiler
/// lays it out, every scalar field, and the first slot and scales through the pointers.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn params_arrive_as_the_header_declares() {
    let source = r#"
#include <paged_kv.h>
// paged-kv: entry=probe grid=elements:16 block=64
#define AT(f) ((const char*)&p.f - (const char*)&p)
extern "C" __global__ void probe(const PagedKvParams p) {
    if (pkv_thread_index() != 0) return;
    pkv_i64* out = (pkv_i64*)p.key_cache;
    const pkv_i64 values[] = {
        (pkv_i64)sizeof(PagedKvParams), AT(num_tokens), AT(threads), AT(layout),
        AT(elements_per_thread), p.num_tokens, p.num_heads, p.head_size, p.block_size,
        p.num_blocks, p.num_slots, p.input_token_stride, p.input_head_stride,
        p.cache_block_stride, p.cache_slot_stride, p.cache_head_stride, (pkv_i64)p.threads,
        p.layout, p.dtype, p.cache_dtype, p.scale_per_head, p.grid, p.elements_per_thread,
        p.slot_mapping[0], (pkv_i64)(p.k_scale[1] * 1024.0f), (pkv_i64)(p.v_scale[1] * 1024.0f),
        (pkv_i64)gridDim.x, (pkv_i64)blockDim.x};
    for (int i = 0; i < (int)(sizeof(values) / sizeof(values[0])); ++i) out[i] = values[i];
}
"#;
    let kernel = kernel_file("probe.cu", source);
    let mut backend = open_user(&kernel, Mode::NoGraph).unwrap();
    let case = Case {
        scaling: Scaling::PerHead,
        qkv_fused: Some(6),
        ..Case::plain(
            problem()
                .tokens(33)
                .heads(4)
                .head_size(64)
                .dtype(Dtype::Half)
                .cache_dtype(CacheDtype::Fp8E5m2)
                .hnd()
                .qkv_fused(6)
                .build(),
            4,
        )
    };
    let p = &case.problem;
    let data = CaseData::new(&case).unwrap();
    let zeros = Caches {
        key: vec![0; p.cache_bytes() as usize],
        value: vec![0; p.cache_bytes() as usize],
    };
    let got = {
        let mut call = backend
            .prepare(p, data.inputs(), CacheFill::Copy(&zeros))
            .unwrap();
        call.run().unwrap();
        call.read_back().unwrap()
    };
    let words: Vec<i64> = got.key[..28 * 8]
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let d = &kernel.directives;
    let launch = d.grid.launch(p, d.block);
    let e = PagedKvParams::new(p, d.grid, launch, true);
    let expected: Vec<i64> = vec![
        std::mem::size_of::<PagedKvParams>() as i64,
        std::mem::offset_of!(PagedKvParams, num_tokens) as i64,
        std::mem::offset_of!(PagedKvParams, threads) as i64,
        std::mem::offset_of!(PagedKvParams, layout) as i64,
        std::mem::offset_of!(PagedKvParams, elements_per_thread) as i64,
        e.num_tokens,
        e.num_heads,
        e.head_size,
        e.block_size,
        e.num_blocks,
        e.num_slots,
        e.input_token_stride,
        e.input_head_stride,
        e.cache_block_stride,
        e.cache_slot_stride,
        e.cache_head_stride,
        e.threads as i64,
        e.layout as i64,
        e.dtype as i64,
        e.cache_dtype as i64,
        e.scale_per_head as i64,
        e.grid as i64,
        e.elements_per_thread as i64,
        data.host.slot_mapping[0],
        (data.host.k_head_scales[1] * 1024.0) as i64,
        (data.host.v_head_scales[1] * 1024.0) as i64,
        launch.blocks as i64,
        launch.block as i64,
    ];
    assert_eq!(words, expected);
    assert_eq!((e.threads, e.elements_per_thread), (33 * 4 * 4, 16));
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn broken_copies_fail_verification_where_they_break() {
    for broken in broken_copies() {
        let kernel = kernel_file(&format!("{}.cu", broken.name), &broken.source());
        let mut backend = open_user(&kernel, Mode::Cudagraph).unwrap();
        for case in broken_cases() {
            let data = CaseData::new(&case).unwrap();
            let mismatch = verify::check(&mut backend, &case)
                .unwrap()
                .unwrap_or_else(|| panic!("{}: {case}: verification passed", broken.name));
            if let Err(error) = (broken.located)(&case.problem, &data.host.slot_mapping, &mismatch)
            {
                panic!("{}: {case}: {error}", broken.name);
            }
            eprintln!("{}: {}: {mismatch}", broken.name, case.problem.describe());
        }
    }
    builtin_still_correct("the broken copies");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn compile_errors_name_the_file_and_line() {
    let source = example_source();
    // A syntax error.
    let marker = "const pkv_i64 from = ";
    let broken = edit(&source, marker, "const pkv_i64 from = = ");
    let line = line_of(&broken, "const pkv_i64 from = = ");
    match open_user(&kernel_file("copy_broken.cu", &broken), Mode::Cudagraph) {
        Err(Error::Compile { file, log }) => {
            assert!(file.ends_with("copy_broken.cu"), "{file}");
            assert!(
                log.contains(&format!("copy_broken.cu({line}): error")),
                "line {line}:\n{log}"
            );
            assert!(log.lines().count() <= 21, "{log}");
            let message = Error::Compile { file, log }.to_string();
            eprintln!("{message}");
            assert!(message.contains("does not compile"));
        }
        other => panic!("{:?}", other.err().map(|e| e.one_line())),
    }
    // A parameter list other than the contract's: an error at the definition's line.
    let signature = "copy_kv(const PagedKvParams p)";
    let extra = edit(
        &source,
        signature,
        "copy_kv(const PagedKvParams p, int extra)",
    );
    let line = line_of(&extra, "int extra)");
    match open_user(&kernel_file("two_params.cu", &extra), Mode::Cudagraph) {
        Err(Error::Compile { log, .. }) => {
            eprintln!("{log}");
            assert!(
                log.contains(&format!("two_params.cu({line}): error")),
                "{log}"
            );
        }
        other => panic!("{:?}", other.err().map(|e| e.one_line())),
    }
    builtin_still_correct("compile errors");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn an_absent_entry_point_is_one_line() {
    let source = edit(&example_source(), "entry=copy_kv", "entry=store_kv");
    match open_user(&kernel_file("misnamed.cu", &source), Mode::Cudagraph) {
        Err(error) => {
            let line = error.one_line();
            eprintln!("{line}");
            assert!(!line.contains('\n'), "{line}");
            assert!(
                line.contains("misnamed.cu") && line.contains("`store_kv`"),
                "{line}"
            );
            assert!(line.contains("paged-kv: entry="), "{line}");
        }
        Ok(_) => panic!("opened a kernel without its entry point"),
    }
    builtin_still_correct("an absent entry point");
}

/// Runs the child test `name` of this binary in a new process; returns its output.
fn run_child(name: &str) -> String {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("the child runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{name}:\n{text}");
    text
}

fn child_line<'a>(output: &'a str, tag: &str) -> &'a str {
    output
        .lines()
        // The harness prints the test's name on the same line, before the test's output.
        .find_map(|line| line.find(tag).map(|at| &line[at + tag.len()..]))
        .unwrap_or_else(|| panic!("no {tag} in:\n{output}"))
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_kernel_that_never_finishes_times_out() {
    let output = run_child("child_spinning_kernel");
    let error = child_line(&output, "CHILD-RESULT: ");
    eprintln!("{error}");
    assert!(
        error.contains("spin.cu") && error.contains("timed out"),
        "{error}"
    );
    builtin_still_correct("a timeout in another process");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn child_spinning_kernel() {
    if std::env::var_os(CHILD).is_none() {
        return; // Only meaningful in the child process of the test above.
    }
    let source = r#"#include "paged_kv.h"
// paged-kv: entry=spin
// Spins for about 20 s (4e10 clocks), longer than the tool waits.
extern "C" __global__ void spin(const PagedKvParams p) {
    long long start, now;
    asm volatile("mov.u64 %0, %%clock64;" : "=l"(start));
    do { asm volatile("mov.u64 %0, %%clock64;" : "=l"(now)); } while (now - start < 40000000000LL);
}
"#;
    let mut backend = open_user(&kernel_file("spin.cu", source), Mode::Cudagraph).unwrap();
    let started = std::time::Instant::now();
    let error = verify::check(&mut backend, &case_for_builtin()).unwrap_err();
    let waited = started.elapsed();
    println!("CHILD-RESULT: {}", error.one_line());
    assert!(
        waited >= TIMEOUT && waited < TIMEOUT + Duration::from_secs(5),
        "{waited:?}"
    );
    // Dropping the backend would wait on the kernel that is still running: end here.
    std::process::exit(0);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_faulting_kernel_is_one_line_and_other_processes_are_unaffected() {
    let output = run_child("child_faulting_kernel");
    let error = child_line(&output, "CHILD-RESULT: ");
    assert!(error.contains("fault.cu"), "{error}");
    assert!(error.contains("ILLEGAL_ADDRESS"), "{error}");
    // What a fault does to the rest of the process, for the record.
    for tag in [
        "CHILD-BUILTIN-SAME-CONTEXT: ",
        "CHILD-BUILTIN-FRESH-CONTEXT: ",
    ] {
        eprintln!("{tag}{}", child_line(&output, tag));
    }
    eprintln!("CHILD-RESULT: {error}");
    builtin_still_correct("a fault in another process");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn child_faulting_kernel() {
    if std::env::var_os(CHILD).is_none() {
        return; // Only meaningful in the child process of the test above.
    }
    let source = r#"#include "paged_kv.h"
// paged-kv: entry=fault
// Writes a terabyte below the key cache: an illegal address.
extern "C" __global__ void fault(const PagedKvParams p) {
    ((volatile int*)((char*)p.key_cache - (1ll << 40)))[pkv_thread_index()] = 1;
}
"#;
    let case = case_for_builtin();
    let mut builtin = CudaBackend::open(&Options::default()).unwrap();
    let mut backend = open_user(&kernel_file("fault.cu", source), Mode::NoGraph).unwrap();
    let error = verify::check(&mut backend, &case).unwrap_err();
    println!("CHILD-RESULT: {}", error.one_line());
    let describe = |result: Result<Option<verify::Mismatch>, Error>| match result {
        Ok(None) => "matches the reference".to_string(),
        Ok(Some(m)) => format!("mismatch: {m}"),
        Err(e) => format!("error: {}", e.one_line()),
    };
    // The built-in backend opened before the fault shares the device's primary context.
    println!(
        "CHILD-BUILTIN-SAME-CONTEXT: {}",
        describe(verify::check(&mut builtin, &case))
    );
    // Every backend dropped, then a new one: does the context come back?
    drop(backend);
    drop(builtin);
    let fresh = CudaBackend::open(&Options::default())
        .and_then(|mut backend| verify::check(&mut backend, &case));
    println!("CHILD-BUILTIN-FRESH-CONTEXT: {}", describe(fresh));
    std::process::exit(0);
}
