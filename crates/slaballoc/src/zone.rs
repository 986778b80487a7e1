//! [`Zone`]: the in-band header of one zone, its owner-side chunk bookkeeping, and the
//! lock-free remote-free protocol (DragonFly's `z_RChunks`/`z_RSignal`/`z_RCount`,
//! with the signal folded into the list word so a notification cannot be missed).
//!
//! # Fields and who writes them
//!
//! A zone belongs to one [`Mailbox`] (the slot that made it); whoever holds that slot
//! is the *owner*. Slot holding is handed over through an acquire/release lease, so
//! "the owner" is always one thread at a time.
//!
//! - Owner only (`Cell`s): class, chunk size, `nfree`/`nmax`, the local LIFO free list
//!   `lfree` (absorbed remote chunks go on its front: the walk that counts them finds
//!   their tail, and keeping a tail pointer would cost every malloc and free), the
//!   never-used cursor, list links, `state` (on its class list, off every list, or
//!   cached free) and `awaiting`.
//! - Written once per (re)initialisation, before any chunk is handed out, read by
//!   remote freers: `owner`.
//! - Shared atomics: `magic` (stored by the owner when the zone is initialised or
//!   retired; read by freers), `rhead` (the remote list), `rcount` (the pin count),
//!   `pending_next` (written by the one notifier, read by the owner).
//!
//! # The remote list word `rhead`
//!
//! `0` = empty, [`SIGNAL`] = empty *and the zone is off its owner's class list*,
//! anything else = the most recently pushed chunk, whose first word links to the next
//! (`0` ends the list). Only the owner writes `SIGNAL` (with a CAS from `0`), and only
//! when the zone has no free chunk left and no notification is outstanding.
//!
//! # Remote free (any thread that is not the owner)
//! 1. Load `rhead`. If it is `SIGNAL`, first pin the zone: `rcount += 1`.
//! 2. Link the chunk to the loaded head (`0` if it was `SIGNAL`) and CAS it in; on
//!    failure reload and repeat from 1 (pinning at most once).
//! 3. If the CAS replaced `SIGNAL`, this freer is the only one to see the zone's
//!    dropped-off state end: it pushes the zone onto the owner's mailbox
//!    (`pending`), handing its pin to the owner. Otherwise, if it pinned, it unpins.
//!
//! After a successful CAS a freer that did not pin never touches the zone again: the
//! owner may absorb the chunk and release the zone at once.
//!
//! # Owner
//! - Taking the last free chunk runs [`Zone::drop_off`]: absorb the remote list; if
//!   nothing came, CAS `0 -> SIGNAL` and leave the class list (or, if a notification is
//!   already outstanding, leave without signalling: that notification will revisit).
//! - A local free into an off-list zone relinks it: CAS `SIGNAL -> 0`; if that fails a
//!   freer replaced the signal and a notification is on its way, so mark `awaiting`.
//! - A notification ([`Zone::notified`]) clears `awaiting`, absorbs, unpins, and
//!   relinks or drops the zone off again.
//! - The zone may be released only when [`Zone::releasable`]: every chunk free and
//!   local, no pin (`rcount == 0`, acquire), nothing awaited.
//!
//! # What must never happen
//! A chunk pushed on `rhead` of an off-list zone with no notification on its way (the
//! chunk would be stranded); a zone released or re-initialised while pinned; two
//! outstanding notifications for one zone (the `pending_next` link would be
//! overwritten). The loom models in `tests/loom.rs` check these on this code.

// Under loom only the protocol is compiled; some owner-side helpers go unused.
#![cfg_attr(loom, allow(dead_code))]

use core::cell::Cell;
use core::ptr;

use dfly_core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use crate::class::{chunks_per_zone, class_size, first_chunk_offset};

/// The `rhead` value meaning "empty, and the zone is off its class list".
pub(crate) const SIGNAL: usize = 1;
/// Protocol assertions on the remote path: in debug builds and in loom models.
const CHECKS: bool = cfg!(debug_assertions) || cfg!(loom);
/// `magic` of a live zone.
pub(crate) const ZONE_MAGIC: usize = 0x5a4f_4e45_d1f1_0001;
/// `magic` of a zone retired to a free-zone cache.
pub(crate) const FREE_MAGIC: usize = 0x5a4f_4e45_d1f1_00fe;

