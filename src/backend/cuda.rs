//! The CUDA backend: our own kernels (`kernels/reshape_and_cache_flash.cu`), compiled at run
//! time by NVRTC for the device's architecture and launched through cudarc's driver API.
//!
//! - One context, one non-default stream: every copy, launch and graph capture goes to it.
//!   cudarc's per-buffer event tracking is switched off before any buffer exists, because
//!   capturing a graph on a stream fails when cudarc records its events into it.
//! - Caches stay allocated between `prepare` calls of the same size and are filled on the
//!   device; inputs are uploaded into buffers that are reused while they are large enough.
//! - Nothing here panics when CUDA is missing: `open` checks that libcuda and libnvrtc load
//!   before cudarc touches them (cudarc panics otherwise) and turns every failure into a
//!   one-line error.

use std::sync::Arc;

use cudarc::driver::result::DriverError;
use cudarc::driver::sys::{self, CUdevice_attribute, CUevent_flags};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    LaunchConfig, PushKernelArg,
};

use super::{Backend, DeviceInfo, Footprint, Kind, Prepared};
use crate::error::{Bytes, Error, Result};
use crate::options::{Mode, Options};
use crate::problem::{CacheDtype, Dtype, Layout, Problem};
use crate::timing;
use crate::workload::{CacheFill, Inputs, Scaling};

mod call;
mod ceilings;

use call::{Abi, Args, CudaCall, Kernel};
mod compile;
mod quiet_panics;
mod shape;
pub mod user;

pub use shape::LaunchOverride;
use shape::{DeviceLimits, InputStrides, Launch};

/// Calls one graph holds when device time is measured in cudagraph mode: replaying a graph of
/// many calls keeps the GPU busy however slowly the CPU submits (nvbench's batch idea).
const GRAPH_BATCH_CALLS: usize = 20;
/// Bytes written before each cold call to evict the L2 cache (50 MB on an H100).
const FLUSH_BYTES: usize = 256 << 20;
/// Bytes of each of the two buffers the copy ceiling is measured on (far beyond any L2).
const COPY_BUFFER_BYTES: u64 = 2 << 30;
/// Threads per block of the fill kernel.
const STREAM_THREADS: u32 = 256;
/// Threads per block of the copy kernel (the fastest on an H100, by a fraction of a percent).
const COPY_THREADS: u32 = 1024;

/// How many CUDA devices this machine has (0 where the driver is missing or fails).
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    quiet_panics::catch(|| {
        cudarc::driver::result::init()
            .ok()
            .and_then(|()| CudaContext::device_count().ok())
            .unwrap_or(0)
    })
    .unwrap_or(0)
    .max(0) as usize
}

/// Whether the NVIDIA driver library can be loaded here (cudarc panics on first use otherwise).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        backend: Kind::Cuda,
        reason: reason.into(),
    }
}

/// A driver error as one line: `CUDA_ERROR_OUT_OF_MEMORY (out of memory)`.
fn describe(error: DriverError) -> String {
    let name = error
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", error.0));
    match error.error_string() {
        Ok(text) => format!("{name} ({})", text.to_string_lossy()),
        Err(_) => name,
    }
}

/// A CUDA driver error, kept as the source of [`Error::Cuda`]: its result code (`.0.0`) and,
/// when printed, the driver's name and description of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverFailure(pub DriverError);

impl std::fmt::Display for DriverFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(self.0))
    }
}

impl std::error::Error for DriverFailure {}

