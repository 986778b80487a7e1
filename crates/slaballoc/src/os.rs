//! The only module that calls the OS: anonymous `mmap`, `munmap` and the aligned
//! over-allocate-and-trim mapping that zones need.
//!
//! Nothing here allocates or takes a lock, so it is callable from any allocator path.
//! Callers count what they map (the heap keeps per-instance counters of OS calls and
//! mapped bytes); this module only returns what the kernel did.

use core::ptr::NonNull;

/// Maps `len` bytes (a multiple of the page size) of zeroed, read-write anonymous
/// memory, or `None` if the kernel refuses.
pub(crate) fn map(len: usize) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at a kernel-chosen address touches no
    // existing memory; the result is checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(p.cast())
    }
}

/// Unmaps `len` bytes at `ptr`.
///
/// # Safety
/// `ptr..ptr+len` is page-aligned, was returned (in whole or as part) by [`map`] or
/// [`map_aligned`], is not unmapped yet, and nothing will access it again.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: the caller owns the range and gives it up (function contract).
    let r = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    debug_assert_eq!(r, 0, "munmap failed");
}

/// Maps `len` bytes whose address plus `head` is a multiple of `align` (a power of two
/// at least a page), by mapping `len + align` and unmapping the excess on both sides.
/// Returns the start of the kept range (so `start + head` is aligned) and the number
/// of system calls made.
pub(crate) fn map_aligned(len: usize, align: usize, head: usize) -> Option<(NonNull<u8>, u32)> {
    debug_assert!(align.is_power_of_two() && align >= page_size());
    debug_assert!(head % page_size() == 0 && len % page_size() == 0);
    let over = len.checked_add(align)?;
    let raw = map(over)?;
    let raw_addr = raw.as_ptr() as usize;
    let aligned = (raw_addr + head).next_multiple_of(align) - head;
    let before = aligned - raw_addr;
    let after = over - before - len;
    let mut calls = 1;
    if before > 0 {
        // SAFETY: the first `before` bytes of our own fresh mapping, never handed out.
        unsafe { unmap(raw, before) };
        calls += 1;
    }
    if after > 0 {
        // SAFETY: the last `after` bytes of our own fresh mapping, never handed out.
        unsafe { unmap(NonNull::new_unchecked((aligned + len) as *mut u8), after) };
        calls += 1;
    }
    // `aligned` lies inside the non-null mapping.
    NonNull::new(aligned as *mut u8).map(|p| (p, calls))
}

/// The OS page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf reads a constant; it has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p <= 0 {
        crate::class::PAGE
    } else {
        p as usize
    }
}

/// Sleeps while `word` holds `expected` (or until a wake or a signal).
pub(crate) fn futex_wait(word: &dfly_core::sync::atomic::AtomicU32, expected: u32) {
    // SAFETY: `word` is a live, aligned u32 for the call; FUTEX_WAIT only reads it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes one thread sleeping on `word`.
pub(crate) fn futex_wake_one(word: &dfly_core::sync::atomic::AtomicU32) {
    // SAFETY: FUTEX_WAKE uses the address only as a key.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}
