//! One single-producer/single-consumer FIFO of the crossbar: the ring that carries
//! function calls from one source CPU to one target CPU.
//!
//! # Publication
//! There is no shared write index. Each slot carries a stamp: the source writes the
//! entry's three words, then stores the stamp `i + 1` (Release) for entry `i`; the
//! target runs slot `i` when an Acquire load of its stamp reads `i + 1`. A stamp is
//! on the same cache line as its entry, so the target learns of an entry and reads
//! it with one line transfer (a shared index would be a second line, read before the
//! slot and dependent on it: two transfers in a row per message when the target
//! keeps up with the source). Until entry `i` is published, its slot holds the
//! stamp of the entry before it in that slot, `i + 1 - capacity` (or 0 on the first
//! lap), which never equals `i + 1`.
//!
//! # Ownership
//! - `wnext` and `rcache` are written only by the source (the thread attached as
//!   the source CPU), on a line of their own that only the source touches: `wnext`
//!   is the next entry's index and `rcache` the source's copy of `rindex`,
//!   refreshed only when the ring looks full. Slot stamps are written only by the
//!   source.
//! - `rindex`, `xindex` and `active` are written only by the target. The source
//!   never reads `rindex`; it reads `published`, a copy on its own line that the
//!   target stores every 16 entries and at the end of each drain (so a stream does
//!   not bounce the target's bookkeeping line to the source on every message).
//! - `waiting` is set by the source when it is about to sleep until the target makes
//!   progress (space or completion), and cleared by whichever side consumes it.
//! - Slot `i` is written by the source only while `i - rindex < capacity` says the
//!   target is done with it, and read by the target only once its stamp says the
//!   source has published it.
//!
//! # Indices
//! All indices are free-running `u32`s; order is compared by signed difference
//! (`(a - b) as i32`). A drain re-reads `rindex` before every entry, because a
//! callback may have drained further (a nested drain of the same ring).
//!
//! # Completion
//! `xindex` means "every entry below this index has been dispatched and its callback
//! has returned". A callback may drain the same ring recursively (while it waits for
//! FIFO space); `active` counts the drains of this ring on the target's stack, and
//! only the outermost one advances `xindex` (after each callback returns, and when
//! it ends), so `xindex` never passes an entry whose callback is still running and
//! never decreases.

use dfly_core::sync::atomic::{AtomicU32, Ordering};
use dfly_core::sync::UnsafeCell;
use dfly_core::CachePadded;

use crate::{Cpu, IpiFn};

/// One entry: a function and its two words (a ring slot holds one beside its
/// stamp; the overflow and foreign queues hold them as values).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Slot {
    pub(crate) func: IpiFn,
    pub(crate) a1: usize,
    pub(crate) a2: usize,
}

fn noop(_: &Cpu, _: usize, _: usize) {}

/// One slot of a ring: an entry and its stamp (see "Publication" above), 32 bytes,
/// two to a cache line.
#[repr(C, align(32))]
struct Cell {
    /// `i + 1` once entry `i` is published in this slot.
    stamp: AtomicU32,
    entry: UnsafeCell<Slot>,
}

// Two slots to a 64-byte line, and the memory figure `Config` documents.
#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<Cell>() == 32);

/// The source's private line: nobody else reads or writes it.
struct SourceLine {
    /// The index the next entry gets (the count of entries ever pushed).
    wnext: AtomicU32,
    rcache: AtomicU32,
}

struct TargetLine {
    /// The target's read cursor (private to the target; nested drains share it).
    rindex: AtomicU32,
    xindex: AtomicU32,
    active: AtomicU32,
    waiting: AtomicU32,
}

/// How often (in entries) a drain publishes its read cursor to the source.
const PUBLISH_EVERY: u32 = 16;

pub(crate) struct Ring {
    src: CachePadded<SourceLine>,
    dst: CachePadded<TargetLine>,
    /// `rindex` as the source sees it: published by the target every
    /// [`PUBLISH_EVERY`] entries and at the end of each drain, on a line of its own
    /// so the source's reads do not bounce the target's bookkeeping line.
    published: CachePadded<AtomicU32>,
    slots: Box<[Cell]>,
    mask: u32,
}

