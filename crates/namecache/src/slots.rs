//! Entry storage: a chunked arena of entry slots made only of atomics, and the
//! (parent, name) index over it, so that a cached lookup can read entries without
//! taking a lock, bumping a reference count or writing any shared cache line.
//!
//! # Slots
//! An entry is a [`Slot`] in the [`Arena`], named by its index (`u32`). The arena
//! grows by chunks that are never freed or moved while the cache lives, so a
//! `&Slot` obtained from an index stays a valid reference; a slot is *reused* after
//! its entry is freed, which readers detect through the slot's sequence count.
//!
//! # Who writes what
//! - `seq`, `parent`, `meta` (state code, name length, flags), `name`, `mount`,
//!   `ino`, `size`, `nlink`, `mode`: written only by a thread holding the cache's
//!   topology mutex, inside [`Slot::begin_write`]/[`Slot::end_write`] (a seqlock:
//!   `seq` is odd during the write). Readers without the mutex read them with
//!   [`Slot::read`] or the fast path's own validated loads, and retry or fall back
//!   when `seq` was odd or changed.
//! - `refs`: changed by anyone with `fetch_add`/`fetch_sub`, never stored. A reader
//!   that pins an entry it found without the mutex increments `refs`, fences, and
//!   re-reads `seq` ([`Slot::pin_at`]); a thread that frees or evicts an entry makes
//!   `seq` odd, fences, and reads `refs` ([`Slot::retire_begin`]). With a `SeqCst`
//!   fence on both sides either the reader sees the change and drops its count
//!   again, or the freer sees the count and keeps the entry (a loom model checks
//!   this).
//! - `lock`: the entry's shared/exclusive lock and its "resolving" bit, changed by
//!   compare-and-swap; waiters park on the cache's wait table.
//! - `covered_by`: the id of a mount covering this directory (0 if none), written
//!   under the cache's rename lock.
//!
//! # Index
//! An open-addressed table of `u32` cells (`0` empty, [`TOMB`] removed, otherwise
//! slot index + 1), linear probing with Robin Hood insertion (an entry takes the
//! cell of a resident closer to its home), which keeps the longest probe short. Only mutex holders change cells. Readers probe without a lock
//! and verify every candidate against the slot's own (parent, name) under its
//! seqlock, so a reader can miss an entry that is being moved (it then takes the
//! locked path) but never returns a wrong one. Growth publishes a new, larger level;
//! older levels stay allocated (readers may still be probing them) and only lead to
//! verified hits or harmless misses.
//!
//! Must never happen: a slot field other than `refs`/`lock`/`covered_by` written
//! without the mutex; `refs` stored rather than added to (a reader's transient
//! count would be lost); a slot chunk deallocated while the cache lives.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use dfly_core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// No slot (the root's parent; an empty cell).
pub(crate) const NIL: u32 = u32::MAX;
/// An index cell whose entry was removed.
pub(crate) const TOMB: u32 = u32::MAX;

/// State codes kept in the low byte of `Slot::meta`.
pub(crate) const C_FREE: u32 = 0;
pub(crate) const C_UNRESOLVED: u32 = 1;
pub(crate) const C_NEGATIVE: u32 = 2;
pub(crate) const C_DESTROYED: u32 = 3;
pub(crate) const C_DIR: u32 = 4;
pub(crate) const C_FILE: u32 = 5;
pub(crate) const C_SYMLINK: u32 = 6;
pub(crate) const C_OTHER: u32 = 7;

/// `meta` flag: the entry is in the index.
pub(crate) const F_HASHED: u32 = 1 << 16;

/// Names up to this many bytes are stored inline in the slot.
pub(crate) const INLINE: usize = 32;

/// `lock` bits: exclusive holder, a resolve in progress, sleepers, shared holders
/// below.
pub(crate) const L_WRITER: u32 = 1 << 31;
pub(crate) const L_RESOLVING: u32 = 1 << 30;
/// Someone sleeps on the wait table for this entry: the next release must wake.
pub(crate) const L_WAITERS: u32 = 1 << 29;
pub(crate) const L_READERS: u32 = L_WAITERS - 1;

