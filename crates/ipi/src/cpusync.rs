//! cpusync: cross-CPU rendezvous (DragonFly's `lwkt_cpusync_*`).
//!
//! - **interlock**: the master sends a hold request to every other CPU in the mask
//!   and waits until all have acknowledged. Each target then *holds*: it runs
//!   nothing but its own IPI processing (so nested IPIs, including other cpusyncs,
//!   still make progress) until released. After a bounded spin a held target parks;
//!   the release wakes it.
//! - **deinterlock**: the master releases the targets; each runs the function and
//!   acknowledges; the master runs it too if it is in the mask, then waits for all.
//! - **simple** = interlock + deinterlock; **quick** = one phase: run the function on
//!   every CPU in the mask and wait for acknowledgements, without quiescing.
//!
//! # State and who touches it
//! One [`SyncState`] per cpusync, shared by `Arc` (one reference travels in each
//! hold request). `ack1` and `ack2` are sets each target adds its own bit to (phase
//! one: held; phase two: function done); `released` is written once by the master.
//!
//! # Two masters at once
//! A CPU that is itself mastering a cpusync when a hold request arrives acknowledges
//! it at once and *defers* the hold instead of nesting inside it: it keeps waiting
//! for its own targets, and runs the other master's function when that master
//! releases (from its wait loop or its next poll). Nesting instead would let two
//! masters that target each other each hold inside the other's request forever.

use core::fmt;

use dfly_core::crit::{self, CritSection};
use dfly_core::sync::atomic::{AtomicBool, Ordering};
use dfly_core::sync::Arc;
use dfly_core::{AtomicCpuMask, CpuId, CpuMask};

use crate::crossbar::Cpu;
use crate::error::WaitError;
use crate::stats::bump;

/// A cpusync function: runs on each CPU of the mask with the argument given.
pub type SyncFn = fn(&Cpu, usize);

pub(crate) struct SyncState {
    master: CpuId,
    targets: CpuMask,
    ack1: AtomicCpuMask,
    ack2: AtomicCpuMask,
    released: AtomicBool,
    func: SyncFn,
    arg: usize,
}

impl SyncState {
    fn all_acked(&self, set: &AtomicCpuMask) -> bool {
        set.load(Ordering::Acquire).intersection(&self.targets) == self.targets
    }

    fn run_and_ack(&self, cpu: &Cpu) {
        (self.func)(cpu, self.arg);
        self.ack2.set(cpu.id(), Ordering::SeqCst);
        cpu.shared.kick(self.master);
    }
}

fn remote_hold(cpu: &Cpu, raw: usize, _: usize) {
    // SAFETY: `raw` is an `Arc::into_raw` made for this one queued entry in
    // `send_to_targets`; each entry runs once, so we own that reference.
    let st = unsafe { Arc::from_raw(raw as *const SyncState) };
    st.ack1.set(cpu.id(), Ordering::SeqCst);
    cpu.shared.kick(st.master);
    if cpu.mastering.get() > 0 {
        cpu.deferred_syncs.borrow_mut().push(st);
        cpu.has_deferred.set(true);
        return;
    }
    let st2 = st.clone();
    if cpu.wait_until(None, Some(st.master), &move || st2.released.load(Ordering::SeqCst)).is_ok() {
        st.run_and_ack(cpu);
    }
}

fn remote_quick(cpu: &Cpu, raw: usize, _: usize) {
    // SAFETY: as in `remote_hold`.
    let st = unsafe { Arc::from_raw(raw as *const SyncState) };
    st.run_and_ack(cpu);
}

/// Runs deferred holds whose master has released them. Called from `process`.
pub(crate) fn run_deferred(cpu: &Cpu) {
    let ready: Vec<Arc<SyncState>> = {
        let mut list = cpu.deferred_syncs.borrow_mut();
        let (ready, keep): (Vec<_>, Vec<_>) =
            list.drain(..).partition(|s| s.released.load(Ordering::SeqCst));
        *list = keep;
        cpu.has_deferred.set(!list.is_empty());
        ready
    };
    for st in ready {
        st.run_and_ack(cpu);
    }
}

/// True if a deferred hold on this CPU has been released (so it must not park).
pub(crate) fn any_released(cpu: &Cpu) -> bool {
    cpu.has_deferred.get()
        && cpu.deferred_syncs.borrow().iter().any(|s| s.released.load(Ordering::SeqCst))
}

/// An interlocked cpusync: the targets are held until [`deinterlock`](Self::deinterlock)
/// (or drop, which deinterlocks). The master stays in a critical section meanwhile.
pub struct Interlocked<'a> {
    cpu: &'a Cpu,
    state: Arc<SyncState>,
    in_mask: bool,
    done: bool,
    _cs: CritSection,
}

impl fmt::Debug for Interlocked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interlocked")
            .field("master", &self.state.master)
            .field("targets", &self.state.targets)
            .finish()
    }
}

