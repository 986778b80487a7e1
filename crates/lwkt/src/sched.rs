//! One CPU's scheduler: its threads, run queue, sleep queues, timers and stack pool,
//! and [`Ctx`], the handle a running thread uses to talk to it.
//!
//! # Ownership
//! A [`CpuCore`] lives on one OS thread (the CPU's thread, or the simulation's) and
//! is reached through an `Rc`; nothing in it is shared with other CPUs. Other CPUs
//! and foreign threads reach it only through its request queue in
//! [`crate::machine::Shared`] (and the sleep-bucket masks, which it alone sets and
//! clears for itself).
//!
//! # Switching
//! A thread's stack is a `corosensei` coroutine. The scheduler loop takes the
//! chosen thread's coroutine out of the record, resumes it *without holding any
//! borrow of the core*, and files the result when it comes back: a yield, a block
//! (the thread already put itself to sleep), or a return with a [`Step`] (done, block
//! with a continuation, migrate). Tokens are released right after the coroutine
//! comes back and re-acquired (all or nothing) right before it is resumed.
//!
//! # The tick
//! Each CPU keeps its tick period and next-tick time in its [`Inner`] (nothing
//! shared, no timer thread). Only the running thread's
//! [`Ctx::maybe_yield`] looks at them, when its clock read (every
//! [`CLOCK_EVERY`] calls) finds the next-tick time passed: then the
//! running thread, if it heads its level and an equal is runnable, is rotated
//! behind its equals and switches (`Switch::Preempt`, back to the CPU loop). A
//! deadline passed a whole period ago, found by a thread other than the last
//! reader, was not watched and only restarts the period. Threads that block or
//! `yield_now` give up the CPU themselves, so a CPU that runs no `maybe_yield`
//! loop needs no tick and reads no clock for it.
//!
//! # Sleeping
//! `tsleep_interlock` puts the thread on its CPU's sleep queue for `ident` and sets
//! the CPU's bit in the ident's bucket mask (then a SeqCst fence) *before* the caller
//! checks its condition; a waker changes the condition, fences, then reads the mask.
//! Either the waker sees the bit (and the wakeup reaches this CPU's queue, where the
//! thread already is) or the sleeper sees the condition. A wakeup that finds the
//! thread still running marks it woken, and the following `tsleep` returns at once.
//! Must never happen: a thread asleep on an ident whose bucket bit is clear for its
//! CPU; a timer or stale wakeup waking a later sleep (sleep generations prevent it).

use core::cell::RefCell;
use core::fmt;
use core::marker::PhantomData;
use core::time::Duration;
use dfly_core::sync::Arc;
use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::rc::Rc;

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use dfly_core::clock::Timestamp;
use dfly_core::sync::atomic::{fence, Ordering};
use dfly_core::CpuId;
use dfly_ipi::CpuHandle;

use crate::machine::{JoinError, Request, Shared, Spawn, SpawnError};
use crate::runq::RunQueue;
use crate::task::{JoinHandle, TaskRef};
use crate::token::{Acquire, Held, ReleaseError, TokenError, TokenRef, Tokens, TokensRef};
use crate::{Flow, Priority};

/// A thread's identity: its CPU, its slot there, and a unique number (so an id of a
/// finished thread never names a later one). Migration gives a thread a new id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThreadId {
    pub(crate) cpu: CpuId,
    pub(crate) key: usize,
    pub(crate) uid: u64,
}

impl ThreadId {
    /// The CPU the thread belongs to.
    pub fn cpu(&self) -> CpuId {
        self.cpu
    }
}

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "thread {}@{}", self.uid, self.cpu)
    }
}

/// A `tsleep` that ended by its timeout rather than a wakeup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sleep timed out")
    }
}

impl std::error::Error for TimedOut {}

/// Why [`Ctx::schedule`] could not act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleError {
    /// The thread has finished (or the id is stale).
    NoSuchThread(ThreadId),
    /// The id names a CPU this machine does not have.
    NoSuchCpu(CpuId),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::NoSuchThread(t) => write!(f, "{t} does not exist (finished?)"),
            ScheduleError::NoSuchCpu(c) => write!(f, "{c} does not exist on this machine"),
        }
    }
}

impl std::error::Error for ScheduleError {}

/// What a thread body hands back to its scheduler when its stack ends (the
/// continuation of a block or migration waits in the thread's task cell).
pub(crate) enum Step {
    Done,
    Block { ident: usize, timeout: Option<Duration> },
    Migrate { cpu: CpuId },
}

/// Why a running thread handed control back to the scheduler.
pub(crate) enum Switch {
    Yield,
    /// A yield that already picked the next thread (see [`Picked`]).
    YieldTo(Picked),
    Block,
    TokenWait,
    /// [`Ctx::maybe_yield`] wants a reschedule: back to the CPU loop, which
    /// handles requests and timers before it picks again.
    Preempt,
}

/// A thread picked to run next: its key, uid and coroutine, taken out of its
/// record (which says `Body::Running` and is the core's `current`). Whoever
/// holds a `Picked` either resumes it or puts the coroutine back.
pub(crate) struct Picked {
    key: usize,
    uid: u64,
    co: CoBox,
}

/// A thread's stack: it owns the thread's task cell reference while it exists and
/// hands it back with the final [`Step`].
type Co = Coroutine<(), Switch, (Step, TaskRef), DefaultStack>;

/// Where a thread's coroutine lives: a box that is pooled with the stack, so a
/// switch moves one pointer in and out of the thread record instead of the
/// coroutine's few words (`None` while pooled).
type CoBox = Box<Option<Co>>;

/// Where a thread's code is: to be started on a fresh stack (its task cell holds
/// the body or continuation), suspended on its stack (which owns the cell
/// reference meanwhile), or running.
enum Body {
    Fresh(TaskRef),
    Stack(CoBox),
    Running,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Runnable,
    Sleeping,
    Blocked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    None,
    Woken,
    TimedOut,
}

/// Where a thread waits: an ident (or none, for a plain timed sleep) and the
/// generation that timers and queue entries must match.
#[derive(Debug, Clone, Copy)]
struct SleepRec {
    ident: Option<usize>,
    gen: u32,
}

/// A thread on its way to a CPU (spawn or migration): everything but a stack.
pub(crate) struct NewThread {
    pub(crate) name: Option<Box<str>>,
    pub(crate) prio: Priority,
    pub(crate) task: TaskRef,
}

/// A thread's record. Records live in [`Threads`] slots that are reused in place.
struct Thread {
    /// Unique per thread on this CPU; 0 marks a free slot.
    uid: u64,
    name: Option<Box<str>>,
    prio: Priority,
    state: State,
    body: Body,
    tokens: Tokens,
    sleep: Option<SleepRec>,
    sleep_gen: u32,
    wake: Wake,
    interlocked: Option<usize>,
}

/// The CPU's thread records, by key. A thread that ends leaves its slot in place
/// (fields reset, the token stack's buffer kept) and a new thread fills a free slot
/// field by field, so neither moves a whole record.
struct Threads {
    slots: Vec<Thread>,
    free: Vec<usize>,
    len: usize,
}

impl Threads {
    fn new() -> Self {
        Threads { slots: Vec::new(), free: Vec::new(), len: 0 }
    }

    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn get(&self, key: usize) -> Option<&Thread> {
        self.slots.get(key).filter(|t| t.uid != 0)
    }

