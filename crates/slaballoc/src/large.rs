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
//! Large blocks have no owner: any thread maps and frees them. A freed mapping of
//! the first kind up to [`CACHE_MAX_ENTRY`] goes to a small per-instance cache
//! ([`Cache`], at most [`CACHE_MAX_BYTES`]) so the next request of a similar size
//! (up to 2x smaller) reuses it, pages already faulted in; the reaper unmaps entries
//! that sat a whole round, and anything that does not fit is unmapped at once.

use core::ptr::NonNull;

use dfly_core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::class::{PAGE, ZONE_SIZE};
use crate::heap::Slab;
use crate::lock::RawLock;
use crate::os;

/// `magic` of a large block's header page.
pub(crate) const LARGE_MAGIC: usize = 0x4c41_5247_d1f1_0002;
/// `magic` of a freed large mapping waiting in the cache.
pub(crate) const CACHED_MAGIC: usize = 0x4c41_5247_d1f1_00fe;
/// Cache entries per instance.
const CACHE_ENTRIES: usize = 16;
/// The largest mapping the cache keeps.
pub const CACHE_MAX_ENTRY: usize = 32 << 20;
/// Bytes the cache may hold per instance.
pub const CACHE_MAX_BYTES: usize = 64 << 20;

/// Freed large mappings kept for reuse: `(base, len, round)` triples under a lock
/// (large blocks are rare enough that one lock is cheap next to a page fault).
#[derive(Debug)]
pub(crate) struct Cache {
    pub(crate) lock: RawLock,
    base: [AtomicUsize; CACHE_ENTRIES],
    len: [AtomicUsize; CACHE_ENTRIES],
    round: [AtomicU32; CACHE_ENTRIES],
    bytes: AtomicUsize,
}

impl Cache {
    pub(crate) const fn new() -> Self {
        Self {
            lock: RawLock::new(),
            base: [const { AtomicUsize::new(0) }; CACHE_ENTRIES],
            len: [const { AtomicUsize::new(0) }; CACHE_ENTRIES],
            round: [const { AtomicU32::new(0) }; CACHE_ENTRIES],
            bytes: AtomicUsize::new(0),
        }
    }

    /// Bytes cached now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Takes the smallest cached mapping of at least `need` and at most `2 * need`
    /// bytes: `(base, len)`.
    fn take(&self, need: usize) -> Option<(usize, usize)> {
        if self.bytes.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let _g = self.lock.guard();
        let mut best: Option<(usize, usize)> = None;
        for i in 0..CACHE_ENTRIES {
            let len = self.len[i].load(Ordering::Relaxed);
            if len >= need && len / 2 <= need && best.map_or(true, |(_, l)| len < l) {
                best = Some((i, len));
            }
        }
        let (i, len) = best?;
        self.len[i].store(0, Ordering::Relaxed);
        self.bytes.fetch_sub(len, Ordering::Relaxed);
        Some((self.base[i].load(Ordering::Relaxed), len))
    }

