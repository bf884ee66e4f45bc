//! Users' own CUDA kernels (`--kernel [NAME=]FILE.cu`), each an implementation beside the
//! built-in one.
//!
//! The contract is `kernels/paged_kv.h` ([`HEADER`]): one `PagedKvParams` by value, the
//! launch the file declares (`// paged-kv: grid=... block=...`, see [`crate::user_kernel`]),
//! and helpers. The tool compiles the file with NVRTC for the device, with the header put in
//! front of it (and includable by name, with no file on disk) and the entry point declared with
//! the contract's signature, so that a kernel with another parameter list fails to compile at
//! the user's own line. `#line` keeps NVRTC's line numbers those of the user's file.
//!
//! A [`UserBackend`] is a built-in [`CudaBackend`] (its own, on the same device) with another
//! kernel: caches, inputs, fills, graphs of 20 calls, plain launches, events, rotation and
//! read-back are the built-in backend's code ([`super::call`]). What differs: the kernel takes
//! [`PagedKvParams`], it is never launched with programmatic dependent launch (it does not
//! wait for the previous grid as the built-in kernels do), and a call that has not finished
//! after `--kernel-timeout` ([`Options::kernel_timeout`], 10 s by default) is an error rather
//! than a wait without end.
//!
//! A kernel that faults (an illegal address) poisons the CUDA context, which every CUDA
//! backend of the process shares (the device's primary context): on an H100 the built-in
//! backend's next call failed with `CUDA_ERROR_ILLEGAL_ADDRESS`, and so did opening a new
//! backend after every backend had been dropped. Only a new process recovers: an integration
//! that must survive a faulting kernel verifies it in a child process, as `tests/cuda_user.rs`
//! does. A kernel that hangs cannot be stopped either; the timeout reports it, and the process
//! should then end.

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{CudaFunction, CudaModule};

use super::call::{Abi, Args, CudaCall, Kernel};
use super::compile::{self, Failure, Source};
use super::{describe, CudaBackend};
use crate::backend::{Backend, DeviceInfo, Footprint, Kind, Prepared};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::problem::{CacheDtype, Dtype, Layout, Problem};
use crate::user_kernel::{Grid, Launch, UserKernel};
use crate::workload::{CacheFill, Inputs, Scaling};

/// The contract's header, embedded in the binary and given to NVRTC by [`HEADER_NAME`].
pub const HEADER: &str = include_str!("../../../kernels/paged_kv.h");
/// The name under which a kernel includes the header (`"paged_kv.h"` or `<paged_kv.h>`).
pub const HEADER_NAME: &str = "paged_kv.h";
/// Lines of NVRTC's log a compile error shows, at most.
const LOG_LINES: usize = 20;
/// The driver's grid limits: blocks along x, then along y.
const MAX_GRID_X: u64 = (1 << 31) - 1;
const MAX_GRID_Y: u64 = 65535;

/// The kernel's only parameter. Mirrors `struct PagedKvParams` in `kernels/paged_kv.h` field
/// by field (8-byte fields first: no padding on either side); [`PARAMS_FIELDS`] and the
/// header's `static_assert` on its size keep the two in step.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PagedKvParams {
    pub key: u64,
    pub value: u64,
    pub key_cache: u64,
    pub value_cache: u64,
    pub slot_mapping: u64,
    pub k_scale: u64,
    pub v_scale: u64,
    pub num_tokens: i64,
    pub num_heads: i64,
    pub head_size: i64,
    pub block_size: i64,
    pub num_blocks: i64,
    pub num_slots: i64,
    pub input_token_stride: i64,
    pub input_head_stride: i64,
    pub cache_block_stride: i64,
    pub cache_slot_stride: i64,
    pub cache_head_stride: i64,
    pub threads: u64,
    pub layout: i32,
    pub dtype: i32,
    pub cache_dtype: i32,
    pub scale_per_head: i32,
    pub grid: i32,
    pub elements_per_thread: i32,
}

// SAFETY: plain old data with the C layout the header declares (checked by its size here, the
// field list against the header text in the unit tests, and offsets on a GPU in
// tests/cuda_user.rs).
unsafe impl cudarc::driver::DeviceRepr for PagedKvParams {}

