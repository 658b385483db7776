//! One VNC client: the handshake, then a reader thread (the client's messages, its input) and
//! a writer (this thread: framebuffer updates when the client asked and something changed).

use std::io::{BufWriter, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use log::{debug, info};

use super::auth;
use super::qmp::{self, Input, ABS_MAX};
use super::rfb::{self, ClientMessage, PixelFormat, Zrle};
use super::tight::{Tight, TightOptions, ENC_TIGHT};
use super::{Conn, Shared};
use crate::screens::Area;

/// Time a client has for each step of the handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that does not take an update within this is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a wrong password.
const AUTH_FAIL_DELAY: Duration = Duration::from_millis(500);

/// Why a client's session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Rfb(#[from] rfb::RfbError),
    #[error("client speaks {0:?}, not RFB 3.x")]
    Version(String),
    #[error("client chose security type {0}, which was not offered")]
    SecurityType(u8),
    #[error("refused: TLS is required, and {0}")]
    NeedsTls(String),
    #[error("wrong password")]
    Password,
    #[error("too many clients")]
    Full,
}

/// What the reader tells the writer.
struct State {
    format: PixelFormat,
    /// The encoding for pixels: Raw, ZRLE or Tight (the client's first choice of these).
    encoding: i32,
    tight: TightOptions,
    desktop_size: bool,
    /// The client takes ExtendedDesktopSize (and may send SetDesktopSize).
    ext_desktop_size: bool,
    cursor: bool,
    /// The pending FramebufferUpdateRequest: (incremental, area).
    request: Option<(bool, Area)>,
    /// Continuous updates are on for this area (EnableContinuousUpdates): changes go out
    /// without requests, as fast as the connection takes them.
    continuous: Option<Area>,
    /// Messages the writer sends before its next update: EndOfContinuousUpdates, fences.
    outbox: Vec<Vec<u8>>,
    /// The server's side of an extension was announced (once a connection each).
    announced_continuous: bool,
    announced_fence: bool,
    announced_ext_desktop_size: bool,
    closed: bool,
}

