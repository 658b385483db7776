//! Regression tests for the classes of bugs QEMU's C vhost-user-gpu and virtio-gpu have had
//! CVEs for, each against the real binary:
//! - memory leaked per command (CVE-2021-3544: vhost-user-gpu leaks in several commands);
//! - uninitialised bytes returned to the guest (CVE-2021-3545: GET_CAPSET_INFO reply);
//! - out-of-bounds writes sized by the capset (CVE-2021-3546: GET_CAPSET);
//! - integer overflows in resource sizes and transfer rectangles (CVE-2021-3546 family,
//!   virtio-gpu's 2D create/transfer overflows) and unbounded backing-entry allocations.
//!
//! Every reply is checked byte for byte: its used length is exactly the reply's size, the
//! padding is zero, and nothing past the reply (nor past the buffer the guest gave) is written.

mod common;

use common::*;
use guest_tests::display::DisplayEvent;
use guest_tests::frontend::ConnectOptions;
use guest_tests::wire::*;
use guest_tests::{Backend, BackendOptions, Gpu};
use std::time::Duration;

fn start_virgl() -> (Backend, Gpu) {
    let b = Backend::start(&BackendOptions {
        args: ["--virgl"].map(String::from).to_vec(),
    });
    let g = Gpu::connect(&b, &ConnectOptions::default());
    (b, g)
}

/// Checks a reply area from `request_guarded`: `used` bytes written, they start with a header
/// of `code` whose flags, fence, context, ring and padding are zero, and everything after is
/// untouched.
fn check_reply(what: &str, used: u32, area: &[u8], code: u32, size: usize) {
    assert_eq!(used as usize, size, "{what}: used length");
    assert_eq!(le32(area, 0), code, "{what}: code");
    assert_eq!(
        &area[4..24],
        &[0u8; 20],
        "{what}: header flags/fence/ctx/ring/padding"
    );
    assert!(
        area[size..].iter().all(|&b| b == 0xee),
        "{what}: bytes past the {size}-byte reply were written"
    );
}

#[test]
fn leak_per_command_resident_memory_stays_flat_2d() {
    let (mut b, mut g) = start(&["--display", "64x64"]);
    let px = pattern(64, 64, 1);
    let cycle = |g: &mut Gpu| {
        resource_with(g, 7, B8G8R8X8, 64, 64, &px);
        assert_eq!(g.set_scanout(0, 7, (0, 0, 64, 64)), OK_NODATA);
        assert_eq!(g.transfer(7, (0, 0, 64, 64), 256), OK_NODATA);
        assert_eq!(g.flush(7, (0, 0, 64, 64)), OK_NODATA);
        assert_eq!(g.update_cursor(0, 1, 1, 7, (0, 0)), OK_NODATA);
        assert_eq!(g.assign_uuid(7).code(), OK_RESOURCE_UUID);
        assert_eq!(g.detach_backing(7), OK_NODATA);
        assert_eq!(g.set_scanout(0, 0, (0, 0, 0, 0)), OK_NODATA);
        assert_eq!(g.unref(7), OK_NODATA);
        // Failing commands must not leak either.
        assert_eq!(g.create_2d(0, B8G8R8X8, 8, 8), ERR_INVALID_RESOURCE_ID);
        assert_eq!(g.transfer(99, (0, 0, 1, 1), 4), ERR_INVALID_RESOURCE_ID);
        assert_eq!(
            g.ctrl_code(Msg::cmd(RESOURCE_ATTACH_BACKING).u32(99).u32(0x7fff_ffff)),
            ERR_INVALID_PARAMETER
        );
        assert_eq!(g.edid(5).code(), ERR_INVALID_SCANOUT_ID);
        assert_eq!(g.display_info().code(), OK_DISPLAY_INFO);
        // The frontend keeps up (a frontend that falls behind is the next test's): the
        // display channel's queue is empty at the end of each cycle, so what stays is what
        // the commands kept.
        wait_disabled(g);
    };
    for _ in 0..300 {
        cycle(&mut g);
    }
    let warm = b.settled_rss_anon_kib();
    for _ in 0..3000 {
        cycle(&mut g);
    }
    let now = b.rss_anon_kib();
    let after = b.settled_rss_anon_kib();
    eprintln!("2D: resident {warm} KiB warm, {now} KiB at the end, {after} KiB settled");
    assert!(
        after <= warm + 1024,
        "resident memory grew from {warm} KiB to {after} KiB over 3000 cycles"
    );
    still_serves(&mut g, &mut b);
}

