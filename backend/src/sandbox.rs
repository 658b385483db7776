//! The sandbox: once vhost-gpu has started (renderer up, socket listening, capture thread
//! running), a seccomp-BPF filter on every thread allows only the system calls the device was
//! measured to make while serving, and kills the process on any other.
//!
//! The list was measured, not guessed: `strace -f` over the harness tests (2D, virgl, blobs,
//! bad input, CVE classes) and over a real Mesa guest running GLES, page flips and kmscube on
//! virgl with `--capture-dir` and screenshots, keeping what happens after start-up. Calls only
//! seen during start-up (execve, socket/connect for glibc's nscd, bind/listen, mkdir, access)
//! are left out. `--sandbox off` turns it off for debugging (strace, gdb, perf).

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("compiling the seccomp filter: {0}")]
    Compile(#[from] seccompiler::Error),
}

/// The system calls allowed after start-up, by name (for the log and the docs) and number.
pub const ALLOWED: &[(&str, libc::c_long)] = &[
    // Serving: the vhost-user socket, its epoll loop, eventfds, file descriptors passed in.
    ("accept4", libc::SYS_accept4),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("getsockopt", libc::SYS_getsockopt),
    ("shutdown", libc::SYS_shutdown),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("poll", libc::SYS_poll),
    ("eventfd2", libc::SYS_eventfd2),
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("writev", libc::SYS_writev),
    ("close", libc::SYS_close),
    ("fcntl", libc::SYS_fcntl),
    ("lseek", libc::SYS_lseek),
    ("pread64", libc::SYS_pread64),
    // Memory: guest memory mappings, the heap, llvmpipe's JIT code.
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("mprotect", libc::SYS_mprotect),
    ("madvise", libc::SYS_madvise),
    ("brk", libc::SYS_brk),
    // Threads: a queue thread per connection, llvmpipe's workers.
    ("clone3", libc::SYS_clone3),
    ("clone", libc::SYS_clone),
    ("futex", libc::SYS_futex),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_yield", libc::SYS_sched_yield),
    ("prctl", libc::SYS_prctl),
    ("gettid", libc::SYS_gettid),
    ("getpid", libc::SYS_getpid),
    ("nanosleep", libc::SYS_nanosleep),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    // A panic aborts (raise(SIGABRT)): the frontend sees the socket close.
    ("tgkill", libc::SYS_tgkill),
    // Files: Mesa reading its configuration when a context is made; PNG capture.
    ("openat", libc::SYS_openat),
    ("newfstatat", libc::SYS_newfstatat),
    ("fstat", libc::SYS_fstat),
    ("statx", libc::SYS_statx),
    ("readlink", libc::SYS_readlink),
    ("getdents64", libc::SYS_getdents64),
    ("rename", libc::SYS_rename),
    ("getrandom", libc::SYS_getrandom),
    ("getuid", libc::SYS_getuid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getegid", libc::SYS_getegid),
    // virglrenderer on a render node (GBM): DRM ioctls.
    ("ioctl", libc::SYS_ioctl),
];

/// The filter: every call in [`ALLOWED`] passes, any other gets `mismatch`.
pub fn program(mismatch: SeccompAction) -> Result<BpfProgram, SandboxError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        ALLOWED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)?;
    Ok(filter.try_into()?)
}

/// Installs the filter on every thread of the process; from here on a call outside
/// [`ALLOWED`] kills the process.
pub fn install() -> Result<(), SandboxError> {
    let prog = program(SeccompAction::KillProcess)?;
    seccompiler::apply_filter_all_threads(&prog)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child under the filter; returns how the child ended.
    fn in_sandboxed_child(f: fn() -> i32) -> libc::c_int {
        let prog = program(SeccompAction::KillProcess).unwrap();
        // SAFETY: fork in a test: the child only installs the already-built filter (prctl and
        // seccomp, no allocation), makes raw system calls and _exits; the parent waits for it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if seccompiler::apply_filter(&prog).is_err() {
                    libc::_exit(99);
                }
                libc::_exit(f());
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            status
        }
    }

    #[test]
    fn allowed_calls_work_and_a_forbidden_one_kills_with_sigsys() {
        // Allowed: getpid, then exit 7.
        let st = in_sandboxed_child(|| {
            // SAFETY: a raw getpid has no arguments.
            let pid = unsafe { libc::syscall(libc::SYS_getpid) };
            if pid > 0 {
                7
            } else {
                1
            }
        });
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7,
            "status {st:#x}"
        );
        // Forbidden: opening a network socket, or running a program, kills the process.
        for f in [
            (|| {
                // SAFETY: a raw socket call with plain integer arguments.
                unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
                0
            }) as fn() -> i32,
            || {
                // SAFETY: execve of a NUL-terminated path with null argv/envp; never returns
                // under the filter.
                unsafe {
                    libc::syscall(
                        libc::SYS_execve,
                        c"/bin/true".as_ptr(),
                        std::ptr::null::<*const libc::c_char>(),
                        std::ptr::null::<*const libc::c_char>(),
                    )
                };
                0
            },
        ] {
            let st = in_sandboxed_child(f);
            assert!(
                libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSYS,
                "status {st:#x}: not killed by SIGSYS"
            );
        }
    }

    #[test]
    fn the_list_has_no_duplicates_and_no_dangerous_calls() {
        let mut names: Vec<&str> = ALLOWED.iter().map(|a| a.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALLOWED.len());
        for bad in [
            "execve", "socket", "connect", "ptrace", "bind", "listen", "fork",
        ] {
            assert!(!names.contains(&bad), "{bad} allowed");
        }
    }
}
