//! Thread priorities: 0 (the idle level) to 31, higher runs first.
//!
//! The named levels follow DragonFly's `TDPRI_*` ladder so code ported from it keeps
//! its meaning. Priorities are strict: a thread is picked to run only when no
//! higher-priority thread of its CPU is runnable, and one made runnable while a
//! lower one runs gets the CPU at the next scheduling point (a block, a
//! [`crate::Ctx::yield_now`], or a [`crate::Ctx::maybe_yield`]; there is no
//! preemption in between). Threads of equal priority take turns, FIFO: `yield_now`
//! moves its caller behind its equals, and so does a scheduler tick
//! ([`crate::Builder::tick`]) if the caller heads its level, noticed at its next
//! `maybe_yield`.

use core::fmt;

/// A thread priority in `0..=31`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

/// The error for a priority above [`Priority::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityOutOfRange(pub u32);

impl fmt::Display for PriorityOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "priority {} is out of range (0..=31)", self.0)
    }
}

impl std::error::Error for PriorityOutOfRange {}

impl Priority {
    /// The idle level (0): runs only when nothing else is runnable.
    pub const IDLE: Priority = Priority(0);
    /// Background work that should only soak up idle time (1).
    pub const IDLE_WORK: Priority = Priority(1);
    /// User-level normal threads (6): the default for [`crate::MachineHandle::spawn`].
    pub const USER: Priority = Priority(6);
    /// User real-time threads (8).
    pub const USER_REALTIME: Priority = Priority(8);
    /// Kernel-level work done on behalf of a user request (10).
    pub const KERNEL: Priority = Priority(10);
    /// Long-running service threads (12).
    pub const DAEMON: Priority = Priority(12);
    /// Software-interrupt level: protocol threads and the like (14).
    pub const SOFT: Priority = Priority(14);
    /// Timer processing (16).
    pub const SOFT_TIMER: Priority = Priority(16);
    /// Interrupt support threads (20).
    pub const INTR_SUPPORT: Priority = Priority(20);
    /// Interrupt threads, low (27).
    pub const INTR_LOW: Priority = Priority(27);
    /// Interrupt threads, medium (28).
    pub const INTR_MED: Priority = Priority(28);
    /// Interrupt threads, high (29).
    pub const INTR_HIGH: Priority = Priority(29);
    /// The highest priority (31).
    pub const MAX: Priority = Priority(31);

    /// The priority `p`, if `p <= 31`.
    pub const fn new(p: u32) -> Result<Priority, PriorityOutOfRange> {
        if p <= 31 {
            Ok(Priority(p as u8))
        } else {
            Err(PriorityOutOfRange(p))
        }
    }

    /// The numeric level.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::USER
    }
}
