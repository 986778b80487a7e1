//! The machine: CPUs as pinned OS threads (or one simulated OS thread), the state
//! they share, spawning, joining, and cross-CPU requests.
//!
//! # Shared state and who writes it
//! - Per CPU, a request queue (lock-free MPSC) that any thread pushes to and only the
//!   CPU pops from, with a `notified` flag: a pusher that flips it from false to
//!   true sends the CPU one IPI (or foreign IPI) so a parked CPU wakes; the CPU
//!   swaps it back to false (AcqRel) before draining, so every push is either seen
//!   by that drain or followed by a fresh IPI.
//! - Per sleep bucket (ident hash), a CPU mask: a CPU sets and clears only its own
//!   bit (see `sched`), wakers read it.
//! - Per CPU, published scheduler statistics.
//! - The stop flag.
//!
//! Must never happen: a request left in a queue with no IPI pending and the CPU
//! parked; a CPU changing another CPU's threads directly.

use core::fmt;
use core::time::Duration;
use dfly_core::sync::{Arc, Mutex};
use std::any::Any;
use std::thread::JoinHandle as OsJoinHandle;

use crossbeam_queue::SegQueue;
use dfly_core::clock::{Clock, RealClock, Timestamp, VirtualClock};
use dfly_core::sync::atomic::{fence, AtomicBool, Ordering};
use dfly_core::{AtomicCpuMask, CpuId, CpuMask, CpuOutOfRange, PerCpu};
use dfly_ipi::{Cpu as IpiCpu, Crossbar};

use crate::sched::{
    current_core, set_current_core, CpuCore, NewThread, Ran, SchedStats, ScheduleError, ThreadId,
};
pub use crate::task::JoinHandle;
use crate::{Ctx, Flow, Priority};

/// Number of sleep buckets (ident hash classes with a CPU mask each).
pub(crate) const SLEEP_BUCKETS: usize = 1024;

pub(crate) fn bucket(ident: usize) -> usize {
    ((ident >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize) >> 20) % SLEEP_BUCKETS
}

/// A request from another CPU or a foreign thread.
pub(crate) enum Request {
    Spawn(NewThread),
    Schedule(ThreadId),
    Deschedule(ThreadId),
    Wakeup { ident: usize, one: bool, tried: CpuMask },
}

pub(crate) struct Inbox {
    q: SegQueue<Request>,
    notified: AtomicBool,
}

impl Inbox {
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub(crate) fn pop(&self) -> Option<Request> {
        self.q.pop()
    }

    pub(crate) fn clear_notified(&self) {
        self.notified.swap(false, Ordering::AcqRel);
    }
}

enum MachineClock {
    Real(RealClock),
    Virtual(VirtualClock),
}

pub(crate) struct Shared {
    pub(crate) ncpus: usize,
    inboxes: PerCpu<Inbox>,
    masks: Box<[AtomicCpuMask]>,
    stop: AtomicBool,
    xbar: Option<Crossbar>,
    clock: MachineClock,
    stats: PerCpu<Mutex<SchedStats>>,
    pub(crate) stack_size: usize,
    /// The scheduler tick period in nanoseconds (at least 1; see [`Builder::tick`]).
    pub(crate) tick_ns: u64,
}

fn noop_ipi(_: &IpiCpu, _: usize, _: usize) {}

impl Shared {
    fn new(
        ncpus: usize,
        xbar: Option<Crossbar>,
        clock: MachineClock,
        stack_size: usize,
        tick: Duration,
    ) -> Self {
        Shared {
            ncpus,
            inboxes: PerCpu::new(ncpus, |_| Inbox {
                q: SegQueue::new(),
                notified: AtomicBool::new(false),
            })
            .expect("cpu count checked by the builder"),
            masks: (0..SLEEP_BUCKETS).map(|_| AtomicCpuMask::new()).collect(),
            stop: AtomicBool::new(false),
            xbar,
            clock,
            stats: PerCpu::new(ncpus, |_| Mutex::new(SchedStats::default()))
                .expect("cpu count checked by the builder"),
            stack_size,
            tick_ns: u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX).max(1),
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        match &self.clock {
            MachineClock::Real(c) => c.now(),
            MachineClock::Virtual(c) => c.now(),
        }
    }

