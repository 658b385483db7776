//! Starts the real `vhost-gpu` binary and connects to it as a vhost-user frontend, in the order
//! QEMU 10 does.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::display::{DisplayConfig, DisplayServer};
use crate::memory::GuestMemory;
use crate::virtqueue::Virtqueue;
use crate::wire::{F_EDID, F_PROTOCOL_FEATURES, F_RESOURCE_UUID, F_RING_EVENT_IDX, F_VERSION_1};

/// vhost-user request VHOST_USER_GPU_SET_SOCKET (not in the `vhost` crate's frontend).
const GPU_SET_SOCKET: u32 = 33;
/// vhost-user header flags: protocol version 1.
const VHOST_USER_VERSION: u32 = 0x1;

/// The path of the `vhost-gpu` binary under test: `$VHOST_GPU_BIN`, or the workspace's
/// target directory (release first when `VHOST_GPU_PROFILE=release`).
pub fn binary_path() -> PathBuf {
    if let Ok(p) = std::env::var("VHOST_GPU_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = std::env::var("VHOST_GPU_PROFILE").unwrap_or_else(|_| "debug".into());
    let p = target.join(profile).join("vhost-gpu");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build --workspace --bins), or set VHOST_GPU_BIN",
        p.display()
    );
    p
}

/// The `vhost-gpu` binary to run as on a fresh host: `home` (made, empty unless the caller
/// filled it) as HOME, no XDG_CACHE_HOME, nothing Mesa-specific inherited.
pub fn command_in(home: &Path) -> Command {
    std::fs::create_dir_all(home).unwrap();
    let mut c = crate::host::command(binary_path());
    c.env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("MESA_SHADER_CACHE_DIR")
        .env_remove("MESA_SHADER_CACHE_DISABLE")
        .env_remove("MESA_GLSL_CACHE_DIR");
    c
}

/// [`command_in`] with a new empty home under the system's temporary directory.
pub fn fresh_command() -> Command {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    command_in(&std::env::temp_dir().join(format!("vhost-gpu-home-{}-{n}", std::process::id())))
}

/// Options for starting the backend.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// Extra command-line arguments.
    pub args: Vec<String>,
}

/// A running `vhost-gpu` process, killed on drop.
pub struct Backend {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    dir: PathBuf,
}

impl Backend {
    /// Starts the binary with `--socket-path` in a fresh temp dir, with an empty home directory
    /// as its HOME (so Mesa's shader cache starts empty, as on a fresh host), and waits for the
    /// socket.
    pub fn start(opts: &BackendOptions) -> Self {
        Self::start_with_home(opts, None)
    }

    /// [`Backend::start`] with `home` as HOME instead of a new empty one (a second run on the
    /// same shader cache).
    pub fn start_with_home(opts: &BackendOptions, home: Option<&Path>) -> Self {
        Self::start_with_env(opts, home, &[])
    }

