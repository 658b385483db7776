//! What the frontend was last sent of each scanout, so that an UPDATE carries only the pixels
//! that changed.
//!
//! A guest that page-flips (kmscube, a compositor, modetest) flushes the whole scanout every
//! frame even when a small part of the picture moved. Each UPDATE is copied into the socket,
//! out of it, into QEMU's surface and uploaded into its window's texture, so sending only the
//! changed part saves four copies of everything that stayed the same. This is what VNC servers
//! do with their framebuffer: compare against the last picture sent and send the difference.
//!
//! Each scanout keeps a copy of what the frontend holds. An update is compared row by row
//! against it; the rows that changed are grouped into bands (rows close together share a band)
//! and each band is cut to its changed columns. The copy is only trusted after an update that
//! covered the whole scanout, since a new surface's content is the frontend's business.
//!
//! A guest whose frames change everywhere (a video, modetest's alternating pictures) gains
//! nothing and would pay one extra copy of every frame, so after two such frames in a row the
//! next few go out whole without comparing, twice as many each time it happens again (up to
//! [`MAX_SKIP`]).
//!
//! Memory: one frame per scanout up to [`MAX_SIDE`] square, at most [`BUDGET`] bytes in all;
//! scanouts beyond that are sent as flushed.

use crate::protocol::MAX_SCANOUTS;
use crate::screens::{Area, MAX_SIDE};

/// Bytes compared at a time when looking for a row's first and last changed pixel.
const BLOCK: usize = 128;
/// Unchanged rows between two changed ones that make them separate UPDATEs.
const BAND_GAP: u32 = 32;
/// Most UPDATEs one flush becomes; later changes join the last band.
const MAX_BANDS: usize = 8;
/// Longest run of frames sent whole without comparing, after frames that changed everywhere.
pub const MAX_SKIP: u32 = 32;
/// Host memory for the copies of all scanouts (three 3840x2160 scanouts).
pub const BUDGET: usize = 3 * 3840 * 2160 * 4;

/// One scanout's copy of what the frontend holds, B8G8R8X8 rows packed.
struct Shown {
    width: u32,
    height: u32,
    /// Empty until the first update.
    pixels: Vec<u8>,
    /// `pixels` equals what the frontend holds.
    valid: bool,
    /// Frames still to send whole without comparing.
    skip: u32,
    /// The run to start at the next frame that changes everywhere.
    next_skip: u32,
    /// The last frame compared changed everywhere.
    last_full: bool,
}

impl Shown {
    /// The size of a whole copy.
    fn bytes(&self) -> usize {
        self.width as usize * self.height as usize * 4
    }
}

/// The copies of all scanouts.
#[derive(Default)]
pub struct Damage {
    shown: Vec<Option<Shown>>,
}

impl Damage {
    /// A scanout got a new size (0 x 0: off): the frontend made a new surface.
    pub fn scanout(&mut self, id: u32, width: u32, height: u32) {
        let i = id as usize;
        if i >= MAX_SCANOUTS {
            return;
        }
        if self.shown.len() <= i {
            self.shown.resize_with(i + 1, || None);
        }
        // Free the old copy first, so it does not count against the new one.
        if let Some(slot) = self.shown.get_mut(i) {
            *slot = None;
        }
        let need = width as usize * height as usize * 4;
        let used: usize = self.shown.iter().flatten().map(Shown::bytes).sum();
        let fits = width > 0
            && height > 0
            && width <= MAX_SIDE
            && height <= MAX_SIDE
            && used + need <= BUDGET;
        if let (true, Some(slot)) = (fits, self.shown.get_mut(i)) {
            *slot = Some(Shown {
                width,
                height,
                pixels: Vec::new(),
                valid: false,
                skip: 0,
                next_skip: 2,
                last_full: false,
            });
        }
    }

    /// The frontend is new (another display channel): nothing it holds is known.
    pub fn forget(&mut self) {
        for s in self.shown.iter_mut().flatten() {
            s.valid = false;
        }
    }