/// Where a zone is, from its owner's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ZoneState {
    /// On its class list: it has at least one free chunk.
    OnList,
    /// Off every list: no free chunk (or awaiting a notification).
    OffList,
    /// Retired to the slot's free-zone cache.
    Free,
}

/// The remote side of a slot: lock-free multi-producer stacks its holder drains.
///
/// - `pending`: zones whose dropped-off state a remote free ended (each pushed once
///   per drop-off, linked through `Zone::pending_next`);
/// - `inbound`: batches of chunks from the batched remote-free mode, linked through
///   each chunk's first word, one CAS per batch.
///
/// Anyone pushes; only the slot's holder takes (a swap to null).
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Mailbox {
    pub(crate) pending: AtomicPtr<Zone>,
    pub(crate) inbound: AtomicUsize,
}

impl Mailbox {
    pub(crate) fn new() -> Self {
        Self { pending: AtomicPtr::new(ptr::null_mut()), inbound: AtomicUsize::new(0) }
    }

    /// True if a remote free left work for the holder.
    #[inline]
    pub(crate) fn has_work(&self) -> bool {
        !self.pending.load(Ordering::Relaxed).is_null() || self.inbound.load(Ordering::Relaxed) != 0
    }

    /// Pushes a zone whose signal a remote free replaced.
    fn push_pending(&self, zone: *mut Zone) {
        // SAFETY: the caller holds a pin on `zone` (protocol step 3), so it is live.
        let z = unsafe { &*zone };
        let mut old = self.pending.load(Ordering::Relaxed);
        loop {
            z.pending_next.store(old, Ordering::Relaxed);
            match self.pending.compare_exchange_weak(old, zone, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(cur) => old = cur,
            }
        }
    }

    /// Takes every pending zone (holder only). Follow the chain with [`Zone::next_pending`].
    pub(crate) fn take_pending(&self) -> *mut Zone {
        if self.pending.load(Ordering::Relaxed).is_null() {
            return ptr::null_mut();
        }
        self.pending.swap(ptr::null_mut(), Ordering::Acquire)
    }

    /// Pushes a linked batch `head ..= tail` of chunks with one successful CAS.
    /// Returns true if the stack was empty (the holder may need telling).
    ///
    /// # Safety
    /// `head ..= tail` is a chain of chunks linked through their first words, owned by
    /// the caller (freed memory of zones owned by this mailbox's slot).
    pub(crate) unsafe fn push_inbound(&self, head: usize, tail: usize) -> bool {
        let mut old = self.inbound.load(Ordering::Relaxed);
        loop {
            // SAFETY: `tail` is a chunk the caller owns (function contract).
            unsafe { set_link(tail, old) };
            match self.inbound.compare_exchange_weak(old, head, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return old == 0,
                Err(cur) => old = cur,
            }
        }
    }

    /// Takes every inbound chunk (holder only); follow the chain with [`link`].
    pub(crate) fn take_inbound(&self) -> usize {
        if self.inbound.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.inbound.swap(0, Ordering::Acquire)
    }
}

/// Reads the link word of a free chunk.
///
/// # Safety
/// `chunk` is a free chunk (at least 8 bytes, 8-aligned) the caller may read.
#[inline(always)]
pub(crate) unsafe fn link(chunk: usize) -> usize {
    // SAFETY: function contract.
    unsafe { (chunk as *const usize).read() }
}

/// Writes the link word of a free chunk.
///
/// # Safety
/// `chunk` is a free chunk (at least 8 bytes, 8-aligned) the caller owns.
#[inline(always)]
pub(crate) unsafe fn set_link(chunk: usize, next: usize) {
    // SAFETY: function contract.
    unsafe { (chunk as *mut usize).write(next) }
}

/// What a local free did to the zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Freed {
    /// Nothing for the slot to do.
    Plain,
    /// The zone was off its list and has a free chunk again: relink it at the head.
    Relink,
    /// Every chunk is free: the slot may retire the zone if [`Zone::releasable`].
    Empty,
}

