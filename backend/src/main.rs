//! The `vhost-gpu` binary: parse the command line, pick a renderer, serve.

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;

use anyhow::{bail, Context, Result};
use clap::Parser;
use log::{info, warn};
use vhost::vhost_user::Listener;

use vhost_gpu::cli::{capabilities_json, Cli, RendererChoice};
use vhost_gpu::config::DeviceConfig;
use vhost_gpu::vhost_user::serve;
use virgl_bridge::{Renderer, Renderer2D};

/// Takes over an inherited listening socket, after checking that it is one.
fn inherited_listener(fd: i32) -> Result<Listener> {
    if fd < 0 {
        bail!("--fd {fd}: not a file descriptor");
    }
    // SAFETY: fstat only writes into `st`, a local of the right type; a bad fd gives an error.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `fd` is a plain integer the kernel checks.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        bail!("--fd {fd}: {}", std::io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        bail!("--fd {fd}: not a socket");
    }
    // SAFETY: the fd is open and a socket (checked above); it was passed to this process for
    // this purpose and nothing else in the process owns it, so the listener may take it over.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    Ok(Listener::from(listener))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(cli.log_level.filter()),
    )
    .init();

    // virgl (3D) is not part of this build yet: say so rather than pretend.
    let virgl_available = false;
    if cli.print_capabilities {
        println!("{}", capabilities_json(virgl_available));
        return Ok(());
    }
    if cli.virgl || cli.renderer == RendererChoice::Virgl {
        bail!(
            "virgl (3D) was requested, but this build of vhost-gpu has only the 2D renderer; \
             run without --virgl / with --renderer 2d"
        );
    }
    if cli.renderer == RendererChoice::Auto {
        info!("renderer auto: 2d (this build has no virgl renderer)");
    }
    if let Some(node) = &cli.render_node {
        warn!(
            "--render-node {} is not used by the 2D renderer",
            node.display()
        );
    }

    let config = DeviceConfig::new(cli.displays.clone(), cli.max_host_memory)?;
    let mut listener = match (&cli.socket_path, cli.fd) {
        (Some(path), None) => {
            Listener::new(path, true).with_context(|| format!("listening on {}", path.display()))?
        }
        (None, Some(fd)) => inherited_listener(fd)?,
        _ => bail!("give --socket-path PATH or --fd N"),
    };
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
    let make = || -> Result<Box<dyn Renderer>, virgl_bridge::RendererError> {
        Ok(Box::new(Renderer2D::new()?))
    };
    serve(&mut listener, &config, &make)?;
    Ok(())
}
