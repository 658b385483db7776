//! What the VM tests share: the guest image, vhost-gpu with a capture directory, QEMU with the
//! serial console and QMP, screenshots.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest_tests::capture::{self, Image};
use guest_tests::{Backend, BackendOptions};

pub(crate) const BOOT: Duration = Duration::from_secs(240);

/// How every test guest runs: TCG with real atomics. QEMU makes the guest's locked
/// instructions real host atomics only when more than one vCPU may run (CF_PARALLEL, from
/// maxcpus), and plain loads and stores otherwise. Venus shares its ring's status word with the
/// render server, which sets and clears bits in it while the guest's driver clears another:
/// with one vCPU the guest's store could undo the server's "idle" bit, the driver then never
/// woke the sleeping ring thread, and vkmark hung (issue 22). One vCPU runs; a second may be
/// plugged, so the atomics are real (tests/vm/atomics.rs checks it).
pub(crate) const TCG: [&str; 4] = ["-accel", "tcg,thread=multi", "-smp", "1,maxcpus=2"];

/// The options of QEMU 11.1's generic vhost-user device for vhost-gpu: virtio-gpu is device
/// type 16, with two queues (control, cursor); its config space is 16 bytes (events_read,
/// events_clear, num_scanouts, num_capsets); 256 descriptors a queue (vhost-gpu takes up to
/// 1024).
pub(crate) const GENERIC_GPU: &str = "virtio-id=16,num_vqs=2,config_size=16,vq_size=256";

/// The Debian release a test's guest comes from (guest/build-guest's RELEASE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// Debian 12: kernel 6.1, Mesa 22.3 (`VHOST_GPU_GUEST`).
    Bookworm,
    /// Debian 13: kernel 6.12, Mesa 25, glvnd 1.7 (`VHOST_GPU_GUEST_TRIXIE`).
    Trixie,
}

thread_local! {
    /// The guest this test thread boots (each test runs on its own thread).
    pub(crate) static RELEASE: std::cell::Cell<Release> = const { std::cell::Cell::new(Release::Bookworm) };
}

/// Boots `release`'s guest in the tests run by `f` on this thread, and prints the test's
/// name, host stack and wall time when it passes (for the tables in the README).
pub(crate) fn on(release: Release, f: fn()) {
    RELEASE.with(|r| r.set(release));
    let t0 = Instant::now();
    f();
    eprintln!(
        "TIMING {} on the {} stack: {:.0} s",
        std::thread::current().name().unwrap_or("?"),
        guest_tests::host::name(),
        t0.elapsed().as_secs_f64()
    );
}

