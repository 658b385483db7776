use super::*;

/// Runs `f` in a forked child under the sandbox's seccomp layer; returns how the child ended
/// and what it wrote to stderr.
fn in_sandboxed_child(enforcement: Enforcement, f: fn() -> i32) -> (libc::c_int, String) {
    // (tgkill's check is for process 0 here: the child's id is not known before the fork,
    // and the child must not allocate.)
    let mut policy = policy(SeccompAction::Trap, 0, false).unwrap();
    if enforcement == Enforcement::Log {
        policy = trap::allow_replays(policy);
    }
    let errnos = errno_filters(false).unwrap();
    let mut pipe = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: fork in a test: the child only redirects stderr, installs the handler and the
    // already-built filters (sigaction, prctl, seccomp; no allocation), runs `f` (raw system
    // calls) and _exits; the parent reads the pipe and waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            libc::dup2(pipe[1], 2);
            libc::close(pipe[0]);
            if trap::install_handler(enforcement).is_err() {
                libc::_exit(98);
            }
            for f in &errnos {
                if seccompiler::apply_filter(f).is_err() {
                    libc::_exit(99);
                }
            }
            if seccompiler::apply_filter(&policy).is_err() {
                libc::_exit(99);
            }
            libc::_exit(f());
        }
        libc::close(pipe[1]);
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = libc::read(pipe[0], buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        libc::close(pipe[0]);
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        (status, String::from_utf8_lossy(&out).into_owned())
    }
}

fn exited(st: libc::c_int, code: i32) -> bool {
    libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == code
}

#[test]
fn allowed_calls_work_and_errno_calls_fail_without_a_kill() {
    let (st, err) = in_sandboxed_child(Enforcement::Kill, || {
        // SAFETY: raw system calls with plain integer arguments or local buffers.
        unsafe {
            let mut info: libc::sysinfo = std::mem::zeroed();
            if libc::syscall(libc::SYS_sysinfo, &mut info) != 0 {
                return 1;
            }
            if libc::syscall(libc::SYS_getpid) <= 0 {
                return 2;
            }
            // What Mesa's disk-cache thread and a Rust backtrace do (killed on fresh hosts by
            // the old, traced list): getcwd, mkdir, flock, rmdir.
            let mut cwd = [0u8; 256];
            if libc::syscall(libc::SYS_getcwd, cwd.as_mut_ptr(), cwd.len()) <= 0 {
                return 8;
            }
            let dir = c"/tmp/vhost-gpu-sandbox-test-dir";
            libc::syscall(libc::SYS_rmdir, dir.as_ptr());
            if libc::syscall(libc::SYS_mkdir, dir.as_ptr(), 0o700) != 0 {
                return 9;
            }
            let fd = libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                dir.as_ptr(),
                libc::O_RDONLY,
            );
            if fd < 0 || libc::syscall(libc::SYS_flock, fd, libc::LOCK_EX) != 0 {
                return 10;
            }
            libc::syscall(libc::SYS_close, fd);
            if libc::syscall(libc::SYS_rmdir, dir.as_ptr()) != 0 {
                return 11;
            }
            // clone3 answers ENOSYS (glibc then uses clone).
            let r = libc::syscall(libc::SYS_clone3, 0, 0);
            if r != -1 || *libc::__errno_location() != libc::ENOSYS {
                return 3;
            }
            // A Unix socket: EPERM, the process goes on.
            let r = libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_DGRAM, 0);
            if r != -1 || *libc::__errno_location() != libc::EPERM {
                return 4;
            }
            // Naming the thread works; other prctl options get EPERM.
            if libc::prctl(libc::PR_SET_NAME, c"sbx-test".as_ptr()) != 0 {
                return 5;
            }
            if libc::prctl(libc::PR_SET_DUMPABLE, 1) != -1 {
                return 6;
            }
            // A DRM ioctl on a non-DRM fd reaches the kernel (ENOTTY from it, not a kill).
            let r = libc::ioctl(2, 0xc010_6400u64 as _, 0);
            if r != -1 || *libc::__errno_location() != libc::ENOTTY {
                return 7;
            }
        }
        7 + 35
    });
    assert!(exited(st, 42), "status {st:#x}: {err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn a_call_outside_the_policy_is_named_and_exits_with_the_sandbox_status() {
    type Case = (fn() -> i32, &'static str);
    let cases: [Case; 5] = [
        (
            || {
                // SAFETY: a raw socket call with plain integer arguments.
                unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
                0
            },
            "system call 41 (socket) with arguments 0x2, 0x1, 0x0,",
        ),
        (
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
            "system call 59 (execve)",
        ),
        (
            || {
                // SAFETY: fork as glibc makes it: clone without CLONE_THREAD.
                unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
                0
            },
            "system call 56 (clone)",
        ),
        (
            || {
                // SAFETY: TIOCSTI with a pointer to a local byte: refused before the kernel
                // would look at it.
                unsafe { libc::ioctl(2, libc::TIOCSTI, c"x".as_ptr()) };
                0
            },
            "system call 16 (ioctl) with arguments 0x2, 0x5412,",
        ),
        (
            || {
                // SAFETY: ptrace with plain integers.
                unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) };
                0
            },
            "system call 101 (ptrace)",
        ),
    ];
    for (f, want) in cases {
        let (st, err) = in_sandboxed_child(Enforcement::Kill, f);
        assert!(exited(st, SANDBOX_EXIT), "{want}: status {st:#x}: {err}");
        assert!(err.contains(want), "{want}: {err}");
        assert!(err.contains("thread '"), "{err}");
        assert!(err.contains("exiting with status 159"), "{err}");
    }
}

