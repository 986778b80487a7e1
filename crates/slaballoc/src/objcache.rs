//! A typed object cache (DragonFly's `objcache`): per-CPU magazines of constructed
//! objects in front of a depot of full and empty magazines, so a hot get/put pair
//! touches only the calling CPU's state, and constructors run only on fresh objects.
//!
//! [`ObjCache<T>`] hands out [`Obj`] guards; dropping a guard puts the object back
//! (after the optional reset hook), still constructed. [`Obj::into_inner`] takes an
//! object out of the cache for good. With a [limit](Builder::limit) on the objects in
//! existence, [`ObjCache::try_get`] fails with [`TryGetError::LimitReached`] and
//! [`ObjCache::get`] waits for an object to come back.
//!
//! ```
//! use dfly_slaballoc::objcache::{Obj, ObjCache};
//!
//! let buffers = ObjCache::builder(|| Vec::<u8>::with_capacity(4096))
//!     .reset(|v| v.clear())
//!     .limit(64)
//!     .build();
//! let mut buf = buffers.get();
//! buf.extend_from_slice(b"hello");
//! drop(buf); // back in this CPU's magazine, cleared, its capacity kept
//!
//! let buf = buffers.get(); // the same buffer: no constructor call
//! assert!(buf.is_empty() && buf.capacity() >= 4096);
//! assert_eq!(buffers.stats().constructed, 1);
//! assert_eq!(buffers.stats().magazine_hits, 1);
//!
//! let mine: Vec<u8> = Obj::into_inner(buf); // leaves the cache (and its limit)
//! assert_eq!(buffers.stats().outstanding, 0);
//! # drop(mine);
//! ```
//!
//! # Layers (Bonwick's magazines, as in DragonFly's `kern_objcache.c`)
//! - A **magazine** is a stack of at most `capacity` boxed objects in a fixed array,
//!   allocated with exactly `capacity` entries on its first push and never resized.
//! - Each **slot** ("CPU") has a *loaded* and a *previous* magazine. `get` pops from
//!   loaded; if it is empty and previous is not, the two swap. `put` pushes on loaded;
//!   if it is full and previous is empty, they swap. Invariant: previous is always
//!   either empty or full, so a swap always gives a whole magazine of work.
//! - The **depot** (one mutex) holds lists of full and of empty magazines, and one
//!   *loose* magazine. A slot whose two magazines are both empty (get) or both full
//!   (put) trades its loaded magazine with the depot: an empty one for a full one, or
//!   a full one for an empty one. The loose magazine takes single objects from callers
//!   that could not use their slot (see below); it turns into a full magazine when it
//!   fills, and a full magazine becomes the loose one when a single object is wanted.
//! - The number of magazines is fixed when the cache is built: two per slot, the depot
//!   ones ([`Builder::depot_objects`]) and the loose one. When every magazine is full
//!   a returned object is dropped ([`CacheStats::destroyed`]); when every one is
//!   empty, a `get` constructs a fresh object, if the limit allows.
//!
//! # Who touches what
//! - The caller's slot is `current_cpu()` for an LWKT/ipi CPU thread, otherwise an
//!   index given to each OS thread on first use; both modulo the number of slots.
//!   Two OS threads may therefore share a slot. A slot's magazines are guarded by a
//!   one-word try-lock (`locked`, acquire on take, release on give-back). A caller that
//!   finds its slot taken never waits: it goes to the depot for one object (or with
//!   one object), counted as [`CacheStats::contended`]. Nothing is touched without
//!   either the slot lock or the depot mutex.
//! - Lock order: a slot lock, then the depot mutex. Code holding the depot mutex only
//!   ever *try*-locks slots (the steal scan), so there is no cycle.
//! - The hot path is, for `get`: read the caller's index (two thread-local loads; a
//!   division only when the index is not below the slot count), take the slot's lock
//!   (one CAS), pop from loaded, update the slot's `cached` and `hits` (plain load and
//!   store, under the lock), release the lock (one store); `put` is the reverse after
//!   one load of `waiters`. Anything else (swapping magazines, the depot, a busy slot,
//!   a limit check, a construction) is out of line.
//! - Constructors, the reset hook and `T`'s destructor run with no lock held.
//! - `outstanding` (objects in existence that belong to the cache: handed out or
//!   cached) changes only on construction, destruction and take, never on the hot
//!   path. A construction first reserves a unit below the limit with a CAS.
//!
//! # Waiting at the limit
//! When `outstanding` has reached the limit and the caller's slot and the depot are
//! empty, `get` and `try_get` scan the other slots (try-lock only) for a cached
//! object. If none is found `try_get` fails; `get` registers in `waiters` (under the
//! depot mutex) and sleeps on a condition variable. While `waiters` is non-zero every
//! put goes to the depot and notifies, as does every destruction and take. A put that
//! read `waiters == 0` just before a waiter registered may still land in a slot; the
//! waiter therefore rescans every few milliseconds, so it is delayed, never stranded.
//!
//! # What must never happen
//! One object handed to two guards at once; an object dropped twice or never (every
//! cached object is dropped exactly once when the cache drops; guards borrow the
//! cache, so none outlives it); a constructor run on a reused object.

use core::fmt;
use core::mem::{self, ManuallyDrop, MaybeUninit};
use core::ops::{Deref, DerefMut};
use core::time::Duration;
use std::cell::Cell;
use std::sync::PoisonError;

use dfly_core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use dfly_core::sync::{Condvar, Mutex, MutexGuard, UnsafeCell};
use dfly_core::{current_cpu, CachePadded, MAX_CPUS};

/// The largest magazine capacity (DragonFly clamps at 4096 as well).
pub const MAX_MAGAZINE_CAPACITY: usize = 4096;

/// Default depot size when there is no limit (DragonFly's `nom_cache` default).
const DEFAULT_DEPOT_OBJECTS: usize = 128;

/// How long a waiting `get` sleeps before it rescans the slots.
const WAIT_RESCAN: Duration = Duration::from_millis(5);

/// A magazine: a stack of at most `capacity` cached objects in a fixed array that is
/// allocated (with exactly `capacity` entries) on the first push and never resized.
///
/// Entries `..len` are initialised; `len <= objs.len()`, and `objs` is either empty
/// (never used) or `capacity` long. So `len == objs.len()` means "full, or never
/// used": the one test on the push fast path.
struct Magazine<T> {
    len: usize,
    objs: Box<[MaybeUninit<Box<T>>]>,
}

