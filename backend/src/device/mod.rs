//! Device state and what each command does: resources, backing, scanouts, cursor, limits.
//!
//! Every guest-supplied id, rectangle, offset and address is checked here, with overflow-safe
//! arithmetic, before the renderer sees it; a bad command gets its `VIRTIO_GPU_RESP_ERR_*` and a
//! rate-limited log line, and the device keeps serving.
//!
//! This file holds the state and the dispatch of a decoded command; what the commands do is
//! split by family: `resources.rs` (create, backing, transfers, UUIDs, memory accounting),
//! `scanout.rs` (scanouts, flushes to the display, cursor, display info, EDID) and
//! `contexts.rs` (contexts and fences).

use std::collections::BTreeMap;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use virgl_bridge::{Iovec, Rect, Renderer, RendererError, Resource3d, BYTES_PER_PIXEL};

use crate::config::{DeviceConfig, Mode};
use crate::display::Display;
use crate::guest_warn;
use crate::protocol::{GpuCommand, GpuResponse, Header};

mod contexts;
mod hostmem;
mod resources;
mod scanout;

pub use hostmem::{HostVisible, SharedMemoryPort};

/// The 2D formats a guest may create (virtio-gpu format codes).
pub mod format {
    pub const B8G8R8A8: u32 = 1;
    pub const B8G8R8X8: u32 = 2;
    pub const A8R8G8B8: u32 = 3;
    pub const X8R8G8B8: u32 = 4;
    pub const R8G8B8A8: u32 = 67;
    pub const X8B8G8R8: u32 = 68;
    pub const A8B8G8R8: u32 = 121;
    pub const R8G8B8X8: u32 = 134;
    pub const ALL: [u32; 8] = [
        B8G8R8A8, B8G8R8X8, A8R8G8B8, X8R8G8B8, R8G8B8A8, X8B8G8R8, A8B8G8R8, R8G8B8X8,
    ];
}

/// Why a command failed; each maps to one response code.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("invalid resource id {0}")]
    InvalidResource(u32),
    #[error("invalid scanout id {0}")]
    InvalidScanout(u32),
    #[error("invalid context id {0}")]
    InvalidContext(u32),
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    #[error("{0}")]
    Unspec(String),
    #[error("renderer: {0}")]
    Renderer(#[from] RendererError),
}

impl GpuError {
    /// The response code the guest gets.
    pub fn response(&self) -> GpuResponse {
        match self {
            GpuError::InvalidResource(_) => GpuResponse::ErrInvalidResourceId,
            GpuError::InvalidScanout(_) => GpuResponse::ErrInvalidScanoutId,
            GpuError::InvalidContext(_) | GpuError::Renderer(RendererError::UnknownContext(_)) => {
                GpuResponse::ErrInvalidContextId
            }
            GpuError::InvalidParameter(_) => GpuResponse::ErrInvalidParameter,
            GpuError::OutOfMemory(_) => GpuResponse::ErrOutOfMemory,
            GpuError::Unspec(_) => GpuResponse::ErrUnspec,
            GpuError::Renderer(RendererError::UnknownResource(_)) => {
                GpuResponse::ErrInvalidResourceId
            }
            GpuError::Renderer(RendererError::InvalidParameter(_))
            | GpuError::Renderer(RendererError::NoBacking(_)) => GpuResponse::ErrInvalidParameter,
            GpuError::Renderer(_) => GpuResponse::ErrUnspec,
        }
    }
}

type GpuResult = Result<GpuResponse, GpuError>;

fn invalid(msg: impl Into<String>) -> GpuError {
    GpuError::InvalidParameter(msg.into())
}

/// Guest backing of a resource: the mapping that the renderer's iovecs point into is kept alive
/// here for as long as the backing is attached.
struct Backing {
    mem: Arc<GuestMemoryMmap>,
    len: u64,
    /// The guest (address, length) entries, kept for blobs the device reads itself.
    entries: Vec<(u64, u32)>,
    /// Byte offset in the backing where each entry starts (for seeking in `read_at`).
    starts: Vec<u64>,
}

