//! The renderer layer of vhost-gpu, in virtio-gpu terms.
//!
//! It knows nothing of vhost-user: the backend hands it validated resource ids, rectangles and
//! host iovecs for guest backing, and gets pixels back for the display channel.

mod renderer;
mod rutabaga2d;
mod virgl;

pub use renderer::{
    Box3d, CapsetInfo, ExportedBlob, FenceDone, FenceTimeline, Iovec, Rect, Renderer,
    RendererError, RendererKind, RendererResult, Resource3d, Transfer3d,
};
pub use rutabaga2d::Renderer2D;
pub use virgl::venus::{probe_vulkan, VulkanDevice};
pub use virgl::{VirglOptions, VirglRenderer, CAPSET_VENUS};

/// Bytes per pixel of every 2D virtio-gpu format.
pub const BYTES_PER_PIXEL: u32 = 4;
