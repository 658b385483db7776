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

// What the test guest shows (guest/init, the agent), and checks of pictures against it.

pub type Rgb = [u8; 3];
/// The agent's dumb-buffer quadrants: top-left, top-right, bottom-left, bottom-right.
pub const DUMB: [Rgb; 4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]];
/// The agent's guest blob quadrants (`guest-agent blob`).
pub const BLOB: [Rgb; 4] = [[0, 0, 255], [255, 0, 0], [0, 255, 0], [255, 255, 255]];
/// The agent's OpenGL ES quadrants, and the shader-drawn square in the middle.
pub const GL: [Rgb; 4] = [[255, 255, 0], [0, 255, 255], [255, 0, 255], [255, 255, 255]];
pub const ORANGE: Rgb = [255, 128, 0];

/// Checks the middle of each quadrant (away from the centre square) against `q`.
pub fn quadrants(img: &Image, q: [Rgb; 4], what: &str) -> Result<(), String> {
    let (w, h) = (img.width, img.height);
    let at = [
        (w / 8, h / 8),
        (w - w / 8, h / 8),
        (w / 8, h - h / 8),
        (w - w / 8, h - h / 8),
    ];
    for (i, &(x, y)) in at.iter().enumerate() {
        if !img.near(x, y, q[i], 2) {
            return Err(format!(
                "{what}: pixel ({x},{y}) is {:?}, want {:?}",
                img.pixel(x, y),
                q[i]
            ));
        }
    }
    Ok(())
}

/// Checks that `img` is `size`.
/// The agent's Vulkan picture (guest-tests/agent/src/vulkan.rs), scaled to the scanout: a
/// 128x128 image cleared to [`VK_BACK`], a centred square of half its side in [`VK_FRONT`], and
/// a triangle in [`VK_TRIANGLE`] in the top left corner (pixels with x >= 8, y >= 8 and
/// x + y <= 62), sampled at a 16x16 grid of points (nearest-pixel scaling keeps them exact;
/// at 1024x768, 15 of them fall in the triangle).
pub fn vulkan_picture(img: &Image, what: &str) -> Result<(), String> {
    const SIZE: u32 = 128;
    let (w, h) = (img.width, img.height);
    for j in 0..16 {
        for i in 0..16 {
            let (x, y) = ((2 * i + 1) * w / 32, (2 * j + 1) * h / 32);
            let (px, py) = (x * SIZE / w, y * SIZE / h);
            let inside =
                (SIZE / 4..SIZE * 3 / 4).contains(&px) && (SIZE / 4..SIZE * 3 / 4).contains(&py);
            let want = if px >= 8 && py >= 8 && px + py <= 62 {
                VK_TRIANGLE
            } else if inside {
                VK_FRONT
            } else {
                VK_BACK
            };
            if !img.near(x, y, want, 2) {
                return Err(format!(
                    "{what}: pixel ({x},{y}) is {:?}, want {want:?}",
                    img.pixel(x, y)
                ));
            }
        }
    }
    Ok(())
}

/// The Vulkan picture's clear colour, its square's and its triangle's (RGB).
pub const VK_BACK: Rgb = [0x20, 0x60, 0xc0];
pub const VK_TRIANGLE: Rgb = [0x30, 0xd0, 0x50];
pub const VK_FRONT: Rgb = [0xf0, 0xa0, 0x10];

pub fn sized(img: &Image, size: (u32, u32)) -> Result<(), String> {
    if (img.width, img.height) == size {
        Ok(())
    } else {
        Err(format!(
            "scanout is {}x{}, want {size:?}",
            img.width, img.height
        ))
    }
}

/// Checks that `img` is `size` and shows modetest's SMPTE bars: seven bars of 75% colour
/// across the top two thirds.
pub fn smpte(img: &Image, size: (u32, u32)) -> Result<(), String> {
    const BARS: [Rgb; 7] = [
        [192, 192, 192],
        [192, 192, 0],
        [0, 192, 192],
        [0, 192, 0],
        [192, 0, 192],
        [192, 0, 0],
        [0, 0, 192],
    ];
    sized(img, size)?;
    let (w, h) = size;
    for (i, &c) in BARS.iter().enumerate() {
        let x = (2 * i as u32 + 1) * w / 14;
        if !img.near(x, h / 3, c, 2) {
            return Err(format!(
                "SMPTE bar {i} at ({x},{}) is {:?}, want {c:?}",
                h / 3,
                img.pixel(x, h / 3)
            ));
        }
    }
    Ok(())
}

/// Checks that `img` is `size` and shows the agent's GLES picture: the quadrants, the right
/// way up, and the shader-drawn orange square in the middle.
pub fn gl_picture(img: &Image, size: (u32, u32)) -> Result<(), String> {
    sized(img, size)?;
    quadrants(img, GL, "GL picture")?;
    let (x, y) = (size.0 / 2, size.1 / 2);
    if !img.near(x, y, ORANGE, 2) {
        return Err(format!("centre ({x},{y}) is {:?}", img.pixel(x, y)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's picture scaled to `w` x `h` as the guest shows it (nearest pixel), with or
    /// without its triangle.
    fn vulkan_shown(w: u32, h: u32, triangle: bool) -> Image {
        let mut rgb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let (px, py) = (x * 128 / w, y * 128 / h);
                let c = if triangle && px >= 8 && py >= 8 && px + py <= 62 {
                    VK_TRIANGLE
                } else if (32..96).contains(&px) && (32..96).contains(&py) {
                    VK_FRONT
                } else {
                    VK_BACK
                };
                rgb.extend_from_slice(&c);
            }
        }
        Image {
            width: w,
            height: h,
            rgb,
        }
    }

    #[test]
    fn the_vulkan_picture_needs_its_triangle() {
        for (w, h) in [(1024, 768), (1280, 800), (640, 480)] {
            vulkan_picture(&vulkan_shown(w, h, true), "shown").unwrap();
            let e = vulkan_picture(&vulkan_shown(w, h, false), "no triangle").unwrap_err();
            assert!(e.contains("want [48, 208, 80]"), "{e}");
        }
    }
}