// SAFETY: entries are accessed under the protocol above: an entry is written only by
// the single source while the target cannot read it, and read only by the single
// target after the source published it with a Release store of its stamp that the
// target observed with an Acquire load. Everything else is atomic.
unsafe impl Sync for Ring {}
// SAFETY: the ring owns plain data (function pointers and words).
unsafe impl Send for Ring {}

#[inline(always)]
fn diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

impl Ring {
    pub(crate) fn new(capacity: u32) -> Self {
        // Checked in release builds too: `cell` relies on `slots.len() == mask + 1`,
        // which a capacity of 0 would break (it runs once per ring).
        assert!(capacity.is_power_of_two(), "ring capacity {capacity} is not a power of two");
        Ring {
            src: CachePadded::new(SourceLine {
                wnext: AtomicU32::new(0),
                rcache: AtomicU32::new(0),
            }),
            dst: CachePadded::new(TargetLine {
                rindex: AtomicU32::new(0),
                xindex: AtomicU32::new(0),
                active: AtomicU32::new(0),
                waiting: AtomicU32::new(0),
            }),
            published: CachePadded::new(AtomicU32::new(0)),
            slots: (0..capacity)
                .map(|_| Cell {
                    stamp: AtomicU32::new(0),
                    entry: UnsafeCell::new(Slot { func: noop, a1: 0, a2: 0 }),
                })
                .collect(),
            mask: capacity - 1,
        }
    }

    /// The slot of entry `i`.
    #[inline(always)]
    fn cell(&self, i: u32) -> &Cell {
        let k = (i & self.mask) as usize;
        debug_assert!(k < self.slots.len());
        // SAFETY: `slots` has `mask + 1` cells (`new` makes `capacity` of them and
        // sets `mask = capacity - 1`, having asserted that `capacity` is a power
        // of two, so at least 1), and `i & mask <= mask`. The compiler cannot see
        // that the two lengths agree, so a checked index would cost every send
        // and every drained entry a compare and branch.
        unsafe { self.slots.get_unchecked(k) }
    }

    // ---- source side -------------------------------------------------------------

    /// Entries the source believes are not yet consumed (using its cached `rindex`,
    /// refreshed if `refresh`).
    #[inline]
    pub(crate) fn source_fill(&self, refresh: bool) -> u32 {
        let w = self.src.wnext.load(Ordering::Relaxed);
        let r = if refresh {
            let r = self.published.load(Ordering::Acquire);
            self.src.rcache.store(r, Ordering::Relaxed);
            r
        } else {
            self.src.rcache.load(Ordering::Relaxed)
        };
        w.wrapping_sub(r)
    }

    /// [`Ring::try_push`] for an entry already built as a [`Slot`].
    #[inline]
    pub(crate) fn try_push_slot(&self, slot: Slot, limit: u32) -> Option<u32> {
        let Slot { func, a1, a2 } = slot;
        self.try_push(func, a1, a2, limit)
    }

