//! A minimal raw Vulkan context for the probe: instance, one compute queue, memory and buffer
//! helpers, compute pipelines from SPIR-V, and command buffers timed with timestamp queries.
//!
//! Everything here is deliberately plain (no allocator, no caching): the point of the probe is
//! to control exactly which `VkDeviceMemory` and `VkBuffer` objects exist, so each allocation
//! strategy calls `allocate` / `create_buffer` / `bind` itself.

use anyhow::{anyhow, bail, Context as _, Result};
use ash::vk;
use std::ffi::CStr;

/// The device's facts the probe prints and sizes its work from.
pub struct Facts {
    pub name: String,
    pub driver: String,
    pub api: u32,
    pub max_memory_allocation_size: u64,
    pub max_buffer_size: Option<u64>,
    pub max_storage_buffer_range: u32,
    pub min_storage_offset_alignment: u64,
    pub max_storage_buffers_per_stage: u32,
    pub max_workgroups_x: u32,
    pub timestamp_period_ns: f32,
    pub memory: vk::PhysicalDeviceMemoryProperties,
    pub has_memory_priority: bool,
    pub has_pageable: bool,
    pub has_bda: bool,
}

/// Device-level options: which optional extensions to switch on.
#[derive(Clone, Copy, Default, Debug)]
pub struct DeviceOptions {
    /// `VK_EXT_memory_priority` (allocations may then carry `VkMemoryPriorityAllocateInfoEXT`).
    pub memory_priority: bool,
    /// `VK_EXT_pageable_device_local_memory` with `pageableDeviceLocalMemory` enabled.
    pub pageable: bool,
}

pub struct Ctx {
    // Keeps the loader library loaded for as long as the instance lives.
    _entry: ash::Entry,
    pub instance: ash::Instance,
    pub device: ash::Device,
    pub queue: vk::Queue,
    pub pool: vk::CommandPool,
    pub facts: Facts,
    pub opts: DeviceOptions,
}

fn ext_names(instance: &ash::Instance, phys: vk::PhysicalDevice) -> Result<Vec<String>> {
    let exts = unsafe { instance.enumerate_device_extension_properties(phys) }?;
    Ok(exts
        .iter()
        .map(|e| {
            e.extension_name_as_c_str()
                .unwrap_or(c"?")
                .to_string_lossy()
                .into_owned()
        })
        .collect())
}

impl Ctx {
    /// Opens the loader, picks the first discrete GPU (else the first device of any type, so
    /// lavapipe works) or `device_index` when given, and creates a device with one compute queue.
    pub fn new(device_index: Option<usize>, opts: DeviceOptions) -> Result<Self> {
        let entry =
            unsafe { ash::Entry::load() }.context("loading the Vulkan loader (libvulkan.so.1)")?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"vulkan_probe")
            .api_version(vk::API_VERSION_1_2);
        let instance = unsafe {
            entry.create_instance(
                &vk::InstanceCreateInfo::default().application_info(&app),
                None,
            )
        }
        .context("vkCreateInstance")?;
        let devices = unsafe { instance.enumerate_physical_devices() }?;
        if devices.is_empty() {
            bail!("no Vulkan physical device");
        }
        let phys = match device_index {
            Some(i) => *devices
                .get(i)
                .ok_or_else(|| anyhow!("no Vulkan device {i}"))?,
            None => *devices
                .iter()
                .find(|&&d| {
                    unsafe { instance.get_physical_device_properties(d) }.device_type
                        == vk::PhysicalDeviceType::DISCRETE_GPU
                })
                .unwrap_or(&devices[0]),
        };

