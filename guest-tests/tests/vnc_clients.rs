//! The VNC server against real clients from Debian: TigerVNC's `vncpasswd` writes the password
//! file, `vncsnapshot` (TightVNC/RealVNC 3.3 code) logs in with it and takes the picture.
//! Ignored by plain `cargo test` (they need the Debian tools); `scripts/test` runs them.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

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

fn vncsnapshot(port: u16, passwd: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    Command::new("timeout")
        .args(["60", "vncsnapshot", "-quiet", "-quality", "100", "-passwd"])
        .arg(passwd)
        .arg(format!("127.0.0.1::{port}"))
        .arg(out)
        .output()
        .expect("vncsnapshot (scripts/setup installs it)")
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
    let ppm = Command::new("djpeg")
        .args(["-pnm"])
        .arg(&jpg)
        .output()
        .expect("djpeg");
    assert!(ppm.status.success());
    // Binary PPM: "P6\n320 200\n255\n" then RGB.
    let header = b"P6\n320 200\n255\n";
    assert!(ppm.stdout.starts_with(header), "{:?}", &ppm.stdout[..16]);
    let rgb = &ppm.stdout[header.len()..];
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
