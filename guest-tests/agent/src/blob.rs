//! A guest blob on a scanout: a `BLOB_MEM_GUEST` resource made with the virtio-gpu driver's
//! own ioctl (DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB), mapped and filled by the CPU, and set
//! as the CRTC's framebuffer. The kernel then shows it with SET_SCANOUT_BLOB (not
//! SET_SCANOUT), and the host reads the picture straight from guest memory.

use std::os::fd::AsRawFd;
use std::time::Duration;

use drm::buffer::DrmFourcc;
use drm::control::Device as ControlDevice;

use crate::{quadrant, say, Card, Output, Rgb};

/// Quadrant colours of the blob picture.
pub const BLOB: [Rgb; 4] = [[0, 0, 255], [255, 0, 0], [0, 255, 0], [255, 255, 255]];

/// include/uapi/drm/virtgpu_drm.h: struct drm_virtgpu_resource_create_blob.
#[repr(C)]
#[derive(Default)]
struct CreateBlob {
    blob_mem: u32,
    blob_flags: u32,
    bo_handle: u32,
    res_handle: u32,
    size: u64,
    pad: u32,
    cmd_size: u32,
    cmd: u64,
    blob_id: u64,
}

/// struct drm_virtgpu_map.
#[repr(C)]
#[derive(Default)]
struct Map {
    offset: u64,
    handle: u32,
    pad: u32,
}

const VIRTGPU_BLOB_MEM_GUEST: u32 = 1;
const VIRTGPU_BLOB_FLAG_USE_MAPPABLE: u32 = 1;
const VIRTGPU_BLOB_FLAG_USE_SHAREABLE: u32 = 2;

/// _IOWR('d', DRM_COMMAND_BASE + nr, size).
const fn iowr(nr: u32, size: usize) -> libc::c_ulong {
    ((3u32 << 30) | ((size as u32) << 16) | ((b'd' as u32) << 8) | (0x40 + nr)) as libc::c_ulong
}
const DRM_IOCTL_VIRTGPU_MAP: libc::c_ulong = iowr(0x01, std::mem::size_of::<Map>());
const DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB: libc::c_ulong =
    iowr(0x0a, std::mem::size_of::<CreateBlob>());

/// A framebuffer description for `add_framebuffer`.
struct BlobFb {
    w: u32,
    h: u32,
    handle: drm::buffer::Handle,
}

impl drm::buffer::Buffer for BlobFb {
    fn size(&self) -> (u32, u32) {
        (self.w, self.h)
    }
    fn format(&self) -> DrmFourcc {
        DrmFourcc::Xrgb8888
    }
    fn pitch(&self) -> u32 {
        self.w * 4
    }
    fn handle(&self) -> drm::buffer::Handle {
        self.handle
    }
}

fn ioctl<T>(card: &Card, req: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), String> {
    // SAFETY: `req` is the ioctl whose argument is a `T` (the structs above mirror the kernel
    // UAPI's layout), and `arg` is a live, exclusive reference to one for the call's duration.
    let r = unsafe { libc::ioctl(card.0.as_raw_fd(), req, arg as *mut T) };
    if r < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Shows the blob picture on the first connector for `hold`.
pub fn blob(card: &Card, outs: &[Output], hold: Duration) -> Result<(), String> {
    let o = &outs[0];
    let (w, h) = o.mode.size();
    let (w, h) = (u32::from(w), u32::from(h));
    let len = (w as usize) * 4 * (h as usize);
    let size = len.div_ceil(4096) * 4096;
    let mut create = CreateBlob {
        blob_mem: VIRTGPU_BLOB_MEM_GUEST,
        blob_flags: VIRTGPU_BLOB_FLAG_USE_MAPPABLE | VIRTGPU_BLOB_FLAG_USE_SHAREABLE,
        size: size as u64,
        ..Default::default()
    };
    ioctl(
        card,
        DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB,
        &mut create,
        "create guest blob",
    )?;
    say(format!(
        "blob resource {} ({size} bytes, guest memory)",
        create.res_handle
    ));
    let mut map = Map {
        handle: create.bo_handle,
        ..Default::default()
    };
    ioctl(card, DRM_IOCTL_VIRTGPU_MAP, &mut map, "map guest blob")?;
    let offset = libc::off_t::try_from(map.offset).map_err(|_| "map offset")?;
    // SAFETY: a new shared mapping of `size` bytes of the blob the kernel just made for this
    // fd at `offset`; nothing else in this process uses that range, which is unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            card.0.as_raw_fd(),
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!("mmap blob: {}", std::io::Error::last_os_error()));
    }
    {
        // SAFETY: `ptr` is the start of the `size`-byte mapping above, readable and writable,
        // and this slice is its only user until munmap.
        let px = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), size) };
        for (i, p) in px[..len].chunks_exact_mut(4).enumerate() {
            let (x, y) = ((i as u32) % w, (i as u32) / w);
            let [r, g, b] = BLOB[quadrant(x, y, w, h)];
            p.copy_from_slice(&[b, g, r, 0xff]);
        }
    }
    // SAFETY: unmaps exactly the mapping made above; the slice over it has gone.
    unsafe { libc::munmap(ptr, size) };
    let handle = std::num::NonZeroU32::new(create.bo_handle).ok_or("blob handle 0")?;
    let fbd = BlobFb {
        w,
        h,
        handle: drm::buffer::Handle::from(handle),
    };
    let fb = card
        .add_framebuffer(&fbd, 24, 32)
        .map_err(|e| format!("addfb blob: {e}"))?;
    card.set_crtc(o.crtc, Some(fb), (0, 0), &[o.conn], Some(o.mode))
        .map_err(|e| format!("set crtc with the blob: {e}"))?;
    say("blob shown");
    std::thread::sleep(hold);
    let _ = card.destroy_framebuffer(fb);
    let _ = card.close_buffer(fbd.handle);
    Ok(())
}