        let mut driver_props = vk::PhysicalDeviceDriverProperties::default();
        let mut m3 = vk::PhysicalDeviceMaintenance3Properties::default();
        let mut m4 = vk::PhysicalDeviceMaintenance4Properties::default();
        let base = unsafe { instance.get_physical_device_properties(phys) };
        let has_m4 = base.api_version >= vk::API_VERSION_1_3;
        {
            let mut p2 = vk::PhysicalDeviceProperties2::default()
                .push_next(&mut driver_props)
                .push_next(&mut m3);
            if has_m4 {
                p2 = p2.push_next(&mut m4);
            }
            unsafe { instance.get_physical_device_properties2(phys, &mut p2) };
        }
        let exts = ext_names(&instance, phys)?;
        let has = |n: &CStr| exts.iter().any(|e| e.as_bytes() == n.to_bytes());
        let limits = base.limits;
        let facts = Facts {
            name: base
                .device_name_as_c_str()
                .unwrap_or(c"?")
                .to_string_lossy()
                .into_owned(),
            driver: format!(
                "{} {} (driverVersion {:#x})",
                driver_props
                    .driver_name_as_c_str()
                    .unwrap_or(c"?")
                    .to_string_lossy(),
                driver_props
                    .driver_info_as_c_str()
                    .unwrap_or(c"?")
                    .to_string_lossy(),
                base.driver_version
            ),
            api: base.api_version,
            max_memory_allocation_size: m3.max_memory_allocation_size,
            max_buffer_size: has_m4.then_some(m4.max_buffer_size),
            max_storage_buffer_range: limits.max_storage_buffer_range,
            min_storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
            max_storage_buffers_per_stage: limits.max_per_stage_descriptor_storage_buffers,
            max_workgroups_x: limits.max_compute_work_group_count[0],
            timestamp_period_ns: limits.timestamp_period,
            memory: unsafe { instance.get_physical_device_memory_properties(phys) },
            has_memory_priority: has(vk::EXT_MEMORY_PRIORITY_NAME),
            has_pageable: has(vk::EXT_PAGEABLE_DEVICE_LOCAL_MEMORY_NAME),
            has_bda: has(vk::KHR_BUFFER_DEVICE_ADDRESS_NAME)
                || base.api_version >= vk::API_VERSION_1_2,
        };
        if opts.memory_priority && !facts.has_memory_priority {
            bail!("VK_EXT_memory_priority is not available");
        }
        if opts.pageable && !facts.has_pageable {
            bail!("VK_EXT_pageable_device_local_memory is not available");
        }

