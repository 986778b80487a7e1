//! The crossbar, the per-target inboxes and the CPU handle: sending, polling,
//! waiting and parking.
//!
//! # Protocol
//! Per target CPU there is an inbox with a *pending-sender mask* (one bit per source
//! CPU; the target's own bit, which no FIFO uses, flags its foreign inbox) and a *park word* (`RUNNING`, `PARKED`,
//! `WAKING`, a futex).
//!
//! **Send (source S to target T).** Write the slot's entry, publish its stamp (Release;
//! see the ring module),
//! [`light`] barrier, then: if S's bit in T's mask is clear, set it (`fetch_or`).
//! For an active send, load T's park word; only if it reads `PARKED` and S wins the
//! `PARKED -> WAKING` exchange does S make the wake syscall. So a target that is
//! running, or has a wakeup in flight, costs senders no syscall, and at most one
//! wakeup is outstanding per target. Passive sends never touch the park word.
//!
//! **Bits are sticky.** A target leaves a source's bit set after draining its ring;
//! while the bit is set a sender skips the `fetch_or`, so a busy stream costs the
//! sender one load of a line that stays in its cache. Bits are cleared only by the
//! *quiesce* step, which runs when a CPU is about to park (never on a busy poll: the
//! heavy barrier interrupts every running thread of the process, which measured 12%
//! of a stream's time when it ran every 1024 empty polls). Until then a poll scans the
//! FIFOs whose bits are set, one load each. Quiesce:
//! clear the bits of empty rings, (if parking) store `PARKED`, [`heavy`] barrier,
//! then re-check every cleared ring, the mask and the wait condition, undoing the
//! park if anything is there. The light/heavy pairs make each handshake a Dekker
//! pattern: either the sender sees the cleared bit / `PARKED` word, or the target's
//! re-check sees the sender's entry.
//!
//! **Must never happen:** a published entry with its source bit clear while the
//! target sleeps (lost wakeup); two wake syscalls for one park; a slot overwritten
//! before the target copied it (the FIFO holds at most `capacity - 2` entries).
//!
//! **FIFO full.** A top-level send waits while more than `capacity/2` entries are
//! outstanding, until at most `capacity/4` remain. While waiting, the sender runs
//! its own incoming IPIs, so two CPUs flooding each other both make progress; after
//! a bounded spin it parks with the ring's `waiting` mark set, and the target wakes
//! it when it drains. A send from inside an IPI callback never waits: it may fill
//! the FIFO up to `capacity-3` (the upper half is reserved for such sends), and
//! beyond that the entry goes to this CPU's per-target *overflow* queue, which keeps
//! send order and is flushed into the FIFO by the next send to that target, poll or
//! wait. So no callback ever blocks on another CPU, waits never form a cycle, and
//! nesting stays shallow (a wait runs callbacks; callbacks do not wait unless they
//! call [`Cpu::wait`] themselves, which is bounded by [`MAX_NEST`]).

use core::cell::{Cell, RefCell};
use core::fmt;
use core::time::Duration;
use std::collections::VecDeque;
use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use dfly_core::crit::{self, ReqFlag};
use dfly_core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use dfly_core::sync::Arc;
use dfly_core::{
    set_current_cpu, Backoff, CachePadded, CpuId, CpuMask, CurrentCpuGuard, Futex, PerCpu,
};

use crate::cpusync::SyncState;
use crate::error::{AttachError, BuildError, SendError, WaitError};
use crate::ring::{Ring, Slot};
use crate::stats::{bump, bump_shared, CpuStats, StatsSlot};
use dfly_core::barrier::{self, heavy, light};

/// An IPI function: runs on the target CPU with the two words given at send time.
///
/// It receives the target's [`Cpu`], so it may send further IPIs (nested sends).
pub type IpiFn = fn(&Cpu, usize, usize);

/// Deepest nesting of IPI processing inside IPI callbacks that wait.
pub const MAX_NEST: u32 = 16;
/// How long a sender waiting for FIFO space spins without seeing the target make
/// progress before it parks (only when the target runs on another core).
const SPIN_WINDOW: Duration = Duration::from_micros(50);
/// Longest single sleep while waiting on another CPU before re-checking that it is
/// still attached.
const WAIT_SLICE: Duration = Duration::from_millis(50);

const RUNNING: u32 = 0;
const PARKED: u32 = 1;
const WAKING: u32 = 2;
const NO_CORE: u32 = u32::MAX;
const PENDING_WORDS: usize = dfly_core::MAX_CPUS.div_ceil(64);

/// Crossbar settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Entries per FIFO: a power of two in `16..=65536`, or 0 (the default) for
    /// [`Config::auto_fifo_capacity`] of the CPU count. Memory is
    /// `ncpus^2 * capacity * 32` bytes.
    pub fifo_capacity: usize,
    /// Capacity of each CPU's inbox for sends from foreign (non-CPU) threads.
    pub foreign_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { fifo_capacity: 0, foreign_capacity: 1024 }
    }
}

/// The FIFO memory [`Config::auto_fifo_capacity`] aims to stay under.
const AUTO_FIFO_BYTES: usize = 8 << 20;
/// The deepest FIFO [`Config::auto_fifo_capacity`] chooses.
const AUTO_FIFO_MAX: usize = 4096;
/// The FIFO [`Config::auto_fifo_capacity`] falls back to when nothing deeper
/// fits the memory budget.
const AUTO_FIFO_MIN: usize = 256;

impl Config {
    /// The FIFO capacity chosen for `ncpus` CPUs when none is given: the largest
    /// power of two from 256 to 4096 entries at which all `ncpus^2` FIFOs fit in
    /// 8 MiB (4096 up to 8 CPUs, 1024 up to 16), else 256 (DragonFly's
    /// `MAXCPUFIFO` since 2018). Deeper FIFOs matter most when a sender and its
    /// target share a core: the sender sleeps only when half the FIFO is full, so
    /// each pair of context switches carries a quarter of the capacity or more.
    /// On the 2-core VM this was tuned on, the oversubscribed stream ran 2.5x
    /// faster at 1024 than at 256, and about 1.9x faster again at 4096 (17-19
    /// against 33-36 Mmsg/s), with the two-core stream no slower; 16384 gained
    /// little more one-core and made the two-core stream less steady.
    ///
    /// ```
    /// use dfly_ipi::Config;
    /// assert_eq!(Config::auto_fifo_capacity(2), 4096);
    /// assert_eq!(Config::auto_fifo_capacity(8), 4096);
    /// assert_eq!(Config::auto_fifo_capacity(12), 1024);
    /// assert_eq!(Config::auto_fifo_capacity(16), 1024);
    /// assert_eq!(Config::auto_fifo_capacity(64), 256);
    /// ```
    pub fn auto_fifo_capacity(ncpus: usize) -> usize {
        let per = ncpus.saturating_mul(ncpus).saturating_mul(32).max(1);
        let mut cap = AUTO_FIFO_MAX;
        while cap > AUTO_FIFO_MIN && per.saturating_mul(cap) > AUTO_FIFO_BYTES {
            cap /= 2;
        }
        cap
    }
}

