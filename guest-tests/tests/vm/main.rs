//! Real guests: QEMU 10 boots a Linux guest (Debian kernel, busybox, Mesa, modetest, kmscube
//! and our guest agent; see guest/build-guest) under TCG against the real `vhost-gpu`, runs a
//! workload chosen on the kernel command line (guest/init), and the test checks the serial log
//! and what reached the screen: QMP screendumps of what QEMU got over the display channel, and
//! PNG screenshots from `vhost-gpu --capture-dir`.
//!
//! Run by `scripts/test`. They are `#[ignore]`d for a plain `cargo test`, which may run where
//! QEMU or the guest image is missing; scripts/test runs them with `--ignored` so they count.

mod atomics;
mod desktop;
mod generic;
mod infra;
mod vnc;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use guest_tests::capture::{self, gl_picture, quadrants, sized, smpte, DUMB, GL};
use guest_tests::{Backend, BackendOptions};

use infra::*;

#[test]
#[ignore = "needs QEMU 10 and the test guest: run by scripts/test"]
fn guest_2d_console_reaches_the_frontend_and_a_killed_qemu_is_replaced() {
    on(Release::Bookworm, console_then_a_killed_qemu_replaced);
}

#[test]
#[ignore = "needs QEMU 10 and the Debian 13 test guest: run by scripts/test"]
fn trixie_guest_2d_console_reaches_the_frontend_and_a_killed_qemu_is_replaced() {
    on(Release::Trixie, console_then_a_killed_qemu_replaced);
}

fn console_then_a_killed_qemu_replaced() {
    let (mut backend, _cap) = backend("console", &["--renderer", "2d", "--display", "1024x768"]);
    let dir = backend.dir().to_path_buf();
    let t0 = Instant::now();
    let mut vm = Vm::boot(&backend, "a", 1, "console", "");
    vm.wait_for(&mut backend, "GUEST: done", BOOT);
    let boot = t0.elapsed();
    let serial = vm.serial_text();
    assert!(
        serial.contains("[drm] features: -virgl +edid"),
        "driver features:\n{serial}"
    );
    assert!(serial.contains("[drm] number of scanouts: 1"), "{serial}");
    assert!(
        serial.contains("fb0: virtio_gpudrmfb frame buffer device"),
        "{serial}"
    );
    assert!(
        serial.contains("GUEST: connector card0-Virtual-1 connected 1024x768"),
        "EDID mode:\n{serial}"
    );
    // The EDID's other modes, as the guest's DRM parsed them: what a desktop user can pick.
    let modes = vm
        .line_after("GUEST: modes card0-Virtual-1")
        .unwrap_or_default();
    let modes: Vec<&str> = modes.split_whitespace().collect();
    for m in [
        "1280x800",
        "1920x1080",
        "2560x1440",
        "3840x2160",
        "1280x720",
        "800x600",
    ] {
        assert!(modes.contains(&m), "mode {m} not offered: {modes:?}");
    }
    eprintln!("guest modes: {}", modes.join(" "));
    assert!(serial.contains("renderD128"), "{serial}");

    // What QEMU shows is what arrived over the display channel as SCANOUT + UPDATE messages.
    let shot = dir.join("screen.ppm");
    let (w, h, rgb) = vm.screendump(&shot);
    assert_eq!((w, h), (1024, 768));
    let lit = lit_pixels(&rgb);
    let total = (w * h) as usize;
    // fbcon text: some pixels lit, most not.
    assert!(
        lit > total / 200 && lit < total / 2,
        "{lit} of {total} pixels lit"
    );
    eprintln!("boot to console text: {boot:?}; {lit} of {total} pixels lit");

    // The frontend dies mid-run (kill -9); a new QEMU against the same vhost-gpu works.
    let _ = vm.child.kill();
    let _ = vm.child.wait();
    let mut vm2 = Vm::boot(&backend, "b", 1, "console", "");
    vm2.wait_for(&mut backend, "GUEST: done", BOOT);
    assert!(vm2
        .serial_text()
        .contains("fb0: virtio_gpudrmfb frame buffer device"));
    let (_, _, rgb) = vm2.screendump(&shot);
    assert!(lit_pixels(&rgb) > 0, "second guest's console reached QEMU");
    vm2.quit();
    std::thread::sleep(Duration::from_millis(300));
    assert!(backend.alive());
    assert!(backend.log_text().matches("frontend connected").count() >= 2);
    eprintln!("wall time: {:?}", t0.elapsed());
}

