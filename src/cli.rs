//! Command-line flags: those of vLLM's `benchmark_reshape_and_cache_flash.py`, with its choices
//! and defaults, plus the sweep's token counts and layouts and the backend choice.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use paged_kv_bench::backend::{Kind, Selection};
use paged_kv_bench::models;
use paged_kv_bench::options::{
    CacheAlloc, Ceiling, CudaTuning, LaunchOverride, Mode, Options, WgpuApi, WgpuTuning,
};
use paged_kv_bench::problem::{CacheDtype, Dtype, Layout};
use paged_kv_bench::sweep::{self, NumBlocks, SweepConfig};
use paged_kv_bench::timing::{Protocol, Sampling};
use paged_kv_bench::user_kernel::{self, Language, UserKernel};
use paged_kv_bench::workload::{Scaling, SlotPattern, WorkloadConfig};

/// Benchmark reshape_and_cache_flash: writing new keys and values into a paged KV cache.
///
/// Without a subcommand: sweeps num_tokens for each layout and prints vLLM's table, the
/// wall-clock latency measured the way vLLM's script does and the device time from the
/// backend's own clock.
#[derive(Debug, Parser)]
#[command(
    name = "paged-kv-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub bench: BenchArgs,
}

impl Cli {
    /// Refuses flags that parse one by one but contradict each other, before anything runs
    /// (an error clap would give, so it prints and exits the same way).
    pub fn check(&self) -> Result<(), clap::Error> {
        match &self.command {
            None => {
                self.bench.check()?;
                self.bench.backend.check()
            }
            Some(Command::Verify(args)) => args.backend.check(),
        }
    }
}

fn conflict(message: String) -> clap::Error {
    Cli::command().error(ErrorKind::ArgumentConflict, message)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every available implementation against the CPU reference, byte for byte.
    Verify(VerifyArgs),
}

/// Flags of the `verify` subcommand.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Which implementation(s) to check.
    #[arg(long, value_enum, default_value_t = Checked(Selection::All))]
    pub implementation: Checked,

    /// A subset of the matrix that finishes in seconds.
    #[arg(long)]
    pub quick: bool,

    /// Seed of the random inputs [default: random, printed so the run can be replayed].
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,

    #[command(flatten)]
    pub backend: BackendArgs,
}

/// `verify --implementation`: the benchmark's choices, where `auto` means every implementation
/// (a check wants every one there is), so its help says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked(pub Selection);

impl clap::ValueEnum for Checked {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [Checked; 6] = [
            Checked(Selection::Auto),
            Checked(Selection::Only(Kind::Cuda)),
            Checked(Selection::Only(Kind::Wgpu)),
            Checked(Selection::Only(Kind::Cpu)),
            Checked(Selection::All),
            Checked(Selection::None),
        ];
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let value = self.0.to_possible_value()?;
        Some(match self.0 {
            Selection::Auto | Selection::All => {
                value.help("every implementation available here (auto and all are the same)")
            }
            _ => value,
        })
    }
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