    /// Pushes the entry `func(a1, a2)` unless more than `limit` entries are
    /// outstanding. Returns the new write index (the entry's sequence number).
    /// Source only. Takes the fields, not a `Slot`: a 32-byte `Slot` argument
    /// travels through the stack, and every store a send makes waits in the store
    /// buffer behind the slot's cache-line transfer.
    #[inline]
    pub(crate) fn try_push(&self, func: IpiFn, a1: usize, a2: usize, limit: u32) -> Option<u32> {
        let w = self.src.wnext.load(Ordering::Relaxed);
        let mut r = self.src.rcache.load(Ordering::Relaxed);
        if w.wrapping_sub(r) > limit {
            r = self.published.load(Ordering::Acquire);
            self.src.rcache.store(r, Ordering::Relaxed);
            if w.wrapping_sub(r) > limit {
                return None;
            }
        }
        debug_assert!(w.wrapping_sub(r) <= self.mask, "ring overflow");
        let cell = self.cell(w);
        // Field by field: a whole-`Slot` write is a copy through a stack temporary
        // whose wide loads read back the narrow stores that built it, a
        // store-forwarding stall that perf showed as most of a stream's send time.
        // SAFETY: `w - rindex <= limit < capacity`, so the target has consumed the
        // previous occupant of this slot (its Release store of the published index,
        // made after it copied the entry, was observed by our Acquire load, or by an
        // earlier one cached in `rcache`) and will not read it again until it sees
        // the stamp `w + 1`, stored below. Only this source writes entries. The
        // field pointers come from the cell's own pointer, valid and aligned for a
        // `Slot`.
        cell.entry.with_mut(|p| unsafe {
            core::ptr::addr_of_mut!((*p).func).write(func);
            core::ptr::addr_of_mut!((*p).a1).write(a1);
            core::ptr::addr_of_mut!((*p).a2).write(a2);
        });
        let nw = w.wrapping_add(1);
        self.src.wnext.store(nw, Ordering::Relaxed);
        cell.stamp.store(nw, Ordering::Release);
        Some(nw)
    }

    /// Pushes `func(a1, a2)` for a prefix of `args`, as many as fit with at most
    /// `limit + 1` entries outstanding after the push (the bound of
    /// [`try_push`](Self::try_push) for each entry). Returns how many were pushed
    /// (0 if none fit) and the last one's index.
    ///
    /// The entries are written first and their stamps stored afterwards, last
    /// entry first: a target polling the first slot sees nothing of the batch
    /// until all of it is written, so it does not fetch the batch's lines half
    /// written and take them back from the source between two entries. Any stamp
    /// order is sound, since the target checks each slot's own stamp, in index
    /// order.
    #[inline]
    pub(crate) fn try_push_batch(
        &self,
        func: IpiFn,
        args: &[(usize, usize)],
        limit: u32,
    ) -> (usize, u32) {
        let w = self.src.wnext.load(Ordering::Relaxed);
        let room = |r: u32| (limit + 1).saturating_sub(w.wrapping_sub(r)) as usize;
        let mut free = room(self.src.rcache.load(Ordering::Relaxed));
        if free < args.len() {
            let r = self.published.load(Ordering::Acquire);
            self.src.rcache.store(r, Ordering::Relaxed);
            free = room(r);
        }
        let k = free.min(args.len());
        if k == 0 {
            return (0, w);
        }
        debug_assert!(
            w.wrapping_sub(self.src.rcache.load(Ordering::Relaxed)) as usize + k
                <= self.slots.len()
        );
        for (j, &(a1, a2)) in args[..k].iter().enumerate() {
            let cell = self.cell(w.wrapping_add(j as u32));
            // SAFETY: as in `try_push`, for each of the `k` slots: at most
            // `limit + 1 <= capacity` entries are outstanding after the batch, so
            // the target is done with every slot written here, and reads none of
            // them before its stamp is stored below.
            cell.entry.with_mut(|p| unsafe {
                core::ptr::addr_of_mut!((*p).func).write(func);
                core::ptr::addr_of_mut!((*p).a1).write(a1);
                core::ptr::addr_of_mut!((*p).a2).write(a2);
            });
        }
        let nw = w.wrapping_add(k as u32);
        self.src.wnext.store(nw, Ordering::Relaxed);
        for j in (0..k as u32).rev() {
            let i = w.wrapping_add(j);
            self.cell(i).stamp.store(i.wrapping_add(1), Ordering::Release);
        }
        (k, nw)
    }

    /// The read index as last published by the target (a progress signal for a
    /// source waiting for space).
    #[inline]
    pub(crate) fn published(&self) -> u32 {
        self.published.load(Ordering::Acquire)
    }

    /// The index the next entry will get. Source only.
    #[inline]
    pub(crate) fn next_index(&self) -> u32 {
        self.src.wnext.load(Ordering::Relaxed)
    }

    /// True once every entry below `seq` has completed on the target.
    #[inline]
    pub(crate) fn completed(&self, seq: u32) -> bool {
        diff(self.dst.xindex.load(Ordering::Acquire), seq) >= 0
    }

