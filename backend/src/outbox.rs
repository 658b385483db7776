//! The display channel's sending thread: one-way messages (SCANOUT, UPDATE, cursor) go out in
//! order from here, so that the queue thread does not wait while the frontend reads them.
//!
//! QEMU reads the display channel in its main loop, between drawing its window and everything
//! else it does; a frame's UPDATE is larger than a socket buffer, so sending it from the queue
//! thread made the guest's flush wait for QEMU (about 0.7 ms a 800x600 flip, most of a 2D
//! flip's time). The queue thread now copies the update into the outbox and answers the guest.
//!
//! An update that a later one of the same scanout covers is dropped from the queue before it
//! is sent (QEMU's own display shows only the latest picture too), but never across a SCANOUT
//! of its scanout. The queue holds at most [`LIMIT`] bytes of pixels, or two of the largest
//! update, beyond which the queue thread waits for the sender: memory stays bounded and a
//! frontend that stops reading slows the guest's flushes as before.
//!
//! A send that fails ends the thread; the next message tells the display to go headless.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;
use vhost::vhost_user::gpu_message::{
    VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuScanout, VhostUserGpuUpdate,
};
use vhost::vhost_user::GpuBackend;

use crate::display::CURSOR_BYTES;
use crate::screens::Area;

/// Bytes of queued messages past which the queue thread waits (one 3840x2160 frame is 33 MB; a
/// single update larger than half of this may still queue behind nothing else).
pub const LIMIT: usize = 64 << 20;
/// Messages queued past which the queue thread waits, whatever their size: a guest moving its
/// cursor while the frontend reads nothing must not grow the queue either.
pub const MAX_QUEUED: usize = 1024;
/// What a message without pixels counts for against [`LIMIT`] (its header and the queue's entry).
const SMALL: usize = 64;
/// Queued bytes past which, once the queue has drained, freed memory is handed back to the
/// kernel ([`crate::alloc::trim`]): a stalled frontend's backlog must not stay resident.
const TRIM_AFTER: usize = 4 << 20;
/// Pixel buffers kept for reuse, each at most [`POOL_BUFFER`] bytes.
const POOL: usize = 2;
const POOL_BUFFER: usize = 3840 * 2160 * 4;

/// One message for the frontend.
pub enum Message {
    Scanout(VhostUserGpuScanout),
    Update(VhostUserGpuUpdate, Vec<u8>),
    CursorPos(VhostUserGpuCursorPos),
    CursorHide(VhostUserGpuCursorPos),
    CursorUpdate(VhostUserGpuCursorUpdate, Box<[u8; CURSOR_BYTES]>),
}

