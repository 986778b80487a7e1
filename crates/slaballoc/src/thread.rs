//! Which slot a thread uses: CPU slots, leased thread slots, the shared slot, and what
//! happens when a thread exits.
//!
//! # Protocol
//!
//! - Each [`Slab`] instance gets a small index on first use; a thread-local array
//!   (`SLOTS`, const-initialised, no destructor, so readable even during thread-local
//!   teardown) holds, per instance, the thread's slot: null (none yet), `DEAD` (the
//!   thread's exit hook has run), or the slot it holds.
//! - A thread that runs as an LWKT/ipi CPU (`dfly_core::current_cpu()` is `Some`)
//!   leases slot `cpu` of the table; any other thread leases a free thread slot
//!   (reusing a released one before making a new one). Leasing is a CAS of the slot's
//!   `holder` word from 0 (acquire); giving it back is a release store of 0 after the
//!   holder drained it. If the CPU slot is held by another thread (two machines in one
//!   process) or the table is full, the thread uses a thread slot or the shared slot.
//!   The slow path re-checks `current_cpu()`, so a thread that becomes a CPU after its
//!   first allocation moves to its CPU's slot.
//! - On a thread's first lease, a pthread key with a destructor is set for it. glibc
//!   runs pthread-key destructors after the C++/Rust thread-local destructors, so code
//!   in those still allocates from the thread's slot. The destructor drains the slot
//!   (sends batches, takes notifications and inbound chunks, absorbs remote lists,
//!   trims the free-zone cache to the threshold), gives it back for the next thread to
//!   adopt, and marks the entry `DEAD`.
//! - A `DEAD` entry (allocation from a later destructor), an instance beyond
//!   [`MAX_INSTANCES`], or a full table routes the thread to the shared slot, held
//!   under a mutex for one operation at a time. Nothing on these paths allocates.
//!
//! What must never happen: two threads holding one slot; a slot given back with
//! chunks in its outgoing batches; a thread's exit leaving a chunk where the next
//! holder (or `cleanup`) would not look.

use core::cell::Cell;
use core::ptr;
use std::sync::Once;

use dfly_core::sync::atomic::{AtomicUsize, Ordering};
use dfly_core::MAX_CPUS;

use crate::heap::{Slab, MAX_SLOTS};
use crate::slot::Slot;

/// Instances of [`Slab`] that get per-thread slots; later ones use only the shared slot.
pub const MAX_INSTANCES: usize = 32;
/// The thread-local entry of a thread whose exit hook has run.
pub(crate) const DEAD: *mut Slot = 1 as *mut Slot;

std::thread_local! {
    static SLOTS: [Cell<*mut Slot>; MAX_INSTANCES] =
        const { [const { Cell::new(ptr::null_mut()) }; MAX_INSTANCES] };
    static HOOKED: Cell<bool> = const { Cell::new(false) };
}

/// Instance numbers handed out so far; number 0 belongs to [`crate::global::DEFAULT`].
static NEXT_INSTANCE: AtomicUsize = AtomicUsize::new(1);
static KEY_ONCE: Once = Once::new();
static KEY: AtomicUsize = AtomicUsize::new(usize::MAX);

/// A value unique to the calling thread while it lives: its `SLOTS` array's address.
fn token() -> usize {
    SLOTS.with(|s| s.as_ptr() as usize)
}

/// Arranges for [`on_thread_exit`] to run when this thread exits.
fn hook_thread_exit() {
    if HOOKED.with(|h| h.replace(true)) {
        return;
    }
    KEY_ONCE.call_once(|| {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out-pointer; the destructor is an `extern "C" fn`
        // that stays valid for the program's life.
        if unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } == 0 {
            KEY.store(key as usize, Ordering::Release);
        }
    });
    let key = KEY.load(Ordering::Acquire);
    if key != usize::MAX {
        // SAFETY: `key` was created above; a non-null value makes the destructor run.
        unsafe { libc::pthread_setspecific(key as libc::pthread_key_t, 1 as *const libc::c_void) };
    }
}

/// The pthread-key destructor: gives back every slot this thread holds.
extern "C" fn on_thread_exit(_: *mut libc::c_void) {
    SLOTS.with(|slots| {
        for entry in slots {
            let s = entry.get();
            if !s.is_null() && s != DEAD {
                // SAFETY: the entry holds a slot this thread leased; its heap is a
                // `'static` instance (methods that lease take `&'static self`).
                let heap = unsafe { &*(*s).heap };
                heap.give_back(s);
            }
            entry.set(DEAD);
        }
    });
}

