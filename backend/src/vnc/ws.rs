//! VNC over WebSocket (RFC 6455; `--vnc-websocket HOST:PORT`), as noVNC and QEMU's
//! `websocket=` speak it: the RFB byte stream in binary messages, with no websockify between.
//!
//! The opening handshake is `tungstenite`'s. After it, the connection is read by one thread
//! (the client's messages) and written by another (updates), which a `tungstenite::WebSocket`
//! cannot be split into; so framing is done here on the TCP stream's clones, with
//! `tungstenite`'s frame header codec: the read side unmasks the client's data frames into
//! the byte stream and answers pings and close; each write is one unmasked binary frame, whole
//! under a lock (a pong from the read side never lands inside it).

use std::io::{self, Cursor, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::Conn;

/// The longest control frame payload (RFC 6455 5.5).
const MAX_CONTROL: u64 = 125;

/// What the read side is in the middle of.
#[derive(Default)]
struct ReadState {
    /// Payload bytes of the current data frame not yet read.
    left: u64,
    /// Its masking key and where in it the next byte is.
    mask: [u8; 4],
    at: usize,
    /// A close frame came (or the stream ended): reads return end of stream.
    closed: bool,
}

/// One WebSocket connection, cloneable into a reading and a writing handle.
pub struct WsConn {
    /// The transport below: TCP, or TLS over it (`wss://`).
    inner: Box<Conn>,
    read: Arc<Mutex<ReadState>>,
    write: Arc<Mutex<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The host part of an `Origin` (`scheme://host[:port]`) or `Host` (`host[:port]`) value,
/// lower-cased; IPv6 literals keep their brackets.
fn host_of(v: &str) -> Option<String> {
    let authority = v.split_once("://").map_or(v, |(_, rest)| rest);
    let authority = authority.split('/').next()?;
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether a browser page from `origin` may use this port: its host is the one the browser
/// connected to (a noVNC page served from this machine, any port), or it is listed with
/// `--vnc-websocket-origin`. Without the check, any web page open in a browser on this host
/// could reach a loopback port and drive the VM. Clients that send no Origin (not browsers)
/// are not affected.
pub fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    if allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(origin.trim()))
    {
        return true;
    }
    match (host_of(origin.trim()), host.and_then(host_of)) {
        (Some(o), Some(h)) => o == h,
        _ => false,
    }
}

/// Answers the HTTP upgrade on `conn` (within `timeout`); the RFB stream follows on the
/// result. A client that offers the `binary` subprotocol (noVNC's older versions) gets it. A
/// browser page from another site gets 403 ([`origin_allowed`]).
pub fn accept(conn: Conn, timeout: Duration, origins: &[String]) -> io::Result<WsConn> {
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    // The callback's type is tungstenite's (its error is an HTTP response, large by nature).
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(origin) = header("Origin") {
            if !origin_allowed(origin, header("Host"), origins) {
                let mut refused = ErrorResponse::new(Some(format!(
                    "origin {origin} may not use this VNC server (--vnc-websocket-origin)"
                )));
                *refused.status_mut() = tungstenite::http::StatusCode::FORBIDDEN;
                return Err(refused);
            }
        }
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == "binary");
        if offered {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                tungstenite::http::HeaderValue::from_static("binary"),
            );
        }
        Ok(resp)
    };
    let ws = tungstenite::accept_hdr(conn, callback).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)) => {
            io::Error::other(format!(
                "WebSocket handshake refused: {}",
                r.body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            ))
        }
        e => io::Error::other(format!("WebSocket handshake: {e}")),
    })?;
    // RFB's server speaks first, so the client has sent nothing past the handshake that the
    // handshake could have buffered.
    Ok(WsConn {
        inner: Box::new(ws.into_inner()),
        read: Arc::default(),
        write: Arc::default(),
    })
}

/// WebSocket framing over `conn` with no opening handshake: for the fuzz target and tests,
/// which feed frames straight in.
pub fn framed(conn: Conn) -> WsConn {
    WsConn {
        inner: Box::new(conn),
        read: Arc::default(),
        write: Arc::default(),
    }
}

