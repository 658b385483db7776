//! The other side of vhost-gpu: a vhost-user frontend harness that starts the real binary,
//! shares memfd guest memory with it, drives split virtqueues the way a guest driver does, and
//! plays the frontend's display channel the way QEMU does.
//!
//! The harness encodes and decodes the wire format itself (from the virtio spec numbers), not
//! with the backend's code, so that a layout mistake on one side shows up as a failure.

pub mod capture;
pub mod display;
pub mod driver;
pub mod frontend;
pub mod host;
pub mod link;
pub mod memory;
pub mod pki;
pub mod shmem;
pub mod venus_ring;
pub mod virtqueue;
pub mod vnc;
pub mod wire;

pub use display::{DisplayEvent, DisplayServer};
pub use driver::Gpu;
pub use frontend::{Backend, BackendOptions};
pub use memory::GuestMemory;
