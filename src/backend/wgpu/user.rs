//! A user's WGSL shader (`--shader FILE.wgsl`) as an implementation beside the built-in ones.
//!
//! The tool appends `shaders/paged_kv.wgsl` (the contract: the `Params` uniform, the bindings
//! and a few `pkv_` helpers) to the user's file, so that naga's line numbers stay the user's,
//! then compiles it with naga first: a syntax or validation error is one short block of
//! `FILE:LINE:COL: message` lines with the source line ([`Error::Compile`]). The launch is the
//! file's declared grid ([`crate::user_kernel::Grid::launch`]) over workgroups of the entry
//! point's `@workgroup_size`. Each buffer is one binding, so a cache must fit the adapter's
//! largest storage binding: [`Backend::default_num_blocks`] keeps to it and a larger explicit
//! `--num-blocks` is refused. Every wait is bounded by [`Options::kernel_timeout`] (a shader
//! that hangs is an error, not a hung run).
//!
//! The device, the timestamp queries, the cold-timing flush and the copy-bandwidth probe are
//! those of the built-in backend ([`WgpuBackend`], opened on the same adapter).

use std::path::Path;

use super::abi::{GpuFillParams, FILL_OUT_BINDING, FILL_PARAMS_BINDING};
use super::device::Window;
use super::WgpuBackend;
use crate::backend::{Backend, DeviceInfo, Footprint, Kind, Prepared};
use crate::error::{Bytes, Error, Result};
use crate::options::Options;
use crate::problem::{CacheDtype, Dtype, Layout, Problem};
use crate::user_kernel::{Grid, Launch, UserKernel};
use crate::workload::{CacheFill, Caches, Inputs, Scale, Scaling};

/// The contract appended to every user's shader.
const PRELUDE: &str = concat!(
    include_str!("../../../shaders/paged_kv.wgsl"),
    "\n",
    include_str!("../../../shaders/half.wgsl"),
);

/// Binding numbers of the contract (`shaders/paged_kv.wgsl`).
const PARAMS: u32 = 0;
const KEY: u32 = 1;
const VALUE: u32 = 2;
const KEY_CACHE: u32 = 3;
const VALUE_CACHE: u32 = 4;
const SLOT_MAPPING: u32 = 5;
const K_SCALE: u32 = 6;
const V_SCALE: u32 = 7;

/// `Params` in the contract, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct UserParams {
    num_tokens: u32,
    num_heads: u32,
    head_size: u32,
    block_size: u32,
    num_blocks: u32,
    input_token_stride: u32,
    input_head_stride: u32,
    cache_block_stride: u32,
    cache_slot_stride: u32,
    cache_head_stride: u32,
    cache_layout: u32,
    dtype: u32,
    cache_dtype: u32,
    per_head_scales: u32,
    threads: u32,
    threads_x: u32,
    workgroups_x: u32,
    workgroups: u32,
    element_bytes: u32,
    cache_element_bytes: u32,
}

/// A user's shader, compiled on a wgpu device.
pub struct UserShader {
    inner: WgpuBackend,
    kernel: UserKernel,
    pipeline: wgpu::ComputePipeline,
    /// The contract's bindings the entry point uses (automatic layouts hold only those).
    used: Vec<u32>,
    /// The entry point's `@workgroup_size` (x).
    workgroup_size: u32,
    /// The two caches and their size in bytes, kept between calls of the same size.
    caches: Option<(wgpu::Buffer, wgpu::Buffer, u64)>,
}

