//! Generic vhost-user frontends, which know nothing of GPUs and send no display channel:
//! cloud-hypervisor's `--generic-vhost-user` (played exactly, see
//! `frontend::Profile::CloudHypervisorGeneric`) and a frontend that passes device features
//! through (as QEMU >= 11.1's vhost-user-test-device-pci does; the real one runs in
//! tests/vm/generic.rs). vhost-gpu is then the only party with the picture: it reaches `--vnc`
//! and `--capture-dir`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use guest_tests::frontend::{ConnectOptions, Profile};
use guest_tests::vnc::{VncClient, RAW, ZRLE};
use guest_tests::wire::*;
use guest_tests::{capture, Backend, BackendOptions, Gpu};

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vhost-gpu-generic-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start(d: &std::path::Path, args: &[&str], profile: Profile) -> (Backend, Gpu, PathBuf) {
    let sock = d.join("vnc.sock");
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend([
        "--vnc".into(),
        format!("unix:{}", sock.display()),
        "--capture-dir".into(),
        d.join("cap").display().to_string(),
        "--capture-interval-ms".into(),
        "50".into(),
    ]);
    let b = Backend::start(&BackendOptions { args: a });
    let g = Gpu::connect(
        &b,
        &ConnectOptions {
            profile,
            display: None,
            ..Default::default()
        },
    );
    (b, g, sock)
}

/// Asks for the whole picture until `want` (B, G, R, X rows) shows.
fn vnc_shows(c: &mut VncClient, want: &[u8]) {
    let deadline = Instant::now() + WAIT;
    let bgr = |px: &[u8]| -> Vec<u8> {
        px.chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect()
    };
    loop {
        c.request(false);
        c.read_update().unwrap();
        if c.bgr() == bgr(want) {
            return;
        }
        assert!(Instant::now() < deadline, "VNC never showed the picture");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cloud_hypervisor_generic_frontend_gets_a_2d_device_whose_picture_reaches_vnc_and_capture() {
    let d = dir("ch");
    // What a cloud-hypervisor user runs: the default renderer (virgl where it starts).
    let (b, mut g, sock) = start(
        &d,
        &["--display", "320x200"],
        Profile::CloudHypervisorGeneric,
    );
    let conn = &g.conn;
    // cloud-hypervisor offers the guest no device feature bits (its DEFAULT_VIRTIO_FEATURES):
    // the guest's driver runs 2D, without EDID, whatever vhost-gpu offers.
    assert_eq!(
        conn.guest_features & 0xff_ffff,
        0,
        "{:#x}",
        conn.guest_features
    );
    assert_ne!(conn.guest_features & F_VERSION_1, 0);
    // The config space through GET_CONFIG: 1 scanout.
    assert_eq!(conn.config[2], 1);
    let (w, h) = (320u32, 200u32);
    let px = pattern(w, h, 11);
    let _ = resource_with(&mut g, 1, B8G8R8X8, w, h, &px);
    assert_eq!(g.set_scanout(0, 1, (0, 0, w, h)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
    let mut c = VncClient::connect(&sock, None).unwrap();
    c.set_encodings(&[ZRLE, RAW]);
    vnc_shows(&mut c, &px);
    let shots = capture::screenshot(&b, &d.join("cap"), 1, &[0], WAIT).unwrap();
    let rgb: Vec<u8> = px.chunks(4).flat_map(|p| [p[2], p[1], p[0]]).collect();
    assert_eq!(shots[0].rgb, rgb);
    drop(b);
    std::fs::remove_dir_all(&d).unwrap();
}

/// QEMU 11.1's generic device, which passes device features through, is tested for real
/// (tests/vm/generic.rs: a guest's virgl picture over VNC, a guest blob on a scanout); the
/// harness's pass-through profile stays for what a real guest does not send: a blob with its
/// own layout on a second scanout, and a flush of part of it.
#[test]
fn a_blob_scanout_on_the_second_scanout_reaches_vnc_through_a_pass_through_frontend() {
    let d = dir("blob");
    let (b, mut g, sock) = start(
        &d,
        &[
            "--virgl",
            "--display",
            "64x48",
            "--display",
            "128x64",
            "--vnc-scanout",
            "1",
        ],
        Profile::GenericPassThrough,
    );
    assert_ne!(g.conn.guest_features & F_RESOURCE_BLOB, 0);
    // A 128x64 image with a 600-byte stride, 64 bytes into a blob of scattered pages.
    let (w, h, stride, offset) = (128u32, 64u32, 600u32, 64u32);
    let size = offset + stride * h;
    let (img, mut bytes) = strided_image(w, h, stride, offset, 21);
    let entries = g.scattered_backing(&bytes);
    assert_eq!(
        g.create_blob(0, 30, BLOB_MEM_GUEST, 2, 0, u64::from(size), &entries),
        OK_NODATA
    );
    // VNC shows scanout 1 (--vnc-scanout 1): its configured size before the guest sets it.
    let mut c = VncClient::connect(&sock, None).unwrap();
    assert_eq!((c.width, c.height), (128, 64));
    c.set_encodings(&[ZRLE, RAW]);
    assert_eq!(
        g.set_scanout_blob(1, 30, (0, 0, w, h), w, h, B8G8R8X8, stride, offset),
        OK_NODATA
    );
    assert_eq!(g.flush(30, (0, 0, w, h)), OK_NODATA);
    vnc_shows(&mut c, &img);
    // The guest writes its memory; a flush alone shows it, and only that rectangle comes.
    for yy in 20..23u32 {
        for xx in 10..15u32 {
            let i = (offset + yy * stride + xx * 4) as usize;
            bytes[i..i + 4].copy_from_slice(&[1, 2, 3, 0]);
        }
    }
    g.write_backing(&entries, &bytes);
    assert_eq!(g.flush(30, (10, 20, 5, 3)), OK_NODATA);
    c.request(true);
    let rects = c.read_update().unwrap();
    assert_eq!(rects.len(), 1);
    assert_eq!(
        (rects[0].0, rects[0].1, rects[0].2, rects[0].3),
        (10, 20, 5, 3)
    );
    assert_eq!(&c.fb[(20 * 128 + 10) * 4..][..3], &[1, 2, 3]);
    drop(b);
    std::fs::remove_dir_all(&d).unwrap();
}