/// Waits for the display channel's SCANOUT that disables scanout 0 (the end of a cycle).
fn wait_disabled(g: &Gpu) {
    g.display()
        .wait_for(Duration::from_secs(10), |e| {
            matches!(
                e,
                DisplayEvent::Scanout {
                    id: 0,
                    width: 0,
                    ..
                }
            )
            .then_some(())
        })
        .expect("the display channel's SCANOUT disabling scanout 0");
}

/// A frontend that stops reading its display channel lets the backend's queue grow (bounded:
/// `outbox::LIMIT` bytes, `outbox::MAX_QUEUED` messages). Once it reads again and the backlog
/// is sent, the backlog's memory is handed back: without that, glibc kept the freed cursor
/// images and updates resident (9 MiB after 250 stalled cycles here, for good).
#[test]
fn a_stalled_frontends_display_backlog_is_given_back_once_sent() {
    let (mut b, mut g) = start(&["--display", "64x64"]);
    let px = pattern(64, 64, 1);
    let cycle = |g: &mut Gpu| {
        resource_with(g, 7, B8G8R8X8, 64, 64, &px);
        assert_eq!(g.set_scanout(0, 7, (0, 0, 64, 64)), OK_NODATA);
        assert_eq!(g.transfer(7, (0, 0, 64, 64), 256), OK_NODATA);
        assert_eq!(g.flush(7, (0, 0, 64, 64)), OK_NODATA);
        assert_eq!(g.update_cursor(0, 1, 1, 7, (0, 0)), OK_NODATA);
        assert_eq!(g.detach_backing(7), OK_NODATA);
        assert_eq!(g.set_scanout(0, 0, (0, 0, 0, 0)), OK_NODATA);
        assert_eq!(g.unref(7), OK_NODATA);
    };
    for _ in 0..100 {
        cycle(&mut g);
        wait_disabled(&g);
    }
    let warm = b.settled_rss_anon_kib();
    g.display().pause(true);
    for _ in 0..250 {
        cycle(&mut g);
    }
    let stalled = b.rss_anon_kib();
    g.display().pause(false);
    // Everything queued arrives, in order: the last message is the last cycle's disable.
    let mut disables = 0;
    while disables < 250 {
        wait_disabled(&g);
        disables += 1;
    }
    let after = b.settled_rss_anon_kib();
    eprintln!("display backlog: {warm} KiB before, {stalled} KiB stalled, {after} KiB after");
    assert!(
        stalled >= warm + 4096,
        "the stall did not queue enough to show anything ({warm} -> {stalled} KiB)"
    );
    assert!(
        after <= warm + 1024,
        "the backlog stayed resident: {warm} KiB before, {stalled} KiB stalled, {after} KiB after"
    );
    still_serves(&mut g, &mut b);
}

