//! The render server's confinement: Venus runs the host's Vulkan driver in
//! `virgl_render_server`, a process of its own, which the guest's command streams reach first.
//!
//! vhost-gpu starts it before its own sandbox (its process creation is fatal afterwards) and
//! confines it on its own, in three steps taken by vhost-gpu's own binary (`vhost-gpu
//! render-server ...`) before it executes the server:
//! - **Landlock** ([`super::files::confine_render_server`]): the same read-only trees as
//!   vhost-gpu (libraries, drivers and their configuration, /proc and /sys facts), read-write
//!   only on render nodes and Mesa's shader cache, no network and no signals or abstract
//!   sockets outside; and *execute* only on the server binary and the dynamic loader, so a
//!   compromised server can execute nothing but a fresh copy of itself.
//! - **seccomp** ([`policy`]): vhost-gpu's own policy (the same libraries: glibc, Mesa, LLVM),
//!   plus what a server that forks a worker per context needs ([`EXTRA`]). Its errno filters
//!   apply too (clone3 is ENOSYS, so clone's flags stay visible).
//! - **A call outside the policy is named.** The server cannot carry a SIGSYS handler through
//!   `execve`, so its filter answers SECCOMP_RET_USER_NOTIF instead of TRAP: the kernel stops
//!   the call and tells vhost-gpu, which holds the filter's listener. vhost-gpu logs the call's
//!   name and number and the process, then (enforcing) kills the server or (`--sandbox log`)
//!   lets the call run once reported.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as ArgLen, SeccompCmpOp as Op, SeccompCondition,
    SeccompRule,
};

use super::SandboxError;

/// What the render server needs beyond vhost-gpu's own policy, and why it is safe for it.
pub const EXTRA: &[(&str, libc::c_long, &str)] = &[
    (
        "execve",
        libc::SYS_execve,
        "once, to become virgl_render_server; Landlock lets it execute only that binary (and \
         the loader), so a second execve gives an attacker nothing but a fresh server",
    ),
    (
        "clone",
        libc::SYS_clone,
        "a worker process per Venus context (fork) as well as threads; never with a new \
         namespace (CLONE_NEW*), which stays fatal",
    ),
    ("wait4", libc::SYS_wait4, "reaping its own workers"),
    (
        "kill",
        libc::SYS_kill,
        "the server ends its own workers when their context goes (SIGKILL); Landlock's \
         signal scope keeps any signal inside the sandbox's processes",
    ),
    (
        "socketpair",
        libc::SYS_socketpair,
        "AF_UNIX pairs: each worker gets its own connection to the server and to vhost-gpu",
    ),
    ("exit", libc::SYS_exit, "a worker's thread ends"),
    (
        "arch_prctl",
        libc::SYS_arch_prctl,
        "ARCH_SET_FS only: glibc sets up thread-local storage right after execve",
    ),
    (
        "signalfd4",
        libc::SYS_signalfd4,
        "the server reads SIGCHLD (its workers ending) from a signalfd",
    ),
    (
        "waitid",
        libc::SYS_waitid,
        "reaping its own workers (the kernel lets it wait only for its children)",
    ),
];

/// Every CLONE_NEW* flag: a new namespace stays fatal for the server too.
const CLONE_NEW_ANY: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// SECCOMP_RET_USER_NOTIF: the kernel holds the call and tells the listener.
pub const RET_USER_NOTIF: u32 = 0x7fc0_0000;
/// A placeholder action the compiled filter returns where USER_NOTIF is meant (seccompiler
/// has no USER_NOTIF action); [`policy`] rewrites it. No real filter here uses TRACE.
const PLACEHOLDER: SeccompAction = SeccompAction::Trace(0x5eed);
/// What the placeholder compiles to: SECCOMP_RET_TRACE with its data.
const RET_PLACEHOLDER: u32 = 0x7ff0_0000 | 0x5eed;

