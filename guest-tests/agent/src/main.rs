//! The guest agent: runs inside the test guest (a Linux VM whose GPU is `vhost-gpu`) and
//! reports on stdout (the serial console) in lines the host tests parse:
//!
//! ```text
//! AGENT: connector Virtual-1 1024x768 crtc 36
//! AGENT: dumb shown 2        (each connector shows the 2D quadrant pattern; host may capture)
//! AGENT: mode 800x600 shown  (follow: the pattern at the connector's preferred mode, again
//!                             each time that mode changes)
//! AGENT: egl vendor Mesa Project / gl renderer virgl (...) / gl version OpenGL ES 3.2 Mesa ...
//! AGENT: gl readback ok      (or: AGENT: gl readback bad at ...)
//! AGENT: gl first frame 95 ms (shaders compiled, drawn, read back)
//! AGENT: gl frames 60 in 812 ms
//! AGENT: gl shown            (the GL pattern is on the first connector; host may capture)
//! AGENT: result pass         (or: AGENT: result fail <why>)
//! ```
//!
//! `guest-agent [dumb|gl|all|blob|input] [--frames N] [--hold SECONDS]`; `blob` shows a guest
//! blob (blue, red, green, white quadrants) through SET_SCANOUT_BLOB ("AGENT: blob shown"). Each picture stays up for
//! `--hold` seconds after its "shown" line so that the host can take a screenshot.
//!
//! Patterns (top-left, top-right, bottom-left, bottom-right quadrants):
//! - dumb buffer: red, green, blue, white;
//! - OpenGL ES: yellow, cyan, magenta, white, with an orange square in the middle drawn by a
//!   shader (half the width and height of the screen).

mod atomics;
mod blob;
mod gles;
mod vulkan;

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use drm::buffer::DrmFourcc;
use drm::control::{connector, crtc, framebuffer, Device as ControlDevice, Mode, PageFlipFlags};
use khronos_egl as egl;

/// The DRM device, for the `drm` and `gbm` crates.
struct Card(File);

impl AsFd for Card {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl drm::Device for Card {}
impl ControlDevice for Card {}

/// One connected connector with the CRTC and mode the agent drives it with.
struct Output {
    name: String,
    conn: connector::Handle,
    crtc: crtc::Handle,
    mode: Mode,
}

type Rgb = [u8; 3];
/// Quadrant colours of the dumb-buffer picture: top-left, top-right, bottom-left, bottom-right.
const DUMB: [Rgb; 4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]];
/// Quadrant colours of the GL picture.
const GL: [Rgb; 4] = [[255, 255, 0], [0, 255, 255], [255, 0, 255], [255, 255, 255]];
/// The shader-drawn square in the middle of the GL picture.
const ORANGE: Rgb = [255, 128, 0];

fn say(s: impl AsRef<str>) {
    println!("AGENT: {}", s.as_ref());
}

fn open_card() -> Result<Card, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/dri/card0")
        .map(Card)
        .map_err(|e| format!("/dev/dri/card0: {e}"))
}

/// Every connected connector, each with its own CRTC and its preferred mode.
fn outputs(card: &Card) -> Result<Vec<Output>, String> {
    let outs = outputs_quiet(card)?;
    for o in &outs {
        let (w, h) = o.mode.size();
        say(format!(
            "connector {} {w}x{h} crtc {}",
            o.name,
            u32::from(o.crtc)
        ));
    }
    Ok(outs)
}

/// [`outputs`], without a line for each (probing again each time: the connector's modes are
/// re-read, as after a hotplug).
fn outputs_quiet(card: &Card) -> Result<Vec<Output>, String> {
    let res = card
        .resource_handles()
        .map_err(|e| format!("resources: {e}"))?;
    let mut used: Vec<crtc::Handle> = Vec::new();
    let mut out = Vec::new();
    for &handle in res.connectors() {
        let info = card
            .get_connector(handle, true)
            .map_err(|e| format!("connector: {e}"))?;
        if info.state() != connector::State::Connected {
            continue;
        }
        let Some(&mode) = info
            .modes()
            .iter()
            .find(|m| {
                m.mode_type()
                    .contains(drm::control::ModeTypeFlags::PREFERRED)
            })
            .or_else(|| info.modes().first())
        else {
            continue;
        };
        let crtc = info
            .encoders()
            .iter()
            .filter_map(|&e| card.get_encoder(e).ok())
            .flat_map(|e| res.filter_crtcs(e.possible_crtcs()))
            .find(|c| !used.contains(c))
            .ok_or_else(|| format!("no free CRTC for {info:?}"))?;
        used.push(crtc);
        let name = format!("{}-{}", info.interface().as_str(), info.interface_id());
        out.push(Output {
            name,
            conn: handle,
            crtc,
            mode,
        });
    }
    if out.is_empty() {
        return Err("no connected connector".into());
    }
    Ok(out)
}

