//! Starting virglrenderer's render server (where Venus runs the host's Vulkan driver) before
//! the sandbox, confined on its own, and watching it.
//!
//! virglrenderer would fork and exec the server itself on first use, which vhost-gpu's seccomp
//! policy forbids (process creation is fatal). So vhost-gpu starts it at start-up:
//! 1. a SOCK_SEQPACKET pair: one end is the server's (`--socket-fd`), the other is handed to
//!    virglrenderer through its `get_server_fd` callback;
//! 2. `vhost-gpu render-server ...` (this binary, [`exec_confined`]) applies Landlock and the
//!    seccomp filter of [`crate::sandbox::render_server`], sends the filter's listener back,
//!    and executes `virgl_render_server`, which keeps both;
//! 3. a thread here ([`RenderServer::watch`]) answers the listener: each call outside the
//!    policy is logged with its name, then the server is killed (or, with `--sandbox log`, the
//!    call runs), and the server's end is logged with its reason.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use log::{error, info, warn};

use crate::sandbox::{render_server as policy, syscalls, Enforcement};

/// Where Debian's (and upstream's default) virglrenderer installs the server.
pub const DEFAULT_PATH: &str = "/usr/libexec/virgl_render_server";

/// Why the render server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RenderServerError {
    #[error("render server {0}: {1}")]
    Spawn(PathBuf, io::Error),
    #[error(
        "the render server's confinement failed before it started (its stderr above says why)"
    )]
    Confinement,
    #[error("{0}: {1}")]
    Io(&'static str, io::Error),
}

/// A started render server.
pub struct RenderServer {
    pid: u32,
    /// virglrenderer's end of the connection (taken by [`Self::take_client_fd`]).
    client: Option<OwnedFd>,
    /// The seccomp listener (None with `--sandbox off`).
    listener: Option<OwnedFd>,
}

