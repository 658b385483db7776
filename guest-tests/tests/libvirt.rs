//! The real launcher: Debian's libvirt starts vhost-gpu for a domain's `<video>` with
//! `<driver name='vhostuser'/>`, as `libvirt-qemu`, with `--fd=N` (a connected socket pair),
//! after asking it for `--print-capabilities`. The test installs vhost-gpu with the README's
//! own lines, builds its domains around the README's own XML, boots the test guest under TCG in
//! 2D and with `accel3d='yes'`, and checks the guest's lines, `virsh screenshot`'s pixels, the
//! backend's user, flags and sandbox, and what reaches the system log (libvirt keeps no
//! backend stderr), including a bad `--fd` and the exit when the domain goes.
//!
//! Needs root, libvirt (scripts/setup installs it) and the test guest; run by scripts/test.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest_tests::capture::{gl_picture, smpte, Image};
use guest_tests::host;

const VIRSH: &str = "qemu:///system";
const BOOT: Duration = Duration::from_secs(240);
/// How long screenshots are retried for the expected picture (see the VM tests' SETTLE, tests/vm/infra.rs).
const SETTLE: Duration = Duration::from_secs(6);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The fenced blocks of language `lang` in the README's section `heading`.
fn readme_blocks(heading: &str, lang: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find(heading).expect("README section");
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = section;
    while let Some(i) = rest.find(&fence) {
        let body = &rest[i + fence.len()..];
        let end = body.find("```").expect("closed block");
        out.push(body[..end].to_string());
        rest = &body[end..];
    }
    out
}

