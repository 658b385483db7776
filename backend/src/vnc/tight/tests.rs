//! The Tight encoder's unit tests, with a decoder written as TigerVNC's and noVNC's are.

use super::photo::put_gradient;
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
                    let img = turbojpeg::decompress(&b[at..at + len], turbojpeg::PixelFormat::RGB)
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
                                        let v =
                                            |rr: usize, cc: usize| i16::from(px[rr * w + cc][k]);
                                        let left = if c > 0 { v(r, c - 1) } else { 0 };
                                        let up = if r > 0 { v(r - 1, c) } else { 0 };
                                        let ul = if r > 0 && c > 0 { v(r - 1, c - 1) } else { 0 };
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
fn gradient_beats_jpeg_on_the_bench_picture_from_level_5_and_loses_to_it_on_noise() {
    let (w, h) = (1920, 1080);
    let jpeg6 = TightOptions {
        quality: Some(6),
        compression: 5,
    };
    let px = busy(w, h);
    // At compression level 2, JPEG alone (110 KB): the gradient is not tried.
    let fast = TightOptions {
        compression: 2,
        ..jpeg6
    };
    let (out, n) = encode(&mut Tight::default(), fast, (0, 0, w, h), &px);
    let mut d = Decoder::default();
    let mut pic = vec![[0u8; 3]; (w * h) as usize];
    d.decode(&out, n, &mut pic, w as usize);
    assert!(d.kinds.iter().all(|&k| k == "jpeg"), "{:?}", d.kinds);
    assert!(out.len() > 100_000, "{} bytes", out.len());
    // From level 5, the gradient is tried too: lossless and smaller.
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