impl Slab {
    /// This instance's index in the thread-local array, assigning one on first use;
    /// `None` if there are more than [`MAX_INSTANCES`].
    #[inline(always)]
    pub(crate) fn instance(&self) -> Option<usize> {
        // The global allocator's instance has number 0 from the start; when inlined
        // through `SlabAlloc` this test is decided at compile time.
        if core::ptr::eq(self, &crate::global::DEFAULT) {
            return Some(0);
        }
        match self.id.load(Ordering::Relaxed) {
            0 => self.assign_instance(),
            usize::MAX => None,
            i => Some(i - 1),
        }
    }

    #[cold]
    fn assign_instance(&self) -> Option<usize> {
        let n = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        let v = if n < MAX_INSTANCES { n + 1 } else { usize::MAX };
        match self.id.compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => (v != usize::MAX).then_some(n),
            Err(cur) => (cur != usize::MAX).then(|| cur - 1),
        }
    }

    /// The calling thread's slot of this instance: null (none yet), [`DEAD`], or a slot.
    #[inline(always)]
    pub(crate) fn tls_slot(&self) -> *mut Slot {
        match self.instance() {
            Some(i) => SLOTS.with(|s| s[i].get()),
            None => DEAD,
        }
    }

    /// Gets the calling thread a slot if it has none (null entry); re-homes it to its
    /// CPU's slot if it became an LWKT CPU. Returns the slot, or [`DEAD`] when the
    /// thread must use the shared slot.
    pub(crate) fn own_slot(&'static self) -> *mut Slot {
        let Some(i) = self.instance() else { return DEAD };
        let cur = SLOTS.with(|s| s[i].get());
        if cur == DEAD {
            return DEAD;
        }
        let want = dfly_core::current_cpu().map(|c| c.index());
        if !cur.is_null() {
            // SAFETY: a slot we hold.
            let idx = unsafe { (*cur).index };
            let on_cpu_slot = idx < MAX_CPUS;
            match want {
                Some(cpu) if idx != cpu => {
                    if let Some(s) = self.lease_at(cpu) {
                        self.give_back(cur);
                        SLOTS.with(|a| a[i].set(s));
                        return s;
                    }
                }
                None if on_cpu_slot => {
                    if let Some(s) = self.lease_thread_slot() {
                        self.give_back(cur);
                        SLOTS.with(|a| a[i].set(s));
                        return s;
                    }
                }
                _ => {}
            }
            return cur;
        }
        let s = want.and_then(|cpu| self.lease_at(cpu)).or_else(|| self.lease_thread_slot());
        match s {
            Some(s) => {
                crate::debug::init_free_key();
                hook_thread_exit();
                crate::fork::register(i, self);
                SLOTS.with(|a| a[i].set(s));
                s
            }
            None => DEAD,
        }
    }

    /// Leases table slot `index`, creating it if needed.
    fn lease_at(&'static self, index: usize) -> Option<*mut Slot> {
        let s = self.slot_at(index, true)?;
        // SAFETY: slots live as long as the heap.
        let slot = unsafe { &*s };
        slot.holder
            .compare_exchange(0, token(), Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| s)
    }

    /// Leases a released thread slot, or makes a new one.
    fn lease_thread_slot(&'static self) -> Option<*mut Slot> {
        for i in MAX_CPUS..MAX_SLOTS {
            let s = self.table[i].load(Ordering::Acquire);
            if s.is_null() {
                break;
            }
            // SAFETY: slots live as long as the heap.
            let slot = unsafe { &*s };
            if slot.holder.load(Ordering::Relaxed) == 0
                && slot
                    .holder
                    .compare_exchange(0, token(), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(s);
            }
        }
        for i in MAX_CPUS..MAX_SLOTS {
            if self.table[i].load(Ordering::Acquire).is_null() {
                if let Some(s) = self.lease_at(i) {
                    return Some(s);
                }
            }
        }
        None
    }

    /// Leases any existing slot that nobody holds (for cleanup).
    pub(crate) fn try_lease_existing(&self, index: usize) -> Option<*mut Slot> {
        let s = self.table[index].load(Ordering::Acquire);
        if s.is_null() {
            return None;
        }
        // SAFETY: slots live as long as the heap.
        let slot = unsafe { &*s };
        slot.holder
            .compare_exchange(0, token(), Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| s)
    }

    /// Drains a slot this thread holds and releases the lease, for the next thread (or
    /// cleanup) to adopt.
    pub(crate) fn give_back(&self, s: *mut Slot) {
        // SAFETY: we hold the slot; slots live as long as the heap.
        let slot = unsafe { &*s };
        slot.drain(self, self.config().zone_rels_thresh, false);
        slot.holder.store(0, Ordering::Release);
    }
}
