//! The virtio-gpu wire protocol: wire structs, a descriptor chain decoded into one
//! [`GpuCommand`], and typed [`GpuResponse`]s encoded into the chain's writable part.
//!
//! Decoding reads only what the chain holds: a chain too short for its command is a
//! [`DecodeError`], never a panic. Lengths from the guest (`nr_entries`) are bounded before
//! anything is allocated.

use std::io::{Read, Write};

use vm_memory::{ByteValued, Le32, Le64};

/// Command types (request `type` field).
pub mod cmd {
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
    pub const CTX_CREATE: u32 = 0x0200;
    pub const CTX_DESTROY: u32 = 0x0201;
    pub const CTX_ATTACH_RESOURCE: u32 = 0x0202;
    pub const CTX_DETACH_RESOURCE: u32 = 0x0203;
    pub const RESOURCE_CREATE_3D: u32 = 0x0204;
    pub const TRANSFER_TO_HOST_3D: u32 = 0x0205;
    pub const TRANSFER_FROM_HOST_3D: u32 = 0x0206;
    pub const SUBMIT_3D: u32 = 0x0207;
    pub const RESOURCE_MAP_BLOB: u32 = 0x0208;
    pub const RESOURCE_UNMAP_BLOB: u32 = 0x0209;
    pub const UPDATE_CURSOR: u32 = 0x0300;
    pub const MOVE_CURSOR: u32 = 0x0301;
}

/// Response types.
pub mod resp {
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
    pub const ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
    pub const ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
    pub const ERR_INVALID_PARAMETER: u32 = 0x1205;
}

/// Header flag: reply only when the work is done, echoing the fence.
pub const FLAG_FENCE: u32 = 1;
/// Header flag: `ring_idx` is meaningful.
pub const FLAG_INFO_RING_IDX: u32 = 2;

/// Most scanouts a virtio-gpu device may have.
pub const MAX_SCANOUTS: usize = 16;
/// Size of the EDID blob in OK_EDID.
pub const EDID_BLOB_SIZE: usize = 1024;
/// Upper bound on `nr_entries` of RESOURCE_ATTACH_BACKING: enough for a 1 GiB resource in
/// 4 KiB pages. Larger lists are refused before anything is allocated.
pub const MAX_BACKING_ENTRIES: u32 = 262_144;
/// Upper bound on a SUBMIT_3D command stream (Mesa's virgl driver sends at most 256 KiB).
pub const MAX_SUBMIT_SIZE: u32 = 16 << 20;

/// A reader that knows how many bytes remain (virtio-queue's `Reader`, or a byte slice).
pub trait ChainRead: Read {
    fn remaining(&self) -> usize;
}

impl<B: vm_memory::bitmap::BitmapSlice> ChainRead for virtio_queue::Reader<'_, B> {
    fn remaining(&self) -> usize {
        self.available_bytes()
    }
}

impl ChainRead for &[u8] {
    fn remaining(&self) -> usize {
        self.len()
    }
}

macro_rules! wire {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name { $(pub $field: $ty),* }
        // SAFETY: the struct is repr(C), made only of little-endian integer wrappers and byte
        // arrays with no implicit padding (sizes asserted below), so any byte pattern is valid.
        unsafe impl ByteValued for $name {}
    };
}