impl UserShader {
    /// Opens the adapter `options` choose (as `--implementation wgpu` does; software ones
    /// included) and compiles `kernel` on it.
    pub fn open(kernel: &UserKernel, options: &Options) -> Result<Self> {
        let (module, entry, workgroup_size, used) = front_end(kernel)?;
        let mut inner = WgpuBackend::open_device(
            options.adapter.as_deref(),
            options.device,
            false,
            options.wgpu,
        )?;
        inner.gpu.timeout = Some(options.kernel_timeout());
        let source = format!("{}\n{PRELUDE}", kernel.source);
        let gpu = &inner.gpu;
        let file = kernel.file_name();
        let pipeline = gpu.scoped(&format!("compiling `{entry}` of {file}"), || {
            let module = gpu
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&file),
                    source: wgpu::ShaderSource::Wgsl(source.as_str().into()),
                });
            gpu.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&entry),
                    layout: None,
                    module: &module,
                    entry_point: Some(&entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
        })?;
        drop(module);
        Ok(Self {
            inner,
            kernel: kernel.clone(),
            pipeline,
            used,
            workgroup_size,
            caches: None,
        })
    }

    fn unsupported(&self, what: impl Into<String>) -> Error {
        Error::Unsupported {
            backend: self.kernel.name.clone(),
            what: what.into(),
        }
    }

    /// The launch of `problem`: the declared grid over workgroups of the shader's size.
    fn launch(&self, problem: &Problem) -> Launch {
        self.kernel
            .directives
            .grid
            .launch(problem, self.workgroup_size)
    }

    /// Allocates (or keeps) the caches and fills them.
    fn prepare_caches(&mut self, problem: &Problem, fill: CacheFill<'_>) -> Result<()> {
        let bytes = problem.cache_bytes();
        let size = bytes.next_multiple_of(4).max(16);
        if self.caches.as_ref().map(|c| c.2) != Some(bytes) {
            if let Some((key, value, _)) = self.caches.take() {
                key.destroy();
                value.destroy();
            }
            let gpu = &self.inner.gpu;
            let usage = wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC;
            let caches = gpu.scoped("allocating the caches", || {
                (
                    gpu.buffer("key cache", size, usage),
                    gpu.buffer("value cache", size, usage),
                )
            })?;
            self.caches = Some((caches.0, caches.1, bytes));
        }
        let (key, value, _) = self.caches.as_ref().expect("allocated above");
        match fill {
            CacheFill::Copy(caches) => {
                self.inner.gpu.upload(key, &caches.key)?;
                self.inner.gpu.upload(value, &caches.value)?;
            }
            CacheFill::Random { seed } => {
                // The built-in backend's fill kernel, one stream per cache.
                let gpu = &mut self.inner.gpu;
                let pipeline = gpu.pipeline("fill", &[])?;
                let words = size / 4;
                let grid = gpu.grid(words)?;
                for (chunk, buffer) in [key, value].into_iter().enumerate() {
                    let params = GpuFillParams {
                        seed_lo: seed as u32,
                        seed_hi: (seed >> 32) as u32,
                        chunk: chunk as u32,
                        words: words as u32,
                    };
                    let uniform = gpu.uniform("fill params", &params);
                    let group = gpu.bind_group(
                        &pipeline,
                        &[(FILL_PARAMS_BINDING, &uniform), (FILL_OUT_BINDING, buffer)],
                    );
                    gpu.run_pass(|pass| {
                        pass.set_pipeline(&pipeline);
                        pass.set_bind_group(0, &group, &[]);
                        pass.dispatch_workgroups(grid.0, grid.1, 1);
                    })?;
                    uniform.destroy();
                }
            }
        }
        Ok(())
    }

    /// The buffers and bind group of one call reading `inputs` (its own copies of them).
    fn build_call(&self, problem: &Problem, inputs: &Inputs<'_>) -> Result<CallWork> {
        let gpu = &self.inner.gpu;
        let launch = self.launch(problem);
        let max = gpu.max_workgroups as u64;
        let blocks = launch.blocks.max(1);
        let (x, y) = if blocks <= max {
            (blocks, 1)
        } else {
            (max, blocks.div_ceil(max))
        };
        if y > max {
            return Err(Error::InvalidConfig(format!(
                "{}: {blocks} workgroups exceed the adapter's {max} x {max}",
                self.kernel.name
            )));
        }
        let strides = problem.inputs();
        let cache = problem.strides();
        let params = UserParams {
            num_tokens: problem.num_tokens as u32,
            num_heads: problem.num_heads as u32,
            head_size: problem.head_size as u32,
            block_size: problem.block_size as u32,
            num_blocks: problem.num_blocks as u32,
            input_token_stride: strides.token as u32,
            input_head_stride: strides.head as u32,
            cache_block_stride: cache.block as u32,
            cache_slot_stride: cache.slot as u32,
            cache_head_stride: cache.head as u32,
            cache_layout: match problem.layout {
                Layout::Nhd => 0,
                Layout::Hnd => 1,
            },
            dtype: match problem.dtype {
                Dtype::Half => 0,
                Dtype::BFloat16 => 1,
                Dtype::Float => 2,
            },
            cache_dtype: match problem.cache_dtype {
                CacheDtype::Auto => 0,
                CacheDtype::Fp8 => 1,
                CacheDtype::Fp8E5m2 => 2,
            },
            per_head_scales: inputs.per_head_scales() as u32,
            threads: launch.threads as u32,
            threads_x: (x * launch.block as u64) as u32,
            workgroups_x: x as u32,
            workgroups: launch.blocks as u32,
            element_bytes: problem.dtype.size() as u32,
            cache_element_bytes: problem.cache_element_size() as u32,
        };
        let slots: Vec<i32> = inputs.slot_mapping.iter().map(|&s| s as i32).collect();
        let scales = |scale: Scale<'_>| -> Vec<f32> {
            match scale {
                Scale::PerTensor(scale) => vec![scale],
                Scale::PerHead(scales) => scales.to_vec(),
            }
        };
        let (key_cache, value_cache, _) = self.caches.as_ref().expect("caches before calls");
        let buffers = gpu.scoped("uploading the inputs", || {
            vec![
                (PARAMS, gpu.uniform("params", &params)),
                (KEY, gpu.storage("key", inputs.key)),
                (VALUE, gpu.storage("value", inputs.value)),
                (
                    SLOT_MAPPING,
                    gpu.storage("slot_mapping", bytemuck::cast_slice(&slots)),
                ),
                (
                    K_SCALE,
                    gpu.storage("k_scale", bytemuck::cast_slice(&scales(inputs.k_scale))),
                ),
                (
                    V_SCALE,
                    gpu.storage("v_scale", bytemuck::cast_slice(&scales(inputs.v_scale))),
                ),
            ]
        })?;
        let mut entries: Vec<(u32, Window)> = buffers
            .iter()
            .map(|(binding, buffer)| (*binding, Window::whole(buffer)))
            .collect();
        entries.push((KEY_CACHE, Window::whole(key_cache)));
        entries.push((VALUE_CACHE, Window::whole(value_cache)));
        entries.retain(|(binding, _)| self.used.contains(binding));
        let bind_group = gpu.scoped(
            &format!(
                "binding the contract's buffers to {} (see shaders/paged_kv.wgsl)",
                self.kernel.file_name()
            ),
            || gpu.bind_windows(&self.pipeline, &entries),
        )?;
        // Uploads complete before the first call.
        gpu.queue.submit([]);
        gpu.wait()?;
        Ok(CallWork {
            buffers: buffers.into_iter().map(|(_, buffer)| buffer).collect(),
            bind_group,
            grid: (x as u32, y as u32),
        })
    }
}

