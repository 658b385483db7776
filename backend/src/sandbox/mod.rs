//! The sandbox: once vhost-gpu has started (renderer probed, socket listening, files it needs
//! opened or created), two layers confine what a compromised renderer could do.
//!
//! - **seccomp** ([`install`]): a policy written for the libraries that run inside vhost-gpu
//!   after start-up (glibc, Rust std, Mesa with llvmpipe or a render node through GBM, LLVM,
//!   virglrenderer), call by call, in three classes:
//!   - [`ALLOWED`] and [`CONDITIONAL`]: calls that are harmless, or harmless with the argument
//!     checks written beside them; file access among them is confined by Landlock instead.
//!   - [`ERRNO`]: calls whose failure the libraries handle; they fail with that errno and the
//!     process goes on.
//!   - Everything else is fatal: process creation, networking, tracing, and any call nobody
//!     decided on. A fatal call is never silent: a SIGSYS handler ([`trap`]) writes the call's
//!     name and number and the thread's name to stderr and the system log, then the process
//!     exits with [`SANDBOX_EXIT`]. `--sandbox log` reports each such call once and lets it
//!     run, for finding what a new library version needs.
//! - **Landlock** ([`files`]): which files the process may still open, whoever runs it (root
//!   included).
//!
//! `--sandbox off` turns both off for debugging (strace, gdb, perf).

pub mod files;
pub mod render_server;
pub mod syscalls;
pub mod trap;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as ArgLen, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

pub use trap::SANDBOX_EXIT;

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("compiling the seccomp filter: {0}")]
    Compile(#[from] seccompiler::Error),
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// What happens to a call outside the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Reported, then the process exits with [`SANDBOX_EXIT`].
    Kill,
    /// Reported once per system call, then carried out.
    Log,
}

