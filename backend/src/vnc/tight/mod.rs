//! Tight encoding (7), as TightVNC defined it and TigerVNC, noVNC and QEMU speak it: a
//! rectangle is cut into subrectangles, each sent the cheapest way it allows:
//! - **fill**: one colour;
//! - **mono**: two colours, a bit a pixel, zlib;
//! - **indexed**: up to [`MAX_PALETTE`] colours, a byte a pixel, zlib;
//! - for the rest, photo-like (`photo.rs`): **JPEG** (libjpeg-turbo) when the client asked for
//!   a quality level; the **gradient filter** (each colour less its prediction from the left,
//!   upper and upper-left neighbours, zlib) when the content is smooth, in place of JPEG when
//!   that is smaller, in place of the plain pixels when there is no JPEG; else **full
//!   colour**: the pixels, zlib.
//!
//! The zlib streams (four per connection, which the client keeps too) are written in order on
//! the calling thread, except the gradient's: its pieces each refer only to themselves, so
//! they, like JPEG images, are compressed on several threads at once for a large update.
//!
//! The picture is cut into bands of [`TILE`] rows and each band into [`TILE`]-pixel tiles;
//! neighbouring tiles of a band that would be sent the same way (the same fill colour, or both
//! photo-like) are joined, up to Tight's widest rectangle, [`MAX_WIDTH`].

use std::io;

use flate2::{Compress, Compression, FlushCompress};

use super::rfb::{self, PixelFormat};

mod photo;
#[cfg(test)]
mod tests;

use photo::{Photo, Plan, Worker};

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

/// Errors of the encoder.
#[derive(Debug, thiserror::Error)]
pub enum TightError {
    #[error("JPEG compression: {0}")]
    Jpeg(#[from] turbojpeg::Error),
    #[error("zlib: {0}")]
    Zlib(#[from] flate2::CompressError),
    #[error("{len} bytes of pixels for a {w}x{h} rectangle")]
    Short { len: usize, w: u32, h: u32 },
    #[error("an encoder thread panicked")]
    Panicked,
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
    /// More colours than a palette holds: JPEG, gradient-filtered or full colour.
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

/// The zlib streams: 0 full colour, 1 mono, 2 indexed, as TigerVNC assigns them, and 3 the
/// gradient filter's, as TightVNC and QEMU assign it.
const STREAM_FULL: usize = 0;
const STREAM_MONO: usize = 1;
const STREAM_INDEXED: usize = 2;
const STREAM_GRADIENT: usize = 3;

/// zlib's header, sent before the first piece of the gradient stream (deflate, 32 KiB window,
/// no dictionary; the level bits are advisory).
const ZLIB_HEADER: [u8; 2] = [0x78, 0x01];

/// `data` through `z` up to a sync flush (a whole number of bytes; nothing ends the stream).
fn deflate_sync(z: &mut Compress, data: &[u8]) -> Result<Vec<u8>, TightError> {
    let mut zbuf = Vec::with_capacity(data.len() / 2 + 64);
    let before = z.total_in();
    loop {
        let done = (z.total_in() - before) as usize;
        if zbuf.capacity() - zbuf.len() < 64 {
            zbuf.reserve(zbuf.capacity().max(4096));
        }
        z.compress_vec(&data[done..], &mut zbuf, FlushCompress::Sync)?;
        if (z.total_in() - before) as usize == data.len() && zbuf.capacity() > zbuf.len() {
            return Ok(zbuf);
        }
    }
}

/// How many subrectangles a connection's Tight encoder sent each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub fill: u64,
    pub mono: u64,
    pub indexed: u64,
    pub full_colour: u64,
    pub gradient: u64,
    pub jpeg: u64,
}

impl Sent {
    pub fn total(&self) -> u64 {
        self.fill + self.mono + self.indexed + self.full_colour + self.gradient + self.jpeg
    }
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} fill, {} mono, {} indexed, {} full-colour, {} gradient and {} JPEG subrectangles",
            self.fill, self.mono, self.indexed, self.full_colour, self.gradient, self.jpeg
        )
    }
}

/// A connection's Tight encoder: its zlib streams and its encoder threads' tools.
pub struct Tight {
    sent: Sent,
    streams: [Option<(Compress, u32)>; 4],
    /// Whether stream 3 has begun (its zlib header sent).
    gradient_begun: bool,
    workers: Vec<Worker>,
    threads: usize,
    scratch: Vec<u8>,
}

impl Default for Tight {
    fn default() -> Self {
        Tight {
            sent: Sent::default(),
            streams: [None, None, None, None],
            gradient_begun: false,
            workers: Vec::new(),
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
            scratch: Vec::new(),
        }
    }
}

impl Tight {
    /// What was sent so far.
    pub fn sent(&self) -> Sent {
        self.sent
    }

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
        let plan = Plan::new(fmt, opts);
        let photos = if plan.any() {
            photo::photos(&mut self.workers, self.threads, plan, &subs, px, w)?
        } else {
            Vec::new()
        };
        let mut photos = photos.into_iter();
        let mut n = 0u16;
        for s in &subs {
            rfb::rect_header(out, x + s.x, y + s.y, s.w, s.h, ENC_TIGHT);
            match &s.kind {
                Kind::Fill(k) => {
                    self.sent.fill += 1;
                    out.push(0x80);
                    put_key(fmt, *k, out);
                }
                Kind::Palette(p) => {
                    if p.len() == 2 {
                        self.sent.mono += 1;
                    } else {
                        self.sent.indexed += 1;
                    }
                    self.palette(fmt, opts, s, p, px, w, out)?
                }
                Kind::Photo => match photos.next() {
                    Some(Photo::Jpeg(data)) => {
                        self.sent.jpeg += 1;
                        out.push(0x90);
                        compact_len(data.len(), out);
                        out.extend_from_slice(&data);
                    }
                    Some(Photo::Gradient { data, compressed }) => {
                        // Stream 3, explicit filter: the gradient.
                        self.sent.gradient += 1;
                        out.extend_from_slice(&[((STREAM_GRADIENT as u8) << 4) | 0x40, 2]);
                        if !compressed {
                            out.extend_from_slice(&data);
                        } else if self.gradient_begun {
                            compact_len(data.len(), out);
                            out.extend_from_slice(&data);
                        } else {
                            self.gradient_begun = true;
                            compact_len(ZLIB_HEADER.len() + data.len(), out);
                            out.extend_from_slice(&ZLIB_HEADER);
                            out.extend_from_slice(&data);
                        }
                    }
                    Some(Photo::Copy) | None => {
                        self.sent.full_colour += 1;
                        self.full_colour(fmt, opts, s, px, w, out)?
                    }
                },
            }
            n += 1;
        }
        Ok(n)
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
        let zbuf = deflate_sync(z, data)?;
        compact_len(zbuf.len(), out);
        out.extend_from_slice(&zbuf);
        Ok(())
    }
}
