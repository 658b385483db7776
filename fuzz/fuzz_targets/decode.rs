//! The command decoder on arbitrary descriptor chains, read and written the way the queue loop
//! does it (virtio-queue's Reader and Writer over guest memory), then a reply encoded into the
//! chain's writable part.
//!
//! Input: `n` (1 + byte % 8 descriptors); per descriptor a length (u16) and a flags byte (bit 0:
//! device-writable; bits 1-2: 0-1 in memory, 2 in the hole, 3 at the end of the address space);
//! a byte choosing the reply; then the bytes the readable descriptors hold, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_gpu::protocol::{self, DecodeLimits, DisplayMode, GpuResponse};
use vhost_gpu_fuzz::{guest_memory, Input, LOW_SIZE};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Reader, Writer};
use vm_memory::{Bytes, GuestAddress};

/// Where descriptor buffers start (the mock queue's rings sit below).
const DATA: u64 = 0x1000;

fn reply(sel: u8) -> GpuResponse {
    match sel % 12 {
        0 => GpuResponse::OkNoData,
        1 => GpuResponse::OkDisplayInfo(vec![
            DisplayMode {
                width: 1024,
                height: 768,
                enabled: true,
            };
            usize::from(sel / 12)
        ]),
        2 => GpuResponse::OkCapsetInfo {
            id: 2,
            max_version: 2,
            max_size: 1376,
        },
        3 => GpuResponse::OkCapset(vec![0xa5; usize::from(sel) * 7]),
        4 => GpuResponse::OkEdid(vec![0x5a; usize::from(sel) * 5]),
        5 => GpuResponse::OkResourceUuid([sel; 16]),
        6 => GpuResponse::ErrUnspec,
        7 => GpuResponse::ErrOutOfMemory,
        8 => GpuResponse::ErrInvalidScanoutId,
        9 => GpuResponse::ErrInvalidResourceId,
        10 => GpuResponse::ErrInvalidContextId,
        _ => GpuResponse::ErrInvalidParameter,
    }
}

fuzz_target!(|data: &[u8]| {
    // RUST_LOG=warn shows what the device logs about an input (nothing by default).
    vhost_gpu_fuzz::init_logging();
    let mut input = Input::new(data);
    let mem = guest_memory();
    let n = 1 + input.u8().unwrap_or(0) % 8;
    let mut descs = Vec::new();
    let mut readable = Vec::new();
    let mut next = DATA;
    for _ in 0..n {
        let len = u32::from(input.u16().unwrap_or(0));
        let flags = input.u8().unwrap_or(0);
        let addr = match (flags >> 1) & 3 {
            0 | 1 => {
                let a = next;
                next += u64::from(len);
                a
            }
            2 => LOW_SIZE + 0x100,
            _ => u64::MAX - u64::from(len) / 2,
        };
        let write = flags & 1 != 0;
        if !write && addr < LOW_SIZE {
            readable.push((addr, len));
        }
        let f = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        descs.push(RawDescriptor::from(SplitDescriptor::new(addr, len, f, 0)));
    }
    let sel = input.u8().unwrap_or(0);
    let mut body = input.rest();
    for (addr, len) in readable {
        let end = (addr + u64::from(len)).min(LOW_SIZE);
        let k = ((end.saturating_sub(addr)) as usize).min(body.len());
        let _ = mem.write_slice(&body[..k], GuestAddress(addr));
        body = &body[k..];
    }

    let q = MockSplitQueue::new(&mem, 16);
    let Ok(chain) = q.build_desc_chain(&descs) else {
        return;
    };
    let (mut r, mut w) = match (Reader::new(&mem, chain.clone()), Writer::new(&mem, chain)) {
        (Ok(r), Ok(w)) => (r, w),
        _ => return,
    };
    let limits = DecodeLimits {
        max_backing_entries: 4096,
        max_submit_size: 64 << 10,
    };
    let readable_bytes = r.available_bytes();
    let (hdr, cmd) = protocol::decode_with(&mut r, &limits);
    assert!(r.bytes_read() <= readable_bytes);
    let resp = match (&hdr, cmd) {
        (_, Err(e)) => e.response(),
        (Some(_), Ok(cmd)) => {
            assert!(!cmd.name().is_empty());
            reply(sel)
        }
        (None, Ok(_)) => unreachable!("a command without a header"),
    };
    let available = w.available_bytes();
    let mut out = Vec::new();
    match resp.encode(hdr.as_ref(), available, &mut out) {
        Ok(len) => {
            assert_eq!(len, out.len());
            assert_eq!(len, resp.encoded_len());
            assert!(len <= available);
            // The reply's header echoes a fenced request's fence id.
            if let Some(h) = hdr.filter(|h| h.fenced()) {
                assert_eq!(out[8..16], h.fence_id.to_le_bytes());
            }
            use std::io::Write;
            w.write_all(&out)
                .expect("a reply that fits the writable part is written");
        }
        Err(protocol::EncodeError::BufferTooSmall { have, need }) => assert!(have < need),
        Err(e) => panic!("encoding into a Vec failed: {e}"),
    }
});
