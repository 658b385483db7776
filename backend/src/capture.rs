//! Headless capture (`--capture-dir`): what each scanout shows, written as PNG files.
//!
//! The pictures come from [`Screens`], the host copy of each scanout that the device keeps
//! up to date from every SCANOUT and UPDATE it sends (or would send). A capture thread writes `scanout-N.png` for each scanout that changed, at most once per
//! interval (the latest picture wins), and `shot-K-scanout-N.png` for every shown scanout each
//! time the process gets SIGUSR1: a screenshot at a moment a test or a user chooses.
//! Files are written to a temporary name and renamed, so a reader never sees half a PNG.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::screens::Screens;

/// Why capture could not start or a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("encoding {0}: {1}")]
    Encode(PathBuf, png::EncodingError),
    #[error("capture thread: {0}")]
    Thread(std::io::Error),
}

/// What was last written for one scanout.
#[derive(Clone, Copy, Default)]
struct Written {
    serial: u64,
    at: Option<Instant>,
}

/// Writes the pictures of [`Screens`] as PNG files.
pub struct Capture {
    dir: PathBuf,
    interval: Duration,
    screens: Arc<Screens>,
    written: Mutex<Vec<Written>>,
}

/// The signal that asks for a screenshot.
pub const SHOT_SIGNAL: libc::c_int = libc::SIGUSR1;

/// Blocks [`SHOT_SIGNAL`] in the calling thread and every thread it starts later, so that only
/// the capture thread takes it (with `sigtimedwait`). Call first in `main`, before any thread.
pub fn block_shot_signal() {
    // SAFETY: sigemptyset/sigaddset fill a local sigset_t; pthread_sigmask only changes this
    // thread's mask (inherited by threads created afterwards). No memory is shared.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SHOT_SIGNAL);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits up to `timeout` for [`SHOT_SIGNAL`]; true when it came.
fn wait_shot_signal(timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is a local sigset_t built by sigemptyset/sigaddset; sigtimedwait reads it and
    // `ts`, and writes no siginfo (null is allowed). The signal is blocked in every thread
    // (block_shot_signal), so waiting for it here is how it is meant to be taken.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SHOT_SIGNAL);
        libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) == SHOT_SIGNAL
    }
}