/// The quadrant a pixel falls in: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.
fn quadrant(x: u32, y: u32, w: u32, h: u32) -> usize {
    usize::from(x >= w / 2) + 2 * usize::from(y >= h / 2)
}

/// 2D only: a dumb buffer per connector, filled with the quadrant pattern by the CPU and set as
/// the CRTC's framebuffer (the kernel driver transfers and flushes it).
fn dumb(card: &Card, outs: &[Output], hold: Duration) -> Result<(), String> {
    show_dumb(card, outs, hold, "dumb", |x, y, w, h| {
        DUMB[quadrant(x, y, w, h)]
    })
}

/// A dumb buffer per connector, each pixel (x, y) of a w x h mode coloured `rgb(x, y, w, h)`,
/// shown for `hold`; then "`what` shown N" is said.
fn show_dumb(
    card: &Card,
    outs: &[Output],
    hold: Duration,
    what: &str,
    rgb: impl Fn(u32, u32, u32, u32) -> Rgb,
) -> Result<(), String> {
    let keep = set_dumb(card, outs, rgb)?;
    say(format!("{what} shown {}", outs.len()));
    std::thread::sleep(hold);
    drop_dumb(card, keep);
    Ok(())
}

/// What a shown dumb picture holds: its buffers and framebuffers.
type Shown = Vec<(
    drm::control::dumbbuffer::DumbBuffer,
    drm::control::framebuffer::Handle,
)>;

fn drop_dumb(card: &Card, keep: Shown) {
    for (db, fb) in keep {
        let _ = card.destroy_framebuffer(fb);
        let _ = card.destroy_dumb_buffer(db);
    }
}

