//! The display channel to the frontend (VHOST_USER_GPU_SET_SOCKET): scanouts, pixel updates and
//! the cursor go out; display info and EDID can be asked of the frontend.
//!
//! The frontend hands us the socket in the middle of its vhost-user setup, while its main loop
//! is busy talking to us, so nothing may wait for a reply then: the channel is kept *pending*
//! and its protocol features are negotiated on first use, from the queue thread, when the guest
//! is running and the frontend's main loop reads the socket. A channel that fails is dropped
//! and the device goes on headless.

use std::sync::Arc;

use log::{info, warn};
use vhost::vhost_user::gpu_message::{
    VhostUserGpuCursorPos, VhostUserGpuCursorUpdate, VhostUserGpuScanout, VhostUserGpuUpdate,
};
use vhost::vhost_user::message::VhostUserU64;
use vhost::vhost_user::GpuBackend;

use crate::damage::Damage;
use crate::outbox::{Message, Outbox};
use crate::protocol::DisplayMode;
use crate::screens::{Area, Screens};

/// Display-channel protocol feature: the frontend answers GET_EDID. Negotiated as QEMU
/// expects; the device sends its own EDIDs (see `edid.rs`), so it never asks.
pub const PROTOCOL_F_EDID: u64 = 1 << 0;

/// The channel's state.
#[derive(Default)]
pub struct Display {
    pending: Option<GpuBackend>,
    active: Option<Active>,
    /// `--capture-dir` and `--vnc`: scanouts, updates and the cursor are also kept here.
    screens: Option<Arc<Screens>>,
    /// What was last sent of each scanout: updates are cut to what changed.
    damage: Damage,
    /// The changed parts of the update being sent.
    parts: Vec<Area>,
    /// A changed part narrower than its update, packed.
    packed: Vec<u8>,
    /// Updates, pixels flushed and pixels sent since the last debug line.
    stats: (u64, u64, u64),
}

struct Active {
    /// For requests that wait for a reply (display info); its lock keeps each message whole
    /// against the outbox thread's sends.
    backend: GpuBackend,
    /// SCANOUT, UPDATE and cursor messages, sent in order by their own thread.
    outbox: Outbox,
}

/// Size of a cursor image in bytes (64 x 64, 4 bytes a pixel).
pub const CURSOR_BYTES: usize = 64 * 64 * 4;

impl Display {
    /// A display with no channel yet, keeping a copy in `screens` when given.
    pub fn new(screens: Option<Arc<Screens>>) -> Self {
        Display {
            screens,
            ..Default::default()
        }
    }

    /// True when someone looks at the pixels: a frontend channel, the capture or VNC.
    pub fn wants_frames(&self) -> bool {
        self.present() || self.screens.is_some()
    }

    /// Takes a socket from the frontend; negotiation happens on first use.
    pub fn set_pending(&mut self, backend: GpuBackend) {
        self.active = None;
        self.damage.forget();
        self.pending = Some(backend);
    }

    /// True when a channel is set (negotiated or not).
    pub fn present(&self) -> bool {
        self.pending.is_some() || self.active.is_some()
    }

    fn active(&mut self) -> Option<&mut Active> {
        if let Some(backend) = self.pending.take() {
            match backend.get_protocol_features() {
                Ok(offered) => {
                    let features = offered.value & PROTOCOL_F_EDID;
                    match backend.set_protocol_features(&VhostUserU64::new(features)) {
                        Ok(()) => match Outbox::start(backend.clone()) {
                            Ok(outbox) => {
                                info!("display channel up, protocol features {features:#x}");
                                self.active = Some(Active { backend, outbox });
                            }
                            Err(e) => warn!("display channel: sending thread: {e}; headless"),
                        },
                        Err(e) => warn!("display channel: set protocol features: {e}; headless"),
                    }
                }
                Err(e) => warn!("display channel: get protocol features: {e}; headless"),
            }
        }
        self.active.as_mut()
    }