#[test]
#[ignore = "needs QEMU 10 and the test guest: run by scripts/test"]
fn guest_2d_modetest_and_dumb_buffers_reach_two_scanouts() {
    on(Release::Bookworm, modetest_and_dumb_buffers_on_two_scanouts);
}

#[test]
#[ignore = "needs QEMU 10 and the Debian 13 test guest: run by scripts/test"]
fn trixie_guest_2d_modetest_and_dumb_buffers_reach_two_scanouts() {
    on(Release::Trixie, modetest_and_dumb_buffers_on_two_scanouts);
}

fn modetest_and_dumb_buffers_on_two_scanouts() {
    let t0 = Instant::now();
    let (mut backend, cap) = backend(
        "2d",
        &[
            "--renderer",
            "2d",
            "--display",
            "1024x768",
            "--display",
            "800x600",
        ],
    );
    let mut vm = Vm::boot(&backend, "2d", 2, "2d", "vgt.hold=6");
    vm.wait_for(&mut backend, "GUEST: modetest shown", BOOT);
    let serial = vm.serial_text();
    assert!(serial.contains("[drm] features: -virgl +edid"), "{serial}");
    assert!(serial.contains("[drm] number of scanouts: 2"), "{serial}");
    for c in [
        "card0-Virtual-1 connected 1024x768",
        "card0-Virtual-2 connected 800x600",
    ] {
        assert!(
            serial.contains(&format!("GUEST: connector {c}")),
            "{c}:\n{serial}"
        );
    }
    let mut n = 0;
    shot_until(&backend, &cap, &mut n, &[0], |s| smpte(&s[0], (1024, 768)));
    // The agent's dumb buffers, one per connector, each its own size.
    vm.wait_for(&mut backend, "AGENT: dumb shown 2", BOOT);
    shot_until(&backend, &cap, &mut n, &[0, 1], |s| {
        let sizes = [(s[0].width, s[0].height), (s[1].width, s[1].height)];
        if sizes != [(1024, 768), (800, 600)] {
            return Err(format!("scanout sizes {sizes:?}"));
        }
        quadrants(&s[0], DUMB, "scanout 0 dumb buffer")?;
        quadrants(&s[1], DUMB, "scanout 1 dumb buffer")
    });
    vm.agent_passed(&mut backend);
    vm.quit();
    assert!(backend.alive());
    eprintln!("wall time: {:?}", t0.elapsed());
}

#[test]
#[ignore = "needs QEMU 10 and the test guest: run by scripts/test"]
fn guest_virgl_renders_gles_through_mesa_and_runs_kmscube() {
    on(Release::Bookworm, gles_and_kmscube_through_virgl);
}

#[test]
#[ignore = "needs QEMU 10 and the Debian 13 test guest: run by scripts/test"]
fn trixie_guest_virgl_renders_gles_through_mesa_and_runs_kmscube() {
    on(Release::Trixie, gles_and_kmscube_through_virgl);
}

