//! Atomic instructions on memory that a host process shares with the guest.
//!
//! Venus's ring status word is changed with atomic instructions by the guest's driver and by the
//! render server at once. This check makes the same kind of traffic on one page: the guest adds
//! to a counter with `lock xadd` while the host test adds to the same counter through QEMU's
//! memory file. Afterwards the counter must hold every add of both sides; an add the guest's
//! instruction lost shows as a shortfall (QEMU's TCG with one possible vCPU makes the
//! instruction a plain load and store).

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::say;

/// The page's words: the counter both sides add to, the host's "go", the guest's "done".
const COUNTER: usize = 0;
const GO: usize = 1;
const DONE: usize = 2;

/// Maps a locked page, prints its guest-physical address, waits for the host's go, adds 1 to
/// the counter `ops` times, and sets "done".
pub fn atomics(ops: u32) -> Result<(), String> {
    // SAFETY: a new anonymous private mapping of one page, populated and locked so that its
    // physical page stays the same; checked for failure below and never unmapped (the process
    // ends after the check).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | libc::MAP_LOCKED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the mapping is 4096 bytes, page-aligned and lives as long as the process; three
    // AtomicU32 at its start are within it and aligned.
    let words: &[AtomicU32] = unsafe { std::slice::from_raw_parts(p.cast::<AtomicU32>(), 3) };
    // Touch it, then ask the kernel where it is (/proc/self/pagemap: bit 63 present, bits 0-54
    // the page frame number; root sees the number).
    words[COUNTER].store(0, Ordering::SeqCst);
    let mut pagemap =
        std::fs::File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
    pagemap
        .seek(SeekFrom::Start((p as u64 / 4096) * 8))
        .map_err(|e| format!("pagemap: {e}"))?;
    let mut entry = [0u8; 8];
    pagemap
        .read_exact(&mut entry)
        .map_err(|e| format!("pagemap: {e}"))?;
    let entry = u64::from_le_bytes(entry);
    if entry >> 63 == 0 || entry & ((1 << 55) - 1) == 0 {
        return Err(format!("pagemap entry {entry:#x}: no page frame number"));
    }
    let phys = (entry & ((1 << 55) - 1)) * 4096;
    say(format!("atomics page {phys:#x}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while words[GO].load(Ordering::SeqCst) == 0 {
        if Instant::now() > deadline {
            return Err("atomics: no go from the host in 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..ops {
        words[COUNTER].fetch_add(1, Ordering::SeqCst);
    }
    words[DONE].store(1, Ordering::SeqCst);
    say(format!("atomics done {ops}"));
    Ok(())
}