    #[inline]
    fn get_mut(&mut self, key: usize) -> Option<&mut Thread> {
        self.slots.get_mut(key).filter(|t| t.uid != 0)
    }

    /// Keys of the live threads.
    fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots.iter().enumerate().filter(|(_, t)| t.uid != 0).map(|(k, _)| k)
    }

    /// A new runnable thread with a fresh body; returns its key.
    fn insert(&mut self, uid: u64, nt: NewThread) -> usize {
        debug_assert!(uid != 0);
        self.len += 1;
        let Some(key) = self.free.pop() else {
            self.slots.push(Thread {
                uid,
                name: nt.name,
                prio: nt.prio,
                state: State::Runnable,
                body: Body::Fresh(nt.task),
                tokens: Tokens::new(),
                sleep: None,
                sleep_gen: 0,
                wake: Wake::None,
                interlocked: None,
            });
            return self.slots.len() - 1;
        };
        // A free slot already has the reset values of the other fields.
        let t = &mut self.slots[key];
        t.uid = uid;
        t.name = nt.name;
        t.prio = nt.prio;
        t.state = State::Runnable;
        t.body = Body::Fresh(nt.task);
        t.sleep_gen = 0;
        key
    }

    /// Ends `key`'s record (its body already taken out: `Body::Running`): resets it
    /// in place and frees the slot. Returns the name (for a migration).
    fn release(&mut self, key: usize) -> Option<Box<str>> {
        let t = &mut self.slots[key];
        debug_assert!(t.uid != 0 && matches!(t.body, Body::Running));
        t.uid = 0;
        if t.tokens.len() > 0 {
            t.tokens.clear();
        }
        t.sleep = None;
        t.wake = Wake::None;
        t.interlocked = None;
        self.free.push(key);
        self.len -= 1;
        t.name.take()
    }
}

impl core::ops::Index<usize> for Threads {
    type Output = Thread;
    fn index(&self, key: usize) -> &Thread {
        let t = &self.slots[key];
        debug_assert!(t.uid != 0, "no thread {key}");
        t
    }
}

impl core::ops::IndexMut<usize> for Threads {
    fn index_mut(&mut self, key: usize) -> &mut Thread {
        let t = &mut self.slots[key];
        debug_assert!(t.uid != 0, "no thread {key}");
        t
    }
}

/// Per-CPU counters (the owner writes, anyone reads a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedStats {
    /// Threads resumed.
    pub switches: u64,
    /// `yield_now` calls that switched.
    pub yields: u64,
    /// `yield_now` calls that returned at once (nothing else to run).
    pub cheap_yields: u64,
    /// Threads woken by this CPU's own wakeups.
    pub local_wakeups: u64,
    /// Threads woken by requests from other CPUs or foreign threads.
    pub remote_wakeups: u64,
    /// Attempts to run a thread that failed because a token was held elsewhere.
    pub token_contention: u64,
    /// Threads created on this CPU (spawned or migrated in).
    pub threads_created: u64,
    /// Threads that ended on this CPU.
    pub threads_exited: u64,
    /// Threads live on this CPU now.
    pub threads_live: u64,
    /// Stacks currently attached to threads of this CPU.
    pub stacks_in_use: u64,
    /// Stacks kept in this CPU's pool for reuse.
    pub stacks_pooled: u64,
    /// Stacks this CPU created (pool misses).
    pub stacks_created: u64,
    /// Times this CPU parked with nothing to do.
    pub parks: u64,
    /// [`Ctx::maybe_yield`] calls that switched (under simulation: every call).
    pub preempts: u64,
    /// Scheduler ticks seen (by `maybe_yield`'s clock reads; see
    /// [`crate::Builder::tick`]).
    pub ticks: u64,
    /// Ticks that moved the running thread behind an equal-priority thread.
    pub tick_rotations: u64,
}

/// What one scheduling step did (for the simulation's trace and the idle logic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Ran {
    Nothing,
    TokenBlocked,
    Yielded(u64),
    Blocked(u64),
    Exited(u64),
    Continued(u64),
    Migrated(u64),
}

const STACK_POOL_MAX: usize = 64;

pub(crate) struct Inner {
    threads: Threads,
    runq: RunQueue<usize>,
    sleepq: HashMap<usize, VecDeque<(usize, u32)>>,
    bucket_sleepers: Vec<u32>,
    timers: BinaryHeap<Reverse<(u64, u64, usize, u32)>>,
    timer_seq: u64,
    /// Pooled stacks, each with an empty coroutine box.
    stacks: Vec<(DefaultStack, CoBox)>,
    next_uid: u64,
    pub(crate) stats: SchedStats,
    unpublished: u32,
    current: Option<usize>,
    /// The tick period (ns, at least 1) and the machine time the next tick is due.
    tick_ns: u64,
    next_tick: u64,
    /// `maybe_yield` calls on this CPU left before one reads the clock.
    clock_countdown: u32,
    /// The uid of the thread whose `maybe_yield` read the clock last (0: none).
    clock_reader: u64,
}

/// [`Ctx::maybe_yield`] reads the clock (for the tick, due timers and the stop
/// flag) once every this many calls on a CPU. Measured on the 2-core VM: a
/// clock read 25-30 ns; a no-op call 4-4.5 ns without it and about 5 ns with it
/// (callgrind: ~48 instructions a call, the clock's share included); a loop
/// that calls it every microsecond notices a tick or a due timer at most 16 us
/// late.
pub(crate) const CLOCK_EVERY: u32 = 16;

/// Events between two publications of a CPU's counters.
const PUBLISH_EVERY: u32 = 256;

/// One CPU's scheduler state (see the module docs).
pub(crate) struct CpuCore {
    pub(crate) id: CpuId,
    pub(crate) shared: Arc<Shared>,
    pub(crate) ipi: Option<CpuHandle>,
    pub(crate) inner: RefCell<Inner>,
}