/// Adds what was being done to a driver error.
trait Context<T> {
    fn during(self, what: &str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, DriverError> {
    fn during(self, what: &str) -> Result<T> {
        self.map_err(|error| Error::Cuda {
            what: what.to_string(),
            source: Box::new(DriverFailure(error)),
        })
    }
}

/// The kernels of the compiled module.
struct Kernels {
    _module: Arc<CudaModule>,
    /// Indexed by [`kernel_index`].
    reshape: Vec<CudaFunction>,
    copy: CudaFunction,
    /// `--ceiling pattern`'s kernels, indexed by [`pattern_index`].
    pattern: Vec<CudaFunction>,
    /// Streaming ceilings: one or two 16-byte words read per word written, scattered writes.
    stream_r1w1: CudaFunction,
    stream_r2w1: CudaFunction,
    fill: CudaFunction,
}

const DTYPES: [Dtype; 3] = [Dtype::Half, Dtype::BFloat16, Dtype::Float];

/// What a kernel instance writes into the cache: the cache dtype, and for fp8 whether the
/// scales are per head (the `_per_head` instances load head h's scale; the others one per
/// tensor, with the code they always had).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Encoding {
    cache_dtype: CacheDtype,
    per_head: bool,
}

const ENCODINGS: [Encoding; 5] = [
    Encoding {
        cache_dtype: CacheDtype::Auto,
        per_head: false,
    },
    Encoding {
        cache_dtype: CacheDtype::Fp8,
        per_head: false,
    },
    Encoding {
        cache_dtype: CacheDtype::Fp8E5m2,
        per_head: false,
    },
    Encoding {
        cache_dtype: CacheDtype::Fp8,
        per_head: true,
    },
    Encoding {
        cache_dtype: CacheDtype::Fp8E5m2,
        per_head: true,
    },
];

impl Encoding {
    /// The encoding of a call (per-head scales only matter to fp8 caches).
    fn of(cache_dtype: CacheDtype, scaling: Scaling) -> Self {
        Self {
            cache_dtype,
            per_head: cache_dtype.is_fp8() && scaling == Scaling::PerHead,
        }
    }

    fn suffix(self) -> String {
        let head = if self.per_head { "_per_head" } else { "" };
        format!("{}{head}", self.cache_dtype.name())
    }
}

/// The instances of the kernel template for one dtype pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// 16-byte items, up to 4 per thread.
    Vector,
    /// 16-byte items, one per thread: small calls (less code to fetch, fewer registers).
    VectorSingle,
    /// As `VectorSingle`, for the smallest fp8 calls (`Launch::small`): letting the next grid
    /// launch before waiting (bfloat16, float), or peeled under a looser register cap (half).
    VectorSingleSmall,
    /// One element per item (any head size or alignment).
    Scalar,
}

const VARIANTS: [Variant; 4] = [
    Variant::Vector,
    Variant::VectorSingle,
    Variant::VectorSingleSmall,
    Variant::Scalar,
];

impl Variant {
    fn of(launch: &Launch) -> Self {
        match (launch.vector, launch.params.items_per_thread, launch.small) {
            (false, _, _) => Variant::Scalar,
            (true, 1, true) => Variant::VectorSingleSmall,
            (true, 1, false) => Variant::VectorSingle,
            (true, _, _) => Variant::Vector,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Variant::Vector => "",
            Variant::VectorSingle => "_x1",
            Variant::VectorSingleSmall => "_x1_small",
            Variant::Scalar => "_scalar",
        }
    }
}

/// Where the instance for `dtype`, `encoding` and `variant` is in `Kernels::reshape`; `None`
/// for an encoding the kernels do not have (every one they are asked for: `check_support`
/// refuses the others first).
fn kernel_index(dtype: Dtype, encoding: Encoding, variant: Variant) -> Option<usize> {
    let d = DTYPES.iter().position(|&d| d == dtype)?;
    let e = ENCODINGS.iter().position(|&e| e == encoding)?;
    let v = VARIANTS.iter().position(|&v| v == variant)?;
    Some((v * ENCODINGS.len() + e) * DTYPES.len() + d)
}

fn kernel_name(dtype: Dtype, encoding: Encoding, variant: Variant) -> String {
    format!(
        "reshape_and_cache_flash_{}_{}{}",
        dtype.name(),
        encoding.suffix(),
        variant.suffix()
    )
}

