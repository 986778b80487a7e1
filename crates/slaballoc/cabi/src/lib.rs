//! `libdfly_slaballoc_c.so`: the dfly slab allocator behind the C malloc family, for
//! `LD_PRELOAD` (`LD_PRELOAD=target/release/libdfly_slaballoc_c.so python3 ...`).
//!
//! Every function here is a thin translation onto the process-wide
//! [`dfly_slaballoc::global::DEFAULT`] instance, which allocates nothing from any other
//! allocator and takes no lock on its fast paths, so it is safe to call from anywhere
//! the C library's own `malloc` is (signal handlers excepted, as for glibc). Fork
//! safety is the instance's own (`pthread_atfork` handlers, see the crate docs).
//!
//! C semantics kept: blocks of more than 8 bytes are 16-byte aligned (`max_align_t`);
//! `malloc(0)` returns a unique pointer; `free(NULL)` does nothing; `realloc(NULL, n)`
//! is `malloc(n)` and `realloc(p, 0)` frees `p` and returns null (as glibc does);
//! failures return null with `errno = ENOMEM`; `posix_memalign` returns `EINVAL` for
//! an alignment that is not a power of two multiple of `sizeof(void *)`, and
//! `memalign` rounds a non-power-of-two alignment up (as glibc does).
//!
//! Two extra symbols let a program (or a test) see that this allocator is the one in
//! use: `dfly_slab_zone_bytes()` and `dfly_slab_in_use()`.

use core::alloc::Layout;
use core::ffi::c_void;
use core::ptr;

use dfly_slaballoc::global::DEFAULT;

/// The alignment C requires of `malloc(size)`.
#[inline]
fn min_align(size: usize) -> usize {
    if size <= 8 {
        8
    } else {
        16
    }
}

fn set_errno(e: i32) {
    // SAFETY: `__errno_location` returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// Allocates `size` bytes aligned to `align` (a power of two), or null with ENOMEM.
#[inline]
fn alloc(size: usize, align: usize) -> *mut c_void {
    let Ok(layout) = Layout::from_size_align(size, align) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    let p = DEFAULT.alloc(layout);
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// C `malloc`.
///
/// # Safety
/// None beyond C's: the result is freed with this library's `free`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    alloc(size, min_align(size))
}

/// C `free`.
///
/// # Safety
/// `p` is null or a live block from this library.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: a live block of DEFAULT (C's contract for `free`).
        unsafe { DEFAULT.dealloc(p.cast()) };
    }
}

/// C `calloc`: zeroed, with the multiplication checked.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    let Ok(layout) = Layout::from_size_align(total, min_align(total)) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    let p = DEFAULT.alloc_zeroed(layout);
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// C `realloc`.
///
/// # Safety
/// `p` is null or a live block from this library.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return alloc(size, min_align(size));
    }
    if size == 0 {
        // SAFETY: a live block (contract).
        unsafe { DEFAULT.dealloc(p.cast()) };
        return ptr::null_mut();
    }
    let align = min_align(size);
    if size > isize::MAX as usize - align {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    // SAFETY: `align` is a power of two; the size check above is Layout's rule.
    let layout = unsafe { Layout::from_size_align_unchecked(size, align) };
    // SAFETY: a live block of DEFAULT with at least this alignment (every block of
    // more than 8 bytes is 16-aligned, and a block of 8 or fewer is 8-aligned).
    let q = unsafe { DEFAULT.realloc(p.cast(), layout, size) };
    if q.is_null() {
        set_errno(libc::ENOMEM);
    }
    q.cast()
}

/// C `reallocarray`: `realloc(p, n * size)` with the multiplication checked.
///
/// # Safety
/// As for [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: the caller's contract is realloc's.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// C `posix_memalign`.
///
/// # Safety
/// `out` is a valid pointer to write the result to.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let Ok(layout) = Layout::from_size_align(size, align.max(min_align(size))) else {
        return libc::ENOMEM;
    };
    let p = DEFAULT.alloc(layout);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: `out` is writable (contract).
    unsafe { *out = p.cast() };
    0
}

/// C11 `aligned_alloc` (any power-of-two alignment, as glibc accepts).
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    alloc(size, align.max(min_align(size)))
}

/// Obsolete `memalign`: a non-power-of-two alignment is rounded up.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    let Some(align) = align.max(1).checked_next_power_of_two() else {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    alloc(size, align.max(min_align(size)))
}

fn page() -> usize {
    // SAFETY: sysconf has no memory preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p <= 0 {
        4096
    } else {
        p as usize
    }
}

/// Obsolete `valloc`: page-aligned.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc(size, page())
}

/// Obsolete `pvalloc`: page-aligned, size rounded up to whole pages.
///
/// # Safety
/// None beyond C's.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let pg = page();
    match size.max(1).checked_next_multiple_of(pg) {
        Some(s) => alloc(s, pg),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// glibc `malloc_usable_size`: the bytes the block really has (0 for null).
///
/// # Safety
/// `p` is null or a live block from this library.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        0
    } else {
        // SAFETY: a live block of DEFAULT (contract).
        unsafe { DEFAULT.usable_size(p.cast()) }
    }
}

/// Bytes of zones this allocator has mapped now (shows that it is the one in use).
#[no_mangle]
pub extern "C" fn dfly_slab_zone_bytes() -> usize {
    DEFAULT.stats().zone_bytes
}

/// Bytes allocated and not freed, summed over every slot (exact when threads are
/// quiescent).
#[no_mangle]
pub extern "C" fn dfly_slab_in_use() -> i64 {
    DEFAULT.stats().in_use
}
