//! The renderer thread: virglrenderer's one library-wide instance, its callbacks (fences, the
//! render node, the render server's socket), and the loop that runs jobs on it.

use std::collections::HashMap;
use std::ffi::c_void;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use log::warn;
use virglrenderer_sys as sys;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{VirglOptions, CAPSET_VENUS, CAPSET_VIRGL, CAPSET_VIRGL2};
use crate::renderer::{CapsetInfo, FenceDone, FenceTimeline, RendererError, RendererResult};

pub(super) type Job = Box<dyn FnOnce(&mut State) + Send>;

/// What the renderer thread keeps: the backing iovec arrays virglrenderer points into.
#[derive(Default)]
pub(super) struct State {
    pub(super) backings: HashMap<u32, Vec<libc::iovec>>,
}

pub(super) struct Worker {
    pub(super) jobs: Mutex<Sender<Job>>,
    pub(super) wake: EventFd,
    pub(super) capsets: Vec<CapsetInfo>,
    pub(super) options: VirglOptions,
}

/// Fences signalled by virglrenderer, and the eventfd that tells the device.
pub(super) struct FenceSink {
    pub(super) done: Mutex<Vec<FenceDone>>,
    pub(super) event: EventFd,
}

static WORKER: OnceLock<Result<Worker, String>> = OnceLock::new();
static SINK: OnceLock<FenceSink> = OnceLock::new();
static RENDER_NODE: OnceLock<Option<PathBuf>> = OnceLock::new();
/// The render server's socket, handed to virglrenderer once (it takes ownership).
static RENDER_SERVER: Mutex<Option<RawFd>> = Mutex::new(None);

pub(super) fn sink() -> &'static FenceSink {
    SINK.get_or_init(|| FenceSink {
        done: Mutex::new(Vec::new()),
        // An eventfd failing to open at start is not recoverable.
        event: EventFd::new(EFD_NONBLOCK).unwrap_or_else(|e| panic!("eventfd: {e}")),
    })
}

fn push_fence(f: FenceDone) {
    let s = sink();
    s.done.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    let _ = s.event.write(1);
}

extern "C" fn write_fence(_cookie: *mut c_void, fence: u32) {
    push_fence(FenceDone {
        timeline: FenceTimeline::Global,
        fence_id: u64::from(fence),
    });
}

extern "C" fn write_context_fence(_cookie: *mut c_void, ctx_id: u32, ring_idx: u32, fence_id: u64) {
    let ring_idx = u8::try_from(ring_idx).unwrap_or(u8::MAX);
    push_fence(FenceDone {
        timeline: FenceTimeline::Ring { ctx_id, ring_idx },
        fence_id,
    });
}

extern "C" fn get_drm_fd(_cookie: *mut c_void) -> i32 {
    let Some(Some(path)) = RENDER_NODE.get() else {
        return -1;
    };
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => std::os::fd::IntoRawFd::into_raw_fd(f),
        Err(e) => {
            warn!("opening render node {}: {e}", path.display());
            -1
        }
    }
}

extern "C" fn get_server_fd(_cookie: *mut c_void, version: u32) -> i32 {
    if version != 0 {
        warn!("virglrenderer asks for render server protocol {version}; only 0 is known");
        return -1;
    }
    match RENDER_SERVER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        Some(fd) => fd,
        None => {
            warn!("virglrenderer asked for the render server a second time; it was started once, before the sandbox");
            -1
        }
    }
}