    /// [`Backend::start_with_home`] with more environment variables, e.g. LD_LIBRARY_PATH
    /// for another virglrenderer than the one it was built against.
    pub fn start_with_env(
        opts: &BackendOptions,
        home: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "vhost-gpu-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("gpu.sock");
        let log = dir.join("backend.log");
        let logf = std::fs::File::create(&log).unwrap();
        let home = home.map_or_else(|| dir.join("home"), Path::to_path_buf);
        let child = command_in(&home)
            .arg("--socket-path")
            .arg(&socket)
            .args(&opts.args)
            // More arguments for every backend of a run, e.g. a render node to run the virgl
            // tests on: VHOST_GPU_TEST_ARGS="--render-node /dev/dri/renderD128".
            .args(
                std::env::var("VHOST_GPU_TEST_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env(
                "RUST_LOG",
                std::env::var("VHOST_GPU_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start vhost-gpu");
        let mut b = Backend {
            child,
            socket,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !b.socket.exists() {
            if let Ok(Some(st)) = b.child.try_wait() {
                panic!(
                    "vhost-gpu exited ({st}) before listening:\n{}",
                    b.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "vhost-gpu did not listen:\n{}",
                b.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        b
    }

    /// The backend's log so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every thread of the backend and of its descendants (the render server and its
    /// workers): process, thread name, state, the kernel function it sleeps in, and the
    /// system call it is in. For a hang's report: what each thread was waiting for.
    pub fn thread_dump(&self) -> String {
        thread_dump(self.pid())
    }

    /// A field of the process's `/proc/PID/status`, e.g. `"Seccomp"` → `"2"`.
    pub fn status_field(&self, key: &str) -> String {
        status_field(Path::new(&format!("/proc/{}/status", self.pid())), key)
    }

    /// Resident anonymous memory (its own heap and mappings), in KiB. Guest memory the
    /// backend maps is shared memory (RssShmem): the guest's RAM, which the guest touches as it
    /// likes (this harness never reuses its pinned pages), so it is not the backend's to leak.
    pub fn rss_anon_kib(&self) -> u64 {
        let v = self.status_field("RssAnon");
        v.trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("RssAnon {v:?}"))
    }

    /// [`Backend::rss_anon_kib`] once the backend is idle: the least of five readings 100 ms
    /// apart, after 300 ms. Frames still on their way to the display channel and buffers
    /// malloc has not yet handed back come and go; a leak stays.
    pub fn settled_rss_anon_kib(&self) -> u64 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        (0..5)
            .map(|i| {
                if i > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                self.rss_anon_kib()
            })
            .min()
            .unwrap_or(0)
    }

    /// The backend's own temporary directory (socket, log; a place for a capture dir).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- vhost-gpu log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // VHOST_GPU_TEST_LOG_DIR=DIR keeps every backend's log there (as vhost-gpu-PID.log).
        if let Some(keep) = std::env::var_os("VHOST_GPU_TEST_LOG_DIR") {
            let to = Path::new(&keep).join(format!("vhost-gpu-{}.log", self.child.id()));
            let _ = std::fs::copy(&self.log, to);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How a connection is set up.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Guest memory size.
    pub mem_size: u64,
    /// Queue size of each queue.
    pub queue_size: u16,
    /// Give the backend a display channel, answered with this config.
    pub display: Option<DisplayConfig>,
    /// Ack VIRTIO_RING_F_EVENT_IDX when the device offers it, as Linux's virtio_ring does.
    pub event_idx: bool,
    /// Which frontend's vhost-user set-up to play.
    pub profile: Profile,
    /// Take host-visible memory as QEMU 11.1's generic device does: ack SHMEM and
    /// BACKEND_REQ when offered, open the backend request channel, make the regions
    /// GET_SHMEM_CONFIG asks for and map there what the backend asks (QEMU profile only).
    pub shmem: bool,
    /// Ack BACKEND_REQ when offered and open the backend request channel even without
    /// shared memory (as QEMU does whenever the backend offers it): config-change messages.
    pub backend_channel: bool,
}

/// The vhost-user frontend a connection plays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profile {
    /// QEMU 10's vhost-user-gpu-pci (hw/display/vhost-user-gpu.c, hw/virtio/vhost-user.c).
    #[default]
    Qemu,
    /// cloud-hypervisor's `--generic-vhost-user` (virtio-devices/src/vhost_user/
    /// generic_vhost_user.rs and vu_common_ctrl.rs at commit ae44c29, August 2026): it offers
    /// the guest only its DEFAULT_VIRTIO_FEATURES (no device feature bits: no VIRGL, no EDID),
    /// offers CONFIG | MQ | CONFIGURE_MEM_SLOTS | REPLY_ACK | INFLIGHT_SHMFD | LOG_SHMFD |
    /// DEVICE_STATE | BACKEND_REQ, asks GET_QUEUE_NUM under MQ, reads the config space with
    /// GET_CONFIG at the guest's own offsets (flags empty), sets every message NEED_REPLY
    /// under REPLY_ACK, enables the vrings after all are set, and never sends a display
    /// channel.
    CloudHypervisorGeneric,
    /// A generic frontend that passes the device's feature bits through (as QEMU >= 11.1's
    /// vhost-user-test-device-pci does, which tests/vm/generic.rs runs for real): QEMU's set-up,
    /// all device features, no display channel.
    GenericPassThrough,
}

/// cloud-hypervisor's DEFAULT_VIRTIO_FEATURES: INDIRECT_DESC, EVENT_IDX, VERSION_1, IN_ORDER,
/// ORDER_PLATFORM, NOTIFICATION_DATA, PROTOCOL_FEATURES, LOG_ALL.
pub const CLOUD_HYPERVISOR_FEATURES: u64 =
    (1 << 28) | (1 << 29) | (1 << 32) | (1 << 35) | (1 << 36) | (1 << 38) | (1 << 30) | (1 << 26);

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            mem_size: 128 << 20,
            queue_size: 256,
            display: Some(DisplayConfig {
                protocol_features: 1,
                ..Default::default()
            }),
            event_idx: true,
            profile: Profile::Qemu,
            shmem: false,
            backend_channel: false,
        }
    }
}

/// One frontend connection: vhost-user socket, guest memory, the two queues, the display.
pub struct Connection {
    pub frontend: Frontend,
    pub mem: GuestMemory,
    pub queues: Vec<Virtqueue>,
    /// Whether VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub event_idx: bool,
    pub display: Option<DisplayServer>,
    /// Virtio features the device offered.
    pub device_features: u64,
    /// Virtio features the frontend offered the guest (the profile's mask of the above).
    pub guest_features: u64,
    /// Config space as read at connect: events_read, events_clear, num_scanouts, num_capsets.
    pub config: [u32; 4],
    /// The host-visible region and its backend request channel (`ConnectOptions::shmem`, when
    /// the backend offered SHMEM).
    pub shmem: Option<crate::shmem::SharedMemory>,
}

fn sock_err(what: &str, e: impl std::fmt::Debug) -> String {
    format!("{what}: {e:?}")
}

/// SET_VRING_ADDR's host addresses for a queue laid out in `mem`.
fn vring_addrs(mem: &GuestMemory, vq: &Virtqueue, size: u16) -> VringConfigData {
    VringConfigData {
        queue_max_size: size,
        queue_size: size,
        flags: 0,
        desc_table_addr: mem.host_addr(vq.desc),
        used_ring_addr: mem.host_addr(vq.used),
        avail_ring_addr: mem.host_addr(vq.avail),
        log_addr: None,
    }
}

/// Makes `size` bytes of memfd guest memory and hands it to the backend (SET_MEM_TABLE).
fn share_memory(fe: &mut Frontend, size: u64) -> Result<GuestMemory, String> {
    let mem = GuestMemory::new(size).map_err(|e| sock_err("memfd", e))?;
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: crate::memory::BASE,
        memory_size: size,
        userspace_addr: mem.host_addr(crate::memory::BASE),
        mmap_offset: 0,
        mmap_handle: mem.raw_fd(),
    };
    fe.set_mem_table(&[region])
        .map_err(|e| sock_err("set_mem_table", e))?;
    Ok(mem)
}