/// Where the pattern kernel (`--ceiling pattern`) for `dtype` is in `Kernels::pattern`: one
/// per input dtype, auto or fp8 cache (e4m3 and e5m2 write alike), 16-byte or scalar items.
fn pattern_index(dtype: Dtype, fp8: bool, vector: bool) -> Option<usize> {
    let d = DTYPES.iter().position(|&d| d == dtype)?;
    Some((usize::from(!vector) * 2 + usize::from(fp8)) * DTYPES.len() + d)
}

fn pattern_name(dtype: Dtype, fp8: bool, vector: bool) -> String {
    format!(
        "pattern_{}_{}{}",
        dtype.name(),
        if fp8 { "fp8" } else { "auto" },
        if vector { "" } else { "_scalar" }
    )
}

/// Threads per block of the pattern kernels.
const PATTERN_THREADS: u32 = 256;

/// The pattern kernel's launch for a call cut as `launch`: the same items (and so the same
/// parameter block but for the items per thread), one per thread and load, laid out as the
/// copy ceiling is: blocks of [`PATTERN_THREADS`] taking 4 consecutive items a thread where the
/// call fills the device four times over, else one (small calls spread over every SM).
fn pattern_launch(launch: &Launch, limits: DeviceLimits) -> Launch {
    let total = launch.params.num_tokens as u64 * launch.params.items_per_token.divisor as u64;
    let resident = limits.sm_count as u64 * limits.max_threads_per_sm as u64;
    let items_per_thread = if total >= 4 * resident { 4 } else { 1 };
    let per_block = (PATTERN_THREADS * items_per_thread) as u64;
    Launch {
        vector: launch.vector,
        small: false,
        threads: PATTERN_THREADS,
        grid: (
            total.div_ceil(per_block).clamp(1, i32::MAX as u64) as u32,
            1,
            1,
        ),
        params: shape::Params {
            items_per_thread,
            ..launch.params
        },
    }
}

/// Both caches on the device, kept between calls of the same size.
struct DeviceCaches {
    key: CudaSlice<u8>,
    value: CudaSlice<u8>,
    /// Bytes of each cache (the buffers are rounded up to whole 16-byte words for the fill).
    bytes: u64,
    /// The seed of the random fill they hold, if they hold one.
    random_seed: Option<u64>,
}

/// Input buffers, reused while large enough.
struct DeviceInputs {
    key: CudaSlice<u8>,
    value: CudaSlice<u8>,
    slots: CudaSlice<i64>,
    /// `[k_scale, v_scale]`, or per head `[k_scale[0..h], v_scale[0..h]]`.
    scales: CudaSlice<f32>,
}

/// An NVIDIA GPU driven through CUDA.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    info: DeviceInfo,
    limits: DeviceLimits,
    caches: Option<DeviceCaches>,
    inputs: Option<DeviceInputs>,
    forced_launch: Option<LaunchOverride>,
    /// Whether calls are launched with programmatic dependent launch (compute capability 9.0
    /// and later, unless `CudaTuning::programmatic_launch` says no).
    programmatic_launch: bool,
    /// How calls are issued: replays of a captured graph, or plain launches.
    mode: Mode,
    /// Written before each cold call (allocated on first use).
    flush_buffer: std::cell::OnceCell<CudaSlice<u8>>,
}

impl CudaBackend {
    /// Opens device 0 and compiles the kernels (with `options.cuda`'s tuning; calls are issued
    /// as `options.mode` says). Fails with a one-line [`Error::Unavailable`] where there is no
    /// driver, no GPU or no NVRTC; never panics.
    pub fn open(options: &Options) -> Result<Self> {
        if !driver_present() {
            return Err(unavailable(
                "the NVIDIA driver library (libcuda.so) is not installed or not on the library path",
            ));
        }
        // cudarc resolves driver symbols lazily and panics on one a very old driver lacks:
        // keep that from escaping as a panic, without printing it.
        let opened = quiet_panics::catch(|| Self::open_inner(options));
        opened.unwrap_or_else(|message| {
            Err(unavailable(format!(
                "the CUDA driver failed: {}",
                message.lines().next().unwrap_or("")
            )))
        })
    }