/// The size the header's `static_assert` names.
pub const PARAMS_SIZE: usize = 176;
const _: () = assert!(std::mem::size_of::<PagedKvParams>() == PARAMS_SIZE);
const _: () = assert!(std::mem::align_of::<PagedKvParams>() == 8);

/// The fields of [`PagedKvParams`] in order, as the header names them.
pub const PARAMS_FIELDS: [&str; 25] = [
    "key",
    "value",
    "key_cache",
    "value_cache",
    "slot_mapping",
    "k_scale",
    "v_scale",
    "num_tokens",
    "num_heads",
    "head_size",
    "block_size",
    "num_blocks",
    "num_slots",
    "input_token_stride",
    "input_head_stride",
    "cache_block_stride",
    "cache_slot_stride",
    "cache_head_stride",
    "threads",
    "layout",
    "dtype",
    "cache_dtype",
    "scale_per_head",
    "grid",
    "elements_per_thread",
];

/// The header's codes (`PKV_NHD`, `PKV_HALF`, `PKV_CACHE_AUTO`, `PKV_GRID_ELEMENTS`, ...).
pub fn layout_code(layout: Layout) -> i32 {
    match layout {
        Layout::Nhd => 0,
        Layout::Hnd => 1,
    }
}

pub fn dtype_code(dtype: Dtype) -> i32 {
    match dtype {
        Dtype::Half => 0,
        Dtype::BFloat16 => 1,
        Dtype::Float => 2,
    }
}

pub fn cache_dtype_code(cache_dtype: CacheDtype) -> i32 {
    match cache_dtype {
        CacheDtype::Auto => 0,
        CacheDtype::Fp8 => 1,
        CacheDtype::Fp8E5m2 => 2,
    }
}

pub fn grid_code(grid: Grid) -> i32 {
    match grid {
        Grid::Elements(_) => 0,
        Grid::Heads => 1,
        Grid::Tokens => 2,
    }
}

impl PagedKvParams {
    /// Everything about a call of `problem` but the buffers (see [`PagedKvParams::with_buffers`]).
    pub fn new(problem: &Problem, grid: Grid, launch: Launch, per_head_scales: bool) -> Self {
        let inputs = problem.inputs();
        let cache = problem.strides();
        Self {
            num_tokens: problem.num_tokens as i64,
            num_heads: problem.num_heads as i64,
            head_size: problem.head_size as i64,
            block_size: problem.block_size as i64,
            num_blocks: problem.num_blocks as i64,
            num_slots: problem.num_slots() as i64,
            input_token_stride: inputs.token as i64,
            input_head_stride: inputs.head as i64,
            cache_block_stride: cache.block as i64,
            cache_slot_stride: cache.slot as i64,
            cache_head_stride: cache.head as i64,
            threads: launch.threads,
            layout: layout_code(problem.layout),
            dtype: dtype_code(problem.dtype),
            cache_dtype: cache_dtype_code(problem.cache_dtype),
            scale_per_head: i32::from(per_head_scales),
            grid: grid_code(grid),
            elements_per_thread: match grid {
                Grid::Elements(n) => n as i32,
                Grid::Heads | Grid::Tokens => 0,
            },
            ..Self::default()
        }
    }

    /// These parameters on the buffers of `args`.
    pub(super) fn with_buffers(self, args: &Args) -> Self {
        Self {
            key: args.key,
            value: args.value,
            key_cache: args.key_cache,
            value_cache: args.value_cache,
            slot_mapping: args.slots,
            k_scale: args.k_scale,
            v_scale: args.v_scale,
            ..self
        }
    }
}

