//! The built-in VNC server (`--vnc`) against the harness's own RFB client: what a client sees
//! is what the guest flushed (Raw and ZRLE, damage only, DesktopSize, the cursor), several
//! clients and a stalled one, and hostile clients that get a clean close while the guest keeps
//! running.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use guest_tests::frontend::{ConnectOptions, Profile};
use guest_tests::vnc::{
    DesktopLayout, Screen, VncClient, WsStream, CONTINUOUS_UPDATES, CURSOR, DESKTOP_SIZE,
    EXTENDED_DESKTOP_SIZE, FENCE, RAW, TIGHT, TIGHT_QUALITY_0, ZRLE,
};
use guest_tests::wire::*;
use guest_tests::{Backend, Gpu};

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vhost-gpu-vnc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 2D backend serving VNC on `dir/vnc.sock`, and a guest with no display channel (as a
/// generic vhost-user frontend has none).
fn start_vnc(dir: &Path, args: &[&str]) -> (Backend, Gpu, PathBuf) {
    let sock = dir.join("vnc.sock");
    let mut a = vec!["--vnc".to_string(), format!("unix:{}", sock.display())];
    a.extend(args.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let b = Backend::start(&opts_2d(&a));
    let g = Gpu::connect(
        &b,
        &ConnectOptions {
            display: None,
            ..Default::default()
        },
    );
    (b, g, sock)
}

fn bgr(px: &[u8]) -> Vec<u8> {
    px.chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect()
}

#[test]
fn clients_see_what_the_guest_flushed_raw_and_zrle_damage_resize_and_cursor() {
    let dir = temp_dir("picture");
    let (b, mut g, sock) = start_vnc(&dir, &["--display", "64x48"]);
    let (w, h) = (96u32, 48u32);
    let px = pattern(w, h, 3);
    let entries = resource_with(&mut g, 1, B8G8R8X8, w, h, &px);
    // Before the guest shows anything the client gets the configured size.
    let mut raw = VncClient::connect(&sock, None).unwrap();
    assert_eq!((raw.width, raw.height), (64, 48));
    assert_eq!(raw.name, "vhost-gpu");
    raw.set_encodings(&[RAW]);
    let mut z = VncClient::connect(&sock, None).unwrap();
    z.set_encodings(&[ZRLE, RAW, DESKTOP_SIZE, CURSOR]);

    assert_eq!(g.set_scanout(0, 1, (16, 0, 64, 48)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
    let want = crop(&px, w * 4, (16, 0, 64, 48));
    for (c, enc) in [(&mut raw, RAW), (&mut z, ZRLE)] {
        // A full request is answered with the whole picture; keep asking until the flush is
        // in (the first answer may come before it).
        let deadline = Instant::now() + WAIT;
        loop {
            c.request(false);
            let rects = c.read_update().unwrap();
            assert!(rects.iter().all(|r| r.4 == enc), "{rects:?}");
            if c.bgr() == bgr(&want) {
                break;
            }
            assert!(Instant::now() < deadline, "picture never matched ({enc})");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // A damage rect: only it comes, to both.
    let px2 = pattern(w, h, 77);
    g.write_backing(&entries, &px2);
    assert_eq!(g.transfer(1, (24, 8, 4, 4), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (24, 8, 4, 4)), OK_NODATA);
    let mut want2 = want.clone();
    for y in 8..12usize {
        let at = (y * 64 + 8) * 4;
        want2[at..at + 16].copy_from_slice(&crop(&px2, w * 4, (24, y as u32, 4, 1)));
    }
    for (c, enc) in [(&mut raw, RAW), (&mut z, ZRLE)] {
        c.request(true);
        assert_eq!(c.read_update().unwrap(), vec![(8, 8, 4, 4, enc)]);
        assert_eq!(c.bgr(), bgr(&want2));
    }

    // The cursor: a 64x64 B8G8R8A8 image, left half opaque.
    let mut cur = pattern(64, 64, 5);
    for (i, p) in cur.chunks_exact_mut(4).enumerate() {
        p[3] = if i % 64 < 32 { 0xff } else { 0 };
    }
    let _ = resource_with(&mut g, 2, B8G8R8A8, 64, 64, &cur);
    assert_eq!(g.transfer(2, (0, 0, 64, 64), 64 * 4), OK_NODATA);
    assert_eq!(g.update_cursor(0, 10, 10, 2, (3, 4)), OK_NODATA);
    z.request(true);
    let rects = z.read_update().unwrap();
    assert_eq!(rects, vec![(3, 4, 64, 64, CURSOR)]);
    let (_, _, _, _, cpx, mask) = z.cursor.clone().unwrap();
    assert_eq!(bgr(&cpx), bgr(&cur));
    assert!(mask
        .chunks(8)
        .all(|row| row == [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]));

    // A new mode: DesktopSize alone to the client that knows it, then the whole picture;
    // the other keeps its size and gets the part that fits.
    let px3 = pattern(32, 32, 9);
    let _ = resource_with(&mut g, 3, B8G8R8X8, 32, 32, &px3);
    assert_eq!(g.transfer(3, (0, 0, 32, 32), 32 * 4), OK_NODATA);
    assert_eq!(g.set_scanout(0, 3, (0, 0, 32, 32)), OK_NODATA);
    assert_eq!(g.flush(3, (0, 0, 32, 32)), OK_NODATA);
    z.request(true);
    assert_eq!(z.read_update().unwrap(), vec![(0, 0, 32, 32, DESKTOP_SIZE)]);
    z.request(false);
    assert_eq!(z.read_update().unwrap(), vec![(0, 0, 32, 32, ZRLE)]);
    assert_eq!(z.bgr(), bgr(&px3));
    raw.request(true);
    assert_eq!(raw.read_update().unwrap(), vec![(0, 0, 32, 32, RAW)]);
    assert_eq!((raw.width, raw.height), (64, 48));
    assert_eq!(&raw.fb[..32 * 4], &px3[..32 * 4]);

    // A client in another pixel format: RGB565 big endian.
    let mut c16 = VncClient::connect(&sock, None).unwrap();
    c16.set_pixel_format([16, 16, 1, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0]);
    c16.set_encodings(&[RAW]);
    c16.request(false);
    // The 565 pixels land in the 4-byte framebuffer as raw bytes; read them by hand.
    let mut head = [0u8; 4 + 12];
    c16.stream().set_read_timeout(Some(WAIT)).unwrap();
    (&mut c16.stream()).read_exact(&mut head).unwrap();
    assert_eq!((c16.width, c16.height), (32, 32));
    assert_eq!(&head[4..12], &[0, 0, 0, 0, 0, 32, 0, 32]);
    let mut p565 = vec![0u8; 32 * 32 * 2];
    (&mut c16.stream()).read_exact(&mut p565).unwrap();
    let p = &px3[..4];
    let v = u16::from_be_bytes([p565[0], p565[1]]);
    let scale = |c: u8, max: u32| (c as u32 * max + 127) / 255;
    assert_eq!(
        v as u32,
        (scale(p[2], 31) << 11) | (scale(p[1], 63) << 5) | scale(p[0], 31)
    );
    assert!(b.log_text().contains("VNC on unix:"), "{}", b.log_text());
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A 320x192 picture with every kind of Tight subrectangle: a solid band, two-colour stripes,
/// a 12-colour checkerboard, a photo-like gradient with a little noise (rows 64..128: the
/// gradient filter's when lossless) and noise (below: unfiltered when lossless) (B8G8R8X8).
fn tight_picture(seed: u32) -> Vec<u8> {
    let mut px = Vec::new();
    for y in 0..192u32 {
        for x in 0..320u32 {
            let [r, g, b] = if y < 64 {
                [0x20, 0x40, (0x80 + seed) as u8]
            } else if x < 128 {
                if (x / 3 + seed) % 2 == 0 {
                    [0, 0, 0]
                } else {
                    [0xff, 0xf0, 0xe0]
                }
            } else if x < 192 {
                let i = (x / 8 + y / 8 + seed) % 12;
                [(i * 20) as u8, (255 - i * 20) as u8, (i * 7) as u8]
            } else if y < 128 {
                // Smooth, with a little noise: what JPEG and the gradient filter are for.
                let n = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503) ^ seed) % 9;
                [(x + n) as u8, (y + n) as u8, ((x + y) / 2 + seed) as u8]
            } else {
                // Noise, which no filter helps.
                let n = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503) ^ seed)
                    .wrapping_mul(0x9e37_79b9);
                let [a, b, c, _] = n.to_le_bytes();
                [a, b ^ c, c]
            };
            px.extend_from_slice(&[b, g, r, 0]);
        }
    }
    px
}

#[test]
fn tight_is_exact_without_jpeg_and_close_with_it_and_keeps_its_zlib_streams() {
    let dir = temp_dir("tight");
    let (b, mut g, sock) = start_vnc(&dir, &["--display", "320x192"]);
    let (w, h) = (320u32, 192u32);
    let px = tight_picture(0);
    let entries = resource_with(&mut g, 1, B8G8R8X8, w, h, &px);
    let mut lossless = VncClient::connect(&sock, None).unwrap();
    lossless.set_encodings(&[TIGHT, RAW]);
    let mut jpeg = VncClient::connect(&sock, None).unwrap();
    jpeg.set_encodings(&[TIGHT, TIGHT_QUALITY_0 + 9, RAW]);
    assert_eq!(g.set_scanout(0, 1, (0, 0, w, h)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
    // The largest difference of any colour of any pixel.
    let worst = |a: &[u8], b: &[u8]| a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max();
    for round in 0..3u32 {
        let want = tight_picture(round);
        if round > 0 {
            // New pixels, sent incrementally: the zlib streams carry on from before.
            g.write_backing(&entries, &want);
            assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
            assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
        }
        for (c, name) in [(&mut lossless, "lossless"), (&mut jpeg, "JPEG")] {
            let deadline = Instant::now() + WAIT;
            loop {
                c.request(round > 0);
                let rects = c.read_update().unwrap();
                assert!(rects.iter().all(|r| r.4 == TIGHT), "{name}: {rects:?}");
                let diff = worst(&c.bgr(), &bgr(&want)).unwrap_or(0);
                // JPEG at quality level 9 (100, 4:4:4) is within a few steps.
                if diff == 0 || (name == "JPEG" && diff <= 8) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name}, round {round}: off by up to {diff}"
                );
            }
        }
    }
    // Lossless is exact everywhere; JPEG only where the picture is photo-like: the solid,
    // striped and checkered parts went as fill and palettes to it too. The smooth part went
    // gradient-filtered and the noise unfiltered to the lossless client.
    assert_eq!(lossless.bgr(), bgr(&tight_picture(2)));
    let (got, want) = (jpeg.bgr(), bgr(&tight_picture(2)));
    for y in 0..h as usize {
        let row = y * w as usize * 3;
        assert_eq!(got[row..row + 192 * 3], want[row..row + 192 * 3], "row {y}");
    }
    for kind in ["fill", "mono", "indexed", "copy", "gradient"] {
        assert!(
            lossless.tight_kinds.contains_key(kind),
            "{:?}",
            lossless.tight_kinds
        );
    }
    assert!(!lossless.tight_kinds.contains_key("jpeg"));
    for kind in ["fill", "mono", "indexed", "jpeg"] {
        assert!(
            jpeg.tight_kinds.contains_key(kind),
            "{:?}",
            jpeg.tight_kinds
        );
    }
    assert!(
        !jpeg.tight_kinds.contains_key("copy"),
        "{:?}",
        jpeg.tight_kinds
    );
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--vnc-websocket`: a WebSocket client (as noVNC is) gets the same RFB session, the picture
/// exact in Tight, across pings; a plain RFB client or garbage on the WebSocket port is closed,
/// and the server goes on serving. A browser page from another site is refused (403); one from
/// this host, or an origin given with `--vnc-websocket-origin`, is upgraded.
#[test]
fn websocket_clients_get_the_same_session_and_bad_upgrades_are_closed() {
    let dir = temp_dir("ws");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (b, mut g, _sock) = start_vnc(
        &dir,
        &[
            "--display",
            "320x192",
            "--vnc-websocket",
            &addr,
            "--vnc-websocket-origin",
            "https://console.example.org",
        ],
    );
    let (w, h) = (320u32, 192u32);
    let px = tight_picture(4);
    let _ = resource_with(&mut g, 1, B8G8R8X8, w, h, &px);
    assert_eq!(g.set_scanout(0, 1, (0, 0, w, h)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);

    // Garbage, then a plain RFB client, on the WebSocket port: closed without an RFB word.
    for hello in [&b"\x16\x03\x01garbage\r\n\r\n"[..], b""] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(hello).unwrap();
        if hello.is_empty() {
            // A plain RFB client waits for the server's version; the upgrade times out.
            let mut v = [0u8; 12];
            assert!(
                s.read_exact(&mut v).is_err(),
                "an RFB greeting on the WebSocket port"
            );
        } else {
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            assert!(!rest.starts_with(b"RFB"), "{rest:?}");
        }
    }

    for protocols in [Some("binary"), None] {
        let ws = WsStream::connect(&addr, protocols).unwrap();
        let mut c = VncClient::handshake(ws, None).unwrap();
        assert_eq!((c.width, c.height), (w, h));
        c.set_encodings(&[TIGHT, RAW]);
        c.request(false);
        let rects = c.read_update().unwrap();
        assert!(rects.iter().all(|r| r.4 == TIGHT), "{rects:?}");
        assert_eq!(c.bgr(), bgr(&px), "over WebSocket ({protocols:?})");
        // Pings on the way are answered (tungstenite replies to the server's pong itself).
        c.stream_mut().ping();
        c.request(false);
        c.read_update().unwrap();
        assert_eq!(c.bgr(), bgr(&px));
    }
    // A browser page from another site (its Origin) is refused; one from this host, or a
    // listed origin, is upgraded.
    let upgrade = |origin: &str| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: {origin}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut status = [0u8; 12];
        s.read_exact(&mut status).unwrap();
        String::from_utf8_lossy(&status).to_string()
    };
    assert_eq!(upgrade("https://evil.example.com"), "HTTP/1.1 403");
    assert_eq!(upgrade("http://127.0.0.1:8000"), "HTTP/1.1 101");
    assert_eq!(upgrade("https://console.example.org"), "HTTP/1.1 101");
    let log = b.log_text();
    assert!(log.contains(&format!("WebSocket on {addr}")), "{log}");
    assert!(
        log.contains("origin https://evil.example.com may not use this VNC server"),
        "{log}"
    );
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// TigerVNC's extensions: a client that lists ContinuousUpdates and Fence learns the server
/// has them (an EndOfContinuousUpdates, a fence asking for an answer); its fence is answered
/// with its payload and only BlockBefore kept; with continuous updates on, each flush comes
/// without a request; off, an EndOfContinuousUpdates, and nothing more unasked.
#[test]
fn continuous_updates_come_unasked_and_fences_are_answered_in_order() {
    let dir = temp_dir("cu");
    let (b, mut g, sock) = start_vnc(&dir, &["--display", "64x48"]);
    let (w, h) = (64u32, 48u32);
    let entries = resource_with(&mut g, 1, B8G8R8X8, w, h, &pattern(w, h, 1));
    assert_eq!(g.set_scanout(0, 1, (0, 0, w, h)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
    let mut c = VncClient::connect(&sock, None).unwrap();
    c.set_encodings(&[RAW, CONTINUOUS_UPDATES, FENCE]);
    // The announcements: both, before anything else.
    while c.end_of_continuous == 0 || c.fences.is_empty() {
        assert_eq!(c.read_message().unwrap(), None);
    }
    assert_eq!(c.fences, vec![(1 << 31, Vec::new())]);
    // A fence request: all flags asked, BlockBefore kept, the payload echoed.
    c.fence((1 << 31) | 7, b"vgt-fence");
    assert_eq!(c.read_message().unwrap(), None);
    assert_eq!(c.fences[1], (1, b"vgt-fence".to_vec()));

    c.continuous(true);
    let mut frames = 0;
    for seed in 2..5u8 {
        let px = pattern(w, h, seed);
        g.write_backing(&entries, &px);
        assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
        assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
        // No request sent: the update comes anyway (perhaps the previous frame's first).
        let deadline = Instant::now() + WAIT;
        while c.bgr() != bgr(&px) {
            assert!(Instant::now() < deadline, "frame {seed} never came unasked");
            if c.read_message().unwrap().is_some() {
                frames += 1;
            }
        }
    }
    assert!(frames >= 3, "{frames}");
    c.continuous(false);
    let ends = c.end_of_continuous;
    while c.end_of_continuous == ends {
        c.read_message().unwrap();
    }
    // Off: a new flush sends nothing until asked.
    g.write_backing(&entries, &pattern(w, h, 9));
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
    c.stream()
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut one = [0u8; 1];
    assert!(
        (&mut c.stream()).read_exact(&mut one).is_err(),
        "an update came unasked after continuous updates were turned off"
    );
    c.stream().set_read_timeout(Some(WAIT)).unwrap();
    c.request(true);
    assert!(c.read_update().is_ok());
    assert_eq!(c.bgr(), bgr(&pattern(w, h, 9)));
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Page-flips between two full 640x480 frames (resources 1 and 2) again and again for
/// `secs`, each transferred and flushed whole; returns flushes per second.
fn flush_rate(g: &mut Gpu, secs: f64) -> f64 {
    let t = Instant::now();
    let mut n = 0u32;
    while t.elapsed().as_secs_f64() < secs {
        let id = 1 + n % 2;
        assert_eq!(g.set_scanout(0, id, (0, 0, 640, 480)), OK_NODATA);
        assert_eq!(g.transfer(id, (0, 0, 640, 480), 640 * 4), OK_NODATA);
        assert_eq!(g.flush(id, (0, 0, 640, 480)), OK_NODATA);
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

#[test]
fn a_stalled_client_does_not_slow_the_guest_and_others_keep_getting_frames() {
    let dir = temp_dir("stall");
    let (b, mut g, sock) = start_vnc(&dir, &["--display", "640x480"]);
    let _ = resource_with(&mut g, 1, B8G8R8X8, 640, 480, &pattern(640, 480, 1));
    let _ = resource_with(&mut g, 2, B8G8R8X8, 640, 480, &pattern(640, 480, 2));
    flush_rate(&mut g, 0.2);
    let alone = flush_rate(&mut g, 1.5);
    let rss_before = b.rss_anon_kib();

    // A client that asks for the whole picture, then never reads.
    let mut stalled = VncClient::connect(&sock, None).unwrap();
    stalled.set_encodings(&[RAW]);
    for _ in 0..50 {
        stalled.request(false);
    }
    std::thread::sleep(Duration::from_millis(200));
    let with_stalled = flush_rate(&mut g, 1.5);

    // And one that keeps up, on its own thread.
    let sock2 = sock.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = std::sync::Arc::clone(&stop);
    let reader = std::thread::spawn(move || {
        let mut c = VncClient::connect(&sock2, None).unwrap();
        // Raw: cheap to decode in a debug build too (scripts/test runs these unoptimised).
        c.set_encodings(&[RAW]);
        let mut updates = 0u32;
        c.request(false);
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            c.read_update().unwrap();
            updates += 1;
            c.request(true);
        }
        updates
    });
    std::thread::sleep(Duration::from_millis(200));
    let with_both = flush_rate(&mut g, 1.5);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // One more flush so the reader's last request is answered.
    flush_rate(&mut g, 0.1);
    let updates = reader.join().unwrap();
    let rss_after = b.rss_anon_kib();
    eprintln!(
        "flushes/s: alone {alone:.0}, with a stalled client {with_stalled:.0} ({:.2}x), with a stalled and a reading client {with_both:.0} ({:.2}x); reading client got {updates} updates; RssAnon {rss_before} -> {rss_after} KiB",
        with_stalled / alone,
        with_both / alone
    );
    assert!(
        with_stalled >= 0.7 * alone,
        "a stalled client slowed the guest: {with_stalled:.0} vs {alone:.0} flushes/s"
    );
    assert!(updates >= 5, "the reading client got {updates} updates");
    // The stalled client holds at most one update's copy (1.2 MB here) and socket buffers.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RssAnon {rss_before} -> {rss_after} KiB"
    );
    drop(stalled);
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn closes_within(mut s: UnixStream, t: Duration) -> bool {
    s.set_read_timeout(Some(t)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn threads(b: &Backend) -> u32 {
    b.status_field("Threads").trim().parse().unwrap()
}

#[test]
fn hostile_clients_get_a_clean_close_and_the_guest_keeps_running() {
    let dir = temp_dir("hostile");
    let pw = dir.join("password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let pwa = pw.to_str().unwrap().to_string();
    let (mut b, mut g, sock) = start_vnc(
        &dir,
        &[
            "--display",
            "64x48",
            "--vnc-password-file",
            &pwa,
            "--vnc-max-clients",
            "3",
        ],
    );
    let px = pattern(64, 48, 2);
    let _ = resource_with(&mut g, 1, B8G8R8X8, 64, 48, &px);
    assert_eq!(g.set_scanout(0, 1, (0, 0, 64, 48)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, 64, 48), 64 * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, 64, 48)), OK_NODATA);

    // Silence after connecting: closed by the handshake timeout (10 s).
    let silent = UnixStream::connect(&sock).unwrap();
    let silent = std::thread::spawn(move || closes_within(silent, Duration::from_secs(20)));
    // Garbage instead of a version.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closes_within(s, WAIT));
    // A truncated handshake: version, then gone.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(b"RFB 003.008\n").unwrap();
    drop(s);
    // (Each closed session leaves the count of clients as its thread ends.)
    std::thread::sleep(Duration::from_millis(300));
    // No password, and a wrong one.
    let e = VncClient::connect(&sock, None).err().unwrap();
    assert!(e.contains("security types"), "{e}");
    let e = VncClient::connect(&sock, Some(b"wrong")).err().unwrap();
    assert!(e.contains("authentication failed"), "{e}");
    // The right one; then an unknown message type and a colour-map pixel format each end
    // their session.
    let mut ok = VncClient::connect(&sock, Some(b"s3cret")).unwrap();
    ok.set_encodings(&[RAW]);
    ok.request(false);
    ok.read_update().unwrap();
    assert_eq!(ok.bgr(), bgr(&px));
    std::thread::sleep(Duration::from_millis(300));
    let bad = VncClient::connect(&sock, Some(b"s3cret")).unwrap();
    bad.stream().write_all(&[99, 0, 0, 0]).unwrap();
    assert!(closes_within(bad.stream().try_clone().unwrap(), WAIT));
    std::thread::sleep(Duration::from_millis(300));
    let mut cmap = VncClient::connect(&sock, Some(b"s3cret")).unwrap();
    cmap.set_pixel_format([8, 8, 0, 0, 0, 7, 0, 7, 0, 3, 0, 3, 6, 0, 0, 0]);
    assert!(closes_within(cmap.stream().try_clone().unwrap(), WAIT));
    // Over --vnc-max-clients (3: the silent one, `ok` and this one): refused with a reason.
    std::thread::sleep(Duration::from_millis(300));
    let _second = VncClient::connect(&sock, Some(b"s3cret")).unwrap();
    let e = VncClient::connect(&sock, Some(b"s3cret")).err().unwrap();
    assert!(e.contains("too many VNC clients"), "{e}");
    drop(_second);
    assert!(silent.join().unwrap(), "a silent client was never closed");

    // 10,000 connect/disconnect cycles: memory and threads come back.
    // Each gets the server's version, or (far over --vnc-max-clients while earlier sessions'
    // threads are still ending) a close without a word; never a hang.
    let cycle = |n: u32| {
        let mut shut_out = 0;
        for _ in 0..n {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut v = [0u8; 12];
            match s.read_exact(&mut v) {
                Ok(()) => assert_eq!(&v, b"RFB 003.008\n"),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => shut_out += 1,
                Err(e) => panic!("connection {e}"),
            }
            drop(s);
        }
        shut_out
    };
    let _ = cycle(500);
    std::thread::sleep(Duration::from_millis(500));
    let (rss0, th0) = (b.rss_anon_kib(), threads(&b));
    let t = Instant::now();
    let shut_out = cycle(10_000);
    let took = t.elapsed();
    let deadline = Instant::now() + WAIT;
    while threads(&b) > th0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (rss1, th1) = (b.rss_anon_kib(), threads(&b));
    eprintln!(
        "10,000 VNC connect/disconnect cycles in {took:.1?} ({shut_out} closed at once, over the limit): RssAnon {rss0} -> {rss1} KiB, threads {th0} -> {th1}"
    );
    assert!(th1 <= th0, "threads {th0} -> {th1}");
    assert!(rss1 < rss0 + 4096, "RssAnon {rss0} -> {rss1} KiB");

    // The guest and a good client still work.
    assert!(b.alive());
    let px2 = pattern(64, 48, 50);
    let entries = g.scattered_backing(&px2);
    assert_eq!(g.detach_backing(1), OK_NODATA);
    assert_eq!(g.attach_backing(1, &entries), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, 64, 48), 64 * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, 64, 48)), OK_NODATA);
    ok.request(true);
    ok.read_update().unwrap();
    assert_eq!(ok.bgr(), bgr(&px2));
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Reads messages until the client has `n` ExtendedDesktopSize layouts; returns the last.
fn layout_number(c: &mut VncClient, n: usize) -> DesktopLayout {
    let deadline = Instant::now() + WAIT;
    while c.layouts.len() < n {
        assert!(Instant::now() < deadline, "no layout {n}: {:?}", c.layouts);
        c.read_message().unwrap();
    }
    c.layouts[n - 1].clone()
}

/// Client-driven resize (ExtendedDesktopSize, SetDesktopSize) through a generic frontend: the
/// server announces the layout; a request with a bad layout is refused (3) and reaches nobody;
/// a good one is answered OK with the size now, raises VIRTIO_GPU_EVENT_DISPLAY and sends the
/// frontend a config-change message; the guest then reads the new mode in GET_DISPLAY_INFO
/// and the EDID, and once it shows that mode the client gets the new size (a server-side
/// ExtendedDesktopSize) and the picture. With QEMU's vhost-user-gpu-pci (a display channel),
/// which keeps display events to itself, the request is refused as prohibited (1).
#[test]
fn set_desktop_size_reaches_the_guest_as_a_display_change() {
    let dir = temp_dir("resize");
    let sock = dir.join("vnc.sock");
    let vnc = format!("unix:{}", sock.display());
    let b = Backend::start(&opts_2d(&["--display", "640x480", "--vnc", &vnc]));
    let mut g = Gpu::connect(
        &b,
        &ConnectOptions {
            display: None,
            profile: Profile::GenericPassThrough,
            backend_channel: true,
            ..Default::default()
        },
    );
    let _ = resource_with(&mut g, 1, B8G8R8X8, 640, 480, &pattern(640, 480, 1));
    assert_eq!(g.set_scanout(0, 1, (0, 0, 640, 480)), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, 640, 480)), OK_NODATA);
    let mut c = VncClient::connect(&sock, None).unwrap();
    c.set_encodings(&[RAW, EXTENDED_DESKTOP_SIZE]);
    let announced = layout_number(&mut c, 1);
    assert_eq!(announced, (0, 0, 640, 480, vec![(0, 0, 0, 640, 480, 0)]));

    // Layouts a scanout cannot take: refused as invalid, nothing reaches the guest.
    let bad: [(u16, u16, Vec<Screen>); 4] = [
        (800, 600, vec![]),
        (
            800,
            600,
            vec![(0, 0, 0, 400, 600, 0), (1, 400, 0, 400, 600, 0)],
        ),
        (800, 600, vec![(0, 10, 0, 790, 600, 0)]),
        (5000, 600, vec![(0, 0, 0, 5000, 600, 0)]),
    ];
    for (i, (w, h, screens)) in bad.iter().enumerate() {
        c.set_desktop_size(*w, *h, screens);
        let answer = layout_number(&mut c, 2 + i);
        assert_eq!(
            (answer.0, answer.1),
            (1, 3),
            "{w}x{h} {screens:?}: {answer:?}"
        );
        assert_eq!((answer.2, answer.3), (640, 480), "the size stays");
    }
    assert_eq!(g.config_changes(), 0);
    assert_eq!(g.read_config()[0] & 1, 0, "no display event yet");

    // A good request.
    c.set_desktop_size(800, 600, &[(0, 0, 0, 800, 600, 0)]);
    let answer = layout_number(&mut c, 6);
    assert_eq!((answer.0, answer.1, answer.2, answer.3), (1, 0, 640, 480));
    let deadline = Instant::now() + WAIT;
    while g.config_changes() == 0 {
        assert!(Instant::now() < deadline, "no config-change message");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(g.config_changes(), 1);
    assert_eq!(g.read_config()[0] & 1, 1, "VIRTIO_GPU_EVENT_DISPLAY");
    let info = g.display_info();
    assert_eq!((le32(&info.0, 24 + 8), le32(&info.0, 24 + 12)), (800, 600));
    let edid = g.edid(0);
    // The EDID's first detailed timing (offset 54 of the EDID, after the reply's 32 bytes):
    // horizontal active 800, vertical active 600.
    let e = &edid.0[32..];
    let hactive = u32::from(e[54 + 2]) | (u32::from(e[54 + 4] >> 4) << 8);
    let vactive = u32::from(e[54 + 5]) | (u32::from(e[54 + 7] >> 4) << 8);
    assert_eq!((hactive, vactive), (800, 600), "EDID preferred mode");
    g.clear_events(1);
    assert_eq!(g.read_config()[0] & 1, 0, "events_clear");

    // The guest sets the mode: the client learns the size, then gets the picture.
    let px = pattern(800, 600, 2);
    let _ = resource_with(&mut g, 2, B8G8R8X8, 800, 600, &px);
    assert_eq!(g.set_scanout(0, 2, (0, 0, 800, 600)), OK_NODATA);
    assert_eq!(g.transfer(2, (0, 0, 800, 600), 800 * 4), OK_NODATA);
    assert_eq!(g.flush(2, (0, 0, 800, 600)), OK_NODATA);
    c.request(true);
    let changed = layout_number(&mut c, 7);
    assert_eq!(changed, (0, 0, 800, 600, vec![(0, 0, 0, 800, 600, 0)]));
    assert_eq!((c.width, c.height), (800, 600));
    c.request(false);
    c.read_update().unwrap();
    assert!(c.bgr() == bgr(&px), "the 800x600 picture");
    let log = b.log_text();
    assert!(
        log.contains("VNC client asked for 800x600: passed to the guest"),
        "{log}"
    );
    drop(c);
    drop(g);
    drop(b);

    // QEMU's vhost-user-gpu-pci: prohibited.
    let b = Backend::start(&opts_2d(&["--display", "640x480", "--vnc", &vnc]));
    let g = Gpu::connect(
        &b,
        &ConnectOptions {
            backend_channel: true,
            ..Default::default()
        },
    );
    let mut c = VncClient::connect(&sock, None).unwrap();
    c.set_encodings(&[RAW, EXTENDED_DESKTOP_SIZE]);
    layout_number(&mut c, 1);
    c.set_desktop_size(800, 600, &[(0, 0, 0, 800, 600, 0)]);
    let answer = layout_number(&mut c, 2);
    assert_eq!((answer.0, answer.1), (1, 1), "{answer:?}");
    assert_eq!(g.config_changes(), 0);
    assert!(b.log_text().contains("keeps the guest's display events"));
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}