fn gles_and_kmscube_through_virgl() {
    let t0 = Instant::now();
    let (mut backend, cap) = backend("virgl", &["--virgl", "--display", "1024x768"]);
    let mut vm = Vm::boot(&backend, "virgl", 1, "3d", "vgt.hold=6 vgt.frames=120");
    vm.wait_for(&mut backend, "AGENT: dumb shown 1", BOOT);
    let serial = vm.serial_text();
    assert!(serial.contains("[drm] features: +virgl +edid"), "{serial}");
    let caps = expected_capsets(&backend);
    assert!(
        serial.contains(&format!("[drm] number of cap sets: {caps}")),
        "{caps} capsets expected\n{serial}"
    );
    if caps == 3 {
        // Venus is offered (the Debian 13 stack has lavapipe), but QEMU 11.1's stock
        // vhost-user-gpu-pci acks SHMEM and never asks for the region: no host-visible memory.
        assert!(serial.contains("-host_visible"), "{serial}");
        assert!(
            !backend
                .log_text()
                .contains("asked for shared memory regions"),
            "{}",
            backend.log_text()
        );
    }
    let mut n = 0;
    shot_until(&backend, &cap, &mut n, &[0], |s| {
        quadrants(&s[0], DUMB, "dumb buffer on virgl")
    });

    vm.wait_for(&mut backend, "AGENT: gl shown", BOOT);
    let renderer = vm.line_after("AGENT: gl renderer").unwrap_or_default();
    assert!(
        renderer.starts_with("virgl"),
        "GL renderer: {renderer}\n{}",
        vm.guest_lines()
    );
    assert!(
        vm.serial_text().contains("AGENT: gl readback ok"),
        "{}",
        vm.guest_lines()
    );
    // The agent's picture, rendered by virglrenderer on llvmpipe, page-flipped, read back and
    // captured: the quadrants, the right way up, and the shader's square in the middle.
    shot_until(&backend, &cap, &mut n, &[0], |s| {
        gl_picture(&s[0], (1024, 768))
    });

    vm.wait_for(&mut backend, "GUEST: done", BOOT);
    let lines = vm.guest_lines();
    assert!(lines.contains("GUEST: kmscube frames 120"), "{lines}");
    let kms = vm
        .line_after("GUEST: kmscube renderer:")
        .unwrap_or_default();
    assert!(kms.contains("virgl"), "kmscube renderer {kms}\n{lines}");
    // eglinfo (mesa-utils 8.5) names the EGL driver on GBM, not the GL renderer.
    let egl = vm
        .line_after("GUEST: eglinfo EGL vendor string:")
        .unwrap_or_default();
    assert_eq!(egl, "Mesa Project", "{lines}");
    // What this guest is and what its driver negotiated, for the record.
    let text = vm.serial_text();
    let kernel = text
        .lines()
        .find_map(|l| l.split("Linux version ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    let features = vm.drm_features();
    eprintln!(
        "{:?} guest: kernel {kernel}; {}; {}; renderer {renderer}; {}; wall time {:?}",
        RELEASE.with(|r| r.get()),
        features,
        vm.line_after("AGENT: gl version").unwrap_or_default(),
        vm.line_after("AGENT: gl frames").unwrap_or_default(),
        t0.elapsed()
    );
    vm.quit();
    assert!(backend.alive());
}

#[test]
#[ignore = "needs QEMU 10 and the test guest: run by scripts/test"]
fn guest_virgl_qemu_killed_mid_frame_then_a_new_qemu_renders() {
    on(Release::Bookworm, virgl_killed_mid_frame);
}

fn virgl_killed_mid_frame() {
    killed_mid_frame_then_replaced("kill", |b, tag, run, extra| Vm::boot(b, tag, 1, run, extra));
}

/// kmscube runs, QEMU (started by `boot`: backend, tag, workload, kernel arguments) is killed
/// with SIGKILL among its frames, and a second QEMU against the same vhost-gpu renders the
/// agent's GL picture through virgl.
pub(crate) fn killed_mid_frame_then_replaced(
    tag: &str,
    boot: fn(&Backend, &str, &str, &str) -> Vm,
) {
    let (mut backend, cap) = backend(tag, &["--virgl", "--display", "800x600"]);
    let mut vm = boot(&backend, tag, "kmscube", "vgt.frames=1000000");
    vm.wait_for(&mut backend, "GUEST: kmscube started", BOOT);
    // Let frames flow, then kill QEMU in the middle of them.
    let latest = cap.join("scanout-0.png");
    capture::wait_files(std::slice::from_ref(&latest), Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _ = vm.child.kill();
    let _ = vm.child.wait();
    assert!(backend.alive(), "vhost-gpu died with its frontend");
    // A new QEMU against the same vhost-gpu: its guest renders through virgl again.
    let mut vm2 = boot(&backend, &format!("{tag}2"), "agent", "vgt.hold=6");
    vm2.wait_for(&mut backend, "AGENT: gl shown", BOOT);
    shot_until(&backend, &cap, &mut 0, &[0], |s| {
        sized(&s[0], (800, 600))?;
        quadrants(&s[0], GL, "second guest's GL picture")
    });
    vm2.agent_passed(&mut backend);
    vm2.quit();
    assert!(backend.alive());
    assert!(backend.log_text().matches("frontend connected").count() >= 2);
}

#[test]
#[ignore = "needs QEMU 10 and the test guest: run by scripts/test"]
fn guest_sees_the_display_change_when_the_frontend_resizes() {
    on(Release::Bookworm, display_change_from_the_frontend);
}

fn display_change_from_the_frontend() {
    let t0 = Instant::now();
    // No --display: the modes are the frontend's, as for a QEMU with a desktop window.
    let (mut backend, cap) = backend("hotplug", &["--renderer", "2d"]);
    let bus = SessionBus::start();
    let mut vm = Vm::boot_with(
        &backend,
        "hotplug",
        1,
        "hotplug",
        "vgt.hold=4",
        &["-display".to_string(), "dbus".to_string()],
        &[("DBUS_SESSION_BUS_ADDRESS", &bus.address)],
    );
    vm.wait_for(&mut backend, "GUEST: waiting for a display change", BOOT);
    // QEMU's vhost-user-gpu starts its outputs at xres x yres, 1280x800 by default; we asked
    // it over the display channel (GET_DISPLAY_INFO, GET_EDID).
    let serial = vm.serial_text();
    assert!(
        serial.contains("GUEST: connector card0-Virtual-1 connected 1280x800"),
        "{}",
        vm.guest_lines()
    );
    // The UI resizes its window: QEMU raises VIRTIO_GPU_EVENT_DISPLAY, the guest re-reads
    // the display info and EDID through vhost-gpu, which asks QEMU again.
    bus.set_ui_size(0, 800, 600).expect("SetUIInfo");
    vm.wait_for(
        &mut backend,
        "GUEST: display changed to",
        Duration::from_secs(60),
    );
    let now = vm
        .line_after("GUEST: display changed to")
        .unwrap_or_default();
    assert_eq!(now, "800x600 (connected)", "{}", vm.guest_lines());
    // modetest sets the new preferred mode: its pattern reaches the capture at 800x600.
    vm.wait_for(&mut backend, "GUEST: modetest shown", BOOT);
    shot_until(&backend, &cap, &mut 0, &[0], |s| smpte(&s[0], (800, 600)));
    // QEMU wrote the whole config space to clear the event; the connection stayed up.
    assert!(
        !backend.log_text().contains("frontend connection ended"),
        "{}",
        backend.log_text()
    );
    vm.wait_for(&mut backend, "GUEST: done", BOOT);
    vm.quit();
    assert!(backend.alive());
    eprintln!(
        "guest's mode 1280x800 -> {now}; wall time {:?}",
        t0.elapsed()
    );
}

/// The files under `dir`, recursively.
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p)
            } else {
                1
            }
        })
        .sum()
}

