//! The 2D device against the real binary: probe, display info, EDID, scanout pixels, cursor,
//! fences, UUIDs, two scanouts, reconnect.

mod common;

use common::*;
use guest_tests::frontend::ConnectOptions;
use guest_tests::wire::*;
use guest_tests::{capture, Backend, DisplayEvent, Gpu};

#[test]
fn probe_offers_2d_features_and_config() {
    let (_b, g) = start(&["--display", "1024x768"]);
    let f = g.conn.device_features;
    for bit in [
        F_VERSION_1,
        F_EDID,
        F_RESOURCE_UUID,
        F_INDIRECT_DESC,
        F_EVENT_IDX,
        F_PROTOCOL_FEATURES,
    ] {
        assert_ne!(f & bit, 0, "feature {bit:#x} missing from {f:#x}");
    }
    assert_eq!(f & F_VIRGL, 0, "VIRGL offered by the 2D renderer");
    assert_eq!(f & (1 << 3), 0, "RESOURCE_BLOB offered by the 2D renderer");
    // events_read, events_clear, num_scanouts, num_capsets
    assert_eq!(g.conn.config, [0, 0, 1, 0]);
}

#[test]
fn display_info_and_edid_follow_display_flags() {
    let (_b, mut g) = start(&["--display", "1024x768"]);
    let r = g.display_info();
    assert_eq!(r.code(), OK_DISPLAY_INFO);
    assert_eq!(r.0.len(), 24 + 16 * 24);
    let one = |i: usize| [0, 4, 8, 12, 16].map(|o| le32(&r.0, 24 + i * 24 + o));
    assert_eq!(one(0), [0, 0, 1024, 768, 1]);
    for i in 1..16 {
        assert_eq!(one(i), [0; 5], "scanout {i}");
    }
    let e = g.edid(0);
    assert_eq!(e.code(), OK_EDID);
    assert_eq!(e.0.len(), 24 + 8 + 1024);
    assert_eq!(le32(&e.0, 24), 256);
    let edid = &e.0[32..160];
    assert_eq!(&edid[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
    assert_eq!(
        edid.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
        0,
        "EDID checksum"
    );
    let dtd = &edid[54..72];
    let hactive = u32::from(dtd[2]) | (u32::from(dtd[4] >> 4) << 8);
    let vactive = u32::from(dtd[5]) | (u32::from(dtd[7] >> 4) << 8);
    assert_eq!((hactive, vactive), (1024, 768));
    // The CTA extension block: its own checksum, and the large modes as detailed timings.
    let ext = &e.0[160..288];
    assert_eq!((ext[0], ext[1]), (0x02, 0x03));
    assert_eq!(ext.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    let dtds: Vec<(u32, u32)> = (0..3)
        .map(|i| {
            let d = &ext[4 + i * 18..];
            (
                u32::from(d[2]) | (u32::from(d[4] >> 4) << 8),
                u32::from(d[5]) | (u32::from(d[7] >> 4) << 8),
            )
        })
        .collect();
    assert_eq!(dtds, vec![(2560, 1440), (2560, 1600), (3840, 2160)]);
    // Standard timings hold 1280x800 (16:10) and 1920x1080 (16:9).
    let std: Vec<(u32, u8)> = (0..8)
        .map(|i| {
            (
                (u32::from(edid[38 + i * 2]) + 31) * 8,
                edid[39 + i * 2] >> 6,
            )
        })
        .collect();
    assert!(
        std.contains(&(1280, 0)) && std.contains(&(1920, 3)),
        "{std:?}"
    );
    assert!(
        e.0[288..].iter().all(|&b| b == 0),
        "bytes past the EDID are zero"
    );
}

#[test]
fn frontend_display_info_sets_the_preferred_mode_without_display_flag() {
    let b = Backend::start(&opts_2d(&[]));
    let mut opts = ConnectOptions::default();
    let dc = opts.display.as_mut().unwrap();
    dc.modes = vec![(1920, 1080, true)];
    dc.edid = vec![7u8; 256];
    let mut g = Gpu::connect(&b, &opts);
    let r = g.display_info();
    assert_eq!(r.code(), OK_DISPLAY_INFO);
    assert_eq!([8, 12, 16].map(|o| le32(&r.0, 24 + o)), [1920, 1080, 1]);
    // The EDID is ours (the full mode list), its preferred mode the frontend's.
    let e = g.edid(0);
    assert_eq!(e.code(), OK_EDID);
    assert_eq!(le32(&e.0, 24), 256);
    let dtd = &e.0[32 + 54..32 + 72];
    let hactive = u32::from(dtd[2]) | (u32::from(dtd[4] >> 4) << 8);
    let vactive = u32::from(dtd[5]) | (u32::from(dtd[7] >> 4) << 8);
    assert_eq!((hactive, vactive), (1920, 1080));
    assert!(!e.0[32..288].iter().all(|&b| b == 7));
    // The display channel negotiated EDID.
    let feats = g.display().wait_for(WAIT, |e| match e {
        DisplayEvent::SetProtocolFeatures(f) => Some(*f),
        _ => None,
    });
    assert_eq!(feats, Some(1));
}

#[test]
fn headless_device_works_without_display_channel() {
    let b = Backend::start(&opts_2d(&[]));
    let mut g = Gpu::connect(
        &b,
        &ConnectOptions {
            display: None,
            ..Default::default()
        },
    );
    assert_eq!(g.display_info().code(), OK_DISPLAY_INFO);
    let px = pattern(64, 64, 1);
    resource_with(&mut g, 1, B8G8R8X8, 64, 64, &px);
    assert_eq!(g.set_scanout(0, 1, (0, 0, 64, 64)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, 64, 64), 256), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, 64, 64)), OK_NODATA);
}

