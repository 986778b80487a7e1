//! [`RawLock`]: the allocator's own mutex, a futex word with no guard type tied to a
//! scope, so the fork handlers can take it in `prepare` and release it in `parent`
//! and `child` (a `std::sync::Mutex` cannot be released by anything but its guard).
//! It never allocates, so it is usable on every allocator path.
//!
//! Word states: 0 free, 1 held, 2 held with (possible) sleepers. `unlock` wakes only
//! from state 2.

use dfly_core::sync::atomic::{AtomicU32, Ordering};

use crate::os;

/// A futex-based mutex without poisoning and without a scoped guard.
#[derive(Debug)]
pub(crate) struct RawLock {
    word: AtomicU32,
}

impl RawLock {
    pub(crate) const fn new() -> Self {
        Self { word: AtomicU32::new(0) }
    }

    /// Takes the lock, spinning briefly and then sleeping.
    pub(crate) fn lock(&self) {
        if self.word.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return;
        }
        for _ in 0..100 {
            core::hint::spin_loop();
            if self.word.load(Ordering::Relaxed) == 0
                && self.word.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                return;
            }
        }
        while self.word.swap(2, Ordering::Acquire) != 0 {
            os::futex_wait(&self.word, 2);
        }
    }

    /// Releases the lock (the caller holds it).
    pub(crate) fn unlock(&self) {
        if self.word.swap(0, Ordering::Release) == 2 {
            os::futex_wake_one(&self.word);
        }
    }

    /// Takes the lock and returns a guard that releases it.
    pub(crate) fn guard(&self) -> LockGuard<'_> {
        self.lock();
        LockGuard { lock: self }
    }

    /// Marks the lock free without waking anyone: for the child after `fork`, where
    /// the forking thread held it through `prepare` and no other thread exists.
    pub(crate) fn reset_in_child(&self) {
        self.word.store(0, Ordering::Relaxed);
    }
}

/// Releases a [`RawLock`] when dropped.
#[derive(Debug)]
pub(crate) struct LockGuard<'a> {
    lock: &'a RawLock,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.lock.unlock();
    }
}