wire!(
    /// The 24-byte header on every request and response.
    CtrlHdr { type_: Le32, flags: Le32, fence_id: Le64, ctx_id: Le32, ring_idx: u8, padding: [u8; 3] }
);
wire!(
    /// A rectangle.
    WireRect { x: Le32, y: Le32, width: Le32, height: Le32 }
);
wire!(ResourceCreate2d {
    resource_id: Le32,
    format: Le32,
    width: Le32,
    height: Le32
});
wire!(ResourceIdPad {
    resource_id: Le32,
    padding: Le32
});
wire!(SetScanout {
    r: WireRect,
    scanout_id: Le32,
    resource_id: Le32
});
wire!(ResourceFlush {
    r: WireRect,
    resource_id: Le32,
    padding: Le32
});
wire!(TransferToHost2d {
    r: WireRect,
    offset: Le64,
    resource_id: Le32,
    padding: Le32
});
wire!(AttachBacking {
    resource_id: Le32,
    nr_entries: Le32
});
wire!(MemEntry {
    addr: Le64,
    length: Le32,
    padding: Le32
});
wire!(GetCapsetInfo {
    capset_index: Le32,
    padding: Le32
});
wire!(GetCapset {
    capset_id: Le32,
    capset_version: Le32
});
wire!(GetEdid {
    scanout: Le32,
    padding: Le32
});
wire!(CursorPos {
    scanout_id: Le32,
    x: Le32,
    y: Le32,
    padding: Le32
});
wire!(UpdateCursor {
    pos: CursorPos,
    resource_id: Le32,
    hot_x: Le32,
    hot_y: Le32,
    padding: Le32
});
wire!(CtxCreate {
    nlen: Le32,
    context_init: Le32,
    name_lo: [u8; 32],
    name_hi: [u8; 32]
});
wire!(ResourceCreate3d {
    resource_id: Le32,
    target: Le32,
    format: Le32,
    bind: Le32,
    width: Le32,
    height: Le32,
    depth: Le32,
    array_size: Le32,
    last_level: Le32,
    nr_samples: Le32,
    flags: Le32,
    padding: Le32,
});
wire!(Transfer3dWire {
    x: Le32,
    y: Le32,
    z: Le32,
    w: Le32,
    h: Le32,
    d: Le32,
    offset: Le64,
    resource_id: Le32,
    level: Le32,
    stride: Le32,
    layer_stride: Le32,
});
wire!(Submit3d {
    size: Le32,
    num_in_fences: Le32
});
wire!(CreateBlob {
    resource_id: Le32,
    blob_mem: Le32,
    blob_flags: Le32,
    nr_entries: Le32,
    blob_id: Le64,
    size: Le64,
});
wire!(SetScanoutBlob {
    r: WireRect,
    scanout_id: Le32,
    resource_id: Le32,
    width: Le32,
    height: Le32,
    format: Le32,
    padding: Le32,
    strides: [Le32; 4],
    offsets: [Le32; 4],
});
wire!(MapBlob {
    resource_id: Le32,
    padding: Le32,
    offset: Le64,
});
wire!(RespMapInfo {
    map_info: Le32,
    padding: Le32
});
wire!(DisplayOne {
    r: WireRect,
    enabled: Le32,
    flags: Le32
});
wire!(RespCapsetInfo {
    capset_id: Le32,
    capset_max_version: Le32,
    capset_max_size: Le32,
    padding: Le32
});
wire!(RespEdidHead {
    size: Le32,
    padding: Le32
});

const _: () = {
    assert!(std::mem::size_of::<CtrlHdr>() == 24);
    assert!(std::mem::size_of::<WireRect>() == 16);
    assert!(std::mem::size_of::<SetScanout>() == 24);
    assert!(std::mem::size_of::<TransferToHost2d>() == 32);
    assert!(std::mem::size_of::<MemEntry>() == 16);
    assert!(std::mem::size_of::<UpdateCursor>() == 32);
    assert!(std::mem::size_of::<DisplayOne>() == 24);
    assert!(std::mem::size_of::<RespCapsetInfo>() == 16);
};

/// Host-side shapes shared with the renderer.
pub use virgl_bridge::{Box3d, Rect, Resource3d, Transfer3d};

impl From<WireRect> for Rect {
    fn from(r: WireRect) -> Self {
        Rect {
            x: r.x.into(),
            y: r.y.into(),
            width: r.width.into(),
            height: r.height.into(),
        }
    }
}

/// The fields of a request header that a response echoes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub type_: u32,
    pub flags: u32,
    pub fence_id: u64,
    pub ctx_id: u32,
    pub ring_idx: u8,
}

impl From<CtrlHdr> for Header {
    fn from(h: CtrlHdr) -> Self {
        Header {
            type_: h.type_.into(),
            flags: h.flags.into(),
            fence_id: h.fence_id.into(),
            ctx_id: h.ctx_id.into(),
            ring_idx: h.ring_idx,
        }
    }
}

impl Header {
    /// True when the request asks for a fenced reply.
    pub fn fenced(&self) -> bool {
        self.flags & FLAG_FENCE != 0
    }
}

/// Cursor position as the guest sends it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub scanout_id: u32,
    pub x: u32,
    pub y: u32,
}

