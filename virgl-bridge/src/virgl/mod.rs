//! The virgl renderer on virglrenderer (through `virglrenderer-sys`).
//!
//! virglrenderer is one library-wide instance whose GL contexts belong to the thread that uses
//! them, so every call runs on one renderer thread owned by this module, started on first use
//! and kept for the life of the process. A [`VirglRenderer`] handle sends it jobs and waits for
//! their results; when a handle is dropped (the frontend went away) the contexts and resources
//! it made are destroyed. virglrenderer's fence callbacks land in a queue here and wake an
//! eventfd the device polls: nothing of the C library's global state is visible outside.

use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::sync_channel;

use log::info;
use virglrenderer_sys as sys;

mod thread;
pub mod venus;

use thread::{sink, worker, Job, State, Worker};

use crate::renderer::{
    CapsetInfo, ExportedBlob, FenceDone, FenceTimeline, Iovec, Rect, Renderer, RendererError,
    RendererKind, RendererResult, Resource3d, Transfer3d,
};
use crate::BYTES_PER_PIXEL;

/// virglrenderer's `struct virgl_box` (opaque in the generated bindings).
#[repr(C)]
struct VirglBox {
    x: u32,
    y: u32,
    z: u32,
    w: u32,
    h: u32,
    d: u32,
}

const CAPSET_VIRGL: u32 = 1;
const CAPSET_VIRGL2: u32 = 2;
/// Venus (Vulkan) contexts' capset.
pub const CAPSET_VENUS: u32 = 4;
const PIPE_TEXTURE_2D: u32 = 2;
const PIPE_BIND_RENDER_TARGET: u32 = 2;
const RESOURCE_Y_0_TOP: u32 = 1;

/// How to start virglrenderer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VirglOptions {
    /// A DRM render node (GBM on the host GPU); None: surfaceless EGL (llvmpipe without a GPU).
    pub render_node: Option<PathBuf>,
    /// Venus (Vulkan) contexts as well as virgl's, run in virglrenderer's render server.
    pub venus: bool,
    /// A connected SOCK_SEQPACKET socket to a render server the caller started (and confined);
    /// None: virglrenderer starts the server itself. Only with `venus`.
    pub render_server: Option<RawFd>,
}

/// A raw pointer the caller keeps valid until the job that uses it has finished.
struct SendPtr(*mut u8, usize);
// SAFETY: only used by `VirglRenderer::call`'s callers, which block until the job that holds it
// has run or been dropped, so the pointee (borrowed by the caller) outlives every use.
unsafe impl Send for SendPtr {}

/// The virgl renderer of one frontend connection.
pub struct VirglRenderer {
    worker: &'static Worker,
    contexts: HashSet<u32>,
    /// Width and height of each resource this handle made.
    resources: HashMap<u32, (u32, u32)>,
}

fn check(ret: i32, what: &'static str) -> RendererResult<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(RendererError::Backend(format!("{what} failed ({ret})")))
    }
}

impl VirglRenderer {
    /// Starts virglrenderer (once per process) and returns a handle with no contexts or
    /// resources.
    pub fn new(options: &VirglOptions) -> RendererResult<Self> {
        let worker = worker(options)?;
        info!(
            "virgl renderer up (built against virglrenderer {}, loaded {}; {}), capsets {:?}",
            env!("VIRGLRENDERER_VERSION"),
            loaded_library().unwrap_or_else(|| "?".into()),
            options
                .render_node
                .as_ref()
                .map_or("surfaceless EGL".to_string(), |p| format!(
                    "render node {}",
                    p.display()
                )),
            worker.capsets
        );
        // Fences of an earlier connection mean nothing to this one.
        sink()
            .done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(VirglRenderer {
            worker,
            contexts: HashSet::new(),
            resources: HashMap::new(),
        })
    }

