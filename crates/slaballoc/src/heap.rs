//! [`Slab`]: one allocator instance — its slot table, its configuration, its counters,
//! and the malloc/free/realloc paths that pick a slot and a zone.
//!
//! # Paths
//!
//! - **malloc, small** (`size` and `align` fit a class): the calling thread's slot
//!   takes a chunk from the tail zone of the class list ([`Slot::alloc_fast`]); if the
//!   class has no zone, the slow path services the slot's mailbox, sends outgoing
//!   batches, takes a zone from the free-zone cache or the OS, and applies hysteresis
//!   (cached free zones above `zone_rels_thresh` are unmapped, oldest first).
//! - **free, small**: the zone header is found by masking. If the calling thread holds
//!   the owning slot, the chunk goes on the zone's local LIFO list; otherwise it is a
//!   remote free, by [`RemoteMode`]: a lock-free push on the zone's remote list (one
//!   CAS; a notification only if the zone had dropped off its owner's list), or a
//!   chunk in the freeing slot's outgoing batch for the owner (one CAS per batch).
//!   Neither calls the OS.
//! - **large** (see [`crate::large`]): whole-page mappings with a header page, mapped
//!   and unmapped directly.
//!
//! Accounting: each slot's holder adds the bytes it allocates and subtracts the bytes
//! it frees to the slot's own counter (so a slot's count may go negative); threads
//! with no slot use one shared atomic. The sum is exact when threads are quiescent.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use dfly_core::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use dfly_core::MAX_CPUS;

use crate::class::{class_for, class_size, ZONE_SIZE};
use crate::large::{self, LARGE_MAGIC};
use crate::lock::{LockGuard, RawLock};
use crate::os;
use crate::slot::Slot;
use crate::thread::DEAD;
use crate::zone::{Zone, ZONE_MAGIC};

/// Slots per instance: one per possible CPU id, then thread slots.
pub(crate) const MAX_SLOTS: usize = MAX_CPUS + 256;

/// How a free of another slot's chunk reaches the owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteMode {
    /// DragonFly: a lock-free push on the zone's remote list; the owner absorbs the
    /// whole list with one swap; a notification only when the zone had dropped off.
    PerZone,
    /// snmalloc-style: chunks collect in the freeing slot's outgoing batch for the
    /// owner, sent with one CAS per batch of [`Config::batch_bytes`].
    Batched,
}

/// Settings of a [`Slab`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Fully free zones a slot keeps cached; malloc's slow path unmaps the excess
    /// (DragonFly's `ZoneRelsThresh`). Default 4 (512 KiB per slot).
    pub zone_rels_thresh: usize,
    /// The remote-free design.
    pub remote: RemoteMode,
    /// Outgoing batch size in bytes for [`RemoteMode::Batched`].
    pub batch_bytes: usize,
    /// Period of the background reaper in milliseconds, 0 for none. The reaper starts
    /// once the instance has mapped [`REAPER_AFTER_BYTES`] of zones; each round it
    /// cleans every slot no thread holds and unmaps the zones retired beyond the
    /// slots' thresholds that sat on the release list for a whole round (younger ones
    /// stay for a malloc to reuse), so memory comes back after a bulk free even when
    /// the freeing thread never allocates again. When a round finds nothing to do the
    /// period doubles (an idle program wakes it five times a second).
    ///
    /// What the reaper cannot reach: chunks other threads freed into the zones of a
    /// thread that is alive but never allocates again (only the holder of a slot may
    /// take its notifications). They come back when that thread next takes a malloc
    /// slow path, calls [`Slab::cleanup`], or exits.
    pub reap_ms: u32,
}

/// Zone bytes an instance maps before its reaper starts (programs that stay below
/// this never get a background thread).
pub const REAPER_AFTER_BYTES: usize = 32 * ZONE_SIZE;

impl Config {
    /// The defaults: threshold 4, batched remote free (it measured faster than per-zone
    /// in the producer/consumer and larson benchmarks), 16 KiB batches, a reaper every
    /// 100 ms.
    pub const DEFAULT: Config = Config {
        zone_rels_thresh: 4,
        remote: RemoteMode::Batched,
        batch_bytes: 16 * 1024,
        reap_ms: 100,
    };
}

