//! Tight encoding (7), as TightVNC defined it and TigerVNC, noVNC and QEMU speak it: a
//! rectangle is cut into subrectangles, each sent the cheapest way it allows:
//! - **fill**: one colour;
//! - **mono**: two colours, a bit a pixel, zlib;
//! - **indexed**: up to [`MAX_PALETTE`] colours, a byte a pixel, zlib;
//! - **JPEG** (libjpeg-turbo) for the rest when the client asked for a quality level, else
//!   **full colour**: the pixels, zlib.
//!
//! The zlib streams (four per connection, which the client keeps too) are written in order on
//! the calling thread. JPEG subrectangles have no state, and a large update's are compressed
//! on several threads at once.
//!
//! The picture is cut into bands of [`TILE`] rows and each band into [`TILE`]-pixel tiles;
//! neighbouring tiles of a band that would be sent the same way (the same fill colour, or both
//! photo-like) are joined, up to Tight's widest rectangle, [`MAX_WIDTH`].

use std::io;

use flate2::{Compress, Compression, FlushCompress};

use super::rfb::{self, PixelFormat};

/// The Tight encoding number.
pub const ENC_TIGHT: i32 = 7;
/// The client's JPEG quality (its pseudo-encoding is this plus 0..=9).
pub const ENC_QUALITY_0: i32 = -32;
/// The client's compression level (its pseudo-encoding is this plus 0..=9).
pub const ENC_COMPRESS_0: i32 = -256;

/// Tight's widest rectangle (decoders refuse wider ones).
pub const MAX_WIDTH: u32 = 2048;
/// Side of the tiles a rectangle is classified in.
pub const TILE: u32 = 64;
/// The most colours an indexed subrectangle has.
pub const MAX_PALETTE: usize = 32;
/// Below this many bytes, data goes uncompressed (Tight's rule; decoders expect it).
const MIN_TO_COMPRESS: usize = 12;
/// Photo-like pixels in one update above which JPEG work is shared between threads.
const PARALLEL_PIXELS: usize = 256 * 1024;

/// JPEG quality for the client's levels 0..=9 (TigerVNC's table).
const JPEG_QUALITY: [i32; 10] = [15, 29, 41, 42, 62, 77, 79, 86, 92, 100];

/// Errors of the encoder.
#[derive(Debug, thiserror::Error)]
pub enum TightError {
    #[error("JPEG compression: {0}")]
    Jpeg(#[from] turbojpeg::Error),
    #[error("zlib: {0}")]
    Zlib(#[from] flate2::CompressError),
    #[error("{len} bytes of pixels for a {w}x{h} rectangle")]
    Short { len: usize, w: u32, h: u32 },
}

impl From<TightError> for io::Error {
    fn from(e: TightError) -> io::Error {
        io::Error::other(e)
    }
}

/// What the client asked for: JPEG's quality level (None: lossless only) and the compression
/// level (zlib's, 0..=9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TightOptions {
    pub quality: Option<u8>,
    pub compression: u8,
}

impl Default for TightOptions {
    fn default() -> Self {
        // TigerVNC's default compression level; no JPEG unless asked.
        TightOptions {
            quality: None,
            compression: 2,
        }
    }
}

impl TightOptions {
    /// The options a SetEncodings list carries (the first of each pseudo-encoding wins).
    pub fn from_encodings(encs: &[i32]) -> TightOptions {
        let level = |base: i32| {
            encs.iter()
                .find(|&&e| (base..=base + 9).contains(&e))
                .map(|&e| (e - base) as u8)
        };
        TightOptions {
            quality: level(ENC_QUALITY_0),
            compression: level(ENC_COMPRESS_0).unwrap_or(TightOptions::default().compression),
        }
    }
}

/// How a subrectangle is sent.
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// One colour (B, G, R, X as the device has it).
    Fill(u32),
    /// Two or more colours, at most [`MAX_PALETTE`], in order of first appearance.
    Palette(Vec<u32>),
    /// More colours than a palette holds: JPEG or full colour.
    Photo,
}

/// A subrectangle, in pixels of the rectangle being encoded.
#[derive(Clone, Debug, PartialEq)]
struct Sub {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    kind: Kind,
}