/// One entry. 88 bytes; see the module docs for who writes which field.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) seq: AtomicU32,
    pub(crate) parent: AtomicU32,
    pub(crate) refs: AtomicU32,
    pub(crate) lock: AtomicU32,
    pub(crate) mount: AtomicU32,
    pub(crate) covered_by: AtomicU32,
    /// State code (bits 0..8), name length (bits 8..16), flags (bits 16..).
    pub(crate) meta: AtomicU32,
    /// The first 32 bytes of the name, little-endian, zero padded.
    pub(crate) name: [AtomicU64; 4],
    /// Inode (positive); the negative generation stamp (negative).
    pub(crate) ino: AtomicU64,
    pub(crate) size: AtomicU64,
    pub(crate) nlink: AtomicU32,
    pub(crate) mode: AtomicU32,
}

/// A consistent copy of a slot's seqlocked fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snap {
    pub(crate) seq: u32,
    pub(crate) parent: u32,
    pub(crate) meta: u32,
    pub(crate) mount: u32,
    pub(crate) words: [u64; 4],
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) nlink: u32,
    pub(crate) mode: u32,
}

impl Snap {
    pub(crate) fn code(&self) -> u32 {
        self.meta & 0xff
    }

    pub(crate) fn len(&self) -> usize {
        ((self.meta >> 8) & 0xff) as usize
    }

    pub(crate) fn hashed(&self) -> bool {
        self.meta & F_HASHED != 0
    }
}

/// Packs the first 32 bytes of `name` into words (zero padded).
#[inline(always)]
pub(crate) fn pack(name: &[u8]) -> [u64; 4] {
    let name = &name[..name.len().min(INLINE)];
    let mut w = [0u64; 4];
    let mut words = name.chunks_exact(8);
    for (i, c) in (&mut words).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        w[i] = u64::from_le_bytes(b);
    }
    w[name.len() / 8 % 4] |= short_word(words.remainder());
    w
}

/// Up to 7 bytes as a little-endian word, with no loop and no `memcpy` call:
/// two overlapping loads that write equal bytes where they overlap.
#[inline(always)]
pub(crate) fn short_word(b: &[u8]) -> u64 {
    let n = b.len();
    match (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        (Some(lo), Some(hi)) => {
            u64::from(u32::from_le_bytes(*lo))
                | (u64::from(u32::from_le_bytes(*hi)) << ((n - 4) * 8))
        }
        _ => match (b.first(), b.last()) {
            (Some(&f), Some(&l)) => {
                u64::from(f)
                    | (u64::from(b[n / 2]) << (n / 2 * 8))
                    | (u64::from(l) << ((n - 1) * 8))
            }
            _ => 0,
        },
    }
}

/// The `len` (1..=8) bytes of `path` that end at `end` as a little-endian word,
/// from one load when at least 8 bytes end there.
#[inline(always)]
pub(crate) fn word_ending_at(path: &[u8], end: usize, len: usize) -> u64 {
    match path[..end].last_chunk::<8>() {
        Some(w) => u64::from_le_bytes(*w) >> ((8 - len) * 8),
        None => short_word(&path[end - len..end]),
    }
}

/// The bytes of packed words, `len` of them (at most 32).
pub(crate) fn unpack(w: &[u64; 4], len: usize) -> Vec<u8> {
    (0..len.min(INLINE)).map(|i| (w[i / 8] >> ((i % 8) * 8)) as u8).collect()
}

impl Slot {
    /// Reads the seqlocked fields, retrying while a writer is inside: a few spins,
    /// then `wait` (which blocks until the writer is done: writers hold the
    /// topology mutex, so the caller passes "take and drop that mutex").
    pub(crate) fn read_with(&self, wait: impl Fn()) -> Snap {
        let mut spins = 0u32;
        loop {
            if let Some(s) = self.try_read() {
                return s;
            }
            spins += 1;
            if spins > 64 {
                wait();
            } else {
                dfly_core::sync::spin_loop();
            }
        }
    }

