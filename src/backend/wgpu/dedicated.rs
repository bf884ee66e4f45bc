//! Cache buffers whose memory is a dedicated Vulkan allocation, made through wgpu's own Vulkan
//! handles and handed to wgpu, which owns them from then on.
//!
//! Why: wgpu allocates buffers through gpu-allocator, which gives a large buffer memory of its
//! own but without `VkMemoryDedicatedAllocateInfo`. On an H100 (driver 580) the driver then
//! maps that memory in pages too small for the GPU's address translation to cover 2 x 32 GiB
//! of caches, and a call scattering rows over them runs at a third of copy bandwidth; the same
//! buffers with the dedicated-allocation hint run at 96%, as 2 x 2 GiB caches do (raw Vulkan
//! and through wgpu: docs/perf-log-wgpu.md, "Third session: allocation probe").
//!
//! The buffer is made as wgpu-hal would make it for the same `wgpu::BufferUsages` (the same
//! Vulkan usage flags, exclusive sharing, the memory type gpu-allocator would pick for
//! GPU-only memory), only its memory is allocated by itself, with the hint. Ownership:
//! `hal::vulkan::Buffer::from_raw_managed` records the memory as the buffer's
//! (`BufferMemoryBacking::VulkanMemory`), and wgpu-hal's `destroy_buffer` destroys the buffer
//! and frees that memory when wgpu destroys the buffer; nothing here frees either after the
//! hand-over, so both are released exactly once.

use crate::error::{Error, Result};

/// The usages this module can reproduce (those of the caches); others are refused rather than
/// guessed.
const SUPPORTED_USAGES: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Why the device cannot make dedicated allocations, or `None` when it can: a Vulkan device of
/// API version 1.1 or later (where dedicated allocation is core), or one with
/// `VK_KHR_dedicated_allocation` enabled.
pub(super) fn unsupported_reason(device: &wgpu::Device) -> Option<String> {
    imp::unsupported_reason(device)
}

/// A buffer of `size` bytes for `usage` (within [`SUPPORTED_USAGES`]) in its own dedicated,
/// device-local allocation. Out of device memory is `out_of_memory(cause)`; other failures are
/// `Error::Wgpu` about `what`.
pub(super) fn buffer(
    device: &wgpu::Device,
    label: &str,
    size: u64,
    usage: wgpu::BufferUsages,
    what: &str,
    out_of_memory: &dyn Fn(String) -> Error,
) -> Result<wgpu::Buffer> {
    if !SUPPORTED_USAGES.contains(usage) {
        return Err(Error::wgpu(
            what,
            format!("dedicated buffers take only {SUPPORTED_USAGES:?}, not {usage:?}"),
        ));
    }
    // wgpu-core's own checks, which `create_buffer_from_hal` skips.
    let max = device.limits().max_buffer_size;
    if size == 0 || size > max {
        return Err(Error::wgpu(
            what,
            format!("a buffer of {size} bytes (wgpu allows 1 to {max})"),
        ));
    }
    imp::buffer(device, label, size, usage, what, out_of_memory)
}

#[cfg(any(
    target_os = "linux",
    target_os = "windows",
    target_os = "android",
    target_os = "freebsd"
))]
mod imp {
    use ash::vk;

    use crate::error::{Error, Result};

    type Vulkan = wgpu::hal::api::Vulkan;

    pub(super) fn unsupported_reason(device: &wgpu::Device) -> Option<String> {
        // SAFETY: only reads properties through the handles wgpu owns, which outlive the guard
        // (dropped before returning).
        unsafe {
            let Some(hal) = device.as_hal::<Vulkan>() else {
                return Some("the device is not a Vulkan device".into());
            };
            let shared = hal.shared_instance();
            let properties = shared
                .raw_instance()
                .get_physical_device_properties(hal.raw_physical_device());
            // The device runs at the lower of its own version and the instance's.
            let version = properties.api_version.min(shared.instance_api_version());
            let extension = hal
                .enabled_device_extensions()
                .contains(&ash::khr::dedicated_allocation::NAME);
            (version < vk::API_VERSION_1_1 && !extension).then(|| {
                "the Vulkan device is version 1.0 without VK_KHR_dedicated_allocation".into()
            })
        }
    }

