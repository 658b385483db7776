//! The host's copy of what each scanout shows, for those that look at it from inside vhost-gpu:
//! `--capture-dir` (PNG files) and `--vnc` (VNC clients).
//!
//! The device hands every SCANOUT, UPDATE and cursor change it sends to the frontend's display
//! channel (or would send, when there is none) to [`Screens`], which keeps one picture per
//! scanout and a short log of the rectangles that changed, each stamped with a serial number.
//! A reader remembers the last serial it saw and asks for what changed since: the changes of a
//! reader that falls behind are merged, so a slow reader costs the device nothing but the
//! copy into the picture, and holds no memory of its own beyond what it copies out.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Largest scanout side kept (EDID's limit is 4095): at most 64 MiB a scanout.
pub const MAX_SIDE: u32 = 4096;

/// Changed rectangles remembered per scanout; a reader further behind gets the whole picture.
const DAMAGE_LOG: usize = 64;

/// A rectangle of a scanout, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Area {
    fn right(&self) -> u32 {
        self.x + self.width
    }
    fn bottom(&self) -> u32 {
        self.y + self.height
    }
    /// The smallest rectangle holding both.
    pub fn union(&self, o: &Area) -> Area {
        let (x, y) = (self.x.min(o.x), self.y.min(o.y));
        Area {
            x,
            y,
            width: self.right().max(o.right()) - x,
            height: self.bottom().max(o.bottom()) - y,
        }
    }
    fn overlaps(&self, o: &Area) -> bool {
        self.x < o.right() && o.x < self.right() && self.y < o.bottom() && o.y < self.bottom()
    }
    /// This rectangle cut to `o`; None when they do not meet.
    pub fn clip(&self, o: &Area) -> Option<Area> {
        let (x, y) = (self.x.max(o.x), self.y.max(o.y));
        let (r, b) = (self.right().min(o.right()), self.bottom().min(o.bottom()));
        (x < r && y < b).then(|| Area {
            x,
            y,
            width: r - x,
            height: b - y,
        })
    }
}

/// One scanout's picture, B8G8R8X8 rows packed.
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
    /// Serial of the SCANOUT that gave it this size.
    pub created: u64,
    /// Serial of the latest change.
    pub serial: u64,
    damage: VecDeque<(u64, Area)>,
    /// Serial of the newest change dropped from `damage`.
    forgotten: u64,
}

impl Picture {
    /// The whole picture as an area.
    pub fn area(&self) -> Area {
        Area {
            x: 0,
            y: 0,
            width: self.width,
            height: self.height,
        }
    }

    /// Copies `a` (inside the picture) out as packed B8G8R8X8 rows.
    pub fn copy_out(&self, a: &Area) -> Vec<u8> {
        let mut out = Vec::with_capacity(a.width as usize * a.height as usize * 4);
        let fw = self.width as usize;
        for row in a.y as usize..a.bottom() as usize {
            let at = (row * fw + a.x as usize) * 4;
            if let Some(src) = self.pixels.get(at..at + a.width as usize * 4) {
                out.extend_from_slice(src);
            }
        }
        out
    }
}

/// The guest's cursor image: 64 x 64 B8G8R8A8, its hot spot, and whether it is shown.
#[derive(Clone)]
pub struct CursorImage {
    pub hot_x: u32,
    pub hot_y: u32,
    pub visible: bool,
    pub pixels: Vec<u8>,
    pub serial: u64,
}

/// What changed in a scanout since a reader's serial.
pub struct Changes {
    /// Serial to pass next time.
    pub serial: u64,
    /// The scanout got a new size (or was set up) since then.
    pub resized: bool,
    pub width: u32,
    pub height: u32,
    /// Changed rectangles (merged where they overlap), each with its pixels.
    pub rects: Vec<(Area, Vec<u8>)>,
}

#[derive(Default)]
struct Inner {
    serial: u64,
    scanouts: Vec<Option<Picture>>,
    cursor: Option<CursorImage>,
}

/// The pictures of all scanouts, shared by the device threads and their readers.
#[derive(Default)]
pub struct Screens {
    inner: Mutex<Inner>,
    changed: Condvar,
}

/// A handle to the process's [`Screens`], comparable so that configs stay comparable.
#[derive(Clone)]
pub struct ScreensHandle(pub std::sync::Arc<Screens>);

impl PartialEq for ScreensHandle {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for ScreensHandle {}

impl std::fmt::Debug for ScreensHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Screens")
    }
}

/// Most rectangles handed out in one [`Changes`]; more are merged into their bounding box.
const MAX_RECTS: usize = 16;

