//! The built-in VNC server (`--vnc LISTEN`): any VNC viewer sees, and with
//! `--vnc-input-qmp` drives, the guest, also where the frontend shows nothing (QEMU with
//! `-display none`, whose own VNC refuses a vhost-user-gpu console, and generic vhost-user
//! frontends such as cloud-hypervisor's, which send no display channel).
//!
//! - The pictures come from [`Screens`], fed by the same flushes and read-backs as the
//!   display channel's UPDATE messages (2D, virgl and blob scanouts).
//! - RFB 3.8 (3.3 and 3.7 clients too); security None, or VNC authentication with
//!   `--vnc-password-file`, which binding beyond loopback requires.
//! - Raw and ZRLE, only the changed rectangles; DesktopSize when the mode changes, the guest's
//!   cursor as the Cursor pseudo-encoding. One scanout (`--vnc-scanout`, default 0).
//! - Each client has its own threads; the device only copies into [`Screens`], so a slow or
//!   stalled client never slows the guest: its pending changes merge there, and it holds at
//!   most the copy of one update. At most `--vnc-max-clients` at once.
//! - The listening socket is made before the sandbox starts; accepting and serving need no
//!   call the sandbox refuses.
//!
//! crates.io's RFB servers did not fit: `rustvncserver` runs on tokio and binds its own TCP
//! port (no Unix socket, no socket made before the sandbox), `rfb` and `rfb2` are async
//! prototypes without compressed encodings. The wire format here is small (`rfb.rs`); zlib
//! (flate2) and DES (RustCrypto's `des`) come from crates.

pub mod auth;
pub mod client;
pub mod qmp;
pub mod rfb;
pub mod tight;
pub mod tls;
pub mod ws;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};

use crate::screens::Screens;
use auth::Password;
use qmp::InputSink;

/// Why the VNC server could not start.
#[derive(Debug, thiserror::Error)]
pub enum VncError {
    #[error("--vnc '{0}': give unix:PATH or HOST:PORT")]
    Address(String),
    #[error("--vnc {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("--vnc {0} is not a loopback address: binding beyond this host needs --vnc-password-file (and --vnc-tls-cert/--vnc-tls-key to encrypt, or a tunnel)")]
    NeedsPassword(String),
    #[error("--vnc {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("VNC thread: {0}")]
    Thread(std::io::Error),
}

/// Where `--vnc` listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(String),
}

impl std::str::FromStr for Listen {
    type Err = VncError;
    fn from_str(s: &str) -> Result<Listen, VncError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(VncError::Address(s.into()));
            }
            return Ok(Listen::Unix(p.into()));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Listen::Tcp(s.into()))
            }
            _ => Err(VncError::Address(s.into())),
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Tcp(a) => f.write_str(a),
        }
    }
}

/// A client's connection.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A TCP connection after the WebSocket upgrade (`--vnc-websocket`).
    Ws(ws::WsConn),
    /// Any of these after VeNCrypt's TLS handshake (`--vnc-tls-cert`).
    Tls(tls::TlsConn),
}

macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Conn::Tcp($s) => $e,
            Conn::Unix($s) => $e,
            // The transport below, through these same methods of `Conn`.
            Conn::Ws(w) => {
                let $s = w.inner();
                $e
            }
            // The transport below, through these same methods of `Conn`.
            Conn::Tls(t) => {
                let $s = t.inner();
                $e
            }
        }
    };
}

