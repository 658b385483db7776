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

use crate::protocol::DisplayMode;
use crate::screens::Screens;

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
}

struct Active {
    backend: GpuBackend,
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
                        Ok(()) => {
                            info!("display channel up, protocol features {features:#x}");
                            self.active = Some(Active { backend });
                        }
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

    /// Announces a scanout's size; 0 x 0 disables it.
    pub fn scanout(&mut self, scanout_id: u32, width: u32, height: u32) {
        let msg = VhostUserGpuScanout {
            scanout_id,
            width,
            height,
        };
        if let Some(c) = &self.screens {
            c.scanout(scanout_id, width, height);
        }
        self.with("scanout", |a| a.backend.set_scanout(&msg));
    }

    /// Sends packed pixels (`width * height * 4` bytes, B8G8R8X8) for a rectangle of a scanout.
    pub fn update(
        &mut self,
        scanout_id: u32,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        data: &[u8],
    ) {
        let msg = VhostUserGpuUpdate {
            scanout_id,
            x,
            y,
            width,
            height,
        };
        if let Some(c) = &self.screens {
            c.update(scanout_id, x, y, width, height, data);
        }
        self.with("update", |a| a.backend.update_scanout(&msg, data));
    }

    /// Moves the cursor.
    pub fn cursor_pos(&mut self, scanout_id: u32, x: u32, y: u32) {
        let msg = VhostUserGpuCursorPos { scanout_id, x, y };
        self.with("cursor pos", |a| a.backend.cursor_pos(&msg));
    }

    /// Hides the cursor.
    pub fn cursor_hide(&mut self, scanout_id: u32, x: u32, y: u32) {
        let msg = VhostUserGpuCursorPos { scanout_id, x, y };
        if let Some(s) = &self.screens {
            s.cursor(None, false);
        }
        self.with("cursor hide", |a| a.backend.cursor_pos_hide(&msg));
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
        self.with("cursor update", |a| a.backend.cursor_update(&msg, image));
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
