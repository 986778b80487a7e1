//! Fault detection: the checks every build makes, and the `debug` feature's.
//!
//! Every build:
//! - a free whose zone header has neither the zone nor the large-block magic is
//!   ignored (a foreign pointer is never linked into a free list);
//! - the **free key**: freeing a chunk of 16 bytes or more stores a per-process
//!   random key in its second word, and handing a chunk out clears that word, so a
//!   chunk freed twice (its key still there) aborts with "double free" instead of
//!   corrupting a list (user data equal to the key is a 2^-64 event);
//! - a chunk freed twice in a row (it is already the head of the free list or of the
//!   outgoing batch) aborts: for 8-byte chunks, which have no room for the key, this
//!   is the only check without the `debug` feature;
//! - a large-block free of anything but the block's start aborts.
//!
//! With the `debug` feature, in addition:
//! - each zone carries an in-use bitmap (one bit per possible 8-byte chunk, 2 KiB, right
//!   after the header), set when a chunk is handed out and cleared when it is freed,
//!   atomically so remote frees can clear it: a free of a chunk whose bit is clear is
//!   a double free, whatever its size;
//! - a free of an address that is not a chunk start is an interior pointer;
//! - before reading the header a free checks the address is mapped at all (`msync`),
//!   so a wild pointer gives a message instead of a crash in the allocator;
//! - freed chunks are poisoned ([`POISON`] from byte 16 on; the first two words are the
//!   list link and the key), and the poison is verified when a chunk is handed out
//!   again, so a write after free is reported.
//!
//! A fault writes `dfly-slaballoc: <fault> at <address>` to stderr with one `write`
//! (nothing allocated) and aborts.

// Under loom only the zone protocol is compiled, not the free path.
#![cfg_attr(loom, allow(dead_code))]

/// The byte freed memory is filled with under the `debug` feature.
pub const POISON: u8 = 0xdf;

/// Where the in-use bitmap starts in a zone (just past the header struct).
#[cfg(feature = "debug")]
pub(crate) const BITMAP_OFFSET: usize = 256;
/// Bytes of the in-use bitmap (one bit per 8-byte chunk; `class::ZONE_HEADER`
/// reserves room for it).
#[cfg(feature = "debug")]
pub(crate) const BITMAP_BYTES: usize = crate::class::ZONE_SIZE / 64;

/// The per-process free key (0 until the first slot lease sets it). Not under loom,
/// whose atomics cannot be statics; the models do not free through this path.
#[cfg(not(loom))]
static KEY: AtomicUsize = AtomicUsize::new(0);

/// Sets the free key once, from the clock, the process id and load and stack addresses
/// (ASLR), mixed; never 0. Called on the slow path that leases a slot, which comes
/// before any chunk can be handed out or freed.
#[cfg(not(loom))]
#[cold]
pub(crate) fn init_free_key() {
    if KEY.load(Ordering::Relaxed) != 0 {
        return;
    }
    let stack = 0u8;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; getpid has no preconditions.
    let (t, pid) = unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        (ts.tv_sec as u64 ^ (ts.tv_nsec as u64).rotate_left(32), libc::getpid() as u64)
    };
    let mut x = t
        ^ pid.rotate_left(17)
        ^ (core::ptr::addr_of!(KEY) as u64).rotate_left(29)
        ^ (core::ptr::addr_of!(stack) as u64).rotate_left(43);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let _ = KEY.compare_exchange(0, (x | 1) as usize, Ordering::Relaxed, Ordering::Relaxed);
}

/// The free key (0 before [`init_free_key`]: then nothing is checked).
#[inline(always)]
pub(crate) fn free_key() -> usize {
    #[cfg(not(loom))]
    return KEY.load(Ordering::Relaxed);
    #[cfg(loom)]
    0
}

/// Reports a fault naming `what` and the address, then aborts. Allocates nothing.
#[cold]
#[inline(never)]
pub fn fault(what: &str, addr: usize) -> ! {
    let mut buf = [0u8; 160];
    let mut n = 0;
    for &b in b"dfly-slaballoc: ".iter().chain(what.as_bytes()).chain(b" at 0x") {
        if n < 120 {
            buf[n] = b;
            n += 1;
        }
    }
    for i in (0..16).rev() {
        let d = (addr >> (i * 4)) & 0xf;
        buf[n] = b"0123456789abcdef"[d];
        n += 1;
    }
    buf[n] = b'\n';
    n += 1;
    // SAFETY: writing our own stack buffer to stderr; abort has no preconditions.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::abort();
    }
}