struct Session {
    shared: Arc<Shared>,
    state: Mutex<State>,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves one connection to its end; `admitted` is false when the server is full (the client
/// is told so in the handshake).
pub fn serve(conn: Conn, shared: Arc<Shared>, admitted: bool) -> Result<(), SessionError> {
    conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    conn.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let (minor, conn) = handshake(conn, &shared, admitted)?;
    let mut c = conn.try_clone()?;
    // ClientInit: the shared flag; every client shares the screen.
    let mut flag = [0u8; 1];
    c.read_exact(&mut flag)?;
    let (w, h) = shared.size();
    let mut init = Vec::new();
    init.extend_from_slice(&(w as u16).to_be_bytes());
    init.extend_from_slice(&(h as u16).to_be_bytes());
    init.extend_from_slice(&PixelFormat::NATIVE.to_bytes());
    c.write_all(&init)?;
    rfb::write_string(&mut c, &shared.name)?;
    debug!("VNC client: RFB 3.{minor}, session up at {w}x{h}");
    conn.set_read_timeout(None)?;
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;

    let session = Arc::new(Session {
        shared: Arc::clone(&shared),
        state: Mutex::new(State {
            format: PixelFormat::NATIVE,
            encoding: rfb::ENC_RAW,
            tight: TightOptions::default(),
            desktop_size: false,
            ext_desktop_size: false,
            cursor: false,
            request: None,
            continuous: None,
            outbox: Vec::new(),
            announced_continuous: false,
            announced_fence: false,
            announced_ext_desktop_size: false,
            closed: false,
        }),
    });
    let reader_conn = conn.try_clone()?;
    let reader_session = Arc::clone(&session);
    let reader = std::thread::Builder::new()
        .name("vnc-client-in".into())
        .spawn(move || {
            let r = read_loop(reader_conn, &reader_session);
            reader_session.lock().closed = true;
            reader_session.shared.screens.poke();
            r
        })?;
    let written = write_loop(&conn, &session, (w, h));
    // Whichever side ends first ends the other.
    session.lock().closed = true;
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let read = reader.join().unwrap_or(Ok(()));
    match (written, read) {
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// VeNCrypt (security type 19) and its subtypes (VeNCrypt 0.2).
const SEC_VENCRYPT: u8 = 19;
const VENCRYPT_X509NONE: u32 = 260;
const VENCRYPT_X509VNC: u32 = 261;

/// The RFB handshake up to the security result; returns the protocol's minor version and the
/// connection the session goes on with (under TLS after VeNCrypt).
fn handshake(mut c: Conn, shared: &Shared, admitted: bool) -> Result<(u8, Conn), SessionError> {
    c.write_all(b"RFB 003.008\n")?;
    let mut v = [0u8; 12];
    c.read_exact(&mut v)?;
    let text = String::from_utf8_lossy(&v).into_owned();
    let minor = match (&v[..8], &v[11..]) {
        (b"RFB 003.", b"\n") => {
            let m: u32 = text[8..11]
                .parse()
                .map_err(|_| SessionError::Version(text.clone()))?;
            // 3.8 and anything newer speak 3.8; 3.7; everything older 3.3.
            if m >= 8 {
                8
            } else if m == 7 {
                7
            } else {
                3
            }
        }
        _ => return Err(SessionError::Version(text)),
    };
    // With TLS configured, RFB clients get VeNCrypt and nothing else: no plain type for a
    // client (or a man in the middle) to fall back to. WebSocket clients (noVNC cannot do TLS
    // inside RFB) keep the plain types, on the listener's own loopback-or-password rule.
    let tls = shared.tls.as_ref().filter(|_| !c.is_websocket());
    let security: u8 = match (tls, &shared.password) {
        (Some(_), _) => SEC_VENCRYPT,
        (None, Some(_)) => 2,
        (None, None) => 1,
    };
    if minor == 3 {
        // The server picks; 0 and a reason refuses.
        if !admitted {
            c.write_all(&0u32.to_be_bytes())?;
            rfb::write_string(&mut c, "too many VNC clients")?;
            return Err(SessionError::Full);
        }
        if tls.is_some() {
            c.write_all(&0u32.to_be_bytes())?;
            rfb::write_string(
                &mut c,
                "this server requires TLS (VeNCrypt), which RFB 3.3 lacks",
            )?;
            return Err(SessionError::NeedsTls("an RFB 3.3 client".into()));
        }
        c.write_all(&u32::from(security).to_be_bytes())?;
    } else {
        if !admitted {
            c.write_all(&[0])?;
            rfb::write_string(&mut c, "too many VNC clients")?;
            return Err(SessionError::Full);
        }
        c.write_all(&[1, security])?;
        let mut chosen = [0u8; 1];
        c.read_exact(&mut chosen)?;
        if chosen[0] != security {
            if minor == 8 {
                c.write_all(&1u32.to_be_bytes())?;
                rfb::write_string(
                    &mut c,
                    if tls.is_some() {
                        "this server requires TLS (VeNCrypt)"
                    } else {
                        "security type not offered"
                    },
                )?;
            }
            if tls.is_some() {
                return Err(SessionError::NeedsTls(format!(
                    "the client chose security type {}",
                    chosen[0]
                )));
            }
            return Err(SessionError::SecurityType(chosen[0]));
        }
    }
    if let Some(tls) = tls {
        let subtype = if shared.password.is_some() {
            VENCRYPT_X509VNC
        } else {
            VENCRYPT_X509NONE
        };
        // VeNCrypt 0.2: the versions, the one subtype offered, the client's choice.
        c.write_all(&[0, 2])?;
        let mut version = [0u8; 2];
        c.read_exact(&mut version)?;
        if version != [0, 2] {
            c.write_all(&[1])?;
            return Err(SessionError::NeedsTls(format!(
                "VeNCrypt version {}.{} (only 0.2 is spoken)",
                version[0], version[1]
            )));
        }
        let mut offer = vec![0, 1];
        offer.extend_from_slice(&subtype.to_be_bytes());
        c.write_all(&offer)?;
        let mut pick = [0u8; 4];
        c.read_exact(&mut pick)?;
        let pick = u32::from_be_bytes(pick);
        if pick != subtype {
            c.write_all(&[0])?;
            return Err(SessionError::NeedsTls(format!(
                "the client chose VeNCrypt subtype {pick}, {subtype} was offered"
            )));
        }
        c.write_all(&[1])?;
        c = Conn::Tls(tls.accept(c)?);
    }
    if let Some(pw) = &shared.password {
        let challenge = auth::challenge()?;
        c.write_all(&challenge)?;
        let mut answer = [0u8; 16];
        c.read_exact(&mut answer)?;
        if !pw.check(&challenge, &answer) {
            std::thread::sleep(AUTH_FAIL_DELAY);
            c.write_all(&1u32.to_be_bytes())?;
            if minor == 8 {
                rfb::write_string(&mut c, "authentication failed")?;
            }
            return Err(SessionError::Password);
        }
        c.write_all(&0u32.to_be_bytes())?;
    } else if minor == 8 || tls.is_some() {
        // RFB 3.8 reports the result of "None" too; VeNCrypt's X509None always does.
        c.write_all(&0u32.to_be_bytes())?;
    }
    Ok((minor, c))
}

fn read_loop(mut conn: Conn, s: &Session) -> Result<(), SessionError> {
    let mut buttons = 0u8;
    let mut told_view_only = false;
    loop {
        let msg = match rfb::read_message(&mut conn) {
            Ok(m) => m,
            Err(rfb::RfbError::Io(e)) if is_hangup(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let input = |e: Input| {
            if let Some(sink) = &s.shared.input {
                if !sink.send(e) {
                    crate::guest_warn!("VNC input: queue full; event dropped");
                }
            }
        };
        if s.shared.input.is_none()
            && matches!(
                msg,
                ClientMessage::Key { .. } | ClientMessage::Pointer { .. }
            )
            && !told_view_only
        {
            told_view_only = true;
            info!("VNC client sent input; view only (no --vnc-input-qmp)");
        }
        match msg {
            ClientMessage::SetPixelFormat(f) => s.lock().format = f,
            ClientMessage::SetEncodings(encs) => {
                let mut st = s.lock();
                // The client lists encodings in its order of preference.
                let encoding = encs
                    .iter()
                    .copied()
                    .find(|&e| e == rfb::ENC_ZRLE || e == rfb::ENC_RAW || e == ENC_TIGHT)
                    .unwrap_or(rfb::ENC_RAW);
                let tight = TightOptions::from_encodings(&encs);
                let changed = (st.encoding, st.tight) != (encoding, tight);
                st.encoding = encoding;
                st.tight = tight;
                st.desktop_size = encs.contains(&rfb::ENC_DESKTOP_SIZE);
                st.cursor = encs.contains(&rfb::ENC_CURSOR);
                // A client that knows the extensions learns that this server has them: an
                // EndOfContinuousUpdates, and a fence (which it answers).
                let mut poke = false;
                if encs.contains(&rfb::ENC_CONTINUOUS_UPDATES) && !st.announced_continuous {
                    st.announced_continuous = true;
                    st.outbox.push(vec![rfb::MSG_END_OF_CONTINUOUS_UPDATES]);
                    poke = true;
                }
                if encs.contains(&rfb::ENC_FENCE) && !st.announced_fence {
                    st.announced_fence = true;
                    st.outbox.push(rfb::fence(rfb::FENCE_REQUEST, &[]));
                    poke = true;
                }
                // ExtendedDesktopSize: the layout now (a client sends SetDesktopSize only to
                // a server that has sent one).
                st.ext_desktop_size = encs.contains(&rfb::ENC_EXTENDED_DESKTOP_SIZE);
                if st.ext_desktop_size && !st.announced_ext_desktop_size {
                    st.announced_ext_desktop_size = true;
                    let (w, h) = s.shared.size();
                    st.outbox.push(rfb::extended_desktop_size(
                        rfb::RESIZE_BY_SERVER,
                        rfb::RESIZE_OK,
                        w,
                        h,
                    ));
                    poke = true;
                }
                drop(st);
                if poke {
                    s.shared.screens.poke();
                }
                if changed {
                    let what = match (encoding, tight.quality) {
                        (ENC_TIGHT, Some(q)) => format!(
                            "Tight with JPEG at quality level {q}, compression level {}",
                            tight.compression
                        ),
                        (ENC_TIGHT, None) => format!(
                            "Tight without JPEG, compression level {}",
                            tight.compression
                        ),
                        (rfb::ENC_ZRLE, _) => "ZRLE".into(),
                        _ => "Raw".into(),
                    };
                    info!("VNC client: sending {what}");
                }
            }
            ClientMessage::SetDesktopSize {
                width,
                height,
                screen_count,
                screens,
            } => {
                let status = set_desktop_size(s, width, height, screen_count, &screens);
                // The answer carries the size now; the new one follows, as a server-side
                // change, once the guest has set it.
                let (w, h) = s.shared.size();
                let mut st = s.lock();
                st.outbox.push(rfb::extended_desktop_size(
                    rfb::RESIZE_BY_THIS_CLIENT,
                    status,
                    w,
                    h,
                ));
                drop(st);
                s.shared.screens.poke();
            }
            ClientMessage::UpdateRequest {
                incremental,
                x,
                y,
                width,
                height,
            } => {
                let area = Area {
                    x: x.into(),
                    y: y.into(),
                    width: width.into(),
                    height: height.into(),
                };
                {
                    let mut st = s.lock();
                    // A full request wins over an incremental one still pending.
                    let keep_full = st.request.is_some_and(|(inc, _)| !inc);
                    st.request = Some((incremental && !keep_full, area));
                }
                s.shared.screens.poke();
            }
            ClientMessage::EnableContinuousUpdates {
                enable,
                x,
                y,
                width,
                height,
            } => {
                {
                    let mut st = s.lock();
                    if enable {
                        st.continuous = Some(Area {
                            x: x.into(),
                            y: y.into(),
                            width: width.into(),
                            height: height.into(),
                        });
                    } else {
                        // Stopped: the client learns that no more will come unasked.
                        st.continuous = None;
                        st.outbox.push(vec![rfb::MSG_END_OF_CONTINUOUS_UPDATES]);
                    }
                }
                s.shared.screens.poke();
            }
            ClientMessage::Fence { flags, payload } => {
                if flags & rfb::FENCE_REQUEST != 0 {
                    // Answered by the writer after everything it sent before (BlockBefore
                    // holds by itself: one writer, in order); BlockAfter and SyncNext are
                    // not offered, so their bits are cleared in the answer, as the
                    // extension asks of a side that does not do them.
                    let answer = rfb::fence(flags & rfb::FENCE_BLOCK_BEFORE, &payload);
                    s.lock().outbox.push(answer);
                    s.shared.screens.poke();
                }
            }
            ClientMessage::Key { down, keysym } => match qmp::qcode(keysym) {
                Some(qcode) => input(Input::Key { qcode, down }),
                None => debug!("VNC key {keysym:#x} has no QEMU key code; dropped"),
            },
            ClientMessage::Pointer { buttons: b, x, y } => {
                if s.shared.input.is_some() {
                    let (w, h) = s.shared.size();
                    let scale = |v: u16, n: u32| {
                        u32::from(v).min(n.saturating_sub(1)) * ABS_MAX / n.saturating_sub(1).max(1)
                    };
                    input(Input::Move {
                        x: scale(x, w),
                        y: scale(y, h),
                    });
                    for (bit, button) in qmp::BUTTONS {
                        if (b ^ buttons) & bit != 0 {
                            input(Input::Button {
                                button,
                                down: b & bit != 0,
                            });
                        }
                    }
                }
                buttons = b;
            }
            ClientMessage::CutText => {}
        }
    }
}

fn is_hangup(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted
    )
}

/// What the writer knows of the client's picture.
struct Seen {
    /// Serial of the picture last sent from.
    serial: u64,
    cursor: u64,
    size: (u32, u32),
}

fn write_loop(conn: &Conn, s: &Session, size: (u32, u32)) -> Result<(), SessionError> {
    let mut tight = Tight::default();
    let r = write_updates(conn, s, size, &mut tight);
    let sent = tight.sent();
    if sent.total() > 0 {
        info!("VNC client: Tight sent {sent}");
    }
    r
}

fn write_updates(
    conn: &Conn,
    s: &Session,
    size: (u32, u32),
    tight: &mut Tight,
) -> Result<(), SessionError> {
    let shared = &s.shared;
    let mut seen = Seen {
        serial: 0,
        cursor: 0,
        size,
    };
    let mut zrle = Zrle::default();
    let mut out = BufWriter::with_capacity(1 << 16, conn);
    let mut scratch = Vec::new();
    loop {
        let now = shared.screens.serial();
        let (format, encoding, tight_opts, desktop_size, cursor, request, outbox, ext) = {
            let mut st = s.lock();
            if st.closed {
                return Ok(());
            }
            // An explicit request first (a full one must be answered whole); else, with
            // continuous updates on, an incremental one for their area, always pending.
            let request = st.request.or(st.continuous.map(|a| (true, a)));
            (
                st.format,
                st.encoding,
                st.tight,
                st.desktop_size,
                st.cursor,
                request,
                std::mem::take(&mut st.outbox),
                st.ext_desktop_size,
            )
        };
        if !outbox.is_empty() {
            for m in &outbox {
                out.write_all(m)?;
            }
            out.flush()?;
        }
        let Some((incremental, area)) = request else {
            shared.screens.wait(now, Duration::from_millis(500));
            continue;
        };
        let wants = (format, desktop_size || ext, ext, cursor);
        let Some(mut update) = build_update(shared, &mut seen, wants, incremental, area) else {
            shared.screens.wait(now, Duration::from_millis(500));
            continue;
        };
        {
            let mut st = s.lock();
            // Only this request was answered; one that came meanwhile stays.
            if st.request.is_some() && st.request == request {
                st.request = None;
            }
        }
        if encoding == ENC_TIGHT {
            // Tight cuts each rectangle into several: encoded first, so that the update's
            // header can say how many there are.
            scratch.clear();
            let mut n = usize::from(update.pseudo);
            for (a, px) in &update.rects {
                let area = (a.x, a.y, a.width, a.height);
                n += usize::from(
                    tight
                        .encode(&format, tight_opts, area, px, &mut scratch)
                        .map_err(std::io::Error::from)?,
                );
            }
            let n = u16::try_from(n)
                .map_err(|_| std::io::Error::other("more than 65535 rectangles in an update"))?;
            update.head[2..4].copy_from_slice(&n.to_be_bytes());
            out.write_all(&update.head)?;
            out.write_all(&scratch)?;
            out.flush()?;
            shared.stats.updates.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        out.write_all(&update.head)?;
        let use_zrle = encoding == rfb::ENC_ZRLE;
        for (a, px) in &update.rects {
            let mut h = Vec::with_capacity(12);
            let enc = if use_zrle {
                rfb::ENC_ZRLE
            } else {
                rfb::ENC_RAW
            };
            rfb::rect_header(&mut h, a.x, a.y, a.width, a.height, enc);
            out.write_all(&h)?;
            scratch.clear();
            if use_zrle {
                zrle.encode(&format, a.width, a.height, px, &mut scratch)?;
            } else if format == PixelFormat::NATIVE {
                // The copied-out pixels are already the client's: no second copy.
                out.write_all(px)?;
                continue;
            } else {
                format.convert(px, &mut scratch);
            }
            out.write_all(&scratch)?;
        }
        out.flush()?;
        shared.stats.updates.fetch_add(1, Ordering::Relaxed);
    }
}

/// A FramebufferUpdate to send: its header (with any pseudo-rectangles) and the changed
/// rectangles with their B8G8R8X8 pixels, encoded as they are written.
struct Update {
    head: Vec<u8>,
    /// Pseudo-rectangles in `head`.
    pseudo: u16,
    rects: Vec<(Area, Vec<u8>)>,
}

/// What answers the client's request; None when there is nothing to send yet (an
/// incremental request waits for a change).
fn build_update(
    shared: &Shared,
    seen: &mut Seen,
    (format, desktop_size, ext, cursor): (PixelFormat, bool, bool, bool),
    incremental: bool,
    area: Area,
) -> Option<Update> {
    let screens = &shared.screens;
    let mut rects: Vec<(Area, Vec<u8>)> = Vec::new();
    let mut pseudo = 0u16;
    let mut body = Vec::new();
    if let Some((w, h)) = screens.size(shared.scanout) {
        if (w, h) != seen.size && desktop_size {
            // The new size alone; the client then asks for the whole picture.
            seen.size = (w, h);
            seen.serial = 0;
            let mut head = Vec::new();
            if ext {
                rfb::update_header(&mut head, 1);
                rfb::extended_desktop_size_rect(
                    &mut head,
                    rfb::RESIZE_BY_SERVER,
                    rfb::RESIZE_OK,
                    w,
                    h,
                );
            } else {
                update_and_rect(&mut head, 1, (0, 0, w, h), rfb::ENC_DESKTOP_SIZE);
            }
            return Some(Update {
                head,
                pseudo: 1,
                rects: Vec::new(),
            });
        }
        let client = Area {
            x: 0,
            y: 0,
            width: seen.size.0,
            height: seen.size.1,
        };
        let within = area.clip(&client);
        let since = if incremental { seen.serial } else { 0 };
        if let Some(within) = within {
            if let Some(ch) = screens.changes(shared.scanout, since, Some(within)) {
                seen.serial = ch.serial;
                rects = ch.rects;
            }
        }
    }
    if cursor {
        if let Some(c) = screens.cursor_since(seen.cursor) {
            seen.cursor = c.serial;
            let (w, h) = if c.visible { (64, 64) } else { (0, 0) };
            rfb::rect_header(
                &mut body,
                c.hot_x.min(63),
                c.hot_y.min(63),
                w,
                h,
                rfb::ENC_CURSOR,
            );
            if c.visible {
                rfb::cursor_body(&format, &c.pixels, 64, 64, &mut body);
            }
            pseudo = 1;
        }
    }
    if incremental && rects.is_empty() && pseudo == 0 {
        return None;
    }
    let mut head = Vec::with_capacity(4 + body.len());
    rfb::update_header(&mut head, rects.len() as u16 + pseudo);
    head.extend_from_slice(&body);
    Some(Update {
        head,
        pseudo,
        rects,
    })
}

/// A client's SetDesktopSize: checked, then passed to the guest's device. Returns the
/// ExtendedDesktopSize result for the answer.
fn set_desktop_size(
    s: &Session,
    width: u16,
    height: u16,
    screen_count: u8,
    screens: &[rfb::Screen],
) -> u32 {
    let shared = &s.shared;
    let Some(modes) = &shared.modes else {
        info!("VNC client asked for {width}x{height}: refused (resizing is not available here)");
        return rfb::RESIZE_PROHIBITED;
    };
    // One screen (a scanout is one monitor), covering the whole framebuffer.
    let one = screens.first().filter(|sc| {
        screen_count == 1 && (sc.x, sc.y, sc.width, sc.height) == (0, 0, width, height)
    });
    if one.is_none() {
        info!(
            "VNC client asked for {width}x{height} with {screen_count} screen(s): refused (one screen covering the whole size is what a scanout can show)"
        );
        return rfb::RESIZE_INVALID;
    }
    if shared.size() == (u32::from(width), u32::from(height)) {
        return rfb::RESIZE_OK;
    }
    match modes.request(shared.scanout, u32::from(width), u32::from(height)) {
        Ok(()) => {
            info!("VNC client asked for {width}x{height}: passed to the guest");
            rfb::RESIZE_OK
        }
        Err(e @ crate::modes::ModeRefused::Invalid(_)) => {
            info!("VNC client asked for {width}x{height}: refused ({e})");
            rfb::RESIZE_INVALID
        }
        Err(e @ crate::modes::ModeRefused::Prohibited(_)) => {
            info!("VNC client asked for {width}x{height}: refused ({e})");
            rfb::RESIZE_PROHIBITED
        }
    }
}

fn update_and_rect(msg: &mut Vec<u8>, n: u16, (x, y, w, h): (u32, u32, u32, u32), enc: i32) {
    rfb::update_header(msg, n);
    rfb::rect_header(msg, x, y, w, h, enc);
}

/// Counts a client in and out of the server's total.
pub struct Admission<'a>(pub &'a Shared);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.stats.clients.fetch_sub(1, Ordering::Relaxed);
    }
}
