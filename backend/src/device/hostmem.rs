//! Host-visible memory: RESOURCE_MAP_BLOB and RESOURCE_UNMAP_BLOB.
//!
//! The frontend owns a shared memory region (virtio shmid 1, `VIRTIO_GPU_SHM_ID_HOST_VISIBLE`)
//! that the guest sees as a PCI BAR. Mapping a host blob there means handing the frontend the
//! blob's memory as a descriptor with the region offset the guest chose (vhost-user SHMEM_MAP);
//! the device reaches the frontend only through the [`SharedMemoryPort`] it is given, and
//! replies OK_MAP_INFO only once the frontend has acknowledged the mapping.
//!
//! Every offset and length is checked here: page-aligned, inside the region, not overlapping
//! another mapping, one mapping per blob, and only blobs that were created mappable in host
//! memory. Unmapping, unref of a mapped blob and device reset each take the mapping away.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::BorrowedFd;

use super::{invalid, GpuDevice, GpuError, GpuResponse, GpuResult, BLOB_MEM_HOST3D};

/// VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE.
pub(super) const BLOB_FLAG_MAPPABLE: u32 = 1;

/// How the device asks the frontend to map and unmap in its shared memory region.
pub trait SharedMemoryPort: Send {
    /// Whether the frontend made the region and can be asked to map (or why not).
    fn available(&self) -> Result<(), String>;
    /// Maps `len` bytes of `fd` from `fd_offset` at `offset` in the region, writable; returns
    /// once the frontend has done it (or said why not).
    fn map(&self, fd: BorrowedFd<'_>, fd_offset: u64, offset: u64, len: u64) -> Result<(), String>;
    /// Takes the mapping of `len` bytes at `offset` away.
    fn unmap(&self, offset: u64, len: u64) -> Result<(), String>;
}

/// The region's size, its port, and what is mapped in it.
pub struct HostVisible {
    size: u64,
    port: Box<dyn SharedMemoryPort>,
    /// offset -> (resource id, length): for the overlap check.
    maps: BTreeMap<u64, (u32, u64)>,
    /// resource id -> offset: for unmap and unref.
    by_res: HashMap<u32, u64>,
    /// A mapping was made on this connection (logged once).
    used: bool,
}

impl HostVisible {
    /// A region of `size` bytes reached through `port`.
    pub fn new(size: u64, port: Box<dyn SharedMemoryPort>) -> Self {
        HostVisible {
            size,
            port,
            maps: BTreeMap::new(),
            by_res: HashMap::new(),
            used: false,
        }
    }

    /// The mapping of resource `id`: (offset, length).
    fn of(&self, id: u32) -> Option<(u64, u64)> {
        let o = *self.by_res.get(&id)?;
        self.maps.get(&o).map(|&(_, l)| (o, l))
    }

    fn insert(&mut self, id: u32, offset: u64, len: u64) {
        self.maps.insert(offset, (id, len));
        self.by_res.insert(id, offset);
    }

    /// Forgets the mapping of `id`; returns it.
    fn remove(&mut self, id: u32) -> Option<(u64, u64)> {
        let o = self.by_res.remove(&id)?;
        self.maps.remove(&o).map(|(_, l)| (o, l))
    }

    /// Number of mappings now.
    pub fn count(&self) -> usize {
        self.maps.len()
    }
}

impl GpuDevice {
    /// Gives the device a host-visible region (the frontend asked for one).
    pub fn set_host_visible(&mut self, hv: HostVisible) {
        self.host_visible = Some(hv);
    }

    /// Mappings in the host-visible region now (0 without a region).
    pub fn mapped_blobs(&self) -> usize {
        self.host_visible.as_ref().map_or(0, HostVisible::count)
    }

