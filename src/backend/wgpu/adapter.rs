//! Finding the adapter to open: real GPUs before software ones, native APIs before OpenGL, a
//! name to match if the user gives one.

use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::options::WgpuApi;

pub(super) fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        backend: Kind::Wgpu,
        reason: reason.into(),
    }
}

pub(super) fn describe_adapter(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({}, {:?})",
        info.name,
        info.backend.to_str(),
        info.device_type
    )
}

/// The adapter to open: the first whose name contains `name` (case-insensitive), else the best
/// one (see [`choose_adapter`]).
pub(super) fn find_adapter(
    name: Option<&str>,
    index: Option<usize>,
    hardware_only: bool,
    api: WgpuApi,
) -> Result<wgpu::Adapter> {
    let mut adapters = enumerate(api);
    let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
    let chosen = choose_adapter(&infos, name, index, hardware_only)?;
    Ok(adapters.swap_remove(chosen))
}

/// The adapters of `api`, in the order wgpu lists them (what `--device N` counts).
pub fn list(api: WgpuApi) -> Vec<wgpu::AdapterInfo> {
    enumerate(api).iter().map(|a| a.get_info()).collect()
}

fn enumerate(api: WgpuApi) -> Vec<wgpu::Adapter> {
    // The API comes from the options (`--wgpu-api`), never from wgpu's environment variables
    // (WGPU_BACKEND): what runs must be what the report says. By default the native APIs:
    // OpenGL lacks what the fast paths need (many storage bindings per stage).
    let backends = match api {
        WgpuApi::Native => wgpu::Backends::PRIMARY,
        WgpuApi::Vulkan => wgpu::Backends::VULKAN,
        WgpuApi::Metal => wgpu::Backends::METAL,
        WgpuApi::Dx12 => wgpu::Backends::DX12,
        WgpuApi::Gl => wgpu::Backends::GL,
    };
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = backends;
    let instance = wgpu::Instance::new(descriptor);
    pollster::block_on(instance.enumerate_adapters(backends))
}

/// Preference among adapters: real GPUs first, software last.
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    // OpenGL's compute support is the weakest; prefer the native APIs on the same device.
    let api = u8::from(info.backend == wgpu::Backend::Gl);
    (device, api)
}

/// Index of the adapter to open among `adapters`: the first whose name contains `name`
/// (case-insensitive) if given, of the best kind (see [`adapter_rank`]), software ones refused
/// with `hardware_only`.
fn choose_adapter(
    adapters: &[wgpu::AdapterInfo],
    name: Option<&str>,
    index: Option<usize>,
    hardware_only: bool,
) -> Result<usize> {
    if adapters.is_empty() {
        return Err(unavailable(
            "no GPU adapter found (on Linux without a GPU, install mesa-vulkan-drivers for \
             the lavapipe software adapter)",
        ));
    }
    let found = || {
        adapters
            .iter()
            .enumerate()
            .map(|(i, info)| format!("{i}: {}", describe_adapter(info)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut candidates: Vec<usize> = match index {
        Some(i) if i < adapters.len() => vec![i],
        Some(i) => {
            return Err(unavailable(format!(
                "no adapter {i}; adapters found: {}",
                found()
            )))
        }
        None => (0..adapters.len()).collect(),
    };
    if let Some(name) = name {
        let wanted = name.to_lowercase();
        candidates.retain(|&i| adapters[i].name.to_lowercase().contains(&wanted));
        if candidates.is_empty() {
            return Err(unavailable(format!(
                "no adapter{} contains `{name}` in its name; adapters found: {}",
                index
                    .map(|i| format!(" (of device {i})"))
                    .unwrap_or_default(),
                found()
            )));
        }
    }
    if hardware_only {
        candidates.retain(|&i| adapters[i].device_type != wgpu::DeviceType::Cpu);
        if candidates.is_empty() {
            return Err(unavailable(format!(
                "only software adapters were found or chosen ({}); the CPU backend is faster",
                found()
            )));
        }
    }
    // The first of the best rank, in the order wgpu lists them.
    candidates
        .into_iter()
        .min_by_key(|&i| (adapter_rank(&adapters[i]), i))
        .ok_or_else(|| unavailable("no adapter left to choose"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_choice() {
        let info = |name: &str, device_type, backend| wgpu::AdapterInfo {
            name: name.into(),
            ..wgpu::AdapterInfo::new(device_type, backend)
        };
        let lavapipe = info("llvmpipe", wgpu::DeviceType::Cpu, wgpu::Backend::Vulkan);
        let h100_gl = info(
            "NVIDIA H100",
            wgpu::DeviceType::DiscreteGpu,
            wgpu::Backend::Gl,
        );
        let h100 = info(
            "NVIDIA H100",
            wgpu::DeviceType::DiscreteGpu,
            wgpu::Backend::Vulkan,
        );
        let igpu = info(
            "Intel UHD",
            wgpu::DeviceType::IntegratedGpu,
            wgpu::Backend::Vulkan,
        );
        let all = [lavapipe.clone(), igpu, h100_gl, h100];
        assert_eq!(choose_adapter(&all, None, None, false).unwrap(), 3);
        assert_eq!(choose_adapter(&all, Some("intel"), None, true).unwrap(), 1);
        assert_eq!(choose_adapter(&all, Some("LLVM"), None, false).unwrap(), 0);
        // An index picks that adapter, whatever its rank; out of range, or software with
        // hardware_only, it is refused.
        assert_eq!(choose_adapter(&all, None, Some(1), false).unwrap(), 1);
        assert_eq!(choose_adapter(&all, None, Some(0), false).unwrap(), 0);
        assert!(choose_adapter(&all, None, Some(4), false).is_err());
        assert!(choose_adapter(&all, None, Some(0), true).is_err());
        assert!(choose_adapter(&all, Some("intel"), Some(3), false).is_err());
        let only_software = [lavapipe];
        assert_eq!(
            choose_adapter(&only_software, None, None, false).unwrap(),
            0
        );
        for error in [
            choose_adapter(&[], None, None, false).unwrap_err(),
            choose_adapter(&only_software, None, None, true).unwrap_err(),
            choose_adapter(&all, Some("radeon"), None, false).unwrap_err(),
        ] {
            assert!(matches!(
                error,
                Error::Unavailable {
                    backend: Kind::Wgpu,
                    ..
                }
            ));
            assert!(!error.to_string().contains('\n'), "{error}");
        }
        assert!(choose_adapter(&[], None, None, false)
            .unwrap_err()
            .to_string()
            .contains("mesa-vulkan-drivers"));
    }
}