/// Calls allowed with any arguments. Files are opened, created and removed only where
/// Landlock ([`files`]) lets them be.
pub const ALLOWED: &[(&str, libc::c_long)] = &[
    // The vhost-user socket and its epoll loop, eventfds and file descriptors passed in, and
    // `send` on the system log's connected socket (sendto with no address).
    ("accept4", libc::SYS_accept4),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("recvfrom", libc::SYS_recvfrom),
    ("sendto", libc::SYS_sendto),
    ("getsockopt", libc::SYS_getsockopt),
    ("shutdown", libc::SYS_shutdown),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("eventfd2", libc::SYS_eventfd2),
    ("pipe2", libc::SYS_pipe2),
    // Reading and writing descriptors the process already holds.
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("lseek", libc::SYS_lseek),
    ("close", libc::SYS_close),
    ("fcntl", libc::SYS_fcntl),
    ("dup", libc::SYS_dup),
    ("dup3", libc::SYS_dup3),
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
    ("ftruncate", libc::SYS_ftruncate),
    ("fallocate", libc::SYS_fallocate),
    ("fadvise64", libc::SYS_fadvise64),
    // Mesa's shader cache locks its index and files with flock.
    ("flock", libc::SYS_flock),
    // Memory: guest memory mappings, the heap, llvmpipe's JIT code (mprotect to executable),
    // anonymous shared memory for resources.
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("mprotect", libc::SYS_mprotect),
    ("madvise", libc::SYS_madvise),
    ("brk", libc::SYS_brk),
    ("memfd_create", libc::SYS_memfd_create),
    ("membarrier", libc::SYS_membarrier),
    // Threads (created through `clone`, see CONDITIONAL), their locks and signals.
    ("futex", libc::SYS_futex),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("set_tid_address", libc::SYS_set_tid_address),
    ("rseq", libc::SYS_rseq),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_getparam", libc::SYS_sched_getparam),
    ("sched_getscheduler", libc::SYS_sched_getscheduler),
    ("sched_yield", libc::SYS_sched_yield),
    ("getpriority", libc::SYS_getpriority),
    ("getcpu", libc::SYS_getcpu),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    // Time.
    ("nanosleep", libc::SYS_nanosleep),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_getres", libc::SYS_clock_getres),
    ("gettimeofday", libc::SYS_gettimeofday),
    // Facts about this process and the host, read only. Mesa and LLVM size their caches and
    // thread pools from sysinfo; a Rust backtrace asks for getcwd.
    ("getpid", libc::SYS_getpid),
    ("gettid", libc::SYS_gettid),
    ("getuid", libc::SYS_getuid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getegid", libc::SYS_getegid),
    ("getresuid", libc::SYS_getresuid),
    ("getresgid", libc::SYS_getresgid),
    ("getgroups", libc::SYS_getgroups),
    ("uname", libc::SYS_uname),
    ("sysinfo", libc::SYS_sysinfo),
    ("getrusage", libc::SYS_getrusage),
    ("times", libc::SYS_times),
    ("getcwd", libc::SYS_getcwd),
    ("getrandom", libc::SYS_getrandom),
    // Files, by path: Landlock decides which paths (read-only for libraries, drivers and
    // their configuration; read-write for the shader cache and --capture-dir). Mesa's cache
    // makes directories, renames finished entries into place and evicts old ones.
    ("openat", libc::SYS_openat),
    ("newfstatat", libc::SYS_newfstatat),
    ("fstat", libc::SYS_fstat),
    ("stat", libc::SYS_stat),
    ("lstat", libc::SYS_lstat),
    ("statx", libc::SYS_statx),
    ("statfs", libc::SYS_statfs),
    ("fstatfs", libc::SYS_fstatfs),
    ("readlink", libc::SYS_readlink),
    ("readlinkat", libc::SYS_readlinkat),
    ("getdents64", libc::SYS_getdents64),
    ("access", libc::SYS_access),
    ("faccessat", libc::SYS_faccessat),
    ("faccessat2", libc::SYS_faccessat2),
    ("mkdir", libc::SYS_mkdir),
    ("mkdirat", libc::SYS_mkdirat),
    ("rename", libc::SYS_rename),
    ("renameat", libc::SYS_renameat),
    ("renameat2", libc::SYS_renameat2),
    ("unlink", libc::SYS_unlink),
    ("unlinkat", libc::SYS_unlinkat),
    ("rmdir", libc::SYS_rmdir),
];

/// Calls allowed only with some arguments ([`conditional_rules`] holds the checks).
pub const CONDITIONAL: &[(&str, libc::c_long, &str)] = &[
    (
        "setsockopt",
        libc::SYS_setsockopt,
        "VNC connections' timeouts (SO_RCVTIMEO, SO_SNDTIMEO) and TCP_NODELAY only",
    ),
    (
        "connect",
        libc::SYS_connect,
        "only with --vnc-input-qmp (to QMP's Unix socket: no other family can be made); \
         fatal otherwise",
    ),
    (
        "clone",
        libc::SYS_clone,
        "threads only (CLONE_THREAD); a new process (fork, posix_spawn) is fatal",
    ),
    (
        "ioctl",
        libc::SYS_ioctl,
        "DRM (type 'd'), dma-buf ('b') and sync_file ('>') requests, non-blocking and \
         close-on-exec flags, and reading a terminal's settings (isatty); nothing else, so \
         not TIOCSTI on an inherited terminal",
    ),
    (
        "tgkill",
        libc::SYS_tgkill,
        "to this process's own threads (abort raises SIGABRT); not to other processes",
    ),
    (
        "prlimit64",
        libc::SYS_prlimit64,
        "reading this process's own limits; setting them, or another process's, is fatal",
    ),
    (
        "prctl",
        libc::SYS_prctl,
        "naming threads (PR_SET_NAME, PR_GET_NAME) and PR_SET_NO_NEW_PRIVS (it only takes rights \
         away); other options fail with EPERM (ERRNO)",
    ),
    (
        "kill",
        libc::SYS_kill,
        "only with a render server (Venus): SIGKILL to its process group, when it made a call \
         outside its own policy; not in the policy otherwise",
    ),
    (
        "wait4",
        libc::SYS_wait4,
        "only with a render server: reaping that one child, to log how it ended",
    ),
    (
        "socket",
        libc::SYS_socket,
        "AF_UNIX only, and that fails with EPERM (ERRNO) unless --vnc-input-qmp needs to \
         connect to QEMU's QMP socket; any other family is fatal",
    ),
];

/// Calls that fail with an errno, and why the libraries are fine with that.
pub const ERRNO: &[(&str, libc::c_long, i32, &str)] = &[
    (
        "clone3",
        libc::SYS_clone3,
        libc::ENOSYS,
        "its flags sit in memory seccomp cannot read; glibc then creates threads with clone, \
         whose flags it can",
    ),
    (
        "socket",
        libc::SYS_socket,
        libc::EPERM,
        "AF_UNIX: glibc's user lookups (nscd) and a syslog reconnect fall back when they fail",
    ),
    (
        "prctl",
        libc::SYS_prctl,
        libc::EPERM,
        "options other than thread names: nothing after start-up depends on them",
    ),
    (
        "sched_setaffinity",
        libc::SYS_sched_setaffinity,
        libc::EPERM,
        "Mesa pins its threads as a hint; the call could also pin other processes of the user",
    ),
    (
        "sched_setscheduler",
        libc::SYS_sched_setscheduler,
        libc::EPERM,
        "Mesa lowers its queue threads' priority as a hint; could aim at other processes",
    ),
    (
        "sched_setparam",
        libc::SYS_sched_setparam,
        libc::EPERM,
        "as sched_setscheduler",
    ),
    (
        "setpriority",
        libc::SYS_setpriority,
        libc::EPERM,
        "as sched_setscheduler",
    ),
    (
        "chmod",
        libc::SYS_chmod,
        libc::EPERM,
        "file modes and owners stay as created",
    ),
    ("fchmod", libc::SYS_fchmod, libc::EPERM, "as chmod"),
    ("fchmodat", libc::SYS_fchmodat, libc::EPERM, "as chmod"),
    ("chown", libc::SYS_chown, libc::EPERM, "as chmod"),
    ("fchown", libc::SYS_fchown, libc::EPERM, "as chmod"),
    ("fchownat", libc::SYS_fchownat, libc::EPERM, "as chmod"),
    ("lchown", libc::SYS_lchown, libc::EPERM, "as chmod"),
    (
        "utimensat",
        libc::SYS_utimensat,
        libc::EPERM,
        "file times stay as the kernel sets them",
    ),
];

/// The ioctl request types (bits 8-15) allowed, and single requests.
const IOCTL_TYPES: &[u64] = &[b'd' as u64, b'b' as u64, b'>' as u64];
const IOCTL_REQUESTS: &[u64] = &[
    libc::FIONBIO,
    libc::FIOCLEX,
    libc::FIONCLEX,
    libc::FIONREAD,
    libc::TCGETS,
    libc::TIOCGWINSZ,
];

fn cond(arg: u8, len: ArgLen, op: Op, v: u64) -> Result<SeccompCondition, SandboxError> {
    Ok(SeccompCondition::new(arg, len, op, v)?)
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    Ok(SeccompRule::new(conds)?)
}

/// The argument checks of [`CONDITIONAL`]: a call passes when one of its rules matches.
fn conditional_rules(
    pid: u64,
    unix_sockets: bool,
    server: Option<u32>,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SandboxError> {
    let mut m = BTreeMap::new();
    if let Some(server) = server {
        // kill(-pgid, SIGKILL): the server leads its own process group (its workers are in it).
        let group = (-(server as i32)) as u32 as u64;
        m.insert(
            libc::SYS_kill,
            vec![rule(vec![
                cond(0, ArgLen::Dword, Op::Eq, group)?,
                cond(1, ArgLen::Dword, Op::Eq, libc::SIGKILL as u64)?,
            ])?],
        );
        m.insert(
            libc::SYS_wait4,
            vec![rule(vec![cond(
                0,
                ArgLen::Dword,
                Op::Eq,
                u64::from(server),
            )?])?],
        );
    }
    let sockopt = |level: i32, name: i32| -> Result<SeccompRule, SandboxError> {
        rule(vec![
            cond(1, ArgLen::Dword, Op::Eq, level as u64)?,
            cond(2, ArgLen::Dword, Op::Eq, name as u64)?,
        ])
    };
    m.insert(
        libc::SYS_setsockopt,
        vec![
            sockopt(libc::SOL_SOCKET, libc::SO_RCVTIMEO)?,
            sockopt(libc::SOL_SOCKET, libc::SO_SNDTIMEO)?,
            sockopt(libc::IPPROTO_TCP, libc::TCP_NODELAY)?,
        ],
    );
    if unix_sockets {
        m.insert(libc::SYS_connect, Vec::new());
    }
    let thread = libc::CLONE_THREAD as u64;
    m.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            ArgLen::Qword,
            Op::MaskedEq(thread),
            thread,
        )?])?],
    );
    let mut ioctl = Vec::new();
    for &t in IOCTL_TYPES {
        // The kernel reads the request as a 32-bit number, and so does the check.
        ioctl.push(rule(vec![cond(
            1,
            ArgLen::Dword,
            Op::MaskedEq(0xff00),
            t << 8,
        )?])?);
    }
    for &r in IOCTL_REQUESTS {
        ioctl.push(rule(vec![cond(1, ArgLen::Dword, Op::Eq, r)?])?);
    }
    if server.is_some() {
        // The render server's seccomp listener: receiving its reports and answering them.
        for r in [render_server::NOTIF_RECV, render_server::NOTIF_SEND] {
            ioctl.push(rule(vec![cond(1, ArgLen::Dword, Op::Eq, r)?])?);
        }
    }
    m.insert(libc::SYS_ioctl, ioctl);
    m.insert(
        libc::SYS_tgkill,
        vec![rule(vec![cond(0, ArgLen::Dword, Op::Eq, pid)?])?],
    );
    m.insert(
        libc::SYS_prlimit64,
        vec![rule(vec![
            cond(0, ArgLen::Dword, Op::Eq, 0)?,
            cond(2, ArgLen::Qword, Op::Eq, 0)?,
        ])?],
    );
    // prctl passes here; the ERRNO filter turns the options it does not allow into EPERM.
    m.insert(libc::SYS_prctl, Vec::new());
    m.insert(
        libc::SYS_socket,
        vec![rule(vec![cond(
            0,
            ArgLen::Dword,
            Op::Eq,
            libc::AF_UNIX as u64,
        )?])?],
    );
    Ok(m)
}

