//! Backends: the implementations of `reshape_and_cache_flash` that the benchmark can run, the
//! small trait they all fill in, and the dispatcher that picks them.
//!
//! A backend's life cycle keeps timing honest:
//! 1. [`Backend::prepare`] allocates, uploads and compiles (never timed) and returns a
//!    [`Prepared`] call;
//! 2. [`Prepared::run`] performs one call (for checks), [`Prepared::time`] measures many with
//!    the backend's own clock;
//! 3. [`Prepared::read_back`] returns the caches for verification.

use crate::error::{Error, Result};
use crate::options::WgpuTuning;
use crate::problem::{Layout, Problem};
use crate::timing::{Mode, Protocol, Samples};
use crate::workload::{CacheFill, Caches, Inputs};

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

/// Which implementation(s) to run: the `--implementation` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Implementation {
    /// CUDA if an NVIDIA driver and GPU are present, else a hardware wgpu adapter, else the CPU.
    #[value(name = "auto")]
    Auto,
    /// The CUDA C++ kernels (NVIDIA GPUs).
    #[value(name = "cuda")]
    Cuda,
    /// The WGSL compute shaders on wgpu (any GPU with Vulkan, Metal or DX12).
    #[value(name = "wgpu")]
    Wgpu,
    /// The CPU reference, parallel over tokens.
    #[value(name = "cpu")]
    Cpu,
    /// Every implementation available here, side by side.
    #[value(name = "all")]
    All,
}

impl Implementation {
    pub fn name(self) -> &'static str {
        match self {
            Implementation::Auto => "auto",
            Implementation::Cuda => "cuda",
            Implementation::Wgpu => "wgpu",
            Implementation::Cpu => "cpu",
            Implementation::All => "all",
        }
    }
}

/// The device a backend runs on, for report headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// e.g. "NVIDIA H100 80GB HBM3", "llvmpipe (LLVM 15.0.6, 256 bits)", "2 CPU threads".
    pub name: String,
    /// Driver, API and anything else that identifies the software stack.
    pub details: String,
}

/// Memory a backend needs, split by where it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    pub host: u64,
    pub device: u64,
}

/// Options for opening backends.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// wgpu: use the first adapter whose name contains this (case-insensitive).
    pub adapter: Option<String>,
    /// wgpu: limits and choices instead of the backend's own.
    pub wgpu: WgpuTuning,
}

/// One implementation of `reshape_and_cache_flash` on one device.
pub trait Backend {
    /// Which implementation this is (never `Auto` or `All`).
    fn implementation(&self) -> Implementation;

    fn device(&self) -> DeviceInfo;

    /// Whether this backend implements the layout (the WGSL path is NHD only).
    fn supports(&self, layout: Layout) -> bool;

    /// Memory needed for two caches of `cache_bytes` each and two inputs of `input_bytes` each
    /// (plus `num_tokens` slots), by where it lives.
    fn footprint(&self, cache_bytes: u64, input_bytes: u64, num_tokens: usize) -> Footprint;

    /// Memory free on the backend's own device, or `None` when it computes in host memory.
    fn device_memory(&self) -> Option<u64>;

    /// How `--mode` applies to this backend, for the report header.
    fn mode_note(&self, mode: Mode) -> String;

    /// The device's copy bandwidth in GB/s (bytes read plus bytes written per second), measured
    /// with a plain 16-byte copy kernel over a buffer much larger than the caches of the chip:
    /// the ceiling that benchmark rows are compared with. `None` where not measured.
    fn copy_bandwidth_gbps(&mut self) -> Result<Option<f64>> {
        Ok(None)
    }

    /// Allocates, uploads and compiles everything a call of `problem` needs. Never timed.
    /// The problem and its slots must already be validated.
    fn prepare<'a>(
        &'a mut self,
        problem: &Problem,
        inputs: Inputs<'a>,
        fill: CacheFill<'_>,
    ) -> Result<Box<dyn Prepared + 'a>>;
}

/// A call ready to run: buffers allocated, inputs uploaded, kernels compiled.
pub trait Prepared {
    /// Performs one call and waits for it to finish.
    fn run(&mut self) -> Result<()>;

    /// Measures calls with the backend's own clock (see [`crate::timing`]).
    fn time(&mut self, protocol: &Protocol) -> Result<Samples>;

    /// Copies both caches back to the host.
    fn read_back(&mut self) -> Result<Caches>;
}

/// Backends that could not be opened, with the reason, for `--implementation all` headers.
pub type Skipped = Vec<(Implementation, String)>;

/// Opens the backend(s) for `choice`. An explicitly named implementation that cannot run here is
/// an error; `all` skips what is unavailable (and says why), `auto` takes the first that opens.
pub fn select(
    choice: Implementation,
    options: &BackendOptions,
) -> Result<(Vec<Box<dyn Backend>>, Skipped)> {
    match choice {
        Implementation::Cpu | Implementation::Cuda | Implementation::Wgpu => {
            Ok((vec![open(choice, options, false)?], Vec::new()))
        }
        Implementation::All => {
            let mut opened = Vec::new();
            let mut skipped = Vec::new();
            for implementation in [
                Implementation::Cuda,
                Implementation::Wgpu,
                Implementation::Cpu,
            ] {
                match open(implementation, options, false) {
                    Ok(backend) => opened.push(backend),
                    Err(error) => skipped.push((implementation, error.to_string())),
                }
            }
            Ok((opened, skipped))
        }
        Implementation::Auto => {
            let mut skipped = Vec::new();
            for implementation in [Implementation::Cuda, Implementation::Wgpu] {
                match open(implementation, options, true) {
                    Ok(backend) => return Ok((vec![backend], skipped)),
                    Err(error) => skipped.push((implementation, error.to_string())),
                }
            }
            Ok((vec![open(Implementation::Cpu, options, true)?], skipped))
        }
    }
}

/// Opens one backend. With `hardware_only`, a software wgpu adapter (such as lavapipe) is not
/// taken: the native CPU path is faster than a software GPU on the same cores.
fn open(
    implementation: Implementation,
    options: &BackendOptions,
    hardware_only: bool,
) -> Result<Box<dyn Backend>> {
    // Not every arm uses every argument in every feature combination.
    let _ = (options, hardware_only);
    match implementation {
        Implementation::Cpu => Ok(Box::new(cpu::CpuBackend::new())),
        #[cfg(feature = "cuda")]
        Implementation::Cuda => Ok(Box::new(cuda::CudaBackend::open()?)),
        #[cfg(not(feature = "cuda"))]
        Implementation::Cuda => Err(Error::Unavailable {
            implementation: "cuda",
            reason: "this binary was built without the `cuda` feature".into(),
        }),
        #[cfg(feature = "wgpu")]
        Implementation::Wgpu => Ok(Box::new(wgpu::WgpuBackend::open(
            options.adapter.as_deref(),
            hardware_only,
            options.wgpu,
        )?)),
        #[cfg(not(feature = "wgpu"))]
        Implementation::Wgpu => Err(Error::Unavailable {
            implementation: "wgpu",
            reason: "this binary was built without the `wgpu` feature".into(),
        }),
        Implementation::Auto | Implementation::All => Err(Error::InvalidConfig(format!(
            "`{}` names a choice, not one implementation",
            implementation.name()
        ))),
    }
}
