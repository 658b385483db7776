//! Issues virtio-gpu commands the way the Linux driver does, and reads the replies.

use std::time::Duration;

use crate::display::DisplayServer;
use crate::frontend::{Backend, ConnectOptions, Connection};
use crate::virtqueue::Buf;
use crate::wire::*;
use vhost::vhost_user::VhostUserFrontend as _;

/// Control queue index.
pub const CONTROLQ: usize = 0;
/// Cursor queue index.
pub const CURSORQ: usize = 1;

/// How long a test waits for a reply before calling the device hung.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A guest driver on one connection.
pub struct Gpu {
    pub conn: Connection,
}

/// A reply: its bytes (as many as the device reported writing).
#[derive(Clone, Debug)]
pub struct Reply(pub Vec<u8>);

impl Reply {
    /// The response type.
    pub fn code(&self) -> u32 {
        le32(&self.0, 0)
    }
}

impl Gpu {
    /// Connects to a running backend.
    pub fn connect(backend: &Backend, opts: &ConnectOptions) -> Self {
        let conn = Connection::connect(&backend.socket, opts)
            .unwrap_or_else(|e| panic!("connect: {e}\nbackend log:\n{}", backend.log_text()));
        Gpu { conn }
    }

    /// The config space now (GET_CONFIG): events_read, events_clear, num_scanouts,
    /// num_capsets.
    pub fn read_config(&mut self) -> [u32; 4] {
        let (_, cfg) = self
            .conn
            .frontend
            .get_config(
                0,
                16,
                vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
                &[0u8; 16],
            )
            .expect("GET_CONFIG");
        [0, 4, 8, 12].map(|o| le32(&cfg, o))
    }

    /// The guest's write of events_clear (SET_CONFIG, as QEMU forwards it).
    pub fn clear_events(&mut self, events: u32) {
        self.conn
            .frontend
            .set_config(
                4,
                vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
                &events.to_le_bytes(),
            )
            .expect("SET_CONFIG");
    }

    /// Config-change messages the backend sent on its request channel so far.
    pub fn config_changes(&self) -> u64 {
        self.conn
            .shmem
            .as_ref()
            .map_or(0, |s| s.region.lock().unwrap().config_changes)
    }

    /// The display channel (panics when the connection has none).
    pub fn display(&self) -> &DisplayServer {
        self.conn
            .display
            .as_ref()
            .expect("connection has a display channel")
    }

    /// Sends one request chain (request bytes, then a writable reply buffer of `reply_len`)
    /// and waits for the reply.
    pub fn request(&mut self, queue: usize, req: &[u8], reply_len: u32) -> Reply {
        let (len, at) = self.request_with_guard(queue, req, reply_len, 0);
        let reply = Reply(self.conn.mem.read(at, len as usize));
        self.conn.mem.reset_alloc_if_idle(&self.conn.queues);
        reply
    }

    /// Sends `req` on the control queue with a reply buffer of `reply_len` bytes followed by
    /// 64 bytes the device is not given, all filled with 0xee first; returns the used length
    /// the device reported and the whole area (reply buffer + guard), to check what was and
    /// was not written.
    pub fn request_guarded(&mut self, req: &[u8], reply_len: u32) -> (u32, Vec<u8>) {
        let (len, at) = self.request_with_guard(CONTROLQ, req, reply_len, 64);
        let area = self.conn.mem.read(at, reply_len as usize + 64);
        self.conn.mem.reset_alloc_if_idle(&self.conn.queues);
        (len, area)
    }

    /// Puts `req` and a 0xee-filled reply buffer (plus `guard` bytes not given to the device)
    /// in guest memory, sends them as one chain and waits; returns (used length, reply address).
    fn request_with_guard(
        &mut self,
        queue: usize,
        req: &[u8],
        reply_len: u32,
        guard: u32,
    ) -> (u32, u64) {
        let mut bufs = Vec::new();
        if !req.is_empty() {
            let a = self.conn.mem.alloc(req.len() as u64, 16);
            self.conn.mem.write(a, req);
            bufs.push(Buf {
                addr: a,
                len: req.len() as u32,
                writable: false,
            });
        }
        let area = reply_len as usize + guard as usize;
        let r = self.conn.mem.alloc(area.max(1) as u64, 16);
        self.conn.mem.write(r, &vec![0xee; area]);
        if reply_len > 0 {
            bufs.push(Buf {
                addr: r,
                len: reply_len,
                writable: true,
            });
        }
        (self.wait_chain(queue, &bufs), r)
    }