/// Flags that choose and tune backends, shared by the benchmark and `verify`. The tuning flags
/// are hidden from `--help`: they are for experiments, and a report names any that is set.
#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Your own CUDA C++ kernel, as an implementation named after the file's stem (or NAME),
    /// verified before it is timed; repeatable. See "Your own kernel" in the README.
    #[arg(long = "kernel", value_name = "[NAME=]FILE.cu")]
    pub kernels: Vec<String>,

    /// Your own WGSL shader, as an implementation named after the file's stem (or NAME),
    /// verified before it is timed; repeatable. The contract: shaders/paged_kv.wgsl.
    #[arg(long = "shader", value_name = "[NAME=]FILE.wgsl")]
    pub shaders: Vec<String>,

    /// Seconds one wait for your kernel may take before the run ends with an error (a hang or
    /// an endless loop) [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = timeout_seconds)]
    pub kernel_timeout: Option<f64>,

    /// wgpu: use the first adapter whose name contains this text (case-insensitive).
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,

    /// The device to run on: the CUDA device ordinal or the wgpu adapter's index (as listed by
    /// an error for an index that does not exist), or `all` to run on each device in turn.
    #[arg(long, value_name = "N|all", value_parser = device_choice)]
    pub device: Option<DeviceChoice>,

    /// CUDA: programmatic dependent launch (on by default where the GPU has it).
    #[arg(long, hide = true, value_name = "on|off", value_parser = on_off)]
    pub cuda_pdl: Option<bool>,

    /// CUDA: extra -D macros for the kernel source, comma-separated (NAME or NAME=VALUE).
    #[arg(long, hide = true, value_delimiter = ',', value_name = "MACROS")]
    pub cuda_define: Vec<String>,

    /// CUDA: force threads per block and items per thread, as THREADSxITEMS (e.g. 256x2).
    #[arg(long, hide = true, value_name = "THREADSxITEMS", value_parser = launch_shape)]
    pub cuda_launch: Option<LaunchOverride>,

    /// CUDA: write the compiled kernels (cubin) to this file, for `cuobjdump -sass`.
    #[arg(long, hide = true, value_name = "FILE")]
    pub cuda_dump_cubin: Option<PathBuf>,

    /// wgpu: bytes per storage binding, at most (splits caches over more buffers).
    #[arg(long, hide = true, value_name = "BYTES", value_parser = bytes)]
    pub wgpu_max_binding: Option<u64>,

    /// wgpu: workgroups per dispatch dimension, at most.
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub wgpu_max_workgroups: Option<u32>,

    /// wgpu: cache blocks per buffer chunk, at most.
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub wgpu_chunk_blocks: Option<u64>,

    /// wgpu: take tokens in slot order (a bucketing pass per call), or as they come.
    #[arg(long, hide = true, value_name = "on|off", value_parser = on_off)]
    pub wgpu_slot_order: Option<bool>,

    /// wgpu: buckets (slot ranges) of the slot-order pass.
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=(1 << 20)))]
    pub wgpu_order_buckets: Option<u32>,

    /// wgpu: one buffer per cache with chunks bound as windows (on), or a buffer per chunk.
    #[arg(long, hide = true, value_name = "on|off", value_parser = on_off)]
    pub wgpu_one_buffer: Option<bool>,

    /// wgpu: 16-byte units per thread in the 16-byte kernels (1 to 8).
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=8))]
    pub wgpu_units: Option<u32>,

    /// wgpu: fp8 through threshold tables where the scales allow.
    #[arg(long, hide = true, value_name = "on|off", value_parser = on_off)]
    pub wgpu_fp8_table: Option<bool>,

    /// wgpu: fp8 from 16-bit inputs through a lookup table of every pattern's code.
    #[arg(long, hide = true, value_name = "on|off", value_parser = on_off)]
    pub wgpu_fp8_lut: Option<bool>,

    /// wgpu: fp8 with four threads per 16-byte cache unit, each encoding one word.
    #[arg(long, hide = true, value_name = "on|off", value_parser = on_off)]
    pub wgpu_fp8_split: Option<bool>,

    /// wgpu: fp8 without tables by the short exact encoder where the scales allow (on), or by
    /// the long one alone.
    #[arg(long, hide = true, value_name = "on|off", value_parser = on_off)]
    pub wgpu_fp8_fast: Option<bool>,

    /// wgpu: print each call's plan to stderr.
    #[arg(long, hide = true)]
    pub wgpu_trace: bool,

    /// wgpu: the graphics API to open adapters on ("native": Vulkan, Metal or DX12).
    #[arg(long, value_enum, default_value_t = WgpuApi::Native)]
    pub wgpu_api: WgpuApi,

    /// wgpu: how the cache buffers get their memory: "dedicated" Vulkan allocations (fast
    /// address translation for large caches), wgpu's own allocator, or "auto" (dedicated where
    /// the adapter is Vulkan).
    #[arg(long, hide = true, value_enum, value_name = "auto|wgpu|dedicated", default_value_t = CacheAlloc::Auto)]
    pub wgpu_cache_alloc: CacheAlloc,
}

