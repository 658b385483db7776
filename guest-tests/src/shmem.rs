//! The frontend's side of vhost-user shared memory (SHMEM): the host-visible region a guest sees
//! as a PCI BAR, and the backend request channel on which the backend asks to map a blob's
//! memory into it (SHMEM_MAP) and to take it away (SHMEM_UNMAP).
//!
//! It does what QEMU 11.1's generic device does (hw/virtio/vhost-user.c,
//! vhost_user_backend_handle_shmem_map/unmap): it refuses an unknown region, a mapping that
//! leaves the region or overflows, and one that overlaps an existing mapping; otherwise it maps
//! the descriptor there (`MAP_SHARED | MAP_FIXED`), so what the backend's renderer writes is what
//! the test reads, and it acknowledges (REPLY_ACK) only after the mapping exists.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{FrontendReqHandler, HandlerResult, VhostUserFrontendReqHandlerMut};

/// Virtio shared memory id of virtio-gpu's host-visible region.
pub const SHM_ID_HOST_VISIBLE: u8 = 1;

/// The region: reserved address space, and what is mapped in it.
pub struct Region {
    base: usize,
    size: u64,
    /// offset -> length.
    maps: BTreeMap<u64, u64>,
    /// Requests refused, with why (what QEMU would print with error_report).
    pub refused: Vec<String>,
    /// SHMEM_MAP and SHMEM_UNMAP requests answered with success.
    pub mapped: u64,
    pub unmapped: u64,
    /// VHOST_USER_BACKEND_CONFIG_CHANGE_MSG received (QEMU then interrupts the guest).
    pub config_changes: u64,
}

// SAFETY: `base` is the address of a mapping this struct owns; nothing else aliases it
// mutably, and all access goes through the Mutex that wraps the Region.
unsafe impl Send for Region {}

fn einval(why: String, refused: &mut Vec<String>) -> std::io::Error {
    refused.push(why);
    std::io::Error::from_raw_os_error(libc::EFAULT)
}

