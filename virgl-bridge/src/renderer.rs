//! The renderer interface the device state drives.

use std::fmt;

/// Errors a renderer reports. The backend maps them to virtio-gpu response codes.
#[derive(Debug, thiserror::Error)]
pub enum RendererError {
    /// The resource id is not known to the renderer.
    #[error("unknown resource {0}")]
    UnknownResource(u32),
    /// The resource id is already in use.
    #[error("resource {0} already exists")]
    ResourceExists(u32),
    /// A rectangle, offset or buffer does not fit.
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    /// The resource has no backing attached.
    #[error("resource {0} has no backing")]
    NoBacking(u32),
    /// The context id is not known to the renderer.
    #[error("unknown context {0}")]
    UnknownContext(u32),
    /// The renderer does not offer this (a 3D operation on the 2D renderer, say).
    #[error("not supported by this renderer: {0}")]
    Unsupported(&'static str),
    /// The underlying renderer refused the operation.
    #[error("renderer failed: {0}")]
    Backend(String),
}

/// A host blob's memory, exported for mapping (RESOURCE_MAP_BLOB).
#[derive(Debug)]
pub struct ExportedBlob {
    /// A descriptor of the memory, mappable with `mmap`.
    pub fd: std::os::fd::OwnedFd,
    /// Where the blob's bytes start in `fd` (page-aligned): 0 for dma-bufs and shared memory;
    /// a driver's opaque descriptor may keep a header first (lavapipe keeps one page).
    pub offset: u64,
    /// Bytes behind `fd` from its start (a driver's allocation may end inside the blob's last
    /// page: virglrenderer 1.1 does not round host-visible allocations up to whole pages).
    pub size: u64,
    /// The caching the guest must map it with: VIRTIO_GPU_MAP_CACHE_* (0 none, 1 cached,
    /// 2 uncached, 3 write-combined), as virglrenderer reports it.
    pub map_info: u32,
}

/// Result of renderer operations.
pub type RendererResult<T> = Result<T, RendererError>;

/// Which renderer implementation is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RendererKind {
    /// rutabaga_gfx's 2D component: 2D resources only, no capsets.
    TwoD,
    /// virglrenderer: OpenGL through virgl, on a render node or llvmpipe.
    Virgl,
}

impl fmt::Display for RendererKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RendererKind::TwoD => f.write_str("2d"),
            RendererKind::Virgl => f.write_str("virgl"),
        }
    }
}

/// A rectangle in resource pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// True when the rectangle lies inside a `width` x `height` surface (overflow-safe).
    pub fn fits_in(&self, width: u32, height: u32) -> bool {
        matches!(self.x.checked_add(self.width), Some(r) if r <= width)
            && matches!(self.y.checked_add(self.height), Some(b) if b <= height)
    }

    /// True when the rectangle covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }
}

/// One piece of guest backing, already translated to a host address.
///
/// The creator guarantees that `base..base+len` stays mapped and readable for as long as the
/// iovec is attached to a resource (the backend keeps the guest memory mapping alive).
#[derive(Clone, Copy, Debug)]
pub struct Iovec {
    pub base: *mut u8,
    pub len: usize,
}

// SAFETY: an Iovec is a plain (pointer, length) pair naming guest memory that the backend keeps
// mapped while the iovec is attached; moving it between threads does not change that.
unsafe impl Send for Iovec {}

/// A capset the renderer offers (GET_CAPSET_INFO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsetInfo {
    pub id: u32,
    pub max_version: u32,
    pub max_size: u32,
}

/// RESOURCE_CREATE_3D's parameters (gallium terms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resource3d {
    pub target: u32,
    pub format: u32,
    pub bind: u32,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub array_size: u32,
    pub last_level: u32,
    pub nr_samples: u32,
    pub flags: u32,
}

/// A box in a resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Box3d {
    pub x: u32,
    pub y: u32,
    pub z: u32,
    pub w: u32,
    pub h: u32,
    pub d: u32,
}

/// TRANSFER_{TO,FROM}_HOST_3D's parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer3d {
    pub bx: Box3d,
    pub level: u32,
    pub stride: u32,
    pub layer_stride: u32,
    /// Offset in the resource's backing.
    pub offset: u64,
}

/// The timeline a fence is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FenceTimeline {
    /// The device-global timeline (fences without INFO_RING_IDX).
    Global,
    /// One ring of one context (INFO_RING_IDX).
    Ring { ctx_id: u32, ring_idx: u8 },
}

/// A fence the renderer has signalled. On the global timeline only the low 32 bits of the id
/// survive virglrenderer's legacy callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceDone {
    pub timeline: FenceTimeline,
    pub fence_id: u64,
}

/// What the device needs from a renderer, in virtio-gpu terms.
///
/// Implementations re-check every rectangle against the resource and every length with
/// overflow-safe arithmetic; they never panic on bad input.
pub trait Renderer: Send {
    /// Which implementation this is.
    fn kind(&self) -> RendererKind;

    /// Number of capsets offered to the guest.
    fn num_capsets(&self) -> u32;

    /// Creates a 2D resource of `width` x `height` pixels in virtio-gpu `format`.
    fn create_2d(
        &mut self,
        resource_id: u32,
        format: u32,
        width: u32,
        height: u32,
    ) -> RendererResult<()>;