impl<T> Magazine<T> {
    fn new() -> Self {
        Self { len: 0, objs: Box::new([]) }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline(always)]
    fn pop(&mut self) -> Option<Box<T>> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: entries `..len` are initialised and `len <= objs.len()`; the entry at
        // the new `len` was the top one and is now outside the live range, so it is
        // read out exactly once.
        Some(unsafe { self.objs.get_unchecked(self.len).assume_init_read() })
    }

    /// Pushes `obj` if the array is allocated and not full; hands it back otherwise.
    #[inline(always)]
    fn try_push(&mut self, obj: Box<T>) -> Result<(), Box<T>> {
        if self.len == self.objs.len() {
            return Err(obj);
        }
        // SAFETY: `len < objs.len()` (checked above); the entry at `len` is outside the
        // live range, so writing it overwrites nothing that needs dropping.
        unsafe { self.objs.get_unchecked_mut(self.len).write(obj) };
        self.len += 1;
        Ok(())
    }

    /// Pushes `obj` on a magazine that holds fewer than `capacity` objects, allocating
    /// the array on first use.
    fn push(&mut self, obj: Box<T>, capacity: usize) {
        debug_assert!(self.len < capacity);
        if self.objs.is_empty() {
            self.objs = (0..capacity).map(|_| MaybeUninit::uninit()).collect();
        }
        let pushed = self.try_push(obj);
        debug_assert!(pushed.is_ok());
        // Unreachable: `len < capacity == objs.len()`; dropping would be safe anyway.
        drop(pushed);
    }

    /// Moves every object into `out`, leaving the magazine empty (array kept).
    fn drain_into(&mut self, out: &mut Vec<Box<T>>) {
        out.reserve(self.len);
        while let Some(obj) = self.pop() {
            out.push(obj);
        }
    }
}

impl<T> Drop for Magazine<T> {
    fn drop(&mut self) {
        let live: *mut [MaybeUninit<Box<T>>] = &mut self.objs[..self.len];
        self.len = 0;
        // SAFETY: entries `..len` were initialised `Box<T>`s (`MaybeUninit<Box<T>>` has
        // `Box<T>`'s layout); `len` is zeroed first, so they are dropped exactly once,
        // here (`drop_in_place` on a slice goes on with the rest if one panics).
        unsafe { core::ptr::drop_in_place(live as *mut [Box<T>]) };
    }
}

// ---------------------------------------------------------------------------------
// Slot selection
// ---------------------------------------------------------------------------------

/// Source of slot indexes for OS threads that are not CPUs.
static NEXT_THREAD_INDEX: AtomicUsize = AtomicUsize::new(0);

/// `THREAD_INDEX` before this thread's first use.
const NO_INDEX: usize = usize::MAX;

std::thread_local! {
    /// This thread's index, [`NO_INDEX`] until first use.
    static THREAD_INDEX: Cell<usize> = const { Cell::new(NO_INDEX) };
}

/// The caller's raw index: its CPU id when it runs as a CPU, otherwise the per-thread
/// index (`NO_INDEX` before the thread's first use, 0 during thread-local teardown).
/// Two thread-local loads, no atomic: the index is given once per thread, so `get` and
/// `put` only read it.
#[inline(always)]
fn raw_caller_index() -> usize {
    if let Some(cpu) = current_cpu() {
        return cpu.index();
    }
    THREAD_INDEX.try_with(Cell::get).unwrap_or(0)
}

/// Gives this thread its index on first use.
#[cold]
fn assign_thread_index() -> usize {
    let i = NEXT_THREAD_INDEX.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
    // During thread-local teardown the index is gone; slot 0 serves.
    THREAD_INDEX.try_with(|ix| ix.set(i)).map_or(0, |()| i)
}

/// The caller's index (see [`raw_caller_index`]), assigned if need be.
#[inline]
fn caller_index() -> usize {
    match raw_caller_index() {
        NO_INDEX => assign_thread_index(),
        i => i,
    }
}

// ---------------------------------------------------------------------------------
// Per-CPU slot
// ---------------------------------------------------------------------------------

/// The two magazines of a slot.
struct Mags<T> {
    loaded: Magazine<T>,
    previous: Magazine<T>,
}

/// One CPU's magazines, behind a try-lock, with counters readable without it.
struct Slot<T> {
    /// The try-lock over `mags`.
    locked: AtomicBool,
    /// Objects in `mags`; written only under the lock (a plain load and store, no
    /// read-modify-write), read by `stats`.
    cached: AtomicUsize,
    /// Gets served from `mags`; written only under the lock, like `cached`.
    hits: AtomicU64,
    mags: UnsafeCell<Mags<T>>,
}

// SAFETY: `mags` (the only non-`Sync` part) is reached only through a `SlotGuard`,
// which exists only while `locked` is held, so at most one thread touches it at a
// time; it holds `T`s that may move between threads, hence `T: Send`.
unsafe impl<T: Send> Sync for Slot<T> {}

impl<T> Slot<T> {
    fn new() -> Self {
        Self {
            locked: AtomicBool::new(false),
            cached: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            mags: UnsafeCell::new(Mags { loaded: Magazine::new(), previous: Magazine::new() }),
        }
    }

    /// Takes the slot if no one holds it; never waits.
    #[inline(always)]
    fn try_lock(&self) -> Option<SlotGuard<'_, T>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SlotGuard { slot: self })
    }
}

/// Proof that the holder owns a slot's try-lock; gives it back on drop.
struct SlotGuard<'a, T> {
    slot: &'a Slot<T>,
}

impl<T> SlotGuard<'_, T> {
    #[inline(always)]
    fn mags(&mut self) -> &mut Mags<T> {
        // SAFETY: this guard exists only while `locked` is held by us (see
        // `Slot::try_lock`), and the returned borrow is tied to `&mut self`, so no other
        // reference to `mags` exists while it lives.
        self.slot.mags.with_mut(|p| unsafe { &mut *p })
    }

    /// Adds `delta` (wrapping) to the published cached count; the lock makes the load
    /// and store one step.
    #[inline(always)]
    fn add_cached(&self, delta: usize) {
        let c = &self.slot.cached;
        c.store(c.load(Ordering::Relaxed).wrapping_add(delta), Ordering::Relaxed);
    }

    /// The hot get: one object off the loaded magazine, counted as a hit.
    #[inline(always)]
    fn pop_loaded(&mut self) -> Option<Box<T>> {
        let obj = self.mags().loaded.pop()?;
        self.add_cached(usize::MAX); // - 1
        self.hit();
        Some(obj)
    }

    /// The hot put: one object on the loaded magazine, if it has room.
    #[inline(always)]
    fn push_loaded(&mut self, obj: Box<T>) -> Result<(), Box<T>> {
        self.mags().loaded.try_push(obj)?;
        self.add_cached(1);
        Ok(())
    }

    /// Republishes the cached count after a change.
    fn publish(&mut self) {
        let m = self.mags();
        let n = m.loaded.len() + m.previous.len();
        self.slot.cached.store(n, Ordering::Relaxed);
    }

    /// Pops one object, swapping in the previous magazine if loaded is empty.
    fn pop(&mut self) -> Option<Box<T>> {
        let m = self.mags();
        if m.loaded.is_empty() {
            if m.previous.is_empty() {
                return None;
            }
            mem::swap(&mut m.loaded, &mut m.previous);
        }
        let obj = m.loaded.pop();
        self.publish();
        obj
    }

    /// Pushes one object, swapping in the previous magazine if loaded is full; hands
    /// the object back if both are full.
    fn push(&mut self, obj: Box<T>, capacity: usize) -> Result<(), Box<T>> {
        let m = self.mags();
        if m.loaded.len() >= capacity {
            if !m.previous.is_empty() {
                return Err(obj);
            }
            mem::swap(&mut m.loaded, &mut m.previous);
        }
        m.loaded.push(obj, capacity);
        self.publish();
        Ok(())
    }

    /// Counts a get served from this slot (owner-only counter: load and store).
    #[inline(always)]
    fn hit(&self) {
        let h = &self.slot.hits;
        h.store(h.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Empties both magazines into `out`.
    fn drain_into(&mut self, out: &mut Vec<Box<T>>) {
        let m = self.mags();
        m.loaded.drain_into(out);
        m.previous.drain_into(out);
        self.publish();
    }
}

impl<T> Drop for SlotGuard<'_, T> {
    #[inline(always)]
    fn drop(&mut self) {
        self.slot.locked.store(false, Ordering::Release);
    }
}

