//! Backends: the implementations of `reshape_and_cache_flash` that the benchmark can run, the
//! small trait they all fill in, and the dispatcher that picks them.
//!
//! A backend's life cycle keeps timing honest:
//! 1. [`Backend::prepare`] allocates, uploads and compiles (never timed) and returns a
//!    [`Prepared`] call;
//! 2. [`Prepared::run`] performs one call (for checks and latency), [`Prepared::time_batch`]
//!    runs many back to back on the backend's own clock, for [`crate::timing::measure`];
//! 3. [`Prepared::read_back`] returns the caches for verification;
//! 4. with `--ceiling pattern`, [`Prepared::pattern`] switches the call to its pattern kernel,
//!    which the same protocol then times on the same buffers.

use crate::error::{Error, Result};
use crate::options::Options;
use crate::problem::{Layout, Problem};
use crate::user_kernel::{Language, UserKernel};
use crate::workload::{CacheFill, Caches, Inputs, Scaling};

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

/// What a backend is: one implementation of the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The CUDA C++ kernels (NVIDIA GPUs).
    Cuda,
    /// The WGSL compute shaders on wgpu (any GPU with Vulkan, Metal or DX12; NHD only).
    Wgpu,
    /// The CPU reference semantics, parallel over cache blocks.
    Cpu,
}

impl Kind {
    /// Every kind, in the order `all` runs them.
    pub const ALL: [Kind; 3] = [Kind::Cuda, Kind::Wgpu, Kind::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Cuda => "cuda",
            Kind::Wgpu => "wgpu",
            Kind::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which backends to open: the `--implementation` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selection {
    /// CUDA if an NVIDIA driver and GPU are present, else a hardware wgpu adapter, else the CPU.
    Auto,
    /// Every backend available here, side by side.
    All,
    /// This one, or an error saying why it cannot run here.
    Only(Kind),
    /// No built-in implementation: only the users' kernels (`--kernel`, `--shader`).
    None,
}

impl Selection {
    pub fn name(self) -> &'static str {
        match self {
            Selection::Auto => "auto",
            Selection::All => "all",
            Selection::Only(kind) => kind.name(),
            Selection::None => "none",
        }
    }
}

impl clap::ValueEnum for Selection {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            Selection::Auto,
            Selection::Only(Kind::Cuda),
            Selection::Only(Kind::Wgpu),
            Selection::Only(Kind::Cpu),
            Selection::All,
            Selection::None,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            Selection::Auto => {
                "CUDA if an NVIDIA driver and GPU are present, else a hardware wgpu adapter, \
                 else the CPU"
            }
            Selection::All => "every implementation available here, side by side",
            Selection::Only(Kind::Cuda) => "the CUDA C++ kernels (NVIDIA GPUs)",
            Selection::Only(Kind::Wgpu) => {
                "the WGSL shaders on wgpu (any GPU: Vulkan, Metal, DX12; NHD layout only)"
            }
            Selection::Only(Kind::Cpu) => "the CPU reference semantics, parallel over cache blocks",
            Selection::None => "no built-in implementation: only your --kernel and --shader files",
        };
        Some(clap::builder::PossibleValue::new(self.name()).help(help))
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

/// One implementation of `reshape_and_cache_flash` on one device.
pub trait Backend {
    /// Which implementation this is.
    fn kind(&self) -> Kind;

    /// The implementation's name in reports: the kind's (`cuda`, `wgpu`, `cpu`), or a user
    /// kernel's (`--kernel NAME=FILE`), which runs on a backend of its language's kind.
    fn name(&self) -> String {
        self.kind().name().to_string()
    }

    /// The user's kernel this backend runs (`--kernel`, `--shader`), `None` for the built-in
    /// implementations. A user's kernel declares what it implements: a call outside that is
    /// n/a in a sweep (not a refusal of the whole run), and it is verified before it is timed.
    fn user_kernel(&self) -> Option<&UserKernel> {
        None
    }

    fn device(&self) -> DeviceInfo;

    /// Whether this backend implements the layout (the WGSL path is NHD only).
    fn supports(&self, layout: Layout) -> bool;

    /// Refuses, with [`Error::Unsupported`], calls of a kind this backend does not implement
    /// besides their layout (a cache dtype, input strides, per-head scales). Checked before a
    /// sweep runs, by verification (n/a rather than a failure), and by `prepare`.
    fn check_support(&self, problem: &Problem, scaling: Scaling) -> Result<()> {
        let _ = (problem, scaling);
        Ok(())
    }