std::thread_local! {
    static CORE: RefCell<Option<Rc<CpuCore>>> = const { RefCell::new(None) };
    static FORCE_UNWIND: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// The scheduler of the CPU the calling OS thread currently runs, if any.
pub(crate) fn current_core() -> Option<Rc<CpuCore>> {
    CORE.with(|c| c.borrow().clone())
}

/// Makes `core` the calling OS thread's current scheduler (None to clear).
pub(crate) fn set_current_core(core: Option<Rc<CpuCore>>) {
    CORE.with(|c| *c.borrow_mut() = core);
}

impl CpuCore {
    pub(crate) fn new(id: CpuId, shared: Arc<Shared>, ipi: Option<CpuHandle>) -> Rc<CpuCore> {
        let tick_ns = shared.tick_ns;
        let next_tick = shared.now().as_nanos().saturating_add(tick_ns);
        Rc::new(CpuCore {
            id,
            shared,
            ipi,
            inner: RefCell::new(Inner {
                threads: Threads::new(),
                runq: RunQueue::new(),
                sleepq: HashMap::new(),
                bucket_sleepers: vec![0; crate::machine::SLEEP_BUCKETS],
                timers: BinaryHeap::new(),
                timer_seq: 0,
                stacks: Vec::new(),
                next_uid: 1,
                stats: SchedStats::default(),
                unpublished: 0,
                current: None,
                tick_ns,
                next_tick,
                clock_countdown: CLOCK_EVERY,
                clock_reader: 0,
            }),
        })
    }

    fn now(&self) -> Timestamp {
        self.shared.now()
    }

    /// Copies the counters where other threads can read them.
    pub(crate) fn publish_stats(&self, inner: &Inner) {
        self.shared.publish_stats(self.id, inner.stats);
    }

    /// Publishes every [`PUBLISH_EVERY`] events (and always when idle), so the hot
    /// paths do not take the stats lock.
    fn maybe_publish(&self, inner: &mut Inner) {
        inner.unpublished += 1;
        if inner.unpublished >= PUBLISH_EVERY {
            inner.unpublished = 0;
            self.publish_stats(inner);
        }
    }

    /// Publishes now.
    pub(crate) fn publish_now(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.unpublished = 0;
        self.publish_stats(&inner);
    }

    /// True if this CPU has anything to do now (runnable threads, requests, due
    /// timers).
    pub(crate) fn has_work(&self, now: Timestamp) -> bool {
        let inner = self.inner.borrow();
        inner.runq.len() > 0
            || !self.shared.inbox(self.id).is_empty()
            || inner.timers.peek().is_some_and(|Reverse(t)| t.0 <= now.as_nanos())
    }

    /// True if any timer is pending.
    pub(crate) fn has_timers(&self) -> bool {
        !self.inner.borrow().timers.is_empty()
    }

    /// The earliest timer deadline, if any.
    pub(crate) fn next_deadline(&self) -> Option<Timestamp> {
        self.inner.borrow().timers.peek().map(|Reverse(t)| Timestamp::from_nanos(t.0))
    }

    /// Counts a park of this idle CPU.
    pub(crate) fn note_park(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.stats.parks += 1;
        self.publish_stats(&inner);
    }

    /// Number of live threads.
    pub(crate) fn live_threads(&self) -> usize {
        self.inner.borrow().threads.len()
    }

    // ---- requests ---------------------------------------------------------------

    /// Runs every queued request. Returns how many ran.
    pub(crate) fn drain_requests(&self) -> usize {
        let inbox = self.shared.inbox(self.id);
        if inbox.is_empty() {
            return 0;
        }
        inbox.clear_notified();
        let mut n = 0;
        while let Some(req) = inbox.pop() {
            n += 1;
            self.handle(req);
        }
        n
    }

    fn handle(&self, req: Request) {
        match req {
            Request::Spawn(nt) => self.adopt(nt),
            Request::Schedule(tid) => {
                let _ = self.schedule_local(tid, true);
            }
            Request::Deschedule(tid) => {
                let _ = self.deschedule_local(tid);
            }
            Request::Wakeup { ident, one, tried } => {
                let n = self.local_wakeup(ident, one, true);
                if one && n == 0 {
                    self.shared.forward_wakeup_one(Some(self), ident, tried);
                }
            }
        }
    }

    /// Takes ownership of a new or migrating thread and makes it runnable.
    pub(crate) fn adopt(&self, nt: NewThread) {
        let mut inner = self.inner.borrow_mut();
        let uid = inner.next_uid;
        inner.next_uid += 1;
        let prio = nt.prio;
        let key = inner.threads.insert(uid, nt);
        inner.runq.push_back(key, prio);
        inner.stats.threads_created += 1;
        inner.stats.threads_live = inner.threads.len() as u64;
        self.maybe_publish(&mut inner);
    }

    /// Makes a descheduled or sleeping thread runnable (`remote`: asked by another
    /// CPU).
    pub(crate) fn schedule_local(&self, tid: ThreadId, remote: bool) -> Result<(), ScheduleError> {
        let mut inner = self.inner.borrow_mut();
        let ok = inner.threads.get(tid.key).is_some_and(|t| t.uid == tid.uid);
        if !ok {
            return Err(ScheduleError::NoSuchThread(tid));
        }
        self.wake_thread(&mut inner, tid.key, Wake::Woken, remote);
        Ok(())
    }

    /// Takes a runnable thread that is not running off the run queue until it is
    /// scheduled again (DragonFly's `lwkt_deschedule`). A sleeping or blocked
    /// thread is left as it is; a thread deschedules itself with [`Ctx::block`].
    pub(crate) fn deschedule_local(&self, tid: ThreadId) -> Result<(), ScheduleError> {
        let mut inner = self.inner.borrow_mut();
        let ok = inner.threads.get(tid.key).is_some_and(|t| t.uid == tid.uid);
        if !ok {
            return Err(ScheduleError::NoSuchThread(tid));
        }
        if inner.current == Some(tid.key) {
            return Ok(());
        }
        let t = &mut inner.threads[tid.key];
        if t.state == State::Runnable {
            t.state = State::Blocked;
            let p = t.prio;
            inner.runq.remove(tid.key, p);
        }
        Ok(())
    }

    /// Ends `key`'s sleep or block with `why`; a running thread that interlocked is
    /// marked so its `tsleep` returns at once.
    fn wake_thread(&self, inner: &mut Inner, key: usize, why: Wake, remote: bool) {
        let Some(t) = inner.threads.get_mut(key) else { return };
        if let Some(rec) = t.sleep.take() {
            if let Some(ident) = rec.ident {
                self.unqueue(inner, ident, key, rec.gen);
            }
        }
        let Some(t) = inner.threads.get_mut(key) else { return };
        t.wake = why;
        if t.state != State::Runnable {
            t.state = State::Runnable;
            let p = t.prio;
            inner.runq.push_back(key, p);
            if remote {
                inner.stats.remote_wakeups += 1;
            } else {
                inner.stats.local_wakeups += 1;
            }
        }
    }

    fn unqueue(&self, inner: &mut Inner, ident: usize, key: usize, gen: u32) {
        if let Some(q) = inner.sleepq.get_mut(&ident) {
            if let Some(i) = q.iter().position(|&(k, g)| k == key && g == gen) {
                q.remove(i);
                if q.is_empty() {
                    inner.sleepq.remove(&ident);
                }
                self.bucket_drop(inner, ident);
            }
        }
    }

    fn bucket_drop(&self, inner: &mut Inner, ident: usize) {
        let b = crate::machine::bucket(ident);
        inner.bucket_sleepers[b] -= 1;
        if inner.bucket_sleepers[b] == 0 {
            // Only this CPU clears its own bit, and only with no sleepers left in
            // the bucket; a waker that read the old bit sends a harmless request.
            self.shared.sleep_mask(b).clear(self.id, Ordering::SeqCst);
        }
    }

    /// Wakes sleepers on `ident` queued on this CPU (one, or all). Returns how many.
    pub(crate) fn local_wakeup(&self, ident: usize, one: bool, remote: bool) -> usize {
        let mut inner = self.inner.borrow_mut();
        let mut n = 0;
        loop {
            let next = inner.sleepq.get_mut(&ident).and_then(|q| q.pop_front());
            let Some((key, gen)) = next else { break };
            if inner.sleepq.get(&ident).is_some_and(|q| q.is_empty()) {
                inner.sleepq.remove(&ident);
            }
            self.bucket_drop(&mut inner, ident);
            let live = inner
                .threads
                .get(key)
                .is_some_and(|t| t.sleep.is_some_and(|r| r.gen == gen && r.ident == Some(ident)));
            if !live {
                continue;
            }
            if let Some(t) = inner.threads.get_mut(key) {
                t.sleep = None;
            }
            self.wake_thread(&mut inner, key, Wake::Woken, remote);
            n += 1;
            if one {
                break;
            }
        }
        self.maybe_publish(&mut inner);
        n
    }

    // ---- timers -----------------------------------------------------------------

    /// Fires every timer due at `now`. Returns how many woke a thread.
    pub(crate) fn fire_timers(&self, now: Timestamp) -> usize {
        let mut inner = self.inner.borrow_mut();
        let mut n = 0;
        while let Some(&Reverse((at, _, key, gen))) = inner.timers.peek() {
            if at > now.as_nanos() {
                break;
            }
            inner.timers.pop();
            let live =
                inner.threads.get(key).is_some_and(|t| t.sleep.is_some_and(|r| r.gen == gen));
            if live {
                self.wake_thread(&mut inner, key, Wake::TimedOut, false);
                n += 1;
            }
        }
        n
    }

    // ---- running ----------------------------------------------------------------

    fn take_stack(&self, inner: &mut Inner) -> Result<(DefaultStack, CoBox), std::io::Error> {
        if let Some(s) = inner.stacks.pop() {
            inner.stats.stacks_pooled = inner.stacks.len() as u64;
            return Ok(s);
        }
        inner.stats.stacks_created += 1;
        Ok((DefaultStack::new(self.shared.stack_size)?, Box::new(None)))
    }

    fn give_stack(&self, inner: &mut Inner, s: DefaultStack, b: CoBox) {
        if inner.stacks.len() < STACK_POOL_MAX {
            inner.stacks.push((s, b));
        }
        inner.stats.stacks_pooled = inner.stacks.len() as u64;
    }

    /// The bookkeeping of [`Ctx::yield_now`] for thread `key`: how to switch (the
    /// thread rotated to the tail of its level), or None for a cheap yield.
    /// Inlined into the yielding thread (see `yield_now`); the clock read for a
    /// pending timer is out of line.
    ///
    /// On a real CPU the yielding thread also picks the next thread when the fast
    /// pick applies (the run queue's new head, suspended, needing no tokens) and
    /// hands it to the scheduler with the switch, which resumes it unless it must
    /// look at its requests first (then it puts it back). The scheduler then
    /// needs no run-queue lookup between the two threads, and the next thread's
    /// coroutine reaches it in the switch's value rather than through the queue
    /// and the thread table.
    #[inline(always)]
    fn yield_prepare(&self, key: usize, p: Priority) -> Option<Switch> {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        debug_assert_eq!(inner.threads[key].prio, p);
        // The common case in one run-queue step: an equal is next and nothing
        // higher is queued, so the switch is wanted whatever the requests and
        // timers say, and the equal is the thread to run.
        if self.ipi.is_some() {
            if let Some(next) = inner.runq.yield_rotate(key, p) {
                inner.stats.yields += 1;
                return Some(match Self::take_suspended(inner, next) {
                    Some((key, uid, co)) => Switch::YieldTo(Picked { key, uid, co }),
                    None => Switch::Yield,
                });
            }
        }
        // IPIs to a CPU are only nudges to look at its request queue, so the queue
        // is what counts here; the clock is read only when nothing else is
        // runnable and a timer is pending. Under simulation a yield always goes
        // back to the stepper: the other CPUs run only between steps.
        let must = inner.runq.other_at_or_above(key, p)
            || !self.shared.inbox(self.id).is_empty()
            || self.ipi.is_none()
            || (!inner.timers.is_empty() && self.timer_due(inner));
        if !must {
            inner.stats.cheap_yields += 1;
            return None;
        }
        inner.runq.rotate_to_tail(key, p);
        inner.stats.yields += 1;
        if self.ipi.is_some() {
            if let Some((key, uid, co)) = Self::pick_fast(inner) {
                return Some(Switch::YieldTo(Picked { key, uid, co }));
            }
        }
        Some(Switch::Yield)
    }

    /// True if the earliest timer is due (reads the clock).
    #[cold]
    #[inline(never)]
    fn timer_due(&self, inner: &Inner) -> bool {
        inner.timers.peek().is_some_and(|Reverse(t)| t.0 <= self.now().as_nanos())
    }

    /// The decision of [`Ctx::maybe_yield`] for the running thread `key`: true if a
    /// reschedule is wanted (see there). Every call looks at the run queue's
    /// higher levels and the request queue; every [`CLOCK_EVERY`]th call also
    /// reads the clock ([`preempt_clock`](Self::preempt_clock)).
    #[inline]
    fn preempt_wanted(&self, key: usize, p: Priority) -> bool {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        debug_assert_eq!(inner.threads[key].prio, p);
        let mut want =
            inner.runq.any_above(p) || !self.shared.inbox(self.id).is_empty() || self.ipi.is_none();
        inner.clock_countdown -= 1;
        if inner.clock_countdown == 0 {
            want |= self.preempt_clock(inner, key, p);
        }
        if want {
            inner.stats.preempts += 1;
        }
        want
    }

    /// The clock-reading part of [`preempt_wanted`](Self::preempt_wanted): true if
    /// a timer is due, the machine is stopping, or a tick found an equal-priority
    /// thread runnable (the running thread is moved behind its equals if it heads
    /// its level; if it does not, an equal is ahead of it anyway).
    ///
    /// A tick is due when the clock has passed the CPU's next-tick time; the next
    /// one is then a period later. A deadline passed a whole period ago or more,
    /// when another thread read the clock last, was not watched (the CPU idled,
    /// or ran threads that never called `maybe_yield`): it starts a new period
    /// instead of ticking, so a thread that starts a loop after a quiet spell is
    /// not rotated at its first look. A thread that was the last reader is
    /// ticked however long ago the deadline passed, so a loop that calls
    /// `maybe_yield` rarely is still rotated, at its second clock read at the
    /// latest.
    #[cold]
    #[inline(never)]
    fn preempt_clock(&self, inner: &mut Inner, key: usize, p: Priority) -> bool {
        inner.clock_countdown = CLOCK_EVERY;
        let now = self.now().as_nanos();
        let mut want =
            self.shared.stopping() || inner.timers.peek().is_some_and(|Reverse(t)| t.0 <= now);
        let uid = inner.threads[key].uid;
        let same_reader = core::mem::replace(&mut inner.clock_reader, uid) == uid;
        if now >= inner.next_tick {
            let watched = same_reader || now - inner.next_tick < inner.tick_ns;
            inner.next_tick = now.saturating_add(inner.tick_ns);
            if watched {
                inner.stats.ticks += 1;
                if inner.runq.other_at_or_above(key, p) {
                    want = true;
                    if inner.runq.rotate_head(key, p) {
                        inner.stats.tick_rotations += 1;
                    }
                }
            }
        }
        want
    }

    /// Picks the thread to run and takes its coroutine out of its record (the
    /// record says `Body::Running` until it is filed back). Fast path: the run
    /// queue's head, suspended on a stack, with no tokens to take.
    #[inline]
    fn pick(self: &Rc<Self>) -> Result<(usize, u64, CoBox), Ran> {
        let mut guard = self.inner.borrow_mut();
        if let Some(picked) = Self::pick_fast(&mut guard) {
            return Ok(picked);
        }
        drop(guard);
        self.pick_slow()
    }

    /// The fast path of [`pick`](Self::pick), if it applies.
    #[inline]
    fn pick_fast(inner: &mut Inner) -> Option<(usize, u64, CoBox)> {
        let head = inner.runq.head()?;
        Self::take_suspended(inner, head)
    }

    /// Takes queued thread `head`'s coroutine out of its record to run it, if it
    /// is suspended on a stack and needs no tokens (the fast pick).
    #[inline]
    fn take_suspended(inner: &mut Inner, head: usize) -> Option<(usize, u64, CoBox)> {
        // Queued keys name live records (a record leaves the run queue before it
        // is released), and a free slot's body is `Running`, so the body check
        // below refuses one anyway: no need for the live-record filter here.
        let t = inner.threads.slots.get_mut(head)?;
        if t.tokens.len() != 0 || !matches!(t.body, Body::Stack(_)) {
            return None;
        }
        let Body::Stack(co) = core::mem::replace(&mut t.body, Body::Running) else {
            unreachable!("checked just above")
        };
        let uid = t.uid;
        inner.current = Some(head);
        inner.stats.switches += 1;
        Some((head, uid, co))
    }

    /// Puts a picked thread's coroutine back in its record: it did not run.
    #[cold]
    #[inline(never)]
    fn unpick(inner: &mut Inner, p: Picked) {
        inner.current = None;
        inner.stats.switches -= 1;
        if let Some(t) = inner.threads.get_mut(p.key) {
            core::mem::forget(core::mem::replace(&mut t.body, Body::Stack(p.co)));
        }
    }

    /// [`pick`](Self::pick) for a thread that needs tokens or a fresh stack.
    #[cold]
    #[inline(never)]
    fn pick_slow(self: &Rc<Self>) -> Result<(usize, u64, CoBox), Ran> {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let Some(key) = Self::choose(inner) else {
            return Err(Ran::TokenBlocked);
        };
        let Some(t) = inner.threads.get_mut(key) else { return Err(Ran::Nothing) };
        let uid = t.uid;
        let co = match core::mem::replace(&mut t.body, Body::Running) {
            Body::Stack(co) => co,
            Body::Fresh(task) => match self.take_stack(inner) {
                Ok((stack, mut co)) => {
                    inner.stats.stacks_in_use += 1;
                    let t = &inner.threads[key];
                    let (tokens, prio) = (t.tokens.share(), t.prio);
                    *co = Some(self.make_coroutine(key, uid, prio, tokens, task, stack));
                    co
                }
                Err(e) => {
                    let prio = inner.threads[key].prio;
                    inner.runq.remove(key, prio);
                    inner.threads.release(key);
                    drop(guard);
                    let mut task = task;
                    task.fail(JoinError::NoStack(e.to_string()), Some(self), &self.shared);
                    return Err(Ran::Exited(uid));
                }
            },
            Body::Running => return Err(Ran::Nothing),
        };
        inner.current = Some(key);
        inner.stats.switches += 1;
        Ok((key, uid, co))
    }

    /// The head thread if it needs no tokens, otherwise the first in run order
    /// whose tokens can all be taken now.
    fn choose(inner: &mut Inner) -> Option<usize> {
        let head = inner.runq.head()?;
        if inner.threads.get(head).is_some_and(|t| t.tokens.len() == 0) {
            return Some(head);
        }
        let Inner { runq, threads, stats, .. } = inner;
        for (k, _) in runq.iter() {
            let Some(t) = threads.get_mut(k) else { continue };
            if t.tokens.acquire_all() {
                return Some(k);
            }
            stats.token_contention += 1;
        }
        None
    }

    /// Runs the first runnable thread whose tokens can all be taken, until it
    /// switches back. Returns what happened.
    pub(crate) fn run_one(self: &Rc<Self>) -> Ran {
        self.run_turns(1).0
    }

    /// Runs up to `turns` threads one after the other (a turn is one thread run
    /// until it switches back). After a plain yield the next thread is picked in
    /// the same borrow that files the yielding one, without going back to the CPU
    /// loop; the burst ends early when a thread blocks, ends or waits for a token,
    /// when a request is queued for this CPU, or when the next thread needs the
    /// slow pick (tokens, a fresh stack). Returns what the last turn did and how
    /// many turns ran (at least 1).
    #[inline]
    pub(crate) fn run_turns(self: &Rc<Self>, turns: u32) -> (Ran, u32) {
        let (mut key, mut uid, mut co) = match self.pick() {
            Ok(picked) => picked,
            Err(ran) => return (ran, 1),
        };
        let mut done = 1;
        loop {
            // The box holds a coroutine from the moment it leaves the pool until
            // the coroutine returns, when it goes back to the pool empty.
            let Some(running) = co.as_mut() else { return (Ran::Nothing, done) };
            match running.resume(()) {
                CoroutineResult::Yield(why) => {
                    let mut guard = self.inner.borrow_mut();
                    let inner = &mut *guard;
                    // The thread that ran is live: a record is released only
                    // after its coroutine returned, or at shutdown, which does
                    // not run while a CPU runs threads.
                    let t = &mut inner.threads[key];
                    if t.tokens.len() > 0 {
                        t.tokens.release_all();
                    }
                    // The old value is `Body::Running`, which owns nothing:
                    // forgetting it skips a call to the drop glue of every body kind.
                    core::mem::forget(core::mem::replace(&mut t.body, Body::Stack(co)));
                    self.maybe_publish(inner);
                    let go_on = done < turns && self.shared.inbox(self.id).is_empty();
                    let next = match why {
                        // The yielding thread made `next` current when it picked it.
                        Switch::YieldTo(next) if go_on => next,
                        Switch::YieldTo(next) => {
                            Self::unpick(inner, next);
                            return (Ran::Yielded(uid), done);
                        }
                        Switch::Yield if go_on => match Self::pick_fast(inner) {
                            Some((key, uid, co)) => Picked { key, uid, co },
                            None => {
                                inner.current = None;
                                return (Ran::Yielded(uid), done);
                            }
                        },
                        Switch::Yield | Switch::TokenWait | Switch::Preempt => {
                            inner.current = None;
                            return (Ran::Yielded(uid), done);
                        }
                        Switch::Block => {
                            inner.current = None;
                            return (Ran::Blocked(uid), done);
                        }
                    };
                    (key, uid, co) = (next.key, next.uid, next.co);
                    done += 1;
                }
                CoroutineResult::Return((step, task)) => {
                    return (self.finish(key, uid, co, step, task), done);
                }
            }
        }
    }

    /// Files a thread whose stack ended: the stack and its box go back to the pool
    /// and the step is carried out.
    #[cold]
    #[inline(never)]
    fn finish(&self, key: usize, uid: u64, mut co: CoBox, step: Step, task: TaskRef) -> Ran {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        inner.current = None;
        if let Some(t) = inner.threads.get_mut(key) {
            if t.tokens.len() > 0 {
                t.tokens.release_all();
            }
        }
        let stack = co.take().map(Coroutine::into_stack);
        inner.stats.stacks_in_use -= 1;
        if let Some(stack) = stack {
            self.give_stack(inner, stack, co);
        }
        let ran = self.file_step(inner, key, uid, step, task);
        self.maybe_publish(inner);
        ran
    }

    fn file_step(&self, inner: &mut Inner, key: usize, uid: u64, step: Step, task: TaskRef) -> Ran {
        match step {
            Step::Done => {
                let t = &inner.threads[key];
                let (prio, sleep) = (t.prio, t.sleep);
                inner.runq.remove(key, prio);
                if let Some(rec) = sleep {
                    if let Some(ident) = rec.ident {
                        self.unqueue(inner, ident, key, rec.gen);
                    }
                }
                inner.threads.release(key);
                drop(task);
                inner.stats.threads_exited += 1;
                inner.stats.threads_live = inner.threads.len() as u64;
                Ran::Exited(uid)
            }
            Step::Block { ident, timeout } => {
                let now = self.now();
                let t = &mut inner.threads[key];
                t.body = Body::Fresh(task);
                let interlocked = t.interlocked.take() == Some(ident);
                if interlocked && t.sleep.is_none() {
                    // Woken between the interlock and the block: run on at once.
                    return Ran::Continued(uid);
                }
                if !interlocked {
                    self.interlock(inner, key, Some(ident));
                }
                self.sleep_prepare(inner, key, timeout, now);
                Ran::Continued(uid)
            }
            Step::Migrate { cpu } => {
                let prio = inner.threads[key].prio;
                inner.runq.remove(key, prio);
                // The token stack does not travel (it is empty at migration:
                // `Ctx::migrate` refuses while tokens are held); the task cell,
                // holding the continuation, does.
                let name = inner.threads.release(key);
                inner.stats.threads_live = inner.threads.len() as u64;
                let nt = NewThread { name, prio, task };
                self.shared.push_request(cpu, Request::Spawn(nt), Some(self));
                Ran::Migrated(uid)
            }
        }
    }

    /// Queues thread `key` on `ident` (None: a plain timed sleep) and sets this
    /// CPU's bit in the ident's bucket, then fences.
    fn interlock(&self, inner: &mut Inner, key: usize, ident: Option<usize>) {
        let t = &mut inner.threads[key];
        if let Some(old) = t.sleep.take() {
            if let Some(i) = old.ident {
                self.unqueue(inner, i, key, old.gen);
            }
        }
        let t = &mut inner.threads[key];
        t.sleep_gen = t.sleep_gen.wrapping_add(1);
        let gen = t.sleep_gen;
        t.sleep = Some(SleepRec { ident, gen });
        t.wake = Wake::None;
        if let Some(ident) = ident {
            inner.sleepq.entry(ident).or_default().push_back((key, gen));
            let b = crate::machine::bucket(ident);
            inner.bucket_sleepers[b] += 1;
            if inner.bucket_sleepers[b] == 1 {
                self.shared.sleep_mask(b).set(self.id, Ordering::SeqCst);
            }
            fence(Ordering::SeqCst);
        }
    }

    /// Takes `key` off the run queue as a sleeper, with a timer if `timeout`.
    fn sleep_prepare(
        &self,
        inner: &mut Inner,
        key: usize,
        timeout: Option<Duration>,
        now: Timestamp,
    ) {
        let t = &mut inner.threads[key];
        let gen = t.sleep.map_or(0, |r| r.gen);
        t.state = State::Sleeping;
        let p = t.prio;
        inner.runq.remove(key, p);
        if let Some(d) = timeout {
            let at = now.as_nanos().saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            inner.timer_seq += 1;
            let seq = inner.timer_seq;
            inner.timers.push(Reverse((at, seq, key, gen)));
        }
    }

    fn make_coroutine(
        self: &Rc<Self>,
        key: usize,
        uid: u64,
        prio: Priority,
        tokens: TokensRef,
        mut task: TaskRef,
        stack: DefaultStack,
    ) -> Co {
        let core = self.clone();
        Coroutine::with_stack(stack, move |y: &Yielder<(), Switch>, ()| {
            let mut cx = Ctx { y, core, key, uid, prio, tokens, _not_send: PhantomData };
            match catch_unwind(AssertUnwindSafe(|| task.run(&mut cx))) {
                Ok(step) => (step, task),
                Err(payload) => {
                    let core = &cx.core;
                    if FORCE_UNWIND.with(|f| f.get()) {
                        // Shutdown is unwinding this stack (its locals are dropped by
                        // now): fail the join and let the unwind through.
                        task.fail(JoinError::Stopped, Some(core), &core.shared);
                        resume_unwind(payload);
                    }
                    task.fail(JoinError::Panicked(payload), Some(core), &core.shared);
                    (Step::Done, task)
                }
            }
        })
    }

    /// Tears down every thread (shutdown): suspended stacks are unwound, so their
    /// destructors run; every join handle learns the machine stopped.
    pub(crate) fn shutdown(&self) {
        let bodies: Vec<Body> = {
            let mut inner = self.inner.borrow_mut();
            inner.timers.clear();
            inner.sleepq.clear();
            for b in inner.bucket_sleepers.iter_mut() {
                *b = 0;
            }
            let keys: Vec<usize> = inner.threads.keys().collect();
            keys.into_iter()
                .map(|k| {
                    let body = core::mem::replace(&mut inner.threads[k].body, Body::Running);
                    inner.threads.release(k);
                    body
                })
                .collect()
        };
        for b in 0..crate::machine::SLEEP_BUCKETS {
            self.shared.sleep_mask(b).clear(self.id, Ordering::SeqCst);
        }
        FORCE_UNWIND.with(|f| f.set(true));
        for mut body in bodies {
            // A thread with a stack fails its join from the stack as it unwinds.
            if let Body::Fresh(task) = &mut body {
                task.fail(JoinError::Stopped, Some(self), &self.shared);
            }
            drop(body);
        }
        FORCE_UNWIND.with(|f| f.set(false));
        while let Some(req) = self.shared.inbox(self.id).pop() {
            if let Request::Spawn(mut nt) = req {
                nt.task.fail(JoinError::Stopped, Some(self), &self.shared);
            }
        }
        let mut inner = self.inner.borrow_mut();
        inner.stacks.clear();
        inner.stats.stacks_in_use = 0;
        inner.stats.stacks_pooled = 0;
        inner.stats.threads_live = 0;
        self.publish_stats(&inner);
    }
}

/// A running thread's handle to its CPU: every blocking operation takes `&mut Ctx`,
/// every non-blocking one `&Ctx` (see the token module for why that matters).
/// Not `Send`: it belongs to one thread's stack.
pub struct Ctx<'y> {
    y: &'y Yielder<(), Switch>,
    core: Rc<CpuCore>,
    key: usize,
    uid: u64,
    /// This thread's priority (a copy of its record's, which only
    /// [`set_priority`](Ctx::set_priority) changes), so the yield paths need not
    /// look the record up.
    prio: Priority,
    /// This thread's token stack (owned by its record).
    tokens: TokensRef,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx").field("thread", &self.id()).finish()
    }
}