#[test]
fn leak_per_command_resident_memory_stays_flat_virgl() {
    let (mut b, mut g) = start_virgl();
    // VIRGL2's size as this virglrenderer reports it (1376 bytes in 0.10.4, 1384 in 1.1).
    let virgl2_size = le32(&g.capset_info(1).0, 32);
    let cycle = |g: &mut Gpu| {
        assert_eq!(g.ctx_create(3, 0, "leak"), OK_NODATA);
        assert_eq!(g.create_3d(9, 2, 1, 2, 64, 64, 1, 0), OK_NODATA);
        assert_eq!(g.ctx_attach(3, 9), OK_NODATA);
        assert_eq!(g.capset(2, 2, virgl2_size).code(), OK_CAPSET);
        assert_eq!(g.capset_info(0).code(), OK_CAPSET_INFO);
        assert_eq!(g.capset_info(7).code(), ERR_INVALID_PARAMETER);
        assert_eq!(
            g.ctrl(Gpu::submit_msg(Msg::hdr(SUBMIT_3D, 0, 0, 3, 0), &[]), 24)
                .code(),
            OK_NODATA
        );
        assert_eq!(g.ctx_detach(3, 9), OK_NODATA);
        assert_eq!(g.unref(9), OK_NODATA);
        assert_eq!(g.ctx_destroy(3), OK_NODATA);
        assert_eq!(g.ctx_destroy(3), ERR_INVALID_CONTEXT_ID);
    };
    for _ in 0..200 {
        cycle(&mut g);
    }
    let warm = b.settled_rss_anon_kib();
    for _ in 0..2000 {
        cycle(&mut g);
    }
    let after = b.settled_rss_anon_kib();
    assert!(
        after <= warm + 4096,
        "resident memory grew from {warm} KiB to {after} KiB over 2000 cycles"
    );
    still_serves(&mut g, &mut b);
}

#[test]
fn no_uninitialised_or_stray_bytes_in_any_reply() {
    let (mut b, mut g) = start(&["--display", "640x480"]);
    // GET_DISPLAY_INFO: 24 + 16 * 24 bytes; scanouts past the first all zero.
    let (used, area) = g.request_guarded(&Msg::cmd(GET_DISPLAY_INFO).0, 1024);
    check_reply("display info", used, &area, OK_DISPLAY_INFO, 408);
    assert_eq!(
        &area[24 + 8..24 + 20],
        &[128, 2, 0, 0, 224, 1, 0, 0, 1, 0, 0, 0]
    );
    assert!(area[48..408].iter().all(|&x| x == 0), "disabled scanouts");
    // GET_EDID: 24 + 8 + 1024 bytes; the padding and the bytes past the EDID are zero.
    let (used, area) = g.request_guarded(&Msg::cmd(GET_EDID).u32(0).u32(0).0, 2048);
    check_reply("edid", used, &area, OK_EDID, 1056);
    let size = le32(&area, 24) as usize;
    assert_eq!(le32(&area, 28), 0, "edid padding");
    assert!(
        area[32 + size..1056].iter().all(|&x| x == 0),
        "past the EDID"
    );
    // RESOURCE_ASSIGN_UUID: 24 + 16.
    assert_eq!(g.create_2d(5, B8G8R8X8, 4, 4), OK_NODATA);
    let (used, area) = g.request_guarded(&Msg::cmd(RESOURCE_ASSIGN_UUID).u32(5).u32(0).0, 100);
    check_reply("uuid", used, &area, OK_RESOURCE_UUID, 40);
    // Error replies are a bare 24-byte header, whatever room the guest gave.
    for (what, req) in [
        ("bad edid scanout", Msg::cmd(GET_EDID).u32(9).u32(0)),
        (
            "bad uuid resource",
            Msg::cmd(RESOURCE_ASSIGN_UUID).u32(77).u32(0),
        ),
        ("2D capset info", Msg::cmd(GET_CAPSET_INFO).u32(0).u32(0)),
        ("unknown command", Msg::cmd(0x0999)),
    ] {
        let (used, area) = g.request_guarded(&req.0, 512);
        assert_eq!(used, 24, "{what}");
        assert!(
            le32(&area, 0) >= ERR_UNSPEC,
            "{what}: {:#x}",
            le32(&area, 0)
        );
        assert_eq!(&area[4..24], &[0u8; 20], "{what}: header");
        assert!(area[24..].iter().all(|&x| x == 0xee), "{what}: stray bytes");
    }
    // A fenced command echoes exactly its fence fields, nothing else.
    let (used, area) = g.request_guarded(
        &Msg::hdr(GET_DISPLAY_INFO, FLAG_FENCE, 0x1122_3344_5566_7788, 0, 0).0,
        408,
    );
    assert_eq!(used, 408);
    assert_eq!(
        resp_hdr(&area),
        (OK_DISPLAY_INFO, FLAG_FENCE, 0x1122_3344_5566_7788, 0, 0)
    );
    assert_eq!(&area[21..24], &[0, 0, 0], "header padding");
    still_serves(&mut g, &mut b);
}

