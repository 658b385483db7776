//! The VNC server against real clients from Debian: TigerVNC's `vncpasswd` writes the password
//! file, `vncsnapshot` (TightVNC/RealVNC 3.3 code) logs in with it and takes the picture, in
//! Tight with and without JPEG; TigerVNC's viewer shows the picture (Tight, JPEG) in its
//! window on Xvfb; noVNC in Debian's Chromium (Playwright) shows it over `--vnc-websocket` and
//! sends a typed key on to QMP; TigerVNC's viewer shows it over TLS (VeNCrypt X509Vnc).
//! Ignored by plain `cargo test` (they need the Debian tools); `scripts/test` runs them.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use guest_tests::frontend::ConnectOptions;
use guest_tests::wire::*;
use guest_tests::{Backend, Gpu};

const BARS: [[u8; 3]; 8] = [
    [255, 255, 255],
    [255, 255, 0],
    [0, 255, 255],
    [0, 255, 0],
    [255, 0, 255],
    [255, 0, 0],
    [0, 0, 255],
    [30, 60, 90],
];

/// A 320x200 picture of 8 vertical bars (B, G, R, X).
fn bars() -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..200 {
        for x in 0..320usize {
            let [r, g, b] = BARS[x / 40];
            v.extend_from_slice(&[b, g, r, 0]);
        }
    }
    v
}

/// A 320x200 picture: the bars in the top half, a photo-like gradient with noise below.
fn bars_and_photo() -> Vec<u8> {
    let mut v = bars();
    for y in 100..200u32 {
        for x in 0..320u32 {
            let n = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) % 7;
            let (r, g, b) = ((x * 255 / 320 + n) as u8, (y * 2 + n) as u8, 128u8);
            let at = ((y * 320 + x) * 4) as usize;
            v[at..at + 4].copy_from_slice(&[b, g, r, 0]);
        }
    }
    v
}

/// A 320x200 picture: the bars in the top half, the VNC bench's smooth picture below (red and
/// green slow ramps, blue `x ^ y`): Tight's gradient filter beats JPEG on it, exactly.
fn bars_and_smooth() -> Vec<u8> {
    let mut v = bars();
    for y in 100..200u32 {
        for x in 0..320u32 {
            let at = ((y * 320 + x) * 4) as usize;
            v[at..at + 4].copy_from_slice(&[(x ^ y) as u8 ^ 1, (x / 3) as u8, (y / 5) as u8, 0]);
        }
    }
    v
}

/// The backend's count of Tight's subrectangles sent each way, logged when a client's session
/// ends ("... N gradient and M JPEG subrectangles"): the count for `kind`.
fn tight_sent(b: &Backend, kind: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = b.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("VNC client: Tight sent")) {
            let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
            return words
                .windows(2)
                .find(|w| w[1] == kind)
                .and_then(|w| w[0].parse().ok())
                .unwrap_or_else(|| panic!("no {kind} count in {line:?}"));
        }
        assert!(
            Instant::now() < deadline,
            "no Tight summary in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A 2D backend with VNC (`args` besides the display), its guest showing [`bars_and_photo`]
/// on a 320x200 scanout with no display channel; also the picture as RGB.
fn serve_bars_and_photo(args: &[&str]) -> (Backend, Gpu, Vec<u8>) {
    serve_picture(args, bars_and_photo())
}

/// The same with any 320x200 picture (B, G, R, X).
fn serve_picture(args: &[&str], px: Vec<u8>) -> (Backend, Gpu, Vec<u8>) {
    let mut a = vec!["--display", "320x200"];
    a.extend_from_slice(args);
    let b = Backend::start(&opts_2d(&a));
    let mut g = Gpu::connect(
        &b,
        &ConnectOptions {
            display: None,
            ..Default::default()
        },
    );
    let _ = resource_with(&mut g, 1, B8G8R8X8, 320, 200, &px);
    assert_eq!(g.set_scanout(0, 1, (0, 0, 320, 200)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, 320, 200), 320 * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, 320, 200)), OK_NODATA);
    let rgb = px
        .chunks_exact(4)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    (b, g, rgb)
}

