//! The wgpu backend: `shaders/reshape_and_cache_flash.wgsl` on any adapter wgpu opens (Vulkan,
//! Metal, DX12; lavapipe for machines without a GPU). NHD layout only.
//!
//! Design, in short (the shader's header says more):
//! - Caches are split into chunks of whole cache blocks, one buffer per chunk, each no larger
//!   than the adapter's storage-binding limit (2 GiB on NVIDIA's Vulkan driver, 128 MiB on
//!   lavapipe). A dispatch binds up to 32 key and 32 value chunks (12 on adapters that allow
//!   fewer than 70 storage bindings per stage: lavapipe, Metal) and every thread stores into
//!   the chunk its slot falls in, so a call is one dispatch per group of chunks: one for the
//!   default 32 GiB bf16 caches (17 chunks) on an H100.
//! - Rows (num_heads x head_size) that are a multiple of 16 bytes (every benchmark shape) move
//!   16 bytes per thread; other rows take a u32-word kernel (with atomics where two slots'
//!   rows share a word), one chunk per dispatch.
//! - Inputs larger than one binding are split by tokens into equal ranges, two of them per
//!   dispatch (bound as two parts) in the 16-byte kernels: the default 65536 bf16 tokens are
//!   one dispatch.
//! - Calls whose rows spread over more of the caches than a GPU's address translation caches
//!   cover (2 x 32 GiB on an H100: the TLB misses, not the bytes, set the time) take their
//!   tokens in slot order: three small passes in the call bucket the tokens by slot range on
//!   the device, and the kernel reads them through that order, so that the rows being written
//!   at any moment lie close together. See docs/perf-log-wgpu.md.
//! - Slots are uploaded as the int64 they are, read as (lo, hi) u32 pairs; the shader skips
//!   -1 and anything outside the cache itself.
//! - fp8 is bit-exact with `fp8::quantize` although WGSL division is not correctly rounded: see
//!   the shader, and the exhaustive test in `tests/wgpu.rs`. Threshold tables built in each
//!   call cut the encoder's work (float inputs); for half and bfloat16 inputs a lookup table
//!   of every 16-bit pattern's code, built in each call by that same encoder, replaces it
//!   altogether (the default; `LimitOverrides::fp8_lut`, `PKB_WGPU_FP8_LUT=0` turns it off).
//! - Every wgpu error is captured (error scopes around allocation, compilation and uploads; an
//!   uncaptured-error handler for the rest) and returned as one line, never a panic.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use bytemuck::{Pod, Zeroable};

use super::{Backend, DeviceInfo, Footprint, Kind, Prepared};
use crate::error::{Bytes, Error, Result};
use crate::options::{WgpuApi, WgpuTuning};
use crate::problem::{CacheDtype, Dtype, Layout, Problem};
use crate::timing;
use crate::workload::{CacheFill, Caches, Inputs};

const SHADER: &str = include_str!("../../shaders/reshape_and_cache_flash.wgsl");

/// Threads per workgroup (`WORKGROUP` in the shader).
const WORKGROUP: u64 = 256;
/// Chunks of each cache that `reshape_and_cache` binds (`CHUNKS` in the shader).
const CHUNKS_PER_DISPATCH: usize = 11;
/// The most 16-byte units per thread the overrides may ask for.
const MAX_UNITS: u64 = 8;
/// Chunks of each cache that `reshape_and_cache_wide` binds (`WIDE_CHUNKS` in the shader).
const WIDE_CHUNKS_PER_DISPATCH: usize = 32;
/// Binding of key chunk j is `KEY_CHUNK_BINDING + j`, of value chunk j `VALUE_CHUNK_BINDING + j`.
const KEY_CHUNK_BINDING: u32 = 4;
const VALUE_CHUNK_BINDING: u32 = 36;

/// Storage bindings an entry point that binds `chunks` chunks of each cache uses: the chunks,
/// both inputs in two parts each, the slots and the token order.
const fn storage_bindings(chunks: usize) -> u32 {
    2 * chunks as u32 + 6
}
/// Bindings of the second part of the inputs (`key_in_hi`, `value_in_hi` in the shader).
const KEY_HI_BINDING: u32 = 69;
const VALUE_HI_BINDING: u32 = 70;
/// Binding of the token order in the cache-writing entry points (`order` in the shader).
const ORDER_BINDING: u32 = 68;
/// Pages of 2 MiB (over both caches) past which calls take their tokens in slot order: on an
/// H100, 2 x 8 GiB caches ran 4096 random tokens (some 5200 pages) at 99% of copy speed as
/// they come and at 91% in slot order, 2 x 32 GiB ones (some 7200 pages) at 66% and 76%.
const TRANSLATION_REACH_PAGES: u64 = 6000;
/// Buckets (slot ranges) of the slot-order pass by default.
const ORDER_BUCKETS: u32 = 1024;
/// Uploads and read-backs move at most this much per staging buffer, so that copying a
/// 32 GiB cache never needs 32 GiB of staging memory.
const STAGING_BYTES: u64 = 64 << 20;
/// Bytes overwritten before each cold call to evict the device's caches: several times the
/// last-level cache of current GPUs (50 MiB on an H100); software adapters are capped lower by
/// their bindings.
const FLUSH_BYTES: u64 = 256 << 20;

// Limits below the adapter's own and choices the backend would otherwise make itself (tests,
// experiments): an option like every other knob.
pub use crate::options::WgpuTuning as LimitOverrides;

/// The wgpu backend on one adapter.
pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    /// Whether TIMESTAMP_QUERY is enabled (device time from the GPU's clock).
    timestamps: bool,
    /// The largest buffer bound to one storage binding: the adapter's limits, or smaller when
    /// a test asks for it.
    max_binding: u64,
    /// Workgroups per grid dimension: the adapter's limit, or fewer when a test asks for it.
    max_workgroups: u32,
    /// What tests and experiments ask for instead of the backend's own choices.
    overrides: LimitOverrides,
    module: wgpu::ShaderModule,
    pipelines: HashMap<String, wgpu::ComputePipeline>,
    caches: Option<DeviceCaches>,
    /// Errors no error scope caught (from the uncaptured-error handler and device loss).
    errors: Arc<Mutex<Vec<String>>>,
    /// The fp8 sign bit of the NaN of an invalid division (see `fp8::quantize` and the shader).
    nan_sign: u32,
    /// Timestamp queries for timed passes, where the adapter has them.
    timer: Option<Timer>,
    /// The cold-timing cache flush, allocated on first use.
    flush: Option<Flush>,
}

/// Two timestamps (the start and end of a pass) and where they are read back.
struct Timer {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
}

/// A dispatch that overwrites a buffer larger than the device's caches.
struct Flush {
    /// The buffer written and the dispatch's parameters, kept alive with the bind group.
    buffers: [wgpu::Buffer; 2],
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
}

impl Drop for Flush {
    fn drop(&mut self) {
        for buffer in &self.buffers {
            buffer.destroy();
        }
    }
}

/// Both caches on the device, chunk by chunk, kept between prepares of the same shape.
struct DeviceCaches {
    chunk_bytes: Vec<u64>,
    /// Whether each cache is one buffer (`key[0]`, `value[0]`) whose chunks are windows, rather
    /// than one buffer per chunk.
    one_buffer: bool,
    key: Vec<wgpu::Buffer>,
    value: Vec<wgpu::Buffer>,
    /// The seed of the random fill the caches hold, if they hold one.
    random_fill: Option<u64>,
}

/// A chunk of a cache: a buffer and the window of it that the chunk is.
#[derive(Clone, Copy)]
struct Window<'a> {
    buffer: &'a wgpu::Buffer,
    offset: u64,
    size: u64,
}

impl<'a> Window<'a> {
    fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self {
            buffer,
            offset: 0,
            size: buffer.size(),
        }
    }

    fn binding(&self) -> wgpu::BufferBinding<'a> {
        wgpu::BufferBinding {
            buffer: self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.size),
        }
    }
}

impl DeviceCaches {
    /// Chunk `chunk` of the key (`value` false) or value cache.
    fn chunk(&self, value: bool, chunk: usize) -> Window<'_> {
        let buffers = if value { &self.value } else { &self.key };
        if self.one_buffer {
            Window {
                buffer: &buffers[0],
                offset: self.chunk_bytes[..chunk].iter().sum(),
                size: self.chunk_bytes[chunk],
            }
        } else {
            Window::whole(&buffers[chunk])
        }
    }
}

impl Drop for DeviceCaches {
    fn drop(&mut self) {
        // Free device memory now rather than when wgpu gets round to it: the next prepare may
        // need it.
        for buffer in self.key.iter().chain(&self.value) {
            buffer.destroy();
        }
    }
}

/// Which entry point writes the caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// `reshape_and_cache_wide`: 16-byte units, up to 32 chunks per dispatch.
    Wide,
    /// `reshape_and_cache`: 16-byte units, up to 11 chunks per dispatch.
    Multi,
    /// `reshape_and_cache_one`: 16-byte units, one chunk per dispatch.
    One,
    /// `reshape_and_cache_words`: u32 words (rows not a multiple of 16 bytes), one chunk per
    /// dispatch.
    Words,
}

/// How one problem maps onto buffers and dispatches on this adapter.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    kernel: Kernel,
    /// Cache blocks per chunk buffer.
    chunk_blocks: u64,
    /// Size of each chunk buffer (a multiple of 4; the last one may be padded).
    chunk_bytes: Vec<u64>,
    /// Tokens per input buffer.
    tokens_per_range: usize,
    /// Whether each cache is one buffer with the chunks as windows.
    one_buffer: bool,
    /// The slot-order pass, if tokens are taken in slot order.
    order: Option<OrderPlan>,
    /// 16-byte units per thread (`UNITS` in the shader).
    units: u32,
}

/// The slot-order pass of a call.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderPlan {
    buckets: u32,
    slots_per_bucket: u32,
}