    /// Keeps the mapping `base, len` if there is room; false if the caller must unmap.
    fn put(&self, base: usize, len: usize, round: u32) -> bool {
        if len > CACHE_MAX_ENTRY {
            return false;
        }
        let _g = self.lock.guard();
        if self.bytes.load(Ordering::Relaxed) + len > CACHE_MAX_BYTES {
            return false;
        }
        for i in 0..CACHE_ENTRIES {
            if self.len[i].load(Ordering::Relaxed) == 0 {
                self.base[i].store(base, Ordering::Relaxed);
                self.round[i].store(round, Ordering::Relaxed);
                self.len[i].store(len, Ordering::Relaxed);
                self.bytes.fetch_add(len, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Unmaps the entries cached before round `before` (all for `u32::MAX`).
    pub(crate) fn release(&self, heap: &Slab, before: u32) {
        if self.bytes.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut out = [(0usize, 0usize); CACHE_ENTRIES];
        {
            let _g = self.lock.guard();
            for (i, o) in out.iter_mut().enumerate() {
                let len = self.len[i].load(Ordering::Relaxed);
                if len != 0
                    && (before == u32::MAX || self.round[i].load(Ordering::Relaxed) < before)
                {
                    *o = (self.base[i].load(Ordering::Relaxed), len);
                    self.len[i].store(0, Ordering::Relaxed);
                    self.bytes.fetch_sub(len, Ordering::Relaxed);
                }
            }
        }
        for (base, len) in out {
            if len != 0 {
                // SAFETY: a cached mapping, detached from the cache: ours alone, unused.
                unsafe { unmap(heap, base, len) };
            }
        }
    }
}

/// Unmaps a whole large mapping and counts it.
///
/// # Safety
/// `base, len` is a large mapping of `heap` nothing uses any more.
unsafe fn unmap(heap: &Slab, base: usize, len: usize) {
    // SAFETY: contract.
    unsafe { os::unmap(NonNull::new_unchecked(base as *mut u8), len) };
    heap.large_os_calls.fetch_add(1, Ordering::Relaxed);
    heap.large_bytes.fetch_sub(len, Ordering::Relaxed);
}

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
pub(crate) fn alloc(
    heap: &Slab,
    size: usize,
    align: usize,
    zeroed: bool,
) -> Option<(*mut u8, usize)> {
    let size = size.max(1);
    let (base, block, len, calls) = if align < ZONE_SIZE {
        let off = align.max(PAGE);
        let len = off.checked_add(size)?.checked_next_multiple_of(PAGE)?;
        if let Some((base, cached_len)) = heap.large_cache.take(len) {
            if zeroed {
                // A fresh mapping reads as zeros; a cached one holds what its last
                // owner wrote.
                // SAFETY: the cached mapping is ours, `cached_len >= len` bytes from
                // `base`, and the block lies in `[base + off, base + off + size)`.
                unsafe { core::ptr::write_bytes((base + off) as *mut u8, 0, size) };
            }
            (base, base + off, cached_len, 0)
        } else {
            let (base, calls) = os::map_aligned(len, ZONE_SIZE, 0)?;
            heap.large_bytes.fetch_add(len, Ordering::Relaxed);
            (base.as_ptr() as usize, base.as_ptr() as usize + off, len, calls)
        }
    } else {
        let len = size.checked_next_multiple_of(PAGE)?.checked_add(PAGE)?;
        let (base, calls) = os::map_aligned(len, align, PAGE)?;
        heap.large_bytes.fetch_add(len, Ordering::Relaxed);
        (base.as_ptr() as usize, base.as_ptr() as usize + PAGE, len, calls)
    };
    let usable = base + len - block;
    let h = header_of(block as *mut u8);
    debug_assert!(h as usize >= base && (h as usize) < block);
    // SAFETY: the header page lies inside our fresh mapping, before the block.
    unsafe { h.write(Header { magic: LARGE_MAGIC, map_base: base, map_len: len, usable }) };
    heap.large_os_calls.fetch_add(u64::from(calls), Ordering::Relaxed);
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
    if magic == CACHED_MAGIC {
        crate::debug::fault("double free of a large block", p as usize);
    }
    if magic != LARGE_MAGIC {
        if cfg!(feature = "debug") {
            crate::debug::fault("free of a pointer this allocator does not own", p as usize);
        }
        return 0;
    }
    if base + len - usable != p as usize {
        crate::debug::fault("free of an interior pointer into a large block", p as usize);
    }
    if (p as usize) & (ZONE_SIZE - 1) != 0 {
        // A mapping with its header at its base: cacheable. Mark it first, so a
        // second free of the block is caught.
        // SAFETY: the header page of our block, given up by the caller.
        unsafe { (*h).magic = CACHED_MAGIC };
        if heap.large_cache.put(base, len, heap.reap_round()) {
            return usable;
        }
    }
    // SAFETY: the whole mapping is ours and nothing uses it any more (contract).
    unsafe { unmap(heap, base, len) };
    usable
}