/// Decodes vncsnapshot's JPEG with djpeg into RGB (320x200).
fn djpeg(jpg: &std::path::Path) -> Vec<u8> {
    let ppm = Command::new("djpeg")
        .args(["-pnm"])
        .arg(jpg)
        .output()
        .expect("djpeg");
    assert!(ppm.status.success());
    // Binary PPM: "P6\n320 200\n255\n" then RGB.
    let header = b"P6\n320 200\n255\n";
    assert!(ppm.stdout.starts_with(header), "{:?}", &ppm.stdout[..16]);
    ppm.stdout[header.len()..].to_vec()
}

fn vncsnapshot(port: u16, passwd: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    Command::new("timeout")
        .args(["60", "vncsnapshot", "-quiet", "-quality", "100", "-passwd"])
        .arg(passwd)
        .arg(format!("127.0.0.1::{port}"))
        .arg(out)
        .output()
        .expect("vncsnapshot (scripts/setup installs it)")
}

/// vncsnapshot asks for Tight first (then JPEG at its -vncQuality, or none with -nojpeg):
/// the bars come as fills, exact, and the photo-like half as JPEG (close) or full colour
/// (exact); its own output is a JPEG at quality 100, so "exact" is within 3.
#[test]
#[ignore = "needs vncsnapshot and djpeg (scripts/setup): run by scripts/test"]
fn vncsnapshot_decodes_tight_with_and_without_jpeg() {
    let dir = std::env::temp_dir().join(format!("vhost-gpu-vnc-tight-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (b, _g, want) = serve_bars_and_photo(&["--vnc", &format!("127.0.0.1:{port}")]);
    for (name, opts, photo_limit) in [
        // Limits in hundredths of a step (JPEG quality level 5 is libjpeg's 62, 4:2:0).
        (
            "jpeg",
            &["-encodings", "tight", "-vncQuality", "5"][..],
            800u32,
        ),
        ("nojpeg", &["-encodings", "tight", "-nojpeg"][..], 200),
    ] {
        let jpg = dir.join(format!("{name}.jpg"));
        let out = Command::new("timeout")
            .args(["60", "vncsnapshot", "-quiet", "-quality", "100"])
            .args(opts)
            .arg(format!("127.0.0.1::{port}"))
            .arg(&jpg)
            .output()
            .expect("vncsnapshot (scripts/setup installs it)");
        assert!(
            out.status.success() && jpg.exists(),
            "vncsnapshot {name}: {}\n{}\nbackend:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            b.log_text()
        );
        let got = djpeg(&jpg);
        // The bars, away from their edges (the output JPEG blurs those).
        for (i, bar) in BARS.iter().enumerate() {
            for (x, y) in [(i * 40 + 20, 20usize), (i * 40 + 10, 80)] {
                let at = (y * 320 + x) * 3;
                let px = &got[at..at + 3];
                assert!(
                    px.iter().zip(bar).all(|(a, b)| a.abs_diff(*b) <= 3),
                    "{name}: bar {i} at ({x},{y}): {px:?}, want {bar:?}"
                );
            }
        }
        // The photo-like half: the mean difference per colour.
        let (from, to) = (110 * 320 * 3, 190 * 320 * 3);
        let total: u32 = got[from..to]
            .iter()
            .zip(&want[from..to])
            .map(|(a, b)| u32::from(a.abs_diff(*b)))
            .sum();
        let mean = total * 100 / (to - from) as u32;
        assert!(
            mean <= photo_limit,
            "{name}: the photo-like half is off by {}.{:02} on average",
            mean / 100,
            mean % 100
        );
        eprintln!(
            "vncsnapshot {name}: bars exact, photo-like half off by {}.{:02} on average",
            mean / 100,
            mean % 100
        );
    }
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "needs vncsnapshot, vncpasswd and djpeg (scripts/setup): run by scripts/test"]
fn vncsnapshot_logs_in_with_a_vncpasswd_file_and_sees_the_picture() {
    let dir = std::env::temp_dir().join(format!("vhost-gpu-vnc-real-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let plain = dir.join("password");
    std::fs::write(&plain, "hunter2\n").unwrap();
    // The viewer's password files, written by the real tool.
    let obfuscated = |pw: &str, name: &str| {
        let path = dir.join(name);
        let mut c = Command::new("vncpasswd")
            .arg("-f")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("vncpasswd (tigervnc-tools)");
        c.stdin.take().unwrap().write_all(pw.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        std::fs::write(&path, out.stdout).unwrap();
        path
    };
    let good = obfuscated("hunter2\n", "good.passwd");
    let bad = obfuscated("hunter3\n", "bad.passwd");
    let b = Backend::start(&opts_2d(&[
        "--display",
        "320x200",
        "--vnc",
        &format!("127.0.0.1:{port}"),
        "--vnc-password-file",
        plain.to_str().unwrap(),
    ]));
    let mut g = Gpu::connect(
        &b,
        &ConnectOptions {
            display: None,
            ..Default::default()
        },
    );
    let px = bars();
    let _ = resource_with(&mut g, 1, B8G8R8X8, 320, 200, &px);
    assert_eq!(g.set_scanout(0, 1, (0, 0, 320, 200)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, 320, 200), 320 * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, 320, 200)), OK_NODATA);

    let wrong = vncsnapshot(port, &bad, &dir.join("bad.jpg"));
    assert!(
        !wrong.status.success() && !dir.join("bad.jpg").exists(),
        "a wrong password got a picture"
    );
    let jpg = dir.join("good.jpg");
    let ok = vncsnapshot(port, &good, &jpg);
    assert!(
        ok.status.success() && jpg.exists(),
        "vncsnapshot: {}\n{}\nbackend:\n{}",
        ok.status,
        String::from_utf8_lossy(&ok.stderr),
        b.log_text()
    );
    let rgb = djpeg(&jpg);
    for (i, want) in BARS.iter().enumerate() {
        let (x, y) = (i * 40 + 20, 100usize);
        let at = (y * 320 + x) * 3;
        let got = &rgb[at..at + 3];
        assert!(
            got.iter().zip(want).all(|(a, b)| a.abs_diff(*b) <= 3),
            "bar {i}: {got:?}, want {want:?}"
        );
    }
    assert!(b.log_text().contains("VNC authentication"));
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Decodes `xwd -root` output (ZPixmap, 32 bits a pixel, 8-bit masks) into (width, height,
/// RGB).
fn xwd_rgb(x: &[u8]) -> Result<(usize, usize, Vec<u8>), String> {
    let word = |i: usize| -> Result<u32, String> {
        x.get(i * 4..i * 4 + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "xwd header short".to_string())
    };
    let (header, format, w, h) = (word(0)? as usize, word(2)?, word(4)?, word(5)?);
    let (order, bpp, stride) = (word(7)?, word(11)?, word(12)? as usize);
    let (rmask, gmask, bmask) = (word(14)?, word(15)?, word(16)?);
    let ncolors = word(19)? as usize;
    if format != 2 || bpp != 32 || (rmask, gmask, bmask) != (0xff0000, 0xff00, 0xff) {
        return Err(format!(
            "xwd format {format}, {bpp} bits, masks {rmask:#x} {gmask:#x} {bmask:#x}"
        ));
    }
    let data = x.get(header + ncolors * 12..).ok_or("xwd colormap short")?;
    let (w, h) = (w as usize, h as usize);
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for px in 0..w {
            let p = data
                .get(y * stride + px * 4..y * stride + px * 4 + 4)
                .ok_or("xwd data short")?;
            let v = if order == 0 {
                u32::from_le_bytes([p[0], p[1], p[2], p[3]])
            } else {
                u32::from_be_bytes([p[0], p[1], p[2], p[3]])
            };
            rgb.extend_from_slice(&[(v >> 16) as u8, (v >> 8) as u8, v as u8]);
        }
    }
    Ok((w, h, rgb))
}

/// An Xvfb of `w` x `h` on a display it picks itself (`-displayfd`: it takes the display's
/// lock file, so tests that start Xvfbs in parallel never share one); killed on drop.
///
/// `-noreset`: by default an X server resets when its last running client leaves, and the
/// reset closes every connection still in its setup. `xwd` leaving while the viewer was
/// connecting made the viewer's `XOpenDisplay` fail ("Can't open display: :0", 5 runs in 15).
struct Xvfb {
    child: std::process::Child,
    display: String,
}

impl Xvfb {
    fn start(w: u32, h: u32) -> Xvfb {
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-noreset"])
            .args(["-screen", "0", &format!("{w}x{h}x24"), "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb (scripts/setup installs xvfb)");
        // Xvfb writes the display's number, then a newline, once it accepts connections.
        let mut out = child.stdout.take().expect("Xvfb's stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while let Ok(1) = out.read(&mut b) {
                if b[0] == b'\n' {
                    break;
                }
                line.push(b[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&line).trim().to_string());
            // Keep the pipe open while Xvfb runs.
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        let n = rx
            .recv_timeout(Duration::from_secs(20))
            .ok()
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("Xvfb did not start (no display number from -displayfd)")
            });
        Xvfb {
            child,
            display: format!(":{n}"),
        }
    }

    fn screenshot(&self) -> (usize, usize, Vec<u8>) {
        let out = Command::new("xwd")
            .args(["-root", "-silent", "-display", &self.display])
            .output()
            .expect("xwd (scripts/setup installs x11-apps)");
        assert!(out.status.success(), "xwd: {out:?}");
        xwd_rgb(&out.stdout).unwrap()
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM, so that Xvfb removes its socket and lock file.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Runs TigerVNC's viewer full screen on an Xvfb of the guest's size (320x200) with `args`
/// against 127.0.0.1:`port`, until its window shows the bars; returns the screen (RGB).
fn tigervnc_window(port: u16, args: &[&str], b: &Backend) -> Vec<u8> {
    let x = Xvfb::start(320, 200);
    let home =
        std::env::temp_dir().join(format!("vhost-gpu-tigervnc-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let mut viewer = Command::new("xtigervncviewer")
        .args(["-FullScreen", "-Log=*:stderr:30"])
        .args(args)
        .arg(format!("127.0.0.1::{port}"))
        .env("DISPLAY", &x.display)
        .env("HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xtigervncviewer (scripts/setup installs tigervnc-viewer)");
    // The window has the picture once the bars are there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let shot = loop {
        let (w, h, rgb) = x.screenshot();
        let bars_there = (w, h) == (320, 200)
            && BARS.iter().enumerate().all(|(i, bar)| {
                let at = (20 * 320 + i * 40 + 20) * 3;
                rgb[at..at + 3]
                    .iter()
                    .zip(bar)
                    .all(|(a, b)| a.abs_diff(*b) <= 3)
            });
        if bars_there {
            break rgb;
        }
        if Instant::now() > deadline || matches!(viewer.try_wait(), Ok(Some(_))) {
            let _ = viewer.kill();
            let out = viewer.wait_with_output().unwrap();
            panic!(
                "TigerVNC's window never showed the bars ({w}x{h}):\n{}\nbackend:\n{}",
                String::from_utf8_lossy(&out.stderr),
                b.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = viewer.kill();
    let _ = viewer.wait();
    let _ = std::fs::remove_dir_all(&home);
    shot
}

/// Checks a 320x200 screen of [`bars_and_photo`] sent in Tight with JPEG: every pixel of the
/// first 64 rows, all bars (Tight's first band of tiles: fills, exact); below, the band that
/// mixes bars and the photo-like half and the rest went as JPEG, within 8 on average. Returns
/// that average.
fn bars_exact_photo_close(shot: &[u8], want: &[u8]) -> f64 {
    for y in 0..64usize {
        for px in 0..320usize {
            let at = (y * 320 + px) * 3;
            assert!(
                shot[at..at + 3]
                    .iter()
                    .zip(&want[at..at + 3])
                    .all(|(a, b)| a == b),
                "bars: pixel ({px},{y}) {:?}, want {:?}",
                &shot[at..at + 3],
                &want[at..at + 3]
            );
        }
    }
    let (from, to) = (64 * 320 * 3, 200 * 320 * 3);
    let total: u64 = shot[from..to]
        .iter()
        .zip(&want[from..to])
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    let mean = total as f64 / (to - from) as f64;
    assert!(mean < 8.0, "photo-like half off by {mean:.2} on average");
    mean
}

const TIGHT_JPEG6: [&str; 4] = [
    "-AutoSelect=0",
    "-PreferredEncoding=Tight",
    "-QualityLevel=6",
    "-CompressLevel=2",
];

/// TigerVNC's viewer, full screen on an Xvfb of the guest's size, asks for Tight with JPEG at
/// quality level 6: its window (the X screen) shows the bars' band exactly and the rest within
/// JPEG's error, and vhost-gpu says what it sends.
#[test]
#[ignore = "needs Xvfb, xwd and TigerVNC's viewer (scripts/setup): run by scripts/test"]
fn tigervnc_viewer_shows_the_picture_in_tight_with_jpeg() {
    let port = free_port();
    let (b, _g, want) = serve_bars_and_photo(&["--vnc", &format!("127.0.0.1:{port}")]);
    let mut args = TIGHT_JPEG6.to_vec();
    args.push("-SecurityTypes=None");
    let shot = tigervnc_window(port, &args, &b);
    let mean = bars_exact_photo_close(&shot, &want);
    let log = b.log_text();
    assert!(
        log.contains("VNC client: sending Tight with JPEG at quality level 6, compression level 2"),
        "{log}"
    );
    eprintln!("TigerVNC's viewer: the bars exact, the photo-like half off by {mean:.2} on average (Tight, JPEG level 6)");
}

/// TigerVNC's viewer without JPEG, on a picture whose lower half is smooth: that half comes
/// with Tight's gradient filter (stream 3, zlib pieces that each refer only to themselves),
/// and the viewer's window equals the picture, every pixel.
#[test]
#[ignore = "needs Xvfb, xwd and TigerVNC's viewer (scripts/setup): run by scripts/test"]
fn tigervnc_viewer_decodes_the_gradient_filter_exactly() {
    let port = free_port();
    let (b, _g, want) = serve_picture(&["--vnc", &format!("127.0.0.1:{port}")], bars_and_smooth());
    let shot = tigervnc_window(
        port,
        &[
            "-AutoSelect=0",
            "-PreferredEncoding=Tight",
            "-NoJPEG",
            "-CompressLevel=2",
            "-SecurityTypes=None",
        ],
        &b,
    );
    let wrong = shot
        .chunks_exact(3)
        .zip(want.chunks_exact(3))
        .position(|(a, b)| a != b);
    assert_eq!(
        wrong, None,
        "first wrong pixel (index) in TigerVNC's window"
    );
    let gradient = tight_sent(&b, "gradient");
    assert!(gradient > 0, "{}", b.log_text());
    assert!(
        b.log_text()
            .contains("VNC client: sending Tight without JPEG, compression level 2"),
        "{}",
        b.log_text()
    );
    eprintln!("TigerVNC's viewer: every pixel right, {gradient} gradient-filtered subrectangles");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// TigerVNC's viewer over TLS: VeNCrypt's X509Vnc, the certificate checked against the test
/// CA (`-X509CA`), the password from a file `vncpasswd` wrote. Its window shows the picture as
/// without TLS. The same viewer told to use only plain security types finds nothing in common
/// (the server offers only VeNCrypt) and gets no picture.
#[test]
#[ignore = "needs Xvfb, xwd, TigerVNC's viewer and vncpasswd (scripts/setup): run by scripts/test"]
fn tigervnc_viewer_over_tls_x509vnc_shows_the_picture_and_plain_viewers_are_refused() {
    let dir = std::env::temp_dir().join(format!("vhost-gpu-vnc-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pki = guest_tests::pki::Pki::new();
    let (cert, key) = pki.write(&dir);
    let plain = dir.join("password");
    std::fs::write(&plain, "hunter2\n").unwrap();
    let mut c = Command::new("vncpasswd")
        .arg("-f")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("vncpasswd (tigervnc-tools)");
    c.stdin.take().unwrap().write_all(b"hunter2\n").unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    let passwd = dir.join("viewer.passwd");
    std::fs::write(&passwd, out.stdout).unwrap();

    let port = free_port();
    let (b, _g, want) = serve_bars_and_photo(&[
        "--vnc",
        &format!("127.0.0.1:{port}"),
        "--vnc-tls-cert",
        cert.to_str().unwrap(),
        "--vnc-tls-key",
        key.to_str().unwrap(),
        "--vnc-password-file",
        plain.to_str().unwrap(),
    ]);
    let ca = format!("-X509CA={}", dir.join("ca.pem").display());
    let pw = format!("-PasswordFile={}", passwd.display());
    let mut args = TIGHT_JPEG6.to_vec();
    args.extend(["-SecurityTypes=X509Vnc", &ca, &pw]);
    let shot = tigervnc_window(port, &args, &b);
    let mean = bars_exact_photo_close(&shot, &want);
    let log = b.log_text();
    assert!(log.contains("VeNCrypt X509Vnc"), "{log}");

    // A viewer that will not do TLS finds no security type in common: it says so (in a dialog
    // that waits for a click, hence the timeout) and never gets a picture.
    let x = Xvfb::start(320, 200);
    let out = Command::new("timeout")
        .args(["10", "xtigervncviewer", "-SecurityTypes=VncAuth,None", &pw])
        .arg(format!("127.0.0.1::{port}"))
        .env("DISPLAY", &x.display)
        .env("HOME", &dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No matching security types"), "{err}");
    let (_, _, screen) = x.screenshot();
    assert!(
        screen.chunks_exact(3).all(|p| p != BARS[1]),
        "the viewer without TLS showed the picture"
    );
    eprintln!("TigerVNC's viewer over TLS (X509Vnc): the bars exact, the photo-like half off by {mean:.2}; a viewer without TLS: \"No matching security types\"");
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Plays QEMU's QMP for `--vnc-input-qmp`: greets, answers every command, and passes on each
/// command line it got.
fn fake_qmp(path: &Path) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut w) = conn else { return };
            let r = BufReader::new(w.try_clone().unwrap());
            let _ = w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n");
            for line in r.lines() {
                let Ok(line) = line else { break };
                let _ = w.write_all(b"{\"return\": {}}\r\n");
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// noVNC 1.7 (npm) in Debian's Chromium, driven by Playwright (`guest-tests/novnc/check.mjs`),
/// connects to `--vnc-websocket` with no websockify: its canvas holds the picture (the fill
/// band exact, the JPEG rest close), and a key typed in the page reaches QMP as
/// `input-send-event` (the VM tests carry such events on to the guest's evdev).
#[test]
#[ignore = "needs Chromium, Node.js and scripts/novnc's npm packages: run by scripts/test"]
fn novnc_in_chromium_shows_the_picture_over_websocket_and_types_into_qmp() {
    novnc_in_chromium(false);
}

/// The same over `wss://`: vhost-gpu with a certificate takes TLS on its WebSocket port, and
/// noVNC in Chromium connects with `wss://` (Chromium told to ignore that the test's CA is
/// not in its store; the certificate's checks are the TLS tests').
#[test]
#[ignore = "needs Chromium, Node.js and scripts/novnc's npm packages: run by scripts/test"]
fn novnc_in_chromium_over_wss() {
    novnc_in_chromium(true);
}

fn novnc_in_chromium(wss: bool) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let novnc = here.join("work/novnc");
    assert!(
        novnc.join("node_modules/@novnc/novnc/core/rfb.js").exists(),
        "run scripts/novnc first"
    );
    let dir = std::env::temp_dir().join(format!(
        "vhost-gpu-novnc-{}-{}",
        if wss { "wss" } else { "ws" },
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Three distinct free ports (each listener held until all are chosen).
    let held: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let port = |i: usize| held[i].local_addr().unwrap().port();
    let (vnc_port, ws_port, http_port) = (port(0), port(1), port(2));
    drop(held);
    let qmp = dir.join("qmp.sock");
    let qmp_lines = fake_qmp(&qmp);
    let vnc = format!("127.0.0.1:{vnc_port}");
    let ws = format!("127.0.0.1:{ws_port}");
    let (cert, key) = guest_tests::pki::Pki::new().write(&dir);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let mut args = vec![
        "--vnc",
        &vnc,
        "--vnc-websocket",
        &ws,
        "--vnc-input-qmp",
        qmp.to_str().unwrap(),
    ];
    if wss {
        args.extend(["--vnc-tls-cert", &cert, "--vnc-tls-key", &key]);
    }
    // Over ws, the photo-like picture (JPEG); over wss, the smooth one with compression level
    // 9 (the gradient filter beside JPEG, and smaller: exact), so that both of noVNC's
    // decoders are checked.
    let (b, _g, want) = if wss {
        serve_picture(&args, bars_and_smooth())
    } else {
        serve_bars_and_photo(&args)
    };

    let mut http = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(http_port.to_string())
        .arg("--directory")
        .arg(&novnc)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the page's HTTP server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = dir.join("novnc");
    let run = Command::new("timeout")
        .args(["120", "node"])
        .arg(novnc.join("check.mjs"))
        .arg(http_port.to_string())
        .arg(ws_port.to_string())
        .arg(&out)
        .arg(if wss { "wss" } else { "ws" })
        // Compression level 9 over wss, where the gradient filter is tried beside JPEG.
        .arg(if wss { "9" } else { "2" })
        .env("HOME", &dir)
        .output()
        .expect("node (scripts/setup installs nodejs)");
    let _ = http.kill();
    let _ = http.wait();
    assert!(
        run.status.success(),
        "noVNC in Chromium: {}\n{}{}\nbackend:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        b.log_text()
    );
    let size = std::fs::read_to_string(out.with_extension("json")).unwrap();
    assert_eq!(size, r#"{"width":320,"height":200}"#);
    let rgba = std::fs::read(out.with_extension("rgba")).unwrap();
    let got: Vec<u8> = rgba
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    // Tight's first band of tiles, all bars, came as fills: exact on the canvas.
    for y in 0..64usize {
        let row = y * 320 * 3;
        assert_eq!(
            got[row..row + 320 * 3],
            want[row..row + 320 * 3],
            "canvas row {y}"
        );
    }
    let (from, to) = (64 * 320 * 3, 200 * 320 * 3);
    let total: u64 = got[from..to]
        .iter()
        .zip(&want[from..to])
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    let mean = total as f64 / (to - from) as f64;
    if wss {
        assert_eq!(
            got.chunks_exact(3)
                .zip(want.chunks_exact(3))
                .position(|(a, b)| a != b),
            None,
            "first wrong canvas pixel (index) of the smooth picture"
        );
    } else {
        assert!(
            mean < 8.0,
            "the canvas's JPEG part is off by {mean:.2} on average"
        );
    }
    // The key: "a" down and up through QMP.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut keys = Vec::new();
    while keys.len() < 2 && Instant::now() < deadline {
        if let Ok(l) = qmp_lines.recv_timeout(Duration::from_millis(200)) {
            if l.contains(r#""key":{"type":"qcode","data":"a"}"#) {
                keys.push(l);
            }
        }
    }
    assert!(
        keys.iter().any(|l| l.contains(r#""down":true"#))
            && keys.iter().any(|l| l.contains(r#""down":false"#)),
        "the key typed in noVNC did not reach QMP: {keys:?}\nbackend:\n{}",
        b.log_text()
    );
    let log = b.log_text();
    assert!(
        log.contains("VNC client: sending Tight with JPEG at quality level 6"),
        "{log}"
    );
    if wss {
        assert!(log.contains("WebSocket over TLS (wss)"), "{log}");
    }
    let (jpeg, gradient) = (tight_sent(&b, "JPEG"), tight_sent(&b, "gradient"));
    if wss {
        assert!(gradient > 0, "{}", b.log_text());
    } else {
        assert!(jpeg > 0, "{}", b.log_text());
    }
    eprintln!(
        "noVNC in Chromium over --vnc-websocket ({}): canvas 320x200, the fill band exact, the rest off by {mean:.2} on average ({jpeg} JPEG, {gradient} gradient-filtered subrectangles); the typed key reached QMP; screenshot {}",
        if wss { "wss" } else { "ws" },
        out.with_extension("png").display()
    );
}