    /// Runs `f` on the channel; on an I/O error the channel is dropped.
    fn with<T>(&mut self, what: &str, f: impl FnOnce(&Active) -> std::io::Result<T>) -> Option<T> {
        let active = self.active()?;
        match f(active) {
            Ok(v) => Some(v),
            Err(e) => {
                warn!("display channel: {what}: {e}; going on headless");
                self.active = None;
                None
            }
        }
    }

    /// Queues a one-way message; a failed channel is dropped (the outbox logged why).
    fn send(&mut self, msg: impl FnOnce(&Outbox) -> Message) {
        let Some(active) = self.active() else {
            return;
        };
        if active.outbox.push(msg(&active.outbox)).is_err() {
            self.active = None;
        }
    }

    /// Announces a scanout's size; 0 x 0 disables it.
    pub fn scanout(&mut self, scanout_id: u32, width: u32, height: u32) {
        let msg = VhostUserGpuScanout {
            scanout_id,
            width,
            height,
        };
        self.damage.scanout(scanout_id, width, height);
        if let Some(c) = &self.screens {
            c.scanout(scanout_id, width, height);
        }
        self.send(|_| Message::Scanout(msg));
    }

    /// Sends packed pixels (`width * height * 4` bytes, B8G8R8X8) for a rectangle of a scanout:
    /// the parts that differ from what was sent before (see [`Damage`]).
    pub fn update(
        &mut self,
        scanout_id: u32,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        data: &[u8],
    ) {
        let area = Area {
            x,
            y,
            width,
            height,
        };
        let parts = self.cut(scanout_id, area, data);
        self.send_parts(scanout_id, area, data, &parts);
        self.parts = parts;
    }

    /// [`Display::update`] of pixels the caller gives away: when all of them go out (the whole
    /// update changed), the buffer itself is queued for the channel, with no copy. Returns a
    /// buffer for the caller's next readback: `data` back, or a spare one from the outbox
    /// (any length, stale bytes).
    pub fn update_owned(
        &mut self,
        scanout_id: u32,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        data: Vec<u8>,
    ) -> Vec<u8> {
        let area = Area {
            x,
            y,
            width,
            height,
        };
        let parts = self.cut(scanout_id, area, &data);
        let all = parts.len() == 1 && parts[0] == area;
        let bytes = width as usize * height as usize * 4;
        if !all || data.len() != bytes || self.active().is_none() {
            self.send_parts(scanout_id, area, &data, &parts);
            self.parts = parts;
            return data;
        }
        self.parts = parts;
        if let Some(c) = &self.screens {
            c.update(scanout_id, x, y, width, height, &data);
        }
        let msg = VhostUserGpuUpdate {
            scanout_id,
            x,
            y,
            width,
            height,
        };
        let Some(active) = self.active() else {
            return data;
        };
        let spare = active.outbox.spare();
        if active.outbox.push(Message::Update(msg, data)).is_err() {
            self.active = None;
        }
        spare
    }

    /// The parts of an update of `area` that differ from what the frontend holds.
    fn cut(&mut self, scanout_id: u32, area: Area, data: &[u8]) -> Vec<Area> {
        let mut parts = std::mem::take(&mut self.parts);
        parts.clear();
        self.damage.changed(scanout_id, area, data, &mut parts);
        if log::log_enabled!(log::Level::Debug) {
            let px = |a: &Area| u64::from(a.width) * u64::from(a.height);
            self.stats.0 += 1;
            self.stats.1 += px(&area);
            self.stats.2 += parts.iter().map(px).sum::<u64>();
            if self.stats.0 == 100 {
                log::debug!(
                    "display: the last 100 updates sent {:.1}% of the pixels flushed",
                    self.stats.2 as f64 * 100.0 / self.stats.1.max(1) as f64
                );
                self.stats = (0, 0, 0);
            }
        }
        parts
    }

