//! Reading what `vhost-gpu --capture-dir` wrote: PNG files of each scanout, and screenshots
//! asked for with SIGUSR1.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Backend;

/// An RGB image.
#[derive(Clone, Debug)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Image {
    /// Decodes an 8-bit RGB PNG.
    pub fn read(path: &Path) -> Result<Image, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut r = png::Decoder::new(std::io::BufReader::new(f))
            .read_info()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r
            .next_frame(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
            return Err(format!("{}: not 8-bit RGB", path.display()));
        }
        buf.truncate(info.buffer_size());
        Ok(Image {
            width: info.width,
            height: info.height,
            rgb: buf,
        })
    }

    /// The pixel at (x, y).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.width + x) * 3) as usize;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// True when the pixel at (x, y) is within `tol` of `want` in every channel.
    pub fn near(&self, x: u32, y: u32, want: [u8; 3], tol: u8) -> bool {
        self.pixel(x, y)
            .iter()
            .zip(want)
            .all(|(&a, b)| a.abs_diff(b) <= tol)
    }
}

/// Asks the backend for its `n`-th screenshot (SIGUSR1; the backend numbers them from 1) and
/// returns the images of `scanouts`, waiting up to `timeout` for the files.
pub fn screenshot(
    backend: &Backend,
    dir: &Path,
    n: u64,
    scanouts: &[u32],
    timeout: Duration,
) -> Result<Vec<Image>, String> {
    // SAFETY: kill only sends a signal to the child process we started.
    if unsafe { libc::kill(backend.pid() as libc::pid_t, libc::SIGUSR1) } != 0 {
        return Err(format!("kill -USR1: {}", std::io::Error::last_os_error()));
    }
    let paths: Vec<PathBuf> = scanouts
        .iter()
        .map(|s| dir.join(format!("shot-{n}-scanout-{s}.png")))
        .collect();
    wait_files(&paths, timeout)?;
    paths.iter().map(|p| Image::read(p)).collect()
}

/// Waits until every file in `paths` exists.
pub fn wait_files(paths: &[PathBuf], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while let Some(p) = paths.iter().find(|p| !p.exists()) {
        if Instant::now() > deadline {
            return Err(format!("{} not written within {timeout:?}", p.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
