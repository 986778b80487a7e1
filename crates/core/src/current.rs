//! The current CPU: which CPU the calling OS thread is running as, if any.
//!
//! Whoever runs a CPU (the lwkt scheduler, an IPI crossbar attachment, a test harness)
//! sets it with [`set_current_cpu`] and holds the returned guard for as long as the
//! thread acts as that CPU. Threads that never set it are *foreign*:
//! [`current_cpu`] returns `None` for them. Reading it is one thread-local load.

use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;

use crate::cpu::CpuId;
#[cfg(not(loom))]
std::thread_local! {
    static CURRENT: Cell<Option<CpuId>> = const { Cell::new(None) };
}
#[cfg(loom)]
loom::thread_local! {
    static CURRENT: Cell<Option<CpuId>> = Cell::new(None);
}

/// The CPU this thread runs as, or `None` for a foreign thread.
///
/// ```
/// use dfly_core::{current_cpu, set_current_cpu, CpuId};
/// assert_eq!(current_cpu(), None);
/// let guard = set_current_cpu(CpuId::new(1).unwrap()).unwrap();
/// assert_eq!(current_cpu(), Some(CpuId::new(1).unwrap()));
/// drop(guard);
/// assert_eq!(current_cpu(), None);
/// ```
#[inline]
pub fn current_cpu() -> Option<CpuId> {
    CURRENT.with(|c| c.get())
}

/// The error when a thread that already runs as a CPU is asked to become another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyACpu {
    /// The CPU this thread already runs as.
    pub current: CpuId,
}

impl fmt::Display for AlreadyACpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "this thread already runs as {}; one thread is at most one cpu", self.current)
    }
}

impl std::error::Error for AlreadyACpu {}

/// Marks this thread as running as `cpu` until the guard drops.
pub fn set_current_cpu(cpu: CpuId) -> Result<CurrentCpuGuard, AlreadyACpu> {
    CURRENT.with(|c| match c.get() {
        Some(current) => Err(AlreadyACpu { current }),
        None => {
            c.set(Some(cpu));
            Ok(CurrentCpuGuard { _not_send: PhantomData })
        }
    })
}

/// Resets the current CPU to `None` when dropped. Not `Send`: it belongs to the
/// thread that set it.
#[derive(Debug)]
#[must_use = "the thread stops being the cpu as soon as the guard drops"]
pub struct CurrentCpuGuard {
    _not_send: PhantomData<*const ()>,
}

impl Drop for CurrentCpuGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(None));
    }
}
