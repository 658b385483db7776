//! The display channel against a hostile frontend: whatever bytes it sends back as replies to
//! GET_PROTOCOL_FEATURES and GET_DISPLAY_INFO (the device sends its own EDIDs and never asks
//! for the frontend's), interleaved with the one-way messages
//! (scanout, update, cursor). The channel may give up (and go headless), never panic or hang.
//!
//! Input: a u16 length and that many bytes: the frontend's whole reply stream, queued before
//! the device asks (the frontend then closes its sending side, so a short reply reads EOF);
//! then operations of 9 bytes each: an op byte, then arguments.
#![no_main]

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use vhost::vhost_user::GpuBackend;
use vhost_gpu::display::{Display, CURSOR_BYTES};
use vhost_gpu_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    // RUST_LOG=warn shows what the device logs about an input (nothing by default).
    vhost_gpu_fuzz::init_logging();
    let mut input = Input::new(data);
    let n = usize::from(input.u16().unwrap_or(0));
    let replies = input.take(n);
    let (ours, mut peer) = UnixStream::pair().expect("socketpair");
    peer.write_all(replies).expect("queue the replies");
    peer.shutdown(Shutdown::Write).expect("shutdown");
    let drain = vhost_gpu_fuzz::drain(peer);
    let mut display = Display::new(None);
    display.set_pending(GpuBackend::from_stream(ours));
    let cursor = [0x7fu8; CURSOR_BYTES];
    while !input.is_empty() {
        let op = input.u8().unwrap_or(0);
        let a = input.u16().unwrap_or(0);
        let b = input.u16().unwrap_or(0);
        let c = input.u16().unwrap_or(0);
        let d = input.u16().unwrap_or(0);
        let (a32, b32, c32) = (u32::from(a), u32::from(b), u32::from(c));
        match op % 8 {
            0 => {
                let want = usize::from(a % 20);
                if let Some(modes) = display.display_info(want) {
                    assert!(modes.len() <= want);
                }
            }
            1 => display.scanout(a32, 0, 0),
            2 => display.scanout(a32 % 20, b32 % 64, c32 % 64),
            // Ids and sizes beyond any scanout.
            7 if d & 1 == 1 => display.scanout(a32, b32, c32),
            3 => {
                let (w, h) = (u32::from(d % 17), u32::from((d >> 8) % 17));
                // Varying pixels, so that what changed since the last update is cut out.
                let px: Vec<u8> = (0..w * h * 4).map(|i| (i as u8) ^ op).collect();
                display.update(a32 % 20, b32 % 40, c32 % 40, w, h, &px);
            }
            4 => display.cursor_pos(a32, b32, c32),
            5 => display.cursor_hide(a32, b32, c32),
            6 => display.cursor_update((a32, b32, c32), (u32::from(d), 0), &cursor),
            _ => {
                assert!(display.present() || !display.wants_frames());
            }
        }
    }
    drop(display);
    drain.join().expect("frontend reader");
});
