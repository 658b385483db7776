//! The 2D renderer on rutabaga_gfx's 2D component.

use std::collections::HashMap;
use std::io::IoSliceMut;

use rutabaga_gfx::{
    ResourceCreate3D, Rutabaga, RutabagaBuilder, RutabagaComponentType, RutabagaError,
    RutabagaHandler, RutabagaIovec, Transfer3D,
};

use crate::renderer::{Iovec, Rect, Renderer, RendererError, RendererKind, RendererResult};
use crate::BYTES_PER_PIXEL;

/// Gallium's PIPE_TEXTURE_2D and PIPE_BIND_RENDER_TARGET: what a 2D resource is to rutabaga.
const PIPE_TEXTURE_2D: u32 = 2;
const PIPE_BIND_RENDER_TARGET: u32 = 2;

#[derive(Clone, Copy)]
struct Dims {
    width: u32,
    height: u32,
}

/// 2D renderer: resources live in host memory, guest pixels are copied in on transfer.
pub struct Renderer2D {
    rutabaga: Rutabaga,
    dims: HashMap<u32, Dims>,
}

// SAFETY: `Rutabaga` is not `Send` only because its component map holds
// `Box<dyn RutabagaComponent>` without a `Send` bound. `Renderer2D::new` builds rutabaga with
// capset mask 0 and the 2D component as default, so the map holds exactly one `Rutabaga2D`, whose
// state is a `RutabagaFenceHandler` (an `Arc` of a `Send + Sync` closure); resources hold host
// vectors and `RutabagaIovec`s (which rutabaga itself marks `Send`). Nothing in it is tied to
// the creating thread (no thread-locals, no GL context), and every access goes through
// `&mut self`, so moving it to another thread is sound.
unsafe impl Send for Renderer2D {}

fn backend_err(e: RutabagaError) -> RendererError {
    RendererError::Backend(e.to_string())
}

impl Renderer2D {
    /// Builds rutabaga's 2D component.
    pub fn new() -> RendererResult<Self> {
        // 2D work completes synchronously, so fences never reach this handler.
        let rutabaga = RutabagaBuilder::new(0, RutabagaHandler::new(|_| {}))
            .set_default_component(RutabagaComponentType::Rutabaga2D)
            .build()
            .map_err(backend_err)?;
        Ok(Renderer2D {
            rutabaga,
            dims: HashMap::new(),
        })
    }

    fn dims(&self, resource_id: u32) -> RendererResult<Dims> {
        self.dims
            .get(&resource_id)
            .copied()
            .ok_or(RendererError::UnknownResource(resource_id))
    }
}

impl Renderer for Renderer2D {
    fn kind(&self) -> RendererKind {
        RendererKind::TwoD
    }

    fn num_capsets(&self) -> u32 {
        0
    }

    fn create_2d(
        &mut self,
        resource_id: u32,
        format: u32,
        width: u32,
        height: u32,
    ) -> RendererResult<()> {
        if self.dims.contains_key(&resource_id) {
            return Err(RendererError::ResourceExists(resource_id));
        }
        // rutabaga computes width * 4 in u32 and width * height * 4 in usize: refuse anything
        // that would overflow either.
        let stride = width
            .checked_mul(BYTES_PER_PIXEL)
            .ok_or(RendererError::InvalidParameter("width"))?;
        (stride as usize)
            .checked_mul(height as usize)
            .ok_or(RendererError::InvalidParameter("size"))?;
        let create = ResourceCreate3D {
            target: PIPE_TEXTURE_2D,
            format,
            bind: PIPE_BIND_RENDER_TARGET,
            width,
            height,
            depth: 1,
            array_size: 1,
            last_level: 0,
            nr_samples: 0,
            flags: 0,
        };
        self.rutabaga
            .resource_create_3d(resource_id, create)
            .map_err(backend_err)?;
        self.dims.insert(resource_id, Dims { width, height });
        Ok(())
    }

    fn unref(&mut self, resource_id: u32) -> RendererResult<()> {
        self.dims
            .remove(&resource_id)
            .ok_or(RendererError::UnknownResource(resource_id))?;
        self.rutabaga
            .unref_resource(resource_id)
            .map_err(backend_err)
    }

    fn attach_backing(&mut self, resource_id: u32, iovecs: Vec<Iovec>) -> RendererResult<()> {
        self.dims(resource_id)?;
        let vecs = iovecs
            .into_iter()
            .map(|v| RutabagaIovec {
                base: v.base.cast(),
                len: v.len,
            })
            .collect();
        self.rutabaga
            .attach_backing(resource_id, vecs)
            .map_err(backend_err)
    }

