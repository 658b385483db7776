//! Unit tests of the device state: limits, bad input, transfers, backing reads, formats.

use super::scanout::to_bgrx;
use super::*;
use virgl_bridge::Renderer2D;
use vm_memory::Bytes;

fn device(max_mem: u64) -> (GpuDevice, Arc<GuestMemoryMmap>) {
    let cfg = DeviceConfig {
        max_host_memory: max_mem,
        ..Default::default()
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    (
        GpuDevice::new(cfg, Box::new(Renderer2D::new().unwrap())),
        Arc::new(mem),
    )
}

#[test]
fn memory_limit_and_release() {
    let (mut d, mem) = device(64 * 64 * 4);
    let create = |id| GpuCommand::ResourceCreate2d {
        resource_id: id,
        format: 1,
        width: 64,
        height: 64,
    };
    assert_eq!(
        d.process(&Header::default(), create(1), &mem),
        GpuResponse::OkNoData
    );
    assert_eq!(
        d.process(&Header::default(), create(2), &mem),
        GpuResponse::ErrOutOfMemory
    );
    assert_eq!(
        d.process(
            &Header::default(),
            GpuCommand::ResourceUnref { resource_id: 1 },
            &mem
        ),
        GpuResponse::OkNoData
    );
    assert_eq!(d.host_memory_used(), 0);
    assert_eq!(
        d.process(&Header::default(), create(2), &mem),
        GpuResponse::OkNoData
    );
}

#[test]
fn bad_input_codes() {
    let (mut d, mem) = device(1 << 30);
    let c = GpuCommand::ResourceCreate2d {
        resource_id: 1,
        format: 1,
        width: 4,
        height: 4,
    };
    assert_eq!(
        d.process(&Header::default(), c.clone(), &mem),
        GpuResponse::OkNoData
    );
    assert_eq!(
        d.process(&Header::default(), c, &mem),
        GpuResponse::ErrInvalidResourceId
    );
    let bad_fmt = GpuCommand::ResourceCreate2d {
        resource_id: 2,
        format: 5,
        width: 4,
        height: 4,
    };
    assert_eq!(
        d.process(&Header::default(), bad_fmt, &mem),
        GpuResponse::ErrInvalidParameter
    );
    let outside = GpuCommand::ResourceAttachBacking {
        resource_id: 1,
        entries: vec![(u64::MAX - 4, 64)],
    };
    assert_eq!(
        d.process(&Header::default(), outside, &mem),
        GpuResponse::ErrInvalidParameter
    );
    let past_end = GpuCommand::ResourceAttachBacking {
        resource_id: 1,
        entries: vec![((1 << 20) - 8, 64)],
    };
    assert_eq!(
        d.process(&Header::default(), past_end, &mem),
        GpuResponse::ErrInvalidParameter
    );
    let ok = GpuCommand::ResourceAttachBacking {
        resource_id: 1,
        entries: vec![(0x1000, 64)],
    };
    assert_eq!(
        d.process(&Header::default(), ok, &mem),
        GpuResponse::OkNoData
    );
    let r = Rect {
        x: 0,
        y: 0,
        width: 4,
        height: 4,
    };
    let overrun = GpuCommand::TransferToHost2d {
        rect: r,
        offset: 8,
        resource_id: 1,
    };
    assert_eq!(
        d.process(&Header::default(), overrun, &mem),
        GpuResponse::ErrInvalidParameter
    );
    let huge = GpuCommand::TransferToHost2d {
        rect: r,
        offset: u64::MAX,
        resource_id: 1,
    };
    assert_eq!(
        d.process(&Header::default(), huge, &mem),
        GpuResponse::ErrInvalidParameter
    );
    let wide = Rect {
        x: u32::MAX,
        y: 0,
        width: 2,
        height: 1,
    };
    let wrap = GpuCommand::TransferToHost2d {
        rect: wide,
        offset: 0,
        resource_id: 1,
    };
    assert_eq!(
        d.process(&Header::default(), wrap, &mem),
        GpuResponse::ErrInvalidParameter
    );
    let scan = GpuCommand::SetScanout {
        rect: r,
        scanout_id: 1,
        resource_id: 1,
    };
    assert_eq!(
        d.process(&Header::default(), scan, &mem),
        GpuResponse::ErrInvalidScanoutId
    );
    let good = GpuCommand::TransferToHost2d {
        rect: r,
        offset: 0,
        resource_id: 1,
    };
    assert_eq!(
        d.process(&Header::default(), good, &mem),
        GpuResponse::OkNoData
    );
}

#[test]
fn partial_transfer_uses_linux_offsets() {
    let (mut d, mem) = device(1 << 30);
    d.process(
        &Header::default(),
        GpuCommand::ResourceCreate2d {
            resource_id: 1,
            format: 1,
            width: 4,
            height: 4,
        },
        &mem,
    );
    let pixels: Vec<u8> = (0..64u8).collect();
    mem.write_slice(&pixels, GuestAddress(0x2000)).unwrap();
    d.process(
        &Header::default(),
        GpuCommand::ResourceAttachBacking {
            resource_id: 1,
            entries: vec![(0x2000, 64)],
        },
        &mem,
    );
    // Linux: offset = y * stride + x * 4 for the rect's top-left pixel.
    let r = Rect {
        x: 1,
        y: 2,
        width: 2,
        height: 2,
    };
    let t = GpuCommand::TransferToHost2d {
        rect: r,
        offset: 2 * 16 + 4,
        resource_id: 1,
    };
    assert_eq!(
        d.process(&Header::default(), t, &mem),
        GpuResponse::OkNoData
    );
    d.read_back(1, r).unwrap();
    assert_eq!(&d.scratch[36..44], &pixels[36..44]);
    assert_eq!(&d.scratch[52..60], &pixels[52..60]);
    assert_eq!(&d.scratch[0..36], &[0u8; 36][..]);
}

#[test]
fn backing_reads_seek_across_uneven_entries() {
    let (_, mem) = device(1 << 20);
    // Entries of 100, 1, 4096 and 250 bytes, out of address order.
    let entries = vec![(0x9000, 100), (0x2000, 1), (0x4000, 4096), (0x100, 250)];
    let mut flat = Vec::new();
    for (i, &(a, l)) in entries.iter().enumerate() {
        let bytes: Vec<u8> = (0..l)
            .map(|j| (j as u8).wrapping_mul(7).wrapping_add(i as u8))
            .collect();
        mem.write_slice(&bytes, GuestAddress(a)).unwrap();
        flat.extend_from_slice(&bytes);
    }
    let (b, _) = Backing::map(entries, &mem).unwrap();
    for (off, n) in [
        (0, 4447),
        (99, 3),
        (100, 1),
        (101, 4096),
        (4196, 251),
        (4446, 1),
        (50, 0),
    ] {
        let mut out = vec![0u8; n];
        b.read_at(off as u64, &mut out).unwrap();
        assert_eq!(out, flat[off..off + n], "offset {off} len {n}");
    }
    assert!(b.read_at(4440, &mut [0u8; 8]).is_err(), "past the end");
}

#[test]
fn format_conversion_to_bgrx() {
    let mut px = [1, 2, 3, 4];
    to_bgrx(format::R8G8B8A8, &mut px);
    assert_eq!(px, [3, 2, 1, 4]);
    let mut px = [1, 2, 3, 4];
    to_bgrx(format::A8R8G8B8, &mut px);
    assert_eq!(px, [4, 3, 2, 1]);
    let mut px = [1, 2, 3, 4];
    to_bgrx(format::X8B8G8R8, &mut px);
    assert_eq!(px, [2, 3, 4, 1]);
    let mut px = [1, 2, 3, 4];
    to_bgrx(format::B8G8R8X8, &mut px);
    assert_eq!(px, [1, 2, 3, 4]);
}