/// Boots the 3D workload (eglinfo, the agent, kmscube) against `backend`; returns the agent's
/// first-frame time and kmscube's line.
fn run_3d(backend: &mut Backend, tag: &str) -> (String, String) {
    let mut vm = Vm::boot(backend, tag, 1, "3d", "vgt.hold=1 vgt.frames=120");
    vm.agent_passed(backend);
    let lines = vm.guest_lines();
    assert!(lines.contains("GUEST: kmscube frames 120"), "{lines}");
    let first = vm.line_after("AGENT: gl first frame").unwrap_or_default();
    let kms = vm.line_after("GUEST: kmscube frames").unwrap_or_default();
    vm.quit();
    assert!(backend.alive(), "{}", backend.log_text());
    (first, kms)
}

/// The sandbox audit and the shader cache, on a fresh host's state: the whole virgl workload
/// runs under `--sandbox log` (Landlock on, seccomp reporting every call outside the policy
/// and letting it run) from an empty HOME, and any call reported fails the test. Then a second
/// vhost-gpu, sandbox on, runs it again on the cache the first one filled (a warm start).
#[test]
#[ignore = "needs QEMU 10 and the test guest: run by scripts/test"]
fn guest_virgl_workload_reports_no_call_outside_the_policy_and_runs_warm_on_its_cache() {
    on(Release::Bookworm, sandbox_audit_then_warm);
}