/// One decoded command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuCommand {
    GetDisplayInfo,
    ResourceCreate2d {
        resource_id: u32,
        format: u32,
        width: u32,
        height: u32,
    },
    ResourceUnref {
        resource_id: u32,
    },
    SetScanout {
        rect: Rect,
        scanout_id: u32,
        resource_id: u32,
    },
    ResourceFlush {
        rect: Rect,
        resource_id: u32,
    },
    TransferToHost2d {
        rect: Rect,
        offset: u64,
        resource_id: u32,
    },
    /// Guest (address, length) pairs, in order.
    ResourceAttachBacking {
        resource_id: u32,
        entries: Vec<(u64, u32)>,
    },
    ResourceDetachBacking {
        resource_id: u32,
    },
    GetCapsetInfo {
        index: u32,
    },
    GetCapset {
        id: u32,
        version: u32,
    },
    GetEdid {
        scanout_id: u32,
    },
    ResourceAssignUuid {
        resource_id: u32,
    },
    UpdateCursor {
        pos: Cursor,
        resource_id: u32,
        hot_x: u32,
        hot_y: u32,
    },
    MoveCursor {
        pos: Cursor,
    },
    /// The context id is the header's; `name` is at most 64 bytes.
    CtxCreate {
        context_init: u32,
        name: Vec<u8>,
    },
    CtxDestroy,
    CtxAttachResource {
        resource_id: u32,
    },
    CtxDetachResource {
        resource_id: u32,
    },
    ResourceCreate3d {
        resource_id: u32,
        args: Resource3d,
    },
    TransferToHost3d {
        resource_id: u32,
        t: Transfer3d,
    },
    TransferFromHost3d {
        resource_id: u32,
        t: Transfer3d,
    },
    /// The command stream, copied out of guest memory.
    Submit3d {
        cmds: Vec<u8>,
    },
    ResourceCreateBlob {
        resource_id: u32,
        blob_mem: u32,
        blob_flags: u32,
        blob_id: u64,
        size: u64,
        entries: Vec<(u64, u32)>,
    },
    SetScanoutBlob {
        rect: Rect,
        scanout_id: u32,
        resource_id: u32,
        width: u32,
        height: u32,
        format: u32,
        strides: [u32; 4],
        offsets: [u32; 4],
    },
    /// RESOURCE_MAP_BLOB: map a host blob at `offset` of the host-visible region.
    ResourceMapBlob {
        resource_id: u32,
        offset: u64,
    },
    /// RESOURCE_UNMAP_BLOB.
    ResourceUnmapBlob {
        resource_id: u32,
    },
}

impl GpuCommand {
    /// True for the commands only a 3D renderer carries out.
    pub fn needs_3d(&self) -> bool {
        matches!(
            self,
            GpuCommand::CtxCreate { .. }
                | GpuCommand::CtxDestroy
                | GpuCommand::CtxAttachResource { .. }
                | GpuCommand::CtxDetachResource { .. }
                | GpuCommand::ResourceCreate3d { .. }
                | GpuCommand::TransferToHost3d { .. }
                | GpuCommand::TransferFromHost3d { .. }
                | GpuCommand::Submit3d { .. }
                | GpuCommand::ResourceCreateBlob { .. }
        )
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            GpuCommand::GetDisplayInfo => "GET_DISPLAY_INFO",
            GpuCommand::ResourceCreate2d { .. } => "RESOURCE_CREATE_2D",
            GpuCommand::ResourceUnref { .. } => "RESOURCE_UNREF",
            GpuCommand::SetScanout { .. } => "SET_SCANOUT",
            GpuCommand::ResourceFlush { .. } => "RESOURCE_FLUSH",
            GpuCommand::TransferToHost2d { .. } => "TRANSFER_TO_HOST_2D",
            GpuCommand::ResourceAttachBacking { .. } => "RESOURCE_ATTACH_BACKING",
            GpuCommand::ResourceDetachBacking { .. } => "RESOURCE_DETACH_BACKING",
            GpuCommand::GetCapsetInfo { .. } => "GET_CAPSET_INFO",
            GpuCommand::GetCapset { .. } => "GET_CAPSET",
            GpuCommand::GetEdid { .. } => "GET_EDID",
            GpuCommand::ResourceAssignUuid { .. } => "RESOURCE_ASSIGN_UUID",
            GpuCommand::UpdateCursor { .. } => "UPDATE_CURSOR",
            GpuCommand::MoveCursor { .. } => "MOVE_CURSOR",
            GpuCommand::CtxCreate { .. } => "CTX_CREATE",
            GpuCommand::CtxDestroy => "CTX_DESTROY",
            GpuCommand::CtxAttachResource { .. } => "CTX_ATTACH_RESOURCE",
            GpuCommand::CtxDetachResource { .. } => "CTX_DETACH_RESOURCE",
            GpuCommand::ResourceCreate3d { .. } => "RESOURCE_CREATE_3D",
            GpuCommand::TransferToHost3d { .. } => "TRANSFER_TO_HOST_3D",
            GpuCommand::TransferFromHost3d { .. } => "TRANSFER_FROM_HOST_3D",
            GpuCommand::Submit3d { .. } => "SUBMIT_3D",
            GpuCommand::ResourceCreateBlob { .. } => "RESOURCE_CREATE_BLOB",
            GpuCommand::SetScanoutBlob { .. } => "SET_SCANOUT_BLOB",
            GpuCommand::ResourceMapBlob { .. } => "RESOURCE_MAP_BLOB",
            GpuCommand::ResourceUnmapBlob { .. } => "RESOURCE_UNMAP_BLOB",
        }
    }
}

