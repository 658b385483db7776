//! Desktop users (issue 14): QEMU's gtk,gl=on window on weston in Xvfb, and the desktop bench.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest_tests::{Backend, BackendOptions};

use crate::infra::*;

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
            .find(|&n| x_display_free(n))
            .expect("a free X display number");
        let display = format!(":{n}");
        let xvfb = Command::new("Xvfb")
            .args([
                &display,
                "-screen",
                "0",
                "1024x768x24",
                "-nolisten",
                "tcp",
                "-noreset",
            ])
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

    /// Boots the guest against `backend` in QEMU's `gtk,gl=on` window on this desktop.
    fn boot(&self, backend: &Backend, tag: &str, run: &str, extra: &str) -> Vm {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let qemu = ["-display".to_string(), "gtk,gl=on".to_string()];
        Vm::boot_with(backend, tag, 1, run, extra, &qemu, &env)
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
        // SIGTERM, so that Xvfb removes its socket and lock file.
        let _ = Command::new("kill")
            .arg(self.xvfb.id().to_string())
            .status();
        let _ = self.xvfb.wait();
    }
}

/// Whether X display `n` is free: no socket, or one left by a server that is gone (its lock
/// file names a dead process; both files are removed then).
pub(crate) fn x_display_free(n: u32) -> bool {
    let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
    let lock = PathBuf::from(format!("/tmp/.X{n}-lock"));
    let pid = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match pid {
        Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => false,
        Some(_) => {
            let _ = std::fs::remove_file(&socket);
            let _ = std::fs::remove_file(&lock);
            true
        }
        None => !socket.exists() && !lock.exists(),
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
    let mut vm = desk.boot(&backend, "window", "kmscube", "vgt.frames=1000000");
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
    let mut vm = desk.boot(&backend, "window2d", "flip2d", "vgt.hold=20");
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
    vm.wait_serial(started, BOOT, |_| Ok(())).unwrap();
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
    vm.wait_serial("GUEST: done", BOOT, |_| Ok(())).unwrap();
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