impl<'y> Ctx<'y> {
    pub(crate) fn core(&self) -> &CpuCore {
        &self.core
    }

    /// This thread's id.
    pub fn id(&self) -> ThreadId {
        ThreadId { cpu: self.core.id, key: self.key, uid: self.uid }
    }

    /// The CPU this thread runs on.
    pub fn cpu(&self) -> CpuId {
        self.core.id
    }

    /// Number of CPUs of the machine.
    pub fn ncpus(&self) -> usize {
        self.core.shared.ncpus
    }

    /// The thread's name, if it was given one.
    pub fn name(&self) -> Option<String> {
        self.core
            .inner
            .borrow()
            .threads
            .get(self.key)
            .and_then(|t| t.name.as_deref().map(String::from))
    }

    /// True under [`crate::Machine::simulated`] (spinning cannot help there: no
    /// other CPU runs while this one spins).
    pub fn is_simulated(&self) -> bool {
        self.core.ipi.is_none()
    }

    /// The machine's time (virtual under simulation).
    pub fn now(&self) -> Timestamp {
        self.core.now()
    }

    /// A handle for spawning and waking from anywhere (it is `Send`).
    pub fn machine(&self) -> crate::MachineHandle {
        crate::MachineHandle { shared: self.core.shared.clone() }
    }

