//! The library used as a serving engine would use it, on the wgpu backend (any GPU, or
//! lavapipe without one): three decode steps written into caches the program allocated,
//! checked against the reference. The WGSL path implements the NHD layout.
//!
//! `cargo run --release --example wgpu [ADAPTER-NAME]`

mod common;

use std::process::ExitCode;

use paged_kv_bench::backend::{self, Kind};
use paged_kv_bench::options::Options;
use paged_kv_bench::problem::{CacheDtype, Layout};

fn main() -> ExitCode {
    let options = Options {
        adapter: std::env::args().nth(1),
        ..Options::default()
    };
    let mut backend = match backend::open(Kind::Wgpu, &options, false) {
        Ok(backend) => backend,
        Err(error) => {
            eprintln!("error: {}", error.one_line());
            return ExitCode::FAILURE;
        }
    };
    let device = backend.device();
    println!("wgpu on {} ({})", device.name, device.details);
    for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8] {
        if let Err(error) = common::decode_steps(backend.as_mut(), Layout::Nhd, cache_dtype) {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
