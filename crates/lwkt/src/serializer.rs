//! The LWKT serializer: a non-recursive exclusive lock that may be held across
//! blocking, with an adaptive spin before sleeping.
//!
//! Unlike tokens it is *not* deadlock-free: two threads taking two serializers in
//! opposite orders can deadlock, exactly as with mutexes. Use it where a holder must
//! sleep (a driver waiting for hardware, say) while others wait.
//!
//! # State
//! `state` bit 31 = held; bits 0..31 = threads registered as waiting. `enter`: try to
//! set bit 31; spin a bounded while; then count itself a waiter, interlock on the
//! serializer's address, re-try, sleep. `exit`: clear bit 31 and, if the old state
//! had waiters, wake them. A waiter that registers after an exit's clear finds the
//! bit clear on its re-try after the interlock, so no wakeup is lost.

use core::fmt;
use core::marker::PhantomData;

use dfly_core::sync::atomic::{AtomicU32, Ordering};

use crate::sched::current_core;
use crate::{ident_of, Ctx};

const HELD: u32 = 1 << 31;
/// Spin iterations before sleeping (DragonFly's `SLZ_ADAPTIVE_SPINMAX`).
const SPIN_MAX: u32 = 4096;

/// A lock that may be held across blocking calls. See the module docs.
///
/// ```
/// use dfly_lwkt::{Machine, Serializer, Spawn};
/// use std::sync::Arc;
/// let mut m = Machine::builder().cpus(2).build().unwrap();
/// let s = Arc::new(Serializer::new());
/// let s2 = s.clone();
/// let h = m.spawn(Spawn::on_cpu(0), move |cx| {
///     let g = s2.enter(cx);
///     cx.sleep(std::time::Duration::from_millis(1)); // still held while asleep
///     drop(g);
/// }).unwrap();
/// h.join_blocking().unwrap();
/// assert!(!s.is_held());
/// m.stop().unwrap();
/// ```
#[derive(Default)]
pub struct Serializer {
    state: AtomicU32,
}

impl fmt::Debug for Serializer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.load(Ordering::Relaxed);
        f.debug_struct("Serializer")
            .field("held", &(s & HELD != 0))
            .field("waiters", &(s & !HELD))
            .finish()
    }
}

impl Serializer {
    /// A free serializer.
    pub const fn new() -> Serializer {
        Serializer { state: AtomicU32::new(0) }
    }

    /// True if some thread holds it (a racy snapshot).
    pub fn is_held(&self) -> bool {
        self.state.load(Ordering::Relaxed) & HELD != 0
    }

    fn try_lock(&self) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & HELD != 0 {
                return false;
            }
            match self.state.compare_exchange_weak(s, s | HELD, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(v) => s = v,
            }
        }
    }

    /// Takes it if free.
    pub fn try_enter(&self, cx: &Ctx<'_>) -> Option<SerializerGuard<'_>> {
        let _ = cx;
        self.try_lock().then_some(SerializerGuard { s: self, _not_send: PhantomData })
    }

    /// Takes it, spinning a while and then sleeping until it is free.
    pub fn enter(&self, cx: &mut Ctx<'_>) -> SerializerGuard<'_> {
        if self.try_lock() {
            return SerializerGuard { s: self, _not_send: PhantomData };
        }
        if !cx.is_simulated() {
            for _ in 0..SPIN_MAX {
                core::hint::spin_loop();
                if self.state.load(Ordering::Relaxed) & HELD == 0 && self.try_lock() {
                    return SerializerGuard { s: self, _not_send: PhantomData };
                }
            }
        }
        self.state.fetch_add(1, Ordering::SeqCst);
        let _ = cx.tsleep_until(ident_of(self), None, || self.try_lock());
        self.state.fetch_sub(1, Ordering::SeqCst);
        SerializerGuard { s: self, _not_send: PhantomData }
    }

    fn exit(&self) {
        let old = self.state.fetch_and(!HELD, Ordering::SeqCst);
        if old & !HELD != 0 {
            // Guards exist only on CPU threads (both ways in take a Ctx, and a guard
            // is not Send), so there is a current CPU to route the wakeup through.
            if let Some(core) = current_core() {
                core.shared.route_wakeup(Some(&core), ident_of(self), false);
            }
        }
    }
}

/// Holding a [`Serializer`]; dropping it releases (and wakes waiters). Drop it on a
/// thread of the same machine (the wakeup is routed through the current CPU); the
/// guard is not `Send`.
pub struct SerializerGuard<'a> {
    s: &'a Serializer,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for SerializerGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerializerGuard").finish()
    }
}

impl Drop for SerializerGuard<'_> {
    fn drop(&mut self) {
        self.s.exit();
    }
}
