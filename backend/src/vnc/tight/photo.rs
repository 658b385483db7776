//! Tight's photo-like subrectangles: JPEG, the gradient filter or the plain pixels, chosen and
//! compressed on the encoder's threads. The gradient's zlib pieces are raw deflate that ends at
//! a sync flush and refers to nothing before itself, so that each can be made on any thread,
//! or made and thrown away when JPEG is smaller, and still continue the client's stream 3.

use flate2::{Compress, Compression};

use super::{deflate_sync, packed24, Kind, Sub, TightError, TightOptions, MIN_TO_COMPRESS};
use crate::vnc::rfb::PixelFormat;

/// JPEG quality for the client's levels 0..=9 (TigerVNC's table).
const JPEG_QUALITY: [i32; 10] = [15, 29, 41, 42, 62, 77, 79, 86, 92, 100];
/// Photo-like pixels in one update above which JPEG work is shared between threads.
const PARALLEL_PIXELS: usize = 256 * 1024;

/// Appends the gradient filter's residuals of a `w` x `h` subrectangle at (x, y) of a
/// `stride`-pixel-wide B8G8R8X8 picture, as R, G, B bytes (TPIXELs, so only for [`packed24`]
/// clients): each component less its prediction, left + up - upleft clamped to 0..=255, with
/// neighbours outside the subrectangle taken as 0. TigerVNC's, noVNC's and TightVNC's decoders
/// undo exactly this.
pub(super) fn put_gradient(
    px: &[u8],
    stride: u32,
    (x, y, w, h): (u32, u32, u32, u32),
    out: &mut Vec<u8>,
) {
    let (stride, x, w) = (stride as usize * 4, x as usize * 4, w as usize * 4);
    let start = out.len();
    out.resize(start + w / 4 * 3 * h as usize, 0);
    let zeros = vec![0u8; w];
    let mut residual = vec![0u8; w];
    for (r, dst) in out[start..].chunks_exact_mut(w / 4 * 3).enumerate() {
        let row = y as usize + r;
        let this = &px[row * stride + x..][..w];
        let up = if r == 0 {
            &zeros[..]
        } else {
            &px[(row - 1) * stride + x..][..w]
        };
        gradient_row(this, up, &mut residual);
        for (d, p) in dst.chunks_exact_mut(3).zip(residual.chunks_exact(4)) {
            // B, G, R in the device's pixel; R, G, B on the wire.
            d.copy_from_slice(&[p[2], p[1], p[0]]);
        }
    }
}

/// One row's residuals, byte by byte of the B8G8R8X8 pixels (the X bytes are ignored later):
/// `this` less the prediction from its left neighbour, `up` and up's left neighbour. Written
/// without branches in the loop so that the compiler can vectorise it.
fn gradient_row(this: &[u8], up: &[u8], residual: &mut [u8]) {
    let n = this.len().min(up.len()).min(residual.len());
    let (this, up, residual) = (&this[..n], &up[..n], &mut residual[..n]);
    let first = n.min(4);
    for i in 0..first {
        residual[i] = this[i].wrapping_sub(up[i]);
    }
    for i in first..n {
        let predicted =
            (i16::from(this[i - 4]) + i16::from(up[i]) - i16::from(up[i - 4])).clamp(0, 255) as u8;
        residual[i] = this[i].wrapping_sub(predicted);
    }
}

/// How the gradient filter's residuals of a photo-like subrectangle look, from a sample of
/// its rows: the share of exact zeros (flat or evenly shaded content, which deflate shrinks
/// far below JPEG) and of small values, within +-[`SMALL`] (smooth content, photographs, which
/// deflate shrinks below the unfiltered pixels).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Smoothness {
    zero: f32,
    small: f32,
}

/// A residual counted as small.
const SMALL: u8 = 8;
/// Rows of a subrectangle sampled for its [`Smoothness`]: one in this many.
const SAMPLE_EVERY: u32 = 8;

