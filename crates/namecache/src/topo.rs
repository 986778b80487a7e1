//! Topology maintenance: making, resolving, destroying, relinking, evicting and
//! freeing entries, with the counts and queues the limits need. Everything here runs
//! with the cache's topology mutex held (the `&mut Topo` argument is the proof),
//! except the entry-lock and slot-read helpers, which say so.
//!
//! # Protocol
//! - A slot is written only inside `begin_write`/`end_write` by a mutex holder; the
//!   index changes only under the mutex; readers without it validate what they read
//!   (see `slots`).
//! - An entry is freed (its slot returned to the free list) only by
//!   `Slot::retire_begin` succeeding under the mutex: when it is destroyed and its
//!   last handle went (`reap_locked`), or when it is indexed and nothing refers to
//!   it (`evict_locked`). Freeing drops the reference it held on its parent, which
//!   may free a destroyed parent in turn.
//! - A handle whose drop brings a destroyed entry to no references queues the slot
//!   on `reap_q` rather than taking the mutex (it may be dropped under it); the next
//!   mutex holder frees it.
//! - Negative entries are queued globally and per parent as (slot, sequence), so a
//!   record whose entry changed since is recognised and skipped; eviction passes
//!   are bounded per call.
//!
//! Must never happen: a slot freed while `refs` is non-zero; the negative count
//! differing from the indexed negative entries; an eviction pass longer than its
//! queue.

use std::collections::VecDeque;

use std::sync::Arc;

use dfly_core::sync::atomic::{fence, AtomicU64, Ordering};
use dfly_core::sync::MutexGuard;

use crate::backend::Backend;
use crate::cache::{
    attr_of, kind_code, lock, Cache, Namecache, State, Stripe, OWNED_STRIPES, SHARED_STRIPES,
};
use crate::idmap::{IdMap, IdSet};
use crate::slots::*;
use crate::Errno;

#[derive(Debug, Default)]
struct ParentNeg {
    live: usize,
    q: VecDeque<(u32, u32)>,
}

#[derive(Debug, Default)]
pub(crate) struct Topo {
    next: u32,
    free: Vec<u32>,
    idx: IndexCounts,
    negatives: usize,
    /// Negative entries as (slot, seq when it became negative), oldest first.
    neg_order: VecDeque<(u32, u32)>,
    per_parent: IdMap<u32, ParentNeg>,
    /// Slots that became positive, oldest first (stale records are skipped).
    pos_order: VecDeque<u32>,
}

impl Topo {
    /// Slots handed out so far (every index below is addressable).
    pub(crate) fn next(&self) -> u32 {
        self.next
    }

    /// (resident negatives, indexed entries, bytes held by the eviction queues).
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let queues = self.pos_order.capacity() * 4
            + self.neg_order.capacity() * 8
            + self.per_parent.values().map(|p| p.q.capacity() * 8).sum::<usize>();
        (self.negatives, self.idx.live, queues)
    }
}

/// A mount's backend, borrowed from the cache (the root mount) or counted.
pub(crate) enum BackendRef<'a> {
    Root(&'a dyn Backend),
    Mounted(Arc<dyn Backend>),
}

impl std::ops::Deref for BackendRef<'_> {
    type Target = dyn Backend;

    fn deref(&self) -> &(dyn Backend + 'static) {
        match self {
            BackendRef::Root(b) => *b,
            BackendRef::Mounted(b) => &**b,
        }
    }
}

impl Cache {
    /// A consistent read of slot `idx` (see [`Slot::read_with`]). Under `topo` it
    /// never waits: no other writer can be inside.
    pub(crate) fn snap(&self, idx: u32) -> Snap {
        self.arena.get(idx).read_with(|| drop(lock(&self.topo)))
    }

