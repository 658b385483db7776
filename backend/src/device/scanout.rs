//! Scanouts and what the frontend sees: SET_SCANOUT(_BLOB), RESOURCE_FLUSH (read back, converted
//! to B8G8R8X8 and sent as UPDATEs), the cursor, display info and EDID.

use log::debug;
use virgl_bridge::{Rect, BYTES_PER_PIXEL};

use super::{
    format, invalid, BlobLayout, GpuDevice, GpuError, GpuResult, Scanout, BLOB_MEM_GUEST,
    BLOB_MEM_HOST3D_GUEST,
};
use crate::config::Mode;
use crate::display::CURSOR_BYTES;
use crate::edid;
use crate::guest_warn;
use crate::protocol::{Cursor, DisplayMode, GpuResponse};

/// Converts pixels in `fmt` to the frontend's B8G8R8X8 byte order, in place.
pub(super) fn to_bgrx(fmt: u32, data: &mut [u8]) {
    use format::*;
    let order: [usize; 4] = match fmt {
        A8R8G8B8 | X8R8G8B8 => [3, 2, 1, 0],
        R8G8B8A8 | R8G8B8X8 => [2, 1, 0, 3],
        A8B8G8R8 | X8B8G8R8 => [1, 2, 3, 0],
        _ => return,
    };
    for px in data.chunks_exact_mut(4) {
        let p = [px[0], px[1], px[2], px[3]];
        for (o, &i) in px.iter_mut().zip(order.iter()) {
            *o = p[i];
        }
    }
}

/// Whether the frontend hears of a scanout's new resource with a SCANOUT message: when the
/// scanout was off or its size changes. A page flip to another resource of the same size is
/// not announced: QEMU replaces its display surface on each SCANOUT, and its GTK GL window
/// then keeps showing the first frame (every flip is a new resource). The flip reaches the
/// frontend as a full-scanout UPDATE at the next flush instead.
pub(super) fn announces(old: &Scanout, rect: Rect) -> bool {
    old.resource_id == 0 || old.rect.width != rect.width || old.rect.height != rect.height
}

/// The part of a flush of `rect` that goes to scanout `s`: all of it after an unannounced flip.
pub(super) fn flushed_part(s: &Scanout, rect: Rect) -> Rect {
    if s.whole {
        s.rect
    } else {
        intersect(rect, s.rect)
    }
}

/// The smallest rectangle holding both (both inside one resource, so no overflow).
pub(super) fn union(a: Rect, b: Rect) -> Rect {
    let (x, y) = (a.x.min(b.x), a.y.min(b.y));
    let right = (a.x + a.width).max(b.x + b.width);
    let bottom = (a.y + a.height).max(b.y + b.height);
    Rect {
        x,
        y,
        width: right - x,
        height: bottom - y,
    }
}

/// Intersection of two rectangles (empty when they do not overlap).
pub(super) fn intersect(a: Rect, b: Rect) -> Rect {
    let x1 = a.x.max(b.x);
    let y1 = a.y.max(b.y);
    let x2 = (u64::from(a.x) + u64::from(a.width)).min(u64::from(b.x) + u64::from(b.width));
    let y2 = (u64::from(a.y) + u64::from(a.height)).min(u64::from(b.y) + u64::from(b.height));
    if u64::from(x1) >= x2 || u64::from(y1) >= y2 {
        return Rect::default();
    }
    Rect {
        x: x1,
        y: y1,
        width: (x2 - u64::from(x1)) as u32,
        height: (y2 - u64::from(y1)) as u32,
    }
}