#[test]
fn fbcon_frame_and_damage_arrive_as_exact_pixels() {
    let (w, h) = (1280u32, 800u32);
    let (_b, mut g) = start(&[]);
    assert_eq!(g.display_info().code(), OK_DISPLAY_INFO);
    let mut px = pattern(w, h, 0);
    let entries = resource_with(&mut g, 1, B8G8R8X8, w, h, &px);
    assert_eq!(
        entries.len(),
        (w * h * 4 / 4096) as usize,
        "one entry per page"
    );
    assert_eq!(g.set_scanout(0, 1, (0, 0, w, h)), OK_NODATA);
    let sc = g.display().wait_for(WAIT, |e| match e {
        DisplayEvent::Scanout { id, width, height } => Some((*id, *width, *height)),
        _ => None,
    });
    assert_eq!(sc, Some((0, w, h)));
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
    let (id, x, y, uw, uh, data) = next_update(&g);
    assert_eq!((id, x, y, uw, uh), (0, 0, 0, w, h));
    assert!(data == px, "full frame differs");

    // Damage like fbcon's: a rect in the middle, transferred with the Linux offset.
    let r = (100, 50, 30, 20);
    for row in r.1..r.1 + r.3 {
        for col in r.0..r.0 + r.2 {
            let i = ((row * w + col) * 4) as usize;
            px[i..i + 4].copy_from_slice(&[0x10, 0x20, 0x30, 0xff]);
        }
    }
    g.write_backing(&entries, &px);
    assert_eq!(g.transfer(1, r, w * 4), OK_NODATA);
    assert_eq!(g.flush(1, r), OK_NODATA);
    let (id, x, y, uw, uh, data) = next_update(&g);
    assert_eq!((id, x, y, uw, uh), (0, r.0, r.1, r.2, r.3));
    assert_eq!(data, crop(&px, w * 4, r));
    assert!(data.chunks(4).all(|p| p == [0x10, 0x20, 0x30, 0xff]));

    // Full-width damage (rows 700..710) takes the no-repack path: same pixels.
    let r = (0, 700, w, 10);
    for (i, b) in px[(700 * w * 4) as usize..(710 * w * 4) as usize]
        .iter_mut()
        .enumerate()
    {
        *b = if i % 4 == 3 { 0xff } else { !*b };
    }
    g.write_backing(&entries, &px);
    assert_eq!(g.transfer(1, r, w * 4), OK_NODATA);
    assert_eq!(g.flush(1, r), OK_NODATA);
    let (_, x, y, uw, uh, data) = next_update(&g);
    assert_eq!((x, y, uw, uh), (0, 700, w, 10));
    assert_eq!(data, crop(&px, w * 4, r));

    // Disabling the scanout announces 0x0.
    assert_eq!(g.set_scanout(0, 0, (0, 0, 0, 0)), OK_NODATA);
    let sc = g.display().wait_for(WAIT, |e| match e {
        DisplayEvent::Scanout { id, width, height } => Some((*id, *width, *height)),
        _ => None,
    });
    assert_eq!(sc, Some((0, 0, 0)));
}