    /// The Vulkan usage flags wgpu gives a buffer of `usage` (within the supported usages):
    /// wgpu-core's mapping to hal usages, plus COPY_DST, which wgpu-core adds to every buffer
    /// not mapped at creation (for its lazy zeroing), through wgpu-hal's own mapping.
    pub(super) fn vk_usage(usage: wgpu::BufferUsages) -> vk::BufferUsageFlags {
        let mut uses = wgpu::BufferUses::COPY_DST;
        uses.set(
            wgpu::BufferUses::COPY_SRC,
            usage.contains(wgpu::BufferUsages::COPY_SRC),
        );
        uses.set(
            wgpu::BufferUses::STORAGE_READ_ONLY | wgpu::BufferUses::STORAGE_READ_WRITE,
            usage.contains(wgpu::BufferUsages::STORAGE),
        );
        wgpu::hal::vulkan::conv::map_buffer_usage(uses)
    }

    /// The memory type gpu-allocator picks for wgpu's GPU-only buffers: the first (lowest
    /// index) that the buffer allows, that wgpu-hal uses at all (flags within those it knows,
    /// so never protected memory) and that is DEVICE_LOCAL.
    pub(super) fn memory_type(
        properties: &vk::PhysicalDeviceMemoryProperties,
        allowed: u32,
    ) -> Option<u32> {
        let known = vk::MemoryPropertyFlags::DEVICE_LOCAL
            | vk::MemoryPropertyFlags::HOST_VISIBLE
            | vk::MemoryPropertyFlags::HOST_COHERENT
            | vk::MemoryPropertyFlags::HOST_CACHED
            | vk::MemoryPropertyFlags::LAZILY_ALLOCATED;
        let count = (properties.memory_type_count as usize).min(vk::MAX_MEMORY_TYPES);
        (0..count).map(|i| i as u32).find(|&i| {
            let flags = properties.memory_types[i as usize].property_flags;
            allowed & (1 << i) != 0
                && known.contains(flags)
                && flags.contains(vk::MemoryPropertyFlags::DEVICE_LOCAL)
        })
    }

    fn is_out_of_memory(result: vk::Result) -> bool {
        matches!(
            result,
            vk::Result::ERROR_OUT_OF_DEVICE_MEMORY | vk::Result::ERROR_OUT_OF_HOST_MEMORY
        )
    }

    pub(super) fn buffer(
        device: &wgpu::Device,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
        what: &str,
        out_of_memory: &dyn Fn(String) -> Error,
    ) -> Result<wgpu::Buffer> {
        let failed = |call: &str, result: vk::Result| {
            let cause = format!("{call} ({label}, {size} bytes): {result}");
            if is_out_of_memory(result) {
                out_of_memory(cause)
            } else {
                Error::wgpu(what, cause)
            }
        };
        // SAFETY: the hal device is wgpu's, alive while `device` is; the guard is dropped
        // before wgpu is called again.
        let Some(hal) = (unsafe { device.as_hal::<Vulkan>() }) else {
            return Err(Error::wgpu(what, "dedicated buffers need a Vulkan device"));
        };
        let raw = hal.raw_device();
        // wgpu-core sizes the Vulkan buffer up to whole 4-byte words.
        let vk_size = size.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let info = vk::BufferCreateInfo::default()
            .size(vk_size)
            .usage(vk_usage(usage))
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: a valid create info on wgpu's live device; the buffer is destroyed below on
        // every path that does not hand it to wgpu.
        let vk_buffer = unsafe { raw.create_buffer(&info, None) }
            .map_err(|result| failed("vkCreateBuffer", result))?;
        // SAFETY: `vk_buffer` was just created on this device and is not yet destroyed.
        let destroy = || unsafe { raw.destroy_buffer(vk_buffer, None) };
        // SAFETY: `vk_buffer` is a live buffer of this device.
        let requirements = unsafe { raw.get_buffer_memory_requirements(vk_buffer) };
        // SAFETY: reads the physical device's properties through wgpu's live instance.
        let properties = unsafe {
            hal.shared_instance()
                .raw_instance()
                .get_physical_device_memory_properties(hal.raw_physical_device())
        };
        let Some(type_index) = memory_type(&properties, requirements.memory_type_bits) else {
            destroy();
            return Err(Error::wgpu(
                what,
                format!("no device-local memory type for {label}"),
            ));
        };
        // As gpu-allocator does: a request larger than the heap is out of memory, not a call
        // that the validation layers complain about.
        let heap = properties.memory_types[type_index as usize].heap_index as usize;
        if requirements.size > properties.memory_heaps[heap].size {
            destroy();
            return Err(failed(
                "vkAllocateMemory (dedicated)",
                vk::Result::ERROR_OUT_OF_DEVICE_MEMORY,
            ));
        }
        let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().buffer(vk_buffer);
        let allocate = vk::MemoryAllocateInfo::default()
            .allocation_size(requirements.size)
            .memory_type_index(type_index)
            .push_next(&mut dedicated);
        // SAFETY: the device supports dedicated allocations (`unsupported_reason` was checked
        // when the backend chose them); the info names a live buffer of this device and a
        // memory type it allows.
        let memory = match unsafe { raw.allocate_memory(&allocate, None) } {
            Ok(memory) => memory,
            Err(result) => {
                destroy();
                return Err(failed("vkAllocateMemory (dedicated)", result));
            }
        };
        // SAFETY: binds fresh memory of the required size and type at offset 0 (a dedicated
        // allocation must be bound at 0) to the buffer it was allocated for.
        if let Err(result) = unsafe { raw.bind_buffer_memory(vk_buffer, memory, 0) } {
            // SAFETY: the memory is not bound and not handed over; freed once, here.
            unsafe { raw.free_memory(memory, None) };
            destroy();
            return Err(failed("vkBindBufferMemory", result));
        }
        // SAFETY: the buffer and its memory are this device's, bound, and used by nothing but
        // wgpu from here on; offset and size describe the whole allocation. wgpu-hal destroys
        // the buffer and frees the memory when wgpu destroys the buffer (`destroy_buffer`,
        // `BufferMemoryBacking::VulkanMemory`).
        let hal_buffer = unsafe {
            wgpu::hal::vulkan::Buffer::from_raw_managed(vk_buffer, memory, 0, requirements.size)
        };
        drop(hal);
        let descriptor = wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        };
        // SAFETY: the buffer was created on this device's handle with the usage flags wgpu
        // gives `usage` and at least `size` bytes, not mapped, of non-zero size. wgpu takes it
        // as initialised (it will not zero it): its contents are undefined until the upload or
        // random fill that `prepare_caches` always runs right after allocating, and nothing
        // reads a cache before that. Errors wgpu finds here reach the caller's error scope.
        Ok(unsafe { device.create_buffer_from_hal::<Vulkan>(hal_buffer, &descriptor) })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn usage_flags_are_what_wgpu_gives_the_caches() {
            let caches = wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST;
            assert_eq!(
                vk_usage(caches),
                vk::BufferUsageFlags::STORAGE_BUFFER
                    | vk::BufferUsageFlags::TRANSFER_SRC
                    | vk::BufferUsageFlags::TRANSFER_DST
            );
            // COPY_DST even when not asked for: wgpu-core adds it to clear buffers lazily.
            assert_eq!(
                vk_usage(wgpu::BufferUsages::STORAGE),
                vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_DST
            );
        }