    /// Memory needed for two caches of `cache_bytes` each and two inputs of `input_bytes` each
    /// (plus `num_tokens` slots), by where it lives.
    fn footprint(&self, cache_bytes: u64, input_bytes: u64, num_tokens: usize) -> Footprint;

    /// Cache blocks a sweep allocates when `--num-blocks` is not given, for blocks of
    /// `block_bytes` (one cache's): vLLM's [`crate::sweep::DEFAULT_NUM_BLOCKS`] unless the
    /// backend has a reason to differ (the CPU's caches are kept small). The sweep takes the
    /// smallest of its backends' defaults, then shrinks it to fit memory.
    fn default_num_blocks(&self, block_bytes: u64) -> usize {
        let _ = block_bytes;
        crate::sweep::DEFAULT_NUM_BLOCKS
    }

    /// Why [`Backend::default_num_blocks`] is below vLLM's, for the report's header.
    fn default_num_blocks_reason(&self) -> &'static str {
        crate::sweep::QUICK
    }

    /// Seconds of device-time sampling per row, at most, when `--max-time` is not given: the
    /// protocol's default unless the backend has a reason to differ (the CPU's). The sweep
    /// takes the smallest of its backends'.
    fn default_max_time(&self) -> std::time::Duration {
        crate::timing::Sampling::default().max_time
    }

    /// Memory free on the backend's own device, or `None` when it computes in host memory.
    fn device_memory(&self) -> Option<u64>;

    /// How a call is issued and timed on this backend (and how `--mode` applies), for the
    /// report header.
    fn mode_note(&self) -> String;

    /// How device time is taken, in a few words, for the table's title: vLLM's `measuring
    /// with cudagraph` on CUDA, the clock elsewhere (where `--mode` does not apply).
    fn mode_summary(&self) -> String;

    /// The device's copy bandwidth in GB/s (bytes read plus bytes written per second), measured
    /// with a plain 16-byte copy kernel over a buffer much larger than the caches of the chip:
    /// the ceiling that benchmark rows are compared with. `None` where not measured.
    fn copy_bandwidth_gbps(&mut self) -> Result<Option<f64>> {
        Ok(None)
    }