// ---------------------------------------------------------------------------------
// Depot
// ---------------------------------------------------------------------------------

/// Full and empty magazines, and the loose magazine for single objects.
struct Depot<T> {
    /// Magazines holding exactly `capacity` objects.
    full: Vec<Magazine<T>>,
    /// Magazines holding none.
    empty: Vec<Magazine<T>>,
    /// Single objects from callers that could not use their slot.
    loose: Magazine<T>,
    /// Objects in `full` and `loose`.
    cached: usize,
    /// Gets served by the depot.
    hits: u64,
    /// Whole-magazine trades with slots.
    exchanges: u64,
}

impl<T> Depot<T> {
    /// One object, from the loose magazine or else from a full one (which becomes
    /// the loose magazine).
    fn take_one(&mut self) -> Option<Box<T>> {
        if self.loose.is_empty() {
            let full = self.full.pop()?;
            let drained = mem::replace(&mut self.loose, full);
            self.empty.push(drained);
        }
        let obj = self.loose.pop()?;
        self.cached -= 1;
        self.hits += 1;
        Some(obj)
    }

    /// Caches one object in the loose magazine (filing it as full and taking an empty
    /// one if it is full); hands the object back when no magazine has room.
    fn put_one(&mut self, obj: Box<T>, capacity: usize) -> Result<(), Box<T>> {
        if self.loose.len() >= capacity {
            let Some(empty) = self.empty.pop() else {
                return Err(obj);
            };
            let full = mem::replace(&mut self.loose, empty);
            self.full.push(full);
        }
        self.loose.push(obj, capacity);
        self.cached += 1;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The shared core (everything but the constructor, so guards need not name it)
// ---------------------------------------------------------------------------------

/// A reset hook, run on every object put back.
type ResetFn<T> = Box<dyn Fn(&mut T) + Send + Sync>;

struct Core<T> {
    slots: Box<[CachePadded<Slot<T>>]>,
    depot: Mutex<Depot<T>>,
    /// Signalled (under `depot`) when an object or a unit of the limit comes free.
    wakeup: Condvar,
    /// `get` callers sleeping at the limit.
    waiters: AtomicUsize,
    /// Objects handed out or cached.
    outstanding: AtomicUsize,
    /// The most objects outstanding; `usize::MAX` for none.
    limit: usize,
    capacity: usize,
    depot_magazines: usize,
    reset: Option<ResetFn<T>>,
    constructed: AtomicU64,
    destroyed: AtomicU64,
    taken: AtomicU64,
    contended: AtomicU64,
    stolen: AtomicU64,
    waited: AtomicU64,
}

/// Gives back one unit of `outstanding` when dropped (also on unwind), counting it in
/// `counter` if given, and wakes a waiter.
struct Release<'a, T> {
    core: &'a Core<T>,
    counter: Option<&'a AtomicU64>,
}

impl<T> Drop for Release<'_, T> {
    fn drop(&mut self) {
        self.core.release(self.counter);
    }
}

