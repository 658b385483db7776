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

use guest_tests::capture::{gl_picture, quadrants, sized, vulkan_picture, BLOB, DUMB};

use crate::infra::*;
use crate::vnc::{free_port, vnc_matches_capture, vncsnapshot};

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
    let addr = format!("127.0.0.1:{}", free_port());
    let (mut backend, cap) = backend(
        "g-console",
        &["--renderer", "2d", "--display", "1024x768", "--vnc", &addr],
    );
    let mut vm = Vm::boot_generic(&backend, "g-console", GENERIC_GPU, "console", "");
    vm.wait_for(&mut backend, "GUEST: done", BOOT);
    let serial = vm.serial_text();
    let features = vm.drm_features();
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
        "{:?} guest, generic device, 2D: {features}",
        RELEASE.with(|r| r.get())
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
    let features = vm.drm_features();
    for f in ["+virgl", "+edid", "+resource_blob", "+context_init"] {
        assert!(
            features.contains(f),
            "{f} missing: {features}\n{}",
            vm.serial_text()
        );
    }
    let caps = expected_capsets(&backend);
    assert!(vm
        .serial_text()
        .contains(&format!("[drm] number of cap sets: {caps}")));
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
    let frames = vm.line_after("GUEST: kmscube frames").unwrap_or_default();
    vm.quit();
    assert!(backend.alive());
    eprintln!(
        "{:?} guest, generic device, virgl: {features}; {renderer}; kmscube {frames}",
        RELEASE.with(|r| r.get())
    );
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

/// [`crate::killed_mid_frame_then_replaced`] through the generic device.
fn killed_mid_frame() {
    crate::killed_mid_frame_then_replaced("g-kill", |b, tag, run, extra| {
        Vm::boot_generic(b, tag, GENERIC_GPU, run, extra)
    });
}

#[test]
#[ignore = "needs QEMU >= 11.1 and the test guest: run by scripts/test --host trixie"]
fn generic_device_guest_blob_on_a_scanout() {
    on(Release::Bookworm, guest_blob_on_a_scanout);
}

#[test]
#[ignore = "needs QEMU >= 11.1 and the Debian 13 test guest: run by scripts/test --host trixie"]
fn trixie_guest_generic_device_guest_blob_on_a_scanout() {
    on(Release::Trixie, guest_blob_on_a_scanout);
}

/// The agent makes a guest blob (BLOB_MEM_GUEST) with the driver's own ioctl, fills it and
/// sets it on the CRTC: the kernel shows it with SET_SCANOUT_BLOB, and vhost-gpu reads the
/// picture from guest memory into the capture and VNC. Only a frontend that passes
/// RESOURCE_BLOB through reaches this (QEMU's vhost-user-gpu-pci does not).
fn guest_blob_on_a_scanout() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (mut backend, cap) = backend(
        "g-blob",
        &["--virgl", "--display", "1024x768", "--vnc", &addr],
    );
    let mut vm = Vm::boot_generic(&backend, "g-blob", GENERIC_GPU, "blob", "vgt.hold=8");
    vm.wait_for(&mut backend, "AGENT: blob shown", BOOT);
    let s = shot_until(&backend, &cap, &mut 0, &[0], |s| {
        sized(&s[0], (1024, 768))?;
        quadrants(&s[0], BLOB, "guest blob")
    });
    let v = vncsnapshot(&addr, backend.dir(), 1);
    quadrants(&v, BLOB, "guest blob through VNC").unwrap();
    vnc_matches_capture(&v, &s[0]);
    vm.agent_passed(&mut backend);
    // The pixels came from guest memory: a guest blob has no TRANSFER_TO_HOST to bring them.
    let made = vm.line_after("AGENT: blob resource").unwrap_or_default();
    vm.quit();
    assert!(backend.alive());
    eprintln!(
        "{:?} guest, generic device: guest blob {made} on scanout 0",
        RELEASE.with(|r| r.get())
    );
}

#[test]
#[ignore = "needs QEMU >= 11.1, Xvfb, TigerVNC's viewer and the Debian 13 test guest: run by scripts/test --host trixie"]
fn trixie_guest_generic_device_tigervnc_window_resizes_the_guest() {
    on(Release::Trixie, tigervnc_resizes_the_guest);
}

