//! [`Backoff`]: a bounded exponential spin for the short wait before parking.
//!
//! dfly never yields the OS thread in a loop (`sched_yield` storms are what make
//! spinning channels collapse when threads outnumber cores). A waiter spins with
//! [`Backoff::spin`] until [`Backoff::is_completed`] says the budget is spent, then
//! parks (see [`crate::park`]). The budget is a few microseconds at most.

use crate::sync::spin_loop;

/// Doubling steps of spinning: step `k` issues `2^k` spin hints.
const SPIN_LIMIT: u32 = if crate::sync::LOOM { 0 } else { 3 };
/// Total steps before the backoff reports completion. With `SPIN_LIMIT` 3 this is
/// 1 + 2 + 4 + 8 * 4 = 39 spin hints: about 0.2 to 2 microseconds depending on the
/// cost of `PAUSE` (about 10 cycles before Skylake, about 140 after). The budget is
/// deliberately small: when both ends share a core every spin is pure loss (a budget
/// of 383 hints measured a 13.5x oversubscribed slowdown in the ipi suite).
/// Under loom the budget shrinks to two single hints so models stay small.
const STEP_LIMIT: u32 = if crate::sync::LOOM { 1 } else { 6 };

/// Bounded exponential backoff. Cheap to create; one per wait.
///
/// ```
/// use dfly_core::Backoff;
/// let mut b = Backoff::new();
/// let mut spins = 0;
/// while !b.is_completed() {
///     b.spin();
///     spins += 1;
/// }
/// assert!(spins <= 16);
/// ```
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    step: u32,
}

impl Backoff {
    /// A fresh backoff.
    #[inline]
    pub const fn new() -> Self {
        Self { step: 0 }
    }

    /// Starts over (call after progress was made).
    #[inline]
    pub fn reset(&mut self) {
        self.step = 0;
    }

    /// Spins for the current step and advances it.
    #[inline]
    // Under loom SPIN_LIMIT is 0, and clippy sees the `min` as a constant.
    #[cfg_attr(loom, allow(clippy::unnecessary_min_or_max))]
    pub fn spin(&mut self) {
        let n = 1u32 << self.step.min(SPIN_LIMIT);
        for _ in 0..n {
            spin_loop();
        }
        if self.step <= STEP_LIMIT {
            self.step += 1;
        }
    }

    /// True when the spin budget is spent and the caller should park.
    #[inline]
    pub fn is_completed(&self) -> bool {
        self.step > STEP_LIMIT
    }
}
