//! Parking: a [`Futex`] word (Linux `futex(2)`, or a mutex and condition variable
//! elsewhere and under loom) and a [`Parker`] with a no-lost-wakeup token protocol
//! built on it.
//!
//! # Parker protocol
//! The state word is `EMPTY` (0), `PARKED` (1) or `NOTIFIED` (2).
//! - `unpark` swaps in `NOTIFIED`; only if the previous state was `PARKED` does it
//!   issue a wake syscall. An unpark before the park leaves the token, so the next
//!   park returns at once: no wakeup is lost.
//! - `park` consumes a token if present; otherwise it moves `EMPTY -> PARKED` and
//!   sleeps while the word still reads `PARKED`, then consumes the token.
//!
//! Every wait and wake syscall is counted ([`syscall_counts`]) so benchmarks can
//! report syscalls per message for dfly without tracing.

use core::fmt;
use core::time::Duration;
use std::sync::atomic::AtomicU64 as StdAtomicU64;

use crate::sync::atomic::{AtomicU32, Ordering};

static WAIT_CALLS: StdAtomicU64 = StdAtomicU64::new(0);
static WAKE_CALLS: StdAtomicU64 = StdAtomicU64::new(0);

/// Process-wide counts of park syscalls issued through this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyscallCounts {
    /// `futex(FUTEX_WAIT)` calls (or condition-variable waits).
    pub waits: u64,
    /// `futex(FUTEX_WAKE)` calls (or condition-variable notifies).
    pub wakes: u64,
}

/// The counts so far.
pub fn syscall_counts() -> SyscallCounts {
    SyscallCounts {
        waits: WAIT_CALLS.load(std::sync::atomic::Ordering::Relaxed),
        wakes: WAKE_CALLS.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// A 32-bit word threads can sleep on until it changes.
///
/// `wait(expected)` sleeps only while the word equals `expected`; `wake_one` /
/// `wake_all` wake sleepers. Spurious returns are allowed: callers re-check their
/// condition in a loop.
pub struct Futex {
    word: AtomicU32,
    #[cfg(any(loom, not(target_os = "linux")))]
    lock: crate::sync::Mutex<()>,
    #[cfg(any(loom, not(target_os = "linux")))]
    cv: crate::sync::Condvar,
}

impl fmt::Debug for Futex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Futex").field("word", &self.word.load(Ordering::Relaxed)).finish()
    }
}

impl Futex {
    /// A futex word holding `value`.
    pub fn new(value: u32) -> Self {
        Self {
            word: AtomicU32::new(value),
            #[cfg(any(loom, not(target_os = "linux")))]
            lock: crate::sync::Mutex::new(()),
            #[cfg(any(loom, not(target_os = "linux")))]
            cv: crate::sync::Condvar::new(),
        }
    }

    /// The word.
    #[inline(always)]
    pub fn word(&self) -> &AtomicU32 {
        &self.word
    }

    /// Sleeps while the word equals `expected`, at most `timeout` if given. Returns
    /// false if the timeout passed; true otherwise (woken, changed, or spurious).
    pub fn wait(&self, expected: u32, timeout: Option<Duration>) -> bool {
        WAIT_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.wait_impl(expected, timeout)
    }

    /// Wakes one sleeper.
    pub fn wake_one(&self) {
        WAKE_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.wake_impl(1);
    }

    /// Wakes every sleeper.
    pub fn wake_all(&self) {
        WAKE_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.wake_impl(i32::MAX);
    }

    #[cfg(all(target_os = "linux", not(loom)))]
    fn wait_impl(&self, expected: u32, timeout: Option<Duration>) -> bool {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let tsp = ts.as_ref().map_or(core::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: the word is a live, aligned u32 for the duration of the call (it is
        // borrowed from `self`); `tsp` is null or points to `ts` on this stack frame.
        // FUTEX_WAIT only reads the word and sleeps; it never writes user memory.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                tsp,
            )
        };
        !(r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT))
    }

    #[cfg(all(target_os = "linux", not(loom)))]
    fn wake_impl(&self, n: i32) {
        // SAFETY: the word is a live, aligned u32 borrowed from `self`; FUTEX_WAKE
        // does not access user memory beyond using the address as a key.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                n,
            );
        }
    }

    #[cfg(any(loom, not(target_os = "linux")))]
    fn wait_impl(&self, expected: u32, timeout: Option<Duration>) -> bool {
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.word.load(Ordering::SeqCst) != expected {
            return true;
        }
        #[cfg(loom)]
        {
            let _ = timeout;
            drop(self.cv.wait(guard));
            true
        }
        #[cfg(not(loom))]
        match timeout {
            None => {
                drop(self.cv.wait(guard));
                true
            }
            Some(d) => {
                let (_g, r) = self.cv.wait_timeout(guard, d).unwrap_or_else(|e| e.into_inner());
                !r.timed_out()
            }
        }
    }

    #[cfg(any(loom, not(target_os = "linux")))]
    fn wake_impl(&self, n: i32) {
        // Taking the lock orders this wake after a waiter's check-then-sleep.
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()));
        if n == 1 {
            self.cv.notify_one();
        } else {
            self.cv.notify_all();
        }
    }
}

const EMPTY: u32 = 0;
const PARKED: u32 = 1;
const NOTIFIED: u32 = 2;

/// A one-token parker for one waiting thread; any thread may unpark it.
///
/// ```
/// use dfly_core::park::Parker;
/// use std::sync::Arc;
/// let p = Arc::new(Parker::new());
/// let q = p.clone();
/// let t = std::thread::spawn(move || q.unpark());
/// p.park(); // returns once unparked, whether unpark ran before or after
/// t.join().unwrap();
/// ```
#[derive(Debug)]
pub struct Parker {
    futex: Futex,
}

impl Default for Parker {
    fn default() -> Self {
        Self::new()
    }
}

impl Parker {
    /// A parker with no token.
    pub fn new() -> Self {
        Self { futex: Futex::new(EMPTY) }
    }

    /// Blocks until a token is available, then consumes it.
    pub fn park(&self) {
        self.park_inner(None);
    }

    /// Like [`park`](Self::park) but gives up after `timeout`; returns true if a
    /// token was consumed.
    pub fn park_timeout(&self, timeout: Duration) -> bool {
        self.park_inner(Some(timeout))
    }

    fn park_inner(&self, timeout: Option<Duration>) -> bool {
        let w = self.futex.word();
        if w.compare_exchange(NOTIFIED, EMPTY, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return true;
        }
        if let Err(s) = w.compare_exchange(EMPTY, PARKED, Ordering::Acquire, Ordering::Acquire) {
            // Only the owner parks, so the state can only be NOTIFIED here.
            debug_assert_eq!(s, NOTIFIED);
            w.store(EMPTY, Ordering::Release);
            return true;
        }
        loop {
            let not_timed_out = self.futex.wait(PARKED, timeout);
            if w.compare_exchange(NOTIFIED, EMPTY, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return true;
            }
            if timeout.is_some() && !not_timed_out {
                // Withdraw; an unpark may race in and leave NOTIFIED, which we take.
                return w.swap(EMPTY, Ordering::Acquire) == NOTIFIED;
            }
        }
    }

    /// Makes a token available and wakes the parked thread if there is one. At most
    /// one wake syscall per park.
    pub fn unpark(&self) {
        if self.futex.word().swap(NOTIFIED, Ordering::Release) == PARKED {
            self.futex.wake_one();
        }
    }
}