impl Backing {
    /// Maps guest entries: every byte must be guest memory (a range spanning regions becomes
    /// several iovecs), and the total length must not overflow.
    fn map(
        entries: Vec<(u64, u32)>,
        mem: &Arc<GuestMemoryMmap>,
    ) -> Result<(Self, Vec<Iovec>), GpuError> {
        let mut iovecs = Vec::with_capacity(entries.len());
        let mut starts = Vec::with_capacity(entries.len());
        let mut len = 0u64;
        for &(addr, length) in &entries {
            starts.push(len);
            len = len
                .checked_add(u64::from(length))
                .ok_or_else(|| invalid("backing length overflows"))?;
            for slice in mem.get_slices(GuestAddress(addr), length as usize) {
                let slice = slice.map_err(|e| {
                    invalid(format!(
                        "backing entry {addr:#x}+{length:#x} is not guest memory: {e}"
                    ))
                })?;
                iovecs.push(Iovec {
                    base: slice.ptr_guard_mut().as_ptr(),
                    len: slice.len(),
                });
            }
        }
        let b = Backing {
            mem: Arc::clone(mem),
            len,
            entries,
            starts,
        };
        Ok((b, iovecs))
    }

    /// Copies `dst.len()` bytes starting at byte `offset` of the backing (which the caller has
    /// checked lies inside it).
    fn read_at(&self, mut offset: u64, mut dst: &mut [u8]) -> Result<(), GpuError> {
        use vm_memory::Bytes;
        // The first entry that ends past `offset`; everything before it is skipped at once.
        let first = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        offset -= self.starts.get(first).copied().unwrap_or(0);
        for &(addr, length) in self.entries.iter().skip(first) {
            if dst.is_empty() {
                break;
            }
            let length = u64::from(length);
            if offset >= length {
                offset -= length;
                continue;
            }
            let n = ((length - offset) as usize).min(dst.len());
            let (now, rest) = dst.split_at_mut(n);
            self.mem
                .read_slice(now, GuestAddress(addr + offset))
                .map_err(|e| invalid(format!("reading blob memory: {e}")))?;
            dst = rest;
            offset = 0;
        }
        if dst.is_empty() {
            Ok(())
        } else {
            Err(invalid("read past the end of the backing"))
        }
    }
}

/// How a blob is laid out as a scanout image (SET_SCANOUT_BLOB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlobLayout {
    format: u32,
    width: u32,
    height: u32,
    stride: u32,
    offset: u32,
}

/// Blob memory kinds.
const BLOB_MEM_GUEST: u32 = 1;
const BLOB_MEM_HOST3D: u32 = 2;
const BLOB_MEM_HOST3D_GUEST: u32 = 3;
const BLOB_FLAGS_ALL: u32 = 1 | 2 | 4; // MAPPABLE | SHAREABLE | CROSS_DEVICE

struct Resource {
    format: u32,
    width: u32,
    height: u32,
    /// RESOURCE_CREATE_3D's parameters (None for 2D resources).
    args3d: Option<Resource3d>,
    /// A blob's memory kind (None for other resources).
    blob_mem: Option<u32>,
    /// A blob's flags (MAPPABLE, SHAREABLE, CROSS_DEVICE); 0 for other resources.
    blob_flags: u32,
    size: u64,
    backing: Option<Backing>,
    uuid: Option<[u8; 16]>,
}

impl Resource {
    fn stride(&self) -> u64 {
        u64::from(self.width) * u64::from(BYTES_PER_PIXEL)
    }
}

/// Gallium texture targets that matter for bounds.
const PIPE_BUFFER: u32 = 0;
const PIPE_TEXTURE_3D: u32 = 3;
const PIPE_TEXTURE_CUBE: u32 = 4;

/// A rendering context and the resources attached to it.
#[derive(Default)]
struct Context {
    resources: std::collections::BTreeSet<u32>,
}

#[derive(Clone, Copy, Default)]
struct Scanout {
    resource_id: u32,
    rect: Rect,
    /// Set by SET_SCANOUT_BLOB: the image lives in the blob's guest memory.
    blob: Option<BlobLayout>,
    /// The next flush sends the whole scanout: it flipped to another resource without a
    /// SCANOUT message (see [`announces`]).
    whole: bool,
}

/// Largest scratch buffer kept between commands (a 4K frame is 33 MB).
const SCRATCH_KEEP: usize = 64 << 20;
/// Scratch always worth keeping (a 64x64 cursor is 16 KiB).
const SCRATCH_SMALL: usize = 1 << 20;

