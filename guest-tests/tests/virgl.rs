//! virgl (3D) on llvmpipe against the real binary: capsets, a real virgl command stream (clear,
//! blit) read back through TRANSFER_FROM_HOST_3D, fences on two rings, a 3D scanout, bad input.

mod common;

use common::*;
use guest_tests::driver::{Gpu, CONTROLQ};
use guest_tests::frontend::ConnectOptions;
use guest_tests::wire::virgl::*;
use guest_tests::wire::*;
use guest_tests::{Backend, BackendOptions, DisplayEvent};

fn start_virgl(args: &[&str]) -> (Backend, Gpu) {
    let mut v = vec!["--virgl".to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    let b = Backend::start(&BackendOptions { args: v });
    let g = Gpu::connect(&b, &ConnectOptions::default());
    (b, g)
}

const W: u32 = 64;
const H: u32 = 64;
const RGBA: [f32; 4] = [1.0, 0.5, 0.25, 1.0];

fn near(a: u8, b: u8) -> bool {
    a.abs_diff(b) <= 1
}

/// B, G, R, A bytes of RGBA above.
fn is_rgba(p: &[u8]) -> bool {
    near(p[0], 0x40) && near(p[1], 0x80) && p[2] == 0xff && p[3] == 0xff
}

fn is_blue(p: &[u8]) -> bool {
    p == [0xff, 0, 0, 0xff]
}

/// A render-target texture with backing, attached to `ctx`; returns its backing entries.
fn target(g: &mut Gpu, ctx: u32, id: u32) -> Vec<(u64, u32)> {
    let bind = BIND_RENDER_TARGET | BIND_SAMPLER_VIEW;
    assert_eq!(
        g.create_3d(id, PIPE_TEXTURE_2D, FORMAT_B8G8R8A8_UNORM, bind, W, H, 1, 0),
        OK_NODATA
    );
    let entries = g.scattered_backing(&vec![0u8; (W * H * 4) as usize]);
    assert_eq!(g.attach_backing(id, &entries), OK_NODATA);
    assert_eq!(g.ctx_attach(ctx, id), OK_NODATA);
    entries
}

/// TRANSFER_FROM_HOST_3D (fenced, so the reply means the pixels are in guest memory), then
/// the backing's bytes.
fn read_back(g: &mut Gpu, ctx: u32, id: u32, entries: &[(u64, u32)], fence: u64) -> Vec<u8> {
    let m = Gpu::transfer_3d_msg(
        Msg::hdr(TRANSFER_FROM_HOST_3D, FLAG_FENCE, fence, ctx, 0),
        id,
        [0, 0, 0, W, H, 1],
        0,
        0,
        W * 4,
    );
    let r = g.ctrl(m, 24);
    assert_eq!(resp_hdr(&r.0), (OK_NODATA, FLAG_FENCE, fence, ctx, 0));
    entries
        .iter()
        .flat_map(|&(a, l)| g.read(a, l as usize))
        .collect()
}

#[test]
fn features_config_and_capsets_match_virglrenderer() {
    let (_b, mut g) = start_virgl(&[]);
    let f = g.conn.device_features;
    assert_ne!(f & F_VIRGL, 0, "{f:#x}");
    assert_ne!(f & F_CONTEXT_INIT, 0, "{f:#x}");
    assert_ne!(f & F_RESOURCE_BLOB, 0, "blobs offered with virgl");
    // What virglrenderer reports in this process, for comparison.
    let mut local = virgl_bridge::VirglRenderer::new(&Default::default()).expect("virgl here");
    let caps = virgl_bridge::Renderer::capsets(&local);
    assert_eq!(g.conn.config[3], caps.len() as u32, "num_capsets");
    assert_eq!(caps.len(), 2);
    for (i, c) in caps.iter().enumerate() {
        let r = g.capset_info(i as u32);
        assert_eq!(r.code(), OK_CAPSET_INFO);
        assert_eq!(
            [
                le32(&r.0, 24),
                le32(&r.0, 28),
                le32(&r.0, 32),
                le32(&r.0, 36)
            ],
            [c.id, c.max_version, c.max_size, 0]
        );
        let data = g.capset(c.id, c.max_version, c.max_size);
        assert_eq!(data.code(), OK_CAPSET);
        assert_eq!(data.0.len(), 24 + c.max_size as usize);
        let want = virgl_bridge::Renderer::capset(&mut local, c.id, c.max_version).unwrap();
        assert!(data.0[24..] == want[..], "capset {} data differs", c.id);
    }
    assert_eq!(g.capset_info(2).code(), ERR_INVALID_PARAMETER);
    assert_eq!(
        g.capset(2, 3, 2000).code(),
        ERR_INVALID_PARAMETER,
        "version above max"
    );
    // Linux asks with version 0 (Mesa's virgl winsys never sets one): the same bytes.
    let v0 = g.capset(2, 0, 2000);
    assert_eq!(
        v0.code(),
        OK_CAPSET,
        "version 0 (what the Linux driver sends)"
    );
    assert!(v0.0[24..] == g.capset(2, 2, 2000).0[24..], "version 0 data");
    assert_eq!(
        g.capset(4, 1, 2000).code(),
        ERR_INVALID_PARAMETER,
        "venus not offered"
    );
    // A reply buffer too small for the capset gets nothing.
    assert_eq!(g.capset(2, 2, 100).0.len(), 0);
}

#[test]
fn clear_and_blit_read_back_through_transfer_from_host() {
    let (_b, mut g) = start_virgl(&[]);
    assert_eq!(g.ctx_create(1, 0, "harness"), OK_NODATA);
    let a = target(&mut g, 1, 10);
    let b = target(&mut g, 1, 11);
    let r = g.ctrl(
        Gpu::submit_msg(Msg::hdr(SUBMIT_3D, 0, 0, 1, 0), &clear(1, 10, RGBA)),
        24,
    );
    assert_eq!(r.code(), OK_NODATA);
    let px = read_back(&mut g, 1, 10, &a, 1);
    assert!(
        px.chunks(4).all(is_rgba),
        "clear color; first pixel {:?}",
        &px[..4]
    );

    // Something that is not a clear: blit a 16x16 square of A into B (cleared blue) at (8, 40).
    let mut cmds = clear(2, 11, [0.0, 0.0, 1.0, 1.0]);
    cmds.extend(blit(11, 10, (0, 0, 16, 16), (8, 40)));
    assert_eq!(
        g.ctrl(Gpu::submit_msg(Msg::hdr(SUBMIT_3D, 0, 0, 1, 0), &cmds), 24)
            .code(),
        OK_NODATA
    );
    let px = read_back(&mut g, 1, 11, &b, 2);
    for y in 0..H {
        for x in 0..W {
            let p = &px[((y * W + x) * 4) as usize..][..4];
            let inside = (8..24).contains(&x) && (40..56).contains(&y);
            assert!(
                if inside { is_rgba(p) } else { is_blue(p) },
                "pixel ({x},{y}) = {p:?}"
            );
        }
    }
}

#[test]
fn fences_on_two_rings_complete_in_order_and_none_are_lost() {
    let (_b, mut g) = start_virgl(&[]);
    // A context on the VIRGL2 capset (context_init), whose rings have their own timelines.
    assert_eq!(g.ctx_create(3, 2, "rings"), OK_NODATA);
    let mut next = [1u64, 1u64];
    let mut seen = [0u64, 0u64];
    let mut total = 0;
    for _batch in 0..5 {
        let mut sent = std::collections::HashMap::new();
        for i in 0..100 {
            let ring = (i % 2) as u8;
            let id = next[ring as usize];
            next[ring as usize] += 1;
            let hdr = Msg::hdr(SUBMIT_3D, FLAG_FENCE | FLAG_INFO_RING_IDX, id, 3, ring);
            let (head, reply) = g.send(CONTROLQ, &Gpu::submit_msg(hdr, &[]).0, 24);
            sent.insert(head, (ring, id, reply));
        }
        for u in g.collect(CONTROLQ, 100) {
            let (ring, id, reply) = sent.remove(&u.head).expect("a reply for a chain we sent");
            let r = g.read(reply, 24);
            assert_eq!(
                resp_hdr(&r),
                (OK_NODATA, FLAG_FENCE | FLAG_INFO_RING_IDX, id, 3, ring)
            );
            assert!(
                id > seen[ring as usize],
                "ring {ring}: fence {id} after {}",
                seen[ring as usize]
            );
            seen[ring as usize] = id;
            total += 1;
        }
        assert!(sent.is_empty());
    }
    assert_eq!(total, 500);
    assert_eq!(seen, [250, 250]);
}

#[test]
fn destroying_a_context_releases_its_pending_fences() {
    let (mut b, mut g) = start_virgl(&[]);
    assert_eq!(g.ctx_create(4, 2, "doomed"), OK_NODATA);
    let mut heads = Vec::new();
    for id in 1..=20u64 {
        let hdr = Msg::hdr(SUBMIT_3D, FLAG_FENCE | FLAG_INFO_RING_IDX, id, 4, 1);
        heads.push(g.send(CONTROLQ, &Gpu::submit_msg(hdr, &[]).0, 24).0);
    }
    let (h, _) = g.send(CONTROLQ, &Msg::hdr(CTX_DESTROY, 0, 0, 4, 0).0, 24);
    heads.push(h);
    let used = g.collect(CONTROLQ, heads.len());
    assert_eq!(used.len(), heads.len());
    assert_eq!(
        g.ctx_attach(4, 1),
        ERR_INVALID_CONTEXT_ID,
        "context is gone"
    );
    assert!(b.alive());
}

#[test]
fn a_3d_scanout_reaches_the_display_channel() {
    let (_b, mut g) = start_virgl(&[]);
    assert_eq!(g.ctx_create(1, 0, "scanout"), OK_NODATA);
    target(&mut g, 1, 10);
    target(&mut g, 1, 11);
    let mut cmds = clear(1, 10, RGBA);
    cmds.extend(clear(2, 11, [0.0, 0.0, 1.0, 1.0]));
    cmds.extend(blit(11, 10, (0, 0, 16, 16), (8, 40)));
    let r = g.ctrl(
        Gpu::submit_msg(Msg::hdr(SUBMIT_3D, FLAG_FENCE, 9, 1, 0), &cmds),
        24,
    );
    assert_eq!(resp_hdr(&r.0), (OK_NODATA, FLAG_FENCE, 9, 1, 0));
    assert_eq!(g.set_scanout(0, 11, (0, 0, W, H)), OK_NODATA);
    assert_eq!(g.flush(11, (0, 0, W, H)), OK_NODATA);
    let (id, x, y, w, h, data) = next_update(&g);
    assert_eq!((id, x, y, w, h), (0, 0, 0, W, H));
    // Rows come in the resource's order whatever its Y_0_TOP flag (a real Mesa guest's EGL
    // window surfaces, created without it, are top row first): the square blitted at rows
    // 40..56 shows at display rows 40..56.
    for yy in 0..H {
        for xx in 0..W {
            let p = &data[((yy * W + xx) * 4) as usize..][..4];
            let inside = (8..24).contains(&xx) && (40..56).contains(&yy);
            assert!(
                if inside { is_rgba(p) } else { is_blue(p) },
                "display pixel ({xx},{yy}) = {p:?}"
            );
        }
    }
    // The square turns green (the frontend is sent changes only); a partial flush of the
    // square's area alone.
    let mut cmds = clear(3, 10, [0.0, 1.0, 0.0, 1.0]);
    cmds.extend(blit(11, 10, (0, 0, 16, 16), (8, 40)));
    let r = g.ctrl(Gpu::submit_msg(Msg::hdr(SUBMIT_3D, 0, 0, 1, 0), &cmds), 24);
    assert_eq!(r.code(), OK_NODATA);
    assert_eq!(g.flush(11, (8, 40, 16, 16)), OK_NODATA);
    let (_, x, y, w, h, data) = next_update(&g);
    assert_eq!((x, y, w, h), (8, 40, 16, 16));
    let is_green = |p: &[u8]| p == [0, 0xff, 0, 0xff];
    assert!(data.chunks(4).all(is_green));
    // The same resource as the cursor image: its top 64 rows, the same way up.
    assert_eq!(g.update_cursor(0, 3, 4, 11, (1, 2)), OK_NODATA);
    let image = g
        .display()
        .wait_for(WAIT, |e| match e {
            DisplayEvent::CursorUpdate { image, .. } => Some(image.clone()),
            _ => None,
        })
        .expect("cursor update");
    for yy in 0..64u32 {
        for xx in 0..64u32 {
            let p = &image[((yy * 64 + xx) * 4) as usize..][..4];
            let inside = (8..24).contains(&xx) && (40..56).contains(&yy);
            assert!(
                if inside { is_green(p) } else { is_blue(p) },
                "cursor pixel ({xx},{yy}) = {p:?}"
            );
        }
    }
    let again = g
        .display()
        .wait_for(std::time::Duration::from_millis(300), |e| match e {
            DisplayEvent::Scanout { .. } => Some(()),
            _ => None,
        });
    assert_eq!(again, None, "one SCANOUT only, sent before the updates");
}

#[test]
fn bad_3d_input_gets_the_right_codes() {
    let (mut b, mut g) = start_virgl(&["--max-host-memory", "64M"]);
    assert_eq!(g.ctx_create(1, 0, "ok"), OK_NODATA);
    let entries = target(&mut g, 1, 10);
    let got = g.ctx_create(0, 0, "zero");
    expect_code(&mut g, &mut b, "context id 0", ERR_INVALID_CONTEXT_ID, got);
    let got = g.ctx_create(1, 0, "dup");
    expect_code(
        &mut g,
        &mut b,
        "duplicate context",
        ERR_INVALID_CONTEXT_ID,
        got,
    );
    let got = g.ctx_create(2, 9, "capset 9");
    expect_code(
        &mut g,
        &mut b,
        "context on a capset not offered",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.ctx_create(2, 0x102, "reserved bits");
    expect_code(
        &mut g,
        &mut b,
        "context_init reserved bits",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.ctrl_code(Gpu::submit_msg(Msg::hdr(SUBMIT_3D, 0, 0, 9, 0), &[0]));
    expect_code(
        &mut g,
        &mut b,
        "submit on unknown context",
        ERR_INVALID_CONTEXT_ID,
        got,
    );
    let got = g.ctx_attach(9, 10);
    expect_code(
        &mut g,
        &mut b,
        "attach to unknown context",
        ERR_INVALID_CONTEXT_ID,
        got,
    );
    let got = g.ctx_attach(1, 99);
    expect_code(
        &mut g,
        &mut b,
        "attach unknown resource",
        ERR_INVALID_RESOURCE_ID,
        got,
    );
    let got = g.ctx_detach(1, 4242);
    expect_code(
        &mut g,
        &mut b,
        "detach unknown resource",
        ERR_INVALID_RESOURCE_ID,
        got,
    );
    let got = g.ctx_destroy(9);
    expect_code(
        &mut g,
        &mut b,
        "destroy unknown context",
        ERR_INVALID_CONTEXT_ID,
        got,
    );

    // SUBMIT_3D's size larger than the chain, and not whole words.
    let m = Msg::hdr(SUBMIT_3D, 0, 0, 1, 0).u32(4096).u32(0).u32(0);
    let got = g.ctrl_code(m);
    expect_code(
        &mut g,
        &mut b,
        "submit size beyond the chain",
        ERR_INVALID_PARAMETER,
        got,
    );
    let m = Msg::hdr(SUBMIT_3D, 0, 0, 1, 0).u32(u32::MAX).u32(0);
    let got = g.ctrl_code(m);
    expect_code(
        &mut g,
        &mut b,
        "submit size u32::MAX",
        ERR_INVALID_PARAMETER,
        got,
    );
    let m = Msg::hdr(SUBMIT_3D, 0, 0, 1, 0)
        .u32(3)
        .u32(0)
        .bytes(&[1, 2, 3]);
    let got = g.ctrl_code(m);
    expect_code(
        &mut g,
        &mut b,
        "submit of 3 bytes",
        ERR_INVALID_PARAMETER,
        got,
    );
    let m = Msg::hdr(SUBMIT_3D, 0, 0, 1, 0).u32(0).u32(2).u64(1).u64(2);
    let got = g.ctrl_code(m);
    expect_code(&mut g, &mut b, "in-fences", ERR_INVALID_PARAMETER, got);
    // A garbage stream: refused or ignored by virglrenderer, never a crash.
    let garbage: Vec<u32> = (0..64u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
    let got = g.ctrl_code(Gpu::submit_msg(Msg::hdr(SUBMIT_3D, 0, 0, 1, 0), &garbage));
    assert!(got == OK_NODATA || got == ERR_INVALID_PARAMETER, "{got:#x}");
    still_serves(&mut g, &mut b);

    // Transfers: box outside, wrapping, level, no backing, resource not in the context.
    let t = |ctx, id, bx, level| {
        Gpu::transfer_3d_msg(
            Msg::hdr(TRANSFER_TO_HOST_3D, 0, 0, ctx, 0),
            id,
            bx,
            0,
            level,
            W * 4,
        )
    };
    let got = g.ctrl_code(t(1, 10, [0, 0, 0, W + 1, H, 1], 0));
    expect_code(
        &mut g,
        &mut b,
        "box wider than the texture",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.ctrl_code(t(1, 10, [u32::MAX, 0, 0, 2, 1, 1], 0));
    expect_code(
        &mut g,
        &mut b,
        "box whose x + w wraps",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.ctrl_code(t(1, 10, [0, 0, 1, 1, 1, 1], 0));
    expect_code(
        &mut g,
        &mut b,
        "box past the only layer",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.ctrl_code(t(1, 10, [0, 0, 0, 1, 1, 1], 3));
    expect_code(
        &mut g,
        &mut b,
        "level above last_level",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.ctrl_code(t(9, 10, [0, 0, 0, 1, 1, 1], 0));
    expect_code(
        &mut g,
        &mut b,
        "transfer in an unknown context",
        ERR_INVALID_CONTEXT_ID,
        got,
    );
    assert_eq!(
        g.create_3d(
            12,
            PIPE_TEXTURE_2D,
            FORMAT_B8G8R8A8_UNORM,
            BIND_RENDER_TARGET,
            W,
            H,
            1,
            0
        ),
        OK_NODATA
    );
    let got = g.ctrl_code(t(1, 12, [0, 0, 0, 1, 1, 1], 0));
    expect_code(
        &mut g,
        &mut b,
        "resource not attached to the context",
        ERR_INVALID_PARAMETER,
        got,
    );
    assert_eq!(g.ctx_attach(1, 12), OK_NODATA);
    let got = g.ctrl_code(t(1, 12, [0, 0, 0, 1, 1, 1], 0));
    expect_code(
        &mut g,
        &mut b,
        "transfer without backing",
        ERR_INVALID_PARAMETER,
        got,
    );
    let m = Gpu::transfer_3d_msg(
        Msg::hdr(TRANSFER_TO_HOST_3D, 0, 0, 1, 0),
        10,
        [0, 0, 0, W, H, 1],
        u64::MAX,
        0,
        W * 4,
    );
    let got = g.ctrl_code(m);
    expect_code(
        &mut g,
        &mut b,
        "offset u64::MAX",
        ERR_INVALID_PARAMETER,
        got,
    );

    // Sizes: over the 64 MiB limit, and overflowing.
    let got = g.create_3d(
        13,
        PIPE_TEXTURE_2D,
        FORMAT_B8G8R8A8_UNORM,
        BIND_RENDER_TARGET,
        8192,
        8192,
        1,
        0,
    );
    expect_code(
        &mut g,
        &mut b,
        "256 MiB texture over a 64 MiB limit",
        ERR_OUT_OF_MEMORY,
        got,
    );
    let got = g.create_3d(
        13,
        3,
        FORMAT_B8G8R8A8_UNORM,
        BIND_RENDER_TARGET,
        u32::MAX,
        u32::MAX,
        u32::MAX,
        0,
    );
    expect_code(
        &mut g,
        &mut b,
        "overflowing 3D texture",
        ERR_OUT_OF_MEMORY,
        got,
    );
    let got = g.create_3d(
        10,
        PIPE_TEXTURE_2D,
        FORMAT_B8G8R8A8_UNORM,
        BIND_RENDER_TARGET,
        4,
        4,
        1,
        0,
    );
    expect_code(
        &mut g,
        &mut b,
        "duplicate resource id",
        ERR_INVALID_RESOURCE_ID,
        got,
    );

    // After all that, the context still renders.
    let r = g.ctrl(
        Gpu::submit_msg(Msg::hdr(SUBMIT_3D, 0, 0, 1, 0), &clear(7, 10, RGBA)),
        24,
    );
    assert_eq!(r.code(), OK_NODATA);
    let px = read_back(&mut g, 1, 10, &entries, 77);
    assert!(px.chunks(4).all(is_rgba));
}

#[test]
fn two_d_resources_through_virgl_show_exact_pixels() {
    // What the Linux driver's fbcon does on a virgl device: 2D resources and 2D transfers.
    let (_b, mut g) = start_virgl(&[]);
    let (w, h) = (256u32, 128u32);
    let mut px = pattern(w, h, 0);
    let entries = resource_with(&mut g, 1, B8G8R8X8, w, h, &px);
    assert_eq!(g.set_scanout(0, 1, (0, 0, w, h)), OK_NODATA);
    assert_eq!(g.transfer(1, (0, 0, w, h), w * 4), OK_NODATA);
    assert_eq!(g.flush(1, (0, 0, w, h)), OK_NODATA);
    let (_, x, y, uw, uh, data) = next_update(&g);
    assert_eq!((x, y, uw, uh), (0, 0, w, h));
    let bad = data
        .chunks(4)
        .zip(px.chunks(4))
        .position(|(a, b)| a[..3] != b[..3]);
    assert_eq!(bad, None, "first differing pixel (index) of the full frame");
    // fbcon-like damage in the middle, with the Linux offset.
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
    let (_, x, y, uw, uh, data) = next_update(&g);
    assert_eq!((x, y, uw, uh), (r.0, r.1, r.2, r.3));
    assert!(
        data.chunks(4).all(|p| p[..3] == [0x10, 0x20, 0x30]),
        "damage pixels {:?}",
        &data[..8]
    );
}

#[test]
fn a_new_frontend_gets_a_clean_virgl_device() {
    let b = Backend::start(&BackendOptions {
        args: vec!["--virgl".into()],
    });
    {
        let mut g = Gpu::connect(&b, &ConnectOptions::default());
        assert_eq!(g.ctx_create(1, 0, "first"), OK_NODATA);
        target(&mut g, 1, 10);
        let r = g.ctrl(
            Gpu::submit_msg(Msg::hdr(SUBMIT_3D, 0, 0, 1, 0), &clear(1, 10, RGBA)),
            24,
        );
        assert_eq!(r.code(), OK_NODATA);
    } // QEMU goes away with a context and a resource live in virglrenderer
    let mut g = Gpu::connect(&b, &ConnectOptions::default());
    // The same ids are free again, and rendering works.
    assert_eq!(g.ctx_create(1, 0, "second"), OK_NODATA);
    let e = target(&mut g, 1, 10);
    let px = read_back(&mut g, 1, 10, &e, 5);
    assert!(
        px.iter().all(|&b| b == 0),
        "a fresh resource, not the old one's pixels"
    );
    let r = g.ctrl(
        Gpu::submit_msg(Msg::hdr(SUBMIT_3D, 0, 0, 1, 0), &clear(1, 10, RGBA)),
        24,
    );
    assert_eq!(r.code(), OK_NODATA);
    assert!(read_back(&mut g, 1, 10, &e, 6).chunks(4).all(is_rgba));
    // A guest reset (rings stopped and restarted) drops contexts too.
    g.conn.stop_queues().unwrap();
    g.conn.start_queues(256).unwrap();
    assert_eq!(g.ctx_create(1, 0, "after reset"), OK_NODATA);
}

#[test]
fn guest_blob_scanout_shows_guest_memory_without_transfers() {
    let (_b, mut g) = start_virgl(&[]);
    // A 128x64 image with a 600-byte stride, 64 bytes into a blob of scattered pages.
    let (w, h, stride, offset) = (128u32, 64u32, 600u32, 64u32);
    let size = offset + stride * h;
    let (img, mut bytes) = strided_image(w, h, stride, offset, 5);
    let entries = g.scattered_backing(&bytes);
    assert_eq!(
        g.create_blob(0, 30, BLOB_MEM_GUEST, 2, 0, u64::from(size), &entries),
        OK_NODATA
    );
    assert_eq!(
        g.set_scanout_blob(0, 30, (0, 0, w, h), w, h, B8G8R8X8, stride, offset),
        OK_NODATA
    );
    let sc = g.display().wait_for(WAIT, |e| match e {
        DisplayEvent::Scanout { id, width, height } => Some((*id, *width, *height)),
        _ => None,
    });
    assert_eq!(sc, Some((0, w, h)));
    assert_eq!(g.flush(30, (0, 0, w, h)), OK_NODATA);
    let (_, x, y, uw, uh, data) = next_update(&g);
    assert_eq!((x, y, uw, uh), (0, 0, w, h));
    assert!(data == img, "blob image differs");
    // The guest writes its memory; a flush alone shows it (no transfer: the blob is the image).
    let r = (10, 20, 5, 3);
    for yy in r.1..r.1 + r.3 {
        for xx in r.0..r.0 + r.2 {
            let i = (offset + yy * stride + xx * 4) as usize;
            bytes[i..i + 4].copy_from_slice(&[1, 2, 3, 4]);
        }
    }
    g.write_backing(&entries, &bytes);
    assert_eq!(g.flush(30, (r.0, r.1, r.2, r.3)), OK_NODATA);
    let (_, x, y, uw, uh, data) = next_update(&g);
    assert_eq!((x, y, uw, uh), (r.0, r.1, r.2, r.3));
    assert!(data.chunks(4).all(|p| p == [1, 2, 3, 4]));
}

#[test]
fn bad_blob_input_gets_the_right_codes() {
    let (mut b, mut g) = start_virgl(&["--max-host-memory", "64M"]);
    let page = g.scattered_backing(&[0u8; 4096]);
    let got = g.create_blob(0, 31, BLOB_MEM_GUEST, 0, 0, 4096, &[(200 << 20, 4096)]);
    expect_code(
        &mut g,
        &mut b,
        "guest blob outside memory",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.create_blob(0, 31, BLOB_MEM_GUEST, 0, 0, 8192, &page);
    expect_code(
        &mut g,
        &mut b,
        "blob larger than its entries",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.create_blob(0, 31, BLOB_MEM_GUEST, 0, 0, 4096, &[]);
    expect_code(
        &mut g,
        &mut b,
        "guest blob without entries",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.create_blob(0, 31, 9, 0, 0, 4096, &page);
    expect_code(&mut g, &mut b, "blob_mem 9", ERR_INVALID_PARAMETER, got);
    let got = g.create_blob(0, 31, BLOB_MEM_GUEST, 0x80, 0, 4096, &page);
    expect_code(
        &mut g,
        &mut b,
        "unknown blob flags",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.create_blob(0, 31, BLOB_MEM_GUEST, 0, 0, 0, &page);
    expect_code(&mut g, &mut b, "blob of size 0", ERR_INVALID_PARAMETER, got);
    let got = g.create_blob(7, 31, BLOB_MEM_HOST3D, 0, 1, 4096, &[]);
    expect_code(
        &mut g,
        &mut b,
        "host blob in an unknown context",
        ERR_INVALID_CONTEXT_ID,
        got,
    );
    assert_eq!(g.ctx_create(1, 2, "blobs"), OK_NODATA);
    let got = g.create_blob(1, 31, BLOB_MEM_HOST3D, 0, 1, 1 << 40, &[]);
    expect_code(
        &mut g,
        &mut b,
        "host blob over the memory limit",
        ERR_OUT_OF_MEMORY,
        got,
    );
    let got = g.create_blob(1, 31, BLOB_MEM_HOST3D, 0, 12345, 4096, &[]);
    expect_code(
        &mut g,
        &mut b,
        "host blob of an object the context never made",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.ctrl_code(Msg::cmd(RESOURCE_MAP_BLOB).u32(31).u32(0).u64(0));
    expect_code(
        &mut g,
        &mut b,
        "map blob without host-visible memory",
        ERR_UNSPEC,
        got,
    );

    assert_eq!(
        g.create_blob(0, 32, BLOB_MEM_GUEST, 0, 0, 4096, &page),
        OK_NODATA
    );
    let got = g.set_scanout_blob(0, 32, (0, 0, 32, 32), 32, 32, B8G8R8X8, 128, 4);
    expect_code(
        &mut g,
        &mut b,
        "blob scanout 4 bytes past the blob",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.set_scanout_blob(0, 32, (0, 0, 32, 33), 32, 33, B8G8R8X8, 128, 0);
    expect_code(
        &mut g,
        &mut b,
        "blob scanout a row past the blob",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.set_scanout_blob(0, 32, (0, 0, 16, 16), 16, 16, B8G8R8X8, 32, 0);
    expect_code(
        &mut g,
        &mut b,
        "stride below width * 4",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.set_scanout_blob(0, 32, (0, 0, 16, 16), 16, 16, B8G8R8X8, u32::MAX, u32::MAX);
    expect_code(
        &mut g,
        &mut b,
        "stride and offset that overflow",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.set_scanout_blob(0, 32, (0, 0, 16, 16), 16, 16, 999, 64, 0);
    expect_code(&mut g, &mut b, "unknown format", ERR_INVALID_PARAMETER, got);
    let got = g.set_scanout_blob(0, 32, (8, 8, 16, 16), 16, 16, B8G8R8X8, 64, 0);
    expect_code(
        &mut g,
        &mut b,
        "rect outside the image",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.set_scanout_blob(3, 32, (0, 0, 16, 16), 16, 16, B8G8R8X8, 64, 0);
    expect_code(
        &mut g,
        &mut b,
        "scanout 3 of 1",
        ERR_INVALID_SCANOUT_ID,
        got,
    );
    assert_eq!(g.create_2d(33, B8G8R8X8, 16, 16), OK_NODATA);
    let got = g.set_scanout_blob(0, 33, (0, 0, 16, 16), 16, 16, B8G8R8X8, 64, 0);
    expect_code(
        &mut g,
        &mut b,
        "blob scanout of a non-blob",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.attach_backing(32, &page);
    expect_code(
        &mut g,
        &mut b,
        "attach backing to a blob",
        ERR_INVALID_PARAMETER,
        got,
    );
    let got = g.transfer(32, (0, 0, 1, 1), 64);
    expect_code(
        &mut g,
        &mut b,
        "2D transfer to a blob",
        ERR_INVALID_PARAMETER,
        got,
    );
    assert_eq!(
        g.set_scanout_blob(0, 32, (0, 0, 16, 16), 16, 16, B8G8R8X8, 64, 0),
        OK_NODATA
    );
    assert_eq!(g.flush(32, (0, 0, 16, 16)), OK_NODATA);
    assert_eq!(next_update(&g).5.len(), 16 * 16 * 4);
    assert_eq!(g.unref(32), OK_NODATA);
}

/// A 3D flush is answered at once and read back after the queue's batch, or before any later
/// command other than SUBMIT_3D: bad flushes still get their codes, and a flush followed by
/// the resource's UNREF still shows the frame, before the scanout goes off.
#[test]
fn a_3d_flush_is_read_back_before_anything_that_could_lose_it() {
    let (_b, mut g) = start_virgl(&[]);
    assert_eq!(g.ctx_create(1, 0, "deferred"), OK_NODATA);
    target(&mut g, 1, 10);
    target(&mut g, 1, 11);
    let mut cmds = clear(1, 10, RGBA);
    cmds.extend(clear(2, 11, [0.0, 0.0, 1.0, 1.0]));
    let r = g.ctrl(Gpu::submit_msg(Msg::hdr(SUBMIT_3D, 0, 0, 1, 0), &cmds), 24);
    assert_eq!(r.code(), OK_NODATA);
    assert_eq!(g.set_scanout(0, 11, (0, 0, W, H)), OK_NODATA);
    assert_eq!(g.flush(11, (0, 0, W, H)), OK_NODATA);
    let (_, _, _, w, h, data) = next_update(&g);
    assert_eq!((w, h), (W, H));
    assert!(data.chunks(4).all(is_blue));
    assert_eq!(g.flush(11, (0, 0, W + 1, H)), ERR_INVALID_PARAMETER);
    assert_eq!(g.flush(99, (0, 0, 1, 1)), ERR_INVALID_RESOURCE_ID);
    // Draw a square, flush it, and unref the resource in the same batch of chains.
    let cmds = blit(11, 10, (0, 0, 16, 16), (8, 40));
    let r = g.ctrl(Gpu::submit_msg(Msg::hdr(SUBMIT_3D, 0, 0, 1, 0), &cmds), 24);
    assert_eq!(r.code(), OK_NODATA);
    let heads = [
        g.send(
            CONTROLQ,
            &Msg::cmd(RESOURCE_FLUSH)
                .rect(8, 40, 16, 16)
                .u32(11)
                .u32(0)
                .0,
            24,
        )
        .0,
        g.send(CONTROLQ, &Msg::cmd(RESOURCE_UNREF).u32(11).u32(0).0, 24)
            .0,
    ];
    assert_eq!(g.collect(CONTROLQ, heads.len()).len(), heads.len());
    let first = g
        .display()
        .wait_for(WAIT, |e| match e {
            DisplayEvent::Update {
                x,
                y,
                width,
                height,
                data,
                ..
            } => Some(Some((*x, *y, *width, *height, data.clone()))),
            DisplayEvent::Scanout { .. } => Some(None),
            _ => None,
        })
        .expect("an event");
    let (x, y, w, h, data) = first.expect("the square's UPDATE before the scanout went off");
    assert_eq!((x, y, w, h), (8, 40, 16, 16));
    assert!(data.chunks(4).all(is_rgba));
}