/// The argument checks of the [`ERRNO`] calls that fail only with some arguments.
fn errno_rules(nr: i64) -> Result<Vec<SeccompRule>, SandboxError> {
    Ok(match nr {
        libc::SYS_socket => vec![rule(vec![cond(
            0,
            ArgLen::Dword,
            Op::Eq,
            libc::AF_UNIX as u64,
        )?])?],
        libc::SYS_prctl => vec![rule(vec![
            cond(0, ArgLen::Dword, Op::Ne, libc::PR_SET_NAME as u64)?,
            cond(0, ArgLen::Dword, Op::Ne, libc::PR_GET_NAME as u64)?,
            // Only ever takes rights away (and installing the next filter sets it).
            cond(0, ArgLen::Dword, Op::Ne, libc::PR_SET_NO_NEW_PRIVS as u64)?,
        ])?],
        _ => Vec::new(),
    })
}

pub(crate) fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SandboxError> {
    let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)?;
    Ok(filter.try_into()?)
}

/// The policy filter: [`ALLOWED`], [`CONDITIONAL`] (with their checks) and the [`ERRNO`]
/// calls pass (the errno filters decide those); any other call gets `mismatch`. `connect`
/// passes only with `unix_sockets` (see [`errno_filters`]).
pub fn policy(
    mismatch: SeccompAction,
    pid: u32,
    unix_sockets: bool,
) -> Result<BpfProgram, SandboxError> {
    policy_with_server(mismatch, pid, unix_sockets, None)
}