    /// True once the machine is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub(crate) fn inbox(&self, cpu: CpuId) -> &Inbox {
        &self.inboxes[cpu]
    }

    pub(crate) fn sleep_mask(&self, b: usize) -> &AtomicCpuMask {
        &self.masks[b]
    }

    pub(crate) fn publish_stats(&self, cpu: CpuId, s: SchedStats) {
        if let Ok(mut g) = self.stats[cpu].lock() {
            *g = s;
        }
    }

    fn cpu(&self, i: usize) -> Result<CpuId, CpuOutOfRange> {
        CpuId::checked(i, self.ncpus)
    }

    /// Queues `req` for `target` and makes sure it will look (see the module docs).
    pub(crate) fn push_request(&self, target: CpuId, req: Request, from: Option<&CpuCore>) {
        let inbox = self.inbox(target);
        inbox.q.push(req);
        let Some(xbar) = &self.xbar else { return };
        if inbox.notified.swap(true, Ordering::AcqRel) {
            return;
        }
        match from.and_then(|c| c.ipi.as_ref()) {
            Some(cpu) => {
                let _ = cpu.send(target, noop_ipi, 0, 0);
            }
            None => {
                // The foreign inbox holds 1024 entries and each CPU gets at most one
                // outstanding notification from us, so this does not stay busy.
                for _ in 0..1000 {
                    match xbar.send_foreign(target.index(), noop_ipi, 0, 0) {
                        Err(dfly_ipi::SendError::Busy(_)) => {
                            std::thread::sleep(Duration::from_micros(10))
                        }
                        _ => break,
                    }
                }
            }
        }
    }

    /// Wakes sleepers on `ident` everywhere (`one`: just one).
    pub(crate) fn route_wakeup(&self, from: Option<&CpuCore>, ident: usize, one: bool) {
        fence(Ordering::SeqCst);
        let mask = self.masks[bucket(ident)].load(Ordering::SeqCst);
        let me = from.map(|c| c.id);
        if let Some(core) = from {
            if mask.contains(core.id) {
                let n = core.local_wakeup(ident, one, false);
                if one && n > 0 {
                    return;
                }
            }
        }
        if one {
            let mut tried = CpuMask::new();
            if let Some(m) = me {
                tried.insert(m);
            }
            self.forward_wakeup_one(from, ident, tried);
        } else {
            for c in mask.iter() {
                if Some(c) != me {
                    self.push_request(
                        c,
                        Request::Wakeup { ident, one: false, tried: CpuMask::new() },
                        from,
                    );
                }
            }
        }
    }

    /// Passes a `wakeup_one` to the next CPU with sleepers in the bucket that has not
    /// tried yet.
    pub(crate) fn forward_wakeup_one(
        &self,
        from: Option<&CpuCore>,
        ident: usize,
        mut tried: CpuMask,
    ) {
        fence(Ordering::SeqCst);
        let mask = self.masks[bucket(ident)].load(Ordering::SeqCst);
        if let Some(next) = mask.difference(&tried).first() {
            tried.insert(next);
            self.push_request(next, Request::Wakeup { ident, one: true, tried }, from);
        }
    }

    /// Sends a thread-directed request (schedule, deschedule) to the thread's CPU.
    pub(crate) fn ask_owner(
        &self,
        tid: ThreadId,
        req: Request,
        from: Option<&CpuCore>,
    ) -> Result<(), ScheduleError> {
        if tid.cpu.index() >= self.ncpus {
            return Err(ScheduleError::NoSuchCpu(tid.cpu));
        }
        self.push_request(tid.cpu, req, from);
        Ok(())
    }

    pub(crate) fn spawn<R, F>(
        &self,
        opts: Spawn,
        from: Option<&CpuCore>,
        body: F,
    ) -> Result<JoinHandle<R>, SpawnError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Ctx<'_>) -> Flow<R> + Send + 'static,
    {
        let cpu = self.cpu(opts.cpu).map_err(SpawnError::NoSuchCpu)?;
        if self.stop.load(Ordering::Acquire) {
            return Err(SpawnError::Stopped);
        }
        let (task, handle) = crate::task::new(body);
        let nt = NewThread { name: opts.name.map(String::into_boxed_str), prio: opts.prio, task };
        match from {
            Some(core) if core.id == cpu => core.adopt(nt),
            _ => self.push_request(cpu, Request::Spawn(nt), from),
        }
        Ok(handle)
    }
}

