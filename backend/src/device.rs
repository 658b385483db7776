//! Device state and what each command does: resources, backing, scanouts, cursor, limits.
//!
//! Every guest-supplied id, rectangle, offset and address is checked here, with overflow-safe
//! arithmetic, before the renderer sees it; a bad command gets its `VIRTIO_GPU_RESP_ERR_*` and a
//! rate-limited log line, and the device keeps serving.

use std::collections::BTreeMap;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use virgl_bridge::{
    FenceDone, FenceTimeline, Iovec, Rect, Renderer, RendererError, Resource3d, Transfer3d,
    BYTES_PER_PIXEL,
};

use crate::config::{DeviceConfig, Mode};
use crate::display::{Display, CURSOR_BYTES};
use crate::edid;
use crate::guest_warn;
use crate::protocol::{Cursor, DisplayMode, GpuCommand, GpuResponse, Header, FLAG_INFO_RING_IDX};

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

/// Converts pixels in `fmt` to the frontend's B8G8R8X8 byte order, in place.
fn to_bgrx(fmt: u32, data: &mut [u8]) {
    use format::*;
    let order: [usize; 4] = match fmt {
        A8R8G8B8 | X8R8G8B8 => [3, 2, 1, 0],
        R8G8B8A8 | R8G8B8X8 => [2, 1, 0, 3],
        A8B8G8R8 | X8B8G8R8 => [1, 2, 3, 0],
        _ => return,
    };
    for px in data.chunks_exact_mut(4) {
        let p = [px[0], px[1], px[2], px[3]];
        for (o, &i) in px.iter_mut().zip(order.iter()) {
            *o = p[i];
        }
    }
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

/// Rough host bytes of a 3D resource: 4 bytes a texel (1 for buffers), times layers, samples,
/// and 2 for a mip chain. An estimate for `--max-host-memory`, never below the real size of
/// formats of up to 4 bytes a texel.
fn estimate_3d(a: &Resource3d) -> u64 {
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

/// Whether the frontend hears of a scanout's new resource with a SCANOUT message: when the
/// scanout was off or its size changes. A page flip to another resource of the same size is
/// not announced: QEMU replaces its display surface on each SCANOUT, and its GTK GL window
/// then keeps showing the first frame (every flip is a new resource). The flip reaches the
/// frontend as a full-scanout UPDATE at the next flush instead.
fn announces(old: &Scanout, rect: Rect) -> bool {
    old.resource_id == 0 || old.rect.width != rect.width || old.rect.height != rect.height
}

/// The part of a flush of `rect` that goes to scanout `s`: all of it after an unannounced flip.
fn flushed_part(s: &Scanout, rect: Rect) -> Rect {
    if s.whole {
        s.rect
    } else {
        intersect(rect, s.rect)
    }
}

/// Intersection of two rectangles (empty when they do not overlap).
fn intersect(a: Rect, b: Rect) -> Rect {
    let x1 = a.x.max(b.x);
    let y1 = a.y.max(b.y);
    let x2 = (u64::from(a.x) + u64::from(a.width)).min(u64::from(b.x) + u64::from(b.width));
    let y2 = (u64::from(a.y) + u64::from(a.height)).min(u64::from(b.y) + u64::from(b.height));
    if u64::from(x1) >= x2 || u64::from(y1) >= y2 {
        return Rect::default();
    }
    Rect {
        x: x1,
        y: y1,
        width: (x2 - u64::from(x1)) as u32,
        height: (y2 - u64::from(y1)) as u32,
    }
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

    /// Drops every context, resource and scanout (device reset); the display channel stays.
    pub fn reset(&mut self) {
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

    /// A destroyed context's renderer state (shaders, GL objects) leaves free memory in the heap;
    /// hand it back to the host. A trim walks the heap: the 300k-command virgl soak, which
    /// destroys contexts often, ran 25.2 s with it and 15.5 s without, and held 21 MB instead of
    /// 31 MB with nothing alive. It is not rate-limited by time: that made what
    /// stays resident depend on timing; a guest destroying contexts in a loop only slows its own
    /// queue, which serves one command at a time either way.
    fn trim_after_context(&mut self) {
        // SAFETY: malloc_trim only releases free memory of the allocator; no pointers held.
        unsafe {
            libc::malloc_trim(0);
        }
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
            GpuCommand::Unsupported(t) => Err(GpuError::Unspec(format!(
                "command {t:#x}: there is no host-visible memory to map blobs into"
            ))),
        }
    }

    fn create_blob(
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
                size: host_bytes,
                backing,
                uuid: None,
            },
        );
        Ok(GpuResponse::OkNoData)
    }

    fn set_scanout_blob(
        &mut self,
        scanout_id: u32,
        id: u32,
        rect: Rect,
        l: BlobLayout,
    ) -> GpuResult {
        let i = self.check_scanout(scanout_id)?;
        if id == 0 {
            self.scanouts[i] = Scanout::default();
            self.display.scanout(scanout_id, 0, 0);
            return Ok(GpuResponse::OkNoData);
        }
        let res = self.resource(id)?;
        let backing = match (res.blob_mem, &res.backing) {
            (Some(BLOB_MEM_GUEST | BLOB_MEM_HOST3D_GUEST), Some(b)) => b,
            _ => {
                return Err(invalid(format!(
                    "resource {id} is not a blob in guest memory"
                )))
            }
        };
        if !format::ALL.contains(&l.format) || l.width == 0 || l.height == 0 {
            return Err(invalid(format!("blob scanout layout {l:?}")));
        }
        // The image: `height` rows of `width * 4` bytes, `stride` apart, from `offset`.
        let row = u64::from(l.width) * u64::from(BYTES_PER_PIXEL);
        let end = u64::from(l.height - 1)
            .checked_mul(u64::from(l.stride))
            .and_then(|v| v.checked_add(row))
            .and_then(|v| v.checked_add(u64::from(l.offset)));
        if u64::from(l.stride) < row || !matches!(end, Some(e) if e <= backing.len) {
            return Err(invalid(format!(
                "blob scanout {l:?} does not fit {} bytes",
                backing.len
            )));
        }
        if rect.is_empty() || !rect.fits_in(l.width, l.height) {
            return Err(invalid(format!(
                "scanout rect {rect:?} in a {}x{} image",
                l.width, l.height
            )));
        }
        let old = self.scanouts[i];
        let announce = announces(&old, rect);
        self.scanouts[i] = Scanout {
            resource_id: id,
            rect,
            blob: Some(l),
            whole: !announce && old.resource_id != id,
        };
        if announce {
            self.display.scanout(scanout_id, rect.width, rect.height);
        }
        Ok(GpuResponse::OkNoData)
    }

    /// Sends the part `r` of a blob scanout, read straight from the blob's guest memory.
    fn flush_blob(&mut self, i: usize, s: Scanout, l: BlobLayout, r: Rect) -> Result<(), GpuError> {
        let res = self
            .resources
            .get(&s.resource_id)
            .ok_or(GpuError::InvalidResource(s.resource_id))?;
        let backing = res
            .backing
            .as_ref()
            .ok_or_else(|| invalid("blob without memory"))?;
        let row = r.width as usize * 4;
        let packed = &mut self.packed;
        packed.clear();
        packed.resize(row * r.height as usize, 0);
        for (y, dst) in packed.chunks_exact_mut(row).enumerate() {
            // In bounds: the layout was checked against the blob at SET_SCANOUT_BLOB, and r
            // lies inside the layout's image.
            let off = u64::from(l.offset)
                + (u64::from(r.y) + y as u64) * u64::from(l.stride)
                + u64::from(r.x) * 4;
            backing.read_at(off, dst)?;
        }
        to_bgrx(l.format, &mut self.packed);
        let (x, y) = (r.x - s.rect.x, r.y - s.rect.y);
        self.display
            .update(i as u32, x, y, r.width, r.height, &self.packed);
        Ok(())
    }

    /// A new resource id must be non-zero and unused, and the guest under its resource cap
    /// (each resource costs host bookkeeping that `--max-host-memory` does not see).
    fn check_new_resource(&self, id: u32) -> Result<(), GpuError> {
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

    fn context(&self, ctx_id: u32) -> Result<&Context, GpuError> {
        self.contexts
            .get(&ctx_id)
            .ok_or(GpuError::InvalidContext(ctx_id))
    }

    fn ctx_create(&mut self, ctx_id: u32, context_init: u32, name: &[u8]) -> GpuResult {
        if ctx_id == 0 || self.contexts.contains_key(&ctx_id) {
            return Err(GpuError::InvalidContext(ctx_id));
        }
        if self.contexts.len() >= self.config.max_contexts as usize {
            return Err(GpuError::OutOfMemory(format!(
                "{} contexts, the limit (--max-contexts)",
                self.contexts.len()
            )));
        }
        // Low 8 bits: the capset the context speaks; the rest is reserved.
        if context_init & !0xff != 0 {
            return Err(invalid(format!("context_init {context_init:#x}")));
        }
        self.renderer
            .create_context(ctx_id, context_init & 0xff, name)?;
        self.contexts.insert(ctx_id, Context::default());
        Ok(GpuResponse::OkNoData)
    }

    fn create_3d(&mut self, id: u32, a: Resource3d) -> GpuResult {
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
                size,
                backing: None,
                uuid: None,
            },
        );
        Ok(GpuResponse::OkNoData)
    }

    fn transfer_3d(&mut self, ctx_id: u32, id: u32, t: &Transfer3d, to_host: bool) -> GpuResult {
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

    /// Asks the renderer to signal a fenced command's completion; true when it will (the reply
    /// must wait), false when the work is already done (reply now).
    pub fn fence(&mut self, hdr: &Header) -> bool {
        if self.renderer.fence_fd().is_none() {
            return false;
        }
        let timeline = self.timeline(hdr);
        if let FenceTimeline::Ring { ctx_id, .. } = timeline {
            if !self.contexts.contains_key(&ctx_id) {
                return false;
            }
        }
        let ctx = if self.contexts.contains_key(&hdr.ctx_id) {
            hdr.ctx_id
        } else {
            0
        };
        match self.renderer.create_fence(ctx, timeline, hdr.fence_id) {
            Ok(()) => true,
            Err(e) => {
                guest_warn!("fence {} on {timeline:?}: {e}; replying now", hdr.fence_id);
                false
            }
        }
    }

    /// The timeline a fenced request is on.
    pub fn timeline(&self, hdr: &Header) -> FenceTimeline {
        if hdr.flags & FLAG_INFO_RING_IDX != 0 {
            FenceTimeline::Ring {
                ctx_id: hdr.ctx_id,
                ring_idx: hdr.ring_idx,
            }
        } else {
            FenceTimeline::Global
        }
    }

    /// An fd readable when the renderer has signalled fences (None: the renderer is synchronous).
    pub fn fence_fd(&self) -> Option<std::os::fd::RawFd> {
        self.renderer.fence_fd()
    }

    /// Creates a device (context 0) fence on the global timeline with `fence_id`, so that
    /// replies held behind a destroyed context's fences are released when it signals.
    pub fn flush_global_fences(&mut self, fence_id: u64) {
        if let Err(e) = self
            .renderer
            .create_fence(0, FenceTimeline::Global, fence_id)
        {
            guest_warn!("flushing global fences: {e}");
        }
    }

    /// Fences the renderer signalled since the last call.
    pub fn take_completed_fences(&mut self) -> Vec<FenceDone> {
        self.renderer.take_completed_fences()
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

    fn display_info(&mut self) -> Vec<DisplayMode> {
        if !self.config.modes_from_user && self.display.present() {
            if let Some(theirs) = self.display.display_info(self.modes.len()) {
                let ok = |v: u32| (1..=edid::MAX_EDID_DIMENSION).contains(&v);
                for (mode, t) in self.modes.iter_mut().zip(&theirs) {
                    if t.enabled && ok(t.width) && ok(t.height) {
                        *mode = Mode {
                            width: t.width,
                            height: t.height,
                        };
                    }
                }
                return theirs
                    .iter()
                    .zip(&self.modes)
                    .map(|(t, m)| DisplayMode {
                        width: m.width,
                        height: m.height,
                        enabled: t.enabled,
                    })
                    .collect();
            }
        }
        self.modes
            .iter()
            .map(|m| DisplayMode {
                width: m.width,
                height: m.height,
                enabled: true,
            })
            .collect()
    }

    fn get_edid(&mut self, scanout_id: u32) -> GpuResult {
        let i = self.check_scanout(scanout_id)?;
        // Always our EDID, with the full list of modes (QEMU's lacks 1280x800 and
        // 2560x1440). Without --display its preferred mode is the frontend's (its window's)
        // size now: Linux asks for the EDIDs before the display info after a display change,
        // so the frontend is asked here.
        if !self.config.modes_from_user && self.display.present() {
            self.display_info();
        }
        let m = self.modes[i];
        Ok(GpuResponse::OkEdid(
            edid::generate(scanout_id, m.width, m.height).to_vec(),
        ))
    }

    fn create_2d(&mut self, id: u32, fmt: u32, width: u32, height: u32) -> GpuResult {
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
                size,
                backing: None,
                uuid: None,
            },
        );
        Ok(GpuResponse::OkNoData)
    }

    fn unref(&mut self, id: u32) -> GpuResult {
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

    fn set_scanout(&mut self, scanout_id: u32, id: u32, rect: Rect) -> GpuResult {
        let i = self.check_scanout(scanout_id)?;
        if id == 0 {
            self.scanouts[i] = Scanout::default();
            self.display.scanout(scanout_id, 0, 0);
            return Ok(GpuResponse::OkNoData);
        }
        let res = self.resource(id)?;
        if rect.is_empty() || !rect.fits_in(res.width, res.height) {
            return Err(invalid(format!(
                "scanout rect {rect:?} in a {}x{} resource",
                res.width, res.height
            )));
        }
        let old = self.scanouts[i];
        let announce = announces(&old, rect);
        self.scanouts[i] = Scanout {
            resource_id: id,
            rect,
            blob: None,
            whole: !announce && old.resource_id != id,
        };
        if announce {
            self.display.scanout(scanout_id, rect.width, rect.height);
        }
        Ok(GpuResponse::OkNoData)
    }

    fn transfer_to_host_2d(&mut self, id: u32, rect: Rect, offset: u64) -> GpuResult {
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

    fn attach_backing(
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

    fn detach_backing(&mut self, id: u32) -> GpuResult {
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

    /// Reads `rect` of resource `id` into `self.scratch` (laid out like the whole resource).
    fn read_back(&mut self, id: u32, rect: Rect) -> Result<(), GpuError> {
        let res = self.resource(id)?;
        let need = usize::try_from(res.size).map_err(|_| invalid("resource too large"))?;
        if self.scratch.len() < need {
            self.scratch.resize(need, 0);
        }
        self.renderer
            .read_rect(id, rect, &mut self.scratch[..need])?;
        Ok(())
    }

    fn flush(&mut self, id: u32, rect: Rect) -> GpuResult {
        let res = self.resource(id)?;
        if res.blob_mem.is_some() {
            // A blob is shown where SET_SCANOUT_BLOB put it; the flush rect is clipped to that.
            for i in 0..self.scanouts.len() {
                let s = self.scanouts[i];
                let Some(l) = s.blob.filter(|_| s.resource_id == id) else {
                    continue;
                };
                let r = flushed_part(&s, rect);
                if !r.is_empty() && self.display.wants_frames() {
                    self.flush_blob(i, s, l, r)?;
                    self.scanouts[i].whole = false;
                }
            }
            return Ok(GpuResponse::OkNoData);
        }
        if !rect.fits_in(res.width, res.height) {
            return Err(invalid(format!(
                "rect {rect:?} in a {}x{} resource",
                res.width, res.height
            )));
        }
        let (fmt, stride) = (res.format, res.stride() as usize);
        let full_width = res.width;
        // Read back rows come in the resource's memory order, which is the picture's order for
        // every resource: Y_0_TOP only tells a GL display how the *texture* is stored, and
        // virglrenderer's transfers undo that (checked with real Mesa guests: fbcon on 2D
        // resources and EGL window surfaces both come out top row first).
        for i in 0..self.scanouts.len() {
            let s = self.scanouts[i];
            if s.resource_id != id {
                continue;
            }
            let r = flushed_part(&s, rect);
            if r.is_empty() || !self.display.wants_frames() {
                continue;
            }
            self.scanouts[i].whole = false;
            self.read_back(id, r)?;
            let row = r.width as usize * 4;
            let start = r.y as usize * stride + r.x as usize * 4;
            let bytes = r.height as usize * row;
            // A full-width rect is already packed in the scratch buffer; otherwise pack it.
            let data: &mut [u8] = if r.x == 0 && r.width == full_width {
                &mut self.scratch[start..start + bytes]
            } else {
                self.packed.clear();
                for y in 0..r.height as usize {
                    let from = start + y * stride;
                    self.packed
                        .extend_from_slice(&self.scratch[from..from + row]);
                }
                &mut self.packed[..]
            };
            to_bgrx(fmt, data);
            self.display.update(
                i as u32,
                r.x - s.rect.x,
                r.y - s.rect.y,
                r.width,
                r.height,
                data,
            );
        }
        Ok(GpuResponse::OkNoData)
    }

    fn assign_uuid(&mut self, id: u32) -> GpuResult {
        let res = self
            .resources
            .get_mut(&id)
            .ok_or(GpuError::InvalidResource(id))?;
        let uuid = *res.uuid.get_or_insert_with(new_uuid);
        Ok(GpuResponse::OkResourceUuid(uuid))
    }

    fn update_cursor(&mut self, pos: Cursor, id: u32, hot_x: u32, hot_y: u32) -> GpuResult {
        self.check_scanout(pos.scanout_id)?;
        if id == 0 {
            self.display.cursor_hide(pos.scanout_id, pos.x, pos.y);
            return Ok(GpuResponse::OkNoData);
        }
        let res = self.resource(id)?;
        let (fmt, stride) = (res.format, res.stride() as usize);
        let (w, h) = (res.width.min(64), res.height.min(64));
        self.read_back(
            id,
            Rect {
                x: 0,
                y: 0,
                width: w,
                height: h,
            },
        )?;
        let mut image = Box::new([0u8; CURSOR_BYTES]);
        let row = w as usize * 4;
        for y in 0..h as usize {
            let from = y * stride;
            image[y * 256..y * 256 + row].copy_from_slice(&self.scratch[from..from + row]);
        }
        to_bgrx(fmt, &mut image[..]);
        self.display
            .cursor_update((pos.scanout_id, pos.x, pos.y), (hot_x, hot_y), &image);
        Ok(GpuResponse::OkNoData)
    }
}

/// A random (version 4) UUID.
fn new_uuid() -> [u8; 16] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use virgl_bridge::Renderer2D;
    use vm_memory::Bytes;

    fn device(max_mem: u64) -> (GpuDevice, Arc<GuestMemoryMmap>) {
        let cfg = DeviceConfig {
            max_host_memory: max_mem,
            ..Default::default()
        };
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        (
            GpuDevice::new(cfg, Box::new(Renderer2D::new().unwrap())),
            Arc::new(mem),
        )
    }

    #[test]
    fn memory_limit_and_release() {
        let (mut d, mem) = device(64 * 64 * 4);
        let create = |id| GpuCommand::ResourceCreate2d {
            resource_id: id,
            format: 1,
            width: 64,
            height: 64,
        };
        assert_eq!(
            d.process(&Header::default(), create(1), &mem),
            GpuResponse::OkNoData
        );
        assert_eq!(
            d.process(&Header::default(), create(2), &mem),
            GpuResponse::ErrOutOfMemory
        );
        assert_eq!(
            d.process(
                &Header::default(),
                GpuCommand::ResourceUnref { resource_id: 1 },
                &mem
            ),
            GpuResponse::OkNoData
        );
        assert_eq!(d.host_memory_used(), 0);
        assert_eq!(
            d.process(&Header::default(), create(2), &mem),
            GpuResponse::OkNoData
        );
    }

    #[test]
    fn bad_input_codes() {
        let (mut d, mem) = device(1 << 30);
        let c = GpuCommand::ResourceCreate2d {
            resource_id: 1,
            format: 1,
            width: 4,
            height: 4,
        };
        assert_eq!(
            d.process(&Header::default(), c.clone(), &mem),
            GpuResponse::OkNoData
        );
        assert_eq!(
            d.process(&Header::default(), c, &mem),
            GpuResponse::ErrInvalidResourceId
        );
        let bad_fmt = GpuCommand::ResourceCreate2d {
            resource_id: 2,
            format: 5,
            width: 4,
            height: 4,
        };
        assert_eq!(
            d.process(&Header::default(), bad_fmt, &mem),
            GpuResponse::ErrInvalidParameter
        );
        let outside = GpuCommand::ResourceAttachBacking {
            resource_id: 1,
            entries: vec![(u64::MAX - 4, 64)],
        };
        assert_eq!(
            d.process(&Header::default(), outside, &mem),
            GpuResponse::ErrInvalidParameter
        );
        let past_end = GpuCommand::ResourceAttachBacking {
            resource_id: 1,
            entries: vec![((1 << 20) - 8, 64)],
        };
        assert_eq!(
            d.process(&Header::default(), past_end, &mem),
            GpuResponse::ErrInvalidParameter
        );
        let ok = GpuCommand::ResourceAttachBacking {
            resource_id: 1,
            entries: vec![(0x1000, 64)],
        };
        assert_eq!(
            d.process(&Header::default(), ok, &mem),
            GpuResponse::OkNoData
        );
        let r = Rect {
            x: 0,
            y: 0,
            width: 4,
            height: 4,
        };
        let overrun = GpuCommand::TransferToHost2d {
            rect: r,
            offset: 8,
            resource_id: 1,
        };
        assert_eq!(
            d.process(&Header::default(), overrun, &mem),
            GpuResponse::ErrInvalidParameter
        );
        let huge = GpuCommand::TransferToHost2d {
            rect: r,
            offset: u64::MAX,
            resource_id: 1,
        };
        assert_eq!(
            d.process(&Header::default(), huge, &mem),
            GpuResponse::ErrInvalidParameter
        );
        let wide = Rect {
            x: u32::MAX,
            y: 0,
            width: 2,
            height: 1,
        };
        let wrap = GpuCommand::TransferToHost2d {
            rect: wide,
            offset: 0,
            resource_id: 1,
        };
        assert_eq!(
            d.process(&Header::default(), wrap, &mem),
            GpuResponse::ErrInvalidParameter
        );
        let scan = GpuCommand::SetScanout {
            rect: r,
            scanout_id: 1,
            resource_id: 1,
        };
        assert_eq!(
            d.process(&Header::default(), scan, &mem),
            GpuResponse::ErrInvalidScanoutId
        );
        let good = GpuCommand::TransferToHost2d {
            rect: r,
            offset: 0,
            resource_id: 1,
        };
        assert_eq!(
            d.process(&Header::default(), good, &mem),
            GpuResponse::OkNoData
        );
    }

    #[test]
    fn partial_transfer_uses_linux_offsets() {
        let (mut d, mem) = device(1 << 30);
        d.process(
            &Header::default(),
            GpuCommand::ResourceCreate2d {
                resource_id: 1,
                format: 1,
                width: 4,
                height: 4,
            },
            &mem,
        );
        let pixels: Vec<u8> = (0..64u8).collect();
        mem.write_slice(&pixels, GuestAddress(0x2000)).unwrap();
        d.process(
            &Header::default(),
            GpuCommand::ResourceAttachBacking {
                resource_id: 1,
                entries: vec![(0x2000, 64)],
            },
            &mem,
        );
        // Linux: offset = y * stride + x * 4 for the rect's top-left pixel.
        let r = Rect {
            x: 1,
            y: 2,
            width: 2,
            height: 2,
        };
        let t = GpuCommand::TransferToHost2d {
            rect: r,
            offset: 2 * 16 + 4,
            resource_id: 1,
        };
        assert_eq!(
            d.process(&Header::default(), t, &mem),
            GpuResponse::OkNoData
        );
        d.read_back(1, r).unwrap();
        assert_eq!(&d.scratch[36..44], &pixels[36..44]);
        assert_eq!(&d.scratch[52..60], &pixels[52..60]);
        assert_eq!(&d.scratch[0..36], &[0u8; 36][..]);
    }

    #[test]
    fn backing_reads_seek_across_uneven_entries() {
        let (_, mem) = device(1 << 20);
        // Entries of 100, 1, 4096 and 250 bytes, out of address order.
        let entries = vec![(0x9000, 100), (0x2000, 1), (0x4000, 4096), (0x100, 250)];
        let mut flat = Vec::new();
        for (i, &(a, l)) in entries.iter().enumerate() {
            let bytes: Vec<u8> = (0..l)
                .map(|j| (j as u8).wrapping_mul(7).wrapping_add(i as u8))
                .collect();
            mem.write_slice(&bytes, GuestAddress(a)).unwrap();
            flat.extend_from_slice(&bytes);
        }
        let (b, _) = Backing::map(entries, &mem).unwrap();
        for (off, n) in [
            (0, 4447),
            (99, 3),
            (100, 1),
            (101, 4096),
            (4196, 251),
            (4446, 1),
            (50, 0),
        ] {
            let mut out = vec![0u8; n];
            b.read_at(off as u64, &mut out).unwrap();
            assert_eq!(out, flat[off..off + n], "offset {off} len {n}");
        }
        assert!(b.read_at(4440, &mut [0u8; 8]).is_err(), "past the end");
    }

    #[test]
    fn format_conversion_to_bgrx() {
        let mut px = [1, 2, 3, 4];
        to_bgrx(format::R8G8B8A8, &mut px);
        assert_eq!(px, [3, 2, 1, 4]);
        let mut px = [1, 2, 3, 4];
        to_bgrx(format::A8R8G8B8, &mut px);
        assert_eq!(px, [4, 3, 2, 1]);
        let mut px = [1, 2, 3, 4];
        to_bgrx(format::X8B8G8R8, &mut px);
        assert_eq!(px, [2, 3, 4, 1]);
        let mut px = [1, 2, 3, 4];
        to_bgrx(format::B8G8R8X8, &mut px);
        assert_eq!(px, [1, 2, 3, 4]);
    }
}
