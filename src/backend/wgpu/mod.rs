//! The wgpu backend: `shaders/reshape_and_cache_flash.wgsl` on any adapter wgpu opens (Vulkan,
//! Metal, DX12; lavapipe for machines without a GPU). NHD layout only.
//!
//! Design, in short (the shader's header says more):
//! - Caches are split into chunks of whole cache blocks, one buffer per chunk, each no larger
//!   than the adapter's storage-binding limit (2 GiB on NVIDIA's Vulkan driver, 128 MiB on
//!   lavapipe). A dispatch binds up to 32 key and 32 value chunks (11 on adapters that allow
//!   fewer than 70 storage bindings per stage: lavapipe, Metal) and every thread stores into
//!   the chunk its slot falls in, so a call is one dispatch per group of chunks: one for the
//!   default 32 GiB bf16 caches (17 chunks) on an H100.
//! - Rows (num_heads x head_size) that are a multiple of 16 bytes (every benchmark shape) move
//!   16 bytes per thread; other rows take a u32-word kernel (with atomics where two slots'
//!   rows share a word), one chunk per dispatch.
//! - Inputs larger than one binding are split by tokens into equal ranges, two of them per
//!   dispatch (bound as two parts) in the 16-byte kernels: the default 65536 bf16 tokens are
//!   one dispatch.
//! - Where the caches are wgpu's own allocations, calls whose rows spread over more of the
//!   caches than a GPU's address translation caches cover (2 x 32 GiB on an H100: the TLB
//!   misses, not the bytes, set the time) take their tokens in slot order: three small passes
//!   in the call bucket the tokens by slot range on the device, and the kernel reads them
//!   through that order, so that the rows being written at any moment lie close together.
//!   Dedicated allocations (below) do not need it and take tokens as they come.
//!   See docs/perf-log-wgpu.md.
//! - Slots are uploaded as the int64 they are, read as (lo, hi) u32 pairs; the shader skips
//!   -1 and anything outside the cache itself.
//! - fp8 (e4m3 and e5m2) is bit-exact with `fp8::quantize` / `quantize_e5m2` although WGSL
//!   division is not correctly rounded: see the shader, and the exhaustive tests in
//!   `tests/wgpu.rs` and `tests/wgpu_workloads.rs`. The short encoder (`quantize_fast`) rounds
//!   a multiplication by the scale's reciprocal straight to the format and leaves only
//!   elements near a rounding boundary (about one in 2000) to the long one (`quantize`), for
//!   the scales it handles (`WgpuTuning::fp8_fast` turns it off). For large calls of half and
//!   bfloat16 inputs a lookup table of every 16-bit pattern's code, built in each call by that
//!   same encoder, replaces it (the default; `WgpuTuning::fp8_lut` turns it off); threshold
//!   tables are there when asked for (`WgpuTuning::fp8_table`: no faster than the short
//!   encoder). Small fp8 calls (and float ones up to 2^25 elements) take no table: four
//!   threads share each 16-byte cache unit, each encoding one word (`SPLIT`;
//!   `WgpuTuning::fp8_split`), which shortens the chain of encodings that sets their time.
//!   Per-head scales travel after the slots in the slots buffer (no binding of their own: the
//!   narrow kernels already use all that Metal allows); with them the lookup table is one table
//!   per head, taken for calls large enough to pay for building it, and the threshold tables
//!   (per tensor) are not used.
//! - Keys and values may be slices of a fused QKV tensor: each token range is uploaded from
//!   its first token's keys to its last's (the span, as the kernel reads it) and rows are
//!   found through the token stride (a parameter, with the `STRIDED` override: one pipeline for
//!   every strided shape); heads within a row are contiguous.
//! - On Vulkan the cache buffers are made with dedicated allocations of their own and handed
//!   to wgpu (`dedicated`; `WgpuTuning::cache_alloc`): with wgpu's allocations, large caches
//!   are translated in small pages and a call over 2 x 32 GiB runs at a third of copy
//!   bandwidth on an H100; with dedicated ones, as fast as over 2 x 2 GiB.
//! - Every wgpu error is captured (error scopes around allocation, compilation and uploads; an
//!   uncaptured-error handler for the rest) and returned as one line, never a panic.
//!
//! Where things are: `adapter` finds the adapter, `device` wraps the device (errors, pipelines,
//! buffers, transfers), `plan` decides how a problem maps onto buffers and dispatches and
//! `fp8_plan` how it encodes fp8 (both pure), `bindings` and `abi` hold what the host shares
//! with the shader, `caches` the caches on the device (`dedicated` their Vulkan allocations),
//! `call` builds, runs and times one call, `fp8_tables` the encoder's tables and its test entry
//! points, `timer` device time and the cold-timing flush, `budget` free memory.
//! The tuning (`crate::options::WgpuTuning`) is the only way to change the backend's choices;
//! it reads no environment variable.

