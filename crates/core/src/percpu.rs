//! [`PerCpu`]: one cache-padded slot per CPU, so each CPU writes only its own line.

use core::ops::Index;

use crate::cpu::{CpuId, CpuOutOfRange, MAX_CPUS};
use crate::pad::CachePadded;

/// One value per CPU, each in its own cache line(s).
///
/// Ownership is by convention: slot `i` is written by CPU `i` (use atomics or cells
/// inside `T`); anyone may read. The container itself is immutable after creation.
///
/// ```
/// use dfly_core::{CpuId, PerCpu};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// let hits = PerCpu::new(4, |_| AtomicU64::new(0)).unwrap();
/// hits[CpuId::new(2).unwrap()].fetch_add(1, Ordering::Relaxed);
/// let total: u64 = hits.iter().map(|h| h.load(Ordering::Relaxed)).sum();
/// assert_eq!(total, 1);
/// ```
#[derive(Debug)]
pub struct PerCpu<T> {
    slots: Box<[CachePadded<T>]>,
}

impl<T> PerCpu<T> {
    /// Creates `ncpus` slots, `init(cpu)` each. Fails if `ncpus` is 0 or above
    /// [`MAX_CPUS`].
    pub fn new(ncpus: usize, mut init: impl FnMut(CpuId) -> T) -> Result<Self, CpuOutOfRange> {
        if ncpus == 0 || ncpus > MAX_CPUS {
            return Err(CpuOutOfRange { cpu: ncpus, limit: MAX_CPUS + 1 });
        }
        let slots = CpuId::all(ncpus).map(|c| CachePadded::new(init(c))).collect();
        Ok(Self { slots })
    }

    /// The number of slots.
    #[inline]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: a `PerCpu` has at least one slot.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot of `cpu`, or `None` if out of range.
    #[inline]
    pub fn get(&self, cpu: CpuId) -> Option<&T> {
        self.slots.get(cpu.index()).map(|s| &**s)
    }

    /// The slot of `cpu` without a range check, for hot paths whose caller
    /// has already checked the id against the crossbar or machine it came from.
    ///
    /// # Safety
    /// `cpu.index()` must be below [`PerCpu::len`].
    #[inline(always)]
    pub unsafe fn get_unchecked(&self, cpu: CpuId) -> &T {
        debug_assert!(cpu.index() < self.slots.len(), "PerCpu::get_unchecked out of range");
        // SAFETY: the caller promises the index is in range.
        unsafe { self.slots.get_unchecked(cpu.index()) }
    }

    /// All slots in CPU order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> + '_ {
        self.slots.iter().map(|s| &**s)
    }

    /// `(cpu, slot)` pairs in CPU order.
    pub fn iter_cpus(&self) -> impl ExactSizeIterator<Item = (CpuId, &T)> + '_ {
        CpuId::all(self.slots.len()).zip(self.slots.iter().map(|s| &**s))
    }
}

impl<T> Index<CpuId> for PerCpu<T> {
    type Output = T;
    /// # Panics
    /// If `cpu` is not below [`PerCpu::len`]; use [`PerCpu::get`] for untrusted ids.
    #[inline]
    fn index(&self, cpu: CpuId) -> &T {
        &self.slots[cpu.index()]
    }
}