    /// This thread's priority.
    pub fn priority(&self) -> Priority {
        self.prio
    }

    /// Changes this thread's priority. As in DragonFly this does not switch by
    /// itself; a higher-priority thread that is now runnable runs at the next
    /// scheduling point ([`yield_now`](Self::yield_now),
    /// [`maybe_yield`](Self::maybe_yield) or a block).
    pub fn set_priority(&mut self, p: Priority) {
        let mut inner = self.core.inner.borrow_mut();
        let old = inner.threads[self.key].prio;
        if old != p && inner.runq.remove(self.key, old) {
            inner.runq.push_back(self.key, p);
        }
        inner.threads[self.key].prio = p;
        self.prio = p;
    }

    fn suspend(&mut self, why: Switch) {
        self.y.suspend(why);
    }

    /// Lets other threads run: switches if another thread of this priority or
    /// higher is runnable, or requests or due timers are waiting; otherwise returns
    /// at once (cheap enough to call in a loop). Under simulation it always
    /// switches, so that the other simulated CPUs get their turns.
    // Always inlined, with the switch itself in the caller's frame: a thread that
    // was resumed and then returns from a function it entered before it was
    // suspended returns through an address the CPU's return predictor no longer
    // holds (the scheduler's calls replaced it), and so does the next switch out.
    // With the decision out of line (a call that returns before the switch) and
    // the switch inline, a thread that yields in a loop mispredicts nothing.
    #[inline(always)]
    pub fn yield_now(&mut self) {
        if let Some(why) = self.core.yield_prepare(self.key, self.prio) {
            self.y.suspend(why);
        }
    }