/// [`policy`], and with `server` (a render server's pid) the calls that watch it.
pub fn policy_with_server(
    mismatch: SeccompAction,
    pid: u32,
    unix_sockets: bool,
    server: Option<u32>,
) -> Result<BpfProgram, SandboxError> {
    compile(
        policy_rules(pid, unix_sockets, server)?,
        mismatch,
        SeccompAction::Allow,
    )
}

/// The rules of [`policy_with_server`], before compiling: each call it lets through, with its
/// argument checks (none: any arguments).
pub(crate) fn policy_rules(
    pid: u32,
    unix_sockets: bool,
    server: Option<u32>,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SandboxError> {
    let mut rules = conditional_rules(u64::from(pid), unix_sockets, server)?;
    for &(_, nr) in ALLOWED {
        rules.insert(nr, Vec::new());
    }
    for &(_, nr, _, _) in ERRNO {
        rules.entry(nr).or_default();
    }
    Ok(rules)
}

/// One filter per errno value of [`ERRNO`]: its calls (with their argument checks) fail with
/// it; every other call passes. The kernel runs every installed filter and takes the
/// strictest answer, so these and [`policy`] together give each call its class. With
/// `unix_sockets`, AF_UNIX sockets do not fail (`--vnc-input-qmp` connects to QMP's socket;
/// Landlock already keeps abstract sockets to this process, and the policy any other family).
pub fn errno_filters(unix_sockets: bool) -> Result<Vec<BpfProgram>, SandboxError> {
    let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for &(_, nr, errno, _) in ERRNO {
        if unix_sockets && nr == libc::SYS_socket {
            continue;
        }
        by_errno
            .entry(errno)
            .or_default()
            .insert(nr, errno_rules(nr)?);
    }
    by_errno
        .into_iter()
        .map(|(errno, rules)| {
            compile(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(errno as u32),
            )
        })
        .collect()
}

/// Installs the SIGSYS handler and the filters on every thread of the process. From here on
/// a call outside the policy is reported and, with [`Enforcement::Kill`], ends the process.
/// `unix_sockets`: see [`errno_filters`].
/// `server`: the render server's pid, when Venus started one (vhost-gpu may then reap it, kill
/// its process group, and answer its seccomp listener).
pub fn install(
    enforcement: Enforcement,
    unix_sockets: bool,
    server: Option<u32>,
) -> Result<(), SandboxError> {
    trap::install_handler(enforcement).map_err(SandboxError::Handler)?;
    let mut policy = policy_with_server(
        SeccompAction::Trap,
        std::process::id(),
        unix_sockets,
        server,
    )?;
    if enforcement == Enforcement::Log {
        policy = trap::allow_replays(policy);
    }
    // The errno filters first: installing a filter needs prctl and seccomp, which the policy
    // filter, once in place, no longer allows.
    for f in errno_filters(unix_sockets)? {
        seccompiler::apply_filter_all_threads(&f)?;
    }
    seccompiler::apply_filter_all_threads(&policy)?;
    Ok(())
}

/// How many calls the policy names, for the log: (allowed, conditional, errno).
pub fn counts() -> (usize, usize, usize) {
    (ALLOWED.len(), CONDITIONAL.len(), ERRNO.len())
}

#[cfg(test)]
mod tests;
