//! The driver side of a split virtqueue in guest memory.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// A buffer of a chain: guest address, length, device-writable or not.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

/// One split virtqueue as a driver sees it.
pub struct Virtqueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub kick: EventFd,
    pub call: EventFd,
    free: Vec<u16>,
    chain_len: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    last_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated: notifications follow avail_event / used_event.
    event_idx: bool,
    /// avail_idx when the device was last notified (or found not to need it).
    notified_idx: u16,
}

const USED_F_NO_NOTIFY: u16 = 1;

/// The virtio spec's vring_need_event: whether moving an index from `old` to `new` passes
/// the other side's `event` index.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A completed chain: its head and the bytes the device wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub head: u16,
    pub len: u32,
}

impl Virtqueue {
    /// Lays out a queue of `size` entries at `base` (page aligned; needs 3 pages for 256).
    pub fn new(mem: &GuestMemory, base: u64, size: u16, event_idx: bool) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).div_ceil(4096) * 4096;
        mem.write(
            base,
            &vec![0u8; (used - base + 6 + 8 * u64::from(size)) as usize],
        );
        Virtqueue {
            size,
            desc,
            avail,
            used,
            kick: EventFd::new(0).expect("eventfd"),
            call: EventFd::new(0).expect("eventfd"),
            free: (0..size).rev().collect(),
            chain_len: HashMap::new(),
            avail_idx: 0,
            last_used: 0,
            event_idx,
            notified_idx: 0,
        }
    }

    /// Free descriptors left.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Puts a chain on the available ring (without kicking); returns its head.
    pub fn add(&mut self, mem: &GuestMemory, bufs: &[Buf]) -> u16 {
        assert!(
            !bufs.is_empty() && bufs.len() <= self.free.len(),
            "no room in the queue"
        );
        let ids: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (i, b) in bufs.iter().enumerate() {
            let mut flags = if b.writable { DESC_F_WRITE } else { 0 };
            let next = if i + 1 < ids.len() {
                flags |= DESC_F_NEXT;
                ids[i + 1]
            } else {
                0
            };
            let mut d = Vec::with_capacity(16);
            d.extend_from_slice(&b.addr.to_le_bytes());
            d.extend_from_slice(&b.len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&next.to_le_bytes());
            mem.write(self.desc + 16 * u64::from(ids[i]), &d);
        }
        let head = ids[0];
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_u16(slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The index write publishes the entry (the harness is a separate process: the mmap
        // write order is what the backend sees, and x86 keeps stores in order).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_u16(self.avail + 2, self.avail_idx);
        self.chain_len.insert(head, ids);
        head
    }

    /// Tells the device to look at what was added since the last call, unless the device
    /// said it does not need telling (Linux's virtqueue_kick_prepare: with EVENT_IDX, the
    /// device's avail_event; without, the used ring's NO_NOTIFY flag).
    pub fn notify(&mut self, mem: &GuestMemory) {
        // The new avail index must be visible before the device's suppression is read.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let (old, new) = (self.notified_idx, self.avail_idx);
        self.notified_idx = new;
        let needed = if self.event_idx {
            let avail_event = mem.read_u16(self.used + 4 + 8 * u64::from(self.size));
            need_event(avail_event, new, old)
        } else {
            mem.read_u16(self.used) & USED_F_NO_NOTIFY == 0
        };
        if needed {
            self.kick.write(1).expect("kick");
        }
    }

    /// Collects completed chains without waiting.
    pub fn poll_used(&mut self, mem: &GuestMemory) -> Vec<Used> {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let idx = mem.read_u16(self.used + 2);
        let mut out = Vec::new();
        while self.last_used != idx {
            let e = self.used + 4 + 8 * u64::from(self.last_used % self.size);
            let b = mem.read(e, 8);
            let head = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u16;
            let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            if let Some(ids) = self.chain_len.remove(&head) {
                self.free.extend(ids);
            }
            out.push(Used { head, len });
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }

    /// Waits up to `timeout` for at least `n` completions.
    pub fn wait_used(&mut self, mem: &GuestMemory, n: usize, timeout: Duration) -> Vec<Used> {
        let deadline = std::time::Instant::now() + timeout;
        let mut out = self.poll_used(mem);
        while out.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if self.event_idx {
                // Ask for an interrupt at the next completion (Linux's virtqueue_enable_cb),
                // then look once more: one may have landed before the device saw the request.
                let used_event = self.avail + 4 + 2 * u64::from(self.size);
                mem.write_u16(used_event, self.last_used);
                out.extend(self.poll_used(mem));
                if out.len() >= n {
                    break;
                }
            }
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on the stack, count 1.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(100) as i32) };
            if pfd.revents & libc::POLLIN != 0 {
                let _ = self.call.read();
            }
            out.extend(self.poll_used(mem));
        }
        out
    }
}
