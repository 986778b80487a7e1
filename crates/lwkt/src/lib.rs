//! `dfly-lwkt`: DragonFly's light-weight kernel threads in userspace.
//!
//! A [`Machine`] is `ncpus` OS threads (optionally pinned), each a CPU running its
//! own scheduler: strict fixed priorities (0..=31, see [`Priority`]), FIFO and round
//! robin among equals, stackful threads on pooled guard-paged stacks
//! (`corosensei`), `tsleep`/`wakeup` with an interlock, timers, serializing
//! [`Token`]s, [`Serializer`]s, and continuation blocking
//! ([`Ctx::block_with_continuation`]) that gives the stack back while waiting.
//! A thread belongs to one CPU; other CPUs and foreign OS threads ask it to do
//! things by message (a request queue plus an IPI from `dfly-ipi` to wake it).
//! Idle CPUs poll briefly and then park: an idle machine burns no CPU.
//!
//! [`Machine::simulated`] runs the same code on one OS thread with virtual time in a
//! seeded order: the same seed gives the same trace ([`Simulation::trace_hash`]).
//!
//! # Scheduling points, the tick, and busy-waits
//! Scheduling is cooperative: a thread runs until it blocks, ends, or reaches a
//! scheduling point. [`Ctx::yield_now`] hands the CPU to the next thread of the
//! same or higher priority (it moves the caller behind its equals).
//! [`Ctx::maybe_yield`] is the cheap preemption point for long loops (DragonFly's
//! `lwkt_yield`): it switches only when a reschedule is wanted, that is when a
//! higher-priority thread became runnable on this CPU, requests or due timers are
//! waiting, or a scheduler tick ([`Builder::tick`], 10 ms by default) moved the
//! caller behind an equal-priority thread; otherwise it returns in a few
//! nanoseconds. So threads of equal priority that only call `maybe_yield` take
//! turns a tick at a time, and a higher-priority thread made runnable on the
//! CPU runs at the lower one's next `maybe_yield`.
//!
//! A busy-wait (a loop that waits for another thread to change something) must
//! call `maybe_yield` or `yield_now` in its loop. On a real machine it would
//! otherwise keep every other thread of its CPU out; under simulation every CPU
//! runs on one OS thread and both calls always go back to the stepper, so the
//! thread it waits for gets to run, on another CPU or, at a tick, on the same one
//! (without them the simulation stalls).
//!
//! # Blocking and the token rule
//! Every operation that may switch away from the thread takes `&mut Ctx`; the rest
//! take `&Ctx`. Token-protected data ([`TokenCell`]) is reached only through guards
//! that borrow the `Ctx`, so while such a guard lives the thread cannot block, and
//! since blocking is exactly when tokens are released, safe code can never hold a
//! reference into protected data that its token no longer protects. After any
//! blocking call, re-borrow and re-check (DragonFly's rule: data under a token may
//! change across a block).
//!
//! # Example
//! ```
//! use dfly_lwkt::{Machine, Spawn, Priority};
//! let mut m = Machine::builder().cpus(2).build().unwrap();
//! let h = m.spawn(Spawn::on_cpu(0).priority(Priority::KERNEL), |cx| {
//!     // a child on the other CPU, and wait for it
//!     let child = cx.spawn(Spawn::on_cpu(1), |cx| cx.cpu().index()).unwrap();
//!     cx.join(child).unwrap() + 1
//! }).unwrap();
//! assert_eq!(h.join_blocking().unwrap(), 2);
//! m.stop().unwrap();
//! ```
#![deny(unsafe_code)]

mod machine;
mod prio;
mod runq;
mod sched;
mod serializer;
mod sim;
mod task;
mod token;

#[cfg(test)]
mod tests;

use core::time::Duration;

use dfly_core::CpuId;

pub use machine::{
    Builder, JoinError, JoinHandle, Machine, MachineError, MachineHandle, Spawn, SpawnError,
    DEFAULT_TICK,
};
pub use prio::{Priority, PriorityOutOfRange};
pub use sched::{Ctx, PanicPayload, SchedStats, ScheduleError, ThreadId, TimedOut};
pub use serializer::{Serializer, SerializerGuard};
pub use sim::{SimError, SimReport, Simulation, DEFAULT_STEP_LIMIT};
pub use token::{
    pool_token, Held, ReleaseError, Token, TokenCell, TokenError, TokenGuard, TokenGuardMut,
    TokenRef, MAX_TOKENS,
};

/// What a continuation-style thread body returns: its result, or "block (or move),
/// then run this next" (see [`Ctx::block_with_continuation`] and [`Ctx::migrate`]).
pub struct Flow<R>(pub(crate) FlowInner<R>);

pub(crate) enum FlowInner<R> {
    Done(R),
    Block { ident: usize, timeout: Option<Duration>, cont: machine::FlowCont<R> },
    Migrate { cpu: CpuId, cont: machine::FlowCont<R> },
}

impl<R> core::fmt::Debug for Flow<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self.0 {
            FlowInner::Done(_) => "Flow::Done",
            FlowInner::Block { .. } => "Flow::Block",
            FlowInner::Migrate { .. } => "Flow::Migrate",
        })
    }
}

impl<R> Flow<R> {
    /// The thread is finished with result `r`.
    pub fn done(r: R) -> Flow<R> {
        Flow(FlowInner::Done(r))
    }

    pub(crate) fn block(
        ident: usize,
        timeout: Option<Duration>,
        cont: machine::FlowCont<R>,
    ) -> Self {
        Flow(FlowInner::Block { ident, timeout, cont })
    }

    pub(crate) fn migrate(cpu: CpuId, cont: machine::FlowCont<R>) -> Self {
        Flow(FlowInner::Migrate { cpu, cont })
    }
}

/// The address of `x` as a sleep ident (the usual choice: sleep on the object whose
/// state you wait for).
pub fn ident_of<T: ?Sized>(x: &T) -> usize {
    x as *const T as *const u8 as usize
}
