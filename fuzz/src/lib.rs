//! What the fuzz targets share: a reader over libFuzzer's bytes, the model guest memory, and
//! the device they drive.
//!
//! Each target's input format is described in its file; `fuzz/make-seeds` writes the checked-in
//! seed corpus in those formats.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vhost_gpu::config::{DeviceConfig, Mode};
use vhost_gpu::device::{GpuDevice, HostVisible, SharedMemoryPort};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Bytes of the first guest memory region, at guest address 0.
pub const LOW_SIZE: u64 = 1 << 20;
/// Start of the second region; [`LOW_SIZE`, `HIGH_START`) is a hole.
pub const HIGH_START: u64 = 2 << 20;
/// Bytes of the second region.
pub const HIGH_SIZE: u64 = 256 << 10;
/// Host memory the fuzzed device may use for resources.
pub const MAX_HOST_MEMORY: u64 = 64 << 20;
/// Resources the fuzzed device may have at once.
pub const MAX_RESOURCES: u32 = 64;

/// The model guest: 1 MiB at 0, a hole, 256 KiB at 2 MiB (so that scatter lists can point into
/// the hole and past the end).
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), LOW_SIZE as usize),
        (GuestAddress(HIGH_START), HIGH_SIZE as usize),
    ])
    .expect("model guest memory")
}

/// The device config of every target: two small scanouts and small limits.
pub fn config() -> DeviceConfig {
    let modes = vec![
        Mode {
            width: 64,
            height: 48,
        },
        Mode {
            width: 32,
            height: 32,
        },
    ];
    let mut c = DeviceConfig::new(modes, MAX_HOST_MEMORY).expect("config");
    c.max_resources = MAX_RESOURCES;
    c.max_contexts = 4;
    // No spinning on the ring after a batch: each kick is one pass, and runs are faster.
    c.poll_us = 0;
    c
}

/// A device on the 2D renderer (rutabaga).
pub fn device_2d() -> GpuDevice {
    let r = virgl_bridge::Renderer2D::new().expect("2D renderer");
    GpuDevice::new(config(), Box::new(r))
}

/// Bytes of the fuzzed device's host-visible region.
pub const HOSTMEM_SIZE: u64 = 16 << 20;

/// The frontend's side of the host-visible region, as QEMU's generic device checks it: every
/// mapping the device asks for must lie inside the region and overlap no other, and every
/// unmapping must name a mapping that exists. A request that breaks this fails the run.
pub struct CheckingPort(pub Arc<Mutex<BTreeMap<u64, u64>>>);

impl SharedMemoryPort for CheckingPort {
    fn available(&self) -> Result<(), String> {
        Ok(())
    }

    fn map(
        &self,
        _fd: BorrowedFd<'_>,
        _fd_offset: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), String> {
        let end = offset.checked_add(len).expect("mapping end overflows");
        assert!(
            len > 0 && end <= HOSTMEM_SIZE,
            "mapping {offset:#x}+{len:#x} leaves the region"
        );
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((&o, &l)) = m.range(..end).next_back() {
            assert!(
                o + l <= offset,
                "mapping {offset:#x}+{len:#x} overlaps {o:#x}+{l:#x}"
            );
        }
        m.insert(offset, len);
        Ok(())
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), String> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(
            m.remove(&offset),
            Some(len),
            "unmap of {offset:#x}+{len:#x}: not mapped"
        );
        Ok(())
    }
}

/// Gives `device` a host-visible region behind a [`CheckingPort`]; returns what is mapped.
pub fn with_region(device: &mut GpuDevice) -> Arc<Mutex<BTreeMap<u64, u64>>> {
    let maps = Arc::new(Mutex::new(BTreeMap::new()));
    device.set_host_visible(HostVisible::new(
        HOSTMEM_SIZE,
        Box::new(CheckingPort(Arc::clone(&maps))),
    ));
    maps
}

/// A well-behaved frontend end of a display channel: it answers GET_PROTOCOL_FEATURES with
/// `features` and reads (and drops) everything else the device sends, until the device closes
/// its end. Returns the device's end and the reader thread.
pub fn polite_frontend(features: u64) -> (UnixStream, JoinHandle<()>) {
    let (ours, mut peer) = UnixStream::pair().expect("socketpair");
    // GET_PROTOCOL_FEATURES is the first request; its reply is queued before it is asked.
    let mut reply = Vec::new();
    reply.extend_from_slice(&1u32.to_le_bytes()); // GET_PROTOCOL_FEATURES
    reply.extend_from_slice(&4u32.to_le_bytes()); // REPLY
    reply.extend_from_slice(&8u32.to_le_bytes());
    reply.extend_from_slice(&features.to_le_bytes());
    peer.write_all(&reply).expect("queue the features reply");
    (ours, drain(peer))
}

/// Reads (and drops) all the device sends on `peer` until the device closes its end, so that
/// the device never blocks on a full socket.
pub fn drain(mut peer: UnixStream) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(peer.read(&mut buf), Ok(n) if n > 0) {}
    })
}

/// Logs only what RUST_LOG asks for (nothing by default: a fuzzer runs millions of inputs).
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off"))
        .try_init();
}

/// A cursor over libFuzzer's bytes: reads past the end give `None`.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// The next `n` bytes, or what is left when fewer.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).first().copied()
    }

    pub fn u16(&mut self) -> Option<u16> {
        let b = self.take(2);
        Some(u16::from_le_bytes(b.try_into().ok()?))
    }

    pub fn u32(&mut self) -> Option<u32> {
        let b = self.take(4);
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