impl Screens {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic elsewhere, and panics abort this process.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A scanout got a new size (0 x 0: disabled). The picture starts black. A scanout wider
    /// or taller than [`MAX_SIDE`] is not kept: the guest picks scanout sizes (up to its
    /// biggest resource), and the copy kept here is host memory on top of it.
    pub fn scanout(&self, scanout_id: u32, width: u32, height: u32) {
        let mut g = self.lock();
        g.serial += 1;
        let serial = g.serial;
        let i = scanout_id as usize;
        if g.scanouts.len() <= i {
            g.scanouts.resize_with(i + 1, || None);
        }
        let too_big = width > MAX_SIDE || height > MAX_SIDE;
        if too_big {
            crate::guest_warn!(
                "scanout {scanout_id} is {width}x{height}; no host copy is kept (capture, VNC)"
            );
        }
        g.scanouts[i] = if width == 0 || height == 0 || too_big {
            None
        } else {
            Some(Picture {
                width,
                height,
                pixels: vec![0; width as usize * height as usize * 4],
                created: serial,
                serial,
                damage: VecDeque::new(),
                forgotten: 0,
            })
        };
        drop(g);
        self.changed.notify_all();
    }

    /// Packed B8G8R8X8 pixels for a rectangle of a scanout; the part outside the scanout's
    /// picture (or all of it, for a scanout not set up) is ignored.
    pub fn update(&self, scanout_id: u32, x: u32, y: u32, width: u32, height: u32, data: &[u8]) {
        let mut g = self.lock();
        let serial = g.serial + 1;
        let Some(Some(f)) = g.scanouts.get_mut(scanout_id as usize) else {
            return;
        };
        if width == 0 || x >= f.width || y >= f.height {
            return;
        }
        let (xs, ys) = (x as usize, y as usize);
        let fw = f.width as usize;
        let w = (width as usize).min(fw - xs);
        let h = (height as usize).min(f.height as usize - ys);
        let src_row = width as usize * 4;
        let mut rows = 0;
        for (row, src) in data.chunks_exact(src_row).take(h).enumerate() {
            let at = ((ys + row) * fw + xs) * 4;
            if let (Some(dst), Some(src)) = (f.pixels.get_mut(at..at + w * 4), src.get(..w * 4)) {
                dst.copy_from_slice(src);
            }
            rows += 1;
        }
        if rows == 0 {
            return;
        }
        f.serial = serial;
        if f.damage.len() == DAMAGE_LOG {
            if let Some((s, _)) = f.damage.pop_front() {
                f.forgotten = s;
            }
        }
        f.damage.push_back((
            serial,
            Area {
                x,
                y,
                width: w as u32,
                height: rows as u32,
            },
        ));
        g.serial = serial;
        drop(g);
        self.changed.notify_all();
    }

    /// The guest's cursor: a new image (`Some`) or the same one shown or hidden.
    pub fn cursor(&self, image: Option<(u32, u32, &[u8])>, visible: bool) {
        let mut g = self.lock();
        g.serial += 1;
        let serial = g.serial;
        match (image, g.cursor.as_mut()) {
            (Some((hot_x, hot_y, px)), _) => {
                g.cursor = Some(CursorImage {
                    hot_x,
                    hot_y,
                    visible,
                    pixels: px.to_vec(),
                    serial,
                })
            }
            (None, Some(c)) if c.visible != visible => {
                c.visible = visible;
                c.serial = serial;
            }
            _ => return,
        }
        drop(g);
        self.changed.notify_all();
    }

    /// The cursor, when it changed after `serial`.
    pub fn cursor_since(&self, serial: u64) -> Option<CursorImage> {
        self.lock()
            .cursor
            .as_ref()
            .filter(|c| c.serial > serial)
            .cloned()
    }

    /// The size of a scanout's picture, when it has one.
    pub fn size(&self, scanout_id: u32) -> Option<(u32, u32)> {
        let g = self.lock();
        let f = g.scanouts.get(scanout_id as usize)?.as_ref()?;
        Some((f.width, f.height))
    }

    /// Runs `f` on a scanout's picture under the lock (keep it short: the device waits).
    pub fn with_picture<T>(&self, scanout_id: u32, f: impl FnOnce(&Picture) -> T) -> Option<T> {
        let g = self.lock();
        g.scanouts.get(scanout_id as usize)?.as_ref().map(f)
    }

    /// Serials of each scanout's latest change (None: not shown).
    pub fn serials(&self) -> Vec<Option<u64>> {
        self.lock()
            .scanouts
            .iter()
            .map(|f| f.as_ref().map(|f| f.serial))
            .collect()
    }