    /// Destroys a resource and drops its backing.
    fn unref(&mut self, resource_id: u32) -> RendererResult<()>;

    /// Attaches guest backing (in order) to a resource, replacing any earlier backing.
    fn attach_backing(&mut self, resource_id: u32, iovecs: Vec<Iovec>) -> RendererResult<()>;

    /// Drops the backing of a resource.
    fn detach_backing(&mut self, resource_id: u32) -> RendererResult<()>;

    /// Copies `rect` from the backing into the resource. `offset` is the byte offset in the
    /// backing of the rect's top-left pixel (as the Linux driver and QEMU use it); rows follow
    /// one resource stride (width * 4) apart.
    fn transfer_to_host_2d(
        &mut self,
        resource_id: u32,
        rect: Rect,
        offset: u64,
    ) -> RendererResult<()>;

    /// Copies `rect` of the resource into `dst`, which is laid out like the whole resource
    /// (stride = width * 4): the pixel (x, y) lands at `y * stride + x * 4`, row 0 the top of
    /// the picture.
    fn read_rect(&mut self, resource_id: u32, rect: Rect, dst: &mut [u8]) -> RendererResult<()>;

    /// (stride = width * 4): the pixel (x, y) lands at `y * stride + x * 4`, row 0 the top of
    /// the picture.    /// Capsets offered to the guest.
    fn capsets(&self) -> Vec<CapsetInfo> {
        Vec::new()
    }

    /// Capset data for `id` at `version`, as the renderer fills it (fully initialised).
    fn capset(&mut self, _id: u32, _version: u32) -> RendererResult<Vec<u8>> {
        Err(RendererError::Unsupported("capsets"))
    }

    /// Creates a rendering context; `capset_id` 0 means the renderer's default.
    fn create_context(
        &mut self,
        _ctx_id: u32,
        _capset_id: u32,
        _name: &[u8],
    ) -> RendererResult<()> {
        Err(RendererError::Unsupported("contexts"))
    }

    /// Destroys a context.
    fn destroy_context(&mut self, _ctx_id: u32) -> RendererResult<()> {
        Err(RendererError::Unsupported("contexts"))
    }

    /// Makes a resource visible to a context.
    fn context_attach(&mut self, _ctx_id: u32, _resource_id: u32) -> RendererResult<()> {
        Err(RendererError::Unsupported("contexts"))
    }

    /// Removes a resource from a context.
    fn context_detach(&mut self, _ctx_id: u32, _resource_id: u32) -> RendererResult<()> {
        Err(RendererError::Unsupported("contexts"))
    }

    /// Creates a 3D resource.
    fn create_3d(&mut self, _resource_id: u32, _args: &Resource3d) -> RendererResult<()> {
        Err(RendererError::Unsupported("3D resources"))
    }

    /// Copies from the resource's backing into the resource.
    fn transfer_to_host_3d(
        &mut self,
        _ctx_id: u32,
        _resource_id: u32,
        _t: &Transfer3d,
    ) -> RendererResult<()> {
        Err(RendererError::Unsupported("3D transfers"))
    }

    /// Copies from the resource into its backing.
    fn transfer_from_host_3d(
        &mut self,
        _ctx_id: u32,
        _resource_id: u32,
        _t: &Transfer3d,
    ) -> RendererResult<()> {
        Err(RendererError::Unsupported("3D transfers"))
    }

    /// Creates a blob resource: guest memory (`iovecs`) for BLOB_MEM_GUEST, or an object the
    /// context made (`blob_id`) for BLOB_MEM_HOST3D.
    #[allow(clippy::too_many_arguments)]
    fn create_blob(
        &mut self,
        _ctx_id: u32,
        _resource_id: u32,
        _blob_mem: u32,
        _blob_flags: u32,
        _blob_id: u64,
        _size: u64,
        _iovecs: Vec<Iovec>,
    ) -> RendererResult<()> {
        Err(RendererError::Unsupported("blob resources"))
    }

    /// The memory of a host blob (BLOB_MEM_HOST3D, made mappable) as a descriptor that
    /// another process (the frontend) can map, with its caching.
    fn export_blob(&mut self, _resource_id: u32) -> RendererResult<ExportedBlob> {
        Err(RendererError::Unsupported("host-visible blobs"))
    }

    /// Runs a command stream (whole 32-bit words) in a context.
    fn submit_3d(&mut self, _ctx_id: u32, _cmds: Vec<u8>) -> RendererResult<()> {
        Err(RendererError::Unsupported("command submission"))
    }

    /// Creates a fence after all work submitted so far by context `ctx_id` (0: the device) on
    /// `timeline`.
    fn create_fence(
        &mut self,
        _ctx_id: u32,
        _timeline: FenceTimeline,
        _fence_id: u64,
    ) -> RendererResult<()> {
        Err(RendererError::Unsupported("fences"))
    }

    /// An fd that becomes readable when fences complete; None when all work is synchronous
    /// (then a fenced command is done when the call returns).
    fn fence_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Fences signalled since the last call, in signalling order.
    fn take_completed_fences(&mut self) -> Vec<FenceDone> {
        Vec::new()
    }
}
