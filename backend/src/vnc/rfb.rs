//! The RFB protocol's wire formats (RFC 6143): pixel formats, the encodings we send (Raw,
//! ZRLE, and the DesktopSize and Cursor pseudo-encodings), and the client's messages.

use std::io::{self, Read, Write};

use flate2::{Compress, Compression, FlushCompress};

/// Encodings and pseudo-encodings (RFC 6143 section 7.7, 7.8).
pub const ENC_RAW: i32 = 0;
pub const ENC_ZRLE: i32 = 16;
pub const ENC_CURSOR: i32 = -239;
pub const ENC_DESKTOP_SIZE: i32 = -223;
/// The client takes continuous updates (EnableContinuousUpdates, TigerVNC's extension).
pub const ENC_CONTINUOUS_UPDATES: i32 = -313;
/// The client takes Fence messages.
pub const ENC_FENCE: i32 = -312;
/// Server message: EndOfContinuousUpdates (also says the server has the extension).
pub const MSG_END_OF_CONTINUOUS_UPDATES: u8 = 150;
/// Message type of Fence, both ways.
pub const MSG_FENCE: u8 = 248;
/// Fence flags.
pub const FENCE_BLOCK_BEFORE: u32 = 1;
pub const FENCE_BLOCK_AFTER: u32 = 2;
pub const FENCE_SYNC_NEXT: u32 = 4;
pub const FENCE_REQUEST: u32 = 1 << 31;
/// The longest fence payload.
pub const MAX_FENCE_PAYLOAD: usize = 64;
/// ExtendedDesktopSize: the client takes screen layouts and may ask for a size
/// (SetDesktopSize).
pub const ENC_EXTENDED_DESKTOP_SIZE: i32 = -308;
/// Client message: SetDesktopSize.
pub const MSG_SET_DESKTOP_SIZE: u8 = 251;
/// ExtendedDesktopSize reasons (the rectangle's x): the server changed it, this client asked,
/// another client asked.
pub const RESIZE_BY_SERVER: u32 = 0;
pub const RESIZE_BY_THIS_CLIENT: u32 = 1;
pub const RESIZE_BY_OTHER_CLIENT: u32 = 2;
/// ExtendedDesktopSize results (the rectangle's y).
pub const RESIZE_OK: u32 = 0;
pub const RESIZE_PROHIBITED: u32 = 1;
pub const RESIZE_OUT_OF_RESOURCES: u32 = 2;
pub const RESIZE_INVALID: u32 = 3;
/// Screens of a SetDesktopSize that are kept (the rest are read and dropped).
const MAX_SCREENS: usize = 16;
/// The id of the one screen this server reports.
pub const SCREEN_ID: u32 = 0;

/// Most bytes of ClientCutText we read (and drop) before closing the connection.
pub const MAX_CUT_TEXT: u32 = 1 << 20;

/// Why a client's message was refused.
#[derive(Debug, thiserror::Error)]
pub enum RfbError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("client sent message type {0}, which this server does not know")]
    UnknownMessage(u8),
    #[error("client asked for a pixel format this server does not send: {0}")]
    PixelFormat(&'static str),
    #[error("client cut text of {0} bytes (most {MAX_CUT_TEXT})")]
    CutText(u32),
    #[error("client fence with {0} bytes of payload (most {MAX_FENCE_PAYLOAD})")]
    Fence(usize),
}

/// A client's pixel format (RFC 6143 section 7.4). Only true colour is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelFormat {
    pub bits_per_pixel: u8,
    pub depth: u8,
    pub big_endian: bool,
    pub red_max: u16,
    pub green_max: u16,
    pub blue_max: u16,
    pub red_shift: u8,
    pub green_shift: u8,
    pub blue_shift: u8,
}