fn sandbox_audit_then_warm() {
    let t0 = Instant::now();
    let home = std::env::temp_dir().join(format!("vhost-gpu-vm-home-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let cache = home.join(".cache/vhost-gpu");
    let args = |sandbox: &str| BackendOptions {
        args: ["--virgl", "--display", "1024x768", "--sandbox", sandbox]
            .map(String::from)
            .to_vec(),
    };

    let mut cold = Backend::start_with_home(&args("log"), Some(&home));
    let (cold_first, cold_kms) = run_3d(&mut cold, "audit");
    let log = cold.log_text();
    assert!(log.contains("reported once and allowed"), "{log}");
    let reported: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sandbox: thread"))
        .collect();
    assert!(
        reported.is_empty(),
        "calls outside the sandbox's policy:\n{}\nbackend:\n{log}",
        reported.join("\n")
    );
    let cached = count_files(&cache.join("mesa_shader_cache"));
    assert!(
        cached > 0,
        "Mesa wrote no shader cache under {}",
        cache.display()
    );
    drop(cold);

    let mut warm = Backend::start_with_home(&args("on"), Some(&home));
    let (warm_first, warm_kms) = run_3d(&mut warm, "warm");
    assert!(warm
        .log_text()
        .contains(&format!("shader cache: {}", cache.display())));
    eprintln!(
        "shader cache ({cached} files): first GL frame {cold_first} cold, {warm_first} warm; \
         kmscube {cold_kms} cold, {warm_kms} warm; wall time {:?}",
        t0.elapsed()
    );
    let _ = std::fs::remove_dir_all(&home);
}

/// piglit's results for each test of guest/piglit-tests, run on the host through
/// virglrenderer's vtest server (`virgl_test_server`, Mesa's virpipe driver): the same
/// virglrenderer and llvmpipe, without a guest, virtio or vhost-gpu in between.
fn piglit_on_vtest(dir: &Path) -> Vec<(String, String)> {
    let pig = Path::new("/usr/lib/x86_64-linux-gnu/piglit");
    // Mesa's vtest client and the server both use this path (the server's --socket-path fails
    // in 0.10.4).
    let sock = Path::new("/tmp/.virgl_test");
    let _ = std::fs::remove_file(sock);
    let mut server = guest_tests::host::command("virgl_test_server")
        .arg("--use-egl-surfaceless")
        .env("HOME", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("virgl_test_server (scripts/setup installs virgl-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "vtest server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let list =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/piglit-tests"))
            .unwrap();
    let mut out = Vec::new();
    for line in list
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut words = line.split_whitespace();
        let bin = words.next().unwrap_or_default();
        let arg = words.next();
        // env -C: the tests' directory on the host stack (inside its root, if it has one).
        let o = guest_tests::host::command("env")
            .arg("-C")
            .arg(pig.join("tests"))
            .args(["timeout", "120"])
            .arg(pig.join("bin").join(bin))
            .args(arg)
            .args(["-auto", "-fbo"])
            .env("GALLIUM_DRIVER", "virpipe")
            .env("PIGLIT_PLATFORM", "surfaceless_egl")
            .env("HOME", dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        let result = text
            .lines()
            .rev()
            .filter_map(|l| l.strip_prefix("PIGLIT: {\"result\": \""))
            .find_map(|r| r.split('"').next())
            .unwrap_or("crash")
            .to_string();
        out.push((arg.unwrap_or(bin).to_string(), result));
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(sock);
    out
}

/// A real GL test suite in the guest: piglit's tests of guest/piglit-tests, run in the guest
/// on GBM (Mesa's virgl driver, through vhost-gpu with the sandbox on and an empty HOME), give
/// test by test what the same tests give on the host through vtest.
#[test]
#[ignore = "needs QEMU 10, the test guest and piglit: run by scripts/test"]
fn guest_piglit_matches_vtest_test_by_test() {
    on(Release::Bookworm, piglit_matches_vtest);
}

#[test]
#[ignore = "needs QEMU 10, the Debian 13 test guest and piglit: run by scripts/test"]
fn trixie_guest_piglit_matches_vtest_test_by_test() {
    on(Release::Trixie, piglit_matches_vtest);
}

fn piglit_matches_vtest() {
    let t0 = Instant::now();
    let (mut backend, _cap) = backend("piglit", &["--virgl", "--display", "1024x768"]);
    let host = piglit_on_vtest(backend.dir());
    let mut vm = Vm::boot(&backend, "piglit", 1, "piglit", "vgt.hold=1");
    vm.wait_for(&mut backend, "GUEST: piglit ran", Duration::from_secs(600));
    let text = vm.serial_text();
    let guest: std::collections::HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("GUEST: piglit "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    vm.quit();
    assert!(backend.alive(), "{}", backend.log_text());
    let mut table = String::from("test | guest | vtest\n");
    let mut differ = Vec::new();
    for (name, want) in &host {
        let got = guest.get(name.as_str()).copied().unwrap_or("missing");
        table.push_str(&format!("{name} | {got} | {want}\n"));
        if got != want {
            differ.push(name.as_str());
        }
    }
    eprintln!("{table}wall time {:?}", t0.elapsed());
    assert!(host.len() >= 30, "{} tests", host.len());
    let passed = host.iter().filter(|(_, r)| r == "pass").count();
    assert!(passed >= 30, "only {passed} passed on vtest:\n{table}");
    assert!(
        differ.is_empty(),
        "guest and vtest differ on {differ:?}:\n{table}\nserial:\n{}\nbackend:\n{}",
        vm_lines(&text),
        backend.log_text()
    );
}