struct Inbox {
    pending: CachePadded<[AtomicU64; PENDING_WORDS]>,
    park: CachePadded<Futex>,
    /// The OS core the CPU's thread last ran on, as it noted at attach and after
    /// each sleep ([`NO_CORE`] if unknown): a hint for senders deciding whether
    /// spinning can help.
    core: CachePadded<AtomicU32>,
    attached: AtomicBool,
    foreign: ArrayQueue<Slot>,
}

pub(crate) struct Shared {
    ncpus: usize,
    nwords: usize,
    cap: u32,
    rings: Box<[Ring]>,
    inboxes: PerCpu<Inbox>,
    stats: PerCpu<StatsSlot>,
    foreign_stats: StatsSlot,
    shutdown: AtomicBool,
}

impl Shared {
    #[inline(always)]
    fn ring(&self, target: CpuId, source: CpuId) -> &Ring {
        &self.rings[target.index() * self.ncpus + source.index()]
    }

    #[inline(always)]
    fn inbox(&self, cpu: CpuId) -> &Inbox {
        &self.inboxes[cpu]
    }

    /// [`Shared::ring`] without the range check, for the send fast path and the
    /// poll side.
    ///
    /// # Safety
    /// `target` and `source` must be below `ncpus`.
    #[inline(always)]
    unsafe fn ring_unchecked(&self, target: CpuId, source: CpuId) -> &Ring {
        debug_assert!(target.index() < self.ncpus && source.index() < self.ncpus);
        // SAFETY: `rings` holds `ncpus * ncpus` rings and both ids are below
        // `ncpus` (the caller's promise), so the index is in range.
        unsafe { self.rings.get_unchecked(target.index() * self.ncpus + source.index()) }
    }

    pub(crate) fn is_attached(&self, cpu: CpuId) -> bool {
        self.inbox(cpu).attached.load(Ordering::Acquire)
    }

    /// Wakes `cpu` if it is parked; returns true if a wake syscall was made. The
    /// caller has just stored something `cpu`'s quiesce re-check reads.
    #[inline]
    pub(crate) fn kick(&self, cpu: CpuId) -> bool {
        light();
        let f = &self.inbox(cpu).park;
        if f.word().load(Ordering::Relaxed) == PARKED
            && f.word()
                .compare_exchange(PARKED, WAKING, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        {
            f.wake_one();
            return true;
        }
        false
    }
}

/// The software crossbar: an N x N matrix of SPSC FIFOs, one per ordered CPU pair,
/// plus one inbox per CPU for foreign threads. Cheap to clone (an `Arc`).
///
/// ```
/// use dfly_ipi::{Crossbar, Cpu};
/// use dfly_core::CpuId;
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// static HITS: AtomicUsize = AtomicUsize::new(0);
/// fn hit(_cpu: &Cpu, n: usize, _: usize) { HITS.fetch_add(n, Ordering::Relaxed); }
///
/// let xbar = Crossbar::new(2).unwrap();
/// let x1 = xbar.clone();
/// let cpu1 = std::thread::spawn(move || {
///     let me = x1.attach(1).unwrap();
///     while HITS.load(Ordering::Relaxed) < 5 {
///         me.poll_or_park(None);
///     }
/// });
/// let me = xbar.attach(0).unwrap();
/// while !xbar.is_attached(1) { std::hint::spin_loop(); }
/// let seq = me.send(CpuId::new(1).unwrap(), hit, 5, 0).unwrap();
/// me.wait(seq).unwrap(); // returns once cpu1 has run `hit`
/// cpu1.join().unwrap();
/// assert_eq!(HITS.load(Ordering::Relaxed), 5);
/// ```
#[derive(Clone)]
pub struct Crossbar {
    shared: Arc<Shared>,
}

impl fmt::Debug for Crossbar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crossbar")
            .field("ncpus", &self.shared.ncpus)
            .field("fifo_capacity", &self.shared.cap)
            .field("shutdown", &self.is_shutdown())
            .finish()
    }
}

impl Crossbar {
    /// A crossbar for `ncpus` CPUs with the default [`Config`].
    pub fn new(ncpus: usize) -> Result<Crossbar, BuildError> {
        Self::with_config(ncpus, Config::default())
    }

    /// A crossbar with explicit settings.
    pub fn with_config(ncpus: usize, config: Config) -> Result<Crossbar, BuildError> {
        if ncpus == 0 || ncpus > dfly_core::MAX_CPUS {
            return Err(BuildError::BadCpuCount(ncpus));
        }
        let cap = match config.fifo_capacity {
            0 => Config::auto_fifo_capacity(ncpus),
            c => c,
        };
        if !cap.is_power_of_two() || !(16..=65536).contains(&cap) {
            return Err(BuildError::BadCapacity(cap));
        }
        barrier::init();
        let rings = (0..ncpus * ncpus).map(|_| Ring::new(cap as u32)).collect();
        let inboxes = PerCpu::new(ncpus, |_| Inbox {
            pending: CachePadded::new(Default::default()),
            park: CachePadded::new(Futex::new(RUNNING)),
            core: CachePadded::new(AtomicU32::new(NO_CORE)),
            attached: AtomicBool::new(false),
            foreign: ArrayQueue::new(config.foreign_capacity.max(1)),
        })
        .map_err(|_| BuildError::BadCpuCount(ncpus))?;
        let stats = PerCpu::new(ncpus, |_| StatsSlot::default())
            .map_err(|_| BuildError::BadCpuCount(ncpus))?;
        Ok(Crossbar {
            shared: Arc::new(Shared {
                ncpus,
                nwords: ncpus.div_ceil(64),
                cap: cap as u32,
                rings,
                inboxes,
                stats,
                foreign_stats: StatsSlot::default(),
                shutdown: AtomicBool::new(false),
            }),
        })
    }

    /// The number of CPUs.
    pub fn ncpus(&self) -> usize {
        self.shared.ncpus
    }

    /// The FIFO capacity.
    pub fn fifo_capacity(&self) -> usize {
        self.shared.cap as usize
    }