    /// One attempt at [`read_with`](Self::read_with).
    #[inline]
    pub(crate) fn try_read(&self) -> Option<Snap> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq & 1 != 0 {
            return None;
        }
        let s = Snap {
            seq,
            parent: self.parent.load(Ordering::Relaxed),
            meta: self.meta.load(Ordering::Relaxed),
            mount: self.mount.load(Ordering::Relaxed),
            words: [
                self.name[0].load(Ordering::Relaxed),
                self.name[1].load(Ordering::Relaxed),
                self.name[2].load(Ordering::Relaxed),
                self.name[3].load(Ordering::Relaxed),
            ],
            ino: self.ino.load(Ordering::Relaxed),
            size: self.size.load(Ordering::Relaxed),
            nlink: self.nlink.load(Ordering::Relaxed),
            mode: self.mode.load(Ordering::Relaxed),
        };
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == seq).then_some(s)
    }

    /// Is this slot, right now, the entry `name` (length `len`, packed `words`)
    /// under `parent`? Returns its (seq, meta, ino) if so. No writes.
    #[inline]
    pub(crate) fn matches(
        &self,
        parent: u32,
        len: usize,
        words: &[u64; 4],
    ) -> Option<(u32, u32, u64)> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq & 1 != 0 {
            return None;
        }
        let meta = self.meta.load(Ordering::Relaxed);
        let ok = self.parent.load(Ordering::Relaxed) == parent
            && ((meta >> 8) & 0xff) as usize == len
            && self.name[0].load(Ordering::Relaxed) == words[0]
            && self.name[1].load(Ordering::Relaxed) == words[1]
            && self.name[2].load(Ordering::Relaxed) == words[2]
            && self.name[3].load(Ordering::Relaxed) == words[3];
        let ino = self.ino.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        (ok && self.seq.load(Ordering::Relaxed) == seq).then_some((seq, meta, ino))
    }

    /// Is this slot, right now, an entry named `name` (at most [`INLINE`] bytes)
    /// under any parent? Returns its (seq, meta, parent) if so. No writes. The
    /// path-hint climb's read of each directory: `w0` is the name's first word
    /// ([`pack`]`(name)[0]`); a name of 8 bytes or fewer is that word alone (the
    /// others are zero in every slot of that length).
    #[inline(always)]
    pub(crate) fn named_dir(&self, name: &[u8], w0: u64) -> Option<(u32, u32, u32)> {
        let len = name.len();
        let seq = self.seq.load(Ordering::Acquire);
        if seq & 1 != 0 {
            return None;
        }
        let meta = self.meta.load(Ordering::Relaxed);
        let parent = self.parent.load(Ordering::Relaxed);
        let ok = ((meta >> 8) & 0xff) as usize == len
            && self.name[0].load(Ordering::Relaxed) == w0
            && (len <= 8 || {
                let w = pack(name);
                self.name[1].load(Ordering::Relaxed) == w[1]
                    && self.name[2].load(Ordering::Relaxed) == w[2]
                    && self.name[3].load(Ordering::Relaxed) == w[3]
            });
        fence(Ordering::Acquire);
        (ok && self.seq.load(Ordering::Relaxed) == seq).then_some((seq, meta, parent))
    }

    /// Opens a write (mutex held): `seq` becomes odd. Ends with a full fence so a
    /// following `refs` check is ordered after it (the pin protocol).
    pub(crate) fn begin_write(&self) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Closes a write: `seq` is even again (and different).
    pub(crate) fn end_write(&self) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Release);
    }

    /// The reader's half of the pin protocol: counts a reference, then checks the
    /// slot is still at `seq`. The count is taken either way; the caller releases
    /// it (through the normal release path) when this returns false.
    pub(crate) fn pin_at(&self, seq: u32) -> bool {
        self.refs.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `begin_write` (store-load ordering on both sides;
        // loom found that SeqCst accesses alone are not modelled as enough).
        fence(Ordering::SeqCst);
        self.seq.load(Ordering::SeqCst) == seq
    }

    /// The freer's half (mutex held): opens a write, then checks that nothing
    /// refers to the slot. True: the write stays open for the caller to retire the
    /// slot and close. False: the write was closed again (the slot's sequence moved
    /// on) and the slot must be kept.
    pub(crate) fn retire_begin(&self) -> bool {
        self.begin_write();
        if self.refs.load(Ordering::SeqCst) != 0 {
            self.end_write();
            return false;
        }
        true
    }

    pub(crate) fn set_meta(&self, code: u32, len: usize, flags: u32) {
        self.meta.store(code | ((len.min(255) as u32) << 8) | flags, Ordering::Relaxed);
    }

    pub(crate) fn set_name(&self, name: &[u8]) {
        for (a, w) in self.name.iter().zip(pack(name)) {
            a.store(w, Ordering::Relaxed);
        }
    }
}

/// Slots in chunks of 1024, found through a two-level directory of write-once
/// cells: chunks never move and are never freed while the cache lives, and at most
/// one chunk is partly used (no geometric over-allocation).
#[derive(Debug)]
pub(crate) struct Arena {
    dir: Box<[OnceLock<Mid>; TOP]>,
}

/// One directory level: write-once cells of slot chunks. Fixed-size arrays, so
/// the masked indices of [`locate`] need no bounds checks on the hit path.
type Mid = Box<[OnceLock<Chunk>; MID]>;
type Chunk = Box<[Slot; CHUNK]>;