impl Connection {
    /// Connects and brings the device up the way QEMU 10 does.
    pub fn connect(socket: &Path, opts: &ConnectOptions) -> Result<Self, String> {
        let stream = UnixStream::connect(socket).map_err(|e| sock_err("connect", e))?;
        Self::over_stream(stream, opts)
    }

    /// Brings the device up over an already connected socket (libvirt's socket pair).
    pub fn over_stream(stream: UnixStream, opts: &ConnectOptions) -> Result<Self, String> {
        if opts.profile == Profile::CloudHypervisorGeneric {
            return Self::cloud_hypervisor(stream, opts);
        }
        let raw = stream.try_clone().map_err(|e| sock_err("clone", e))?;
        let mut fe = Frontend::from_stream(stream, 2);
        fe.set_owner().map_err(|e| sock_err("set_owner", e))?;
        let device_features = fe.get_features().map_err(|e| sock_err("get_features", e))?;
        let pf = fe
            .get_protocol_features()
            .map_err(|e| sock_err("get_protocol_features", e))?;
        let mut want = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if opts.shmem {
            want |= VhostUserProtocolFeatures::SHMEM | VhostUserProtocolFeatures::BACKEND_REQ;
        }
        if opts.backend_channel {
            want |= VhostUserProtocolFeatures::BACKEND_REQ;
        }
        fe.set_protocol_features(pf & want)
            .map_err(|e| sock_err("set_protocol_features", e))?;
        // QEMU 11.1's generic device: the backend request channel, then the regions, each
        // made the size the backend asks for.
        let shm = VhostUserProtocolFeatures::SHMEM | VhostUserProtocolFeatures::BACKEND_REQ;
        let shmem = if opts.shmem && pf.contains(shm) {
            let cfg = fe
                .get_shmem_config()
                .map_err(|e| sock_err("get_shmem_config", e))?;
            let id = usize::from(crate::shmem::SHM_ID_HOST_VISIBLE);
            if cfg.nregions as usize <= id || cfg.memory_sizes[id] == 0 {
                return Err(format!(
                    "GET_SHMEM_CONFIG: no region {id} ({} regions)",
                    cfg.nregions
                ));
            }
            let sm = crate::shmem::SharedMemory::start(cfg.memory_sizes[id])?;
            fe.set_backend_request_fd(&sm.backend_end())
                .map_err(|e| sock_err("set_backend_request_fd", e))?;
            Some(sm)
        } else if opts.backend_channel && pf.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            let sm = crate::shmem::SharedMemory::start(0)?;
            fe.set_backend_request_fd(&sm.backend_end())
                .map_err(|e| sock_err("set_backend_request_fd", e))?;
            Some(sm)
        } else {
            None
        };
        let nq = fe
            .get_queue_num()
            .map_err(|e| sock_err("get_queue_num", e))?;
        if nq < 2 {
            return Err(format!("device has {nq} queues"));
        }
        let (_, cfg) = fe
            .get_config(0, 16, VhostUserConfigFlags::WRITABLE, &[0u8; 16])
            .map_err(|e| sock_err("get_config", e))?;
        let config = [0, 4, 8, 12].map(|o| crate::wire::le32(&cfg, o));