    /// Attaches the calling thread as CPU `cpu`. The thread then sends, polls and
    /// parks through the returned handle; dropping it detaches. Fails if the CPU does
    /// not exist, is attached already, the thread already runs as a CPU, or the
    /// crossbar is shut down.
    pub fn attach(&self, cpu: usize) -> Result<CpuHandle, AttachError> {
        let sh = &self.shared;
        if sh.shutdown.load(Ordering::Acquire) {
            return Err(AttachError::Shutdown);
        }
        let id = CpuId::checked(cpu, sh.ncpus).map_err(AttachError::OutOfRange)?;
        let inbox = sh.inbox(id);
        if inbox
            .attached
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(AttachError::AlreadyAttached(id));
        }
        let guard = match set_current_cpu(id) {
            Ok(g) => g,
            Err(e) => {
                inbox.attached.store(false, Ordering::Release);
                return Err(AttachError::ThreadIsACpu(e));
            }
        };
        inbox.park.word().store(RUNNING, Ordering::SeqCst);
        note_core(inbox);
        let cpu = Box::new(Cpu {
            shared: self.shared.clone(),
            id,
            depth: Cell::new(0),
            mastering: Cell::new(0),
            deferred_syncs: RefCell::new(Vec::new()),
            has_deferred: Cell::new(false),
            overflow: RefCell::new(Vec::new()),
            overflowed: Cell::new(0),
            _current: guard,
        });
        ATTACHED.with(|p| p.set(&*cpu as *const Cpu));
        ipiq_flag();
        Ok(CpuHandle { cpu })
    }

    /// Sends from a thread that is not a CPU of this crossbar (a program's `main`, a
    /// test). The entry goes through the target's bounded MPSC foreign inbox and
    /// wakes the target if it is parked. Fails with [`SendError::Busy`] when that
    /// inbox is full. There is no sequence number: use a reply mechanism of your own
    /// to learn completion.
    pub fn send_foreign(
        &self,
        target: usize,
        func: IpiFn,
        a1: usize,
        a2: usize,
    ) -> Result<(), SendError> {
        let sh = &*self.shared;
        let target = CpuId::checked(target, sh.ncpus).map_err(SendError::OutOfRange)?;
        if sh.shutdown.load(Ordering::Acquire) {
            return Err(SendError::Shutdown);
        }
        let inbox = sh.inbox(target);
        inbox.foreign.push(Slot { func, a1, a2 }).map_err(|_| SendError::Busy(target))?;
        // A CPU never receives FIFO traffic from itself (self-sends are direct
        // calls), so its own bit in its own mask flags the foreign inbox.
        let bit = target.index();
        inbox.pending[bit / 64].fetch_or(1 << (bit % 64), Ordering::SeqCst);
        dfly_core::sync::atomic::fence(Ordering::SeqCst);
        bump_shared(&sh.foreign_stats.sent, 1);
        if sh.kick(target) {
            bump_shared(&sh.foreign_stats.wakeups, 1);
        } else {
            bump_shared(&sh.foreign_stats.avoided_wakeups, 1);
        }
        Ok(())
    }

    /// Shuts the crossbar down: further sends and attaches fail, every wait returns
    /// [`WaitError::Shutdown`], and parked CPUs wake. Entries still queued are
    /// dropped without running when the last handle goes. Idempotent.
    pub fn shutdown(&self) {
        let sh = &*self.shared;
        sh.shutdown.store(true, Ordering::SeqCst);
        for inbox in sh.inboxes.iter() {
            inbox.park.word().store(WAKING, Ordering::SeqCst);
            inbox.park.wake_all();
        }
    }

    /// True after [`shutdown`](Self::shutdown).
    pub fn is_shutdown(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }

    /// True if a thread is attached as `cpu`.
    pub fn is_attached(&self, cpu: usize) -> bool {
        CpuId::checked(cpu, self.shared.ncpus).is_ok_and(|c| self.shared.is_attached(c))
    }

    /// One CPU's statistics.
    pub fn stats(&self, cpu: usize) -> Option<CpuStats> {
        let c = CpuId::checked(cpu, self.shared.ncpus).ok()?;
        Some(self.shared.stats[c].snapshot())
    }

    /// Statistics of sends made from foreign threads.
    pub fn foreign_stats(&self) -> CpuStats {
        self.shared.foreign_stats.snapshot()
    }

    /// The sum over all CPUs and foreign senders.
    pub fn total_stats(&self) -> CpuStats {
        let mut t = self.foreign_stats();
        for s in self.shared.stats.iter() {
            t.add(&s.snapshot());
        }
        t
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn debug_state(&self) -> String {
        let sh = &*self.shared;
        let mut o = String::new();
        for t in CpuId::all(sh.ncpus) {
            let inbox = sh.inbox(t);
            o += &format!(
                "{t}: park={} bits={:#x} rings:",
                inbox.park.word().load(Ordering::SeqCst),
                inbox.pending[0].load(Ordering::SeqCst)
            );
            for s in CpuId::all(sh.ncpus) {
                let (w, r, x) = sh.ring(t, s).indices();
                o += &format!(" [{s} w{w} r{r} x{x}]");
            }
            o += "\n";
        }
        o
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn ring_indices(&self, target: CpuId, source: CpuId) -> (u32, u32, u32) {
        self.shared.ring(target, source).indices()
    }

    /// True if the process uses the asymmetric barrier (membarrier) fast path.
    pub fn uses_asymmetric_barriers(&self) -> bool {
        barrier::is_asymmetric()
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static ATTACHED: Cell<*const Cpu> = const { Cell::new(core::ptr::null()) };
}
#[cfg(loom)]
loom::thread_local! {
    static ATTACHED: Cell<*const Cpu> = Cell::new(core::ptr::null());
}

/// Runs `f` with the CPU this thread is attached as, if any (`None` on a thread with
/// no live [`CpuHandle`]). For code below the scheduler that wants to send an IPI
/// when, and only when, it runs on a CPU, such as an allocator notifying the CPU that
/// owns memory it freed.
///
/// ```
/// let xb = dfly_ipi::Crossbar::new(2).unwrap();
/// assert!(dfly_ipi::with_attached(|cpu| cpu.id()).is_none());
/// let h = xb.attach(1).unwrap();
/// assert_eq!(dfly_ipi::with_attached(|cpu| cpu.id().index()), Some(1));
/// drop(h);
/// ```
pub fn with_attached<R>(f: impl FnOnce(&Cpu) -> R) -> Option<R> {
    let p = ATTACHED.with(|p| p.get());
    if p.is_null() {
        return None;
    }
    // SAFETY: ATTACHED points at the Cpu of this thread's live handle and is cleared in
    // the handle's Drop before the Cpu is freed; the handle is not Send, so it is on
    // this thread and outlives this call (as in `run_deferred_ipiq`).
    Some(f(unsafe { &*p }))
}

fn ipiq_flag() -> ReqFlag {
    static FLAG: std::sync::OnceLock<ReqFlag> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| {
        ReqFlag::register("ipiq", run_deferred_ipiq).expect("dfly-ipi registers one request flag")
    })
}

fn run_deferred_ipiq() {
    let p = ATTACHED.with(|p| p.get());
    if !p.is_null() {
        // SAFETY: ATTACHED is set to the boxed Cpu of this thread's live handle and
        // cleared in the handle's Drop before the box is freed; the handle is not
        // Send, so it is on this thread and outlives this call.
        let cpu = unsafe { &*p };
        cpu.poll();
    }
}

/// A completed-send marker returned by sends; pass it to [`Cpu::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seq {
    target: CpuId,
    source: CpuId,
    index: u32,
    direct: bool,
}