    /// Bytes the copies hold or may grow to.
    pub fn bytes(&self) -> usize {
        self.shown
            .iter()
            .flatten()
            .map(|s| s.bytes().max(s.pixels.capacity()))
            .sum()
    }

    /// The parts of an update of `area` (packed rows in `data`) of scanout `id` that differ
    /// from what the frontend holds, pushed to `out`; the copy then holds the update.
    /// Everything is sent when nothing is known or the update does not fit the scanout.
    pub fn changed(&mut self, id: u32, area: Area, data: &[u8], out: &mut Vec<Area>) {
        let row = area.width as usize * 4;
        let fits = |s: &Shown| {
            u64::from(area.x) + u64::from(area.width) <= u64::from(s.width)
                && u64::from(area.y) + u64::from(area.height) <= u64::from(s.height)
                && data.len() >= row * area.height as usize
        };
        let Some(s) = self.shown.get_mut(id as usize).and_then(Option::as_mut) else {
            out.push(area);
            return;
        };
        if area.width == 0 || area.height == 0 || !fits(s) {
            s.valid = false;
            out.push(area);
            return;
        }
        let stride = s.width as usize * 4;
        let whole = area.x == 0 && area.y == 0 && area.width == s.width && area.height == s.height;
        if s.skip > 0 || !s.valid {
            out.push(area);
            if s.skip > 0 {
                s.skip -= 1;
                s.valid = false;
            } else if whole {
                // Copy the whole update: from now on the copy is what the frontend holds.
                s.pixels.clear();
                s.pixels
                    .extend_from_slice(&data[..row * area.height as usize]);
                s.valid = true;
            }
            return;
        }
        let (x0, y0) = (area.x as usize, area.y as usize);
        let mut band: Option<Area> = None;
        let mut changed_px = 0u64;
        for (y, new) in data
            .chunks_exact(row)
            .take(area.height as usize)
            .enumerate()
        {
            let at = (y0 + y) * stride + x0 * 4;
            let Some(old) = s.pixels.get_mut(at..at + row) else {
                // Cannot happen for a valid copy of a scanout the area fits; send it all.
                s.valid = false;
                out.clear();
                out.push(area);
                return;
            };
            if new == old {
                continue;
            }
            let (l, r) = span(new, old);
            old[l * 4..r * 4].copy_from_slice(&new[l * 4..r * 4]);
            changed_px += (r - l) as u64;
            let (l, r, y) = (area.x + l as u32, area.x + r as u32, area.y + y as u32);
            band = Some(match band {
                Some(b) if y - (b.y + b.height) < BAND_GAP || out.len() + 1 >= MAX_BANDS => {
                    let x = b.x.min(l);
                    Area {
                        x,
                        y: b.y,
                        width: (b.x + b.width).max(r) - x,
                        height: y + 1 - b.y,
                    }
                }
                other => {
                    out.extend(other);
                    Area {
                        x: l,
                        y,
                        width: r - l,
                        height: 1,
                    }
                }
            });
        }
        out.extend(band);
        // Nine tenths of the picture changed, twice running (once is any first frame after a
        // blank one): comparing does not pay.
        let full = whole && changed_px * 10 >= u64::from(area.width) * u64::from(area.height) * 9;
        if full && s.last_full {
            s.skip = s.next_skip;
            s.next_skip = (s.next_skip * 2).min(MAX_SKIP);
        } else if !full {
            s.next_skip = 2;
        }
        s.last_full = full;
    }
}

