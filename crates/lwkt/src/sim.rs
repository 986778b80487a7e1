//! The simulated machine: every CPU of a machine on the calling OS thread, stepped in
//! a seeded order with virtual time, so a run replays exactly from its seed.
//!
//! Each step picks, with the seeded generator, one CPU that has something to do
//! (requests, runnable threads, due timers), drains its requests, fires its due
//! timers and runs one thread until it switches back; virtual time then moves on by
//! a seeded few hundred nanoseconds. When no CPU has work, time jumps to the
//! earliest timer; with no timers either, the run is over. Every step is folded
//! into a trace hash, so two runs with the same seed and program have the same hash.
//!
//! A thread runs until it blocks, ends, or yields: [`Ctx::yield_now`] and
//! [`Ctx::maybe_yield`] always end the step here, so a busy-wait that calls one of
//! them lets the other CPUs run. The scheduler tick ([`crate::DEFAULT_TICK`] of
//! virtual time) rotates equal-priority threads of one CPU as on a real machine.

use core::fmt;
use core::hash::Hasher;
use core::time::Duration;
use dfly_core::sync::Arc;
use std::collections::hash_map::DefaultHasher;
use std::rc::Rc;

use dfly_core::CpuId;

use crate::machine::{new_sim_shared, plain, MachineError, Shared};
use crate::sched::{set_current_core, CpuCore, Ran};
use crate::{Ctx, Flow, JoinHandle, MachineHandle, Spawn, SpawnError};

/// Default bound on steps in one [`Simulation::run`].
pub const DEFAULT_STEP_LIMIT: u64 = 50_000_000;

/// How a simulation run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimReport {
    /// Steps taken in this run.
    pub steps: u64,
    /// Threads still alive (blocked forever) when the machine went quiet.
    pub live_threads: usize,
    /// Virtual time at the end.
    pub now: dfly_core::clock::Timestamp,
}

/// Why a simulation run stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimError {
    /// The step limit was reached (a livelock, or a bigger run than the limit).
    StepLimit(u64),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::StepLimit(n) => write!(f, "simulation reached its step limit ({n} steps)"),
        }
    }
}

impl std::error::Error for SimError {}

/// A deterministic machine: see the module docs. Made by
/// [`crate::Machine::simulated`].
///
/// ```
/// use dfly_lwkt::{Machine, Spawn};
/// let run = |seed| {
///     let mut sim = Machine::simulated(3, seed).unwrap();
///     for i in 0..3 {
///         sim.spawn(Spawn::on_cpu(i), move |cx| { cx.yield_now(); i }).unwrap();
///     }
///     sim.run().unwrap();
///     sim.trace_hash()
/// };
/// assert_eq!(run(7), run(7));
/// ```
pub struct Simulation {
    shared: Arc<Shared>,
    cores: Vec<Rc<CpuCore>>,
    rng: u64,
    steps: u64,
    limit: u64,
    trace: DefaultHasher,
}

impl fmt::Debug for Simulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulation")
            .field("ncpus", &self.cores.len())
            .field("steps", &self.steps)
            .finish()
    }
}

impl Simulation {
    pub(crate) fn new(ncpus: usize, seed: u64) -> Result<Simulation, MachineError> {
        let shared = new_sim_shared(ncpus, 64 * 1024)?;
        let cores = CpuId::all(ncpus).map(|c| CpuCore::new(c, shared.clone(), None)).collect();
        Ok(Simulation {
            shared,
            cores,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            steps: 0,
            limit: DEFAULT_STEP_LIMIT,
            trace: DefaultHasher::new(),
        })
    }

    /// Sets the step limit for each [`run`](Self::run).
    pub fn set_step_limit(&mut self, steps: u64) {
        self.limit = steps;
    }

    /// A handle for spawning and waking (from inside threads as well).
    pub fn handle(&self) -> MachineHandle {
        MachineHandle { shared: self.shared.clone() }
    }