impl Conn {
    fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Ws(w) => Conn::Ws(w.try_clone()?),
            Conn::Tls(t) => Conn::Tls(t.try_clone()?),
        })
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        both!(self, s => s.set_read_timeout(t))
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        both!(self, s => s.set_write_timeout(t))
    }
    fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()> {
        both!(self, s => s.shutdown(how))
    }
    /// The connection is a WebSocket (possibly under TLS).
    fn is_websocket(&self) -> bool {
        match self {
            Conn::Ws(_) => true,
            Conn::Tls(t) => t.inner().is_websocket(),
            _ => false,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(b),
            Conn::Unix(s) => s.read(b),
            Conn::Ws(w) => w.read(b),
            Conn::Tls(t) => t.read(b),
        }
    }
}
impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        (&*self).write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Write for &Conn {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => (&*s).write(b),
            Conn::Unix(s) => (&*s).write(b),
            Conn::Ws(w) => (&*w).write(b),
            Conn::Tls(t) => (&*t).write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counters, for the log and the tests.
#[derive(Default)]
pub struct Stats {
    pub clients: AtomicUsize,
    pub sessions: AtomicU64,
    pub updates: AtomicU64,
}

/// What every client's threads share.
pub struct Shared {
    pub screens: Arc<Screens>,
    pub scanout: u32,
    /// The size announced while the scanout shows nothing yet.
    pub default_size: (u32, u32),
    pub password: Option<Password>,
    /// VeNCrypt's TLS: when set, RFB clients must use it (WebSocket clients keep the rules of
    /// plain VNC).
    pub tls: Option<tls::TlsServer>,
    /// Where a client's SetDesktopSize goes (ExtendedDesktopSize).
    pub modes: Option<Arc<crate::modes::ModeRequests>>,
    /// Browser origins allowed on the WebSocket port besides this host's own.
    pub ws_origins: Vec<String>,
    pub input: Option<InputSink>,
    pub name: String,
    pub max_clients: usize,
    pub stats: Stats,
}

impl Shared {
    /// The scanout's size now (the configured mode while it shows nothing).
    pub fn size(&self) -> (u32, u32) {
        self.screens.size(self.scanout).unwrap_or(self.default_size)
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A bound VNC socket, waiting for [`VncServer::start`].
pub struct VncServer {
    listener: Listener,
    listen: Listen,
    /// The WebSocket listener (`--vnc-websocket`): the same server, for noVNC.
    websocket: Option<TcpListener>,
}

/// What `--vnc` needs besides the address.
pub struct VncOptions {
    pub password: Option<Password>,
    pub tls: Option<tls::TlsServer>,
    /// Where a client's SetDesktopSize goes (None: resizing is refused).
    pub modes: Option<Arc<crate::modes::ModeRequests>>,
    /// Browser origins allowed on the WebSocket port besides this host's own.
    pub ws_origins: Vec<String>,
    pub input_qmp: Option<PathBuf>,
    pub scanout: u32,
    pub max_clients: usize,
    pub default_size: (u32, u32),
}

fn is_loopback(a: &SocketAddr) -> bool {
    a.ip().is_loopback()
}

impl VncServer {
    /// Binds the socket (a stale Unix socket file is replaced). A TCP address beyond
    /// loopback is refused without a password.
    pub fn bind(listen: &Listen, has_password: bool) -> Result<VncServer, VncError> {
        let listener = match listen {
            Listen::Unix(p) => {
                if std::fs::symlink_metadata(p)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    let _ = std::fs::remove_file(p);
                }
                Listener::Unix(
                    UnixListener::bind(p).map_err(|e| VncError::Bind(listen.to_string(), e))?,
                )
            }
            Listen::Tcp(a) => {
                let addrs: Vec<SocketAddr> = a
                    .to_socket_addrs()
                    .map_err(|e| VncError::Resolve(a.clone(), e))?
                    .collect();
                if !has_password && !addrs.iter().all(is_loopback) {
                    return Err(VncError::NeedsPassword(a.clone()));
                }
                Listener::Tcp(
                    TcpListener::bind(&addrs[..])
                        .map_err(|e| VncError::Bind(listen.to_string(), e))?,
                )
            }
        };
        Ok(VncServer {
            listener,
            listen: listen.clone(),
            websocket: None,
        })
    }

    /// Also listens for WebSocket clients (noVNC) on `addr` (HOST:PORT), under the same rule:
    /// loopback only without a password.
    pub fn with_websocket(mut self, addr: &str, has_password: bool) -> Result<Self, VncError> {
        let what = format!("--vnc-websocket {addr}");
        let Listen::Tcp(a) = addr.parse::<Listen>()? else {
            return Err(VncError::Address(what));
        };
        let addrs: Vec<SocketAddr> = a
            .to_socket_addrs()
            .map_err(|e| VncError::Resolve(what.clone(), e))?
            .collect();
        if !has_password && !addrs.iter().all(is_loopback) {
            return Err(VncError::NeedsPassword(what));
        }
        self.websocket = Some(TcpListener::bind(&addrs[..]).map_err(|e| VncError::Bind(what, e))?);
        Ok(self)
    }

    /// Where the WebSocket listener listens, if there is one.
    pub fn describe_websocket(&self) -> Option<String> {
        self.websocket
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string())
    }

    /// Where it listens (for a TCP port 0, the port the kernel chose).
    pub fn describe(&self) -> String {
        match &self.listener {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| self.listen.to_string()),
            Listener::Unix(_) => self.listen.to_string(),
        }
    }

    /// Starts accepting clients on their own threads; returns what they share.
    pub fn start(self, screens: Arc<Screens>, o: VncOptions) -> Result<Arc<Shared>, VncError> {
        let input = match &o.input_qmp {
            Some(p) => Some(InputSink::start(p.clone()).map_err(VncError::Thread)?),
            None => None,
        };
        let shared = Arc::new(Shared {
            screens,
            scanout: o.scanout,
            default_size: o.default_size,
            password: o.password,
            tls: o.tls,
            modes: o.modes,
            ws_origins: o.ws_origins,
            input,
            name: "vhost-gpu".into(),
            max_clients: o.max_clients,
            stats: Stats::default(),
        });
        let describe = self.describe();
        let websocket = self.describe_websocket();
        let listeners = std::iter::once((self.listener, false))
            .chain(self.websocket.map(|l| (Listener::Tcp(l), true)));
        for (listener, ws) in listeners {
            let accept_shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(if ws { "vnc-ws-accept" } else { "vnc-accept" }.into())
                .spawn(move || Self::accept_loop(listener, ws, &accept_shared))
                .map_err(VncError::Thread)?;
        }
        let describe = match (websocket, shared.tls.is_some()) {
            (Some(w), true) => format!("{describe} and WebSocket over TLS (wss) on {w}"),
            (Some(w), false) => format!("{describe} and WebSocket on {w}"),
            (None, _) => describe,
        };
        let security = match (&shared.tls, shared.password.is_some()) {
            (Some(t), true) => format!(
                "VeNCrypt X509Vnc (TLS, then VNC authentication; certificate SHA-256 {})",
                t.fingerprint
            ),
            (Some(t), false) => format!(
                "VeNCrypt X509None (TLS, no password; certificate SHA-256 {})",
                t.fingerprint
            ),
            (None, true) => "VNC authentication".into(),
            (None, false) => "no password".into(),
        };
        info!(
            "VNC on {describe}: scanout {}, {security}, {}",
            o.scanout,
            match &o.input_qmp {
                Some(p) => format!("input to QMP at {}", p.display()),
                None => "view only (no --vnc-input-qmp)".into(),
            }
        );
        Ok(shared)
    }

    fn accept(listener: &Listener) -> std::io::Result<Conn> {
        Ok(match listener {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }
            Listener::Unix(l) => Conn::Unix(l.accept()?.0),
        })
    }

    /// A WebSocket client's connection: TLS first when the server has a certificate
    /// (`wss://`), then the WebSocket upgrade.
    fn upgrade(conn: Conn, shared: &Shared) -> std::io::Result<Conn> {
        let conn = match &shared.tls {
            Some(tls) => {
                conn.set_read_timeout(Some(client::HANDSHAKE_TIMEOUT))?;
                conn.set_write_timeout(Some(client::HANDSHAKE_TIMEOUT))?;
                Conn::Tls(tls.accept(conn)?)
            }
            None => conn,
        };
        Ok(Conn::Ws(ws::accept(
            conn,
            client::HANDSHAKE_TIMEOUT,
            &shared.ws_origins,
        )?))
    }

    /// Accepts clients on `listener` for ever, each on its own thread; `websocket`: they
    /// upgrade to WebSocket first.
    fn accept_loop(listener: Listener, websocket: bool, shared: &Arc<Shared>) {
        let mut errors = 0u32;
        loop {
            let conn = match Self::accept(&listener) {
                Ok(c) => {
                    errors = 0;
                    c
                }
                Err(e) => {
                    errors += 1;
                    if errors <= 3 {
                        warn!("VNC: accept: {e}");
                    }
                    // Out of descriptors, say: wait rather than spin.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let n = shared.stats.clients.fetch_add(1, Ordering::Relaxed) + 1;
            // Far over the limit, do not even start a thread: close.
            if n > shared.max_clients * 2 + 4 {
                shared.stats.clients.fetch_sub(1, Ordering::Relaxed);
                drop(conn);
                continue;
            }
            let admitted = n <= shared.max_clients;
            let sh = Arc::clone(shared);
            let spawned = std::thread::Builder::new()
                .name("vnc-client".into())
                .spawn(move || {
                    let _count = client::Admission(&sh);
                    let session = sh.stats.sessions.fetch_add(1, Ordering::Relaxed) + 1;
                    let conn = if websocket {
                        match Self::upgrade(conn, &sh) {
                            Ok(c) => c,
                            Err(e) => {
                                crate::guest_warn!("VNC client {session}: {e}; closed");
                                return;
                            }
                        }
                    } else {
                        conn
                    };
                    match client::serve(conn, Arc::clone(&sh), admitted) {
                        Ok(()) => log::debug!("VNC client {session}: closed"),
                        Err(e) => crate::guest_warn!("VNC client {session}: {e}; closed"),
                    }
                });
            if let Err(e) = spawned {
                shared.stats.clients.fetch_sub(1, Ordering::Relaxed);
                warn!("VNC: no thread for a client: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_and_open_ones_need_a_password() {
        assert_eq!(
            "unix:/run/vnc.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/vnc.sock".into())
        );
        assert_eq!(
            "127.0.0.1:5900".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:5900".into())
        );
        assert!("[::1]:5901".parse::<Listen>().is_ok());
        for bad in ["unix:", "5900", ":5900", "host:port", "host:70000"] {
            assert!(bad.parse::<Listen>().is_err(), "{bad}");
        }
        let open = "0.0.0.0:0".parse::<Listen>().unwrap();
        assert!(matches!(
            VncServer::bind(&open, false),
            Err(VncError::NeedsPassword(_))
        ));
        let v = VncServer::bind(&"127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert!(v.describe().starts_with("127.0.0.1:"));
    }
}