/// A plain thread body as a [`Flow`] body (no allocation: the body lives in the
/// task cell made in `Shared::spawn`).
pub(crate) fn plain<F, R>(f: F) -> impl FnOnce(&mut Ctx<'_>) -> Flow<R> + Send + 'static
where
    F: FnOnce(&mut Ctx<'_>) -> R + Send + 'static,
    R: Send + 'static,
{
    move |cx: &mut Ctx<'_>| Flow::done(f(cx))
}

/// Where and how to run a new thread.
#[derive(Debug, Clone)]
pub struct Spawn {
    cpu: usize,
    prio: Priority,
    name: Option<String>,
}

impl Spawn {
    /// On CPU `cpu`, at [`Priority::USER`], unnamed.
    pub fn on_cpu(cpu: usize) -> Spawn {
        Spawn { cpu, prio: Priority::USER, name: None }
    }

    /// With priority `p`.
    pub fn priority(mut self, p: Priority) -> Spawn {
        self.prio = p;
        self
    }

    /// With a name (for diagnostics).
    pub fn name(mut self, name: impl Into<String>) -> Spawn {
        self.name = Some(name.into());
        self
    }
}

/// Why a spawn failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnError {
    /// No such CPU on this machine.
    NoSuchCpu(CpuOutOfRange),
    /// The machine is stopped or stopping.
    Stopped,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::NoSuchCpu(e) => write!(f, "cannot spawn: {e}"),
            SpawnError::Stopped => f.write_str("cannot spawn: the machine is stopped"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// Why a join did not produce the thread's result.
#[derive(Debug)]
pub enum JoinError {
    /// The thread panicked; the payload is the panic's.
    Panicked(Box<dyn Any + Send>),
    /// The machine stopped before the thread finished.
    Stopped,
    /// No stack could be mapped for the thread (the OS error).
    NoStack(String),
    /// `join_blocking` was called on an LWKT CPU's own OS thread, where blocking
    /// would stop the CPU: use [`Ctx::join`] there.
    OnCpuThread,
    /// The thread has not finished (a simulation that went quiet, or `try_join`).
    NotFinished,
    /// The result was already taken.
    Taken,
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Panicked(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| p.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(non-string payload)");
                write!(f, "the thread panicked: {msg}")
            }
            JoinError::Stopped => f.write_str("the machine stopped before the thread finished"),
            JoinError::NoStack(e) => write!(f, "no stack for the thread: {e}"),
            JoinError::OnCpuThread => {
                f.write_str("join_blocking on a CPU thread would stall the CPU; use Ctx::join")
            }
            JoinError::NotFinished => f.write_str("the thread has not finished"),
            JoinError::Taken => f.write_str("the result was already taken"),
        }
    }
}

impl std::error::Error for JoinError {}

/// A cloneable, `Send` handle for spawning, waking and scheduling from anywhere
/// (foreign threads included).
#[derive(Clone)]
pub struct MachineHandle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for MachineHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachineHandle").field("ncpus", &self.shared.ncpus).finish()
    }
}

impl MachineHandle {
    /// Number of CPUs.
    pub fn ncpus(&self) -> usize {
        self.shared.ncpus
    }