impl Interlocked<'_> {
    /// The CPUs being held (the mask without the master).
    pub fn targets(&self) -> CpuMask {
        self.state.targets
    }

    /// Releases the targets: each runs the function, the master too if it is in
    /// the mask; returns when all have.
    pub fn deinterlock(mut self) -> Result<(), WaitError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), WaitError> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let st = &self.state;
        st.released.store(true, Ordering::SeqCst);
        for t in &st.targets {
            self.cpu.shared.kick(t);
        }
        if self.in_mask {
            (st.func)(self.cpu, st.arg);
        }
        let r = wait_acks(self.cpu, st, Phase::Done);
        self.cpu.mastering.set(self.cpu.mastering.get() - 1);
        r
    }
}

impl Drop for Interlocked<'_> {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Held,
    Done,
}

impl SyncState {
    fn acks(&self, phase: Phase) -> &AtomicCpuMask {
        match phase {
            Phase::Held => &self.ack1,
            Phase::Done => &self.ack2,
        }
    }
}

fn wait_acks(cpu: &Cpu, st: &Arc<SyncState>, phase: Phase) -> Result<(), WaitError> {
    let sh = cpu.shared.clone();
    let st2 = st.clone();
    // The condition also ends the wait if a target detaches (it could never ack).
    let cond =
        move || st2.all_acked(st2.acks(phase)) || st2.targets.iter().any(|t| !sh.is_attached(t));
    cpu.wait_until(None, None, &cond)?;
    if st.all_acked(st.acks(phase)) {
        Ok(())
    } else {
        let missing = st.targets.difference(&st.acks(phase).load(Ordering::Acquire));
        Err(WaitError::NotAttached(missing.first().unwrap_or(st.master)))
    }
}

impl Cpu {
    fn start_sync(
        &self,
        mask: CpuMask,
        func: SyncFn,
        arg: usize,
    ) -> Result<(Arc<SyncState>, bool), WaitError> {
        let n = self.ncpus();
        if let Some(bad) = mask.iter().find(|c| c.index() >= n) {
            return Err(WaitError::NotAttached(bad));
        }
        let mut targets = mask;
        let in_mask = targets.remove(self.id());
        if let Some(t) = targets.iter().find(|&t| !self.shared.is_attached(t)) {
            return Err(WaitError::NotAttached(t));
        }
        let st = Arc::new(SyncState {
            master: self.id(),
            targets,
            ack1: AtomicCpuMask::new(),
            ack2: AtomicCpuMask::new(),
            released: AtomicBool::new(false),
            func,
            arg,
        });
        bump(&self.my_stats().cpusyncs, 1);
        Ok((st, in_mask))
    }

    fn send_to_targets(&self, st: &Arc<SyncState>, f: crate::IpiFn) -> Result<(), WaitError> {
        for t in st.targets.iter_after(self.id()) {
            let raw = Arc::into_raw(st.clone()) as usize;
            if let Err(e) = self.send(t, f, raw, 0) {
                // SAFETY: the send failed, so the entry holding this reference was
                // never queued; reclaim it.
                drop(unsafe { Arc::from_raw(raw as *const SyncState) });
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Holds every other CPU in `mask` (each runs only IPI processing) until the
    /// returned guard deinterlocks, at which point `func(arg)` runs on every CPU of
    /// `mask`, this one included if it is in the mask. Fails if a CPU of the mask is
    /// not attached.
    pub fn cpusync_interlock(
        &self,
        mask: CpuMask,
        func: SyncFn,
        arg: usize,
    ) -> Result<Interlocked<'_>, WaitError> {
        let (st, in_mask) = self.start_sync(mask, func, arg)?;
        let cs = crit::crit_enter();
        self.mastering.set(self.mastering.get() + 1);
        let mut guard = Interlocked { cpu: self, state: st.clone(), in_mask, done: false, _cs: cs };
        if let Err(e) =
            self.send_to_targets(&st, remote_hold).and_then(|_| wait_acks(self, &st, Phase::Held))
        {
            // Release whoever is held and report; do not wait for targets that never
            // got the request (they would never acknowledge).
            guard.done = true;
            st.released.store(true, Ordering::SeqCst);
            for t in &st.targets {
                self.shared.kick(t);
            }
            self.mastering.set(self.mastering.get() - 1);
            return Err(e);
        }
        Ok(guard)
    }

    /// Interlock then deinterlock: `func(arg)` runs once on every CPU of `mask`
    /// while the others are held.
    pub fn cpusync_simple(&self, mask: CpuMask, func: SyncFn, arg: usize) -> Result<(), WaitError> {
        self.cpusync_interlock(mask, func, arg)?.deinterlock()
    }

    /// One phase: `func(arg)` runs once on every CPU of `mask` (targets are not held
    /// while the others run); returns when all have run it.
    pub fn cpusync_quick(&self, mask: CpuMask, func: SyncFn, arg: usize) -> Result<(), WaitError> {
        let (st, in_mask) = self.start_sync(mask, func, arg)?;
        self.send_to_targets(&st, remote_quick)?;
        if in_mask {
            func(self, arg);
        }
        wait_acks(self, &st, Phase::Done)
    }
}