impl Plan {
    /// The plan with one buffer per chunk and tokens as they come; `max_chunk_blocks` caps
    /// the blocks per chunk below what a binding holds.
    fn new(
        problem: &Problem,
        max_binding: u64,
        max_chunk_blocks: u64,
        max_storage_bindings: u32,
        device: &str,
    ) -> Result<Self> {
        let row_elements = problem.token_elements() as u64;
        let row_bytes = row_elements * problem.cache_element_size() as u64;
        let block_bytes = row_bytes * problem.block_size as u64;
        let vec4_rows = row_bytes.is_multiple_of(16);
        // The shader indexes slots with u32 (slot -1 is 0xffffffff in the high word).
        if problem.num_slots() >= u32::MAX as u64 {
            return Err(Error::InvalidConfig(format!(
                "the wgpu path indexes slots with 32 bits: a cache of {} slots is too large (at most {})",
                problem.num_slots(),
                u32::MAX - 1
            )));
        }
        let mut chunk_blocks = (max_binding / block_bytes)
            .min(max_chunk_blocks)
            .min(problem.num_blocks as u64);
        // Chunks must end on a word boundary (they do whenever rows are 16-byte multiples);
        // a single chunk holding the whole cache is padded to one instead.
        while chunk_blocks > 0
            && chunk_blocks < problem.num_blocks as u64
            && !(chunk_blocks * block_bytes).is_multiple_of(4)
        {
            chunk_blocks -= 1;
        }
        if chunk_blocks == 0 {
            return Err(Error::DoesNotFit {
                what: "one cache block".into(),
                needed: Bytes(block_bytes),
                available: Bytes(max_binding),
                device: format!("{device} (the largest storage binding)"),
                hint: "; use a smaller --block-size, fewer heads or a smaller head size".into(),
            });
        }
        let total = problem.cache_bytes();
        let full = chunk_blocks * block_bytes;
        let mut chunk_bytes = Vec::new();
        let mut offset = 0;
        while offset < total {
            let bytes = full.min(total - offset);
            chunk_bytes.push(bytes.next_multiple_of(4));
            offset += bytes;
        }
        let input_row = row_elements * problem.dtype.size() as u64;
        // A range's slots (8 bytes a token) must fit a binding too.
        let max_tokens = (max_binding / input_row.max(8)).min(problem.num_tokens as u64) as usize;
        if max_tokens == 0 {
            return Err(Error::DoesNotFit {
                what: "one token's keys".into(),
                needed: Bytes(input_row),
                available: Bytes(max_binding),
                device: format!("{device} (the largest storage binding)"),
                hint: "; use fewer heads or a smaller head size".into(),
            });
        }
        // Equal ranges: 65536 bf16 tokens of 128 x 128 are 4 bytes over a 2 GiB binding, and
        // two halves run better than one range and a range of one token.
        let ranges = problem.num_tokens.div_ceil(max_tokens);
        let tokens_per_range = problem.num_tokens.div_ceil(ranges);
        let kernel = if !vec4_rows {
            Kernel::Words
        } else if chunk_bytes.len() == 1 {
            Kernel::One
        } else if chunk_bytes.len() > CHUNKS_PER_DISPATCH
            && max_storage_bindings >= storage_bindings(WIDE_CHUNKS_PER_DISPATCH)
        {
            Kernel::Wide
        } else if max_storage_bindings >= storage_bindings(CHUNKS_PER_DISPATCH) {
            Kernel::Multi
        } else {
            Kernel::One
        };
        Ok(Self {
            kernel,
            chunk_blocks,
            chunk_bytes,
            tokens_per_range,
            one_buffer: false,
            order: None,
            units: 1,
        })
    }
}

/// A scale as the shader takes it (`Scale` in the shader).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuScale {
    significand: u32,
    exponent: i32,
    reciprocal: f32,
    sign: u32,
    kind: u32,
    _pad: [u32; 3],
}

const SCALE_FINITE: u32 = 0;
const SCALE_ZERO: u32 = 1;
const SCALE_INFINITE: u32 = 2;
const SCALE_NAN: u32 = 3;

/// Bytes of the fp8 threshold tables (`fp8_thresholds` in the shader: 2 x 128 words).
const TABLE_BYTES: u64 = 2 * 128 * 4;

/// Elements (keys and values) per call from which the fp8 threshold tables pay for building
/// them: on an H100, float inputs of 128 x 128 took 35.5 against 41.0 us at 256 tokens (8M
/// elements) with the plain encoder, 120.7 against 102.5 us at 1024 (32M).
const FP8_TABLE_MIN_ELEMENTS: u64 = 1 << 24;
/// Binding of the fp8 threshold tables in the encoders.
const TABLE_BINDING: u32 = 72;

/// Bytes of the fp8 lookup tables (`fp8_lut` in the shader): one byte per 16-bit pattern, for
/// the keys and for the values.
const LUT_BYTES: u64 = 2 * 65536;
/// Binding of the fp8 lookup tables in the `*_lut` entry points.
const LUT_BINDING: u32 = 73;

/// `LutParams` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuLutParams {
    nan_sign: u32,
    _pad: [u32; 3],
    k_scale: GpuScale,
    v_scale: GpuScale,
}

/// `TableParams` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuTableParams {
    k_scale: GpuScale,
    v_scale: GpuScale,
}

impl GpuScale {
    /// Whether the threshold-table encoder handles this scale (see the shader): finite, with
    /// an exponent in [-116, 125].
    fn table_applies(&self) -> bool {
        self.kind == SCALE_FINITE && (-116..=125).contains(&self.exponent)
    }

    /// Splits `scale` into a normalised 24-bit significand and exponent (subnormals included),
    /// so that the shader never divides by anything but an exact integer-valued f32.
    fn new(scale: f32) -> Self {
        let bits = scale.to_bits();
        let magnitude = bits & 0x7fff_ffff;
        let sign = (bits >> 24) & 0x80;
        let (kind, significand, exponent) = if magnitude > 0x7f80_0000 {
            (SCALE_NAN, 0, 0)
        } else if magnitude == 0x7f80_0000 {
            (SCALE_INFINITE, 0, 0)
        } else if magnitude == 0 {
            (SCALE_ZERO, 0, 0)
        } else if magnitude < 0x80_0000 {
            let normalise = magnitude.leading_zeros() - 8;
            (
                SCALE_FINITE,
                magnitude << normalise,
                -126 - normalise as i32,
            )
        } else {
            (
                SCALE_FINITE,
                (magnitude & 0x7f_ffff) | 0x80_0000,
                (magnitude >> 23) as i32 - 127,
            )
        };
        let reciprocal = if significand == 0 {
            0.0
        } else {
            1.0 / significand as f32
        };
        Self {
            significand,
            exponent,
            reciprocal,
            sign,
            kind,
            _pad: [0; 3],
        }
    }
}

/// `Params` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuParams {
    num_tokens: u32,
    num_slots: u32,
    first_chunk: u32,
    num_units: u32,
    nan_sign: u32,
    split_input: u32,
    _pad: [u32; 2],
    k_scale: GpuScale,
    v_scale: GpuScale,
}

/// `OrderParams` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuOrderParams {
    num_tokens: u32,
    num_slots: u32,
    slots_per_bucket: u32,
    buckets: u32,
}

/// `EncodeParams` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuEncodeParams {
    count: u32,
    nan_sign: u32,
    _pad: [u32; 2],
    scale: GpuScale,
}

/// `FillParams` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct GpuFillParams {
    seed_lo: u32,
    seed_hi: u32,
    chunk: u32,
    words: u32,
}

/// The fp8 sign bit of the NaN of an invalid division (0 / 0, inf / inf): the reference fixes it
/// as negative (`fp8::quantize`), whatever the host processor does.
fn host_nan_sign() -> u32 {
    0x80
}

/// A wgpu error as one line.
fn one_line(error: &dyn std::fmt::Display) -> String {
    error
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn input_kind(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::Half => 0.0,
        Dtype::BFloat16 => 1.0,
        Dtype::Float => 2.0,
    }
}

/// Preference among adapters: real GPUs first, software last.
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    // OpenGL's compute support is the weakest; prefer the native APIs on the same device.
    let api = u8::from(info.backend == wgpu::Backend::Gl);
    (device, api)
}

fn describe_adapter(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({}, {:?})",
        info.name,
        info.backend.to_str(),
        info.device_type
    )
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        backend: Kind::Wgpu,
        reason: reason.into(),
    }
}