    /// Marks the source as waiting for progress; pairs with [`Ring::take_waiting`].
    pub(crate) fn set_waiting(&self) {
        self.dst.waiting.store(1, Ordering::SeqCst);
    }

    /// Withdraws a waiting mark.
    pub(crate) fn clear_waiting(&self) {
        self.dst.waiting.store(0, Ordering::Relaxed);
    }

    // ---- target side -------------------------------------------------------------

    /// True if published entries remain. Target side (or anyone, as a hint).
    #[inline]
    pub(crate) fn has_entries(&self) -> bool {
        let r = self.dst.rindex.load(Ordering::Relaxed);
        self.cell(r).stamp.load(Ordering::Acquire) == r.wrapping_add(1)
    }

    /// Runs every entry published when the call starts, and entries published
    /// meanwhile up to one more FIFO's worth. Target only. Returns how many this
    /// call ran (entries run by nested drains of this ring inside its callbacks
    /// count in those drains' returns).
    #[inline]
    pub(crate) fn drain(&self, cpu: &Cpu) -> u32 {
        let mut n = 0;
        // At most a FIFO's worth is published when the call starts; entries that
        // arrive meanwhile are taken too, up to one more FIFO's worth, so a busy
        // stream pays the poll's fixed cost once per burst rather than once per
        // message, and a source that never stops cannot keep the drain forever.
        let mut budget = 2 * (self.mask + 1);
        // `active` counts the drains of this ring on the target's stack (a callback
        // may drain it again while it waits). Only the outermost drain publishes
        // completion after each callback. The guard publishes the read index
        // when any drain ends, and completion when the outermost one does, by
        // return or by unwind.
        let d = &self.dst;
        let depth = d.active.load(Ordering::Relaxed);
        d.active.store(depth + 1, Ordering::Relaxed);
        let outermost = depth == 0;
        let guard = Completion { ring: self };
        while budget > 0 {
            // Re-read rindex each time: a callback may have drained further.
            let r = self.dst.rindex.load(Ordering::Relaxed);
            let cell = self.cell(r);
            if cell.stamp.load(Ordering::Acquire) != r.wrapping_add(1) {
                break;
            }
            budget -= 1;
            // SAFETY: the Acquire load above read the stamp `r + 1`, which the
            // source stores (Release) after it wrote entry `r`; the source will not
            // overwrite the entry until it observes a published index above `r`,
            // which we store only after this copy.
            let e = cell.entry.with(|p| unsafe { p.read() });
            let nr = r.wrapping_add(1);
            self.dst.rindex.store(nr, Ordering::Relaxed);
            if nr % PUBLISH_EVERY == 0 {
                self.published.store(nr, Ordering::Release);
            }
            (e.func)(cpu, e.a1, e.a2);
            if outermost {
                // Every entry below `rindex` has returned: this one, and any that a
                // nested drain inside it ran.
                d.xindex.store(d.rindex.load(Ordering::Relaxed), Ordering::Release);
            }
            n += 1;
        }
        drop(guard);
        n
    }

    /// After progress: if the source marked itself waiting, consume the mark and
    /// return true (the caller wakes the source). Target only. Must follow a
    /// [`crate::barrier::light`] issued after the progress stores.
    #[inline]
    pub(crate) fn take_waiting(&self) -> bool {
        self.dst.waiting.load(Ordering::Relaxed) != 0
            && self.dst.waiting.swap(0, Ordering::AcqRel) != 0
    }

    /// `(wnext, rindex, xindex)`, read in the order x, r, w so that, as each only
    /// grows, the returned values satisfy `x <= r <= w` whenever the ring is sound.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn indices(&self) -> (u32, u32, u32) {
        let x = self.dst.xindex.load(Ordering::SeqCst);
        let r = self.dst.rindex.load(Ordering::SeqCst);
        let w = self.src.wnext.load(Ordering::SeqCst);
        (w, r, x)
    }
}

