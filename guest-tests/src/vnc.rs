//! A VNC client for the tests, written from RFC 6143 apart from the server's code: the
//! handshake (None or VNC authentication), SetPixelFormat, SetEncodings, update requests,
//! input, and Raw, ZRLE, Tight (fill, palette, copy, JPEG), DesktopSize and Cursor decoding into
//! a B8G8R8X8 framebuffer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt, KeyInit};
use flate2::{Decompress, FlushDecompress};

pub const RAW: i32 = 0;
pub const ZRLE: i32 = 16;
pub const TIGHT: i32 = 7;
/// Tight's JPEG quality pseudo-encoding for level 0 (level n: this + n).
pub const TIGHT_QUALITY_0: i32 = -32;
/// Tight's compression level 0 pseudo-encoding (levels 0..=9 are this plus the level).
pub const TIGHT_COMPRESS_0: i32 = -256;
pub const CURSOR: i32 = -239;
pub const CONTINUOUS_UPDATES: i32 = -313;
pub const FENCE: i32 = -312;
pub const DESKTOP_SIZE: i32 = -223;
pub const EXTENDED_DESKTOP_SIZE: i32 = -308;

/// One screen of a layout: (id, x, y, width, height, flags).
pub type Screen = (u32, u16, u16, u16, u16, u32);
/// An ExtendedDesktopSize rectangle: (reason, status, width, height, screens).
pub type DesktopLayout = (u16, u16, u16, u16, Vec<Screen>);

/// A rectangle the server sent: (x, y, width, height, encoding).
pub type Rect = (u16, u16, u16, u16, i32);

/// A cursor shape: (hot x, hot y, width, height, pixels, mask).
pub type CursorShape = (u16, u16, u16, u16, Vec<u8>, Vec<u8>);

/// A connected client.
pub struct VncClient<S = UnixStream> {
    s: S,
    pub width: u32,
    pub height: u32,
    /// B8G8R8X8, `width * height`.
    pub fb: Vec<u8>,
    pub name: String,
    /// The last cursor shape.
    pub cursor: Option<CursorShape>,
    zlib: Decompress,
    /// Tight's four zlib streams.
    tight: [Decompress; 4],
    /// Bytes of each encoding received, by encoding number (for the benches).
    pub bytes: std::collections::BTreeMap<i32, u64>,
    /// Tight subrectangles received by kind: "fill", "mono", "indexed", "copy", "jpeg".
    pub tight_kinds: std::collections::BTreeMap<&'static str, u64>,
    /// EndOfContinuousUpdates messages received.
    pub end_of_continuous: u32,
    /// Fences received: (flags, payload).
    pub fences: Vec<(u32, Vec<u8>)>,
    /// ExtendedDesktopSize rectangles received, in order.
    pub layouts: Vec<DesktopLayout>,
}

/// Inflates `z` on the connection's stream `zlib` (each message ends in a sync flush).
fn inflate(zlib: &mut Decompress, z: &[u8], expect: usize) -> Result<Vec<u8>, String> {
    let mut plain = Vec::with_capacity(expect + 1024);
    let before = zlib.total_in();
    loop {
        let used = (zlib.total_in() - before) as usize;
        if plain.capacity() - plain.len() < 1024 {
            plain.reserve(plain.capacity());
        }
        zlib.decompress_vec(&z[used..], &mut plain, FlushDecompress::Sync)
            .map_err(|e| format!("zlib: {e}"))?;
        if (zlib.total_in() - before) as usize == z.len() && plain.capacity() - plain.len() >= 1024
        {
            return Ok(plain);
        }
    }
}

fn rd<const N: usize>(s: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b)?;
    Ok(b)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The RFB "VNC authentication" answer.
pub fn vnc_response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        // Each byte with its bits mirrored.
        let mut r = 0u8;
        for i in 0..8 {
            if p & (1 << i) != 0 {
                r |= 0x80 >> i;
            }
        }
        *k = r;
    }
    let des = des::Des::new(GenericArray::from_slice(&key));
    let mut out = *challenge;
    for b in out.chunks_exact_mut(8) {
        des.encrypt_block(GenericArray::from_mut_slice(b));
    }
    out
}