/// Parses and validates the user's shader with the contract appended, and finds its entry
/// point: (module, entry name, workgroup size, bindings used).
fn front_end(kernel: &UserKernel) -> Result<(naga::Module, String, u32, Vec<u32>)> {
    let source = format!("{}\n{PRELUDE}", kernel.source);
    let file = kernel.file_name();
    let module = naga::front::wgsl::parse_str(&source).map_err(|error| {
        let labels: Vec<(naga::Span, String)> = error
            .labels()
            .map(|(span, label)| (span, label.to_string()))
            .collect();
        Error::Compile {
            file: file.clone(),
            log: diagnostic(&file, &source, kernel, error.message(), &labels),
        }
    })?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .map_err(|error| {
        let labels: Vec<(naga::Span, String)> = error.spans().cloned().collect();
        let mut message = error.as_inner().to_string();
        let mut cause = std::error::Error::source(error.as_inner());
        while let Some(inner) = cause {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            cause = inner.source();
        }
        Error::Compile {
            file: file.clone(),
            log: diagnostic(&file, &source, kernel, &message, &labels),
        }
    })?;
    let entry = &kernel.directives.entry;
    let Some(index) = module
        .entry_points
        .iter()
        .position(|e| &e.name == entry && e.stage == naga::ShaderStage::Compute)
    else {
        return Err(Error::InvalidConfig(format!(
            "{file} has no compute entry point `{entry}`; declare it with // paged-kv: \
             entry=NAME"
        )));
    };
    let point = &module.entry_points[index];
    let [x, y, z] = point.workgroup_size;
    if y > 1 || z > 1 || x == 0 {
        return Err(Error::InvalidConfig(format!(
            "{file}: `{entry}` has @workgroup_size({x}, {y}, {z}); the contract's launch takes \
             one dimension: @workgroup_size(N)"
        )));
    }
    let function = info.get_entry_point(index);
    let used = module
        .global_variables
        .iter()
        .filter(|(handle, _)| !function[*handle].is_empty())
        .filter_map(|(_, variable)| variable.binding.as_ref())
        .filter(|binding| binding.group == 0)
        .map(|binding| binding.binding)
        .collect();
    let entry = entry.clone();
    Ok((module, entry, x, used))
}

