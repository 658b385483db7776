//! The `vhost-gpu` binary: parse the command line, pick a renderer, confine, serve.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use log::{error, info, warn};

use std::sync::Arc;

use vhost_gpu::capture::{block_shot_signal, Capture};
use vhost_gpu::cli::{capabilities_json, Cli, RendererChoice, Sandbox, VenusChoice};
use vhost_gpu::config::DeviceConfig;
use vhost_gpu::modes::{ModeRequests, ModeRequestsHandle};
use vhost_gpu::protocol::DecodeLimits;
use vhost_gpu::render_server::RenderServer;
use vhost_gpu::sandbox::{self, files, Enforcement};
use vhost_gpu::screens::{Screens, ScreensHandle};
use vhost_gpu::socket::ServingSocket;
use vhost_gpu::vhost_user::serve;
use vhost_gpu::vnc::{auth::Password, tls::TlsServer, VncOptions, VncServer};
use vhost_gpu::{logging, privileges, probe, shader_cache};
use virgl_bridge::{Renderer, Renderer2D, VirglOptions, VirglRenderer};

/// Large pixel buffers aligned to a cache line (see `vhost_gpu::alloc`).
#[global_allocator]
static ALLOCATOR: vhost_gpu::alloc::AlignedLarge = vhost_gpu::alloc::AlignedLarge;

