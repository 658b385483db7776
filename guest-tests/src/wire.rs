//! virtio-gpu wire format, written from the spec's numbers for the harness side.

pub const GET_DISPLAY_INFO: u32 = 0x0100;
pub const RESOURCE_CREATE_2D: u32 = 0x0101;
pub const RESOURCE_UNREF: u32 = 0x0102;
pub const SET_SCANOUT: u32 = 0x0103;
pub const RESOURCE_FLUSH: u32 = 0x0104;
pub const TRANSFER_TO_HOST_2D: u32 = 0x0105;
pub const RESOURCE_ATTACH_BACKING: u32 = 0x0106;
pub const RESOURCE_DETACH_BACKING: u32 = 0x0107;
pub const GET_CAPSET_INFO: u32 = 0x0108;
pub const GET_CAPSET: u32 = 0x0109;
pub const GET_EDID: u32 = 0x010a;
pub const RESOURCE_ASSIGN_UUID: u32 = 0x010b;
pub const RESOURCE_CREATE_BLOB: u32 = 0x010c;
pub const SET_SCANOUT_BLOB: u32 = 0x010d;
pub const RESOURCE_MAP_BLOB: u32 = 0x0208;
pub const RESOURCE_UNMAP_BLOB: u32 = 0x0209;
pub const CTX_CREATE: u32 = 0x0200;
pub const CTX_DESTROY: u32 = 0x0201;
pub const CTX_ATTACH_RESOURCE: u32 = 0x0202;
pub const CTX_DETACH_RESOURCE: u32 = 0x0203;
pub const RESOURCE_CREATE_3D: u32 = 0x0204;
pub const TRANSFER_TO_HOST_3D: u32 = 0x0205;
pub const TRANSFER_FROM_HOST_3D: u32 = 0x0206;
pub const SUBMIT_3D: u32 = 0x0207;
pub const UPDATE_CURSOR: u32 = 0x0300;
pub const MOVE_CURSOR: u32 = 0x0301;

pub const OK_NODATA: u32 = 0x1100;
pub const OK_DISPLAY_INFO: u32 = 0x1101;
pub const OK_CAPSET_INFO: u32 = 0x1102;
pub const OK_CAPSET: u32 = 0x1103;
pub const OK_EDID: u32 = 0x1104;
pub const OK_RESOURCE_UUID: u32 = 0x1105;
pub const OK_MAP_INFO: u32 = 0x1106;
pub const ERR_UNSPEC: u32 = 0x1200;
pub const ERR_OUT_OF_MEMORY: u32 = 0x1201;
pub const ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
pub const BLOB_MEM_GUEST: u32 = 1;
pub const BLOB_MEM_HOST3D: u32 = 2;
/// VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE.
pub const BLOB_FLAG_MAPPABLE: u32 = 1;
/// VIRTIO_GPU_CAPSET_VENUS.
pub const CAPSET_VENUS: u32 = 4;
pub const ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
pub const ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
pub const ERR_INVALID_PARAMETER: u32 = 0x1205;

pub const FLAG_FENCE: u32 = 1;
pub const FLAG_INFO_RING_IDX: u32 = 2;

pub const B8G8R8A8: u32 = 1;
pub const B8G8R8X8: u32 = 2;
pub const A8R8G8B8: u32 = 3;
pub const X8R8G8B8: u32 = 4;
pub const R8G8B8A8: u32 = 67;
pub const X8B8G8R8: u32 = 68;
pub const A8B8G8R8: u32 = 121;
pub const R8G8B8X8: u32 = 134;
pub const FORMATS: [u32; 8] = [
    B8G8R8A8, B8G8R8X8, A8R8G8B8, X8R8G8B8, R8G8B8A8, X8B8G8R8, A8B8G8R8, R8G8B8X8,
];

/// virtio feature bits the device offers.
pub const F_EDID: u64 = 1 << 1;
pub const F_RESOURCE_UUID: u64 = 1 << 2;
pub const F_VIRGL: u64 = 1 << 0;
pub const F_RESOURCE_BLOB: u64 = 1 << 3;
pub const F_CONTEXT_INIT: u64 = 1 << 4;
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX: used_event / avail_event suppress notifications.
pub const F_RING_EVENT_IDX: u64 = 1 << 29;
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_EVENT_IDX: u64 = 1 << 29;