/// A compositor's part in a resize: the quadrant pattern at the first connector's preferred
/// mode, then, whenever that mode changes (a display-change event: the host asked for a new
/// size), the pattern again at the new mode, for `hold` in all. Says "mode WxH shown" each
/// time.
fn follow(card: &Card, hold: Duration) -> Result<(), String> {
    let end = std::time::Instant::now() + hold;
    let mut last = None;
    let mut keep: Option<Shown> = None;
    while std::time::Instant::now() < end {
        let outs = outputs_quiet(card)?;
        let first = &outs[..1];
        let size = first[0].mode.size();
        if last != Some(size) {
            let shown = set_dumb(card, first, |x, y, w, h| DUMB[quadrant(x, y, w, h)])?;
            if let Some(old) = keep.replace(shown) {
                drop_dumb(card, old);
            }
            say(format!("mode {}x{} shown", size.0, size.1));
            last = Some(size);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(k) = keep {
        drop_dumb(card, k);
    }
    Ok(())
}

/// Sets a dumb buffer per connector, coloured by `rgb`, as its CRTC's framebuffer.
fn set_dumb(
    card: &Card,
    outs: &[Output],
    rgb: impl Fn(u32, u32, u32, u32) -> Rgb,
) -> Result<Shown, String> {
    let mut keep = Vec::new();
    for o in outs {
        let (w, h) = o.mode.size();
        let (w, h) = (u32::from(w), u32::from(h));
        let mut db = card
            .create_dumb_buffer((w, h), DrmFourcc::Xrgb8888, 32)
            .map_err(|e| format!("create dumb: {e}"))?;
        let pitch = drm::buffer::Buffer::pitch(&db) as usize;
        {
            let mut map = card
                .map_dumb_buffer(&mut db)
                .map_err(|e| format!("map dumb: {e}"))?;
            for (y, row) in map.chunks_exact_mut(pitch).enumerate().take(h as usize) {
                for (x, px) in row.chunks_exact_mut(4).enumerate().take(w as usize) {
                    let [r, g, b] = rgb(x as u32, y as u32, w, h);
                    px.copy_from_slice(&[b, g, r, 0xff]);
                }
            }
        }
        let fb = card
            .add_framebuffer(&db, 24, 32)
            .map_err(|e| format!("addfb: {e}"))?;
        card.set_crtc(o.crtc, Some(fb), (0, 0), &[o.conn], Some(o.mode))
            .map_err(|e| format!("set crtc on {}: {e}", o.name))?;
        keep.push((db, fb));
    }
    Ok(keep)
}

fn to_gl(c: Rgb) -> [f32; 3] {
    c.map(|v| f32::from(v) / 255.0)
}

/// Draws the GL picture; `bar` puts a moving black bar at that fraction of the width (for the
/// animated frames), `None` draws the still picture the host checks.
fn draw(w: i32, h: i32, prog: (u32, i32), bar: Option<f32>) {
    let (hw, hh) = (w / 2, h / 2);
    // Quadrants in GL's bottom-left-origin coordinates.
    let rects = [
        (0, hh, hw, h - hh),
        (hw, hh, w - hw, h - hh),
        (0, 0, hw, hh),
        (hw, 0, w - hw, hh),
    ];
    // SAFETY: plain GL state calls on the current context; no pointers.
    unsafe {
        gles::glViewport(0, 0, w, h);
        gles::glEnable(gles::SCISSOR_TEST);
        for (i, &(x, y, rw, rh)) in rects.iter().enumerate() {
            let [r, g, b] = to_gl(GL[i]);
            gles::glScissor(x, y, rw, rh);
            gles::glClearColor(r, g, b, 1.0);
            gles::glClear(gles::COLOR_BUFFER_BIT);
        }
        if let Some(f) = bar {
            gles::glScissor((f * w as f32) as i32, 0, (w / 16).max(1), h);
            gles::glClearColor(0.0, 0.0, 0.0, 1.0);
            gles::glClear(gles::COLOR_BUFFER_BIT);
        }
        gles::glDisable(gles::SCISSOR_TEST);
        gles::glUseProgram(prog.0);
        let [r, g, b] = to_gl(ORANGE);
        gles::glUniform4f(prog.1, r, g, b, 1.0);
    }
    gles::draw_triangles(&[
        -0.5, -0.5, 0.5, -0.5, 0.5, 0.5, -0.5, -0.5, 0.5, 0.5, -0.5, 0.5,
    ]);
}

/// Checks the still GL picture by glReadPixels: each quadrant's middle and the centre.
fn check_readback(w: i32, h: i32) -> Result<(), String> {
    let close = |a: [u8; 4], b: Rgb| a[..3].iter().zip(b).all(|(&x, y)| x.abs_diff(y) <= 2);
    // (GL x, GL y, expected): top-left quadrant is high y in GL.
    let probes = [
        (w / 8, h - h / 8, GL[0]),
        (w - w / 8, h - h / 8, GL[1]),
        (w / 8, h / 8, GL[2]),
        (w - w / 8, h / 8, GL[3]),
        (w / 2, h / 2, ORANGE),
    ];
    for (x, y, want) in probes {
        let got = gles::read_pixel(x, y);
        if !close(got, want) {
            return Err(format!(
                "gl readback bad at ({x},{y}): {got:?} want {want:?}"
            ));
        }
    }
    Ok(())
}

/// OpenGL ES on EGL on GBM (virgl when the device has it): draw, read back and check, then
/// page-flip `frames` frames to the first connector and leave the still picture up.
fn gl(card: Card, outs: &[Output], frames: u32, hold: Duration) -> Result<(), String> {
    let o = &outs[0];
    let (w, h) = o.mode.size();
    let (w, h) = (u32::from(w), u32::from(h));
    let gbm = gbm::Device::new(card).map_err(|e| format!("gbm device: {e}"))?;
    say(format!("gbm backend {}", gbm.backend_name()));
    let surface = gbm
        .create_surface::<()>(
            w,
            h,
            gbm::Format::Xrgb8888,
            gbm::BufferObjectFlags::SCANOUT | gbm::BufferObjectFlags::RENDERING,
        )
        .map_err(|e| format!("gbm surface: {e}"))?;

    let api = egl::Instance::new(egl::Static);
    const PLATFORM_GBM_KHR: egl::Enum = 0x31D7;
    use gbm::AsRaw;
    // SAFETY: the native display is the live gbm_device `gbm` owns, which outlives every EGL
    // object made from it (they are all dropped or terminated before `gbm` at the end).
    let dpy = unsafe {
        api.get_platform_display(
            PLATFORM_GBM_KHR,
            gbm.as_raw() as *mut _,
            &[egl::ATTRIB_NONE],
        )
    }
    .map_err(|e| format!("egl display: {e}"))?;
    api.initialize(dpy)
        .map_err(|e| format!("egl initialize: {e}"))?;
    let vendor = api
        .query_string(Some(dpy), egl::VENDOR)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    say(format!("egl vendor {vendor}"));
    api.bind_api(egl::OPENGL_ES_API)
        .map_err(|e| format!("bind api: {e}"))?;
    let attrs = [
        egl::SURFACE_TYPE,
        egl::WINDOW_BIT,
        egl::RENDERABLE_TYPE,
        egl::OPENGL_ES2_BIT,
        egl::RED_SIZE,
        8,
        egl::GREEN_SIZE,
        8,
        egl::BLUE_SIZE,
        8,
        egl::NONE,
    ];
    let mut configs = Vec::with_capacity(64);
    api.choose_config(dpy, &attrs, &mut configs)
        .map_err(|e| format!("choose config: {e}"))?;
    // The config must match the GBM surface's format, or EGL refuses the window surface.
    let xrgb = DrmFourcc::Xrgb8888 as i32;
    let config = configs
        .into_iter()
        .find(|&c| api.get_config_attrib(dpy, c, egl::NATIVE_VISUAL_ID) == Ok(xrgb))
        .ok_or("no EGL config for XRGB8888")?;
    let ctx = api
        .create_context(
            dpy,
            config,
            None,
            &[egl::CONTEXT_CLIENT_VERSION, 2, egl::NONE],
        )
        .map_err(|e| format!("egl context: {e}"))?;
    // SAFETY: the native window is the live gbm_surface `surface` owns, which outlives the EGL
    // surface (destroyed below before `surface` is dropped).
    let esurf = unsafe {
        api.create_platform_window_surface(
            dpy,
            config,
            surface.as_raw() as *mut _,
            &[egl::ATTRIB_NONE],
        )
    }
    .map_err(|e| format!("egl window surface: {e}"))?;
    api.make_current(dpy, Some(esurf), Some(esurf), Some(ctx))
        .map_err(|e| format!("make current: {e}"))?;
    say(format!("gl renderer {}", gles::string(gles::RENDERER)));
    say(format!("gl vendor {}", gles::string(gles::VENDOR)));
    say(format!("gl version {}", gles::string(gles::VERSION)));

    // The first frame's time holds compiling its shaders on the host (virglrenderer, then
    // llvmpipe): what Mesa's shader cache on the host saves on a second run.
    let first = Instant::now();
    let prog = gles::solid_program()?;
    let (wi, hi) = (w as i32, h as i32);
    draw(wi, hi, prog, None);
    check_readback(wi, hi)?;
    say("gl readback ok");
    say(format!("gl first frame {} ms", first.elapsed().as_millis()));

    // Frame loop: render, swap, lock the front buffer, scan it out (set_crtc first, page flips
    // after, each waited for), release the previous buffer.
    let card: &Card = &gbm;
    let mut shown: Option<(gbm::BufferObject<()>, framebuffer::Handle)> = None;
    let start = Instant::now();
    for i in 0..=frames {
        let bar = (i < frames).then(|| (i % 15) as f32 / 16.0);
        draw(wi, hi, prog, bar);
        if bar.is_none() {
            // The still picture, checked before it is swapped out to the display.
            check_readback(wi, hi)?;
        }
        api.swap_buffers(dpy, esurf)
            .map_err(|e| format!("swap: {e}"))?;
        // SAFETY: called exactly once after each eglSwapBuffers, as gbm requires.
        let bo = unsafe { surface.lock_front_buffer() }.map_err(|e| format!("lock front: {e}"))?;
        let fb = card
            .add_framebuffer(&bo, 24, 32)
            .map_err(|e| format!("addfb: {e}"))?;
        if shown.is_none() {
            card.set_crtc(o.crtc, Some(fb), (0, 0), &[o.conn], Some(o.mode))
                .map_err(|e| format!("set crtc: {e}"))?;
        } else {
            card.page_flip(o.crtc, fb, PageFlipFlags::EVENT, None)
                .map_err(|e| format!("page flip: {e}"))?;
            wait_flip(card)?;
        }
        if let Some((old, old_fb)) = shown.replace((bo, fb)) {
            let _ = card.destroy_framebuffer(old_fb);
            drop(old); // back to the surface's free list
        }
    }
    let ms = start.elapsed().as_millis();
    say(format!("gl frames {frames} in {ms} ms"));
    say("gl shown");
    std::thread::sleep(hold);
    if let Some((_, fb)) = shown.take() {
        let _ = card.destroy_framebuffer(fb);
    }
    let _ = api.make_current(dpy, None, None, None);
    let _ = api.destroy_surface(dpy, esurf);
    let _ = api.destroy_context(dpy, ctx);
    let _ = api.terminate(dpy);
    Ok(())
}

fn wait_flip(card: &Card) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = card
            .receive_events()
            .map_err(|e| format!("drm events: {e}"))?;
        if events
            .into_iter()
            .any(|e| matches!(e, drm::control::Event::PageFlip(_)))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("no page-flip event within 10 s".into());
        }
    }
}

