//! Mesa's shader cache, as an explicit choice made before the sandbox starts.
//!
//! Mesa keeps compiled shaders on disk and makes the cache's directories the first time it
//! writes one; on a fresh host that happens while serving, inside the sandbox. So the cache
//! directory is chosen and made here, Landlock lets Mesa write beneath it (and nowhere else),
//! and where it cannot be made (libvirt's user has no home directory) caching is turned off
//! with a log line rather than left to fail later.

use std::path::{Path, PathBuf};

use log::{info, warn};

/// Mesa's variables: the cache's base directory (Mesa adds `mesa_shader_cache`), and off.
const DIR_VAR: &str = "MESA_SHADER_CACHE_DIR";
const DISABLE_VAR: &str = "MESA_SHADER_CACHE_DISABLE";

/// The default directory: $XDG_CACHE_HOME/vhost-gpu, else $HOME/.cache/vhost-gpu (absolute
/// paths only, as the XDG spec says).
pub fn default_dir() -> Option<PathBuf> {
    let abs = |v: &str| {
        std::env::var_os(v)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    abs("XDG_CACHE_HOME")
        .map(|d| d.join("vhost-gpu"))
        .or_else(|| abs("HOME").map(|h| h.join(".cache").join("vhost-gpu")))
}

/// Turns Mesa's cache off for this process.
pub fn disable() {
    // Called before any thread exists (set_var is not thread-safe).
    std::env::set_var(DISABLE_VAR, "true");
    std::env::remove_var(DIR_VAR);
}

/// Makes the cache directory `choice` (None: `default`; "off": none) and points Mesa at it;
/// returns it, or None with caching off. Call before any thread exists, as the user that will
/// write to it.
pub fn prepare(choice: Option<&Path>, default: Option<PathBuf>) -> Option<PathBuf> {
    if choice == Some(Path::new("off")) {
        info!("shader cache: off (--shader-cache off)");
        disable();
        return None;
    }
    let Some(dir) = choice.map(Path::to_path_buf).or(default) else {
        warn!("shader cache: off: no home directory (neither XDG_CACHE_HOME nor HOME is an absolute path; give --shader-cache DIR)");
        disable();
        return None;
    };
    // A directory that is there already may still not be this user's to write in (libvirt's
    // user started with root's HOME, say): then Mesa would fail on every write, unseen.
    let usable = std::fs::create_dir_all(&dir).and_then(|()| writable(&dir));
    if let Err(e) = usable {
        warn!(
            "shader cache: off: cannot use {}: {e} (give --shader-cache DIR, or off)",
            dir.display()
        );
        disable();
        return None;
    }
    info!("shader cache: {}", dir.display());
    std::env::set_var(DIR_VAR, &dir);
    std::env::remove_var(DISABLE_VAR);
    Some(dir)
}

/// Whether this process may make files in `dir`.
fn writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: access reads a NUL-terminated path and takes plain flags.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
