//! Command line: a drop-in for QEMU's own vhost-user-gpu (so libvirt can start it), plus our
//! options.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::config::{parse_size, Mode};

/// Which renderer to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RendererChoice {
    /// virgl when virglrenderer initialises, else 2D (the log says which and why).
    Auto,
    /// 2D only (rutabaga_gfx's 2D component).
    #[value(name = "2d")]
    TwoD,
    /// virgl (3D) or fail.
    Virgl,
}

/// `--venus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VenusChoice {
    /// When virgl runs and a Vulkan driver works here (the log says which, or why not).
    Auto,
    /// Required: fail at start without it.
    On,
    /// Never.
    Off,
}

/// `--sandbox`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sandbox {
    /// seccomp policy and Landlock; a call outside the policy is reported and ends the process.
    On,
    /// As `on`, but a call outside the policy is reported once and carried out.
    Log,
    /// Neither (for strace, gdb, perf).
    Off,
}

/// `--syslog`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Syslog {
    /// When no one watches stderr: started with --fd (libvirt), or stderr is not a terminal.
    Auto,
    On,
    Off,
}

/// Log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The env_logger filter for this level.
    pub fn filter(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// A virtio-gpu device for QEMU's vhost-user-gpu-pci / vhost-user-vga, served over a
/// vhost-user socket.
#[derive(Debug, Parser)]
#[command(name = "vhost-gpu", version, about, args_override_self = true)]
pub struct Cli {
    /// Listen on this vhost-user socket path.
    #[arg(short = 's', long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,

    /// Serve on this inherited listening socket (how libvirt starts backends).
    #[arg(short = 'f', long, value_name = "N")]
    pub fd: Option<i32>,

    /// Print the backend capabilities as JSON (QEMU's vhost-user backend format) and exit.
    #[arg(short = 'c', long)]
    pub print_capabilities: bool,

    /// DRM render node for virgl (GBM on the host GPU). Without it virgl uses surfaceless EGL,
    /// which is llvmpipe on a host without a GPU.
    #[arg(short = 'r', long, value_name = "PATH")]
    pub render_node: Option<PathBuf>,

    /// Require virgl (3D): fail at start when virglrenderer does not initialise.
    #[arg(short = 'v', long)]
    pub virgl: bool,

    /// Renderer to use. Default: `auto`; with `--fd` (a launcher such as libvirt, which asks
    /// for 3D with `--virgl` alone, as for QEMU's own backend) `2d` unless `--virgl` is given.
    #[arg(long, value_enum)]
    pub renderer: Option<RendererChoice>,

    /// Venus (Vulkan for the guest, capset 4) beside virgl: `auto` offers it when a Vulkan
    /// driver works on this host (lavapipe without a GPU), `on` requires it, `off` never.
    /// It needs virgl, and host-visible memory (a frontend that asks for a shared memory
    /// region: QEMU 11.1's generic device) for the guest to use it.
    #[arg(long, value_enum, default_value = "auto")]
    pub venus: VenusChoice,

    /// The host-visible memory region offered to a frontend that asks for one
    /// (GET_SHMEM_CONFIG): the guest maps host blobs into it (K, M, G suffixes; 0: none).
    /// It is guest address space; the blobs mapped there are counted in --max-host-memory.
    /// Default: 1G, or the largest power of two within a smaller --max-host-memory.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub hostmem: Option<u64>,

    /// virglrenderer's render server, which runs Venus (started by vhost-gpu, confined).
    #[arg(long, value_name = "PATH", default_value = crate::render_server::DEFAULT_PATH)]
    pub render_server: PathBuf,

    /// A scanout's mode, WIDTHxHEIGHT; repeat for more scanouts (1 to 16). Default: one
    /// 1280x800, or what the frontend reports.
    #[arg(long = "display", value_name = "WIDTHxHEIGHT")]
    pub displays: Vec<Mode>,

    /// Host memory one guest may make vhost-gpu allocate for resources (K, M, G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    pub max_host_memory: u64,

    /// Most resources one guest may have at once (over it: ERR_OUT_OF_MEMORY).
    #[arg(long, value_name = "N", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_resources: u32,

    /// Most rendering contexts one guest may have at once (over it: ERR_OUT_OF_MEMORY).
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_contexts: u32,

    /// Most scatter-list entries in one ATTACH_BACKING or CREATE_BLOB (16 host bytes each).
    #[arg(long, value_name = "N", default_value_t = 262_144, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub max_backing_entries: u32,

    /// Most bytes in one SUBMIT_3D command stream.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_submit_size)]
    pub max_submit_size: u32,

    /// Microseconds the queue thread keeps watching the ring, kicks off, after replying before
    /// it sleeps (0, the default: off; `scripts/bench` measured it slower on a 2-core VM).
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub poll_us: u64,

    /// Write what each scanout shows as DIR/scanout-N.png (the latest, at most once per
    /// --capture-interval-ms), and DIR/shot-K-scanout-N.png on each SIGUSR1.
    #[arg(long, value_name = "DIR")]
    pub capture_dir: Option<PathBuf>,

    /// Serve the guest's screen to VNC viewers on `unix:PATH` or `HOST:PORT` (loopback unless
    /// --vnc-password-file is given). Works with and without the frontend's display.
    #[arg(long, value_name = "LISTEN")]
    pub vnc: Option<crate::vnc::Listen>,

    /// Also serve VNC over WebSocket on HOST:PORT, for noVNC in a browser without websockify
    /// (loopback unless --vnc-password-file is given).
    #[arg(long, value_name = "HOST:PORT", requires = "vnc")]
    pub vnc_websocket: Option<String>,

    /// A browser origin (`https://console.example.org`) whose pages may use the WebSocket
    /// port, besides pages served from the host the browser connects to; repeat for more.
    /// Other sites' pages are refused (403), so that a web page open in a browser on this
    /// host cannot drive the VM through a loopback port.
    #[arg(long, value_name = "ORIGIN", requires = "vnc_websocket")]
    pub vnc_websocket_origin: Vec<String>,

    /// VNC authentication with the first line of this file (VNC uses its first 8 bytes).
    #[arg(long, value_name = "PATH", requires = "vnc")]
    pub vnc_password_file: Option<PathBuf>,

    /// Encrypt VNC with TLS (VeNCrypt, as QEMU's `tls-creds`): the server's PEM certificate
    /// chain. RFB clients must then use VeNCrypt: X509Vnc with --vnc-password-file, X509None
    /// without. The WebSocket port then takes wss:// (TLS, then the upgrade).
    #[arg(long, value_name = "PATH", requires_all = ["vnc", "vnc_tls_key"])]
    pub vnc_tls_cert: Option<PathBuf>,

    /// The PEM private key of --vnc-tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH", requires_all = ["vnc", "vnc_tls_cert"])]
    pub vnc_tls_key: Option<PathBuf>,

    /// Forward VNC keys and pointer to the VM through QEMU's QMP socket at PATH (QEMU started
    /// with `-qmp unix:PATH,server=on,wait=off`, and an absolute pointer such as
    /// `-device virtio-tablet-pci`). Without it VNC is view only.
    #[arg(long, value_name = "PATH", requires = "vnc")]
    pub vnc_input_qmp: Option<PathBuf>,

    /// The scanout VNC shows.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "vnc", value_parser = clap::value_parser!(u32).range(0..16))]
    pub vnc_scanout: u32,

    /// Most VNC clients at once (more are refused in the handshake, with a reason).
    #[arg(long, value_name = "N", default_value_t = 8, requires = "vnc", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub vnc_max_clients: u64,

    /// Least time between two writes of one scanout's PNG.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub capture_interval_ms: u64,

    /// After start-up, confine vhost-gpu: a seccomp policy on every thread and Landlock on
    /// files. `log` reports calls outside the policy and lets them run; `off` for debugging
    /// with strace, gdb or perf.
    #[arg(long, value_enum, default_value = "on")]
    pub sandbox: Sandbox,

    /// Mesa's shader cache directory (made before the sandbox starts), or `off`. Default:
    /// $XDG_CACHE_HOME/vhost-gpu, else $HOME/.cache/vhost-gpu; off, with a log line, where
    /// neither can be made (libvirt's user has no home).
    #[arg(long, value_name = "DIR|off")]
    pub shader_cache: Option<PathBuf>,

    /// When started as root, become this user once the socket is up, before anything else is
    /// made or loaded (its groups too: `render`/`video` for a render node). libvirt starts
    /// backends as its own user already.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Send log lines to the system log (journald or syslog, through /dev/log) as well as
    /// stderr.
    #[arg(long, value_enum, default_value = "auto")]
    pub syslog: Syslog,

    /// Log level (RUST_LOG, when set, wins).
    #[arg(long, value_enum, default_value = "info")]
    pub log_level: LogLevel,
}

/// The JSON `--print-capabilities` prints: only what works on this host. `virgl` when
/// virglrenderer starts here; `render-node` when it also has a render node to use (libvirt
/// then demands one on the host and passes `--render-node`; without it, `accel3d='yes'` gives
/// `--virgl` alone, which is virgl on llvmpipe).
pub fn capabilities_json(virgl_available: bool, render_node_usable: bool) -> String {
    let mut features = Vec::new();
    if virgl_available && render_node_usable {
        features.push("\"render-node\"");
    }
    if virgl_available {
        features.push("\"virgl\"");
    }
    format!(
        "{{\n  \"type\": \"gpu\",\n  \"features\": [{}]\n}}",
        features.join(", ")
    )
}

/// `--max-submit-size`: 4 KiB to 256 MiB.
fn parse_submit_size(v: &str) -> Result<u32, String> {
    let n = parse_size(v).map_err(|e| e.to_string())?;
    if !(4096..=256 << 20).contains(&n) {
        return Err(format!("{v}: must be 4K to 256M"));
    }
    Ok(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_style_flags_parse() {
        let c = Cli::try_parse_from([
            "vhost-gpu",
            "--fd=3",
            "--render-node",
            "/dev/dri/renderD128",
            "--display",
            "800x600",
            "--display",
            "1024x768",
            "--max-host-memory",
            "256M",
        ])
        .unwrap();
        assert_eq!(c.fd, Some(3));
        assert_eq!(c.displays.len(), 2);
        assert_eq!(c.max_host_memory, 256 << 20);
        assert!(Cli::try_parse_from(["vhost-gpu", "--display", "800"]).is_err());
        assert!(Cli::try_parse_from(["vhost-gpu", "-s", "a", "--fd", "3"]).is_err());
        assert_eq!(
            capabilities_json(false, true),
            "{\n  \"type\": \"gpu\",\n  \"features\": []\n}"
        );
        assert!(!capabilities_json(true, false).contains("render-node"));
        assert!(capabilities_json(true, false).contains("\"virgl\""));
        assert!(capabilities_json(true, true).contains("\"render-node\", \"virgl\""));
    }
}