const CHUNK_BITS: u32 = 10;
const MID_BITS: u32 = 10;
pub(crate) const CHUNK: usize = 1 << CHUNK_BITS;
/// Slot index bits within a chunk.
pub(crate) const CHUNK_MASK: u32 = (1 << CHUNK_BITS) - 1;
const MID: usize = 1 << MID_BITS;
const TOP: usize = 1 << (31 - CHUNK_BITS - MID_BITS);
/// Most slots an arena can hold.
pub(crate) const MAX_SLOTS: u32 = (1u32 << 31) - 1;

fn locate(i: u32) -> (usize, usize, usize) {
    let i = i as usize;
    ((i >> (CHUNK_BITS + MID_BITS)) & (TOP - 1), (i >> CHUNK_BITS) & (MID - 1), i & (CHUNK - 1))
}

/// `n` values from `f` in a boxed array (built on the heap, not the stack).
fn boxed<T, const N: usize>(f: impl FnMut(usize) -> T) -> Box<[T; N]> {
    match (0..N).map(f).collect::<Box<[T]>>().try_into() {
        Ok(b) => b,
        Err(_) => unreachable!("{N} items collected into a slice of another length"),
    }
}

impl Arena {
    pub(crate) fn new() -> Arena {
        Arena { dir: boxed(|_| OnceLock::new()) }
    }

    /// The slot at `i`, which must have been made available by
    /// [`ensure`](Self::ensure) (every index the cache hands around has been).
    #[inline(always)]
    pub(crate) fn get(&self, i: u32) -> &Slot {
        let (t, m, o) = locate(i);
        match self.dir[t].get().and_then(|mid| mid[m].get()) {
            Some(chunk) => &chunk[o],
            None => unreachable!("slot {i} used before its chunk was made"),
        }
    }

    /// The chunk holding slot `i` (see [`get`](Self::get)): a caller walking
    /// nearby slots keeps it and indexes it with [`CHUNK_MASK`], skipping the
    /// directory's two dependent loads per slot.
    #[inline(always)]
    pub(crate) fn chunk(&self, i: u32) -> &[Slot; CHUNK] {
        let (t, m, _) = locate(i);
        match self.dir[t].get().and_then(|mid| mid[m].get()) {
            Some(chunk) => chunk,
            None => unreachable!("slot {i} used before its chunk was made"),
        }
    }

    /// Makes slot `i` addressable.
    pub(crate) fn ensure(&self, i: u32) {
        let (t, m, _) = locate(i);
        let mid = self.dir[t].get_or_init(|| boxed(|_| OnceLock::new()));
        mid[m].get_or_init(|| boxed(|_| Slot::default()));
    }

    /// Bytes allocated for slots and the directory.
    pub(crate) fn bytes(&self) -> usize {
        let mut n = std::mem::size_of_val(&*self.dir);
        for mid in self.dir.iter().filter_map(|m| m.get()) {
            n += std::mem::size_of_val(&**mid);
            n += mid
                .iter()
                .filter_map(|c| c.get())
                .map(|c| std::mem::size_of_val(&**c))
                .sum::<usize>();
        }
        n
    }
}

/// The (parent, name) index; see the module docs.
#[derive(Debug)]
pub(crate) struct Index {
    levels: Box<[OnceLock<Box<[AtomicU32]>>]>,
    cur: AtomicUsize,
    hasher: RandomState,
}

const T0_BITS: u32 = 10;

/// Bookkeeping for index writers (kept under the topology mutex).
#[derive(Debug, Default)]
pub(crate) struct IndexCounts {
    pub(crate) live: usize,
    pub(crate) tombs: usize,
}

impl Index {
    pub(crate) fn new() -> Index {
        let levels: Box<[OnceLock<Box<[AtomicU32]>>]> = (0..22).map(|_| OnceLock::new()).collect();
        levels[0].get_or_init(|| table(0));
        Index { levels, cur: AtomicUsize::new(0), hasher: RandomState::new() }
    }

    /// The keyed (SipHash, random keys) hash of (parent, name).
    #[inline]
    pub(crate) fn hash(&self, parent: u32, name: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u32(parent);
        h.write(name);
        h.finish()
    }

    fn current(&self) -> &[AtomicU32] {
        let lvl = self.cur.load(Ordering::Acquire);
        match self.levels[lvl].get() {
            Some(t) => t,
            None => unreachable!("index level {lvl} published before it was made"),
        }
    }