    /// Runs `f` on the renderer thread and waits for its result.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> T + Send + 'static,
    ) -> RendererResult<T> {
        let (tx, rx) = sync_channel(1);
        let job: Job = Box::new(move |st| {
            let _ = tx.send(f(st));
        });
        self.worker
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| RendererError::Backend("renderer thread gone".into()))?;
        let _ = self.worker.wake.write(1);
        rx.recv()
            .map_err(|_| RendererError::Backend("renderer thread gone".into()))
    }

    fn known(&self, id: u32) -> RendererResult<(u32, u32)> {
        self.resources
            .get(&id)
            .copied()
            .ok_or(RendererError::UnknownResource(id))
    }

    fn known_ctx(&self, ctx_id: u32) -> RendererResult<()> {
        if self.contexts.contains(&ctx_id) {
            Ok(())
        } else {
            Err(RendererError::UnknownContext(ctx_id))
        }
    }

    fn create(&mut self, id: u32, a: Resource3d) -> RendererResult<()> {
        if id == 0 || self.resources.contains_key(&id) {
            return Err(RendererError::ResourceExists(id));
        }
        let ret = self.call(move |_| {
            let mut args = sys::virgl_renderer_resource_create_args {
                handle: id,
                target: a.target,
                format: a.format,
                bind: a.bind,
                width: a.width,
                height: a.height,
                depth: a.depth,
                array_size: a.array_size,
                last_level: a.last_level,
                nr_samples: a.nr_samples,
                flags: a.flags,
            };
            // SAFETY: `args` is a live, fully initialised struct; no iovecs (null, 0).
            unsafe { sys::virgl_renderer_resource_create(&mut args, std::ptr::null_mut(), 0) }
        })?;
        check(ret, "resource create")?;
        self.resources.insert(id, (a.width, a.height));
        Ok(())
    }

    fn transfer(
        &mut self,
        ctx_id: u32,
        id: u32,
        t: &Transfer3d,
        write: bool,
    ) -> RendererResult<()> {
        self.known(id)?;
        if ctx_id != 0 {
            self.known_ctx(ctx_id)?;
        }
        let t = *t;
        let ret = self.call(move |st| {
            if !st.backings.contains_key(&id) {
                return -libc::EINVAL;
            }
            let mut b = VirglBox {
                x: t.bx.x,
                y: t.bx.y,
                z: t.bx.z,
                w: t.bx.w,
                h: t.bx.h,
                d: t.bx.d,
            };
            let bp = (&mut b as *mut VirglBox).cast::<sys::virgl_box>();
            // SAFETY: `b` is a live virgl_box; null iovecs mean "the attached backing", whose
            // array lives in `st.backings` and whose memory the backend keeps mapped.
            // virglrenderer checks the box and offset against the resource and backing.
            unsafe {
                if write {
                    sys::virgl_renderer_transfer_write_iov(
                        id,
                        ctx_id,
                        t.level as i32,
                        t.stride,
                        t.layer_stride,
                        bp,
                        t.offset,
                        std::ptr::null_mut(),
                        0,
                    )
                } else {
                    sys::virgl_renderer_transfer_read_iov(
                        id,
                        ctx_id,
                        t.level,
                        t.stride,
                        t.layer_stride,
                        bp,
                        t.offset,
                        std::ptr::null_mut(),
                        0,
                    )
                }
            }
        })?;
        if ret == -libc::EINVAL {
            return Err(RendererError::InvalidParameter(
                "transfer refused (box, offset or backing)",
            ));
        }
        check(ret, "transfer")
    }
}

impl Drop for VirglRenderer {
    fn drop(&mut self) {
        let contexts: Vec<u32> = self.contexts.drain().collect();
        let resources: Vec<u32> = self.resources.drain().map(|(k, _)| k).collect();
        let _ = self.call(move |st| {
            for c in contexts {
                // SAFETY: a context this handle created.
                unsafe { sys::virgl_renderer_context_destroy(c) };
            }
            for r in resources {
                release_resource(st, r);
            }
        });
    }
}

/// Unrefs a resource this renderer created, on the renderer thread, and frees its iovec array.
fn release_resource(st: &mut State, id: u32) {
    let mut iov: *mut sys::iovec = std::ptr::null_mut();
    let mut n = 0i32;
    // SAFETY: a live resource this renderer created; out-pointers are live locals. Detaching
    // first so that virglrenderer drops its pointer to our iovec array before we free it.
    unsafe {
        sys::virgl_renderer_resource_detach_iov(id as i32, &mut iov, &mut n);
        sys::virgl_renderer_resource_unref(id);
    }
    st.backings.remove(&id);
}

impl Renderer for VirglRenderer {
    fn kind(&self) -> RendererKind {
        RendererKind::Virgl
    }

    fn num_capsets(&self) -> u32 {
        self.worker.capsets.len() as u32
    }

    fn capsets(&self) -> Vec<CapsetInfo> {
        self.worker.capsets.clone()
    }

