//! The VNC server's reading of a client: arbitrary bytes as a stream of RFB client messages,
//! each SetPixelFormat then used to convert and ZRLE- and Tight-encode a small picture (Tight
//! with the quality and compression levels the last SetEncodings asked for), as the server's
//! writer would for that client; each SetDesktopSize answered as the server would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_gpu::vnc::rfb::{self, ClientMessage, PixelFormat, Zrle};
use vhost_gpu::vnc::tight::{Tight, TightOptions};

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    let mut format = PixelFormat::NATIVE;
    let mut zrle = Zrle::default();
    let mut tight = Tight::default();
    let mut opts = TightOptions::default();
    // A 70 x 3 picture: two ZRLE tiles, one with two colours, one a gradient (a Tight photo
    // tile: JPEG when a quality level was asked for).
    let mut px = vec![0x20u8; 70 * 3 * 4];
    px[4] = 0x99;
    for (i, p) in px.chunks_exact_mut(4).enumerate() {
        if i % 70 >= 64 {
            p.copy_from_slice(&[(i * 37) as u8, (i * 11) as u8, (i * 5) as u8, 0]);
        }
    }
    for _ in 0..64 {
        match rfb::read_message(&mut r) {
            Ok(ClientMessage::SetPixelFormat(f)) => {
                format = f;
                let mut out = Vec::new();
                format.convert(&px, &mut out);
                assert_eq!(out.len(), 70 * 3 * usize::from(f.bits_per_pixel / 8));
                out.clear();
                zrle.encode(&format, 70, 3, &px, &mut out)
                    .expect("zlib into a Vec");
                let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
                assert_eq!(len + 4, out.len());
                out.clear();
                let n = tight
                    .encode(&format, opts, (0, 0, 70, 3), &px, &mut out)
                    .expect("Tight into a Vec");
                assert!(n >= 1 && out.len() > 12 * usize::from(n));
            }
            Ok(ClientMessage::SetEncodings(e)) => {
                assert!(e.len() <= 64);
                opts = TightOptions::from_encodings(&e);
            }
            Ok(ClientMessage::SetDesktopSize {
                width,
                height,
                screen_count,
                screens,
            }) => {
                assert!(screens.len() <= 16 && screens.len() <= usize::from(screen_count));
                // The answer a client gets (one screen at the size it asked for).
                let m = rfb::extended_desktop_size(
                    rfb::RESIZE_BY_THIS_CLIENT,
                    rfb::RESIZE_INVALID,
                    u32::from(width),
                    u32::from(height),
                );
                assert_eq!(m.len(), 4 + 12 + 4 + 16);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = format;
});