/// Prints the key and absolute-pointer events of every input device for `hold`: how a test
/// sees that input sent from outside (VNC, through QMP) reached the guest's devices.
fn input(hold: Duration) -> Result<(), String> {
    let mut devices = Vec::new();
    for e in std::fs::read_dir("/dev/input").map_err(|e| format!("/dev/input: {e}"))? {
        let p = e.map_err(|e| e.to_string())?.path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !name.starts_with("event") {
            continue;
        }
        let dev_name = std::fs::read_to_string(format!("/sys/class/input/{name}/device/name"))
            .unwrap_or_default()
            .trim()
            .to_string();
        say(format!("input device {name} {dev_name}"));
        devices.push((name, p));
    }
    if devices.is_empty() {
        return Err("no input devices".into());
    }
    say("input ready");
    for (name, p) in devices {
        std::thread::spawn(move || {
            use std::io::Read;
            let Ok(mut f) = std::fs::File::open(&p) else {
                return;
            };
            // struct input_event: 16 bytes of time, u16 type, u16 code, i32 value.
            let mut ev = [0u8; 24];
            while f.read_exact(&mut ev).is_ok() {
                let t = u16::from_ne_bytes([ev[16], ev[17]]);
                let c = u16::from_ne_bytes([ev[18], ev[19]]);
                let v = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
                // EV_KEY (keys and buttons) and EV_ABS.
                if t == 1 || t == 3 {
                    say(format!("input event {name} type {t} code {c} value {v}"));
                }
            }
        });
    }
    std::thread::sleep(hold);
    Ok(())
}