impl Seq {
    /// The CPU the message went to.
    pub fn target(&self) -> CpuId {
        self.target
    }

    /// True if the send was a direct call (to self) and is already complete.
    pub fn is_direct(&self) -> bool {
        self.direct
    }
}

/// The handle of an attached CPU. Derefs to [`Cpu`]. Not `Send`: it belongs to the
/// thread that attached. Dropping it detaches the CPU (queued entries stay queued
/// for the next thread that attaches as this CPU).
pub struct CpuHandle {
    cpu: Box<Cpu>,
}

impl core::ops::Deref for CpuHandle {
    type Target = Cpu;
    fn deref(&self) -> &Cpu {
        &self.cpu
    }
}

impl fmt::Debug for CpuHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.cpu, f)
    }
}

impl Drop for CpuHandle {
    fn drop(&mut self) {
        ATTACHED.with(|p| p.set(core::ptr::null()));
        self.cpu.shared.inbox(self.cpu.id).attached.store(false, Ordering::Release);
    }
}

/// An attached CPU: what a thread uses to send, poll, wait and park, and what IPI
/// callbacks receive.
pub struct Cpu {
    pub(crate) shared: Arc<Shared>,
    id: CpuId,
    depth: Cell<u32>,
    pub(crate) mastering: Cell<u32>,
    pub(crate) deferred_syncs: RefCell<Vec<Arc<SyncState>>>,
    pub(crate) has_deferred: Cell<bool>,
    /// Entries sent from inside IPI callbacks that found their FIFO full, per
    /// target, in send order (see "FIFO full" in the module docs).
    overflow: RefCell<Vec<VecDeque<Slot>>>,
    overflowed: Cell<u32>,
    _current: CurrentCpuGuard,
}

impl fmt::Debug for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cpu").field("id", &self.id).field("depth", &self.depth.get()).finish()
    }
}

/// How a send signals its target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Active,
    Passive,
}

/// Tells the CPU that owns `inbox` that CPU `me` queued work for it (after the
/// entry is published): sets `me`'s pending bit if it is clear and, for an active
/// send, wakes the target if it is parked. Counts into `st`, `me`'s statistics.
#[inline(always)]
fn signal_inbox(inbox: &Inbox, me: CpuId, st: &StatsSlot, mode: Mode) {
    light();
    // `% PENDING_WORDS` changes nothing (a CpuId is below MAX_CPUS), but lets the
    // compiler drop the range check.
    let (w, bit) = ((me.index() / 64) % PENDING_WORDS, 1u64 << (me.index() % 64));
    let word = &inbox.pending[w];
    if word.load(Ordering::Relaxed) & bit == 0 {
        word.fetch_or(bit, Ordering::SeqCst);
        light();
    }
    if mode == Mode::Passive {
        bump(&st.passive, 1);
        return;
    }
    let park = inbox.park.word();
    if park.load(Ordering::Relaxed) == PARKED
        && park.compare_exchange(PARKED, WAKING, Ordering::SeqCst, Ordering::Relaxed).is_ok()
    {
        inbox.park.wake_one();
        bump(&st.wakeups, 1);
    } else {
        bump(&st.avoided_wakeups, 1);
    }
}

impl Cpu {
    /// This CPU's id.
    #[inline]
    pub fn id(&self) -> CpuId {
        self.id
    }

    /// The number of CPUs in the crossbar.
    #[inline]
    pub fn ncpus(&self) -> usize {
        self.shared.ncpus
    }

    /// A handle to the crossbar.
    pub fn crossbar(&self) -> Crossbar {
        Crossbar { shared: self.shared.clone() }
    }

    /// This CPU's statistics.
    pub fn stats(&self) -> CpuStats {
        self.shared.stats[self.id].snapshot()
    }

    /// Entries sent from callbacks still held in this CPU's overflow queues.
    pub fn overflowed(&self) -> u32 {
        self.overflowed.get()
    }

    /// Nesting depth of IPI callbacks on this CPU (0 outside callbacks).
    pub fn ipi_depth(&self) -> u32 {
        self.depth.get()
    }

    #[inline(always)]
    pub(crate) fn my_stats(&self) -> &StatsSlot {
        // SAFETY: `self.id` was checked against `ncpus`, the length of `stats`,
        // when this CPU attached.
        unsafe { self.shared.stats.get_unchecked(self.id) }
    }

    /// This CPU's inbox.
    #[inline(always)]
    fn my_inbox(&self) -> &Inbox {
        // SAFETY: `self.id` was checked against `ncpus`, the length of `inboxes`,
        // when this CPU attached.
        unsafe { self.shared.inboxes.get_unchecked(self.id) }
    }

    fn check_target(&self, target: CpuId) -> Result<(), SendError> {
        CpuId::checked(target.index(), self.shared.ncpus).map(|_| ()).map_err(SendError::OutOfRange)
    }

    /// Sends `func(a1, a2)` to run on `target`, waking it if it is parked. A send to
    /// this CPU is a direct call. Returns a [`Seq`] for [`wait`](Self::wait).
    #[inline]
    pub fn send(&self, target: CpuId, func: IpiFn, a1: usize, a2: usize) -> Result<Seq, SendError> {
        self.send_fast(target, func, a1, a2)
    }

    /// Queues `func(a1, a2)` for `target` without waking it: it runs at the target's
    /// next poll or tick. Becomes an active send if the FIFO is at least 1/4 full.
    #[inline]
    pub fn send_passive(
        &self,
        target: CpuId,
        func: IpiFn,
        a1: usize,
        a2: usize,
    ) -> Result<Seq, SendError> {
        self.send_slot(target, Slot { func, a1, a2 }, Mode::Passive)
    }

    /// Sends to every CPU in `mask`, starting after this CPU and wrapping (this CPU,
    /// if in the mask, runs last, as a direct call). Stops at the first error.
    pub fn send_mask(
        &self,
        mask: CpuMask,
        func: IpiFn,
        a1: usize,
        a2: usize,
    ) -> Result<(), SendError> {
        for c in mask.iter_after(self.id) {
            self.send(c, func, a1, a2)?;
        }
        Ok(())
    }

