//! Venus command rings as the render server maps them, read from the outside through
//! `/proc/PID/mem`: their control words for a hang's report, and a recorder that copies every
//! command the guest writes into them, so that a hang's report can show what came before it.
//!
//! Mesa's ring layout (`vn_ring_get_layout`) puts head, tail and status each in its own 64-byte
//! line at the start of a 0x21000-byte shared mapping, with a 128 KiB buffer from byte 192. Head
//! and tail count bytes without wrapping (a position in the buffer is `pos & 0x1ffff`).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::frontend::process_tree;

/// The size of a ring's shared mapping.
const MAPPING: u64 = 0x21000;
/// Where the buffer starts in the mapping, and its size.
const BUFFER_AT: u64 = 192;
const BUFFER_SIZE: u32 = 0x20000;
/// Offsets of the control words.
const HEAD_AT: u64 = 0;
const TAIL_AT: u64 = 64;
const STATUS_AT: u64 = 128;

/// One ring as one process maps it.
struct Ring {
    pid: u32,
    addr: u64,
    maps_line: String,
    mem: std::fs::File,
}

impl Ring {
    fn word(&self, off: u64) -> Option<u32> {
        let mut w = [0u8; 4];
        self.mem
            .read_exact_at(&mut w, self.addr + off)
            .ok()
            .map(|_| u32::from_le_bytes(w))
    }

    /// The buffer's bytes from position `from` for `len` bytes (`len` at most the buffer's
    /// size), unwrapped.
    fn bytes(&self, from: u32, len: u32) -> Option<Vec<u8>> {
        let mut out = vec![0u8; len as usize];
        let at = from & (BUFFER_SIZE - 1);
        let first = len.min(BUFFER_SIZE - at);
        self.mem
            .read_exact_at(
                &mut out[..first as usize],
                self.addr + BUFFER_AT + u64::from(at),
            )
            .ok()?;
        if first < len {
            self.mem
                .read_exact_at(&mut out[first as usize..], self.addr + BUFFER_AT)
                .ok()?;
        }
        Some(out)
    }
}

/// Every ring mapping (shared, read-write, 0x21000 bytes) in the process tree at `root`.
fn rings(root: u32) -> Vec<Ring> {
    let mut out = Vec::new();
    for pid in process_tree(root) {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            let Some((a, b)) = range.split_once('-') else {
                continue;
            };
            let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
                continue;
            };
            if b - a != MAPPING || !perms.starts_with("rw") || !perms.ends_with('s') {
                continue;
            }
            let Ok(mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
                continue;
            };
            out.push(Ring {
                pid,
                addr: a,
                maps_line: line.to_string(),
                mem,
            });
        }
    }
    out
}

