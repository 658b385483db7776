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
    in_child(user, || {
        VirglRenderer::new(options)
            .map(|_| String::new())
            .map_err(|e| e.to_string())
    })
    .map(|_| ())
}

/// Whether Venus can run here: a Vulkan device that can back it (the host's loader, asked
/// through [`virgl_bridge::probe_vulkan`]), and virglrenderer starting with Venus and its own
/// render server (in the child, which may fork). Ok names the device Venus will use.
pub fn venus(options: &VirglOptions, user: Option<&User>) -> Result<String, String> {
    let mut opts = options.clone();
    opts.venus = true;
    opts.render_server = None;
    in_child(user, move || {
        let devices = virgl_bridge::probe_vulkan()?;
        let Some(d) = devices.iter().find(|d| d.usable) else {
            return Err(if devices.is_empty() {
                "the Vulkan loader found no device (install a Vulkan driver: lavapipe is Debian's mesa-vulkan-drivers)".to_string()
            } else {
                format!(
                    "no Vulkan device can back Venus (Vulkan 1.1 and VK_KHR_external_memory_fd needed): {}",
                    devices.iter().map(|d| format!("{} (Vulkan {})", d.name, d.api)).collect::<Vec<_>>().join(", ")
                )
            });
        };
        let r = VirglRenderer::new(&opts).map_err(|e| format!("virglrenderer with Venus: {e}"))?;
        let caps = virgl_bridge::Renderer::capsets(&r);
        if !caps
            .iter()
            .any(|c| c.id == virgl_bridge::CAPSET_VENUS && c.max_size > 0)
        {
            return Err("virglrenderer offers no Venus capset (built without Venus?)".into());
        }
        Ok(format!("{} ({}, Vulkan {})", d.name, d.kind, d.api))
    })
}

/// Runs `f` in a forked child (as `user` when given) and returns what it returned.
fn in_child(
    user: Option<&User>,
    f: impl FnOnce() -> Result<String, String>,
) -> Result<String, String> {
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
            Ok(()) => match f() {
                Ok(s) => (0, s),
                Err(e) => (1, e),
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
        Ok(msg)
    } else if !msg.is_empty() {
        Err(msg)
    } else if libc::WIFSIGNALED(status) {
        // epoxy, for one, aborts where it finds no libGL: the child dies, not vhost-gpu.
        Err(format!(
            "the probe process was killed by signal {} (its stderr above says why)",
            libc::WTERMSIG(status)
        ))
    } else {
        Err(format!(
            "the probe process failed (wait status {status:#x})"
        ))
    }
}