    /// Sends `func(a1, a2)` for every pair in `args`, in order, signalling the
    /// target once for each run of entries that fit in its FIFO (once for a batch
    /// that fits: one pending-bit check and one park-word check instead of one per
    /// message). The entries of a run are written before any of them is published.
    /// Waits for space as [`send`](Self::send) does. Returns the [`Seq`] of the
    /// last entry (a direct, complete `Seq` if `args` is empty). From inside IPI
    /// callbacks, or to this CPU, it is a loop of ordinary sends.
    ///
    /// On an error (shutdown, or the target detached while the sender waited for
    /// space) the entries queued before it stay queued and run.
    pub fn send_batch(
        &self,
        target: CpuId,
        func: IpiFn,
        args: &[(usize, usize)],
    ) -> Result<Seq, SendError> {
        let sh = &*self.shared;
        self.check_target(target)?;
        let mut last = Seq { target, source: self.id, index: 0, direct: true };
        if target == self.id || self.depth.get() > 0 || self.overflowed.get() > 0 {
            for &(a1, a2) in args {
                last = self.send(target, func, a1, a2)?;
            }
            return Ok(last);
        }
        if sh.shutdown.load(Ordering::Relaxed) {
            return Err(SendError::Shutdown);
        }
        let ring = sh.ring(target, self.id);
        let st = self.my_stats();
        let mut unsignalled = 0u64;
        let mut rest = args;
        while !rest.is_empty() {
            let (k, index) = ring.try_push_batch(func, rest, sh.cap / 2);
            if k == 0 {
                // Let the target see what is queued before waiting on it.
                bump(&st.sent, unsignalled);
                unsignalled = 0;
                self.signal(target, Mode::Active);
                bump(&st.fifo_full, 1);
                self.wait_for_space(target, ring, sh.cap / 4)?;
                if self.overflowed.get() > 0 {
                    // A callback run during the wait queued a send locally (its
                    // FIFO was full). It was sent before the rest of this batch,
                    // so the rest goes through `send`, which flushes it first.
                    for &(a1, a2) in rest {
                        last = self.send(target, func, a1, a2)?;
                    }
                    return Ok(last);
                }
                continue;
            }
            rest = &rest[k..];
            unsignalled += k as u64;
            last = Seq { target, source: self.id, index, direct: false };
        }
        if unsignalled > 0 {
            bump(&st.sent, unsignalled);
            self.signal(target, Mode::Active);
        }
        Ok(last)
    }

    /// Sends a boxed closure (the typed layer: one allocation per message). On
    /// failure the closure is dropped unrun and the error returned.
    pub fn send_boxed(
        &self,
        target: CpuId,
        f: Box<dyn FnOnce(&Cpu) + Send>,
    ) -> Result<Seq, SendError> {
        let raw = Box::into_raw(Box::new(f)) as usize;
        self.send(target, run_boxed, raw, 0).inspect_err(|_| {
            // SAFETY: the send failed, so the entry was never queued; we still own
            // the box we leaked above.
            drop(unsafe { Box::from_raw(raw as *mut Box<dyn FnOnce(&Cpu) + Send>) });
        })
    }

    /// The active send's common case, kept small so the entry's fields stay in
    /// registers: another CPU, no overflow queued, room in the FIFO (below half
    /// full at top level; inside a callback, the reserved upper part too, as in
    /// [`send_slot`](Self::send_slot)). Everything else goes to `send_slot`.
    #[inline]
    fn send_fast(
        &self,
        target: CpuId,
        func: IpiFn,
        a1: usize,
        a2: usize,
    ) -> Result<Seq, SendError> {
        // Everything the fast path reads from `self` is read once, into locals: the
        // stores a send makes (the slot, the counters) could alias `self` as far as
        // the compiler knows, and it would otherwise load these again after each.
        let sh: &Shared = &self.shared;
        let me = self.id;
        if target.index() < sh.ncpus
            && target != me
            && self.overflowed.get() == 0
            && !sh.shutdown.load(Ordering::Relaxed)
        {
            let limit = if self.depth.get() == 0 { sh.cap / 2 } else { sh.cap - 3 };
            // SAFETY: `target` was checked against `ncpus` above, and `me` was
            // checked when this CPU attached.
            let ring = unsafe { sh.ring_unchecked(target, me) };
            if let Some(index) = ring.try_push(func, a1, a2, limit) {
                // SAFETY: `me` was checked against `ncpus` (the length of `stats`
                // and of `inboxes`) when this CPU attached, and `target` above.
                let (st, inbox) =
                    unsafe { (sh.stats.get_unchecked(me), sh.inboxes.get_unchecked(target)) };
                bump(&st.sent, 1);
                signal_inbox(inbox, me, st, Mode::Active);
                return Ok(Seq { target, source: me, index, direct: false });
            }
        }
        self.send_slot(target, Slot { func, a1, a2 }, Mode::Active)
    }

    #[inline(never)]
    fn send_slot(&self, target: CpuId, slot: Slot, mode: Mode) -> Result<Seq, SendError> {
        let sh = &*self.shared;
        self.check_target(target)?;
        if target == self.id {
            bump(&self.my_stats().self_calls, 1);
            self.dispatch(slot);
            return Ok(Seq { target, source: self.id, index: 0, direct: true });
        }
        if sh.shutdown.load(Ordering::Relaxed) {
            return Err(SendError::Shutdown);
        }
        let ring = sh.ring(target, self.id);
        let cap = sh.cap;
        let st = self.my_stats();
        let mut mode = mode;
        if mode == Mode::Passive
            && ring.source_fill(false) >= cap / 4
            && ring.source_fill(true) >= cap / 4
        {
            mode = Mode::Active;
            bump(&st.passive_promoted, 1);
        }
        let index = if self.depth.get() == 0 {
            // Top level: earlier overflow to this target goes first (FIFO order),
            // then wait for space if needed. Waiting is safe here: the callbacks it
            // runs never block. They may queue sends of their own in the overflow
            // (if the FIFO is full); those were sent first, so they are flushed
            // again before the push.
            loop {
                if self.overflowed.get() > 0 {
                    self.flush_overflow_to(target, true)?;
                }
                if let Some(i) = ring.try_push_slot(slot, cap / 2) {
                    break i;
                }
                bump(&st.fifo_full, 1);
                self.wait_for_space(target, ring, cap / 4)?;
            }
        } else {
            // Inside a callback: never block. Use the reserved upper part of the
            // FIFO; past that, queue locally in order and let later polls flush.
            let queued = self.overflowed.get() > 0 && self.overflow_len(target) > 0;
            match if queued { None } else { ring.try_push_slot(slot, cap - 3) } {
                Some(i) => i,
                None => {
                    bump(&st.fifo_full, 1);
                    let i = ring.next_index().wrapping_add(self.overflow_len(target) as u32 + 1);
                    self.push_overflow(target, slot);
                    bump(&st.sent, 1);
                    return Ok(Seq { target, source: self.id, index: i, direct: false });
                }
            }
        };
        bump(&st.sent, 1);
        self.signal(target, mode);
        Ok(Seq { target, source: self.id, index, direct: false })
    }