    /// Sends a chain made of the given buffers and waits; the reply is read at `reply_at`.
    pub fn submit_raw(&mut self, queue: usize, bufs: &[Buf], reply_at: u64) -> Reply {
        let len = self.wait_chain(queue, bufs) as usize;
        let reply = Reply(self.conn.mem.read(reply_at, len));
        self.conn.mem.reset_alloc_if_idle(&self.conn.queues);
        reply
    }

    /// Adds a chain to a queue, kicks, and waits for its completion; returns the used length.
    fn wait_chain(&mut self, queue: usize, bufs: &[Buf]) -> u32 {
        let vq = &mut self.conn.queues[queue];
        let head = vq.add(&self.conn.mem, bufs);
        vq.notify(&self.conn.mem);
        let used = vq.wait_used(&self.conn.mem, 1, REPLY_TIMEOUT);
        used.iter()
            .find(|u| u.head == head)
            .unwrap_or_else(|| panic!("no reply on queue {queue} within {REPLY_TIMEOUT:?}"))
            .len
    }

    /// A control-queue command with a reply buffer of `reply_len`.
    pub fn ctrl(&mut self, req: Msg, reply_len: u32) -> Reply {
        self.request(CONTROLQ, &req.0, reply_len)
    }

    /// A control-queue command whose reply is a bare header; returns the code.
    pub fn ctrl_code(&mut self, req: Msg) -> u32 {
        self.ctrl(req, 24).code()
    }

    pub fn display_info(&mut self) -> Reply {
        self.ctrl(Msg::cmd(GET_DISPLAY_INFO), 24 + 16 * 24)
    }

    pub fn edid(&mut self, scanout: u32) -> Reply {
        self.ctrl(Msg::cmd(GET_EDID).u32(scanout).u32(0), 24 + 8 + 1024)
    }

    pub fn create_2d(&mut self, id: u32, format: u32, w: u32, h: u32) -> u32 {
        self.ctrl_code(
            Msg::cmd(RESOURCE_CREATE_2D)
                .u32(id)
                .u32(format)
                .u32(w)
                .u32(h),
        )
    }

    pub fn unref(&mut self, id: u32) -> u32 {
        self.ctrl_code(Msg::cmd(RESOURCE_UNREF).u32(id).u32(0))
    }

    pub fn attach_backing(&mut self, id: u32, entries: &[(u64, u32)]) -> u32 {
        let mut m = Msg::cmd(RESOURCE_ATTACH_BACKING)
            .u32(id)
            .u32(entries.len() as u32);
        for &(a, l) in entries {
            m = m.u64(a).u32(l).u32(0);
        }
        self.ctrl_code(m)
    }

    pub fn detach_backing(&mut self, id: u32) -> u32 {
        self.ctrl_code(Msg::cmd(RESOURCE_DETACH_BACKING).u32(id).u32(0))
    }

    pub fn set_scanout(&mut self, scanout: u32, id: u32, r: (u32, u32, u32, u32)) -> u32 {
        self.ctrl_code(
            Msg::cmd(SET_SCANOUT)
                .rect(r.0, r.1, r.2, r.3)
                .u32(scanout)
                .u32(id),
        )
    }

    /// TRANSFER_TO_HOST_2D with the Linux driver's offset (of the rect's top-left pixel).
    pub fn transfer(&mut self, id: u32, r: (u32, u32, u32, u32), stride: u32) -> u32 {
        let offset = u64::from(r.1) * u64::from(stride) + u64::from(r.0) * 4;
        self.transfer_at(id, r, offset)
    }

    pub fn transfer_at(&mut self, id: u32, r: (u32, u32, u32, u32), offset: u64) -> u32 {
        self.ctrl_code(
            Msg::cmd(TRANSFER_TO_HOST_2D)
                .rect(r.0, r.1, r.2, r.3)
                .u64(offset)
                .u32(id)
                .u32(0),
        )
    }

    pub fn flush(&mut self, id: u32, r: (u32, u32, u32, u32)) -> u32 {
        self.ctrl_code(
            Msg::cmd(RESOURCE_FLUSH)
                .rect(r.0, r.1, r.2, r.3)
                .u32(id)
                .u32(0),
        )
    }

    pub fn assign_uuid(&mut self, id: u32) -> Reply {
        self.ctrl(Msg::cmd(RESOURCE_ASSIGN_UUID).u32(id).u32(0), 24 + 16)
    }