    /// Calls `f` with each candidate slot index for hash `h` until it returns
    /// `Some`. No writes.
    #[inline]
    pub(crate) fn probe<R>(&self, h: u64, mut f: impl FnMut(u32) -> Option<R>) -> Option<R> {
        let t = self.current();
        let mask = t.len() - 1;
        let mut i = h as usize & mask;
        for _ in 0..t.len() {
            match t[i].load(Ordering::Acquire) {
                0 => return None,
                TOMB => {}
                v => {
                    if let Some(r) = f(v - 1) {
                        return Some(r);
                    }
                }
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Inserts `idx` under hash `h` (mutex held; the key must be absent). `rehash`
    /// gives the hash of a live slot, for growth and cleaning.
    pub(crate) fn insert(
        &self,
        n: &mut IndexCounts,
        h: u64,
        idx: u32,
        rehash: impl Fn(u32) -> u64,
    ) {
        let len = self.current().len();
        if (n.live + 1) * 2 > len {
            self.rebuild(n, true, &rehash);
        } else if (n.live + n.tombs + 1) * 4 > len * 3 {
            self.rebuild(n, false, &rehash);
        }
        let t = self.current();
        if robin_hood_insert(t, h, idx, &rehash) {
            n.tombs -= 1;
        }
        n.live += 1;
    }

    /// Removes `idx` (hash `h`) if present (mutex held).
    pub(crate) fn remove(&self, n: &mut IndexCounts, h: u64, idx: u32) -> bool {
        let t = self.current();
        let mask = t.len() - 1;
        let mut i = h as usize & mask;
        for _ in 0..t.len() {
            match t[i].load(Ordering::Relaxed) {
                0 => return false,
                v if v == idx.wrapping_add(1) => {
                    t[i].store(TOMB, Ordering::Release);
                    n.live -= 1;
                    n.tombs += 1;
                    return true;
                }
                _ => {}
            }
            i = (i + 1) & mask;
        }
        false
    }

    /// Re-inserts every live cell, into a table twice as large if `grow` (a new
    /// level, published when full) or into the current one cleared of tombstones.
    /// Concurrent readers may miss entries meanwhile; they fall back to the locked
    /// path, which waits for the mutex this runs under.
    fn rebuild(&self, n: &mut IndexCounts, grow: bool, rehash: &impl Fn(u32) -> u64) {
        let old = self.current();
        let live: Vec<u32> = old
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .filter(|&v| v != 0 && v != TOMB)
            .map(|v| v - 1)
            .collect();
        let lvl = self.cur.load(Ordering::Relaxed);
        let (t, next): (&[AtomicU32], usize) = if grow && lvl + 1 < self.levels.len() {
            (self.levels[lvl + 1].get_or_init(|| table(lvl + 1)), lvl + 1)
        } else {
            for c in old.iter() {
                c.store(0, Ordering::Release);
            }
            (old, lvl)
        };
        for idx in live {
            robin_hood_insert(t, rehash(idx), idx, rehash);
        }
        n.tombs = 0;
        self.cur.store(next, Ordering::Release);
    }

    /// The slots the current level holds (test checks).
    #[cfg(test)]
    pub(crate) fn live_cells(&self) -> Vec<u32> {
        self.current()
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .filter(|&v| v != 0 && v != TOMB)
            .map(|v| v - 1)
            .collect()
    }

    /// The longest probe a hit needs in the current level: for every live cell, its
    /// distance from its hash's home cell, plus one (mutex held; `rehash` as for
    /// [`Index::insert`]). The open-addressed counterpart of a hash chain's length.
    pub(crate) fn longest_probe(&self, rehash: impl Fn(u32) -> u64) -> usize {
        let t = self.current();
        let mask = t.len() - 1;
        let mut longest = 0;
        for (i, c) in t.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if v != 0 && v != TOMB {
                let home = rehash(v - 1) as usize & mask;
                longest = longest.max(((i + t.len() - home) & mask) + 1);
            }
        }
        longest
    }

    /// Bytes allocated for index cells.
    pub(crate) fn bytes(&self) -> usize {
        self.levels.iter().filter_map(|s| s.get()).map(|s| s.len() * 4).sum()
    }
}

/// Linear-probing insert with Robin Hood displacement (mutex held): walking from
/// the home cell, the entry being placed takes the cell of any resident that sits
/// closer to its own home, and that resident continues the walk. It keeps the
/// longest probe short (the counterpart of a short hash chain) at the same load.
/// Readers may miss an entry while it moves (they verify candidates and take the
/// locked path on a miss), never see a wrong one. Returns true if it filled a
/// tombstone.
fn robin_hood_insert(t: &[AtomicU32], h: u64, idx: u32, rehash: &impl Fn(u32) -> u64) -> bool {
    let mask = t.len() - 1;
    let mut i = h as usize & mask;
    let mut cur = idx;
    let mut dist = 0usize;
    loop {
        let v = t[i].load(Ordering::Relaxed);
        if v == 0 || v == TOMB {
            t[i].store(cur + 1, Ordering::Release);
            return v == TOMB;
        }
        let home = rehash(v - 1) as usize & mask;
        let theirs = (i + t.len() - home) & mask;
        if theirs < dist {
            // Publish the newcomer first: the displaced entry is briefly in no cell
            // (a reader then misses it and takes the locked path).
            t[i].store(cur + 1, Ordering::Release);
            cur = v - 1;
            dist = theirs;
        }
        i = (i + 1) & mask;
        dist += 1;
    }
}

fn table(level: usize) -> Box<[AtomicU32]> {
    (0..(1usize << (T0_BITS as usize + level))).map(|_| AtomicU32::new(0)).collect()
}

/// This thread's stripe number (for counters and handle reference stripes).
pub(crate) fn stripe() -> usize {
    // A process-wide registry written once per thread: plain std (see the shim).
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    std::thread_local! {
        static ID: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    ID.with(|i| *i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_indices_without_gaps() {
        assert_eq!(locate(0), (0, 0, 0));
        assert_eq!(locate(1023), (0, 0, 1023));
        assert_eq!(locate(1024), (0, 1, 0));
        assert_eq!(locate(1 << 20), (1, 0, 0));
        let (t, m, o) = locate(MAX_SLOTS);
        assert_eq!((t, m, o), (TOP - 1, (1 << MID_BITS) - 1, (1 << CHUNK_BITS) - 1));
    }

    #[test]
    fn names_pack_and_unpack() {
        let n = b"abcdefghijklmnopqrstuvwxyz012345";
        assert_eq!(unpack(&pack(n), 32), n.to_vec());
        assert_eq!(unpack(&pack(b"\xff\x00x"), 3), b"\xff\x00x".to_vec());
        assert_eq!(std::mem::size_of::<Slot>(), 88);
    }

    #[test]
    fn pack_matches_bytewise_packing_at_every_length() {
        let bytes: Vec<u8> = (0..40u32).map(|i| (i * 37 + 11) as u8 | 1).collect();
        for len in 0..=bytes.len() {
            let name = &bytes[..len];
            let mut want = [0u64; 4];
            for (i, &b) in name.iter().take(INLINE).enumerate() {
                want[i / 8] |= u64::from(b) << ((i % 8) * 8);
            }
            assert_eq!(pack(name), want, "length {len}");
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Loom models of the two protocols every lock-free reader relies on.
    use super::*;
    use dfly_core::sync::{thread, Arc};

    /// A reader pinning a slot and a freer retiring it never both succeed.
    #[test]
    fn loom_pin_and_retire_exclude_each_other() {
        loom::model(|| {
            let s = Arc::new(Slot::default());
            let r = s.clone();
            let reader = thread::spawn(move || {
                let ok = r.pin_at(0);
                if !ok {
                    r.refs.fetch_sub(1, Ordering::SeqCst);
                }
                ok
            });
            let retired = s.retire_begin();
            if retired {
                s.set_meta(C_FREE, 0, 0);
                s.end_write();
            }
            let pinned = reader.join().unwrap();
            assert!(!(pinned && retired), "a pinned slot was freed");
        });
    }

    /// A reader never sees a torn (parent, name): during a relink from (1, "a")
    /// to (2, "b") it matches one of the two, never a mix.
    #[test]
    fn loom_relink_is_never_seen_torn() {
        loom::model(|| {
            let s = Arc::new(Slot::default());
            s.parent.store(1, Ordering::Relaxed);
            s.set_name(b"a");
            s.set_meta(C_FILE, 1, F_HASHED);
            let w = s.clone();
            let writer = thread::spawn(move || {
                w.begin_write();
                w.parent.store(2, Ordering::Relaxed);
                w.set_name(b"b");
                w.end_write();
            });
            assert!(s.matches(1, 1, &pack(b"b")).is_none());
            assert!(s.matches(2, 1, &pack(b"a")).is_none());
            writer.join().unwrap();
            assert!(s.matches(2, 1, &pack(b"b")).is_some());
        });
    }
}
