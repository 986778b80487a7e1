//! Per-CPU crossbar statistics (DragonFly's `ipiq_*` counters).
//!
//! Each CPU's slot is written only by the thread attached as that CPU (a relaxed load
//! and store, no locked instruction); sends from foreign threads count in a shared
//! slot with `fetch_add`. Reading is a snapshot of relaxed loads.

use dfly_core::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one CPU's counters (or of the sum over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Messages this CPU sent to other CPUs (active and passive; not self-calls).
    pub sent: u64,
    /// Messages this CPU ran from its incoming FIFOs and foreign inbox.
    pub received: u64,
    /// Sends to itself, run as direct calls.
    pub self_calls: u64,
    /// Sends that found the FIFO over its threshold and had to wait for space.
    pub fifo_full: u64,
    /// Sends that needed no wakeup: the target was running, or a wakeup was already
    /// in flight, or its pending bit was already set.
    pub avoided_wakeups: u64,
    /// Wake syscalls issued to parked targets.
    pub wakeups: u64,
    /// Passive sends (queued without any wakeup).
    pub passive: u64,
    /// Passive sends that became active because the FIFO was at least 1/4 full.
    pub passive_promoted: u64,
    /// cpusyncs this CPU mastered.
    pub cpusyncs: u64,
    /// Times this CPU announced it was parking (stored `PARKED`). Most announcements
    /// end in a sleep; some are withdrawn when the re-check finds work. Each
    /// announcement can be consumed by at most one wake syscall, so the wakeups
    /// aimed at a CPU never exceed its parks.
    pub parks: u64,
}

impl CpuStats {
    /// Adds `other` field by field.
    pub fn add(&mut self, other: &CpuStats) {
        self.sent += other.sent;
        self.received += other.received;
        self.self_calls += other.self_calls;
        self.fifo_full += other.fifo_full;
        self.avoided_wakeups += other.avoided_wakeups;
        self.wakeups += other.wakeups;
        self.passive += other.passive;
        self.passive_promoted += other.passive_promoted;
        self.cpusyncs += other.cpusyncs;
        self.parks += other.parks;
    }
}

macro_rules! slot_fields {
    ($($f:ident),*) => {
        #[derive(Debug, Default)]
        pub(crate) struct StatsSlot { $(pub(crate) $f: AtomicU64,)* }

        impl StatsSlot {
            pub(crate) fn snapshot(&self) -> CpuStats {
                CpuStats { $($f: self.$f.load(Ordering::Relaxed),)* }
            }
        }
    };
}

slot_fields!(
    sent,
    received,
    self_calls,
    fifo_full,
    avoided_wakeups,
    wakeups,
    passive,
    passive_promoted,
    cpusyncs,
    parks
);

/// Owner-only increment (relaxed load + store).
#[inline(always)]
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Any-thread increment.
#[inline]
pub(crate) fn bump_shared(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