/// Deregisters a sleeping `get` when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T> Core<T> {
    /// The caller's slot: `caller_index() % slots`, without a division when the index
    /// is already below the slot count (every CPU and the first threads).
    #[inline(always)]
    fn slot(&self) -> &Slot<T> {
        let n = self.slots.len();
        let i = raw_caller_index();
        let i = if i < n { i } else { Self::wrap_index(i, n) };
        &self.slots[i]
    }

    #[cold]
    fn wrap_index(i: usize, n: usize) -> usize {
        let i = if i == NO_INDEX { assign_thread_index() } else { i };
        i % n
    }

    fn lock_depot(&self) -> MutexGuard<'_, Depot<T>> {
        // Poisoning cannot leave the depot inconsistent: no user code runs under it.
        self.depot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An object from the caller's loaded magazine (the hot path), or else from
    /// [`get_cached_slow`](Self::get_cached_slow).
    #[inline(always)]
    fn get_cached(&self) -> Option<Box<T>> {
        match self.slot().try_lock() {
            Some(mut slot) => match slot.pop_loaded() {
                Some(obj) => Some(obj),
                None => self.refill(slot),
            },
            None => self.get_contended(),
        }
    }

    /// The caller's slot is in use: one object from the depot.
    #[cold]
    #[inline(never)]
    fn get_contended(&self) -> Option<Box<T>> {
        self.contended.fetch_add(1, Ordering::Relaxed);
        self.lock_depot().take_one()
    }

    /// The loaded magazine is empty: swap in the previous one, or else trade it for a
    /// full one from the depot, or else take one object from the depot.
    #[cold]
    #[inline(never)]
    fn refill(&self, mut slot: SlotGuard<'_, T>) -> Option<Box<T>> {
        if let Some(obj) = slot.pop() {
            slot.hit();
            return Some(obj);
        }
        // Both magazines empty: trade the loaded one for a full one.
        let mut depot = self.lock_depot();
        if let Some(full) = depot.full.pop() {
            let empty = mem::replace(&mut slot.mags().loaded, full);
            depot.empty.push(empty);
            depot.cached -= self.capacity;
            depot.exchanges += 1;
            depot.hits += 1;
            return slot.pop();
        }
        depot.take_one()
    }

    /// Caches `obj` (or drops it if every magazine is full).
    #[inline(always)]
    fn put(&self, mut obj: Box<T>) {
        if let Some(reset) = &self.reset {
            self.run_reset(reset, &mut obj);
        }
        if self.waiters.load(Ordering::SeqCst) > 0 {
            return self.put_for_waiter(obj);
        }
        match self.slot().try_lock() {
            Some(mut slot) => {
                if let Err(obj) = slot.push_loaded(obj) {
                    self.put_slow(slot, obj);
                }
            }
            None => self.put_contended(obj),
        }
    }

    /// Runs the reset hook on an object being put back.
    #[inline]
    fn run_reset(&self, reset: &ResetFn<T>, obj: &mut T) {
        // A panicking hook drops the object; this gives its unit back.
        let release = Release { core: self, counter: Some(&self.destroyed) };
        reset(obj);
        mem::forget(release);
    }

    /// A `get` is waiting: the object goes to the depot, and the waiter is woken.
    #[cold]
    #[inline(never)]
    fn put_for_waiter(&self, obj: Box<T>) {
        let rejected = {
            let mut depot = self.lock_depot();
            let r = depot.put_one(obj, self.capacity);
            self.wakeup.notify_one();
            r
        };
        if let Err(obj) = rejected {
            self.destroy(obj);
        }
    }

    /// The caller's slot is in use: the object goes to the depot.
    #[cold]
    #[inline(never)]
    fn put_contended(&self, obj: Box<T>) {
        self.contended.fetch_add(1, Ordering::Relaxed);
        let rejected = self.lock_depot().put_one(obj, self.capacity);
        if let Err(obj) = rejected {
            self.destroy(obj);
        }
    }

    /// The loaded magazine is full (or was never used): allocate it, or swap in the
    /// previous one, or else trade it for an empty one from the depot, or else give
    /// the object to the depot.
    #[cold]
    #[inline(never)]
    fn put_slow(&self, mut slot: SlotGuard<'_, T>, obj: Box<T>) {
        let rejected = match slot.push(obj, self.capacity) {
            Ok(()) => return,
            Err(obj) => {
                // Both magazines full: trade the loaded one for an empty one.
                let mut depot = self.lock_depot();
                match depot.empty.pop() {
                    Some(empty) => {
                        let full = mem::replace(&mut slot.mags().loaded, empty);
                        depot.full.push(full);
                        depot.cached += self.capacity;
                        depot.exchanges += 1;
                        slot.push(obj, self.capacity)
                    }
                    None => depot.put_one(obj, self.capacity),
                }
            }
        };
        drop(slot);
        if let Err(obj) = rejected {
            self.destroy(obj);
        }
    }

    /// Reserves one unit below the limit for a fresh object.
    #[inline]
    fn reserve(&self) -> bool {
        if self.limit == usize::MAX {
            self.outstanding.fetch_add(1, Ordering::SeqCst);
            return true;
        }
        self.outstanding
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.limit).then_some(n + 1))
            .is_ok()
    }

    /// Runs the constructor for a reserved unit.
    fn construct(&self, ctor: &impl Fn() -> T) -> Box<T> {
        let unreserve = Release { core: self, counter: None };
        let obj = Box::new(ctor());
        mem::forget(unreserve);
        self.constructed.fetch_add(1, Ordering::Relaxed);
        obj
    }

    /// Drops an object the cache has no room for.
    fn destroy(&self, obj: Box<T>) {
        let _release = Release { core: self, counter: Some(&self.destroyed) };
        drop(obj);
    }

    /// Gives back one unit of `outstanding`.
    fn release(&self, counter: Option<&AtomicU64>) {
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _depot = self.lock_depot();
            self.wakeup.notify_one();
        }
    }

    /// An object from any other slot not in use right now.
    fn steal(&self) -> Option<Box<T>> {
        let n = self.slots.len();
        let start = caller_index();
        (1..n).find_map(|i| {
            let mut slot = self.slots[(start + i) % n].try_lock()?;
            let obj = slot.pop()?;
            self.stolen.fetch_add(1, Ordering::Relaxed);
            Some(obj)
        })
    }

    fn stats(&self) -> CacheStats {
        let (depot_cached, depot_hits, depot_exchanges) = {
            let d = self.lock_depot();
            (d.cached, d.hits, d.exchanges)
        };
        let slot_cached: usize = self.slots.iter().map(|s| s.cached.load(Ordering::Relaxed)).sum();
        CacheStats {
            constructed: self.constructed.load(Ordering::Relaxed),
            destroyed: self.destroyed.load(Ordering::Relaxed),
            taken: self.taken.load(Ordering::Relaxed),
            outstanding: self.outstanding.load(Ordering::SeqCst),
            cached: slot_cached + depot_cached,
            magazine_hits: self.slots.iter().map(|s| s.hits.load(Ordering::Relaxed)).sum(),
            depot_hits,
            depot_exchanges,
            stolen: self.stolen.load(Ordering::Relaxed),
            contended: self.contended.load(Ordering::Relaxed),
            waited: self.waited.load(Ordering::Relaxed),
        }
    }
}

// ---------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------

/// A cache of constructed objects of type `T`, made by the constructor `F`.
///
/// `ObjCache<T>` (with the default `F = fn() -> T`) is the nameable form, e.g. for a
/// struct field: `ObjCache::<Vec<u8>>::new(Vec::new)`. The cache is `Sync` when `T` is
/// `Send` and `F` is `Sync`; guards are `Send` when `T` is, so an object may be put
/// back on another thread (into that thread's magazine).
///
/// See the [module documentation](self) for the magazine layers and the protocol.
pub struct ObjCache<T, F = fn() -> T> {
    core: Core<T>,
    ctor: F,
}

/// Settings for an [`ObjCache`]; from [`ObjCache::builder`].
pub struct Builder<T, F> {
    ctor: F,
    capacity: Option<usize>,
    limit: Option<usize>,
    depot_objects: Option<usize>,
    cpus: Option<usize>,
    reset: Option<ResetFn<T>>,
}

/// Why [`ObjCache::try_get`] returned no object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TryGetError {
    /// `limit` objects exist (handed out or cached) and none was found cached: all are
    /// handed out, or the cached ones were in slots busy at that instant.
    LimitReached {
        /// The cache's limit.
        limit: usize,
    },
}

impl fmt::Display for TryGetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryGetError::LimitReached { limit } => {
                write!(f, "object cache limit of {limit} objects reached and none is cached")
            }
        }
    }
}

impl std::error::Error for TryGetError {}

/// A snapshot of an [`ObjCache`]'s counters. Exact once no other thread uses the
/// cache; meanwhile each field is some value it held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Fresh objects made by the constructor.
    pub constructed: u64,
    /// Objects dropped because every magazine was full (or by [`ObjCache::trim`]).
    pub destroyed: u64,
    /// Objects taken out of the cache with [`Obj::into_inner`] / [`Obj::into_box`].
    pub taken: u64,
    /// Objects in existence that belong to the cache: handed out or cached
    /// (`constructed - destroyed - taken`). This is what the limit bounds.
    pub outstanding: usize,
    /// Objects sitting in magazines (per-CPU and depot).
    pub cached: usize,
    /// Gets served from the caller's own magazines, without the depot.
    pub magazine_hits: u64,
    /// Gets served through the depot.
    pub depot_hits: u64,
    /// Whole-magazine trades between a CPU and the depot (full for empty on get,
    /// empty for full on put).
    pub depot_exchanges: u64,
    /// Gets served from another CPU's magazines, at the limit.
    pub stolen: u64,
    /// Gets and puts that found their CPU's magazines in use by another thread and
    /// went to the depot.
    pub contended: u64,
    /// Calls to [`ObjCache::get`] that slept at the limit.
    pub waited: u64,
}

impl CacheStats {
    /// Objects handed out now (`outstanding - cached`).
    pub fn live(&self) -> usize {
        self.outstanding.saturating_sub(self.cached)
    }
}

/// An object borrowed from an [`ObjCache`]; it goes back to the cache, still
/// constructed, when the guard drops.
///
/// Dereferences to `T`. [`Obj::into_inner`] keeps the object instead.
pub struct Obj<'a, T> {
    obj: ManuallyDrop<Box<T>>,
    core: &'a Core<T>,
}