impl BackendArgs {
    fn check(&self) -> Result<(), clap::Error> {
        if self.kernel_timeout.is_some() && self.kernels.is_empty() && self.shaders.is_empty() {
            return Err(conflict(
                "--kernel-timeout bounds your own kernels: give --kernel or --shader".into(),
            ));
        }
        if self.wgpu_cache_alloc == CacheAlloc::Dedicated
            && matches!(self.wgpu_api, WgpuApi::Gl | WgpuApi::Metal | WgpuApi::Dx12)
        {
            return Err(conflict(format!(
                "--wgpu-cache-alloc dedicated makes Vulkan allocations, which --wgpu-api {} \
                 does not use",
                self.wgpu_api.name()
            )));
        }
        if self.wgpu_fp8_split == Some(true) && self.wgpu_units.is_some_and(|units| units > 1) {
            return Err(conflict(
                "--wgpu-fp8-split on shares each unit among four threads, which --wgpu-units \
                 above 1 gives several units each"
                    .into(),
            ));
        }
        if self.wgpu_order_buckets.is_some() && self.wgpu_slot_order == Some(false) {
            return Err(conflict(
                "--wgpu-order-buckets sets the buckets of the slot-order pass, which \
                 --wgpu-slot-order off turns off"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The backend options these flags set (the mode and memory limit come from the caller).
    pub fn options(&self, mode: Mode, host_memory_limit: Option<u64>) -> Options {
        Options {
            mode,
            adapter: self.adapter.clone(),
            device: match self.device {
                Some(DeviceChoice::Index(index)) => Some(index),
                Some(DeviceChoice::All) | None => None,
            },
            cuda: CudaTuning {
                programmatic_launch: self.cuda_pdl,
                defines: self.cuda_define.clone(),
                launch: self.cuda_launch,
                dump_cubin: self.cuda_dump_cubin.clone(),
            },
            wgpu: WgpuTuning {
                max_binding_bytes: self.wgpu_max_binding,
                max_workgroups_per_dimension: self.wgpu_max_workgroups,
                max_chunk_blocks: self.wgpu_chunk_blocks,
                slot_order: self.wgpu_slot_order,
                order_buckets: self.wgpu_order_buckets,
                one_buffer: self.wgpu_one_buffer,
                units_per_thread: self.wgpu_units,
                fp8_table: self.wgpu_fp8_table,
                fp8_lut: self.wgpu_fp8_lut,
                fp8_split: self.wgpu_fp8_split,
                fp8_fast: self.wgpu_fp8_fast,
                trace: self.wgpu_trace,
                api: self.wgpu_api,
                cache_alloc: self.wgpu_cache_alloc,
            },
            host_memory_limit,
            kernel_timeout_s: self.kernel_timeout,
        }
    }

    /// The users' kernels of `--kernel` and `--shader`, loaded, their declarations read and
    /// their names checked (unique, and none of a built-in implementation's).
    pub fn user_kernels(&self) -> paged_kv_bench::error::Result<Vec<UserKernel>> {
        let kernels = self
            .kernels
            .iter()
            .map(|spec| UserKernel::load(spec, Language::Cuda))
            .chain(
                self.shaders
                    .iter()
                    .map(|spec| UserKernel::load(spec, Language::Wgsl)),
            )
            .collect::<paged_kv_bench::error::Result<Vec<_>>>()?;
        user_kernel::check_unique(&kernels)?;
        Ok(kernels)
    }
}

fn timeout_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value > 0.0 && value <= 3600.0 => Ok(value),
        _ => Err("expected seconds above 0 and at most 3600".into()),
    }
}

/// Flags of the benchmark (vLLM's, plus the sweep and backend choices).
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Number of attention heads.
    #[arg(long, allow_negative_numbers = true, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub num_heads: u32,

    /// Elements per head.
    #[arg(long, default_value_t = 128, value_parser = PossibleValuesParser::new(
        ["64", "80", "96", "112", "120", "128", "192", "256"]
    ).map(|s| s.parse::<u32>().expect("the choices are numbers")))]
    pub head_size: u32,

    /// Token slots per cache block.
    #[arg(long, default_value_t = 16, value_parser = PossibleValuesParser::new(["16", "32"])
        .map(|s| s.parse::<u32>().expect("the choices are numbers")))]
    pub block_size: u32,

    /// Cache blocks [default: 65536 (vLLM's) on GPUs, 512 (512 MiB of caches) on the CPU,
    /// reduced to the largest power of two that fits].
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub num_blocks: Option<u64>,

    /// Input dtype of keys and values.
    #[arg(long, value_enum, default_value_t = Dtype::BFloat16)]
    pub dtype: Dtype,

    /// Cache dtype: the input's own ("auto"), float8 e4m3 ("fp8", also "fp8_e4m3") or float8
    /// e5m2 ("fp8_e5m2"), of the inputs divided by a scale (see --scale).
    #[arg(long, value_enum, default_value_t = CacheDtype::Auto)]
    pub kv_cache_dtype: CacheDtype,

    /// Timed calls per row for the latency column (after 3 warm-up calls).
    #[arg(long, allow_negative_numbers = true, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,

    /// Which implementation(s) to run (wgpu implements the NHD layout only).
    #[arg(long, value_enum, default_value_t = Selection::Auto)]
    pub implementation: Selection,

    /// How GPU calls are issued: replay of a captured CUDA graph, or plain launches.
    #[arg(long, value_enum, default_value_t = Mode::Cudagraph)]
    pub mode: Mode,

    /// Token counts to sweep, comma-separated [default: 2,4,...,65536, as far as the cache's
    /// slots go].
    #[arg(long, allow_negative_numbers = true, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    pub num_tokens: Vec<u64>,

    /// Cache layouts to sweep, in order, comma-separated (wgpu implements NHD only).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "NHD,HND",
        ignore_case = true
    )]
    pub layouts: Vec<Layout>,

    /// Seed of the random inputs, slot mappings and cache contents.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    pub seed: u64,

    #[command(flatten)]
    pub backend: BackendArgs,

    /// Host memory the benchmark may plan for, at most: bytes, or with a unit (K, M, G, T,
    /// powers of 1024) [default: most of what the OS reports available].
    #[arg(long, env = "PAGED_KV_BENCH_HOST_MEMORY_LIMIT", value_name = "SIZE", value_parser = bytes)]
    pub host_memory_limit: Option<u64>,

    /// Device time with cold caches: flush the device's cache before each timed call
    /// (default: warm, back-to-back calls on the same data, as vLLM's script measures).
    #[arg(long)]
    pub cold: bool,

    /// Device time with rotating inputs: back-to-back calls, each on its own copy of the inputs
    /// and its own slots, with at least 256 MiB of traffic before a copy is reused, so that no
    /// call finds its data in the device's cache (calls of under 4 MiB excepted).
    #[arg(long, conflicts_with = "cold")]
    pub rotate: bool,

    /// What each row is compared with: `copy`, the device's copy bandwidth ("% of copy");
    /// `pattern` adds "% of pattern", the row's own ceiling: a plain kernel timed right after
    /// the row, on the same buffers and with the same protocol, that reads the same input bytes
    /// and writes as many bytes to the same cache addresses, with the arithmetic removed
    /// (each row takes about twice as long).
    #[arg(long, value_enum, default_value_t = Ceiling::Copy)]
    pub ceiling: Ceiling,

    /// Seconds of device-time sampling per row, at least [default: 0.1, or --max-time if
    /// that is shorter].
    #[arg(long, allow_negative_numbers = true, value_name = "SECONDS", value_parser = seconds)]
    pub min_time: Option<f64>,

    /// Seconds of device-time sampling per row, at most (the row's time budget) [default: 5,
    /// 2 on the CPU, or --min-time if that is longer].
    #[arg(long, allow_negative_numbers = true, value_name = "SECONDS", value_parser = seconds)]
    pub max_time: Option<f64>,

    /// Stop sampling a row once the robust noise of its samples (interquartile range / 1.349,
    /// in % of the median) is at most this.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0, value_name = "PERCENT", value_parser = percent)]
    pub max_noise: f64,

    /// Output format on stdout, or in --output's file (stdout then shows the table).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Also write the report, in --format, to this file (when the run ends, also early, with
    /// the rows measured); stdout shows the table meanwhile.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Compare with a report saved with --format json: adds a speed-up column per
    /// implementation ("~" marks a difference within the noise). A baseline measured with
    /// another shape, dtype, cache state, device or option is refused (see --compare-any).
    #[arg(long, value_name = "BASELINE.json")]
    pub compare: Option<PathBuf>,

    /// Compare with a --compare baseline even where its configuration differs (the header
    /// says how).
    #[arg(long, requires = "compare")]
    pub compare_any: bool,

    /// Draw device time and bandwidth against num_tokens into an SVG file (when the run ends,
    /// also early, with the rows measured).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Keys and values as slices of one fused QKV tensor [num_tokens, (Q + 2 * num_heads) *
    /// head_size] with Q query heads in front, as engines pass them ("off": contiguous keys and
    /// values, the default).
    #[arg(long, value_name = "Q|off", allow_negative_numbers = true, value_parser = qkv_fused)]
    pub qkv_fused: Option<QkvFused>,

    /// fp8 scales: one per tensor (max / 64) or one per head (each head's max / 64).
    #[arg(long, value_enum, default_value_t = Scaling::PerTensor)]
    pub scale: Scaling,

    /// Where the tokens go in the cache.
    #[arg(long, value_enum, default_value_t = SlotPattern::Random)]
    pub slots: SlotPattern,

    /// A model's attention shape on one GPU (KV heads, head size, dtype, fused QKV with its
    /// query heads); flags given explicitly override it. --list-models shows them.
    #[arg(long, value_name = "NAME", value_parser = PossibleValuesParser::new(models::names()))]
    pub model: Option<String>,

    /// List the --model presets and exit.
    #[arg(long)]
    pub list_models: bool,
}

