//! Where frontends come from: a socket listening at a path (`--socket-path`), or a descriptor
//! the launcher hands over (`--fd`), which is either a listening socket or, as libvirt does it,
//! one end of an already connected socket pair.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vhost::vhost_user::Listener;

/// Why an inherited descriptor cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("--fd {0}: not a file descriptor")]
    Negative(RawFd),
    #[error(
        "--fd {0}: not open in this process ({1}); the launcher must pass it without close-on-exec"
    )]
    NotOpen(RawFd, io::Error),
    #[error("--fd {0}: not a socket (a vhost-user frontend needs a Unix stream socket)")]
    NotSocket(RawFd),
    #[error("--fd {0}: a socket, but not a Unix-domain one")]
    NotUnix(RawFd),
    #[error("--fd {0}: a Unix socket, but not a stream socket")]
    NotStream(RawFd),
    #[error("--fd {0}: a Unix stream socket that is neither listening nor connected")]
    Unconnected(RawFd),
    #[error("--fd {0}: {1}")]
    Query(RawFd, io::Error),
}

/// The frontends a [`ServingSocket`] gives.
pub enum Frontends {
    /// Any number, one after another, each accepted on this listener.
    Listening(Listener),
    /// Exactly one, already connected (taken when served).
    Connected(Option<UnixStream>),
}

/// The socket vhost-user frontends connect to: one listening at a path, or one inherited
/// (`--fd`).
///
/// Binding a Unix socket creates its file before `listen` makes it accept, so a frontend (or
/// a script) that waits for the file and connects at once can be refused. The socket is bound
/// and listening under a temporary name in the same directory first and then renamed into
/// place, so the path appears only when a connect to it succeeds. The path is removed when
/// this is dropped, unless [`ServingSocket::keep_path`] was called.
pub struct ServingSocket {
    /// Where the frontends come from.
    pub frontends: Frontends,
    /// The path this process put the socket at.
    path: Option<PathBuf>,
}

/// Longest path a Unix socket address holds (`sun_path`, less its NUL).
const SUN_PATH_MAX: usize = 107;

impl ServingSocket {
    /// Listens at `path`, replacing what is there.
    pub fn listen(path: &Path) -> io::Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let listening = |listener| ServingSocket {
            frontends: Frontends::Listening(listener),
            path: Some(path.to_owned()),
        };
        if tmp.as_os_str().len() > SUN_PATH_MAX {
            // No room for a temporary name: bind in place (listening follows at once).
            return Ok(listening(
                Listener::new(path, true).map_err(vhost_io_error)?,
            ));
        }
        let listener = Listener::new(&tmp, true).map_err(vhost_io_error)?;
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(listening(listener))
    }

    /// Takes over the descriptor `fd` a launcher passed (`--fd`), after checking what it is: a
    /// listening Unix stream socket serves frontends one after another; a connected one (what
    /// libvirt passes: one end of a socket pair whose other end QEMU gets) serves that one
    /// frontend, and serving ends when it hangs up.
    pub fn inherited(fd: RawFd) -> Result<Self, SocketError> {
        if fd < 0 {
            return Err(SocketError::Negative(fd));
        }
        // SAFETY: fstat only writes into `st`, a local of the right type; a bad fd gives EBADF.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `fd` is a plain integer the kernel checks.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(SocketError::NotOpen(fd, io::Error::last_os_error()));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(SocketError::NotSocket(fd));
        }
        if sockopt(fd, libc::SO_DOMAIN)? != libc::AF_UNIX {
            return Err(SocketError::NotUnix(fd));
        }
        if sockopt(fd, libc::SO_TYPE)? != libc::SOCK_STREAM {
            return Err(SocketError::NotStream(fd));
        }
        let listening = sockopt(fd, libc::SO_ACCEPTCONN)? != 0;
        if !listening && !has_peer(fd) {
            return Err(SocketError::Unconnected(fd));
        }
        // SAFETY: FD_CLOEXEC on an open descriptor (checked above); nothing is started by
        // this process that should inherit it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        let frontends = if listening {
            // SAFETY: the fd is open and a listening Unix stream socket (checked above); it
            // was passed to this process for this purpose and nothing else in the process owns
            // it, so the listener may take it over.
            Frontends::Listening(Listener::from(unsafe { UnixListener::from_raw_fd(fd) }))
        } else {
            // SAFETY: as above, for a connected Unix stream socket.
            Frontends::Connected(Some(unsafe { UnixStream::from_raw_fd(fd) }))
        };
        Ok(ServingSocket {
            frontends,
            path: None,
        })
    }

    /// Leaves the path in place when this is dropped (the sandbox does not allow removing it).
    pub fn keep_path(&mut self) {
        self.path = None;
    }

    /// What is served, for the log.
    pub fn describe(&self) -> &'static str {
        match self.frontends {
            Frontends::Listening(_) => "a listening socket (frontends one after another)",
            Frontends::Connected(_) => "a connected socket (one frontend; exits when it leaves)",
        }
    }
}