    fn capset(&mut self, id: u32, version: u32) -> RendererResult<Vec<u8>> {
        let info = self
            .worker
            .capsets
            .iter()
            .find(|c| c.id == id)
            .copied()
            .ok_or(RendererError::InvalidParameter("unknown capset id"))?;
        // Version 0 is what the Linux driver sends for Mesa (it never sets one); virglrenderer
        // fills the same bytes for it.
        if version > info.max_version {
            return Err(RendererError::InvalidParameter(
                "capset version out of range",
            ));
        }
        self.call(move |_| {
            // Zeroed first: bytes virglrenderer does not fill are zero, never stale.
            let mut buf = vec![0u8; info.max_size as usize];
            // SAFETY: `buf` holds max_size bytes, the size virglrenderer reported for this
            // capset; fill_caps writes at most that.
            unsafe { sys::virgl_renderer_fill_caps(id, version, buf.as_mut_ptr().cast()) };
            buf
        })
    }

    fn create_2d(&mut self, id: u32, format: u32, width: u32, height: u32) -> RendererResult<()> {
        let a = Resource3d {
            target: PIPE_TEXTURE_2D,
            format,
            bind: PIPE_BIND_RENDER_TARGET,
            width,
            height,
            depth: 1,
            array_size: 1,
            // 2D resources are top-down images (as QEMU creates them).
            flags: RESOURCE_Y_0_TOP,
            ..Default::default()
        };
        self.create(id, a)
    }

    fn create_3d(&mut self, id: u32, args: &Resource3d) -> RendererResult<()> {
        self.create(id, *args)
    }

    fn create_blob(
        &mut self,
        ctx_id: u32,
        id: u32,
        blob_mem: u32,
        blob_flags: u32,
        blob_id: u64,
        size: u64,
        iovecs: Vec<Iovec>,
    ) -> RendererResult<()> {
        if id == 0 || self.resources.contains_key(&id) {
            return Err(RendererError::ResourceExists(id));
        }
        if ctx_id != 0 {
            self.known_ctx(ctx_id)?;
        }
        let n = u32::try_from(iovecs.len())
            .map_err(|_| RendererError::InvalidParameter("too many iovecs"))?;
        let ret = self.call(move |st| {
            let v: Vec<libc::iovec> = iovecs
                .iter()
                .map(|i| libc::iovec {
                    iov_base: i.base.cast(),
                    iov_len: i.len,
                })
                .collect();
            let args = sys::virgl_renderer_resource_create_blob_args {
                res_handle: id,
                ctx_id,
                blob_mem,
                blob_flags,
                blob_id,
                size,
                iovecs: if v.is_empty() {
                    std::ptr::null()
                } else {
                    v.as_ptr().cast()
                },
                num_iovs: n,
            };
            // SAFETY: `args` is fully initialised; its iovec array is moved into `st.backings`
            // below (a Vec's heap buffer does not move), so it outlives the resource, and the
            // memory it names is kept mapped by the backend. virglrenderer checks blob_mem,
            // blob_id and size against the context.
            let ret = unsafe { sys::virgl_renderer_resource_create_blob(&args) };
            if ret == 0 {
                st.backings.insert(id, v);
            }
            ret
        })?;
        if ret != 0 {
            return Err(RendererError::InvalidParameter(
                "blob refused by virglrenderer",
            ));
        }
        self.resources.insert(id, (0, 0));
        Ok(())
    }

    fn unref(&mut self, id: u32) -> RendererResult<()> {
        self.known(id)?;
        self.resources.remove(&id);
        self.call(move |st| release_resource(st, id))
    }

    fn attach_backing(&mut self, id: u32, iovecs: Vec<Iovec>) -> RendererResult<()> {
        self.known(id)?;
        let n = i32::try_from(iovecs.len())
            .map_err(|_| RendererError::InvalidParameter("too many iovecs"))?;
        let ret = self.call(move |st| {
            let mut v: Vec<libc::iovec> = iovecs
                .iter()
                .map(|i| libc::iovec {
                    iov_base: i.base.cast(),
                    iov_len: i.len,
                })
                .collect();
            // SAFETY: `v` is moved into `st.backings` right after and never resized until the
            // resource is detached, so the array virglrenderer keeps a pointer to stays put;
            // the memory it names is kept mapped by the backend while attached.
            let ret = unsafe {
                sys::virgl_renderer_resource_attach_iov(id as i32, v.as_mut_ptr().cast(), n)
            };
            if ret == 0 {
                st.backings.insert(id, v);
            }
            ret
        })?;
        check(ret, "attach backing")
    }

