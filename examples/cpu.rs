//! The library used as a serving engine would use it, on the CPU backend: three decode steps
//! written into caches the program allocated, checked against the reference.
//!
//! `cargo run --release --example cpu`

mod common;

use std::process::ExitCode;

use paged_kv_bench::backend::cpu::CpuBackend;
use paged_kv_bench::problem::{CacheDtype, Layout};

fn main() -> ExitCode {
    let mut backend = CpuBackend::new();
    for (layout, cache_dtype) in [
        (Layout::Nhd, CacheDtype::Auto),
        (Layout::Hnd, CacheDtype::Fp8),
    ] {
        if let Err(error) = common::decode_steps(&mut backend, layout, cache_dtype) {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
