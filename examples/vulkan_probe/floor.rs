//! Experiment 3: the small-call floor. A chain of N one-workgroup dispatches between two
//! timestamps (raw Vulkan) or inside one compute pass with pass-boundary timestamps (wgpu);
//! the chain is repeated `reps` times in one submission and the median is kept.

use crate::shaders;
use crate::vk::Ctx;
use anyhow::{anyhow, Result};
use ash::vk;

/// One floor measurement: the whole chain's median and the per-dispatch share.
pub struct FloorRow {
    pub api: &'static str,
    pub variant: &'static str,
    pub n: u32,
    pub chain_us: f64,
    pub per_dispatch_us: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Empty,
    Write,
}

const RAW_VARIANTS: [(&str, Kind, bool, bool); 5] = [
    ("empty, no barrier", Kind::Empty, false, false),
    ("empty, barrier between", Kind::Empty, true, false),
    (
        "write 16 B same buffer, barrier (wgpu's)",
        Kind::Write,
        true,
        false,
    ),
    (
        "write 16 B same buffer, no barrier",
        Kind::Write,
        false,
        false,
    ),
    (
        "write 16 B own buffers, no barrier",
        Kind::Write,
        false,
        true,
    ),
];

/// Raw Vulkan chains of `n` dispatches for each variant.
pub fn raw(ctx: &Ctx, ns: &[u32], reps: u32) -> Result<Vec<FloorRow>> {
    let empty = ctx.pipeline(&shaders::spirv(&shaders::empty())?, &[], None)?;
    let write = ctx.pipeline(&shaders::spirv(&shaders::write16())?, &[0], None)?;
    let max_n = *ns.iter().max().unwrap_or(&1);
    // One small buffer per dispatch for the "own buffers" variant (and buffer 0 for the rest).
    let mut bufs = vec![];
    for _ in 0..max_n {
        let b = ctx.create_buffer(256, vk::BufferUsageFlags::STORAGE_BUFFER)?;
        let req = ctx.requirements(b);
        let t = ctx.memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::DEVICE_LOCAL)?;
        let m = ctx.allocate(req.size, t, None, None)?;
        ctx.bind(b, m, 0)?;
        bufs.push((b, m));
    }
    let pool = ctx.descriptor_pool(&write, max_n)?;
    let sets: Vec<vk::DescriptorSet> = bufs
        .iter()
        .map(|&(b, _)| {
            ctx.descriptor_set(
                pool,
                &write,
                &[(0, vk::DescriptorType::STORAGE_BUFFER, b, 0, 256)],
            )
        })
        .collect::<Result<_>>()?;
    let mut rows = vec![];
    for &n in ns {
        for (name, kind, barrier, own) in RAW_VARIANTS {
            let ts = ctx.run(2 * reps, |cb, qp| unsafe {
                let d = &ctx.device;
                let p = if kind == Kind::Empty { &empty } else { &write };
                d.cmd_bind_pipeline(cb, vk::PipelineBindPoint::COMPUTE, p.pipeline);
                for r in 0..reps {
                    ctx.barrier(cb);
                    ctx.timestamp(cb, qp, 2 * r);
                    for i in 0..n {
                        if kind == Kind::Write && (i == 0 || own) {
                            let set = sets[if own { i as usize } else { 0 }];
                            d.cmd_bind_descriptor_sets(
                                cb,
                                vk::PipelineBindPoint::COMPUTE,
                                p.layout,
                                0,
                                &[set],
                                &[],
                            );
                        }
                        if barrier && i > 0 {
                            ctx.barrier(cb);
                        }
                        d.cmd_dispatch(cb, 1, 1, 1);
                    }
                    ctx.timestamp(cb, qp, 2 * r + 1);
                }
            })?;
            let mut chain: Vec<f64> = ts.chunks(2).map(|c| c[1] - c[0]).collect();
            chain.sort_by(f64::total_cmp);
            let med = chain[chain.len() / 2] / 1e3;
            rows.push(FloorRow {
                api: "vulkan",
                variant: name,
                n,
                chain_us: med,
                per_dispatch_us: med / n as f64,
            });
        }
    }
    unsafe {
        ctx.device.destroy_descriptor_pool(pool, None);
        for (b, m) in bufs {
            ctx.device.destroy_buffer(b, None);
            ctx.device.free_memory(m, None);
        }
    }
    ctx.destroy_pipeline(empty);
    ctx.destroy_pipeline(write);
    Ok(rows)
}

/// The same chains through wgpu 30: one compute pass per chain, timestamps at its boundaries.
/// wgpu records a barrier between dispatches that write the same buffer, none for the empty
/// shader or for dispatches on different buffers.
pub fn wgpu(ns: &[u32], reps: u32) -> Result<(String, Vec<FloorRow>)> {
    let (name, device, queue) = crate::wgpu_dedicated::vulkan_device(false)?;
    let module = |src: String| {
        device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(src.into()),
        })
    };
    let pipe = |m: &wgpu::ShaderModule| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: m,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        })
    };
    let empty = pipe(&module(shaders::empty()));
    let write = pipe(&module(shaders::write16()));
    let max_n = *ns.iter().max().unwrap_or(&1);
    let layout = write.get_bind_group_layout(0);
    let groups: Vec<wgpu::BindGroup> = (0..max_n)
        .map(|_| {
            let b = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 256,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: b.as_entire_binding(),
                }],
            })
        })
        .collect();
    let q = 2 * reps;
    let qs = device.create_query_set(&wgpu::QuerySetDescriptor {
        label: None,
        ty: wgpu::QueryType::Timestamp,
        count: q,
    });
    let resolve = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: q as u64 * 8,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let read = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: q as u64 * 8,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let period = queue.get_timestamp_period() as f64;
    let variants: [(&str, Option<bool>); 3] = [
        ("empty", None),
        ("write 16 B same buffer (wgpu barriers)", Some(false)),
        ("write 16 B own buffers", Some(true)),
    ];
    let mut rows = vec![];
    for &n in ns {
        for (name, write_own) in variants {
            let mut enc = device.create_command_encoder(&Default::default());
            for r in 0..reps {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &qs,
                        beginning_of_pass_write_index: Some(2 * r),
                        end_of_pass_write_index: Some(2 * r + 1),
                    }),
                });
                pass.set_pipeline(if write_own.is_some() { &write } else { &empty });
                for i in 0..n {
                    if let Some(own) = write_own {
                        if i == 0 || own {
                            pass.set_bind_group(0, &groups[if own { i as usize } else { 0 }], &[]);
                        }
                    }
                    pass.dispatch_workgroups(1, 1, 1);
                }
            }
            enc.resolve_query_set(&qs, 0..q, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, q as u64 * 8);
            queue.submit([enc.finish()]);
            read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
            device.poll(wgpu::PollType::wait_indefinitely())?;
            let ts: Vec<u64> = bytemuck::pod_collect_to_vec(
                &read
                    .slice(..)
                    .get_mapped_range()
                    .map_err(|e| anyhow!("map: {e:?}"))?,
            );
            read.unmap();
            let chain: Vec<f64> = ts
                .chunks(2)
                .map(|c| c[1].wrapping_sub(c[0]) as f64 * period)
                .collect();
            let mut c = chain;
            c.sort_by(f64::total_cmp);
            let med = c[c.len() / 2] / 1e3;
            rows.push(FloorRow {
                api: "wgpu",
                variant: name,
                n,
                chain_us: med,
                per_dispatch_us: med / n as f64,
            });
        }
    }
    Ok((name, rows))
}