impl GpuDevice {
    pub(super) fn set_scanout_blob(
        &mut self,
        scanout_id: u32,
        id: u32,
        rect: Rect,
        l: BlobLayout,
    ) -> GpuResult {
        let i = self.check_scanout(scanout_id)?;
        if id == 0 {
            self.scanouts[i] = Scanout::default();
            self.display.scanout(scanout_id, 0, 0);
            return Ok(GpuResponse::OkNoData);
        }
        let res = self.resource(id)?;
        let backing = match (res.blob_mem, &res.backing) {
            (Some(BLOB_MEM_GUEST | BLOB_MEM_HOST3D_GUEST), Some(b)) => b,
            _ => {
                return Err(invalid(format!(
                    "resource {id} is not a blob in guest memory"
                )))
            }
        };
        if !format::ALL.contains(&l.format) || l.width == 0 || l.height == 0 {
            return Err(invalid(format!("blob scanout layout {l:?}")));
        }
        // The image: `height` rows of `width * 4` bytes, `stride` apart, from `offset`.
        let row = u64::from(l.width) * u64::from(BYTES_PER_PIXEL);
        let end = u64::from(l.height - 1)
            .checked_mul(u64::from(l.stride))
            .and_then(|v| v.checked_add(row))
            .and_then(|v| v.checked_add(u64::from(l.offset)));
        if u64::from(l.stride) < row || !matches!(end, Some(e) if e <= backing.len) {
            return Err(invalid(format!(
                "blob scanout {l:?} does not fit {} bytes",
                backing.len
            )));
        }
        if rect.is_empty() || !rect.fits_in(l.width, l.height) {
            return Err(invalid(format!(
                "scanout rect {rect:?} in a {}x{} image",
                l.width, l.height
            )));
        }
        debug!("scanout {scanout_id}: guest blob {id}, {l:?}");
        self.place(i, id, rect, Some(l));
        Ok(GpuResponse::OkNoData)
    }

    /// Sends the part `r` of a blob scanout, read straight from the blob's guest memory.
    pub(super) fn flush_blob(
        &mut self,
        i: usize,
        s: Scanout,
        l: BlobLayout,
        r: Rect,
    ) -> Result<(), GpuError> {
        let res = self
            .resources
            .get(&s.resource_id)
            .ok_or(GpuError::InvalidResource(s.resource_id))?;
        let backing = res
            .backing
            .as_ref()
            .ok_or_else(|| invalid("blob without memory"))?;
        let row = r.width as usize * 4;
        let packed = &mut self.packed;
        packed.clear();
        packed.resize(row * r.height as usize, 0);
        for (y, dst) in packed.chunks_exact_mut(row).enumerate() {
            // In bounds: the layout was checked against the blob at SET_SCANOUT_BLOB, and r
            // lies inside the layout's image.
            let off = u64::from(l.offset)
                + (u64::from(r.y) + y as u64) * u64::from(l.stride)
                + u64::from(r.x) * 4;
            backing.read_at(off, dst)?;
        }
        to_bgrx(l.format, &mut self.packed);
        let (x, y) = (r.x - s.rect.x, r.y - s.rect.y);
        self.display
            .update(i as u32, x, y, r.width, r.height, &self.packed);
        Ok(())
    }

    pub(super) fn display_info(&mut self) -> Vec<DisplayMode> {
        if !self.config.modes_from_user && self.display.present() {
            if let Some(theirs) = self.display.display_info(self.modes.len()) {
                let ok = |v: u32| (1..=edid::MAX_EDID_DIMENSION).contains(&v);
                for (mode, t) in self.modes.iter_mut().zip(&theirs) {
                    if t.enabled && ok(t.width) && ok(t.height) {
                        *mode = Mode {
                            width: t.width,
                            height: t.height,
                        };
                    }
                }
                return theirs
                    .iter()
                    .zip(&self.modes)
                    .map(|(t, m)| DisplayMode {
                        width: m.width,
                        height: m.height,
                        enabled: t.enabled,
                    })
                    .collect();
            }
        }
        self.modes
            .iter()
            .map(|m| DisplayMode {
                width: m.width,
                height: m.height,
                enabled: true,
            })
            .collect()
    }

