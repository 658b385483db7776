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
    /// The underlying renderer refused the operation.
    #[error("renderer failed: {0}")]
    Backend(String),
}

/// Result of renderer operations.
pub type RendererResult<T> = Result<T, RendererError>;

/// Which renderer implementation is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RendererKind {
    /// rutabaga_gfx's 2D component: 2D resources only, no capsets.
    TwoD,
}

impl fmt::Display for RendererKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RendererKind::TwoD => f.write_str("2d"),
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
    /// (stride = width * 4): the pixel (x, y) lands at `y * stride + x * 4`.
    fn read_rect(&mut self, resource_id: u32, rect: Rect, dst: &mut [u8]) -> RendererResult<()>;
}