#[test]
fn every_format_reaches_the_frontend_as_bgrx() {
    let (_b, mut g) = start(&[]);
    // One pixel value, R=0x11 G=0x22 B=0x33 A/X=0x44, in each format's byte order.
    let cases: [(u32, [u8; 4]); 8] = [
        (B8G8R8A8, [0x33, 0x22, 0x11, 0x44]),
        (B8G8R8X8, [0x33, 0x22, 0x11, 0x44]),
        (A8R8G8B8, [0x44, 0x11, 0x22, 0x33]),
        (X8R8G8B8, [0x44, 0x11, 0x22, 0x33]),
        (R8G8B8A8, [0x11, 0x22, 0x33, 0x44]),
        (X8B8G8R8, [0x44, 0x33, 0x22, 0x11]),
        (A8B8G8R8, [0x44, 0x33, 0x22, 0x11]),
        (R8G8B8X8, [0x11, 0x22, 0x33, 0x44]),
    ];
    for (i, (fmt, px)) in cases.iter().enumerate() {
        let id = 10 + i as u32;
        let pixels: Vec<u8> = px.iter().copied().cycle().take(4 * 4 * 4).collect();
        resource_with(&mut g, id, *fmt, 4, 4, &pixels);
        assert_eq!(g.set_scanout(0, id, (0, 0, 4, 4)), OK_NODATA);
        assert_eq!(g.transfer(id, (0, 0, 4, 4), 16), OK_NODATA);
        assert_eq!(g.flush(id, (0, 0, 4, 4)), OK_NODATA);
        let (_, _, _, _, _, data) = next_update(&g);
        assert_eq!(data.len(), 64, "format {fmt}");
        for p in data.chunks(4) {
            assert_eq!(p, [0x33, 0x22, 0x11, 0x44], "format {fmt}");
        }
        // Every case shows the same picture and the frontend is only sent changes: off and
        // on again between cases, so each one's frame goes whole to a new surface.
        assert_eq!(g.set_scanout(0, 0, (0, 0, 0, 0)), OK_NODATA);
    }
}

