//! The binary's global allocator: the system allocator, with large blocks (pixel buffers:
//! rutabaga's 2D resources, readback scratch) aligned to a cache line.
//!
//! glibc's `malloc` puts a 16-byte header in front of a large (mmapped) block, so a big `Vec`
//! starts 16 bytes into a cache line. A 2D upload gathers 4 KiB guest pages into such a buffer,
//! and with every 4 KiB copy landing 16 bytes off a line it ran at half the speed of the same
//! copy into an aligned buffer (measured on the development VM: 8–17 GB/s against 31–33 GB/s
//! for a 1080p frame gathered from reverse-ordered memfd pages; `scripts/bench` shows the
//! effect on TRANSFER_TO_HOST_2D).

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of at least this many bytes are aligned to [`LARGE_ALIGN`].
pub const LARGE: usize = 64 << 10;
/// Alignment of large blocks: a cache line.
pub const LARGE_ALIGN: usize = 64;

/// [`System`] with blocks of [`LARGE`] bytes or more aligned to [`LARGE_ALIGN`].
pub struct AlignedLarge;

/// The layout a request is served with: the same size, its alignment raised for large blocks.
/// It depends only on the request, so `dealloc` and `realloc` recompute what `alloc` used.
fn served(layout: Layout) -> Layout {
    if layout.size() >= LARGE && layout.align() < LARGE_ALIGN {
        // A power of two at least the old alignment, with a size already valid for the old
        // one; `from_size_align` only fails for sizes near isize::MAX, which keep theirs.
        Layout::from_size_align(layout.size(), LARGE_ALIGN).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every call goes to `System` with the layout `served` gives for the caller's layout;
// `served` is a pure function of that layout, so a block is always freed or resized with the
// layout it was allocated with, and its alignment is at least the one the caller asked for.
unsafe impl GlobalAlloc for AlignedLarge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `served` keeps the size (non-zero, as the caller guarantees) and gives a valid
        // alignment.
        unsafe { System.alloc(served(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(served(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with `layout`, so from `System` with `served(layout)`.
        unsafe { System.dealloc(ptr, served(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = served(layout);
        let Ok(wanted) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = served(wanted);
        if new.align() == old.align() {
            // SAFETY: `ptr` is a live `System` block of layout `old`; the new size is non-zero
            // and valid for that alignment (checked by `from_size_align` above).
            return unsafe { System.realloc(ptr, old, new_size) };
        }
        // Crossing the LARGE threshold changes the alignment: move the block.
        // SAFETY: `new` is a valid non-zero layout.
        let moved = unsafe { System.alloc(new) };
        if !moved.is_null() {
            // SAFETY: both blocks are live, distinct, and at least `min(old, new)` bytes long.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                System.dealloc(ptr, old);
            }
        }
        moved
    }
}

/// Hands freed heap memory back to the kernel (glibc's `malloc_trim`).
///
/// Small blocks freed in bulk (a display queue of cursor images and tile-sized updates that
/// a stalled frontend let pile up) stay resident in glibc's heaps: its automatic trimming
/// only releases the top of a heap, and one live block above the freed ones keeps them all.
/// Called after such a burst drains, so that resident memory goes back to what the device
/// holds. A no-op off glibc.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a plain integer and only walks glibc's own heaps under their
    // locks, releasing free pages with madvise; it touches no memory of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_cache_line_aligned_and_keep_their_bytes_across_the_threshold() {
        let a = AlignedLarge;
        let small = Layout::from_size_align(100, 1).unwrap();
        // SAFETY: non-zero layouts; each block is used within its size and freed once with
        // the layout it has at that point.
        unsafe {
            let p = a.alloc(small);
            assert!(!p.is_null());
            for i in 0..100 {
                *p.add(i) = i as u8;
            }
            // Grows past LARGE: moved to an aligned block, bytes kept.
            let q = a.realloc(p, small, LARGE + 5);
            assert!(!q.is_null());
            assert_eq!(q as usize % LARGE_ALIGN, 0);
            assert!((0..100).all(|i| *q.add(i) == i as u8));
            let big = Layout::from_size_align(LARGE + 5, 1).unwrap();
            // Grows while large: stays aligned.
            let r = a.realloc(q, big, 4 * LARGE);
            assert_eq!(r as usize % LARGE_ALIGN, 0);
            assert!((0..100).all(|i| *r.add(i) == i as u8));
            // Shrinks below LARGE: bytes kept.
            let bigger = Layout::from_size_align(4 * LARGE, 1).unwrap();
            let s = a.realloc(r, bigger, 50);
            assert!((0..50).all(|i| *s.add(i) == i as u8));
            a.dealloc(s, Layout::from_size_align(50, 1).unwrap());

            let z = a.alloc_zeroed(Layout::from_size_align(1 << 20, 1).unwrap());
            assert_eq!(z as usize % LARGE_ALIGN, 0);
            assert_eq!(*z.add((1 << 20) - 1), 0);
            a.dealloc(z, Layout::from_size_align(1 << 20, 1).unwrap());
        }
    }
}
