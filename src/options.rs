//! Every knob that changes what runs or what is measured, in one place.
//!
//! The command line (`src/cli.rs`) is the only code that fills these in; the library reads no
//! environment variables. Each struct serialises into the JSON report, and
//! [`Options::non_default`] names the fields that differ from the defaults for the report's
//! header, so that a figure never depends on a setting the reader cannot see.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Options for opening backends and for what their calls do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Options {
    /// How GPU calls are issued (vLLM's `--mode`; CUDA only).
    pub mode: Mode,
    /// wgpu: use the first adapter whose name contains this (case-insensitive).
    pub adapter: Option<String>,
    /// The device to run on: the CUDA device ordinal, the wgpu adapter's index in the order
    /// wgpu lists the adapters of the chosen API (`None`: device 0 for CUDA, the best adapter
    /// for wgpu).
    pub device: Option<usize>,
    pub cuda: CudaTuning,
    pub wgpu: WgpuTuning,
    /// Bytes of host memory the sweep may plan for, at most (`None`: what the OS reports
    /// available, less a margin).
    pub host_memory_limit: Option<u64>,
    /// Seconds a user's kernel (`--shader`) may take for one wait before the run ends with a
    /// "did not finish" error (`None`: [`crate::user_kernel::DEFAULT_TIMEOUT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_timeout_s: Option<f64>,
}

impl Options {
    /// How long a user's kernel may take for one wait (see [`Options::kernel_timeout_s`]).
    pub fn kernel_timeout(&self) -> std::time::Duration {
        self.kernel_timeout_s
            .map(std::time::Duration::from_secs_f64)
            .unwrap_or(crate::user_kernel::DEFAULT_TIMEOUT)
    }

    /// `name=value` for every field that differs from its default, for report headers.
    pub fn non_default(&self) -> Vec<String> {
        let mut set = Vec::new();
        if let Some(adapter) = &self.adapter {
            set.push(format!("adapter={adapter}"));
        }
        if let Some(device) = self.device {
            set.push(format!("device={device}"));
        }
        set.extend(self.cuda.non_default());
        set.extend(self.wgpu.non_default());
        if let Some(limit) = self.host_memory_limit {
            set.push(format!("host_memory_limit={limit}"));
        }
        if let Some(timeout) = self.kernel_timeout_s {
            set.push(format!("kernel_timeout_s={timeout}"));
        }
        set
    }
}

/// How a GPU call is issued. The names are those of vLLM's `--mode`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize,
)]
pub enum Mode {
    /// Capture the call in a CUDA graph once, then replay the graph.
    #[default]
    #[value(name = "cudagraph")]
    #[serde(rename = "cudagraph")]
    Cudagraph,
    /// Launch the kernel directly each time.
    #[value(name = "no_graph")]
    #[serde(rename = "no_graph")]
    NoGraph,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Cudagraph => "cudagraph",
            Mode::NoGraph => "no_graph",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What each row is compared with besides the device's copy bandwidth (`--ceiling`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Ceiling {
    /// "% of copy" only: the row's bandwidth over the device's copy bandwidth.
    #[default]
    Copy,
    /// Also "% of pattern": each row's own ceiling, a plain kernel timed right after the row
    /// on the same buffers with the same protocol, reading the row's input bytes and writing
    /// as many bytes to the same cache addresses, with the arithmetic removed. Doubles the
    /// time a row takes.
    Pattern,
}

impl Ceiling {
    pub fn name(self) -> &'static str {
        match self {
            Ceiling::Copy => "copy",
            Ceiling::Pattern => "pattern",
        }
    }
}

impl std::fmt::Display for Ceiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Choices the CUDA backend makes itself unless told otherwise (tuning and experiments).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CudaTuning {
    /// Programmatic dependent launch (compute capability 9.0 and later): `None` uses it where
    /// the device has it.
    pub programmatic_launch: Option<bool>,
    /// Extra `-D` macros for the kernel source (`NAME` or `NAME=VALUE`).
    pub defines: Vec<String>,
    /// Threads per block and 16-byte items per thread for every call, instead of the built-in
    /// choice.
    pub launch: Option<LaunchOverride>,
    /// Write the compiled machine code (cubin) here, for reading it with `cuobjdump -sass`.
    pub dump_cubin: Option<PathBuf>,
}