fn run() -> Result<(), String> {
    let mut what = "all".to_string();
    let mut frames = 60u32;
    let mut hold = Duration::from_secs(3);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--frames" => {
                frames = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--frames N")?
            }
            "--hold" => {
                hold = Duration::from_secs(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--hold SECONDS")?,
                )
            }
            "dumb" | "gl" | "all" | "input" | "blob" | "vulkan" | "busy" | "follow" | "atomics" => {
                what = a
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if what == "input" {
        return input(hold);
    }
    if what == "atomics" {
        return atomics::atomics(frames.saturating_mul(1000));
    }
    if what == "vulkan" {
        // Rendered and checked first: on a host (through vtest) there is no card to show it on.
        let px = vulkan::render_and_check()?;
        let card = open_card()?;
        let outs = outputs(&card)?;
        return vulkan::show(&card, &outs, &px, hold);
    }
    let card = open_card()?;
    let outs = outputs(&card)?;
    if what == "blob" {
        return blob::blob(&card, &outs, hold);
    }
    if what == "follow" {
        return follow(&card, hold);
    }
    if what == "busy" {
        // The VNC bench's picture (guest-tests/src/bin/bench.rs, busy_frame(1)): varied content,
        // few solid tiles, the same on every server compared.
        return show_dumb(&card, &outs, hold, "busy", |x, y, _, _| {
            [(y / 5) as u8, (x / 3) as u8, (x ^ y) as u8 ^ 1]
        });
    }

    if what == "dumb" || what == "all" {
        dumb(&card, &outs, hold)?;
    }
    if what == "gl" || what == "all" {
        gl(card, &outs, frames, hold)?;
    }
    Ok(())
}

fn main() {
    match run() {
        Ok(()) => say("result pass"),
        Err(e) => {
            say(format!("result fail {e}"));
            std::process::exit(1);
        }
    }
}