    pub fn update_cursor(&mut self, scanout: u32, x: u32, y: u32, id: u32, hot: (u32, u32)) -> u32 {
        let m = Msg::cmd(UPDATE_CURSOR)
            .u32(scanout)
            .u32(x)
            .u32(y)
            .u32(0)
            .u32(id)
            .u32(hot.0)
            .u32(hot.1)
            .u32(0);
        self.request(CURSORQ, &m.0, 24).code()
    }

    pub fn move_cursor(&mut self, scanout: u32, x: u32, y: u32) -> u32 {
        let m = Msg::cmd(MOVE_CURSOR)
            .u32(scanout)
            .u32(x)
            .u32(y)
            .u32(0)
            .u32(0)
            .u32(0)
            .u32(0)
            .u32(0);
        self.request(CURSORQ, &m.0, 24).code()
    }

    /// Puts a request on a queue without waiting; returns (head, reply address).
    pub fn send(&mut self, queue: usize, req: &[u8], reply_len: u32) -> (u16, u64) {
        let a = self.conn.mem.alloc(req.len() as u64, 16);
        self.conn.mem.write(a, req);
        let r = self.conn.mem.alloc(u64::from(reply_len), 16);
        let bufs = [
            Buf {
                addr: a,
                len: req.len() as u32,
                writable: false,
            },
            Buf {
                addr: r,
                len: reply_len,
                writable: true,
            },
        ];
        let vq = &mut self.conn.queues[queue];
        let head = vq.add(&self.conn.mem, &bufs);
        vq.notify(&self.conn.mem);
        (head, r)
    }

    /// Waits for `n` completions on a queue, in the order the device used them.
    pub fn collect(&mut self, queue: usize, n: usize) -> Vec<crate::virtqueue::Used> {
        let used = self.conn.queues[queue].wait_used(&self.conn.mem, n, REPLY_TIMEOUT);
        assert!(
            used.len() >= n,
            "{} of {n} replies within {REPLY_TIMEOUT:?}",
            used.len()
        );
        self.conn.mem.reset_alloc_if_idle(&self.conn.queues);
        used
    }

