//! The process-wide instance and [`SlabAlloc`], the `#[global_allocator]` type.
//!
//! Every path of the allocator is free of std allocation (no `Vec`, `Box`, hash map
//! or thread-local with a destructor), so installing it cannot recurse into itself;
//! the only thread-local is a const array of pointers, readable during thread-local
//! teardown (see the `thread` module).

use core::alloc::{GlobalAlloc, Layout};

use crate::heap::Slab;

/// The instance behind [`SlabAlloc`].
pub static DEFAULT: Slab = Slab::new_default();

/// The slab allocator as a global allocator (the [`DEFAULT`] instance).
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: dfly_slaballoc::SlabAlloc = dfly_slaballoc::SlabAlloc;
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct SlabAlloc;

impl SlabAlloc {
    /// The instance this allocator uses (for [`Slab::stats`], [`Slab::cleanup`] and
    /// [`Slab::trim`]).
    pub fn heap(&self) -> &'static Slab {
        &DEFAULT
    }
}

// SAFETY: `Slab` returns blocks of at least the requested size and alignment that stay
// valid until freed, never hands out a live block twice, and `realloc` keeps
// `min(old, new)` bytes (see the crate's tests).
unsafe impl GlobalAlloc for SlabAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        DEFAULT.alloc(layout)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        DEFAULT.alloc_zeroed(layout)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` is a live block of this allocator.
        unsafe { DEFAULT.dealloc(ptr) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract matches `Slab::realloc`'s.
        unsafe { DEFAULT.realloc(ptr, layout, new_size) }
    }
}