/// Index of the adapter to open among `adapters`: the first whose name contains `name`
/// (case-insensitive) if given, of the best kind (see [`adapter_rank`]), software ones refused
/// with `hardware_only`.
fn choose_adapter(
    adapters: &[wgpu::AdapterInfo],
    name: Option<&str>,
    hardware_only: bool,
) -> Result<usize> {
    if adapters.is_empty() {
        return Err(unavailable(
            "no GPU adapter found (on Linux without a GPU, install mesa-vulkan-drivers for \
             the lavapipe software adapter)",
        ));
    }
    let found = || {
        adapters
            .iter()
            .map(describe_adapter)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut candidates: Vec<usize> = (0..adapters.len()).collect();
    if let Some(name) = name {
        let wanted = name.to_lowercase();
        candidates.retain(|&i| adapters[i].name.to_lowercase().contains(&wanted));
        if candidates.is_empty() {
            return Err(unavailable(format!(
                "no adapter's name contains `{name}`; adapters found: {}",
                found()
            )));
        }
    }
    if hardware_only {
        candidates.retain(|&i| adapters[i].device_type != wgpu::DeviceType::Cpu);
        if candidates.is_empty() {
            return Err(unavailable(format!(
                "only software adapters were found ({}); the CPU backend is faster",
                found()
            )));
        }
    }
    // The first of the best rank, in the order wgpu lists them.
    candidates
        .into_iter()
        .min_by_key(|&i| (adapter_rank(&adapters[i]), i))
        .ok_or_else(|| unavailable("no adapter left to choose"))
}

impl WgpuBackend {
    /// Opens an adapter: the first whose name contains `adapter` (case-insensitive), else the
    /// best one (discrete > integrated > virtual > software). With `hardware_only`, software
    /// adapters (lavapipe) are refused: the native CPU backend beats a software GPU.
    /// With `tuning`'s limits and choices where set (tests, experiments), on `tuning.api`.
    pub fn open(adapter: Option<&str>, hardware_only: bool, tuning: WgpuTuning) -> Result<Self> {
        Self::open_with(adapter, hardware_only, tuning)
    }

    /// The same as [`WgpuBackend::open`] (kept for callers that name the tuning "overrides").
    pub fn open_with(
        adapter: Option<&str>,
        hardware_only: bool,
        overrides: WgpuTuning,
    ) -> Result<Self> {
        let backends = match overrides.api {
            WgpuApi::Native => wgpu::Backends::PRIMARY,
            WgpuApi::Vulkan => wgpu::Backends::VULKAN,
            WgpuApi::Metal => wgpu::Backends::METAL,
            WgpuApi::Dx12 => wgpu::Backends::DX12,
            WgpuApi::Gl => wgpu::Backends::GL,
        };
        // No `from_env`: what runs is decided by the options alone.
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        descriptor.backends = backends;
        let instance = wgpu::Instance::new(descriptor);
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
        let chosen = choose_adapter(&infos, adapter, hardware_only)?;
        Self::from_adapter(&adapters[chosen], overrides)
    }

    fn from_adapter(adapter: &wgpu::Adapter, overrides: LimitOverrides) -> Result<Self> {
        let info = adapter.get_info();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        // The defaults cap a storage binding at 128 MiB whatever the adapter allows: ask for
        // everything the adapter has.
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("paged-kv-bench"),
            required_features: if timestamps {
                wgpu::Features::TIMESTAMP_QUERY
            } else {
                wgpu::Features::empty()
            },
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|error| {
            unavailable(format!(
                "cannot open a device on {}: {}",
                describe_adapter(&info),
                one_line(&error)
            ))
        })?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        {
            // wgpu's default handler panics; record the error and return it from the next call.
            let errors = errors.clone();
            device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
                if let Ok(mut errors) = errors.lock() {
                    errors.push(one_line(&error));
                }
            }));
        }
        {
            let errors = errors.clone();
            device.set_device_lost_callback(move |reason, message| {
                if let Ok(mut errors) = errors.lock() {
                    errors.push(format!("device lost ({reason:?}): {}", one_line(&message)));
                }
            });
        }
        let limits = device.limits();
        // Vec4 arrays want 16-byte multiples; the shader's u32 indices want under 4 GiB.
        let mut max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(u32::MAX as u64);
        if let Some(cap) = overrides.max_binding_bytes {
            max_binding = max_binding.min(cap);
        }
        max_binding &= !15;
        let max_workgroups = overrides
            .max_workgroups_per_dimension
            .unwrap_or(u32::MAX)
            .min(limits.max_compute_workgroups_per_dimension)
            .max(1);
        let mut backend = Self {
            module: device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("reshape_and_cache_flash.wgsl"),
                source: wgpu::ShaderSource::Wgsl(SHADER.into()),
            }),
            device,
            queue,
            info,
            limits,
            timestamps,
            max_binding,
            max_workgroups,
            overrides,
            pipelines: HashMap::new(),
            caches: None,
            errors,
            nan_sign: host_nan_sign(),
            timer: None,
            flush: None,
        };
        if timestamps {
            let timer = backend.scoped("allocating timestamp queries", || Timer {
                query_set: backend.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("pass timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                }),
                resolve: backend.buffer(
                    "timestamps",
                    16,
                    wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                ),
                readback: backend.buffer(
                    "timestamp read-back",
                    16,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                ),
            })?;
            backend.timer = Some(timer);
        }
        // Shader compilation errors surface as uncaptured errors: report them now.
        backend.check_errors()?;
        if backend.max_binding < 16 {
            return Err(unavailable(format!(
                "{} allows storage bindings of only {} bytes",
                backend.info.name, backend.max_binding
            )));
        }
        // Building one pipeline up front proves the shader compiles on this driver.
        backend.pipeline("copy", &[])?;
        Ok(backend)
    }

    /// Whether the adapter is a software rasteriser (its "device memory" is host memory).
    fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Returns (and clears) errors that no error scope caught.
    fn check_errors(&self) -> Result<()> {
        let mut errors = match self.errors.lock() {
            Ok(errors) => errors,
            Err(poisoned) => poisoned.into_inner(),
        };
        if errors.is_empty() {
            return Ok(());
        }
        let first = errors[0].clone();
        let more = errors.len() - 1;
        errors.clear();
        Err(Error::Wgpu(if more > 0 {
            format!("{first} (and {more} more error(s))")
        } else {
            first
        }))
    }

    /// Runs `f` inside validation, out-of-memory and internal error scopes and turns what they
    /// catch into an error that says what was being done.
    fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        // Scopes pop innermost first.
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        let internal = pollster::block_on(internal.pop());
        if let Some(error) = oom {
            return Err(Error::Wgpu(format!(
                "out of memory on {} while {what}: {}",
                self.info.name,
                one_line(&error)
            )));
        }
        if let Some(error) = validation.or(internal) {
            return Err(Error::Wgpu(format!("{what}: {}", one_line(&error))));
        }
        self.check_errors()?;
        Ok(value)
    }

    /// Waits for all submitted work.
    fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|error| Error::Wgpu(format!("waiting for the GPU: {}", one_line(&error))))?;
        self.check_errors()
    }

    /// The pipeline of `entry` specialised with `constants`, compiled once per backend.
    fn pipeline(
        &mut self,
        entry: &'static str,
        constants: &[(&'static str, f64)],
    ) -> Result<wgpu::ComputePipeline> {
        let key = format!("{entry}{constants:?}");
        if let Some(pipeline) = self.pipelines.get(&key) {
            return Ok(pipeline.clone());
        }
        let pipeline = self.scoped(&format!("compiling `{entry}`"), || {
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    // Automatic layouts: each entry point's layout holds only what it uses.
                    layout: None,
                    module: &self.module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
        })?;
        self.pipelines.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    fn uniform<T: Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        let buffer = self.buffer(
            label,
            std::mem::size_of::<T>() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        self.queue
            .write_buffer(&buffer, 0, bytemuck::bytes_of(value));
        buffer
    }

    fn bind_group(
        &self,
        pipeline: &wgpu::ComputePipeline,
        entries: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let windows: Vec<(u32, Window)> = entries
            .iter()
            .map(|&(binding, buffer)| (binding, Window::whole(buffer)))
            .collect();
        self.bind_windows(pipeline, &windows)
    }

    /// A bind group of windows of buffers.
    fn bind_windows(
        &self,
        pipeline: &wgpu::ComputePipeline,
        entries: &[(u32, Window)],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = entries
            .iter()
            .map(|(binding, window)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: wgpu::BindingResource::Buffer(window.binding()),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Workgroups for `threads` threads as a grid of at most the adapter's per-dimension limit.
    fn grid(&self, threads: u64) -> Result<(u32, u32)> {
        let workgroups = threads.div_ceil(WORKGROUP).max(1);
        let max = self.max_workgroups as u64;
        let (x, y) = if workgroups <= max {
            (workgroups, 1)
        } else {
            (max, workgroups.div_ceil(max))
        };
        if y > max {
            return Err(Error::Wgpu(format!(
                "{threads} threads need more than {max} x {max} workgroups"
            )));
        }
        Ok((x as u32, y as u32))
    }

    /// Copies `data` into `buffer` from its start, through bounded staging memory. The
    /// buffer's size must cover `data` rounded up to 4 bytes.
    fn upload(&self, buffer: &wgpu::Buffer, data: &[u8]) -> Result<()> {
        self.upload_at(Window::whole(buffer), data)
    }

    /// As [`Self::upload`], into a window of a buffer.
    fn upload_at(&self, window: Window, data: &[u8]) -> Result<()> {
        let buffer = window.buffer;
        for (index, piece) in data.chunks(STAGING_BYTES as usize).enumerate() {
            let offset = window.offset + index as u64 * STAGING_BYTES;
            if piece.len() % 4 == 0 {
                self.queue.write_buffer(buffer, offset, piece);
            } else {
                // Copies move whole words: pad the tail.
                let mut padded = piece.to_vec();
                padded.resize(piece.len().next_multiple_of(4), 0);
                self.queue.write_buffer(buffer, offset, &padded);
            }
            // Submitting releases this piece's staging memory once the copy has run.
            self.queue.submit([]);
            self.wait()?;
        }
        Ok(())
    }

    /// Reads the first `len` bytes of `buffer` (whose size is a multiple of 4).
    fn download(&self, buffer: &wgpu::Buffer, len: u64) -> Result<Vec<u8>> {
        self.download_from(Window::whole(buffer), len)
    }

    /// Reads the first `len` bytes of a window (whose size is a multiple of 4).
    fn download_from(&self, window: Window, len: u64) -> Result<Vec<u8>> {
        let buffer = window.buffer;
        let mut out = Vec::with_capacity(len as usize);
        let staging_size = STAGING_BYTES.min(window.size);
        let staging = self.scoped("allocating a read-back buffer", || {
            self.buffer(
                "read-back",
                staging_size,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )
        })?;
        let mut offset = 0;
        while offset < len {
            let piece = staging_size.min(window.size - offset);
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            encoder.copy_buffer_to_buffer(buffer, window.offset + offset, &staging, 0, piece);
            self.queue.submit([encoder.finish()]);
            let (sender, receiver) = mpsc::channel();
            staging.map_async(wgpu::MapMode::Read, 0..piece, move |result| {
                let _ = sender.send(result);
            });
            self.wait()?;
            receiver
                .recv()
                .map_err(|_| Error::Wgpu("a buffer mapping was dropped".into()))?
                .map_err(|error| Error::Wgpu(format!("mapping a buffer: {}", one_line(&error))))?;
            {
                let view = staging
                    .get_mapped_range(0..piece)
                    .map_err(|error| Error::Wgpu(format!("mapping a buffer: {error:?}")))?;
                let keep = piece.min(len - offset) as usize;
                out.extend_from_slice(&view[..keep]);
            }
            staging.unmap();
            offset += piece;
        }
        staging.destroy();
        Ok(out)
    }

    /// How `problem` runs on this adapter: its limits, then the choices of buffers and token
    /// order (the backend's own, or the overrides').
    fn plan(&self, problem: &Problem) -> Result<Plan> {
        let mut plan = Plan::new(
            problem,
            self.max_binding,
            self.overrides.max_chunk_blocks.unwrap_or(u64::MAX),
            self.limits.max_storage_buffers_per_shader_stage,
            &self.info.name,
        )?;
        let total: u64 = plan.chunk_bytes.iter().sum();
        let alignment = self.limits.min_storage_buffer_offset_alignment.max(1) as u64;
        let windows_fit = plan.chunk_bytes.len() > 1
            && total <= self.limits.max_buffer_size
            && plan.chunk_bytes[0].is_multiple_of(alignment);
        plan.one_buffer = windows_fit && self.overrides.one_buffer.unwrap_or(false);
        plan.units = self
            .overrides
            .units_per_thread
            .unwrap_or(1)
            .clamp(1, MAX_UNITS as u32);
        let ordered = plan.kernel != Kernel::Words
            && self
                .overrides
                .slot_order
                .unwrap_or_else(|| !self.is_software() && spreads_past_translation_reach(problem));
        if ordered {
            let slots = problem.num_slots();
            let buckets =
                (self.overrides.order_buckets.unwrap_or(ORDER_BUCKETS) as u64).clamp(1, slots);
            let slots_per_bucket = slots.div_ceil(buckets);
            plan.order = Some(OrderPlan {
                buckets: slots.div_ceil(slots_per_bucket) as u32,
                slots_per_bucket: slots_per_bucket as u32,
            });
        }
        if self.overrides.trace {
            eprintln!(
                "wgpu plan: {:?} chunks={} (max_buffer_size={} storage offset alignment={}) {plan:?}",
                problem.describe(),
                plan.chunk_bytes.len(),
                self.limits.max_buffer_size,
                alignment
            );
        }
        Ok(plan)
    }

    /// Makes sure both caches exist with the plan's chunks, reusing the current ones if they
    /// match (their contents stay, and with them a random fill that need not be redone).
    fn ensure_caches(&mut self, plan: &Plan) -> Result<()> {
        if self.caches.as_ref().is_some_and(|caches| {
            caches.chunk_bytes == plan.chunk_bytes && caches.one_buffer == plan.one_buffer
        }) {
            return Ok(());
        }
        // Free the old caches before allocating the new ones.
        self.caches = None;
        let total: u64 = plan.chunk_bytes.iter().sum();
        let what = format!(
            "allocating two caches of {} in {} buffer(s) each",
            Bytes(total),
            if plan.one_buffer {
                1
            } else {
                plan.chunk_bytes.len()
            }
        );
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let caches = self.scoped(&what, || {
            let make = |name: &str| -> Vec<wgpu::Buffer> {
                if plan.one_buffer {
                    return vec![self.buffer(&format!("{name} cache"), total, usage)];
                }
                plan.chunk_bytes
                    .iter()
                    .enumerate()
                    .map(|(i, &size)| self.buffer(&format!("{name} cache chunk {i}"), size, usage))
                    .collect()
            };
            DeviceCaches {
                chunk_bytes: plan.chunk_bytes.clone(),
                one_buffer: plan.one_buffer,
                key: make("key"),
                value: make("value"),
                random_fill: None,
            }
        })?;
        self.caches = Some(caches);
        Ok(())
    }

    /// Overwrites both caches with exactly `contents`.
    fn upload_caches(&mut self, plan: &Plan, problem: &Problem, contents: &Caches) -> Result<()> {
        let bytes = problem.cache_bytes() as usize;
        for (name, data) in [("key", &contents.key), ("value", &contents.value)] {
            if data.len() != bytes {
                return Err(Error::InvalidConfig(format!(
                    "the {name} cache to upload has {} bytes; the problem's cache has {bytes}",
                    data.len()
                )));
            }
        }
        let caches = self.caches.as_ref().expect("ensure_caches ran");
        let mut offset = 0usize;
        for (i, &size) in plan.chunk_bytes.iter().enumerate() {
            let len = (size as usize).min(bytes - offset);
            self.upload_at(caches.chunk(false, i), &contents.key[offset..offset + len])?;
            self.upload_at(caches.chunk(true, i), &contents.value[offset..offset + len])?;
            offset += len;
        }
        if let Some(caches) = self.caches.as_mut() {
            caches.random_fill = None;
        }
        Ok(())
    }

    /// Fills both caches with random words from `seed` on the device, unless they already
    /// hold that fill.
    fn fill_caches(&mut self, seed: u64) -> Result<()> {
        if self
            .caches
            .as_ref()
            .is_some_and(|caches| caches.random_fill == Some(seed))
        {
            return Ok(());
        }
        let pipeline = self.pipeline("fill", &[])?;
        let caches = self.caches.as_ref().expect("ensure_caches ran");
        let mut jobs = Vec::new();
        for (cache_seed, is_value) in [(seed, false), (seed.wrapping_add(1), true)] {
            for chunk in 0..caches.chunk_bytes.len() {
                let window = caches.chunk(is_value, chunk);
                let words = window.size / 4;
                let params = GpuFillParams {
                    seed_lo: cache_seed as u32,
                    seed_hi: (cache_seed >> 32) as u32,
                    chunk: chunk as u32,
                    words: words as u32,
                };
                jobs.push((params, window, self.grid(words)?));
            }
        }
        self.scoped("filling the caches", || {
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            let mut keep = Vec::new();
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                pass.set_pipeline(&pipeline);
                for (params, window, (x, y)) in &jobs {
                    let uniform = self.uniform("fill params", params);
                    let group = self
                        .bind_windows(&pipeline, &[(120, Window::whole(&uniform)), (121, *window)]);
                    pass.set_bind_group(0, &group, &[]);
                    pass.dispatch_workgroups(*x, *y, 1);
                    keep.push(uniform);
                }
            }
            self.queue.submit([encoder.finish()]);
            keep
        })?;
        self.wait()?;
        if let Some(caches) = self.caches.as_mut() {
            caches.random_fill = Some(seed);
        }
        Ok(())
    }

    /// Builds the dispatches of one call: input buffers, parameters and bind groups.
    fn build_call(
        &mut self,
        problem: &Problem,
        plan: &Plan,
        inputs: &Inputs,
    ) -> Result<(Vec<Dispatch>, Vec<wgpu::Buffer>)> {
        let row_elements = problem.token_elements() as u64;
        let (k_scale, v_scale) = (GpuScale::new(inputs.k_scale), GpuScale::new(inputs.v_scale));
        // Chunks bound per dispatch.
        let group_size = match plan.kernel {
            Kernel::Wide => WIDE_CHUNKS_PER_DISPATCH,
            Kernel::Multi => CHUNKS_PER_DISPATCH,
            Kernel::One | Kernel::Words => 1,
        };
        // The fp8 lookup table (16-bit inputs only; on by default: exact, and on an H100 2.1x
        // faster than the threshold tables at 65536 tokens, 2.9x at 2 tokens, where building
        // the thresholds costs more: docs/perf-log-wgpu.md) takes a pass of its own (128
        // workgroups) in every call, and one more
        // storage binding in the kernel: where the adapter has none to spare for the plan's
        // kernel (an adapter with the minimum of 8 runs the one-chunk kernel with all 8), the
        // call keeps the other encoders.
        let fp8_lut = problem.cache_dtype == CacheDtype::Fp8
            && plan.kernel != Kernel::Words
            && problem.dtype != Dtype::Float
            && storage_bindings(group_size) < self.limits.max_storage_buffers_per_shader_stage
            && self.overrides.fp8_lut.unwrap_or(true);
        // The threshold tables take a pass of their own (one workgroup of binary searches,
        // about 12 us on an H100) in every call, and then save about a quarter of the
        // encoder's time per element: by default they are taken from FP8_TABLE_MIN_ELEMENTS
        // elements per call on (exact either way: tests/wgpu.rs; docs/perf-log-wgpu.md).
        let elements = 2 * problem.num_tokens as u64 * row_elements;
        let fp8_table = problem.cache_dtype == CacheDtype::Fp8
            && plan.kernel != Kernel::Words
            && !fp8_lut
            && k_scale.table_applies()
            && v_scale.table_applies()
            && self
                .overrides
                .fp8_table
                .unwrap_or(elements >= FP8_TABLE_MIN_ELEMENTS);
        let constants: Vec<(&'static str, f64)> = match plan.kernel {
            Kernel::Wide | Kernel::Multi | Kernel::One => vec![
                ("BLOCK_SIZE", problem.block_size as f64),
                ("CHUNK_BLOCKS", plan.chunk_blocks as f64),
                (
                    "ROW_UNITS",
                    (row_elements * problem.cache_element_size() as u64 / 16) as f64,
                ),
                ("IN_KIND", input_kind(problem.dtype)),
                (
                    "FP8",
                    if problem.cache_dtype == CacheDtype::Fp8 {
                        1.0
                    } else {
                        0.0
                    },
                ),
                ("ORDERED", if plan.order.is_some() { 1.0 } else { 0.0 }),
                ("UNITS", plan.units as f64),
                ("FP8_TABLE", if fp8_table { 1.0 } else { 0.0 }),
            ],
            Kernel::Words => vec![
                ("BLOCK_SIZE", problem.block_size as f64),
                ("CHUNK_BLOCKS", plan.chunk_blocks as f64),
                ("ROW_ELEMENTS", row_elements as f64),
                ("ELEMENT_BYTES", problem.dtype.size() as f64),
                ("ROW_WORDS", row_words(problem) as f64),
            ],
        };
        let entry = match (plan.kernel, fp8_lut) {
            (Kernel::Wide, false) => "reshape_and_cache_wide",
            (Kernel::Multi, false) => "reshape_and_cache",
            (Kernel::One, false) => "reshape_and_cache_one",
            (Kernel::Wide, true) => "reshape_and_cache_wide_lut",
            (Kernel::Multi, true) => "reshape_and_cache_lut",
            (Kernel::One, true) => "reshape_and_cache_one_lut",
            (Kernel::Words, _) => "reshape_and_cache_words",
        };
        let pipeline = self.pipeline(entry, &constants)?;
        let mut buffers = Vec::new();
        let mut dispatches = Vec::new();
        let order_pipelines = match plan.order {
            Some(_) => Some([
                self.pipeline("order_count", &[])?,
                self.pipeline("order_scan", &[])?,
                self.pipeline("order_scatter", &[])?,
            ]),
            None => None,
        };
        // The table the kernel reads, built first in the same pass by a dispatch of its own:
        // the lookup table, or the threshold tables, or a dummy nothing reads. (The builds
        // write it as storage and the kernel reads it as read-only storage or uniform: wgpu
        // orders the two dispatches of the pass by that change of use.)
        let (encoder_binding, encoder_buffer) = if fp8_lut || fp8_table {
            let (table, dispatch, params) = if fp8_lut {
                self.fp8_lut_pass(problem.dtype, k_scale, v_scale)?
            } else {
                self.fp8_table_pass(k_scale, v_scale)?
            };
            dispatches.push(dispatch);
            buffers.push(params);
            (if fp8_lut { LUT_BINDING } else { TABLE_BINDING }, table)
        } else {
            let dummy = self.scoped("allocating a buffer", || {
                self.buffer("no fp8 tables", TABLE_BYTES, wgpu::BufferUsages::UNIFORM)
            })?;
            (TABLE_BINDING, dummy)
        };
        let units_per_token = match plan.kernel {
            Kernel::Wide | Kernel::Multi | Kernel::One => {
                row_elements * problem.cache_element_size() as u64 / 16
            }
            Kernel::Words => row_words(problem),
        };
        let caches = self.caches.as_ref().expect("ensure_caches ran");
        let input_row = (row_elements * problem.dtype.size() as u64) as usize;
        let chunks = plan.chunk_bytes.len();
        let groups: Vec<usize> = (0..chunks).step_by(group_size).collect();
        let what = format!(
            "uploading inputs for {} tokens ({} each for keys and values)",
            problem.num_tokens,
            Bytes(problem.input_bytes())
        );
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        // The 16-byte kernels take two token ranges per dispatch (inputs in two bindings each),
        // so that the slot order spans both: 65536 bf16 tokens of 128 x 128 are one dispatch.
        let ranges_per_dispatch = match plan.kernel {
            Kernel::Words => 1,
            _ => 2,
        };
        let mut first_token = 0;
        while first_token < problem.num_tokens {
            let tokens =
                (ranges_per_dispatch * plan.tokens_per_range).min(problem.num_tokens - first_token);
            let lo_tokens = plan.tokens_per_range.min(tokens);
            let mut parts = Vec::new();
            for (start, count) in [(0, lo_tokens), (lo_tokens, tokens - lo_tokens)] {
                if count == 0 {
                    continue;
                }
                let begin = first_token + start;
                let bytes = begin * input_row..(begin + count) * input_row;
                let padded = (count * input_row).next_multiple_of(16) as u64;
                let (key, value) = self.scoped(&what, || {
                    (
                        self.buffer("key input", padded, storage),
                        self.buffer("value input", padded, storage),
                    )
                })?;
                self.upload(&key, &inputs.key[bytes.clone()])?;
                self.upload(&value, &inputs.value[bytes])?;
                parts.push((key, value));
            }
            if parts.len() < 2 {
                // Nothing reads the second part then; bind small distinct buffers.
                let spare = self.scoped("allocating a buffer", || {
                    (
                        self.buffer("no key input", 16, wgpu::BufferUsages::STORAGE),
                        self.buffer("no value input", 16, wgpu::BufferUsages::STORAGE),
                    )
                })?;
                parts.push(spare);
            }
            let [(key, value), (key_hi, value_hi)]: [(wgpu::Buffer, wgpu::Buffer); 2] = parts
                .try_into()
                .map_err(|_| Error::Wgpu("two input parts".into()))?;
            // Input units (16 bytes) of the first part: later ones are in the second.
            let split_input = if tokens > lo_tokens {
                (lo_tokens * input_row / 16) as u32
            } else {
                u32::MAX
            };
            let slots = self.scoped(&what, || {
                self.buffer("slot mapping", 8 * tokens as u64, storage)
            })?;
            // Little-endian int64, as the shader reads (lo, hi) pairs.
            let slot_bytes: Vec<u8> = inputs.slot_mapping[first_token..first_token + tokens]
                .iter()
                .flat_map(|slot| slot.to_le_bytes())
                .collect();
            self.upload(&slots, &slot_bytes)?;
            // The token order: the slot-order passes' output, or a dummy nothing reads.
            let order = match (plan.order, &order_pipelines) {
                (Some(order_plan), Some([count, scan, scatter])) => {
                    let order_params = GpuOrderParams {
                        num_tokens: tokens as u32,
                        num_slots: problem.num_slots() as u32,
                        slots_per_bucket: order_plan.slots_per_bucket,
                        buckets: order_plan.buckets,
                    };
                    let bucket_bytes = 4 * (order_plan.buckets as u64 + 1);
                    let token_grid = self.grid(tokens as u64)?;
                    let (order, passes) =
                        self.scoped("allocating the slot-order buffers", || {
                            let storage = wgpu::BufferUsages::STORAGE;
                            let uniform = self.uniform("order params", &order_params);
                            // Zero on creation; the scan pass clears them again for the next call.
                            let counts = self.buffer("bucket counts", bucket_bytes, storage);
                            let starts = self.buffer("bucket starts", bucket_bytes, storage);
                            let ranks = self.buffer("token ranks", 4 * tokens as u64, storage);
                            let order = self.buffer("token order", 4 * tokens as u64, storage);
                            let passes = [
                                Dispatch {
                                    pipeline: count.clone(),
                                    bind_group: self.bind_group(
                                        count,
                                        &[
                                            (3, &slots),
                                            (140, &uniform),
                                            (141, &counts),
                                            (142, &ranks),
                                        ],
                                    ),
                                    grid: token_grid,
                                },
                                Dispatch {
                                    pipeline: scan.clone(),
                                    bind_group: self.bind_group(
                                        scan,
                                        &[(140, &uniform), (143, &counts), (144, &starts)],
                                    ),
                                    grid: (1, 1),
                                },
                                Dispatch {
                                    pipeline: scatter.clone(),
                                    bind_group: self.bind_group(
                                        scatter,
                                        &[
                                            (3, &slots),
                                            (140, &uniform),
                                            (145, &ranks),
                                            (146, &starts),
                                            (147, &order),
                                        ],
                                    ),
                                    grid: token_grid,
                                },
                            ];
                            buffers.extend([uniform, counts, starts, ranks]);
                            (order, passes)
                        })?;
                    dispatches.extend(passes);
                    order
                }
                _ => self.scoped("allocating a buffer", || {
                    self.buffer("no token order", 16, wgpu::BufferUsages::STORAGE)
                })?,
            };
            let num_units = tokens as u64 * units_per_token;
            let threads = match plan.kernel {
                Kernel::Words => num_units,
                _ => num_units.div_ceil(plan.units as u64),
            };
            let grid = self.grid(threads)?;
            for &first_chunk in &groups {
                let params = GpuParams {
                    num_tokens: tokens as u32,
                    num_slots: problem.num_slots() as u32,
                    first_chunk: first_chunk as u32,
                    num_units: num_units as u32,
                    nan_sign: self.nan_sign,
                    split_input,
                    _pad: [0; 2],
                    k_scale,
                    v_scale,
                };
                let bind_group = self.scoped("binding the caches", || {
                    let uniform = self.uniform("params", &params);
                    let group = match plan.kernel {
                        // (The one-chunk kernel binds a group of one chunk.)
                        Kernel::Wide | Kernel::Multi | Kernel::One => {
                            let mut entries: Vec<(u32, Window)> = vec![
                                (0, Window::whole(&uniform)),
                                (1, Window::whole(&key)),
                                (2, Window::whole(&value)),
                                (3, Window::whole(&slots)),
                                (ORDER_BINDING, Window::whole(&order)),
                                (KEY_HI_BINDING, Window::whole(&key_hi)),
                                (VALUE_HI_BINDING, Window::whole(&value_hi)),
                                (encoder_binding, Window::whole(&encoder_buffer)),
                            ];
                            // Chunks past the end of the cache are bound to small distinct
                            // buffers no thread writes (writable bindings must not alias).
                            let mut spares = Vec::new();
                            for slot in 0..group_size {
                                if first_chunk + slot >= chunks {
                                    spares.push(self.buffer(
                                        "unused chunk",
                                        16,
                                        wgpu::BufferUsages::STORAGE,
                                    ));
                                    spares.push(self.buffer(
                                        "unused chunk",
                                        16,
                                        wgpu::BufferUsages::STORAGE,
                                    ));
                                }
                            }
                            let mut spare = spares.iter();
                            for slot in 0..group_size {
                                let chunk = first_chunk + slot;
                                let (k, v) = if chunk < chunks {
                                    (caches.chunk(false, chunk), caches.chunk(true, chunk))
                                } else {
                                    (
                                        Window::whole(
                                            spare.next().expect("two spares per missing chunk"),
                                        ),
                                        Window::whole(
                                            spare.next().expect("two spares per missing chunk"),
                                        ),
                                    )
                                };
                                entries.push((KEY_CHUNK_BINDING + slot as u32, k));
                                entries.push((VALUE_CHUNK_BINDING + slot as u32, v));
                            }
                            let group = self.bind_windows(&pipeline, &entries);
                            (group, spares)
                        }
                        Kernel::Words => (
                            self.bind_windows(
                                &pipeline,
                                &[
                                    (0, Window::whole(&uniform)),
                                    (3, Window::whole(&slots)),
                                    (100, Window::whole(&key)),
                                    (101, Window::whole(&value)),
                                    (102, caches.chunk(false, first_chunk)),
                                    (103, caches.chunk(true, first_chunk)),
                                ],
                            ),
                            Vec::new(),
                        ),
                    };
                    (group, uniform)
                })?;
                let ((group, spares), uniform) = bind_group;
                buffers.push(uniform);
                buffers.extend(spares);
                dispatches.push(Dispatch {
                    pipeline: pipeline.clone(),
                    bind_group: group,
                    grid,
                });
            }
            buffers.extend([key, value, key_hi, value_hi, slots, order]);
            first_token += tokens;
        }
        buffers.push(encoder_buffer);
        Ok((dispatches, buffers))
    }

    /// Runs the shader's fp8 encoder alone on `elements` (f32 bits for `Dtype::Float`, else the
    /// 16-bit pattern in the low half of each word) divided by `scale`: one e4m3 code per
    /// element. This is how the tests prove the encoder bit-exact over every 16-bit input.
    ///
    /// `estimate_skew_ulps` is 0 in normal use; tests set it to move the encoder's first
    /// estimate of the quotient by that many f32 ULP, as a GPU whose division is that far off
    /// would, to show the result stays exact (up to 255 ULP) regardless.
    pub fn encode_fp8(
        &mut self,
        dtype: Dtype,
        elements: &[u32],
        scale: f32,
        estimate_skew_ulps: i32,
    ) -> Result<Vec<u8>> {
        self.encode_with(false, dtype, elements, scale, estimate_skew_ulps)
    }

    /// The fp8 threshold tables of a call's two scales: the table buffer, the dispatch (one
    /// workgroup) that builds it, and that dispatch's parameter buffer.
    fn fp8_table_pass(
        &mut self,
        k_scale: GpuScale,
        v_scale: GpuScale,
    ) -> Result<(wgpu::Buffer, Dispatch, wgpu::Buffer)> {
        let pipeline = self.pipeline("fp8_table_build", &[])?;
        let params = GpuTableParams { k_scale, v_scale };
        self.scoped("allocating the fp8 tables", || {
            let table = self.buffer(
                "fp8 tables",
                TABLE_BYTES,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
            );
            let uniform = self.uniform("fp8 table params", &params);
            let bind_group = self.bind_group(&pipeline, &[(150, &uniform), (151, &table)]);
            let dispatch = Dispatch {
                pipeline,
                bind_group,
                grid: (1, 1),
            };
            (table, dispatch, uniform)
        })
    }

    /// The fp8 lookup table of a call's two scales for 16-bit inputs of `dtype`: the table
    /// buffer, the dispatch that builds it, and that dispatch's parameter buffer.
    fn fp8_lut_pass(
        &mut self,
        dtype: Dtype,
        k_scale: GpuScale,
        v_scale: GpuScale,
    ) -> Result<(wgpu::Buffer, Dispatch, wgpu::Buffer)> {
        let pipeline = self.pipeline("fp8_lut_build", &[("IN_KIND", input_kind(dtype))])?;
        let params = GpuLutParams {
            nan_sign: self.nan_sign,
            _pad: [0; 3],
            k_scale,
            v_scale,
        };
        let grid = self.grid(LUT_BYTES / 4)?;
        self.scoped("allocating the fp8 lookup table", || {
            let lut = self.buffer("fp8 lookup table", LUT_BYTES, wgpu::BufferUsages::STORAGE);
            let uniform = self.uniform("fp8 lookup table params", &params);
            let bind_group = self.bind_group(&pipeline, &[(160, &uniform), (161, &lut)]);
            let dispatch = Dispatch {
                pipeline,
                bind_group,
                grid,
            };
            (lut, dispatch, uniform)
        })
    }

    /// As [`WgpuBackend::encode_fp8`], through the threshold-table encoder that the cache
    /// kernels use for large fp8 calls (tables built on the device from `scale`, as in a
    /// call), or `None` where that encoder does not handle `scale` (the kernels then use the
    /// plain one). `estimate_skew_ulps` moves its first estimate likewise.
    pub fn encode_fp8_table(
        &mut self,
        dtype: Dtype,
        elements: &[u32],
        scale: f32,
        estimate_skew_ulps: i32,
    ) -> Result<Option<Vec<u8>>> {
        if !GpuScale::new(scale).table_applies() {
            return Ok(None);
        }
        self.encode_with(true, dtype, elements, scale, estimate_skew_ulps)
            .map(Some)
    }

    fn encode_with(
        &mut self,
        table: bool,
        dtype: Dtype,
        elements: &[u32],
        scale: f32,
        estimate_skew_ulps: i32,
    ) -> Result<Vec<u8>> {
        if elements.is_empty() {
            return Ok(Vec::new());
        }
        let constants = [
            ("IN_KIND", input_kind(dtype)),
            ("ESTIMATE_SKEW", estimate_skew_ulps as f64),
        ];
        let pipeline = if table {
            self.pipeline(
                "encode_fp8_table",
                &[constants[0], constants[1], ("FP8_TABLE", 1.0)],
            )?
        } else {
            self.pipeline("encode_fp8", &constants)?
        };
        let bytes = 4 * elements.len() as u64;
        if bytes > self.max_binding {
            return Err(Error::InvalidConfig(format!(
                "encode at most {} elements at a time",
                self.max_binding / 4
            )));
        }
        let params = GpuEncodeParams {
            count: elements.len() as u32,
            nan_sign: self.nan_sign,
            _pad: [0; 2],
            scale: GpuScale::new(scale),
        };
        let grid = self.grid(elements.len() as u64)?;
        let (input, output) = self.scoped("allocating the encoder test buffers", || {
            (
                self.buffer(
                    "encode input",
                    bytes,
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                ),
                self.buffer(
                    "encode output",
                    bytes,
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                ),
            )
        })?;
        self.upload(&input, bytemuck::cast_slice(elements))?;
        // The threshold tables, built in the same pass as in a cache call.
        let tables = if table {
            Some(self.fp8_table_pass(params.scale, params.scale)?)
        } else {
            None
        };
        let uniform = self.scoped("running the fp8 encoder", || {
            let uniform = self.uniform("encode params", &params);
            let mut entries = vec![(110, &uniform), (111, &input), (112, &output)];
            if let Some((tables, _, _)) = &tables {
                entries.push((TABLE_BINDING, tables));
            }
            let group = self.bind_group(&pipeline, &entries);
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                if let Some((_, build, _)) = &tables {
                    record_dispatches(&mut pass, std::slice::from_ref(build));
                }
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(grid.0, grid.1, 1);
            }
            self.queue.submit([encoder.finish()]);
            uniform
        })?;
        self.wait()?;
        let words = self.download(&output, bytes)?;
        for buffer in [input, output, uniform] {
            buffer.destroy();
        }
        if let Some((tables, _, table_params)) = tables {
            tables.destroy();
            table_params.destroy();
        }
        Ok(words
            .chunks_exact(4)
            .map(|word| u32::from_le_bytes([word[0], word[1], word[2], word[3]]) as u8)
            .collect())
    }

    /// Records `calls` calls (by `record`) in one compute pass, runs it, and returns the time
    /// per call in microseconds: from timestamp queries at the pass boundaries where the
    /// adapter has them (the GPU's own clock, free of submission overhead), else from the
    /// host clock around the submission and its wait.
    fn time_pass(&self, calls: usize, record: &dyn Fn(&mut wgpu::ComputePass)) -> Result<f64> {
        let calls = calls.max(1);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timed calls"),
                timestamp_writes: self.timer.as_ref().map(|timer| {
                    wgpu::ComputePassTimestampWrites {
                        query_set: &timer.query_set,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    }
                }),
            });
            for _ in 0..calls {
                record(&mut pass);
            }
        }
        let Some(timer) = &self.timer else {
            let commands = encoder.finish();
            let start = Instant::now();
            self.queue.submit([commands]);
            self.wait()?;
            return Ok(start.elapsed().as_secs_f64() * 1e6 / calls as f64);
        };
        encoder.resolve_query_set(&timer.query_set, 0..2, &timer.resolve, 0);
        encoder.copy_buffer_to_buffer(&timer.resolve, 0, &timer.readback, 0, 16);
        self.queue.submit([encoder.finish()]);
        let (sender, receiver) = mpsc::channel();
        timer
            .readback
            .map_async(wgpu::MapMode::Read, .., move |result| {
                let _ = sender.send(result);
            });
        self.wait()?;
        receiver
            .recv()
            .map_err(|_| Error::Wgpu("a buffer mapping was dropped".into()))?
            .map_err(|error| Error::Wgpu(format!("reading timestamps: {}", one_line(&error))))?;
        let ticks: Vec<u64> = {
            let view = timer
                .readback
                .get_mapped_range(..)
                .map_err(|error| Error::Wgpu(format!("reading timestamps: {error:?}")))?;
            view.chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect()
        };
        timer.readback.unmap();
        let nanoseconds =
            ticks[1].saturating_sub(ticks[0]) as f64 * self.queue.get_timestamp_period() as f64;
        Ok(nanoseconds / 1e3 / calls as f64)
    }

    /// Allocates the buffer that cold timing overwrites to evict the device's caches.
    fn ensure_flush(&mut self) -> Result<()> {
        if self.flush.is_some() {
            return Ok(());
        }
        let bytes = self.max_binding.min(FLUSH_BYTES);
        let pipeline = self.pipeline("fill", &[])?;
        let grid = self.grid(bytes / 4)?;
        let params = GpuFillParams {
            seed_lo: 0x5eed,
            seed_hi: 0,
            chunk: 0,
            words: (bytes / 4) as u32,
        };
        let flush = self.scoped("allocating the cache-flush buffer", || {
            let buffer = self.buffer("cache flush", bytes, wgpu::BufferUsages::STORAGE);
            let uniform = self.uniform("flush params", &params);
            let bind_group = self.bind_group(&pipeline, &[(120, &uniform), (121, &buffer)]);
            Flush {
                buffers: [buffer, uniform],
                pipeline,
                bind_group,
                grid,
            }
        })?;
        self.flush = Some(flush);
        Ok(())
    }

    /// Overwrites the flush buffer and waits, so that the next call starts with caches that
    /// hold none of its data.
    fn flush_caches(&self) -> Result<()> {
        let Some(flush) = &self.flush else {
            return Ok(());
        };
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&flush.pipeline);
            pass.set_bind_group(0, &flush.bind_group, &[]);
            pass.dispatch_workgroups(flush.grid.0, flush.grid.1, 1);
        }
        self.queue.submit([encoder.finish()]);
        // Waiting on the host keeps the flush out of the next pass's timestamps.
        self.wait()
    }
}