/// A little-endian byte builder.
#[derive(Default, Clone)]
pub struct Msg(pub Vec<u8>);

impl Msg {
    /// A request header.
    pub fn hdr(type_: u32, flags: u32, fence_id: u64, ctx_id: u32, ring_idx: u8) -> Self {
        Msg::default()
            .u32(type_)
            .u32(flags)
            .u64(fence_id)
            .u32(ctx_id)
            .bytes(&[ring_idx, 0, 0, 0])
    }
    /// A plain request header.
    pub fn cmd(type_: u32) -> Self {
        Msg::hdr(type_, 0, 0, 0, 0)
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// A rectangle x, y, w, h.
    pub fn rect(self, x: u32, y: u32, w: u32, h: u32) -> Self {
        self.u32(x).u32(y).u32(w).u32(h)
    }
}

/// Reads a little-endian u32 at `off` (0 when out of range, for asserting on short replies).
pub fn le32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Reads a little-endian u64 at `off`.
pub fn le64(b: &[u8], off: usize) -> u64 {
    u64::from(le32(b, off)) | (u64::from(le32(b, off + 4)) << 32)
}

/// The response header's fields: (type, flags, fence_id, ctx_id, ring_idx).
pub fn resp_hdr(b: &[u8]) -> (u32, u32, u64, u32, u8) {
    (
        le32(b, 0),
        le32(b, 4),
        le64(b, 8),
        le32(b, 16),
        b.get(20).copied().unwrap_or(0),
    )
}

/// virgl command stream: a command header.
pub fn virgl_cmd(cmd: u32, obj: u32, len: u32) -> u32 {
    cmd | (obj << 8) | (len << 16)
}

/// virgl command stream pieces used by the tests (virgl_protocol.h numbers).
pub mod virgl {
    pub const CCMD_CREATE_OBJECT: u32 = 1;
    pub const CCMD_SET_FRAMEBUFFER_STATE: u32 = 5;
    pub const CCMD_CLEAR: u32 = 7;
    pub const CCMD_BLIT: u32 = 16;
    pub const OBJECT_SURFACE: u32 = 8;
    pub const PIPE_CLEAR_COLOR0: u32 = 4;
    pub const PIPE_TEXTURE_2D: u32 = 2;
    pub const BIND_RENDER_TARGET: u32 = 2;
    pub const BIND_SAMPLER_VIEW: u32 = 8;
    pub const FORMAT_B8G8R8A8_UNORM: u32 = 1;

    /// Surface `surf` on resource `res`, made the only colour buffer, cleared to `rgba`.
    pub fn clear(surf: u32, res: u32, rgba: [f32; 4]) -> Vec<u32> {
        vec![
            super::virgl_cmd(CCMD_CREATE_OBJECT, OBJECT_SURFACE, 5),
            surf,
            res,
            FORMAT_B8G8R8A8_UNORM,
            0,
            0,
            super::virgl_cmd(CCMD_SET_FRAMEBUFFER_STATE, 0, 3),
            1,
            0,
            surf,
            super::virgl_cmd(CCMD_CLEAR, 0, 8),
            PIPE_CLEAR_COLOR0,
            rgba[0].to_bits(),
            rgba[1].to_bits(),
            rgba[2].to_bits(),
            rgba[3].to_bits(),
            0,
            0,
            0,
        ]
    }

    /// Blit of box (x, y, w, h) of `src` to (dx, dy, w, h) of `dst`, all colour channels.
    pub fn blit(
        dst: u32,
        src: u32,
        (x, y, w, h): (u32, u32, u32, u32),
        (dx, dy): (u32, u32),
    ) -> Vec<u32> {
        vec![
            super::virgl_cmd(CCMD_BLIT, 0, 21),
            0xf,
            0,
            0,
            dst,
            0,
            FORMAT_B8G8R8A8_UNORM,
            dx,
            dy,
            0,
            w,
            h,
            1,
            src,
            0,
            FORMAT_B8G8R8A8_UNORM,
            x,
            y,
            0,
            w,
            h,
            1,
        ]
    }
}