mod abi;
pub mod adapter;
mod bindings;
mod budget;
mod caches;
mod call;
mod dedicated;
mod device;
mod fp8_plan;
mod fp8_tables;
mod inputs;
mod plan;
mod timer;
pub mod user;

use super::{Backend, DeviceInfo, Footprint, Kind, Prepared};
use crate::error::{Bytes, Error, Result};
use crate::options::{CacheAlloc, WgpuTuning};
use crate::problem::{Layout, Problem};
use crate::timing;
use crate::workload::{CacheFill, Inputs, Scaling};

use adapter::unavailable;
use caches::DeviceCaches;
use call::WgpuCall;
use device::{Gpu, STAGING_BYTES};
use inputs::InputPool;
use plan::{AdapterLimits, Plan};
use timer::{Flush, Timer, FLUSH_BYTES};

/// The shader as build.rs assembled it from `shaders/reshape_and_cache_flash.wgsl`, `fp8.wgsl` and
/// `bindings.rs`.
const SHADER: &str = include_str!(concat!(env!("OUT_DIR"), "/reshape_and_cache_flash.wgsl"));

/// The wgpu backend on one adapter.
pub struct WgpuBackend {
    gpu: Gpu,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    /// Whether TIMESTAMP_QUERY is enabled (device time from the GPU's clock).
    timestamps: bool,
    /// The largest buffer bound to one storage binding: the adapter's limits, or smaller when
    /// the tuning asks for it.
    max_binding: u64,
    /// What tests and experiments ask for instead of the backend's own choices.
    tuning: WgpuTuning,
    caches: Option<DeviceCaches>,
    /// Whether cache buffers get dedicated Vulkan allocations (`tuning.cache_alloc` resolved
    /// on this adapter).
    dedicated_caches: bool,
    /// The fp8 sign bit of the NaN of an invalid division (see `fp8::quantize` and the shader).
    nan_sign: u32,
    /// Timestamp queries for timed passes, where the adapter has them.
    timer: Option<Timer>,
    /// The cold-timing cache flush, allocated on first use.
    flush: Option<Flush>,
    /// The main call's input buffers, kept between calls (see `inputs`).
    input_pool: InputPool,
}

impl WgpuBackend {
    /// Opens an adapter: the first whose name contains `adapter` (case-insensitive), else the
    /// best one (discrete > integrated > virtual > software). With `hardware_only`, software
    /// adapters (lavapipe) are refused: the native CPU backend beats a software GPU. `tuning`
    /// sets limits below the adapter's and choices the backend would otherwise make itself.
    pub fn open(adapter: Option<&str>, hardware_only: bool, tuning: WgpuTuning) -> Result<Self> {
        Self::open_device(adapter, None, hardware_only, tuning)
    }

    /// As [`WgpuBackend::open`], on the adapter at `index` in the order wgpu lists those of
    /// `tuning.api` (see [`adapter::list`]) when given.
    pub fn open_device(
        adapter: Option<&str>,
        index: Option<usize>,
        hardware_only: bool,
        tuning: WgpuTuning,
    ) -> Result<Self> {
        let adapter = adapter::find_adapter(adapter, index, hardware_only, tuning.api)?;
        let info = adapter.get_info();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let gpu = Gpu::open(
            &adapter,
            timestamps,
            tuning.max_workgroups_per_dimension,
            SHADER,
        )?;
        let dedicated_caches = cache_alloc(&gpu.device, &info, tuning.cache_alloc)?;
        let limits = gpu.device.limits();
        // Vec4 arrays want 16-byte multiples; the shader's u32 indices want under 4 GiB.
        let mut max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(u32::MAX as u64);
        if let Some(cap) = tuning.max_binding_bytes {
            max_binding = max_binding.min(cap);
        }
        max_binding &= !15;
        let timer = if timestamps {
            Some(Timer::new(&gpu)?)
        } else {
            None
        };
        let mut backend = Self {
            gpu,
            info,
            limits,
            timestamps,
            max_binding,
            tuning,
            caches: None,
            dedicated_caches,
            nan_sign: fp8_tables::host_nan_sign(),
            timer,
            flush: None,
            input_pool: InputPool::default(),
        };
        // Shader compilation errors surface as uncaptured errors: report them now.
        backend.gpu.check_errors()?;
        if backend.max_binding < 16 {
            return Err(unavailable(format!(
                "{} allows storage bindings of only {} bytes",
                backend.info.name, backend.max_binding
            )));
        }
        // Building one pipeline up front proves the shader compiles on this driver.
        backend.gpu.pipeline("copy", &[])?;
        Ok(backend)
    }