/// Whether a call's rows land on more distinct pages than a GPU's address translation caches
/// hold, so that taking the tokens in slot order pays for its passes. Measured on an H100
/// (docs/perf-log-wgpu.md): random rows over 2 x 2 GiB of cache ran at copy speed at any token
/// count, while those over 2 x 32 GiB fell to 40% of it from 8192 tokens on; the boundary
/// matched a reach of some 5000 to 6000 pages of 2 MiB over both caches.
fn spreads_past_translation_reach(problem: &Problem) -> bool {
    const PAGE_BYTES: f64 = (2 << 20) as f64;
    const REACH_PAGES: f64 = TRANSLATION_REACH_PAGES as f64;
    let pages = (problem.cache_bytes() as f64 / PAGE_BYTES).max(1.0);
    // Expected distinct pages among num_tokens random rows, in each of the two caches.
    let touched = 2.0 * pages * (1.0 - (-(problem.num_tokens as f64) / pages).exp());
    touched > REACH_PAGES
}

/// u32 words a token row's span touches in the word kernel: rows of an odd number of 16-bit
/// elements start on either half of a word and touch (n + 1) / 2 words.
fn row_words(problem: &Problem) -> u64 {
    let elements = problem.token_elements() as u64;
    match problem.dtype.size() {
        2 => elements.div_ceil(2),
        _ => elements,
    }
}

