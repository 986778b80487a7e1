//! [`Kind`]: per-type accounting with an optional limit (DragonFly's `malloc_type`
//! with its per-CPU `ks_use` counters and `ks_limit`).
//!
//! Each kind has one padded counter per slot position (the first CPU slots and the
//! first thread slots), written only by the thread holding that slot with a plain load
//! and store, and a shared counter for every other thread (`fetch_add`). A block is
//! charged to the slot that allocates it and credited to the slot that frees it, so a
//! single counter may go negative; the sum over all counters is exact once writers are
//! quiescent. The limit is checked against that sum before allocating (loosely: two
//! threads may both pass the check and overshoot by one block each).

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use dfly_core::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use dfly_core::{CachePadded, MAX_CPUS};

use crate::heap::Slab;
use crate::thread::DEAD;

/// Counters per kind: the first half for CPU slots `0..32`, the second for the first
/// 32 thread slots.
const KIND_SLOTS: usize = 64;

/// A named kind of allocation with exact per-slot byte counters and an optional limit.
///
/// ```
/// use dfly_slaballoc::{Kind, Slab};
/// use std::alloc::Layout;
/// static HEAP: Slab = Slab::new();
/// static BUFS: Kind = Kind::with_limit("bufs", 1024);
/// let l = Layout::from_size_align(512, 8).unwrap();
/// let a = HEAP.alloc_kind(&BUFS, l).unwrap();
/// let b = HEAP.alloc_kind(&BUFS, l).unwrap();
/// assert!(HEAP.alloc_kind(&BUFS, l).is_err()); // 1024 bytes in use already
/// assert_eq!(BUFS.in_use(), 1024);
/// unsafe { HEAP.dealloc_kind(&BUFS, a.as_ptr()); HEAP.dealloc_kind(&BUFS, b.as_ptr()) };
/// assert_eq!(BUFS.in_use(), 0);
/// ```
pub struct Kind {
    name: &'static str,
    limit: AtomicU64,
    slots: [CachePadded<AtomicI64>; KIND_SLOTS],
    shared: CachePadded<AtomicI64>,
    calls: AtomicU64,
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kind")
            .field("name", &self.name)
            .field("in_use", &self.in_use())
            .field("limit", &self.limit())
            .finish()
    }
}

/// Why [`Slab::alloc_kind`] returned no block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindError {
    /// The kind's limit would be exceeded.
    LimitExceeded {
        /// The kind's limit in bytes.
        limit: u64,
        /// Bytes in use when the request was refused.
        in_use: i64,
        /// The request's usable size in bytes.
        requested: usize,
    },
    /// The OS gave no memory.
    OutOfMemory,
}

impl fmt::Display for KindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KindError::LimitExceeded { limit, in_use, requested } => write!(
                f,
                "allocation of {requested} bytes refused: {in_use} of a {limit}-byte limit in use"
            ),
            KindError::OutOfMemory => write!(f, "out of memory"),
        }
    }
}

impl std::error::Error for KindError {}

impl Kind {
    /// A kind with no limit.
    pub const fn new(name: &'static str) -> Self {
        Self::with_limit(name, u64::MAX)
    }

    /// A kind limited to `limit` bytes in use.
    pub const fn with_limit(name: &'static str, limit: u64) -> Self {
        Self {
            name,
            limit: AtomicU64::new(limit),
            slots: [const { CachePadded::new(AtomicI64::new(0)) }; KIND_SLOTS],
            shared: CachePadded::new(AtomicI64::new(0)),
            calls: AtomicU64::new(0),
        }
    }

    /// The name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<u64> {
        let l = self.limit.load(Ordering::Relaxed);
        (l != u64::MAX).then_some(l)
    }

    /// Sets or removes the limit.
    pub fn set_limit(&self, limit: Option<u64>) {
        self.limit.store(limit.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Bytes in use: the exact sum of every counter (when writers are quiescent).
    pub fn in_use(&self) -> i64 {
        self.slots.iter().fold(self.shared.load(Ordering::Relaxed), |a, s| {
            a.wrapping_add(s.load(Ordering::Relaxed))
        })
    }

    /// The per-slot counters followed by the shared one (each may be negative).
    pub fn counters(&self) -> impl Iterator<Item = i64> + '_ {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .chain(core::iter::once(self.shared.load(Ordering::Relaxed)))
    }

    /// Allocations made through this kind.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn add(&self, slot_index: Option<usize>, n: i64) {
        let i = slot_index.and_then(|i| {
            if i < KIND_SLOTS / 2 {
                Some(i)
            } else if (MAX_CPUS..MAX_CPUS + KIND_SLOTS / 2).contains(&i) {
                Some(i - MAX_CPUS + KIND_SLOTS / 2)
            } else {
                None
            }
        });
        match i {
            Some(i) => {
                let c = &self.slots[i];
                c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
            }
            None => {
                self.shared.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

impl Slab {
    fn held_slot_index(&'static self) -> Option<usize> {
        let s = self.tls_slot();
        // SAFETY: a slot the calling thread holds (entries are null, DEAD or held).
        (s as usize > DEAD as usize).then(|| unsafe { (*s).index })
    }

    /// Allocates for `kind`, refusing if its limit would be exceeded.
    pub fn alloc_kind(
        &'static self,
        kind: &Kind,
        layout: Layout,
    ) -> Result<NonNull<u8>, KindError> {
        if let Some(limit) = kind.limit() {
            let in_use = kind.in_use();
            let requested = layout.size();
            if in_use.saturating_add(requested as i64) > limit as i64 {
                return Err(KindError::LimitExceeded { limit, in_use, requested });
            }
        }
        let p = NonNull::new(self.alloc(layout)).ok_or(KindError::OutOfMemory)?;
        // SAFETY: `p` is a live block of ours.
        let n = unsafe { self.usable_size(p.as_ptr()) };
        kind.add(self.held_slot_index(), n as i64);
        kind.calls.fetch_add(1, Ordering::Relaxed);
        Ok(p)
    }

    /// Frees a block allocated for `kind`, crediting the calling thread's counter.
    ///
    /// # Safety
    /// As for [`Slab::dealloc`]; `p` came from [`Slab::alloc_kind`] with this `kind`.
    pub unsafe fn dealloc_kind(&'static self, kind: &Kind, p: *mut u8) {
        // SAFETY: `p` is live (contract).
        let n = unsafe { self.usable_size(p) };
        kind.add(self.held_slot_index(), -(n as i64));
        // SAFETY: contract.
        unsafe { self.dealloc(p) };
    }
}
