//! vhost-user serving: features, config space, the display socket, and the thin queue loop
//! (pop a chain → decode → device → encode → used ring).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, info, warn};
use vhost::vhost_user::message::{
    VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Backend, GpuBackend};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_gpu::{
    VIRTIO_GPU_F_CONTEXT_INIT, VIRTIO_GPU_F_EDID, VIRTIO_GPU_F_RESOURCE_BLOB,
    VIRTIO_GPU_F_RESOURCE_UUID, VIRTIO_GPU_F_VIRGL,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueOwnedT, Reader, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::config::DeviceConfig;
use crate::device::{GpuDevice, HostVisible};
use crate::fences::PendingFences;
use crate::guest_warn;
use crate::protocol;
use crate::socket::{Frontends, ServingSocket};

/// Queue index of the control queue.
pub const CONTROL_QUEUE: u16 = 0;
/// Queue index of the cursor queue.
pub const CURSOR_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
const QUEUE_SIZE: usize = 1024;

/// The config space's size: events_read, events_clear, num_scanouts, num_capsets (the
/// virtio spec's 16 bytes) and host_page_size. QEMU >= 11.1 carries Linux's newer header, whose
/// struct has that fifth field (meaningful with VIRTIO_GPU_F_HOST_PAGE_SIZE, which is not
/// offered), and its vhost-user-gpu-pci reads all 20 bytes: a 16-byte space left its guest
/// with no scanouts.
pub const CONFIG_SIZE: usize = 20;

/// Epoll data of the renderer's fence eventfd (0..=NUM_QUEUES are the queues and exit).
const FENCE_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// What became of one chain: its reply's length (None: held for its fence), and the held
/// replies of other chains it released (a destroyed context's), to go on the used ring too.
struct ChainDone {
    len: Option<u32>,
    released: Vec<(u16, u32)>,
}

impl ChainDone {
    fn answered(len: u32) -> Self {
        ChainDone {
            len: Some(len),
            released: Vec::new(),
        }
    }
}

/// A fenced reply held until the renderer signals: the chain to write it into, and its bytes.
struct HeldReply {
    head: u16,
    chain: DescriptorChain<Arc<GuestMemoryMmap>>,
    reply: Vec<u8>,
}

/// An error from `handle_event` ends vhost-user-backend's queue thread for good (the device
/// would hang), so queue trouble — rings stopped under us, a bad used ring — is logged and the
/// thread goes on serving.
fn keep_serving(r: io::Result<()>, what: &str) -> io::Result<()> {
    if let Err(e) = r {
        guest_warn!("{what}: {e}");
    }
    Ok(())
}

/// The ring's size, read once a batch (each `get_ref` takes the vring's lock).
fn queue_size(vring: &VringRwLock) -> u16 {
    use virtio_queue::QueueT;
    vring.get_ref().get_queue().size()
}

/// Puts one answered chain on the used ring of `size` entries. A head the ring cannot take (an
/// index past the queue size, which the guest put in its available ring) is logged and skipped:
/// the other chains of the batch, already taken off the ring, must still be answered. It is
/// checked here, not left to virtio-queue, which would log each one at error level without a
/// rate limit. Returns whether the entry was added.
fn add_used(vring: &VringRwLock, size: u16, head: u16, len: u32) -> bool {
    if head >= size {
        guest_warn!("used ring: chain head {head} is past the queue size {size}; not answered");
        return false;
    }
    match vring.add_used(head, len) {
        Ok(()) => true,
        Err(e) => {
            guest_warn!("used ring: chain {head}: {e}");
            false
        }
    }
}

/// Tells the driver about the used entries just added, if there were any and it wants to hear
/// (with EVENT_IDX: past its used_event). Without EVENT_IDX `needs_notification` is always
/// true, so a pass that answered nothing (a kick for chains already served) must not get here
/// with `added` set: that would interrupt the driver for nothing.
fn notify_used(vring: &VringRwLock, added: bool) -> io::Result<()> {
    if added && vring.needs_notification().map_err(io::Error::other)? {
        vring.signal_used_queue()?;
    }
    Ok(())
}

/// Writes a reply into a chain's writable part; returns the bytes written.
fn write_reply<W: std::io::Write>(mut w: W, reply: &[u8]) -> u32 {
    match w.write_all(reply) {
        Ok(()) => reply.len() as u32,
        Err(e) => {
            guest_warn!("writing a reply: {e}");
            0
        }
    }
}

/// Config space event: the guest should re-read display info.
pub const EVENT_DISPLAY: u32 = 1;

/// Errors of the vhost-user layer.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("creating an event: {0}")]
    Event(io::Error),
    /// (Kept as text: the daemon's error can hold a thread's panic payload, which is not Sync.)
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    #[error("the connected socket's frontend was already served")]
    Served,
    #[error("renderer: {0}")]
    Renderer(#[from] virgl_bridge::RendererError),
}

/// virtio-gpu's host-visible shared memory region id (VIRTIO_GPU_SHM_ID_HOST_VISIBLE).
pub const SHM_ID_HOST_VISIBLE: u8 = 1;

mod channel;
use channel::{Shmem, ShmemPort};

/// Makes the renderer for a new connection.
pub type RendererFactory =
    dyn Fn() -> Result<Box<dyn virgl_bridge::Renderer>, virgl_bridge::RendererError> + Send + Sync;

/// The virtio-gpu device as a vhost-user backend, for one frontend connection.
pub struct VhostUserGpu {
    device: Mutex<GpuDevice>,
    /// A display socket from the frontend not yet handed to the device (taken by the queue
    /// thread, so that the request thread never waits on the device).
    pending_display: Mutex<Option<GpuBackend>>,
    /// Set when the frontend stops or resets the device; the queue thread drops the state.
    reset_requested: AtomicBool,
    mem: Mutex<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
    /// Fenced replies waiting for the renderer (used by the queue thread only).
    held: Mutex<PendingFences<HeldReply>>,
    /// The virgl renderer is active: offer VIRGL and CONTEXT_INIT.
    virgl: bool,
    events_read: AtomicU32,
    /// A config-space read that leaves the guest without a GPU was reported (once a
    /// connection).
    config_warned: AtomicBool,
    num_scanouts: u32,
    num_capsets: u32,
    /// Microseconds to watch the ring after a batch before sleeping (0: never).
    poll_us: u64,
    /// Bytes of host-visible region offered (0: SHMEM is not offered).
    hostmem: u64,
    /// Mode requests come from the host side (`--vnc`): the backend request channel is asked
    /// for, for VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
    resizable: bool,
    shmem: Arc<Shmem>,
    exit: (EventConsumer, EventNotifier),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked mid-update; the data is still the best we have.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VhostUserGpu {
    /// A backend with a fresh device.
    pub fn new(
        config: DeviceConfig,
        mut device: GpuDevice,
        num_capsets: u32,
        virgl: bool,
    ) -> Result<Self, ServeError> {
        let shmem = Arc::new(Shmem::default());
        if config.hostmem > 0 {
            device.set_host_visible(HostVisible::new(
                config.hostmem,
                Box::new(ShmemPort(Arc::clone(&shmem))),
            ));
        }
        Ok(VhostUserGpu {
            hostmem: config.hostmem,
            resizable: config.mode_requests.is_some(),
            shmem,
            num_scanouts: config.num_scanouts(),
            poll_us: config.poll_us,
            num_capsets,
            device: Mutex::new(device),
            pending_display: Mutex::new(None),
            reset_requested: AtomicBool::new(false),
            mem: Mutex::new(None),
            held: Mutex::new(PendingFences::default()),
            virgl,
            events_read: AtomicU32::new(0),
            config_warned: AtomicBool::new(false),
            exit: new_event_consumer_and_notifier(EventFlag::NONBLOCK)
                .map_err(ServeError::Event)?,
        })
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[0..4].copy_from_slice(&self.events_read.load(Ordering::Relaxed).to_le_bytes());
        // events_clear reads as 0.
        c[8..12].copy_from_slice(&self.num_scanouts.to_le_bytes());
        c[12..16].copy_from_slice(&self.num_capsets.to_le_bytes());
        c[16..20].copy_from_slice(&crate::config::host_page_size().to_le_bytes());
        c
    }

    fn process_queue(&self, vring: &VringRwLock, queue: u16) -> io::Result<()> {
        let Some(atomic) = lock(&self.mem).clone() else {
            return Ok(());
        };
        let mem = atomic.memory().into_inner();
        let mut device = lock(&self.device);
        let poll = std::time::Duration::from_micros(self.poll_us);
        loop {
            // Checked before every batch: the frontend may stop and restart the rings while
            // this thread polls, and the restarted driver's commands must meet a reset device.
            if self.reset_requested.swap(false, Ordering::AcqRel) {
                device.reset();
                // Held chains belong to the rings that were stopped.
                lock(&self.held).clear();
            }
            if let Some(display) = lock(&self.pending_display).take() {
                device.display_mut().set_pending(display);
            }
            // Kicks stay off while this thread serves and watches the ring (with EVENT_IDX:
            // avail_event is left behind; without: the used ring's NO_NOTIFY flag).
            vring.disable_notification().map_err(io::Error::other)?;
            let chains: Vec<_> = vring
                .get_mut()
                .get_queue_mut()
                .iter(Arc::clone(&mem))
                .map_err(io::Error::other)?
                .collect();
            let size = queue_size(vring);
            let mut added = false;
            for chain in chains {
                let head = chain.head_index();
                let done = self.process_chain(&mut device, &mem, chain, queue);
                for (head, len) in done.released.into_iter().chain(done.len.map(|l| (head, l))) {
                    added |= add_used(vring, size, head, len);
                }
            }
            notify_used(vring, added)?;
            // The batch is answered: now read back a 3D frame flushed in it.
            device.finish_flushes();
            // Before sleeping, watch the ring a little, kicks still off: a driver that sends
            // its next command right after our reply is served without a kick and a wake-up
            // on either side.
            if !poll.is_zero() && Self::poll_ring(vring, &mem, poll) {
                continue;
            }
            // Kicks back on; a chain that came in before the driver could see that is served
            // now rather than left waiting for a kick that will not come.
            if vring.enable_notification().map_err(io::Error::other)? {
                continue;
            }
            break;
        }
        Ok(())
    }

    /// Spins up to `poll` for new available buffers; true when some arrived.
    fn poll_ring(vring: &VringRwLock, mem: &GuestMemoryMmap, poll: std::time::Duration) -> bool {
        use virtio_queue::QueueT;
        let deadline = std::time::Instant::now() + poll;
        loop {
            let guard = vring.get_ref();
            let q = guard.get_queue();
            if !q.ready() {
                return false;
            }
            match q.avail_idx(mem, std::sync::atomic::Ordering::Acquire) {
                Ok(avail) if avail.0 != q.next_avail() => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            drop(guard);
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Decodes, runs and answers one chain: the bytes written (None when the reply is held
    /// until the renderer signals its fence), and replies of other chains it released.
    fn process_chain(
        &self,
        device: &mut GpuDevice,
        mem: &Arc<GuestMemoryMmap>,
        chain: DescriptorChain<Arc<GuestMemoryMmap>>,
        queue: u16,
    ) -> ChainDone {
        let reader = Reader::new(&**mem, chain.clone());
        let writer = Writer::new(&**mem, chain.clone());
        let (mut reader, writer) = match (reader, writer) {
            (Ok(r), Ok(w)) => (r, w),
            (Err(e), _) | (_, Err(e)) => {
                guest_warn!("descriptor chain outside guest memory: {e}");
                return ChainDone::answered(0);
            }
        };
        let (hdr, cmd) = protocol::decode_with(&mut reader, &device.decode_limits());
        let destroyed_ctx = match (&hdr, &cmd) {
            (Some(h), Ok(protocol::GpuCommand::CtxDestroy)) => Some(h.ctx_id),
            _ => None,
        };
        let response = match (&hdr, cmd) {
            (Some(h), Ok(cmd)) => device.process(h, cmd, mem),
            (_, Err(e)) => {
                guest_warn!("bad command: {e}");
                e.response()
            }
            (None, Ok(_)) => protocol::GpuResponse::ErrUnspec,
        };
        let mut reply = Vec::new();
        if let Err(e) = response.encode(hdr.as_ref(), writer.available_bytes(), &mut reply) {
            guest_warn!(
                "reply to {:#x} not written: {e}",
                hdr.map_or(0, |h| h.type_)
            );
        }
        let released = match destroyed_ctx {
            Some(ctx_id) => self.release_context(device, ctx_id),
            None => Vec::new(),
        };
        // Only control-queue replies wait for fences: held replies are completed on the control
        // ring. The cursor queue is never fenced by a driver, and its commands do not touch the
        // renderer's timelines; a guest setting the flag there gets its reply at once.
        if let Some(h) = hdr.filter(|h| h.fenced() && queue == CONTROL_QUEUE) {
            if device.fence(&h) {
                let head = chain.head_index();
                lock(&self.held).push(
                    device.timeline(&h),
                    h.fence_id,
                    HeldReply { head, chain, reply },
                );
                return ChainDone {
                    len: None,
                    released,
                };
            }
        }
        ChainDone {
            len: Some(write_reply(writer, &reply)),
            released,
        }
    }

    /// A context is gone: its rings will never signal, so their held replies go out now, and
    /// a device fence flushes the global timeline behind anything it had submitted.
    fn release_context(&self, device: &mut GpuDevice, ctx_id: u32) -> Vec<(u16, u32)> {
        let mut held = lock(&self.held);
        let released = held.take_context(ctx_id);
        let last_global = held.last_global();
        drop(held);
        if let Some(id) = last_global {
            device.flush_global_fences(id);
        }
        self.write_held(released)
    }

    /// Writes held replies into their chains; they are added to the used ring by the caller.
    fn write_held(&self, replies: Vec<HeldReply>) -> Vec<(u16, u32)> {
        replies
            .into_iter()
            .map(|h| {
                let len = match Writer::new(h.chain.memory(), h.chain.clone()) {
                    Ok(w) => write_reply(w, &h.reply),
                    Err(e) => {
                        guest_warn!("fenced reply chain unusable: {e}");
                        0
                    }
                };
                (h.head, len)
            })
            .collect()
    }

    /// Writes the replies whose fences the renderer has signalled, in order per timeline.
    fn complete_fences(&self, vring: &VringRwLock) -> io::Result<()> {
        let done = lock(&self.device).take_completed_fences();
        let mut ready = Vec::new();
        {
            let mut held = lock(&self.held);
            for d in done {
                let n = ready.len();
                ready.extend(held.complete(d));
                log::trace!("fence {d:?} released {} replies", ready.len() - n);
            }
        }
        if ready.is_empty() {
            return Ok(());
        }
        let size = queue_size(vring);
        let mut added = false;
        for (head, len) in self.write_held(ready) {
            added |= add_used(vring, size, head, len);
        }
        notify_used(vring, added)
    }
}

impl VhostUserBackend for VhostUserGpu {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            // QEMU passes the guest's RING_RESET ack through; no driver of a GPU uses it.
            | (1 << VIRTIO_F_RING_RESET)
            | (1 << VIRTIO_GPU_F_EDID)
                        | (1 << VIRTIO_GPU_F_RESOURCE_UUID)
            | if self.virgl {
                (1 << VIRTIO_GPU_F_VIRGL)
                    | (1 << VIRTIO_GPU_F_CONTEXT_INIT)
                    | (1 << VIRTIO_GPU_F_RESOURCE_BLOB)
            } else {
                0
            }
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let base = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::RESET_DEVICE;
        // Host-visible memory: the frontend makes the region (GET_SHMEM_CONFIG) and maps
        // blobs into it when asked on the backend channel (REPLY_ACK: we wait for it).
        let shmem = if self.hostmem > 0 {
            VhostUserProtocolFeatures::SHMEM | VhostUserProtocolFeatures::BACKEND_REQ
        } else {
            VhostUserProtocolFeatures::empty()
        };
        // Host-side mode requests: the config-change message goes on the backend channel.
        let resize = if self.resizable {
            VhostUserProtocolFeatures::BACKEND_REQ
        } else {
            VhostUserProtocolFeatures::empty()
        };
        base | shmem | resize
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        info!("frontend opened the backend request channel");
        *lock(&self.shmem.channel) = Some(backend);
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        // Index = shmid: region 0 unused, region 1 host-visible. QEMU wants a power of two
        // no smaller than a page (checked at start-up).
        self.shmem.asked.store(true, Ordering::Release);
        info!(
            "frontend asked for shared memory regions: host-visible region (shmid {SHM_ID_HOST_VISIBLE}) of {} MiB",
            self.hostmem >> 20
        );
        Ok(VhostUserShMemConfig::new(
            u32::from(SHM_ID_HOST_VISIBLE) + 1,
            &[0, self.hostmem],
        ))
    }

    fn acked_features(&self, features: u64) {
        info!("frontend acked features {features:#x}");
    }

    fn reset_device(&self) {
        info!("frontend reset the device");
        self.reset_requested.store(true, Ordering::Release);
    }

    fn set_event_idx(&self, _enabled: bool) {
        // vhost-user-backend sets it on each vring, whose notification calls follow it.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = self.config_bytes();
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= c.len() => {
                // QEMU's generic device reads its whole config_size from offset 0 each time;
                // one too small to reach num_scanouts leaves the guest with no GPU.
                if offset == 0
                    && (5..12).contains(&size)
                    && !self.config_warned.swap(true, Ordering::Relaxed)
                {
                    warn!(
                        "the frontend reads only {size} bytes of the {CONFIG_SIZE}-byte config \
                         space: its guest cannot read num_scanouts and num_capsets (a generic \
                         frontend needs a config size of 16 or {CONFIG_SIZE}: QEMU's \
                         vhost-user-test-device-pci config_size=16)"
                    );
                }
                c[start..end].to_vec()
            }
            _ => {
                // Answered with an empty payload, as vhost-user says; QEMU then logs "Received
                // bad msg size" and its guest finds num_scanouts zero. Said once a connection.
                if !self.config_warned.swap(true, Ordering::Relaxed) {
                    warn!(
                        "GET_CONFIG {offset}+{size} is outside virtio-gpu's {CONFIG_SIZE}-byte \
                         config space: refused, and the guest sees no GPU. A generic frontend \
                         must be set up with a config size of 16 or {CONFIG_SIZE} (QEMU's \
                         vhost-user-test-device-pci: config_size=16)"
                    );
                } else {
                    debug!("GET_CONFIG {offset}+{size} refused");
                }
                Vec::new()
            }
        }
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only events_clear (bytes 4..8) is writable: its bits clear events_read. QEMU writes
        // the whole config space, read-only fields included, each time the guest writes
        // events_clear (after a display-change event), so the other bytes are ignored, not
        // refused: an error here ends the frontend's connection.
        let mut clear = [0u8; 4];
        for (i, &b) in buf.iter().enumerate() {
            let slot = (offset as usize)
                .checked_add(i)
                .and_then(|at| at.checked_sub(4))
                .and_then(|k| clear.get_mut(k));
            if let Some(slot) = slot {
                *slot = b;
            }
        }
        let v = u32::from_le_bytes(clear);
        if v != 0 {
            self.events_read.fetch_and(!v, Ordering::Relaxed);
        }
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *lock(&self.mem) = Some(mem);
        Ok(())
    }

    fn set_gpu_socket(&self, gpu_backend: GpuBackend) -> io::Result<()> {
        info!("frontend sent its display socket");
        *lock(&self.pending_display) = Some(gpu_backend);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if queue_index == u32::from(CONTROL_QUEUE) {
            // The driver is gone or resetting: its resources go with it. Done by the queue
            // thread (never wait here on the device: the frontend is blocked on our reply).
            self.reset_requested.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other("unexpected event set"));
        }
        match device_event {
            FENCE_EVENT => {
                let vring = vrings
                    .get(usize::from(CONTROL_QUEUE))
                    .ok_or_else(|| io::Error::other("no control queue"))?;
                keep_serving(self.complete_fences(vring), "completing fences")
            }
            CONTROL_QUEUE | CURSOR_QUEUE => {
                let vring = vrings
                    .get(usize::from(device_event))
                    .ok_or_else(|| io::Error::other("no such vring"))?;
                keep_serving(
                    self.process_queue(vring, device_event),
                    "processing a queue",
                )
            }
            other => {
                debug!("event {other} for no queue");
                Ok(())
            }
        }
    }
}

/// Serves the frontends `socket` gives, one after another, each with a fresh device: until an
/// unrecoverable error on a listening socket, until the one frontend leaves on a connected one.
pub fn serve(
    socket: &mut ServingSocket,
    config: &DeviceConfig,
    make_renderer: &RendererFactory,
) -> Result<(), ServeError> {
    loop {
        let stream = match &mut socket.frontends {
            Frontends::Connected(s) => Some(s.take().ok_or(ServeError::Served)?),
            Frontends::Listening(_) => None,
        };
        let renderer = make_renderer()?;
        let num_capsets = renderer.num_capsets();
        let virgl = renderer.kind() == virgl_bridge::RendererKind::Virgl;
        let device = GpuDevice::new(config.clone(), renderer);
        let fence_fd = device.fence_fd();
        let backend = Arc::new(VhostUserGpu::new(
            config.clone(),
            device,
            num_capsets,
            virgl,
        )?);
        if let Some(m) = &config.mode_requests {
            let weak: std::sync::Weak<VhostUserGpu> = Arc::downgrade(&backend);
            m.0.set_target(weak);
        }
        let mut daemon = VhostUserDaemon::new(
            "vhost-gpu".to_string(),
            Arc::clone(&backend),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| ServeError::Daemon(format!("{e:?}")))?;
        if let Some(fd) = fence_fd {
            for h in daemon.get_epoll_handlers() {
                h.register_listener(fd, EventSet::IN, u64::from(FENCE_EVENT))
                    .map_err(ServeError::Event)?;
            }
        }
        match (stream, &mut socket.frontends) {
            (Some(stream), _) => daemon.start_stream(stream),
            (None, Frontends::Listening(listener)) => daemon.start(listener),
            (None, Frontends::Connected(_)) => return Err(ServeError::Served),
        }
        .map_err(|e| ServeError::Daemon(format!("{e:?}")))?;
        info!("frontend connected");
        match daemon.wait() {
            Ok(()) => info!("frontend disconnected"),
            // vhost-user-backend refuses a request for a queue this device lacks with
            // InvalidParam; a generic frontend set up for more than two queues is the usual
            // cause, and QEMU then stops with "Failed to initialize virtqueue 2".
            Err(
                e
                @ vhost_user_backend::Error::HandleRequest(vhost::vhost_user::Error::InvalidParam),
            ) => {
                warn!(
                    "frontend connection ended: {e:?}: the frontend asked for something this \
                     device does not have, such as a third queue (virtio-gpu has two, control \
                     and cursor: a generic frontend needs num_vqs=2)"
                )
            }
            Err(e) => info!("frontend connection ended: {e:?}"),
        }
        // Dropping the daemon stops its queue threads; the device and its resources go with
        // the backend.
        drop(daemon);
        if let Frontends::Connected(_) = socket.frontends {
            info!("state dropped; the connected socket's one frontend has left");
            return Ok(());
        }
        info!("state dropped; waiting for the next frontend");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    const DESC: u64 = 0x0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;

    fn desc(mem: &GuestMemoryMmap, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC + 16 * i);
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, at).unwrap();
    }

    /// QEMU forwards the guest's write of events_clear as a write of the whole config space;
    /// refusing it ended the frontend connection at the first display-change event.
    #[test]
    fn set_config_takes_events_clear_from_a_whole_config_write_and_ignores_the_rest() {
        let config = DeviceConfig::default();
        let renderer = virgl_bridge::Renderer2D::new().unwrap();
        let device = GpuDevice::new(config.clone(), Box::new(renderer));
        let gpu = VhostUserGpu::new(config, device, 0, false).unwrap();
        let before = gpu.get_config(0, 16);
        gpu.events_read.store(EVENT_DISPLAY | 2, Ordering::Relaxed);
        // What QEMU sends after the guest writes events_clear: all 16 bytes from offset 0.
        let mut whole = [0xffu8; 16];
        whole[4..8].copy_from_slice(&EVENT_DISPLAY.to_le_bytes());
        gpu.set_config(0, &whole).unwrap();
        assert_eq!(gpu.events_read.load(Ordering::Relaxed), 2);
        // Just events_clear, one byte of it, and writes past the end: no error, no change
        // to the read-only fields.
        gpu.set_config(4, &2u32.to_le_bytes()).unwrap();
        assert_eq!(gpu.events_read.load(Ordering::Relaxed), 0);
        gpu.events_read.store(EVENT_DISPLAY, Ordering::Relaxed);
        gpu.set_config(4, &[1]).unwrap();
        assert_eq!(gpu.events_read.load(Ordering::Relaxed), 0);
        gpu.set_config(u32::MAX, &[0xff; 8]).unwrap();
        gpu.set_config(12, &[0xff; 64]).unwrap();
        assert_eq!(gpu.get_config(0, 16), before);
    }

    /// The config space is 20 bytes (QEMU 11.1's vhost-user-gpu-pci reads all of them; with
    /// 16, its guest found no scanouts): the spec's four fields, then the host's page size.
    /// A read past the end gets an empty reply, as vhost-user says, not a short one.
    #[test]
    fn config_space_is_20_bytes_with_the_host_page_size_and_refuses_reads_past_it() {
        let config = DeviceConfig::default();
        let renderer = virgl_bridge::Renderer2D::new().unwrap();
        let device = GpuDevice::new(config.clone(), Box::new(renderer));
        let gpu = VhostUserGpu::new(config, device, 3, false).unwrap();
        let c = gpu.get_config(0, 20);
        assert_eq!(c.len(), 20);
        let word = |i: usize| u32::from_le_bytes(c[i..i + 4].try_into().unwrap());
        assert_eq!((word(0), word(4), word(8), word(12)), (0, 0, 1, 3));
        let page = word(16);
        assert!(page >= 4096 && page.is_power_of_two(), "page size {page}");
        assert_eq!(gpu.get_config(0, 16), c[..16].to_vec());
        assert_eq!(gpu.get_config(8, 4), c[8..12].to_vec());
        assert_eq!(gpu.get_config(16, 4), c[16..20].to_vec());
        assert!(gpu.get_config(0, 24).is_empty());
        assert!(gpu.get_config(20, 1).is_empty());
        assert!(gpu.get_config(u32::MAX, 2).is_empty());
    }

    /// Found by the `vring` fuzz target: a head index past the queue size in the available
    /// ring made add_used fail, and the queue loop gave up on the rest of the batch, which it had
    /// already taken off the ring: those chains were never answered and their guest hung.
    #[test]
    fn a_bad_head_in_the_available_ring_does_not_strand_the_rest_of_the_batch() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let config = DeviceConfig::default();
        let renderer = virgl_bridge::Renderer2D::new().unwrap();
        let device = GpuDevice::new(config.clone(), Box::new(renderer));
        let gpu = VhostUserGpu::new(config, device, 0, false).unwrap();
        gpu.update_memory(atomic.clone()).unwrap();
        let vrings: Vec<VringRwLock> = [(DESC, AVAIL, USED), (0x8000, 0x9000, 0xa000)]
            .iter()
            .map(|&(d, a, u)| {
                let v = VringRwLock::new(atomic.clone(), 1024).unwrap();
                v.set_queue_size(4);
                v.set_queue_info(d, a, u).unwrap();
                v.set_queue_ready(true);
                v.set_enabled(true);
                v
            })
            .collect();
        // GET_DISPLAY_INFO: a 24-byte header, then a writable buffer for the 408-byte reply.
        let mut hdr = [0u8; 24];
        hdr[0..4].copy_from_slice(&protocol::cmd::GET_DISPLAY_INFO.to_le_bytes());
        mem.write_slice(&hdr, GuestAddress(0x3000)).unwrap();
        desc(&mem, 0, 0x3000, 24, 1, 1); // NEXT
        desc(&mem, 1, 0x4000, 408, 2, 0); // WRITE
                                          // Available ring: head 7 (there is no descriptor 7 in a queue of 4), then head 0.
        for (i, v) in [0u16, 2, 7, 0].iter().enumerate() {
            mem.write_obj(*v, GuestAddress(AVAIL + 2 * i as u64))
                .unwrap();
        }
        gpu.handle_event(CONTROL_QUEUE, EventSet::IN, &vrings, 0)
            .unwrap();
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        let id: u32 = mem.read_obj(GuestAddress(USED + 4)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(USED + 8)).unwrap();
        assert_eq!((used_idx, id, len), (1, 0, 408));
        let reply: u32 = mem.read_obj(GuestAddress(0x4000)).unwrap();
        assert_eq!(reply, protocol::resp::OK_DISPLAY_INFO);
    }
}