    fn open_inner(options: &Options) -> Result<Self> {
        cudarc::driver::result::init()
            .map_err(|e| unavailable(format!("the CUDA driver did not start: {}", describe(e))))?;
        let count = CudaContext::device_count()
            .map_err(|e| unavailable(format!("cannot count CUDA devices: {}", describe(e))))?;
        if count < 1 {
            return Err(unavailable("no CUDA device found"));
        }
        let ordinal = options.device.unwrap_or(0);
        if ordinal >= count as usize {
            return Err(unavailable(format!(
                "no CUDA device {ordinal}: this machine has {count} (0 to {})",
                count - 1
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| {
            unavailable(format!(
                "cannot open CUDA device {ordinal}: {}",
                describe(e)
            ))
        })?;
        // SAFETY: every buffer of this backend is used on its one stream only, so cudarc's
        // cross-stream events are not needed; with them, graph capture fails (see module docs).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().during("creating a stream")?;
        let (major, minor) = ctx.compute_capability().during("reading the device")?;
        let attribute = |a: CUdevice_attribute| ctx.attribute(a).during("reading the device");
        let limits = DeviceLimits {
            sm_count: attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?
                as u32,
            max_threads_per_sm: attribute(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR,
            )? as u32,
        };
        let name = ctx.name().during("reading the device name")?;
        let total = ctx.total_mem().during("reading the device memory")?;

        let tuning = &options.cuda;
        let image = compile::compile(major, minor, &tuning.defines)?;
        if let Some(path) = &tuning.dump_cubin {
            image.dump(path)?;
        }
        let module = ctx.load_module(image.into_ptx()).map_err(|e| {
            unavailable(format!("cannot load the compiled kernels: {}", describe(e)))
        })?;
        let load = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| unavailable(format!("kernel {name} missing: {}", describe(e))))
        };
        let mut reshape = Vec::new();
        for variant in VARIANTS {
            for encoding in ENCODINGS {
                for dtype in DTYPES {
                    debug_assert_eq!(kernel_index(dtype, encoding, variant), Some(reshape.len()));
                    reshape.push(load(&kernel_name(dtype, encoding, variant))?);
                }
            }
        }
        let mut pattern = Vec::new();
        for vector in [true, false] {
            for fp8 in [false, true] {
                for dtype in DTYPES {
                    debug_assert_eq!(pattern_index(dtype, fp8, vector), Some(pattern.len()));
                    pattern.push(load(&pattern_name(dtype, fp8, vector))?);
                }
            }
        }
        let kernels = Kernels {
            pattern,
            copy: load("copy16")?,
            stream_r1w1: load("stream_r1w1")?,
            stream_r2w1: load("stream_r2w1")?,
            fill: load("fill_random")?,
            reshape,
            _module: module,
        };

        let mut driver = 0;
        // SAFETY: one out-parameter.
        unsafe { sys::cuDriverGetVersion(&mut driver) };
        let nvrtc = compile::nvrtc_version()
            .map(|(major, minor)| format!("{major}.{minor}"))
            .unwrap_or_else(|| "?".into());
        let info = DeviceInfo {
            name,
            details: format!(
                "compute capability {major}.{minor}, {} SMs, {}, CUDA driver {}.{}, NVRTC {nvrtc}",
                limits.sm_count,
                Bytes(total as u64),
                driver / 1000,
                driver % 1000 / 10
            ),
        };
        Ok(Self {
            ctx,
            stream,
            kernels,
            info,
            limits,
            caches: None,
            inputs: None,
            forced_launch: tuning.launch,
            // Programmatic dependent launch (compute capability 9.0 and later): a call's blocks
            // may be scheduled while the previous kernel on the stream is still running, and
            // wait in the kernel (`griddepcontrol.wait`) until it has finished and its writes
            // are visible, before touching memory; only the launch overlaps, never the work.
            // On an H100 it took a call of 2 tokens from 1.49 to 1.24 us in a graph, and
            // changed nothing for large calls (docs/perf-log.md, v5).
            programmatic_launch: major >= 9 && tuning.programmatic_launch.unwrap_or(true),
            mode: options.mode,
            flush_buffer: std::cell::OnceCell::new(),
        })
    }

    /// Forces threads per block and items per thread for later calls (tuning, tests); `None`
    /// restores the built-in choice. (At open, `CudaTuning::launch` sets it.)
    #[doc(hidden)]
    pub fn force_launch(&mut self, forced: Option<LaunchOverride>) {
        self.forced_launch = forced;
    }

    /// Whether calls are launched with programmatic dependent launch.
    pub fn programmatic_launch(&self) -> bool {
        self.programmatic_launch
    }

    fn free_memory(&self) -> Result<u64> {
        self.ctx.bind_to_thread().during("binding the context")?;
        let (free, _) = cudarc::driver::result::mem_get_info().during("reading free memory")?;
        Ok(free as u64)
    }

    /// Allocates `len` elements, turning out-of-memory into [`Error::DoesNotFit`].
    fn alloc<T: cudarc::driver::DeviceRepr>(&self, len: usize, what: &str) -> Result<CudaSlice<T>> {
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        // SAFETY: every byte is written (upload, fill or kernel) before it is read back.
        match unsafe { self.stream.alloc::<T>(len.max(1)) } {
            Ok(slice) => Ok(slice),
            Err(error) if error.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                Err(Error::DoesNotFit {
                    what: what.to_string(),
                    needed: Bytes(bytes),
                    available: Bytes(self.free_memory().unwrap_or(0)),
                    device: self.info.name.clone(),
                    hint: String::new(),
                })
            }
            Err(error) => Err(error).during(&format!("allocating {what}")),
        }
    }