    /// Input buffers allocated so far: a sweep's rows allocate none after
    /// [`Backend::reserve`] (for tests).
    #[doc(hidden)]
    pub fn input_allocations(&self) -> usize {
        self.input_pool.allocations()
    }

    /// Whether the adapter is a software rasteriser (its "device memory" is host memory).
    fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// How `problem` runs on this adapter (see [`Plan::new`]).
    fn plan(&self, problem: &Problem) -> Result<Plan> {
        let limits = AdapterLimits {
            max_binding: self.max_binding,
            max_storage_bindings: self.limits.max_storage_buffers_per_shader_stage,
            max_buffer_size: self.limits.max_buffer_size,
            storage_offset_alignment: self.limits.min_storage_buffer_offset_alignment as u64,
            software: self.is_software(),
            dedicated_caches: self.dedicated_caches,
        };
        let plan = Plan::new(problem, &limits, &self.tuning, &self.info.name)?;
        if self.tuning.trace {
            eprintln!(
                "wgpu plan: {:?} chunks={} (max_buffer_size={} storage offset alignment={}) {plan:?}",
                problem.describe(),
                plan.chunk_bytes.len(),
                limits.max_buffer_size,
                limits.storage_offset_alignment.max(1)
            );
        }
        Ok(plan)
    }
}

/// Whether the caches get dedicated allocations on this device: `auto` where the adapter is
/// Vulkan and the device can make them; `dedicated` anywhere else is a configuration error
/// (before anything is measured).
fn cache_alloc(device: &wgpu::Device, info: &wgpu::AdapterInfo, asked: CacheAlloc) -> Result<bool> {
    let reason = if info.backend == wgpu::Backend::Vulkan {
        dedicated::unsupported_reason(device)
    } else {
        Some(format!(
            "{} is a {} adapter",
            info.name,
            info.backend.to_str()
        ))
    };
    match (asked, reason) {
        (CacheAlloc::Wgpu, _) => Ok(false),
        (CacheAlloc::Auto, reason) => Ok(reason.is_none()),
        (CacheAlloc::Dedicated, None) => Ok(true),
        (CacheAlloc::Dedicated, Some(reason)) => Err(Error::InvalidConfig(format!(
            "--wgpu-cache-alloc dedicated needs a Vulkan device that makes dedicated \
             allocations: {reason}"
        ))),
    }
}

impl Backend for WgpuBackend {
    fn kind(&self) -> Kind {
        Kind::Wgpu
    }

    fn device(&self) -> DeviceInfo {
        let driver = if self.info.driver.is_empty() {
            self.info.driver_info.clone()
        } else {
            format!("{} {}", self.info.driver, self.info.driver_info)
        };
        let tuning = self.tuning.non_default();
        DeviceInfo {
            name: self.info.name.clone(),
            details: format!(
                "{} ({:?}), driver {}, wgpu 30; storage bindings up to {}; caches in {}{}",
                self.info.backend.to_str(),
                self.info.device_type,
                driver.trim(),
                Bytes(self.max_binding),
                if self.dedicated_caches {
                    "dedicated allocations"
                } else {
                    "wgpu's allocations"
                },
                if tuning.is_empty() {
                    String::new()
                } else {
                    format!("; overrides: {}", tuning.join(" "))
                }
            ),
        }
    }

    fn supports(&self, layout: Layout) -> bool {
        layout == Layout::Nhd
    }

    fn check_support(&self, problem: &Problem, scaling: Scaling) -> Result<()> {
        let _ = scaling;
        let unsupported = |what: &str| {
            Err(Error::Unsupported {
                backend: Kind::Wgpu.name().into(),
                what: what.into(),
            })
        };
        // The kernels take a token's heads as one contiguous row (fused QKV inputs are), and
        // fp8 rows in 16-byte units.
        let strides = problem.inputs();
        if strides.head != problem.head_size as u64 {
            return unsupported("input head strides other than the head size");
        }
        if problem.cache_dtype.is_fp8() && !plan::input_units_aligned(problem) {
            return unsupported(
                "fp8 caches of inputs whose token stride is not a multiple of 16 bytes",
            );
        }
        Ok(())
    }