/// The render server's filter: vhost-gpu's policy with [`EXTRA`] (whose rules replace its
/// own where both name a call: clone), compiled as one program; any other call answers
/// SECCOMP_RET_USER_NOTIF. `pid`: the server's process (its own threads may be signalled).
pub fn policy(pid: u32) -> Result<BpfProgram, SandboxError> {
    let mut rules = super::policy_rules(pid, false, None)?;
    for &(_, nr, _) in EXTRA {
        let r = match nr {
            libc::SYS_clone => vec![SeccompRule::new(vec![SeccompCondition::new(
                0,
                ArgLen::Qword,
                Op::MaskedEq(CLONE_NEW_ANY),
                0,
            )?])?],
            libc::SYS_arch_prctl => vec![SeccompRule::new(vec![SeccompCondition::new(
                0,
                ArgLen::Dword,
                Op::Eq,
                0x1002, // ARCH_SET_FS
            )?])?],
            libc::SYS_socketpair => vec![SeccompRule::new(vec![SeccompCondition::new(
                0,
                ArgLen::Dword,
                Op::Eq,
                libc::AF_UNIX as u64,
            )?])?],
            _ => Vec::new(),
        };
        rules.insert(nr, r);
    }
    let mut prog = super::compile(rules, PLACEHOLDER, SeccompAction::Allow)?;
    for ins in &mut prog {
        // BPF_RET | BPF_K with the placeholder's value: the user notification instead.
        if ins.code == 0x06 && ins.k == RET_PLACEHOLDER {
            ins.k = RET_USER_NOTIF;
        }
    }
    Ok(prog)
}

/// Installs `prog` on the calling (single-threaded) process and returns the listener fd the
/// kernel reports calls outside it on.
pub fn install_with_listener(prog: &BpfProgram) -> std::io::Result<i32> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| std::io::Error::other("filter too long"))?,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
    // SAFETY: `fprog` points at `prog`'s instructions, alive across the call; the kernel copies
    // the filter.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd as i32)
}

/// The errno filters vhost-gpu uses (clone3 ENOSYS, ...), for the server too.
pub fn errno_filters() -> Result<Vec<BpfProgram>, SandboxError> {
    super::errno_filters(false)
}

/// `struct seccomp_notif` and `struct seccomp_notif_resp` (linux/seccomp.h).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct Notif {
    pub id: u64,
    pub pid: u32,
    pub flags: u32,
    pub nr: i32,
    pub arch: u32,
    pub ip: u64,
    pub args: [u64; 6],
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct NotifResp {
    pub id: u64,
    pub val: i64,
    pub error: i32,
    pub flags: u32,
}

/// SECCOMP_IOCTL_NOTIF_RECV / _SEND: _IOWR('!', 0|1, struct).
pub const NOTIF_RECV: u64 =
    0xc000_0000 | ((std::mem::size_of::<Notif>() as u64) << 16) | (0x21 << 8);
pub const NOTIF_SEND: u64 =
    0xc000_0000 | ((std::mem::size_of::<NotifResp>() as u64) << 16) | (0x21 << 8) | 1;
/// SECCOMP_USER_NOTIF_FLAG_CONTINUE: let the call run.
pub const FLAG_CONTINUE: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        assert_eq!(std::mem::size_of::<Notif>(), 80);
        assert_eq!(std::mem::size_of::<NotifResp>(), 24);
        assert_eq!(NOTIF_RECV, 0xc050_2100);
        assert_eq!(NOTIF_SEND, 0xc018_2101);
    }

    #[test]
    fn the_policy_has_no_placeholder_left_and_forks_without_namespaces() {
        let p = policy(1).unwrap();
        assert!(p
            .iter()
            .all(|i| !(i.code == 0x06 && i.k == RET_PLACEHOLDER)));
        assert!(p.iter().any(|i| i.code == 0x06 && i.k == RET_USER_NOTIF));
    }
}
