//! Whether virgl starts on this host, asked in a child process.
//!
//! virglrenderer runs on one renderer thread per process, set up once, with Mesa's and
//! llvmpipe's threads under it. Started in vhost-gpu itself before the sandbox, those threads
//! would escape Landlock (which confines only the thread that asks and the threads it starts
//! afterwards), and one process could not try several render nodes. So the question is asked
//! in a forked child, which answers through a pipe and exits; vhost-gpu's own renderer is set
//! up later, for the first frontend, inside the sandbox.

use std::io::Read;
use std::os::fd::FromRawFd;

use virgl_bridge::{VirglOptions, VirglRenderer};

use crate::privileges::{become_user, User};

/// Starts virgl with `options` in a child process, as `user` when given (what vhost-gpu will
/// run as); Ok when it came up, else why not. The child leaves nothing behind: Mesa's shader
/// cache is off in it.
///
/// Call only while this process has one thread (at start-up): the child runs on a copy of it.
pub fn virgl(options: &VirglOptions, user: Option<&User>) -> Result<(), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: called while this process has a single thread, so the child's copy of the heap
    // and of every lock is consistent; the child only sets up virgl, writes one message to the
    // pipe and _exits without running destructors.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        crate::shader_cache::disable();
        let (code, msg) = match user.map_or(Ok(()), become_user) {
            Err(e) => (1, e.to_string()),
            Ok(()) => match VirglRenderer::new(options) {
                Ok(_) => (0, String::new()),
                Err(e) => (1, e.to_string()),
            },
        };
        // SAFETY: write of an initialised buffer to the pipe's write end, then _exit.
        unsafe {
            libc::write(fds[1], msg.as_ptr().cast(), msg.len());
            libc::_exit(code);
        }
    }
    // SAFETY: closing our copy of the write end, a descriptor this function made.
    unsafe { libc::close(fds[1]) };
    // SAFETY: the read end is a descriptor this function made and nothing else owns.
    let mut read_end = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    let mut msg = String::new();
    let _ = read_end.read_to_string(&mut msg);
    let mut status = 0;
    // SAFETY: waits for the child made above; writes its status into a local.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if !msg.is_empty() {
        Err(msg)
    } else if libc::WIFSIGNALED(status) {
        // epoxy, for one, aborts where it finds no libGL: the child dies, not vhost-gpu.
        Err(format!(
            "the virgl probe process was killed by signal {} (its stderr above says why)",
            libc::WTERMSIG(status)
        ))
    } else {
        Err(format!(
            "the virgl probe process failed (wait status {status:#x})"
        ))
    }
}