impl Message {
    /// Host bytes it holds while queued.
    fn bytes(&self) -> usize {
        match self {
            Message::Update(_, px) => SMALL + px.len(),
            Message::CursorUpdate(..) => SMALL + CURSOR_BYTES,
            _ => SMALL,
        }
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Message>,
    /// Bytes `queue` holds ([`Message::bytes`]).
    bytes: usize,
    /// The most `bytes` has been since the queue was last empty.
    peak: usize,
    /// Why the channel failed; nothing more is sent.
    failed: Option<String>,
    /// The display dropped the outbox: the thread ends when the queue is empty.
    closed: bool,
    /// Buffers of sent updates, for the next ones.
    pool: Vec<Vec<u8>>,
    /// Updates queued and merged away since the last debug line.
    counts: (u64, u64),
    /// The sending thread has returned.
    exited: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side the display holds.
pub struct Outbox {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Outbox {
    /// Starts the sending thread on `backend` (a clone of the display's channel).
    pub fn start(backend: GpuBackend) -> std::io::Result<Outbox> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("display-out".into())
            .spawn(move || {
                send_loop(&theirs, &backend);
                theirs.lock().exited = true;
                theirs.changed.notify_all();
            })?;
        Ok(Outbox {
            shared,
            thread: Some(thread),
        })
    }

    /// A buffer for an update's pixels, from the pool when one is there.
    pub fn buffer(&self) -> Vec<u8> {
        let mut b = self.shared.lock().pool.pop().unwrap_or_default();
        b.clear();
        b
    }

    /// A buffer of a sent update as it is (any length, stale bytes), or an empty one: for a
    /// readback that overwrites it.
    pub fn spare(&self) -> Vec<u8> {
        self.shared.lock().pool.pop().unwrap_or_default()
    }

    /// Queues `msg`; Err when the channel has failed (the display then goes headless).
    pub fn push(&self, msg: Message) -> Result<(), String> {
        let mut st = self.shared.lock();
        let need = msg.bytes();
        if let Message::Update(u, _) = &msg {
            drop_covered(&mut st, u);
            st.counts.0 += 1;
            if st.counts.0 == 1000 {
                log::debug!(
                    "display channel: of the last 1000 updates, {} were merged into later ones",
                    st.counts.1
                );
                st.counts = (0, 0);
            }
        }
        // Room for this one: LIMIT, or two of this size, whichever is more.
        let limit = LIMIT.max(need.saturating_mul(2));
        while st.failed.is_none()
            && !st.queue.is_empty()
            && (st.bytes + need > limit || st.queue.len() >= MAX_QUEUED)
        {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        st.bytes += need;
        st.peak = st.peak.max(st.bytes);
        st.queue.push_back(msg);
        drop(st);
        self.shared.changed.notify_all();
        Ok(())
    }
}

/// How long dropping the outbox waits for the queue to go out.
const DRAIN: Duration = Duration::from_secs(1);

impl Drop for Outbox {
    /// The thread sends what is queued, then ends. It is waited for up to [`DRAIN`]; past that
    /// it is left to finish on its own (a frontend that stopped reading must not hang the
    /// device; a closed socket ends its send at once).
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.closed = true;
        self.shared.changed.notify_all();
        let deadline = Instant::now() + DRAIN;
        while !st.exited {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                warn!("display channel: the frontend is not reading; not waiting for it");
                return;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
        drop(st);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Drops queued updates of `u`'s scanout that `u` covers, back to the last SCANOUT of it.
fn drop_covered(st: &mut State, u: &VhostUserGpuUpdate) {
    let new = Area {
        x: u.x,
        y: u.y,
        width: u.width,
        height: u.height,
    };
    let mut i = st.queue.len();
    while i > 0 {
        i -= 1;
        let covered = match &st.queue[i] {
            Message::Scanout(s) if s.scanout_id == u.scanout_id => break,
            Message::Update(q, _) if q.scanout_id == u.scanout_id => {
                let old = Area {
                    x: q.x,
                    y: q.y,
                    width: q.width,
                    height: q.height,
                };
                old.clip(&new) == Some(old)
            }
            _ => false,
        };
        if covered {
            if let Some(m) = st.queue.remove(i) {
                st.bytes -= m.bytes();
                st.counts.1 += 1;
                if let Message::Update(_, px) = m {
                    recycle(st, px);
                }
            }
        }
    }
}

fn recycle(st: &mut State, px: Vec<u8>) {
    if st.pool.len() < POOL && px.capacity() <= POOL_BUFFER {
        st.pool.push(px);
    }
}

fn send_loop(shared: &Shared, backend: &GpuBackend) {
    loop {
        let msg = {
            let mut st = shared.lock();
            loop {
                if let Some(m) = st.queue.pop_front() {
                    break m;
                }
                if st.closed {
                    return;
                }
                st = shared.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let (what, sent) = match &msg {
            Message::Scanout(s) => ("scanout", backend.set_scanout(s)),
            Message::Update(u, px) => ("update", backend.update_scanout(u, px)),
            Message::CursorPos(p) => ("cursor pos", backend.cursor_pos(p)),
            Message::CursorHide(p) => ("cursor hide", backend.cursor_pos_hide(p)),
            Message::CursorUpdate(c, img) => ("cursor update", backend.cursor_update(c, img)),
        };
        let mut st = shared.lock();
        st.bytes -= msg.bytes();
        if let Message::Update(_, px) = msg {
            recycle(&mut st, px);
        }
        if let Err(e) = sent {
            warn!("display channel: {what}: {e}; going on headless");
            st.failed = Some(format!("{what}: {e}"));
            st.queue.clear();
            st.bytes = 0;
            drop(st);
            shared.changed.notify_all();
            crate::alloc::trim();
            return;
        }
        let backlog = st.queue.is_empty() && st.peak > TRIM_AFTER;
        if st.queue.is_empty() {
            st.peak = 0;
        }
        drop(st);
        shared.changed.notify_all();
        if backlog {
            log::debug!("display channel: backlog sent; returning its memory");
            crate::alloc::trim();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(id: u32, x: u32, y: u32, w: u32, h: u32) -> Message {
        Message::Update(
            VhostUserGpuUpdate {
                scanout_id: id,
                x,
                y,
                width: w,
                height: h,
            },
            vec![0; (w * h * 4) as usize],
        )
    }

    fn rects(st: &State) -> Vec<(u32, u32, u32, u32, u32)> {
        st.queue
            .iter()
            .map(|m| match m {
                Message::Update(u, _) => (u.scanout_id, u.x, u.y, u.width, u.height),
                Message::Scanout(s) => (s.scanout_id, 0, 0, s.width, s.height),
                _ => (99, 0, 0, 0, 0),
            })
            .collect()
    }

    #[test]
    fn small_messages_are_bounded_too_while_the_frontend_reads_nothing() {
        // The frontend end of the channel is never read: the sender blocks once the socket
        // buffer is full, and the queue thread must then wait rather than queue without end.
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let outbox = Outbox::start(GpuBackend::from_stream(ours)).unwrap();
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let q = std::sync::Arc::clone(&queued);
        let shared = std::sync::Arc::clone(&outbox.shared);
        std::thread::spawn(move || {
            let img = Box::new([0u8; CURSOR_BYTES]);
            for i in 0..100_000u32 {
                let pos = VhostUserGpuCursorPos {
                    scanout_id: 0,
                    x: i,
                    y: 0,
                };
                let m = VhostUserGpuCursorUpdate {
                    pos,
                    hot_x: 0,
                    hot_y: 0,
                };
                if outbox.push(Message::CursorUpdate(m, img.clone())).is_err() {
                    return;
                }
                q.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        let st = shared.lock();
        assert!(st.queue.len() <= MAX_QUEUED, "{} queued", st.queue.len());
        assert!(st.bytes <= LIMIT, "{} bytes queued", st.bytes);
        assert!(queued.load(std::sync::atomic::Ordering::Relaxed) < 100_000);
    }

    #[test]
    fn a_covering_update_replaces_queued_ones_but_not_across_a_scanout() {
        let mut st = State::default();
        let push = |st: &mut State, m: Message| {
            if let Message::Update(u, _) = &m {
                drop_covered(st, u);
            }
            st.bytes += m.bytes();
            st.queue.push_back(m);
        };
        push(&mut st, update(0, 0, 0, 8, 8));
        push(&mut st, update(0, 2, 2, 2, 2));
        push(&mut st, update(1, 0, 0, 4, 4));
        push(
            &mut st,
            Message::CursorPos(VhostUserGpuCursorPos {
                scanout_id: 0,
                x: 1,
                y: 1,
            }),
        );
        // Covers both updates of scanout 0, not scanout 1's.
        push(&mut st, update(0, 0, 0, 10, 10));
        assert_eq!(
            rects(&st),
            vec![(1, 0, 0, 4, 4), (99, 0, 0, 0, 0), (0, 0, 0, 10, 10)]
        );
        assert_eq!(st.bytes, (16 + 100) * 4 + 3 * SMALL);
        // A partial one does not cover; a SCANOUT is a barrier.
        push(&mut st, update(0, 5, 5, 10, 10));
        push(
            &mut st,
            Message::Scanout(VhostUserGpuScanout {
                scanout_id: 0,
                width: 20,
                height: 20,
            }),
        );
        push(&mut st, update(0, 0, 0, 20, 20));
        assert_eq!(
            rects(&st),
            vec![
                (1, 0, 0, 4, 4),
                (99, 0, 0, 0, 0),
                (0, 0, 0, 10, 10),
                (0, 5, 5, 10, 10),
                (0, 0, 0, 20, 20),
                (0, 0, 0, 20, 20)
            ]
        );
        assert!(st.pool.len() <= POOL);
    }
}