impl Capture {
    /// Creates `dir` if needed and starts the capture thread, which writes changed scanouts at
    /// most once per `interval` and a screenshot on each SIGUSR1 (see [`block_shot_signal`]).
    pub fn start(
        dir: &Path,
        interval: Duration,
        screens: Arc<Screens>,
    ) -> Result<Arc<Capture>, CaptureError> {
        let c = Arc::new(Capture::new(dir, interval, screens)?);
        let worker = Arc::clone(&c);
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || worker.run())
            .map_err(CaptureError::Thread)?;
        info!(
            "capturing scanouts to {} every {:?} at most; kill -USR1 {} for a screenshot",
            dir.display(),
            interval,
            std::process::id()
        );
        Ok(c)
    }

    /// A capture with no thread: nothing is written until [`Capture::write_due`] or
    /// [`Capture::shot`] is called.
    pub fn new(
        dir: &Path,
        interval: Duration,
        screens: Arc<Screens>,
    ) -> Result<Capture, CaptureError> {
        std::fs::create_dir_all(dir).map_err(|e| CaptureError::Dir(dir.into(), e))?;
        Ok(Capture {
            dir: dir.to_path_buf(),
            interval,
            screens,
            written: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Written>> {
        // A poisoned lock means a panic elsewhere, and panics abort this process.
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of a scanout's picture: (width, height, pixels).
    fn picture(&self, i: usize) -> Option<(u32, u32, Vec<u8>)> {
        self.screens
            .with_picture(i as u32, |p| (p.width, p.height, p.pixels.clone()))
    }

    /// Writes `scanout-N.png` for each scanout that changed and was not written within the
    /// interval.
    pub fn write_due(&self) {
        let now = Instant::now();
        let serials = self.screens.serials();
        let due: Vec<usize> = {
            let mut written = self.lock();
            if written.len() < serials.len() {
                written.resize(serials.len(), Written::default());
            }
            serials
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let s = (*s)?;
                    let w = &mut written[i];
                    let ready = w.at.is_none_or(|t| now - t >= self.interval);
                    if s <= w.serial || !ready {
                        return None;
                    }
                    *w = Written {
                        serial: s,
                        at: Some(now),
                    };
                    Some(i)
                })
                .collect()
        };
        for i in due {
            let Some((w, h, px)) = self.picture(i) else {
                continue;
            };
            if let Err(e) = write_png(&self.dir.join(format!("scanout-{i}.png")), w, h, &px) {
                warn!("capture: {e}");
            }
        }
    }

    /// Writes `shot-{n}-scanout-N.png` for every scanout shown now; returns the files written.
    pub fn shot(&self, n: u64) -> Vec<PathBuf> {
        let mut written = Vec::new();
        for i in 0..self.screens.serials().len() {
            let Some((w, h, px)) = self.picture(i) else {
                continue;
            };
            let path = self.dir.join(format!("shot-{n}-scanout-{i}.png"));
            match write_png(&path, w, h, &px) {
                Ok(()) => written.push(path),
                Err(e) => warn!("capture: {e}"),
            }
        }
        written
    }

    fn run(&self) {
        let mut shots = 0u64;
        loop {
            if wait_shot_signal(self.interval) {
                shots += 1;
                let files = self.shot(shots);
                info!("capture: screenshot {shots}: {} file(s)", files.len());
            }
            self.write_due();
        }
    }
}

/// Writes B8G8R8X8 pixels as an RGB PNG, through a temporary file renamed into place.
pub fn write_png(path: &Path, width: u32, height: u32, bgrx: &[u8]) -> Result<(), CaptureError> {
    let rgb: Vec<u8> = bgrx
        .chunks_exact(4)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    let tmp = path.with_extension("png.tmp");
    let file = File::create(&tmp).map_err(|e| CaptureError::Write(tmp.clone(), e))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut w = enc
        .write_header()
        .map_err(|e| CaptureError::Encode(path.into(), e))?;
    w.write_image_data(&rgb)
        .map_err(|e| CaptureError::Encode(path.into(), e))?;
    w.finish()
        .map_err(|e| CaptureError::Encode(path.into(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| CaptureError::Write(path.into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(std::io::BufReader::new(File::open(path).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn updates_compose_and_clip_and_files_are_rate_limited() {
        let dir = std::env::temp_dir().join(format!("vhost-gpu-capture-{}", std::process::id()));
        let s = Arc::new(Screens::new());
        let c = Capture::new(&dir, Duration::from_secs(3600), Arc::clone(&s)).unwrap();
        s.scanout(1, 4, 2);
        // A 2x1 red rect (BGRX) at (3, 1): one pixel lands, one is clipped.
        s.update(1, 3, 1, 2, 1, &[0, 0, 255, 0, 0, 0, 255, 0]);
        // Rects outside, short data and unknown scanouts are ignored.
        s.update(1, 4, 0, 1, 1, &[255; 4]);
        s.update(1, 0, 0, 4, 2, &[255; 4]);
        s.update(7, 0, 0, 1, 1, &[255; 4]);
        c.write_due();
        let (w, h, rgb) = read(&dir.join("scanout-1.png"));
        assert_eq!((w, h), (4, 2));
        let mut want = vec![0u8; 4 * 2 * 3];
        want[21..24].copy_from_slice(&[255, 0, 0]);
        assert_eq!(rgb, want);
        // Within the interval a change is not written again; a shot is.
        s.update(1, 0, 1, 1, 1, &[0, 255, 0, 0]);
        std::fs::remove_file(dir.join("scanout-1.png")).unwrap();
        c.write_due();
        assert!(!dir.join("scanout-1.png").exists());
        assert_eq!(c.shot(1), vec![dir.join("shot-1-scanout-1.png")]);
        let (_, _, rgb) = read(&dir.join("shot-1-scanout-1.png"));
        assert_eq!(&rgb[12..15], &[0, 255, 0]);
        // A disabled scanout is not in a shot, nor one too big to keep a copy of.
        s.scanout(1, 0, 0);
        assert!(c.shot(2).is_empty());
        s.scanout(1, crate::screens::MAX_SIDE + 1, 1);
        s.update(1, 0, 0, 0, 1, &[]);
        assert!(c.shot(3).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
