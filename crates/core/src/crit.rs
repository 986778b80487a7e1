//! Critical sections with request flags and deferred work (DragonFly's
//! `crit_enter`/`crit_exit`, `gd_reqflags` and `splz`).
//!
//! # The protocol
//! - Each OS thread has a critical-section count and a word of request flags, both
//!   thread-local: only the thread itself reads or writes them.
//! - [`crit_enter`] increments the count and returns a [`CritSection`] guard; dropping
//!   it decrements the count.
//! - Work that would interrupt the thread (processing incoming IPIs, a timer tick)
//!   is registered once as a [`ReqFlag`] with a handler. Code that wants the work done
//!   calls [`ReqFlag::raise`]: outside a critical section the handler runs at once;
//!   inside one, only the flag bit is set.
//! - When the outermost section ends (the count returns to 0) the pending bits are
//!   taken and each handler runs once, outside any critical section. While handlers
//!   run, raises only set bits (no handler re-enters itself); those run in a further
//!   round, at most [`MAX_ROUNDS`] rounds
//!   per exit, after which the rest stays pending for the next exit or
//!   [`run_pending`] (so a handler that always re-raises cannot livelock the thread).
//! - Never: a handler running while the count is non-zero; a set bit being run twice
//!   for one raise.
//!
//! The handler table is process-wide (up to 32 flags), filled at start-up by the
//! crates that own each kind of deferred work.

use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Rounds of handler execution per outermost `crit_exit`.
pub const MAX_ROUNDS: u32 = 8;
const NFLAGS: usize = 32;

struct Registered {
    name: &'static str,
    handler: fn(),
}

static TABLE: [OnceLock<Registered>; NFLAGS] = [const { OnceLock::new() }; NFLAGS];
static NEXT: AtomicU32 = AtomicU32::new(0);

struct State {
    count: Cell<u32>,
    flags: Cell<u32>,
    /// True while [`run_pending`] runs handlers: raises then only set bits, so a
    /// handler never re-enters itself.
    running: Cell<bool>,
}

#[cfg(not(loom))]
std::thread_local! {
    static STATE: State = const { State { count: Cell::new(0), flags: Cell::new(0), running: Cell::new(false) } };
}
#[cfg(loom)]
loom::thread_local! {
    static STATE: State = State { count: Cell::new(0), flags: Cell::new(0), running: Cell::new(false) };
}

/// A kind of deferred work: a bit in the request-flag word plus its handler.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReqFlag(u8);

/// The error when all 32 request flags are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyFlags;

impl fmt::Display for TooManyFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {NFLAGS} request flags are registered")
    }
}

impl std::error::Error for TooManyFlags {}

impl ReqFlag {
    /// Registers a new kind of deferred work. Call once per kind (keep the flag in a
    /// `static OnceLock`); each call takes a new bit.
    pub fn register(name: &'static str, handler: fn()) -> Result<ReqFlag, TooManyFlags> {
        let bit = NEXT.fetch_add(1, Ordering::Relaxed);
        if bit as usize >= NFLAGS {
            NEXT.store(NFLAGS as u32, Ordering::Relaxed);
            return Err(TooManyFlags);
        }
        // A fresh bit: nobody else can have set this slot.
        let _ = TABLE[bit as usize].set(Registered { name, handler });
        Ok(ReqFlag(bit as u8))
    }

    /// The name given at registration.
    pub fn name(self) -> &'static str {
        TABLE[self.0 as usize].get().map_or("?", |r| r.name)
    }

    /// The would-be interrupt: run the handler now if this thread is outside a
    /// critical section, otherwise set the bit so the outermost `crit_exit` runs it.
    #[inline]
    pub fn raise(self) {
        let defer = STATE.with(|s| {
            if s.count.get() > 0 || s.running.get() {
                s.flags.set(s.flags.get() | (1 << self.0));
                true
            } else {
                false
            }
        });
        if !defer {
            if let Some(r) = TABLE[self.0 as usize].get() {
                (r.handler)();
            }
        }
    }

    /// Sets the bit without running anything, even outside a critical section; the
    /// work runs at the next outermost `crit_exit` or [`run_pending`].
    #[inline]
    pub fn request(self) {
        STATE.with(|s| s.flags.set(s.flags.get() | (1 << self.0)));
    }

    /// True if the bit is set on this thread.
    pub fn is_pending(self) -> bool {
        STATE.with(|s| s.flags.get() & (1 << self.0) != 0)
    }
}

impl fmt::Debug for ReqFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReqFlag({}: {})", self.0, self.name())
    }
}

/// Enters a critical section on this thread. Deferred work raised inside runs when
/// the outermost guard drops.
///
/// ```
/// use dfly_core::crit::{crit_enter, ReqFlag, in_critical};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// static RUNS: AtomicU32 = AtomicU32::new(0);
/// let flag = ReqFlag::register("doc-example", || { RUNS.fetch_add(1, Ordering::Relaxed); }).unwrap();
/// {
///     let _outer = crit_enter();
///     let _inner = crit_enter();
///     flag.raise();
///     flag.raise(); // still one pending run
///     assert!(in_critical());
/// }
/// assert_eq!(RUNS.load(Ordering::Relaxed), 1);
/// ```
#[inline]
pub fn crit_enter() -> CritSection {
    STATE.with(|s| s.count.set(s.count.get() + 1));
    CritSection { _not_send: PhantomData }
}

/// The guard of a critical section; not `Send`.
#[derive(Debug)]
#[must_use = "the critical section ends when the guard drops"]
pub struct CritSection {
    _not_send: PhantomData<*const ()>,
}

impl Drop for CritSection {
    #[inline]
    fn drop(&mut self) {
        let run = STATE.with(|s| {
            let n = s.count.get() - 1;
            s.count.set(n);
            n == 0 && s.flags.get() != 0
        });
        if run {
            run_pending();
        }
    }
}

/// The nesting depth of critical sections on this thread.
#[inline]
pub fn crit_count() -> u32 {
    STATE.with(|s| s.count.get())
}

/// True inside a critical section.
#[inline]
pub fn in_critical() -> bool {
    crit_count() > 0
}

/// The pending request bits on this thread.
#[inline]
pub fn pending_requests() -> u32 {
    STATE.with(|s| s.flags.get())
}

/// Runs the handlers of pending flags if this thread is outside a critical section
/// (at most [`MAX_ROUNDS`] rounds); returns how many handlers ran.
pub fn run_pending() -> u32 {
    if STATE.with(|s| s.running.replace(true)) {
        return 0;
    }
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            STATE.with(|s| s.running.set(false));
        }
    }
    let _reset = Reset;
    let mut ran = 0;
    for _ in 0..MAX_ROUNDS {
        let bits = STATE.with(|s| if s.count.get() > 0 { 0 } else { s.flags.replace(0) });
        if bits == 0 {
            break;
        }
        let mut b = bits;
        while b != 0 {
            let i = b.trailing_zeros() as usize;
            b &= b - 1;
            if let Some(r) = TABLE[i].get() {
                (r.handler)();
                ran += 1;
            }
        }
    }
    ran
}
