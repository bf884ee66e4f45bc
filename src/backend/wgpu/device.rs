//! The device and what every pass needs of it: errors as one-line results (error scopes around
//! allocation, compilation and uploads; an uncaptured-error handler for the rest), waiting,
//! pipelines compiled once, buffers and bind groups, and uploads and downloads through bounded
//! staging memory.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};

use bytemuck::Pod;

use super::adapter::{describe_adapter, unavailable};
use super::plan;
use crate::error::{Error, Result};

/// Uploads and read-backs move at most this much per staging buffer, so that copying a
/// 32 GiB cache never needs 32 GiB of staging memory.
pub(super) const STAGING_BYTES: u64 = 64 << 20;

/// A wgpu error as one line.
pub(super) fn one_line(error: &dyn std::fmt::Display) -> String {
    error
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The device, its queue and the shader module, with the pipelines built from it so far.
pub(super) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// The adapter's name, for messages.
    name: String,
    module: wgpu::ShaderModule,
    pipelines: HashMap<String, wgpu::ComputePipeline>,
    /// Errors no error scope caught (from the uncaptured-error handler and device loss).
    errors: Arc<Mutex<Vec<String>>>,
    /// Workgroups per grid dimension: the adapter's limit, or fewer when the tuning asks.
    pub max_workgroups: u32,
    /// How long a wait may take before it is an error (a user's shader that hangs); `None`
    /// waits as long as it takes (the built-in kernels).
    pub timeout: Option<std::time::Duration>,
}

impl Gpu {
    /// Opens a device on `adapter` with every limit the adapter has (the defaults cap a storage
    /// binding at 128 MiB whatever the adapter allows) and timestamp queries where it has them,
    /// and compiles `shader` on it.
    pub fn open(
        adapter: &wgpu::Adapter,
        timestamps: bool,
        max_workgroups: Option<u32>,
        shader: &str,
    ) -> Result<Self> {
        let info = adapter.get_info();
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
        let max_workgroups = max_workgroups
            .unwrap_or(u32::MAX)
            .min(device.limits().max_compute_workgroups_per_dimension)
            .max(1);
        // Compilation errors surface as uncaptured errors, reported by the next check.
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("reshape_and_cache_flash.wgsl"),
            source: wgpu::ShaderSource::Wgsl(shader.into()),
        });
        Ok(Self {
            device,
            queue,
            name: info.name,
            module,
            pipelines: HashMap::new(),
            errors,
            max_workgroups,
            timeout: None,
        })
    }

    /// Returns (and clears) errors that no error scope caught.
    pub fn check_errors(&self) -> Result<()> {
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
        Err(Error::wgpu(
            "the device reported",
            if more > 0 {
                format!("{first} (and {more} more error(s))")
            } else {
                first
            },
        ))
    }

    /// Runs `f` inside validation, out-of-memory and internal error scopes and turns what they
    /// catch into an error that says what was being done.
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        // Scopes pop innermost first.
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        let internal = pollster::block_on(internal.pop());
        if let Some(error) = oom {
            return Err(self.out_of_memory(what, one_line(&error)));
        }
        if let Some(error) = validation.or(internal) {
            return Err(Error::wgpu(what, one_line(&error)));
        }
        self.check_errors()?;
        Ok(value)
    }

    /// The error for running out of device memory while doing `what`.
    pub fn out_of_memory(&self, what: &str, cause: impl std::fmt::Display) -> Error {
        Error::wgpu(
            format!("out of memory on {} while {what}", self.name),
            cause,
        )
    }

    /// Waits for all submitted work.
    pub fn wait(&self) -> Result<()> {
        let poll = wgpu::PollType::Wait {
            submission_index: None,
            timeout: self.timeout,
        };
        self.device.poll(poll).map_err(|error| match error {
            wgpu::PollError::Timeout => Error::wgpu(
                "waiting for the GPU",
                format!(
                    "the call did not finish within {} s: a hang or an endless loop",
                    self.timeout.unwrap_or_default().as_secs_f64()
                ),
            ),
            other => Error::wgpu("waiting for the GPU", one_line(&other)),
        })?;
        self.check_errors()
    }

    /// The pipeline of `entry` specialised with `constants`, compiled once per backend.
    pub fn pipeline(
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

    pub fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    pub fn uniform<T: Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        let buffer = self.buffer(
            label,
            std::mem::size_of::<T>() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        );
        self.queue
            .write_buffer(&buffer, 0, bytemuck::bytes_of(value));
        buffer
    }

    /// A read-only storage buffer holding `bytes` (at least 16 bytes, as bindings want).
    pub fn storage(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let buffer = self.buffer(
            label,
            (bytes.len() as u64).next_multiple_of(16).max(16),
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        );
        self.queue.write_buffer(&buffer, 0, bytes);
        buffer
    }

    /// A bind group of whole buffers, by binding number.
    pub fn bind_group(
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
    pub fn bind_windows(
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

    /// Workgroups for `threads` threads as a grid of at most `max_workgroups` per dimension.
    pub fn grid(&self, threads: u64) -> Result<(u32, u32)> {
        plan::grid(threads, self.max_workgroups)
    }

    /// Records one pass by `record`, submits it and waits for it.
    pub fn run_pass(&self, record: impl FnOnce(&mut wgpu::ComputePass)) -> Result<()> {
        self.submit_pass(record);
        self.wait()
    }

    /// Records one pass by `record` and submits it.
    pub fn submit_pass(&self, record: impl FnOnce(&mut wgpu::ComputePass)) {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            record(&mut pass);
        }
        self.queue.submit([encoder.finish()]);
    }

    /// Copies `data` into `buffer` from its start, through bounded staging memory. The
    /// buffer's size must cover `data` rounded up to 4 bytes.
    pub fn upload(&self, buffer: &wgpu::Buffer, data: &[u8]) -> Result<()> {
        self.upload_at(Window::whole(buffer), data)
    }

    /// As [`Self::upload`], into a window of a buffer.
    pub fn upload_at(&self, window: Window, data: &[u8]) -> Result<()> {
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
    pub fn download(&self, buffer: &wgpu::Buffer, len: u64) -> Result<Vec<u8>> {
        self.download_from(Window::whole(buffer), len)
    }

    /// Reads the first `len` bytes of a window (whose size is a multiple of 4).
    pub fn download_from(&self, window: Window, len: u64) -> Result<Vec<u8>> {
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
            self.map_read(&staging, 0..piece, "mapping a buffer")?;
            {
                let view = staging
                    .get_mapped_range(0..piece)
                    .map_err(|error| Error::wgpu("mapping a buffer", format!("{error:?}")))?;
                let keep = piece.min(len - offset) as usize;
                out.extend_from_slice(&view[..keep]);
            }
            staging.unmap();
            offset += piece;
        }
        staging.destroy();
        Ok(out)
    }

    /// Maps `range` of `buffer` for reading once the work submitted so far has run; `what`
    /// names the step in errors.
    pub fn map_read(
        &self,
        buffer: &wgpu::Buffer,
        range: impl std::ops::RangeBounds<u64>,
        what: &str,
    ) -> Result<()> {
        let (sender, receiver) = mpsc::channel();
        buffer.map_async(wgpu::MapMode::Read, range, move |result| {
            let _ = sender.send(result);
        });
        self.wait()?;
        receiver
            .recv()
            .map_err(|_| Error::wgpu(what, "the buffer mapping was dropped"))?
            .map_err(|error| Error::wgpu(what, one_line(&error)))
    }
}