/// Why a chain did not decode into a command.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("chain too short for the header")]
    ShortHeader,
    #[error("chain too short for command {0:#x}")]
    ShortBody(u32),
    #[error("unknown command type {0:#x}")]
    UnknownType(u32),
    #[error("attach-backing with {0} entries (limit {1}, --max-backing-entries)")]
    TooManyEntries(u32, u32),
    #[error("SUBMIT_3D of {size} bytes with {available} in the chain (limit {limit}, --max-submit-size)")]
    BadSubmitSize {
        size: u32,
        available: usize,
        limit: u32,
    },
    #[error("SUBMIT_3D with {0} in-fences (fence passing is not offered)")]
    InFences(u32),
}

impl DecodeError {
    /// The response a guest gets for this decode failure.
    pub fn response(&self) -> GpuResponse {
        match self {
            DecodeError::TooManyEntries(..)
            | DecodeError::BadSubmitSize { .. }
            | DecodeError::InFences(_) => GpuResponse::ErrInvalidParameter,
            _ => GpuResponse::ErrUnspec,
        }
    }
}

fn read<T: ByteValued + Default, R: Read>(r: &mut R, type_: u32) -> Result<T, DecodeError> {
    let mut v = T::default();
    r.read_exact(v.as_mut_slice())
        .map_err(|_| DecodeError::ShortBody(type_))?;
    Ok(v)
}

fn cursor(c: CursorPos) -> Cursor {
    Cursor {
        scanout_id: c.scanout_id.into(),
        x: c.x.into(),
        y: c.y.into(),
    }
}

/// What a guest may make the decoder allocate for one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most entries in one ATTACH_BACKING / RESOURCE_CREATE_BLOB (16 bytes each).
    pub max_backing_entries: u32,
    /// Most bytes in one SUBMIT_3D command stream.
    pub max_submit_size: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_backing_entries: MAX_BACKING_ENTRIES,
            max_submit_size: MAX_SUBMIT_SIZE,
        }
    }
}

/// [`decode_with`] the default limits.
pub fn decode<R: ChainRead>(r: &mut R) -> (Option<Header>, Result<GpuCommand, DecodeError>) {
    decode_with(r, &DecodeLimits::default())
}

/// Reads the header, then the command. The header is returned whenever it could be read, so
/// that even a failed command's reply echoes its fence.
pub fn decode_with<R: ChainRead>(
    r: &mut R,
    limits: &DecodeLimits,
) -> (Option<Header>, Result<GpuCommand, DecodeError>) {
    let mut raw = CtrlHdr::default();
    if r.read_exact(raw.as_mut_slice()).is_err() {
        return (None, Err(DecodeError::ShortHeader));
    }
    let hdr = Header::from(raw);
    (Some(hdr), decode_body(r, hdr.type_, limits))
}

/// Reads `n` (addr, length) entries; `n` is bounded first.
fn read_entries<R: ChainRead>(
    r: &mut R,
    t: u32,
    n: u32,
    limits: &DecodeLimits,
) -> Result<Vec<(u64, u32)>, DecodeError> {
    if n > limits.max_backing_entries {
        return Err(DecodeError::TooManyEntries(n, limits.max_backing_entries));
    }
    // Bounded above (16 bytes an entry); entries missing from the chain fail the read.
    let mut entries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let e: MemEntry = read(r, t)?;
        entries.push((e.addr.into(), e.length.into()));
    }
    Ok(entries)
}

fn transfer_3d(c: Transfer3dWire) -> (u32, Transfer3d) {
    let t = Transfer3d {
        bx: Box3d {
            x: c.x.into(),
            y: c.y.into(),
            z: c.z.into(),
            w: c.w.into(),
            h: c.h.into(),
            d: c.d.into(),
        },
        level: c.level.into(),
        stride: c.stride.into(),
        layer_stride: c.layer_stride.into(),
        offset: c.offset.into(),
    };
    (c.resource_id.into(), t)
}

