//! Real guests: QEMU 10 boots a Linux guest (Debian kernel + busybox, under TCG) against the
//! real `vhost-gpu`. Run by `scripts/test` (these are `#[ignore]`d for plain `cargo test`,
//! which may run where QEMU or the guest image is missing; scripts/test runs them with
//! `--ignored` so they count).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest_tests::{Backend, BackendOptions};

fn tiny_guest() -> PathBuf {
    let dir = PathBuf::from(std::env::var("VHOST_GPU_TINY_GUEST").expect(
        "VHOST_GPU_TINY_GUEST unset: run scripts/test, or build-tiny-guest DIR and point it there",
    ));
    assert!(
        dir.join("vmlinuz").exists() && dir.join("initrd.gz").exists(),
        "no guest in {}",
        dir.display()
    );
    dir
}

struct Vm {
    child: Child,
    serial: PathBuf,
    qmp: PathBuf,
}

impl Vm {
    fn boot(backend: &Backend, dir: &Path, tag: &str) -> Vm {
        let guest = tiny_guest();
        let serial = dir.join(format!("serial-{tag}.log"));
        let qmp = dir.join(format!("qmp-{tag}.sock"));
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35,accel=tcg", "-cpu", "max", "-m", "512M"])
            .args([
                "-object",
                "memory-backend-memfd,id=mem,size=512M,share=on",
                "-numa",
                "node,memdev=mem",
            ])
            .arg("-chardev")
            .arg(format!("socket,id=vgpu,path={}", backend.socket.display()))
            .args(["-device", "vhost-user-gpu-pci,chardev=vgpu"])
            .arg("-kernel")
            .arg(guest.join("vmlinuz"))
            .arg("-initrd")
            .arg(guest.join("initrd.gz"))
            .args(["-append", "console=ttyS0 panic=-1"])
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

    /// Waits for `marker` on the serial console, failing fast when QEMU or the backend dies.
    fn wait_for(&mut self, backend: &mut Backend, marker: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial_text().contains(marker) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                let mut err = String::new();
                let _ = self
                    .child
                    .stderr
                    .take()
                    .map(|mut e| e.read_to_string(&mut err));
                panic!("QEMU exited ({st}) before '{marker}'\nqemu stderr:\n{err}\nserial:\n{}\nbackend:\n{}",
                    self.serial_text(), backend.log_text());
            }
            assert!(
                backend.alive(),
                "vhost-gpu died\nserial:\n{}\nbackend:\n{}",
                self.serial_text(),
                backend.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "no '{marker}' within {timeout:?}\nserial:\n{}\nbackend:\n{}",
                self.serial_text(),
                backend.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
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
            w.write_all(c.as_bytes()).unwrap();
            w.write_all(b"\n").unwrap();
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
#[ignore = "needs QEMU 10 and the tiny guest: run by scripts/test"]
fn linux_guest_probes_and_its_console_reaches_the_frontend() {
    let args = ["--renderer", "2d", "--display", "1024x768"]
        .map(String::from)
        .to_vec();
    let mut backend = Backend::start(&BackendOptions { args });
    let dir = backend.socket.parent().unwrap().to_path_buf();
    let t0 = Instant::now();
    let mut vm = Vm::boot(&backend, &dir, "a");
    vm.wait_for(&mut backend, "GUEST: done", Duration::from_secs(180));
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
    let mut vm2 = Vm::boot(&backend, &dir, "b");
    vm2.wait_for(&mut backend, "GUEST: done", Duration::from_secs(180));
    assert!(vm2
        .serial_text()
        .contains("fb0: virtio_gpudrmfb frame buffer device"));
    let (_, _, rgb) = vm2.screendump(&shot);
    assert!(lit_pixels(&rgb) > 0, "second guest's console reached QEMU");
    // A clean shutdown through QMP; the backend goes on.
    vm2.qmp(&[r#"{"execute":"quit"}"#.to_string()]);
    let _ = vm2.child.wait();
    std::thread::sleep(Duration::from_millis(300));
    assert!(backend.alive());
    assert!(backend.log_text().matches("frontend connected").count() >= 2);
}

#[test]
#[ignore = "needs QEMU 10 and the tiny guest: run by scripts/test"]
fn linux_guest_sees_virgl_with_two_capsets_and_its_console_is_shown() {
    let args = ["--virgl", "--display", "1024x768"]
        .map(String::from)
        .to_vec();
    let mut backend = Backend::start(&BackendOptions { args });
    let dir = backend.socket.parent().unwrap().to_path_buf();
    let t0 = Instant::now();
    let mut vm = Vm::boot(&backend, &dir, "virgl");
    vm.wait_for(&mut backend, "GUEST: done", Duration::from_secs(180));
    let boot = t0.elapsed();
    let serial = vm.serial_text();
    assert!(
        serial.contains("[drm] features: +virgl +edid"),
        "driver features:\n{serial}"
    );
    // QEMU 10's vhost-user-gpu-pci does not pass CONTEXT_INIT through to the guest.
    assert!(serial.contains("[drm] number of cap sets: 2"), "{serial}");
    assert!(
        serial.contains("fb0: virtio_gpudrmfb frame buffer device"),
        "{serial}"
    );
    // fbcon's frames go through virglrenderer's resources and reach QEMU as UPDATEs.
    let shot = dir.join("screen-virgl.ppm");
    let (w, h, rgb) = vm.screendump(&shot);
    assert_eq!((w, h), (1024, 768));
    let lit = lit_pixels(&rgb);
    let total = (w * h) as usize;
    assert!(
        lit > total / 200 && lit < total / 2,
        "{lit} of {total} pixels lit"
    );
    // Text rows run top-down: the first lit row is near the top, as fbcon draws it.
    let first_lit_row = (0..h as usize).find(|y| {
        rgb[y * w as usize * 3..(y + 1) * w as usize * 3]
            .iter()
            .any(|&c| c > 0x80)
    });
    assert!(
        first_lit_row.is_some_and(|y| y < 100),
        "first lit row {first_lit_row:?}: image upside down?"
    );
    eprintln!("virgl boot to console text: {boot:?}; {lit} of {total} pixels lit");
    vm.qmp(&[r#"{"execute":"quit"}"#.to_string()]);
    let _ = vm.child.wait();
    assert!(backend.alive());
}