/// The header at the start of every zone.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Zone {
    // Cache line 0: read by every free, remote ones included; written only when the
    // zone is (re)initialised or retired.
    magic: AtomicUsize,
    owner: Cell<*const Mailbox>,
    base: Cell<usize>,
    class: Cell<u32>,
    chunk_size: Cell<u32>,
    nmax: Cell<u32>,
    _pad0: [u8; 28],
    // Cache line 1: the owner's, written by its every malloc and free (remote freers
    // never touch it, so they do not pull it away from the owner's core).
    lfree: Cell<usize>,
    nfree: Cell<u32>,
    unext: Cell<u32>,
    uleft: Cell<u32>,
    state: Cell<ZoneState>,
    awaiting: Cell<bool>,
    pub(crate) prev: Cell<*mut Zone>,
    pub(crate) next: Cell<*mut Zone>,
    /// For a retired zone on the heap's release list: the reaper round it went there.
    round: Cell<u32>,
    _pad1: [u8; 20],
    // Cache line 2: the words remote freers write.
    rhead: AtomicUsize,
    rcount: AtomicU32,
    pending_next: AtomicPtr<Zone>,
}

// The header must fit in the space reserved for it.
const _: () = assert!(core::mem::size_of::<Zone>() <= crate::class::ZONE_HEADER);
// Three cache lines: read-mostly, the owner's, the remote freers' (see the fields).
const _: () = assert!(core::mem::offset_of!(Zone, lfree) == 64);
const _: () = assert!(core::mem::offset_of!(Zone, rhead) == 128);

impl Zone {
    /// Initialises a zone header at `mem` for class `class`, owned by `owner`, with its
    /// never-used cursor starting at chunk `slide % nmax`.
    ///
    /// # Safety
    /// `mem` is `zone_bytes` bytes the caller owns exclusively, aligned to the class's
    /// natural alignment and at least 8; any zone previously there is retired (no pin,
    /// no chunk in use); `owner` outlives the zone.
    pub(crate) unsafe fn init(
        mem: *mut u8,
        zone_bytes: usize,
        class: usize,
        owner: *const Mailbox,
        slide: usize,
    ) -> *mut Zone {
        let nmax = chunks_per_zone(class, zone_bytes);
        let z = mem.cast::<Zone>();
        let header = Zone {
            magic: AtomicUsize::new(ZONE_MAGIC),
            owner: Cell::new(owner),
            base: Cell::new(mem as usize + first_chunk_offset(class)),
            class: Cell::new(class as u32),
            chunk_size: Cell::new(class_size(class) as u32),
            nmax: Cell::new(nmax as u32),
            _pad0: [0; 28],
            lfree: Cell::new(0),
            nfree: Cell::new(nmax as u32),
            unext: Cell::new((slide % nmax) as u32),
            uleft: Cell::new(nmax as u32),
            state: Cell::new(ZoneState::OnList),
            awaiting: Cell::new(false),
            prev: Cell::new(ptr::null_mut()),
            next: Cell::new(ptr::null_mut()),
            round: Cell::new(0),
            _pad1: [0; 20],
            rhead: AtomicUsize::new(0),
            rcount: AtomicU32::new(0),
            pending_next: AtomicPtr::new(ptr::null_mut()),
        };
        // SAFETY: `mem` is exclusively ours and large and aligned enough (contract).
        unsafe { z.write(header) };
        #[cfg(all(feature = "debug", not(loom)))]
        // SAFETY: the bitmap lies in the header reserve of the zone we own (contract).
        unsafe {
            core::ptr::write_bytes(
                mem.add(crate::debug::BITMAP_OFFSET),
                0,
                crate::debug::BITMAP_BYTES,
            )
        };
        z
    }

    /// The magic word (tells a live zone from a retired one or a large mapping).
    #[inline]
    pub(crate) fn magic(&self) -> usize {
        self.magic.load(Ordering::Relaxed)
    }

    /// The owning slot's mailbox.
    #[inline]
    pub(crate) fn owner(&self) -> *const Mailbox {
        self.owner.get()
    }

    /// The size class.
    #[inline]
    pub(crate) fn class(&self) -> usize {
        self.class.get() as usize
    }

    /// The address of the first chunk.
    #[cfg(feature = "debug")]
    #[inline]
    pub(crate) fn base(&self) -> usize {
        self.base.get()
    }

    /// Bytes per chunk.
    #[inline]
    pub(crate) fn chunk_size(&self) -> usize {
        self.chunk_size.get() as usize
    }

    /// Free chunks held locally (not counting the remote list).
    #[inline]
    pub(crate) fn nfree(&self) -> usize {
        self.nfree.get() as usize
    }

    /// Chunks in the zone.
    #[inline]
    pub(crate) fn nmax(&self) -> usize {
        self.nmax.get() as usize
    }

    /// Where the owner keeps the zone.
    #[inline]
    pub(crate) fn state(&self) -> ZoneState {
        self.state.get()
    }