/// A forced CUDA launch shape (tuning; every field 0 / false keeps the built-in choice).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchOverride {
    /// 0 keeps the built-in choice (of threads, items per thread and grid cap).
    pub threads: u32,
    pub items_per_thread: u32,
    /// The one-element-per-item kernels, whatever the row's alignment.
    pub scalar: bool,
    /// Caps the grid at this many blocks per SM, each block then looping over several passes
    /// (slower on an H100, but it exercises the kernels' grid loop); 0: one block per pass.
    pub blocks_per_sm: u32,
    /// The kernels of one item per thread that serve large calls, on calls of every size,
    /// never the small-call instances (`_x1_small`): tests run them where the built-in choice
    /// would not.
    pub large_kernels: bool,
}

impl CudaTuning {
    fn non_default(&self) -> Vec<String> {
        let mut set = Vec::new();
        if let Some(on) = self.programmatic_launch {
            set.push(format!("cuda_pdl={on}"));
        }
        if !self.defines.is_empty() {
            set.push(format!("cuda_defines={}", self.defines.join(",")));
        }
        if let Some(launch) = self.launch {
            set.push(format!(
                "cuda_launch={}x{}{}{}{}",
                launch.threads,
                launch.items_per_thread,
                if launch.scalar { ",scalar" } else { "" },
                if launch.blocks_per_sm > 0 {
                    format!(",{}/sm", launch.blocks_per_sm)
                } else {
                    String::new()
                },
                if launch.large_kernels {
                    ",large-kernels"
                } else {
                    ""
                }
            ));
        }
        if let Some(path) = &self.dump_cubin {
            set.push(format!("dump_cubin={}", path.display()));
        }
        set
    }
}

/// Limits below the adapter's own and choices the wgpu backend would otherwise make itself,
/// for tests and experiments: small bindings split small caches and inputs over many buffers
/// (as 32 GiB caches are on a GPU), and few workgroups per grid dimension make every dispatch
/// two-dimensional (as those of more than 65535 workgroups are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WgpuTuning {
    /// Bytes per storage binding (rounded down to 16).
    pub max_binding_bytes: Option<u64>,
    /// Workgroups per dispatch dimension.
    pub max_workgroups_per_dimension: Option<u32>,
    /// Cache blocks per chunk, at most.
    pub max_chunk_blocks: Option<u64>,
    /// Take the tokens in slot order (a bucketing pass on the device in every call) or as they
    /// come; `None`: by the problem's size.
    pub slot_order: Option<bool>,
    /// Buckets of the slot-order pass (slot ranges); `None`: the backend's choice.
    pub order_buckets: Option<u32>,
    /// One buffer per cache, its chunks bound as windows of it, or one buffer per chunk;
    /// `None`: the backend's choice.
    pub one_buffer: Option<bool>,
    /// 16-byte units per thread in the 16-byte kernels (1 to 8); `None`: the backend's choice.
    pub units_per_thread: Option<u32>,
    /// fp8 through threshold tables where the scales allow (the default for large calls),
    /// else the plain encoder alone.
    pub fp8_table: Option<bool>,
    /// fp8 from half and bfloat16 inputs through a lookup table of every 16-bit pattern's
    /// code, built on the device in each call; on by default.
    pub fp8_lut: Option<bool>,
    /// fp8: four threads per 16-byte cache unit, each encoding one word (with one unit per
    /// thread); `None`: for small calls, which then take neither table.
    #[serde(default)]
    pub fp8_split: Option<bool>,
    /// fp8 without tables: the short exact encoder where the scales allow (on by default), or
    /// the long one alone (absent from older reports: the default).
    #[serde(default)]
    pub fp8_fast: Option<bool>,
    /// Print each call's plan to stderr.
    pub trace: bool,
    /// Which graphics APIs to look for adapters on.
    pub api: WgpuApi,
    /// How the cache buffers get their device memory (absent from older reports: `auto`).
    #[serde(default)]
    pub cache_alloc: CacheAlloc,
}

