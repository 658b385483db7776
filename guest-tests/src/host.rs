//! The host stack the tests run vhost-gpu, QEMU and the vtest server on.
//!
//! By default that is this machine's own packages. `VHOST_GPU_HOST_ROOT` names a root made by
//! `scripts/host-root` (Debian 13 + trixie-backports on a Debian 12 machine): the programs
//! then run inside it through `scripts/in-root`, as the same process (the pid the test holds
//! is the program's), with /tmp and this checkout at the same paths inside and out. Test
//! programs that only watch (VNC clients, image decoders, gdbus) stay on this machine.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The root `VHOST_GPU_HOST_ROOT` names, if any.
pub fn root() -> Option<PathBuf> {
    std::env::var_os("VHOST_GPU_HOST_ROOT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A short name of the host stack for test output: "host" or the root's directory name.
pub fn name() -> String {
    match root() {
        Some(r) => r
            .parent()
            .and_then(Path::file_name)
            .unwrap_or(r.as_os_str())
            .to_string_lossy()
            .into_owned(),
        None => "host".into(),
    }
}

/// `program` as a command on the host stack: plain on this machine, or inside the root.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    match root() {
        Some(root) => {
            let mut c =
                Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/in-root"));
            c.arg(root).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// `path` (an absolute path on the host stack) as this machine sees it.
pub fn path(path: &Path) -> PathBuf {
    match root() {
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}