impl VncClient<UnixStream> {
    /// Connects over a Unix socket and runs the RFB 3.8 handshake.
    pub fn connect(path: &Path, password: Option<&[u8]>) -> Result<Self, String> {
        let s = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self::handshake(s, password)
    }
}

impl VncClient<TcpStream> {
    /// Connects over TCP and runs the RFB 3.8 handshake.
    pub fn connect_tcp(addr: &str, password: Option<&[u8]>) -> Result<Self, String> {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self::handshake(s, password)
    }
}

/// RFB over a WebSocket (what noVNC does): a client of `tungstenite`, its binary messages read
/// as one byte stream, each write sent as one binary message. Over TCP, or any stream (TLS for
/// `wss://`).
pub struct WsStream<S = TcpStream> {
    ws: tungstenite::WebSocket<S>,
    pending: Vec<u8>,
    at: usize,
}

impl WsStream<TcpStream> {
    /// Connects to `ws://addr/` and runs the opening handshake, offering `protocols`.
    pub fn connect(addr: &str, protocols: Option<&str>) -> Result<WsStream, String> {
        let tcp = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        WsStream::over(tcp, addr, protocols)
    }
}

impl<S: Read + Write> WsStream<S> {
    /// Runs the opening handshake for `addr` over `stream`, offering `protocols`.
    pub fn over(stream: S, addr: &str, protocols: Option<&str>) -> Result<WsStream<S>, String> {
        let mut req =
            tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/"))
                .map_err(|e| format!("request: {e}"))?;
        if let Some(p) = protocols {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
        }
        let (ws, resp) =
            tungstenite::client(req, stream).map_err(|e| format!("WebSocket handshake: {e}"))?;
        if let Some(p) = protocols {
            let got = resp
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok());
            if got != Some(p) {
                return Err(format!("subprotocol {got:?}, offered {p}"));
            }
        }
        Ok(WsStream {
            ws,
            pending: Vec::new(),
            at: 0,
        })
    }

    /// Sends a ping and a close, as a browser may.
    pub fn ping(&mut self) {
        self.ws
            .send(tungstenite::Message::Ping(b"vgt".to_vec().into()))
            .unwrap();
    }
}

impl<S: Read + Write> Read for WsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.pending.len() {
            match self.ws.read().map_err(std::io::Error::other)? {
                tungstenite::Message::Binary(b) => {
                    self.pending = b.to_vec();
                    self.at = 0;
                }
                tungstenite::Message::Close(_) => return Ok(0),
                _ => {}
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl<S: Read + Write> Write for WsStream<S> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.ws
            .send(tungstenite::Message::Binary(b.to_vec().into()))
            .map_err(std::io::Error::other)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.ws.flush().map_err(std::io::Error::other)
    }
}

fn e(w: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |err| format!("{w}: {err}")
}

/// The server's version, ours, and its security types (or its refusal).
fn security_types(s: &mut (impl Read + Write)) -> Result<Vec<u8>, String> {
    let v: [u8; 12] = rd(s).map_err(e("version"))?;
    if &v != b"RFB 003.008\n" {
        return Err(format!("server version {v:?}"));
    }
    s.write_all(b"RFB 003.008\n").map_err(e("version"))?;
    let [n] = rd::<1>(s).map_err(e("security types"))?;
    if n == 0 {
        let len = be32(&rd::<4>(s).map_err(e("reason"))?) as usize;
        let mut r = vec![0; len.min(4096)];
        s.read_exact(&mut r).map_err(e("reason"))?;
        return Err(format!("refused: {}", String::from_utf8_lossy(&r)));
    }
    let mut types = vec![0; n as usize];
    s.read_exact(&mut types).map_err(e("security types"))?;
    Ok(types)
}

/// VeNCrypt's security type and the subtypes of it this client speaks.
pub const SEC_VENCRYPT: u8 = 19;
pub const VENCRYPT_X509NONE: u32 = 260;
pub const VENCRYPT_X509VNC: u32 = 261;

/// RFB under TLS (VeNCrypt), the client's side.
pub type TlsStream<S> = rustls::StreamOwned<rustls::ClientConnection, S>;

