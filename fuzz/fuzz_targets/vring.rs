//! The vhost-user side we own: the queue loop (pop a chain, decode, run, encode, used ring) over
//! split virtqueues whose descriptor tables and rings the guest writes at will, the config space
//! (GET_CONFIG / SET_CONFIG with any offset and size), and device resets between kicks.
//!
//! Layout of the model guest memory: control queue descriptors at 0x0000, its available ring at
//! 0x1000, used ring at 0x2000; cursor queue at 0x4000 / 0x5000 / 0x6000; buffers anywhere.
//!
//! Input: a flags byte (bit 0: EVENT_IDX), a byte choosing the queue size (2 to 64), then
//! records of an op byte, a u16 length and a body of that length:
//! op % 5 == 0: guest memory write (u32 address modulo 1 MiB, then bytes);
//! 1: kick the control queue; 2: kick the cursor queue; 3: config read or write (u32 offset,
//! u32 size; with op bit 3 set the rest of the body is written); 4: the frontend resets the
//! device.
//!
//! After each kick, every chain the device took off a queue has been answered on that queue's
//! used ring (the 2D renderer never holds a reply).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_gpu::vhost_user::{VhostUserGpu, CONTROL_QUEUE, CURSOR_QUEUE};
use vhost_gpu_fuzz::{config, device_2d, guest_memory, Input, LOW_SIZE};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;

const RINGS: [(u64, u64, u64); 2] = [(0x0000, 0x1000, 0x2000), (0x4000, 0x5000, 0x6000)];

fuzz_target!(|data: &[u8]| {
    // RUST_LOG=warn shows what the device logs about an input (nothing by default).
    vhost_gpu_fuzz::init_logging();
    let mut input = Input::new(data);
    let flags = input.u8().unwrap_or(0);
    let size = 2u16 << (input.u8().unwrap_or(0) % 6);
    let event_idx = flags & 1 != 0;
    let mem = guest_memory();
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let gpu = VhostUserGpu::new(config(), device_2d(), 0, false).expect("backend");
    gpu.update_memory(atomic.clone()).expect("memory");
    gpu.set_event_idx(event_idx);
    let vrings: Vec<VringRwLock> = RINGS
        .iter()
        .map(|&(desc, avail, used)| {
            let v = VringRwLock::new(atomic.clone(), 1024).expect("vring");
            v.set_queue_size(size);
            v.set_queue_info(desc, avail, used)
                .expect("queue addresses");
            v.set_queue_event_idx(event_idx);
            v.set_queue_ready(true);
            v.set_enabled(true);
            v
        })
        .collect();
    while let Some(op) = input.u8() {
        let len = usize::from(input.u16().unwrap_or(0));
        let mut body = Input::new(input.take(len));
        match op % 5 {
            0 => {
                let addr = u64::from(body.u32().unwrap_or(0)) % LOW_SIZE;
                let bytes = body.rest();
                let k = (LOW_SIZE - addr).min(bytes.len() as u64) as usize;
                mem.write_slice(&bytes[..k], GuestAddress(addr))
                    .expect("write inside the first region");
            }
            q @ (1 | 2) => {
                let queue = if q == 1 { CONTROL_QUEUE } else { CURSOR_QUEUE };
                let v = &vrings[usize::from(queue)];
                let counters = |v: &VringRwLock| {
                    let g = v.get_ref();
                    (g.get_queue().next_avail(), g.get_queue().next_used())
                };
                let (avail0, used0) = counters(v);
                // The available ring as the guest left it (replies may be written over it: a
                // writable buffer can alias the ring).
                let ring = RINGS[usize::from(queue)].1;
                let ring_len = 4 + 2 * usize::from(size);
                let mut before = vec![0u8; ring_len];
                mem.read_slice(&mut before, GuestAddress(ring))
                    .expect("ring");
                gpu.handle_event(queue, EventSet::IN, &vrings, 0)
                    .expect("the queue loop keeps serving");
                let (avail1, used1) = counters(v);
                let popped = avail1.wrapping_sub(avail0);
                let answered = used1.wrapping_sub(used0);
                assert!(answered <= popped, "more answers than chains");
                let mut after = vec![0u8; ring_len];
                mem.read_slice(&mut after, GuestAddress(ring))
                    .expect("ring");
                if after == before {
                    // Every chain taken off the ring whose head is a real descriptor got its
                    // used entry (the queue's own counters: the indexes in guest memory are the
                    // guest's to scribble on; a head past the queue size cannot be answered).
                    let valid = (0..popped)
                        .filter(|i| {
                            let slot = 4 + 2 * usize::from(avail0.wrapping_add(*i) % size);
                            u16::from_le_bytes([before[slot], before[slot + 1]]) < size
                        })
                        .count();
                    assert_eq!(
                        usize::from(answered),
                        valid,
                        "chains taken off the ring but not answered"
                    );
                }
            }
            3 => {
                let offset = body.u32().unwrap_or(0);
                let size = body.u32().unwrap_or(0);
                if op & 8 != 0 {
                    let _ = gpu.set_config(offset, body.rest());
                } else {
                    let c = gpu.get_config(offset, size);
                    assert!(c.is_empty() || c.len() == size as usize);
                }
            }
            _ => gpu.reset_device(),
        }
    }
});