/// Compiler diagnostics as one short block: `FILE:LINE:COL: message`, the source line and a
/// marker under the span, for each label (at most three). Lines past the user's file are the
/// appended contract's, named as such.
fn diagnostic(
    file: &str,
    source: &str,
    kernel: &UserKernel,
    message: &str,
    labels: &[(naga::Span, String)],
) -> String {
    let user_lines = kernel.source.lines().count() as u32;
    let mut block = String::new();
    let located: Vec<_> = labels
        .iter()
        .filter(|(span, _)| span.is_defined())
        .take(3)
        .collect();
    if located.is_empty() {
        return format!("{file}: error: {message}");
    }
    for (index, (span, label)) in located.iter().enumerate() {
        let location = span.location(source);
        let (name, line) = if location.line_number > user_lines + 1 {
            (
                format!(
                    "{} (the appended contract)",
                    Path::new("shaders").join("paged_kv.wgsl").display()
                ),
                location.line_number - user_lines - 1,
            )
        } else {
            (file.to_string(), location.line_number)
        };
        let text = source
            .lines()
            .nth(location.line_number as usize - 1)
            .unwrap_or("");
        if index == 0 {
            block.push_str(&format!(
                "{name}:{line}:{}: error: {message}\n",
                location.line_position
            ));
        } else {
            block.push_str(&format!(
                "{name}:{line}:{}: note:\n",
                location.line_position
            ));
        }
        let gutter = line.to_string();
        let width = (location.length as usize).clamp(1, text.len().max(1));
        block.push_str(&format!("  {gutter} | {text}\n"));
        block.push_str(&format!(
            "  {} | {}{} {label}\n",
            " ".repeat(gutter.len()),
            " ".repeat(location.line_position as usize - 1),
            "^".repeat(width)
        ));
    }
    block.trim_end().to_string()
}

impl Drop for UserShader {
    fn drop(&mut self) {
        if let Some((key, value, _)) = self.caches.take() {
            key.destroy();
            value.destroy();
        }
    }
}

impl Backend for UserShader {
    fn kind(&self) -> Kind {
        Kind::Wgpu
    }

    fn name(&self) -> String {
        self.kernel.name.clone()
    }

    fn user_kernel(&self) -> Option<&UserKernel> {
        Some(&self.kernel)
    }

    fn device(&self) -> DeviceInfo {
        let inner = self.inner.device();
        DeviceInfo {
            name: inner.name,
            details: format!(
                "{}; --shader {} (entry `{}`, grid {}, @workgroup_size({}))",
                inner.details,
                self.kernel.file_name(),
                self.kernel.directives.entry,
                self.kernel.directives.grid,
                self.workgroup_size
            ),
        }
    }

    fn supports(&self, layout: Layout) -> bool {
        self.kernel.directives.supports.layout(layout)
    }

    fn check_support(&self, problem: &Problem, scaling: Scaling) -> Result<()> {
        if let Some(what) = self.kernel.directives.supports.lacks(problem, scaling) {
            return Err(self.unsupported(what));
        }
        let size = problem.cache_element_size();
        if !(problem.head_size * size).is_multiple_of(4) {
            return Err(self.unsupported(format!(
                "head size {} (a head of the cache is not whole 4-byte words)",
                problem.head_size
            )));
        }
        if let Grid::Elements(n) = self.kernel.directives.grid {
            if !(n as usize * size).is_multiple_of(4) {
                return Err(self.unsupported(format!(
                    "{} caches with grid=elements:{n} (each invocation must own whole 4-byte \
                     words of the cache: {n} elements are {} bytes)",
                    problem.cache_dtype.name(),
                    n as usize * size
                )));
            }
        }
        let max = self.inner.max_binding;
        if problem.num_slots() >= 1 << 31 {
            return Err(self.unsupported("caches of 2^31 slots or more (slots are i32)"));
        }
        if problem.input_bytes() > max {
            return Err(self.unsupported(format!(
                "inputs of {} (over the adapter's largest storage binding, {})",
                Bytes(problem.input_bytes()),
                Bytes(max)
            )));
        }
        if problem.cache_bytes() > max {
            let block_bytes = problem.cache_bytes() / problem.num_blocks.max(1) as u64;
            return Err(Error::InvalidConfig(format!(
                "{}: a cache of {} blocks ({}) exceeds the adapter's largest storage binding \
                 ({}), and a shader's cache is one binding; the largest --num-blocks that fits \
                 is {}",
                self.kernel.name,
                problem.num_blocks,
                Bytes(problem.cache_bytes()),
                Bytes(max),
                max / block_bytes.max(1)
            )));
        }
        Ok(())
    }

    fn footprint(&self, cache_bytes: u64, input_bytes: u64, num_tokens: usize) -> Footprint {
        self.inner.footprint(cache_bytes, input_bytes, num_tokens)
    }

