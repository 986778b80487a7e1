//! Large blocks: requests above the zone limit (or aligned beyond what a class gives)
//! get their own page mapping with a one-page header, laid out so that `free` finds the
//! header without any table:
//!
//! - alignment below the zone size: the mapping starts on a zone boundary with the
//!   header there, and the block starts `max(PAGE, align)` bytes in. Masking the block
//!   address to the zone size gives the header (its magic, [`LARGE_MAGIC`], tells it
//!   from a zone header);
//! - alignment of a zone or more: the block is zone-aligned (which no zone chunk ever
//!   is: zone headers sit at zone starts) and the header is the page just before it.
//!
//! Large blocks have no owner: any thread maps and unmaps them directly. (Zones never
//! go back to the OS from `free`; large blocks do, because a cached large mapping
//! could not serve another size.)

use core::ptr::NonNull;

use dfly_core::sync::atomic::Ordering;

use crate::class::{PAGE, ZONE_SIZE};
use crate::heap::Slab;
use crate::os;

/// `magic` of a large block's header page.
pub(crate) const LARGE_MAGIC: usize = 0x4c41_5247_d1f1_0002;

/// The header at the start of a large mapping's first page. Its first word lines up
/// with a zone header's magic.
#[repr(C)]
struct Header {
    magic: usize,
    map_base: usize,
    map_len: usize,
    usable: usize,
}

fn header_of(p: *mut u8) -> *mut Header {
    let a = p as usize;
    if a & (ZONE_SIZE - 1) == 0 {
        (a - PAGE) as *mut Header
    } else {
        (a & !(ZONE_SIZE - 1)) as *mut Header
    }
}

/// Maps a block of `size` bytes aligned to `align`; returns it and its usable size.
pub(crate) fn alloc(heap: &Slab, size: usize, align: usize) -> Option<(*mut u8, usize)> {
    let size = size.max(1);
    let (base, block, len, calls) = if align < ZONE_SIZE {
        let off = align.max(PAGE);
        let len = off.checked_add(size)?.checked_next_multiple_of(PAGE)?;
        let (base, calls) = os::map_aligned(len, ZONE_SIZE, 0)?;
        (base.as_ptr() as usize, base.as_ptr() as usize + off, len, calls)
    } else {
        let len = size.checked_next_multiple_of(PAGE)?.checked_add(PAGE)?;
        let (base, calls) = os::map_aligned(len, align, PAGE)?;
        (base.as_ptr() as usize, base.as_ptr() as usize + PAGE, len, calls)
    };
    let usable = base + len - block;
    let h = header_of(block as *mut u8);
    debug_assert!(h as usize >= base && (h as usize) < block);
    // SAFETY: the header page lies inside our fresh mapping, before the block.
    unsafe { h.write(Header { magic: LARGE_MAGIC, map_base: base, map_len: len, usable }) };
    heap.large_os_calls.fetch_add(u64::from(calls), Ordering::Relaxed);
    heap.large_bytes.fetch_add(len, Ordering::Relaxed);
    Some((block as *mut u8, usable))
}

/// The usable size of a large block.
///
/// # Safety
/// `p` is a live large block.
pub(crate) unsafe fn usable(p: *mut u8) -> usize {
    // SAFETY: the header of a live large block is mapped (contract).
    unsafe { (*header_of(p)).usable }
}

/// Unmaps a large block; returns its usable size.
///
/// # Safety
/// `p` is a live large block of `heap`, given up by the caller.
pub(crate) unsafe fn free(heap: &Slab, p: *mut u8) -> usize {
    let h = header_of(p);
    // SAFETY: the header of a live large block is mapped (contract).
    let (magic, base, len, usable) =
        unsafe { ((*h).magic, (*h).map_base, (*h).map_len, (*h).usable) };
    if magic != LARGE_MAGIC {
        if cfg!(feature = "debug") {
            crate::debug::fault("free of a pointer this allocator does not own", p as usize);
        }
        return 0;
    }
    if base + len - usable != p as usize {
        crate::debug::fault("free of an interior pointer into a large block", p as usize);
    }
    // SAFETY: the whole mapping is ours and nothing uses it any more (contract).
    unsafe { os::unmap(NonNull::new_unchecked(base as *mut u8), len) };
    heap.large_os_calls.fetch_add(1, Ordering::Relaxed);
    heap.large_bytes.fetch_sub(len, Ordering::Relaxed);
    usable
}
