//! Whether Venus can work on this host: the Vulkan drivers the render server would find.
//!
//! virglrenderer accepts the Venus flag whether or not a Vulkan driver works; a guest learns
//! the difference only when its first `vkCreateInstance` fails. So the host's Vulkan loader
//! is asked here (in the caller's probe process, never in the serving one: drivers start
//! threads and leave state behind) for its physical devices, and Venus is offered only when
//! one of them can back it: Vulkan 1.1 with `VK_KHR_external_memory_fd`, which the render
//! server needs to hand blob memory out as file descriptors.

use std::ffi::CStr;

use ash::vk;

/// A Vulkan physical device the host's loader enumerates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VulkanDevice {
    /// `deviceName`, e.g. "llvmpipe (LLVM 19.1.7, 256 bits)".
    pub name: String,
    /// The device's Vulkan version, "major.minor.patch".
    pub api: String,
    /// "cpu" (lavapipe), "integrated", "discrete", "virtual" or "other".
    pub kind: &'static str,
    /// Whether it can back Venus (Vulkan 1.1 and `VK_KHR_external_memory_fd`).
    pub usable: bool,
}

fn kind(t: vk::PhysicalDeviceType) -> &'static str {
    match t {
        vk::PhysicalDeviceType::CPU => "cpu",
        vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated",
        vk::PhysicalDeviceType::DISCRETE_GPU => "discrete",
        vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual",
        _ => "other",
    }
}

/// The host's Vulkan devices, or why there are none to ask (no loader, no driver).
pub fn probe_vulkan() -> Result<Vec<VulkanDevice>, String> {
    // SAFETY: loads the system's Vulkan loader (libvulkan.so.1) with dlopen; its entry points
    // are resolved by ash and used only through ash's typed wrappers below.
    let entry = unsafe { ash::Entry::load() }
        .map_err(|e| format!("no Vulkan loader (libvulkan.so.1): {e}"))?;
    let app = vk::ApplicationInfo::default()
        .application_name(c"vhost-gpu venus probe")
        .api_version(vk::API_VERSION_1_1);
    let info = vk::InstanceCreateInfo::default().application_info(&app);
    // SAFETY: `info` and what it points to live across the call.
    let instance = unsafe { entry.create_instance(&info, None) }
        .map_err(|e| format!("vkCreateInstance: {e} (no Vulkan driver?)"))?;
    let mut out = Vec::new();
    // SAFETY: a live instance; the physical devices belong to it and are used before it is
    // destroyed at the end of this function.
    let result = unsafe { instance.enumerate_physical_devices() };
    if let Ok(devices) = &result {
        for &pd in devices {
            // SAFETY: `pd` came from this instance.
            let props = unsafe { instance.get_physical_device_properties(pd) };
            // SAFETY: as above.
            let exts =
                unsafe { instance.enumerate_device_extension_properties(pd) }.unwrap_or_default();
            let has_fd = exts.iter().any(|e| {
                e.extension_name_as_c_str()
                    .is_ok_and(|n| n == ash::khr::external_memory_fd::NAME)
            });
            let v = props.api_version;
            let name = props
                .device_name_as_c_str()
                .map(CStr::to_string_lossy)
                .unwrap_or_default()
                .into_owned();
            out.push(VulkanDevice {
                name,
                api: format!(
                    "{}.{}.{}",
                    vk::api_version_major(v),
                    vk::api_version_minor(v),
                    vk::api_version_patch(v)
                ),
                kind: kind(props.device_type),
                usable: v >= vk::API_VERSION_1_1 && has_fd,
            });
        }
    }
    // SAFETY: nothing made from the instance outlives it.
    unsafe { instance.destroy_instance(None) };
    result.map_err(|e| format!("vkEnumeratePhysicalDevices: {e}"))?;
    Ok(out)
}