impl PixelFormat {
    /// What the server offers: 32 bits, depth 24, little endian, X8R8G8B8 (the device's
    /// B8G8R8X8 bytes as they are).
    pub const NATIVE: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// The 16 bytes of a PIXEL_FORMAT.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = self.big_endian as u8;
        b[3] = 1;
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// Parses and checks a client's PIXEL_FORMAT.
    pub fn parse(b: &[u8; 16]) -> Result<PixelFormat, RfbError> {
        let f = PixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        };
        if b[3] == 0 {
            return Err(RfbError::PixelFormat(
                "colour maps (only true colour is sent)",
            ));
        }
        if ![8, 16, 32].contains(&f.bits_per_pixel) {
            return Err(RfbError::PixelFormat("bits per pixel other than 8, 16, 32"));
        }
        let fits = |max: u16, shift: u8| {
            u32::from(shift) < u32::from(f.bits_per_pixel)
                && (u64::from(max) << shift) < (1u64 << f.bits_per_pixel)
        };
        if !fits(f.red_max, f.red_shift)
            || !fits(f.green_max, f.green_shift)
            || !fits(f.blue_max, f.blue_shift)
        {
            return Err(RfbError::PixelFormat("a colour outside the pixel"));
        }
        Ok(f)
    }

    fn bytes(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    /// The pixel value for a device pixel (B, G, R, X bytes).
    fn value(&self, p: &[u8]) -> u32 {
        let c = |v: u8, max: u16, shift: u8| ((u32::from(v) * u32::from(max) + 127) / 255) << shift;
        c(p[2], self.red_max, self.red_shift)
            | c(p[1], self.green_max, self.green_shift)
            | c(p[0], self.blue_max, self.blue_shift)
    }

    fn put(&self, v: u32, n: usize, out: &mut Vec<u8>) {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        // `n` of the value's bytes: the low ones, in the client's order.
        if self.big_endian {
            out.extend_from_slice(&b[4 - n..]);
        } else {
            out.extend_from_slice(&b[..n]);
        }
    }

    /// Appends device pixels (B8G8R8X8) in this format.
    pub fn convert(&self, bgrx: &[u8], out: &mut Vec<u8>) {
        if *self == Self::NATIVE {
            out.extend_from_slice(bgrx);
            return;
        }
        let n = self.bytes();
        out.reserve(bgrx.len() / 4 * n);
        for p in bgrx.chunks_exact(4) {
            self.put(self.value(p), n, out);
        }
    }

    /// ZRLE's compressed pixel: 3 bytes where the colours fit in 3 of a 32-bit pixel's bytes
    /// (which 3, and in which order, per RFC 6143 section 7.7.6); else the whole pixel.
    fn cpixel(&self) -> CPixel {
        if *self == Self::NATIVE {
            return CPixel::Native;
        }
        if self.bits_per_pixel != 32 || self.depth > 24 {
            return CPixel::Whole;
        }
        let all = (u32::from(self.red_max) << self.red_shift)
            | (u32::from(self.green_max) << self.green_shift)
            | (u32::from(self.blue_max) << self.blue_shift);
        let low = all & 0xff00_0000 == 0;
        let high = all & 0xff == 0;
        match (low, high, self.big_endian) {
            (true, _, false) => CPixel::Bytes(0),
            (true, _, true) => CPixel::Bytes(1),
            (false, true, false) => CPixel::Bytes(1),
            (false, true, true) => CPixel::Bytes(0),
            _ => CPixel::Whole,
        }
    }

    fn put_cpixel(&self, cp: CPixel, p: &[u8], out: &mut Vec<u8>) {
        if let CPixel::Native = cp {
            out.extend_from_slice(&p[..3]);
            return;
        }
        let v = self.value(p);
        match cp {
            CPixel::Whole => self.put(v, self.bytes(), out),
            CPixel::Native => {}
            CPixel::Bytes(from) => {
                let b = if self.big_endian {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                out.extend_from_slice(&b[from..from + 3]);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum CPixel {
    /// [`PixelFormat::NATIVE`]: the device's B, G, R bytes as they are.
    Native,
    Whole,
    /// Three bytes of the pixel starting at this byte.
    Bytes(usize),
}

/// A rectangle header in a FramebufferUpdate.
pub fn rect_header(out: &mut Vec<u8>, x: u32, y: u32, w: u32, h: u32, encoding: i32) {
    for v in [x, y, w, h] {
        out.extend_from_slice(&(v.min(0xffff) as u16).to_be_bytes());
    }
    out.extend_from_slice(&encoding.to_be_bytes());
}

/// A FramebufferUpdate header for `n` rectangles.
pub fn update_header(out: &mut Vec<u8>, n: u16) {
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&n.to_be_bytes());
}

/// The Cursor pseudo-encoding's body for a 64x64 B8G8R8A8 image: its pixels, then a bitmask
/// of the pixels shown (alpha at least half).
pub fn cursor_body(fmt: &PixelFormat, bgra: &[u8], width: u32, height: u32, out: &mut Vec<u8>) {
    fmt.convert(bgra, out);
    let row = (width as usize).div_ceil(8);
    for y in 0..height as usize {
        let mut mask = vec![0u8; row];
        for x in 0..width as usize {
            let a = bgra
                .get((y * width as usize + x) * 4 + 3)
                .copied()
                .unwrap_or(0);
            if a >= 128 {
                mask[x / 8] |= 0x80 >> (x % 8);
            }
        }
        out.extend_from_slice(&mask);
    }
}

/// ZRLE's zlib stream: one per connection, as the encoding requires.
pub struct Zrle {
    z: Compress,
    tile: Vec<u8>,
}

impl Default for Zrle {
    fn default() -> Self {
        Zrle {
            z: Compress::new(Compression::fast(), true),
            tile: Vec::new(),
        }
    }
}

/// ZRLE tile side.
const TILE: usize = 64;

impl Zrle {
    /// Appends a ZRLE rectangle's body (length, then zlib data) for `width` x `height`
    /// packed B8G8R8X8 pixels. Each 64x64 tile is sent solid when it has one colour, else raw;
    /// zlib does the rest.
    pub fn encode(
        &mut self,
        fmt: &PixelFormat,
        width: u32,
        height: u32,
        bgrx: &[u8],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let cp = fmt.cpixel();
        let (w, h) = (width as usize, height as usize);
        self.tile.clear();
        for ty in (0..h).step_by(TILE) {
            for tx in (0..w).step_by(TILE) {
                let (tw, th) = ((w - tx).min(TILE), (h - ty).min(TILE));
                let row = |y: usize| {
                    let at = ((ty + y) * w + tx) * 4;
                    bgrx.get(at..at + tw * 4).unwrap_or(&[])
                };
                let first = row(0).get(..4).unwrap_or(&[0, 0, 0, 0]);
                let solid = (0..th).all(|y| row(y).chunks_exact(4).all(|p| p == first));
                if solid {
                    self.tile.push(1);
                    fmt.put_cpixel(cp, first, &mut self.tile);
                } else {
                    self.tile.push(0);
                    for y in 0..th {
                        if let CPixel::Native = cp {
                            self.tile
                                .extend(row(y).chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]));
                        } else {
                            for p in row(y).chunks_exact(4) {
                                fmt.put_cpixel(cp, p, &mut self.tile);
                            }
                        }
                    }
                }
            }
        }
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        out.reserve(self.tile.len() / 2 + 64);
        let mut input: &[u8] = &self.tile;
        loop {
            let before_in = self.z.total_in();
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(4096));
            }
            self.z
                .compress_vec(input, out, FlushCompress::Sync)
                .map_err(io::Error::other)?;
            let used = (self.z.total_in() - before_in) as usize;
            input = input.get(used..).unwrap_or(&[]);
            // Done when all input is in and zlib left room (the sync flush is complete).
            if input.is_empty() && out.capacity() - out.len() >= 64 {
                break;
            }
        }
        let len = (out.len() - start) as u32;
        out[len_at..start].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }
}