        let display = match &opts.display {
            Some(_) if opts.profile == Profile::GenericPassThrough => None,
            Some(dc) => {
                let (ours, theirs) = UnixStream::pair().map_err(|e| sock_err("socketpair", e))?;
                let hdr = crate::wire::Msg::default()
                    .u32(GPU_SET_SOCKET)
                    .u32(VHOST_USER_VERSION)
                    .u32(0);
                raw.send_with_fd(&hdr.0[..], theirs.as_raw_fd())
                    .map_err(|e| sock_err("GPU_SET_SOCKET", e))?;
                drop(theirs);
                Some(DisplayServer::start(ours, dc.clone()))
            }
            None => None,
        };

        let ring = if opts.event_idx { F_RING_EVENT_IDX } else { 0 };
        let acked =
            device_features & (F_VERSION_1 | F_EDID | F_RESOURCE_UUID | F_PROTOCOL_FEATURES | ring);
        fe.set_features(acked)
            .map_err(|e| sock_err("set_features", e))?;
        let mem = share_memory(&mut fe, opts.mem_size)?;

        let mut conn = Connection {
            frontend: fe,
            mem,
            queues: Vec::new(),
            event_idx: acked & F_RING_EVENT_IDX != 0,
            display,
            device_features,
            guest_features: device_features,
            config,
            shmem,
        };
        conn.start_queues(opts.queue_size)?;
        Ok(conn)
    }

    /// cloud-hypervisor's generic vhost-user set-up (see [`Profile::CloudHypervisorGeneric`]).
    fn cloud_hypervisor(stream: UnixStream, opts: &ConnectOptions) -> Result<Self, String> {
        let mut fe = Frontend::from_stream(stream, 2);
        // connect_vhost_user: SET_OWNER, GET_FEATURES.
        fe.set_owner().map_err(|e| sock_err("set_owner", e))?;
        let device_features = fe.get_features().map_err(|e| sock_err("get_features", e))?;
        // negotiate_features_vhost_user.
        let acked = CLOUD_HYPERVISOR_FEATURES & device_features;
        let mut acked_pf = VhostUserProtocolFeatures::empty();
        if acked & F_PROTOCOL_FEATURES != 0 {
            let offered = VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::INFLIGHT_SHMFD
                | VhostUserProtocolFeatures::LOG_SHMFD
                | VhostUserProtocolFeatures::DEVICE_STATE
                | VhostUserProtocolFeatures::BACKEND_REQ;
            let pf = fe
                .get_protocol_features()
                .map_err(|e| sock_err("get_protocol_features", e))?;
            acked_pf = offered & pf;
            fe.set_protocol_features(acked_pf)
                .map_err(|e| sock_err("set_protocol_features", e))?;
            if acked_pf.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                fe.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        if acked_pf.contains(VhostUserProtocolFeatures::MQ) {
            let nq = fe
                .get_queue_num()
                .map_err(|e| sock_err("get_queue_num", e))?;
            if nq < 2 {
                return Err(format!("device has {nq} queues; queue_sizes has 2"));
            }
        }
        // The guest's driver reads the config fields one by one; each read is a GET_CONFIG.
        if !acked_pf.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err("no CONFIG protocol feature: the guest would read 0xff".into());
        }
        let mut config = [0u32; 4];
        for (i, c) in config.iter_mut().enumerate() {
            let off = (i * 4) as u32;
            let (_, v) = fe
                .get_config(off, 4, VhostUserConfigFlags::empty(), &[0u8; 4])
                .map_err(|e| sock_err("get_config", e))?;
            *c = crate::wire::le32(&v, 0);
        }
        // The guest acks what it was offered (Linux: VERSION_1, EVENT_IDX, INDIRECT_DESC);
        // activate sends them with the frontend's own bits, masked by the device's.
        let ring = if opts.event_idx { F_RING_EVENT_IDX } else { 0 };
        let guest_acked = acked & (F_VERSION_1 | ring | (1 << 28));
        let set = (guest_acked | (acked & F_PROTOCOL_FEATURES)) & device_features;
        fe.set_features(set)
            .map_err(|e| sock_err("set_features", e))?;
        let mem = share_memory(&mut fe, opts.mem_size)?;
        let mut conn = Connection {
            frontend: fe,
            mem,
            queues: Vec::new(),
            event_idx: set & F_RING_EVENT_IDX != 0,
            display: None,
            device_features,
            guest_features: acked,
            config,
            shmem: None,
        };
        // setup_vhost_user: SET_VRING_NUM for all, then per queue ADDR, BASE (the avail
        // index), CALL, KICK; then every queue enabled.
        let (fe, mem) = (&mut conn.frontend, &conn.mem);
        let size = opts.queue_size;
        let vqs: Vec<Virtqueue> = (0..2usize)
            .map(|q| {
                let base = crate::memory::BASE + (q as u64) * (256 << 10);
                Virtqueue::new(mem, base, size, conn.event_idx)
            })
            .collect();
        for q in 0..2 {
            fe.set_vring_num(q, size)
                .map_err(|e| sock_err("set_vring_num", e))?;
        }
        for (q, vq) in vqs.iter().enumerate() {
            fe.set_vring_addr(q, &vring_addrs(mem, vq, size))
                .map_err(|e| sock_err("set_vring_addr", e))?;
            fe.set_vring_base(q, 0)
                .map_err(|e| sock_err("set_vring_base", e))?;
            fe.set_vring_call(q, &vq.call)
                .map_err(|e| sock_err("set_vring_call", e))?;
            fe.set_vring_kick(q, &vq.kick)
                .map_err(|e| sock_err("set_vring_kick", e))?;
        }
        for q in 0..2 {
            fe.set_vring_enable(q, true)
                .map_err(|e| sock_err("set_vring_enable", e))?;
        }
        conn.queues = vqs;
        Ok(conn)
    }

    /// Stops both queues the way QEMU does at guest reset / power-off (GET_VRING_BASE).
    pub fn stop_queues(&mut self) -> Result<(), String> {
        for q in 0..self.queues.len() {
            self.frontend
                .get_vring_base(q)
                .map_err(|e| sock_err("get_vring_base", e))?;
        }
        self.queues.clear();
        Ok(())
    }

    /// Lays out fresh queues and starts them (as after a guest reset).
    pub fn start_queues(&mut self, queue_size: u16) -> Result<(), String> {
        let (fe, mem) = (&mut self.frontend, &self.mem);
        let mut queues = Vec::new();
        for q in 0..2usize {
            let base = crate::memory::BASE + (q as u64) * (256 << 10);
            let vq = Virtqueue::new(mem, base, queue_size, self.event_idx);
            let opts = ConnectOptions {
                queue_size,
                ..Default::default()
            };
            fe.set_vring_num(q, opts.queue_size)
                .map_err(|e| sock_err("set_vring_num", e))?;
            fe.set_vring_addr(q, &vring_addrs(mem, &vq, opts.queue_size))
                .map_err(|e| sock_err("set_vring_addr", e))?;
            fe.set_vring_base(q, 0)
                .map_err(|e| sock_err("set_vring_base", e))?;
            fe.set_vring_call(q, &vq.call)
                .map_err(|e| sock_err("set_vring_call", e))?;
            fe.set_vring_kick(q, &vq.kick)
                .map_err(|e| sock_err("set_vring_kick", e))?;
            fe.set_vring_enable(q, true)
                .map_err(|e| sock_err("set_vring_enable", e))?;
            queues.push(vq);
        }
        self.queues = queues;
        Ok(())
    }
}