impl<T, F: Fn() -> T> ObjCache<T, F> {
    /// A cache with default settings: no limit, one slot per available core, DragonFly's
    /// default sizes (128 objects in the depot, magazines sized from that).
    ///
    /// `ctor` runs only when no cached object is available.
    pub fn new(ctor: F) -> Self {
        Self::builder(ctor).build()
    }

    /// Settings for a cache whose fresh objects come from `ctor`.
    pub fn builder(ctor: F) -> Builder<T, F> {
        Builder { ctor, capacity: None, limit: None, depot_objects: None, cpus: None, reset: None }
    }

    /// An object: a cached one if the caller's CPU, the depot or (at the limit) another
    /// CPU has one, otherwise a fresh one from the constructor. At the limit, waits
    /// until an object is put back, taken or dropped.
    #[inline]
    pub fn get(&self) -> Obj<'_, T> {
        let obj = match self.core.get_cached() {
            Some(obj) => obj,
            None => self.get_fresh(),
        };
        Obj { obj: ManuallyDrop::new(obj), core: &self.core }
    }

    /// As [`get`](Self::get), but fails instead of waiting at the limit.
    #[inline]
    pub fn try_get(&self) -> Result<Obj<'_, T>, TryGetError> {
        let obj = match self.core.get_cached() {
            Some(obj) => obj,
            None => self.acquire_fresh()?,
        };
        Ok(Obj { obj: ManuallyDrop::new(obj), core: &self.core })
    }

    /// Nothing cached for `get`: a fresh object, a stolen one, or a wait.
    #[cold]
    #[inline(never)]
    fn get_fresh(&self) -> Box<T> {
        match self.acquire_fresh() {
            Ok(obj) => obj,
            Err(_) => self.wait_for_object(),
        }
    }

    /// Nothing cached in the caller's slot or the depot: a fresh object if the limit
    /// allows, else one from another slot.
    #[cold]
    #[inline(never)]
    fn acquire_fresh(&self) -> Result<Box<T>, TryGetError> {
        let core = &self.core;
        if core.reserve() {
            return Ok(core.construct(&self.ctor));
        }
        core.steal().ok_or(TryGetError::LimitReached { limit: core.limit })
    }

    #[cold]
    fn wait_for_object(&self) -> Box<T> {
        let core = &self.core;
        let mut depot = core.lock_depot();
        core.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&core.waiters);
        core.waited.fetch_add(1, Ordering::Relaxed);
        loop {
            if let Some(obj) = depot.take_one() {
                return obj;
            }
            if core.reserve() {
                drop(depot);
                return core.construct(&self.ctor);
            }
            if let Some(obj) = core.steal() {
                return obj;
            }
            depot = core
                .wakeup
                .wait_timeout(depot, WAIT_RESCAN)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl<T, F> ObjCache<T, F> {
    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        self.core.stats()
    }

    /// Drops the cached objects in the depot and in every CPU's magazines not in use
    /// at this instant (DragonFly's `objcache_reclaimlist`); returns how many. They
    /// count as [`CacheStats::destroyed`]; the magazines stay for reuse.
    pub fn trim(&self) -> usize {
        let core = &self.core;
        let mut drained = Vec::new();
        for slot in core.slots.iter() {
            if let Some(mut slot) = slot.try_lock() {
                slot.drain_into(&mut drained);
            }
        }
        {
            let mut depot = core.lock_depot();
            let Depot { full, empty, loose, cached, .. } = &mut *depot;
            for mut mag in full.drain(..) {
                mag.drain_into(&mut drained);
                empty.push(mag);
            }
            loose.drain_into(&mut drained);
            *cached = 0;
        }
        let n = drained.len();
        for obj in drained {
            core.destroy(obj);
        }
        n
    }

    /// Objects per magazine.
    pub fn magazine_capacity(&self) -> usize {
        self.core.capacity
    }

    /// The limit on objects outstanding (handed out or cached), if any.
    pub fn limit(&self) -> Option<usize> {
        (self.core.limit != usize::MAX).then_some(self.core.limit)
    }

    /// The number of per-CPU slots.
    pub fn cpus(&self) -> usize {
        self.core.slots.len()
    }

    /// The most objects the cache ever holds at once:
    /// `(2 × cpus + depot magazines + 1) × capacity`. A caller that uses a single slot
    /// reaches exactly this with `cpus() == 1`; objects returned beyond it are dropped.
    pub fn max_cached(&self) -> usize {
        (2 * self.core.slots.len() + self.core.depot_magazines + 1) * self.core.capacity
    }
}

impl<T: Default> Default for ObjCache<T> {
    /// A cache of `T::default()` objects with default settings.
    fn default() -> Self {
        Self::new(T::default)
    }
}

impl<T, F> fmt::Debug for ObjCache<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjCache")
            .field("cpus", &self.cpus())
            .field("magazine_capacity", &self.magazine_capacity())
            .field("limit", &self.limit())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<T, F: Fn() -> T> Builder<T, F> {
    /// Objects per magazine, clamped to `1..=`[`MAX_MAGAZINE_CAPACITY`]. Default:
    /// DragonFly's rule, `depot_objects / (cpus + 1) / 2 + 1` clamped to `4..=4096`.
    pub fn magazine_capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity.clamp(1, MAX_MAGAZINE_CAPACITY));
        self
    }

    /// The most objects that may exist at once, handed out or cached (taken ones no
    /// longer count). Default: no limit. With a limit of 0, `try_get` always fails and
    /// `get` never returns.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// About how many objects the depot keeps beyond the per-CPU magazines (it gets
    /// `depot_objects / capacity + 1` magazines, at least 2, plus the loose one).
    /// Default: half the limit, or 128 with no limit (DragonFly's `nom_cache`).
    pub fn depot_objects(mut self, objects: usize) -> Self {
        self.depot_objects = Some(objects);
        self
    }

    /// The number of per-CPU slots, clamped to `1..=`[`MAX_CPUS`]. Callers map to
    /// `cpu % cpus`. Default: the number of cores available to the process.
    pub fn cpus(mut self, cpus: usize) -> Self {
        self.cpus = Some(cpus.clamp(1, MAX_CPUS));
        self
    }

    /// A hook run on every object put back, before it is cached (e.g. `Vec::clear`).
    /// It runs with no lock held; if it panics, the object is dropped.
    pub fn reset(mut self, reset: impl Fn(&mut T) + Send + Sync + 'static) -> Self {
        self.reset = Some(Box::new(reset));
        self
    }

    /// The cache.
    pub fn build(self) -> ObjCache<T, F> {
        let cpus = self.cpus.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_CPUS)
        });
        let depot_objects = self.depot_objects.unwrap_or(match self.limit {
            Some(limit) => limit / 2,
            None => DEFAULT_DEPOT_OBJECTS,
        });
        let capacity = self.capacity.unwrap_or_else(|| {
            (depot_objects / (cpus + 1) / 2 + 1).clamp(4, MAX_MAGAZINE_CAPACITY)
        });
        let depot_magazines = (depot_objects / capacity + 1).max(2);
        let depot = Depot {
            full: Vec::with_capacity(depot_magazines + 1),
            empty: (0..depot_magazines).map(|_| Magazine::new()).collect(),
            loose: Magazine::new(),
            cached: 0,
            hits: 0,
            exchanges: 0,
        };
        ObjCache {
            core: Core {
                slots: (0..cpus).map(|_| CachePadded::new(Slot::new())).collect(),
                depot: Mutex::new(depot),
                wakeup: Condvar::new(),
                waiters: AtomicUsize::new(0),
                outstanding: AtomicUsize::new(0),
                limit: self.limit.unwrap_or(usize::MAX),
                capacity,
                depot_magazines,
                reset: self.reset,
                constructed: AtomicU64::new(0),
                destroyed: AtomicU64::new(0),
                taken: AtomicU64::new(0),
                contended: AtomicU64::new(0),
                stolen: AtomicU64::new(0),
                waited: AtomicU64::new(0),
            },
            ctor: self.ctor,
        }
    }
}