    /// A preemption point (DragonFly's `lwkt_yield`): switches only when a
    /// reschedule is wanted, and otherwise returns at once, cheaply enough for a
    /// tight loop (about 5 ns a call when nothing is wanted, on the 2-core VM this
    /// was written on, where a clock read costs 25-30 ns). [`SchedStats::preempts`]
    /// counts the calls that switched. A reschedule is wanted when
    /// - a thread of strictly higher priority is runnable on this CPU (spawned,
    ///   woken or scheduled here since this thread started running),
    /// - requests (spawns, wakeups, schedules from other CPUs or foreign threads)
    ///   are queued for this CPU,
    /// - a timer of this CPU is due, or the machine is stopping,
    /// - or a scheduler tick ([`crate::Builder::tick`]) found a runnable thread of
    ///   this priority: this thread, if it headed its level, is moved behind its
    ///   equals (round robin at each tick; DragonFly's `lwkt_schedulerclock`).
    ///
    /// The first two are looked at on every call; the clock, for the rest, once
    /// every 16 calls on this CPU, so a tick, a due timer or a stop is noticed at
    /// most 16 calls late (a loop should call it at least every few tens of
    /// microseconds). Unlike [`yield_now`](Self::yield_now), it does not give the
    /// CPU to an equal-priority thread before the next tick. When it switches, the
    /// CPU looks at its requests and timers and then runs the first thread in
    /// priority order, which is the caller again unless the reason was a tick or
    /// a higher-priority thread.
    ///
    /// Under simulation every call goes back to the stepper (as `yield_now`
    /// does), so the other simulated CPUs get their turns: a busy-wait must call
    /// `maybe_yield` or `yield_now` in its loop, or the simulation stalls.
    #[inline]
    pub fn maybe_yield(&mut self) {
        if self.core.preempt_wanted(self.key, self.prio) {
            self.y.suspend(Switch::Preempt);
        }
    }

