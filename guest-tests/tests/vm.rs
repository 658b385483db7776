//! Real guests: QEMU 10 boots a Linux guest (Debian kernel, busybox, Mesa, modetest, kmscube
//! and our guest agent; see guest/build-guest) under TCG against the real `vhost-gpu`, runs a
//! workload chosen on the kernel command line (guest/init), and the test checks the serial log
//! and what reached the screen: QMP screendumps of what QEMU got over the display channel, and
//! PNG screenshots from `vhost-gpu --capture-dir`.
//!
//! Run by `scripts/test`. They are `#[ignore]`d for a plain `cargo test`, which may run where
//! QEMU or the guest image is missing; scripts/test runs them with `--ignored` so they count.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest_tests::capture::{self, gl_picture, quadrants, sized, smpte, Image, DUMB, GL};
use guest_tests::{Backend, BackendOptions};

const BOOT: Duration = Duration::from_secs(240);

/// The Debian release a test's guest comes from (guest/build-guest's RELEASE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    /// Debian 12: kernel 6.1, Mesa 22.3 (`VHOST_GPU_GUEST`).
    Bookworm,
    /// Debian 13: kernel 6.12, Mesa 25, glvnd 1.7 (`VHOST_GPU_GUEST_TRIXIE`).
    Trixie,
}

thread_local! {
    /// The guest this test thread boots (each test runs on its own thread).
    static RELEASE: std::cell::Cell<Release> = const { std::cell::Cell::new(Release::Bookworm) };
}

/// Boots `release`'s guest in the tests run by `f` on this thread.
fn on(release: Release, f: fn()) {
    RELEASE.with(|r| r.set(release));
    f();
}

fn guest_image() -> PathBuf {
    let var = match RELEASE.with(|r| r.get()) {
        Release::Bookworm => "VHOST_GPU_GUEST",
        Release::Trixie => "VHOST_GPU_GUEST_TRIXIE",
    };
    let dir = PathBuf::from(std::env::var(var).unwrap_or_else(|_| panic!(
        "{var} unset: run scripts/test, or guest-tests/guest/build-guest DIR AGENT [bookworm|trixie] and point it there"
    )));
    assert!(
        dir.join("vmlinuz").exists() && dir.join("initrd").exists(),
        "no guest in {}",
        dir.display()
    );
    dir
}