pub(crate) fn guest_image() -> PathBuf {
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
pub(crate) fn backend(tag: &str, args: &[&str]) -> (Backend, PathBuf) {
    let cap = std::env::temp_dir().join(format!("vhost-gpu-vm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cap);
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend(["--capture-dir".to_string(), cap.display().to_string()]);
    (Backend::start(&BackendOptions { args: a }), cap)
}

/// Asks the backend for screenshot `n` of `scanouts`.
pub(crate) fn shot(b: &Backend, cap: &Path, n: u64, scanouts: &[u32]) -> Vec<Image> {
    capture::screenshot(b, cap, n, scanouts, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("screenshot {n}: {e}\nbackend:\n{}", b.log_text()))
}

/// How long a test keeps taking screenshots for the picture it expects. The guest prints its
/// "shown" line when its KMS call returns; the transfer and flush the kernel queued for it may
/// still be on their way through the virtqueue then (QEMU and the guest share 2 cores with
/// vhost-gpu), so a screenshot taken at once can still show the frame before.
pub(crate) const SETTLE: Duration = Duration::from_secs(4);

/// Takes screenshots of `scanouts` (numbering them on from `*n`) until `check` accepts one,
/// for up to [`SETTLE`]; fails with `check`'s last complaint.
pub(crate) fn shot_until(
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

pub(crate) struct Vm {
    pub(crate) child: Child,
    pub(crate) serial: PathBuf,
    pub(crate) qmp: PathBuf,
}

impl Vm {
    /// Boots the guest against `backend` with `outputs` scanouts, running `run` (guest/init's
    /// vgt.run) plus `extra` kernel arguments.
    pub(crate) fn boot(backend: &Backend, tag: &str, outputs: u32, run: &str, extra: &str) -> Vm {
        Self::boot_with(backend, tag, outputs, run, extra, &[], &[])
    }

    /// [`Vm::boot`] with more QEMU arguments.
    pub(crate) fn boot_with(
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

    /// Boots the guest against `backend` through QEMU >= 11.1's generic vhost-user device
    /// (`vhost-user-test-device-pci`), which knows nothing of GPUs: no display channel, the
    /// backend's device features passed through to the guest. `device` is the device's
    /// options after `chardev` ([`GENERIC_GPU`] for the ones the README gives).
    pub(crate) fn boot_generic(
        backend: &Backend,
        tag: &str,
        device: &str,
        run: &str,
        extra: &str,
    ) -> Vm {
        let device = [
            "-chardev".to_string(),
            format!("socket,id=vgpu,path={}", backend.socket.display()),
            "-device".to_string(),
            format!("vhost-user-test-device-pci,chardev=vgpu,{device}"),
        ];
        Self::boot_device(backend.dir(), tag, &device, run, extra, &[], &[])
    }

    /// Boots the guest with `device` as its GPU's QEMU arguments (a vhost-user GPU, or one of
    /// QEMU's own for comparison), files in `dir`, under [`TCG`].
    pub(crate) fn boot_device(
        dir: &Path,
        tag: &str,
        device: &[String],
        run: &str,
        extra: &str,
        qemu: &[String],
        env: &[(&str, &str)],
    ) -> Vm {
        Self::boot_device_accel(dir, tag, device, run, extra, qemu, env, &TCG)
    }

    /// [`Vm::boot_device`] with `accel` as QEMU's accelerator and CPU-count arguments.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn boot_device_accel(
        dir: &Path,
        tag: &str,
        device: &[String],
        run: &str,
        extra: &str,
        qemu: &[String],
        env: &[(&str, &str)],
        accel: &[&str],
    ) -> Vm {
        let guest = guest_image();
        let serial = dir.join(format!("serial-{tag}.log"));
        let qmp = dir.join(format!("qmp-{tag}.sock"));
        let child = guest_tests::host::command("qemu-system-x86_64")
            .args(["-machine", "q35", "-cpu", "max", "-m", "1G"])
            .args(accel)
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

    pub(crate) fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// The guest's own lines ("GUEST: ..." and "AGENT: ..."), for failure messages.
    pub(crate) fn guest_lines(&self) -> String {
        vm_lines(&self.serial_text())
    }

    /// Waits for `marker` on the serial console; an error when QEMU exits, `check` (given the
    /// serial text) complains, or `timeout` passes.
    pub(crate) fn wait_serial(
        &mut self,
        marker: &str,
        timeout: Duration,
        mut check: impl FnMut(&str) -> Result<(), String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.serial_text();
            if text.contains(marker) {
                return Ok(());
            }
            check(&text).map_err(|e| format!("{e}\nserial:\n{text}"))?;
            if let Ok(Some(st)) = self.child.try_wait() {
                let mut err = String::new();
                let _ = self
                    .child
                    .stderr
                    .take()
                    .map(|mut e| e.read_to_string(&mut err));
                return Err(format!(
                    "QEMU exited ({st}) before '{marker}'\nqemu stderr:\n{err}\nserial:\n{text}"
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("no '{marker}' within {timeout:?}\nserial:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for `marker` on the serial console, failing fast when QEMU or the backend dies
    /// or the agent reports a failure.
    pub(crate) fn wait_for(&mut self, backend: &mut Backend, marker: &str, timeout: Duration) {
        let r = self.wait_serial(marker, timeout, |text| {
            if let Some(l) = text.lines().find(|l| l.starts_with("AGENT: result fail")) {
                return Err(l.to_string());
            }
            if !backend.alive() {
                return Err("vhost-gpu died".into());
            }
            Ok(())
        });
        if let Err(e) = r {
            panic!(
                "{e}\nbackend:\n{}\nthreads of the backend and its children:\n{}",
                backend.log_text(),
                backend.thread_dump()
            );
        }
    }

    /// Waits for the guest's workload to end and checks that the agent reported a pass.
    pub(crate) fn agent_passed(&mut self, backend: &mut Backend) {
        self.wait_for(backend, "GUEST: done", BOOT);
        assert!(
            self.serial_text().contains("AGENT: result pass"),
            "{}",
            self.guest_lines()
        );
    }

    /// The `[drm] features:` lines the guest's driver printed, joined with "; ".
    pub(crate) fn drm_features(&self) -> String {
        self.serial_text()
            .lines()
            .filter_map(|l| l.split("[drm] ").nth(1))
            .filter(|l| l.starts_with("features:"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The rest of the first serial line starting with `prefix`.
    pub(crate) fn line_after(&self, prefix: &str) -> Option<String> {
        self.serial_text()
            .lines()
            .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string()))
    }

    /// Runs QMP commands in order; returns the last reply line.
    pub(crate) fn qmp(&self, cmds: &[String]) -> String {
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
    pub(crate) fn quit(mut self) {
        self.qmp(&[r#"{"execute":"quit"}"#.to_string()]);
        let _ = self.child.wait();
    }
}

impl Vm {
    /// What QEMU shows, which it only has from our SCANOUT + UPDATE messages: a QMP
    /// `screendump` into `path`, parsed.
    pub(crate) fn screendump(&self, path: &Path) -> (u32, u32, Vec<u8>) {
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
pub(crate) struct SessionBus {
    pub(crate) child: Child,
    pub(crate) address: String,
}

impl SessionBus {
    pub(crate) fn start() -> SessionBus {
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
    pub(crate) fn set_ui_size(&self, console: u32, width: u32, height: u32) -> Result<(), String> {
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
pub(crate) fn lit_pixels(rgb: &[u8]) -> usize {
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
pub(crate) fn read_ppm(p: &Path) -> (u32, u32, Vec<u8>) {
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

/// The guest's own lines of a serial log.
pub(crate) fn vm_lines(text: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with("GUEST:") || l.starts_with("AGENT:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The capsets a virgl guest should see: VIRGL and VIRGL2, and VENUS when vhost-gpu found a
/// Vulkan driver for it (its log says "venus: on").
pub fn expected_capsets(backend: &guest_tests::Backend) -> usize {
    if backend.log_text().contains("venus: on") {
        3
    } else {
        2
    }
}