#[test]
fn log_mode_reports_a_call_once_and_carries_it_out() {
    let (st, err) = in_sandboxed_child(Enforcement::Log, || {
        // SAFETY: a raw socket call with plain integer arguments, then close of its result.
        unsafe {
            let s = libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_DGRAM, 0);
            if s < 0 {
                return 1;
            }
            libc::close(s as i32);
            let s = libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_DGRAM, 0);
            if s < 0 {
                return 2;
            }
        }
        42
    });
    assert!(exited(st, 42), "status {st:#x}: {err}");
    assert_eq!(err.matches("system call 41 (socket)").count(), 1, "{err}");
    assert!(err.contains("allowed (--sandbox log"), "{err}");
}

#[test]
fn the_classes_are_disjoint_and_hold_no_dangerous_call() {
    let mut names: Vec<&str> = ALLOWED.iter().map(|a| a.0).collect();
    names.extend(CONDITIONAL.iter().map(|c| c.0));
    let all = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all, "a call in two lists");
    for &(name, nr, _, _) in ERRNO {
        assert_eq!(syscalls::name(nr), name);
        let conditional = CONDITIONAL.iter().any(|c| c.0 == name);
        assert!(
            conditional || !names.contains(&name),
            "{name} both allowed and errno"
        );
    }
    for &(name, nr) in ALLOWED {
        assert_eq!(syscalls::name(nr), name);
    }
    // connect is conditional on --vnc-input-qmp alone: not in the policy without it.
    assert!(!conditional_rules(0, false, None)
        .unwrap()
        .contains_key(&libc::SYS_connect));
    assert!(conditional_rules(0, true, None)
        .unwrap()
        .contains_key(&libc::SYS_connect));
    // kill and wait4 are in the policy only with a render server, and then only for it.
    assert!(!conditional_rules(0, false, None)
        .unwrap()
        .contains_key(&libc::SYS_kill));
    assert!(conditional_rules(0, false, Some(7))
        .unwrap()
        .contains_key(&libc::SYS_kill));
    let names: Vec<&str> = names
        .into_iter()
        .filter(|&n| n != "connect" && n != "kill")
        .collect();
    for bad in [
        "execve",
        "execveat",
        "fork",
        "vfork",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "perf_event_open",
        "bpf",
        "connect",
        "bind",
        "listen",
        "kill",
        "mount",
        "unshare",
        "setns",
    ] {
        assert!(!names.contains(&bad), "{bad} allowed");
    }
}