    /// Records where the owner keeps the zone (owner only).
    #[inline]
    pub(crate) fn set_state(&self, s: ZoneState) {
        self.state.set(s);
    }

    /// The reaper round a retired zone was released in.
    pub(crate) fn round(&self) -> u32 {
        self.round.get()
    }

    /// Records the reaper round a retired zone is released in.
    pub(crate) fn set_round(&self, r: u32) {
        self.round.set(r);
    }

    /// The next zone on a pending chain taken with [`Mailbox::take_pending`].
    #[inline]
    pub(crate) fn next_pending(&self) -> *mut Zone {
        self.pending_next.load(Ordering::Relaxed)
    }

    /// Takes a free chunk (owner only). The zone must have one (`nfree > 0`).
    #[inline(always)]
    pub(crate) fn take(&self) -> *mut u8 {
        debug_assert!(self.nfree.get() > 0);
        let p = self.lfree.get();
        let chunk = if p != 0 {
            // SAFETY: `p` heads the local free list: a free chunk of this zone.
            let next = unsafe { link(p) };
            self.lfree.set(next);
            p
        } else {
            debug_assert!(self.uleft.get() > 0);
            let i = self.unext.get();
            let n = if i + 1 == self.nmax.get() { 0 } else { i + 1 };
            self.unext.set(n);
            self.uleft.set(self.uleft.get() - 1);
            self.base.get() + i as usize * self.chunk_size()
        };
        self.nfree.set(self.nfree.get() - 1);
        // SAFETY: the chunk is ours now.
        unsafe { crate::debug::on_alloc_key(chunk, self.chunk_size()) };
        #[cfg(all(feature = "debug", not(loom)))]
        // SAFETY: a chunk of this live zone, ours now; `p != 0` means it was freed before.
        unsafe {
            crate::debug::on_alloc(
                self as *const Zone as usize,
                self.base.get(),
                self.chunk_size(),
                chunk,
                p != 0,
            )
        };
        chunk as *mut u8
    }

    /// Frees a chunk of this zone locally (owner only).
    ///
    /// # Safety
    /// `chunk` is a chunk of this zone that is in use and now given up by the caller.
    #[inline]
    pub(crate) unsafe fn free_local(&self, chunk: *mut u8) -> Freed {
        let c = chunk as usize;
        if c == self.lfree.get() {
            // Freed twice in a row: the one double free of an 8-byte chunk (no room
            // for the key) that every build catches.
            crate::debug::fault("double free", c);
        }
        // SAFETY: the chunk is ours now (contract); push it on the LIFO head.
        unsafe { set_link(c, self.lfree.get()) };
        self.lfree.set(c);
        let n = self.nfree.get() + 1;
        self.nfree.set(n);
        if n == self.nmax.get() {
            if self.state.get() == ZoneState::OffList {
                self.relink_prepare();
                return Freed::Relink;
            }
            Freed::Empty
        } else if n == 1 && self.state.get() == ZoneState::OffList {
            self.relink_prepare();
            Freed::Relink
        } else {
            Freed::Plain
        }
    }

    /// Before an off-list zone goes back on its list: withdraw the signal, or learn
    /// that a notification is on its way.
    fn relink_prepare(&self) {
        if self.awaiting.get() {
            return;
        }
        if self.rhead.compare_exchange(SIGNAL, 0, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // A remote free replaced the signal; it is pushing (or has pushed) this
            // zone on our mailbox, holding a pin.
            self.awaiting.set(true);
        }
    }

    /// Moves the remote list onto the front of the local list (owner only; the walk
    /// that counts the chunks finds the remote tail). Returns the number absorbed.
    pub(crate) fn absorb(&self) -> usize {
        let h = self.rhead.load(Ordering::Relaxed);
        if h == 0 || h == SIGNAL {
            return 0;
        }
        let h = self.rhead.swap(0, Ordering::Acquire);
        debug_assert_ne!(h, SIGNAL, "only the owner writes SIGNAL");
        let mut n = 0u32;
        let mut tail = h;
        loop {
            n += 1;
            // SAFETY: every chunk on the remote list is free and ours after the swap.
            let next = unsafe { link(tail) };
            if next == 0 {
                break;
            }
            tail = next;
        }
        // SAFETY: `tail` is the last chunk of the remote list, ours after the swap.
        unsafe { set_link(tail, self.lfree.get()) };
        self.lfree.set(h);
        self.nfree.set(self.nfree.get() + n);
        debug_assert!(self.nfree.get() <= self.nmax.get(), "remote list over-full: double free?");
        n as usize
    }