/// How the wgpu backend allocates the cache buffers. wgpu's own allocator (gpu-allocator) gives
/// large buffers memory without Vulkan's dedicated-allocation hint, and NVIDIA's driver then
/// translates them in small pages: 2 x 32 GiB caches run at a third of copy bandwidth on an
/// H100, against 96% with dedicated allocations (docs/perf-log-wgpu.md, "Third session").
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CacheAlloc {
    /// Dedicated allocations where the adapter is Vulkan and its device can make them, else
    /// wgpu's own.
    #[default]
    Auto,
    /// wgpu's own allocation (`Device::create_buffer`).
    Wgpu,
    /// Each cache buffer made through Vulkan with its own dedicated allocation
    /// (`VkMemoryDedicatedAllocateInfo`) and handed to wgpu; Vulkan adapters only.
    Dedicated,
}

impl CacheAlloc {
    pub fn name(self) -> &'static str {
        match self {
            CacheAlloc::Auto => "auto",
            CacheAlloc::Wgpu => "wgpu",
            CacheAlloc::Dedicated => "dedicated",
        }
    }
}

/// The graphics APIs wgpu may open adapters on.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WgpuApi {
    /// The platform's native APIs: Vulkan, Metal, DX12 (OpenGL lacks what the fast paths need:
    /// many storage bindings, large buffers).
    #[default]
    Native,
    Vulkan,
    Metal,
    Dx12,
    /// OpenGL / OpenGL ES (EGL; Mesa's llvmpipe without a GPU): 16 storage buffers per stage,
    /// so calls take the one-chunk kernels.
    Gl,
}

impl WgpuApi {
    pub fn name(self) -> &'static str {
        match self {
            WgpuApi::Native => "native",
            WgpuApi::Vulkan => "vulkan",
            WgpuApi::Metal => "metal",
            WgpuApi::Dx12 => "dx12",
            WgpuApi::Gl => "gl",
        }
    }
}

impl WgpuTuning {
    /// `name=value` for each field that is set.
    pub fn non_default(&self) -> Vec<String> {
        let mut set = Vec::new();
        let mut add = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                set.push(format!("wgpu_{name}={value}"));
            }
        };
        add("max_binding", self.max_binding_bytes.map(|v| v.to_string()));
        add(
            "max_workgroups",
            self.max_workgroups_per_dimension.map(|v| v.to_string()),
        );
        add("chunk_blocks", self.max_chunk_blocks.map(|v| v.to_string()));
        add("slot_order", self.slot_order.map(|v| v.to_string()));
        add("order_buckets", self.order_buckets.map(|v| v.to_string()));
        add("one_buffer", self.one_buffer.map(|v| v.to_string()));
        add("units", self.units_per_thread.map(|v| v.to_string()));
        add("fp8_table", self.fp8_table.map(|v| v.to_string()));
        add("fp8_lut", self.fp8_lut.map(|v| v.to_string()));
        add("fp8_split", self.fp8_split.map(|v| v.to_string()));
        add("fp8_fast", self.fp8_fast.map(|v| v.to_string()));
        add("trace", self.trace.then(|| "true".to_string()));
        add(
            "api",
            (self.api != WgpuApi::Native).then(|| self.api.name().to_string()),
        );
        add(
            "cache_alloc",
            (self.cache_alloc != CacheAlloc::Auto).then(|| self.cache_alloc.name().to_string()),
        );
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_name_nothing_and_set_fields_are_named() {
        assert!(Options::default().non_default().is_empty());
        let options = Options {
            cuda: CudaTuning {
                programmatic_launch: Some(false),
                ..CudaTuning::default()
            },
            wgpu: WgpuTuning {
                fp8_lut: Some(false),
                cache_alloc: CacheAlloc::Dedicated,
                ..WgpuTuning::default()
            },
            host_memory_limit: Some(1 << 30),
            ..Options::default()
        };
        assert_eq!(
            options.non_default(),
            [
                "cuda_pdl=false",
                "wgpu_fp8_lut=false",
                "wgpu_cache_alloc=dedicated",
                "host_memory_limit=1073741824"
            ]
        );
    }
}