    /// Spawns a thread; it runs during [`run`](Self::run).
    pub fn spawn<F, R>(&self, opts: Spawn, f: F) -> Result<JoinHandle<R>, SpawnError>
    where
        F: FnOnce(&mut Ctx<'_>) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.shared.spawn(opts, None, plain(f))
    }

    /// Spawns a thread whose body returns a [`Flow`].
    pub fn spawn_flow<F, R>(&self, opts: Spawn, f: F) -> Result<JoinHandle<R>, SpawnError>
    where
        F: FnOnce(&mut Ctx<'_>) -> Flow<R> + Send + 'static,
        R: Send + 'static,
    {
        self.shared.spawn(opts, None, f)
    }

    /// Wakes every thread sleeping on `ident` (as a foreign thread would).
    pub fn wakeup(&self, ident: usize) {
        self.shared.route_wakeup(None, ident, false);
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: small, fast, and fully determined by the seed.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Virtual time now.
    pub fn now(&self) -> dfly_core::clock::Timestamp {
        self.shared.now()
    }

    /// Hash of every step taken so far (CPU, what ran, outcome, time).
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Runs until no CPU has anything to do and no timer is pending, or the step
    /// limit is reached.
    pub fn run(&mut self) -> Result<SimReport, SimError> {
        let start = self.steps;
        let mut candidates = Vec::with_capacity(self.cores.len());
        loop {
            if self.steps - start >= self.limit {
                return Err(SimError::StepLimit(self.limit));
            }
            let now = self.shared.now();
            candidates.clear();
            candidates.extend((0..self.cores.len()).filter(|&i| self.cores[i].has_work(now)));
            if candidates.is_empty() {
                let next = self.cores.iter().filter_map(|c| c.next_deadline()).min();
                match next {
                    Some(t) => {
                        self.shared.advance_virtual(Some(t.max(now)), Duration::ZERO);
                        continue;
                    }
                    None => {
                        for c in &self.cores {
                            c.publish_now();
                        }
                        let live = self.cores.iter().map(|c| c.live_threads()).sum();
                        return Ok(SimReport {
                            steps: self.steps - start,
                            live_threads: live,
                            now,
                        });
                    }
                }
            }
            let pick = candidates[(self.next_rand() % candidates.len() as u64) as usize];
            let core = self.cores[pick].clone();
            self.steps += 1;
            set_current_core(Some(core.clone()));
            // The stepped CPU is the current CPU for code that asks dfly-core (per-CPU
            // state, allocators), exactly as on a real CPU thread.
            let cpu_guard = dfly_core::set_current_cpu(core.id).ok();
            let reqs = core.drain_requests();
            let fired = core.fire_timers(now);
            let ran = core.run_one();
            drop(cpu_guard);
            set_current_core(None);
            self.trace.write_u64(self.steps);
            self.trace.write_usize(pick);
            self.trace.write_usize(reqs);
            self.trace.write_usize(fired);
            self.trace.write_u64(now.as_nanos());
            self.trace.write_u64(trace_code(ran));
            let jitter = 100 + self.next_rand() % 400;
            self.shared.advance_virtual(None, Duration::from_nanos(jitter));
        }
    }

    /// Stops the machine: tears down every thread left (their join handles fail
    /// with `Stopped`).
    pub fn stop(&mut self) {
        self.shared.set_stopped();
        for c in &self.cores {
            set_current_core(Some(c.clone()));
            c.shutdown();
            set_current_core(None);
        }
    }
}

impl Drop for Simulation {
    fn drop(&mut self) {
        self.stop();
    }
}

fn trace_code(r: Ran) -> u64 {
    let (k, uid) = match r {
        Ran::Nothing => (0, 0),
        Ran::TokenBlocked => (1, 0),
        Ran::Yielded(u) => (2, u),
        Ran::Blocked(u) => (3, u),
        Ran::Exited(u) => (4, u),
        Ran::Continued(u) => (5, u),
        Ran::Migrated(u) => (6, u),
    };
    (uid << 3) | k
}