/// The virtio-gpu device of one frontend connection.
pub struct GpuDevice {
    config: DeviceConfig,
    modes: Vec<Mode>,
    renderer: Box<dyn Renderer>,
    resources: BTreeMap<u32, Resource>,
    contexts: BTreeMap<u32, Context>,
    scanouts: Vec<Scanout>,
    display: Display,
    host_mem: u64,
    /// Pixels read back for the display, laid out like the resource being flushed; reused.
    scratch: Vec<u8>,
    /// Packed copy of a partial-width rectangle for UPDATE; reused.
    packed: Vec<u8>,
    /// A RESOURCE_FLUSH of a 3D resource not yet read back (see `finish_flushes`).
    deferred: Option<(u32, Rect)>,
    /// The frontend's host-visible region (RESOURCE_MAP_BLOB), when it set one up.
    host_visible: Option<HostVisible>,
}

impl GpuDevice {
    /// A fresh device with no resources.
    pub fn new(config: DeviceConfig, renderer: Box<dyn Renderer>) -> Self {
        let n = config.modes.len();
        let display = Display::new(config.screens.as_ref().map(|c| Arc::clone(&c.0)));
        GpuDevice {
            modes: config.modes.clone(),
            config,
            renderer,
            resources: BTreeMap::new(),
            contexts: BTreeMap::new(),
            scanouts: vec![Scanout::default(); n],
            display,
            host_mem: 0,
            scratch: Vec::new(),
            packed: Vec::new(),
            deferred: None,
            host_visible: None,
        }
    }

    /// The display channel, for the vhost-user layer to hand the frontend's socket to.
    pub fn display_mut(&mut self) -> &mut Display {
        &mut self.display
    }

    /// What one command may make the decoder allocate.
    pub fn decode_limits(&self) -> crate::protocol::DecodeLimits {
        self.config.decode
    }

    /// Bytes of host memory resources use now.
    pub fn host_memory_used(&self) -> u64 {
        self.host_mem
    }

    /// Number of live resources.
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    /// True when the frontend gave a display channel (QEMU's vhost-user-gpu-pci): that
    /// frontend keeps the display events and modes itself.
    pub fn has_display_channel(&self) -> bool {
        self.display.present()
    }

    /// Sets scanout `scanout`'s mode (a host-side request, see [`crate::modes`]): what
    /// GET_DISPLAY_INFO and GET_EDID say from now on.
    pub fn set_mode(
        &mut self,
        scanout: u32,
        width: u32,
        height: u32,
    ) -> Result<(), crate::modes::ModeRefused> {
        use crate::modes::ModeRefused;
        let ok = |v: u32| (1..=crate::edid::MAX_EDID_DIMENSION).contains(&v);
        if !ok(width) || !ok(height) {
            return Err(ModeRefused::Invalid(format!(
                "{width}x{height}: each side must be 1..={}",
                crate::edid::MAX_EDID_DIMENSION
            )));
        }
        let mode = usize::try_from(scanout)
            .ok()
            .and_then(|i| self.modes.get_mut(i))
            .ok_or_else(|| ModeRefused::Invalid(format!("no scanout {scanout}")))?;
        *mode = Mode { width, height };
        Ok(())
    }

    /// Drops every context, resource and scanout (device reset); the display channel stays.
    pub fn reset(&mut self) {
        self.deferred = None;
        let ctxs: Vec<u32> = self.contexts.keys().copied().collect();
        for c in ctxs {
            let _ = self.renderer.destroy_context(c);
        }
        self.contexts.clear();
        let ids: Vec<u32> = self.resources.keys().copied().collect();
        for id in ids {
            let _ = self.unref(id);
        }
        // (unref disabled every scanout that showed a resource.)
        self.modes = self.config.modes.clone();
        self.scratch = Vec::new();
        self.packed = Vec::new();
    }

