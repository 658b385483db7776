//! Landlock: which files vhost-gpu may open once it serves, whoever runs it (root included).
//!
//! - Read-only: what Mesa, LLVM, virglrenderer and glibc load or read after start-up (each
//!   connection makes a new renderer, and with it a new EGL display): the libraries and data
//!   under /usr, the dynamic loader's cache, EGL/GL vendor and driver configuration, the CPU
//!   and memory facts under /proc and /sys that LLVM, Mesa and Rust's thread pool size
//!   themselves from, and the DRM devices' sysfs entries libdrm reads.
//!   Also the directories of the shared objects loaded at start and those the loader's, Mesa's,
//!   GBM's and glvnd's variables name (`LD_LIBRARY_PATH`, `LIBGL_DRIVERS_PATH`, ...), for
//!   libraries installed outside /usr.
//! - Read-write: `/dev/null`, the render nodes `/dev/dri/renderD*` (GBM opens them read-write
//!   and sends them DRM ioctls), NVIDIA's device files where present (its EGL and GBM open them
//!   beside the render node), and the directories given: Mesa's shader cache and
//!   `--capture-dir`.
//! - Nothing else: no home directory, no /etc beyond those files, no other device, no TCP
//!   bind or connect, no abstract Unix socket or signal outside the sandbox.
//!
//! Best effort: on a kernel without Landlock (before 5.13) or with an older ABI, what the
//! kernel has is enforced, and the log says how much.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// Why Landlock could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("landlock: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    #[error("landlock: {0}: {1}")]
    Path(PathBuf, landlock::PathFdError),
}

/// The newest Landlock ABI this code was written for; older kernels get what they support.
const ABI_USED: ABI = ABI::V6;

/// Read-only trees and files (a missing one is skipped).
pub const READ_ONLY: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/drirc",
    "/etc/glvnd",
    "/etc/egl",
    "/etc/vulkan",
    "/proc/self",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/sys/vm/overcommit_memory",
    "/sys/devices",
    "/sys/dev",
    "/sys/bus/pci",
    "/sys/class/drm",
    "/sys/fs/cgroup",
    "/dev/urandom",
];

/// Environment variables that name where the loader, Mesa, GBM and glvnd look for what they
/// load (colon-separated lists of directories or files).
const LOAD_PATH_VARS: &[&str] = &[
    "LD_LIBRARY_PATH",
    "LIBGL_DRIVERS_PATH",
    "GBM_BACKENDS_PATH",
    "__EGL_VENDOR_LIBRARY_DIRS",
    "__EGL_VENDOR_LIBRARY_FILENAMES",
    "VK_DRIVER_FILES",
    "VK_ICD_FILENAMES",
];

/// NVIDIA's device files, which its EGL and GBM libraries open beside the render node.
const NVIDIA_DEVICES: &[&str] = &[
    "/dev/nvidiactl",
    "/dev/nvidia-modeset",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
];

/// Where this process's libraries come from beyond the usual trees: the directories of the
/// shared objects mapped now (a library outside /usr, as under Nix or a custom prefix, loads
/// its companions from beside it) and those the loading variables name. The executable is no
/// shared object: its own directory is not added for it.
pub fn load_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && p.contains(".so"))
        .filter_map(|p| Path::new(p).parent().map(Path::to_path_buf))
        .collect();
    for var in LOAD_PATH_VARS {
        if let Some(v) = std::env::var_os(var) {
            for p in std::env::split_paths(&v).filter(|p| p.is_absolute()) {
                let dir = if p.is_dir() {
                    p
                } else {
                    p.parent().map_or(p.clone(), Path::to_path_buf)
                };
                dirs.push(dir);
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// How far the confinement went, for the log.
pub fn describe(status: RulesetStatus) -> &'static str {
    match status {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => {
            "partly enforced (this kernel has an older Landlock ABI)"
        }
        RulesetStatus::NotEnforced => "not enforced (this kernel has no Landlock)",
    }
}

/// The render nodes present on this host.
pub fn render_nodes() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("renderD"))
        })
        .collect();
    v.sort();
    v
}

