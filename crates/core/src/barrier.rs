//! Asymmetric memory barriers.
//!
//! Cross-CPU protocols here have Dekker-style handshakes (for example an IPI sender
//! that stores an index then loads a flag, against a CPU going idle that stores a
//! flag then loads the index). One side of
//! each runs per message and must be cheap; the other runs only when a CPU goes idle
//! or waits. [`light`] is the per-message side and [`heavy`] the rare side.
//!
//! - On Linux with `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` available, `light`
//!   is a compiler fence (no instruction) and `heavy` is the membarrier syscall, which
//!   makes every running thread of the process execute a full barrier. Either the
//!   light side's earlier store is visible to the heavy side's later load, or the
//!   heavy side's earlier store is visible to the light side's later load.
//! - Otherwise (other OSes, old kernels, and under loom) both are a `SeqCst` fence,
//!   which gives the same guarantee symmetrically.
//!
//! The mode is chosen once per process by [`init`] and never changes. Call [`init`]
//! before any thread uses [`light`] (structures that use these barriers call it in
//! their constructors).
//!
//! Setting the environment variable `DFLY_SYMMETRIC_BARRIERS` forces the symmetric
//! form (for measuring the difference).

use std::sync::atomic::{AtomicU8, Ordering as StdOrdering};

use crate::sync::atomic::{fence, Ordering};

const UNKNOWN: u8 = 0;
const ASYMMETRIC: u8 = 1;
const SYMMETRIC: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Chooses the barrier mode (idempotent). Returns true if the cheap asymmetric form
/// is in use.
pub fn init() -> bool {
    match MODE.load(StdOrdering::Acquire) {
        ASYMMETRIC => return true,
        SYMMETRIC => return false,
        _ => {}
    }
    let asym = register_membarrier();
    // Every thread that may run `light` calls `init` first (crossbar creation), and
    // the mode never changes once set, so racing initialisers agree.
    let _ = MODE.compare_exchange(
        UNKNOWN,
        if asym { ASYMMETRIC } else { SYMMETRIC },
        StdOrdering::AcqRel,
        StdOrdering::Acquire,
    );
    MODE.load(StdOrdering::Acquire) == ASYMMETRIC
}

#[cfg(all(target_os = "linux", not(loom)))]
fn register_membarrier() -> bool {
    const CMD_QUERY: libc::c_long = 0;
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;
    if std::env::var_os("DFLY_SYMMETRIC_BARRIERS").is_some() {
        return false;
    }
    // SAFETY: membarrier with QUERY/REGISTER commands takes no pointers; it only
    // returns a bitmask or a status.
    let q = unsafe { libc::syscall(libc::SYS_membarrier, CMD_QUERY, 0, 0) };
    if q < 0 || q & CMD_PRIVATE_EXPEDITED == 0 {
        return false;
    }
    // SAFETY: as above.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) };
    r == 0
}

#[cfg(any(not(target_os = "linux"), loom))]
fn register_membarrier() -> bool {
    false
}

/// The per-message side of a handshake.
#[inline(always)]
pub fn light() {
    #[cfg(not(loom))]
    if MODE.load(StdOrdering::Relaxed) == ASYMMETRIC {
        std::sync::atomic::compiler_fence(StdOrdering::SeqCst);
        return;
    }
    fence(Ordering::SeqCst);
}

/// The rare side of a handshake (idle, park, wait).
#[inline]
pub fn heavy() {
    #[cfg(all(target_os = "linux", not(loom)))]
    if MODE.load(StdOrdering::Relaxed) == ASYMMETRIC {
        const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
        // SAFETY: membarrier takes no pointers; the process registered for this
        // command in `init` (mode ASYMMETRIC is only set after that succeeded).
        let r = unsafe { libc::syscall(libc::SYS_membarrier, CMD_PRIVATE_EXPEDITED, 0, 0) };
        if r == 0 {
            return;
        }
    }
    fence(Ordering::SeqCst);
}

/// True if the asymmetric mode is in use.
pub fn is_asymmetric() -> bool {
    MODE.load(StdOrdering::Relaxed) == ASYMMETRIC
}