        fn properties(types: &[vk::MemoryPropertyFlags]) -> vk::PhysicalDeviceMemoryProperties {
            let mut properties = vk::PhysicalDeviceMemoryProperties {
                memory_type_count: types.len() as u32,
                ..Default::default()
            };
            for (slot, &flags) in properties.memory_types.iter_mut().zip(types) {
                slot.property_flags = flags;
            }
            properties
        }

        #[test]
        fn memory_type_is_the_first_allowed_device_local_one_wgpu_uses() {
            use vk::MemoryPropertyFlags as F;
            // The H100's: host memory, then device-local, then device-local host-visible.
            let h100 = properties(&[
                F::HOST_VISIBLE | F::HOST_COHERENT,
                F::DEVICE_LOCAL,
                F::HOST_VISIBLE | F::HOST_COHERENT | F::HOST_CACHED,
                F::empty(),
                F::DEVICE_LOCAL | F::HOST_VISIBLE | F::HOST_COHERENT,
            ]);
            assert_eq!(memory_type(&h100, 0b11111), Some(1));
            assert_eq!(memory_type(&h100, 0b10101), Some(4));
            assert_eq!(memory_type(&h100, 0b00101), None);
            // Protected memory is a type wgpu never uses.
            let protected = properties(&[F::DEVICE_LOCAL | F::PROTECTED, F::DEVICE_LOCAL]);
            assert_eq!(memory_type(&protected, 0b11), Some(1));
        }
    }
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "windows",
    target_os = "android",
    target_os = "freebsd"
)))]
mod imp {
    use crate::error::{Error, Result};

    pub(super) fn unsupported_reason(_device: &wgpu::Device) -> Option<String> {
        Some("this build has no Vulkan support on this platform".into())
    }

    pub(super) fn buffer(
        _device: &wgpu::Device,
        _label: &str,
        _size: u64,
        _usage: wgpu::BufferUsages,
        what: &str,
        _out_of_memory: &dyn Fn(String) -> Error,
    ) -> Result<wgpu::Buffer> {
        Err(Error::wgpu(what, "dedicated buffers need Vulkan"))
    }
}