/// Starts `vhost-gpu` with `args` and `--capture-dir` in a fresh directory; returns both.
fn backend(tag: &str, args: &[&str]) -> (Backend, PathBuf) {
    let cap = std::env::temp_dir().join(format!("vhost-gpu-vm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cap);
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend(["--capture-dir".to_string(), cap.display().to_string()]);
    (Backend::start(&BackendOptions { args: a }), cap)
}

/// Asks the backend for screenshot `n` of `scanouts`.
fn shot(b: &Backend, cap: &Path, n: u64, scanouts: &[u32]) -> Vec<Image> {
    capture::screenshot(b, cap, n, scanouts, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("screenshot {n}: {e}\nbackend:\n{}", b.log_text()))
}

/// How long a test keeps taking screenshots for the picture it expects. The guest prints its
/// "shown" line when its KMS call returns; the transfer and flush the kernel queued for it may
/// still be on their way through the virtqueue then (QEMU and the guest share 2 cores with
/// vhost-gpu), so a screenshot taken at once can still show the frame before.
const SETTLE: Duration = Duration::from_secs(4);

/// Takes screenshots of `scanouts` (numbering them on from `*n`) until `check` accepts one,
/// for up to [`SETTLE`]; fails with `check`'s last complaint.
fn shot_until(
    b: &Backend,
    cap: &Path,
    n: &mut u64,
    scanouts: &[u32],
    check: impl Fn(&[Image]) -> Result<(), String>,
) -> Vec<Image> {
    let deadline = Instant::now() + SETTLE;
    let mut tries = 0;
    loop {
        *n += 1;
        tries += 1;
        let s = shot(b, cap, *n, scanouts);
        match check(&s) {
            Ok(()) => return s,
            Err(e) if Instant::now() >= deadline => panic!(
                "{e} (in each of {tries} screenshot(s) over {SETTLE:?})\nbackend:\n{}",
                b.log_text()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

struct Vm {
    child: Child,
    serial: PathBuf,
    qmp: PathBuf,
}

impl Vm {
    /// Boots the guest against `backend` with `outputs` scanouts, running `run` (guest/init's
    /// vgt.run) plus `extra` kernel arguments.
    fn boot(backend: &Backend, tag: &str, outputs: u32, run: &str, extra: &str) -> Vm {
        Self::boot_with(backend, tag, outputs, run, extra, &[], &[])
    }

    /// [`Vm::boot`] with more QEMU arguments.
    fn boot_with(
        backend: &Backend,
        tag: &str,
        outputs: u32,
        run: &str,
        extra: &str,
        qemu: &[String],
        env: &[(&str, &str)],
    ) -> Vm {
        let device = [
            "-chardev".to_string(),
            format!("socket,id=vgpu,path={}", backend.socket.display()),
            "-device".to_string(),
            format!("vhost-user-gpu-pci,chardev=vgpu,max_outputs={outputs}"),
        ];
        Self::boot_device(backend.dir(), tag, &device, run, extra, qemu, env)
    }

    /// Boots the guest with `device` as its GPU's QEMU arguments (a vhost-user GPU, or one of
    /// QEMU's own for comparison), files in `dir`.
    fn boot_device(
        dir: &Path,
        tag: &str,
        device: &[String],
        run: &str,
        extra: &str,
        qemu: &[String],
        env: &[(&str, &str)],
    ) -> Vm {
        let guest = guest_image();
        let serial = dir.join(format!("serial-{tag}.log"));
        let qmp = dir.join(format!("qmp-{tag}.sock"));
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35,accel=tcg", "-cpu", "max", "-m", "1G"])
            .args([
                "-object",
                "memory-backend-memfd,id=mem,size=1G,share=on",
                "-numa",
                "node,memdev=mem",
            ])
            .args(device)
            .arg("-kernel")
            .arg(guest.join("vmlinuz"))
            .arg("-initrd")
            .arg(guest.join("initrd"))
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 vgt.run={run} {extra}"))
            .args([
                "-display",
                "none",
                "-vga",
                "none",
                "-no-reboot",
                "-monitor",
                "none",
            ])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(qemu)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/setup installs QEMU 10)");
        Vm { child, serial, qmp }
    }

    fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// The guest's own lines ("GUEST: ..." and "AGENT: ..."), for failure messages.
    fn guest_lines(&self) -> String {
        vm_lines(&self.serial_text())
    }

    /// Waits for `marker` on the serial console, failing fast when QEMU or the backend dies
    /// or the agent reports a failure.
    fn wait_for(&mut self, backend: &mut Backend, marker: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.serial_text();
            if text.contains(marker) {
                return;
            }
            if let Some(l) = text.lines().find(|l| l.starts_with("AGENT: result fail")) {
                panic!("{l}\nserial:\n{text}\nbackend:\n{}", backend.log_text());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                let mut err = String::new();
                let _ = self
                    .child
                    .stderr
                    .take()
                    .map(|mut e| e.read_to_string(&mut err));
                panic!("QEMU exited ({st}) before '{marker}'\nqemu stderr:\n{err}\nserial:\n{text}\nbackend:\n{}",
                    backend.log_text());
            }
            assert!(
                backend.alive(),
                "vhost-gpu died\nserial:\n{text}\nbackend:\n{}",
                backend.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "no '{marker}' within {timeout:?}\nserial:\n{text}\nbackend:\n{}",
                backend.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the guest's workload to end and checks that the agent reported a pass.
    fn agent_passed(&mut self, backend: &mut Backend) {
        self.wait_for(backend, "GUEST: done", BOOT);
        assert!(
            self.serial_text().contains("AGENT: result pass"),
            "{}",
            self.guest_lines()
        );
    }

    /// The rest of the first serial line starting with `prefix`.
    fn line_after(&self, prefix: &str) -> Option<String> {
        self.serial_text()
            .lines()
            .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string()))
    }

    /// Runs QMP commands in order; returns the last reply line.
    fn qmp(&self, cmds: &[String]) -> String {
        let s = UnixStream::connect(&self.qmp).expect("QMP socket");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line).unwrap(); // greeting
        let mut last = String::new();
        for c in std::iter::once(r#"{"execute":"qmp_capabilities"}"#.to_string())
            .chain(cmds.iter().cloned())
        {
            // One write: QEMU acts on a complete object at once, and after "quit" it may
            // close the socket before a second write.
            if w.write_all(format!("{c}\n").as_bytes()).is_err() {
                return last;
            }
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return last;
                }
                if line.contains("\"return\"") || line.contains("\"error\"") {
                    last = line.clone();
                    break;
                }
            }
        }
        last
    }

    /// Stops the VM through QMP and waits for QEMU to exit.
    fn quit(mut self) {
        self.qmp(&[r#"{"execute":"quit"}"#.to_string()]);
        let _ = self.child.wait();
    }
}

impl Vm {
    /// What QEMU shows, which it only has from our SCANOUT + UPDATE messages: a QMP
    /// `screendump` into `path`, parsed.
    fn screendump(&self, path: &Path) -> (u32, u32, Vec<u8>) {
        let reply = self.qmp(&[format!(
            r#"{{"execute":"screendump","arguments":{{"filename":"{}"}}}}"#,
            path.display()
        )]);
        assert!(reply.contains("\"return\""), "screendump: {reply}");
        read_ppm(path)
    }
}

/// A private D-Bus session bus for QEMU's D-Bus display (`-display dbus`), the display that
/// lets a test act as the user's UI: each console object takes `SetUIInfo`, as a desktop
/// client does when its window is resized. (VNC cannot attach to vhost-user-gpu: QEMU wants a
/// display with DMABUF support for it, and the D-Bus display has that without GL.)
struct SessionBus {
    child: Child,
    address: String,
}

impl SessionBus {
    fn start() -> SessionBus {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (scripts/setup installs dbus-daemon)");
        let mut address = String::new();
        let out = child.stdout.take().expect("dbus-daemon stdout");
        BufReader::new(out)
            .read_line(&mut address)
            .expect("dbus-daemon address");
        SessionBus {
            child,
            address: address.trim().to_string(),
        }
    }

    /// Sets the UI size of QEMU's console `console`, as a resized window would.
    fn set_ui_size(&self, console: u32, width: u32, height: u32) -> Result<(), String> {
        let out = Command::new("gdbus")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .args(["call", "--session", "--dest", "org.qemu", "--object-path"])
            .arg(format!("/org/qemu/Display1/Console_{console}"))
            .args([
                "--method",
                "org.qemu.Display1.Console.SetUIInfo",
                "0",
                "0",
                "0",
                "0",
            ])
            .arg(width.to_string())
            .arg(height.to_string())
            .output()
            .map_err(|e| format!("gdbus (scripts/setup installs libglib2.0-bin): {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks that a screenshot is `size`.
/// Pixels with any channel above half brightness (fbcon's text).
fn lit_pixels(rgb: &[u8]) -> usize {
    rgb.chunks(3)
        .filter(|p| p.iter().any(|&c| c > 0x80))
        .count()
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses a binary PPM (P6): (width, height, RGB bytes).
fn read_ppm(p: &Path) -> (u32, u32, Vec<u8>) {
    let b = std::fs::read(p).expect("screendump file");
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while b[i].is_ascii_whitespace() {
            i += 1;
        }
        let s = i;
        while !b[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&b[s..i]).to_string());
    }
    assert_eq!(fields[0], "P6");
    (
        fields[1].parse().unwrap(),
        fields[2].parse().unwrap(),
        b[i + 1..].to_vec(),
    )
}

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
    assert!(serial.contains("[drm] number of cap sets: 2"), "{serial}");
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
    let features: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("[drm] ").nth(1))
        .filter(|l| l.starts_with("features:"))
        .collect();
    eprintln!(
        "{:?} guest: kernel {kernel}; {}; {}; renderer {renderer}; {}; wall time {:?}",
        RELEASE.with(|r| r.get()),
        features.join("; "),
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
    let t0 = Instant::now();
    let (mut backend, cap) = backend("kill", &["--virgl", "--display", "800x600"]);
    let mut vm = Vm::boot(&backend, "kill", 1, "kmscube", "vgt.frames=1000000");
    vm.wait_for(&mut backend, "GUEST: kmscube started", BOOT);
    // Let frames flow, then kill QEMU in the middle of them.
    let latest = cap.join("scanout-0.png");
    capture::wait_files(std::slice::from_ref(&latest), Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _ = vm.child.kill();
    let _ = vm.child.wait();
    assert!(backend.alive(), "vhost-gpu died with its frontend");
    // A new QEMU against the same vhost-gpu: its guest renders through virgl again.
    let mut vm2 = Vm::boot(&backend, "kill2", 1, "agent", "vgt.hold=6");
    vm2.wait_for(&mut backend, "AGENT: gl shown", BOOT);
    shot_until(&backend, &cap, &mut 0, &[0], |s| {
        sized(&s[0], (800, 600))?;
        quadrants(&s[0], GL, "second guest's GL picture")
    });
    vm2.agent_passed(&mut backend);
    vm2.quit();
    assert!(backend.alive());
    assert!(backend.log_text().matches("frontend connected").count() >= 2);
    eprintln!("wall time: {:?}", t0.elapsed());
}

#[test]
#[ignore = "needs QEMU 10 and the test guest: run by scripts/test"]
fn guest_sees_the_display_change_when_the_frontend_resizes() {
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
    let mut server = Command::new("virgl_test_server")
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
        let o = Command::new("timeout")
            .arg("120")
            .arg(pig.join("bin").join(bin))
            .args(arg)
            .args(["-auto", "-fbo"])
            .current_dir(pig.join("tests"))
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

/// The guest's own lines of a serial log.
fn vm_lines(text: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with("GUEST:") || l.starts_with("AGENT:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A desktop session for QEMU's GTK window: Xvfb, and weston on it (Wayland: QEMU's
/// `gtk,gl=on` takes a vhost-user GPU's console there, where GTK's GL area imports dma-bufs;
/// on X11 QEMU refuses it). No panel, so that only the QEMU window changes. Killed on drop.
struct Desktop {
    xvfb: Child,
    weston: Child,
    display: String,
    runtime: PathBuf,
}

impl Desktop {
    fn start(dir: &Path) -> Desktop {
        let n = (90..190)
            .find(|n| !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists())
            .expect("a free X display number");
        let display = format!(":{n}");
        let xvfb = Command::new("Xvfb")
            .args([&display, "-screen", "0", "1024x768x24", "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb (scripts/setup installs xvfb)");
        let runtime = dir.join("xdg");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        wait_path(Path::new(&format!("/tmp/.X11-unix/X{n}")), "Xvfb");
        let ini = dir.join("weston.ini");
        std::fs::write(&ini, "[shell]\npanel-position=none\n[core]\nidle-time=0\n").unwrap();
        let weston = Command::new("weston")
            .args([
                "--backend=x11-backend.so",
                "--socket=wl-vgt",
                "--width=1000",
                "--height=740",
            ])
            .arg(format!("--config={}", ini.display()))
            .env("DISPLAY", &display)
            .env("XDG_RUNTIME_DIR", &runtime)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weston (scripts/setup installs weston)");
        wait_path(&runtime.join("wl-vgt"), "weston");
        Desktop {
            xvfb,
            weston,
            display,
            runtime,
        }
    }

    /// What a Wayland client (QEMU's GTK display) needs in its environment.
    fn env(&self) -> Vec<(&str, String)> {
        vec![
            ("XDG_RUNTIME_DIR", self.runtime.display().to_string()),
            ("WAYLAND_DISPLAY", "wl-vgt".into()),
            ("GDK_BACKEND", "wayland".into()),
        ]
    }

    /// The whole X screen (`xwd -root`), raw.
    fn screenshot(&self) -> Vec<u8> {
        let out = Command::new("xwd")
            .args(["-root", "-silent", "-display", &self.display])
            .output()
            .expect("xwd (scripts/setup installs x11-apps)");
        assert!(out.status.success(), "xwd: {out:?}");
        out.stdout
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        let _ = self.weston.kill();
        let _ = self.weston.wait();
        let _ = self.xvfb.kill();
        let _ = self.xvfb.wait();
    }
}

fn wait_path(p: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start ({})",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A desktop user's window (issue 14): QEMU's `-display gtk,gl=on` on weston, kmscube's page
/// flips through virgl. The animation must show: two screenshots of the screen 1.5 s apart
/// differ, in thousands of pixels. (While vhost-gpu sent SCANOUT on every flip, QEMU replaced
/// its surface each time and the window stayed black: no pixel changed.)
#[test]
#[ignore = "needs QEMU 10, the test guest, Xvfb and weston: run by scripts/test"]
fn guest_animation_shows_in_a_gtk_gl_window() {
    let t0 = Instant::now();
    let (mut backend, _cap) = backend("window", &["--virgl", "--display", "800x600"]);
    let desk = Desktop::start(backend.dir());
    let env = desk.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let qemu = ["-display".to_string(), "gtk,gl=on".to_string()];
    let mut vm = Vm::boot_with(
        &backend,
        "window",
        1,
        "kmscube",
        "vgt.frames=1000000",
        &qemu,
        &env,
    );
    vm.wait_for(&mut backend, "GUEST: kmscube started", BOOT);
    // The window is mapped and frames flow.
    std::thread::sleep(Duration::from_secs(6));
    let a = desk.screenshot();
    std::thread::sleep(Duration::from_millis(1500));
    let b = desk.screenshot();
    assert_eq!(a.len(), b.len());
    let changed = a.chunks(4).zip(b.chunks(4)).filter(|(x, y)| x != y).count();
    assert!(
        changed > 1000,
        "the window did not animate: {changed} pixels changed in 1.5 s\nserial:\n{}",
        vm.guest_lines()
    );
    eprintln!(
        "gtk,gl=on window: {changed} pixels changed in 1.5 s; wall time {:?}",
        t0.elapsed()
    );
    vm.quit();
    assert!(backend.alive());
}

/// Issue 14 in 2D: modetest's page flips (SMPTE bars and a plain frame, on dumb buffers) show
/// in QEMU's `-display gtk,gl=on` window. Screenshots of the screen taken over a second must
/// not all be one picture.
#[test]
#[ignore = "needs QEMU 10, the test guest, Xvfb and weston: run by scripts/test"]
fn guest_2d_page_flips_show_in_a_gtk_gl_window() {
    let t0 = Instant::now();
    let (mut backend, _cap) = backend("window2d", &["--renderer", "2d", "--display", "800x600"]);
    let desk = Desktop::start(backend.dir());
    let env = desk.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let qemu = ["-display".to_string(), "gtk,gl=on".to_string()];
    let mut vm = Vm::boot_with(
        &backend,
        "window2d",
        1,
        "flip2d",
        "vgt.hold=20",
        &qemu,
        &env,
    );
    vm.wait_for(&mut backend, "GUEST: modetest flipping", BOOT);
    std::thread::sleep(Duration::from_secs(5));
    let shots: Vec<Vec<u8>> = (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(130));
            desk.screenshot()
        })
        .collect();
    let most_changed = shots
        .iter()
        .skip(1)
        .map(|s| {
            s.chunks(4)
                .zip(shots[0].chunks(4))
                .filter(|(x, y)| x != y)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most_changed > 10_000,
        "the window did not show the flips: at most {most_changed} pixels differ from the first of 10 screenshots\nserial:\n{}",
        vm.guest_lines()
    );
    vm.wait_for(&mut backend, "GUEST: done", BOOT);
    let rates = vm.guest_lines();
    let rates: Vec<&str> = rates
        .lines()
        .filter(|l| l.contains("modetest flips"))
        .collect();
    eprintln!(
        "gtk,gl=on window, 2D flips: up to {most_changed} pixels differ between screenshots; guest: {}; wall time {:?}",
        rates.join("; "),
        t0.elapsed()
    );
    assert!(!rates.is_empty(), "modetest printed no flip rate");
    vm.quit();
    assert!(backend.alive());
}

/// A free TCP port on loopback (asked of the kernel, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Takes a picture through Debian's `vncsnapshot` (a TightVNC/RealVNC 3.3 client) at `addr`
/// (HOST:PORT) and decodes it (JPEG at quality 100, through `djpeg`).
fn vncsnapshot(addr: &str, dir: &Path, n: u32) -> Image {
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
fn vnc_matches_capture(vnc: &Image, cap: &Image) {
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

/// Waits for `marker` on a VM's serial console (no vhost-gpu to watch: QEMU's own devices).
fn wait_serial(vm: &mut Vm, marker: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = vm.serial_text();
        if text.contains(marker) {
            return Ok(());
        }
        if let Ok(Some(st)) = vm.child.try_wait() {
            let mut err = String::new();
            let _ = vm
                .child
                .stderr
                .take()
                .map(|mut e| e.read_to_string(&mut err));
            return Err(format!(
                "QEMU exited ({st}) before '{marker}': {err}\n{}",
                vm_lines(&text)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no '{marker}' within {timeout:?}\n{}",
                vm_lines(&text)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a desktop-bench round runs against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DesktopGpu {
    /// vhost-user-gpu-pci on vhost-gpu.
    Ours,
    /// vhost-user-gpu-pci on QEMU's C backend (/usr/lib/qemu/vhost-user-gpu).
    QemuBackend,
    /// QEMU's in-process device: virtio-gpu-pci (2D) or virtio-gpu-gl-pci (3D).
    InProcess,
}

/// One round: boots the guest in QEMU's `gtk,gl=on` window on `gpu`, runs `run`, returns the
/// guest's figure: kmscube's frames per second (3D) or modetest's median page flips per second
/// (2D), and the host CPU seconds per second of vhost-gpu/the backend and of QEMU.
fn desktop_round(gpu: DesktopGpu, three_d: bool, round: usize) -> (f64, f64, f64) {
    let tag = format!("desk-{gpu:?}-{}-{round}", if three_d { "3d" } else { "2d" });
    let dir = std::env::temp_dir().join(format!("vhost-gpu-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let backend = match gpu {
        DesktopGpu::InProcess => None,
        DesktopGpu::Ours => Some(Backend::start(&BackendOptions {
            args: if three_d {
                vec!["--virgl".into(), "--display".into(), "800x600".into()]
            } else {
                vec![
                    "--renderer".into(),
                    "2d".into(),
                    "--display".into(),
                    "800x600".into(),
                ]
            },
        })),
        DesktopGpu::QemuBackend => {
            std::env::set_var("VHOST_GPU_BIN", "/usr/lib/qemu/vhost-user-gpu");
            let b = Backend::start(&BackendOptions {
                args: if three_d {
                    vec!["--virgl".into()]
                } else {
                    vec![]
                },
            });
            std::env::remove_var("VHOST_GPU_BIN");
            Some(b)
        }
    };
    let device: Vec<String> = match (&backend, three_d) {
        (Some(b), _) => vec![
            "-chardev".into(),
            format!("socket,id=vgpu,path={}", b.socket.display()),
            "-device".into(),
            "vhost-user-gpu-pci,chardev=vgpu,xres=800,yres=600".into(),
        ],
        (None, true) => vec![
            "-device".into(),
            "virtio-gpu-gl-pci,xres=800,yres=600".into(),
        ],
        (None, false) => vec!["-device".into(), "virtio-gpu-pci,xres=800,yres=600".into()],
    };
    let desk = Desktop::start(&dir);
    let env = desk.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let qemu = ["-display".to_string(), "gtk,gl=on".to_string()];
    let (run, extra) = if three_d {
        ("kmscube", "vgt.frames=300")
    } else {
        ("flip2d", "vgt.hold=22")
    };
    let mut vm = Vm::boot_device(&dir, &tag, &device, run, extra, &qemu, &env);
    let started = if three_d {
        "GUEST: kmscube started"
    } else {
        "GUEST: modetest flipping"
    };
    wait_serial(&mut vm, started, BOOT).unwrap();
    let cpu = |pid: u32| -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // After the ')' that ends the command name: state, ppid, ... utime (12th), stime (13th).
        let f: Vec<&str> = s
            .rsplit_once(')')
            .map(|r| r.1.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf only reads a constant.
        (ticks(11) + ticks(12)) / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    };
    let backend_pid = backend.as_ref().map(|b| b.pid());
    let (t0, b0, q0) = (
        Instant::now(),
        backend_pid.map_or(0.0, cpu),
        cpu(vm.child.id()),
    );
    wait_serial(&mut vm, "GUEST: done", BOOT).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let b_cpu = (backend_pid.map_or(0.0, cpu) - b0) / secs;
    let q_cpu = (cpu(vm.child.id()) - q0) / secs;
    let text = vm.guest_lines();
    let figure = if three_d {
        let ms: f64 = vm
            .line_after("GUEST: kmscube frames 300 in")
            .and_then(|l| l.trim_end_matches(" ms").parse().ok())
            .unwrap_or_else(|| panic!("no kmscube time:\n{text}"));
        300.0 / (ms / 1000.0)
    } else {
        let mut rates: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split("freq: ").nth(1))
            .filter_map(|v| v.trim_end_matches("Hz").trim().parse().ok())
            .collect();
        assert!(!rates.is_empty(), "no flip rate:\n{text}");
        rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
        rates[rates.len() / 2]
    };
    vm.quit();
    drop(desk);
    drop(backend);
    let _ = std::fs::remove_dir_all(&dir);
    (figure, b_cpu, q_cpu)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// `scripts/bench --desktop` (issue 14): frame rates in QEMU's `gtk,gl=on` window on weston
/// (Xvfb, llvmpipe), the same guest, alternating rounds: kmscube through vhost-gpu's virgl vs
/// QEMU's in-process virtio-gpu-gl-pci; modetest's 2D page flips through vhost-gpu vs QEMU's
/// in-process virtio-gpu-pci vs QEMU's C vhost-user-gpu. Medians and ratios are printed and
/// written to `$VHOST_GPU_DESKTOP_JSON` (default target/desktop-bench.json). Not a test:
/// `scripts/test` skips it.
#[test]
#[ignore = "a benchmark: scripts/bench --desktop"]
fn desktop_bench() {
    on(Release::Bookworm, || {
        let rounds: usize = std::env::var("VHOST_GPU_DESKTOP_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        // VHOST_GPU_DESKTOP_ONLY=3d or 2d runs one half.
        let only = std::env::var("VHOST_GPU_DESKTOP_ONLY").unwrap_or_default();
        let mut rows = Vec::new();
        for (three_d, gpus) in [
            (true, vec![DesktopGpu::Ours, DesktopGpu::InProcess]),
            (
                false,
                vec![
                    DesktopGpu::Ours,
                    DesktopGpu::InProcess,
                    DesktopGpu::QemuBackend,
                ],
            ),
        ] {
            if !only.is_empty() && only != if three_d { "3d" } else { "2d" } {
                continue;
            }
            let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); gpus.len()];
            for r in 0..rounds {
                for (i, g) in gpus.iter().enumerate() {
                    let x = desktop_round(*g, three_d, r);
                    eprintln!(
                        "{} {g:?} round {r}: {:.1}/s, backend CPU {:.2}, QEMU CPU {:.2}",
                        if three_d { "3D" } else { "2D" },
                        x.0,
                        x.1,
                        x.2
                    );
                    results[i].push(x);
                }
            }
            let ours = median(results[0].iter().map(|x| x.0).collect());
            for (i, g) in gpus.iter().enumerate() {
                let m = median(results[i].iter().map(|x| x.0).collect());
                let bc = median(results[i].iter().map(|x| x.1).collect());
                let qc = median(results[i].iter().map(|x| x.2).collect());
                let all: Vec<String> = results[i].iter().map(|x| format!("{:.1}", x.0)).collect();
                rows.push((
                    if three_d {
                        "3D kmscube fps"
                    } else {
                        "2D page flips/s"
                    },
                    format!("{g:?}"),
                    m,
                    all.join(" "),
                    ours / m,
                    bc,
                    qc,
                ));
            }
        }
        println!("| workload | GPU | median | rounds | vhost-gpu / this | backend CPU (cores) | QEMU CPU (cores) |");
        println!("|---|---|---|---|---|---|---|");
        let mut json = String::from("[\n");
        for (i, r) in rows.iter().enumerate() {
            println!(
                "| {} | {} | {:.1} | {} | {:.2} | {:.2} | {:.2} |",
                r.0, r.1, r.2, r.3, r.4, r.5, r.6
            );
            json.push_str(&format!(
                "  {{\"workload\": \"{}\", \"gpu\": \"{}\", \"median\": {}, \"rounds\": [{}], \"ours_over_this\": {}, \"backend_cpu\": {}, \"qemu_cpu\": {}}}{}\n",
                r.0, r.1, r.2, r.3.replace(' ', ", "), r.4, r.5, r.6,
                if i + 1 < rows.len() { "," } else { "" }
            ));
        }
        json.push_str("]\n");
        let path = std::env::var("VHOST_GPU_DESKTOP_JSON").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/desktop-bench.json").into()
        });
        std::fs::write(&path, json).unwrap();
        println!("JSON: {path}");
    });
}