fn smoothness(px: &[u8], stride: u32, s: &Sub) -> Smoothness {
    let (stride4, x4, w4) = (stride as usize * 4, s.x as usize * 4, s.w as usize * 4);
    let zeros = vec![0u8; w4];
    let mut residual = vec![0u8; w4];
    let (mut zero, mut small, mut all) = (0usize, 0usize, 0usize);
    for row in (s.y..s.y + s.h).step_by(SAMPLE_EVERY as usize) {
        let row = row as usize;
        let this = &px[row * stride4 + x4..][..w4];
        let up = if row == s.y as usize {
            &zeros[..]
        } else {
            &px[(row - 1) * stride4 + x4..][..w4]
        };
        gradient_row(this, up, &mut residual);
        for p in residual.chunks_exact(4) {
            for &v in &p[..3] {
                zero += usize::from(v == 0);
                small += usize::from(v.wrapping_add(SMALL) <= 2 * SMALL);
            }
        }
        all += w4 / 4 * 3;
    }
    let all = all.max(1) as f32;
    Smoothness {
        zero: zero as f32 / all,
        small: small as f32 / all,
    }
}

/// Share of exact zero residuals from which a photo-like subrectangle is also compressed with
/// the gradient filter when the client takes JPEG; the smaller of the two is sent.
const GRADIENT_BEATS_JPEG_ZEROS: f32 = 0.4;
/// The client's compression level from which the gradient filter is also tried when it takes
/// JPEG.
const GRADIENT_WITH_JPEG_FROM: u8 = 5;
/// Share of small residuals from which a photo-like subrectangle goes with the gradient filter
/// rather than unfiltered, when the client takes no JPEG.
const GRADIENT_BEATS_COPY_SMALL: f32 = 0.5;

/// How a photo-like subrectangle is sent, decided with its compression off the calling
/// thread.
pub(super) enum Photo {
    /// A JPEG image.
    Jpeg(Vec<u8>),
    /// Gradient-filtered R, G, B residuals: raw deflate ending at a sync flush, which refers
    /// to nothing before itself and so may follow anything on stream 3 (`compressed`), or the
    /// residuals as they are when shorter than [`MIN_TO_COMPRESS`].
    Gradient { data: Vec<u8>, compressed: bool },
    /// Full colour, unfiltered, on stream 0, written in order by the calling thread.
    Copy,
}

/// What to try for the photo-like subrectangles of one update.
#[derive(Clone, Copy)]
pub(super) struct Plan {
    /// JPEG's quality and chroma subsampling.
    jpeg: Option<(i32, turbojpeg::Subsamp)>,
    /// The gradient filter's deflate level (the filter needs 24-bit TPIXELs).
    gradient: Option<u32>,
}

/// One encoder thread's tools, kept from update to update.
#[derive(Default)]
pub(super) struct Worker {
    jpeg: Option<turbojpeg::Compressor>,
    /// Raw deflate and its level.
    deflate: Option<(Compress, u32)>,
    residuals: Vec<u8>,
}

impl Worker {
    fn photo(&mut self, plan: Plan, px: &[u8], stride: u32, s: &Sub) -> Result<Photo, TightError> {
        let smooth = plan.gradient.map(|_| smoothness(px, stride, s));
        let Some((quality, subsamp)) = plan.jpeg else {
            return match (plan.gradient, smooth) {
                (Some(level), Some(sm)) if sm.small >= GRADIENT_BEATS_COPY_SMALL => {
                    self.gradient(level, px, stride, s)
                }
                _ => Ok(Photo::Copy),
            };
        };
        let c = match &mut self.jpeg {
            Some(c) => c,
            none => none.insert(turbojpeg::Compressor::new()?),
        };
        c.set_quality(quality);
        c.set_subsamp(subsamp);
        let start = ((s.y * stride + s.x) * 4) as usize;
        let jpeg = c.compress_to_vec(turbojpeg::Image {
            pixels: &px[start..],
            width: s.w as usize,
            pitch: (stride * 4) as usize,
            height: s.h as usize,
            format: turbojpeg::PixelFormat::BGRX,
        })?;
        if let (Some(level), Some(sm)) = (plan.gradient, smooth) {
            if sm.zero >= GRADIENT_BEATS_JPEG_ZEROS {
                let g = self.gradient(level, px, stride, s)?;
                if let Photo::Gradient { data, .. } = &g {
                    // Lossless and no bigger: the gradient wins.
                    if data.len() <= jpeg.len() {
                        return Ok(g);
                    }
                }
            }
        }
        Ok(Photo::Jpeg(jpeg))
    }

