//! Device time: passes timed by timestamp queries at their boundaries where the adapter has
//! them (else by the host clock), the cache flush of cold timing, and the copy-bandwidth
//! ceiling. Each is a method of its own, for any timing protocol to use.

use std::time::Instant;

use super::abi::{
    GpuFillParams, COPY_DST_BINDING, COPY_SRC_BINDING, FILL_OUT_BINDING, FILL_PARAMS_BINDING,
};
use super::device::Gpu;
use super::WgpuBackend;
use crate::error::{Error, Result};

/// Bytes overwritten before each cold call to evict the device's caches: several times the
/// last-level cache of current GPUs (50 MiB on an H100); software adapters are capped lower by
/// their bindings.
pub(super) const FLUSH_BYTES: u64 = 256 << 20;

/// Two timestamps (the start and end of a pass) and where they are read back.
pub(super) struct Timer {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
}

impl Timer {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        gpu.scoped("allocating timestamp queries", || Timer {
            query_set: gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: gpu.buffer(
                "timestamps",
                16,
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            readback: gpu.buffer(
                "timestamp read-back",
                16,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
        })
    }
}

/// A dispatch that overwrites a buffer larger than the device's caches.
pub(super) struct Flush {
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

impl WgpuBackend {
    /// Records `calls` calls (by `record`) in one compute pass, runs it, and returns the time
    /// per call in microseconds: from timestamp queries at the pass boundaries where the
    /// adapter has them (the GPU's own clock, free of submission overhead), else from the
    /// host clock around the submission and its wait.
    pub(super) fn time_pass(
        &self,
        calls: usize,
        record: &dyn Fn(&mut wgpu::ComputePass),
    ) -> Result<f64> {
        let gpu = &self.gpu;
        let calls = calls.max(1);
        let mut encoder = gpu
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
            gpu.queue.submit([commands]);
            gpu.wait()?;
            return Ok(start.elapsed().as_secs_f64() * 1e6 / calls as f64);
        };
        encoder.resolve_query_set(&timer.query_set, 0..2, &timer.resolve, 0);
        encoder.copy_buffer_to_buffer(&timer.resolve, 0, &timer.readback, 0, 16);
        gpu.queue.submit([encoder.finish()]);
        gpu.map_read(&timer.readback, .., "reading timestamps")?;
        let ticks: Vec<u64> = {
            let view = timer
                .readback
                .get_mapped_range(..)
                .map_err(|error| Error::wgpu("reading timestamps", format!("{error:?}")))?;
            view.chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect()
        };
        timer.readback.unmap();
        let nanoseconds =
            ticks[1].saturating_sub(ticks[0]) as f64 * gpu.queue.get_timestamp_period() as f64;
        Ok(nanoseconds / 1e3 / calls as f64)
    }

    /// Allocates the buffer that cold timing overwrites to evict the device's caches.
    pub(super) fn ensure_flush(&mut self) -> Result<()> {
        if self.flush.is_some() {
            return Ok(());
        }
        let bytes = self.max_binding.min(FLUSH_BYTES);
        let gpu = &mut self.gpu;
        let pipeline = gpu.pipeline("fill", &[])?;
        let grid = gpu.grid(bytes / 4)?;
        let params = GpuFillParams {
            seed_lo: 0x5eed,
            seed_hi: 0,
            chunk: 0,
            words: (bytes / 4) as u32,
        };
        let flush = gpu.scoped("allocating the cache-flush buffer", || {
            let buffer = gpu.buffer("cache flush", bytes, wgpu::BufferUsages::STORAGE);
            let uniform = gpu.uniform("flush params", &params);
            let bind_group = gpu.bind_group(
                &pipeline,
                &[(FILL_PARAMS_BINDING, &uniform), (FILL_OUT_BINDING, &buffer)],
            );
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
    pub(super) fn flush_caches(&self) -> Result<()> {
        let Some(flush) = &self.flush else {
            return Ok(());
        };
        // Waiting on the host keeps the flush out of the next pass's timestamps.
        self.gpu.run_pass(|pass| {
            pass.set_pipeline(&flush.pipeline);
            pass.set_bind_group(0, &flush.bind_group, &[]);
            pass.dispatch_workgroups(flush.grid.0, flush.grid.1, 1);
        })
    }

    /// The device's copy bandwidth in GB/s (bytes read plus bytes written per second), from
    /// the median of five timed passes of a 16-byte copy kernel.
    pub(super) fn measure_copy_bandwidth(&mut self) -> Result<Option<f64>> {
        // Much larger than any GPU's last-level cache; a software adapter copies with the CPU,
        // so keep it short there.
        let (size, reps) = if self.is_software() {
            (self.max_binding.min(64 << 20), 2)
        } else {
            (self.max_binding.min(1 << 30), 10)
        };
        let gpu = &mut self.gpu;
        let pipeline = gpu.pipeline("copy", &[])?;
        let grid = gpu.grid(size / 16)?;
        let usage = wgpu::BufferUsages::STORAGE;
        let (src, dst, group) = gpu.scoped("allocating the copy-bandwidth buffers", || {
            let src = gpu.buffer("copy source", size, usage);
            let dst = gpu.buffer("copy destination", size, usage);
            let group = gpu.bind_group(
                &pipeline,
                &[(COPY_SRC_BINDING, &src), (COPY_DST_BINDING, &dst)],
            );
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
}