    /// Reads guest memory (a reply sent with `send`).
    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        self.conn.mem.read(gpa, len)
    }

    pub fn capset_info(&mut self, index: u32) -> Reply {
        self.ctrl(Msg::cmd(GET_CAPSET_INFO).u32(index).u32(0), 24 + 16)
    }

    pub fn capset(&mut self, id: u32, version: u32, size: u32) -> Reply {
        self.ctrl(Msg::cmd(GET_CAPSET).u32(id).u32(version), 24 + size)
    }

    /// CTX_CREATE for `ctx` with `context_init` (low 8 bits: capset id).
    pub fn ctx_create(&mut self, ctx: u32, context_init: u32, name: &str) -> u32 {
        let mut n = name.as_bytes().to_vec();
        n.resize(64, 0);
        self.ctrl_code(
            Msg::hdr(CTX_CREATE, 0, 0, ctx, 0)
                .u32(name.len() as u32)
                .u32(context_init)
                .bytes(&n),
        )
    }

    pub fn ctx_destroy(&mut self, ctx: u32) -> u32 {
        self.ctrl_code(Msg::hdr(CTX_DESTROY, 0, 0, ctx, 0))
    }

    pub fn ctx_attach(&mut self, ctx: u32, id: u32) -> u32 {
        self.ctrl_code(Msg::hdr(CTX_ATTACH_RESOURCE, 0, 0, ctx, 0).u32(id).u32(0))
    }

    pub fn ctx_detach(&mut self, ctx: u32, id: u32) -> u32 {
        self.ctrl_code(Msg::hdr(CTX_DETACH_RESOURCE, 0, 0, ctx, 0).u32(id).u32(0))
    }

    /// RESOURCE_CREATE_3D: a 2D texture (target 2) render target unless `target` says else.
    #[allow(clippy::too_many_arguments)]
    pub fn create_3d(
        &mut self,
        id: u32,
        target: u32,
        format: u32,
        bind: u32,
        w: u32,
        h: u32,
        depth: u32,
        last_level: u32,
    ) -> u32 {
        let m = Msg::cmd(RESOURCE_CREATE_3D)
            .u32(id)
            .u32(target)
            .u32(format)
            .u32(bind)
            .u32(w)
            .u32(h)
            .u32(depth)
            .u32(1)
            .u32(last_level)
            .u32(0)
            .u32(0)
            .u32(0);
        self.ctrl_code(m)
    }

    /// TRANSFER_{TO,FROM}_HOST_3D message: box, offset, resource, level, stride, layer stride.
    pub fn transfer_3d_msg(
        hdr: Msg,
        id: u32,
        bx: [u32; 6],
        offset: u64,
        level: u32,
        stride: u32,
    ) -> Msg {
        let mut m = hdr;
        for v in bx {
            m = m.u32(v);
        }
        m.u64(offset).u32(id).u32(level).u32(stride).u32(0)
    }

    /// SUBMIT_3D message with a command stream (whole words).
    pub fn submit_msg(hdr: Msg, words: &[u32]) -> Msg {
        let mut m = hdr.u32((words.len() * 4) as u32).u32(0);
        for w in words {
            m = m.u32(*w);
        }
        m
    }

    /// RESOURCE_CREATE_BLOB in context `ctx` (guest entries for BLOB_MEM_GUEST).
    #[allow(clippy::too_many_arguments)]
    pub fn create_blob(
        &mut self,
        ctx: u32,
        id: u32,
        blob_mem: u32,
        flags: u32,
        blob_id: u64,
        size: u64,
        entries: &[(u64, u32)],
    ) -> u32 {
        let mut m = Msg::hdr(RESOURCE_CREATE_BLOB, 0, 0, ctx, 0)
            .u32(id)
            .u32(blob_mem)
            .u32(flags)
            .u32(entries.len() as u32)
            .u64(blob_id)
            .u64(size);
        for &(a, l) in entries {
            m = m.u64(a).u32(l).u32(0);
        }
        self.ctrl_code(m)
    }

    /// RESOURCE_MAP_BLOB of `id` at `offset` in the host-visible region.
    pub fn map_blob(&mut self, id: u32, offset: u64) -> Reply {
        self.ctrl(Msg::cmd(RESOURCE_MAP_BLOB).u32(id).u32(0).u64(offset), 32)
    }

    /// RESOURCE_UNMAP_BLOB of `id`.
    pub fn unmap_blob(&mut self, id: u32) -> u32 {
        self.ctrl_code(Msg::cmd(RESOURCE_UNMAP_BLOB).u32(id).u32(0))
    }

    /// SET_SCANOUT_BLOB with one plane.
    #[allow(clippy::too_many_arguments)]
    pub fn set_scanout_blob(
        &mut self,
        scanout: u32,
        id: u32,
        r: (u32, u32, u32, u32),
        w: u32,
        h: u32,
        format: u32,
        stride: u32,
        offset: u32,
    ) -> u32 {
        let m = Msg::cmd(SET_SCANOUT_BLOB)
            .rect(r.0, r.1, r.2, r.3)
            .u32(scanout)
            .u32(id)
            .u32(w)
            .u32(h)
            .u32(format)
            .u32(0)
            .u32(stride)
            .u32(0)
            .u32(0)
            .u32(0)
            .u32(offset)
            .u32(0)
            .u32(0)
            .u32(0);
        self.ctrl_code(m)
    }

    /// Allocates a framebuffer's backing as a scatter list of 4 KiB pages in *reverse*
    /// order (so no two neighbours are contiguous, like shmem pages), fills it from `pixels`
    /// and returns the entries.
    pub fn scattered_backing(&mut self, pixels: &[u8]) -> Vec<(u64, u32)> {
        let pages = pixels.len().div_ceil(4096);
        let base = self.conn.mem.alloc_pinned(pages as u64 * 4096, 4096);
        let mut entries = Vec::with_capacity(pages);
        for i in 0..pages {
            let gpa = base + (pages - 1 - i) as u64 * 4096;
            let chunk = &pixels[i * 4096..((i + 1) * 4096).min(pixels.len())];
            self.conn.mem.write(gpa, chunk);
            entries.push((gpa, chunk.len() as u32));
        }
        entries
    }

    /// Writes `pixels` into backing previously returned by `scattered_backing`.
    pub fn write_backing(&mut self, entries: &[(u64, u32)], pixels: &[u8]) {
        let mut off = 0usize;
        for &(gpa, len) in entries {
            let end = (off + len as usize).min(pixels.len());
            self.conn.mem.write(gpa, &pixels[off..end]);
            off = end;
        }
    }
}
