//! Resources and their memory: 2D, 3D and blob creation, backing, transfers, UUIDs and
//! `--max-host-memory` accounting.

use std::sync::Arc;

use virgl_bridge::{Rect, Resource3d, Transfer3d, BYTES_PER_PIXEL};
use vm_memory::GuestMemoryMmap;

use super::{
    format, invalid, Backing, GpuDevice, GpuError, GpuResult, Resource, Scanout, BLOB_FLAGS_ALL,
    BLOB_MEM_GUEST, BLOB_MEM_HOST3D, BLOB_MEM_HOST3D_GUEST, PIPE_BUFFER, PIPE_TEXTURE_3D,
    PIPE_TEXTURE_CUBE,
};
use crate::protocol::GpuResponse;

/// Rough host bytes of a 3D resource: 4 bytes a texel (1 for buffers), times layers, samples,
/// and 2 for a mip chain. An estimate for `--max-host-memory`, never below the real size of
/// formats of up to 4 bytes a texel.
pub(super) fn estimate_3d(a: &Resource3d) -> u64 {
    let bpp = if a.target == PIPE_BUFFER { 1 } else { 4 };
    let faces = if a.target == PIPE_TEXTURE_CUBE { 6 } else { 1 };
    [
        u64::from(a.width),
        u64::from(a.height.max(1)),
        u64::from(a.depth.max(1)),
        u64::from(a.array_size.max(1)),
        u64::from(a.nr_samples.max(1)),
        faces,
        bpp,
        if a.last_level > 0 { 2 } else { 1 },
    ]
    .iter()
    .try_fold(1u64, |acc, &v| acc.checked_mul(v))
    .unwrap_or(u64::MAX)
}