fn virsh(args: &[&str]) -> Result<String, String> {
    let o = host::command("virsh")
        .arg("-c")
        .arg(VIRSH)
        .args(args)
        .output()
        .map_err(|e| format!("virsh (scripts/setup installs libvirt-clients): {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "virsh {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// libvirt's daemons: started here when they do not run (no systemd in CI), with the empty
/// environment a service manager gives them.
fn libvirt_up() {
    if virsh(&["version"]).is_ok() {
        return;
    }
    for d in ["virtlogd", "virtlockd", "libvirtd"] {
        // Debian 13's libvirt packages virtlockd apart (libvirt-daemon-lock, not a dependency
        // of libvirt-daemon-system); the QEMU driver needs it only with a lock manager set.
        if d == "virtlockd" && !host::path(Path::new("/usr/sbin/virtlockd")).exists() {
            continue;
        }
        // Already up on this stack (a run before this one started it).
        if running_on_this_stack(&format!("/usr/sbin/{d}")) {
            continue;
        }
        let st = host::command(format!("/usr/sbin/{d}"))
            .arg("-d")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .status()
            .unwrap_or_else(|e| panic!("{d} (scripts/setup installs libvirt): {e}"));
        assert!(st.success(), "{d} -d: {st}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = virsh(&["version"]) {
        assert!(Instant::now() < deadline, "libvirtd did not answer: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether a process started as `program` runs on the host stack under test: the same command
/// line, and its root directory the stack's (a host root's processes see theirs as `/`).
fn running_on_this_stack(program: &str) -> bool {
    let want = host::root().unwrap_or_else(|| PathBuf::from("/"));
    let want = want.canonicalize().unwrap_or(want);
    pids_of(program)
        .into_iter()
        .any(|pid| std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r == want))
}

/// The host's system log: journald when it runs, else busybox's syslogd started here on
/// /dev/log (CI machines have none), writing to a file.
struct SystemLog {
    syslogd: Option<Child>,
    file: PathBuf,
}

impl SystemLog {
    fn open(dir: &Path) -> SystemLog {
        let live = UnixDatagram::unbound()
            .and_then(|s| s.connect("/dev/log"))
            .is_ok();
        let file = dir.join("messages");
        if live {
            assert!(
                Path::new("/run/systemd/journal").exists(),
                "a system log other than journald listens on /dev/log; this test reads only journald's or its own"
            );
            return SystemLog {
                syslogd: None,
                file,
            };
        }
        let child = Command::new("busybox")
            .args(["syslogd", "-n", "-O"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox syslogd (scripts/setup installs busybox-static)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixDatagram::unbound()
            .and_then(|s| s.connect("/dev/log"))
            .is_err()
        {
            assert!(Instant::now() < deadline, "syslogd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        SystemLog {
            syslogd: Some(child),
            file,
        }
    }

    /// vhost-gpu's lines so far.
    fn vhost_gpu_lines(&self) -> String {
        let text = if self.syslogd.is_some() {
            std::fs::read_to_string(&self.file).unwrap_or_default()
        } else {
            Command::new("journalctl")
                .args(["-t", "vhost-gpu", "--no-pager", "-o", "short"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        text.lines()
            .filter(|l| l.contains("vhost-gpu["))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until a line of process `pid` contains `what`.
    fn wait_for(&self, pid: u32, what: &str) -> Result<(), String> {
        let tag = format!("vhost-gpu[{pid}]");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.vhost_gpu_lines();
            if lines.lines().any(|l| l.contains(&tag) && l.contains(what)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no '{what}' from {tag} in the system log:\n{lines}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SystemLog {
    fn drop(&mut self) {
        if let Some(c) = &mut self.syslogd {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The process ids whose command line starts with `prefix`.
fn pids_of(prefix: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.starts_with(prefix))
        })
        .collect()
}

fn status_field(pid: u32, key: &str) -> String {
    guest_tests::frontend::status_field(Path::new(&format!("/proc/{pid}/status")), key)
}

fn uid_of(user: &str) -> String {
    let o = host::command("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A running domain, destroyed on drop.
struct Domain {
    name: String,
    serial: PathBuf,
}

impl Domain {
    fn create(dir: &Path, mode: &str, run: &str) -> Domain {
        let name = format!("vhost-gpu-test-{mode}-{}", std::process::id());
        let serial = dir.join(format!("serial-{mode}.log"));
        let blocks = readme_blocks("## Attaching with libvirt", "xml");
        assert_eq!(
            blocks.len(),
            2,
            "the README's libvirt XML blocks: {blocks:?}"
        );
        let memory = &blocks[0];
        let mut video = blocks[1].clone();
        if mode == "2d" {
            // "leave out <acceleration> for 2D"
            video = video
                .lines()
                .filter(|l| !l.contains("acceleration"))
                .collect::<Vec<_>>()
                .join("\n");
        }
        let guest = dir.display();
        let xml = format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>1</vcpu>
  {memory}
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{guest}/vmlinuz</kernel>
    <initrd>{guest}/initrd</initrd>
    <cmdline>console=ttyS0 panic=-1 vgt.run={run} vgt.hold=8</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum'/>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='{}'/><target port='0'/></serial>
    {video}
  </devices>
</domain>
",
            serial.display()
        );
        let file = dir.join(format!("{mode}.xml"));
        std::fs::write(&file, xml).unwrap();
        virsh(&["create", file.to_str().unwrap()]).unwrap();
        Domain { name, serial }
    }

    fn serial_text(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits for `marker` on the guest's serial console; fails fast when the backend `pid`
    /// dies or the domain stops.
    fn wait_for(&self, pid: u32, marker: &str, log: &SystemLog) {
        let deadline = Instant::now() + BOOT;
        loop {
            let text = self.serial_text();
            if text.contains(marker) {
                return;
            }
            let gone = !Path::new(&format!("/proc/{pid}")).exists();
            assert!(
                !gone && Instant::now() < deadline,
                "no '{marker}' ({}); serial:\n{text}\nsystem log:\n{}",
                if gone {
                    "vhost-gpu is gone"
                } else {
                    "timed out"
                },
                log.vhost_gpu_lines()
            );
            if let Some(l) = text.lines().find(|l| l.starts_with("AGENT: result fail")) {
                panic!("{l}\nserial:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `virsh screenshot`s until `check` accepts one.
    fn screenshot_until(&self, dir: &Path, check: impl Fn(&Image) -> Result<(), String>) {
        let deadline = Instant::now() + SETTLE;
        let path = dir.join(format!("{}.png", self.name));
        loop {
            virsh(&["screenshot", &self.name, path.to_str().unwrap()]).unwrap();
            let img = Image::read(&path).unwrap();
            match check(&img) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("virsh screenshot: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
    }
}

/// The one vhost-gpu libvirt started for the domain, not among `before` (waits for it).
fn backend_pid(before: &[u32]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut pids = pids_of("/usr/libexec/vhost-gpu --fd");
        pids.retain(|p| !before.contains(p));
        match pids[..] {
            [pid] => return pid,
            [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => panic!("vhost-gpu processes started by libvirt: {pids:?}"),
        }
    }
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

#[test]
#[ignore = "needs root, libvirt, QEMU 10 and the test guest: run by scripts/test"]
fn libvirt_starts_vhost_gpu_for_2d_and_3d_domains() {
    let t0 = Instant::now();
    let guest = PathBuf::from(std::env::var("VHOST_GPU_GUEST").expect("VHOST_GPU_GUEST unset"));
    // A directory QEMU and the backend (as libvirt-qemu) may read, and write the serial log in.
    let dir = std::env::temp_dir().join(format!("vhost-gpu-libvirt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["vmlinuz", "initrd"] {
        std::fs::copy(guest.join(f), dir.join(f)).unwrap();
    }
    assert!(Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    let log = SystemLog::open(&dir);

    // The README's install lines, as written, from the repository's root, on the host stack
    // under test. Inside a host root (scripts/host-root) the binary is the one built there
    // (VHOST_GPU_BIN) instead of target/release's.
    let install = readme_blocks("## Attaching with libvirt", "sh");
    assert_eq!(install.len(), 1, "{install:?}");
    let mut lines = install[0].clone();
    if host::root().is_some() {
        let bin = guest_tests::frontend::binary_path();
        lines = lines.replace("target/release/vhost-gpu", &bin.display().to_string());
    }
    let st = host::command("bash")
        .args(["-euc", &lines])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(st.success(), "the README's install lines: {st}");
    libvirt_up();
    eprintln!(
        "{} stack: {}",
        host::name(),
        virsh(&["version"]).unwrap_or_default().replace('\n', "; ")
    );
    let qemu_uid = uid_of("libvirt-qemu");
    let has_node = std::fs::read_dir("/dev/dri").is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
    });

    for (mode, run, marker) in [
        ("2d", "modetest", "GUEST: modetest shown"),
        ("3d", "agent", "AGENT: gl shown"),
    ] {
        let before = pids_of("/usr/libexec/vhost-gpu --fd");
        let domain = Domain::create(&dir, mode, run);
        let pid = backend_pid(&before);
        let cmdline =
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
                .replace('\0', " ");
        assert_eq!(
            status_field(pid, "Uid").split_whitespace().next(),
            Some(qemu_uid.as_str())
        );
        assert_eq!(cmdline.contains("--virgl"), mode == "3d", "{cmdline}");
        assert_eq!(
            cmdline.contains("--render-node"),
            has_node && mode == "3d",
            "{cmdline}"
        );
        domain.wait_for(pid, marker, &log);
        assert_eq!(
            status_field(pid, "Seccomp"),
            "2",
            "sandbox off under libvirt"
        );
        // 2D means 2D: without --virgl the guest is offered no virgl, as with QEMU's backend.
        let want = if mode == "2d" {
            "[drm] features: -virgl"
        } else {
            "[drm] features: +virgl"
        };
        assert!(
            domain.serial_text().contains(want),
            "{want}:\n{}",
            domain.serial_text()
        );
        if mode == "2d" {
            domain.screenshot_until(&dir, |img| smpte(img, (img.width, img.height)));
        } else {
            let renderer = domain
                .serial_text()
                .lines()
                .find_map(|l| l.strip_prefix("AGENT: gl renderer ").map(String::from))
                .unwrap_or_default();
            assert!(renderer.starts_with("virgl"), "GL renderer {renderer}");
            assert!(domain.serial_text().contains("AGENT: gl readback ok"));
            domain.screenshot_until(&dir, |img| gl_picture(img, (img.width, img.height)));
        }
        log.wait_for(pid, "shader cache").unwrap();
        log.wait_for(pid, "sandbox: seccomp").unwrap();
        drop(domain);
        // QEMU is gone: the backend's one frontend left, so it exits, and says so.
        assert!(
            wait_gone(pid),
            "vhost-gpu {pid} still runs after its domain was destroyed"
        );
        log.wait_for(
            pid,
            "exiting: the frontend on the connected --fd socket hung up",
        )
        .unwrap();
        eprintln!("libvirt {mode}: ok ({cmdline}) at {:?}", t0.elapsed());
    }

    // A bad --fd, started as libvirt starts backends (its user, stderr thrown away): the
    // reason reaches the system log, and the exit status is an error.
    let child = host::command("setpriv")
        .args([
            "--reuid=libvirt-qemu",
            "--regid=libvirt-qemu",
            "--clear-groups",
        ])
        .args(["/usr/libexec/vhost-gpu", "--fd=77"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    log.wait_for(pid, "exiting: --fd 77: not open").unwrap();
    eprintln!(
        "system log:\n{}\nwall time {:?}",
        log.vhost_gpu_lines(),
        t0.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
