//! `--user NAME`: when started as root, vhost-gpu becomes NAME once its socket is up, before it
//! makes its directories, probes the renderer (in a child that becomes NAME first) or serves.
//! Its supplementary groups are NAME's (`render` or `video` for a render node). Landlock and
//! seccomp confine it either way; a root process keeps capabilities that a compromised
//! renderer could still use within them, so running as root without `--user` is warned about.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

/// Why the user could not be found or become.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("--user {0}: no such user")]
    NoSuchUser(String),
    #[error("--user needs vhost-gpu to start as root")]
    NotRoot,
    #[error("--user {0}: {1} failed: {2}")]
    Call(String, &'static str, std::io::Error),
    #[error("--user {0}: root could be regained after the switch")]
    Regainable(String),
}

/// A user from the password database.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub home: PathBuf,
}

/// Looks `name` up.
pub fn lookup(name: &str) -> Result<User, PrivilegeError> {
    let cname = CString::new(name).map_err(|_| PrivilegeError::NoSuchUser(name.into()))?;
    // SAFETY: getpwnam_r fills `pw` and writes its strings into `buf`, both locals of the
    // sizes passed; `result` is set to &pw or null.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as above.
    let r = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if r != 0 || result.is_null() {
        return Err(PrivilegeError::NoSuchUser(name.into()));
    }
    // SAFETY: on success pw_dir points to a NUL-terminated string inside `buf`, alive here.
    let home = unsafe { CStr::from_ptr(pw.pw_dir) };
    Ok(User {
        name: name.into(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home: PathBuf::from(home.to_string_lossy().into_owned()),
    })
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn check(user: &User, what: &'static str, r: libc::c_int) -> Result<(), PrivilegeError> {
    if r == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::Call(
            user.name.clone(),
            what,
            std::io::Error::last_os_error(),
        ))
    }
}

/// Becomes `user` for good: its groups, its group, its user id, and checks that root cannot
/// be regained. Call while this process has one thread (setuid applies per thread in the
/// kernel; glibc signals the others, which the sandbox would not allow later).
pub fn become_user(user: &User) -> Result<(), PrivilegeError> {
    if !is_root() {
        return Err(PrivilegeError::NotRoot);
    }
    let cname = CString::new(user.name.as_str())
        .map_err(|_| PrivilegeError::NoSuchUser(user.name.clone()))?;
    // SAFETY: initgroups reads a NUL-terminated name; setresgid/setresuid take plain ids.
    unsafe {
        check(
            user,
            "initgroups",
            libc::initgroups(cname.as_ptr(), user.gid),
        )?;
        check(
            user,
            "setresgid",
            libc::setresgid(user.gid, user.gid, user.gid),
        )?;
        check(
            user,
            "setresuid",
            libc::setresuid(user.uid, user.uid, user.uid),
        )?;
        if user.uid != 0 && libc::setuid(0) == 0 {
            return Err(PrivilegeError::Regainable(user.name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up_and_missing_ones_refused() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.home.is_absolute());
        assert!(matches!(
            lookup("no-such-user-vhost-gpu"),
            Err(PrivilegeError::NoSuchUser(_))
        ));
    }
}
