//! Both caches on the device, chunk by chunk: allocated for a plan, filled with exact contents
//! or a seeded random fill (on the device), read back; kept between prepares of the same
//! shape. The random fill is redone for every call that asks for it: calls write into it, and
//! a row's cache must hold the same bytes whatever rows ran before it (on the device the fill
//! costs about one call of the largest rows).

use super::abi::{GpuFillParams, FILL_OUT_BINDING, FILL_PARAMS_BINDING};
use super::dedicated;
use super::device::{Gpu, Window};
use super::plan::Plan;
use super::WgpuBackend;
use crate::error::{Bytes, Error, Result};
use crate::problem::Problem;
use crate::workload::{CacheFill, Caches};

pub(super) struct DeviceCaches {
    pub chunk_bytes: Vec<u64>,
    /// Whether each cache is one buffer (`key[0]`, `value[0]`) whose chunks are windows, rather
    /// than one buffer per chunk.
    one_buffer: bool,
    key: Vec<wgpu::Buffer>,
    value: Vec<wgpu::Buffer>,
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

impl DeviceCaches {
    /// Both caches for `plan`, each buffer in a dedicated Vulkan allocation of its own when
    /// `dedicated` (see `dedicated`), else from wgpu's allocator.
    fn allocate(gpu: &Gpu, plan: &Plan, dedicated: bool) -> Result<Self> {
        let total: u64 = plan.chunk_bytes.iter().sum();
        let what = format!(
            "allocating two caches of {} in {} buffer(s) each{}",
            Bytes(total),
            if plan.one_buffer {
                1
            } else {
                plan.chunk_bytes.len()
            },
            if dedicated {
                " (dedicated allocations)"
            } else {
                ""
            }
        );
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let out_of_memory = |cause: String| gpu.out_of_memory(&what, cause);
        let one = |label: String, size: u64| -> Result<wgpu::Buffer> {
            if dedicated {
                dedicated::buffer(&gpu.device, &label, size, usage, &what, &out_of_memory)
            } else {
                Ok(gpu.buffer(&label, size, usage))
            }
        };
        let make = |name: &str| -> Result<Vec<wgpu::Buffer>> {
            if plan.one_buffer {
                return Ok(vec![one(format!("{name} cache"), total)?]);
            }
            plan.chunk_bytes
                .iter()
                .enumerate()
                .map(|(i, &size)| one(format!("{name} cache chunk {i}"), size))
                .collect()
        };
        // On an error the buffers made so far are dropped, which frees them.
        gpu.scoped(&what, || -> Result<Self> {
            Ok(DeviceCaches {
                chunk_bytes: plan.chunk_bytes.clone(),
                one_buffer: plan.one_buffer,
                key: make("key")?,
                value: make("value")?,
            })
        })?
    }

    /// Chunk `chunk` of the key (`value` false) or value cache.
    pub fn chunk(&self, value: bool, chunk: usize) -> Window<'_> {
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

    /// Overwrites both caches with exactly `contents`.
    fn upload(&mut self, gpu: &Gpu, problem: &Problem, contents: &Caches) -> Result<()> {
        let bytes = problem.cache_bytes() as usize;
        for (name, data) in [("key", &contents.key), ("value", &contents.value)] {
            if data.len() != bytes {
                return Err(Error::InvalidConfig(format!(
                    "the {name} cache to upload has {} bytes; the problem's cache has {bytes}",
                    data.len()
                )));
            }
        }
        let mut offset = 0usize;
        for (i, &size) in self.chunk_bytes.iter().enumerate() {
            let len = (size as usize).min(bytes - offset);
            gpu.upload_at(self.chunk(false, i), &contents.key[offset..offset + len])?;
            gpu.upload_at(self.chunk(true, i), &contents.value[offset..offset + len])?;
            offset += len;
        }
        Ok(())
    }

    /// Fills both caches with random words from `seed` on the device.
    fn fill(&mut self, gpu: &mut Gpu, seed: u64) -> Result<()> {
        let pipeline = gpu.pipeline("fill", &[])?;
        let gpu = &*gpu;
        let mut jobs = Vec::new();
        for (cache_seed, is_value) in [(seed, false), (seed.wrapping_add(1), true)] {
            for chunk in 0..self.chunk_bytes.len() {
                let window = self.chunk(is_value, chunk);
                let words = window.size / 4;
                let params = GpuFillParams {
                    seed_lo: cache_seed as u32,
                    seed_hi: (cache_seed >> 32) as u32,
                    chunk: chunk as u32,
                    words: words as u32,
                };
                jobs.push((params, window, gpu.grid(words)?));
            }
        }
        gpu.scoped("filling the caches", || {
            let mut keep = Vec::new();
            gpu.submit_pass(|pass| {
                pass.set_pipeline(&pipeline);
                for (params, window, (x, y)) in &jobs {
                    let uniform = gpu.uniform("fill params", params);
                    let group = gpu.bind_windows(
                        &pipeline,
                        &[
                            (FILL_PARAMS_BINDING, Window::whole(&uniform)),
                            (FILL_OUT_BINDING, *window),
                        ],
                    );
                    pass.set_bind_group(0, &group, &[]);
                    pass.dispatch_workgroups(*x, *y, 1);
                    keep.push(uniform);
                }
            });
            keep
        })?;
        gpu.wait()
    }

    /// Both caches, their first `total` bytes (the chunks' padding left out).
    pub fn download(&self, gpu: &Gpu, total: u64) -> Result<Caches> {
        let mut key = Vec::with_capacity(total as usize);
        let mut value = Vec::with_capacity(total as usize);
        let mut offset = 0;
        for (i, &size) in self.chunk_bytes.iter().enumerate() {
            let len = size.min(total - offset);
            key.extend(gpu.download_from(self.chunk(false, i), len)?);
            value.extend(gpu.download_from(self.chunk(true, i), len)?);
            offset += len;
        }
        Ok(Caches { key, value })
    }
}

impl WgpuBackend {
    /// Makes sure both caches exist with the plan's chunks, reusing the current ones if they
    /// match.
    fn ensure_caches(&mut self, plan: &Plan) -> Result<()> {
        if self.caches.as_ref().is_some_and(|caches| {
            caches.chunk_bytes == plan.chunk_bytes && caches.one_buffer == plan.one_buffer
        }) {
            return Ok(());
        }
        // Free the old caches before allocating the new ones.
        self.caches = None;
        self.caches = Some(DeviceCaches::allocate(
            &self.gpu,
            plan,
            self.dedicated_caches,
        )?);
        Ok(())
    }

    /// The caches of `plan`, holding what `fill` says.
    pub(super) fn prepare_caches(
        &mut self,
        plan: &Plan,
        problem: &Problem,
        fill: CacheFill<'_>,
    ) -> Result<()> {
        self.ensure_caches(plan)?;
        let caches = self.caches.as_mut().expect("ensure_caches allocated them");
        match fill {
            CacheFill::Copy(contents) => caches.upload(&self.gpu, problem, contents),
            CacheFill::Random { seed } => caches.fill(&mut self.gpu, seed),
        }
    }
}