impl WsConn {
    pub fn try_clone(&self) -> io::Result<WsConn> {
        Ok(WsConn {
            inner: Box::new(self.inner.try_clone()?),
            read: Arc::clone(&self.read),
            write: Arc::clone(&self.write),
        })
    }

    /// The transport below (for timeouts and shutdown).
    pub fn inner(&self) -> &Conn {
        &self.inner
    }

    /// Sends one frame: `opcode`, `payload`, final, unmasked (a server's).
    fn send(&self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        let mut frame = Vec::with_capacity(payload.len() + 10);
        header
            .format(payload.len() as u64, &mut frame)
            .map_err(io::Error::other)?;
        frame.extend_from_slice(payload);
        let _g = lock(&self.write);
        let mut w: &Conn = &self.inner;
        w.write_all(&frame)
    }
}

/// Reads the next frame's header from `r`: (opcode, payload length, mask).
fn header(r: &mut Conn) -> io::Result<(OpCode, u64, Option<[u8; 4]>)> {
    let mut head = [0u8; 14];
    r.read_exact(&mut head[..2])?;
    let ext = match head[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let n = 2 + ext + if head[1] & 0x80 != 0 { 4 } else { 0 };
    r.read_exact(&mut head[2..n])?;
    match FrameHeader::parse(&mut Cursor::new(&head[..n])) {
        Ok(Some((h, len))) => Ok((h.opcode, len, h.mask)),
        Ok(None) => Err(io::Error::other("WebSocket frame header incomplete")),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

/// A control frame's payload from `r`, unmasked.
fn control_payload(r: &mut Conn, len: u64, mask: [u8; 4]) -> io::Result<Vec<u8>> {
    if len > MAX_CONTROL {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "WebSocket control frame over 125 bytes",
        ));
    }
    let mut p = vec![0u8; len as usize];
    r.read_exact(&mut p)?;
    for (i, b) in p.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok(p)
}

impl Read for WsConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut st = lock(&self.read);
        loop {
            if st.closed {
                return Ok(0);
            }
            if st.left > 0 {
                let want = buf
                    .len()
                    .min(usize::try_from(st.left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    st.closed = true;
                    return Ok(0);
                }
                for b in &mut buf[..n] {
                    *b ^= st.mask[st.at];
                    st.at = (st.at + 1) % 4;
                }
                st.left -= n as u64;
                return Ok(n);
            }
            let (opcode, len, mask) = match header(&mut self.inner) {
                Ok(h) => h,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    st.closed = true;
                    return Ok(0);
                }
                Err(e) => return Err(e),
            };
            // A client's frames are masked (RFC 6455 5.1); an unmasked one ends the connection.
            let Some(mask) = mask else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unmasked WebSocket frame from the client",
                ));
            };
            match opcode {
                OpCode::Data(Data::Binary | Data::Continue | Data::Text) => {
                    st.left = len;
                    st.mask = mask;
                    st.at = 0;
                }
                OpCode::Control(Control::Ping) => {
                    let p = control_payload(&mut self.inner, len, mask)?;
                    self.send(OpCode::Control(Control::Pong), &p)?;
                }
                OpCode::Control(Control::Pong) => {
                    control_payload(&mut self.inner, len, mask)?;
                }
                OpCode::Control(Control::Close) => {
                    let p = control_payload(&mut self.inner, len, mask)?;
                    // Echo the status code (RFC 6455 5.5.1), then the stream is over.
                    let code = p.get(..2).map_or(u16::from(CloseCode::Normal), |c| {
                        u16::from_be_bytes([c[0], c[1]])
                    });
                    let _ = self.send(OpCode::Control(Control::Close), &code.to_be_bytes());
                    st.closed = true;
                    return Ok(0);
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("WebSocket opcode {other}"),
                    ))
                }
            }
        }
    }
}