    /// Puts this thread on the sleep queue of `ident` before the caller checks its
    /// wait condition, so a wakeup between the check and [`tsleep`](Self::tsleep)
    /// is not lost (DragonFly's `tsleep_interlock`).
    pub fn tsleep_interlock(&mut self, ident: usize) {
        let mut inner = self.core.inner.borrow_mut();
        self.core.interlock(&mut inner, self.key, Some(ident));
        inner.threads[self.key].interlocked = Some(ident);
    }

    /// Sleeps until [`wakeup`](Self::wakeup) on `ident` (from any CPU or foreign
    /// thread) or until `timeout`. If this thread interlocked on `ident` and was
    /// woken since, returns at once.
    pub fn tsleep(&mut self, ident: usize, timeout: Option<Duration>) -> Result<(), TimedOut> {
        self.sleep_on(Some(ident), timeout)
    }

    fn sleep_on(
        &mut self,
        ident: Option<usize>,
        timeout: Option<Duration>,
    ) -> Result<(), TimedOut> {
        {
            let now = self.core.now();
            let mut inner = self.core.inner.borrow_mut();
            let t = &mut inner.threads[self.key];
            let interlocked = ident.is_some() && t.interlocked.take() == ident;
            if interlocked && t.sleep.is_none() {
                t.wake = Wake::None;
                return Ok(());
            }
            if !interlocked {
                self.core.interlock(&mut inner, self.key, ident);
            }
            self.core.sleep_prepare(&mut inner, self.key, timeout, now);
        }
        self.suspend(Switch::Block);
        let mut inner = self.core.inner.borrow_mut();
        let t = &mut inner.threads[self.key];
        let w = core::mem::replace(&mut t.wake, Wake::None);
        if w == Wake::TimedOut {
            Err(TimedOut)
        } else {
            Ok(())
        }
    }

    /// Sleeps until `cond()` holds, rechecking after every wakeup on `ident`; the
    /// interlock makes it free of lost wakeups as long as whoever makes `cond`
    /// true calls `wakeup(ident)` afterwards.
    pub fn tsleep_until(
        &mut self,
        ident: usize,
        timeout: Option<Duration>,
        mut cond: impl FnMut() -> bool,
    ) -> Result<(), TimedOut> {
        let deadline =
            timeout.map(|d| self.core.now().as_nanos().saturating_add(d.as_nanos() as u64));
        loop {
            self.tsleep_interlock(ident);
            if cond() {
                self.cancel_interlock();
                return Ok(());
            }
            let left = match deadline {
                Some(at) => {
                    let now = self.core.now().as_nanos();
                    if now >= at {
                        self.cancel_interlock();
                        return Err(TimedOut);
                    }
                    Some(Duration::from_nanos(at - now))
                }
                None => None,
            };
            if self.tsleep(ident, left).is_err() && !cond() {
                return Err(TimedOut);
            }
        }
    }

    fn cancel_interlock(&mut self) {
        let mut inner = self.core.inner.borrow_mut();
        let t = &mut inner.threads[self.key];
        t.interlocked = None;
        if let Some(rec) = t.sleep.take() {
            if let Some(ident) = rec.ident {
                self.core.unqueue(&mut inner, ident, self.key, rec.gen);
            }
        }
    }

    /// Sleeps for `d` of machine time.
    pub fn sleep(&mut self, d: Duration) {
        let _ = self.sleep_on(None, Some(d));
    }

    /// Wakes every thread sleeping on `ident`, on any CPU.
    pub fn wakeup(&self, ident: usize) {
        self.core.shared.route_wakeup(Some(&self.core), ident, false);
    }

