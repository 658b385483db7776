//! Rate-limited logging of guest errors, so a guest cannot fill the host's disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines allowed per window; further lines in the window are counted and summarised.
pub const LINES_PER_WINDOW: u64 = 20;
/// Window length in seconds.
pub const WINDOW_SECS: u64 = 5;

/// A token bucket over fixed windows, shared by all guest-error log lines.
#[derive(Default)]
pub struct RateLimit {
    window: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// A limiter with an empty window.
    pub const fn new() -> Self {
        RateLimit {
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Returns Some(suppressed_since_last) when a line may be logged now, None when not.
    pub fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() / WINDOW_SECS)
            .unwrap_or(0);
        if self.window.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < LINES_PER_WINDOW {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The limiter for everything a guest can trigger.
pub static GUEST_ERRORS: RateLimit = RateLimit::new();

/// Logs a guest-caused problem at warn level, rate-limited.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)*) => {
        if let Some(suppressed) = $crate::ratelimit::GUEST_ERRORS.allow() {
            if suppressed > 0 {
                log::warn!("({} guest error lines suppressed)", suppressed);
            }
            log::warn!($($arg)*);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_window_then_suppresses() {
        let r = RateLimit::new();
        let allowed = (0..100).filter(|_| r.allow().is_some()).count() as u64;
        // A window boundary may fall inside the loop: at most two windows' worth.
        assert!((LINES_PER_WINDOW..=2 * LINES_PER_WINDOW).contains(&allowed));
    }
}