    /// Carries out one command and returns its response (errors are logged, rate-limited).
    pub fn process(
        &mut self,
        hdr: &Header,
        cmd: GpuCommand,
        mem: &Arc<GuestMemoryMmap>,
    ) -> GpuResponse {
        let name = cmd.name();
        if log::log_enabled!(log::Level::Trace) {
            // The command history, for a hang's report (RUST_LOG=vhost_gpu::device=trace): a
            // SUBMIT_3D's first word is its stream's first command (Venus: its command type).
            let first = match &cmd {
                GpuCommand::Submit3d { cmds } => cmds
                    .get(..4)
                    .map(|b| {
                        format!(
                            " first word {}",
                            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                        )
                    })
                    .unwrap_or_default(),
                _ => String::new(),
            };
            log::trace!(
                "ctx {} {name} flags {:#x} fence {} ring {}{first}",
                hdr.ctx_id,
                hdr.flags,
                hdr.fence_id,
                hdr.ring_idx
            );
        }
        if !matches!(
            cmd,
            GpuCommand::Submit3d { .. } | GpuCommand::ResourceFlush { .. }
        ) {
            self.finish_flushes();
        }
        let response = match self.dispatch(hdr, cmd, mem) {
            Ok(r) => r,
            Err(e) => {
                guest_warn!("{name}: {e}");
                e.response()
            }
        };
        // Scratch buffers are kept for the resources shown now, so that the next frame reuses
        // them; one sized for a resource no longer shown, or over SCRATCH_KEEP, is dropped (they
        // are not counted in --max-host-memory, and a guest's past must not stay resident).
        if self.scratch.capacity().max(self.packed.capacity()) > SCRATCH_SMALL {
            let keep = self.scratch_keep();
            if self.scratch.capacity() > keep {
                self.scratch = Vec::new();
            }
            if self.packed.capacity() > keep {
                self.packed = Vec::new();
            }
        }
        response
    }

    /// Bytes of scratch worth keeping: the largest resource on a scanout (at least
    /// SCRATCH_SMALL, for cursors and small updates; at most SCRATCH_KEEP).
    fn scratch_keep(&self) -> usize {
        let shown = self
            .scanouts
            .iter()
            .filter(|s| s.resource_id != 0)
            .filter_map(|s| self.resources.get(&s.resource_id))
            .map(|r| r.size)
            .max()
            .unwrap_or(0);
        usize::try_from(shown)
            .unwrap_or(usize::MAX)
            .clamp(SCRATCH_SMALL, SCRATCH_KEEP)
    }