    pub(super) fn get_edid(&mut self, scanout_id: u32) -> GpuResult {
        let i = self.check_scanout(scanout_id)?;
        // Always our EDID, with the full list of modes (QEMU's lacks 1280x800 and
        // 2560x1440). Without --display its preferred mode is the frontend's (its window's)
        // size now: Linux asks for the EDIDs before the display info after a display change,
        // so the frontend is asked here.
        if !self.config.modes_from_user && self.display.present() {
            self.display_info();
        }
        let m = self.modes[i];
        Ok(GpuResponse::OkEdid(
            edid::generate(scanout_id, m.width, m.height).to_vec(),
        ))
    }

    pub(super) fn set_scanout(&mut self, scanout_id: u32, id: u32, rect: Rect) -> GpuResult {
        let i = self.check_scanout(scanout_id)?;
        if id == 0 {
            self.scanouts[i] = Scanout::default();
            self.display.scanout(scanout_id, 0, 0);
            return Ok(GpuResponse::OkNoData);
        }
        let res = self.resource(id)?;
        if rect.is_empty() || !rect.fits_in(res.width, res.height) {
            return Err(invalid(format!(
                "scanout rect {rect:?} in a {}x{} resource",
                res.width, res.height
            )));
        }
        self.place(i, id, rect, None);
        Ok(GpuResponse::OkNoData)
    }

    /// Puts resource `id` (`rect` of it, laid out as `blob` for a blob) on scanout `i`,
    /// announcing it to the frontend when [`announces`] says so.
    fn place(&mut self, i: usize, id: u32, rect: Rect, blob: Option<BlobLayout>) {
        let old = self.scanouts[i];
        let announce = announces(&old, rect);
        self.scanouts[i] = Scanout {
            resource_id: id,
            rect,
            blob,
            whole: !announce && old.resource_id != id,
        };
        if announce {
            self.display.scanout(i as u32, rect.width, rect.height);
        }
    }

    /// Reads `rect` of resource `id` into `self.scratch` (laid out like the whole resource).
    pub(super) fn read_back(&mut self, id: u32, rect: Rect) -> Result<(), GpuError> {
        let res = self.resource(id)?;
        let need = usize::try_from(res.size).map_err(|_| invalid("resource too large"))?;
        if self.scratch.len() < need {
            self.scratch.resize(need, 0);
        }
        self.renderer
            .read_rect(id, rect, &mut self.scratch[..need])?;
        Ok(())
    }

    pub(super) fn flush(&mut self, id: u32, rect: Rect) -> GpuResult {
        if self.resource(id)?.args3d.is_none() {
            // Frames go out in the order they were flushed.
            self.finish_flushes();
        }
        let res = self.resource(id)?;
        if res.blob_mem.is_some() {
            // A blob is shown where SET_SCANOUT_BLOB put it; the flush rect is clipped to that.
            for i in 0..self.scanouts.len() {
                let s = self.scanouts[i];
                let Some(l) = s.blob.filter(|_| s.resource_id == id) else {
                    continue;
                };
                let r = flushed_part(&s, rect);
                if !r.is_empty() && self.display.wants_frames() {
                    self.flush_blob(i, s, l, r)?;
                    self.scanouts[i].whole = false;
                }
            }
            return Ok(GpuResponse::OkNoData);
        }
        if !rect.fits_in(res.width, res.height) {
            return Err(invalid(format!(
                "rect {rect:?} in a {}x{} resource",
                res.width, res.height
            )));
        }
        if res.args3d.is_some() {
            // A 3D frame is read back once the commands after it have gone to the renderer
            // (see `finish_flushes`).
            match self.deferred {
                Some((pending, r)) if pending == id => self.deferred = Some((id, union(r, rect))),
                _ => {
                    self.finish_flushes();
                    self.deferred = Some((id, rect));
                }
            }
            return Ok(GpuResponse::OkNoData);
        }
        self.show(id, rect)
    }