    fn grid_for(&self, words: u64, threads: u32) -> u32 {
        // One full wave of resident blocks; the kernels walk the rest in a grid-stride loop.
        let wave = self.limits.sm_count as u64 * (self.limits.max_threads_per_sm / threads) as u64;
        words.div_ceil(threads as u64).clamp(1, wave.max(1)) as u32
    }

    /// Fills `buffer` (a whole number of 16-byte words) with the device's pseudo-random data.
    fn fill_random(&self, buffer: &mut CudaSlice<u8>, seed: u64) -> Result<()> {
        let words = (buffer.len() / 16) as u64;
        let config = LaunchConfig {
            grid_dim: (self.grid_for(words, STREAM_THREADS), 1, 1),
            block_dim: (STREAM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.kernels.fill);
        launch.arg(buffer).arg(&words).arg(&seed);
        // SAFETY: the kernel writes `words` 16-byte words of `buffer`, which holds them.
        unsafe { launch.launch(config) }.during("filling the caches")?;
        Ok(())
    }

    /// Makes the caches hold `fill` at `bytes` each.
    fn set_caches(&mut self, bytes: u64, fill: CacheFill<'_>) -> Result<()> {
        if let CacheFill::Copy(caches) = fill {
            if caches.key.len() as u64 != bytes || caches.value.len() as u64 != bytes {
                return Err(Error::InvalidConfig(format!(
                    "initial caches hold {} and {} bytes, the problem needs {bytes}",
                    caches.key.len(),
                    caches.value.len()
                )));
            }
        }
        if self.caches.as_ref().is_some_and(|c| c.bytes != bytes) {
            // Free before allocating: two generations of 32 GiB caches do not fit.
            self.caches = None;
            self.stream.synchronize().during("freeing the caches")?;
        }
        if self.caches.is_none() {
            let words = bytes.div_ceil(16) as usize * 16;
            let key = self.alloc::<u8>(words, "the key cache")?;
            let value = self.alloc::<u8>(words, "the value cache")?;
            self.caches = Some(DeviceCaches {
                key,
                value,
                bytes,
                random_seed: None,
            });
        }
        let mut caches = self.caches.take().expect("allocated above");
        let result = match fill {
            CacheFill::Random { seed } if caches.random_seed == Some(seed) => Ok(()),
            CacheFill::Random { seed } => {
                caches.random_seed = None;
                self.fill_random(&mut caches.key, seed)
                    .and_then(|_| self.fill_random(&mut caches.value, seed.wrapping_add(1)))
                    .map(|_| caches.random_seed = Some(seed))
            }
            CacheFill::Copy(host) => {
                caches.random_seed = None;
                let len = bytes as usize;
                self.stream
                    .memcpy_htod(&host.key[..], &mut caches.key.slice_mut(..len))
                    .and_then(|_| {
                        self.stream
                            .memcpy_htod(&host.value[..], &mut caches.value.slice_mut(..len))
                    })
                    .during("uploading the caches")
            }
        };
        self.caches = Some(caches);
        result
    }

    /// Uploads the inputs, reusing the buffers when they are large enough. The scales: the
    /// two per-tensor ones, or `num_heads` of each tensor (a per-tensor one repeated where the
    /// other tensor's are per head). Returns where the value scales start, in floats.
    fn set_inputs(&mut self, inputs: &Inputs<'_>, num_heads: usize) -> Result<usize> {
        let scales: Vec<f32> = if inputs.per_head_scales() {
            let heads = 0..num_heads;
            heads
                .clone()
                .map(|h| inputs.k_scale.of_head(h))
                .chain(heads.map(|h| inputs.v_scale.of_head(h)))
                .collect()
        } else {
            vec![inputs.k_scale.of_head(0), inputs.v_scale.of_head(0)]
        };
        let fits = self.inputs.as_ref().is_some_and(|d| {
            d.key.len() >= inputs.key.len()
                && d.value.len() >= inputs.value.len()
                && d.slots.len() >= inputs.slot_mapping.len()
                && d.scales.len() >= scales.len()
        });
        if !fits {
            self.inputs = None;
            self.stream.synchronize().during("freeing the inputs")?;
            self.inputs = Some(DeviceInputs {
                key: self.alloc(inputs.key.len(), "the keys")?,
                value: self.alloc(inputs.value.len(), "the values")?,
                slots: self.alloc(inputs.slot_mapping.len(), "the slot mapping")?,
                scales: self.alloc(scales.len(), "the scales")?,
            });
        }
        let device = self.inputs.as_mut().expect("allocated above");
        let stream = &self.stream;
        stream
            .memcpy_htod(inputs.key, &mut device.key.slice_mut(..inputs.key.len()))
            .and_then(|_| {
                stream.memcpy_htod(
                    inputs.value,
                    &mut device.value.slice_mut(..inputs.value.len()),
                )
            })
            .and_then(|_| {
                stream.memcpy_htod(
                    inputs.slot_mapping,
                    &mut device.slots.slice_mut(..inputs.slot_mapping.len()),
                )
            })
            .and_then(|_| stream.memcpy_htod(&scales, &mut device.scales.slice_mut(..scales.len())))
            .during("uploading the inputs")?;
        Ok(scales.len() / 2)
    }

    fn timing_event(&self) -> Result<CudaEvent> {
        // cudarc's default event has timing disabled.
        self.ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .during("creating an event")
    }

    /// The device's SM count.
    #[doc(hidden)]
    pub fn sm_count(&self) -> u32 {
        self.limits.sm_count
    }
}

impl Backend for CudaBackend {
    fn kind(&self) -> Kind {
        Kind::Cuda
    }