#[test]
fn capset_replies_are_zero_padded_and_never_written_past_the_guest_buffer() {
    let (mut b, mut g) = start_virgl();
    // VIRGL and VIRGL2, and VENUS where a Vulkan driver is found (the Debian 13 stack).
    let n = g.conn.config[3];
    assert!(n == 2 || n == 3, "num_capsets {n}");
    for index in 0..n {
        let (used, area) = g.request_guarded(&Msg::cmd(GET_CAPSET_INFO).u32(index).u32(0).0, 200);
        check_reply("capset info", used, &area, OK_CAPSET_INFO, 40);
        assert_eq!(le32(&area, 36), 0, "capset info padding");
        let (id, max_size) = (le32(&area, 24), le32(&area, 32) as usize);
        let req = Msg::cmd(GET_CAPSET).u32(id).u32(0).0;
        // A buffer one byte short: nothing at all is written (no partial capset).
        let (used, area) = g.request_guarded(&req, (24 + max_size - 1) as u32);
        assert_eq!(used, 0, "short buffer: used");
        assert!(area.iter().all(|&x| x == 0xee), "short buffer written to");
        // Exactly the size, and a bigger buffer: exactly 24 + max_size bytes.
        for room in [24 + max_size, 24 + max_size + 4096] {
            let (used, area) = g.request_guarded(&req, room as u32);
            check_reply("capset", used, &area, OK_CAPSET, 24 + max_size);
        }
    }
    // Capset ids and indexes out of range: a bare error, no data.
    for req in [
        Msg::cmd(GET_CAPSET_INFO).u32(n).u32(0),
        Msg::cmd(GET_CAPSET_INFO).u32(u32::MAX).u32(0),
        Msg::cmd(GET_CAPSET).u32(0).u32(0),
        Msg::cmd(GET_CAPSET).u32(u32::MAX).u32(1),
        Msg::cmd(GET_CAPSET).u32(2).u32(u32::MAX),
    ] {
        let (used, area) = g.request_guarded(&req.0, 4096);
        assert_eq!((used, le32(&area, 0)), (24, ERR_INVALID_PARAMETER));
        assert!(area[24..].iter().all(|&x| x == 0xee));
    }
    still_serves(&mut g, &mut b);
}