#[test]
fn cursor_update_move_and_hide() {
    let (_b, mut g) = start(&[]);
    let img = pattern(64, 64, 3);
    resource_with(&mut g, 7, B8G8R8A8, 64, 64, &img);
    assert_eq!(g.transfer(7, (0, 0, 64, 64), 256), OK_NODATA);
    assert_eq!(g.update_cursor(0, 10, 20, 7, (3, 4)), OK_NODATA);
    let ev = g.display().wait_for(WAIT, |e| match e {
        DisplayEvent::CursorUpdate { .. } => Some(e.clone()),
        _ => None,
    });
    assert_eq!(
        ev,
        Some(DisplayEvent::CursorUpdate {
            id: 0,
            x: 10,
            y: 20,
            hot_x: 3,
            hot_y: 4,
            image: img.clone()
        })
    );
    assert_eq!(g.move_cursor(0, 300, 200), OK_NODATA);
    let ev = g.display().wait_for(WAIT, |e| match e {
        DisplayEvent::CursorPos { .. } => Some(e.clone()),
        _ => None,
    });
    assert_eq!(
        ev,
        Some(DisplayEvent::CursorPos {
            id: 0,
            x: 300,
            y: 200
        })
    );
    assert_eq!(g.update_cursor(0, 5, 6, 0, (0, 0)), OK_NODATA);
    let ev = g.display().wait_for(WAIT, |e| match e {
        DisplayEvent::CursorHide { .. } => Some(e.clone()),
        _ => None,
    });
    assert_eq!(ev, Some(DisplayEvent::CursorHide { id: 0, x: 5, y: 6 }));

    // A cursor resource smaller than 64x64 is padded with transparent pixels, not over-read.
    let small = pattern(16, 8, 5);
    resource_with(&mut g, 8, B8G8R8A8, 16, 8, &small);
    assert_eq!(g.transfer(8, (0, 0, 16, 8), 64), OK_NODATA);
    assert_eq!(g.update_cursor(0, 1, 1, 8, (0, 0)), OK_NODATA);
    let image = g
        .display()
        .wait_for(WAIT, |e| match e {
            DisplayEvent::CursorUpdate { image, .. } => Some(image.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(image.len(), 64 * 64 * 4);
    for row in 0..64usize {
        let got = &image[row * 256..(row + 1) * 256];
        if row < 8 {
            assert_eq!(&got[..64], &small[row * 64..(row + 1) * 64]);
            assert!(got[64..].iter().all(|&b| b == 0));
        } else {
            assert!(got.iter().all(|&b| b == 0));
        }
    }
}

#[test]
fn fenced_replies_echo_fence_context_and_ring() {
    let (_b, mut g) = start(&[]);
    let r = g.ctrl(
        Msg::hdr(RESOURCE_CREATE_2D, FLAG_FENCE, 42, 0, 0)
            .u32(1)
            .u32(1)
            .u32(8)
            .u32(8),
        24,
    );
    assert_eq!(resp_hdr(&r.0), (OK_NODATA, FLAG_FENCE, 42, 0, 0));
    let r = g.ctrl(
        Msg::hdr(
            RESOURCE_CREATE_2D,
            FLAG_FENCE | FLAG_INFO_RING_IDX,
            43,
            0,
            3,
        )
        .u32(2)
        .u32(1)
        .u32(8)
        .u32(8),
        24,
    );
    assert_eq!(
        resp_hdr(&r.0),
        (OK_NODATA, FLAG_FENCE | FLAG_INFO_RING_IDX, 43, 0, 3)
    );
    // A failing fenced command still echoes its fence (the guest waits on it).
    let r = g.ctrl(
        Msg::hdr(RESOURCE_UNREF, FLAG_FENCE, 44, 0, 0)
            .u32(99)
            .u32(0),
        24,
    );
    assert_eq!(
        resp_hdr(&r.0),
        (ERR_INVALID_RESOURCE_ID, FLAG_FENCE, 44, 0, 0)
    );
    // Unfenced replies carry no fence.
    let r = g.ctrl(Msg::hdr(RESOURCE_UNREF, 0, 45, 0, 0).u32(1).u32(0), 24);
    assert_eq!(resp_hdr(&r.0), (OK_NODATA, 0, 0, 0, 0));
}

#[test]
fn uuids_are_stable_per_resource_and_unique() {
    let (_b, mut g) = start(&[]);
    assert_eq!(g.create_2d(1, B8G8R8X8, 4, 4), OK_NODATA);
    assert_eq!(g.create_2d(2, B8G8R8X8, 4, 4), OK_NODATA);
    let a = g.assign_uuid(1);
    assert_eq!(a.code(), OK_RESOURCE_UUID);
    assert_eq!(a.0.len(), 40);
    let a2 = g.assign_uuid(1);
    let b = g.assign_uuid(2);
    assert_eq!(a.0[24..], a2.0[24..]);
    assert_ne!(a.0[24..], b.0[24..]);
    assert_eq!(a.0[24 + 6] >> 4, 4, "version 4 UUID");
    assert_eq!(g.assign_uuid(3).code(), ERR_INVALID_RESOURCE_ID);
}

#[test]
fn headless_capture_writes_each_scanout_as_png_and_screenshots_on_sigusr1() {
    let dir = std::env::temp_dir().join(format!("vhost-gpu-capture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let b = Backend::start(&opts_2d(&[
        "--display",
        "64x48",
        "--display",
        "32x32",
        "--capture-dir",
        d,
        "--capture-interval-ms",
        "50",
    ]));
    // No display channel: the capture alone wants the frames.
    let mut g = Gpu::connect(
        &b,
        &ConnectOptions {
            display: None,
            ..Default::default()
        },
    );
    let (w, h) = (96u32, 48u32);
    let px = pattern(w, h, 3);
    let entries = resource_with(&mut g, 1, B8G8R8X8, w, h, &px);
    assert_eq!(g.set_scanout(0, 1, (0, 0, 64, 48)), OK_NODATA);
    assert_eq!(g.set_scanout(1, 1, (64, 8, 32, 32)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
    let shots = capture::screenshot(&b, &dir, 1, &[0, 1], WAIT).unwrap();
    let rgb = |img: &[u8]| -> Vec<u8> { img.chunks(4).flat_map(|p| [p[2], p[1], p[0]]).collect() };
    assert_eq!((shots[0].width, shots[0].height), (64, 48));
    assert_eq!(shots[0].rgb, rgb(&crop(&px, w * 4, (0, 0, 64, 48))));
    assert_eq!((shots[1].width, shots[1].height), (32, 32));
    assert_eq!(shots[1].rgb, rgb(&crop(&px, w * 4, (64, 8, 32, 32))));
    // The rate-limited latest pictures are written too.
    let latest = [dir.join("scanout-0.png"), dir.join("scanout-1.png")];
    capture::wait_files(&latest, WAIT).unwrap();
    // A damage rect changes only its pixels in the next screenshot.
    let px2 = pattern(w, h, 99);
    g.write_backing(&entries, &px2);
    assert_eq!(g.transfer(1, (8, 8, 4, 4), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (8, 8, 4, 4)), OK_NODATA);
    let s2 = capture::screenshot(&b, &dir, 2, &[0], WAIT).unwrap();
    let mut want = crop(&px, w * 4, (0, 0, 64, 48));
    for y in 8..12usize {
        let at = (y * 64 + 8) * 4;
        want[at..at + 16].copy_from_slice(&crop(&px2, w * 4, (8, y as u32, 4, 1)));
    }
    assert_eq!(s2[0].rgb, rgb(&want));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_scanouts_from_one_framebuffer() {
    let (_b, mut g) = start(&["--display", "640x480", "--display", "800x600"]);
    assert_eq!(g.conn.config[2], 2);
    let r = g.display_info();
    assert_eq!([8, 12, 16].map(|o| le32(&r.0, 24 + o)), [640, 480, 1]);
    assert_eq!([8, 12, 16].map(|o| le32(&r.0, 48 + o)), [800, 600, 1]);
    let e1 = g.edid(1);
    let dtd = &e1.0[32 + 54..32 + 72];
    assert_eq!(u32::from(dtd[2]) | (u32::from(dtd[4] >> 4) << 8), 800);
    // One 1440x600 framebuffer, scanout 0 on its left 640x480, scanout 1 on its right 800x600.
    let (w, h) = (1440u32, 600u32);
    let px = pattern(w, h, 7);
    resource_with(&mut g, 1, B8G8R8X8, w, h, &px);
    assert_eq!(g.set_scanout(0, 1, (0, 0, 640, 480)), OK_NODATA);
    assert_eq!(g.set_scanout(1, 1, (640, 0, 800, 600)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
    let mut got = [next_update(&g), next_update(&g)];
    got.sort_by_key(|u| u.0);
    assert_eq!((got[0].1, got[0].2, got[0].3, got[0].4), (0, 0, 640, 480));
    assert_eq!(got[0].5, crop(&px, w * 4, (0, 0, 640, 480)));
    // Scanout-relative coordinates for the right-hand scanout.
    assert_eq!(
        (got[1].0, got[1].1, got[1].2, got[1].3, got[1].4),
        (1, 0, 0, 800, 600)
    );
    assert_eq!(got[1].5, crop(&px, w * 4, (640, 0, 800, 600)));
    assert_eq!(g.set_scanout(2, 1, (0, 0, 8, 8)), ERR_INVALID_SCANOUT_ID);
}

#[test]
fn reconnect_gives_a_clean_working_device() {
    let b = Backend::start(&opts_2d(&[]));
    {
        let mut g = Gpu::connect(&b, &ConnectOptions::default());
        assert_eq!(g.create_2d(1, B8G8R8X8, 64, 64), OK_NODATA);
        assert_eq!(g.create_2d(1, B8G8R8X8, 64, 64), ERR_INVALID_RESOURCE_ID);
    } // frontend goes away (QEMU quits)
    let mut g = Gpu::connect(&b, &ConnectOptions::default());
    // Resource 1 is gone with the old frontend.
    assert_eq!(g.create_2d(1, B8G8R8X8, 64, 64), OK_NODATA);
    let px = pattern(64, 64, 2);
    let e = g.scattered_backing(&px);
    assert_eq!(g.attach_backing(1, &e), OK_NODATA);
    assert_eq!(g.set_scanout(0, 1, (0, 0, 64, 64)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, 64, 64), 256), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, 64, 64)), OK_NODATA);
    assert_eq!(next_update(&g).5, px);
    assert!(
        b.log_text().contains("frontend disconnected") || b.log_text().contains("connection ended")
    );
}

#[test]
fn guest_reset_drops_resources() {
    let (_b, mut g) = start(&[]);
    assert_eq!(g.create_2d(1, B8G8R8X8, 64, 64), OK_NODATA);
    // What QEMU does when the guest reboots: stop the rings, then start them afresh.
    g.conn.stop_queues().unwrap();
    g.conn.start_queues(256).unwrap();
    assert_eq!(g.create_2d(1, B8G8R8X8, 64, 64), OK_NODATA);
}

/// A page flip to another resource of the same size is not announced with SCANOUT (QEMU
/// replaces its surface on each SCANOUT and its GTK GL window then stops redrawing); the next
/// flush sends the whole new frame, even when the guest flushes less. A size change, and
/// turning a scanout on, are announced.
#[test]
fn a_flip_between_same_size_resources_is_a_full_update_not_a_scanout() {
    let (w, h) = (320u32, 200u32);
    let (_b, mut g) = start(&["--display", "320x200"]);
    let scanout = |g: &Gpu| {
        g.display()
            .wait_for(std::time::Duration::from_millis(300), |e| match e {
                DisplayEvent::Scanout { id, width, height } => Some((*id, *width, *height)),
                _ => None,
            })
    };
    let mut a = pattern(w, h, 1);
    let mut b = pattern(w, h, 2);
    let ea = resource_with(&mut g, 1, B8G8R8X8, w, h, &a);
    let eb = resource_with(&mut g, 2, B8G8R8X8, w, h, &b);
    assert_eq!(g.set_scanout(0, 1, (0, 0, w, h)), OK_NODATA);
    assert_eq!(
        scanout(&g),
        Some((0, w, h)),
        "turning the scanout on is announced"
    );
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
    assert!(next_update(&g).5 == a);
    for (round, id) in [2u32, 1, 2].into_iter().enumerate() {
        let (px, entries) = if id == 1 {
            (&mut a, &ea)
        } else {
            (&mut b, &eb)
        };
        assert_eq!(g.set_scanout(0, id, (0, 0, w, h)), OK_NODATA);
        assert_eq!(g.transfer(id, (0, 0, w, h), w * 4), OK_NODATA);
        // The guest flushes a corner only; the frontend still gets the whole new frame.
        assert_eq!(g.flush(id, (0, 0, 8, 8)), OK_NODATA);
        let (sid, x, y, uw, uh, data) = next_update(&g);
        assert_eq!((sid, x, y, uw, uh), (0, 0, 0, w, h), "flip to {id}");
        assert!(data == *px, "flip to {id}: frame differs");
        // After that, damage is sent as it comes: the corner, painted anew.
        for row in 0..8 {
            let s = (row * w * 4) as usize;
            px[s..s + 32].fill(0x40 + round as u8);
        }
        g.write_backing(entries, px);
        assert_eq!(g.transfer(id, (0, 0, 8, 8), w * 4), OK_NODATA);
        assert_eq!(g.flush(id, (0, 0, 8, 8)), OK_NODATA);
        let (_, x, y, uw, uh, _) = next_update(&g);
        assert_eq!(
            (x, y, uw, uh),
            (0, 0, 8, 8),
            "damage after the flip to {id}"
        );
    }
    assert_eq!(scanout(&g), None, "a same-size flip sent SCANOUT");
    // Another size is announced.
    let c = pattern(160, 100, 3);
    resource_with(&mut g, 3, B8G8R8X8, 160, 100, &c);
    assert_eq!(g.set_scanout(0, 3, (0, 0, 160, 100)), OK_NODATA);
    assert_eq!(scanout(&g), Some((0, 160, 100)));
}

#[test]
fn a_4k_desktop_fits_the_default_host_memory_and_reaches_capture() {
    let dir = std::env::temp_dir().join(format!("vhost-gpu-4k-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    // Default --max-host-memory (1G); the mode a user picks from the EDID.
    let b = Backend::start(&opts_2d(&["--display", "3840x2160", "--capture-dir", d]));
    let mut g = Gpu::connect(
        &b,
        &ConnectOptions {
            mem_size: 256 << 20,
            ..Default::default()
        },
    );
    let (w, h) = (3840u32, 2160u32);
    let px = pattern(w, h, 40);
    let _ = resource_with(&mut g, 1, B8G8R8X8, w, h, &px);
    // Double-buffered, as a compositor does.
    assert_eq!(g.create_2d(2, B8G8R8X8, w, h), OK_NODATA);
    assert_eq!(g.set_scanout(0, 1, (0, 0, w, h)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
    let shots = capture::screenshot(&b, &dir, 1, &[0], WAIT).unwrap();
    assert_eq!((shots[0].width, shots[0].height), (w, h));
    let rgb: Vec<u8> = px.chunks(4).flat_map(|p| [p[2], p[1], p[0]]).collect();
    assert!(shots[0].rgb == rgb, "4K picture differs");
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Paints rect `r` of a packed `w`-pixel-wide image with one colour.
fn paint(img: &mut [u8], w: u32, r: (u32, u32, u32, u32), v: u8) {
    for y in r.1..r.1 + r.3 {
        let s = ((y * w + r.0) * 4) as usize;
        for px in img[s..s + (r.2 * 4) as usize].chunks_exact_mut(4) {
            px.copy_from_slice(&[v, v.wrapping_add(1), v.wrapping_add(2), 0xff]);
        }
    }
}

/// A guest that flips or flushes the whole scanout every frame gets only what changed sent to
/// the frontend: each UPDATE is the next change, cut to it, with its pixels; a flush that
/// changes nothing sends nothing.
#[test]
fn a_whole_scanout_flush_sends_only_what_changed() {
    let (w, h) = (320u32, 200u32);
    let whole = (0, 0, w, h);
    let (_b, mut g) = start(&["--display", "320x200"]);
    let mut a = pattern(w, h, 1);
    let entries = resource_with(&mut g, 1, B8G8R8X8, w, h, &a);
    assert_eq!(g.set_scanout(0, 1, whole), OK_NODATA);
    let frame = |g: &mut Gpu, px: &[u8]| {
        g.write_backing(&entries, px);
        assert_eq!(g.transfer(1, whole, w * 4), OK_NODATA);
        assert_eq!(g.flush(1, whole), OK_NODATA);
    };
    frame(&mut g, &a);
    let (_, x, y, uw, uh, data) = next_update(&g);
    assert_eq!((x, y, uw, uh), whole, "the first frame goes whole");
    assert!(data == a);
    for (r, v) in [
        ((100, 50, 10, 6), 7),
        ((0, 0, 1, 1), 9),
        ((300, 190, 20, 10), 11),
    ] {
        paint(&mut a, w, r, v);
        frame(&mut g, &a);
        let (_, x, y, uw, uh, data) = next_update(&g);
        assert_eq!((x, y, uw, uh), r, "the UPDATE is the changed rect");
        assert_eq!(data, crop(&a, w * 4, r));
        // The same frame again: nothing is sent (the next UPDATE is the next change).
        frame(&mut g, &a);
    }
    // Two changes far apart are two UPDATEs.
    paint(&mut a, w, (10, 10, 4, 4), 21);
    paint(&mut a, w, (200, 150, 8, 2), 23);
    frame(&mut g, &a);
    let first = next_update(&g);
    let second = next_update(&g);
    assert_eq!((first.1, first.2, first.3, first.4), (10, 10, 4, 4));
    assert_eq!((second.1, second.2, second.3, second.4), (200, 150, 8, 2));
    assert_eq!(second.5, crop(&a, w * 4, (200, 150, 8, 2)));
    // A flip to another resource of the same size: only where it differs from what is shown.
    let mut b = a.clone();
    paint(&mut b, w, (250, 20, 5, 5), 31);
    resource_with(&mut g, 2, B8G8R8X8, w, h, &b);
    assert_eq!(g.set_scanout(0, 2, whole), OK_NODATA);
    assert_eq!(g.transfer(2, whole, w * 4), OK_NODATA);
    assert_eq!(g.flush(2, whole), OK_NODATA);
    let (_, x, y, uw, uh, data) = next_update(&g);
    assert_eq!((x, y, uw, uh), (250, 20, 5, 5), "flip to 2");
    assert_eq!(data, crop(&b, w * 4, (250, 20, 5, 5)));
}

/// A frontend slow to read its display socket (QEMU's main loop drawing its window) does not
/// hold up the guest's flushes: 40 page flips of 1.2 MB frames are answered while nothing is
/// read, the frames QEMU could not have shown are merged, and once it reads again the picture
/// it builds from the UPDATEs is the last frame, pixel for pixel.
#[test]
fn a_frontend_slow_to_read_does_not_hold_up_flushes() {
    let (w, h) = (640u32, 480u32);
    let whole = (0, 0, w, h);
    let (_b, mut g) = start(&["--display", "640x480"]);
    let frames = [pattern(w, h, 1), pattern(w, h, 2)];
    resource_with(&mut g, 1, B8G8R8X8, w, h, &frames[0]);
    resource_with(&mut g, 2, B8G8R8X8, w, h, &frames[1]);
    let flip = |g: &mut Gpu, id: u32| {
        assert_eq!(g.set_scanout(0, id, whole), OK_NODATA);
        assert_eq!(g.transfer(id, whole, w * 4), OK_NODATA);
        assert_eq!(g.flush(id, whole), OK_NODATA);
    };
    flip(&mut g, 1);
    let mut shown = next_update(&g).5;
    assert!(shown == frames[0]);
    g.display().pause(true);
    let t = std::time::Instant::now();
    for i in 0..40u32 {
        flip(&mut g, 2 - i % 2);
    }
    let took = t.elapsed();
    g.display().pause(false);
    // The last flip showed resource 1 (i = 39).
    let mut updates = 0;
    while let Some((x, y, uw, uh, data)) =
        g.display()
            .wait_for(std::time::Duration::from_millis(500), |e| match e {
                DisplayEvent::Update {
                    x,
                    y,
                    width,
                    height,
                    data,
                    ..
                } => Some((*x, *y, *width, *height, data.clone())),
                _ => None,
            })
    {
        updates += 1;
        for row in 0..uh {
            let s = ((y + row) * w * 4 + x * 4) as usize;
            let n = (uw * 4) as usize;
            shown[s..s + n].copy_from_slice(&data[(row * uw * 4) as usize..][..n]);
        }
    }
    eprintln!("40 flips in {took:?} with the display socket unread; {updates} UPDATEs after");
    assert!(
        took < std::time::Duration::from_secs(5),
        "flushes waited for the frontend: {took:?}"
    );
    assert!(updates < 40, "{updates} UPDATEs: nothing merged");
    assert!(
        shown == frames[0],
        "the frontend's picture is not the last frame"
    );
}
