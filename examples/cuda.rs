//! The library used as a serving engine would use it, on the CUDA backend (an NVIDIA GPU):
//! three decode steps written into caches the program allocated, checked against the
//! reference, with each call replayed from a CUDA graph as engines do.
//!
//! `cargo run --release --example cuda`

mod common;

use std::process::ExitCode;

use paged_kv_bench::backend::{self, Kind};
use paged_kv_bench::options::Options;
use paged_kv_bench::problem::{CacheDtype, Layout};

fn main() -> ExitCode {
    let mut backend = match backend::open(Kind::Cuda, &Options::default(), false) {
        Ok(backend) => backend,
        Err(error) => {
            eprintln!("error: {}", error.one_line());
            return ExitCode::FAILURE;
        }
    };
    let device = backend.device();
    println!("cuda on {} ({})", device.name, device.details);
    for layout in [Layout::Nhd, Layout::Hnd] {
        for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8] {
            if let Err(error) = common::decode_steps(backend.as_mut(), layout, cache_dtype) {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
