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

use std::path::{Path, PathBuf};

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

/// The one ruleset both use. `executables`: None, anything readable may be executed; Some,
/// only those files. `scope_signals`: signals only inside this Landlock domain.
fn restrict(
    read_write: &[PathBuf],
    executables: Option<&[PathBuf]>,
    scope_signals: bool,
) -> Result<RulesetStatus, FilesError> {
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