#[test]
fn integer_overflows_in_sizes_and_rectangles_are_refused() {
    let (mut b, mut g) = start(&["--display", "64x64"]);
    // width * height * 4 wraps 32 bits to 0 (the classic 2D create overflow).
    for (w, h) in [(0x1_0000, 0x1_0000), (0x4000_0000, 4), (u32::MAX, u32::MAX)] {
        let code = g.create_2d(1, B8G8R8X8, w, h);
        expect_code(
            &mut g,
            &mut b,
            &format!("create {w}x{h}"),
            ERR_OUT_OF_MEMORY,
            code,
        );
    }
    let px = pattern(64, 64, 2);
    resource_with(&mut g, 2, B8G8R8X8, 64, 64, &px);
    for (what, r, offset) in [
        ("x + w wraps", (u32::MAX, 0, 2, 1), 0u64),
        ("y + h wraps", (0, u32::MAX, 1, 2), 0),
        ("w * 4 huge", (0, 0, 0x4000_0001, 1), 0),
        ("offset wraps", (0, 0, 64, 64), u64::MAX - 16),
        ("offset past backing", (0, 0, 64, 1), 64 * 64 * 4),
        ("last row past backing", (0, 63, 64, 1), 64 * 64 * 4 - 255),
    ] {
        let code = g.transfer_at(2, r, offset);
        expect_code(&mut g, &mut b, what, ERR_INVALID_PARAMETER, code);
    }
    for (what, r) in [
        ("flush x + w wraps", (1, 0, u32::MAX, 1)),
        ("flush y + h wraps", (0, 1, 1, u32::MAX)),
    ] {
        let code = g.flush(2, r);
        expect_code(&mut g, &mut b, what, ERR_INVALID_PARAMETER, code);
    }
    let code = g.set_scanout(0, 2, (u32::MAX - 1, 0, 4, 4));
    expect_code(
        &mut g,
        &mut b,
        "scanout x + w wraps",
        ERR_INVALID_PARAMETER,
        code,
    );
    // Backing entry counts: refused before the host allocates for them, again and again.
    let rss0 = b.rss_anon_kib();
    for n in [0x7fff_ffffu32, u32::MAX, 0x1000_0000] {
        for _ in 0..200 {
            assert_eq!(g.create_2d(3, B8G8R8X8, 4, 4), OK_NODATA);
            let code = g.ctrl_code(
                Msg::cmd(RESOURCE_ATTACH_BACKING)
                    .u32(3)
                    .u32(n)
                    .u64(0x1000)
                    .u32(16)
                    .u32(0),
            );
            assert_eq!(code, ERR_INVALID_PARAMETER, "nr_entries {n:#x}");
            assert_eq!(g.unref(3), OK_NODATA);
        }
    }
    let rss1 = b.rss_anon_kib();
    assert!(rss1 <= rss0 + 1024, "RSS {rss0} -> {rss1} KiB");
    still_serves(&mut g, &mut b);
}

#[test]
fn three_d_boxes_and_sizes_cannot_overflow() {
    let (mut b, mut g) = start_virgl();
    assert_eq!(g.ctx_create(1, 0, "ovf"), OK_NODATA);
    assert_eq!(g.create_3d(4, 2, 1, 2, 64, 64, 1, 0), OK_NODATA);
    assert_eq!(g.ctx_attach(1, 4), OK_NODATA);
    let transfer = |g: &mut Gpu, bx: [u32; 6], offset: u64, level: u32| {
        let hdr = Msg::hdr(TRANSFER_TO_HOST_3D, 0, 0, 1, 0);
        g.ctrl(Gpu::transfer_3d_msg(hdr, 4, bx, offset, level, 256), 24)
            .code()
    };
    for (what, bx, offset, level) in [
        ("x + w wraps", [u32::MAX, 0, 0, 2, 1, 1], 0u64, 0u32),
        ("y + h wraps", [0, u32::MAX, 0, 1, 2, 1], 0, 0),
        ("z + d wraps", [0, 0, u32::MAX, 1, 1, 2], 0, 0),
        ("box past the resource", [0, 0, 0, 65, 64, 1], 0, 0),
        ("level out of range", [0, 0, 0, 1, 1, 1], 0, 99),
    ] {
        let code = transfer(&mut g, bx, offset, level);
        assert_eq!(code, ERR_INVALID_PARAMETER, "{what}");
    }
    // Sizes whose byte count overflows u64 or passes --max-host-memory.
    for (w, h) in [(u32::MAX, u32::MAX), (0x10_0000, 0x10_0000)] {
        let code = g.create_3d(5, 2, 1, 2, w, h, 1, 0);
        assert!(
            code == ERR_OUT_OF_MEMORY || code == ERR_INVALID_PARAMETER,
            "create_3d {w}x{h}: {code:#x}"
        );
    }
    still_serves(&mut g, &mut b);
}