fn init_on_thread(options: &VirglOptions) -> Result<Vec<CapsetInfo>, String> {
    let _ = RENDER_NODE.set(options.render_node.clone());
    // SAFETY: the callbacks struct is plain C data; all-zero means every callback is absent
    // (None), which virglrenderer accepts. Fields a newer header adds stay absent.
    let mut cbs: sys::virgl_renderer_callbacks = unsafe { std::mem::zeroed() };
    // Version 3 is the first with write_context_fence (per-ring fences); it is what the fields
    // set here need, whatever newer versions the installed header knows.
    cbs.version = 3;
    cbs.write_fence = Some(write_fence);
    cbs.get_drm_fd = Some(get_drm_fd);
    cbs.write_context_fence = Some(write_context_fence);
    if let Some(fd) = options.render_server {
        // Version 3 also has get_server_fd: the render server was started (and confined) by
        // the caller, and virglrenderer only talks to it.
        *RENDER_SERVER.lock().unwrap_or_else(|e| e.into_inner()) = Some(fd);
        cbs.get_server_fd = Some(get_server_fd);
    }
    let cbs = Box::leak(Box::new(cbs));
    let mut flags = sys::VIRGL_RENDERER_USE_EGL | sys::VIRGL_RENDERER_THREAD_SYNC;
    if options.render_node.is_none() {
        flags |= sys::VIRGL_RENDERER_USE_SURFACELESS;
    }
    if options.venus {
        // Venus runs in the render server. Its blobs leave the process as file descriptors
        // (the frontend maps them), which USE_EXTERNAL_BLOB asks of every blob: virgl then
        // stops offering GL persistent mappings, which it could only give as pointers here.
        // Venus contexts' fences retire in the render server; virglrenderer learns of them on
        // a per-context sync thread, which exists only with ASYNC_FENCE_CB: without it no
        // Venus fence ever completes. The callbacks (push_fence) take a lock and wake the
        // device, from whichever thread calls them.
        flags |= sys::VIRGL_RENDERER_VENUS
            | sys::VIRGL_RENDERER_RENDER_SERVER
            | sys::VIRGL_RENDERER_USE_EXTERNAL_BLOB
            | sys::VIRGL_RENDERER_ASYNC_FENCE_CB;
    }
    // The cookie only has to be non-null (virglrenderer refuses NULL); callbacks ignore it.
    let cookie = sink() as *const FenceSink as *mut c_void;
    // SAFETY: `cbs` is leaked, so it outlives virglrenderer, which keeps the pointer; the
    // cookie points to a static. Called once, on the renderer thread.
    let ret = unsafe { sys::virgl_renderer_init(cookie, flags as i32, cbs) };
    if ret != 0 {
        return Err(format!("virgl_renderer_init failed ({ret})"));
    }
    let mut capsets = Vec::new();
    let ids: &[u32] = if options.venus {
        &[CAPSET_VIRGL, CAPSET_VIRGL2, CAPSET_VENUS]
    } else {
        &[CAPSET_VIRGL, CAPSET_VIRGL2]
    };
    for &id in ids {
        let (mut max_version, mut max_size) = (0u32, 0u32);
        // SAFETY: both out-pointers point to live locals.
        unsafe { sys::virgl_renderer_get_cap_set(id, &mut max_version, &mut max_size) };
        // Venus reports version 0 (QEMU too offers a capset by its size alone).
        if max_size > 0 && (max_version > 0 || id == CAPSET_VENUS) {
            capsets.push(CapsetInfo {
                id,
                max_version,
                max_size,
            });
        }
    }
    Ok(capsets)
}

fn run(rx: Receiver<Job>, wake: RawFd, async_fences: bool) {
    let mut state = State::default();
    // SAFETY: no arguments; -1 when virglrenderer has no poll fd.
    let poll_fd = unsafe { sys::virgl_renderer_get_poll_fd() };
    // A poll fd means virglrenderer's sync thread runs; with ASYNC_FENCE_CB that thread reports
    // fences itself and the fd must not be watched. Without one, fences are polled for.
    let threaded = poll_fd >= 0;
    let poll_fd = if async_fences { -1 } else { poll_fd };
    loop {
        let mut fds = [
            libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: poll_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let n = if poll_fd >= 0 { 2 } else { 1 };
        // With no poll fd, look for signalled fences every 2 ms.
        let timeout = if threaded { -1 } else { 2 };
        // SAFETY: `fds` is a live array of at least `n` pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), n, timeout) };
        if fds[0].revents & libc::POLLIN != 0 {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into a live u64 from the eventfd (non-blocking).
            unsafe { libc::read(wake, (&mut v as *mut u64).cast(), 8) };
        }
        loop {
            match rx.try_recv() {
                Ok(job) => job(&mut state),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
            }
        }
        // SAFETY: no arguments; runs fence callbacks on this thread.
        unsafe { sys::virgl_renderer_poll() };
    }
}

pub(super) fn worker(options: &VirglOptions) -> RendererResult<&'static Worker> {
    let w = WORKER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        let wake = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
        let wake_fd = wake.as_raw_fd();
        let (init_tx, init_rx) = sync_channel(1);
        let opts = options.clone();
        std::thread::Builder::new()
            .name("virgl".into())
            .spawn(move || {
                let r = init_on_thread(&opts);
                let ok = r.is_ok();
                let _ = init_tx.send(r);
                if ok {
                    run(rx, wake_fd, opts.venus);
                }
            })
            .map_err(|e| format!("renderer thread: {e}"))?;
        let capsets = init_rx
            .recv()
            .map_err(|_| "renderer thread died".to_string())??;
        Ok(Worker {
            jobs: Mutex::new(tx),
            wake,
            capsets,
            options: options.clone(),
        })
    });
    match w {
        Ok(w) if &w.options == options => Ok(w),
        Ok(w) => Err(RendererError::Backend(format!(
            "virglrenderer already runs with {:?}; one setup per process",
            w.options
        ))),
        Err(e) => Err(RendererError::Backend(e.clone())),
    }
}