        let families = unsafe { instance.get_physical_device_queue_family_properties(phys) };
        let family = families
            .iter()
            .position(|f| {
                f.queue_flags.contains(vk::QueueFlags::COMPUTE) && f.timestamp_valid_bits > 0
            })
            .ok_or_else(|| anyhow!("no compute queue with timestamps"))?
            as u32;
        let prio = [1.0f32];
        let qinfo = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&prio)];
        let mut enabled: Vec<*const std::ffi::c_char> = Vec::new();
        if opts.memory_priority || opts.pageable {
            enabled.push(vk::EXT_MEMORY_PRIORITY_NAME.as_ptr());
        }
        if opts.pageable {
            enabled.push(vk::EXT_PAGEABLE_DEVICE_LOCAL_MEMORY_NAME.as_ptr());
        }
        let mut f_prio =
            vk::PhysicalDeviceMemoryPriorityFeaturesEXT::default().memory_priority(true);
        let mut f_page = vk::PhysicalDevicePageableDeviceLocalMemoryFeaturesEXT::default()
            .pageable_device_local_memory(true);
        let mut dinfo = vk::DeviceCreateInfo::default()
            .queue_create_infos(&qinfo)
            .enabled_extension_names(&enabled);
        if opts.memory_priority || opts.pageable {
            dinfo = dinfo.push_next(&mut f_prio);
        }
        if opts.pageable {
            dinfo = dinfo.push_next(&mut f_page);
        }
        let device =
            unsafe { instance.create_device(phys, &dinfo, None) }.context("vkCreateDevice")?;
        let queue = unsafe { device.get_device_queue(family, 0) };
        let pool = unsafe {
            device.create_command_pool(
                &vk::CommandPoolCreateInfo::default()
                    .queue_family_index(family)
                    .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                None,
            )
        }?;
        Ok(Self {
            _entry: entry,
            instance,
            device,
            queue,
            pool,
            facts,
            opts,
        })
    }

    /// The first memory type with `want` flags allowed by `bits`.
    pub fn memory_type(&self, bits: u32, want: vk::MemoryPropertyFlags) -> Result<u32> {
        let m = &self.facts.memory;
        (0..m.memory_type_count)
            .find(|&i| {
                bits & (1 << i) != 0 && m.memory_types[i as usize].property_flags.contains(want)
            })
            .ok_or_else(|| anyhow!("no memory type with {want:?} in bits {bits:#b}"))
    }

    pub fn create_buffer(&self, size: u64, usage: vk::BufferUsageFlags) -> Result<vk::Buffer> {
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        unsafe { self.device.create_buffer(&info, None) }
            .with_context(|| format!("vkCreateBuffer({size})"))
    }

    pub fn requirements(&self, buffer: vk::Buffer) -> vk::MemoryRequirements {
        unsafe { self.device.get_buffer_memory_requirements(buffer) }
    }

    /// One `vkAllocateMemory`. `dedicated` adds `VkMemoryDedicatedAllocateInfo` for that
    /// buffer; `priority` adds `VkMemoryPriorityAllocateInfoEXT` (device must enable it).
    pub fn allocate(
        &self,
        size: u64,
        type_index: u32,
        dedicated: Option<vk::Buffer>,
        priority: Option<f32>,
    ) -> Result<vk::DeviceMemory> {
        let mut ded = vk::MemoryDedicatedAllocateInfo::default();
        let mut pri = vk::MemoryPriorityAllocateInfoEXT::default();
        let mut info = vk::MemoryAllocateInfo::default()
            .allocation_size(size)
            .memory_type_index(type_index);
        if let Some(b) = dedicated {
            ded = ded.buffer(b);
            info = info.push_next(&mut ded);
        }
        if let Some(p) = priority {
            pri = pri.priority(p);
            info = info.push_next(&mut pri);
        }
        unsafe { self.device.allocate_memory(&info, None) }.map_err(|e| {
            anyhow!(
                "vkAllocateMemory({} MiB, type {type_index}): {e}",
                size >> 20
            )
        })
    }

    pub fn bind(&self, buffer: vk::Buffer, memory: vk::DeviceMemory, offset: u64) -> Result<()> {
        unsafe { self.device.bind_buffer_memory(buffer, memory, offset) }
            .context("vkBindBufferMemory")
    }

    /// A host-visible, coherent buffer with its own memory, mapped.
    pub fn host_buffer(&self, size: u64, usage: vk::BufferUsageFlags) -> Result<HostBuffer> {
        let buffer = self.create_buffer(size, usage)?;
        let req = self.requirements(buffer);
        let t = self.memory_type(
            req.memory_type_bits,
            vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
        )?;
        let memory = self.allocate(req.size, t, None, None)?;
        self.bind(buffer, memory, 0)?;
        let ptr = unsafe {
            self.device
                .map_memory(memory, 0, size, vk::MemoryMapFlags::empty())
        }? as *mut u8;
        Ok(HostBuffer {
            buffer,
            memory,
            ptr,
            size,
        })
    }

    pub fn free_host(&self, h: HostBuffer) {
        unsafe {
            self.device.unmap_memory(h.memory);
            self.device.destroy_buffer(h.buffer, None);
            self.device.free_memory(h.memory, None);
        }
    }

    /// A compute pipeline, its set layout (storage buffers, or a uniform at `uniform_binding`)
    /// and layout, from SPIR-V words.
    pub fn pipeline(
        &self,
        spirv: &[u32],
        storage: &[u32],
        uniform: Option<u32>,
    ) -> Result<Pipeline> {
        let module = unsafe {
            self.device
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(spirv), None)
        }?;
        let mut bindings: Vec<vk::DescriptorSetLayoutBinding> = storage
            .iter()
            .map(|&b| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(b)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        if let Some(b) = uniform {
            bindings.push(
                vk::DescriptorSetLayoutBinding::default()
                    .binding(b)
                    .descriptor_type(vk::DescriptorType::UNIFORM_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE),
            );
        }
        let set_layout = unsafe {
            self.device.create_descriptor_set_layout(
                &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
                None,
            )
        }?;
        let sl = [set_layout];
        let layout = unsafe {
            self.device.create_pipeline_layout(
                &vk::PipelineLayoutCreateInfo::default().set_layouts(&sl),
                None,
            )
        }?;
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(c"main");
        let info = [vk::ComputePipelineCreateInfo::default()
            .stage(stage)
            .layout(layout)];
        let pipeline = unsafe {
            self.device
                .create_compute_pipelines(vk::PipelineCache::null(), &info, None)
        }
        .map_err(|(_, e)| anyhow!("vkCreateComputePipelines: {e}"))?[0];
        unsafe { self.device.destroy_shader_module(module, None) };
        Ok(Pipeline {
            pipeline,
            layout,
            set_layout,
            n_storage: storage.len() as u32,
            has_uniform: uniform.is_some(),
        })
    }

    /// A descriptor pool with room for `sets` sets of `p`'s shape.
    pub fn descriptor_pool(&self, p: &Pipeline, sets: u32) -> Result<vk::DescriptorPool> {
        let mut sizes = vec![vk::DescriptorPoolSize {
            ty: vk::DescriptorType::STORAGE_BUFFER,
            descriptor_count: (p.n_storage * sets).max(1),
        }];
        if p.has_uniform {
            sizes.push(vk::DescriptorPoolSize {
                ty: vk::DescriptorType::UNIFORM_BUFFER,
                descriptor_count: sets,
            });
        }
        Ok(unsafe {
            self.device.create_descriptor_pool(
                &vk::DescriptorPoolCreateInfo::default()
                    .max_sets(sets)
                    .pool_sizes(&sizes),
                None,
            )
        }?)
    }

    /// Allocates one set from `pool` and writes `(binding, type, buffer, offset, range)`.
    pub fn descriptor_set(
        &self,
        pool: vk::DescriptorPool,
        p: &Pipeline,
        writes: &[(u32, vk::DescriptorType, vk::Buffer, u64, u64)],
    ) -> Result<vk::DescriptorSet> {
        let layouts = [p.set_layout];
        let set = unsafe {
            self.device.allocate_descriptor_sets(
                &vk::DescriptorSetAllocateInfo::default()
                    .descriptor_pool(pool)
                    .set_layouts(&layouts),
            )
        }?[0];
        let infos: Vec<[vk::DescriptorBufferInfo; 1]> = writes
            .iter()
            .map(|&(_, _, buffer, offset, range)| {
                [vk::DescriptorBufferInfo {
                    buffer,
                    offset,
                    range,
                }]
            })
            .collect();
        let w: Vec<vk::WriteDescriptorSet> = writes
            .iter()
            .zip(&infos)
            .map(|(&(binding, ty, ..), info)| {
                vk::WriteDescriptorSet::default()
                    .dst_set(set)
                    .dst_binding(binding)
                    .descriptor_type(ty)
                    .buffer_info(info)
            })
            .collect();
        unsafe { self.device.update_descriptor_sets(&w, &[]) };
        Ok(set)
    }

    pub fn destroy_pipeline(&self, p: Pipeline) {
        unsafe {
            self.device.destroy_pipeline(p.pipeline, None);
            self.device.destroy_pipeline_layout(p.layout, None);
            self.device
                .destroy_descriptor_set_layout(p.set_layout, None);
        }
    }

    /// Records with `record`, submits, waits. `queries` timestamps are available to `record`
    /// through the pool it is given (reset before `record` runs); returns them in ns.
    pub fn run(
        &self,
        queries: u32,
        record: impl FnOnce(vk::CommandBuffer, vk::QueryPool),
    ) -> Result<Vec<f64>> {
        let d = &self.device;
        let qp = unsafe {
            d.create_query_pool(
                &vk::QueryPoolCreateInfo::default()
                    .query_type(vk::QueryType::TIMESTAMP)
                    .query_count(queries.max(1)),
                None,
            )
        }?;
        let cb = unsafe {
            d.allocate_command_buffers(
                &vk::CommandBufferAllocateInfo::default()
                    .command_pool(self.pool)
                    .level(vk::CommandBufferLevel::PRIMARY)
                    .command_buffer_count(1),
            )
        }?[0];
        unsafe {
            d.begin_command_buffer(
                cb,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )?;
            d.cmd_reset_query_pool(cb, qp, 0, queries.max(1));
        }
        record(cb, qp);
        let fence = unsafe {
            d.end_command_buffer(cb)?;
            d.create_fence(&vk::FenceCreateInfo::default(), None)?
        };
        let cbs = [cb];
        let result = unsafe {
            d.queue_submit(
                self.queue,
                &[vk::SubmitInfo::default().command_buffers(&cbs)],
                fence,
            )
            .and_then(|_| d.wait_for_fences(&[fence], true, u64::MAX))
        };
        let mut out = vec![0u64; queries as usize];
        let read = if queries > 0 && result.is_ok() {
            unsafe {
                d.get_query_pool_results(
                    qp,
                    0,
                    &mut out,
                    vk::QueryResultFlags::TYPE_64 | vk::QueryResultFlags::WAIT,
                )
            }
        } else {
            Ok(())
        };
        unsafe {
            d.destroy_fence(fence, None);
            d.free_command_buffers(self.pool, &cbs);
            d.destroy_query_pool(qp, None);
        }
        result.context("queue submit / wait (device lost?)")?;
        read.context("timestamp read")?;
        let period = self.facts.timestamp_period_ns as f64;
        Ok(out.iter().map(|&t| t as f64 * period).collect())
    }

    /// A compute-to-compute memory barrier (shader writes before later shader reads/writes),
    /// the barrier wgpu records between dispatches that write the same buffer.
    pub fn barrier(&self, cb: vk::CommandBuffer) {
        let mb = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(
                vk::AccessFlags::SHADER_READ
                    | vk::AccessFlags::SHADER_WRITE
                    | vk::AccessFlags::TRANSFER_READ,
            )];
        unsafe {
            self.device.cmd_pipeline_barrier(
                cb,
                vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER,
                vk::DependencyFlags::empty(),
                &mb,
                &[],
                &[],
            )
        };
    }

    pub fn timestamp(&self, cb: vk::CommandBuffer, qp: vk::QueryPool, i: u32) {
        unsafe {
            self.device
                .cmd_write_timestamp(cb, vk::PipelineStageFlags::BOTTOM_OF_PIPE, qp, i)
        };
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_command_pool(self.pool, None);
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

pub struct Pipeline {
    pub pipeline: vk::Pipeline,
    pub layout: vk::PipelineLayout,
    pub set_layout: vk::DescriptorSetLayout,
    n_storage: u32,
    has_uniform: bool,
}

pub struct HostBuffer {
    pub buffer: vk::Buffer,
    pub memory: vk::DeviceMemory,
    pub ptr: *mut u8,
    pub size: u64,
}

impl HostBuffer {
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.size as usize);
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), bytes.len()) };
    }
    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.size as usize);
        unsafe { std::slice::from_raw_parts(self.ptr.add(offset), len) }.to_vec()
    }
}

