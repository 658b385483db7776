//! vhost-gpu benchmarks, side by side with QEMU's C backend (`/usr/lib/qemu/vhost-user-gpu`),
//! through the same harness (vhost-user frontend, split virtqueues, display channel). Every
//! figure is a median and p99 over many iterations after a warm-up, with a ratio against a
//! baseline measured in the same run. Prints a table and writes JSON.
//!
//!     bench [--iterations N] [--json PATH] [--quick] [--theirs PATH|none] [--only WORD]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_tests::driver::{Gpu, CONTROLQ};
use guest_tests::frontend::cpu_secs;
use guest_tests::frontend::{binary_path, ConnectOptions};
use guest_tests::vnc::{self, VncClient};
use guest_tests::wire::*;
use guest_tests::{Backend, BackendOptions, DisplayEvent};

struct Opts {
    iterations: usize,
    /// Run only workloads whose name contains this.
    only: Option<String>,
    json: Option<PathBuf>,
    theirs: Option<PathBuf>,
}

fn parse() -> Opts {
    let mut o = Opts {
        iterations: 1000,
        only: None,
        json: Some(PathBuf::from("bench.json")),
        theirs: Some(PathBuf::from("/usr/lib/qemu/vhost-user-gpu")).filter(|p| p.exists()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iterations" => {
                o.iterations = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--iterations N")
            }
            "--quick" => o.iterations = 20,
            "--only" => o.only = args.next(),
            "--json" => o.json = args.next().map(PathBuf::from),
            "--theirs" => {
                o.theirs = args.next().filter(|v| v != "none").map(PathBuf::from);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

/// Median and p99 of samples, in the samples' unit.
#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    p99: f64,
}

impl Stat {
    /// `{"median": .., "p99": ..}`, with `name` first when given.
    fn json(&self, name: Option<&str>) -> String {
        let name = name.map_or(String::new(), |n| format!("\"name\": \"{n}\", "));
        format!(
            "{{{name}\"median\": {}, \"p99\": {}}}",
            self.median, self.p99
        )
    }
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stat {
        median: at(0.5),
        p99: at(0.99),
    }
}

/// Runs `f` `warm` times, then `n` times, returning each run's seconds.
fn time(n: usize, warm: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warm {
        f();
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

struct Row {
    name: String,
    unit: &'static str,
    ours: Stat,
    theirs: Option<Stat>,
    baseline: Option<(&'static str, Stat)>,
    /// True when bigger is better (throughput), false for latencies and sizes.
    higher_better: bool,
}

/// Which backend a run talks to.
#[derive(Clone)]
struct Target {
    name: &'static str,
    bin: PathBuf,
    args: Vec<String>,
}

/// Pins a process (its threads made from now on) to one CPU; the bench runs on CPU 0 and the
/// backend under test on CPU 1, so both backends see the same cross-CPU wake-ups.
fn pin(pid: u32, cpu: usize) {
    if std::thread::available_parallelism().map_or(1, |v| v.get()) < 2 {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity get a live set of the
    // size passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(
            pid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        );
    }
}

fn start(t: &Target) -> (Backend, Gpu) {
    std::env::set_var("VHOST_GPU_BIN", &t.bin);
    let b = Backend::start(&BackendOptions {
        args: t.args.clone(),
    });
    pin(b.pid(), 1);
    let g = Gpu::connect(
        &b,
        &ConnectOptions {
            mem_size: 256 << 20,
            ..Default::default()
        },
    );
    (b, g)
}

/// A `/proc/PID/status` field in KiB (VmRSS, RssAnon, RssShmem...).
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident memory the process allocated itself: RSS less the guest memory it has touched
/// (the memfd shared with the frontend shows up as RssShmem).
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:") + status_kib(pid, "RssFile:")
}

/// Round trip of a trivial command: flush of a 1x1 resource on no scanout.
fn round_trip(t: &Target, n: usize) -> Vec<f64> {
    let (_b, mut g) = start(t);
    assert_eq!(g.create_2d(1, B8G8R8X8, 1, 1), OK_NODATA);

    time(n, n / 10 + 5, || {
        assert_eq!(g.flush(1, (0, 0, 1, 1)), OK_NODATA)
    })
    .into_iter()
    .map(|s| s * 1e6)
    .collect()
}

/// Commands per second with 100 flushes queued per notify.
fn throughput(t: &Target, n: usize) -> Vec<f64> {
    let (_b, mut g) = start(t);
    assert_eq!(g.create_2d(1, B8G8R8X8, 1, 1), OK_NODATA);
    let req = Msg::cmd(RESOURCE_FLUSH).rect(0, 0, 1, 1).u32(1).u32(0).0;
    let batch = 100;
    let secs = time(n.div_ceil(10).max(3), 3, || {
        for _ in 0..batch {
            g.send(CONTROLQ, &req, 24);
        }
        g.collect(CONTROLQ, batch);
    });
    secs.into_iter().map(|s| batch as f64 / s).collect()
}

const FW: u32 = 1920;
const FH: u32 = 1080;

/// TRANSFER_TO_HOST_2D of a 1080p frame backed by 4 KiB pages: GB/s.
fn upload(t: &Target, n: usize) -> Vec<f64> {
    let (_b, mut g) = start(t);
    let px = vec![0x5au8; (FW * FH * 4) as usize];
    assert_eq!(g.create_2d(1, B8G8R8A8, FW, FH), OK_NODATA);
    let e = g.scattered_backing(&px);
    assert_eq!(g.attach_backing(1, &e), OK_NODATA);
    let bytes = f64::from(FW * FH * 4);
    let secs = time(n.div_ceil(4).max(5), 5, || {
        assert_eq!(g.transfer(1, (0, 0, FW, FH), FW * 4), OK_NODATA)
    });
    secs.into_iter().map(|s| bytes / s / 1e9).collect()
}

/// The same bytes gathered in this process from guest memory: a 1080p frame copied out of
/// 4 KiB memfd pages in reverse order (as `scattered_backing` lays them out) into a heap
/// buffer. The floor any backend's copy stands on: memfd pages, no huge pages, a page a copy.
/// With `split_rows`, each copy also stops at the end of a pixel row, as rutabaga's 2D
/// transfer copies (a row at a time, each row cut at page boundaries).
fn scattered_baseline(n: usize, split_rows: bool) -> Stat {
    let mem = guest_tests::GuestMemory::new(64 << 20).expect("memfd");
    let bytes = (FW * FH * 4) as usize;
    let pages = bytes.div_ceil(4096);
    let base = mem.alloc_pinned(pages as u64 * 4096, 4096);
    let src: Vec<u64> = (0..pages)
        .map(|i| base + (pages - 1 - i) as u64 * 4096)
        .collect();
    for &a in &src {
        mem.write(a, &[0x5a; 4096]);
    }
    // The destination starts on a cache line, as vhost-gpu's resources do (its allocator
    // aligns large blocks): 16 bytes off one, which is where malloc puts a large Vec, the same
    // gather runs at about half the speed here.
    let mut buf = vec![0u8; bytes + 64];
    let skip = buf.as_ptr().align_offset(64);
    let dst = &mut buf[skip..skip + bytes];
    let secs = time(n.div_ceil(4).max(5), 5, || {
        let row = (FW * 4) as usize;
        for (i, &a) in src.iter().enumerate() {
            let len = 4096.min(bytes - i * 4096);
            let p = mem.host_addr(a) as *const u8;
            // SAFETY: `a` is a page this function allocated in the live mapping `mem`.
            let page = unsafe { std::slice::from_raw_parts(p, len) };
            let at = i * 4096;
            if split_rows {
                let mut from = 0;
                while from < len {
                    let row_end = ((at + from) / row + 1) * row - at;
                    let to = row_end.min(len);
                    dst[at + from..at + to].copy_from_slice(&page[from..to]);
                    from = to;
                }
            } else {
                dst[at..at + len].copy_from_slice(page);
            }
        }
        std::hint::black_box(&mut *dst);
    });
    stat(secs.into_iter().map(|s| bytes as f64 / s / 1e9).collect())
}

/// The floor under any backend's round trip: the same two cross-CPU eventfd wake-ups with no
/// work between them. A thread on CPU 1 plays the backend (epoll_wait on the kick, read it,
/// write the call) and this thread, on CPU 0, plays the driver (write the kick, poll the call,
/// read it), as the harness and vhost-user-backend do. µs per round trip.
fn wakeup_floor(n: usize) -> Stat {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    use vmm_sys_util::eventfd::EventFd;
    let kick = EventFd::new(0).expect("eventfd");
    let call = EventFd::new(0).expect("eventfd");
    let (k, c) = (
        kick.try_clone().expect("dup"),
        call.try_clone().expect("dup"),
    );
    let total = n + n / 10 + 5;
    let device = std::thread::spawn(move || {
        pin(0, 1);
        let ep = Epoll::new().expect("epoll");
        ep.ctl(
            ControlOperation::Add,
            k.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )
        .expect("epoll add");
        let mut evs = [EpollEvent::default(); 4];
        for _ in 0..total {
            while ep.wait(-1, &mut evs).unwrap_or(0) == 0 {}
            let _ = k.read();
            c.write(1).expect("call");
        }
    });
    let secs = time(n, total - n, || {
        kick.write(1).expect("kick");
        let mut pfd = libc::pollfd {
            fd: call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack, count 1.
        while unsafe { libc::poll(&mut pfd, 1, 1000) } <= 0 {}
        let _ = call.read();
    });
    device.join().expect("floor thread");
    stat(secs.into_iter().map(|s| s * 1e6).collect())
}

/// memcpy of the same bytes in this process: GB/s.
fn memcpy_baseline(n: usize) -> Stat {
    let src = vec![0x5au8; (FW * FH * 4) as usize];
    let mut dst = vec![0u8; src.len()];
    let bytes = src.len() as f64;
    let secs = time(n.div_ceil(4).max(5), 5, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    });
    stat(secs.into_iter().map(|s| bytes / s / 1e9).collect())
}

/// A page flip of a 1080p frame (two resources of different pixels, transferred and flushed
/// whole) until its UPDATE reaches the frontend: frames/s. (A frame equal to the last one
/// would send nothing: only changes go out.)
fn display_path(t: &Target, n: usize) -> Vec<f64> {
    let (_b, mut g) = start(t);
    assert_eq!(g.display_info().code(), OK_DISPLAY_INFO);
    for id in [1, 2] {
        let px = vec![0x33u8 * id as u8; (FW * FH * 4) as usize];
        assert_eq!(g.create_2d(id, B8G8R8X8, FW, FH), OK_NODATA);
        let e = g.scattered_backing(&px);
        assert_eq!(g.attach_backing(id, &e), OK_NODATA);
    }
    let mut id = 1;
    let secs = time(n.div_ceil(10).max(5), 3, || {
        id = 3 - id;
        assert_eq!(g.set_scanout(0, id, (0, 0, FW, FH)), OK_NODATA);
        assert_eq!(g.transfer(id, (0, 0, FW, FH), FW * 4), OK_NODATA);
        assert_eq!(g.flush(id, (0, 0, FW, FH)), OK_NODATA);
        g.display()
            .wait_for(Duration::from_secs(10), |e| {
                matches!(e, DisplayEvent::Update { .. }).then_some(())
            })
            .expect("UPDATE");
    });
    secs.into_iter().map(|s| 1.0 / s).collect()
}

/// A 1080p frame with varied content (ZRLE has real work: few solid tiles).
fn busy_frame(seed: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity((FW * FH * 4) as usize);
    for y in 0..FH {
        for x in 0..FW {
            v.extend_from_slice(&[(x ^ y) as u8 ^ seed, (x / 3) as u8, (y / 5) as u8, 0]);
        }
    }
    v
}

/// Our backend serving `--vnc` on a Unix socket, with or without a display channel, and two
/// 1080p frames uploaded once, resources 1 and 2, the first on the scanout (see [`flip`]).
fn vnc_backend(display: bool) -> (Backend, Gpu, PathBuf) {
    let dir = std::env::temp_dir().join(format!("vhost-gpu-bench-vnc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("vnc.sock");
    std::env::set_var("VHOST_GPU_BIN", binary_path_ours());
    let b = Backend::start(&BackendOptions {
        args: vec![
            "--renderer".into(),
            "2d".into(),
            "--display".into(),
            format!("{FW}x{FH}"),
            "--vnc".into(),
            format!("unix:{}", sock.display()),
        ],
    });
    pin(b.pid(), 1);
    let mut opts = ConnectOptions {
        mem_size: 256 << 20,
        ..Default::default()
    };
    if !display {
        opts.display = None;
    }
    let mut g = Gpu::connect(&b, &opts);
    for id in [1, 2] {
        let px = busy_frame(id as u8);
        assert_eq!(g.create_2d(id, B8G8R8X8, FW, FH), OK_NODATA);
        let e = g.scattered_backing(&px);
        assert_eq!(g.attach_backing(id, &e), OK_NODATA);
        assert_eq!(g.transfer(id, (0, 0, FW, FH), FW * 4), OK_NODATA);
    }
    assert_eq!(g.set_scanout(0, 1, (0, 0, FW, FH)), OK_NODATA);
    (b, g, sock)
}

/// Page flip `i`: resource 1 or 2 on the scanout, flushed whole (every pixel differs from the
/// last frame's, so all of it goes out).
fn flip(g: &mut Gpu, i: usize) {
    let id = 1 + (i % 2) as u32;
    assert_eq!(g.set_scanout(0, id, (0, 0, FW, FH)), OK_NODATA);
    assert_eq!(g.flush(id, (0, 0, FW, FH)), OK_NODATA);
}

/// From a 1080p flush to a VNC client holding the whole update (ms), for `encoding`; and, as
/// the baseline, the same flush to the display channel's UPDATE (what QEMU's window gets).
/// Also returns the bytes a frame took on the wire (KB, mean).
fn vnc_latency(n: usize, encodings: &[i32]) -> (Stat, Stat, f64) {
    let (_b, mut g, sock) = vnc_backend(true);
    let mut c = VncClient::connect(&sock, None).expect("VNC client");
    c.set_encodings(encodings);
    c.request(false);
    c.read_update().expect("first update");
    let mut vnc = Vec::new();
    let mut chan = Vec::new();
    let mut bytes = 0u64;
    for i in 0..n + 3 {
        c.request(true);
        // Let the request arrive before the clock starts.
        std::thread::sleep(Duration::from_millis(2));
        let t = Instant::now();
        flip(&mut g, i + 1);
        g.display()
            .wait_for(Duration::from_secs(10), |e| {
                matches!(e, DisplayEvent::Update { .. }).then_some(())
            })
            .expect("UPDATE");
        let to_channel = t.elapsed().as_secs_f64();
        let before: u64 = c.bytes.values().sum();
        let rects = c.read_update().expect("VNC update");
        let to_vnc = t.elapsed().as_secs_f64();
        assert!(!rects.is_empty());
        if i >= 3 {
            vnc.push(to_vnc * 1e3);
            chan.push(to_channel * 1e3);
            bytes += c.bytes.values().sum::<u64>() - before;
        }
    }
    (stat(vnc), stat(chan), bytes as f64 / n as f64 / 1e3)
}

/// vhost-gpu's CPU per 1080p frame (ms) with `clients` VNC clients (asking for `encodings`)
/// keeping up, no display channel: what VNC costs the host.
fn vnc_cpu(n: usize, clients: usize, encodings: &'static [i32]) -> Stat {
    let (b, mut g, sock) = vnc_backend(false);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..clients)
        .map(|_| {
            let sock = sock.clone();
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut c = VncClient::connect(&sock, None).expect("VNC client");
                c.set_encodings(encodings);
                c.request(false);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if c.read_update().is_err() {
                        break;
                    }
                    c.request(true);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut per_frame = Vec::new();
    // Frames at 30 per second, so that clients can keep up; CPU per frame over each batch.
    let mut i = 0;
    for _ in 0..n.div_ceil(10).max(3) {
        let c0 = cpu_secs(b.pid());
        for _ in 0..10 {
            let t = Instant::now();
            i += 1;
            flip(&mut g, i);
            std::thread::sleep(Duration::from_millis(33).saturating_sub(t.elapsed()));
        }
        // Let the clients' updates finish before reading the clock.
        std::thread::sleep(Duration::from_millis(100));
        per_frame.push((cpu_secs(b.pid()) - c0) / 10.0 * 1e3);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flip(&mut g, i + 1);
    for r in readers {
        let _ = r.join();
    }
    stat(per_frame)
}

/// Idle RSS after start, and RSS after creating and freeing 1 GiB of resources (KiB).
fn memory(t: &Target) -> (Stat, Stat) {
    let (b, mut g) = start(t);
    assert_eq!(g.display_info().code(), OK_DISPLAY_INFO);
    std::thread::sleep(Duration::from_millis(200));
    let idle = rss_kib(b.pid()) as f64;
    // 128 resources of 2048x1024x4 = 8 MiB, each with backing and a full transfer (so the host
    // copy is really touched), then all freed.
    let px = vec![1u8; 2048 * 1024 * 4];
    let e = g.scattered_backing(&px);
    for id in 1..=128 {
        assert_eq!(g.create_2d(id, B8G8R8X8, 2048, 1024), OK_NODATA);
        assert_eq!(g.attach_backing(id, &e), OK_NODATA);
        assert_eq!(g.transfer(id, (0, 0, 2048, 1024), 2048 * 4), OK_NODATA);
    }
    let peak = rss_kib(b.pid()) as f64;
    for id in 1..=128 {
        assert_eq!(g.unref(id), OK_NODATA);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(b.pid()) as f64;
    eprintln!(
        "  {}: RSS idle {idle} KiB, with 1 GiB of resources {peak} KiB, after freeing {after} KiB",
        t.name
    );
    (
        Stat {
            median: idle,
            p99: idle,
        },
        Stat {
            median: after,
            p99: after,
        },
    )
}

/// From exec to the socket being there: milliseconds.
fn startup(t: &Target, n: usize) -> Vec<f64> {
    let dir = std::env::temp_dir().join(format!("vhost-gpu-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("s.sock");
    let ms = (0..n)
        .map(|_| {
            let _ = std::fs::remove_file(&sock);
            let t0 = Instant::now();
            let mut c = std::process::Command::new(&t.bin)
                .args(&t.args)
                .arg("--socket-path")
                .arg(&sock)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            while !sock.exists() {
                std::thread::sleep(Duration::from_micros(100));
                assert!(t0.elapsed() < Duration::from_secs(10));
            }
            let el = t0.elapsed().as_secs_f64() * 1e3;
            let _ = c.kill();
            let _ = c.wait();
            el
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    ms
}

/// virgl on llvmpipe: fence round trip of an empty SUBMIT_3D (µs), clear + readback of a 1080p
/// render target (ms).
fn virgl(n: usize) -> Option<(Stat, Stat)> {
    let t = Target {
        name: "vhost-gpu virgl",
        bin: binary_path_ours(),
        args: vec!["--virgl".into()],
    };
    std::env::set_var("VHOST_GPU_BIN", &t.bin);
    let b = Backend::start(&BackendOptions {
        args: t.args.clone(),
    });
    let mut g = Gpu::connect(
        &b,
        &ConnectOptions {
            mem_size: 256 << 20,
            ..Default::default()
        },
    );
    if g.ctx_create(1, 0, "bench") != OK_NODATA {
        return None;
    }
    let mut fence = 0u64;
    let rtt = time(n, n / 10 + 5, || {
        fence += 1;
        let r = g.ctrl(
            Gpu::submit_msg(Msg::hdr(SUBMIT_3D, FLAG_FENCE, fence, 1, 0), &[]),
            24,
        );
        assert_eq!(r.code(), OK_NODATA);
    });
    use guest_tests::wire::virgl::*;
    assert_eq!(
        g.create_3d(
            10,
            PIPE_TEXTURE_2D,
            FORMAT_B8G8R8A8_UNORM,
            BIND_RENDER_TARGET,
            FW,
            FH,
            1,
            0
        ),
        OK_NODATA
    );
    let e = g.scattered_backing(&vec![0u8; (FW * FH * 4) as usize]);
    assert_eq!(g.attach_backing(10, &e), OK_NODATA);
    assert_eq!(g.ctx_attach(1, 10), OK_NODATA);
    let clear_rb = time(n.div_ceil(10).max(5), 3, || {
        fence += 1;
        let r = g.ctrl(
            Gpu::submit_msg(
                Msg::hdr(SUBMIT_3D, 0, 0, 1, 0),
                &clear(1, 10, [0.2, 0.4, 0.6, 1.0]),
            ),
            24,
        );
        assert_eq!(r.code(), OK_NODATA);
        let m = Gpu::transfer_3d_msg(
            Msg::hdr(TRANSFER_FROM_HOST_3D, FLAG_FENCE, fence, 1, 0),
            10,
            [0, 0, 0, FW, FH, 1],
            0,
            0,
            FW * 4,
        );
        assert_eq!(g.ctrl(m, 24).code(), OK_NODATA);
    });
    Some((
        stat(rtt.into_iter().map(|s| s * 1e6).collect()),
        stat(clear_rb.into_iter().map(|s| s * 1e3).collect()),
    ))
}

/// MAP_BLOB and UNMAP_BLOB round trips of a 64 KiB Venus blob (the backend exports it and asks
/// the frontend to map it, SHMEM_MAP, and waits for the answer before replying), with the
/// control round trip on the same connection as the baseline; in µs. None where the backend
/// offers no host-visible memory (no Venus: the Debian 13 stack has it).
fn hostmem(n: usize) -> Option<(Stat, Stat, Stat)> {
    std::env::set_var("VHOST_GPU_BIN", binary_path_ours());
    let b = Backend::start(&BackendOptions {
        args: vec!["--virgl".into()],
    });
    pin(b.pid(), 1);
    let mut g = Gpu::connect(
        &b,
        &ConnectOptions {
            mem_size: 256 << 20,
            shmem: true,
            ..Default::default()
        },
    );
    if g.conn.shmem.is_none() {
        eprintln!("  not measured: this backend offers no host-visible memory (no Venus here)");
        return None;
    }
    assert_eq!(g.ctx_create(1, CAPSET_VENUS, "bench"), OK_NODATA);
    assert_eq!(g.create_2d(1, B8G8R8X8, 1, 1), OK_NODATA);
    let base = time(n, n / 10 + 5, || {
        assert_eq!(g.flush(1, (0, 0, 1, 1)), OK_NODATA)
    });
    assert_eq!(
        g.create_blob(1, 2, BLOB_MEM_HOST3D, BLOB_FLAG_MAPPABLE, 0, 64 << 10, &[]),
        OK_NODATA
    );
    let (mut map, mut unmap) = (Vec::new(), Vec::new());
    for i in 0..n + n / 10 + 5 {
        let t = Instant::now();
        assert_eq!(g.map_blob(2, (i as u64 % 16) << 16).code(), OK_MAP_INFO);
        let m = t.elapsed().as_secs_f64();
        let t = Instant::now();
        assert_eq!(g.unmap_blob(2), OK_NODATA);
        let u = t.elapsed().as_secs_f64();
        if i >= n / 10 + 5 {
            map.push(m * 1e6);
            unmap.push(u * 1e6);
        }
    }
    Some((
        stat(map),
        stat(unmap),
        stat(base.into_iter().map(|s| s * 1e6).collect()),
    ))
}

/// Our binary, resolved once before any workload points VHOST_GPU_BIN elsewhere.
fn binary_path_ours() -> PathBuf {
    static OURS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    OURS.get_or_init(|| {
        std::env::var_os("VHOST_GPU_OURS")
            .map(PathBuf::from)
            .unwrap_or_else(binary_path)
    })
    .clone()
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(0, |v| v.get());
    pin(0, 0);
    let o = parse();
    binary_path_ours();
    let n = o.iterations;
    let ours = Target {
        name: "vhost-gpu",
        bin: binary_path_ours(),
        args: vec!["--renderer".into(), "2d".into()],
    };
    let theirs = o.theirs.as_ref().map(|p| Target {
        name: "qemu vhost-user-gpu",
        bin: p.clone(),
        args: vec![],
    });
    // Ours and theirs alternate over a few rounds, each with a fresh process, and the samples
    // are pooled: which CPU a process lands on moves a small VM's numbers more than anything.
    const ROUNDS: usize = 3;
    let nr = (n / ROUNDS).max(5);
    let both = |f: &dyn Fn(&Target) -> Vec<f64>| {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            a.extend(f(&ours));
            if let Some(t) = &theirs {
                b.extend(f(t));
            }
        }
        (stat(a), theirs.as_ref().map(|_| stat(b)))
    };
    let mut rows = Vec::new();
    let run = |name: &str| o.only.as_ref().is_none_or(|w| name.contains(w.as_str()));

    if run("round trip") {
        eprintln!("round trip...");
        let (a, b) = both(&|t| round_trip(t, nr));
        rows.push(Row {
            name: "control round trip (1x1 flush)".into(),
            unit: "µs",
            ours: a,
            theirs: b,
            baseline: Some(("2 eventfd wake-ups", wakeup_floor(n))),
            higher_better: false,
        });
        let poll = Target {
            args: vec![
                "--renderer".into(),
                "2d".into(),
                "--poll-us".into(),
                "10".into(),
            ],
            ..ours.clone()
        };
        let (a, b) = (
            stat(round_trip(&poll, n)),
            theirs.as_ref().map(|t| stat(round_trip(t, n))),
        );
        rows.push(Row {
            name: "  same, ring polling on (--poll-us 10)".into(),
            unit: "µs",
            ours: a,
            theirs: b,
            baseline: None,
            higher_better: false,
        });
    }
    if run("throughput") {
        eprintln!("throughput...");
        let (a, b) = both(&|t| throughput(t, nr));
        rows.push(Row {
            name: "batched commands (100 per kick)".into(),
            unit: "cmd/s",
            ours: a,
            theirs: b,
            baseline: None,
            higher_better: true,
        });
    }
    if run("upload") {
        eprintln!("upload...");
        let base = memcpy_baseline(n);
        let (a, b) = both(&|t| upload(t, nr));
        rows.push(Row {
            name: "2D upload 1080p, 4 KiB pages".into(),
            unit: "GB/s",
            ours: a,
            theirs: b,
            baseline: Some(("memcpy", base)),
            higher_better: true,
        });
        let pages = scattered_baseline(n, false);
        rows.push(Row {
            name: "  same, vs gathering the pages in-process".into(),
            unit: "GB/s",
            ours: a,
            theirs: b,
            baseline: Some(("page gather", pages)),
            higher_better: true,
        });
        let rows_split = scattered_baseline(n, true);
        rows.push(Row {
            name: "  same, vs that gather cut at rows as rutabaga copies".into(),
            unit: "GB/s",
            ours: a,
            theirs: b,
            baseline: Some(("row-cut gather", rows_split)),
            higher_better: true,
        });
    }
    if run("display path") {
        eprintln!("display path...");
        let (a, b) = both(&|t| display_path(t, nr));
        rows.push(Row {
            name: "transfer+flush 1080p to UPDATE".into(),
            unit: "fps",
            ours: a,
            theirs: b,
            baseline: None,
            higher_better: true,
        });
    }
    if run("vnc") {
        eprintln!("vnc...");
        let nv = (n / 20).max(10);
        let q = |level: i32| vnc::TIGHT_QUALITY_0 + level;
        for (encs, name) in [
            (&[vnc::ZRLE][..], "ZRLE"),
            (&[vnc::RAW][..], "Raw"),
            (&[vnc::TIGHT][..], "Tight, lossless"),
            (&[vnc::TIGHT, q(6)][..], "Tight, JPEG quality 6"),
            (&[vnc::TIGHT, q(9)][..], "Tight, JPEG quality 9"),
        ] {
            let (v, chan, kb) = vnc_latency(nv, encs);
            rows.push(Row {
                name: format!(
                    "VNC: 1080p flush to client has it ({name}, Unix socket; {kb:.0} KB a frame)"
                ),
                unit: "ms",
                ours: v,
                theirs: None,
                baseline: Some(("flush to display-channel UPDATE", chan)),
                higher_better: false,
            });
        }
        let none = vnc_cpu(nv, 0, &[]);
        const JPEG6: &[i32] = &[vnc::TIGHT, vnc::TIGHT_QUALITY_0 + 6];
        for (k, encs, name) in [
            (1, &[vnc::ZRLE][..], "ZRLE"),
            (2, &[vnc::ZRLE][..], "ZRLE"),
            (1, JPEG6, "Tight JPEG 6"),
            (2, JPEG6, "Tight JPEG 6"),
        ] {
            rows.push(Row {
                name: format!("VNC: vhost-gpu CPU per 1080p frame, {k} {name} client(s)"),
                unit: "ms",
                ours: vnc_cpu(nv, k, encs),
                theirs: None,
                baseline: Some(("no client", none)),
                higher_better: false,
            });
        }
    }
    if run("memory") {
        eprintln!("memory...");
        let (oi, oa) = memory(&ours);
        let t = theirs.as_ref().map(memory);
        rows.push(Row {
            name: "RSS idle (less guest memory)".into(),
            unit: "KiB",
            ours: oi,
            theirs: t.map(|x| x.0),
            baseline: None,
            higher_better: false,
        });
        rows.push(Row {
            name: "RSS after 1 GiB created+freed".into(),
            unit: "KiB",
            ours: oa,
            theirs: t.map(|x| x.1),
            baseline: Some(("own idle", oi)),
            higher_better: false,
        });
    }
    if run("startup") {
        eprintln!("startup...");
        let (a, b) = both(&|t| startup(t, nr.div_ceil(50).max(5)));
        rows.push(Row {
            name: "startup to listening".into(),
            unit: "ms",
            ours: a,
            theirs: b,
            baseline: None,
            higher_better: false,
        });
    }
    if run("virgl") {
        eprintln!("virgl...");
        if let Some((rtt, crb)) = virgl(n) {
            rows.push(Row {
                name: "virgl fence round trip (empty SUBMIT_3D)".into(),
                unit: "µs",
                ours: rtt,
                theirs: None,
                baseline: None,
                higher_better: false,
            });
            rows.push(Row {
                name: "virgl clear + readback 1080p".into(),
                unit: "ms",
                ours: crb,
                theirs: None,
                baseline: None,
                higher_better: false,
            });
        }
    }
    if run("hostmem") {
        eprintln!("hostmem...");
        if let Some((map, unmap, base)) = hostmem(n) {
            for (name, st) in [
                ("MAP_BLOB round trip, 64 KiB Venus blob (SHMEM_MAP)", map),
                ("UNMAP_BLOB round trip (SHMEM_UNMAP)", unmap),
            ] {
                rows.push(Row {
                    name: name.into(),
                    unit: "µs",
                    ours: st,
                    theirs: None,
                    baseline: Some(("control round trip", base)),
                    higher_better: false,
                });
            }
        }
    }

    // Table.
    let mut out = String::new();
    let _ = writeln!(out, "| workload | unit | vhost-gpu median | p99 | QEMU median | p99 | ours/QEMU | baseline | ours/baseline |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let mut json = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        let ratio = r.theirs.map(|t| r.ours.median / t.median);
        let f = |v: f64| {
            if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.3}")
            }
        };
        let (bname, bratio) = r.baseline.map_or(("".to_string(), None), |(n, b)| {
            (
                format!("{n} {}", f(b.median)),
                Some(r.ours.median / b.median),
            )
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.unit,
            f(r.ours.median),
            f(r.ours.p99),
            r.theirs.map_or("-".into(), |t| f(t.median)),
            r.theirs.map_or("-".into(), |t| f(t.p99)),
            ratio.map_or("-".into(), |x| format!("{x:.2}")),
            bname,
            bratio.map_or("-".into(), |x| format!("{x:.2}")),
        );
        let _ = writeln!(
            json,
            "  {{\"workload\": \"{}\", \"unit\": \"{}\", \"higher_is_better\": {}, \"ours\": {}, \"theirs\": {}, \"ours_over_theirs\": {}, \"baseline\": {}, \"ours_over_baseline\": {}}}{}",
            r.name, r.unit, r.higher_better, r.ours.json(None),
            r.theirs.map_or("null".into(), |t| t.json(None)),
            ratio.map_or("null".into(), |x| format!("{x}")),
            r.baseline.map_or("null".into(), |(n, b)| b.json(Some(n))),
            bratio.map_or("null".into(), |x| format!("{x}")),
            if i + 1 < rows.len() { "," } else { "" }
        );
    }
    json.push_str("]\n");
    println!("{out}");
    println!("iterations: {n}; machine: {} cores", cores);
    if let Some(p) = o.json {
        std::fs::write(&p, json).expect("write JSON");
        println!("JSON: {}", p.display());
    }
}
