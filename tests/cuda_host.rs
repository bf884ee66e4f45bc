//! The CUDA kernels' source checked without a GPU: `kernels/reshape_and_cache_flash.cu` (and
//! `ceilings.cu`, joined to it),
//! its inline PTX replaced by host code, is compiled as C++ with g++ for an architecture below
//! sm_89 (the software e4m3 and e5m2 conversions), and its kernels are run on the host thread by
//! thread (they share no memory between threads and have no barriers) on random cases: every
//! input dtype, cache dtype (auto, e4m3, e5m2), per-tensor and per-head scales (among them
//! scales outside the fast conversion's range: zero, negative, huge, tiny, infinite, NaN), both
//! layouts, contiguous, fused and gapped input strides, the vector, one-item and scalar
//! instances, drawn launch shapes and grids smaller than the work. Every cache byte must equal
//! the CPU reference's.
//!
//! What this cannot check is the GPU itself: the hardware conversions of sm_89 and later
//! (`cvt.rn.satfinite.e4m3x2` / `e5m2x2`), the real memory instructions, and NVRTC. Those are
//! tests/cuda.rs and the shared suite on a GPU. Skipped (with a note) where g++ is missing.
#![cfg(target_arch = "x86_64")]

use std::path::{Path, PathBuf};
use std::process::Command;

use paged_kv_bench::problem::{CacheDtype, Dtype, InputStrides, Layout, Problem};
use paged_kv_bench::workload::{Caches, Inputs, Scale};
use paged_kv_bench::{reference, verify};

/// The kernel source with every inline PTX statement replaced: memory accesses and the
/// reciprocal by their C++ meaning, the rest (the sm_89+ conversions, which the chosen
/// architecture compiles out, and griddepcontrol) by nothing.
fn host_source(source: &str) -> String {
    let replacements = [
        (
            r#"    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};"
                 :: "l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w));"#,
            "    memcpy(p, &v, 16);",
        ),
        (
            r#"        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((u16)bits));"#,
            "        f = half_to_float((u16)bits);",
        ),
        (
            r#"    asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(scale) : "l"(p) : "memory");"#,
            "    scale = *p;",
        ),
        // The reciprocal is rcp.rn's fast path written out (tests/cuda.rs checks it against
        // rcp.rn on the GPU over the fast range): on the host, the IEEE division.
        (
            r#"    asm volatile("{\n\t.reg .f32 y0, e;\n\t"
                 "rcp.approx.ftz.f32 y0, %1;\n\t"
                 "fma.rn.f32 e, %1, y0, 0fBF800000;\n\t"
                 "neg.f32 e, e;\n\t"
                 "fma.rn.f32 %0, y0, e, y0;\n\t}"
                 : "=f"(s.inverse) : "f"(scale));"#,
            "    { volatile float r = 1.0f / scale; s.inverse = r; }",
        ),
    ];
    let mut host = source.to_string();
    for (ptx, cpp) in replacements {
        assert_eq!(
            host.matches(ptx).count(),
            1,
            "the kernel source changed: update tests/cuda_host.rs for\n{ptx}"
        );
        host = host.replace(ptx, cpp);
    }
    host.replace("asm volatile(", "MOCK_ASM(")
        .replace("asm(", "MOCK_ASM(")
}

fn compiler() -> Option<&'static str> {
    let found = Command::new("g++").arg("--version").output();
    found.ok().filter(|o| o.status.success()).map(|_| "g++")
}

fn kernel_source() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Joined as src/backend/cuda/compile.rs joins them for NVRTC.
    let read = |name: &str| std::fs::read_to_string(root.join("kernels").join(name)).expect(name);
    format!(
        "{}#line 1 \"ceilings.cu\"\n{}",
        read("reshape_and_cache_flash.cu"),
        read("ceilings.cu")
    )
}

/// Builds the harness on `source` (kernel source) in `dir` and runs it: the cases' file.
fn run_harness(dir: &Path, source: &str, cases: usize, seed: u64) -> PathBuf {
    run_harness_of(dir, source, cases, seed, false)
}

/// [`run_harness`], of the pattern kernels where `pattern` says.
fn run_harness_of(dir: &Path, source: &str, cases: usize, seed: u64, pattern: bool) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("k_host.cpp"), host_source(source)).unwrap();
    for file in ["mock_host.h", "harness.cpp"] {
        std::fs::copy(root.join("tests/cuda_host").join(file), dir.join(file)).unwrap();
    }
    let binary = dir.join("harness");
    let built = Command::new("g++")
        .current_dir(dir)
        .args([
            "-std=c++17",
            "-O1",
            // The GPU rounds each multiplication and addition on its own (__fmul_rn) unless
            // told to fuse (__fmaf_rn): so must the host.
            "-ffp-contract=off",
            "-Wno-unknown-pragmas",
            "-D__CUDA_ARCH__=800",
            "-o",
        ])
        .arg(&binary)
        .arg("harness.cpp")
        .output()
        .expect("g++ runs");
    assert!(
        built.status.success(),
        "the kernel source does not compile as host C++:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let out = dir.join("cases.bin");
    let ran = Command::new(&binary)
        .arg(&out)
        .arg(cases.to_string())
        .arg(seed.to_string())
        .args(pattern.then_some("pattern"))
        .output()
        .expect("the harness runs");
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    out
}

/// Reads the harness's cases and checks each against the reference; returns the failures and
/// how many cases of each (dtype, cache dtype, per-head, instance) were checked.
fn check_cases(path: &Path) -> (Vec<String>, std::collections::BTreeMap<String, usize>) {
    check_cases_of(path, false)
}