    fn detach_backing(&mut self, resource_id: u32) -> RendererResult<()> {
        self.dims(resource_id)?;
        self.rutabaga
            .detach_backing(resource_id)
            .map_err(backend_err)
    }

    fn transfer_to_host_2d(
        &mut self,
        resource_id: u32,
        rect: Rect,
        offset: u64,
    ) -> RendererResult<()> {
        let d = self.dims(resource_id)?;
        if !rect.fits_in(d.width, d.height) {
            return Err(RendererError::InvalidParameter("rect outside resource"));
        }
        // virtio-gpu (Linux, QEMU): `offset` is where the rect's top-left pixel sits in the
        // backing. rutabaga adds y * stride + x * 4 to its offset itself, so hand it the
        // offset of the backing's pixel (0, 0). A guest offset that lies before the rect's
        // origin cannot be expressed that way and is refused.
        let stride = u64::from(d.width) * u64::from(BYTES_PER_PIXEL);
        let origin = u64::from(rect.y) * stride + u64::from(rect.x) * u64::from(BYTES_PER_PIXEL);
        let base = offset
            .checked_sub(origin)
            .ok_or(RendererError::InvalidParameter(
                "offset lies before the rect's origin",
            ))?;
        let offset = base;
        let transfer = Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, offset);
        self.rutabaga
            .transfer_write(0, resource_id, transfer, None)
            .map_err(|e| match e {
                RutabagaError::InvalidIovec => RendererError::NoBacking(resource_id),
                e => backend_err(e),
            })
    }

    fn read_rect(&mut self, resource_id: u32, rect: Rect, dst: &mut [u8]) -> RendererResult<()> {
        let d = self.dims(resource_id)?;
        if !rect.fits_in(d.width, d.height) {
            return Err(RendererError::InvalidParameter("rect outside resource"));
        }
        let stride = d.width * BYTES_PER_PIXEL; // checked at create
        let needed = stride as usize * d.height as usize;
        if dst.len() < needed {
            return Err(RendererError::InvalidParameter("destination too small"));
        }
        let mut transfer = Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, 0);
        transfer.stride = stride;
        self.rutabaga
            .transfer_read(0, resource_id, transfer, Some(IoSliceMut::new(dst)))
            .map_err(backend_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_then_read_back_copies_the_rect() {
        let mut r = Renderer2D::new().unwrap();
        r.create_2d(1, 1, 4, 2).unwrap();
        let mut guest: Vec<u8> = (0..32u8).collect();
        // Backing split in two pieces to exercise the scatter path.
        let (a, b) = guest.split_at_mut(12);
        r.attach_backing(
            1,
            vec![
                Iovec {
                    base: a.as_mut_ptr(),
                    len: a.len(),
                },
                Iovec {
                    base: b.as_mut_ptr(),
                    len: b.len(),
                },
            ],
        )
        .unwrap();
        let rect = Rect {
            x: 1,
            y: 0,
            width: 2,
            height: 2,
        };
        r.transfer_to_host_2d(1, rect, 4).unwrap();
        let mut out = vec![0u8; 32];
        r.read_rect(1, rect, &mut out).unwrap();
        assert_eq!(&out[4..12], &(4..12u8).collect::<Vec<_>>()[..]);
        assert_eq!(&out[20..28], &(20..28u8).collect::<Vec<_>>()[..]);
        assert_eq!(&out[0..4], &[0, 0, 0, 0]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut r = Renderer2D::new().unwrap();
        assert!(r.create_2d(1, 1, u32::MAX, 2).is_err());
        r.create_2d(2, 1, 4, 4).unwrap();
        assert!(matches!(
            r.create_2d(2, 1, 4, 4),
            Err(RendererError::ResourceExists(2))
        ));
        let rect = Rect {
            x: 3,
            y: 0,
            width: 2,
            height: 1,
        };
        assert!(r.transfer_to_host_2d(2, rect, 0).is_err());
        let ok = Rect {
            x: 0,
            y: 0,
            width: 1,
            height: 1,
        };
        assert!(matches!(
            r.transfer_to_host_2d(2, ok, 0),
            Err(RendererError::NoBacking(2))
        ));
        assert!(r.transfer_to_host_2d(2, Rect { x: 1, ..ok }, 0).is_err());
        assert!(matches!(r.unref(9), Err(RendererError::UnknownResource(9))));
        let mut small = [0u8; 4];
        assert!(r.read_rect(2, ok, &mut small).is_err());
    }
}
