//! [`Slot`]: the per-CPU state of DragonFly's `SLGlobalData`, held by one thread at a
//! time.
//!
//! # Who touches what
//!
//! A slot is *held* by at most one thread: an LWKT/ipi CPU holds the slot of its CPU
//! id, any other thread leases a free thread slot on first use, and the shared slot is
//! held for one operation at a time under the heap's mutex. `holder` is the lease word
//! (0 = free), taken with an acquire CAS and given back with a release store, so each
//! holder sees everything its predecessor did.
//!
//! - Holder only (`Cell`s): the per-class zone lists (`heads`/`tails`; allocation takes
//!   the tail, zones that come back or are new go to the head, so old zones drain), the
//!   free-zone cache (newest at the head, released oldest-first), the slide counter,
//!   and the outgoing batches of the batched remote-free mode.
//! - Anyone: `mailbox` (remote freers push; the holder takes), `want_clean` (set by
//!   [`crate::Slab::cleanup`] when the slot is busy; the holder honours it on its next
//!   slow path), statistics (`in_use`: written by the holder with a plain load and
//!   store, read by anyone).
//!
//! # What must never happen
//! Two threads running holder-only code on one slot; a zone on a class list with no
//! free chunk; more than the threshold of cached free zones after a malloc slow path;
//! a free path calling the OS (only [`Slot::release_excess`], called from malloc and
//! cleanup, unmaps zones).

use core::cell::Cell;
use core::ptr;

use dfly_core::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

use crate::class::{NCLASSES, ZONE_SIZE};
use crate::heap::Slab;
use crate::zone::{link, set_link, Freed, Mailbox, Zone, ZoneState};

/// Outgoing batch buffers per slot (direct-mapped by destination).
pub(crate) const NBATCH: usize = 8;

/// One outgoing batch of the batched remote-free mode: chunks for one destination
/// slot, linked through their first words.
#[derive(Debug)]
struct Batch {
    dest: Cell<*const Mailbox>,
    head: Cell<usize>,
    tail: Cell<usize>,
    bytes: Cell<usize>,
}

/// Per-CPU allocator state. See the module docs for the ownership rules.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Slot {
    /// Must stay the first field: zones name their owner by this address.
    pub(crate) mailbox: Mailbox,
    pub(crate) holder: AtomicUsize,
    pub(crate) index: usize,
    pub(crate) heap: *const Slab,
    heads: [Cell<*mut Zone>; NCLASSES],
    tails: [Cell<*mut Zone>; NCLASSES],
    free_head: Cell<*mut Zone>,
    free_tail: Cell<*mut Zone>,
    nfree_zones: Cell<usize>,
    junk: Cell<usize>,
    out: [Batch; NBATCH],
    pub(crate) in_use: AtomicI64,
    pub(crate) want_clean: AtomicBool,
    /// The largest number of cached free zones seen at the end of a malloc slow path.
    pub(crate) worst_cached: AtomicUsize,
    /// Zones this slot holds (on lists, off lists, cached).
    pub(crate) zones: AtomicUsize,
    pub(crate) cached: AtomicUsize,
}

impl Slot {
    pub(crate) fn new(index: usize, heap: *const Slab) -> Self {
        Self {
            mailbox: Mailbox::new(),
            holder: AtomicUsize::new(0),
            index,
            heap,
            heads: [const { Cell::new(ptr::null_mut()) }; NCLASSES],
            tails: [const { Cell::new(ptr::null_mut()) }; NCLASSES],
            free_head: Cell::new(ptr::null_mut()),
            free_tail: Cell::new(ptr::null_mut()),
            nfree_zones: Cell::new(0),
            junk: Cell::new(index.wrapping_mul(13)),
            out: [const {
                Batch {
                    dest: Cell::new(ptr::null()),
                    head: Cell::new(0),
                    tail: Cell::new(0),
                    bytes: Cell::new(0),
                }
            }; NBATCH],
            in_use: AtomicI64::new(0),
            want_clean: AtomicBool::new(false),
            worst_cached: AtomicUsize::new(0),
            zones: AtomicUsize::new(0),
            cached: AtomicUsize::new(0),
        }
    }