impl Region {
    /// Reserves `size` bytes of address space (no access until something is mapped there);
    /// 0: no region (a backend channel for other messages), every map refused.
    pub fn new(size: u64) -> std::io::Result<Self> {
        if size == 0 {
            return Ok(Region {
                base: 0,
                size: 0,
                maps: BTreeMap::new(),
                refused: Vec::new(),
                mapped: 0,
                unmapped: 0,
                config_changes: 0,
            });
        }
        let len = usize::try_from(size).map_err(std::io::Error::other)?;
        // SAFETY: an anonymous private mapping at an address the kernel chooses; it aliases
        // nothing, and is unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Region {
            base: p as usize,
            size,
            maps: BTreeMap::new(),
            refused: Vec::new(),
            mapped: 0,
            unmapped: 0,
            config_changes: 0,
        })
    }

    /// The region's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Mappings now: (offset, length), in offset order.
    pub fn mappings(&self) -> Vec<(u64, u64)> {
        self.maps.iter().map(|(&o, &l)| (o, l)).collect()
    }

    /// Mapped range containing `[offset, offset + len)`, if any.
    fn covered(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        self.maps
            .range(..=offset)
            .next_back()
            .is_some_and(|(&o, &l)| o + l >= end)
    }

    /// Reads `len` bytes at `offset` of the region (they must lie in one mapping).
    pub fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        if !self.covered(offset, len as u64) {
            return None;
        }
        let mut v = vec![0u8; len];
        // SAFETY: [offset, offset+len) lies inside a live MAP_SHARED mapping of the region
        // (checked above), readable; `v` is a separate buffer of `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.base + offset as usize) as *const u8,
                v.as_mut_ptr(),
                len,
            )
        };
        Some(v)
    }

    /// Writes `data` at `offset` of the region (it must lie in one writable mapping).
    pub fn write(&self, offset: u64, data: &[u8]) -> bool {
        if !self.covered(offset, data.len() as u64) {
            return false;
        }
        // SAFETY: as in `read`; every mapping is made PROT_WRITE when the backend asks for
        // WRITABLE, which is the only way this harness maps.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.base + offset as usize) as *mut u8,
                data.len(),
            )
        };
        true
    }

    /// Puts reserved, inaccessible address space back at `[offset, offset + len)`.
    fn reserve(&self, offset: u64, len: u64) -> std::io::Result<()> {
        // SAFETY: the range lies inside the region this struct owns (callers checked); a
        // fixed anonymous mapping replaces whatever was mapped there.
        let p = unsafe {
            libc::mmap(
                (self.base + offset as usize) as *mut libc::c_void,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.size == 0 {
            return;
        }
        // SAFETY: `base`/`size` are the reservation made in `new`, mapped until now.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.size as usize) };
    }
}

impl VhostUserFrontendReqHandlerMut for Region {
    /// QEMU's generic device (vub_config_notifier) interrupts the guest, which reads the
    /// config space again; here it is counted.
    fn handle_config_change(&mut self) -> HandlerResult<u64> {
        self.config_changes += 1;
        Ok(0)
    }

    fn shmem_map(&mut self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        let (shmid, off, len, fd_off, flags) =
            (req.shmid, req.shm_offset, req.len, req.fd_offset, req.flags);
        if shmid != SHM_ID_HOST_VISIBLE {
            return Err(einval(
                format!("SHMEM_MAP: no region {shmid}"),
                &mut self.refused,
            ));
        }
        let end = match off.checked_add(len) {
            Some(e) if e <= self.size => e,
            _ => {
                return Err(einval(
                    format!("SHMEM_MAP: bad offset/len {off:#x}+{len:#x}"),
                    &mut self.refused,
                ))
            }
        };
        let overlaps = self
            .maps
            .range(..end)
            .next_back()
            .is_some_and(|(&o, &l)| o + l > off);
        if overlaps {
            return Err(einval(
                format!("SHMEM_MAP: {off:#x}+{len:#x} overlaps an existing mapping"),
                &mut self.refused,
            ));
        }
        // QEMU maps the descriptor as a RAM block, which must lie inside the file
        // ("backing store size ... is too small for 'size' option ... plus 'offset' option").
        let raw: RawFd = fd.as_raw_fd();
        // SAFETY: fstat fills a zeroed stat buffer for a descriptor the request carried.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(raw, &mut st) } != 0 {
            let e = std::io::Error::last_os_error();
            self.refused.push(format!("SHMEM_MAP: fstat: {e}"));
            return Err(e);
        }
        let file_size = u64::try_from(st.st_size).unwrap_or(0);
        if st.st_mode & libc::S_IFMT == libc::S_IFREG
            && fd_off.checked_add(len).is_none_or(|e| e > file_size)
        {
            return Err(einval(
                format!(
                    "SHMEM_MAP: backing store size {file_size:#x} is too small for 'size' option {len:#x} plus 'offset' option {fd_off:#x}"
                ),
                &mut self.refused,
            ));
        }
        let prot = if flags & VhostUserMMapFlags::WRITABLE.bits() != 0 {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: [off, end) lies inside the reservation this Region owns (checked above) and
        // overlaps no mapping the tests read; MAP_FIXED replaces the reserved pages only.
        let p = unsafe {
            libc::mmap(
                (self.base + off as usize) as *mut libc::c_void,
                len as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                raw,
                fd_off as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            self.refused.push(format!("SHMEM_MAP: mmap: {e}"));
            return Err(e);
        }
        self.maps.insert(off, len);
        self.mapped += 1;
        Ok(0)
    }

    fn shmem_unmap(&mut self, req: &VhostUserMMap) -> HandlerResult<u64> {
        let (off, len) = (req.shm_offset, req.len);
        if self.maps.get(&off) != Some(&len) {
            return Err(einval(
                format!("SHMEM_UNMAP: nothing mapped at {off:#x}+{len:#x}"),
                &mut self.refused,
            ));
        }
        self.reserve(off, len)?;
        self.maps.remove(&off);
        self.unmapped += 1;
        Ok(0)
    }
}

/// The backend request channel's serving thread and the region it maps into.
pub struct SharedMemory {
    pub region: Arc<Mutex<Region>>,
    /// The end to give the backend (SET_BACKEND_REQ_FD).
    tx: RawFd,
    _thread: JoinHandle<()>,
}

impl SharedMemory {
    /// A region of `size` bytes and a thread that serves the backend's requests on it until
    /// the backend closes the channel.
    pub fn start(size: u64) -> Result<Self, String> {
        let region = Arc::new(Mutex::new(
            Region::new(size).map_err(|e| format!("region of {size} bytes: {e}"))?,
        ));
        let mut handler =
            FrontendReqHandler::new(Arc::clone(&region)).map_err(|e| format!("{e:?}"))?;
        handler.set_reply_ack_flag(true);
        let tx = handler.get_tx_raw_fd();
        let thread = std::thread::Builder::new()
            .name("shmem-req".into())
            .spawn(move || {
                // A refused request was answered inside handle_request (its error comes back
                // here too); anything else means the backend closed the channel.
                while let Ok(_)
                | Err(vhost::vhost_user::Error::ReqHandlerError(_))
                | Err(vhost::vhost_user::Error::InvalidMessage) = handler.handle_request()
                {
                }
            })
            .map_err(|e| format!("thread: {e}"))?;
        Ok(SharedMemory {
            region,
            tx,
            _thread: thread,
        })
    }

    /// The descriptor to send with SET_BACKEND_REQ_FD.
    pub fn backend_end(&self) -> RawFd {
        self.tx
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // The serving thread owns the channel's descriptors; shutting our end down makes its
        // read see the end, so it leaves (the descriptor stays valid until the thread drops
        // it).
        // SAFETY: `tx` is an open socket owned by the handler in the thread, which closes it
        // only after its loop ends, and the loop ends only once this has been called or the
        // backend went away.
        unsafe { libc::shutdown(self.tx, libc::SHUT_RDWR) };
    }
}
