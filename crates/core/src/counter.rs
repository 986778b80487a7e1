//! [`Counter`]: a per-CPU statistic whose sum is exact.
//!
//! Each CPU adds to its own padded slot with a plain load and store (no locked
//! instruction; only the owner writes it); threads that are not CPUs add to a shared
//! slot with `fetch_add`. [`Counter::sum`] adds every slot. Values are `i64` so a
//! counter may go negative on one CPU (a free on another CPU than the allocation) and
//! still sum exactly.

use crate::cpu::{CpuId, CpuOutOfRange};
use crate::pad::CachePadded;
use crate::percpu::PerCpu;
use crate::sync::atomic::{AtomicI64, Ordering};

/// A per-CPU counter.
///
/// ```
/// use dfly_core::{Counter, CpuId};
/// let c = Counter::new(2).unwrap();
/// c.add(CpuId::new(0).unwrap(), 5);
/// c.add(CpuId::new(1).unwrap(), -2);
/// c.add_shared(1);
/// assert_eq!(c.sum(), 4);
/// ```
#[derive(Debug)]
pub struct Counter {
    slots: PerCpu<AtomicI64>,
    shared: CachePadded<AtomicI64>,
}

impl Counter {
    /// A zeroed counter for `ncpus` CPUs.
    pub fn new(ncpus: usize) -> Result<Self, CpuOutOfRange> {
        Ok(Self {
            slots: PerCpu::new(ncpus, |_| AtomicI64::new(0))?,
            shared: CachePadded::new(AtomicI64::new(0)),
        })
    }

    /// Adds `n` to `cpu`'s slot. Contract: only the thread running as `cpu` for the
    /// owner of this counter calls this (a violation loses counts, nothing worse).
    /// An out-of-range `cpu` goes to the shared slot.
    #[inline]
    pub fn add(&self, cpu: CpuId, n: i64) {
        match self.slots.get(cpu) {
            Some(s) => s.store(s.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed),
            None => self.add_shared(n),
        }
    }

    /// Adds `n` from any thread.
    #[inline]
    pub fn add_shared(&self, n: i64) {
        self.shared.fetch_add(n, Ordering::Relaxed);
    }

    /// One CPU's slot.
    pub fn get(&self, cpu: CpuId) -> Option<i64> {
        self.slots.get(cpu).map(|s| s.load(Ordering::Relaxed))
    }

    /// The sum of all slots. Exact once writers are quiescent; while they run it is
    /// some value each slot held.
    pub fn sum(&self) -> i64 {
        self.slots.iter().fold(self.shared.load(Ordering::Relaxed), |a, s| {
            a.wrapping_add(s.load(Ordering::Relaxed))
        })
    }

    /// Per-CPU values and the shared slot, as a snapshot.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            per_cpu: self.slots.iter().map(|s| s.load(Ordering::Relaxed)).collect(),
            shared: self.shared.load(Ordering::Relaxed),
        }
    }
}

/// A read of every slot of a [`Counter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Slot values in CPU order.
    pub per_cpu: Vec<i64>,
    /// The shared slot (adds from non-CPU threads).
    pub shared: i64,
}

impl CounterSnapshot {
    /// The sum of all slots.
    pub fn sum(&self) -> i64 {
        self.per_cpu.iter().fold(self.shared, |a, v| a.wrapping_add(*v))
    }
}