    fn overflow_len(&self, target: CpuId) -> usize {
        self.overflow.borrow().get(target.index()).map_or(0, VecDeque::len)
    }

    fn push_overflow(&self, target: CpuId, slot: Slot) {
        let mut ov = self.overflow.borrow_mut();
        if ov.len() < self.ncpus() {
            ov.resize_with(self.ncpus(), VecDeque::new);
        }
        ov[target.index()].push_back(slot);
        self.overflowed.set(self.overflowed.get() + 1);
    }

    /// Moves overflow entries for `target` into its FIFO in order; with `block`,
    /// waits for space until all are in (top level only).
    fn flush_overflow_to(&self, target: CpuId, block: bool) -> Result<(), SendError> {
        let sh = &*self.shared;
        let ring = sh.ring(target, self.id);
        let limit = if self.depth.get() == 0 { sh.cap / 2 } else { sh.cap - 3 };
        loop {
            let mut moved = 0u32;
            loop {
                let next =
                    self.overflow.borrow().get(target.index()).and_then(|q| q.front().copied());
                let Some(slot) = next else { break };
                if ring.try_push_slot(slot, limit).is_none() {
                    break;
                }
                if let Some(q) = self.overflow.borrow_mut().get_mut(target.index()) {
                    q.pop_front();
                }
                self.overflowed.set(self.overflowed.get() - 1);
                moved += 1;
            }
            if moved > 0 {
                self.signal(target, Mode::Active);
            }
            if !block || self.overflow_len(target) == 0 {
                return Ok(());
            }
            bump(&self.my_stats().fifo_full, 1);
            self.wait_for_space(target, ring, sh.cap / 4)?;
        }
    }

    /// Non-blocking flush of every target's overflow.
    fn flush_overflow(&self) {
        if self.overflowed.get() == 0 {
            return;
        }
        for t in CpuId::all(self.ncpus()) {
            if self.overflow_len(t) > 0 {
                let _ = self.flush_overflow_to(t, false);
            }
        }
    }

    /// True if some overflow entry could now move into its FIFO.
    fn overflow_can_move(&self) -> bool {
        if self.overflowed.get() == 0 {
            return false;
        }
        let sh = &*self.shared;
        CpuId::all(self.ncpus())
            .any(|t| self.overflow_len(t) > 0 && sh.ring(t, self.id).source_fill(true) < sh.cap / 2)
    }

    /// The sender's half of the handshake after publishing an entry.
    #[inline(always)]
    fn signal(&self, target: CpuId, mode: Mode) {
        signal_inbox(self.shared.inbox(target), self.id, self.my_stats(), mode);
    }

    fn wait_for_space(&self, target: CpuId, ring: &Ring, low: u32) -> Result<(), SendError> {
        let sh = &*self.shared;
        // A target awake on another core is draining, and room is a moment away:
        // spin and take the first free slot. Parking here would cost a heavy barrier
        // and two syscalls per FIFO-full event (measured: a stream whose consumer
        // polls slightly slower than its producer sends fell from ~18 to ~8 Mmsg/s).
        // The spin stops when the target makes no progress (its published read index
        // does not move) for SPIN_WINDOW, or is parked; and it never starts when the
        // target last ran on this very core (oversubscribed): there, spinning only
        // burns the time slice the target needs.
        let same_core = !dfly_core::sync::LOOM && self.shares_core_with(target);
        if !dfly_core::sync::LOOM && !same_core {
            let high = sh.cap / 2;
            let park = sh.inbox(target).park.word();
            let mut seen = ring.published();
            let mut stalled_since: Option<Instant> = None;
            let mut spins = 0u32;
            loop {
                if ring.source_fill(true) <= high {
                    return Ok(());
                }
                if self.process_while_waiting() > 0 {
                    continue;
                }
                let now = ring.published();
                if now != seen {
                    seen = now;
                    stalled_since = None;
                }
                spins = spins.wrapping_add(1);
                if spins % 64 == 0 {
                    if park.load(Ordering::Relaxed) != RUNNING {
                        break;
                    }
                    match stalled_since {
                        None => stalled_since = Some(Instant::now()),
                        Some(t) if t.elapsed() > SPIN_WINDOW => break,
                        Some(_) => {}
                    }
                }
                core::hint::spin_loop();
            }
        }
        // The target may be asleep with only passive entries queued: make sure it
        // is awake to drain.
        if sh.kick(target) {
            bump(&self.my_stats().wakeups, 1);
        }
        // On the target's own core, the backoff spin before parking only delays the
        // target too: park at once.
        let cond = || ring.source_fill(true) <= low;
        self.wait_until_spin(Some(ring), Some(target), !same_core, &cond).map_err(|e| match e {
            WaitError::Shutdown => SendError::Shutdown,
            _ => SendError::Busy(target),
        })
    }

    /// True if `target`'s thread last ran on the core this thread runs on now (or
    /// either is unknown and the crossbar has more CPUs than the process has cores,
    /// so sharing is likely).
    fn shares_core_with(&self, target: CpuId) -> bool {
        let theirs = self.shared.inbox(target).core.load(Ordering::Relaxed);
        match (theirs, dfly_core::affinity::current_core()) {
            (NO_CORE, _) | (_, None) => self.ncpus() > dfly_core::affinity::available_cores(),
            (t, Some(mine)) => t as usize == mine,
        }
    }

    /// True if every other attached CPU's thread last ran on the core this thread
    /// runs on now (so none of them can send while this one spins). False when the
    /// core is unknown.
    fn others_share_my_core(&self) -> bool {
        if dfly_core::sync::LOOM {
            return false;
        }
        let Some(mine) = dfly_core::affinity::current_core() else { return false };
        let sh = &*self.shared;
        CpuId::all(sh.ncpus)
            .filter(|&t| t != self.id && sh.is_attached(t))
            .all(|t| sh.inbox(t).core.load(Ordering::Relaxed) == mine as u32)
    }