/// Prints the device facts (experiment 1).
pub fn describe(f: &Facts) -> String {
    let mut s = String::new();
    let v = |a: u32| {
        format!(
            "{}.{}.{}",
            vk::api_version_major(a),
            vk::api_version_minor(a),
            vk::api_version_patch(a)
        )
    };
    s += &format!(
        "device: {}\ndriver: {}\nVulkan API: {}\n",
        f.name,
        f.driver,
        v(f.api)
    );
    s += &format!(
        "maxMemoryAllocationSize: {} ({:.4} GiB)\nmaxBufferSize (maintenance4): {}\nmaxStorageBufferRange: {} ({:.4} GiB)\n",
        f.max_memory_allocation_size,
        f.max_memory_allocation_size as f64 / (1u64 << 30) as f64,
        f.max_buffer_size.map_or("n/a (API < 1.3)".to_string(), |b| format!("{b} ({:.4} GiB)", b as f64 / (1u64 << 30) as f64)),
        f.max_storage_buffer_range,
        f.max_storage_buffer_range as f64 / (1u64 << 30) as f64
    );
    s += &format!(
        "minStorageBufferOffsetAlignment: {}\nmaxPerStageDescriptorStorageBuffers: {}\nmaxComputeWorkGroupCount[0]: {}\ntimestampPeriod: {} ns\n",
        f.min_storage_offset_alignment, f.max_storage_buffers_per_stage, f.max_workgroups_x, f.timestamp_period_ns
    );
    s += &format!(
        "VK_EXT_memory_priority: {}\nVK_EXT_pageable_device_local_memory: {}\nVK_KHR_buffer_device_address (or core 1.2): {}\n",
        f.has_memory_priority, f.has_pageable, f.has_bda
    );
    let m = &f.memory;
    for h in 0..m.memory_heap_count as usize {
        let heap = m.memory_heaps[h];
        s += &format!(
            "heap {h}: {:.2} GiB {:?}\n",
            heap.size as f64 / (1u64 << 30) as f64,
            heap.flags
        );
    }
    for t in 0..m.memory_type_count as usize {
        let ty = m.memory_types[t];
        s += &format!("type {t}: heap {} {:?}\n", ty.heap_index, ty.property_flags);
    }
    s
}