/// `--qkv-fused`: fused inputs with this many query heads, or contiguous ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvFused {
    Off,
    QueryHeads(usize),
}

fn qkv_fused(text: &str) -> Result<QkvFused, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(QkvFused::Off);
    }
    match text.parse::<u32>() {
        Ok(heads) if heads >= 1 => Ok(QkvFused::QueryHeads(heads as usize)),
        _ => Err("expected the number of query heads (1 or more) or off".into()),
    }
}

/// Parses the command line, then fills in what a `--model` preset sets and no flag overrides.
pub fn parse() -> Result<Cli, clap::Error> {
    let matches = Cli::command().try_get_matches()?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    cli.bench.apply_model(&matches);
    Ok(cli)
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// vLLM's table, with a header saying what ran where.
    Table,
    Markdown,
    /// One line per row and implementation, every statistic.
    Csv,
    /// Everything needed to reproduce and compare the run (the --compare input).
    Json,
}

fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=3600.0).contains(&value) => Ok(value),
        _ => Err("expected seconds between 0 and 3600".into()),
    }
}

fn percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err("expected a positive percentage".into()),
    }
}

/// `--device`: one device by index, or each in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Index(usize),
    All,
}

fn device_choice(text: &str) -> Result<DeviceChoice, String> {
    if text.eq_ignore_ascii_case("all") {
        return Ok(DeviceChoice::All);
    }
    text.parse()
        .map(DeviceChoice::Index)
        .map_err(|_| "expected a device index (0, 1, ...) or all".into())
}

