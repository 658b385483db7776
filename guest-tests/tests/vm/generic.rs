//! QEMU >= 11.1's generic vhost-user device (`vhost-user-test-device-pci`) as a frontend
//! (issue 21). It knows nothing of GPUs: it sends no display channel and passes the backend's
//! device features through to the guest, so the guest gets blobs and context init, which
//! QEMU's `vhost-user-gpu-pci` does not give it. The picture reaches the user only through
//! vhost-gpu's `--vnc` and `--capture-dir`, and that is what these tests check.
//!
//! QEMU 10 (Debian 12's backports) has no such device: these tests run on the Debian 13 host
//! stack (`scripts/test --host trixie`), and fail on QEMU 10 with its "not a valid device"
//! message.

use std::time::{Duration, Instant};

use guest_tests::capture::{self, gl_picture, quadrants, sized, DUMB, GL};

use crate::infra::*;
use crate::vnc::{free_port, vnc_matches_capture, vncsnapshot};

/// The `[drm] features:` lines the guest's driver printed, joined.
fn drm_features(vm: &Vm) -> String {
    vm.serial_text()
        .lines()
        .filter_map(|l| l.split("[drm] ").nth(1))
        .filter(|l| l.starts_with("features:"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
#[ignore = "needs QEMU >= 11.1 and the test guest: run by scripts/test --host trixie"]
fn generic_device_2d_console_through_vnc() {
    on(Release::Bookworm, console_through_vnc);
}

#[test]
#[ignore = "needs QEMU >= 11.1 and the Debian 13 test guest: run by scripts/test --host trixie"]
fn trixie_guest_generic_device_2d_console_through_vnc() {
    on(Release::Trixie, console_through_vnc);
}

/// fbcon's text in the capture and over VNC: the 2D renderer, no display channel.
fn console_through_vnc() {
    let t0 = Instant::now();
    let addr = format!("127.0.0.1:{}", free_port());
    let (mut backend, cap) = backend(
        "g-console",
        &["--renderer", "2d", "--display", "1024x768", "--vnc", &addr],
    );
    let mut vm = Vm::boot_generic(&backend, "g-console", GENERIC_GPU, "console", "");
    vm.wait_for(&mut backend, "GUEST: done", BOOT);
    let serial = vm.serial_text();
    let features = drm_features(&vm);
    assert!(
        features.contains("-virgl +edid"),
        "features: {features}\n{serial}"
    );
    assert!(
        serial.contains("fb0: virtio_gpudrmfb frame buffer device"),
        "{serial}"
    );
    assert!(
        serial.contains("GUEST: connector card0-Virtual-1 connected 1024x768"),
        "{serial}"
    );
    // fbcon text: some pixels lit, most not, in the capture and through VNC alike.
    let s = shot_until(&backend, &cap, &mut 0, &[0], |s| {
        sized(&s[0], (1024, 768))?;
        let total = 1024 * 768;
        let lit = lit_pixels(&s[0].rgb);
        if lit > total / 200 && lit < total / 2 {
            Ok(())
        } else {
            Err(format!("{lit} of {total} pixels lit"))
        }
    });
    let v = vncsnapshot(&addr, backend.dir(), 1);
    vnc_matches_capture(&v, &s[0]);
    vm.quit();
    assert!(backend.alive());
    // Nothing but vhost-gpu had the picture: the frontend never sent a display channel.
    assert!(
        !backend.log_text().contains("display channel up"),
        "{}",
        backend.log_text()
    );
    eprintln!(
        "{:?} guest, generic device, 2D: {features}; wall time {:?}",
        RELEASE.with(|r| r.get()),
        t0.elapsed()
    );
}

#[test]
#[ignore = "needs QEMU >= 11.1 and the test guest: run by scripts/test --host trixie"]
fn generic_device_virgl_gles_kmscube_blob_and_context_init() {
    on(Release::Bookworm, virgl_through_vnc);
}

#[test]
#[ignore = "needs QEMU >= 11.1 and the Debian 13 test guest: run by scripts/test --host trixie"]
fn trixie_guest_generic_device_virgl_gles_kmscube_blob_and_context_init() {
    on(Release::Trixie, virgl_through_vnc);
}

/// The whole 3D workload (eglinfo, the agent's dumb buffer and GLES picture, kmscube) with
/// the guest seeing `+resource_blob` and `+context_init`; the agent's picture checked pixel by
/// pixel in the capture and through VNC.
fn virgl_through_vnc() {
    let t0 = Instant::now();
    let addr = format!("127.0.0.1:{}", free_port());
    let (mut backend, cap) = backend(
        "g-virgl",
        &["--virgl", "--display", "1024x768", "--vnc", &addr],
    );
    let mut vm = Vm::boot_generic(
        &backend,
        "g-virgl",
        GENERIC_GPU,
        "3d",
        "vgt.hold=6 vgt.frames=120",
    );
    vm.wait_for(&mut backend, "AGENT: dumb shown 1", BOOT);
    let features = drm_features(&vm);
    for f in ["+virgl", "+edid", "+resource_blob", "+context_init"] {
        assert!(
            features.contains(f),
            "{f} missing: {features}\n{}",
            vm.serial_text()
        );
    }
    assert!(vm.serial_text().contains("[drm] number of cap sets: 2"));
    let mut n = 0;
    shot_until(&backend, &cap, &mut n, &[0], |s| {
        quadrants(&s[0], DUMB, "dumb buffer")
    });
    vm.wait_for(&mut backend, "AGENT: gl shown", BOOT);
    let renderer = vm.line_after("AGENT: gl renderer").unwrap_or_default();
    assert!(renderer.starts_with("virgl"), "{renderer}");
    let s = shot_until(&backend, &cap, &mut n, &[0], |s| {
        gl_picture(&s[0], (1024, 768))
    });
    let v = vncsnapshot(&addr, backend.dir(), 1);
    gl_picture(&v, (1024, 768)).unwrap_or_else(|e| panic!("through VNC: {e}"));
    vnc_matches_capture(&v, &s[0]);
    vm.wait_for(&mut backend, "GUEST: done", BOOT);
    let lines = vm.guest_lines();
    assert!(lines.contains("AGENT: result pass"), "{lines}");
    assert!(lines.contains("GUEST: kmscube frames 120"), "{lines}");
    let kms = vm
        .line_after("GUEST: kmscube renderer:")
        .unwrap_or_default();
    assert!(kms.contains("virgl"), "kmscube renderer {kms}\n{lines}");
    vm.quit();
    assert!(backend.alive());
    eprintln!(
        "{:?} guest, generic device, virgl: {features}; {renderer}; kmscube {}; wall time {:?}",
        RELEASE.with(|r| r.get()),
        vm_kms_line(&lines),
        t0.elapsed()
    );
}

fn vm_kms_line(lines: &str) -> &str {
    lines
        .lines()
        .find_map(|l| l.strip_prefix("GUEST: kmscube frames "))
        .unwrap_or("-")
}

#[test]
#[ignore = "needs QEMU >= 11.1 and the test guest: run by scripts/test --host trixie"]
fn generic_device_qemu_killed_mid_frame_then_a_new_qemu_renders() {
    on(Release::Bookworm, killed_mid_frame);
}

#[test]
#[ignore = "needs QEMU >= 11.1 and the Debian 13 test guest: run by scripts/test --host trixie"]
fn trixie_guest_generic_device_qemu_killed_mid_frame_then_a_new_qemu_renders() {
    on(Release::Trixie, killed_mid_frame);
}

/// kmscube runs, QEMU is killed with SIGKILL among its frames, and a second QEMU against the
/// same vhost-gpu renders the agent's picture.
fn killed_mid_frame() {
    let t0 = Instant::now();
    let (mut backend, cap) = backend("g-kill", &["--virgl", "--display", "800x600"]);
    let mut vm = Vm::boot_generic(
        &backend,
        "g-kill",
        GENERIC_GPU,
        "kmscube",
        "vgt.frames=1000000",
    );
    vm.wait_for(&mut backend, "GUEST: kmscube started", BOOT);
    let latest = cap.join("scanout-0.png");
    capture::wait_files(std::slice::from_ref(&latest), Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _ = vm.child.kill();
    let _ = vm.child.wait();
    assert!(backend.alive(), "vhost-gpu died with its frontend");
    let mut vm2 = Vm::boot_generic(&backend, "g-kill2", GENERIC_GPU, "agent", "vgt.hold=6");
    vm2.wait_for(&mut backend, "AGENT: gl shown", BOOT);
    shot_until(&backend, &cap, &mut 0, &[0], |s| {
        sized(&s[0], (800, 600))?;
        quadrants(&s[0], GL, "second guest's GL picture")
    });
    vm2.agent_passed(&mut backend);
    vm2.quit();
    assert!(backend.alive());
    assert!(backend.log_text().matches("frontend connected").count() >= 2);
    eprintln!(
        "{:?} guest, generic device: killed mid-frame and replaced; wall time {:?}",
        RELEASE.with(|r| r.get()),
        t0.elapsed()
    );
}
