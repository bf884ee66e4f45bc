//! The CUDA contract (`kernels/paged_kv.h`) and the example kernel (`examples/kernels/copy.cu`)
//! checked without a GPU: the program the tool gives NVRTC, its one inline PTX statement
//! replaced by host code, compiled as C++ with g++ and run on the host thread by thread, with
//! the params block the backend builds. Every cache byte must equal the CPU reference's, and the
//! broken copies must fail where their checks say. This covers the header's helpers (indices,
//! loads, the fp8 encoders and the quotient's NaN rules) on the host's IEEE arithmetic; NVRTC,
//! the device and the launch are tests/cuda_user.rs (GPU). Skipped where g++ is missing.
#![cfg(all(target_arch = "x86_64", feature = "cuda"))]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::user_kernels::{
    broken_cases, broken_copies, example_cases, example_source, EXAMPLE_ENTRY, EXAMPLE_PATH,
};
use paged_kv_bench::backend::cuda::user::{self, PagedKvParams};
use paged_kv_bench::user_kernel::{Directives, Language, UserKernel};
use paged_kv_bench::verify::{self, Case, CaseData, Mismatch};
use paged_kv_bench::workload::Caches;

fn gxx_present() -> bool {
    Command::new("g++")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The header with its inline PTX (the half to float conversion) as host code that gives NaNs
/// as the GPU does (`cvt.f32.f16` drops their sign).
fn host_header() -> String {
    let ptx = r#"    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));"#;
    assert_eq!(
        user::HEADER.matches(ptx).count(),
        1,
        "the header changed: update tests/cuda_user_host.rs"
    );
    // As the GPU converts: every NaN becomes the canonical, positive one.
    let gpu = "    f = half_to_float(bits); if (f != f) f = __uint_as_float(0x7fffffffu);";
    let host = user::HEADER.replace(ptx, gpu);
    assert!(!host.contains("asm"), "more inline PTX in the header");
    host
}

/// Builds the harness on `source` (a kernel file's text) in a fresh directory.
fn build(name: &str, source: &str) -> (UserKernel, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("pkb-user-host-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = UserKernel {
        name: name.into(),
        path: PathBuf::from(EXAMPLE_PATH),
        language: Language::Cuda,
        source: source.to_string(),
        directives: Directives::parse(source, Path::new(EXAMPLE_PATH)).unwrap(),
    };
    std::fs::write(dir.join("kernel.cu"), user::program_text(&kernel)).unwrap();
    std::fs::write(dir.join(user::HEADER_NAME), host_header()).unwrap();
    std::fs::copy(
        root.join("tests/cuda_host/mock_host.h"),
        dir.join("mock_host.h"),
    )
    .unwrap();
    std::fs::copy(
        root.join("tests/cuda_user_host/harness.cpp"),
        dir.join("harness.cpp"),
    )
    .unwrap();
    let binary = dir.join("harness");
    let built = Command::new("g++")
        .current_dir(&dir)
        .args([
            "-std=c++17",
            "-O1",
            "-ffp-contract=off",
            "-D__CUDA_ARCH__=800",
        ])
        .arg(format!("-DPAGED_KV_ENTRY={}", kernel.directives.entry))
        .arg("-o")
        .arg(&binary)
        .arg("harness.cpp")
        .output()
        .expect("g++ runs");
    assert!(
        built.status.success(),
        "{name} does not compile as host C++:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    (kernel, binary)
}

fn part(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Runs the harness on `case`; returns the expected and the kernel's caches.
fn run(kernel: &UserKernel, binary: &Path, case: &Case, tag: &str) -> (Caches, Caches) {
    let data = CaseData::new(case).unwrap();
    let problem = &case.problem;
    let inputs = data.inputs();
    let d = &kernel.directives;
    let launch = d.grid.launch(problem, d.block);
    let per_head = inputs.per_head_scales();
    let params = PagedKvParams::new(problem, d.grid, launch, per_head);
    // SAFETY: PagedKvParams is plain old data of integers (repr(C), no padding).
    let raw: &[u8] = unsafe {
        std::slice::from_raw_parts(
            &params as *const PagedKvParams as *const u8,
            std::mem::size_of::<PagedKvParams>(),
        )
    };
    let mut input = raw.to_vec();
    input.extend_from_slice(&launch.blocks.to_le_bytes());
    input.extend_from_slice(&(launch.block as u64).to_le_bytes());
    part(&mut input, inputs.key);
    part(&mut input, inputs.value);
    let slots: Vec<u8> = inputs
        .slot_mapping
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    part(&mut input, &slots);
    let heads = if per_head { problem.num_heads } else { 1 };
    for scale in [&inputs.k_scale, &inputs.v_scale] {
        let scales: Vec<u8> = (0..heads)
            .flat_map(|h| scale.of_head(h).to_le_bytes())
            .collect();
        part(&mut input, &scales);
    }
    part(&mut input, &data.initial.key);
    part(&mut input, &data.initial.value);
    let dir = binary.parent().unwrap();
    let (in_path, out_path) = (
        dir.join(format!("{tag}.in")),
        dir.join(format!("{tag}.out")),
    );
    std::fs::write(&in_path, input).unwrap();
    let ran = Command::new(binary)
        .arg(&in_path)
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let out = std::fs::read(&out_path).unwrap();
    let bytes = problem.cache_bytes() as usize;
    assert_eq!(out.len(), 2 * bytes);
    let got = Caches {
        key: out[..bytes].to_vec(),
        value: out[bytes..].to_vec(),
    };
    (data.expected, got)
}

fn compare(case: &Case, expected: &Caches, got: &Caches) -> Option<Mismatch> {
    let data = CaseData::new(case).unwrap();
    verify::compare_caches(&case.problem, &data.host.slot_mapping, expected, got)
}

#[test]
fn the_example_matches_the_reference_on_the_host() {
    if !gxx_present() {
        eprintln!("g++ not found: skipped");
        return;
    }
    let (kernel, binary) = build("copy", &example_source());
    assert_eq!(kernel.directives.entry, EXAMPLE_ENTRY);
    let mut failures = Vec::new();
    let cases = example_cases();
    for (i, case) in cases.iter().enumerate() {
        let (expected, got) = run(&kernel, &binary, case, &format!("case{i}"));
        if let Some(m) = compare(case, &expected, &got) {
            failures.push(format!("{case}: {m}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases.len() >= 30);
    std::fs::remove_dir_all(binary.parent().unwrap()).ok();
}

#[test]
fn broken_copies_fail_where_they_break_on_the_host() {
    if !gxx_present() {
        eprintln!("g++ not found: skipped");
        return;
    }
    for broken in broken_copies() {
        let (kernel, binary) = build(broken.name, &broken.source());
        for (i, case) in broken_cases().iter().enumerate() {
            let (expected, got) = run(&kernel, &binary, case, &format!("case{i}"));
            let data = CaseData::new(case).unwrap();
            let mismatch = compare(case, &expected, &got)
                .unwrap_or_else(|| panic!("{}: {case}: verification passed", broken.name));
            if let Err(error) = (broken.located)(&case.problem, &data.host.slot_mapping, &mismatch)
            {
                panic!("{}: {case}: {error}", broken.name);
            }
            eprintln!("{}: {}: {mismatch}", broken.name, case.problem.describe());
        }
        std::fs::remove_dir_all(binary.parent().unwrap()).ok();
    }
}