/// The grid of `blocks` blocks: along x while the driver allows (2^31 - 1), else split over
/// x and y (kernels number blocks `blockIdx.y * gridDim.x + blockIdx.x`; the extra blocks of the
/// last row have thread indices past `threads`).
pub fn grid_dims(blocks: u64) -> Result<(u32, u32, u32)> {
    if blocks <= MAX_GRID_X {
        return Ok((blocks.max(1) as u32, 1, 1));
    }
    let y = blocks.div_ceil(MAX_GRID_X);
    if y > MAX_GRID_Y {
        return Err(Error::InvalidConfig(format!(
            "{blocks} blocks are more than a CUDA grid holds ({MAX_GRID_X} x {MAX_GRID_Y})"
        )));
    }
    Ok((blocks.div_ceil(y) as u32, y as u32, 1))
}

/// The text NVRTC compiles: the contract's header, then the user's file from its line 1 under
/// its own name (so that every message names the user's file and line).
pub fn program_text(kernel: &UserKernel) -> String {
    let name = kernel
        .file_name()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!(
        "#include \"{HEADER_NAME}\"\n#line 1 \"{name}\"\n{}",
        kernel.source
    )
}

/// Opens `kernel` (a CUDA one) on the device `options` chooses.
pub fn open(kernel: &UserKernel, options: &Options) -> Result<Box<dyn Backend>> {
    Ok(Box::new(UserBackend::open(kernel, options)?))
}

/// A user's kernel on a CUDA device.
pub struct UserBackend {
    base: CudaBackend,
    kernel: UserKernel,
    _module: Arc<CudaModule>,
    function: CudaFunction,
    /// `--kernel-timeout`: a call not finished after this long is an error.
    timeout: Duration,
}

impl UserBackend {
    /// Opens the device (as the built-in backend does), compiles the kernel and finds its entry
    /// point. A compile error is [`Error::Compile`] with NVRTC's messages; a missing entry
    /// point one line naming the file and the symbol.
    pub fn open(kernel: &UserKernel, options: &Options) -> Result<Self> {
        let base = CudaBackend::open(options)?;
        let file = kernel.file_name();
        let (major, minor) = base.ctx.compute_capability().map_err(|e| Error::Cuda {
            what: "reading the device".into(),
            source: Box::new(super::DriverFailure(e)),
        })?;
        let entry = &kernel.directives.entry;
        let text = program_text(kernel);
        let source = Source {
            text: &text,
            name: &file,
            headers: &[(HEADER_NAME, HEADER)],
        };
        let defines = [format!("PAGED_KV_ENTRY={entry}")];
        let image =
            compile::compile_source(major, minor, &defines, &source).map_err(|failure| {
                match failure {
                    Failure::Log { log, .. } => Error::Compile {
                        file: file.clone(),
                        log: compile::error_block(&log, LOG_LINES),
                    },
                    Failure::Other(error) => error,
                }
            })?;
        let module = base
            .ctx
            .load_module(image.into_ptx())
            .map_err(|e| Error::Cuda {
                what: format!("loading the compiled {file}"),
                source: Box::new(super::DriverFailure(e)),
            })?;
        let function = module.load_function(entry).map_err(|e| {
            Error::InvalidConfig(format!(
                "{file} defines no kernel `{entry}` ({}): write `extern \"C\" __global__ void \
                 {entry}(const PagedKvParams p)`, or name yours with `// paged-kv: entry=NAME`",
                describe(e)
            ))
        })?;
        Ok(Self {
            base,
            kernel: kernel.clone(),
            _module: module,
            function,
            timeout: options.kernel_timeout(),
        })
    }

    /// How errors name the kernel: `kernel `copy` of examples/kernels/copy.cu`.
    fn label(&self) -> String {
        format!(
            "kernel `{}` of {}",
            self.kernel.directives.entry,
            self.kernel.file_name()
        )
    }
}

impl Backend for UserBackend {
    fn kind(&self) -> Kind {
        Kind::Cuda
    }

    fn name(&self) -> String {
        self.kernel.name.clone()
    }

    fn user_kernel(&self) -> Option<&UserKernel> {
        Some(&self.kernel)
    }

    fn device(&self) -> DeviceInfo {
        self.base.device()
    }

    fn supports(&self, layout: Layout) -> bool {
        self.kernel.directives.supports.layout(layout)
    }

