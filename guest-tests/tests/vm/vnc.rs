//! Headless guests through vhost-gpu's VNC server (issue 13).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use guest_tests::capture::{gl_picture, smpte, Image};

use crate::infra::*;

/// A free TCP port on loopback (asked of the kernel, then let go).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Takes a picture through Debian's `vncsnapshot` (a TightVNC/RealVNC 3.3 client) at `addr`
/// (HOST:PORT) and decodes it (JPEG at quality 100, through `djpeg`).
pub(crate) fn vncsnapshot(addr: &str, dir: &Path, n: u32) -> Image {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let jpg = dir.join(format!("vnc-{n}.jpg"));
    let ppm = dir.join(format!("vnc-{n}.ppm"));
    let out = Command::new("timeout")
        .args(["60", "vncsnapshot", "-quiet", "-quality", "100"])
        .arg(format!("{host}::{port}"))
        .arg(&jpg)
        .output()
        .expect("vncsnapshot (scripts/setup installs it)");
    assert!(
        out.status.success() && jpg.exists(),
        "vncsnapshot: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let ppm_file = std::fs::File::create(&ppm).unwrap();
    let st = Command::new("djpeg")
        .args(["-pnm"])
        .arg(&jpg)
        .stdout(ppm_file)
        .status()
        .expect("djpeg (libjpeg-turbo-progs)");
    assert!(st.success());
    let (width, height, rgb) = read_ppm(&ppm);
    Image { width, height, rgb }
}

/// Mean absolute difference per channel of two same-sized images.
fn mean_diff(a: &Image, b: &Image) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let sum: u64 = a
        .rgb
        .iter()
        .zip(&b.rgb)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.rgb.len() as f64
}

/// A VNC picture and the capture of the same moment agree (JPEG leaves small differences at
/// sharp edges; a wrong picture differs by tens).
pub(crate) fn vnc_matches_capture(vnc: &Image, cap: &Image) {
    let d = mean_diff(vnc, cap);
    eprintln!("VNC picture vs capture: mean difference {d:.2} per channel");
    assert!(d < 3.0, "VNC picture differs from the capture: {d:.2}");
}

/// Issue 13: a headless host. QEMU with `-display none` (its own VNC refuses a
/// vhost-user-gpu console), vhost-gpu's `--vnc` on loopback, Debian's vncsnapshot taking
/// the picture, and keys and a click sent through VNC reaching the guest's virtio input
/// devices through QMP.
#[test]
#[ignore = "needs QEMU 10, vncsnapshot and the test guest: run by scripts/test"]
fn guest_2d_shown_and_driven_through_vnc_with_display_none() {
    on(Release::Bookworm, || {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let tmp = std::env::temp_dir().join(format!("vhost-gpu-vm-vnc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let qmp_in = tmp.join("input-qmp.sock");
        let qmp_arg = qmp_in.display().to_string();
        let (mut backend, cap) = backend(
            "vnc",
            &[
                "--renderer",
                "2d",
                "--display",
                "1024x768",
                "--vnc",
                &addr,
                "--vnc-input-qmp",
                &qmp_arg,
            ],
        );
        let qemu = [
            "-qmp".to_string(),
            format!("unix:{qmp_arg},server=on,wait=off"),
            "-device".to_string(),
            "virtio-keyboard-pci".to_string(),
            "-device".to_string(),
            "virtio-tablet-pci".to_string(),
        ];
        let mut vm = Vm::boot_with(&backend, "vnc", 1, "vnc", "vgt.hold=14", &qemu, &[]);
        vm.wait_for(&mut backend, "AGENT: input ready", BOOT);
        vm.wait_for(&mut backend, "GUEST: modetest shown", BOOT);
        let mut n = 0;
        let s = shot_until(&backend, &cap, &mut n, &[0], |s| smpte(&s[0], (1024, 768)));
        let v = vncsnapshot(&addr, &tmp, 1);
        smpte(&v, (1024, 768)).unwrap_or_else(|e| panic!("through VNC: {e}"));
        vnc_matches_capture(&v, &s[0]);

        // Input: 'a' down and up, then a left click in the middle.
        let mut c = guest_tests::vnc::VncClient::connect_tcp(&addr, None).unwrap();
        c.key(true, 'a' as u32);
        c.key(false, 'a' as u32);
        c.pointer(0, 512, 384);
        c.pointer(1, 512, 384);
        c.pointer(0, 512, 384);
        // KEY_A is 30, BTN_LEFT 272 (0x110); ABS_X is axis 0 (512 of 1024: about 16400).
        for want in [
            "type 1 code 30 value 1",
            "type 1 code 30 value 0",
            "type 1 code 272 value 1",
        ] {
            vm.wait_for(&mut backend, want, Duration::from_secs(30));
        }
        let abs_x = vm
            .serial_text()
            .lines()
            .find_map(|l| {
                l.split("type 3 code 0 value ")
                    .nth(1)
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no ABS_X event\n{}", vm.guest_lines()));
        let x: i64 = abs_x.parse().unwrap();
        assert!((16000..16800).contains(&x), "ABS_X {x}");
        eprintln!(
            "guest input devices: {}",
            vm.guest_lines()
                .lines()
                .filter(|l| l.contains("input device"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        drop(c);
        vm.agent_passed(&mut backend);
        vm.quit();
        assert!(backend.alive());
        assert!(backend.log_text().contains("VNC input: connected to QMP"));
        let _ = std::fs::remove_dir_all(&tmp);
    });
}

/// Issue 13 with virgl: the agent's GLES picture, rendered by virglrenderer and read back,
/// through vncsnapshot.
#[test]
#[ignore = "needs QEMU 10, vncsnapshot and the test guest: run by scripts/test"]
fn guest_virgl_picture_through_vnc_with_display_none() {
    on(Release::Bookworm, || {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let (mut backend, cap) = backend(
            "vnc3d",
            &["--virgl", "--display", "1024x768", "--vnc", &addr],
        );
        let mut vm = Vm::boot(&backend, "vnc3d", 1, "agent", "vgt.hold=10");
        vm.wait_for(&mut backend, "AGENT: gl shown", BOOT);
        let mut n = 0;
        let s = shot_until(&backend, &cap, &mut n, &[0], |s| {
            gl_picture(&s[0], (1024, 768))
        });
        let v = vncsnapshot(&addr, backend.dir(), 1);
        gl_picture(&v, (1024, 768)).unwrap_or_else(|e| panic!("through VNC: {e}"));
        vnc_matches_capture(&v, &s[0]);
        vm.agent_passed(&mut backend);
        vm.quit();
        assert!(backend.alive());
    });
}