    /// Runs one entry as an IPI callback on this CPU.
    #[inline(always)]
    fn dispatch(&self, slot: Slot) {
        self.depth.set(self.depth.get() + 1);
        struct Depth<'a>(&'a Cell<u32>);
        impl Drop for Depth<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() - 1);
            }
        }
        let _d = Depth(&self.depth);
        (slot.func)(self, slot.a1, slot.a2);
    }

    /// True if some sender has flagged work for this CPU (one load per 64 CPUs:
    /// a single word up to 64 CPUs).
    #[inline]
    pub fn has_pending(&self) -> bool {
        let sh = &*self.shared;
        let inbox = sh.inbox(self.id);
        inbox.pending[..sh.nwords].iter().any(|w| w.load(Ordering::Relaxed) != 0)
            || self.has_deferred.get()
            || self.overflowed.get() > 0
    }

    /// True if source `src`'s FIFO (or, for this CPU's own index, the foreign
    /// inbox) holds an entry.
    #[inline]
    fn source_has_work(&self, src: usize) -> bool {
        let sh = &*self.shared;
        if src != self.id.index() {
            let s = CpuId::checked(src, sh.ncpus).unwrap_or(CpuId::ZERO);
            // SAFETY: `s` is below `ncpus` (checked just above), and so is this
            // CPU's id (checked when it attached).
            unsafe { sh.ring_unchecked(self.id, s) }.has_entries()
        } else {
            !self.my_inbox().foreign.is_empty()
        }
    }

    /// True if a poll would find something to run now: an entry in a flagged FIFO
    /// or the foreign inbox, deferred cpusync work, or queued overflow. Sticky
    /// bits stay set while a stream pauses, so a busy poller that finds nothing
    /// pays this scan (the mask word, then two loads per flagged FIFO) rather
    /// than the whole of `process` (about 125 instructions, by callgrind).
    #[inline]
    fn ready(&self) -> bool {
        if self.has_deferred.get() || self.overflowed.get() > 0 {
            return true;
        }
        let sh = &*self.shared;
        let inbox = self.my_inbox();
        for w in 0..sh.nwords {
            let mut bits = inbox.pending[w].load(Ordering::Relaxed);
            while bits != 0 {
                let src = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if self.source_has_work(src) {
                    return true;
                }
            }
        }
        false
    }

    /// Runs pending IPIs. Inside a critical section it only sets the IPIQ request
    /// flag, and the work runs when the outermost section ends. Returns how many
    /// entries ran.
    #[inline]
    pub fn poll(&self) -> u32 {
        if !self.ready() {
            return 0;
        }
        if crit::in_critical() {
            ipiq_flag().request();
            return 0;
        }
        self.process()
    }

    /// The periodic tick: picks up passive entries. Same as [`poll`](Self::poll).
    pub fn tick(&self) -> u32 {
        self.poll()
    }

    /// Drains every flagged FIFO and the foreign inbox once, callbacks inside a
    /// critical section.
    fn process(&self) -> u32 {
        let sh = &*self.shared;
        let inbox = self.my_inbox();
        let mut total = 0u32;
        {
            let _cs = crit::crit_enter();
            for w in 0..sh.nwords {
                let mut bits = inbox.pending[w].load(Ordering::Acquire);
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let src = w * 64 + b;
                    if src != self.id.index() {
                        let s = CpuId::checked(src, sh.ncpus).unwrap_or(CpuId::ZERO);
                        // SAFETY: as in `source_has_work`.
                        let ring = unsafe { sh.ring_unchecked(self.id, s) };
                        self.depth.set(self.depth.get() + 1);
                        let n = {
                            struct Depth<'a>(&'a Cell<u32>);
                            impl Drop for Depth<'_> {
                                fn drop(&mut self) {
                                    self.0.set(self.0.get() - 1);
                                }
                            }
                            let _d = Depth(&self.depth);
                            ring.drain(self)
                        };
                        if n > 0 {
                            total += n;
                            light();
                            if ring.take_waiting() {
                                sh.kick(s);
                            }
                        }
                    } else {
                        let mut budget = inbox.foreign.len();
                        while budget > 0 {
                            budget -= 1;
                            match inbox.foreign.pop() {
                                Some(slot) => {
                                    self.dispatch(slot);
                                    total += 1;
                                }
                                None => break,
                            }
                        }
                    }
                }
            }
        }
        if self.has_deferred.get() {
            crate::cpusync::run_deferred(self);
        }
        self.flush_overflow();
        if total > 0 {
            bump(&self.my_stats().received, u64::from(total));
        }
        total
    }

    /// Runs incoming work while this CPU waits for something (a full FIFO, a
    /// completion, a cpusync): ignores critical sections, bounded by [`MAX_NEST`].
    pub(crate) fn process_while_waiting(&self) -> u32 {
        if self.depth.get() >= MAX_NEST || !self.has_pending() {
            return 0;
        }
        self.process()
    }

    /// The going-idle step: clear sticky bits of empty FIFOs, optionally announce
    /// `PARKED`, heavy barrier, re-check. Returns true if nothing is pending and
    /// `cond` is false (so the CPU may sleep); on false with `parking`, the park word
    /// is back to `RUNNING`.
    fn quiesce(&self, parking: bool, cond: &dyn Fn() -> bool) -> bool {
        let sh = &*self.shared;
        let inbox = sh.inbox(self.id);
        let mut cleared = [0u64; PENDING_WORDS];
        let has_work = |src: usize| self.source_has_work(src);
        let mut busy = false;
        for (w, (word, slot)) in
            inbox.pending.iter().zip(cleared.iter_mut()).take(sh.nwords).enumerate()
        {
            let bits = word.load(Ordering::Acquire);
            let mut b = bits;
            while b != 0 && !busy {
                let i = b.trailing_zeros() as usize;
                b &= b - 1;
                busy = has_work(w * 64 + i);
            }
            if busy {
                break;
            }
            if bits != 0 {
                word.fetch_and(!bits, Ordering::SeqCst);
                *slot = bits;
            }
        }
        if !busy {
            if parking {
                inbox.park.word().store(PARKED, Ordering::SeqCst);
                bump(&self.my_stats().parks, 1);
            }
            heavy();
            for (w, &bits) in cleared.iter().enumerate().take(sh.nwords) {
                let mut b = bits;
                while b != 0 {
                    let i = b.trailing_zeros() as usize;
                    b &= b - 1;
                    if has_work(w * 64 + i) {
                        inbox.pending[w].fetch_or(1 << i, Ordering::SeqCst);
                        busy = true;
                    }
                }
                busy |= inbox.pending[w].load(Ordering::SeqCst) != 0;
            }
            for w in cleared.len().min(sh.nwords)..sh.nwords {
                busy |= inbox.pending[w].load(Ordering::SeqCst) != 0;
            }
            busy |= cond()
                || sh.shutdown.load(Ordering::SeqCst)
                || crate::cpusync::any_released(self)
                || self.overflow_can_move();
        }
        if busy && parking {
            inbox.park.word().store(RUNNING, Ordering::SeqCst);
        }
        !busy
    }

    /// Sleeps until an IPI arrives, `timeout` passes, or the crossbar shuts down.
    /// Returns false at once, without sleeping, if work is already pending. Does not
    /// run anything: call [`poll`](Self::poll) afterwards.
    pub fn park(&self, timeout: Option<Duration>) -> bool {
        self.park_until(timeout, &|| false)
    }

    pub(crate) fn park_until(&self, timeout: Option<Duration>, cond: &dyn Fn() -> bool) -> bool {
        let sh = &*self.shared;
        // FIFOs holding back our overflow: ask their targets to wake us on progress.
        let marked: Vec<CpuId> = if self.overflowed.get() > 0 {
            CpuId::all(self.ncpus()).filter(|&t| self.overflow_len(t) > 0).collect()
        } else {
            Vec::new()
        };
        for &t in &marked {
            sh.ring(t, self.id).set_waiting();
        }
        let slept = self.quiesce(true, cond);
        if slept {
            let inbox = sh.inbox(self.id);
            inbox.park.wait(PARKED, timeout);
            inbox.park.word().store(RUNNING, Ordering::SeqCst);
            note_core(inbox);
        }
        for &t in &marked {
            sh.ring(t, self.id).clear_waiting();
        }
        slept
    }

    /// The idle loop step: poll; if nothing ran, spin briefly (polling), then park
    /// until work arrives or `timeout` passes, then poll again. Returns how many
    /// entries ran. Never calls `sched_yield`.
    pub fn poll_or_park(&self, timeout: Option<Duration>) -> u32 {
        let n = self.poll();
        if n > 0 {
            return n;
        }
        // Spinning lets a sender on another core reach us without a wake syscall;
        // when every other CPU last ran on this very core, it only delays them.
        if !self.others_share_my_core() {
            let mut b = Backoff::new();
            while !b.is_completed() {
                b.spin();
                if self.has_pending() {
                    return self.poll();
                }
            }
        }
        self.park(timeout);
        self.poll()
    }

    /// Waits until `cond` holds, running incoming IPIs meanwhile; parks after a
    /// bounded spin. `ring` (a FIFO from this CPU) gets its `waiting` mark while
    /// parked so its target wakes us; `target` must stay attached.
    pub(crate) fn wait_until(
        &self,
        ring: Option<&Ring>,
        target: Option<CpuId>,
        cond: &dyn Fn() -> bool,
    ) -> Result<(), WaitError> {
        self.wait_until_spin(ring, target, true, cond)
    }

    /// [`wait_until`](Self::wait_until); without `spin`, parks as soon as nothing
    /// is left to run (for a waiter that shares its core with the one it waits on).
    fn wait_until_spin(
        &self,
        ring: Option<&Ring>,
        target: Option<CpuId>,
        spin: bool,
        cond: &dyn Fn() -> bool,
    ) -> Result<(), WaitError> {
        let sh = &*self.shared;
        let mut backoff = Backoff::new();
        loop {
            if cond() {
                return Ok(());
            }
            if sh.shutdown.load(Ordering::Acquire) {
                return Err(WaitError::Shutdown);
            }
            if let Some(t) = target {
                // Re-check the condition after seeing the detach: the target may have
                // finished our work just before it left.
                if !sh.is_attached(t) && !cond() {
                    return Err(WaitError::NotAttached(t));
                }
            }
            if self.process_while_waiting() > 0 {
                backoff.reset();
                continue;
            }
            if spin && !backoff.is_completed() {
                backoff.spin();
                continue;
            }
            if let Some(r) = ring {
                r.set_waiting();
            }
            self.park_until(Some(WAIT_SLICE), cond);
            if let Some(r) = ring {
                r.clear_waiting();
            }
            backoff.reset();
        }
    }

    /// Waits until the send that returned `seq` has completed on its target (its
    /// callback returned), running this CPU's incoming IPIs meanwhile. Fails if the
    /// crossbar shuts down or the target detaches.
    pub fn wait(&self, seq: Seq) -> Result<(), WaitError> {
        if seq.direct {
            return Ok(());
        }
        if seq.source != self.id {
            return Err(WaitError::ForeignSeq);
        }
        let ring = self.shared.ring(seq.target, self.id);
        self.wait_until(Some(ring), Some(seq.target), &|| ring.completed(seq.index))
    }

    /// Returns once every IPI this CPU sent before the call has completed on every
    /// other CPU (a no-op round to each attached CPU, then a wait on each).
    pub fn synchronize_all(&self) -> Result<(), WaitError> {
        let mut seqs = Vec::with_capacity(self.ncpus());
        for c in CpuMask::all(self.ncpus()).iter_after(self.id) {
            if c == self.id {
                continue;
            }
            if !self.shared.is_attached(c) {
                return Err(WaitError::NotAttached(c));
            }
            seqs.push(self.send(c, noop, 0, 0)?);
        }
        for s in seqs {
            self.wait(s)?;
        }
        Ok(())
    }

    /// Sends a closure to `target`, waits for it to run there and returns its
    /// result (typed layer; allocates). Runs directly if `target` is this CPU.
    pub fn call<R: Send + 'static>(
        &self,
        target: CpuId,
        f: impl FnOnce(&Cpu) -> R + Send + 'static,
    ) -> Result<R, WaitError> {
        let out = Arc::new(std::sync::Mutex::new(None));
        let out2 = out.clone();
        let seq = self.send_boxed(
            target,
            Box::new(move |cpu: &Cpu| {
                let r = f(cpu);
                *out2.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            }),
        )?;
        self.wait(seq)?;
        let r = out.lock().unwrap_or_else(|e| e.into_inner()).take();
        r.ok_or(WaitError::Shutdown)
    }
}

/// Records the calling thread's current core in `inbox` (see [`Inbox::core`]).
fn note_core(inbox: &Inbox) {
    let core = dfly_core::affinity::current_core().map_or(NO_CORE, |c| c as u32);
    inbox.core.store(core, Ordering::Relaxed);
}

fn noop(_: &Cpu, _: usize, _: usize) {}

fn run_boxed(cpu: &Cpu, raw: usize, _: usize) {
    // SAFETY: `raw` came from Box::into_raw in `send_boxed`, and each queued entry
    // runs exactly once, so this is the only reconstruction of that box.
    let f = unsafe { Box::from_raw(raw as *mut Box<dyn FnOnce(&Cpu) + Send>) };
    f(cpu);
}
