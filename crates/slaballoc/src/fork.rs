//! Fork safety: `pthread_atfork` handlers for every instance that has handed out a
//! slot.
//!
//! - *prepare* (in the forking thread, before `fork`): take each instance's reap,
//!   shared-slot, slot-creation, release-list and large-cache locks, in that order (the order every other path
//!   takes them in), so the child never inherits one held by a thread it does not
//!   have.
//! - *parent*: release them.
//! - *child*: mark them free and mark the reaper not started (the child has no reaper
//!   thread; the next malloc slow path that finds the instance big enough starts one).
//!
//! Slots that other threads held at the moment of the fork stay held in the child:
//! their holders do not exist there, and a slot may have been mid-operation, so it is
//! never reused. Their memory stays mapped in the child (a bounded leak of at most
//! what those threads held); blocks of theirs freed in the child are remote frees,
//! which only push onto lock-free lists. The forking thread keeps its own slot.

use dfly_core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::heap::Slab;
use crate::thread::MAX_INSTANCES;

static INSTANCES: [AtomicPtr<Slab>; MAX_INSTANCES] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_INSTANCES];
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Records instance number `index` for the fork handlers, registering them on first
/// use. Allocates nothing.
pub(crate) fn register(index: usize, heap: &'static Slab) {
    let Some(cell) = INSTANCES.get(index) else { return };
    if cell.load(Ordering::Relaxed).is_null() {
        cell.store(heap as *const Slab as *mut Slab, Ordering::Release);
    }
    if !REGISTERED.load(Ordering::Relaxed) && !REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: the three handlers are `extern "C" fn()`s valid for the program's
        // life. A failure (ENOMEM) leaves fork unprotected, as without this module.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    }
}

fn each(f: impl Fn(&Slab)) {
    for cell in &INSTANCES {
        let p = cell.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: only `'static` instances are registered.
            f(unsafe { &*p });
        }
    }
}

extern "C" fn prepare() {
    each(|h| {
        h.reap_lock.lock();
        h.shared_lock.lock();
        h.create_lock.lock();
        h.release_lock.lock();
        h.large_cache.lock.lock();
    });
}

extern "C" fn parent() {
    each(|h| {
        h.large_cache.lock.unlock();
        h.release_lock.unlock();
        h.create_lock.unlock();
        h.shared_lock.unlock();
        h.reap_lock.unlock();
    });
}

extern "C" fn child() {
    each(|h| {
        h.large_cache.lock.reset_in_child();
        h.release_lock.reset_in_child();
        h.create_lock.reset_in_child();
        h.shared_lock.reset_in_child();
        h.reap_lock.reset_in_child();
        h.reaper.store(0, Ordering::Relaxed);
    });
}
