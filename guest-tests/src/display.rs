//! The frontend's end of the vhost-user GPU display channel, played the way QEMU plays it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::wire::{Msg, OK_DISPLAY_INFO, OK_EDID};

const GET_PROTOCOL_FEATURES: u32 = 1;
const SET_PROTOCOL_FEATURES: u32 = 2;
const GET_DISPLAY_INFO: u32 = 3;
const CURSOR_POS: u32 = 4;
const CURSOR_POS_HIDE: u32 = 5;
const CURSOR_UPDATE: u32 = 6;
const SCANOUT: u32 = 7;
const UPDATE: u32 = 8;
const GET_EDID: u32 = 11;
const REPLY: u32 = 0x4;

/// What the backend sent over the display channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisplayEvent {
    SetProtocolFeatures(u64),
    Scanout {
        id: u32,
        width: u32,
        height: u32,
    },
    Update {
        id: u32,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        data: Vec<u8>,
    },
    CursorPos {
        id: u32,
        x: u32,
        y: u32,
    },
    CursorHide {
        id: u32,
        x: u32,
        y: u32,
    },
    CursorUpdate {
        id: u32,
        x: u32,
        y: u32,
        hot_x: u32,
        hot_y: u32,
        image: Vec<u8>,
    },
    /// The backend asked for display info / EDID (answered from the server's config).
    AskedDisplayInfo,
    AskedEdid(u32),
    /// A message the harness does not know, or a malformed one.
    Unknown(u32),
}

/// What the frontend answers.
#[derive(Clone, Debug, Default)]
pub struct DisplayConfig {
    /// Protocol features offered (bit 0 = EDID).
    pub protocol_features: u64,
    /// (width, height, enabled) per scanout for GET_DISPLAY_INFO.
    pub modes: Vec<(u32, u32, bool)>,
    /// EDID bytes returned for GET_EDID.
    pub edid: Vec<u8>,
}

/// The display channel server: a thread reading the backend's messages.
pub struct DisplayServer {
    events: Receiver<DisplayEvent>,
    _thread: JoinHandle<()>,
    pub config: Arc<Mutex<DisplayConfig>>,
    /// While true the server reads nothing (a frontend whose main loop is busy).
    paused: Arc<(Mutex<bool>, Condvar)>,
}

fn read_exact(s: &mut UnixStream, n: usize) -> Option<Vec<u8>> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).ok()?;
    Some(v)
}

impl DisplayServer {
    /// Starts serving `sock` (the frontend's end of the socket pair).
    pub fn start(mut sock: UnixStream, config: DisplayConfig) -> Self {
        let (tx, rx) = channel();
        let config = Arc::new(Mutex::new(config));
        let cfg = Arc::clone(&config);
        let paused = Arc::new((Mutex::new(false), Condvar::new()));
        let pause = Arc::clone(&paused);
        let thread = std::thread::spawn(move || loop {
            {
                let (m, cv) = &*pause;
                let mut p = m.lock().unwrap();
                while *p {
                    p = cv.wait(p).unwrap();
                }
            }
            let Some(h) = read_exact(&mut sock, 12) else {
                return;
            };
            let (req, size) = (crate::wire::le32(&h, 0), crate::wire::le32(&h, 8) as usize);
            if size > 256 << 20 {
                let _ = tx.send(DisplayEvent::Unknown(req));
                return;
            }
            let Some(p) = read_exact(&mut sock, size) else {
                return;
            };
            let le = |o| crate::wire::le32(&p, o);
            let reply = |s: &mut UnixStream, body: &[u8]| {
                let mut m = Msg::default().u32(req).u32(REPLY).u32(body.len() as u32).0;
                m.extend_from_slice(body);
                let _ = s.write_all(&m);
            };
            let ev = match req {
                GET_PROTOCOL_FEATURES => {
                    let f = cfg.lock().unwrap().protocol_features;
                    reply(&mut sock, &f.to_le_bytes());
                    continue;
                }
                SET_PROTOCOL_FEATURES => {
                    DisplayEvent::SetProtocolFeatures(crate::wire::le64(&p, 0))
                }
                GET_DISPLAY_INFO => {
                    let modes = cfg.lock().unwrap().modes.clone();
                    let mut m = Msg::hdr(OK_DISPLAY_INFO, 0, 0, 0, 0);
                    for i in 0..16 {
                        let (w, h, en) = modes.get(i).copied().unwrap_or((0, 0, false));
                        m = m.rect(0, 0, w, h).u32(u32::from(en)).u32(0);
                    }
                    reply(&mut sock, &m.0);
                    DisplayEvent::AskedDisplayInfo
                }
                GET_EDID => {
                    let edid = cfg.lock().unwrap().edid.clone();
                    let mut m = Msg::hdr(OK_EDID, 0, 0, 0, 0)
                        .u32(edid.len() as u32)
                        .u32(0)
                        .bytes(&edid);
                    m.0.resize(24 + 8 + 1024, 0);
                    reply(&mut sock, &m.0);
                    DisplayEvent::AskedEdid(le(0))
                }
                SCANOUT => DisplayEvent::Scanout {
                    id: le(0),
                    width: le(4),
                    height: le(8),
                },
                UPDATE => DisplayEvent::Update {
                    id: le(0),
                    x: le(4),
                    y: le(8),
                    width: le(12),
                    height: le(16),
                    data: p.get(20..).unwrap_or_default().to_vec(),
                },
                CURSOR_POS => DisplayEvent::CursorPos {
                    id: le(0),
                    x: le(4),
                    y: le(8),
                },
                CURSOR_POS_HIDE => DisplayEvent::CursorHide {
                    id: le(0),
                    x: le(4),
                    y: le(8),
                },
                CURSOR_UPDATE => DisplayEvent::CursorUpdate {
                    id: le(0),
                    x: le(4),
                    y: le(8),
                    hot_x: le(12),
                    hot_y: le(16),
                    image: p.get(20..).unwrap_or_default().to_vec(),
                },
                other => DisplayEvent::Unknown(other),
            };
            if tx.send(ev).is_err() {
                return;
            }
        });
        DisplayServer {
            events: rx,
            _thread: thread,
            config,
            paused,
        }
    }

    /// Stops reading the socket (true) or reads on (false), as a frontend whose main loop is
    /// busy elsewhere.
    pub fn pause(&self, on: bool) {
        let (m, cv) = &*self.paused;
        *m.lock().unwrap() = on;
        cv.notify_all();
    }

    /// The next event, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<DisplayEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Waits for the first event `f` accepts, skipping others; None on timeout.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&DisplayEvent) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self.next(left)?;
            if let Some(v) = f(&e) {
                return Some(v);
            }
        }
    }

    /// Everything that arrived so far, without waiting.
    pub fn drain(&self) -> Vec<DisplayEvent> {
        self.events.try_iter().collect()
    }
}
