//! Unit and model tests of the allocator: shared helpers and the test modules.

#[cfg(loom)]
mod loom;

#[cfg(not(loom))]
mod basic;
#[cfg(not(loom))]
mod churn;
#[cfg(not(loom))]
mod faults;
#[cfg(not(loom))]
mod model;
#[cfg(not(loom))]
mod notify;
#[cfg(not(loom))]
mod reap;

#[cfg(not(loom))]
use std::alloc::Layout;

/// A layout, panicking on a bad one (tests only).
#[cfg(not(loom))]
fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// Fills `len` bytes at `p` with a pattern derived from `tag`.
///
/// # Safety
/// `p..p+len` is a live block the caller owns.
#[cfg(not(loom))]
unsafe fn fill(p: *mut u8, len: usize, tag: u64) {
    for i in 0..len {
        // SAFETY: in bounds of the caller's block.
        unsafe { p.add(i).write(pattern(tag, i)) };
    }
}

/// Checks the pattern written by [`fill`] over the first `len` bytes.
///
/// # Safety
/// As for [`fill`].
#[cfg(not(loom))]
unsafe fn check(p: *mut u8, len: usize, tag: u64) {
    for i in 0..len {
        // SAFETY: in bounds of the caller's block.
        let b = unsafe { p.add(i).read() };
        assert_eq!(b, pattern(tag, i), "corrupted byte {i} of block {tag} at {p:p}");
    }
}

#[cfg(not(loom))]
fn pattern(tag: u64, i: usize) -> u8 {
    (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8 ^ (i as u8)
}
