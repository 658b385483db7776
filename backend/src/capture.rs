//! Headless capture (`--capture-dir`): what each scanout shows, written as PNG files.
//!
//! The device hands every SCANOUT and UPDATE it sends to the frontend (or would send, when
//! there is none) to [`Capture`], which keeps one host copy of each scanout's picture. A
//! capture thread writes `scanout-N.png` for each scanout that changed, at most once per
//! interval (the latest picture wins), and `shot-K-scanout-N.png` for every shown scanout each
//! time the process gets SIGUSR1: a screenshot at a moment a test or a user chooses.
//! Files are written to a temporary name and renamed, so a reader never sees half a PNG.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{info, warn};

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

/// One scanout's picture, B8G8R8X8 rows packed.
struct Frame {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    /// Changed since `scanout-N.png` was last written.
    dirty: bool,
    written: Option<Instant>,
}

/// The pictures of all scanouts, shared by the device threads and the capture thread.
pub struct Capture {
    dir: PathBuf,
    interval: Duration,
    frames: Mutex<Vec<Option<Frame>>>,
}

/// A handle to the process's capture, comparable so that configs stay comparable.
#[derive(Clone)]
pub struct CaptureHandle(pub Arc<Capture>);

impl PartialEq for CaptureHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for CaptureHandle {}

impl std::fmt::Debug for CaptureHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Capture({})", self.0.dir.display())
    }
}

/// Largest scanout side captured (EDID's limit is 4095): at most 64 MiB a scanout.
pub const MAX_CAPTURE_SIDE: u32 = 4096;

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
    pub fn start(dir: &Path, interval: Duration) -> Result<Arc<Capture>, CaptureError> {
        let c = Arc::new(Capture::new(dir, interval)?);
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
    pub fn new(dir: &Path, interval: Duration) -> Result<Capture, CaptureError> {
        std::fs::create_dir_all(dir).map_err(|e| CaptureError::Dir(dir.into(), e))?;
        Ok(Capture {
            dir: dir.to_path_buf(),
            interval,
            frames: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Option<Frame>>> {
        // A poisoned lock means a panic elsewhere, and panics abort this process.
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A scanout got a new size (0 x 0: disabled). The picture starts black. A scanout wider
    /// or taller than [`MAX_CAPTURE_SIDE`] is not captured: the guest picks scanout sizes (up to
    /// its biggest resource), and the copy kept here is host memory on top of it.
    pub fn scanout(&self, scanout_id: u32, width: u32, height: u32) {
        let mut frames = self.lock();
        let i = scanout_id as usize;
        if frames.len() <= i {
            frames.resize_with(i + 1, || None);
        }
        let too_big = width > MAX_CAPTURE_SIDE || height > MAX_CAPTURE_SIDE;
        if too_big {
            crate::guest_warn!("capture: scanout {scanout_id} is {width}x{height}; not captured");
        }
        frames[i] = if width == 0 || height == 0 || too_big {
            None
        } else {
            let bytes = width as usize * height as usize * 4;
            Some(Frame {
                width,
                height,
                pixels: vec![0; bytes],
                dirty: true,
                written: None,
            })
        };
    }

    /// Packed B8G8R8X8 pixels for a rectangle of a scanout; the part outside the scanout's
    /// picture (or all of it, for a scanout not set up) is ignored.
    pub fn update(&self, scanout_id: u32, x: u32, y: u32, width: u32, height: u32, data: &[u8]) {
        let mut frames = self.lock();
        let Some(Some(f)) = frames.get_mut(scanout_id as usize) else {
            return;
        };
        if width == 0 {
            return;
        }
        let (x, y) = (x as usize, y as usize);
        let (fw, fh) = (f.width as usize, f.height as usize);
        if x >= fw || y >= fh {
            return;
        }
        let w = (width as usize).min(fw - x);
        let h = (height as usize).min(fh - y);
        let src_row = width as usize * 4;
        for (row, src) in data.chunks_exact(src_row).take(h).enumerate() {
            let at = ((y + row) * fw + x) * 4;
            if let (Some(dst), Some(src)) = (f.pixels.get_mut(at..at + w * 4), src.get(..w * 4)) {
                dst.copy_from_slice(src);
            }
        }
        f.dirty = true;
    }

    /// Writes `scanout-N.png` for each scanout that changed and was not written within the
    /// interval.
    pub fn write_due(&self) {
        let now = Instant::now();
        let due: Vec<(usize, u32, u32, Vec<u8>)> = {
            let mut frames = self.lock();
            frames
                .iter_mut()
                .enumerate()
                .filter_map(|(i, f)| {
                    let f = f.as_mut()?;
                    let ready = f.written.is_none_or(|t| now - t >= self.interval);
                    if !f.dirty || !ready {
                        return None;
                    }
                    f.dirty = false;
                    f.written = Some(now);
                    Some((i, f.width, f.height, f.pixels.clone()))
                })
                .collect()
        };
        for (i, w, h, px) in due {
            if let Err(e) = write_png(&self.dir.join(format!("scanout-{i}.png")), w, h, &px) {
                warn!("capture: {e}");
            }
        }
    }

    /// Writes `shot-{n}-scanout-N.png` for every scanout shown now; returns the files written.
    pub fn shot(&self, n: u64) -> Vec<PathBuf> {
        let frames: Vec<(usize, u32, u32, Vec<u8>)> = self
            .lock()
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_ref().map(|f| (i, f.width, f.height, f.pixels.clone())))
            .collect();
        let mut written = Vec::new();
        for (i, w, h, px) in frames {
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
        let c = Capture::new(&dir, Duration::from_secs(3600)).unwrap();
        c.scanout(1, 4, 2);
        // A 2x1 red rect (BGRX) at (3, 1): one pixel lands, one is clipped.
        c.update(1, 3, 1, 2, 1, &[0, 0, 255, 0, 0, 0, 255, 0]);
        // Rects outside, short data and unknown scanouts are ignored.
        c.update(1, 4, 0, 1, 1, &[255; 4]);
        c.update(1, 0, 0, 4, 2, &[255; 4]);
        c.update(7, 0, 0, 1, 1, &[255; 4]);
        c.write_due();
        let (w, h, rgb) = read(&dir.join("scanout-1.png"));
        assert_eq!((w, h), (4, 2));
        let mut want = vec![0u8; 4 * 2 * 3];
        want[21..24].copy_from_slice(&[255, 0, 0]);
        assert_eq!(rgb, want);
        // Within the interval a change is not written again; a shot is.
        c.update(1, 0, 1, 1, 1, &[0, 255, 0, 0]);
        std::fs::remove_file(dir.join("scanout-1.png")).unwrap();
        c.write_due();
        assert!(!dir.join("scanout-1.png").exists());
        assert_eq!(c.shot(1), vec![dir.join("shot-1-scanout-1.png")]);
        let (_, _, rgb) = read(&dir.join("shot-1-scanout-1.png"));
        assert_eq!(&rgb[12..15], &[0, 255, 0]);
        // A disabled scanout is not in a shot, nor one too big to keep a copy of.
        c.scanout(1, 0, 0);
        assert!(c.shot(2).is_empty());
        c.scanout(1, MAX_CAPTURE_SIDE + 1, 1);
        c.update(1, 0, 0, 0, 1, &[]);
        assert!(c.shot(3).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