    /// Reads back `rect` of resource `id` for the scanouts showing it and sends it.
    fn show(&mut self, id: u32, rect: Rect) -> GpuResult {
        let res = self.resource(id)?;
        let (fmt, stride) = (res.format, res.stride() as usize);
        let full_width = res.width;
        // Read back rows come in the resource's memory order, which is the picture's order for
        // every resource: Y_0_TOP only tells a GL display how the *texture* is stored, and
        // virglrenderer's transfers undo that (checked with real Mesa guests: fbcon on 2D
        // resources and EGL window surfaces both come out top row first).
        for i in 0..self.scanouts.len() {
            let s = self.scanouts[i];
            if s.resource_id != id {
                continue;
            }
            let r = flushed_part(&s, rect);
            if r.is_empty() || !self.display.wants_frames() {
                continue;
            }
            self.scanouts[i].whole = false;
            self.read_back(id, r)?;
            let row = r.width as usize * 4;
            let start = r.y as usize * stride + r.x as usize * 4;
            let bytes = r.height as usize * row;
            if start == 0 && r.width == full_width {
                // The rect is the start of the scratch buffer: hand the buffer itself to the
                // display, which may queue it as it is, and read the next frame into another.
                let mut buf = std::mem::take(&mut self.scratch);
                buf.truncate(bytes);
                to_bgrx(fmt, &mut buf);
                self.scratch = self.display.update_owned(
                    i as u32,
                    r.x - s.rect.x,
                    r.y - s.rect.y,
                    r.width,
                    r.height,
                    buf,
                );
                continue;
            }
            // A full-width rect is already packed in the scratch buffer; otherwise pack it.
            let data: &mut [u8] = if r.x == 0 && r.width == full_width {
                &mut self.scratch[start..start + bytes]
            } else {
                self.packed.clear();
                for y in 0..r.height as usize {
                    let from = start + y * stride;
                    self.packed
                        .extend_from_slice(&self.scratch[from..from + row]);
                }
                &mut self.packed[..]
            };
            to_bgrx(fmt, data);
            self.display.update(
                i as u32,
                r.x - s.rect.x,
                r.y - s.rect.y,
                r.width,
                r.height,
                data,
            );
        }
        Ok(GpuResponse::OkNoData)
    }

    /// Carries out a deferred 3D flush. RESOURCE_FLUSH of a 3D resource is answered at once and
    /// read back later: after the queue thread has answered its batch, or before the next
    /// command other than SUBMIT_3D. A guest that page-flips sends its next frame's SUBMIT_3D
    /// right after the flush, and that no longer waits for the readback. The picture is the
    /// resource as of the readback, which a SUBMIT_3D after the flush may already have drawn
    /// into, as QEMU's own virgl display, which draws the texture at its next redraw.
    pub fn finish_flushes(&mut self) {
        if let Some((id, rect)) = self.deferred.take() {
            if let Err(e) = self.show(id, rect) {
                guest_warn!("RESOURCE_FLUSH of {id}: {e}");
            }
        }
    }

    pub(super) fn update_cursor(
        &mut self,
        pos: Cursor,
        id: u32,
        hot_x: u32,
        hot_y: u32,
    ) -> GpuResult {
        self.check_scanout(pos.scanout_id)?;
        if id == 0 {
            self.display.cursor_hide(pos.scanout_id, pos.x, pos.y);
            return Ok(GpuResponse::OkNoData);
        }
        let res = self.resource(id)?;
        let (fmt, stride) = (res.format, res.stride() as usize);
        let (w, h) = (res.width.min(64), res.height.min(64));
        self.read_back(
            id,
            Rect {
                x: 0,
                y: 0,
                width: w,
                height: h,
            },
        )?;
        let mut image = Box::new([0u8; CURSOR_BYTES]);
        let row = w as usize * 4;
        for y in 0..h as usize {
            let from = y * stride;
            image[y * 256..y * 256 + row].copy_from_slice(&self.scratch[from..from + row]);
        }
        to_bgrx(fmt, &mut image[..]);
        self.display
            .cursor_update((pos.scanout_id, pos.x, pos.y), (hot_x, hot_y), &image);
        Ok(GpuResponse::OkNoData)
    }
}