fn decode_body<R: ChainRead>(
    r: &mut R,
    t: u32,
    limits: &DecodeLimits,
) -> Result<GpuCommand, DecodeError> {
    use cmd::*;
    Ok(match t {
        GET_DISPLAY_INFO => GpuCommand::GetDisplayInfo,
        RESOURCE_CREATE_2D => {
            let c: ResourceCreate2d = read(r, t)?;
            GpuCommand::ResourceCreate2d {
                resource_id: c.resource_id.into(),
                format: c.format.into(),
                width: c.width.into(),
                height: c.height.into(),
            }
        }
        RESOURCE_UNREF => GpuCommand::ResourceUnref {
            resource_id: read::<ResourceIdPad, _>(r, t)?.resource_id.into(),
        },
        SET_SCANOUT => {
            let c: SetScanout = read(r, t)?;
            GpuCommand::SetScanout {
                rect: c.r.into(),
                scanout_id: c.scanout_id.into(),
                resource_id: c.resource_id.into(),
            }
        }
        RESOURCE_FLUSH => {
            let c: ResourceFlush = read(r, t)?;
            GpuCommand::ResourceFlush {
                rect: c.r.into(),
                resource_id: c.resource_id.into(),
            }
        }
        TRANSFER_TO_HOST_2D => {
            let c: TransferToHost2d = read(r, t)?;
            GpuCommand::TransferToHost2d {
                rect: c.r.into(),
                offset: c.offset.into(),
                resource_id: c.resource_id.into(),
            }
        }
        RESOURCE_ATTACH_BACKING => {
            let c: AttachBacking = read(r, t)?;
            let entries = read_entries(r, t, c.nr_entries.into(), limits)?;
            GpuCommand::ResourceAttachBacking {
                resource_id: c.resource_id.into(),
                entries,
            }
        }
        RESOURCE_DETACH_BACKING => GpuCommand::ResourceDetachBacking {
            resource_id: read::<ResourceIdPad, _>(r, t)?.resource_id.into(),
        },
        GET_CAPSET_INFO => GpuCommand::GetCapsetInfo {
            index: read::<GetCapsetInfo, _>(r, t)?.capset_index.into(),
        },
        GET_CAPSET => {
            let c: GetCapset = read(r, t)?;
            GpuCommand::GetCapset {
                id: c.capset_id.into(),
                version: c.capset_version.into(),
            }
        }
        GET_EDID => GpuCommand::GetEdid {
            scanout_id: read::<GetEdid, _>(r, t)?.scanout.into(),
        },
        RESOURCE_ASSIGN_UUID => GpuCommand::ResourceAssignUuid {
            resource_id: read::<ResourceIdPad, _>(r, t)?.resource_id.into(),
        },
        UPDATE_CURSOR => {
            let c: UpdateCursor = read(r, t)?;
            GpuCommand::UpdateCursor {
                pos: cursor(c.pos),
                resource_id: c.resource_id.into(),
                hot_x: c.hot_x.into(),
                hot_y: c.hot_y.into(),
            }
        }
        MOVE_CURSOR => GpuCommand::MoveCursor {
            pos: cursor(read::<UpdateCursor, _>(r, t)?.pos),
        },
        CTX_CREATE => {
            let c: CtxCreate = read(r, t)?;
            let n = (u32::from(c.nlen) as usize).min(64);
            let mut name = [c.name_lo, c.name_hi].concat();
            name.truncate(n);
            GpuCommand::CtxCreate {
                context_init: c.context_init.into(),
                name,
            }
        }
        CTX_DESTROY => GpuCommand::CtxDestroy,
        CTX_ATTACH_RESOURCE => GpuCommand::CtxAttachResource {
            resource_id: read::<ResourceIdPad, _>(r, t)?.resource_id.into(),
        },
        CTX_DETACH_RESOURCE => GpuCommand::CtxDetachResource {
            resource_id: read::<ResourceIdPad, _>(r, t)?.resource_id.into(),
        },
        RESOURCE_CREATE_3D => {
            let c: ResourceCreate3d = read(r, t)?;
            GpuCommand::ResourceCreate3d {
                resource_id: c.resource_id.into(),
                args: Resource3d {
                    target: c.target.into(),
                    format: c.format.into(),
                    bind: c.bind.into(),
                    width: c.width.into(),
                    height: c.height.into(),
                    depth: c.depth.into(),
                    array_size: c.array_size.into(),
                    last_level: c.last_level.into(),
                    nr_samples: c.nr_samples.into(),
                    flags: c.flags.into(),
                },
            }
        }
        TRANSFER_TO_HOST_3D => {
            let (resource_id, t) = transfer_3d(read(r, t)?);
            GpuCommand::TransferToHost3d { resource_id, t }
        }
        TRANSFER_FROM_HOST_3D => {
            let (resource_id, t) = transfer_3d(read(r, t)?);
            GpuCommand::TransferFromHost3d { resource_id, t }
        }
        SUBMIT_3D => {
            let c: Submit3d = read(r, t)?;
            let size: u32 = c.size.into();
            let in_fences: u32 = c.num_in_fences.into();
            if in_fences != 0 {
                return Err(DecodeError::InFences(in_fences));
            }
            let available = r.remaining();
            if size > limits.max_submit_size || size as usize > available {
                return Err(DecodeError::BadSubmitSize {
                    size,
                    available,
                    limit: limits.max_submit_size,
                });
            }
            // Bounded by the chain and the limit above before allocating.
            let mut cmds = vec![0u8; size as usize];
            r.read_exact(&mut cmds)
                .map_err(|_| DecodeError::ShortBody(t))?;
            GpuCommand::Submit3d { cmds }
        }
        RESOURCE_CREATE_BLOB => {
            let c: CreateBlob = read(r, t)?;
            GpuCommand::ResourceCreateBlob {
                resource_id: c.resource_id.into(),
                blob_mem: c.blob_mem.into(),
                blob_flags: c.blob_flags.into(),
                blob_id: c.blob_id.into(),
                size: c.size.into(),
                entries: read_entries(r, t, c.nr_entries.into(), limits)?,
            }
        }
        SET_SCANOUT_BLOB => {
            let c: SetScanoutBlob = read(r, t)?;
            GpuCommand::SetScanoutBlob {
                rect: c.r.into(),
                scanout_id: c.scanout_id.into(),
                resource_id: c.resource_id.into(),
                width: c.width.into(),
                height: c.height.into(),
                format: c.format.into(),
                strides: c.strides.map(u32::from),
                offsets: c.offsets.map(u32::from),
            }
        }
        RESOURCE_MAP_BLOB => {
            let c: MapBlob = read(r, t)?;
            GpuCommand::ResourceMapBlob {
                resource_id: c.resource_id.into(),
                offset: c.offset.into(),
            }
        }
        RESOURCE_UNMAP_BLOB => GpuCommand::ResourceUnmapBlob {
            resource_id: read::<ResourceIdPad, _>(r, t)?.resource_id.into(),
        },
        other => return Err(DecodeError::UnknownType(other)),
    })
}