/// [`check_cases`], against [`pattern`]'s result where `pattern` says.
fn check_cases_of(
    path: &Path,
    pattern: bool,
) -> (Vec<String>, std::collections::BTreeMap<String, usize>) {
    let data = std::fs::read(path).unwrap();
    let mut at = 0;
    let mut take = |n: usize| {
        let bytes = data[at..at + n].to_vec();
        at += n;
        bytes
    };
    let int = |bytes: Vec<u8>| i64::from_le_bytes(bytes.try_into().unwrap());
    let floats = |bytes: Vec<u8>| -> Vec<f32> {
        bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let count = int(take(8));
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    for case in 0..count {
        let h: Vec<i64> = (0..14).map(|_| int(take(8))).collect();
        let dtype = [Dtype::Half, Dtype::BFloat16, Dtype::Float][h[0] as usize];
        let (cache_dtype, per_head) = match h[1] {
            0 => (CacheDtype::Auto, false),
            1 => (CacheDtype::Fp8, false),
            2 => (CacheDtype::Fp8E5m2, false),
            3 => (CacheDtype::Fp8, true),
            _ => (CacheDtype::Fp8E5m2, true),
        };
        let problem = Problem {
            num_tokens: h[3] as usize,
            num_heads: h[4] as usize,
            head_size: h[5] as usize,
            block_size: h[6] as usize,
            num_blocks: h[7] as usize,
            dtype,
            cache_dtype,
            layout: [Layout::Nhd, Layout::Hnd][h[2] as usize],
            input_strides: Some(InputStrides {
                token: h[8] as u64,
                head: h[9] as u64,
            }),
        };
        problem.validate().unwrap();
        let span = problem.input_bytes() as usize;
        let (key, value) = (take(span), take(span));
        let slots: Vec<i64> = take(8 * problem.num_tokens)
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let scales = if per_head { problem.num_heads } else { 1 };
        let (k_scales, v_scales) = (floats(take(4 * scales)), floats(take(4 * scales)));
        let bytes = problem.cache_bytes() as usize;
        let initial = Caches {
            key: take(bytes),
            value: take(bytes),
        };
        let got = Caches {
            key: take(bytes),
            value: take(bytes),
        };
        let (k_scale, v_scale) = if per_head {
            (Scale::PerHead(&k_scales), Scale::PerHead(&v_scales))
        } else {
            (Scale::PerTensor(k_scales[0]), Scale::PerTensor(v_scales[0]))
        };
        let inputs = Inputs {
            key: &key,
            value: &value,
            slot_mapping: &slots,
            k_scale,
            v_scale,
        };
        inputs.validate_for(&problem).unwrap();
        let mut expected = initial.clone();
        if pattern {
            paged_kv_bench::pattern::write_all(&problem, &inputs, &mut expected);
        } else {
            reference::reshape_and_cache(&problem, &inputs, &mut expected);
        }
        let instance = ["vector", "x1", "scalar"][h[10] as usize];
        let kind = format!("{dtype} {cache_dtype} per_head={per_head} {instance}");
        *seen.entry(kind.clone()).or_insert(0) += 1;
        if let Some(mismatch) = verify::compare_caches(&problem, &slots, &expected, &got) {
            failures.push(format!(
                "case {case} {kind} ({} threads, {} items per thread, grid {}) {}: {mismatch}",
                h[11],
                h[12],
                h[13],
                problem.describe()
            ));
        }
    }
    (failures, seen)
}

#[test]
fn kernel_source_matches_the_reference_on_the_host() {
    if compiler().is_none() {
        eprintln!("g++ not found: the CUDA kernel source is not checked on the host");
        return;
    }
    let dir = std::env::temp_dir().join(format!("pkb-cuda-host-{}", std::process::id()));
    let cases = run_harness(&dir, &kernel_source(), 1500, 20261127);
    let (failures, seen) = check_cases(&cases);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} cases differ from the reference:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    // Every dtype x encoding x instance was drawn (3 x 5 x 3).
    assert_eq!(seen.len(), 45, "{seen:?}");
}

/// The check has teeth: a kernel that takes head 0's scale for every head, or saturates e5m2
/// one code low, fails it.
#[test]
fn the_host_check_sees_wrong_kernels() {
    if compiler().is_none() {
        return;
    }
    let source = kernel_source();
    for (right, wrong) in [
        ("(PER_HEAD ? at.head[k] : 0u)", "(PER_HEAD ? 0u : 0u)"),
        (
            "return sign | 0x7bu;  // 57344",
            "return sign | 0x7au;  // 57344",
        ),
    ] {
        assert_eq!(source.matches(right).count(), 1, "{right}");
        let dir = std::env::temp_dir().join(format!(
            "pkb-cuda-host-wrong-{}-{}",
            std::process::id(),
            right.len()
        ));
        let out = run_harness(&dir, &source.replace(right, wrong), 300, 7);
        let (failures, _) = check_cases(&out);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!failures.is_empty(), "`{wrong}` went unnoticed");
    }
}

/// The pattern kernels (`--ceiling pattern`) write exactly [`paged_kv_bench::pattern`]'s bytes:
/// every input dtype, auto and fp8 caches, both layouts, every input stride kind, the vector and
/// scalar instances, 1 to 4 items per thread and grids smaller than the work.
#[test]
fn pattern_kernels_match_the_pattern_on_the_host() {
    if compiler().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pkb-cuda-host-pattern-{}", std::process::id()));
    let cases = run_harness_of(&dir, &kernel_source(), 600, 20261128, true);
    let (failures, seen) = check_cases_of(&cases, true);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} cases differ from the pattern:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    assert!(seen.len() >= 30, "{seen:?}");
}