    pub(super) fn map_blob(&mut self, id: u32, offset: u64) -> GpuResult {
        let Some(hv) = self.host_visible.as_ref() else {
            return Err(GpuError::Unspec(
                "there is no host-visible memory: it needs Venus and a frontend that sets up a shared memory region (QEMU 11.1's vhost-user-test-device-pci; not QEMU 10, not vhost-user-gpu-pci)"
                    .into(),
            ));
        };
        hv.port
            .available()
            .map_err(|why| GpuError::Unspec(format!("there is no host-visible memory: {why}")))?;
        let res = self
            .resources
            .get(&id)
            .ok_or(GpuError::InvalidResource(id))?;
        if res.blob_mem != Some(BLOB_MEM_HOST3D) {
            return Err(invalid(format!(
                "resource {id} is not a host blob (blob_mem {:?}): only host memory is mapped",
                res.blob_mem
            )));
        }
        if res.blob_flags & BLOB_FLAG_MAPPABLE == 0 {
            return Err(invalid(format!("blob {id} was not created mappable")));
        }
        if hv.of(id).is_some() {
            return Err(invalid(format!("blob {id} is already mapped")));
        }
        let page = u64::from(crate::config::host_page_size());
        if offset % page != 0 {
            return Err(invalid(format!(
                "map offset {offset:#x} is not a multiple of the page size {page:#x}"
            )));
        }
        let len = res
            .size
            .checked_add(page - 1)
            .map(|v| v / page * page)
            .ok_or_else(|| invalid("blob size overflows"))?;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= hv.size)
            .ok_or_else(|| {
                invalid(format!(
                    "blob {id} of {len:#x} bytes at {offset:#x} does not fit the {:#x}-byte region",
                    hv.size
                ))
            })?;
        // The mapping that starts last before `end` is the only one that can overlap.
        if let Some((&o, &(other, l))) = hv.maps.range(..end).next_back() {
            if o + l > offset {
                return Err(invalid(format!(
                    "blob {id} at {offset:#x}+{len:#x} overlaps blob {other} at {o:#x}+{l:#x}"
                )));
            }
        }
        let exported = self.renderer.export_blob(id)?;
        // The frontend maps the descriptor as a RAM block of whole pages, which must lie inside
        // the file: QEMU refuses a shorter one ("backing store size ... is too small"), and
        // the memory's files are sealed against growing. Virglrenderer 1.1's render server
        // allocates host-visible memory of the size the guest's driver asked (an 800x600 image:
        // 0x1d4c00 bytes, lavapipe's memfd ending 0x28 bytes after it); 1.3's rounds it up to
        // whole pages, as the guest's kernel does the blob.
        if exported
            .offset
            .checked_add(len)
            .is_none_or(|e| e > exported.size)
        {
            return Err(invalid(format!(
                "blob {id}: its memory ends at {:#x}, short of the {len:#x} bytes (whole pages) to map from {:#x}: the frontend cannot map it (virglrenderer before 1.3 does not round host-visible allocations up to whole pages)",
                exported.size, exported.offset
            )));
        }
        use std::os::fd::AsFd;
        hv.port
            .map(exported.fd.as_fd(), exported.offset, offset, len)
            .map_err(|e| GpuError::Unspec(format!("the frontend did not map blob {id}: {e}")))?;
        // The frontend holds its own mapping now; our descriptor closes here.
        drop(exported.fd);
        if let Some(hv) = self.host_visible.as_mut() {
            hv.insert(id, offset, len);
            if !hv.used {
                hv.used = true;
                log::info!(
                    "host-visible memory in use: blob {id} mapped at {offset:#x} ({len} bytes, map_info {})",
                    exported.map_info
                );
            }
            log::debug!("blob {id} mapped at {offset:#x}+{len:#x}");
        }
        Ok(GpuResponse::OkMapInfo(exported.map_info))
    }

    pub(super) fn unmap_blob(&mut self, id: u32) -> GpuResult {
        self.resource(id)?;
        let hv = self
            .host_visible
            .as_mut()
            .ok_or_else(|| invalid("there is no host-visible memory: nothing is mapped"))?;
        let (offset, len) = hv
            .remove(id)
            .ok_or_else(|| invalid(format!("blob {id} is not mapped")))?;
        hv.port
            .unmap(offset, len)
            .map_err(|e| GpuError::Unspec(format!("the frontend did not unmap blob {id}: {e}")))?;
        Ok(GpuResponse::OkNoData)
    }

    /// Takes away the mapping of `id`, if any (unref of a mapped blob).
    pub(super) fn unmap_if_mapped(&mut self, id: u32) {
        if let Some(hv) = self.host_visible.as_mut() {
            if let Some((offset, len)) = hv.remove(id) {
                if let Err(e) = hv.port.unmap(offset, len) {
                    crate::guest_warn!("unmapping blob {id} at unref: {e}");
                }
            }
        }
    }
}