    /// Spawns `f` as a thread (see [`Spawn`]).
    pub fn spawn<F, R>(&self, opts: Spawn, f: F) -> Result<JoinHandle<R>, SpawnError>
    where
        F: FnOnce(&mut Ctx<'_>) -> R + Send + 'static,
        R: Send + 'static,
    {
        let core = current_core();
        self.shared.spawn(opts, core.as_deref(), plain(f))
    }

    /// Spawns a thread whose body returns a [`Flow`].
    pub fn spawn_flow<F, R>(&self, opts: Spawn, f: F) -> Result<JoinHandle<R>, SpawnError>
    where
        F: FnOnce(&mut Ctx<'_>) -> Flow<R> + Send + 'static,
        R: Send + 'static,
    {
        let core = current_core();
        self.shared.spawn(opts, core.as_deref(), f)
    }

    /// Wakes every thread sleeping on `ident`.
    pub fn wakeup(&self, ident: usize) {
        let core = current_core();
        self.shared.route_wakeup(core.as_deref(), ident, false);
    }

    /// Wakes one thread sleeping on `ident`.
    pub fn wakeup_one(&self, ident: usize) {
        let core = current_core();
        self.shared.route_wakeup(core.as_deref(), ident, true);
    }

    /// Makes a blocked thread runnable (asynchronously).
    pub fn schedule(&self, tid: ThreadId) -> Result<(), ScheduleError> {
        let core = current_core();
        self.shared.ask_owner(tid, Request::Schedule(tid), core.as_deref())
    }

    /// Takes a runnable thread off its run queue until it is scheduled again
    /// (asynchronously; see [`Ctx::deschedule`]).
    pub fn deschedule(&self, tid: ThreadId) -> Result<(), ScheduleError> {
        let core = current_core();
        self.shared.ask_owner(tid, Request::Deschedule(tid), core.as_deref())
    }

    /// A snapshot of every CPU's scheduler statistics (each CPU publishes them
    /// when it goes idle and every 256 scheduling events).
    pub fn stats(&self) -> Vec<SchedStats> {
        CpuId::all(self.shared.ncpus)
            .map(|c| self.shared.stats[c].lock().map(|g| *g).unwrap_or_default())
            .collect()
    }
}

/// Why a machine could not be built or stopped.
#[derive(Debug)]
pub enum MachineError {
    /// CPU count of 0 or above the limit.
    BadCpuCount(usize),
    /// Creating the IPI crossbar failed.
    Crossbar(dfly_ipi::BuildError),
    /// An OS thread could not be created.
    Thread(std::io::Error),
    /// `stop` was called twice.
    AlreadyStopped,
    /// A CPU's OS thread panicked (a bug in dfly-lwkt: thread panics are caught).
    CpuPanicked(usize),
    /// A scheduler tick period of zero ([`Builder::tick`]).
    ZeroTick,
}

impl fmt::Display for MachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MachineError::BadCpuCount(n) => {
                write!(f, "a machine needs 1..={} CPUs, not {n}", dfly_core::MAX_CPUS)
            }
            MachineError::Crossbar(e) => write!(f, "cannot build the IPI crossbar: {e}"),
            MachineError::Thread(e) => write!(f, "cannot start a CPU thread: {e}"),
            MachineError::AlreadyStopped => f.write_str("the machine is already stopped"),
            MachineError::CpuPanicked(i) => write!(f, "CPU {i}'s OS thread panicked"),
            MachineError::ZeroTick => f.write_str("the scheduler tick period must not be zero"),
        }
    }
}

impl std::error::Error for MachineError {}

/// How to build a [`Machine`].
#[derive(Debug, Clone)]
pub struct Builder {
    cpus: usize,
    pin: bool,
    stack_size: usize,
    tick: Duration,
}

/// The default scheduler tick period: 10 ms (DragonFly's `hz` of 100).
pub const DEFAULT_TICK: Duration = Duration::from_millis(10);

impl Builder {
    /// Number of CPUs (OS threads). Default: the cores available to the process.
    pub fn cpus(mut self, n: usize) -> Builder {
        self.cpus = n;
        self
    }

    /// Pin CPU `i` to the `i % cores`-th core. Default false.
    pub fn pin(mut self, pin: bool) -> Builder {
        self.pin = pin;
        self
    }