    fn device(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn supports(&self, _layout: Layout) -> bool {
        true
    }

    fn check_support(&self, problem: &Problem, scaling: Scaling) -> Result<()> {
        // Every encoding has its instances; a new cache dtype without them is refused here
        // rather than run by the wrong kernel.
        let encoding = Encoding::of(problem.cache_dtype, scaling);
        if !ENCODINGS.contains(&encoding) {
            return Err(Error::Unsupported {
                backend: Kind::Cuda.name().into(),
                what: format!("{} caches", encoding.suffix()),
            });
        }
        Ok(())
    }

    fn footprint(&self, cache_bytes: u64, input_bytes: u64, num_tokens: usize) -> Footprint {
        // Caches, keys, values, slots and the two scales all live on the device; the host only
        // holds what the caller already has. Then either the cold flush buffer or the input
        // copies of rotating timing (under 2 * ROTATION_BYTES, see `timing::rotation_sets`).
        Footprint {
            host: 0,
            device: 2 * cache_bytes
                + 2 * input_bytes
                + 8 * num_tokens as u64
                + 8
                + (FLUSH_BYTES as u64).max(2 * timing::ROTATION_BYTES),
        }
    }

    fn device_memory(&self) -> Option<u64> {
        self.free_memory().ok()
    }

    fn mode_note(&self) -> String {
        let pdl = if self.programmatic_launch {
            " (programmatic dependent launch: a call may be scheduled while the previous one \
             drains, but waits for it to finish before touching memory)"
        } else {
            ""
        };
        match self.mode {
            Mode::Cudagraph => format!(
                "cudagraph: latency = mean host wall time of (replay a CUDA graph holding one \
                 call, then synchronize the stream), vLLM's method; device time = CUDA events \
                 around replays of a graph holding {GRAPH_BATCH_CALLS} back-to-back calls \
                 (whole rotations when rotating), per call, so the CPU's launch rate does not \
                 count{pdl}; cold: one replay of the one-call graph after a {} MiB write that \
                 evicts L2",
                FLUSH_BYTES >> 20
            ),
            Mode::NoGraph => format!(
                "no_graph: latency = mean host wall time of (launch the kernel, then synchronize \
                 the stream), vLLM's method; device time = CUDA events around back-to-back \
                 launches, per call (gaps between launches count when the CPU is slower than \
                 the kernel){pdl}; cold: one launch after a {} MiB write that evicts L2",
                FLUSH_BYTES >> 20
            ),
        }
    }

    fn mode_summary(&self) -> String {
        format!("measuring with {}", self.mode)
    }

    fn copy_bandwidth_gbps(&mut self) -> Result<Option<f64>> {
        // Two buffers of 2 GiB where memory allows; less next to large caches, but never so
        // little that the L2 cache (50 MB on an H100) would hold them.
        let free = self.free_memory()?;
        let bytes =
            COPY_BUFFER_BYTES.min(free.saturating_sub(512 << 20) / 2) / (16 << 20) * (16 << 20);
        if bytes < 256 << 20 {
            return Ok(None);
        }
        // The best of three allocations: the same copy now and then runs several percent
        // slower on one pair of buffers (seen right after other large buffers were freed), and
        // the ceiling is what the memory can do.
        let mut best: f64 = 0.0;
        for _ in 0..3 {
            best = best.max(self.measure_copy(bytes, COPY_THREADS, 0, 5)?);
        }
        Ok(Some(best))
    }

    fn prepare<'a>(
        &'a mut self,
        problem: &Problem,
        inputs: Inputs<'a>,
        fill: CacheFill<'_>,
    ) -> Result<Box<dyn Prepared + 'a>> {
        inputs.validate_for(problem)?;
        let scaling = inputs.scaling();
        self.check_support(problem, scaling)?;
        let launch = shape::plan(
            problem,
            &InputStrides::of(problem),
            self.limits,
            self.forced_launch,
        )?;
        let args = self.stage(problem, &inputs, fill)?;
        let this: &'a CudaBackend = self;
        let index = kernel_index(
            problem.dtype,
            Encoding::of(problem.cache_dtype, scaling),
            Variant::of(&launch),
        )
        .ok_or_else(|| Error::Unsupported {
            backend: Kind::Cuda.name().into(),
            what: format!("{} caches", problem.cache_dtype),
        })?;
        let kernel = Kernel {
            function: &this.kernels.reshape[index],
            grid: launch.grid,
            block: launch.threads,
            abi: Abi::BuiltIn(launch.params),
            programmatic: this.programmatic_launch,
            label: "reshape_and_cache_flash".into(),
            timeout: None,
        };
        let pattern = pattern_index(problem.dtype, problem.cache_dtype.is_fp8(), launch.vector)
            .map(|index| {
                let pattern = pattern_launch(&launch, this.limits);
                Kernel {
                    function: &this.kernels.pattern[index],
                    grid: pattern.grid,
                    block: pattern.threads,
                    abi: Abi::BuiltIn(pattern.params),
                    programmatic: this.programmatic_launch,
                    label: "the pattern kernel".into(),
                    timeout: None,
                }
            });
        Ok(Box::new(CudaCall::new(
            this, *problem, kernel, args, pattern,
        )))
    }
}