    /// Sends `parts` of an update of `area` whose packed rows are `data`, each copied once:
    /// into an outbox buffer with a channel, else (for `--capture-dir`/`--vnc` alone) sliced or
    /// packed for the screens.
    fn send_parts(&mut self, scanout_id: u32, area: Area, data: &[u8], parts: &[Area]) {
        let mut packed = std::mem::take(&mut self.packed);
        for p in parts {
            let msg = VhostUserGpuUpdate {
                scanout_id,
                x: p.x,
                y: p.y,
                width: p.width,
                height: p.height,
            };
            let Some(active) = self.active() else {
                if let (Some(c), Some(pixels)) =
                    (&self.screens, part_pixels(area, p, data, &mut packed))
                {
                    c.update(scanout_id, p.x, p.y, p.width, p.height, pixels);
                }
                continue;
            };
            let mut buf = active.outbox.buffer();
            if !pack(area, p, data, &mut buf) {
                continue;
            }
            if let Some(c) = &self.screens {
                c.update(scanout_id, p.x, p.y, p.width, p.height, &buf);
            }
            self.send(|_| Message::Update(msg, buf));
        }
        self.packed = packed;
    }

    /// Moves the cursor.
    pub fn cursor_pos(&mut self, scanout_id: u32, x: u32, y: u32) {
        let msg = VhostUserGpuCursorPos { scanout_id, x, y };
        self.send(|_| Message::CursorPos(msg));
    }

    /// Hides the cursor.
    pub fn cursor_hide(&mut self, scanout_id: u32, x: u32, y: u32) {
        let msg = VhostUserGpuCursorPos { scanout_id, x, y };
        if let Some(s) = &self.screens {
            s.cursor(None, false);
        }
        self.send(|_| Message::CursorHide(msg));
    }

    /// Sets the cursor image and position.
    pub fn cursor_update(
        &mut self,
        pos: (u32, u32, u32),
        hot: (u32, u32),
        image: &[u8; CURSOR_BYTES],
    ) {
        let msg = VhostUserGpuCursorUpdate {
            pos: VhostUserGpuCursorPos {
                scanout_id: pos.0,
                x: pos.1,
                y: pos.2,
            },
            hot_x: hot.0,
            hot_y: hot.1,
        };
        if let Some(s) = &self.screens {
            s.cursor(Some((hot.0, hot.1, &image[..])), true);
        }
        self.send(|_| Message::CursorUpdate(msg, Box::new(*image)));
    }

    /// The frontend's view of the displays, for the first `n` scanouts.
    pub fn display_info(&mut self, n: usize) -> Option<Vec<DisplayMode>> {
        let info = self.with("get display info", |a| a.backend.get_display_info())?;
        Some(
            info.pmodes
                .iter()
                .take(n)
                .map(|m| DisplayMode {
                    width: m.r.width,
                    height: m.r.height,
                    enabled: m.enabled != 0,
                })
                .collect(),
        )
    }
}

/// The pixels of part `p` of an update of `area` whose packed rows are `data`: a slice of
/// `data` when `p` has the update's width, else packed into `scratch`.
fn part_pixels<'a>(
    area: Area,
    p: &Area,
    data: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Option<&'a [u8]> {
    if p.x == area.x && p.width == area.width {
        let row = area.width as usize * 4;
        let first = (p.y.checked_sub(area.y)? as usize) * row;
        return data.get(first..first + p.height as usize * row);
    }
    scratch.clear();
    pack(area, p, data, scratch).then_some(&scratch[..])
}

/// Appends the rows of part `p` of an update of `area` (packed rows in `data`) to `out`;
/// false when `p` does not lie in `data`.
fn pack(area: Area, p: &Area, data: &[u8], out: &mut Vec<u8>) -> bool {
    let row = area.width as usize * 4;
    let (Some(dy), Some(dx)) = (p.y.checked_sub(area.y), p.x.checked_sub(area.x)) else {
        return false;
    };
    let first = dy as usize * row + dx as usize * 4;
    let bytes = p.width as usize * 4;
    if p.x == area.x && p.width == area.width {
        // Whole rows: one run.
        return match data.get(first..first + p.height as usize * row) {
            Some(d) => {
                out.extend_from_slice(d);
                true
            }
            None => false,
        };
    }
    for r in 0..p.height as usize {
        let at = first + r * row;
        match data.get(at..at + bytes) {
            Some(d) => out.extend_from_slice(d),
            None => return false,
        }
    }
    true
}
