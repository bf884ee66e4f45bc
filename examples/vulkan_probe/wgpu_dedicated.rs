//! Experiment 4: the finding of experiment 2 carried into wgpu. The same scatter through wgpu
//! 30, its cache windows either ordinary wgpu buffers (gpu-allocator) or buffers made by hand
//! with a dedicated allocation and handed to wgpu (`create_buffer_from_hal`) — the change
//! `src/backend/wgpu/caches.rs` would make.

use crate::shaders::{self, Params, WG};
use anyhow::{anyhow, Result};
use ash::vk;

/// A wgpu buffer whose memory is a dedicated Vulkan allocation (device-local), owned by wgpu
/// afterwards (wgpu-hal destroys the buffer and frees the memory with it).
pub fn dedicated_buffer(
    device: &wgpu::Device,
    size: u64,
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer> {
    type V = wgpu::hal::api::Vulkan;
    let hal = unsafe { device.as_hal::<V>() }.ok_or_else(|| anyhow!("not a Vulkan device"))?;
    let raw = hal.raw_device();
    let mem_props = unsafe {
        hal.shared_instance()
            .raw_instance()
            .get_physical_device_memory_properties(hal.raw_physical_device())
    };
    let vk_usage = vk::BufferUsageFlags::STORAGE_BUFFER
        | vk::BufferUsageFlags::TRANSFER_SRC
        | vk::BufferUsageFlags::TRANSFER_DST;
    let buffer = unsafe {
        raw.create_buffer(
            &vk::BufferCreateInfo::default().size(size).usage(vk_usage),
            None,
        )
    }?;
    let req = unsafe { raw.get_buffer_memory_requirements(buffer) };
    let Some(t) = (0..mem_props.memory_type_count).find(|&i| {
        req.memory_type_bits & (1 << i) != 0
            && mem_props.memory_types[i as usize]
                .property_flags
                .contains(vk::MemoryPropertyFlags::DEVICE_LOCAL)
    }) else {
        unsafe { raw.destroy_buffer(buffer, None) };
        return Err(anyhow!("no device-local memory type"));
    };
    let mut ded = vk::MemoryDedicatedAllocateInfo::default().buffer(buffer);
    let info = vk::MemoryAllocateInfo::default()
        .allocation_size(req.size)
        .memory_type_index(t)
        .push_next(&mut ded);
    let memory = match unsafe { raw.allocate_memory(&info, None) } {
        Ok(m) => m,
        Err(e) => {
            unsafe { raw.destroy_buffer(buffer, None) };
            return Err(anyhow!(
                "vkAllocateMemory (dedicated, {} MiB): {e}",
                size >> 20
            ));
        }
    };
    unsafe { raw.bind_buffer_memory(buffer, memory, 0) }?;
    let hb = unsafe { wgpu::hal::vulkan::Buffer::from_raw_managed(buffer, memory, 0, req.size) };
    drop(hal);
    let desc = wgpu::BufferDescriptor {
        label: Some("dedicated cache window"),
        size,
        usage,
        mapped_at_creation: false,
    };
    Ok(unsafe { device.create_buffer_from_hal::<V>(hb, &desc) })
}

pub struct WRow {
    pub dedicated: bool,
    pub cache_mib: u64,
    pub tokens: u32,
    pub median_us: f64,
    pub gbs: f64,
    pub checked: bool,
}

/// The scatter through wgpu for each cache size and token count, plain and dedicated windows.
pub fn run(
    row: u64,
    window: u64,
    caches_mib: &[u64],
    tokens: &[u32],
    calls: u32,
    check: u32,
) -> Result<(String, Vec<WRow>)> {
    let (name, device, queue) = vulkan_device(true)?;
    let max_bind = device.limits().max_storage_buffer_binding_size;
    let window = window.min(max_bind / (16 * row) * 16 * row);
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let max_t = *tokens.iter().max().unwrap_or(&1) as u64;
    let input = |v: u32| {
        let b = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: max_t * row,
            usage,
            mapped_at_creation: false,
        });
        let words: Vec<u32> = (0..(check as u64).min(max_t) * row / 4)
            .map(|i| (i as u32).wrapping_mul(2654435761) ^ v)
            .collect();
        queue.write_buffer(&b, 0, bytemuck::cast_slice(&words));
        b
    };
    let (k_in, v_in) = (input(1), input(2));
    let slots_buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: max_t * 4,
        usage,
        mapped_at_creation: false,
    });
    let uni = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 256,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let qs = device.create_query_set(&wgpu::QuerySetDescriptor {
        label: None,
        ty: wgpu::QueryType::Timestamp,
        count: 2 * calls,
    });
    let resolve = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16 * calls as u64,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let read = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (16 * calls as u64).max(check as u64 * row),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let period = queue.get_timestamp_period() as f64;
    let units = (row / 16) as u32;
    let mut rows = vec![];
    for &c in caches_mib {
        let bytes = c << 20;
        let n_win = bytes.div_ceil(window);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(shaders::scatter(n_win as u32).into()),
        });
        let pipe = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        for dedicated in [false, true] {
            let mk = |_: u64, size: u64| -> Result<wgpu::Buffer> {
                if dedicated {
                    dedicated_buffer(&device, size, usage)
                } else {
                    Ok(device.create_buffer(&wgpu::BufferDescriptor {
                        label: None,
                        size,
                        usage,
                        mapped_at_creation: false,
                    }))
                }
            };
            let sizes: Vec<u64> = (0..n_win).map(|i| window.min(bytes - i * window)).collect();
            let kc: Vec<wgpu::Buffer> = sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| mk(i as u64, s))
                .collect::<Result<_>>()?;
            let vc: Vec<wgpu::Buffer> = sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| mk(i as u64, s))
                .collect::<Result<_>>()?;
            for &t in tokens {
                let slots = crate::scatter::random_slots(t, bytes / row, 77 + t as u64);
                queue.write_buffer(&slots_buf, 0, bytemuck::cast_slice(&slots));
                let split = if t as u64 * row > max_bind {
                    t.div_ceil(2)
                } else {
                    t
                };
                let p = Params {
                    total: t * units,
                    units,
                    split,
                    win_units: 0,
                    win_slots: (window / row) as u32,
                    pad: [0; 3],
                };
                queue.write_buffer(&uni, 0, bytemuck::bytes_of(&p));
                let lo = (0, split as u64 * row);
                let hi = if split == t {
                    lo
                } else {
                    (split as u64 * row, (t - split) as u64 * row)
                };
                fn bind(b: &wgpu::Buffer, (o, s): (u64, u64)) -> wgpu::BindingResource<'_> {
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b,
                        offset: o,
                        size: wgpu::BufferSize::new(s),
                    })
                }
                let mut entries = vec![
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uni.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: bind(&slots_buf, (0, t as u64 * 4)),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: bind(&k_in, lo),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: bind(&k_in, hi),
                    },
                    wgpu::BindGroupEntry {
                        binding: 4,
                        resource: bind(&v_in, lo),
                    },
                    wgpu::BindGroupEntry {
                        binding: 5,
                        resource: bind(&v_in, hi),
                    },
                ];
                for (i, b) in kc.iter().chain(&vc).enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: 6 + i as u32,
                        resource: b.as_entire_binding(),
                    });
                }
                let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipe.get_bind_group_layout(0),
                    entries: &entries,
                });
                let groups = (t as u64 * units as u64).div_ceil(WG as u64);
                let gx = groups.min(device.limits().max_compute_workgroups_per_dimension as u64);
                let gy = groups.div_ceil(gx);
                let mut enc = device.create_command_encoder(&Default::default());
                for r in 0..calls {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: &qs,
                            beginning_of_pass_write_index: Some(2 * r),
                            end_of_pass_write_index: Some(2 * r + 1),
                        }),
                    });
                    pass.set_pipeline(&pipe);
                    pass.set_bind_group(0, &bg, &[]);
                    pass.dispatch_workgroups(gx as u32, gy as u32, 1);
                }
                enc.resolve_query_set(&qs, 0..2 * calls, &resolve, 0);
                enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, 16 * calls as u64);
                queue.submit([enc.finish()]);
                read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
                device.poll(wgpu::PollType::wait_indefinitely())?;
                let ts: Vec<u64> = bytemuck::pod_collect_to_vec(
                    &read
                        .slice(..16 * calls as u64)
                        .get_mapped_range()
                        .map_err(|e| anyhow!("map: {e:?}"))?,
                );
                read.unmap();
                let mut d: Vec<f64> = ts
                    .chunks(2)
                    .skip(2)
                    .map(|c| c[1].wrapping_sub(c[0]) as f64 * period)
                    .collect();
                d.sort_by(f64::total_cmp);
                let med = d[d.len() / 2];
                // Check: the value rows of the first tokens at their slots.
                let checked = t <= check;
                if checked {
                    let mut enc = device.create_command_encoder(&Default::default());
                    for (i, &s) in slots.iter().enumerate() {
                        let (w, o) = (s as u64 / (window / row), (s as u64 % (window / row)) * row);
                        enc.copy_buffer_to_buffer(&vc[w as usize], o, &read, i as u64 * row, row);
                    }
                    queue.submit([enc.finish()]);
                    read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
                    device.poll(wgpu::PollType::wait_indefinitely())?;
                    let got: Vec<u32> = bytemuck::pod_collect_to_vec(
                        &read
                            .slice(..t as u64 * row)
                            .get_mapped_range()
                            .map_err(|e| anyhow!("map: {e:?}"))?,
                    );
                    read.unmap();
                    let bad = got
                        .iter()
                        .enumerate()
                        .filter(|&(i, &x)| x != (i as u32).wrapping_mul(2654435761) ^ 2)
                        .count();
                    if bad > 0 {
                        return Err(anyhow!("wgpu scatter (dedicated {dedicated}) check failed at {t} tokens: {bad} wrong words"));
                    }
                }
                rows.push(WRow {
                    dedicated,
                    cache_mib: c,
                    tokens: t,
                    median_us: med / 1e3,
                    gbs: (4.0 * t as f64 * row as f64) / med,
                    checked,
                });
            }
            kc.iter().chain(&vc).for_each(|b| b.destroy());
            // Let wgpu free them now: the next set must fit beside the inputs only.
            device.poll(wgpu::PollType::wait_indefinitely())?;
        }
    }
    Ok((name, rows))
}

/// A wgpu device on the Vulkan adapter the probe measures (a discrete GPU where there is one)
/// with timestamp queries, and with the adapter's own limits (`adapter_limits`) or wgpu's
/// defaults; and the adapter's name as the probe's tables print it.
pub fn vulkan_device(adapter_limits: bool) -> Result<(String, wgpu::Device, wgpu::Queue)> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    let adapter = adapters
        .iter()
        .find(|a| a.get_info().device_type == wgpu::DeviceType::DiscreteGpu)
        .or(adapters.first())
        .ok_or_else(|| anyhow!("wgpu: no Vulkan adapter"))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: wgpu::Features::TIMESTAMP_QUERY,
        required_limits: if adapter_limits {
            adapter.limits()
        } else {
            wgpu::Limits::default()
        },
        ..Default::default()
    }))?;
    let info = adapter.get_info();
    let name = format!("{} ({:?}, {})", info.name, info.backend, info.driver_info);
    Ok((name, device, queue))
}
