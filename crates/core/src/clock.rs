//! Clocks: [`RealClock`] (the OS monotonic clock) and [`VirtualClock`] (time that
//! moves only when told to, for simulation), behind one trait, [`Clock`].
//!
//! Nothing else in the workspace reads the OS clock directly: code takes a
//! `&dyn Clock` (or a generic `C: Clock`) so the same code runs under simulation.

use core::fmt;
use core::ops::{Add, Sub};
use core::time::Duration;
use std::sync::OnceLock;

use crate::sync::atomic::{AtomicU64, Ordering};

/// A point in time: nanoseconds since the clock's epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The epoch.
    pub const ZERO: Timestamp = Timestamp(0);

    /// From nanoseconds since the epoch.
    pub const fn from_nanos(ns: u64) -> Self {
        Timestamp(ns)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    /// Saturates at the end of time instead of overflowing.
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
}

impl Sub for Timestamp {
    type Output = Duration;
    /// Saturates at zero.
    fn sub(self, rhs: Timestamp) -> Duration {
        self.saturating_since(rhs)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}s", self.0 / 1_000_000_000, self.0 % 1_000_000_000)
    }
}

/// A monotonic clock.
pub trait Clock: Send + Sync {
    /// The current time; never earlier than a previous call's result.
    fn now(&self) -> Timestamp;
}

/// The OS monotonic clock; its epoch is the first use in the process.
///
/// ```
/// use dfly_core::clock::{Clock, RealClock};
/// let a = RealClock.now();
/// let b = RealClock.now();
/// assert!(b >= a);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RealClock;

fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl Clock for RealClock {
    #[inline]
    fn now(&self) -> Timestamp {
        let e = epoch();
        Timestamp(u64::try_from(e.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

/// Virtual time: starts at zero and moves only by [`advance`](Self::advance) or
/// [`advance_to`](Self::advance_to).
///
/// ```
/// use dfly_core::clock::{Clock, VirtualClock};
/// use std::time::Duration;
/// let c = VirtualClock::new();
/// c.advance(Duration::from_millis(5));
/// assert_eq!(c.now().as_nanos(), 5_000_000);
/// assert!(c.advance_to(dfly_core::clock::Timestamp::ZERO).is_err());
/// ```
#[derive(Debug, Default)]
pub struct VirtualClock {
    nanos: AtomicU64,
}

/// The error when asked to move a [`VirtualClock`] backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backwards {
    /// The clock's time.
    pub now: Timestamp,
    /// The requested, earlier, time.
    pub requested: Timestamp,
}

impl fmt::Display for Backwards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "virtual clock cannot go back from {:?} to {:?}", self.now, self.requested)
    }
}

impl std::error::Error for Backwards {}

impl VirtualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self { nanos: AtomicU64::new(0) }
    }

    /// Moves time forward by `d` (saturating) and returns the new time.
    pub fn advance(&self, d: Duration) -> Timestamp {
        let add = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let mut cur = self.nanos.load(Ordering::Acquire);
        loop {
            let next = cur.saturating_add(add);
            match self.nanos.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Timestamp(next),
                Err(v) => cur = v,
            }
        }
    }

    /// Moves time to `t`; fails if `t` is earlier than now.
    pub fn advance_to(&self, t: Timestamp) -> Result<(), Backwards> {
        let mut cur = self.nanos.load(Ordering::Acquire);
        loop {
            if t.0 < cur {
                return Err(Backwards { now: Timestamp(cur), requested: t });
            }
            match self.nanos.compare_exchange_weak(cur, t.0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }
}

impl Clock for VirtualClock {
    #[inline]
    fn now(&self) -> Timestamp {
        Timestamp(self.nanos.load(Ordering::Acquire))
    }
}