    /// The built-in backend's default, no larger than one storage binding per cache.
    fn default_num_blocks(&self, block_bytes: u64) -> usize {
        let fits = (self.inner.max_binding / block_bytes.max(1)).max(1) as usize;
        self.inner.default_num_blocks(block_bytes).min(fits)
    }

    fn default_num_blocks_reason(&self) -> &'static str {
        "so that each cache fits the adapter's largest storage binding (a user's shader binds \
         each cache whole)"
    }

    fn default_max_time(&self) -> std::time::Duration {
        self.inner.default_max_time()
    }

    fn device_memory(&self) -> Option<u64> {
        self.inner.device_memory()
    }

    fn mode_note(&self) -> String {
        format!(
            "--mode does not apply to wgpu: each call of the shader is one dispatch of its \
             declared grid; device time: back-to-back calls in one compute pass per sample, {}",
            if self.inner.timestamps {
                "timed by timestamp queries at the pass boundaries"
            } else {
                "timed by the host clock (this adapter has no timestamp queries)"
            }
        )
    }

    fn mode_summary(&self) -> String {
        self.inner.mode_summary()
    }

    fn copy_bandwidth_gbps(&mut self) -> Result<Option<f64>> {
        self.inner.copy_bandwidth_gbps()
    }

    fn prepare<'a>(
        &'a mut self,
        problem: &Problem,
        inputs: Inputs<'a>,
        fill: CacheFill<'_>,
    ) -> Result<Box<dyn Prepared + 'a>> {
        inputs.validate_for(problem)?;
        if !self.supports(problem.layout) {
            return Err(self.unsupported(format!("the {} layout", problem.layout.name())));
        }
        self.check_support(problem, inputs.scaling())?;
        self.inner.gpu.check_errors()?;
        self.prepare_caches(problem, fill)?;
        let work = self.build_call(problem, &inputs)?;
        Ok(Box::new(UserCall {
            backend: self,
            problem: *problem,
            inputs,
            work,
            copies: Vec::new(),
        }))
    }
}

/// One call's buffers and bind group.
struct CallWork {
    buffers: Vec<wgpu::Buffer>,
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
}

impl Drop for CallWork {
    fn drop(&mut self) {
        for buffer in &self.buffers {
            buffer.destroy();
        }
    }
}

struct UserCall<'a> {
    backend: &'a mut UserShader,
    problem: Problem,
    inputs: Inputs<'a>,
    work: CallWork,
    /// Rotating timing: further calls, each with its own inputs and slots.
    copies: Vec<CallWork>,
}

impl UserCall<'_> {
    fn record(&self, pass: &mut wgpu::ComputePass, work: &CallWork) {
        pass.set_pipeline(&self.backend.pipeline);
        pass.set_bind_group(0, &work.bind_group, &[]);
        pass.dispatch_workgroups(work.grid.0, work.grid.1, 1);
    }
}

impl Prepared for UserCall<'_> {
    fn run(&mut self) -> Result<()> {
        let gpu = &self.backend.inner.gpu;
        gpu.run_pass(|pass| self.record(pass, &self.work))
    }

    fn rotate(&mut self, slot_mappings: &[Vec<i64>]) -> Result<()> {
        self.copies.clear();
        for slots in slot_mappings {
            let inputs = Inputs {
                slot_mapping: slots,
                ..self.inputs
            };
            let copy = self.backend.build_call(&self.problem, &inputs)?;
            self.copies.push(copy);
        }
        Ok(())
    }

    fn batch_unit(&self) -> usize {
        1 + self.copies.len()
    }

    fn time_batch(&mut self, calls: usize) -> Result<f64> {
        let this = &*self;
        if calls == 1 {
            return this
                .backend
                .inner
                .time_pass(1, &|pass| this.record(pass, &this.work));
        }
        let units = calls.div_ceil(this.batch_unit());
        let per_unit = this.backend.inner.time_pass(units, &|pass| {
            this.record(pass, &this.work);
            for copy in &this.copies {
                this.record(pass, copy);
            }
        })?;
        Ok(per_unit * units as f64)
    }

    fn flush_cache(&mut self) -> Result<()> {
        self.backend.inner.ensure_flush()?;
        self.backend.inner.flush_caches()
    }

    fn read_back(&mut self) -> Result<Caches> {
        let gpu = &self.backend.inner.gpu;
        let (key, value, bytes) = self.backend.caches.as_ref().expect("prepared caches");
        Ok(Caches {
            key: gpu.download(key, *bytes)?,
            value: gpu.download(value, *bytes)?,
        })
    }
}