impl CudaBackend {
    /// What every call's `prepare` does before choosing its kernel (the built-in ones and
    /// users'): the caches filled, the inputs uploaded, and their device addresses.
    fn stage(
        &mut self,
        problem: &Problem,
        inputs: &Inputs<'_>,
        fill: CacheFill<'_>,
    ) -> Result<Args> {
        self.set_caches(problem.cache_bytes(), fill)?;
        let value_scales = self.set_inputs(inputs, problem.num_heads)?;
        self.stream.synchronize().during("preparing the call")?;
        let caches = self.caches.as_ref().expect("set above");
        let device = self.inputs.as_ref().expect("set above");
        let stream = &self.stream;
        let pointer = |slice: &CudaSlice<u8>| slice.device_ptr(stream).0;
        let scales = device.scales.device_ptr(stream).0;
        Ok(Args {
            key: pointer(&device.key),
            value: pointer(&device.value),
            key_cache: pointer(&caches.key),
            value_cache: pointer(&caches.value),
            slots: device.slots.device_ptr(stream).0,
            k_scale: scales,
            v_scale: scales + 4 * value_scales as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without NVIDIA's driver, opening must fail with a one-line error, not panic.
    #[test]
    fn open_without_driver_is_a_clean_error() {
        if driver_present() {
            eprintln!("libcuda is present here: nothing to check");
            return;
        }
        match CudaBackend::open(&Options::default()) {
            Ok(_) => panic!("opened CUDA without a driver"),
            Err(error) => {
                assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
                let text = error.to_string();
                assert!(text.starts_with("cuda is unavailable: "), "{text}");
                assert!(!text.contains('\n'), "{text}");
            }
        }
    }

    #[test]
    fn kernel_table_is_dense() {
        let mut seen = [false; VARIANTS.len() * ENCODINGS.len() * DTYPES.len()];
        for variant in VARIANTS {
            for encoding in ENCODINGS {
                for dtype in DTYPES {
                    let index = kernel_index(dtype, encoding, variant).expect("in the table");
                    assert!(!seen[index]);
                    seen[index] = true;
                    // Each instance once in the source, by its name as the first argument of
                    // a kernel macro.
                    let name = kernel_name(dtype, encoding, variant);
                    assert_eq!(
                        compile::SOURCE.matches(&format!("({name},")).count(),
                        1,
                        "{name}"
                    );
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
        // Every cache dtype has its per-tensor and (fp8) per-head instances.
        for cache_dtype in [CacheDtype::Auto, CacheDtype::Fp8, CacheDtype::Fp8E5m2] {
            for scaling in [Scaling::PerTensor, Scaling::PerHead] {
                assert!(ENCODINGS.contains(&Encoding::of(cache_dtype, scaling)));
            }
        }
        assert_eq!(
            kernel_name(
                Dtype::BFloat16,
                Encoding::of(CacheDtype::Fp8E5m2, Scaling::PerHead),
                Variant::VectorSingle
            ),
            "reshape_and_cache_flash_bfloat16_fp8_e5m2_per_head_x1"
        );
        assert_eq!(
            kernel_name(
                Dtype::Half,
                Encoding::of(CacheDtype::Auto, Scaling::PerHead),
                Variant::Vector
            ),
            "reshape_and_cache_flash_half_auto"
        );
    }
}