impl Write for &WsConn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if b.is_empty() {
            return Ok(0);
        }
        self.send(OpCode::Data(Data::Binary), b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// A client frame: final, `opcode`, masked with `mask`.
    fn client_frame(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let h = FrameHeader {
            opcode,
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut f = Vec::new();
        h.format(payload.len() as u64, &mut f).unwrap();
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// A connected pair: the server's WsConn (framing only, no handshake) and the client's
    /// raw TCP stream.
    fn pair() -> (WsConn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (framed(Conn::Tcp(s)), c)
    }

    #[test]
    fn data_frames_are_unmasked_into_one_stream_and_pings_answered() {
        let (mut s, mut c) = pair();
        let mut bytes = client_frame(OpCode::Data(Data::Binary), b"RFB 003", [1, 2, 3, 4]);
        bytes.extend(client_frame(
            OpCode::Control(Control::Ping),
            b"hi",
            [9, 9, 9, 9],
        ));
        bytes.extend(client_frame(
            OpCode::Data(Data::Continue),
            b".008\n",
            [5, 6, 7, 8],
        ));
        c.write_all(&bytes).unwrap();
        let mut got = [0u8; 12];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"RFB 003.008\n");
        // The pong: unmasked, same payload.
        let mut pong = [0u8; 4];
        c.read_exact(&mut pong).unwrap();
        assert_eq!(pong, [0x8a, 2, b'h', b'i']);
        // A write is one binary frame.
        (&s).write_all(b"abc").unwrap();
        let mut f = [0u8; 5];
        c.read_exact(&mut f).unwrap();
        assert_eq!(f, [0x82, 3, b'a', b'b', b'c']);
        // Close: echoed, then end of stream.
        c.write_all(&client_frame(
            OpCode::Control(Control::Close),
            &1000u16.to_be_bytes(),
            [0, 0, 0, 0],
        ))
        .unwrap();
        assert_eq!(s.read(&mut got).unwrap(), 0);
        let mut close = [0u8; 4];
        c.read_exact(&mut close).unwrap();
        assert_eq!(close, [0x88, 2, 0x03, 0xe8]);
    }

    #[test]
    fn browser_origins_must_be_this_host_or_listed() {
        let none: Vec<String> = Vec::new();
        for (origin, host) in [
            ("http://127.0.0.1:8000", "127.0.0.1:5700"),
            ("https://LocalHost", "localhost:5700"),
            ("http://[::1]:8080", "[::1]:5700"),
            ("https://vm.example.org/novnc", "vm.example.org"),
        ] {
            assert!(origin_allowed(origin, Some(host), &none), "{origin} {host}");
        }
        for (origin, host) in [
            ("https://evil.example.com", "127.0.0.1:5700"),
            ("null", "127.0.0.1:5700"),
            ("http://127.0.0.1.evil.com", "127.0.0.1:5700"),
            ("http://[::1]", "[::2]:5700"),
        ] {
            assert!(
                !origin_allowed(origin, Some(host), &none),
                "{origin} {host}"
            );
        }
        assert!(!origin_allowed("http://127.0.0.1", None, &none), "no Host");
        let listed = vec!["https://console.example.org".to_string()];
        assert!(origin_allowed(
            "https://console.example.org",
            Some("10.0.0.5:5700"),
            &listed
        ));
    }

    #[test]
    fn unmasked_or_oversized_control_frames_end_the_connection() {
        let (mut s, mut c) = pair();
        c.write_all(&[0x82, 1, b'x']).unwrap();
        let e = s.read(&mut [0u8; 4]).unwrap_err();
        assert!(e.to_string().contains("unmasked"), "{e}");
        let (mut s, mut c) = pair();
        let mut f = vec![0x89, 0x80 | 126, 0, 200, 0, 0, 0, 0];
        f.extend([0u8; 200]);
        c.write_all(&f).unwrap();
        let e = s.read(&mut [0u8; 4]).unwrap_err();
        assert!(e.to_string().contains("125"), "{e}");
    }
}