    fn footprint(&self, cache_bytes: u64, input_bytes: u64, num_tokens: usize) -> Footprint {
        // Both caches and inputs, the slots, and either the cold-timing flush buffer or the
        // input copies of rotating timing (under 2 * ROTATION_BYTES, see
        // `timing::rotation_sets`); uploads stage through host memory.
        let bytes = 2 * cache_bytes
            + 2 * input_bytes
            + 8 * num_tokens as u64
            + FLUSH_BYTES
                .min(self.max_binding)
                .max(2 * timing::ROTATION_BYTES);
        if self.is_software() {
            Footprint {
                host: bytes + STAGING_BYTES,
                device: 0,
            }
        } else {
            Footprint {
                host: STAGING_BYTES,
                device: bytes,
            }
        }
    }

    /// A software adapter computes on the CPU: it takes the CPU backend's small default.
    fn default_num_blocks(&self, block_bytes: u64) -> usize {
        if self.is_software() {
            super::cpu::default_num_blocks(block_bytes)
        } else {
            crate::sweep::DEFAULT_NUM_BLOCKS
        }
    }

    /// A software adapter times with the host's clock and memory, as the CPU backend does.
    fn default_max_time(&self) -> std::time::Duration {
        if self.is_software() {
            super::cpu::DEFAULT_MAX_TIME
        } else {
            timing::Sampling::default().max_time
        }
    }

    fn device_memory(&self) -> Option<u64> {
        // wgpu has no portable way to ask; Vulkan drivers tell a budget (see memory_budget),
        // other APIs give None and allocation failures are reported as out-of-memory errors.
        if self.is_software() {
            None
        } else {
            budget::memory_budget(&self.gpu.device)
        }
    }

    fn mode_note(&self) -> String {
        format!(
            "--mode does not apply to wgpu: WebGPU cannot replay recorded work (no graphs; \
             command buffers are single-use), so every call records and submits one command \
             buffer (one compute pass, one dispatch per group of up to {} cache chunks, {} on \
             adapters with few storage bindings); device time: back-to-back calls in one \
             compute pass per sample (one call after a cache flush when cold; calls cycling \
             over copies of the inputs when rotating), {}",
            abi::WIDE_CHUNKS,
            abi::CHUNKS,
            if self.timestamps {
                "timed by timestamp queries at the pass boundaries"
            } else {
                "timed by the host clock (this adapter has no timestamp queries)"
            }
        )
    }

    fn mode_summary(&self) -> String {
        if self.timestamps {
            "device time from timestamp queries".into()
        } else {
            "host clock: the adapter has no timestamp queries".into()
        }
    }

    fn copy_bandwidth_gbps(&mut self) -> Result<Option<f64>> {
        self.measure_copy_bandwidth()
    }

    /// Allocates the kept input buffers of the largest call (inputs do not depend on the
    /// layout; the plan is NHD's, the only one this backend runs).
    fn reserve(&mut self, largest: &Problem) -> Result<()> {
        let problem = Problem {
            layout: Layout::Nhd,
            ..*largest
        };
        problem.validate()?;
        self.gpu.check_errors()?;
        let plan = self.plan(&problem)?;
        // Room for per-head scales after the slots wherever the cache is fp8 (the problem does
        // not say whether the scales will be per head).
        let scale_bytes = if problem.cache_dtype.is_fp8() {
            (2 * problem.num_heads * std::mem::size_of::<abi::GpuScale>()) as u64
        } else {
            0
        };
        for (index, batch) in plan.batches(&problem).iter().enumerate() {
            for (role, bytes) in inputs::batch_buffers(&problem, batch, scale_bytes) {
                self.input_pool.get(&self.gpu, index, role, bytes)?;
            }
        }
        Ok(())
    }

    fn prepare<'a>(
        &'a mut self,
        problem: &Problem,
        inputs: Inputs<'a>,
        fill: CacheFill<'_>,
    ) -> Result<Box<dyn Prepared + 'a>> {
        inputs.validate_for(problem)?;
        self.check_support(problem, inputs.scaling())?;
        if problem.layout != Layout::Nhd {
            return Err(Error::InvalidConfig(
                "the wgpu path implements the NHD layout only".into(),
            ));
        }
        self.gpu.check_errors()?;
        let plan = self.plan(problem)?;
        self.prepare_caches(&plan, problem, fill)?;
        let work = self.build_call(problem, &plan, &inputs, true, false)?;
        Ok(Box::new(WgpuCall {
            backend: self,
            problem: *problem,
            plan,
            inputs,
            work,
            copies: Vec::new(),
            rotation: Vec::new(),
            pattern: false,
        }))
    }
}
