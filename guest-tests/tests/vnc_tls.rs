//! VeNCrypt with TLS (`--vnc-tls-cert`/`--vnc-tls-key`) against the harness's rustls client:
//! the picture arrives through TLS (X509None, and X509Vnc with a password); nothing but
//! VeNCrypt is offered; clients that refuse TLS, downgrade attempts and clients that do not
//! trust the certificate are closed, and the server goes on serving. The WebSocket port takes
//! `wss://`.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use guest_tests::frontend::{fresh_command, ConnectOptions};
use guest_tests::pki::Pki;
use guest_tests::vnc::{
    tls_client_config, VncClient, WsStream, RAW, SEC_VENCRYPT, TIGHT, VENCRYPT_X509NONE,
    VENCRYPT_X509VNC,
};
use guest_tests::wire::*;
use guest_tests::{Backend, Gpu};

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vhost-gpu-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 2D backend serving VNC with TLS on `dir/vnc.sock` (certificates from `pki`), showing a
/// 320x192 picture.
fn start_tls(dir: &Path, pki: &Pki, extra: &[&str]) -> (Backend, Gpu, PathBuf, Vec<u8>) {
    let (cert, key) = pki.write(dir);
    let sock = dir.join("vnc.sock");
    let mut a = vec![
        "--display".to_string(),
        "320x192".into(),
        "--vnc".into(),
        format!("unix:{}", sock.display()),
        "--vnc-tls-cert".into(),
        cert.display().to_string(),
        "--vnc-tls-key".into(),
        key.display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let b = Backend::start(&opts_2d(&a));
    let mut g = Gpu::connect(
        &b,
        &ConnectOptions {
            display: None,
            ..Default::default()
        },
    );
    let (w, h) = (320u32, 192u32);
    let px = pattern(w, h, 9);
    let _ = resource_with(&mut g, 1, B8G8R8X8, w, h, &px);
    assert_eq!(g.set_scanout(0, 1, (0, 0, w, h)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
    (b, g, sock, px)
}

fn bgr(px: &[u8]) -> Vec<u8> {
    px.chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect()
}

/// A client of `sock` that has read the server's version and sent its own; returns the
/// security types offered.
fn greeted(sock: &Path) -> (UnixStream, Vec<u8>) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut v = [0u8; 12];
    s.read_exact(&mut v).unwrap();
    assert_eq!(&v, b"RFB 003.008\n");
    s.write_all(b"RFB 003.008\n").unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).unwrap();
    let mut types = vec![0u8; n[0] as usize];
    s.read_exact(&mut types).unwrap();
    (s, types)
}

/// A client that chose VeNCrypt 0.2 and has read the server's subtype offer; its choice is
/// next.
fn vencrypt_offered(sock: &Path) -> UnixStream {
    let (mut s, _) = greeted(sock);
    s.write_all(&[SEC_VENCRYPT]).unwrap();
    let mut v = [0u8; 2];
    s.read_exact(&mut v).unwrap();
    s.write_all(&[0, 2]).unwrap();
    let mut offer = [0u8; 6];
    s.read_exact(&mut offer).unwrap();
    s
}

/// Reads a u32 result and, when it is not 0, its reason.
fn result_and_reason(s: &mut UnixStream) -> (u32, String) {
    let mut r = [0u8; 4];
    s.read_exact(&mut r).unwrap();
    let code = u32::from_be_bytes(r);
    if code == 0 {
        return (0, String::new());
    }
    s.read_exact(&mut r).unwrap();
    let mut reason = vec![0u8; u32::from_be_bytes(r).min(4096) as usize];
    s.read_exact(&mut reason).unwrap();
    (code, String::from_utf8_lossy(&reason).into())
}

/// True when the server has closed `s` (end of stream or reset, within the read timeout).
fn closed(s: &mut UnixStream) -> bool {
    let mut rest = [0u8; 64];
    matches!(s.read(&mut rest), Ok(0) | Err(_))
}

/// Reads a full Raw and a full Tight update through TLS and checks them against `px`; Raw's
/// 240 KB go out in several 64 KiB TLS writes.
fn check_picture<S: Read + Write>(c: &mut VncClient<S>, px: &[u8], what: &str) {
    assert_eq!((c.width, c.height), (320, 192), "{what}");
    for enc in [RAW, TIGHT] {
        c.set_encodings(&[enc]);
        c.request(false);
        let rects = c.read_update().unwrap();
        assert!(rects.iter().all(|r| r.4 == enc), "{what}: {rects:?}");
        assert_eq!(c.bgr(), bgr(px), "{what}, encoding {enc}");
    }
}

/// X509None: the picture through TLS, exact, in Raw and Tight; only VeNCrypt is offered, with
/// only X509None in it; the log names the certificate's fingerprint.
#[test]
fn vencrypt_x509none_carries_the_session_and_nothing_plain_is_offered() {
    let dir = temp_dir("none");
    let pki = Pki::new();
    let (b, _g, sock, px) = start_tls(&dir, &pki, &[]);
    let (mut s, types) = greeted(&sock);
    assert_eq!(types, [SEC_VENCRYPT], "security types with TLS");
    s.write_all(&[SEC_VENCRYPT]).unwrap();
    let mut v = [0u8; 2];
    s.read_exact(&mut v).unwrap();
    assert_eq!(v, [0, 2], "VeNCrypt version");
    s.write_all(&[0, 2]).unwrap();
    let mut offer = [0u8; 6];
    s.read_exact(&mut offer).unwrap();
    assert_eq!(offer[..2], [0, 1], "version accepted, one subtype");
    assert_eq!(
        u32::from_be_bytes(offer[2..].try_into().unwrap()),
        VENCRYPT_X509NONE
    );
    drop(s);

    let config = tls_client_config(&pki.ca_pem);
    for name in ["localhost", "127.0.0.1"] {
        let s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = VncClient::vencrypt(s, config.clone(), name, None).unwrap();
        check_picture(&mut c, &px, &format!("X509None, server name {name}"));
    }
    let log = b.log_text();
    assert!(
        log.contains("VeNCrypt X509None (TLS, no password; certificate SHA-256 "),
        "{log}"
    );
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// X509Vnc: TLS, then VNC authentication inside it; a wrong password is refused, the right
/// one gets the picture.
#[test]
fn vencrypt_x509vnc_authenticates_inside_tls() {
    let dir = temp_dir("vnc");
    let pki = Pki::new();
    std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
    let pw = dir.join("pw").display().to_string();
    let (b, _g, sock, px) = start_tls(&dir, &pki, &["--vnc-password-file", &pw]);
    let config = tls_client_config(&pki.ca_pem);
    let connect = || {
        let s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    let wrong = VncClient::vencrypt(connect(), config.clone(), "localhost", Some(b"wrong"));
    let err = wrong.err().expect("a wrong password was accepted");
    assert!(err.contains("authentication failed"), "{err}");
    let mut c = VncClient::vencrypt(connect(), config, "localhost", Some(b"s3cret")).unwrap();
    check_picture(&mut c, &px, "X509Vnc");
    let log = b.log_text();
    assert!(log.contains("VeNCrypt X509Vnc"), "{log}");
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Everything that would skip TLS is refused with its reason, and every refusal leaves the
/// server serving a good client:
/// - a client choosing None or VNC authentication (a client that refuses TLS, or a man in the
///   middle rewriting the list);
/// - an RFB 3.3 client (no security negotiation, so no VeNCrypt);
/// - VeNCrypt 0.1;
/// - a VeNCrypt subtype that was not offered (Plain, which has no TLS; TLSNone; X509Vnc with no
///   password configured);
/// - a client that goes on in plaintext after VeNCrypt accepted X509None;
/// - clients that do not trust the certificate: one trusting another CA, one expecting
///   another name.
#[test]
fn refusing_tls_downgrades_and_untrusted_certificates_are_closed() {
    let dir = temp_dir("refuse");
    let pki = Pki::new();
    let (mut b, _g, sock, px) = start_tls(&dir, &pki, &[]);
    for choice in [1u8, 2] {
        let (mut s, _) = greeted(&sock);
        s.write_all(&[choice]).unwrap();
        let (code, reason) = result_and_reason(&mut s);
        assert_eq!(code, 1, "security type {choice} accepted");
        assert!(reason.contains("requires TLS"), "{reason}");
        assert!(closed(&mut s), "type {choice}: not closed");
    }
    // RFB 3.3: the server would pick the type; it refuses instead.
    {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut v = [0u8; 12];
        s.read_exact(&mut v).unwrap();
        s.write_all(b"RFB 003.003\n").unwrap();
        let (code, reason) = {
            let mut r = [0u8; 4];
            s.read_exact(&mut r).unwrap();
            let code = u32::from_be_bytes(r);
            s.read_exact(&mut r).unwrap();
            let mut reason = vec![0u8; u32::from_be_bytes(r) as usize];
            s.read_exact(&mut reason).unwrap();
            (code, String::from_utf8_lossy(&reason).to_string())
        };
        assert_eq!(code, 0, "RFB 3.3 got a security type");
        assert!(reason.contains("requires TLS"), "{reason}");
    }
    // VeNCrypt 0.1: refused (1), closed.
    {
        let (mut s, _) = greeted(&sock);
        s.write_all(&[SEC_VENCRYPT]).unwrap();
        let mut v = [0u8; 2];
        s.read_exact(&mut v).unwrap();
        s.write_all(&[0, 1]).unwrap();
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).unwrap();
        assert_eq!(ack, [1], "VeNCrypt 0.1 accepted");
        assert!(closed(&mut s));
    }
    // Subtypes not offered: 256 Plain (no TLS at all), 257 TLSNone, 261 X509Vnc.
    for subtype in [256u32, 257, VENCRYPT_X509VNC, 0] {
        let mut s = vencrypt_offered(&sock);
        s.write_all(&subtype.to_be_bytes()).unwrap();
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).unwrap();
        assert_eq!(ack, [0], "subtype {subtype} accepted");
        assert!(closed(&mut s), "subtype {subtype}: not closed");
    }
    // X509None accepted, then the client skips TLS and sends ClientInit in the clear: the
    // server's TLS handshake fails on it, and no ServerInit comes back in the clear.
    {
        let mut s = vencrypt_offered(&sock);
        s.write_all(&VENCRYPT_X509NONE.to_be_bytes()).unwrap();
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).unwrap();
        assert_eq!(ack, [1]);
        s.write_all(&[1, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        // At most a TLS alert record (content type 21), never RFB's result or ServerInit.
        assert!(rest.is_empty() || rest[0] == 21, "{rest:?}");
    }
    // Clients that do not trust what the server shows.
    for (ca, name, why) in [
        (&pki.stranger_ca_pem, "localhost", "UnknownIssuer"),
        (&pki.ca_pem, "vnc.example.org", "not valid for name"),
    ] {
        let s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let err = VncClient::vencrypt(s, tls_client_config(ca), name, None)
            .err()
            .expect("an untrusted certificate was accepted");
        assert!(err.contains(why), "{name}: {err}");
    }
    // The server still serves, the guest's device too.
    assert!(b.alive());
    let s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut c = VncClient::vencrypt(s, tls_client_config(&pki.ca_pem), "localhost", None).unwrap();
    check_picture(&mut c, &px, "after the refusals");
    let log = b.log_text();
    for line in [
        "TLS is required, and the client chose security type 1",
        "TLS is required, and an RFB 3.3 client",
        "VeNCrypt version 0.1",
        "VeNCrypt subtype 256",
        "TLS handshake: received corrupt message",
        "TLS handshake: received fatal alert: UnknownCA",
        "TLS handshake: received fatal alert: BadCertificate",
    ] {
        assert!(log.contains(line), "log lacks {line:?}:\n{log}");
    }
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A certificate and key that do not belong together, a file with no certificate, and a key
/// file without a key stop the start with the flag's name; an open address still needs a
/// password with TLS.
#[test]
fn bad_certificate_files_fail_at_start() {
    let dir = temp_dir("files");
    let pki = Pki::new();
    let other = Pki::new();
    let (cert, key) = pki.write(&dir);
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let c = cert.display().to_string();
    let k = key.display().to_string();
    let ok = other_key.display().to_string();
    let g = garbage.display().to_string();
    for (args, why) in [
        (
            vec!["--vnc-tls-cert", &c, "--vnc-tls-key", &ok],
            "--vnc-tls-cert/--vnc-tls-key",
        ),
        (
            vec!["--vnc-tls-cert", &g, "--vnc-tls-key", &k],
            "--vnc-tls-cert",
        ),
        (
            vec!["--vnc-tls-cert", &c, "--vnc-tls-key", &g],
            "--vnc-tls-key",
        ),
        (vec!["--vnc-tls-cert", &c], "--vnc-tls-key"),
    ] {
        let out = fresh_command()
            .args(["-s", "/tmp/x-vnc-tls.sock", "--renderer", "2d"])
            .args(["--vnc", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{args:?}: {err}"
        );
    }
    let out = fresh_command()
        .args(["-s", "/tmp/x-vnc-tls.sock", "--renderer", "2d"])
        .args([
            "--vnc",
            "0.0.0.0:0",
            "--vnc-tls-cert",
            &c,
            "--vnc-tls-key",
            &k,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs --vnc-password-file"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With a certificate, the WebSocket port is `wss://`: TLS, then the WebSocket upgrade, then
/// RFB with its plain security types (TLS is already there; noVNC cannot do VeNCrypt). A
/// client that skips TLS on that port gets nothing.
#[test]
fn the_websocket_port_takes_wss_with_a_certificate() {
    let dir = temp_dir("wss");
    let pki = Pki::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (b, _g, _sock, px) = start_tls(&dir, &pki, &["--vnc-websocket", &addr]);
    // wss: a rustls client, then tungstenite's handshake inside it.
    let tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = rustls::ClientConnection::new(tls_client_config(&pki.ca_pem), name).unwrap();
    let ws = WsStream::over(rustls::StreamOwned::new(tls, tcp), &addr, Some("binary")).unwrap();
    let mut c = VncClient::handshake(ws, None).unwrap();
    check_picture(&mut c, &px, "wss");
    // Plain ws:// on that port: the TLS handshake fails on it, no upgrade, no RFB.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        !rest.starts_with(b"HTTP") && !rest.starts_with(b"RFB"),
        "{rest:?}"
    );
    let log = b.log_text();
    assert!(
        log.contains(&format!("WebSocket over TLS (wss) on {addr}")),
        "{log}"
    );
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}
