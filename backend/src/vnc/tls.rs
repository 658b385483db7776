//! VeNCrypt's TLS (`--vnc-tls-cert`/`--vnc-tls-key`), as QEMU's `tls-creds` offers it: the RFB
//! stream after the security handshake runs through rustls (ring as its crypto provider).
//!
//! A session is read by one thread (the client's messages) and written by another (updates),
//! and a `rustls::StreamOwned` cannot be split between them. So the TLS state sits behind a
//! lock that neither side holds while it waits on the socket:
//! - the read side reads ciphertext from its own clone of the transport, then takes the lock
//!   to decrypt it;
//! - the write side takes the lock to encrypt, then the output lock before letting the TLS
//!   state go, so that records reach the socket in the order they were numbered.
//!
//! The transport below is a client's TCP or Unix connection. On the WebSocket port the layers
//! go the other way (`wss://`): TLS on TCP, then the WebSocket over it.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::ServerConnection;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Conn;

/// Why the certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--vnc-tls-cert {0}: {1}")]
    Cert(String, String),
    #[error("--vnc-tls-key {0}: {1}")]
    Key(String, String),
    #[error("--vnc-tls-cert/--vnc-tls-key: {0}")]
    Config(rustls::Error),
}

/// The server's TLS configuration: its certificate chain and key, checked to match.
#[derive(Clone)]
pub struct TlsServer {
    config: Arc<rustls::ServerConfig>,
    /// The server certificate's SHA-256 fingerprint, for the log (viewers that ask whether to
    /// trust a certificate show it).
    pub fingerprint: String,
}

impl TlsServer {
    /// Loads a PEM certificate chain (the server's first) and its PEM private key (PKCS#8,
    /// PKCS#1 or SEC1). Read before the sandbox starts.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsServer, TlsError> {
        let cert_name = cert.display().to_string();
        let key_name = key.display().to_string();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| TlsError::Cert(cert_name.clone(), e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Cert(cert_name.clone(), e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsError::Cert(
                cert_name,
                "no PEM certificate (BEGIN CERTIFICATE) in it".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| TlsError::Key(key_name, e.to_string()))?;
        let fingerprint = fingerprint(&certs[0]);
        // ring, not aws-lc-rs: it builds with just a C compiler (aws-lc wants a long C build, in
        // the Debian 13 root and the fuzz build too). rustls 0.23.48 deprecates it because it
        // has no post-quantum hybrid key exchange; X25519 and the NIST curves remain.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(TlsError::Config)?;
        // No TLS 1.3 session tickets. VNC sessions are long and few, so resumption buys
        // nothing. And TigerVNC's viewer (1.12, GnuTLS) hung in half of its connections: the
        // tickets and the first RFB bytes after the handshake (the VNC challenge) reached it in
        // one TCP segment, GnuTLS took them all in while reading the tickets, and the viewer
        // then waited on the socket for a challenge it already had.
        config.send_tls13_tickets = 0;
        Ok(TlsServer {
            config: Arc::new(config),
            fingerprint,
        })
    }

    /// Runs the TLS handshake on `conn` (within its timeouts); the session's stream follows on
    /// the result.
    pub fn accept(&self, mut conn: Conn) -> io::Result<TlsConn> {
        let mut tls = ServerConnection::new(Arc::clone(&self.config)).map_err(io::Error::other)?;
        while tls.is_handshaking() {
            match tls.complete_io(&mut conn) {
                Ok((0, 0)) if tls.is_handshaking() => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS handshake: the client closed the connection",
                    ))
                }
                Ok(_) => {}
                Err(e) => {
                    // An alert rustls queued for the client (a bad certificate, say).
                    let _ = tls.complete_io(&mut conn);
                    return Err(io::Error::new(e.kind(), format!("TLS handshake: {e}")));
                }
            }
        }
        Ok(TlsConn {
            inner: Box::new(conn),
            tls: Arc::new(Mutex::new(tls)),
            out: Arc::default(),
            buf: Vec::new(),
        })
    }
}

/// The certificate's SHA-256 fingerprint, as viewers show it (`AB:CD:...`).
fn fingerprint(cert: &CertificateDer<'_>) -> String {
    ring::digest::digest(&ring::digest::SHA256, cert.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One TLS session over a client's transport, cloneable into a reading and a writing handle.
pub struct TlsConn {
    /// This handle's clone of the transport.
    inner: Box<Conn>,
    tls: Arc<Mutex<ServerConnection>>,
    /// Held from encrypting to the socket write, so records go out in order.
    out: Arc<Mutex<()>>,
    /// Ciphertext read from the socket (this handle's).
    buf: Vec<u8>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Largest TLS record with its header and overhead: one socket read's worth.
const RECORD: usize = 16 * 1024 + 2048;

impl TlsConn {
    pub fn try_clone(&self) -> io::Result<TlsConn> {
        Ok(TlsConn {
            inner: Box::new(self.inner.try_clone()?),
            tls: Arc::clone(&self.tls),
            out: Arc::clone(&self.out),
            buf: Vec::new(),
        })
    }

    /// The transport below (for timeouts and shutdown).
    pub fn inner(&self) -> &Conn {
        &self.inner
    }

    /// Writes out what the TLS state has to send, in order, and lets it go.
    fn send(&self, mut tls: MutexGuard<'_, ServerConnection>) -> io::Result<()> {
        let mut records = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut records)?;
        }
        if records.is_empty() {
            return Ok(());
        }
        let _order = lock(&self.out);
        drop(tls);
        let mut w: &Conn = &self.inner;
        w.write_all(&records)
    }
}

impl Read for TlsConn {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        if b.is_empty() {
            return Ok(0);
        }
        loop {
            match lock(&self.tls).reader().read(b) {
                // Ok(0): the client's close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Nothing decrypted is waiting: read ciphertext, without the lock.
            self.buf.resize(RECORD, 0);
            let n = self.inner.read(&mut self.buf)?;
            if n == 0 {
                return Ok(0);
            }
            let mut tls = lock(&self.tls);
            let mut rest = self.buf.get(..n).unwrap_or_default();
            let mut result = Ok(());
            while !rest.is_empty() && result.is_ok() {
                result = tls.read_tls(&mut rest).and_then(|_| {
                    tls.process_new_packets()
                        .map(|_| ())
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                });
            }
            // Alerts, and answers such as a key update's.
            self.send(tls)?;
            result?;
        }
    }
}

impl Write for &TlsConn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let mut tls = lock(&self.tls);
        // At most rustls's buffer limit (64 KiB) is taken at once; write_all comes back.
        let n = tls.writer().write(b)?;
        self.send(tls)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