impl Default for Config {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A snapshot of a [`Slab`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes allocated and not freed (zone chunks at their class size, large blocks at
    /// their usable size), summed over every slot.
    pub in_use: i64,
    /// Bytes of zones currently mapped.
    pub zone_bytes: usize,
    /// Bytes of large mappings currently mapped (in use or cached).
    pub large_bytes: usize,
    /// Bytes of freed large mappings kept for reuse.
    pub large_cached_bytes: usize,
    /// Bytes of slot metadata mapped.
    pub meta_bytes: usize,
    /// `mmap`/`munmap` calls made for zones so far.
    pub zone_os_calls: u64,
    /// `mmap`/`munmap` calls made for large blocks so far.
    pub large_os_calls: u64,
    /// Cached free zones, summed over slots.
    pub cached_zones: usize,
    /// Retired zones beyond the slots' thresholds, waiting for the reaper or a malloc
    /// slow path to unmap (or reuse) them.
    pub releasing_zones: usize,
    /// The largest number of cached free zones any slot held at the end of a malloc
    /// slow path (the hysteresis bound says this is at most the threshold).
    pub worst_cached_after_slow: usize,
    /// Notifications sent by remote frees that found their zone dropped off.
    pub notifications: u64,
    /// Batches sent in batched mode.
    pub batches: u64,
    /// Passive IPIs sent to owner CPUs (remote work for a CPU slot, freed by a thread
    /// running as a dfly-ipi CPU), and mailbox services those IPIs ran.
    pub ipis: u64,
    /// See [`Stats::ipis`].
    pub ipi_services: u64,
    /// Slots created.
    pub slots: usize,
}

/// An allocator instance. Use it from a `static` (methods take `&'static self`); the
/// process-wide instance behind [`crate::SlabAlloc`] is [`crate::global::DEFAULT`].
///
/// ```
/// use dfly_slaballoc::{Config, Slab};
/// use std::alloc::Layout;
/// static HEAP: Slab = Slab::with_config(Config::DEFAULT);
/// let l = Layout::from_size_align(100, 8).unwrap();
/// let p = HEAP.alloc(l);
/// assert!(!p.is_null());
/// unsafe { HEAP.dealloc(p) };
/// assert_eq!(HEAP.stats().in_use, 0);
/// ```
#[derive(Debug)]
pub struct Slab {
    config: Config,
    pub(crate) id: AtomicUsize,
    pub(crate) table: [AtomicPtr<Slot>; MAX_SLOTS],
    shared: AtomicPtr<Slot>,
    pub(crate) shared_lock: RawLock,
    pub(crate) create_lock: RawLock,
    /// Held by whoever reaps (the reaper thread, or `trim`), and by `fork`'s prepare.
    pub(crate) reap_lock: RawLock,
    /// Retired zones beyond a slot's threshold, waiting to be reused by a malloc slow
    /// path or unmapped by the reaper once they have sat a whole reaper period: a
    /// list (newest at the head, linked through `Zone::prev`/`next`) under
    /// `release_lock`, which is taken only when a whole zone changes hands.
    pub(crate) release_lock: RawLock,
    release_head: AtomicPtr<Zone>,
    release_tail: AtomicPtr<Zone>,
    releasing: AtomicUsize,
    /// Reaper rounds so far; a zone remembers the round it was released in.
    reap_round: AtomicU32,
    /// Freed large mappings kept for reuse.
    pub(crate) large_cache: large::Cache,
    /// The reaper thread: 0 not started, 1 running, 2 could not start.
    pub(crate) reaper: AtomicU32,
    shared_in_use: AtomicI64,
    zone_bytes: AtomicUsize,
    pub(crate) large_bytes: AtomicUsize,
    meta_bytes: AtomicUsize,
    zone_os_calls: AtomicU64,
    pub(crate) large_os_calls: AtomicU64,
    notifications: AtomicU64,
    batches: AtomicU64,
    /// Passive IPIs sent to owner CPUs, and mailbox services they ran.
    pub(crate) ipis: AtomicU64,
    pub(crate) ipi_services: AtomicU64,
    slots: AtomicUsize,
}

impl Default for Slab {
    fn default() -> Self {
        Self::new()
    }
}

/// Frees through the shared slot, held for one operation.
struct SharedGuard<'a> {
    slot: &'a Slot,
    _g: LockGuard<'a>,
}

impl Slab {
    /// An instance with [`Config::DEFAULT`].
    pub const fn new() -> Self {
        Self::with_config(Config::DEFAULT)
    }