/// One scanout as GET_DISPLAY_INFO reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DisplayMode {
    pub width: u32,
    pub height: u32,
    pub enabled: bool,
}

/// A typed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuResponse {
    OkNoData,
    OkDisplayInfo(Vec<DisplayMode>),
    OkCapsetInfo {
        id: u32,
        max_version: u32,
        max_size: u32,
    },
    OkCapset(Vec<u8>),
    /// EDID bytes (at most [`EDID_BLOB_SIZE`]).
    OkEdid(Vec<u8>),
    OkResourceUuid([u8; 16]),
    /// RESOURCE_MAP_BLOB's answer: the caching the guest maps with (VIRTIO_GPU_MAP_CACHE_*).
    OkMapInfo(u32),
    ErrUnspec,
    ErrOutOfMemory,
    ErrInvalidScanoutId,
    ErrInvalidResourceId,
    ErrInvalidContextId,
    ErrInvalidParameter,
}

/// Why a response could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("reply buffer of {have} bytes, {need} needed")]
    BufferTooSmall { have: usize, need: usize },
    #[error("writing the reply failed: {0}")]
    Io(#[from] std::io::Error),
}

impl GpuResponse {
    /// The response type code.
    pub fn code(&self) -> u32 {
        use resp::*;
        match self {
            GpuResponse::OkNoData => OK_NODATA,
            GpuResponse::OkDisplayInfo(_) => OK_DISPLAY_INFO,
            GpuResponse::OkCapsetInfo { .. } => OK_CAPSET_INFO,
            GpuResponse::OkCapset(_) => OK_CAPSET,
            GpuResponse::OkEdid(_) => OK_EDID,
            GpuResponse::OkResourceUuid(_) => OK_RESOURCE_UUID,
            GpuResponse::OkMapInfo(_) => OK_MAP_INFO,
            GpuResponse::ErrUnspec => ERR_UNSPEC,
            GpuResponse::ErrOutOfMemory => ERR_OUT_OF_MEMORY,
            GpuResponse::ErrInvalidScanoutId => ERR_INVALID_SCANOUT_ID,
            GpuResponse::ErrInvalidResourceId => ERR_INVALID_RESOURCE_ID,
            GpuResponse::ErrInvalidContextId => ERR_INVALID_CONTEXT_ID,
            GpuResponse::ErrInvalidParameter => ERR_INVALID_PARAMETER,
        }
    }