/// A TLS client configuration that trusts only the PEM certificates in `ca`.
pub fn tls_client_config(ca: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl<S: Read + Write> VncClient<TlsStream<S>> {
    /// The RFB 3.8 handshake with VeNCrypt: X509Vnc with a password, X509None without; the
    /// server's certificate checked against `config`'s roots for `server_name`.
    pub fn vencrypt(
        mut s: S,
        config: std::sync::Arc<rustls::ClientConfig>,
        server_name: &str,
        password: Option<&[u8]>,
    ) -> Result<Self, String> {
        let types = security_types(&mut s)?;
        if !types.contains(&SEC_VENCRYPT) {
            return Err(format!("security types {types:?}: no VeNCrypt"));
        }
        s.write_all(&[SEC_VENCRYPT]).map_err(e("security"))?;
        let version: [u8; 2] = rd(&mut s).map_err(e("VeNCrypt version"))?;
        if version != [0, 2] {
            return Err(format!("VeNCrypt version {version:?}"));
        }
        s.write_all(&[0, 2]).map_err(e("VeNCrypt version"))?;
        let [ack, n] = rd::<2>(&mut s).map_err(e("VeNCrypt subtypes"))?;
        if ack != 0 {
            return Err(format!("VeNCrypt version refused ({ack})"));
        }
        let mut subtypes = Vec::new();
        for _ in 0..n {
            subtypes.push(be32(&rd::<4>(&mut s).map_err(e("VeNCrypt subtypes"))?));
        }
        let want = if password.is_some() {
            VENCRYPT_X509VNC
        } else {
            VENCRYPT_X509NONE
        };
        if !subtypes.contains(&want) {
            return Err(format!("VeNCrypt subtypes {subtypes:?}, want {want}"));
        }
        s.write_all(&want.to_be_bytes())
            .map_err(e("VeNCrypt subtype"))?;
        let [accepted] = rd::<1>(&mut s).map_err(e("VeNCrypt subtype"))?;
        if accepted != 1 {
            return Err(format!("VeNCrypt subtype {want} not accepted ({accepted})"));
        }
        let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|err| format!("server name {server_name}: {err}"))?;
        let mut tls = rustls::ClientConnection::new(config, name).map_err(|err| err.to_string())?;
        while tls.is_handshaking() {
            tls.complete_io(&mut s).map_err(e("TLS handshake"))?;
        }
        Self::authenticate(rustls::StreamOwned::new(tls, s), password)
    }
}

impl<S: Read + Write> VncClient<S> {
    pub fn handshake(mut s: S, password: Option<&[u8]>) -> Result<Self, String> {
        let types = security_types(&mut s)?;
        let want = if password.is_some() { 2 } else { 1 };
        if !types.contains(&want) {
            return Err(format!("security types {types:?}"));
        }
        s.write_all(&[want]).map_err(e("security"))?;
        Self::authenticate(s, password)
    }

    /// VNC authentication (with a password), the security result, and the initialisation.
    fn authenticate(mut s: S, password: Option<&[u8]>) -> Result<Self, String> {
        if let Some(pw) = password {
            let c: [u8; 16] = rd(&mut s).map_err(e("challenge"))?;
            s.write_all(&vnc_response(pw, &c)).map_err(e("response"))?;
        }
        let result = be32(&rd::<4>(&mut s).map_err(e("security result"))?);
        if result != 0 {
            let len = be32(&rd::<4>(&mut s).map_err(e("reason"))?) as usize;
            let mut r = vec![0; len.min(4096)];
            s.read_exact(&mut r).map_err(e("reason"))?;
            return Err(format!("security failed: {}", String::from_utf8_lossy(&r)));
        }
        s.write_all(&[1]).map_err(e("client init"))?;
        let init: [u8; 24] = rd(&mut s).map_err(e("server init"))?;
        let (w, h) = (be16(&init[0..]) as u32, be16(&init[2..]) as u32);
        let len = be32(&init[20..]) as usize;
        let mut name = vec![0; len.min(4096)];
        s.read_exact(&mut name).map_err(e("name"))?;
        // The server's format must be what this client decodes: 32 bpp, X8R8G8B8 LE.
        if init[4..17] != [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0] {
            return Err(format!("server pixel format {:?}", &init[4..20]));
        }
        Ok(VncClient {
            s,
            width: w,
            height: h,
            fb: vec![0; (w * h * 4) as usize],
            name: String::from_utf8_lossy(&name).into(),
            cursor: None,
            zlib: Decompress::new(true),
            tight: std::array::from_fn(|_| Decompress::new(true)),
            bytes: Default::default(),
            tight_kinds: Default::default(),
            end_of_continuous: 0,
            fences: Vec::new(),
            layouts: Vec::new(),
        })
    }

