//! Mode requests from the host side to the guest: a VNC client's SetDesktopSize asks for a
//! scanout size, and the guest gets a display-change event with that mode, as QEMU does for
//! its own VNC.
//!
//! The VNC server outlives frontend connections, so it holds a [`ModeRequests`]; each
//! connection's device registers itself there while it serves ([`ModeTarget`]). The device
//! then sets the scanout's mode (what GET_DISPLAY_INFO and the EDID say from then on), raises
//! `VIRTIO_GPU_EVENT_DISPLAY` in its config space and tells the frontend that the config
//! changed (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG), which interrupts the guest. Linux's driver
//! then asks for the display info and EDIDs and reports a hotplug; the guest's compositor (or
//! our test agent) sets the new mode.

use std::sync::{Arc, Mutex, Weak};

/// Why a mode request was not passed on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModeRefused {
    /// The size or scanout is not one the device can have.
    #[error("{0}")]
    Invalid(String),
    /// The device cannot tell this frontend's guest (no frontend, or one that keeps display
    /// events to itself).
    #[error("{0}")]
    Prohibited(String),
}

/// A connection's device, taking mode requests while it serves.
pub trait ModeTarget: Send + Sync {
    /// Sets scanout `scanout`'s mode to `width` x `height` and tells the guest.
    fn request_mode(&self, scanout: u32, width: u32, height: u32) -> Result<(), ModeRefused>;
}

/// Where mode requests go: the connection serving now, if any.
#[derive(Default)]
pub struct ModeRequests {
    target: Mutex<Option<Weak<dyn ModeTarget>>>,
}

impl ModeRequests {
    pub fn new() -> Arc<ModeRequests> {
        Arc::default()
    }

    /// The connection serving from now on.
    pub fn set_target(&self, target: Weak<dyn ModeTarget>) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
    }

    /// Passes a request to the serving connection.
    pub fn request(&self, scanout: u32, width: u32, height: u32) -> Result<(), ModeRefused> {
        let target = self
            .target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Weak::upgrade);
        match target {
            Some(t) => t.request_mode(scanout, width, height),
            None => Err(ModeRefused::Prohibited(
                "no frontend is connected".to_string(),
            )),
        }
    }
}

/// A handle comparable by identity, so that configs stay comparable.
#[derive(Clone)]
pub struct ModeRequestsHandle(pub Arc<ModeRequests>);

impl PartialEq for ModeRequestsHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for ModeRequestsHandle {}

impl std::fmt::Debug for ModeRequestsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModeRequests")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Mutex<Vec<(u32, u32, u32)>>);
    impl ModeTarget for Recorder {
        fn request_mode(&self, s: u32, w: u32, h: u32) -> Result<(), ModeRefused> {
            self.0.lock().unwrap().push((s, w, h));
            Ok(())
        }
    }

    #[test]
    fn requests_reach_the_serving_connection_only_while_it_lives() {
        let r = ModeRequests::new();
        assert!(matches!(
            r.request(0, 800, 600),
            Err(ModeRefused::Prohibited(_))
        ));
        let t: Arc<Recorder> = Arc::new(Recorder(Mutex::new(Vec::new())));
        let dyn_t: Arc<dyn ModeTarget> = t.clone();
        r.set_target(Arc::downgrade(&dyn_t));
        assert_eq!(r.request(0, 800, 600), Ok(()));
        assert_eq!(*t.0.lock().unwrap(), [(0, 800, 600)]);
        drop(dyn_t);
        drop(t);
        assert!(r.request(0, 640, 480).is_err(), "a gone connection");
    }
}