/// A window of a buffer: a whole buffer, or a chunk of a cache held in one buffer.
#[derive(Clone, Copy)]
pub(super) struct Window<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl<'a> Window<'a> {
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
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

#[cfg(test)]
mod tests {
    use super::super::WgpuBackend;
    use crate::error::Error;
    use crate::options::WgpuTuning;

    /// wgpu errors become one-line errors, never panics (wgpu's default handler panics):
    /// caught by an error scope, or by the uncaptured-error handler and reported by the next
    /// wait.
    #[test]
    fn wgpu_errors_are_returned_not_panics() {
        let backend =
            WgpuBackend::open(None, false, WgpuTuning::default()).expect("a wgpu adapter");
        let gpu = &backend.gpu;
        let too_big = backend.limits.max_buffer_size + 4;
        let error = gpu
            .scoped("allocating an impossible buffer", || {
                gpu.buffer("too big", too_big, wgpu::BufferUsages::STORAGE)
            })
            .expect_err("a buffer over max_buffer_size is refused");
        assert!(matches!(error, Error::Wgpu { .. }), "{error}");
        assert!(error
            .to_string()
            .contains("allocating an impossible buffer"));
        assert!(!error.to_string().contains('\n'), "{error}");

        // A copy past the end of a buffer, submitted outside any scope.
        let small = gpu.buffer("small", 16, wgpu::BufferUsages::COPY_SRC);
        let other = gpu.buffer("other", 16, wgpu::BufferUsages::COPY_DST);
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        encoder.copy_buffer_to_buffer(&small, 0, &other, 0, 64);
        gpu.queue.submit([encoder.finish()]);
        let error = gpu.wait().expect_err("the invalid copy is reported");
        assert!(matches!(error, Error::Wgpu { .. }), "{error}");
        assert!(!error.to_string().contains('\n'), "{error}");
        // Reported once; the device still works.
        gpu.queue.submit([]);
        gpu.wait().expect("a clean wait afterwards");
    }
}