    pub fn stream(&self) -> &S {
        &self.s
    }

    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.s
    }

    pub fn set_encodings(&mut self, encs: &[i32]) {
        let mut m = vec![2, 0];
        m.extend_from_slice(&(encs.len() as u16).to_be_bytes());
        for e in encs {
            m.extend_from_slice(&e.to_be_bytes());
        }
        self.s.write_all(&m).unwrap();
    }

    /// Sends a raw SetPixelFormat body (16 bytes).
    pub fn set_pixel_format(&mut self, pf: [u8; 16]) {
        let mut m = vec![0, 0, 0, 0];
        m.extend_from_slice(&pf);
        self.s.write_all(&m).unwrap();
    }

    pub fn request(&mut self, incremental: bool) {
        let mut m = vec![3, incremental as u8, 0, 0, 0, 0];
        m.extend_from_slice(&(self.width as u16).to_be_bytes());
        m.extend_from_slice(&(self.height as u16).to_be_bytes());
        self.s.write_all(&m).unwrap();
    }

    pub fn key(&mut self, down: bool, keysym: u32) {
        let mut m = vec![4, down as u8, 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        self.s.write_all(&m).unwrap();
    }

    pub fn pointer(&mut self, buttons: u8, x: u16, y: u16) {
        let mut m = vec![5, buttons];
        m.extend_from_slice(&x.to_be_bytes());
        m.extend_from_slice(&y.to_be_bytes());
        self.s.write_all(&m).unwrap();
    }

    /// Reads one FramebufferUpdate (skipping other server messages) and applies it.
    pub fn read_update(&mut self) -> Result<Vec<Rect>, String> {
        loop {
            if let Some(rects) = self.read_message()? {
                return Ok(rects);
            }
        }
    }

    /// Reads one server message: an update is applied and its rectangles returned; a Bell,
    /// an EndOfContinuousUpdates (counted) or a Fence (kept in `fences`) gives None.
    pub fn read_message(&mut self) -> Result<Option<Vec<Rect>>, String> {
        let e = |err: std::io::Error| format!("update: {err}");
        let [t] = rd::<1>(&mut self.s).map_err(e)?;
        match t {
            0 => {}
            2 => return Ok(None), // Bell.
            150 => {
                self.end_of_continuous += 1;
                return Ok(None);
            }
            248 => {
                let h: [u8; 8] = rd(&mut self.s).map_err(e)?;
                let flags = be32(&h[3..]);
                let mut payload = vec![0u8; h[7] as usize];
                self.s.read_exact(&mut payload).map_err(e)?;
                self.fences.push((flags, payload));
                return Ok(None);
            }
            other => return Err(format!("server message type {other}")),
        }
        let h: [u8; 3] = rd(&mut self.s).map_err(e)?;
        let n = be16(&h[1..]);
        let mut rects = Vec::new();
        for _ in 0..n {
            let r: [u8; 12] = rd(&mut self.s).map_err(e)?;
            let (x, y, w, hh) = (be16(&r[0..]), be16(&r[2..]), be16(&r[4..]), be16(&r[6..]));
            let enc = be32(&r[8..]) as i32;
            rects.push((x, y, w, hh, enc));
            match enc {
                RAW => {
                    let mut px = vec![0u8; w as usize * hh as usize * 4];
                    self.s.read_exact(&mut px).map_err(e)?;
                    *self.bytes.entry(RAW).or_default() += 12 + px.len() as u64;
                    self.put(x, y, w, hh, &px)?;
                }
                ZRLE => {
                    let len = be32(&rd::<4>(&mut self.s).map_err(e)?) as usize;
                    let mut z = vec![0u8; len];
                    self.s.read_exact(&mut z).map_err(e)?;
                    *self.bytes.entry(ZRLE).or_default() += 16 + len as u64;
                    let px = self.zrle(&z, w as usize, hh as usize)?;
                    self.put(x, y, w, hh, &px)?;
                }
                TIGHT => {
                    let px = self.tight(w as usize, hh as usize)?;
                    self.put(x, y, w, hh, &px)?;
                }
                DESKTOP_SIZE => {
                    self.width = w.into();
                    self.height = hh.into();
                    self.fb = vec![0; w as usize * hh as usize * 4];
                }
                EXTENDED_DESKTOP_SIZE => {
                    let [n, _, _, _] = rd::<4>(&mut self.s).map_err(e)?;
                    let mut screens = Vec::new();
                    for _ in 0..n {
                        let sc: [u8; 16] = rd(&mut self.s).map_err(e)?;
                        screens.push((
                            be32(&sc[0..]),
                            be16(&sc[4..]),
                            be16(&sc[6..]),
                            be16(&sc[8..]),
                            be16(&sc[10..]),
                            be32(&sc[12..]),
                        ));
                    }
                    // x is the reason, y the status; a successful change sets the size.
                    if y == 0 && (u32::from(w), u32::from(hh)) != (self.width, self.height) {
                        self.width = w.into();
                        self.height = hh.into();
                        self.fb = vec![0; w as usize * hh as usize * 4];
                    }
                    self.layouts.push((x, y, w, hh, screens));
                }
                CURSOR => {
                    let mut px = vec![0u8; w as usize * hh as usize * 4];
                    self.s.read_exact(&mut px).map_err(e)?;
                    let mut mask = vec![0u8; (w as usize).div_ceil(8) * hh as usize];
                    self.s.read_exact(&mut mask).map_err(e)?;
                    self.cursor = Some((x, y, w, hh, px, mask));
                }
                other => return Err(format!("encoding {other}")),
            }
        }
        Ok(Some(rects))
    }

    /// Sends SetDesktopSize for `width` x `height` with `screens` (id, x, y, w, h, flags).
    pub fn set_desktop_size(&mut self, width: u16, height: u16, screens: &[Screen]) {
        let mut m = vec![251, 0];
        m.extend_from_slice(&width.to_be_bytes());
        m.extend_from_slice(&height.to_be_bytes());
        m.extend_from_slice(&[screens.len() as u8, 0]);
        for &(id, x, y, w, h, flags) in screens {
            m.extend_from_slice(&id.to_be_bytes());
            for v in [x, y, w, h] {
                m.extend_from_slice(&v.to_be_bytes());
            }
            m.extend_from_slice(&flags.to_be_bytes());
        }
        self.s.write_all(&m).unwrap();
    }

    /// Sends a Fence (TigerVNC's extension).
    pub fn fence(&mut self, flags: u32, payload: &[u8]) {
        let mut m = vec![248, 0, 0, 0];
        m.extend_from_slice(&flags.to_be_bytes());
        m.push(payload.len() as u8);
        m.extend_from_slice(payload);
        self.s.write_all(&m).unwrap();
    }

    /// Sends EnableContinuousUpdates for the whole screen (or disables them).
    pub fn continuous(&mut self, enable: bool) {
        let mut m = vec![150, enable as u8, 0, 0, 0, 0];
        m.extend_from_slice(&(self.width as u16).to_be_bytes());
        m.extend_from_slice(&(self.height as u16).to_be_bytes());
        self.s.write_all(&m).unwrap();
    }

    fn put(&mut self, x: u16, y: u16, w: u16, h: u16, px: &[u8]) -> Result<(), String> {
        let (x, y, w, h) = (x as u32, y as u32, w as u32, h as u32);
        if x + w > self.width || y + h > self.height {
            return Err(format!(
                "rect {x},{y} {w}x{h} outside {}x{}",
                self.width, self.height
            ));
        }
        for row in 0..h {
            let at = (((y + row) * self.width + x) * 4) as usize;
            let from = (row * w * 4) as usize;
            self.fb[at..at + (w * 4) as usize].copy_from_slice(&px[from..from + (w * 4) as usize]);
        }
        Ok(())
    }

    /// Decodes ZRLE (all subencodings of RFC 6143 7.7.6) with 3-byte CPIXELs.
    fn zrle(&mut self, z: &[u8], w: usize, h: usize) -> Result<Vec<u8>, String> {
        let plain = inflate(&mut self.zlib, z, w * h * 4)?;
        let mut out = vec![0u8; w * h * 4];
        let mut p = 0usize;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let s = plain.get(p..p + n).ok_or("ZRLE data short")?;
            p += n;
            Ok(s)
        };
        for ty in (0..h).step_by(64) {
            for tx in (0..w).step_by(64) {
                let (tw, th) = ((w - tx).min(64), (h - ty).min(64));
                let sub = take(1)?[0];
                let mut tile: Vec<[u8; 3]> = Vec::with_capacity(tw * th);
                match sub {
                    0 => {
                        for _ in 0..tw * th {
                            let c = take(3)?;
                            tile.push([c[0], c[1], c[2]]);
                        }
                    }
                    1 => {
                        let c = take(3)?;
                        tile = vec![[c[0], c[1], c[2]]; tw * th];
                    }
                    2..=16 => {
                        let n = sub as usize;
                        let pal: Vec<[u8; 3]> = (0..n)
                            .map(|_| take(3).map(|c| [c[0], c[1], c[2]]))
                            .collect::<Result<_, _>>()?;
                        let bits = match n {
                            2 => 1,
                            3..=4 => 2,
                            _ => 4,
                        };
                        for _ in 0..th {
                            let row = take((tw * bits).div_ceil(8))?.to_vec();
                            for x in 0..tw {
                                let bit = x * bits;
                                let v = (row[bit / 8] >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                                tile.push(*pal.get(v as usize).ok_or("palette index")?);
                            }
                        }
                    }
                    128 => {
                        while tile.len() < tw * th {
                            let c = take(3)?;
                            let c = [c[0], c[1], c[2]];
                            let mut run = 1usize;
                            loop {
                                let b = take(1)?[0];
                                run += b as usize;
                                if b != 255 {
                                    break;
                                }
                            }
                            tile.extend(std::iter::repeat_n(c, run));
                        }
                    }
                    other => return Err(format!("ZRLE subencoding {other}")),
                }
                if tile.len() != tw * th {
                    return Err("ZRLE tile size".into());
                }
                for (i, c) in tile.iter().enumerate() {
                    let (x, y) = (tx + i % tw, ty + i / tw);
                    out[(y * w + x) * 4..(y * w + x) * 4 + 3].copy_from_slice(c);
                }
            }
        }
        Ok(out)
    }

    /// Reads and decodes one Tight rectangle (TightVNC's definition, as TigerVNC decodes it),
    /// for the native pixel format (TPIXELs are 3 bytes, R, G, B).
    fn tight(&mut self, w: usize, h: usize) -> Result<Vec<u8>, String> {
        let e = |err: std::io::Error| format!("tight: {err}");
        let [ctl] = rd::<1>(&mut self.s).map_err(e)?;
        let mut got = 1u64;
        for (i, z) in self.tight.iter_mut().enumerate() {
            if ctl & (1 << i) != 0 {
                *z = Decompress::new(true);
            }
        }
        let mut out = vec![0u8; w * h * 4];
        let put_rgb = |out: &mut [u8], i: usize, c: &[u8]| {
            out[i * 4..i * 4 + 3].copy_from_slice(&[c[2], c[1], c[0]]);
        };
        match ctl >> 4 {
            8 => {
                *self.tight_kinds.entry("fill").or_default() += 1;
                let c: [u8; 3] = rd(&mut self.s).map_err(e)?;
                for i in 0..w * h {
                    put_rgb(&mut out, i, &c);
                }
                got += 3;
            }
            9 => {
                *self.tight_kinds.entry("jpeg").or_default() += 1;
                let (len, n) = self.compact_len()?;
                let mut jpeg = vec![0u8; len];
                self.s.read_exact(&mut jpeg).map_err(e)?;
                got += (n + len) as u64;
                let img = turbojpeg::decompress(&jpeg, turbojpeg::PixelFormat::BGRX)
                    .map_err(|err| format!("tight JPEG: {err}"))?;
                if (img.width, img.height) != (w, h) {
                    return Err(format!(
                        "tight JPEG {}x{} in a {w}x{h} rectangle",
                        img.width, img.height
                    ));
                }
                for row in 0..h {
                    out[row * w * 4..(row + 1) * w * 4]
                        .copy_from_slice(&img.pixels[row * img.pitch..row * img.pitch + w * 4]);
                }
            }
            k if k < 8 => {
                let stream = (k & 3) as usize;
                let mut palette: Vec<[u8; 3]> = Vec::new();
                let mut gradient = false;
                if k & 4 != 0 {
                    let [filter] = rd::<1>(&mut self.s).map_err(e)?;
                    got += 1;
                    match filter {
                        0 => {}
                        // The gradient filter (QEMU's Tight with lossy=on sends it): full
                        // colour, each component the difference from left + up - upleft.
                        2 => gradient = true,
                        1 => {
                            let [n] = rd::<1>(&mut self.s).map_err(e)?;
                            for _ in 0..=n {
                                palette.push(rd(&mut self.s).map_err(e)?);
                            }
                            got += 1 + 3 * (u64::from(n) + 1);
                        }
                        other => return Err(format!("tight filter {other}")),
                    }
                }
                let kind = match palette.len() {
                    0 if gradient => "gradient",
                    0 => "copy",
                    1 | 2 => "mono",
                    _ => "indexed",
                };
                *self.tight_kinds.entry(kind).or_default() += 1;
                let row_bytes = match palette.len() {
                    0 => w * 3,
                    1 | 2 => w.div_ceil(8),
                    _ => w,
                };
                let size = row_bytes * h;
                let data = if size < 12 {
                    let mut d = vec![0u8; size];
                    self.s.read_exact(&mut d).map_err(e)?;
                    got += size as u64;
                    d
                } else {
                    let (len, n) = self.compact_len()?;
                    let mut z = vec![0u8; len];
                    self.s.read_exact(&mut z).map_err(e)?;
                    got += (n + len) as u64;
                    inflate(&mut self.tight[stream], &z, size)?
                };
                if data.len() != size {
                    return Err(format!("tight data {} bytes, want {size}", data.len()));
                }
                let data = if gradient {
                    // Row by row, as TigerVNC's FilterGradient24: the prediction from the
                    // decoded row above and the pixel to the left, clamped.
                    let mut px = vec![0u8; size];
                    let row = w * 3;
                    for y in 0..h {
                        let (above, this) = px.split_at_mut(y * row);
                        let up = if y > 0 {
                            &above[(y - 1) * row..]
                        } else {
                            &[][..]
                        };
                        let this = &mut this[..row];
                        let res = &data[y * row..(y + 1) * row];
                        for x in 0..row {
                            let left = if x >= 3 { i16::from(this[x - 3]) } else { 0 };
                            let (u, ul) =
                                match (up.get(x), x.checked_sub(3).and_then(|i| up.get(i))) {
                                    (Some(&u), Some(&ul)) => (i16::from(u), i16::from(ul)),
                                    (Some(&u), None) => (i16::from(u), 0),
                                    _ => (0, 0),
                                };
                            let predicted = (left + u - ul).clamp(0, 255) as u8;
                            this[x] = predicted.wrapping_add(res[x]);
                        }
                    }
                    px
                } else {
                    data
                };
                for y in 0..h {
                    let row = &data[y * row_bytes..(y + 1) * row_bytes];
                    for x in 0..w {
                        let c = match palette.len() {
                            0 => [row[x * 3], row[x * 3 + 1], row[x * 3 + 2]],
                            1 | 2 => {
                                let bit = (row[x / 8] >> (7 - x % 8)) & 1;
                                *palette.get(bit as usize).ok_or("tight mono index")?
                            }
                            _ => *palette.get(row[x] as usize).ok_or("tight palette index")?,
                        };
                        put_rgb(&mut out, y * w + x, &c);
                    }
                }
            }
            other => return Err(format!("tight compression {other}")),
        }
        *self.bytes.entry(TIGHT).or_default() += 12 + got;
        Ok(out)
    }

    /// Tight's compact length: (the length, the bytes it took).
    fn compact_len(&mut self) -> Result<(usize, usize), String> {
        let mut len = 0usize;
        for i in 0..3 {
            let [b] = rd::<1>(&mut self.s).map_err(|e| format!("tight length: {e}"))?;
            if i == 2 {
                return Ok((len | (usize::from(b) << 14), 3));
            }
            len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((len, i + 1));
            }
        }
        Ok((len, 3))
    }

    /// The framebuffer without the X bytes, as (B, G, R) triples.
    pub fn bgr(&self) -> Vec<u8> {
        self.fb
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect()
    }
}