impl Drop for ServingSocket {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// An integer socket option of `fd`.
fn sockopt(fd: RawFd, opt: libc::c_int) -> Result<libc::c_int, SocketError> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, a c_int, and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(SocketError::Query(fd, io::Error::last_os_error()));
    }
    Ok(v)
}

/// Whether the socket `fd` is connected to a peer.
fn has_peer(fd: RawFd) -> bool {
    // SAFETY: getpeername writes at most `len` bytes into `addr`, a sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above.
    unsafe {
        libc::getpeername(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) == 0
    }
}

fn vhost_io_error(e: vhost::vhost_user::Error) -> io::Error {
    match e {
        vhost::vhost_user::Error::SocketError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vhost-gpu-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_socket_path_appears_listening_replaces_a_stale_file_and_goes_when_dropped() {
        let dir = scratch_dir("listen");
        let path = dir.join("gpu.sock");
        std::fs::write(&path, b"stale").unwrap();
        let socket = ServingSocket::listen(&path).unwrap();
        // The path is the listening socket: a connect succeeds at once, and no temporary
        // name is left beside it.
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["gpu.sock"]);
        drop(socket);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_kept_socket_path_stays_after_drop() {
        let dir = scratch_dir("keep");
        let path = dir.join("gpu.sock");
        let mut socket = ServingSocket::listen(&path).unwrap();
        socket.keep_path();
        drop(socket);
        assert!(path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_socket_path_with_no_room_for_a_temporary_name_is_bound_in_place() {
        let dir = scratch_dir("long");
        let room = SUN_PATH_MAX - dir.as_os_str().len() - 1;
        let path = dir.join("s".repeat(room));
        assert_eq!(path.as_os_str().len(), SUN_PATH_MAX);
        let socket = ServingSocket::listen(&path).unwrap();
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(socket);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_socket_path_in_a_missing_directory_is_an_error() {
        let dir = scratch_dir("missing");
        assert!(ServingSocket::listen(&dir.join("no").join("gpu.sock")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_inherited_descriptor_is_told_apart() {
        // A connected pair: one frontend.
        let (a, _b) = UnixStream::pair().unwrap();
        let s = ServingSocket::inherited(a.into_raw_fd()).unwrap();
        assert!(matches!(s.frontends, Frontends::Connected(Some(_))));
        // A listening socket: frontends one after another.
        let dir = scratch_dir("inherit");
        let l = UnixListener::bind(dir.join("l.sock")).unwrap();
        let s = ServingSocket::inherited(l.into_raw_fd()).unwrap();
        assert!(matches!(s.frontends, Frontends::Listening(_)));
        std::fs::remove_dir_all(&dir).unwrap();
        // Not usable, each with its own reason.
        let file = std::fs::File::open("/dev/null").unwrap();
        let e = ServingSocket::inherited(file.as_raw_fd()).err().unwrap();
        assert!(matches!(e, SocketError::NotSocket(_)), "{e}");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = ServingSocket::inherited(udp.as_raw_fd()).err().unwrap();
        assert!(matches!(e, SocketError::NotUnix(_)), "{e}");
        let (d, _e) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let e = ServingSocket::inherited(d.as_raw_fd()).err().unwrap();
        assert!(matches!(e, SocketError::NotStream(_)), "{e}");
        // SAFETY: a fresh, unbound Unix stream socket, owned by this test.
        let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        let e = ServingSocket::inherited(raw).err().unwrap();
        assert!(matches!(e, SocketError::Unconnected(_)), "{e}");
        // SAFETY: closes the socket made above.
        unsafe { libc::close(raw) };
        let e = ServingSocket::inherited(-1).err().unwrap();
        assert!(matches!(e, SocketError::Negative(-1)), "{e}");
        let e = ServingSocket::inherited(1_000_000).err().unwrap();
        assert!(matches!(e, SocketError::NotOpen(..)), "{e}");
    }
}