/// Free memory of a Vulkan device's largest device-local heap (`VK_EXT_memory_budget`): the
/// budget the driver gives this process minus what it already uses. `None` elsewhere.
#[cfg(any(
    target_os = "linux",
    target_os = "windows",
    target_os = "android",
    target_os = "freebsd"
))]
fn memory_budget(device: &wgpu::Device) -> Option<u64> {
    use ash::vk;
    // SAFETY: only reads properties through the handles wgpu owns, which outlive this call.
    unsafe {
        let hal = device.as_hal::<wgpu::hal::api::Vulkan>()?;
        if !hal
            .enabled_device_extensions()
            .contains(&ash::ext::memory_budget::NAME)
        {
            return None;
        }
        let shared = hal.shared_instance();
        let mut budget = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
        let mut properties = vk::PhysicalDeviceMemoryProperties2::default().push_next(&mut budget);
        // Vulkan 1.1 has the query in core; before that it needs the KHR extension (ash
        // would panic calling a core function the instance does not have).
        if shared.instance_api_version() >= vk::API_VERSION_1_1 {
            shared
                .raw_instance()
                .get_physical_device_memory_properties2(hal.raw_physical_device(), &mut properties);
        } else if shared
            .extensions()
            .contains(&ash::khr::get_physical_device_properties2::NAME)
        {
            ash::khr::get_physical_device_properties2::Instance::new(
                shared.entry(),
                shared.raw_instance(),
            )
            .get_physical_device_memory_properties2(hal.raw_physical_device(), &mut properties);
        } else {
            return None;
        }
        let heaps = properties.memory_properties.memory_heap_count as usize;
        let memory_heaps = properties.memory_properties.memory_heaps;
        (0..heaps.min(vk::MAX_MEMORY_HEAPS))
            .filter(|&i| {
                memory_heaps[i]
                    .flags
                    .contains(vk::MemoryHeapFlags::DEVICE_LOCAL)
            })
            .map(|i| budget.heap_budget[i].saturating_sub(budget.heap_usage[i]))
            .max()
    }
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "windows",
    target_os = "android",
    target_os = "freebsd"
)))]
fn memory_budget(_device: &wgpu::Device) -> Option<u64> {
    None
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
        DeviceInfo {
            name: self.info.name.clone(),
            details: format!(
                "{} ({:?}), driver {}, wgpu 30; storage bindings up to {}; device time from {}{}",
                self.info.backend.to_str(),
                self.info.device_type,
                driver.trim(),
                Bytes(self.max_binding),
                if self.timestamps {
                    "timestamp queries"
                } else {
                    "the host clock (no timestamp queries)"
                },
                {
                    let set = self.overrides.non_default();
                    if set.is_empty() {
                        String::new()
                    } else {
                        format!("; overrides: {}", set.join(" "))
                    }
                }
            ),
        }
    }

    fn supports(&self, layout: Layout) -> bool {
        layout == Layout::Nhd
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

    fn device_memory(&self) -> Option<u64> {
        // wgpu has no portable way to ask; Vulkan drivers tell a budget (see memory_budget),
        // other APIs give None and allocation failures are reported as out-of-memory errors.
        if self.is_software() {
            None
        } else {
            memory_budget(&self.device)
        }
    }

    fn mode_note(&self) -> String {
        format!(
            "--mode does not apply to wgpu: WebGPU cannot replay recorded work (no graphs; \
             command buffers are single-use), so every call records and submits one command \
             buffer (one compute pass, one dispatch per group of up to \
             {WIDE_CHUNKS_PER_DISPATCH} cache chunks, {CHUNKS_PER_DISPATCH} on adapters with few \
             storage bindings); device time: back-to-back calls in one compute pass per sample \
             (one call after a cache flush when cold; calls cycling over copies of the inputs \
             when rotating), {}",
            if self.timestamps {
                "timed by timestamp queries at the pass boundaries"
            } else {
                "timed by the host clock (this adapter has no timestamp queries)"
            }
        )
    }

    fn copy_bandwidth_gbps(&mut self) -> Result<Option<f64>> {
        // Much larger than any GPU's last-level cache; a software adapter copies with the CPU,
        // so keep it short there.
        let (size, reps) = if self.is_software() {
            (self.max_binding.min(64 << 20), 2)
        } else {
            (self.max_binding.min(1 << 30), 10)
        };
        let pipeline = self.pipeline("copy", &[])?;
        let grid = self.grid(size / 16)?;
        let usage = wgpu::BufferUsages::STORAGE;
        let (src, dst, group) = self.scoped("allocating the copy-bandwidth buffers", || {
            let src = self.buffer("copy source", size, usage);
            let dst = self.buffer("copy destination", size, usage);
            let group = self.bind_group(&pipeline, &[(130, &src), (131, &dst)]);
            (src, dst, group)
        })?;
        let record = |pass: &mut wgpu::ComputePass| {
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(grid.0, grid.1, 1);
        };
        // One warm-up pass (it also zero-fills the new buffers), then the median of five.
        let samples: Result<Vec<f64>> = (0..6).map(|_| self.time_pass(reps, &record)).collect();
        src.destroy();
        dst.destroy();
        let mut per_copy_us: Vec<f64> = samples?.into_iter().skip(1).collect();
        per_copy_us.sort_by(f64::total_cmp);
        let median = per_copy_us[per_copy_us.len() / 2];
        Ok((median > 0.0).then(|| 2.0 * size as f64 / (median * 1e-6) / 1e9))
    }

    fn prepare<'a>(
        &'a mut self,
        problem: &Problem,
        inputs: Inputs<'a>,
        fill: CacheFill<'_>,
    ) -> Result<Box<dyn Prepared + 'a>> {
        inputs.validate_for(problem)?;
        if problem.layout != Layout::Nhd {
            return Err(Error::InvalidConfig(
                "the wgpu path implements the NHD layout only".into(),
            ));
        }
        self.check_errors()?;
        let plan = self.plan(problem)?;
        self.ensure_caches(&plan)?;
        match fill {
            CacheFill::Copy(contents) => self.upload_caches(&plan, problem, contents)?,
            CacheFill::Random { seed } => self.fill_caches(seed)?,
        }
        let (dispatches, buffers) = self.build_call(problem, &plan, &inputs)?;
        Ok(Box::new(WgpuCall {
            backend: self,
            problem: *problem,
            plan,
            inputs,
            dispatches,
            buffers,
            copies: Vec::new(),
        }))
    }
}