    fn detach_backing(&mut self, id: u32) -> RendererResult<()> {
        self.known(id)?;
        self.call(move |st| {
            let mut iov: *mut sys::iovec = std::ptr::null_mut();
            let mut n = 0i32;
            // SAFETY: a live resource; out-pointers are live locals.
            unsafe { sys::virgl_renderer_resource_detach_iov(id as i32, &mut iov, &mut n) };
            st.backings.remove(&id);
        })
    }

    fn transfer_to_host_2d(&mut self, id: u32, rect: Rect, offset: u64) -> RendererResult<()> {
        let (w, h) = self.known(id)?;
        if !rect.fits_in(w, h) {
            return Err(RendererError::InvalidParameter("rect outside resource"));
        }
        let t = Transfer3d {
            bx: crate::Box3d {
                x: rect.x,
                y: rect.y,
                z: 0,
                w: rect.width,
                h: rect.height,
                d: 1,
            },
            level: 0,
            stride: w * BYTES_PER_PIXEL,
            layer_stride: 0,
            offset,
        };
        self.transfer(0, id, &t, true)
    }

    fn read_rect(&mut self, id: u32, rect: Rect, dst: &mut [u8]) -> RendererResult<()> {
        let (w, h) = self.known(id)?;
        if !rect.fits_in(w, h) {
            return Err(RendererError::InvalidParameter("rect outside resource"));
        }
        let stride = w
            .checked_mul(BYTES_PER_PIXEL)
            .ok_or(RendererError::InvalidParameter("width"))?;
        if (dst.len() as u64) < u64::from(stride) * u64::from(h) {
            return Err(RendererError::InvalidParameter("destination too small"));
        }
        let offset =
            u64::from(rect.y) * u64::from(stride) + u64::from(rect.x) * u64::from(BYTES_PER_PIXEL);
        let p = SendPtr(dst.as_mut_ptr(), dst.len());
        let ret = self.call(move |_| {
            let p = p;
            let mut iov = libc::iovec {
                iov_base: p.0.cast(),
                iov_len: p.1,
            };
            let mut b = VirglBox {
                x: rect.x,
                y: rect.y,
                z: 0,
                w: rect.width,
                h: rect.height,
                d: 1,
            };
            // SAFETY: `iov` names the caller's buffer, which outlives this job (the caller
            // waits for it); it holds a whole resource at `stride`, so every row of the box
            // lands inside it. `b` is a live virgl_box.
            unsafe {
                sys::virgl_renderer_transfer_read_iov(
                    id,
                    0,
                    0,
                    stride,
                    0,
                    (&mut b as *mut VirglBox).cast(),
                    offset,
                    (&mut iov as *mut libc::iovec).cast(),
                    1,
                )
            }
        })?;
        check(ret, "read back")
    }

    fn create_context(&mut self, ctx_id: u32, capset_id: u32, name: &[u8]) -> RendererResult<()> {
        if ctx_id == 0 || self.contexts.contains(&ctx_id) {
            return Err(RendererError::InvalidParameter("context id in use"));
        }
        if capset_id != 0 && !self.worker.capsets.iter().any(|c| c.id == capset_id) {
            return Err(RendererError::InvalidParameter(
                "context capset not offered",
            ));
        }
        let name = name.to_vec();
        let ret = self.call(move |_| {
            let nlen = name.len() as u32;
            // SAFETY: `name` is a live buffer of exactly nlen bytes (no terminator needed).
            // context_init 0 is the legacy (virgl) context, which only the old call accepts.
            unsafe {
                if capset_id == 0 {
                    sys::virgl_renderer_context_create(ctx_id, nlen, name.as_ptr().cast())
                } else {
                    sys::virgl_renderer_context_create_with_flags(
                        ctx_id,
                        capset_id,
                        nlen,
                        name.as_ptr().cast(),
                    )
                }
            }
        })?;
        check(ret, "context create")?;
        self.contexts.insert(ctx_id);
        Ok(())
    }

    fn destroy_context(&mut self, ctx_id: u32) -> RendererResult<()> {
        self.known_ctx(ctx_id)?;
        self.contexts.remove(&ctx_id);
        // SAFETY: a context this handle created.
        self.call(move |_| unsafe { sys::virgl_renderer_context_destroy(ctx_id) })
    }