    fn check_support(&self, problem: &Problem, scaling: Scaling) -> Result<()> {
        match self.kernel.directives.supports.lacks(problem, scaling) {
            None => Ok(()),
            Some(lack) => Err(Error::Unsupported {
                backend: self.kernel.name.clone(),
                what: format!(
                    "{lack}: {} ({}) does not declare it in its `// paged-kv:` lines",
                    self.kernel.name,
                    self.kernel.file_name()
                ),
            }),
        }
    }

    fn footprint(&self, cache_bytes: u64, input_bytes: u64, num_tokens: usize) -> Footprint {
        self.base.footprint(cache_bytes, input_bytes, num_tokens)
    }

    fn default_num_blocks(&self, block_bytes: u64) -> usize {
        self.base.default_num_blocks(block_bytes)
    }

    fn default_max_time(&self) -> Duration {
        self.base.default_max_time()
    }

    fn device_memory(&self) -> Option<u64> {
        self.base.device_memory()
    }

    fn mode_note(&self) -> String {
        let d = &self.kernel.directives;
        format!(
            "{}. {} ({}): grid={} block={}, launched without programmatic dependent launch; a \
             call not finished after {} s is an error",
            self.base.mode_note(),
            self.kernel.name,
            self.kernel.file_name(),
            d.grid,
            d.block,
            self.timeout.as_secs_f64()
        )
    }

    fn mode_summary(&self) -> String {
        self.base.mode_summary()
    }

    fn copy_bandwidth_gbps(&mut self) -> Result<Option<f64>> {
        self.base.copy_bandwidth_gbps()
    }