/// Ends one drain: drops `active`, publishes `rindex` to the source (space) and,
/// at the outermost level, completion up to it. Runs on unwind too, so a
/// panicking callback (whose entry counts as consumed and completed) leaves
/// neither a sender waiting for space nor a waiter for completion stuck. Each
/// index is stored only if it moved, so an empty drain writes nothing the source
/// reads.
struct Completion<'a> {
    ring: &'a Ring,
}

impl Drop for Completion<'_> {
    #[inline]
    fn drop(&mut self) {
        let d = &self.ring.dst;
        let a = d.active.load(Ordering::Relaxed) - 1;
        d.active.store(a, Ordering::Relaxed);
        let r = d.rindex.load(Ordering::Relaxed);
        // Only the target stores these, so its own Relaxed loads read its last
        // stores.
        if self.ring.published.load(Ordering::Relaxed) != r {
            self.ring.published.store(r, Ordering::Release);
        }
        if a == 0 && d.xindex.load(Ordering::Relaxed) != r {
            d.xindex.store(r, Ordering::Release);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::Crossbar;

    std::thread_local! {
        static RAN: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    fn record(_: &Cpu, a1: usize, _: usize) {
        RAN.with(|r| r.borrow_mut().push(a1));
    }

    /// [`Ring::new_at`] with 16 slots, and the callback log cleared.
    fn fresh_ring(start: u32) -> Ring {
        RAN.with(|r| r.borrow_mut().clear());
        Ring::new_at(16, start)
    }

    impl Ring {
        /// A ring as it is after `start` entries went through it: every index and
        /// cursor at `start`, every slot holding the stamp of the last entry that
        /// used it.
        fn new_at(capacity: u32, start: u32) -> Ring {
            let ring = Ring::new(capacity);
            let first = start.wrapping_sub(capacity);
            for (s, cell) in ring.slots.iter().enumerate() {
                let j = first.wrapping_add((s as u32).wrapping_sub(first) & ring.mask);
                cell.stamp.store(j.wrapping_add(1), Ordering::Relaxed);
            }
            for a in [&ring.src.wnext, &ring.src.rcache, &ring.dst.rindex, &ring.dst.xindex] {
                a.store(start, Ordering::Relaxed);
            }
            ring.published.store(start, Ordering::Relaxed);
            ring
        }
    }

    /// Pushes and drains bursts of every size up to the limit through the point
    /// where the indices wrap past `u32::MAX` (where entry `u32::MAX`'s stamp is
    /// 0): every entry runs once, in order, and a slot's stale stamp from the lap
    /// before never passes for an entry.
    #[test]
    fn stamps_and_indices_wrap_past_u32_max() {
        let xbar = Crossbar::new(1).unwrap();
        let cpu = xbar.attach(0).unwrap();
        for start in [u32::MAX - 40, u32::MAX - 15, u32::MAX, 0] {
            let ring = fresh_ring(start);
            assert!(!ring.has_entries(), "stale stamps at start {start} look like entries");
            assert_eq!(ring.drain(&cpu), 0);
            let mut next = 0usize;
            for burst in (1..=8).chain(1..=8) {
                let mut last = 0;
                for _ in 0..burst {
                    last = ring.try_push(record, next, 0, 8).expect("room below the limit");
                    next += 1;
                }
                assert!(ring.has_entries());
                assert!(!ring.completed(last));
                assert_eq!(ring.drain(&cpu), burst);
                assert!(ring.completed(last));
                assert!(!ring.has_entries(), "a drained ring still shows an entry");
                assert_eq!(ring.published(), ring.next_index());
            }
            let ran = RAN.with(|r| r.borrow().clone());
            assert_eq!(ran, (0..next).collect::<Vec<_>>(), "start {start}");
            assert!(
                diff(ring.next_index(), start) as usize == next,
                "the write index moved by the number of entries"
            );
        }
    }

    /// A batch push takes the longest prefix that fits under the limit (what
    /// single pushes would take), at any point of the index space including the
    /// u32 wrap; single pushes carry on after it, and every entry runs once, in
    /// order.
    #[test]
    fn batch_push_takes_the_prefix_that_fits() {
        let xbar = Crossbar::new(1).unwrap();
        let cpu = xbar.attach(0).unwrap();
        let args: Vec<(usize, usize)> = (0..20).map(|i| (i, 0)).collect();
        for start in [u32::MAX - 20, u32::MAX - 3, u32::MAX, 0, 5] {
            let ring = fresh_ring(start);
            assert_eq!(ring.try_push_batch(record, &[], 13), (0, start));
            let (k, last) = ring.try_push_batch(record, &args, 13);
            assert_eq!((k, last), (14, start.wrapping_add(14)), "start {start}");
            assert_eq!(ring.try_push_batch(record, &args[14..], 13).0, 0, "past the limit");
            assert!(ring.try_push(record, 99, 0, 13).is_none());
            assert!(!ring.completed(last));
            assert_eq!(ring.drain(&cpu), 14);
            assert!(ring.completed(last));
            let (k, last) = ring.try_push_batch(record, &args[14..], 13);
            assert_eq!((k, last), (6, start.wrapping_add(20)));
            assert_eq!(ring.try_push(record, 20, 0, 13), Some(start.wrapping_add(21)));
            // Seven entries outstanding leave room for seven more under limit 13.
            let more: Vec<(usize, usize)> = (21..40).map(|i| (i, 0)).collect();
            assert_eq!(ring.try_push_batch(record, &more, 13).0, 7);
            assert_eq!(ring.drain(&cpu), 14);
            assert!(!ring.has_entries());
            let ran = RAN.with(|r| r.borrow().clone());
            assert_eq!(ran, (0..28).collect::<Vec<_>>(), "start {start}");
        }
    }

    std::thread_local! {
        static NESTED: std::cell::Cell<(*const Ring, u32)> =
            const { std::cell::Cell::new((std::ptr::null(), 0)) };
    }

    /// Drains its own ring again, as a callback waiting for FIFO space does.
    fn reenter(cpu: &Cpu, a1: usize, _: usize) {
        record(cpu, a1, 0);
        let (ring, me) = NESTED.with(|n| n.get());
        // SAFETY: the test keeps the ring alive across the drain that runs this.
        let ring = unsafe { &*ring };
        assert!(!ring.completed(me), "completion covers a running callback");
        assert_eq!(ring.drain(cpu), 2);
        assert!(!ring.completed(me), "a nested drain published completion under its caller");
    }

    fn boom(_: &Cpu, _: usize, _: usize) {
        panic!("callback failed (expected by the test)");
    }

    /// Checks that the entry before it (its sequence number in `NESTED`) has
    /// completed: the outermost drain publishes completion after each callback.
    fn sees_previous_completed(cpu: &Cpu, a1: usize, _: usize) {
        record(cpu, a1, 0);
        let (ring, prev) = NESTED.with(|n| n.get());
        // SAFETY: as in `reenter`.
        let ring = unsafe { &*ring };
        assert!(ring.completed(prev), "completion lags a callback that returned");
    }

    /// Drains its own ring again, where the next entry panics.
    fn reenter_into_panic(cpu: &Cpu, _: usize, _: usize) {
        let (ring, _) = NESTED.with(|n| n.get());
        // SAFETY: as in `reenter`.
        unsafe { &*ring }.drain(cpu);
    }

    /// Completion never covers a callback that is still running, even when it
    /// drains its own ring again; it covers everything once the outermost callback
    /// returns. A callback that panics counts as completed, and the ring's
    /// bookkeeping survives it.
    #[test]
    fn completion_waits_for_the_outermost_callback() {
        let xbar = Crossbar::new(1).unwrap();
        let cpu = xbar.attach(0).unwrap();
        let ring = fresh_ring(u32::MAX - 1);
        let first = ring.try_push(reenter, 0, 0, 13).unwrap();
        NESTED.with(|n| n.set((&ring as *const Ring, first)));
        ring.try_push(record, 1, 0, 13).unwrap();
        let last = ring.try_push(record, 2, 0, 13).unwrap();
        assert_eq!(ring.drain(&cpu), 1, "the nested drain ran the other two");
        assert!(ring.completed(last));
        assert_eq!(RAN.with(|r| r.borrow().clone()), vec![0, 1, 2]);

        // Completion moves after every callback of the outermost drain.
        let prev = ring.try_push(record, 3, 0, 13).unwrap();
        NESTED.with(|n| n.set((&ring as *const Ring, prev)));
        ring.try_push(sees_previous_completed, 4, 0, 13).unwrap();
        assert_eq!(ring.drain(&cpu), 2);

        // A panicking callback, at the top and inside a nested drain: its entry
        // counts as consumed (space published to the source) and completed, and
        // the next drain publishes as usual.
        for nested in [false, true] {
            if nested {
                ring.try_push(reenter_into_panic, 0, 0, 13).unwrap();
            }
            let bad = ring.try_push(boom, 0, 0, 13).unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ring.drain(&cpu)));
            assert!(r.is_err());
            assert!(ring.completed(bad), "a panicking entry never completes (nested: {nested})");
            assert_eq!(ring.published(), ring.next_index(), "space not published after a panic");
        }
        let after = ring.try_push(record, 5, 0, 13).unwrap();
        assert_eq!(ring.drain(&cpu), 1);
        assert!(ring.completed(after), "completion stopped after a panic");
        assert_eq!(RAN.with(|r| r.borrow().clone()), vec![0, 1, 2, 3, 4, 5]);
    }

    /// A full ring refuses more than `limit` outstanding entries and takes more
    /// once the target's published index moves.
    #[test]
    fn limit_holds_until_the_target_publishes() {
        let xbar = Crossbar::new(1).unwrap();
        let cpu = xbar.attach(0).unwrap();
        let ring = fresh_ring(u32::MAX - 3);
        for i in 0..=13 {
            assert!(ring.try_push(record, i, 0, 13).is_some(), "entry {i}");
        }
        assert!(ring.try_push(record, 99, 0, 13).is_none(), "pushed past the limit");
        assert_eq!(ring.drain(&cpu), 14);
        assert!(ring.try_push(record, 14, 0, 13).is_some());
        assert_eq!(ring.drain(&cpu), 1);
        assert_eq!(RAN.with(|r| r.borrow().clone()), (0..=14).collect::<Vec<_>>());
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use dfly_core::sync::atomic::AtomicUsize;
    use dfly_core::sync::{thread, Arc};

    use super::*;
    use crate::tests::loom_models::bump_in_order;
    use crate::{Config, Crossbar};

    /// The stamps alone, with no pending bit or park word to order anything: a
    /// target that drains in a loop while the source pushes one entry and then a
    /// batch of two (stamps stored last entry first) into a two-slot ring (so the
    /// batch reuses a slot once the target publishes space) runs all three once
    /// each, in order, and no entry is read before it is written or written while
    /// being read (loom checks the cell accesses). Fails if the batch's stamps are
    /// stored Relaxed.
    #[test]
    fn loom_batch_stamps_publish_each_entry() {
        loom::model(|| {
            let ring = Arc::new(Ring::new(2));
            let n = Arc::new(AtomicUsize::new(0));
            let (r2, n2) = (ring.clone(), n.clone());
            let target = thread::spawn(move || {
                let x = Crossbar::with_config(1, Config { fifo_capacity: 16, foreign_capacity: 1 })
                    .unwrap();
                let cpu = x.attach(0).unwrap();
                while n2.load(Ordering::SeqCst) < 3 {
                    if r2.drain(&cpu) == 0 {
                        thread::yield_now();
                    }
                }
            });
            let a = &*n as *const AtomicUsize as usize;
            assert!(ring.try_push(bump_in_order, a, 0, 1).is_some());
            let mut rest: &[(usize, usize)] = &[(a, 1), (a, 2)];
            while !rest.is_empty() {
                let (k, _) = ring.try_push_batch(bump_in_order, rest, 1);
                rest = &rest[k..];
                if k == 0 {
                    thread::yield_now();
                }
            }
            target.join().unwrap();
        });
    }
}