    fn dispatch(&mut self, hdr: &Header, cmd: GpuCommand, mem: &Arc<GuestMemoryMmap>) -> GpuResult {
        if cmd.needs_3d() && self.renderer.kind() != virgl_bridge::RendererKind::Virgl {
            return Err(GpuError::Unspec(format!(
                "{} needs the virgl renderer; the {} renderer is active",
                cmd.name(),
                self.renderer.kind()
            )));
        }
        match cmd {
            GpuCommand::GetDisplayInfo => Ok(GpuResponse::OkDisplayInfo(self.display_info())),
            GpuCommand::ResourceCreate2d {
                resource_id,
                format,
                width,
                height,
            } => self.create_2d(resource_id, format, width, height),
            GpuCommand::ResourceUnref { resource_id } => self.unref(resource_id),
            GpuCommand::SetScanout {
                rect,
                scanout_id,
                resource_id,
            } => self.set_scanout(scanout_id, resource_id, rect),
            GpuCommand::ResourceFlush { rect, resource_id } => self.flush(resource_id, rect),
            GpuCommand::TransferToHost2d {
                rect,
                offset,
                resource_id,
            } => self.transfer_to_host_2d(resource_id, rect, offset),
            GpuCommand::ResourceAttachBacking {
                resource_id,
                entries,
            } => self.attach_backing(resource_id, entries, mem),
            GpuCommand::ResourceDetachBacking { resource_id } => self.detach_backing(resource_id),
            GpuCommand::GetCapsetInfo { index } => {
                let caps = self.renderer.capsets();
                let c = caps
                    .get(index as usize)
                    .ok_or_else(|| invalid(format!("capset index {index} of {}", caps.len())))?;
                Ok(GpuResponse::OkCapsetInfo {
                    id: c.id,
                    max_version: c.max_version,
                    max_size: c.max_size,
                })
            }
            GpuCommand::GetCapset { id, version } => {
                if !self.renderer.capsets().iter().any(|c| c.id == id) {
                    return Err(invalid(format!("capset {id} is not offered")));
                }
                Ok(GpuResponse::OkCapset(self.renderer.capset(id, version)?))
            }
            GpuCommand::GetEdid { scanout_id } => self.get_edid(scanout_id),
            GpuCommand::ResourceAssignUuid { resource_id } => self.assign_uuid(resource_id),
            GpuCommand::UpdateCursor {
                pos,
                resource_id,
                hot_x,
                hot_y,
            } => self.update_cursor(pos, resource_id, hot_x, hot_y),
            GpuCommand::MoveCursor { pos } => {
                self.check_scanout(pos.scanout_id)?;
                self.display.cursor_pos(pos.scanout_id, pos.x, pos.y);
                Ok(GpuResponse::OkNoData)
            }
            GpuCommand::CtxCreate { context_init, name } => {
                self.ctx_create(hdr.ctx_id, context_init, &name)
            }
            GpuCommand::CtxDestroy => {
                self.context(hdr.ctx_id)?;
                self.renderer.destroy_context(hdr.ctx_id)?;
                self.contexts.remove(&hdr.ctx_id);
                self.trim_after_context();
                Ok(GpuResponse::OkNoData)
            }
            GpuCommand::CtxAttachResource { resource_id } => {
                self.context(hdr.ctx_id)?;
                self.resource(resource_id)?;
                self.renderer.context_attach(hdr.ctx_id, resource_id)?;
                if let Some(c) = self.contexts.get_mut(&hdr.ctx_id) {
                    c.resources.insert(resource_id);
                }
                Ok(GpuResponse::OkNoData)
            }
            GpuCommand::CtxDetachResource { resource_id } => {
                let attached = self.context(hdr.ctx_id)?.resources.contains(&resource_id);
                self.resource(resource_id)?;
                if !attached {
                    return Err(GpuError::InvalidResource(resource_id));
                }
                self.renderer.context_detach(hdr.ctx_id, resource_id)?;
                if let Some(c) = self.contexts.get_mut(&hdr.ctx_id) {
                    c.resources.remove(&resource_id);
                }
                Ok(GpuResponse::OkNoData)
            }
            GpuCommand::ResourceCreate3d { resource_id, args } => self.create_3d(resource_id, args),
            GpuCommand::TransferToHost3d { resource_id, t } => {
                self.transfer_3d(hdr.ctx_id, resource_id, &t, true)
            }
            GpuCommand::TransferFromHost3d { resource_id, t } => {
                self.transfer_3d(hdr.ctx_id, resource_id, &t, false)
            }
            GpuCommand::Submit3d { cmds } => {
                self.context(hdr.ctx_id)?;
                self.renderer.submit_3d(hdr.ctx_id, cmds)?;
                Ok(GpuResponse::OkNoData)
            }
            GpuCommand::ResourceCreateBlob {
                resource_id,
                blob_mem,
                blob_flags,
                blob_id,
                size,
                entries,
            } => self.create_blob(
                hdr.ctx_id,
                resource_id,
                (blob_mem, blob_flags, blob_id, size),
                entries,
                mem,
            ),
            GpuCommand::SetScanoutBlob {
                rect,
                scanout_id,
                resource_id,
                width,
                height,
                format,
                strides,
                offsets,
            } => {
                let layout = BlobLayout {
                    format,
                    width,
                    height,
                    stride: strides[0],
                    offset: offsets[0],
                };
                self.set_scanout_blob(scanout_id, resource_id, rect, layout)
            }
            GpuCommand::ResourceMapBlob {
                resource_id,
                offset,
            } => self.map_blob(resource_id, offset),
            GpuCommand::ResourceUnmapBlob { resource_id } => self.unmap_blob(resource_id),
        }
    }

    fn check_scanout(&self, scanout_id: u32) -> Result<usize, GpuError> {
        let i = scanout_id as usize;
        if i < self.scanouts.len() {
            Ok(i)
        } else {
            Err(GpuError::InvalidScanout(scanout_id))
        }
    }

    fn resource(&self, id: u32) -> Result<&Resource, GpuError> {
        self.resources.get(&id).ok_or(GpuError::InvalidResource(id))
    }
}

#[cfg(test)]
mod tests;