/// A message from the client (RFC 6143 section 7.5).
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    SetPixelFormat(PixelFormat),
    SetEncodings(Vec<i32>),
    UpdateRequest {
        incremental: bool,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    },
    Key {
        down: bool,
        keysym: u32,
    },
    Pointer {
        buttons: u8,
        x: u16,
        y: u16,
    },
    CutText,
    /// TigerVNC's EnableContinuousUpdates: updates of the area without requests, or stop.
    EnableContinuousUpdates {
        enable: bool,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    },
    /// A Fence: flags and up to 64 bytes the answer echoes.
    Fence {
        flags: u32,
        payload: Vec<u8>,
    },
    /// SetDesktopSize: the size the client wants and its screen layout (at most 16 screens
    /// kept; `screen_count` says how many it sent).
    SetDesktopSize {
        width: u16,
        height: u16,
        screen_count: u8,
        screens: Vec<Screen>,
    },
}

/// One screen of an ExtendedDesktopSize layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Screen {
    pub id: u32,
    pub x: u16,
    pub y: u16,
    pub width: u16,
    pub height: u16,
    pub flags: u32,
}

/// A FramebufferUpdate with one ExtendedDesktopSize rectangle: `reason`, `status`, the size,
/// and one screen covering it.
pub fn extended_desktop_size(reason: u32, status: u32, width: u32, height: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(4 + 12 + 4 + 16);
    update_header(&mut m, 1);
    extended_desktop_size_rect(&mut m, reason, status, width, height);
    m
}