    /// A hint before a sweep's first row: `largest` is its largest call. A backend that keeps
    /// buffers between calls allocates them for it now, so that every row of the sweep uses
    /// the same allocations rather than ones that depend on the rows before it. Nothing
    /// by default.
    fn reserve(&mut self, largest: &Problem) -> Result<()> {
        let _ = largest;
        Ok(())
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
///
/// The methods are the small primitives that [`crate::timing::measure`] drives: the timing
/// protocol (warm, cold and rotating runs, batch sizing, the stopping rule) is written once
/// there, the same for every backend.
pub trait Prepared {
    /// Performs one call, issued the way it is timed (on CUDA in `cudagraph` mode, the replay of
    /// a graph holding the call), and waits for it to finish.
    fn run(&mut self) -> Result<()>;

    /// Rotating inputs: later batches cycle over the call itself and one further call per
    /// given slot mapping, each reading its own copy of the inputs and writing those slots.
    fn rotate(&mut self, slot_mappings: &[Vec<i64>]) -> Result<()>;

    /// A batch holds a whole number of this many calls (a CUDA graph's calls, a rotation).
    fn batch_unit(&self) -> usize;

    /// Runs `calls` back-to-back calls (1, or a whole number of [`Prepared::batch_unit`]s)
    /// and returns their total time in microseconds on the backend's own clock (CUDA events,
    /// wgpu timestamps, the host clock for the CPU).
    fn time_batch(&mut self, calls: usize) -> Result<f64>;

    /// Evicts the call's data from the device's caches, and waits, so that the next call starts
    /// cold. Not timed.
    fn flush_cache(&mut self) -> Result<()>;

    /// Copies both caches back to the host.
    fn read_back(&mut self) -> Result<Caches>;

    /// `--ceiling pattern`: switches this call to its pattern kernel, for good. Later `run`,
    /// `rotate` and `time_batch` calls then issue, on the same buffers and slots and the same
    /// way (graphs, dispatch plan, threads), a plain kernel that reads the bytes the call reads
    /// and writes as many bytes to the addresses it writes, with the arithmetic removed: an
    /// `auto` cache gets the same bytes, an fp8 cache one byte per element taken from the
    /// input (its high byte) rather than its code. Scales are not read. The row's own
    /// ceiling: how fast its write pattern can go. Returns false where the backend has no
    /// pattern kernel (the call is then unchanged).
    fn pattern(&mut self) -> Result<bool> {
        Ok(false)
    }
}

/// Backends that could not be opened, with the reason, for `--implementation all` headers.
pub type Skipped = Vec<(Kind, Error)>;

/// Opens the backend(s) for `selection`. An explicitly named backend that cannot run here is
/// an error; `all` skips what is unavailable (and says why), `auto` takes the first that opens.
pub fn select(selection: Selection, options: &Options) -> Result<(Vec<Box<dyn Backend>>, Skipped)> {
    match selection {
        Selection::None => Ok((Vec::new(), Vec::new())),
        Selection::Only(kind) => Ok((vec![open(kind, options, false)?], Vec::new())),
        Selection::All => {
            let mut opened = Vec::new();
            let mut skipped = Vec::new();
            for kind in Kind::ALL {
                match open(kind, options, false) {
                    Ok(backend) => opened.push(backend),
                    Err(error) => skipped.push((kind, error)),
                }
            }
            Ok((opened, skipped))
        }
        Selection::Auto => {
            let mut skipped = Vec::new();
            for kind in [Kind::Cuda, Kind::Wgpu] {
                match open(kind, options, true) {
                    Ok(backend) => return Ok((vec![backend], skipped)),
                    Err(error) => skipped.push((kind, error)),
                }
            }
            Ok((vec![open(Kind::Cpu, options, true)?], skipped))
        }
    }
}

/// How many devices `kind` can run on here (`--device` counts from 0): CUDA devices, wgpu
/// adapters of the chosen API (software ones included), one for the CPU.
pub fn device_count(kind: Kind, options: &Options) -> usize {
    let _ = options;
    match kind {
        Kind::Cpu => 1,
        #[cfg(feature = "cuda")]
        Kind::Cuda => cuda::device_count(),
        #[cfg(feature = "wgpu")]
        Kind::Wgpu => wgpu::adapter::list(options.wgpu.api).len(),
        #[cfg(not(all(feature = "cuda", feature = "wgpu")))]
        #[allow(unreachable_patterns)]
        _ => 0,
    }
}

/// Opens one backend. With `hardware_only`, a software wgpu adapter (such as lavapipe) is not
/// taken: the native CPU path is faster than a software GPU on the same cores.
pub fn open(kind: Kind, options: &Options, hardware_only: bool) -> Result<Box<dyn Backend>> {
    // Not every arm uses every argument in every feature combination.
    let _ = (options, hardware_only);
    match kind {
        Kind::Cpu => match options.device {
            Some(device) if device > 0 => Err(Error::Unavailable {
                backend: Kind::Cpu,
                reason: format!("no CPU device {device}: the CPU backend is device 0"),
            }),
            _ => Ok(Box::new(cpu::CpuBackend::new())),
        },
        #[cfg(feature = "cuda")]
        Kind::Cuda => Ok(Box::new(cuda::CudaBackend::open(options)?)),
        #[cfg(feature = "wgpu")]
        Kind::Wgpu => Ok(Box::new(wgpu::WgpuBackend::open_device(
            options.adapter.as_deref(),
            options.device,
            hardware_only,
            options.wgpu,
        )?)),
        #[cfg(not(all(feature = "cuda", feature = "wgpu")))]
        #[allow(unreachable_patterns)]
        kind => Err(Error::Unavailable {
            backend: kind,
            reason: format!("this binary was built without the `{kind}` feature"),
        }),
    }
}

/// Opens a user's kernel (`--kernel`, `--shader`) on a backend of its language, on the device
/// `options` choose. Compile errors, an absent entry point and the like are errors here, before
/// anything runs; the built-in implementations are not affected by them.
pub fn open_user(kernel: &UserKernel, options: &Options) -> Result<Box<dyn Backend>> {
    let _ = options;
    match kernel.language {
        #[cfg(feature = "wgpu")]
        Language::Wgsl => Ok(Box::new(wgpu::user::UserShader::open(kernel, options)?)),
        #[cfg(feature = "cuda")]
        Language::Cuda => cuda::user::open(kernel, options),
        #[cfg(not(feature = "cuda"))]
        Language::Cuda => Err(Error::Unavailable {
            backend: Kind::Cuda,
            reason: "this binary was built without the `cuda` feature".into(),
        }),
        #[cfg(not(feature = "wgpu"))]
        Language::Wgsl => Err(Error::Unavailable {
            backend: Kind::Wgpu,
            reason: "this binary was built without the `wgpu` feature".into(),
        }),
    }
}
