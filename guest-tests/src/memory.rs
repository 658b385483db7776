//! Guest memory: a memfd shared with the backend, with a bump allocator for buffers.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Mutex;

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};

/// Where guest memory starts (guest physical address).
pub const BASE: u64 = 0;

/// Shared guest memory and a simple allocator over it.
pub struct GuestMemory {
    pub mem: GuestMemoryMmap,
    pub file: File,
    pub size: u64,
    next: Mutex<u64>,
    /// Start of the area for command buffers; everything below is pinned (backing pages).
    scratch_start: Mutex<u64>,
}

impl GuestMemory {
    /// `size` bytes of memfd-backed memory. The first 1 MiB is reserved for the rings.
    pub fn new(size: u64) -> std::io::Result<Self> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"guest-mem".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)?;
        let region = MmapRegion::from_file(FileOffset::new(file.try_clone()?, 0), size as usize)
            .map_err(std::io::Error::other)?;
        let region = GuestRegionMmap::new(region, GuestAddress(BASE))
            .ok_or_else(|| std::io::Error::other("region"))?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(std::io::Error::other)?;
        Ok(GuestMemory {
            mem,
            file,
            size,
            next: Mutex::new(BASE + (1 << 20)),
            scratch_start: Mutex::new(BASE + (1 << 20)),
        })
    }

    /// Host address of guest physical `gpa` (the frontend's "userspace address").
    pub fn host_addr(&self, gpa: u64) -> u64 {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .expect("gpa in memory") as u64
    }

    /// Allocates `len` bytes aligned to `align`; panics when memory runs out (a test bug).
    pub fn alloc(&self, len: u64, align: u64) -> u64 {
        let mut next = self.next.lock().unwrap();
        let a = next.div_ceil(align) * align;
        assert!(a + len <= BASE + self.size, "guest memory exhausted");
        *next = a + len;
        a
    }

    /// Allocates memory that stays (resource backing): command buffers allocated before are
    /// pinned with it.
    pub fn alloc_pinned(&self, len: u64, align: u64) -> u64 {
        let a = self.alloc(len, align);
        *self.scratch_start.lock().unwrap() = *self.next.lock().unwrap();
        a
    }

    /// Frees the command buffers when no queue has a chain in flight.
    pub fn reset_alloc_if_idle(&self, queues: &[crate::virtqueue::Virtqueue]) {
        if queues
            .iter()
            .all(|q| q.free_descriptors() == q.size as usize)
        {
            *self.next.lock().unwrap() = *self.scratch_start.lock().unwrap();
        }
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .expect("write guest memory");
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(gpa))
            .expect("read guest memory");
        v
    }

    pub fn write_u16(&self, gpa: u64, v: u16) {
        self.write(gpa, &v.to_le_bytes());
    }

    pub fn read_u16(&self, gpa: u64) -> u16 {
        let b = self.read(gpa, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}