fn rule(
    path: &Path,
    access: BitFlags<AccessFs>,
) -> Option<Result<PathBeneath<PathFd>, FilesError>> {
    match PathFd::new(path) {
        Ok(fd) => {
            // A file takes only file rights (directory rights on it are an error).
            let access = if path.is_dir() {
                access
            } else {
                access & AccessFs::from_file(ABI_USED)
            };
            Some(Ok(PathBeneath::new(fd, access)))
        }
        Err(e) if path.exists() => Some(Err(FilesError::Path(path.into(), e))),
        Err(_) => None,
    }
}

/// NVIDIA's device files present on this host (`/dev/nvidiactl`, `/dev/nvidiaN`, ...).
pub fn nvidia_devices() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = NVIDIA_DEVICES.iter().map(PathBuf::from).collect();
    v.extend((0..16).map(|i| PathBuf::from(format!("/dev/nvidia{i}"))));
    v.retain(|p| p.exists());
    v
}

/// Confines this thread and every thread it creates from now on to the files above, plus
/// `read_write` (directories that must exist). Threads that already run are not confined:
/// call it before starting any.
///
/// With `render_server` (Venus started one), signals are not scoped: vhost-gpu must be able to
/// kill the server's process group, which lives in a Landlock domain of its own. seccomp still
/// lets it signal only its own threads and that group.
pub fn confine(read_write: &[PathBuf], render_server: bool) -> Result<RulesetStatus, FilesError> {
    restrict(read_write, None, !render_server)
}

/// Confines the render server (see [`super::render_server`]): as [`confine`], but the
/// read-only trees lose the right to execute, which only `executables` keep (the server's
/// binary and the dynamic loader).
pub fn confine_render_server(
    read_write: &[PathBuf],
    executables: &[PathBuf],
) -> Result<RulesetStatus, FilesError> {
    restrict(read_write, Some(executables), true)
}

/// /proc/self, held open for as long as the process lives, so that the kernel never drops
/// /proc/PID's dentry.
///
/// Landlock's rule for /proc/self names the inode that /proc/PID had when the rule was made.
/// procfs makes a new inode for /proc/PID each time its dentry is looked up again after the
/// kernel dropped it (under memory pressure, or with drop_caches), and the rule does not match
/// the new one: /proc/self/maps and the rest then fail with EACCES. That happened on a host
/// short of memory, and every MAP_BLOB of an opaque Venus blob (which reads /proc/self/maps)
/// failed with it. An open file holds its dentry, so the inode never changes.
static PROC_SELF: OnceLock<OwnedFd> = OnceLock::new();