/// A random (version 4) UUID.
pub(super) fn new_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    let mut filled = 0;
    while filled < u.len() {
        // SAFETY: the pointer and length name the unfilled tail of `u`, a live local array;
        // getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(u[filled..].as_mut_ptr().cast(), u.len() - filled, 0) };
        if n <= 0 {
            break;
        }
        filled += n as usize;
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

impl GpuDevice {
    pub(super) fn create_blob(
        &mut self,
        ctx_id: u32,
        id: u32,
        (blob_mem, blob_flags, blob_id, size): (u32, u32, u64, u64),
        entries: Vec<(u64, u32)>,
        mem: &Arc<GuestMemoryMmap>,
    ) -> GpuResult {
        self.check_new_resource(id)?;
        if blob_flags & !BLOB_FLAGS_ALL != 0 {
            return Err(invalid(format!("blob flags {blob_flags:#x}")));
        }
        if size == 0 {
            return Err(invalid("blob of size 0"));
        }
        let (backing, iovecs, host_bytes) = match blob_mem {
            BLOB_MEM_GUEST | BLOB_MEM_HOST3D_GUEST => {
                if entries.is_empty() {
                    return Err(invalid("guest blob without memory entries"));
                }
                let (b, iov) = Backing::map(entries, mem)?;
                if b.len < size {
                    return Err(invalid(format!(
                        "blob of {size} bytes over {} bytes of entries",
                        b.len
                    )));
                }
                // Guest memory: nothing for the host to allocate, but for HOST3D_GUEST's copy.
                let host = if blob_mem == BLOB_MEM_GUEST { 0 } else { size };
                (Some(b), iov, host)
            }
            BLOB_MEM_HOST3D => {
                if !entries.is_empty() {
                    return Err(invalid("host blob with guest memory entries"));
                }
                self.context(ctx_id)?;
                (None, Vec::new(), size)
            }
            other => return Err(invalid(format!("blob_mem {other}"))),
        };
        let total = self.host_mem.saturating_add(host_bytes);
        if total > self.config.max_host_memory {
            return Err(GpuError::OutOfMemory(format!(
                "blob of {size} bytes; {} of {} in use",
                self.host_mem, self.config.max_host_memory
            )));
        }
        let ctx = if self.contexts.contains_key(&ctx_id) {
            ctx_id
        } else {
            0
        };
        self.renderer
            .create_blob(ctx, id, blob_mem, blob_flags, blob_id, size, iovecs)?;
        self.host_mem = total;
        if let Some(c) = self.contexts.get_mut(&ctx) {
            // virglrenderer attaches a blob to the context that made it.
            c.resources.insert(id);
        }
        self.resources.insert(
            id,
            Resource {
                format: 0,
                width: 0,
                height: 0,
                args3d: None,
                blob_mem: Some(blob_mem),
                blob_flags,
                size: host_bytes,
                backing,
                uuid: None,
            },
        );
        Ok(GpuResponse::OkNoData)
    }

    /// A new resource id must be non-zero and unused, and the guest under its resource cap
    /// (each resource costs host bookkeeping that `--max-host-memory` does not see).
    pub(super) fn check_new_resource(&self, id: u32) -> Result<(), GpuError> {
        if id == 0 || self.resources.contains_key(&id) {
            return Err(GpuError::InvalidResource(id));
        }
        if self.resources.len() >= self.config.max_resources as usize {
            return Err(GpuError::OutOfMemory(format!(
                "{} resources, the limit (--max-resources)",
                self.resources.len()
            )));
        }
        Ok(())
    }

    pub(super) fn create_3d(&mut self, id: u32, a: Resource3d) -> GpuResult {
        self.check_new_resource(id)?;
        if a.width == 0 {
            return Err(invalid("zero width"));
        }
        let size = estimate_3d(&a);
        let total = self.host_mem.saturating_add(size);
        if total > self.config.max_host_memory {
            return Err(GpuError::OutOfMemory(format!(
                "3D resource of ~{size} bytes; {} of {} in use",
                self.host_mem, self.config.max_host_memory
            )));
        }
        self.renderer.create_3d(id, &a)?;
        self.host_mem = total;
        self.resources.insert(
            id,
            Resource {
                format: a.format,
                width: a.width,
                height: a.height.max(1),
                args3d: Some(a),
                blob_mem: None,
                blob_flags: 0,
                size,
                backing: None,
                uuid: None,
            },
        );
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn transfer_3d(
        &mut self,
        ctx_id: u32,
        id: u32,
        t: &Transfer3d,
        to_host: bool,
    ) -> GpuResult {
        if ctx_id != 0 && !self.context(ctx_id)?.resources.contains(&id) {
            self.resource(id)?;
            return Err(invalid(format!(
                "resource {id} is not attached to context {ctx_id}"
            )));
        }
        let res = self.resource(id)?;
        let a = res.args3d.unwrap_or(Resource3d {
            target: 2,
            width: res.width,
            height: res.height,
            depth: 1,
            array_size: 1,
            ..Default::default()
        });
        if t.level > a.last_level {
            return Err(invalid(format!("level {} of {}", t.level, a.last_level)));
        }
        let at_level = |v: u32| (v >> t.level.min(31)).max(1);
        let layers = if a.target == PIPE_TEXTURE_3D {
            at_level(a.depth)
        } else if a.target == PIPE_TEXTURE_CUBE {
            6
        } else {
            a.array_size.max(1)
        };
        let fits = |o: u32, n: u32, lim: u32| matches!(o.checked_add(n), Some(e) if e <= lim);
        let b = t.bx;
        if !fits(b.x, b.w, at_level(a.width))
            || !fits(b.y, b.h, at_level(a.height))
            || !fits(b.z, b.d, layers)
        {
            return Err(invalid(format!(
                "box {b:?} outside resource {id} at level {}",
                t.level
            )));
        }
        let backing = res
            .backing
            .as_ref()
            .ok_or_else(|| invalid(format!("resource {id} has no backing")))?;
        if t.offset > backing.len {
            return Err(invalid(format!(
                "offset {} past {} bytes of backing",
                t.offset, backing.len
            )));
        }
        if to_host {
            self.renderer.transfer_to_host_3d(ctx_id, id, t)?;
        } else {
            self.renderer.transfer_from_host_3d(ctx_id, id, t)?;
        }
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn create_2d(&mut self, id: u32, fmt: u32, width: u32, height: u32) -> GpuResult {
        self.check_new_resource(id)?;
        if !format::ALL.contains(&fmt) {
            return Err(invalid(format!("format {fmt}")));
        }
        if width == 0 || height == 0 {
            return Err(invalid(format!("size {width}x{height}")));
        }
        let size = u64::from(width)
            .checked_mul(u64::from(height))
            .and_then(|v| v.checked_mul(u64::from(BYTES_PER_PIXEL)))
            .unwrap_or(u64::MAX);
        let total = self.host_mem.saturating_add(size);
        if total > self.config.max_host_memory {
            return Err(GpuError::OutOfMemory(format!(
                "{width}x{height} needs {size} bytes; {} of {} in use",
                self.host_mem, self.config.max_host_memory
            )));
        }
        self.renderer.create_2d(id, fmt, width, height)?;
        self.host_mem = total;
        self.resources.insert(
            id,
            Resource {
                format: fmt,
                width,
                height,
                args3d: None,
                blob_mem: None,
                blob_flags: 0,
                size,
                backing: None,
                uuid: None,
            },
        );
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn unref(&mut self, id: u32) -> GpuResult {
        self.resource(id)?;
        self.unmap_if_mapped(id);
        let res = self
            .resources
            .remove(&id)
            .ok_or(GpuError::InvalidResource(id))?;
        self.host_mem = self.host_mem.saturating_sub(res.size);
        for c in self.contexts.values_mut() {
            c.resources.remove(&id);
        }
        for (i, s) in self.scanouts.iter_mut().enumerate() {
            if s.resource_id == id {
                *s = Scanout::default();
                self.display.scanout(i as u32, 0, 0);
            }
        }
        // The renderer drops its iovecs before `res` (and with it the memory mapping) goes.
        let res_size = res.size;
        let r = self.renderer.unref(id);
        drop(res);
        if res_size >= 1 << 20 {
            // Hand freed pages back to the host now: the iovec and entry lists of a big
            // resource are small allocations that would otherwise linger in malloc's arenas.
            // SAFETY: malloc_trim only releases free memory of the allocator; no pointers held.
            unsafe {
                libc::malloc_trim(0);
            }
        }
        r?;
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn transfer_to_host_2d(&mut self, id: u32, rect: Rect, offset: u64) -> GpuResult {
        let res = self.resource(id)?;
        if !rect.fits_in(res.width, res.height) {
            return Err(invalid(format!(
                "rect {rect:?} in a {}x{} resource",
                res.width, res.height
            )));
        }
        if rect.is_empty() {
            return Ok(GpuResponse::OkNoData);
        }
        let backing = res
            .backing
            .as_ref()
            .ok_or_else(|| invalid(format!("resource {id} has no backing")))?;
        // The rect's source: `height` rows of `width * 4` bytes, `stride` apart, from `offset`.
        let end = u64::from(rect.height - 1)
            .checked_mul(res.stride())
            .and_then(|v| v.checked_add(u64::from(rect.width) * u64::from(BYTES_PER_PIXEL)))
            .and_then(|v| v.checked_add(offset));
        match end {
            Some(end) if end <= backing.len => {}
            _ => {
                return Err(invalid(format!(
                    "transfer of {rect:?} at offset {offset} overruns {} bytes of backing",
                    backing.len
                )))
            }
        }
        self.renderer.transfer_to_host_2d(id, rect, offset)?;
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn attach_backing(
        &mut self,
        id: u32,
        entries: Vec<(u64, u32)>,
        mem: &Arc<GuestMemoryMmap>,
    ) -> GpuResult {
        let res = self.resource(id)?;
        if res.blob_mem.is_some() {
            return Err(invalid(format!(
                "resource {id} is a blob: its memory came with it"
            )));
        }
        if res.backing.is_some() {
            return Err(GpuError::Unspec(format!(
                "resource {id} already has backing"
            )));
        }
        if entries.is_empty() {
            return Err(invalid("attach-backing with no entries"));
        }
        let (backing, iovecs) = Backing::map(entries, mem)?;
        self.renderer.attach_backing(id, iovecs)?;
        if let Some(res) = self.resources.get_mut(&id) {
            res.backing = Some(backing);
        }
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn detach_backing(&mut self, id: u32) -> GpuResult {
        let res = self.resource(id)?;
        if res.backing.is_none() {
            return Err(GpuError::Unspec(format!("resource {id} has no backing")));
        }
        if res.blob_mem.is_some() {
            return Err(invalid(format!(
                "resource {id} is a blob: its memory stays with it"
            )));
        }
        self.renderer.detach_backing(id)?;
        if let Some(res) = self.resources.get_mut(&id) {
            res.backing = None;
        }
        Ok(GpuResponse::OkNoData)
    }

    pub(super) fn assign_uuid(&mut self, id: u32) -> GpuResult {
        let res = self
            .resources
            .get_mut(&id)
            .ok_or(GpuError::InvalidResource(id))?;
        let uuid = *res.uuid.get_or_insert_with(new_uuid);
        Ok(GpuResponse::OkResourceUuid(uuid))
    }
}