    /// Called by the owner when an on-list zone has no free chunk left. Returns true if
    /// the zone stays on its list (remote chunks were absorbed), false if the caller
    /// must unlink it (its state becomes `OffList`).
    pub(crate) fn drop_off(&self) -> bool {
        loop {
            if self.absorb() > 0 {
                return true;
            }
            self.state.set(ZoneState::OffList);
            if self.awaiting.get() {
                return false;
            }
            if self.rhead.compare_exchange(0, SIGNAL, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return false;
            }
            self.state.set(ZoneState::OnList);
        }
    }

    /// Handles a notification taken from the mailbox (owner only): the pin it carried
    /// is dropped. Returns what the slot must do with the zone's list position:
    /// [`Freed::Relink`] if it is off-list with free chunks again, [`Freed::Empty`]
    /// if every chunk is free, else [`Freed::Plain`].
    pub(crate) fn notified(&self) -> Freed {
        self.awaiting.set(false);
        self.absorb();
        self.rcount.fetch_sub(1, Ordering::AcqRel);
        let n = self.nfree.get();
        match self.state.get() {
            ZoneState::OffList if n > 0 => Freed::Relink,
            ZoneState::OffList => {
                if self.drop_off() {
                    Freed::Relink
                } else {
                    Freed::Plain
                }
            }
            _ if n == self.nmax.get() => Freed::Empty,
            _ => Freed::Plain,
        }
    }

    /// True if the owner may retire or unmap the zone: every chunk free and local, no
    /// pin, no notification awaited.
    pub(crate) fn releasable(&self) -> bool {
        self.nfree.get() == self.nmax.get()
            && !self.awaiting.get()
            && self.rcount.load(Ordering::Acquire) == 0
            && self.rhead.load(Ordering::Acquire) == 0
    }

    /// Marks the zone retired (owner only; [`Zone::releasable`] must hold).
    pub(crate) fn retire(&self) {
        debug_assert!(self.releasable());
        self.state.set(ZoneState::Free);
        self.magic.store(FREE_MAGIC, Ordering::Relaxed);
    }

    /// Frees `chunk` of the zone at `zone` from a thread that does not own it (the
    /// protocol in the module docs). Returns true if this free pushed a notification
    /// on the owner's mailbox.
    ///
    /// # Safety
    /// `zone` is a live zone and `chunk` one of its chunks in use, given up by the
    /// caller. After this returns the caller must not touch the zone.
    pub(crate) unsafe fn remote_free(zone: *mut Zone, chunk: *mut u8) -> bool {
        // SAFETY: the zone is live while the caller's chunk is in use (contract).
        let z = unsafe { &*zone };
        let c = chunk as usize;
        let mut pinned = false;
        let mut old = z.rhead.load(Ordering::Acquire);
        loop {
            if old == SIGNAL && !pinned {
                z.rcount.fetch_add(1, Ordering::AcqRel);
                pinned = true;
            }
            let next = if old == SIGNAL { 0 } else { old };
            // SAFETY: the chunk is ours until the CAS publishes it.
            unsafe { set_link(c, next) };
            match z.rhead.compare_exchange_weak(old, c, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(cur) => old = cur,
            }
        }
        if old == SIGNAL {
            if CHECKS {
                assert_eq!(z.magic(), ZONE_MAGIC, "notifying a retired zone");
            }
            // SAFETY: `owner` outlives the zone, and our pin keeps the zone live until
            // the owner handles the notification.
            unsafe { (*z.owner()).push_pending(zone) };
            true
        } else {
            if pinned {
                if CHECKS {
                    assert_eq!(z.magic(), ZONE_MAGIC, "unpinning a retired zone");
                }
                z.rcount.fetch_sub(1, Ordering::AcqRel);
            }
            false
        }
    }

    /// True while a notification is known to be on its way (for tests).
    #[cfg(loom)]
    pub(crate) fn is_awaiting(&self) -> bool {
        self.awaiting.get()
    }

    /// The pin count (for tests and consistency checks).
    #[cfg(loom)]
    pub(crate) fn pins(&self) -> u32 {
        self.rcount.load(Ordering::Acquire)
    }

    /// The raw remote-list word (for tests and consistency checks).
    #[cfg(loom)]
    pub(crate) fn remote_word(&self) -> usize {
        self.rhead.load(Ordering::Acquire)
    }
}