impl<T, F> fmt::Debug for Builder<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("magazine_capacity", &self.capacity)
            .field("limit", &self.limit)
            .field("depot_objects", &self.depot_objects)
            .field("cpus", &self.cpus)
            .field("reset", &self.reset.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Obj<'_, T> {
    /// Takes the object out of the cache for good, boxed as it was cached. It no longer
    /// counts against the limit.
    pub fn into_box(this: Self) -> Box<T> {
        let mut this = ManuallyDrop::new(this);
        // SAFETY: `this` is in a `ManuallyDrop` and never dropped, so `Obj::drop` will
        // not take `obj` again: it is taken exactly once, here.
        let obj = unsafe { ManuallyDrop::take(&mut this.obj) };
        this.core.release(Some(&this.core.taken));
        obj
    }

    /// Takes the object out of the cache for good (see [`Obj::into_box`]).
    pub fn into_inner(this: Self) -> T {
        *Self::into_box(this)
    }
}

impl<T> Deref for Obj<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.obj
    }
}

impl<T> DerefMut for Obj<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.obj
    }
}

impl<T> Drop for Obj<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `obj` is taken only here and in `into_box`, which never lets the
        // guard drop; after this the guard is gone, so `obj` is not used again.
        let obj = unsafe { ManuallyDrop::take(&mut self.obj) };
        self.core.put(obj);
    }
}

