//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use guest_tests::frontend::ConnectOptions;
use guest_tests::{Backend, BackendOptions, DisplayEvent, Gpu};

pub const WAIT: Duration = Duration::from_secs(10);

/// Backend options for the 2D renderer plus `args`.
pub fn opts_2d(args: &[&str]) -> BackendOptions {
    let mut v = vec!["--renderer".to_string(), "2d".to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    BackendOptions { args: v }
}

/// Starts the backend (2D renderer) with `args` and connects a guest with a display channel.
pub fn start(args: &[&str]) -> (Backend, Gpu) {
    let b = Backend::start(&opts_2d(args));
    let g = Gpu::connect(&b, &ConnectOptions::default());
    (b, g)
}

/// A pixel pattern: every pixel distinct, bytes B, G, R, X.
pub fn pattern(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h {
        for x in 0..w {
            v.extend_from_slice(&[
                (x as u8).wrapping_add(seed),
                y as u8,
                (x >> 8) as u8 ^ (y >> 8) as u8 ^ seed,
                0xff,
            ]);
        }
    }
    v
}

/// The bytes of rect (x, y, w, h) of a `stride`-byte-per-row image, packed.
pub fn crop(img: &[u8], stride: u32, r: (u32, u32, u32, u32)) -> Vec<u8> {
    let mut out = Vec::new();
    for row in r.1..r.1 + r.3 {
        let s = (row * stride + r.0 * 4) as usize;
        out.extend_from_slice(&img[s..s + (r.2 * 4) as usize]);
    }
    out
}

/// Waits for the next UPDATE, skipping other events.
pub fn next_update(g: &Gpu) -> (u32, u32, u32, u32, u32, Vec<u8>) {
    g.display()
        .wait_for(WAIT, |e| match e {
            DisplayEvent::Update {
                id,
                x,
                y,
                width,
                height,
                data,
            } => Some((*id, *x, *y, *width, *height, data.clone())),
            _ => None,
        })
        .expect("an UPDATE on the display channel")
}

/// Creates a w x h resource with scattered backing holding `pixels`; returns the entries.
pub fn resource_with(
    g: &mut Gpu,
    id: u32,
    fmt: u32,
    w: u32,
    h: u32,
    pixels: &[u8],
) -> Vec<(u64, u32)> {
    assert_eq!(g.create_2d(id, fmt, w, h), guest_tests::wire::OK_NODATA);
    let entries = g.scattered_backing(pixels);
    assert_eq!(g.attach_backing(id, &entries), guest_tests::wire::OK_NODATA);
    entries
}

/// Asserts the backend still serves: a full create/attach/transfer/unref round trip.
pub fn still_serves(g: &mut Gpu, b: &mut Backend) {
    assert!(b.alive(), "backend died:\n{}", b.log_text());
    let px = pattern(8, 8, 9);
    resource_with(g, 4242, guest_tests::wire::B8G8R8X8, 8, 8, &px);
    assert_eq!(
        g.transfer(4242, (0, 0, 8, 8), 32),
        guest_tests::wire::OK_NODATA
    );
    assert_eq!(g.unref(4242), guest_tests::wire::OK_NODATA);
}

/// Asserts a reply code (printing the backend's log when it is wrong), then proves the device
/// still serves.
pub fn expect_code(g: &mut Gpu, b: &mut Backend, what: &str, want: u32, got: u32) {
    assert_eq!(
        got,
        want,
        "{what}: got {got:#x}, want {want:#x}\nbackend log:\n{}",
        b.log_text()
    );
    still_serves(g, b);
}

/// A `w` x `h` pattern image laid out with `stride` bytes a row, `offset` bytes into a buffer
/// (a guest blob): (the packed image, the buffer).
pub fn strided_image(w: u32, h: u32, stride: u32, offset: u32, seed: u8) -> (Vec<u8>, Vec<u8>) {
    let img = pattern(w, h, seed);
    let mut bytes = vec![0u8; (offset + stride * h) as usize];
    for y in 0..h as usize {
        let s = offset as usize + y * stride as usize;
        bytes[s..s + (w * 4) as usize]
            .copy_from_slice(&img[y * (w * 4) as usize..][..(w * 4) as usize]);
    }
    (img, bytes)
}