fn main() -> ExitCode {
    // Large buffers (resources, readback) always get their own mappings, so freeing them gives
    // the memory back to the host. Setting the threshold also stops glibc from raising it after
    // big frees, which would keep freed resources in the heap for good.
    // SAFETY: mallopt only sets allocator parameters; called first, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
    // `vhost-gpu render-server ...`: the confined start of virglrenderer's render server
    // (vhost_gpu::render_server), run by vhost-gpu itself; not a user's command.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("render-server") {
        let e = vhost_gpu::render_server::exec_confined(&args[2..]);
        eprintln!("vhost-gpu render-server: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    if cli.capture_dir.is_some() {
        // Before any thread exists, so that only the capture thread takes the signal.
        block_shot_signal();
    }
    let wants_syslog = logging::wants_syslog(cli.syslog, cli.fd.is_some());
    let log_to = logging::init(cli.log_level.filter(), wants_syslog);
    logging::log_panics();
    if let Err(e) = sandbox::trap::report_termination() {
        warn!("SIGTERM will not be reported: {e}");
    }
    if !cli.print_capabilities {
        info!(
            "vhost-gpu {} starting; logging to {log_to}",
            env!("CARGO_PKG_VERSION")
        );
    }
    // Every exit says why, on stderr and (when wanted) in the system log.
    match run(&cli) {
        Ok(why) => {
            if let Some(why) = why {
                info!("exiting: {why}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("exiting: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until there is nothing more to serve; returns why it stopped (None: nothing to say,
/// for `--print-capabilities`).
fn run(cli: &Cli) -> Result<Option<String>> {
    let mut virgl_opts = VirglOptions {
        render_node: cli.render_node.clone(),
        ..Default::default()
    };
    let user = cli.user.as_deref().map(privileges::lookup).transpose()?;
    if cli.print_capabilities {
        // Tell the truth for this host: virgl only when it initialises here, render-node only
        // when there is one it can use (each asked in a child that leaves nothing behind).
        let virgl_ok = probe::virgl(&virgl_opts, user.as_ref()).is_ok();
        let node_ok = files::render_nodes().iter().any(|n| {
            let opts = VirglOptions {
                render_node: Some(n.clone()),
                ..Default::default()
            };
            probe::virgl(&opts, user.as_ref()).is_ok()
        });
        println!("{}", capabilities_json(virgl_ok, node_ok));
        // QEMU's capability schema has no Venus feature (libvirt reads only stdout's JSON):
        // what was found goes to stderr, for a person.
        match (virgl_ok, probe::venus(&virgl_opts, user.as_ref())) {
            (true, Ok(dev)) => eprintln!("venus: available, on {dev}"),
            (true, Err(e)) => eprintln!("venus: not available: {e}"),
            (false, _) => eprintln!("venus: not available: virgl does not start here"),
        }
        return Ok(None);
    }
    // An inherited descriptor is checked first: a launcher's mistake is reported before
    // anything else is set up.
    let inherited = match (&cli.socket_path, cli.fd) {
        (None, Some(fd)) => Some(ServingSocket::inherited(fd)?),
        (Some(_), None) => None,
        _ => bail!("give --socket-path PATH or --fd N"),
    };
    match (&user, privileges::is_root()) {
        (Some(_), false) => bail!(privileges::PrivilegeError::NotRoot),
        (None, true) => warn!(
            "running as root: --user NAME would drop to an unprivileged user after start-up (the sandbox confines root too, but root keeps its capabilities inside it)"
        ),
        _ => {}
    }
    let choice = match (cli.virgl, cli.renderer, cli.fd) {
        (true, _, _) => RendererChoice::Virgl,
        (false, Some(r), _) => r,
        // libvirt asks for 3D with --virgl (accel3d='yes'), as QEMU's own backend expects;
        // without it the domain is 2D.
        (false, None, Some(_)) => {
            info!(
                "--fd without --virgl: 2D, as a launcher asks for a domain without 3D acceleration"
            );
            RendererChoice::TwoD
        }
        (false, None, None) => RendererChoice::Auto,
    };
    let use_virgl = match choice {
        RendererChoice::TwoD => {
            if let Some(node) = &cli.render_node {
                warn!(
                    "--render-node {} is not used by the 2D renderer",
                    node.display()
                );
            }
            info!("renderer: 2d (asked for)");
            false
        }
        RendererChoice::Virgl => {
            probe::virgl(&virgl_opts, user.as_ref())
                .map_err(anyhow::Error::msg)
                .context("virgl was required (--virgl / --renderer virgl) but did not start")?;
            info!("renderer: virgl (asked for)");
            true
        }
        RendererChoice::Auto => match probe::virgl(&virgl_opts, user.as_ref()) {
            Ok(_) => {
                info!("renderer auto: virgl");
                true
            }
            Err(e) => {
                warn!("renderer auto: 2d, because virgl did not start: {e}");
                false
            }
        },
    };

    let venus = match (cli.venus, use_virgl) {
        (VenusChoice::Off, _) => {
            info!("venus: off (--venus off)");
            false
        }
        (VenusChoice::On, false) => {
            bail!("--venus on needs the virgl renderer, which is not in use")
        }
        (VenusChoice::Auto, false) => false,
        (choice, true) => match probe::venus(&virgl_opts, user.as_ref()) {
            Ok(dev) => {
                info!("venus: on, Vulkan on {dev}; render server {}; untested on GPUs other than lavapipe's CPU device", cli.render_server.display());
                true
            }
            Err(e) if choice == VenusChoice::On => {
                bail!("venus was required (--venus on) but cannot run: {e}")
            }
            Err(e) => {
                info!("venus: off: {e}");
                false
            }
        },
    };
    let page = u64::from(vhost_gpu::config::host_page_size());
    let hostmem = match cli.hostmem {
        Some(size) if venus && size > cli.max_host_memory => bail!(
            "--hostmem {size} is larger than --max-host-memory {}: the blobs mapped there are counted in it, so the region could never fill",
            cli.max_host_memory
        ),
        Some(size) if venus && size != 0 && (!size.is_power_of_two() || size < page) => bail!(
            "--hostmem {size}: QEMU takes a region size that is a power of two, at least a page"
        ),
        Some(size) => size,
        None => vhost_gpu::config::default_hostmem(cli.max_host_memory, page),
    };
    let mut config = DeviceConfig::new(cli.displays.clone(), cli.max_host_memory)?;
    // Host-visible memory is for Venus's blobs (virgl's stay in guest memory here).
    config.hostmem = if venus { hostmem } else { 0 };
    config.poll_us = cli.poll_us;
    config.max_resources = cli.max_resources;
    config.max_contexts = cli.max_contexts;
    config.decode = DecodeLimits {
        max_backing_entries: cli.max_backing_entries,
        max_submit_size: cli.max_submit_size,
    };
    let mut socket = match (inherited, &cli.socket_path) {
        (Some(socket), _) => socket,
        (None, Some(path)) => ServingSocket::listen(path)
            .with_context(|| format!("listening on {}", path.display()))?,
        (None, None) => bail!("give --socket-path PATH or --fd N"),
    };
    info!("serving {}", socket.describe());
    // From here on as the user that serves: what is made next is its own.
    if let Some(u) = &user {
        privileges::become_user(u)?;
        info!("running as user {} (uid {}, gid {})", u.name, u.uid, u.gid);
    }
    let default_cache = match &user {
        Some(u) if u.home.is_absolute() => Some(u.home.join(".cache").join("vhost-gpu")),
        Some(_) => None,
        None => shader_cache::default_dir(),
    };
    let cache_dir = shader_cache::prepare(cli.shader_cache.as_deref(), default_cache);
    let enforcement = match cli.sandbox {
        Sandbox::On => Some(Enforcement::Kill),
        Sandbox::Log => Some(Enforcement::Log),
        Sandbox::Off => None,
    };
    // The render server before any thread and before the sandbox: it is a process of its own,
    // confined on its own (vhost_gpu::render_server).
    let mut render_server = None;
    if venus {
        let rw: Vec<PathBuf> = cache_dir.iter().cloned().collect();
        let mut rs = RenderServer::start(&cli.render_server, &rw, enforcement)
            .context("starting the render server for Venus (--venus off goes without it)")?;
        virgl_opts.venus = true;
        virgl_opts.render_server = rs.take_client_fd();
        render_server = Some(rs);
    }
    if let Some(dir) = &cli.capture_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("making --capture-dir {}", dir.display()))?;
    }
    // VNC's socket and password before the sandbox: neither can be had inside it.
    let vnc = match &cli.vnc {
        Some(listen) => {
            if cli.vnc_scanout >= config.num_scanouts() {
                bail!(
                    "--vnc-scanout {} names no scanout: the device has {} (one per --display)",
                    cli.vnc_scanout,
                    config.num_scanouts()
                );
            }
            let password = match &cli.vnc_password_file {
                Some(p) => {
                    let (pw, len) = Password::from_file(p)?;
                    if len > 8 {
                        warn!("--vnc-password-file: VNC authentication uses only the first 8 of its {len} bytes");
                    }
                    Some(pw)
                }
                None => None,
            };
            let tls = match (&cli.vnc_tls_cert, &cli.vnc_tls_key) {
                (Some(cert), Some(key)) => Some(TlsServer::load(cert, key)?),
                _ => None,
            };
            let mut server = VncServer::bind(listen, password.is_some())?;
            if let Some(ws) = &cli.vnc_websocket {
                server = server.with_websocket(ws, password.is_some())?;
            }
            Some((server, password, tls))
        }
        None => None,
    };
    if enforcement.is_some() {
        // Landlock first, while this is the only thread: it confines the caller and the
        // threads it starts from now on (the capture thread, each connection's threads).
        let threads = files::thread_count();
        if threads != 1 {
            warn!("sandbox: {threads} threads before Landlock; only this one and its future threads are confined");
        }
        let rw: Vec<PathBuf> = cache_dir.iter().chain(&cli.capture_dir).cloned().collect();
        let status = files::confine(&rw, render_server.is_some())
            .context("confining files (--sandbox off skips it)")?;
        info!(
            "sandbox: Landlock {}: read-only on libraries, drivers and their configuration, read-write on {}",
            files::describe(status),
            if rw.is_empty() {
                "render nodes only".to_string()
            } else {
                format!("render nodes and {}", rw.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
            }
        );
    }
    let server_pid = render_server.as_ref().map(RenderServer::pid);
    if let Some(rs) = render_server {
        rs.watch(enforcement)
            .context("starting the render server's watch thread")?;
    }
    if cli.capture_dir.is_some() || vnc.is_some() {
        config.screens = Some(ScreensHandle(Arc::new(Screens::new())));
    }
    // VNC clients may ask for a mode (SetDesktopSize); the serving connection takes it.
    let mode_requests = vnc.as_ref().map(|_| ModeRequests::new());
    config.mode_requests = mode_requests.clone().map(ModeRequestsHandle);
    let screens = config.screens.as_ref().map(|s| Arc::clone(&s.0));
    if let (Some(dir), Some(screens)) = (&cli.capture_dir, &screens) {
        let interval = Duration::from_millis(cli.capture_interval_ms);
        Capture::start(dir, interval, Arc::clone(screens))?;
    }
    if let (Some((server, password, tls)), Some(screens)) = (vnc, &screens) {
        let first = config.modes[cli.vnc_scanout as usize];
        server.start(
            Arc::clone(screens),
            VncOptions {
                password,
                tls,
                modes: mode_requests,
                ws_origins: cli.vnc_websocket_origin.clone(),
                input_qmp: cli.vnc_input_qmp.clone(),
                scanout: cli.vnc_scanout,
                max_clients: cli.vnc_max_clients as usize,
                default_size: (first.width, first.height),
            },
        )?;
    }
    info!(
        "vhost-gpu serving: {} scanout(s) {:?}, max host memory {} bytes",
        config.num_scanouts(),
        config
            .modes
            .iter()
            .map(|m| format!("{}x{}", m.width, m.height))
            .collect::<Vec<_>>(),
        config.max_host_memory
    );
    let make = move || -> Result<Box<dyn Renderer>, virgl_bridge::RendererError> {
        if use_virgl {
            Ok(Box::new(VirglRenderer::new(&virgl_opts)?))
        } else {
            Ok(Box::new(Renderer2D::new()?))
        }
    };
    match enforcement {
        Some(e) => {
            sandbox::install(e, cli.vnc_input_qmp.is_some(), server_pid)
                .context("installing the seccomp sandbox (--sandbox off skips it)")?;
            let (allowed, conditional, errno) = sandbox::counts();
            info!(
                "sandbox: seccomp on all threads: {allowed} calls allowed, {conditional} allowed with argument checks, {errno} answered with an errno, any other {}",
                if e == Enforcement::Kill {
                    format!("reported and fatal (exit status {})", sandbox::SANDBOX_EXIT)
                } else {
                    "reported once and allowed (--sandbox log)".to_string()
                }
            );
            // Landlock does not let the process remove the socket's path any more.
            socket.keep_path();
        }
        None => warn!("sandbox off: no seccomp policy, no Landlock"),
    }
    serve(&mut socket, &config, &make)?;
    Ok(Some(
        "the frontend on the connected --fd socket hung up".into(),
    ))
}
