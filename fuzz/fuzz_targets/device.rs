//! The device state machine on the 2D renderer, driven by arbitrary command sequences over a
//! model guest memory, with a display channel to a frontend that reads what it is sent.
//!
//! Input: records of a u16 word and a body of `word & 0x0fff` bytes. With bit 15 set the body is
//! a guest memory write (a u32 address, taken modulo the first region's size, then the bytes);
//! otherwise it is one command on the wire (header and body), decoded and carried out.
//!
//! The device has a host-visible region whose frontend side checks every mapping it is asked for
//! (inside the region, no overlap, unmaps of what is mapped). The 2D renderer makes no host
//! blobs, so MAP_BLOB and UNMAP_BLOB meet the region and every check before the blob's own.
//!
//! After each command: the reply encodes to its advertised length, and host memory and the
//! resource count stay within the limits. At the end a device reset leaves nothing behind,
//! nothing mapped included.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vhost::vhost_user::GpuBackend;
use vhost_gpu::protocol::{self, DecodeLimits};
use vhost_gpu_fuzz::{device_2d, guest_memory, polite_frontend, with_region, Input, LOW_SIZE};
use vhost_gpu_fuzz::{MAX_HOST_MEMORY, MAX_RESOURCES};
use vm_memory::{Bytes, GuestAddress};

fuzz_target!(|data: &[u8]| {
    // RUST_LOG=warn shows what the device logs about an input (nothing by default).
    vhost_gpu_fuzz::init_logging();
    let mut input = Input::new(data);
    let mem = Arc::new(guest_memory());
    let mut device = device_2d();
    let mapped = with_region(&mut device);
    let (sock, drain) = polite_frontend(0);
    device
        .display_mut()
        .set_pending(GpuBackend::from_stream(sock));
    let limits = DecodeLimits {
        max_backing_entries: 4096,
        max_submit_size: 64 << 10,
    };
    while let Some(word) = input.u16() {
        let body = input.take(usize::from(word & 0x0fff));
        if word & 0x8000 != 0 {
            let mut b = Input::new(body);
            let addr = u64::from(b.u32().unwrap_or(0)) % LOW_SIZE;
            let bytes = b.rest();
            let k = (LOW_SIZE - addr).min(bytes.len() as u64) as usize;
            mem.write_slice(&bytes[..k], GuestAddress(addr))
                .expect("write inside the first region");
            continue;
        }
        let (hdr, cmd) = protocol::decode_with(&mut &body[..], &limits);
        let resp = match (hdr, cmd) {
            (Some(h), Ok(cmd)) => {
                let r = device.process(&h, cmd, &mem);
                if h.fenced() {
                    // The 2D renderer is synchronous: a fenced reply never waits.
                    assert!(!device.fence(&h));
                }
                r
            }
            (_, Err(e)) => e.response(),
            (None, Ok(_)) => unreachable!("a command without a header"),
        };
        let mut out = Vec::new();
        let len = resp
            .encode(hdr.as_ref(), 1 << 16, &mut out)
            .expect("a reply encodes");
        assert_eq!(len, resp.encoded_len());
        assert!(
            device.host_memory_used() <= MAX_HOST_MEMORY,
            "host memory {} over the limit",
            device.host_memory_used()
        );
        assert!(device.resource_count() <= MAX_RESOURCES as usize);
    }
    assert!(device.take_completed_fences().is_empty());
    device.reset();
    assert_eq!(device.host_memory_used(), 0, "host memory left after reset");
    assert_eq!(device.resource_count(), 0, "resources left after reset");
    assert_eq!(device.mapped_blobs(), 0, "mappings left after reset");
    assert!(
        mapped.lock().unwrap_or_else(|e| e.into_inner()).is_empty(),
        "the frontend still holds mappings after reset"
    );
    drop(device);
    drain.join().expect("frontend reader");
});