/// First and one-past-last pixel where two rows of B8G8R8X8 pixels differ (they do differ).
fn span(new: &[u8], old: &[u8]) -> (usize, usize) {
    let n = new.len().min(old.len());
    let mut i = 0;
    while i < n {
        let e = (i + BLOCK).min(n);
        if new[i..e] != old[i..e] {
            break;
        }
        i = e;
    }
    let first = (i..n).find(|&k| new[k] != old[k]).unwrap_or(0);
    let mut j = n;
    while j > 0 {
        let s = j.saturating_sub(BLOCK);
        if new[s..j] != old[s..j] {
            break;
        }
        j = s;
    }
    let last = (0..j).rev().find(|&k| new[k] != old[k]).unwrap_or(n - 1);
    (first / 4, (last / 4 + 1).max(first / 4 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(x: u32, y: u32, width: u32, height: u32) -> Area {
        Area {
            x,
            y,
            width,
            height,
        }
    }

    fn frame(w: u32, h: u32, seed: u8) -> Vec<u8> {
        (0..w * h * 4)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn paint(img: &mut [u8], w: u32, r: Area, v: u8) {
        for y in r.y..r.y + r.height {
            let s = ((y * w + r.x) * 4) as usize;
            img[s..s + (r.width * 4) as usize].fill(v);
        }
    }

    fn run(d: &mut Damage, id: u32, a: Area, data: &[u8]) -> Vec<Area> {
        let mut out = Vec::new();
        d.changed(id, a, data, &mut out);
        out
    }

    #[test]
    fn first_frame_is_whole_then_only_what_changed() {
        let (w, h) = (300, 200);
        let mut d = Damage::default();
        d.scanout(0, w, h);
        let mut img = frame(w, h, 1);
        assert_eq!(
            run(&mut d, 0, area(0, 0, w, h), &img),
            vec![area(0, 0, w, h)]
        );
        // Nothing changed: nothing to send.
        assert!(run(&mut d, 0, area(0, 0, w, h), &img).is_empty());
        // One pixel.
        paint(&mut img, w, area(7, 9, 1, 1), 0xaa);
        assert_eq!(
            run(&mut d, 0, area(0, 0, w, h), &img),
            vec![area(7, 9, 1, 1)]
        );
        // Two regions far apart are two bands; near ones are one.
        paint(&mut img, w, area(10, 10, 5, 5), 0x11);
        paint(&mut img, w, area(100, 20, 10, 3), 0x22);
        paint(&mut img, w, area(250, 150, 20, 20), 0x33);
        assert_eq!(
            run(&mut d, 0, area(0, 0, w, h), &img),
            vec![area(10, 10, 100, 13), area(250, 150, 20, 20)]
        );
        // A partial update is compared inside its own area.
        paint(&mut img, w, area(40, 40, 2, 2), 0x44);
        let part = common_crop(&img, w, area(30, 30, 50, 50));
        assert_eq!(
            run(&mut d, 0, area(30, 30, 50, 50), &part),
            vec![area(40, 40, 2, 2)]
        );
    }

    fn common_crop(img: &[u8], w: u32, r: Area) -> Vec<u8> {
        let mut v = Vec::new();
        for y in r.y..r.y + r.height {
            let s = ((y * w + r.x) * 4) as usize;
            v.extend_from_slice(&img[s..s + (r.width * 4) as usize]);
        }
        v
    }

    #[test]
    fn the_copy_tracks_what_was_sent() {
        // Replay the updates onto a "frontend" picture: it must always equal the guest's.
        let (w, h) = (97, 61);
        let mut d = Damage::default();
        d.scanout(0, w, h);
        let mut guest = frame(w, h, 3);
        let mut front = vec![0u8; guest.len()];
        let mut seed = 12345u32;
        for step in 0..300 {
            for _ in 0..(step % 4) {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let x = (seed >> 8) % w;
                let y = (seed >> 16) % h;
                let r = area(x, y, (seed % 9 + 1).min(w - x), (seed % 7 + 1).min(h - y));
                paint(&mut guest, w, r, (seed >> 24) as u8);
            }
            for a in run(&mut d, 0, area(0, 0, w, h), &guest) {
                let part = common_crop(&guest, w, a);
                for (i, y) in (a.y..a.y + a.height).enumerate() {
                    let s = ((y * w + a.x) * 4) as usize;
                    let n = (a.width * 4) as usize;
                    front[s..s + n].copy_from_slice(&part[i * n..(i + 1) * n]);
                }
            }
            assert!(front == guest, "step {step}");
        }
    }

    #[test]
    fn frames_that_change_everywhere_skip_the_compare_with_backoff() {
        let (w, h) = (64, 32);
        let mut d = Damage::default();
        d.scanout(0, w, h);
        let (a, b) = (frame(w, h, 1), frame(w, h, 0x80));
        let whole = area(0, 0, w, h);
        run(&mut d, 0, whole, &a);
        // Compared, all changed: once is a first frame after a blank one, no skipping yet.
        assert_eq!(run(&mut d, 0, whole, &b), vec![whole]);
        assert_eq!(d.shown[0].as_ref().map(|s| s.skip), Some(0));
        assert_eq!(run(&mut d, 0, whole, &a), vec![whole]);
        // Two skipped (sent whole, no copy), one copied whole, then compared again.
        for f in [&b, &a, &b, &a] {
            assert_eq!(run(&mut d, 0, whole, f), vec![whole]);
        }
        assert_eq!(d.shown[0].as_ref().map(|s| s.skip), Some(4));
        // The same frame again after the skips: nothing sent once it is trusted again.
        for _ in 0..4 {
            run(&mut d, 0, whole, &b);
        }
        run(&mut d, 0, whole, &b);
        assert!(run(&mut d, 0, whole, &b).is_empty());
    }

    #[test]
    fn a_new_surface_or_channel_is_sent_whole() {
        let (w, h) = (16, 16);
        let mut d = Damage::default();
        d.scanout(0, w, h);
        let img = frame(w, h, 5);
        let whole = area(0, 0, w, h);
        run(&mut d, 0, whole, &img);
        d.forget();
        assert_eq!(run(&mut d, 0, whole, &img), vec![whole]);
        d.scanout(0, w, h);
        assert_eq!(run(&mut d, 0, whole, &img), vec![whole]);
        // A partial first update leaves the copy untrusted.
        d.scanout(0, w, h);
        let part = common_crop(&img, w, area(0, 0, 4, 4));
        assert_eq!(
            run(&mut d, 0, area(0, 0, 4, 4), &part),
            vec![area(0, 0, 4, 4)]
        );
        assert_eq!(
            run(&mut d, 0, area(0, 0, 4, 4), &part),
            vec![area(0, 0, 4, 4)]
        );
    }

    #[test]
    fn hostile_areas_are_sent_as_given_and_memory_is_bounded() {
        let mut d = Damage::default();
        d.scanout(0, 16, 16);
        let img = frame(16, 16, 1);
        // Beyond the scanout, short data, unknown scanout: passed through, no panic.
        let big = area(10, 10, 16, 16);
        assert_eq!(run(&mut d, 0, big, &img), vec![big]);
        let a = area(0, 0, 16, 16);
        assert_eq!(run(&mut d, 0, a, &img[..100]), vec![a]);
        assert_eq!(run(&mut d, 9, a, &img), vec![a]);
        let huge = area(u32::MAX - 1, u32::MAX - 1, 2, 2);
        assert_eq!(run(&mut d, 0, huge, &img), vec![huge]);
        // Scanouts beyond the budget keep no copy.
        for i in 0..16 {
            d.scanout(i, 3840, 2160);
            run(&mut d, i, area(0, 0, 1, 1), &[0; 4]);
        }
        let big_frame = vec![0u8; 3840 * 2160 * 4];
        for i in 0..16 {
            run(&mut d, i, area(0, 0, 3840, 2160), &big_frame);
        }
        assert!(d.bytes() <= BUDGET, "{} bytes", d.bytes());
        d.scanout(0, MAX_SIDE + 1, 1);
        assert!(d.shown[0].is_none());
    }
}