/// One dispatch of a call.
struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
}

struct WgpuCall<'a> {
    backend: &'a mut WgpuBackend,
    problem: Problem,
    plan: Plan,
    /// The host inputs, from which rotating timing builds its copies.
    inputs: Inputs<'a>,
    dispatches: Vec<Dispatch>,
    /// Inputs, slots and parameters, freed when the call is dropped.
    buffers: Vec<wgpu::Buffer>,
    /// Rotating inputs: further calls built like this one, each with its own upload of the
    /// inputs and its own slots, recorded in turn.
    copies: Vec<(Vec<Dispatch>, Vec<wgpu::Buffer>)>,
}

impl WgpuCall<'_> {
    fn destroy_copies(&mut self) {
        for (_, buffers) in self.copies.drain(..) {
            for buffer in buffers {
                buffer.destroy();
            }
        }
    }
}

impl Drop for WgpuCall<'_> {
    fn drop(&mut self) {
        for buffer in &self.buffers {
            buffer.destroy();
        }
        self.destroy_copies();
    }
}

/// Records one call's dispatches into a pass.
fn record_dispatches(pass: &mut wgpu::ComputePass, dispatches: &[Dispatch]) {
    for dispatch in dispatches {
        pass.set_pipeline(&dispatch.pipeline);
        pass.set_bind_group(0, &dispatch.bind_group, &[]);
        pass.dispatch_workgroups(dispatch.grid.0, dispatch.grid.1, 1);
    }
}