    /// This thread's counter stripe, and whether this thread is its only writer:
    /// the first [`OWNED_STRIPES`] threads of the process own one each (thread
    /// numbers are never reused); later threads share the rest.
    #[inline]
    pub(crate) fn stripe_of_thread(&self) -> (&Stripe, bool) {
        let id = stripe();
        if id < OWNED_STRIPES {
            (&self.stripes[id], true)
        } else {
            (&self.stripes[OWNED_STRIPES + id % SHARED_STRIPES], false)
        }
    }

    pub(crate) fn stripe(&self) -> &Stripe {
        self.stripe_of_thread().0
    }

    /// Adds `n` to the counter `pick` chooses in this thread's stripe: a plain
    /// load and store when the thread owns the stripe (no locked instruction on
    /// the hit path), an atomic add when it shares one.
    #[inline]
    pub(crate) fn count(&self, pick: impl Fn(&Stripe) -> &AtomicU64, n: u64) {
        let (st, owned) = self.stripe_of_thread();
        let a = pick(st);
        if owned {
            a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        } else {
            a.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn count_restart(&self) {
        self.stripe().restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn state_of(&self, s: &Snap) -> State {
        match s.code() {
            C_NEGATIVE if s.ino as u32 == self.neg_gen.load(Ordering::Acquire) => State::Negative,
            C_NEGATIVE | C_UNRESOLVED | C_FREE => State::Unresolved,
            C_DESTROYED => State::Destroyed,
            _ => attr_of(s).map_or(State::Unresolved, State::Positive),
        }
    }

    /// The topology mutex, after freeing slots whose last handle went away.
    pub(crate) fn topo(&self) -> MutexGuard<'_, Topo> {
        let mut t = lock(&self.topo);
        self.drain_reaps(&mut t);
        t
    }

    pub(crate) fn drain_reaps(&self, t: &mut Topo) {
        let mut q = std::mem::take(&mut *lock(&self.reap_q));
        if q.is_empty() {
            return;
        }
        for &idx in &q {
            self.reap_locked(t, idx);
        }
        // Hand the emptied buffer back (unless more arrived meanwhile), so the
        // next queued reap does not allocate.
        q.clear();
        let mut g = lock(&self.reap_q);
        if g.is_empty() {
            *g = q;
        }
    }

    pub(crate) fn queue_reap(&self, idx: u32) {
        lock(&self.reap_q).push(idx);
        if let Ok(mut t) = self.topo.try_lock() {
            self.drain_reaps(&mut t);
        }
    }

    /// Frees destroyed, unreferenced `idx`, then its parent if that was the last
    /// reference to a destroyed parent, and so on up.
    pub(crate) fn reap_locked(&self, t: &mut Topo, idx: u32) {
        let mut idx = idx;
        loop {
            let s = self.arena.get(idx);
            let m = s.meta.load(Ordering::Relaxed);
            if m & 0xff != C_DESTROYED || m & F_HASHED != 0 {
                return;
            }
            if !s.retire_begin() {
                return;
            }
            let parent = s.parent.load(Ordering::Relaxed);
            s.parent.store(NIL, Ordering::Relaxed);
            s.set_meta(C_FREE, 0, 0);
            s.end_write();
            self.release_slot(t, idx);
            if parent == NIL {
                return;
            }
            let p = self.arena.get(parent);
            if p.refs.fetch_sub(1, Ordering::SeqCst) != 1 {
                return;
            }
            idx = parent;
        }
    }

    pub(crate) fn release_slot(&self, t: &mut Topo, idx: u32) {
        lock(&self.long_names).remove(&idx);
        lock(&self.symlinks).remove(&idx);
        t.free.push(idx);
    }

    /// Makes a new entry (mutex held). `hashed` entries go into the index.
    pub(crate) fn alloc_locked(
        &self,
        t: &mut Topo,
        parent: u32,
        name: &[u8],
        mount: u32,
        st: State,
        hashed: bool,
    ) -> Result<u32, Errno> {
        let idx = match t.free.pop() {
            Some(i) => i,
            None => {
                if t.next >= MAX_SLOTS {
                    return Err(Errno::NoSpc);
                }
                let i = t.next;
                t.next += 1;
                self.arena.ensure(i);
                i
            }
        };
        let s = self.arena.get(idx);
        s.begin_write();
        s.parent.store(parent, Ordering::Relaxed);
        s.mount.store(mount, Ordering::Relaxed);
        s.covered_by.store(0, Ordering::Relaxed);
        s.set_name(name);
        self.write_state(s, st, name.len(), if hashed { F_HASHED } else { 0 });
        s.end_write();
        if name.len() > INLINE {
            lock(&self.long_names).insert(idx, name.into());
        }
        if parent != NIL {
            self.arena.get(parent).refs.fetch_add(1, Ordering::Relaxed);
        }
        if hashed {
            let h = self.index.hash(parent, name);
            self.index.insert(&mut t.idx, h, idx, |i| self.rehash(i));
            self.after_state(t, idx, None, st);
        }
        Ok(idx)
    }

    /// The hash of an indexed slot (mutex held).
    pub(crate) fn rehash(&self, i: u32) -> u64 {
        let s = self.arena.get(i);
        loop {
            let a = self.snap(i);
            if a.len() > INLINE {
                let (p, n) = self.name_of(i);
                return self.index.hash(p, &n);
            }
            let h = self.rehash_snap(i, &a);
            if s.seq.load(Ordering::Acquire) == a.seq {
                return h;
            }
        }
    }

    /// (parent, name) of a slot, consistent with each other.
    pub(crate) fn name_of(&self, idx: u32) -> (u32, Vec<u8>) {
        let s = self.arena.get(idx);
        loop {
            let a = self.snap(idx);
            let name = if a.len() <= INLINE {
                unpack(&a.words, a.len())
            } else {
                match lock(&self.long_names).get(&idx) {
                    Some(n) => n.to_vec(),
                    None => unpack(&a.words, INLINE),
                }
            };
            if s.seq.load(Ordering::Acquire) == a.seq {
                return (a.parent, name);
            }
        }
    }

    pub(crate) fn write_state(&self, s: &Slot, st: State, len: usize, flags: u32) {
        let (code, a) = match st {
            State::Unresolved => (C_UNRESOLVED, None),
            State::Negative => (C_NEGATIVE, None),
            State::Destroyed => (C_DESTROYED, None),
            State::Positive(a) => (kind_code(a.kind), Some(a)),
        };
        s.set_meta(code, len, flags);
        match a {
            Some(a) => {
                s.ino.store(a.ino, Ordering::Relaxed);
                s.size.store(a.size, Ordering::Relaxed);
                s.nlink.store(a.nlink, Ordering::Relaxed);
                s.mode.store(a.mode, Ordering::Relaxed);
            }
            None => {
                let stamp =
                    if code == C_NEGATIVE { self.neg_gen.load(Ordering::Acquire) } else { 0 };
                s.ino.store(u64::from(stamp), Ordering::Relaxed);
                s.size.store(0, Ordering::Relaxed);
                s.nlink.store(0, Ordering::Relaxed);
                s.mode.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Starts a change of the topology (mutex held): makes `topo_seq` odd, so
    /// optimistic lookups that overlap it retry and exact hints proven before it
    /// stop holding. False if a change is already under way (a nested call);
    /// pass the result to [`topo_end`](Self::topo_end).
    ///
    /// A topology change is anything that can make a path stop leading where it
    /// led while the entry it led to stays: a relink (rename), a directory that
    /// stops being an indexed directory (removed, invalidated, evicted, its slot
    /// freed), a mount on a directory.
    pub(crate) fn topo_begin(&self, _t: &mut Topo) -> bool {
        let r = self.topo_seq.load(Ordering::Relaxed);
        if r & 1 != 0 {
            return false;
        }
        self.topo_seq.store(r.wrapping_add(1), Ordering::SeqCst);
        // The odd value is visible before any write of the change.
        fence(Ordering::Release);
        true
    }

    /// Ends the change [`topo_begin`](Self::topo_begin) started, if it did.
    pub(crate) fn topo_end(&self, _t: &mut Topo, began: bool) {
        if began {
            let r = self.topo_seq.load(Ordering::Relaxed);
            self.topo_seq.store(r.wrapping_add(1), Ordering::Release);
        }
    }

    /// Sets the state of `idx` (mutex held) and keeps the counts and queues.
    pub(crate) fn set_state_locked(&self, t: &mut Topo, idx: u32, st: State) {
        let s = self.arena.get(idx);
        let old = self.snap(idx);
        // A directory that stops being one changes the topology (see `topo_begin`).
        let dir_lost = old.code() == C_DIR
            && !matches!(st, State::Positive(a) if a.kind == crate::backend::Kind::Dir);
        let began = dir_lost && self.topo_begin(t);
        s.begin_write();
        let flags = if st == State::Destroyed { 0 } else { old.meta & F_HASHED };
        self.write_state(s, st, old.len(), flags);
        s.end_write();
        self.topo_end(t, began);
        if old.code() == C_SYMLINK || st == State::Destroyed {
            lock(&self.symlinks).remove(&idx);
        }
        if old.hashed() {
            if st == State::Destroyed {
                self.index.remove(&mut t.idx, self.rehash_snap(idx, &old), idx);
            }
            self.after_state(t, idx, Some(old), st);
        }
    }

    pub(crate) fn rehash_snap(&self, idx: u32, old: &Snap) -> u64 {
        if old.len() <= INLINE {
            // Unpacked on the stack: no allocation for an inline name.
            let mut b = [0u8; INLINE];
            for (i, w) in old.words.iter().enumerate() {
                b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
            }
            return self.index.hash(old.parent, &b[..old.len()]);
        }
        let name = lock(&self.long_names).get(&idx).map(|n| n.to_vec()).unwrap_or_default();
        self.index.hash(old.parent, &name)
    }

    /// Counts and queues after a state change of an indexed entry.
    pub(crate) fn after_state(&self, t: &mut Topo, idx: u32, old: Option<Snap>, st: State) {
        let s = self.arena.get(idx);
        let parent = s.parent.load(Ordering::Relaxed);
        if old.is_some_and(|o| o.code() == C_NEGATIVE) {
            Self::neg_dec(t, parent);
        }
        match st {
            State::Negative => {
                let seq = s.seq.load(Ordering::Relaxed);
                t.negatives += 1;
                t.neg_order.push_back((idx, seq));
                let pn = t.per_parent.entry(parent).or_default();
                pn.live += 1;
                pn.q.push_back((idx, seq));
                self.trim_negatives(t, parent);
            }
            State::Positive(_) => {
                t.pos_order.push_back(idx);
                self.trim_positives(t);
            }
            _ => {}
        }
    }

    pub(crate) fn neg_dec(t: &mut Topo, parent: u32) {
        t.negatives = t.negatives.saturating_sub(1);
        if let Some(pn) = t.per_parent.get_mut(&parent) {
            pn.live = pn.live.saturating_sub(1);
            if pn.live == 0 {
                t.per_parent.remove(&parent);
            }
        }
    }

    /// Is (idx, seq) still the same negative, indexed entry? (mutex held)
    pub(crate) fn neg_current(&self, idx: u32, seq: u32) -> bool {
        let s = self.arena.get(idx);
        s.seq.load(Ordering::Relaxed) == seq
            && s.meta.load(Ordering::Relaxed) & (0xff | F_HASHED) == C_NEGATIVE | F_HASHED
    }

    pub(crate) fn trim_negatives(&self, t: &mut Topo, parent: u32) {
        let cap = self.limits.negative;
        if t.negatives > cap + cap / 8 + 1 {
            let mut budget = t.neg_order.len().min(2 * (t.negatives - cap) + 64);
            while t.negatives > cap && budget > 0 {
                budget -= 1;
                let Some((idx, seq)) = t.neg_order.pop_front() else { break };
                if !self.neg_current(idx, seq) {
                    continue;
                }
                if !self.evict_locked(t, idx) {
                    t.neg_order.push_back((idx, self.arena.get(idx).seq.load(Ordering::Relaxed)));
                }
            }
        }
        if t.neg_order.len() > 2 * t.negatives + 64 {
            // In place, keeping the buffer.
            t.neg_order.retain(|&(i, s)| self.neg_current(i, s));
        }
        let pcap = self.limits.negative_per_parent;
        let Some(live) = t.per_parent.get(&parent).map(|p| p.live) else { return };
        if live > pcap + pcap / 8 + 1 {
            let mut q =
                t.per_parent.get_mut(&parent).map(|p| std::mem::take(&mut p.q)).unwrap_or_default();
            let mut budget = q.len().min(2 * (live - pcap) + 64);
            while t.per_parent.get(&parent).is_some_and(|p| p.live > pcap) && budget > 0 {
                budget -= 1;
                let Some((idx, seq)) = q.pop_front() else { break };
                if !self.neg_current(idx, seq) {
                    continue;
                }
                if !self.evict_locked(t, idx) {
                    q.push_back((idx, self.arena.get(idx).seq.load(Ordering::Relaxed)));
                }
            }
            if let Some(p) = t.per_parent.get_mut(&parent) {
                q.extend(p.q.drain(..));
                p.q = q;
            }
        }
        if let Some(p) = t.per_parent.get_mut(&parent) {
            if p.q.len() > 2 * p.live + 64 {
                let q = std::mem::take(&mut p.q);
                p.q = q.into_iter().filter(|&(i, s)| self.neg_current(i, s)).collect();
            }
        }
    }

    pub(crate) fn trim_positives(&self, t: &mut Topo) {
        let cap = self.limits.entries;
        let positives = |t: &Topo| t.idx.live.saturating_sub(t.negatives);
        if positives(t) > cap + cap / 8 + 1 {
            let mut budget = t.pos_order.len().min(2 * (positives(t) - cap) + 64);
            while positives(t) > cap && budget > 0 {
                budget -= 1;
                let Some(idx) = t.pos_order.pop_front() else { break };
                let m = self.arena.get(idx).meta.load(Ordering::Relaxed);
                if m & F_HASHED == 0 || matches!(m & 0xff, C_NEGATIVE | C_DESTROYED | C_FREE) {
                    continue;
                }
                if !self.evict_locked(t, idx) {
                    t.pos_order.push_back(idx);
                }
            }
        }
        if t.pos_order.len() > 2 * positives(t) + 64 {
            let mut seen = IdSet::default();
            let q = std::mem::take(&mut t.pos_order);
            t.pos_order = q
                .into_iter()
                .filter(|&i| {
                    let m = self.arena.get(i).meta.load(Ordering::Relaxed);
                    m & F_HASHED != 0
                        && !matches!(m & 0xff, C_NEGATIVE | C_DESTROYED | C_FREE)
                        && seen.insert(i)
                })
                .collect();
        }
    }

    /// Drops indexed entry `idx` if nothing refers to it (no handle, lock or
    /// child); false if something does.
    pub(crate) fn evict_locked(&self, t: &mut Topo, idx: u32) -> bool {
        let s = self.arena.get(idx);
        if s.refs.load(Ordering::SeqCst) != 0 {
            return false;
        }
        let old = self.snap(idx);
        if !old.hashed() {
            return false;
        }
        let h = self.rehash_snap(idx, &old);
        let began = old.code() == C_DIR && self.topo_begin(t);
        if !s.retire_begin() {
            self.topo_end(t, began);
            return false;
        }
        s.parent.store(NIL, Ordering::Relaxed);
        s.set_meta(C_FREE, 0, 0);
        s.end_write();
        self.index.remove(&mut t.idx, h, idx);
        self.topo_end(t, began);
        if old.code() == C_NEGATIVE {
            Self::neg_dec(t, old.parent);
        }
        self.release_slot(t, idx);
        self.stripe().evictions.fetch_add(1, Ordering::Relaxed);
        if old.parent != NIL {
            let p = self.arena.get(old.parent);
            if p.refs.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.reap_locked(t, old.parent);
            }
        }
        true
    }

    /// Removes indexed entry `idx` from the index and marks it destroyed (mutex
    /// held); it is freed when its last reference goes.
    pub(crate) fn destroy_locked(&self, t: &mut Topo, idx: u32) {
        if self.snap(idx).code() == C_DESTROYED {
            return;
        }
        self.set_state_locked(t, idx, State::Destroyed);
        if self.arena.get(idx).refs.load(Ordering::SeqCst) == 0 {
            self.reap_locked(t, idx);
        }
    }

    /// Moves indexed entry `idx` to (`parent`, `name`) (mutex and rename lock held;
    /// the target key must be free).
    pub(crate) fn relink_locked(&self, t: &mut Topo, idx: u32, parent: u32, name: &[u8]) {
        let s = self.arena.get(idx);
        let old = self.snap(idx);
        let h = self.rehash_snap(idx, &old);
        self.index.remove(&mut t.idx, h, idx);
        self.arena.get(parent).refs.fetch_add(1, Ordering::Relaxed);
        s.begin_write();
        s.parent.store(parent, Ordering::Relaxed);
        s.set_name(name);
        s.set_meta(old.code(), name.len(), old.meta & F_HASHED);
        s.end_write();
        {
            let mut ln = lock(&self.long_names);
            if name.len() > INLINE {
                ln.insert(idx, name.into());
            } else {
                ln.remove(&idx);
            }
        }
        let h = self.index.hash(parent, name);
        self.index.insert(&mut t.idx, h, idx, |i| self.rehash(i));
        if old.parent != NIL {
            // The old parent is still referenced by the caller's handle on it.
            self.arena.get(old.parent).refs.fetch_sub(1, Ordering::SeqCst);
        }
        if attr_of(&old).is_some() {
            t.pos_order.push_back(idx);
        }
    }

    /// Finds the indexed entry (parent, name) with the mutex held.
    pub(crate) fn find_locked(&self, h: u64, parent: u32, name: &[u8]) -> Option<u32> {
        let words = pack(name);
        self.index.probe(h, |i| {
            let s = self.snap(i);
            let same = s.parent == parent
                && s.len() == name.len()
                && s.words == words
                && s.hashed()
                && (name.len() <= INLINE
                    || lock(&self.long_names).get(&i).is_some_and(|n| &n[..] == name));
            same.then_some(i)
        })
    }

    pub(crate) fn lock_entry(&self, idx: u32, exclusive: bool) {
        if exclusive {
            self.acquire(idx, |w| (w & (L_WRITER | L_READERS) == 0).then_some(w | L_WRITER));
        } else {
            self.acquire(idx, |w| {
                (w & L_WRITER == 0 && w & L_READERS != L_READERS).then_some(w + 1)
            });
        }
    }

    pub(crate) fn acquire(&self, idx: u32, want: impl Fn(u32) -> Option<u32>) {
        let s = self.arena.get(idx);
        loop {
            let cur = s.lock.load(Ordering::Acquire);
            if let Some(n) = want(cur) {
                if s.lock.compare_exchange(cur, n, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    return;
                }
                continue;
            }
            // Announce the sleep in the lock word (under the bucket's mutex), then
            // look once more: a release either comes after the announcement, sees
            // it and wakes the bucket (taking the mutex, so not before we sleep),
            // or came before it, and the look below sees the entry free.
            let (m, cv) = &self.waits[idx as usize % self.waits.len()];
            let g = lock(m);
            let now = s.lock.fetch_or(L_WAITERS, Ordering::AcqRel) | L_WAITERS;
            if want(now).is_some() {
                continue;
            }
            drop(cv.wait(g).unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// Releases with `f` (which keeps the bits it does not own). Wakes the wait
    /// bucket only if someone announced a sleep: an uncontended release makes no
    /// system call.
    pub(crate) fn unlock_entry(&self, idx: u32, f: impl Fn(u32) -> u32) {
        let s = self.arena.get(idx);
        let mut cur = s.lock.load(Ordering::Relaxed);
        while let Err(now) = s.lock.compare_exchange_weak(
            cur,
            f(cur) & !L_WAITERS,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            cur = now;
        }
        if cur & L_WAITERS != 0 {
            let (m, cv) = &self.waits[idx as usize % self.waits.len()];
            drop(lock(m));
            cv.notify_all();
        }
    }

    /// The backend of mount `mount`: the root mount's without a lock or a
    /// reference count (it lives as long as the cache), others from the table.
    pub(crate) fn backend(&self, mount: u32) -> Result<BackendRef<'_>, Errno> {
        if mount == 0 {
            return Ok(BackendRef::Root(&*self.root_backend));
        }
        lock(&self.mounts)
            .get(&mount)
            .map(|m| BackendRef::Mounted(m.backend.clone()))
            .ok_or(Errno::NoEnt)
    }

    /// If `idx` is a mount's root, the directory it covers.
    pub(crate) fn covered_dir(&self, idx: u32) -> Option<u32> {
        let mount = self.arena.get(idx).mount.load(Ordering::Relaxed);
        if mount == 0 {
            return None;
        }
        lock(&self.mounts).get(&mount).filter(|m| m.root == idx).and_then(|m| m.over)
    }
}

impl Namecache {
    /// Checks the structural invariants (tests): the index holds exactly the
    /// indexed slots, once each, each findable under its own key; (parent, name)
    /// is unique among them; no indexed entry is destroyed or free; every live
    /// slot's parent chain reaches a slot without a parent through live slots; every
    /// slot's reference count covers its live children; the negative count is exact.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let t = self.c.topo();
        let c = &*self.c;
        let n = t.next;
        let snaps: Vec<Snap> = (0..n).map(|i| c.snap(i)).collect();
        let live = |i: u32| snaps[i as usize].code() != C_FREE;
        let mut cells = c.index.live_cells();
        cells.sort_unstable();
        let hashed: Vec<u32> = (0..n).filter(|&i| snaps[i as usize].hashed()).collect();
        if cells != hashed {
            return Err(format!("index cells {cells:?} != indexed slots {hashed:?}"));
        }
        if cells.len() != t.idx.live {
            return Err(format!("index count {} != {}", t.idx.live, cells.len()));
        }
        let mut keys = IdSet::default();
        let mut negatives = 0;
        for &i in &hashed {
            let s = &snaps[i as usize];
            if matches!(s.code(), C_DESTROYED | C_FREE) {
                return Err(format!("slot {i} indexed in state {}", s.code()));
            }
            negatives += usize::from(s.code() == C_NEGATIVE);
            let (p, name) = c.name_of(i);
            if !keys.insert((p, name.clone())) {
                return Err(format!("duplicate key ({p}, {name:?})"));
            }
            if c.find_locked(c.index.hash(p, &name), p, &name) != Some(i) {
                return Err(format!("slot {i} not found under its own key"));
            }
        }
        if negatives != t.negatives {
            return Err(format!("negative count {} != {negatives}", t.negatives));
        }
        let mut kids = vec![0u32; n as usize];
        for i in (0..n).filter(|&i| live(i)) {
            let mut p = snaps[i as usize].parent;
            if p != NIL {
                kids[p as usize] += 1;
            }
            let mut steps = 0;
            while p != NIL {
                if !live(p) {
                    return Err(format!("slot {i} has a freed ancestor {p}"));
                }
                steps += 1;
                if steps > n {
                    return Err(format!("slot {i}: parent cycle"));
                }
                p = snaps[p as usize].parent;
            }
        }
        for i in (0..n).filter(|&i| live(i)) {
            let refs = c.arena.get(i).refs.load(Ordering::SeqCst);
            if refs < kids[i as usize] {
                return Err(format!("slot {i}: {refs} references < {} children", kids[i as usize]));
            }
        }
        Ok(())
    }
}