    /// Usable stack bytes per thread (a guard page is added). Default 64 KiB.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = bytes;
        self
    }

    /// The scheduler tick period of each CPU. Default [`DEFAULT_TICK`] (10 ms).
    ///
    /// At each tick, a thread that is running at the head of its priority level
    /// while an equal-priority thread is runnable is moved behind its equals, and
    /// its next [`Ctx::maybe_yield`] switches (round robin among equals for threads
    /// that only ever call `maybe_yield`). Ticks are seen by `maybe_yield`, which
    /// reads the clock once every 16 calls; there is no timer interrupt and no
    /// extra OS thread. A period of zero makes [`build`](Self::build) fail with
    /// [`MachineError::ZeroTick`]; a very long one (`Duration::MAX`) turns the
    /// rotation off.
    pub fn tick(mut self, period: Duration) -> Builder {
        self.tick = period;
        self
    }

    /// Starts the CPUs.
    pub fn build(self) -> Result<Machine, MachineError> {
        let n = self.cpus;
        if n == 0 || n > dfly_core::MAX_CPUS {
            return Err(MachineError::BadCpuCount(n));
        }
        if self.tick.is_zero() {
            return Err(MachineError::ZeroTick);
        }
        let xbar = Crossbar::new(n).map_err(MachineError::Crossbar)?;
        let shared = Arc::new(Shared::new(
            n,
            Some(xbar.clone()),
            MachineClock::Real(RealClock),
            self.stack_size,
            self.tick,
        ));
        let cores = dfly_core::affinity::available_cores();
        let ready = Arc::new(std::sync::Barrier::new(n + 1));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let sh = shared.clone();
            let xb = xbar.clone();
            let pin = self.pin.then_some(i % cores);
            let ready = ready.clone();
            let t = std::thread::Builder::new()
                .name(format!("dfly-cpu{i}"))
                .spawn(move || cpu_main(sh, xb, i, pin, ready));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shared.stop.store(true, Ordering::SeqCst);
                    xbar.shutdown();
                    return Err(MachineError::Thread(e));
                }
            }
        }
        ready.wait();
        Ok(Machine { handle: MachineHandle { shared }, xbar, threads, stopped: false })
    }
}

/// A running LWKT machine: `ncpus` OS threads, each a CPU with its own scheduler.
///
/// ```
/// use dfly_lwkt::{Machine, Spawn};
/// let mut m = Machine::builder().cpus(2).build().unwrap();
/// let h = m.spawn(Spawn::on_cpu(1), |cx| cx.cpu().index() * 10).unwrap();
/// assert_eq!(h.join_blocking().unwrap(), 10);
/// m.stop().unwrap();
/// ```
pub struct Machine {
    handle: MachineHandle,
    xbar: Crossbar,
    threads: Vec<OsJoinHandle<()>>,
    stopped: bool,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("ncpus", &self.handle.ncpus())
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl core::ops::Deref for Machine {
    type Target = MachineHandle;
    fn deref(&self) -> &MachineHandle {
        &self.handle
    }
}

impl Machine {
    /// A builder with the defaults.
    pub fn builder() -> Builder {
        Builder {
            cpus: dfly_core::affinity::available_cores(),
            pin: false,
            stack_size: 64 * 1024,
            tick: DEFAULT_TICK,
        }
    }

    /// A deterministic machine of `ncpus` virtual CPUs on the calling OS thread,
    /// with virtual time; the same seed replays the same trace.
    pub fn simulated(ncpus: usize, seed: u64) -> Result<crate::Simulation, MachineError> {
        crate::Simulation::new(ncpus, seed)
    }

    /// A handle that other threads can keep.
    pub fn handle(&self) -> MachineHandle {
        self.handle.clone()
    }

    /// Stops every CPU: threads still running or asleep are torn down (their
    /// stacks unwound, their join handles fail with [`JoinError::Stopped`]) and the
    /// OS threads are joined. A second call fails with
    /// [`MachineError::AlreadyStopped`].
    pub fn stop(&mut self) -> Result<(), MachineError> {
        if self.stopped {
            return Err(MachineError::AlreadyStopped);
        }
        self.stopped = true;
        let sh = &self.handle.shared;
        sh.stop.store(true, Ordering::SeqCst);
        for c in CpuId::all(sh.ncpus) {
            let _ = self.xbar.send_foreign(c.index(), noop_ipi, 0, 0);
        }
        let mut result = Ok(());
        for (i, t) in self.threads.drain(..).enumerate() {
            if t.join().is_err() {
                result = Err(MachineError::CpuPanicked(i));
            }
        }
        // Requests that raced with the CPUs' own final drain.
        for c in CpuId::all(sh.ncpus) {
            while let Some(req) = sh.inbox(c).pop() {
                if let Request::Spawn(mut nt) = req {
                    nt.task.fail(JoinError::Stopped, None, sh);
                }
            }
        }
        self.xbar.shutdown();
        result
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop();
        }
    }
}

