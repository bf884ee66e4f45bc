//! Free device memory, which wgpu does not expose: Vulkan's memory budget
//! (`VK_EXT_memory_budget`), read through wgpu's own Vulkan handles with `ash`.

/// Free memory of a Vulkan device's largest device-local heap (`VK_EXT_memory_budget`): the
/// budget the driver gives this process minus what it already uses. `None` elsewhere.
#[cfg(any(
    target_os = "linux",
    target_os = "windows",
    target_os = "android",
    target_os = "freebsd"
))]
pub(super) fn memory_budget(device: &wgpu::Device) -> Option<u64> {
    use ash::vk;
    // SAFETY: only reads properties through the handles wgpu owns, which outlive this call.
    unsafe {
        let hal = device.as_hal::<wgpu::hal::api::Vulkan>()?;
        if !hal
            .enabled_device_extensions()
            .contains(&ash::ext::memory_budget::NAME)
        {
            return None;
        }
        let shared = hal.shared_instance();
        let mut budget = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
        let mut properties = vk::PhysicalDeviceMemoryProperties2::default().push_next(&mut budget);
        // Vulkan 1.1 has the query in core; before that it needs the KHR extension (ash
        // would panic calling a core function the instance does not have).
        if shared.instance_api_version() >= vk::API_VERSION_1_1 {
            shared
                .raw_instance()
                .get_physical_device_memory_properties2(hal.raw_physical_device(), &mut properties);
        } else if shared
            .extensions()
            .contains(&ash::khr::get_physical_device_properties2::NAME)
        {
            ash::khr::get_physical_device_properties2::Instance::new(
                shared.entry(),
                shared.raw_instance(),
            )
            .get_physical_device_memory_properties2(hal.raw_physical_device(), &mut properties);
        } else {
            return None;
        }
        let heaps = properties.memory_properties.memory_heap_count as usize;
        let memory_heaps = properties.memory_properties.memory_heaps;
        (0..heaps.min(vk::MAX_MEMORY_HEAPS))
            .filter(|&i| {
                memory_heaps[i]
                    .flags
                    .contains(vk::MemoryHeapFlags::DEVICE_LOCAL)
            })
            .map(|i| budget.heap_budget[i].saturating_sub(budget.heap_usage[i]))
            .max()
    }
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "windows",
    target_os = "android",
    target_os = "freebsd"
)))]
pub(super) fn memory_budget(_device: &wgpu::Device) -> Option<u64> {
    None
}