impl<T: fmt::Debug> fmt::Debug for Obj<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfly_core::sync::atomic::AtomicUsize;
    use dfly_core::sync::Arc;
    use dfly_core::{set_current_cpu, CpuId};
    use proptest::prelude::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// Constructions and drops of [`Tracked`] objects.
    #[derive(Debug, Default)]
    struct Counts {
        made: AtomicUsize,
        dropped: AtomicUsize,
        /// Objects in existence (made and not dropped), and the peak of that.
        alive: AtomicUsize,
        peak: AtomicUsize,
    }

    impl Counts {
        fn made(&self) -> usize {
            self.made.load(Ordering::SeqCst)
        }
        fn dropped(&self) -> usize {
            self.dropped.load(Ordering::SeqCst)
        }
    }

    #[derive(Debug)]
    struct Tracked {
        id: usize,
        uses: u64,
        busy: bool,
        counts: Arc<Counts>,
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.counts.alive.fetch_sub(1, Ordering::SeqCst);
            self.counts.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A constructor that counts.
    fn tracked(counts: &Arc<Counts>) -> impl Fn() -> Tracked + Send + Sync + 'static {
        let counts = counts.clone();
        move || {
            let id = counts.made.fetch_add(1, Ordering::SeqCst);
            let alive = counts.alive.fetch_add(1, Ordering::SeqCst) + 1;
            counts.peak.fetch_max(alive, Ordering::SeqCst);
            Tracked { id, uses: 0, busy: false, counts: counts.clone() }
        }
    }

    /// Marks a got object busy, checking no one else has it.
    fn claim(mut o: Obj<'_, Tracked>) -> Obj<'_, Tracked> {
        assert!(!o.busy, "object {} handed out twice", o.id);
        o.busy = true;
        o
    }

    /// The reset hook for [`claim`]ed objects.
    fn unclaim(t: &mut Tracked) {
        assert!(t.busy, "object {} put back without being handed out", t.id);
        t.busy = false;
        t.uses += 1;
    }

    #[test]
    fn objcache_is_send_and_sync_for_send_objects() {
        fn send_sync<X: Send + Sync>() {}
        send_sync::<ObjCache<Vec<u8>>>();
        send_sync::<ObjCache<std::cell::Cell<u8>>>(); // `T: Send` is enough
        send_sync::<Obj<'static, Vec<u8>>>();
        send_sync::<Builder<Vec<u8>, fn() -> Vec<u8>>>();
    }

    #[test]
    fn objcache_constructor_runs_only_on_fresh_objects() {
        let counts = Arc::new(Counts::default());
        let cache = ObjCache::builder(tracked(&counts)).cpus(1).build();
        let mut a = cache.get();
        a.uses = 7;
        let addr: *const Tracked = &*a;
        drop(a);
        for i in 0..100 {
            let mut b = cache.get();
            assert_eq!(&*b as *const Tracked, addr, "the cached object is reused");
            assert_eq!(b.uses, 7 + i, "state survives a put (no constructor, no reset)");
            b.uses += 1;
        }
        assert_eq!(counts.made(), 1);
        let (b, c) = (cache.get(), cache.get());
        assert_ne!(b.id, c.id);
        assert_eq!(counts.made(), 2, "a second object at once is fresh");
        drop((b, c));
        let s = cache.stats();
        assert_eq!(s.constructed, 2);
        assert_eq!(s.magazine_hits, 101);
        assert_eq!((s.outstanding, s.cached, s.live()), (2, 2, 0));
        drop(cache);
        assert_eq!(counts.dropped(), 2);
    }

    #[test]
    fn objcache_reset_hook_runs_on_every_put() {
        let counts = Arc::new(Counts::default());
        let cache = ObjCache::builder(tracked(&counts)).reset(unclaim).build();
        for _ in 0..10 {
            let o = claim(cache.get());
            drop(o);
        }
        let o = claim(cache.get());
        assert_eq!(o.uses, 10);
        assert_eq!(counts.made(), 1);
    }

    #[test]
    fn objcache_default_and_debug() {
        let cache: ObjCache<Vec<u8>> = ObjCache::default();
        let mut v = cache.get();
        v.push(1);
        assert_eq!(format!("{v:?}"), "[1]");
        drop(v);
        assert_eq!(*cache.get(), [1], "no reset hook: state kept");
        let text = format!("{cache:?}");
        assert!(text.contains("ObjCache") && text.contains("constructed: 1"), "{text}");
        assert!(cache.magazine_capacity() >= 4 && cache.limit().is_none());
    }

    #[test]
    fn objcache_limit_is_enforced() {
        let counts = Arc::new(Counts::default());
        let cache = ObjCache::builder(tracked(&counts)).cpus(1).limit(2).build();
        assert_eq!(cache.limit(), Some(2));
        let a = cache.try_get().unwrap();
        let b = cache.try_get().unwrap();
        let err = cache.try_get().unwrap_err();
        assert_eq!(err, TryGetError::LimitReached { limit: 2 });
        assert!(err.to_string().contains("limit of 2"));
        drop(a);
        let a = cache.try_get().expect("a put-back object is reusable at the limit");
        assert_eq!(counts.made(), 2);
        let owned: Tracked = Obj::into_inner(a);
        let s = cache.stats();
        assert_eq!((s.taken, s.outstanding), (1, 1));
        let c = cache.try_get().expect("a taken object frees a unit of the limit");
        assert_eq!(counts.made(), 3);
        assert!(cache.try_get().is_err());
        drop(owned);
        assert!(cache.try_get().is_err(), "a taken object is not the cache's");
        drop((b, c));
        drop(cache);
        assert_eq!(counts.dropped(), 3);
    }

    #[test]
    fn objcache_at_the_limit_objects_are_found_on_other_cpus() {
        let counts = Arc::new(Counts::default());
        let cache = ObjCache::builder(tracked(&counts)).cpus(4).limit(1).build();
        let _me = set_current_cpu(CpuId::new(0).unwrap()).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _cpu = set_current_cpu(CpuId::new(2).unwrap()).unwrap();
                drop(cache.get()); // cached in cpu 2's magazine
            });
        });
        let o = cache.try_get().expect("stolen from cpu 2");
        assert_eq!(o.id, 0);
        let s = cache.stats();
        assert_eq!((s.stolen, s.constructed), (1, 1));
    }

    #[test]
    fn objcache_get_waits_at_the_limit() {
        let counts = Arc::new(Counts::default());
        let cache = Arc::new(ObjCache::builder(tracked(&counts)).cpus(2).limit(1).build());
        // A waiter gets the object another thread puts back, then one made after a take.
        for (phase, expect_id) in [(0, 0), (1, 1)] {
            let held = cache.get();
            assert_eq!(held.id, 0);
            let (tx, rx) = mpsc::channel();
            let waiter = {
                let cache = cache.clone();
                dfly_core::sync::thread::spawn(move || {
                    let o = cache.get();
                    tx.send(o.id).unwrap();
                })
            };
            assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "nothing free yet");
            if phase == 0 {
                drop(held);
            } else {
                drop(Obj::into_inner(held));
            }
            let got = rx.recv_timeout(Duration::from_secs(10)).expect("the waiter is woken");
            assert_eq!(got, expect_id);
            waiter.join().unwrap();
            if phase == 1 {
                // Object 0 left the cache; object 1 is the cache's only one now.
                assert_eq!(cache.get().id, 1);
            }
        }
        let s = cache.stats();
        assert_eq!((s.constructed, s.taken, s.outstanding, s.cached), (2, 1, 1, 1));
    }

    #[test]
    fn objcache_busy_slot_falls_back_to_the_depot() {
        let counts = Arc::new(Counts::default());
        let cache = ObjCache::builder(tracked(&counts)).cpus(1).build();
        drop(cache.get()); // object 0, cached in the only slot
        {
            // Another thread "holds" the slot (as when two threads map to one cpu).
            let _busy = cache.core.slots[0].try_lock().unwrap();
            let o = cache.get();
            assert_eq!(o.id, 1, "the slot's object is out of reach: a fresh one");
            drop(o); // into the depot's loose magazine
            assert_eq!(cache.get().id, 1, "and back from the depot");
            let s = cache.stats();
            assert_eq!((s.contended, s.depot_hits, s.cached), (4, 1, 2));
        }
        assert_eq!(cache.get().id, 0, "the slot is usable again");
        // At a limit, a busy slot's objects may be unreachable: `try_get` says so.
        let limited = ObjCache::builder(tracked(&counts)).cpus(1).limit(1).build();
        drop(limited.get());
        let _busy = limited.core.slots[0].try_lock().unwrap();
        assert_eq!(limited.try_get().unwrap_err(), TryGetError::LimitReached { limit: 1 });
    }

    #[test]
    fn objcache_drop_drops_every_object_once() {
        let counts = Arc::new(Counts::default());
        let cache = ObjCache::builder(tracked(&counts))
            .cpus(4)
            .magazine_capacity(3)
            .depot_objects(6)
            .build();
        // Objects end up in every CPU's magazines, the depot, and beyond (dropped).
        std::thread::scope(|s| {
            for cpu in 0..4 {
                let cache = &cache;
                s.spawn(move || {
                    let _cpu = set_current_cpu(CpuId::new(cpu).unwrap()).unwrap();
                    for round in 0..3 {
                        let objs: Vec<_> = (0..5 + 4 * round).map(|_| cache.get()).collect();
                        drop(objs);
                    }
                });
            }
        });
        let taken = Obj::into_inner(cache.get());
        drop(taken);
        let s = cache.stats();
        assert_eq!(s.constructed as usize, counts.made());
        assert_eq!(s.destroyed + s.taken, counts.dropped() as u64, "only these were dropped");
        assert_eq!(s.outstanding, s.cached);
        assert!(s.cached > 0 && s.cached <= cache.max_cached());
        drop(cache);
        assert_eq!(counts.dropped(), counts.made(), "every object dropped once, none leaked");
        assert_eq!(counts.alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn objcache_trim_drops_cached_objects() {
        let counts = Arc::new(Counts::default());
        let cache = ObjCache::builder(tracked(&counts)).cpus(2).magazine_capacity(2).build();
        let objs: Vec<_> = (0..9).map(|_| cache.get()).collect();
        let kept = cache.get();
        drop(objs);
        assert_eq!(cache.stats().cached, 9);
        assert_eq!(cache.trim(), 9);
        assert_eq!(counts.dropped(), 9);
        let s = cache.stats();
        assert_eq!((s.cached, s.outstanding, s.destroyed, s.live()), (0, 1, 9, 1));
        drop(kept);
        assert_eq!(cache.get().id, 9, "the cache still works after a trim");
    }

    /// `THREADS` threads get objects, pass some to the next thread through a channel,
    /// put back or take others, for a bounded number of rounds (and at most a few
    /// seconds); then the counts must balance exactly.
    fn stress(limit: Option<usize>) {
        const THREADS: usize = 4;
        const ROUNDS: usize = 40_000;
        const HOLD: usize = 6;
        let deadline = Instant::now() + Duration::from_secs(15);
        let counts = Arc::new(Counts::default());
        let mut builder = ObjCache::builder(tracked(&counts))
            .cpus(2) // two threads per slot: contended slots take the depot path
            .magazine_capacity(4)
            .depot_objects(8)
            .reset(unclaim);
        if let Some(limit) = limit {
            builder = builder.limit(limit);
        }
        let cache = builder.build();
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::sync_channel(8)).unzip();
        let mut left: Vec<Obj<'_, Tracked>> = Vec::new();
        let start = std::sync::Barrier::new(THREADS);
        std::thread::scope(|s| {
            let handles: Vec<_> = rxs
                .into_iter()
                .enumerate()
                .map(|(i, rx)| {
                    let tx = txs[(i + 1) % THREADS].clone();
                    let (cache, start) = (&cache, &start);
                    s.spawn(move || {
                        start.wait();
                        let mut rng = 0x9e37_79b9_u64 ^ (i as u64) << 32 | 1;
                        let mut held: Vec<Obj<'_, Tracked>> = Vec::new();
                        let mut refused = 0u64;
                        for round in 0..ROUNDS {
                            if round % 64 == 0 && Instant::now() > deadline {
                                break;
                            }
                            held.extend(rx.try_iter().take(64));
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            match rng % 10 {
                                0..=3 => match cache.try_get() {
                                    Ok(o) => held.push(claim(o)),
                                    Err(TryGetError::LimitReached { .. }) => refused += 1,
                                },
                                4..=5 if !held.is_empty() => {
                                    // A full channel: put it back instead.
                                    if let Err(e) = tx.try_send(held.swap_remove(0)) {
                                        drop(e);
                                    }
                                }
                                6 if !held.is_empty() => {
                                    let o = Obj::into_inner(held.pop().unwrap());
                                    assert!(o.busy);
                                }
                                // A burst beyond the two magazines of a slot.
                                7 => {
                                    let burst: Vec<_> = (0..12)
                                        .filter_map(|_| cache.try_get().ok().map(claim))
                                        .collect();
                                    drop(burst);
                                }
                                _ => drop(held.pop()),
                            }
                            held.truncate(HOLD);
                            if let Some(limit) = limit {
                                if round % 32 == 0 {
                                    assert!(cache.stats().outstanding <= limit);
                                }
                            }
                        }
                        (held, rx, refused)
                    })
                })
                .collect();
            drop(txs);
            let mut refused = 0;
            let done: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            // Every sender is gone now: what is left in the channels is live.
            for (held, rx, r) in done {
                left.extend(held);
                left.extend(rx.try_iter());
                refused += r;
            }
            if limit.is_none() {
                assert_eq!(refused, 0);
            }
        });
        let s = cache.stats();
        assert_eq!(s.constructed as usize, counts.made());
        assert_eq!(s.outstanding as u64, s.constructed - s.destroyed - s.taken);
        assert_eq!(s.outstanding, left.len() + s.cached, "{s:?}");
        assert_eq!(counts.dropped() as u64, s.destroyed + s.taken);
        assert!(s.magazine_hits > 0 && s.depot_exchanges > 0, "{s:?}");
        if let Some(limit) = limit {
            assert!(s.outstanding <= limit);
            // Taken objects still alive in a thread's hands are outside the limit.
            assert!(counts.peak.load(Ordering::SeqCst) <= limit + THREADS);
        }
        drop(left);
        let s = cache.stats();
        assert_eq!((s.live(), s.outstanding), (0, s.cached));
        drop(cache);
        assert_eq!(counts.dropped(), counts.made());
    }

    #[test]
    fn objcache_stress_threads_exact_accounting() {
        stress(None);
    }

    #[test]
    fn objcache_stress_threads_with_limit() {
        stress(Some(64));
    }

    #[test]
    fn objcache_stress_blocking_get_at_the_limit() {
        const THREADS: usize = 4;
        const ROUNDS: usize = 300;
        let counts = Arc::new(Counts::default());
        let cache = ObjCache::builder(tracked(&counts)).cpus(2).limit(2).reset(unclaim).build();
        let deadline = Instant::now() + Duration::from_secs(15);
        let start = std::sync::Barrier::new(THREADS);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    start.wait();
                    for _ in 0..ROUNDS {
                        if Instant::now() > deadline {
                            break;
                        }
                        let o = claim(cache.get());
                        // Hold it a little, so that more than two threads want one.
                        std::thread::sleep(Duration::from_micros(20));
                        drop(o);
                    }
                });
            }
        });
        assert!(counts.made() <= 2);
        let s = cache.stats();
        assert_eq!((s.outstanding, s.cached), (counts.made(), counts.made()));
        assert!(s.waited > 0, "four threads, two objects, and no get waited? {s:?}");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Get,
        TryGet,
        Put(usize),
        Take(usize),
        Trim,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Get),
            2 => Just(Op::TryGet),
            4 => any::<usize>().prop_map(Op::Put),
            1 => any::<usize>().prop_map(Op::Take),
            1 => Just(Op::Trim),
        ]
    }

    /// The counts a single-slot cache must show: objects are reused while any is
    /// cached, constructed while below the limit, and dropped only when every
    /// magazine is full.
    #[derive(Debug, Default)]
    struct Model {
        cached: usize,
        outstanding: usize,
        constructed: u64,
        destroyed: u64,
        taken: u64,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn objcache_matches_model(
            capacity in 1usize..6,
            depot in 0usize..12,
            limit in proptest::option::of(0usize..16),
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let counts = Arc::new(Counts::default());
            let mut builder = ObjCache::builder(tracked(&counts))
                .cpus(1)
                .magazine_capacity(capacity)
                .depot_objects(depot);
            if let Some(limit) = limit {
                builder = builder.limit(limit);
            }
            let cache = builder.build();
            let max = cache.max_cached();
            let limit = limit.unwrap_or(usize::MAX);
            let mut m = Model::default();
            let mut held = Vec::new();
            for op in ops {
                match op {
                    Op::Get | Op::TryGet => {
                        let can = m.cached > 0 || m.outstanding < limit;
                        let got = match op {
                            Op::Get if can => Some(cache.get()),
                            Op::Get => continue, // it would wait for ever
                            _ => cache.try_get().ok(),
                        };
                        prop_assert_eq!(got.is_some(), can);
                        if let Some(o) = got {
                            if m.cached > 0 {
                                m.cached -= 1;
                            } else {
                                m.constructed += 1;
                                m.outstanding += 1;
                            }
                            held.push(o);
                        }
                    }
                    Op::Put(i) if !held.is_empty() => {
                        drop(held.swap_remove(i % held.len()));
                        if m.cached < max {
                            m.cached += 1;
                        } else {
                            m.destroyed += 1;
                            m.outstanding -= 1;
                        }
                    }
                    Op::Take(i) if !held.is_empty() => {
                        drop(Obj::into_inner(held.swap_remove(i % held.len())));
                        m.taken += 1;
                        m.outstanding -= 1;
                    }
                    Op::Trim => {
                        prop_assert_eq!(cache.trim(), m.cached);
                        m.destroyed += m.cached as u64;
                        m.outstanding -= m.cached;
                        m.cached = 0;
                    }
                    Op::Put(_) | Op::Take(_) => {}
                }
                let s = cache.stats();
                prop_assert_eq!(s.cached, m.cached);
                prop_assert_eq!(s.outstanding, m.outstanding);
                prop_assert_eq!(s.live(), held.len());
                prop_assert_eq!((s.constructed, s.destroyed, s.taken), (m.constructed, m.destroyed, m.taken));
                prop_assert_eq!(counts.made() as u64, m.constructed);
                prop_assert_eq!(counts.dropped() as u64, m.destroyed + m.taken);
            }
            drop(held);
            drop(cache);
            prop_assert_eq!(counts.dropped(), counts.made());
        }
    }
}