    fn context_attach(&mut self, ctx_id: u32, id: u32) -> RendererResult<()> {
        self.known_ctx(ctx_id)?;
        self.known(id)?;
        // SAFETY: a live context and resource.
        self.call(move |_| unsafe {
            sys::virgl_renderer_ctx_attach_resource(ctx_id as i32, id as i32)
        })
    }

    fn context_detach(&mut self, ctx_id: u32, id: u32) -> RendererResult<()> {
        self.known_ctx(ctx_id)?;
        self.known(id)?;
        // SAFETY: a live context and resource.
        self.call(move |_| unsafe {
            sys::virgl_renderer_ctx_detach_resource(ctx_id as i32, id as i32)
        })
    }

    fn transfer_to_host_3d(&mut self, ctx_id: u32, id: u32, t: &Transfer3d) -> RendererResult<()> {
        self.transfer(ctx_id, id, t, true)
    }

    fn transfer_from_host_3d(
        &mut self,
        ctx_id: u32,
        id: u32,
        t: &Transfer3d,
    ) -> RendererResult<()> {
        self.transfer(ctx_id, id, t, false)
    }

    fn export_blob(&mut self, id: u32) -> RendererResult<ExportedBlob> {
        self.known(id)?;
        let (ret, fd_type, fd, map_ret, map_info, opaque_at) = self.call(move |_| {
            let (mut fd_type, mut fd, mut map_info) = (0u32, -1i32, 0u32);
            // SAFETY: a live resource this handle made; the out-pointers are live locals.
            // virglrenderer hands over a new descriptor (ours to close) on success.
            let ret =
                unsafe { sys::virgl_renderer_resource_export_blob(id, &mut fd_type, &mut fd) };
            // SAFETY: as above; map_info is only written.
            let map_ret = unsafe { sys::virgl_renderer_resource_get_map_info(id, &mut map_info) };
            let opaque_at = (ret == 0 && fd_type == sys::VIRGL_RENDERER_BLOB_FD_TYPE_OPAQUE)
                .then(|| opaque_offset(id));
            (ret, fd_type, fd, map_ret, map_info, opaque_at)
        })?;
        if ret != 0 || fd < 0 {
            return Err(RendererError::InvalidParameter(
                "blob cannot be exported (not a mappable host blob)",
            ));
        }
        // SAFETY: export_blob succeeded, so `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if map_ret != 0 {
            return Err(RendererError::InvalidParameter("blob has no map info"));
        }
        let size = match fd_type {
            sys::VIRGL_RENDERER_BLOB_FD_TYPE_DMABUF
            | sys::VIRGL_RENDERER_BLOB_FD_TYPE_OPAQUE
            | sys::VIRGL_RENDERER_BLOB_FD_TYPE_SHM => {
                // SAFETY: lseek on a descriptor we own; SEEK_END gives its size (dma-bufs
                // and memfds both answer), then back to 0.
                let end = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_END) };
                // SAFETY: as above.
                unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_SET) };
                u64::try_from(end).map_err(|_| {
                    RendererError::Backend(format!(
                        "exported blob of type {fd_type}: size unknown ({})",
                        std::io::Error::last_os_error()
                    ))
                })?
            }
            other => {
                return Err(RendererError::Backend(format!(
                    "exported blob of unknown descriptor type {other}"
                )))
            }
        };
        // DMABUF and SHM descriptors hold the blob's bytes from offset 0. An OPAQUE one is the
        // Vulkan driver's own format (lavapipe's memfd starts with a page of header), so where
        // the bytes are is learnt from virglrenderer's own mapping of it (it imports the
        // descriptor into a Vulkan device and maps the memory), which must map that same file.
        let offset = match opaque_at {
            None => 0,
            Some(Ok(at)) => {
                // SAFETY: fstat fills a stat buffer for a descriptor we own.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
                    return Err(RendererError::Backend(format!(
                        "exported blob: fstat: {}",
                        std::io::Error::last_os_error()
                    )));
                }
                if (at.dev, at.ino) != (st.st_dev, st.st_ino) {
                    return Err(RendererError::Backend(format!(
                        "opaque blob {id}: the driver maps another file than the one it exports, so the guest cannot be given its memory"
                    )));
                }
                at.offset
            }
            Some(Err(e)) => {
                return Err(RendererError::Backend(format!(
                    "opaque blob {id}: where its memory starts is unknown: {e}"
                )))
            }
        };
        // SAFETY: sysconf reads a constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        if offset % page != 0 || offset > size {
            return Err(RendererError::Backend(format!(
                "blob {id}: its memory starts at {offset:#x} of {size:#x} bytes, not at a page"
            )));
        }
        Ok(ExportedBlob {
            fd,
            offset,
            size,
            map_info: map_info & sys::VIRGL_RENDERER_MAP_CACHE_MASK,
        })
    }

    fn submit_3d(&mut self, ctx_id: u32, mut cmds: Vec<u8>) -> RendererResult<()> {
        self.known_ctx(ctx_id)?;
        if cmds.len() % 4 != 0 {
            return Err(RendererError::InvalidParameter(
                "command stream not whole words",
            ));
        }
        // An empty stream (a guest's fence-only execbuffer) has nothing to run. virglrenderer
        // 0.10 accepted it and did nothing; 1.x rejects it with EINVAL. Nothing is called, so
        // both answer OK, and the command's fence follows as for any other.
        if cmds.is_empty() {
            return Ok(());
        }
        let ndw = i32::try_from(cmds.len() / 4)
            .map_err(|_| RendererError::InvalidParameter("command stream too long"))?;
        let ret = self.call(move |_| {
            // SAFETY: `cmds` holds exactly ndw 32-bit words; virglrenderer parses them with
            // its own bounds checks.
            unsafe { sys::virgl_renderer_submit_cmd(cmds.as_mut_ptr().cast(), ctx_id as i32, ndw) }
        })?;
        if ret != 0 {
            return Err(RendererError::InvalidParameter("command stream rejected"));
        }
        Ok(())
    }

    fn create_fence(
        &mut self,
        ctx_id: u32,
        timeline: FenceTimeline,
        fence_id: u64,
    ) -> RendererResult<()> {
        let ret = match timeline {
            FenceTimeline::Global => {
                if ctx_id != 0 {
                    self.known_ctx(ctx_id)?;
                }
                // The legacy call takes a 32-bit id; the device matches completions in order.
                let id = fence_id as u32 as i32;
                // SAFETY: plain integers; the context (if any) is live.
                self.call(move |_| unsafe { sys::virgl_renderer_create_fence(id, ctx_id) })?
            }
            FenceTimeline::Ring { ctx_id, ring_idx } => {
                self.known_ctx(ctx_id)?;
                // SAFETY: a live context; plain integers.
                self.call(move |_| unsafe {
                    sys::virgl_renderer_context_create_fence(
                        ctx_id,
                        0,
                        u32::from(ring_idx),
                        fence_id,
                    )
                })?
            }
        };
        check(ret, "fence create")
    }

    fn fence_fd(&self) -> Option<RawFd> {
        Some(sink().event.as_raw_fd())
    }

    fn take_completed_fences(&mut self) -> Vec<FenceDone> {
        let s = sink();
        let _ = s.event.read();
        std::mem::take(&mut *s.done.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Where a mapping in this process comes from: the file (device, inode) and the offset in it.
#[derive(Debug, PartialEq, Eq)]
struct FileAt {
    dev: u64,
    ino: u64,
    offset: u64,
}

/// Maps an opaque blob the way virglrenderer does for an in-process user (its Vulkan allocator
/// imports the descriptor and maps the memory), finds which file and offset that address comes
/// from in /proc/self/maps, and unmaps. Runs on the renderer thread.
fn opaque_offset(id: u32) -> Result<FileAt, String> {
    let (mut p, mut len) = (std::ptr::null_mut::<c_void>(), 0u64);
    // SAFETY: a live blob resource; the out-pointers are live locals. On success virglrenderer
    // keeps the mapping until resource_unmap, called below.
    let r = unsafe { sys::virgl_renderer_resource_map(id, &mut p, &mut len) };
    if r != 0 || p.is_null() {
        return Err(format!("virglrenderer cannot map it ({r})"));
    }
    let at = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("/proc/self/maps: {e}"))
        .and_then(|maps| file_at(&maps, p as u64).ok_or_else(|| "not a file mapping".into()));
    // SAFETY: undoes the mapping made above; nothing kept its address.
    unsafe { sys::virgl_renderer_resource_unmap(id) };
    at
}

/// The virglrenderer library this process runs (a newer one may come first on
/// LD_LIBRARY_PATH than the one vhost-gpu was built against), from /proc/self/maps.
fn loaded_library() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let path = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libvirglrenderer.so"))?;
    Some(std::fs::canonicalize(path).map_or_else(|_| path.to_string(), |p| p.display().to_string()))
}

