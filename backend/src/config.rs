//! Device configuration: scanout modes and limits, parsed from the command line.

use crate::edid::MAX_EDID_DIMENSION;
use crate::protocol::{DecodeLimits, MAX_SCANOUTS};
use crate::screens::ScreensHandle;

/// Why a configuration value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("display '{0}' is not WIDTHxHEIGHT with each in 1..={MAX_EDID_DIMENSION}")]
    BadDisplay(String),
    #[error("{0} displays given; a virtio-gpu device has 1 to {MAX_SCANOUTS}")]
    DisplayCount(usize),
    #[error("size '{0}' is not a number with an optional K, M, G or T suffix")]
    BadSize(String),
}

/// A scanout's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    pub width: u32,
    pub height: u32,
}

impl std::str::FromStr for Mode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadDisplay(s.to_string());
        let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let width: u32 = w.trim().parse().map_err(|_| bad())?;
        let height: u32 = h.trim().parse().map_err(|_| bad())?;
        let ok = |v: u32| (1..=MAX_EDID_DIMENSION).contains(&v);
        if !ok(width) || !ok(height) {
            return Err(bad());
        }
        Ok(Mode { width, height })
    }
}

/// The host's page size (the config space's host_page_size; host-visible mappings' unit).
pub fn host_page_size() -> u32 {
    // SAFETY: sysconf reads a constant of the C library; it has no memory arguments.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(n).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// The host-visible region's size when `--hostmem` is not given: 1 GiB, or the largest power
/// of two within a smaller `max_host_memory` (0 when that is under a page).
pub fn default_hostmem(max_host_memory: u64, page: u64) -> u64 {
    let cap = max_host_memory.min(1 << 30);
    match cap.checked_ilog2() {
        Some(bits) if (1u64 << bits) >= page => 1 << bits,
        _ => 0,
    }
}

/// Parses a byte size: `1073741824`, `512M`, `1G`, `64k`, `1GiB`.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string());
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

/// What the device is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// One mode per scanout (1 to 16).
    pub modes: Vec<Mode>,
    /// True when `--display` was given: the modes are the user's and win over the frontend's.
    pub modes_from_user: bool,
    /// Host memory one guest may make us allocate for resources, in bytes.
    pub max_host_memory: u64,
    /// Microseconds the queue thread watches the ring after a batch before sleeping.
    pub poll_us: u64,
    /// Most resources one guest may have at once.
    pub max_resources: u32,
    /// Most rendering contexts one guest may have at once.
    pub max_contexts: u32,
    /// The host copy of the scanouts, kept when `--capture-dir` or `--vnc` looks at it.
    pub screens: Option<ScreensHandle>,
    /// Per-command allocation limits (`--max-backing-entries`, `--max-submit-size`).
    pub decode: DecodeLimits,
    /// Bytes of host-visible memory region to offer a frontend that asks (0: none).
    pub hostmem: u64,
    /// Where mode requests from the host side (VNC's SetDesktopSize) come in; with it the
    /// backend request channel is asked for, for its config-change message.
    pub mode_requests: Option<crate::modes::ModeRequestsHandle>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            modes: vec![Mode {
                width: 1280,
                height: 800,
            }],
            modes_from_user: false,
            max_host_memory: 1 << 30,
            poll_us: 0,
            max_resources: 65_536,
            max_contexts: 256,
            screens: None,
            decode: DecodeLimits::default(),
            hostmem: 0,
            mode_requests: None,
        }
    }
}

impl DeviceConfig {
    /// Builds a config from the user's displays (empty: the default single 1280x800).
    pub fn new(modes: Vec<Mode>, max_host_memory: u64) -> Result<Self, ConfigError> {
        if modes.len() > MAX_SCANOUTS {
            return Err(ConfigError::DisplayCount(modes.len()));
        }
        let modes_from_user = !modes.is_empty();
        let mut c = DeviceConfig {
            max_host_memory,
            modes_from_user,
            ..Default::default()
        };
        if modes_from_user {
            c.modes = modes;
        }
        Ok(c)
    }

    /// Number of scanouts.
    pub fn num_scanouts(&self) -> u32 {
        self.modes.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes_and_sizes() {
        assert_eq!(
            "1920x1080".parse::<Mode>().unwrap(),
            Mode {
                width: 1920,
                height: 1080
            }
        );
        assert!("0x10".parse::<Mode>().is_err());
        assert!("5000x10".parse::<Mode>().is_err());
        assert!("axb".parse::<Mode>().is_err());
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("lots").is_err());
        assert!(DeviceConfig::new(
            vec![
                Mode {
                    width: 1,
                    height: 1
                };
                17
            ],
            1
        )
        .is_err());
    }

    #[test]
    fn the_default_region_fits_the_memory_limit() {
        assert_eq!(default_hostmem(1 << 30, 4096), 1 << 30);
        assert_eq!(default_hostmem(8 << 30, 4096), 1 << 30);
        assert_eq!(default_hostmem(64 << 20, 4096), 64 << 20);
        assert_eq!(default_hostmem(100 << 20, 4096), 64 << 20);
        assert_eq!(default_hostmem(4095, 4096), 0);
        assert_eq!(default_hostmem(0, 4096), 0);
    }
}