    /// Wakes one thread sleeping on `ident`: one on this CPU if there is one,
    /// otherwise the request travels CPU to CPU until one wakes a sleeper.
    pub fn wakeup_one(&self, ident: usize) {
        self.core.shared.route_wakeup(Some(&self.core), ident, true);
    }

    /// Deschedules this thread until some thread calls [`schedule`](Self::schedule)
    /// (or [`crate::MachineHandle::schedule`]) with its id.
    pub fn block(&mut self) {
        {
            let mut inner = self.core.inner.borrow_mut();
            let t = &mut inner.threads[self.key];
            t.state = State::Blocked;
            let p = t.prio;
            inner.runq.remove(self.key, p);
        }
        self.suspend(Switch::Block);
    }

    /// Makes `tid` runnable if it is blocked or sleeping: directly on this CPU, by
    /// request on another (the error for a finished remote thread is not reported;
    /// it is counted there).
    pub fn schedule(&self, tid: ThreadId) -> Result<(), ScheduleError> {
        if tid.cpu == self.core.id {
            self.core.schedule_local(tid, false)
        } else {
            self.core.shared.ask_owner(tid, Request::Schedule(tid), Some(&self.core))
        }
    }

    /// Takes `tid` off its run queue until someone [`schedule`](Self::schedule)s it:
    /// directly on this CPU, by request on another. A sleeping thread is not
    /// affected; to deschedule yourself use [`block`](Self::block).
    pub fn deschedule(&self, tid: ThreadId) -> Result<(), ScheduleError> {
        if tid.cpu == self.core.id {
            self.core.deschedule_local(tid)
        } else {
            self.core.shared.ask_owner(tid, Request::Deschedule(tid), Some(&self.core))
        }
    }

    /// Spawns a thread (see [`crate::MachineHandle::spawn`]).
    pub fn spawn<F, R>(&self, opts: Spawn, f: F) -> Result<JoinHandle<R>, SpawnError>
    where
        F: FnOnce(&mut Ctx<'_>) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.core.shared.spawn(opts, Some(&self.core), crate::machine::plain(f))
    }

    /// Spawns a thread whose body returns a [`Flow`] (so it may block with a
    /// continuation or migrate).
    pub fn spawn_flow<F, R>(&self, opts: Spawn, f: F) -> Result<JoinHandle<R>, SpawnError>
    where
        F: FnOnce(&mut Ctx<'_>) -> Flow<R> + Send + 'static,
        R: Send + 'static,
    {
        self.core.shared.spawn(opts, Some(&self.core), f)
    }

    /// Waits for another thread to finish and returns its result.
    pub fn join<R: Send + 'static>(&mut self, h: JoinHandle<R>) -> Result<R, JoinError> {
        if !h.lwkt_join_prepare() {
            let ident = h.ident();
            let _ = self.tsleep_until(ident, None, || h.is_finished());
        }
        h.take()
    }

    // ---- tokens -----------------------------------------------------------------

    #[inline]
    fn acquire(
        &mut self,
        tok: TokenRef,
        exclusive: bool,
        try_only: bool,
    ) -> Result<Held, TokenError> {
        match self.tokens.push(tok, exclusive, self.uid, try_only)? {
            Acquire::Got(h) => Ok(h),
            Acquire::MustSwitch(h) => self.acquire_wait(h),
        }
    }

    /// The token of `h` (pushed on this thread's stack) is held elsewhere: spin
    /// briefly (the holder is running on another CPU), then let the scheduler
    /// take every token for us, all or nothing. Under simulation no other CPU
    /// runs while this one spins: switch at once.
    #[cold]
    #[inline(never)]
    fn acquire_wait(&mut self, h: Held) -> Result<Held, TokenError> {
        let spins = if self.is_simulated() { 0 } else { 64 };
        for _ in 0..spins {
            core::hint::spin_loop();
            if self.tokens.acquire_all() {
                return Ok(h);
            }
            self.core.inner.borrow_mut().stats.token_contention += 1;
        }
        loop {
            self.suspend(Switch::TokenWait);
            if self.tokens.all_acquired() {
                return Ok(h);
            }
        }
    }

    /// Takes `tok` exclusively, switching away while it is held elsewhere (all of
    /// this thread's tokens are released meanwhile and retaken together).
    #[inline]
    pub fn get_token(&mut self, tok: impl Into<TokenRef>) -> Result<Held, TokenError> {
        self.acquire(tok.into(), true, false)
    }

    /// Takes `tok` shared.
    #[inline]
    pub fn get_token_shared(&mut self, tok: impl Into<TokenRef>) -> Result<Held, TokenError> {
        self.acquire(tok.into(), false, false)
    }

    /// Takes `tok` exclusively if that is possible without waiting.
    #[inline]
    pub fn try_token(&mut self, tok: impl Into<TokenRef>) -> Result<Held, TokenError> {
        self.acquire(tok.into(), true, true)
    }

    /// Releases a hold; it must be the most recent one still held (LIFO).
    #[inline]
    pub fn release(&mut self, held: Held) -> Result<(), ReleaseError> {
        self.tokens.pop(held, self.uid).map_err(|(held, error)| ReleaseError { held, error })
    }

    /// Number of token holds on this thread's stack.
    pub fn tokens_held(&self) -> usize {
        self.tokens.len()
    }

    /// `Ok((exclusive, token address))` if `held` is one of this thread's live
    /// holds; exclusive if the thread holds that token exclusively (directly or
    /// by a recursive hold).
    pub(crate) fn check_held(&self, held: &Held) -> Result<(bool, usize), TokenError> {
        let addr = self.tokens.check(held, self.uid)?;
        Ok((self.tokens.holds_exclusive(addr), addr))
    }

    // ---- continuations ----------------------------------------------------------

    /// Blocks on `ident` (until a wakeup or `timeout`) *giving up this stack*: the
    /// stack goes back to the pool and `then` runs on a fresh one when the thread is
    /// woken (Mach's continuations). Return the result from the thread body:
    /// `return cx.block_with_continuation(ident, None, |cx| ...)`. To avoid a lost
    /// wakeup, call [`tsleep_interlock`](Self::tsleep_interlock) before checking
    /// the wait condition.
    pub fn block_with_continuation<R, F>(
        &mut self,
        ident: usize,
        timeout: Option<Duration>,
        then: F,
    ) -> Flow<R>
    where
        F: FnOnce(&mut Ctx<'_>) -> Flow<R> + Send + 'static,
        R: Send + 'static,
    {
        Flow::block(ident, timeout, Box::new(then))
    }

    /// Moves this thread to `cpu`: the stack is given up here and `then` runs on a
    /// fresh stack there. Fails (handing `then` back) if tokens are held or the CPU
    /// does not exist.
    pub fn migrate<R, F>(&mut self, cpu: CpuId, then: F) -> Result<Flow<R>, F>
    where
        F: FnOnce(&mut Ctx<'_>) -> Flow<R> + Send + 'static,
        R: Send + 'static,
    {
        if self.tokens_held() > 0 || cpu.index() >= self.core.shared.ncpus {
            return Err(then);
        }
        Ok(Flow::migrate(cpu, Box::new(then)))
    }
}

/// Payload of a panic, for [`JoinError::Panicked`].
pub type PanicPayload = Box<dyn Any + Send>;
