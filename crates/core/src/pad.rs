//! [`CachePadded`]: aligns and pads a value to the coherence unit, so two values that
//! different CPUs write never share a cache line.
//!
//! The unit is 128 bytes on x86-64 and aarch64: Intel's adjacent-line prefetcher pulls
//! lines in pairs, and Apple's and Neoverse cores use 128-byte lines. Elsewhere it is 64.

use core::fmt;
use core::ops::{Deref, DerefMut};

/// The padding unit in bytes for this target.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub const CACHE_LINE: usize = 128;
/// The padding unit in bytes for this target.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const CACHE_LINE: usize = 64;

/// A value aligned and padded to [`CACHE_LINE`] bytes.
///
/// ```
/// use dfly_core::CachePadded;
/// let x = CachePadded::new(7u64);
/// assert_eq!(*x, 7);
/// assert_eq!(std::mem::align_of_val(&x), dfly_core::pad::CACHE_LINE);
/// ```
#[cfg_attr(any(target_arch = "x86_64", target_arch = "aarch64"), repr(align(128)))]
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), repr(align(64)))]
#[derive(Default, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CachePadded<T> {
    value: T,
}

impl<T> CachePadded<T> {
    /// Pads `value`.
    pub const fn new(value: T) -> Self {
        Self { value }
    }

    /// Returns the inner value.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for CachePadded<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for CachePadded<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for CachePadded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CachePadded").field(&self.value).finish()
    }
}

impl<T> From<T> for CachePadded<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}