    fn reserve(&mut self, largest: &Problem) -> Result<()> {
        self.base.reserve(largest)
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
        let directives = &self.kernel.directives;
        let launch = directives.grid.launch(problem, directives.block);
        let grid = grid_dims(launch.blocks)?;
        let params = PagedKvParams::new(problem, directives.grid, launch, inputs.per_head_scales());
        let args = self.base.stage(problem, &inputs, fill)?;
        let this: &'a UserBackend = self;
        let kernel = Kernel {
            function: &this.function,
            grid,
            block: launch.block,
            abi: Abi::User(params),
            programmatic: false,
            label: this.label(),
            timeout: Some(this.timeout),
        };
        Ok(Box::new(CudaCall::new(
            &this.base, *problem, kernel, args, None,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user_kernel::Language;

    /// The header's struct fields, in order (the last identifier of each member line).
    fn header_fields() -> Vec<String> {
        let start = HEADER.find("struct PagedKvParams {").expect("the struct");
        let body = &HEADER[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find("};").unwrap()];
        body.lines()
            .map(|line| line.split("//").next().unwrap().trim())
            .filter(|line| !line.is_empty())
            .map(|line| {
                line.trim_end_matches(';')
                    .rsplit([' ', '*'])
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn the_params_struct_mirrors_the_header() {
        assert_eq!(header_fields(), PARAMS_FIELDS);
        assert!(
            HEADER.contains(&format!("sizeof(PagedKvParams) == {PARAMS_SIZE}")),
            "the header's static_assert names another size"
        );
        // Pointers and 64-bit integers first, then 32-bit ones: no padding anywhere.
        assert_eq!(std::mem::offset_of!(PagedKvParams, num_tokens), 56);
        assert_eq!(std::mem::offset_of!(PagedKvParams, threads), 144);
        assert_eq!(std::mem::offset_of!(PagedKvParams, layout), 152);
        assert_eq!(
            std::mem::offset_of!(PagedKvParams, elements_per_thread),
            172
        );
        let pointers = HEADER.matches("void* ").count() + HEADER.matches("pkv_i64* ").count();
        assert!(pointers >= 5);
    }

    #[test]
    fn the_codes_are_the_headers() {
        let codes = [
            ("PKV_NHD", layout_code(Layout::Nhd)),
            ("PKV_HND", layout_code(Layout::Hnd)),
            ("PKV_HALF", dtype_code(Dtype::Half)),
            ("PKV_BFLOAT16", dtype_code(Dtype::BFloat16)),
            ("PKV_FLOAT", dtype_code(Dtype::Float)),
            ("PKV_CACHE_AUTO", cache_dtype_code(CacheDtype::Auto)),
            ("PKV_CACHE_FP8_E4M3", cache_dtype_code(CacheDtype::Fp8)),
            ("PKV_CACHE_FP8_E5M2", cache_dtype_code(CacheDtype::Fp8E5m2)),
            ("PKV_GRID_ELEMENTS", grid_code(Grid::Elements(4))),
            ("PKV_GRID_HEADS", grid_code(Grid::Heads)),
            ("PKV_GRID_TOKENS", grid_code(Grid::Tokens)),
        ];
        for (name, code) in codes {
            assert!(
                HEADER.contains(&format!("{name} = {code},")),
                "{name} = {code} not in the header"
            );
        }
    }

    #[test]
    fn params_describe_the_call() {
        let problem = Problem {
            num_tokens: 3,
            num_heads: 5,
            head_size: 64,
            block_size: 16,
            num_blocks: 7,
            dtype: Dtype::Half,
            cache_dtype: CacheDtype::Fp8E5m2,
            layout: Layout::Hnd,
            input_strides: Some(crate::problem::InputStrides::qkv_fused(4, 5, 64)),
        };
        let grid = Grid::Elements(8);
        let launch = grid.launch(&problem, 128);
        let params = PagedKvParams::new(&problem, grid, launch, true);
        assert_eq!(params.threads, 3 * 5 * 8);
        assert_eq!(params.num_slots, 7 * 16);
        assert_eq!(params.input_token_stride, 14 * 64);
        assert_eq!(params.input_head_stride, 64);
        // HND: [blocks, heads, slots, head_size].
        assert_eq!(params.cache_block_stride, 5 * 16 * 64);
        assert_eq!(params.cache_slot_stride, 64);
        assert_eq!(params.cache_head_stride, 16 * 64);
        assert_eq!((params.layout, params.dtype, params.cache_dtype), (1, 0, 2));
        assert_eq!(
            (
                params.scale_per_head,
                params.grid,
                params.elements_per_thread
            ),
            (1, 0, 8)
        );
        let args = Args {
            key: 1,
            value: 2,
            key_cache: 3,
            value_cache: 4,
            slots: 5,
            k_scale: 6,
            v_scale: 7,
        };
        let placed = params.with_buffers(&args);
        assert_eq!(
            [
                placed.key,
                placed.value,
                placed.key_cache,
                placed.value_cache,
                placed.slot_mapping,
                placed.k_scale,
                placed.v_scale
            ],
            [1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(placed.threads, params.threads);
    }

    #[test]
    fn large_grids_continue_along_y() {
        assert_eq!(grid_dims(1).unwrap(), (1, 1, 1));
        assert_eq!(grid_dims(MAX_GRID_X).unwrap(), (MAX_GRID_X as u32, 1, 1));
        for blocks in [MAX_GRID_X + 1, 3 * MAX_GRID_X + 17, MAX_GRID_X * MAX_GRID_Y] {
            let (x, y, z) = grid_dims(blocks).unwrap();
            assert_eq!(z, 1);
            assert!(x as u64 <= MAX_GRID_X && y as u64 <= MAX_GRID_Y);
            // Enough blocks, and less than one row of x too many.
            assert!(x as u64 * y as u64 >= blocks, "{blocks}");
            assert!(x as u64 * (y as u64 - 1) < blocks, "{blocks}");
        }
        assert!(grid_dims(MAX_GRID_X * MAX_GRID_Y + 1).is_err());
    }

    #[test]
    fn the_program_starts_the_users_file_at_its_line_one() {
        let kernel = UserKernel {
            name: "k".into(),
            path: "dir/my \"odd\" kernel.cu".into(),
            language: Language::Cuda,
            source: "line one\nline two\n".into(),
            directives: Default::default(),
        };
        let text = program_text(&kernel);
        assert_eq!(
            text,
            "#include \"paged_kv.h\"\n#line 1 \"dir/my \\\"odd\\\" kernel.cu\"\nline one\nline two\n"
        );
    }
}