/// A pixel as a key: the device's B, G, R bytes.
fn key(p: &[u8]) -> u32 {
    u32::from_le_bytes([p[0], p[1], p[2], 0])
}

/// The colours of a `w` x `h` tile at (x, y) of a `stride`-pixel-wide picture.
fn classify(px: &[u8], stride: u32, x: u32, y: u32, w: u32, h: u32) -> Kind {
    let mut colours: Vec<u32> = Vec::with_capacity(MAX_PALETTE);
    let mut last = None;
    for row in y..y + h {
        let start = ((row * stride + x) * 4) as usize;
        for p in px[start..start + (w * 4) as usize].chunks_exact(4) {
            let k = key(p);
            if last == Some(k) {
                continue;
            }
            last = Some(k);
            if !colours.contains(&k) {
                if colours.len() == MAX_PALETTE {
                    return Kind::Photo;
                }
                colours.push(k);
            }
        }
    }
    match colours.as_slice() {
        [one] => Kind::Fill(*one),
        _ => Kind::Palette(colours),
    }
}

/// Cuts a `w` x `h` picture into subrectangles: bands of [`TILE`] rows, tiles of [`TILE`]
/// pixels, neighbours of a band joined where they are sent alike.
fn split(px: &[u8], w: u32, h: u32) -> Vec<Sub> {
    let mut subs = Vec::new();
    for y in (0..h).step_by(TILE as usize) {
        let th = TILE.min(h - y);
        let mut run: Option<Sub> = None;
        for x in (0..w).step_by(TILE as usize) {
            let tw = TILE.min(w - x);
            let kind = classify(px, w, x, y, tw, th);
            if let Some(r) = run.as_mut() {
                let joins = match (&r.kind, &kind) {
                    (Kind::Fill(a), Kind::Fill(b)) => a == b,
                    (Kind::Photo, Kind::Photo) => true,
                    _ => false,
                };
                if joins && r.w + tw <= MAX_WIDTH {
                    r.w += tw;
                    continue;
                }
            }
            if let Some(r) = run.take() {
                subs.push(r);
            }
            run = Some(Sub {
                x,
                y,
                w: tw,
                h: th,
                kind,
            });
        }
        subs.extend(run);
    }
    subs
}

/// Tight's compact length: 7 bits a byte, low first, at most 3 bytes (22 bits).
fn compact_len(n: usize, out: &mut Vec<u8>) {
    debug_assert!(n < 1 << 22);
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x4000 {
        out.extend_from_slice(&[(n as u8 & 0x7f) | 0x80, (n >> 7) as u8]);
    } else {
        out.extend_from_slice(&[
            (n as u8 & 0x7f) | 0x80,
            ((n >> 7) as u8 & 0x7f) | 0x80,
            (n >> 14) as u8,
        ]);
    }
}

/// Whether pixels go as 3 bytes, R, G, B (TPIXEL): 32 bits a pixel, depth 24, 8 bits a colour.
fn packed24(fmt: &PixelFormat) -> bool {
    fmt.bits_per_pixel == 32
        && fmt.depth == 24
        && fmt.red_max == 255
        && fmt.green_max == 255
        && fmt.blue_max == 255
}

/// Appends B8G8R8X8 pixels as TPIXELs.
fn put_pixels(fmt: &PixelFormat, bgrx: &[u8], out: &mut Vec<u8>) {
    if packed24(fmt) {
        out.reserve(bgrx.len() / 4 * 3);
        for p in bgrx.chunks_exact(4) {
            out.extend_from_slice(&[p[2], p[1], p[0]]);
        }
    } else {
        fmt.convert(bgrx, out);
    }
}

/// One colour key as a TPIXEL.
fn put_key(fmt: &PixelFormat, k: u32, out: &mut Vec<u8>) {
    let b = k.to_le_bytes();
    put_pixels(fmt, &[b[0], b[1], b[2], 0], out);
}

/// The zlib streams: 0 full colour, 1 mono, 2 indexed (3 unused), as TigerVNC assigns them.
const STREAM_FULL: usize = 0;
const STREAM_MONO: usize = 1;
const STREAM_INDEXED: usize = 2;