/// Longest park of an idle CPU before it rechecks (timers are exact anyway: the
/// park is bounded by the next deadline).
const IDLE_PARK_MAX: Duration = Duration::from_millis(100);
/// Thread runs of a busy CPU between polls of its IPI queue (at most).
const IPI_POLL_EVERY: u32 = 64;
/// Thread runs of a busy CPU that has timers between clock reads for them: a due
/// timer fires at most this many thread runs late. A CPU that found nothing to
/// run reads the clock every turn. (The request queue is looked at after every
/// thread run.)
const TURNS_PER_BURST: u32 = 8;
/// A busy CPU with no timers runs bursts that end when its next IPI poll is due
/// (at most [`IPI_POLL_EVERY`] runs), not every [`TURNS_PER_BURST`]: nothing
/// else needs the loop then but the stop flag, and each pass puts the next
/// thread back on its record and picks it again (callgrind, two threads
/// yielding: ~100 instructions a pass).
fn burst_len(has_timers: bool, turns_since_poll: u32) -> u32 {
    if has_timers {
        TURNS_PER_BURST
    } else {
        IPI_POLL_EVERY.saturating_sub(turns_since_poll).max(1)
    }
}
/// Park length while every runnable thread waits for a token held on another CPU.
const TOKEN_PARK: Duration = Duration::from_micros(50);

fn cpu_main(
    shared: Arc<Shared>,
    xbar: Crossbar,
    i: usize,
    pin: Option<usize>,
    ready: Arc<std::sync::Barrier>,
) {
    if let Some(core) = pin {
        let _ = dfly_core::affinity::pin_current_thread(core);
    }
    let ipi = match xbar.attach(i) {
        Ok(h) => h,
        Err(_) => {
            ready.wait();
            return;
        }
    };
    let id = ipi.id();
    let core = CpuCore::new(id, shared.clone(), Some(ipi));
    set_current_core(Some(core.clone()));
    ready.wait();
    let mut backoff = dfly_core::Backoff::new();
    let mut turns = 0u32;
    let inbox = shared.inbox(id);
    loop {
        // The crossbar only carries wake-up nudges for this CPU (the work itself is
        // in the request queue, checked after every thread run), so a busy CPU
        // drains it every IPI_POLL_EVERY thread runs and an idle one before it
        // parks.
        if turns >= IPI_POLL_EVERY {
            turns = 0;
            if let Some(ipi) = core.ipi.as_ref() {
                ipi.poll();
            }
        }
        if !inbox.is_empty() {
            core.drain_requests();
        }
        if core.has_timers() {
            core.fire_timers(shared.now());
        }
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let (ran, ran_turns) = core.run_turns(burst_len(core.has_timers(), turns));
        turns += ran_turns;
        match ran {
            Ran::Nothing | Ran::TokenBlocked if !backoff.is_completed() => {
                if let Some(ipi) = core.ipi.as_ref() {
                    ipi.poll();
                }
                backoff.spin()
            }
            Ran::Nothing | Ran::TokenBlocked => {
                let now = shared.now();
                let token_wait = core.live_threads() > 0 && core.has_work(now);
                let timeout = if token_wait {
                    TOKEN_PARK
                } else {
                    core.next_deadline()
                        .map(|d| d.saturating_since(now).min(IDLE_PARK_MAX))
                        .unwrap_or(IDLE_PARK_MAX)
                };
                core.note_park();
                if let Some(ipi) = core.ipi.as_ref() {
                    ipi.park(Some(timeout));
                }
                backoff.reset();
            }
            _ => backoff.reset(),
        }
    }
    core.shutdown();
    set_current_core(None);
}

/// A typed continuation for [`Flow`].
pub(crate) type FlowCont<R> = Box<dyn for<'y> FnOnce(&mut Ctx<'y>) -> Flow<R> + Send>;

// ---- simulation ---------------------------------------------------------------------

pub(crate) fn new_sim_shared(ncpus: usize, stack_size: usize) -> Result<Arc<Shared>, MachineError> {
    if ncpus == 0 || ncpus > dfly_core::MAX_CPUS {
        return Err(MachineError::BadCpuCount(ncpus));
    }
    Ok(Arc::new(Shared::new(
        ncpus,
        None,
        MachineClock::Virtual(VirtualClock::new()),
        stack_size,
        DEFAULT_TICK,
    )))
}

impl Shared {
    pub(crate) fn advance_virtual(&self, to: Option<Timestamp>, by: Duration) {
        if let MachineClock::Virtual(c) = &self.clock {
            match to {
                Some(t) => {
                    let _ = c.advance_to(t);
                }
                None => {
                    c.advance(by);
                }
            }
        }
    }

    pub(crate) fn set_stopped(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
