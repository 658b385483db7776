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

/// Appends the gradient filter's residuals of a `w` x `h` subrectangle at (x, y) of a
/// `stride`-pixel-wide B8G8R8X8 picture, as R, G, B bytes (TPIXELs, so only for [`packed24`]
/// clients): each component less its prediction, left + up - upleft clamped to 0..=255, with
/// neighbours outside the subrectangle taken as 0. TigerVNC's, noVNC's and TightVNC's decoders
/// undo exactly this.
fn put_gradient(px: &[u8], stride: u32, (x, y, w, h): (u32, u32, u32, u32), out: &mut Vec<u8>) {
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

/// Share of exact zero residuals from which a photo-like subrectangle is also compressed with
/// the gradient filter when the client takes JPEG; the smaller of the two is sent.
const GRADIENT_BEATS_JPEG_ZEROS: f32 = 0.4;
/// Share of small residuals from which a photo-like subrectangle goes with the gradient filter
/// rather than unfiltered, when the client takes no JPEG.
const GRADIENT_BEATS_COPY_SMALL: f32 = 0.5;

/// zlib's header, sent before the first piece of the gradient stream (deflate, 32 KiB window,
/// no dictionary; the level bits are advisory).
const ZLIB_HEADER: [u8; 2] = [0x78, 0x01];

/// How a photo-like subrectangle is sent, decided with its compression off the calling
/// thread.
enum Photo {
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
struct Plan {
    /// JPEG's quality and chroma subsampling.
    jpeg: Option<(i32, turbojpeg::Subsamp)>,
    /// The gradient filter's deflate level (the filter needs 24-bit TPIXELs).
    gradient: Option<u32>,
}

/// One encoder thread's tools, kept from update to update.
#[derive(Default)]
struct Worker {
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

/// The gradient filter's deflate level for the client's compression level. The residuals of
/// content that the filter suits are mostly zeros, which deflate's higher levels shrink to
/// half for little time (a 1080p picture's residuals: 92 KB at level 2 in 5 ms, 44 KB at
/// level 7 in 11 ms); level 9 costs three times level 7 and is not used.
fn gradient_level(compression: u8) -> u32 {
    (u32::from(compression) + 5).min(7)
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
        let plan = Plan {
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
            gradient: packed24(fmt).then(|| gradient_level(opts.compression)),
        };
        let photos = if plan.jpeg.is_some() || plan.gradient.is_some() {
            self.photos(plan, &subs, px, w)?
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

    /// How each photo-like subrectangle goes, in order; worked out on several threads when
    /// there are many pixels.
    fn photos(
        &mut self,
        plan: Plan,
        subs: &[Sub],
        px: &[u8],
        stride: u32,
    ) -> Result<Vec<Photo>, TightError> {
        let photos: Vec<&Sub> = subs.iter().filter(|s| s.kind == Kind::Photo).collect();
        let pixels: usize = photos.iter().map(|s| (s.w * s.h) as usize).sum();
        let threads = if pixels >= PARALLEL_PIXELS {
            self.threads.min(photos.len()).max(1)
        } else {
            1
        };
        while self.workers.len() < threads {
            self.workers.push(Worker::default());
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
            vec![one(&mut self.workers[0], &shares[0])]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .workers
                    .iter_mut()
                    .zip(&shares)
                    .map(|(w, share)| scope.spawn(move || one(w, share)))
                    .collect();
                handles
                    .into_iter()
                    // An encoder thread that panicked (it has no other way to fail) counts
                    // as a failed compression.
                    .map(|h| {
                        h.join()
                            .unwrap_or(Err(TightError::Jpeg(turbojpeg::Error::Null())))
                    })
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
        let zbuf = deflate_sync(z, data)?;
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

    /// A Tight decoder for 24-bit TPIXEL clients, as TigerVNC's and noVNC's work: zlib
    /// streams kept across calls, the gradient filter undone with the prediction clamped.
    #[derive(Default)]
    struct Decoder {
        z: [Option<flate2::Decompress>; 4],
        kinds: Vec<&'static str>,
    }

    impl Decoder {
        fn len(b: &[u8], at: &mut usize) -> usize {
            let mut n = 0;
            for i in 0..3 {
                let v = b[*at];
                *at += 1;
                n |= usize::from(v & if i == 2 { 0xff } else { 0x7f }) << (7 * i);
                if i < 2 && v & 0x80 == 0 {
                    break;
                }
            }
            n
        }

        fn data(&mut self, b: &[u8], at: &mut usize, stream: usize, size: usize) -> Vec<u8> {
            if size < MIN_TO_COMPRESS {
                *at += size;
                return b[*at - size..*at].to_vec();
            }
            let n = Self::len(b, at);
            let z = self.z[stream].get_or_insert_with(|| flate2::Decompress::new(true));
            let mut plain = Vec::with_capacity(size);
            z.decompress_vec(&b[*at..*at + n], &mut plain, flate2::FlushDecompress::Sync)
                .unwrap();
            *at += n;
            assert_eq!(plain.len(), size, "stream {stream}");
            plain
        }

        /// Decodes `n` rectangles of `b` into a `stride`-pixel-wide R, G, B picture.
        fn decode(&mut self, b: &[u8], n: u16, pic: &mut [[u8; 3]], stride: usize) {
            let mut at = 0;
            for _ in 0..n {
                let f = |i: usize| usize::from(u16::from_be_bytes([b[at + i], b[at + i + 1]]));
                let (x, y, w, h) = (f(0), f(2), f(4), f(6));
                assert_eq!(&b[at + 8..at + 12], &[0, 0, 0, 7]);
                at += 12;
                let control = b[at];
                at += 1;
                for i in 0..4 {
                    if control & (1 << i) != 0 {
                        self.z[i] = None;
                    }
                }
                let rgb: Vec<[u8; 3]> = match control >> 4 {
                    8 => {
                        self.kinds.push("fill");
                        at += 3;
                        vec![[b[at - 3], b[at - 2], b[at - 1]]; w * h]
                    }
                    9 => {
                        self.kinds.push("jpeg");
                        let len = Self::len(b, &mut at);
                        let img =
                            turbojpeg::decompress(&b[at..at + len], turbojpeg::PixelFormat::RGB)
                                .unwrap();
                        at += len;
                        (0..h)
                            .flat_map(|r| {
                                let row = &img.pixels[r * img.pitch..];
                                (0..w).map(move |c| [row[c * 3], row[c * 3 + 1], row[c * 3 + 2]])
                            })
                            .collect()
                    }
                    k if k < 8 => {
                        let stream = usize::from(k & 3);
                        let filter = if k & 4 != 0 {
                            at += 1;
                            b[at - 1]
                        } else {
                            0
                        };
                        match filter {
                            0 | 2 => {
                                self.kinds
                                    .push(if filter == 2 { "gradient" } else { "copy" });
                                let d = self.data(b, &mut at, stream, w * h * 3);
                                let mut px: Vec<[u8; 3]> =
                                    d.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
                                if filter == 2 {
                                    // Indices, as the decoders are written (the neighbours
                                    // are earlier pixels of the same vector).
                                    #[allow(clippy::needless_range_loop)]
                                    for i in 0..w * h {
                                        let (r, c) = (i / w, i % w);
                                        for k in 0..3 {
                                            let v = |rr: usize, cc: usize| {
                                                i16::from(px[rr * w + cc][k])
                                            };
                                            let left = if c > 0 { v(r, c - 1) } else { 0 };
                                            let up = if r > 0 { v(r - 1, c) } else { 0 };
                                            let ul =
                                                if r > 0 && c > 0 { v(r - 1, c - 1) } else { 0 };
                                            let p = (left + up - ul).clamp(0, 255) as u8;
                                            px[i][k] = px[i][k].wrapping_add(p);
                                        }
                                    }
                                }
                                px
                            }
                            1 => {
                                let colours = usize::from(b[at]) + 1;
                                at += 1;
                                let pal: Vec<[u8; 3]> = b[at..at + colours * 3]
                                    .chunks_exact(3)
                                    .map(|p| [p[0], p[1], p[2]])
                                    .collect();
                                at += colours * 3;
                                self.kinds
                                    .push(if colours == 2 { "mono" } else { "indexed" });
                                let row = if colours == 2 { w.div_ceil(8) } else { w };
                                let d = self.data(b, &mut at, stream, row * h);
                                (0..w * h)
                                    .map(|i| {
                                        let (r, c) = (i / w, i % w);
                                        let idx = if colours == 2 {
                                            (d[r * row + c / 8] >> (7 - c % 8)) & 1
                                        } else {
                                            d[r * row + c]
                                        };
                                        pal[usize::from(idx)]
                                    })
                                    .collect()
                            }
                            other => panic!("filter {other}"),
                        }
                    }
                    other => panic!("compression {other}"),
                };
                for (i, p) in rgb.into_iter().enumerate() {
                    pic[(y + i / w) * stride + x + i % w] = p;
                }
            }
            assert_eq!(at, b.len());
        }
    }

    /// The VNC bench's picture (busy mode of the guest agent): smooth in red and green, a
    /// regular pattern in blue.
    fn busy(w: u32, h: u32) -> Vec<u8> {
        picture(w, h, |x, y| {
            [(y / 5) as u8, (x / 3) as u8, (x ^ y) as u8 ^ 1]
        })
    }

    /// Pseudo-random noise (a photograph's worst case).
    fn noise(w: u32, h: u32, seed: u32) -> Vec<u8> {
        picture(w, h, |x, y| {
            let mut v = (x.wrapping_mul(0x9e37_79b9) ^ y.wrapping_mul(0x85eb_ca6b)) ^ seed;
            v ^= v >> 15;
            v = v.wrapping_mul(0x2c1b_3c6d);
            v ^= v >> 12;
            let [a, b, c, _] = v.to_le_bytes();
            [a, b, c]
        })
    }

    fn rgb(px: &[u8]) -> Vec<[u8; 3]> {
        px.chunks_exact(4).map(|p| [p[2], p[1], p[0]]).collect()
    }

    fn encode(
        t: &mut Tight,
        opts: TightOptions,
        area: (u32, u32, u32, u32),
        px: &[u8],
    ) -> (Vec<u8>, u16) {
        let mut out = Vec::new();
        let n = t
            .encode(&PixelFormat::NATIVE, opts, area, px, &mut out)
            .unwrap();
        (out, n)
    }

    #[test]
    fn smooth_content_goes_gradient_filtered_and_decodes_exactly_across_updates() {
        // Lossless: the bench's picture is smooth, so every photo-like tile takes the gradient
        // filter. Three updates share stream 3, one inflater on the client's side: each piece
        // must follow the last, the first with zlib's header.
        let (w, h) = (640, 200);
        let mut t = Tight::default();
        let mut d = Decoder::default();
        let mut pic = vec![[0u8; 3]; (w * h) as usize];
        for (i, area) in [(0, 0, w, h), (10, 20, 300, 100), (0, 0, w, h)]
            .into_iter()
            .enumerate()
        {
            let full = picture(w, h, |x, y| {
                [(y / 5) as u8, (x / 3) as u8 + i as u8, (x ^ y) as u8 ^ 1]
            });
            let (ax, ay, aw, ah) = area;
            let px: Vec<u8> = (ay..ay + ah)
                .flat_map(|r| {
                    full[((r * w + ax) * 4) as usize..((r * w + ax + aw) * 4) as usize].to_vec()
                })
                .collect();
            let (out, n) = encode(&mut t, TightOptions::default(), area, &px);
            d.decode(&out, n, &mut pic, w as usize);
            for r in ay..ay + ah {
                for c in ax..ax + aw {
                    let want = rgb(&full[((r * w + c) * 4) as usize..][..4])[0];
                    assert_eq!(pic[(r * w + c) as usize], want, "update {i} at ({c}, {r})");
                }
            }
        }
        assert!(d.kinds.contains(&"gradient"), "{:?}", d.kinds);
        assert!(!d.kinds.contains(&"copy"), "{:?}", d.kinds);
    }

    #[test]
    fn gradient_beats_jpeg_on_the_bench_picture_and_loses_to_it_on_noise() {
        let (w, h) = (1920, 1080);
        let jpeg6 = TightOptions {
            quality: Some(6),
            compression: 2,
        };
        // The bench's picture: lossless and smaller than JPEG at level 6 (110 KB).
        let px = busy(w, h);
        let (out, n) = encode(&mut Tight::default(), jpeg6, (0, 0, w, h), &px);
        let mut d = Decoder::default();
        let mut pic = vec![[0u8; 3]; (w * h) as usize];
        d.decode(&out, n, &mut pic, w as usize);
        assert!(!d.kinds.contains(&"jpeg"), "{:?}", d.kinds);
        assert_eq!(pic, rgb(&px));
        assert!(out.len() < 60_000, "{} bytes", out.len());
        // Noise: JPEG, as before.
        let px = noise(w, 256, 7);
        let (out, n) = encode(&mut Tight::default(), jpeg6, (0, 0, w, 256), &px);
        let mut d = Decoder::default();
        let mut pic = vec![[0u8; 3]; (w * 256) as usize];
        d.decode(&out, n, &mut pic, w as usize);
        assert!(d.kinds.iter().all(|&k| k == "jpeg"), "{:?}", d.kinds);
    }

    #[test]
    fn noise_goes_unfiltered_when_lossless() {
        let px = noise(300, 100, 3);
        let mut d = Decoder::default();
        let mut pic = vec![[0u8; 3]; 300 * 100];
        let (out, n) = encode(
            &mut Tight::default(),
            TightOptions::default(),
            (0, 0, 300, 100),
            &px,
        );
        d.decode(&out, n, &mut pic, 300);
        assert_eq!(pic, rgb(&px));
        assert!(d.kinds.iter().all(|&k| k == "copy"), "{:?}", d.kinds);
    }

    #[test]
    fn gradient_residuals_are_the_predictions_misses() {
        // 3 x 2: the first row predicts from the left, the first column from above, the rest
        // from left + up - upleft, clamped.
        let px = picture(3, 2, |x, y| match (x, y) {
            (0, 0) => [10, 200, 0],
            (1, 0) => [20, 250, 5],
            (2, 0) => [25, 255, 9],
            (0, 1) => [12, 100, 1],
            (1, 1) => [22, 150, 200],
            _ => [30, 0, 255],
        });
        let mut out = Vec::new();
        put_gradient(&px, 3, (0, 0, 3, 2), &mut out);
        let want: Vec<u8> = [
            [10, 200, 0],
            [10, 50, 5],
            [5, 5, 4],
            [2, 156, 1],
            // 12 + 20 - 10 = 22; 100 + 250 - 200 = 150; 1 + 5 - 0 = 6.
            [0, 0, 194],
            // 22 + 25 - 20 = 27; 150 + 255 - 250 = 155; 200 + 9 - 5 = 204.
            [3, 101, 51],
        ]
        .iter()
        .flat_map(|p| p.iter().copied())
        .collect();
        assert_eq!(out, want);
        // A clamp: 250 + 250 - 0 = 500 predicts 255.
        let px = picture(
            2,
            2,
            |x, y| if (x, y) == (0, 0) { [0; 3] } else { [250; 3] },
        );
        let mut out = Vec::new();
        put_gradient(&px, 2, (0, 0, 2, 2), &mut out);
        assert_eq!(&out[9..], &[250u8.wrapping_sub(255); 3]);
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