    /// An instance with `config`.
    pub const fn with_config(config: Config) -> Self {
        Self::with_id(config, 0)
    }

    /// The process-wide instance: instance number 0, reserved for it (`id` 1).
    pub(crate) const fn new_default() -> Self {
        Self::with_id(Config::DEFAULT, 1)
    }

    const fn with_id(config: Config, id: usize) -> Self {
        Self {
            config,
            id: AtomicUsize::new(id),
            table: [const { AtomicPtr::new(ptr::null_mut()) }; MAX_SLOTS],
            shared: AtomicPtr::new(ptr::null_mut()),
            shared_lock: RawLock::new(),
            create_lock: RawLock::new(),
            reap_lock: RawLock::new(),
            release_lock: RawLock::new(),
            release_head: AtomicPtr::new(ptr::null_mut()),
            release_tail: AtomicPtr::new(ptr::null_mut()),
            releasing: AtomicUsize::new(0),
            reap_round: AtomicU32::new(0),
            large_cache: large::Cache::new(),
            reaper: AtomicU32::new(0),
            shared_in_use: AtomicI64::new(0),
            zone_bytes: AtomicUsize::new(0),
            large_bytes: AtomicUsize::new(0),
            meta_bytes: AtomicUsize::new(0),
            zone_os_calls: AtomicU64::new(0),
            large_os_calls: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            ipis: AtomicU64::new(0),
            ipi_services: AtomicU64::new(0),
            slots: AtomicUsize::new(0),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Slot `index` of the table (`index == MAX_SLOTS` is the shared slot), made on
    /// first use if `create`.
    pub(crate) fn slot_at(&self, index: usize, create: bool) -> Option<*mut Slot> {
        let cell = if index == MAX_SLOTS { &self.shared } else { self.table.get(index)? };
        let s = cell.load(Ordering::Acquire);
        if !s.is_null() || !create {
            return (!s.is_null()).then_some(s);
        }
        let _g = self.create_lock.guard();
        let s = cell.load(Ordering::Acquire);
        if !s.is_null() {
            return Some(s);
        }
        let len = core::mem::size_of::<Slot>().next_multiple_of(crate::class::PAGE);
        let mem = os::map(len)?.cast::<Slot>();
        // SAFETY: a fresh mapping of `len >= size_of::<Slot>()` bytes, page-aligned.
        unsafe { mem.as_ptr().write(Slot::new(index, self)) };
        self.meta_bytes.fetch_add(len, Ordering::Relaxed);
        self.slots.fetch_add(1, Ordering::Relaxed);
        cell.store(mem.as_ptr(), Ordering::Release);
        Some(mem.as_ptr())
    }

    fn lock_shared(&self) -> Option<SharedGuard<'_>> {
        let g = self.shared_lock.guard();
        let s = self.slot_at(MAX_SLOTS, true)?;
        // SAFETY: slots live as long as the heap; the mutex makes us its holder.
        Some(SharedGuard { slot: unsafe { &*s }, _g: g })
    }

    /// Maps a fresh zone (malloc slow path only).
    pub(crate) fn map_zone(&self) -> Option<*mut u8> {
        let (p, calls) = os::map_aligned(ZONE_SIZE, ZONE_SIZE, 0)?;
        self.zone_os_calls.fetch_add(u64::from(calls), Ordering::Relaxed);
        self.zone_bytes.fetch_add(ZONE_SIZE, Ordering::Relaxed);
        Some(p.as_ptr())
    }

    /// Unmaps a retired zone (malloc slow path, cleanup and trim only).
    ///
    /// # Safety
    /// `z` is a retired zone of this heap, unlinked from every list.
    pub(crate) unsafe fn unmap_zone(&self, z: *mut u8) {
        // SAFETY: contract; zones are ZONE_SIZE bytes from `map_zone`.
        unsafe { os::unmap(NonNull::new_unchecked(z), ZONE_SIZE) };
        self.zone_os_calls.fetch_add(1, Ordering::Relaxed);
        self.zone_bytes.fetch_sub(ZONE_SIZE, Ordering::Relaxed);
    }

    pub(crate) fn count_batch(&self) {
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Charges `n` bytes to the calling thread's accounting.
    #[inline]
    fn charge(&self, slot: *mut Slot, n: i64) {
        if slot.is_null() || slot == DEAD {
            self.shared_in_use.fetch_add(n, Ordering::Relaxed);
        } else {
            // SAFETY: a slot the calling thread holds.
            unsafe { (*slot).add_in_use(n) };
        }
    }

    /// Allocates a block for `layout`; null if out of memory. Size 0 is served as 1.
    #[inline(always)]
    pub fn alloc(&'static self, layout: Layout) -> *mut u8 {
        match class_for(layout.size(), layout.align()) {
            Some(c) => {
                let s = self.tls_slot();
                if s as usize > DEAD as usize {
                    // SAFETY: a slot the calling thread holds.
                    let slot = unsafe { &*s };
                    if let Some(p) = slot.alloc_fast(c) {
                        slot.add_in_use(class_size(c) as i64);
                        return p;
                    }
                }
                self.alloc_small_slow(c)
            }
            None => self.alloc_large(layout.size(), layout.align(), false),
        }
    }

    #[cold]
    fn alloc_small_slow(&'static self, c: usize) -> *mut u8 {
        let s = self.own_slot();
        if s != DEAD {
            // SAFETY: a slot the calling thread holds.
            let slot = unsafe { &*s };
            let p = slot.alloc_slow(self, c);
            if p.is_some() {
                slot.add_in_use(class_size(c) as i64);
            }
            // The slot is consistent again: starting the reaper may allocate.
            self.maybe_start_reaper();
            return p.unwrap_or(ptr::null_mut());
        }
        let Some(g) = self.lock_shared() else { return ptr::null_mut() };
        let p = g.slot.alloc_slow(self, c);
        if p.is_some() {
            g.slot.add_in_use(class_size(c) as i64);
        }
        p.unwrap_or(ptr::null_mut())
    }

    #[cold]
    #[inline(never)]
    fn alloc_large(&'static self, size: usize, align: usize, zeroed: bool) -> *mut u8 {
        match large::alloc(self, size, align, zeroed) {
            Some((p, usable)) => {
                self.charge(self.tls_slot(), usable as i64);
                p
            }
            None => ptr::null_mut(),
        }
    }

    /// Allocates zeroed memory for `layout`.
    ///
    /// A large block is zeroed only when it comes from the large-block cache: a
    /// fresh mapping already reads as zeros.
    pub fn alloc_zeroed(&'static self, layout: Layout) -> *mut u8 {
        if class_for(layout.size(), layout.align()).is_none() {
            return self.alloc_large(layout.size(), layout.align(), true);
        }
        let p = self.alloc(layout);
        if !p.is_null() {
            // SAFETY: `p` is a fresh block of at least `layout.size()` bytes.
            unsafe { ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    /// Frees a block. Never calls the OS for a zone chunk.
    ///
    /// # Safety
    /// `p` was returned by this instance's `alloc`/`alloc_zeroed`/`realloc` and is not
    /// freed yet.
    #[inline(always)]
    pub unsafe fn dealloc(&'static self, p: *mut u8) {
        let a = p as usize;
        // Fast path: a chunk of a zone the calling thread's slot owns.
        if !cfg!(feature = "debug") && a & (ZONE_SIZE - 1) != 0 {
            let z = (a & !(ZONE_SIZE - 1)) as *mut Zone;
            // SAFETY: the masked address of a non-zone-aligned block is the header of
            // its zone or large mapping (contract), mapped while `p` is in use.
            let zone = unsafe { &*z };
            let s = self.tls_slot();
            if zone.magic() == ZONE_MAGIC
                && s as usize > DEAD as usize
                // SAFETY: a slot the calling thread holds.
                && core::ptr::eq(zone.owner(), unsafe { &(*s).mailbox })
            {
                // SAFETY: as above.
                let slot = unsafe { &*s };
                let size = zone.chunk_size();
                // SAFETY: `p` is a chunk of `size` bytes the caller gives up.
                unsafe { crate::debug::on_free_key(a, size) };
                slot.add_in_use(-(size as i64));
                // SAFETY: our zone, our chunk, given up (contract).
                unsafe { slot.free_local(z, p) };
                return;
            }
        }
        // SAFETY: the caller's contract.
        unsafe { self.dealloc_slow(p) }
    }

    /// Every free but a local one: large blocks, remote frees, threads without a
    /// slot, and the debug checks.
    ///
    /// # Safety
    /// As for [`Slab::dealloc`].
    #[inline(never)]
    unsafe fn dealloc_slow(&'static self, p: *mut u8) {
        let a = p as usize;
        #[cfg(feature = "debug")]
        {
            let header = if a & (ZONE_SIZE - 1) == 0 {
                a.wrapping_sub(crate::class::PAGE)
            } else {
                a & !(ZONE_SIZE - 1)
            };
            if !crate::debug::is_mapped(header) {
                crate::debug::fault("free of a pointer this allocator does not own (unmapped)", a);
            }
        }
        if a & (ZONE_SIZE - 1) == 0 {
            // SAFETY: only large blocks are zone-aligned (contract).
            let n = unsafe { large::free(self, p) };
            self.charge(self.tls_slot(), -(n as i64));
            return;
        }
        let z = (a & !(ZONE_SIZE - 1)) as *mut Zone;
        // SAFETY: the masked address is the header of the zone or large mapping
        // holding `p` (contract), which is mapped while `p` is in use.
        let magic = unsafe { (*z).magic() };
        if magic != ZONE_MAGIC {
            if magic == LARGE_MAGIC {
                // SAFETY: a large block of ours (contract).
                let n = unsafe { large::free(self, p) };
                self.charge(self.tls_slot(), -(n as i64));
            } else if magic == large::CACHED_MAGIC {
                crate::debug::fault("double free of a large block", a);
            } else if cfg!(feature = "debug") {
                crate::debug::fault("free of a pointer this allocator does not own", a);
            }
            // Otherwise a foreign pointer: ignored, never linked anywhere.
            return;
        }
        // SAFETY: a live zone while `p` is in use.
        let zone = unsafe { &*z };
        let size = zone.chunk_size();
        #[cfg(feature = "debug")]
        // SAFETY: `p` lies in the chunk area of the live zone `z`.
        unsafe {
            crate::debug::on_free(z as usize, zone.base(), size, a)
        };
        // SAFETY: `p` is a chunk of `size` bytes the caller gives up (contract).
        unsafe { crate::debug::on_free_key(a, size) };
        let owner = zone.owner();
        let mut s = self.tls_slot();
        if s.is_null() && self.config.remote == RemoteMode::Batched {
            s = self.own_slot();
        }
        if s as usize > DEAD as usize {
            // SAFETY: a slot the calling thread holds.
            let slot = unsafe { &*s };
            slot.add_in_use(-(size as i64));
            if core::ptr::eq(owner, &slot.mailbox) {
                // SAFETY: our zone, our chunk, given up (contract).
                unsafe { slot.free_local(z, p) };
            } else if self.config.remote == RemoteMode::Batched {
                // SAFETY: another slot's live zone; the chunk is given up.
                unsafe { slot.free_batched(owner, p, size, self.config.batch_bytes) };
            } else {
                self.remote_free(z, p);
            }
            return;
        }
        // No slot of our own: the shared slot's chunks are local under its lock.
        let shared = self.shared.load(Ordering::Acquire);
        if !shared.is_null() && owner == shared as *const _ {
            if let Some(g) = self.lock_shared() {
                g.slot.add_in_use(-(size as i64));
                // SAFETY: the shared slot's zone and chunk; we hold the slot.
                unsafe { g.slot.free_local(z, p) };
                return;
            }
        }
        self.shared_in_use.fetch_sub(size as i64, Ordering::Relaxed);
        self.remote_free(z, p);
    }

    #[inline]
    fn remote_free(&self, z: *mut Zone, p: *mut u8) {
        // Read before the push: afterwards the zone may be released.
        // SAFETY: `z` is live while its chunk `p` is in use.
        let owner = unsafe { (*z).owner() };
        // SAFETY: `z` is live (its chunk `p` is in use) and `p` is given up.
        if unsafe { Zone::remote_free(z, p) } {
            self.notifications.fetch_add(1, Ordering::Relaxed);
            crate::notify::owner_has_work(self, owner);
        }
    }

    /// The usable size of a block: its class size, or a large block's mapped bytes.
    ///
    /// # Safety
    /// `p` is a live block of this instance.
    pub unsafe fn usable_size(&self, p: *mut u8) -> usize {
        let a = p as usize;
        let z = (a & !(ZONE_SIZE - 1)) as *const Zone;
        // SAFETY: as in `dealloc` (contract).
        if a & (ZONE_SIZE - 1) != 0 && unsafe { (*z).magic() } == ZONE_MAGIC {
            // SAFETY: a live zone.
            unsafe { (*z).chunk_size() }
        } else {
            // SAFETY: a live large block (contract).
            unsafe { large::usable(p) }
        }
    }

    /// Resizes a block, keeping `min(old, new)` bytes. The same pointer comes back when
    /// the new size falls in the same class (or fits a large block's mapping and uses
    /// at least half of it). Null if out of memory (the old block is then untouched).
    ///
    /// # Safety
    /// `p` is a live block of this instance allocated with `layout`'s alignment, and
    /// `new_size` rounded up to that alignment does not overflow `isize`.
    pub unsafe fn realloc(&'static self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let a = p as usize;
        let z = (a & !(ZONE_SIZE - 1)) as *const Zone;
        // SAFETY: as in `dealloc` (contract).
        let in_zone = a & (ZONE_SIZE - 1) != 0 && unsafe { (*z).magic() } == ZONE_MAGIC;
        let old = if in_zone {
            // SAFETY: a live zone.
            let zone = unsafe { &*z };
            if class_for(new_size, layout.align()) == Some(zone.class()) {
                return p;
            }
            zone.chunk_size()
        } else {
            // SAFETY: a live large block (contract).
            let usable = unsafe { large::usable(p) };
            if new_size <= usable
                && new_size > usable / 2
                && class_for(new_size, layout.align()).is_none()
            {
                return p;
            }
            usable
        };
        // SAFETY: `layout.align()` is a valid alignment (it came from a Layout).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let q = self.alloc(new_layout);
        if !q.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe { ptr::copy_nonoverlapping(p, q, old.min(new_size)) };
            // SAFETY: `p` is live and ours (contract).
            unsafe { self.dealloc(p) };
        }
        q
    }

    /// Periodic cleanup (DragonFly's `slab_cleanup`): the calling thread's slot and
    /// every slot nobody holds are drained (batches sent, notifications and inbound
    /// chunks taken, remote lists absorbed, empty zones retired, cached zones above the
    /// threshold unmapped); slots other threads hold are asked to absorb on their next
    /// slow path.
    pub fn cleanup(&'static self) {
        self.clean(self.config.zone_rels_thresh, false);
    }

    /// Like [`Slab::cleanup`], but releases every fully free zone, even the last of
    /// its class, and keeps no cached zone: after all threads have freed everything,
    /// a trim returns all zone memory to the OS.
    ///
    /// A trim waits for a reaper round in progress: the reaper takes cached zones
    /// and large mappings off their lists and unmaps them after, so without the
    /// wait a trim could find the lists empty and return while that memory was
    /// still mapped (and counted in [`Slab::stats`]).
    pub fn trim(&'static self) {
        let _round = self.reap_lock.guard();
        self.clean(0, true);
    }

    fn clean(&'static self, keep: usize, force: bool) {
        self.clean_slots(keep, force);
        self.unmap_released(u32::MAX);
        self.large_cache.release(self, u32::MAX);
    }

    fn clean_slots(&'static self, keep: usize, force: bool) {
        let mine = self.tls_slot();
        if mine as usize > DEAD as usize {
            // SAFETY: a slot we hold.
            unsafe { (*mine).drain(self, keep, force) };
        }
        for i in 0..MAX_SLOTS {
            let Some(s) = self.slot_at(i, false) else { continue };
            if s == mine {
                continue;
            }
            match self.try_lease_existing(i) {
                Some(s) => {
                    // SAFETY: we just leased it.
                    let slot = unsafe { &*s };
                    slot.drain(self, keep, force);
                    slot.holder.store(0, Ordering::Release);
                }
                // SAFETY: slots live as long as the heap.
                None => unsafe { (*s).want_clean.store(true, Ordering::Relaxed) },
            }
        }
        if self.slot_at(MAX_SLOTS, false).is_some() {
            if let Some(g) = self.lock_shared() {
                g.slot.drain(self, keep, force);
            }
        }
    }

    /// Hands a retired zone beyond a slot's threshold to the release list (free path:
    /// no system call; one uncontended lock per 128 KiB zone).
    ///
    /// # Safety
    /// `z` is a retired zone of this heap ([`Zone::retire`] ran), on no list.
    pub(crate) unsafe fn push_release(&self, z: *mut Zone) {
        // SAFETY: the zone is ours (contract); list links change under the lock.
        let zone = unsafe { &*z };
        zone.set_round(self.reap_round.load(Ordering::Relaxed));
        let _g = self.release_lock.guard();
        let head = self.release_head.load(Ordering::Relaxed);
        zone.prev.set(ptr::null_mut());
        zone.next.set(head);
        if head.is_null() {
            self.release_tail.store(z, Ordering::Relaxed);
        } else {
            // SAFETY: zones on the release list are retired and live; we hold the lock.
            unsafe { (*head).prev.set(z) };
        }
        self.release_head.store(z, Ordering::Relaxed);
        self.releasing.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the most recently released zone for reuse, or null.
    pub(crate) fn pop_release(&self) -> *mut Zone {
        if self.releasing.load(Ordering::Relaxed) == 0 {
            return ptr::null_mut();
        }
        let _g = self.release_lock.guard();
        let z = self.release_head.load(Ordering::Relaxed);
        if !z.is_null() {
            // SAFETY: a zone on the release list; we hold the lock.
            let next = unsafe { (*z).next.get() };
            self.release_head.store(next, Ordering::Relaxed);
            if next.is_null() {
                self.release_tail.store(ptr::null_mut(), Ordering::Relaxed);
            } else {
                // SAFETY: as above.
                unsafe { (*next).prev.set(ptr::null_mut()) };
            }
            self.releasing.fetch_sub(1, Ordering::Relaxed);
        }
        z
    }

    /// Unmaps the zones on the release list released before round `before` (all of
    /// them for `u32::MAX`), oldest first; returns how many.
    pub(crate) fn unmap_released(&self, before: u32) -> usize {
        if self.releasing.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        // Detach the old end of the list under the lock, unmap outside it.
        let mut chain = ptr::null_mut::<Zone>();
        {
            let _g = self.release_lock.guard();
            loop {
                let t = self.release_tail.load(Ordering::Relaxed);
                // SAFETY: zones on the release list are live; we hold the lock.
                if t.is_null() || (before != u32::MAX && unsafe { (*t).round() } >= before) {
                    break;
                }
                // SAFETY: as above.
                let prev = unsafe { (*t).prev.get() };
                self.release_tail.store(prev, Ordering::Relaxed);
                if prev.is_null() {
                    self.release_head.store(ptr::null_mut(), Ordering::Relaxed);
                } else {
                    // SAFETY: as above.
                    unsafe { (*prev).next.set(ptr::null_mut()) };
                }
                self.releasing.fetch_sub(1, Ordering::Relaxed);
                // SAFETY: detached: ours alone now.
                unsafe { (*t).next.set(chain) };
                chain = t;
            }
        }
        let mut n = 0;
        while !chain.is_null() {
            // SAFETY: a detached retired zone: no chunk in use, no pin, on no list.
            let next = unsafe { (*chain).next.get() };
            // SAFETY: as above.
            unsafe { self.unmap_zone(chain.cast()) };
            n += 1;
            chain = next;
        }
        n
    }

    /// The current reaper round.
    pub(crate) fn reap_round(&self) -> u32 {
        self.reap_round.load(Ordering::Relaxed)
    }

    /// True while the reaper thread runs (it, not malloc, unmaps the release list).
    #[doc(hidden)]
    pub fn reaper_running(&self) -> bool {
        self.reaper.load(Ordering::Relaxed) == 1
    }

    /// Starts the reaper thread once the instance is big enough (see
    /// [`Config::reap_ms`]). Called where no slot is mid-operation, because spawning
    /// a thread allocates.
    #[inline]
    fn maybe_start_reaper(&'static self) {
        if self.config.reap_ms == 0
            || self.reaper.load(Ordering::Relaxed) != 0
            || self.zone_bytes.load(Ordering::Relaxed) < REAPER_AFTER_BYTES
        {
            return;
        }
        if self.reaper.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("dfly-slab-reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || self.reaper_loop());
        if spawned.is_err() {
            self.reaper.store(2, Ordering::Relaxed);
        }
    }

    fn reaper_loop(&'static self) {
        let base = u64::from(self.config.reap_ms.max(1));
        let mut period = base;
        loop {
            std::thread::sleep(std::time::Duration::from_millis(period));
            // After a fork the child has no reaper; the state says so (see `fork`).
            if self.reaper.load(Ordering::Relaxed) != 1 {
                return;
            }
            let did = self.reap();
            period = if did { base } else { (period * 2).min(base * 2) };
        }
    }

    /// One reaper round: clean every slot nobody holds and unmap the zones that have
    /// sat on the release list since before the previous round (so a program that
    /// frees and reallocates within a period reuses its zones). Returns true if it
    /// returned memory to the OS or left some to return next round.
    fn reap(&'static self) -> bool {
        let before = self.zone_os_calls.load(Ordering::Relaxed);
        self.reap_lock.lock();
        let round = self.reap_round.fetch_add(1, Ordering::Relaxed);
        self.clean_slots(self.config.zone_rels_thresh, false);
        self.unmap_released(round);
        self.large_cache.release(self, round);
        self.reap_lock.unlock();
        self.zone_os_calls.load(Ordering::Relaxed) != before
            || self.releasing.load(Ordering::Relaxed) != 0
            || self.large_cache.bytes() != 0
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let mut st = Stats {
            in_use: self.shared_in_use.load(Ordering::Relaxed),
            zone_bytes: self.zone_bytes.load(Ordering::Relaxed),
            large_bytes: self.large_bytes.load(Ordering::Relaxed),
            large_cached_bytes: self.large_cache.bytes(),
            meta_bytes: self.meta_bytes.load(Ordering::Relaxed),
            zone_os_calls: self.zone_os_calls.load(Ordering::Relaxed),
            large_os_calls: self.large_os_calls.load(Ordering::Relaxed),
            notifications: self.notifications.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            ipis: self.ipis.load(Ordering::Relaxed),
            ipi_services: self.ipi_services.load(Ordering::Relaxed),
            slots: self.slots.load(Ordering::Relaxed),
            releasing_zones: self.releasing.load(Ordering::Relaxed),
            ..Stats::default()
        };
        for i in 0..=MAX_SLOTS {
            if let Some(s) = self.slot_at(i, false) {
                // SAFETY: slots live as long as the heap; we read only atomics.
                let slot = unsafe { &*s };
                st.in_use = st.in_use.wrapping_add(slot.in_use.load(Ordering::Relaxed));
                st.cached_zones += slot.cached.load(Ordering::Relaxed);
                st.worst_cached_after_slow =
                    st.worst_cached_after_slow.max(slot.worst_cached.load(Ordering::Relaxed));
            }
        }
        st
    }

    /// The table index of the slot the calling thread holds, if any (for tests).
    #[doc(hidden)]
    pub fn my_slot_index(&'static self) -> Option<usize> {
        let s = self.tls_slot();
        // SAFETY: a slot we hold.
        (s as usize > DEAD as usize).then(|| unsafe { (*s).index })
    }

    /// Checks the calling thread's slot's list invariants and returns its number of
    /// cached free zones and bytes waiting in outgoing batches (for tests).
    #[doc(hidden)]
    pub fn check_my_slot(&'static self) -> Option<(usize, usize)> {
        let s = self.tls_slot();
        if s as usize <= DEAD as usize {
            return None;
        }
        // SAFETY: a slot we hold.
        let slot = unsafe { &*s };
        slot.check();
        Some((slot.cached_zones(), slot.outgoing_bytes()))
    }
}