/// A connection's Tight encoder: its zlib streams and JPEG compressors.
pub struct Tight {
    streams: [Option<(Compress, u32)>; 4],
    jpeg: Vec<turbojpeg::Compressor>,
    threads: usize,
    scratch: Vec<u8>,
}

impl Default for Tight {
    fn default() -> Self {
        Tight {
            streams: [None, None, None, None],
            jpeg: Vec::new(),
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
            scratch: Vec::new(),
        }
    }
}

impl Tight {
    /// Encodes a `w` x `h` rectangle at (x, y) of the screen from its B8G8R8X8 pixels:
    /// appends the subrectangles, each with its header, to `out`, and returns how many.
    pub fn encode(
        &mut self,
        fmt: &PixelFormat,
        opts: TightOptions,
        (x, y, w, h): (u32, u32, u32, u32),
        px: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u16, TightError> {
        if (w as usize).saturating_mul(h as usize).saturating_mul(4) > px.len() {
            return Err(TightError::Short {
                len: px.len(),
                w,
                h,
            });
        }
        let subs = split(px, w, h);
        // JPEG needs a client that takes more than 8 bits a pixel (the decoder writes RGB).
        let jpeg = opts.quality.filter(|_| fmt.bits_per_pixel >= 16);
        let jpegs = match jpeg {
            Some(q) => self.jpegs(&subs, px, w, q)?,
            None => Vec::new(),
        };
        let mut jpegs = jpegs.into_iter();
        let mut n = 0u16;
        for s in &subs {
            rfb::rect_header(out, x + s.x, y + s.y, s.w, s.h, ENC_TIGHT);
            match &s.kind {
                Kind::Fill(k) => {
                    out.push(0x80);
                    put_key(fmt, *k, out);
                }
                Kind::Palette(p) => self.palette(fmt, opts, s, p, px, w, out)?,
                Kind::Photo => match (jpeg, jpegs.next()) {
                    (Some(_), Some(data)) => {
                        out.push(0x90);
                        compact_len(data.len(), out);
                        out.extend_from_slice(&data);
                    }
                    _ => self.full_colour(fmt, opts, s, px, w, out)?,
                },
            }
            n += 1;
        }
        Ok(n)
    }

    /// The photo-like subrectangles as JPEG, in order; on several threads when there are many
    /// pixels.
    fn jpegs(
        &mut self,
        subs: &[Sub],
        px: &[u8],
        stride: u32,
        level: u8,
    ) -> Result<Vec<Vec<u8>>, TightError> {
        let photos: Vec<&Sub> = subs.iter().filter(|s| s.kind == Kind::Photo).collect();
        let pixels: usize = photos.iter().map(|s| (s.w * s.h) as usize).sum();
        let threads = if pixels >= PARALLEL_PIXELS {
            self.threads.min(photos.len()).max(1)
        } else {
            1
        };
        while self.jpeg.len() < threads {
            self.jpeg.push(turbojpeg::Compressor::new()?);
        }
        let quality = JPEG_QUALITY[usize::from(level.min(9))];
        // Chroma subsampling as TigerVNC picks it: 4:2:0 up to level 5, 4:2:2 up to 8, 4:4:4.
        let subsamp = match level {
            0..=5 => turbojpeg::Subsamp::Sub2x2,
            6..=8 => turbojpeg::Subsamp::Sub2x1,
            _ => turbojpeg::Subsamp::None,
        };
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
        let one = |c: &mut turbojpeg::Compressor, share: &[&Sub]| {
            c.set_quality(quality);
            c.set_subsamp(subsamp);
            share
                .iter()
                .map(|s| {
                    let start = ((s.y * stride + s.x) * 4) as usize;
                    let image = turbojpeg::Image {
                        pixels: &px[start..],
                        width: s.w as usize,
                        pitch: (stride * 4) as usize,
                        height: s.h as usize,
                        format: turbojpeg::PixelFormat::BGRX,
                    };
                    c.compress_to_vec(image)
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let results: Vec<Result<Vec<Vec<u8>>, turbojpeg::Error>> = if threads == 1 {
            vec![one(&mut self.jpeg[0], &shares[0])]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .jpeg
                    .iter_mut()
                    .zip(&shares)
                    .map(|(c, share)| scope.spawn(move || one(c, share)))
                    .collect();
                handles
                    .into_iter()
                    // An encoder thread that panicked (it has no other way to fail) counts
                    // as a failed compression.
                    .map(|h| h.join().unwrap_or(Err(turbojpeg::Error::Null())))
                    .collect()
            })
        };
        let mut all = Vec::new();
        for r in results {
            all.extend(r?);
        }
        Ok(all)
    }

    /// A palette subrectangle: mono (a bit a pixel, rows padded to a byte) or indexed (a byte a
    /// pixel).
    #[allow(clippy::too_many_arguments)]
    fn palette(
        &mut self,
        fmt: &PixelFormat,
        opts: TightOptions,
        s: &Sub,
        palette: &[u32],
        px: &[u8],
        stride: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), TightError> {
        let mono = palette.len() == 2;
        let stream = if mono { STREAM_MONO } else { STREAM_INDEXED };
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        let index = |k: u32| palette.iter().position(|&c| c == k).unwrap_or(0) as u8;
        for row in s.y..s.y + s.h {
            let start = ((row * stride + s.x) * 4) as usize;
            let pixels = px[start..start + (s.w * 4) as usize].chunks_exact(4);
            if mono {
                let mut bits = 0u8;
                for (i, p) in pixels.enumerate() {
                    bits |= index(key(p)) << (7 - (i % 8));
                    if i % 8 == 7 {
                        data.push(bits);
                        bits = 0;
                    }
                }
                if s.w % 8 != 0 {
                    data.push(bits);
                }
            } else {
                data.extend(pixels.map(|p| index(key(p))));
            }
        }
        let control = self.control(stream, opts.compression);
        out.extend_from_slice(&[control | 0x40, 1, (palette.len() - 1) as u8]);
        for &k in palette {
            put_key(fmt, k, out);
        }
        let r = self.compressed(stream, &data, out);
        self.scratch = data;
        r
    }

    /// A full-colour subrectangle: its pixels as TPIXELs, zlib.
    fn full_colour(
        &mut self,
        fmt: &PixelFormat,
        opts: TightOptions,
        s: &Sub,
        px: &[u8],
        stride: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), TightError> {
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        for row in s.y..s.y + s.h {
            let start = ((row * stride + s.x) * 4) as usize;
            put_pixels(fmt, &px[start..start + (s.w * 4) as usize], &mut data);
        }
        let control = self.control(STREAM_FULL, opts.compression);
        out.push(control);
        let r = self.compressed(STREAM_FULL, &data, out);
        self.scratch = data;
        r
    }

    /// The control byte's stream and reset bits for basic compression on `stream` at `level`:
    /// a stream made anew (first use, or another level) tells the client to reset its own.
    fn control(&mut self, stream: usize, level: u8) -> u8 {
        let level = u32::from(level.min(9));
        let fresh = match &self.streams[stream] {
            Some((_, l)) => *l != level,
            None => true,
        };
        let mut control = (stream as u8) << 4;
        if fresh {
            if self.streams[stream].is_some() {
                control |= 1 << stream;
            }
            self.streams[stream] = Some((Compress::new(Compression::new(level), true), level));
        }
        control
    }

    /// `data` as Tight sends it on `stream`: as it is when short, else its compact length and
    /// the stream's output up to a sync flush.
    fn compressed(
        &mut self,
        stream: usize,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TightError> {
        if data.len() < MIN_TO_COMPRESS {
            out.extend_from_slice(data);
            return Ok(());
        }
        let Some((z, _)) = self.streams[stream].as_mut() else {
            // control() made it.
            return Ok(());
        };
        let mut zbuf = Vec::with_capacity(data.len() / 2 + 64);
        let before = z.total_in();
        loop {
            let done = (z.total_in() - before) as usize;
            if zbuf.capacity() - zbuf.len() < 64 {
                zbuf.reserve(zbuf.capacity().max(4096));
            }
            z.compress_vec(&data[done..], &mut zbuf, FlushCompress::Sync)?;
            if (z.total_in() - before) as usize == data.len() && zbuf.capacity() > zbuf.len() {
                break;
            }
        }
        compact_len(zbuf.len(), out);
        out.extend_from_slice(&zbuf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let mut px = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let [r, g, b] = f(x, y);
                px.extend_from_slice(&[b, g, r, 0]);
            }
        }
        px
    }

    #[test]
    fn compact_lengths_take_one_to_three_bytes() {
        for (n, want) in [
            (0usize, vec![0u8]),
            (127, vec![127]),
            (128, vec![0x80, 1]),
            (0x3fff, vec![0xff, 0x7f]),
            (0x4000, vec![0x80, 0x80, 1]),
            ((1 << 22) - 1, vec![0xff, 0xff, 0xff]),
        ] {
            let mut v = Vec::new();
            compact_len(n, &mut v);
            assert_eq!(v, want, "{n}");
        }
    }

    #[test]
    fn options_come_from_the_pseudo_encodings() {
        assert_eq!(
            TightOptions::from_encodings(&[ENC_TIGHT, -26, -254]),
            TightOptions {
                quality: Some(6),
                compression: 2
            }
        );
        assert_eq!(
            TightOptions::from_encodings(&[ENC_TIGHT, -250]),
            TightOptions {
                quality: None,
                compression: 6
            }
        );
        assert_eq!(TightOptions::from_encodings(&[]), TightOptions::default());
    }

    #[test]
    fn tiles_are_classified_and_neighbours_joined() {
        // 200 x 70: a solid band, a two-colour stripe column, a noisy right part.
        let px = picture(200, 70, |x, y| {
            if x >= 128 {
                [(x * 7 + y * 13) as u8, (x * y) as u8, (x ^ y) as u8]
            } else if (64..128).contains(&x) {
                if x % 2 == 0 {
                    [0, 0, 0]
                } else {
                    [255, 255, 255]
                }
            } else {
                [10, 20, 30]
            }
        });
        let subs = split(&px, 200, 70);
        let kinds: Vec<(u32, u32, u32, u32, &Kind)> =
            subs.iter().map(|s| (s.x, s.y, s.w, s.h, &s.kind)).collect();
        let fill = Kind::Fill(key(&[30, 20, 10, 0]));
        let mono = Kind::Palette(vec![0, 0x00ff_ffff]);
        assert_eq!(
            kinds,
            vec![
                (0, 0, 64, 64, &fill),
                (64, 0, 64, 64, &mono),
                (128, 0, 72, 64, &Kind::Photo),
                (0, 64, 64, 6, &fill),
                (64, 64, 64, 6, &mono),
                (128, 64, 72, 6, &Kind::Photo),
            ]
        );
    }

    #[test]
    fn rectangles_stay_within_tights_widest() {
        let px = picture(4100, 1, |_, _| [1, 2, 3]);
        let subs = split(&px, 4100, 1);
        assert!(subs.iter().all(|s| s.w <= MAX_WIDTH), "{subs:?}");
        assert_eq!(subs.iter().map(|s| s.w).sum::<u32>(), 4100);
    }

    #[test]
    fn a_fill_is_one_control_byte_and_a_tpixel() {
        let mut t = Tight::default();
        let px = picture(10, 10, |_, _| [0x11, 0x22, 0x33]);
        let mut out = Vec::new();
        let n = t
            .encode(
                &PixelFormat::NATIVE,
                TightOptions::default(),
                (5, 6, 10, 10),
                &px,
                &mut out,
            )
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            out,
            [0, 5, 0, 6, 0, 10, 0, 10, 0, 0, 0, 7, 0x80, 0x11, 0x22, 0x33]
        );
    }

    #[test]
    fn streams_reset_when_the_level_changes() {
        let mut t = Tight::default();
        assert_eq!(t.control(STREAM_FULL, 2), 0x00);
        assert_eq!(t.control(STREAM_FULL, 2), 0x00);
        assert_eq!(t.control(STREAM_FULL, 6), 0x01);
        assert_eq!(t.control(STREAM_INDEXED, 6), 0x20);
        assert_eq!(t.control(STREAM_INDEXED, 1), 0x24);
    }
}