/// A field of a `/proc/.../status` file, trimmed.
pub fn status_field(status: &Path, key: &str) -> String {
    let text =
        std::fs::read_to_string(status).unwrap_or_else(|e| panic!("{}: {e}", status.display()));
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {key} in {}", status.display()))
}

/// The parent pid of a process, from `/proc/PID/stat` (after the command's closing paren).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `root` and its descendants, parents before their children.
pub(crate) fn process_tree(root: u32) -> Vec<u32> {
    let mut tree = vec![root];
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // Repeat until no process joins.
    loop {
        let before = tree.len();
        for &p in &all {
            if !tree.contains(&p) && parent_of(p).is_some_and(|pp| tree.contains(&pp)) {
                tree.push(p);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

/// Every thread's user-space stack in the process tree at `root`, from gdb (`thread apply all
/// bt`, after the libraries' load addresses), when gdb is installed: for a hang's report.
/// Attaching stops each process for a moment.
pub fn stacks(root: u32) -> String {
    let mut out = String::new();
    // Processes that run inside the Debian 13 root (scripts/in-root) load its libraries: gdb
    // reads their unwind tables and symbols from there.
    let sysroot = format!(
        "set sysroot {}",
        std::env::var("VHOST_GPU_HOST_ROOT").unwrap_or_default()
    );
    for pid in process_tree(root) {
        // The executable named (gdb finds it through /proc/PID/exe only outside a root).
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let r = Command::new("gdb")
            .args([
                "-batch",
                "-nx",
                "-iex",
                "set debuginfod enabled off",
                "-iex",
                &sysroot,
                &exe,
                "-p",
                &pid.to_string(),
                "-ex",
                "info sharedlibrary",
                "-ex",
                "thread apply all bt 30",
            ])
            .stdin(Stdio::null())
            .output();
        match r {
            Ok(o) => {
                out.push_str(&format!("=== gdb -p {pid}\n"));
                out.push_str(&String::from_utf8_lossy(&o.stdout));
                // Where each object is mapped, for the frames gdb could not name.
                let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
                out.push_str(&format!("=== /proc/{pid}/maps (executable mappings)\n"));
                for l in maps
                    .lines()
                    .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
                {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            Err(e) => {
                out.push_str(&format!("(no stacks: gdb: {e})\n"));
                break;
            }
        }
    }
    out
}

/// A process's CPU time (user + system), in seconds, from `/proc/PID/stat`.
pub fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (field(11) + field(12)) / hz
}

/// [`Backend::thread_dump`] for any process tree rooted at `root`.
pub fn thread_dump(root: u32) -> String {
    let tree = process_tree(root);
    let read = |p: String| std::fs::read_to_string(p).unwrap_or_default();
    let mut out = String::new();
    for pid in tree {
        let cmd = read(format!("/proc/{pid}/cmdline")).replace('\0', " ");
        out.push_str(&format!("process {pid}: {}\n", cmd.trim()));
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        let mut tids: Vec<u32> = tasks
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable();
        for tid in tids {
            let t = format!("/proc/{pid}/task/{tid}");
            let state = read(format!("{t}/stat"))
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {tid} {:<16} {state} wchan {:<24} syscall {}\n",
                read(format!("{t}/comm")).trim(),
                read(format!("{t}/wchan")).trim(),
                read(format!("{t}/syscall"))
                    .split_whitespace()
                    .next()
                    .unwrap_or("?"),
            ));
        }
    }
    out
}