/// The file and offset behind `addr`, from /proc/PID/maps text.
fn file_at(maps: &str, addr: u64) -> Option<FileAt> {
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (start, end) = f.next()?.split_once('-')?;
        let (start, end) = (
            u64::from_str_radix(start, 16).ok()?,
            u64::from_str_radix(end, 16).ok()?,
        );
        if !(start..end).contains(&addr) {
            return None;
        }
        let _perms = f.next()?;
        let off = u64::from_str_radix(f.next()?, 16).ok()?;
        let (major, minor) = f.next()?.split_once(':')?;
        let dev = libc::makedev(
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        );
        let ino: u64 = f.next()?.parse().ok()?;
        (ino != 0).then(|| FileAt {
            dev,
            ino,
            offset: addr - start + off,
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mapping_is_traced_to_its_file_and_offset() {
        let maps = "7f0000000000-7f0000003000 rw-s 00000000 00:01 4242 /memfd:llvmpipe memory fd (deleted)\n\
                    7f0000003000-7f0000005000 rw-p 00000000 00:00 0 \n";
        assert_eq!(
            file_at(maps, 0x7f0000001000),
            Some(FileAt {
                dev: libc::makedev(0, 1),
                ino: 4242,
                offset: 0x1000
            })
        );
        assert_eq!(file_at(maps, 0x7f0000004000), None, "anonymous memory");
        assert_eq!(file_at(maps, 0x7f0000006000), None, "not mapped");
    }

    use super::*;
    use std::time::{Duration, Instant};

    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// virglrenderer on llvmpipe: capsets, a context, a clear, read back, a fence.
    #[test]
    fn clear_read_back_and_fence_on_llvmpipe() {
        let mut r = VirglRenderer::new(&VirglOptions::default()).expect("virgl on llvmpipe");
        let caps = r.capsets();
        assert!(
            caps.iter().any(|c| c.id == CAPSET_VIRGL && c.max_size > 0),
            "{caps:?}"
        );
        assert!(
            caps.iter().any(|c| c.id == CAPSET_VIRGL2 && c.max_size > 0),
            "{caps:?}"
        );
        let data = r.capset(CAPSET_VIRGL2, 2).unwrap();
        assert_eq!(
            data.len() as u32,
            caps.iter().find(|c| c.id == 2).unwrap().max_size
        );
        assert!(r.capset(CAPSET_VIRGL2, 99).is_err());
        assert!(r.capset(77, 1).is_err());

        r.create_context(1, 0, b"test").unwrap();
        r.create_2d(5, 1, 16, 8).unwrap(); // B8G8R8A8
        r.context_attach(1, 5).unwrap();
        // surface 1 on resource 5, framebuffer, clear to (r=1, g=0.5, b=0, a=1)
        let cmds = words(&[
            1 | (8 << 8) | (5 << 16),
            1,
            5,
            1,
            0,
            0,
            5 | (3 << 16),
            1,
            0,
            1,
            7 | (8 << 16),
            4,
            1.0f32.to_bits(),
            0.5f32.to_bits(),
            0,
            1.0f32.to_bits(),
            0,
            0,
            0,
        ]);
        r.submit_3d(1, cmds).unwrap();
        r.create_fence(1, FenceTimeline::Global, 7).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut done = Vec::new();
        while done.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            done = r.take_completed_fences();
        }
        assert_eq!(
            done,
            vec![FenceDone {
                timeline: FenceTimeline::Global,
                fence_id: 7
            }]
        );
        let mut px = vec![0u8; 16 * 8 * 4];
        r.read_rect(
            5,
            Rect {
                x: 0,
                y: 0,
                width: 16,
                height: 8,
            },
            &mut px,
        )
        .unwrap();
        for p in px.chunks(4) {
            assert_eq!(p[2], 0xff, "red");
            assert!(p[1] == 0x7f || p[1] == 0x80, "green {}", p[1]);
            assert_eq!((p[0], p[3]), (0, 0xff));
        }
        assert!(r.submit_3d(2, vec![0; 4]).is_err(), "unknown context");
        assert!(r.submit_3d(1, vec![0; 3]).is_err(), "partial word");
        r.destroy_context(1).unwrap();
        r.unref(5).unwrap();
    }
}