    /// True for the OK_* responses.
    pub fn is_ok(&self) -> bool {
        self.code() < resp::ERR_UNSPEC
    }

    /// Bytes of the encoded response, header included.
    pub fn encoded_len(&self) -> usize {
        let hdr = std::mem::size_of::<CtrlHdr>();
        hdr + match self {
            GpuResponse::OkDisplayInfo(_) => MAX_SCANOUTS * std::mem::size_of::<DisplayOne>(),
            GpuResponse::OkCapsetInfo { .. } => std::mem::size_of::<RespCapsetInfo>(),
            GpuResponse::OkCapset(d) => d.len(),
            GpuResponse::OkEdid(_) => std::mem::size_of::<RespEdidHead>() + EDID_BLOB_SIZE,
            GpuResponse::OkResourceUuid(_) => 16,
            GpuResponse::OkMapInfo(_) => std::mem::size_of::<RespMapInfo>(),
            _ => 0,
        }
    }

    /// Writes header and payload. `req` is the request header (None when it could not be read);
    /// a fenced request's fence id, context and ring are echoed with FLAG_FENCE set. Every byte
    /// of the reply is written explicitly: no uninitialised or stale bytes reach the guest.
    pub fn encode<W: Write>(
        &self,
        req: Option<&Header>,
        available: usize,
        w: &mut W,
    ) -> Result<usize, EncodeError> {
        let need = self.encoded_len();
        if available < need {
            return Err(EncodeError::BufferTooSmall {
                have: available,
                need,
            });
        }
        let mut hdr = CtrlHdr {
            type_: self.code().into(),
            ..Default::default()
        };
        if let Some(req) = req.filter(|r| r.fenced()) {
            hdr.flags = (req.flags & (FLAG_FENCE | FLAG_INFO_RING_IDX)).into();
            hdr.fence_id = req.fence_id.into();
            hdr.ctx_id = req.ctx_id.into();
            if req.flags & FLAG_INFO_RING_IDX != 0 {
                hdr.ring_idx = req.ring_idx;
            }
        }
        // Assemble the reply in one buffer and write it in one go.
        let mut out = Vec::with_capacity(need);
        out.extend_from_slice(hdr.as_slice());
        match self {
            GpuResponse::OkDisplayInfo(modes) => {
                for i in 0..MAX_SCANOUTS {
                    let m = modes.get(i).copied().unwrap_or_default();
                    let one = DisplayOne {
                        r: WireRect {
                            x: 0.into(),
                            y: 0.into(),
                            width: m.width.into(),
                            height: m.height.into(),
                        },
                        enabled: u32::from(m.enabled).into(),
                        flags: 0.into(),
                    };
                    out.extend_from_slice(one.as_slice());
                }
            }
            GpuResponse::OkCapsetInfo {
                id,
                max_version,
                max_size,
            } => {
                let info = RespCapsetInfo {
                    capset_id: (*id).into(),
                    capset_max_version: (*max_version).into(),
                    capset_max_size: (*max_size).into(),
                    padding: 0.into(),
                };
                out.extend_from_slice(info.as_slice());
            }
            GpuResponse::OkCapset(data) => out.extend_from_slice(data),
            GpuResponse::OkEdid(edid) => {
                let len = edid.len().min(EDID_BLOB_SIZE);
                let head = RespEdidHead {
                    size: (len as u32).into(),
                    padding: 0.into(),
                };
                out.extend_from_slice(head.as_slice());
                out.extend_from_slice(&edid[..len]);
                out.resize(need, 0);
            }
            GpuResponse::OkResourceUuid(uuid) => out.extend_from_slice(uuid),
            GpuResponse::OkMapInfo(info) => {
                let m = RespMapInfo {
                    map_info: (*info).into(),
                    padding: 0.into(),
                };
                out.extend_from_slice(m.as_slice());
            }
            _ => {}
        }
        w.write_all(&out)?;
        Ok(out.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(t: u32, body: &[u8]) -> Vec<u8> {
        let hdr = CtrlHdr {
            type_: t.into(),
            flags: (FLAG_FENCE | FLAG_INFO_RING_IDX).into(),
            fence_id: 77.into(),
            ctx_id: 3.into(),
            ring_idx: 2,
            padding: [0; 3],
        };
        let mut v = hdr.as_slice().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn decodes_create_2d() {
        let body = ResourceCreate2d {
            resource_id: 5.into(),
            format: 1.into(),
            width: 640.into(),
            height: 480.into(),
        };
        let bytes = request(cmd::RESOURCE_CREATE_2D, body.as_slice());
        let (hdr, c) = decode(&mut &bytes[..]);
        assert_eq!(hdr.unwrap().fence_id, 77);
        assert_eq!(
            c.unwrap(),
            GpuCommand::ResourceCreate2d {
                resource_id: 5,
                format: 1,
                width: 640,
                height: 480
            }
        );
    }

    #[test]
    fn short_chains_are_errors() {
        let (hdr, c) = decode(&mut &[0u8; 10][..]);
        assert!(hdr.is_none());
        assert_eq!(c, Err(DecodeError::ShortHeader));
        let bytes = request(cmd::SET_SCANOUT, &[0u8; 23]);
        assert_eq!(
            decode(&mut &bytes[..]).1,
            Err(DecodeError::ShortBody(cmd::SET_SCANOUT))
        );
        let body = AttachBacking {
            resource_id: 1.into(),
            nr_entries: 2.into(),
        };
        let mut bytes = request(cmd::RESOURCE_ATTACH_BACKING, body.as_slice());
        bytes.extend_from_slice(&[0u8; 16]); // one entry of two
        assert!(decode(&mut &bytes[..]).1.is_err());
        let body = AttachBacking {
            resource_id: 1.into(),
            nr_entries: u32::MAX.into(),
        };
        let bytes = request(cmd::RESOURCE_ATTACH_BACKING, body.as_slice());
        assert_eq!(
            decode(&mut &bytes[..]).1,
            Err(DecodeError::TooManyEntries(u32::MAX, MAX_BACKING_ENTRIES))
        );
        assert_eq!(
            decode(&mut &request(0x9999, &[])[..]).1,
            Err(DecodeError::UnknownType(0x9999))
        );
        let head = Submit3d {
            size: 64.into(),
            num_in_fences: 0.into(),
        };
        let mut bytes = request(cmd::SUBMIT_3D, head.as_slice());
        bytes.extend_from_slice(&[0u8; 32]);
        assert_eq!(
            decode(&mut &bytes[..]).1,
            Err(DecodeError::BadSubmitSize {
                size: 64,
                available: 32,
                limit: MAX_SUBMIT_SIZE
            })
        );
        bytes.extend_from_slice(&[0u8; 32]);
        assert_eq!(
            decode(&mut &bytes[..]).1,
            Ok(GpuCommand::Submit3d { cmds: vec![0; 64] })
        );
        // Lower limits from the command line.
        let tight = DecodeLimits {
            max_backing_entries: 1,
            max_submit_size: 63,
        };
        assert_eq!(
            decode_with(&mut &bytes[..], &tight).1,
            Err(DecodeError::BadSubmitSize {
                size: 64,
                available: 64,
                limit: 63
            })
        );
    }

    #[test]
    fn encode_echoes_fence_and_fills_every_byte() {
        let hdr = Header {
            type_: 0,
            flags: FLAG_FENCE | FLAG_INFO_RING_IDX,
            fence_id: 9,
            ctx_id: 4,
            ring_idx: 1,
        };
        let r = GpuResponse::OkEdid(vec![1, 2, 3]);
        let mut out = vec![0xAAu8; 2000];
        let n = r.encode(Some(&hdr), 2000, &mut &mut out[..]).unwrap();
        assert_eq!(n, 24 + 8 + 1024);
        let back = CtrlHdr::from_slice(&out[..24]).unwrap();
        assert_eq!(u32::from(back.type_), resp::OK_EDID);
        assert_eq!(u64::from(back.fence_id), 9);
        assert_eq!(back.ring_idx, 1);
        assert_eq!(&out[24..35], &[3, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]);
        assert!(out[35..n].iter().all(|&b| b == 0));
        assert!(matches!(
            GpuResponse::OkNoData.encode(None, 10, &mut &mut out[..]),
            Err(EncodeError::BufferTooSmall { have: 10, need: 24 })
        ));
    }
}
