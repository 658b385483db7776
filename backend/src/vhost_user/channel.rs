//! The backend request channel (SET_BACKEND_REQ_FD): what the device asks of the frontend
//! there. SHMEM_MAP and SHMEM_UNMAP put host-visible blobs into the frontend's shared memory
//! region ([`ShmemPort`]); VHOST_USER_BACKEND_CONFIG_CHANGE_MSG tells it the config space
//! changed, for host-side mode requests ([`crate::modes`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use log::info;
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};

use super::{lock, VhostUserGpu, EVENT_DISPLAY, SHM_ID_HOST_VISIBLE};
use crate::device::SharedMemoryPort;

/// What the request thread learns about the frontend's shared memory, for the device's port.
#[derive(Default)]
pub(super) struct Shmem {
    /// The backend request channel (SET_BACKEND_REQ_FD), where SHMEM_MAP goes.
    pub(super) channel: Mutex<Option<Backend>>,
    /// The frontend asked for the regions (GET_SHMEM_CONFIG), so it made the region.
    pub(super) asked: AtomicBool,
}

/// The device's [`SharedMemoryPort`] over vhost-user: SHMEM_MAP and SHMEM_UNMAP on the backend
/// request channel, each answered by the frontend (REPLY_ACK) before it returns.
pub(super) struct ShmemPort(pub(super) Arc<Shmem>);

impl ShmemPort {
    fn send(
        &self,
        what: &str,
        msg: &VhostUserMMap,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<(), String> {
        self.available()?;
        // A clone of the channel (it shares the connection): the lock is not held while the
        // frontend answers, so the request thread never waits on a mapping.
        let ch = lock(&self.0.channel)
            .clone()
            .ok_or("the frontend gave no backend request channel (BACKEND_REQ)")?;
        let r = match fd {
            Some(fd) => ch.shmem_map(msg, &fd),
            None => ch.shmem_unmap(msg),
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{what} refused: {e}")),
        }
    }
}

impl SharedMemoryPort for ShmemPort {
    fn available(&self) -> Result<(), String> {
        if !self.0.asked.load(Ordering::Acquire) {
            return Err("the frontend never asked for shared memory regions (GET_SHMEM_CONFIG), so it has none: QEMU 11.1's vhost-user-gpu-pci acks SHMEM but makes no region; use vhost-user-test-device-pci".into());
        }
        if lock(&self.0.channel).is_none() {
            return Err("the frontend gave no backend request channel (BACKEND_REQ)".into());
        }
        Ok(())
    }

    fn map(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        fd_offset: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), String> {
        let msg = VhostUserMMap {
            shmid: SHM_ID_HOST_VISIBLE,
            fd_offset,
            shm_offset: offset,
            len,
            flags: VhostUserMMapFlags::WRITABLE.bits(),
            ..Default::default()
        };
        self.send("SHMEM_MAP", &msg, Some(fd))
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), String> {
        let msg = VhostUserMMap {
            shmid: SHM_ID_HOST_VISIBLE,
            shm_offset: offset,
            len,
            ..Default::default()
        };
        self.send("SHMEM_UNMAP", &msg, None)
    }
}

impl crate::modes::ModeTarget for VhostUserGpu {
    fn request_mode(
        &self,
        scanout: u32,
        width: u32,
        height: u32,
    ) -> Result<(), crate::modes::ModeRefused> {
        use crate::modes::ModeRefused;
        if scanout >= self.num_scanouts {
            return Err(ModeRefused::Invalid(format!("no scanout {scanout}")));
        }
        // QEMU's vhost-user-gpu-pci keeps events_read to itself (its config read overrides
        // ours) and takes modes from its own window, so nothing we raise reaches the guest.
        if lock(&self.pending_display).is_some() || lock(&self.device).has_display_channel() {
            return Err(ModeRefused::Prohibited(
                "the frontend (QEMU's vhost-user-gpu-pci) keeps the guest's display events itself; resize its own display instead"
                    .into(),
            ));
        }
        // Until a frontend connects, the serving connection has no channel either.
        let channel = lock(&self.shmem.channel).clone().ok_or_else(|| {
            ModeRefused::Prohibited(
                "the frontend gave no backend request channel (BACKEND_REQ), where the config-change message goes"
                    .into(),
            )
        })?;
        lock(&self.device).set_mode(scanout, width, height)?;
        self.events_read.fetch_or(EVENT_DISPLAY, Ordering::AcqRel);
        info!("display change: scanout {scanout} to {width}x{height}, asked by the host; telling the guest");
        // The lock on the channel is not held while the frontend answers.
        channel.handle_config_change().map(|_| ()).map_err(|e| {
            ModeRefused::Prohibited(format!("the frontend refused the config change: {e}"))
        })
    }
}