/// The control words of every Venus command ring mapped in the process tree at `root`: for a
/// hang's report. A ring whose tail is ahead of its head while its status says idle (bit 0)
/// lost a wake-up; one that is not idle is inside the batch that starts at its head.
pub fn venus_rings(root: u32) -> String {
    let mut out = String::new();
    for r in rings(root) {
        let (head, tail) = (r.word(HEAD_AT), r.word(TAIL_AT));
        // The command at the head: its first word is its Venus command type.
        let at_head = head.and_then(|h| {
            r.bytes(h, 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        });
        out.push_str(&format!(
            "process {}: ring? {}\n  head {head:?} tail {tail:?} status {:?}; command at the head: type {at_head:?}\n",
            r.pid,
            r.maps_line,
            r.word(STATUS_AT),
        ));
        // The whole batch the ring thread took (head to tail; at most 128 words): the
        // blocking command is in it, after whatever came first.
        if let (Some(h), Some(t)) = (head, tail) {
            if let Some(b) = r.bytes(h, t.wrapping_sub(h).min(512)) {
                let words: Vec<String> = b
                    .chunks_exact(4)
                    .map(|w| format!("{:08x}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
                    .collect();
                out.push_str(&format!("  batch words: {}\n", words.join(" ")));
            }
        }
    }
    out
}

/// How many bytes a recording keeps (its newest), and how many ended recordings are kept.
const KEEP_BYTES: usize = 32 << 20;
const KEEP_DONE: usize = 8;

/// What a [`Recorder`] copied from one ring.
pub struct Recording {
    /// The process that maps the ring, and where.
    pub pid: u32,
    pub addr: u64,
    /// The ring position of the first recorded byte.
    pub start: u32,
    /// Every byte the guest wrote from `start` on, in order (the newest 32 MiB at most).
    pub bytes: Vec<u8>,
}

impl Recording {
    fn new(pid: u32, addr: u64, start: u32) -> Recording {
        Recording {
            pid,
            addr,
            start,
            bytes: Vec::new(),
        }
    }

    /// Appends what the guest wrote, keeping the newest [`KEEP_BYTES`].
    fn push(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(b);
        if self.bytes.len() > KEEP_BYTES {
            let cut = self.bytes.len() - KEEP_BYTES / 2;
            self.bytes.drain(..cut);
            self.start = self.start.wrapping_add(cut as u32);
        }
    }
}

/// Copies what the guest writes into every Venus ring of a process tree, looking every
/// millisecond, from when the ring appears until [`Recorder::stop`]. For hang reports: the
/// commands before the one a ring thread is stuck in.
pub struct Recorder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Recording>>>,
}

impl Recorder {
    /// Starts recording the rings of the process tree at `root` (rings that appear later are
    /// picked up within 100 ms).
    pub fn start(root: u32) -> Recorder {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Rings being recorded (with the position read last), and those that ended (a
            // ring mapped again at the same address starts a new recording).
            let mut live: Vec<(Ring, Recording, u32)> = Vec::new();
            let mut done: Vec<Recording> = Vec::new();
            let mut tick = 0u32;
            while !flag.load(Ordering::Relaxed) {
                if tick % 100 == 0 {
                    for r in rings(root) {
                        if live
                            .iter()
                            .any(|(l, _, _)| l.pid == r.pid && l.addr == r.addr)
                        {
                            continue;
                        }
                        if let Some(tail) = r.word(TAIL_AT) {
                            let rec = Recording::new(r.pid, r.addr, tail);
                            live.push((r, rec, tail));
                        }
                    }
                }
                tick = tick.wrapping_add(1);
                for (ring, rec, seen) in &mut live {
                    let Some(tail) = ring.word(TAIL_AT) else {
                        continue;
                    };
                    let n = tail.wrapping_sub(*seen);
                    if n == 0 {
                        continue;
                    }
                    if n > BUFFER_SIZE {
                        // A new ring at this address (its tail starts again), or more than
                        // the buffer holds written between two looks.
                        let old = std::mem::replace(rec, Recording::new(ring.pid, ring.addr, tail));
                        done.push(old);
                    } else if let Some(b) = ring.bytes(*seen, n) {
                        rec.push(&b);
                    }
                    *seen = tail;
                }
                // Rings no longer mapped: their recordings are done.
                live.retain_mut(|(ring, rec, _)| {
                    if ring.word(TAIL_AT).is_some() {
                        return true;
                    }
                    done.push(std::mem::replace(rec, Recording::new(0, 0, 0)));
                    false
                });
                // The newest recordings are what a hang's report needs.
                if done.len() > KEEP_DONE {
                    done.drain(..done.len() - KEEP_DONE);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            done.extend(live.into_iter().map(|(_, rec, _)| rec));
            done.retain(|r| !r.bytes.is_empty());
            done
        });
        Recorder {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns what was recorded, one entry a ring.
    pub fn stop(mut self) -> Vec<Recording> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Writes each recording to `dir` as `ring-PID-ADDR-STARTPOS.bin` (the raw bytes), and
/// returns the files' paths.
pub fn save(recordings: &[Recording], dir: &Path) -> Vec<PathBuf> {
    let _ = std::fs::create_dir_all(dir);
    recordings
        .iter()
        .filter_map(|r| {
            let p = dir.join(format!("ring-{}-{:x}-{}.bin", r.pid, r.addr, r.start));
            std::fs::write(&p, &r.bytes).ok().map(|_| p)
        })
        .collect()
}

/// Venus command types (venus-protocol's `VkCommandTypeEXT`) that order work and fences.
const CMD_QUEUE_SUBMIT: u32 = 18;
const CMD_RESET_FENCES: u32 = 37;
const CMD_GET_FENCE_STATUS: u32 = 38;
const CMD_WAIT_FOR_FENCES: u32 = 39;
const CMD_IMPORT_SEMAPHORE_RESOURCE: u32 = 246;
/// `VK_STRUCTURE_TYPE_SUBMIT_INFO`.
const SUBMIT_INFO: u32 = 4;

/// A decoded VkSubmitInfo: wait semaphores, command buffers, signal semaphores, and where it
/// ends in the recording.
type SubmitInfo = (Vec<u64>, Vec<u64>, Vec<u64>, usize);

/// The synchronisation commands in a recording, oldest first, one line each with its ring
/// position: queue submissions (wait and signal semaphores, command buffers, fence), fence
/// waits, resets and status queries, and semaphore imports. Found by their encodings
/// (command type, flags, counts that match their array sizes), so other commands in between
/// are skipped, not decoded. Handles are the guest's object ids. The newest `last` lines.
pub fn sync_history(rec: &Recording, last: usize) -> String {
    let b = &rec.bytes;
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8).map(|w| {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            u64::from_le_bytes(a)
        })
    };
    // An array of handles as Venus encodes it: a u64 count, then the handles.
    let handles = |o: usize| -> Option<(Vec<u64>, usize)> {
        let n = usize::try_from(u64_at(o)?).ok().filter(|&n| n <= 64)?;
        let v = (0..n)
            .map(|i| u64_at(o + 8 + 8 * i))
            .collect::<Option<Vec<_>>>()?;
        Some((v, o + 8 + 8 * n))
    };
    let list = |v: &[u64]| {
        v.iter()
            .map(|h| format!("{h:#x}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    // One VkSubmitInfo without a pNext chain: (waits, command buffers, signals, end).
    let submit_info = |o: usize| -> Option<SubmitInfo> {
        if u32_at(o)? != SUBMIT_INFO || u64_at(o + 4)? != 0 {
            return None;
        }
        let (waits, o) = handles(o + 16)?;
        let stages = usize::try_from(u64_at(o)?).ok().filter(|&n| n <= 64)?;
        let (cmds, o) = handles(o + 8 + 4 * stages + 4)?;
        let (signals, o) = handles(o + 4)?;
        Some((waits, cmds, signals, o))
    };
    let mut lines = Vec::new();
    let mut o = 0;
    while o + 8 <= b.len() {
        let pos = rec.start.wrapping_add(o as u32);
        let (Some(kind), Some(flags)) = (u32_at(o), u32_at(o + 4)) else {
            break;
        };
        let line = match (kind, flags) {
            (CMD_WAIT_FOR_FENCES | CMD_RESET_FENCES, 0) => {
                let count = u32_at(o + 16).map(u64::from);
                match handles(o + 20) {
                    Some((fences, _))
                        if Some(fences.len() as u64) == count && !fences.is_empty() =>
                    {
                        let name = if kind == CMD_WAIT_FOR_FENCES {
                            "vkWaitForFences"
                        } else {
                            "vkResetFences"
                        };
                        Some(format!("{pos} {name} {}", list(&fences)))
                    }
                    _ => None,
                }
            }
            (CMD_GET_FENCE_STATUS, 0 | 1) => {
                u64_at(o + 16).filter(|&f| f != 0 && f < 1 << 32).map(|f| {
                    format!(
                        "{pos} vkGetFenceStatus {f:#x}{}",
                        if flags == 1 {
                            " (waits for the reply)"
                        } else {
                            ""
                        }
                    )
                })
            }
            (CMD_IMPORT_SEMAPHORE_RESOURCE, 0) => match (u64_at(o + 16), u64_at(o + 36)) {
                (Some(1), Some(sem)) => Some(format!(
                    "{pos} vkImportSemaphoreResourceMESA {sem:#x} resource {}",
                    u32_at(o + 44).unwrap_or(0)
                )),
                _ => None,
            },
            (CMD_QUEUE_SUBMIT, 0) => {
                let count = u32_at(o + 16);
                match (count, u64_at(o + 20)) {
                    (Some(1), Some(1)) => submit_info(o + 28).and_then(|(w, c, s, end)| {
                        u64_at(end).map(|fence| {
                            format!(
                                "{pos} vkQueueSubmit waits [{}] cmds [{}] signals [{}] fence {fence:#x}",
                                list(&w),
                                list(&c),
                                list(&s)
                            )
                        })
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(l) = line {
            lines.push(l);
        }
        o += 4;
    }
    let from = lines.len().saturating_sub(last);
    lines[from..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A ring read from a file laid out as the mapping is (the file stands in for
    /// /proc/PID/mem at address 0).
    fn ring_in_file(fill: impl Fn(usize) -> u8) -> Ring {
        let path = std::env::temp_dir().join(format!("venus-ring-test-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        let bytes: Vec<u8> = (0..MAPPING as usize).map(fill).collect();
        f.write_all(&bytes).unwrap();
        let mem = std::fs::File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        Ring {
            pid: 0,
            addr: 0,
            maps_line: String::new(),
            mem,
        }
    }

    #[test]
    fn bytes_unwrap_at_the_end_of_the_buffer() {
        // Each buffer byte holds its offset in the buffer (mod 251); the control words zero.
        let r = ring_in_file(|i| {
            if (i as u64) < BUFFER_AT {
                0
            } else {
                ((i - BUFFER_AT as usize) % 251) as u8
            }
        });
        // Positions count without wrapping: 0x20000 - 3 and the 5 bytes after it are the last
        // 3 of the buffer and its first 2.
        let pos = 3 * BUFFER_SIZE - 3;
        let want: Vec<u8> = [BUFFER_SIZE - 3, BUFFER_SIZE - 2, BUFFER_SIZE - 1, 0, 1]
            .iter()
            .map(|&o| (o % 251) as u8)
            .collect();
        assert_eq!(r.bytes(pos, 5).unwrap(), want);
        assert_eq!(r.word(HEAD_AT), Some(0));
    }

    #[test]
    fn a_recording_keeps_its_newest_bytes_and_moves_its_start() {
        let mut rec = Recording::new(1, 2, 100);
        rec.push(&vec![1u8; KEEP_BYTES]);
        assert_eq!((rec.start, rec.bytes.len()), (100, KEEP_BYTES));
        rec.push(&[2, 3]);
        // Over the limit: the oldest bytes go, down to half the limit, and the start moves
        // past them.
        assert_eq!(rec.bytes.len(), KEEP_BYTES / 2);
        assert_eq!(rec.bytes[rec.bytes.len() - 2..], [2, 3]);
        let dropped = KEEP_BYTES + 2 - KEEP_BYTES / 2;
        assert_eq!(rec.start, 100 + dropped as u32);
    }

    /// Venus's encoding of the commands `sync_history` looks for, as Mesa writes them.
    fn w32(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn w64(v: &mut Vec<u8>, x: u64) {
        v.extend_from_slice(&x.to_le_bytes());
    }

    #[test]
    fn sync_history_names_the_fence_and_semaphore_commands_in_order() {
        let mut v = Vec::new();
        // vkWaitForFences(device 3, 1 fence: 0x4e, waitAll, UINT64_MAX)
        for x in [CMD_WAIT_FOR_FENCES, 0] {
            w32(&mut v, x);
        }
        w64(&mut v, 3);
        w32(&mut v, 1);
        w64(&mut v, 1);
        w64(&mut v, 0x4e);
        w32(&mut v, 1);
        w64(&mut v, u64::MAX);
        // vkResetFences(device 3, [0x4e])
        for x in [CMD_RESET_FENCES, 0] {
            w32(&mut v, x);
        }
        w64(&mut v, 3);
        w32(&mut v, 1);
        w64(&mut v, 1);
        w64(&mut v, 0x4e);
        // vkQueueSubmit(queue 5, one VkSubmitInfo: wait 0x6c at one stage, command buffers
        // 0x11 and 0x4f, no signal; fence 0x4e)
        for x in [CMD_QUEUE_SUBMIT, 0] {
            w32(&mut v, x);
        }
        w64(&mut v, 5);
        w32(&mut v, 1);
        w64(&mut v, 1);
        w32(&mut v, SUBMIT_INFO);
        w64(&mut v, 0);
        w32(&mut v, 1);
        w64(&mut v, 1);
        w64(&mut v, 0x6c);
        w64(&mut v, 1);
        w32(&mut v, 0x1000);
        w32(&mut v, 2);
        w64(&mut v, 2);
        w64(&mut v, 0x11);
        w64(&mut v, 0x4f);
        w32(&mut v, 0);
        w64(&mut v, 0);
        w64(&mut v, 0x4e);
        // vkGetFenceStatus(device 3, 0x4e), waiting for its reply
        for x in [CMD_GET_FENCE_STATUS, 1] {
            w32(&mut v, x);
        }
        w64(&mut v, 3);
        w64(&mut v, 0x4e);
        let mut rec = Recording::new(1, 2, 1000);
        rec.push(&v);
        assert_eq!(
            sync_history(&rec, 10),
            "1000 vkWaitForFences 0x4e\n\
             1048 vkResetFences 0x4e\n\
             1084 vkQueueSubmit waits [0x6c] cmds [0x11,0x4f] signals [] fence 0x4e\n\
             1204 vkGetFenceStatus 0x4e (waits for the reply)"
        );
        assert_eq!(
            sync_history(&rec, 1),
            "1204 vkGetFenceStatus 0x4e (waits for the reply)"
        );
    }
}