fn socketpair(kind: i32) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new descriptors into the live array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Receives one descriptor (SCM_RIGHTS) on `sock`; None at end of stream.
fn recv_fd(sock: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain C data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: `msg` points at live buffers of the sizes it states.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CMSG_FIRSTHDR reads the header the kernel filled in within `cbuf`.
    let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if n == 0 || c.is_null() {
        return Ok(None);
    }
    // SAFETY: `c` points into `cbuf`; an SCM_RIGHTS message carries at least one int.
    unsafe {
        if (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
        Ok(Some(OwnedFd::from_raw_fd(fd)))
    }
}

fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let byte = [1u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: as in recv_fd; the control buffer holds one SCM_RIGHTS message with one int.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        if libc::sendmsg(sock, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl RenderServer {
    /// Starts `server` confined (`enforcement` Some) or not, with `read_write` (Mesa's shader
    /// cache) writable. Call before vhost-gpu's own sandbox and before any thread exists.
    pub fn start(
        server: &Path,
        read_write: &[PathBuf],
        enforcement: Option<Enforcement>,
    ) -> Result<Self, RenderServerError> {
        let (client, theirs) = socketpair(libc::SOCK_SEQPACKET)
            .map_err(|e| RenderServerError::Io("render server socket", e))?;
        let mut cmd;
        let back = if enforcement.is_some() {
            let (ours, child_end) = socketpair(libc::SOCK_STREAM)
                .map_err(|e| RenderServerError::Io("render server listener socket", e))?;
            let exe = std::env::current_exe()
                .map_err(|e| RenderServerError::Io("finding vhost-gpu's own binary", e))?;
            cmd = Command::new(exe);
            cmd.arg("render-server")
                .arg(server)
                .arg(theirs.as_raw_fd().to_string())
                .arg(child_end.as_raw_fd().to_string());
            for p in read_write {
                cmd.arg(p);
            }
            Some((ours, child_end))
        } else {
            cmd = Command::new(server);
            cmd.arg("--socket-fd").arg(theirs.as_raw_fd().to_string());
            None
        };
        let keep: Vec<RawFd> = std::iter::once(theirs.as_raw_fd())
            .chain(back.as_ref().map(|(_, c)| c.as_raw_fd()))
            .collect();
        // SAFETY: runs in the forked child before exec: fcntl, setpgid and prctl are
        // async-signal-safe and touch only the child.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &keep {
                    // The server's descriptors survive exec; everything else stays CLOEXEC.
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // Its own process group, so that its workers go with it; and it goes when
                // vhost-gpu does.
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| RenderServerError::Spawn(server.into(), e))?;
        let pid = child.id();
        drop(theirs);
        let listener = match back {
            Some((ours, child_end)) => {
                drop(child_end);
                match recv_fd(ours.as_raw_fd()) {
                    Ok(Some(fd)) => Some(fd),
                    _ => return Err(RenderServerError::Confinement),
                }
            }
            None => None,
        };
        info!(
            "render server {} started (pid {pid}){}",
            server.display(),
            if listener.is_some() {
                ": Landlock and its own seccomp policy"
            } else {
                ", unconfined (--sandbox off)"
            }
        );
        // The Child handle is dropped without waiting: the watch thread reaps it.
        std::mem::forget(child);
        Ok(RenderServer {
            pid,
            client: Some(client),
            listener,
        })
    }

    /// The server's process id (for vhost-gpu's own policy: it may signal and reap only it).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// virglrenderer's end of the connection (once).
    pub fn take_client_fd(&mut self) -> Option<RawFd> {
        self.client.take().map(IntoRawFd::into_raw_fd)
    }

    /// Starts the thread that answers the seccomp listener and logs the server's end.
    pub fn watch(mut self, enforcement: Option<Enforcement>) -> io::Result<()> {
        let listener = self.listener.take();
        let pid = self.pid;
        std::thread::Builder::new()
            .name("render-watch".into())
            .spawn(move || {
                if let (Some(l), Some(e)) = (listener, enforcement) {
                    // (What it saw is in the log.)
                    let _ = answer(l.as_raw_fd(), pid, e);
                }
                let mut status = 0;
                // SAFETY: waits for our own child; writes its status into a local.
                let r = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
                if r == pid as i32 {
                    if libc::WIFSIGNALED(status) {
                        error!(
                            "render server (pid {pid}) was killed by signal {}: Venus contexts fail from now on",
                            libc::WTERMSIG(status)
                        );
                    } else {
                        warn!(
                            "render server (pid {pid}) exited with status {}: Venus contexts fail from now on",
                            libc::WEXITSTATUS(status)
                        );
                    }
                }
            })
            .map(|_| ())
    }
}

/// Answers the listener until no process uses the filter any more; returns the system calls
/// it was asked about (each once, in order).
pub(crate) fn answer(listener: RawFd, pid: u32, enforcement: Enforcement) -> Vec<i32> {
    let mut reported = Vec::new();
    loop {
        let mut p = libc::pollfd {
            fd: listener,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        if unsafe { libc::poll(&mut p, 1, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return reported;
        }
        if p.revents & libc::POLLIN == 0 {
            // POLLHUP: every process under the filter has gone.
            return reported;
        }
        let mut n = policy::Notif::default();
        // SAFETY: NOTIF_RECV fills a live struct seccomp_notif of the size it encodes.
        if unsafe { libc::ioctl(listener, policy::NOTIF_RECV as _, &mut n) } != 0 {
            continue; // The caller went away meanwhile (ENOENT).
        }
        let name = syscalls::name(i64::from(n.nr));
        let first = !reported.contains(&n.nr);
        if first {
            reported.push(n.nr);
        }
        let mut resp = policy::NotifResp {
            id: n.id,
            ..Default::default()
        };
        match enforcement {
            Enforcement::Log => {
                if first {
                    warn!(
                        "sandbox (log): render server process {} made system call {name} ({}), args {:#x} {:#x} {:#x}: outside its policy; allowed",
                        n.pid, n.nr, n.args[0], n.args[1], n.args[2]
                    );
                }
                resp.flags = policy::FLAG_CONTINUE;
            }
            Enforcement::Kill => {
                error!(
                    "sandbox: render server process {} made system call {name} ({}), args {:#x} {:#x} {:#x}: outside its policy; killing the render server",
                    n.pid, n.nr, n.args[0], n.args[1], n.args[2]
                );
                // SAFETY: kill with plain integers: the server's process group (itself and
                // its workers), which vhost-gpu's own policy allows as the only target.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                resp.error = -libc::EPERM;
            }
        }
        // SAFETY: NOTIF_SEND reads a live struct seccomp_notif_resp.
        unsafe { libc::ioctl(listener, policy::NOTIF_SEND as _, &resp) };
    }
}

/// `vhost-gpu render-server SERVER SOCKET_FD LISTENER_FD [READ_WRITE_DIR...]`: confines this
/// process and executes the server. Returns only on failure.
pub fn exec_confined(args: &[String]) -> io::Error {
    let (Some(server), Some(sock), Some(back)) = (args.first(), args.get(1), args.get(2)) else {
        return io::Error::other(
            "usage: vhost-gpu render-server SERVER SOCKET_FD LISTENER_FD [DIR...]",
        );
    };
    let (Ok(sock), Ok(back)) = (sock.parse::<RawFd>(), back.parse::<RawFd>()) else {
        return io::Error::other("render-server: descriptors must be numbers");
    };
    let rw: Vec<PathBuf> = args.iter().skip(3).map(PathBuf::from).collect();
    let server = PathBuf::from(server);
    let mut exec = vec![server.clone()];
    // The loader that runs it (PT_INTERP): only the one glibc installs on this architecture.
    for l in ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-x86-64.so.2"] {
        if let Ok(p) = std::fs::canonicalize(l) {
            exec.push(p);
        }
    }
    if let Err(e) = crate::sandbox::files::confine_render_server(&rw, &exec) {
        return io::Error::other(format!("render server: landlock: {e}"));
    }
    let prog = match policy::errno_filters()
        .and_then(|errno| Ok((errno, policy::policy(std::process::id())?)))
    {
        Ok(p) => p,
        Err(e) => return io::Error::other(format!("render server: seccomp: {e}")),
    };
    for f in &prog.0 {
        if let Err(e) = seccompiler::apply_filter(f) {
            return io::Error::other(format!("render server: seccomp errno filter: {e}"));
        }
    }
    let listener = match policy::install_with_listener(&prog.1) {
        Ok(fd) => fd,
        Err(e) => return io::Error::other(format!("render server: seccomp policy: {e}")),
    };
    if let Err(e) = send_fd(back, listener) {
        return io::Error::other(format!("render server: handing over the listener: {e}"));
    }
    // SAFETY: both are this process's own descriptors, closed once.
    unsafe {
        libc::close(listener);
        libc::close(back);
    }
    Command::new(&server)
        .arg("--socket-fd")
        .arg(sock.to_string())
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child confined by the render server's seccomp layer (the errno
    /// filters, then the policy with its listener); answers the listener with `enforcement`.
    /// Returns the calls reported and how the child ended.
    fn in_confined_child(enforcement: Enforcement, f: fn() -> i32) -> (Vec<i32>, libc::c_int) {
        // Built before the fork: the child of a threaded test process must not allocate.
        let errnos = policy::errno_filters().unwrap();
        let prog = policy::policy(0).unwrap();
        let (ours, theirs) = socketpair(libc::SOCK_STREAM).unwrap();
        // SAFETY: fork in a test: the child makes its own process group (the parent kills it),
        // installs the already-built filters, hands the listener over, runs `f` (raw system
        // calls) and _exits; the parent answers the listener and waits for it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::setpgid(0, 0);
                for e in &errnos {
                    if seccompiler::apply_filter(e).is_err() {
                        libc::_exit(99);
                    }
                }
                let Ok(l) = policy::install_with_listener(&prog) else {
                    libc::_exit(98)
                };
                if send_fd(theirs.as_raw_fd(), l).is_err() {
                    libc::_exit(97);
                }
                libc::close(l);
                libc::_exit(f());
            }
            drop(theirs);
            let listener = recv_fd(ours.as_raw_fd()).unwrap().unwrap();
            let seen = answer(listener.as_raw_fd(), pid as u32, enforcement);
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            (seen, status)
        }
    }

    /// A worker: fork (allowed to the server), the child exits, the parent reaps it.
    fn forks_a_worker() -> i32 {
        // SAFETY: raw system calls in a forked test child.
        unsafe {
            let w = libc::fork();
            if w == 0 {
                libc::_exit(0);
            }
            let mut st = 0;
            if w < 0 || libc::waitpid(w, &mut st, 0) != w {
                return 3;
            }
            0
        }
    }

    /// A worker, then ptrace: outside the server's policy.
    fn forks_then_ptraces() -> i32 {
        if forks_a_worker() != 0 {
            return 3;
        }
        // SAFETY: raw system calls in a forked test child; PTRACE_TRACEME changes nothing here
        // (the parent never traces).
        unsafe {
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
        }
        0
    }

    #[test]
    fn the_servers_workers_run_and_a_call_outside_its_policy_is_named_and_fatal() {
        let (seen, st) = in_confined_child(Enforcement::Kill, forks_a_worker);
        assert!(seen.is_empty(), "reported {seen:?}");
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "{st:#x}");

        let (seen, st) = in_confined_child(Enforcement::Kill, forks_then_ptraces);
        assert_eq!(seen, vec![libc::SYS_ptrace as i32]);
        assert!(
            libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL,
            "{st:#x}"
        );
    }

    #[test]
    fn log_mode_reports_the_servers_call_once_and_lets_it_run() {
        let (seen, st) = in_confined_child(Enforcement::Log, forks_then_ptraces);
        assert_eq!(seen, vec![libc::SYS_ptrace as i32]);
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "{st:#x}");
    }
}