/// `on` / `off` (also `true` / `false`, `1` / `0`).
fn on_off(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err("expected on or off".into()),
    }
}

/// `THREADSxITEMS`, e.g. `256x2`.
fn launch_shape(text: &str) -> Result<LaunchOverride, String> {
    let (threads, items) = text
        .split_once('x')
        .ok_or_else(|| "expected THREADSxITEMS, e.g. 256x2".to_string())?;
    let threads: u32 = threads.parse().map_err(|_| "threads: expected a number")?;
    let items: u32 = items.parse().map_err(|_| "items: expected a number")?;
    if !(32..=1024).contains(&threads) || !threads.is_multiple_of(32) || !(1..=8).contains(&items) {
        return Err("expected 32 to 1024 threads (a multiple of 32) and 1 to 8 items".into());
    }
    Ok(LaunchOverride {
        threads,
        items_per_thread: items,
        ..LaunchOverride::default()
    })
}

/// A byte count: a number, optionally followed by K, M, G or T (powers of 1024; `KiB`, `MB`
/// and so on are read the same way).
pub fn bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a size such as 4G or 4294967296, got `{text}`"))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches('B') {
        "" => 0,
        "K" | "KI" => 10,
        "M" | "MI" => 20,
        "G" | "GI" => 30,
        "T" | "TI" => 40,
        _ => return Err(format!("unknown size unit in `{text}`: use K, M, G or T")),
    };
    number
        .checked_mul(1 << shift)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{text}` is not a size between 1 byte and 16 EiB"))
}

/// `--min-time` and `--max-time` when not given.
const DEFAULT_MIN_TIME: f64 = 0.1;
const DEFAULT_MAX_TIME: f64 = 5.0;

impl BenchArgs {
    /// Flags that contradict each other (see [`Cli::check`]).
    fn check(&self) -> Result<(), clap::Error> {
        if let (Some(min), Some(max)) = (self.min_time, self.max_time) {
            if min > max {
                return Err(conflict(format!(
                    "--min-time {min} is longer than --max-time {max}: a row's sampling \
                     cannot last at least {min} s and at most {max} s"
                )));
            }
        }
        Ok(())
    }

    /// Seconds of sampling per row, at least and at most: a flag given alone moves the other's
    /// default out of its way rather than contradicting it.
    pub fn sampling_times(&self) -> (f64, f64) {
        match (self.min_time, self.max_time) {
            (Some(min), Some(max)) => (min, max),
            (Some(min), None) => (min, DEFAULT_MAX_TIME.max(min)),
            (None, Some(max)) => (DEFAULT_MIN_TIME.min(max), max),
            (None, None) => (DEFAULT_MIN_TIME, DEFAULT_MAX_TIME),
        }
    }

    /// Sets the shape of the `--model` preset, if any, wherever the flag was not given.
    pub fn apply_model(&mut self, matches: &ArgMatches) {
        let Some(model) = self.model.as_deref().and_then(models::find) else {
            return;
        };
        let defaulted = |id: &str| matches.value_source(id) != Some(ValueSource::CommandLine);
        if defaulted("num_heads") {
            self.num_heads = model.num_kv_heads as u32;
        }
        if defaulted("head_size") {
            self.head_size = model.head_size as u32;
        }
        if defaulted("dtype") {
            self.dtype = model.dtype;
        }
        if defaulted("qkv_fused") {
            self.qkv_fused = Some(QkvFused::QueryHeads(model.num_query_heads));
        }
    }

    /// What the inputs look like besides their sizes.
    pub fn workload(&self) -> WorkloadConfig {
        WorkloadConfig {
            qkv_fused: match self.qkv_fused {
                Some(QkvFused::QueryHeads(heads)) => Some(heads),
                Some(QkvFused::Off) | None => None,
            },
            scale: self.scale,
            slots: self.slots,
            model: self.model.clone(),
        }
    }

    pub fn options(&self) -> Options {
        self.backend.options(self.mode, self.host_memory_limit)
    }

    pub fn sweep_config(&self) -> SweepConfig {
        let default_num_tokens = self.num_tokens.is_empty();
        let num_tokens = if default_num_tokens {
            sweep::default_token_counts()
        } else {
            self.num_tokens.iter().map(|&n| to_usize(n)).collect()
        };
        let (min_time, max_time) = self.sampling_times();
        SweepConfig {
            num_heads: self.num_heads as usize,
            head_size: self.head_size as usize,
            block_size: self.block_size as usize,
            num_blocks: match self.num_blocks {
                Some(n) => NumBlocks::Explicit(to_usize(n)),
                None => NumBlocks::Default,
            },
            dtype: self.dtype,
            cache_dtype: self.kv_cache_dtype,
            layouts: self.layouts.clone(),
            num_tokens,
            default_num_tokens,
            default_max_time: self.max_time.is_none(),
            protocol: Protocol {
                cold: self.cold,
                rotate: self.rotate,
                sampling: Sampling {
                    min_time: Duration::from_secs_f64(min_time),
                    max_time: Duration::from_secs_f64(max_time),
                    max_noise_percent: self.max_noise,
                    ..Sampling::default()
                },
                ..Protocol::new(self.iters as usize)
            },
            seed: self.seed,
            host_memory_limit: self.host_memory_limit,
            workload: self.workload(),
            ceiling: self.ceiling,
        }
    }
}

/// Sizes beyond the address space saturate; validation then refuses them by name.
fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn model_presets_fill_what_no_flag_sets() {
        use super::*;
        let parse = |args: &[&str]| {
            let matches = Cli::command().try_get_matches_from(args).unwrap();
            let mut cli = Cli::from_arg_matches(&matches).unwrap();
            cli.bench.apply_model(&matches);
            cli.bench
        };
        let preset = parse(&["paged-kv-bench", "--model", "gemma-2-9b"]);
        assert_eq!((preset.num_heads, preset.head_size), (8, 256));
        assert_eq!(preset.qkv_fused, Some(QkvFused::QueryHeads(16)));
        assert_eq!(preset.workload().qkv_fused, Some(16));
        assert_eq!(preset.workload().model.as_deref(), Some("gemma-2-9b"));
        let overridden = parse(&[
            "paged-kv-bench",
            "--model",
            "gemma-2-9b",
            "--num-heads",
            "2",
            "--qkv-fused",
            "off",
            "--dtype",
            "half",
        ]);
        assert_eq!((overridden.num_heads, overridden.head_size), (2, 256));
        assert_eq!(overridden.dtype, Dtype::Half);
        assert_eq!(overridden.workload().qkv_fused, None);
        let plain = parse(&["paged-kv-bench"]);
        assert_eq!((plain.num_heads, plain.head_size), (128, 128));
        assert_eq!(plain.workload(), WorkloadConfig::default());
        assert!(super::qkv_fused("0").is_err());
        assert!(super::qkv_fused("-1").is_err());
        assert_eq!(super::qkv_fused("OFF"), Ok(QkvFused::Off));
    }

    #[test]
    fn sizes_with_and_without_units() {
        assert_eq!(super::bytes("4096"), Ok(4096));
        assert_eq!(super::bytes("1G"), Ok(1 << 30));
        assert_eq!(super::bytes("300M"), Ok(300 << 20));
        assert_eq!(super::bytes("2GiB"), Ok(2 << 30));
        assert_eq!(super::bytes("8kb"), Ok(8 << 10));
        assert!(super::bytes("1X").is_err());
        assert!(super::bytes("0").is_err());
        assert!(super::bytes("-1").is_err());
        assert!(super::bytes("99999999999T").is_err());
    }
}