/// Client-driven resize (issue 23) with real parts only: QEMU 11.1's generic device, a Debian
/// 13 guest whose agent plays the compositor (it shows the quadrant pattern at the
/// connector's preferred mode, and again whenever that mode changes), and TigerVNC's viewer
/// full screen on an 800x600 X screen, which asks for its screen's size (RemoteResize, on by
/// default). The guest gets the display-change event, reads the new mode, and really sets it:
/// its scanout becomes 800x600 in the capture and through VNC.
fn tigervnc_resizes_the_guest() {
    use std::process::{Command, Stdio};
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (mut backend, cap) = backend(
        "g-resize",
        &["--renderer", "2d", "--display", "1024x768", "--vnc", &addr],
    );
    let mut vm = Vm::boot_generic(&backend, "g-resize", GENERIC_GPU, "follow", "vgt.hold=150");
    vm.wait_for(&mut backend, "AGENT: mode 1024x768 shown", BOOT);
    shot_until(&backend, &cap, &mut 0, &[0], |s| {
        sized(&s[0], (1024, 768))?;
        quadrants(&s[0], DUMB, "before")
    });

    let n = (150..250)
        .find(|&n| crate::desktop::x_display_free(n))
        .expect("a free X display number");
    let display = format!(":{n}");
    let mut xvfb = Command::new("Xvfb")
        .args([
            &display,
            "-screen",
            "0",
            "800x600x24",
            "-nolisten",
            "tcp",
            "-noreset",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb (scripts/setup installs xvfb)");
    let socket = std::path::PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "Xvfb {display} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let home = backend.dir().join("viewer-home");
    std::fs::create_dir_all(&home).unwrap();
    let viewer = Command::new("xtigervncviewer")
        .args(["-FullScreen", "-SecurityTypes=None", "-Log=*:stderr:30"])
        .arg(format!("127.0.0.1::{port}"))
        .env("DISPLAY", &display)
        .env("HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xtigervncviewer (scripts/setup installs tigervnc-viewer)");
    let resized = vm.wait_serial(
        "AGENT: mode 800x600 shown",
        Duration::from_secs(120),
        |_| Ok(()),
    );
    let _ = Command::new("kill").arg(viewer.id().to_string()).status();
    let viewer_log = viewer
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
        .unwrap_or_default();
    // SIGTERM, so that Xvfb removes its socket and lock file.
    let _ = Command::new("kill").arg(xvfb.id().to_string()).status();
    let _ = xvfb.wait();
    if let Err(e) = resized {
        panic!(
            "the guest never set 800x600: {e}\nTigerVNC's viewer:\n{viewer_log}\nbackend:\n{}",
            backend.log_text()
        );
    }
    let s = shot_until(&backend, &cap, &mut 0, &[0], |s| {
        sized(&s[0], (800, 600))?;
        quadrants(&s[0], DUMB, "after")
    });
    let v = vncsnapshot(&addr, backend.dir(), 1);
    sized(&v, (800, 600)).unwrap();
    quadrants(&v, DUMB, "through VNC after the resize").unwrap();
    vnc_matches_capture(&v, &s[0]);
    let log = backend.log_text();
    assert!(
        log.contains("VNC client asked for 800x600: passed to the guest"),
        "{log}"
    );
    let guest_modes = vm
        .guest_lines()
        .lines()
        .filter(|l| l.contains("AGENT: mode"))
        .collect::<Vec<_>>()
        .join("; ");
    vm.quit();
    assert!(backend.alive());
    eprintln!(
        "Debian 13 guest, generic device: TigerVNC's viewer on an 800x600 screen asked for \
         800x600; the guest: {guest_modes}"
    );
}

#[test]
#[ignore = "needs QEMU >= 11.1, lavapipe and the Debian 13 test guest: run by scripts/test --host trixie"]
fn trixie_guest_generic_device_venus_vulkan_over_host_visible_memory() {
    on(Release::Trixie, venus_vulkan);
}

/// Venus: the guest's Vulkan (Mesa's Venus driver) finds a device backed by lavapipe in
/// vhost-gpu's confined render server, through host-visible memory that QEMU's generic device
/// maps for the backend (GET_SHMEM_CONFIG, SHMEM_MAP): Venus's command rings live there. Then
/// the agent renders its picture with Vulkan, reads it back through mapped host-visible memory
/// and checks it pixel by pixel in the guest, and shows it: the host checks the same picture
/// in its capture and over VNC.
fn venus_vulkan() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (mut backend, cap) = backend(
        "g-venus",
        &["--virgl", "--display", "1024x768", "--vnc", &addr],
    );
    let mut vm = Vm::boot_generic(
        &backend,
        "g-venus",
        GENERIC_GPU,
        "vulkan",
        "vgt.frames=0 vgt.hold=8",
    );
    vm.wait_for(&mut backend, "AGENT: vulkan shown", BOOT);
    let s = shot_until(&backend, &cap, &mut 0, &[0], |s| {
        sized(&s[0], (1024, 768))?;
        vulkan_picture(&s[0], "the guest's Vulkan picture")
    });
    let v = vncsnapshot(&addr, backend.dir(), 1);
    vulkan_picture(&v, "the Vulkan picture through VNC").unwrap();
    vnc_matches_capture(&v, &s[0]);
    vm.agent_passed(&mut backend);
    let serial = vm.serial_text();
    let features = vm.drm_features();
    for f in ["+virgl", "+resource_blob", "+host_visible", "+context_init"] {
        assert!(features.contains(f), "{f} missing: {features}\n{serial}");
    }
    assert!(serial.contains("[drm] cap set 2: id 4,"), "{serial}");
    let dev = vm
        .line_after("GUEST: vulkaninfo deviceName")
        .unwrap_or_default();
    assert!(
        dev.contains("Virtio-GPU Venus (llvmpipe"),
        "vulkaninfo device: {dev}\n{}",
        vm.guest_lines()
    );
    let agent_dev = vm.line_after("AGENT: vulkan device").unwrap_or_default();
    assert!(agent_dev.contains("Venus"), "{}", vm.guest_lines());
    assert!(
        serial.contains("AGENT: vulkan readback pass 16384 pixels"),
        "{}",
        vm.guest_lines()
    );
    let log = backend.log_text();
    for want in [
        "venus: on, Vulkan on llvmpipe",
        "Landlock and its own seccomp policy",
        "frontend asked for shared memory regions",
        "host-visible memory in use: blob",
    ] {
        assert!(log.contains(want), "{want} missing from the log:\n{log}");
    }
    assert!(!log.contains("outside its policy"), "{log}");
    vm.quit();
    assert!(backend.alive(), "{}", backend.log_text());
    eprintln!("Debian 13 guest, generic device, Venus: {features}; vulkaninfo {dev}; agent picture checked in the guest, the capture and over VNC");
}

#[test]
#[ignore = "needs QEMU >= 11.1, lavapipe, sid's virglrenderer 1.3 in the root and the Debian 13 test guest: run by scripts/test --host trixie"]
fn trixie_guest_generic_device_venus_vkmark_with_virglrenderer_1_3() {
    on(Release::Trixie, venus_vkmark);
}

/// Where scripts/newer-virglrenderer unpacks sid's virglrenderer 1.3 in the Debian 13 root.
pub(crate) const VIRGL_SID: &str = "/opt/virglrenderer-sid";

/// vkmark's scenes, run `hold` seconds each (the guest's init and the host runs alike).
const VKMARK_SCENES: [&str; 3] = ["vertex", "cube", "shading"];

/// One vkmark run: frames per second per scene (in [`VKMARK_SCENES`] order) and the score.
type VkmarkRun = (Vec<u32>, u32);

/// One vkmark run's frames per second per scene (in [`VKMARK_SCENES`] order) and its score,
/// from vkmark's output; None for what is missing.
fn vkmark_result(out: &str) -> (Vec<Option<u32>>, Option<u32>) {
    let after = |key: &str| {
        out.lines()
            .find_map(|l| l.split_once(key).map(|(_, v)| v.trim().to_string()))
    };
    let fps = VKMARK_SCENES
        .iter()
        .map(|scene| {
            out.lines()
                .find(|l| l.contains(&format!("[{scene}]")))
                .and_then(|l| l.split("FPS: ").nth(1))
                .and_then(|f| f.split_whitespace().next())
                .and_then(|f| f.parse::<u32>().ok())
        })
        .collect();
    (fps, after("vkmark Score:").and_then(|s| s.parse().ok()))
}

/// vkmark in the guest on Venus (vertex, cube and phong shading, offscreen), through vhost-gpu
/// running sid's virglrenderer 1.3 (library and render server): 1.1's render server leaves
/// host-visible allocations of vkmark's 800x600 images unmappable through a vhost-user
/// frontend (see the harness's hostmem test). Every scene must run and the score be given.
fn venus_vkmark() {
    let (fps, score) = guest_vkmark(4, true);
    eprintln!("Debian 13 guest, generic device, Venus on virglrenderer 1.3: vkmark score {score}, fps {fps:?}");
}

/// Runs vkmark in a Debian 13 guest (scenes of `hold` s) through vhost-gpu on sid's
/// virglrenderer 1.3, checks the run, and returns each scene's frames per second and the score.
/// `record`: copy the Venus rings' commands for a hang's report (guest_tests::venus_ring).
fn guest_vkmark(hold: u32, record: bool) -> VkmarkRun {
    let root = std::env::var("VHOST_GPU_HOST_ROOT").unwrap_or_default();
    let server = format!("{VIRGL_SID}/usr/libexec/virgl_render_server");
    assert!(
        std::path::Path::new(&format!("{root}{server}")).exists(),
        "no {root}{server}: run scripts/host-root (scripts/newer-virglrenderer)"
    );
    let lib = format!("{VIRGL_SID}/usr/lib/x86_64-linux-gnu");
    let cap = std::env::temp_dir().join(format!("vhost-gpu-vm-g-vkmark-{}", std::process::id()));
    let a: Vec<String> = [
        "--virgl",
        "--display",
        "1024x768",
        "--render-server",
        &server,
        "--capture-dir",
        &cap.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut backend = guest_tests::Backend::start_with_env(
        &guest_tests::BackendOptions { args: a },
        None,
        &[("LD_LIBRARY_PATH", &lib)],
    );
    // VHOST_GPU_VKMARK_LOOPS=N runs vkmark N times in the one guest (a stress run for the
    // hang below); the test's checks apply to the last run.
    let loops: u32 = std::env::var("VHOST_GPU_VKMARK_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut vm = Vm::boot_generic(
        &backend,
        "g-vkmark",
        GENERIC_GPU,
        "vkmark",
        &format!(
            "vgt.hold={hold} vgt.loops={loops} vgt.vn_perf={}",
            std::env::var("VHOST_GPU_VKMARK_VN_PERF").unwrap_or_default()
        ),
    );
    // Every command the guest writes into the Venus rings, for a hang's report (`record`: it
    // polls the render server's memory every millisecond, so not in the benchmark).
    let recorder = record.then(|| guest_tests::venus_ring::Recorder::start(backend.pid()));
    // A hang the guest reports (it then waits 15 s before ending vkmark): the host's side of it
    // while it lasts, every thread of vhost-gpu and the render server with its stack, and the
    // rings' recorded commands.
    let each = Duration::from_secs(u64::from(hold) * 3 + 120);
    let waited = vm.wait_serial("GUEST: vkmark rc", BOOT + each * loops, |text| {
        if text.contains("GUEST: vkmark hung") {
            return Err("hung".into());
        }
        if !backend.alive() {
            return Err("vhost-gpu died".into());
        }
        Ok(())
    });
    if vm.serial_text().contains("GUEST: vkmark hung") {
        let dir = std::env::temp_dir().join(format!("vhost-gpu-vkmark-hang-{}", backend.pid()));
        let recordings = recorder.map(|r| r.stop()).unwrap_or_default();
        let files = guest_tests::venus_ring::save(&recordings, &dir);
        // The rings mapped now (recorded last, one copy for each process mapping them): what
        // the guest asked for before the hang.
        let history: String = recordings
            .iter()
            .rev()
            .take(2)
            .map(|r| {
                format!(
                    "ring mapped by {} at {:#x}, its last synchronisation commands:\n{}\n",
                    r.pid,
                    r.addr,
                    guest_tests::venus_ring::sync_history(r, 40)
                )
            })
            .collect();
        let dump = format!(
            "{}\n{}\n{history}\n{}\nrecorded rings: {files:?}\n",
            backend.thread_dump(),
            guest_tests::venus_ring::venus_rings(backend.pid()),
            guest_tests::frontend::stacks(backend.pid())
        );
        let _ = std::fs::write(dir.join("report.txt"), &dump);
        eprintln!(
            "vkmark hung in the guest; the host's threads (also in {}):\n{dump}",
            dir.display()
        );
        vm.wait_for(&mut backend, "GUEST: vkmark rc", BOOT);
    } else if let Err(e) = waited {
        panic!(
            "{e}\nbackend:\n{}\nthreads of the backend and its children:\n{}",
            backend.log_text(),
            backend.thread_dump()
        );
    }
    let lines = vm.guest_lines();
    let rc = vm.line_after("GUEST: vkmark rc").unwrap_or_default();
    assert_eq!(
        rc.trim(),
        "0",
        "vkmark failed:\n{lines}\n{}\nthreads of the backend and its children:\n{}",
        backend.log_text(),
        backend.thread_dump()
    );
    let dev = lines
        .lines()
        .find_map(|l| {
            l.split_once("Device Name:")
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    assert!(dev.contains("Virtio-GPU Venus (llvmpipe"), "{lines}");
    let (fps, score) = vkmark_result(&lines);
    let fps: Vec<u32> = fps
        .iter()
        .zip(VKMARK_SCENES)
        .map(|(f, scene)| {
            f.filter(|&f| f > 0)
                .unwrap_or_else(|| panic!("{scene}: no frames\n{lines}"))
        })
        .collect();
    let score = score
        .filter(|&s| s > 0)
        .unwrap_or_else(|| panic!("no score:\n{lines}"));
    let log = backend.log_text();
    for want in [
        "loaded /opt/virglrenderer-sid/",
        "venus: on, Vulkan on llvmpipe",
        "render server /opt/virglrenderer-sid/usr/libexec/virgl_render_server started",
        "host-visible memory in use: blob",
    ] {
        assert!(log.contains(want), "{want} missing from the log:\n{log}");
    }
    assert!(!log.contains("its memory ends at"), "{log}");
    assert!(!log.contains("outside its policy"), "{log}");
    vm.quit();
    assert!(backend.alive(), "{}", backend.log_text());
    (fps, score)
}

/// The same vkmark scenes on the host, natively on lavapipe (the ceiling: no guest, no TCG,
/// no Venus). Through vtest they cannot run here: vtest hands host-visible memory to its
/// client as a descriptor, and lavapipe's (opaque, without udmabuf) cannot be exported, so
/// `virgl_test_server --venus` refuses the first mappable blob (export_blob: -22).
fn host_vkmark(hold: u32) -> VkmarkRun {
    let home = std::env::temp_dir().join(format!("vhost-gpu-vkmark-host-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).expect("home");
    let mut c = guest_tests::host::command("vkmark");
    c.env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("MESA_VK_WSI_DEBUG", "sw")
        .env("VK_ICD_FILENAMES", "/usr/share/vulkan/icd.d/lvp_icd.json")
        .args(["--winsys", "headless", "-s", "800x600"]);
    for scene in ["vertex", "cube", "shading:shading=phong"] {
        c.arg("-b").arg(format!("{scene}:duration={hold}"));
    }
    let out = c.output().expect("vkmark on the host");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vkmark on the host: {}\n{text}",
        out.status
    );
    let (fps, score) = vkmark_result(&text);
    (
        fps.into_iter()
            .map(|f| f.unwrap_or_else(|| panic!("{text}")))
            .collect(),
        score.unwrap_or_else(|| panic!("{text}")),
    )
}

/// `scripts/bench --vkmark`: vkmark's score and frames per second in a Debian 13 guest through
/// vhost-gpu (Venus on lavapipe, QEMU 11.1's generic device, TCG) against the same scenes
/// natively on the host, alternating, `VHOST_GPU_VKMARK_ROUNDS` rounds (default 2) of 5 s
/// scenes; the medians and their ratio.
#[test]
#[ignore = "a benchmark: scripts/bench --vkmark"]
fn venus_vkmark_bench() {
    on(Release::Trixie, || {
        let rounds: usize = std::env::var("VHOST_GPU_VKMARK_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(2);
        let (mut guest, mut host) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            host.push(host_vkmark(5));
            // No ring recorder: its polling thread would take CPU from what is measured.
            guest.push(guest_vkmark(5, false));
        }
        let median = |runs: &[VkmarkRun], f: &dyn Fn(&VkmarkRun) -> u32| {
            let mut v: Vec<u32> = runs.iter().map(f).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        println!("vkmark, 800x600 offscreen, {rounds} rounds, medians; guest on TCG (2 host cores shared with QEMU and vhost-gpu)");
        println!(
            "{:<10} {:>14} {:>14} {:>8}",
            "", "guest (ours)", "host lavapipe", "ratio"
        );
        for (i, scene) in VKMARK_SCENES.iter().enumerate() {
            let (g, h) = (median(&guest, &|r| r.0[i]), median(&host, &|r| r.0[i]));
            println!(
                "{:<10} {:>10} fps {:>10} fps {:>8.2}",
                scene,
                g,
                h,
                f64::from(g) / f64::from(h)
            );
        }
        let (g, h) = (median(&guest, &|r| r.1), median(&host, &|r| r.1));
        println!(
            "{:<10} {:>14} {:>14} {:>8.2}",
            "score",
            g,
            h,
            f64::from(g) / f64::from(h)
        );
    });
}

/// Waits up to `timeout` for `text` in the backend's log.
fn log_shows(backend: &guest_tests::Backend, text: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if backend.log_text().contains(text) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Wrong generic-device options end in a named error, never a hang: a third queue stops QEMU
/// at start (vhost-gpu refuses the queue and says num_vqs=2); a config space larger than
/// virtio-gpu's leaves the guest without a GPU (QEMU: "Received bad msg size", the guest:
/// "num_scanouts is zero") and vhost-gpu says config_size=16. vhost-gpu serves the next
/// frontend after each.
#[test]
#[ignore = "needs QEMU >= 11.1 and the test guest: run by scripts/test --host trixie"]
fn generic_device_bad_options_get_a_clear_error_not_a_hang() {
    on(Release::Bookworm, || {
        let (mut backend, _cap) = backend("g-bad", &["--renderer", "2d", "--display", "1024x768"]);
        let mut vm = Vm::boot_generic(
            &backend,
            "g-bad-vqs",
            "virtio-id=16,num_vqs=3,config_size=16,vq_size=256",
            "console",
            "",
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let st = loop {
            if let Some(st) = vm.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "QEMU with num_vqs=3 still runs");
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut err = String::new();
        use std::io::Read;
        let _ = vm
            .child
            .stderr
            .take()
            .map(|mut e| e.read_to_string(&mut err));
        assert!(!st.success(), "{st}");
        assert!(err.contains("Failed to initialize virtqueue 2"), "{err}");
        assert!(
            log_shows(&backend, "num_vqs=2", Duration::from_secs(10)),
            "{}",
            backend.log_text()
        );
        eprintln!("num_vqs=3: QEMU {st}: {}", err.trim());

        let mut vm = Vm::boot_generic(
            &backend,
            "g-bad-cfg",
            "virtio-id=16,num_vqs=2,config_size=24,vq_size=256",
            "console",
            "",
        );
        vm.wait_for(&mut backend, "GUEST: done", BOOT);
        let serial = vm.serial_text();
        assert!(serial.contains("num_scanouts is zero"), "{serial}");
        assert!(
            log_shows(&backend, "config_size=16", Duration::from_secs(10)),
            "{}",
            backend.log_text()
        );
        vm.quit();
        assert!(backend.alive());
        eprintln!("config_size=24: the guest has no GPU and vhost-gpu said why");
    });
}
