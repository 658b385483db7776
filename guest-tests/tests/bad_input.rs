//! Hostile input against the real binary: every case gets its error code (or a clean drop of a
//! chain that cannot hold a reply), and a valid command still works afterwards.

mod common;

use common::*;
use guest_tests::driver::{CONTROLQ, CURSORQ};
use guest_tests::virtqueue::Buf;
use guest_tests::wire::*;
use guest_tests::Gpu;

#[test]
fn malformed_chains() {
    let (mut b, mut g) = start(&[]);
    let got = g.ctrl_code(Msg::cmd(0x9999));
    expect_code(&mut g, &mut b, "unknown command type", ERR_UNSPEC, got);
    let got = g
        .request(CONTROLQ, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 24)
        .code();
    expect_code(
        &mut g,
        &mut b,
        "chain shorter than a header",
        ERR_UNSPEC,
        got,
    );
    let got = g.ctrl_code(Msg::cmd(SET_SCANOUT).u32(0).u32(0));
    expect_code(
        &mut g,
        &mut b,
        "SET_SCANOUT body cut short",
        ERR_UNSPEC,
        got,
    );
    let got = g.ctrl_code(Msg::cmd(RESOURCE_CREATE_2D).u32(1));
    expect_code(
        &mut g,
        &mut b,
        "RESOURCE_CREATE_2D body cut short",
        ERR_UNSPEC,
        got,
    );

    // A reply buffer too small for the reply: nothing is written, the chain is returned.
    let r = g.request(CONTROLQ, &Msg::cmd(GET_DISPLAY_INFO).0, 100);
    assert_eq!(r.0.len(), 0, "no partial reply");
    still_serves(&mut g, &mut b);
    let r = g.request(CONTROLQ, &Msg::cmd(GET_EDID).u32(0).u32(0).0, 24);
    assert_eq!(r.0.len(), 0);
    // No reply buffer at all.
    let r = g.request(CONTROLQ, &Msg::cmd(GET_DISPLAY_INFO).0, 0);
    assert_eq!(r.0.len(), 0);
    still_serves(&mut g, &mut b);

    // Descriptors pointing outside guest memory (128 MiB here).
    let far = Buf {
        addr: 1 << 40,
        len: 24,
        writable: false,
    };
    let reply = g.conn.mem.alloc(24, 16);
    let r = g.submit_raw(
        CONTROLQ,
        &[
            far,
            Buf {
                addr: reply,
                len: 24,
                writable: true,
            },
        ],
        reply,
    );
    assert_eq!(r.0.len(), 0);
    let wrap = Buf {
        addr: u64::MAX - 8,
        len: 24,
        writable: false,
    };
    let r = g.submit_raw(
        CONTROLQ,
        &[
            wrap,
            Buf {
                addr: reply,
                len: 24,
                writable: true,
            },
        ],
        reply,
    );
    assert_eq!(r.0.len(), 0);
    let req = g.conn.mem.alloc(24, 16);
    g.conn.mem.write(req, &Msg::cmd(GET_DISPLAY_INFO).0);
    let bad_reply = Buf {
        addr: (128 << 20) - 8,
        len: 408,
        writable: true,
    };
    let r = g.submit_raw(
        CONTROLQ,
        &[
            Buf {
                addr: req,
                len: 24,
                writable: false,
            },
            bad_reply,
        ],
        reply,
    );
    assert_eq!(r.0.len(), 0);
    still_serves(&mut g, &mut b);

    // 3D commands on the 2D renderer.
    let got = g.ctrl_code(Msg::cmd(CTX_CREATE).u32(4).u32(0).bytes(&[b'x'; 64]));
    expect_code(&mut g, &mut b, "CTX_CREATE on 2D", ERR_UNSPEC, got);
    let got = g.ctrl_code(Msg::cmd(GET_CAPSET_INFO).u32(0).u32(0));
    expect_code(
        &mut g,
        &mut b,
        "GET_CAPSET_INFO with no capsets",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.ctrl_code(Msg::cmd(GET_CAPSET).u32(1).u32(1));
    expect_code(
        &mut g,
        &mut b,
        "GET_CAPSET with no capsets",
        ERR_INVALID_PARAMETER,
        got,
    );
}

#[test]
fn resource_ids_formats_sizes_and_memory_limit() {
    let (mut b, mut g) = start(&["--max-host-memory", "8M"]);
    let got = g.create_2d(0, B8G8R8X8, 4, 4);
    expect_code(
        &mut g,
        &mut b,
        "resource id 0",
        ERR_INVALID_RESOURCE_ID,
        got,
    );
    assert_eq!(g.create_2d(1, B8G8R8X8, 4, 4), OK_NODATA);
    let got = g.create_2d(1, B8G8R8X8, 4, 4);
    expect_code(
        &mut g,
        &mut b,
        "duplicate resource id",
        ERR_INVALID_RESOURCE_ID,
        got,
    );
    let got = g.create_2d(2, 999, 4, 4);
    expect_code(&mut g, &mut b, "unknown format", ERR_INVALID_PARAMETER, got);
    let got = g.create_2d(2, B8G8R8X8, 0, 4);
    expect_code(&mut g, &mut b, "zero width", ERR_INVALID_PARAMETER, got);
    let got = g.create_2d(2, B8G8R8X8, 2048, 2048);
    expect_code(
        &mut g,
        &mut b,
        "16 MiB over an 8 MiB limit",
        ERR_OUT_OF_MEMORY,
        got,
    );
    let got = g.create_2d(2, B8G8R8X8, u32::MAX, u32::MAX);
    expect_code(
        &mut g,
        &mut b,
        "size that overflows 32 bits",
        ERR_OUT_OF_MEMORY,
        got,
    );
    // Filling the limit exactly works; one more byte's worth does not; freeing gives it back.
    assert_eq!(g.unref(1), OK_NODATA);
    assert_eq!(g.create_2d(3, B8G8R8X8, 1024, 2048), OK_NODATA);
    let got = g.create_2d(4, B8G8R8X8, 1, 1);
    assert_eq!(got, ERR_OUT_OF_MEMORY, "over the limit by 4 bytes");
    assert_eq!(g.unref(3), OK_NODATA);
    let got = g.unref(3);
    expect_code(
        &mut g,
        &mut b,
        "unref of a freed resource",
        ERR_INVALID_RESOURCE_ID,
        got,
    );
    assert_eq!(g.create_2d(4, B8G8R8X8, 1024, 2048), OK_NODATA);
}

#[test]
fn rectangles_offsets_and_scanouts() {
    let (mut b, mut g) = start(&[]);
    let px = pattern(64, 64, 1);
    resource_with(&mut g, 1, B8G8R8X8, 64, 64, &px);
    assert_eq!(g.create_2d(2, B8G8R8X8, 64, 64), OK_NODATA); // no backing

    let got = g.set_scanout(1, 1, (0, 0, 64, 64));
    expect_code(
        &mut g,
        &mut b,
        "scanout 1 of 1",
        ERR_INVALID_SCANOUT_ID,
        got,
    );
    let got = g.set_scanout(u32::MAX, 1, (0, 0, 64, 64));
    expect_code(
        &mut g,
        &mut b,
        "scanout u32::MAX",
        ERR_INVALID_SCANOUT_ID,
        got,
    );
    let got = g.set_scanout(0, 9, (0, 0, 64, 64));
    expect_code(
        &mut g,
        &mut b,
        "scanout of an unknown resource",
        ERR_INVALID_RESOURCE_ID,
        got,
    );
    let got = g.set_scanout(0, 1, (0, 0, 65, 64));
    expect_code(
        &mut g,
        &mut b,
        "scanout rect wider than the resource",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.set_scanout(0, 1, (0xffff_fff0, 0, 0x20, 64));
    expect_code(
        &mut g,
        &mut b,
        "scanout rect whose x + width wraps",
        ERR_INVALID_PARAMETER,
        got,
    );

    let got = g.transfer(1, (60, 0, 8, 8), 256);
    expect_code(
        &mut g,
        &mut b,
        "transfer rect outside",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.transfer(1, (0, 0xffff_fffe, 8, 4), 256);
    expect_code(
        &mut g,
        &mut b,
        "transfer rect whose y + height wraps",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.transfer_at(1, (0, 0, 8, 8), u64::MAX);
    expect_code(
        &mut g,
        &mut b,
        "transfer offset u64::MAX",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.transfer_at(1, (0, 0, 64, 64), 4096);
    expect_code(
        &mut g,
        &mut b,
        "transfer past the end of the backing",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.transfer(2, (0, 0, 8, 8), 256);
    expect_code(
        &mut g,
        &mut b,
        "transfer without backing",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.transfer(9, (0, 0, 8, 8), 256);
    expect_code(
        &mut g,
        &mut b,
        "transfer to an unknown resource",
        ERR_INVALID_RESOURCE_ID,
        got,
    );

    let got = g.flush(1, (0, 0, 64, 65));
    expect_code(
        &mut g,
        &mut b,
        "flush rect outside",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.flush(9, (0, 0, 1, 1));
    expect_code(
        &mut g,
        &mut b,
        "flush of an unknown resource",
        ERR_INVALID_RESOURCE_ID,
        got,
    );

    let got = g.edid(1).code();
    expect_code(
        &mut g,
        &mut b,
        "EDID of scanout 1 of 1",
        ERR_INVALID_SCANOUT_ID,
        got,
    );
    let got = g.update_cursor(3, 0, 0, 1, (0, 0));
    expect_code(
        &mut g,
        &mut b,
        "cursor on scanout 3",
        ERR_INVALID_SCANOUT_ID,
        got,
    );
    let got = g.update_cursor(0, 0, 0, 9, (0, 0));
    expect_code(
        &mut g,
        &mut b,
        "cursor from an unknown resource",
        ERR_INVALID_RESOURCE_ID,
        got,
    );
    let got = g.move_cursor(5, 0, 0);
    expect_code(
        &mut g,
        &mut b,
        "cursor move on scanout 5",
        ERR_INVALID_SCANOUT_ID,
        got,
    );
    // A cursor-queue request cut short.
    let got = g
        .request(CURSORQ, &Msg::cmd(UPDATE_CURSOR).u32(0).0, 24)
        .code();
    expect_code(&mut g, &mut b, "UPDATE_CURSOR cut short", ERR_UNSPEC, got);
}

#[test]
fn backing_lists() {
    let (mut b, mut g) = start(&[]);
    assert_eq!(g.create_2d(1, B8G8R8X8, 64, 64), OK_NODATA);
    let got = g.attach_backing(1, &[(200 << 20, 4096)]);
    expect_code(
        &mut g,
        &mut b,
        "backing outside guest memory",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.attach_backing(1, &[((128 << 20) - 100, 4096)]);
    expect_code(
        &mut g,
        &mut b,
        "backing running off the end of memory",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.attach_backing(1, &[(u64::MAX - 10, 4096)]);
    expect_code(
        &mut g,
        &mut b,
        "backing whose address wraps",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.attach_backing(9, &[(2 << 20, 4096)]);
    expect_code(
        &mut g,
        &mut b,
        "backing for an unknown resource",
        ERR_INVALID_RESOURCE_ID,
        got,
    );
    let got = g.attach_backing(1, &[]);
    expect_code(
        &mut g,
        &mut b,
        "backing with no entries",
        ERR_INVALID_PARAMETER,
        got,
    );
    // nr_entries far beyond the chain, and beyond any sane limit: refused before allocating.
    let m = Msg::cmd(RESOURCE_ATTACH_BACKING)
        .u32(1)
        .u32(0x7fff_ffff)
        .u64(2 << 20)
        .u32(4096)
        .u32(0);
    let got = g.ctrl_code(m);
    expect_code(
        &mut g,
        &mut b,
        "nr_entries 0x7fffffff",
        ERR_INVALID_PARAMETER,
        got,
    );
    let m = Msg::cmd(RESOURCE_ATTACH_BACKING)
        .u32(1)
        .u32(1000)
        .u64(2 << 20)
        .u32(4096)
        .u32(0);
    let got = g.ctrl_code(m);
    expect_code(
        &mut g,
        &mut b,
        "nr_entries 1000 with one entry in the chain",
        ERR_UNSPEC,
        got,
    );
    let got = g.detach_backing(1);
    expect_code(&mut g, &mut b, "detach without backing", ERR_UNSPEC, got);

    let px = pattern(64, 64, 4);
    let entries = g.scattered_backing(&px);
    assert_eq!(g.attach_backing(1, &entries), OK_NODATA);
    let got = g.attach_backing(1, &entries);
    expect_code(&mut g, &mut b, "second attach", ERR_UNSPEC, got);
    assert_eq!(g.detach_backing(1), OK_NODATA);
    let got = g.transfer(1, (0, 0, 64, 64), 256);
    expect_code(
        &mut g,
        &mut b,
        "transfer after detach",
        ERR_INVALID_PARAMETER,
        got,
    );
    // Re-attach works, and the scanout shows the pixels.
    assert_eq!(g.attach_backing(1, &entries), OK_NODATA);
    assert_eq!(g.set_scanout(0, 1, (0, 0, 64, 64)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, 64, 64), 256), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, 64, 64)), OK_NODATA);
    assert_eq!(next_update(&g).5, px);
    // Unref of a resource on a scanout disables the scanout.
    assert_eq!(g.unref(1), OK_NODATA);
    let sc = g.display().wait_for(WAIT, |e| match e {
        guest_tests::DisplayEvent::Scanout {
            id: 0,
            width: 0,
            height: 0,
        } => Some(()),
        _ => None,
    });
    assert!(sc.is_some(), "scanout disabled after unref");
}

#[test]
fn guest_error_logging_is_rate_limited() {
    let (mut b, mut g) = start(&[]);
    for _ in 0..300 {
        assert_eq!(g.unref(12345), ERR_INVALID_RESOURCE_ID);
    }
    still_serves(&mut g, &mut b);
    let log = b.log_text();
    let lines = log.lines().filter(|l| l.contains("RESOURCE_UNREF")).count();
    assert!(lines >= 1, "guest errors are logged:\n{log}");
    // 20 lines per 5 s window; the loop may straddle a window or two.
    assert!(lines <= 60, "{lines} log lines for 300 bad commands");
}

#[test]
fn resource_and_context_caps() {
    let (mut b, mut g) = start(&["--max-resources", "3"]);
    for id in 1..=3 {
        assert_eq!(g.create_2d(id, B8G8R8X8, 1, 1), OK_NODATA);
    }
    // still_serves needs a fourth resource, so check by hand here.
    assert_eq!(
        g.create_2d(4, B8G8R8X8, 1, 1),
        ERR_OUT_OF_MEMORY,
        "a 4th resource over --max-resources 3"
    );
    assert!(b.alive());
    assert_eq!(g.unref(2), OK_NODATA);
    assert_eq!(
        g.create_2d(4, B8G8R8X8, 1, 1),
        OK_NODATA,
        "room again after an unref"
    );

    // Contexts, on the virgl renderer.
    let mut v = guest_tests::Backend::start(&guest_tests::BackendOptions {
        args: ["--virgl", "--max-contexts", "2"]
            .map(String::from)
            .to_vec(),
    });
    let mut g = guest_tests::Gpu::connect(&v, &guest_tests::frontend::ConnectOptions::default());
    assert_eq!(g.ctx_create(1, 0, "a"), OK_NODATA);
    assert_eq!(g.ctx_create(2, 0, "b"), OK_NODATA);
    assert_eq!(
        g.ctx_create(3, 0, "c"),
        ERR_OUT_OF_MEMORY,
        "a 3rd context over --max-contexts 2"
    );
    assert_eq!(g.ctx_destroy(1), OK_NODATA);
    assert_eq!(
        g.ctx_create(3, 0, "c"),
        OK_NODATA,
        "room again after a destroy"
    );
    still_serves(&mut g, &mut v);
}

#[test]
fn backing_entry_and_submit_size_caps() {
    let (mut b, mut g) = start(&["--max-backing-entries", "4"]);
    assert_eq!(g.create_2d(1, B8G8R8X8, 64, 1), OK_NODATA);
    let base = g.conn.mem.alloc_pinned(256, 64);
    let entries = |n: u64| (0..n).map(|i| (base + i * 64, 64)).collect::<Vec<_>>();
    let code = g.attach_backing(1, &entries(5));
    expect_code(
        &mut g,
        &mut b,
        "5 entries over --max-backing-entries 4",
        ERR_INVALID_PARAMETER,
        code,
    );
    assert_eq!(g.attach_backing(1, &entries(4)), OK_NODATA, "4 entries fit");

    let mut v = guest_tests::Backend::start(&guest_tests::BackendOptions {
        args: ["--virgl", "--max-submit-size", "4K"]
            .map(String::from)
            .to_vec(),
    });
    let mut g = guest_tests::Gpu::connect(&v, &guest_tests::frontend::ConnectOptions::default());
    assert_eq!(g.ctx_create(1, 0, "s"), OK_NODATA);
    let submit = |g: &mut Gpu, words: usize| {
        g.ctrl(
            Gpu::submit_msg(Msg::hdr(SUBMIT_3D, 0, 0, 1, 0), &vec![0; words]),
            24,
        )
        .code()
    };
    assert_eq!(
        submit(&mut g, 1025),
        ERR_INVALID_PARAMETER,
        "4100 bytes over 4K"
    );
    assert_eq!(submit(&mut g, 0), OK_NODATA);
    still_serves(&mut g, &mut v);
}