    /// What changed in a scanout after `since`, with the pixels, limited to `within` (the
    /// whole picture when None); None when nothing did or the scanout shows nothing.
    pub fn changes(&self, scanout_id: u32, since: u64, within: Option<Area>) -> Option<Changes> {
        let g = self.lock();
        let f = g.scanouts.get(scanout_id as usize)?.as_ref()?;
        if f.serial <= since {
            return None;
        }
        let resized = f.created > since;
        let whole = resized || since < f.forgotten;
        let mut rects: Vec<Area> = if whole {
            vec![f.area()]
        } else {
            f.damage
                .iter()
                .filter(|d| d.0 > since)
                .map(|d| d.1)
                .collect()
        };
        merge(&mut rects);
        let limit = within.unwrap_or_else(|| f.area());
        let rects = rects
            .iter()
            .filter_map(|r| r.clip(&limit))
            .map(|r| (r, f.copy_out(&r)))
            .collect();
        Some(Changes {
            serial: f.serial,
            resized,
            width: f.width,
            height: f.height,
            rects,
        })
    }

    /// The latest serial of anything.
    pub fn serial(&self) -> u64 {
        self.lock().serial
    }

    /// Waits until anything changes after `serial`, or `timeout`; returns the latest serial.
    pub fn wait(&self, serial: u64, timeout: Duration) -> u64 {
        let g = self.lock();
        let (g, _) = self
            .changed
            .wait_timeout_while(g, timeout, |g| g.serial <= serial)
            .unwrap_or_else(|p| p.into_inner());
        g.serial
    }

    /// Wakes every waiter (a reader's own state changed).
    pub fn poke(&self) {
        let mut g = self.lock();
        g.serial += 1;
        drop(g);
        self.changed.notify_all();
    }
}

/// Merges overlapping rectangles, and all of them into one when there are too many.
fn merge(rects: &mut Vec<Area>) {
    let mut i = 0;
    while i < rects.len() {
        let mut j = i + 1;
        let mut grew = false;
        while j < rects.len() {
            if rects[i].overlaps(&rects[j]) {
                let o = rects.swap_remove(j);
                rects[i] = rects[i].union(&o);
                grew = true;
            } else {
                j += 1;
            }
        }
        if !grew {
            i += 1;
        }
    }
    if rects.len() > MAX_RECTS {
        let all = rects.iter().skip(1).fold(rects[0], |a, r| a.union(r));
        rects.clear();
        rects.push(all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(x: u32, y: u32, width: u32, height: u32) -> Area {
        Area {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn readers_get_merged_damage_and_the_whole_picture_after_a_resize_or_falling_behind() {
        let s = Screens::new();
        assert!(s.changes(0, 0, None).is_none());
        s.scanout(0, 8, 4);
        let c = s.changes(0, 0, None).unwrap();
        assert!(c.resized);
        assert_eq!(c.rects.len(), 1);
        assert_eq!(c.rects[0].0, a(0, 0, 8, 4));
        let seen = c.serial;
        assert!(s.changes(0, seen, None).is_none());
        // Two overlapping updates merge; a separate one stays apart; clipped to the picture.
        s.update(0, 0, 0, 2, 1, &[1; 8]);
        s.update(0, 1, 0, 2, 1, &[2; 8]);
        s.update(0, 7, 3, 4, 1, &[3; 16]);
        let c = s.changes(0, seen, None).unwrap();
        assert!(!c.resized);
        let mut got: Vec<Area> = c.rects.iter().map(|r| r.0).collect();
        got.sort_by_key(|r| (r.y, r.x));
        assert_eq!(got, vec![a(0, 0, 3, 1), a(7, 3, 1, 1)]);
        let first = &c.rects.iter().find(|r| r.0.x == 0).unwrap().1;
        assert_eq!(first, &[1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2]);
        // Limited to an area.
        let c = s.changes(0, seen, Some(a(6, 2, 2, 2))).unwrap();
        assert_eq!(c.rects.len(), 1);
        assert_eq!(c.rects[0].0, a(7, 3, 1, 1));
        // A reader that fell off the log gets the whole picture.
        let seen = c.serial;
        for _ in 0..DAMAGE_LOG + 1 {
            s.update(0, 0, 0, 1, 1, &[9; 4]);
        }
        let c = s.changes(0, seen, None).unwrap();
        assert_eq!(c.rects[0].0, a(0, 0, 8, 4));
        // Garbage is ignored: outside, short data, unknown scanouts.
        let before = s.serial();
        s.update(0, 8, 0, 1, 1, &[0; 4]);
        s.update(0, 0, 0, 4, 2, &[0; 4]);
        s.update(5, 0, 0, 1, 1, &[0; 4]);
        assert_eq!(s.serial(), before);
        // Disabled and too big scanouts have no picture.
        s.scanout(0, 0, 0);
        assert!(s.size(0).is_none());
        s.scanout(0, MAX_SIDE + 1, 1);
        assert!(s.size(0).is_none());
    }

    #[test]
    fn many_rects_become_one() {
        let mut r: Vec<Area> = (0..40).map(|i| a(i * 2, 0, 1, 1)).collect();
        merge(&mut r);
        assert_eq!(r, vec![a(0, 0, 79, 1)]);
    }
}