    /// The subrectangle gradient-filtered, as a self-contained piece of stream 3.
    fn gradient(
        &mut self,
        level: u32,
        px: &[u8],
        stride: u32,
        s: &Sub,
    ) -> Result<Photo, TightError> {
        let mut residuals = std::mem::take(&mut self.residuals);
        residuals.clear();
        put_gradient(px, stride, (s.x, s.y, s.w, s.h), &mut residuals);
        if residuals.len() < MIN_TO_COMPRESS {
            let data = residuals.clone();
            self.residuals = residuals;
            return Ok(Photo::Gradient {
                data,
                compressed: false,
            });
        }
        let z = match &mut self.deflate {
            Some((z, l)) if *l == level => {
                z.reset();
                z
            }
            slot => {
                &mut slot
                    .insert((Compress::new(Compression::new(level), false), level))
                    .0
            }
        };
        let r = deflate_sync(z, &residuals);
        self.residuals = residuals;
        Ok(Photo::Gradient {
            data: r?,
            compressed: true,
        })
    }
}

impl Plan {
    /// What a client with this pixel format and these options can take.
    pub(super) fn new(fmt: &PixelFormat, opts: TightOptions) -> Plan {
        Plan {
            // JPEG needs a client that takes more than 8 bits a pixel (the decoder writes RGB).
            jpeg: opts
                .quality
                .filter(|_| fmt.bits_per_pixel >= 16)
                .map(|level| {
                    let level = level.min(9);
                    // Chroma subsampling as TigerVNC picks it: 4:2:0 up to level 5, 4:2:2 up to
                    // 8, then 4:4:4.
                    let subsamp = match level {
                        0..=5 => turbojpeg::Subsamp::Sub2x2,
                        6..=8 => turbojpeg::Subsamp::Sub2x1,
                        _ => turbojpeg::Subsamp::None,
                    };
                    (JPEG_QUALITY[usize::from(level)], subsamp)
                }),
            // Beside JPEG, only when the client asked for more compression than speed (at
            // level 5 and up, as TightVNC's table has it): compressing both ways costs three
            // times the CPU of JPEG alone on a smooth picture.
            gradient: (packed24(fmt)
                && (opts.quality.is_none() || opts.compression >= GRADIENT_WITH_JPEG_FROM))
                .then(|| gradient_level(opts.compression)),
        }
    }

    /// Whether any photo-like subrectangle needs the threads' work.
    pub(super) fn any(&self) -> bool {
        self.jpeg.is_some() || self.gradient.is_some()
    }
}

/// The gradient filter's deflate level for the client's compression level. The residuals of
/// content that the filter suits are mostly zeros, which deflate's higher levels shrink to
/// about half for half as much time again (the VNC bench's 1080p picture: 73 KB at level 2 in
/// 9.8 ms, 39 KB at level 7 in 15.2 ms, on one thread); level 9 adds time and saves nothing
/// more there.
fn gradient_level(compression: u8) -> u32 {
    (u32::from(compression) + 5).min(7)
}

/// How each photo-like subrectangle goes, in order; worked out on several threads when
/// there are many pixels.
pub(super) fn photos(
    workers: &mut Vec<Worker>,
    threads: usize,
    plan: Plan,
    subs: &[Sub],
    px: &[u8],
    stride: u32,
) -> Result<Vec<Photo>, TightError> {
    let photos: Vec<&Sub> = subs.iter().filter(|s| s.kind == Kind::Photo).collect();
    let pixels: usize = photos.iter().map(|s| (s.w * s.h) as usize).sum();
    let threads = if pixels >= PARALLEL_PIXELS {
        threads.min(photos.len()).max(1)
    } else {
        1
    };
    while workers.len() < threads {
        workers.push(Worker::default());
    }
    // Contiguous shares of about equal pixels, so the results stay in order.
    let per = pixels.div_ceil(threads);
    let mut shares: Vec<Vec<&Sub>> = vec![Vec::new(); threads];
    let (mut i, mut filled) = (0, 0);
    for s in photos {
        if filled >= per && i + 1 < threads {
            i += 1;
            filled = 0;
        }
        filled += (s.w * s.h) as usize;
        shares[i].push(s);
    }
    let one = |w: &mut Worker, share: &[&Sub]| {
        share
            .iter()
            .map(|s| w.photo(plan, px, stride, s))
            .collect::<Result<Vec<_>, _>>()
    };
    let results: Vec<Result<Vec<Photo>, TightError>> = if threads == 1 {
        vec![one(&mut workers[0], &shares[0])]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = workers
                .iter_mut()
                .zip(&shares)
                .map(|(w, share)| scope.spawn(move || one(w, share)))
                .collect();
            handles
                .into_iter()
                // An encoder thread that panicked fails the update with its own error,
                // and the session ends with it in the log.
                .map(|h| h.join().unwrap_or(Err(TightError::Panicked)))
                .collect()
        })
    };
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}
