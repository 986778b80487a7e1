//! Pinning the calling OS thread to a core, and how many cores there are.
//!
//! A dfly CPU is usually an OS thread pinned to one core; `ncpus` may exceed the core
//! count (oversubscription), in which case several CPUs share a core.

use std::io;

/// The number of cores this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread to `core` (a kernel CPU number).
#[cfg(target_os = "linux")]
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("core {core} is out of range"),
        ));
    }
    // SAFETY: cpu_set_t is a plain bitmask; all-zero is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core` is below CPU_SETSIZE (checked above), so CPU_SET stays in bounds.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: pid 0 names the calling thread; `set` is a valid, initialised set of
    // the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins the calling thread to `core` (not supported on this OS: always an error).
#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    let _ = core;
    Err(io::Error::new(io::ErrorKind::Unsupported, "thread pinning is implemented on Linux only"))
}

/// The core the calling thread is running on right now (it may move at any time
/// unless pinned), or `None` where the OS cannot say. A vDSO call on Linux: tens of
/// nanoseconds, for slow paths.
#[cfg(all(target_os = "linux", not(loom)))]
pub fn current_core() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and only reads the calling thread's
    // state.
    let c = unsafe { libc::sched_getcpu() };
    usize::try_from(c).ok()
}

/// The core the calling thread is running on (unknown on this OS or under loom).
#[cfg(not(all(target_os = "linux", not(loom))))]
pub fn current_core() -> Option<usize> {
    None
}
