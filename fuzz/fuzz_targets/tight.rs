//! The Tight encoder on pictures the guest draws: arbitrary sizes, content that is noise,
//! flat or smooth (bytes taken as steps from the left neighbour, so that the gradient filter
//! and its choice against JPEG are reached), every quality and compression level, 24-bit and
//! other pixel formats, several updates in a row on one encoder (its zlib streams carry on).
//! Each update must be made of whole subrectangles that cover the rectangle.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_gpu::vnc::rfb::PixelFormat;
use vhost_gpu::vnc::tight::{Tight, TightOptions};

fuzz_target!(|data: &[u8]| {
    let mut tight = Tight::default();
    let mut chunks = data.chunks(2048);
    for _ in 0..4 {
        let Some(c) = chunks.next() else { break };
        let [w, h, q, z, mode, rest @ ..] = c else {
            break;
        };
        let (w, h) = (u32::from(*w) % 200 + 1, u32::from(*h) % 70 + 1);
        let opts = TightOptions {
            quality: (q % 11 < 10).then_some(q % 11),
            compression: z % 10,
        };
        let mut bytes = rest.iter().copied().chain(std::iter::repeat(0));
        let mut px = vec![0u8; (w * h * 4) as usize];
        let row = w as usize * 4;
        for i in 0..px.len() {
            let b = bytes.next().unwrap_or(0);
            px[i] = match mode % 3 {
                // Noise.
                0 => b,
                // Flat: few values.
                1 => b & 0xc0,
                // Smooth: small steps from the left neighbour.
                _ if i % row >= 4 => px[i - 4].wrapping_add(b % 3),
                _ => b,
            };
        }
        let format = if mode & 0x80 != 0 {
            // 16 bits a pixel: no TPIXEL, so no gradient filter; JPEG still.
            PixelFormat {
                bits_per_pixel: 16,
                depth: 16,
                big_endian: false,
                red_max: 31,
                green_max: 63,
                blue_max: 31,
                red_shift: 11,
                green_shift: 5,
                blue_shift: 0,
            }
        } else {
            PixelFormat::NATIVE
        };
        let mut out = Vec::new();
        let n = tight
            .encode(&format, opts, (0, 0, w, h), &px, &mut out)
            .expect("Tight into a Vec");
        assert!(n >= 1 && out.len() > 12 * usize::from(n));
    }
});