/// An ExtendedDesktopSize rectangle (header and body) for one screen of `width` x `height`.
pub fn extended_desktop_size_rect(
    m: &mut Vec<u8>,
    reason: u32,
    status: u32,
    width: u32,
    height: u32,
) {
    rect_header(m, reason, status, width, height, ENC_EXTENDED_DESKTOP_SIZE);
    m.extend_from_slice(&[1, 0, 0, 0]);
    m.extend_from_slice(&SCREEN_ID.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&(width.min(u32::from(u16::MAX)) as u16).to_be_bytes());
    m.extend_from_slice(&(height.min(u32::from(u16::MAX)) as u16).to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
}

/// Most encodings in one SetEncodings that are kept (the rest are read and dropped).
const MAX_ENCODINGS: usize = 64;

fn read_n<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

/// Reads one client message; an unknown type or a bad field ends the connection.
pub fn read_message(r: &mut impl Read) -> Result<ClientMessage, RfbError> {
    let [t] = read_n::<1>(r)?;
    Ok(match t {
        0 => {
            let b = read_n::<19>(r)?;
            let mut pf = [0u8; 16];
            pf.copy_from_slice(&b[3..]);
            ClientMessage::SetPixelFormat(PixelFormat::parse(&pf)?)
        }
        2 => {
            let b = read_n::<3>(r)?;
            let n = u16::from_be_bytes([b[1], b[2]]) as usize;
            let mut encs = Vec::with_capacity(n.min(MAX_ENCODINGS));
            for _ in 0..n {
                let e = i32::from_be_bytes(read_n::<4>(r)?);
                if encs.len() < MAX_ENCODINGS {
                    encs.push(e);
                }
            }
            ClientMessage::SetEncodings(encs)
        }
        3 => {
            let b = read_n::<9>(r)?;
            let u = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
            ClientMessage::UpdateRequest {
                incremental: b[0] != 0,
                x: u(1),
                y: u(3),
                width: u(5),
                height: u(7),
            }
        }
        4 => {
            let b = read_n::<7>(r)?;
            ClientMessage::Key {
                down: b[0] != 0,
                keysym: u32::from_be_bytes([b[3], b[4], b[5], b[6]]),
            }
        }
        5 => {
            let b = read_n::<5>(r)?;
            ClientMessage::Pointer {
                buttons: b[0],
                x: u16::from_be_bytes([b[1], b[2]]),
                y: u16::from_be_bytes([b[3], b[4]]),
            }
        }
        6 => {
            let b = read_n::<7>(r)?;
            let len = u32::from_be_bytes([b[3], b[4], b[5], b[6]]);
            if len > MAX_CUT_TEXT {
                return Err(RfbError::CutText(len));
            }
            io::copy(&mut r.take(u64::from(len)), &mut io::sink())?;
            ClientMessage::CutText
        }
        150 => {
            let b = read_n::<9>(r)?;
            let u = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
            ClientMessage::EnableContinuousUpdates {
                enable: b[0] != 0,
                x: u(1),
                y: u(3),
                width: u(5),
                height: u(7),
            }
        }
        MSG_FENCE => {
            let b = read_n::<8>(r)?;
            let flags = u32::from_be_bytes([b[3], b[4], b[5], b[6]]);
            let len = usize::from(b[7]);
            if len > MAX_FENCE_PAYLOAD {
                return Err(RfbError::Fence(len));
            }
            let mut payload = vec![0u8; len];
            r.read_exact(&mut payload)?;
            ClientMessage::Fence { flags, payload }
        }
        MSG_SET_DESKTOP_SIZE => {
            let b = read_n::<7>(r)?;
            let width = u16::from_be_bytes([b[1], b[2]]);
            let height = u16::from_be_bytes([b[3], b[4]]);
            let screen_count = b[5];
            let mut screens = Vec::with_capacity(usize::from(screen_count).min(MAX_SCREENS));
            for _ in 0..screen_count {
                let s = read_n::<16>(r)?;
                let u16_at = |i: usize| u16::from_be_bytes([s[i], s[i + 1]]);
                if screens.len() < MAX_SCREENS {
                    screens.push(Screen {
                        id: u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
                        x: u16_at(4),
                        y: u16_at(6),
                        width: u16_at(8),
                        height: u16_at(10),
                        flags: u32::from_be_bytes([s[12], s[13], s[14], s[15]]),
                    });
                }
            }
            ClientMessage::SetDesktopSize {
                width,
                height,
                screen_count,
                screens,
            }
        }
        t => return Err(RfbError::UnknownMessage(t)),
    })
}

/// A Fence message (server to client).
pub fn fence(flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![MSG_FENCE, 0, 0, 0];
    m.extend_from_slice(&flags.to_be_bytes());
    let n = payload.len().min(MAX_FENCE_PAYLOAD);
    m.push(n as u8);
    m.extend_from_slice(&payload[..n]);
    m
}

/// Writes an RFB string (u32 length, bytes).
pub fn write_string(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u32).to_be_bytes())?;
    w.write_all(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    #[test]
    fn pixel_formats_convert_and_bad_ones_are_refused() {
        let px = [0x10, 0x80, 0xff, 0]; // B, G, R, X
        let mut out = Vec::new();
        PixelFormat::NATIVE.convert(&px, &mut out);
        assert_eq!(out, px);
        // RGB565 big endian.
        let f565 = PixelFormat {
            bits_per_pixel: 16,
            depth: 16,
            big_endian: true,
            red_max: 31,
            green_max: 63,
            blue_max: 31,
            red_shift: 11,
            green_shift: 5,
            blue_shift: 0,
        };
        out.clear();
        f565.convert(&px, &mut out);
        let v = (31u16 << 11) | (32 << 5) | 2;
        assert_eq!(out, v.to_be_bytes());
        let mut b = f565.to_bytes();
        assert_eq!(PixelFormat::parse(&b).unwrap(), f565);
        b[3] = 0;
        assert!(PixelFormat::parse(&b).is_err());
        let mut b = f565.to_bytes();
        b[0] = 24;
        assert!(PixelFormat::parse(&b).is_err());
        let mut b = f565.to_bytes();
        b[10] = 40;
        assert!(PixelFormat::parse(&b).is_err());
    }

    #[test]
    fn zrle_tiles_decompress_to_solid_and_raw_cpixels() {
        // 65 x 2: a raw 64-wide tile (two colours) and a solid 1-wide tile.
        let (w, h) = (65usize, 2usize);
        let mut px = vec![0u8; w * h * 4];
        for (i, p) in px.chunks_exact_mut(4).enumerate() {
            let x = i % w;
            p.copy_from_slice(if x == 64 || x % 2 == 0 {
                &[1, 2, 3, 0]
            } else {
                &[4, 5, 6, 0]
            });
        }
        let mut z = Zrle::default();
        let mut out = Vec::new();
        z.encode(&PixelFormat::NATIVE, w as u32, h as u32, &px, &mut out)
            .unwrap();
        let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(len, out.len() - 4);
        let mut d = Decompress::new(true);
        let mut plain = Vec::with_capacity(1 << 16);
        d.decompress_vec(&out[4..], &mut plain, FlushDecompress::Sync)
            .unwrap();
        // Tile 1: raw, 64 x 2 CPIXELs of 3 bytes (B, G, R for little-endian X8R8G8B8).
        assert_eq!(plain[0], 0);
        assert_eq!(&plain[1..4], &[1, 2, 3]);
        assert_eq!(&plain[4..7], &[4, 5, 6]);
        let t2 = 1 + 64 * 2 * 3;
        assert_eq!(&plain[t2..], &[1, 1, 2, 3]);
    }

    #[test]
    fn client_messages_parse_and_garbage_is_refused() {
        let mut m: &[u8] = &[3, 1, 0, 1, 0, 2, 0, 3, 0, 4];
        assert_eq!(
            read_message(&mut m).unwrap(),
            ClientMessage::UpdateRequest {
                incremental: true,
                x: 1,
                y: 2,
                width: 3,
                height: 4
            }
        );
        let mut m: &[u8] = &[2, 0, 0, 2, 0, 0, 0, 16, 0xff, 0xff, 0xff, 0x11];
        assert_eq!(
            read_message(&mut m).unwrap(),
            ClientMessage::SetEncodings(vec![16, -239])
        );
        let mut m: &[u8] = &[
            6, 0, 0, 0, 0, 0, 0, 2, b'h', b'i', 4, 1, 0, 0, 0, 0, 0, 0x61,
        ];
        assert_eq!(read_message(&mut m).unwrap(), ClientMessage::CutText);
        assert_eq!(
            read_message(&mut m).unwrap(),
            ClientMessage::Key {
                down: true,
                keysym: 0x61
            }
        );
        for bad in [
            &[9u8][..],
            &[6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
            &[3, 1, 0],
        ] {
            let mut m = bad;
            assert!(read_message(&mut m).is_err());
        }
    }
}