impl WgpuCall<'_> {
    fn record(&self, pass: &mut wgpu::ComputePass) {
        record_dispatches(pass, &self.dispatches);
    }

    /// One call: record, submit, wait. Errors land in the uncaptured-error list, which the
    /// wait checks: no error scopes here, so that the latency loop times only the call.
    fn call(&self) -> Result<()> {
        let backend = &*self.backend;
        let mut encoder = backend
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            self.record(&mut pass);
        }
        backend.queue.submit([encoder.finish()]);
        backend.wait()
    }
}

impl Prepared for WgpuCall<'_> {
    fn run(&mut self) -> Result<()> {
        self.call()
    }

    fn rotate(&mut self, slot_mappings: &[Vec<i64>]) -> Result<()> {
        self.destroy_copies();
        for slots in slot_mappings {
            let inputs = Inputs {
                slot_mapping: slots,
                ..self.inputs
            };
            let copy = self
                .backend
                .build_call(&self.problem, &self.plan, &inputs)?;
            self.copies.push(copy);
        }
        Ok(())
    }

    fn batch_unit(&self) -> usize {
        1 + self.copies.len()
    }

    /// Calls in one compute pass between timestamp queries at its boundaries (wgpu inserts a
    /// barrier between dispatches that write the same buffers, so the calls run one after
    /// another), cycling over the rotation copies.
    fn time_batch(&mut self, calls: usize) -> Result<f64> {
        let unit = self.batch_unit();
        let this = &*self;
        let units = calls.div_ceil(unit);
        let record = |pass: &mut wgpu::ComputePass| {
            this.record(pass);
            for (dispatches, _) in &this.copies {
                record_dispatches(pass, dispatches);
            }
        };
        if calls == 1 {
            let single = |pass: &mut wgpu::ComputePass| this.record(pass);
            return this.backend.time_pass(1, &single);
        }
        Ok(this.backend.time_pass(units, &record)? * units as f64)
    }

    fn flush_cache(&mut self) -> Result<()> {
        self.backend.ensure_flush()?;
        self.backend.flush_caches()
    }

    fn read_back(&mut self) -> Result<Caches> {
        let backend = &*self.backend;
        let caches = backend
            .caches
            .as_ref()
            .expect("prepare allocated the caches");
        let total = self.problem.cache_bytes();
        let mut key = Vec::with_capacity(total as usize);
        let mut value = Vec::with_capacity(total as usize);
        let mut offset = 0;
        for (i, &size) in caches.chunk_bytes.iter().enumerate() {
            let len = size.min(total - offset);
            key.extend(backend.download_from(caches.chunk(false, i), len)?);
            value.extend(backend.download_from(caches.chunk(true, i), len)?);
            offset += len;
        }
        Ok(Caches { key, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(dtype: Dtype, cache_dtype: CacheDtype, heads: usize, head_size: usize) -> Problem {
        Problem {
            num_tokens: 100,
            num_heads: heads,
            head_size,
            block_size: 16,
            num_blocks: 1000,
            dtype,
            cache_dtype,
            layout: Layout::Nhd,
        }
    }

    #[test]
    fn plans_split_caches_on_block_boundaries() {
        // 16 slots x 2 heads x 128 x 2 bytes = 8 KiB blocks; 20 KiB bindings hold 2 blocks.
        let p = problem(Dtype::Half, CacheDtype::Auto, 2, 128);
        let plan = Plan::new(&p, 20 << 10, u64::MAX, 32, "test").unwrap();
        assert_eq!(plan.chunk_blocks, 2);
        assert_eq!(plan.chunk_bytes.len(), 500);
        assert!(plan.chunk_bytes.iter().all(|&b| b == 16 << 10));
        assert_eq!(plan.kernel, Kernel::Multi);
        // 512 bytes of keys per token: 40 tokens per 20 KiB binding, so 100 tokens take three
        // ranges of 34.
        assert_eq!(plan.tokens_per_range, 34);
        // Kernels by the adapter's storage bindings per stage and the number of chunks.
        let kernel = |bindings, binding_bytes| {
            Plan::new(&p, binding_bytes, u64::MAX, bindings, "test")
                .unwrap()
                .kernel
        };
        assert_eq!(kernel(70, 20 << 10), Kernel::Wide);
        assert_eq!(kernel(69, 20 << 10), Kernel::Multi);
        assert_eq!(kernel(28, 20 << 10), Kernel::Multi);
        assert_eq!(kernel(27, 20 << 10), Kernel::One);
        // 11 chunks or fewer: the narrow kernel binds them all.
        assert_eq!(kernel(1000, 1 << 20), Kernel::Multi);
        // One chunk: the single-chunk kernel.
        let whole = Plan::new(&p, 1 << 30, u64::MAX, 32, "test").unwrap();
        assert_eq!((whole.kernel, whole.chunk_bytes.len()), (Kernel::One, 1));
        assert_eq!(whole.chunk_bytes[0], p.cache_bytes());
        // A block larger than a binding cannot be split.
        assert!(matches!(
            Plan::new(&p, 4 << 10, u64::MAX, 32, "test"),
            Err(Error::DoesNotFit { .. })
        ));
    }

    /// The wide entry point cannot run on lavapipe (32 storage bindings per stage), so check
    /// its text: chunk j of each cache is declared at the binding the host binds it to, and
    /// both store switches send chunk j to variable j.
    #[test]
    fn shader_chunk_bindings_match_the_host() {
        let declarations: Vec<&str> = SHADER.lines().filter(|l| l.starts_with("@group")).collect();
        for j in 0..WIDE_CHUNKS_PER_DISPATCH as u32 {
            for (cache, base) in [("k", KEY_CHUNK_BINDING), ("v", VALUE_CHUNK_BINDING)] {
                let line = format!(
                    "@group(0) @binding({}) var<storage, read_write> {cache}{j}: array<vec4<u32>>;",
                    base + j
                );
                assert_eq!(
                    declarations.iter().filter(|l| **l == line).count(),
                    1,
                    "{line}"
                );
            }
        }
        let store = |name: &str| -> Vec<String> {
            let body = SHADER
                .split(&format!("fn {name}("))
                .nth(1)
                .expect("store function");
            let body = &body[..body.find("default:").expect("default case")];
            body.lines()
                .filter(|l| l.trim_start().starts_with("case"))
                .map(|l| l.trim().to_string())
                .collect()
        };
        for (name, chunks) in [
            ("store_unit", CHUNKS_PER_DISPATCH),
            ("store_unit_wide", WIDE_CHUNKS_PER_DISPATCH),
        ] {
            let expected: Vec<String> = (0..chunks)
                .map(|j| format!("case {j}u: {{ k{j}[index] = k; v{j}[index] = v; }}"))
                .collect();
            assert_eq!(store(name), expected, "{name}");
        }
        assert!(SHADER.contains(&format!("const CHUNKS: u32 = {CHUNKS_PER_DISPATCH}u;")));
        assert!(SHADER.contains(&format!(
            "const WIDE_CHUNKS: u32 = {WIDE_CHUNKS_PER_DISPATCH}u;"
        )));
        assert!(SHADER.contains(&format!("const WORKGROUP: u32 = {WORKGROUP}u;")));
        // No binding number is declared twice.
        let mut bindings: Vec<&str> = declarations
            .iter()
            .map(|l| l.split(')').nth(1).expect("binding"))
            .collect();
        let all = bindings.len();
        bindings.sort();
        bindings.dedup();
        assert_eq!(bindings.len(), all);
    }

    #[test]
    fn odd_rows_use_words_and_word_aligned_chunks() {
        // 3 heads x 5 x 2 bytes = 30-byte rows: block of 1 slot = 30 bytes; chunks must be
        // whole words, so an even number of blocks.
        let p = Problem {
            block_size: 1,
            ..problem(Dtype::BFloat16, CacheDtype::Auto, 3, 5)
        };
        let plan = Plan::new(&p, 100, u64::MAX, 32, "test").unwrap();
        assert_eq!(plan.kernel, Kernel::Words);
        assert_eq!(plan.chunk_blocks, 2);
        assert!(plan.chunk_bytes.iter().all(|&b| b % 4 == 0));
        assert_eq!(row_words(&p), 8);
    }

    /// wgpu errors become one-line errors, never panics (wgpu's default handler panics):
    /// caught by an error scope, or by the uncaptured-error handler and reported by the next
    /// wait.
    #[test]
    fn wgpu_errors_are_returned_not_panics() {
        let backend =
            WgpuBackend::open(None, false, WgpuTuning::default()).expect("a wgpu adapter");
        let too_big = backend.limits.max_buffer_size + 4;
        let error = backend
            .scoped("allocating an impossible buffer", || {
                backend.buffer("too big", too_big, wgpu::BufferUsages::STORAGE)
            })
            .expect_err("a buffer over max_buffer_size is refused");
        assert!(matches!(error, Error::Wgpu(_)), "{error}");
        assert!(error
            .to_string()
            .contains("allocating an impossible buffer"));
        assert!(!error.to_string().contains('\n'), "{error}");

        // A copy past the end of a buffer, submitted outside any scope.
        let small = backend.buffer("small", 16, wgpu::BufferUsages::COPY_SRC);
        let other = backend.buffer("other", 16, wgpu::BufferUsages::COPY_DST);
        let mut encoder = backend
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        encoder.copy_buffer_to_buffer(&small, 0, &other, 0, 64);
        backend.queue.submit([encoder.finish()]);
        let error = backend.wait().expect_err("the invalid copy is reported");
        assert!(matches!(error, Error::Wgpu(_)), "{error}");
        assert!(!error.to_string().contains('\n'), "{error}");
        // Reported once; the device still works.
        backend.queue.submit([]);
        backend.wait().expect("a clean wait afterwards");
    }

    #[test]
    fn adapter_choice() {
        let info = |name: &str, device_type, backend| wgpu::AdapterInfo {
            name: name.into(),
            ..wgpu::AdapterInfo::new(device_type, backend)
        };
        let lavapipe = info("llvmpipe", wgpu::DeviceType::Cpu, wgpu::Backend::Vulkan);
        let h100_gl = info(
            "NVIDIA H100",
            wgpu::DeviceType::DiscreteGpu,
            wgpu::Backend::Gl,
        );
        let h100 = info(
            "NVIDIA H100",
            wgpu::DeviceType::DiscreteGpu,
            wgpu::Backend::Vulkan,
        );
        let igpu = info(
            "Intel UHD",
            wgpu::DeviceType::IntegratedGpu,
            wgpu::Backend::Vulkan,
        );
        let all = [lavapipe.clone(), igpu, h100_gl, h100];
        assert_eq!(choose_adapter(&all, None, false).unwrap(), 3);
        assert_eq!(choose_adapter(&all, Some("intel"), true).unwrap(), 1);
        assert_eq!(choose_adapter(&all, Some("LLVM"), false).unwrap(), 0);
        let only_software = [lavapipe];
        assert_eq!(choose_adapter(&only_software, None, false).unwrap(), 0);
        for error in [
            choose_adapter(&[], None, false).unwrap_err(),
            choose_adapter(&only_software, None, true).unwrap_err(),
            choose_adapter(&all, Some("radeon"), false).unwrap_err(),
        ] {
            assert!(matches!(
                error,
                Error::Unavailable {
                    backend: Kind::Wgpu,
                    ..
                }
            ));
            assert!(!error.to_string().contains('\n'), "{error}");
        }
        assert!(choose_adapter(&[], None, false)
            .unwrap_err()
            .to_string()
            .contains("mesa-vulkan-drivers"));
    }

    #[test]
    fn scales_split_exactly() {
        let s = GpuScale::new(0.07);
        let rebuilt = s.significand as f64 * 2f64.powi(s.exponent - 23);
        assert_eq!(rebuilt as f32, 0.07);
        assert_eq!((s.kind, s.sign), (SCALE_FINITE, 0));
        let tiny = GpuScale::new(f32::from_bits(3));
        assert_eq!((tiny.significand, tiny.exponent), (0xc0_0000, -148));
        assert_eq!(GpuScale::new(-2.0).sign, 0x80);
        assert_eq!(GpuScale::new(0.0).kind, SCALE_ZERO);
        assert_eq!(GpuScale::new(f32::INFINITY).kind, SCALE_INFINITE);
        assert_eq!(GpuScale::new(f32::NAN).kind, SCALE_NAN);
    }
}