/// Checks and records a free of the chunk at `chunk` (size `size`) in every build:
/// the free key. Aborts on a double free.
///
/// # Safety
/// `chunk` is a chunk of a live zone of class size `size`.
#[inline(always)]
pub(crate) unsafe fn on_free_key(chunk: usize, size: usize) {
    if size >= 16 {
        let w = (chunk + 8) as *mut usize;
        let key = free_key();
        // SAFETY: the second word of the chunk (size >= 16), which the caller gives up.
        unsafe {
            if w.read() == key && key != 0 {
                fault("double free", chunk);
            }
            w.write(key);
        }
    }
}

/// Clears the free key of a chunk being handed out.
///
/// # Safety
/// `chunk` is a free chunk of size `size` now owned by the allocating thread.
#[inline(always)]
pub(crate) unsafe fn on_alloc_key(chunk: usize, size: usize) {
    if size >= 16 {
        // SAFETY: the second word of a chunk we own.
        unsafe { ((chunk + 8) as *mut usize).write(0) };
    }
}

#[cfg(feature = "debug")]
const _: () = assert!(BITMAP_OFFSET + BITMAP_BYTES <= crate::class::ZONE_HEADER);

#[cfg(feature = "debug")]
fn bit(zone: usize, base: usize, size: usize, chunk: usize) -> (&'static AtomicU64, u64) {
    let i = (chunk - base) / size;
    // SAFETY: the bitmap lies inside the zone's reserved header area (BITMAP_OFFSET +
    // BITMAP_BYTES <= first chunk offset), which lives as long as the zone; callers
    // only use the reference while the zone is live.
    let word = unsafe { &*((zone + BITMAP_OFFSET + (i / 64) * 8) as *const AtomicU64) };
    (word, 1u64 << (i % 64))
}

#[cfg(feature = "debug")]
use dfly_core::sync::atomic::AtomicU64;
#[cfg(not(loom))]
use dfly_core::sync::atomic::{AtomicUsize, Ordering};

/// Debug feature: checks a free (interior pointer, double free) and poisons the chunk.
///
/// # Safety
/// `zone` is a live zone whose chunks start at `base` and are `size` bytes, and
/// `chunk` lies inside its chunk area.
#[cfg(feature = "debug")]
pub(crate) unsafe fn on_free(zone: usize, base: usize, size: usize, chunk: usize) {
    if chunk < base || (chunk - base) % size != 0 {
        fault("free of an interior pointer", chunk);
    }
    let (w, m) = bit(zone, base, size, chunk);
    if w.fetch_and(!m, Ordering::AcqRel) & m == 0 {
        fault("double free (chunk not in use)", chunk);
    }
    if size > 16 {
        // SAFETY: the chunk's bytes past the link and key words, given up by the caller.
        unsafe { core::ptr::write_bytes((chunk + 16) as *mut u8, POISON, size - 16) };
    }
}

/// Debug feature: records a chunk handed out and, if it was freed before
/// (`recycled`), verifies its poison.
///
/// # Safety
/// As for [`on_free`]; the chunk is free and now owned by the caller.
#[cfg(feature = "debug")]
pub(crate) unsafe fn on_alloc(zone: usize, base: usize, size: usize, chunk: usize, recycled: bool) {
    let (w, m) = bit(zone, base, size, chunk);
    if w.fetch_or(m, Ordering::AcqRel) & m != 0 {
        fault("chunk handed out twice (free list corrupted)", chunk);
    }
    if recycled && size > 16 {
        for off in 16..size {
            // SAFETY: inside the chunk we now own.
            if unsafe { ((chunk + off) as *const u8).read() } != POISON {
                fault("write after free (poison overwritten)", chunk + off);
            }
        }
    }
}

/// Debug feature: true if the page holding `addr` is mapped.
#[cfg(feature = "debug")]
pub(crate) fn is_mapped(addr: usize) -> bool {
    let page = addr & !(crate::class::PAGE - 1);
    // SAFETY: msync on an address range only queries/flushes mappings; on an unmapped
    // range it fails with ENOMEM and touches nothing.
    unsafe { libc::msync(page as *mut libc::c_void, crate::class::PAGE, libc::MS_ASYNC) == 0 }
}
