//! The `vhost-gpu` binary: parse the command line, pick a renderer, serve.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use log::{info, warn};

use vhost_gpu::capture::{block_shot_signal, Capture, CaptureHandle};
use vhost_gpu::cli::{capabilities_json, Cli, RendererChoice, Sandbox};
use vhost_gpu::config::DeviceConfig;
use vhost_gpu::protocol::DecodeLimits;
use vhost_gpu::sandbox;
use vhost_gpu::socket::ServingSocket;
use vhost_gpu::vhost_user::serve;
use virgl_bridge::{Renderer, Renderer2D, VirglOptions, VirglRenderer};

/// Large pixel buffers aligned to a cache line (see `vhost_gpu::alloc`).
#[global_allocator]
static ALLOCATOR: vhost_gpu::alloc::AlignedLarge = vhost_gpu::alloc::AlignedLarge;

fn main() -> Result<()> {
    // Large buffers (resources, readback) always get their own mappings, so freeing them gives
    // the memory back to the host. Setting the threshold also stops glibc from raising it after
    // big frees, which would keep freed resources in the heap for good.
    // SAFETY: mallopt only sets allocator parameters; called first, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
    let cli = Cli::parse();
    if cli.capture_dir.is_some() {
        // Before any thread exists, so that only the capture thread takes the signal.
        block_shot_signal();
    }
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(cli.log_level.filter()),
    )
    .init();

    let virgl_opts = VirglOptions {
        render_node: cli.render_node.clone(),
    };
    if cli.print_capabilities {
        // Tell the truth for this host: virgl only when it initialises here.
        let virgl_ok = VirglRenderer::new(&virgl_opts).is_ok();
        println!("{}", capabilities_json(virgl_ok));
        return Ok(());
    }
    let choice = if cli.virgl {
        RendererChoice::Virgl
    } else {
        cli.renderer
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
            VirglRenderer::new(&virgl_opts)
                .context("virgl was required (--virgl / --renderer virgl) but did not start")?;
            info!("renderer: virgl (asked for)");
            true
        }
        RendererChoice::Auto => match VirglRenderer::new(&virgl_opts) {
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

    let mut config = DeviceConfig::new(cli.displays.clone(), cli.max_host_memory)?;
    config.poll_us = cli.poll_us;
    config.max_resources = cli.max_resources;
    config.max_contexts = cli.max_contexts;
    config.decode = DecodeLimits {
        max_backing_entries: cli.max_backing_entries,
        max_submit_size: cli.max_submit_size,
    };
    if let Some(dir) = &cli.capture_dir {
        let interval = Duration::from_millis(cli.capture_interval_ms);
        config.capture = Some(CaptureHandle(Capture::start(dir, interval)?));
    }
    let mut socket = match (&cli.socket_path, cli.fd) {
        (Some(path), None) => ServingSocket::listen(path)
            .with_context(|| format!("listening on {}", path.display()))?,
        (None, Some(fd)) => ServingSocket::inherited(fd)?,
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
    let make = move || -> Result<Box<dyn Renderer>, virgl_bridge::RendererError> {
        if use_virgl {
            Ok(Box::new(VirglRenderer::new(&virgl_opts)?))
        } else {
            Ok(Box::new(Renderer2D::new()?))
        }
    };
    match cli.sandbox {
        Sandbox::On => {
            sandbox::install()
                .context("installing the seccomp sandbox (--sandbox off skips it)")?;
            info!(
                "sandbox: seccomp filter on all threads, {} system calls allowed",
                sandbox::ALLOWED.len()
            );
            // unlink is not among them: removing the socket's path would kill the process
            // before it could say why serving ended.
            socket.keep_path();
        }
        Sandbox::Off => warn!("sandbox off: no seccomp filter"),
    }
    serve(&mut socket, &config, &make)?;
    Ok(())
}