    /// Adds to this slot's in-use bytes (holder only: a plain load and store).
    #[inline(always)]
    pub(crate) fn add_in_use(&self, n: i64) {
        self.in_use.store(self.in_use.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// The number of cached free zones (holder only).
    pub(crate) fn cached_zones(&self) -> usize {
        self.nfree_zones.get()
    }

    /// Takes a chunk of class `c` from the tail zone, if the class has one (holder only).
    #[inline(always)]
    pub(crate) fn alloc_fast(&self, c: usize) -> Option<*mut u8> {
        let z = self.tails[c].get();
        if z.is_null() {
            return None;
        }
        // SAFETY: zones on our lists are live and ours; holder-only access.
        let zone = unsafe { &*z };
        let p = zone.take();
        if zone.nfree() == 0 && !zone.drop_off() {
            self.unlink(c, z);
        }
        Some(p)
    }

    fn insert_head(&self, c: usize, z: *mut Zone) {
        // SAFETY: `z` is a live zone of ours; holder-only access to its links.
        let zone = unsafe { &*z };
        let old = self.heads[c].get();
        zone.prev.set(ptr::null_mut());
        zone.next.set(old);
        if old.is_null() {
            self.tails[c].set(z);
        } else {
            // SAFETY: `old` is on our list, so live and ours.
            unsafe { (*old).prev.set(z) };
        }
        self.heads[c].set(z);
        zone.set_state(ZoneState::OnList);
    }

    fn unlink(&self, c: usize, z: *mut Zone) {
        // SAFETY: `z` is on our class list `c`.
        let zone = unsafe { &*z };
        let (p, n) = (zone.prev.get(), zone.next.get());
        if p.is_null() {
            self.heads[c].set(n);
        } else {
            // SAFETY: list neighbours are live zones of ours.
            unsafe { (*p).next.set(n) };
        }
        if n.is_null() {
            self.tails[c].set(p);
        } else {
            // SAFETY: as above.
            unsafe { (*n).prev.set(p) };
        }
        zone.prev.set(ptr::null_mut());
        zone.next.set(ptr::null_mut());
    }

    /// Frees a chunk of a zone this slot owns (holder only). Never calls the OS.
    ///
    /// # Safety
    /// `z` is a live zone owned by this slot and `p` one of its chunks in use.
    #[inline(always)]
    pub(crate) unsafe fn free_local(&self, z: *mut Zone, p: *mut u8) {
        // SAFETY: contract.
        let zone = unsafe { &*z };
        // SAFETY: contract.
        match unsafe { zone.free_local(p) } {
            Freed::Plain => {}
            Freed::Empty => self.maybe_retire(z, false),
            Freed::Relink => self.relink_freed(z),
        }
    }

    #[inline(never)]
    fn relink_freed(&self, z: *mut Zone) {
        // SAFETY: a live zone of ours (the caller freed one of its chunks).
        let zone = unsafe { &*z };
        self.insert_head(zone.class(), z);
        if zone.nfree() == zone.nmax() {
            self.maybe_retire(z, false);
        }
    }

    /// Moves a fully free zone to the free-zone cache if the protocol allows and it is
    /// not the last zone of its class (unless `force`). Never calls the OS.
    #[inline]
    fn maybe_retire(&self, z: *mut Zone, force: bool) {
        // SAFETY: `z` is a live zone of ours.
        let zone = unsafe { &*z };
        let c = zone.class();
        let on_list = zone.state() == ZoneState::OnList;
        // Keep one zone per active class (checked first: it is the common case of an
        // alloc/free pair, and needs no atomic load).
        if on_list && !force && self.heads[c].get() == z && self.tails[c].get() == z {
            return;
        }
        self.retire_slow(z, on_list);
    }

    #[inline(never)]
    fn retire_slow(&self, z: *mut Zone, on_list: bool) {
        // SAFETY: `z` is a live zone of ours.
        let zone = unsafe { &*z };
        if !zone.releasable() {
            return;
        }
        let c = zone.class();
        if on_list {
            self.unlink(c, z);
        }
        zone.retire();
        // SAFETY: the heap outlives its slots.
        let heap = unsafe { &*self.heap };
        if self.nfree_zones.get() >= heap.config().zone_rels_thresh {
            // Beyond the threshold: to the heap's release list, for a malloc to reuse
            // or the reaper to unmap. No system call here.
            self.zones.fetch_sub(1, Ordering::Relaxed);
            // SAFETY: retired just now and unlinked from every list.
            unsafe { heap.push_release(z) };
            return;
        }
        // Newest at the head of the cache; the oldest (tail) is released first.
        self.cache_retired(z);
    }

    /// Handles notifications and inbound batches (holder only). Never calls the OS.
    pub(crate) fn service(&self) {
        let mut z = self.mailbox.take_pending();
        while !z.is_null() {
            // SAFETY: a notified zone is pinned for us, so live and ours. Read the
            // next link first: handling may let the zone be notified again.
            let zone = unsafe { &*z };
            let next = zone.next_pending();
            match zone.notified() {
                Freed::Plain => {}
                Freed::Relink => {
                    self.insert_head(zone.class(), z);
                    if zone.nfree() == zone.nmax() {
                        self.maybe_retire(z, false);
                    }
                }
                Freed::Empty => self.maybe_retire(z, false),
            }
            z = next;
        }
        let mut c = self.mailbox.take_inbound();
        while c != 0 {
            // SAFETY: inbound chunks are free chunks of our zones, ours after the take.
            let next = unsafe { link(c) };
            let zp = (c & !(ZONE_SIZE - 1)) as *mut Zone;
            // SAFETY: the chunk was in use until batched, so its zone is live and ours.
            unsafe { self.free_local(zp, c as *mut u8) };
            c = next;
        }
    }

    /// Absorbs the remote lists of every zone on the class lists and retires the ones
    /// that became free (`force`: even the last zone of a class). Never calls the OS.
    pub(crate) fn absorb_all(&self, force: bool) {
        for c in 0..NCLASSES {
            let mut z = self.heads[c].get();
            while !z.is_null() {
                // SAFETY: zones on our lists are live and ours.
                let zone = unsafe { &*z };
                let next = zone.next.get();
                zone.absorb();
                if zone.nfree() == zone.nmax() {
                    self.maybe_retire(z, force);
                }
                z = next;
            }
        }
    }

    /// Unmaps cached free zones, oldest first, until at most `keep` remain. Called only
    /// from malloc's slow path, cleanup and trim: never from free.
    pub(crate) fn release_excess(&self, heap: &Slab, keep: usize) {
        while self.nfree_zones.get() > keep {
            let z = self.free_tail.get();
            // SAFETY: the count says the cache is non-empty; cached zones are ours.
            let prev = unsafe { (*z).prev.get() };
            self.free_tail.set(prev);
            if prev.is_null() {
                self.free_head.set(ptr::null_mut());
            } else {
                // SAFETY: cached zones are ours.
                unsafe { (*prev).next.set(ptr::null_mut()) };
            }
            self.nfree_zones.set(self.nfree_zones.get() - 1);
            self.zones.fetch_sub(1, Ordering::Relaxed);
            // SAFETY: a retired zone has no chunk in use, no pin, and is unlinked.
            unsafe { heap.unmap_zone(z.cast()) };
        }
        self.cached.store(self.nfree_zones.get(), Ordering::Relaxed);
    }

    /// Malloc's slow path for class `c` (holder only): service the mailbox, send
    /// outgoing batches, apply hysteresis, then take a chunk, making a zone if needed.
    pub(crate) fn alloc_slow(&self, heap: &Slab, c: usize) -> Option<*mut u8> {
        if self.mailbox.has_work() {
            self.service();
        }
        if self.want_clean.swap(false, Ordering::Relaxed) {
            self.absorb_all(false);
        }
        self.flush_out();
        let p = match self.alloc_fast(c) {
            Some(p) => Some(p),
            None => self.new_zone(heap, c).and_then(|()| self.alloc_fast(c)),
        };
        self.release_excess(heap, heap.config().zone_rels_thresh);
        if !heap.reaper_running() {
            // No reaper (yet, or by configuration): malloc returns the excess itself.
            heap.unmap_released(u32::MAX);
        }
        let cached = self.nfree_zones.get();
        if cached > self.worst_cached.load(Ordering::Relaxed) {
            self.worst_cached.store(cached, Ordering::Relaxed);
        }
        p
    }

    /// Puts a new zone for class `c` at the head of its list: from the free-zone cache
    /// (newest first) or fresh from the OS.
    fn new_zone(&self, heap: &Slab, c: usize) -> Option<()> {
        // Our cache first (newest first), then zones other slots retired beyond their
        // thresholds, then the OS.
        let cached = self.free_head.get();
        let adopted = if cached.is_null() { heap.pop_release() } else { ptr::null_mut() };
        let mem = if !adopted.is_null() {
            adopted.cast()
        } else if cached.is_null() {
            let m = heap.map_zone()?;
            self.zones.fetch_add(1, Ordering::Relaxed);
            m
        } else {
            // SAFETY: cached zones are ours.
            let next = unsafe { (*cached).next.get() };
            self.free_head.set(next);
            if next.is_null() {
                self.free_tail.set(ptr::null_mut());
            } else {
                // SAFETY: cached zones are ours.
                unsafe { (*next).prev.set(ptr::null_mut()) };
            }
            self.nfree_zones.set(self.nfree_zones.get() - 1);
            self.cached.store(self.nfree_zones.get(), Ordering::Relaxed);
            cached.cast()
        };
        let j = self.junk.get().wrapping_add(7);
        self.junk.set(j);
        // SAFETY: `mem` is a fresh or retired zone of ours (no chunk in use, no pin),
        // ZONE_SIZE bytes aligned to ZONE_SIZE; our mailbox lives as long as the heap.
        let z = unsafe { Zone::init(mem, ZONE_SIZE, c, &self.mailbox, j) };
        self.insert_head(c, z);
        Some(())
    }

    /// Puts a retired zone at the head of the free-zone cache.
    fn cache_retired(&self, z: *mut Zone) {
        // SAFETY: `z` is a retired zone of ours.
        let zone = unsafe { &*z };
        let old = self.free_head.get();
        zone.prev.set(ptr::null_mut());
        zone.next.set(old);
        if old.is_null() {
            self.free_tail.set(z);
        } else {
            // SAFETY: cached zones are ours.
            unsafe { (*old).prev.set(z) };
        }
        self.free_head.set(z);
        self.nfree_zones.set(self.nfree_zones.get() + 1);
        self.cached.store(self.nfree_zones.get(), Ordering::Relaxed);
    }

    /// Queues a chunk of another slot's zone on the outgoing batch for that slot
    /// (holder only; batched mode), sending the batch when it reaches `threshold`
    /// bytes or its buffer is needed for another destination.
    ///
    /// # Safety
    /// `p` is an in-use chunk of a live zone owned by `dest` (not this slot), given up.
    pub(crate) unsafe fn free_batched(
        &self,
        dest: *const Mailbox,
        p: *mut u8,
        size: usize,
        threshold: usize,
    ) {
        let i = ((dest as usize) >> 12) % NBATCH;
        let b = &self.out[i];
        if b.dest.get() != dest && b.head.get() != 0 {
            self.flush_one(b);
        }
        b.dest.set(dest);
        let c = p as usize;
        if c == b.head.get() {
            crate::debug::fault("double free", c);
        }
        // SAFETY: the chunk is ours to link (contract).
        unsafe { set_link(c, b.head.get()) };
        if b.head.get() == 0 {
            b.tail.set(c);
        }
        b.head.set(c);
        b.bytes.set(b.bytes.get() + size);
        if b.bytes.get() >= threshold {
            self.flush_one(b);
        }
    }

    fn flush_one(&self, b: &Batch) {
        if b.head.get() == 0 {
            return;
        }
        // SAFETY: the batch is a chain of given-up chunks of zones owned by `dest`;
        // mailboxes live as long as their heap.
        let was_empty = unsafe { (*b.dest.get()).push_inbound(b.head.get(), b.tail.get()) };
        // SAFETY: the heap outlives its slots.
        let heap = unsafe { &*self.heap };
        heap.count_batch();
        if was_empty {
            crate::notify::owner_has_work(heap, b.dest.get());
        }
        b.head.set(0);
        b.tail.set(0);
        b.bytes.set(0);
    }

    /// Sends every outgoing batch (holder only).
    pub(crate) fn flush_out(&self) {
        for b in &self.out {
            self.flush_one(b);
        }
    }

    /// Bytes waiting in outgoing batches (holder only).
    pub(crate) fn outgoing_bytes(&self) -> usize {
        self.out.iter().map(|b| b.bytes.get()).sum()
    }

    /// Everything a departing holder does: send batches, take notifications and
    /// inbound chunks, absorb remote lists, and keep at most `keep` cached zones. After
    /// this no chunk of ours waits anywhere we would not look on adoption.
    pub(crate) fn drain(&self, heap: &Slab, keep: usize, force: bool) {
        self.flush_out();
        self.service();
        self.absorb_all(force);
        self.release_excess(heap, keep);
    }

    /// Checks the list invariants (holder only; for tests): every listed zone has a
    /// free chunk and is ours.
    pub(crate) fn check(&self) {
        for c in 0..NCLASSES {
            let mut z = self.heads[c].get();
            let mut prev = ptr::null_mut();
            while !z.is_null() {
                // SAFETY: zones on our lists are live and ours.
                let zone = unsafe { &*z };
                assert!(zone.nfree() > 0, "zone on class list with no free chunk");
                assert_eq!(zone.class(), c);
                assert_eq!(zone.owner(), &self.mailbox as *const Mailbox);
                assert_eq!(zone.state(), ZoneState::OnList);
                assert_eq!(zone.prev.get(), prev);
                prev = z;
                z = zone.next.get();
            }
            assert_eq!(self.tails[c].get(), prev);
        }
    }
}