/// Opens [`PROC_SELF`] (once). `over_exec`: the descriptor stays open across execve, for the
/// render server, which confines itself and then executes the server binary (whose workers
/// inherit it too: an O_PATH descriptor, which gives no access of its own).
fn pin_proc_self(over_exec: bool) {
    let cloexec = if over_exec { 0 } else { libc::O_CLOEXEC };
    // SAFETY: open with a NUL-terminated constant path and flags; the result is checked.
    let fd = unsafe {
        libc::open(
            c"/proc/self".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | cloexec,
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor just opened, owned by nothing else.
        let _ = PROC_SELF.set(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// The one ruleset both use. `executables`: None, anything readable may be executed; Some,
/// only those files. `scope_signals`: signals only inside this Landlock domain.
fn restrict(
    read_write: &[PathBuf],
    executables: Option<&[PathBuf]>,
    scope_signals: bool,
) -> Result<RulesetStatus, FilesError> {
    // Before the rule for /proc/self is made: the inode it names stays the one looked up.
    pin_proc_self(executables.is_some());
    let all = AccessFs::from_all(ABI_USED);
    let no_exec = if executables.is_some() {
        !AccessFs::Execute
    } else {
        all
    };
    let read = AccessFs::from_read(ABI_USED) & no_exec;
    let device_rw = AccessFs::from_file(ABI_USED) & no_exec;
    let mut rules: Vec<Option<Result<PathBeneath<PathFd>, FilesError>>> = Vec::new();
    rules.extend(READ_ONLY.iter().map(|p| rule(Path::new(p), read)));
    rules.extend(load_dirs().iter().map(|p| rule(p, read)));
    rules.extend(
        executables
            .unwrap_or_default()
            .iter()
            .map(|p| rule(p, AccessFs::Execute | AccessFs::ReadFile)),
    );
    rules.push(rule(Path::new("/dev/dri"), AccessFs::ReadDir.into()));
    rules.push(rule(Path::new("/dev/null"), device_rw));
    rules.extend(render_nodes().iter().map(|p| rule(p, device_rw)));
    rules.extend(nvidia_devices().iter().map(|p| rule(p, device_rw)));
    rules.extend(read_write.iter().map(|p| rule(p, all & no_exec)));
    let scope = if scope_signals {
        Scope::from_all(ABI_USED)
    } else {
        Scope::from_all(ABI_USED) & !Scope::Signal
    };
    let status = Ruleset::default()
        .handle_access(all)?
        .handle_access(AccessNet::from_all(ABI_USED))?
        .scope(scope)?
        .create()?
        .add_rules(rules.into_iter().flatten())?
        .restrict_self()?;
    Ok(status.ruleset)
}

/// Threads of this process now (Landlock confines only the caller and what it starts).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops the kernel's unused dentries and inodes (root only), as memory pressure does.
    fn drop_dentry_cache() {
        // SAFETY: sync takes no arguments.
        unsafe { libc::sync() };
        std::fs::write("/proc/sys/vm/drop_caches", "2")
            .expect("writing /proc/sys/vm/drop_caches (this test needs root)");
    }

    /// /proc/self stays readable under Landlock after the kernel drops its dentries. The rule
    /// for /proc/self names the inode of /proc/PID as it was when the rule was made; procfs
    /// makes a new inode when the dentry is looked up again after being dropped, and the rule
    /// would then not match it (reading /proc/self/maps failed with EACCES in a vkmark run
    /// after an out-of-memory kill on the host, and every opaque blob's MAP_BLOB with it).
    #[test]
    fn proc_self_stays_readable_after_the_dentry_cache_is_dropped() {
        let mut to_parent = [0; 2];
        let mut to_child = [0; 2];
        // SAFETY: pipe writes two descriptors into each array.
        unsafe {
            assert_eq!(libc::pipe(to_parent.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(to_child.as_mut_ptr()), 0);
        }
        // SAFETY: fork in a test. The child confines itself (glibc's fork leaves malloc usable
        // in the child), opens /proc/self/maps before and after the parent drops the dentry
        // cache, and _exits with what it found: 0 both times, 1 Landlock failed, 2 the first
        // open failed, 3 the second. The parent only writes drop_caches, signals and waits.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if confine(&[], false).is_err() {
                    libc::_exit(1);
                }
                let maps = c"/proc/self/maps".as_ptr();
                let fd = libc::open(maps, libc::O_RDONLY);
                if fd < 0 {
                    libc::_exit(2);
                }
                libc::close(fd);
                let b = [0u8; 1];
                libc::write(to_parent[1], b.as_ptr().cast(), 1);
                let mut r = [0u8; 1];
                libc::read(to_child[0], r.as_mut_ptr().cast(), 1);
                let fd = libc::open(maps, libc::O_RDONLY);
                libc::_exit(if fd < 0 { 3 } else { 0 });
            }
            let mut r = [0u8; 1];
            assert_eq!(libc::read(to_parent[0], r.as_mut_ptr().cast(), 1), 1);
            drop_dentry_cache();
            libc::write(to_child[1], r.as_ptr().cast(), 1);
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            assert!(
                libc::WIFEXITED(status),
                "the child ended with status {status}"
            );
            assert_eq!(
                libc::WEXITSTATUS(status),
                0,
                "1: Landlock failed, 2: /proc/self/maps unreadable at once, 3: unreadable after the dentry cache was dropped"
            );
        }
    }
}
